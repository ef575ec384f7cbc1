//! Leases and locks under faults on real 3-node clusters: a holder paused past its TTL whose
//! late write its fence refuses, a lease kept alive across a leader change and one that expires
//! with its leader killed, a lagging follower that must not grant a lock from stale state; and
//! the CLI's lease, lock and election commands.

use std::time::{Duration, Instant};

use keel_tests::coord::{acquire, fenced_put, grant, keepalive, try_lease_locks, waiting_acquire};
use keel_tests::{wait_until, Cluster, DEADLINE};
use serde_json::Value;

/// The lease seed: a holder freezes (a GC pause) past its TTL; its lease expires on the leader,
/// the lock goes to the next in line; the old holder wakes up and writes with its fence: the
/// store refuses it. The new holder's writes go through.
#[test]
fn a_holder_paused_past_its_ttl_has_its_late_write_refused_by_its_fence() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let f = c.others(&[leader]);
    let (paused, v) = grant(&c, f[0], 2000);
    let ttl = v["ttl_ms"].as_u64().unwrap_or(2000);
    let (next, _) = grant(&c, f[1], 60_000);
    let r = acquire(&c, f[0], "leader-of-jobs", paused, "scheduler-1", 0);
    assert_eq!(r.status, 200, "{}", r.text());
    let old_fence = r.json()["fence"].as_u64().expect("fence");
    let r = fenced_put(
        &c,
        f[0],
        "jobs/last-run",
        "by 1",
        &format!("leader-of-jobs={old_fence}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    // The holder "pauses": no keepalive from now on. The other scheduler waits for the lock.
    let paused_at = Instant::now();
    let r = acquire(&c, f[1], "leader-of-jobs", next, "scheduler-2", 30_000);
    assert_eq!(r.status, 200, "{}", r.text());
    let waited = paused_at.elapsed();
    let new_fence = r.json()["fence"].as_u64().expect("fence");
    assert!(new_fence > old_fence);
    // Never early: the lease ended no sooner than its TTL after its last keepalive (the grant).
    assert!(
        waited >= Duration::from_millis(ttl),
        "the lock changed hands {waited:?} into a {ttl} ms lease"
    );
    // Its keepalive now says it is gone...
    let r = keepalive(&c, f[0], paused);
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("lease_not_found"))
    );
    // ...and its late write, fenced, is refused; the new holder's is not.
    let r = fenced_put(
        &c,
        f[0],
        "jobs/last-run",
        "late, by 1",
        &format!("leader-of-jobs={old_fence}"),
    );
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (412, Some("fence_rejected")),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["holder"]["value"], "scheduler-2");
    let r = fenced_put(
        &c,
        f[1],
        "jobs/last-run",
        "by 2",
        &format!("leader-of-jobs={new_fence}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        c.get(leader, "jobs/last-run").expect("answers").text(),
        "by 2"
    );
}

/// A lease kept alive survives the kill of the leader (the new leader restarts its countdown);
/// a lease nobody keeps alive expires under the new leader, a full TTL after it took office at
/// the earliest, and takes its keys with it.
#[test]
fn leases_across_a_leader_kill_kept_alive_survive_and_abandoned_expire() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let f = c.others(&[leader]);
    let (kept, v) = grant(&c, f[0], 3000);
    let ttl = Duration::from_millis(v["ttl_ms"].as_u64().unwrap_or(3000));
    let (abandoned, _) = grant(&c, f[0], 3000);
    assert_eq!(
        c.put(f[0], &format!("kept/key?lease={kept}"), b"1")
            .expect("answers")
            .status,
        200
    );
    assert_eq!(
        c.put(f[0], &format!("abandoned/key?lease={abandoned}"), b"1")
            .expect("answers")
            .status,
        200
    );

    c.kill(leader);
    let killed_at = Instant::now();
    // Keep `kept` alive through the election (through the followers; errors while there is no
    // leader are retried), until well past two TTLs after the kill.
    let mut last_ok = Instant::now();
    let until = killed_at + ttl * 3;
    while Instant::now() < until {
        for &via in &f {
            let t = Instant::now();
            let r = keepalive(&c, via, kept);
            eprintln!(
                "{:?} via {via}: {} {} (took {:?})",
                killed_at.elapsed(),
                r.status,
                r.text(),
                t.elapsed()
            );
            if r.status == 200 {
                last_ok = Instant::now();
                break;
            }
        }
        assert!(
            last_ok.elapsed() < ttl,
            "no keepalive succeeded for a whole TTL after the leader was killed"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let r = c.get(f[1], "kept/key").expect("answers");
    assert_eq!(r.status, 200, "the kept lease's key is still there");
    // The abandoned one is gone with its key: the new leader expired it.
    wait_until(DEADLINE, "the abandoned lease to expire", || {
        (keepalive(&c, f[1], abandoned).status == 404).then_some(())
    });
    assert_eq!(c.get(f[1], "abandoned/key").expect("answers").status, 404);
    assert!(
        killed_at.elapsed() >= ttl,
        "expired before a full TTL had passed"
    );
    c.restart(leader);
    wait_until(DEADLINE, "the restarted node to see the expiry", || {
        (c.get(leader, "abandoned/key?consistency=stale")
            .ok()?
            .status
            == 404)
            .then_some(())
    });
}

fn keel(c: &Cluster, args: &[&str]) -> std::process::Output {
    std::process::Command::new(keel_tests::keel_bin())
        .args(["--endpoints", &c.endpoints().join(",")])
        .args(args)
        .output()
        .expect("run keel")
}

/// `keel lease`, `keel lock NAME -- COMMAND` (the command sees its fence, the lock is released
/// when it ends) and `keel elect --observe` seeing a candidate take the lead.
#[test]
fn the_cli_grants_leases_holds_a_lock_around_a_command_and_observes_an_election() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let out = keel(&c, &["lease", "grant", "--ttl-ms", "5000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    let id = v["id"].as_str().expect("id").to_string();
    let out = keel(&c, &["lease", "show", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["ttl_ms"], 5000);
    assert!(keel(&c, &["lease", "revoke", &id]).status.success());
    let out = keel(&c, &["lease", "keepalive", &id]);
    assert_eq!(out.status.code(), Some(2), "a revoked lease: exit 2");

    // An observer first (it prints the current state, then each change).
    let mut observer = std::process::Command::new(keel_tests::keel_bin())
        .args(["--endpoints", &c.endpoints().join(",")])
        .args(["elect", "cli/election", "--observe", "--changes", "1"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("observer");
    let stdout = observer.stdout.take().expect("stdout");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(first.contains("\"leader\":null"), "{first}");

    // Hold the election's lock around a command: it sees its fence; afterwards it is free.
    let out = keel(
        &c,
        &[
            "lock",
            "cli/election",
            "--value",
            "candidate-1",
            "--",
            "sh",
            "-c",
            "echo fence=$KEEL_FENCE",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout).to_string();
    let fence: u64 = printed
        .trim()
        .strip_prefix("fence=")
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| panic!("the command saw no fence: {printed:?}"));
    assert!(fence > 0);
    let next = lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        next.contains("candidate-1") && next.contains(&format!("\"fence\":{fence}")),
        "the observer saw {next:?}"
    );
    assert!(observer.wait().expect("observer exits").success());
    let leader = c.wait_for_leader();
    wait_until(DEADLINE, "the lock released after the command", || {
        let r = c
            .request(leader, "GET", "/v1/lock/cli/election", &[], None)
            .ok()?;
        (r.status == 404).then_some(())
    });
}

/// A follower whose state machine lags (the test build's `before-apply` failpoint sleeps before
/// each apply) is asked for a lock its lease held and released a moment ago, while another
/// lease holds it now. The acquire is queued at the leader; the follower must not answer it
/// from its stale state, where the first grant is still in force ("granted" with the old fence
/// while the other lease holds the lock: two holders). Found by review; this test failed before
/// the fix (the follower answered 200 with the released fence).
#[test]
fn a_lagging_follower_never_grants_a_lock_from_its_stale_state() {
    let mut c = Cluster::launch_with(3, &[], false, keel_tests::suite::planted_bin(), &[]);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let (l, _) = grant(&c, leader, 60_000);
    let (m, _) = grant(&c, leader, 60_000);
    let r = c
        .request(
            follower,
            "PUT",
            "/v1/admin/failpoints/before-apply",
            &[],
            Some(b"sleep(400)"),
        )
        .expect("answers");
    assert_eq!(r.status, 200, "arming: {}", r.text());
    let mut double_grants = Vec::new();
    for round in 0..3 {
        let name = format!("lag/{round}");
        let first = acquire(&c, follower, &name, l, "l", 0);
        assert_eq!(first.status, 200, "{}", first.text());
        let old_fence = first.json()["fence"].clone();
        let rel = c
            .request(
                leader,
                "DELETE",
                &format!("/v1/lock/{name}?lease={l}"),
                &[],
                None,
            )
            .expect("answers");
        assert_eq!(rel.status, 200, "release: {}", rel.text());
        let by_m = acquire(&c, leader, &name, m, "m", 0);
        assert_eq!(by_m.status, 200, "{}", by_m.text());
        let again = acquire(&c, follower, &name, l, "l", 1500);
        if again.status == 200 {
            double_grants.push((round, old_fence, again.text()));
        } else {
            assert_eq!(
                again.error_code().as_deref(),
                Some("lock_held"),
                "{}",
                again.text()
            );
        }
    }
    assert!(
        double_grants.is_empty(),
        "the lagging follower granted locks another lease held: {double_grants:?}"
    );
}

/// `keel elect` whose output nobody reads steps down at once: it resigns and ends its lease
/// rather than lead unseen until the lease runs out. Failed before the fix: it exited at the
/// closed pipe still holding the lock, which stayed taken for the lease's 60 s.
#[test]
fn an_elected_candidate_whose_output_nobody_reads_steps_down() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let mut child = std::process::Command::new(keel_tests::keel_bin())
        .args(["--endpoints", &c.endpoints().join(",")])
        .args(["elect", "cli/unread", "candidate", "--ttl-ms", "60000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run keel elect");
    drop(child.stdout.take());
    let status = wait_until(DEADLINE, "keel elect to end", || {
        child.try_wait().ok().flatten()
    });
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    // Within DEADLINE (30 s), half the lease's TTL: only a resign frees it this soon.
    wait_until(DEADLINE, "the lock free again", || {
        let r = c
            .request(leader, "GET", "/v1/lock/cli/unread", &[], None)
            .ok()?;
        (r.status == 404).then_some(())
    });
}

/// How many cancels of abandoned lock waits failed on `node` (`/metrics`).
fn cancel_failures(c: &Cluster, node: u64) -> Option<u64> {
    c.metric(node, "keel_lock_cancel_failed_total")
}

/// A waiting acquire whose client goes away while its node cannot reach a quorum still leaves
/// the queue, once a leader is back: the cancel is sent again until it is applied. Failed
/// before the fix: the one cancel failed at once (no leader), b stayed queued, and the release
/// below would have granted b the lock nobody waited for (for b's two minutes).
#[test]
fn a_waiter_abandoned_while_its_node_has_no_quorum_leaves_the_queue_once_it_has() {
    let mut c = Cluster::start_with(3, &["--request-timeout", "2s"]);
    let leader = c.wait_for_leader();
    let f = c.others(&[leader]);
    let (a, _) = grant(&c, leader, 120_000);
    let (b, _) = grant(&c, leader, 120_000);
    let r = acquire(&c, leader, "cron/quorum", a, "a", 0);
    assert_eq!(r.status, 200, "{}", r.text());

    // b waits through a follower, on a connection the test then closes without reading.
    let conn = waiting_acquire(&c, f[0], "cron/quorum", b, "b", 120_000);
    wait_until(DEADLINE, "b waiting in the queue", || {
        try_lease_locks(&c, leader, b)?
            .contains(&"cron/quorum".to_string())
            .then_some(())
    });

    // The follower is left alone, and knows it has no leader: its cancel is not even sent (a
    // cancel forwarded to a paused leader would wait in its socket and be applied later).
    let before = cancel_failures(&c, f[0]).expect("f0's metrics");
    c.pause(leader);
    c.pause(f[1]);
    wait_until(DEADLINE, "the lone follower to lose its leader", || {
        let r = c.request(f[0], "GET", "/v1/status", &[], None).ok()?;
        r.json()["leader"].is_null().then_some(())
    });
    drop(conn);
    wait_until(DEADLINE, "a cancel to fail on the lone follower", || {
        (cancel_failures(&c, f[0])? > before).then_some(())
    });
    c.resume(leader);
    c.resume(f[1]);
    let leader = c.wait_for_leader();
    wait_until(DEADLINE, "b out of the queue once a leader is back", || {
        try_lease_locks(&c, leader, b)?.is_empty().then_some(())
    });

    // Released by its holder, the lock goes to nobody.
    let r = c
        .request(
            leader,
            "DELETE",
            &format!("/v1/lock/cron/quorum?lease={a}"),
            &[],
            None,
        )
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .request(leader, "GET", "/v1/lock/cron/quorum", &[], None)
        .expect("answers");
    assert_eq!(r.status, 404, "{}", r.text());
}

/// A grant made to a wait nobody waits for any more is given up (to the next waiter, or the
/// lock is freed) by that wait's cancel, instead of kept for nobody until the lease ends. Here
/// the lock passes to b while b's node is cut off, after b's client has gone: its cancel lands
/// only after the grant. Failed before the fix: the cancel kept the grant, and b held the lock
/// for its two minutes.
#[test]
fn a_grant_to_an_abandoned_wait_is_given_up() {
    let mut c = Cluster::start_proxied(3, &["--request-timeout", "2s"]);
    let leader = c.wait_for_leader();
    let f = c.others(&[leader]);
    let (a, _) = grant(&c, leader, 120_000);
    let (b, _) = grant(&c, leader, 120_000);
    let r = acquire(&c, leader, "cron/cutoff", a, "a", 0);
    assert_eq!(r.status, 200, "{}", r.text());
    let conn = waiting_acquire(&c, f[0], "cron/cutoff", b, "b", 120_000);
    wait_until(DEADLINE, "b waiting in the queue", || {
        try_lease_locks(&c, leader, b)?
            .contains(&"cron/cutoff".to_string())
            .then_some(())
    });
    // The acquire's answer reaches b's node before the cut: the leader sends it on the same
    // connection as, and before, the entry of a later write, which b's node then applies. (Had it
    // not arrived, the outcome would be unknown, and the cancel would keep the grant.)
    let r = c.put(leader, "cutoff-marker", b"1").expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    wait_until(DEADLINE, "b's node to apply a later write", || {
        let r = c.get(f[0], "cutoff-marker?consistency=stale").ok()?;
        (r.status == 200).then_some(())
    });

    // b's node is cut off; a releases, and the lock passes to b on the majority.
    let before = cancel_failures(&c, f[0]).expect("f0's metrics");
    c.isolate(f[0]);
    let r = c
        .request(
            leader,
            "DELETE",
            &format!("/v1/lock/cron/cutoff?lease={a}"),
            &[],
            None,
        )
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .request(leader, "GET", "/v1/lock/cron/cutoff", &[], None)
        .expect("answers");
    let holder = r.json()["lease"].to_string();
    assert_eq!(holder.trim_matches('"'), b.to_string(), "{}", r.text());

    // b's client goes; its node cannot send the cancel until it is back.
    drop(conn);
    wait_until(DEADLINE, "a cancel to fail on the cut-off node", || {
        (cancel_failures(&c, f[0])? > before).then_some(())
    });
    c.heal();
    wait_until(DEADLINE, "the grant nobody waits for given up", || {
        let r = c
            .request(leader, "GET", "/v1/lock/cron/cutoff", &[], None)
            .ok()?;
        (r.status == 404).then_some(())
    });
    wait_until(DEADLINE, "b holding and waiting for nothing", || {
        try_lease_locks(&c, leader, b)?.is_empty().then_some(())
    });
}

/// An acquire whose outcome was unknown (its forward timed out) and that is applied only after
/// the client's retry was granted and answered does not take the lock from that client: its
/// cancel does not abandon a wait it cannot know queued. Failed before the fix: the late acquire
/// took the grant over, and its cancel gave the lock up from a client told it held it.
#[test]
fn a_late_acquire_and_its_cancel_leave_the_retry_holding_the_lock() {
    let mut c = Cluster::start_proxied(3, &["--request-timeout", "2s"]);
    let leader = c.wait_for_leader();
    let f = c.others(&[leader]);
    let (b, _) = grant(&c, leader, 120_000);
    // What the follower forwards reaches the leader 4 s late, after the forward timed out.
    c.link(f[0], leader)
        .set(keel_tests::LinkMode::Delay(Duration::from_secs(4)));
    let r = acquire(&c, f[0], "cron/late", b, "b", 0);
    assert_ne!(r.status, 200, "{}", r.text());
    // The client retries through the leader, and is granted the lock.
    let r = acquire(&c, leader, "cron/late", b, "b", 0);
    assert_eq!(r.status, 200, "{}", r.text());
    let fence = r.json()["fence"].clone();
    let applied = |c: &Cluster| c.status(leader)?["applied_index"].as_u64();
    let after_retry = applied(&c).expect("the leader's status");
    wait_until(DEADLINE, "the late acquire and its cancel applied", || {
        (applied(&c)? >= after_retry + 2).then_some(())
    });
    let r = c
        .request(leader, "GET", "/v1/lock/cron/late", &[], None)
        .expect("answers");
    assert_eq!(r.status, 200, "the lock was given up: {}", r.text());
    assert_eq!(r.json()["fence"], fence, "{}", r.text());
}
