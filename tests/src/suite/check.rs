//! From a history to the checkers' inputs: per-key register histories for the linearizability
//! checker (linearizable `GET`s, read-only transactions and lists are all reads of the register),
//! the known writes and the reads for the checks against the log, and the validity rule (enough
//! successful reads and writes per key and per scene of the schedule).

use std::collections::HashMap;

use serde_json::Value;

use crate::checker::append::{check_appends, AppendFindings, AppendTxn};
use crate::checker::reads::{KeyRead, KnownWrite, ReadKind, ReadObs};
use crate::checker::{check_register, RegEvent, RegOp, Verdict};
use crate::history::{OpRecord, Outcome};
use crate::workload;

/// Reads that are linearizable and so go into the register histories.
const LINEARIZABLE_READS: [&str; 3] = ["read", "txn_read", "list"];

/// Every key and value one successful register read saw (a list sees every key: the absent ones
/// as absent).
fn read_items(op: &OpRecord, keys: usize) -> Vec<KeyRead> {
    if op.f == "list" {
        let items = &op.output["items"];
        (0..keys)
            .map(|k| {
                let key = format!("reg/{k}");
                let it = &items[&key];
                KeyRead {
                    key,
                    value: it[0].as_i64(),
                    version: it[1].as_u64(),
                }
            })
            .collect()
    } else {
        vec![KeyRead {
            key: op.key.clone(),
            value: op.output["value"].as_i64(),
            version: op.output["version"].as_u64(),
        }]
    }
}

/// Turns the register operations into per-key histories and checks each: (keys, operations,
/// keys not linearizable, keys undecided).
pub fn check_registers(ops: &[OpRecord], keys: usize) -> (usize, usize, Vec<String>, Vec<String>) {
    let mut by_key: HashMap<String, Vec<RegEvent>> = HashMap::new();
    let mut total = 0;
    for op in ops.iter().filter(|o| o.workload == "register") {
        let mut events: Vec<(String, RegEvent)> = Vec::new();
        match (op.f, op.outcome) {
            (f, Outcome::Ok) if LINEARIZABLE_READS.contains(&f) => {
                for item in read_items(op, keys) {
                    events.push((
                        item.key,
                        RegEvent {
                            op: RegOp::Read(item.value),
                            invoke: op.invoke_ns,
                            complete: Some(op.complete_ns),
                        },
                    ));
                }
            }
            ("write", Outcome::Ok | Outcome::Unknown) => {
                if let Some(v) = op.input.as_i64() {
                    events.push((
                        op.key.clone(),
                        RegEvent {
                            op: RegOp::Write(v),
                            invoke: op.invoke_ns,
                            // An async write acknowledged from the leader's log may still be
                            // lost: to the checker it is of unknown outcome.
                            complete: (op.outcome == Outcome::Ok && op.mode != "async")
                                .then_some(op.complete_ns),
                        },
                    ));
                }
            }
            ("cas", Outcome::Ok | Outcome::Unknown) => {
                if let (Some(from), Some(to)) = (op.input["from"].as_i64(), op.input["to"].as_i64())
                {
                    events.push((
                        op.key.clone(),
                        RegEvent {
                            op: RegOp::Cas {
                                from,
                                to,
                                ok: op.output.as_bool().unwrap_or(false),
                            },
                            invoke: op.invoke_ns,
                            complete: (op.outcome == Outcome::Ok).then_some(op.complete_ns),
                        },
                    ));
                }
            }
            _ => {}
        }
        for (key, e) in events {
            total += 1;
            by_key.entry(key).or_default().push(e);
        }
    }
    let mut bad = Vec::new();
    let mut undecided = Vec::new();
    let n = by_key.len();
    for (key, events) in by_key {
        match check_register(&events, 20_000_000) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { deepest } => bad.push(format!(
                "{key} ({} ops, deepest linearization {deepest})",
                events.len()
            )),
            Verdict::Unknown => undecided.push(format!("{key} ({} ops)", events.len())),
        }
    }
    bad.sort();
    undecided.sort();
    (n, total, bad, undecided)
}

/// The writes whose index is known: acknowledged `semi`/`sync` puts, and successful
/// compare-and-sets (answered once applied, in every mode).
pub fn known_writes(ops: &[OpRecord]) -> Vec<KnownWrite> {
    ops.iter()
        .filter(|o| o.workload == "register" && o.outcome == Outcome::Ok)
        .filter_map(|o| {
            let value = match o.f {
                "write" if o.mode != "async" => o.input.as_i64()?,
                "cas" if o.output == Value::Bool(true) => o.input["to"].as_i64()?,
                _ => return None,
            };
            Some(KnownWrite {
                key: o.key.clone(),
                value,
                index: o.index?,
                mode: o.mode.to_string(),
                client: o.client,
                invoke: o.invoke_ns,
                complete: o.complete_ns,
            })
        })
        .collect()
}

/// Every successful register read, for the checks against the log.
pub fn read_observations(ops: &[OpRecord], keys: usize) -> Vec<ReadObs> {
    ops.iter()
        .enumerate()
        .filter(|(_, o)| o.workload == "register" && o.outcome == Outcome::Ok)
        .filter_map(|(i, o)| {
            let kind = match o.f {
                "read" => ReadKind::Linearizable,
                "txn_read" => ReadKind::Txn,
                "list" => ReadKind::List,
                "stale_read" => ReadKind::Stale,
                "session_read" => ReadKind::Session,
                _ => return None,
            };
            Some(ReadObs {
                op: i,
                client: o.client,
                node: o.node,
                kind,
                invoke: o.invoke_ns,
                complete: o.complete_ns,
                at: o.index?,
                min_index: o.input["min_index"].as_u64(),
                items: read_items(o, keys),
            })
        })
        .collect()
}

/// The (acknowledged at, index) of the other workloads' writes that were committed when
/// acknowledged: list appends and bank transfers (transactions, answered once applied), and set
/// adds but the blind `async` puts (acknowledged from the leader's log).
pub fn commit_points(ops: &[OpRecord]) -> Vec<(u64, u64)> {
    ops.iter()
        .filter(|o| o.outcome == Outcome::Ok && o.detail.starts_with("200"))
        .filter(|o| match (o.workload, o.f) {
            ("append", "append") | ("bank", "transfer") => true,
            ("set", "add") => {
                o.mode != "async" || o.input.as_u64().is_some_and(workload::is_counted)
            }
            _ => false,
        })
        .filter_map(|o| Some((o.complete_ns, o.index?)))
        .collect()
}

/// The other workloads' linearizable reads (list-append reads and whole-bank reads, both
/// read-only transactions), for the index half of the recency check.
pub fn other_reads(ops: &[OpRecord]) -> Vec<ReadObs> {
    ops.iter()
        .enumerate()
        .filter(|(_, o)| o.outcome == Outcome::Ok)
        .filter(|(_, o)| matches!((o.workload, o.f), ("append", "read") | ("bank", "read_all")))
        .filter_map(|(i, o)| {
            Some(ReadObs {
                op: i,
                client: o.client,
                node: o.node,
                kind: ReadKind::Txn,
                invoke: o.invoke_ns,
                complete: o.complete_ns,
                at: o.index?,
                min_index: None,
                items: Vec::new(),
            })
        })
        .collect()
}

/// Whether an operation is a successful read (of any workload).
fn is_read(o: &OpRecord) -> bool {
    o.outcome == Outcome::Ok
        && matches!(
            o.f,
            "read" | "txn_read" | "list" | "stale_read" | "session_read" | "read_all"
        )
}

/// Whether an operation is a successful write (of any workload).
fn is_write(o: &OpRecord) -> bool {
    o.outcome == Outcome::Ok
        && match o.f {
            "cas" => o.output == Value::Bool(true),
            f => matches!(f, "write" | "transfer" | "add"),
        }
}

/// How long after the next scene starts a scene's window still runs: a scene that took every
/// node down (kill all, power loss of all) heals, restarts and elects before writes succeed
/// again, which can take longer than the calm before the next scene.
const RECOVERY_ALLOWANCE_NS: u64 = 5_000_000_000;

/// Why the history is too thin to judge, if it is: every register key needs `per_key`
/// successful linearizable reads and writes, and every window (a scene of the schedule, the calm
/// after it and [`RECOVERY_ALLOWANCE_NS`] into the next, given as start times in nanoseconds)
/// `per_window` successful reads and writes.
pub fn too_thin(
    ops: &[OpRecord],
    keys: usize,
    windows: &[u64],
    end: u64,
    per_key: usize,
    per_window: usize,
) -> Option<String> {
    for k in 0..keys {
        let key = format!("reg/{k}");
        let of = |f: &dyn Fn(&OpRecord) -> bool| {
            ops.iter()
                .filter(|o| o.workload == "register" && o.key == key && f(o))
                .count()
        };
        let reads = of(&|o| is_read(o) && o.f != "stale_read" && o.f != "session_read");
        let writes = of(&is_write);
        if reads < per_key || writes < per_key {
            return Some(format!(
                "key {key}: {reads} linearizable reads and {writes} writes succeeded (need {per_key} each)"
            ));
        }
    }
    for (i, start) in windows.iter().enumerate() {
        let stop = windows
            .get(i + 1)
            .map_or(end, |next| (next + RECOVERY_ALLOWANCE_NS).min(end));
        let inside = |o: &&OpRecord| o.complete_ns >= *start && o.complete_ns < stop;
        let reads = ops.iter().filter(inside).filter(|o| is_read(o)).count();
        let writes = ops.iter().filter(inside).filter(|o| is_write(o)).count();
        if reads < per_window || writes < per_window {
            return Some(format!(
                "scene {i} ({:.1}–{:.1} s): {reads} reads and {writes} writes succeeded (need {per_window} each)",
                *start as f64 / 1e9,
                stop as f64 / 1e9
            ));
        }
    }
    None
}

/// `[[key, [elements]], ...]` as recorded by the list-append clients.
fn key_lists(v: &Value) -> Option<Vec<(String, Vec<i64>)>> {
    v.as_array()?
        .iter()
        .map(|pair| {
            let key = pair.get(0)?.as_str()?.to_string();
            let list = pair
                .get(1)?
                .as_array()?
                .iter()
                .map(Value::as_i64)
                .collect::<Option<Vec<i64>>>()?;
            Some((key, list))
        })
        .collect()
}

/// `[[key, element], ...]` as recorded by the list-append clients.
fn key_elements(v: &Value) -> Option<Vec<(String, i64)>> {
    v.as_array()?
        .iter()
        .map(|pair| Some((pair.get(0)?.as_str()?.to_string(), pair.get(1)?.as_i64()?)))
        .collect()
}

/// Runs the list-append (Elle) check over the history and the final read of every list.
pub fn check_append(ops: &[OpRecord], finals: &Value) -> Result<AppendFindings, String> {
    let mut txns = Vec::new();
    for op in ops.iter().filter(|o| o.workload == "append") {
        let bad = || format!("a list-append record that does not parse: {op:?}");
        let complete = (op.outcome != Outcome::Unknown).then_some(op.complete_ns);
        let t = match (op.f, op.outcome) {
            ("read", Outcome::Ok) => AppendTxn {
                invoke: op.invoke_ns,
                complete,
                failed: false,
                reads: key_lists(&op.output["reads"]).ok_or_else(bad)?,
                appends: Vec::new(),
            },
            // A read that failed or did not parse tells nothing.
            ("read", _) => continue,
            ("append", outcome) => AppendTxn {
                invoke: op.invoke_ns,
                complete,
                failed: outcome == Outcome::Fail,
                reads: key_lists(&op.output["reads"]).ok_or_else(bad)?,
                appends: key_elements(&op.input["appends"]).ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        };
        txns.push(t);
    }
    let mut lists = HashMap::new();
    let results = finals["results"]
        .as_array()
        .ok_or(format!("the final list read has no results: {finals}"))?;
    for (i, r) in results.iter().enumerate() {
        let list = if r["found"] == true {
            r["value"]
                .as_str()
                .and_then(workload::decode_list)
                .ok_or(format!("a final list that does not parse: {r}"))?
        } else {
            Vec::new()
        };
        lists.insert(workload::append_key(i), list);
    }
    Ok(check_appends(&txns, &lists))
}
