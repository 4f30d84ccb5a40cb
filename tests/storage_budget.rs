//! The node-wide storage budget (issue 7, item 9): past `MESH_DM_STORAGE_BUDGET_MB` new deposits
//! and replicas get 503 `unavailable` (SPEC §6.5's code for storage trouble; peers retry a 503,
//! SPEC §7.4, so no replica is rejected for good), while polls and acks — which free space —
//! keep working; once acks have freed room, deposits are taken again.

mod common;

use common::*;
use serde_json::json;

fn big_envelope(to: &Identity, msg_id: &str) -> dmrelay::protocol::Envelope {
    let now = dmrelay::protocol::now_unix();
    Identity::new().envelope_with(to, msg_id, now, now + 3600, &[0x42; 8192])
}

#[actix_rt::test]
async fn past_the_budget_deposits_and_replicas_get_503_while_polls_and_acks_work() {
    let peer = "http://127.0.0.1:9";
    let node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", peer)
            .env("MESH_DM_SYNC_INTERVAL_S", "60")
            // 100 KiB: about nine 8 KiB envelopes.
            .env("MESH_DM_STORAGE_BUDGET_MB", "0.09765625"),
    );
    node.ready().await;
    let budget = 100.0 * 1024.0;
    assert_eq!(node.metric("dm_storage_budget_bytes").await, budget);
    assert_eq!(node.metric("dm_store_bytes").await, 0.0);

    let bob = Identity::new();
    let mut accepted = Vec::new();
    let refusal = loop {
        assert!(accepted.len() < 40, "the budget never refused a deposit");
        let msg_id = format!("m{}", accepted.len());
        let envelope = big_envelope(&bob, &msg_id);
        let (status, body, headers) = post_with_headers(
            &node.url,
            "/api/mesh/dm/send",
            serde_json::to_vec(&envelope).unwrap(),
        )
        .await;
        match status {
            200 => accepted.push(msg_id),
            503 => break (body, headers),
            other => panic!("unexpected {other} {body}"),
        }
    };
    let (body, headers) = refusal;
    assert_error(
        "deposit past the budget",
        &(503, body.clone()),
        503,
        "unavailable",
    );
    let detail = body["detail"].as_str().unwrap();
    assert!(detail.contains("storage budget"), "{detail}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "retry-after" && v.parse::<u64>().is_ok()),
        "{headers:?}"
    );
    assert!(
        accepted.len() >= 5,
        "only {} fit in 100 KiB",
        accepted.len()
    );
    let used = node.metric("dm_store_bytes").await;
    assert!(used <= budget && used > budget / 2.0, "{used} bytes stored");
    assert!(node.metric("dm_storage_budget_refusals_total").await >= 1.0);
    // The node is healthy: a budget is not a fault.
    assert_eq!(node.get("/health").await.0, 200);

    // A replica is refused the same way (the whole request: the peer retries it later).
    let replica = serde_json::to_value(big_envelope(&bob, "r1")).unwrap();
    let (status, body) = peer_request(
        &node.peer_url,
        "POST",
        "/api/mesh/dm/replicate-envelope",
        serde_json::to_vec(&json!({ "envelope": replica })).unwrap(),
        peer,
        MESH_SECRET,
    )
    .await;
    assert_error(
        "replica past the budget",
        &(status, body),
        503,
        "unavailable",
    );

    // Polls and acks keep working.
    assert_eq!(node.pending_ids(&bob).await.len(), accepted.len());
    let freed: Vec<&str> = accepted[..3].iter().map(String::as_str).collect();
    let (status, body) = node.ack(&bob, &freed).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(3)), "{body}");
    assert!(node.metric("dm_store_bytes").await < used);

    // Room again: deposits and replicas are taken.
    let (status, body) = node.send(&big_envelope(&bob, "again")).await;
    assert_deposit("deposit after acks", &(status, body), "again", "accepted");
    let (status, body) = peer_request(
        &node.peer_url,
        "POST",
        "/api/mesh/dm/replicate-envelope",
        serde_json::to_vec(&json!({ "envelope": replica })).unwrap(),
        peer,
        MESH_SECRET,
    )
    .await;
    assert_eq!(
        (status, body["results"][0]["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
}
