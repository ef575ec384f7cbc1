//! # keel-api
//!
//! The vocabulary of keel's HTTP API, defined once and shared by the server (`keel-server`),
//! which produces it, and the client (`keel-client`), which consumes it. Nothing here does I/O:
//! these are the names, numbers and JSON shapes that both sides must agree on.
//!
//! # Layout
//! - [`mode`]: when a write is acknowledged ([`WriteMode`], [`AckPoint`]) and how fresh a read
//!   must be ([`ReadConsistency`]).
//! - [`error`]: every error code an answer can carry ([`ErrorCode`]), its HTTP status, and the
//!   JSON error body ([`ErrorBody`]).
//! - [`kv`]: the bodies of the key-value endpoints (put, delete, add, list).
//! - [`txn`]: the body of `POST /v1/txn` and its answer.
//! - [`coord`]: leases and locks with fencing tokens (SPEC §8).
//! - [`cluster`]: status, membership, leader transfer, backup, health and readiness.
//! - [`headers`], [`limits`], [`params`]: header names, size limits and query parameters.
//!
//! The full contract, with the choices made where it could go either way, is docs/api.md.

#![warn(missing_docs)]

pub mod cluster;
pub mod coord;
pub mod error;
pub mod kv;
pub mod mode;
pub mod txn;
pub mod watch;

pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use mode::{AckPoint, ReadConsistency, WriteMode};

/// Header names (lower case, as HTTP/1.1 compares them case-insensitively).
pub mod headers {
    /// The id of the node that answered. On every response.
    pub const NODE: &str = "x-keel-node";
    /// The leader the answering node knows, when it knows one. On every response.
    pub const LEADER: &str = "x-keel-leader";
    /// For a read, the applied index the answer reflects; for a write, its log index; otherwise
    /// the node's applied index. On every response.
    pub const INDEX: &str = "x-keel-index";
    /// Set by a client on a write so that a retry is applied at most once.
    pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
    /// `true` when a write's answer is the stored outcome of an earlier request with the same
    /// idempotency key.
    pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";
}

/// Size limits the server enforces (and a client may check before sending).
pub mod limits {
    /// Longest key, in bytes of UTF-8.
    pub const MAX_KEY_BYTES: usize = 4096;
    /// Largest JSON body of an `add` and of the administrative endpoints.
    pub const MAX_SMALL_BODY_BYTES: usize = 64 * 1024;
    /// Largest JSON body of a transaction.
    pub const MAX_TXN_BODY_BYTES: usize = 4 * 1024 * 1024;
    /// Most compares, and most steps per branch, in one transaction.
    pub const MAX_TXN_OPS: usize = 128;
    /// Most bytes of values a transaction's gets may return together (more: 400
    /// `txn_too_large`, nothing written): one value of the largest size a server may allow. Its
    /// answer travels between nodes in one frame. Applied by the state machine: changing it
    /// changes apply semantics (raise the server's `APPLY_VERSION`).
    pub const MAX_TXN_RESULT_BYTES: usize = 32 * 1024 * 1024;
    /// A page of a list takes no further key once its values (as stored) reach this many bytes:
    /// it holds at least one key, and at most this plus one value; `more` says more follow.
    pub const MAX_LIST_PAGE_BYTES: usize = 16 * 1024 * 1024;
    /// Longest `Idempotency-Key`.
    pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
    /// Default page of a list.
    pub const DEFAULT_LIST_LIMIT: usize = 1000;
    /// Largest page of a list.
    pub const MAX_LIST_LIMIT: usize = 10_000;
    /// Largest value a server accepts by default (`--max-value-bytes`).
    pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
}

/// Query parameter names.
pub mod params {
    /// Write mode of a write: `async`, `semi` or `sync`.
    pub const MODE: &str = "mode";
    /// Consistency of a read: `linearizable` or `stale`.
    pub const CONSISTENCY: &str = "consistency";
    /// A stale read waits until the node has applied at least this index.
    pub const MIN_INDEX: &str = "min_index";
    /// Keys of a list start with this.
    pub const PREFIX: &str = "prefix";
    /// A list starts strictly after this key.
    pub const AFTER: &str = "after";
    /// Most keys in one page of a list.
    pub const LIMIT: &str = "limit";
    /// The lease a key is put with, or the lease releasing a lock.
    pub const LEASE: &str = "lease";
    /// A blocking lock read answers once the lock changed after this index.
    pub const WAIT_INDEX: &str = "wait_index";
    /// How long a blocking lock read may wait, in milliseconds.
    pub const WAIT_MS: &str = "wait_ms";
    /// The one key a watch follows.
    pub const KEY: &str = "key";
    /// A watch starts with the changes of this index (`Last-Event-ID` wins over it).
    pub const FROM_INDEX: &str = "from_index";
    /// How often an idle watch sends a progress event, in milliseconds.
    pub const PROGRESS_MS: &str = "progress_ms";
}
