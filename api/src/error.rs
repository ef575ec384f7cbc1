//! Error codes and the JSON error body.
//!
//! Every error answer is `{"error": {"code": "...", "message": "..."}}`, plus, where they help,
//! top-level fields: `index` (the log index a rejected write took, or the index a `sync` write
//! committed at), `committed`, `key` and `value` (the key an `add` bound is about, and its current
//! value). A code always comes with the same HTTP status ([`ErrorCode::status`]).
//!
//! The codes of deterministic rejections (`precondition_failed`, `bound_violated`, `not_integer`,
//! `invalid_command`, `idempotency_key_reused`, `lease_not_found`, `not_holder`,
//! `fence_rejected`) are also stored in the state machine's memory of
//! idempotent requests: they are part of the on-disk format and never change spelling.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Every error code an answer can carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// 400: a key is empty, longer than the limit, or not UTF-8.
    InvalidKey,
    /// 400: `?mode=` is not `async`, `semi` or `sync`.
    InvalidMode,
    /// 400: `?consistency=` is not `linearizable` or `stale`.
    InvalidConsistency,
    /// 400: an unknown query parameter, or a known one with a bad value.
    InvalidParameter,
    /// 400: a JSON body does not parse or has unknown fields.
    InvalidJson,
    /// 400: a transaction parses but is not valid (unknown compare operator or target).
    InvalidTxn,
    /// 400: a transaction has more compares or steps than allowed.
    TxnTooLarge,
    /// 400: a header (precondition, idempotency key, content length) is malformed.
    InvalidHeader,
    /// 400: the body could not be read.
    InvalidBody,
    /// 400: plain HTTP sent to a port that speaks TLS (use https).
    TlsRequired,
    /// 400: an `add` or an `int` compare met a value that is not a decimal integer.
    NotInteger,
    /// 400: a command was refused by the state machine as malformed.
    InvalidCommand,
    /// 400: a member id or address is not valid.
    InvalidMember,
    /// 400: a backup directory is not a new directory under the node's `--backup-dir`.
    InvalidDir,
    /// 401: no bearer token, or one the node does not know (the answer carries
    /// `WWW-Authenticate: Bearer`).
    Unauthorized,
    /// 403: the token's role or key prefixes do not cover the request; or backups are not
    /// enabled on this node (no `--backup-dir`).
    Forbidden,
    /// 404: no such key.
    NotFound,
    /// 404: no such endpoint.
    NoRoute,
    /// 404: no such member.
    NoSuchMember,
    /// 404: the lease does not exist (expired, revoked, or never granted).
    LeaseNotFound,
    /// 404: nobody holds the lock.
    LockNotFound,
    /// 405: the endpoint exists but not with this method (the answer carries `Allow`).
    MethodNotAllowed,
    /// 410: a watch starts before the oldest change the node keeps (the answer carries
    /// `oldest_index`, the first index a watch can start from).
    Compacted,
    /// 409: an `add` would leave its bounds.
    BoundViolated,
    /// 409: a member with this id exists.
    MemberExists,
    /// 409: only a learner can be promoted.
    NotALearner,
    /// 409: the learner is too far behind to be promoted.
    LearnerBehind,
    /// 409: the leader cannot remove itself (transfer leadership first).
    IsLeader,
    /// 409: leadership can only go to a voter.
    NotAVoter,
    /// 409: there is no other voter to hand leadership to.
    NoSuccessor,
    /// 409: the lock is held by another lease (the answer carries the `holder`).
    LockHeld,
    /// 412: `If-Match` / `If-None-Match` did not hold.
    PreconditionFailed,
    /// 412: the lock is not held by the lease that tries to release it.
    NotHolder,
    /// 412: `If-Fence` names a fence that is not the lock's current one (the answer carries the
    /// current `holder`, if any).
    FenceRejected,
    /// 413: a body or value is larger than allowed.
    PayloadTooLarge,
    /// 422: an idempotency key was used before for a different request.
    IdempotencyKeyReused,
    /// 500: the node's storage failed.
    Storage,
    /// 500: an internal error.
    Internal,
    /// 503: no leader is known; nothing was applied.
    NoLeader,
    /// 503: the write lost its place in the log to a leader change; nothing was applied.
    NotApplied,
    /// 503: the node is stopping; nothing was applied.
    ShuttingDown,
    /// 503: the node is not ready (no leader, or not caught up).
    NotReady,
    /// 503: another membership change is not applied yet; nothing was proposed.
    MembershipChangePending,
    /// 503: the node has too many requests waiting; nothing was proposed.
    Overloaded,
    /// 504: leadership was lost while the write was in flight: it may or may not be applied.
    OutcomeUnknown,
    /// 504: a `sync` write is committed but not yet applied on every voter.
    ReplicationTimeout,
    /// 504: a read (or an administrative wait) took too long.
    Timeout,
}

/// Every code, for tables and tests.
pub const ALL_CODES: [ErrorCode; 47] = [
    ErrorCode::InvalidKey,
    ErrorCode::InvalidMode,
    ErrorCode::InvalidConsistency,
    ErrorCode::InvalidParameter,
    ErrorCode::InvalidJson,
    ErrorCode::InvalidTxn,
    ErrorCode::TxnTooLarge,
    ErrorCode::InvalidHeader,
    ErrorCode::InvalidBody,
    ErrorCode::TlsRequired,
    ErrorCode::NotInteger,
    ErrorCode::InvalidCommand,
    ErrorCode::InvalidMember,
    ErrorCode::InvalidDir,
    ErrorCode::Unauthorized,
    ErrorCode::Forbidden,
    ErrorCode::NotFound,
    ErrorCode::NoRoute,
    ErrorCode::NoSuchMember,
    ErrorCode::LeaseNotFound,
    ErrorCode::LockNotFound,
    ErrorCode::Compacted,
    ErrorCode::MethodNotAllowed,
    ErrorCode::BoundViolated,
    ErrorCode::MemberExists,
    ErrorCode::NotALearner,
    ErrorCode::LearnerBehind,
    ErrorCode::IsLeader,
    ErrorCode::NotAVoter,
    ErrorCode::NoSuccessor,
    ErrorCode::LockHeld,
    ErrorCode::PreconditionFailed,
    ErrorCode::NotHolder,
    ErrorCode::FenceRejected,
    ErrorCode::PayloadTooLarge,
    ErrorCode::IdempotencyKeyReused,
    ErrorCode::Storage,
    ErrorCode::Internal,
    ErrorCode::NoLeader,
    ErrorCode::NotApplied,
    ErrorCode::ShuttingDown,
    ErrorCode::NotReady,
    ErrorCode::MembershipChangePending,
    ErrorCode::Overloaded,
    ErrorCode::OutcomeUnknown,
    ErrorCode::ReplicationTimeout,
    ErrorCode::Timeout,
];

impl ErrorCode {
    /// The code as it appears in JSON.
    pub fn as_str(self) -> &'static str {
        use ErrorCode::*;
        match self {
            InvalidKey => "invalid_key",
            InvalidMode => "invalid_mode",
            InvalidConsistency => "invalid_consistency",
            InvalidParameter => "invalid_parameter",
            InvalidJson => "invalid_json",
            InvalidTxn => "invalid_txn",
            TxnTooLarge => "txn_too_large",
            InvalidHeader => "invalid_header",
            TlsRequired => "tls_required",
            InvalidBody => "invalid_body",
            NotInteger => "not_integer",
            InvalidCommand => "invalid_command",
            InvalidMember => "invalid_member",
            InvalidDir => "invalid_dir",
            Unauthorized => "unauthorized",
            Forbidden => "forbidden",
            NotFound => "not_found",
            NoRoute => "no_route",
            NoSuchMember => "no_such_member",
            LeaseNotFound => "lease_not_found",
            LockNotFound => "lock_not_found",
            Compacted => "compacted",
            LockHeld => "lock_held",
            NotHolder => "not_holder",
            FenceRejected => "fence_rejected",
            MethodNotAllowed => "method_not_allowed",
            BoundViolated => "bound_violated",
            MemberExists => "member_exists",
            NotALearner => "not_a_learner",
            LearnerBehind => "learner_behind",
            IsLeader => "is_leader",
            NotAVoter => "not_a_voter",
            NoSuccessor => "no_successor",
            PreconditionFailed => "precondition_failed",
            PayloadTooLarge => "payload_too_large",
            IdempotencyKeyReused => "idempotency_key_reused",
            Storage => "storage",
            Internal => "internal",
            NoLeader => "no_leader",
            NotApplied => "not_applied",
            ShuttingDown => "shutting_down",
            NotReady => "not_ready",
            MembershipChangePending => "membership_change_pending",
            Overloaded => "overloaded",
            OutcomeUnknown => "outcome_unknown",
            ReplicationTimeout => "replication_timeout",
            Timeout => "timeout",
        }
    }

    /// The code named `s`, if keel knows it.
    pub fn parse(s: &str) -> Option<ErrorCode> {
        ALL_CODES.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status that always comes with this code.
    pub fn status(self) -> u16 {
        use ErrorCode::*;
        match self {
            InvalidKey | InvalidMode | InvalidConsistency | InvalidParameter | InvalidJson
            | InvalidTxn | TxnTooLarge | InvalidHeader | InvalidBody | NotInteger
            | InvalidCommand | InvalidMember | InvalidDir | TlsRequired => 400,
            Unauthorized => 401,
            Forbidden => 403,
            NotFound | NoRoute | NoSuchMember | LeaseNotFound | LockNotFound => 404,
            MethodNotAllowed => 405,
            Compacted => 410,
            BoundViolated | MemberExists | NotALearner | LearnerBehind | IsLeader | NotAVoter
            | NoSuccessor | LockHeld => 409,
            PreconditionFailed | NotHolder | FenceRejected => 412,
            PayloadTooLarge => 413,
            IdempotencyKeyReused => 422,
            Storage | Internal => 500,
            NoLeader
            | NotApplied
            | ShuttingDown
            | NotReady
            | MembershipChangePending
            | Overloaded => 503,
            OutcomeUnknown | ReplicationTimeout | Timeout => 504,
        }
    }

    /// Whether the answer carries `Retry-After`: nothing was applied and the condition is
    /// expected to pass (a leader is elected, the node restarts).
    pub fn retry_after(self) -> bool {
        self.status() == 503
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"code", "message"}` inside an error body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// The code (a string, so that a client can read codes newer than itself).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
}

/// The JSON body of every error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Code and message.
    pub error: ErrorDetail,
    /// The log index the refused write took, or the index a `sync` write committed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// `true` on `replication_timeout`: the write is committed (durable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub committed: Option<bool>,
    /// The key a rejection is about (a transaction's failing step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// On `bound_violated`: the key's current value, unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<i64>,
    /// On `lock_held`, `not_holder` and `fence_rejected`: the lock's current holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holder: Option<crate::coord::LockHolderInfo>,
    /// On `compacted`: the oldest index a watch on this node can start from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_index: Option<u64>,
}

impl ErrorBody {
    /// A body with only a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            error: ErrorDetail {
                code: code.as_str().to_string(),
                message: message.into(),
            },
            index: None,
            committed: None,
            key: None,
            value: None,
            holder: None,
            oldest_index: None,
        }
    }

    /// The code, if keel knows it.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::parse(&self.error.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_parses_back_and_has_an_error_status() {
        for c in ALL_CODES {
            assert_eq!(ErrorCode::parse(c.as_str()), Some(c));
            assert!((400..=599).contains(&c.status()), "{c}");
        }
        let distinct: std::collections::HashSet<_> = ALL_CODES.iter().map(|c| c.as_str()).collect();
        assert_eq!(distinct.len(), ALL_CODES.len());
        assert_eq!(ErrorCode::parse("no_such_code"), None);
    }

    #[test]
    fn error_body_omits_absent_fields() {
        let body = ErrorBody::new(ErrorCode::NotFound, "no such key");
        assert_eq!(
            serde_json::to_value(&body).expect("serialize"),
            serde_json::json!({"error": {"code": "not_found", "message": "no such key"}})
        );
        let parsed: ErrorBody = serde_json::from_str(
            r#"{"error": {"code": "bound_violated", "message": "m"}, "value": 40, "key": "b", "index": 7}"#,
        )
        .expect("parse");
        assert_eq!(parsed.code(), Some(ErrorCode::BoundViolated));
        assert_eq!((parsed.value, parsed.index), (Some(40), Some(7)));
    }
}
