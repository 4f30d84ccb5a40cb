//! The first hour of a new user or operator (issue 6): each bug met on the way, now fixed, and
//! the operator commands. Real `dmrelay` processes, real HTTP, real signals.
//!
//! - `cargo run -- serve` works (`default-run`), `rust-version` is stated, `.gitignore` covers
//!   keys and data.
//! - `MESH_DM_LISTEN=127.0.0.1:0`: the self URL and `/health` name the bound port (SPEC §8).
//! - `serve 2>&1 | head -1`, then SIGTERM: the node stops with exit 0.
//! - A wildcard self URL is warned about at start; a peer's 403 is logged as an HMAC refusal
//!   naming our self URL, not as "unreachable" (SPEC §5.2).
//! - `RUST_LOG=verbose` is refused with one line (exit 2) instead of silencing every log.
//! - An empty body answers 400 `bad_request` with a sentence on every client and peer endpoint
//!   (SPEC §6.5).
//! - `dmrelay init`, the start-up line, `GET /status` and `dmrelay status` on a 2-node mesh.

mod common;

use common::{
    MESH_SECRET, Node, NodeConfig, assert_error, dmrelay, output_within, peer_request, wait_for,
};
use serde_json::Value;
use std::io::BufRead as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A `dmrelay serve` whose stderr lines are collected as they come.
struct Serve {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    _cwd: tempfile::TempDir,
}

impl Serve {
    /// Starts `dmrelay serve {args}` in a fresh directory (its `./data` is the store).
    fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let cwd = tempfile::tempdir().unwrap();
        let mut command = dmrelay(cwd.path());
        command
            .arg("serve")
            .args(args)
            .env("MESH_DM_SHARDS", "2")
            .env("MESH_DM_HTTP_WORKERS", "2")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("DMRELAY_TEST_LOGS").is_some() {
                    eprintln!("{line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            _cwd: cwd,
        }
    }

    /// The first stderr line containing `needle`, waiting up to 20 s for it.
    fn line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(line) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // The reader thread may still be draining the pipe: one last look.
                std::thread::sleep(Duration::from_millis(100));
                let lines = self.lines.lock().unwrap();
                if let Some(line) = lines.iter().find(|l| l.contains(needle)) {
                    return line.clone();
                }
                panic!("exited ({status}) without logging {needle:?}: {lines:#?}");
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in 20 s: {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The client-plane URL, from the start-up line `dmrelay listening on http://…`.
    fn url(&mut self) -> String {
        let line = self.line("dmrelay listening on ");
        let rest = line.split("dmrelay listening on ").nth(1).unwrap();
        rest.split_whitespace().next().unwrap().to_string()
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn get_json(url: &str) -> (u16, Value) {
    let mut response = common::http().get(url).send().await.unwrap();
    let status = response.status().as_u16();
    let body = response.body().limit(1 << 20).await.unwrap();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[test]
fn cargo_run_picks_the_node_and_the_minimum_rust_is_stated() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    let package = manifest["package"].as_table().unwrap();
    // Two binaries: without default-run, `cargo run --release -- serve` refuses to pick one.
    assert_eq!(package["default-run"].as_str(), Some("dmrelay"));
    // Edition 2024 needs 1.85 and let-chains 1.88; redb 4.6 needs 1.90.
    let version = package["rust-version"].as_str().unwrap();
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap()).collect();
    assert!(parts[0] == 1 && parts[1] >= 90, "rust-version {version}");
}

#[test]
fn gitignore_covers_keys_and_data() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore")).unwrap();
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for pattern in ["*.key", "data/", "*.redb", "target/"] {
        assert!(lines.contains(&pattern), "{pattern} in .gitignore:\n{text}");
    }
}

/// SPEC §8: port 0 picks a free port; the self URL (and /health, /status) name that port.
#[actix_rt::test]
async fn listen_port_zero_reports_the_bound_port() {
    let mut node = Serve::start(&[], &[("MESH_DM_LISTEN", "127.0.0.1:0")]);
    let url = node.url();
    let port: u16 = url.rsplit(':').next().unwrap().parse().unwrap();
    assert_ne!(port, 0, "{url}");
    let (status, health) = get_json(&format!("{url}/health")).await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["node"].as_str(), Some(url.as_str()), "{health}");
    let line = node.line("dmrelay listening on ");
    assert!(line.contains(&format!("self_url={url}")), "{line}");
    let (_, status) = get_json(&format!("{url}/status")).await;
    assert_eq!(status["node"].as_str(), Some(url.as_str()), "{status}");
}

/// `dmrelay serve 2>&1 | head -1`, then SIGTERM: the node stops (exit 0) although every log
/// write after the first line fails with EPIPE.
#[test]
fn sigterm_stops_the_node_even_when_stderr_is_a_closed_pipe() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = dmrelay(cwd.path())
        .arg("serve")
        .env("MESH_DM_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut reader = std::io::BufReader::new(stderr);
    // Read up to the line that says the node is up (debug lines may come first).
    let mut line = String::new();
    while !line.contains("store opened") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "stderr ended early"
        );
    }
    // `head -1` exits: the read end of the pipe is closed.
    drop(reader);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("SIGTERM did not stop a node whose stderr is a closed pipe");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
}

/// A wildcard self URL is said at start, in one line naming the fix.
#[test]
fn a_wildcard_self_url_is_warned_about_at_start() {
    let mut node = Serve::start(&[], &[("MESH_DM_LISTEN", "0.0.0.0:0")]);
    let warning = node.line("cannot be a peer URL");
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("http://0.0.0.0:"), "{warning}");
    assert!(warning.contains("MESH_SELF_PEER_URL"), "{warning}");
    // A usable address gives no such warning: the start-up line comes, the warning does not.
    let mut fine = Serve::start(&[], &[("MESH_DM_LISTEN", "127.0.0.1:0")]);
    fine.url();
    let lines = fine.lines.lock().unwrap();
    assert!(
        !lines.iter().any(|l| l.contains("cannot be a peer URL")),
        "{lines:#?}"
    );
}

/// SPEC §5.2: a peer that does not know us answers 403 `peer_auth`; our pusher and puller say
/// so, with our self URL, instead of "peer unreachable".
#[actix_rt::test]
async fn a_peers_403_is_logged_as_an_hmac_refusal_naming_our_self_url() {
    // B has no peers: every request from A is refused with 403.
    let b = Node::start(NodeConfig::default());
    b.ready().await;
    let mut a = Serve::start(
        &[],
        &[
            ("MESH_DM_LISTEN", "127.0.0.1:0"),
            ("MESH_RELAY_PEERS", &b.url),
            ("MESH_PEER_PUSH_SECRET", MESH_SECRET),
            ("MESH_DM_SYNC_INTERVAL_S", "0.2"),
            ("MESH_RELAY_MAX_FAILURES", "1"),
            ("RUST_LOG", "warn,dmrelay=info"),
        ],
    );
    let a_url = a.url();
    let pull = a.line("feed pull refused: peer refused our HMAC (peer_auth)");
    assert!(
        pull.contains(&format!(
            "check that it lists our self URL {a_url} and shares the secret"
        )),
        "{pull}"
    );
    // A deposit on A is pushed to B, which refuses it the same way.
    let alice = common::Identity::new();
    let bob = common::Identity::new();
    let (status, body) = common::post_raw(
        &a_url,
        "/api/mesh/dm/send",
        serde_json::to_vec(&alice.envelope_to(&bob, "m1")).unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let push = a.line("push refused: peer refused our HMAC (peer_auth)");
    assert!(push.contains(&a_url), "{push}");
    let lines = a.lines.lock().unwrap();
    assert!(
        !lines.iter().any(|l| l.contains("peer unreachable")),
        "{lines:#?}"
    );
}

/// `RUST_LOG=verbose` used to turn every log off silently; now it is one line and exit 2.
#[test]
fn a_rust_log_that_would_silence_the_node_is_refused_with_one_line() {
    for (value, hint) in [
        ("verbose", "read as a target name"),
        ("actix_web=debug", "no directive gives a default level"),
        ("info,dmrelay=loud", "is not a log filter"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut command = dmrelay(dir.path());
        command
            .arg("serve")
            .env("MESH_DM_LISTEN", "127.0.0.1:0")
            .env("RUST_LOG", value);
        let output = output_within(command, Duration::from_secs(20));
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{value}: {stderr}");
        assert!(stderr.contains("RUST_LOG"), "{value}: {stderr}");
        assert!(stderr.contains(hint), "{value}: {stderr}");
        assert!(!dir.path().join("data").exists(), "nothing was started");
    }
}

/// SPEC §6.5: an empty body (`| curl -d @-` after the command before the pipe failed) is a
/// 400 `bad_request` saying so, on every client and peer endpoint, not "EOF while parsing".
#[actix_rt::test]
async fn an_empty_body_is_a_bad_request_saying_so_on_every_endpoint() {
    let fake_peer = "http://127.0.0.1:9";
    let node = Node::start(common::mesh_config().env("MESH_RELAY_PEERS", fake_peer));
    node.ready().await;
    for path in ["/api/mesh/dm/send", "/api/mesh/dm/poll", "/api/mesh/dm/ack"] {
        for body in [&b""[..], b"\n"] {
            let got = common::post_raw(&node.url, path, body.to_vec()).await;
            assert_error(path, &got, 400, "bad_request");
            let detail = got.1["detail"].as_str().unwrap();
            assert!(detail.contains("request body is empty"), "{path}: {detail}");
        }
    }
    for path in [
        "/api/mesh/dm/replicate-envelope",
        "/api/mesh/dm/replicate-ack",
    ] {
        let got = peer_request(&node.url, "POST", path, Vec::new(), fake_peer, MESH_SECRET).await;
        assert_error(path, &got, 400, "bad_request");
        let detail = got.1["detail"].as_str().unwrap();
        assert!(detail.contains("request body is empty"), "{path}: {detail}");
    }
}

/// `dmrelay init` writes a 0600 node.toml that `serve --config` starts with; the start-up line
/// names that file, the addresses, self URL, peers, store and mode.
#[actix_rt::test]
async fn init_writes_a_private_config_that_serve_starts_with() {
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node1");
    let output = dmrelay(dir.path())
        .args(["init", "--dir", "node1", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let path = std::fs::canonicalize(node_dir.join("node.toml")).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        path.display().to_string()
    );
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(
        mode, 0o600,
        "node.toml holds the mesh secret: mode {mode:o}"
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let secret_line = text
        .lines()
        .find(|l| l.starts_with("peer_push_secret = "))
        .unwrap();
    assert_eq!(secret_line.len(), "peer_push_secret = \"\"".len() + 64);
    assert!(
        text.lines().filter(|l| l.starts_with('#')).count() > 40,
        "commented"
    );

    // Not overwritten without --force.
    let again = dmrelay(dir.path())
        .args(["init", "--dir", "node1"])
        .output()
        .unwrap();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    let mut node = Serve::start(&["--config", path.to_str().unwrap()], &[]);
    let url = node.url();
    let (status, health) = get_json(&format!("{url}/health")).await;
    assert_eq!(status, 200);
    assert_eq!(health["node"].as_str(), Some(url.as_str()));
    let line = node.line("dmrelay listening on ");
    for field in [
        format!("config={} + environment", path.display()),
        format!("listen={url}"),
        "peer_listen=same as client".to_string(),
        format!("self_url={url}"),
        "peers=none".to_string(),
        format!(
            "store={}",
            node_dir.canonicalize().unwrap().join("data").display()
        ),
        "persist=fsync".to_string(),
    ] {
        assert!(line.contains(&field), "{field:?} in {line}");
    }
}

#[test]
fn init_refuses_a_wildcard_self_url() {
    let dir = tempfile::tempdir().unwrap();
    let output = dmrelay(dir.path())
        .args(["init", "--listen", "0.0.0.0:8787"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("wildcard") && stderr.contains("--self-url"),
        "{stderr}"
    );
    assert!(!dir.path().join("node.toml").exists());
    let output = dmrelay(dir.path())
        .args([
            "init",
            "--listen",
            "0.0.0.0:8787",
            "--self-url",
            "http://relay1.example:8787",
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = std::fs::read_to_string(dir.path().join("node.toml")).unwrap();
    assert!(text.contains("self_peer_url = \"http://relay1.example:8787\""));
}

/// `GET /status` and `dmrelay status` on a real 2-node mesh: after a deposit on node 0 is
/// replicated, node 0 shows its peer's breaker closed, an empty queue, a successful push and a
/// complete pull.
#[actix_rt::test]
async fn status_shows_each_peers_breaker_queue_last_push_and_last_pull() {
    let nodes = common::mesh(2, &common::full_mesh_links(2), &[]);
    for node in &nodes {
        node.ready().await;
    }
    let alice = common::Identity::new();
    let bob = common::Identity::new();
    let (status, body) = nodes[0].send(&alice.envelope_to(&bob, "status-1")).await;
    assert_eq!(status, 200, "{body}");
    common::wait_for_ids(&nodes[1], &bob, &["status-1"]).await;
    let status_url = format!("{}/status", nodes[0].url);
    wait_for(Duration::from_secs(20), || {
        let url = status_url.clone();
        async move {
            let (_, s) = get_json(&url).await;
            let peer = &s["peers"][0];
            peer["last_push"]["outcome"]
                .as_str()
                .is_some_and(|o| o.starts_with("ok: 1 taken"))
                && peer["last_complete_pull"]["at"].is_u64()
        }
    })
    .await;
    let (code, json) = get_json(&status_url).await;
    assert_eq!(code, 200);
    assert_eq!(json["node"].as_str(), Some(nodes[0].url.as_str()));
    assert_eq!(json["version"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(json["pending"].as_i64(), Some(1), "{json}");
    assert!(
        json["mailboxes_loaded"].as_i64().is_some_and(|n| n >= 1),
        "{json}"
    );
    let peers = json["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{json}");
    assert_eq!(peers[0]["url"].as_str(), Some(nodes[1].peer_url.as_str()));
    assert_eq!(peers[0]["breaker"].as_str(), Some("closed"));
    assert_eq!(peers[0]["queue_depth"].as_u64(), Some(0));
    assert!(
        !json.to_string().contains(MESH_SECRET),
        "no secret in /status"
    );

    // The command prints the same view for a person, and the JSON with --json.
    let dir = tempfile::tempdir().unwrap();
    let output = dmrelay(dir.path())
        .args(["status", "--node", &nodes[0].url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    for want in [
        format!("node      {}", nodes[0].url),
        "pending   1 envelopes".to_string(),
        format!("peer      {}", nodes[1].peer_url),
        "breaker             closed".to_string(),
        "push queue          0 items".to_string(),
        "(ok: 1 taken, 0 rejected)".to_string(),
        "last complete pull  ".to_string(),
    ] {
        assert!(text.contains(&want), "{want:?} in\n{text}");
    }
    assert!(!text.contains("last complete pull  none yet"), "{text}");
    let output = dmrelay(dir.path())
        .args(["status", "--json", "--node", &nodes[0].url])
        .output()
        .unwrap();
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["peers"][0]["url"], json["peers"][0]["url"]);

    // A node nobody serves is one sentence and a non-zero exit.
    let output = dmrelay(dir.path())
        .args(["status", "--node", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("cannot reach http://127.0.0.1:9/status")
    );
}
