//! # keel server
//!
//! One node of a keel cluster: a leader-routed replicated key-value store. Clients may talk to
//! any node over HTTP; writes go to the Raft leader (tikv's raft-rs), which orders them in its
//! log and replicates them; every node applies the log to a RocksDB state machine.
//!
//! # Layout
//! A request flows one way through these modules (see docs/architecture.md):
//!
//! - [`api`]: HTTP handlers; validate input, map outcomes to status codes.
//! - [`forward`]: write routing; propose locally when leading, else forward to the leader.
//! - [`raft_node`]: the Ready loop thread that owns the `RawNode`; proposals, read index, apply.
//! - [`storage`]: RocksDB; the Raft log, hard state and conf state (raft-rs `Storage`).
//! - [`state_machine`]: applies commands atomically with the applied index; local reads.
//! - [`transport`]: persistent peer TCP connections carrying prost frames.
//! - [`proto`]: the prost messages of the log and the wire.
//! - [`mode`], [`error`]: the vocabulary shared by all of the above.
//! - [`config`], [`server`], [`cluster`]: flags, wiring of one node, the local cluster launcher.
//! - [`cli`], [`demo`]: the client commands and the demonstrations, on `keel-client`.

#![warn(missing_docs)]

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod error;
pub mod forward;
pub mod members;
pub mod mode;
pub mod planted;
pub mod proto;
pub mod raft_node;
pub mod server;
pub mod state_machine;
pub mod storage;
pub mod transport;
