//! A fake peer relay that is a real HTTP server: it serves a change feed the test writes (in the
//! shape of SPEC §7.3, ignoring dmrelay's `pushed_through`/`until` extensions, which it only
//! records), takes pushes (answering every item `accepted`), and records what it was asked and
//! sent.

use super::{MESH_SECRET, Node, peer_request, spawn_http_server, wait_for};
use actix_web::{HttpRequest, HttpResponse, web};
use dmrelay::protocol::Envelope;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct FakePeer {
    pub url: String,
    state: Arc<Mutex<FakeState>>,
}

struct FakeState {
    epoch: String,
    changes: Vec<Value>,
    next_seq: u64,
    /// The query of every feed request, in order.
    queries: Vec<String>,
    /// msg_ids of the envelopes pushed to this peer, in order.
    pushed: Vec<String>,
    /// How long a push waits for its answer (after it was recorded).
    reply_delay: Duration,
}

impl FakePeer {
    pub fn start() -> Self {
        let state = Arc::new(Mutex::new(FakeState {
            epoch: "epoch-1".into(),
            changes: Vec::new(),
            next_seq: 1,
            queries: Vec::new(),
            pushed: Vec::new(),
            reply_delay: Duration::ZERO,
        }));
        let data = web::Data::from(Arc::clone(&state));
        let url = spawn_http_server(move |cfg| {
            cfg.app_data(data.clone())
                .route("/api/mesh/dm/changes", web::get().to(serve_feed))
                .route("/api/mesh/dm/replicate-envelope", web::post().to(take_push))
                .route("/api/mesh/dm/replicate-ack", web::post().to(take_push));
        });
        Self { url, state }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap()
    }

    /// Appends a change (`kind`: "envelope" or "ack") with the next seq.
    pub fn append(&self, kind: &str, value: Value) {
        let mut state = self.state();
        let seq = state.next_seq;
        state.next_seq += 1;
        state.changes.push(json!({"seq": seq, kind: value}));
    }

    pub fn append_envelope(&self, envelope: &Envelope) {
        self.append("envelope", serde_json::to_value(envelope).unwrap());
    }

    /// The next change appended gets this seq.
    pub fn skip_to(&self, seq: u64) {
        self.state().next_seq = seq;
    }

    /// A new store: a new epoch and an empty feed.
    pub fn new_epoch(&self, epoch: &str) {
        let mut state = self.state();
        state.epoch = epoch.to_string();
        state.changes.clear();
        state.next_seq = 1;
    }

    pub fn epoch(&self) -> String {
        self.state().epoch.clone()
    }

    /// Answers every later push only after `delay` (it is recorded at once).
    pub fn delay_replies(&self, delay: Duration) {
        self.state().reply_delay = delay;
    }

    pub fn pushed(&self) -> Vec<String> {
        self.state().pushed.clone()
    }

    pub fn queries(&self) -> Vec<String> {
        self.state().queries.clone()
    }

    /// Waits for a feed request made after this call and returns its query.
    pub async fn next_query(&self) -> String {
        let seen = self.queries().len();
        wait_for(Duration::from_secs(20), || async {
            self.queries().len() > seen
        })
        .await;
        self.queries()[seen].clone()
    }

    /// Pushes `envelopes` to `node` as this peer, with a log position in this peer's epoch; every
    /// item must be taken (`accepted` or `duplicate`).
    pub async fn push(&self, node: &Node, envelopes: &[&Envelope], after: u64, through: u64) {
        let body = json!({
            "envelopes": envelopes,
            "feed": {"epoch": self.epoch(), "after": after, "through": through},
        });
        let (status, reply) = peer_request(
            &node.peer_url,
            "POST",
            "/api/mesh/dm/replicate-envelope",
            serde_json::to_vec(&body).unwrap(),
            &self.url,
            MESH_SECRET,
        )
        .await;
        assert_eq!(status, 200, "{reply}");
        for result in reply["results"].as_array().unwrap() {
            let status = result["status"].as_str();
            assert!(matches!(status, Some("accepted" | "duplicate")), "{reply}");
        }
    }
}

/// Serves every change after `since`.
async fn serve_feed(req: HttpRequest, state: web::Data<Mutex<FakeState>>) -> HttpResponse {
    let query = req.query_string().to_string();
    let since: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("since="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut state = state.lock().unwrap();
    state.queries.push(query);
    let changes: Vec<Value> = state
        .changes
        .iter()
        .filter(|c| c["seq"].as_u64().unwrap() > since)
        .cloned()
        .collect();
    let next = changes.last().map_or(since, |c| c["seq"].as_u64().unwrap());
    HttpResponse::Ok().json(
        json!({"ok": true, "epoch": state.epoch, "next": next, "more": false, "changes": changes}),
    )
}

async fn take_push(body: web::Bytes, state: web::Data<Mutex<FakeState>>) -> HttpResponse {
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let delay = {
        let mut state = state.lock().unwrap();
        for envelope in value["envelopes"].as_array().into_iter().flatten() {
            let id = envelope["msg_id"].as_str().unwrap_or("?").to_string();
            state.pushed.push(id);
        }
        state.reply_delay
    };
    actix_rt::time::sleep(delay).await;
    let count = ["envelopes", "acks"]
        .iter()
        .find_map(|k| value[*k].as_array().map(Vec::len))
        .unwrap_or(1);
    let results: Vec<Value> = (0..count).map(|_| json!({"status": "accepted"})).collect();
    HttpResponse::Ok().json(json!({"ok": true, "results": results}))
}
