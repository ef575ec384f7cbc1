//! Errors that cross module boundaries: why a write or a read could not be answered with data.
//!
//! Deterministic rejections (a failed precondition, a bound violation) are not errors here: they
//! are outcomes of apply, carried in [`crate::proto::ApplyResult`]. The HTTP layer maps both to
//! status codes in one place (`http/error.rs`).

/// Why a write did not produce an apply outcome.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// No leader is known right now; nothing was proposed.
    #[error("no leader is known; retry shortly")]
    NoLeader,
    /// This node is not the leader; nothing was proposed. Carries the leader it knows.
    #[error("node is not the leader (leader: {0})")]
    NotLeader(u64),
    /// The proposal was dropped or its log position taken by another leader's entry: it was not
    /// applied and will not be.
    #[error("the write was not applied because leadership changed; retry")]
    Dropped,
    /// Leadership was lost, or the leader stopped answering, while the write was in flight: it may
    /// or may not be applied.
    #[error(
        "leadership was lost while the write was in flight; it may or may not have been applied"
    )]
    OutcomeUnknown,
    /// A `sync` write committed (it is durable) but not every voter confirmed it in time.
    #[error("committed at index {index} but not applied on every voting member in time")]
    ReplicationTimeout {
        /// The write's log index.
        index: u64,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Another membership change is not applied yet (or this leader, newly elected, has not yet
    /// applied its log: raft-rs counts that as pending too); it takes one at a time. Nothing was
    /// proposed.
    #[error(
        "a membership change may still be pending (another one, or this newly elected leader's \
         log not yet applied); retry shortly"
    )]
    ChangePending,
    /// This node has too many requests waiting (for the Raft thread, or forwarded to it); nothing
    /// was proposed.
    #[error("the node has too many requests waiting; retry shortly")]
    Overloaded,
}

impl WriteError {
    /// Stable code, used in JSON errors and on the peer transport.
    pub fn code(&self) -> &'static str {
        match self {
            WriteError::NoLeader => "no_leader",
            WriteError::NotLeader(_) => "not_leader",
            WriteError::Dropped => "dropped",
            WriteError::OutcomeUnknown => "outcome_unknown",
            WriteError::ReplicationTimeout { .. } => "replication_timeout",
            WriteError::ShuttingDown => "shutting_down",
            WriteError::ChangePending => "membership_change_pending",
            WriteError::Overloaded => "overloaded",
        }
    }

    /// Rebuilds an error from its code (forwarded replies). Unknown codes become
    /// [`WriteError::OutcomeUnknown`], the safe reading.
    pub fn from_code(code: &str, leader: u64, index: u64) -> Self {
        match code {
            "no_leader" => WriteError::NoLeader,
            "not_leader" if leader != 0 => WriteError::NotLeader(leader),
            "not_leader" => WriteError::NoLeader,
            "dropped" => WriteError::Dropped,
            "replication_timeout" => WriteError::ReplicationTimeout { index },
            "shutting_down" => WriteError::ShuttingDown,
            "membership_change_pending" => WriteError::ChangePending,
            "overloaded" => WriteError::Overloaded,
            _ => WriteError::OutcomeUnknown,
        }
    }

    /// Whether the write certainly did not happen, so that sending it again is safe.
    pub fn certainly_not_applied(&self) -> bool {
        matches!(
            self,
            WriteError::NoLeader
                | WriteError::NotLeader(_)
                | WriteError::Dropped
                | WriteError::ChangePending
        )
    }
}

/// Why a read could not be served at the requested consistency.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No leader is known, so no read index can be had.
    #[error("no leader is known; retry shortly")]
    NoLeader,
    /// The read index or the wait for an applied index took too long.
    #[error("{0}")]
    Timeout(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// This node has too many requests waiting for the Raft thread.
    #[error("the node has too many requests waiting; retry shortly")]
    Overloaded,
}
