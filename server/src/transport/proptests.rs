//! Property tests of the peer frame decoding: any bytes a stranger sends decode to a frame or
//! are refused, never a panic; frames a node sends decode to themselves.

use proptest::prelude::*;
use prost::Message as _;
use protobuf::Message as _;

use crate::proto::{frame::Body, Frame, Hello};

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_decode_to_a_frame_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(Frame { body: Some(Body::Raft(raw)) }) = Frame::decode(bytes.as_slice()) {
            // The Raft payload is parsed again on arrival: that must not panic either.
            let _ = raft::eraftpb::Message::parse_from_bytes(&raw);
        }
    }

    #[test]
    fn any_bytes_as_a_raft_message_parse_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = raft::eraftpb::Message::parse_from_bytes(&bytes);
    }

    #[test]
    fn a_hello_decodes_to_itself(from in any::<u64>(), http in ".{0,40}", incarnation in any::<u64>()) {
        let f = Frame { body: Some(Body::Hello(Hello { from, http_addr: http, incarnation, peer_addr: String::new() })) };
        let bytes = f.encode_to_vec();
        prop_assert_eq!(Frame::decode(bytes.as_slice()).ok(), Some(f));
    }

    #[test]
    fn a_truncated_frame_is_refused_or_shorter(cut in 0usize..64, http in "[a-z:0-9.]{1,40}") {
        let f = Frame { body: Some(Body::Hello(Hello { from: 7, http_addr: http, incarnation: 9, peer_addr: String::new() })) };
        let bytes = f.encode_to_vec();
        let cut = cut.min(bytes.len());
        if let Ok(g) = Frame::decode(&bytes[..bytes.len() - cut]) {
            prop_assert!(cut == 0 || g != f);
        }
    }
}
