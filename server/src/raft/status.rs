//! The status report: a node's view of itself and, on the leader, of every member.

use std::time::Duration;

use keel_api::cluster::{Progress, Status};
use raft::{RawNode, StateRole};

use super::peers::{voters, Peers};
use super::shared::role_of;
use crate::members::AddressBook;
use crate::storage::RaftLogStore;

/// A node's view of itself and, on the leader, of every member: the API's [`Status`] (defined
/// once, in keel-api) without its member list, which the HTTP layer fills in from `addresses`
/// and the addresses peers announce.
#[derive(Debug, Clone)]
pub struct StatusReport {
    /// Everything `/v1/status` says but `members` (left empty here).
    pub status: Status,
    /// Every member's addresses.
    pub addresses: AddressBook,
}

impl StatusReport {
    /// The voter (other than the leader) best placed to lead next: reachable first, then the
    /// highest match index. None off the leader, or with no other voter.
    pub fn best_successor(&self) -> Option<u64> {
        self.status
            .progress
            .iter()
            .flatten()
            .filter(|p| p.voter && p.id != self.status.id)
            .max_by_key(|p| (p.reachable, p.match_index))
            .map(|p| p.id)
    }
}

/// What the Ready loop knows beyond raft-rs, for [`report`].
pub(super) struct Known<'a> {
    /// This node's id.
    pub(super) id: u64,
    /// The election timeout: a peer not heard from for this long is unreachable.
    pub(super) election: Duration,
    /// Followers' applied indexes and last contact.
    pub(super) peers: &'a Peers,
    /// This node's applied index.
    pub(super) applied: u64,
    /// Every member's addresses.
    pub(super) members: &'a AddressBook,
}

/// Builds the status report from raft-rs's state and what the loop knows.
pub(super) fn report(raw: &RawNode<RaftLogStore>, known: Known<'_>) -> StatusReport {
    let raft = &raw.raft;
    let cs = raw.store().conf_state();
    let last_index = raft.raft_log.last_index();
    let progress = (raft.state == StateRole::Leader).then(|| {
        let voters = voters(cs);
        let mut members: Vec<Progress> = raft
            .prs()
            .iter()
            .map(|(id, pr)| {
                let is_self = *id == known.id;
                let info = known.peers.get(*id);
                let since = info.last_heard.map(|t| t.elapsed());
                Progress {
                    id: *id,
                    voter: voters.contains(id),
                    match_index: pr.matched,
                    applied_index: if is_self { known.applied } else { info.applied },
                    lag: last_index.saturating_sub(pr.matched),
                    reachable: is_self || since.is_some_and(|d| d < known.election),
                    last_contact_ms: if is_self {
                        Some(0)
                    } else {
                        since.map(|d| d.as_millis() as u64)
                    },
                }
            })
            .collect();
        members.sort_by_key(|m| m.id);
        members
    });
    StatusReport {
        status: Status {
            id: known.id,
            role: role_of(raft.state),
            term: raft.term,
            leader: (raft.leader_id != 0).then_some(raft.leader_id),
            commit_index: raft.raft_log.committed,
            applied_index: known.applied,
            first_index: raw.store().truncated().0 + 1,
            last_index,
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            progress,
            members: Vec::new(),
        },
        addresses: known.members.clone(),
    }
}
