//! Node settings (SPEC §8): defaults < TOML file < environment, validated into [`Settings`].
//!
//! [`Settings::load`] reads the file (if any), applies every `MESH_*` variable it finds, then
//! checks everything; the first problem becomes a [`ConfigError`] whose one line names the
//! setting, which `dmrelay serve` prints before exiting non-zero.

use crate::protocol::peer_url::{normalize_peer_url, parse_socks_proxy};
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the client plane listens when nothing says otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8787";
/// The documented example file, read when it exists and no other file is named.
pub const DEFAULT_CONFIG_PATH: &str = "config/node.toml";
/// Largest `max_msg_bytes`: an envelope with that much ciphertext (base64, 4/3) still fits in a
/// 64 KiB request body.
pub const MAX_MSG_BYTES_CEILING: usize = 46_000;

/// A bad setting, named.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

fn bad(setting: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.to_string(),
        problem: problem.into(),
    }
}

/// How state is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PersistMode {
    /// On disk, fsync'd before every 200 (default).
    Fsync,
    /// In RAM only: no ciphertext ever touches the disk; a restart forgets everything.
    Memory,
}

/// Which embedded store keeps the state on disk (`MESH_DM_STORE_ENGINE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreEngine {
    /// fjall, unless the data dir already holds a redb store, which is then kept (default).
    Auto,
    /// fjall (an LSM tree), in `{data_dir}/fjall/`.
    Fjall,
    /// redb (a copy-on-write B-tree), in `{data_dir}/dmrelay.redb`: the store of earlier
    /// releases.
    Redb,
}

/// One configured peer relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSettings {
    /// Normalized URL (SPEC §5.1).
    pub url: String,
    /// The shared secret for this peer (its own, or the mesh-wide one).
    pub secret: String,
    /// SOCKS5 proxy (`host:port`) this peer is reached through, names resolved by the proxy:
    /// its `[[peers]] socks_proxy`, else `MESH_RELAY_SOCKS_PROXY`; `None` is a direct link.
    pub socks_proxy: Option<String>,
}

/// Everything a node is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Client-plane address (`MESH_DM_LISTEN`, default 127.0.0.1:8787; port 0 picks a free one).
    pub listen: SocketAddr,
    /// Separate peer-plane address (`MESH_DM_PEER_LISTEN`); when set, each plane is served only
    /// on its own address.
    pub peer_listen: Option<SocketAddr>,
    /// This node's own normalized peer URL (`MESH_SELF_PEER_URL`, default `http://{listen}`,
    /// made from the bound address once the node listens: see [`Settings::adopt_bound_addresses`]).
    pub self_peer_url: String,
    /// Whether `self_peer_url` was configured (else it is derived from the listen address).
    pub self_peer_url_configured: bool,
    /// Where the settings came from, for the start-up log: the file, or "defaults + environment".
    pub config_source: String,
    /// Peer relays (`MESH_RELAY_PEERS` and `[[peers]]` in the file).
    pub peers: Vec<PeerSettings>,
    /// Data directory of the embedded store (`MESH_DM_DATA_DIR`, default `./data`).
    pub data_dir: PathBuf,
    /// `fsync` (default) or `memory` (`MESH_DM_PERSIST`).
    pub persist: PersistMode,
    /// The store on disk (`MESH_DM_STORE_ENGINE`: `auto`, default, `fjall` or `redb`); memory
    /// mode always runs on redb's in-memory backend.
    pub store_engine: StoreEngine,
    /// Most unread envelopes per (mailbox, sender) (`MESH_DM_PENDING_PER_SENDER_LIMIT`, default 2).
    pub pending_per_sender_limit: u32,
    /// Most unread envelopes per mailbox (`MESH_DM_MAILBOX_LIMIT`, default 48).
    pub mailbox_limit: u32,
    /// Largest decoded ciphertext in bytes (`MESH_DM_MAX_MSG_BYTES`, default 8192).
    pub max_msg_bytes: usize,
    /// Longest envelope lifetime in seconds (`MESH_DM_MAX_TTL_S`, default 604800).
    pub max_ttl_s: u64,
    /// Timeout of one push or pull request to a peer (`MESH_RELAY_PUSH_TIMEOUT_S`, default 10).
    pub push_timeout: Duration,
    /// Timeout of opening a connection to a peer, TCP, SOCKS and TLS handshakes included
    /// (`MESH_RELAY_CONNECT_TIMEOUT_S`); unset: 5 s direct, 60 s through a SOCKS proxy.
    pub connect_timeout: Option<Duration>,
    /// Consecutive failures that open a peer's circuit breaker (`MESH_RELAY_MAX_FAILURES`, default 3).
    pub max_failures: u32,
    /// How long an open breaker skips its peer (`MESH_RELAY_FAILURE_COOLDOWN_S`, default 120).
    pub failure_cooldown: Duration,
    /// Interval between pulls of each peer's change feed (`MESH_DM_SYNC_INTERVAL_S`, default 5;
    /// fractions allowed).
    pub sync_interval: Duration,
    /// Items pushed to each peer per second (`MESH_RELAY_PUSH_RATE`, default 5000).
    pub push_rate_per_s: f64,
    /// How long an unused mailbox stays in memory (`MESH_DM_MAILBOX_IDLE_S`, default 300;
    /// fractions allowed). Its state is always in the store.
    pub mailbox_idle: Duration,
    /// Mailbox shards, one per core by default (`MESH_DM_SHARDS`).
    pub shards: usize,
    /// HTTPS on every listener, from `MESH_DM_TLS_CERT` and `MESH_DM_TLS_KEY` (PEM files).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// TLS of peer links: public web roots plus `MESH_RELAY_CA_FILE`'s CAs.
    pub peer_tls: Arc<rustls::ClientConfig>,
    /// HTTP worker threads, one per core by default (`MESH_DM_HTTP_WORKERS`).
    pub http_workers: usize,
    /// Most long polls waiting at once on this node (`MESH_DM_MAX_WAITING_POLLS`, default
    /// 16384); past that a long poll is answered at once. Each holds one connection (one fd).
    pub max_waiting_polls: usize,
    /// Page cache of the embedded store in bytes (`MESH_DM_STORE_CACHE_MB`, default 32 MiB).
    pub store_cache_bytes: usize,
    /// JSON of recently stored envelopes kept for polls, in bytes (`MESH_DM_BODY_CACHE_MB`,
    /// default 32 MiB; 0: every poll reads the store).
    pub body_cache_bytes: usize,
    /// Bytes of stored envelopes and acks past which new deposits and replicas are refused
    /// (`MESH_DM_STORAGE_BUDGET_MB`); `None`: chosen at start from the free disk space (see
    /// [`crate::store::budget`]).
    pub storage_budget_bytes: Option<u64>,
    /// Client-plane requests per second allowed from one IP address
    /// (`MESH_DM_CLIENT_RATE_PER_S`, default 200; 0 turns the limit off).
    pub client_rate_per_s: f64,
    /// Requests one IP address may send at once above that rate (`MESH_DM_CLIENT_RATE_BURST`,
    /// default 400).
    pub client_rate_burst: u32,
}

/// Declares every scalar setting once: its doc, its file key (the field name), the type the TOML
/// file holds, its environment variable and, for numbers, what an unparsable value "is not".
/// From that it builds the two all-optional layers ([`FileSettings`], [`EnvSettings`]) and their
/// field-by-field merge ([`Layered`]); defaults and checks are in [`Layered::validate`].
macro_rules! settings {
    (@what) => { "text" };
    (@what $what:literal) => { $what };
    ($(
        $(#[doc = $doc:literal])*
        $key:ident: $ty:ty = $env:literal $(, $what:literal)?;
    )*) => {
        /// The TOML file: every key optional, unknown keys refused (a typo must not pass silently).
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileSettings {
            $($(#[doc = $doc])* $key: Option<$ty>,)*
            /// Peer relays, with their own secrets (`[[peers]]`).
            #[serde(default)]
            peers: Vec<FilePeer>,
        }

        /// The environment: the same settings, each read from its variable.
        #[derive(Debug, Default)]
        struct EnvSettings {
            $($key: Option<$ty>,)*
            /// `MESH_RELAY_PEERS`: comma-separated peer URLs replacing the file's list.
            relay_peers: Option<String>,
        }

        impl EnvSettings {
            fn read(env: &HashMap<String, String>) -> Result<Self, ConfigError> {
                Ok(Self {
                    $($key: env_value(env, $env, settings!(@what $($what)?))?,)*
                    relay_peers: env.get("MESH_RELAY_PEERS").cloned(),
                })
            }
        }

        /// Environment over file, each value tagged with the setting an error should name.
        struct Layered {
            $($key: Option<Sourced<$ty>>,)*
            relay_peers: Option<String>,
            peers: Vec<FilePeer>,
            file_name: String,
        }

        impl Layered {
            fn merge(file: FileSettings, file_name: &str, env: EnvSettings) -> Self {
                Self {
                    $($key: layer(env.$key, $env, file.$key, file_name, stringify!($key)),)*
                    relay_peers: env.relay_peers,
                    peers: file.peers,
                    file_name: file_name.to_string(),
                }
            }
        }
    };
}

settings! {
    /// Client-plane address.
    listen: String = "MESH_DM_LISTEN";
    /// Separate peer-plane address; empty means none.
    peer_listen: String = "MESH_DM_PEER_LISTEN";
    /// This node's own peer URL.
    self_peer_url: String = "MESH_SELF_PEER_URL";
    /// Mesh-wide secret for peers without their own.
    peer_push_secret: String = "MESH_PEER_PUSH_SECRET";
    /// File holding the mesh-wide secret.
    peer_push_secret_file: PathBuf = "MESH_PEER_PUSH_SECRET_FILE";
    /// Embedded store directory.
    data_dir: PathBuf = "MESH_DM_DATA_DIR";
    /// `fsync` or `memory`.
    persist: String = "MESH_DM_PERSIST";
    /// `auto`, `fjall` or `redb`.
    store_engine: String = "MESH_DM_STORE_ENGINE";
    /// Most unread envelopes per (mailbox, sender).
    pending_per_sender_limit: u64 = "MESH_DM_PENDING_PER_SENDER_LIMIT", "a whole number";
    /// Most unread envelopes per mailbox.
    mailbox_limit: u64 = "MESH_DM_MAILBOX_LIMIT", "a whole number";
    /// Largest decoded ciphertext, bytes.
    max_msg_bytes: u64 = "MESH_DM_MAX_MSG_BYTES", "a whole number";
    /// Longest envelope lifetime, seconds.
    max_ttl_s: u64 = "MESH_DM_MAX_TTL_S", "a whole number";
    /// Timeout of one request to a peer, seconds.
    push_timeout_s: f64 = "MESH_RELAY_PUSH_TIMEOUT_S", "a number of seconds";
    /// Timeout of opening a connection to a peer, seconds.
    connect_timeout_s: f64 = "MESH_RELAY_CONNECT_TIMEOUT_S", "a number of seconds";
    /// SOCKS5 proxy for peer links (`socks5h://host:port`).
    socks_proxy: String = "MESH_RELAY_SOCKS_PROXY";
    /// Consecutive failures that open a peer's breaker.
    max_failures: u64 = "MESH_RELAY_MAX_FAILURES", "a whole number";
    /// How long an open breaker skips its peer, seconds.
    failure_cooldown_s: f64 = "MESH_RELAY_FAILURE_COOLDOWN_S", "a number of seconds";
    /// Interval between pulls of each peer's feed, seconds.
    sync_interval_s: f64 = "MESH_DM_SYNC_INTERVAL_S", "a number of seconds";
    /// Items pushed to each peer per second.
    push_rate: f64 = "MESH_RELAY_PUSH_RATE", "a number";
    /// How long an unused mailbox stays in memory, seconds.
    mailbox_idle_s: f64 = "MESH_DM_MAILBOX_IDLE_S", "a number of seconds";
    /// HTTPS certificate chain (PEM).
    tls_cert: PathBuf = "MESH_DM_TLS_CERT";
    /// HTTPS private key (PEM).
    tls_key: PathBuf = "MESH_DM_TLS_KEY";
    /// Extra CAs trusted for https:// peers (PEM).
    peer_ca_file: PathBuf = "MESH_RELAY_CA_FILE";
    /// Mailbox shard actors.
    shards: u64 = "MESH_DM_SHARDS", "a whole number";
    /// HTTP worker threads.
    http_workers: u64 = "MESH_DM_HTTP_WORKERS", "a whole number";
    /// Most long polls waiting at once.
    max_waiting_polls: u64 = "MESH_DM_MAX_WAITING_POLLS", "a whole number";
    /// Page cache of the store, MiB.
    store_cache_mb: u64 = "MESH_DM_STORE_CACHE_MB", "a whole number";
    /// Envelope JSON kept for polls, MiB.
    body_cache_mb: u64 = "MESH_DM_BODY_CACHE_MB", "a whole number";
    /// Storage budget, MiB.
    storage_budget_mb: f64 = "MESH_DM_STORAGE_BUDGET_MB", "a number of MiB";
    /// Client-plane requests per second from one IP address.
    client_rate_per_s: f64 = "MESH_DM_CLIENT_RATE_PER_S", "a number";
    /// Burst above that rate.
    client_rate_burst: u64 = "MESH_DM_CLIENT_RATE_BURST", "a whole number";
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeer {
    url: String,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    socks_proxy: Option<String>,
}

/// One setting's value and the name an error about it shows: the environment variable, or
/// `{file}: {key}` for the file, or the bare key for a default.
struct Sourced<T> {
    value: T,
    setting: String,
    from_env: bool,
}

/// How an environment variable's text becomes the type the file holds.
trait FromEnv: Sized {
    fn from_env(text: &str) -> Option<Self>;
}

impl FromEnv for u64 {
    fn from_env(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }
}

impl FromEnv for f64 {
    fn from_env(text: &str) -> Option<Self> {
        text.trim().parse().ok()
    }
}

impl FromEnv for String {
    fn from_env(text: &str) -> Option<Self> {
        Some(text.to_string())
    }
}

impl FromEnv for PathBuf {
    fn from_env(text: &str) -> Option<Self> {
        Some(PathBuf::from(text))
    }
}

fn env_value<T: FromEnv>(
    env: &HashMap<String, String>,
    name: &str,
    what: &str,
) -> Result<Option<T>, ConfigError> {
    match env.get(name) {
        None => Ok(None),
        Some(text) => T::from_env(text)
            .map(Some)
            .ok_or_else(|| bad(name, format!("{text:?} is not {what}"))),
    }
}

fn layer<T>(
    env: Option<T>,
    env_name: &str,
    file: Option<T>,
    file_name: &str,
    key: &str,
) -> Option<Sourced<T>> {
    match (env, file) {
        (Some(value), _) => Some(Sourced {
            value,
            setting: env_name.to_string(),
            from_env: true,
        }),
        (None, Some(value)) => Some(Sourced {
            value,
            setting: format!("{file_name}: {key}"),
            from_env: false,
        }),
        (None, None) => None,
    }
}

/// The configured value, or the default (named by its bare key).
fn or_default<T>(value: Option<Sourced<T>>, key: &str, default: T) -> Sourced<T> {
    value.unwrap_or_else(|| Sourced {
        value: default,
        setting: key.to_string(),
        from_env: false,
    })
}

fn read_secret_file(setting: &str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|e| bad(setting, format!("cannot read {}: {e}", path.display())))
}

fn parse_text<T: std::str::FromStr>(text: &Sourced<String>, what: &str) -> Result<T, ConfigError> {
    let value = &text.value;
    value
        .trim()
        .parse()
        .map_err(|_| bad(&text.setting, format!("{value:?} is not {what}")))
}

fn positive_duration(
    value: Option<Sourced<f64>>,
    key: &str,
    default_s: f64,
) -> Result<Duration, ConfigError> {
    let seconds = or_default(value, key, default_s);
    if !(seconds.value > 0.0 && seconds.value <= 86_400.0 * 365.0) {
        return Err(bad(
            &seconds.setting,
            "must be a positive number of seconds",
        ));
    }
    Ok(Duration::from_secs_f64(seconds.value))
}

fn in_range<T: PartialOrd + std::fmt::Display + Copy>(
    value: Option<Sourced<T>>,
    key: &str,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let Sourced { value, setting, .. } = or_default(value, key, default);
    if value < min || value > max {
        return Err(bad(
            &setting,
            format!("must be between {min} and {max}, got {value}"),
        ));
    }
    Ok(value)
}

/// The self URL of a node that does not configure one: `{scheme}://{address}`, normalized as
/// peers write it (SPEC §5.1: no default port), since it keys the HMAC.
pub fn derived_self_url(scheme: &str, address: SocketAddr) -> String {
    let url = format!("{scheme}://{address}");
    normalize_peer_url(&url).unwrap_or(url)
}

impl Settings {
    /// `https` when this node serves TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
    }

    /// Loads from `config_path` (or `config/node.toml` if present) and the process environment.
    pub fn load(config_path: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(config_path, &env)
    }

    /// Loads from a file and an explicit environment (tests pass their own).
    pub fn load_from(
        config_path: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let file = match config_path {
            Some(path) => Some(path.to_path_buf()),
            None => Some(PathBuf::from(DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
        };
        let (file_settings, file_name) = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| bad("--config", format!("cannot read {}: {e}", path.display())))?;
                let parsed: FileSettings = toml::from_str(&text).map_err(|e| {
                    bad(
                        &path.display().to_string(),
                        e.to_string().lines().collect::<Vec<_>>().join(" "),
                    )
                })?;
                (parsed, path.display().to_string())
            }
            None => (FileSettings::default(), String::new()),
        };
        Self::from_parts(file_settings, &file_name, env)
    }

    fn from_parts(
        file: FileSettings,
        file_name: &str,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let env = EnvSettings::read(env)?;
        Layered::merge(file, file_name, env).validate()
    }
}

impl Layered {
    /// Applies the defaults and checks every setting, naming the first bad one.
    fn validate(self) -> Result<Settings, ConfigError> {
        let listen: SocketAddr = match &self.listen {
            Some(text) => parse_text(text, "a socket address like 127.0.0.1:8787")?,
            None => DEFAULT_LISTEN
                .parse()
                .map_err(|_| bad("listen", "bad default"))?,
        };
        let peer_listen: Option<SocketAddr> = match &self.peer_listen {
            Some(text) if text.value.trim().is_empty() => None,
            Some(text) => Some(parse_text(text, "a socket address like 127.0.0.1:8788")?),
            None => None,
        };
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(Arc::new(
                crate::tls::server_config(&cert.value, &key.value)
                    .map_err(|problem| bad(&cert.setting, problem))?,
            )),
            (Some(Sourced { setting, .. }), None) | (None, Some(Sourced { setting, .. })) => {
                return Err(bad(
                    setting,
                    "TLS needs both MESH_DM_TLS_CERT and MESH_DM_TLS_KEY",
                ));
            }
        };
        let peer_tls = Arc::new(match &self.peer_ca_file {
            Some(ca) => crate::tls::client_config(Some(&ca.value))
                .map_err(|problem| bad(&ca.setting, problem))?,
            None => crate::tls::client_config(None).map_err(|problem| bad("TLS", problem))?,
        });
        let self_peer_url = match &self.self_peer_url {
            Some(url) => {
                normalize_peer_url(&url.value).map_err(|problem| bad(&url.setting, problem))?
            }
            None => derived_self_url(
                if tls.is_some() { "https" } else { "http" },
                peer_listen.unwrap_or(listen),
            ),
        };
        // A secret file named in the environment wins over any secret; a secret (from either
        // layer) wins over a secret file named in the file.
        let mesh_secret = match (&self.peer_push_secret_file, &self.peer_push_secret) {
            (Some(path), _) if path.from_env => {
                Some(read_secret_file("MESH_PEER_PUSH_SECRET_FILE", &path.value)?)
            }
            (_, Some(secret)) => Some(secret.value.clone()),
            (Some(path), None) => Some(read_secret_file("peer_push_secret_file", &path.value)?),
            (None, None) => None,
        }
        .filter(|s| !s.is_empty());

        // Per-peer secrets come from the file; the peer list from MESH_RELAY_PEERS if set.
        let file_name = &self.file_name;
        let mut file_secrets: HashMap<String, String> = HashMap::new();
        // A peer's own proxy setting ("direct" included) wins over the node-wide one.
        let default_proxy = match &self.socks_proxy {
            Some(proxy) => {
                parse_socks_proxy(&proxy.value).map_err(|problem| bad(&proxy.setting, problem))?
            }
            None => None,
        };
        let mut file_proxies: HashMap<String, Option<String>> = HashMap::new();
        let mut file_peers = Vec::new();
        for peer in &self.peers {
            let setting = format!("{file_name}: peers.url");
            let url = normalize_peer_url(&peer.url).map_err(|problem| bad(&setting, problem))?;
            let secret = match (&peer.secret, &peer.secret_file) {
                (Some(secret), _) => Some(secret.clone()),
                (None, Some(path)) => Some(read_secret_file("peers.secret_file", path)?),
                (None, None) => None,
            };
            if let Some(secret) = secret.filter(|s| !s.is_empty()) {
                file_secrets.insert(url.clone(), secret);
            }
            if let Some(proxy) = &peer.socks_proxy {
                let proxy = parse_socks_proxy(proxy)
                    .map_err(|problem| bad(&format!("{file_name}: peers.socks_proxy"), problem))?;
                file_proxies.insert(url.clone(), proxy);
            }
            file_peers.push(url);
        }
        let peer_urls: Vec<String> = match &self.relay_peers {
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|u| normalize_peer_url(u).map_err(|problem| bad("MESH_RELAY_PEERS", problem)))
                .collect::<Result<_, _>>()?,
            None => file_peers,
        };
        let mut peers: Vec<PeerSettings> = Vec::new();
        for url in peer_urls {
            if url == self_peer_url || peers.iter().any(|p| p.url == url) {
                continue;
            }
            let secret = file_secrets
                .get(&url)
                .cloned()
                .or_else(|| mesh_secret.clone())
                .ok_or_else(|| {
                    bad(
                        "MESH_PEER_PUSH_SECRET",
                        format!("peer {url} has no secret: set MESH_PEER_PUSH_SECRET or a secret for it in the file"),
                    )
                })?;
            let socks_proxy = file_proxies
                .get(&url)
                .cloned()
                .unwrap_or_else(|| default_proxy.clone());
            peers.push(PeerSettings {
                url,
                secret,
                socks_proxy,
            });
        }

        let data_dir = self
            .data_dir
            .map_or_else(|| PathBuf::from("./data"), |dir| dir.value);
        let persist = match &self.persist {
            None => PersistMode::Fsync,
            Some(mode) if mode.value == "fsync" => PersistMode::Fsync,
            Some(mode) if mode.value == "memory" => PersistMode::Memory,
            Some(Sourced { value, setting, .. }) => {
                return Err(bad(
                    setting,
                    format!("{value:?} is neither \"fsync\" nor \"memory\""),
                ));
            }
        };
        let store_engine = match &self.store_engine {
            None => StoreEngine::Auto,
            Some(engine) if engine.value == "auto" => StoreEngine::Auto,
            Some(engine) if engine.value == "fjall" => StoreEngine::Fjall,
            Some(engine) if engine.value == "redb" => StoreEngine::Redb,
            Some(Sourced { value, setting, .. }) => {
                return Err(bad(
                    setting,
                    format!("{value:?} is none of \"auto\", \"fjall\" and \"redb\""),
                ));
            }
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
        let storage_budget_bytes = match self.storage_budget_mb {
            None => None,
            Some(Sourced {
                value: mb, setting, ..
            }) => {
                if !(0.01..=1.0e9).contains(&mb) {
                    return Err(bad(
                        &setting,
                        format!("must be a number of MiB between 0.01 and 1e9, got {mb}"),
                    ));
                }
                Some((mb * 1024.0 * 1024.0) as u64)
            }
        };
        let max_waiting_polls_default = crate::mailbox::waiting::DEFAULT_MAX_WAITING_POLLS as u64;
        Ok(Settings {
            listen,
            peer_listen,
            self_peer_url_configured: self.self_peer_url.is_some(),
            self_peer_url,
            config_source: if file_name.is_empty() {
                "defaults + environment".to_string()
            } else {
                format!("{file_name} + environment")
            },
            peers,
            data_dir,
            persist,
            store_engine,
            pending_per_sender_limit: in_range(
                self.pending_per_sender_limit,
                "pending_per_sender_limit",
                2,
                1,
                1_000,
            )? as u32,
            mailbox_limit: in_range(self.mailbox_limit, "mailbox_limit", 48, 1, 100_000)? as u32,
            max_msg_bytes: in_range(
                self.max_msg_bytes,
                "max_msg_bytes",
                8192,
                1,
                MAX_MSG_BYTES_CEILING as u64,
            )? as usize,
            max_ttl_s: in_range(self.max_ttl_s, "max_ttl_s", 604_800, 1, 10 * 365 * 86_400)?,
            push_timeout: positive_duration(self.push_timeout_s, "push_timeout_s", 10.0)?,
            connect_timeout: match self.connect_timeout_s {
                None => None,
                Some(value) => Some(positive_duration(Some(value), "connect_timeout_s", 5.0)?),
            },
            max_failures: in_range(self.max_failures, "max_failures", 3, 1, 1_000_000)? as u32,
            failure_cooldown: positive_duration(
                self.failure_cooldown_s,
                "failure_cooldown_s",
                120.0,
            )?,
            sync_interval: positive_duration(self.sync_interval_s, "sync_interval_s", 5.0)?,
            push_rate_per_s: in_range(self.push_rate, "push_rate", 5000.0, 0.1, 1_000_000.0)?,
            mailbox_idle: positive_duration(self.mailbox_idle_s, "mailbox_idle_s", 300.0)?,
            shards: in_range(self.shards, "shards", cores, 1, 256)? as usize,
            http_workers: in_range(self.http_workers, "http_workers", cores, 1, 256)? as usize,
            max_waiting_polls: in_range(
                self.max_waiting_polls,
                "max_waiting_polls",
                max_waiting_polls_default,
                0,
                1_000_000,
            )? as usize,
            store_cache_bytes: in_range(self.store_cache_mb, "store_cache_mb", 32, 1, 1 << 20)?
                as usize
                * 1024
                * 1024,
            body_cache_bytes: in_range(self.body_cache_mb, "body_cache_mb", 32, 0, 1 << 20)?
                as usize
                * 1024
                * 1024,
            storage_budget_bytes,
            client_rate_per_s: in_range(
                self.client_rate_per_s,
                "client_rate_per_s",
                200.0,
                0.0,
                1_000_000.0,
            )?,
            client_rate_burst: in_range(
                self.client_rate_burst,
                "client_rate_burst",
                400,
                1,
                1_000_000,
            )? as u32,
            tls,
            peer_tls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn from_toml(toml_text: &str, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let file: FileSettings =
            toml::from_str(toml_text).map_err(|e| bad("file", e.to_string()))?;
        Settings::from_parts(file, "node.toml", &env(pairs))
    }

    #[test]
    fn defaults_without_any_configuration() {
        let s = from_toml("", &[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8787");
        assert_eq!(s.self_peer_url, "http://127.0.0.1:8787");
        assert_eq!(s.persist, PersistMode::Fsync);
        assert_eq!(s.pending_per_sender_limit, 2);
        assert_eq!(s.mailbox_limit, 48);
        assert_eq!(s.max_msg_bytes, 8192);
        assert_eq!(s.max_ttl_s, 604_800);
        assert_eq!(s.sync_interval, Duration::from_secs(5));
        assert!(s.peers.is_empty());
    }

    #[test]
    fn the_store_cache_and_the_storage_budget_are_in_mib() {
        let s = from_toml("", &[]).unwrap();
        assert_eq!(s.store_cache_bytes, 32 << 20);
        assert_eq!(s.body_cache_bytes, 32 << 20);
        assert_eq!(
            s.storage_budget_bytes, None,
            "chosen at start from the free disk"
        );
        let s = from_toml(
            "store_cache_mb = 8\nstorage_budget_mb = 0.5",
            &[("MESH_DM_STORE_CACHE_MB", "16")],
        )
        .unwrap();
        assert_eq!(s.store_cache_bytes, 16 << 20);
        assert_eq!(s.storage_budget_bytes, Some(512 * 1024));
    }

    #[test]
    fn environment_wins_over_the_file() {
        let s = from_toml(
            "pending_per_sender_limit = 5\nmailbox_limit = 10",
            &[("MESH_DM_PENDING_PER_SENDER_LIMIT", "3")],
        )
        .unwrap();
        assert_eq!(s.pending_per_sender_limit, 3);
        assert_eq!(s.mailbox_limit, 10);
    }

    #[test]
    fn peer_secrets_come_from_the_file_with_the_mesh_secret_as_fallback() {
        let s = from_toml(
            "peer_push_secret = \"mesh\"\n[[peers]]\nurl = \"HTTP://B.example:80/\"\nsecret = \"own\"\n[[peers]]\nurl = \"http://c.example\"",
            &[],
        )
        .unwrap();
        assert_eq!(
            s.peers,
            vec![
                PeerSettings {
                    url: "http://b.example".into(),
                    secret: "own".into(),
                    socks_proxy: None,
                },
                PeerSettings {
                    url: "http://c.example".into(),
                    secret: "mesh".into(),
                    socks_proxy: None,
                },
            ]
        );
        // MESH_RELAY_PEERS chooses the list; the file still supplies per-peer secrets.
        let s = from_toml(
            "[[peers]]\nurl = \"http://b.example\"\nsecret = \"own\"",
            &[
                ("MESH_RELAY_PEERS", "http://b.example/, http://d.example"),
                ("MESH_PEER_PUSH_SECRET", "m"),
            ],
        )
        .unwrap();
        assert_eq!(s.peers[0].secret, "own");
        assert_eq!(
            s.peers[1],
            PeerSettings {
                url: "http://d.example".into(),
                secret: "m".into(),
                socks_proxy: None,
            }
        );
    }

    #[test]
    fn peers_use_the_node_proxy_unless_their_own_setting_says_otherwise() {
        let file = "peer_push_secret = \"m\"\nsocks_proxy = \"socks5h://127.0.0.1:9050\"\n\
            [[peers]]\nurl = \"http://abc.onion:8787\"\n\
            [[peers]]\nurl = \"http://lan.example\"\nsocks_proxy = \"direct\"\n\
            [[peers]]\nurl = \"http://c.example\"\nsocks_proxy = \"socks5h://other:1080\"";
        let proxies = |s: Settings| -> Vec<Option<String>> {
            s.peers.into_iter().map(|p| p.socks_proxy).collect()
        };
        let s = from_toml(file, &[]).unwrap();
        assert_eq!(
            s.connect_timeout, None,
            "chosen per link: 5 s direct, 60 s proxied"
        );
        assert_eq!(
            proxies(s),
            [
                Some("127.0.0.1:9050".into()),
                None,
                Some("other:1080".into())
            ]
        );
        let s = from_toml(
            file,
            &[
                ("MESH_RELAY_SOCKS_PROXY", "socks5h://tor:9150"),
                ("MESH_RELAY_CONNECT_TIMEOUT_S", "90"),
            ],
        )
        .unwrap();
        assert_eq!(s.connect_timeout, Some(Duration::from_secs(90)));
        assert_eq!(
            proxies(s),
            [Some("tor:9150".into()), None, Some("other:1080".into())]
        );
        let s = from_toml("", &[("MESH_RELAY_SOCKS_PROXY", "socks5h://tor:9150")]).unwrap();
        assert!(s.peers.is_empty());
    }

    #[test]
    fn a_derived_self_url_is_normalized_like_the_one_made_after_binding() {
        // SPEC §5.1: no default port. Load time and `adopt_bound_addresses` must agree, since the
        // self URL keys the peer HMAC.
        let s = from_toml("listen = \"127.0.0.1:80\"", &[]).unwrap();
        assert_eq!(s.self_peer_url, "http://127.0.0.1");
        let mut bound = s.clone();
        bound.self_peer_url_configured = false;
        bound.adopt_bound_addresses("127.0.0.1:80".parse().unwrap(), None);
        assert_eq!(bound.self_peer_url, s.self_peer_url);
    }

    #[test]
    fn the_documented_example_is_the_defaults_and_every_documented_key_is_real() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/node.toml");
        let text = std::fs::read_to_string(path).unwrap();
        let example = from_toml(&text, &[]).unwrap();
        let defaults = from_toml("", &[]).unwrap();
        assert_eq!(format!("{example:?}"), format!("{defaults:?}"));
        // Uncomment every `# key = value` line (and the [[peers]] table): it must still parse.
        let uncommented: String = text
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| line.contains(" = ") || line.starts_with("[[peers]]"))
            .map(|line| line.split("  #").next().unwrap_or(line).trim().to_string() + "\n")
            .collect();
        let file: FileSettings = toml::from_str(&uncommented).unwrap();
        assert!(file.listen.is_some() && file.http_workers.is_some() && file.peers.len() == 1);
        assert!(file.max_waiting_polls.is_some());
        assert!(file.tls_cert.is_some() && file.tls_key.is_some() && file.peer_ca_file.is_some());
    }

    #[test]
    fn every_error_names_its_setting() {
        type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            ("", &[("MESH_DM_LISTEN", "nowhere")], "MESH_DM_LISTEN"),
            ("", &[("MESH_DM_PERSIST", "disk")], "MESH_DM_PERSIST"),
            (
                "",
                &[("MESH_DM_PENDING_PER_SENDER_LIMIT", "0")],
                "MESH_DM_PENDING_PER_SENDER_LIMIT",
            ),
            (
                "",
                &[("MESH_DM_MAX_MSG_BYTES", "999999")],
                "MESH_DM_MAX_MSG_BYTES",
            ),
            (
                "",
                &[("MESH_DM_SYNC_INTERVAL_S", "-1")],
                "MESH_DM_SYNC_INTERVAL_S",
            ),
            ("", &[("MESH_RELAY_PEERS", "ftp://x")], "MESH_RELAY_PEERS"),
            (
                "",
                &[("MESH_RELAY_PEERS", "http://x")],
                "MESH_PEER_PUSH_SECRET",
            ),
            ("mailbox_limit = 0", &[], "node.toml: mailbox_limit"),
            (
                "",
                &[("MESH_DM_MAX_WAITING_POLLS", "lots")],
                "MESH_DM_MAX_WAITING_POLLS",
            ),
            (
                "",
                &[("MESH_DM_STORE_CACHE_MB", "0")],
                "MESH_DM_STORE_CACHE_MB",
            ),
            (
                "",
                &[("MESH_DM_STORAGE_BUDGET_MB", "NaN")],
                "MESH_DM_STORAGE_BUDGET_MB",
            ),
            (
                "storage_budget_mb = -1.0",
                &[],
                "node.toml: storage_budget_mb",
            ),
            (
                "",
                &[("MESH_DM_CLIENT_RATE_PER_S", "-5")],
                "MESH_DM_CLIENT_RATE_PER_S",
            ),
            (
                "",
                &[("MESH_DM_CLIENT_RATE_BURST", "0")],
                "MESH_DM_CLIENT_RATE_BURST",
            ),
            (
                "",
                &[("MESH_RELAY_SOCKS_PROXY", "socks5://127.0.0.1:9050")],
                "MESH_RELAY_SOCKS_PROXY",
            ),
            (
                "[[peers]]\nurl = \"http://x\"\nsecret = \"s\"\nsocks_proxy = \"tor\"",
                &[],
                "node.toml: peers.socks_proxy",
            ),
            (
                "",
                &[("MESH_RELAY_CONNECT_TIMEOUT_S", "0")],
                "MESH_RELAY_CONNECT_TIMEOUT_S",
            ),
        ];
        for (file, env_pairs, setting) in cases {
            let err = from_toml(file, env_pairs).unwrap_err();
            assert_eq!(&err.setting, setting, "{err}");
            assert!(!err.to_string().contains('\n'));
        }
        assert!(toml::from_str::<FileSettings>("no_such_key = 1").is_err());
    }
}
