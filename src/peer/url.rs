//! Peer URL normalization (SPEC §5.1), kept here under its old name for the peer plane; it lives
//! in [`crate::protocol::peer_url`] so that the configuration need not import `peer`.

pub use crate::protocol::peer_url::normalize_peer_url;
