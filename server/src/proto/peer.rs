//! The peer wire: what travels between nodes on the transport, one length-delimited [`Frame`]
//! at a time.

/// One unit on the peer transport. Frames are length-delimited on the TCP stream.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    /// The payload.
    #[prost(oneof = "frame::Body", tags = "1, 2, 3, 4, 5, 6")]
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
        /// A piece of a state-machine snapshot, sent before the Raft snapshot message itself.
        #[prost(message, tag = "6")]
        SnapshotChunk(super::SnapshotChunk),
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
    /// The dialing node's data incarnation (see [`crate::storage::meta::incarnation`]).
    #[prost(uint64, tag = "3")]
    pub incarnation: u64,
    /// The dialing node's own peer address, so that a node that does not know it yet (it was
    /// cut off when the dialer joined) can answer it.
    #[prost(string, tag = "4")]
    pub peer_addr: String,
}

/// A write forwarded to the leader.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardRequest {
    /// Chosen by the forwarding node; echoed in the reply.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// The write.
    #[prost(message, optional, tag = "2")]
    pub command: Option<super::Command>,
    /// The write mode ([`keel_api::WriteMode`] as an integer).
    #[prost(uint32, tag = "3")]
    pub mode: u32,
    /// How long the follower waits, less a margin for the answer to travel back, in
    /// milliseconds (the leader answers when its loop does, and no longer reads it).
    #[prost(uint64, tag = "4")]
    pub timeout_ms: u64,
    /// The client request's id (`X-Request-Id`), for the leader's log lines.
    #[prost(string, tag = "5")]
    pub request_id: String,
}

/// The leader's answer to a [`ForwardRequest`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardReply {
    /// The request's id.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Set when the write was applied (successfully or with a deterministic rejection).
    #[prost(message, optional, tag = "2")]
    pub result: Option<super::ApplyResult>,
    /// Where the write was acknowledged ([`keel_api::AckPoint`] as an integer).
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

/// One key-value pair of a snapshot, with the column family it belongs to.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotPair {
    /// Which column family ([`crate::storage::SNAPSHOT_CFS`] index).
    #[prost(uint32, tag = "1")]
    pub cf: u32,
    /// The key.
    #[prost(bytes = "vec", tag = "2")]
    pub key: Vec<u8>,
    /// The value.
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
}

/// A piece of the state machine, streamed to a follower that needs a snapshot. The chunks of one
/// snapshot share `(snap_index, snap_term)`, are numbered from 0, and the last has `done`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SnapshotChunk {
    /// Index of the Raft snapshot this data goes with.
    #[prost(uint64, tag = "1")]
    pub snap_index: u64,
    /// Term of the Raft snapshot this data goes with.
    #[prost(uint64, tag = "2")]
    pub snap_term: u64,
    /// Position in the stream, from 0.
    #[prost(uint64, tag = "3")]
    pub seq: u64,
    /// Whether this is the last chunk.
    #[prost(bool, tag = "4")]
    pub done: bool,
    /// The applied index the data reflects (at least `snap_index`).
    #[prost(uint64, tag = "5")]
    pub applied: u64,
    /// The data.
    #[prost(message, repeated, tag = "6")]
    pub pairs: Vec<SnapshotPair>,
    /// The term of the entry at `applied`.
    #[prost(uint64, tag = "7")]
    pub applied_term: u64,
    /// On the last chunk: the member address book as of `applied` (JSON, see
    /// [`crate::members`]), so that a node that catches up by snapshot learns the addresses of
    /// members added while it was away. Empty when the sender has none.
    #[prost(bytes = "vec", tag = "8")]
    pub members: Vec<u8>,
    /// On the last chunk: where the sender's change log starts (every change of the entries
    /// above it is in the data). None from a sender that does not say.
    #[prost(uint64, optional, tag = "9")]
    pub history_after: Option<u64>,
    /// The sender's number for the stream, upward from a random start (never 0; 0 from senders
    /// before it): a chunk of another stream of the same snapshot never continues this one.
    #[prost(uint64, tag = "10")]
    pub stream: u64,
    /// The sender's term when it started the stream (0 from senders before it). With
    /// `stream`, which one sender numbers upward, it orders streams: a late first chunk of an
    /// older stream never restarts staging over a newer one.
    #[prost(uint64, tag = "11")]
    pub leader_term: u64,
}
