//! SOCKS5 connector for peer links behind a proxy (Tor), so `http://xxx.onion:8787` peers work.
//!
//! A peer whose settings name a proxy gets an awc client whose TCP connector is
//! [`SocksConnector`]: awc hands it the request's URI, it opens a TCP connection to the proxy and
//! asks it (RFC 1928 CONNECT, no authentication) for the peer's host name and port. The name is
//! sent as is, never resolved here (`socks5h` semantics), which is what `.onion` names need.
//! TLS (for `https` peers) and HTTP then run over that stream exactly as on a direct link.

use actix_rt::net::TcpStream;
use actix_service::Service;
use actix_tls::connect::{
    ConnectError as TcpConnectError, ConnectInfo, Connection as TcpConnection,
};
use awc::http::Uri;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

pub use crate::protocol::peer_url::{DIRECT, SOCKS_SCHEME, parse_socks_proxy};

/// Connect timeout of a peer link through a proxy when none is configured: a Tor circuit to an
/// onion service often takes 10-30 s to build.
pub const DEFAULT_PROXIED_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// Connect timeout of a direct peer link when none is configured (awc's own default).
pub const DEFAULT_DIRECT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a peer link keeps an idle connection for its next call. Below the 5 s after which a
/// dmrelay node (actix-web's default keep-alive) closes an idle connection: a call never goes out
/// on a connection the peer is closing just then (the pull, every 5 s by default, would
/// otherwise race the peer's close: EOF or a reset before any answer). A peer with a shorter
/// keep-alive is still covered by [`super::client::PeerClient`]'s one retry.
pub const PEER_CONN_IDLE: Duration = Duration::from_secs(4);

/// The awc client of one peer link: through `proxy` (`host:port`) when given, else direct.
/// `connect_timeout` bounds the TCP connect, the SOCKS handshake and the TLS handshake;
/// `request_timeout` the whole request, which through a proxy also has to cover the connect.
pub fn peer_http_client(
    tls: Arc<rustls::ClientConfig>,
    request_timeout: Duration,
    connect_timeout: Duration,
    proxy: Option<&str>,
) -> awc::Client {
    let builder = awc::Client::builder().disable_redirects();
    match proxy {
        Some(proxy) => builder
            .timeout(request_timeout + connect_timeout)
            .connector(
                awc::Connector::new()
                    .connector(SocksConnector::new(proxy.to_string()))
                    .rustls_0_23(tls)
                    .timeout(connect_timeout)
                    .handshake_timeout(connect_timeout)
                    .conn_keep_alive(PEER_CONN_IDLE),
            )
            .finish(),
        None => builder
            .timeout(request_timeout)
            .connector(
                awc::Connector::new()
                    .rustls_0_23(tls)
                    .timeout(connect_timeout)
                    .handshake_timeout(connect_timeout)
                    .conn_keep_alive(PEER_CONN_IDLE),
            )
            .finish(),
    }
}

/// awc's TCP connector for one proxy (`host:port`).
#[derive(Clone, Debug)]
pub struct SocksConnector {
    proxy: String,
}

impl SocksConnector {
    pub fn new(proxy: String) -> Self {
        Self { proxy }
    }
}

impl Service<ConnectInfo<Uri>> for SocksConnector {
    type Response = TcpConnection<Uri, TcpStream>;
    type Error = TcpConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>>>>;

    fn poll_ready(&self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&self, request: ConnectInfo<Uri>) -> Self::Future {
        let proxy = self.proxy.clone();
        let host = request.hostname().to_string();
        let port = request.port();
        let uri = request.request().clone();
        Box::pin(async move {
            let stream =
                tokio_socks::tcp::Socks5Stream::connect(proxy.as_str(), (host.as_str(), port))
                    .await
                    .map_err(|e| {
                        TcpConnectError::Io(std::io::Error::other(format!(
                            "SOCKS5 proxy {proxy} could not reach {host}:{port}: {e}"
                        )))
                    })?;
            Ok(TcpConnection::new(uri, stream.into_inner()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_settings_parse_or_say_what_is_wrong() {
        assert_eq!(
            parse_socks_proxy("socks5h://127.0.0.1:9050").unwrap(),
            Some("127.0.0.1:9050".into())
        );
        assert_eq!(
            parse_socks_proxy(" socks5h://tor:9050/ ").unwrap(),
            Some("tor:9050".into())
        );
        assert_eq!(parse_socks_proxy("direct").unwrap(), None);
        assert_eq!(parse_socks_proxy("").unwrap(), None);
        for bad in [
            "socks5://127.0.0.1:9050",
            "127.0.0.1:9050",
            "socks5h://127.0.0.1",
            "socks5h://:9050",
            "socks5h://u:p@h:1",
            "socks5h://h:0",
        ] {
            assert!(parse_socks_proxy(bad).is_err(), "{bad}");
        }
    }
}
