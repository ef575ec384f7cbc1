//! # keel-server
//!
//! One node of a keel cluster: a leader-routed replicated key-value store. Clients may talk to
//! any node over HTTP; writes go to the Raft leader (tikv's raft-rs), which orders them in its
//! log and replicates them; every node applies the log to a RocksDB state machine.
//!
//! This crate is the node as a library; the `keel` binary (crate `keel`) runs it with
//! `keel server`. It shares its API vocabulary with the client through `keel-api` and never
//! depends on `keel-client`.
//!
//! # Layout
//! One folder per stage of a request, in the order data flows (docs/architecture.md follows a
//! PUT, a linearizable GET on a follower and a snapshot through them):
//!
//! - [`http`]: routing, handlers per resource, error mapping, JSON bodies.
//! - [`forward`]: write routing; propose locally when leading, else forward to the leader.
//! - [`raft`]: the Ready loop thread that owns raft-rs; writes waiting for their ack,
//!   read-index batching, membership.
//! - [`storage`]: RocksDB; the Raft log, hard state and conf state (raft-rs `Storage`).
//! - [`sm`]: the state machine: apply, reads, idempotency, and the pure evaluation of commands.
//! - [`snapshot`]: the whole send → stage → install path, and backups.
//! - [`watch`]: the change feed: recent changes in memory, and each watcher's stream.
//! - [`transport`]: persistent peer TCP connections carrying frames.
//! - [`tls`]: the certificates of both ports (TLS on the client port, mutual TLS between
//!   peers, a peer's certificate binding its member id).
//!
//! Shared by the stages: [`proto`] (the formats on disk and on the wire), [`members`] (the
//! address book), [`error`] (why a write or a read failed), [`config`] (flags), [`planted`]
//! (deliberate bugs for the fault suite), [`failpoints`] (crash points of the test build), [`metrics`]
//! (what a node counts and times, for `/metrics`). [`node`] wires one node together and stops it.

#![warn(missing_docs)]

// Without the `node` feature (the fuzz target's build) only the peer wire is compiled: the
// frames, their decoder and the Raft message guard, which depend on nothing else here.
#[cfg(feature = "node")]
pub mod config;
#[cfg(feature = "node")]
pub mod error;
#[cfg(feature = "node")]
pub mod failpoints;
#[cfg(feature = "node")]
pub mod forward;
#[cfg(feature = "node")]
pub mod http;
#[cfg(feature = "node")]
pub mod members;
#[cfg(feature = "node")]
pub mod metrics;
#[cfg(feature = "node")]
pub mod node;
#[cfg(feature = "node")]
pub mod planted;
pub mod proto;
#[cfg(feature = "node")]
pub mod raft;
#[cfg(feature = "node")]
pub mod sm;
#[cfg(feature = "node")]
pub mod snapshot;
#[cfg(feature = "node")]
pub mod storage;
#[cfg(feature = "node")]
pub mod tls;
#[cfg(feature = "node")]
pub mod transport;
#[cfg(feature = "node")]
pub mod watch;

/// The Raft message guard alone (the build without the `node` feature).
#[cfg(not(feature = "node"))]
pub mod raft {
    #[path = "guard.rs"]
    pub mod guard;
}

/// The peer frame decoder alone (the build without the `node` feature).
#[cfg(not(feature = "node"))]
pub mod transport {
    #[path = "decode.rs"]
    mod decode;
    pub use decode::{decode_after_hello, Decoded};
}
