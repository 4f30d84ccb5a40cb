//! SPEC §6.1 and §6.3 durability ("durable on this node before the reply", acks applied
//! durably), §4 caps across restarts, §8 `MESH_DM_PERSIST=memory`, and group commit: real
//! nodes killed with SIGKILL mid-traffic, stopped with SIGTERM, and restarted on the same data.

mod common;

use common::{Identity, Node, NodeConfig, assert_deposit, assert_error, wait_for};
use dmrelay::protocol::Envelope;
use serde_json::Value;
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

/// redb's file (`MESH_DM_STORE_ENGINE=redb`, or a data dir that already held it).
const DATABASE_FILE: &str = "dmrelay.redb";
/// fjall's directory (the default store of a new data dir).
const FJALL_DIR: &str = "fjall";

async fn start(config: NodeConfig) -> Node {
    let node = Node::start(config);
    node.ready().await;
    node
}

/// One planned deposit: (owner index, sender index, envelope).
type Job = (usize, usize, Envelope);

/// What happened to each deposit: `Some(reply)` or `None` for a transport error.
type Outcomes = Rc<RefCell<Vec<(usize, usize, String, Option<(u16, Value)>)>>>;

/// Runs `jobs` through `workers` concurrent clients until the queue is empty or `stop` is set.
fn spawn_depositors(
    url: &str,
    jobs: Vec<Job>,
    workers: usize,
    stop: Rc<Cell<bool>>,
    outcomes: Outcomes,
) -> Vec<actix_rt::task::JoinHandle<()>> {
    let queue = Rc::new(RefCell::new(VecDeque::from(jobs)));
    (0..workers)
        .map(|_| {
            let (url, queue, stop, outcomes) = (
                url.to_string(),
                queue.clone(),
                stop.clone(),
                outcomes.clone(),
            );
            actix_rt::spawn(async move {
                loop {
                    if stop.get() {
                        return;
                    }
                    let Some((owner, sender, envelope)) = queue.borrow_mut().pop_front() else {
                        return;
                    };
                    let body = serde_json::to_vec(&envelope).unwrap();
                    let reply = common::try_post_raw(&url, "/api/mesh/dm/send", body)
                        .await
                        .ok();
                    let id = envelope.msg_id.as_str().to_string();
                    outcomes.borrow_mut().push((owner, sender, id, reply));
                }
            })
        })
        .collect()
}

#[actix_rt::test]
async fn every_accepted_deposit_survives_sigkill_and_caps_still_hold() {
    let mut node = start(NodeConfig::default()).await;
    let owners: Vec<Identity> = (0..10).map(|_| Identity::new()).collect();
    let senders: Vec<Identity> = (0..10).map(|_| Identity::new()).collect();
    // 10 mailboxes x 10 senders x 2 messages = 200 deposits, each pair exactly at its cap of 2.
    let mut jobs = Vec::new();
    for k in 0..2 {
        for (o, owner) in owners.iter().enumerate() {
            for (s, sender) in senders.iter().enumerate() {
                jobs.push((o, s, sender.envelope_to(owner, &format!("o{o}-s{s}-k{k}"))));
            }
        }
    }
    let sent: HashMap<String, (usize, usize)> = jobs
        .iter()
        .map(|(o, s, e)| (e.msg_id.as_str().to_string(), (*o, *s)))
        .collect();

    let stop = Rc::new(Cell::new(false));
    let outcomes: Outcomes = Rc::new(RefCell::new(Vec::new()));
    let workers = spawn_depositors(&node.url, jobs, 40, stop.clone(), outcomes.clone());
    // Kill once some deposits have been answered, while the others are in flight.
    let seen = outcomes.clone();
    wait_for(Duration::from_secs(15), || {
        let seen = seen.clone();
        async move { seen.borrow().len() >= 50 }
    })
    .await;
    stop.set(true);
    node.kill9();
    let answered_before_kill = outcomes.borrow().len();
    node.restart();
    node.ready().await;
    for worker in workers {
        worker.await.unwrap();
    }

    let outcomes = outcomes.take();
    let mut accepted = Vec::new();
    let mut lost = 0;
    for (_, _, id, reply) in outcomes.iter() {
        match reply {
            Some((200, body)) if body["status"] == "accepted" => accepted.push(id.clone()),
            Some((status, body)) => panic!("unexpected reply to {id}: {status} {body}"),
            None => lost += 1,
        }
    }
    eprintln!(
        "{answered_before_kill} answered before the kill, {} accepted in all, {lost} cut off, {} never sent",
        accepted.len(),
        200 - outcomes.len()
    );
    assert!(
        accepted.len() >= 50,
        "the kill came after at least 50 accepted deposits"
    );

    // Every accepted deposit is there; nothing else is; no pair holds more than its cap.
    let mut pending: HashMap<(usize, usize), Vec<String>> = HashMap::new();
    let mut present = Vec::new();
    for (o, owner) in owners.iter().enumerate() {
        for id in node.pending_ids(owner).await {
            let pair = sent
                .get(&id)
                .unwrap_or_else(|| panic!("{id} was never sent"));
            assert_eq!(pair.0, o, "{id} is in the wrong mailbox");
            pending.entry(*pair).or_default().push(id.clone());
            present.push(id);
        }
    }
    for id in &accepted {
        assert!(
            present.contains(id),
            "{id} got 200 accepted but is gone after kill -9"
        );
    }
    // The caps hold after the restart: each pair can take exactly 2 - pending more.
    for (o, owner) in owners.iter().enumerate() {
        for (s, sender) in senders.iter().enumerate() {
            let held = pending.get(&(o, s)).map_or(0, Vec::len);
            assert!(held <= 2, "pair ({o}, {s}) holds {held}");
            for extra in 0..(2 - held) {
                let id = format!("extra-o{o}-s{s}-{extra}");
                assert_deposit(
                    &id,
                    &node.send(&sender.envelope_to(owner, &id)).await,
                    &id,
                    "accepted",
                );
            }
            let got = node.send(&sender.envelope_to(owner, "over-cap")).await;
            assert_error(
                &format!("pair ({o}, {s}) over its cap"),
                &got,
                429,
                "cap_violation",
            );
            assert_eq!(got.1["pending"], 2, "{}", got.1);
        }
    }
}

#[actix_rt::test]
async fn acks_and_their_tombstones_survive_sigkill() {
    let mut node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let m1 = alice.envelope_to(&bob, "m1");
    assert_deposit("m1", &node.send(&m1).await, "m1", "accepted");
    assert_deposit(
        "m2",
        &node.send(&alice.envelope_to(&bob, "m2")).await,
        "m2",
        "accepted",
    );
    let (status, body) = node.ack(&bob, &["m1", "early"]).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");

    node.kill9();
    node.restart();
    node.ready().await;

    assert_eq!(
        node.pending_ids(&bob).await,
        ["m2"],
        "the acked message stays gone"
    );
    assert_deposit("m1 again", &node.send(&m1).await, "m1", "acked");
    let early = alice.envelope_to(&bob, "early");
    assert_deposit("early", &node.send(&early).await, "early", "acked");
    // The quota freed by the ack is still free, and no more than that.
    assert_deposit(
        "m3",
        &node.send(&alice.envelope_to(&bob, "m3")).await,
        "m3",
        "accepted",
    );
    assert_error(
        "m4",
        &node.send(&alice.envelope_to(&bob, "m4")).await,
        429,
        "cap_violation",
    );
}

#[actix_rt::test]
async fn envelopes_that_expire_around_a_restart_are_not_delivered_and_free_their_quota() {
    let mut node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let now = dmrelay::protocol::now_unix();
    for id in ["short1", "short2"] {
        let envelope = alice.envelope_with(&bob, id, now, now + 2, b"x");
        assert_deposit(id, &node.send(&envelope).await, id, "accepted");
    }
    node.kill9();
    node.restart();
    node.ready().await;
    let next = alice.envelope_to(&bob, "next");
    // Right after the restart they still count (when the restart was quick enough to tell)...
    if dmrelay::protocol::now_unix() < now + 1 {
        assert_error(
            "before expiry",
            &node.send(&next).await,
            429,
            "cap_violation",
        );
    }
    // ...and once expired they are gone and their quota is free.
    let (node_ref, next_ref) = (&node, &next);
    wait_for(Duration::from_secs(8), || async move {
        let (status, body) = node_ref.send(next_ref).await;
        match (status, body["status"].as_str(), body["error"].as_str()) {
            (200, Some("accepted"), _) => true,
            (429, _, Some("cap_violation")) => false,
            _ => panic!("unexpected {status} {body}"),
        }
    })
    .await;
    assert_eq!(node.pending_ids(&bob).await, ["next"]);
}

#[actix_rt::test]
async fn sigterm_exits_cleanly_after_finishing_in_flight_deposits() {
    let mut node = start(NodeConfig::default()).await;
    let bob = Identity::new();
    let senders: Vec<Identity> = (0..30).map(|_| Identity::new()).collect();
    let first = senders[0].envelope_to(&bob, "before");
    assert_deposit("before", &node.send(&first).await, "before", "accepted");
    let jobs: Vec<Job> = senders[1..]
        .iter()
        .enumerate()
        .map(|(i, s)| (0, i, s.envelope_to(&bob, &format!("t{i:02}"))))
        .collect();
    let stop = Rc::new(Cell::new(false));
    let outcomes: Outcomes = Rc::new(RefCell::new(Vec::new()));
    let workers = spawn_depositors(&node.url, jobs, 10, stop.clone(), outcomes.clone());
    let seen = outcomes.clone();
    wait_for(Duration::from_secs(15), || {
        let seen = seen.clone();
        async move { !seen.borrow().is_empty() }
    })
    .await;
    stop.set(true);
    assert!(node.terminate(), "SIGTERM exits with status 0");
    node.restart();
    node.ready().await;
    for worker in workers {
        worker.await.unwrap();
    }

    let present = node.pending_ids(&bob).await;
    assert!(present.contains(&"before".to_string()));
    for (_, _, id, reply) in outcomes.take().iter() {
        match reply {
            Some((200, body)) if body["status"] == "accepted" => {
                assert!(
                    present.contains(id),
                    "{id} got 200 accepted but is gone after SIGTERM"
                )
            }
            Some((status, body)) => panic!("unexpected reply to {id}: {status} {body}"),
            None => {}
        }
    }
    // And a second clean stop and start keeps everything.
    assert!(node.terminate());
    node.restart();
    node.ready().await;
    assert_eq!(node.pending_ids(&bob).await, present);
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[actix_rt::test]
async fn memory_mode_serves_without_writing_a_database_and_forgets_on_restart() {
    let mut node = start(NodeConfig::default().env("MESH_DM_PERSIST", "memory")).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    let now = dmrelay::protocol::now_unix();
    let secret = b"MEMORY-ONLY-CIPHERTEXT-MARKER";
    let m1 = alice.envelope_with(&bob, "m1", now, now + 3600, secret);
    let m2 = alice.envelope_to(&bob, "m2");
    assert_deposit("m1", &node.send(&m1).await, "m1", "accepted");
    assert_deposit("m2", &node.send(&m2).await, "m2", "accepted");
    assert_deposit("m1 again", &node.send(&m1).await, "m1", "duplicate");
    assert_error(
        "m3",
        &node.send(&alice.envelope_to(&bob, "m3")).await,
        429,
        "cap_violation",
    );
    assert_eq!(node.pending_ids(&bob).await, ["m1", "m2"]);
    let (status, body) = node.ack(&bob, &["m2"]).await;
    assert_eq!((status, body["removed"].as_u64()), (200, Some(1)), "{body}");
    assert_deposit("m2 again", &node.send(&m2).await, "m2", "acked");

    let files = files_under(&node.data_dir);
    for store in [DATABASE_FILE, FJALL_DIR] {
        assert!(
            !node.data_dir.join(store).exists(),
            "memory mode wrote {store}: {files:?}"
        );
    }
    use base64::Engine as _;
    let marker_b64 = base64::engine::general_purpose::STANDARD.encode(secret);
    for file in &files {
        let content = std::fs::read(file).unwrap();
        let text = String::from_utf8_lossy(&content);
        assert!(
            !text.contains("MEMORY-ONLY") && !text.contains(&marker_b64),
            "ciphertext written to {}",
            file.display()
        );
    }

    // A restart (kill -9 or SIGTERM) starts from nothing.
    node.kill9();
    node.restart();
    node.ready().await;
    assert!(node.pending_ids(&bob).await.is_empty());
    assert_deposit("m2 after restart", &node.send(&m2).await, "m2", "accepted");
    assert!(node.terminate());
    node.restart();
    node.ready().await;
    assert!(node.pending_ids(&bob).await.is_empty());
    assert!(!node.data_dir.join(DATABASE_FILE).exists());
    assert!(!node.data_dir.join(FJALL_DIR).exists());
}

#[actix_rt::test]
async fn fsync_mode_writes_its_database_in_the_data_dir() {
    let node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_deposit(
        "m1",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    assert!(node.data_dir.join(FJALL_DIR).is_dir(), "fjall by default");
    assert!(!node.data_dir.join(DATABASE_FILE).exists());
}

/// A data dir written by a release before fjall (redb) is kept on redb: upgrading never starts
/// an empty store beside a full one, and asking for the other engine stops with one line.
#[actix_rt::test]
async fn a_data_dir_holding_a_redb_store_stays_on_redb() {
    let mut node = start(NodeConfig::default().env("MESH_DM_STORE_ENGINE", "redb")).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_deposit(
        "m1",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    assert!(node.data_dir.join(DATABASE_FILE).is_file());
    assert!(node.terminate());

    // The default (`auto`) finds the redb file and keeps it.
    node.set_env("MESH_DM_STORE_ENGINE", "auto");
    node.restart();
    node.ready().await;
    assert_eq!(node.pending_ids(&bob).await, ["m1"]);
    assert!(!node.data_dir.join(FJALL_DIR).exists(), "no second store");
    assert!(node.terminate());

    // Asking for fjall on that data dir is refused before anything is written.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_dmrelay"))
        .arg("serve")
        .env("MESH_DM_DATA_DIR", &node.data_dir)
        .env("MESH_DM_STORE_ENGINE", "fjall")
        .env("MESH_DM_LISTEN", "127.0.0.1:0")
        .current_dir(&node.data_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("holds a redb store") && stderr.contains("MESH_DM_STORE_ENGINE"),
        "{stderr}"
    );
    assert!(!node.data_dir.join(FJALL_DIR).exists());
}

#[actix_rt::test]
async fn group_commit_puts_concurrent_deposits_in_shared_commits() {
    let node = start(NodeConfig::default()).await;
    let ops_before = node.metric("dm_store_ops_total").await;
    let commits_before = node.metric("dm_store_commits_total").await;
    let owners: Vec<Identity> = (0..50).map(|_| Identity::new()).collect();
    let sender = Identity::new();
    let bodies: Vec<Vec<u8>> = owners
        .iter()
        .flat_map(|owner| {
            ["a", "b"].map(|id| serde_json::to_vec(&sender.envelope_to(owner, id)).unwrap())
        })
        .collect();
    assert_eq!(bodies.len(), 100);
    let tasks: Vec<_> = bodies
        .into_iter()
        .map(|body| {
            let url = node.url.clone();
            actix_rt::spawn(async move { common::post_raw(&url, "/api/mesh/dm/send", body).await })
        })
        .collect();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(
            (status, body["status"].as_str()),
            (200, Some("accepted")),
            "{body}"
        );
    }
    let ops = node.metric("dm_store_ops_total").await - ops_before;
    let commits = node.metric("dm_store_commits_total").await - commits_before;
    eprintln!("{ops} store ops in {commits} commits");
    // Every commit is timed (the node made no other since it started: nothing failed, no
    // peers, no polls), and took some time (a write and an fsync).
    let all_commits = node.metric("dm_store_commits_total").await;
    assert_eq!(
        node.metric("dm_store_commit_seconds_count").await,
        all_commits,
        "commits timed by dm_store_commit_seconds"
    );
    assert!(node.metric("dm_store_commit_seconds_sum").await > 0.0);
    assert!(ops >= 100.0, "every accepted deposit is a store op: {ops}");
    assert!(commits >= 1.0);
    assert!(
        ops / commits > 1.0,
        "100 concurrent deposits took {commits} commits for {ops} ops: no grouping"
    );
}

#[actix_rt::test]
async fn a_duplicate_reply_means_the_envelope_is_durable() {
    // A client that retries a deposit (say after a timeout) and gets `200 duplicate` must be able
    // to rely on the envelope being stored, exactly as after `200 accepted` (SPEC §6.1, §4 rule
    // 2). Keep the writer busy with other deposits so the original's commit is still queued when
    // the retry is answered, and kill -9 the node the moment the `duplicate` arrives. Every round
    // must see one.
    for round in 0..5 {
        let mut node = start(NodeConfig::default()).await;
        let pid = node.pid().unwrap();
        let (alice, bob) = (Identity::new(), Identity::new());
        let fillers: Vec<_> = (0..150)
            .map(|_| {
                let body = serde_json::to_vec(&alice.envelope_to(&Identity::new(), "f")).unwrap();
                let url = node.url.clone();
                actix_rt::spawn(async move {
                    let _ = common::try_post_raw(&url, "/api/mesh/dm/send", body).await;
                })
            })
            .collect();
        let target = serde_json::to_vec(&alice.envelope_to(&bob, "target")).unwrap();
        // The node is killed the moment the first `duplicate` arrives, whether or not the
        // `accepted` of the other copy has been answered yet.
        let duplicate_reply: Rc<RefCell<Option<Value>>> = Rc::new(RefCell::new(None));
        let replies: Rc<RefCell<Vec<String>>> = Rc::new(RefCell::new(Vec::new()));
        let copies: Vec<_> = (0..2)
            .map(|_| {
                let (url, body) = (node.url.clone(), target.clone());
                let (duplicate_reply, replies) = (duplicate_reply.clone(), replies.clone());
                actix_rt::spawn(async move {
                    // A copy refused for overload (503) is sent again, as a client would.
                    for _ in 0..200 {
                        let reply =
                            common::try_post_raw(&url, "/api/mesh/dm/send", body.clone()).await;
                        replies.borrow_mut().push(format!("{reply:?}"));
                        match reply {
                            Ok((200, body)) => {
                                if body["status"] == "duplicate"
                                    && duplicate_reply.borrow().is_none()
                                {
                                    // SAFETY: plain kill(2) on our own child's pid.
                                    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                                    *duplicate_reply.borrow_mut() = Some(body);
                                }
                                return;
                            }
                            Ok((503, _)) => {
                                actix_rt::time::sleep(Duration::from_millis(10)).await;
                            }
                            // Anything else, or the node killed under the other copy.
                            _ => return,
                        }
                    }
                })
            })
            .collect();
        for copy in copies {
            copy.await.unwrap();
        }
        node.kill9();
        node.restart();
        node.ready().await;
        for filler in fillers {
            filler.await.unwrap();
        }
        let reply = duplicate_reply.take().unwrap_or_else(|| {
            panic!(
                "round {round}: no copy was answered `duplicate`; replies: {:?}",
                replies.borrow()
            )
        });
        let present = node.pending_ids(&bob).await;
        assert_eq!(
            present,
            ["target"],
            "round {round}: the node answered {reply} and lost the envelope to kill -9"
        );
    }
}

#[actix_rt::test]
async fn a_poll_nonce_stays_spent_across_a_restart() {
    // SPEC §6.2: a nonce already used for this mailbox within the window is a `replay`. A
    // captured poll must not become replayable just because the node restarted meanwhile.
    let mut node = start(NodeConfig::default()).await;
    let (alice, bob) = (Identity::new(), Identity::new());
    assert_deposit(
        "m1",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    let poll = bob.poll(8);
    assert_eq!(node.post("/api/mesh/dm/poll", &poll).await.0, 200);
    assert_error(
        "replay",
        &node.post("/api/mesh/dm/poll", &poll).await,
        401,
        "replay",
    );
    for stop in ["SIGTERM", "SIGKILL"] {
        if stop == "SIGTERM" {
            assert!(node.terminate());
        } else {
            node.kill9();
        }
        node.restart();
        node.ready().await;
        let got = node.post("/api/mesh/dm/poll", &poll).await;
        assert_error(
            &format!("replay after {stop} and restart"),
            &got,
            401,
            "replay",
        );
    }
}

#[actix_rt::test]
async fn every_mailbox_rule_holds_the_same_after_a_restart() {
    let mut node = start(NodeConfig::default().env("MESH_DM_MAILBOX_LIMIT", 3)).await;
    let (alice, carol, dave, bob) = (
        Identity::new(),
        Identity::new(),
        Identity::new(),
        Identity::new(),
    );
    let now = dmrelay::protocol::now_unix();
    let extras = {
        let mut e = serde_json::to_value(alice.envelope_to(&bob, "a1")).unwrap();
        e["x_unknown"] = Value::from("NOT-STORED");
        e
    };
    assert_deposit(
        "a1",
        &node.post("/api/mesh/dm/send", &extras).await,
        "a1",
        "accepted",
    );
    let a2 = alice.envelope_with(&bob, "a2", now - 5, now + 3600, b"a2");
    assert_deposit("a2", &node.send(&a2).await, "a2", "accepted");
    assert_deposit(
        "c1",
        &node.send(&carol.envelope_to(&bob, "c1")).await,
        "c1",
        "accepted",
    );
    assert_eq!(node.ack(&bob, &["c1", "never"]).await.0, 200);
    let before = node.pending_messages(&bob).await;

    node.kill9();
    node.restart();
    node.ready().await;

    let after = node.pending_messages(&bob).await;
    assert_eq!(after, before, "the same envelopes, in the same order");
    assert!(
        !serde_json::to_string(&after)
            .unwrap()
            .contains("NOT-STORED"),
        "unknown fields are not stored"
    );
    assert_deposit(
        "rule 1",
        &node.send(&carol.envelope_to(&bob, "c1")).await,
        "c1",
        "acked",
    );
    assert_deposit(
        "rule 1, never seen",
        &node.send(&dave.envelope_to(&bob, "never")).await,
        "never",
        "acked",
    );
    assert_deposit("rule 2", &node.send(&a2).await, "a2", "duplicate");
    let twin = alice.envelope_with(&bob, "a2", now, now + 3600, b"twin");
    assert_error("rule 2 conflict", &node.send(&twin).await, 409, "conflict");
    assert_error(
        "rule 4",
        &node.send(&alice.envelope_to(&bob, "a3")).await,
        429,
        "cap_violation",
    );
    assert_deposit(
        "c2",
        &node.send(&carol.envelope_to(&bob, "c2")).await,
        "c2",
        "accepted",
    );
    assert_error(
        "rule 3",
        &node.send(&dave.envelope_to(&bob, "d1")).await,
        429,
        "mailbox_full",
    );
}

/// Whether opening the node's database file needs redb's repair (a walk of the whole file,
/// seconds per GiB at start-up).
fn needs_repair(node: &Node) -> bool {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let repaired = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&repaired);
    let db = redb::Database::builder()
        .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
        .open(node.data_dir.join(DATABASE_FILE))
        .unwrap();
    drop(db);
    repaired.load(Ordering::SeqCst)
}

#[actix_rt::test]
async fn sigterm_closes_the_store_so_the_next_start_needs_no_repair() {
    let (alice, bob) = (Identity::new(), Identity::new());
    let mut node = start(NodeConfig::default().env("MESH_DM_STORE_ENGINE", "redb")).await;
    assert_deposit(
        "m1",
        &node.send(&alice.envelope_to(&bob, "m1")).await,
        "m1",
        "accepted",
    );
    assert!(node.terminate(), "the node did not stop on SIGTERM");
    assert!(!needs_repair(&node), "a SIGTERM'd node left its store open");

    // The check sees an unclean file: after kill -9 the same open repairs it.
    node.restart();
    node.ready().await;
    assert_deposit(
        "m2",
        &node.send(&alice.envelope_to(&bob, "m2")).await,
        "m2",
        "accepted",
    );
    node.kill9();
    assert!(
        needs_repair(&node),
        "kill -9 should leave a file that needs repair"
    );
}
