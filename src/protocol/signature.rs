//! Ed25519 verification (SPEC §1: RFC 8032, pure) under one rule that a single check and a
//! batch check both implement exactly, so that batching never changes an answer.
//!
//! # The rule
//!
//! 1. **Screening**, before any equation: `S` is canonical (`S < ℓ`); the public key `A` and the
//!    signature's `R` are canonical encodings (their `y < p`, and no sign bit on an `x = 0`
//!    point: what decompressing and compressing again gives back unchanged), decompress, and
//!    are not of small order.
//! 2. **Equation**, cofactored, RFC 8032 §5.1.7's own check: `[8][S]B = [8]R + [8][k]A` with
//!    `k = SHA-512(R ‖ A ‖ M) mod ℓ`.
//!
//! A batch checks `[8](−(Σ zᵢSᵢ)B + Σ zᵢRᵢ + Σ (zᵢkᵢ)Aᵢ) = 0` with random 128-bit `zᵢ` drawn from
//! the operating system once per batch, so no signer can predict them. Every item that holds
//! alone makes its term vanish once multiplied by 8, so a batch of good signatures always holds;
//! a batch with a bad one fails except with probability about 2⁻¹²⁵. The items of a failed batch
//! are then checked one by one (see [`verify_batch`]), so that every item gets its own answer.
//!
//! # Why not `verify_strict`
//!
//! ed25519-dalek's `verify_strict` is cofactorless (`[S]B = R + [k]A`). No batch equation can
//! agree with that: a signer who adds a small-order point to `R` is refused by it, while a
//! batch accepts such a signature with probability at least 1/8 (always, if cofactored), and
//! ed25519-dalek's own `verify_batch` is cofactorless with coefficients the signer can grind.
//! Refusing torsion in `R` per signature would cost as much as verifying it. So single and batch
//! both use the cofactored equation (the ZIP-215 approach of Zcash's ed25519-zebra) plus the
//! strict screening above. The only signatures whose outcome differs from `verify_strict` are
//! those whose `R` carries a torsion component (accepted here), which no honest signer makes,
//! and those whose key `A` is a non-canonical encoding (refused here).

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use sha2::{Digest, Sha512};

/// One signature to verify: the signer's public key, the signed bytes and the signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    key: [u8; 32],
    message: Vec<u8>,
    sig: [u8; 64],
}

impl SignatureCheck {
    pub fn new(key: [u8; 32], message: Vec<u8>, sig: [u8; 64]) -> Self {
        Self { key, message, sig }
    }

    pub fn key(&self) -> &[u8; 32] {
        &self.key
    }

    pub fn message(&self) -> &[u8] {
        &self.message
    }

    pub fn signature(&self) -> &[u8; 64] {
        &self.sig
    }
}

/// Whether `key` passes the screening of a public key (canonical, on the curve, not of small
/// order): a signature under any other key is refused whatever it is.
pub fn key_is_usable(key: &[u8; 32]) -> bool {
    decode_point(key).is_some()
}

/// Verifies one signature under the rule of this module.
pub fn verify_one(check: &SignatureCheck) -> bool {
    screen(check).is_some_and(|screened| screened.holds_alone())
}

/// Verifies every signature of `checks` under the rule of this module, as [`verify_one`] would
/// answer each, in one multiscalar multiplication when they are all good.
///
/// When the batch fails, every item is checked alone, so a bad signature costs its batch one
/// batch equation more than checking each alone would (measured by `dmrelay-bench --runs
/// verify`).
pub fn verify_batch(checks: &[SignatureCheck]) -> Vec<bool> {
    let mut valid = vec![false; checks.len()];
    let screened: Vec<(usize, Screened)> = checks
        .iter()
        .enumerate()
        .filter_map(|(index, check)| screen(check).map(|screened| (index, screened)))
        .collect();
    if screened.len() <= 1 {
        for (index, screened) in &screened {
            valid[*index] = screened.holds_alone();
        }
        return valid;
    }
    let mut randomness = vec![0u8; 16 * screened.len()];
    if getrandom::fill(&mut randomness).is_err() {
        // Without unpredictable coefficients a batch could be fooled: check each alone.
        for (index, screened) in &screened {
            valid[*index] = screened.holds_alone();
        }
        return valid;
    }
    let items: Vec<BatchItem> = screened
        .into_iter()
        .zip(randomness.chunks_exact(16))
        .map(|((index, screened), random)| {
            let mut z = [0u8; 32];
            z[..16].copy_from_slice(random);
            BatchItem {
                index,
                // Below 2¹²⁸ < ℓ: the 16 random bytes are the coefficient itself.
                z: Scalar::from_bytes_mod_order(z),
                screened,
            }
        })
        .collect();
    settle(&items, &mut valid);
    valid
}

/// A signature past the screening: the values of its equation.
#[derive(Debug, Clone, Copy)]
struct Screened {
    s: Scalar,
    r: EdwardsPoint,
    a: EdwardsPoint,
    /// `SHA-512(R ‖ A ‖ M) mod ℓ`.
    k: Scalar,
}

impl Screened {
    /// `[8]([S]B − [k]A − R) = 0`.
    fn holds_alone(&self) -> bool {
        let expected_r =
            EdwardsPoint::vartime_double_scalar_mul_basepoint(&self.k, &-self.a, &self.s);
        (expected_r - self.r).mul_by_cofactor().is_identity()
    }
}

/// A screened signature in a batch, with its random coefficient and its place in the answer.
struct BatchItem {
    index: usize,
    z: Scalar,
    screened: Screened,
}

/// Step 1 of the rule; `None` if the signature is refused before any equation.
fn screen(check: &SignatureCheck) -> Option<Screened> {
    let mut r_bytes = [0u8; 32];
    let mut s_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&check.sig[..32]);
    s_bytes.copy_from_slice(&check.sig[32..]);
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let a = SENDER_KEYS.with_borrow_mut(|keys| keys.decode(&check.key))?;
    let r = decode_point(&r_bytes)?;
    let hash: [u8; 64] = Sha512::new()
        .chain_update(r_bytes)
        .chain_update(check.key)
        .chain_update(&check.message)
        .finalize()
        .into();
    let k = Scalar::from_bytes_mod_order_wide(&hash);
    Some(Screened { s, r, a, k })
}

/// Public keys decoded before, per thread. Decoding a key costs an exponentiation (a fifth of a
/// signature check under `wrk` deposits, with `R` the other half), and the same senders and
/// mailbox keys sign again and again. A signature's `R` is new each time and is not cached.
///
/// Two generations bound it: lookups go to `recent`, then to `older` (moving the key back to
/// `recent`); when `recent` holds [`SenderKeys::GENERATION`] keys it becomes `older` and the
/// previous `older` is dropped. So at most 2 × `GENERATION` keys are held (1.5 MiB per thread),
/// a key in use keeps being found, and a flood of fresh keys costs only its own decoding. Only
/// usable keys are kept: a refused one is decoded (and refused) again.
#[derive(Default)]
struct SenderKeys {
    recent: std::collections::HashMap<[u8; 32], EdwardsPoint>,
    older: std::collections::HashMap<[u8; 32], EdwardsPoint>,
}

impl SenderKeys {
    /// 7/8 of 4,096: the most a hash map of 4,096 buckets holds before it doubles, so each
    /// generation takes 4,096 × ~200 bytes (768 KiB) at most.
    const GENERATION: usize = 3584;

    /// [`decode_point`] of `bytes`, from the cache when it holds it.
    fn decode(&mut self, bytes: &[u8; 32]) -> Option<EdwardsPoint> {
        if let Some(point) = self.recent.get(bytes) {
            return Some(*point);
        }
        let point = match self.older.remove(bytes) {
            Some(point) => point,
            None => decode_point(bytes)?,
        };
        if self.recent.len() >= Self::GENERATION {
            self.older = std::mem::take(&mut self.recent);
        }
        self.recent.insert(*bytes, point);
        Some(point)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.recent.len() + self.older.len()
    }
}

thread_local! {
    static SENDER_KEYS: std::cell::RefCell<SenderKeys> = std::cell::RefCell::default();
}

/// The point of a canonical encoding that decompresses and is not of small order.
fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    if !is_canonical_encoding(bytes) {
        return None;
    }
    let point = CompressedEdwardsY(*bytes).decompress()?;
    (!point.is_small_order()).then_some(point)
}

/// Whether compressing the decompression of `bytes` gives `bytes` back (for bytes that
/// decompress), decided on the bytes: `y < p`, and no sign bit when `x = 0`, which holds
/// exactly for `y = 1` and `y = p − 1`. (A decompression costs an exponentiation and a
/// compression an inversion; this costs neither.)
fn is_canonical_encoding(bytes: &[u8; 32]) -> bool {
    let sign_bit = bytes[31] & 0x80 != 0;
    let mut y = *bytes;
    y[31] &= 0x7f;
    // p = 2²⁵⁵ − 19, little-endian: ed ff … ff 7f. y ≥ p exactly when y is p + 0..=18.
    let at_least_p = y[0] >= 0xed && y[1..31].iter().all(|&b| b == 0xff) && y[31] == 0x7f;
    if at_least_p {
        return false;
    }
    let mut one = [0u8; 32];
    one[0] = 1;
    let mut p_minus_one = [0xffu8; 32];
    p_minus_one[0] = 0xec;
    p_minus_one[31] = 0x7f;
    !(sign_bit && (y == one || y == p_minus_one))
}

/// Answers every item of `items` into `valid`: all true if their batch equation holds,
/// otherwise each by its own equation. (Bisecting instead would find one bad signature in about
/// two batches' time, but a batch of many bad ones would then cost several times what checking
/// each alone does; checking each alone bounds what a hostile signer can make a batch cost.)
fn settle(items: &[BatchItem], valid: &mut [bool]) {
    if holds(items) {
        for item in items {
            valid[item.index] = true;
        }
        return;
    }
    for item in items {
        valid[item.index] = item.screened.holds_alone();
    }
}

/// The batch equation over `items` (for one item, its own equation).
fn holds(items: &[BatchItem]) -> bool {
    if let [only] = items {
        return only.screened.holds_alone();
    }
    // The coefficient of B is −Σ zᵢSᵢ; then zᵢ for each Rᵢ and zᵢkᵢ for each Aᵢ.
    let basepoint_coefficient = -items
        .iter()
        .map(|item| item.z * item.screened.s)
        .sum::<Scalar>();
    let scalars = std::iter::once(basepoint_coefficient)
        .chain(items.iter().map(|item| item.z))
        .chain(items.iter().map(|item| item.z * item.screened.k));
    let points = std::iter::once(ED25519_BASEPOINT_POINT)
        .chain(items.iter().map(|item| item.screened.r))
        .chain(items.iter().map(|item| item.screened.a));
    EdwardsPoint::vartime_multiscalar_mul(scalars, points)
        .mul_by_cofactor()
        .is_identity()
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use ed25519_dalek::{Signer as _, SigningKey};
    use proptest::prelude::*;

    /// ℓ, little-endian.
    const GROUP_ORDER: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde,
        0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];

    fn signer(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn good(seed: u8, message: &str) -> SignatureCheck {
        let key = signer(seed);
        SignatureCheck::new(
            key.verifying_key().to_bytes(),
            message.as_bytes().to_vec(),
            key.sign(message.as_bytes()).to_bytes(),
        )
    }

    fn with_key(check: &SignatureCheck, key: [u8; 32]) -> SignatureCheck {
        SignatureCheck::new(key, check.message.clone(), check.sig)
    }

    fn with_r(check: &SignatureCheck, r: [u8; 32]) -> SignatureCheck {
        let mut sig = check.sig;
        sig[..32].copy_from_slice(&r);
        SignatureCheck::new(check.key, check.message.clone(), sig)
    }

    fn strict(check: &SignatureCheck) -> bool {
        ed25519_dalek::VerifyingKey::from_bytes(&check.key).is_ok_and(|key| {
            key.verify_strict(
                &check.message,
                &ed25519_dalek::Signature::from_bytes(&check.sig),
            )
            .is_ok()
        })
    }

    #[test]
    fn decoded_keys_are_remembered_within_two_generations_and_answer_as_decoding_does() {
        let mut keys = SenderKeys::default();
        let good: Vec<[u8; 32]> = (0..3)
            .map(|seed| signer(seed).verifying_key().to_bytes())
            .collect();
        for key in &good {
            assert_eq!(keys.decode(key), decode_point(key));
            assert!(keys.decode(key).is_some());
        }
        assert_eq!(keys.len(), 3);
        // Refused keys answer as decoding does and are never kept.
        for bad in small_order_encodings()
            .into_iter()
            .chain(non_canonical_encodings())
        {
            assert_eq!(keys.decode(&bad), None);
        }
        assert_eq!(keys.len(), 3);
        // A flood of fresh keys: the size stays bounded, and a key used all along stays.
        let mut fresh = [7u8; 32];
        let mut inserted = 0;
        for i in 0u32..(6 * SenderKeys::GENERATION as u32) {
            fresh[..4].copy_from_slice(&i.to_le_bytes());
            if keys.decode(&fresh).is_some() {
                inserted += 1;
            }
            if i % 1000 == 0 {
                assert!(keys.decode(&good[0]).is_some());
            }
            assert!(keys.len() <= 2 * SenderKeys::GENERATION);
            // Neither map ever grew past 4,096 buckets (what the memory bound assumes).
            assert!(keys.recent.capacity() <= SenderKeys::GENERATION);
            assert!(keys.older.capacity() <= SenderKeys::GENERATION);
        }
        assert!(
            inserted > 2 * SenderKeys::GENERATION,
            "the flood was two generations of decodable keys: {inserted}"
        );
        assert!(keys.recent.contains_key(&good[0]) || keys.older.contains_key(&good[0]));
        // A key not used during the flood was dropped, and decoding it again still works.
        assert!(!keys.recent.contains_key(&good[2]) && !keys.older.contains_key(&good[2]));
        assert_eq!(keys.decode(&good[2]), decode_point(&good[2]));
    }

    /// The canonical encodings of the 8 points of small order.
    fn small_order_encodings() -> Vec<[u8; 32]> {
        EIGHT_TORSION
            .iter()
            .map(|point| point.compress().to_bytes())
            .collect()
    }

    /// Non-canonical encodings: `y = p + δ` (δ = 0..=18) with either sign bit, and the sign bit
    /// set on the two `x = 0` points (`y = 1`, `y = p − 1`).
    fn non_canonical_encodings() -> Vec<[u8; 32]> {
        let mut encodings = Vec::new();
        for delta in 0u8..=18 {
            let mut y = [0xffu8; 32];
            y[31] = 0x7f;
            y[0] = 0xed + delta;
            encodings.push(y);
            y[31] |= 0x80;
            encodings.push(y);
        }
        let mut one = [0u8; 32];
        one[0] = 1;
        one[31] = 0x80;
        encodings.push(one);
        let mut minus_one = [0xffu8; 32];
        minus_one[0] = 0xec;
        minus_one[31] = 0xff;
        encodings.push(minus_one);
        encodings
    }

    /// Asserts `expected` for `bad` alone, in a batch alone, and at every position of a batch of
    /// good signatures (the others must stay true).
    fn assert_both_ways(what: &str, bad: &SignatureCheck, expected: bool) {
        assert_eq!(verify_one(bad), expected, "{what}: verify_one");
        assert_eq!(
            verify_batch(std::slice::from_ref(bad)),
            vec![expected],
            "{what}: batch of 1"
        );
        for position in [0, 3, 6] {
            let mut batch: Vec<SignatureCheck> = (0..7)
                .map(|i| good(10 + i, &format!("message {i}")))
                .collect();
            batch[position] = bad.clone();
            let mut want = vec![true; batch.len()];
            want[position] = expected;
            assert_eq!(
                verify_batch(&batch),
                want,
                "{what}: batch of 7 at {position}"
            );
        }
    }

    #[test]
    fn valid_signatures_verify_alone_and_in_batches() {
        assert_both_ways("valid", &good(1, "hello"), true);
        let batch: Vec<SignatureCheck> = (0..64).map(|i| good(i, &format!("m{i}"))).collect();
        assert_eq!(verify_batch(&batch), vec![true; 64]);
        assert!(
            batch.iter().all(strict),
            "verify_strict agrees on honest signatures"
        );
    }

    #[test]
    fn an_empty_batch_is_an_empty_answer() {
        assert_eq!(verify_batch(&[]), Vec::<bool>::new());
    }

    #[test]
    fn a_signature_over_another_message_or_under_another_key_is_refused() {
        let check = good(1, "hello");
        let other_message = SignatureCheck::new(check.key, b"hellO".to_vec(), check.sig);
        assert_both_ways("wrong message", &other_message, false);
        let other_key = with_key(&check, signer(2).verifying_key().to_bytes());
        assert_both_ways("wrong key", &other_key, false);
        let mut flipped = check.sig;
        flipped[40] ^= 1;
        assert_both_ways(
            "S changed",
            &SignatureCheck::new(check.key, check.message.clone(), flipped),
            false,
        );
    }

    #[test]
    fn small_order_public_keys_are_refused_even_with_signatures_that_would_hold() {
        // With A of small order, [8][k]A = 0, so S = r, R = [r]B passes the equation for any
        // message: only the screening refuses it.
        let r = Scalar::from_bytes_mod_order([9; 32]);
        let r_point = EdwardsPoint::mul_base(&r).compress().to_bytes();
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_point);
        sig[32..].copy_from_slice(&r.to_bytes());
        let under_a_real_key = SignatureCheck::new(
            signer(1).verifying_key().to_bytes(),
            b"anything".to_vec(),
            sig,
        );
        assert!(
            screen(&under_a_real_key).is_some(),
            "R and S pass the screening"
        );
        let encodings = small_order_encodings();
        assert_eq!(encodings.len(), 8);
        for key in encodings {
            assert!(!key_is_usable(&key));
            let check = SignatureCheck::new(key, b"anything".to_vec(), sig);
            let screened = Screened {
                s: r,
                r: EdwardsPoint::mul_base(&r),
                a: CompressedEdwardsY(key)
                    .decompress()
                    .expect("small-order points decompress"),
                k: Scalar::from_bytes_mod_order([3; 32]),
            };
            assert!(screened.holds_alone(), "the equation alone would accept it");
            assert_both_ways(
                &format!("small-order key {}", hex::encode(key)),
                &check,
                false,
            );
            assert!(!strict(&check));
        }
    }

    #[test]
    fn small_order_r_is_refused() {
        let check = good(1, "hello");
        for r in small_order_encodings() {
            assert_both_ways(
                &format!("small-order R {}", hex::encode(r)),
                &with_r(&check, r),
                false,
            );
        }
    }

    #[test]
    fn non_canonical_s_is_refused() {
        let check = good(1, "hello");
        let mut s = [0u8; 32];
        s.copy_from_slice(&check.sig[32..]);
        // S + ℓ, with carries (S < ℓ < 2²⁵³, so no overflow of 256 bits).
        let mut carry = 0u16;
        for (byte, order) in s.iter_mut().zip(GROUP_ORDER) {
            let sum = u16::from(*byte) + u16::from(order) + carry;
            *byte = sum as u8;
            carry = sum >> 8;
        }
        let mut sig = check.sig;
        sig[32..].copy_from_slice(&s);
        let malleated = SignatureCheck::new(check.key, check.message.clone(), sig);
        assert_both_ways("S + ℓ", &malleated, false);
        assert!(!strict(&malleated));
    }

    #[test]
    fn the_canonical_test_on_bytes_is_decompress_then_compress() {
        let mut samples = non_canonical_encodings();
        samples.extend(small_order_encodings());
        for seed in 0..64u8 {
            samples.push(signer(seed).verifying_key().to_bytes());
            let mut flipped = signer(seed).verifying_key().to_bytes();
            flipped[31] ^= 0x80;
            samples.push(flipped);
        }
        for low in 0..=40u8 {
            let mut y = [0u8; 32];
            y[0] = low;
            samples.push(y);
            y[31] = 0x80;
            samples.push(y);
        }
        let mut decompressing = 0;
        for bytes in samples {
            if let Some(point) = CompressedEdwardsY(bytes).decompress() {
                decompressing += 1;
                assert_eq!(
                    is_canonical_encoding(&bytes),
                    point.compress().to_bytes() == bytes,
                    "{}",
                    hex::encode(bytes)
                );
            }
        }
        assert!(decompressing > 100, "{decompressing}");
    }

    #[test]
    fn non_canonical_encodings_of_a_and_r_are_refused() {
        let check = good(1, "hello");
        let mut on_curve = 0;
        for encoding in non_canonical_encodings() {
            assert!(
                !is_canonical_encoding(&encoding),
                "{}",
                hex::encode(encoding)
            );
            on_curve += usize::from(CompressedEdwardsY(encoding).decompress().is_some());
            assert!(!key_is_usable(&encoding));
            assert_both_ways(
                &format!("non-canonical A {}", hex::encode(encoding)),
                &with_key(&check, encoding),
                false,
            );
            assert_both_ways(
                &format!("non-canonical R {}", hex::encode(encoding)),
                &with_r(&check, encoding),
                false,
            );
        }
        // Some of them are points the curve library would take (y = p + δ is the point of
        // y = δ, of large order for some δ): the screening is what refuses them.
        assert!(on_curve >= 4, "{on_curve}");
        let large_order_behind_a_non_canonical_encoding = non_canonical_encodings()
            .iter()
            .filter_map(|e| CompressedEdwardsY(*e).decompress())
            .any(|point| !point.is_small_order());
        assert!(large_order_behind_a_non_canonical_encoding);
    }

    /// R' = R + T with T of order 8, S = r + k'·a over R': refused by cofactorless
    /// `verify_strict`, accepted by this rule, alone and in batches (the one documented
    /// difference).
    #[test]
    fn a_torsion_component_in_r_is_accepted_by_both_paths_and_refused_by_verify_strict() {
        let a = Scalar::from_bytes_mod_order([5; 32]);
        let key = EdwardsPoint::mul_base(&a).compress().to_bytes();
        let message = b"torsion in R";
        for torsion in EIGHT_TORSION.iter().filter(|t| !t.is_identity()) {
            let r = Scalar::from_bytes_mod_order([77; 32]);
            let r_point = (EdwardsPoint::mul_base(&r) + torsion).compress().to_bytes();
            let hash: [u8; 64] = Sha512::new()
                .chain_update(r_point)
                .chain_update(key)
                .chain_update(message)
                .finalize()
                .into();
            let k = Scalar::from_bytes_mod_order_wide(&hash);
            let s = r + k * a;
            let mut sig = [0u8; 64];
            sig[..32].copy_from_slice(&r_point);
            sig[32..].copy_from_slice(&s.to_bytes());
            let check = SignatureCheck::new(key, message.to_vec(), sig);
            assert_both_ways("torsion in R", &check, true);
            assert!(!strict(&check), "verify_strict is cofactorless");
        }
        // Without the torsion the same construction is an ordinary signature.
        let r = Scalar::from_bytes_mod_order([77; 32]);
        let r_point = EdwardsPoint::mul_base(&r).compress().to_bytes();
        let hash: [u8; 64] = Sha512::new()
            .chain_update(r_point)
            .chain_update(key)
            .chain_update(message)
            .finalize()
            .into();
        let s = r + Scalar::from_bytes_mod_order_wide(&hash) * a;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&r_point);
        sig[32..].copy_from_slice(&s.to_bytes());
        let check = SignatureCheck::new(key, message.to_vec(), sig);
        assert!(verify_one(&check) && strict(&check));
    }

    #[test]
    fn one_bad_signature_among_64_is_the_only_false() {
        let batch: Vec<SignatureCheck> = (0..64).map(|i| good(i, &format!("m{i}"))).collect();
        for position in [0, 1, 31, 32, 33, 62, 63] {
            let mut with_bad = batch.clone();
            with_bad[position].message.push(b'!');
            let mut want = vec![true; 64];
            want[position] = false;
            assert_eq!(verify_batch(&with_bad), want, "bad at {position}");
        }
        let all_bad: Vec<SignatureCheck> = batch
            .iter()
            .map(|check| with_key(check, signer(200).verifying_key().to_bytes()))
            .collect();
        assert_eq!(verify_batch(&all_bad), vec![false; 64]);
    }

    /// The kinds of signature a random mix draws from.
    fn variant(kind: u8, seed: u8) -> SignatureCheck {
        let check = good(seed, &format!("message {seed}"));
        match kind % 6 {
            0 | 1 => check,
            2 => SignatureCheck::new(check.key, b"other".to_vec(), check.sig),
            3 => with_key(&check, small_order_encodings()[usize::from(seed) % 8]),
            4 => with_r(&check, non_canonical_encodings()[usize::from(seed) % 40]),
            _ => with_key(
                &check,
                signer(seed.wrapping_add(1)).verifying_key().to_bytes(),
            ),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn a_batch_answers_each_item_as_verify_one_does(
            mix in proptest::collection::vec((any::<u8>(), any::<u8>()), 0..40)
        ) {
            let checks: Vec<SignatureCheck> =
                mix.iter().map(|&(kind, seed)| variant(kind, seed)).collect();
            let alone: Vec<bool> = checks.iter().map(verify_one).collect();
            prop_assert_eq!(verify_batch(&checks), alone);
        }
    }
}
