//! A follower's read-index request answered by the leader without a heartbeat round, when
//! the leader and the follower that asks are a quorum of the voters (three voters, or two).
//!
//! raft-rs (`ReadOnlyOption::Safe`) answers every read-index request after a heartbeat round
//! that a quorum acknowledges. For a follower's request in a three-voter cluster the round
//! confirms nothing the request does not already show: see [`answer_at_once`]. Measured: CPU
//! per linearizable read at 15,000/s 0.78x, and 64 readers +9% (docs/benchmarks.md).

use raft::RawNode;

use crate::storage::RaftLogStore;

/// The leader's answer to a follower's read-index request that needs no heartbeat round, if
/// there is one (None: step the request into raft-rs, which starts a round).
///
/// A round shows that a quorum of voters had not moved past this leader's term `t` after the
/// read arrived, so that no leader of a newer term could have acknowledged a write the read
/// must see. For the sender, the answer itself shows it: it carries term `t`, and the sender's
/// raft-rs takes it (`Raft::step`) only while its own term is at most `t` (a message of a lower
/// term is dropped; one of a higher term makes it a follower at `t` first). Terms never go
/// back, so the sender had not voted in any term above `t` by the time the read arrived (nor
/// until it took the answer). This leader, leading at `t` now, has not either. So when the two are
/// a quorum of the voters (with three voters, or two; the sender must be one), no leader of a
/// newer term was elected before the read arrived: that election needed a vote from one of the
/// two. Every write acknowledged before the read was then committed at `t` or earlier, and this
/// leader's commit index covers it, provided that (as raft-rs requires of every read index) it
/// has committed an entry of its own term, and that no membership change is in its log beyond
/// what it applied (a change it has not applied may already let a quorum it does not count
/// elect a leader). The argument needs the answer stepped into raft-rs on the sender like any
/// message (`ready.rs` does), and the request's context matched there (`reads.rs`).
/// With five voters the two are not a quorum, and raft-rs's round is used.
///
/// Known limit, shared with raft-rs's round: a voter that applies a membership change later
/// than the others may still campaign under the old configuration (etcd-io/etcd#7625).
///
/// The planted bug `pair-quorum` drops the quorum condition (tests/tests/consistency.rs shows a
/// stale read with five voters). Also answers the planted bug `early-read-index`: the answer a
/// correct leader never gives (its commit index before it has committed in its term; raft-rs
/// drops such requests).
pub(super) fn answer_at_once(
    raw: &RawNode<RaftLogStore>,
    msg: &raft::eraftpb::Message,
) -> Option<raft::eraftpb::Message> {
    use raft::eraftpb::MessageType;
    if msg.get_msg_type() != MessageType::MsgReadIndex
        || raw.raft.state != raft::StateRole::Leader
        || msg.entries.len() != 1
        || msg.from == raw.raft.id
    {
        return None;
    }
    let raft = &raw.raft;
    let committed_in_term = raft.commit_to_current_term();
    let early = !committed_in_term && crate::planted::active(crate::planted::Bug::EarlyReadIndex);
    let at_once = committed_in_term
        && raft.prs().conf().voters().contains(msg.from)
        && raft.pending_conf_index <= raft.raft_log.applied
        && (raft.prs().has_quorum(
            &[raft.id, msg.from]
                .into_iter()
                .collect::<fxhash::FxHashSet<u64>>(),
        ) || crate::planted::active(crate::planted::Bug::PairQuorum));
    if !early && !at_once {
        return None;
    }
    let mut resp = raft::eraftpb::Message::default();
    resp.set_msg_type(MessageType::MsgReadIndexResp);
    resp.to = msg.from;
    resp.from = raft.id;
    resp.term = raft.term;
    resp.index = raft.raft_log.committed;
    resp.entries = msg.entries.clone();
    if at_once {
        crate::metrics::metrics().read_index_at_once.inc();
    } else {
        tracing::warn!(
            committed = resp.index,
            to = msg.from,
            "planted early-read-index: a follower's read answered before the term's first commit"
        );
    }
    Some(resp)
}

#[cfg(test)]
#[path = "quorum_read_tests.rs"]
mod tests;
