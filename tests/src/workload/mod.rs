//! Workload clients of the fault suite. Each runs in its own thread, records every operation in
//! the [`History`], and talks to one node at a time (client i starts on slot i mod n, like
//! Jepsen's clients). Register clients stay on their node; bank clients move to the next node
//! after a transport error, as a real client fails over; set clients retry an add of unknown
//! outcome through the next nodes. Clients reach the nodes through the cluster's client proxies, so that the nemesis can
//! cut them off from a node. The slots are shared with the nemesis: when a membership change
//! removes a node, its slot goes to the node that replaced it.
//!
//! - `register.rs`: single-key registers, read every way keel can read (linearizable `GET`,
//!   read-only transaction, list, `stale`, session `stale&min_index`), written by unique puts
//!   and compare-and-sets;
//! - `bank.rs`: transfers between accounts and reads of all of them in one transaction, and the
//!   set of unique adds (blind puts, and counted transactions under an `Idempotency-Key`);
//! - `append.rs`: Elle's list-append transactions over a few keys (read two or three lists, or
//!   append to two under a compare of the versions read).
//!
//! No answer is dropped: a status keel should never give to these requests (400, 500, a 422
//! for a retried key), or a 200 whose body is not what the API says, is recorded as
//! *unexpected* and fails the run.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde_json::Value;

use crate::history::Outcome;
use crate::http::Http;

pub mod append;
pub mod bank;
pub mod register;

pub use append::{append_client, append_key, decode as decode_list, APPEND_KEYS};
pub use bank::{bank_client, is_counted, parse_balances, read_all_body, set_client};
pub use register::{register_client, Role};

/// The nodes clients talk to: (node id, client address), one per slot.
pub type Targets = Arc<RwLock<Vec<(u64, String)>>>;

/// Per-request timeout of the readers ([`WorkloadCfg::reader_timeout`] says why).
pub const READER_TIMEOUT: Duration = Duration::from_millis(400);

/// Settings shared by the workload clients.
#[derive(Clone)]
pub struct WorkloadCfg {
    /// The clients' targets.
    pub targets: Targets,
    /// Write modes, used in turn.
    pub modes: Vec<&'static str>,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Per-request timeout of the set clients whose number is odd (short, so that adds time out
    /// after being applied and are retried under their key).
    pub short_timeout: Duration,
    /// Per-request timeout of the register clients that only read ([`Role::Reader`]): shorter
    /// than the shortest election (1 s) less a round trip of the slowest link delay (2 × 250
    /// ms), so that when a new leader takes over, the read it finds waiting was sent after the
    /// old leader's last acknowledged writes (a waiting read sent before them proves nothing
    /// when it is answered from the new leader's lagging commit index).
    pub reader_timeout: Duration,
    /// Pause between a client's operations (a rate limit, as Jepsen's `stagger`).
    pub pace: Duration,
    /// Registers of the register workload.
    pub keys: usize,
    /// Accounts of the bank workload.
    pub accounts: usize,
    /// Opening balance of each account.
    pub opening: i64,
}

impl WorkloadCfg {
    /// The node and address of slot `i` (modulo the slots).
    pub fn target(&self, i: usize) -> (u64, String) {
        let t = self.targets.read().unwrap_or_else(|p| p.into_inner());
        t[i % t.len()].clone()
    }
}

/// What an HTTP attempt came to.
pub struct Reply {
    /// The outcome class.
    pub outcome: Outcome,
    /// The status (0 for a transport error).
    pub status: u16,
    /// The body as JSON (Null if none or not JSON).
    pub body: Value,
    /// `X-Keel-Index`, when the answer had one.
    pub index: Option<u64>,
    /// `ETag` as a number (a value's version), when the answer had one.
    pub etag: Option<u64>,
    /// A short description.
    pub detail: String,
    /// Set when keel answered something it never should to this request.
    pub unexpected: Option<String>,
}

impl Reply {
    /// Whether the node could not be reached at all (the client should fail over).
    pub fn transport_error(&self) -> bool {
        self.status == 0
    }
}

/// Sends a request to `addr` and classifies the answer. `allowed` lists the statuses other than
/// 2xx, 503 and 504 that this request may get (404 for a read, 409 for a bounded add).
pub fn send(
    http: &Http,
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    allowed: &[u16],
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
                index: None,
                etag: None,
                detail: format!("transport: {e}"),
                unexpected: None,
            };
        }
    };
    let status = resp.status;
    let index = resp.header_u64("x-keel-index");
    let etag = resp
        .headers
        .get("etag")
        .and_then(|t| t.trim_matches('"').parse().ok());
    let text = resp.text();
    let json: Option<Value> = serde_json::from_str(&text).ok();
    let code = json
        .as_ref()
        .and_then(|j| j["error"]["code"].as_str().map(str::to_string));
    let outcome = match status {
        200..=299 | 404 => Outcome::Ok,
        // 503: nothing was applied. 4xx: refused.
        400..=499 | 503 => Outcome::Fail,
        // 504 outcome_unknown / replication_timeout (committed) / timeout; 500.
        _ => Outcome::Unknown,
    };
    let detail = match &code {
        Some(code) => format!("{status} {code}"),
        None => status.to_string(),
    };
    // A 503 or 504 must say why, with one of the codes the API gives them.
    let known = |codes: &[&str]| code.as_deref().is_some_and(|c| codes.contains(&c));
    let unexpected = match status {
        200..=299 => None,
        503 if known(&[
            "no_leader",
            "not_applied",
            "shutting_down",
            "not_ready",
            "membership_change_pending",
        ]) =>
        {
            None
        }
        504 if known(&["outcome_unknown", "replication_timeout", "timeout"]) => None,
        s if allowed.contains(&s) && s != 503 && s != 504 => None,
        _ => Some(format!(
            "{method} {path}: {status} {}",
            text.chars().take(200).collect::<String>()
        )),
    };
    Reply {
        outcome,
        status,
        body: json.unwrap_or(Value::String(text)),
        index,
        etag,
        detail,
        unexpected,
    }
}

/// The HTTP client of one workload client.
pub fn client_http(timeout: Duration) -> Http {
    Http::new(Duration::from_millis(500), timeout)
}

/// A number in a JSON value that is a number or a decimal string.
pub fn as_int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}
