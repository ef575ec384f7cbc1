//! More requests than a node lets wait: client writes past the Raft thread's queue, linearizable
//! reads past the reads waiting for their read index, and forwarded writes past the leader's
//! bound are answered 503 `overloaded` at once (with `Retry-After`), and nothing refused is
//! applied nor anything acknowledged lost.

use std::time::{Duration, Instant};

use keel_tests::{wait_until, Cluster, DEADLINE};

#[test]
fn overload_is_answered_503_overloaded_with_retry_after_and_loses_nothing() {
    // A queue into the Raft thread of two client requests: 48 writers overflow it.
    let mut c = Cluster::start_with(3, &["--max-pending", "2"]);
    c.wait_for_leader();
    let endpoints = c.endpoints();
    let results: Vec<(String, u16, Option<String>, bool)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..48)
            .map(|t| {
                let addr = endpoints[t % endpoints.len()].clone();
                s.spawn(move || {
                    let http = keel_tests::http::Http::new(
                        Duration::from_secs(2),
                        Duration::from_secs(15),
                    );
                    let mut out = Vec::new();
                    for i in 0..60 {
                        let key = format!("w{t}-{i}");
                        let path = format!("/v1/kv/{key}");
                        let Ok(r) = http.send(&addr, "PUT", &path, &[], Some(b"v")) else {
                            continue;
                        };
                        let retry = r.headers.contains_key("retry-after");
                        out.push((key, r.status, r.error_code(), retry));
                    }
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("writer thread"))
            .collect()
    });
    let overloaded: Vec<_> = results
        .iter()
        .filter(|r| r.2.as_deref() == Some("overloaded"))
        .collect();
    let acked: Vec<_> = results.iter().filter(|r| r.1 == 200).collect();
    eprintln!(
        "{} writes: {} acknowledged, {} refused as overloaded",
        results.len(),
        acked.len(),
        overloaded.len()
    );
    assert!(
        !overloaded.is_empty(),
        "48 writers never overflowed a queue of 2"
    );
    assert!(!acked.is_empty());
    for r in &overloaded {
        assert_eq!(r.1, 503);
        assert!(r.3, "503 overloaded without Retry-After");
    }
    // Nothing lost, nothing refused applied.
    let leader = c.wait_for_leader();
    for (key, status, code, _) in &results {
        let got = wait_until(Duration::from_secs(30), "a read", || {
            let r = c.get(leader, key).ok()?;
            (r.status != 503).then_some(r.status)
        });
        match (status, code.as_deref()) {
            (200, _) => assert_eq!(got, 200, "acknowledged {key} lost"),
            (503, Some("overloaded")) => assert_eq!(got, 404, "refused {key} was applied"),
            _ => {}
        }
    }
    let metrics = c
        .request(leader, "GET", "/metrics", &[], None)
        .expect("metrics")
        .text();
    let counted: u64 = c
        .ids()
        .iter()
        .filter_map(|id| c.metric(*id, "keel_overloaded_total"))
        .sum();
    assert!(
        counted >= 1 && metrics.contains("keel_overloaded_total"),
        "refusals counted in /metrics: {counted}"
    );
}

#[test]
fn linearizable_reads_past_the_bound_are_refused_while_the_others_wait() {
    // Four reads may wait for their read index; none gets one while the others are paused, and
    // the follower, slow to campaign (10–20 s), keeps its leader meanwhile (so its reads wait
    // instead of failing as `no_leader`).
    let mut c = Cluster::start_with(3, &["--max-pending", "4", "--read-timeout", "120s"]);
    let leader = c.wait_for_leader();
    c.put_until_ok(leader, "r/k", b"v", DEADLINE);
    let f = c
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    let others: Vec<u64> = c.ids().into_iter().filter(|id| *id != f).collect();
    c.kill(f);
    c.set_node_env(f, "KEEL_ELECTION_TICKS", Some("100"));
    c.restart(f);
    wait_until(
        DEADLINE,
        "the follower back, following, with the write",
        || {
            c.status(f).filter(|s| s["leader"] == leader)?;
            c.get(f, "r/k").ok().filter(|r| r.status == 200)
        },
    );
    for id in &others {
        c.pause(*id);
    }
    let addr = c.http_addr(f);
    let (tx, rx) = std::sync::mpsc::channel();
    let readers: Vec<_> = (0..10)
        .map(|_| {
            let (addr, tx) = (addr.clone(), tx.clone());
            std::thread::spawn(move || {
                let http =
                    keel_tests::http::Http::new(Duration::from_secs(2), Duration::from_secs(180));
                let r = http.send(&addr, "GET", "/v1/kv/r/k", &[], None);
                let _ = tx.send(r.map(|r| (r.status, r.error_code())).ok());
            })
        })
        .collect();
    // Six are refused at once; the four others still wait (the node has no read index to give).
    let mut refused = Vec::new();
    while refused.len() < 6 {
        let got = rx
            .recv_timeout(DEADLINE)
            .expect("six answers while the quorum is paused");
        refused.push(got);
    }
    for r in &refused {
        assert_eq!(r, &Some((503, Some("overloaded".into()))), "{refused:?}");
    }
    assert!(
        rx.recv_timeout(Duration::from_secs(1)).is_err(),
        "a seventh read was answered while no read index could come"
    );
    for id in &others {
        c.resume(*id);
    }
    for h in readers {
        h.join().expect("reader thread");
    }
    drop(tx);
    let served: Vec<_> = rx.iter().collect();
    assert_eq!(served, vec![Some((200, None)); 4], "the reads that waited");
    // Every place came back: as many reads again, at once, are all served.
    let again: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| c.get(f, "r/k").map(|r| r.status).ok()))
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().expect("reader thread"))
            .collect()
    });
    assert_eq!(again, vec![200; 4], "places not given back");
}

/// PUTs `v` through `addr` to every path at once, one client each (2 s to connect, 30 s to
/// answer); each answer with how long it took, in the order of `paths`.
fn put_all_at_once(addr: &str, paths: &[String]) -> Vec<(keel_tests::Resp, Duration)> {
    std::thread::scope(|s| {
        let handles: Vec<_> = paths
            .iter()
            .map(|path| {
                s.spawn(move || {
                    let http = keel_tests::http::Http::new(
                        Duration::from_secs(2),
                        Duration::from_secs(30),
                    );
                    let started = Instant::now();
                    let r = http
                        .send(addr, "PUT", path, &[], Some(b"v"))
                        .expect("the follower answers");
                    (r, started.elapsed())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("writer thread"))
            .collect()
    })
}

#[test]
fn forwarded_writes_past_the_leaders_bound_are_refused_at_once_and_lose_nothing() {
    // The leader serves at most 2 forwarded writes at once. `sync` writes wait for every
    // replica, and one follower is paused, so the first two forwarded ones hold their places
    // until they time out; the others must be refused at once, not queued as tasks.
    let mut c = Cluster::start_with(3, &["--max-forwarded", "2"]);
    let leader = c.wait_for_leader();
    let others = c.others(&[leader]);
    let (via, paused) = (others[0], others[1]);
    c.pause(paused);
    let keys: Vec<String> = (0..8).map(|t| format!("f{t}")).collect();
    let paths: Vec<String> = keys
        .iter()
        .map(|k| format!("/v1/kv/{k}?mode=sync"))
        .collect();
    let results: Vec<(String, u16, Option<String>, bool, Duration)> =
        put_all_at_once(&c.http_addr(via), &paths)
            .into_iter()
            .zip(keys)
            .map(|((r, took), key)| {
                let retry = r.headers.contains_key("retry-after");
                (key, r.status, r.error_code(), retry, took)
            })
            .collect();
    c.resume(paused);
    for r in &results {
        eprintln!("{} → {} {:?} after {:?}", r.0, r.1, r.2, r.4);
    }
    let refused: Vec<_> = results
        .iter()
        .filter(|r| r.2.as_deref() == Some("overloaded"))
        .collect();
    let served = results.len() - refused.len();
    assert!(
        served <= 2,
        "the leader served {served} forwarded writes at once: {results:?}"
    );
    assert!(
        refused.len() >= 6,
        "8 writes against a bound of 2: {results:?}"
    );
    for r in &refused {
        assert_eq!(r.1, 503);
        assert!(r.3, "503 overloaded without Retry-After");
        // At once: not after waiting for a place (the served ones hold theirs for 2 s).
        assert!(
            r.4 < Duration::from_secs(1),
            "{} refused only after {:?}",
            r.0,
            r.4
        );
    }
    // Nothing refused was applied; what was served is there.
    let leader = c.wait_for_leader();
    for (key, status, code, _, _) in &results {
        let got = wait_until(Duration::from_secs(30), "a read", || {
            let r = c.get(leader, key).ok()?;
            (r.status != 503).then_some(r.status)
        });
        match (status, code.as_deref()) {
            (503, Some("overloaded")) => assert_eq!(got, 404, "refused {key} was applied"),
            (200, _) => assert_eq!(got, 200, "acknowledged {key} lost"),
            _ => {}
        }
    }
}

/// A leader that cannot commit keeps a forwarded write's place until its Ready loop answers the
/// write, past the follower's deadline: further forwarded writes are refused at once as
/// overloaded instead of piling up in the loop (`forward/serve.rs`). Before the twelfth session
/// the leader gave the place back at the follower's deadline, and the third write below would
/// have been taken and answered `outcome_unknown` a second later instead.
#[test]
fn a_leader_that_cannot_commit_keeps_its_forwarded_places_past_the_followers_deadline() {
    let mut c = Cluster::start_with(5, &["--max-forwarded", "2", "--request-timeout", "1s"]);
    c.wait_for_leader();
    // Node 1 leads, and goes on leading 10–20 s after it loses its quorum.
    c.lead_slowly(1);
    c.put_until_ok(1, "held/warm", b"v", DEADLINE);
    wait_until(DEADLINE, "node 2 following node 1", || {
        c.status(2).filter(|s| s["leader"] == 1).map(|_| ())
    });
    for id in [3, 4, 5] {
        c.pause(id);
    }
    // Two forwarded writes take the leader's two places; nothing commits, so node 2 gives up on
    // them at its 1 s deadline with their outcome unknown.
    let paths = ["/v1/kv/held/a".to_string(), "/v1/kv/held/b".to_string()];
    let held: Vec<(u16, Option<String>)> = put_all_at_once(&c.http_addr(2), &paths)
        .into_iter()
        .map(|(r, _)| (r.status, r.error_code()))
        .collect();
    for (status, code) in &held {
        assert_eq!(
            (*status, code.as_deref()),
            (504, Some("outcome_unknown")),
            "{held:?}"
        );
    }
    // The leader still holds both places: the next forwarded write is refused, not taken.
    let r = c.put(2, "held/c", b"v").expect("node 2 answers");
    assert!(c.leads(1), "node 1 stepped down: the window was not tested");
    assert_eq!(
        (r.status, r.error_code().as_deref()),
        (503, Some("overloaded")),
        "{}",
        r.text()
    );
    for id in [3, 4, 5] {
        c.resume(id);
    }
    // The held writes commit once the quorum is back (outcome unknown meant exactly this), the
    // refused one never does, and the places are free again.
    for key in ["held/a", "held/b"] {
        wait_until(DEADLINE, "a held write applied", || {
            let r = c.get(1, key).ok()?;
            (r.status == 200).then_some(())
        });
    }
    let r = wait_until(DEADLINE, "a read of the refused write", || {
        c.get(1, "held/c").ok().filter(|r| r.status != 503)
    });
    assert_eq!(r.status, 404, "the refused write was applied: {}", r.text());
    c.put_until_ok(2, "held/d", b"v", DEADLINE);
}
