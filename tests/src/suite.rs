//! The fault suite's runner: a cluster of real processes behind controllable peer links, the
//! register, bank and set workloads recording every operation, a nemesis injecting and healing a
//! fault every few seconds, then the checkers and a report.
//!
//! A run is valid only if it saw at least one leader change and enough operations; an invalid
//! run fails like an anomaly does. Reports (history, fault log, report.json, report.md, and on
//! failure the node logs) go to the run's output directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::SeedableRng;
use serde_json::Value;

use crate::checker::{check_bank, check_register, check_set, RegEvent, RegOp, Verdict};
use crate::history::{History, OpRecord, Outcome};
use crate::nemesis::{self, Fault};
use crate::workload::{self, WorkloadCfg};
use crate::{wait_until, Cluster};

use report::{keep_logs, write_report};
pub use report::{Counts, Report};

mod report;

/// A fault profile: cluster size, the faults used in turn, and timing.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Name in reports.
    pub name: String,
    /// Cluster size.
    pub nodes: usize,
    /// Faults, injected in turn.
    pub faults: Vec<Fault>,
    /// Length of the faulty phase.
    pub duration: Duration,
    /// Healthy time before each fault.
    pub calm: Duration,
    /// How long each fault lasts.
    pub fault_for: Duration,
    /// Each node's data on a disk that can lose power (for the power-loss faults).
    pub power_disks: bool,
}

/// Options of one run.
#[derive(Clone, Debug)]
pub struct RunOpts {
    /// The fault profile.
    pub profile: Profile,
    /// Write modes the clients use in turn.
    pub modes: Vec<&'static str>,
    /// Register / bank / set client threads.
    pub clients: (usize, usize, usize),
    /// Per-request timeout of the clients.
    pub client_timeout: Duration,
    /// Planted bug to activate (requires the keel-planted binary).
    pub planted: Option<&'static str>,
    /// Fewest successful operations for a valid run.
    pub min_ok_ops: usize,
    /// Where the report goes.
    pub out_dir: PathBuf,
}

const ACCOUNTS: usize = 5;
/// How long a cluster may take to elect a leader after the last fault heals.
const RECOVERY: Duration = Duration::from_secs(60);
const OPENING: i64 = 100;

/// Polls every node's status and records the (term, leader) pairs seen.
fn leader_watch(
    addrs: Vec<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashSet<(u64, u64)>> {
    std::thread::spawn(move || {
        let http = crate::http::Http::new(Duration::from_millis(500), Duration::from_millis(500));
        let mut seen = HashSet::new();
        let mut polls = 0u64;
        while !stop.load(Ordering::Acquire) && polls < 1_000_000 {
            polls += 1;
            for a in &addrs {
                if let Some(v) = http.get_json(a, "/v1/status") {
                    if let (Some(t), Some(l)) = (v["term"].as_u64(), v["leader"].as_u64()) {
                        seen.insert((t, l));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    })
}

/// Reads a linearizable value, retrying until the cluster answers.
fn read_until_ok(c: &Cluster, path: &str, body: Option<&str>) -> Value {
    wait_until(
        Duration::from_secs(60),
        &format!("a final read of {path}"),
        || {
            for id in c.ids() {
                let r = match body {
                    Some(b) => c.request(id, "POST", path, &[], Some(b.as_bytes())),
                    None => c.request(id, "GET", path, &[], None),
                };
                if let Ok(r) = r {
                    if r.status == 200 {
                        return Some(
                            serde_json::from_slice(&r.body).unwrap_or(Value::String(r.text())),
                        );
                    }
                    if r.status == 404 {
                        return Some(Value::Null);
                    }
                }
            }
            None
        },
    )
}

/// Turns the register operations into per-key histories and checks each.
fn check_registers(ops: &[OpRecord]) -> (usize, usize, Vec<String>, Vec<String>) {
    let mut by_key: HashMap<&str, Vec<RegEvent>> = HashMap::new();
    let mut total = 0;
    for op in ops.iter().filter(|o| o.workload == "register") {
        let event = match (op.f, op.outcome) {
            ("read", Outcome::Ok) => Some(RegEvent {
                op: RegOp::Read(op.output.as_i64()),
                invoke: op.invoke_ns,
                complete: Some(op.complete_ns),
            }),
            ("write", Outcome::Ok | Outcome::Unknown) => op.input.as_i64().map(|v| RegEvent {
                op: RegOp::Write(v),
                invoke: op.invoke_ns,
                // An async write acknowledged from the leader's log may still be lost: to the
                // checker it is of unknown outcome.
                complete: (op.outcome == Outcome::Ok && op.mode != "async")
                    .then_some(op.complete_ns),
            }),
            ("cas", Outcome::Ok | Outcome::Unknown) => {
                let (Some(from), Some(to)) = (op.input["from"].as_i64(), op.input["to"].as_i64())
                else {
                    continue;
                };
                Some(RegEvent {
                    op: RegOp::Cas {
                        from,
                        to,
                        ok: op.output.as_bool().unwrap_or(false),
                    },
                    invoke: op.invoke_ns,
                    complete: (op.outcome == Outcome::Ok).then_some(op.complete_ns),
                })
            }
            _ => None,
        };
        if let Some(e) = event {
            total += 1;
            by_key.entry(op.key.as_str()).or_default().push(e);
        }
    }
    let mut bad = Vec::new();
    let mut undecided = Vec::new();
    let keys = by_key.len();
    for (key, events) in by_key {
        match check_register(&events, 20_000_000) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { deepest } => bad.push(format!(
                "{key} ({} ops, deepest linearization {deepest})",
                events.len()
            )),
            Verdict::Unknown => undecided.push(format!("{key} ({} ops)", events.len())),
        }
    }
    bad.sort();
    undecided.sort();
    (keys, total, bad, undecided)
}

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
    // Real packet drops when namespaces can be made (root); proxies alone otherwise.
    let netns = crate::netns::NetnsNet::available();
    if !netns {
        eprintln!(
            "[{}] not root: partitions come from the peer-link proxies",
            p.name
        );
    }
    let mut c = match Cluster::launch_spec(crate::Spec {
        nodes: p.nodes,
        extra: &extra,
        proxied: true,
        netns,
        bin,
        env: &env,
        power_disks: p.power_disks,
    }) {
        Ok(c) => c,
        Err(e) => panic!("cannot start the cluster: {e}"),
    };
    let network = if c.in_netns() {
        "netns+iptables"
    } else {
        "proxies"
    };
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
    let stop = Arc::new(AtomicBool::new(false));
    let watch_stop = Arc::new(AtomicBool::new(false));
    let watcher = leader_watch(c.endpoints(), watch_stop.clone());
    let cfg = WorkloadCfg {
        addrs: c.endpoints(),
        modes: opts.modes.clone(),
        timeout: opts.client_timeout,
        pace: Duration::from_millis(20),
        keys: 4,
        accounts: ACCOUNTS,
        opening: OPENING,
    };
    let values = Arc::new(AtomicI64::new(1));
    let elements = Arc::new(AtomicI64::new(1));
    let mut threads = Vec::new();
    let (nr, nb, ns) = opts.clients;
    for i in 0..nr {
        let (cfg, h, v, s) = (cfg.clone(), history.clone(), values.clone(), stop.clone());
        threads.push(std::thread::spawn(move || {
            workload::register_client(i, cfg, h, v, s)
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

    // The nemesis: calm, fault, heal, in turn, until the faulty phase is over.
    let mut rng = rand::rngs::StdRng::from_entropy();
    let fault_log = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = |line: String| {
        let stamped = format!("{:8.3}s {line}", history.elapsed().as_secs_f64());
        eprintln!("[{}] {stamped}", p.name);
        fault_log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(stamped);
    };
    let mut first_fault = None;
    let mut last_heal = 0.0f64;
    let mut turn = 0usize;
    while history.elapsed() + p.calm + p.fault_for <= p.duration && turn < 10_000 {
        std::thread::sleep(p.calm);
        let fault = p.faults[turn % p.faults.len()];
        turn += 1;
        let (inj, desc) = nemesis::inject(&mut c, fault, &mut rng);
        first_fault.get_or_insert(history.elapsed().as_secs_f64());
        log(format!("inject {}: {desc}", fault.name()));
        std::thread::sleep(p.fault_for);
        let healed = nemesis::heal(&mut c, inj);
        last_heal = history.elapsed().as_secs_f64();
        log(format!("heal {}: {healed}", fault.name()));
    }
    // Let the cluster recover under load, then stop the clients. A cluster that elects no leader
    // after every fault has healed did not recover: that is a finding, not a harness failure.
    let recovered = c.try_wait_for_leader(RECOVERY).is_some();
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

    // Final reads, once everything has healed (none if the cluster did not recover: the checks
    // of the final state are then skipped, and the run fails on that alone).
    let (count, present, final_bank) = if recovered {
        c.wait_for_leader();
        let count = read_until_ok(&c, "/v1/kv/set/count", None);
        let count = match &count {
            Value::Number(n) => n.as_i64().unwrap_or(0),
            Value::String(s) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let mut present = Vec::new();
        let mut after = String::new();
        for _ in 0..1000 {
            let path = format!("/v1/kv?prefix=set/e/&limit=5000&after={after}");
            let page = read_until_ok(&c, &path, None);
            for item in page["items"].as_array().into_iter().flatten() {
                if let Some(e) = item["value"].as_str().and_then(|v| v.parse::<u64>().ok()) {
                    present.push(e);
                }
                after = item["key"].as_str().unwrap_or_default().replace('/', "%2F");
            }
            if page["more"] != true {
                break;
            }
        }
        let final_bank = read_until_ok(&c, "/v1/txn", Some(&workload::read_all_body(ACCOUNTS)));
        (count, present, Some(final_bank))
    } else {
        (0, Vec::new(), None)
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
    let (register_keys, register_ops, lin_bad, undecided) = check_registers(&ops);
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
    if let Some(final_bank) = &final_bank {
        bank_reads.push(workload::parse_balances(final_bank).unwrap_or_default());
    }
    let bank_violations = check_bank(&bank_reads, ACCOUNTS, OPENING * ACCOUNTS as i64);

    let mut set = BTreeMap::new();
    let mut lost_acked = BTreeMap::new();
    let mut txn_present = 0i64;
    let present_set: HashSet<u64> = present.iter().copied().collect();
    let mut unexpected = 0;
    for mode in opts.modes.iter().filter(|_| recovered) {
        let of = |o: Outcome| -> Vec<u64> {
            ops.iter()
                .filter(|op| op.workload == "set" && op.mode == *mode && op.outcome == o)
                .filter_map(|op| op.input.as_u64())
                .collect()
        };
        let (acked, unknown) = (of(Outcome::Ok), of(Outcome::Unknown));
        let attempted: Vec<u64> = ops
            .iter()
            .filter(|op| op.workload == "set" && op.mode == *mode)
            .filter_map(|op| op.input.as_u64())
            .collect();
        let mine: Vec<u64> = present
            .iter()
            .copied()
            .filter(|e| attempted.contains(e))
            .collect();
        // Odd elements are the counted transactions.
        txn_present += mine.iter().filter(|e| *e % 2 == 1).count() as i64;
        let r = check_set(&acked, &unknown, &mine, 0);
        lost_acked.insert(mode.to_string(), r.lost.len());
        set.insert(mode.to_string(), r);
    }
    let all_attempted: HashSet<u64> = ops
        .iter()
        .filter(|op| op.workload == "set")
        .filter_map(|op| op.input.as_u64())
        .collect();
    unexpected += present_set
        .iter()
        .filter(|e| !all_attempted.contains(e))
        .count();
    let duplicates = count - txn_present;

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
    let snapshots_installed = c
        .nodes
        .iter()
        .map(|n| {
            std::fs::read_to_string(&n.log)
                .map(|t| t.matches("installed a snapshot").count())
                .unwrap_or(0)
        })
        .sum();
    let ok_ops: usize = counts.values().map(|c| c.ok).sum();
    let invalid = if leader_changes == 0
        && opts
            .profile
            .faults
            .iter()
            .any(|f| *f != Fault::Delay && *f != Fault::Loss)
    {
        Some("no leader change was seen".to_string())
    } else if ok_ops < opts.min_ok_ops {
        Some(format!(
            "only {ok_ops} successful operations (need {})",
            opts.min_ok_ops
        ))
    } else {
        None
    };
    let faults = fault_log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let report = Report {
        profile: p.name.clone(),
        planted: opts.planted.map(str::to_string),
        nodes: p.nodes,
        network: network.to_string(),
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
        unexpected,
        leader_changes,
        snapshots_installed,
        longest_unavailability_s: longest,
        throughput,
        faults: faults.clone(),
        unrecovered: !recovered,
        invalid,
        out_dir: opts.out_dir.display().to_string(),
    };
    write_report(&opts.out_dir, &report, &history, &faults, &bank_violations);
    if !report.passed() && opts.planted.is_none() {
        keep_logs(&c, &opts.out_dir);
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
        .map_or(0, |d| d.as_secs());
    base.join(format!("{name}-{stamp}"))
}
