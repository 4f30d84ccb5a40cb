//! The record layout both stores share: keys, change records and expiry keys as bytes, so that
//! the redb and the fjall store hold the same things the same way (see [`super::redb_store`] for
//! the tables).

use super::{FeedEntry, FeedPage, LogFilter, MAX_SCANNED_PER_READ, StoreError};
use crate::protocol::{Envelope, MailboxKey, MsgId};
use std::sync::Arc;

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

/// `mailbox ‖ nonce`, the key of a poll nonce.
pub(super) fn nonce_key(mailbox: &MailboxKey, nonce: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(32 + nonce.len());
    key.extend_from_slice(mailbox.as_bytes());
    key.extend_from_slice(nonce.as_bytes());
    key
}

/// The envelope of a change record an index entry points to, if it is still pending at `now`.
pub(super) fn live_envelope(record: &[u8], now: u64) -> Result<Option<Arc<Envelope>>, StoreError> {
    let (until, kind, json) = parse_change_record(record)?;
    if !parse_change_kind(kind)?.0 || until <= now {
        return Ok(None);
    }
    let envelope: Envelope = serde_json::from_slice(json)
        .map_err(|e| StoreError::Corrupt(format!("stored envelope: {e}")))?;
    Ok(Some(Arc::new(envelope)))
}

/// The envelope JSON of a change record (`None` for an ack).
pub(super) fn envelope_change_json(record: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
    let (_, kind, json) = parse_change_record(record)?;
    Ok(parse_change_kind(kind)?.0.then(|| json.to_vec()))
}

/// A parked replica's envelope, if it has not expired at `now`.
pub(super) fn live_parked(json: &[u8], now: u64) -> Result<Option<Arc<Envelope>>, StoreError> {
    let envelope: Envelope = serde_json::from_slice(json)
        .map_err(|e| StoreError::Corrupt(format!("parked envelope: {e}")))?;
    Ok((envelope.expires_at > now).then(|| Arc::new(envelope)))
}

/// A poll nonce record, if its window is still open at `now` (a malformed key is skipped).
pub(super) fn live_nonce(key: &[u8], until: u64, now: u64) -> Option<(MailboxKey, Box<str>, u64)> {
    let (mailbox, nonce) = key.split_at_checked(32)?;
    let mailbox = <[u8; 32]>::try_from(mailbox).ok()?;
    let nonce = std::str::from_utf8(nonce).ok()?;
    (until > now).then(|| (MailboxKey::from_bytes(mailbox), nonce.into(), until))
}

/// A tombstone record, if it still holds at `now`.
pub(super) fn live_tombstone(
    key: &[u8],
    until: u64,
    now: u64,
) -> Result<Option<(MailboxKey, MsgId, u64)>, StoreError> {
    if until <= now {
        return Ok(None);
    }
    let (mailbox, msg_id) = split_envelope_key(key)?;
    Ok(Some((mailbox, msg_id, until)))
}

/// One page of the change log, built from the records of a scan in seq order: both engines
/// apply the same filter, expiry and step limit (SPEC §7.3, [`LogFilter`]).
pub(super) struct LogPage {
    page: FeedPage,
    limit: usize,
    now: u64,
    filter: LogFilter,
    stepped_over: usize,
}

impl LogPage {
    pub(super) fn new(since: u64, limit: usize, now: u64, filter: LogFilter) -> Self {
        Self {
            page: FeedPage {
                through: since,
                ..FeedPage::default()
            },
            limit,
            now,
            filter,
            stepped_over: 0,
        }
    }

    /// Takes the change `seq`; `Ok(false)`: the page is complete, stop the scan.
    pub(super) fn take(&mut self, seq: u64, record: &[u8]) -> Result<bool, StoreError> {
        let (until, kind, json) = parse_change_record(record)?;
        let (envelope, from_client) = parse_change_kind(kind)?;
        let wanted = match self.filter {
            LogFilter::All => true,
            LogFilter::FromClients => from_client,
            LogFilter::SkipClientsThrough(through) => !(from_client && seq <= through),
        };
        if until <= self.now || !wanted {
            self.stepped_over += 1;
            self.page.through = seq;
            if self.stepped_over == MAX_SCANNED_PER_READ {
                self.page.more = true;
                return Ok(false);
            }
            return Ok(true);
        }
        if self.page.changes.len() == self.limit {
            self.page.more = true;
            return Ok(false);
        }
        let json = String::from_utf8(json.to_vec())
            .map_err(|_| StoreError::Corrupt("change is not UTF-8".into()))?;
        self.page.changes.push((
            seq,
            if envelope {
                FeedEntry::Envelope(json)
            } else {
                FeedEntry::Ack(json)
            },
        ));
        self.page.through = seq;
        Ok(true)
    }

    pub(super) fn finish(self) -> FeedPage {
        self.page
    }
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
