//! A builder for multi-key transactions (`POST /v1/txn`).

use serde_json::{json, Value};

use crate::error::Error;
use crate::Client;

/// What a compare looks at, and with which operand.
#[derive(Clone, Debug)]
enum Target {
    Value(String),
    Version(u64),
    Int(i64),
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
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

impl Cmp {
    fn as_str(self) -> &'static str {
        match self {
            Cmp::Eq => "==",
            Cmp::Ne => "!=",
            Cmp::Lt => "<",
            Cmp::Le => "<=",
            Cmp::Gt => ">",
            Cmp::Ge => ">=",
        }
    }
}

/// One condition of a transaction.
#[derive(Clone, Debug)]
pub struct Compare {
    key: String,
    cmp: Cmp,
    target: Target,
}

impl Compare {
    /// Compares the key's value bytes (an absent key only satisfies `!=`).
    pub fn value(key: impl Into<String>, cmp: Cmp, value: impl Into<String>) -> Self {
        Compare {
            key: key.into(),
            cmp,
            target: Target::Value(value.into()),
        }
    }

    /// Compares the key's version (0 when absent).
    pub fn version(key: impl Into<String>, cmp: Cmp, version: u64) -> Self {
        Compare {
            key: key.into(),
            cmp,
            target: Target::Version(version),
        }
    }

    /// Compares the key's value as a decimal integer (0 when absent).
    pub fn int(key: impl Into<String>, cmp: Cmp, value: i64) -> Self {
        Compare {
            key: key.into(),
            cmp,
            target: Target::Int(value),
        }
    }

    fn to_json(&self) -> Value {
        let (target, value) = match &self.target {
            Target::Value(v) => ("value", json!(v)),
            Target::Version(v) => ("version", json!(v)),
            Target::Int(v) => ("int", json!(v)),
        };
        json!({"key": self.key, "target": target, "op": self.cmp.as_str(), "value": value})
    }
}

/// One step of a transaction branch.
#[derive(Clone, Debug)]
pub enum Op {
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
    /// Add to a decimal integer, within optional bounds (out of bounds aborts the transaction).
    Add {
        /// The key.
        key: String,
        /// The amount.
        delta: i64,
        /// Lowest allowed result.
        min: Option<i64>,
        /// Highest allowed result.
        max: Option<i64>,
    },
}

impl Op {
    /// A put step.
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Op {
        Op::Put {
            key: key.into(),
            value: value.into(),
        }
    }
    /// A delete step.
    pub fn delete(key: impl Into<String>) -> Op {
        Op::Delete { key: key.into() }
    }
    /// A get step.
    pub fn get(key: impl Into<String>) -> Op {
        Op::Get { key: key.into() }
    }
    /// An add step without bounds.
    pub fn add(key: impl Into<String>, delta: i64) -> Op {
        Op::Add {
            key: key.into(),
            delta,
            min: None,
            max: None,
        }
    }
    /// An add step that aborts the transaction if the result leaves `[min, max]`.
    pub fn add_bounded(
        key: impl Into<String>,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Op {
        Op::Add {
            key: key.into(),
            delta,
            min,
            max,
        }
    }

    fn is_get(&self) -> bool {
        matches!(self, Op::Get { .. })
    }

    fn to_json(&self) -> Value {
        match self {
            Op::Put { key, value } => json!({"op": "put", "key": key, "value": value}),
            Op::Delete { key } => json!({"op": "delete", "key": key}),
            Op::Get { key } => json!({"op": "get", "key": key}),
            Op::Add {
                key,
                delta,
                min,
                max,
            } => {
                let mut v = json!({"op": "add", "key": key, "delta": delta});
                if let Some(m) = min {
                    v["min"] = json!(m);
                }
                if let Some(m) = max {
                    v["max"] = json!(m);
                }
                v
            }
        }
    }
}

/// The outcome of one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpResult {
    /// A put: the key's new version.
    Put {
        /// The key.
        key: String,
        /// New version.
        version: u64,
    },
    /// A delete: whether the key existed.
    Delete {
        /// The key.
        key: String,
        /// Whether it existed.
        deleted: bool,
    },
    /// A get: the value, if the key exists.
    Get {
        /// The key.
        key: String,
        /// The value (UTF-8) and version, when found.
        value: Option<(String, u64)>,
    },
    /// An add: the new value.
    Add {
        /// The key.
        key: String,
        /// New value.
        value: i64,
    },
}

/// The outcome of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every compare held (the success branch ran).
    pub succeeded: bool,
    /// One result per step of the branch that ran.
    pub results: Vec<OpResult>,
    /// The log index (or, for read-only transactions, the applied index read from).
    pub index: u64,
}

impl TxnResult {
    /// The integer value read by the `n`th step (a get of an integer, or an add).
    pub fn int(&self, n: usize) -> Option<i64> {
        match self.results.get(n)? {
            OpResult::Get {
                value: Some((v, _)),
                ..
            } => v.parse().ok(),
            OpResult::Add { value, .. } => Some(*value),
            _ => None,
        }
    }
}

/// Builds and commits a transaction: `client.txn().when(..).then(..).otherwise(..).commit()`.
#[derive(Clone, Debug)]
pub struct TxnBuilder<'a> {
    client: &'a Client,
    compare: Vec<Compare>,
    success: Vec<Op>,
    failure: Vec<Op>,
}

impl<'a> TxnBuilder<'a> {
    pub(crate) fn new(client: &'a Client) -> Self {
        TxnBuilder {
            client,
            compare: Vec::new(),
            success: Vec::new(),
            failure: Vec::new(),
        }
    }

    /// Adds a condition (all must hold for the success branch).
    pub fn when(mut self, c: Compare) -> Self {
        self.compare.push(c);
        self
    }

    /// Adds a step to the success branch.
    pub fn then(mut self, op: Op) -> Self {
        self.success.push(op);
        self
    }

    /// Adds a step to the failure branch.
    pub fn otherwise(mut self, op: Op) -> Self {
        self.failure.push(op);
        self
    }

    /// Whether the transaction only reads (then it is served like a read, without the log).
    pub fn is_read_only(&self) -> bool {
        self.success
            .iter()
            .chain(self.failure.iter())
            .all(Op::is_get)
    }

    pub(crate) fn body(&self) -> Value {
        json!({
            "compare": self.compare.iter().map(Compare::to_json).collect::<Vec<_>>(),
            "success": self.success.iter().map(Op::to_json).collect::<Vec<_>>(),
            "failure": self.failure.iter().map(Op::to_json).collect::<Vec<_>>(),
        })
    }

    /// Sends the transaction (retried safely under one idempotency key if it writes).
    pub async fn commit(self) -> Result<TxnResult, Error> {
        let client = self.client;
        client.commit_txn(self).await
    }
}

/// Parses the server's transaction answer.
pub(crate) fn parse_txn_result(v: &Value) -> Result<TxnResult, Error> {
    let bad = || Error::Unexpected(format!("malformed transaction answer: {v}"));
    let mut results = Vec::new();
    for r in v["results"].as_array().ok_or_else(bad)? {
        let key = r["key"].as_str().ok_or_else(bad)?.to_string();
        let res = match r["op"].as_str() {
            Some("put") => OpResult::Put {
                key,
                version: r["version"].as_u64().unwrap_or(0),
            },
            Some("delete") => OpResult::Delete {
                key,
                deleted: r["deleted"].as_bool().unwrap_or(false),
            },
            Some("get") => OpResult::Get {
                key,
                value: if r["found"].as_bool().unwrap_or(false) {
                    Some((
                        r["value"].as_str().unwrap_or_default().to_string(),
                        r["version"].as_u64().unwrap_or(0),
                    ))
                } else {
                    None
                },
            },
            Some("add") => OpResult::Add {
                key,
                value: r["value"].as_i64().ok_or_else(bad)?,
            },
            _ => return Err(bad()),
        };
        results.push(res);
    }
    Ok(TxnResult {
        succeeded: v["succeeded"].as_bool().ok_or_else(bad)?,
        results,
        index: v["index"].as_u64().ok_or_else(bad)?,
    })
}
