//! Peer URL normalization (SPEC §5.1): the name of a node, used in `X-Peer-Url`, key
//! derivation and configuration. Pure (text in, normalized text or a sentence out), so the
//! configuration can use it without depending on the peer plane; `peer::url` re-exports it.

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
