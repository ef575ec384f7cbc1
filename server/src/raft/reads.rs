//! Read-index batching.
//!
//! Read requests share raft-rs `read_index` calls: at most [`ROUNDS_IN_FLIGHT`] are out at a
//! time, and every read that arrives meanwhile waits for the next one, which they then share.
//! Under load a round therefore serves every read that came during the one before (one
//! heartbeat round on the leader for many reads, as etcd does); alone, a read waits for one
//! round as before. A read never joins a round already asked: its index must be taken after the
//! read arrived. The loop answers with the read index; the caller then waits for the applied
//! index (published on a watch channel) to reach it and reads RocksDB itself.
//!
//! raft-rs drops read-index requests silently (no leader, or a leader that has not committed in
//! its term), so pending requests are re-issued periodically and fail after the read timeout.
//! The leader also drops a request whose context it already holds, so a context is this node's id
//! and a number that starts at random in every process: unique across the cluster and across
//! restarts (a reused context could hand a new read the read index of an older one).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use raft::{RawNode, ReadState};
use tokio::sync::oneshot;

use crate::error::ReadError;
use crate::storage::RaftLogStore;

/// The planted bug `early-read-index` on the leader, for a follower's read-index request: the
/// answer a correct leader never gives (its commit index before it has committed in its term;
/// raft-rs drops such requests). None unless the bug is planted and applies.
pub(super) fn planted_early_answer(
    raw: &RawNode<RaftLogStore>,
    msg: &raft::eraftpb::Message,
) -> Option<raft::eraftpb::Message> {
    use raft::eraftpb::MessageType;
    if !crate::planted::active(crate::planted::Bug::EarlyReadIndex)
        || msg.get_msg_type() != MessageType::MsgReadIndex
        || raw.raft.state != raft::StateRole::Leader
        || raw.raft.commit_to_current_term()
    {
        return None;
    }
    let mut resp = raft::eraftpb::Message::default();
    resp.set_msg_type(MessageType::MsgReadIndexResp);
    resp.to = msg.from;
    resp.from = raw.raft.id;
    resp.term = raw.raft.term;
    resp.index = raw.raft.raft_log.committed;
    resp.entries = msg.entries.clone();
    tracing::warn!(
        committed = resp.index,
        to = msg.from,
        "planted early-read-index: a follower's read answered before the term's first commit"
    );
    Some(resp)
}

/// Read-index rounds asked of raft-rs and not yet answered, at most.
const ROUNDS_IN_FLIGHT: usize = 1;

/// Where a read index goes.
pub(super) type Reply = oneshot::Sender<Result<u64, ReadError>>;

/// Read-index requests that share one context.
struct ReadGroup {
    /// When the group fails with a timeout.
    deadline: Instant,
    /// Every read waiting for this read index.
    waiters: Vec<Reply>,
}

/// Every read-index request of this node not yet answered.
pub(super) struct Reads {
    /// This node's id, the first half of every context.
    id: u64,
    /// How long a request may stay unanswered.
    timeout: Duration,
    /// Requests that arrived since the last [`Reads::issue`].
    new: Vec<Reply>,
    /// When the oldest of them arrived: their deadline counts from it, also while they wait
    /// behind a round in flight.
    new_since: Option<Instant>,
    /// Requests handed to raft-rs, by context number.
    groups: HashMap<u64, ReadGroup>,
    /// The next context number.
    next_ctx: u64,
}

impl Reads {
    /// No requests yet; contexts start at random so that a restarted node never reuses one a
    /// leader may still hold.
    pub(super) fn new(id: u64, timeout: Duration) -> Self {
        Reads {
            id,
            timeout,
            new: Vec::new(),
            new_since: None,
            groups: HashMap::new(),
            next_ctx: rand::random::<u64>() >> 1,
        }
    }

    /// Queues a request for the next [`Reads::issue`].
    pub(super) fn push(&mut self, reply: Reply) {
        self.new_since.get_or_insert_with(Instant::now);
        self.new.push(reply);
    }

    /// Whether reads wait behind a round in flight (which the loop then asks again sooner).
    pub(super) fn waiting_behind(&self) -> bool {
        !self.new.is_empty() && !self.groups.is_empty()
    }

    /// Turns the requests queued since the last call into one read-index request, unless
    /// [`ROUNDS_IN_FLIGHT`] are out already (they then wait for the next call after an answer).
    /// Fails them at once when no leader is known. True if it asked raft-rs for a read index.
    pub(super) fn issue(&mut self, raw: &mut RawNode<RaftLogStore>) -> bool {
        if self.new.is_empty() {
            return false;
        }
        if raw.raft.leader_id == 0 {
            self.new_since = None;
            for w in std::mem::take(&mut self.new) {
                let _ = w.send(Err(ReadError::NoLeader));
            }
            return false;
        }
        if self.groups.len() >= ROUNDS_IN_FLIGHT {
            return false;
        }
        let waiters = std::mem::take(&mut self.new);
        let since = self.new_since.take().unwrap_or_else(Instant::now);
        if crate::planted::active(crate::planted::Bug::EarlyReadIndex)
            && raw.raft.state == raft::StateRole::Leader
            && !raw.raft.commit_to_current_term()
        {
            let committed = raw.raft.raft_log.committed;
            tracing::warn!(
                committed,
                reads = waiters.len(),
                "planted early-read-index: answered before the term's first commit"
            );
            for w in waiters {
                let _ = w.send(Ok(committed));
            }
            return false;
        }
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.groups.insert(
            ctx,
            ReadGroup {
                deadline: since + self.timeout,
                waiters,
            },
        );
        raw.read_index(self.wire_ctx(ctx));
        true
    }

    /// Asks again for every read index not yet answered (raft-rs drops requests it cannot serve
    /// and requests sent to a leader that has since changed). Outside a Ready cycle only: a
    /// follower's read_index emits a message, which raft-rs forbids between ready() and
    /// advance().
    pub(super) fn reissue(&mut self, raw: &mut RawNode<RaftLogStore>) {
        if raw.raft.leader_id == 0 {
            return;
        }
        if crate::planted::active(crate::planted::Bug::EarlyReadIndex)
            && raw.raft.state == raft::StateRole::Leader
            && !raw.raft.commit_to_current_term()
        {
            let committed = raw.raft.raft_log.committed;
            let states: Vec<ReadState> = self
                .groups
                .keys()
                .map(|ctx| ReadState {
                    index: committed,
                    request_ctx: self.wire_ctx(*ctx),
                })
                .collect();
            tracing::warn!(
                committed,
                reads = states.len(),
                "planted early-read-index: waiting reads answered before the term's first commit"
            );
            self.answer(states);
            return;
        }
        let ctxs: Vec<u64> = self.groups.keys().copied().collect();
        for ctx in ctxs {
            raw.read_index(self.wire_ctx(ctx));
        }
    }

    /// Answers the groups whose read states raft-rs returned (others' contexts are ignored).
    pub(super) fn answer(&mut self, states: Vec<ReadState>) {
        for rs in states {
            let Some(ctx) = self.own_ctx(&rs.request_ctx) else {
                continue;
            };
            if let Some(group) = self.groups.remove(&ctx) {
                for w in group.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
    }

    /// Fails the groups whose deadline has passed (`leader` is named in the message).
    pub(super) fn expire(&mut self, now: Instant, leader: Option<u64>) {
        if self.new_since.is_some_and(|t| t + self.timeout <= now) {
            self.new_since = None;
            let msg = format!(
                "no read index within {} ms (waiting behind another round; leader: {leader:?})",
                self.timeout.as_millis()
            );
            for w in std::mem::take(&mut self.new) {
                let _ = w.send(Err(ReadError::Timeout(msg.clone())));
            }
        }
        let expired: Vec<u64> = self
            .groups
            .iter()
            .filter(|(_, g)| g.deadline <= now)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in expired {
            if let Some(group) = self.groups.remove(&ctx) {
                let msg = format!(
                    "no read index within {} ms (leader: {leader:?})",
                    self.timeout.as_millis()
                );
                for w in group.waiters {
                    let _ = w.send(Err(ReadError::Timeout(msg.clone())));
                }
            }
        }
    }

    /// The context a read-index request carries: this node's id and the request's number.
    fn wire_ctx(&self, ctx: u64) -> Vec<u8> {
        let mut wire = Vec::with_capacity(16);
        wire.extend_from_slice(&self.id.to_be_bytes());
        wire.extend_from_slice(&ctx.to_be_bytes());
        wire
    }

    /// The request number in a context made by [`Reads::wire_ctx`] on this node.
    fn own_ctx(&self, wire: &[u8]) -> Option<u64> {
        let (node, ctx) = wire.split_at_checked(8)?;
        if node != self.id.to_be_bytes() {
            return None;
        }
        Some(u64::from_be_bytes(ctx.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_carry_the_node_id_and_foreign_ones_are_ignored() {
        let mut mine = Reads::new(7, Duration::from_secs(1));
        let other = Reads::new(8, Duration::from_secs(1));
        let wire = mine.wire_ctx(42);
        assert_eq!(mine.own_ctx(&wire), Some(42));
        assert_eq!(
            other.own_ctx(&wire),
            None,
            "node 8 must not answer node 7's reads"
        );
        assert_eq!(
            mine.own_ctx(&wire[..12]),
            None,
            "a short context is not ours"
        );

        let (tx, mut rx) = oneshot::channel();
        mine.groups.insert(
            42,
            ReadGroup {
                deadline: Instant::now() + Duration::from_secs(60),
                waiters: vec![tx],
            },
        );
        mine.answer(vec![ReadState {
            index: 99,
            request_ctx: other.wire_ctx(42),
        }]);
        assert!(
            rx.try_recv().is_err(),
            "another node's read state answers nothing"
        );
        mine.answer(vec![ReadState {
            index: 99,
            request_ctx: wire,
        }]);
        assert!(matches!(rx.try_recv(), Ok(Ok(99))));
    }

    /// Reads that wait behind the round in flight time out from their own arrival, not from
    /// the round they end up in (found by review: they could wait twice the read timeout).
    #[test]
    fn reads_waiting_behind_a_round_expire_from_their_arrival() {
        let mut reads = Reads::new(1, Duration::from_millis(10));
        let (tx, mut rx) = oneshot::channel();
        reads.push(tx);
        let arrived = reads.new_since.expect("the arrival is kept");
        reads.expire(arrived + Duration::from_millis(9), Some(2));
        assert!(rx.try_recv().is_err(), "not yet");
        reads.expire(arrived + Duration::from_millis(10), Some(2));
        assert!(matches!(rx.try_recv(), Ok(Err(ReadError::Timeout(_)))));
        assert!(reads.new.is_empty() && reads.new_since.is_none());
    }

    #[test]
    fn unanswered_groups_expire() {
        let mut reads = Reads::new(1, Duration::from_millis(10));
        let (tx, mut rx) = oneshot::channel();
        let start = Instant::now();
        reads.groups.insert(
            1,
            ReadGroup {
                deadline: start + Duration::from_millis(10),
                waiters: vec![tx],
            },
        );
        reads.expire(start, Some(2));
        assert!(rx.try_recv().is_err(), "not yet");
        reads.expire(start + Duration::from_millis(10), Some(2));
        assert!(matches!(rx.try_recv(), Ok(Err(ReadError::Timeout(_)))));
    }
}
