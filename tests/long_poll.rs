//! SPEC §6.2 "Waiting for mail (long poll)" with real nodes: a poll with `wait_s` is held while
//! the mailbox is empty and answered as soon as an envelope becomes pending there (deposited
//! here or replicated from a peer), or with the empty reply when the time is up; bounded in
//! number (past the bound an immediate empty 200); released with its normal reply at shutdown.

mod common;

use actix_web::{HttpResponse, web};
use common::*;
use dmrelay::protocol::{PollRequest, now_unix, random_hex};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const POLL: &str = "/api/mesh/dm/poll";

/// A signed poll of `owner`'s mailbox asking the node to wait up to `wait_s` seconds.
fn long_poll_body(owner: &Identity, wait_s: u64) -> Value {
    PollRequest::sign(&owner.key, now_unix(), random_hex(16).unwrap(), 8)
        .with_wait(wait_s)
        .to_json()
}

/// Posts `body` with a client that waits longer than any `wait_s`; returns the reply and how long
/// it took.
async fn post_waiting(base: String, body: Value) -> (u16, Value, Duration) {
    let started = Instant::now();
    let mut response = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
        .post(format!("{base}{POLL}"))
        .insert_header(("content-type", "application/json"))
        .send_body(serde_json::to_vec(&body).unwrap())
        .await
        .unwrap_or_else(|e| panic!("long poll: {e}"));
    let status = response.status().as_u16();
    let bytes = response.body().await.unwrap();
    let value = serde_json::from_slice(&bytes).unwrap();
    (status, value, started.elapsed())
}

/// Starts a long poll in the background.
fn spawn_long_poll(
    node: &Node,
    owner: &Identity,
    wait_s: u64,
) -> actix_rt::task::JoinHandle<(u16, Value, Duration)> {
    actix_rt::spawn(post_waiting(
        node.url.clone(),
        long_poll_body(owner, wait_s),
    ))
}

/// The value of one metric line; panics when the node does not expose it.
async fn exposed_metric(node: &Node, name: &str) -> f64 {
    let (status, body) = node.get("/metrics").await;
    assert_eq!(status, 200);
    let text = body.as_str().unwrap().to_string();
    text.lines()
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().unwrap())
        })
        .unwrap_or_else(|| panic!("{name} is not in /metrics:\n{text}"))
}

/// Waits until the node holds exactly `n` waiting polls.
async fn wait_for_waiting_polls(node: &Node, n: f64) {
    wait_for(Duration::from_secs(20), || async {
        exposed_metric(node, "dm_waiting_polls").await == n
    })
    .await;
}

fn message_ids(body: &Value) -> Vec<&str> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| m["msg_id"].as_str().unwrap())
        .collect()
}

#[actix_rt::test]
async fn a_deposit_on_this_node_wakes_a_waiting_poll_with_the_envelope() {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let body = long_poll_body(&bob, 25);
    let poll = actix_rt::spawn(post_waiting(node.url.clone(), body.clone()));
    wait_for_waiting_polls(&node, 1.0).await;
    // The nonce was spent when the request arrived, not when it is answered.
    assert_error(
        "reused long poll",
        &node.post(POLL, &body).await,
        401,
        "replay",
    );

    let deposited = Instant::now();
    assert_deposit(
        "deposit",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    let (status, reply, _) = poll.await.unwrap();
    let woken_after = deposited.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(message_ids(&reply), ["m1"]);
    assert_eq!(
        (reply["pending"].as_u64(), reply["has_more"].as_bool()),
        (Some(1), Some(false))
    );
    assert!(
        woken_after < Duration::from_secs(10),
        "woken after {woken_after:?}"
    );
    assert_eq!(exposed_metric(&node, "dm_waiting_polls").await, 0.0);
}

#[actix_rt::test]
async fn a_replica_from_a_peer_wakes_a_poll_waiting_on_the_other_node() {
    let nodes = mesh(2, &full_mesh_links(2), &[]);
    for node in &nodes {
        node.ready().await;
    }
    let (a, b) = (&nodes[0], &nodes[1]);
    let (alice, bob) = (Identity::new(), Identity::new());
    let poll = spawn_long_poll(b, &bob, 25);
    wait_for_waiting_polls(b, 1.0).await;

    let deposited = Instant::now();
    assert_eq!(a.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    let (status, reply, _) = poll.await.unwrap();
    let woken_after = deposited.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(message_ids(&reply), ["m1"]);
    assert_eq!(reply["pending"], 1);
    assert!(
        woken_after < Duration::from_secs(10),
        "woken after {woken_after:?}"
    );
    assert!(exposed_metric(b, "dm_replica_accepted_total").await >= 1.0);
}

/// A peer that only serves a change feed (SPEC §7.3) holding what the test appends.
fn spawn_fake_feed() -> (String, Arc<Mutex<Vec<Value>>>) {
    let feed = Arc::new(Mutex::new(Vec::<Value>::new()));
    let data = web::Data::from(Arc::clone(&feed));
    let url = spawn_http_server(move |cfg| {
        cfg.app_data(data.clone()).route(
            "/api/mesh/dm/changes",
            web::get().to(|req: actix_web::HttpRequest, feed: web::Data<Mutex<Vec<Value>>>| async move {
                let since: u64 = req
                    .query_string()
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("since="))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let feed = feed.lock().unwrap();
                let changes: Vec<&Value> = feed.iter().skip(since as usize).collect();
                let next = feed.len().max(since as usize);
                HttpResponse::Ok().json(
                    json!({"ok": true, "epoch": "fake-1", "next": next, "more": false, "changes": changes}),
                )
            }),
        );
    });
    (url, feed)
}

#[actix_rt::test]
async fn a_replica_pulled_from_a_peer_feed_wakes_a_waiting_poll() {
    let (peer, feed) = spawn_fake_feed();
    let node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &peer)
            .env("MESH_DM_SYNC_INTERVAL_S", "0.1"),
    );
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let poll = spawn_long_poll(&node, &bob, 25);
    wait_for_waiting_polls(&node, 1.0).await;

    let offered = Instant::now();
    {
        let mut feed = feed.lock().unwrap();
        let envelope = serde_json::to_value(alice.envelope_to(&bob, "m1")).unwrap();
        let seq = feed.len() + 1;
        feed.push(json!({"seq": seq, "envelope": envelope}));
    }
    let (status, reply, _) = poll.await.unwrap();
    let woken_after = offered.elapsed();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(message_ids(&reply), ["m1"]);
    assert!(
        woken_after < Duration::from_secs(10),
        "woken after {woken_after:?}"
    );
    let applied = format!("dm_sync_applied_total{{peer=\"{peer}\"}}");
    assert_eq!(exposed_metric(&node, &applied).await, 1.0);
}

#[actix_rt::test]
async fn with_nothing_arriving_the_poll_answers_empty_when_wait_s_is_up_not_before() {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    let bob = Identity::new();
    let (status, reply, took) = post_waiting(node.url.clone(), long_poll_body(&bob, 2)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["ok"], true);
    assert!(message_ids(&reply).is_empty());
    assert_eq!(
        (reply["pending"].as_u64(), reply["has_more"].as_bool()),
        (Some(0), Some(false))
    );
    assert!(took >= Duration::from_secs(2), "answered after {took:?}");
    assert!(took < Duration::from_secs(12), "answered after {took:?}");
    assert_eq!(exposed_metric(&node, "dm_waiting_polls").await, 0.0);
}

#[actix_rt::test]
async fn a_poll_whose_mailbox_has_mail_answers_at_once() {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    let (status, reply, took) = post_waiting(node.url.clone(), long_poll_body(&bob, 25)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(message_ids(&reply), ["m1"]);
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
}

#[actix_rt::test]
async fn wait_s_out_of_range_or_not_a_number_is_a_bad_request() {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    let bob = Identity::new();
    for wait_s in [
        Value::from(31),
        Value::from("x"),
        Value::from(-1),
        Value::from(2.5),
    ] {
        let mut body = bob.poll(8);
        body["wait_s"] = wait_s.clone();
        let got = node.post(POLL, &body).await;
        assert_error(&format!("wait_s {wait_s}"), &got, 400, "bad_request");
        let detail = got.1["detail"].as_str().unwrap();
        assert!(detail.contains("wait_s"), "{detail}");
    }
    // 30 is the largest allowed, and it is not signed: the signature still verifies (the
    // mailbox has mail, so the reply comes at once).
    let alice = Identity::new();
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    let mut body = bob.poll(8);
    body["wait_s"] = Value::from(30);
    let (status, reply) = node.post(POLL, &body).await;
    assert_eq!((status, message_ids(&reply)), (200, vec!["m1"]), "{reply}");
}

#[actix_rt::test]
async fn past_the_bound_a_long_poll_gets_an_immediate_empty_200() {
    let node = Node::start(NodeConfig::default().env("MESH_DM_MAX_WAITING_POLLS", 3));
    node.ready().await;
    let owners: Vec<Identity> = (0..4).map(|_| Identity::new()).collect();
    let held: Vec<_> = owners[..3]
        .iter()
        .map(|owner| spawn_long_poll(&node, owner, 25))
        .collect();
    wait_for_waiting_polls(&node, 3.0).await;

    let (status, reply, took) =
        post_waiting(node.url.clone(), long_poll_body(&owners[3], 25)).await;
    assert_eq!(status, 200, "{reply}");
    assert!(message_ids(&reply).is_empty());
    assert_eq!(reply["pending"], 0);
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    assert_eq!(exposed_metric(&node, "dm_waiting_polls").await, 3.0);
    assert_eq!(
        exposed_metric(&node, "dm_waiting_polls_overflow_total").await,
        1.0
    );

    // The three held polls are still waiting, and still woken by mail.
    let alice = Identity::new();
    for (i, owner) in owners[..3].iter().enumerate() {
        let id = format!("m{i}");
        assert_eq!(node.send(&alice.envelope_to(owner, &id)).await.0, 200);
    }
    for (i, poll) in held.into_iter().enumerate() {
        let (status, reply, _) = poll.await.unwrap();
        assert_eq!(status, 200, "{reply}");
        assert_eq!(message_ids(&reply), [format!("m{i}")]);
    }
    wait_for_waiting_polls(&node, 0.0).await;
}

#[actix_rt::test]
async fn on_sigterm_waiting_polls_get_their_normal_reply_at_once_and_the_node_exits_0() {
    let mut node = Node::start(NodeConfig::default());
    node.ready().await;
    let owners: Vec<Identity> = (0..2).map(|_| Identity::new()).collect();
    let held: Vec<_> = owners
        .iter()
        .map(|owner| spawn_long_poll(&node, owner, 30))
        .collect();
    wait_for_waiting_polls(&node, 2.0).await;

    let stopping = Instant::now();
    assert!(node.terminate(), "the node exits 0");
    // Without the release the servers would wait SHUTDOWN_GRACE (10 s) for the polls, then cut them.
    let stopped_after = stopping.elapsed();
    assert!(
        stopped_after < Duration::from_secs(8),
        "stopped after {stopped_after:?}"
    );
    for poll in held {
        let (status, reply, took) = poll.await.unwrap();
        assert_eq!(status, 200, "{reply}");
        assert_eq!(reply["ok"], true);
        assert!(message_ids(&reply).is_empty());
        assert!(took < Duration::from_secs(25), "answered after {took:?}");
    }
}

#[actix_rt::test]
async fn a_client_that_goes_away_does_not_leave_its_poll_waiting() {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    let bob = Identity::new();
    let (url, body) = (node.url.clone(), long_poll_body(&bob, 30));
    let impatient = actix_rt::spawn(async move {
        awc::Client::builder()
            .timeout(Duration::from_secs(3))
            .finish()
            .post(format!("{url}{POLL}"))
            .insert_header(("content-type", "application/json"))
            .send_body(serde_json::to_vec(&body).unwrap())
            .await
            .map(|response| response.status())
    });
    wait_for_waiting_polls(&node, 1.0).await;
    let gave_up = impatient.await.unwrap();
    assert!(gave_up.is_err(), "the client gave up first: {gave_up:?}");
    // Dropped at the next sweep (1 s), long before its 30 s are up.
    wait_for(Duration::from_secs(15), || async {
        exposed_metric(&node, "dm_waiting_polls").await == 0.0
    })
    .await;
}

#[actix_rt::test]
async fn an_idle_mailbox_with_a_waiting_poll_stays_loaded_until_the_poll_is_answered() {
    let node = Node::start(NodeConfig::default().env("MESH_DM_MAILBOX_IDLE_S", "0.3"));
    node.ready().await;
    let (alice, bob, carol) = (Identity::new(), Identity::new(), Identity::new());
    let poll = spawn_long_poll(&node, &bob, 25);
    wait_for_waiting_polls(&node, 1.0).await;
    // Carol's mailbox, used once, shows that idle mailboxes are being evicted meanwhile.
    assert_eq!(node.poll(&carol, 8).await.0, 200);
    wait_for(Duration::from_secs(15), || async {
        exposed_metric(&node, "dm_mailboxes_loaded").await == 1.0
    })
    .await;
    assert_eq!(exposed_metric(&node, "dm_waiting_polls").await, 1.0);

    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    let (status, reply, _) = poll.await.unwrap();
    assert_eq!(status, 200, "{reply}");
    assert_eq!(message_ids(&reply), ["m1"]);
    // Once answered, Bob's mailbox may leave memory like any other.
    wait_for(Duration::from_secs(15), || async {
        exposed_metric(&node, "dm_mailboxes_loaded").await == 0.0
    })
    .await;
}
