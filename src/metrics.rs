//! Prometheus metrics of SPEC §6.4, plus the node's own queue and store gauges.
//!
//! One [`Metrics`] is created at start-up and shared (`Arc`) by the HTTP layer, the mailbox
//! shards, the store writer and the peer actors. `GET /metrics` renders [`Metrics::render`].

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Client deposits by outcome (`accepted`, `duplicate`, `acked`, `conflict`,
    /// `cap_violation`, `mailbox_full`, `invalid`, `unavailable`).
    pub deposit_total: IntCounterVec,
    /// Client deposits refused by the per-sender cap.
    pub drop_per_sender_cap_total: IntCounter,
    /// Replicas (pushed or pulled) stored.
    pub replica_accepted_total: IntCounter,
    /// Replicas already pending here.
    pub replica_duplicate_total: IntCounter,
    /// Replicas refused by the per-sender cap.
    pub replica_drop_per_sender_cap_total: IntCounter,
    /// Replicas refused because the mailbox was full.
    pub replica_drop_full_total: IntCounter,
    /// Items a peer accepted (`accepted`, `duplicate`, `acked`, `applied`).
    pub push_ok_total: IntCounterVec,
    /// Items a peer refused for good.
    pub push_rejected_total: IntCounterVec,
    /// Push attempts that failed (transport, 5xx, 429) and will be retried.
    pub push_error_total: IntCounterVec,
    /// Log reads of the pushers, by where they read: `memory` (the writer's window of newest
    /// client changes) or `store` (a scan of the change log).
    pub push_log_reads_total: IntCounterVec,
    /// Ack objects applied (client and replica).
    pub ack_total: IntCounter,
    /// Envelopes pending on this node.
    pub pending_envelopes: IntGauge,
    /// Mailboxes whose state is in memory (the others are only in the store).
    pub mailboxes_loaded: IntGauge,
    /// Client changes read from the log and not yet sent to each peer.
    pub peer_queue_depth: IntGaugeVec,
    /// 1 while a peer's circuit breaker is open.
    pub peer_circuit_open: IntGaugeVec,
    /// Seconds since the last successful pull from each peer's feed.
    pub peer_sync_lag_seconds: IntGaugeVec,
    /// Feed entries applied from each peer.
    pub sync_applied_total: IntCounterVec,
    pub sync_known_total: IntCounterVec,
    /// Feed pages read as signatures only (nothing in them was new here).
    pub sync_digest_pages_total: IntCounterVec,
    /// Feed pages read in full (a digest showed something new, or the peer sent items).
    pub sync_full_pages_total: IntCounterVec,
    pub sync_rounds_total: IntCounterVec,
    pub sync_error_total: IntCounterVec,
    /// Time from sending a push batch to its reply, per peer.
    pub push_seconds: HistogramVec,
    /// Store transactions committed (each one fsync in fsync mode).
    pub store_commits_total: IntCounter,
    /// Store operations committed (ops / commits = group-commit batch size).
    pub store_ops_total: IntCounter,
    /// Seconds one store commit took (write and fsync): what every request of its batch waited.
    pub store_commit_seconds: Histogram,
    /// Store commits that failed.
    pub store_errors_total: IntCounter,
    /// Requests refused with 503 because a bounded queue was full.
    pub overload_total: IntCounter,
    /// Long polls parked with their mailbox, waiting for mail (SPEC §6.2 `wait_s`).
    pub waiting_polls: IntGauge,
    /// Long polls answered at once (empty) because the node already held its most waiting polls.
    pub waiting_polls_overflow_total: IntCounter,
    /// 1 while the store refuses writes after a storage error (until it is reopened).
    pub store_degraded: IntGauge,
    /// Times the store was reopened and took writes again after a storage error.
    pub store_recoveries_total: IntCounter,
    /// Bytes of stored envelopes, acks and parked replicas (measured against the budget).
    pub store_bytes: IntGauge,
    /// The node-wide storage budget in bytes.
    pub storage_budget_bytes: IntGauge,
    /// Writes (deposits, replicas, parked replicas) refused because the budget was used up.
    pub budget_refusals_total: IntCounter,
    /// Push attempts a peer refused with 403 (our signature; retried, an operator must look).
    pub push_auth_refused_total: IntCounterVec,
    /// Requests refused with 429 `rate_limited` by the per-address rate limit, by plane.
    pub rate_limited_total: IntCounterVec,
    /// Expiry and eviction sweeps the mailbox shards have run (one per shard per second).
    pub mailbox_sweeps_total: IntCounter,
    /// Uptime and per-peer state for `GET /status` (not Prometheus: events with times).
    pub status: crate::status::NodeStatus,
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let metric = IntCounter::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, name, metric.clone());
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntCounterVec {
    let metric = IntCounterVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, name, metric.clone());
    metric
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let metric = IntGauge::new(name, help).unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, name, metric.clone());
    metric
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    let metric = IntGaugeVec::new(Opts::new(name, help), &[label])
        .unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, name, metric.clone());
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let metric = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, name, metric.clone());
    metric
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    label: &str,
    buckets: &[f64],
) -> HistogramVec {
    let metric = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        &[label],
    )
    .unwrap_or_else(|e| unreachable_metric(name, e));
    register(registry, name, metric.clone());
    metric
}

fn register(registry: &Registry, name: &str, metric: impl prometheus::core::Collector + 'static) {
    if let Err(err) = registry.register(Box::new(metric)) {
        tracing::error!(name, %err, "metric not registered");
    }
}

/// Metric names and help texts are constants of this file; an invalid one is a programming error
/// caught by the unit test below, never by input.
#[allow(clippy::panic)]
fn unreachable_metric(name: &str, err: prometheus::Error) -> ! {
    panic!("invalid metric definition {name}: {err}")
}

/// Every `status` label of `dm_deposit_total`: the §4 decisions, the 4xx codes of an envelope
/// refused before them, and `unavailable` (a test checks the list against both).
pub const DEPOSIT_OUTCOMES: [&str; 12] = [
    "accepted",
    "duplicate",
    "acked",
    "conflict",
    "cap_violation",
    "mailbox_full",
    "bad_request",
    "too_large",
    "bad_signature",
    "stale",
    "expired",
    "unavailable",
];

impl Metrics {
    pub fn new() -> Self {
        let metrics = Self::unlabelled();
        // Every outcome a deposit can have is exported from the start, at 0.
        for status in DEPOSIT_OUTCOMES {
            metrics.deposit_total.with_label_values(&[status]).inc_by(0);
        }
        metrics
            .rate_limited_total
            .with_label_values(&["client"])
            .inc_by(0);
        for source in ["memory", "store"] {
            metrics
                .push_log_reads_total
                .with_label_values(&[source])
                .inc_by(0);
        }
        metrics
    }

    fn unlabelled() -> Self {
        let r = Registry::new();
        Self {
            deposit_total: counter_vec(
                &r,
                "dm_deposit_total",
                "Client deposits by outcome.",
                "status",
            ),
            drop_per_sender_cap_total: counter(
                &r,
                "dm_drop_per_sender_cap_total",
                "Client deposits refused by the per-sender cap.",
            ),
            replica_accepted_total: counter(&r, "dm_replica_accepted_total", "Replicas stored."),
            replica_duplicate_total: counter(
                &r,
                "dm_replica_duplicate_total",
                "Replicas already pending here.",
            ),
            replica_drop_per_sender_cap_total: counter(
                &r,
                "dm_replica_drop_per_sender_cap_total",
                "Replicas refused by the per-sender cap.",
            ),
            replica_drop_full_total: counter(
                &r,
                "dm_replica_drop_full_total",
                "Replicas refused because the mailbox was full.",
            ),
            push_ok_total: counter_vec(
                &r,
                "dm_replication_push_ok_total",
                "Pushed items a peer took.",
                "peer",
            ),
            push_rejected_total: counter_vec(
                &r,
                "dm_replication_push_rejected_total",
                "Pushed items a peer refused for good.",
                "peer",
            ),
            push_error_total: counter_vec(
                &r,
                "dm_replication_push_error_total",
                "Push attempts that failed and will be retried.",
                "peer",
            ),
            push_log_reads_total: counter_vec(
                &r,
                "dm_push_log_reads_total",
                "Reads of the change log by the pushers: from the writer's window of newest client changes (memory) or from the store (store).",
                "source",
            ),
            ack_total: counter(&r, "dm_ack_total", "Ack objects applied."),
            pending_envelopes: gauge(
                &r,
                "dm_pending_envelopes",
                "Envelopes pending on this node.",
            ),
            mailboxes_loaded: gauge(
                &r,
                "dm_mailboxes_loaded",
                "Mailboxes whose state is in memory; idle ones live only in the store.",
            ),
            peer_queue_depth: gauge_vec(
                &r,
                "dm_peer_queue_depth",
                "Client changes read from the log and not yet sent to a peer (the look-ahead, at most 1024).",
                "peer",
            ),
            peer_circuit_open: gauge_vec(
                &r,
                "dm_peer_circuit_open",
                "1 while a peer's circuit breaker is open.",
                "peer",
            ),
            peer_sync_lag_seconds: gauge_vec(
                &r,
                "dm_peer_sync_lag_seconds",
                "Seconds since the last successful pull of a peer's change feed.",
                "peer",
            ),
            sync_applied_total: counter_vec(
                &r,
                "dm_sync_applied_total",
                "Change-feed entries pulled from a peer and applied (checked and sent to their mailbox).",
                "peer",
            ),
            push_seconds: histogram_vec(
                &r,
                "dm_replication_push_seconds",
                "Seconds from sending a push batch to a peer to its reply (failed ones included).",
                "peer",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ],
            ),
            sync_error_total: counter_vec(
                &r,
                "dm_sync_error_total",
                "Pull rounds of a peer's change feed that failed (retried at the next interval).",
                "peer",
            ),
            sync_rounds_total: counter_vec(
                &r,
                "dm_sync_rounds_total",
                "Pull rounds of a peer's change feed that read it to its end (or the round's page budget).",
                "peer",
            ),
            sync_known_total: counter_vec(
                &r,
                "dm_sync_known_total",
                "Change-feed entries pulled from a peer that this node had applied already (by push), recognized without a check.",
                "peer",
            ),
            sync_digest_pages_total: counter_vec(
                &r,
                "dm_sync_digest_pages_total",
                "Pages of a peer's feed read as signatures only: every entry was here already, no body was fetched.",
                "peer",
            ),
            sync_full_pages_total: counter_vec(
                &r,
                "dm_sync_full_pages_total",
                "Pages of a peer's feed read in full: its digest showed an entry new here, or the peer does not answer digests.",
                "peer",
            ),
            store_commits_total: counter(
                &r,
                "dm_store_commits_total",
                "Store transactions committed (one fsync each in fsync mode).",
            ),
            store_ops_total: counter(
                &r,
                "dm_store_ops_total",
                "Store operations committed; divided by commits it is the group-commit batch size.",
            ),
            store_commit_seconds: histogram(
                &r,
                "dm_store_commit_seconds",
                "Seconds one store commit took, write and fsync: every deposit, ack and replica of its batch waited that long.",
                &[
                    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                ],
            ),
            store_errors_total: counter(&r, "dm_store_errors_total", "Store commits that failed."),
            overload_total: counter(
                &r,
                "dm_overload_total",
                "Requests refused with 503 because a bounded queue was full.",
            ),
            waiting_polls: gauge(
                &r,
                "dm_waiting_polls",
                "Long polls parked with their mailbox, waiting for mail.",
            ),
            waiting_polls_overflow_total: counter(
                &r,
                "dm_waiting_polls_overflow_total",
                "Long polls answered at once because the node held its most waiting polls.",
            ),
            store_degraded: gauge(
                &r,
                "dm_store_degraded",
                "1 while the store refuses writes after a storage error, until it is reopened.",
            ),
            store_recoveries_total: counter(
                &r,
                "dm_store_recoveries_total",
                "Times the store was reopened and took writes again after a storage error.",
            ),
            store_bytes: gauge(
                &r,
                "dm_store_bytes",
                "Bytes of stored envelopes, acks and parked replicas (what the budget limits).",
            ),
            storage_budget_bytes: gauge(
                &r,
                "dm_storage_budget_bytes",
                "The node-wide storage budget in bytes.",
            ),
            budget_refusals_total: counter(
                &r,
                "dm_storage_budget_refusals_total",
                "Writes of envelopes refused because the storage budget was used up.",
            ),
            push_auth_refused_total: counter_vec(
                &r,
                "dm_replication_push_auth_refused_total",
                "Push attempts a peer refused with 403 (signature or secret mismatch); retried.",
                "peer",
            ),
            rate_limited_total: counter_vec(
                &r,
                "dm_rate_limited_total",
                "Requests refused with 429 by the per-address rate limit.",
                "plane",
            ),
            mailbox_sweeps_total: counter(
                &r,
                "dm_mailbox_sweeps_total",
                "Expiry and eviction sweeps run by the mailbox shards.",
            ),
            status: crate::status::NodeStatus::default(),
            registry: r,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(%err, "metrics encoding failed");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deposit_outcome_is_in_the_exported_list() {
        use crate::http::error::ApiError;
        use crate::mailbox::rules::Decision;
        use crate::protocol::ProtocolError;
        let decisions = [
            Decision::Accept,
            Decision::Duplicate,
            Decision::Acked,
            Decision::Conflict,
            Decision::MailboxFull { limit: 1 },
            Decision::CapViolation {
                pending: 1,
                limit: 1,
            },
        ];
        let refusals = [
            ProtocolError::BadRequest(String::new()),
            ProtocolError::TooLarge(String::new()),
            ProtocolError::BadSignature(String::new()),
            ProtocolError::Stale(String::new()),
            ProtocolError::Expired(String::new()),
        ];
        let labels = decisions
            .into_iter()
            .map(Decision::label)
            .chain(refusals.into_iter().map(|e| ApiError::from(e).code()))
            .chain([ApiError::unavailable().code()]);
        for label in labels {
            assert!(DEPOSIT_OUTCOMES.contains(&label), "{label}");
        }
    }

    #[test]
    fn every_spec_metric_is_exposed() {
        let metrics = Metrics::new();
        metrics.deposit_total.with_label_values(&["accepted"]).inc();
        metrics
            .peer_queue_depth
            .with_label_values(&["http://b"])
            .set(0);
        metrics
            .peer_circuit_open
            .with_label_values(&["http://b"])
            .set(0);
        for m in [
            &metrics.push_ok_total,
            &metrics.push_rejected_total,
            &metrics.push_error_total,
        ] {
            m.with_label_values(&["http://b"]).inc();
        }
        let text = metrics.render();
        for name in [
            "dm_deposit_total{status=\"accepted\"} 1",
            "dm_drop_per_sender_cap_total 0",
            "dm_replica_accepted_total 0",
            "dm_replica_duplicate_total 0",
            "dm_replica_drop_per_sender_cap_total 0",
            "dm_replica_drop_full_total 0",
            "dm_replication_push_ok_total{peer=\"http://b\"} 1",
            "dm_replication_push_rejected_total{peer=\"http://b\"} 1",
            "dm_replication_push_error_total{peer=\"http://b\"} 1",
            "dm_ack_total 0",
            "dm_pending_envelopes 0",
            "dm_peer_queue_depth{peer=\"http://b\"} 0",
            "dm_peer_circuit_open{peer=\"http://b\"} 0",
            "dm_waiting_polls 0",
            "dm_waiting_polls_overflow_total 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
