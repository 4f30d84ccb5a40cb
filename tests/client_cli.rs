//! `dmrelay send` and `dmrelay inbox` against real nodes: the payload of SPEC Appendix A end to
//! end (encrypt, sign, deposit §6.1, poll §6.2, verify, decrypt, ack §6.3), the refusals a person
//! meets (cap_violation §4, a public key given as a secret key, an unreachable node), and
//! interoperability with libsodium (tests/interop/sbdm_box.py, PyNaCl).

mod common;

use common::{Identity, Node, NodeConfig, dmrelay};
use dmrelay::protocol::{Envelope, MailboxKey, MsgId, now_unix};
use serde_json::Value;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `dmrelay args…` with `input` on stdin; kills it after 60 s (a hung client fails).
fn run_with_input(cwd: &Path, args: &[&str], input: Option<&str>) -> Output {
    let mut command = dmrelay(cwd);
    command.args(args);
    if input.is_some() {
        command.stdin(Stdio::piped());
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = input {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "dmrelay {args:?} still running after 60 s; stderr: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// Runs a command off the async runtime, so that a server in this test process keeps serving.
async fn run(cwd: &Path, args: &[&str]) -> Output {
    let cwd = cwd.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    actix_rt::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_with_input(&cwd, &args, None)
    })
    .await
    .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A key made by `dmrelay keygen`: its file, its public key, and its seed (for libsodium).
struct KeyFile {
    path: String,
    public: String,
    seed_hex: String,
    identity: Identity,
}

fn keygen(dir: &Path, name: &str) -> KeyFile {
    let path = dir.join(name);
    let output = run_with_input(dir, &["keygen", "--out", path.to_str().unwrap()], None);
    assert!(output.status.success(), "{}", stderr(&output));
    let key = dmrelay::client::load_secret_key(&path).unwrap();
    let public = stdout(&output).trim().to_string();
    assert_eq!(public, hex::encode(key.verifying_key().to_bytes()));
    KeyFile {
        path: path.to_str().unwrap().to_string(),
        public,
        seed_hex: hex::encode(key.to_bytes()),
        identity: Identity { key },
    }
}

/// The lines of `--json` output, each parsed.
fn json_lines(output: &Output) -> Vec<Value> {
    stdout(output)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

async fn send(dir: &Path, node: &Node, from: &KeyFile, to: &KeyFile, text: &str) -> Output {
    run(
        dir,
        &[
            "send", "--node", &node.url, "--key", &from.path, "--to", &to.public, "--text", text,
        ],
    )
    .await
}

async fn inbox(dir: &Path, node: &Node, owner: &KeyFile, extra: &[&str]) -> Output {
    let mut args = vec!["inbox", "--node", &node.url, "--key", &owner.path];
    args.extend_from_slice(extra);
    run(dir, &args).await
}

async fn started_node() -> Node {
    let node = Node::start(NodeConfig::default());
    node.ready().await;
    node
}

#[actix_rt::test]
async fn send_then_inbox_round_trips_an_encrypted_message() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );

    let sent = send(dir.path(), &node, &alice, &bob, "hello bob — meet at 6?").await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    assert!(stdout(&sent).contains("accepted"), "{}", stdout(&sent));

    // What the relay holds is a sealed box (Appendix A), not the text.
    let stored = node.pending_messages(&bob.identity).await;
    assert_eq!(stored.len(), 1);
    let ciphertext = stored[0]["ciphertext"].as_str().unwrap();
    assert!(!ciphertext.contains("hello"));
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(ciphertext)
        .unwrap();
    assert_eq!(bytes.len(), 24 + 16 + 256, "nonce, tag, one padded block");

    // Human output: sender, time, text.
    let read = inbox(dir.path(), &node, &bob, &[]).await;
    assert!(read.status.success(), "{}", stderr(&read));
    let text = stdout(&read);
    assert!(text.contains(&format!("From {}", alice.public)), "{text}");
    assert!(text.contains("hello bob — meet at 6?"), "{text}");
    assert!(text.contains(" UTC"), "{text}");

    // --json: one object per line with exactly msg_id, sender, sent_at, text.
    let read = inbox(dir.path(), &node, &bob, &["--json"]).await;
    assert!(read.status.success(), "{}", stderr(&read));
    let lines = json_lines(&read);
    assert_eq!(lines.len(), 1, "{}", stdout(&read));
    let line = lines[0].as_object().unwrap();
    let mut keys: Vec<&str> = line.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["msg_id", "sender", "sent_at", "text"]);
    assert_eq!(line["msg_id"], stored[0]["msg_id"]);
    assert_eq!(line["sender"], alice.public.as_str());
    assert_eq!(line["text"], "hello bob — meet at 6?");
    let sent_at = line["sent_at"].as_u64().unwrap();
    assert!(sent_at.abs_diff(now_unix()) < 120, "{sent_at}");

    // Reading without --ack leaves the message pending (SPEC §6.2: polling removes nothing).
    assert_eq!(node.pending_messages(&bob.identity).await.len(), 1);
}

#[actix_rt::test]
async fn text_comes_from_stdin_or_a_file_and_ack_empties_the_mailbox() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    let args = [
        "send",
        "--node",
        &node.url,
        "--key",
        &alice.path,
        "--to",
        &bob.public,
    ];
    let sent = run_with_input(dir.path(), &args, Some("from stdin\n"));
    assert!(sent.status.success(), "{}", stderr(&sent));
    let file = dir.path().join("message.txt");
    std::fs::write(&file, "-from a file, starting with a dash\n").unwrap();
    let mut with_file = args.to_vec();
    with_file.extend(["--file", file.to_str().unwrap()]);
    let sent = run_with_input(dir.path(), &with_file, None);
    assert!(sent.status.success(), "{}", stderr(&sent));

    // SPEC §6.3: --ack acknowledges what was shown; the node removes both.
    let read = inbox(dir.path(), &node, &bob, &["--json", "--ack"]).await;
    assert!(read.status.success(), "{}", stderr(&read));
    let texts: Vec<String> = json_lines(&read)
        .iter()
        .map(|l| l["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(texts.len(), 2, "{}", stdout(&read));
    assert!(texts.contains(&"from stdin".to_string()), "{texts:?}");
    assert!(
        texts.contains(&"-from a file, starting with a dash".to_string()),
        "{texts:?}"
    );
    assert!(
        stderr(&read).contains("Acknowledged 2"),
        "{}",
        stderr(&read)
    );
    assert!(node.pending_ids(&bob.identity).await.is_empty());

    let again = inbox(dir.path(), &node, &bob, &[]).await;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(stdout(&again).trim(), "No messages.");
    let again = inbox(dir.path(), &node, &bob, &["--json"]).await;
    assert_eq!(
        stdout(&again),
        "",
        "--json prints nothing for an empty mailbox"
    );
}

#[actix_rt::test]
async fn ack_drains_more_than_one_page() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let bob = keygen(dir.path(), "bob.key");
    // Three senders, two messages each (the per-sender cap is 2): six messages.
    for i in 0..3 {
        let sender = keygen(dir.path(), &format!("s{i}.key"));
        for n in 0..2 {
            let sent = send(dir.path(), &node, &sender, &bob, &format!("m{i}{n}")).await;
            assert!(sent.status.success(), "{}", stderr(&sent));
        }
    }
    let read = inbox(
        dir.path(),
        &node,
        &bob,
        &["--json", "--ack", "--limit", "4"],
    )
    .await;
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(json_lines(&read).len(), 6, "{}", stdout(&read));
    assert!(node.pending_ids(&bob.identity).await.is_empty());
}

#[actix_rt::test]
async fn an_undecryptable_message_is_shown_and_can_be_acknowledged() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    // Validly signed by Alice, but the ciphertext is no box (SPEC Appendix A, last rule).
    let garbage = Envelope::sign(
        &alice.identity.key,
        bob.identity.mailbox(),
        MsgId::parse("msg_id", "garbage-1").unwrap(),
        now_unix(),
        now_unix() + 3600,
        &[7u8; 300],
    );
    let (status, body) = node.send(&garbage).await;
    assert_eq!(status, 200, "{body}");

    let read = inbox(dir.path(), &node, &bob, &[]).await;
    assert!(read.status.success(), "{}", stderr(&read));
    assert!(stdout(&read).contains("UNDECRYPTABLE"), "{}", stdout(&read));
    assert!(stdout(&read).contains("garbage-1"), "{}", stdout(&read));

    let read = inbox(dir.path(), &node, &bob, &["--json", "--ack"]).await;
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(
        json_lines(&read),
        vec![serde_json::json!({
            "msg_id": "garbage-1",
            "sender": alice.public,
            "error": "undecryptable",
        })]
    );
    assert!(node.pending_ids(&bob.identity).await.is_empty());
}

#[actix_rt::test]
async fn a_third_unread_message_is_refused_with_the_cap_violation_detail() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    for text in ["one", "two"] {
        let sent = send(dir.path(), &node, &alice, &bob, text).await;
        assert!(sent.status.success(), "{}", stderr(&sent));
    }
    // SPEC §4/§6.1: 429 cap_violation, its detail shown, non-zero exit.
    let third = send(dir.path(), &node, &alice, &bob, "three").await;
    assert_eq!(third.status.code(), Some(1), "{}", stderr(&third));
    let err = stderr(&third);
    assert!(err.contains("cap_violation"), "{err}");
    assert!(
        err.contains("Recipient already has 2 unread messages from you"),
        "{err}"
    );
    assert_eq!(stdout(&third), "");
    assert_eq!(node.pending_ids(&bob.identity).await.len(), 2);
}

#[actix_rt::test]
async fn a_public_key_is_refused_where_a_secret_key_is_expected() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    let alice_pub = dir.path().join("alice.pub");
    std::fs::write(&alice_pub, format!("{}\n", alice.public)).unwrap();
    let alice_pub = alice_pub.to_str().unwrap();
    let empty = dir.path().join("empty.key");
    std::fs::write(&empty, "").unwrap();
    let empty = empty.to_str().unwrap();

    for (key, expect) in [(alice_pub, "PUBLIC key"), (empty, "holds no key")] {
        let cases: Vec<Vec<&str>> = vec![
            vec![
                "send",
                "--node",
                &node.url,
                "--key",
                key,
                "--to",
                &bob.public,
                "--text",
                "x",
            ],
            vec!["inbox", "--node", &node.url, "--key", key],
            // Issue 6: `envelope --key alice.pub` signed as another identity.
            vec!["envelope", "--key", key, "--to", &bob.public, "--text", "x"],
            vec!["poll-request", "--key", key],
            vec!["ack-request", "--key", key, "m1"],
        ];
        for args in cases {
            let output = run(dir.path(), &args).await;
            assert!(!output.status.success(), "{args:?} must fail");
            assert_eq!(stdout(&output), "", "{args:?}");
            let err = stderr(&output);
            assert!(err.contains(expect), "{args:?}: {err}");
            assert!(err.contains("dmrelay keygen --out FILE"), "{args:?}: {err}");
        }
    }
    assert!(node.pending_ids(&bob.identity).await.is_empty());
    let _ = alice;
}

#[actix_rt::test]
async fn an_unreachable_node_is_named_in_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    // A port that was just free: nobody listens there.
    let url = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    for args in [
        vec![
            "send",
            "--node",
            &url,
            "--key",
            &alice.path,
            "--to",
            &bob.public,
            "--text",
            "x",
        ],
        vec!["inbox", "--node", &url, "--key", &bob.path],
    ] {
        let output = run(dir.path(), &args).await;
        assert_eq!(
            output.status.code(),
            Some(3),
            "{args:?}: {}",
            stderr(&output)
        );
        let err = stderr(&output);
        assert!(
            err.contains(&format!("Cannot reach the relay at {url}")),
            "{err}"
        );
    }
    // The same failure with stderr a closed pipe (`dmrelay send … 2>&1 | head -0`): still exit 3,
    // not a panic (101) while printing the sentence.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = dmrelay(dir.path())
        .args(["send", "--node", &url, "--key", &alice.path])
        .args(["--to", &bob.public, "--text", "x"])
        .stdout(Stdio::null())
        .stderr(writer)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "closed stderr");
    // Not a URL at all.
    let output = run(
        dir.path(),
        &["inbox", "--node", "localhost:8787", "--key", &bob.path],
    )
    .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("http://"), "{}", stderr(&output));
}

#[actix_rt::test]
async fn an_envelope_with_a_broken_signature_is_shown_not_dropped() {
    // A relay that changed an envelope (here a fake node answering the poll): the recipient
    // must see it as bad_signature, next to the intact one.
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    let to = MailboxKey::of(&bob.identity.key);
    let good = dmrelay::client::build_envelope(&alice.identity.key, &to, "intact", now_unix(), 60)
        .unwrap();
    let mut changed = serde_json::to_value(
        dmrelay::client::build_envelope(&alice.identity.key, &to, "changed", now_unix(), 60)
            .unwrap(),
    )
    .unwrap();
    changed["expires_at"] = (changed["expires_at"].as_u64().unwrap() + 1).into();
    let reply = serde_json::json!({
        "ok": true,
        "messages": [serde_json::to_value(&good).unwrap(), changed.clone()],
        "pending": 2,
        "has_more": false,
    });
    let url = common::spawn_http_server(move |cfg| {
        let reply = reply.clone();
        cfg.route(
            "/api/mesh/dm/poll",
            actix_web::web::post().to(move || {
                let reply = reply.clone();
                async move { actix_web::HttpResponse::Ok().json(reply) }
            }),
        );
    });
    let output = run(
        dir.path(),
        &["inbox", "--node", &url, "--key", &bob.path, "--json"],
    )
    .await;
    assert!(output.status.success(), "{}", stderr(&output));
    let lines = json_lines(&output);
    assert_eq!(lines.len(), 2, "{}", stdout(&output));
    assert_eq!(lines[0]["text"], "intact");
    assert_eq!(
        lines[1],
        serde_json::json!({
            "msg_id": changed["msg_id"],
            "sender": alice.public,
            "error": "bad_signature",
        })
    );
}

/// A running `dmrelay inbox --follow …` whose stdout and stderr lines arrive on channels (read
/// on threads, so that the test never blocks on a pipe).
struct Follower {
    child: std::process::Child,
    stdout: std::sync::mpsc::Receiver<String>,
    stderr: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(dir: &Path, args: &[&str]) -> Follower {
        let mut child = dmrelay(dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = |pipe: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().unwrap()));
        let stderr = lines(Box::new(child.stderr.take().unwrap()));
        let follower = Follower {
            child,
            stdout,
            stderr,
        };
        // The signal handlers are in place once it says it is waiting.
        let first = Self::next(&follower.stderr, "`Waiting for messages` line");
        assert!(first.contains("Waiting for messages"), "{first}");
        follower
    }

    fn next(rx: &std::sync::mpsc::Receiver<String>, what: &str) -> String {
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("no {what} within 30 s"))
    }

    fn next_json(&self) -> Value {
        serde_json::from_str(&Self::next(&self.stdout, "message line")).unwrap()
    }

    /// Ctrl-C, then the exit code.
    fn interrupt(mut self) -> Option<i32> {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "still running after Ctrl-C");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[actix_rt::test]
async fn follow_prints_messages_as_they_arrive_and_ctrl_c_exits_zero() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    let follower = Follower::start(
        dir.path(),
        &[
            "inbox", "--node", &node.url, "--key", &bob.path, "--follow", "--ack", "--json",
            "--wait", "5",
        ],
    );
    for text in ["first while following", "second while following"] {
        let sent = send(dir.path(), &node, &alice, &bob, text).await;
        assert!(sent.status.success(), "{}", stderr(&sent));
        let line = follower.next_json();
        assert_eq!(line["text"], text);
        assert_eq!(line["sender"], alice.public.as_str());
    }
    // Both were acknowledged as they were shown.
    common::wait_for(Duration::from_secs(20), || async {
        node.pending_ids(&bob.identity).await.is_empty()
    })
    .await;
    assert_eq!(
        follower.interrupt(),
        Some(0),
        "Ctrl-C ends --follow with success"
    );
}

#[actix_rt::test]
async fn follow_without_ack_shows_each_message_once_and_leaves_it_pending() {
    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    let follower = Follower::start(
        dir.path(),
        &[
            "inbox", "--node", &node.url, "--key", &bob.path, "--follow", "--json", "--wait", "1",
        ],
    );
    for text in ["one", "two"] {
        let sent = send(dir.path(), &node, &alice, &bob, text).await;
        assert!(sent.status.success(), "{}", stderr(&sent));
        // The next line is the new message, not the pending one shown before.
        assert_eq!(follower.next_json()["text"], text);
    }
    assert_eq!(node.pending_ids(&bob.identity).await.len(), 2);
    assert_eq!(follower.interrupt(), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Interoperability with libsodium (issue 6, "Done when"): tests/interop/sbdm_box.py.

fn interop_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/sbdm_box.py")
}

/// Runs the PyNaCl script; fails the test with a sentence when python3 or PyNaCl is missing.
fn python(args: &[&str]) -> Output {
    let probe = Command::new("python3")
        .args(["-c", "import nacl.bindings"])
        .output();
    match probe {
        Err(e) => panic!(
            "the libsodium interop test needs python3 ({e}); install Python 3, then `python3 -m pip install pynacl`"
        ),
        Ok(out) if !out.status.success() => panic!(
            "the libsodium interop test needs PyNaCl: run `python3 -m pip install pynacl` ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Ok(_) => {}
    }
    Command::new("python3")
        .arg(interop_script())
        .args(args)
        .output()
        .unwrap()
}

#[actix_rt::test]
async fn boxes_interoperate_with_libsodium_both_ways() {
    // The script is right: libsodium reproduces the payload vectors.
    let vectors = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/vectors.json");
    let check = python(&["check", vectors]);
    assert!(check.status.success(), "{}", stderr(&check));

    let node = started_node().await;
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );

    // (a) libsodium seals, `dmrelay inbox` opens.
    let sent_at = now_unix();
    let text = "from libsodium — ünïcödé ✓";
    let sealed = python(&[
        "seal",
        &alice.seed_hex,
        &bob.public,
        &sent_at.to_string(),
        text,
    ]);
    assert!(sealed.status.success(), "{}", stderr(&sealed));
    use base64::Engine as _;
    let box_bytes = base64::engine::general_purpose::STANDARD
        .decode(stdout(&sealed).trim())
        .unwrap();
    let envelope = Envelope::sign(
        &alice.identity.key,
        bob.identity.mailbox(),
        MsgId::parse("msg_id", "from-libsodium").unwrap(),
        now_unix(),
        now_unix() + 3600,
        &box_bytes,
    );
    let (status, body) = node.send(&envelope).await;
    assert_eq!(status, 200, "{body}");
    let read = inbox(dir.path(), &node, &bob, &["--json", "--ack"]).await;
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(
        json_lines(&read),
        vec![serde_json::json!({
            "msg_id": "from-libsodium",
            "sender": alice.public,
            "sent_at": sent_at,
            "text": text,
        })]
    );

    // (b) `dmrelay send` seals, libsodium opens (read back through a poll).
    let text = "from dmrelay send — ✓";
    let sent = send(dir.path(), &node, &alice, &bob, text).await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    let stored = node.pending_messages(&bob.identity).await;
    assert_eq!(stored.len(), 1);
    let ciphertext = stored[0]["ciphertext"].as_str().unwrap();
    let opened = python(&["open", &bob.seed_hex, &alice.public, ciphertext]);
    assert!(opened.status.success(), "{}", stderr(&opened));
    let message: Value = serde_json::from_str(stdout(&opened).trim()).unwrap();
    assert_eq!(message["v"], 1);
    assert_eq!(message["text"], text);
    assert!(message["sent_at"].as_u64().unwrap().abs_diff(now_unix()) < 120);
    // And libsodium, too, refuses it with the wrong sender key.
    let refused = python(&["open", &bob.seed_hex, &bob.public, ciphertext]);
    assert_eq!(refused.status.code(), Some(1), "{}", stdout(&refused));
}

#[actix_rt::test]
async fn send_and_inbox_work_over_https_with_a_private_ca() {
    let node = common::Reserved::with_tls(false, true).start(NodeConfig::default());
    node.ready().await;
    assert!(node.url.starts_with("https://"), "{}", node.url);
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (
        keygen(dir.path(), "alice.key"),
        keygen(dir.path(), "bob.key"),
    );
    let ca = common::fixture("test-ca.pem");
    let sent = run(
        dir.path(),
        &[
            "send",
            "--node",
            &node.url,
            "--key",
            &alice.path,
            "--to",
            &bob.public,
            "--text",
            "over tls",
            "--ca-file",
            &ca,
        ],
    )
    .await;
    assert!(sent.status.success(), "{}", stderr(&sent));
    let read = inbox(dir.path(), &node, &bob, &["--json", "--ca-file", &ca]).await;
    assert!(read.status.success(), "{}", stderr(&read));
    assert_eq!(json_lines(&read)[0]["text"], "over tls");
    // Without the CA the certificate is not trusted: a transport error, not a silent retry.
    let untrusted = inbox(dir.path(), &node, &bob, &[]).await;
    assert_eq!(untrusted.status.code(), Some(3), "{}", stderr(&untrusted));
}
