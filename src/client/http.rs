//! [`Client`]: the client plane of one node over HTTP(S) (SPEC §6.1–6.3), built on `awc`.
//!
//! Each call signs its request (with the helpers of [`crate::protocol`]), POSTs it, and turns the
//! answer into a typed value, or into a [`ClientError`]: `Transport` when the node could not be
//! reached or did not answer in time, `Refused` with the SPEC error (`code`, `detail`, extra
//! fields) when it said no, `BadReply` when what answered is not a dmrelay node.
//!
//! `awc` is `!Send`: a `Client` lives on one thread inside an actix runtime
//! (`actix_rt::System::new().block_on(…)` in a command, `#[actix_rt::test]` in a test).
//! A long poll holds its request open for up to `wait_s` seconds, so its timeout is
//! `wait_s` plus [`ClientOptions::timeout`].

use super::message::{Received, build_envelope, open_received};
use super::{ClientError, SpecError};
use crate::protocol::ack::MAX_ACK_IDS;
use crate::protocol::poll::MAX_POLL_LIMIT;
use crate::protocol::{AckObject, Envelope, MailboxKey, MsgId, PollRequest, now_unix, random_hex};
use ed25519_dalek::SigningKey;
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Longest long poll a node allows (SPEC §6.2).
pub const MAX_WAIT_S: u64 = crate::protocol::poll::MAX_POLL_WAIT_S;
/// The largest reply body read (a poll of 100 envelopes of 8 KiB is about 1.1 MB).
const MAX_REPLY_BYTES: usize = 32 << 20;

/// How to reach a node.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Extra CA certificates (PEM) to trust for `https://` nodes, besides the public web roots.
    pub ca_file: Option<PathBuf>,
    /// How long a request may take, on top of a long poll's `wait_s`.
    pub timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            ca_file: None,
            timeout: Duration::from_secs(15),
        }
    }
}

/// SPEC §6.1's outcome of a deposit that was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DepositStatus {
    /// Stored (and being replicated).
    Accepted,
    /// The node already held this exact envelope.
    Duplicate,
    /// The recipient had already acknowledged this `msg_id`.
    Acked,
}

impl DepositStatus {
    /// The SPEC's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Duplicate => "duplicate",
            Self::Acked => "acked",
        }
    }
}

/// One poll reply as the node sent it (envelopes unchecked).
#[derive(Debug, Clone)]
pub struct PollPage {
    pub messages: Vec<Value>,
    /// Every envelope pending in the mailbox on that node.
    pub pending: u64,
    /// More are pending than this page holds.
    pub has_more: bool,
}

/// One poll reply with every envelope checked and opened.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub messages: Vec<Received>,
    pub pending: u64,
    pub has_more: bool,
}

/// SPEC §6.3's answer to an ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AckReport {
    pub removed: u64,
    pub unknown: u64,
}

/// The client plane of one node.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: awc::Client,
    timeout: Duration,
}

impl Client {
    /// A client for the node at `node_url` (`http://host:port` or `https://…`).
    pub fn new(node_url: &str, options: &ClientOptions) -> Result<Self, ClientError> {
        let parsed = url::Url::parse(node_url).map_err(|e| {
            ClientError::Invalid(format!(
                "The node URL {node_url:?} is not a URL ({e}); write it as http://HOST:PORT or https://HOST:PORT."
            ))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(ClientError::Invalid(format!(
                "The node URL {node_url:?} must start with http:// or https:// and name a host, e.g. http://127.0.0.1:8787."
            )));
        }
        let tls = crate::tls::client_config(options.ca_file.as_deref())
            .map_err(|e| ClientError::Invalid(format!("Cannot set up TLS: {e}.")))?;
        Ok(Self {
            base: node_url.trim_end_matches('/').to_string(),
            http: crate::tls::http_client(Arc::new(tls), options.timeout),
            timeout: options.timeout,
        })
    }

    /// The node's base URL, as given.
    pub fn node_url(&self) -> &str {
        &self.base
    }

    /// Deposits a signed envelope (SPEC §6.1).
    pub async fn deposit(&self, envelope: &Envelope) -> Result<DepositStatus, ClientError> {
        let body = serde_json::to_vec(envelope).map_err(|e| self.bad_reply(e))?;
        let path = "/api/mesh/dm/send";
        let reply = self.post(path, body, self.timeout).await?;
        match reply.get("status").and_then(Value::as_str) {
            Some("accepted") => Ok(DepositStatus::Accepted),
            Some("duplicate") => Ok(DepositStatus::Duplicate),
            Some("acked") => Ok(DepositStatus::Acked),
            other => Err(self.bad_reply(format!("{path} answered status {other:?}"))),
        }
    }

    /// Encrypts `text` for `to` (Appendix A), signs it as `sender`, deposits it. Returns the
    /// envelope sent and the node's outcome.
    pub async fn send_text(
        &self,
        sender: &SigningKey,
        to: &MailboxKey,
        text: &str,
        ttl_s: u64,
    ) -> Result<(Envelope, DepositStatus), ClientError> {
        let envelope = build_envelope(sender, to, text, now_unix(), ttl_s)?;
        let status = self.deposit(&envelope).await?;
        Ok((envelope, status))
    }

    /// A signed poll of `owner`'s mailbox (SPEC §6.2): at most `limit` envelopes (0..=100),
    /// waiting up to `wait_s` seconds (0..=30) for one when the mailbox is empty.
    pub async fn poll(
        &self,
        owner: &SigningKey,
        limit: u64,
        wait_s: u64,
    ) -> Result<PollPage, ClientError> {
        if limit > MAX_POLL_LIMIT {
            return Err(ClientError::Invalid(format!(
                "A poll returns at most {MAX_POLL_LIMIT} messages; ask for fewer."
            )));
        }
        if wait_s > MAX_WAIT_S {
            return Err(ClientError::Invalid(format!(
                "A node waits at most {MAX_WAIT_S} s for mail; use a wait of 0 to {MAX_WAIT_S}."
            )));
        }
        let nonce = random_hex(16)?;
        let mut body = PollRequest::sign(owner, now_unix(), nonce, limit).to_json();
        if wait_s > 0
            && let Some(object) = body.as_object_mut()
        {
            // Not part of the signed string (SPEC §6.2).
            object.insert("wait_s".into(), wait_s.into());
        }
        let body = serde_json::to_vec(&body).map_err(|e| self.bad_reply(e))?;
        let timeout = self.timeout + Duration::from_secs(wait_s);
        let reply = self.post("/api/mesh/dm/poll", body, timeout).await?;
        let mut reply = reply;
        let messages = match reply.get_mut("messages").map(Value::take) {
            Some(Value::Array(messages)) => messages,
            _ => return Err(self.bad_reply("the poll reply has no `messages` list")),
        };
        Ok(PollPage {
            messages,
            pending: reply.get("pending").and_then(Value::as_u64).unwrap_or(0),
            has_more: reply
                .get("has_more")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        })
    }

    /// [`Self::poll`], then every envelope checked and opened with `owner`'s key.
    pub async fn inbox(
        &self,
        owner: &SigningKey,
        limit: u64,
        wait_s: u64,
    ) -> Result<Inbox, ClientError> {
        let page = self.poll(owner, limit, wait_s).await?;
        Ok(Inbox {
            messages: page
                .messages
                .iter()
                .map(|value| open_received(owner, value))
                .collect(),
            pending: page.pending,
            has_more: page.has_more,
        })
    }

    /// Acknowledges `msg_ids` in `owner`'s mailbox (SPEC §6.3), in signed batches of at most
    /// 100; the reports are added up. No ids, no request.
    pub async fn ack(
        &self,
        owner: &SigningKey,
        msg_ids: &[MsgId],
    ) -> Result<AckReport, ClientError> {
        let mut total = AckReport::default();
        for batch in msg_ids.chunks(MAX_ACK_IDS) {
            let ack = AckObject::sign(owner, now_unix(), batch.to_vec());
            let body = serde_json::to_vec(&ack).map_err(|e| self.bad_reply(e))?;
            let reply = self.post("/api/mesh/dm/ack", body, self.timeout).await?;
            total.removed += reply.get("removed").and_then(Value::as_u64).unwrap_or(0);
            total.unknown += reply.get("unknown").and_then(Value::as_u64).unwrap_or(0);
        }
        Ok(total)
    }

    fn bad_reply(&self, reason: impl ToString) -> ClientError {
        ClientError::BadReply {
            url: self.base.clone(),
            reason: reason.to_string(),
        }
    }

    /// POSTs JSON; returns the body of a `200 {"ok": true, …}` reply.
    async fn post(
        &self,
        path: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |reason: String| ClientError::Transport {
            url: url.clone(),
            reason,
        };
        let mut response = self
            .http
            .post(&url)
            .timeout(timeout)
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .map_err(|e| match e {
                awc::error::SendRequestError::Timeout => {
                    transport(format!("no answer within {} s", timeout.as_secs()))
                }
                other => transport(other.to_string()),
            })?;
        let status = response.status().as_u16();
        let retry_after_s = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| crate::peer::policy::parse_retry_after(v, now_unix()))
            .map(|wait| wait.as_secs());
        let bytes = response
            .body()
            .limit(MAX_REPLY_BYTES)
            .await
            .map_err(|e| transport(format!("reading the reply: {e}")))?;
        let reply: Value = serde_json::from_slice(&bytes).map_err(|_| {
            self.bad_reply(format!(
                "POST {path} answered HTTP {status} with a body that is not JSON"
            ))
        })?;
        let ok = reply.get("ok").and_then(Value::as_bool);
        if (200..300).contains(&status) && ok == Some(true) {
            return Ok(reply);
        }
        match reply {
            Value::Object(mut fields) if ok == Some(false) => {
                let mut take = |name: &str| match fields.remove(name) {
                    Some(Value::String(s)) => s,
                    _ => String::new(),
                };
                let code = take("error");
                let detail = take("detail");
                fields.remove("ok");
                Err(ClientError::Refused(SpecError {
                    status,
                    code,
                    detail,
                    extra: fields,
                    retry_after_s,
                }))
            }
            _ => Err(self.bad_reply(format!(
                "POST {path} answered HTTP {status} without the SPEC's `ok` field"
            ))),
        }
    }
}
