//! The peer plane (SPEC §5, §7): URL normalization, authentication, and (later) the pusher and
//! sync actors.

pub mod auth;
pub mod url;
