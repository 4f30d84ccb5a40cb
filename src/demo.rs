//! `dmrelay demo`: a three-node mesh on this machine and a short story told in the terminal.
//!
//! How it runs:
//!
//! ```text
//! run ─▶ Mesh::start: a temp dir, one 127.0.0.1:0 socket per node, each handed to a child
//!        `dmrelay serve` (LISTEN_FDS socket activation, memory mode, PDEATHSIG on Linux)
//!     ─▶ story (in an actix System, raced against Ctrl-C / SIGTERM):
//!          Alice, Bob and Mallory are fresh keys; deposits, polls and acks go through
//!          `crate::client` (Appendix A box, signed requests); Mallory's relay is played by the
//!          demo itself, signing peer-plane requests with `crate::peer::auth`;
//!          replication delays are read on the nodes' `/metrics` (the demo never polls as Bob
//!          just to watch the mesh); the long poll's wake-up is timed by the client
//!     ─▶ Mesh::stop (also on every error path, through Drop): kill the nodes, remove the dir
//! ```
//!
//! Mallory's relay is a configured peer of the three honest nodes (its URL is in their
//! `MESH_RELAY_PEERS` and it knows the mesh secret), but nothing listens at its URL: the honest
//! nodes' pushes and pulls to it simply fail, which is what a peer that serves nobody looks like.

use crate::client::display::{safe_for_terminal, utc_time};
use crate::client::{Client, ClientError, ClientOptions, Content, DepositStatus, Received, seal};
use crate::protocol::{Envelope, MailboxKey, MsgId, generate_signing_key, now_unix, random_hex};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::collections::HashMap;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lifetime of the demo's messages.
const TTL_S: u64 = 3600;
/// The longest any one step may wait for the mesh before the demo gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node's `/metrics` is read while waiting for a change.
const METRICS_POLL: Duration = Duration::from_millis(2);
/// The nodes' per-sender cap (SPEC §4 default, set explicitly so the story holds).
const CAP: u64 = 2;
/// Bob's long poll (SPEC §6.2 `wait_s`).
const BOB_WAIT_S: u64 = 10;
/// Replicas a node stored. It counts once the replica is committed and visible to a poll (the
/// `dm_pending_envelopes` gauge moves at the commit, a moment before the mailbox shows it).
const REPLICAS_STORED: &str = "dm_replica_accepted_total";
/// Set to see the nodes' logs on stderr.
pub const LOGS_ENV: &str = "DMRELAY_DEMO_LOGS";

/// Runs the demo with nodes started from `node_binary` (the `dmrelay` executable).
pub fn run(node_binary: &Path) -> Result<(), String> {
    let style = Style::detect();
    let mut mesh = Mesh::start(node_binary)?;
    style.intro(&mesh);
    let outcome = actix_rt::System::new().block_on(async {
        tokio::select! {
            result = story(&mesh, &style) => result,
            signal = interrupted() => Err(format!("{signal}: stopping the demo")),
        }
    });
    let stopped = mesh.stop();
    match &outcome {
        Ok(()) => say(&style.dim(&stopped)),
        // Not eprintln!: a closed stderr must not turn the demo's error into a panic.
        Err(_) => {
            let _ = writeln!(std::io::stderr(), "{stopped}");
        }
    }
    outcome
}

async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "interrupted",
            _ = term.recv() => "terminated",
        },
        // Without handlers the default action (exit) still applies, and PDEATHSIG stops the nodes.
        _ => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------------
// The nodes.

/// A directory under the system's temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<Self, String> {
        let suffix = random_hex(4).map_err(|e| format!("no randomness: {e}"))?;
        let path =
            std::env::temp_dir().join(format!("dmrelay-demo-{}-{suffix}", std::process::id()));
        std::fs::create_dir(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `dmrelay serve` child; killed on drop.
struct NodeProcess {
    url: String,
    child: Child,
}

impl NodeProcess {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The three honest nodes, Mallory's relay's address, and the temp dir.
struct Mesh {
    // Declared before `dir`: the nodes die before their directory goes.
    nodes: Vec<NodeProcess>,
    mallory_relay_url: String,
    mesh_secret: String,
    dir: Option<TempDir>,
}

impl Mesh {
    fn start(binary: &Path) -> Result<Self, String> {
        let dir = TempDir::create()?;
        let mesh_secret = random_hex(16).map_err(|e| format!("no randomness: {e}"))?;
        let bind = || {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| Ok((format!("http://{}", l.local_addr()?), l)))
                .map_err(|e| format!("cannot bind 127.0.0.1:0: {e}"))
        };
        let sockets = [bind()?, bind()?, bind()?];
        // A free port that nobody serves: Mallory's relay answers no honest node.
        let (mallory_relay_url, mallory_socket) = bind()?;
        drop(mallory_socket);
        let mut nodes = Vec::new();
        for (i, (url, listener)) in sockets.iter().enumerate() {
            let data_dir = dir.0.join(format!("node{}", i + 1));
            std::fs::create_dir(&data_dir)
                .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
            let peers: Vec<&str> = sockets
                .iter()
                .filter(|(other, _)| other != url)
                .map(|(other, _)| other.as_str())
                .chain([mallory_relay_url.as_str()])
                .collect();
            let env = [
                ("MESH_SELF_PEER_URL", url.clone()),
                ("MESH_RELAY_PEERS", peers.join(",")),
                ("MESH_PEER_PUSH_SECRET", mesh_secret.clone()),
                ("MESH_DM_PERSIST", "memory".into()),
                ("MESH_DM_DATA_DIR", data_dir.display().to_string()),
                ("MESH_DM_PENDING_PER_SENDER_LIMIT", CAP.to_string()),
                ("MESH_DM_SYNC_INTERVAL_S", "0.5".into()),
                ("MESH_RELAY_PUSH_TIMEOUT_S", "2".into()),
                ("MESH_DM_SHARDS", "2".into()),
                ("MESH_DM_HTTP_WORKERS", "2".into()),
                ("RUST_LOG", "warn".into()),
            ];
            let child = spawn_node(binary, listener, &env, &data_dir)
                .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
            nodes.push(NodeProcess {
                url: url.clone(),
                child,
            });
        }
        // The children hold their own copies of the sockets.
        drop(sockets);
        Ok(Self {
            nodes,
            mallory_relay_url,
            mesh_secret,
            dir: Some(dir),
        })
    }

    fn node(&self, number: usize) -> Result<&NodeProcess, String> {
        self.nodes
            .get(number.wrapping_sub(1))
            .ok_or_else(|| format!("the demo has no node {number}"))
    }

    /// Kills every node, removes the temp dir; returns a sentence saying so.
    fn stop(&mut self) -> String {
        let pids: Vec<String> = self
            .nodes
            .iter_mut()
            .map(|node| {
                node.kill();
                node.child.id().to_string()
            })
            .collect();
        let dir = self.dir.take().map(|d| d.0.display().to_string());
        format!(
            "Stopped the nodes (pids {}) and removed {}.",
            pids.join(", "),
            dir.unwrap_or_default()
        )
    }
}

/// Starts `dmrelay serve` on `listener` (socket activation: it becomes fd 3 in the child).
fn spawn_node(
    binary: &Path,
    listener: &TcpListener,
    env: &[(&str, String)],
    dir: &Path,
) -> std::io::Result<Child> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::process::CommandExt as _;
    let fd = listener.as_raw_fd();
    let mut command = Command::new(binary);
    command.arg("serve");
    // The user's own node settings must not leak into the demo's nodes.
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("MESH_") || key_text.starts_with("LISTEN_") {
            command.env_remove(&key);
        }
    }
    let logs = std::env::var_os(LOGS_ENV).is_some();
    command
        .env("LISTEN_FDS", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(if logs {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        // No config/node.toml is found there by accident.
        .current_dir(dir);
    let parent = std::process::id();
    // SAFETY: only async-signal-safe libc calls between fork and exec.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(move || {
            // The node dies with the demo, even if the demo is killed with SIGKILL.
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the demo exited"));
                }
            }
            let _ = parent;
            let high = libc::fcntl(fd, libc::F_DUPFD, 10);
            if high < 0 || libc::dup2(high, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command.spawn()
}

// ---------------------------------------------------------------------------------------------
// Talking to the nodes.

/// One client for every `/metrics` read (they come every few ms while the story waits for a
/// node): its connections are kept, not opened anew per read. awc clients are per thread.
fn http() -> awc::Client {
    thread_local! {
        static CLIENT: awc::Client = awc::Client::builder()
            .timeout(Duration::from_secs(15))
            .finish();
    }
    CLIENT.with(awc::Client::clone)
}

/// A node's `/metrics`, as `name{labels}` → value.
async fn metrics(node: &NodeProcess) -> Result<HashMap<String, f64>, String> {
    let url = format!("{}/metrics", node.url);
    let mut response = http()
        .get(&url)
        .send()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    let bytes = response
        .body()
        .limit(4 << 20)
        .await
        .map_err(|e| format!("GET {url}: {e}"))?;
    Ok(String::from_utf8_lossy(&bytes)
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            Some((key.to_string(), value.parse().ok()?))
        })
        .collect())
}

/// A metric every node exposes from the start.
fn required(metrics: &HashMap<String, f64>, name: &str) -> Result<u64, String> {
    metrics
        .get(name)
        .map(|v| *v as u64)
        .ok_or_else(|| format!("the node's /metrics has no {name}"))
}

/// Reads `name` on `node` until `done(value)`; returns the time taken since `since`.
async fn wait_metric(
    node: &NodeProcess,
    name: &str,
    since: Instant,
    done: impl Fn(u64) -> bool,
) -> Result<Duration, String> {
    loop {
        let value = required(&metrics(node).await?, name)?;
        if done(value) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > STEP_TIMEOUT {
            return Err(format!(
                "{} did not get there within {STEP_TIMEOUT:?} ({name} is {value})",
                node.url
            ));
        }
        actix_rt::time::sleep(METRICS_POLL).await;
    }
}

/// Waits until every node in `nodes` answers `/health`.
async fn wait_healthy(mesh: &Mesh) -> Result<(), String> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(1))
        .finish();
    let since = Instant::now();
    for node in &mesh.nodes {
        let url = format!("{}/health", node.url);
        loop {
            if matches!(client.get(&url).send().await, Ok(r) if r.status().is_success()) {
                break;
            }
            if since.elapsed() > Duration::from_secs(20) {
                return Err(format!("{} did not start within 20 s", node.url));
            }
            actix_rt::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// POSTs `body` to `node` as Mallory's relay (a configured peer that knows the mesh secret),
/// through the node's own peer client: the same signing a real relay does.
async fn post_as_peer(
    mesh: &Mesh,
    node: &NodeProcess,
    path: &str,
    body: Vec<u8>,
) -> Result<Value, String> {
    let peer = crate::config::PeerSettings {
        url: node.url.clone(),
        secret: mesh.mesh_secret.clone(),
        socks_proxy: None,
    };
    let tls = crate::tls::client_config(None).map_err(|e| format!("TLS: {e}"))?;
    let client = crate::peer::client::PeerClient::new(
        &peer,
        &mesh.mallory_relay_url,
        Duration::from_secs(10),
        Duration::from_secs(5),
        std::sync::Arc::new(tls),
    );
    let url = format!("{}{path}", node.url);
    let bytes = client
        .post(path, body)
        .await
        .map_err(|e| format!("POST {url}: {e}"))?;
    serde_json::from_slice(&bytes)
        .map_err(|_| format!("POST {url} answered with a body that is not JSON"))
}

// ---------------------------------------------------------------------------------------------
// The story.

struct People {
    alice: SigningKey,
    bob: SigningKey,
    mallory: SigningKey,
}

impl People {
    fn new() -> Result<Self, String> {
        let key = || generate_signing_key().map_err(|e| format!("no randomness: {e}"));
        Ok(Self {
            alice: key()?,
            bob: key()?,
            mallory: key()?,
        })
    }

    fn bob_mailbox(&self) -> MailboxKey {
        mailbox_of(&self.bob)
    }

    /// Who a sender key belongs to.
    fn name_of(&self, sender_hex: &str) -> &'static str {
        [
            (&self.alice, "Alice"),
            (&self.bob, "Bob"),
            (&self.mallory, "Mallory"),
        ]
        .into_iter()
        .find(|(key, _)| mailbox_of(key).to_hex() == sender_hex)
        .map_or("someone else", |(_, name)| name)
    }
}

fn mailbox_of(key: &SigningKey) -> MailboxKey {
    MailboxKey::of(key)
}

fn short(hex: &str) -> String {
    format!("{}…", hex.get(..8).unwrap_or(hex))
}

fn ms(duration: Duration) -> String {
    format!("{} ms", duration.as_millis())
}

fn client_error(err: ClientError) -> String {
    err.to_string()
}

/// Seals `text` for `to` (Appendix A) and signs it as `from`. The `msg_id` is random after the
/// story's message `number`, so that a node lists the messages (written within the same second,
/// hence sorted by `msg_id`, SPEC §6.2) in the order the story wrote them.
fn letter(from: &SigningKey, to: &MailboxKey, text: &str, number: u8) -> Result<Envelope, String> {
    let now = now_unix();
    let sealed = seal(from, to, text, now).map_err(client_error)?;
    let random = random_hex(15).map_err(|e| format!("no randomness: {e}"))?;
    let msg_id =
        MsgId::parse("msg_id", &format!("{number:02}-{random}")).map_err(|e| e.to_string())?;
    Ok(Envelope::sign(from, *to, msg_id, now, now + TTL_S, &sealed))
}

async fn story(mesh: &Mesh, out: &Style) -> Result<(), String> {
    wait_healthy(mesh).await?;
    let people = People::new()?;
    let bob = people.bob_mailbox();
    out.line(&format!(
        "Alice {}, Bob {}, Mallory {}: fresh Ed25519 keys, in memory.",
        short(&mailbox_of(&people.alice).to_hex()),
        short(&bob.to_hex()),
        short(&mailbox_of(&people.mallory).to_hex()),
    ));
    let options = ClientOptions::default();
    let [node1, node2, node3] = [mesh.node(1)?, mesh.node(2)?, mesh.node(3)?];
    let client1 = Client::new(&node1.url, &options).map_err(client_error)?;
    let client3 = Client::new(&node3.url, &options).map_err(client_error)?;

    // 1. Alice writes to offline Bob on node 1; the envelopes reach nodes 2 and 3.
    out.heading("1. Alice writes to Bob, who is offline, through node 1");
    let alice_texts = [
        "Hi Bob! Lunch on Friday?",
        "I'll book the place by the river.",
    ];
    for (i, text) in alice_texts.iter().enumerate() {
        let envelope = letter(&people.alice, &bob, text, i as u8 + 1)?;
        let status = client1.deposit(&envelope).await.map_err(client_error)?;
        let since = Instant::now();
        if status != DepositStatus::Accepted {
            return Err(format!("node 1 answered {} to Alice", status.as_str()));
        }
        let expected = i as u64 + 1;
        let (on2, on3) = futures_util::future::join(
            wait_metric(node2, REPLICAS_STORED, since, |n| n >= expected),
            wait_metric(node3, REPLICAS_STORED, since, |n| n >= expected),
        )
        .await;
        out.line(&format!(
            "{} {} \"{text}\" (sealed for Bob: {}-byte box, msg {})",
            out.good("accepted on node 1:"),
            if i == 0 { "message 1," } else { "message 2," },
            base64_len(&envelope.ciphertext),
            short(envelope.msg_id.as_str()),
        ));
        out.line(&format!(
            "  seen on nodes 2 and 3 after {} and {} (pushed over the peer plane)",
            out.number(&ms(on2?)),
            out.number(&ms(on3?)),
        ));
    }

    // 2. The third unread message is over the cap.
    out.heading("2. Alice sends a third message before Bob has read any");
    let third = letter(&people.alice, &bob, "Bob? Are you there?", 3)?;
    match client1.deposit(&third).await {
        Err(ClientError::Refused(spec)) if spec.code == "cap_violation" => {
            out.line(&format!(
                "{} {} {} (pending {}, limit {})",
                out.bad("refused by node 1:"),
                spec.status,
                out.bad(&spec.code),
                spec.extra_u64("pending").unwrap_or_default(),
                spec.extra_u64("limit").unwrap_or_default(),
            ));
            out.line(&format!("  the node says: \"{}\"", spec.detail));
        }
        Err(other) => return Err(format!("expected cap_violation, got: {other}")),
        Ok(status) => {
            return Err(format!(
                "expected cap_violation, node 1 answered {}",
                status.as_str()
            ));
        }
    }

    // 3. Mallory's relay accepts extras and pushes them; the honest node refuses the extras.
    out.heading(
        "3. Mallory's own relay takes 4 messages from her to Bob and pushes them to node 2",
    );
    let mallory_texts = [
        "You won a prize!",
        "Claim it now!",
        "Last chance!!",
        "Really the last chance!!!",
    ];
    let mut batch = Vec::new();
    for (i, text) in mallory_texts.iter().enumerate() {
        let envelope = letter(&people.mallory, &bob, text, i as u8 + 4)?;
        batch.push(serde_json::to_value(&envelope).map_err(|e| e.to_string())?);
    }
    let body = serde_json::to_vec(&serde_json::json!({ "envelopes": batch }))
        .map_err(|e| e.to_string())?;
    let before_push = Instant::now();
    let reply = post_as_peer(mesh, node2, "/api/mesh/dm/replicate-envelope", body).await?;
    let results = reply
        .get("results")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("node 2's reply has no results: {reply}"))?;
    let words: Vec<String> = results
        .iter()
        .map(|r| {
            let status = r.get("status").and_then(Value::as_str).unwrap_or("?");
            match r.get("error").and_then(Value::as_str) {
                Some(error) => out.bad(&format!("{status} ({error})")),
                None => out.good(status),
            }
        })
        .collect();
    let accepted = count_status(results, "accepted");
    let capped = results
        .iter()
        .filter(|r| r.get("error").and_then(Value::as_str) == Some("cap_violation"))
        .count();
    out.line(&format!(
        "node 2 answered, per envelope: {}",
        words.join(", ")
    ));
    if accepted != CAP as usize || capped != mallory_texts.len() - CAP as usize {
        return Err(format!(
            "expected {CAP} accepted and the rest rejected for cap_violation: {reply}"
        ));
    }
    out.line("  Mallory's extras rejected: honest nodes apply the cap to replicas too (SPEC §4),");
    out.line(&format!(
        "  so no honest node holds more than {CAP} unread from her for Bob, whatever her relay takes."
    ));
    let pending_after = (alice_texts.len() + accepted) as u64;
    // Node 1 deposited Alice's two itself; node 3 holds them as replicas.
    let (on1, on3) = futures_util::future::join(
        wait_metric(node1, REPLICAS_STORED, before_push, |n| {
            n >= accepted as u64
        }),
        wait_metric(node3, REPLICAS_STORED, before_push, |n| n >= pending_after),
    )
    .await;
    out.line(&format!(
        "  her {accepted} accepted ones reached nodes 1 and 3 through node 2's change feed after {} and {}",
        out.number(&ms(on1?)),
        out.number(&ms(on3?)),
    ));

    // 4. Bob comes online on node 3, reads and acknowledges.
    out.heading(&format!(
        "4. Bob comes online on node 3 with a long poll (wait_s {BOB_WAIT_S})"
    ));
    let since = Instant::now();
    let inbox = client3
        .inbox(&people.bob, 8, BOB_WAIT_S)
        .await
        .map_err(client_error)?;
    out.line(&format!(
        "answered after {} with {} messages; each signature verified, each box opened with Bob's key:",
        out.number(&ms(since.elapsed())),
        inbox.messages.len(),
    ));
    let ids = show_inbox(&people, &inbox.messages, pending_after, out)?;
    let report = client3.ack(&people.bob, &ids).await.map_err(client_error)?;
    let acked_at = Instant::now();
    out.line(&format!(
        "Bob read all {} and acknowledged them on node 3 (removed {})",
        ids.len(),
        report.removed
    ));

    // 5. The ack travels: the quotas are free again, and Bob stays online.
    out.heading("5. Bob's ack travels the mesh; Bob stays online on node 3");
    let (on1, on2) = futures_util::future::join(
        wait_metric(node1, "dm_ack_total", acked_at, |n| n >= 1),
        wait_metric(node2, "dm_ack_total", acked_at, |n| n >= 1),
    )
    .await;
    out.line(&format!(
        "ack reached nodes 1 and 2 after {} and {}",
        out.number(&ms(on1?)),
        out.number(&ms(on2?)),
    ));
    // Node 2 kept Mallory's refused extras aside (SPEC §7.4): the ack made room for them, and
    // they reach node 3 through node 2's change feed.
    let extras = (mallory_texts.len() - accepted) as u64;
    let since = Instant::now();
    let on3 = wait_metric(node3, REPLICAS_STORED, since, |n| {
        n >= pending_after + extras
    })
    .await?;
    out.line(&format!(
        "node 2 now lets in Mallory's {extras} held-back extras (SPEC §7.4): Bob read her first {CAP},"
    ));
    out.line(&format!(
        "  so she is within the cap again (the cap throttles, it never loses mail); on node 3 after {}:",
        out.number(&ms(on3)),
    ));
    let inbox = client3
        .inbox(&people.bob, 8, 0)
        .await
        .map_err(client_error)?;
    let ids = show_inbox(&people, &inbox.messages, extras, out)?;
    let report = client3.ack(&people.bob, &ids).await.map_err(client_error)?;
    out.line(&format!(
        "Bob read and acknowledged them too (removed {}), then waits for new mail (wait_s {BOB_WAIT_S})",
        report.removed
    ));
    // Alice writes once Bob's poll is parked on node 3: the replica pushed from node 1 wakes it.
    let text = "Great, see you on Friday!";
    let bob_waits = async {
        let inbox = client3.inbox(&people.bob, 8, BOB_WAIT_S).await;
        (inbox, Instant::now())
    };
    let alice_writes = async {
        wait_metric(node3, "dm_waiting_polls", Instant::now(), |n| n >= 1).await?;
        let sent = Instant::now();
        let status = client1
            .deposit(&letter(&people.alice, &bob, text, 8)?)
            .await
            .map_err(|err| format!("Alice's new message was refused: {err}"))?;
        Ok::<_, String>((status, sent))
    };
    let ((inbox, woken), deposit) = futures_util::future::join(bob_waits, alice_writes).await;
    let (status, sent) = deposit?;
    if status != DepositStatus::Accepted {
        return Err(format!("node 1 answered {} to Alice", status.as_str()));
    }
    out.line(&format!(
        "{} \"{text}\": Alice's quota is free again",
        out.good("accepted on node 1:")
    ));
    let inbox = inbox.map_err(client_error)?;
    out.line(&format!(
        "Bob's waiting poll on node 3 answered {} after Alice's deposit on node 1:",
        out.number(&ms(woken.saturating_duration_since(sent))),
    ));
    show_inbox(&people, &inbox.messages, 1, out)?;
    // Nodes 1 and 2 drop Mallory's extras once Bob's second ack reaches them.
    let since = Instant::now();
    for node in &mesh.nodes {
        wait_metric(node, "dm_pending_envelopes", since, |n| n == 1).await?;
    }

    // 6. What each node counted.
    out.heading("6. What each node counted (/metrics)");
    out.table(mesh).await?;
    Ok(())
}

/// Prints what Bob read; fails unless he read exactly `expected` messages, every one of them.
fn show_inbox(
    people: &People,
    messages: &[Received],
    expected: u64,
    out: &Style,
) -> Result<Vec<MsgId>, String> {
    let mut ids = Vec::new();
    for received in messages {
        out.line(&format!("  {}", describe(people, received, out)));
        if !matches!(received.content, Content::Read(_)) {
            return Err("Bob could not read every message".into());
        }
        ids.extend(received.msg_id.clone());
    }
    if ids.len() as u64 != expected {
        return Err(format!(
            "Bob expected {expected} messages, node 3 gave {}",
            ids.len()
        ));
    }
    Ok(ids)
}

fn base64_len(ciphertext: &str) -> usize {
    // Decoded length of standard padded base64.
    let padding = ciphertext.bytes().rev().take_while(|c| *c == b'=').count();
    (ciphertext.len() / 4 * 3).saturating_sub(padding)
}

fn count_status(results: &[Value], status: &str) -> usize {
    results
        .iter()
        .filter(|r| r.get("status").and_then(Value::as_str) == Some(status))
        .count()
}

fn describe(people: &People, received: &Received, out: &Style) -> String {
    let from = received
        .sender
        .as_deref()
        .map_or("?", |hex| people.name_of(hex));
    match &received.content {
        Content::Read(plain) => format!(
            "from {from:<8} {}  \"{}\"",
            out.dim(&utc_time(plain.sent_at)),
            safe_for_terminal(&plain.text)
        ),
        Content::Undecryptable(err) => {
            format!("from {from:<8} {}: {err}", out.bad("undecryptable"))
        }
        Content::Rejected(problem) => format!("from {from:<8} {}: {problem}", out.bad("rejected")),
    }
}

// ---------------------------------------------------------------------------------------------
// Output.

/// Prints a line; a closed stdout (`dmrelay demo | head`) does not stop the demo or its clean-up.
fn say(text: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{text}");
}

/// Colour on a terminal unless `NO_COLOR` is set (and not empty); plain text otherwise.
struct Style {
    colour: bool,
}

impl Style {
    fn detect() -> Self {
        use std::io::IsTerminal as _;
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        Self {
            colour: std::io::stdout().is_terminal() && !no_color,
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn good(&self, text: &str) -> String {
        self.paint("32", text)
    }

    fn bad(&self, text: &str) -> String {
        self.paint("31", text)
    }

    fn number(&self, text: &str) -> String {
        self.paint("36", text)
    }

    fn dim(&self, text: &str) -> String {
        self.paint("2", text)
    }

    fn heading(&self, text: &str) {
        say(&format!("\n{}", self.paint("1", text)));
    }

    fn line(&self, text: &str) {
        say(&format!("   {text}"));
    }

    fn intro(&self, mesh: &Mesh) {
        say(&self.paint(
            "1",
            "dmrelay demo: three relay nodes on this machine, Alice, Bob and Mallory",
        ));
        for (i, node) in mesh.nodes.iter().enumerate() {
            self.line(&format!(
                "node {}  {}  pid {}  (memory mode)",
                i + 1,
                node.url,
                node.child.id()
            ));
        }
        self.line(&format!(
            "Mallory's relay {} is a configured peer of all three and knows the mesh secret.",
            mesh.mallory_relay_url
        ));
    }

    async fn table(&self, mesh: &Mesh) -> Result<(), String> {
        self.line(&self.paint(
            "1",
            "node   pending   accepted: deposits  replicas   refused (cap)   acks",
        ));
        for (i, node) in mesh.nodes.iter().enumerate() {
            let m = metrics(node).await?;
            let refused = required(&m, "dm_drop_per_sender_cap_total")?
                + required(&m, "dm_replica_drop_per_sender_cap_total")?;
            self.line(&format!(
                "{:<6} {:>7}   {:>18}  {:>8}   {:>13}   {:>4}",
                i + 1,
                required(&m, "dm_pending_envelopes")?,
                required(&m, "dm_deposit_total{status=\"accepted\"}")?,
                required(&m, "dm_replica_accepted_total")?,
                refused,
                required(&m, "dm_ack_total")?,
            ));
        }
        for legend in [
            "pending: held now; accepted: from clients, from peers (pushed or pulled);",
            "refused: over the per-sender cap (deposits and replicas); acks: ack objects applied",
        ] {
            self.line(&self.dim(legend));
        }
        Ok(())
    }
}
