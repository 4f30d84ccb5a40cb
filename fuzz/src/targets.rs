//! The fuzz targets of dmrelay: one function per parser that reads bytes from outside.
//!
//! Each function takes the raw bytes a hostile client or peer could send and runs them through
//! the same entry points the node uses (parse, then verify), checking invariants that must
//! hold for every input: what parses serializes back to an equal value, a batch never holds
//! more than its limit, a body reader returns exactly the bytes sent or `too_large`. A panic
//! anywhere is a finding. libFuzzer calls them from `fuzz_targets/*.rs`; `tests/fuzz_corpus.rs`
//! in the main crate includes this very file and replays the committed seeds and regressions
//! under `cargo test`, so a fixed finding stays fixed without cargo-fuzz.

use actix_web::error::PayloadError;
use actix_web::http::header::{CONTENT_LENGTH, HeaderValue};
use actix_web::web::Bytes;
use dmrelay::http::body::{declared_length, read_limited};
use dmrelay::http::error::ApiError;
use dmrelay::http::peer::{ack_batch_items, envelope_batch_items};
use dmrelay::peer::apply::{Checked, Replica};
use dmrelay::peer::sync::FeedReply;
use dmrelay::protocol::wire::MAX_ITEMS_PER_BATCH;
use dmrelay::protocol::{AckObject, Envelope, EnvelopeLimits, PollRequest};
use std::future::Future;
use std::task::{Context, Poll, Waker};

/// A clock inside the time windows of the vectors in `../shared/vectors.json`, so that seeds
/// derived from them reach the signature checks.
pub const NOW: u64 = 1_764_000_300;
/// Largest `max_ttl` a node may be configured with is not bounded; the default is what runs.
const MAX_TTL_S: u64 = 604_800;

/// A fuzz target: takes any bytes, panics on a finding.
pub type Target = fn(&[u8]);

/// Every target by name (the directory names under `fuzz/seeds` and `fuzz/regressions`).
pub const ALL: &[(&str, Target)] = &[
    ("envelope", envelope),
    ("poll", poll),
    ("ack", ack),
    ("peer_batch", peer_batch),
    ("feed_page", feed_page),
    ("body_reader", body_reader),
];

/// SPEC §3: a deposit body, parsed and verified as `POST /send` does.
pub fn envelope(data: &[u8]) {
    let limits = EnvelopeLimits::default();
    let Ok(envelope) = Envelope::parse(data, &limits) else {
        return;
    };
    check_envelope(&envelope, &limits);
}

fn check_envelope(envelope: &Envelope, limits: &EnvelopeLimits) {
    // What the node stores and forwards reads back as the very same envelope, both through
    // the client parser and through the store's deserializer.
    let json = serde_json::to_vec(envelope).expect("an envelope serializes");
    let reparsed = Envelope::parse(&json, limits).expect("a serialized envelope parses");
    assert_eq!(&reparsed, envelope);
    let stored: Envelope = serde_json::from_slice(&json).expect("the stored form reads back");
    assert_eq!(&stored, envelope);
    // A clock that passes the time window reaches the signature check; the extremes must not
    // overflow anywhere.
    for now in [envelope.created_at, NOW, 0, u64::MAX] {
        let _ = envelope.verify(now, limits);
    }
}

/// SPEC §6.2: a poll body, parsed and verified as `POST /poll` does.
pub fn poll(data: &[u8]) {
    let Ok(request) = PollRequest::parse(data) else {
        return;
    };
    assert!(request.limit <= dmrelay::protocol::poll::MAX_POLL_LIMIT);
    let json = serde_json::to_vec(&request.to_json()).expect("a poll serializes");
    let reparsed = PollRequest::parse(&json).expect("a serialized poll parses");
    assert_eq!(reparsed, request);
    for now in [request.ts, NOW, 0, u64::MAX] {
        let _ = request.verify(now);
    }
}

/// SPEC §6.3: an ack body, parsed and verified as `POST /ack` does (and as a replica).
pub fn ack(data: &[u8]) {
    let Ok(ack) = AckObject::parse(data) else {
        return;
    };
    check_ack(&ack);
}

fn check_ack(ack: &AckObject) {
    assert!((1..=dmrelay::protocol::ack::MAX_ACK_IDS).contains(&ack.msg_ids.len()));
    let json = serde_json::to_vec(ack).expect("an ack serializes");
    let reparsed = AckObject::parse(&json).expect("a serialized ack parses");
    assert_eq!(&reparsed, ack);
    let stored: AckObject = serde_json::from_slice(&json).expect("the stored form reads back");
    assert_eq!(&stored, ack);
    for now in [ack.ts, NOW, 0, u64::MAX] {
        let _ = ack.verify_fresh(now);
        let _ = ack.verify_replica(now, MAX_TTL_S);
    }
}

/// SPEC §7.1–7.2: a peer's `replicate-envelope` or `replicate-ack` body (after the HMAC),
/// split into items and each item checked as the handlers do.
pub fn peer_batch(data: &[u8]) {
    let limits = EnvelopeLimits::default();
    if let Ok(batch) = envelope_batch_items(data) {
        assert!(batch.items.len() <= MAX_ITEMS_PER_BATCH);
        for item in batch.items {
            let parsed = Envelope::from_value(item.clone(), &limits);
            let replica = Envelope::replica(item, &limits, NOW);
            if let Ok(replica) = &replica {
                assert_eq!(
                    parsed.as_ref().ok(),
                    Some(replica),
                    "a replica is a parsed item"
                );
            }
            if let Ok(envelope) = parsed {
                check_envelope(&envelope, &limits);
            }
        }
    }
    if let Ok(batch) = ack_batch_items(data) {
        assert!(batch.items.len() <= MAX_ITEMS_PER_BATCH);
        for item in batch.items {
            if let Ok(ack) = AckObject::from_value(item.clone()) {
                check_ack(&ack);
            }
            let _ = AckObject::replica(item, NOW, MAX_TTL_S);
        }
    }
}

/// SPEC §7.3: a page of a peer's `/changes` feed, as the puller reads and applies it.
pub fn feed_page(data: &[u8]) {
    let Ok(page) = FeedReply::parse(data) else {
        return;
    };
    let limits = EnvelopeLimits::default();
    for change in page.changes {
        let Some(replica) = Replica::from_change(&change) else {
            continue;
        };
        match replica.check(&limits, NOW) {
            Checked::Envelope(envelope) => {
                envelope
                    .verify(NOW, &limits)
                    .expect("an applied feed envelope verifies");
                check_envelope(&envelope, &limits);
            }
            Checked::Ack(ack) => {
                ack.verify_replica(NOW, MAX_TTL_S)
                    .expect("an applied feed ack verifies");
                check_ack(&ack);
            }
            Checked::Refused(_) => {}
        }
    }
}

/// The body reader both planes use (`read_limited`): the input describes a limit, a
/// `Content-Length` header and a body sent in chunks. The reader must return exactly the body
/// when it fits, `too_large` when the body or the declared length exceeds the limit, and
/// `bad_request` for a broken stream, never anything else, and never wait.
///
/// Layout: bytes 0–1 the limit (little endian, mod 2048), byte 2 the header mode, byte 3 the
/// chunk size (0 means 1), byte 4 where a stream error is injected (255: none), then for header
/// mode 3 up to 8 raw header bytes after a 1-byte length, then the body.
pub fn body_reader(data: &[u8]) {
    let [l0, l1, mode, chunk, fail_at, rest @ ..] = data else {
        return;
    };
    let limit = usize::from(u16::from_le_bytes([*l0, *l1])) % 2048;
    let (header, body): (Option<Vec<u8>>, &[u8]) = match mode % 4 {
        0 => (None, rest),
        1 => (Some(rest.len().to_string().into_bytes()), rest),
        2 => {
            // A declared length that lies (shorter or longer than the body).
            let lie = rest
                .len()
                .wrapping_add(usize::from(*chunk))
                .saturating_sub(128);
            (Some(lie.to_string().into_bytes()), rest)
        }
        _ => {
            let Some((len, rest)) = rest.split_first() else {
                return;
            };
            let len = usize::from(*len % 9).min(rest.len());
            (Some(rest[..len].to_vec()), &rest[len..])
        }
    };
    let mut request = actix_web::test::TestRequest::post();
    if let Some(value) = header
        .as_deref()
        .and_then(|h| HeaderValue::from_bytes(h).ok())
    {
        request = request.insert_header((CONTENT_LENGTH, value));
    }
    let request = request.to_http_request();
    let declared = declared_length(&request);

    let chunk_size = usize::from(*chunk).max(1);
    let mut chunks: Vec<Result<Bytes, PayloadError>> = body
        .chunks(chunk_size)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let failing = usize::from(*fail_at) < 255 && usize::from(*fail_at) <= chunks.len();
    if failing {
        chunks.insert(usize::from(*fail_at), Err(PayloadError::Incomplete(None)));
    }
    let before_error: usize = if failing {
        body.len().min(usize::from(*fail_at) * chunk_size)
    } else {
        body.len()
    };
    let stream = futures_util::stream::iter(chunks);

    let mut reading = std::pin::pin!(read_limited(&request, stream, limit));
    let Poll::Ready(result) = reading
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    else {
        panic!("the body reader waited on a stream that is always ready");
    };
    let declared_too_large = declared.is_some_and(|d| d > limit as u64);
    match result {
        Ok(read) => {
            assert!(!failing, "a broken stream must not read as a whole body");
            assert!(
                !declared_too_large,
                "a declared length over the limit is refused"
            );
            assert!(read.len() <= limit);
            assert_eq!(&read[..], body);
        }
        Err(ApiError::TooLarge(_)) => {
            // Refused up front for the declared length, or as soon as the bytes read so far
            // exceed the limit.
            assert!(declared_too_large || before_error > limit);
        }
        Err(ApiError::BadRequest(_)) => {
            assert!(failing && !declared_too_large && before_error <= limit);
        }
        Err(other) => panic!("unexpected body reader error: {other:?}"),
    }
}
