//! The fuzz targets of `fuzz/` run under `cargo test`, without cargo-fuzz or nightly.
//!
//! `fuzz/src/targets.rs` is compiled into this test as a module, and every file of its
//! committed seed corpus (`fuzz/seeds/<target>/`) and of its regression inputs
//! (`fuzz/regressions/<target>/`, inputs that once crashed a target) is run through it. A panic is
//! a failure. This keeps every fixed finding fixed on CI, where building the fuzzers from scratch
//! would cost minutes (see FUZZING.md).

#[path = "../fuzz/src/targets.rs"]
mod targets;

use std::path::Path;

fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path.display().to_string(), bytes)
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_runs_its_seeds_and_regressions_without_panicking() {
    for (target, run) in targets::ALL {
        let seeds = inputs("seeds", target);
        assert!(
            seeds.len() >= 2,
            "fuzz/seeds/{target} holds the committed seed corpus (python3 fuzz/make_seeds.py)"
        );
        for (path, bytes) in seeds.iter().chain(&inputs("regressions", target)) {
            let outcome = std::panic::catch_unwind(|| run(bytes));
            assert!(outcome.is_ok(), "target {target} panicked on {path}");
        }
    }
}

/// The seeds derived from the SPEC's vectors really reach past parsing: the vector envelope,
/// poll and ack parse, verify, and split out of peer batches and feed pages.
#[test]
fn the_seed_corpus_reaches_the_signature_checks() {
    use dmrelay::protocol::{AckObject, Envelope, EnvelopeLimits, PollRequest};
    let limits = EnvelopeLimits::default();
    let envelope = &inputs("seeds", "envelope")
        .into_iter()
        .find(|(path, _)| path.ends_with("/vector"))
        .unwrap()
        .1;
    Envelope::parse(envelope, &limits)
        .unwrap()
        .verify(targets::NOW, &limits)
        .unwrap();
    let poll = &inputs("seeds", "poll")
        .into_iter()
        .find(|(path, _)| path.ends_with("/vector"))
        .unwrap()
        .1;
    PollRequest::parse(poll)
        .unwrap()
        .verify(targets::NOW)
        .unwrap();
    let ack = &inputs("seeds", "ack")
        .into_iter()
        .find(|(path, _)| path.ends_with("/vector"))
        .unwrap()
        .1;
    AckObject::parse(ack)
        .unwrap()
        .verify_fresh(targets::NOW)
        .unwrap();
    let page = &inputs("seeds", "feed_page")
        .into_iter()
        .find(|(path, _)| path.ends_with("/page"))
        .unwrap()
        .1;
    let page = dmrelay::peer::sync::FeedReply::parse(page).unwrap();
    let applied = page
        .changes
        .into_iter()
        .filter_map(|change| dmrelay::peer::apply::Replica::from_change(&change))
        .map(|replica| replica.check(&limits, targets::NOW))
        .filter(|checked| {
            matches!(
                checked,
                dmrelay::peer::apply::Checked::Envelope(_) | dmrelay::peer::apply::Checked::Ack(_)
            )
        })
        .count();
    assert_eq!(
        applied, 3,
        "two envelopes and one ack of the seed page are valid"
    );
}
