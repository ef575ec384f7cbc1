//! The Ready loop: one thread owns the raft-rs `RawNode`, the Raft log store and the apply path.
//!
//! Everything reaches the loop as an [`Event`] on one channel: client proposals and read-index
//! requests (from the HTTP handlers and the forwarding module), Raft messages and applied-index
//! reports (from the transport), status queries, shutdown. Answers go back on oneshot channels.
//! The loop wakes on an event or a tick, drains every queued event (so that many proposals share
//! one Ready and one fsync), then runs one Ready cycle in the order raft-rs requires (see
//! [`Driver::on_ready`]).
//!
//! # Answers to writes
//! A proposal is remembered by its log index and the term it was proposed in. It is answered:
//! - `async`: once its entry is durable in the leader's log (blind puts only; a write whose answer
//!   depends on state is answered when applied);
//! - `semi`: once applied on the leader (which implies committed by a majority);
//! - `sync`: once every voter has reported an applied index at or beyond it, or with
//!   `replication_timeout` after `sync_timeout`.
//!
//! If the entry applied at that index has another term, the proposal was lost to a leader change
//! and is answered [`WriteError::Dropped`]. When this node stops being leader, every pending
//! proposal is answered [`WriteError::OutcomeUnknown`]: it may still commit under the new leader.
//!
//! # Reads
//! Read-index requests that arrive together share one raft-rs `read_index` call. The loop answers
//! with the read index; the caller then waits for the applied index (published on a watch
//! channel) to reach it and reads RocksDB itself. raft-rs drops read-index requests silently (no
//! leader, or a leader that has not committed in its term), so pending requests are re-issued
//! periodically and fail after `read_timeout`.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType,
};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use raft_proto::ConfChangeI;
use rocksdb::WriteBatch;
use serde::Serialize;
use tokio::sync::{oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::error::{ReadError, WriteError};
use crate::members::{AddressBook, JoinContext, MemberAddr};
use crate::mode::{AckPoint, WriteMode};
use crate::proto::{command::Op, ApplyResult, Command};
use crate::state_machine::StateMachine;
use crate::storage::{put_conf_state, RaftLogStore, StorageError};

/// Most events handled before a Ready cycle runs, so a flood cannot starve ticks.
const MAX_EVENTS_PER_CYCLE: usize = 4096;
/// How often (in ticks) pending read-index requests are re-issued.
const READ_REISSUE_TICKS: u64 = 3;

/// Raft timing and limits.
#[derive(Clone, Debug)]
pub struct RaftConfig {
    /// This node's id.
    pub id: u64,
    /// The initial voters (used only on first boot).
    pub voters: Vec<u64>,
    /// Length of one Raft tick.
    pub tick: Duration,
    /// Election timeout in ticks (randomised by raft-rs in `[n, 2n)`).
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// How long a read-index request may stay unanswered.
    pub read_timeout: Duration,
    /// How long a `sync` write waits for every voter after it is applied on the leader.
    pub sync_timeout: Duration,
    /// Compact the log once this many entries are applied beyond the last compaction (keeping
    /// half of them for followers that lag a little); 0 never compacts.
    pub snapshot_entries: u64,
}

/// Work for the Ready loop.
pub enum Event {
    /// Propose a client write (only meaningful on the leader).
    Propose {
        /// The encoded [`Command`].
        command: Command,
        /// When to answer.
        mode: WriteMode,
        /// Where to answer.
        reply: oneshot::Sender<Result<WriteOk, WriteError>>,
    },
    /// Propose a membership change (only meaningful on the leader).
    ProposeConfChange {
        /// The change.
        cc: ConfChangeV2,
        /// Its context (a [`JoinContext`] as JSON when a member is added).
        context: Vec<u8>,
        /// Where to answer once it is applied.
        reply: oneshot::Sender<Result<WriteOk, WriteError>>,
    },
    /// Hand leadership to this voter (only meaningful on the leader).
    TransferLeader(u64),
    /// Ask for a read index.
    ReadIndex {
        /// Where to answer with the read index.
        reply: oneshot::Sender<Result<u64, ReadError>>,
    },
    /// A Raft message from a peer.
    Raft(Box<Message>),
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// A peer restarted with a new, empty data directory: its progress must start over.
    PeerWiped(u64),
    /// The transport finished (or failed) streaming a snapshot to this peer.
    SnapshotSent {
        /// The peer.
        to: u64,
        /// Whether every chunk and the snapshot message were queued.
        ok: bool,
    },
    /// A follower reports its applied index.
    Applied {
        /// The follower.
        from: u64,
        /// Its applied index.
        applied: u64,
    },
    /// Report this node's status.
    Status {
        /// Where to answer.
        reply: oneshot::Sender<StatusReport>,
    },
    /// Stop the loop.
    Shutdown,
}

/// A write that produced an apply outcome.
#[derive(Debug, Clone)]
pub struct WriteOk {
    /// The outcome (possibly a deterministic rejection).
    pub result: ApplyResult,
    /// The point at which it was acknowledged.
    pub acked: AckPoint,
}

/// Where the Ready loop sends what leaves the node. Implemented by the peer transport.
pub trait Outbox: Send + 'static {
    /// Sends Raft messages to their `to` peers (best effort; Raft retries).
    fn send_raft(&self, msgs: Vec<Message>);
    /// Reports this node's applied index to the leader.
    fn send_applied(&self, leader: u64, applied: u64);
    /// Starts (Some) or stops (None) talking to a peer, as membership changes.
    fn set_peer(&self, id: u64, addr: Option<&MemberAddr>);
}

/// Raft role as published to the rest of the node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Pre-campaigning or campaigning.
    Candidate,
    /// The leader.
    Leader,
}

impl Role {
    fn from_raft(r: StateRole) -> Self {
        match r {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        }
    }
    fn to_u8(self) -> u8 {
        self as u8
    }
    fn from_u8(v: u8) -> Self {
        match v {
            2 => Role::Leader,
            1 => Role::Candidate,
            _ => Role::Follower,
        }
    }
}

/// What the rest of the node may read without asking the loop: cheap, lock-free, slightly behind.
pub struct Shared {
    id: u64,
    leader_tx: watch::Sender<u64>,
    term: AtomicU64,
    role: AtomicU8,
    commit: AtomicU64,
    stopped: AtomicBool,
    removed_tx: watch::Sender<bool>,
    applied_tx: watch::Sender<u64>,
}

impl Shared {
    /// This node's id.
    pub fn id(&self) -> u64 {
        self.id
    }
    /// The leader this node knows (None when unknown).
    pub fn leader(&self) -> Option<u64> {
        match *self.leader_tx.borrow() {
            0 => None,
            id => Some(id),
        }
    }
    /// Waits at most `limit` until the leader this node knows (None: none) satisfies `pred`;
    /// false if it did not in time.
    pub async fn wait_leader(
        &self,
        limit: Duration,
        mut pred: impl FnMut(Option<u64>) -> bool,
    ) -> bool {
        let mut rx = self.leader_tx.subscribe();
        let waited =
            tokio::time::timeout(limit, rx.wait_for(|l| pred((*l != 0).then_some(*l)))).await;
        matches!(waited, Ok(Ok(_)))
    }
    /// The current term.
    pub fn term(&self) -> u64 {
        self.term.load(Ordering::Acquire)
    }
    /// The current role.
    pub fn role(&self) -> Role {
        Role::from_u8(self.role.load(Ordering::Acquire))
    }
    /// The commit index this node knows.
    pub fn commit(&self) -> u64 {
        self.commit.load(Ordering::Acquire)
    }
    /// This node's applied index.
    pub fn applied(&self) -> u64 {
        *self.applied_tx.borrow()
    }
    /// A receiver that sees every change of the applied index.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }
    /// Whether the loop has stopped (shutdown or storage failure).
    pub fn stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
    /// Resolves once this node has applied its own removal from the cluster.
    pub async fn removed(&self) {
        let mut rx = self.removed_tx.subscribe();
        // The sender lives as long as `self`, so this only ends with the removal.
        let _ = rx.wait_for(|removed| *removed).await;
    }
}

/// One member as the leader sees it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberProgress {
    /// Member id.
    pub id: u64,
    /// Whether it votes.
    pub voter: bool,
    /// Highest log index known to be replicated on it.
    pub match_index: u64,
    /// Its last reported applied index.
    pub applied_index: u64,
    /// The leader's last index minus `match_index`.
    pub lag: u64,
    /// Whether the leader heard from it within an election timeout.
    pub reachable: bool,
    /// Milliseconds since the leader last heard from it (None: never).
    pub last_contact_ms: Option<u64>,
}

/// A node's view of itself and, on the leader, of every member.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// This node's id.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: u64,
    /// The leader it knows (None when unknown).
    pub leader: Option<u64>,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Its first log index (everything before was compacted into the state machine).
    pub first_index: u64,
    /// Its last log index.
    pub last_index: u64,
    /// Voters of the current configuration.
    pub voters: Vec<u64>,
    /// Learners of the current configuration.
    pub learners: Vec<u64>,
    /// On the leader: every member's progress.
    pub progress: Option<Vec<MemberProgress>>,
    /// Every member's addresses.
    #[serde(skip)]
    pub addresses: AddressBook,
}

/// A handle to the Ready loop: the channel into it and the state it publishes.
#[derive(Clone)]
pub struct NodeHandle {
    tx: Sender<Event>,
    shared: Arc<Shared>,
}

impl NodeHandle {
    /// The published state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Sends an event; false when the loop has stopped.
    pub fn send(&self, ev: Event) -> bool {
        self.tx.send(ev).is_ok()
    }

    /// Proposes a write on this node (which must be the leader) and waits for its answer.
    pub async fn propose(&self, command: Command, mode: WriteMode) -> Result<WriteOk, WriteError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Event::Propose {
            command,
            mode,
            reply,
        }) {
            return Err(WriteError::ShuttingDown);
        }
        // The loop always answers, unless it stops, in which case the outcome is not known.
        rx.await.unwrap_or(Err(WriteError::OutcomeUnknown))
    }

    /// Proposes a membership change on this node (which must be the leader) and waits until it
    /// is applied here.
    pub async fn propose_conf_change(
        &self,
        cc: ConfChangeV2,
        context: Vec<u8>,
    ) -> Result<WriteOk, WriteError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Event::ProposeConfChange { cc, context, reply }) {
            return Err(WriteError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(WriteError::OutcomeUnknown))
    }

    /// Obtains a read index through Raft (on any node).
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Event::ReadIndex { reply }) {
            return Err(ReadError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(ReadError::ShuttingDown))
    }

    /// Waits until this node has applied `index`, up to `timeout`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<u64, ReadError> {
        let mut rx = self.shared.subscribe_applied();
        let wait = async move { rx.wait_for(|applied| *applied >= index).await.map(|a| *a) };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(_)) => Err(ReadError::ShuttingDown),
            Err(_) => Err(ReadError::Timeout(format!(
                "this node has applied {} and did not reach {index} within {} ms",
                self.shared.applied(),
                timeout.as_millis()
            ))),
        }
    }

    /// Asks the loop for a full status report.
    pub async fn status(&self) -> Option<StatusReport> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Event::Status { reply }) {
            return None;
        }
        rx.await.ok()
    }
}

/// A proposal waiting for its answer point.
struct PendingWrite {
    term: u64,
    mode: WriteMode,
    /// A put without precondition: its answer does not depend on state.
    blind: bool,
    reply: oneshot::Sender<Result<WriteOk, WriteError>>,
}

/// A `sync` write applied on the leader, waiting for every voter.
struct AwaitingAll {
    index: u64,
    deadline: Instant,
    result: ApplyResult,
    reply: oneshot::Sender<Result<WriteOk, WriteError>>,
}

/// Read-index requests that share one context.
struct ReadGroup {
    deadline: Instant,
    waiters: Vec<oneshot::Sender<Result<u64, ReadError>>>,
}

/// What the leader knows of a peer beyond raft-rs's progress.
#[derive(Default, Clone, Copy)]
struct PeerInfo {
    applied: u64,
    last_heard: Option<Instant>,
}

/// Owner of the RawNode and everything that must change in step with it.
struct Driver<O: Outbox> {
    cfg: RaftConfig,
    raw: RawNode<RaftLogStore>,
    sm: StateMachine,
    outbox: O,
    shared: Arc<Shared>,
    rx: Receiver<Event>,
    pending: BTreeMap<u64, PendingWrite>,
    awaiting_all: Vec<AwaitingAll>,
    new_reads: Vec<oneshot::Sender<Result<u64, ReadError>>>,
    reads: HashMap<u64, ReadGroup>,
    next_read_ctx: u64,
    peers: HashMap<u64, PeerInfo>,
    ticks: u64,
    applied: u64,
    /// Pending read-index requests must be asked again (after the current Ready cycle).
    reissue_reads: bool,
    /// A staged snapshot is locked for installation until the end of this cycle.
    staging_locked: bool,
    /// Every member's addresses.
    members: AddressBook,
}

/// Starts the Ready loop on its own thread. Returns the handle and the thread, which ends with
/// an error if storage failed (the node must then stop: its disk is not trustworthy).
#[allow(clippy::too_many_arguments)]
pub fn start<O: Outbox>(
    cfg: RaftConfig,
    store: RaftLogStore,
    sm: StateMachine,
    members: AddressBook,
    outbox: O,
    tx: Sender<Event>,
    rx: Receiver<Event>,
    logger: &slog::Logger,
) -> Result<
    (
        NodeHandle,
        std::thread::JoinHandle<Result<(), StorageError>>,
    ),
    raft::Error,
> {
    let applied = sm
        .applied_index()
        .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?;
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: cfg.election_ticks,
        heartbeat_tick: cfg.heartbeat_ticks,
        applied,
        pre_vote: true,
        check_quorum: true,
        read_only_option: ReadOnlyOption::Safe,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let raw = RawNode::new(&raft_cfg, store, logger)?;
    let (applied_tx, _) = watch::channel(applied);
    let shared = Arc::new(Shared {
        id: cfg.id,
        leader_tx: watch::channel(0).0,
        term: AtomicU64::new(raw.raft.term),
        role: AtomicU8::new(Role::Follower.to_u8()),
        commit: AtomicU64::new(raw.raft.raft_log.committed),
        stopped: AtomicBool::new(false),
        removed_tx: watch::channel(false).0,
        applied_tx,
    });
    let handle = NodeHandle {
        tx,
        shared: shared.clone(),
    };
    let mut driver = Driver {
        cfg,
        raw,
        sm,
        outbox,
        shared: shared.clone(),
        rx,
        pending: BTreeMap::new(),
        awaiting_all: Vec::new(),
        new_reads: Vec::new(),
        reads: HashMap::new(),
        // Random, so that a restarted node never reuses a context a leader may still hold.
        next_read_ctx: rand::random::<u64>() >> 1,
        peers: HashMap::new(),
        ticks: 0,
        applied,
        reissue_reads: false,
        staging_locked: false,
        members,
    };
    let thread = std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            let result = driver.run();
            if let Err(e) = &result {
                error!(error = %e, "raft loop stopped on a storage failure");
            }
            driver.fail_all(WriteError::OutcomeUnknown);
            shared.stopped.store(true, Ordering::Release);
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
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match self.rx.recv_timeout(wait) {
                Ok(ev) => Some(ev),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            if let Some(ev) = first {
                if !self.handle(ev) {
                    return Ok(());
                }
                for _ in 1..MAX_EVENTS_PER_CYCLE {
                    match self.rx.try_recv() {
                        Ok(ev) => {
                            if !self.handle(ev) {
                                return Ok(());
                            }
                        }
                        Err(_) => break,
                    }
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
            self.issue_reads();
            self.on_ready()?;
            if self.staging_locked {
                self.sm.unlock_staged();
                self.staging_locked = false;
            }
            if self.reissue_reads {
                self.reissue_pending_reads();
            }
            self.maybe_compact()?;
            self.publish();
        }
    }

    /// Handles one event. Returns false on shutdown.
    fn handle(&mut self, ev: Event) -> bool {
        match ev {
            Event::Propose {
                command,
                mode,
                reply,
            } => self.propose(command, mode, reply),
            Event::ProposeConfChange { cc, context, reply } => {
                self.propose_conf_change(cc, context, reply)
            }
            Event::TransferLeader(to) => {
                if self.raw.raft.state == StateRole::Leader && to != self.cfg.id {
                    info!(to, "transferring leadership");
                    self.raw.transfer_leader(to);
                }
            }
            Event::ReadIndex { reply } => self.new_reads.push(reply),
            Event::Raft(mut msg) => {
                let from = msg.from;
                if msg.get_msg_type() == MessageType::MsgHeartbeat
                    && msg.commit > self.raw.raft.raft_log.last_index()
                {
                    // The leader believes we hold entries we do not (our data was wiped): raft-rs
                    // would abort on such a commit index. Taking none of it is always safe.
                    msg.commit = self.raw.raft.raft_log.committed;
                }
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    // Raft may only take a snapshot whose data has arrived whole (the chunks
                    // precede the message on the same connection); otherwise the leader retries.
                    let meta = msg.get_snapshot().get_metadata();
                    if !self.sm.lock_staged(meta.index, meta.term) {
                        warn!(
                            from,
                            index = meta.index,
                            "snapshot message without its data; dropped"
                        );
                        return true;
                    }
                    self.staging_locked = true;
                }
                if let Err(e) = self.raw.step(*msg) {
                    debug!(from, error = %e, "raft message rejected");
                } else {
                    self.peers.entry(from).or_default().last_heard = Some(Instant::now());
                }
            }
            Event::Unreachable(peer) => self.raw.report_unreachable(peer),
            Event::PeerWiped(peer) => {
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
                let info = self.peers.entry(from).or_default();
                info.applied = info.applied.max(applied);
                self.release_sync_writes(Instant::now());
            }
            Event::Status { reply } => {
                let _ = reply.send(self.status_report());
            }
            Event::Shutdown => return false,
        }
        true
    }

    fn propose(
        &mut self,
        mut command: Command,
        mode: WriteMode,
        reply: oneshot::Sender<Result<WriteOk, WriteError>>,
    ) {
        // A put without precondition or idempotency key: its answer does not depend on state.
        let blind = command.idempotency_key.is_empty()
            && matches!(&command.op, Some(Op::Put(p)) if p.precondition.is_none());
        // The stamp that idempotency expiry is measured by (see state_machine).
        command.proposed_at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.submit(mode, blind, reply, |raw| {
            raw.propose(Vec::new(), command.encode_to_vec())
        });
    }

    fn propose_conf_change(
        &mut self,
        cc: ConfChangeV2,
        context: Vec<u8>,
        reply: oneshot::Sender<Result<WriteOk, WriteError>>,
    ) {
        // raft-rs takes one membership change at a time and refuses the others.
        self.submit(WriteMode::Semi, false, reply, |raw| {
            raw.propose_conf_change(context, cc)
        });
    }

    /// Appends one proposal to the leader's log through `append` and records the waiting writer
    /// under the entry's index. Answers at once when this node does not lead or raft-rs drops
    /// the proposal.
    fn submit(
        &mut self,
        mode: WriteMode,
        blind: bool,
        reply: oneshot::Sender<Result<WriteOk, WriteError>>,
        append: impl FnOnce(&mut RawNode<RaftLogStore>) -> raft::Result<()>,
    ) {
        if self.raw.raft.state != StateRole::Leader {
            let err = match self.raw.raft.leader_id {
                0 => WriteError::NoLeader,
                id => WriteError::NotLeader(id),
            };
            let _ = reply.send(Err(err));
            return;
        }
        let before = self.raw.raft.raft_log.last_index();
        if let Err(e) = append(&mut self.raw) {
            debug!(error = %e, "proposal dropped");
            let _ = reply.send(Err(WriteError::Dropped));
            return;
        }
        let index = self.raw.raft.raft_log.last_index();
        if index != before + 1 {
            let _ = reply.send(Err(WriteError::Dropped));
            return;
        }
        self.pending.insert(
            index,
            PendingWrite {
                term: self.raw.raft.term,
                mode,
                blind,
                reply,
            },
        );
    }

    /// Applies a membership change: to raft-rs, to the persisted conf state, to the address book
    /// and the transport. Returns whether this node removed itself.
    fn apply_membership(
        &mut self,
        entry: &Entry,
        batch: &mut crate::state_machine::ApplyBatch<'_>,
        peer_changes: &mut Vec<(u64, Option<MemberAddr>)>,
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
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            Err(e) => return Ok(Err(e.to_string())),
        };
        put_conf_state(self.raw.store().db(), batch.write_batch(), &cs)?;
        self.raw.mut_store().set_conf_state(cs);
        // raft-rs carries the proposal's context in the entry, not in the change.
        let joined: Option<JoinContext> = serde_json::from_slice(&entry.context).ok();
        for change in cc.get_changes() {
            let id = change.node_id;
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if let Some(j) = joined.as_ref().filter(|j| j.id == id) {
                        self.members.insert(id, j.addr.clone());
                        peer_changes.push((id, Some(j.addr.clone())));
                    }
                }
                ConfChangeType::RemoveNode => {
                    self.members.remove(&id);
                    peer_changes.push((id, None));
                }
            }
        }
        batch.write_batch().put_cf(
            crate::storage::cf(self.raw.store().db(), crate::storage::CF_META)?,
            crate::storage::KEY_MEMBERS,
            crate::members::encode(&self.members),
        );
        Ok(Ok(()))
    }

    fn on_tick(&mut self, now: Instant) {
        // Expire read-index requests that never came back; re-issue the others (raft-rs drops
        // them silently when it cannot serve them yet).
        let expired: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, g)| g.deadline <= now)
            .map(|(ctx, _)| *ctx)
            .collect();
        for ctx in expired {
            if let Some(group) = self.reads.remove(&ctx) {
                let msg = format!(
                    "no read index within {} ms (leader: {:?})",
                    self.cfg.read_timeout.as_millis(),
                    self.shared.leader()
                );
                for w in group.waiters {
                    let _ = w.send(Err(ReadError::Timeout(msg.clone())));
                }
            }
        }
        if self.ticks.is_multiple_of(READ_REISSUE_TICKS) {
            self.reissue_reads = true;
        }
        self.release_sync_writes(now);
    }

    /// Asks again for every read index not yet answered (raft-rs drops requests it cannot serve
    /// and requests sent to a leader that has since changed). Outside a Ready cycle only.
    fn reissue_pending_reads(&mut self) {
        self.reissue_reads = false;
        if self.raw.raft.leader_id == 0 {
            return;
        }
        let ctxs: Vec<u64> = self.reads.keys().copied().collect();
        for ctx in ctxs {
            let wire = self.read_ctx(ctx);
            self.raw.read_index(wire);
        }
    }

    /// Turns the read requests of this cycle into one read-index request.
    fn issue_reads(&mut self) {
        if self.new_reads.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut self.new_reads);
        if self.raw.raft.leader_id == 0 {
            for w in waiters {
                let _ = w.send(Err(ReadError::NoLeader));
            }
            return;
        }
        let ctx = self.next_read_ctx;
        self.next_read_ctx += 1;
        self.reads.insert(
            ctx,
            ReadGroup {
                deadline: Instant::now() + self.cfg.read_timeout,
                waiters,
            },
        );
        let wire = self.read_ctx(ctx);
        self.raw.read_index(wire);
    }

    /// The context a read-index request carries: this node's id and the request's number. The
    /// leader keeps pending requests by context and silently drops one whose context it already
    /// holds, so contexts must be unique across the cluster, not only on this node.
    fn read_ctx(&self, ctx: u64) -> Vec<u8> {
        let mut wire = Vec::with_capacity(16);
        wire.extend_from_slice(&self.cfg.id.to_be_bytes());
        wire.extend_from_slice(&ctx.to_be_bytes());
        wire
    }

    /// The request number in a context made by [`Self::read_ctx`] on this node.
    fn own_read_ctx(&self, wire: &[u8]) -> Option<u64> {
        let (node, ctx) = wire.split_at_checked(8)?;
        if node != self.cfg.id.to_be_bytes() {
            return None;
        }
        Some(u64::from_be_bytes(ctx.try_into().ok()?))
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
            let was_leader =
                Role::from_u8(self.shared.role.load(Ordering::Acquire)) == Role::Leader;
            let leader_changed = self.shared.leader_tx.send_replace(ss.leader_id) != ss.leader_id;
            self.shared
                .role
                .store(Role::from_raft(ss.raft_state).to_u8(), Ordering::Release);
            info!(
                id = self.cfg.id,
                role = ?ss.raft_state,
                leader = ss.leader_id,
                term = self.raw.raft.term,
                "raft role changed"
            );
            if was_leader && ss.raft_state != StateRole::Leader {
                self.fail_all(WriteError::OutcomeUnknown);
            }
            if leader_changed && ss.leader_id != 0 {
                // Not here: a follower's read_index emits a message, and raft-rs forbids new
                // messages between ready() and advance() on a follower. The loop re-issues after
                // this cycle.
                self.reissue_reads = true;
            }
        }

        // 3. Messages that need not wait for persistence (leader → followers) go out at once.
        if !ready.messages().is_empty() {
            self.outbox.send_raft(ready.take_messages());
        }

        // 4. A snapshot from the leader: install its staged data and the log's new start.
        if !ready.snapshot().is_empty() {
            let meta = ready.snapshot().get_metadata().clone();
            let mut batch = WriteBatch::default();
            let (applied, applied_term) = self.sm.install_staged(&mut batch)?;
            self.raw
                .mut_store()
                .install_snapshot(batch, &meta, applied, applied_term)?;
            // Logged before readers waiting on the applied index are woken, so that anyone who
            // sees the new data also finds the install in the node's log.
            info!(
                index = meta.index,
                term = meta.term,
                applied,
                "installed a snapshot"
            );
            self.applied = applied;
            self.shared.applied_tx.send_replace(applied);
        }

        // 5. Apply committed entries.
        let committed = ready.take_committed_entries();
        self.apply_entries(committed)?;

        // 6. Read states: answer with the read index; callers wait for apply themselves.
        for rs in ready.take_read_states() {
            let Some(ctx) = self.own_read_ctx(&rs.request_ctx) else {
                continue;
            };
            if let Some(group) = self.reads.remove(&ctx) {
                for w in group.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }

        // 7. Append new entries and persist the hard state: one write, one fsync (group commit).
        let hs = ready.hs().cloned();
        let entries = ready.take_entries();
        let must_sync = ready.must_sync();
        self.raw
            .mut_store()
            .append(&entries, hs.as_ref(), must_sync)?;

        // 8. Async writes are answered once their entry is durable in the leader's log.
        if let Some(last) = entries.last() {
            self.answer_async(last.index);
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
            self.outbox.send_raft(light.take_messages());
        }
        let committed = light.take_committed_entries();
        self.apply_entries(committed)?;

        // 11. Tell raft-rs everything handed to it has been applied.
        self.raw.advance_apply();
        Ok(())
    }

    /// Compacts the log when enough has been applied since the last compaction. Outside a Ready
    /// cycle only.
    fn maybe_compact(&mut self) -> Result<(), StorageError> {
        let every = self.cfg.snapshot_entries;
        let (truncated, _) = self.raw.store().truncated();
        if every == 0 || self.applied <= truncated + every {
            return Ok(());
        }
        let to = self.applied - every / 2;
        self.raw.mut_store().compact(to)?;
        debug!(to, "compacted the log");
        Ok(())
    }

    fn answer_async(&mut self, durable: u64) {
        let term = self.raw.raft.term;
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

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        let sm = self.sm.clone();
        let mut batch = sm.batch();
        let mut outcomes = Vec::new();
        let mut peer_changes = Vec::new();
        for entry in &entries {
            // After a snapshot the state machine may already cover entries Raft hands out again
            // (its data was read at an index above the snapshot's): their effects are in it.
            let covered = entry.index <= self.applied;
            match entry.get_entry_type() {
                EntryType::EntryNormal if covered => {}
                EntryType::EntryNormal if entry.data.is_empty() => {
                    batch.skip(entry.index, entry.term)
                }
                EntryType::EntryNormal => {
                    let result = batch.apply(entry.index, entry.term, &entry.data)?;
                    outcomes.push((entry.index, entry.term, result));
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result =
                        match self.apply_membership(entry, &mut batch, &mut peer_changes)? {
                            Ok(()) => ApplyResult {
                                index: entry.index,
                                ..Default::default()
                            },
                            Err(e) => {
                                warn!(index = entry.index, error = %e, "conf change rejected");
                                ApplyResult {
                                    index: entry.index,
                                    error_code: crate::state_machine::codes::INVALID_COMMAND.into(),
                                    error_message: e,
                                    ..Default::default()
                                }
                            }
                        };
                    if !covered {
                        batch.skip(entry.index, entry.term);
                        outcomes.push((entry.index, entry.term, result));
                    }
                }
            }
        }
        if let Some((applied, applied_term)) = batch.commit()? {
            self.applied = applied;
            self.raw.mut_store().set_applied(applied, applied_term);
            self.shared.applied_tx.send_replace(applied);
            let leader = self.raw.raft.leader_id;
            if leader != 0 && leader != self.cfg.id {
                self.outbox.send_applied(leader, applied);
            }
        }
        for (id, addr) in peer_changes {
            if id == self.cfg.id {
                if addr.is_none() {
                    warn!("this node was removed from the cluster");
                    self.shared.removed_tx.send_replace(true);
                }
            } else {
                self.outbox.set_peer(id, addr.as_ref());
            }
        }
        let now = Instant::now();
        for (index, term, result) in outcomes {
            self.complete(index, term, result, now);
        }
        Ok(())
    }

    /// Answers the proposal (if any) waiting for the entry applied at `index`.
    fn complete(&mut self, index: u64, term: u64, result: ApplyResult, now: Instant) {
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
            WriteMode::Sync => {
                self.awaiting_all.push(AwaitingAll {
                    index,
                    deadline: now + self.cfg.sync_timeout,
                    result,
                    reply: p.reply,
                });
                self.release_sync_writes(now);
            }
        }
    }

    /// Answers `sync` writes that every voter has applied, or whose time ran out.
    fn release_sync_writes(&mut self, now: Instant) {
        if self.awaiting_all.is_empty() {
            return;
        }
        let min_applied = self.min_voter_applied();
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

    fn voters(&self) -> Vec<u64> {
        let cs = self.raw.store().conf_state();
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

    fn min_voter_applied(&self) -> u64 {
        self.voters()
            .into_iter()
            .map(|id| {
                if id == self.cfg.id {
                    self.applied
                } else {
                    self.peers.get(&id).map_or(0, |p| p.applied)
                }
            })
            .min()
            .unwrap_or(0)
    }

    fn fail_all(&mut self, err: WriteError) {
        for (_, p) in std::mem::take(&mut self.pending) {
            let _ = p.reply.send(Err(err.clone()));
        }
        for w in std::mem::take(&mut self.awaiting_all) {
            // Applied on the old leader, so committed: durable, just not confirmed everywhere.
            let _ = w
                .reply
                .send(Err(WriteError::ReplicationTimeout { index: w.index }));
        }
    }

    fn publish(&self) {
        self.shared
            .term
            .store(self.raw.raft.term, Ordering::Release);
        self.shared
            .commit
            .store(self.raw.raft.raft_log.committed, Ordering::Release);
    }

    fn status_report(&self) -> StatusReport {
        let raft = &self.raw.raft;
        let cs = self.raw.store().conf_state();
        let last_index = raft.raft_log.last_index();
        let election = self.cfg.tick * self.cfg.election_ticks as u32;
        let progress = (raft.state == StateRole::Leader).then(|| {
            let voters = self.voters();
            let mut members: Vec<MemberProgress> = raft
                .prs()
                .iter()
                .map(|(id, pr)| {
                    let is_self = *id == self.cfg.id;
                    let info = self.peers.get(id).copied().unwrap_or_default();
                    let since = info.last_heard.map(|t| t.elapsed());
                    MemberProgress {
                        id: *id,
                        voter: voters.contains(id),
                        match_index: pr.matched,
                        applied_index: if is_self { self.applied } else { info.applied },
                        lag: last_index.saturating_sub(pr.matched),
                        reachable: is_self || since.is_some_and(|d| d < election),
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
            id: self.cfg.id,
            role: Role::from_raft(raft.state),
            term: raft.term,
            leader: (raft.leader_id != 0).then_some(raft.leader_id),
            commit_index: raft.raft_log.committed,
            applied_index: self.applied,
            first_index: self.raw.store().truncated().0 + 1,
            last_index,
            voters: cs.voters.clone(),
            learners: cs.learners.clone(),
            progress,
            addresses: self.members.clone(),
        }
    }
}
