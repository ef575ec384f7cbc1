//! The log format of coordination (SPEC §8): leases and locks as commands, and the records the
//! state machine keeps for them in the `leases` and `locks` column families. These encodings
//! are on disk: tags are never reused.

use bytes::Bytes;

/// Grant a lease. Its id is the index of the entry that grants it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantOp {
    /// The time to live, already raised to the minimum by the proposer (apply is deterministic).
    #[prost(uint64, tag = "1")]
    pub ttl_ms: u64,
}

/// End a lease: delete its keys and release its locks, in this one entry.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRevokeOp {
    /// The lease.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Proposed by the leader because the lease's time ran out (not by a client).
    #[prost(bool, tag = "2")]
    pub expired: bool,
}

/// Confirm a lease, or look at it: answered by the leader after a read index, never logged.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseQueryOp {
    /// The lease.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Reset the lease's countdown (a keepalive); otherwise only report it.
    #[prost(bool, tag = "2")]
    pub keepalive: bool,
}

/// Acquire a lock for a lease, or queue for it (FIFO).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockAcquireOp {
    /// The lock's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The lease that will hold it.
    #[prost(uint64, tag = "2")]
    pub lease: u64,
    /// The holder's value (an election's candidate name, a worker's address...).
    #[prost(bytes = "bytes", tag = "3")]
    pub value: Bytes,
    /// A number the node that serves the request picks for this wait (random, non-zero), which
    /// its cancel names; 0 when none.
    #[prost(uint64, tag = "4")]
    pub wait_id: u64,
}

/// Release a lock (its holder's lease only), or leave its queue (a waiter whose wait ended).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockReleaseOp {
    /// The lock's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The lease that holds it, or that waits for it.
    #[prost(uint64, tag = "2")]
    pub lease: u64,
    /// A cancel only: the wait it ends ([`LockAcquireOp::wait_id`]), so that it leaves alone a
    /// place or a grant a later acquire of the same lease took over; 0 ends the lease's wait
    /// whichever acquire queued it. (Tag 3 held a log index in an unreleased commit: not reused.)
    #[prost(uint64, tag = "5")]
    pub wait_id: u64,
    /// A cancel only: nobody waits for the answer (the client went away, or its wait failed),
    /// so a grant made from this very wait is given up too, instead of kept for nobody.
    #[prost(bool, tag = "4")]
    pub abandoned: bool,
    /// A cancel only: it answers its client with the grant it finds (its wait timed out), so it
    /// claims the grant for its wait ([`LockHolder::wait_id`]): no abandoned cancel of another
    /// wait of the lease can give it up then. A cancel that answers nobody claims nothing.
    #[prost(bool, tag = "6")]
    pub claim: bool,
}

/// A write's `If-Fence`: applied only if lock `name` is held now with exactly `fence`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FenceCheck {
    /// The lock.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The fence the writer holds.
    #[prost(uint64, tag = "2")]
    pub fence: u64,
}

/// A lease as every replica stores it (key: the id, big-endian).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseRecord {
    /// The granted time to live.
    #[prost(uint64, tag = "1")]
    pub ttl_ms: u64,
    /// Keys put with this lease (a key put again without it is detached: its own record says
    /// which lease it belongs to, and only those are deleted when the lease ends).
    #[prost(string, repeated, tag = "2")]
    pub keys: Vec<String>,
    /// Locks this lease holds or waits for.
    #[prost(string, repeated, tag = "3")]
    pub locks: Vec<String>,
}

/// Who holds a lock.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LockHolder {
    /// The holder's lease.
    #[prost(uint64, tag = "1")]
    pub lease: u64,
    /// The holder's value.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// The index of the entry that granted it: the fencing token.
    #[prost(uint64, tag = "3")]
    pub fence: u64,
    /// The wait the grant answers ([`LockAcquireOp::wait_id`]; taken over by a later acquire of
    /// the same lease); 0 when not known.
    #[prost(uint64, tag = "4")]
    pub wait_id: u64,
}

/// One lease waiting for a lock.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockWaiter {
    /// The waiter's lease.
    #[prost(uint64, tag = "1")]
    pub lease: u64,
    /// The value it will hold the lock with.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// The wait of the last acquire of this lease that queued here, or found it queued and
    /// took the place over (a client's retry); 0 when not known. (Tag 3 held a log index in an
    /// unreleased commit: not reused.)
    #[prost(uint64, tag = "4")]
    pub wait_id: u64,
}

/// A lock as every replica stores it (key: its name). Absent when free with nobody waiting.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockRecord {
    /// The holder (None only transiently: a record without holder and waiters is deleted).
    #[prost(message, optional, tag = "1")]
    pub holder: Option<LockHolder>,
    /// Leases waiting, first come first served.
    #[prost(message, repeated, tag = "2")]
    pub waiters: Vec<LockWaiter>,
    /// The index of the entry that last changed who holds it (for blocking reads).
    #[prost(uint64, tag = "3")]
    pub index: u64,
}

/// What a coordination command reports, inside [`super::ApplyResult`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct CoordResult {
    /// A lease's id (grant, keepalive, query).
    #[prost(uint64, tag = "1")]
    pub lease: u64,
    /// The lease's time to live.
    #[prost(uint64, tag = "2")]
    pub ttl_ms: u64,
    /// The lease's remaining time on the leader's clock (query, keepalive).
    #[prost(uint64, tag = "3")]
    pub remaining_ms: u64,
    /// The lease's keys (query).
    #[prost(string, repeated, tag = "4")]
    pub keys: Vec<String>,
    /// The lease's locks (query).
    #[prost(string, repeated, tag = "5")]
    pub locks: Vec<String>,
    /// A lock's holder after the command (acquire, cancel), or the holder that refused it.
    #[prost(message, optional, tag = "6")]
    pub holder: Option<LockHolder>,
    /// Acquire and cancel: whether the asking lease holds the lock now.
    #[prost(bool, tag = "7")]
    pub granted: bool,
}
