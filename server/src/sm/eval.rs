//! The pure evaluation of commands: the outcome of an `add`, a compare, a precondition or a
//! whole transaction, given the records it reads. No RocksDB here: the apply path
//! ([`super::apply`]) and the read path ([`super::StateMachine::read_txn`]) hand in a lookup
//! function, and the tests below hand in a map.
//!
//! Every function is deterministic: same records in, same outcome out, on every replica.

use std::collections::HashMap;

use bytes::Bytes;
use keel_api::ErrorCode;

use crate::proto::{
    txn_step::Step, AddOp, ApplyResult, Compare, CompareOp, CompareTarget, Precondition,
    StepResult, TxnOp, ValueRecord,
};
use crate::storage::StorageError;

pub(super) fn new_record(value: Bytes, index: u64) -> ValueRecord {
    ValueRecord {
        value,
        version: index,
        lease: 0,
    }
}

/// Why a command was refused, before it is turned into an [`ApplyResult`].
pub(super) struct Rejection {
    code: ErrorCode,
    message: String,
    key: String,
    /// The current value, for bound violations.
    value: Option<i64>,
    version: u64,
}

impl Rejection {
    fn new(code: ErrorCode, message: String, key: &str) -> Self {
        Rejection {
            code,
            message,
            key: key.to_string(),
            value: None,
            version: 0,
        }
    }

    pub(super) fn into_result(self, index: u64) -> ApplyResult {
        let mut r = reject(index, self.code, self.message);
        r.error_key = self.key;
        r.value = self.value;
        r.version = self.version;
        r
    }
}

/// The result of an `add`, or why it is refused.
pub(super) fn compute_add(cur: Option<&ValueRecord>, a: &AddOp) -> Result<i64, Rejection> {
    let current = match cur {
        None => 0,
        Some(rec) => parse_int(&rec.value).ok_or_else(|| {
            Rejection::new(
                ErrorCode::NotInteger,
                format!("the value of {:?} is not a decimal integer", a.key),
                &a.key,
            )
        })?,
    };
    let new = current.checked_add(a.delta);
    match new.filter(|n| a.min.is_none_or(|m| *n >= m) && a.max.is_none_or(|m| *n <= m)) {
        Some(n) => Ok(n),
        None => {
            let mut r = Rejection::new(
                ErrorCode::BoundViolated,
                format!(
                    "{:?}: {current} + {} would leave [{}, {}]",
                    a.key,
                    a.delta,
                    a.min.map_or("-inf".into(), |m| m.to_string()),
                    a.max.map_or("+inf".into(), |m| m.to_string())
                ),
                &a.key,
            );
            r.value = Some(current);
            r.version = cur.map_or(0, |c| c.version);
            Err(r)
        }
    }
}

/// Evaluates one compare against a key's current record.
pub(super) fn eval_compare(cur: Option<&ValueRecord>, c: &Compare) -> Result<bool, Rejection> {
    let op = CompareOp::try_from(c.op).unwrap_or(CompareOp::Unspecified);
    let ord = match CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Unspecified) {
        CompareTarget::Value => match cur {
            // An absent key has no value: only `!=` holds.
            None => return Ok(op == CompareOp::Ne),
            Some(rec) => rec.value.as_ref().cmp(c.value.as_ref()),
        },
        CompareTarget::Version => cur.map_or(0, |r| r.version).cmp(&c.version),
        CompareTarget::Int => {
            let v = match cur {
                None => 0,
                Some(rec) => parse_int(&rec.value).ok_or_else(|| {
                    Rejection::new(
                        ErrorCode::NotInteger,
                        format!("compare on {:?}: the value is not a decimal integer", c.key),
                        &c.key,
                    )
                })?,
            };
            v.cmp(&c.int)
        }
        CompareTarget::Unspecified => {
            return Err(Rejection::new(
                ErrorCode::InvalidCommand,
                "compare without a target".into(),
                "",
            ))
        }
    };
    use std::cmp::Ordering::*;
    Ok(match op {
        CompareOp::Eq => ord == Equal,
        CompareOp::Ne => ord != Equal,
        CompareOp::Lt => ord == Less,
        CompareOp::Le => ord != Greater,
        CompareOp::Gt => ord == Greater,
        CompareOp::Ge => ord != Less,
        CompareOp::Unspecified => {
            return Err(Rejection::new(
                ErrorCode::InvalidCommand,
                "compare without an operator".into(),
                "",
            ))
        }
    })
}

/// Runs a transaction against `read` (the state before it), returning its result and the writes
/// it would make. Rejections (bound violated, not an integer) come back as a result with an
/// error code and no writes.
///
/// With `max_get_bytes`, a transaction whose gets return more bytes of values than that is
/// rejected as `txn_too_large` (its answer, which carries them, must fit one peer frame; apply
/// version 2 and later, [`super::APPLY_VERSION`]).
pub(super) fn run_txn(
    mut read: impl FnMut(&str) -> Result<Option<ValueRecord>, StorageError>,
    index: u64,
    t: &TxnOp,
    max_get_bytes: Option<usize>,
) -> Result<(ApplyResult, HashMap<String, Option<ValueRecord>>), StorageError> {
    let mut scratch: HashMap<String, Option<ValueRecord>> = HashMap::new();
    let mut lookup =
        |scratch: &HashMap<String, Option<ValueRecord>>, key: &str| match scratch.get(key) {
            Some(rec) => Ok(rec.clone()),
            None => read(key),
        };
    let fail = |r: Rejection| Ok((r.into_result(index), HashMap::new()));
    let mut succeeded = true;
    for c in &t.compare {
        let cur = lookup(&scratch, &c.key)?;
        match eval_compare(cur.as_ref(), c) {
            Ok(holds) => succeeded &= holds,
            Err(r) => return fail(r),
        }
    }
    let steps = if succeeded { &t.success } else { &t.failure };
    let mut results = Vec::with_capacity(steps.len());
    let mut get_bytes = 0usize;
    for step in steps {
        let Some(step) = &step.step else {
            return fail(Rejection::new(
                ErrorCode::InvalidCommand,
                "empty transaction step".into(),
                "",
            ));
        };
        match step {
            Step::Put(p) => {
                scratch.insert(p.key.clone(), Some(new_record(p.value.clone(), index)));
                results.push(StepResult {
                    kind: "put".into(),
                    key: p.key.clone(),
                    version: index,
                    ..Default::default()
                });
            }
            Step::Delete(d) => {
                let existed = lookup(&scratch, &d.key)?.is_some();
                if existed {
                    scratch.insert(d.key.clone(), None);
                }
                results.push(StepResult {
                    kind: "delete".into(),
                    key: d.key.clone(),
                    deleted: existed,
                    ..Default::default()
                });
            }
            Step::Get(g) => {
                let cur = lookup(&scratch, &g.key)?;
                get_bytes = get_bytes.saturating_add(cur.as_ref().map_or(0, |r| r.value.len()));
                if let Some(max) = max_get_bytes.filter(|max| get_bytes > *max) {
                    return fail(Rejection::new(
                        ErrorCode::TxnTooLarge,
                        format!("the transaction's gets return more than {max} bytes of values"),
                        &g.key,
                    ));
                }
                results.push(StepResult {
                    kind: "get".into(),
                    key: g.key.clone(),
                    found: cur.is_some(),
                    value: cur.as_ref().map(|r| r.value.clone()).unwrap_or_default(),
                    version: cur.as_ref().map_or(0, |r| r.version),
                    ..Default::default()
                });
            }
            Step::Add(a) => {
                let cur = lookup(&scratch, &a.key)?;
                match compute_add(cur.as_ref(), a) {
                    Ok(new) => {
                        scratch.insert(
                            a.key.clone(),
                            Some(new_record(Bytes::from(new.to_string()), index)),
                        );
                        results.push(StepResult {
                            kind: "add".into(),
                            key: a.key.clone(),
                            version: index,
                            int: Some(new),
                            ..Default::default()
                        });
                    }
                    Err(r) => return fail(r),
                }
            }
        }
    }
    Ok((
        ApplyResult {
            index,
            succeeded,
            results,
            ..Default::default()
        },
        scratch,
    ))
}

/// Parses a strict decimal integer (optional leading `-`, digits only).
pub fn parse_int(bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

pub(super) fn check_precondition(
    pre: Option<&Precondition>,
    cur: Option<&ValueRecord>,
) -> Option<String> {
    let pre = pre?;
    if pre.if_absent {
        if let Some(c) = cur {
            return Some(format!("the key exists (version {})", c.version));
        }
    }
    if pre.if_exists && cur.is_none() {
        return Some("the key does not exist".to_string());
    }
    if let Some(want) = pre.if_version {
        match cur {
            None => return Some(format!("expected version {want}, the key does not exist")),
            Some(c) if c.version != want => {
                return Some(format!("expected version {want}, found {}", c.version))
            }
            Some(_) => {}
        }
    }
    None
}

pub(super) fn reject(index: u64, code: ErrorCode, message: String) -> ApplyResult {
    ApplyResult {
        index,
        error_code: code.as_str().to_string(),
        error_message: message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{DeleteOp, GetOp, PutOp, TxnStep};

    fn rec(value: &str, version: u64) -> ValueRecord {
        new_record(Bytes::from(value.to_string()), version)
    }

    fn step(s: Step) -> TxnStep {
        TxnStep { step: Some(s) }
    }

    fn add_op(key: &str, delta: i64, min: Option<i64>, max: Option<i64>) -> AddOp {
        AddOp {
            key: key.into(),
            delta,
            min,
            max,
        }
    }

    /// Runs `t` against the records in `data`.
    fn run(
        data: &HashMap<String, ValueRecord>,
        index: u64,
        t: &TxnOp,
    ) -> (ApplyResult, HashMap<String, Option<ValueRecord>>) {
        run_txn(|k| Ok(data.get(k).cloned()), index, t, None).expect("no storage involved")
    }

    /// The gets' values count against the bound, a step's own writes included; past it the
    /// whole transaction is rejected, nothing written.
    #[test]
    fn gets_returning_more_than_the_bound_reject_the_transaction() {
        let mut data = HashMap::new();
        data.insert("a".to_string(), rec("12345", 1));
        let get = |k: &str| step(Step::Get(GetOp { key: k.into() }));
        let put = |k: &str, v: &str| {
            step(Step::Put(PutOp {
                key: k.into(),
                value: Bytes::from(v.to_string()),
                ..Default::default()
            }))
        };
        let t = |success: Vec<TxnStep>| TxnOp {
            success,
            ..Default::default()
        };
        let run_max = |t: &TxnOp, max| {
            run_txn(|k| Ok(data.get(k).cloned()), 9, t, Some(max)).expect("no storage involved")
        };
        // 5 + 5 bytes: within 10, beyond 9.
        let two = t(vec![put("w", "x"), get("a"), get("a")]);
        let (r, writes) = run_max(&two, 10);
        assert!(r.is_ok() && r.succeeded);
        assert_eq!(writes.len(), 1);
        let (r, writes) = run_max(&two, 9);
        assert_eq!(r.error_code, "txn_too_large");
        assert_eq!(r.error_key, "a");
        assert!(writes.is_empty(), "nothing written");
        // A value the transaction itself put counts too; absent keys count nothing.
        let own = t(vec![put("b", "1234567890"), get("b"), get("nope")]);
        assert_eq!(run_max(&own, 9).0.error_code, "txn_too_large");
        assert!(run_max(&own, 10).0.is_ok());
        // Without a bound (entries of apply version 1 and before), anything goes.
        assert!(run(&data, 9, &two).0.is_ok());
    }

    #[test]
    fn add_respects_bounds_overflow_and_integers() {
        assert_eq!(compute_add(None, &add_op("n", 5, None, None)).ok(), Some(5));
        assert_eq!(
            compute_add(Some(&rec("10", 3)), &add_op("n", -4, Some(0), None)).ok(),
            Some(6)
        );
        let r = compute_add(Some(&rec("3", 7)), &add_op("n", -4, Some(0), None))
            .expect_err("below min");
        assert_eq!(
            (r.code, r.value, r.version),
            (ErrorCode::BoundViolated, Some(3), 7)
        );
        let r = compute_add(Some(&rec("9", 1)), &add_op("n", 2, None, Some(10)))
            .expect_err("above max");
        assert_eq!(r.code, ErrorCode::BoundViolated);
        let r = compute_add(
            Some(&rec(&i64::MAX.to_string(), 1)),
            &add_op("n", 1, None, None),
        )
        .expect_err("overflow");
        assert_eq!(r.code, ErrorCode::BoundViolated);
        let r = compute_add(Some(&rec("1.5", 1)), &add_op("n", 1, None, None))
            .expect_err("not an integer");
        assert_eq!(r.code, ErrorCode::NotInteger);
    }

    #[test]
    fn compares_on_absent_and_present_keys() {
        let cmp = |target: CompareTarget, op: CompareOp| Compare {
            key: "k".into(),
            target: target as i32,
            op: op as i32,
            value: Bytes::from_static(b"b"),
            version: 4,
            int: 10,
        };
        // An absent key has no value: only != holds; its version and int are 0.
        assert!(eval_compare(None, &cmp(CompareTarget::Value, CompareOp::Ne)).unwrap_or(false));
        assert!(!eval_compare(None, &cmp(CompareTarget::Value, CompareOp::Eq)).unwrap_or(true));
        assert!(eval_compare(None, &cmp(CompareTarget::Version, CompareOp::Lt)).unwrap_or(false));
        assert!(eval_compare(None, &cmp(CompareTarget::Int, CompareOp::Lt)).unwrap_or(false));
        let r = rec("a", 4);
        assert!(eval_compare(Some(&r), &cmp(CompareTarget::Value, CompareOp::Lt)).unwrap_or(false));
        assert!(
            eval_compare(Some(&r), &cmp(CompareTarget::Version, CompareOp::Eq)).unwrap_or(false)
        );
        assert!(
            eval_compare(Some(&r), &cmp(CompareTarget::Version, CompareOp::Ge)).unwrap_or(false)
        );
        let err = eval_compare(Some(&r), &cmp(CompareTarget::Int, CompareOp::Eq))
            .expect_err("not an integer");
        assert_eq!(err.code, ErrorCode::NotInteger);
        let err = eval_compare(Some(&r), &cmp(CompareTarget::Unspecified, CompareOp::Eq))
            .expect_err("no target");
        assert_eq!(err.code, ErrorCode::InvalidCommand);
    }

    #[test]
    fn preconditions() {
        let present = rec("v", 5);
        let if_version = |v| Precondition {
            if_version: Some(v),
            ..Default::default()
        };
        assert!(check_precondition(Some(&if_version(5)), Some(&present)).is_none());
        assert!(check_precondition(Some(&if_version(4)), Some(&present)).is_some());
        assert!(check_precondition(Some(&if_version(5)), None).is_some());
        let absent = Precondition {
            if_absent: true,
            ..Default::default()
        };
        assert!(check_precondition(Some(&absent), None).is_none());
        assert!(check_precondition(Some(&absent), Some(&present)).is_some());
        let exists = Precondition {
            if_exists: true,
            ..Default::default()
        };
        assert!(check_precondition(Some(&exists), None).is_some());
        assert!(check_precondition(None, None).is_none());
    }

    #[test]
    fn a_transaction_sees_its_own_steps_and_aborts_whole() {
        let mut data = HashMap::new();
        data.insert("a".to_string(), rec("100", 1));
        let t = TxnOp {
            compare: vec![Compare {
                key: "a".into(),
                target: CompareTarget::Int as i32,
                op: CompareOp::Ge as i32,
                int: 30,
                ..Default::default()
            }],
            success: vec![
                step(Step::Add(add_op("a", -30, Some(0), None))),
                step(Step::Add(add_op("b", 30, None, None))),
                step(Step::Get(GetOp { key: "a".into() })),
                step(Step::Delete(DeleteOp {
                    key: "a".into(),
                    precondition: None,
                })),
                step(Step::Get(GetOp { key: "a".into() })),
            ],
            failure: vec![],
        };
        let (r, writes) = run(&data, 9, &t);
        assert!(r.is_ok() && r.succeeded);
        assert_eq!(r.results[0].int, Some(70));
        assert_eq!(r.results[1].int, Some(30));
        assert_eq!(
            &r.results[2].value[..],
            b"70",
            "a later step sees an earlier one"
        );
        assert!(r.results[3].deleted);
        assert!(!r.results[4].found);
        assert_eq!(writes.get("a"), Some(&None));
        assert_eq!(
            writes.get("b").and_then(|r| r.as_ref()).map(|r| r.version),
            Some(9)
        );

        // The second add breaks its bound: the result is a rejection and there are no writes.
        let abort = TxnOp {
            compare: vec![],
            success: vec![
                step(Step::Put(PutOp {
                    key: "c".into(),
                    value: Bytes::from_static(b"1"),
                    ..Default::default()
                })),
                step(Step::Add(add_op("a", -1000, Some(0), None))),
            ],
            failure: vec![],
        };
        let (r, writes) = run(&data, 10, &abort);
        assert_eq!(r.error_code, ErrorCode::BoundViolated.as_str());
        assert_eq!((r.error_key.as_str(), r.value), ("a", Some(100)));
        assert!(writes.is_empty());

        // A failed compare runs the failure branch.
        let t = TxnOp {
            compare: vec![Compare {
                key: "a".into(),
                target: CompareTarget::Value as i32,
                op: CompareOp::Eq as i32,
                value: Bytes::from_static(b"nope"),
                ..Default::default()
            }],
            success: vec![step(Step::Get(GetOp { key: "x".into() }))],
            failure: vec![step(Step::Get(GetOp { key: "a".into() }))],
        };
        let (r, _) = run(&data, 11, &t);
        assert!(r.is_ok() && !r.succeeded);
        assert_eq!(r.results[0].key, "a");
        assert_eq!(r.results[0].version, 1);
    }

    #[test]
    fn strict_integers() {
        assert_eq!(parse_int(b"42"), Some(42));
        assert_eq!(parse_int(b"-7"), Some(-7));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1.0",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }
}
