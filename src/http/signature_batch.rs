//! Batches the signature checks of concurrent client requests on one HTTP worker, with no wait
//! when the worker is idle.
//!
//! An actix worker is a single-threaded runtime, so each worker thread has its own list of
//! pending checks. [`verify`] adds its check (and where to send the answer) to the list; the
//! first check of an empty list also spawns a flush task on the worker. That task yields once,
//! so that every request already ready to run in this round of the event loop adds its check
//! too, then takes the whole list and verifies it with [`signature::verify_batch`] (one check
//! alone: [`signature::verify_one`]), answering each. No timer is involved: a lone request is
//! answered after that one yield, and under load the batch is whatever arrived together.
//!
//! The answer is exactly what verifying alone would give (the rule of [`signature`] is the same
//! for both); only the CPU per signature changes.

use crate::protocol::SignatureCheck;
use crate::protocol::signature;
use std::cell::RefCell;
use tokio::sync::oneshot;

/// Most signatures verified in one equation. On this project's machine the cost per signature
/// stops falling at 16–32 (`dmrelay-bench --runs verify`), while every request of a batch waits
/// for the whole of it.
pub const MAX_BATCH: usize = 32;

/// The checks waiting for this worker's next flush.
#[derive(Default)]
struct Pending {
    checks: Vec<SignatureCheck>,
    answers: Vec<oneshot::Sender<bool>>,
    flush_spawned: bool,
}

thread_local! {
    static PENDING: RefCell<Pending> = RefCell::default();
}

/// Verifies `check` together with the checks of the other requests of this worker that are
/// ready now. Must run on an actix (or tokio `LocalSet`) worker thread.
pub async fn verify(check: SignatureCheck) -> bool {
    let (answer, answered) = oneshot::channel();
    let spawn_flush = PENDING.with_borrow_mut(|pending| {
        pending.checks.push(check);
        pending.answers.push(answer);
        !std::mem::replace(&mut pending.flush_spawned, true)
    });
    if spawn_flush {
        actix_rt::spawn(flush());
    }
    // The flush task answers every check it takes and cannot fail; only a worker shutting down
    // drops it, and then this request is dropped with it.
    answered.await.unwrap_or(false)
}

/// Lets the requests that are ready add their checks, then verifies and answers them all.
async fn flush() {
    tokio::task::yield_now().await;
    let (checks, answers) = PENDING.with_borrow_mut(|pending| {
        pending.flush_spawned = false;
        (
            std::mem::take(&mut pending.checks),
            std::mem::take(&mut pending.answers),
        )
    });
    let mut answers = answers.into_iter();
    for (round, chunk) in checks.chunks(MAX_BATCH).enumerate() {
        if round > 0 {
            // The requests answered so far go on before the next chunk is verified.
            tokio::task::yield_now().await;
        }
        let verdicts = match chunk {
            [only] => vec![signature::verify_one(only)],
            _ => signature::verify_batch(chunk),
        };
        for (verdict, answer) in verdicts.into_iter().zip(answers.by_ref()) {
            // A request that went away no longer wants its answer.
            let _ = answer.send(verdict);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer as _, SigningKey};
    use std::cell::Cell;
    use std::rc::Rc;

    fn check(seed: u8, good: bool) -> SignatureCheck {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let message = format!("request {seed}").into_bytes();
        let mut sig = key.sign(&message).to_bytes();
        if !good {
            sig[0] ^= 1;
        }
        SignatureCheck::new(key.verifying_key().to_bytes(), message, sig)
    }

    /// Checks waiting for this thread's next flush.
    fn pending_len() -> usize {
        PENDING.with_borrow(|pending| pending.checks.len())
    }

    #[actix_rt::test]
    async fn concurrent_checks_are_batched_and_each_gets_its_own_answer() {
        // 150 requests at once: several chunks of MAX_BATCH; every seventh is bad.
        let expected: Vec<bool> = (0..150u32).map(|i| i % 7 != 3).collect();
        let tasks: Vec<_> = expected
            .iter()
            .enumerate()
            .map(|(i, &good)| actix_rt::spawn(verify(check(i as u8, good))))
            .collect();
        // Nothing is verified before the spawned requests have all run once.
        tokio::task::yield_now().await;
        let mut answers = Vec::new();
        for task in tasks {
            answers.push(task.await.unwrap());
        }
        assert_eq!(answers, expected);
        assert_eq!(pending_len(), 0);
        // And a later round starts a batch of its own.
        let (a, b) =
            futures_util::future::join(verify(check(1, true)), verify(check(2, false))).await;
        assert_eq!((a, b), (true, false));
    }

    #[actix_rt::test]
    async fn concurrent_checks_share_one_flush() {
        let tasks: Vec<_> = (0..10u8)
            .map(|i| actix_rt::spawn(verify(check(i, true))))
            .collect();
        // Let all ten add their checks: the first spawned the flush, which has yielded once.
        tokio::task::yield_now().await;
        assert_eq!(pending_len(), 10, "all ten wait for the same flush");
        for task in tasks {
            assert!(task.await.unwrap());
        }
    }

    #[actix_rt::test]
    async fn a_lone_check_is_answered_without_waiting_for_more() {
        for good in [true, false] {
            let done = Rc::new(Cell::new(None));
            let answer = Rc::clone(&done);
            actix_rt::spawn(async move { answer.set(Some(verify(check(9, good)).await)) });
            // No timer: a few turns of the event loop answer it.
            let mut turns = 0;
            while done.get().is_none() {
                assert!(turns < 10, "still waiting after {turns} turns");
                tokio::task::yield_now().await;
                turns += 1;
            }
            assert_eq!(done.get(), Some(good));
        }
    }
}
