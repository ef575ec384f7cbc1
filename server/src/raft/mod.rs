//! # raft: the Ready loop, the one owner of raft-rs
//!
//! This stage owns consensus: one thread ([`ready`]) owns the raft-rs `RawNode`, the log store
//! inside it and the apply path, and is the only code that touches them. Everything else reaches
//! it as an [`Event`] on one channel, through a [`NodeHandle`]: client proposals and read-index
//! requests (from [`crate::forward`] and [`crate::http`]; linearizable reads through a queue
//! beside the channel, `read_queue.rs`), Raft messages, applied-index reports
//! and snapshot outcomes (from [`crate::transport`] and [`crate::snapshot`]), status queries,
//! shutdown. Answers go back on oneshot channels; the role, leader, term, commit and applied
//! indexes are published in [`Shared`] for anyone to read without asking.
//!
//! The loop may touch: the log store ([`crate::storage`]), the state machine's apply path
//! ([`crate::sm`]), the staged snapshot ([`crate::snapshot::Stage`]) and, through the
//! [`Outbox`], the peers. It never blocks on the network and never waits for a client.
//!
//! - `ready.rs`: the loop and the Ready cycle, one numbered step per raft-rs requirement;
//! - `apply.rs`: committed entries to the state machine, and telling whoever waits on them;
//! - `leases.rs`: lease countdowns on the leader's monotonic clock, keepalives after a read
//!   index (SPEC §8);
//! - `writes.rs`: proposals waiting for their acknowledgement (async, semi, sync);
//! - `compaction.rs`: where to compact the log to;
//! - `reads.rs`: read-index batching, re-issue and expiry;
//! - `quorum_read.rs`: a follower's read-index request answered at once where the leader and
//!   the follower are a quorum (no heartbeat round);
//! - `read_queue.rs`: linearizable reads handed in without waking the loop for each one;
//! - `guard.rs`: what a peer's Raft message must satisfy before raft-rs sees it;
//! - `membership.rs`: applying conf changes and the address book;
//! - `peers.rs`, `status.rs`: what the leader knows of followers, and the status report;
//! - `handle.rs`, `shared.rs`: the way in and what is published.

use std::time::Duration;

mod apply;
mod compaction;
pub mod guard;
mod handle;
pub mod inbox;
mod leases;
mod membership;
mod observe;
mod peers;
mod quorum_read;
mod read_queue;
mod reads;
mod ready;
mod shared;
mod status;
mod writes;

pub use handle::{Event, NodeHandle, Outbox, WriteOk};
pub use leases::MAX_TTL;
pub use ready::{start, LoopParts, LoopThread};
pub use shared::Shared;
pub use status::StatusReport;

/// Raft timing and limits.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This node's id.
    pub id: u64,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Election timeout in ticks (randomised by raft-rs in `[n, 2n)`).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// How long a read-index request may stay unanswered.
    pub read_timeout: Duration,
    /// How long a `sync` write waits for every voter after it is applied on the leader.
    pub sync_timeout: Duration,
    /// Compact the log once this many entries are applied beyond the last compaction (keeping
    /// half of them for followers that lag a little); 0 never compacts.
    pub snapshot_entries: u64,
}
