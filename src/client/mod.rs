//! The client side of dmrelay: what an application (or the `dmrelay send` / `dmrelay inbox`
//! commands) needs to write to a mailbox and to read its own, over HTTP.
//!
//! How data flows:
//!
//! ```text
//! send:   text ─payload::seal─▶ box bytes ─message::build_envelope (Envelope::sign)─▶ Envelope
//!              ─http::Client::deposit─▶ POST /api/mesh/dm/send ─▶ DepositStatus | ClientError
//! read:   http::Client::poll (PollRequest::sign, + wait_s) ─▶ raw envelopes (JSON)
//!              ─message::open_received (parse, verify signature, mailbox is mine, payload::open)─▶
//!              Received { content: Read | Undecryptable | Rejected }
//!         http::Client::ack (AckObject::sign) ─▶ AckReport
//! ```
//!
//! - [`keys`]: the secret key file format (`dmrelay-secret-key-v1:`), which a public key can never
//!   be mistaken for.
//! - [`payload`]: SPEC Appendix A (`sbdm-box-v1`): X25519 keys derived from the Ed25519 keys as
//!   libsodium does, the padded JSON plaintext, `nonce ‖ crypto_box_easy`.
//! - [`message`]: envelopes built from text, and envelopes received on a poll checked and opened.
//! - [`display`]: a UTC time and terminal-safe text, for showing messages to a person.
//! - [`http`]: the async [`Client`] over `awc` (deposit, long poll, ack).
//!
//! Nothing here prints: every failure is a [`ClientError`] whose text is a sentence a person can
//! act on, and whose variant tells a program what happened.

pub mod display;
pub mod http;
pub mod keys;
pub mod message;
pub mod payload;

pub use http::{AckReport, Client, ClientOptions, DepositStatus, Inbox, PollPage};
pub use keys::{KeyError, load_secret_key, parse_secret_key, secret_key_file_text};
pub use message::{Content, EnvelopeProblem, Received, build_envelope, open_received};
pub use payload::{OpenError, Plaintext, open, seal, seal_with_nonce};

/// An error answer of a node (SPEC §1, §6.5): `{"ok": false, "error", "detail", …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    /// The HTTP status.
    pub status: u16,
    /// The SPEC's `error` code (`cap_violation`, `bad_signature`, …).
    pub code: String,
    /// The node's sentence for a person.
    pub detail: String,
    /// Every other field of the body (`pending` and `limit` for `cap_violation`, …).
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// The `Retry-After` header in seconds, when the node sent one.
    pub retry_after_s: Option<u64>,
}

impl SpecError {
    /// An extra numeric field of the body, such as `pending` or `limit`.
    pub fn extra_u64(&self, field: &str) -> Option<u64> {
        self.extra.get(field).and_then(serde_json::Value::as_u64)
    }
}

/// Every way a client operation can fail.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The node could not be reached, or the connection broke before a full answer.
    #[error(
        "Cannot reach the relay at {url}: {reason}. Check the URL and that the node is running."
    )]
    Transport { url: String, reason: String },
    /// The node refused the request with a SPEC error.
    #[error("{} ({}, HTTP {})", .0.detail, .0.code, .0.status)]
    Refused(SpecError),
    /// The node answered something that is not a SPEC reply (another server at that URL?).
    #[error("The server at {url} did not answer as a dmrelay node: {reason}.")]
    BadReply { url: String, reason: String },
    /// A secret key file could not be read, written, or is not a secret key.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// An argument the client cannot build a request from (a malformed mailbox key, node URL…).
    #[error("{0}")]
    Invalid(String),
    /// A received message could not be opened (the box, its padding or its JSON).
    #[error("The message is undecryptable: {0}.")]
    Undecryptable(#[from] OpenError),
    /// A received envelope failed the recipient's own checks (shape, mailbox, signature).
    #[error("The envelope was rejected: {0}.")]
    Rejected(#[from] EnvelopeProblem),
    /// The operating system's random source failed.
    #[error("No randomness available from the operating system: {0}.")]
    Randomness(String),
}

impl ClientError {
    /// The SPEC error, when the node refused the request.
    pub fn spec(&self) -> Option<&SpecError> {
        match self {
            Self::Refused(spec) => Some(spec),
            _ => None,
        }
    }
}

impl From<getrandom::Error> for ClientError {
    fn from(err: getrandom::Error) -> Self {
        Self::Randomness(err.to_string())
    }
}
