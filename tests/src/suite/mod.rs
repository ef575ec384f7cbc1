//! The fault suite's runner: a cluster of real processes in network namespaces, behind peer-link
//! and client proxies; the register, bank and set workloads recording every operation; a
//! nemesis playing a schedule of overlapping faults drawn from a printed seed; then the checkers
//! and a report.
//!
//! A run is valid only if it saw a leader change (when its faults can cause one), no fault was
//! skipped, every membership change completed, the final state could be read, and every key and
//! every scene had enough successful reads and writes; an invalid run fails like an anomaly
//! does. Reports (schedule, history, fault log, report.json, report.md, and on failure the node
//! logs) go to the run's output directory.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::checker::reads::check_reads_with;
use crate::checker::{check_bank, check_set};
use crate::history::{History, Outcome};
use crate::nemesis::runtime::lock;
use crate::nemesis::{Action, Fault, Nemesis, Scene, Schedule, ScheduleSpec};
use crate::workload::{self, WorkloadCfg};
use crate::Cluster;

use report::{keep_logs, write_report};
pub use report::{Counts, Report};

mod check;
mod observe;
mod report;

use observe::{final_state, leader_watch};

/// A fault profile: cluster size, the scenes of faults, and timing.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Name in reports.
    pub name: String,
    /// Cluster size.
    pub nodes: usize,
    /// Scenes of overlapping faults, played in turn.
    pub scenes: Vec<Scene>,
    /// Length of the faulty phase.
    pub duration: Duration,
    /// Healthy time before each scene.
    pub calm: Duration,
    /// How long each fault lasts.
    pub fault_for: Duration,
    /// Each node's data on a disk that can lose power (for the power-loss faults).
    pub power_disks: bool,
}

impl Profile {
    /// A profile whose scenes are single faults, in turn.
    pub fn one_at_a_time(name: &str, nodes: usize, faults: &[Fault], secs: u64) -> Profile {
        Profile {
            name: name.to_string(),
            nodes,
            scenes: faults.iter().map(|f| vec![*f]).collect(),
            duration: Duration::from_secs(secs),
            calm: Duration::from_secs(2),
            fault_for: Duration::from_secs(4),
            power_disks: false,
        }
    }

    /// Every fault of every scene.
    pub fn faults(&self) -> Vec<Fault> {
        self.scenes.iter().flatten().copied().collect()
    }
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct RunOpts {
    /// The fault profile.
    pub profile: Profile,
    /// The nemesis seed.
    pub seed: u64,
    /// Write modes the clients use in turn.
    pub modes: Vec<&'static str>,
    /// Client threads of each workload.
    pub clients: Clients,
    /// Per-request timeout of the clients.
    pub client_timeout: Duration,
    /// Per-request timeout of the odd-numbered set clients.
    pub short_timeout: Duration,
    /// Planted bug to activate (requires the keel-planted binary).
    pub planted: Option<&'static str>,
    /// Fewest successful linearizable reads and writes per register key for a valid run.
    pub min_per_key: usize,
    /// Fewest successful reads and writes per scene for a valid run.
    pub min_per_scene: usize,
    /// Where the report goes.
    pub out_dir: PathBuf,
}

/// How many client threads each workload runs.
#[derive(Clone, Copy, Debug)]
pub struct Clients {
    /// Register clients: writes, compare-and-sets and reads of every kind.
    pub register: usize,
    /// Register clients that only read (linearizable `GET`s, lists, read-only transactions),
    /// one per node, each asking again as soon as it has an answer or gives up (20 ms pace, 0.4 s
    /// timeout): whenever a node starts answering reads — a new leader before its first commit,
    /// a node cut off — one of these is there to ask.
    pub readers: usize,
    /// Register clients that only write (`semi`), one per node: writes acknowledged in the
    /// last moments before a leader is lost are what a stale read after the change would miss.
    pub writers: usize,
    /// Bank clients (transfers and whole-bank reads).
    pub bank: usize,
    /// Set clients (unique adds, read at the end).
    pub set: usize,
    /// List-append clients (multi-key transactions, the Elle check).
    pub append: usize,
}

const ACCOUNTS: usize = 5;
const KEYS: usize = 4;
/// How long a cluster may take to elect a leader after the last fault heals.
const RECOVERY: Duration = Duration::from_secs(60);
const OPENING: i64 = 100;

/// Runs one profile and writes its report.
pub fn run(opts: RunOpts) -> Report {
    let _ = std::fs::create_dir_all(&opts.out_dir);
    let p = &opts.profile;
    let bin = match opts.planted {
        Some(_) => planted_bin(),
        None => crate::keel_bin(),
    };
    let env: Vec<(&str, &str)> = opts
        .planted
        .map(|b| vec![("KEEL_PLANTED_BUG", b)])
        .unwrap_or_default();
    // Frequent compaction, so that nodes that were down or cut off catch up by snapshot.
    let extra = ["--read-timeout", "2s", "--snapshot-entries", "30"];
    // Real packet drops need namespaces (root). Without them the proxies stand in, which is
    // weaker (and cannot add members): never silently.
    let netns = crate::netns::NetnsNet::available();
    let proxies_allowed = std::env::var("KEEL_FAULTS_ALLOW_PROXIES").is_ok_and(|v| v == "1");
    let c = match Cluster::launch_spec(crate::Spec {
        nodes: p.nodes,
        extra: &extra,
        proxied: true,
        netns,
        bin,
        env: &env,
        power_disks: p.power_disks,
        client_cuts: true,
        secure: false,
    }) {
        Ok(c) => c,
        Err(e) => panic!("cannot start the cluster: {e}"),
    };
    let network = if c.in_netns() {
        "netns+iptables".to_string()
    } else {
        "proxies only (weaker: not root)".to_string()
    };
    let mut c = c;
    c.wait_for_leader();
    for i in 0..ACCOUNTS {
        c.put_until_ok(
            1,
            &format!("bank/{i}"),
            OPENING.to_string().as_bytes(),
            crate::DEADLINE,
        );
    }
    c.put_until_ok(1, "set/count", b"0", crate::DEADLINE);

    let history = History::new();
    let targets: workload::Targets = Arc::new(RwLock::new(
        c.ids()
            .iter()
            .map(|&id| (id, c.client_endpoint(id)))
            .collect(),
    ));
    let mut nemesis = Nemesis::new(c, targets.clone(), history.clone());
    let stop = Arc::new(AtomicBool::new(false));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = leader_watch(nemesis.cluster.clone(), watch_stop.clone());
    let cfg = WorkloadCfg {
        targets,
        modes: opts.modes.clone(),
        timeout: opts.client_timeout,
        short_timeout: opts.short_timeout,
        reader_timeout: workload::READER_TIMEOUT.min(opts.client_timeout),
        pace: Duration::from_millis(20),
        keys: KEYS,
        accounts: ACCOUNTS,
        opening: OPENING,
    };
    let values = Arc::new(AtomicI64::new(1));
    let elements = Arc::new(AtomicI64::new(1));
    let mut threads = Vec::new();
    let Clients {
        register: nr,
        readers,
        writers,
        bank: nb,
        set: ns,
        append: na,
    } = opts.clients;
    for i in 0..nr + readers + writers {
        let (cfg, h, v, s) = (cfg.clone(), history.clone(), values.clone(), stop.clone());
        let role = if i < nr {
            workload::Role::Mixed
        } else if i < nr + readers {
            workload::Role::Reader
        } else {
            workload::Role::Writer
        };
        threads.push(std::thread::spawn(move || {
            workload::register_client(i, role, cfg, h, v, s)
        }));
    }
    for i in 0..nb {
        let (cfg, h, s) = (cfg.clone(), history.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            workload::bank_client(i, cfg, h, s)
        }));
    }
    for i in 0..ns {
        let (cfg, h, e, s) = (cfg.clone(), history.clone(), elements.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            workload::set_client(i, cfg, h, e, s)
        }));
    }

    let list_elements = Arc::new(AtomicI64::new(1));
    for i in 0..na {
        let (cfg, h, e, s) = (
            cfg.clone(),
            history.clone(),
            list_elements.clone(),
            stop.clone(),
        );
        threads.push(std::thread::spawn(move || {
            workload::append_client(i, cfg, h, e, s)
        }));
    }

    // The nemesis plays the schedule.
    let schedule = Schedule::generate(
        opts.seed,
        &ScheduleSpec {
            scenes: p.scenes.clone(),
            duration: p.duration,
            calm: p.calm,
            fault_for: p.fault_for,
        },
    );
    let described = schedule.describe();
    eprintln!(
        "[{}] KEEL_FAULT_SEED={} ({} steps)\n{described}",
        p.name,
        opts.seed,
        schedule.steps.len()
    );
    let _ = std::fs::write(opts.out_dir.join("schedule.txt"), &described);
    let fault_log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = |line: String| {
        let stamped = format!("{:8.3}s {line}", history.elapsed().as_secs_f64());
        eprintln!("[{}] {stamped}", p.name);
        lock(&fault_log).push(stamped);
    };
    log(format!(
        "seed {} (replay: KEEL_FAULT_SEED={})",
        opts.seed, opts.seed
    ));
    let t0 = history.elapsed();
    let window_starts: Vec<u64> = schedule
        .scene_starts
        .iter()
        .map(|s| (t0 + *s).as_nanos() as u64)
        .collect();
    let mut first_fault = None;
    for step in &schedule.steps {
        let due = t0 + step.at;
        let now = history.elapsed();
        if due > now {
            std::thread::sleep(due - now);
        }
        let line = match step.action {
            Action::Inject { fault, pick } => {
                first_fault.get_or_insert(history.elapsed().as_secs_f64());
                let d = nemesis.inject(step.slot, fault, pick);
                format!("slot {} inject {}: {d}", step.slot, fault.name())
            }
            Action::Heal => format!("slot {} heal: {}", step.slot, nemesis.heal(step.slot)),
        };
        log(line);
        for l in nemesis.take_log() {
            lock(&fault_log).push(l);
        }
    }
    for line in nemesis.heal_all_and_finish() {
        log(line);
    }
    for l in nemesis.take_log() {
        lock(&fault_log).push(l);
    }
    let last_heal = history.elapsed().as_secs_f64();
    // Let the cluster recover under load, then stop the clients. A cluster that elects no leader
    // after every fault has healed did not recover: that is a finding, not a harness failure.
    let recovered = lock(&nemesis.cluster)
        .try_wait_for_leader(RECOVERY)
        .is_some();
    if recovered {
        std::thread::sleep(p.calm);
    } else {
        log(format!(
            "NOT RECOVERED: no leader {} s after the last heal",
            RECOVERY.as_secs()
        ));
    }
    stop.store(true, Ordering::Release);
    for t in threads {
        let _ = t.join();
    }
    let seconds = history.elapsed().as_secs_f64();
    watch_stop.store(true, Ordering::Release);
    let seen = watcher.join().unwrap_or_default();

    // Final reads, once everything has healed.
    let mut invalid: Option<String> = None;
    let (final_read, final_lists) = if recovered {
        let mut c = lock(&nemesis.cluster);
        c.wait_for_leader();
        let lists = match observe::final_lists(&c) {
            Ok(l) => Some(l),
            Err(e) => {
                invalid = Some(e);
                None
            }
        };
        match final_state(&c) {
            Ok(s) => (Some(s), lists),
            Err(e) => {
                invalid.get_or_insert(e);
                (None, lists)
            }
        }
    } else {
        (None, None)
    };

    // Check.
    let ops = history.snapshot();
    let mut counts: BTreeMap<String, Counts> = BTreeMap::new();
    for op in &ops {
        let e = counts.entry(op.workload.to_string()).or_default();
        match op.outcome {
            Outcome::Ok => e.ok += 1,
            Outcome::Fail => e.fail += 1,
            Outcome::Unknown => e.unknown += 1,
        }
    }
    let unexpected_examples: Vec<String> =
        ops.iter().filter_map(|o| o.unexpected.clone()).collect();
    let (register_keys, register_ops, lin_bad, undecided) = check::check_registers(&ops, KEYS);
    let reads = {
        let voters = lock(&nemesis.voters).clone();
        let mut observed = check::read_observations(&ops, KEYS);
        observed.extend(check::other_reads(&ops));
        check_reads_with(
            &check::known_writes(&ops),
            &check::commit_points(&ops),
            &observed,
            &voters,
            &nemesis.power_losses,
        )
    };
    let mut bank_reads: Vec<Vec<i64>> = ops
        .iter()
        .filter(|o| o.workload == "bank" && o.f == "read_all" && o.outcome == Outcome::Ok)
        .map(|o| {
            o.output
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default()
        })
        .collect();
    let (count, present) = match &final_read {
        Some((count, present, bank)) => {
            match workload::parse_balances(bank) {
                Some(b) => bank_reads.push(b),
                None => {
                    invalid.get_or_insert(format!("the final bank read does not parse: {bank}"));
                }
            }
            (*count, present.clone())
        }
        None => (0, Vec::new()),
    };
    let append = match final_lists.as_ref().map(|f| check::check_append(&ops, f)) {
        Some(Ok(a)) => a,
        Some(Err(e)) => {
            invalid.get_or_insert(e);
            Default::default()
        }
        None => Default::default(),
    };
    if na > 0 && final_lists.is_some() && (append.appended < 20 || append.dependencies < 20) {
        invalid.get_or_insert(format!(
            "only {} list appends took effect ({} dependencies)",
            append.appended, append.dependencies
        ));
    }
    let bank_violations = check_bank(&bank_reads, ACCOUNTS, OPENING * ACCOUNTS as i64);

    let mut set = BTreeMap::new();
    let mut lost_acked = BTreeMap::new();
    let mut txn_present = 0i64;
    let present_set: HashSet<u64> = present.iter().copied().collect();
    let all_attempted: HashSet<u64> = ops
        .iter()
        .filter(|op| op.workload == "set")
        .filter_map(|op| op.input.as_u64())
        .collect();
    for mode in opts.modes.iter().filter(|_| final_read.is_some()) {
        let of = |o: Outcome| -> Vec<u64> {
            ops.iter()
                .filter(|op| op.workload == "set" && op.mode == *mode && op.outcome == o)
                .filter_map(|op| op.input.as_u64())
                .collect()
        };
        let (acked, unknown) = (of(Outcome::Ok), of(Outcome::Unknown));
        let attempted: HashSet<u64> = ops
            .iter()
            .filter(|op| op.workload == "set" && op.mode == *mode)
            .filter_map(|op| op.input.as_u64())
            .collect();
        let mine: Vec<u64> = present
            .iter()
            .copied()
            .filter(|e| attempted.contains(e))
            .collect();
        txn_present += mine.iter().filter(|e| workload::is_counted(**e)).count() as i64;
        let r = check_set(&acked, &unknown, &mine, 0);
        lost_acked.insert(mode.to_string(), r.lost.len());
        set.insert(mode.to_string(), r);
    }
    let unexpected = present_set
        .iter()
        .filter(|e| !all_attempted.contains(e))
        .count();
    let duplicates = if final_read.is_some() {
        count - txn_present
    } else {
        0
    };

    // Availability and throughput.
    let mut ok_times: Vec<f64> = ops
        .iter()
        .filter(|o| o.outcome == Outcome::Ok)
        .map(|o| o.complete_ns as f64 / 1e9)
        .collect();
    ok_times.sort_by(f64::total_cmp);
    let longest = ok_times
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(ok_times.first().copied().unwrap_or(seconds), f64::max);
    let first = first_fault.unwrap_or(seconds);
    let rate = |from: f64, to: f64| {
        let n = ok_times.iter().filter(|t| **t >= from && **t < to).count();
        if to > from {
            n as f64 / (to - from)
        } else {
            0.0
        }
    };
    let mut throughput = BTreeMap::new();
    throughput.insert("before".to_string(), rate(0.0, first));
    throughput.insert("during".to_string(), rate(first, last_heal.max(first)));
    throughput.insert("after".to_string(), rate(last_heal, seconds));

    let leader_changes = seen.len().saturating_sub(1);
    let snapshots_installed = {
        let c = lock(&nemesis.cluster);
        c.nodes
            .iter()
            .map(|n| {
                std::fs::read_to_string(&n.log)
                    .map(|t| t.matches("installed a snapshot").count())
                    .unwrap_or(0)
            })
            .sum()
    };
    if invalid.is_none() && !netns && !proxies_allowed {
        invalid = Some(
            "not root: partitions would come from proxies only (set KEEL_FAULTS_ALLOW_PROXIES=1 \
             to run the weaker suite knowingly)"
                .into(),
        );
    }
    if invalid.is_none()
        && leader_changes == 0
        && p.faults().iter().any(|f| f.disturbs_leadership())
    {
        invalid = Some("no leader change was seen".to_string());
    }
    if invalid.is_none() && !nemesis.skipped.is_empty() {
        invalid = Some(format!("faults skipped: {:?}", nemesis.skipped));
    }
    if invalid.is_none() && !nemesis.failed_jobs.is_empty() {
        invalid = Some(format!(
            "membership changes failed: {:?}",
            nemesis.failed_jobs
        ));
    }
    if invalid.is_none() {
        invalid = check::too_thin(
            &ops,
            KEYS,
            &window_starts,
            history.now(),
            opts.min_per_key,
            opts.min_per_scene,
        );
    }
    let faults = lock(&fault_log).clone();
    let report = Report {
        profile: p.name.clone(),
        seed: opts.seed,
        schedule: described.clone(),
        planted: opts.planted.map(str::to_string),
        nodes: p.nodes,
        network,
        seconds,
        counts,
        register_keys,
        register_ops,
        linearizability_anomalies: lin_bad,
        undecided_keys: undecided,
        bank_reads: bank_reads.len(),
        bank_violations: bank_violations.len(),
        set,
        lost_acked_writes: lost_acked,
        duplicates,
        reads,
        unexpected_responses: unexpected_examples.len(),
        unexpected_examples: unexpected_examples.into_iter().take(10).collect(),
        skipped_faults: nemesis.skipped.clone(),
        weaker_faults: nemesis.weaker.clone(),
        membership_changes: nemesis.membership_changes,
        failed_membership: nemesis.failed_jobs.clone(),
        transfers: nemesis.transfers,
        unexpected,
        leader_changes,
        snapshots_installed,
        longest_unavailability_s: longest,
        throughput,
        faults: faults.clone(),
        unrecovered: !recovered,
        invalid,
        append,
        out_dir: opts.out_dir.display().to_string(),
    };
    write_report(&opts.out_dir, &report, &history, &faults, &bank_violations);
    if !report.passed() || opts.planted.is_some() {
        keep_logs(&lock(&nemesis.cluster), &opts.out_dir);
    }
    report
}

/// The planted-bug build of keel (`KEEL_PLANTED_BIN`, or `keel-planted` next to `keel`).
pub fn planted_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KEEL_PLANTED_BIN") {
        return PathBuf::from(p);
    }
    let bin = crate::keel_bin().with_file_name("keel-planted");
    assert!(
        bin.exists(),
        "{} not found: build it with `cargo build --release -p keel --features planted-bugs` \
         and copy target/release/keel to target/release/keel-planted (scripts/test.sh does this)",
        bin.display()
    );
    bin
}

/// Where a run's report goes: `target/fault-reports/<name>-<unix time>`.
pub fn report_dir(name: &str) -> PathBuf {
    let base = crate::keel_bin()
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("fault-reports"))
        .unwrap_or_else(|| PathBuf::from("fault-reports"));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    base.join(format!("{name}-{stamp}"))
}
