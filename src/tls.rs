//! TLS (rustls with the `ring` provider): the server side of both planes and the client side of
//! peer links.
//!
//! With `MESH_DM_TLS_CERT` and `MESH_DM_TLS_KEY` a node serves HTTPS on every listener. Peer
//! links to `https://` URLs verify the peer's certificate against the public web roots plus the
//! CAs in `MESH_RELAY_CA_FILE` (for a mesh with its own CA). HTTP/1.1 only, on both sides.

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM file (at least one).
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The server configuration for a certificate chain and its private key (PEM files).
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, String> {
    let chain = load_certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("{} is not a PEM private key: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The client configuration of peer links: public web roots plus the CAs of `extra_ca`.
pub fn client_config(extra_ca: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = extra_ca {
        for cert in load_certificates(path)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
        }
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// An HTTP client for `http://` and `https://` URLs that trusts `tls`'s roots.
pub fn http_client(tls: Arc<rustls::ClientConfig>, timeout: std::time::Duration) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(tls))
        .timeout(timeout)
        .disable_redirects()
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    #[test]
    fn fixtures_load_and_mismatches_are_named() {
        assert!(server_config(&fixture("test-node.pem"), &fixture("test-node.key")).is_ok());
        assert!(client_config(Some(&fixture("test-ca.pem"))).is_ok());
        assert!(client_config(None).is_ok());
        let err = server_config(&fixture("test-node.key"), &fixture("test-node.key")).unwrap_err();
        assert!(err.contains("certificate"), "{err}");
        let err = server_config(&fixture("test-node.pem"), &fixture("test-ca.pem")).unwrap_err();
        assert!(err.contains("private key"), "{err}");
        let err = client_config(Some(&fixture("missing.pem"))).unwrap_err();
        assert!(err.contains("cannot read"), "{err}");
    }
}
