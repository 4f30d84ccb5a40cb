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
    // The TLS node holds another mesh secret: its pulls of the plain node's feed are refused
    // (403), so the only way m1 could reach it is the plain node's push, which must fail at the
    // TLS handshake. Had the handshake wrongly succeeded, the push would be refused as 403 and
    // counted as an auth refusal, not as a transport error.
    let tls_node = tls_node.start(
        mesh_config()
            .env("MESH_RELAY_PEERS", &plain_url)
            .env("MESH_PEER_PUSH_SECRET", "another-mesh-secret-0123456789"),
    );
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
    // The pushes failed before any HTTP exchange: the certificate was refused.
    assert_eq!(
        plain
            .metric(&format!("dm_replication_push_auth_refused_total{label}"))
            .await,
        0.0
    );
    assert_eq!(
        plain
            .metric(&format!("dm_replication_push_ok_total{label}"))
            .await,
        0.0
    );
    // The TLS node is up and serving HTTPS to a client that trusts the test CA.
    assert_eq!(tls_node.get("/health").await.0, 200);
    assert!(tls_node.pending_ids(&bob).await.is_empty());
}
