//! The peer protocol encoded by hand, as a stranger would: length-prefixed protobuf frames
//! (`keel-server`'s `proto::Frame`) carrying a Hello or a raft-rs `eraftpb::Message`. The tests
//! use it to show what a node does with frames it must refuse; the harness does not depend on
//! the server crate, so the field numbers are written here.

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field_varint(tag: u64, v: u64, out: &mut Vec<u8>) {
    varint(tag << 3, out);
    varint(v, out);
}

fn field_bytes(tag: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint((tag << 3) | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

/// A frame on the wire: its length (u32, big endian), then the frame.
fn framed(frame: &[u8]) -> Vec<u8> {
    let mut out = (frame.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(frame);
    out
}

/// `Frame { hello: Hello { from, http_addr, incarnation } }`, framed.
pub fn hello(from: u64, http_addr: &str, incarnation: u64) -> Vec<u8> {
    hello_at(from, http_addr, incarnation, "")
}

/// A Hello frame that also gives the sender's own peer address (empty: none).
pub fn hello_at(from: u64, http_addr: &str, incarnation: u64, peer_addr: &str) -> Vec<u8> {
    let mut h = Vec::new();
    field_varint(1, from, &mut h);
    field_bytes(2, http_addr.as_bytes(), &mut h);
    field_varint(3, incarnation, &mut h);
    if !peer_addr.is_empty() {
        field_bytes(4, peer_addr.as_bytes(), &mut h);
    }
    let mut f = Vec::new();
    field_bytes(1, &h, &mut f);
    framed(&f)
}

/// raft-rs message types used by the tests (eraftpb numbering).
pub mod msg_type {
    /// MsgPropose.
    pub const PROPOSE: u64 = 2;
    /// MsgAppend.
    pub const APPEND: u64 = 3;
    /// MsgAppendResponse.
    pub const APPEND_RESPONSE: u64 = 4;
    /// MsgRequestVote.
    pub const REQUEST_VOTE: u64 = 5;
    /// MsgHeartbeat.
    pub const HEARTBEAT: u64 = 8;
    /// MsgTransferLeader.
    pub const TRANSFER_LEADER: u64 = 13;
    /// MsgReadIndex.
    pub const READ_INDEX: u64 = 15;
}

/// An `eraftpb::Entry` (normal).
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Its term.
    pub term: u64,
    /// Its index.
    pub index: u64,
    /// Its data (none when empty).
    pub data: &'static [u8],
}

/// An `eraftpb::Message`, with the fields the tests set.
#[derive(Clone, Debug, Default)]
pub struct Msg {
    /// `msg_type` (see [`msg_type`]).
    pub msg_type: u64,
    /// Recipient.
    pub to: u64,
    /// Sender.
    pub from: u64,
    /// Term.
    pub term: u64,
    /// Term of the entry at `index`.
    pub log_term: u64,
    /// Index.
    pub index: u64,
    /// Entries.
    pub entries: Vec<Entry>,
    /// Commit index.
    pub commit: u64,
}

impl Msg {
    /// `Frame { raft: <the message> }`, framed.
    pub fn frame(&self) -> Vec<u8> {
        let mut m = Vec::new();
        field_varint(1, self.msg_type, &mut m);
        field_varint(2, self.to, &mut m);
        field_varint(3, self.from, &mut m);
        field_varint(4, self.term, &mut m);
        field_varint(5, self.log_term, &mut m);
        field_varint(6, self.index, &mut m);
        for e in &self.entries {
            let mut eb = Vec::new();
            field_varint(2, e.term, &mut eb);
            field_varint(3, e.index, &mut eb);
            if !e.data.is_empty() {
                field_bytes(4, e.data, &mut eb);
            }
            field_bytes(7, &eb, &mut m);
        }
        field_varint(8, self.commit, &mut m);
        let mut f = Vec::new();
        field_bytes(2, &m, &mut f);
        framed(&f)
    }
}

/// `Frame { raft: MsgHeartbeat { to, from, term } }`: a heartbeat of a higher term makes any
/// member step down and adopt that term.
pub fn heartbeat(from: u64, to: u64, term: u64) -> Vec<u8> {
    Msg {
        msg_type: msg_type::HEARTBEAT,
        to,
        from,
        term,
        ..Msg::default()
    }
    .frame()
}
