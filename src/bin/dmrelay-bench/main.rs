//! `dmrelay-bench`: starts real `dmrelay serve` processes and prints figures and ratios.
//!
//! 1. Deposit throughput against `GET /health` of the same server in the same run (fsync and
//!    memory mode), with the group-commit batch size read from `/metrics`.
//! 2. Memory per pending envelope: RSS of the node before and after N deposits.
//! 3. Replication lag: deposits on node A at a fixed rate; the time until each appears in node
//!    B's change feed, as percentiles.
//! 4. Mesh lag (`--runs mesh-lag`): a 3-node full mesh taking `--mesh-rate` deposits per second
//!    spread over the three nodes (pre-signed bodies, kept-alive connections, paced on a fixed
//!    schedule), and probes: every `--probe-ms` one more deposit, to a mailbox of its own, with a
//!    long poll waiting for it on each of the two other nodes. A long poll is answered after the
//!    commit that makes the replica durable there, so the time from the origin's 200 to each
//!    poll's answer is the lag to the other node's store. Prints p50/p90/p99/max, the node CPU per
//!    deposit from `/proc/<pid>/stat`, and writes an SVG plot of lag over time (`--svg`).
//!
//! The load generator runs on the same machine as the nodes and takes its share of the cores
//! (mesh-lag prints how much: ~0.1 of a core at 3000/s with [`paced`]); the figures are for
//! comparing runs and endpoints on one machine, not absolute capacity.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

use clap::Parser;
use dmrelay::peer::auth::{derive_peer_key, sign_request};
use dmrelay::protocol::{Envelope, MailboxKey, MsgId, generate_signing_key, now_unix};
use ed25519_dalek::SigningKey;
use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "dmrelay-bench",
    about = "Measure a dmrelay node: throughput, memory, replication lag"
)]
struct Args {
    /// Deposits (and health requests) per throughput run.
    #[arg(long, default_value_t = 20_000)]
    requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Ciphertext bytes per envelope.
    #[arg(long, default_value_t = 1024)]
    ciphertext_bytes: usize,
    /// Pending envelopes for the memory measurement.
    #[arg(long, default_value_t = 20_000)]
    memory_envelopes: usize,
    /// Deposits per second during the replication-lag run.
    #[arg(long, default_value_t = 200)]
    lag_rate: u64,
    /// Length of the replication-lag run, seconds.
    #[arg(long, default_value_t = 10)]
    lag_seconds: u64,
    /// Where the nodes keep their data (a temporary directory by default).
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// Which runs, comma-separated: throughput, memory, lag, mesh-lag; and, not by default, wrk
    /// (deposit, poll and ack driven by `wrk`, with the node's CPU per request), million (memory
    /// and restart with a million pending envelopes; minutes), verify (µs per signature).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "throughput,memory,lag,mesh-lag"
    )]
    runs: Vec<String>,
    /// Deposits per second over the whole mesh during the mesh-lag run (background load).
    #[arg(long, default_value_t = 3000)]
    mesh_rate: u64,
    /// Length of the mesh-lag run, seconds.
    #[arg(long, default_value_t = 20)]
    mesh_seconds: u64,
    /// One probe every this many milliseconds during the mesh-lag run.
    #[arg(long, default_value_t = 20)]
    probe_ms: u64,
    /// Where the mesh-lag run writes its plot of lag over time.
    #[arg(long, default_value = "mesh-lag.svg")]
    svg: PathBuf,
    /// Seconds of each `wrk` run.
    #[arg(long, default_value_t = 10)]
    wrk_seconds: u64,
    /// Connections `wrk` keeps open.
    #[arg(long, default_value_t = 64)]
    wrk_connections: usize,
    /// Bodies signed beforehand for each of the deposit and poll runs (each sent once).
    #[arg(long, default_value_t = 300_000)]
    wrk_bodies: usize,
    /// Mailboxes the `wrk` deposits are spread over.
    #[arg(long, default_value_t = 5_000)]
    wrk_mailboxes: usize,
    /// Record a `perf record --call-graph dwarf` profile of the node during each `wrk` run into
    /// this directory (`<run>.perf.data`; read with `perf report -i`). Profiling costs CPU: the
    /// figures of a profiled run are marked and do not compare with unprofiled ones.
    #[arg(long)]
    wrk_perf: Option<PathBuf>,
    /// Pending envelopes of the `million` run.
    #[arg(long, default_value_t = 1_000_000)]
    million_envelopes: usize,
    /// Mailboxes of the `million` run.
    #[arg(long, default_value_t = 100_000)]
    million_mailboxes: usize,
    /// `MESH_DM_MAILBOX_IDLE_S` after the restart in the `million` run: long enough that the
    /// poll pass over every mailbox ends before the first ones are evicted.
    #[arg(long, default_value_t = 180)]
    million_idle_s: u64,
}

const SECRET: &str = "bench-mesh-secret";
/// The URL the bench claims when it reads node B's feed.
const BENCH_PEER: &str = "http://127.0.0.1:1";

struct NodeProcess {
    child: Child,
    url: String,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| fail(&format!("no free port: {e}")))
}

/// Nodes started by this run, killed by [`fail`] (exiting skips their `Drop`).
static STARTED: std::sync::Mutex<Vec<u32>> = std::sync::Mutex::new(Vec::new());

fn fail(message: &str) -> ! {
    eprintln!("dmrelay-bench: {message}");
    let pids = STARTED.lock().map(|pids| pids.clone()).unwrap_or_default();
    for pid in pids {
        // SAFETY: kill(2) has no memory preconditions; a pid already gone is harmless.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
    std::process::exit(1)
}

fn start_node(data_dir: &Path, port: u16, env: &[(&str, String)]) -> NodeProcess {
    let _ = std::fs::remove_dir_all(data_dir);
    spawn_node(data_dir, port, env)
}

/// Starts `dmrelay serve` on whatever `data_dir` holds (a restart).
fn spawn_node(data_dir: &Path, port: u16, env: &[(&str, String)]) -> NodeProcess {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("dmrelay")))
        .unwrap_or_else(|| fail("cannot locate the dmrelay binary next to dmrelay-bench"));
    let child = Command::new(binary)
        .arg("serve")
        .env("MESH_DM_LISTEN", format!("127.0.0.1:{port}"))
        .env("MESH_DM_DATA_DIR", data_dir)
        .env("RUST_LOG", "warn")
        // Every request of the bench comes from 127.0.0.1: no per-address limit.
        .env("MESH_DM_CLIENT_RATE_PER_S", "0")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(std::env::temp_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| fail(&format!("cannot start dmrelay: {e}")));
    if let Ok(mut pids) = STARTED.lock() {
        pids.push(child.id());
    }
    NodeProcess {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// User + system CPU seconds of `pid` so far (from `/proc/<pid>/stat`); a process that cannot be
/// read ends the run with a message, never a 0.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| fail(&format!("cannot read /proc/{pid}/stat: {e}")));
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    // utime is field 14, stime 15; index 0 here is field 3.
    let (Some(user), Some(system)) = (ticks(11), ticks(12)) else {
        fail("unexpected /proc/<pid>/stat format");
    };
    // SAFETY: sysconf has no memory preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (user + system) / per_second
}

async fn wait_ready(client: &awc::Client, node: &NodeProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{}/health", node.url)).send().await
            && r.status().is_success()
        {
            return;
        }
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    fail("node did not become healthy");
}

/// A signing key made from `seed` and `role` (the same bench input gets the same keys).
pub(crate) fn key(seed: u64, role: u8) -> SigningKey {
    let mut bytes = [role; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    SigningKey::from_bytes(&bytes)
}

/// `make(i)` for every `i` in `range`, on every core.
pub(crate) fn sign_parallel(
    range: std::ops::Range<usize>,
    make: impl Fn(usize) -> Vec<u8> + Sync,
) -> Vec<Vec<u8>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let chunk = range.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = range
            .clone()
            .step_by(chunk)
            .map(|start| {
                let (make, end) = (&make, (start + chunk).min(range.end));
                scope.spawn(move || (start..end).map(make).collect::<Vec<_>>())
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|_| fail("a signing thread panicked"))
            })
            .collect()
    })
}

fn envelopes(count: usize, bytes: usize) -> Vec<(String, Vec<u8>)> {
    // 40 envelopes per mailbox, under the default mailbox limit of 48.
    let mailbox_owners: Vec<MailboxKey> = (0..count.div_ceil(40).max(1))
        .map(|_| generate_signing_key().unwrap_or_else(|_| fail("no randomness")))
        .map(|k| MailboxKey::of(&k))
        .collect();
    let now = now_unix();
    let payload = vec![0xabu8; bytes];
    (0..count)
        .map(|i| {
            // One sender per envelope, so the per-sender cap never interferes.
            let sender = generate_signing_key().unwrap_or_else(|_| fail("no randomness"));
            let id = format!("bench-{i}");
            let envelope = Envelope::sign(
                &sender,
                mailbox_owners[i % mailbox_owners.len()],
                MsgId::parse("msg_id", &id).unwrap_or_else(|_| fail("bad id")),
                now,
                now + 3600,
                &payload,
            );
            let json = serde_json::to_vec(&envelope).unwrap_or_else(|_| fail("encode"));
            (id, json)
        })
        .collect()
}

/// Runs `bodies` (None = GET /health) with `concurrency` in flight; returns (seconds, failures).
async fn drive(
    client: &awc::Client,
    url: &str,
    bodies: Vec<Option<Vec<u8>>>,
    concurrency: usize,
) -> (f64, usize) {
    let queue = Rc::new(RefCell::new(VecDeque::from(bodies)));
    let failures = Rc::new(RefCell::new(0usize));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (queue, failures, client, url) = (
                Rc::clone(&queue),
                Rc::clone(&failures),
                client.clone(),
                url.to_string(),
            );
            actix_rt::spawn(async move {
                loop {
                    let next = queue.borrow_mut().pop_front();
                    let Some(body) = next else { break };
                    let ok = match body {
                        Some(body) => deposited(&client, &url, body).await,
                        None => {
                            answered_200(client.get(format!("{url}/health")).send().await).await
                        }
                    };
                    if !ok {
                        *failures.borrow_mut() += 1;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    let failed = *failures.borrow();
    (started.elapsed().as_secs_f64(), failed)
}

/// The sum of every series of the metric `name` (all label sets) on the node at `url`; a node
/// that does not export it (an older build, compared in an A/B run) is an error.
pub(crate) async fn metric_sum(client: &awc::Client, url: &str, name: &str) -> f64 {
    optional_metric_sum(client, url, name)
        .await
        .unwrap_or_else(|| fail(&format!("{url} does not export {name}")))
}

/// Like [`metric_sum`], `None` when the node does not export the metric.
pub(crate) async fn optional_metric_sum(
    client: &awc::Client,
    url: &str,
    name: &str,
) -> Option<f64> {
    sum_in(&metrics_text(client, url).await, name)
}

/// One scrape of `url`'s `/metrics`.
pub(crate) async fn metrics_text(client: &awc::Client, url: &str) -> String {
    // A GET, so tried again once: a kept-alive connection the node closed while idle (its
    // keep-alive is 5 s, and the bench signs for longer than that between reads) fails at once.
    let response = match client.get(format!("{url}/metrics")).send().await {
        Ok(response) => Ok(response),
        Err(_) => client.get(format!("{url}/metrics")).send().await,
    };
    let mut response =
        response.unwrap_or_else(|e| fail(&format!("cannot read {url}/metrics: {e}")));
    response
        .body()
        .limit(8 << 20)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| fail(&format!("cannot read {url}/metrics: {e}")))
}

/// The sum of every series of `name` (with any labels, or exactly `name{...}` when the name
/// carries them) in a scrape; `None` when there is none.
pub(crate) fn sum_in(text: &str, name: &str) -> Option<f64> {
    let mut found = false;
    let sum = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            *key == name || key.strip_prefix(name).is_some_and(|r| r.starts_with('{'))
        })
        .filter_map(|(_, v)| v.parse::<f64>().ok())
        .inspect(|_| found = true)
        .sum();
    found.then_some(sum)
}

fn rss_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

async fn throughput(args: &Args, client: &awc::Client, root: &Path, persist: &str) {
    let node = start_node(
        &root.join(format!("tp-{persist}")),
        free_port(),
        &[("MESH_DM_PERSIST", persist.to_string())],
    );
    wait_ready(client, &node).await;
    eprintln!("[{persist}] signing {} envelopes...", args.requests);
    let bodies: Vec<Option<Vec<u8>>> = envelopes(args.requests, args.ciphertext_bytes)
        .into_iter()
        .map(|(_, body)| Some(body))
        .collect();
    eprintln!("[{persist}] GET /health x{} ...", args.requests);
    let (health_s, health_failed) = drive(
        client,
        &node.url,
        vec![None; args.requests],
        args.concurrency,
    )
    .await;
    eprintln!("[{persist}] POST /send x{} ...", args.requests);
    let (send_s, send_failed) = drive(client, &node.url, bodies, args.concurrency).await;
    let commits = metric_sum(client, &node.url, "dm_store_commits_total").await;
    let ops = metric_sum(client, &node.url, "dm_store_ops_total").await;
    let health_rate = args.requests as f64 / health_s;
    let send_rate = args.requests as f64 / send_s;
    println!(
        "throughput persist={persist}: deposits {send_rate:.0}/s ({send_failed} failed), GET /health {health_rate:.0}/s ({health_failed} failed), ratio deposit/health {:.2}, store commits {commits:.0} for {ops:.0} ops (batch {:.1})",
        send_rate / health_rate,
        if commits > 0.0 { ops / commits } else { 0.0 }
    );
}

async fn memory(args: &Args, client: &awc::Client, root: &Path, persist: &str) {
    let node = start_node(
        &root.join(format!("mem-{persist}")),
        free_port(),
        &[("MESH_DM_PERSIST", persist.to_string())],
    );
    wait_ready(client, &node).await;
    let bodies: Vec<Option<Vec<u8>>> = envelopes(args.memory_envelopes, args.ciphertext_bytes)
        .into_iter()
        .map(|(_, body)| Some(body))
        .collect();
    // Warm up the allocator and the HTTP workers before the baseline.
    let _ = drive(client, &node.url, vec![None; 2000], 16).await;
    let before = rss_bytes(node.child.id());
    let (_, failed) = drive(client, &node.url, bodies, args.concurrency).await;
    actix_rt::time::sleep(Duration::from_millis(500)).await;
    let after = rss_bytes(node.child.id());
    let pending = metric_sum(client, &node.url, "dm_pending_envelopes").await;
    println!(
        "memory persist={persist}: {pending:.0} pending envelopes of {} ciphertext bytes ({failed} failed): RSS {:.1} MiB -> {:.1} MiB, {:.0} bytes per pending envelope",
        args.ciphertext_bytes,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        after.saturating_sub(before) as f64 / pending.max(1.0)
    );
}

async fn replication_lag(args: &Args, client: &awc::Client, root: &Path) {
    let (port_a, port_b) = (free_port(), free_port());
    let (url_a, url_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let common = |peers: String| {
        vec![
            ("MESH_RELAY_PEERS", peers),
            ("MESH_PEER_PUSH_SECRET", SECRET.to_string()),
            ("MESH_DM_MAILBOX_LIMIT", "100000".to_string()),
        ]
    };
    let a = start_node(&root.join("lag-a"), port_a, &common(url_b.clone()));
    let b = start_node(
        &root.join("lag-b"),
        port_b,
        &common(format!("{url_a},{BENCH_PEER}")),
    );
    wait_ready(client, &a).await;
    wait_ready(client, &b).await;
    let total = (args.lag_rate * args.lag_seconds) as usize;
    let signed = envelopes(total, args.ciphertext_bytes);
    let accepted_at: Rc<RefCell<HashMap<String, Instant>>> = Rc::default();
    let done = Rc::new(RefCell::new(false));
    // Feed reader: node B's /changes, as a peer would read it; records when each id shows up.
    // (An id may show up on B before A's 200 reaches the bench: its lag counts as 0.)
    let reader = {
        let (client, done, url_b) = (client.clone(), Rc::clone(&done), url_b.clone());
        actix_rt::spawn(async move {
            let key = derive_peer_key(SECRET.as_bytes(), BENCH_PEER);
            let mut since = 0u64;
            let mut seen_at: HashMap<String, Instant> = HashMap::new();
            let mut done_at: Option<Instant> = None;
            while seen_at.len() < total {
                if *done.borrow() && done_at.is_none() {
                    done_at = Some(Instant::now());
                }
                if done_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                    break;
                }
                let path = format!("/api/mesh/dm/changes?since={since}&limit=1000");
                let ts = now_unix();
                let mac = sign_request(&key, "GET", &path, ts, b"");
                let response = client
                    .get(format!("{url_b}{path}"))
                    .insert_header(("X-Peer-Url", BENCH_PEER))
                    .insert_header(("X-Peer-Timestamp", ts.to_string()))
                    .insert_header(("X-Peer-HMAC", mac))
                    .send()
                    .await;
                let seen = Instant::now();
                let feed: serde_json::Value = match response {
                    Ok(mut r) => match r.body().limit(64 << 20).await {
                        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
                        Err(_) => serde_json::Value::Null,
                    },
                    Err(_) => serde_json::Value::Null,
                };
                if let Some(changes) = feed["changes"].as_array() {
                    for change in changes {
                        if let Some(id) = change["envelope"]["msg_id"].as_str() {
                            seen_at.entry(id.to_string()).or_insert(seen);
                        }
                    }
                    since = feed["next"].as_u64().unwrap_or(since);
                }
                actix_rt::time::sleep(Duration::from_millis(2)).await;
            }
            seen_at
        })
    };
    // Deposits on A at a fixed rate.
    let interval = Duration::from_secs_f64(1.0 / args.lag_rate as f64);
    let started = Instant::now();
    let mut in_flight = Vec::new();
    for (i, (id, body)) in signed.into_iter().enumerate() {
        let due = started + interval * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            actix_rt::time::sleep(wait).await;
        }
        let (client, accepted_at, url_a) = (client.clone(), Rc::clone(&accepted_at), url_a.clone());
        in_flight.push(actix_rt::spawn(async move {
            if deposited(&client, &url_a, body).await {
                accepted_at.borrow_mut().insert(id, Instant::now());
            }
        }));
    }
    for task in in_flight {
        let _ = task.await;
    }
    *done.borrow_mut() = true;
    let seen_at = reader.await.unwrap_or_default();
    let accepted_at = accepted_at.borrow();
    let mut lags: Vec<Duration> = seen_at
        .iter()
        .filter_map(|(id, seen)| Some(seen.saturating_duration_since(*accepted_at.get(id)?)))
        .collect();
    lags.sort();
    let pct = |p: f64| -> f64 {
        if lags.is_empty() {
            return f64::NAN;
        }
        let i = ((lags.len() as f64 - 1.0) * p).round() as usize;
        lags[i.min(lags.len() - 1)].as_secs_f64() * 1000.0
    };
    println!(
        "replication lag A->B ({} deposits at {}/s, {} accepted on A, {} seen on B): p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        total,
        args.lag_rate,
        accepted_at.len(),
        lags.len(),
        pct(0.5),
        pct(0.9),
        pct(0.99),
        pct(1.0)
    );
}

/// True when `reply` is a `200` whose body was read to its end. Every request of the bench reads
/// its answer: awc closes a connection whose response body was left unread, and a new connection
/// per request (a TCP handshake, an accept and a close on the node) is load-generator cost that
/// would be billed to the node.
async fn answered_200<S>(
    reply: Result<awc::ClientResponse<S>, awc::error::SendRequestError>,
) -> bool
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
{
    match reply {
        Ok(mut reply) => reply.status().as_u16() == 200 && reply.body().await.is_ok(),
        Err(_) => false,
    }
}

/// Deposits `body` on `url`; true on `200` (its answer read to its end, see [`answered_200`]).
pub(crate) async fn deposited(client: &awc::Client, url: &str, body: Vec<u8>) -> bool {
    answered_200(
        client
            .post(format!("{url}/api/mesh/dm/send"))
            .send_body(body)
            .await,
    )
    .await
}

mod mesh_lag;
mod million;
mod paced;
mod verify;
mod wrk;

fn main() {
    let args = Args::parse();
    let root = args.data_root.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("dmrelay-bench-{}", std::process::id()))
    });
    actix_rt::System::new().block_on(async {
        // awc's default pool of 100 connections would make the paced runs wait for a free
        // connection (the load generator as the bottleneck): room for every request in flight.
        let client = awc::Client::builder()
            .connector(awc::Connector::new().limit(4096))
            .timeout(Duration::from_secs(30))
            .finish();
        println!(
            "dmrelay-bench: {} cores, {} requests, concurrency {}, {} ciphertext bytes",
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            args.requests,
            args.concurrency,
            args.ciphertext_bytes
        );
        let runs = |name: &str| args.runs.iter().any(|r| r == name);
        if runs("throughput") {
            throughput(&args, &client, &root, "fsync").await;
            throughput(&args, &client, &root, "memory").await;
        }
        if runs("memory") {
            memory(&args, &client, &root, "fsync").await;
            memory(&args, &client, &root, "memory").await;
        }
        if runs("lag") {
            replication_lag(&args, &client, &root).await;
        }
        if runs("mesh-lag") {
            mesh_lag::run(&args, &client, &root).await;
        }
        if runs("wrk") {
            wrk::run(&args, &client, &root).await;
        }
        if runs("million") {
            million::run(&args, &client, &root).await;
        }
        if runs("verify") {
            verify::run();
        }
    });
    let _ = std::fs::remove_dir_all(&root);
}
