//! Operator commands: [`init`] writes a node's `node.toml`; [`report`] reads a running node's
//! `GET /status` for `dmrelay status`. The binary (`src/main.rs`) only parses arguments and
//! calls these.

pub mod init;
pub mod report;
