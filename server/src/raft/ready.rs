//! The Ready loop: one thread owns the raft-rs `RawNode`, the log store and the apply path.
//!
//! The loop wakes on an [`Event`] or a tick, drains every queued event (so that many proposals
//! share one Ready and one fsync; a leader with writes batched yields its CPU once and drains
//! again, so that the workers handing in writes add theirs), then runs one Ready cycle
//! ([`Driver::on_ready`]).

use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::Instant;

use keel_api::WriteMode;
use raft::eraftpb::{ConfChangeV2, MessageType};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use rocksdb::WriteBatch;
use tracing::{debug, error, info, warn};

use super::handle::{Event, NodeHandle, Outbox, Responder};
use super::leases::Leases;
use super::peers::Peers;
use super::reads::Reads;
use super::shared::{role_of, Shared};
use super::status::{self, Known};
use super::writes::Writes;
use super::RaftConfig;
use crate::error::WriteError;
use crate::failpoints;
use crate::members::AddressBook;
use crate::proto::command::Op;
use crate::sm::StateMachine;
use crate::snapshot::Stage;
use crate::storage::{RaftLogStore, StorageError};
use crate::watch::Feed;

/// Most events handled before a Ready cycle runs, so a flood cannot starve ticks.
const MAX_EVENTS_PER_CYCLE: usize = 4096;
/// How often (in ticks) pending read-index requests are re-issued.
const READ_REISSUE_TICKS: u64 = 3;

/// What the loop is made of, handed to [`start`].
pub struct LoopParts<O: Outbox> {
    /// Timing and limits.
    pub cfg: RaftConfig,
    /// The Raft log (with the hard state and the conf state).
    pub store: RaftLogStore,
    /// The state machine entries are applied to.
    pub sm: StateMachine,
    /// Where incoming snapshots are staged.
    pub stage: Stage,
    /// Every member's addresses, as stored.
    pub members: AddressBook,
    /// Where messages to peers go.
    pub outbox: O,
    /// The sending side of the loop's channel (for the handle).
    pub tx: Sender<Event>,
    /// The receiving side of the loop's channel.
    pub rx: Receiver<Event>,
    /// Where applied changes are published for watchers.
    pub feed: Arc<Feed>,
}

/// Owner of the RawNode and everything that must change in step with it.
pub(super) struct Driver<O: Outbox> {
    /// Timing and limits.
    pub(super) cfg: RaftConfig,
    /// raft-rs, with the log store inside.
    pub(super) raw: RawNode<RaftLogStore>,
    /// Where committed entries are applied.
    pub(super) sm: StateMachine,
    /// Incoming snapshot data, locked and installed by the loop.
    pub(super) stage: Stage,
    /// Where messages to peers go.
    pub(super) outbox: O,
    /// What the loop publishes for the rest of the node.
    pub(super) shared: Arc<Shared>,
    /// Everything that reaches the loop.
    pub(super) rx: Receiver<Event>,
    /// Proposals waiting for their acknowledgement.
    pub(super) writes: Writes,
    /// Read-index requests waiting for their read index.
    pub(super) reads: Reads,
    /// Followers' applied indexes and last contact (on the leader).
    pub(super) peers: Peers,
    /// Ticks since the loop started (drives periodic work).
    pub(super) ticks: u64,
    /// The state machine's applied index, as this loop last wrote it.
    pub(super) applied: u64,
    /// Pending read-index requests must be asked again (after the current Ready cycle).
    pub(super) reissue_reads: bool,
    /// A staged snapshot is locked for installation until the end of this cycle.
    pub(super) staging_locked: bool,
    /// Every member's addresses (changed only by applied conf changes).
    pub(super) members: AddressBook,
    /// Lease countdowns (on the leader) and keepalives waiting for their read index.
    pub(super) leases: Leases,
    /// Where applied changes are published for watchers.
    pub(super) feed: Arc<Feed>,
    /// Heartbeats waiting for their response (round trips, for the metrics).
    pub(super) heartbeats: super::observe::Heartbeats,
}

/// The result of the loop's thread: an error if storage failed (the node must then stop).
pub type LoopThread = std::thread::JoinHandle<Result<(), StorageError>>;

/// Starts the Ready loop on its own thread. Returns the handle and the thread.
pub fn start<O: Outbox>(
    parts: LoopParts<O>,
    logger: &slog::Logger,
) -> Result<(NodeHandle, LoopThread), raft::Error> {
    let LoopParts {
        cfg,
        store,
        sm,
        stage,
        members,
        outbox,
        tx,
        rx,
        feed,
    } = parts;
    let applied = sm
        .applied_index()
        .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?;
    let raft_applied = store.raft_applied(applied);
    if raft_applied < applied {
        warn!(
            applied,
            last_index = raft_applied,
            "the state machine is ahead of the log (a crash after a snapshot install): the \
             entries in between will be fetched again and skipped"
        );
    }
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied: raft_applied,
        pre_vote: true,
        check_quorum: true,
        read_only_option: ReadOnlyOption::Safe,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let raw = RawNode::new(&raft_cfg, store, logger)?;
    let shared = Arc::new(Shared::new(
        cfg.id,
        raw.raft.term,
        raw.raft.raft_log.committed,
        applied,
    ));
    let handle = NodeHandle::new(tx, shared.clone());
    let mut driver = Driver {
        reads: Reads::new(cfg.id, cfg.read_timeout, &shared),
        cfg,
        raw,
        sm,
        stage,
        outbox,
        shared: shared.clone(),
        rx,
        writes: Writes::default(),
        peers: Peers::default(),
        ticks: 0,
        applied,
        reissue_reads: false,
        staging_locked: false,
        members,
        leases: Leases::default(),
        feed,
        heartbeats: Default::default(),
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let result = driver.run();
            if let Err(e) = &result {
                error!(error = %e, "raft loop stopped on a storage failure");
            }
            driver.writes.fail_all(WriteError::OutcomeUnknown);
            shared.set_stopped();
            result
        })
        .map_err(raft::Error::Io)?;
    Ok((handle, thread))
}

impl<O: Outbox> Driver<O> {
    fn run(&mut self) -> Result<(), StorageError> {
        info!(
            id = self.cfg.id,
            applied = self.applied,
            "raft loop started"
        );
        let mut next_tick = Instant::now() + self.cfg.tick;
        loop {
            let until_tick = next_tick.saturating_duration_since(Instant::now());
            let wait = self.reads.settle(until_tick, self.raw.raft.leader_id != 0);
            let first = match self.rx.recv_timeout(wait) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            // One budget for both drains below: at most a cycle's worth of events before it.
            let mut budget = MAX_EVENTS_PER_CYCLE - 1;
            if let Some(ev) = first {
                if !self.handle(ev) || !self.drain(&mut budget) {
                    return Ok(());
                }
            }
            // A leader with writes to propose first lets the workers that hand them in finish
            // what they are doing (a no-op on an idle machine), so that their next writes join
            // this cycle's one append and fsync instead of starting another.
            if self.writes.gathering(&self.raw) {
                std::thread::yield_now();
                if !self.drain(&mut budget) {
                    return Ok(());
                }
            }
            let now = Instant::now();
            if now >= next_tick {
                self.raw.tick();
                self.ticks += 1;
                next_tick += self.cfg.tick;
                if next_tick < now {
                    // We fell far behind (CPU starvation): do not fire a burst of ticks.
                    next_tick = now + self.cfg.tick;
                }
                self.on_tick(now);
            }
            self.writes.flush(&mut self.raw); // the turn's client writes (and revocations)
            self.reads.issue(&mut self.raw);
            self.on_ready()?;
            // A round answered in that cycle lets the reads that came meanwhile ask at once.
            if self.reads.issue(&mut self.raw) {
                self.on_ready()?;
            }
            self.coord_cycle()?;
            if self.staging_locked {
                self.stage.unlock_staged();
                self.staging_locked = false;
            }
            if self.reissue_reads {
                self.reissue_reads = false;
                self.reads.reissue(&mut self.raw);
            }
            self.maybe_compact()?;
            let (before, commit) = (self.shared.commit(), self.raw.raft.raft_log.committed);
            if commit > before {
                crate::metrics::metrics()
                    .proposals_committed
                    .inc_by(commit - before);
            }
            self.shared.set_term_commit(self.raw.raft.term, commit);
        }
    }

    /// Handles the events already queued, at most `budget` of them (counted down). Returns
    /// false on shutdown.
    fn drain(&mut self, budget: &mut usize) -> bool {
        while *budget > 0 {
            let Ok(ev) = self.rx.try_recv() else { break };
            *budget -= 1;
            if !self.handle(ev) {
                return false;
            }
        }
        true
    }

    /// Handles one event. Returns false on shutdown.
    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Propose {
                command,
                mode,
                reply,
                ..
            } => match &command.op {
                // Keepalives and lease lookups are answered by the leader, never logged.
                Some(Op::LeaseQuery(q)) => {
                    self.leases
                        .query(&self.raw, &mut self.reads, &self.sm, q.clone(), reply)
                }
                _ => self.writes.propose(&mut self.raw, command, mode, reply),
            },
            Event::ProposeConfChange { cc, context, reply } => {
                self.propose_conf_change(cc, context, reply)
            }
            Event::TransferLeader(to) => {
                if self.raw.raft.state == StateRole::Leader && to != self.cfg.id {
                    info!(to, "transferring leadership");
                    self.raw.transfer_leader(to);
                }
            }
            Event::ReadsQueued => {}
            Event::Raft(mut msg, _slot) => {
                let from = msg.from;
                if let Err(why) = super::guard::admit_to(&mut msg, &self.raw.raft.raft_log) {
                    warn!(from, kind = ?msg.get_msg_type(), %why, "raft message refused");
                    return true;
                }
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    // Raft may only take a snapshot whose data has arrived whole (the chunks
                    // precede the message on the same connection); otherwise the leader retries.
                    let meta = msg.get_snapshot().get_metadata();
                    if !self.stage.lock_staged(meta.index, meta.term) {
                        warn!(
                            from,
                            index = meta.index,
                            "snapshot message without its data; dropped"
                        );
                        return true;
                    }
                    self.staging_locked = true;
                }
                if let Some(resp) = super::quorum_read::answer_at_once(&self.raw, &msg) {
                    self.outbox.send_raft(vec![resp]);
                    return true;
                }
                self.heartbeats.answered(&msg, Instant::now());
                if let Err(e) = self.raw.step(*msg) {
                    debug!(from, error = %e, "raft message rejected");
                } else {
                    self.peers.heard_from(from, Instant::now());
                }
            }
            Event::Unreachable(peer) => {
                crate::metrics::metrics()
                    .peer_unreachable
                    .get_or_create(&crate::metrics::PeerLabels { peer })
                    .inc();
                self.raw.report_unreachable(peer)
            }
            Event::PeerWiped(peer) => {
                // What it reported applying is gone: `sync` writes must wait for it again.
                self.peers.wiped(peer);
                // raft-rs never lowers a follower's match index; a wiped follower lost what it
                // matched, so the leader must probe it from the start (and send a snapshot).
                if self.raw.raft.state == StateRole::Leader {
                    if let Some(pr) = self.raw.raft.mut_prs().get_mut(peer) {
                        pr.matched = 0;
                        pr.become_probe();
                    }
                }
            }
            Event::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            Event::Applied { from, applied } => {
                self.peers.report_applied(from, applied);
                self.release_sync_writes(Instant::now());
            }
            Event::Status { reply } => {
                let report = status::report(
                    &self.raw,
                    Known {
                        id: self.cfg.id,
                        election: self.cfg.tick * self.cfg.election_ticks as u32,
                        peers: &self.peers,
                        applied: self.applied,
                        members: &self.members,
                    },
                );
                let _ = reply.send(report);
            }
            Event::Shutdown => return false,
        }
        true
    }

    fn propose_conf_change(&mut self, cc: ConfChangeV2, context: Vec<u8>, reply: Responder) {
        // raft-rs takes one membership change at a time: it turns a second one into an empty
        // entry, silently. Refuse it here instead, so that the caller hears it did not happen.
        if self.raw.raft.state == StateRole::Leader && self.raw.raft.has_pending_conf() {
            let _ = reply.send(Err(WriteError::ChangePending));
            return;
        }
        self.writes
            .submit(&mut self.raw, WriteMode::Semi, false, reply, |raw| {
                raw.propose_conf_change(context, cc)
            });
    }

    /// One Ready cycle, in the order raft-rs requires.
    fn on_ready(&mut self) -> Result<(), StorageError> {
        // 1. Anything to do?
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();

        // 2. Role or leader changed: publish it; a deposed leader fails its pending proposals.
        if let Some(ss) = ready.ss() {
            let was_leader = self.shared.role() == keel_api::cluster::Role::Leader;
            let leader_changed = self.shared.set_leader(ss.leader_id);
            self.shared.set_role(role_of(ss.raft_state));
            info!(
                id = self.cfg.id,
                role = ?ss.raft_state,
                leader = ss.leader_id,
                term = self.raw.raft.term,
                "raft role changed"
            );
            if was_leader && ss.raft_state != StateRole::Leader {
                self.writes.fail_all(WriteError::OutcomeUnknown);
            }
            if leader_changed && ss.leader_id != 0 {
                crate::metrics::metrics().leader_changes.inc();
                // Not here: a follower's read_index emits a message, and raft-rs forbids new
                // messages between ready() and advance() on a follower. The loop re-issues after
                // this cycle.
                self.reissue_reads = true;
            }
        }

        // 3. Messages that need not wait for persistence (leader → followers) go out at once.
        if !ready.messages().is_empty() {
            let msgs = ready.take_messages();
            self.heartbeats.sending(&msgs, Instant::now());
            self.outbox.send_raft(msgs);
        }

        // 4. A snapshot from the leader: install its staged data and the log's new start.
        if !ready.snapshot().is_empty() {
            let installing = Instant::now();
            let meta = ready.snapshot().get_metadata().clone();
            // Reads are refused from the write that empties the state machine until the staged
            // data is all in place (a failed install leaves them refused).
            let gate = self.sm.close_for_install();
            let mut batch = WriteBatch::default();
            let installed = self.stage.install_staged(&mut batch, &self.members)?;
            let (applied, applied_term) = (installed.applied, installed.applied_term);
            self.raw
                .mut_store()
                .install_snapshot(batch, &meta, applied, applied_term)?;
            self.stage.finish_install()?;
            gate.open();
            if let Some(book) = installed.members {
                self.adopt_members(book);
            }
            failpoints::crash_point(failpoints::SNAPSHOT_INSTALLED);
            // Logged before readers waiting on the applied index are woken, so that anyone who
            // sees the new data also finds the install in the node's log.
            info!(
                index = meta.index,
                term = meta.term,
                applied,
                "installed a snapshot"
            );
            self.applied = applied;
            crate::metrics::observe(
                &crate::metrics::metrics().snapshot_install,
                installing.elapsed(),
            );
            self.sm.history().restart_after(installed.history_after);
            self.feed.reset(applied);
            self.shared.set_applied(applied);
        }

        // 5. Apply committed entries.
        let committed = ready.take_committed_entries();
        let applied_some = !committed.is_empty();
        self.apply_entries(committed)?;

        // 6. Read states: answer with the read index; callers wait for apply themselves.
        self.reads.answer(ready.take_read_states());

        // Only where it means something: entries applied, this Ready's own (if any) not written.
        if applied_some {
            failpoints::crash_point(failpoints::APPLIED_BEFORE_APPEND);
        }

        // 7. Append new entries and persist the hard state: one write, one fsync (group commit).
        let hs = ready.hs().cloned();
        let entries = ready.take_entries();
        let must_sync = ready.must_sync();
        let appending = Instant::now();
        self.raw
            .mut_store()
            .append(&entries, hs.as_ref(), must_sync)?;
        if !entries.is_empty() || hs.is_some() {
            crate::metrics::observe(&crate::metrics::metrics().raft_append, appending.elapsed());
        }

        // 8. Async writes are answered once their entry is durable in the leader's log.
        if let Some(last) = entries.last() {
            self.writes.answer_durable(last.index, self.raw.raft.term);
        }

        // 9. Messages that must follow persistence (votes, append responses).
        if !ready.persisted_messages().is_empty() {
            self.outbox.send_raft(ready.take_persisted_messages());
        }

        // 10. Advance; the light ready carries a new commit index, messages and more entries.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        if !light.messages().is_empty() {
            let msgs = light.take_messages();
            self.heartbeats.sending(&msgs, Instant::now());
            self.outbox.send_raft(msgs);
        }
        let committed = light.take_committed_entries();
        self.apply_entries(committed)?;

        // 11. Tell raft-rs everything handed to it has been applied.
        self.raw.advance_apply();
        Ok(())
    }

    /// Takes the address book of an installed snapshot: peers added while this node was away are
    /// dialled (and let in), peers removed meanwhile are dropped.
    fn adopt_members(&mut self, book: AddressBook) {
        for (id, addr) in &book {
            if *id != self.cfg.id && !self.members.contains_key(id) {
                self.outbox.set_peer(*id, Some(addr));
            }
        }
        for id in self.members.keys() {
            if *id != self.cfg.id && !book.contains_key(id) {
                self.outbox.set_peer(*id, None);
            }
        }
        self.members = book;
    }

    /// Answers `sync` writes that every voter has applied, or whose time ran out.
    pub(super) fn release_sync_writes(&mut self, now: Instant) {
        if !self.writes.awaiting_voters() {
            return;
        }
        let cs = self.raw.store().conf_state();
        let min = self.peers.sync_floor(cs, self.cfg.id, self.applied);
        self.writes.release_sync(min, now);
    }

    /// Compacts the log when enough has been applied since the last compaction. Outside a Ready
    /// cycle only. Keyed to what raft-rs has handed out and been told is applied (never past
    /// it: raft-rs still reads the entries it has not handed out), not to the state machine's
    /// index, which can be ahead after a snapshot install.
    fn maybe_compact(&mut self) -> Result<(), StorageError> {
        let (truncated, _) = self.raw.store().truncated();
        let Some(to) = super::compaction::compaction_point(
            self.cfg.snapshot_entries,
            truncated,
            self.raw.raft.raft_log.applied,
            self.applied,
        ) else {
            return Ok(());
        };
        self.raw.mut_store().compact(to)?;
        debug!(to, "compacted the log");
        Ok(())
    }

    fn on_tick(&mut self, now: Instant) {
        // Expire read-index requests that never came back; re-issue the others (raft-rs drops
        // them silently when it cannot serve them yet).
        self.reads.expire(now, self.shared.leader());
        // Every few ticks; every tick while reads wait behind a round a tick old (or lost).
        let behind = self.reads.waiting_behind(now, self.cfg.tick);
        if self.ticks.is_multiple_of(READ_REISSUE_TICKS) || behind {
            self.reissue_reads |= !super::reads::planted_no_reask();
        }
        self.release_sync_writes(now);
        self.expire_leases(now);
        if self.ticks.is_multiple_of(super::observe::LAG_EXPORT_TICKS) {
            self.export_lags();
        }
    }
}
