//! The fault suite (SPEC §7): real clusters under partitions, kills, pauses, delay and loss, with
//! every operation recorded and checked (linearizability per register key, the bank invariant,
//! set completeness and duplicates). The short profiles run in CI; `scripts/faults.sh` runs the
//! long one. The planted-bug tests run the keel-planted build and must see the checkers catch
//! each bug.

use std::sync::Mutex;
use std::time::Duration;

use keel_tests::nemesis::Fault;
use keel_tests::suite::{report_dir, run, Profile, Report, RunOpts};

/// One fault run at a time: each loads a cluster and the two cores fully.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

fn opts(name: &str, nodes: usize, faults: Vec<Fault>, secs: u64) -> RunOpts {
    RunOpts {
        profile: Profile {
            name: name.to_string(),
            nodes,
            faults,
            duration: Duration::from_secs(secs),
            calm: Duration::from_secs(2),
            fault_for: Duration::from_secs(4),
            power_disks: false,
        },
        modes: vec!["semi", "sync", "async"],
        clients: (4, 2, 2),
        client_timeout: Duration::from_millis(1500),
        planted: None,
        min_ok_ops: 200,
        out_dir: report_dir(name),
    }
}

fn expect_pass(r: &Report) {
    eprintln!("{}", r.summary());
    assert!(
        r.passed(),
        "fault run failed (see {}): {}",
        r.out_dir,
        r.summary()
    );
}

#[test]
fn crash_faults_lose_nothing_and_stay_linearizable() {
    let _serial = serial();
    let r = run(opts(
        "crash",
        3,
        vec![
            Fault::KillLeader,
            Fault::PauseLeader,
            Fault::KillRandom,
            Fault::KillAll,
        ],
        40,
    ));
    expect_pass(&r);
}

#[test]
fn partitions_lose_nothing_and_stay_linearizable() {
    let _serial = serial();
    let r = run(opts(
        "partition",
        3,
        vec![
            Fault::PartitionLeader,
            Fault::OneWayLeaderOut,
            Fault::BlackholeLeader,
            Fault::PartitionHalves,
            Fault::OneWayLeaderIn,
        ],
        40,
    ));
    expect_pass(&r);
}

#[test]
fn slow_and_lossy_links_with_a_partition_stay_linearizable() {
    let _serial = serial();
    let r = run(opts(
        "network",
        3,
        vec![Fault::Delay, Fault::PartitionLeader, Fault::Loss],
        30,
    ));
    expect_pass(&r);
}

/// The power-loss profile: every node's data on a disk that forgets what was not fsynced; power
/// lost on one node, on a minority and on every node at once, with kills between.
fn power_opts(name: &str, secs: u64) -> RunOpts {
    let mut o = opts(
        name,
        3,
        vec![
            Fault::PowerLossRandom,
            Fault::KillLeader,
            Fault::PowerLossMinority,
            Fault::PowerLossAll,
        ],
        secs,
    );
    o.profile.power_disks = true;
    o
}

#[test]
fn power_loss_loses_no_acknowledged_write_and_stays_linearizable() {
    let _serial = serial();
    let r = run(power_opts("power-loss", 40));
    expect_pass(&r);
}

#[test]
fn planted_skipped_fsync_is_caught_by_the_power_loss_profile() {
    let _serial = serial();
    let mut o = power_opts("planted-skip-fsync", 40);
    o.planted = Some("skip-fsync");
    let r = run(o);
    eprintln!("{}", r.summary());
    let lost: usize = r.lost_acked_writes.values().sum();
    let caught =
        lost + r.linearizability_anomalies.len() + r.bank_violations + usize::from(r.unrecovered);
    assert!(
        caught > 0,
        "planted bug skip-fsync NOT caught: {}",
        r.summary()
    );
    eprintln!(
        "planted bug skip-fsync caught: {lost} acknowledged adds lost, {} keys not \
         linearizable, {} bank violations, {}",
        r.linearizability_anomalies.len(),
        r.bank_violations,
        if r.unrecovered {
            "and the cluster did not recover"
        } else {
            "the cluster recovered"
        }
    );
}

fn planted(bug: &'static str, faults: Vec<Fault>, secs: u64) -> Report {
    let mut o = opts(&format!("planted-{bug}"), 3, faults, secs);
    o.planted = Some(bug);
    // Long partitions: the majority elects a leader and moves on while the cut-off node answers.
    o.profile.fault_for = Duration::from_secs(6);
    let r = run(o);
    eprintln!("{}", r.summary());
    r
}

#[test]
fn planted_stale_reads_are_caught_by_the_linearizability_checker() {
    let _serial = serial();
    let r = planted("stale-read", vec![Fault::PartitionLeader], 25);
    assert!(
        !r.linearizability_anomalies.is_empty(),
        "planted bug stale-read NOT caught: {}",
        r.summary()
    );
    eprintln!(
        "planted bug stale-read caught: {} register keys not linearizable",
        r.linearizability_anomalies.len()
    );
}

#[test]
fn planted_early_acknowledgement_is_caught() {
    let _serial = serial();
    // Only blind writes are acknowledged early, and only by a cut-off leader before it steps
    // down (1-2 s): two set clients per node (half their adds are blind puts) and four leader
    // cut-offs make it near certain that some client adds through the old leader in that window.
    // With one set client on two of the three nodes a run once missed it.
    let mut o = opts("planted-early-ack", 3, vec![Fault::PartitionLeader], 33);
    o.planted = Some("early-ack");
    o.profile.fault_for = Duration::from_secs(6);
    o.modes = vec!["semi"];
    o.clients = (4, 2, 6);
    let r = run(o);
    eprintln!("{}", r.summary());
    let caught =
        r.linearizability_anomalies.len() + r.lost_acked_writes.get("semi").copied().unwrap_or(0);
    assert!(
        caught > 0,
        "planted bug early-ack NOT caught: {}",
        r.summary()
    );
    eprintln!(
        "planted bug early-ack caught: {} keys not linearizable, {} acknowledged semi adds lost",
        r.linearizability_anomalies.len(),
        r.lost_acked_writes.get("semi").copied().unwrap_or(0)
    );
}

#[test]
fn planted_idempotency_skip_is_caught_as_duplicates() {
    let _serial = serial();
    // Slow links make adds time out after they were applied; their retries, under the same key,
    // must not apply again.
    let mut o = opts(
        "planted-skip-idempotency",
        3,
        vec![Fault::Delay, Fault::KillLeader],
        25,
    );
    o.planted = Some("skip-idempotency");
    o.modes = vec!["semi"];
    // Below the smallest round trip the delay fault makes (2 × 50 ms), so every semi add sent
    // while links are slow times out and is retried, applied or not. (At 400 ms a run whose
    // random delays were short once timed out nothing and missed the bug.)
    o.client_timeout = Duration::from_millis(90);
    let r = run(o);
    eprintln!("{}", r.summary());
    assert!(
        r.duplicates > 0,
        "planted bug skip-idempotency NOT caught: {}",
        r.summary()
    );
    eprintln!(
        "planted bug skip-idempotency caught: {} adds applied twice",
        r.duplicates
    );
}

/// The long run: every profile, minutes each (`scripts/faults.sh`; KEEL_FAULTS_SECS sets the
/// length of each profile, default 120).
#[test]
#[ignore]
fn long_run_over_every_profile() {
    let _serial = serial();
    let secs: u64 = std::env::var("KEEL_FAULTS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let profiles = vec![
        (
            "long-crash",
            3,
            vec![
                Fault::KillLeader,
                Fault::KillRandom,
                Fault::PauseLeader,
                Fault::PauseRandom,
                Fault::KillAll,
            ],
        ),
        (
            "long-partition",
            3,
            vec![
                Fault::PartitionLeader,
                Fault::PartitionHalves,
                Fault::OneWayLeaderOut,
                Fault::OneWayLeaderIn,
                Fault::BlackholeLeader,
            ],
        ),
        (
            "long-network",
            3,
            vec![
                Fault::Delay,
                Fault::Loss,
                Fault::PartitionLeader,
                Fault::KillLeader,
            ],
        ),
        (
            "long-five",
            5,
            vec![
                Fault::PartitionHalves,
                Fault::KillLeader,
                Fault::PartitionLeader,
                Fault::PauseRandom,
            ],
        ),
        (
            "long-four-split",
            4,
            vec![Fault::Split22, Fault::KillLeader, Fault::PartitionLeader],
        ),
        (
            "long-power-loss",
            3,
            vec![
                Fault::PowerLossRandom,
                Fault::KillLeader,
                Fault::PowerLossMinority,
                Fault::PowerLossAll,
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (name, nodes, faults) in profiles {
        let mut o = opts(name, nodes, faults, secs);
        o.profile.power_disks = name == "long-power-loss";
        let r = run(o);
        eprintln!("{}", r.summary());
        if !r.passed() {
            failed.push(r.summary());
        }
    }
    assert!(failed.is_empty(), "failed profiles:\n{}", failed.join("\n"));
}
