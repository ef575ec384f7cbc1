//! Workload clients of the fault suite. Each runs in its own thread against one node (client i
//! talks to node i mod n, like Jepsen's clients), records every operation in the [`History`],
//! and never retries on its own, except the set client, which retries an add of unknown outcome
//! under the same `Idempotency-Key` (that is what a real client does, and what idempotency must
//! make safe).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::history::{History, OpRecord, Outcome};
use crate::http::Http;

/// Settings shared by the workload clients.
#[derive(Clone)]
pub struct WorkloadCfg {
    /// Client addresses of the nodes (index = id - 1).
    pub addrs: Vec<String>,
    /// Write modes, used in turn.
    pub modes: Vec<&'static str>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Pause between a client's operations (a rate limit, as Jepsen's `stagger`).
    pub pace: Duration,
    /// Registers of the register workload.
    pub keys: usize,
    /// Accounts of the bank workload.
    pub accounts: usize,
    /// Opening balance of each account.
    pub opening: i64,
}

/// What an HTTP attempt came to.
pub struct Reply {
    /// The outcome class.
    pub outcome: Outcome,
    /// The status (0 for a transport error).
    pub status: u16,
    /// The body as JSON (Null if none or not JSON).
    pub body: Value,
    /// A short description.
    pub detail: String,
}

/// Sends a request to `addr` and classifies the answer.
pub fn send(
    http: &Http,
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Reply {
    let resp = match http.send(addr, method, path, headers, body.map(str::as_bytes)) {
        Ok(r) => r,
        Err(e) => {
            // A refused connection never reached a server: certainly not applied.
            let outcome = if e.certainly_not_sent() {
                Outcome::Fail
            } else {
                Outcome::Unknown
            };
            return Reply {
                outcome,
                status: 0,
                body: Value::Null,
                detail: format!("transport: {e}"),
            };
        }
    };
    let status = resp.status;
    let text = resp.text();
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let outcome = match status {
        200..=299 | 404 => Outcome::Ok,
        // 503: nothing was applied. 4xx: refused.
        400..=499 | 503 => Outcome::Fail,
        // 504 outcome_unknown / replication_timeout (committed) / timeout; 500.
        _ => Outcome::Unknown,
    };
    let detail = match body["error"]["code"].as_str() {
        Some(code) => format!("{status} {code}"),
        None => status.to_string(),
    };
    Reply {
        outcome,
        status,
        body,
        detail,
    }
}

/// The HTTP client of one workload client.
fn client_http(timeout: Duration) -> Http {
    Http::new(Duration::from_millis(500), timeout)
}

/// The register workload: reads, unique writes and compare-and-sets on a few keys.
pub fn register_client(
    client: usize,
    cfg: WorkloadCfg,
    history: History,
    values: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let http = client_http(cfg.timeout);
    let node = (client % cfg.addrs.len()) as u64 + 1;
    let addr = &cfg.addrs[node as usize - 1];
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64 * 7919 + 1);
    let mut last_seen: Vec<Option<i64>> = vec![None; cfg.keys];
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) && n < 1_000_000 {
        n += 1;
        let k = rng.gen_range(0..cfg.keys);
        let key = format!("reg/{k}");
        let mode = cfg.modes[n % cfg.modes.len()];
        let roll = rng.gen_range(0..10);
        let invoke = history.now();
        let (f, input, reply) = if roll < 4 {
            let r = send(&http, "GET", addr, &format!("/v1/kv/{key}"), &[], None);
            ("read", Value::Null, r)
        } else if roll < 8 || last_seen[k].is_none() {
            let v = values.fetch_add(1, Ordering::Relaxed);
            let r = send(
                &http,
                "PUT",
                addr,
                &format!("/v1/kv/{key}?mode={mode}"),
                &[],
                Some(&v.to_string()),
            );
            ("write", json!(v), r)
        } else {
            let from = last_seen[k].unwrap_or(0);
            let to = values.fetch_add(1, Ordering::Relaxed);
            let body = json!({
                "compare": [{"key": key, "target": "value", "op": "==", "value": from.to_string()}],
                "success": [{"op": "put", "key": key, "value": to.to_string()}],
            });
            let r = send(
                &http,
                "POST",
                addr,
                &format!("/v1/txn?mode={mode}"),
                &[],
                Some(&body.to_string()),
            );
            ("cas", json!({"from": from, "to": to}), r)
        };
        let complete = history.now();
        let output = match f {
            "read" if reply.outcome == Outcome::Ok => {
                if reply.status == 404 {
                    Value::Null
                } else {
                    let v = match &reply.body {
                        Value::String(s) => s.parse::<i64>().ok(),
                        Value::Number(n) => n.as_i64(),
                        _ => None,
                    };
                    if let Some(v) = v {
                        last_seen[k] = Some(v);
                    }
                    json!(v)
                }
            }
            "write" if reply.outcome == Outcome::Ok => {
                last_seen[k] = input.as_i64();
                Value::Null
            }
            "cas" if reply.outcome == Outcome::Ok => {
                let ok = reply.body["succeeded"].as_bool().unwrap_or(false);
                if ok {
                    last_seen[k] = input["to"].as_i64();
                }
                json!(ok)
            }
            _ => Value::Null,
        };
        // A read answered 200 with a body that is not a number is a failure of the workload's
        // assumptions; keep it visible as an unknown read (left out of the check).
        let outcome = if f == "read"
            && reply.outcome == Outcome::Ok
            && reply.status == 200
            && output.is_null()
        {
            Outcome::Unknown
        } else {
            reply.outcome
        };
        history.push(OpRecord {
            client,
            node,
            workload: "register",
            f,
            key,
            input,
            output,
            mode: if f == "read" { "linearizable" } else { mode },
            invoke_ns: invoke,
            complete_ns: complete,
            outcome,
            detail: reply.detail,
        });
        std::thread::sleep(cfg.pace);
    }
}

/// The body of a read of every balance.
pub fn read_all_body(accounts: usize) -> String {
    json!({"success": (0..accounts).map(|i| json!({"op": "get", "key": format!("bank/{i}")})).collect::<Vec<_>>()})
        .to_string()
}

/// Parses the balances out of a read-all answer.
pub fn parse_balances(body: &Value) -> Option<Vec<i64>> {
    body["results"]
        .as_array()?
        .iter()
        .map(|r| r["value"].as_str()?.parse().ok())
        .collect()
}

/// The bank workload: transfers by transaction and reads of all balances.
pub fn bank_client(client: usize, cfg: WorkloadCfg, history: History, stop: Arc<AtomicBool>) {
    let http = client_http(cfg.timeout);
    let node = (client % cfg.addrs.len()) as u64 + 1;
    let addr = &cfg.addrs[node as usize - 1];
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64 * 104_729 + 3);
    let read_all = read_all_body(cfg.accounts);
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) && n < 1_000_000 {
        n += 1;
        let mode = cfg.modes[n % cfg.modes.len()];
        let invoke = history.now();
        let (f, input, reply) = if rng.gen_bool(0.5) {
            let r = send(&http, "POST", addr, "/v1/txn", &[], Some(&read_all));
            ("read_all", Value::Null, r)
        } else {
            let from = rng.gen_range(0..cfg.accounts);
            let to = (from + rng.gen_range(1..cfg.accounts)) % cfg.accounts;
            let amount = rng.gen_range(1..=cfg.opening / 2);
            let body = json!({"success": [
                {"op": "add", "key": format!("bank/{from}"), "delta": -amount, "min": 0},
                {"op": "add", "key": format!("bank/{to}"), "delta": amount},
            ]});
            let r = send(
                &http,
                "POST",
                addr,
                &format!("/v1/txn?mode={mode}"),
                &[],
                Some(&body.to_string()),
            );
            (
                "transfer",
                json!({"from": from, "to": to, "amount": amount}),
                r,
            )
        };
        let complete = history.now();
        let output = if f == "read_all" && reply.outcome == Outcome::Ok {
            json!(parse_balances(&reply.body))
        } else {
            Value::Null
        };
        history.push(OpRecord {
            client,
            node,
            workload: "bank",
            f,
            key: String::new(),
            input,
            output,
            mode: if f == "read_all" {
                "linearizable"
            } else {
                mode
            },
            invoke_ns: invoke,
            complete_ns: complete,
            // A transfer refused for lack of funds (409) is a definite, fine outcome.
            outcome: if reply.status == 409 {
                Outcome::Ok
            } else {
                reply.outcome
            },
            detail: reply.detail,
        });
        std::thread::sleep(cfg.pace);
    }
}

/// The set workload: each add inserts a unique element. Even elements are blind puts (in
/// `async` mode acknowledged from the leader's log, so they may be lost; in the other modes an
/// acknowledged one must never be); odd elements are transactions that put the element and
/// increment a counter, under an `Idempotency-Key`, so that an add applied twice shows as a
/// counter larger than the number of odd elements present. An add of unknown outcome is retried
/// (under the same key).
pub fn set_client(
    client: usize,
    cfg: WorkloadCfg,
    history: History,
    elements: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let http = client_http(cfg.timeout);
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) && n < 1_000_000 {
        n += 1;
        let e = elements.fetch_add(1, Ordering::Relaxed);
        let mode = cfg.modes[n % cfg.modes.len()];
        let idem = format!("set-{e}");
        let invoke = history.now();
        let mut reply = None;
        let mut node = 0;
        // The first attempt and up to 4 retries, through the nodes in turn.
        for attempt in 0..5usize {
            node = ((client + attempt) % cfg.addrs.len()) as u64 + 1;
            let addr = &cfg.addrs[node as usize - 1];
            let r = if e % 2 == 0 {
                // No Idempotency-Key: a keyed write is answered only once applied, and this one
                // must be a blind put acknowledged from the leader's log. Repeating it is harmless.
                send(
                    &http,
                    "PUT",
                    addr,
                    &format!("/v1/kv/set/e/{e}?mode={mode}"),
                    &[],
                    Some(&e.to_string()),
                )
            } else {
                let body = json!({"success": [
                    {"op": "put", "key": format!("set/e/{e}"), "value": e.to_string()},
                    {"op": "add", "key": "set/count", "delta": 1},
                ]});
                send(
                    &http,
                    "POST",
                    addr,
                    &format!("/v1/txn?mode={mode}"),
                    &[("Idempotency-Key", &idem)],
                    Some(&body.to_string()),
                )
            };
            let done = r.outcome != Outcome::Unknown;
            reply = Some(r);
            if done || stop.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let Some(reply) = reply else { continue };
        history.push(OpRecord {
            client,
            node,
            workload: "set",
            f: "add",
            key: e.to_string(),
            input: json!(e),
            output: Value::Null,
            mode,
            invoke_ns: invoke,
            complete_ns: history.now(),
            outcome: reply.outcome,
            detail: reply.detail,
        });
        std::thread::sleep(cfg.pace);
    }
}
