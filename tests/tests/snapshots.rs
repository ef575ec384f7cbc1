//! Log compaction and snapshots on real processes: the log stays bounded under a continuous
//! write load; a follower that fell behind the first log index, or whose data was wiped, catches
//! up by snapshot and then serves linearizable reads with every acknowledged write, never a
//! record it had cached before the install.

use keel_tests::{wait_until, Cluster, DEADLINE};

const EVERY: u64 = 60;

fn log_span(c: &Cluster, id: u64) -> Option<(u64, u64, u64)> {
    let s = c.status(id)?;
    Some((
        s["first_index"].as_u64()?,
        s["last_index"].as_u64()?,
        s["applied_index"].as_u64()?,
    ))
}

fn write_range(c: &Cluster, via: u64, from: u64, to: u64) {
    for i in from..to {
        c.put_until_ok(
            via,
            &format!("snap/{i:05}"),
            format!("value-{i}").as_bytes(),
            DEADLINE,
        );
    }
}

fn assert_all(c: &Cluster, id: u64, n: u64) {
    let r = wait_until(DEADLINE, "a linearizable list", || {
        let r = c
            .request(id, "GET", "/v1/kv?prefix=snap/&limit=10000", &[], None)
            .ok()?;
        (r.status == 200).then_some(r)
    });
    let v = r.json();
    let items = v["items"].as_array().expect("items");
    assert_eq!(
        items.len() as u64,
        n,
        "node {id} holds every acknowledged write"
    );
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["key"], format!("snap/{i:05}"));
        assert_eq!(item["value"], format!("value-{i}"));
    }
}

/// Writes `snap/marker` through the leader, waits until `follower` has applied it, and checks
/// that the follower got there by installing a snapshot.
fn caught_up_by_snapshot(c: &mut Cluster, leader: u64, follower: u64) {
    let idx = c.put_until_ok(leader, "snap/marker", b"m", DEADLINE).json()["index"]
        .as_u64()
        .expect("index");
    c.wait_read_at(follower, "snap/marker", idx, DEADLINE);
    let log = std::fs::read_to_string(&c.node(follower).log).expect("log");
    assert!(
        log.contains("installed a snapshot"),
        "it caught up by snapshot"
    );
}

#[test]
fn the_log_stays_bounded_under_a_continuous_write_load() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", &EVERY.to_string()]);
    c.wait_for_leader();
    let mut longest = 0;
    for round in 0..10u64 {
        write_range(&c, round % 3 + 1, round * 50, round * 50 + 50);
        for id in c.ids() {
            if let Some((first, last, _)) = log_span(&c, id) {
                longest = longest.max(last + 1 - first);
                assert!(
                    last + 1 - first <= EVERY + 50,
                    "node {id}: log spans {first}..={last}, more than the compaction bound"
                );
            }
        }
    }
    let (first, last, applied) = log_span(&c, 1).expect("status");
    eprintln!(
        "after 500 writes: log {first}..={last}, applied {applied}; longest log seen {longest}"
    );
    assert!(first > 400, "the log was compacted (first index {first})");
    assert_all(&c, 2, 500);
}

#[test]
fn a_follower_far_behind_catches_up_by_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", &EVERY.to_string()]);
    let leader = c.wait_for_leader();
    let lagging = c.others(&[leader])[0];
    write_range(&c, leader, 0, 50);
    c.kill(lagging);
    write_range(&c, leader, 50, 300);
    let (first, _, _) = log_span(&c, leader).expect("status");
    assert!(
        first > 60,
        "the leader compacted past the stopped follower (first index {first})"
    );
    c.restart(lagging);
    caught_up_by_snapshot(&mut c, leader, lagging);
    c.request(lagging, "DELETE", "/v1/kv/snap/marker", &[], None)
        .expect("delete");
    assert_all(&c, lagging, 300);
}

#[test]
fn a_follower_whose_data_was_wiped_rejoins_by_snapshot() {
    let mut c = Cluster::start_with(3, &["--snapshot-entries", &EVERY.to_string()]);
    let leader = c.wait_for_leader();
    let wiped = c.others(&[leader])[0];
    write_range(&c, leader, 0, 200);
    c.kill(wiped);
    std::fs::remove_dir_all(&c.node(wiped).data_dir).expect("wipe");
    write_range(&c, leader, 200, 260);
    c.restart(wiped);
    wait_until(DEADLINE, "the wiped follower to install a snapshot", || {
        let log = std::fs::read_to_string(&c.node(wiped).log).ok()?;
        log.contains("installed a snapshot").then_some(())
    });
    assert!(c.node(wiped).is_running(), "the wiped node must not crash");
    assert_all(&c, wiped, 260);
    // And it takes part again: with the other follower down, the cluster still commits.
    let other = c.others(&[leader, wiped])[0];
    c.kill(other);
    c.put_until_ok(leader, "snap/99999", b"with the rejoined node", DEADLINE);
}

#[test]
fn a_wiped_follower_is_not_counted_as_holding_what_it_lost() {
    let mut c = Cluster::start_proxied(3, &[]);
    let leader = c.wait_for_leader();
    let wiped = c.others(&[leader])[0];
    let mut last = 0;
    for i in 0..30 {
        let r = c.put_until_ok(leader, &format!("w/{i}?mode=sync"), b"v", DEADLINE);
        last = r.json()["index"].as_u64().expect("index");
    }
    let reported = |c: &Cluster| -> Option<u64> {
        let s = c.status(leader)?;
        s["progress"]
            .as_array()?
            .iter()
            .find(|p| p["id"].as_u64() == Some(wiped))?["applied_index"]
            .as_u64()
    };
    wait_until(
        DEADLINE,
        "the leader to see the follower's applied index",
        || (reported(&c)? >= last).then_some(()),
    );
    // The follower loses its data; it comes back able to talk to the leader (so the leader
    // hears from the new incarnation) but not to hear from it (so it cannot catch up).
    c.kill(wiped);
    std::fs::remove_dir_all(&c.node(wiped).data_dir).expect("wipe");
    c.cut(leader, wiped);
    c.restart(wiped);
    wait_until(
        DEADLINE,
        "the leader to stop counting what the wiped follower had applied",
        || (reported(&c)? == 0).then_some(()),
    );
    // So a sync write is not acknowledged as applied everywhere.
    let r = c
        .put(leader, "after-wipe?mode=sync", b"v")
        .expect("the leader answers");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some("replication_timeout"));
    c.heal();
}

/// A follower reads a key (its value cache now holds the record), is cut off while the key is
/// overwritten and the leader compacts its log past it, and catches up by snapshot: the entries
/// the snapshot covers are never applied on it, so only the install can tell its cache. Returns
/// what the follower then answers for the key.
fn a_read_after_a_snapshot_install(bin: std::path::PathBuf, env: &[(&str, &str)]) -> String {
    let every = EVERY.to_string();
    let mut c = Cluster::launch_with(3, &["--snapshot-entries", &every], true, bin, env);
    let leader = c.wait_for_leader();
    let f = c.others(&[leader])[0];
    c.put_until_ok(leader, "snap/cached", b"old", DEADLINE);
    wait_until(DEADLINE, "the follower reads the first value", || {
        let r = c.get(f, "snap/cached").ok()?;
        (r.status == 200 && r.text() == "old").then_some(())
    });
    c.isolate(f);
    c.put_until_ok(leader, "snap/cached", b"new", DEADLINE);
    write_range(&c, leader, 0, 250);
    let (first, _, _) = log_span(&c, leader).expect("status");
    assert!(
        first > 60,
        "the leader compacted its log (first index {first})"
    );
    c.heal();
    caught_up_by_snapshot(&mut c, leader, f);
    let r = c.get(f, "snap/cached").expect("the follower answers");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[test]
fn a_snapshot_install_forgets_the_records_a_follower_had_cached() {
    assert_eq!(
        a_read_after_a_snapshot_install(keel_tests::keel_bin(), &[]),
        "new"
    );
}

/// The check above can fail: with the planted `cache-kept-on-install` the follower answers the
/// record it cached before the install.
#[test]
fn a_cache_kept_through_an_install_is_caught() {
    let answer = a_read_after_a_snapshot_install(
        keel_tests::suite::planted_bin(),
        &[("KEEL_PLANTED_BUG", "cache-kept-on-install")],
    );
    assert_eq!(answer, "old");
}
