//! Options and results of client calls.

use std::time::Duration;

use bytes::Bytes;

pub use keel_api::cluster::{Member, MemberRole, Progress, Role, Status};
pub use keel_api::{AckPoint as Acked, WriteMode as Mode};

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Sees every write acknowledged before the read began (Raft ReadIndex), on any member.
    Linearizable,
    /// Whatever the chosen member has applied.
    Stale,
    /// Read-your-writes: a stale read on any member that waits until the member has applied the
    /// highest index this client has seen.
    Session,
}

/// Which members serve reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// Every member, in turn (the default): spreads the load.
    Any,
    /// The leader only.
    Leader,
    /// Only the endpoints the client was built with (e.g. the nearest node); writes still go to
    /// the leader.
    Endpoints,
}

/// Retry and timeout settings.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// First backoff; doubles per attempt, with full jitter.
    pub base_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 12,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
        }
    }
}

/// A value read from keel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value bytes.
    pub value: Bytes,
    /// The version (log index of the last write of the key); use it for compare-and-set.
    pub version: u64,
    /// The applied index the read reflects.
    pub index: u64,
    /// The member that served the read (`X-Keel-Node`).
    pub served_by: Option<u64>,
}

impl KeyValue {
    /// The value as UTF-8, if it is.
    pub fn value_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.value).ok()
    }

    /// The value as a decimal integer, if it is one.
    pub fn value_i64(&self) -> Option<i64> {
        self.value_str()?.parse().ok()
    }
}

/// Outcome of a put.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PutResult {
    /// The write's log index.
    pub index: u64,
    /// The key's new version.
    pub version: u64,
    /// Where it was acknowledged.
    pub acked: Acked,
    /// The server answered with the stored outcome of an earlier attempt of this same call.
    pub replayed: bool,
}

/// Outcome of a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeleteResult {
    /// The write's log index.
    pub index: u64,
    /// Whether the key existed.
    pub deleted: bool,
    /// Where it was acknowledged.
    pub acked: Acked,
    /// Replayed outcome of an earlier attempt.
    pub replayed: bool,
}

/// Outcome of an add.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddResult {
    /// The new value.
    pub value: i64,
    /// The write's log index.
    pub index: u64,
    /// The key's new version.
    pub version: u64,
    /// Where it was acknowledged.
    pub acked: Acked,
    /// Replayed outcome of an earlier attempt.
    pub replayed: bool,
}

/// One page of a prefix listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in order.
    pub items: Vec<KeyValue>,
    /// The applied index the page reflects.
    pub index: u64,
    /// Whether more keys follow the last one.
    pub more: bool,
}
