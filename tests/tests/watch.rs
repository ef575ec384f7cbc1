//! The change feed (SPEC §9) on real 3-node clusters over HTTP: the order of the log, a
//! transaction's keys under one index, progress bookmarks, a start ahead of the node, resuming
//! in the middle (inside a transaction) on another node, 410 once the history is trimmed, bad
//! input, lease expiry and revocation, and a watcher that stops reading cut off while writes and
//! a reading watcher go on.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::keel_api::watch::SseEvent;
use keel_tests::watch::{change, index_of, SseStream};
use keel_tests::{Cluster, DEADLINE};
use serde_json::json;

/// A put's index.
fn put(c: &Cluster, id: u64, key: &str, value: &[u8]) -> u64 {
    let r = c.put(id, key, value).expect("answers");
    assert_eq!(r.status, 200, "put {key}: {}", r.text());
    r.json()["index"].as_u64().expect("index")
}

fn post_json(c: &Cluster, id: u64, path: &str, body: &serde_json::Value) -> serde_json::Value {
    let r = c
        .request(id, "POST", path, &[], Some(body.to_string().as_bytes()))
        .expect("answers");
    assert_eq!(r.status, 200, "POST {path}: {}", r.text());
    r.json()
}

fn open(c: &Cluster, id: u64, query: &str, headers: &[(&str, &str)]) -> SseStream {
    match c.watch(id, query, headers) {
        Ok(s) => s,
        Err(r) => panic!("watch {query} on node {id}: {} {}", r.status, r.text()),
    }
}

/// (event, key, index, id) of the change events among `events`.
fn changes(events: &[SseEvent]) -> Vec<(String, String, u64, String)> {
    events
        .iter()
        .filter(|e| !matches!(e.event.as_str(), "progress" | "cutoff"))
        .map(|e| {
            let c = change(e);
            (
                e.event.clone(),
                c.key,
                c.index,
                e.id.clone().unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn a_follower_streams_the_log_in_order_a_transaction_under_one_index_and_true_bookmarks() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let others = c.others(&[leader]);
    let (follower, other) = (others[0], others[1]);

    let i1 = put(&c, leader, "w/a", b"1");
    let mut s = open(
        &c,
        follower,
        &format!("prefix=w/&from_index={i1}&progress_ms=200"),
        &[],
    );
    // The stream opens with a bookmark of where it starts.
    let first = s.next(DEADLINE).expect("an opening event");
    assert_eq!(
        (first.event.as_str(), index_of(&first)),
        ("progress", i1 - 1)
    );

    put(&c, leader, "other/x", b"not watched");
    let i3 = put(&c, leader, "w/b", &[0xff, 0x00, 0xfe]);
    let r = c
        .request(leader, "DELETE", "/v1/kv/w/a", &[], None)
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let i4 = r.json()["index"].as_u64().expect("index");
    let t = post_json(
        &c,
        leader,
        "/v1/txn",
        &json!({"success": [
            {"op": "put", "key": "w/d", "value": "4"},
            {"op": "put", "key": "w/c", "value": "3"},
            {"op": "delete", "key": "w/b"},
            {"op": "delete", "key": "w/absent"},
            {"op": "put", "key": "other/y", "value": "no"},
        ]}),
    );
    let ti = t["index"].as_u64().expect("txn index");
    let events = s.until(DEADLINE, "the transaction's last change", |e| {
        e.id.as_deref() == Some(ti.to_string().as_str())
    });
    let got = changes(&events);
    let want: Vec<(String, String, u64, String)> = [
        ("put", "w/a", i1, i1.to_string()),
        ("put", "w/b", i3, i3.to_string()),
        ("delete", "w/a", i4, i4.to_string()),
        // One index, key order; the ids inside it name the change's place among all of the
        // entry's changes (other/y, not watched here, is place 0), so that an id means the same
        // on every watch; the last one is the index.
        ("delete", "w/b", ti, format!("{ti}.1")),
        ("put", "w/c", ti, format!("{ti}.2")),
        ("put", "w/d", ti, ti.to_string()),
    ]
    .iter()
    .map(|(e, k, i, id)| (e.to_string(), k.to_string(), *i, id.clone()))
    .collect();
    assert_eq!(got, want);
    // Values as in a list: UTF-8 as a string, other bytes in base64; a put's version is its
    // index; a delete has no value.
    let b = events.iter().find(|e| change(e).index == i3).map(change);
    let b = b.expect("w/b");
    assert_eq!(
        (b.value.value, b.value.value_base64.as_deref(), b.version),
        (None, Some("/wD+"), i3)
    );
    let d = events.iter().find(|e| change(e).index == i4).map(change);
    assert_eq!(d.map(|d| (d.value.value, d.version)), Some((None, 0)));

    // Quiet: a bookmark at or past the transaction, and nothing for keys outside the prefix.
    put(&c, leader, "other/z", b"still not watched");
    let quiet = s.until(DEADLINE, "a bookmark", |e| e.event == "progress");
    assert!(changes(&quiet).is_empty(), "{quiet:?}");
    let mark = index_of(quiet.last().expect("bookmark"));
    assert!(mark >= ti, "bookmark {mark} below the transaction {ti}");
    let i9 = put(&c, leader, "w/e", b"5");
    let next = s.until(DEADLINE, "w/e", |e| e.event == "put");
    let (_, key, index, _) = changes(&next).pop().expect("a change");
    assert_eq!((key.as_str(), index), ("w/e", i9));
    assert!(
        index > mark,
        "a change at or below a bookmark came after it"
    );

    // Resume on another node from inside the transaction: the rest of it, then what followed.
    let mut r = open(
        &c,
        other,
        "prefix=w/",
        &[("last-event-id", &format!("{ti}.1"))],
    );
    // Its opening bookmark resumes at that same place, not before the transaction (resuming
    // with it must not repeat w/b).
    let opening = r.next(DEADLINE).expect("an opening event");
    assert_eq!(
        (
            opening.event.as_str(),
            opening.id.as_deref(),
            index_of(&opening)
        ),
        ("progress", Some(format!("{ti}.1").as_str()), ti - 1)
    );
    let resumed = r.until(DEADLINE, "w/e on the other node", |e| {
        e.id.as_deref() == Some(i9.to_string().as_str())
    });
    let keys: Vec<(String, u64)> = changes(&resumed)
        .into_iter()
        .map(|(_, k, i, _)| (k, i))
        .collect();
    assert_eq!(
        keys,
        vec![("w/c".into(), ti), ("w/d".into(), ti), ("w/e".into(), i9)]
    );

    // A start ahead of what a node has applied delivers nothing at or below it (etcd #9386),
    // and one key alone is followed with key=.
    let ahead = i9 + 1_000;
    let mut f = open(
        &c,
        follower,
        &format!("prefix=w/&from_index={ahead}&progress_ms=200"),
        &[],
    );
    let mut k = open(&c, other, &format!("key=w/e&from_index={i9}"), &[]);
    let i10 = put(&c, leader, "w/e", b"6");
    put(&c, leader, "w/f", b"7");
    let seen = f.until(DEADLINE, "bookmarks", |e| {
        e.event == "progress" && index_of(e) >= ahead - 1
    });
    assert!(changes(&seen).is_empty(), "{seen:?}");
    let only = k.until(DEADLINE, "the key's second change", |e| {
        e.event == "put" && change(e).index == i10
    });
    let only: Vec<u64> = changes(&only).iter().map(|c| c.2).collect();
    assert_eq!(only, vec![i9, i10]);
}

#[test]
fn history_is_trimmed_to_the_flag_and_bad_watches_are_refused_and_leases_end_in_events() {
    let mut c = Cluster::start_with(3, &["--watch-history", "20", "--watch-buffer", "50"]);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let first = put(&c, leader, "h/0", b"0");

    // Bad input: a clear 400, and the node goes on.
    for (query, headers, code) in [
        ("key=a&prefix=b", vec![], "invalid_parameter"),
        ("prefix=a&progress_ms=0", vec![], "invalid_parameter"),
        ("prefix=a&progress_ms=999999", vec![], "invalid_parameter"),
        ("prefix=a&from_index=x", vec![], "invalid_parameter"),
        ("prefix=a&typo=1", vec![], "invalid_parameter"),
        ("key=", vec![], "invalid_key"),
        (
            "prefix=a",
            vec![("last-event-id", "not-an-id")],
            "invalid_header",
        ),
        ("prefix=a", vec![("last-event-id", "0.3")], "invalid_header"),
    ] {
        match c.watch(follower, query, &headers) {
            Ok(_) => panic!("{query} {headers:?} was accepted"),
            Err(r) => {
                assert_eq!(r.status, 400, "{query}: {}", r.text());
                assert_eq!(
                    r.error_code().as_deref(),
                    Some(code),
                    "{query}: {}",
                    r.text()
                );
            }
        }
    }
    let r = c
        .request(follower, "PUT", "/v1/watch", &[], Some(b"x"))
        .expect("answers");
    assert_eq!(r.status, 405, "{}", r.text());

    // Past the retained history (20 entries, trimmed a few hundred at a time): 410 with the
    // oldest index, on every node; from that index it streams.
    let mut last = first;
    for i in 1..=400 {
        last = put(&c, leader, &format!("h/{i}"), i.to_string().as_bytes());
    }
    keel_tests::wait_until(DEADLINE, "every node applied the writes", || {
        c.ids()
            .iter()
            .all(|&id| {
                c.get(id, &format!("h/400?min_index={last}&consistency=stale"))
                    .is_ok_and(|r| r.status == 200)
            })
            .then_some(())
    });
    for id in c.ids() {
        let refused = match c.watch(id, &format!("prefix=h/&from_index={first}"), &[]) {
            Ok(_) => panic!("node {id}: a watch from {first} was accepted past the history"),
            Err(r) => r,
        };
        assert_eq!(refused.status, 410, "{}", refused.text());
        assert_eq!(refused.error_code().as_deref(), Some("compacted"));
        let oldest = refused.json()["oldest_index"]
            .as_u64()
            .expect("oldest_index");
        assert!(
            oldest > first && oldest + 20 <= last + 1,
            "node {id}: oldest {oldest}, first {first}, last {last}"
        );
        let resumed = c.watch(id, "prefix=h/", &[("last-event-id", &first.to_string())]);
        assert_eq!(resumed.err().map(|r| r.status), Some(410), "node {id}");
        let mut s = open(&c, id, &format!("prefix=h/&from_index={oldest}"), &[]);
        let got = s.until(DEADLINE, "the last write", |e| {
            e.event == "put" && change(e).index == last
        });
        let indexes: Vec<u64> = changes(&got).iter().map(|c| c.2).collect();
        assert_eq!(indexes.first().copied(), Some(oldest), "node {id}");
        assert!(indexes.windows(2).all(|w| w[0] < w[1]), "node {id}");
    }

    // The CLI (on the client library): a start older than every member's history is reported
    // (exit 3, `compacted`); from the oldest index it prints the changes as JSON lines.
    let keel = |args: &[&str]| {
        std::process::Command::new(keel_tests::keel_bin())
            .args(["--endpoints", &c.endpoints().join(",")])
            .args(args)
            .output()
            .expect("run keel")
    };
    let out = keel(&["watch", "h/", "--from-index", &first.to_string()]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("compacted"),
        "{out:?}"
    );
    // Each node trims its own history: start where every node has it.
    let oldest = c
        .ids()
        .iter()
        .map(
            |&id| match c.watch(id, &format!("prefix=h/&from_index={first}"), &[]) {
                Err(r) => r.json()["oldest_index"].as_u64().expect("oldest_index"),
                Ok(_) => panic!("accepted"),
            },
        )
        .max()
        .expect("nodes");
    let out = keel(&[
        "watch",
        "h/",
        "--from-index",
        &oldest.to_string(),
        "--changes",
        "3",
    ]);
    assert!(out.status.success(), "{out:?}");
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert_eq!(lines[0]["event"], "put");
    let at = lines[0]["index"].as_u64().expect("index");
    assert!(at >= oldest && at <= last, "{lines:?}");

    // A lease's end deletes its keys: `expire` when it ran out, `delete` when revoked.
    let mut s = open(&c, follower, "prefix=l/", &[]);
    let grant = |ttl: u64| {
        let v = post_json(&c, leader, "/v1/lease", &json!({"ttl_ms": ttl}));
        v["id"]
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .expect("lease id")
    };
    let short = grant(2_000);
    let kept = grant(60_000);
    put(&c, leader, &format!("l/short?lease={short}"), b"s");
    put(&c, leader, &format!("l/kept?lease={kept}"), b"k");
    let r = c
        .request(leader, "DELETE", &format!("/v1/lease/{kept}"), &[], None)
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let ends = s.until(DEADLINE, "the short lease's expiry", |e| {
        e.event == "expire"
    });
    let got: Vec<(String, String, Option<u64>)> = ends
        .iter()
        .filter(|e| e.event != "progress")
        .map(|e| {
            let ch = change(e);
            (e.event.clone(), ch.key, ch.lease)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("put".into(), "l/short".into(), Some(short)),
            ("put".into(), "l/kept".into(), Some(kept)),
            ("delete".into(), "l/kept".into(), Some(kept)),
            ("expire".into(), "l/short".into(), Some(short)),
        ]
    );
}

#[test]
fn a_watcher_that_stops_reading_is_cut_off_while_writes_and_a_reading_watcher_go_on() {
    const WRITES: u64 = 1_200;
    let mut c = Cluster::start_with(3, &["--watch-buffer", "100"]);
    let leader = c.wait_for_leader();
    let others = c.others(&[leader]);
    let (follower, other) = (others[0], others[1]);
    let start = put(&c, leader, "s/start", b"0");
    // Opened, then not read: its socket fills, and the node moves on without it.
    let mut slow = open(&c, follower, &format!("prefix=s/&from_index={start}"), &[]);
    let opening = slow.next(DEADLINE).expect("the opening bookmark");
    assert_eq!(opening.event, "progress");
    // One that reads everything, on the same node.
    let mut fast = open(&c, follower, &format!("prefix=s/&from_index={start}"), &[]);
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut got = Vec::new();
            let deadline = Instant::now() + DEADLINE * 6;
            while Instant::now() < deadline {
                match fast.next(Duration::from_millis(500)) {
                    Some(e) if e.event == "put" => got.push(change(&e).index),
                    Some(_) => {}
                    None if fast.ended => break,
                    None if done.load(Ordering::Acquire) && got.len() as u64 > WRITES => break,
                    None => {}
                }
            }
            got
        })
    };
    let value = vec![b'v'; 16 * 1024];
    let began = Instant::now();
    let mut last = start;
    for i in 0..WRITES {
        last = put(&c, leader, &format!("s/{i:05}"), &value);
    }
    let took = began.elapsed();
    done.store(true, Ordering::Release);
    println!(
        "{WRITES} writes of 16 KiB with a watcher not reading: {:.0} writes/s",
        WRITES as f64 / took.as_secs_f64()
    );
    let fast_got = reader.join().expect("the reading watcher");
    assert_eq!(
        fast_got.len() as u64,
        WRITES + 1,
        "the reading watcher saw every write"
    );
    assert_eq!(fast_got.last().copied(), Some(last));

    // The slow one: what its socket held, then a cutoff saying where to resume.
    let held = slow.until(DEADLINE, "the cutoff", |e| e.event == "cutoff");
    assert!(
        slow.next(Duration::from_secs(5)).is_none() && slow.ended,
        "ends after the cutoff"
    );
    let cut = held.last().expect("cutoff");
    let data: serde_json::Value = serde_json::from_str(&cut.data).expect("json");
    assert_eq!(data["reason"], "slow", "{data}");
    let before: Vec<u64> = changes(&held).iter().map(|c| c.2).collect();
    assert!(
        (before.len() as u64) < WRITES,
        "the watcher was cut off before the end ({} of {WRITES})",
        before.len()
    );
    assert_eq!(before.last().copied().unwrap_or(start - 1), index_of(cut));
    // Resumed from the cutoff's id on another node: the rest, from the change log.
    let id = cut.id.clone().expect("the cutoff's id");
    let mut rest = open(&c, other, "prefix=s/", &[("last-event-id", &id)]);
    let after = rest.until(DEADLINE, "the last write", |e| {
        e.event == "put" && change(e).index == last
    });
    let all: Vec<u64> = before
        .into_iter()
        .chain(changes(&after).iter().map(|c| c.2))
        .collect();
    assert_eq!(
        all, fast_got,
        "cut off and resumed: every write once, in order"
    );
}
