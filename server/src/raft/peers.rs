//! What the leader knows of its peers beyond raft-rs's progress: each follower's reported
//! applied index (for `sync` writes) and when it was last heard from (for the status report and
//! the choice of a successor).

use std::collections::HashMap;
use std::time::Instant;

use raft::eraftpb::ConfState;

/// One peer.
#[derive(Default, Clone, Copy)]
pub(super) struct PeerInfo {
    /// The highest applied index it reported.
    pub(super) applied: u64,
    /// When a Raft message from it was last accepted.
    pub(super) last_heard: Option<Instant>,
}

/// Every peer this node has heard from.
#[derive(Default)]
pub(super) struct Peers {
    /// By member id (entries for removed members are harmless: only voters are consulted).
    info: HashMap<u64, PeerInfo>,
}

impl Peers {
    /// Notes that a Raft message from `id` was accepted at `now`.
    pub(super) fn heard_from(&mut self, id: u64, now: Instant) {
        self.info.entry(id).or_default().last_heard = Some(now);
    }

    /// Notes `id`'s report of its applied index (reports may arrive out of order).
    pub(super) fn report_applied(&mut self, id: u64, applied: u64) {
        let info = self.info.entry(id).or_default();
        info.applied = info.applied.max(applied);
    }

    /// `id` came back with its data wiped: what it reported applying is gone with its data, so
    /// its reports start over (it counts as having applied nothing until it reports again).
    pub(super) fn wiped(&mut self, id: u64) {
        if let Some(info) = self.info.get_mut(&id) {
            info.applied = 0;
        }
    }

    /// What is known of `id` (nothing: the default).
    pub(super) fn get(&self, id: u64) -> PeerInfo {
        self.info.get(&id).copied().unwrap_or_default()
    }

    /// The lowest applied index over `voters`, counting this node (`me`) at `my_applied`.
    pub(super) fn min_voter_applied(&self, voters: &[u64], me: u64, my_applied: u64) -> u64 {
        voters
            .iter()
            .map(|&id| {
                if id == me {
                    my_applied
                } else {
                    self.get(id).applied
                }
            })
            .min()
            .unwrap_or(0)
    }
}

impl Peers {
    /// The highest index every voter of `cs` has applied: what a `sync` write waits for (with
    /// the planted bug `learner-quorum`, learners wrongly counted).
    pub(super) fn sync_floor(&self, cs: &ConfState, me: u64, my_applied: u64) -> u64 {
        let voters = voters(cs);
        if crate::planted::active(crate::planted::Bug::LearnerQuorum) {
            self.planted_learner_quorum(&voters, &cs.learners, me, my_applied)
        } else {
            self.min_voter_applied(&voters, me, my_applied)
        }
    }

    /// The planted bug `learner-quorum`: the highest index that as many members as there are
    /// voters have applied, learners counted — wrong, a learner can stand in for a voter.
    pub(super) fn planted_learner_quorum(
        &self,
        voters: &[u64],
        learners: &[u64],
        me: u64,
        my_applied: u64,
    ) -> u64 {
        let mut applied: Vec<u64> = voters
            .iter()
            .chain(learners.iter())
            .map(|&id| {
                if id == me {
                    my_applied
                } else {
                    self.get(id).applied
                }
            })
            .collect();
        applied.sort_unstable_by(|a, b| b.cmp(a));
        applied
            .get(voters.len().saturating_sub(1))
            .copied()
            .unwrap_or(0)
    }
}

/// Every voter of `cs`, incoming and outgoing (joint consensus), sorted.
pub(super) fn voters(cs: &ConfState) -> Vec<u64> {
    let mut v: Vec<u64> = cs
        .voters
        .iter()
        .chain(cs.voters_outgoing.iter())
        .copied()
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_counts_every_voter_and_never_lowers_a_report() {
        let mut p = Peers::default();
        p.report_applied(2, 10);
        p.report_applied(2, 7);
        p.report_applied(3, 12);
        assert_eq!(
            p.get(2).applied,
            10,
            "a late, lower report does not lower the index"
        );
        assert_eq!(p.min_voter_applied(&[1, 2, 3], 1, 20), 10);
        assert_eq!(
            p.min_voter_applied(&[1, 2, 3, 4], 1, 20),
            0,
            "4 never reported"
        );
        assert_eq!(p.min_voter_applied(&[1], 1, 20), 20);
        // A wiped peer has applied nothing any more, and its new, lower reports count.
        p.wiped(3);
        assert_eq!(p.min_voter_applied(&[1, 2, 3], 1, 20), 0);
        p.report_applied(3, 4);
        assert_eq!(p.min_voter_applied(&[1, 2, 3], 1, 20), 4);
        let cs = ConfState {
            voters: vec![3, 1],
            voters_outgoing: vec![1, 2],
            ..Default::default()
        };
        assert_eq!(voters(&cs), vec![1, 2, 3]);
    }
}
