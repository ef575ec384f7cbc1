//! Wire and log formats, as prost messages written by hand (no protoc step).
//!
//! Three families live here:
//! - [`Command`]: a client write as it is stored in a Raft log entry. Its encoding is
//!   part of the on-disk format: tags are never reused.
//! - [`ValueRecord`]: a key's value and version as stored in the state machine.
//! - [`Frame`]: what travels on the peer transport (Raft messages, forwarded writes and their
//!   replies, follower applied-index reports).
//!
//! Raft's own `eraftpb::Message` uses rust-protobuf (raft-rs's default codec); it travels as
//! opaque bytes inside [`frame::Body::Raft`], so the transport has one framing and one codec.

use bytes::Bytes;

/// A client write, as proposed to Raft and stored in the log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// The operation.
    #[prost(oneof = "command::Op", tags = "1, 2, 3")]
    pub op: Option<command::Op>,
}

/// Nested types of [`Command`].
pub mod command {
    /// One write operation.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Op {
        /// Set a key's value.
        #[prost(message, tag = "1")]
        Put(super::PutOp),
        /// Remove a key.
        #[prost(message, tag = "2")]
        Delete(super::DeleteOp),
        /// Atomic add on a decimal integer value.
        #[prost(message, tag = "3")]
        Add(super::AddOp),
    }
}

/// Preconditions shared by put and delete (HTTP `If-Match` / `If-None-Match: *`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Precondition {
    /// The key must exist with exactly this version.
    #[prost(uint64, optional, tag = "1")]
    pub if_version: Option<u64>,
    /// The key must not exist.
    #[prost(bool, tag = "2")]
    pub if_absent: bool,
    /// The key must exist (any version).
    #[prost(bool, tag = "3")]
    pub if_exists: bool,
}

/// Set `key` to `value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutOp {
    /// The key (UTF-8, validated by the API).
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value bytes.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// Optional compare-and-set condition.
    #[prost(message, optional, tag = "3")]
    pub precondition: Option<Precondition>,
}

/// Remove `key`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteOp {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// Optional compare-and-set condition.
    #[prost(message, optional, tag = "2")]
    pub precondition: Option<Precondition>,
}

/// Add `delta` to the decimal integer stored at `key` (absent counts as 0).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddOp {
    /// The key.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The amount to add (may be negative).
    #[prost(sint64, tag = "2")]
    pub delta: i64,
    /// The result may not go below this.
    #[prost(sint64, optional, tag = "3")]
    pub min: Option<i64>,
    /// The result may not go above this.
    #[prost(sint64, optional, tag = "4")]
    pub max: Option<i64>,
}

/// A key's stored value. `version` is the log index of the write that last modified the key:
/// unique and strictly increasing per key, so compare-and-set on it is free of ABA.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ValueRecord {
    /// The value bytes.
    #[prost(bytes = "bytes", tag = "1")]
    pub value: Bytes,
    /// Log index of the last modification.
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// Log index of the write that created the key (since its last deletion).
    #[prost(uint64, tag = "3")]
    pub create_index: u64,
}

/// The deterministic outcome of applying one [`Command`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApplyResult {
    /// The log index of the entry.
    #[prost(uint64, tag = "1")]
    pub index: u64,
    /// The key's version after the write (0 when the key no longer exists).
    #[prost(uint64, tag = "2")]
    pub version: u64,
    /// For delete: whether the key existed.
    #[prost(bool, tag = "3")]
    pub deleted: bool,
    /// For add: the new value (or, when rejected, the current value).
    #[prost(sint64, optional, tag = "4")]
    pub value: Option<i64>,
    /// Empty on success; otherwise a stable error code (`precondition_failed`,
    /// `bound_violated`, `not_integer`, `overflow`, `invalid_command`).
    #[prost(string, tag = "5")]
    pub error_code: String,
    /// Human-readable detail for `error_code`.
    #[prost(string, tag = "6")]
    pub error_message: String,
}

impl ApplyResult {
    /// Whether the command took effect.
    pub fn is_ok(&self) -> bool {
        self.error_code.is_empty()
    }
}

/// One unit on the peer transport. Frames are length-delimited on the TCP stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// The payload.
    #[prost(oneof = "frame::Body", tags = "1, 2, 3, 4, 5")]
    pub body: Option<frame::Body>,
}

/// Nested types of [`Frame`].
pub mod frame {
    /// What a frame carries.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Body {
        /// First frame on every connection: who is dialing.
        #[prost(message, tag = "1")]
        Hello(super::Hello),
        /// A raft-rs `eraftpb::Message`, protobuf-encoded.
        #[prost(bytes = "bytes", tag = "2")]
        Raft(bytes::Bytes),
        /// A client write forwarded by a follower to the leader.
        #[prost(message, tag = "3")]
        Forward(super::ForwardRequest),
        /// The leader's answer to a forwarded write.
        #[prost(message, tag = "4")]
        ForwardReply(super::ForwardReply),
        /// A follower's applied index, reported to the leader.
        #[prost(message, tag = "5")]
        Applied(super::AppliedReport),
    }
}

/// Sent first on each peer connection.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// The dialing node's id.
    #[prost(uint64, tag = "1")]
    pub from: u64,
    /// The dialing node's client (HTTP) address, so members can be discovered.
    #[prost(string, tag = "2")]
    pub http_addr: String,
}

/// A write forwarded to the leader.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardRequest {
    /// Chosen by the forwarding node; echoed in the reply.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The write.
    #[prost(message, optional, tag = "2")]
    pub command: Option<Command>,
    /// The write mode ([`crate::mode::WriteMode`] as an integer).
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    /// How long the leader may take, in milliseconds.
    #[prost(uint64, tag = "4")]
    pub timeout_ms: u64,
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardReply {
    /// The request's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Set when the write was applied (successfully or with a deterministic rejection).
    #[prost(message, optional, tag = "2")]
    pub result: Option<ApplyResult>,
    /// Where the write was acknowledged ([`crate::mode::AckPoint`] as an integer).
    #[prost(uint32, tag = "3")]
    pub acked: u32,
    /// Set when the write failed; a [`crate::error::WriteError`] code.
    #[prost(string, tag = "4")]
    pub error_code: String,
    /// Detail of the failure.
    #[prost(string, tag = "5")]
    pub error_message: String,
    /// The leader as the answering node knows it (0 = unknown).
    #[prost(uint64, tag = "6")]
    pub leader: u64,
    /// For failures after the entry got an index (e.g. replication timeout).
    #[prost(uint64, tag = "7")]
    pub index: u64,
}

/// A follower's applied index, sent to the leader after each apply batch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppliedReport {
    /// The follower's applied index.
    #[prost(uint64, tag = "1")]
    pub applied: u64,
}
