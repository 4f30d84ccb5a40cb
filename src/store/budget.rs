//! The node-wide storage budget: how many bytes of envelopes and acks this node keeps.
//!
//! The store counts the bytes of its change records and parked replicas
//! ([`super::Store::stored_bytes`], updated by every commit). The writer thread compares it with
//! the budget before each request that would store an envelope ([`request_cost`]): past the
//! budget such a request is refused (503 `unavailable`, see `http::error`), while polls and
//! acks — which free space — go on. Without `MESH_DM_STORAGE_BUDGET_MB` the budget is
//! [`default_budget`]: a share of the free space of the data dir's filesystem at start.

use super::StoreOp;
use crate::protocol::Envelope;
use std::path::Path;

/// Share of the free disk space at start that the default budget takes. The store's file is
/// larger than the bytes counted (B-tree and overflow pages, copy-on-write): 2.8 times with 8 KiB
/// envelopes (`BENCHMARKS.md`), so a full budget takes about 56 % of that free space.
pub const DEFAULT_SHARE_OF_FREE_SPACE: f64 = 0.2;
/// The default budget is never above this (64 GiB).
pub const DEFAULT_BUDGET_CEILING: u64 = 64 << 30;
/// ... nor below this (16 MiB), so that a node on a nearly full disk still works a little.
pub const DEFAULT_BUDGET_FLOOR: u64 = 16 << 20;
/// The default budget in memory mode (the store is in RAM): 256 MiB.
pub const DEFAULT_MEMORY_BUDGET: u64 = 256 << 20;

/// Bytes of every file under `dir`, recursively (0 for what cannot be read): what a store
/// takes on disk, one file on redb, a directory of tables and journals on fjall.
pub fn files_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|entry| match entry.metadata() {
                Ok(meta) if meta.is_dir() => files_bytes(&entry.path()),
                Ok(meta) => meta.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// Free bytes (for an unprivileged user) on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: `path` is a NUL-terminated string and `stats` a writable statvfs; statvfs only
    // writes into it, and we read it only when the call succeeded.
    #[allow(unsafe_code)]
    let stats = unsafe {
        if libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) != 0 {
            return None;
        }
        stats.assume_init()
    };
    // The field types differ between platforms (u64 here, u32 elsewhere).
    #[allow(clippy::unnecessary_cast)]
    let free = (stats.f_bavail as u64).saturating_mul(stats.f_frsize as u64);
    Some(free)
}

/// The budget when none is configured: a share of `free` (the free bytes of the data dir's
/// filesystem at start), within the floor and the ceiling; in memory mode (`free` is None) a
/// fixed amount.
pub fn default_budget(free: Option<u64>) -> u64 {
    match free {
        None => DEFAULT_MEMORY_BUDGET,
        Some(free) => ((free as f64 * DEFAULT_SHARE_OF_FREE_SPACE) as u64)
            .clamp(DEFAULT_BUDGET_FLOOR, DEFAULT_BUDGET_CEILING),
    }
}

/// About the bytes an envelope takes in the store (its JSON record), without serializing it.
pub fn envelope_cost(envelope: &Envelope) -> u64 {
    // Fixed fields: v, mailbox and sender (64 hex each), times, sig (128 hex), names, quotes.
    const FIXED_JSON: u64 = 420;
    FIXED_JSON + envelope.ciphertext.len() as u64 + envelope.msg_id.as_str().len() as u64
}

/// The bytes a request would add: what its new envelopes and parked replicas take. Requests that
/// add nothing (acks, poll nonces, cursors) are never refused by the budget.
pub fn request_cost(ops: &[StoreOp]) -> u64 {
    ops.iter()
        .map(|op| match op {
            StoreOp::PutEnvelope { envelope, .. } | StoreOp::Park(envelope) => {
                envelope_cost(envelope)
            }
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_budget_is_a_share_of_the_free_space_within_bounds() {
        assert_eq!(default_budget(None), DEFAULT_MEMORY_BUDGET);
        assert_eq!(default_budget(Some(500 << 20)), 100 << 20);
        assert_eq!(default_budget(Some(1 << 20)), DEFAULT_BUDGET_FLOOR);
        assert_eq!(default_budget(Some(u64::MAX)), DEFAULT_BUDGET_CEILING);
    }

    #[test]
    fn free_space_of_a_real_directory_is_known() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).is_some_and(|free| free > 0));
        assert_eq!(free_bytes(&dir.path().join("missing")), None);
    }

    #[test]
    fn the_bytes_of_a_store_count_every_file_below_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 100]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 28]).unwrap();
        assert_eq!(files_bytes(dir.path()), 128);
        assert_eq!(files_bytes(&dir.path().join("missing")), 0);
    }

    #[test]
    fn the_cost_estimate_covers_the_stored_json() {
        use crate::protocol::{MailboxKey, MsgId};
        use ed25519_dalek::SigningKey;
        let envelope = Envelope::sign(
            &SigningKey::from_bytes(&[1; 32]),
            MailboxKey::from_bytes([2; 32]),
            MsgId::parse("m", "an-id").unwrap(),
            1_800_000_000,
            1_800_003_600,
            &[7; 8192],
        );
        let stored = serde_json::to_vec(&envelope).unwrap().len() as u64;
        let estimate = envelope_cost(&envelope);
        assert!(
            estimate >= stored && estimate < stored + 200,
            "{estimate} vs {stored}"
        );
    }
}
