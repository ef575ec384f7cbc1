//! The body of `POST /v1/txn` and its answer: an etcd-style transaction. If every compare holds,
//! the `success` steps run, else the `failure` steps; all in one log entry, atomically.
//!
//! The compare's `target` and `op` are strings on the wire so that the server can tell an unknown
//! operator (`invalid_txn`) from JSON that does not parse (`invalid_json`); [`CompareTarget`] and
//! [`CompareOp`] name the valid ones.

use serde::{Deserialize, Serialize};

use crate::kv::JsonValue;
use crate::mode::AckPoint;

/// Body of `POST /v1/txn`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnRequest {
    /// Conditions, all of which must hold for `success` to run.
    #[serde(default)]
    pub compare: Vec<CompareJson>,
    /// Steps run when every compare holds.
    #[serde(default)]
    pub success: Vec<StepJson>,
    /// Steps run otherwise.
    #[serde(default)]
    pub failure: Vec<StepJson>,
}

impl TxnRequest {
    /// Whether the transaction only reads (compares and gets): served like a read, without the
    /// log, unless it carries an idempotency key.
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(self.failure.iter())
            .all(|s| matches!(s, StepJson::Get { .. }))
    }
}

/// One condition.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareJson {
    /// The key.
    pub key: String,
    /// What to compare: `value`, `version` or `int` ([`CompareTarget`]).
    pub target: String,
    /// How: `==`, `!=`, `<`, `<=`, `>`, `>=` ([`CompareOp`]).
    pub op: String,
    /// The operand: a string for `value`, a non-negative integer for `version`, an integer for
    /// `int`.
    pub value: serde_json::Value,
}

impl CompareJson {
    /// Compares the key's value bytes (an absent key satisfies only `!=`).
    pub fn value(key: impl Into<String>, op: CompareOp, value: impl Into<String>) -> Self {
        Self::with(
            key,
            CompareTarget::Value,
            op,
            serde_json::Value::String(value.into()),
        )
    }

    /// Compares the key's version (0 when absent).
    pub fn version(key: impl Into<String>, op: CompareOp, version: u64) -> Self {
        Self::with(key, CompareTarget::Version, op, version.into())
    }

    /// Compares the key's value as a decimal integer (0 when absent).
    pub fn int(key: impl Into<String>, op: CompareOp, value: i64) -> Self {
        Self::with(key, CompareTarget::Int, op, value.into())
    }

    fn with(
        key: impl Into<String>,
        target: CompareTarget,
        op: CompareOp,
        value: serde_json::Value,
    ) -> Self {
        CompareJson {
            key: key.into(),
            target: target.as_str().into(),
            op: op.as_str().into(),
            value,
        }
    }
}

/// What a compare looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareTarget {
    /// The value bytes (an absent key satisfies only `!=`).
    Value,
    /// The version (0 when absent).
    Version,
    /// The value as a decimal integer (0 when absent).
    Int,
}

impl CompareTarget {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareTarget::Value => "value",
            CompareTarget::Version => "version",
            CompareTarget::Int => "int",
        }
    }

    /// From the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            CompareTarget::Value,
            CompareTarget::Version,
            CompareTarget::Int,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompareOp {
    /// `==`
    Eq,
    /// `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

impl CompareOp {
    /// The wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "==",
            CompareOp::Ne => "!=",
            CompareOp::Lt => "<",
            CompareOp::Le => "<=",
            CompareOp::Gt => ">",
            CompareOp::Ge => ">=",
        }
    }

    /// From the wire form.
    pub fn parse(s: &str) -> Option<Self> {
        use CompareOp::*;
        [Eq, Ne, Lt, Le, Gt, Ge]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// One step of a branch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum StepJson {
    /// Set a key to a UTF-8 value.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove a key.
    Delete {
        /// The key.
        key: String,
    },
    /// Read a key.
    Get {
        /// The key.
        key: String,
    },
    /// Add to a decimal integer; out of `[min, max]` aborts the whole transaction.
    Add {
        /// The key.
        key: String,
        /// The amount.
        delta: i64,
        /// Lowest allowed result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min: Option<i64>,
        /// Highest allowed result.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max: Option<i64>,
    },
}

impl StepJson {
    /// A put step.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Self {
        StepJson::Put {
            key: key.into(),
            value: value.into(),
        }
    }

    /// A delete step.
    pub fn delete(key: impl Into<String>) -> Self {
        StepJson::Delete { key: key.into() }
    }

    /// A get step.
    pub fn get(key: impl Into<String>) -> Self {
        StepJson::Get { key: key.into() }
    }

    /// An add step without bounds.
    pub fn add(key: impl Into<String>, delta: i64) -> Self {
        Self::add_bounded(key, delta, None, None)
    }

    /// An add step that aborts the transaction if the result leaves `[min, max]`.
    pub fn add_bounded(
        key: impl Into<String>,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Self {
        StepJson::Add {
            key: key.into(),
            delta,
            min,
            max,
        }
    }

    /// The key the step is about.
    pub fn key(&self) -> &str {
        match self {
            StepJson::Put { key, .. }
            | StepJson::Delete { key }
            | StepJson::Get { key }
            | StepJson::Add { key, .. } => key,
        }
    }
}

/// Answer to a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// One result per step of the branch that ran.
    pub results: Vec<StepResultJson>,
    /// The write's log index, or for a read-only transaction the applied index it read at.
    pub index: u64,
    /// Where the write was acknowledged (absent for read-only transactions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked: Option<AckPoint>,
}

impl TxnResponse {
    /// The integer value read or made by the `n`th step (a get of an integer, or an add).
    pub fn int(&self, n: usize) -> Option<i64> {
        self.results.get(n)?.int()
    }
}

/// The outcome of one step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum StepResultJson {
    /// A put: the key's new version.
    Put {
        /// The key.
        key: String,
        /// Its new version.
        version: u64,
    },
    /// A delete: whether the key existed.
    Delete {
        /// The key.
        key: String,
        /// Whether it existed.
        deleted: bool,
    },
    /// A get: the value and version, if the key exists.
    Get {
        /// The key.
        key: String,
        /// Whether it exists.
        found: bool,
        /// Its value and version, when found.
        #[serde(flatten)]
        item: Option<FoundValue>,
    },
    /// An add: the new value and version.
    Add {
        /// The key.
        key: String,
        /// The new value.
        value: i64,
        /// The key's new version.
        version: u64,
    },
}

impl StepResultJson {
    /// The key the step was about.
    pub fn key(&self) -> &str {
        match self {
            StepResultJson::Put { key, .. }
            | StepResultJson::Delete { key, .. }
            | StepResultJson::Get { key, .. }
            | StepResultJson::Add { key, .. } => key,
        }
    }

    /// For a get, the value's bytes when found (None otherwise).
    pub fn found_value(&self) -> Option<Vec<u8>> {
        match self {
            StepResultJson::Get { item: Some(f), .. } => f.value.to_bytes(),
            _ => None,
        }
    }

    /// The integer of a get of a decimal integer, or an add's new value.
    pub fn int(&self) -> Option<i64> {
        match self {
            StepResultJson::Add { value, .. } => Some(*value),
            StepResultJson::Get { item: Some(f), .. } => f.value.value.as_deref()?.parse().ok(),
            _ => None,
        }
    }
}

/// What a get step found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FoundValue {
    /// The value.
    #[serde(flatten)]
    pub value: JsonValue,
    /// The key's version.
    pub version: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_and_results_have_the_documented_shapes() {
        let req: TxnRequest = serde_json::from_value(json!({
            "compare": [{"key": "a", "target": "int", "op": ">=", "value": 30}],
            "success": [{"op": "add", "key": "a", "delta": -30, "min": 0},
                        {"op": "put", "key": "b", "value": "x"}],
            "failure": [{"op": "get", "key": "a"}]
        }))
        .expect("parse");
        assert!(!req.is_read_only());
        assert_eq!(CompareOp::parse(&req.compare[0].op), Some(CompareOp::Ge));
        assert_eq!(
            CompareTarget::parse(&req.compare[0].target),
            Some(CompareTarget::Int)
        );
        assert!(serde_json::from_value::<TxnRequest>(json!({"succes": []})).is_err());
        assert!(serde_json::from_value::<TxnRequest>(
            json!({"success": [{"op": "frob", "key": "a"}]})
        )
        .is_err());

        let results = vec![
            StepResultJson::Get {
                key: "a".into(),
                found: true,
                item: Some(FoundValue {
                    value: JsonValue::from_bytes(b"70"),
                    version: 5,
                }),
            },
            StepResultJson::Get {
                key: "z".into(),
                found: false,
                item: None,
            },
            StepResultJson::Add {
                key: "b".into(),
                value: 30,
                version: 6,
            },
        ];
        let v = serde_json::to_value(&results).expect("serialize");
        assert_eq!(
            v,
            json!([
                {"op": "get", "key": "a", "found": true, "value": "70", "version": 5},
                {"op": "get", "key": "z", "found": false},
                {"op": "add", "key": "b", "value": 30, "version": 6}
            ])
        );
        let back: Vec<StepResultJson> = serde_json::from_value(v).expect("parse");
        assert_eq!(back, results);
    }
}
