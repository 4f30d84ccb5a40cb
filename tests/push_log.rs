//! Replication from the change log (issue #8): a push survives a kill -9 of its node, and the
//! pull is the repair path, not a second copy of what the push delivered.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

/// A pull that can only run once, at start-up: whatever arrives later came by push.
const NO_PULL: (&str, &str) = ("MESH_DM_SYNC_INTERVAL_S", "3600");

const READS_FROM_MEMORY: &str = "dm_push_log_reads_total{source=\"memory\"}";
const READS_FROM_STORE: &str = "dm_push_log_reads_total{source=\"store\"}";

fn label(node_url: &str) -> String {
    format!("{{peer=\"{node_url}\"}}")
}

/// The `/status` entry of `peer` on `node`.
async fn peer_status(node: &Node, peer: &str) -> serde_json::Value {
    let (status, json) = node.get("/status").await;
    assert_eq!(status, 200, "{json}");
    json["peers"]
        .as_array()
        .and_then(|peers| peers.iter().find(|p| p["url"] == peer).cloned())
        .unwrap_or_else(|| panic!("{peer} not in {json}"))
}

#[actix_rt::test]
async fn a_push_pending_at_a_kill_9_is_delivered_after_restart_by_the_push_path() {
    let (a_seat, b_seat) = (Reserved::new(false), Reserved::new(false));
    let (a_url, b_url) = (a_seat.peer_url.clone(), b_seat.peer_url.clone());
    let mut a = a_seat.start(
        mesh_config()
            .env(NO_PULL.0, NO_PULL.1)
            .env("MESH_RELAY_PEERS", &b_url),
    );
    a.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let carol = Identity::new();
    for (from, id) in [(&alice, "m1"), (&alice, "m2"), (&carol, "m3")] {
        let (status, body) = a.send(&from.envelope_to(&bob, id)).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = a.ack(&bob, &["m3"]).await;
    assert_eq!(status, 200, "{body}");
    // B is not running: the pushes fail (its socket accepts, nobody answers).
    wait_for(Duration::from_secs(20), || async {
        a.metric(&format!("dm_replication_push_error_total{}", label(&b_url)))
            .await
            >= 1.0
    })
    .await;
    a.kill9();

    // B starts while A is down: its one pull (at start) fails, the next would be in an hour.
    let b = b_seat.start(
        mesh_config()
            .env(NO_PULL.0, NO_PULL.1)
            .env("MESH_RELAY_PEERS", &a_url),
    );
    b.ready().await;
    wait_for(Duration::from_secs(20), || async {
        !peer_status(&b, &a_url).await["last_pull_error"].is_null()
    })
    .await;

    a.restart();
    a.ready().await;
    // Its cursor lies before anything the restarted writer has kept in memory: the pusher
    // reads the backlog from the store.
    wait_for(Duration::from_secs(10), || async {
        a.metric(READS_FROM_STORE).await >= 1.0
    })
    .await;
    // The pusher resumes from its durable cursor: m1 and m2 arrive, and m3 does not (its ack
    // removed it from the log; the ack, after it in the log, is pushed instead).
    wait_for_id_set(&b, &bob, &["m1", "m2"]).await;
    wait_for(Duration::from_secs(10), || async {
        a.metric(&format!("dm_replication_push_ok_total{}", label(&b_url)))
            .await
            >= 3.0
    })
    .await;
    assert_eq!(b.pending_ids(&bob).await, ["m1", "m2"]);
    assert_eq!(b.metric("dm_replica_accepted_total").await, 2.0);
    // None of it came by pull: B never completed one.
    let a_label = label(&a_url);
    assert_eq!(
        b.metric(&format!("dm_sync_rounds_total{a_label}")).await,
        0.0
    );
    assert_eq!(
        b.metric(&format!("dm_sync_applied_total{a_label}")).await,
        0.0
    );
    // The ack came too: m3 is acknowledged on B, so a copy of it is refused there as "acked".
    let (status, body) = b.send(&carol.envelope_to(&bob, "m3")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("acked")),
        "{body}"
    );
}

#[actix_rt::test]
async fn a_cursor_saved_at_sigterm_sends_nothing_twice() {
    let nodes = mesh(2, &full_mesh_links(2), &[NO_PULL]);
    let (mut a, b) = {
        let mut nodes = nodes.into_iter();
        (nodes.next().unwrap(), nodes.next().unwrap())
    };
    a.ready().await;
    b.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(a.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    wait_for_ids(&b, &bob, &["m1"]).await;
    // A pusher that keeps up takes what was just committed from the writer's window in
    // memory, never from a scan of the store.
    assert!(a.metric(READS_FROM_MEMORY).await >= 1.0);
    assert_eq!(a.metric(READS_FROM_STORE).await, 0.0);
    assert!(a.terminate(), "SIGTERM exits 0");
    a.restart();
    a.ready().await;
    assert_eq!(a.send(&alice.envelope_to(&bob, "m2")).await.0, 200);
    wait_for_id_set(&b, &bob, &["m1", "m2"]).await;
    // m1 is not pushed again after the restart: the cursor was saved at shutdown.
    assert_eq!(b.metric("dm_replica_accepted_total").await, 2.0);
    assert_eq!(b.metric("dm_replica_duplicate_total").await, 0.0);
}

/// A batch still waiting for its answer at SIGTERM: the pusher waits for the answer before it
/// saves its cursor, so the peer does not get the batch again after the restart.
#[actix_rt::test]
async fn a_sigterm_waits_for_the_answer_to_the_batch_in_flight() {
    let peer = FakePeer::start();
    let mut node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &peer.url)
            .env(NO_PULL.0, NO_PULL.1),
    );
    node.ready().await;
    peer.delay_replies(Duration::from_millis(600));
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    // The peer has the batch; its answer is 600 ms away when the node is told to stop.
    wait_for(Duration::from_secs(10), || async {
        peer.pushed() == ["m1"]
    })
    .await;
    assert!(node.terminate(), "SIGTERM exits 0");
    peer.delay_replies(Duration::ZERO);
    node.restart();
    node.ready().await;
    assert_eq!(node.send(&alice.envelope_to(&bob, "m2")).await.0, 200);
    wait_for(Duration::from_secs(10), || async {
        peer.pushed().ends_with(&["m2".to_string()])
    })
    .await;
    assert_eq!(
        peer.pushed(),
        ["m1", "m2"],
        "m1 was pushed again after the restart"
    );
}

fn until(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("until="))
        .map(|v| v.parse().unwrap())
}

fn pushed_through(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("pushed_through="))
        .map(|v| v.parse().unwrap())
}

#[actix_rt::test]
async fn the_pull_asks_to_skip_what_the_push_delivered_and_recognizes_what_it_holds() {
    let peer = FakePeer::start();
    let node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &peer.url)
            .env("MESH_DM_SYNC_INTERVAL_S", "0.1"),
    );
    node.ready().await;
    // The first pull has no epoch yet: it asks for everything, and anchors the mark at 0.
    let first = peer.next_query().await;
    assert_eq!(pushed_through(&first), None, "{first}");
    peer.next_query().await;
    let (alice, carol, bob) = (Identity::new(), Identity::new(), Identity::new());
    let (m1, m2) = (alice.envelope_to(&bob, "m1"), carol.envelope_to(&bob, "m2"));
    peer.push(&node, &[&m1], 0, 5).await;
    peer.next_query().await;
    let query = peer.next_query().await;
    assert_eq!(pushed_through(&query), Some(5));
    // The pushes are flowing: the pull reads only up to where they reached.
    assert_eq!(until(&query), Some(5), "{query}");
    // A batch after a gap (6..8 never came) does not move the mark.
    peer.push(&node, &[&m2], 8, 12).await;
    peer.next_query().await;
    assert_eq!(pushed_through(&peer.next_query().await), Some(5));
    // The gap filled, the later batch joins up.
    peer.push(&node, &[&m2], 5, 8).await;
    peer.push(&node, &[&m2], 8, 12).await;
    peer.next_query().await;
    assert_eq!(pushed_through(&peer.next_query().await), Some(12));
    assert!(
        peer.queries().iter().all(|q| q.starts_with("since=0&")),
        "nothing was in the feed yet: {:?}",
        peer.queries()
    );

    // The feed now holds the two pushed envelopes (as this fake peer ignores the skip) and a new
    // one: the pushed ones are recognized without a check, the new one is applied.
    let label = format!("{{peer=\"{}\"}}", peer.url);
    let (applied, known) = (
        format!("dm_sync_applied_total{label}"),
        format!("dm_sync_known_total{label}"),
    );
    assert_eq!(node.metric(&applied).await, 0.0);
    assert_eq!(node.metric(&known).await, 0.0);
    let m3 = alice.envelope_to(&bob, "m3");
    peer.skip_to(100);
    peer.append_envelope(&m1);
    peer.append_envelope(&m2);
    peer.append_envelope(&m3);
    wait_for_id_set(&node, &bob, &["m1", "m2", "m3"]).await;
    wait_for(Duration::from_secs(10), || async {
        node.metric(&known).await == 2.0
    })
    .await;
    assert_eq!(node.metric(&applied).await, 1.0);
    assert_eq!(node.metric("dm_replica_accepted_total").await, 3.0);
    // The cursor moved past the page: the next request starts after it.
    // Once no push moved the mark for a while (1 s here), the pull reads to the end again.
    let query = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let query = peer.next_query().await;
            if until(&query).is_none() {
                break query;
            }
        }
    })
    .await
    .expect("a pull without `until` once the pushes stopped");
    assert!(query.starts_with("since=102&"), "{query}");
}

/// A feed page (`GET /changes?{query}`) of `node`, read as peer `peer_url`; it must be a 200.
async fn feed_page(node: &Node, peer_url: &str, query: &str) -> serde_json::Value {
    let path = format!("/api/mesh/dm/changes?{query}");
    let (status, page) = peer_request(
        &node.peer_url,
        "GET",
        &path,
        Vec::new(),
        peer_url,
        MESH_SECRET,
    )
    .await;
    assert_eq!(status, 200, "{page}");
    page
}

/// The msg_ids of a feed page of `node` read as `peer_url`, and its `next`.
async fn feed(node: &Node, peer_url: &str, query: &str) -> (Vec<String>, u64) {
    let page = feed_page(node, peer_url, query).await;
    let ids: Vec<String> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["envelope"]["msg_id"].as_str().unwrap().to_string())
        .collect();
    (ids, page["next"].as_u64().unwrap())
}

/// The `(seq, sig)` entries of a digest page (`digest=1`) of `node` read as `peer_url`.
async fn digest(node: &Node, peer_url: &str, query: &str) -> Vec<(u64, String)> {
    let page = feed_page(node, peer_url, &format!("{query}&digest=1")).await;
    page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let entry = c.as_object().unwrap();
            assert_eq!(entry.len(), 2, "a digest entry is its seq and sig: {c}");
            (
                c["seq"].as_u64().unwrap(),
                c["sig"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[actix_rt::test]
async fn the_feed_leaves_out_client_changes_up_to_pushed_through() {
    let peer_url = "http://127.0.0.1:9";
    let node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", peer_url)
            .env(NO_PULL.0, NO_PULL.1),
    );
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(node.send(&alice.envelope_to(&bob, "c1")).await.0, 200);
    // A replica from the peer, then another client change.
    let replica = Identity::new().envelope_to(&bob, "r1");
    let body = serde_json::to_vec(&json!({"envelope": replica})).unwrap();
    let path = "/api/mesh/dm/replicate-envelope";
    let (status, reply) =
        peer_request(&node.peer_url, "POST", path, body, peer_url, MESH_SECRET).await;
    assert_eq!(status, 200, "{reply}");
    let c2 = alice.envelope_to(&bob, "c2");
    assert_eq!(node.send(&c2).await.0, 200);
    assert_eq!(
        feed(&node, peer_url, "since=0").await,
        (vec!["c1".into(), "r1".into(), "c2".into()], 3)
    );
    assert_eq!(
        feed(&node, peer_url, "since=0&pushed_through=3").await,
        (vec!["r1".into()], 3)
    );
    assert_eq!(
        feed(&node, peer_url, "since=0&pushed_through=1").await,
        (vec!["r1".into(), "c2".into()], 3)
    );
    // `until` ends the page there.
    assert_eq!(
        feed(&node, peer_url, "since=0&until=2").await,
        (vec!["c1".into(), "r1".into()], 2)
    );
    assert_eq!(
        feed(&node, peer_url, "since=0&pushed_through=1&until=2").await,
        (vec!["r1".into()], 2)
    );
    // Nothing but skipped entries after the cursor: the page is empty, `next` moves past them.
    assert_eq!(
        feed(&node, peer_url, "since=2&pushed_through=3").await,
        (vec![], 3)
    );
    // A mark behind the cursor changes nothing.
    assert_eq!(
        feed(&node, peer_url, "since=2&pushed_through=1").await,
        (vec!["c2".into()], 3)
    );
    // As digests: the same entries, each its seq and signature, under the same filters.
    let (status, ack_reply) = node.ack(&bob, &["c1"]).await;
    assert_eq!(status, 200, "{ack_reply}");
    let digests = digest(&node, peer_url, "since=0").await;
    assert_eq!(
        digests.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(),
        [2, 3, 4],
        "c1 is acknowledged; the ack object is seq 4"
    );
    assert_eq!(digests[0].1, hex::encode(replica.sig));
    assert_eq!(digests[1].1, hex::encode(c2.sig));
    assert_eq!(digests[2].1.len(), 128, "the ack object's signature");
    assert_eq!(
        digest(&node, peer_url, "since=0&pushed_through=4&until=3").await,
        [(2, hex::encode(replica.sig))]
    );
}

#[actix_rt::test]
async fn a_new_peer_starts_at_the_head_of_the_log() {
    // A node with history, then a peer added to its configuration.
    let seat = Reserved::new(false);
    let mut node = seat.start(mesh_config().env(NO_PULL.0, NO_PULL.1));
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(node.send(&alice.envelope_to(&bob, "old")).await.0, 200);
    assert!(node.terminate());
    let peer = FakePeer::start();
    node.set_env("MESH_RELAY_PEERS", &peer.url);
    node.restart();
    node.ready().await;
    assert_eq!(node.send(&alice.envelope_to(&bob, "new")).await.0, 200);
    wait_for(Duration::from_secs(10), || async {
        !peer.pushed().is_empty()
    })
    .await;
    // Only what came after the peer was added is pushed; the history is the pull's to fetch.
    assert_eq!(peer.pushed(), ["new"]);
}

#[actix_rt::test]
async fn an_open_breaker_survives_a_restart_so_a_dead_peer_is_not_hammered() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &dead_url)
            .env("MESH_RELAY_MAX_FAILURES", "3")
            .env("MESH_RELAY_FAILURE_COOLDOWN_S", "600")
            .env(NO_PULL.0, NO_PULL.1),
    );
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    let label = format!("{{peer=\"{dead_url}\"}}");
    let open = format!("dm_peer_circuit_open{label}");
    let errors = format!("dm_replication_push_error_total{label}");
    wait_for(Duration::from_secs(20), || async {
        node.metric(&open).await == 1.0
    })
    .await;
    assert_eq!(node.metric(&errors).await, 3.0);
    assert!(
        node.terminate(),
        "SIGTERM exits 0 (and saves the push record)"
    );
    node.restart();
    node.ready().await;
    // Back with the breaker still open for the rest of its cooldown: no push was tried, while a
    // fresh start would have tried at once and failed.
    assert_eq!(node.metric(&open).await, 1.0);
    assert_eq!(node.metric(&errors).await, 0.0);
    let status = peer_status(&node, &dead_url).await;
    assert_eq!(status["breaker"], "open", "{status}");
    assert_eq!(status["consecutive_failures"], 3, "{status}");
}

/// The pull asks for signatures first (`digest=1`): the replicas a third node pushed here already
/// are recognized from them, and no body is fetched again.
#[actix_rt::test]
async fn replicas_a_third_node_pushed_already_are_pulled_as_signatures_only() {
    let nodes = mesh(3, &full_mesh_links(3), &[("MESH_DM_SYNC_INTERVAL_S", "2")]);
    for node in &nodes {
        node.ready().await;
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let c_label = label(&c.peer_url);
    let metric = |name: &str| format!("{name}{c_label}");
    // B's first pull of C is done: the next is 2 s away, long after the pushes below land.
    wait_for(Duration::from_secs(10), || async {
        b.metric(&metric("dm_sync_rounds_total")).await >= 1.0
    })
    .await;
    let bob = Identity::new();
    let ids = ["m1", "m2", "m3", "m4"];
    for id in ids {
        assert_eq!(a.send(&Identity::new().envelope_to(&bob, id)).await.0, 200);
    }
    wait_for_id_set(b, &bob, &ids).await;
    wait_for_id_set(c, &bob, &ids).await;
    // C's feed holds A's four envelopes (C stored them as replicas): B's next pull of C reads
    // their signatures, knows them all, and fetches no page in full.
    wait_for(Duration::from_secs(10), || async {
        b.metric(&metric("dm_sync_known_total")).await >= 4.0
    })
    .await;
    assert_eq!(b.metric(&metric("dm_sync_full_pages_total")).await, 0.0);
    assert!(b.metric(&metric("dm_sync_digest_pages_total")).await >= 1.0);
    assert_eq!(b.metric(&metric("dm_sync_applied_total")).await, 0.0);
}

/// What the push did not deliver shows up as a new signature in the digest, and the puller then
/// fetches that range in full and applies it; later rounds read signatures only again.
#[actix_rt::test]
async fn an_entry_the_push_did_not_deliver_is_pulled_in_full() {
    let (a_seat, b_seat) = (Reserved::new(false), Reserved::new(false));
    // A pushes to a port where nobody answers; B names itself by that URL, so A takes B's pulls.
    let dead = Reserved::new(false);
    let a_url = a_seat.peer_url.clone();
    let a = a_seat.start(mesh_config().env("MESH_RELAY_PEERS", &dead.peer_url));
    let b = b_seat.start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &a_url)
            .env("MESH_SELF_PEER_URL", &dead.peer_url),
    );
    a.ready().await;
    b.ready().await;
    let bob = Identity::new();
    for id in ["m1", "m2", "m3"] {
        // One sender each: the cap is two unread per sender.
        assert_eq!(a.send(&Identity::new().envelope_to(&bob, id)).await.0, 200);
    }
    wait_for_id_set(&b, &bob, &["m1", "m2", "m3"]).await;
    let a_label = label(&a_url);
    let metric = |name: &str| format!("{name}{a_label}");
    wait_for(Duration::from_secs(10), || async {
        b.metric(&metric("dm_sync_applied_total")).await == 3.0
    })
    .await;
    let full = b.metric(&metric("dm_sync_full_pages_total")).await;
    assert!(full >= 1.0, "the new entries came in a full page");
    // Three more rounds, nothing new: signatures only.
    let rounds = b.metric(&metric("dm_sync_rounds_total")).await;
    let digests = b.metric(&metric("dm_sync_digest_pages_total")).await;
    wait_for(Duration::from_secs(10), || async {
        b.metric(&metric("dm_sync_rounds_total")).await >= rounds + 3.0
    })
    .await;
    assert_eq!(b.metric(&metric("dm_sync_full_pages_total")).await, full);
    assert!(b.metric(&metric("dm_sync_digest_pages_total")).await >= digests + 3.0);
}
