//! The `dmrelay` command: `serve` runs a node; `keygen` makes a key; `send` and `inbox` are the
//! client (in `client_cli`); `envelope`, `poll-request` and `ack-request` print signed JSON to
//! send with curl (for trying a node by hand); `init` and `status` are for operators
//! (`dmrelay::ops`).

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

/// `eprintln!` for the command's own messages, except that a closed stderr (`dmrelay … 2>&1 |
/// head -1`) is ignored instead of panicking, which would turn exit 1/2/3 into 101.
macro_rules! tell {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod client_cli;

/// mimalloc, not the system allocator, for the node (and the client commands). A node allocates
/// and frees per request on several threads (HTTP workers, shards, the store writer); glibc's
/// malloc and free were ~15 % of a node's CPU in the mesh profile, and mimalloc took 8–11 % off
/// the node CPU per deposit (BENCHMARKS.md). Built without transparent huge pages (`no_thp`):
/// with them the idle RSS rose from 11 to 27 MiB. Memory freed by evicted mailboxes goes back to
/// the OS by mimalloc's own purge (about a second later). Only here, in the binary: the library
/// stays on whatever allocator its user picks (the fuzz targets keep the sanitizer's).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};
use dmrelay::client::keys::{generate_secret_key_file, load_secret_key};
use dmrelay::config::Settings;
use dmrelay::node::{self, Listeners};
use dmrelay::protocol::{
    AckObject, Envelope, MailboxKey, MsgId, PollRequest, now_unix, random_hex,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "dmrelay",
    version,
    about = "Store-and-forward relay for end-to-end-encrypted direct messages"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a relay node (settings: config file, then MESH_* environment variables; see README).
    Serve {
        /// TOML configuration file [default: config/node.toml when it exists].
        #[arg(long, env = "MESH_DM_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Write a new secret key file (mode 0600) and print its public key (your mailbox).
    Keygen {
        /// Where to write the secret key.
        #[arg(long, default_value = "dmrelay.key")]
        out: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Encrypt a message for a mailbox, sign it and deposit it on a node.
    Send(client_cli::SendArgs),
    /// Read your mailbox: verify and decrypt every message, optionally acknowledge or follow.
    Inbox(client_cli::InboxArgs),
    /// Start three nodes on this machine and show, step by step, what the mesh does (about 2 s;
    /// nothing to set up, nothing left behind; DMRELAY_DEMO_LOGS=1 shows the nodes' logs).
    Demo,
    /// Print a signed envelope (JSON for POST /api/mesh/dm/send). The text is NOT encrypted:
    /// this is for trying a relay; real clients encrypt before signing.
    Envelope {
        /// The sender's key file.
        #[arg(long)]
        key: PathBuf,
        /// The recipient's public key (64 lowercase hex).
        #[arg(long)]
        to: String,
        /// The message bytes (placed in `ciphertext` as they are).
        #[arg(long)]
        text: String,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 86_400)]
        ttl: u64,
        /// Message id [default: random].
        #[arg(long)]
        msg_id: Option<String>,
    },
    /// Print a signed poll request (JSON for POST /api/mesh/dm/poll).
    PollRequest {
        /// The mailbox owner's key file.
        #[arg(long)]
        key: PathBuf,
        /// Most messages to return (0..=100).
        #[arg(long, default_value_t = 8)]
        limit: u64,
    },
    /// Write a commented node.toml with a new mesh secret (mode 0600) and a usable self URL.
    Init {
        /// Directory for node.toml (created if missing); the data dir goes beside it.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The address the node listens on.
        #[arg(long, default_value = dmrelay::config::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// The URL peers reach this node at [default: http://{listen}; required when listen is
        /// a wildcard such as 0.0.0.0].
        #[arg(long)]
        self_url: Option<String>,
        /// A peer's URL (repeat for several); each is written as a [[peers]] table.
        #[arg(long = "peer")]
        peers: Vec<String>,
        /// Take the mesh secret from another node's node.toml (or a file holding only the
        /// secret) instead of generating one: every node of a mesh shares it.
        #[arg(long)]
        secret_from: Option<PathBuf>,
        /// Replace an existing node.toml.
        #[arg(long)]
        force: bool,
    },
    /// Show a running node's view: version, pending, mailboxes, and per peer the breaker, push
    /// queue, last push and last complete pull (from its GET /status).
    Status {
        /// The node's base URL.
        #[arg(long, default_value = "http://127.0.0.1:8787")]
        node: String,
        /// Print the node's JSON as it is.
        #[arg(long)]
        json: bool,
        /// Extra CA certificates (PEM) to trust for an https:// node.
        #[arg(long)]
        ca_file: Option<PathBuf>,
    },
    /// Print a signed ack object (JSON for POST /api/mesh/dm/ack).
    AckRequest {
        /// The mailbox owner's key file.
        #[arg(long)]
        key: PathBuf,
        /// Message ids to acknowledge.
        #[arg(required = true)]
        msg_ids: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Keygen { out, force } => keygen(&out, force),
        Command::Send(args) => return client_cli::send(args),
        Command::Inbox(args) => return client_cli::inbox(args),
        Command::Demo => demo(),
        Command::Envelope {
            key,
            to,
            text,
            ttl,
            msg_id,
        } => print_envelope(&key, &to, &text, ttl, msg_id),
        Command::PollRequest { key, limit } => print_poll(&key, limit),
        Command::AckRequest { key, msg_ids } => print_ack(&key, &msg_ids),
        Command::Init {
            dir,
            listen,
            self_url,
            peers,
            secret_from,
            force,
        } => init(dmrelay::ops::init::InitOptions {
            dir,
            listen,
            self_url,
            peers,
            secret_from,
            force,
        }),
        Command::Status {
            node,
            json,
            ca_file,
        } => status(&node, json, ca_file.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tell!("dmrelay: {message}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`; a filter that would silence dmrelay
/// is refused, see `dmrelay::startup::check_log_filter`); one JSON object per line when
/// `MESH_DM_LOG_FORMAT=json` (for log pipelines), human-readable lines otherwise.
fn init_logging() -> Result<(), String> {
    use std::io::IsTerminal as _;
    let rust_log = std::env::var("RUST_LOG").ok();
    let directives = dmrelay::startup::check_log_filter(rust_log.as_deref())?;
    let filter = tracing_subscriber::EnvFilter::builder()
        .parse(dmrelay::startup::quiet_store_engine(&directives))
        .map_err(|e| format!("invalid configuration: RUST_LOG: {e}"))?;
    // A log line that cannot be written (stderr a closed pipe, as after `| head -1`) is dropped.
    // With internal-error logging on, tracing-subscriber would report it with `eprintln!`, which
    // panics on that same closed pipe, in whichever task logged: on the SIGTERM path that task
    // is the one that stops the servers, and the node kept serving.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match std::env::var("MESH_DM_LOG_FORMAT").as_deref() {
        Ok("json") => builder.json().init(),
        Ok("text") | Err(_) => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        Ok(other) => {
            return Err(format!(
                "invalid configuration: MESH_DM_LOG_FORMAT: {other:?} is neither \"text\" nor \"json\""
            ));
        }
    }
    Ok(())
}

fn serve(config: Option<&Path>) -> Result<(), String> {
    let settings = Settings::load(config).map_err(|e| e.to_string())?;
    init_logging()?;
    let listeners = match inherited_listeners()? {
        Some(listeners) => listeners,
        None => Listeners::bind(&settings).map_err(|e| e.to_string())?,
    };
    actix_rt::System::new()
        .block_on(node::run(settings, listeners))
        .map_err(|e| e.to_string())
}

/// Sockets passed by a supervisor (systemd socket activation: `LISTEN_FDS`, fds from 3). The
/// first is the client plane, the second (if any) the peer plane. Tests use this too, so that a
/// node restarted after `kill -9` keeps its port.
fn inherited_listeners() -> Result<Option<Listeners>, String> {
    use std::os::fd::FromRawFd as _;
    let Ok(count) = std::env::var("LISTEN_FDS") else {
        return Ok(None);
    };
    if let Ok(pid) = std::env::var("LISTEN_PID")
        && pid.trim() != std::process::id().to_string()
    {
        return Ok(None);
    }
    let count: i32 = count
        .trim()
        .parse()
        .map_err(|_| format!("invalid configuration: LISTEN_FDS: {count:?} is not a number"))?;
    if !(1..=2).contains(&count) {
        return Err(format!(
            "invalid configuration: LISTEN_FDS: expected 1 or 2 sockets, got {count}"
        ));
    }
    // SAFETY: by the socket-activation protocol, fds 3.. are listening sockets handed to this
    // process and owned by nobody else in it.
    #[allow(unsafe_code)]
    let take = |fd: i32| unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let client = take(3);
    let peer = (count == 2).then(|| take(4));
    for listener in std::iter::once(&client).chain(peer.as_ref()) {
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("inherited socket unusable: {e}"))?;
    }
    Ok(Some(Listeners { client, peer }))
}

fn demo() -> Result<(), String> {
    let binary = std::env::current_exe()
        .map_err(|e| format!("cannot find the dmrelay executable to start nodes: {e}"))?;
    dmrelay::demo::run(&binary)
}

fn keygen(out: &Path, force: bool) -> Result<(), String> {
    let key = generate_secret_key_file(out, force).map_err(|e| e.to_string())?;
    println!("{}", hex::encode(key.verifying_key().to_bytes()));
    tell!("secret key written to {} (mode 0600)", out.display());
    Ok(())
}

fn load_key(path: &Path) -> Result<ed25519_dalek::SigningKey, String> {
    load_secret_key(path).map_err(|e| e.to_string())
}

fn print_json(value: &impl serde::Serialize) -> Result<(), String> {
    let text = serde_json::to_string(value).map_err(|e| e.to_string())?;
    println!("{text}");
    Ok(())
}

fn print_envelope(
    key: &Path,
    to: &str,
    text: &str,
    ttl: u64,
    msg_id: Option<String>,
) -> Result<(), String> {
    let sender = load_key(key)?;
    let mailbox = MailboxKey::parse("--to", to).map_err(|e| e.to_string())?;
    let msg_id = match msg_id {
        Some(id) => id,
        None => random_hex(16).map_err(|e| format!("no randomness: {e}"))?,
    };
    let msg_id = MsgId::parse("--msg-id", &msg_id).map_err(|e| e.to_string())?;
    let now = now_unix();
    let envelope = Envelope::sign(&sender, mailbox, msg_id, now, now + ttl, text.as_bytes());
    print_json(&envelope)
}

fn print_poll(key: &Path, limit: u64) -> Result<(), String> {
    let owner = load_key(key)?;
    let nonce = random_hex(16).map_err(|e| format!("no randomness: {e}"))?;
    print_json(&PollRequest::sign(&owner, now_unix(), nonce, limit).to_json())
}

fn print_ack(key: &Path, msg_ids: &[String]) -> Result<(), String> {
    let owner = load_key(key)?;
    let ids = msg_ids
        .iter()
        .map(|id| MsgId::parse("msg_ids", id).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    print_json(&AckObject::sign(&owner, now_unix(), ids))
}

fn init(options: dmrelay::ops::init::InitOptions) -> Result<(), String> {
    let report = dmrelay::ops::init::init(&options)?;
    println!("{}", report.path.display());
    tell!(
        "wrote {} (mode 0600): self URL {}, data in {}, {} mesh secret",
        report.path.display(),
        report
            .self_url
            .as_deref()
            .unwrap_or("derived from the port bound at start"),
        report.data_dir.display(),
        if report.new_secret {
            "a new"
        } else {
            "the copied"
        }
    );
    tell!(
        "start it with: dmrelay serve --config {}",
        report.path.display()
    );
    Ok(())
}

fn status(node: &str, json: bool, ca_file: Option<&Path>) -> Result<(), String> {
    let status = dmrelay::ops::report::fetch(node, ca_file)?;
    if json {
        print_json(&status)
    } else {
        print!("{}", dmrelay::ops::report::render(&status, now_unix()));
        Ok(())
    }
}
