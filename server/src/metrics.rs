//! What a node counts and times, for `/metrics` (SPEC §11), on the `prometheus-client` crate.
//!
//! One process-wide set of families ([`metrics`]): every stage records into it with an atomic
//! add (labelled families take a read lock and a hash of their small label set); `/metrics`
//! sets the gauges it reads from elsewhere (the published Raft state, queue depths, leases,
//! locks, watchers) and encodes everything. Durations are histograms in seconds. Labels are
//! bounded: route templates (never keys), methods, status classes, write modes, consistencies,
//! peer ids.

use std::sync::OnceLock;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// What a request does.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum Op {
    /// A write (PUT, DELETE, add, a transaction, lease and lock changes).
    write,
    /// A read (GET of a key, a list, a lock, a lease).
    read,
    /// A watch (counted when it opens; its stream is not timed).
    watch,
    /// Anything else (status, health, membership, metrics).
    other,
}

/// Labels of an HTTP request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The route template (`/v1/kv/{key}`), or `unknown`.
    pub route: &'static str,
    /// The method.
    pub method: &'static str,
    /// What it does.
    pub op: Op,
    /// `2xx`, `3xx`, `4xx` or `5xx`.
    pub class: &'static str,
    /// The write mode asked for (`async`, `semi`, `sync`), `default`, or `none` for a read.
    pub mode: &'static str,
    /// The read consistency asked for (`linearizable`, `stale`), `default`, or `none`.
    pub consistency: &'static str,
}

/// Labels of a request's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The route template.
    pub route: &'static str,
    /// What it does.
    pub op: Op,
}

/// Labels of a per-peer family.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    /// The peer's member id.
    pub peer: u64,
}

/// Every family a node exports.
pub struct Metrics {
    registry: Registry,
    /// HTTP requests answered.
    pub http_requests: Family<HttpLabels, Counter>,
    /// HTTP request durations (watches excluded).
    pub http_duration: Family<OpLabels, Histogram>,
    /// Raft log append with its fsync (one per Ready with entries or a hard state).
    pub raft_append: Histogram,
    /// Applying a batch of committed entries.
    pub apply: Histogram,
    /// Streaming a snapshot to a follower.
    pub snapshot_send: Histogram,
    /// Installing a received snapshot.
    pub snapshot_install: Histogram,
    /// Entries committed (seen committed by this node).
    pub proposals_committed: Counter,
    /// Entries applied.
    pub proposals_applied: Counter,
    /// Client proposals that failed (not leader, dropped, timed out, refused).
    pub proposals_failed: Counter,
    /// Client proposals waiting for their answer.
    pub proposals_pending: Gauge,
    /// Times this node saw the leader change.
    pub leader_changes: Counter,
    /// From a read-index request to its answer.
    pub read_index: Histogram,
    /// Followers' read-index requests the leader answered without a heartbeat round
    /// (`raft/quorum_read.rs`).
    pub read_index_at_once: Counter,
    /// Heartbeat round trips to each peer (on the leader).
    pub peer_rtt: Family<PeerLabels, Histogram>,
    /// The leader's last index minus each follower's match index.
    pub peer_match_lag: Family<PeerLabels, Gauge>,
    /// The leader's last index minus each follower's reported applied index.
    pub peer_applied_lag: Family<PeerLabels, Gauge>,
    /// Reports that a peer could not be reached.
    pub peer_unreachable: Family<PeerLabels, Counter>,
    /// Frames to a peer dropped because its queue was full.
    pub peer_dropped: Family<PeerLabels, Counter>,
    /// Raft messages from peers dropped because the Ready loop's inbox of them was full.
    pub raft_inbox_dropped: Counter,
    /// Set at scrape time: the applied index.
    pub applied_index: Gauge,
    /// Set at scrape time: the commit index.
    pub commit_index: Gauge,
    /// Set at scrape time: the term.
    pub term: Gauge,
    /// Set at scrape time: 1 if this node leads.
    pub is_leader: Gauge,
    /// Set at scrape time: 1 if a leader is known.
    pub has_leader: Gauge,
    /// Set at scrape time: client requests queued for the Raft thread.
    pub queue_depth: Gauge,
    /// Set at scrape time: linearizable reads (and lease keepalives) waiting for their read
    /// index from Raft.
    pub reads_waiting: Gauge,
    /// Requests refused as overloaded since the start.
    pub overloaded: Counter,
    /// Attempts to take an abandoned lock wait out of its queue that failed (each is retried).
    pub lock_cancel_failed: Counter,
    /// Client connections closed at once because the connection cap (`connections_max`) was
    /// reached.
    pub connections_refused: Counter,
    /// Client connections served at once: `--max-connections`, or fewer under a low open-file
    /// limit.
    pub connections_max: Gauge,
    /// Set at scrape time: live leases.
    pub leases: Gauge,
    /// Set at scrape time: locks with a holder.
    pub locks_held: Gauge,
    /// Set at scrape time: watchers connected to this node.
    pub watchers: Gauge,
}

/// Histogram buckets from 10 µs to about 1.3 s (fsync, apply, round trips, read index).
fn fine() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_01, 2.0, 18)
}

/// Histogram buckets from 50 µs to about 6.5 s (requests, snapshots).
fn coarse() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_05, 2.0, 18)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("keel");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration =
            Family::<OpLabels, Histogram>::new_with_constructor(|| Histogram::new(coarse()));
        let peer_rtt =
            Family::<PeerLabels, Histogram>::new_with_constructor(|| Histogram::new(fine()));
        let m = Metrics {
            http_requests,
            http_duration,
            raft_append: Histogram::new(fine()),
            apply: Histogram::new(fine()),
            snapshot_send: Histogram::new(coarse()),
            snapshot_install: Histogram::new(coarse()),
            proposals_committed: Counter::default(),
            proposals_applied: Counter::default(),
            proposals_failed: Counter::default(),
            proposals_pending: Gauge::default(),
            leader_changes: Counter::default(),
            read_index: Histogram::new(fine()),
            read_index_at_once: Counter::default(),
            peer_rtt,
            peer_match_lag: Family::default(),
            peer_applied_lag: Family::default(),
            peer_unreachable: Family::default(),
            peer_dropped: Family::default(),
            raft_inbox_dropped: Counter::default(),
            applied_index: Gauge::default(),
            commit_index: Gauge::default(),
            term: Gauge::default(),
            is_leader: Gauge::default(),
            has_leader: Gauge::default(),
            queue_depth: Gauge::default(),
            reads_waiting: Gauge::default(),
            overloaded: Counter::default(),
            lock_cancel_failed: Counter::default(),
            connections_refused: Counter::default(),
            connections_max: Gauge::default(),
            leases: Gauge::default(),
            locks_held: Gauge::default(),
            watchers: Gauge::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "http_requests",
            "HTTP requests answered",
            m.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "HTTP request durations, watches excluded",
            m.http_duration.clone(),
        );
        r.register(
            "raft_append_duration_seconds",
            "Raft log appends with their fsync",
            m.raft_append.clone(),
        );
        r.register(
            "apply_duration_seconds",
            "Applying a batch of committed entries",
            m.apply.clone(),
        );
        r.register(
            "snapshot_send_duration_seconds",
            "Streaming a snapshot to a follower",
            m.snapshot_send.clone(),
        );
        r.register(
            "snapshot_install_duration_seconds",
            "Installing a received snapshot",
            m.snapshot_install.clone(),
        );
        r.register(
            "proposals_committed",
            "Log entries this node saw committed",
            m.proposals_committed.clone(),
        );
        r.register(
            "proposals_applied",
            "Log entries applied to the state machine",
            m.proposals_applied.clone(),
        );
        r.register(
            "proposals_failed",
            "Client proposals that failed (no leader, dropped, timed out, refused)",
            m.proposals_failed.clone(),
        );
        r.register(
            "proposals_pending",
            "Client proposals waiting for their answer",
            m.proposals_pending.clone(),
        );
        r.register(
            "leader_changes",
            "Times this node saw the leader change",
            m.leader_changes.clone(),
        );
        r.register(
            "read_index_duration_seconds",
            "From a read-index request to its answer",
            m.read_index.clone(),
        );
        r.register(
            "read_index_at_once",
            "Followers' read-index requests answered by this leader without a heartbeat round",
            m.read_index_at_once.clone(),
        );
        r.register(
            "peer_round_trip_seconds",
            "Heartbeat round trips from the leader to each peer",
            m.peer_rtt.clone(),
        );
        r.register(
            "peer_match_lag_entries",
            "The leader's last index minus each follower's match index",
            m.peer_match_lag.clone(),
        );
        r.register(
            "peer_applied_lag_entries",
            "The leader's last index minus each follower's applied index",
            m.peer_applied_lag.clone(),
        );
        r.register(
            "peer_unreachable",
            "Reports that a peer could not be reached",
            m.peer_unreachable.clone(),
        );
        r.register(
            "peer_dropped_frames",
            "Frames to a peer dropped because its queue was full",
            m.peer_dropped.clone(),
        );
        r.register(
            "raft_inbox_dropped",
            "Raft messages from peers dropped because the Ready loop's inbox of them was full",
            m.raft_inbox_dropped.clone(),
        );
        r.register(
            "applied_index",
            "Highest log index applied",
            m.applied_index.clone(),
        );
        r.register(
            "commit_index",
            "Highest log index known committed",
            m.commit_index.clone(),
        );
        r.register("term", "Current Raft term", m.term.clone());
        r.register("is_leader", "1 if this node leads", m.is_leader.clone());
        r.register("has_leader", "1 if a leader is known", m.has_leader.clone());
        r.register(
            "raft_queue_depth",
            "Client requests queued for the Raft thread",
            m.queue_depth.clone(),
        );
        r.register(
            "read_index_waiting",
            "Linearizable reads and lease keepalives asked of Raft and waiting for their read index",
            m.reads_waiting.clone(),
        );
        r.register(
            "overloaded",
            "Requests refused with 503 overloaded",
            m.overloaded.clone(),
        );
        r.register(
            "lock_cancel_failed",
            "Attempts to take an abandoned lock wait out of its queue that failed (each is retried)",
            m.lock_cancel_failed.clone(),
        );
        r.register(
            "http_connections_refused",
            "Client connections closed at once because the connection cap (keel_http_connections_max) was reached",
            m.connections_refused.clone(),
        );
        r.register(
            "http_connections_max",
            "Client connections served at once (--max-connections, or fewer under a low open-file limit)",
            m.connections_max.clone(),
        );
        r.register("leases", "Live leases", m.leases.clone());
        r.register("locks_held", "Locks with a holder", m.locks_held.clone());
        r.register(
            "watchers",
            "Watchers connected to this node",
            m.watchers.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The families in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        let mut open = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut open, &self.registry) {
            tracing::warn!(error = %e, "cannot encode the metrics");
        }
        to_prometheus_text(&open)
    }
}

/// The crate writes OpenMetrics text, where a counter family `x` has samples `x_total`; the
/// Prometheus text format (what `promtool check metrics` and older scrapers read) names the
/// family as its samples. So: a counter's `HELP` and `TYPE` lines take the `_total` name, and the
/// OpenMetrics-only lines (`# EOF`, `# UNIT`) go.
fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| match l.split_once(' ') {
            Some((name, "counter")) => Some(name),
            _ => None,
        })
        .collect();
    let mut out = String::with_capacity(open.len() + 64);
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|pre| {
            let (name, tail) = line.strip_prefix(pre)?.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{pre}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The node's metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}

/// Records `d` into `h`.
pub fn observe(h: &Histogram, d: Duration) {
    h.observe(d.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_named_as_their_samples_and_openmetrics_lines_go() {
        let open = "# HELP keel_x Xs.\n# TYPE keel_x counter\nkeel_x_total 3\n\
                    # HELP keel_y Ys.\n# TYPE keel_y gauge\n# UNIT keel_y seconds\nkeel_y 1\n# EOF\n";
        assert_eq!(
            to_prometheus_text(open),
            "# HELP keel_x_total Xs.\n# TYPE keel_x_total counter\nkeel_x_total 3\n\
             # HELP keel_y Ys.\n# TYPE keel_y gauge\nkeel_y 1\n"
        );
    }

    #[test]
    fn every_family_is_exported_with_help_and_type() {
        // A labelled family shows once it has a sample.
        let m = metrics();
        let peer = PeerLabels { peer: 2 };
        m.http_requests
            .get_or_create(&HttpLabels {
                route: "/v1/kv/{key}",
                method: "GET",
                op: Op::read,
                class: "2xx",
                mode: "none",
                consistency: "default",
            })
            .inc();
        observe(
            &m.http_duration.get_or_create(&OpLabels {
                route: "/v1/kv/{key}",
                op: Op::read,
            }),
            Duration::from_millis(1),
        );
        observe(&m.peer_rtt.get_or_create(&peer), Duration::from_micros(300));
        m.peer_match_lag.get_or_create(&peer).set(1);
        m.peer_applied_lag.get_or_create(&peer).set(1);
        m.peer_unreachable.get_or_create(&peer).inc();
        m.peer_dropped.get_or_create(&peer).inc();
        let text = m.encode();
        for family in [
            "keel_http_requests_total",
            "keel_http_request_duration_seconds",
            "keel_raft_append_duration_seconds",
            "keel_apply_duration_seconds",
            "keel_snapshot_send_duration_seconds",
            "keel_snapshot_install_duration_seconds",
            "keel_proposals_committed_total",
            "keel_proposals_applied_total",
            "keel_proposals_failed_total",
            "keel_proposals_pending",
            "keel_leader_changes_total",
            "keel_read_index_duration_seconds",
            "keel_read_index_at_once_total",
            "keel_peer_round_trip_seconds",
            "keel_peer_match_lag_entries",
            "keel_peer_applied_lag_entries",
            "keel_peer_unreachable_total",
            "keel_peer_dropped_frames_total",
            "keel_raft_inbox_dropped_total",
            "keel_raft_queue_depth",
            "keel_read_index_waiting",
            "keel_lock_cancel_failed_total",
            "keel_http_connections_refused_total",
            "keel_http_connections_max",
            "keel_leases",
            "keel_locks_held",
            "keel_watchers",
        ] {
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{family}:\n{text}"
            );
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
        }
    }
}
