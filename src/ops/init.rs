//! `dmrelay init`: writes a ready-to-run, commented `node.toml`.
//!
//! The file is the documented example (`config/node.toml`, compiled in) with four lines filled
//! in: `listen`, `self_peer_url` (made from the listen address unless given; a wildcard address
//! is refused, since peers could neither reach nor identify the node by it), a freshly generated
//! `peer_push_secret` (or one copied from another node's file, to join its mesh) and an absolute
//! `data_dir` beside the file; `[[peers]]` tables are appended for `--peer`. The file is created
//! with mode 0600 (it holds the secret) and never overwritten without `force`.

use crate::peer::url::normalize_peer_url;
use crate::startup::is_wildcard_url;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The documented example every generated file starts from.
const TEMPLATE: &str = include_str!("../../config/node.toml");

/// What `dmrelay init` was asked for.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Directory to write `node.toml` into (created if missing); the data dir goes beside it.
    pub dir: PathBuf,
    /// The client-plane address the node will listen on.
    pub listen: SocketAddr,
    /// The URL peers reach this node at [default: `http://{listen}`].
    pub self_url: Option<String>,
    /// Peer URLs to list in `[[peers]]`.
    pub peers: Vec<String>,
    /// A file to take the mesh secret from (another node's `node.toml`, or a file holding only
    /// the secret), instead of generating one.
    pub secret_from: Option<PathBuf>,
    /// Replace an existing `node.toml`.
    pub force: bool,
}

/// What was written.
#[derive(Debug, Clone)]
pub struct InitReport {
    pub path: PathBuf,
    /// None when it is left to be derived at start (listen port 0).
    pub self_url: Option<String>,
    pub data_dir: PathBuf,
    /// True when the secret was generated (false when copied with `secret_from`).
    pub new_secret: bool,
}

/// Writes `{dir}/node.toml`; every refusal is one sentence.
pub fn init(options: &InitOptions) -> Result<InitReport, String> {
    let self_url = match &options.self_url {
        Some(url) => normalize_peer_url(url).map_err(|e| format!("--self-url: {e}"))?,
        None => crate::config::derived_self_url("http", options.listen),
    };
    // Port 0 picks a free port at each start: the self URL is then left to be derived from the
    // bound address (nothing to write that would stay true).
    let written_self_url =
        (options.self_url.is_some() || options.listen.port() != 0).then_some(self_url.as_str());
    if is_wildcard_url(&self_url) {
        return Err(format!(
            "the self URL would be {self_url}, a wildcard address that peers can neither reach nor identify this node by; pass --self-url with the address peers use, e.g. --self-url http://relay1.example:{}",
            options.listen.port()
        ));
    }
    let peers = options
        .peers
        .iter()
        .map(|p| normalize_peer_url(p).map_err(|e| format!("--peer: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let (secret, new_secret) = match &options.secret_from {
        Some(path) => (read_secret(path)?, false),
        None => (
            crate::protocol::random_hex(32).map_err(|e| format!("no randomness: {e}"))?,
            true,
        ),
    };
    std::fs::create_dir_all(&options.dir)
        .map_err(|e| format!("cannot create {}: {e}", options.dir.display()))?;
    let dir = std::fs::canonicalize(&options.dir)
        .map_err(|e| format!("cannot resolve {}: {e}", options.dir.display()))?;
    let data_dir = dir.join("data");
    let text = render(
        options.listen,
        written_self_url,
        &secret,
        &data_dir,
        &peers,
        crate::protocol::now_unix(),
    )?;
    let path = dir.join("node.toml");
    write_private(&path, &text, options.force)?;
    Ok(InitReport {
        path,
        self_url: written_self_url.map(str::to_string),
        data_dir,
        new_secret,
    })
}

/// A TOML string literal (quoted and escaped).
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// The file's text: the template with the four settings filled in and the peers appended.
fn render(
    listen: SocketAddr,
    self_url: Option<&str>,
    secret: &str,
    data_dir: &Path,
    peers: &[String],
    now: u64,
) -> Result<String, String> {
    let data_dir = data_dir
        .to_str()
        .ok_or_else(|| format!("{} is not valid UTF-8", data_dir.display()))?;
    let fills = [
        (
            "# listen = ",
            format!("listen = {}", toml_string(&listen.to_string())),
        ),
        (
            "# self_peer_url = ",
            match self_url {
                Some(url) => format!("self_peer_url = {}", toml_string(url)),
                None => "# self_peer_url: derived from the bound address (listen port 0)".into(),
            },
        ),
        (
            "# peer_push_secret = ",
            format!("peer_push_secret = {}", toml_string(secret)),
        ),
        (
            "# data_dir = ",
            format!("data_dir = {}", toml_string(data_dir)),
        ),
    ];
    let mut filled = [false; 4];
    let mut out = format!(
        "# Written by `dmrelay init` (unix time {now}). It holds the mesh secret: keep it private\n\
         # (mode 0600). Every peer must share peer_push_secret (`dmrelay init --secret-from` this\n\
         # file) and list this node's self_peer_url among its peers.\n#\n"
    );
    for line in TEMPLATE.lines() {
        match fills
            .iter()
            .position(|(prefix, _)| line.starts_with(prefix))
        {
            Some(i) if !filled[i] => {
                filled[i] = true;
                out.push_str(&fills[i].1);
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    if let Some(i) = filled.iter().position(|f| !f) {
        return Err(format!(
            "the built-in example has no `{}` line to fill in (a bug in this build)",
            fills[i].0
        ));
    }
    for peer in peers {
        out.push_str(&format!("\n[[peers]]\nurl = {}\n", toml_string(peer)));
    }
    Ok(out)
}

/// The secret of another node's file (`peer_push_secret = "..."`), or the whole content of a
/// file that holds only a secret.
fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--secret-from: cannot read {}: {e}", path.display()))?;
    if let Ok(table) = text.parse::<toml::Table>() {
        if let Some(secret) = table.get("peer_push_secret").and_then(|v| v.as_str()) {
            return Ok(secret.to_string());
        }
        if !table.is_empty() {
            return Err(format!(
                "--secret-from: {} has no peer_push_secret setting",
                path.display()
            ));
        }
    }
    let secret = text.trim();
    if secret.is_empty() || secret.contains(char::is_whitespace) {
        return Err(format!(
            "--secret-from: {} is neither a node.toml with peer_push_secret nor a file holding one secret",
            path.display()
        ));
    }
    Ok(secret.to_string())
}

/// Creates `path` with mode 0600 (replacing it only with `force`) and syncs it.
fn write_private(path: &Path, text: &str, force: bool) -> Result<(), String> {
    crate::client::keys::write_private_file(path, text.as_bytes(), force).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            format!(
                "{} already exists; use --force to replace it (its secret and settings are lost)",
                path.display()
            )
        } else {
            format!("cannot write {}: {e}", path.display())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use std::collections::HashMap;

    #[test]
    fn the_written_file_loads_with_the_filled_in_settings() {
        let dir = tempfile::tempdir().unwrap();
        let options = InitOptions {
            dir: dir.path().join("n1"),
            listen: "127.0.0.1:8701".parse().unwrap(),
            self_url: None,
            peers: vec!["http://127.0.0.1:8702/".into()],
            secret_from: None,
            force: false,
        };
        let report = init(&options).unwrap();
        assert_eq!(report.self_url.as_deref(), Some("http://127.0.0.1:8701"));
        let settings = Settings::load_from(Some(&report.path), &HashMap::new()).unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:8701");
        assert_eq!(settings.self_peer_url, "http://127.0.0.1:8701");
        assert_eq!(settings.data_dir, report.data_dir);
        assert_eq!(settings.peers.len(), 1);
        assert_eq!(settings.peers[0].url, "http://127.0.0.1:8702");
        let secret = settings.peers[0].secret.clone();
        assert_eq!(secret.len(), 64, "a fresh 256-bit secret: {secret}");

        // A second node joins with the same secret; the first file is never overwritten.
        let joined = init(&InitOptions {
            dir: dir.path().join("n2"),
            listen: "127.0.0.1:8702".parse().unwrap(),
            peers: vec!["http://127.0.0.1:8701".into()],
            secret_from: Some(report.path.clone()),
            ..options.clone()
        })
        .unwrap();
        let second = Settings::load_from(Some(&joined.path), &HashMap::new()).unwrap();
        assert_eq!(second.peers[0].secret, secret);
        let again = init(&options).unwrap_err();
        assert!(again.contains("--force"), "{again}");
    }

    #[test]
    fn a_wildcard_listen_address_needs_a_self_url() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = InitOptions {
            dir: dir.path().to_path_buf(),
            listen: "0.0.0.0:8787".parse().unwrap(),
            self_url: None,
            peers: vec![],
            secret_from: None,
            force: false,
        };
        let err = init(&options).unwrap_err();
        assert!(
            err.contains("wildcard") && err.contains("--self-url"),
            "{err}"
        );
        assert!(!dir.path().join("node.toml").exists());
        options.self_url = Some("http://relay1.example:8787".into());
        let report = init(&options).unwrap();
        assert_eq!(
            report.self_url.as_deref(),
            Some("http://relay1.example:8787")
        );
    }
}
