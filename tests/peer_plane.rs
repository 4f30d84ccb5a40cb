//! SPEC §5.2 (peer authentication) and §7.1–7.4 against one real node, driven by a test peer
//! that signs its requests correctly, and by a fake peer that is a real HTTP server.

mod common;

use common::*;
use dmrelay::peer::auth::{derive_peer_key, sign_request};
use dmrelay::protocol::now_unix;
use serde_json::{Value, json};
use std::time::Duration;

/// The URL the test peer claims; configured as the node's peer.
const TEST_PEER: &str = "http://127.0.0.1:9";

fn node_with_test_peer(extra: &[(&str, &str)]) -> Node {
    let mut config = mesh_config()
        .env("MESH_RELAY_PEERS", TEST_PEER)
        // The test peer serves no feed: pull rarely so it stays out of the way.
        .env("MESH_DM_SYNC_INTERVAL_S", "60");
    for (k, v) in extra {
        config = config.env(k, v);
    }
    Node::start(config)
}

async fn push(node: &Node, path: &str, body: &Value) -> (u16, Value) {
    peer_request(
        &node.peer_url,
        "POST",
        path,
        serde_json::to_vec(body).unwrap(),
        TEST_PEER,
        MESH_SECRET,
    )
    .await
}

async fn push_envelopes(node: &Node, envelopes: Vec<Value>) -> (u16, Value) {
    push(
        node,
        "/api/mesh/dm/replicate-envelope",
        &json!({ "envelopes": envelopes }),
    )
    .await
}

fn statuses(body: &Value) -> Vec<String> {
    body["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {body}"))
        .iter()
        .map(|r| {
            let status = r["status"].as_str().unwrap();
            match r["error"].as_str() {
                Some(error) => format!("{status}:{error}"),
                None => status.to_string(),
            }
        })
        .collect()
}

#[actix_rt::test]
async fn every_bad_peer_authentication_is_403_peer_auth() {
    let node = node_with_test_peer(&[]);
    node.ready().await;
    let path = "/api/mesh/dm/changes?since=0&limit=10";
    let key = derive_peer_key(MESH_SECRET.as_bytes(), TEST_PEER);
    let now = now_unix();
    let good = sign_request(&key, "GET", path, now, b"");
    let base = &node.peer_url;
    // The correctly signed request passes.
    let (status, body) = signed_request(
        base,
        "GET",
        path,
        vec![],
        TEST_PEER,
        &now.to_string(),
        &good,
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Well outside the window: the node reads its clock a moment later, maybe a second later.
    let stale = now - 310;
    let future = now + 310;
    let wrong_key = derive_peer_key(b"another secret", TEST_PEER);
    let body_path = "/api/mesh/dm/replicate-ack";
    let signed_body = br#"{"acks":[]}"#.to_vec();
    let body_mac = sign_request(&key, "POST", body_path, now, &signed_body);
    /// (name, method, path, body, X-Peer-Url, X-Peer-Timestamp, X-Peer-HMAC)
    type Case<'a> = (&'a str, &'a str, &'a str, Vec<u8>, String, String, String);
    let cases: Vec<Case> = vec![
        (
            "missing url",
            "GET",
            path,
            vec![],
            String::new(),
            now.to_string(),
            good.clone(),
        ),
        (
            "missing timestamp",
            "GET",
            path,
            vec![],
            TEST_PEER.into(),
            String::new(),
            good.clone(),
        ),
        (
            "missing hmac",
            "GET",
            path,
            vec![],
            TEST_PEER.into(),
            now.to_string(),
            String::new(),
        ),
        (
            "unknown peer",
            "GET",
            path,
            vec![],
            "http://127.0.0.1:10".into(),
            now.to_string(),
            good.clone(),
        ),
        (
            "wrong secret",
            "GET",
            path,
            vec![],
            TEST_PEER.into(),
            now.to_string(),
            sign_request(&wrong_key, "GET", path, now, b""),
        ),
        (
            "stale",
            "GET",
            path,
            vec![],
            TEST_PEER.into(),
            stale.to_string(),
            sign_request(&key, "GET", path, stale, b""),
        ),
        (
            "future",
            "GET",
            path,
            vec![],
            TEST_PEER.into(),
            future.to_string(),
            sign_request(&key, "GET", path, future, b""),
        ),
        (
            "wrong path",
            "GET",
            "/api/mesh/dm/changes?since=5&limit=10",
            vec![],
            TEST_PEER.into(),
            now.to_string(),
            good.clone(),
        ),
        (
            "method not the signed one",
            "POST",
            body_path,
            signed_body.clone(),
            TEST_PEER.into(),
            now.to_string(),
            sign_request(&key, "GET", body_path, now, &signed_body),
        ),
        (
            "tampered body",
            "POST",
            body_path,
            br#"{"acks":[ ]}"#.to_vec(),
            TEST_PEER.into(),
            now.to_string(),
            body_mac.clone(),
        ),
        (
            "garbage hmac",
            "GET",
            path,
            vec![],
            TEST_PEER.into(),
            now.to_string(),
            "zz".repeat(32),
        ),
        (
            "garbage timestamp",
            "GET",
            path,
            vec![],
            TEST_PEER.into(),
            "soon".into(),
            good.clone(),
        ),
    ];
    for (name, method, p, body, url, ts, mac) in cases {
        let (status, reply) = signed_request(base, method, p, body, &url, &ts, &mac).await;
        assert_eq!(status, 403, "{name}: {reply}");
        assert_eq!(reply["error"], "peer_auth", "{name}");
        assert_eq!(reply["detail"], "Invalid or missing peer HMAC", "{name}");
        assert_eq!(reply["ok"], false);
    }
    // The untampered body with the same MAC passes.
    let (status, _) = signed_request(
        base,
        "POST",
        body_path,
        signed_body,
        TEST_PEER,
        &now.to_string(),
        &body_mac,
    )
    .await;
    assert_eq!(status, 200);
    // Size comes before authentication: an oversized body is 413 even without any header.
    let (status, reply) = signed_request(
        base,
        "POST",
        body_path,
        vec![b' '; 1024 * 1024 + 1],
        "",
        "",
        "",
    )
    .await;
    assert_eq!((status, reply["error"].as_str()), (413, Some("too_large")));
    // Client-plane routes do not accept peer credentials as a substitute, and vice versa.
    assert_eq!(
        node.post("/api/mesh/dm/replicate-ack", &json!({"acks": []}))
            .await
            .0,
        403
    );
}

#[actix_rt::test]
async fn inbound_replicas_obey_the_cap_and_every_rule_of_section_4() {
    let node = node_with_test_peer(&[]);
    node.ready().await;
    let (alice, bob, mallory) = (Identity::new(), Identity::new(), Identity::new());
    let env = |id: &str| serde_json::to_value(alice.envelope_to(&bob, id)).unwrap();
    // A hostile relay pushes three of Alice's envelopes: only the cap gets in.
    // Kept: a copy signed a second later would be another envelope with the same id.
    let m1 = env("m1");
    let (status, body) = push_envelopes(&node, vec![m1.clone(), env("m2"), env("m3")]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        statuses(&body),
        ["accepted", "accepted", "rejected:cap_violation"]
    );
    assert_eq!(body["results"][2]["pending"], 2);
    assert_eq!(body["results"][2]["limit"], 2);
    assert_eq!(body["results"][2]["msg_id"], "m3");
    assert_eq!(node.pending_ids(&bob).await, ["m1", "m2"]);
    assert_eq!(
        node.metric("dm_replica_drop_per_sender_cap_total").await,
        1.0
    );
    assert_eq!(node.metric("dm_replica_accepted_total").await, 2.0);

    // Forged, tampered, expired, malformed and duplicate items get per-item answers.
    let mut forged = env("m4");
    forged["sig"] = serde_json::to_value(mallory.envelope_to(&bob, "m4")).unwrap()["sig"].clone();
    let mut tampered = env("m5");
    tampered["ciphertext"] = json!("dGFtcGVyZWQ=");
    let now = now_unix();
    let expired =
        serde_json::to_value(alice.envelope_with(&bob, "m6", now - 100, now - 1, b"x")).unwrap();
    let conflict =
        serde_json::to_value(alice.envelope_with(&bob, "m1", now - 5, now + 100, b"other"))
            .unwrap();
    let (status, body) = push_envelopes(
        &node,
        vec![
            forged,
            tampered,
            expired,
            json!({"msg_id": "junk"}),
            json!(7),
            m1.clone(),
            conflict,
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        statuses(&body),
        [
            "rejected:bad_signature",
            "rejected:bad_signature",
            "rejected:expired",
            "rejected:bad_request",
            "rejected:bad_request",
            "duplicate",
            "rejected:conflict",
        ]
    );
    assert_eq!(node.pending_ids(&bob).await, ["m1", "m2"]);

    // The single form, and a replica of an acknowledged message.
    assert_eq!(node.ack(&bob, &["m1"]).await.0, 200);
    let (status, body) = push(
        &node,
        "/api/mesh/dm/replicate-envelope",
        &json!({"envelope": env("m1")}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(statuses(&body), ["acked"]);
    // A full mailbox refuses replicas too.
    let small = node_with_test_peer(&[("MESH_DM_MAILBOX_LIMIT", "1")]);
    small.ready().await;
    let carol = Identity::new();
    let (_, body) = push_envelopes(
        &small,
        vec![
            env("x1"),
            serde_json::to_value(carol.envelope_to(&bob, "c1")).unwrap(),
        ],
    )
    .await;
    assert_eq!(statuses(&body), ["accepted", "rejected:mailbox_full"]);
    assert_eq!(small.metric("dm_replica_drop_full_total").await, 1.0);
}

#[actix_rt::test]
async fn replicate_envelope_and_ack_shape_limits() {
    let node = node_with_test_peer(&[]);
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let many: Vec<Value> = (0..51)
        .map(|i| serde_json::to_value(alice.envelope_to(&bob, &format!("m{i}"))).unwrap())
        .collect();
    let (status, body) = push_envelopes(&node, many).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, body) = push(
        &node,
        "/api/mesh/dm/replicate-envelope",
        &json!({"nothing": 1}),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, body) = peer_request(
        &node.peer_url,
        "POST",
        "/api/mesh/dm/replicate-envelope",
        b"{not json".to_vec(),
        TEST_PEER,
        MESH_SECRET,
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    // One envelope form: at most 64 KiB.
    let padded = json!({"envelope": serde_json::to_value(alice.envelope_to(&bob, "big")).unwrap(), "pad": "x".repeat(70 * 1024)});
    let (status, body) = push(&node, "/api/mesh/dm/replicate-envelope", &padded).await;
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));
    let acks: Vec<Value> = (0..51).map(|_| bob.ack(&["x"])).collect();
    let (status, _) = push(
        &node,
        "/api/mesh/dm/replicate-ack",
        &json!({ "acks": acks }),
    )
    .await;
    assert_eq!(status, 400);
}

#[actix_rt::test]
async fn replicated_acks_are_verified_but_may_be_old() {
    let node = node_with_test_peer(&[("MESH_DM_MAX_TTL_S", "3600")]);
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    assert_eq!(node.send(&alice.envelope_to(&bob, "m2")).await.0, 200);
    let now = now_unix();
    let old_but_fine = bob.ack_object_at(&["m1"], now - 1800);
    let too_old = bob.ack_object_at(&["m2"], now - 3601);
    let from_the_future = bob.ack_object_at(&["m2"], now + 310);
    let mut forged = serde_json::to_value(bob.ack_object_at(&["m2"], now)).unwrap();
    forged["msg_ids"] = json!(["m2", "m3"]);
    let acks = json!({"acks": [old_but_fine, too_old, from_the_future, forged, {"v": 2}]});
    let (status, body) = push(&node, "/api/mesh/dm/replicate-ack", &acks).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        statuses(&body),
        [
            "applied",
            "rejected:stale",
            "rejected:stale",
            "rejected:bad_signature",
            "rejected:bad_request"
        ]
    );
    assert_eq!(body["results"][0]["removed"], 1);
    assert_eq!(node.pending_ids(&bob).await, ["m2"]);
    // The quota is free again for Alice.
    assert_eq!(node.send(&alice.envelope_to(&bob, "m3")).await.0, 200);
}

#[actix_rt::test]
async fn change_feed_lists_current_state_in_seq_order_and_pages() {
    let node = node_with_test_peer(&[]);
    node.ready().await;
    let (alice, bob, carol) = (Identity::new(), Identity::new(), Identity::new());
    for (sender, id) in [(&alice, "a1"), (&alice, "a2"), (&carol, "c1")] {
        assert_eq!(node.send(&sender.envelope_to(&bob, id)).await.0, 200);
    }
    assert_eq!(node.ack(&bob, &["a1"]).await.0, 200);
    let peer_url = node.peer_url.clone();
    let feed = |since: u64, limit: u64| {
        let node_url = peer_url.clone();
        async move {
            let path = format!("/api/mesh/dm/changes?since={since}&limit={limit}");
            peer_request(&node_url, "GET", &path, vec![], TEST_PEER, MESH_SECRET).await
        }
    };
    let (status, body) = feed(0, 1000).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    let epoch = body["epoch"].as_str().unwrap().to_string();
    assert!(!epoch.is_empty());
    let changes = body["changes"].as_array().unwrap();
    // a1 was acknowledged: gone; its ack object is live.
    let kinds: Vec<String> = changes
        .iter()
        .map(|c| match (c.get("envelope"), c.get("ack")) {
            (Some(e), None) => e["msg_id"].as_str().unwrap().to_string(),
            (None, Some(a)) => format!("ack:{}", a["msg_ids"][0].as_str().unwrap()),
            _ => panic!("bad change {c}"),
        })
        .collect();
    assert_eq!(kinds, ["a2", "c1", "ack:a1"]);
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(body["next"].as_u64(), seqs.last().copied());
    assert_eq!(body["more"], false);
    // Paging by limit, and nothing after the end.
    let (_, first) = feed(0, 2).await;
    assert_eq!(first["changes"].as_array().unwrap().len(), 2);
    assert_eq!(first["more"], true);
    let (_, rest) = feed(first["next"].as_u64().unwrap(), 2).await;
    assert_eq!(rest["changes"].as_array().unwrap().len(), 1);
    assert_eq!(rest["more"], false);
    let (_, after) = feed(seqs[2], 10).await;
    assert_eq!(after["changes"].as_array().unwrap().len(), 0);
    assert_eq!(after["next"].as_u64(), Some(seqs[2]));
    for bad in ["limit=0", "limit=1001", "since=-1", "since=x"] {
        let path = format!("/api/mesh/dm/changes?{bad}");
        let (status, body) =
            peer_request(&node.peer_url, "GET", &path, vec![], TEST_PEER, MESH_SECRET).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    // The epoch belongs to the store: the same after a restart.
    let mut node = node;
    node.restart();
    let _ = &node;
    node.ready().await;
    let (_, again) = feed(0, 1000).await;
    assert_eq!(again["epoch"].as_str(), Some(epoch.as_str()));
}

#[actix_rt::test]
async fn replica_refused_for_cap_is_accepted_once_its_freeing_ack_arrives_even_across_a_restart() {
    let fake = FakePeer::start();
    let mut node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &fake.url)
            .env("MESH_DM_SYNC_INTERVAL_S", "0.1"),
    );
    node.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    // Alice sent m1 and m2 here; elsewhere Bob read m1 and acknowledged it, and Alice sent m3.
    // The peer's feed offers m3 ahead of the ack that frees its quota.
    assert_eq!(node.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    assert_eq!(node.send(&alice.envelope_to(&bob, "m2")).await.0, 200);
    fake.append(
        "envelope",
        serde_json::to_value(alice.envelope_to(&bob, "m3")).unwrap(),
    );
    wait_for(Duration::from_secs(10), || async {
        node.metric("dm_replica_drop_per_sender_cap_total").await >= 1.0
    })
    .await;
    assert_eq!(
        node.pending_ids(&bob).await,
        ["m1", "m2"],
        "the cap holds meanwhile"
    );
    // The node dies before the ack comes; its cursor is already past m3.
    node.kill9();
    node.restart();
    node.ready().await;
    fake.append("ack", bob.ack(&["m1"]));
    wait_for_ids(&node, &bob, &["m2", "m3"]).await;
    // m3 is a real pending envelope now: durable, and counted against the cap.
    let (status, body) = node.send(&alice.envelope_to(&bob, "m4")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("cap_violation"))
    );
    node.kill9();
    node.restart();
    node.ready().await;
    assert_eq!(node.pending_ids(&bob).await, ["m2", "m3"]);
}

#[actix_rt::test]
async fn a_new_feed_epoch_is_read_from_zero() {
    let fake = FakePeer::start();
    let node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &fake.url)
            .env("MESH_DM_SYNC_INTERVAL_S", "0.1"),
    );
    node.ready().await;
    let (alice, bob, carol) = (Identity::new(), Identity::new(), Identity::new());
    for id in ["m1", "m2"] {
        fake.append(
            "envelope",
            serde_json::to_value(alice.envelope_to(&bob, id)).unwrap(),
        );
    }
    wait_for_ids(&node, &bob, &["m1", "m2"]).await;
    // The peer's store was created anew: its seqs start again at 1, below our cursor.
    fake.new_epoch("epoch-2");
    fake.append(
        "envelope",
        serde_json::to_value(carol.envelope_to(&bob, "c1")).unwrap(),
    );
    wait_for_id_set(&node, &bob, &["m1", "m2", "c1"]).await;
    // Invalid entries in a feed are skipped, the rest applied.
    fake.append("envelope", json!({"msg_id": "bad"}));
    let mut forged = serde_json::to_value(carol.envelope_to(&bob, "c2")).unwrap();
    forged["created_at"] = json!(now_unix() - 10);
    fake.append("envelope", forged);
    fake.append("ack", bob.ack(&["m1"]));
    wait_for_id_set(&node, &bob, &["m2", "c1"]).await;
}

#[actix_rt::test]
async fn a_feed_reader_following_its_cursor_during_concurrent_deposits_misses_nothing() {
    let node = node_with_test_peer(&[]);
    node.ready().await;
    let sender_count = 150;
    let owners: Vec<Identity> = (0..10).map(|_| Identity::new()).collect();
    let senders: Vec<Identity> = (0..sender_count).map(|_| Identity::new()).collect();
    let envelopes: Vec<_> = senders
        .iter()
        .enumerate()
        .map(|(i, s)| s.envelope_to(&owners[i % owners.len()], &format!("f{i}")))
        .collect();
    let url = node.url.clone();
    let deposits: Vec<_> = envelopes
        .into_iter()
        .map(|envelope| {
            let url = url.clone();
            actix_rt::spawn(async move {
                let body = serde_json::to_vec(&envelope).unwrap();
                let (status, _) = post_raw(&url, "/api/mesh/dm/send", body).await;
                (status, envelope.msg_id.as_str().to_string())
            })
        })
        .collect();
    // Meanwhile, read the feed from a cursor, small pages, as a puller does.
    let mut seen = std::collections::BTreeSet::new();
    let mut since = 0u64;
    let mut last_seq = 0u64;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while seen.len() < sender_count {
        assert!(
            std::time::Instant::now() < deadline,
            "saw {} of {sender_count}",
            seen.len()
        );
        let path = format!("/api/mesh/dm/changes?since={since}&limit=7");
        let (status, body) =
            peer_request(&node.peer_url, "GET", &path, vec![], TEST_PEER, MESH_SECRET).await;
        assert_eq!(status, 200, "{body}");
        for change in body["changes"].as_array().unwrap() {
            let seq = change["seq"].as_u64().unwrap();
            assert!(seq > last_seq, "seqs only grow: {seq} after {last_seq}");
            last_seq = seq;
            seen.insert(change["envelope"]["msg_id"].as_str().unwrap().to_string());
        }
        since = body["next"].as_u64().unwrap();
    }
    let mut accepted = std::collections::BTreeSet::new();
    for deposit in deposits {
        let (status, id) = deposit.await.unwrap();
        assert_eq!(status, 200);
        accepted.insert(id);
    }
    assert_eq!(
        seen, accepted,
        "every accepted envelope appeared behind the cursor"
    );
}
