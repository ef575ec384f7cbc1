//! The register workload: unique writes and compare-and-sets on a few keys, and reads of every
//! kind keel offers — linearizable `GET`, a read-only transaction, a list of the prefix,
//! `stale`, and session reads (`stale&min_index` = the highest index this client has seen in any
//! answer, as keel-client's session consistency does). Each read records the index it was read
//! at and the version of each value, for the checks against the log (`checker::reads`).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::{as_int, client_http, send, Reply, WorkloadCfg};
use crate::history::{History, OpRecord, Outcome};

/// The kinds of operation, with their weights out of 100.
const MIX: [(&str, u32); 7] = [
    ("read", 18),
    ("txn_read", 8),
    ("list", 6),
    ("stale_read", 10),
    ("session_read", 10),
    ("write", 33),
    ("cas", 15),
];

/// The mix of a client that only reads.
const READ_MIX: [(&str, u32); 3] = [("read", 50), ("list", 30), ("txn_read", 20)];

/// What a register client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Writes, compare-and-sets and reads of every kind ([`MIX`]), write modes in turn.
    Mixed,
    /// Linearizable reads only ([`READ_MIX`]).
    Reader,
    /// Unique `semi` writes only: `semi` is acknowledged exactly at commit, so these are the
    /// writes a new leader that has not yet committed in its term may not know are committed.
    Writer,
}

fn choose_kind(roll: u32, role: Role) -> &'static str {
    let mix: &[(&str, u32)] = match role {
        Role::Mixed => &MIX,
        Role::Reader => &READ_MIX,
        Role::Writer => return "write",
    };
    let mut acc = 0;
    for &(k, w) in mix {
        acc += w;
        if roll < acc {
            return k;
        }
    }
    mix[0].0
}

/// A value and its version out of a read answer: `(value, version)`; `None` when the body is
/// not what the API says.
fn value_of_get(r: &Reply) -> Option<(Option<i64>, Option<u64>)> {
    match r.status {
        404 => Some((None, None)),
        200 => Some((Some(as_int(&r.body)?), Some(r.etag?))),
        _ => None,
    }
}

/// The register workload's client `client`, in its role.
pub fn register_client(
    client: usize,
    role: Role,
    cfg: WorkloadCfg,
    history: History,
    values: Arc<AtomicI64>,
    stop: Arc<AtomicBool>,
) {
    let http = client_http(if role == Role::Reader {
        cfg.reader_timeout
    } else {
        cfg.timeout
    });
    // Pinned to its node, as Jepsen's clients are (a read checker learns most from the clients
    // of a node that is cut off); the bank and set clients are the ones that fail over.
    let slot = client;
    let mut rng = rand::rngs::StdRng::seed_from_u64(client as u64 * 7919 + 1);
    let mut last_seen: Vec<Option<i64>> = vec![None; cfg.keys];
    let mut session = 0u64;
    let mut n = 0usize;
    while !stop.load(Ordering::Acquire) && n < 1_000_000 {
        n += 1;
        let (node, addr) = cfg.target(slot);
        let k = rng.gen_range(0..cfg.keys);
        let key = format!("reg/{k}");
        let mode = match role {
            Role::Writer => "semi",
            _ => cfg.modes[n % cfg.modes.len()],
        };
        let mut f = choose_kind(rng.gen_range(0..100), role);
        if f == "cas" && last_seen[k].is_none() {
            f = "write";
        }
        let invoke = history.now();
        let mut input = Value::Null;
        let reply = match f {
            "read" => send(
                &http,
                "GET",
                &addr,
                &format!("/v1/kv/{key}"),
                &[],
                None,
                &[404],
            ),
            "stale_read" => send(
                &http,
                "GET",
                &addr,
                &format!("/v1/kv/{key}?consistency=stale"),
                &[],
                None,
                &[404],
            ),
            "session_read" => {
                input = json!({"min_index": session});
                send(
                    &http,
                    "GET",
                    &addr,
                    &format!("/v1/kv/{key}?consistency=stale&min_index={session}"),
                    &[],
                    None,
                    &[404],
                )
            }
            "txn_read" => {
                let body = json!({"success": [{"op": "get", "key": key}]}).to_string();
                send(&http, "POST", &addr, "/v1/txn", &[], Some(&body), &[])
            }
            "list" => send(
                &http,
                "GET",
                &addr,
                "/v1/kv?prefix=reg/&limit=100",
                &[],
                None,
                &[],
            ),
            "write" => {
                let v = values.fetch_add(1, Ordering::Relaxed);
                input = json!(v);
                send(
                    &http,
                    "PUT",
                    &addr,
                    &format!("/v1/kv/{key}?mode={mode}"),
                    &[],
                    Some(&v.to_string()),
                    &[],
                )
            }
            _ => {
                let from = last_seen[k].unwrap_or(0);
                let to = values.fetch_add(1, Ordering::Relaxed);
                input = json!({"from": from, "to": to});
                let body = json!({
                    "compare": [{"key": key, "target": "value", "op": "==", "value": from.to_string()}],
                    "success": [{"op": "put", "key": key, "value": to.to_string()}],
                });
                send(
                    &http,
                    "POST",
                    &addr,
                    &format!("/v1/txn?mode={mode}"),
                    &[],
                    Some(&body.to_string()),
                    &[],
                )
            }
        };
        let complete = history.now();
        let mut unexpected = reply.unexpected.clone();
        let mut index = None;
        let mut output = Value::Null;
        if reply.outcome == Outcome::Ok {
            let parsed: Option<(Value, Option<u64>)> = match f {
                "read" | "stale_read" | "session_read" => {
                    value_of_get(&reply).and_then(|(v, ver)| {
                        if let Some(v) = v {
                            last_seen[k] = Some(v);
                        }
                        Some((json!({"value": v, "version": ver}), Some(reply.index?)))
                    })
                }
                "txn_read" => (|| {
                    let r = &reply.body["results"][0];
                    let found = r["found"].as_bool()?;
                    let (v, ver) = if found {
                        (Some(as_int(&r["value"])?), Some(r["version"].as_u64()?))
                    } else {
                        (None, None)
                    };
                    if let Some(v) = v {
                        last_seen[k] = Some(v);
                    }
                    Some((
                        json!({"value": v, "version": ver}),
                        reply.body["index"].as_u64(),
                    ))
                })(),
                "list" => (|| {
                    let mut items = serde_json::Map::new();
                    for it in reply.body["items"].as_array()? {
                        let key = it["key"].as_str()?.to_string();
                        items.insert(key, json!([as_int(&it["value"])?, it["version"].as_u64()?]));
                    }
                    (reply.body["more"] == false).then_some(())?;
                    Some((json!({"items": items}), reply.body["index"].as_u64()))
                })(),
                "write" => {
                    last_seen[k] = input.as_i64();
                    reply.body["index"].as_u64().map(|i| (Value::Null, Some(i)))
                }
                _ => reply.body["succeeded"].as_bool().and_then(|ok| {
                    if ok {
                        last_seen[k] = input["to"].as_i64();
                    }
                    let i = reply.body["index"].as_u64()?;
                    Some((json!(ok), ok.then_some(i)))
                }),
            };
            match parsed {
                Some((o, i)) if i.is_some() || f == "cas" => {
                    output = o;
                    index = i;
                }
                _ => {
                    unexpected.get_or_insert(format!(
                        "{f} {key}: a {} answer not in the API's shape: {}",
                        reply.status, reply.body
                    ));
                }
            }
        }
        if let Some(i) = index.or(reply.index) {
            session = session.max(i);
        }
        let outcome = if unexpected.is_some() && reply.outcome == Outcome::Ok {
            // Not evidence for the checkers; counted as unexpected instead.
            Outcome::Unknown
        } else {
            reply.outcome
        };
        history.push(OpRecord {
            client,
            node,
            workload: "register",
            f,
            key: if f == "list" { String::new() } else { key },
            input,
            output,
            mode: match f {
                "write" | "cas" => mode,
                "stale_read" => "stale",
                "session_read" => "session",
                _ => "linearizable",
            },
            invoke_ns: invoke,
            complete_ns: complete,
            outcome,
            detail: reply.detail,
            index,
            unexpected,
        });
        std::thread::sleep(cfg.pace);
    }
}
