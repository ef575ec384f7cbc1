//! What a Raft message from a peer must satisfy before raft-rs sees it. raft-rs trusts its
//! peers: some malformed messages make it abort (`fatal!`) or index out of bounds, which would
//! stop the node. A member never sends them, but a peer with a bug, a corrupted frame that
//! still decodes, or (without TLS) a stranger could; so they are refused here, logged by the
//! caller, and the node goes on. Each rule names the raft-rs 0.7 abort it prevents, but one:
//! proposals, which no node sends, are refused, so that a peer cannot have the leader log an
//! entry without the leader's stamps (one that claims to be the leader can still send appends:
//! Raft trusts its members, and TLS keeps strangers out, docs/security.md).

use raft::eraftpb::{ConfState, Message, MessageType};

/// A term no cluster reaches (an election per nanosecond would take 292 years); larger ones
/// are forged, and would overflow when the node next campaigns.
pub const MAX_TERM: u64 = u64::MAX / 2;

/// What the guard needs of the local log.
pub struct LogView<'a> {
    /// The last index of the log.
    pub last_index: u64,
    /// The commit index.
    pub committed: u64,
    /// The term of the entry at an index, when known (not compacted, not beyond the log).
    pub term: &'a dyn Fn(u64) -> Option<u64>,
}

/// [`admit`] against raft-rs's own log.
pub fn admit_to<T: raft::Storage>(
    msg: &mut Message,
    raft_log: &raft::RaftLog<T>,
) -> Result<(), String> {
    let term = |i: u64| raft_log.term(i).ok().filter(|&t| t != 0);
    let view = LogView {
        last_index: raft_log.last_index(),
        committed: raft_log.committed,
        term: &term,
    };
    admit(msg, &view)
}

/// Checks `msg` (and clamps what is safe to clamp); Err says why it is refused.
pub fn admit(msg: &mut Message, log: &LogView<'_>) -> Result<(), String> {
    if msg.term > MAX_TERM || msg.log_term > MAX_TERM {
        return Err(format!("term {} is beyond any real term", msg.term));
    }
    if msg.reject_hint > MAX_TERM || msg.priority != 0 || msg.deprecated_priority != 0 {
        // keel gives no member a priority; raft-rs answers a vote with a negative priority at
        // term 0 (a node that just joined) with a message of term 0, and aborts sending it.
        return Err("a priority or an impossible reject hint".into());
    }
    let kind = msg.get_msg_type();
    let local_form = matches!(kind, MessageType::MsgPropose | MessageType::MsgReadIndex);
    if !local_form && msg.term == 0 {
        // Only forwarded proposals and read indexes travel without a term; raft-rs takes any
        // other message of term 0 for a local one (and aborts answering a vote of term 0).
        return Err(format!("{kind:?} without a term"));
    }
    match kind {
        // keel transfers leadership on the leader itself; a follower given this message
        // forwards it to the leader with its term set, and raft-rs aborts sending that.
        MessageType::MsgTransferLeader => {
            return Err("leadership transfers are never sent between nodes".into());
        }
        // raft-rs forwards these to the leader as "local" messages with term 0 and aborts when
        // sending one with a term; the leader indexes the first entry of a read index request.
        MessageType::MsgPropose | MessageType::MsgReadIndex => {
            if msg.term != 0 {
                return Err(format!("{kind:?} with term {}", msg.term));
            }
            if msg.entries.is_empty() {
                return Err(format!("{kind:?} without entries"));
            }
            // keel proposes only while it leads (`writes.rs` refuses otherwise) and forwards a
            // client's write as a request of its own, so no node sends a proposal. One from a
            // peer would be logged without the leader's stamps (its apply version, its clock):
            // an entry stamped for a newer apply version stopped every node's apply.
            if kind == MessageType::MsgPropose {
                return Err("a proposal from a peer (keel's nodes never send one)".into());
            }
        }
        MessageType::MsgAppend => {
            // The entry an append follows has a term, unless the append starts the log: raft-rs
            // takes term 0 beyond its log for a match and commits entries it does not have.
            if msg.log_term == 0 && msg.index != 0 {
                return Err(format!("append after index {} of term 0", msg.index));
            }
            // raft-rs looks for a conflict entry by entry and aborts when one conflicts with a
            // committed entry: entries must follow `index` without a gap, have a term, and
            // never rewrite what is committed here.
            for (i, e) in msg.entries.iter().enumerate() {
                let expected = msg.index.saturating_add(1 + i as u64);
                if e.index != expected || e.term == 0 {
                    return Err(format!(
                        "append entry {i} has index {} term {} where index {expected} follows",
                        e.index, e.term
                    ));
                }
                if e.index <= log.committed {
                    if let Some(t) = (log.term)(e.index) {
                        if t != e.term {
                            return Err(format!(
                                "append rewrites committed entry {} (term {t} to {})",
                                e.index, e.term
                            ));
                        }
                    }
                }
            }
        }
        MessageType::MsgHeartbeat if msg.commit > log.last_index => {
            // The leader believes we hold entries we do not (our data was wiped): raft-rs would
            // abort on such a commit index. Taking none of it is always safe.
            msg.commit = log.committed;
        }
        MessageType::MsgAppendResponse if !msg.reject && msg.index > log.last_index => {
            return Err(format!(
                "acknowledges index {} beyond the last, {}",
                msg.index, log.last_index
            ));
        }
        MessageType::MsgSnapshot => {
            let meta = msg.get_snapshot().get_metadata();
            // Term 0 matches any index beyond the log in raft-rs, which then commits up to the
            // snapshot's index without having it.
            if meta.index == 0 || meta.term == 0 {
                return Err(format!(
                    "snapshot at index {} of term {}",
                    meta.index, meta.term
                ));
            }
            conf_state_restorable(meta.get_conf_state())?;
        }
        _ => {}
    }
    Ok(())
}

/// Whether raft-rs can restore `cs` from a snapshot (it aborts when it cannot, or when the
/// result differs from `cs`). keel makes one membership change at a time and never enters a
/// joint configuration, so a snapshot's configuration is plain: voters (at least one) and
/// learners, disjoint, no id 0.
fn conf_state_restorable(cs: &ConfState) -> Result<(), String> {
    if !cs.voters_outgoing.is_empty() || !cs.learners_next.is_empty() || cs.auto_leave {
        return Err(format!("snapshot with a joint configuration {cs:?}"));
    }
    if cs.voters.is_empty() {
        return Err("snapshot whose configuration has no voter".into());
    }
    let ids = cs.voters.iter().chain(&cs.learners);
    if ids.clone().any(|&id| id == 0) || cs.learners.iter().any(|l| cs.voters.contains(l)) {
        return Err(format!("snapshot with an impossible configuration {cs:?}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::eraftpb::Entry;

    fn view(term: &dyn Fn(u64) -> Option<u64>) -> LogView<'_> {
        LogView {
            last_index: 10,
            committed: 8,
            term,
        }
    }

    fn msg(t: MessageType, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.term = term;
        m
    }

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    #[test]
    fn messages_raft_rs_would_abort_on_are_refused() {
        let terms = |i: u64| (i <= 10).then_some(2);
        let log = view(&terms);
        // Read indexes: term 0 and at least one entry. Proposals: never from a peer.
        let mut m = msg(MessageType::MsgPropose, 0);
        assert!(admit(&mut m, &log).is_err(), "empty proposal");
        m.entries.push(entry(0, 0));
        let why = admit(&mut m, &log).expect_err("a proposal from a peer");
        assert!(why.contains("a proposal from a peer"), "{why}");
        let mut vote = msg(MessageType::MsgRequestVote, 0);
        assert!(admit(&mut vote, &log).is_err(), "a vote without a term");
        m.term = 3;
        let why = admit(&mut m, &log).expect_err("a proposal with a term");
        assert!(why.contains("with term 3"), "{why}");
        let mut m = msg(MessageType::MsgReadIndex, 0);
        assert!(admit(&mut m, &log).is_err(), "read index without context");
        m.entries.push(entry(0, 0));
        assert!(admit(&mut m, &log).is_ok());
        // Appends: contiguous, and never rewriting a committed entry.
        let mut m = msg(MessageType::MsgAppend, 2);
        m.index = 8;
        m.log_term = 2;
        m.entries = vec![entry(9, 2), entry(10, 2), entry(11, 2)].into();
        assert!(admit(&mut m, &log).is_ok());
        m.entries = vec![entry(9, 2), entry(11, 2)].into();
        assert!(admit(&mut m, &log).is_err(), "a gap");
        m.index = 8;
        m.entries = vec![entry(1, 7)].into();
        assert!(admit(&mut m, &log).is_err(), "out of place");
        m.index = 6;
        m.entries = vec![entry(7, 2), entry(8, 2), entry(9, 5)].into();
        assert!(admit(&mut m, &log).is_ok(), "committed ones unchanged");
        m.entries = vec![entry(7, 2), entry(8, 5)].into();
        assert!(admit(&mut m, &log).is_err(), "a committed entry rewritten");
        // Leadership transfers and priorities: never sent by keel's nodes.
        let mut m = msg(MessageType::MsgTransferLeader, 2);
        assert!(admit(&mut m, &log).is_err());
        let mut m = msg(MessageType::MsgRequestPreVote, 3);
        m.priority = -1;
        assert!(admit(&mut m, &log).is_err());
        // Terms no cluster reaches.
        let mut m = msg(MessageType::MsgHeartbeat, MAX_TERM + 1);
        assert!(admit(&mut m, &log).is_err());
        // Heartbeats beyond our log are clamped, not refused.
        let mut m = msg(MessageType::MsgHeartbeat, 2);
        m.commit = 50;
        assert!(admit(&mut m, &log).is_ok());
        assert_eq!(m.commit, 8);
        // Acknowledgements of entries we never had.
        let mut m = msg(MessageType::MsgAppendResponse, 2);
        m.index = 11;
        assert!(admit(&mut m, &log).is_err());
        m.reject = true;
        assert!(admit(&mut m, &log).is_ok(), "a rejection's index is a hint");
        // Appends after an entry of term 0, or of entries without a term.
        let mut m = msg(MessageType::MsgAppend, 2);
        m.index = 20;
        m.commit = 20;
        assert!(admit(&mut m, &log).is_err(), "term 0 beyond the log");
        m.index = 10;
        m.log_term = 2;
        m.entries = vec![entry(11, 0)].into();
        assert!(admit(&mut m, &log).is_err(), "an entry without a term");
        // Snapshots: a term, and a plain configuration raft-rs can restore.
        let mut m = msg(MessageType::MsgSnapshot, 2);
        m.mut_snapshot().mut_metadata().index = 20;
        m.mut_snapshot().mut_metadata().term = 2;
        assert!(admit(&mut m, &log).is_err(), "no voter");
        m.mut_snapshot().mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        assert!(admit(&mut m, &log).is_ok());
        m.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![3];
        assert!(admit(&mut m, &log).is_err(), "a voter and a learner");
        m.mut_snapshot().mut_metadata().mut_conf_state().learners = vec![4];
        m.mut_snapshot().mut_metadata().mut_conf_state().auto_leave = true;
        assert!(admit(&mut m, &log).is_err(), "joint");
        m.mut_snapshot().mut_metadata().mut_conf_state().auto_leave = false;
        assert!(admit(&mut m, &log).is_ok());
        m.mut_snapshot().mut_metadata().term = 0;
        assert!(admit(&mut m, &log).is_err(), "term 0");
    }
}
