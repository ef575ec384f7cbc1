//! `POST /v1/txn`: turning the JSON transaction into a command (with every check that can be
//! made before the log: keys, sizes, operators), and its result back into JSON.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::HeaderMap;
use keel_api::kv::JsonValue;
use keel_api::limits::{MAX_TXN_BODY_BYTES, MAX_TXN_OPS};
use keel_api::txn::{
    CompareJson, CompareOp as WireOp, CompareTarget as WireTarget, FoundValue, StepJson,
    StepResultJson, TxnRequest, TxnResponse,
};
use keel_api::ErrorCode;

use super::auth::{Caller, Role};
use super::error::{rejected, ApiError};
use super::reply::{Answer, Reply};
use super::request::{self, validate_key, Query};
use super::Api;
use crate::proto::{
    command::Op, txn_step::Step, AddOp, Compare, CompareOp, CompareTarget, DeleteOp, GetOp, PutOp,
    StepResult, TxnOp, TxnStep,
};

impl Api {
    /// `POST /v1/txn`. A transaction of compares and gets only, without an idempotency key, is
    /// served like a read (at the requested consistency, from one snapshot, without the log).
    pub(super) async fn txn(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        q: Query,
        caller: &Caller,
    ) -> Answer {
        let idem = request::idempotency_key(headers)?;
        let body = request::read_body(headers, body, MAX_TXN_BODY_BYTES).await?;
        let txn = parse_txn(&body, self.cfg.max_value_bytes)?;
        let read_only = txn
            .success
            .iter()
            .chain(txn.failure.iter())
            .all(|s| matches!(s.step, Some(Step::Get(_))));
        // With an idempotency key even a read-only transaction goes through the log (and takes
        // a key other writers might have wanted): a write. So does a fenced one (the fence is
        // checked at apply).
        let fenced = headers.contains_key(keel_api::coord::IF_FENCE);
        let role = if read_only && idem.is_empty() && !fenced {
            Role::Read
        } else {
            Role::Write
        };
        caller.need(role)?;
        for key in txn_keys(&txn) {
            caller.need_key(role, key)?;
        }
        if read_only && idem.is_empty() && !fenced {
            self.read_barrier(&q).await?;
            let sm = self.sm.clone();
            // Up to 128 gets of values up to the value limit: off the async workers, like a list.
            return super::kv::off_the_workers("transaction", move || {
                let read = sm.read_txn(&txn)?;
                let r = rejected(&read.value)?;
                Reply::json(&txn_response(r, read.index, None), Some(read.index))
            })
            .await;
        }
        let ok = self.write(Op::Txn(txn), &q, headers).await?;
        let r = rejected(&ok.result)?;
        Reply::write(&txn_response(r, r.index, Some(ok.acked)), &ok)
    }
}

/// Parses and validates the body of `POST /v1/txn`.
pub fn parse_txn(body: &[u8], max_value_bytes: usize) -> Result<TxnOp, ApiError> {
    let parsed: TxnRequest = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("invalid transaction: {e}")))?;
    for (what, n) in [
        ("compare", parsed.compare.len()),
        ("success", parsed.success.len()),
        ("failure", parsed.failure.len()),
    ] {
        if n > MAX_TXN_OPS {
            return Err(ApiError::new(
                ErrorCode::TxnTooLarge,
                format!(
                    "{what} has {n} entries; a transaction allows at most {MAX_TXN_OPS} per list"
                ),
            ));
        }
    }
    let compare = parsed
        .compare
        .into_iter()
        .map(compare)
        .collect::<Result<Vec<_>, _>>()?;
    let steps = |list: Vec<StepJson>| {
        list.into_iter()
            .map(|s| step(s, max_value_bytes))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(TxnOp {
        compare,
        success: steps(parsed.success)?,
        failure: steps(parsed.failure)?,
    })
}

/// One compare, checked.
fn compare(c: CompareJson) -> Result<Compare, ApiError> {
    validate_key(&c.key)?;
    let bad = |m: String| ApiError::new(ErrorCode::InvalidTxn, m);
    let op = match WireOp::parse(&c.op) {
        Some(WireOp::Eq) => CompareOp::Eq,
        Some(WireOp::Ne) => CompareOp::Ne,
        Some(WireOp::Lt) => CompareOp::Lt,
        Some(WireOp::Le) => CompareOp::Le,
        Some(WireOp::Gt) => CompareOp::Gt,
        Some(WireOp::Ge) => CompareOp::Ge,
        None => {
            return Err(bad(format!(
                "unknown compare op {:?}: expected == != < <= > >=",
                c.op
            )))
        }
    };
    let mut out = Compare {
        key: c.key,
        op: op as i32,
        ..Default::default()
    };
    match WireTarget::parse(&c.target) {
        Some(WireTarget::Value) => {
            let v = c
                .value
                .as_str()
                .ok_or_else(|| bad("a value compare needs a string".into()))?;
            out.target = CompareTarget::Value as i32;
            out.value = Bytes::from(v.to_string());
        }
        Some(WireTarget::Version) => {
            out.target = CompareTarget::Version as i32;
            out.version = c
                .value
                .as_u64()
                .ok_or_else(|| bad("a version compare needs a non-negative integer".into()))?;
        }
        Some(WireTarget::Int) => {
            out.target = CompareTarget::Int as i32;
            out.int = c
                .value
                .as_i64()
                .ok_or_else(|| bad("an int compare needs an integer".into()))?;
        }
        None => {
            return Err(bad(format!(
                "unknown compare target {:?}: expected value, version or int",
                c.target
            )))
        }
    }
    Ok(out)
}

/// One step, checked.
fn step(s: StepJson, max_value_bytes: usize) -> Result<TxnStep, ApiError> {
    validate_key(s.key())?;
    let step = match s {
        StepJson::Put { key, value } => {
            if value.len() > max_value_bytes {
                return Err(ApiError::new(
                    ErrorCode::PayloadTooLarge,
                    format!("the value of {key:?} is larger than {max_value_bytes} bytes"),
                ));
            }
            Step::Put(PutOp {
                lease: 0,
                key,
                value: Bytes::from(value),
                precondition: None,
            })
        }
        StepJson::Delete { key } => Step::Delete(DeleteOp {
            key,
            precondition: None,
        }),
        StepJson::Get { key } => Step::Get(GetOp { key }),
        StepJson::Add {
            key,
            delta,
            min,
            max,
        } => Step::Add(AddOp {
            key,
            delta,
            min,
            max,
        }),
    };
    Ok(TxnStep { step: Some(step) })
}

/// The key of a transaction step.
fn step_key(s: &TxnStep) -> Option<&str> {
    match &s.step {
        Some(Step::Put(p)) => Some(p.key.as_str()),
        Some(Step::Delete(d)) => Some(d.key.as_str()),
        Some(Step::Get(g)) => Some(g.key.as_str()),
        Some(Step::Add(a)) => Some(a.key.as_str()),
        None => None,
    }
}

/// Every key a transaction names, in its compares and both branches.
pub(super) fn txn_keys(txn: &TxnOp) -> impl Iterator<Item = &str> {
    txn.compare.iter().map(|c| c.key.as_str()).chain(
        txn.success
            .iter()
            .chain(txn.failure.iter())
            .filter_map(step_key),
    )
}

/// The answer to a transaction that ran (`r`), at `index`, acknowledged at `acked` (a write)
/// or read on one snapshot (None).
fn txn_response(
    r: &crate::proto::ApplyResult,
    index: u64,
    acked: Option<keel_api::AckPoint>,
) -> TxnResponse {
    TxnResponse {
        succeeded: r.succeeded,
        results: step_results(&r.results),
        index,
        acked,
    }
}

/// The JSON of each step's result.
fn step_results(results: &[StepResult]) -> Vec<StepResultJson> {
    results
        .iter()
        .map(|r| {
            let key = r.key.clone();
            match r.kind.as_str() {
                "get" => StepResultJson::Get {
                    key,
                    found: r.found,
                    item: r.found.then(|| FoundValue {
                        value: JsonValue::from_bytes(&r.value),
                        version: r.version,
                    }),
                },
                "delete" => StepResultJson::Delete {
                    key,
                    deleted: r.deleted,
                },
                "add" => StepResultJson::Add {
                    key,
                    value: r.int.unwrap_or_default(),
                    version: r.version,
                },
                _ => StepResultJson::Put {
                    key,
                    version: r.version,
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_transactions_get_the_documented_codes() {
        let code = |body: &str| {
            parse_txn(body.as_bytes(), 16)
                .map(|_| ())
                .map_err(|e| e.code())
        };
        assert_eq!(code("{\"success\": ["), Err(ErrorCode::InvalidJson));
        assert_eq!(
            code(r#"{"success": [{"op": "frob", "key": "a"}]}"#),
            Err(ErrorCode::InvalidJson)
        );
        assert_eq!(
            code(r#"{"compare": [{"key": "a", "target": "int", "op": "~", "value": 1}]}"#),
            Err(ErrorCode::InvalidTxn)
        );
        assert_eq!(
            code(r#"{"compare": [{"key": "a", "target": "int", "op": ">=", "value": "x"}]}"#),
            Err(ErrorCode::InvalidTxn)
        );
        assert_eq!(
            code(r#"{"success": [{"op": "put", "key": "", "value": "1"}]}"#),
            Err(ErrorCode::InvalidKey)
        );
        assert_eq!(
            code(r#"{"success": [{"op": "put", "key": "a", "value": "01234567890123456"}]}"#),
            Err(ErrorCode::PayloadTooLarge)
        );
        assert_eq!(
            code(
                r#"{"compare": [{"key": "a", "target": "version", "op": "==", "value": 3}],
                     "success": [{"op": "add", "key": "a", "delta": -1, "min": 0}],
                     "failure": [{"op": "get", "key": "a"}]}"#
            ),
            Ok(())
        );
    }
}
