//! Deliberate bugs, compiled only with the `planted-bugs` feature, so the fault suite can show
//! that its checkers catch them. The bug is chosen at start-up with `KEEL_PLANTED_BUG`:
//!
//! - `stale-read`: linearizable reads skip ReadIndex and serve local state;
//! - `early-ack`: `semi` writes are acknowledged once in the leader's log, before commit;
//! - `skip-idempotency`: the state machine ignores `Idempotency-Key`s;
//! - `skip-fsync`: the Raft log and hard state are written without fsync;
//! - `learner-quorum`: a `sync` write is acknowledged once as many members as there are voters
//!   have applied it, learners counted (so a learner can stand in for a lagging voter);
//! - `early-read-index`: a new leader answers read-index requests with its commit index before
//!   it has committed an entry of its own term (that commit index may be behind what the old
//!   leader acknowledged).
//! - `pair-quorum`: a leader answers a follower's read-index request at once whatever the number
//!   of voters (with five, the leader and the asker are no quorum: a newer leader may have been
//!   elected by the other three and acknowledged writes the answer does not cover).
//! - `trust-hello`: with TLS, a peer's Hello is believed whatever member its certificate names
//!   (any holder of a certificate from the CA can then act as any member).
//!
//! - `skip-fence`: `If-Fence` is not checked (a paused holder's late write goes through);
//! - `keepalive-no-read-index`: the leader answers a keepalive from its local state, without a
//!   read-index round (a deposed leader goes on extending leases the new leader expires).
//! - `no-read-reask`: read indexes raft-rs has not answered are never asked for again (a
//!   request lost on the way leaves its reads waiting until they time out);
//! - `watch-resume-skip`: a watch resumed with `Last-Event-ID` starts one entry late (the
//!   changes of the entry right after the id are never delivered to it).
//! - `cache-skip-apply`: the apply does not tell the value cache what it wrote (a cached record
//!   outlives its overwrite);
//! - `cache-kept-on-install`: a snapshot install does not empty the value cache.
//!
//! Without the feature, [`active`] is a constant `false` and the optimiser removes every hook.

/// A plantable bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bug {
    /// Linearizable reads served from local state.
    StaleRead,
    /// Semi writes acknowledged before commit.
    EarlyAck,
    /// Idempotency keys ignored.
    SkipIdempotency,
    /// The Raft log appended without fsync.
    SkipFsync,
    /// Learners counted among the members a `sync` write waits for.
    LearnerQuorum,
    /// Read indexes served before the leader has committed in its term.
    EarlyReadIndex,
    /// A follower's read-index request answered at once with any number of voters.
    PairQuorum,
    /// A peer's Hello believed whatever its certificate names.
    TrustHello,
    /// `If-Fence` not checked.
    SkipFence,
    /// Keepalives answered without confirming leadership.
    KeepaliveNoReadIndex,
    /// Read indexes raft-rs has not answered are never asked for again.
    NoReadReask,
    /// Resumed watches skip an entry.
    WatchResumeSkip,
    /// The value cache not told of the apply's writes.
    CacheSkipApply,
    /// The value cache kept through a snapshot install.
    CacheKeptOnInstall,
}

/// Whether `bug` is planted in this process.
#[cfg(feature = "planted-bugs")]
pub fn active(bug: Bug) -> bool {
    use std::sync::OnceLock;
    static PLANTED: OnceLock<Option<Bug>> = OnceLock::new();
    let planted = PLANTED.get_or_init(|| {
        let b = match std::env::var("KEEL_PLANTED_BUG").ok()?.as_str() {
            "stale-read" => Bug::StaleRead,
            "early-ack" => Bug::EarlyAck,
            "skip-idempotency" => Bug::SkipIdempotency,
            "skip-fsync" => Bug::SkipFsync,
            "learner-quorum" => Bug::LearnerQuorum,
            "early-read-index" => Bug::EarlyReadIndex,
            "pair-quorum" => Bug::PairQuorum,
            "trust-hello" => Bug::TrustHello,
            "skip-fence" => Bug::SkipFence,
            "keepalive-no-read-index" => Bug::KeepaliveNoReadIndex,
            "watch-resume-skip" => Bug::WatchResumeSkip,
            "no-read-reask" => Bug::NoReadReask,
            "cache-skip-apply" => Bug::CacheSkipApply,
            "cache-kept-on-install" => Bug::CacheKeptOnInstall,
            _ => return None,
        };
        tracing::warn!(bug = ?b, "PLANTED BUG ACTIVE: this node is deliberately wrong");
        Some(b)
    });
    *planted == Some(bug)
}

/// Whether `bug` is planted in this process (never, without the `planted-bugs` feature).
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub fn active(_bug: Bug) -> bool {
    false
}
