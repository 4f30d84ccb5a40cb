//! The record layout both stores share: keys, change records and expiry keys as bytes, so that
//! the redb and the fjall store hold the same things the same way (see [`super::redb_store`] for
//! the tables).

use super::StoreError;
use crate::protocol::{MailboxKey, MsgId};

pub(super) const KIND_ENVELOPE: u8 = b'E';
pub(super) const KIND_ACK: u8 = b'A';
pub(super) const KIND_CLIENT_ENVELOPE: u8 = b'e';
pub(super) const KIND_CLIENT_ACK: u8 = b'a';

/// The kind byte of a change record.
pub(super) fn change_kind(envelope: bool, from_client: bool) -> u8 {
    match (envelope, from_client) {
        (true, false) => KIND_ENVELOPE,
        (true, true) => KIND_CLIENT_ENVELOPE,
        (false, false) => KIND_ACK,
        (false, true) => KIND_CLIENT_ACK,
    }
}

/// `(is an envelope, sent by a client of this node)` of a kind byte.
pub(super) fn parse_change_kind(kind: u8) -> Result<(bool, bool), StoreError> {
    match kind {
        KIND_ENVELOPE => Ok((true, false)),
        KIND_CLIENT_ENVELOPE => Ok((true, true)),
        KIND_ACK => Ok((false, false)),
        KIND_CLIENT_ACK => Ok((false, true)),
        other => Err(StoreError::Corrupt(format!("unknown change kind {other}"))),
    }
}
pub(super) const EXPIRY_CHANGE: u8 = b'C';
pub(super) const EXPIRY_TOMBSTONE: u8 = b'T';
pub(super) const EXPIRY_PARKED: u8 = b'P';
pub(super) const EXPIRY_NONCE: u8 = b'N';

/// Most records one garbage collection pass drops (keeps each pass short).
pub(super) const GC_BATCH_RECORDS: usize = 10_000;

/// `mailbox ‖ msg_id`, the key of an envelope or tombstone.
pub(super) fn envelope_key(mailbox: &MailboxKey, msg_id: &MsgId) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + msg_id.as_str().len());
    key.extend_from_slice(mailbox.as_bytes());
    key.extend_from_slice(msg_id.as_str().as_bytes());
    key
}

pub(super) fn split_envelope_key(key: &[u8]) -> Result<(MailboxKey, MsgId), StoreError> {
    let (mailbox, msg_id) = key
        .split_at_checked(32)
        .ok_or_else(|| StoreError::Corrupt("short envelope key".into()))?;
    let mailbox: [u8; 32] = mailbox
        .try_into()
        .map_err(|_| StoreError::Corrupt("short mailbox key".into()))?;
    let msg_id = std::str::from_utf8(msg_id)
        .ok()
        .and_then(|id| MsgId::parse("msg_id", id).ok())
        .ok_or_else(|| StoreError::Corrupt("bad msg_id in key".into()))?;
    Ok((MailboxKey::from_bytes(mailbox), msg_id))
}

pub(super) fn change_record(until: u64, kind: u8, json: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(9 + json.len());
    record.extend_from_slice(&until.to_be_bytes());
    record.push(kind);
    record.extend_from_slice(json);
    record
}

/// `(until, kind, json)` of a change record.
pub(super) fn parse_change_record(record: &[u8]) -> Result<(u64, u8, &[u8]), StoreError> {
    let (head, json) = record
        .split_at_checked(9)
        .ok_or_else(|| StoreError::Corrupt("short change record".into()))?;
    let mut until = [0u8; 8];
    until.copy_from_slice(&head[..8]);
    Ok((u64::from_be_bytes(until), head[8], json))
}

pub(super) fn expiry_key(until: u64, kind: u8, payload: &[&[u8]]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + payload.iter().map(|p| p.len()).sum::<usize>());
    key.extend_from_slice(&until.to_be_bytes());
    key.push(kind);
    for part in payload {
        key.extend_from_slice(part);
    }
    key
}

/// The first key after every key that starts with `prefix` (None: no such key, scan to the end).
pub(super) fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

pub(super) fn read_u64(bytes: &[u8]) -> Result<u64, StoreError> {
    let array: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("bad integer".into()))?;
    Ok(u64::from_be_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(&[1, 2]), Some(vec![1, 3]));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(&[]), None);
    }
}
