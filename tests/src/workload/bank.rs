//! Multi-key workloads: the bank (transfers by transaction, reads of every balance in one
//! read-only transaction: the total never changes and no balance goes negative) and the set
//! (unique adds; every third element is a transaction that also increments a counter, under an
//! `Idempotency-Key`, so an add applied twice, or an element without its increment, shows).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{client_http, send, WorkloadCfg};
use crate::history::{History, OpRecord, Outcome};

/// The body of a read of every balance.
pub fn read_all_body(accounts: usize) -> String {
    json!({"success": (0..accounts).map(|i| json!({"op": "get", "key": format!("bank/{i}")})).collect::<Vec<_>>()})
        .to_string()
}

/// Parses the balances out of a read-all answer (None if any is missing or not a number).
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
    let mut slot = client;
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64 * 104_729 + 3);
    let read_all = read_all_body(cfg.accounts);
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) && n < 1_000_000 {
        n += 1;
        let (node, addr) = cfg.target(slot);
        let mode = cfg.modes[n % cfg.modes.len()];
        let invoke = history.now();
        let (f, input, reply) = if rng.gen_bool(0.5) {
            let r = send(&http, "POST", &addr, "/v1/txn", &[], Some(&read_all), &[]);
            ("read_all", Value::Null, r)
        } else {
            let from = rng.gen_range(0..cfg.accounts);
            let to = (from + rng.gen_range(1..cfg.accounts)) % cfg.accounts;
            let amount = rng.gen_range(1..=cfg.opening / 2);
            let body = json!({"success": [
                {"op": "add", "key": format!("bank/{from}"), "delta": -amount, "min": 0},
                {"op": "add", "key": format!("bank/{to}"), "delta": amount},
            ]});
            // 409 bound_violated: not enough money, a definite and fine outcome.
            let r = send(
                &http,
                "POST",
                &addr,
                &format!("/v1/txn?mode={mode}"),
                &[],
                Some(&body.to_string()),
                &[409],
            );
            (
                "transfer",
                json!({"from": from, "to": to, "amount": amount}),
                r,
            )
        };
        let complete = history.now();
        let mut unexpected = reply.unexpected.clone();
        let mut output = Value::Null;
        if f == "read_all" && reply.outcome == Outcome::Ok {
            match parse_balances(&reply.body) {
                Some(b) if b.len() == cfg.accounts => output = json!(b),
                _ => {
                    unexpected
                        .get_or_insert(format!("read_all: not every balance: {}", reply.body));
                }
            }
        }
        if reply.status == 409 && reply.body["error"]["code"] != "bound_violated" {
            unexpected.get_or_insert(format!("transfer: 409 {}", reply.body));
        }
        if reply.transport_error() {
            slot += 1;
        }
        let outcome = match (reply.status, &unexpected) {
            (_, Some(_)) if reply.outcome == Outcome::Ok => Outcome::Unknown,
            (409, _) => Outcome::Ok,
            _ => reply.outcome,
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
            outcome,
            detail: reply.detail,
            index: reply.body["index"].as_u64(),
            unexpected,
        });
        std::thread::sleep(cfg.pace);
    }
}

/// Whether set element `e` is a counted transaction (the others are blind puts).
pub fn is_counted(e: u64) -> bool {
    e.is_multiple_of(3)
}

/// The set workload: each add inserts a unique element. Most are blind puts (in `async` mode
/// acknowledged from the leader's log, so they may be lost; in the other modes an acknowledged
/// one must never be); every third ([`is_counted`]) is a transaction that puts the element and
/// increments a counter, under an `Idempotency-Key`. An add of unknown outcome is retried (under
/// the same key), through the next node. Odd-numbered clients use a short timeout, so that their
/// adds time out after being applied and their retries must not apply again.
pub fn set_client(
    client: usize,
    cfg: WorkloadCfg,
    history: History,
    elements: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let timeout = if client % 2 == 1 {
        cfg.short_timeout
    } else {
        cfg.timeout
    };
    let http = client_http(timeout);
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) && n < 1_000_000 {
        n += 1;
        let e = elements.fetch_add(1, Ordering::Relaxed);
        let mode = cfg.modes[n % cfg.modes.len()];
        let idem = format!("set-{e}");
        let invoke = history.now();
        let mut reply = None;
        let mut node = 0;
        let mut unexpected = None;
        // The first attempt and up to 4 retries, through the nodes in turn.
        for attempt in 0..5usize {
            let (id, addr) = cfg.target(client + attempt);
            node = id;
            let r = if !is_counted(e as u64) {
                // No Idempotency-Key: a keyed write is answered only once applied, and this one
                // must be a blind put acknowledged from the leader's log. Repeating it is harmless.
                send(
                    &http,
                    "PUT",
                    &addr,
                    &format!("/v1/kv/set/e/{e}?mode={mode}"),
                    &[],
                    Some(&e.to_string()),
                    &[],
                )
            } else {
                let body = json!({"success": [
                    {"op": "put", "key": format!("set/e/{e}"), "value": e.to_string()},
                    {"op": "add", "key": "set/count", "delta": 1},
                ]});
                send(
                    &http,
                    "POST",
                    &addr,
                    &format!("/v1/txn?mode={mode}"),
                    &[("Idempotency-Key", &idem)],
                    Some(&body.to_string()),
                    &[],
                )
            };
            if unexpected.is_none() {
                unexpected = r.unexpected.clone();
            }
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
            index: reply.body["index"].as_u64(),
            unexpected,
        });
        std::thread::sleep(cfg.pace);
    }
}
