//! # proto: the formats on disk and on the wire, as prost messages written by hand
//!
//! No protoc step: the messages are Rust structs with prost attributes.
//! - [`log`]: a client write as stored in a Raft log entry ([`Command`]), its outcome
//!   ([`ApplyResult`]), and the state machine's stored records ([`ValueRecord`],
//!   [`IdempotencyRecord`]). Part of the on-disk format: tags are never reused.
//! - [`coord`]: leases and locks in the log and in the state machine (SPEC §8).
//! - [`peer`]: what travels on the peer transport ([`Frame`]: Raft messages, forwarded writes
//!   and their replies, applied-index reports, snapshot chunks).
//!
//! Raft's own `eraftpb::Message` uses rust-protobuf (raft-rs's default codec); it travels as
//! opaque bytes inside [`frame::Body::Raft`], so the transport has one framing and one codec.

pub mod coord;
pub mod log;
pub mod peer;

pub use coord::*;
pub use log::*;
pub use peer::*;
