//! SPEC §4 (the mailbox rules, in their order) and §6.1–6.3 (deposit, poll, ack) through HTTP
//! on a real node: tombstones, duplicates, conflicts, full mailboxes, the per-sender cap, quota
//! freed by ack and by expiry, poll order/limit/pending/has_more, nonces and freshness.

mod common;

use common::{Identity, Node, NodeConfig, assert_deposit, assert_error, wait_for};
use dmrelay::protocol::{now_unix, random_hex};
use serde_json::Value;
use std::time::Duration;

const SEND: &str = "/api/mesh/dm/send";
const POLL: &str = "/api/mesh/dm/poll";
const ACK: &str = "/api/mesh/dm/ack";

async fn start(config: NodeConfig) -> Node {
    let node = Node::start(config);
    node.ready().await;
    node
}

fn ids_of(body: &Value) -> Vec<String> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("no messages in {body}"))
        .iter()
        .map(|m| m["msg_id"].as_str().unwrap().to_string())
        .collect()
}

// ----- Rule 1: tombstones ---------------------------------------------------------------------

#[actix_rt::test]
async fn rule_1_a_redeposit_after_ack_is_acked_and_not_stored() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let envelope = alice.envelope_to(&bob, "m1");
    assert_deposit("deposit", &node.send(&envelope).await, "m1", "accepted");
    let (status, body) = node.ack(&bob, &["m1"]).await;
    assert_eq!((status, &body["removed"]), (200, &Value::from(1)), "{body}");

    assert_deposit("retry", &node.send(&envelope).await, "m1", "acked");
    assert_deposit("retry again", &node.send(&envelope).await, "m1", "acked");
    assert!(node.pending_ids(&bob).await.is_empty());
}

#[actix_rt::test]
async fn rule_1_an_id_acked_before_it_was_ever_seen_is_acked_on_arrival() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let (status, body) = node.ack(&bob, &["early"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["removed"].as_u64(), body["unknown"].as_u64()),
        (Some(0), Some(1))
    );

    let late = alice.envelope_to(&bob, "early");
    assert_deposit("late arrival", &node.send(&late).await, "early", "acked");
    assert!(node.pending_ids(&bob).await.is_empty());
    // The tombstone did not take a slot: Alice still has her whole quota of 2.
    for id in ["x1", "x2"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
}

#[actix_rt::test]
async fn rule_1_a_late_retry_after_ack_does_not_resurrect_nor_take_quota() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let first = alice.envelope_to(&bob, "m1");
    let second = alice.envelope_to(&bob, "m2");
    assert_deposit("m1", &node.send(&first).await, "m1", "accepted");
    assert_deposit("m2", &node.send(&second).await, "m2", "accepted");
    assert_eq!(node.ack(&bob, &["m1"]).await.0, 200);

    // A retry of m1 (even a re-signed one with another signature) is `acked`, not `conflict`.
    assert_deposit("retry", &node.send(&first).await, "m1", "acked");
    let resigned = alice.envelope_with(&bob, "m1", now_unix(), now_unix() + 60, b"other bytes");
    assert_deposit(
        "re-signed retry",
        &node.send(&resigned).await,
        "m1",
        "acked",
    );
    assert_eq!(node.pending_ids(&bob).await, ["m2"]);
    // The freed slot is still free: one more from Alice fits, the next does not.
    let third = alice.envelope_to(&bob, "m3");
    assert_deposit("m3", &node.send(&third).await, "m3", "accepted");
    assert_error(
        "m4",
        &node.send(&alice.envelope_to(&bob, "m4")).await,
        429,
        "cap_violation",
    );
}

// ----- Rule 2: duplicates and conflicts -------------------------------------------------------

#[actix_rt::test]
async fn rule_2_the_same_envelope_again_is_duplicate_and_stored_once() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let envelope = alice.envelope_to(&bob, "m1");
    assert_deposit("first", &node.send(&envelope).await, "m1", "accepted");
    for i in 0..3 {
        assert_deposit(
            &format!("copy {i}"),
            &node.send(&envelope).await,
            "m1",
            "duplicate",
        );
    }
    let (status, body) = node.poll(&bob, 100).await;
    assert_eq!(status, 200);
    assert_eq!(ids_of(&body), ["m1"]);
    assert_eq!(body["pending"], 1);
    // A duplicate takes no quota: Alice's second slot is still free.
    assert_deposit(
        "m2",
        &node.send(&alice.envelope_to(&bob, "m2")).await,
        "m2",
        "accepted",
    );
}

#[actix_rt::test]
async fn rule_2_the_same_msg_id_with_another_signature_is_a_conflict() {
    let node = start(NodeConfig::default()).await;
    let (alice, mallory, bob) = (Identity::new(), Identity::new(), Identity::new());
    let now = now_unix();
    let original = alice.envelope_with(&bob, "m1", now, now + 3600, b"original");
    assert_deposit("original", &node.send(&original).await, "m1", "accepted");

    let other_bytes = alice.envelope_with(&bob, "m1", now, now + 3600, b"changed");
    let got = node.send(&other_bytes).await;
    assert_error("same sender, other bytes", &got, 409, "conflict");
    let other_sender = mallory.envelope_with(&bob, "m1", now, now + 3600, b"original");
    assert_error(
        "other sender, same id",
        &node.send(&other_sender).await,
        409,
        "conflict",
    );

    let messages = node.pending_messages(&bob).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(
        messages[0],
        serde_json::to_value(&original).unwrap(),
        "the first envelope is kept unchanged"
    );
}

// ----- Rules 3 and 4: full mailbox, per-sender cap --------------------------------------------

#[actix_rt::test]
async fn rule_3_a_mailbox_holding_mailbox_limit_envelopes_is_full_for_every_sender() {
    let node = start(NodeConfig::default().env("MESH_DM_MAILBOX_LIMIT", 3)).await;
    let bob = Identity::new();
    let senders: Vec<Identity> = (0..4).map(|_| Identity::new()).collect();
    for (i, sender) in senders.iter().take(3).enumerate() {
        let id = format!("s{i}");
        assert_deposit(
            &id,
            &node.send(&sender.envelope_to(&bob, &id)).await,
            &id,
            "accepted",
        );
    }
    // A fresh sender with an empty quota, and an old one with quota left: both refused.
    for (i, sender) in [&senders[3], &senders[0]].into_iter().enumerate() {
        let got = node
            .send(&sender.envelope_to(&bob, &format!("late{i}")))
            .await;
        assert_error(&format!("late{i}"), &got, 429, "mailbox_full");
    }
    assert_eq!(node.pending_ids(&bob).await.len(), 3);
    // Another mailbox is not full.
    let carol = Identity::new();
    assert_deposit(
        "other mailbox",
        &node.send(&senders[3].envelope_to(&carol, "c")).await,
        "c",
        "accepted",
    );
    // An ack makes room again.
    assert_eq!(node.ack(&bob, &["s1"]).await.0, 200);
    assert_deposit(
        "after ack",
        &node.send(&senders[3].envelope_to(&bob, "late0")).await,
        "late0",
        "accepted",
    );
}

#[actix_rt::test]
async fn rule_4_the_third_pending_envelope_from_one_sender_is_a_cap_violation() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    for id in ["m1", "m2"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
    let got = node.send(&alice.envelope_to(&bob, "m3")).await;
    assert_error("m3", &got, 429, "cap_violation");
    let body = &got.1;
    assert_eq!(body["pending"], 2, "{body}");
    assert_eq!(body["limit"], 2, "{body}");
    assert_eq!(
        body["detail"],
        "Recipient already has 2 unread messages from you. Wait for them to read your messages before sending more.",
        "the detail sentence of SPEC §6.1"
    );
    assert_eq!(node.pending_ids(&bob).await, ["m1", "m2"]);
    assert_eq!(
        node.metric("dm_deposit_total{status=\"cap_violation\"}")
            .await,
        1.0
    );
    assert_eq!(node.metric("dm_drop_per_sender_cap_total").await, 1.0);
}

#[actix_rt::test]
async fn rule_4_the_cap_follows_the_configured_limit() {
    let node = start(NodeConfig::default().env("MESH_DM_PENDING_PER_SENDER_LIMIT", 3)).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    for id in ["m1", "m2", "m3"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
    let got = node.send(&alice.envelope_to(&bob, "m4")).await;
    assert_error("m4", &got, 429, "cap_violation");
    assert_eq!(
        (got.1["pending"].as_u64(), got.1["limit"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(
        got.1["detail"],
        "Recipient already has 3 unread messages from you. Wait for them to read your messages before sending more."
    );
}

#[actix_rt::test]
async fn rules_apply_in_order_tombstone_then_duplicate_then_full_then_cap() {
    // Alice at her cap (2) fills the mailbox (2): every rule can fire at once.
    let node = start(NodeConfig::default().env("MESH_DM_MAILBOX_LIMIT", 2)).await;
    let (alice, carol, bob) = (Identity::new(), Identity::new(), Identity::new());
    let a1 = alice.envelope_to(&bob, "a1");
    let a2 = alice.envelope_to(&bob, "a2");
    assert_deposit("a1", &node.send(&a1).await, "a1", "accepted");
    assert_deposit("a2", &node.send(&a2).await, "a2", "accepted");

    // Rule 2 before 3 and 4: a copy of a pending envelope is still a duplicate.
    assert_deposit("a1 copy", &node.send(&a1).await, "a1", "duplicate");
    let a1_twin = alice.envelope_with(&bob, "a1", now_unix(), now_unix() + 60, b"twin");
    assert_error("a1 twin", &node.send(&a1_twin).await, 409, "conflict");
    // Rule 3 before 4: Alice is at her cap, but the mailbox is full first.
    let got = node.send(&alice.envelope_to(&bob, "a3")).await;
    assert_error("a3", &got, 429, "mailbox_full");
    assert_error(
        "carol",
        &node.send(&carol.envelope_to(&bob, "c1")).await,
        429,
        "mailbox_full",
    );

    // Rule 1 before 2, 3 and 4: after acking a1 and refilling, a1 is `acked`.
    assert_eq!(node.ack(&bob, &["a1"]).await.0, 200);
    assert_deposit(
        "a3",
        &node.send(&alice.envelope_to(&bob, "a3")).await,
        "a3",
        "accepted",
    );
    assert_deposit("a1 after ack", &node.send(&a1).await, "a1", "acked");
    assert_deposit(
        "a1 twin after ack",
        &node.send(&a1_twin).await,
        "a1",
        "acked",
    );
    assert_deposit("a2 still pending", &node.send(&a2).await, "a2", "duplicate");

    // With room again, other senders get in until the mailbox is full once more.
    assert_eq!(node.ack(&bob, &["a2"]).await.0, 200);
    assert_eq!(node.pending_ids(&bob).await, ["a3"]);
    assert_deposit(
        "c1",
        &node.send(&carol.envelope_to(&bob, "c1")).await,
        "c1",
        "accepted",
    );
    assert_error(
        "a4 full again",
        &node.send(&alice.envelope_to(&bob, "a4")).await,
        429,
        "mailbox_full",
    );
    let mut ids = node.pending_ids(&bob).await;
    ids.sort();
    assert_eq!(ids, ["a3", "c1"]);
}

#[actix_rt::test]
async fn rule_4_the_cap_counts_per_mailbox_and_sender_independently() {
    let node = start(NodeConfig::default()).await;
    let (alice, carol, bob, dave) = (
        Identity::new(),
        Identity::new(),
        Identity::new(),
        Identity::new(),
    );
    for id in ["a1", "a2"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
    assert_error(
        "a3",
        &node.send(&alice.envelope_to(&bob, "a3")).await,
        429,
        "cap_violation",
    );
    // Another sender to the same mailbox, and the same sender to another mailbox, are unaffected.
    for id in ["c1", "c2"] {
        assert_deposit(
            id,
            &node.send(&carol.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
    for id in ["d1", "d2"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&dave, id)).await,
            id,
            "accepted",
        );
    }
    // The same msg_id in another mailbox is another message.
    assert_deposit(
        "a1 to dave",
        &node.send(&carol.envelope_to(&dave, "a1")).await,
        "a1",
        "accepted",
    );
    assert_eq!(node.pending_ids(&bob).await, ["a1", "a2", "c1", "c2"]);
    // Sorted: poll order is (created_at, msg_id), and "a1" was signed after d1 and d2, so a second
    // boundary between them moves it after d1 (the order itself is checked by the poll tests).
    let mut to_dave = node.pending_ids(&dave).await;
    to_dave.sort();
    assert_eq!(to_dave, ["a1", "d1", "d2"]);
}

#[actix_rt::test]
async fn an_ack_frees_the_senders_quota() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    for id in ["m1", "m2"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
    assert_error(
        "m3",
        &node.send(&alice.envelope_to(&bob, "m3")).await,
        429,
        "cap_violation",
    );
    assert_eq!(node.ack(&bob, &["m1"]).await.0, 200);
    assert_deposit(
        "m3",
        &node.send(&alice.envelope_to(&bob, "m3")).await,
        "m3",
        "accepted",
    );
    assert_error(
        "m4",
        &node.send(&alice.envelope_to(&bob, "m4")).await,
        429,
        "cap_violation",
    );
    assert_eq!(node.ack(&bob, &["m2", "m3"]).await.0, 200);
    for id in ["m4", "m5"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
    assert_eq!(node.pending_ids(&bob).await, ["m4", "m5"]);
}

#[actix_rt::test]
async fn expiry_frees_the_senders_quota_and_removes_the_envelopes() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let now = now_unix();
    for id in ["short1", "short2"] {
        let envelope = alice.envelope_with(&bob, id, now, now + 2, b"soon gone");
        assert_deposit(id, &node.send(&envelope).await, id, "accepted");
    }
    let next = alice.envelope_to(&bob, "next");
    assert_error("next", &node.send(&next).await, 429, "cap_violation");
    let (node_ref, next_ref) = (&node, &next);
    wait_for(Duration::from_secs(8), || async move {
        let (status, body) = node_ref.send(next_ref).await;
        match status {
            200 => {
                assert_eq!(body["status"], "accepted", "{body}");
                true
            }
            429 => {
                assert_eq!(body["error"], "cap_violation", "{body}");
                false
            }
            other => panic!("unexpected {other} {body}"),
        }
    })
    .await;
    assert_eq!(node.pending_ids(&bob).await, ["next"]);
}

// ----- §6.2 poll ------------------------------------------------------------------------------

#[actix_rt::test]
async fn poll_is_oldest_first_by_created_at_then_msg_id() {
    let node = start(NodeConfig::default()).await;
    let bob = Identity::new();
    let senders: Vec<Identity> = (0..4).map(|_| Identity::new()).collect();
    let now = now_unix();
    // (sender, msg_id, created_at), deposited out of order.
    let plan = [
        (0, "b", now - 10),
        (1, "c", now - 5),
        (2, "a", now - 10),
        (3, "z", now - 20),
        (0, "B", now - 10),
        (1, "a0", now),
    ];
    for (sender, id, created_at) in plan {
        let envelope =
            senders[sender].envelope_with(&bob, id, created_at, created_at + 3600, id.as_bytes());
        assert_deposit(id, &node.send(&envelope).await, id, "accepted");
    }
    // Ties on created_at are broken by msg_id in byte order ("B" < "a" < "b").
    assert_eq!(
        node.pending_ids(&bob).await,
        ["z", "B", "a", "b", "c", "a0"]
    );
}

#[actix_rt::test]
async fn poll_limit_pending_and_has_more() {
    let node = start(NodeConfig::default()).await;
    let bob = Identity::new();
    let senders: Vec<Identity> = (0..5).map(|_| Identity::new()).collect();
    let now = now_unix();
    let mut expected = Vec::new();
    for i in 0..10u64 {
        let id = format!("m{i:02}");
        let envelope =
            senders[(i / 2) as usize].envelope_with(&bob, &id, now - 100 + i, now + 3600, b"x");
        assert_deposit(&id, &node.send(&envelope).await, &id, "accepted");
        expected.push(id);
    }

    // limit 0: no messages, but the count.
    let (status, body) = node.poll(&bob, 0).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(ids_of(&body), Vec::<String>::new());
    assert_eq!(
        (body["pending"].as_u64(), body["has_more"].as_bool()),
        (Some(10), Some(true))
    );

    // No limit: the default, 8 (and the signature covers 8).
    let (status, body) = node
        .post(
            POLL,
            &bob.poll_with(now_unix(), &random_hex(16).unwrap(), None),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids_of(&body), expected[..8]);
    assert_eq!(
        (body["pending"].as_u64(), body["has_more"].as_bool()),
        (Some(10), Some(true))
    );

    // A limit smaller than the mailbox.
    let (status, body) = node.poll(&bob, 3).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ids_of(&body), expected[..3]);
    assert_eq!(
        (body["pending"].as_u64(), body["has_more"].as_bool()),
        (Some(10), Some(true))
    );

    // limit 10 (exactly) and 100 (the maximum): everything, no more.
    for limit in [10, 100] {
        let (status, body) = node.poll(&bob, limit).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(ids_of(&body), expected, "limit {limit}");
        assert_eq!(
            (body["pending"].as_u64(), body["has_more"].as_bool()),
            (Some(10), Some(false))
        );
    }

    // 101 is refused.
    let got = node.post(POLL, &bob.poll(101)).await;
    assert_error("limit 101", &got, 400, "bad_request");

    // An empty mailbox.
    let empty = Identity::new();
    let (status, body) = node.poll(&empty, 8).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], serde_json::json!([]));
    assert_eq!(
        (body["pending"].as_u64(), body["has_more"].as_bool()),
        (Some(0), Some(false))
    );
}

#[actix_rt::test]
async fn poll_without_limit_is_signed_over_the_default_of_8() {
    let node = start(NodeConfig::default()).await;
    let bob = Identity::new();
    // Signed over 100 but sent without `limit`: the node checks the signature over 8.
    let mut request = bob.poll_with(now_unix(), &random_hex(16).unwrap(), Some(100));
    request.as_object_mut().unwrap().remove("limit");
    assert_error(
        "signed 100, sent none",
        &node.post(POLL, &request).await,
        401,
        "bad_signature",
    );
}

#[actix_rt::test]
async fn poll_is_non_destructive() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    for id in ["m1", "m2"] {
        assert_deposit(
            id,
            &node.send(&alice.envelope_to(&bob, id)).await,
            id,
            "accepted",
        );
    }
    let (_, first) = node.poll(&bob, 100).await;
    let (_, second) = node.poll(&bob, 100).await;
    assert_eq!(ids_of(&first), ["m1", "m2"]);
    assert_eq!(first, second, "two polls see the same thing");
    // Polling does not free the quota either.
    assert_error(
        "m3",
        &node.send(&alice.envelope_to(&bob, "m3")).await,
        429,
        "cap_violation",
    );
}

#[actix_rt::test]
async fn poll_returns_envelopes_exactly_as_deposited() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let now = now_unix();
    let envelope = alice.envelope_with(&bob, "exact", now - 7, now + 999, &[0u8, 255, 1, 2, 3]);
    assert_deposit("exact", &node.send(&envelope).await, "exact", "accepted");
    let messages = node.pending_messages(&bob).await;
    assert_eq!(messages, [serde_json::to_value(&envelope).unwrap()]);
}

#[actix_rt::test]
async fn a_poll_nonce_is_single_use_per_mailbox() {
    let node = start(NodeConfig::default()).await;
    let (bob, carol) = (Identity::new(), Identity::new());
    let nonce = random_hex(16).unwrap();
    let request = bob.poll_with(now_unix(), &nonce, Some(8));
    assert_eq!(node.post(POLL, &request).await.0, 200);
    assert_error(
        "the same request again",
        &node.post(POLL, &request).await,
        401,
        "replay",
    );
    // Re-signed with another ts and limit, the nonce is still spent.
    let resigned = bob.poll_with(now_unix() - 5, &nonce, Some(3));
    assert_error(
        "same nonce, re-signed",
        &node.post(POLL, &resigned).await,
        401,
        "replay",
    );
    // The nonce is per mailbox: Carol may use the same one.
    let (status, body) = node
        .post(POLL, &carol.poll_with(now_unix(), &nonce, Some(8)))
        .await;
    assert_eq!(status, 200, "{body}");
    // A fresh nonce works.
    assert_eq!(node.poll(&bob, 8).await.0, 200);
}

#[actix_rt::test]
async fn signed_requests_older_or_newer_than_skew_are_stale() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_deposit(
        "m1",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    let now = now_unix();
    // 301 s in the past is always stale; in the future a few seconds more are used so that the
    // node's clock ticking between signing and checking cannot bring it back within 300 s.
    for ts in [now - 301, now + 303, now - 100_000, 0, u64::MAX] {
        let poll = bob.poll_with(ts, &random_hex(16).unwrap(), Some(8));
        assert_error(
            &format!("poll ts {ts}"),
            &node.post(POLL, &poll).await,
            401,
            "stale",
        );
        let ack = bob.ack_at(&["m1"], ts);
        assert_error(
            &format!("ack ts {ts}"),
            &node.post(ACK, &ack).await,
            401,
            "stale",
        );
    }
    // Within the window (with slack for the clock ticking meanwhile) both work.
    let now = now_unix();
    let poll = bob.poll_with(now - 297, &random_hex(16).unwrap(), Some(8));
    assert_eq!(node.post(POLL, &poll).await.0, 200);
    let poll = bob.poll_with(now + 298, &random_hex(16).unwrap(), Some(8));
    assert_eq!(node.post(POLL, &poll).await.0, 200);
    // The stale acks removed nothing.
    assert_eq!(node.pending_ids(&bob).await, ["m1"]);
    let (status, body) = node.post(ACK, &bob.ack_at(&["m1"], now - 297)).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");
}

// ----- §6.3 ack -------------------------------------------------------------------------------

#[actix_rt::test]
async fn ack_reports_removed_and_unknown_ids() {
    let node = start(NodeConfig::default()).await;
    let (alice, carol, bob) = (Identity::new(), Identity::new(), Identity::new());
    assert_deposit(
        "m1",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    assert_deposit(
        "m2",
        &node.send(&carol.envelope_to(&bob, "m2")).await,
        "m2",
        "accepted",
    );
    assert_deposit(
        "m3",
        &node.send(&carol.envelope_to(&bob, "m3")).await,
        "m3",
        "accepted",
    );

    let (status, body) = node.ack(&bob, &["m1", "m2", "never-seen"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(
        (body["removed"].as_u64(), body["unknown"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(node.pending_ids(&bob).await, ["m3"]);

    // Acking again removes nothing: every id is unknown now.
    let (status, body) = node.ack(&bob, &["m1", "m2"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["removed"].as_u64(), body["unknown"].as_u64()),
        (Some(0), Some(2))
    );

    // An ack only touches its own mailbox: Dave's m3 is not Bob's m3.
    let dave = Identity::new();
    assert_deposit(
        "dave m3",
        &node.send(&alice.envelope_to(&dave, "m3")).await,
        "m3",
        "accepted",
    );
    let (_, body) = node.ack(&bob, &["m3"]).await;
    assert_eq!(
        (body["removed"].as_u64(), body["unknown"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(node.pending_ids(&dave).await, ["m3"]);
    assert!(node.pending_ids(&bob).await.is_empty());
}

#[actix_rt::test]
async fn an_ack_signed_by_someone_else_removes_nothing() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob, mallory) = (Identity::new(), Identity::new(), Identity::new());
    assert_deposit(
        "m1",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    let mut forged = mallory.ack(&["m1"]);
    forged["mailbox"] = Value::from(bob.hex());
    assert_error(
        "forged ack",
        &node.post(ACK, &forged).await,
        401,
        "bad_signature",
    );
    let mut forged_poll = mallory.poll(8);
    forged_poll["mailbox"] = Value::from(bob.hex());
    assert_error(
        "forged poll",
        &node.post(POLL, &forged_poll).await,
        401,
        "bad_signature",
    );
    assert_eq!(node.pending_ids(&bob).await, ["m1"]);
}

// ----- Concurrency ----------------------------------------------------------------------------

#[actix_rt::test]
async fn concurrent_deposits_from_one_sender_never_exceed_the_cap() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let bodies: Vec<Vec<u8>> = (0..20)
        .map(|i| serde_json::to_vec(&alice.envelope_to(&bob, &format!("p{i:02}"))).unwrap())
        .collect();
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let url = node.url.clone();
            actix_rt::spawn(async move { common::post_raw(&url, SEND, body).await })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut capped = 0;
    for task in tasks {
        let (status, body) = task.await.unwrap();
        match (status, body["status"].as_str(), body["error"].as_str()) {
            (200, Some("accepted"), _) => {
                accepted.push(body["msg_id"].as_str().unwrap().to_string())
            }
            (429, _, Some("cap_violation")) => {
                assert_eq!(
                    (body["pending"].as_u64(), body["limit"].as_u64()),
                    (Some(2), Some(2)),
                    "{body}"
                );
                capped += 1;
            }
            _ => panic!("unexpected reply {status} {body}"),
        }
    }
    assert_eq!(
        accepted.len(),
        2,
        "exactly the cap is accepted: {accepted:?}"
    );
    assert_eq!(capped, 18);
    accepted.sort();
    assert_eq!(node.pending_ids(&bob).await, accepted);
}

#[actix_rt::test]
async fn concurrent_copies_of_one_envelope_are_stored_once() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let body = serde_json::to_vec(&alice.envelope_to(&bob, "same")).unwrap();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (url, body) = (node.url.clone(), body.clone());
            actix_rt::spawn(async move { common::post_raw(&url, SEND, body).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200, "{body}");
        statuses.push(body["status"].as_str().unwrap().to_string());
    }
    assert_eq!(
        statuses.iter().filter(|s| *s == "accepted").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "duplicate").count(),
        19,
        "{statuses:?}"
    );
    let (_, poll) = node.poll(&bob, 100).await;
    assert_eq!(ids_of(&poll), ["same"]);
    assert_eq!(poll["pending"], 1);
}

#[actix_rt::test]
async fn a_tombstone_for_an_unknown_id_lasts_until_ts_plus_max_ttl() {
    let node = start(NodeConfig::default().env("MESH_DM_MAX_TTL_S", 2)).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let (status, body) = node.post(ACK, &bob.ack_at(&["soon"], now_unix())).await;
    assert_eq!((status, body["unknown"].as_u64()), (200, Some(1)), "{body}");
    let fresh = || {
        let now = now_unix();
        alice.envelope_with(&bob, "soon", now, now + 2, b"x")
    };
    assert_deposit(
        "while tombstoned",
        &node.send(&fresh()).await,
        "soon",
        "acked",
    );
    // Once ts + max_ttl has passed the tombstone is gone and the id is free again.
    let (node_ref, fresh_ref) = (&node, &fresh);
    wait_for(Duration::from_secs(8), || async move {
        let (status, body) = node_ref.send(&fresh_ref()).await;
        assert_eq!(status, 200, "{body}");
        match body["status"].as_str() {
            Some("acked") => false,
            Some("accepted") => true,
            other => panic!("unexpected {other:?} in {body}"),
        }
    })
    .await;
    assert_eq!(node.pending_ids(&bob).await, ["soon"]);
}

// ----- §6.4 service endpoints -------------------------------------------------------------------

#[actix_rt::test]
async fn health_names_the_node_and_its_version() {
    let node = start(NodeConfig::default()).await;
    let (status, body) = node.get("/health").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    assert_eq!(body["node"], node.peer_url.as_str(), "the node's self_url");
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
}

#[actix_rt::test]
async fn metrics_count_deposits_by_outcome_acks_and_pending_envelopes() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let m1 = alice.envelope_to(&bob, "m1");
    node.send(&m1).await;
    node.send(&m1).await;
    node.send(&alice.envelope_to(&bob, "m2")).await;
    node.send(&alice.envelope_to(&bob, "m3")).await;
    node.send(&alice.envelope_to(&bob, "m4")).await;
    let conflicting = alice.envelope_with(&bob, "m1", now_unix(), now_unix() + 60, b"other");
    node.send(&conflicting).await;
    assert_eq!(node.metric("dm_pending_envelopes").await, 2.0);
    node.ack(&bob, &["m1"]).await;
    node.send(&m1).await;
    node.post_bytes(SEND, b"{".to_vec()).await;

    let (status, text) = node.get("/metrics").await;
    assert_eq!(status, 200);
    let text = text.as_str().expect("Prometheus text, not JSON");
    for name in [
        "dm_drop_per_sender_cap_total",
        "dm_replica_accepted_total",
        "dm_replica_duplicate_total",
        "dm_replica_drop_per_sender_cap_total",
        "dm_replica_drop_full_total",
        "dm_ack_total",
        "dm_pending_envelopes",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("{name} "))),
            "{name} is exposed:\n{text}"
        );
    }
    for (status, count) in [
        ("accepted", 2.0),
        ("duplicate", 1.0),
        ("cap_violation", 2.0),
        ("conflict", 1.0),
        ("acked", 1.0),
        ("bad_request", 1.0),
    ] {
        let name = format!("dm_deposit_total{{status=\"{status}\"}}");
        assert_eq!(node.metric(&name).await, count, "{name}\n{text}");
    }
    assert_eq!(node.metric("dm_drop_per_sender_cap_total").await, 2.0);
    assert_eq!(node.metric("dm_ack_total").await, 1.0);
    assert_eq!(node.metric("dm_pending_envelopes").await, 1.0);
    assert_eq!(node.metric("dm_replica_accepted_total").await, 0.0);
}

#[actix_rt::test]
async fn the_pending_gauge_follows_expiry() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let now = now_unix();
    let short = alice.envelope_with(&bob, "short", now, now + 1, b"x");
    assert_deposit("short", &node.send(&short).await, "short", "accepted");
    assert_deposit(
        "long",
        &node.send(&alice.envelope_to(&bob, "long")).await,
        "long",
        "accepted",
    );
    assert_eq!(node.metric("dm_pending_envelopes").await, 2.0);
    // Nobody touches the mailbox: the node drops the expired envelope on its own.
    let node_ref = &node;
    wait_for(Duration::from_secs(8), || async move {
        node_ref.metric("dm_pending_envelopes").await == 1.0
    })
    .await;
    assert_eq!(node.pending_ids(&bob).await, ["long"]);
}

// ----- Poll bodies: mailboxes hold metadata; the JSON comes from a cache or the store ----------

#[actix_rt::test]
async fn a_poll_delivers_each_envelope_exactly_as_sent_from_the_cache_or_from_the_store() {
    let cached = start(NodeConfig::default()).await;
    let uncached = start(NodeConfig::default().env("MESH_DM_BODY_CACHE_MB", 0)).await;
    let (alice, carol, bob) = (Identity::new(), Identity::new(), Identity::new());
    let sent = [
        alice.envelope_to(&bob, "m1"),
        carol.envelope_to(&bob, "m2"),
        alice.envelope_to(&bob, "m3"),
    ];
    for node in [&cached, &uncached] {
        for envelope in &sent {
            let id = envelope.msg_id.as_str();
            assert_deposit(id, &node.send(envelope).await, id, "accepted");
        }
    }
    let expected: Vec<Value> = sent
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    for node in [&cached, &uncached] {
        let (status, body) = node.poll(&bob, 8).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messages"].as_array().unwrap(), &expected, "{body}");
        assert_eq!(
            (body["pending"].as_u64(), body["has_more"].as_bool()),
            (Some(3), Some(false))
        );
        let (status, body) = node.poll(&bob, 2).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["messages"].as_array().unwrap(),
            &expected[..2],
            "{body}"
        );
        assert_eq!(
            (body["pending"].as_u64(), body["has_more"].as_bool()),
            (Some(3), Some(true))
        );
        // Acknowledged: never delivered again, from either source.
        assert_eq!(node.ack(&bob, &["m1"]).await.0, 200);
        let (_, body) = node.poll(&bob, 8).await;
        assert_eq!(
            body["messages"].as_array().unwrap(),
            &expected[1..],
            "{body}"
        );
    }
}
