//! The demonstrations and the client examples, run as a user runs them, against real clusters:
//! their invariants hold with atomic writes, and the naive read-modify-write version really loses
//! updates (so the demonstration is not rigged).

use std::path::PathBuf;
use std::process::Command;

use keel_tests::{keel_bin, Cluster};
use serde_json::Value;

fn run_demo(c: &Cluster, kind: &str, extra: &[&str]) -> Value {
    let json = c.dir().join(format!("{kind}.json"));
    let out = Command::new(keel_bin())
        .args(["demo", kind, "--endpoints", &c.endpoints().join(",")])
        .args(["--ops", "600", "--clients", "12", "--json"])
        .arg(&json)
        .args(extra)
        .output()
        .expect("run keel demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "demo {kind} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("summary")).expect("summary JSON")
}

#[test]
fn balance_demo_holds_its_invariants_and_shows_the_naive_lost_updates() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let s = run_demo(&c, "balance", &[]);
    assert_eq!(s["invariants_hold"], true);
    // Seed case: 100 with 50, 60, 40 at once: exactly two are approved whatever the order.
    assert_eq!(s["small"]["ok"], true);
    let fin = s["small"]["final"].as_i64().expect("final");
    assert_eq!(
        fin,
        100 - s["small"]["approved"].as_i64().expect("approved")
    );
    assert!(fin >= 0);
    // The naive version approved all three (150 out of 100).
    assert_eq!(s["small"]["naive_approved"], 150);
    assert!(
        s["scaled_naive"]["lost_updates"].as_i64().expect("lost") > 0,
        "{s}"
    );
    assert_eq!(s["scaled_atomic"]["declined_wrongly"], 0);
}

#[test]
fn inventory_and_bank_demos_hold_their_invariants() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let s = run_demo(&c, "inventory", &["--mode", "sync"]);
    assert_eq!(s["invariants_hold"], true);
    let start = s["scaled_atomic"]["start"].as_i64().expect("start");
    let sold = s["scaled_atomic"]["approved"].as_i64().expect("sold");
    let remaining = s["scaled_atomic"]["final"].as_i64().expect("final");
    assert_eq!(sold + remaining, start);
    assert!(remaining >= 0);
    assert!(s["scaled_naive"]["lost_updates"].as_i64().expect("lost") > 0);

    let s = run_demo(&c, "bank", &[]);
    assert_eq!(s["invariants_hold"], true);
    assert_eq!(s["atomic"]["bad_reads"], 0);
    assert_eq!(s["atomic"]["final_sum"], 8000);
    assert!(s["atomic"]["reads"].as_i64().expect("reads") > 0);
}

fn example(name: &str) -> PathBuf {
    keel_bin()
        .parent()
        .expect("dir")
        .join("examples")
        .join(name)
}

#[test]
fn client_examples_run_against_a_cluster() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    for name in ["balance", "inventory", "bank"] {
        let bin = example(name);
        assert!(
            bin.exists(),
            "{} not built: cargo build --release --workspace --all-targets",
            bin.display()
        );
        let out = Command::new(&bin)
            .arg(c.endpoints().join(","))
            .output()
            .expect("run example");
        assert!(
            out.status.success(),
            "example {name}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The seeds' duplicate cron job and paused lease holder: three scheduler processes run the
/// job three times a tick naively and once with a keel lock; the holder frozen with SIGSTOP
/// past its TTL loses the lock and its late run is refused by its fence. The pause demo shows
/// the paused client's late write going through without fences and refused with them.
#[test]
fn cron_and_pause_demos_duplicate_naively_and_fence_off_the_paused_holder() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let s = run_demo(&c, "cron", &[]);
    assert_eq!(s["invariants_hold"], true, "{s}");
    let naive: Vec<i64> = serde_json::from_value(s["naive_runs"].clone()).expect("runs");
    assert!(
        naive.iter().any(|&n| n > 1),
        "naive runs per tick: {naive:?}"
    );
    assert!(s["naive_duplicates"].as_i64().unwrap_or(0) > 0);
    let locked: Vec<i64> = serde_json::from_value(s["locked_runs"].clone()).expect("runs");
    assert!(
        locked.iter().all(|&n| n <= 1),
        "locked runs per tick: {locked:?}"
    );
    assert!(
        locked.iter().filter(|&&n| n == 1).count() >= 6,
        "{locked:?}"
    );
    assert_eq!(s["locked_duplicates"], 0);
    assert!(s["late_runs_refused"].as_i64().unwrap_or(0) >= 1, "{s}");
    assert_ne!(s["taken_over_by"], s["frozen"]);
    assert!(s["new_fence"].as_u64().unwrap_or(0) > s["frozen_fence"].as_u64().unwrap_or(0));

    let s = run_demo(&c, "pause", &[]);
    assert_eq!(s["invariants_hold"], true, "{s}");
    assert_eq!(s["unfenced_late_write_accepted"], true);
    assert_eq!(s["unfenced_final"], "written by A (late)");
    assert_eq!(s["fenced_late_write_accepted"], false);
    assert_eq!(s["fenced_final"], "written by B");
}
