//! The address book: every member's peer and client addresses, kept by the Raft loop, persisted
//! with the conf state it belongs to, and carried in the context of each conf change so that
//! every node learns a new member's address at the same log index.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a member listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberAddr {
    /// Peer transport address (host:port).
    pub peer_addr: String,
    /// Client HTTP address (host:port), when known.
    #[serde(default)]
    pub http_addr: Option<String>,
}

/// Member id → addresses.
pub type AddressBook = BTreeMap<u64, MemberAddr>;

/// The context of a conf change that adds a member: its id and addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinContext {
    /// The member's id.
    pub id: u64,
    /// Its addresses.
    #[serde(flatten)]
    pub addr: MemberAddr,
}

/// Encodes an address book for storage.
pub fn encode(book: &AddressBook) -> Vec<u8> {
    serde_json::to_vec(book).unwrap_or_default()
}

/// Decodes a stored address book.
pub fn decode(bytes: &[u8]) -> Result<AddressBook, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The member ids of `--cluster` in ascending order: the first voters of a new cluster.
pub fn ids_sorted(members: &std::collections::HashMap<u64, String>) -> Vec<u64> {
    let mut ids: Vec<u64> = members.keys().copied().collect();
    ids.sort_unstable();
    ids
}

/// An address book from `--cluster` (peer addresses only).
pub fn from_cluster(members: &std::collections::HashMap<u64, String>) -> AddressBook {
    members
        .iter()
        .map(|(id, peer)| {
            (
                *id,
                MemberAddr {
                    peer_addr: peer.clone(),
                    http_addr: None,
                },
            )
        })
        .collect()
}

/// The address book after installing a snapshot that carried `snapshot`: members missing from
/// it are gone, members this node did not know are learned from it, and the addresses this node
/// already has for a member are kept (each node may reach a member at an address of its own, as
/// `--cluster` allows: behind a proxy, a NAT, another network).
pub fn merge_snapshot(current: &AddressBook, snapshot: &AddressBook) -> AddressBook {
    snapshot
        .iter()
        .map(|(id, addr)| (*id, current.get(id).unwrap_or(addr).clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut b = AddressBook::new();
        b.insert(
            4,
            MemberAddr {
                peer_addr: "n4:7101".into(),
                http_addr: Some("n4:7001".into()),
            },
        );
        assert_eq!(decode(&encode(&b)).ok(), Some(b));
        assert!(decode(b"{\"4\": garbage").is_err());
        // After a snapshot: 4 is learned, 2 keeps this node's address for it, 3 is gone.
        let addr = |p: &str| MemberAddr {
            peer_addr: p.into(),
            http_addr: None,
        };
        let current: AddressBook = [(2, addr("mine:2")), (3, addr("mine:3"))].into();
        let snapshot: AddressBook = [(2, addr("theirs:2")), (4, addr("theirs:4"))].into();
        let merged = merge_snapshot(&current, &snapshot);
        assert_eq!(merged, [(2, addr("mine:2")), (4, addr("theirs:4"))].into());
        let ctx: JoinContext = serde_json::from_str(r#"{"id": 5, "peer_addr": "a:1"}"#).unwrap();
        assert_eq!(ctx.addr.http_addr, None);
    }
}
