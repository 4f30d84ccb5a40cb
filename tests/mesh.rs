//! SPEC §7.4 with real nodes: push, pull, ack propagation, partial meshes, restarts, and
//! lane isolation (§8 `MESH_DM_PEER_LISTEN`).

mod common;

use common::*;

#[actix_rt::test]
async fn three_node_mesh_deposit_on_a_read_and_ack_on_c_frees_quota_on_a() {
    let nodes = mesh(3, &full_mesh_links(3), &[]);
    for node in &nodes {
        node.ready().await;
    }
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(a.send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    assert_eq!(a.send(&alice.envelope_to(&bob, "m2")).await.0, 200);
    // Bob was offline; he reads on C.
    wait_for_ids(c, &bob, &["m1", "m2"]).await;
    wait_for_ids(b, &bob, &["m1", "m2"]).await;
    // Alice is at the cap everywhere.
    let (status, body) = a.send(&alice.envelope_to(&bob, "m3")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("cap_violation"))
    );
    // Bob acknowledges on C; the ack travels and frees Alice's quota on A.
    let (status, body) = c.ack(&bob, &["m1"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], 1);
    wait_for_ids(a, &bob, &["m2"]).await;
    wait_for_ids(b, &bob, &["m2"]).await;
    let (status, body) = a.send(&alice.envelope_to(&bob, "m3")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    wait_for_ids(c, &bob, &["m2", "m3"]).await;
    // The push path did the work (and the metrics say so).
    assert!(
        a.metric(&format!(
            "dm_replication_push_ok_total{{peer=\"{}\"}}",
            c.peer_url
        ))
        .await
            >= 3.0
    );
    assert!(c.metric("dm_replica_accepted_total").await >= 3.0);
    assert_eq!(
        a.metric(&format!("dm_peer_circuit_open{{peer=\"{}\"}}", c.peer_url))
            .await,
        0.0
    );
}

#[actix_rt::test]
async fn partial_mesh_line_converges_in_both_directions() {
    // a – b – c: a and c are not peers; everything between them goes through b's feed.
    let nodes = mesh(3, &[(0, 1), (1, 2)], &[]);
    for node in &nodes {
        node.ready().await;
    }
    let (a, c) = (&nodes[0], &nodes[2]);
    let (alice, bob) = (Identity::new(), Identity::new());
    let (carol, dave) = (Identity::new(), Identity::new());
    assert_eq!(a.send(&alice.envelope_to(&bob, "a-to-c")).await.0, 200);
    assert_eq!(c.send(&carol.envelope_to(&dave, "c-to-a")).await.0, 200);
    wait_for_ids(c, &bob, &["a-to-c"]).await;
    wait_for_ids(a, &dave, &["c-to-a"]).await;
    // Acks travel the line too.
    assert_eq!(c.ack(&bob, &["a-to-c"]).await.0, 200);
    assert_eq!(a.ack(&dave, &["c-to-a"]).await.0, 200);
    wait_for_ids(a, &bob, &[]).await;
    wait_for_ids(c, &dave, &[]).await;
    wait_for_ids(&nodes[1], &bob, &[]).await;
    // A late retry of the acknowledged envelope is not resurrected anywhere.
    let (status, body) = a.send(&alice.envelope_to(&bob, "a-to-c")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("acked")));
}

#[actix_rt::test]
async fn killed_node_restarts_and_converges_with_what_it_missed() {
    let mut nodes = mesh(3, &full_mesh_links(3), &[]);
    for node in &nodes {
        node.ready().await;
    }
    let (alice, bob) = (Identity::new(), Identity::new());
    let carol = Identity::new();
    assert_eq!(
        nodes[0].send(&alice.envelope_to(&bob, "before")).await.0,
        200
    );
    wait_for_ids(&nodes[2], &bob, &["before"]).await;

    nodes[2].kill9();
    // Meanwhile: a deposit, an ack of the earlier one, and another sender's deposit on B.
    assert_eq!(
        nodes[0].send(&alice.envelope_to(&bob, "during")).await.0,
        200
    );
    assert_eq!(nodes[1].ack(&bob, &["before"]).await.0, 200);
    assert_eq!(
        nodes[1].send(&carol.envelope_to(&bob, "carol")).await.0,
        200
    );
    wait_for_id_set(&nodes[0], &bob, &["carol", "during"]).await;

    nodes[2].restart();
    nodes[2].ready().await;
    wait_for_id_set(&nodes[2], &bob, &["carol", "during"]).await;
    // And what the restarted node receives from its clients still reaches the others.
    assert_eq!(nodes[2].ack(&bob, &["during"]).await.0, 200);
    wait_for_ids(&nodes[0], &bob, &["carol"]).await;
    wait_for_ids(&nodes[1], &bob, &["carol"]).await;
}

#[actix_rt::test]
async fn dead_peer_delays_nothing_but_its_own_queue() {
    // Node 0 peers with node 1 (alive) and with an address where nobody listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let b = Reserved::new(false);
    let a = Reserved::new(false);
    let (a_url, b_url) = (a.peer_url.clone(), b.peer_url.clone());
    let a = a.start(
        mesh_config()
            .env("MESH_RELAY_PEERS", format!("{dead_url},{b_url}"))
            .env("MESH_RELAY_MAX_FAILURES", "2")
            .env("MESH_RELAY_FAILURE_COOLDOWN_S", "30"),
    );
    let b = b.start(mesh_config().env("MESH_RELAY_PEERS", &a_url));
    a.ready().await;
    b.ready().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let started = std::time::Instant::now();
    for i in 0..2 {
        let (status, _) = a.send(&alice.envelope_to(&bob, &format!("m{i}"))).await;
        assert_eq!(status, 200);
    }
    assert!(
        started.elapsed() < std::time::Duration::from_secs(2),
        "client replies do not wait for peers"
    );
    wait_for_ids(&b, &bob, &["m0", "m1"]).await;
    // The dead peer's breaker opens; its queue holds the items; the live peer got everything.
    let dead_label = format!("{{peer=\"{dead_url}\"}}");
    wait_for(std::time::Duration::from_secs(10), || async {
        a.metric(&format!("dm_peer_circuit_open{dead_label}")).await == 1.0
    })
    .await;
    assert!(
        a.metric(&format!("dm_replication_push_error_total{dead_label}"))
            .await
            >= 2.0
    );
    assert_eq!(
        a.metric(&format!("dm_peer_queue_depth{dead_label}")).await,
        2.0
    );
    assert_eq!(
        a.metric(&format!("dm_peer_queue_depth{{peer=\"{b_url}\"}}"))
            .await,
        0.0
    );
}

#[actix_rt::test]
async fn separate_peer_lane_serves_each_plane_only_on_its_own_address() {
    let config = mesh_config()
        .env("MESH_RELAY_PEERS", "http://127.0.0.1:9")
        .env("MESH_DM_SYNC_INTERVAL_S", "30");
    let node = Node::start(NodeConfig {
        separate_peer_lane: true,
        ..config
    });
    node.ready().await;
    assert_ne!(node.url, node.peer_url);
    let (alice, bob) = (Identity::new(), Identity::new());
    let envelope = serde_json::to_vec(&alice.envelope_to(&bob, "m1")).unwrap();
    // Client routes: on the client address only.
    let (status, _) = post_raw(&node.peer_url, "/api/mesh/dm/send", envelope.clone()).await;
    assert_eq!(status, 404);
    let (status, _) = post_raw(&node.url, "/api/mesh/dm/send", envelope).await;
    assert_eq!(status, 200);
    // Peer routes: on the peer address only (a correctly signed request, so 404 is the lane).
    let feed = "/api/mesh/dm/changes?since=0&limit=10";
    let (status, body) = peer_request(
        &node.url,
        "GET",
        feed,
        Vec::new(),
        "http://127.0.0.1:9",
        MESH_SECRET,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = peer_request(
        &node.peer_url,
        "GET",
        feed,
        Vec::new(),
        "http://127.0.0.1:9",
        MESH_SECRET,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changes"].as_array().unwrap().len(), 1);
}

#[actix_rt::test]
async fn a_frozen_peer_delays_no_client_and_catches_up_when_it_thaws() {
    let nodes = mesh(3, &full_mesh_links(3), &[]);
    for node in &nodes {
        node.ready().await;
    }
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_eq!(nodes[0].send(&alice.envelope_to(&bob, "m1")).await.0, 200);
    wait_for_ids(&nodes[2], &bob, &["m1"]).await;

    // Freeze C: its sockets accept but nothing answers (a hung peer, worse than a dead one).
    let frozen = nodes[2].pid().unwrap() as i32;
    unsafe {
        libc::kill(frozen, libc::SIGSTOP);
    }
    let started = std::time::Instant::now();
    assert_eq!(nodes[0].ack(&bob, &["m1"]).await.0, 200);
    assert_eq!(nodes[0].send(&alice.envelope_to(&bob, "m2")).await.0, 200);
    assert_eq!(nodes[1].send(&alice.envelope_to(&bob, "m3")).await.0, 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "client replies never wait for a peer"
    );
    // The healthy pair converges while C is frozen.
    wait_for_ids(&nodes[1], &bob, &["m2", "m3"]).await;
    wait_for_ids(&nodes[0], &bob, &["m2", "m3"]).await;

    unsafe {
        libc::kill(frozen, libc::SIGCONT);
    }
    // C converges: m1 acknowledged, m2 and m3 delivered.
    wait_for_ids(&nodes[2], &bob, &["m2", "m3"]).await;
    let (status, body) = nodes[2].send(&alice.envelope_to(&bob, "m1")).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("acked")));
}
