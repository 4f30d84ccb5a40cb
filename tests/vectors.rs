//! Every entry of `../shared/vectors.json` against the implementation, byte for byte.

use dmrelay::peer::auth::{derive_peer_key, derive_prk, sign_request, verify_request};
use dmrelay::peer::url::normalize_peer_url;
use dmrelay::protocol::signature::{verify_batch, verify_one};
use dmrelay::protocol::{
    AckObject, Envelope, EnvelopeLimits, PollRequest, SignatureCheck, Signed, signing_key_from_hex,
};
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

/// Every signature of the vectors, under the node's rule: each alone, all in one batch, and a
/// batch in which one of them is spoiled answers false for that one only.
#[test]
fn every_signature_verifies_alone_and_in_one_batch() {
    let v = vectors();
    let limits = EnvelopeLimits::default();
    let envelope = Envelope::parse(
        &serde_json::to_vec(&v["envelope"]["json"]).unwrap(),
        &limits,
    )
    .unwrap();
    let sealed = Envelope::from_value(v["payload"]["envelope"].clone(), &limits).unwrap();
    let poll = PollRequest::parse(&serde_json::to_vec(&v["poll"]["json"]).unwrap()).unwrap();
    let ack = AckObject::parse(&serde_json::to_vec(&v["ack"]["json"]).unwrap()).unwrap();
    let signed: [&dyn Signed; 4] = [&envelope, &sealed, &poll, &ack];
    let checks: Vec<SignatureCheck> = signed.iter().map(|s| s.signature_check()).collect();
    for (check, what) in checks
        .iter()
        .zip(["envelope", "payload envelope", "poll", "ack"])
    {
        assert!(verify_one(check), "{what}");
    }
    assert_eq!(verify_batch(&checks), vec![true; 4]);
    for spoiled in 0..checks.len() {
        let mut batch = checks.clone();
        let mut message = batch[spoiled].message().to_vec();
        message.push(b'\n');
        batch[spoiled] =
            SignatureCheck::new(*batch[spoiled].key(), message, *batch[spoiled].signature());
        let mut expected = vec![true; 4];
        expected[spoiled] = false;
        assert_eq!(verify_batch(&batch), expected);
    }
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

// ---------------------------------------------------------------------------------------------
// SPEC Appendix A (`sbdm-box-v1`): the `payload` entry, byte for byte.

mod payload_vectors {
    use super::{s, vectors};
    use base64::Engine as _;
    use dmrelay::client::message::{Content, open_received};
    use dmrelay::client::payload::{
        self, NONCE_BYTES, OpenError, pad, plaintext_json, seal_with_nonce, x25519_public,
        x25519_secret,
    };
    use dmrelay::protocol::{Envelope, MailboxKey, MsgId, signing_key_from_hex};
    use ed25519_dalek::SigningKey;
    use serde_json::Value;

    fn key(v: &Value, who: &str) -> SigningKey {
        signing_key_from_hex(s(v, &["keys", who, "seed"])).unwrap()
    }

    fn mailbox(key: &SigningKey) -> MailboxKey {
        MailboxKey::of(key)
    }

    fn unhex(v: &Value, field: &str) -> Vec<u8> {
        hex::decode(s(v, &["payload", field])).unwrap()
    }

    /// The message and time inside the vector's plaintext JSON.
    fn text_and_time(v: &Value) -> (String, u64) {
        let plain: Value = serde_json::from_str(s(v, &["payload", "plaintext_json"])).unwrap();
        (
            plain["text"].as_str().unwrap().to_string(),
            plain["sent_at"].as_u64().unwrap(),
        )
    }

    #[test]
    fn x25519_keys_derive_from_the_ed25519_keys_as_libsodium_does() {
        let v = vectors();
        for who in ["alice", "bob"] {
            let ed = key(&v, who);
            assert_eq!(
                hex::encode(x25519_secret(&ed)),
                s(&v, &["payload", &format!("{who}_x25519_secret_hex")]),
                "{who}: crypto_sign_ed25519_sk_to_curve25519"
            );
            assert_eq!(
                hex::encode(x25519_public(&mailbox(&ed)).unwrap()),
                s(&v, &["payload", &format!("{who}_x25519_public_hex")]),
                "{who}: crypto_sign_ed25519_pk_to_curve25519"
            );
        }
    }

    #[test]
    fn plaintext_json_and_padding_are_byte_exact() {
        let v = vectors();
        let (text, sent_at) = text_and_time(&v);
        let json = plaintext_json(&text, sent_at);
        assert_eq!(json, s(&v, &["payload", "plaintext_json"]).as_bytes());
        let padded = pad(&json);
        assert_eq!(padded, unhex(&v, "padded_plaintext_hex"));
        assert_eq!(padded.len() % 256, 0);
    }

    #[test]
    fn sealing_with_the_fixed_nonce_gives_the_recorded_box_and_envelope() {
        let v = vectors();
        let (alice, bob) = (key(&v, "alice"), key(&v, "bob"));
        let (text, sent_at) = text_and_time(&v);
        let nonce: [u8; NONCE_BYTES] = unhex(&v, "nonce_hex").try_into().unwrap();
        let sealed = seal_with_nonce(&alice, &mailbox(&bob), &text, sent_at, nonce).unwrap();
        assert_eq!(
            hex::encode(&sealed),
            s(&v, &["payload", "ciphertext_bytes_hex"])
        );

        let recorded = &v["payload"]["envelope"];
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(&sealed),
            recorded["ciphertext"].as_str().unwrap()
        );
        // Signing that box as Alice gives the recorded envelope, signature included.
        let envelope = Envelope::sign(
            &alice,
            mailbox(&bob),
            MsgId::parse("msg_id", recorded["msg_id"].as_str().unwrap()).unwrap(),
            recorded["created_at"].as_u64().unwrap(),
            recorded["expires_at"].as_u64().unwrap(),
            &sealed,
        );
        assert_eq!(&serde_json::to_value(&envelope).unwrap(), recorded);
    }

    #[test]
    fn the_recorded_envelope_verifies_and_opens_for_bob() {
        let v = vectors();
        let bob = key(&v, "bob");
        let (text, sent_at) = text_and_time(&v);
        let received = open_received(&bob, &v["payload"]["envelope"]);
        assert_eq!(
            received.content,
            Content::Read(payload::Plaintext { text, sent_at })
        );
        assert_eq!(
            received.sender.as_deref(),
            Some(s(&v, &["keys", "alice", "public"]))
        );
        assert_eq!(received.msg_id.unwrap().as_str(), "dm_box_0001");
    }

    #[test]
    fn the_box_does_not_open_with_the_wrong_sender_key() {
        let v = vectors();
        let bob = key(&v, "bob");
        let wrong = MailboxKey::parse(
            "wrong_sender_public",
            s(&v, &["payload", "must_not_open", "wrong_sender_public"]),
        )
        .unwrap();
        let sealed = unhex(&v, "ciphertext_bytes_hex");
        assert_eq!(
            payload::open(&bob, &wrong, &sealed),
            Err(OpenError::BoxFailed)
        );
        // With the right sender it opens: the failure above is the key's doing.
        assert!(payload::open(&bob, &mailbox(&key(&v, "alice")), &sealed).is_ok());
    }

    #[test]
    fn tampering_fails_at_the_signature_or_at_the_box() {
        let v = vectors();
        let (alice, bob) = (key(&v, "alice"), key(&v, "bob"));
        let recorded = &v["payload"]["envelope"];
        let sealed = unhex(&v, "ciphertext_bytes_hex");
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 0x01;
        assert_eq!(
            payload::open(&bob, &mailbox(&alice), &flipped),
            Err(OpenError::BoxFailed)
        );

        // A relay that swaps the ciphertext breaks the signature.
        let mut swapped = recorded.clone();
        swapped["ciphertext"] = base64::engine::general_purpose::STANDARD
            .encode(&flipped)
            .into();
        assert_eq!(
            open_received(&bob, &swapped).error_code(),
            Some("bad_signature")
        );

        // Mallory re-signs Alice's box as her own: the signature holds, the box does not open,
        // because it is bound to the sender that wrote it.
        let mallory = SigningKey::from_bytes(&[3; 32]);
        let resigned = Envelope::sign(
            &mallory,
            mailbox(&bob),
            MsgId::parse("msg_id", "dm_box_0001").unwrap(),
            recorded["created_at"].as_u64().unwrap(),
            recorded["expires_at"].as_u64().unwrap(),
            &sealed,
        );
        let received = open_received(&bob, &serde_json::to_value(&resigned).unwrap());
        assert_eq!(
            received.content,
            Content::Undecryptable(OpenError::BoxFailed)
        );
    }
}
