//! Operation histories: every operation a workload client performs, with its invocation and
//! completion times and its outcome, written as JSON lines (one object per operation).

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Completed successfully (for reads: with a value).
    Ok,
    /// Certainly had no effect (503, connection refused, a 4xx refusal).
    Fail,
    /// May or may not have taken effect (timeout, connection lost, 504).
    Unknown,
}

/// One operation.
#[derive(Clone, Debug, Serialize)]
pub struct OpRecord {
    /// Client thread number.
    pub client: usize,
    /// Node the request was sent to.
    pub node: u64,
    /// `register`, `bank` or `set`.
    pub workload: &'static str,
    /// What was done: `read`, `txn_read`, `list`, `stale_read`, `session_read`, `write`,
    /// `cas`, `transfer`, `read_all`, `add`.
    pub f: &'static str,
    /// The key (register) or element (set), if any.
    pub key: String,
    /// Inputs.
    pub input: Value,
    /// Outputs (read values, cas result, balances).
    pub output: Value,
    /// Write mode used.
    pub mode: &'static str,
    /// Invocation, nanoseconds since the run started.
    pub invoke_ns: u64,
    /// Completion, nanoseconds since the run started.
    pub complete_ns: u64,
    /// Outcome.
    pub outcome: Outcome,
    /// Status code or transport error, for reading the history.
    pub detail: String,
    /// For a read, the index it was read at (`X-Keel-Index`, or the body's `index`); for a
    /// write, its log index.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Set when keel answered what it never should (an unexpected status or body).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexpected: Option<String>,
}

/// A shared, append-only history with one time base.
#[derive(Clone)]
pub struct History {
    start: Instant,
    ops: Arc<Mutex<Vec<OpRecord>>>,
}

impl History {
    /// A new, empty history starting now.
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            ops: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Nanoseconds since the start.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Time since the start.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Appends an operation.
    pub fn push(&self, op: OpRecord) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// A copy of every operation so far.
    pub fn snapshot(&self) -> Vec<OpRecord> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Writes the history as JSON lines.
    pub fn write_jsonl(&self, path: &Path) -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
        for op in self.snapshot() {
            serde_json::to_writer(&mut f, &op)?;
            f.write_all(b"\n")?;
        }
        f.flush()
    }
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}
