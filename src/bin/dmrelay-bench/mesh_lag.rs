//! The mesh-lag run: a 3-node full mesh under paced load, with probes timed by long polls.
//!
//! Load: `mesh_rate` pre-signed deposits per second (1 KiB ciphertext by default), round-robin
//! over the three nodes, sent on a fixed schedule (a request due is sent even when earlier ones
//! have not been answered, so a slow node cannot slow the load down: it shows as lag). The
//! requests are written as prepared bytes to kept-alive connections ([`paced`]), so the bench
//! takes little of the cores it shares with the nodes.
//!
//! Probes: one every `probe_ms`, from a fresh sender to a fresh mailbox, deposited on the nodes in
//! turn. 100 ms before a probe is deposited, a long poll (`wait_s` 5) for its mailbox is sent to
//! each of the two other nodes. A node answers a waiting poll from the callback of the commit that
//! made the replica durable there, so `answer time - time of the origin's 200` is the lag from the
//! 200 to the other node's store (0 when the replica got there first). A probe not seen within
//! 5 s counts as missing.

use super::paced;
use super::{
    Args, NodeProcess, SECRET, cpu_seconds, deposited, fail, free_port, metric_sum,
    optional_metric_sum, start_node, wait_ready,
};
use dmrelay::protocol::{
    Envelope, MailboxKey, MsgId, PollRequest, generate_signing_key, now_unix, random_hex,
};
use std::cell::RefCell;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long a probe's long polls wait (SPEC §6.2 allows up to 25 s).
const PROBE_WAIT_S: u64 = 5;
/// Polls go out this long before their probe is deposited, so that they are parked when it lands.
const POLL_LEAD: Duration = Duration::from_millis(100);
/// Kept-alive connections per node for the background load: more than the deposits a node has
/// in flight at once at these rates, so pipelined requests seldom queue behind each other.
const LOAD_CONNECTIONS_PER_NODE: usize = 16;
const DEPOSIT_PATH: &str = "/api/mesh/dm/send";

/// One probe's story, in seconds since the start of the run.
#[derive(Default, Clone)]
struct Probe {
    origin: usize,
    /// When the origin's 200 reached the bench.
    accepted: Option<f64>,
    /// When each other node's long poll returned the probe (index: node).
    seen: [Option<f64>; 3],
    outcomes: [Option<PollOutcome>; 3],
}

/// How a probe's long poll ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PollOutcome {
    /// 200 with the probe.
    Found,
    /// 200 without it: `wait_s` ran out first.
    Empty,
    /// Another status.
    Refused,
    /// No answer (transport error, timeout).
    Failed,
}

fn signing_key() -> ed25519_dalek::SigningKey {
    generate_signing_key().unwrap_or_else(|_| fail("no randomness"))
}

fn sign_envelope(to: MailboxKey, id: &str, bytes: usize) -> Vec<u8> {
    let now = now_unix();
    let envelope = Envelope::sign(
        &signing_key(),
        to,
        MsgId::parse("msg_id", id).unwrap_or_else(|_| fail("bad id")),
        now,
        now + 3600,
        &vec![0xabu8; bytes],
    );
    serde_json::to_vec(&envelope).unwrap_or_else(|_| fail("encode"))
}

fn or_absent(value: Option<f64>) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(args: &Args, client: &awc::Client, root: &Path) {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("http://127.0.0.1:{p}"))
        .collect();
    let nodes: Vec<NodeProcess> = (0..3)
        .map(|i| {
            let peers: Vec<&str> = (0..3)
                .filter(|&j| j != i)
                .map(|j| urls[j].as_str())
                .collect();
            start_node(
                &root.join(format!("mesh-{i}")),
                ports[i],
                &[
                    ("MESH_RELAY_PEERS", peers.join(",")),
                    ("MESH_PEER_PUSH_SECRET", SECRET.to_string()),
                    ("MESH_DM_MAILBOX_LIMIT", "100000".to_string()),
                ],
            )
        })
        .collect();
    for node in &nodes {
        wait_ready(client, node).await;
    }
    eprintln!("[mesh-lag] nodes: {}", urls.join(" "));
    let total = (args.mesh_rate * args.mesh_seconds) as usize;
    eprintln!("[mesh-lag] signing {total} background envelopes and the probes...");
    // Background: 40 envelopes per mailbox, one sender each.
    let owners: Vec<MailboxKey> = (0..total.div_ceil(40).max(1))
        .map(|_| MailboxKey::of(&signing_key()))
        .collect();
    // Request i goes to node i % 3 (see `paced`): its bytes are built for that node now.
    let background: Vec<Vec<u8>> = (0..total)
        .map(|i| {
            let body = sign_envelope(
                owners[i % owners.len()],
                &format!("bg-{i}"),
                args.ciphertext_bytes,
            );
            paced::post_request(&format!("127.0.0.1:{}", ports[i % 3]), DEPOSIT_PATH, &body)
        })
        .collect();
    let probe_count = (args.mesh_seconds * 1000 / args.probe_ms.max(1)) as usize;
    let probe_owners: Vec<ed25519_dalek::SigningKey> =
        (0..probe_count).map(|_| signing_key()).collect();
    let probe_bodies: Vec<Vec<u8>> = probe_owners
        .iter()
        .enumerate()
        .map(|(i, owner)| {
            sign_envelope(
                MailboxKey::of(owner),
                &format!("probe-{i}"),
                args.ciphertext_bytes,
            )
        })
        .collect();
    let probes: Rc<RefCell<Vec<Probe>>> = Rc::new(RefCell::new(
        (0..probe_count)
            .map(|i| Probe {
                origin: i % 3,
                ..Probe::default()
            })
            .collect(),
    ));
    let failures = Rc::new(RefCell::new(0usize));
    let cpu_before: Vec<f64> = nodes.iter().map(|n| cpu_seconds(n.child.id())).collect();
    let bench_cpu_before = cpu_seconds(std::process::id());
    let start = Instant::now() + Duration::from_millis(200);
    let seconds = move || {
        Instant::now()
            .saturating_duration_since(start)
            .as_secs_f64()
    };

    // The probes and their polls.
    let probe_task = {
        let (client, urls, probes, failures) = (
            client.clone(),
            urls.clone(),
            Rc::clone(&probes),
            Rc::clone(&failures),
        );
        let interval = Duration::from_millis(args.probe_ms.max(1));
        actix_rt::spawn(async move {
            let mut tasks = Vec::new();
            for (i, (owner, body)) in probe_owners.into_iter().zip(probe_bodies).enumerate() {
                let deposit_at = start + POLL_LEAD + interval * i as u32;
                if let Some(wait) = (deposit_at - POLL_LEAD).checked_duration_since(Instant::now())
                {
                    actix_rt::time::sleep(wait).await;
                }
                let origin = i % 3;
                for node in (0..3).filter(|&n| n != origin) {
                    let nonce = random_hex(16).unwrap_or_else(|_| fail("no randomness"));
                    let mut poll = PollRequest::sign(&owner, now_unix(), nonce, 1);
                    poll.wait_s = PROBE_WAIT_S;
                    let body = poll.to_json().to_string();
                    let (client, url, probes, failures) = (
                        client.clone(),
                        urls[node].clone(),
                        Rc::clone(&probes),
                        Rc::clone(&failures),
                    );
                    tasks.push(actix_rt::spawn(async move {
                        let reply = client
                            .post(format!("{url}/api/mesh/dm/poll"))
                            .timeout(Duration::from_secs(PROBE_WAIT_S + 5))
                            .send_body(body)
                            .await;
                        let at = seconds();
                        let outcome = match reply {
                            Ok(r) if r.status().as_u16() != 200 => {
                                *failures.borrow_mut() += 1;
                                PollOutcome::Refused
                            }
                            Ok(mut r) => {
                                let found = r
                                    .body()
                                    .limit(1 << 20)
                                    .await
                                    .ok()
                                    .and_then(|b| {
                                        serde_json::from_slice::<serde_json::Value>(&b).ok()
                                    })
                                    .is_some_and(|v| {
                                        v["messages"].as_array().is_some_and(|m| !m.is_empty())
                                    });
                                if found {
                                    PollOutcome::Found
                                } else {
                                    PollOutcome::Empty
                                }
                            }
                            Err(_) => PollOutcome::Failed,
                        };
                        let mut probes = probes.borrow_mut();
                        if outcome == PollOutcome::Found {
                            probes[i].seen[node] = Some(at);
                        }
                        probes[i].outcomes[node] = Some(outcome);
                    }));
                }
                let (client, url, probes, failures) = (
                    client.clone(),
                    urls[origin].clone(),
                    Rc::clone(&probes),
                    Rc::clone(&failures),
                );
                tasks.push(actix_rt::spawn(async move {
                    if let Some(wait) = deposit_at.checked_duration_since(Instant::now()) {
                        actix_rt::time::sleep(wait).await;
                    }
                    let ok = deposited(&client, &url, body).await;
                    if ok {
                        probes.borrow_mut()[i].accepted = Some(seconds());
                    } else {
                        *failures.borrow_mut() += 1;
                    }
                }));
            }
            for task in tasks {
                let _ = task.await;
            }
        })
    };

    // The background load, on its fixed schedule, over raw kept-alive connections.
    let targets: Vec<std::net::SocketAddr> = ports
        .iter()
        .map(|&port| std::net::SocketAddr::from(([127, 0, 0, 1], port)))
        .collect();
    let load = match paced::run(
        &targets,
        LOAD_CONNECTIONS_PER_NODE,
        background,
        args.mesh_rate as f64,
        start,
    )
    .await
    {
        Ok(outcome) => outcome,
        Err(err) => fail(&format!("mesh lag: the paced load failed: {err}")),
    };
    let load_failed = load.failed();
    *failures.borrow_mut() += load_failed;
    if load_failed > 0 {
        println!(
            "mesh lag: background deposits not answered 200: {load_failed} (by status: {:?}; lost with their connection: {})",
            load.refused, load.lost
        );
    }
    let load_took = load.sent_in.as_secs_f64();
    let _ = probe_task.await;
    let cpu: Vec<f64> = nodes
        .iter()
        .zip(&cpu_before)
        .map(|(n, before)| cpu_seconds(n.child.id()) - before)
        .collect();
    let bench_cpu = cpu_seconds(std::process::id()) - bench_cpu_before;
    let load_seconds = start.elapsed().as_secs_f64().max(1e-3);

    // How each node got its replicas, and when the mesh had everything.
    let expected = (total
        + probes
            .borrow()
            .iter()
            .filter(|p| p.accepted.is_some())
            .count()) as f64;
    let converge_start = Instant::now();
    let mut converged = None;
    while converge_start.elapsed() < Duration::from_secs(60) {
        let mut all = true;
        for url in &urls {
            all &= metric_sum(client, url, "dm_pending_envelopes").await >= expected;
        }
        if all {
            converged = Some(converge_start.elapsed());
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, url) in urls.iter().enumerate() {
        println!(
            "mesh lag: node {i}: {:.0} pending, replicas accepted {:.0}, duplicates {:.0}; push errors {:.0}; pulled and applied {:.0}, pulled and recognized {}",
            metric_sum(client, url, "dm_pending_envelopes").await,
            metric_sum(client, url, "dm_replica_accepted_total").await,
            metric_sum(client, url, "dm_replica_duplicate_total").await,
            metric_sum(client, url, "dm_replication_push_error_total").await,
            metric_sum(client, url, "dm_sync_applied_total").await,
            or_absent(optional_metric_sum(client, url, "dm_sync_known_total").await),
        );
    }
    match converged {
        Some(after) => println!(
            "mesh lag: every node held all {expected:.0} envelopes {:.2} s after the load had been answered",
            after.as_secs_f64()
        ),
        None => println!("mesh lag: the nodes did not converge within 60 s"),
    }
    let probes = probes.borrow();
    let mut lags_ms: Vec<f64> = Vec::new();
    let mut points: Vec<(f64, f64)> = Vec::new();
    let mut missing = 0usize;
    for probe in probes.iter() {
        let Some(accepted) = probe.accepted else {
            continue;
        };
        for node in (0..3).filter(|&n| n != probe.origin) {
            match probe.seen[node] {
                Some(seen) => {
                    let lag = (seen - accepted).max(0.0) * 1000.0;
                    lags_ms.push(lag);
                    points.push((accepted, lag));
                }
                None => missing += 1,
            }
        }
    }
    lags_ms.sort_by(f64::total_cmp);
    let count = |o: PollOutcome| {
        probes
            .iter()
            .flat_map(|p| p.outcomes.iter())
            .filter(|x| **x == Some(o))
            .count()
    };
    println!(
        "mesh lag: probe polls: {} found the probe, {} ran out empty, {} refused, {} failed",
        count(PollOutcome::Found),
        count(PollOutcome::Empty),
        count(PollOutcome::Refused),
        count(PollOutcome::Failed)
    );
    let accepted = probes.iter().filter(|p| p.accepted.is_some()).count();
    let deposits = (total + accepted) as f64;
    println!(
        "mesh lag (3 nodes, full mesh, {} deposits/s for {} s, sent in {load_took:.1} s; {} failed): {} probes accepted, {} arrivals timed, {missing} not seen within {PROBE_WAIT_S} s: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.mesh_rate,
        args.mesh_seconds,
        *failures.borrow(),
        accepted,
        lags_ms.len(),
        percentile(&lags_ms, 0.5),
        percentile(&lags_ms, 0.9),
        percentile(&lags_ms, 0.99),
        percentile(&lags_ms, 1.0),
    );
    println!(
        "mesh lag: node CPU {:.1} / {:.1} / {:.1} s, {:.0} µs of node CPU per deposit over the mesh (each deposit is stored on all three nodes)",
        cpu[0],
        cpu[1],
        cpu[2],
        cpu.iter().sum::<f64>() / deposits * 1e6
    );
    // The load generator shares the cores with the nodes: what it took is printed with them.
    println!(
        "mesh lag: the bench itself took {bench_cpu:.1} s of CPU during the load ({:.2} of a core; the nodes {:.2})",
        bench_cpu / load_seconds,
        cpu.iter().sum::<f64>() / load_seconds
    );
    match plot(&args.svg, &points, args) {
        Ok(()) => println!("mesh lag: plot written to {}", args.svg.display()),
        Err(err) => eprintln!(
            "mesh lag: cannot write the plot {}: {err}",
            args.svg.display()
        ),
    }
}

/// Lag of every timed arrival against the time its probe was accepted.
fn plot(path: &Path, points: &[(f64, f64)], args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let top = points.iter().map(|p| p.1).fold(10.0_f64, f64::max) * 1.1;
    let right = points.iter().map(|p| p.0).fold(1.0_f64, f64::max);
    let root = SVGBackend::new(path, (900, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "dmrelay replication lag, 3-node full mesh, {} deposits/s",
                args.mesh_rate
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..right, 0.0..top)?;
    chart
        .configure_mesh()
        .x_desc("seconds into the run (probe accepted by its origin)")
        .y_desc("lag to the other node's store, ms")
        .draw()?;
    chart.draw_series(
        points
            .iter()
            .map(|&(x, y)| Circle::new((x, y), 2, BLUE.mix(0.6).filled())),
    )?;
    let mut sorted: Vec<f64> = points.iter().map(|p| p.1).collect();
    sorted.sort_by(f64::total_cmp);
    let p99 = percentile(&sorted, 0.99);
    if p99.is_finite() {
        chart
            .draw_series(LineSeries::new(
                [(0.0, p99), (right, p99)],
                RED.stroke_width(1),
            ))?
            .label(format!("p99 {p99:.1} ms"))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
