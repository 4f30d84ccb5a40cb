//! The client plane's per-address rate limit (issue 7 item 9; SPEC §6.5 `429 rate_limited`):
//! past its burst an address gets 429 `rate_limited` with `Retry-After`, every client on that
//! address shares the bucket, it works again after the announced wait, and `/health`, `/metrics`
//! and the peer plane are not limited.

mod common;

use common::*;
use std::time::{Duration, Instant};

const RATE_PER_S: f64 = 5.0;
const BURST: u32 = 5;

/// A cheap client-plane request from a new client each time (its own key pair): a poll.
async fn client_request(node: &Node) -> (u16, serde_json::Value, Vec<(String, String)>) {
    let owner = Identity::new();
    let body = serde_json::to_vec(&owner.poll(1)).unwrap();
    post_with_headers(&node.url, "/api/mesh/dm/poll", body).await
}

#[actix_rt::test]
async fn an_address_past_its_burst_gets_429_with_retry_after_then_recovers() {
    let node = Node::start(
        NodeConfig::default()
            .env("MESH_DM_CLIENT_RATE_PER_S", RATE_PER_S)
            .env("MESH_DM_CLIENT_RATE_BURST", BURST),
    );
    node.ready().await;
    assert_eq!(
        node.metric("dm_rate_limited_total{plane=\"client\"}").await,
        0.0
    );
    // Different clients (key pairs, mailboxes) from one address share one bucket: the burst
    // goes through, then a 429 comes within what the rate refills meanwhile.
    let start = Instant::now();
    let mut allowed = 0u32;
    let (body, headers) = loop {
        let (status, body, headers) = client_request(&node).await;
        if status == 429 {
            break (body, headers);
        }
        assert_eq!(status, 200, "{body}");
        allowed += 1;
        let refilled = (start.elapsed().as_secs_f64() * RATE_PER_S).ceil() as u32;
        assert!(
            allowed <= BURST + refilled,
            "{allowed} requests allowed in {:?}",
            start.elapsed()
        );
    };
    assert!(
        allowed >= BURST,
        "the burst of {BURST} goes through: {allowed}"
    );
    assert_error("past the burst", &(429, body.clone()), 429, "rate_limited");
    let retry_after: u64 = headers
        .iter()
        .find(|(name, _)| name == "retry-after")
        .map(|(_, value)| value.parse().unwrap())
        .unwrap_or_else(|| panic!("429 without Retry-After: {headers:?}"));
    assert!(
        (1..=2).contains(&retry_after),
        "Retry-After {retry_after}: whole seconds, at least 1, about 1/rate"
    );
    assert!(node.metric("dm_rate_limited_total{plane=\"client\"}").await >= 1.0);

    // Not limited: /health, /metrics and the peer plane (it answers its own 403, not 429).
    for _ in 0..10 {
        for path in ["/health", "/metrics"] {
            assert_eq!(node.get(path).await.0, 200, "{path}");
        }
    }
    let (status, body) = node.get("/api/mesh/dm/changes?since=0").await;
    assert_error("unsigned peer request", &(status, body), 403, "peer_auth");

    // After the announced wait, the address is served again.
    actix_rt::time::sleep(Duration::from_secs(retry_after)).await;
    let (status, body, _) = client_request(&node).await;
    assert_eq!(status, 200, "after Retry-After: {body}");
}

#[actix_rt::test]
async fn a_rate_of_zero_turns_the_limit_off() {
    let node = Node::start(
        NodeConfig::default()
            .env("MESH_DM_CLIENT_RATE_PER_S", 0)
            .env("MESH_DM_CLIENT_RATE_BURST", 1),
    );
    node.ready().await;
    for _ in 0..20 {
        let (status, body, _) = client_request(&node).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        node.metric("dm_rate_limited_total{plane=\"client\"}").await,
        0.0
    );
}
