//! The fault suite's report: what the checkers counted, whether the run passed, and the files a
//! run leaves behind (history, fault log, report.json, report.md, node logs on failure).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use serde_json::{json, Value};

use crate::checker::reads::ReadFindings;
use crate::checker::SetReport;
use crate::history::History;
use crate::Cluster;

/// Counts of outcomes.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counts {
    /// Successful operations.
    pub ok: usize,
    /// Operations that certainly had no effect.
    pub fail: usize,
    /// Operations of unknown outcome.
    pub unknown: usize,
}

/// The result of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Profile name.
    pub profile: String,
    /// The nemesis seed (`KEEL_FAULT_SEED` replays the schedule).
    pub seed: u64,
    /// The schedule the seed gave, as printed (a replay must give the same text).
    pub schedule: String,
    /// Planted bug, if any.
    pub planted: Option<String>,
    /// Nodes.
    pub nodes: usize,
    /// How partitions were made: `netns+iptables` or `proxies`.
    pub network: String,
    /// Seconds the workloads ran.
    pub seconds: f64,
    /// Outcomes per workload.
    pub counts: BTreeMap<String, Counts>,
    /// Register keys checked.
    pub register_keys: usize,
    /// Register operations checked.
    pub register_ops: usize,
    /// Keys whose history is not linearizable.
    pub linearizability_anomalies: Vec<String>,
    /// Keys the checker could not decide within its budget.
    pub undecided_keys: Vec<String>,
    /// Bank reads checked (during the run and the final one).
    pub bank_reads: usize,
    /// Bank reads that broke the invariant.
    pub bank_violations: usize,
    /// Set results per mode.
    pub set: BTreeMap<String, SetReport>,
    /// Acknowledged set adds lost, per mode.
    pub lost_acked_writes: BTreeMap<String, usize>,
    /// Adds applied twice (counter larger than the elements present) or, when negative,
    /// elements present without their increment: either way an anomaly.
    pub duplicates: i64,
    /// The checks of every read kind against the log (snapshots, `min_index`, sessions, `sync`
    /// visibility).
    pub reads: ReadFindings,
    /// Answers keel should never have given (a status or a body outside the API), with the
    /// first few of them.
    pub unexpected_responses: usize,
    /// The first unexpected answers.
    pub unexpected_examples: Vec<String>,
    /// Faults the nemesis could not inject (no target): the run is then not valid.
    pub skipped_faults: Vec<String>,
    /// Faults that landed weaker than scheduled (no free leader to aim at, a transfer that did
    /// not happen): reported, not failing.
    pub weaker_faults: Vec<String>,
    /// Membership changes completed (learner added and promoted, a voter removed).
    pub membership_changes: usize,
    /// Membership changes that did not complete: the run is then not valid.
    pub failed_membership: Vec<String>,
    /// Leader transfers answered 200.
    pub transfers: usize,
    /// Elements read that no add attempted.
    pub unexpected: usize,
    /// Distinct (term, leader) pairs seen, minus one.
    pub leader_changes: usize,
    /// Snapshots installed by nodes that fell behind the compacted log.
    pub snapshots_installed: usize,
    /// Longest time without any successful operation, in seconds.
    pub longest_unavailability_s: f64,
    /// Successful operations per second before the first fault, during the faults, after the
    /// last heal.
    pub throughput: BTreeMap<String, f64>,
    /// The faults injected, with times.
    pub faults: Vec<String>,
    /// The cluster elected no leader after the last fault healed (an anomaly: the final state
    /// could not be read, so the set and final bank checks were skipped).
    pub unrecovered: bool,
    /// Why the run is invalid, if it is.
    pub invalid: Option<String>,
    /// The list-append (Elle) check.
    pub append: crate::checker::append::AppendFindings,
    /// Where the report files are.
    pub out_dir: String,
}

impl Report {
    /// Every anomaly the run found (semi and sync writes lost, duplicates, unexpected values,
    /// non-linearizable keys, bank violations). Lost async writes are not anomalies.
    pub fn anomalies(&self) -> usize {
        let lost: usize = self
            .lost_acked_writes
            .iter()
            .filter(|(mode, _)| mode.as_str() != "async")
            .map(|(_, n)| n)
            .sum();
        self.linearizability_anomalies.len()
            + usize::from(self.unrecovered)
            + self.bank_violations
            + lost
            + self.duplicates.unsigned_abs() as usize
            + self.unexpected
            + self.reads.total()
            + self.unexpected_responses
            + self.append.total()
    }

    /// Valid and free of anomalies.
    pub fn passed(&self) -> bool {
        self.invalid.is_none() && self.anomalies() == 0 && self.undecided_keys.is_empty()
    }

    /// A short human summary.
    pub fn summary(&self) -> String {
        let c = |w: &str| {
            self.counts
                .get(w)
                .map(|c| format!("{}/{}/{}", c.ok, c.fail, c.unknown))
                .unwrap_or_default()
        };
        format!(
            "profile {} (seed {}, {} nodes, {}{}): {:.0} s; ok/fail/unknown register {} bank {} set {} append {}; \
             {} register keys ({} ops) checked, {} not linearizable, {} undecided; \
             {} bank reads, {} violations; {} append transactions took effect ({} appends) on {} keys, \
             anomalies {:?}; acked adds lost {:?}; duplicates {}; unexpected {}; \
             reads checked {:?}, read anomalies {:?}; unexpected answers {}; membership changes {} \
             ({} failed); transfers {}; skipped faults {}; weaker faults {}; \
             leader changes {}; snapshots installed {}; longest unavailability {:.1} s; ops/s {:?}{}{}",
            self.profile,
            self.seed,
            self.nodes,
            self.network,
            self.planted
                .as_ref()
                .map(|p| format!(", planted bug {p}"))
                .unwrap_or_default(),
            self.seconds,
            c("register"),
            c("bank"),
            c("set"),
            c("append"),
            self.register_keys,
            self.register_ops,
            self.linearizability_anomalies.len(),
            self.undecided_keys.len(),
            self.bank_reads,
            self.bank_violations,
            self.append.committed,
            self.append.appended,
            self.append.keys,
            self.append.anomalies,
            self.lost_acked_writes,
            self.duplicates,
            self.unexpected,
            self.reads.checked,
            self.reads.anomalies,
            self.unexpected_responses,
            self.membership_changes,
            self.failed_membership.len(),
            self.transfers,
            self.skipped_faults.len(),
            self.weaker_faults.len(),
            self.leader_changes,
            self.snapshots_installed,
            self.longest_unavailability_s,
            self.throughput,
            if self.unrecovered {
                "; NOT RECOVERED: no leader after the last heal"
            } else {
                ""
            },
            self.invalid
                .as_ref()
                .map(|r| format!("; INVALID: {r}"))
                .unwrap_or_default()
        )
    }
}

pub(super) fn write_report(
    dir: &Path,
    report: &Report,
    history: &History,
    faults: &[String],
    bank_violations: &[crate::checker::BankViolation],
) {
    let _ = history.write_jsonl(&dir.join("history.jsonl"));
    let _ = std::fs::write(dir.join("faults.log"), faults.join("\n") + "\n");
    let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
    v["bank_violation_examples"] = json!(bank_violations
        .iter()
        .take(10)
        .map(|b| json!({"read": b.read, "balances": b.balances, "reason": b.reason}))
        .collect::<Vec<_>>());
    let _ = std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(&v).unwrap_or_default(),
    );
    let md = format!(
        "# Fault run: {}\n\n{}\n\nanomalies: {}\n\nfaults:\n\n```\n{}\n```\n",
        report.profile,
        report.summary(),
        report.anomalies(),
        faults.join("\n")
    );
    let _ = std::fs::write(dir.join("report.md"), md);
}

pub(super) fn keep_logs(c: &Cluster, dir: &Path) {
    for n in &c.nodes {
        let _ = std::fs::copy(&n.log, dir.join(format!("node{}.log", n.id)));
    }
}
