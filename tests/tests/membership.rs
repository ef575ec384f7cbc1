//! Membership changes and leader transfer on real processes: a cluster grows from 3 to 5 voters
//! and shrinks back to 3 under a write load, losing nothing, and a removed node cannot disturb it;
//! a rolling restart with graceful leader hand-over keeps writes flowing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_tests::http::Http;
use keel_tests::{wait_until, Cluster, DEADLINE};
use serde_json::json;

/// Writes unique keys through the given nodes in turn until stopped; returns the keys acked.
fn writer(
    addrs: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, f64)> {
    std::thread::spawn(move || {
        let http = Http::new(Duration::from_secs(2), Duration::from_secs(5));
        let mut acked = Vec::new();
        let mut last_ok = Instant::now();
        let mut longest_gap = 0.0f64;
        let mut i = 0u64;
        let mut skip = 0usize;
        while !stop.load(Ordering::Acquire) && i < 1_000_000 && skip < 100_000 {
            let targets = addrs.lock().expect("addrs").clone();
            let addr = &targets[(i as usize + skip) % targets.len()];
            let key = format!("m/{i:06}");
            let path = format!("/v1/kv/{key}");
            match http.send(addr, "PUT", &path, &[("Idempotency-Key", &key)], Some(b"v")) {
                Ok(r) if (200..300).contains(&r.status) => {
                    longest_gap = longest_gap.max(last_ok.elapsed().as_secs_f64());
                    last_ok = Instant::now();
                    acked.push(key);
                    i += 1;
                }
                // Not acknowledged: try the same key again (through the next node, as the
                // node index moves with `skip`), after a short pause.
                _ => {
                    skip += 1;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        (acked, longest_gap)
    })
}

fn leader_status(c: &Cluster, ids: &[u64]) -> Option<serde_json::Value> {
    ids.iter().find_map(|&id| {
        let s = c.status(id)?;
        (s["role"] == "leader").then_some(s)
    })
}

fn promote_when_caught_up(c: &Cluster, ids: &[u64], id: u64) {
    wait_until(
        Duration::from_secs(60),
        &format!("learner {id} to be promoted"),
        || {
            let s = leader_status(c, ids)?;
            let leader = s["id"].as_u64()?;
            let r = c
                .request(
                    leader,
                    "POST",
                    &format!("/v1/cluster/members/{id}/promote"),
                    &[],
                    None,
                )
                .ok()?;
            (r.status == 200).then_some(())
        },
    );
}

fn voters(c: &Cluster, ids: &[u64]) -> Vec<u64> {
    let s = leader_status(c, ids).expect("a leader");
    let mut v: Vec<u64> = s["voters"]
        .as_array()
        .expect("voters")
        .iter()
        .filter_map(|x| x.as_u64())
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn the_cluster_grows_to_five_and_shrinks_to_three_under_load_losing_nothing() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "100"]);
    c.wait_for_leader();
    let addrs = Arc::new(Mutex::new(vec![c.node(3).http.clone()]));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(addrs.clone(), stop.clone());

    // Grow: two learners join through node 1, catch up by snapshot, and are promoted.
    let mut ids = vec![1, 2, 3];
    for _ in 0..2 {
        let id = c.add_node(1);
        ids.push(id);
        promote_when_caught_up(&c, &ids, id);
    }
    wait_until(DEADLINE, "five voters", || {
        (voters(&c, &ids) == vec![1, 2, 3, 4, 5]).then_some(())
    });
    addrs
        .lock()
        .expect("addrs")
        .extend([c.node(4).http.clone(), c.node(5).http.clone()]);

    // Shrink: remove nodes 1 and 2 (moving leadership away from them first).
    *addrs.lock().expect("addrs") = vec![
        c.node(3).http.clone(),
        c.node(4).http.clone(),
        c.node(5).http.clone(),
    ];
    for gone in [1u64, 2] {
        let remaining: Vec<u64> = ids.iter().copied().filter(|&i| i != gone).collect();
        wait_until(
            Duration::from_secs(60),
            &format!("node {gone} to be removed"),
            || {
                let s = leader_status(&c, &ids)?;
                let leader = s["id"].as_u64()?;
                if leader == gone {
                    let to = json!({"to": remaining[remaining.len() - 1]}).to_string();
                    let _ = c.request(
                        leader,
                        "POST",
                        "/v1/cluster/transfer-leader",
                        &[],
                        Some(to.as_bytes()),
                    );
                    return None;
                }
                let r = c
                    .request(
                        leader,
                        "DELETE",
                        &format!("/v1/cluster/members/{gone}"),
                        &[],
                        None,
                    )
                    .ok()?;
                (r.status == 200).then_some(())
            },
        );
        assert!(
            c.wait_exit(gone, DEADLINE),
            "removed node {gone} stops by itself"
        );
        ids = remaining;
    }
    wait_until(DEADLINE, "three voters", || {
        (voters(&c, &ids) == vec![3, 4, 5]).then_some(())
    });

    // A removed node restarted on its old data cannot disturb the cluster.
    let term_before = leader_status(&c, &ids).expect("leader")["term"]
        .as_u64()
        .expect("term");
    c.restart(1);
    for i in 0..30 {
        c.put_until_ok(3, &format!("after-removal/{i}"), b"x", DEADLINE);
    }
    let s = leader_status(&c, &ids).expect("leader");
    assert_eq!(
        s["term"].as_u64(),
        Some(term_before),
        "the removed node caused an election"
    );

    stop.store(true, Ordering::Release);
    let (acked, _) = w.join().expect("writer");
    eprintln!(
        "{} writes acknowledged while the membership changed",
        acked.len()
    );
    assert!(acked.len() > 50);
    for id in [3u64, 4, 5] {
        let r = c
            .request(id, "GET", "/v1/kv?prefix=m/&limit=10000", &[], None)
            .expect("answers");
        let v = r.json();
        let have: std::collections::HashSet<&str> = v["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["key"].as_str())
            .collect();
        for k in &acked {
            assert!(have.contains(k.as_str()), "node {id} lost acknowledged {k}");
        }
    }
}

#[test]
fn a_rolling_restart_with_leader_handover_keeps_writes_flowing() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let addrs = Arc::new(Mutex::new(c.endpoints()));
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(addrs.clone(), stop.clone());
    let mut leader_restarts = 0;
    for id in c.ids() {
        let before = leader_status(&c, &c.ids()).expect("leader");
        let was_leader = before["id"].as_u64() == Some(id);
        // Clients stop sending to the node being restarted, as a load balancer would.
        *addrs.lock().expect("addrs") = c
            .others(&[id])
            .into_iter()
            .map(|i| c.node(i).http.clone())
            .collect();
        c.stop(id);
        c.restart(id);
        let s = c.wait_for_leader();
        if was_leader {
            // The stopping leader handed leadership over before it exited (the write gap
            // asserted below is what shows it cost no election timeout).
            let after = c.status(s).expect("status");
            eprintln!(
                "node {id} (leader) restarted; node {s} leads at term {} (was {})",
                after["term"], before["term"]
            );
            leader_restarts += 1;
        }
        wait_until(DEADLINE, &format!("node {id} to serve again"), || {
            let r = c.request(id, "GET", "/ready", &[], None).ok()?;
            (r.status == 200).then_some(())
        });
        *addrs.lock().expect("addrs") = c.endpoints();
    }
    stop.store(true, Ordering::Release);
    let (acked, longest_gap) = w.join().expect("writer");
    eprintln!(
        "rolling restart: {} writes, longest time without a successful write {longest_gap:.2} s, leader restarted {leader_restarts} time(s)",
        acked.len()
    );
    assert!(
        longest_gap < 5.0,
        "writes stopped for {longest_gap:.2} s, longer than one request timeout (5 s)"
    );
}

/// What one request to add a learner answered: id, status, error code, time taken.
type AddAnswer = (u64, u16, Option<String>, Duration);

/// Asks the node at `addr` to add three learners at the same instant (their addresses lead
/// nowhere: only the configuration matters here).
fn add_learners_at_once(addr: &str, ids: [u64; 3]) -> Vec<AddAnswer> {
    let barrier = Arc::new(std::sync::Barrier::new(ids.len()));
    ids.into_iter()
        .map(|id| {
            let (addr, barrier) = (addr.to_string(), barrier.clone());
            std::thread::spawn(move || {
                let http = Http::new(Duration::from_secs(2), Duration::from_secs(15));
                let body =
                    json!({"id": id, "peer_addr": format!("127.0.0.1:{}", 1000 + id)}).to_string();
                barrier.wait();
                let start = Instant::now();
                let r = http
                    .send(
                        &addr,
                        "POST",
                        "/v1/cluster/members",
                        &[],
                        Some(body.as_bytes()),
                    )
                    .expect("the leader answers");
                (id, r.status, r.error_code(), start.elapsed())
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect()
}

#[test]
fn concurrent_membership_changes_are_refused_at_once_not_left_unknown() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let addr = c.node(leader).http.clone();
    // raft-rs takes one change at a time. A round whose three changes did not overlap (each
    // committed before the next arrived) tests nothing: new ids, at most five rounds.
    let mut added = Vec::new();
    let mut answers = Vec::new();
    for round in 0..5u64 {
        let ids = [10 + 3 * round, 11 + 3 * round, 12 + 3 * round];
        answers = add_learners_at_once(&addr, ids);
        added.extend(ids);
        eprintln!("round {round} answers: {answers:?}");
        assert!(
            answers.iter().any(|a| a.1 == 200),
            "none was applied: {answers:?}"
        );
        for (id, status, code, took) in &answers {
            match status {
                200 => {}
                503 => {
                    assert_eq!(code.as_deref(), Some("membership_change_pending"), "{id}");
                    assert!(
                        *took < Duration::from_secs(2),
                        "{id} refused only after {took:?}"
                    );
                }
                other => panic!("adding {id} answered {other} {code:?} after {took:?}"),
            }
        }
        if answers.iter().any(|a| a.1 != 200) {
            break;
        }
    }
    assert!(
        answers.iter().any(|a| a.1 != 200),
        "in five rounds the three changes never overlapped, so nothing was tested: {answers:?}"
    );
    // A refused change certainly did not happen: sent again, each one is applied.
    for (id, status, _, _) in &answers {
        if *status == 200 {
            continue;
        }
        let body = json!({"id": id, "peer_addr": format!("127.0.0.1:{}", 1000 + id)}).to_string();
        wait_until(DEADLINE, &format!("learner {id} to be added"), || {
            let r = c
                .request(
                    leader,
                    "POST",
                    "/v1/cluster/members",
                    &[],
                    Some(body.as_bytes()),
                )
                .ok()?;
            match r.status {
                200 => Some(()),
                503 => None,
                other => panic!("adding {id} again answered {other}: {}", r.text()),
            }
        });
    }
    let learners = wait_until(DEADLINE, "every learner", || {
        let s = c.status(leader)?;
        let l: Vec<u64> = serde_json::from_value(s["learners"].clone()).ok()?;
        (l.len() == added.len()).then_some(l)
    });
    let mut learners = learners;
    learners.sort_unstable();
    assert_eq!(learners, added);
}

#[test]
fn a_member_that_catches_up_by_snapshot_learns_members_added_while_it_was_away() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", "60"]);
    let leader = c.wait_for_leader();
    let away = c.others(&[leader])[0];
    c.kill(away);
    // Node 4 joins and becomes a voter while `away` is down.
    let new = c.add_node(leader);
    let ids = [1, 2, 3, new];
    promote_when_caught_up(&c, &ids, new);
    wait_until(DEADLINE, "node 4 to be a voter", || {
        (voters(&c, &ids).len() == 4).then_some(())
    });
    // Enough writes that the log is compacted past where `away` stopped.
    for i in 0..300 {
        c.put_until_ok(leader, &format!("away/{i}"), b"v", DEADLINE);
    }
    c.restart(away);
    wait_until(
        DEADLINE,
        "the returning member to install a snapshot",
        || {
            let log = std::fs::read_to_string(&c.node(away).log).ok()?;
            log.contains("installed a snapshot").then_some(())
        },
    );
    // Now the two other original members go: one removed (never the leader), one stopped. The
    // voters left are `away` and node 4, which can only form a quorum if `away` knows where
    // node 4 is and lets it in.
    let originals = c.others(&[away, new]);
    let (gone, stopped) = (originals[0], originals[1]);
    let lead = leader_status(&c, &ids).expect("a leader")["id"]
        .as_u64()
        .expect("id");
    if lead == gone {
        let r = c
            .request(
                gone,
                "POST",
                "/v1/cluster/transfer-leader",
                &[],
                Some(json!({"to": stopped}).to_string().as_bytes()),
            )
            .expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    wait_until(DEADLINE, &format!("member {gone} to be removed"), || {
        let lead = leader_status(&c, &ids)?["id"].as_u64()?;
        let r = c
            .request(
                lead,
                "DELETE",
                &format!("/v1/cluster/members/{gone}"),
                &[],
                None,
            )
            .ok()?;
        (r.status == 200).then_some(())
    });
    c.wait_exit(gone, DEADLINE);
    c.kill(stopped);
    c.put_until_ok(
        away,
        "after/quorum",
        b"formed by the returning member and node 4",
        DEADLINE,
    );
    for id in [away, new] {
        let r = c.get(id, "after/quorum").expect("answers");
        assert_eq!(r.status, 200, "node {id}: {}", r.text());
    }
}

/// A node whose join was applied but whose answer was lost asks again when it restarts: the same
/// id with the same peer address is answered 200 with the members, without a second change; the
/// same id with another address, or a voter's id, is still refused. (Before the fix the retry got 409
/// `member_exists`, and the new node, which stores nothing until it has its answer, could never
/// start: the fault suite's membership nemesis found it.)
#[test]
fn asking_to_add_the_same_member_again_succeeds_without_a_new_change() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let add = |body: &str| {
        c.request(
            leader,
            "POST",
            "/v1/cluster/members",
            &[],
            Some(body.as_bytes()),
        )
        .expect("answers")
    };
    let body = json!({"id": 9, "peer_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"}).to_string();
    let first = add(&body);
    assert_eq!(first.status, 200, "{}", first.text());
    let last_index = |c: &Cluster| c.status(leader).and_then(|s| s["last_index"].as_u64());
    let before = last_index(&c).expect("last index");
    let again = add(&body);
    assert_eq!(again.status, 200, "{}", again.text());
    let members = again.json()["members"].clone();
    assert!(
        members
            .as_array()
            .expect("members")
            .iter()
            .any(|m| m["id"] == 9 && m["role"] == "learner"),
        "{members}"
    );
    assert_eq!(
        last_index(&c),
        Some(before),
        "no second change was proposed"
    );
    let other = json!({"id": 9, "peer_addr": "127.0.0.1:3"}).to_string();
    let refused = add(&other);
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.error_code().as_deref(), Some("member_exists"));
    // A voter's id is never handed out again, even with its own addresses: a node with no data
    // under a voter's id would vote with no log.
    let voter = if leader == 1 { 2 } else { 1 };
    let status = c.status(voter).expect("status");
    let peer = status["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["id"] == voter))
        .and_then(|m| m["peer_addr"].as_str().map(str::to_string))
        .expect("the voter's peer address");
    let again = json!({"id": voter, "peer_addr": peer}).to_string();
    let refused = add(&again);
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.error_code().as_deref(), Some("member_exists"));
}
