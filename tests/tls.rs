//! HTTPS on both planes and on peer links (`MESH_DM_TLS_CERT`/`_KEY`, `MESH_RELAY_CA_FILE`):
//! a mesh over `https://` URLs replicates, and a peer whose certificate is not trusted gets
//! nothing.

mod common;

use common::*;
use std::time::Duration;

#[actix_rt::test]
async fn two_nodes_replicate_and_acknowledge_over_https() {
    let a = Reserved::with_tls(false, true);
    let b = Reserved::with_tls(false, true);
    assert!(a.url.starts_with("https://"));
    let (a_url, b_url) = (a.peer_url.clone(), b.peer_url.clone());
    let a = a.start(mesh_config().env("MESH_RELAY_PEERS", &b_url));
    let b = b.start(mesh_config().env("MESH_RELAY_PEERS", &a_url));
    a.ready().await;
    b.ready().await;
    let (_, health) = b.get("/health").await;
    assert_eq!(
        health["node"],
        b_url.as_str(),
        "the https URL is the node's name"
    );
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(a.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    wait_for_ids(&b, &bob, &["m1"]).await;
    assert_eq!(b.ack(&bob, &["m1"]).await.0, 200);
    wait_for_ids(&a, &bob, &[]).await;
    let label = format!("{{peer=\"{b_url}\"}}");
    assert!(
        a.metric(&format!("dm_replication_push_ok_total{label}"))
            .await
            >= 1.0
    );
}

#[actix_rt::test]
async fn a_peer_whose_certificate_is_not_trusted_receives_nothing() {
    let tls_node = Reserved::with_tls(false, true);
    let plain = Reserved::new(false);
    let (tls_url, plain_url) = (tls_node.peer_url.clone(), plain.peer_url.clone());
    let tls_node = tls_node.start(mesh_config().env("MESH_RELAY_PEERS", &plain_url));
    // This node knows only the public web roots: the test CA is not among them.
    let plain = plain.start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &tls_url)
            .env("MESH_RELAY_MAX_FAILURES", "1000"),
    );
    tls_node.ready().await;
    plain.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(plain.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    let label = format!("{{peer=\"{tls_url}\"}}");
    wait_for(Duration::from_secs(10), || async {
        plain
            .metric(&format!("dm_replication_push_error_total{label}"))
            .await
            >= 2.0
    })
    .await;
    assert_eq!(
        plain
            .metric(&format!("dm_replication_push_ok_total{label}"))
            .await,
        0.0
    );
    assert!(tls_node.pending_ids(&bob).await.is_empty());
}
