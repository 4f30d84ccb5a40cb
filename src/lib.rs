//! dmrelay: a store-and-forward relay for end-to-end-encrypted direct messages.
//!
//! How a request flows:
//!
//! ```text
//! client ─HTTP─▶ http::client ─(parse, time: protocol; signature: http::signature_batch)─▶ mailbox::MailboxRouter
//!                                                           │ try_send to the owning shard
//!                                                           ▼
//!                                            mailbox::shard::MailboxShard  (rules: mailbox::rules)
//!                                                           │ StoreOp (tagged: from a client or a peer)
//!                                                           ▼
//!                          store::writer ─▶ store::FjallStore or store::RedbStore (fsync, one log)
//!                                                           │ durable: reply; announce the seq
//!                                                           ▼
//!  peer::pusher (one per peer) reads the client changes after its durable cursor ─HTTP─▶ peer
//!  peer ─HTTP─▶ http::peer ─┐
//!  peer::sync (pull feed) ──┴─▶ peer::apply (one replica applier) ─▶ the same shards and rules
//! ```
//!
//! - [`protocol`]: envelope, poll and ack types, canonical strings, signatures (one Ed25519 rule
//!   for single and batch checks), peer URL normalization, the peer plane's wire constants (no
//!   I/O).
//! - [`mailbox`]: the rules of SPEC §4 and the shard actors that own them.
//! - [`store`]: the durable state behind a trait (fjall by default, redb for older data dirs and
//!   memory mode), the group-commit writer thread, and its in-memory window of the newest client
//!   changes that the pushers read.
//! - [`peer`]: peer URLs, HMAC authentication, the pushers (from the log), the pullers, and the
//!   one replica applier both directions share.
//! - [`http`]: routes, body limits, the error table, the per-worker batch of client signatures.
//! - [`client`]: the client library (keys, Appendix A payload, signed requests, HTTP) behind
//!   `dmrelay send` and `dmrelay inbox`.
//! - [`demo`]: `dmrelay demo`, a three-node mesh and a story told in the terminal.
//! - [`config`]: settings from file and environment; [`metrics`]: Prometheus; [`node`]: start/stop;
//!   [`tls`]: HTTPS for both planes and peer links; [`fd_limit`]: room for many open connections;
//!   [`startup`]: start-up checks and the start-up log line; [`status`]: the node's view of its
//!   peers for `GET /status`; [`ops`]: the operator commands `init` and `status`.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod client;
pub mod config;
pub mod demo;
pub mod fd_limit;
pub mod http;
pub mod mailbox;
pub mod metrics;
pub mod node;
pub mod ops;
pub mod peer;
pub mod protocol;
pub mod startup;
pub mod status;
pub mod store;
#[cfg(test)]
mod test_envelopes;
pub mod tls;
