//! The lock workload under faults (issue 18): workers acquire one lock, read a counter and
//! write it back plus one under their fence, some freezing past their TTL in between, while the
//! leader is killed, paused and isolated. The correct binary passes the checker
//! ([`keel_tests::locks::check`]); the planted bug `skip-fence` (the state machine ignores
//! `If-Fence`) is caught by it on the same seed.

use std::time::Duration;

use keel_tests::locks::{run, LockReport, LockRun};

fn seed() -> u64 {
    std::env::var("KEEL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_242_424_242)
}

fn locks(planted: Option<&'static str>) -> LockReport {
    let r = run(LockRun {
        seed: seed(),
        duration: Duration::from_secs(35),
        planted,
        workers: 3,
    });
    eprintln!("{}", r.summary());
    r
}

#[test]
fn the_lock_workload_under_faults_keeps_fenced_writes_exclusive_and_the_planted_bug_is_caught() {
    let control = locks(None);
    assert!(
        control.findings.violations.is_empty(),
        "violations with the correct binary: {}",
        control.summary()
    );
    // A run that proves something: grants changed hands, writes were admitted, and frozen
    // holders' late writes were refused by their fence.
    assert!(control.findings.grants >= 8, "{}", control.summary());
    assert!(control.findings.admitted >= 8, "{}", control.summary());
    assert!(control.findings.refused >= 1, "{}", control.summary());
    assert!(control.faults.len() >= 4, "{}", control.summary());

    let planted = locks(Some("skip-fence"));
    let kinds: Vec<&str> = planted
        .findings
        .violations
        .iter()
        .map(|(k, _)| k.as_str())
        .collect();
    assert!(
        kinds
            .iter()
            .any(|k| *k == "interleaving" || *k == "lost_update"),
        "the planted skip-fence was not caught: {}",
        planted.summary()
    );
}

/// The planted `keepalive-no-read-index` (a leader answers keepalives without confirming it
/// still leads): whether the lease check sees it depends on a paused or isolated leader
/// answering a keepalive after its successor took office. Not in CI: run by hand.
#[test]
#[ignore]
fn planted_keepalive_without_read_index() {
    let r = locks(Some("keepalive-no-read-index"));
    assert!(
        r.findings
            .violations
            .iter()
            .any(|(k, _)| k == "lease_ended_early"),
        "not caught: {}",
        r.summary()
    );
}
