//! `--runs wrk`: deposit, poll and ack driven by `wrk` against one fsync node, each next to
//! `GET /health` of the same server in the same run, with the node's own CPU per request.
//!
//! The load generator must not be what is measured: `wrk` (C, one thread, 64 keep-alive
//! connections) sends bodies signed beforehand, each used once (a Lua script reads them from a
//! file, one JSON object per line). The node's CPU comes from `/proc/<pid>/stat` (user + system
//! time over the run), so it does not depend on how fast the generator is.
//!
//! Order: `/health`, deposits (one sender per (sender, mailbox) pair use, `--wrk-mailboxes`
//! mailboxes), polls (limit 8, of mailboxes that then hold at least 8), acks (one id each, of
//! deposits the node answered 200), `/health` again. A run whose bodies ran out (the script
//! wraps around to reuse them) or that got any answer but 2xx is reported as invalid.

use crate::{
    Args, NodeProcess, cpu_seconds, fail, free_port, key, metric_sum, metrics_text, sign_parallel,
    start_node, sum_in, wait_ready,
};
use dmrelay::protocol::{AckObject, Envelope, MailboxKey, MsgId, PollRequest, now_unix};
use ed25519_dalek::SigningKey;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The Lua side: bodies from a file given after `--`, one request each, in order.
const SCRIPT: &str = r#"
local path, bodies, i = "/", {}, 0
wrapped = 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  path = args[1]
  for line in io.lines(args[2]) do bodies[#bodies + 1] = line end
  if #bodies == 0 then error("no bodies in " .. args[2]) end
end
function request()
  i = i + 1
  if i > #bodies then i = 1; wrapped = wrapped + 1 end
  return wrk.format("POST", path, {["Content-Type"] = "application/json"}, bodies[i])
end
function done(summary, latency, requests)
  local w = 0
  for _, t in ipairs(threads) do w = w + (t:get("wrapped") or 0) end
  io.write(string.format("bodies wrapped: %d\n", w))
end
"#;

/// What one `wrk` run printed, and the node's CPU over it.
struct Figures {
    requests: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_us_per_request: f64,
    non_2xx: u64,
    socket_errors: u64,
    wrapped: u64,
}

/// `12.34ms`, `560.00us`, `1.02s` in milliseconds.
fn parse_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    match unit {
        "us" => Some(number / 1000.0),
        "ms" => Some(number),
        "s" => Some(number * 1000.0),
        "m" => Some(number * 60_000.0),
        _ => None,
    }
}

fn parse_wrk(output: &str) -> Option<(f64, f64, f64, f64, u64, u64, u64)> {
    let mut requests = None;
    let mut rps = None;
    let (mut p50, mut p99) = (None, None);
    let (mut non_2xx, mut socket_errors, mut wrapped) = (0, 0, 0);
    for line in output.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [n, "requests", "in", ..] => requests = n.parse().ok(),
            ["Requests/sec:", n] => rps = n.parse().ok(),
            ["50%", d] => p50 = parse_duration_ms(d),
            ["99%", d] => p99 = parse_duration_ms(d),
            ["Non-2xx", "or", "3xx", "responses:", n] => non_2xx = n.parse().ok()?,
            ["bodies", "wrapped:", n] => wrapped = n.parse().ok()?,
            ["Socket", "errors:", rest @ ..] => {
                socket_errors = rest
                    .iter()
                    .filter_map(|w| w.trim_end_matches(',').parse::<u64>().ok())
                    .sum();
            }
            _ => {}
        }
    }
    Some((requests?, rps?, p50?, p99?, non_2xx, socket_errors, wrapped))
}

/// Runs `wrk` for `--wrk-seconds` against `url`; `bodies` (path, file) makes it POST them.
fn run_wrk(args: &Args, node: &NodeProcess, path: &str, bodies: Option<&Path>) -> Figures {
    let mut command = Command::new("wrk");
    command.args([
        "-t1",
        &format!("-c{}", args.wrk_connections),
        &format!("-d{}s", args.wrk_seconds),
        "--latency",
    ]);
    let url = match bodies {
        Some(file) => {
            let script = file.with_extension("lua");
            std::fs::write(&script, SCRIPT)
                .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", script.display())));
            command.arg("-s").arg(&script);
            node.url.clone()
        }
        None => format!("{}{path}", node.url),
    };
    command.arg(&url);
    if let Some(file) = bodies {
        command.arg("--").arg(path).arg(file);
    }
    let profiler = args.wrk_perf.as_ref().map(|dir| {
        let name = match path.trim_start_matches('/').rsplit('/').next() {
            Some(last) if !last.is_empty() => last,
            _ => "root",
        };
        let _ = std::fs::create_dir_all(dir);
        let out = dir.join(format!("{name}.perf.data"));
        Command::new("perf")
            .args([
                "record",
                // Frame pointers are not kept in release builds; unwinding by
                // `.eh_frame` (DWARF) gives whole stacks.
                "--call-graph",
                "dwarf,32768",
                "-F",
                "999",
                "-q",
                "-p",
                &node.child.id().to_string(),
                "-o",
            ])
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                fail(&format!(
                    "cannot run perf ({e}); install it or leave out --wrk-perf"
                ))
            })
    });
    let cpu_before = cpu_seconds(node.child.id());
    let output = command.output().unwrap_or_else(|e| {
        fail(&format!(
            "cannot run wrk ({e}); install it (apt-get install wrk) or leave `wrk` out of --runs"
        ))
    });
    let cpu = cpu_seconds(node.child.id()) - cpu_before;
    if let Some(mut perf) = profiler {
        // perf writes its file on SIGINT.
        // SAFETY: kill(2) has no memory preconditions.
        unsafe {
            libc::kill(perf.id() as libc::pid_t, libc::SIGINT);
        }
        let _ = perf.wait();
    }
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        fail(&format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let Some((requests, rps, p50_ms, p99_ms, non_2xx, socket_errors, wrapped)) = parse_wrk(&text)
    else {
        fail(&format!("cannot read wrk's output:\n{text}"));
    };
    Figures {
        requests,
        rps,
        p50_ms,
        p99_ms,
        cpu_us_per_request: cpu * 1e6 / requests.max(1.0),
        non_2xx,
        socket_errors,
        wrapped,
    }
}

/// Signs `count` bodies with `make(i)` on every core, written one per line to `file`.
fn write_bodies(file: &Path, count: usize, make: impl Fn(usize) -> Vec<u8> + Sync) {
    let parts = sign_parallel(0..count, |i| {
        let mut line = make(i);
        line.push(b'\n');
        line
    });
    let mut writer = std::io::BufWriter::new(
        std::fs::File::create(file)
            .unwrap_or_else(|e| fail(&format!("cannot create {}: {e}", file.display()))),
    );
    for part in parts {
        writer
            .write_all(&part)
            .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", file.display())));
    }
    writer
        .flush()
        .unwrap_or_else(|e| fail(&format!("cannot write {}: {e}", file.display())));
}

fn json(value: &impl serde::Serialize) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| fail(&format!("encode: {e}")))
}

/// The node's store-commit histogram (`dm_store_commit_seconds`) at one moment; two of them
/// tell what the commits of one run cost, and so where a request's wait came from.
struct Commits {
    count: f64,
    seconds: f64,
    ops: f64,
    over_10ms: f64,
    over_50ms: f64,
}

impl Commits {
    /// `None` from a node that does not export the histogram (a build older than it). One
    /// scrape, so that the counts and the buckets describe the same commits.
    async fn read(client: &awc::Client, node: &NodeProcess) -> Option<Self> {
        let text = metrics_text(client, &node.url).await;
        let metric = |name: &str| {
            sum_in(&text, name)
                .unwrap_or_else(|| fail(&format!("{} does not export {name}", node.url)))
        };
        let count = sum_in(&text, "dm_store_commit_seconds_count")?;
        Some(Self {
            count,
            seconds: metric("dm_store_commit_seconds_sum"),
            ops: metric("dm_store_ops_total"),
            over_10ms: count - metric(r#"dm_store_commit_seconds_bucket{le="0.01"}"#),
            over_50ms: count - metric(r#"dm_store_commit_seconds_bucket{le="0.05"}"#),
        })
    }

    fn print_between(earlier: &Option<Commits>, later: &Option<Commits>, name: &str) {
        let (Some(earlier), Some(later)) = (earlier, later) else {
            println!("| {name} | not exported by this node | | | | |");
            return;
        };
        let commits = later.count - earlier.count;
        if commits <= 0.0 {
            println!("| {name} | 0 | | | | |");
            return;
        }
        println!(
            "| {name} | {commits:.0} | {:.1} | {:.2} | {:.0} | {:.0} |",
            (later.ops - earlier.ops) / commits,
            1000.0 * (later.seconds - earlier.seconds) / commits,
            later.over_10ms - earlier.over_10ms,
            later.over_50ms - earlier.over_50ms,
        );
    }
}

fn print_row(name: &str, figures: &Figures, health: &Figures) {
    let valid = figures.non_2xx == 0 && figures.socket_errors == 0 && figures.wrapped == 0;
    println!(
        "| {name} | {:.0} | {:.3} | {:.1} | {:.2} | {:.2} | {}",
        figures.rps,
        figures.rps / health.rps,
        figures.cpu_us_per_request,
        figures.p50_ms,
        figures.p99_ms,
        if valid {
            format!("{:.0} requests", figures.requests)
        } else {
            format!(
                "INVALID: {} non-2xx, {} socket errors, bodies reused {} times",
                figures.non_2xx, figures.socket_errors, figures.wrapped
            )
        }
    );
}

pub async fn run(args: &Args, client: &awc::Client, root: &Path) {
    let dir: PathBuf = root.join("wrk");
    let node = start_node(
        &dir.join("node"),
        free_port(),
        &[("MESH_DM_MAILBOX_LIMIT", "100000".to_string())],
    );
    wait_ready(client, &node).await;
    let mailboxes = args.wrk_mailboxes.max(1);
    let count = args.wrk_bodies;
    let owners: Vec<SigningKey> = (0..mailboxes as u64).map(|m| key(m, 1)).collect();
    let now = now_unix();
    let payload = vec![0xabu8; args.ciphertext_bytes];
    let deposit_id = |i: usize| format!("w{i}");
    eprintln!("[wrk] signing {count} deposits, {count} polls ...");
    let deposits = dir.join("deposits.jsonl");
    write_bodies(&deposits, count, |i| {
        // Each (sender, mailbox) pair takes one envelope: the per-sender cap never refuses.
        let sender = key((i / mailboxes) as u64, 2);
        json(&Envelope::sign(
            &sender,
            MailboxKey::of(&owners[i % mailboxes]),
            MsgId::parse("msg_id", &deposit_id(i)).unwrap_or_else(|_| fail("bad id")),
            now,
            now + 3600,
            &payload,
        ))
    });
    let polls = dir.join("polls.jsonl");
    write_bodies(&polls, count, |i| {
        json(&PollRequest::sign(&owners[i % mailboxes], now, format!("{i:032x}"), 8).to_json())
    });

    let health_before = run_wrk(args, &node, "/health", None);
    let commits_before = Commits::read(client, &node).await;
    let deposit = run_wrk(args, &node, "/api/mesh/dm/send", Some(&deposits));
    let commits_after_deposit = Commits::read(client, &node).await;
    let pending = metric_sum(client, &node.url, "dm_pending_envelopes").await;
    if pending < 8.0 * mailboxes as f64 {
        eprintln!(
            "[wrk] only {pending:.0} pending envelopes in {mailboxes} mailboxes: polls see fewer than 8 each"
        );
    }
    let commits_before_poll = Commits::read(client, &node).await;
    let poll = run_wrk(args, &node, "/api/mesh/dm/poll", Some(&polls));
    let commits_after_poll = Commits::read(client, &node).await;
    // Acks of envelopes the node took: wrk sends bodies in order, so the first `requests`
    // minus the ones still in flight at its end were answered.
    let acked = (deposit.requests as usize).saturating_sub(args.wrk_connections);
    eprintln!("[wrk] signing {acked} acks ...");
    let acks = dir.join("acks.jsonl");
    let ack_ts = now_unix();
    write_bodies(&acks, acked, |i| {
        json(&AckObject::sign(
            &owners[i % mailboxes],
            ack_ts,
            vec![MsgId::parse("msg_id", &deposit_id(i)).unwrap_or_else(|_| fail("bad id"))],
        ))
    });
    let commits_before_ack = Commits::read(client, &node).await;
    let ack = run_wrk(args, &node, "/api/mesh/dm/ack", Some(&acks));
    let commits_after_ack = Commits::read(client, &node).await;
    let health_after = run_wrk(args, &node, "/health", None);
    let health = Figures {
        rps: (health_before.rps + health_after.rps) / 2.0,
        cpu_us_per_request: (health_before.cpu_us_per_request + health_after.cpu_us_per_request)
            / 2.0,
        ..health_after
    };
    println!(
        "wrk: 1 thread, {} connections, {} s per run, {} ciphertext bytes, fsync, {mailboxes} mailboxes{}",
        args.wrk_connections,
        args.wrk_seconds,
        args.ciphertext_bytes,
        if args.wrk_perf.is_some() {
            " (PROFILED with perf: CPU figures are inflated)"
        } else {
            ""
        }
    );
    println!(
        "| request | rps | share of GET /health | node CPU µs/request | p50 ms | p99 ms | |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    print_row("GET /health (mean of before and after)", &health, &health);
    print_row("deposit", &deposit, &health);
    print_row("poll (limit 8)", &poll, &health);
    print_row("ack (1 id)", &ack, &health);
    println!(
        "\nstore commits during each run (write and fsync; every request of a batch waits for its commit):\n| run | commits | ops per commit | mean ms | over 10 ms | over 50 ms |\n| --- | --- | --- | --- | --- | --- |"
    );
    Commits::print_between(&commits_before, &commits_after_deposit, "deposit");
    Commits::print_between(&commits_before_poll, &commits_after_poll, "poll");
    Commits::print_between(&commits_before_ack, &commits_after_ack, "ack");
    drop(node);
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_series_of_one_scrape() {
        let text = "# HELP dm_x a\ndm_x{peer=\"a\"} 2\ndm_x{peer=\"b\"} 3\ndm_xy 100\n\
            dm_h_bucket{le=\"0.01\"} 7\ndm_h_bucket{le=\"0.05\"} 9\ndm_h_count 10\n";
        assert_eq!(sum_in(text, "dm_x"), Some(5.0), "labels summed, dm_xy not");
        assert_eq!(sum_in(text, r#"dm_h_bucket{le="0.01"}"#), Some(7.0));
        assert_eq!(sum_in(text, "dm_h_count"), Some(10.0));
        assert_eq!(sum_in(text, "dm_missing"), None, "missing is not 0");
    }

    #[test]
    fn reads_wrk_output() {
        let output = "Running 10s test @ http://127.0.0.1:1\n  1 threads and 64 connections\n  Latency Distribution\n     50%  520.00us\n     75%    1.00ms\n     90%    2.00ms\n     99%   12.34ms\n  123456 requests in 10.00s, 20.00MB read\n  Socket errors: connect 0, read 2, write 0, timeout 1\n  Non-2xx or 3xx responses: 7\nRequests/sec:  12345.60\nTransfer/sec:      2.00MB\nbodies wrapped: 1\n";
        assert_eq!(
            parse_wrk(output),
            Some((123456.0, 12345.6, 0.52, 12.34, 7, 3, 1))
        );
    }
}
