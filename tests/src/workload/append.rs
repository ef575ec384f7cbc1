//! The list-append workload (Elle's): keys hold comma-separated lists of unique integers. A
//! client either reads two or three keys in one read-only transaction, or appends: it reads two
//! keys, then sends one transaction that, if both keys still have the versions it read, writes
//! each list with a new unique element at its end. A transaction that commits therefore read
//! exactly the lists it extends, and the checker (`checker::append`) can infer every
//! dependency between transactions from the lists alone.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{client_http, send, Reply, WorkloadCfg};
use crate::history::{History, OpRecord, Outcome};
use crate::http::Http;

/// Keys of the workload.
pub const APPEND_KEYS: usize = 6;

/// The key of list `i`.
pub fn append_key(i: usize) -> String {
    format!("la/{i}")
}

/// A list as stored: decimal elements joined by commas (empty for none).
fn encode(list: &[i64]) -> String {
    list.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A stored list; None if it is not one.
pub fn decode(s: &str) -> Option<Vec<i64>> {
    if s.is_empty() {
        return Some(Vec::new());
    }
    s.split(',').map(|e| e.parse().ok()).collect()
}

/// One key's list as read, and its version (0 when absent).
pub type ListRead = (Vec<i64>, u64);

/// Reads `keys` in one read-only transaction: each key's list and version (0 when absent), and
/// the index read at. None with the reply when it did not succeed or is not in the API's shape.
pub fn read_lists(
    http: &Http,
    addr: &str,
    keys: &[String],
) -> (Reply, Option<(Vec<ListRead>, u64)>) {
    let steps: Vec<Value> = keys
        .iter()
        .map(|k| json!({"op": "get", "key": k}))
        .collect();
    let body = json!({ "success": steps }).to_string();
    let reply = send(http, "POST", addr, "/v1/txn", &[], Some(&body), &[]);
    if reply.outcome != Outcome::Ok {
        return (reply, None);
    }
    let parsed = (|| {
        let results = reply.body["results"].as_array()?;
        if results.len() != keys.len() {
            return None;
        }
        let mut out = Vec::new();
        for r in results {
            if r["found"].as_bool()? {
                out.push((decode(r["value"].as_str()?)?, r["version"].as_u64()?));
            } else {
                out.push((Vec::new(), 0));
            }
        }
        Some((out, reply.body["index"].as_u64()?))
    })();
    (reply, parsed)
}

/// A list-append client: fails over to the next node after a transport error, like the bank
/// clients.
pub fn append_client(
    client: usize,
    cfg: WorkloadCfg,
    history: History,
    elements: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let http = client_http(cfg.timeout);
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64 * 104_729 + 3);
    let mut slot = client;
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) && n < 1_000_000 {
        n += 1;
        let (node, addr) = cfg.target(slot);
        let mut all: Vec<usize> = (0..APPEND_KEYS).collect();
        all.shuffle(&mut rng);
        let reading = rng.gen_range(0..100) < 30;
        let count = if reading { rng.gen_range(2..=3) } else { 2 };
        let keys: Vec<String> = all[..count].iter().map(|i| append_key(*i)).collect();

        // The read (on its own, or the first half of an append).
        let invoke = history.now();
        let (reply, lists) = read_lists(&http, &addr, &keys);
        let mut unexpected = reply.unexpected.clone();
        if reply.outcome == Outcome::Ok && lists.is_none() {
            unexpected.get_or_insert(format!(
                "a read answer not in the API's shape: {}",
                reply.body
            ));
        }
        let failed_over = reply.transport_error();
        let read_outcome = match (&lists, reply.outcome) {
            (None, Outcome::Ok) => Outcome::Unknown,
            (_, o) => o,
        };
        history.push(OpRecord {
            client,
            node,
            workload: "append",
            f: "read",
            key: String::new(),
            input: json!({ "keys": keys }),
            output: match &lists {
                Some((ls, _)) => json!({ "reads": keys.iter().zip(ls).map(|(k, (l, _))| json!([k, l])).collect::<Vec<_>>() }),
                None => Value::Null,
            },
            mode: "linearizable",
            invoke_ns: invoke,
            complete_ns: history.now(),
            outcome: read_outcome,
            detail: reply.detail,
            index: lists.as_ref().map(|(_, i)| *i),
            unexpected,
        });
        if failed_over {
            slot += 1;
        }
        let Some((lists, _)) = lists.filter(|_| !reading) else {
            std::thread::sleep(cfg.pace);
            continue;
        };

        // The append: each key extended by a new element if its version is still the one read.
        let mode = cfg.modes[n % cfg.modes.len()];
        let mut compare = Vec::new();
        let mut success = Vec::new();
        let mut appends = Vec::new();
        for (k, (list, version)) in keys.iter().zip(&lists) {
            let e = elements.fetch_add(1, Ordering::Relaxed);
            let mut next = list.clone();
            next.push(e);
            compare.push(json!({"key": k, "target": "version", "op": "==", "value": version}));
            success.push(json!({"op": "put", "key": k, "value": encode(&next)}));
            appends.push(json!([k, e]));
        }
        let body = json!({ "compare": compare, "success": success }).to_string();
        let invoke = history.now();
        let reply = send(
            &http,
            "POST",
            &addr,
            &format!("/v1/txn?mode={mode}"),
            &[],
            Some(&body),
            &[],
        );
        let mut unexpected = reply.unexpected.clone();
        let mut outcome = reply.outcome;
        if outcome == Outcome::Ok {
            match reply.body["succeeded"].as_bool() {
                // The versions had moved on: certainly no effect.
                Some(false) => outcome = Outcome::Fail,
                Some(true) => {}
                None => {
                    unexpected.get_or_insert(format!(
                        "an append answer not in the API's shape: {}",
                        reply.body
                    ));
                    outcome = Outcome::Unknown;
                }
            }
        }
        history.push(OpRecord {
            client,
            node,
            workload: "append",
            f: "append",
            key: String::new(),
            input: json!({ "appends": appends }),
            output: json!({ "reads": keys.iter().zip(&lists).map(|(k, (l, _))| json!([k, l])).collect::<Vec<_>>() }),
            mode,
            invoke_ns: invoke,
            complete_ns: history.now(),
            outcome,
            detail: reply.detail.clone(),
            index: reply.body["index"].as_u64(),
            unexpected,
        });
        if reply.transport_error() {
            slot += 1;
        }
        std::thread::sleep(cfg.pace);
    }
}
