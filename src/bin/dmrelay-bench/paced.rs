//! A lean paced load generator: pre-built HTTP/1.1 requests written on a fixed schedule to a few
//! kept-alive connections per node, pipelined, with the answers read back in order.
//!
//! Why not awc: measured during a 3,000/s mesh-lag run, sending the background deposits through
//! awc took the bench process 0.24 of a core (about 80 µs per request: its pool, header maps and
//! futures), on the same two cores as the three nodes it measures. Here a request costs one
//! buffered write of bytes prepared before the run, and an answer the parse of its status line
//! and `Content-Length` (httparse).
//!
//! Request `i` goes to target `i % targets` and, on that target, to connection
//! `(i / targets) % connections`, so each connection knows beforehand how many answers to read.
//! A request due is written even when earlier ones on its connection are unanswered (pipelining,
//! which actix-web serves in order), so a slow node cannot slow the schedule down: its delay
//! shows in the lag probes instead. An answer other than 200, or a connection that breaks,
//! counts the requests concerned as failed.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// One request's bytes, head and body, ready to write.
pub fn post_request(host: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

/// What became of a paced load.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Answered 200.
    pub ok: usize,
    /// The answers other than 200, by status.
    pub refused: BTreeMap<u16, usize>,
    /// Requests whose connection broke before their answer came.
    pub lost: usize,
    /// When the last request was written, from the schedule's start.
    pub sent_in: Duration,
}

impl Outcome {
    /// Requests answered otherwise than 200, or lost with their connection.
    pub fn failed(&self) -> usize {
        self.refused.values().sum::<usize>() + self.lost
    }
}

/// Writes `requests[i]` at `start + i / rate` to `targets[i % targets.len()]` over
/// `connections` kept-alive connections per target, and waits for every answer.
pub async fn run(
    targets: &[SocketAddr],
    connections: usize,
    requests: Vec<Vec<u8>>,
    rate_per_s: f64,
    start: Instant,
) -> Result<Outcome, String> {
    let connections = connections.max(1);
    let lanes = targets.len() * connections;
    if lanes == 0 {
        return Err("no target to send to".into());
    }
    let total = requests.len();
    let tally = Rc::new(Tally::default());
    let mut senders = Vec::with_capacity(lanes);
    let mut readers = Vec::with_capacity(lanes);
    let mut writers = Vec::with_capacity(lanes);
    for lane in 0..lanes {
        let address = targets[lane % targets.len()];
        // Lane `lane` takes requests lane, lane + lanes, …: this many.
        let expected = total / lanes + usize::from(lane < total % lanes);
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .map_err(|e| format!("cannot connect to {address}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        let (send, receive) = mpsc::unbounded_channel::<Vec<u8>>();
        senders.push(send);
        writers.push(actix_rt::spawn(write_lane(write_half, receive)));
        readers.push(actix_rt::spawn(read_lane(
            read_half,
            expected,
            Rc::clone(&tally),
        )));
    }
    // The lane of request i: its target, then its connection on that target.
    let lane_of =
        |i: usize| (i % targets.len()) + targets.len() * ((i / targets.len()) % connections);
    let interval = Duration::from_secs_f64(1.0 / rate_per_s.max(1e-3));
    for (i, request) in requests.into_iter().enumerate() {
        let due = start + interval.mul_f64(i as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now())
            && wait > Duration::from_millis(1)
        {
            actix_rt::time::sleep(wait).await;
        }
        // A lane whose connection broke has counted its missing answers already.
        let _ = senders[lane_of(i)].send(request);
    }
    let sent_in = Instant::now().saturating_duration_since(start);
    drop(senders);
    for reader in readers {
        let _ = reader.await;
    }
    // Only now are the write halves dropped: dropping one shuts the connection's sending side,
    // and the node closes a half-closed connection without the answers still due on it.
    for writer in writers {
        let _ = writer.await;
    }
    let refused = tally.refused.borrow().clone();
    Ok(Outcome {
        ok: tally.ok.get(),
        refused,
        lost: tally.lost.get(),
        sent_in,
    })
}

/// The answers of every lane, as they come.
#[derive(Default)]
struct Tally {
    ok: Cell<usize>,
    refused: RefCell<BTreeMap<u16, usize>>,
    lost: Cell<usize>,
}

/// Writes what the schedule hands this lane, coalescing what is queued into one write; hands the
/// connection's write half back (still open) when the schedule is over.
async fn write_lane(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
) -> tokio::net::tcp::OwnedWriteHalf {
    let mut batch = Vec::new();
    while let Some(first) = queue.recv().await {
        // Usually one request is due at a time: it is written as it is, without a copy.
        let bytes: &[u8] = match queue.try_recv() {
            Err(_) => &first,
            Ok(second) => {
                batch.clear();
                batch.extend_from_slice(&first);
                batch.extend_from_slice(&second);
                while let Ok(more) = queue.try_recv() {
                    batch.extend_from_slice(&more);
                }
                &batch
            }
        };
        // A broken connection: its reader counts the answers that will not come.
        if stream.write_all(bytes).await.is_err() {
            break;
        }
    }
    stream
}

/// Reads `expected` answers in order; counts each 200 as ok and anything else (or an answer
/// that never comes, the connection having closed) as failed.
async fn read_lane(mut stream: tokio::net::tcp::OwnedReadHalf, expected: usize, tally: Rc<Tally>) {
    let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut answered = 0;
    while answered < expected {
        match next_answer(&buffer) {
            Ok(Some((status, length))) => {
                buffer.drain(..length);
                answered += 1;
                if status == 200 {
                    tally.ok.set(tally.ok.get() + 1);
                } else {
                    *tally.refused.borrow_mut().entry(status).or_default() += 1;
                }
                continue;
            }
            Ok(None) => {}
            Err(_) => break,
        }
        buffer.reserve(64 * 1024);
        match stream.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    tally.lost.set(tally.lost.get() + (expected - answered));
}

/// The status and whole length of the first answer in `buffer`, once all of it is there.
fn next_answer(buffer: &[u8]) -> Result<Option<(u16, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buffer) {
        Ok(httparse::Status::Complete(head)) => head,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(format!("unreadable answer: {err}")),
    };
    let status = response.code.unwrap_or(0);
    let mut body = None;
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            body = std::str::from_utf8(header.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok());
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("a chunked answer (this reader needs Content-Length)".into());
        }
    }
    let Some(body) = body else {
        return Err("an answer without Content-Length".into());
    };
    Ok((buffer.len() >= head + body).then_some((status, head + body)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_whole_and_in_order() {
        let two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 429 Too Many Requests\r\nContent-Length: 5\r\n\r\nslow!";
        let Ok(Some((status, length))) = next_answer(two) else {
            unreachable!("the first answer is complete");
        };
        assert_eq!((status, length), (200, 40));
        assert_eq!(next_answer(&two[length..]), Ok(Some((429, two.len() - 40))));
        // Not all of the body yet, not all of the head yet.
        assert_eq!(next_answer(&two[..39]), Ok(None));
        assert_eq!(next_answer(&two[..20]), Ok(None));
        assert!(next_answer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n").is_err());
        assert!(next_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(next_answer(b"garbage\r\n\r\n").is_err());
    }

    #[test]
    fn a_request_is_a_head_and_its_body() {
        let request = post_request("127.0.0.1:8787", "/api/mesh/dm/send", b"{\"a\":1}");
        assert_eq!(
            String::from_utf8_lossy(&request),
            "POST /api/mesh/dm/send HTTP/1.1\r\nHost: 127.0.0.1:8787\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}"
        );
    }

    /// A real HTTP server (actix-web) answering pipelined requests, each after 5 ms, so that most
    /// answers are still due when the schedule is over: every answer is counted, 200s as ok and
    /// the rest by status (none lost: the connections stay open until the last answer).
    #[actix_rt::test]
    async fn a_paced_load_counts_every_answer() {
        use actix_web::{App, HttpResponse, HttpServer, web};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = HttpServer::new(|| {
            App::new().route(
                "/send",
                web::post().to(|body: web::Bytes| async move {
                    actix_rt::time::sleep(Duration::from_millis(5)).await;
                    if body.as_ref() == b"bad" {
                        HttpResponse::BadRequest().body("no")
                    } else {
                        HttpResponse::Ok().body("{\"ok\":true}")
                    }
                }),
            )
        })
        .workers(1)
        // As the node does: a connection whose client stopped sending is closed.
        .h1_allow_half_closed(false)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        actix_rt::spawn(server);
        let host = address.to_string();
        let requests: Vec<Vec<u8>> = (0..60)
            .map(|i| {
                let body: &[u8] = if i % 20 == 7 { b"bad" } else { b"{}" };
                post_request(&host, "/send", body)
            })
            .collect();
        let outcome = run(&[address], 3, requests, 4000.0, Instant::now())
            .await
            .unwrap();
        assert_eq!((outcome.ok, outcome.failed(), outcome.lost), (57, 3, 0));
        assert_eq!(outcome.refused, BTreeMap::from([(400, 3)]));
        handle.stop(true).await;
        // Nobody listens any more: connecting fails with a sentence.
        let refused = run(
            &[address],
            1,
            vec![post_request(&host, "/send", b"{}")],
            10.0,
            Instant::now(),
        )
        .await;
        assert!(refused.is_err_and(|e| e.contains("cannot connect")));
    }
}
