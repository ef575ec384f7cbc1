//! What the runner observes besides the clients' history: the leaders seen during the run, and
//! the final state read once every fault has healed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::ACCOUNTS;
use crate::http::Http;
use crate::nemesis::runtime::lock;
use crate::workload;
use crate::Cluster;

/// Polls every member's status and records the (term, leader) pairs seen.
pub(super) fn leader_watch(
    cluster: Arc<Mutex<Cluster>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<HashSet<(u64, u64)>> {
    std::thread::spawn(move || {
        let http = Http::new(Duration::from_millis(300), Duration::from_millis(500));
        let mut seen = HashSet::new();
        let mut polls = 0u64;
        while !stop.load(Ordering::Acquire) && polls < 1_000_000 {
            polls += 1;
            let addrs: Vec<String> = {
                let c = lock(&cluster);
                c.ids()
                    .iter()
                    .map(|&id| c.nodes[id as usize - 1].http.clone())
                    .collect()
            };
            for a in &addrs {
                if let Some(v) = http.get_json(a, "/v1/status") {
                    if let (Some(t), Some(l)) = (v["term"].as_u64(), v["leader"].as_u64()) {
                        seen.insert((t, l));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        seen
    })
}

/// Reads through any member until one answers 200 (or 404: None), within a minute; Err if none
/// does (the run is then not valid: a final state that cannot be read checks nothing).
fn read_until_ok(c: &Cluster, path: &str, body: Option<&str>) -> Result<Option<Value>, String> {
    let start = std::time::Instant::now();
    let mut last = String::new();
    while start.elapsed() < Duration::from_secs(60) {
        for id in c.ids() {
            let r = match body {
                Some(b) => c.request(id, "POST", path, &[], Some(b.as_bytes())),
                None => c.request(id, "GET", path, &[], None),
            };
            match r {
                Ok(r) if r.status == 200 => {
                    return serde_json::from_slice(&r.body).map(Some).map_err(|e| {
                        format!("{path}: a 200 that is not JSON ({e}): {}", r.text())
                    });
                }
                Ok(r) if r.status == 404 => return Ok(None),
                Ok(r) => last = format!("{} {}", r.status, r.text()),
                Err(e) => last = e,
            }
        }
        std::thread::sleep(crate::POLL);
    }
    Err(format!(
        "the final read of {path} never succeeded (last: {last})"
    ))
}

/// The final read of every list of the list-append workload (a read-only transaction).
pub(super) fn final_lists(c: &Cluster) -> Result<Value, String> {
    let steps: Vec<Value> = (0..workload::APPEND_KEYS)
        .map(|i| serde_json::json!({"op": "get", "key": workload::append_key(i)}))
        .collect();
    let body = serde_json::json!({ "success": steps }).to_string();
    read_until_ok(c, "/v1/txn", Some(&body))?.ok_or_else(|| "the list read answered 404".into())
}

/// The final state: the set counter, the elements present, the balances.
pub(super) fn final_state(c: &Cluster) -> Result<(i64, Vec<u64>, Value), String> {
    let count = match read_until_ok(c, "/v1/kv/set/count", None)? {
        Some(v) => workload::as_int(&v).ok_or(format!("set/count is not a number: {v}"))?,
        None => return Err("set/count is absent".into()),
    };
    let mut present = Vec::new();
    let mut after = String::new();
    for page_no in 0..1001 {
        if page_no == 1000 {
            return Err("more than 1000 pages of set elements".into());
        }
        let path = format!("/v1/kv?prefix=set/e/&limit=5000&after={after}");
        let page = read_until_ok(c, &path, None)?.ok_or("the list answered 404")?;
        for item in page["items"].as_array().ok_or("a list without items")? {
            let e = item["value"]
                .as_str()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(format!("a set element that is not a number: {item}"))?;
            present.push(e);
            after = item["key"].as_str().unwrap_or_default().replace('/', "%2F");
        }
        if page["more"] != true {
            break;
        }
    }
    let bank = read_until_ok(c, "/v1/txn", Some(&workload::read_all_body(ACCOUNTS)))?
        .ok_or("the bank read answered 404")?;
    Ok((count, present, bank))
}
