//! Leases, locks with fencing tokens and blocking lock reads (SPEC §8) on real 3-node clusters,
//! over HTTP: every endpoint and every error, a holder paused past its TTL whose late write its
//! fence refuses, a lease kept alive across a leader change, and a lease that expires with its
//! leader killed.

use std::time::{Duration, Instant};

use keel_tests::{wait_until, Cluster, DEADLINE};
use serde_json::Value;

/// `POST /v1/lease` through node `via`; the lease id.
fn grant(c: &Cluster, via: u64, ttl_ms: u64) -> (u64, Value) {
    let body = format!("{{\"ttl_ms\": {ttl_ms}}}");
    let r = c
        .request(via, "POST", "/v1/lease", &[], Some(body.as_bytes()))
        .expect("node answers");
    assert_eq!(r.status, 200, "grant: {}", r.text());
    let v = r.json();
    let id = v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the id is a string of digits");
    (id, v)
}

fn keepalive(c: &Cluster, via: u64, id: u64) -> keel_tests::Resp {
    c.request(via, "POST", &format!("/v1/lease/{id}/keepalive"), &[], None)
        .expect("node answers")
}

fn acquire(
    c: &Cluster,
    via: u64,
    name: &str,
    lease: u64,
    value: &str,
    wait_ms: u64,
) -> keel_tests::Resp {
    let body =
        format!("{{\"lease\": \"{lease}\", \"value\": \"{value}\", \"wait_ms\": {wait_ms}}}");
    c.request(
        via,
        "POST",
        &format!("/v1/lock/{name}"),
        &[],
        Some(body.as_bytes()),
    )
    .expect("node answers")
}

fn fenced_put(c: &Cluster, via: u64, key: &str, value: &str, fence: &str) -> keel_tests::Resp {
    c.request(
        via,
        "PUT",
        &format!("/v1/kv/{key}"),
        &[("if-fence", fence)],
        Some(value.as_bytes()),
    )
    .expect("node answers")
}

/// The lease's locks, as `GET /v1/lease/{id}` shows them.
fn lease_locks(c: &Cluster, via: u64, id: u64) -> Vec<String> {
    let r = c
        .request(via, "GET", &format!("/v1/lease/{id}"), &[], None)
        .expect("node answers");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_value(r.json()["locks"].clone()).unwrap_or_default()
}

#[test]
fn leases_grant_keepalive_look_revoke_and_refuse_bad_input() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];

    // A TTL below twice the election timeout is raised to it.
    let (id, v) = grant(&c, follower, 10);
    assert!(v["ttl_ms"].as_u64().unwrap_or(0) >= 2000, "{v}");
    assert_eq!(
        v["index"].as_u64(),
        Some(id),
        "the id is the granting entry's index"
    );

    // Keys live with the lease; a key put without it is detached.
    for key in ["session/a", "session/b", "session/detached"] {
        let r = c
            .put(follower, &format!("{key}?lease={id}"), b"x")
            .expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = c
        .put(leader, "session/detached", b"mine now")
        .expect("answers");
    assert_eq!(r.status, 200);

    // Keepalive and lookup through a follower (forwarded to the leader).
    let r = keepalive(&c, follower, id);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["id"], id.to_string());
    let r = c
        .request(follower, "GET", &format!("/v1/lease/{id}"), &[], None)
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let info = r.json();
    let remaining = info["remaining_ms"].as_u64().unwrap_or(0);
    assert!(
        remaining > 0 && remaining <= info["ttl_ms"].as_u64().unwrap_or(0),
        "{info}"
    );
    let keys: Vec<String> = serde_json::from_value(info["keys"].clone()).unwrap_or_default();
    assert!(keys.contains(&"session/a".to_string()), "{info}");

    // Revoke: its keys go in the same entry, except the detached one.
    let r = c
        .request(follower, "DELETE", &format!("/v1/lease/{id}"), &[], None)
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let revoked_at = r.json()["index"].as_u64().expect("index");
    for key in ["session/a", "session/b"] {
        let r = c.get(follower, key).expect("answers");
        assert_eq!(r.status, 404, "{key} should be gone with its lease");
    }
    let r = c.get(follower, "session/detached").expect("answers");
    assert_eq!((r.status, r.text().as_str()), (200, "mine now"));
    assert!(revoked_at > id);

    // Everything about a lease that is gone is a 404 lease_not_found.
    for (method, path) in [
        ("POST", format!("/v1/lease/{id}/keepalive")),
        ("GET", format!("/v1/lease/{id}")),
        ("DELETE", format!("/v1/lease/{id}")),
    ] {
        let r = c
            .request(follower, method, &path, &[], None)
            .expect("answers");
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (404, Some("lease_not_found")),
            "{method} {path}: {}",
            r.text()
        );
    }
    let r = c
        .put(leader, &format!("orphan?lease={id}"), b"x")
        .expect("answers");
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("lease_not_found"))
    );
    assert_eq!(
        c.get(leader, "orphan").expect("answers").status,
        404,
        "nothing written"
    );

    // Bad input: clear errors, nothing changes.
    let bad = [
        (
            "POST",
            "/v1/lease".to_string(),
            Some("{\"ttl\": 5}"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/lease".to_string(),
            Some("not json"),
            400,
            "invalid_json",
        ),
        // A TTL that would overflow the leader's clock arithmetic, and one over the maximum.
        (
            "POST",
            "/v1/lease".to_string(),
            Some("{\"ttl_ms\": 18446744073709551615}"),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/lease".to_string(),
            Some("{\"ttl_ms\": 604800001}"),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/lease/abc/keepalive".to_string(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/lease/0/keepalive".to_string(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/v1/lease/-1".to_string(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/v1/lease/5".to_string(),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "PUT",
            "/v1/kv/k?lease=0".to_string(),
            Some("v"),
            400,
            "invalid_parameter",
        ),
        (
            "PUT",
            "/v1/kv/k?lease=x".to_string(),
            Some("v"),
            400,
            "invalid_parameter",
        ),
        (
            "POST",
            "/v1/lock/l".to_string(),
            Some("{\"lease\": \"x\"}"),
            400,
            "invalid_json",
        ),
        (
            "POST",
            "/v1/lock/l".to_string(),
            Some("{}"),
            400,
            "invalid_json",
        ),
        (
            "DELETE",
            "/v1/lock/l".to_string(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/v1/lock/l?wait_index=x".to_string(),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            "/v1/lock/l?bogus=1".to_string(),
            None,
            400,
            "invalid_parameter",
        ),
    ];
    for (method, path, body, status, code) in bad {
        let r = c
            .request(follower, method, &path, &[], body.map(str::as_bytes))
            .expect("answers");
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (status, Some(code)),
            "{method} {path}: {}",
            r.text()
        );
    }
    for header in ["jobs", "jobs=", "=3", "jobs=0", "jobs=x"] {
        let r = fenced_put(&c, leader, "k", "v", header);
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (400, Some("invalid_header")),
            "{header}"
        );
    }
    assert_eq!(
        c.get(leader, "k").expect("answers").status,
        404,
        "nothing written"
    );
    // A lock on a lease that does not exist.
    let r = acquire(&c, follower, "l", 987_654_321, "v", 0);
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("lease_not_found"))
    );
}

#[test]
fn locks_are_fifo_fenced_released_only_by_their_holder_and_read_blocking() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let f = c.others(&[leader]);
    let (a, _) = grant(&c, f[0], 60_000);
    let (b, _) = grant(&c, f[1], 60_000);
    let (d, _) = grant(&c, leader, 60_000);

    let r = acquire(&c, f[0], "jobs/report", a, "worker-a", 0);
    assert_eq!(r.status, 200, "{}", r.text());
    let fence_a = r.json()["fence"].as_u64().expect("fence");
    assert_eq!(r.json()["value"], "worker-a");

    // Not granted at once: 409 with the holder, and not left in the queue.
    let r = acquire(&c, f[1], "jobs/report", b, "worker-b", 0);
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (409, Some("lock_held")),
        "{}",
        r.text()
    );
    assert_eq!(r.json()["holder"]["fence"].as_u64(), Some(fence_a));
    assert_eq!(r.json()["holder"]["value"], "worker-a");
    assert!(
        lease_locks(&c, leader, b).is_empty(),
        "a refused waiter leaves the queue"
    );

    // The holder as anyone reads it, and a blocking read that waits for a change.
    let r = c
        .request(f[1], "GET", "/v1/lock/jobs/report", &[], None)
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let seen_at = r.json()["index"].as_u64().expect("index");
    assert_eq!(r.json()["fence"].as_u64(), Some(fence_a));

    std::thread::scope(|s| {
        // b then d queue (b first: d starts once b is seen waiting).
        let waiter_b = s.spawn(|| acquire(&c, f[1], "jobs/report", b, "worker-b", 60_000));
        wait_until(DEADLINE, "b waiting in the queue", || {
            lease_locks(&c, leader, b)
                .contains(&"jobs/report".to_string())
                .then_some(())
        });
        let waiter_d = s.spawn(|| acquire(&c, leader, "jobs/report", d, "worker-d", 60_000));
        wait_until(DEADLINE, "d waiting in the queue", || {
            lease_locks(&c, leader, d)
                .contains(&"jobs/report".to_string())
                .then_some(())
        });
        let observer = s.spawn(|| {
            let started = Instant::now();
            let r = c
                .request(
                    f[0],
                    "GET",
                    &format!("/v1/lock/jobs/report?wait_index={seen_at}&wait_ms=60000"),
                    &[],
                    None,
                )
                .expect("answers");
            (r, started.elapsed())
        });

        // Only the holder's lease releases it.
        let r = c
            .request(
                f[0],
                "DELETE",
                &format!("/v1/lock/jobs/report?lease={b}"),
                &[],
                None,
            )
            .expect("answers");
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (412, Some("not_holder")),
            "{}",
            r.text()
        );
        assert_eq!(r.json()["holder"]["fence"].as_u64(), Some(fence_a));

        let r = c
            .request(
                f[0],
                "DELETE",
                &format!("/v1/lock/jobs/report?lease={a}"),
                &[],
                None,
            )
            .expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
        let released_at = r.json()["index"].as_u64().expect("index");

        // b was first in line: granted, with a higher fence (the releasing entry's index).
        let r = waiter_b.join().expect("thread");
        assert_eq!(r.status, 200, "{}", r.text());
        let fence_b = r.json()["fence"].as_u64().expect("fence");
        assert_eq!(
            fence_b, released_at,
            "the fence is the index of the granting entry"
        );
        assert!(fence_b > fence_a);

        // The blocking read answered with the change, well before its 60 s.
        let (r, took) = observer.join().expect("thread");
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            r.json()["index"].as_u64().unwrap_or(0) > seen_at,
            "{}",
            r.text()
        );
        assert!(
            took < Duration::from_secs(55),
            "the blocking read waited {took:?}"
        );

        // The old fence no longer writes; the current one does.
        let r = fenced_put(
            &c,
            f[1],
            "report/owner",
            "a",
            &format!("jobs/report={fence_a}"),
        );
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (412, Some("fence_rejected")),
            "{}",
            r.text()
        );
        assert_eq!(r.json()["holder"]["fence"].as_u64(), Some(fence_b));
        let r = fenced_put(
            &c,
            f[1],
            "report/owner",
            "b",
            &format!("jobs/report={fence_b}"),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        // Every write kind takes a fence: add and delete too.
        let r = c
            .request(
                leader,
                "POST",
                "/v1/kv/report/runs/add",
                &[("if-fence", &format!("jobs/report={fence_a}"))],
                Some(b"{\"delta\": 1}"),
            )
            .expect("answers");
        assert_eq!(r.status, 412, "{}", r.text());
        let r = c
            .request(
                leader,
                "DELETE",
                "/v1/kv/report/owner",
                &[("if-fence", &format!("jobs/report={fence_a}"))],
                None,
            )
            .expect("answers");
        assert_eq!(r.status, 412, "{}", r.text());
        assert_eq!(c.get(leader, "report/owner").expect("answers").text(), "b");

        // Revoking b's lease hands the lock to d, the next in line.
        let r = c
            .request(leader, "DELETE", &format!("/v1/lease/{b}"), &[], None)
            .expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
        let r = waiter_d.join().expect("thread");
        assert_eq!(r.status, 200, "{}", r.text());
        let fence_d = r.json()["fence"].as_u64().expect("fence");
        assert!(fence_d > fence_b);
        assert_eq!(r.json()["value"], "worker-d");
    });

    // Released by its holder, the lock is free: 404 lock_not_found.
    let r = c
        .request(
            leader,
            "DELETE",
            &format!("/v1/lock/jobs/report?lease={d}"),
            &[],
            None,
        )
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = c
        .request(f[0], "GET", "/v1/lock/jobs/report", &[], None)
        .expect("answers");
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (404, Some("lock_not_found"))
    );
    // A fence on a free lock is refused too.
    let r = fenced_put(&c, f[0], "report/owner", "d", "jobs/report=1");
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (412, Some("fence_rejected"))
    );
}

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
