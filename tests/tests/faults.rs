//! The fault suite (SPEC §7): real clusters in network namespaces under overlapping faults —
//! partitions during pauses, kills during membership changes, delay plus loss plus leader
//! transfers, clients cut off from nodes — drawn from a printed seed, with every operation
//! recorded and checked (linearizability per register key, every read kind against the log,
//! sessions, `sync` visibility, the bank invariant, set completeness and duplicates).
//!
//! Each planted bug runs on the very profile and seed of the control run of the correct binary
//! beside it: the control must pass and the planted bug must be caught. `KEEL_FAULT_SEED`
//! replays a seed; `scripts/faults.sh` runs the long profiles.

use std::io::Write as _;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use keel_tests::nemesis::{seed_from_env, Fault, Schedule, ScheduleSpec};
use keel_tests::suite::{report_dir, run, Clients, Profile, Report, RunOpts};

/// One fault run at a time: each loads a cluster and the two cores fully.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// The seed every run of this process shares (control and planted runs alike).
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = seed_from_env();
        eprintln!("fault suite seed: KEEL_FAULT_SEED={s}");
        s
    })
}

/// The combined profile: overlapping faults of every kind, membership changes and client
/// partitions, on three nodes.
fn combined(secs: u64) -> Profile {
    Profile {
        name: "combined".to_string(),
        nodes: 3,
        scenes: vec![
            // A partition during a pause.
            vec![Fault::PauseLeader, Fault::PartitionHalves],
            // A kill during a membership change.
            vec![Fault::Membership, Fault::KillLeader],
            // On slow links, the leader stops reaching its followers while it still hears them:
            // it commits what is in flight and cannot say so, and the next leader learns of it
            // only once it has committed in its own term.
            vec![Fault::Delay, Fault::OneWayLeaderOut],
            // Clients cut off from a follower while the leader is cut off from its peers (its
            // clients still reach it).
            vec![Fault::ClientsOffRandom, Fault::PartitionLeader],
            // A learner while a voter lags (cut off from its peers, its clients still reach it).
            vec![Fault::IsolateFollower, Fault::Membership],
            // Delay plus loss plus a leader transfer.
            vec![Fault::Delay, Fault::Loss, Fault::TransferLeader],
            // A kill while the leader's links refuse connections.
            vec![Fault::RejectLeader, Fault::KillRandom],
            // Clients cut off from the leader, which is then killed on slow links.
            vec![Fault::ClientsOffLeader, Fault::Delay, Fault::KillLeader],
        ],
        duration: Duration::from_secs(secs),
        calm: Duration::from_secs(2),
        fault_for: Duration::from_secs(5),
        power_disks: false,
    }
}

/// The power-loss profile: every node's data on a disk that forgets what was not fsynced; power
/// lost on one node, on a minority and on every node at once, overlapping kills.
fn power(secs: u64) -> Profile {
    Profile {
        name: "power-loss".to_string(),
        nodes: 3,
        scenes: vec![
            vec![Fault::PowerLossRandom],
            vec![Fault::KillLeader, Fault::PowerLossMinority],
            vec![Fault::PowerLossAll],
            vec![Fault::Delay, Fault::PowerLossRandom],
        ],
        duration: Duration::from_secs(secs),
        calm: Duration::from_secs(2),
        fault_for: Duration::from_secs(4),
        power_disks: true,
    }
}

fn opts(profile: Profile, planted: Option<&'static str>) -> RunOpts {
    let name = match planted {
        Some(b) => format!("{}-planted-{b}", profile.name),
        None => profile.name.clone(),
    };
    RunOpts {
        out_dir: report_dir(&name),
        profile,
        seed: seed(),
        modes: vec!["semi", "sync", "async"],
        clients: Clients {
            register: 4,
            readers: 3,
            writers: 3,
            bank: 2,
            set: 6,
            append: 2,
        },
        client_timeout: Duration::from_millis(1500),
        short_timeout: Duration::from_millis(100),
        planted,
        min_per_key: 10,
        min_per_scene: 5,
    }
}

fn expect_pass(r: &Report) {
    eprintln!("{}", r.summary());
    assert!(
        r.passed(),
        "fault run failed (see {}; replay with KEEL_FAULT_SEED={}): {}",
        r.out_dir,
        r.seed,
        r.summary()
    );
}

/// What the checkers caught in a planted run, by check.
fn caught(r: &Report) -> Vec<(String, String)> {
    let mut c = Vec::new();
    let lost: usize = r
        .lost_acked_writes
        .iter()
        .filter(|(m, _)| m.as_str() != "async")
        .map(|(_, n)| n)
        .sum();
    if lost > 0 {
        c.push((
            "lost".into(),
            format!("{lost} acknowledged semi/sync adds lost"),
        ));
    }
    if !r.linearizability_anomalies.is_empty() {
        c.push((
            "linearizability".into(),
            format!(
                "{} register keys not linearizable",
                r.linearizability_anomalies.len()
            ),
        ));
    }
    for (check, n) in &r.reads.anomalies {
        c.push((check.clone(), format!("{n} {check} anomalies")));
    }
    for (kind, n) in &r.append.anomalies {
        c.push(("append".into(), format!("{n} list-append {kind} anomalies")));
    }
    if r.bank_violations > 0 {
        c.push((
            "bank".into(),
            format!("{} bank violations", r.bank_violations),
        ));
    }
    if r.duplicates != 0 {
        c.push((
            "duplicates".into(),
            format!("{} adds applied twice", r.duplicates),
        ));
    }
    c
}

/// The planted bug must be caught by one of the checks that guard what it breaks (`by`).
fn expect_caught(bug: &str, by: &[&str], r: &Report) {
    assert!(
        is_caught(bug, by, r),
        "planted bug {bug} NOT caught by {by:?} on seed {} (see {}): {}",
        r.seed,
        r.out_dir,
        r.summary()
    );
}

/// Whether one of the checks in `by` caught the planted bug (printed either way).
fn is_caught(bug: &str, by: &[&str], r: &Report) -> bool {
    eprintln!("{}", r.summary());
    let all = caught(r);
    let relevant = all
        .iter()
        .filter(|(check, _)| by.contains(&check.as_str()))
        .count();
    if relevant == 0 {
        eprintln!(
            "planted bug {bug} not caught by {by:?} on seed {} (see {})",
            r.seed, r.out_dir
        );
        return false;
    }
    eprintln!(
        "planted bug {bug} caught on seed {}: {}",
        r.seed,
        all.iter()
            .map(|(_, w)| w.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    );
    true
}

/// The control run: the correct binary on the combined profile and this process's seed, run
/// once and shared by every planted run (whichever test comes first runs it).
/// Length of the combined profile's runs in `.ci/run` (the control and each planted bug, on the
/// same seed and schedule). Its eight scenes take about 75 s whatever this says (every scene
/// plays once): a shorter setting saves nothing and changes the schedule.
const CI_COMBINED_SECS: u64 = 60;
/// Length of the power-loss profile's runs in `.ci/run` (its four scenes take about 24 s):
/// `skip-fsync` was seen caught at this length (docs/testing.md).
const CI_POWER_SECS: u64 = 30;

fn control() -> Report {
    static CONTROL: OnceLock<Report> = OnceLock::new();
    CONTROL
        .get_or_init(|| run(opts(combined(CI_COMBINED_SECS), None)))
        .clone()
}

/// One planted bug on the combined profile, beside the control on the same seed: the control
/// passes, the planted bug is caught.
fn planted_pair(bug: &'static str, by: &[&str]) {
    planted_replays(bug, by, 1);
}

/// As [`planted_pair`], for a bug that shows only when the schedule's fault meets the right
/// timing: the same seed is replayed up to `tries` times, and the bug must be caught in one of
/// them (every replay plays the control's schedule; what varies is the timing within it).
fn planted_replays(bug: &'static str, by: &[&str], tries: usize) {
    assert!(tries >= 1, "at least one run");
    let _serial = serial();
    let c = control();
    expect_pass(&c);
    for attempt in 1..=tries {
        let r = run(opts(combined(CI_COMBINED_SECS), Some(bug)));
        // The same seed replays the same schedule.
        assert_eq!(r.seed, c.seed);
        assert_eq!(
            r.schedule, c.schedule,
            "the same seed gave another schedule"
        );
        if attempt == tries {
            expect_caught(bug, by, &r);
        } else if is_caught(bug, by, &r) {
            return;
        } else {
            // Written past the test harness's capture, so that CI's log counts the misses.
            let _ = writeln!(
                std::io::stderr(),
                "planted bug {bug}: replay {attempt} of {tries} on seed {} missed it (see {}); \
                 replaying",
                r.seed,
                r.out_dir
            );
        }
    }
}

#[test]
fn combined_faults_with_membership_and_client_partitions_lose_nothing() {
    let _serial = serial();
    let r = control();
    expect_pass(&r);
    assert!(r.membership_changes >= 1, "{}", r.summary());
    assert!(
        r.append.appended >= 100 && r.append.dependencies >= 100,
        "too few list-append transactions: {}",
        r.summary()
    );
    for kind in ["Linearizable", "Txn", "List", "Stale", "Session"] {
        assert!(
            r.reads.checked.get(kind).copied().unwrap_or(0) >= 10,
            "too few {kind} reads checked: {:?}",
            r.reads.checked
        );
    }
}

#[test]
fn planted_stale_reads_are_caught_on_the_combined_profile() {
    planted_pair(
        "stale-read",
        &["linearizability", "snapshot", "recency", "append"],
    );
}

#[test]
fn planted_early_acknowledgement_is_caught_on_the_combined_profile() {
    planted_pair("early-ack", &["lost", "linearizability", "recency"]);
}

#[test]
fn planted_idempotency_skip_is_caught_on_the_combined_profile() {
    planted_pair("skip-idempotency", &["duplicates"]);
}

#[test]
fn planted_learner_in_the_sync_quorum_is_caught_on_the_combined_profile() {
    planted_pair("learner-quorum", &["sync_visibility"]);
}

/// A new leader answers read indexes with its commit index before it has committed in its term.
/// The old leader commits what is in flight and cannot say so (the delay plus one-way scene), so
/// the new leader's commit index lags writes already acknowledged; the reader clients ask it in
/// the moments before its first commit, and the recency check names the stale answer. That
/// takes a read and an acknowledged write inside a window of about twice the link delay, which
/// the seed's schedule makes but does not time: it has been missed before (2 of the first 6
/// replays; a CI run on 2026-12-06, before the 400 ms readers) and again in a full
/// `scripts/test.sh` run on 2026-12-07 (37 early answers, none behind an acknowledged write),
/// so the seed is replayed up to three times (docs/testing.md).
#[test]
fn planted_read_index_before_the_term_commits_is_caught_on_the_combined_profile() {
    planted_replays(
        "early-read-index",
        &["linearizability", "snapshot", "recency"],
        3,
    );
}

/// The control run of the power-loss profile, shared like [`control`].
fn power_control() -> Report {
    static CONTROL: OnceLock<Report> = OnceLock::new();
    CONTROL
        .get_or_init(|| run(opts(power(CI_POWER_SECS), None)))
        .clone()
}

#[test]
fn power_loss_loses_no_acknowledged_write_and_stays_linearizable() {
    let _serial = serial();
    expect_pass(&power_control());
}

#[test]
fn planted_skipped_fsync_is_caught_on_the_power_loss_profile() {
    let _serial = serial();
    let c = power_control();
    expect_pass(&c);
    let r = run(opts(power(CI_POWER_SECS), Some("skip-fsync")));
    assert_eq!(
        r.schedule, c.schedule,
        "the same seed gave another schedule"
    );
    expect_caught(
        "skip-fsync",
        &["lost", "linearizability", "snapshot", "bank"],
        &r,
    );
}

/// The long run: every profile, minutes each (`scripts/faults.sh`; KEEL_FAULTS_SECS sets the
/// length of each profile, default 120; KEEL_FAULT_SEED replays).
#[test]
#[ignore]
fn long_run_over_every_profile() {
    let _serial = serial();
    let secs: u64 = std::env::var("KEEL_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let one = Profile::one_at_a_time;
    let mut five = one(
        "long-five",
        5,
        &[
            Fault::PartitionHalves,
            Fault::KillLeader,
            Fault::PartitionLeader,
            Fault::PauseRandom,
        ],
        secs,
    );
    five.scenes
        .push(vec![Fault::Membership, Fault::PartitionHalves]);
    let mut combined_long = combined(secs * 2);
    combined_long.name = "long-combined".into();
    let mut power_long = power(secs);
    power_long.name = "long-power-loss".into();
    let profiles = vec![
        combined_long,
        one(
            "long-crash",
            3,
            &[
                Fault::KillLeader,
                Fault::KillRandom,
                Fault::PauseLeader,
                Fault::PauseRandom,
                Fault::KillAll,
            ],
            secs,
        ),
        one(
            "long-partition",
            3,
            &[
                Fault::PartitionLeader,
                Fault::PartitionHalves,
                Fault::OneWayLeaderOut,
                Fault::OneWayLeaderIn,
                Fault::BlackholeLeader,
            ],
            secs,
        ),
        five,
        one(
            "long-four-split",
            4,
            &[Fault::Split22, Fault::KillLeader, Fault::PartitionLeader],
            secs,
        ),
        power_long,
    ];
    // KEEL_FAULTS_ONLY=<name> runs one profile (to replay a seed on it).
    let only = std::env::var("KEEL_FAULTS_ONLY").ok();
    let mut failed = Vec::new();
    for p in profiles
        .into_iter()
        .filter(|p| only.as_ref().is_none_or(|o| *o == p.name))
    {
        let r = run(opts(p, None));
        eprintln!("{}", r.summary());
        if !r.passed() {
            failed.push(r.summary());
        }
    }
    assert!(failed.is_empty(), "failed profiles:\n{}", failed.join("\n"));
}

/// The replay check of a long run: prints the schedule that `KEEL_FAULT_SEED` gives the long
/// run's combined profile (`KEEL_FAULTS_SECS` as in that run), to compare with the run's
/// `schedule.txt` without running it again.
#[test]
#[ignore]
fn print_the_long_combined_schedule_of_a_seed() {
    let secs: u64 = std::env::var("KEEL_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let p = combined(secs * 2);
    let s = Schedule::generate(
        seed(),
        &ScheduleSpec {
            scenes: p.scenes,
            duration: p.duration,
            calm: p.calm,
            fault_for: p.fault_for,
        },
    );
    print!("{}", s.describe());
}
