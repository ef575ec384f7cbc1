//! # snapshot: the state machine leaving or entering a node whole
//!
//! This stage owns every path by which the whole state machine moves: a leader streaming it to
//! a follower that fell behind the compacted log ([`send`]), the follower staging the chunks and
//! installing them when raft-rs takes the snapshot ([`stage`]), and backups and restores
//! ([`backup`]). The transport only moves its frames; the Ready loop only decides when to
//! install; the log store ([`crate::storage::RaftLogStore::install_snapshot`]) writes the log's
//! side of an install in the same synced batch.
//!
//! # The path of a snapshot
//! 1. The leader's raft-rs needs to send entries a follower lacks and that are compacted away;
//!    it asks [`crate::storage::RaftLogStore`] for the snapshot's metadata (the applied index and
//!    term, the conf state) and emits `MsgSnapshot`, whose `data` is only a marker.
//! 2. The node's outbox hands the message to [`send::Sender::stream`], which reads one RocksDB
//!    snapshot of the state machine (at an applied index at least the message's) and queues it
//!    to the follower in chunks, then the message, on the peer's one ordered queue.
//! 3. The follower's transport passes each chunk to [`stage::Stage::stage_chunk`]; the last
//!    chunk completes the stream.
//! 4. The follower's Ready loop steps `MsgSnapshot` only if its data is staged whole (otherwise
//!    the leader retries), and in the Ready that carries the snapshot installs it, in two
//!    halves so that memory does not grow with the data: one synced write empties the state
//!    machine and the log (truncated at the snapshot) and records a pending install; then the
//!    staged data is copied into place in batches of a few MiB and a last synced write records
//!    the applied index and drops the pending install ([`stage::finish_install`]). Reads are
//!    refused in between ([`crate::sm::InstallGate`]); a node that crashed in between finishes
//!    the install when it starts. Entries after the snapshot that the staged data already
//!    covers are skipped when they are applied.
//!
//! The leader keeps at most a few chunks queued to the follower at a time, so its memory does
//! not grow with the snapshot either.

pub mod backup;
pub mod send;
pub mod stage;

pub use send::Sender;
pub use stage::{Installed, Stage};
