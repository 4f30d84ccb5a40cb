//! Peer URL normalization (SPEC §5.1): the name of a node, used in `X-Peer-Url`, key
//! derivation and configuration. Pure (text in, normalized text or a sentence out), so the
//! configuration can use it without depending on the peer plane; `peer::url` re-exports it.
//! The SOCKS5 proxy setting of a peer link (`socks5h://HOST:PORT` or `direct`) is parsed here too,
//! for the same reason; `peer::socks` re-exports it.

/// Normalizes a peer URL: scheme and host lowercased, default port dropped, trailing `/` of the
/// path removed, no query or fragment. Only `http` and `https` are peer schemes.
pub fn normalize_peer_url(input: &str) -> Result<String, String> {
    let parsed =
        url::Url::parse(input.trim()).map_err(|e| format!("{input:?} is not a URL ({e})"))?;
    let scheme = parsed.scheme();
    if scheme != "http" && scheme != "https" {
        return Err(format!("{input:?} must start with http:// or https://"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("{input:?} has no host"))?
        .to_ascii_lowercase();
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{input:?} must not have a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!("{input:?} must not carry credentials"));
    }
    // `Url::port` is already None when the port is the scheme's default.
    let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
    let path = parsed.path().trim_end_matches('/');
    Ok(format!("{scheme}://{host}{port}{path}"))
}

/// The only proxy scheme accepted: SOCKS5 with names resolved by the proxy.
pub const SOCKS_SCHEME: &str = "socks5h://";
/// What a `[[peers]]` entry says to reach that peer directly although a proxy is set.
pub const DIRECT: &str = "direct";

/// Parses a proxy setting: `socks5h://host:port` gives `Some("host:port")`; `"direct"` or an
/// empty value gives `None` (no proxy).
pub fn parse_socks_proxy(input: &str) -> Result<Option<String>, String> {
    let value = input.trim();
    if value.is_empty() || value.eq_ignore_ascii_case(DIRECT) {
        return Ok(None);
    }
    let Some(address) = value.strip_prefix(SOCKS_SCHEME) else {
        return Err(format!(
            "{value:?} must look like socks5h://127.0.0.1:9050 (or be \"direct\")"
        ));
    };
    let address = address.trim_end_matches('/');
    let port_ok = address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok || address.contains('/') || address.contains('@') {
        return Err(format!(
            "{value:?} must be socks5h://HOST:PORT with a port, e.g. socks5h://127.0.0.1:9050"
        ));
    }
    Ok(Some(address.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_is_not_a_peer_url() {
        for bad in [
            "",
            "relay.example",
            "ftp://relay.example",
            "http://a/?q=1",
            "http://a/#f",
            "http://u:p@a/",
        ] {
            assert!(normalize_peer_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keeps_non_default_ports_and_paths() {
        assert_eq!(
            normalize_peer_url("http://a:443/x//").unwrap(),
            "http://a:443/x"
        );
        assert_eq!(normalize_peer_url("https://a:80").unwrap(), "https://a:80");
    }
}
