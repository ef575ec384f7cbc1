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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use raft::{RawNode, ReadState};
use tokio::sync::oneshot;

use super::read_queue::ReadQueue;
use super::shared::Shared;
use crate::error::ReadError;
use crate::storage::RaftLogStore;

/// The planted `no-read-reask`: the loop never asks again for read indexes raft-rs has not
/// answered (a request lost on the way then waits until it times out).
pub(super) fn planted_no_reask() -> bool {
    crate::planted::active(crate::planted::Bug::NoReadReask)
}

/// Read-index rounds asked of raft-rs and not yet answered, at most.
const ROUNDS_IN_FLIGHT: usize = 1;

/// Where a read index goes, with the read's place among those waiting (given back when the
/// loop answers the read or drops it, not when its client leaves: a client that asks and
/// leaves cannot pile up reads in the loop past `--max-pending`).
pub(super) struct Reply {
    tx: oneshot::Sender<Result<u64, ReadError>>,
    _place: Option<super::handle::ReadPlace>,
}

impl Reply {
    /// A client's read, holding `place`.
    pub(super) fn holding(
        tx: oneshot::Sender<Result<u64, ReadError>>,
        place: super::handle::ReadPlace,
    ) -> Self {
        Reply {
            tx,
            _place: Some(place),
        }
    }

    /// Sends the answer (Err with it when the reader is gone); the place goes back.
    pub(super) fn send(self, out: Result<u64, ReadError>) -> Result<(), Result<u64, ReadError>> {
        self.tx.send(out)
    }
}

/// A read the node asks for itself (a lease keepalive's), holding no client's place.
impl From<oneshot::Sender<Result<u64, ReadError>>> for Reply {
    fn from(tx: oneshot::Sender<Result<u64, ReadError>>) -> Self {
        Reply { tx, _place: None }
    }
}

/// A read waiting for its read index: when it fails with a timeout (its arrival plus the
/// timeout, whichever round it waits in), and where the answer goes.
type Waiter = (Instant, Reply);

/// Read-index requests that share one context.
struct ReadGroup {
    /// When raft-rs was asked (last).
    asked: Instant,
    /// Every read waiting for this read index.
    waiters: Vec<Waiter>,
}

/// Every read-index request of this node not yet answered.
pub(super) struct Reads {
    /// This node's id, the first half of every context.
    id: u64,
    /// How long a request may stay unanswered.
    timeout: Duration,
    /// Requests that arrived since the last [`Reads::issue`].
    new: Vec<Waiter>,
    /// Requests handed to raft-rs, by context number.
    groups: HashMap<u64, ReadGroup>,
    /// The next context number.
    next_ctx: u64,
    /// How many reads wait in `groups` (published for `/metrics`).
    asked: Arc<AtomicUsize>,
    /// Linearizable reads handed in beside the loop's channel ([`super::read_queue`]).
    queue: Arc<ReadQueue>,
}

impl Reads {
    /// No requests yet; contexts start at random so that a restarted node never reuses one a
    /// leader may still hold.
    pub(super) fn new(id: u64, timeout: Duration, shared: &Shared) -> Self {
        Reads {
            id,
            timeout,
            new: Vec::new(),
            groups: HashMap::new(),
            next_ctx: rand::random::<u64>() >> 1,
            asked: shared.reads_asked_counter(),
            queue: shared.read_queue().clone(),
        }
    }

    /// Publishes how many reads wait for an answer from raft-rs.
    fn publish(&self) {
        let n = self.groups.values().map(|g| g.waiters.len()).sum();
        self.asked.store(n, Ordering::Release);
    }

    /// Queues a request for the next [`Reads::issue`].
    pub(super) fn push(&mut self, reply: Reply) {
        self.new.push((Instant::now() + self.timeout, reply));
    }

    /// Whether reads wait behind a round asked at least `older_than` ago (which the loop then
    /// asks again sooner: a lost message would otherwise hold them all).
    pub(super) fn waiting_behind(&self, now: Instant, older_than: Duration) -> bool {
        (!self.new.is_empty() || !self.queue.is_empty())
            && self
                .groups
                .values()
                .any(|g| now.saturating_duration_since(g.asked) >= older_than)
    }

    /// Turns the requests queued since the last call (pushed, or waiting in the read queue)
    /// into one read-index request, unless [`ROUNDS_IN_FLIGHT`] are out already (they then wait
    /// for the next call after an answer). Fails them at once when no leader is known. True if
    /// it asked raft-rs for a read index. Called at every turn of the loop: the read queue
    /// relies on it (a read queued while a round is out is taken at the turn after its answer).
    pub(super) fn issue(&mut self, raw: &mut RawNode<RaftLogStore>) -> bool {
        // With no leader, queued reads are taken to fail at once, round out or not.
        let may_take = self.groups.len() < ROUNDS_IN_FLIGHT || raw.raft.leader_id == 0;
        let taken = self.queue.take(may_take);
        if !taken.is_empty() {
            let now = Instant::now();
            for (arrived, reply) in taken {
                let deadline = arrived + self.timeout;
                if deadline <= now {
                    let ms = self.timeout.as_millis();
                    let _ = reply.send(Err(ReadError::Timeout(format!(
                        "no read index within {ms} ms (waited for a round)"
                    ))));
                } else {
                    self.new.push((deadline, reply));
                }
            }
        }
        self.issue_new(raw)
    }

    /// For the loop, before it sleeps up to `until_tick`: tells the read queue whether a round
    /// is out (asked, and a leader known to answer it), and returns how long to sleep: not at
    /// all when reads wait in the queue with none out, since no reader will wake the loop for
    /// them ([`super::read_queue`]).
    pub(super) fn settle(&self, until_tick: Duration, leader_known: bool) -> Duration {
        if self.queue.settle(leader_known && !self.groups.is_empty()) {
            Duration::ZERO
        } else {
            until_tick
        }
    }

    /// [`Reads::issue`] for the requests in `new`.
    fn issue_new(&mut self, raw: &mut RawNode<RaftLogStore>) -> bool {
        if self.new.is_empty() {
            return false;
        }
        if raw.raft.leader_id == 0 {
            for (_, w) in std::mem::take(&mut self.new) {
                let _ = w.send(Err(ReadError::NoLeader));
            }
            return false;
        }
        if self.groups.len() >= ROUNDS_IN_FLIGHT {
            return false;
        }
        let waiters = std::mem::take(&mut self.new);
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
            for (_, w) in waiters {
                let _ = w.send(Ok(committed));
            }
            return false;
        }
        let ctx = self.next_ctx;
        self.next_ctx += 1;
        self.groups.insert(
            ctx,
            ReadGroup {
                asked: Instant::now(),
                waiters,
            },
        );
        raw.read_index(self.wire_ctx(ctx));
        self.publish();
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
        let now = Instant::now();
        let ctxs: Vec<u64> = self.groups.keys().copied().collect();
        for ctx in ctxs {
            if let Some(g) = self.groups.get_mut(&ctx) {
                g.asked = now;
            }
            raw.read_index(self.wire_ctx(ctx));
        }
    }

    /// Answers the groups whose read states raft-rs returned (others' contexts are ignored).
    pub(super) fn answer(&mut self, states: Vec<ReadState>) {
        if states.is_empty() {
            return;
        }
        for rs in states {
            let Some(ctx) = self.own_ctx(&rs.request_ctx) else {
                continue;
            };
            if let Some(group) = self.groups.remove(&ctx) {
                for (_, w) in group.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
        self.publish();
    }

    /// Fails every read whose deadline has passed, in a round or waiting for one (`leader` is
    /// named in the message); a round nobody waits for any more is forgotten (a late answer to
    /// it is ignored).
    pub(super) fn expire(&mut self, now: Instant, leader: Option<u64>) {
        let timeout_ms = self.timeout.as_millis();
        let msg = || format!("no read index within {timeout_ms} ms (leader: {leader:?})");
        // Waiters are in arrival order, so their deadlines too: the expired ones lead.
        let fail = |waiters: &mut Vec<Waiter>| {
            let gone = waiters.partition_point(|(d, _)| *d <= now);
            for (_, w) in waiters.drain(..gone) {
                let _ = w.send(Err(ReadError::Timeout(msg())));
            }
        };
        fail(&mut self.new);
        for group in self.groups.values_mut() {
            fail(&mut group.waiters);
        }
        self.groups.retain(|_, g| !g.waiters.is_empty());
        self.publish();
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

    fn shared() -> Shared {
        Shared::new(1, 1, 0, 0)
    }

    #[test]
    fn contexts_carry_the_node_id_and_foreign_ones_are_ignored() {
        let mut mine = Reads::new(7, Duration::from_secs(1), &shared());
        let other = Reads::new(8, Duration::from_secs(1), &shared());
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
                asked: Instant::now(),
                waiters: vec![(Instant::now() + Duration::from_secs(60), tx.into())],
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

    /// Every read times out from its own arrival: not from the round it ends up in, nor from
    /// the oldest read beside it (found by review: reads queued behind a round could wait twice
    /// the read timeout, or fail at once with the oldest).
    #[test]
    fn each_read_times_out_from_its_own_arrival() {
        let mut reads = Reads::new(1, Duration::from_millis(10), &shared());
        let (early, mut early_rx) = oneshot::channel();
        let (late, mut late_rx) = oneshot::channel();
        reads.push(early.into());
        let early_deadline = reads.new[0].0;
        // The early read is in a round; the late one arrives 5 ms later, behind it.
        reads.groups.insert(
            7,
            ReadGroup {
                asked: early_deadline - Duration::from_millis(10),
                waiters: std::mem::take(&mut reads.new),
            },
        );
        reads
            .new
            .push((early_deadline + Duration::from_millis(5), late.into()));
        assert!(reads.waiting_behind(early_deadline, Duration::from_millis(10)));
        reads.expire(early_deadline - Duration::from_millis(1), Some(2));
        assert!(early_rx.try_recv().is_err(), "not yet");
        reads.expire(early_deadline, Some(2));
        assert!(matches!(
            early_rx.try_recv(),
            Ok(Err(ReadError::Timeout(_)))
        ));
        assert!(
            reads.groups.is_empty(),
            "a round nobody waits for is forgotten"
        );
        assert!(late_rx.try_recv().is_err(), "the late read has time left");
        reads.expire(early_deadline + Duration::from_millis(5), Some(2));
        assert!(matches!(late_rx.try_recv(), Ok(Err(ReadError::Timeout(_)))));
        assert!(reads.new.is_empty());
    }

    /// The rule that keeps a read from a stale index: a read queued while a round is out never
    /// joins it (that round's index may predate the read); it waits in the queue and goes into
    /// the next round, asked after it arrived.
    #[test]
    fn a_queued_read_never_joins_a_round_already_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut raw = super::super::writes::batch_tests::leader(dir.path());
        let shared = shared();
        let mut reads = Reads::new(1, Duration::from_secs(60), &shared);
        let (early, mut early_rx) = oneshot::channel();
        reads.groups.insert(
            7,
            ReadGroup {
                asked: Instant::now(),
                waiters: vec![(Instant::now() + Duration::from_secs(60), early.into())],
            },
        );
        let (late, mut late_rx) = oneshot::channel();
        shared.read_queue().push((Instant::now(), late.into()));
        assert!(!reads.issue(&mut raw), "no second round while one is out");
        assert!(!shared.read_queue().is_empty(), "the read stays queued");
        assert_eq!(
            reads.groups[&7].waiters.len(),
            1,
            "nothing joined the round out"
        );
        // The round is answered: only its own read gets its index.
        reads.answer(vec![ReadState {
            index: 5,
            request_ctx: reads.wire_ctx(7),
        }]);
        assert!(matches!(early_rx.try_recv(), Ok(Ok(5))));
        assert!(late_rx.try_recv().is_err());
        // The queued read goes into a round of its own, asked now.
        assert!(reads.issue(&mut raw));
        assert!(shared.read_queue().is_empty());
        assert_eq!(reads.groups.len(), 1);
        assert!(!reads.groups.contains_key(&7));
    }

    #[test]
    fn unanswered_groups_expire() {
        let mut reads = Reads::new(1, Duration::from_millis(10), &shared());
        let (tx, mut rx) = oneshot::channel();
        let start = Instant::now();
        reads.groups.insert(
            1,
            ReadGroup {
                asked: start,
                waiters: vec![(start + Duration::from_millis(10), tx.into())],
            },
        );
        reads.expire(start, Some(2));
        assert!(rx.try_recv().is_err(), "not yet");
        reads.expire(start + Duration::from_millis(10), Some(2));
        assert!(matches!(rx.try_recv(), Ok(Err(ReadError::Timeout(_)))));
    }
}
