//! The log format: a client write as it is proposed and stored in a Raft entry ([`Command`]),
//! what it produces ([`ApplyResult`]), and what the state machine stores ([`ValueRecord`],
//! [`IdempotencyRecord`]). These encodings are on disk: tags are never reused.

use bytes::Bytes;

/// A client write, as proposed to Raft and stored in the log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// The operation.
    #[prost(oneof = "command::Op", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 20")]
    pub op: Option<command::Op>,
    /// The client's `Idempotency-Key` (empty: none). A command whose key is still remembered
    /// (see [`crate::sm::idempotency`]) is answered with the first outcome instead.
    #[prost(string, tag = "10")]
    pub idempotency_key: String,
    // Tag 11 (the proposing leader's wall clock) is retired: idempotency expiry no longer
    // trusts any wall clock.
    /// Milliseconds on the proposing leader's monotonic clock, counted from its first proposal
    /// in its term. Only ever compared with stamps of the same term (the entry's term), that is
    /// of the same leader; part of the entry, so every replica decides alike.
    #[prost(uint64, tag = "12")]
    pub leader_ms: u64,
    /// `If-Fence`: the command applies only if this lock is held now with this fence.
    #[prost(message, optional, tag = "13")]
    pub fence: Option<crate::proto::FenceCheck>,
    /// The apply semantics the proposing leader wrote it for ([`crate::sm::APPLY_VERSION`]; 0 in
    /// entries of binaries before the field). A node that knows only older semantics stops
    /// rather than apply it differently from the others.
    #[prost(uint32, tag = "14")]
    pub apply_version: u32,
}

/// Nested types of [`Command`].
pub mod command {
    /// One write operation.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Op {
        /// Set a key's value.
        #[prost(message, tag = "1")]
        Put(super::PutOp),
        /// Remove a key.
        #[prost(message, tag = "2")]
        Delete(super::DeleteOp),
        /// Atomic add on a decimal integer value.
        #[prost(message, tag = "3")]
        Add(super::AddOp),
        /// Multi-key transaction.
        #[prost(message, tag = "4")]
        Txn(super::TxnOp),
        /// Grant a lease.
        #[prost(message, tag = "5")]
        LeaseGrant(crate::proto::LeaseGrantOp),
        /// End a lease (revoked, or expired by the leader).
        #[prost(message, tag = "6")]
        LeaseRevoke(crate::proto::LeaseRevokeOp),
        /// Acquire a lock or queue for it.
        #[prost(message, tag = "7")]
        LockAcquire(crate::proto::LockAcquireOp),
        /// Release a held lock.
        #[prost(message, tag = "8")]
        LockRelease(crate::proto::LockReleaseOp),
        /// Leave a lock's queue (or learn it was granted meanwhile).
        #[prost(message, tag = "9")]
        LockCancel(crate::proto::LockReleaseOp),
        /// A keepalive or a lease lookup: answered by the leader, never logged (refused if
        /// it ever reaches the apply path).
        #[prost(message, tag = "20")]
        LeaseQuery(crate::proto::LeaseQueryOp),
    }
}

/// An etcd-style transaction: if every compare holds, run `success`, else `failure`; all in one
/// entry, atomically. An `add` out of its bounds aborts the whole transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnOp {
    /// Conditions, all of which must hold.
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    /// Steps run when every compare holds.
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<TxnStep>,
    /// Steps run otherwise.
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<TxnStep>,
}

/// What a [`Compare`] looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum CompareTarget {
    /// Not set (invalid).
    Unspecified = 0,
    /// The value bytes.
    Value = 1,
    /// The version (0 when absent).
    Version = 2,
    /// The value as a decimal integer (0 when absent).
    Int = 3,
}

/// How a [`Compare`] compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum CompareOp {
    /// Not set (invalid).
    Unspecified = 0,
    /// `==`
    Eq = 1,
    /// `!=`
    Ne = 2,
    /// `<`
    Lt = 3,
    /// `<=`
    Le = 4,
    /// `>`
    Gt = 5,
    /// `>=`
    Ge = 6,
}

/// One condition of a transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Compare {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// What to compare.
    #[prost(enumeration = "CompareTarget", tag = "2")]
    pub target: i32,
    /// How.
    #[prost(enumeration = "CompareOp", tag = "3")]
    pub op: i32,
    /// Operand for `Value`.
    #[prost(bytes = "bytes", tag = "4")]
    pub value: Bytes,
    /// Operand for `Version`.
    #[prost(uint64, tag = "5")]
    pub version: u64,
    /// Operand for `Int`.
    #[prost(sint64, tag = "6")]
    pub int: i64,
}

/// Read one key inside a transaction.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GetOp {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
}

/// One step of a transaction branch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnStep {
    /// The step.
    #[prost(oneof = "txn_step::Step", tags = "1, 2, 3, 4")]
    pub step: Option<txn_step::Step>,
}

/// Nested types of [`TxnStep`].
pub mod txn_step {
    /// A transaction step.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Step {
        /// Set a key (its precondition is ignored: compares play that role).
        #[prost(message, tag = "1")]
        Put(super::PutOp),
        /// Remove a key.
        #[prost(message, tag = "2")]
        Delete(super::DeleteOp),
        /// Read a key.
        #[prost(message, tag = "3")]
        Get(super::GetOp),
        /// Atomic add with bounds.
        #[prost(message, tag = "4")]
        Add(super::AddOp),
    }
}

/// The outcome of one transaction step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StepResult {
    /// `put`, `delete`, `get` or `add`.
    #[prost(string, tag = "1")]
    pub kind: String,
    /// The key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// For get: whether the key exists.
    #[prost(bool, tag = "3")]
    pub found: bool,
    /// For get: the value.
    #[prost(bytes = "bytes", tag = "4")]
    pub value: Bytes,
    /// The key's version after the step (get: as read).
    #[prost(uint64, tag = "5")]
    pub version: u64,
    /// For delete: whether the key existed.
    #[prost(bool, tag = "6")]
    pub deleted: bool,
    /// For add: the new value.
    #[prost(sint64, optional, tag = "7")]
    pub int: Option<i64>,
}

/// What the state machine remembers of an idempotent command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct IdempotencyRecord {
    /// Hash of the command (without key and stamp): a reused key with another request is refused.
    #[prost(fixed64, tag = "1")]
    pub fingerprint: u64,
    /// The first outcome.
    #[prost(message, optional, tag = "2")]
    pub result: Option<ApplyResult>,
    // Tag 3 (a wall-clock stamp) is retired.
    /// The term of the entry that first applied the command (0 in records of older versions).
    #[prost(uint64, tag = "4")]
    pub term: u64,
    /// That entry's `leader_ms`.
    #[prost(uint64, tag = "5")]
    pub leader_ms: u64,
    /// That entry's index.
    #[prost(uint64, tag = "6")]
    pub index: u64,
}

/// Preconditions shared by put and delete (HTTP `If-Match` / `If-None-Match: *`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Precondition {
    /// The key must exist with exactly this version.
    #[prost(uint64, optional, tag = "1")]
    pub if_version: Option<u64>,
    /// The key must not exist.
    #[prost(bool, tag = "2")]
    pub if_absent: bool,
    /// The key must exist (any version).
    #[prost(bool, tag = "3")]
    pub if_exists: bool,
}

/// Set `key` to `value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutOp {
    /// The key (UTF-8, validated by the API).
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value bytes.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// Optional compare-and-set condition.
    #[prost(message, optional, tag = "3")]
    pub precondition: Option<Precondition>,
    /// The lease the key lives with (0: none; the key is detached from any lease it had).
    #[prost(uint64, tag = "4")]
    pub lease: u64,
}

/// Remove `key`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteOp {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Optional compare-and-set condition.
    #[prost(message, optional, tag = "2")]
    pub precondition: Option<Precondition>,
}

/// Add `delta` to the decimal integer stored at `key` (absent counts as 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddOp {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The amount to add (may be negative).
    #[prost(sint64, tag = "2")]
    pub delta: i64,
    /// The result may not go below this.
    #[prost(sint64, optional, tag = "3")]
    pub min: Option<i64>,
    /// The result may not go above this.
    #[prost(sint64, optional, tag = "4")]
    pub max: Option<i64>,
}

/// A key's stored value. `version` is the log index of the write that last modified the key:
/// unique and strictly increasing per key, so compare-and-set on it is free of ABA.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueRecord {
    /// The value bytes.
    #[prost(bytes = "bytes", tag = "1")]
    pub value: Bytes,
    /// Log index of the last modification.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    // Tag 3 (a creation index, never exposed) is retired: keeping it cost a read per put.
    /// The lease the key lives with (0: none): the key is deleted when that lease ends.
    #[prost(uint64, tag = "4")]
    pub lease: u64,
}

/// The deterministic outcome of applying one [`Command`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyResult {
    /// The log index of the entry.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// The key's version after the write (0 when the key no longer exists).
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// For delete: whether the key existed.
    #[prost(bool, tag = "3")]
    pub deleted: bool,
    /// For add: the new value (or, when rejected, the current value).
    #[prost(sint64, optional, tag = "4")]
    pub value: Option<i64>,
    /// Empty on success; otherwise the stable error code of a deterministic rejection
    /// ([`keel_api::ErrorCode`]; stored in idempotency records, so never respelled).
    #[prost(string, tag = "5")]
    pub error_code: String,
    /// Human-readable detail for `error_code`.
    #[prost(string, tag = "6")]
    pub error_message: String,
    /// For txn: whether every compare held.
    #[prost(bool, tag = "7")]
    pub succeeded: bool,
    /// For txn: one result per step of the branch taken.
    #[prost(message, repeated, tag = "8")]
    pub results: Vec<StepResult>,
    /// The key a rejection is about (txn bound violations).
    #[prost(string, tag = "9")]
    pub error_key: String,
    /// This is the stored outcome of an earlier command with the same idempotency key.
    #[prost(bool, tag = "10")]
    pub replayed: bool,
    /// For leases and locks (and a refused `If-Fence`): what the command reports.
    #[prost(message, optional, tag = "11")]
    pub coord: Option<crate::proto::CoordResult>,
}

impl ApplyResult {
    /// Whether the command took effect.
    pub fn is_ok(&self) -> bool {
        self.error_code.is_empty()
    }
}

/// One key's change, as the change log keeps it (column family `changes`, keyed by the entry's
/// index and the change's place among that entry's changes, both big-endian): the history a
/// watch resumes from (SPEC §9).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChangeRecord {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// What happened: [`ChangeKind`] as a number.
    #[prost(int32, tag = "2")]
    pub kind: i32,
    /// The new value (puts only).
    #[prost(bytes = "bytes", tag = "3")]
    pub value: Bytes,
    /// The lease the key lives with after a put, or the lease whose end deleted it (0: none).
    #[prost(uint64, tag = "4")]
    pub lease: u64,
}

/// What a change did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ChangeKind {
    /// The key was written (put, add, a transaction's put).
    Put = 0,
    /// The key was deleted (delete, a transaction's delete, a revoked lease).
    Delete = 1,
    /// The key was deleted because its lease expired.
    Expire = 2,
}
