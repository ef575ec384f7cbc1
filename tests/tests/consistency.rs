//! Read consistency on real processes: linearizable reads never go stale, even on a deposed
//! leader; `stale&min_index` waits for the index a write returned; `/v1/status` shows each
//! member's progress on the leader.

use std::sync::mpsc;
use std::time::Duration;

use keel_tests::http::Http;
use keel_tests::{wait_until, Cluster, LinkMode, DEADLINE};

/// Writes one key through each node in turn and reads it linearizably through the next, 60
/// times: every node reads the key again and again (its value cache holds it after the first
/// read), and each read must see the write acknowledged just before it. Returns the first read
/// that did not, as text, how many followers' read-index requests the nodes answered without a
/// heartbeat round (`keel_read_index_at_once_total`, summed), and whether the leader's term
/// changed during the run.
fn a_read_that_missed_the_write_before_it(
    bin: std::path::PathBuf,
    env: &[(&str, &str)],
    nodes: u64,
) -> (Option<String>, u64, bool) {
    let mut c = Cluster::launch_with(nodes as usize, &[], false, bin, env);
    c.wait_for_leader();
    let at_once = |c: &Cluster| {
        c.ids()
            .into_iter()
            .map(|id| {
                wait_until(DEADLINE, "the node's /metrics", || {
                    c.metric(id, "keel_read_index_at_once_total")
                })
            })
            .sum()
    };
    let leader_term = |c: &Cluster| {
        wait_until(DEADLINE, "a leader's term", || {
            c.ids().into_iter().find_map(|id| {
                let s = c.status(id).filter(|s| s["role"] == "leader")?;
                s["term"].as_u64()
            })
        })
    };
    let term = leader_term(&c);
    for i in 0..60u64 {
        let writer = i % nodes + 1;
        let reader = (i + 1) % nodes + 1;
        let value = format!("v{i}");
        c.put_until_ok(writer, "lin/register", value.as_bytes(), DEADLINE);
        // An election may refuse a read (503, 504): it is asked again, and must still see the
        // write. Any other answer is the read's.
        let r = wait_until(DEADLINE, "a linearizable read answered", || {
            c.get(reader, "lin/register")
                .ok()
                .filter(|r| !matches!(r.status, 503 | 504))
        });
        assert_eq!(r.status, 200, "{}", r.text());
        if r.text() != value {
            let missed = format!(
                "read on node {reader} after {value:?} was written through node {writer}: {:?}",
                r.text()
            );
            return (Some(missed), at_once(&c), leader_term(&c) != term);
        }
    }
    (None, at_once(&c), leader_term(&c) != term)
}

/// With three voters a follower's read-index request is answered by the leader without a
/// heartbeat round (the follower's request is the quorum's second vote), and the reads still see
/// every write acknowledged before them.
#[test]
fn linearizable_read_on_a_follower_sees_a_write_acknowledged_elsewhere() {
    // A leader change moves reads between leader and followers: such a run is redone.
    for _ in 0..3 {
        let (missed, at_once, changed) =
            a_read_that_missed_the_write_before_it(keel_tests::keel_bin(), &[], 3);
        assert_eq!(missed, None);
        if !changed {
            // 40 of the 60 reads are on a follower, each its own request.
            assert!(at_once >= 40, "{at_once} requests answered at once");
            return;
        }
    }
    panic!("the leader changed in each of three runs");
}

/// With five voters the leader and one follower are no quorum: every follower's read goes
/// through a heartbeat round, and none is answered at once.
#[test]
fn five_voters_answer_followers_reads_after_a_round() {
    let (missed, at_once, _) =
        a_read_that_missed_the_write_before_it(keel_tests::keel_bin(), &[], 5);
    assert_eq!(missed, None);
    assert_eq!(at_once, 0);
}

/// The check above can fail: with the planted `cache-skip-apply` a node's cached record outlives
/// the write that replaced it.
#[test]
fn a_cached_record_kept_after_its_overwrite_is_caught() {
    let (missed, _, _) = a_read_that_missed_the_write_before_it(
        keel_tests::suite::planted_bin(),
        &[("KEEL_PLANTED_BUG", "cache-skip-apply")],
        3,
    );
    assert!(missed.is_some(), "every read saw the write before it");
    eprintln!("caught: {}", missed.unwrap_or_default());
}

/// A leader cut off with one follower of five voters, while the other three elect a leader and
/// acknowledge a newer write. Node 1 leads with an election timeout ten times the others' (its
/// check-quorum steps it down only 10–20 s after the cut), so it still believes it leads while
/// its follower, node 2, reads. Returns node 2's linearizable read (status, body) and whether
/// node 2 followed node 1 before it and node 1 still led after it (else the run did not test
/// the window it is about).
fn a_minority_followers_read(bin: std::path::PathBuf, env: &[(&str, &str)]) -> (u16, String, bool) {
    let mut c = Cluster::launch_with(5, &["--read-timeout", "1500ms"], true, bin, env);
    c.wait_for_leader();
    c.lead_slowly(1);
    c.put_until_ok(1, "lin/m", b"old", DEADLINE);
    wait_until(DEADLINE, "node 2 applied the first write", || {
        let r = c.get(2, "lin/m?consistency=stale").ok()?;
        (r.text() == "old").then_some(())
    });
    for a in [1, 2] {
        for b in [3, 4, 5] {
            c.cut(a, b);
            c.cut(b, a);
        }
    }
    let new = wait_until(DEADLINE, "a leader among nodes 3, 4 and 5", || {
        [3, 4, 5].into_iter().find(|&id| c.leads(id))
    });
    c.put_until_ok(new, "lin/m", b"new", DEADLINE);
    let follows = c.status(2).is_some_and(|s| s["leader"] == 1);
    let r = c.get(2, "lin/m").expect("node 2 answers");
    let still_led = c.leads(1);
    (r.status, r.text(), follows && still_led)
}

/// With five voters a leader and the follower asking are no quorum, so the follower's read goes
/// through a heartbeat round: cut off from the majority, it is not answered with old data.
#[test]
fn a_leader_cut_off_with_one_of_five_voters_does_not_answer_its_reads_with_old_data() {
    let (status, body, in_window) = a_minority_followers_read(keel_tests::keel_bin(), &[]);
    assert!(
        in_window,
        "node 2 did not follow node 1 through its read: the window was not tested"
    );
    assert!(
        status == 503 || status == 504,
        "node 2's linearizable read: {status} {body:?}"
    );
}

/// The check above can fail: with the planted `pair-quorum` the cut-off leader answers its
/// follower's read at once, with the commit index it has, and the read returns the old value.
#[test]
fn a_read_answered_by_a_leader_and_one_of_five_voters_is_caught() {
    let (status, body, in_window) = a_minority_followers_read(
        keel_tests::suite::planted_bin(),
        &[("KEEL_PLANTED_BUG", "pair-quorum")],
    );
    assert!(
        in_window,
        "node 2 did not follow node 1 through its read: the window was not tested"
    );
    assert_eq!(
        (status, body.as_str()),
        (200, "old"),
        "the stale read was not served"
    );
}

#[test]
fn a_cut_off_leader_never_answers_a_linearizable_read_with_old_data() {
    let mut c = Cluster::start_proxied(3, &[]);
    let old = c.wait_for_leader();
    c.put_until_ok(old, "lin/x", b"old", DEADLINE);
    c.isolate(old);
    // The majority side elects a leader and takes a new write.
    let others: Vec<u64> = c.ids().into_iter().filter(|&id| id != old).collect();
    let new = wait_until(DEADLINE, "a leader on the majority side", || {
        others.iter().find_map(|&id| {
            let s = c.status(id)?;
            (s["role"] == "leader").then_some(id)
        })
    });
    c.put_until_ok(new, "lin/x", b"new", DEADLINE);
    // The old leader may still believe it leads; its linearizable reads must fail, not return "old".
    for _ in 0..5 {
        let r = c.get(old, "lin/x").expect("old leader answers");
        assert_ne!(
            r.status,
            200,
            "stale linearizable read on the deposed leader: {}",
            r.text()
        );
        assert!(
            r.status == 503 || r.status == 504,
            "{} {}",
            r.status,
            r.text()
        );
        // A stale read is allowed to be old, and says how far it has applied.
        let s = c
            .get(old, "lin/x?consistency=stale")
            .expect("old leader answers");
        assert_eq!(s.text(), "old");
    }
    // Healed: the old node catches up and its linearizable reads return the new value.
    c.heal();
    let r = wait_until(DEADLINE, "a linearizable read on the healed node", || {
        let r = c.get(old, "lin/x").ok()?;
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.text(), "new");
}

#[test]
fn linearizable_read_on_a_leader_whose_followers_are_paused_does_not_answer() {
    let mut c = Cluster::start_with(3, &["--read-timeout", "1500ms"]);
    let leader = c.wait_for_leader();
    c.put_until_ok(leader, "lin/p", b"v1", DEADLINE);
    for id in c.ids().into_iter().filter(|&id| id != leader) {
        c.pause(id);
    }
    let r = c.get(leader, "lin/p").expect("leader answers");
    assert!(
        r.status == 503 || r.status == 504,
        "{} {}",
        r.status,
        r.text()
    );
    for id in c.ids() {
        c.resume(id);
    }
    c.wait_for_leader();
}

#[test]
fn stale_read_with_min_index_waits_for_a_lagging_follower() {
    let mut c = Cluster::start_proxied(3, &[]);
    let leader = c.wait_for_leader();
    let lagging = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    // A sync write is answered once every member has applied it, so the follower
    // holds v0 before its link is cut.
    c.put_until_ok(leader, "ryw/k?mode=sync", b"v0", DEADLINE);
    // The leader's traffic to one follower stops: the other follower makes the quorum.
    c.link(leader, lagging).set(LinkMode::Cut);
    let r = c.put_until_ok(leader, "ryw/k", b"v1", DEADLINE);
    let index = r.json()["index"].as_u64().expect("index");
    // The follower really lags: a plain stale read still sees the old value.
    let r = c.get(lagging, "ryw/k?consistency=stale").expect("answers");
    assert_eq!(r.text(), "v0");
    assert!(r.header_u64("x-keel-index").unwrap_or(u64::MAX) < index);

    let (tx, rx) = mpsc::channel();
    let addr = c.node(lagging).http.clone();
    std::thread::spawn(move || {
        let path = format!("/v1/kv/ryw/k?consistency=stale&min_index={index}");
        let http = Http::new(Duration::from_secs(2), Duration::from_secs(30));
        let _ = tx.send(match http.send(&addr, "GET", &path, &[], None) {
            Ok(r) => (r.status, r.text()),
            Err(e) => (0, e.to_string()),
        });
    });
    // While the link is cut the read cannot be served: it waits.
    assert!(
        rx.recv_timeout(Duration::from_millis(700)).is_err(),
        "the min_index read answered while its node could not have applied {index}"
    );
    c.link(leader, lagging).set(LinkMode::Pass);
    let (status, body) = rx
        .recv_timeout(DEADLINE)
        .expect("the read answers once healed");
    assert_eq!((status, body.as_str()), (200, "v1"));
}

#[test]
fn stale_read_with_an_unreachable_min_index_times_out_with_504() {
    let mut c = Cluster::start_with(3, &["--read-timeout", "800ms"]);
    c.wait_for_leader();
    let r = c
        .get(2, "nothing?consistency=stale&min_index=1000000")
        .expect("answers");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("timeout"));
}

#[test]
fn leader_status_shows_every_members_progress() {
    let mut c = Cluster::start_proxied(3, &[]);
    let leader = c.wait_for_leader();
    let index = c.put_until_ok(leader, "st/k", b"v", DEADLINE).json()["index"]
        .as_u64()
        .expect("index");
    let s = wait_until(DEADLINE, "every member to report its applied index", || {
        let s = c.status(leader)?;
        let all = s["progress"]
            .as_array()?
            .iter()
            .all(|m| m["applied_index"].as_u64().unwrap_or(0) >= index && m["reachable"] == true);
        all.then_some(s)
    });
    assert_eq!(s["role"], "leader");
    assert_eq!(s["progress"].as_array().map(Vec::len), Some(3));
    assert!(s["members"]
        .as_array()
        .expect("members")
        .iter()
        .all(|m| m["http_addr"].is_string()));
    // A follower cut off both ways shows up as unreachable and lagging.
    let f = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("a follower");
    c.isolate(f);
    let idx2 = c.put_until_ok(leader, "st/k2", b"v", DEADLINE).json()["index"]
        .as_u64()
        .expect("index");
    let s = wait_until(
        DEADLINE,
        "the cut-off follower to show as unreachable",
        || {
            let s = c.status(leader)?;
            let m = s["progress"]
                .as_array()?
                .iter()
                .find(|m| m["id"] == f)?
                .clone();
            (m["reachable"] == false).then_some(m)
        },
    );
    assert!(s["match_index"].as_u64().unwrap_or(u64::MAX) < idx2);
    assert!(s["lag"].as_u64().unwrap_or(0) > 0);
    // The followers' own status answers too.
    let fs = c.status(f).expect("follower status");
    assert_eq!(fs["id"], f);
    c.heal();
}

/// A GET's `X-Keel-Index` is an index whose state the answer is: never below the version of
/// the value it returns, even when the value was applied between the node reading its applied
/// index and reading the key. (Before the fix the header was the applied index read first, and
/// a session continuing from it could read an older version elsewhere; the fault suite's
/// snapshot check found it. Here four writers keep the leader applying while GETs read.)
#[test]
fn a_get_never_reports_an_index_below_the_version_it_returns() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let addr = c.node(leader).http.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (addr, stop) = (addr.clone(), stop.clone());
            std::thread::spawn(move || {
                let http = Http::new(Duration::from_secs(2), Duration::from_secs(5));
                for i in 0..100_000u64 {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        break;
                    }
                    let _ = http.send(
                        &addr,
                        "PUT",
                        "/v1/kv/idx/k?mode=async",
                        &[],
                        Some(format!("{w}-{i}").as_bytes()),
                    );
                }
            })
        })
        .collect();
    let http = Http::new(Duration::from_secs(2), Duration::from_secs(5));
    let start = std::time::Instant::now();
    let (mut checked, mut below) = (0, Vec::new());
    while checked < 5000 && start.elapsed() < Duration::from_secs(30) {
        let Ok(r) = http.send(&addr, "GET", "/v1/kv/idx/k?consistency=stale", &[], None) else {
            continue;
        };
        if r.status != 200 {
            continue;
        }
        let version: u64 = r.headers["etag"].trim_matches('"').parse().expect("etag");
        let index = r.header_u64("x-keel-index").expect("X-Keel-Index");
        checked += 1;
        if version > index {
            below.push((version, index));
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    for w in writers {
        let _ = w.join();
    }
    assert!(checked >= 100, "only {checked} reads answered");
    assert!(
        below.is_empty(),
        "{} of {checked} GETs answered a version above their X-Keel-Index: {:?}",
        below.len(),
        &below[..below.len().min(5)]
    );
}

/// A follower's read-index request is swallowed on its way to the leader (a blackhole: the
/// connection stays open, the bytes vanish, nothing fails) while one linearizable read waits
/// on it. raft-rs never answers a request that did not arrive; the Ready loop asks again every
/// few ticks, so once the link passes again the read is answered. Returns the read's status and
/// body (the read timeout is 15 s, far beyond the re-ask's 0.3 s), or None when the term moved
/// meanwhile: a leader change also asks again, so that run says nothing about the tick's.
fn a_read_whose_request_was_lost(
    bin: std::path::PathBuf,
    env: &[(&str, &str)],
) -> Option<(u16, String)> {
    let mut c = Cluster::launch_with(3, &["--read-timeout", "15s"], true, bin, env);
    let leader = c.wait_for_leader();
    c.put_until_ok(leader, "reask/x", b"v", DEADLINE);
    let term = |c: &Cluster| c.status(leader).and_then(|s| s["term"].as_u64());
    let term_before = term(&c);
    let follower = c.others(&[leader])[0];
    c.link(follower, leader).set(LinkMode::Blackhole);

    let (tx, rx) = mpsc::channel();
    let addr = c.node(follower).http.clone();
    std::thread::spawn(move || {
        let http = Http::new(Duration::from_secs(2), Duration::from_secs(60));
        let _ = tx.send(match http.send(&addr, "GET", "/v1/kv/reask/x", &[], None) {
            Ok(r) => (r.status, r.text()),
            Err(e) => (0, e.to_string()),
        });
    });
    // The read is with Raft: its request went out (or goes out within the same turn of the
    // loop). Once the blackhole has swallowed three more reads of bytes (the follower answers
    // the leader's heartbeats every tick), the request, sent before them, is gone too.
    wait_until(DEADLINE, "the read asked of Raft", || {
        (c.metric(follower, "keel_read_index_waiting")? >= 1).then_some(())
    });
    let before = c.link(follower, leader).swallowed();
    wait_until(DEADLINE, "the follower's messages swallowed", || {
        (c.link(follower, leader).swallowed() >= before + 3).then_some(())
    });
    assert!(
        rx.try_recv().is_err(),
        "the read was answered while its request could not reach the leader"
    );
    c.link(follower, leader).set(LinkMode::Pass);
    let answer = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the read answers (200 or its timeout)");
    (term_before.is_some() && term(&c) == term_before).then_some(answer)
}

/// [`a_read_whose_request_was_lost`] until a run without a leader change (at most three).
fn lost_read(bin: std::path::PathBuf, env: &[(&str, &str)]) -> (u16, String) {
    for _ in 0..3 {
        if let Some(answer) = a_read_whose_request_was_lost(bin.clone(), env) {
            return answer;
        }
    }
    panic!("the term moved in each of three runs: no run isolated the re-ask");
}

#[test]
fn a_lost_read_index_request_is_asked_again() {
    let (status, body) = lost_read(keel_tests::keel_bin(), &[]);
    assert_eq!((status, body.as_str()), (200, "v"));
}

/// The check above can fail: with the planted `no-read-reask` the same read waits out its
/// timeout.
#[test]
fn a_read_index_request_never_asked_again_is_caught() {
    let (status, body) = lost_read(
        keel_tests::suite::planted_bin(),
        &[("KEEL_PLANTED_BUG", "no-read-reask")],
    );
    assert_eq!(status, 504, "{body}");
}
