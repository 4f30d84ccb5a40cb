//! Peers behind a SOCKS5 proxy (issue 8 item 3; SPEC §5 replication over any transport): a
//! node with `MESH_RELAY_SOCKS_PROXY` reaches its peer only through the proxy, by a name only the
//! proxy resolves (as Tor resolves `.onion` names), for push and pull alike; and a proxy that is
//! down neither blocks deposits nor loses them.
//!
//! The proxy is a real SOCKS5 server on 127.0.0.1 written here (RFC 1928, no authentication,
//! CONNECT to a domain name), on std threads; it records every host:port it was asked for.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A SOCKS5 proxy that knows a few names, like Tor knows onion services.
struct SocksProxy {
    port: u16,
    requested: Arc<Mutex<Vec<String>>>,
}

impl SocksProxy {
    /// Serves on `listener` forever (the test process ends it), resolving only `names`.
    fn serve(listener: TcpListener, names: HashMap<String, String>) -> Self {
        let port = listener.local_addr().unwrap().port();
        let requested = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requested);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let names = names.clone();
                let log = Arc::clone(&log);
                std::thread::spawn(move || {
                    let _ = Self::handle(client, &names, &log);
                });
            }
        });
        Self { port, requested }
    }

    /// One connection: greeting, CONNECT request, reply, then bytes both ways.
    fn handle(
        mut client: TcpStream,
        names: &HashMap<String, String>,
        log: &Mutex<Vec<String>>,
    ) -> std::io::Result<()> {
        let mut head = [0u8; 2];
        client.read_exact(&mut head)?;
        assert_eq!(head[0], 5, "SOCKS version");
        let mut methods = vec![0u8; head[1] as usize];
        client.read_exact(&mut methods)?;
        assert!(methods.contains(&0), "the client offers no-authentication");
        client.write_all(&[5, 0])?;
        let mut request = [0u8; 4];
        client.read_exact(&mut request)?;
        assert_eq!(&request[..3], &[5, 1, 0], "a CONNECT request");
        assert_eq!(
            request[3], 3,
            "a domain name, not an address resolved by the client"
        );
        let mut len = [0u8; 1];
        client.read_exact(&mut len)?;
        let mut name = vec![0u8; len[0] as usize];
        client.read_exact(&mut name)?;
        let mut port = [0u8; 2];
        client.read_exact(&mut port)?;
        let target = format!(
            "{}:{}",
            String::from_utf8_lossy(&name),
            u16::from_be_bytes(port)
        );
        log.lock().unwrap().push(target.clone());
        let upstream = names.get(&target).and_then(|a| TcpStream::connect(a).ok());
        let Some(upstream) = upstream else {
            client.write_all(&[5, 4, 0, 1, 0, 0, 0, 0, 0, 0])?; // host unreachable
            return Ok(());
        };
        client.write_all(&[5, 0, 0, 1, 0, 0, 0, 0, 0, 0])?;
        let (mut client_read, mut upstream_write) = (client.try_clone()?, upstream.try_clone()?);
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut client_read, &mut upstream_write);
            let _ = upstream_write.shutdown(std::net::Shutdown::Write);
        });
        let (mut upstream_read, mut client_write) = (upstream, client);
        std::io::copy(&mut upstream_read, &mut client_write)?;
        let _ = client_write.shutdown(std::net::Shutdown::Write);
        Ok(())
    }

    fn requested(&self) -> Vec<String> {
        self.requested.lock().unwrap().clone()
    }

    fn url(&self) -> String {
        format!("socks5h://127.0.0.1:{}", self.port)
    }
}

/// A port where nothing listens (a proxy that is down), free to be bound later.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Node A reaches B only as `http://peer-b.onion:{port}` through `a_proxy`; B's own links go
/// through a proxy that is down, so nothing moves from B to A or from A to B except through
/// A's proxy (A's push carries A's deposits, A's pull fetches B's).
/// Returns (A, B, the name:port B is known by, B's 127.0.0.1 address).
fn two_nodes(a_proxy: &str) -> (Node, Node, String, String) {
    let a = Reserved::new(false);
    let b = Reserved::new(false);
    let b_addr = b.peer_url.trim_start_matches("http://").to_string();
    let b_port = b_addr.rsplit_once(':').unwrap().1.to_string();
    let b_name = format!("peer-b.onion:{b_port}");
    let dead_proxy = format!("socks5h://127.0.0.1:{}", free_port());
    let a_url = a.peer_url.clone();
    let a = a.start(
        mesh_config()
            .env("MESH_RELAY_PEERS", format!("http://{b_name}"))
            .env("MESH_RELAY_SOCKS_PROXY", a_proxy),
    );
    let b = b.start(
        mesh_config()
            .env("MESH_SELF_PEER_URL", format!("http://{b_name}"))
            .env("MESH_RELAY_PEERS", &a_url)
            .env("MESH_RELAY_SOCKS_PROXY", dead_proxy),
    );
    (a, b, b_name, b_addr)
}

#[actix_rt::test]
async fn a_peer_known_only_to_the_proxy_gets_pushes_and_serves_its_feed() {
    let proxy_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy_port = proxy_listener.local_addr().unwrap().port();
    let (a, b, b_name, b_addr) = two_nodes(&format!("socks5h://127.0.0.1:{proxy_port}"));
    let proxy = SocksProxy::serve(proxy_listener, HashMap::from([(b_name.clone(), b_addr)]));
    assert_eq!(proxy.url(), format!("socks5h://127.0.0.1:{proxy_port}"));
    a.ready().await;
    b.ready().await;
    let (sender, owner) = (Identity::new(), Identity::new());

    // Push: a deposit on A reaches B (B cannot pull A: its own proxy is down).
    let pushed = sender.envelope_to(&owner, "socks-push-1");
    assert_eq!(a.send(&pushed).await.0, 200);
    wait_for_ids(&b, &owner, &["socks-push-1"]).await;
    assert!(
        a.metric(&format!(
            "dm_replication_push_ok_total{{peer=\"http://{b_name}\"}}"
        ))
        .await
            >= 1.0
    );

    // Pull: a deposit on B reaches A only through A's pull of B's feed (B's pushes fail).
    let other_sender = Identity::new();
    let pulled = other_sender.envelope_to(&owner, "socks-pull-1");
    assert_eq!(b.send(&pulled).await.0, 200);
    wait_for_id_set(&a, &owner, &["socks-push-1", "socks-pull-1"]).await;

    let requested = proxy.requested();
    assert!(!requested.is_empty());
    assert!(
        requested.iter().all(|target| *target == b_name),
        "A asked the proxy for {requested:?}, expected only {b_name}"
    );
}

#[actix_rt::test]
async fn a_proxy_that_is_down_delays_replication_but_never_a_deposit() {
    let proxy_port = free_port();
    let (a, b, b_name, b_addr) = two_nodes(&format!("socks5h://127.0.0.1:{proxy_port}"));
    a.ready().await;
    b.ready().await;
    let owner = Identity::new();
    let ids = ["down-1", "down-2", "down-3"];
    for id in ids {
        let envelope = Identity::new().envelope_to(&owner, id);
        let started = Instant::now();
        assert_eq!(a.send(&envelope).await.0, 200, "{id}");
        // SPEC §7: a deposit never waits for a peer. Generous for a busy machine, far below
        // the 60 s connect timeout of a proxied link.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{id} took {:?}",
            started.elapsed()
        );
    }
    let errors = format!("dm_replication_push_error_total{{peer=\"http://{b_name}\"}}");
    wait_for(Duration::from_secs(20), || async {
        a.metric(&errors).await >= 1.0
    })
    .await;
    assert_eq!(b.pending_ids(&owner).await, Vec::<String>::new());

    let proxy = SocksProxy::serve(
        TcpListener::bind(("127.0.0.1", proxy_port)).unwrap(),
        HashMap::from([(b_name.clone(), b_addr)]),
    );
    wait_for_id_set(&b, &owner, &ids).await;
    assert!(proxy.requested().contains(&b_name));
}
