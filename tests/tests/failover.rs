//! kill -9 of the leader: a new leader is elected, writes succeed again within seconds, and
//! every write acknowledged before the kill is still there; the old leader catches up on restart.

use std::time::{Duration, Instant};

use keel_tests::{Cluster, DEADLINE};

#[test]
fn leader_kill_elects_a_new_leader_and_keeps_acknowledged_writes() {
    let mut c = Cluster::start(3);
    let old = c.wait_for_leader();
    let mut acked = Vec::new();
    for i in 0..60u64 {
        let via = i % 3 + 1;
        let key = format!("before/{i:03}");
        let r = c.put_until_ok(via, &key, format!("value-{i}").as_bytes(), DEADLINE);
        acked.push((
            key,
            format!("value-{i}"),
            r.json()["index"].as_u64().expect("index"),
        ));
    }

    c.kill(old);
    let killed_at = Instant::now();
    let survivors: Vec<u64> = c.ids().into_iter().filter(|&id| id != old).collect();
    let new = c.wait_for_leader_excluding(&[old], DEADLINE);
    assert_ne!(new, old, "the killed node cannot lead");
    // Writes succeed again, through either survivor.
    for &id in &survivors {
        c.put_until_ok(id, &format!("after/{id}"), b"ok", DEADLINE);
    }
    let recovered = killed_at.elapsed();
    eprintln!("leader {old} killed; node {new} leads; writes succeeded again after {recovered:?}");
    assert!(
        recovered < Duration::from_secs(20),
        "writes resumed only after {recovered:?}"
    );

    for &id in &survivors {
        for (key, value, _) in &acked {
            let r = c.get(id, key).expect("survivor answers");
            assert_eq!(
                r.status,
                200,
                "acknowledged {key} missing on node {id}: {}",
                r.text()
            );
            assert_eq!(r.text(), *value);
        }
    }

    // The old leader comes back as a follower and catches up on everything.
    c.restart(old);
    let last_index = c.put_until_ok(new, "after/restart", b"ok", DEADLINE).json()["index"]
        .as_u64()
        .expect("index");
    c.wait_read_at(old, "after/restart", last_index, DEADLINE);
    for (key, value, _) in &acked {
        let r = c
            .get(old, &format!("{key}?consistency=stale"))
            .expect("old leader answers");
        assert_eq!(r.text(), *value, "{key} on the restarted node");
    }
}
