//! Decoding what a peer sends after its Hello: one frame, and for a Raft message, whether it
//! names the connection's peer and this node. Pure (bytes in, a message or a refusal out), so
//! that the fuzz target (fuzz/) builds it without the rest of the node: with keel-server's
//! `node` feature off this file and [`crate::raft::guard`] are all that is compiled beside
//! [`crate::proto`].

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};

use crate::proto::{frame::Body, Frame};

/// A frame that arrived after the Hello, decoded.
#[derive(Debug)]
pub enum Decoded {
    /// A Raft message from the connection's peer to this node.
    Raft(Message),
    /// Any other frame (forwarded writes and replies, applied reports, snapshot chunks).
    Other(Body),
}

/// Decodes one frame that `from` sent to `me` after its Hello; Err (the connection is then
/// closed) for anything undecodable, a second Hello, or a Raft message that is not from `from`
/// to `me`. What the Ready loop checks next is in [`crate::raft::guard`]. Public for the fuzz
/// target (fuzz/), which feeds it arbitrary bytes.
pub fn decode_after_hello(bytes: &[u8], from: u64, me: u64) -> Result<Decoded, String> {
    let frame = Frame::decode(bytes).map_err(|e| format!("undecodable frame from {from}: {e}"))?;
    match frame.body {
        Some(Body::Hello(_)) | None => Err(format!("unexpected frame from {from}")),
        Some(Body::Raft(raw)) => {
            let msg = Message::parse_from_bytes(&raw)
                .map_err(|e| format!("undecodable raft message from {from}: {e}"))?;
            // raft-rs passes a proposal or a read index sent to a former leader on to the new
            // one with its first sender's id: those may come from another member.
            let forwarded = matches!(
                msg.get_msg_type(),
                MessageType::MsgPropose | MessageType::MsgReadIndex
            );
            if msg.to != me || (msg.from != from && !forwarded) {
                return Err(format!(
                    "raft message {}→{} on the connection from {from}",
                    msg.from, msg.to
                ));
            }
            Ok(Decoded::Raft(msg))
        }
        Some(body) => Ok(Decoded::Other(body)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raft_frame(kind: MessageType, from: u64, to: u64) -> Vec<u8> {
        let mut m = Message::default();
        m.set_msg_type(kind);
        m.from = from;
        m.to = to;
        let raw = m.write_to_bytes().expect("encode a raft message");
        Frame {
            body: Some(Body::Raft(raw.into())),
        }
        .encode_to_vec()
    }

    #[test]
    fn a_raft_message_must_name_the_connections_peer_and_this_node() {
        // On the connection from member 2, to member 1.
        let ok = raft_frame(MessageType::MsgAppend, 2, 1);
        assert!(matches!(
            decode_after_hello(&ok, 2, 1),
            Ok(Decoded::Raft(m)) if m.from == 2
        ));
        // Claiming another sender (a member speaking for a third), or another receiver.
        for (kind, from, to) in [
            (MessageType::MsgAppend, 3, 1),
            (MessageType::MsgRequestVote, 3, 1),
            (MessageType::MsgHeartbeatResponse, 2, 3),
            (MessageType::MsgAppend, 2, 0),
        ] {
            let err = decode_after_hello(&raft_frame(kind, from, to), 2, 1)
                .err()
                .unwrap_or_else(|| panic!("{kind:?} {from}→{to} let in"));
            assert!(err.contains("on the connection from 2"), "{err}");
        }
        // raft-rs passes proposals and read indexes on with their first sender's id.
        for kind in [MessageType::MsgPropose, MessageType::MsgReadIndex] {
            assert!(decode_after_hello(&raft_frame(kind, 3, 1), 2, 1).is_ok());
            assert!(decode_after_hello(&raft_frame(kind, 3, 4), 2, 1).is_err());
        }
        // A second Hello, or nothing.
        let hello = Frame { body: None }.encode_to_vec();
        assert!(decode_after_hello(&hello, 2, 1).is_err());
    }
}
