//! SPEC §6.5 (the error table) on the client plane, with the envelope checks of §3 and the
//! request checks of §6.1–6.3: every malformed, oversized, forged, stale or expired input gets
//! its status, `ok: false`, its `error` code and a `detail` sentence — and changes nothing:
//! after each barrage the node is healthy and a bystander mailbox holds exactly what it held.

mod common;

use common::{Identity, Node, NodeConfig, assert_deposit, assert_error, post_chunked, request};
use dmrelay::protocol::{now_unix, random_hex};
use serde_json::{Value, json};

const SEND: &str = "/api/mesh/dm/send";
const POLL: &str = "/api/mesh/dm/poll";
const ACK: &str = "/api/mesh/dm/ack";
const CLIENT_PATHS: [&str; 3] = [SEND, POLL, ACK];
/// The client plane's body limit (SPEC §6.5).
const MAX_BODY: usize = 64 * 1024;

/// A node with one bystander mailbox holding one message.
struct Fixture {
    node: Node,
    bystander: Identity,
    bystander_messages: Vec<Value>,
}

impl Fixture {
    async fn start(config: NodeConfig) -> Self {
        let node = Node::start(config);
        node.ready().await;
        let (sender, bystander) = (Identity::new(), Identity::new());
        let envelope = sender.envelope_to(&bystander, "bystander-1");
        assert_deposit(
            "bystander",
            &node.send(&envelope).await,
            "bystander-1",
            "accepted",
        );
        let bystander_messages = node.pending_messages(&bystander).await;
        assert_eq!(
            bystander_messages,
            [serde_json::to_value(&envelope).unwrap()]
        );
        Self {
            node,
            bystander,
            bystander_messages,
        }
    }

    /// Sends raw bytes and checks the error reply.
    async fn expect(&self, what: &str, path: &str, body: Vec<u8>, status: u16, code: &str) {
        let got = self.node.post_bytes(path, body).await;
        assert_error(&format!("{path}: {what}"), &got, status, code);
    }

    /// The node still answers, and bad input changed no other mailbox.
    async fn assert_unharmed(&self) {
        let (status, body) = self.node.get("/health").await;
        assert_eq!((status, &body["ok"]), (200, &Value::Bool(true)), "{body}");
        assert_eq!(
            self.node.pending_messages(&self.bystander).await,
            self.bystander_messages,
            "the bystander mailbox holds exactly what it held"
        );
        // A fresh deposit, poll and ack still work.
        let (alice, bob) = (Identity::new(), Identity::new());
        let envelope = alice.envelope_to(&bob, "after");
        assert_deposit(
            "after the barrage",
            &self.node.send(&envelope).await,
            "after",
            "accepted",
        );
        assert_eq!(self.node.pending_ids(&bob).await, ["after"]);
        let (status, body) = self.node.ack(&bob, &["after"]).await;
        assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");
    }
}

fn bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

/// `value` with `field` replaced by `raw` JSON text (for numbers serde_json cannot hold).
fn with_raw(value: &Value, field: &str, raw: &str) -> Vec<u8> {
    let mut copy = value.clone();
    copy[field] = Value::from("__RAW__");
    serde_json::to_string(&copy)
        .unwrap()
        .replace("\"__RAW__\"", raw)
        .into_bytes()
}

/// `value` with `field` set to `new`.
fn with(value: &Value, field: &str, new: Value) -> Vec<u8> {
    let mut copy = value.clone();
    copy[field] = new;
    bytes(&copy)
}

/// `value` without `field`.
fn without(value: &Value, field: &str) -> Vec<u8> {
    let mut copy = value.clone();
    copy.as_object_mut().unwrap().remove(field);
    bytes(&copy)
}

/// `value`'s JSON padded with trailing spaces to exactly `len` bytes.
fn padded(value: &Value, len: usize) -> Vec<u8> {
    let mut body = bytes(value);
    assert!(body.len() <= len);
    body.resize(len, b' ');
    body
}

/// Bodies that are not one JSON object, for any endpoint: all `400 bad_request`.
fn not_an_object(valid: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let text = bytes(valid);
    vec![
        ("empty body", Vec::new()),
        ("not JSON", b"hello".to_vec()),
        ("malformed JSON", b"{\"v\": 1,, }".to_vec()),
        ("unterminated object", b"{\"v\": 1,".to_vec()),
        ("truncated request", text[..text.len() / 2].to_vec()),
        ("trailing garbage", [text.as_slice(), b"xyz"].concat()),
        ("two objects", [text.as_slice(), text.as_slice()].concat()),
        ("invalid UTF-8", b"{\"v\": \"\xff\xfe\"}".to_vec()),
        ("array", b"[]".to_vec()),
        (
            "array holding the request",
            [b"[".as_slice(), &text, b"]"].concat(),
        ),
        ("string", b"\"envelope\"".to_vec()),
        ("number", b"42".to_vec()),
        ("null", b"null".to_vec()),
        ("boolean", b"true".to_vec()),
        ("empty object", b"{}".to_vec()),
        ("60000 nested arrays", vec![b'['; 60_000]),
        (
            "deeply nested objects",
            "{\"a\":".repeat(12_000).into_bytes(),
        ),
        ("nested in a field", {
            let mut body = b"{\"v\":".to_vec();
            body.extend(vec![b'['; 50_000]);
            body
        }),
    ]
}

/// The hex signature `sig` with the group order L added to its scalar S (little-endian, bytes
/// 32..64): the malleated twin that RFC 8032 verification must refuse.
fn add_group_order_to_s(sig: &str) -> String {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x10,
    ];
    let mut bytes = hex::decode(sig).unwrap();
    let mut carry = 0u16;
    for (i, l) in L.iter().enumerate() {
        let sum = u16::from(bytes[32 + i]) + u16::from(*l) + carry;
        bytes[32 + i] = (sum & 0xff) as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0, "S + L fits in 32 bytes since S < L < 2^253");
    hex::encode(bytes)
}

/// Invalid ways to write a 32-byte key / 64-byte signature in hex.
fn bad_hex(valid: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("uppercase hex", Value::from(valid.to_uppercase())),
        ("one char short", Value::from(&valid[..valid.len() - 1])),
        ("one byte short", Value::from(&valid[..valid.len() - 2])),
        ("one byte long", Value::from(format!("{valid}00"))),
        ("non-hex", Value::from(format!("g{}", &valid[1..]))),
        ("0x prefix", Value::from(format!("0x{}", &valid[2..]))),
        ("empty", Value::from("")),
        ("number", Value::from(12)),
        ("null", Value::Null),
        ("array of bytes", json!([1, 2, 3])),
    ]
}

/// Invalid u64 timestamps/versions written as raw JSON text.
const BAD_U64S: [(&str, &str); 8] = [
    ("string", "\"1764000000\""),
    ("negative", "-5"),
    ("float", "1.5"),
    ("float with .0", "1.0"),
    ("above u64::MAX", "18446744073709551616"),
    ("huge", "99999999999999999999999999999999999999"),
    ("exponent", "1e400"),
    ("null", "null"),
];

// ----- POST /api/mesh/dm/send -----------------------------------------------------------------

#[actix_rt::test]
async fn send_refuses_every_ill_formed_envelope_with_400_bad_request() {
    let f = Fixture::start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let valid = serde_json::to_value(alice.envelope_to(&bob, "shape")).unwrap();

    for (what, body) in not_an_object(&valid) {
        f.expect(what, SEND, body, 400, "bad_request").await;
    }
    for field in [
        "v",
        "msg_id",
        "mailbox",
        "sender",
        "created_at",
        "expires_at",
        "ciphertext",
        "sig",
    ] {
        f.expect(
            &format!("missing {field}"),
            SEND,
            without(&valid, field),
            400,
            "bad_request",
        )
        .await;
    }
    // Unknown versions, and versions of the wrong type.
    for v in ["0", "2", "255"] {
        f.expect(
            &format!("v={v}"),
            SEND,
            with_raw(&valid, "v", v),
            400,
            "bad_request",
        )
        .await;
    }
    for field in ["v", "created_at", "expires_at"] {
        for (what, raw) in BAD_U64S {
            let body = with_raw(&valid, field, raw);
            f.expect(&format!("{field} {what}"), SEND, body, 400, "bad_request")
                .await;
        }
    }
    // Keys and signature: 64/128 lowercase hex only.
    for field in ["mailbox", "sender", "sig"] {
        let good = valid[field].as_str().unwrap().to_string();
        for (what, bad) in bad_hex(&good) {
            let body = with(&valid, field, bad);
            f.expect(&format!("{field} {what}"), SEND, body, 400, "bad_request")
                .await;
        }
    }
    // msg_id: 1..=128 of [A-Za-z0-9_-].
    let long_id = "a".repeat(129);
    for bad in ["", "a b", "a/b", "a.b", "é", "a\nb", "a+b", &long_id] {
        let body = with(&valid, "msg_id", Value::from(bad));
        f.expect(&format!("msg_id {bad:?}"), SEND, body, 400, "bad_request")
            .await;
    }
    f.expect(
        "msg_id number",
        SEND,
        with(&valid, "msg_id", json!(7)),
        400,
        "bad_request",
    )
    .await;
    // The longest id and every allowed character are fine.
    let longest = "Az09_-".repeat(21) + "xy";
    assert_eq!(longest.len(), 128);
    let edge = alice.envelope_to(&Identity::new(), &longest);
    assert_deposit(
        "128-char msg_id",
        &f.node.send(&edge).await,
        &longest,
        "accepted",
    );
    // ciphertext: standard padded base64 of 1.. bytes.
    for (what, bad) in [
        ("empty", json!("")),
        ("not base64", json!("!!!!")),
        ("unpadded", json!("AAE")),
        ("url-safe alphabet", json!("AA-_")),
        ("inner whitespace", json!("AA E=")),
        ("number", json!(1234)),
        ("array", json!(["AAE="])),
    ] {
        let body = with(&valid, "ciphertext", bad);
        f.expect(
            &format!("ciphertext {what}"),
            SEND,
            body,
            400,
            "bad_request",
        )
        .await;
    }
    // Nothing of all that reached Bob's mailbox.
    assert!(f.node.pending_ids(&bob).await.is_empty());
    f.assert_unharmed().await;
}

#[actix_rt::test]
async fn send_checks_signature_and_time_window() {
    let f = Fixture::start(NodeConfig::default()).await;
    let (alice, bob, mallory) = (Identity::new(), Identity::new(), Identity::new());
    let now = now_unix();
    let valid = serde_json::to_value(alice.envelope_to(&bob, "signed")).unwrap();

    // 401 bad_signature: forged, tampered after signing, or signed by another key.
    let forged = with(&valid, "sig", Value::from(random_hex(64).unwrap()));
    f.expect("random signature", SEND, forged, 401, "bad_signature")
        .await;
    let zero_sig = with(&valid, "sig", Value::from("0".repeat(128)));
    f.expect("all-zero signature", SEND, zero_sig, 401, "bad_signature")
        .await;
    let tampered: [(&str, Value); 6] = [
        ("ciphertext", json!("dGFtcGVyZWQ=")),
        (
            "created_at",
            json!(valid["created_at"].as_u64().unwrap() - 1),
        ),
        (
            "expires_at",
            json!(valid["expires_at"].as_u64().unwrap() + 1),
        ),
        ("msg_id", json!("signed2")),
        ("mailbox", json!(mallory.hex())),
        ("sender", json!(mallory.hex())),
    ];
    for (field, value) in tampered {
        let body = with(&valid, field, value);
        f.expect(
            &format!("{field} changed after signing"),
            SEND,
            body,
            401,
            "bad_signature",
        )
        .await;
    }
    let by_mallory = serde_json::to_value(mallory.envelope_to(&bob, "signed")).unwrap();
    let mut claimed = by_mallory.clone();
    claimed["sender"] = Value::from(alice.hex());
    f.expect(
        "signed by another key",
        SEND,
        bytes(&claimed),
        401,
        "bad_signature",
    )
    .await;
    // RFC 8032 requires S < L: the same signature with L added to S is not a second valid one.
    let malleated = with(
        &valid,
        "sig",
        Value::from(add_group_order_to_s(valid["sig"].as_str().unwrap())),
    );
    f.expect(
        "signature with S + L",
        SEND,
        malleated,
        401,
        "bad_signature",
    )
    .await;
    // A sender key that is not a usable Ed25519 key (small-order point) cannot verify.
    let weak = with(&valid, "sender", Value::from("0".repeat(64)));
    f.expect("small-order sender key", SEND, weak, 401, "bad_signature")
        .await;

    // Time window, each properly signed (so only time is wrong).
    let ahead = alice.envelope_with(&bob, "ahead", now + 310, now + 3600, b"x");
    f.expect(
        "created_at 310 s ahead",
        SEND,
        bytes(&json!(ahead)),
        401,
        "stale",
    )
    .await;
    let far_ahead = alice.envelope_with(&bob, "far", u64::MAX - 10, u64::MAX, b"x");
    f.expect(
        "created_at near u64::MAX",
        SEND,
        bytes(&json!(far_ahead)),
        401,
        "stale",
    )
    .await;
    let expired = alice.envelope_with(&bob, "expired", now - 100, now - 1, b"x");
    f.expect("expired", SEND, bytes(&json!(expired)), 401, "expired")
        .await;
    let expires_now = alice.envelope_with(&bob, "expires-now", now - 100, now, b"x");
    f.expect(
        "expires_at == now",
        SEND,
        bytes(&json!(expires_now)),
        401,
        "expired",
    )
    .await;
    let too_long = alice.envelope_with(&bob, "too-long", now, now + 604_801, b"x");
    f.expect(
        "ttl over max_ttl",
        SEND,
        bytes(&json!(too_long)),
        400,
        "bad_request",
    )
    .await;
    let endless = alice.envelope_with(&bob, "endless", now, u64::MAX, b"x");
    f.expect(
        "expires_at u64::MAX",
        SEND,
        bytes(&json!(endless)),
        400,
        "bad_request",
    )
    .await;
    // The boundaries that are fine: created 299 s ahead, ttl exactly max_ttl.
    let ok_ahead = alice.envelope_with(&bob, "ok-ahead", now + 295, now + 3600, b"x");
    assert_deposit(
        "295 s ahead",
        &f.node.send(&ok_ahead).await,
        "ok-ahead",
        "accepted",
    );
    let sink = Identity::new();
    let max_ttl = alice.envelope_with(&sink, "max-ttl", now, now + 604_800, b"x");
    assert_deposit(
        "ttl == max_ttl",
        &f.node.send(&max_ttl).await,
        "max-ttl",
        "accepted",
    );

    assert_eq!(f.node.pending_ids(&bob).await, ["ok-ahead"]);
    f.assert_unharmed().await;
}

#[actix_rt::test]
async fn send_refuses_a_ciphertext_over_max_msg_bytes_with_413_too_large() {
    let f = Fixture::start(NodeConfig::default()).await;
    let (alice, bob, carol) = (Identity::new(), Identity::new(), Identity::new());
    let now = now_unix();
    let at_limit = alice.envelope_with(&bob, "at-limit", now, now + 60, &vec![7u8; 8192]);
    assert_deposit(
        "8192 bytes",
        &f.node.send(&at_limit).await,
        "at-limit",
        "accepted",
    );
    for (id, len) in [
        ("over-by-1", 8193usize),
        ("over-by-3", 8195),
        ("way-over", 40_000),
    ] {
        let envelope = carol.envelope_with(&bob, id, now, now + 60, &vec![7u8; len]);
        f.expect(
            &format!("{len} bytes"),
            SEND,
            bytes(&json!(envelope)),
            413,
            "too_large",
        )
        .await;
    }
    assert_eq!(f.node.pending_ids(&bob).await, ["at-limit"]);
    f.assert_unharmed().await;
}

#[actix_rt::test]
async fn a_configured_max_msg_bytes_is_enforced() {
    let f = Fixture::start(NodeConfig::default().env("MESH_DM_MAX_MSG_BYTES", 100)).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let now = now_unix();
    let ok = alice.envelope_with(&bob, "ok", now, now + 60, &[1u8; 100]);
    assert_deposit("100 bytes", &f.node.send(&ok).await, "ok", "accepted");
    let big = alice.envelope_with(&bob, "big", now, now + 60, &[1u8; 101]);
    f.expect("101 bytes", SEND, bytes(&json!(big)), 413, "too_large")
        .await;
    f.assert_unharmed().await;
}

// ----- Body size (every client endpoint) ------------------------------------------------------

#[actix_rt::test]
async fn bodies_over_64_kib_are_413_with_or_without_content_length() {
    let f = Fixture::start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    // Exactly 64 KiB (a valid request padded with spaces) is within the limit.
    let envelope = json!(alice.envelope_to(&bob, "padded"));
    let (status, body) = f.node.post_bytes(SEND, padded(&envelope, MAX_BODY)).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    let poll = bob.poll(8);
    let (status, body) = f.node.post_bytes(POLL, padded(&poll, MAX_BODY)).await;
    assert_eq!(status, 200, "64 KiB poll: {body}");
    let chunked_envelope = json!(alice.envelope_to(&bob, "chunked"));
    let chunks: Vec<Vec<u8>> = padded(&chunked_envelope, MAX_BODY)
        .chunks(10_000)
        .map(<[u8]>::to_vec)
        .collect();
    let (status, body) = post_chunked(&f.node.url, SEND, chunks).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "chunked 64 KiB: {body}"
    );

    // One byte more, a lot more, and a huge body: 413 on every endpoint, both ways.
    let requests = [
        (SEND, json!(alice.envelope_to(&bob, "over"))),
        (POLL, bob.poll(8)),
        (ACK, bob.ack(&["padded"])),
    ];
    for (path, valid) in &requests {
        for len in [MAX_BODY + 1, 2 * MAX_BODY, 1 << 20] {
            let body = padded(valid, len);
            f.expect(
                &format!("{len} bytes with Content-Length"),
                path,
                body.clone(),
                413,
                "too_large",
            )
            .await;
            let chunks: Vec<Vec<u8>> = body.chunks(4096).map(<[u8]>::to_vec).collect();
            let got = post_chunked(&f.node.url, path, chunks).await;
            assert_error(
                &format!("{path}: {len} bytes chunked"),
                &got,
                413,
                "too_large",
            );
        }
        // Not even JSON: the size is checked first.
        f.expect("100000 '['", path, vec![b'['; 100_000], 413, "too_large")
            .await;
    }
    // The oversized ack acknowledged nothing; the oversized envelope was not stored.
    let mut ids = f.node.pending_ids(&bob).await;
    ids.sort();
    assert_eq!(ids, ["chunked", "padded"]);
    f.assert_unharmed().await;
}

// ----- POST /api/mesh/dm/poll -----------------------------------------------------------------

#[actix_rt::test]
async fn poll_refuses_ill_formed_and_forged_requests() {
    let f = Fixture::start(NodeConfig::default()).await;
    let bob = Identity::new();
    let now = now_unix();
    let valid = bob.poll_with(now, &random_hex(16).unwrap(), Some(8));

    for (what, body) in not_an_object(&valid) {
        f.expect(what, POLL, body, 400, "bad_request").await;
    }
    for field in ["mailbox", "ts", "nonce", "sig"] {
        f.expect(
            &format!("missing {field}"),
            POLL,
            without(&valid, field),
            400,
            "bad_request",
        )
        .await;
    }
    for field in ["ts", "limit"] {
        for (what, raw) in BAD_U64S {
            if field == "limit" && what == "null" {
                continue; // `"limit": null` reads as absent (the default).
            }
            let body = with_raw(&valid, field, raw);
            f.expect(&format!("{field} {what}"), POLL, body, 400, "bad_request")
                .await;
        }
    }
    f.expect(
        "limit 101",
        POLL,
        with(&valid, "limit", json!(101)),
        400,
        "bad_request",
    )
    .await;
    f.expect(
        "limit u64::MAX",
        POLL,
        with(&valid, "limit", json!(u64::MAX)),
        400,
        "bad_request",
    )
    .await;
    for field in ["mailbox", "sig"] {
        let good = valid[field].as_str().unwrap().to_string();
        for (what, bad) in bad_hex(&good) {
            let body = with(&valid, field, bad);
            f.expect(&format!("{field} {what}"), POLL, body, 400, "bad_request")
                .await;
        }
    }
    for (what, nonce) in [
        ("15 chars", json!("a".repeat(15))),
        ("65 chars", json!("a".repeat(65))),
        ("uppercase", json!("A".repeat(16))),
        ("non-hex", json!("g".repeat(16))),
        ("empty", json!("")),
        ("number", json!(1234567890123456u64)),
    ] {
        f.expect(
            &format!("nonce {what}"),
            POLL,
            with(&valid, "nonce", nonce),
            400,
            "bad_request",
        )
        .await;
    }

    // The shortest and longest nonces are fine.
    for len in [8, 32] {
        let nonce = random_hex(len).unwrap();
        let (status, body) = f
            .node
            .post(POLL, &bob.poll_with(now_unix(), &nonce, Some(8)))
            .await;
        assert_eq!(status, 200, "{}-char nonce: {body}", 2 * len);
    }
    // 401 bad_signature: forged, tampered, signed by someone else.
    let forged = with(&valid, "sig", Value::from(random_hex(64).unwrap()));
    f.expect("random signature", POLL, forged, 401, "bad_signature")
        .await;
    for (field, value) in [
        ("limit", json!(9)),
        ("ts", json!(now - 1)),
        ("nonce", json!(random_hex(16).unwrap())),
    ] {
        let body = with(&valid, field, value);
        f.expect(
            &format!("{field} changed after signing"),
            POLL,
            body,
            401,
            "bad_signature",
        )
        .await;
    }
    let mallory = Identity::new();
    let mut claimed = mallory.poll(8);
    claimed["mailbox"] = Value::from(f.bystander.hex());
    f.expect(
        "bystander polled by another key",
        POLL,
        bytes(&claimed),
        401,
        "bad_signature",
    )
    .await;
    // 401 stale.
    let stale = bob.poll_with(now - 400, &random_hex(16).unwrap(), Some(8));
    f.expect("ts 400 s old", POLL, bytes(&stale), 401, "stale")
        .await;
    // None of the refused requests spent its nonce: the valid one still works, once.
    let (status, body) = f.node.post(POLL, &valid).await;
    assert_eq!(status, 200, "{body}");
    f.expect("replay", POLL, bytes(&valid), 401, "replay").await;
    f.assert_unharmed().await;
}

// ----- POST /api/mesh/dm/ack ------------------------------------------------------------------

#[actix_rt::test]
async fn ack_refuses_ill_formed_and_forged_acks() {
    let f = Fixture::start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_deposit(
        "m1",
        &f.node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    let now = now_unix();
    let valid = bob.ack_at(&["m1"], now);

    for (what, body) in not_an_object(&valid) {
        f.expect(what, ACK, body, 400, "bad_request").await;
    }
    for field in ["v", "mailbox", "ts", "msg_ids", "sig"] {
        f.expect(
            &format!("missing {field}"),
            ACK,
            without(&valid, field),
            400,
            "bad_request",
        )
        .await;
    }
    for v in ["0", "2"] {
        f.expect(
            &format!("v={v}"),
            ACK,
            with_raw(&valid, "v", v),
            400,
            "bad_request",
        )
        .await;
    }
    for field in ["v", "ts"] {
        for (what, raw) in BAD_U64S {
            let body = with_raw(&valid, field, raw);
            f.expect(&format!("{field} {what}"), ACK, body, 400, "bad_request")
                .await;
        }
    }
    for field in ["mailbox", "sig"] {
        let good = valid[field].as_str().unwrap().to_string();
        for (what, bad) in bad_hex(&good) {
            let body = with(&valid, field, bad);
            f.expect(&format!("{field} {what}"), ACK, body, 400, "bad_request")
                .await;
        }
    }
    // msg_ids: 1..=100 well-formed ids.
    let many: Vec<String> = (0..101).map(|i| format!("id{i}")).collect();
    let long_id = "a".repeat(129);
    for (what, ids) in [
        ("no ids", json!([])),
        ("101 ids", json!(many)),
        ("a bad id", json!(["m1", "a b"])),
        ("an empty id", json!(["m1", ""])),
        ("a 129-char id", json!([long_id])),
        ("a number", json!([1])),
        ("a string, not a list", json!("m1")),
        ("null", Value::Null),
    ] {
        f.expect(
            &format!("msg_ids {what}"),
            ACK,
            with(&valid, "msg_ids", ids),
            400,
            "bad_request",
        )
        .await;
    }

    // 401 bad_signature and stale.
    let forged = with(&valid, "sig", Value::from(random_hex(64).unwrap()));
    f.expect("random signature", ACK, forged, 401, "bad_signature")
        .await;
    for (field, value) in [("msg_ids", json!(["m1", "m2"])), ("ts", json!(now - 1))] {
        let body = with(&valid, field, value);
        f.expect(
            &format!("{field} changed after signing"),
            ACK,
            body,
            401,
            "bad_signature",
        )
        .await;
    }
    let mallory = Identity::new();
    let mut claimed = mallory.ack(&["bystander-1"]);
    claimed["mailbox"] = Value::from(f.bystander.hex());
    f.expect(
        "bystander acked by another key",
        ACK,
        bytes(&claimed),
        401,
        "bad_signature",
    )
    .await;
    let stale = bob.ack_at(&["m1"], now - 400);
    f.expect("ts 400 s old", ACK, bytes(&stale), 401, "stale")
        .await;
    let future = bob.ack_at(&["m1"], now + 400);
    f.expect("ts 400 s ahead", ACK, bytes(&future), 401, "stale")
        .await;

    // Nothing was acknowledged by the refused acks; 100 ids is fine.
    assert_eq!(f.node.pending_ids(&bob).await, ["m1"]);
    let mut hundred: Vec<String> = (1..100).map(|i| format!("x{i}")).collect();
    hundred.push("m1".into());
    let refs: Vec<&str> = hundred.iter().map(String::as_str).collect();
    let (status, body) = f.node.ack(&bob, &refs).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["removed"].as_u64(), body["unknown"].as_u64()),
        (Some(1), Some(99))
    );
    f.assert_unharmed().await;
}

// ----- Unknown fields ---------------------------------------------------------------------------

#[actix_rt::test]
async fn unknown_fields_are_ignored_and_never_echoed() {
    let f = Fixture::start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let envelope = alice.envelope_to(&bob, "extra");
    let mut with_extras = json!(envelope);
    with_extras["x_marker"] = json!("LEAKED-FIELD");
    with_extras["attachments"] = json!({"nested": ["LEAKED-NESTED"]});
    with_extras["priority"] = json!(1e300);
    assert_deposit(
        "extras",
        &f.node.post(SEND, &with_extras).await,
        "extra",
        "accepted",
    );

    let mut poll = bob.poll(8);
    poll["x_marker"] = json!("LEAKED-POLL");
    let (status, body) = f.node.post(POLL, &poll).await;
    assert_eq!(status, 200, "{body}");
    let text = body.to_string();
    for marker in ["LEAKED", "x_marker", "attachments", "priority"] {
        assert!(!text.contains(marker), "{marker} echoed back: {text}");
    }
    assert_eq!(
        body["messages"],
        json!([envelope]),
        "exactly the envelope's own fields"
    );

    let mut ack = bob.ack(&["extra"]);
    ack["x_marker"] = json!("LEAKED-ACK");
    let (status, body) = f.node.post(ACK, &ack).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");
    assert!(!body.to_string().contains("LEAKED"));
    f.assert_unharmed().await;
}

// ----- Unknown paths and methods ----------------------------------------------------------------

fn assert_json_error(what: &str, got: &(u16, Value), status: u16) {
    let (got_status, body) = got;
    assert_eq!(*got_status, status, "{what}: {body}");
    assert_eq!(body["ok"], Value::Bool(false), "{what}: {body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{what}: {body}"
    );
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| !d.trim().is_empty()),
        "{what}: {body}"
    );
}

#[actix_rt::test]
async fn unknown_paths_are_404_json_and_wrong_methods_405_json() {
    let f = Fixture::start(NodeConfig::default()).await;
    let url = &f.node.url;
    for path in [
        "/",
        "/nope",
        "/api/mesh/dm",
        "/api/mesh/dm/sendx",
        "/api/mesh/dm/send/extra",
    ] {
        for method in ["GET", "POST"] {
            let got = request(method, url, path).await;
            assert_json_error(&format!("{method} {path}"), &got, 404);
            assert_eq!(got.1["error"], "not_found");
        }
    }
    for path in CLIENT_PATHS {
        for method in ["GET", "PUT", "DELETE", "PATCH"] {
            let got = request(method, url, path).await;
            assert_json_error(&format!("{method} {path}"), &got, 405);
            assert_eq!(got.1["error"], "method_not_allowed");
        }
    }
    for path in ["/health", "/metrics"] {
        let got = request("POST", url, path).await;
        assert_json_error(&format!("POST {path}"), &got, 405);
    }
    f.assert_unharmed().await;
}

// ----- 429 rate_limited -------------------------------------------------------------------------

/// Poll nonces one mailbox may spend within the replay window before polls are refused
/// (`MailboxLimits::nonces`): the node refuses rather than forget a nonce, which would let an
/// old poll be replayed.
const NONCES_PER_WINDOW: usize = 4096;

#[actix_rt::test]
async fn too_many_polls_of_one_mailbox_are_429_rate_limited_with_retry_after() {
    let f = Fixture::start(NodeConfig::default()).await;
    let bob = Identity::new();
    let requests: Vec<Vec<u8>> = (0..NONCES_PER_WINDOW)
        .map(|_| bytes(&bob.poll(0)))
        .collect();
    let queue = std::rc::Rc::new(std::cell::RefCell::new(requests));
    let workers: Vec<_> = (0..32)
        .map(|_| {
            let (url, queue) = (f.node.url.clone(), queue.clone());
            actix_rt::spawn(async move {
                loop {
                    let Some(body) = queue.borrow_mut().pop() else {
                        return;
                    };
                    let (status, reply) = common::post_raw(&url, POLL, body).await;
                    assert_eq!(status, 200, "{reply}");
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let (status, body, headers) =
        common::post_with_headers(&f.node.url, POLL, bytes(&bob.poll(0))).await;
    assert_error("one poll too many", &(status, body), 429, "rate_limited");
    let retry_after = headers
        .iter()
        .find(|(k, _)| k == "retry-after")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "429 rate_limited carries Retry-After: {headers:?}"
    );
    // Only that mailbox is limited.
    assert_eq!(f.node.poll(&Identity::new(), 8).await.0, 200);
    f.assert_unharmed().await;
}

#[actix_rt::test]
async fn with_a_separate_peer_listener_the_client_plane_is_served_only_on_its_own_address() {
    // SPEC §8: with MESH_DM_PEER_LISTEN each plane is served only on its own address; §6.4:
    // /health answers there too.
    let node = Node::start(NodeConfig {
        separate_peer_lane: true,
        ..NodeConfig::default()
    });
    node.ready().await;
    assert_ne!(node.url, node.peer_url);
    node.ready_peer_lane().await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let envelope = json!(alice.envelope_to(&bob, "m1"));
    let requests = [
        (SEND, envelope.clone()),
        (POLL, bob.poll(8)),
        (ACK, bob.ack(&["m1"])),
    ];
    for (path, body) in &requests {
        let got = common::post_raw(&node.peer_url, path, bytes(body)).await;
        assert_json_error(&format!("{path} on the peer address"), &got, 404);
    }
    assert_eq!(request("GET", &node.peer_url, "/health").await.0, 200);
    // Nothing sent to the peer address was stored; the client address works.
    assert!(node.pending_ids(&bob).await.is_empty());
    assert_deposit(
        "client address",
        &node.post(SEND, &envelope).await,
        "m1",
        "accepted",
    );
}
