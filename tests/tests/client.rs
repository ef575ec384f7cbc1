//! keel-client against real clusters: discovery from one follower, failover without help from
//! the caller, session reads on a lagging follower, a timed-out write applied exactly once, and
//! every typed error produced by a real server answer.

use std::time::Duration;

use keel_client::{Consistency, Error, Mode, ReadFrom, RetryPolicy};
use keel_tests::{wait_until, Cluster, LinkMode, DEADLINE};

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn few_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 2,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
    }
}

#[test]
fn a_client_given_one_follower_finds_the_leader_and_survives_its_kill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("follower");
    let addr = c.node(follower).http.clone();
    let rt = rt();
    let client = rt
        .block_on(c.client_builder([addr.as_str()]).build())
        .expect("client");
    assert_eq!(
        client.members().len(),
        3,
        "discovered every member from one follower"
    );
    for i in 0..20 {
        rt.block_on(client.put(&format!("c/{i}"), format!("v{i}")))
            .expect("put");
    }
    assert_eq!(
        client.leader(),
        Some(leader),
        "writes went to the leader it discovered"
    );

    c.kill(leader);
    // The same client keeps working: no call from the caller but more writes.
    for i in 20..60 {
        rt.block_on(client.put(&format!("c/{i}"), format!("v{i}")))
            .expect("put after the kill");
    }
    assert_ne!(
        client.leader(),
        Some(leader),
        "the client follows the new leader"
    );
    for i in 0..60 {
        let kv = rt.block_on(client.get(&format!("c/{i}"))).expect("get");
        assert_eq!(kv.value_str(), Some(format!("v{i}").as_str()));
        assert_ne!(kv.served_by, Some(leader));
    }
}

#[test]
fn a_session_read_after_a_session_write_waits_on_a_lagging_follower() {
    let mut c = Cluster::start_proxied(3, &[]);
    let leader = c.wait_for_leader();
    let lagging = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("follower");
    let rt = rt();
    // Built with the lagging follower only; reads are served there, writes go to the leader.
    let client = rt
        .block_on(
            c.client_builder([c.endpoints()[lagging as usize - 1].as_str()])
                .default_consistency(Consistency::Session)
                .read_from(ReadFrom::Endpoints)
                .build(),
        )
        .expect("client");
    rt.block_on(client.put("s/k", "old")).expect("put");
    wait_until(DEADLINE, "the follower to apply the first write", || {
        let r = c.get(lagging, "s/k?consistency=stale").ok()?;
        (r.text() == "old").then_some(())
    });
    c.link(leader, lagging).set(LinkMode::Cut);
    let put = rt
        .block_on(client.put("s/k", "new"))
        .expect("put while the follower lags");
    assert_eq!(client.session_index(), put.index);
    // A plain stale read there is behind...
    assert_eq!(
        c.get(lagging, "s/k?consistency=stale")
            .expect("answers")
            .text(),
        "old"
    );
    // ...but the session read waits until the follower has the write.
    let handle = rt.spawn({
        let client = client.clone();
        async move { client.get("s/k").await }
    });
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        !handle.is_finished(),
        "the session read answered before its node could have the write"
    );
    c.link(leader, lagging).set(LinkMode::Pass);
    let kv = rt.block_on(handle).expect("task").expect("session read");
    assert_eq!(kv.value_str(), Some("new"));
    assert_eq!(kv.served_by, Some(lagging));
    assert!(kv.index >= put.index);
}

#[test]
fn a_write_whose_first_attempt_timed_out_is_applied_exactly_once() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let rt = rt();
    let client = rt
        .block_on(
            c.client_builder(c.endpoints())
                .request_timeout(Duration::from_millis(800))
                .build(),
        )
        .expect("client");
    rt.block_on(client.put("once/n", "0")).expect("setup");
    assert_eq!(client.leader(), Some(leader));
    // Freeze the leader: the first attempt goes to it and times out.
    c.pause(leader);
    let add = rt.spawn({
        let client = client.clone();
        async move { client.add("once/n", 1).await }
    });
    let r = rt
        .block_on(add)
        .expect("task")
        .expect("the add succeeds after retries");
    assert_eq!(r.value, 1);
    c.resume(leader);
    // The frozen leader wakes up with the first attempt in its socket; whatever it does with it,
    // the add is applied once on every node.
    c.wait_for_leader();
    let idx = rt
        .block_on(client.put("once/marker", "x"))
        .expect("marker")
        .index;
    for id in c.ids() {
        let v = c.wait_read_at(id, "once/n", idx, DEADLINE).text();
        assert_eq!(v, "1", "node {id}");
    }
}

#[test]
fn every_typed_error_comes_from_a_real_answer() {
    let mut c = Cluster::start_proxied(3, &["--sync-timeout", "500ms", "--read-timeout", "500ms"]);
    let leader = c.wait_for_leader();
    let rt = rt();
    let client = rt
        .block_on(c.client_builder(c.endpoints()).build())
        .expect("client");

    // NotFound.
    assert!(matches!(
        rt.block_on(client.get("e/none")),
        Err(Error::NotFound { .. })
    ));
    // PreconditionFailed: stale compare-and-set, and create of an existing key.
    let v = rt.block_on(client.put("e/k", "1")).expect("put").version;
    rt.block_on(client.put("e/k", "2")).expect("put");
    assert!(matches!(
        rt.block_on(client.compare_and_set("e/k", v, "3")),
        Err(Error::PreconditionFailed { .. })
    ));
    assert!(matches!(
        rt.block_on(client.create("e/k", "4")),
        Err(Error::PreconditionFailed { .. })
    ));
    // BoundViolated, with the current value.
    match rt.block_on(client.add_bounded("e/k", -5, Some(0), None)) {
        Err(Error::BoundViolated { key, current }) => {
            assert_eq!((key.as_str(), current), ("e/k", 2))
        }
        other => panic!("expected BoundViolated, got {other:?}"),
    }
    // BadRequest: an oversized key; add on a non-integer.
    match rt.block_on(client.put(&"k".repeat(5000), "v")) {
        Err(Error::BadRequest { code, .. }) => assert_eq!(code, "invalid_key"),
        other => panic!("expected BadRequest, got {other:?}"),
    }
    rt.block_on(client.put("e/text", "abc")).expect("put");
    match rt.block_on(client.add("e/text", 1)) {
        Err(Error::BadRequest { code, .. }) => assert_eq!(code, "not_integer"),
        other => panic!("expected BadRequest, got {other:?}"),
    }

    // ReplicationTimeout: a sync write while a follower cannot confirm.
    let follower = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("follower");
    c.link(leader, follower).set(LinkMode::Cut);
    let sync_client = rt
        .block_on(
            c.client_builder(c.endpoints())
                .default_mode(Mode::Sync)
                .build(),
        )
        .expect("client");
    match rt.block_on(sync_client.put("e/sync", "v")) {
        Err(Error::ReplicationTimeout { index }) => assert!(index > 0),
        other => panic!("expected ReplicationTimeout, got {other:?}"),
    }

    // Timeout: a session read on the cut-off follower cannot reach the session's index in time
    // (the server answers 504 timeout).
    let lagging = rt
        .block_on(
            c.client_builder([c.endpoints()[follower as usize - 1].as_str()])
                .default_consistency(Consistency::Session)
                .read_from(ReadFrom::Endpoints)
                .retry(few_retries())
                .build(),
        )
        .expect("client");
    rt.block_on(lagging.put("e/t", "v"))
        .expect("put goes to the leader");
    assert!(matches!(
        rt.block_on(lagging.get("e/t")),
        Err(Error::Timeout { .. })
    ));
    c.heal();

    // OutcomeUnknown: a write to a leader that is cut off from everyone loses its leadership
    // mid-request (504 outcome_unknown), and the client may not retry.
    let leader = c.wait_for_leader();
    let pinned = rt
        .block_on(
            c.client_builder([c.endpoints()[leader as usize - 1].as_str()])
                .pin_to_endpoints(true)
                .retry(RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                })
                .build(),
        )
        .expect("client");
    c.isolate(leader);
    match rt.block_on(pinned.put("e/unknown", "v")) {
        Err(Error::OutcomeUnknown { .. }) => {}
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    c.heal();

    // NoLeader: two of three nodes gone; the survivor knows no leader and answers 503.
    let leader = c.wait_for_leader();
    let survivor = c
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("survivor");
    for id in c.ids().into_iter().filter(|&id| id != survivor) {
        c.kill(id);
    }
    wait_until(DEADLINE, "the survivor to know no leader", || {
        let s = c.status(survivor)?;
        s["leader"].is_null().then_some(())
    });
    let alone = rt
        .block_on(
            c.client_builder([c.endpoints()[survivor as usize - 1].as_str()])
                .pin_to_endpoints(true)
                .retry(few_retries())
                .build(),
        )
        .expect("client");
    assert!(matches!(
        rt.block_on(alone.put("e/x", "v")),
        Err(Error::NoLeader { .. })
    ));
    // A linearizable read too (it goes through the read queue, not the loop's channel): it
    // fails as no_leader, not as a read that timed out waiting for a round.
    match rt.block_on(alone.get("e/x")) {
        Err(Error::NoLeader { .. }) => {}
        other => panic!("a linearizable read without a leader: {other:?}"),
    }
}

/// A cluster whose members advertise HTTP addresses the client cannot reach (a compose cluster
/// advertising `keel1:7001` to a client on the host): the client goes on through the endpoints
/// it was given, which forward writes, instead of timing out on the advertised ones.
#[test]
fn a_cluster_advertising_unreachable_addresses_is_used_through_the_given_endpoints() {
    // Port 9 (discard) on loopback: nothing listens, connections are refused.
    let mut c = Cluster::start_with(3, &["--advertise-http", "127.0.0.1:9"]);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let endpoint = c.endpoints()[follower as usize - 1].clone();
    rt().block_on(async {
        let client = c
            .client_builder([endpoint])
            .retry(few_retries())
            .build()
            .await
            .expect("client");
        assert!(
            client.members().iter().any(|(_, a)| a == "127.0.0.1:9"),
            "the client learned the advertised addresses: {:?}",
            client.members()
        );
        client
            .put("through-seeds", "1")
            .await
            .expect("a write through the given endpoint");
        let v = client.get("through-seeds").await.expect("a read");
        assert_eq!(&v.value[..], b"1");
    });
}

/// A node refusing requests as overloaded (503 `overloaded`, `Retry-After`) is not a lost
/// leader: with one attempt the client reports `Overloaded` (certainly not applied: the key is
/// absent), and with retries it waits as asked and every write lands. (Before, the client took
/// the 503 for `NoLeader`, refreshed its topology, and ignored `Retry-After`.)
#[test]
fn an_overloaded_node_is_reported_as_overloaded_and_retried_after_it_asks() {
    let mut c = Cluster::start_with(3, &["--max-pending", "1"]);
    c.wait_for_leader();
    let rt = rt();
    let once = rt
        .block_on(
            c.client_builder(c.endpoints())
                .retry(RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                })
                .build(),
        )
        .expect("client");
    // Rounds of 32 concurrent writes until one is refused (bounded).
    let mut refused = Vec::new();
    for round in 0..20 {
        let results = rt.block_on(futures::future::join_all((0..32).map(|i| {
            let once = once.clone();
            async move {
                let key = format!("once-{round}-{i}");
                (once.put(&key, "v").await, key)
            }
        })));
        for (r, key) in results {
            match r {
                Err(e @ Error::Overloaded { .. }) => {
                    assert!(e.certainly_not_applied());
                    refused.push(key);
                }
                Err(e @ Error::NoLeader { .. }) => panic!("overload reported as {e:?}"),
                _ => {}
            }
        }
        if !refused.is_empty() {
            break;
        }
    }
    assert!(
        !refused.is_empty(),
        "32 concurrent writes never overloaded a queue of one"
    );
    let leader = c.wait_for_leader();
    for key in &refused {
        let r = c.get(leader, key).expect("answers");
        assert_eq!(r.status, 404, "{key} was refused but applied");
    }
    // With retries, every write lands.
    let patient = rt
        .block_on(c.client_builder(c.endpoints()).build())
        .expect("client");
    let results = rt.block_on(futures::future::join_all((0..32).map(|i| {
        let patient = patient.clone();
        async move { patient.put(&format!("patient-{i}"), "v").await }
    })));
    for (i, r) in results.into_iter().enumerate() {
        r.unwrap_or_else(|e| panic!("patient-{i}: {e}"));
    }
}
