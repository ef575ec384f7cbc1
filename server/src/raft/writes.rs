//! Writes waiting for their acknowledgement.
//!
//! A proposal is remembered by the log index it was given and the term it was proposed in. It
//! is answered:
//! - `async`: once its entry is durable in the leader's log (blind puts only; a write whose
//!   answer depends on state is answered when applied) — [`Writes::answer_durable`];
//! - `semi`: once applied on the leader (which implies committed by a majority) —
//!   [`Writes::complete`];
//! - `sync`: once every voter has reported an applied index at or beyond it, or with
//!   `replication_timeout` after the sync timeout — [`Writes::release_sync`].
//!
//! If the entry applied at that index has another term, the proposal was lost to a leader change
//! and is answered [`WriteError::Dropped`]. When this node stops being leader, every pending
//! proposal is answered [`WriteError::OutcomeUnknown`]: it may still commit under the new leader.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use keel_api::{AckPoint, WriteMode};
use prost::Message as _;
use raft::eraftpb::{Entry, Message, MessageType};
use raft::{RawNode, StateRole};
use tracing::{debug, warn};

use super::handle::WriteOk;
use crate::error::WriteError;
use crate::proto::{command::Op, ApplyResult, Command};
use crate::storage::RaftLogStore;

/// Where a proposal's answer goes.
pub(super) type Reply = super::handle::Responder;

/// A proposal waiting for its answer point.
struct PendingWrite {
    /// The term it was proposed in: the entry applied at its index must have it.
    term: u64,
    /// When to answer.
    mode: WriteMode,
    /// A put without precondition or idempotency key: its answer does not depend on state, so
    /// an `async` write can be answered before it is applied.
    blind: bool,
    /// Where the proposer waits.
    reply: Reply,
}

/// A `sync` write applied on the leader, waiting for every voter.
struct AwaitingAll {
    /// Its log index: answered once every voter has applied it.
    index: u64,
    /// When it is answered `replication_timeout` instead.
    deadline: Instant,
    /// Its outcome, sent once every voter has applied it.
    result: ApplyResult,
    /// Where the proposer waits.
    reply: Reply,
}

/// A client write taken this turn of the loop, proposed with the others at its end.
struct Unproposed {
    /// The encoded command.
    data: Vec<u8>,
    /// When to answer.
    mode: WriteMode,
    /// See [`PendingWrite::blind`].
    blind: bool,
    /// Where the proposer waits.
    reply: Reply,
}

/// Most client writes proposed together (one `MsgPropose`).
const MAX_BATCH: usize = 1024;
/// Most bytes of commands proposed together (a write that would take a batch past this is
/// proposed in the next): the loop's `max_size_per_msg`, so that one append carries about a
/// whole batch to each follower (raft-rs also counts each entry's framing, so a batch just
/// under the cap may go as two).
const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Every write this leader has proposed and not yet answered.
#[derive(Default)]
pub(super) struct Writes {
    /// Client writes taken this turn of the loop and not yet proposed ([`Writes::flush`]), and
    /// the term they were stamped in.
    batch: Vec<Unproposed>,
    batch_term: u64,
    batch_bytes: usize,
    /// Proposals by log index, until their answer point.
    pending: BTreeMap<u64, PendingWrite>,
    /// `sync` writes applied here, until every voter has applied them or time runs out.
    awaiting_all: Vec<AwaitingAll>,
    /// The term this node proposed in last and the instant its stamps count from: the
    /// monotonic clock idempotency expiry is measured by.
    clock: Option<(u64, Instant)>,
}

impl Writes {
    /// Takes a client write (this node must lead) to propose with the others of this turn of
    /// the loop ([`Writes::flush`]): raft-rs sends every follower a message for each proposal,
    /// so proposing a turn's writes as one `MsgPropose` sends one append per follower instead of
    /// one per write (and the followers answer once).
    pub(super) fn propose(
        &mut self,
        raw: &mut RawNode<RaftLogStore>,
        mut command: Command,
        mode: WriteMode,
        reply: Reply,
    ) {
        let blind = command.idempotency_key.is_empty()
            && matches!(&command.op, Some(Op::Put(p)) if p.precondition.is_none());
        // The stamp that idempotency expiry is measured by (see crate::sm::idempotency): this
        // leader's monotonic clock, only ever compared within its own term.
        let term = raw.raft.term;
        let epoch = match self.clock {
            Some((t, epoch)) if t == term => epoch,
            _ => {
                let epoch = Instant::now();
                self.clock = Some((term, epoch));
                epoch
            }
        };
        command.leader_ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        command.apply_version = crate::sm::max_apply_version();
        if raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(not_leader(raw)));
            return;
        }
        let data = command.encode_to_vec();
        // A batch holds one term's writes, and no more bytes than one append carries (a write
        // longer than that goes alone).
        if !self.batch.is_empty()
            && (self.batch_term != term || self.batch_bytes + data.len() > MAX_BATCH_BYTES)
        {
            self.flush(raw);
        }
        if self.batch.is_empty() {
            self.batch_term = term;
        }
        self.batch_bytes += data.len();
        self.batch.push(Unproposed {
            data,
            mode,
            blind,
            reply,
        });
        if self.batch.len() >= MAX_BATCH {
            self.flush(raw);
        }
    }

    /// Whether this node leads with writes batched for its next cycle: the loop then yields
    /// its CPU once before the cycle (docs/benchmarks.md, thirteenth session: 64 writers
    /// 0.90-1.20x over four A/B runs, 1.06x over the longest; the Raft thread run ahead of the
    /// workers instead made them 0.70x).
    pub(super) fn gathering(&self, raw: &RawNode<RaftLogStore>) -> bool {
        !self.batch.is_empty() && raw.raft.state == StateRole::Leader
    }

    /// Proposes the client writes taken this turn as one `MsgPropose` (raft-rs appends its
    /// entries at consecutive indexes, all or none) and records who waits under each index.
    /// Answers them at once when this node no longer leads in the term they were stamped in, or
    /// raft-rs drops the proposal: never proposed, certainly not applied.
    pub(super) fn flush(&mut self, raw: &mut RawNode<RaftLogStore>) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let replies = |batch: Vec<Unproposed>| batch.into_iter().map(|u| u.reply);
        if raw.raft.state != StateRole::Leader {
            return refuse(replies(batch), not_leader(raw));
        }
        if raw.raft.term != self.batch_term {
            return refuse(replies(batch), WriteError::Dropped);
        }
        let (entries, waiting): (Vec<Entry>, Vec<_>) = batch
            .into_iter()
            .map(|u| {
                let entry = Entry {
                    data: u.data.into(),
                    ..Default::default()
                };
                (entry, (u.mode, u.blind, u.reply))
            })
            .unzip();
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgPropose);
        m.from = raw.raft.id;
        m.set_entries(entries.into());
        let before = raw.raft.raft_log.last_index();
        let n = waiting.len() as u64;
        if let Err(e) = raw.raft.step(m) {
            debug!(error = %e, writes = n, "proposal dropped");
            return refuse(waiting.into_iter().map(|w| w.2), WriteError::Dropped);
        }
        if raw.raft.raft_log.last_index() != before + n {
            // raft-rs appended something else (it never does for normal entries): what it
            // appended may commit, so the writes' outcome is not known.
            warn!(
                before,
                writes = n,
                last = raw.raft.raft_log.last_index(),
                "batch misplaced"
            );
            return refuse(waiting.into_iter().map(|w| w.2), WriteError::OutcomeUnknown);
        }
        for (i, (mode, blind, reply)) in waiting.into_iter().enumerate() {
            let p = PendingWrite {
                term: raw.raft.term,
                mode,
                blind,
                reply,
            };
            self.pending.insert(before + 1 + i as u64, p);
        }
    }

    /// Appends one proposal to the leader's log through `append` and records the waiting writer
    /// under the entry's index. Answers at once when this node does not lead or raft-rs drops
    /// the proposal.
    pub(super) fn submit(
        &mut self,
        raw: &mut RawNode<RaftLogStore>,
        mode: WriteMode,
        blind: bool,
        reply: Reply,
        append: impl FnOnce(&mut RawNode<RaftLogStore>) -> raft::Result<()>,
    ) {
        if raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(not_leader(raw)));
            return;
        }
        let before = raw.raft.raft_log.last_index();
        if let Err(e) = append(raw) {
            debug!(error = %e, "proposal dropped");
            let _ = reply.send(Err(WriteError::Dropped));
            return;
        }
        let index = raw.raft.raft_log.last_index();
        if index != before + 1 {
            // raft-rs turned it into nothing (or into an empty entry): it will not apply.
            let _ = reply.send(Err(WriteError::Dropped));
            return;
        }
        self.pending.insert(
            index,
            PendingWrite {
                term: raw.raft.term,
                mode,
                blind,
                reply,
            },
        );
    }

    /// Answers the `async` writes (and, with the planted `early-ack` bug, `semi` ones) of `term`
    /// whose entries are durable in this leader's log up to `durable`.
    pub(super) fn answer_durable(&mut self, durable: u64, term: u64) {
        let ready: Vec<u64> = self
            .pending
            .range(..=durable)
            .filter(|(_, p)| {
                let early = p.mode == WriteMode::Async
                    || (p.mode == WriteMode::Semi
                        && crate::planted::active(crate::planted::Bug::EarlyAck));
                early && p.blind && p.term == term
            })
            .map(|(i, _)| *i)
            .collect();
        for index in ready {
            if let Some(p) = self.pending.remove(&index) {
                let result = ApplyResult {
                    index,
                    version: index,
                    ..Default::default()
                };
                let _ = p.reply.send(Ok(WriteOk {
                    result,
                    acked: AckPoint::LeaderLog,
                }));
            }
        }
    }

    /// The entry at `index` of `term` was applied here with `result`: answers the proposal
    /// waiting for it, or moves a `sync` write on to wait for every voter (until
    /// `now + sync_timeout`; call [`Writes::release_sync`] after a run of these).
    pub(super) fn complete(
        &mut self,
        index: u64,
        term: u64,
        result: ApplyResult,
        now: Instant,
        sync_timeout: Duration,
    ) {
        let Some(p) = self.pending.remove(&index) else {
            return;
        };
        if p.term != term {
            let _ = p.reply.send(Err(WriteError::Dropped));
            return;
        }
        match p.mode {
            WriteMode::Async | WriteMode::Semi => {
                let _ = p.reply.send(Ok(WriteOk {
                    result,
                    acked: AckPoint::Quorum,
                }));
            }
            WriteMode::Sync if !result.is_ok() => {
                // A rejected write changed nothing: there is nothing to wait for.
                let _ = p.reply.send(Ok(WriteOk {
                    result,
                    acked: AckPoint::Quorum,
                }));
            }
            WriteMode::Sync => self.awaiting_all.push(AwaitingAll {
                index,
                deadline: now + sync_timeout,
                result,
                reply: p.reply,
            }),
        }
    }

    /// The entry at `index` was applied empty: a proposal waiting there was not applied (raft-rs
    /// replaced it, or a new leader's entry took its place).
    pub(super) fn drop_at(&mut self, index: u64) {
        if let Some(p) = self.pending.remove(&index) {
            let _ = p.reply.send(Err(WriteError::Dropped));
        }
    }

    /// Whether some `sync` write waits for the voters.
    pub(super) fn awaiting_voters(&self) -> bool {
        !self.awaiting_all.is_empty()
    }

    /// Answers the `sync` writes that every voter has applied (`min_applied` is the lowest
    /// applied index over the voters), or whose time ran out.
    pub(super) fn release_sync(&mut self, min_applied: u64, now: Instant) {
        let mut i = 0;
        while i < self.awaiting_all.len() {
            let w = &self.awaiting_all[i];
            if w.index <= min_applied || w.deadline <= now {
                let w = self.awaiting_all.swap_remove(i);
                let answer = if w.index <= min_applied {
                    Ok(WriteOk {
                        result: w.result,
                        acked: AckPoint::All,
                    })
                } else {
                    Err(WriteError::ReplicationTimeout { index: w.index })
                };
                let _ = w.reply.send(answer);
            } else {
                i += 1;
            }
        }
    }

    /// Answers every waiting write: proposals with `err`, applied `sync` writes with
    /// `replication_timeout` (they are committed, just not confirmed everywhere).
    pub(super) fn fail_all(&mut self, err: WriteError) {
        // Never proposed: certainly not applied.
        let batch = std::mem::take(&mut self.batch);
        refuse(batch.into_iter().map(|u| u.reply), WriteError::Dropped);
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for w in std::mem::take(&mut self.awaiting_all) {
            let _ = w
                .reply
                .send(Err(WriteError::ReplicationTimeout { index: w.index }));
        }
    }
}

/// Why a proposal is refused on a node that does not lead: raft-rs would forward a follower's
/// proposal silently, and no answer would come, so proposals are made only on the leader.
fn not_leader(raw: &RawNode<RaftLogStore>) -> WriteError {
    match raw.raft.leader_id {
        0 => WriteError::NoLeader,
        id => WriteError::NotLeader(id),
    }
}

/// Answers writes that will wait at no index with `err`.
fn refuse(replies: impl IntoIterator<Item = Reply>, err: WriteError) {
    for reply in replies {
        let _ = reply.send(Err(err.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_api::ErrorCode;
    use tokio::sync::oneshot;
    use tokio::sync::oneshot::error::TryRecvError;

    type Rx = oneshot::Receiver<Result<WriteOk, WriteError>>;

    /// Registers a proposal at `index` as `submit` would have, and returns where it is answered.
    fn pending(w: &mut Writes, index: u64, term: u64, mode: WriteMode, blind: bool) -> Rx {
        let (reply, rx) = oneshot::channel();
        w.pending.insert(
            index,
            PendingWrite {
                term,
                mode,
                blind,
                reply: Reply::channel(reply),
            },
        );
        rx
    }

    fn applied(index: u64) -> ApplyResult {
        ApplyResult {
            index,
            version: index,
            ..Default::default()
        }
    }

    fn acked(rx: &mut Rx) -> Option<AckPoint> {
        match rx.try_recv() {
            Ok(Ok(ok)) => Some(ok.acked),
            other => panic!("expected an acknowledgement, got {other:?}"),
        }
    }

    #[test]
    fn durable_entries_answer_only_blind_async_writes_of_this_term() {
        let mut w = Writes::default();
        let mut async_blind = pending(&mut w, 5, 2, WriteMode::Async, true);
        let mut async_cas = pending(&mut w, 6, 2, WriteMode::Async, false);
        let mut semi = pending(&mut w, 7, 2, WriteMode::Semi, true);
        let mut old_term = pending(&mut w, 8, 1, WriteMode::Async, true);
        let mut beyond = pending(&mut w, 9, 2, WriteMode::Async, true);
        w.answer_durable(8, 2);
        assert_eq!(acked(&mut async_blind), Some(AckPoint::LeaderLog));
        for rx in [&mut async_cas, &mut semi, &mut old_term, &mut beyond] {
            assert_eq!(rx.try_recv().err(), Some(TryRecvError::Empty));
        }
    }

    #[test]
    fn an_index_applied_with_another_term_was_dropped() {
        let mut w = Writes::default();
        let mut rx = pending(&mut w, 5, 2, WriteMode::Semi, true);
        w.complete(5, 3, applied(5), Instant::now(), Duration::from_secs(1));
        assert!(matches!(rx.try_recv(), Ok(Err(WriteError::Dropped))));
        let mut rx = pending(&mut w, 6, 3, WriteMode::Semi, true);
        w.complete(6, 3, applied(6), Instant::now(), Duration::from_secs(1));
        assert_eq!(acked(&mut rx), Some(AckPoint::Quorum));
    }

    #[test]
    fn sync_writes_wait_for_every_voter_or_time_out() {
        let mut w = Writes::default();
        let now = Instant::now();
        let timeout = Duration::from_secs(2);
        let mut a = pending(&mut w, 10, 1, WriteMode::Sync, true);
        let mut b = pending(&mut w, 11, 1, WriteMode::Sync, true);
        let mut refused = pending(&mut w, 12, 1, WriteMode::Sync, false);
        w.complete(10, 1, applied(10), now, timeout);
        w.complete(11, 1, applied(11), now, timeout);
        let rejection = ApplyResult {
            index: 12,
            error_code: ErrorCode::PreconditionFailed.as_str().into(),
            ..Default::default()
        };
        w.complete(12, 1, rejection, now, timeout);
        // A refused write changed nothing: answered at once.
        assert_eq!(acked(&mut refused), Some(AckPoint::Quorum));
        assert!(w.awaiting_voters());
        // The slowest voter has applied 10: only the first is everywhere.
        w.release_sync(10, now);
        assert_eq!(acked(&mut a), Some(AckPoint::All));
        assert_eq!(b.try_recv().err(), Some(TryRecvError::Empty));
        // Its deadline passes before the voters catch up: committed, not confirmed everywhere.
        w.release_sync(10, now + timeout);
        assert!(matches!(
            b.try_recv(),
            Ok(Err(WriteError::ReplicationTimeout { index: 11 }))
        ));
        assert!(!w.awaiting_voters());
    }

    #[test]
    fn a_deposed_leader_fails_everything_it_waits_for() {
        let mut w = Writes::default();
        let mut proposed = pending(&mut w, 20, 4, WriteMode::Semi, true);
        let mut sync = pending(&mut w, 21, 4, WriteMode::Sync, true);
        w.complete(21, 4, applied(21), Instant::now(), Duration::from_secs(5));
        w.fail_all(WriteError::OutcomeUnknown);
        assert!(matches!(
            proposed.try_recv(),
            Ok(Err(WriteError::OutcomeUnknown))
        ));
        // Applied on the leader, hence committed: a replication timeout, not an unknown outcome.
        assert!(matches!(
            sync.try_recv(),
            Ok(Err(WriteError::ReplicationTimeout { index: 21 }))
        ));
    }
}

#[cfg(test)]
#[path = "writes_tests.rs"]
pub(super) mod batch_tests;
