//! Tests of [`answer_at_once`] on real raft-rs `RawNode`s over real RocksDB log stores: a leader
//! of three voters (and of five) made by stepping the votes and acknowledgements its followers
//! would send.

use raft::eraftpb::{ConfChange, ConfChangeType, Entry, Message, MessageType};
use raft::{RawNode, StateRole};

use super::answer_at_once;
use crate::raft::writes::batch_tests::raw_node;
use crate::storage::RaftLogStore;

/// Node 1 of `voters`, which has campaigned and won (votes from the next quorum − 1 voters)
/// but not yet committed anything in its term.
fn elected(dir: &std::path::Path, voters: &[u64]) -> RawNode<RaftLogStore> {
    let mut raw = raw_node(dir, 1, voters);
    raw.campaign().expect("campaign");
    let term = raw.raft.term;
    for &from in &voters[1..voters.len() / 2 + 1] {
        let mut vote = message(MessageType::MsgRequestVoteResponse, from);
        vote.term = term;
        raw.step(vote).expect("a vote");
    }
    assert_eq!(raw.raft.state, StateRole::Leader);
    persist(&mut raw);
    raw
}

/// Writes what raft-rs has to persist and advances, as the Ready loop does.
fn persist(raw: &mut RawNode<RaftLogStore>) {
    if !raw.has_ready() {
        return;
    }
    let mut rd = raw.ready();
    let hs = rd.hs().cloned();
    raw.mut_store()
        .append(rd.entries(), hs.as_ref(), false)
        .expect("append");
    let _ = rd.take_messages();
    let mut light = raw.advance(rd);
    let _ = light.take_messages();
    raw.advance_apply();
}

/// Followers `from` acknowledge the leader's whole log, which commits it.
fn acknowledge(raw: &mut RawNode<RaftLogStore>, from: &[u64]) {
    for &f in from {
        let mut ack = message(MessageType::MsgAppendResponse, f);
        ack.term = raw.raft.term;
        ack.index = raw.raft.raft_log.last_index();
        raw.step(ack).expect("an acknowledgement");
    }
    persist(raw);
    assert!(raw.raft.commit_to_current_term());
}

fn message(kind: MessageType, from: u64) -> Message {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = 1;
    m
}

/// A follower's read-index request, as raft-rs forwards it (term 0, the context as its one
/// entry).
fn read_request(from: u64) -> Message {
    let mut m = message(MessageType::MsgReadIndex, from);
    let e = Entry {
        data: b"ctx-42".to_vec().into(),
        ..Default::default()
    };
    m.entries = vec![e].into();
    m
}

#[test]
fn three_voters_answer_a_voters_request_at_once_with_the_commit_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = elected(dir.path(), &[1, 2, 3]);
    assert!(
        answer_at_once(&raw, &read_request(2)).is_none(),
        "no answer before the leader has committed an entry of its term"
    );
    acknowledge(&mut raw, &[2]);
    let resp = answer_at_once(&raw, &read_request(3)).expect("answered at once");
    assert_eq!(resp.get_msg_type(), MessageType::MsgReadIndexResp);
    assert_eq!((resp.from, resp.to), (1, 3));
    assert_eq!(resp.term, raw.raft.term);
    assert_eq!(resp.index, raw.raft.raft_log.committed);
    assert_eq!(resp.entries.len(), 1);
    assert_eq!(
        &resp.entries[0].data[..],
        b"ctx-42",
        "the request's context"
    );
}

#[test]
fn a_sender_that_is_not_a_voter_gets_a_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = elected(dir.path(), &[1, 2, 3]);
    acknowledge(&mut raw, &[2]);
    // Node 9 is no voter (a learner counts the same: it votes for nobody), so it and the
    // leader are not a quorum.
    assert!(answer_at_once(&raw, &read_request(9)).is_none());
    // A request with no context, or not a read-index request, is raft-rs's to handle.
    let mut bare = read_request(2);
    bare.entries.clear();
    assert!(answer_at_once(&raw, &bare).is_none());
    assert!(answer_at_once(&raw, &message(MessageType::MsgHeartbeatResponse, 2)).is_none());
}

#[test]
fn five_voters_always_get_a_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = elected(dir.path(), &[1, 2, 3, 4, 5]);
    acknowledge(&mut raw, &[2, 3]);
    // The leader and one follower are two of five: a newer leader could have been elected by
    // the other three without either of them.
    for from in 2..=5 {
        assert!(answer_at_once(&raw, &read_request(from)).is_none());
    }
}

#[test]
fn an_unapplied_membership_change_means_a_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = elected(dir.path(), &[1, 2, 3]);
    acknowledge(&mut raw, &[2]);
    assert!(answer_at_once(&raw, &read_request(2)).is_some());
    // A change that is in the log and not applied: once it is, a quorum this leader does not
    // count yet may elect a leader.
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = 4;
    raw.propose_conf_change(Vec::new(), cc)
        .expect("propose a change");
    persist(&mut raw);
    assert!(raw.raft.pending_conf_index > raw.raft.raft_log.applied);
    assert!(answer_at_once(&raw, &read_request(2)).is_none());
}

/// A learner is a member that votes for nobody: its request and the leader are no quorum of
/// the voters, so it gets a round, while a voter's request is still answered at once. Either
/// check alone (the sender a voter, the pair a quorum) refuses it: this pins that a learner
/// added through a real conf change is neither, as `a_sender_that_is_not_a_voter_gets_a_round`
/// pins it for a stranger.
#[test]
fn a_learners_request_gets_a_round() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = elected(dir.path(), &[1, 2, 3]);
    acknowledge(&mut raw, &[2]);
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddLearnerNode);
    cc.node_id = 4;
    raw.propose_conf_change(Vec::new(), cc.clone())
        .expect("propose a learner");
    persist(&mut raw);
    acknowledge(&mut raw, &[2]);
    raw.apply_conf_change(&cc).expect("apply the change");
    assert!(raw.raft.prs().conf().learners().contains(&4));
    assert!(raw.raft.pending_conf_index <= raw.raft.raft_log.applied);
    assert!(answer_at_once(&raw, &read_request(4)).is_none());
    assert!(answer_at_once(&raw, &read_request(2)).is_some());
}

#[test]
fn a_follower_answers_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = elected(dir.path(), &[1, 2, 3]);
    acknowledge(&mut raw, &[2]);
    // A newer term's leader appears: node 1 follows it.
    let mut heartbeat = message(MessageType::MsgHeartbeat, 2);
    heartbeat.term = raw.raft.term + 1;
    raw.step(heartbeat).expect("a heartbeat of a newer term");
    assert_eq!(raw.raft.state, StateRole::Follower);
    assert!(answer_at_once(&raw, &read_request(3)).is_none());
}

#[test]
fn two_voters_answer_and_a_single_voter_answers_no_stranger() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = elected(dir.path(), &[1, 2]);
    acknowledge(&mut raw, &[2]);
    assert!(answer_at_once(&raw, &read_request(2)).is_some());

    // Alone, the leader is a quorum by itself: only a voter's request could be answered, and
    // it has none to answer; a claimed sender 0 or a stranger gets nothing (raft-rs decides).
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alone = elected(dir.path(), &[1]);
    acknowledge(&mut alone, &[]);
    for from in [0, 9] {
        assert!(answer_at_once(&alone, &read_request(from)).is_none());
    }
}

/// Node `id` of `voters`, following node `leader` at `term` (it has heard its heartbeat).
fn following(
    dir: &std::path::Path,
    id: u64,
    voters: &[u64],
    leader: u64,
    term: u64,
) -> RawNode<RaftLogStore> {
    let mut raw = raw_node(dir, id, voters);
    let mut hb = message(MessageType::MsgHeartbeat, leader);
    hb.to = id;
    hb.term = term;
    raw.step(hb).expect("a heartbeat");
    assert_eq!(
        (raw.raft.state, raw.raft.leader_id, raw.raft.term),
        (StateRole::Follower, leader, term)
    );
    raw
}

/// The argument's other half, on the sender: the answer carries the leader's term, and a
/// follower that has moved to a newer term (it may have voted there) drops it.
#[test]
fn the_answer_is_taken_only_by_a_sender_still_at_the_leaders_term() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut leader = elected(dir.path(), &[1, 2, 3]);
    acknowledge(&mut leader, &[2]);
    let term = leader.raft.term;
    let resp = answer_at_once(&leader, &read_request(2)).expect("answered at once");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut same = following(dir.path(), 2, &[1, 2, 3], 1, term);
    same.step(resp.clone()).expect("the answer");
    assert_eq!(same.raft.read_states.len(), 1, "taken at the leader's term");
    assert_eq!(same.raft.read_states[0].index, resp.index);
    assert_eq!(&same.raft.read_states[0].request_ctx[..], b"ctx-42");

    let dir = tempfile::tempdir().expect("tempdir");
    let mut newer = following(dir.path(), 2, &[1, 2, 3], 3, term + 1);
    newer.step(resp).expect("the answer");
    assert!(
        newer.raft.read_states.is_empty(),
        "a follower of a newer term never takes it"
    );
}
