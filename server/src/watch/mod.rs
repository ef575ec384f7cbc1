//! # watch: the change feed (SPEC §9)
//!
//! This stage owns what a watcher sees: the in-memory [`Feed`] of recent changes that the Ready
//! loop publishes after each apply batch ([`feed`]), the index of watchers by key and prefix and
//! the dispatcher that wakes only those a change concerns ([`registry`]), and each watcher's
//! position, filter and events ([`stream`]). It reads the change log the state machine keeps ([`crate::sm`]'s
//! `changes.rs`) and never writes anything: the apply path writes the log, the Ready loop
//! publishes, the HTTP handler (`http/watch.rs`) starts watchers.
//!
//! # How a change reaches a watcher
//! apply batch (changes in the `changes` column family, with the data) → RocksDB write →
//! [`Feed::publish`] (a short lock: append, evict past the bound, bump a `watch` channel) → the
//! dispatcher task signals the watchers whose key or prefix a change matches → each such watcher,
//! when its connection asks for the next chunk, reads the groups after its position. The Ready
//! loop never waits for a watcher or the dispatcher; a watcher holds no buffer of its own (its
//! chunks are made when hyper polls the body); a watcher no change concerns is not woken by
//! writes, and moves its position to the dispatched index on its progress timer, so an idle
//! watcher costs a connection, a signal and a few words.
//!
//! # Invariants
//! - A watcher's position only grows, and it is shown only changes above it: nothing twice.
//! - The feed holds every change of every entry above `covers_after` up to its head, and the
//!   change log every change above its start up to the applied index: a watcher reads one or the
//!   other, so nothing is skipped; when neither covers its position, it is told (410 at the
//!   start, a `cutoff` event later), never silently moved forward.
//! - Only applied (so committed) entries are published or logged: a watcher is never shown an
//!   index before it is committed.

pub mod feed;
pub mod registry;
pub mod stream;

pub use feed::{Feed, FeedLimits, FeedRead, Group};
pub use registry::{Registration, Registry};
pub use stream::{Filter, Start, Watcher};
