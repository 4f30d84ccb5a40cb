//! Starting and stopping a node: store, writer, shards, peer actors, HTTP servers, signals.
//!
//! Order matters: the store is opened and its state recovered into the shards before the first
//! request is accepted; on SIGTERM/SIGINT waiting long polls are answered at once, the servers
//! stop accepting and finish in-flight requests, the peer pullers and pushers stop (each pusher
//! saving its cursor), and only then does the writer commit what is queued and stop. One
//! function (`serve`) builds the HTTP server of either plane.

use crate::config::{PersistMode, Settings, StoreEngine};
use crate::http::rate_limit::ClientRateLimit;
use crate::http::{self, AppState};
use crate::mailbox::MailboxRouter;
use crate::mailbox::rules::MailboxLimits;
use crate::metrics::Metrics;
use crate::peer::auth::derive_peer_key;
use crate::peer::{PeerPlane, pushed::PushedThrough, replica_applier};
use crate::protocol::EnvelopeLimits;
use crate::store::{FjallStore, RedbStore, Store, StoreError, StoreHandle};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

/// How long in-flight requests may take to finish after SIGTERM.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Sockets a node serves on.
pub struct Listeners {
    /// The client plane (and the peer plane when `peer` is None).
    pub client: TcpListener,
    /// A separate peer plane (`MESH_DM_PEER_LISTEN`).
    pub peer: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses of `settings`.
    pub fn bind(settings: &Settings) -> std::io::Result<Self> {
        let client = TcpListener::bind(settings.listen).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", settings.listen),
            )
        })?;
        let peer = match settings.peer_listen {
            Some(addr) => Some(TcpListener::bind(addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
            })?),
            None => None,
        };
        Ok(Self { client, peer })
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Mailbox(#[from] crate::mailbox::MailboxError),
}

/// Opens the store the settings ask for. `auto` keeps a data dir's existing redb store (a
/// release before fjall wrote it) and starts fjall everywhere else.
/// Returns the store and its engine's name (for the start-up log).
fn open_store(settings: &Settings) -> Result<(Arc<dyn Store>, &'static str), StartError> {
    let cache = settings.store_cache_bytes;
    let dir = &settings.data_dir;
    if settings.persist == PersistMode::Memory {
        return Ok((
            Arc::new(RedbStore::in_memory_with_cache(cache)?),
            "redb (in memory)",
        ));
    }
    let has_redb = dir.join(crate::store::redb_store::DATABASE_FILE).exists();
    let has_fjall = dir.join(crate::store::fjall_store::DATABASE_DIR).exists();
    let redb = match settings.store_engine {
        StoreEngine::Auto => has_redb,
        StoreEngine::Redb => true,
        StoreEngine::Fjall => false,
    };
    // Never start an empty store beside a full one: the node would forget what it holds.
    let (chosen, other, other_exists) = if redb {
        ("redb", "fjall", has_fjall)
    } else {
        ("fjall", "redb", has_redb)
    };
    if other_exists {
        return Err(StartError::Store(StoreError::Backend(format!(
            "{} holds a {other} store but MESH_DM_STORE_ENGINE asks for {chosen}; set it to \
             {other} (or auto), or move the data dir away",
            dir.display()
        ))));
    }
    Ok(if redb {
        (Arc::new(RedbStore::open_with_cache(dir, cache)?), chosen)
    } else {
        (Arc::new(FjallStore::open_with_cache(dir, cache)?), chosen)
    })
}

/// Runs a node until SIGTERM/SIGINT. Must be called inside an actix `System`.
pub async fn run(mut settings: Settings, listeners: Listeners) -> Result<(), StartError> {
    // First of all, so that a SIGTERM arriving while the store opens is not fatal: it is held
    // until the servers run, which then stop at once.
    let shutdown_signal = shutdown_signal();
    crate::fd_limit::ensure_room_for(settings.max_waiting_polls);
    let client_addr = listeners.client.local_addr()?;
    let peer_addr = listeners
        .peer
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    // Before anything uses the self URL: port 0 and inherited sockets give the real port.
    settings.adopt_bound_addresses(client_addr, peer_addr);
    if let Some(warning) = crate::startup::wildcard_self_url_warning(&settings.self_peer_url) {
        tracing::warn!("{warning}");
    }
    let metrics = Arc::new(Metrics::new());
    let cache = settings.store_cache_bytes;
    let (store, engine) = open_store(&settings)?;
    let budget = settings.storage_budget_bytes.unwrap_or_else(|| {
        // What the store holds already does not count against the disk's free share twice.
        let free = store
            .data_dir()
            .map(|dir| crate::store::budget::free_bytes(dir).unwrap_or(0) + store.stored_bytes());
        crate::store::budget::default_budget(free)
    });
    let parked_mailboxes = store.parked_mailboxes()?;
    tracing::info!(
        epoch = store.epoch(),
        pending = store.pending_count(),
        mailboxes_with_parked_replicas = parked_mailboxes.len(),
        persist = ?settings.persist,
        data_dir = %settings.data_dir.display(),
        stored_bytes = store.stored_bytes(),
        storage_budget_bytes = budget,
        cache_bytes = cache,
        engine,
        "store opened"
    );
    let (store_handle, writer) =
        StoreHandle::start(Arc::clone(&store), Arc::clone(&metrics), budget)?;
    let limits = MailboxLimits {
        pending_per_sender: settings.pending_per_sender_limit,
        mailbox: settings.mailbox_limit,
        ..MailboxLimits::default()
    };
    let mailboxes = MailboxRouter::start(
        settings.shards,
        limits,
        settings.max_ttl_s,
        settings.mailbox_idle,
        store_handle.clone(),
        Arc::clone(&metrics),
        parked_mailboxes,
        settings.max_waiting_polls,
        settings.body_cache_bytes,
    )
    .await?;
    let envelope_limits = EnvelopeLimits {
        max_msg_bytes: settings.max_msg_bytes,
        max_ttl_s: settings.max_ttl_s,
    };
    let applier = replica_applier(&mailboxes, envelope_limits);
    let pushed = Arc::new(PushedThrough::default());
    let peers = PeerPlane::start(&settings, &store_handle, &applier, &pushed, &metrics);
    // A request from peer P is signed with the key derived from P's own URL.
    let peer_keys = settings
        .peers
        .iter()
        .map(|p| (p.url.clone(), derive_peer_key(p.secret.as_bytes(), &p.url)))
        .collect();
    let client_rate = Arc::new(ClientRateLimit::new(
        settings.client_rate_per_s,
        settings.client_rate_burst,
    ));
    client_rate.start_housekeeping();
    let state = web::Data::new(AppState {
        mailboxes,
        envelope_limits,
        metrics: Arc::clone(&metrics),
        self_peer_url: settings.self_peer_url.clone(),
        peer_keys,
        store: store_handle.clone(),
        client_rate: Arc::clone(&client_rate),
        applier,
        pushed,
    });

    let separate_peer_lane = listeners.peer.is_some();
    let client_plane = if separate_peer_lane {
        Plane::Client
    } else {
        Plane::Both
    };
    let mut servers = vec![serve(client_plane, listeners.client, &state, &settings)?];
    if let Some(peer_listener) = listeners.peer {
        servers.push(serve(Plane::Peer, peer_listener, &state, &settings)?);
    }
    // The one start-up line: config source, addresses, self URL, peers, store and mode.
    crate::startup::startup_line(&settings, client_addr, peer_addr).log();

    let handles: Vec<_> = servers.iter().map(|s| s.handle()).collect();
    let mailboxes = state.mailboxes.clone();
    actix_rt::spawn(async move {
        shutdown_signal.await;
        tracing::info!("shutting down: releasing waiting polls, finishing in-flight requests");
        // First, so that the servers' graceful stop does not wait out long polls (SPEC §6.2:
        // a waiting poll is released with its normal reply when the node shuts down).
        mailboxes.release_waiting_polls().await;
        for handle in &handles {
            handle.stop(true).await;
        }
    });
    // Both servers must be polled together: a server only runs while its future is polled.
    for result in futures_util::future::join_all(servers).await {
        result?;
    }
    // In order: intake stopped and long polls released (above), then the peers (each pusher
    // saves its cursor), then the store commits what is queued and stops.
    peers.stop().await;
    store_handle.shutdown();
    // Joining blocks this thread, which serves nothing any more.
    writer.join();
    tracing::info!("stopped");
    Ok(())
}

/// What one HTTP server serves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plane {
    /// The client plane on its own (the peer plane has its own listener).
    Client,
    /// The peer plane on its own listener (`MESH_DM_PEER_LISTEN`).
    Peer,
    /// Both planes on one listener (the default).
    Both,
}

/// Builds and starts the HTTP server of `plane` on `listener`. Every plane gets the body-limit
/// middleware, the service routes (`/health`, `/metrics`, `/status`) and the JSON 404/405.
fn serve(
    plane: Plane,
    listener: TcpListener,
    state: &web::Data<AppState>,
    settings: &Settings,
) -> std::io::Result<actix_web::dev::Server> {
    let state = state.clone();
    let server = HttpServer::new(move || {
        let app = App::new()
            .wrap(from_fn(http::body::close_after_refused_body))
            .app_data(state.clone());
        let app = match plane {
            Plane::Client => app.configure(http::client_routes),
            Plane::Peer => app.configure(http::peer_routes),
            Plane::Both => app
                .configure(http::client_routes)
                .configure(http::peer_routes),
        };
        app.configure(http::service_routes)
            .configure(http::fallback)
    })
    .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
    .disable_signals();
    let server = if plane == Plane::Peer {
        server.workers(settings.http_workers.div_ceil(2))
    } else {
        // Each waiting long poll holds a connection: actix's per-worker cap (25k by default)
        // must not bind before MESH_DM_MAX_WAITING_POLLS does, whichever worker they land on.
        // A client that closes its connection while its long poll waits ends the request, so
        // the waiting poll is dropped at the shard's next sweep, not when `wait_s` runs out.
        server
            .workers(settings.http_workers)
            .max_connections(settings.max_waiting_polls.saturating_add(1024).max(25_000))
            .h1_allow_half_closed(false)
    };
    let server = match &settings.tls {
        Some(tls) => server.listen_rustls_0_23(listener, (**tls).clone())?,
        None => server.listen(listener)?,
    };
    Ok(server.run())
}

/// Installs the SIGTERM/SIGINT handlers now; the future completes on the first of them.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    wait_for_shutdown_signal(handlers)
}

async fn wait_for_shutdown_signal(
    handlers: (
        std::io::Result<tokio::signal::unix::Signal>,
        std::io::Result<tokio::signal::unix::Signal>,
    ),
) {
    match handlers {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the node with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
