//! Signature verification (`--runs verify`): µs per signature of ed25519-dalek's
//! `verify_strict` (the node's check before issue #9), of this node's rule alone
//! (`signature::verify_one`) and in batches (`signature::verify_batch`) of 1 to 64, over
//! the same few thousand envelope-sized messages; and what a batch of 64 costs when one, or every,
//! signature in it is bad (each is then checked alone). In-process, one thread, no HTTP:
//! the CPU of the check itself (this thread's CPU time). Each figure is the best of three passes.

use dmrelay::protocol::SignatureCheck;
use dmrelay::protocol::signature::{verify_batch, verify_one};
use ed25519_dalek::{Signer as _, SigningKey};
use std::hint::black_box;

/// Signatures per pass: a multiple of every batch size.
const SIGNATURES: usize = 4096;
/// Distinct signers among them (a node sees many senders).
const SIGNERS: usize = 256;
const PASSES: usize = 3;

pub fn run() {
    let checks = signed_checks();
    println!(
        "\n== signature verification: CPU µs per signature, {SIGNATURES} signatures, best of {PASSES} =="
    );
    let strict = best_of(|| checks.iter().filter(|check| verify_strict(check)).count());
    println!("verify_strict (before)      {:>7.2}", strict);
    let one = best_of(|| checks.iter().filter(|check| verify_one(check)).count());
    println!("verify_one                  {:>7.2}", one);
    for size in [1, 4, 8, 12, 16, 24, 32, 50, 64] {
        let batch = best_of(|| {
            checks
                .chunks(size)
                .map(|chunk| verify_batch(chunk).into_iter().filter(|&v| v).count())
                .sum()
        });
        println!("verify_batch, batches of {size:<2} {:>7.2}", batch);
    }
    let one_bad = spoil(&checks, |position| position % 64 == 17);
    let with_one_bad = best_of(|| {
        one_bad
            .chunks(64)
            .map(|chunk| verify_batch(chunk).into_iter().filter(|&v| v).count())
            .sum()
    });
    println!("verify_batch, 64, one bad   {:>7.2}", with_one_bad);
    let all_bad = spoil(&checks, |_| true);
    let every_one_bad = best_of(|| {
        all_bad
            .chunks(64)
            .map(|chunk| verify_batch(chunk).into_iter().filter(|&v| v).count())
            .sum()
    });
    println!("verify_batch, 64, all bad   {:>7.2}", every_one_bad);
}

/// Envelope-like canonical strings (about 330 bytes), signed by [`SIGNERS`] keys.
fn signed_checks() -> Vec<SignatureCheck> {
    let signers: Vec<SigningKey> = (0..SIGNERS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            seed[8] = 0xd3;
            SigningKey::from_bytes(&seed)
        })
        .collect();
    (0..SIGNATURES)
        .map(|i| {
            let signer = &signers[i % SIGNERS];
            let message = format!(
                "sbdm-envelope-v1\nbench_{i:08}\n{}\n{}\n1764000000\n1764086400\n{:064x}",
                "ab".repeat(32),
                hex::encode(signer.verifying_key().to_bytes()),
                i
            )
            .into_bytes();
            let sig = signer.sign(&message).to_bytes();
            SignatureCheck::new(signer.verifying_key().to_bytes(), message, sig)
        })
        .collect()
}

/// The same checks with the signatures at `bad` positions made invalid (one bit of S flipped).
fn spoil(checks: &[SignatureCheck], bad: impl Fn(usize) -> bool) -> Vec<SignatureCheck> {
    checks
        .iter()
        .enumerate()
        .map(|(position, check)| {
            if !bad(position) {
                return check.clone();
            }
            let sig = check.signature();
            let mut spoiled = *sig;
            spoiled[33] ^= 1;
            SignatureCheck::new(*check.key(), check.message().to_vec(), spoiled)
        })
        .collect()
}

/// What the node did before issue #9: decompress the key, then `verify_strict`.
fn verify_strict(check: &SignatureCheck) -> bool {
    ed25519_dalek::VerifyingKey::from_bytes(check.key()).is_ok_and(|key| {
        key.verify_strict(
            check.message(),
            &ed25519_dalek::Signature::from_bytes(check.signature()),
        )
        .is_ok()
    })
}

/// CPU µs per signature of the fastest of [`PASSES`] passes of `pass` (which returns how many
/// verified, so that the work cannot be optimized away). This thread's CPU time, not the wall
/// clock: on a shared machine the time other processes take is not counted.
fn best_of(mut pass: impl FnMut() -> usize) -> f64 {
    (0..PASSES)
        .map(|_| {
            let start = thread_cpu_seconds();
            black_box(pass());
            (thread_cpu_seconds() - start) * 1e6 / SIGNATURES as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// CPU seconds this thread has run.
fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec, which `now` is.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 * 1e-9
}
