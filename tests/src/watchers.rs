//! The watch workload of the fault suite (issue 19, after Jepsen's etcd watch test): writers put
//! unique values (and two-key transactions) through different nodes while watchers, one pinned
//! to each node and one that moves between nodes, follow the prefix with keel-client's
//! resumable [`keel_client::Watch`]; a seeded nemesis kills, pauses and isolates the leader and
//! isolates followers. After a calm end and a final write, the checker ([`check`]) demands that
//! every watcher saw every change of the range exactly once, in the order of the log, the same
//! sequence as every other watcher, and every acknowledged write at its index.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::{Client, Error, WatchKind, WatchOptions};
use serde_json::{json, Value};

use crate::http::Http;

/// A change as a watcher saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seen {
    /// Its index.
    pub index: u64,
    /// The key.
    pub key: String,
    /// `put`, `delete` or `expire`.
    pub kind: &'static str,
    /// The value of a put.
    pub value: Option<Vec<u8>>,
}

/// An acknowledged write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Acked {
    /// The key.
    pub key: String,
    /// The value written.
    pub value: Vec<u8>,
    /// The index the write's answer gave.
    pub index: u64,
}

/// Checks what each named watcher saw of the changes in `(after, through]` against each other
/// and the acknowledged writes. Returns violations as (kind, detail): `duplicate`,
/// `out_of_order`, `lost` (an acknowledged write a watcher did not see), `diverged` (two
/// watchers' sequences differ), `wrong_index` (an acknowledged write seen at another index).
pub fn check(
    watchers: &[(String, Vec<Seen>)],
    acked: &[Acked],
    after: u64,
    through: u64,
) -> Vec<(String, String)> {
    let mut v = Vec::new();
    let in_range = |s: &&Seen| s.index > after && s.index <= through;
    let mut seqs: Vec<(&String, Vec<&Seen>)> = Vec::new();
    for (name, seen) in watchers {
        let seq: Vec<&Seen> = seen.iter().filter(in_range).collect();
        let mut keys = HashSet::new();
        for w in seq.windows(2) {
            let (a, b) = (w[0], w[1]);
            if (a.index, &a.key) > (b.index, &b.key) {
                v.push((
                    "out_of_order".into(),
                    format!("{name}: {}@{} before {}@{}", a.key, a.index, b.key, b.index),
                ));
            }
        }
        for s in &seq {
            if !keys.insert((s.index, s.key.clone())) {
                v.push((
                    "duplicate".into(),
                    format!("{name}: {}@{} twice", s.key, s.index),
                ));
            }
        }
        seqs.push((name, seq));
    }
    for pair in seqs.windows(2) {
        let ((an, a), (bn, b)) = (&pair[0], &pair[1]);
        if let Some(i) = (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i)) {
            v.push((
                "diverged".into(),
                format!(
                    "{an} and {bn} differ at their change #{i}: {:?} / {:?}",
                    a.get(i).map(|s| (&s.key, s.index)),
                    b.get(i).map(|s| (&s.key, s.index))
                ),
            ));
        }
    }
    for w in acked
        .iter()
        .filter(|w| w.index > after && w.index <= through)
    {
        for (name, seq) in &seqs {
            let at = seq.iter().find(|s| {
                s.kind == "put" && s.key == w.key && s.value.as_deref() == Some(&w.value)
            });
            match at {
                None => v.push((
                    "lost".into(),
                    format!(
                        "{name} never saw {}={:?}@{}",
                        w.key,
                        String::from_utf8_lossy(&w.value),
                        w.index
                    ),
                )),
                Some(s) if s.index != w.index => v.push((
                    "wrong_index".into(),
                    format!(
                        "{name} saw {} at {}, acknowledged at {}",
                        w.key, s.index, w.index
                    ),
                )),
                Some(_) => {}
            }
        }
    }
    v
}

/// Options of a watch run.
pub struct WatchRun {
    /// The nemesis seed.
    pub seed: u64,
    /// Length of the faulty phase.
    pub duration: Duration,
    /// Planted bug (with the keel-planted binary).
    pub planted: Option<&'static str>,
}

/// The outcome of a watch run.
#[derive(Debug)]
pub struct WatchReport {
    /// Violations found.
    pub violations: Vec<(String, String)>,
    /// Changes each watcher saw in the range.
    pub seen: Vec<(String, usize)>,
    /// Acknowledged writes in the range.
    pub acked: usize,
    /// Reconnections of every watcher (streams that ended and were resumed).
    pub resumes: u64,
    /// The faults played.
    pub faults: Vec<String>,
    /// The seed.
    pub seed: u64,
}

impl WatchReport {
    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "watch (seed {}): {} acknowledged writes; seen {:?}; {} resumes; faults {:?}; \
             violations {:?}",
            self.seed,
            self.acked,
            self.seen,
            self.resumes,
            self.faults,
            self.violations.iter().take(10).collect::<Vec<_>>()
        )
    }
}

/// One writer: unique values through node `addr`, every fourth a two-key transaction.
fn writer(i: usize, addr: String, acked: Arc<Mutex<Vec<Acked>>>, stop: Arc<AtomicBool>) {
    let http = Http::new(Duration::from_millis(500), Duration::from_secs(3));
    for n in 0..1_000_000u64 {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let value = format!("w{i}-{n}");
        let (path, method, body, keys) = if n % 4 == 3 {
            let keys = vec![format!("wl/t{i}-b"), format!("wl/t{i}-a")];
            let body = json!({"success": keys.iter().map(|k| json!({"op": "put", "key": k, "value": value})).collect::<Vec<_>>()});
            ("/v1/txn".to_string(), "POST", body.to_string(), keys)
        } else {
            let key = format!("wl/k{i}-{}", n % 8);
            (format!("/v1/kv/{key}"), "PUT", value.clone(), vec![key])
        };
        match http.send(&addr, method, &path, &[], Some(body.as_bytes())) {
            Ok(r) if r.status == 200 => {
                let index = serde_json::from_slice::<Value>(&r.body)
                    .ok()
                    .and_then(|v| v["index"].as_u64())
                    .unwrap_or(0);
                let mut a = acked.lock().unwrap_or_else(|p| p.into_inner());
                for key in keys {
                    a.push(Acked {
                        key,
                        value: value.clone().into_bytes(),
                        index,
                    });
                }
            }
            // Refused or unknown: may or may not be applied (the watchers must agree on it).
            _ => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}

/// One watcher until it has seen index `stop_at` (once set): its changes and its resumes.
fn watcher(
    endpoints: Vec<String>,
    pinned: bool,
    from: u64,
    stop_at: Arc<AtomicU64>,
    give_up: Instant,
) -> (Vec<Seen>, u64, Vec<String>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => panic!("a watcher's runtime: {e}"),
    };
    rt.block_on(async move {
        let mut seen = Vec::new();
        let mut notes = Vec::new();
        let mut resumes = 0u64;
        let mut last_id: Option<String> = None;
        let mut high = 0u64;
        let mut client: Option<Client> = None;
        // Bounded by `give_up`: each turn (re)opens a watch and reads until it fails, or until
        // it is time to resume elsewhere: the watcher also leaves on its own every `rotate`
        // (from the middle of the stream, on the next node for the roaming one).
        let rotate = if pinned {
            Duration::from_secs(5)
        } else {
            Duration::from_secs(2)
        };
        while Instant::now() < give_up {
            let Some(client) = client.clone() else {
                match Client::builder(&endpoints)
                    .pin_to_endpoints(pinned)
                    .request_timeout(Duration::from_secs(3))
                    .build()
                    .await
                {
                    Ok(c) => client = Some(c),
                    Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
                }
                continue;
            };
            let rotate_at = Instant::now() + rotate;
            let mut opts = WatchOptions::prefix("wl/").progress_every(Duration::from_secs(1));
            opts = match &last_id {
                Some(id) => opts.resume_after(id.clone()),
                None => opts.from_index(from),
            };
            let Ok(mut w) = client.watch(opts).await else {
                continue;
            };
            loop {
                let stop = stop_at.load(Ordering::Acquire);
                if stop != 0 && high >= stop {
                    return (seen, resumes + w.reconnects(), notes);
                }
                if Instant::now() >= give_up || Instant::now() >= rotate_at {
                    resumes += w.reconnects() + 1;
                    break;
                }
                let next = tokio::time::timeout(Duration::from_secs(5), w.next()).await;
                let e = match next {
                    Ok(Ok(e)) => e,
                    Ok(Err(Error::Compacted { message, .. })) => {
                        notes.push(format!("compacted: {message}"));
                        return (seen, resumes + w.reconnects(), notes);
                    }
                    Ok(Err(e)) => {
                        notes.push(format!("watch error: {e}"));
                        resumes += 1 + w.reconnects();
                        break;
                    }
                    Err(_) => continue,
                };

                last_id = Some(e.id.clone());
                high = high.max(e.index);
                let kind = match e.kind {
                    WatchKind::Progress => continue,
                    WatchKind::Put => "put",
                    WatchKind::Delete => "delete",
                    WatchKind::Expire => "expire",
                };
                seen.push(Seen {
                    index: e.index,
                    key: e.key,
                    kind,
                    value: e.value,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        notes.push("gave up before the final write".into());
        (seen, resumes, notes)
    })
}

/// Runs the watch workload under the nemesis and checks it.
pub fn run(opts: WatchRun) -> WatchReport {
    let mut c = crate::locks::workload_cluster(opts.planted);
    let leader = c.wait_for_leader();
    let r = c.put(leader, "wl/start", b"0").expect("the first write");
    let from = r.json()["index"].as_u64().expect("index");
    let ids = c.ids();
    let endpoints: Vec<String> = ids.iter().map(|&id| c.client_endpoint(id)).collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let stop_at = Arc::new(AtomicU64::new(0));
    let give_up = Instant::now() + opts.duration + Duration::from_secs(120);
    // Watchers: one pinned to each node, one that moves among them.
    let mut watchers = Vec::new();
    for (n, ep) in endpoints.iter().enumerate() {
        let (eps, stop_at) = (vec![ep.clone()], stop_at.clone());
        let name = format!("pinned-{}", ids[n]);
        watchers.push((
            name,
            std::thread::spawn(move || watcher(eps, true, from, stop_at, give_up)),
        ));
    }
    {
        let (eps, stop_at) = (endpoints.clone(), stop_at.clone());
        watchers.push((
            "roaming".into(),
            std::thread::spawn(move || watcher(eps, false, from, stop_at, give_up)),
        ));
    }
    let writers: Vec<_> = (0..2)
        .map(|i| {
            let addr = endpoints[(i + 1) % endpoints.len()].clone();
            let (acked, stop) = (acked.clone(), stop.clone());
            std::thread::spawn(move || writer(i, addr, acked, stop))
        })
        .collect();
    let mut faults = Vec::new();
    crate::locks::nemesis(
        &mut c,
        opts.seed,
        Instant::now() + opts.duration,
        &mut faults,
    );
    c.heal();
    stop.store(true, Ordering::Release);
    for t in writers {
        let _ = t.join();
    }
    let leader = c
        .try_wait_for_leader(Duration::from_secs(30))
        .unwrap_or(leader);
    let through = crate::wait_until(crate::DEADLINE, "the final write", || {
        let r = c.put(leader, "wl/zz-end?mode=sync", b"end").ok()?;
        (r.status == 200)
            .then(|| r.json()["index"].as_u64())
            .flatten()
    });
    stop_at.store(through, Ordering::Release);
    let mut seen_by = Vec::new();
    let mut resumes = 0;
    for (name, t) in watchers {
        let (seen, r, notes) = t.join().unwrap_or_default();
        if !notes.is_empty() {
            eprintln!("{name}: {notes:?}");
        }
        resumes += r;
        seen_by.push((name, seen));
    }
    let acked = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let violations = check(&seen_by, &acked, from.saturating_sub(1), through);
    WatchReport {
        violations,
        seen: seen_by
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    s.iter()
                        .filter(|s| s.index >= from && s.index <= through)
                        .count(),
                )
            })
            .collect(),
        acked: acked
            .iter()
            .filter(|a| a.index >= from && a.index <= through)
            .count(),
        resumes,
        faults,
        seed: opts.seed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(index: u64, key: &str, value: &str) -> Seen {
        Seen {
            index,
            key: key.into(),
            kind: "put",
            value: Some(value.as_bytes().to_vec()),
        }
    }

    fn ack(index: u64, key: &str, value: &str) -> Acked {
        Acked {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            index,
        }
    }

    fn kinds(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(k, _)| k.as_str()).collect()
    }

    #[test]
    fn a_clean_history_passes_and_each_violation_is_named() {
        let good = vec![
            put(5, "a", "1"),
            put(6, "a", "2"),
            put(6, "b", "2"),
            put(9, "c", "3"),
        ];
        let acked = vec![ack(5, "a", "1"), ack(6, "a", "2"), ack(6, "b", "2")];
        let two = |x: Vec<Seen>| vec![("w1".to_string(), good.clone()), ("w2".to_string(), x)];
        assert!(check(&two(good.clone()), &acked, 4, 9).is_empty());
        // Outside the range: ignored.
        let mut extra = good.clone();
        extra.push(put(10, "d", "4"));
        assert!(check(&two(extra), &acked, 4, 9).is_empty());

        let mut dup = good.clone();
        dup.insert(1, put(5, "a", "1"));
        assert!(kinds(&check(&two(dup), &acked, 4, 9)).contains(&"duplicate"));

        let mut swapped = good.clone();
        swapped.swap(1, 2);
        assert!(kinds(&check(&two(swapped), &acked, 4, 9)).contains(&"out_of_order"));

        let mut missing = good.clone();
        missing.remove(2);
        let found = check(&two(missing), &acked, 4, 9);
        assert!(kinds(&found).contains(&"lost") && kinds(&found).contains(&"diverged"));

        // An unacknowledged change seen by one watcher only.
        let mut more = good.clone();
        more.insert(3, put(7, "x", "?"));
        assert_eq!(kinds(&check(&two(more), &acked, 4, 9)), vec!["diverged"]);

        let moved = vec![
            put(5, "a", "1"),
            put(6, "b", "2"),
            put(8, "a", "2"),
            put(9, "c", "3"),
        ];
        let found = check(&[("w1".to_string(), moved)], &acked, 4, 9);
        assert_eq!(kinds(&found), vec!["wrong_index"]);
    }
}
