//! # keel-client
//!
//! The Rust client library for [keel](https://example.invalid/keel), a leader-routed replicated
//! key-value store. It depends on nothing of the server but its HTTP API.
//!
//! - **Discovery**: [`Client::new`] reads `/v1/status` from the endpoints it is given and learns
//!   every member's address and the leader.
//! - **Routing**: writes go straight to the leader and follow it when it changes (every answer
//!   carries `X-Keel-Leader`); reads are spread over all members.
//! - **Retries**: with exponential backoff and jitter, across failovers. Every write carries an
//!   `Idempotency-Key` chosen by the client, so a retry of a write whose first attempt may have
//!   been applied is answered with the first outcome instead of being applied twice.
//! - **Session consistency**: the client remembers the highest index it has seen; with
//!   [`Consistency::Session`] it reads from any member with `min_index`, so it always reads its
//!   own writes, even on a lagging follower.
//! - **Typed errors**: [`Error`] instead of status codes.
//!
//! ```
//! # let cluster = keel_tests::Cluster::start(3);
//! # let endpoints = cluster.endpoints();
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use keel_client::{Client, Error};
//!
//! // `endpoints` is any subset of the members, e.g. ["127.0.0.1:7001"].
//! let client = Client::new(endpoints).await?;
//! client.put("greeting", "hello").await?;
//! assert_eq!(client.get("greeting").await?.value_str(), Some("hello"));
//!
//! // Atomic, bounded arithmetic: a withdrawal that would overdraw is refused.
//! client.put("balance", "100").await?;
//! assert_eq!(client.add_bounded("balance", -60, Some(0), None).await?.value, 40);
//! match client.add_bounded("balance", -60, Some(0), None).await {
//!     Err(Error::BoundViolated { current, .. }) => assert_eq!(current, 40),
//!     other => panic!("expected a refusal, got {other:?}"),
//! }
//! # Ok::<(), Error>(())
//! # }).unwrap();
//! ```
//!
//! The doc examples run against a real cluster started by the test harness (`keel-tests`), so
//! they need the `keel` binary: `cargo build --release --workspace` and `KEEL_BIN` pointing at it
//! (scripts/test.sh does both).

//! # Layout
//! - `client.rs`: topology, routing, the retry loop, typed errors from answers;
//! - `builder.rs`: [`ClientBuilder`]; `tls.rs`: [`TlsOptions`] for https;
//! - `kv.rs`, `admin.rs`, `txn.rs`: the calls; `coord.rs`: leases, locks with fences,
//!   elections; `watch.rs`: the change feed, resumed across failures;
//! - [`http`]: the one small HTTP client every keel tool uses to talk to a node;
//! - the request and answer bodies are keel-api's, shared with the server.

#![warn(missing_docs)]

mod admin;
mod builder;
mod client;
mod coord;
mod error;
pub mod http;
mod kv;
mod refusal;
mod tls;
mod txn;
mod types;
mod watch;

pub use builder::ClientBuilder;
pub use client::Client;
pub use coord::{Election, Lease, LeaseLoss, LockGuard};
pub use error::Error;
pub use keel_api;
pub use keel_api::coord::{LeaseInfo, LeaseResponse, LeaseRevokeResponse, LockHolderInfo};
pub use keel_api::txn::{
    CompareJson as Compare, CompareOp as Cmp, StepJson as Op, StepResultJson as OpResult,
    TxnResponse as TxnResult,
};
pub use kv::PutOptions;
pub use tls::{TlsError, TlsOptions};
pub use txn::TxnBuilder;
pub use types::{
    Acked, AddResult, Consistency, DeleteResult, KeyValue, ListPage, Member, MemberRole, Mode,
    Progress, PutResult, ReadFrom, RetryPolicy, Role, Status,
};
pub use watch::{Watch, WatchEvent, WatchKind, WatchOptions};
