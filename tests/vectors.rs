//! Every entry of `../shared/vectors.json` against the implementation, byte for byte.

use dmrelay::peer::auth::{derive_peer_key, derive_prk, sign_request, verify_request};
use dmrelay::peer::url::normalize_peer_url;
use dmrelay::protocol::{AckObject, Envelope, EnvelopeLimits, PollRequest, signing_key_from_hex};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors.json");
    let text = std::fs::read_to_string(path).expect("../shared/vectors.json is readable");
    serde_json::from_str(&text).expect("vectors.json is JSON")
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is a string"))
}

/// The vectors' timestamps are in the past; only signatures and shapes are checked at their time.
fn at_vector_time(v: &Value, path: &[&str], field: &str) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur[field].as_u64().unwrap()
}

#[test]
fn keys_derive_from_seeds() {
    let v = vectors();
    for who in ["alice", "bob"] {
        let key = signing_key_from_hex(s(&v, &["keys", who, "seed"])).unwrap();
        assert_eq!(
            hex::encode(key.verifying_key().to_bytes()),
            s(&v, &["keys", who, "public"])
        );
    }
}

#[test]
fn envelope_canonical_string_and_signature() {
    let v = vectors();
    let json = serde_json::to_vec(&v["envelope"]["json"]).unwrap();
    let envelope = Envelope::parse(&json, &EnvelopeLimits::default()).unwrap();
    assert_eq!(envelope.canonical(), s(&v, &["envelope", "canonical"]));
    let now = at_vector_time(&v, &["envelope", "json"], "created_at");
    envelope.verify(now, &EnvelopeLimits::default()).unwrap();
    // The decoded ciphertext is the vector's bytes.
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s(&v, &["envelope", "json", "ciphertext"]))
        .unwrap();
    assert_eq!(
        hex::encode(bytes),
        s(&v, &["envelope", "ciphertext_bytes_hex"])
    );
    // Re-serialized, the envelope is the vector's JSON (same fields and values).
    assert_eq!(
        serde_json::to_value(&envelope).unwrap(),
        v["envelope"]["json"]
    );
    // Signing the same fields with Alice's seed yields the vector's signature (Ed25519 is deterministic).
    let alice = signing_key_from_hex(s(&v, &["keys", "alice", "seed"])).unwrap();
    let resigned = Envelope::sign(
        &alice,
        envelope.mailbox,
        envelope.msg_id.clone(),
        envelope.created_at,
        envelope.expires_at,
        &hex::decode(s(&v, &["envelope", "ciphertext_bytes_hex"])).unwrap(),
    );
    assert_eq!(resigned, envelope);
    // One flipped bit anywhere fails.
    let mut tampered = v["envelope"]["json"].clone();
    tampered["expires_at"] =
        Value::from(at_vector_time(&v, &["envelope", "json"], "expires_at") - 1);
    let tampered = Envelope::parse(
        &serde_json::to_vec(&tampered).unwrap(),
        &EnvelopeLimits::default(),
    )
    .unwrap();
    assert!(tampered.verify(now, &EnvelopeLimits::default()).is_err());
}

#[test]
fn poll_canonical_string_and_signature() {
    let v = vectors();
    let request = PollRequest::parse(&serde_json::to_vec(&v["poll"]["json"]).unwrap()).unwrap();
    assert_eq!(request.canonical(), s(&v, &["poll", "canonical"]));
    request
        .verify(at_vector_time(&v, &["poll", "json"], "ts"))
        .unwrap();
    let bob = signing_key_from_hex(s(&v, &["keys", "bob", "seed"])).unwrap();
    let resigned = PollRequest::sign(&bob, request.ts, request.nonce.clone(), request.limit);
    assert_eq!(resigned, request);
    assert_eq!(resigned.to_json(), v["poll"]["json"]);
}

#[test]
fn ack_canonical_string_and_signature() {
    let v = vectors();
    let ack = AckObject::parse(&serde_json::to_vec(&v["ack"]["json"]).unwrap()).unwrap();
    assert_eq!(ack.canonical(), s(&v, &["ack", "canonical"]));
    ack.verify_fresh(at_vector_time(&v, &["ack", "json"], "ts"))
        .unwrap();
    let bob = signing_key_from_hex(s(&v, &["keys", "bob", "seed"])).unwrap();
    let resigned = AckObject::sign(&bob, ack.ts, ack.msg_ids.clone());
    assert_eq!(resigned, ack);
    assert_eq!(serde_json::to_value(&ack).unwrap(), v["ack"]["json"]);
}

#[test]
fn url_normalization() {
    let v = vectors();
    let cases = v["url_normalization"].as_array().unwrap();
    assert!(!cases.is_empty());
    for case in cases {
        assert_eq!(
            normalize_peer_url(s(case, &["in"])).unwrap(),
            s(case, &["out"])
        );
    }
}

#[test]
fn peer_key_derivation() {
    let v = vectors();
    let secret = s(&v, &["peer_key", "secret"]).as_bytes();
    assert_eq!(
        hex::encode(derive_prk(secret)),
        s(&v, &["peer_key", "prk_hex"])
    );
    assert_eq!(
        hex::encode(derive_peer_key(secret, s(&v, &["peer_key", "self_url"]))),
        s(&v, &["peer_key", "peer_key_hex"])
    );
}

#[test]
fn peer_request_hmacs() {
    let v = vectors();
    let key = derive_peer_key(
        s(&v, &["peer_key", "secret"]).as_bytes(),
        s(&v, &["peer_key", "self_url"]),
    );
    for name in ["peer_request_post", "peer_request_get"] {
        let r = &v[name];
        assert_eq!(s(r, &["x_peer_url"]), s(&v, &["peer_key", "self_url"]));
        let ts = r["timestamp"].as_u64().unwrap();
        let body = s(r, &["body"]).as_bytes();
        let mac = sign_request(&key, s(r, &["method"]), s(r, &["path_and_query"]), ts, body);
        assert_eq!(mac, s(r, &["x_peer_hmac"]), "{name}");
        assert!(verify_request(
            &key,
            s(r, &["method"]),
            s(r, &["path_and_query"]),
            &ts.to_string(),
            body,
            &mac
        ));
        let mut tampered = body.to_vec();
        tampered.push(b' ');
        assert!(!verify_request(
            &key,
            s(r, &["method"]),
            s(r, &["path_and_query"]),
            &ts.to_string(),
            &tampered,
            &mac
        ));
    }
}
