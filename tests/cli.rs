//! SPEC §8 (an invalid setting stops the node at start with one clear line naming it) and the
//! `dmrelay` command line: help, `keygen`, and the `envelope` / `poll-request` / `ack-request`
//! helpers whose JSON a real node accepts (SPEC §3, §6.1–6.3).

mod common;

use common::{BIN, Node, NodeConfig, dmrelay, output_within};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const SUBCOMMANDS: [&str; 10] = [
    "serve",
    "init",
    "status",
    "keygen",
    "send",
    "inbox",
    "demo",
    "envelope",
    "poll-request",
    "ack-request",
];

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[test]
fn help_works_for_dmrelay_and_every_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let output = output_within(
        {
            let mut c = dmrelay(dir.path());
            c.arg("--help");
            c
        },
        Duration::from_secs(10),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    for sub in SUBCOMMANDS {
        assert!(text.contains(sub), "`dmrelay --help` lists {sub}: {text}");
    }
    for sub in SUBCOMMANDS {
        for flag in ["--help", "-h"] {
            let mut command = dmrelay(dir.path());
            command.args([sub, flag]);
            let output = output_within(command, Duration::from_secs(10));
            assert!(output.status.success(), "{sub} {flag}: {}", stderr(&output));
            assert!(
                stdout(&output).contains("Usage"),
                "{sub} {flag}: {}",
                stdout(&output)
            );
        }
    }
    // `help <sub>` and `--version` too.
    let mut command = dmrelay(dir.path());
    command.args(["help", "serve"]);
    assert!(
        output_within(command, Duration::from_secs(10))
            .status
            .success()
    );
    let mut command = dmrelay(dir.path());
    command.arg("--version");
    let output = output_within(command, Duration::from_secs(10));
    assert!(output.status.success());
    assert!(stdout(&output).contains(env!("CARGO_PKG_VERSION")));
    // Nothing of that wrote anything (no key file, no data dir).
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn an_unknown_subcommand_or_flag_fails() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["frobnicate"][..], &["keygen", "--nope"], &[]] {
        let mut command = dmrelay(dir.path());
        command.args(args);
        let output = output_within(command, Duration::from_secs(10));
        assert!(!output.status.success(), "{args:?} should fail");
    }
}

fn keygen(dir: &Path, args: &[&str]) -> Output {
    let mut command = dmrelay(dir);
    command.arg("keygen").args(args);
    output_within(command, Duration::from_secs(10))
}

#[test]
fn keygen_writes_a_0600_key_file_and_prints_the_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("alice.key");
    let output = keygen(dir.path(), &["--out", key_path.to_str().unwrap()]);
    assert!(output.status.success(), "{}", stderr(&output));
    let public = stdout(&output).trim().to_string();
    assert!(
        is_lower_hex(&public, 64),
        "a 64-hex public key on stdout: {public:?}"
    );
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
    // The file is a secret key file (not bare hex) holding the seed of that public key.
    let file = std::fs::read_to_string(&key_path).unwrap();
    let key = dmrelay::client::parse_secret_key(&file).expect("a secret key file");
    assert_eq!(hex::encode(key.verifying_key().to_bytes()), public);
    assert!(
        !stdout(&output).contains(&hex::encode(key.to_bytes())),
        "the secret is not printed"
    );

    // Default --out is ./dmrelay.key in the working directory.
    let output = keygen(dir.path(), &[]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(dir.path().join("dmrelay.key").is_file());

    // Two keys are different.
    let other = dir.path().join("bob.key");
    let output = keygen(dir.path(), &["--out", other.to_str().unwrap()]);
    assert_ne!(stdout(&output).trim(), public);
}

#[test]
fn keygen_force_makes_a_replaced_world_readable_file_private() {
    // The mode given at open only applies to a created file: a replaced one must be set to 0600.
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("k.key");
    std::fs::write(&key_path, "old").unwrap();
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = keygen(
        dir.path(),
        &["--out", key_path.to_str().unwrap(), "--force"],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "key file mode {mode:o}");
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("k.key");
    let out = key_path.to_str().unwrap();
    let first = keygen(dir.path(), &["--out", out]);
    assert!(first.status.success());
    let original = std::fs::read(&key_path).unwrap();

    let second = keygen(dir.path(), &["--out", out]);
    assert!(!second.status.success(), "overwrote without --force");
    assert!(
        stdout(&second).trim().is_empty(),
        "no public key printed on failure"
    );
    assert!(
        stderr(&second).contains("--force"),
        "the error says how: {}",
        stderr(&second)
    );
    assert_eq!(
        std::fs::read(&key_path).unwrap(),
        original,
        "the key file is unchanged"
    );

    let forced = keygen(dir.path(), &["--out", out, "--force"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let replaced = std::fs::read(&key_path).unwrap();
    assert_ne!(replaced, original);
    assert_ne!(stdout(&forced), stdout(&first));
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

/// Runs `dmrelay serve` with `env` in a fresh cwd and data dir; it must exit non-zero at once
/// with exactly one stderr line, which is returned.
fn serve_fails(env: &[(&str, &str)], args: &[&str]) -> String {
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut command = dmrelay(cwd.path());
    command
        .arg("serve")
        .args(args)
        .env("MESH_DM_DATA_DIR", data.path())
        // A free port, so that a node that wrongly starts does not collide with anything.
        .env("MESH_DM_LISTEN", "127.0.0.1:0");
    for (key, value) in env {
        command.env(key, value);
    }
    let output = output_within(command, Duration::from_secs(10));
    let err = stderr(&output);
    assert!(
        !output.status.success(),
        "{env:?} {args:?}: serve should fail; stderr: {err}"
    );
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "{env:?} {args:?}: exactly one line on stderr, got {err:?}"
    );
    assert_eq!(
        std::fs::read_dir(data.path()).unwrap().count(),
        0,
        "no store created"
    );
    lines[0].to_string()
}

#[test]
fn serve_stops_at_start_with_one_line_naming_an_invalid_setting() {
    let cases: &[(&str, &str)] = &[
        ("MESH_DM_PERSIST", "disk"),
        ("MESH_DM_STORE_ENGINE", "rocksdb"),
        ("MESH_DM_LISTEN", "nonsense"),
        ("MESH_DM_PEER_LISTEN", "nowhere:port"),
        ("MESH_DM_PENDING_PER_SENDER_LIMIT", "0"),
        ("MESH_DM_PENDING_PER_SENDER_LIMIT", "two"),
        ("MESH_DM_PENDING_PER_SENDER_LIMIT", "-1"),
        ("MESH_DM_MAILBOX_LIMIT", "0"),
        ("MESH_DM_MAX_MSG_BYTES", "0"),
        ("MESH_DM_MAX_MSG_BYTES", "10000000"),
        ("MESH_DM_MAX_TTL_S", "0"),
        ("MESH_RELAY_PUSH_TIMEOUT_S", "-3"),
        ("MESH_RELAY_MAX_FAILURES", "0"),
        ("MESH_RELAY_FAILURE_COOLDOWN_S", "soon"),
        ("MESH_DM_SYNC_INTERVAL_S", "0"),
        ("MESH_SELF_PEER_URL", "ftp://relay.example"),
        ("MESH_RELAY_PEERS", "not a url"),
        ("MESH_DM_LOG_FORMAT", "xml"),
        ("MESH_DM_TLS_CERT", "/nonexistent/node.pem"),
        ("MESH_RELAY_CA_FILE", "/nonexistent/ca.pem"),
        ("MESH_DM_MAILBOX_IDLE_S", "never"),
    ];
    for (name, value) in cases {
        let line = serve_fails(&[(name, value)], &[]);
        assert!(
            line.contains(name),
            "{name}={value}: the line names the setting: {line}"
        );
    }
    // A peer without any secret names the secret setting.
    let line = serve_fails(&[("MESH_RELAY_PEERS", "http://relay-b.example")], &[]);
    assert!(line.contains("MESH_PEER_PUSH_SECRET"), "{line}");
}

#[test]
fn serve_stops_on_a_bad_config_file_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let unknown = dir.path().join("unknown.toml");
    std::fs::write(&unknown, "listen = \"127.0.0.1:0\"\nno_such_key = 1\n").unwrap();
    let line = serve_fails(&[], &["--config", unknown.to_str().unwrap()]);
    assert!(line.contains("no_such_key"), "{line}");

    let bad_value = dir.path().join("bad_value.toml");
    std::fs::write(&bad_value, "listen = \"127.0.0.1:0\"\nmailbox_limit = 0\n").unwrap();
    let line = serve_fails(&[], &["--config", bad_value.to_str().unwrap()]);
    assert!(line.contains("mailbox_limit"), "{line}");

    let wrong_type = dir.path().join("wrong_type.toml");
    std::fs::write(&wrong_type, "persist = 3\n").unwrap();
    let line = serve_fails(&[], &["--config", wrong_type.to_str().unwrap()]);
    assert!(line.contains("persist"), "{line}");

    let missing = dir.path().join("missing.toml");
    let line = serve_fails(&[], &["--config", missing.to_str().unwrap()]);
    assert!(line.contains("missing.toml"), "{line}");

    // The environment names the file too.
    let line = serve_fails(&[("MESH_DM_CONFIG", unknown.to_str().unwrap())], &[]);
    assert!(line.contains("no_such_key"), "{line}");
}

#[test]
fn serve_reads_config_node_toml_from_the_working_directory_by_default() {
    let cwd = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir(cwd.path().join("config")).unwrap();
    std::fs::write(cwd.path().join("config/node.toml"), "typo_setting = true\n").unwrap();
    let mut command = dmrelay(cwd.path());
    command
        .arg("serve")
        .env("MESH_DM_DATA_DIR", data.path())
        .env("MESH_DM_LISTEN", "127.0.0.1:0");
    let output = output_within(command, Duration::from_secs(10));
    assert!(!output.status.success());
    let err = stderr(&output);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("typo_setting"), "{err}");
}

#[actix_rt::test]
async fn settings_come_from_the_config_file_with_the_environment_taking_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("node.toml");
    std::fs::write(&file, "mailbox_limit = 2\npending_per_sender_limit = 5\n").unwrap();
    let node = Node::start(
        NodeConfig::default()
            .env("MESH_DM_CONFIG", file.display())
            .env("MESH_DM_PENDING_PER_SENDER_LIMIT", 1),
    );
    node.ready().await;
    let (alice, carol, dave, bob) = (
        common::Identity::new(),
        common::Identity::new(),
        common::Identity::new(),
        common::Identity::new(),
    );
    assert_eq!(node.send(&alice.envelope_to(&bob, "a1")).await.0, 200);
    // The environment's cap of 1, not the file's 5.
    let (status, body) = node.send(&alice.envelope_to(&bob, "a2")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("cap_violation")),
        "{body}"
    );
    assert_eq!(body["limit"], 1, "{body}");
    // The file's mailbox limit of 2, not the default 48.
    assert_eq!(node.send(&carol.envelope_to(&bob, "c1")).await.0, 200);
    let (status, body) = node.send(&dave.envelope_to(&bob, "d1")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (429, Some("mailbox_full")),
        "{body}"
    );
}

fn cli_json(dir: &Path, args: &[&str]) -> Value {
    let mut command = dmrelay(dir);
    command.args(args);
    let output = output_within(command, Duration::from_secs(10));
    assert!(output.status.success(), "{args:?}: {}", stderr(&output));
    let text = stdout(&output);
    assert_eq!(text.trim().lines().count(), 1, "one JSON line: {text}");
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{args:?} printed {text:?}: {e}"))
}

#[actix_rt::test]
async fn cli_helpers_print_requests_a_real_node_accepts() {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    let dir = tempfile::tempdir().unwrap();
    let public = |name: &str| {
        let out = dir.path().join(name);
        let output = keygen(dir.path(), &["--out", out.to_str().unwrap()]);
        assert!(output.status.success(), "{}", stderr(&output));
        (
            out.to_str().unwrap().to_string(),
            stdout(&output).trim().to_string(),
        )
    };
    let (alice_key, alice_pub) = public("alice.key");
    let (bob_key, bob_pub) = public("bob.key");

    // envelope → send: 200 accepted.
    let envelope = cli_json(
        dir.path(),
        &[
            "envelope",
            "--key",
            &alice_key,
            "--to",
            &bob_pub,
            "--text",
            "hello bob",
            "--msg-id",
            "cli-1",
        ],
    );
    assert_eq!(envelope["sender"], alice_pub.as_str());
    assert_eq!(envelope["mailbox"], bob_pub.as_str());
    let (status, body) = node.post("/api/mesh/dm/send", &envelope).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );
    assert_eq!(body["msg_id"], "cli-1");
    // A random msg_id when none is given, and a custom ttl.
    let second = cli_json(
        dir.path(),
        &[
            "envelope", "--key", &alice_key, "--to", &bob_pub, "--text", "again", "--ttl", "120",
        ],
    );
    assert_eq!(
        second["expires_at"].as_u64().unwrap() - second["created_at"].as_u64().unwrap(),
        120
    );
    let second_id = second["msg_id"].as_str().unwrap().to_string();
    assert_ne!(second_id, "cli-1");
    let (status, body) = node.post("/api/mesh/dm/send", &second).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("accepted")),
        "{body}"
    );

    // poll-request → poll: both messages, oldest first, exactly as sent.
    let poll = cli_json(
        dir.path(),
        &["poll-request", "--key", &bob_key, "--limit", "10"],
    );
    let (status, body) = node.post("/api/mesh/dm/poll", &poll).await;
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{body}");
    assert!(messages.contains(&envelope));
    assert!(messages.contains(&second));
    use base64::Engine as _;
    let text = base64::engine::general_purpose::STANDARD
        .decode(envelope["ciphertext"].as_str().unwrap())
        .unwrap();
    assert_eq!(text, b"hello bob");
    // Each poll-request has a fresh nonce: a second one is not a replay.
    let poll_again = cli_json(dir.path(), &["poll-request", "--key", &bob_key]);
    assert_ne!(poll_again["nonce"], poll["nonce"]);
    assert_eq!(node.post("/api/mesh/dm/poll", &poll_again).await.0, 200);

    // ack-request → ack: removed 1 (and the unknown id counted).
    let ack = cli_json(
        dir.path(),
        &["ack-request", "--key", &bob_key, "cli-1", "never-sent"],
    );
    let (status, body) = node.post("/api/mesh/dm/ack", &ack).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["removed"].as_u64(), body["unknown"].as_u64()),
        (Some(1), Some(1))
    );
    let (status, body) = node.post("/api/mesh/dm/send", &envelope).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("acked")),
        "{body}"
    );
    let ack = cli_json(dir.path(), &["ack-request", "--key", &bob_key, &second_id]);
    let (_, body) = node.post("/api/mesh/dm/ack", &ack).await;
    assert_eq!(body["removed"], 1, "{body}");
    let poll = cli_json(dir.path(), &["poll-request", "--key", &bob_key]);
    let (_, body) = node.post("/api/mesh/dm/poll", &poll).await;
    assert_eq!(body["messages"], serde_json::json!([]), "{body}");
}

#[test]
fn cli_helpers_refuse_bad_input_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k.key");
    assert!(
        keygen(dir.path(), &["--out", key.to_str().unwrap()])
            .status
            .success()
    );
    let key = key.to_str().unwrap();
    let not_a_key = dir.path().join("not.key");
    std::fs::write(&not_a_key, "hello").unwrap();
    let to = "ab".repeat(32);
    let cases: Vec<Vec<&str>> = vec![
        vec!["envelope", "--key", key, "--to", "ABCD", "--text", "x"],
        vec![
            "envelope", "--key", key, "--to", &to, "--text", "x", "--msg-id", "bad id",
        ],
        vec![
            "envelope",
            "--key",
            "/nonexistent/k.key",
            "--to",
            &to,
            "--text",
            "x",
        ],
        vec![
            "envelope",
            "--key",
            not_a_key.to_str().unwrap(),
            "--to",
            &to,
            "--text",
            "x",
        ],
        vec!["ack-request", "--key", key, "bad/id"],
        vec!["ack-request", "--key", key],
        vec!["poll-request", "--key", "/nonexistent/k.key"],
    ];
    for args in cases {
        let mut command = dmrelay(dir.path());
        command.args(&args);
        let output = output_within(command, Duration::from_secs(10));
        assert!(!output.status.success(), "{args:?} should fail");
        assert!(
            stdout(&output).trim().is_empty(),
            "{args:?}: nothing on stdout"
        );
        assert!(
            !stderr(&output).trim().is_empty(),
            "{args:?}: an error on stderr"
        );
    }
}

#[actix_rt::test]
async fn serve_refuses_a_data_dir_another_node_is_using_with_one_line() {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    let cwd = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(BIN)
        .arg("serve")
        .env("MESH_DM_DATA_DIR", &node.data_dir)
        .env("MESH_DM_LISTEN", "127.0.0.1:0")
        .env_remove("LISTEN_FDS")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("dmrelay:"))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("in use by another process"), "{stderr}");
    // The running node is unharmed.
    node.ready().await;
}

#[test]
fn serve_logs_one_json_object_per_line_when_asked() {
    use std::io::BufRead as _;
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(BIN)
        .arg("serve")
        .env("MESH_DM_DATA_DIR", cwd.path().join("data"))
        .env("MESH_DM_LISTEN", "127.0.0.1:0")
        .env("MESH_DM_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env_remove("LISTEN_FDS")
        .current_dir(cwd.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let first = lines.next().unwrap().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let record: Value = serde_json::from_str(&first).unwrap_or_else(|e| panic!("{e}: {first}"));
    assert_eq!(record["level"], "INFO");
    assert_eq!(record["fields"]["message"], "store opened");
    assert!(
        record["fields"]["epoch"]
            .as_str()
            .is_some_and(|e| e.len() == 32)
    );
}
