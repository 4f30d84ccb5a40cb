//! Test harness: real `dmrelay serve` processes on 127.0.0.1:0, real HTTP, real signals.
//!
//! Each [`Node`] binds its listening socket(s) in the test process and hands them to the child
//! through socket activation (`LISTEN_FDS`, fds 3 and 4). The test keeps its copy, so a node
//! restarted after `kill -9` comes back on the same port and its peers' URLs stay valid.

#![allow(dead_code)]

mod fake_peer;
#[allow(unused_imports)]
pub use fake_peer::FakePeer;

use dmrelay::protocol::{
    AckObject, Envelope, MailboxKey, MsgId, PollRequest, generate_signing_key, now_unix, random_hex,
};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_dmrelay");

/// A node process and everything needed to restart it as it was.
pub struct Node {
    child: Option<Child>,
    listener: TcpListener,
    peer_listener: Option<TcpListener>,
    env: Vec<(String, String)>,
    _data: tempfile::TempDir,
    pub data_dir: PathBuf,
    /// Base URL of the client plane, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// Base URL of the peer plane (same as `url` unless lanes are separate).
    pub peer_url: String,
}

/// Settings of a node to start.
#[derive(Default, Clone)]
pub struct NodeConfig {
    pub env: Vec<(String, String)>,
    /// Serve the peer plane on its own socket.
    pub separate_peer_lane: bool,
}

impl NodeConfig {
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
}

/// Binds 127.0.0.1:0 ahead of the node, so the URL is known before it starts.
pub struct Reserved {
    listener: TcpListener,
    peer_listener: Option<TcpListener>,
    tls: bool,
    pub url: String,
    pub peer_url: String,
}

/// A file of `tests/fixtures` (a test-only CA, and a node certificate for 127.0.0.1 it signed).
pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

impl Reserved {
    pub fn new(separate_peer_lane: bool) -> Self {
        Self::with_tls(separate_peer_lane, false)
    }

    /// With `tls`, the node will serve HTTPS with the fixture certificate and trust the
    /// fixture CA for its peers.
    pub fn with_tls(separate_peer_lane: bool, tls: bool) -> Self {
        let scheme = if tls { "https" } else { "http" };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let peer_listener = separate_peer_lane.then(|| TcpListener::bind("127.0.0.1:0").unwrap());
        let peer_url = peer_listener.as_ref().map_or(url.clone(), |l| {
            format!("{scheme}://{}", l.local_addr().unwrap())
        });
        Self {
            listener,
            peer_listener,
            tls,
            url,
            peer_url,
        }
    }

    /// Starts the node on the reserved sockets.
    pub fn start(self, config: NodeConfig) -> Node {
        let data = tempfile::tempdir().unwrap();
        let data_dir = data.path().to_path_buf();
        let mut env = vec![
            (
                "MESH_DM_DATA_DIR".to_string(),
                data_dir.display().to_string(),
            ),
            ("MESH_SELF_PEER_URL".to_string(), self.peer_url.clone()),
            ("MESH_DM_SHARDS".to_string(), "2".to_string()),
            ("MESH_DM_HTTP_WORKERS".to_string(), "2".to_string()),
            ("RUST_LOG".to_string(), "warn,dmrelay=info".to_string()),
            // Every test client is 127.0.0.1: one address. The per-address limit is tested in
            // tests/rate_limit.rs, which turns it back on.
            ("MESH_DM_CLIENT_RATE_PER_S".to_string(), "0".to_string()),
        ];
        if self.tls {
            env.push(("MESH_DM_TLS_CERT".to_string(), fixture("test-node.pem")));
            env.push(("MESH_DM_TLS_KEY".to_string(), fixture("test-node.key")));
            env.push(("MESH_RELAY_CA_FILE".to_string(), fixture("test-ca.pem")));
        }
        env.extend(config.env);
        let mut node = Node {
            child: None,
            listener: self.listener,
            peer_listener: self.peer_listener,
            env,
            _data: data,
            data_dir,
            url: self.url,
            peer_url: self.peer_url,
        };
        node.spawn();
        node
    }
}

impl Node {
    /// Starts a node with `config` on fresh sockets and a fresh data dir.
    pub fn start(config: NodeConfig) -> Node {
        Reserved::new(config.separate_peer_lane).start(config)
    }

    fn spawn(&mut self) {
        let client_fd = self.listener.as_raw_fd();
        let peer_fd = self.peer_listener.as_ref().map(|l| l.as_raw_fd());
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env_remove("MESH_DM_LISTEN")
            .env("LISTEN_FDS", if peer_fd.is_some() { "2" } else { "1" })
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("DMRELAY_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            // Run where no config/node.toml is found by accident.
            .current_dir(&self.data_dir);
        // SAFETY: only async-signal-safe libc calls between fork and exec.
        unsafe {
            use std::os::unix::process::CommandExt as _;
            command.pre_exec(move || {
                // Move both sockets above 4 first, so that placing one cannot clobber the other.
                let high_client = libc::fcntl(client_fd, libc::F_DUPFD, 10);
                let high_peer = peer_fd.map(|fd| libc::fcntl(fd, libc::F_DUPFD, 10));
                if high_client < 0 || libc::dup2(high_client, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(high_peer) = high_peer
                    && (high_peer < 0 || libc::dup2(high_peer, 4) < 0)
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.child = Some(command.spawn().expect("dmrelay binary starts"));
    }

    /// SIGKILL: the process dies at once, nothing is flushed.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait for the process to exit; returns its exit status success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        unsafe {
            libc::kill(child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sets (or replaces) an environment variable for the next start of the process.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Starts the process again on the same sockets and data dir.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Waits until `/health` answers.
    pub async fn ready(&self) {
        let client = http();
        wait_for(Duration::from_secs(20), || {
            let client = client.clone();
            let url = format!("{}/health", self.url);
            async move {
                match client.get(url).send().await {
                    Ok(response) => response.status().is_success(),
                    Err(_) => false,
                }
            }
        })
        .await;
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post_raw(&self.url, path, serde_json::to_vec(body).unwrap()).await
    }

    pub async fn post_bytes(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        post_raw(&self.url, path, body).await
    }

    pub async fn send(&self, envelope: &Envelope) -> (u16, Value) {
        self.post(
            "/api/mesh/dm/send",
            &serde_json::to_value(envelope).unwrap(),
        )
        .await
    }

    pub async fn poll(&self, owner: &Identity, limit: u64) -> (u16, Value) {
        self.post("/api/mesh/dm/poll", &owner.poll(limit)).await
    }

    pub async fn ack(&self, owner: &Identity, ids: &[&str]) -> (u16, Value) {
        self.post("/api/mesh/dm/ack", &owner.ack(ids)).await
    }

    /// Ids in `owner`'s mailbox on this node, oldest first (up to 100).
    pub async fn pending_ids(&self, owner: &Identity) -> Vec<String> {
        let (status, body) = self.poll(owner, 100).await;
        assert_eq!(status, 200, "{body}");
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["msg_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The value of one metric line (`name{labels}` exactly as exposed). A metric that is not
    /// exposed is an error (a misspelt name must fail the test, not read as 0): the node exports
    /// every metric the tests read from the start.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.metrics_text().await;
        let value = text.lines().find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().unwrap())
        });
        value.unwrap_or_else(|| {
            let present: Vec<&str> = text
                .lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| line.rsplit_once(' ').map(|(key, _)| key))
                .collect();
            panic!(
                "{}: metric {name} is not exposed; present: {present:#?}",
                self.url
            )
        })
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let mut response = http()
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .unwrap();
        String::from_utf8(response.body().await.unwrap().to_vec()).unwrap()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An HTTP client with short timeouts.
/// An HTTP(S) client with short timeouts that trusts the fixture CA.
pub fn http() -> awc::Client {
    let tls = dmrelay::tls::client_config(Some(std::path::Path::new(&fixture("test-ca.pem"))))
        .expect("fixture CA loads");
    dmrelay::tls::http_client(std::sync::Arc::new(tls), Duration::from_secs(15))
}

pub async fn post_raw(base: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    try_post_raw(base, path, body)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `condition` every 25 ms until it holds; panics after `timeout`.
pub async fn wait_for<F, Fut>(timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {timeout:?}"
        );
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A key pair playing a sender or a mailbox owner.
pub struct Identity {
    pub key: SigningKey,
}

impl Identity {
    pub fn new() -> Self {
        Self {
            key: generate_signing_key().unwrap(),
        }
    }

    pub fn mailbox(&self) -> MailboxKey {
        MailboxKey::of(&self.key)
    }

    pub fn hex(&self) -> String {
        self.mailbox().to_hex()
    }

    /// A fresh envelope to `to`, valid for an hour.
    pub fn envelope_to(&self, to: &Identity, msg_id: &str) -> Envelope {
        let now = now_unix();
        self.envelope_with(to, msg_id, now, now + 3600, b"ciphertext")
    }

    pub fn envelope_with(
        &self,
        to: &Identity,
        msg_id: &str,
        created_at: u64,
        expires_at: u64,
        bytes: &[u8],
    ) -> Envelope {
        Envelope::sign(
            &self.key,
            to.mailbox(),
            MsgId::parse("msg_id", msg_id).unwrap(),
            created_at,
            expires_at,
            bytes,
        )
    }

    pub fn poll(&self, limit: u64) -> Value {
        PollRequest::sign(&self.key, now_unix(), random_hex(16).unwrap(), limit).to_json()
    }

    pub fn ack_object(&self, ids: &[&str]) -> AckObject {
        self.ack_object_at(ids, now_unix())
    }

    pub fn ack_object_at(&self, ids: &[&str], ts: u64) -> AckObject {
        let ids = ids
            .iter()
            .map(|id| MsgId::parse("msg_ids", id).unwrap())
            .collect();
        AckObject::sign(&self.key, ts, ids)
    }

    pub fn ack(&self, ids: &[&str]) -> Value {
        serde_json::to_value(self.ack_object(ids)).unwrap()
    }
}

impl Default for Identity {
    fn default() -> Self {
        Self::new()
    }
}

/// The mesh-wide secret the multi-node tests share.
pub const MESH_SECRET: &str = "test-mesh-secret-0123456789";

/// Starts `n` nodes where node `i` peers with every `j` in `links` (pairs are made symmetric),
/// with short sync intervals and cooldowns so that tests converge in well under a second.
pub fn mesh(n: usize, links: &[(usize, usize)], extra: &[(&str, &str)]) -> Vec<Node> {
    let reserved: Vec<Reserved> = (0..n).map(|_| Reserved::new(false)).collect();
    let urls: Vec<String> = reserved.iter().map(|r| r.peer_url.clone()).collect();
    reserved
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let peers: Vec<&str> = links
                .iter()
                .filter_map(|&(a, b)| {
                    if a == i {
                        Some(urls[b].as_str())
                    } else if b == i {
                        Some(urls[a].as_str())
                    } else {
                        None
                    }
                })
                .collect();
            let mut config = mesh_config().env("MESH_RELAY_PEERS", peers.join(","));
            for (k, v) in extra {
                config = config.env(k, v);
            }
            r.start(config)
        })
        .collect()
}

/// Peer settings of a fast test mesh (peers to be added).
pub fn mesh_config() -> NodeConfig {
    NodeConfig::default()
        .env("MESH_PEER_PUSH_SECRET", MESH_SECRET)
        .env("MESH_DM_SYNC_INTERVAL_S", "0.2")
        .env("MESH_RELAY_PUSH_TIMEOUT_S", "2")
        .env("MESH_RELAY_FAILURE_COOLDOWN_S", "1")
}

/// Every pair of `n` nodes.
pub fn full_mesh_links(n: usize) -> Vec<(usize, usize)> {
    (0..n)
        .flat_map(|a| (a + 1..n).map(move |b| (a, b)))
        .collect()
}

/// A signed peer-plane request, as peer `self_url` sharing `secret` would send it.
pub async fn peer_request(
    base: &str,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
    self_url: &str,
    secret: &str,
) -> (u16, Value) {
    let key = dmrelay::peer::auth::derive_peer_key(secret.as_bytes(), self_url);
    let ts = now_unix();
    let hmac = dmrelay::peer::auth::sign_request(&key, method, path_and_query, ts, &body);
    signed_request(
        base,
        method,
        path_and_query,
        body,
        self_url,
        &ts.to_string(),
        &hmac,
    )
    .await
}

/// A peer-plane request with the given headers, whatever they are (for the auth tests).
pub async fn signed_request(
    base: &str,
    method: &str,
    path_and_query: &str,
    body: Vec<u8>,
    peer_url: &str,
    timestamp: &str,
    hmac: &str,
) -> (u16, Value) {
    let client = http();
    let url = format!("{base}{path_and_query}");
    let request = if method == "GET" {
        client.get(url)
    } else {
        client.post(url)
    };
    let mut request = request.insert_header(("content-type", "application/json"));
    if !peer_url.is_empty() {
        request = request.insert_header(("X-Peer-Url", peer_url));
    }
    if !timestamp.is_empty() {
        request = request.insert_header(("X-Peer-Timestamp", timestamp));
    }
    if !hmac.is_empty() {
        request = request.insert_header(("X-Peer-HMAC", hmac));
    }
    let mut response = request.send_body(body).await.unwrap();
    let status = response.status().as_u16();
    let bytes = response.body().limit(32 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// Waits until `owner`'s mailbox on `node` holds exactly `ids` (in delivery order).
pub async fn wait_for_ids(node: &Node, owner: &Identity, ids: &[&str]) {
    wait_for_mailbox(node, owner, ids, false).await;
}

/// Waits until `owner`'s mailbox on `node` holds exactly `ids`, in any order.
pub async fn wait_for_id_set(node: &Node, owner: &Identity, ids: &[&str]) {
    wait_for_mailbox(node, owner, ids, true).await;
}

async fn wait_for_mailbox(node: &Node, owner: &Identity, ids: &[&str], any_order: bool) {
    let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    if any_order {
        want.sort();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut got = node.pending_ids(owner).await;
        if any_order {
            got.sort();
        }
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{}: mailbox holds {got:?}, expected {want:?}",
            node.url
        );
        actix_rt::time::sleep(Duration::from_millis(25)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers added for the client-plane, error, durability and CLI tests.

/// Like [`post_raw`], but a transport error (node killed mid-request, connection reset) is an
/// `Err` instead of a panic.
pub async fn try_post_raw(base: &str, path: &str, body: Vec<u8>) -> Result<(u16, Value), String> {
    try_post_with(&http(), base, path, body).await
}

/// [`try_post_raw`] with the caller's client (one connection pool, so that latencies measure the
/// node, not connection setup).
pub async fn try_post_with(
    client: &awc::Client,
    base: &str,
    path: &str,
    body: Vec<u8>,
) -> Result<(u16, Value), String> {
    let mut response = client
        .post(format!("{base}{path}"))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .map_err(|e| format!("POST {base}{path}: {e}"))?;
    let status = response.status().as_u16();
    let bytes = response
        .body()
        .limit(8 << 20)
        .await
        .map_err(|e| format!("POST {base}{path}: reading the reply: {e}"))?;
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Ok((status, value))
}

/// POSTs `chunks` as a chunked body: no `Content-Length`, `Transfer-Encoding: chunked`.
pub async fn post_chunked(base: &str, path: &str, chunks: Vec<Vec<u8>>) -> (u16, Value) {
    let stream = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(actix_web::web::Bytes::from(c))),
    );
    let mut response = http()
        .post(format!("{base}{path}"))
        .insert_header(("content-type", "application/json"))
        .send_stream(stream)
        .await
        .unwrap_or_else(|e| panic!("chunked POST {base}{path}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.body().limit(8 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// Sends `method` to `base{path}` with an empty body; returns status and JSON (or the text).
pub async fn request(method: &str, base: &str, path: &str) -> (u16, Value) {
    let method = awc::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut response = http()
        .request(method, format!("{base}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{base}{path}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.body().limit(8 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

/// Asserts the error shape of SPEC §1 and §6.5: `status`, `ok: false`, `error: code`, and a
/// non-empty `detail` sentence. `what` names the case in the failure message.
pub fn assert_error(what: &str, got: &(u16, Value), status: u16, code: &str) {
    let (got_status, body) = got;
    assert_eq!(
        (*got_status, body["error"].as_str()),
        (status, Some(code)),
        "{what}: expected {status} {code}, got {got_status} {body}"
    );
    assert_eq!(body["ok"], Value::Bool(false), "{what}: {body}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(!detail.trim().is_empty(), "{what}: empty detail in {body}");
}

/// Asserts a `200 {"ok": true, "msg_id": id, "status": status}` deposit reply.
pub fn assert_deposit(what: &str, got: &(u16, Value), msg_id: &str, status: &str) {
    let (got_status, body) = got;
    assert_eq!(
        (*got_status, body["status"].as_str()),
        (200, Some(status)),
        "{what}: expected 200 {status}, got {got_status} {body}"
    );
    assert_eq!(body["ok"], Value::Bool(true), "{what}: {body}");
    assert_eq!(body["msg_id"].as_str(), Some(msg_id), "{what}: {body}");
}

impl Node {
    /// Like [`Node::send`], but a transport error is an `Err` instead of a panic.
    pub async fn try_send(&self, envelope: &Envelope) -> Result<(u16, Value), String> {
        try_post_raw(
            &self.url,
            "/api/mesh/dm/send",
            serde_json::to_vec(envelope).unwrap(),
        )
        .await
    }

    /// `GET {path}` on the client plane.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        request("GET", &self.url, path).await
    }

    /// Every envelope in `owner`'s mailbox on this node, oldest first (up to 100), as JSON.
    pub async fn pending_messages(&self, owner: &Identity) -> Vec<Value> {
        let (status, body) = self.poll(owner, 100).await;
        assert_eq!(status, 200, "{body}");
        body["messages"].as_array().unwrap().clone()
    }
}

impl Identity {
    /// A poll request signed at `ts` with `nonce`; `limit: None` leaves the field out (the
    /// signature then covers the default, 8).
    pub fn poll_with(&self, ts: u64, nonce: &str, limit: Option<u64>) -> Value {
        let signed = PollRequest::sign(&self.key, ts, nonce.to_string(), limit.unwrap_or(8));
        let mut json = signed.to_json();
        if limit.is_none() {
            json.as_object_mut().unwrap().remove("limit");
        }
        json
    }

    /// An ack object signed at `ts`, as JSON.
    pub fn ack_at(&self, ids: &[&str], ts: u64) -> Value {
        serde_json::to_value(self.ack_object_at(ids, ts)).unwrap()
    }
}

/// Like [`post_raw`], also returning the response headers (lowercase names).
pub async fn post_with_headers(
    base: &str,
    path: &str,
    body: Vec<u8>,
) -> (u16, Value, Vec<(String, String)>) {
    let mut response = http()
        .post(format!("{base}{path}"))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .unwrap_or_else(|e| panic!("POST {base}{path}: {e}"));
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let bytes = response.body().limit(8 << 20).await.unwrap();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value, headers)
}

impl Node {
    /// The running process's id (None when stopped).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// Waits until `GET {base}/health` answers 200, each attempt with a 1 s timeout (so that an
/// address nobody serves fails within `timeout` rather than hanging on one request).
pub async fn wait_healthy(base: &str, timeout: Duration) {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(1))
        .finish();
    let url = format!("{base}/health");
    wait_for(timeout, || {
        let (client, url) = (client.clone(), url.clone());
        async move { matches!(client.get(url).send().await, Ok(r) if r.status().is_success()) }
    })
    .await;
}

impl Node {
    /// Waits until `/health` answers on the peer plane's address too (with separate lanes).
    pub async fn ready_peer_lane(&self) {
        wait_healthy(&self.peer_url, Duration::from_secs(10)).await;
    }
}

/// Starts a real HTTP server on 127.0.0.1:0 in this test's runtime (a fake peer); returns its
/// base URL. `configure` registers its routes and data.
pub fn spawn_http_server(
    configure: impl Fn(&mut actix_web::web::ServiceConfig) + Send + Clone + 'static,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let server =
        actix_web::HttpServer::new(move || actix_web::App::new().configure(configure.clone()))
            .workers(1)
            .disable_signals()
            .listen(listener)
            .unwrap()
            .run();
    actix_rt::spawn(server);
    url
}

/// `dmrelay` with no inherited MESH_*, RUST_LOG or socket-activation settings, run in `cwd`.
pub fn dmrelay(cwd: &Path) -> Command {
    let mut command = Command::new(BIN);
    command
        .current_dir(cwd)
        .stdin(Stdio::null())
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .env_remove("RUST_LOG");
    for (key, _) in std::env::vars() {
        if key.starts_with("MESH_") {
            command.env_remove(key);
        }
    }
    command
}

/// Runs `command` to its end, killing it (and failing) if it still runs after `timeout`: a node
/// that starts serving when it should have refused would otherwise hang the test.
pub fn output_within(mut command: Command, timeout: Duration) -> std::process::Output {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + timeout;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{command:?} still running after {timeout:?}; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}
