//! SPEC §6.5 body limits against a hostile client: a body over the limit gets 413 `too_large` and
//! its connection is closed, on both planes, whether the body is chunked (and never ends) or
//! declares a `Content-Length` over the limit. Issue 7: a node kept reading a refused chunked
//! body (34 GB on one connection in 15 s).
//!
//! The client here is a raw `TcpStream`: one thread keeps writing the body, another reads the
//! reply; the test passes when the 413 has arrived and the server has closed the socket (a write
//! fails or the read ends) well within a deadline.

mod common;

use common::{Identity, Node, NodeConfig};
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long the server may take to close a refused connection (generous: CPU contention).
const CLOSE_DEADLINE: Duration = Duration::from_secs(15);
/// Size of each body write.
const CHUNK: usize = 16 * 1024;

/// What the hostile client saw.
struct Outcome {
    reply: String,
    body_bytes_sent: u64,
    closed_after: Option<Duration>,
}

fn host_port(base: &str) -> &str {
    base.trim_start_matches("http://")
}

/// Sends the headers of `path` (with `framing` as the body's length header), then writes body
/// bytes until the server closes the connection or `CLOSE_DEADLINE` passes.
fn hostile_post(base: &str, path: &str, framing: &str, chunked: bool) -> Outcome {
    let mut stream = TcpStream::connect(host_port(base)).unwrap();
    stream.set_nodelay(true).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{framing}\r\n\r\n",
        host_port(base)
    );
    stream.write_all(head.as_bytes()).unwrap();
    let closed = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let reader = {
        let mut stream = stream.try_clone().unwrap();
        let closed = Arc::clone(&closed);
        std::thread::spawn(move || {
            stream
                .set_read_timeout(Some(CLOSE_DEADLINE + Duration::from_secs(5)))
                .unwrap();
            let mut reply = Vec::new();
            let mut buf = [0u8; 4096];
            let ended = loop {
                match stream.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => break false,
                    // Reset: the server closed with our unread bytes still queued.
                    Err(_) => break true,
                }
            };
            if ended {
                closed.store(true, Ordering::SeqCst);
            }
            (String::from_utf8_lossy(&reply).into_owned(), ended)
        })
    };
    let payload = vec![b'a'; CHUNK];
    let mut frame = Vec::with_capacity(CHUNK + 16);
    if chunked {
        frame.extend_from_slice(format!("{CHUNK:x}\r\n").as_bytes());
        frame.extend_from_slice(&payload);
        frame.extend_from_slice(b"\r\n");
    } else {
        frame.extend_from_slice(&payload);
    }
    let mut write_failed_after = None;
    while start.elapsed() < CLOSE_DEADLINE && !closed.load(Ordering::SeqCst) {
        if stream.write_all(&frame).is_err() {
            write_failed_after = Some(start.elapsed());
            break;
        }
        sent.fetch_add(CHUNK as u64, Ordering::SeqCst);
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let (reply, read_ended) = reader.join().unwrap();
    let closed_after = match (write_failed_after, read_ended) {
        (Some(after), _) => Some(after),
        (None, true) => Some(start.elapsed()),
        (None, false) => None,
    };
    Outcome {
        reply,
        body_bytes_sent: sent.load(Ordering::SeqCst),
        closed_after,
    }
}

fn assert_refused_and_closed(what: &str, outcome: &Outcome, limit: usize) {
    let reply = outcome.reply.to_ascii_lowercase();
    assert!(
        reply.starts_with("http/1.1 413"),
        "{what}: expected a 413, got {:?}",
        outcome.reply
    );
    assert!(reply.contains("\"error\":\"too_large\""), "{what}: {reply}");
    assert!(
        reply.contains(&format!("limit of {limit} bytes")),
        "{what}: {reply}"
    );
    assert!(reply.contains("connection: close"), "{what}: {reply}");
    let closed_after = outcome.closed_after.unwrap_or_else(|| {
        panic!(
            "{what}: the server never closed the connection; {} body bytes were sent in {CLOSE_DEADLINE:?}",
            outcome.body_bytes_sent
        )
    });
    eprintln!(
        "{what}: closed after {closed_after:?}, {} KiB of body sent",
        outcome.body_bytes_sent / 1024
    );
}

async fn still_serves(node: &Node) {
    let owner = Identity::new();
    let (status, body) = node.poll(&owner, 1).await;
    assert_eq!(status, 200, "client plane after a refused body: {body}");
    let (status, body) = common::request("GET", &node.peer_url, "/health").await;
    assert_eq!(status, 200, "peer plane after a refused body: {body}");
}

#[actix_rt::test]
async fn a_refused_body_gets_413_and_its_connection_is_closed_on_both_planes() {
    let node = Node::start(NodeConfig {
        separate_peer_lane: true,
        ..NodeConfig::default()
    });
    node.ready().await;
    node.ready_peer_lane().await;
    let cases = [
        (
            "client plane",
            node.url.clone(),
            "/api/mesh/dm/send",
            64 * 1024,
        ),
        (
            "client plane",
            node.url.clone(),
            "/api/mesh/dm/poll",
            64 * 1024,
        ),
        (
            "peer plane",
            node.peer_url.clone(),
            "/api/mesh/dm/replicate-envelope",
            1024 * 1024,
        ),
    ];
    for (plane, base, path, limit) in cases {
        for chunked in [true, false] {
            let framing = if chunked {
                "Transfer-Encoding: chunked".to_string()
            } else {
                "Content-Length: 10000000000".to_string()
            };
            let what = format!("{plane} {path} with {framing}");
            let outcome = {
                let (base, path) = (base.clone(), path.to_string());
                let framing = framing.clone();
                actix_rt::task::spawn_blocking(move || {
                    hostile_post(&base, &path, &framing, chunked)
                })
                .await
                .unwrap()
            };
            assert_refused_and_closed(&what, &outcome, limit);
            still_serves(&node).await;
        }
    }
}
