//! `dmrelay demo` as a newcomer runs it: one command, no set-up, exit 0 in under 30 s, the story's
//! key lines on stdout, and no node process or temp dir left behind (also when interrupted).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_dmrelay");

/// The node pids the demo prints in its introduction (`… pid 1234 …`).
fn node_pids(output: &str) -> Vec<u32> {
    output
        .lines()
        .filter(|line| line.trim_start().starts_with("node "))
        .filter_map(|line| {
            let rest = line.split_once(" pid ")?.1;
            rest.split_whitespace().next()?.parse().ok()
        })
        .collect()
}

/// Waits until `/proc/<pid>` is gone (the process exited and was reaped).
fn assert_gone(pids: &[u32], within: Duration) {
    let deadline = Instant::now() + within;
    for pid in pids {
        let proc_dir = format!("/proc/{pid}");
        while std::path::Path::new(&proc_dir).exists() {
            assert!(
                Instant::now() < deadline,
                "node process {pid} is still running after the demo exited"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn line_with<'a>(output: &'a str, needle: &str) -> &'a str {
    output
        .lines()
        .find(|line| line.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{output}"))
}

/// The final table's rows: node number → (pending, deposits, replicas, refused, acks).
fn table(output: &str) -> Vec<(u32, [u64; 5])> {
    let mut lines = output
        .lines()
        .skip_while(|line| !line.contains("node   pending"));
    assert!(lines.next().is_some(), "no final table in:\n{output}");
    lines
        .map_while(|line| {
            let cells: Vec<u64> = line
                .split_whitespace()
                .map(|cell| cell.parse().ok())
                .collect::<Option<_>>()?;
            (cells.len() == 6).then(|| {
                (
                    cells[0] as u32,
                    [cells[1], cells[2], cells[3], cells[4], cells[5]],
                )
            })
        })
        .collect()
}

#[test]
fn demo_tells_the_whole_story_in_under_30_s_and_leaves_nothing_running() {
    let started = Instant::now();
    let output = Command::new(BIN)
        .arg("demo")
        // Not a terminal (piped), and NO_COLOR unset: plain text either way.
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let elapsed = started.elapsed();
    let stdout = String::from_utf8(output.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(elapsed < Duration::from_secs(30), "took {elapsed:?}");
    assert!(
        !stdout.contains('\x1b'),
        "colour codes on a pipe:\n{stdout}"
    );

    // Step 1: deposited on node 1, replicated to nodes 2 and 3 with a measured delay (§6.1, §7.4).
    assert!(
        stdout.matches("accepted on node 1:").count() >= 3,
        "two messages and the last one accepted on node 1:\n{stdout}"
    );
    assert_eq!(
        stdout.matches("seen on nodes 2 and 3 after ").count(),
        2,
        "{stdout}"
    );
    // Step 2: the third unread message is over the per-sender cap (§4 rule 4, §6.1).
    let refused = line_with(&stdout, "refused by node 1:");
    assert!(refused.contains("429 cap_violation"), "{refused}");
    assert!(refused.contains("(pending 2, limit 2)"), "{refused}");
    assert!(line_with(&stdout, "the node says:").contains("unread"));
    // Step 3: the cap is enforced on replicas a hostile peer pushes (§4, §7.1).
    assert!(
        line_with(&stdout, "node 2 answered, per envelope:")
            .ends_with("accepted, accepted, rejected (cap_violation), rejected (cap_violation)"),
        "{stdout}"
    );
    line_with(&stdout, "Mallory's extras rejected");
    // Step 4: Bob's long poll on node 3; every box opened (Appendix A).
    assert!(line_with(&stdout, "answered after").contains("with 4 messages"));
    for (from, text) in [
        ("from Alice", "\"Hi Bob! Lunch on Friday?\""),
        ("from Alice", "\"I'll book the place by the river.\""),
        ("from Mallory", "\"You won a prize!\""),
        ("from Mallory", "\"Claim it now!\""),
        // Step 5: Mallory's held-back extras, let in once Bob read her first two (§7.4).
        ("from Mallory", "\"Last chance!!\""),
        ("from Mallory", "\"Really the last chance!!!\""),
        // Step 5: Alice's new message, which woke Bob's waiting poll (§6.2 long poll).
        ("from Alice", "\"Great, see you on Friday!\""),
    ] {
        assert!(
            stdout
                .lines()
                .any(|line| line.contains(from) && line.ends_with(text)),
            "Bob did not read {text} {from}:\n{stdout}"
        );
    }
    assert!(line_with(&stdout, "Bob read all 4").contains("(removed 4)"));
    // Step 5: the ack reaches nodes 1 and 2, and frees Alice's quota (§4, §6.3).
    line_with(&stdout, "ack reached nodes 1 and 2 after ");
    line_with(&stdout, "Alice's quota is free again");
    assert!(line_with(&stdout, "Bob read and acknowledged them too").contains("(removed 2)"));
    // The long poll was parked on node 3 and woken by the replica of Alice's new message.
    let woken = stdout
        .lines()
        .skip_while(|line| !line.contains("Bob's waiting poll on node 3 answered "))
        .nth(1)
        .unwrap_or_else(|| panic!("Bob's waiting poll did not answer:\n{stdout}"));
    assert!(
        woken.contains("from Alice") && woken.ends_with("\"Great, see you on Friday!\""),
        "{woken}"
    );
    // Step 6: the table, from /metrics.
    let rows = table(&stdout);
    assert_eq!(
        rows.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        [1, 2, 3],
        "{stdout}"
    );
    for (node, [pending, _, _, _, acks]) in &rows {
        // Alice's last message, which Bob has not acknowledged.
        assert_eq!(*pending, 1, "node {node} pending:\n{stdout}");
        assert!(*acks >= 1, "node {node} acks:\n{stdout}");
    }
    let [_, deposits, _, refused, _] = rows[0].1;
    assert_eq!((deposits, refused >= 1), (3, true), "node 1:\n{stdout}");
    let [_, deposits, _, refused, _] = rows[1].1;
    assert_eq!((deposits, refused >= 2), (0, true), "node 2:\n{stdout}");

    // Clean-up: every node process is gone, and the temp dir too.
    let pids = node_pids(&stdout);
    assert_eq!(pids.len(), 3, "three node pids in:\n{stdout}");
    assert_gone(&pids, Duration::from_secs(5));
    let stopped = line_with(&stdout, "Stopped the nodes");
    let dir = stopped
        .split_once("removed ")
        .map(|(_, rest)| rest.trim_end().trim_end_matches('.'))
        .unwrap();
    assert!(dir.contains("dmrelay-demo-"), "{stopped}");
    assert!(!std::path::Path::new(dir).exists(), "{dir} left behind");
}

#[test]
fn an_interrupted_demo_leaves_no_node_running() {
    // The whole story takes about a second, so on a quick machine SIGINT may land after the
    // demo already finished: such an attempt proves nothing and is run again (at most 5 times).
    for attempt in 1..=5 {
        let mut demo = Command::new(BIN)
            .arg("demo")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Read stdout on a thread to the end, so that the demo never writes into a closed pipe.
        let stdout = demo.stdout.take().unwrap();
        let (lines_tx, lines_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines_tx.send(line);
            }
        });
        let mut pids = Vec::new();
        let mut seen = String::new();
        while pids.len() < 3 {
            let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(20)) else {
                break;
            };
            seen.push_str(&line);
            seen.push('\n');
            pids = node_pids(&seen);
        }
        assert_eq!(pids.len(), 3, "three node pids in:\n{seen}");
        // Ctrl-C delivered to the demo alone (not to its process group): the demo itself must
        // stop its nodes.
        unsafe {
            libc::kill(demo.id() as i32, libc::SIGINT);
        }
        let status = demo.wait().unwrap();
        reader.join().unwrap();
        seen.extend(lines_rx.try_iter().map(|line| line + "\n"));
        if status.success() && seen.contains("6. What each node counted") {
            eprintln!("attempt {attempt}: the demo had finished before SIGINT landed; again");
            assert_gone(&pids, Duration::from_secs(10));
            continue;
        }
        assert!(
            !status.success(),
            "an interrupted demo reports failure:\n{seen}"
        );
        assert_gone(&pids, Duration::from_secs(10));
        return;
    }
    panic!("in 5 attempts the demo always finished before SIGINT landed");
}
