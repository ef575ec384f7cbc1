//! Checks of every read kind against the log: each read names the index it was read at
//! (`X-Keel-Index`, a transaction's or a list's `index`) and the version of each value (the
//! index of the write that made it), and each acknowledged write names its index. From these:
//!
//! - **Snapshot consistency** (every read kind, lists and read-only transactions included): a
//!   value read at index `r` with version `j` must have `j <= r`, must be the value that the
//!   write at `j` wrote, and no acknowledged write of that key may lie in `(j, r]`; a key read as
//!   absent at `r` may have no acknowledged write at or below `r`. For a list this says that all
//!   its items come from one state of the log, the state at `r`.
//! - **Recency** (linearizable `GET`s, read-only transactions and lists): a read invoked after
//!   a write was acknowledged is read at or beyond that write's index (a read index is the
//!   leader's commit index, which covers every acknowledged write), and sees that key at that
//!   write's version or a later one; and a read invoked after another linearizable read
//!   completed is read at or beyond that read's index (what a read saw was committed, so the
//!   next read's index covers it: X-Keel-Index never goes back in real time). A sufficient condition for a stale read that needs no
//!   search, so it decides where the linearizability search may run out of budget.
//! - **`min_index`**: a read given `min_index = N` is read at `r >= N`.
//! - **Sessions**: a client's session reads (`stale&min_index` = the highest index the client has
//!   seen) are monotonic (their indexes and, per key, their versions never go back) and see the
//!   client's own acknowledged `semi`/`sync` writes.
//! - **`sync` visibility**: a `stale` read on a node that was a voter from before a `sync` write
//!   was sent until after the read, invoked after the write was acknowledged, is read at or
//!   beyond that write's index (every voter had applied it). Nodes that lost power after the
//!   acknowledgement are left out (the state machine's own writes are not fsynced: the
//!   documented caveat of `sync` under power loss).
//!
//! `async` writes are never "acknowledged" here: acknowledged from the leader's log, they may be
//! lost and their index reused by another entry.

use std::collections::{BTreeMap, HashMap};

/// A write whose index is known: acknowledged (`semi` or `sync`), or a successful compare-and-set.
#[derive(Clone, Debug)]
pub struct KnownWrite {
    /// The key.
    pub key: String,
    /// The value written.
    pub value: i64,
    /// Its log index (the key's version after it).
    pub index: u64,
    /// `semi` or `sync`.
    pub mode: String,
    /// The client that wrote it.
    pub client: usize,
    /// When it was sent.
    pub invoke: u64,
    /// When it was acknowledged.
    pub complete: u64,
}

/// One key as a read saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRead {
    /// The key.
    pub key: String,
    /// The value, None if absent.
    pub value: Option<i64>,
    /// Its version (None if absent).
    pub version: Option<u64>,
}

/// What kind of read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReadKind {
    /// `GET` with the default consistency.
    Linearizable,
    /// A read-only transaction.
    Txn,
    /// A list of a prefix.
    List,
    /// `consistency=stale`.
    Stale,
    /// `consistency=stale&min_index=N`, N the client's session index.
    Session,
}

/// One successful read.
#[derive(Clone, Debug)]
pub struct ReadObs {
    /// Position in the history (for messages).
    pub op: usize,
    /// The client.
    pub client: usize,
    /// The node that answered.
    pub node: u64,
    /// The kind.
    pub kind: ReadKind,
    /// When it was sent.
    pub invoke: u64,
    /// When it was answered.
    pub complete: u64,
    /// The index it was read at.
    pub at: u64,
    /// The `min_index` it was given.
    pub min_index: Option<u64>,
    /// What it saw.
    pub items: Vec<KeyRead>,
}

/// When each node was a voter, as the harness knows it (conservatively: from the end of its
/// promotion, until its removal was first asked for).
#[derive(Clone, Debug, Default)]
pub struct VoterTimeline {
    /// Node → (voter from, voter until; None while still a voter).
    pub spans: HashMap<u64, (u64, Option<u64>)>,
}

impl VoterTimeline {
    /// Whether `node` was a voter over the whole of `[from, to]`.
    pub fn voter_throughout(&self, node: u64, from: u64, to: u64) -> bool {
        match self.spans.get(&node) {
            Some((since, until)) => *since <= from && until.is_none_or(|u| u > to),
            None => false,
        }
    }
}

/// The findings, by check.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ReadFindings {
    /// Reads checked, per kind.
    pub checked: BTreeMap<String, usize>,
    /// Anomalies, per check.
    pub anomalies: BTreeMap<String, usize>,
    /// The first few anomalies, described.
    pub examples: Vec<String>,
}

impl ReadFindings {
    fn flag(&mut self, check: &str, what: String) {
        *self.anomalies.entry(check.to_string()).or_default() += 1;
        if self.examples.len() < 20 {
            self.examples.push(format!("{check}: {what}"));
        }
    }

    /// Every anomaly found.
    pub fn total(&self) -> usize {
        self.anomalies.values().sum()
    }
}

/// Runs every check over the successful reads and the known writes. `power_losses` are
/// (node, time) pairs.
pub fn check_reads(
    writes: &[KnownWrite],
    reads: &[ReadObs],
    voters: &VoterTimeline,
    power_losses: &[(u64, u64)],
) -> ReadFindings {
    check_reads_with(writes, &[], reads, voters, power_losses)
}

/// [`check_reads`], with the (acknowledged at, index) of other workloads' writes that were
/// committed when acknowledged: linearizable reads are held to those indexes too.
pub fn check_reads_with(
    writes: &[KnownWrite],
    commits: &[(u64, u64)],
    reads: &[ReadObs],
    voters: &VoterTimeline,
    power_losses: &[(u64, u64)],
) -> ReadFindings {
    let mut f = ReadFindings::default();
    // key → index → value.
    let mut by_key: HashMap<&str, BTreeMap<u64, i64>> = HashMap::new();
    for w in writes {
        by_key.entry(&w.key).or_default().insert(w.index, w.value);
    }
    let empty = BTreeMap::new();
    for r in reads {
        *f.checked.entry(format!("{:?}", r.kind)).or_default() += 1;
        if let Some(n) = r.min_index {
            if r.at < n {
                f.flag(
                    "min_index",
                    format!("op {} read at {} < min_index {n}", r.op, r.at),
                );
            }
        }
        for item in &r.items {
            let known = by_key.get(item.key.as_str()).unwrap_or(&empty);
            snapshot_check(&mut f, r, item, known);
        }
    }
    recency_check(&mut f, writes, commits, reads);
    session_check(&mut f, writes, reads);
    sync_check(&mut f, writes, reads, voters, power_losses);
    f
}

/// The value of one key in a read agrees with the log at the read's index.
fn snapshot_check(f: &mut ReadFindings, r: &ReadObs, item: &KeyRead, known: &BTreeMap<u64, i64>) {
    let (op, at, key) = (r.op, r.at, &item.key);
    match (item.value, item.version) {
        (None, _) => {
            if let Some((i, v)) = known.range(..=at).next_back() {
                f.flag(
                    "snapshot",
                    format!(
                        "op {op} ({:?}) read {key} absent at {at}, but {v} was written at {i}",
                        r.kind
                    ),
                );
            }
        }
        (Some(value), None) => f.flag(
            "snapshot",
            format!("op {op} read {key} = {value} without a version"),
        ),
        (Some(value), Some(j)) => {
            if j > at {
                f.flag(
                    "snapshot",
                    format!(
                        "op {op} ({:?}) read {key} version {j} > its index {at}",
                        r.kind
                    ),
                );
                return;
            }
            if let Some(w) = known.get(&j) {
                if *w != value {
                    f.flag(
                        "snapshot",
                        format!("op {op} read {key} = {value} at version {j}, written as {w}"),
                    );
                }
            }
            let later = if j < at {
                known.range(j + 1..=at).next()
            } else {
                None
            };
            if let Some((i, v)) = later {
                f.flag(
                    "snapshot",
                    format!(
                        "op {op} ({:?}) read {key} = {value} (version {j}) at {at}, but {v} was \
                         written at {i}",
                        r.kind
                    ),
                );
            }
        }
    }
}

/// For writes sorted by acknowledgement: (acknowledged at, highest index acknowledged so far).
fn acked_prefix_max(mut ws: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ws.sort_unstable();
    let mut max = 0;
    for w in &mut ws {
        max = max.max(w.1);
        w.1 = max;
    }
    ws
}

/// The highest index acknowledged strictly before `t`, if any.
fn acked_before(prefix: &[(u64, u64)], t: u64) -> Option<u64> {
    let n = prefix.partition_point(|(c, _)| *c < t);
    n.checked_sub(1).map(|i| prefix[i].1)
}

/// Linearizable reads see every write acknowledged before they were sent.
fn recency_check(
    f: &mut ReadFindings,
    writes: &[KnownWrite],
    commits: &[(u64, u64)],
    reads: &[ReadObs],
) {
    let linearizable = [ReadKind::Linearizable, ReadKind::Txn, ReadKind::List];
    let all = acked_prefix_max(
        writes
            .iter()
            .map(|w| (w.complete, w.index))
            .chain(commits.iter().copied())
            .chain(
                reads
                    .iter()
                    .filter(|r| linearizable.contains(&r.kind))
                    .map(|r| (r.complete, r.at)),
            )
            .collect(),
    );
    let mut keys: HashMap<&str, Vec<&KnownWrite>> = HashMap::new();
    for w in writes {
        keys.entry(&w.key).or_default().push(w);
    }
    let per_key: HashMap<&str, Vec<(u64, u64)>> = keys
        .into_iter()
        .map(|(k, ws)| {
            let ws = ws.into_iter().map(|w| (w.complete, w.index)).collect();
            (k, acked_prefix_max(ws))
        })
        .collect();
    for r in reads.iter().filter(|r| linearizable.contains(&r.kind)) {
        if let Some(i) = acked_before(&all, r.invoke) {
            if r.at < i {
                f.flag(
                    "recency",
                    format!(
                        "op {} ({:?}) read at {} on node {}, sent after a write or a read at \
                         {i} was answered",
                        r.op, r.kind, r.at, r.node
                    ),
                );
                continue;
            }
        }
        for item in &r.items {
            let Some(prefix) = per_key.get(item.key.as_str()) else {
                continue;
            };
            let Some(i) = acked_before(prefix, r.invoke) else {
                continue;
            };
            let seen = item.version.unwrap_or(0);
            if seen < i {
                f.flag(
                    "recency",
                    format!(
                        "op {} ({:?}) on node {} read {} at version {seen}, sent after its write \
                         at {i} was acknowledged",
                        r.op, r.kind, r.node, item.key
                    ),
                );
            }
        }
    }
}

/// Session reads are monotonic and read the session's own writes.
fn session_check(f: &mut ReadFindings, writes: &[KnownWrite], reads: &[ReadObs]) {
    let mut by_client: HashMap<usize, Vec<&ReadObs>> = HashMap::new();
    for r in reads.iter().filter(|r| r.kind == ReadKind::Session) {
        by_client.entry(r.client).or_default().push(r);
    }
    for (client, mut rs) in by_client {
        rs.sort_by_key(|r| r.invoke);
        let mut last_at = 0;
        let mut last_version: HashMap<&str, u64> = HashMap::new();
        for r in &rs {
            if r.at < last_at {
                f.flag(
                    "monotonic",
                    format!(
                        "client {client}: op {} read at {} after a read at {last_at}",
                        r.op, r.at
                    ),
                );
            }
            last_at = last_at.max(r.at);
            for item in &r.items {
                let v = item.version.unwrap_or(0);
                let prev = last_version.entry(&item.key).or_insert(0);
                if v < *prev {
                    f.flag(
                        "monotonic",
                        format!(
                            "client {client}: op {} read {} version {v} after version {prev}",
                            r.op, item.key
                        ),
                    );
                }
                *prev = (*prev).max(v);
                // The client's own latest acknowledged write of this key before the read.
                let own = writes
                    .iter()
                    .filter(|w| w.client == client && w.key == item.key && w.complete < r.invoke)
                    .map(|w| w.index)
                    .max();
                if let Some(i) = own {
                    if v < i {
                        f.flag(
                            "read_your_writes",
                            format!(
                                "client {client}: op {} read {} version {v}, its own write was at {i}",
                                r.op, item.key
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// A `sync` write, once acknowledged, is applied on every voter.
fn sync_check(
    f: &mut ReadFindings,
    writes: &[KnownWrite],
    reads: &[ReadObs],
    voters: &VoterTimeline,
    power_losses: &[(u64, u64)],
) {
    let stale: Vec<&ReadObs> = reads
        .iter()
        .filter(|r| matches!(r.kind, ReadKind::Stale | ReadKind::Session))
        .collect();
    for w in writes.iter().filter(|w| w.mode == "sync") {
        for r in stale
            .iter()
            .filter(|r| r.invoke > w.complete && r.at < w.index)
        {
            if !voters.voter_throughout(r.node, w.invoke, r.complete) {
                continue;
            }
            let lost_power = power_losses
                .iter()
                .any(|(n, t)| *n == r.node && *t >= w.invoke && *t <= r.complete);
            if lost_power {
                continue;
            }
            f.flag(
                "sync_visibility",
                format!(
                    "op {} on voter {} read at {} after sync write {}={} at {} was acknowledged",
                    r.op, r.node, r.at, w.key, w.value, w.index
                ),
            );
        }
    }
}
