//! `--runs million`: the memory of a node holding `--million-envelopes` pending envelopes
//! (1,000,000 by default) of `--ciphertext-bytes` in `--million-mailboxes` mailboxes (100,000),
//! and how fast it restarts with them.
//!
//! 1. Deposit them all (fsync node, `MESH_DM_MAILBOX_IDLE_S` long enough that every mailbox stays
//!    loaded), signed in slices on every core; RSS with every mailbox in use, bytes per envelope
//!    over the idle level measured before.
//! 2. SIGTERM, then start the node again on the same store with an idle time of
//!    `--million-idle-s`: time from the start to a 200 from `/health`, and the RSS then, before
//!    any request.
//! 3. Poll every mailbox once (each is loaded again; the count of loaded mailboxes is printed, as
//!    the first ones may already be evicted if the pass took longer than the idle time): RSS.
//! 4. Wait until every mailbox was evicted as idle: RSS idle.

use crate::{
    Args, NodeProcess, fail, free_port, key, metric_sum, rss_bytes, sign_parallel, spawn_node,
    start_node, wait_ready,
};
use dmrelay::protocol::{Envelope, MailboxKey, MsgId, PollRequest, now_unix};
use ed25519_dalek::SigningKey;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Envelopes signed and sent per slice (bounds the bench's own memory).
const SLICE: usize = 50_000;

/// POSTs every body to `path` with `concurrency` in flight; returns the count of non-200s.
async fn post_all(
    client: &awc::Client,
    url: &str,
    path: &str,
    bodies: Vec<Vec<u8>>,
    concurrency: usize,
) -> usize {
    let queue = Rc::new(RefCell::new(VecDeque::from(bodies)));
    let failures = Rc::new(RefCell::new(0usize));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (queue, failures, client) =
                (Rc::clone(&queue), Rc::clone(&failures), client.clone());
            let target = format!("{url}{path}");
            actix_rt::spawn(async move {
                loop {
                    let next = queue.borrow_mut().pop_front();
                    let Some(body) = next else { break };
                    let ok = client
                        .post(&target)
                        .insert_header(("Content-Type", "application/json"))
                        .send_body(body)
                        .await
                        .is_ok_and(|r| r.status().as_u16() == 200);
                    if !ok {
                        *failures.borrow_mut() += 1;
                    }
                }
            })
        })
        .collect();
    for worker in workers {
        let _ = worker.await;
    }
    *failures.borrow()
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

fn terminate(node: &mut NodeProcess) {
    // SAFETY: kill(2) has no memory preconditions.
    unsafe {
        libc::kill(node.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = node.child.wait();
}

pub async fn run(args: &Args, client: &awc::Client, root: &Path) {
    let total = args.million_envelopes;
    let mailboxes = args.million_mailboxes.max(1);
    let data = root.join("million");
    let port = free_port();
    let loaded_env = vec![
        ("MESH_DM_MAILBOX_IDLE_S", "3600".to_string()),
        ("MESH_DM_MAILBOX_LIMIT", "100000".to_string()),
        ("MESH_DM_STORAGE_BUDGET_MB", "65536".to_string()),
    ];
    let node = start_node(&data, port, &loaded_env);
    wait_ready(client, &node).await;
    let idle_before = rss_bytes(node.child.id());
    let owners: Vec<SigningKey> = (0..mailboxes as u64).map(|m| key(m, 3)).collect();
    let payload = vec![0x5au8; args.ciphertext_bytes];
    let now = now_unix();
    let started = Instant::now();
    let mut failed = 0;
    for slice in (0..total).step_by(SLICE) {
        let bodies = sign_parallel(slice..(slice + SLICE).min(total), |i| {
            // One (sender, mailbox) pair per envelope: the per-sender cap never refuses.
            let sender = key((i / mailboxes) as u64, 4);
            let envelope = Envelope::sign(
                &sender,
                MailboxKey::of(&owners[i % mailboxes]),
                MsgId::parse("msg_id", &format!("M{i}")).unwrap_or_else(|_| fail("bad id")),
                now,
                now + 86_400,
                &payload,
            );
            serde_json::to_vec(&envelope).unwrap_or_else(|e| fail(&format!("encode: {e}")))
        });
        failed += post_all(client, &node.url, "/api/mesh/dm/send", bodies, 64).await;
        eprintln!(
            "[million] {} of {total} deposited ({failed} failed), {:.0} s",
            (slice + SLICE).min(total),
            started.elapsed().as_secs_f64()
        );
    }
    let pending = metric_sum(client, &node.url, "dm_pending_envelopes").await;
    let loaded = metric_sum(client, &node.url, "dm_mailboxes_loaded").await;
    let in_use = rss_bytes(node.child.id());
    let file_bytes = dmrelay::store::budget::files_bytes(&data);
    println!(
        "million: {pending:.0} pending envelopes of {} ciphertext bytes in {loaded:.0} loaded mailboxes ({failed} deposits failed), deposited in {:.0} s",
        args.ciphertext_bytes,
        started.elapsed().as_secs_f64()
    );
    println!(
        "million: RSS idle {:.0} MiB -> {:.0} MiB with all in use: {:.0} bytes per pending envelope; store files {:.0} MiB ({:.0} bytes per envelope)",
        mib(idle_before),
        mib(in_use),
        in_use.saturating_sub(idle_before) as f64 / pending.max(1.0),
        mib(file_bytes),
        file_bytes as f64 / pending.max(1.0)
    );

    let restart_env = vec![
        ("MESH_DM_MAILBOX_IDLE_S", args.million_idle_s.to_string()),
        ("MESH_DM_MAILBOX_LIMIT", "100000".to_string()),
        ("MESH_DM_STORAGE_BUDGET_MB", "65536".to_string()),
    ];
    // kill -9 right after the deposits: the store's journal is as full as it gets, and the
    // start replays it (fjall) or repairs the file (redb).
    drop(node);
    let restart = Instant::now();
    let mut node = spawn_node(&data, port, &restart_env);
    wait_ready(client, &node).await;
    let restart_s = restart.elapsed().as_secs_f64();
    let recovered = metric_sum(client, &node.url, "dm_pending_envelopes").await;
    println!(
        "million: restart after kill -9 to /health 200 in {restart_s:.2} s ({recovered:.0} pending envelopes); RSS then {:.0} MiB",
        mib(rss_bytes(node.child.id()))
    );
    terminate(&mut node);
    drop(node);
    let restart = Instant::now();
    let node = spawn_node(&data, port, &restart_env);
    wait_ready(client, &node).await;
    let restart_s = restart.elapsed().as_secs_f64();
    let after_restart = rss_bytes(node.child.id());
    println!(
        "million: restart after SIGTERM to /health 200 in {restart_s:.2} s; RSS then {:.0} MiB",
        mib(after_restart)
    );

    let poll_ts = now_unix();
    let polls = sign_parallel(0..mailboxes, |m| {
        serde_json::to_vec(
            &PollRequest::sign(&owners[m], poll_ts, format!("{m:032x}"), 1).to_json(),
        )
        .unwrap_or_else(|e| fail(&format!("encode: {e}")))
    });
    let poll_started = Instant::now();
    let poll_failed = post_all(client, &node.url, "/api/mesh/dm/poll", polls, 64).await;
    let reloaded = rss_bytes(node.child.id());
    let loaded = metric_sum(client, &node.url, "dm_mailboxes_loaded").await;
    println!(
        "million: every mailbox polled once after the restart in {:.1} s ({poll_failed} failed): {loaded:.0} mailboxes loaded, RSS {:.0} MiB",
        poll_started.elapsed().as_secs_f64(),
        mib(reloaded)
    );
    let deadline = Instant::now() + Duration::from_secs(args.million_idle_s + 120);
    while metric_sum(client, &node.url, "dm_mailboxes_loaded").await > 0.0 {
        if Instant::now() > deadline {
            fail("mailboxes were not evicted within their idle time and 120 s");
        }
        actix_rt::time::sleep(Duration::from_millis(500)).await;
    }
    // Freed memory goes back to the system after the eviction sweep.
    actix_rt::time::sleep(Duration::from_secs(2)).await;
    println!(
        "million: RSS once every mailbox was evicted as idle: {:.0} MiB",
        mib(rss_bytes(node.child.id()))
    );
    drop(node);
    let _ = std::fs::remove_dir_all(&data);
}
