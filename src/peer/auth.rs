//! Peer authentication (SPEC §5.1–5.2): key derivation and request HMACs, as pure functions.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
    }
}

/// `HMAC(HMAC("sb-peer-auth-v1", secret), caller_url ‖ 0x01)`: the key between a caller whose
/// normalized URL is `caller_url` and any receiver sharing `secret`.
pub fn derive_peer_key(secret: &[u8], caller_url: &str) -> [u8; 32] {
    let mut key = hmac(&derive_prk(secret));
    key.update(caller_url.as_bytes());
    key.update(&[0x01]);
    key.finalize().into_bytes().into()
}

/// The pseudo-random key of the derivation's first step (exposed for the vector test).
pub fn derive_prk(secret: &[u8]) -> [u8; 32] {
    let mut prk = hmac(b"sb-peer-auth-v1");
    prk.update(secret);
    prk.finalize().into_bytes().into()
}

fn request_mac(
    peer_key: &[u8; 32],
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    body: &[u8],
) -> HmacSha256 {
    let mut mac = hmac(peer_key);
    mac.update(b"sbdm-peer-v1\n");
    mac.update(method.as_bytes());
    mac.update(b"\n");
    mac.update(path_and_query.as_bytes());
    mac.update(b"\n");
    mac.update(timestamp.as_bytes());
    mac.update(b"\n");
    mac.update(body);
    mac
}

/// Lowercase hex `X-Peer-HMAC` of a request.
pub fn sign_request(
    peer_key: &[u8; 32],
    method: &str,
    path_and_query: &str,
    timestamp: u64,
    body: &[u8],
) -> String {
    let mac = request_mac(
        peer_key,
        method,
        path_and_query,
        &timestamp.to_string(),
        body,
    );
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of a received `X-Peer-HMAC` (hex) against the request.
pub fn verify_request(
    peer_key: &[u8; 32],
    method: &str,
    path_and_query: &str,
    timestamp: &str,
    body: &[u8],
    hmac_hex: &str,
) -> bool {
    let Ok(tag) = hex::decode(hmac_hex) else {
        return false;
    };
    request_mac(peer_key, method, path_and_query, timestamp, body)
        .verify_slice(&tag)
        .is_ok()
}
