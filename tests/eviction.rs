//! Idle mailboxes leave memory (`MESH_DM_MAILBOX_IDLE_S`) and come back from the store with
//! every rule of SPEC §4 and §6.2 intact: pending envelopes and caps, tombstones, poll nonces,
//! and parked replicas.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

async fn wait_until_evicted(node: &Node) {
    wait_for(Duration::from_secs(10), || async {
        node.metric("dm_mailboxes_loaded").await == 0.0
    })
    .await;
}

#[actix_rt::test]
async fn an_evicted_mailbox_comes_back_with_caps_tombstones_and_nonces() {
    let node = Node::start(NodeConfig::default().env("MESH_DM_MAILBOX_IDLE_S", "0.3"));
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let m2 = alice.envelope_to(&bob, "m2");
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    assert_eq!(node.send(&m2).await.0, 200);
    assert_eq!(node.ack(&bob, &["m1"]).await.0, 200);
    let poll = bob.poll(8);
    assert_eq!(node.post("/api/mesh/dm/poll", &poll).await.0, 200);
    assert_eq!(node.metric("dm_mailboxes_loaded").await, 1.0);

    wait_until_evicted(&node).await;
    // The same poll is still a replay: its nonce came back from the store.
    let (status, body) = node.post("/api/mesh/dm/poll", &poll).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("replay")));
    assert_eq!(
        node.metric("dm_mailboxes_loaded").await,
        1.0,
        "loaded again"
    );
    // The tombstone came back: m1 stays acknowledged.
    let (status, body) = node.send(&alice.envelope_to(&bob, "m1")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("acked")));

    wait_until_evicted(&node).await;
    // The pending envelope came back and counts against the cap.
    let (status, body) = node.send(&m2).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("duplicate")));
    assert_eq!(node.send(&alice.envelope_to(&bob, "m3")).await.0, 200);
    let (status, body) = node.send(&alice.envelope_to(&bob, "m4")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("cap_violation"))
    );

    wait_until_evicted(&node).await;
    assert_eq!(node.pending_ids(&bob).await, ["m2", "m3"]);
    assert_eq!(node.metric("dm_pending_envelopes").await, 2.0);
}

#[actix_rt::test]
async fn many_mailboxes_touched_once_do_not_stay_in_memory() {
    let node = Node::start(NodeConfig::default().env("MESH_DM_MAILBOX_IDLE_S", "0.3"));
    node.ready().await;
    let alice = Identity::new();
    let owners: Vec<Identity> = (0..50).map(|_| Identity::new()).collect();
    for (i, owner) in owners.iter().enumerate() {
        let (status, _) = node.send(&alice.envelope_to(owner, &format!("m{i}"))).await;
        assert_eq!(status, 200);
    }
    assert!(node.metric("dm_mailboxes_loaded").await >= 1.0);
    wait_until_evicted(&node).await;
    assert_eq!(node.metric("dm_pending_envelopes").await, 50.0);
    for (i, owner) in owners.iter().enumerate().step_by(7) {
        assert_eq!(node.pending_ids(owner).await, [format!("m{i}")]);
    }
}

#[actix_rt::test]
async fn a_mailbox_with_a_parked_replica_stays_loaded_and_survives_a_restart() {
    let peer = "http://127.0.0.1:9";
    // One shard: one sweep looks at every mailbox.
    let mut node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", peer)
            .env("MESH_DM_SYNC_INTERVAL_S", "60")
            .env("MESH_DM_MAILBOX_IDLE_S", "0.3")
            .env("MESH_DM_SHARDS", "1"),
    );
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    assert_eq!(node.send(&alice.envelope_to(&bob, "m2")).await.0, 200);
    let m3 = serde_json::to_value(alice.envelope_to(&bob, "m3")).unwrap();
    let body = serde_json::to_vec(&json!({ "envelope": m3 })).unwrap();
    let (status, reply) = peer_request(
        &node.peer_url,
        "POST",
        "/api/mesh/dm/replicate-envelope",
        body,
        peer,
        MESH_SECRET,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(reply["results"][0]["error"], "cap_violation");
    // Parked replicas keep their mailbox in memory (expiry must be able to reach them). A
    // control mailbox used after bob's is evicted, while bob's stays: two sweeps after the
    // control was used (sweeps are a second apart), both have been idle past 0.3 s.
    let control = Identity::new();
    assert_eq!(node.send(&alice.envelope_to(&control, "c1")).await.0, 200);
    assert_eq!(node.metric("dm_mailboxes_loaded").await, 2.0);
    let sweeps = node.metric("dm_mailbox_sweeps_total").await;
    wait_for(Duration::from_secs(20), || async {
        node.metric("dm_mailbox_sweeps_total").await >= sweeps + 2.0
    })
    .await;
    assert_eq!(
        node.metric("dm_mailboxes_loaded").await,
        1.0,
        "the control mailbox is evicted, the one with a parked replica is not"
    );
    // After a restart the mailbox is loaded again at start, and the ack still unparks m3.
    node.kill9();
    node.restart();
    node.ready().await;
    wait_for(Duration::from_secs(10), || async {
        node.metric("dm_mailboxes_loaded").await == 1.0
    })
    .await;
    assert_eq!(node.ack(&bob, &["m1"]).await.0, 200);
    wait_for_ids(&node, &bob, &["m2", "m3"]).await;
}
