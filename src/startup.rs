//! What a node checks and says when it starts, before it serves anything.
//!
//! `dmrelay serve` loads [`Settings`], validates `RUST_LOG` with [`check_log_filter`] (a filter
//! that silently turns every dmrelay log off is refused), binds its sockets, and then
//! [`crate::node::run`] calls [`Settings::adopt_bound_addresses`] (an unconfigured self URL is
//! made from the address actually bound, so port 0 and inherited sockets give the real port),
//! [`wildcard_self_url_warning`] and [`startup_line`] (one log line saying where every setting
//! that matters came from).

use crate::config::{PersistMode, Settings};
use std::net::SocketAddr;

impl Settings {
    /// Once the sockets are bound: an unconfigured self URL becomes
    /// `{scheme}://{peer plane or client plane address as bound}` (so `127.0.0.1:0` and
    /// socket activation give the real port), and a peer equal to it is dropped as it would
    /// have been at load time. A configured self URL is kept as it is.
    pub fn adopt_bound_addresses(&mut self, client: SocketAddr, peer: Option<SocketAddr>) {
        if self.self_peer_url_configured {
            return;
        }
        self.self_peer_url = crate::config::derived_self_url(self.scheme(), peer.unwrap_or(client));
        let own = self.self_peer_url.clone();
        self.peers.retain(|p| p.url != own);
    }
}

/// True when `url`'s host is `0.0.0.0` or `[::]`: an address to listen on, never one a peer can
/// be reached at or identified by.
pub fn is_wildcard_url(url: &str) -> bool {
    match url::Url::parse(url)
        .ok()
        .and_then(|u| u.host().map(|h| h.to_owned()))
    {
        Some(url::Host::Ipv4(ip)) => ip.is_unspecified(),
        Some(url::Host::Ipv6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}

/// The one warning line for a wildcard self URL, or None when the self URL is usable.
pub fn wildcard_self_url_warning(self_url: &str) -> Option<String> {
    is_wildcard_url(self_url).then(|| {
        format!(
            "the self URL {self_url} is a wildcard address and cannot be a peer URL: peers will refuse this node's pushes and pulls with 403; set MESH_SELF_PEER_URL (self_peer_url) to the URL peers reach this node at"
        )
    })
}

/// The start-up line's fields: config source, listen addresses, self URL, peers, store, mode.
pub fn startup_line(
    settings: &Settings,
    client: SocketAddr,
    peer: Option<SocketAddr>,
) -> StartupLine {
    let scheme = settings.scheme();
    StartupLine {
        config: settings.config_source.clone(),
        client_listen: format!("{scheme}://{client}"),
        peer_listen: peer.map_or_else(
            || "same as client".to_string(),
            |a| format!("{scheme}://{a}"),
        ),
        self_url: settings.self_peer_url.clone(),
        peers: if settings.peers.is_empty() {
            "none".to_string()
        } else {
            settings
                .peers
                .iter()
                .map(|p| p.url.as_str())
                .collect::<Vec<_>>()
                .join(",")
        },
        store: match settings.persist {
            PersistMode::Fsync => settings.data_dir.display().to_string(),
            PersistMode::Memory => "in memory (nothing on disk)".to_string(),
        },
        persist: match settings.persist {
            PersistMode::Fsync => "fsync",
            PersistMode::Memory => "memory",
        },
    }
}

/// See [`startup_line`]; logged by [`StartupLine::log`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupLine {
    pub config: String,
    pub client_listen: String,
    pub peer_listen: String,
    pub self_url: String,
    pub peers: String,
    pub store: String,
    pub persist: &'static str,
}

impl StartupLine {
    pub fn log(&self) {
        tracing::info!(
            config = %self.config,
            listen = %self.client_listen,
            peer_listen = %self.peer_listen,
            self_url = %self.self_url,
            peers = %self.peers,
            store = %self.store,
            persist = %self.persist,
            "dmrelay listening on {}",
            self.client_listen
        );
    }
}

/// The levels `RUST_LOG` knows.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The `RUST_LOG` rule of `dmrelay serve`: unset or empty means `info`; otherwise it must parse
/// (tracing's `EnvFilter` syntax) and must not leave dmrelay's own logs off unless it says
/// `off` somewhere. That refuses `RUST_LOG=verbose` (a bare word that is not a level is a
/// *target* name, so it enables target `verbose` and turns everything else off) and
/// `RUST_LOG=actix_web=debug` (no default level), each with one sentence saying what to write.
pub fn check_log_filter(value: Option<&str>) -> Result<String, String> {
    let Some(value) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok("info".to_string());
    };
    if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(value) {
        return Err(format!(
            "invalid configuration: RUST_LOG: {value:?} is not a log filter ({err}); use a level ({}) or target=level pairs, e.g. RUST_LOG=info,dmrelay=debug",
            LEVELS.join(", ")
        ));
    }
    if silences_dmrelay(value) && !mentions_off(value) {
        let bare: Vec<&str> = directives(value)
            .filter(|d| !d.contains('=') && !is_level(d))
            .collect();
        let advice = match bare.first() {
            Some(word) => format!(
                "{word:?} is read as a target name, not a level (the levels are {}); use a level, e.g. RUST_LOG=debug, or RUST_LOG=off for silence",
                LEVELS.join(", ")
            ),
            None => format!(
                "no directive gives a default level; add one, e.g. RUST_LOG=info,{value}, or use RUST_LOG=off for silence"
            ),
        };
        return Err(format!(
            "invalid configuration: RUST_LOG: {value:?} would turn off every dmrelay log: {advice}"
        ));
    }
    Ok(value.to_string())
}

/// The store engine's own targets (fjall logs through the `log` crate).
const STORE_ENGINE_TARGETS: [&str; 2] = ["fjall", "lsm_tree"];

/// `directives` with the store engine's logs at `warn` unless they name its targets: at `info`
/// fjall reports every database it opens and every memtable it flushes, which tells an
/// operator nothing the node's own "store opened" line does not.
pub fn quiet_store_engine(directives: &str) -> String {
    let mut out = directives.to_string();
    for target in STORE_ENGINE_TARGETS {
        if !directives.contains(target) {
            out.push_str(&format!(",{target}=warn"));
        }
    }
    out
}

fn directives(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|d| !d.is_empty())
}

fn is_level(word: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word)) || word.parse::<u8>().is_ok()
}

fn mentions_off(value: &str) -> bool {
    directives(value).any(|d| {
        d.rsplit('=')
            .next()
            .is_some_and(|level| level.eq_ignore_ascii_case("off"))
    })
}

/// True when no directive enables any dmrelay target: no default level other than off, and no
/// `target=level` whose target overlaps `dmrelay` (a prefix of it, or under it) with a level
/// other than off. A bare word that is not a level is a target at `trace`.
fn silences_dmrelay(value: &str) -> bool {
    let is_off = |level: &str| level.eq_ignore_ascii_case("off") || level == "0";
    let mut default_on = false;
    for directive in directives(value) {
        let (target, level) = match directive.split_once('=') {
            Some((target, level)) => (Some(target), level),
            None if is_level(directive) => (None, directive),
            None => (Some(directive), "trace"),
        };
        match target {
            None => default_on |= !is_off(level),
            Some(target) => {
                // `target[span{field}]`: the target part decides which events it can enable.
                let target = target.split('[').next().unwrap_or(target);
                if !is_off(level)
                    && (target.starts_with("dmrelay") || "dmrelay".starts_with(target))
                {
                    return false;
                }
            }
        }
    }
    !default_on
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filter_that_silences_dmrelay_is_refused_with_a_sentence() {
        for bad in ["verbose", "actix_web=debug", "verbose,actix_web=info"] {
            let err = check_log_filter(Some(bad)).unwrap_err();
            assert!(
                err.contains("would turn off every dmrelay log"),
                "{bad}: {err}"
            );
            assert!(!err.contains('\n'));
        }
        let err = check_log_filter(Some("verbose")).unwrap_err();
        assert!(err.contains("read as a target name"), "{err}");
        let err = check_log_filter(Some("info,dmrelay=loud")).unwrap_err();
        assert!(err.contains("is not a log filter"), "{err}");
    }

    #[test]
    fn usual_filters_pass() {
        for good in [
            "info",
            "debug",
            "WARN",
            "warn,dmrelay=info",
            "dmrelay",
            "dmrelay=debug",
            "dmrelay::peer=debug,info",
            "dmrelay::peer=debug",
            "dm=debug",
            "2",
            "off",
            "dmrelay=off",
            "info,actix_web=debug",
        ] {
            assert_eq!(check_log_filter(Some(good)), Ok(good.to_string()), "{good}");
        }
        assert_eq!(check_log_filter(None), Ok("info".to_string()));
        assert_eq!(check_log_filter(Some("  ")), Ok("info".to_string()));
    }

    #[test]
    fn an_unconfigured_self_url_is_made_from_the_bound_address() {
        let env = |pairs: &[(&str, &str)]| -> std::collections::HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let base = [
            ("MESH_DM_LISTEN", "127.0.0.1:0"),
            ("MESH_RELAY_PEERS", "http://127.0.0.1:4242,http://b.example"),
            ("MESH_PEER_PUSH_SECRET", "s"),
        ];
        let mut settings = Settings::load_from(None, &env(&base)).unwrap();
        assert_eq!(settings.self_peer_url, "http://127.0.0.1:0");
        settings.adopt_bound_addresses("127.0.0.1:4242".parse().unwrap(), None);
        assert_eq!(settings.self_peer_url, "http://127.0.0.1:4242");
        let peers: Vec<&str> = settings.peers.iter().map(|p| p.url.as_str()).collect();
        assert_eq!(peers, ["http://b.example"], "this node is not its own peer");
        // A separate peer plane names the node; a default port is dropped (SPEC §5.1).
        settings.adopt_bound_addresses(
            "127.0.0.1:4242".parse().unwrap(),
            Some("10.0.0.1:80".parse().unwrap()),
        );
        assert_eq!(settings.self_peer_url, "http://10.0.0.1");
        // A configured self URL is kept.
        let configured = [
            base[0],
            base[1],
            base[2],
            ("MESH_SELF_PEER_URL", "http://a.example"),
        ];
        let mut settings = Settings::load_from(None, &env(&configured)).unwrap();
        settings.adopt_bound_addresses("127.0.0.1:4242".parse().unwrap(), None);
        assert_eq!(settings.self_peer_url, "http://a.example");
        assert_eq!(settings.peers.len(), 2);
    }

    #[test]
    fn wildcard_self_urls_are_recognized() {
        assert!(is_wildcard_url("http://0.0.0.0:8787"));
        assert!(is_wildcard_url("http://[::]:8787"));
        assert!(!is_wildcard_url("http://127.0.0.1:8787"));
        assert!(!is_wildcard_url("https://relay.example"));
        assert!(
            wildcard_self_url_warning("http://0.0.0.0:1").is_some_and(|w| {
                w.contains("cannot be a peer URL") && w.contains("MESH_SELF_PEER_URL")
            })
        );
    }

    #[test]
    fn the_store_engine_logs_at_warn_unless_named() {
        assert_eq!(quiet_store_engine("info"), "info,fjall=warn,lsm_tree=warn");
        assert_eq!(
            quiet_store_engine("debug,fjall=trace"),
            "debug,fjall=trace,lsm_tree=warn"
        );
    }
}
