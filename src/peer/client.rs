//! Signed HTTP calls to one peer (SPEC §5.2), shared by its pusher and its sync actor.
//!
//! `awc::Client` is `!Send`: each actor builds its own `PeerClient` in `started()`.

use super::auth::{derive_peer_key, sign_request};
use super::policy::{CallVerdict, RETRY_AFTER_MAX, parse_retry_after};
use crate::config::PeerSettings;
use crate::protocol::now_unix;
use crate::protocol::wire::{HEADER_PEER_HMAC, HEADER_PEER_TIMESTAMP, HEADER_PEER_URL};
use actix_web::error::ParseError;
use actix_web::http::Method;
use actix_web::web::Bytes;
use awc::error::{ConnectError, SendRequestError};
use std::time::Duration;

/// Largest response body read from a peer (a full feed page of large envelopes fits).
pub const MAX_PEER_RESPONSE_BYTES: usize = 32 * 1024 * 1024;

/// Why a call to a peer failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerCallError {
    #[error("transport: {0}")]
    Transport(String),
    #[error("HTTP {status}: {body}")]
    Status {
        status: u16,
        body: String,
        /// The reply's `Retry-After`, parsed.
        retry_after: Option<Duration>,
    },
    #[error("unexpected reply: {0}")]
    BadReply(String),
}

impl PeerCallError {
    /// What to do about this failure: retry transport errors, 5xx and 429 (after the peer's
    /// `Retry-After`); retry a 403 too but as an auth problem (a secret being rotated, or wrong);
    /// go past any other 4xx or a reply that is not the protocol's, which would fail again.
    pub fn verdict(&self) -> CallVerdict {
        match self {
            Self::Transport(_) => CallVerdict::Retry { retry_after: None },
            Self::Status {
                status,
                retry_after,
                ..
            } => match status {
                403 => CallVerdict::AuthRefused,
                429 | 500.. => CallVerdict::Retry {
                    retry_after: *retry_after,
                },
                _ => CallVerdict::Advance,
            },
            Self::BadReply(_) => CallVerdict::Advance,
        }
    }
}

/// Everything needed to reach one peer; `Send`, so actors take it and build their
/// (`!Send`) [`PeerClient`] on their own arbiter.
#[derive(Clone, Debug)]
pub struct PeerLink {
    pub peer: PeerSettings,
    /// This node's normalized URL (its identity in `X-Peer-Url` and the key derivation).
    pub self_url: String,
    pub timeout: Duration,
    /// Connect timeout (TCP, SOCKS and TLS handshakes), longer for a peer behind a proxy.
    pub connect_timeout: Duration,
    pub tls: std::sync::Arc<rustls::ClientConfig>,
}

impl PeerLink {
    /// The peer's normalized URL.
    pub fn url(&self) -> &str {
        &self.peer.url
    }

    /// Logs that the peer refused our signature (403 `peer_auth`, SPEC §5.2) on `op` ("push" or
    /// "feed pull"), with its usual causes: loud, but only the first refusal of a run and then
    /// every 20th, since the call is retried.
    pub fn log_auth_refused(&self, op: &str, err: &PeerCallError, failures: u32) {
        if failures == 1 || failures.is_multiple_of(20) {
            tracing::error!(peer = %self.peer.url, %err, failures, "{op} refused: peer refused our HMAC (peer_auth): check that it lists our self URL {} and shares the secret; retrying", self.self_url);
        }
    }

    /// A client for this link; call it on the arbiter that will use it.
    pub fn client(&self) -> PeerClient {
        PeerClient::new(
            &self.peer,
            &self.self_url,
            self.timeout,
            self.connect_timeout,
            std::sync::Arc::clone(&self.tls),
        )
    }
}

#[derive(Clone)]
pub struct PeerClient {
    http: awc::Client,
    /// The peer's normalized URL (requests go to `{peer_url}{path}`).
    pub peer_url: String,
    /// Path part of the peer URL, prefixed to every signed path.
    path_prefix: String,
    self_url: String,
    key: [u8; 32],
}

impl PeerClient {
    pub fn new(
        peer: &PeerSettings,
        self_url: &str,
        timeout: Duration,
        connect_timeout: Duration,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Self {
        let path_prefix = url::Url::parse(&peer.url)
            .map(|u| u.path().trim_end_matches('/').to_string())
            .unwrap_or_default();
        Self {
            http: super::socks::peer_http_client(
                tls,
                timeout,
                connect_timeout,
                peer.socks_proxy.as_deref(),
            ),
            peer_url: peer.url.clone(),
            path_prefix,
            self_url: self_url.to_string(),
            key: derive_peer_key(peer.secret.as_bytes(), self_url),
        }
    }

    fn origin(&self) -> &str {
        self.peer_url
            .strip_suffix(&self.path_prefix)
            .unwrap_or(&self.peer_url)
    }

    /// `POST {path}` with a JSON body; the reply body on 2xx.
    pub async fn post(&self, path: &str, body: Vec<u8>) -> Result<Bytes, PeerCallError> {
        self.call(Method::POST, path, Bytes::from(body)).await
    }

    /// `GET {path_and_query}`; the reply body on 2xx.
    pub async fn get(&self, path_and_query: &str) -> Result<Bytes, PeerCallError> {
        self.call(Method::GET, path_and_query, Bytes::new()).await
    }

    /// A signed call. A kept-alive connection that the peer closed or reset without an answer
    /// (its keep-alive ran out as this request went out on it) is dropped, and the call is tried
    /// once more, freshly signed, on another connection (a new one, or a pooled one idle less
    /// than [`super::socks::PEER_CONN_IDLE`]). Against a dmrelay peer that idle bound already
    /// avoids the race; the retry covers peers with a shorter keep-alive. Every peer call is
    /// idempotent (feed reads, replicas), so a second try cannot apply anything twice.
    async fn call(&self, method: Method, path: &str, body: Bytes) -> Result<Bytes, PeerCallError> {
        let path_and_query = format!("{}{path}", self.path_prefix);
        let url = format!("{}{path_and_query}", self.origin());
        let mut tried_again = false;
        loop {
            let timestamp = now_unix();
            let hmac = sign_request(
                &self.key,
                method.as_str(),
                &path_and_query,
                timestamp,
                &body,
            );
            let request = self
                .http
                .request(method.clone(), &url)
                .insert_header((HEADER_PEER_URL, self.self_url.as_str()))
                .insert_header((HEADER_PEER_TIMESTAMP, timestamp.to_string()))
                .insert_header((HEADER_PEER_HMAC, hmac));
            let response = if method == Method::GET {
                request.send().await
            } else {
                request
                    .insert_header(("content-type", "application/json"))
                    .send_body(body.clone())
                    .await
            };
            match response {
                Err(err) if !tried_again && closed_before_answer(&err) => tried_again = true,
                response => return Self::read(response).await,
            }
        }
    }

    async fn read<S>(
        response: Result<awc::ClientResponse<S>, awc::error::SendRequestError>,
    ) -> Result<Bytes, PeerCallError>
    where
        S: futures_util::Stream<Item = Result<Bytes, actix_web::error::PayloadError>> + Unpin,
    {
        let mut response = response.map_err(|e| PeerCallError::Transport(e.to_string()))?;
        let status = response.status().as_u16();
        // Read (and capped) only for a refusal, so no caller can overflow an `Instant` with it.
        let retry_after = (!(200..300).contains(&status))
            .then(|| response.headers().get(actix_web::http::header::RETRY_AFTER))
            .flatten()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, now_unix()))
            .map(|wait| wait.min(RETRY_AFTER_MAX));
        let body = response
            .body()
            .limit(MAX_PEER_RESPONSE_BYTES)
            .await
            .map_err(|e| PeerCallError::Transport(e.to_string()))?;
        if (200..300).contains(&status) {
            Ok(body)
        } else {
            let text: String = String::from_utf8_lossy(&body).chars().take(300).collect();
            Err(PeerCallError::Status {
                status,
                body: text,
                retry_after,
            })
        }
    }
}

/// Whether the connection died before any answer came: closed (EOF) or reset while the request
/// went out or its answer was awaited. On a kept-alive connection that is the peer's keep-alive
/// running out just then.
fn closed_before_answer(err: &SendRequestError) -> bool {
    let reset = |io: &std::io::Error| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
        )
    };
    match err {
        SendRequestError::Connect(ConnectError::Disconnected) => true,
        SendRequestError::Send(io) | SendRequestError::Response(ParseError::Io(io)) => reset(io),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// What the raw peer does with a request.
    #[derive(Clone, Copy)]
    enum Reply {
        Ok,
        /// Closes the connection without an answer (EOF).
        Close,
        /// Resets the connection without an answer (RST: `SO_LINGER` 0, then close).
        Reset,
    }

    /// A peer on a raw socket: each connection's request is read, then treated as `reply(n)`
    /// says for the n-th connection (from 1). Returns its URL and, once `END` arrives on a
    /// connection, how many requests it saw.
    fn raw_peer(reply: fn(usize) -> Reply) -> (String, std::thread::JoinHandle<usize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = std::thread::spawn(move || {
            let mut requests = 0;
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut buffer = [0u8; 4096];
                let n = stream.read(&mut buffer).unwrap_or(0);
                if buffer[..n].starts_with(b"END") {
                    return requests;
                }
                requests += 1;
                match reply(requests) {
                    Reply::Ok => stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
                        )
                        .unwrap(),
                    Reply::Close => {}
                    Reply::Reset => {
                        use std::os::fd::AsRawFd;
                        let linger = libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        };
                        // SAFETY: setsockopt on an open socket with a valid option value.
                        let set = unsafe {
                            libc::setsockopt(
                                stream.as_raw_fd(),
                                libc::SOL_SOCKET,
                                libc::SO_LINGER,
                                (&raw const linger).cast(),
                                std::mem::size_of::<libc::linger>() as libc::socklen_t,
                            )
                        };
                        assert_eq!(set, 0);
                    }
                }
            }
            requests
        });
        (url, seen)
    }

    fn client_of(url: &str) -> PeerClient {
        let peer = PeerSettings {
            url: url.to_string(),
            secret: "secret".into(),
            socks_proxy: None,
        };
        let tls = crate::tls::client_config(None).unwrap();
        PeerClient::new(
            &peer,
            "http://127.0.0.1:1",
            Duration::from_secs(5),
            Duration::from_secs(5),
            std::sync::Arc::new(tls),
        )
    }

    fn requests_seen(url: &str, seen: std::thread::JoinHandle<usize>) -> usize {
        let mut end = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
        end.write_all(b"END").unwrap();
        seen.join().unwrap()
    }

    #[actix_rt::test]
    async fn a_connection_closed_without_an_answer_is_tried_once_more() {
        let (url, seen) = raw_peer(|n| if n == 1 { Reply::Close } else { Reply::Ok });
        let client = client_of(&url);
        assert_eq!(client.get("/feed").await.unwrap(), "ok");
        assert_eq!(client.post("/push", b"{}".to_vec()).await.unwrap(), "ok");
        assert_eq!(
            requests_seen(&url, seen),
            3,
            "one more try, for the first call only"
        );
    }

    #[actix_rt::test]
    async fn a_connection_reset_without_an_answer_is_tried_once_more() {
        let (url, seen) = raw_peer(|n| if n == 1 { Reply::Reset } else { Reply::Ok });
        let client = client_of(&url);
        assert_eq!(client.get("/feed").await.unwrap(), "ok");
        assert_eq!(requests_seen(&url, seen), 2);
    }

    #[actix_rt::test]
    async fn a_peer_that_never_answers_is_tried_only_twice() {
        let (url, seen) = raw_peer(|_| Reply::Close);
        let client = client_of(&url);
        let err = client.post("/push", b"{}".to_vec()).await.unwrap_err();
        assert!(matches!(err, PeerCallError::Transport(_)), "{err}");
        assert_eq!(requests_seen(&url, seen), 2);
    }

    /// An HTTP/1.1 server with actix-web's default keep-alive (5 s, as a node's) whose answer is
    /// the client's port: two calls answered with the same port shared a connection.
    fn port_echo_peer() -> (String, actix_web::dev::ServerHandle) {
        let server = actix_web::HttpServer::new(|| {
            actix_web::App::new().default_service(actix_web::web::to(
                |request: actix_web::HttpRequest| async move {
                    request
                        .peer_addr()
                        .map_or(0, |addr| addr.port())
                        .to_string()
                },
            ))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .unwrap();
        let url = format!("http://{}", server.addrs()[0]);
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        (url, handle)
    }

    #[actix_rt::test]
    async fn an_idle_connection_is_not_reused_when_the_peer_may_be_closing_it() {
        let (url, server) = port_echo_peer();
        let client = client_of(&url);
        let first = client.get("/a").await.unwrap();
        assert_eq!(
            client.get("/b").await.unwrap(),
            first,
            "a connection just used is kept for the next call"
        );
        // Past our idle bound, still inside the peer's 5 s keep-alive: awc's own default (15 s)
        // would reuse this connection, which the peer is about to close.
        actix_rt::time::sleep(crate::peer::socks::PEER_CONN_IDLE + Duration::from_millis(300))
            .await;
        assert_ne!(
            client.get("/c").await.unwrap(),
            first,
            "a connection idle for {:?} must not be reused",
            crate::peer::socks::PEER_CONN_IDLE
        );
        server.stop(false).await;
    }

    fn status(status: u16, retry_after: Option<u64>) -> PeerCallError {
        PeerCallError::Status {
            status,
            body: String::new(),
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn every_outcome_says_what_to_do() {
        let retry = |after: Option<u64>| CallVerdict::Retry {
            retry_after: after.map(Duration::from_secs),
        };
        let cases = [
            (PeerCallError::Transport("refused".into()), retry(None)),
            (status(500, None), retry(None)),
            (status(503, Some(7)), retry(Some(7))),
            (status(429, Some(2)), retry(Some(2))),
            (status(429, None), retry(None)),
            (status(403, Some(9)), CallVerdict::AuthRefused),
            (status(400, None), CallVerdict::Advance),
            (status(404, None), CallVerdict::Advance),
            (status(413, Some(1)), CallVerdict::Advance),
            (
                PeerCallError::BadReply("3 results for 2 items".into()),
                CallVerdict::Advance,
            ),
        ];
        for (error, verdict) in cases {
            assert_eq!(error.verdict(), verdict, "{error}");
        }
    }
}
