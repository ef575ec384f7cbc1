//! The watch workload under faults (issue 19): watchers pinned to each node and one that moves
//! between them follow a prefix while writers put unique values and transactions and the leader
//! is killed, paused and isolated. With the correct binary every watcher sees every change of
//! the range exactly once, in log order, the same sequence as the others, and every
//! acknowledged write at its index ([`keel_tests::watchers::check`]); the planted
//! `watch-resume-skip` (a resumed watch starts one entry late) is caught on the same seed.

use std::time::Duration;

use keel_tests::watchers::{run, WatchReport, WatchRun};

fn seed() -> u64 {
    std::env::var("KEEL_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4_242_424_242)
}

fn watch(planted: Option<&'static str>) -> WatchReport {
    let r = run(WatchRun {
        seed: seed(),
        duration: Duration::from_secs(30),
        planted,
    });
    eprintln!("{}", r.summary());
    r
}

#[test]
fn watchers_on_every_node_see_every_change_once_in_log_order_under_faults_and_the_planted_bug_is_caught(
) {
    let control = watch(None);
    assert!(
        control.violations.is_empty(),
        "violations with the correct binary: {}",
        control.summary()
    );
    // A run that proves something: many writes, watchers that had to resume, faults played.
    assert!(control.acked >= 200, "{}", control.summary());
    assert!(control.resumes >= 1, "{}", control.summary());
    assert!(control.faults.len() >= 4, "{}", control.summary());
    assert!(
        control.seen.iter().all(|(_, n)| *n >= control.acked),
        "{}",
        control.summary()
    );

    let planted = watch(Some("watch-resume-skip"));
    assert!(
        planted
            .violations
            .iter()
            .any(|(k, _)| k == "lost" || k == "diverged"),
        "the planted watch-resume-skip was not caught: {}",
        planted.summary()
    );
}
