//! "No input, however malformed, may crash a node, corrupt its store, or change another mailbox"
//! (SPEC §6.5), tried with many mutated copies of valid requests on both planes.

mod common;

use common::*;
use serde_json::json;

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One random edit: flip a byte, delete a span, duplicate a span, or insert a JSON-ish token.
fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(3) {
        if out.is_empty() {
            out.push(b'{');
        }
        let at = rng.below(out.len());
        match rng.below(4) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            2 => {
                let end = (at + 1 + rng.below(32)).min(out.len());
                let span = out[at..end].to_vec();
                out.splice(at..at, span);
            }
            _ => {
                let tokens: [&[u8]; 10] = [
                    b"null",
                    b"-1",
                    b"1e999",
                    b"\"\"",
                    b"[",
                    b"{",
                    b"}",
                    b"\"\\u0000\"",
                    b"18446744073709551616",
                    b"\"A\"",
                ];
                let token = tokens[rng.below(tokens.len())];
                out.splice(at..at, token.iter().copied());
            }
        }
    }
    out
}

#[actix_rt::test]
async fn mutated_requests_never_crash_the_node_nor_touch_another_mailbox() {
    let peer = "http://127.0.0.1:9";
    let node = Node::start(
        mesh_config()
            .env("MESH_RELAY_PEERS", peer)
            .env("MESH_DM_SYNC_INTERVAL_S", "60"),
    );
    node.ready().await;
    let (alice, bob, carol, dave) = (
        Identity::new(),
        Identity::new(),
        Identity::new(),
        Identity::new(),
    );
    // A bystander mailbox with one message, which nothing below may change.
    let bystander = carol.envelope_to(&dave, "keep-me");
    assert_eq!(node.send(&bystander).await.0, 200);

    let envelope = serde_json::to_vec(&alice.envelope_to(&bob, "m1")).unwrap();
    let poll = serde_json::to_vec(&bob.poll(8)).unwrap();
    let ack = serde_json::to_vec(&bob.ack(&["m1", "m2"])).unwrap();
    let batch = serde_json::to_vec(&json!({"envelopes": [
        serde_json::to_value(alice.envelope_to(&bob, "r1")).unwrap(),
        serde_json::to_value(alice.envelope_to(&bob, "r2")).unwrap(),
    ]}))
    .unwrap();
    let acks = serde_json::to_vec(&json!({"acks": [bob.ack(&["r1"])]})).unwrap();

    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut statuses = std::collections::BTreeMap::new();
    for round in 0..1000 {
        let (status, body) = match round % 5 {
            0 => {
                node.post_bytes("/api/mesh/dm/send", mutate(&mut rng, &envelope))
                    .await
            }
            1 => {
                node.post_bytes("/api/mesh/dm/poll", mutate(&mut rng, &poll))
                    .await
            }
            2 => {
                node.post_bytes("/api/mesh/dm/ack", mutate(&mut rng, &ack))
                    .await
            }
            3 => {
                let body = mutate(&mut rng, &batch);
                let path = "/api/mesh/dm/replicate-envelope";
                peer_request(&node.peer_url, "POST", path, body, peer, MESH_SECRET).await
            }
            _ => {
                let body = mutate(&mut rng, &acks);
                let path = "/api/mesh/dm/replicate-ack";
                peer_request(&node.peer_url, "POST", path, body, peer, MESH_SECRET).await
            }
        };
        assert!(
            [200, 400, 401, 409, 413, 429].contains(&status),
            "round {round}: status {status}: {body}"
        );
        if status != 200 {
            assert_eq!(body["ok"], false, "round {round}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
            assert!(body["detail"].as_str().is_some_and(|d| d.len() > 10));
        }
        *statuses.entry(status).or_insert(0) += 1;
    }
    eprintln!("statuses: {statuses:?}");
    // The mutations reached the rules, not only the JSON parser. (Keys and timestamps are fresh
    // each run, so the counts vary a little; at 1000 rounds about a dozen requests reach the
    // signature check.)
    assert!(statuses.get(&400).is_some_and(|n| *n > 20), "{statuses:?}");
    assert!(statuses.get(&200).is_some_and(|n| *n > 20), "{statuses:?}");
    assert!(statuses.get(&401).is_some_and(|n| *n >= 3), "{statuses:?}");

    node.ready().await;
    let messages = node.pending_messages(&dave).await;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0], serde_json::to_value(&bystander).unwrap());
    // And the node still does its job.
    assert_eq!(node.send(&alice.envelope_to(&carol, "after")).await.0, 200);
    assert_eq!(node.pending_ids(&carol).await, ["after"]);
}
