//! Membership changes as the Ready loop applies them: to raft-rs, to the persisted conf state, to
//! the address book, and (by the caller, after the batch is written) to the transport.
//!
//! A change that adds a member carries the member's addresses ([`JoinContext`]) in the context
//! of its log entry, so every node learns a new member's address at the same log index; the
//! address book is written in the same batch as the conf state it belongs to.

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType};
use raft::RawNode;
use raft_proto::ConfChangeI;

use crate::members::{AddressBook, JoinContext, MemberAddr};
use crate::sm::ApplyBatch;
use crate::storage::{meta, RaftLogStore, StorageError};

/// A member to start (Some) or stop (None) talking to, once the batch is written.
pub(super) type PeerChange = (u64, Option<MemberAddr>);

/// Applies the conf change in `entry`. The outer error is a storage failure (the node must
/// stop); the inner one a change that raft-rs refused or that did not decode (the entry is
/// applied as a no-op and its proposer told why).
pub(super) fn apply(
    raw: &mut RawNode<RaftLogStore>,
    entry: &Entry,
    batch: &mut ApplyBatch<'_>,
    members: &mut AddressBook,
    peer_changes: &mut Vec<PeerChange>,
) -> Result<Result<(), String>, StorageError> {
    let cc = if entry.get_entry_type() == EntryType::EntryConfChange {
        ConfChange::parse_from_bytes(&entry.data).map(|cc| cc.into_v2())
    } else {
        ConfChangeV2::parse_from_bytes(&entry.data)
    };
    let cc = match cc {
        Ok(cc) => cc,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let cs = match raw.apply_conf_change(&cc) {
        Ok(cs) => cs,
        Err(e) => return Ok(Err(e.to_string())),
    };
    meta::put_conf_state(raw.store().db(), batch.write_batch(), &cs)?;
    raw.mut_store().set_conf_state(cs);
    // raft-rs carries the proposal's context in the entry, not in the change.
    let joined: Option<JoinContext> = serde_json::from_slice(&entry.context).ok();
    for change in cc.get_changes() {
        let id = change.node_id;
        match change.get_change_type() {
            ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                if let Some(j) = joined.as_ref().filter(|j| j.id == id) {
                    members.insert(id, j.addr.clone());
                    peer_changes.push((id, Some(j.addr.clone())));
                }
            }
            ConfChangeType::RemoveNode => {
                members.remove(&id);
                peer_changes.push((id, None));
            }
        }
    }
    meta::put_members(raw.store().db(), batch.write_batch(), members)?;
    Ok(Ok(()))
}
