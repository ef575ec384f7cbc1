//! Typed errors: every answer of a keel server that is not a success maps to one variant.

/// What went wrong with a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The key does not exist (404 `not_found`).
    #[error("key not found: {key}")]
    NotFound {
        /// The key.
        key: String,
    },
    /// A compare-and-set or create-only condition did not hold (412 `precondition_failed`).
    #[error("precondition failed: {message}")]
    PreconditionFailed {
        /// The server's explanation.
        message: String,
    },
    /// An `add` would leave its bounds (409 `bound_violated`).
    #[error("bound violated on {key}: current value {current}")]
    BoundViolated {
        /// The key whose bound was violated.
        key: String,
        /// Its value, unchanged.
        current: i64,
    },
    /// The lease does not exist: it expired, was revoked, or was never granted (404
    /// `lease_not_found`).
    #[error("lease not found: {message}")]
    LeaseNotFound {
        /// The server's explanation.
        message: String,
    },
    /// Nobody holds the lock (404 `lock_not_found`).
    #[error("lock {name} is not held")]
    LockNotFound {
        /// The lock.
        name: String,
        /// The index the answer reflects.
        index: u64,
    },
    /// The lock is held by another lease and was not granted in time (409 `lock_held`).
    #[error("lock held: {message}")]
    LockHeld {
        /// The server's explanation.
        message: String,
        /// The holder.
        holder: Option<Box<keel_api::coord::LockHolderInfo>>,
    },
    /// The lease releasing a lock does not hold it (412 `not_holder`).
    #[error("not the holder: {message}")]
    NotHolder {
        /// The server's explanation.
        message: String,
    },
    /// A fenced write was refused: the lock is no longer held with that fence (412
    /// `fence_rejected`); nothing was written.
    #[error("fence rejected: {message}")]
    FenceRejected {
        /// The server's explanation.
        message: String,
        /// The lock's current holder, if any.
        holder: Option<Box<keel_api::coord::LockHolderInfo>>,
    },
    /// A watch starts before the oldest change every member keeps (410 `compacted`): start
    /// again from `oldest_index` (after reading the current state), or later.
    #[error("compacted: {message}")]
    Compacted {
        /// The server's explanation.
        message: String,
        /// The oldest index a watch can start from.
        oldest_index: u64,
    },
    /// No leader is known, even after retries (503 `no_leader`).
    #[error("no leader: {message}")]
    NoLeader {
        /// The last server explanation.
        message: String,
    },
    /// The node refused the request because too many wait for its Raft thread (503
    /// `overloaded`); nothing was applied. The client retries after the node's `Retry-After`;
    /// this is what is left when every retry was refused.
    #[error("overloaded: {message}")]
    Overloaded {
        /// The server's explanation.
        message: String,
    },
    /// The request or a read's wait timed out (504 `timeout`, or no answer in time).
    #[error("timed out: {message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
    /// The write may or may not have been applied, and retries did not settle it
    /// (504 `outcome_unknown`, or the connection broke after the request was sent).
    #[error("outcome unknown: {message}")]
    OutcomeUnknown {
        /// The last server explanation.
        message: String,
    },
    /// A `sync` write is committed (durable) but not yet applied on every voter
    /// (504 `replication_timeout`).
    #[error("replication timeout: committed at index {index} but not yet on every member")]
    ReplicationTimeout {
        /// The write's log index.
        index: u64,
    },
    /// The request was refused as invalid (400/405/413/422), with the server's code.
    #[error("bad request ({code}): {message}")]
    BadRequest {
        /// The server's error code (`invalid_key`, `not_integer`, `payload_too_large`, ...).
        code: String,
        /// The server's explanation.
        message: String,
    },
    /// The client was given no endpoint, or none it could parse.
    #[error("invalid endpoint: {0}")]
    InvalidEndpoint(String),
    /// The token cannot be sent in an HTTP header (it must be visible ASCII).
    #[error("invalid token: {0}")]
    InvalidToken(String),
    /// A node refused this client's TLS session (its certificate: missing, or from another
    /// CA); the request was not read. Not retried: the client's settings must change.
    #[error("{0}")]
    TlsRefused(String),
    /// Anything else: an unexpected status or an unreadable answer.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

impl Error {
    /// Whether the error says the operation certainly had no effect.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self,
            Error::NotFound { .. }
                | Error::LeaseNotFound { .. }
                | Error::LockNotFound { .. }
                | Error::LockHeld { .. }
                | Error::NotHolder { .. }
                | Error::FenceRejected { .. }
                | Error::PreconditionFailed { .. }
                | Error::BoundViolated { .. }
                | Error::NoLeader { .. }
                | Error::Overloaded { .. }
                | Error::BadRequest { .. }
                | Error::InvalidEndpoint(_)
                | Error::InvalidToken(_)
                | Error::TlsRefused(_)
        )
    }
}
