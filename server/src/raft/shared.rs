//! What the Ready loop publishes for the rest of the node to read without asking it: cheap,
//! lock-free, and slightly behind.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_api::cluster::Role;
use raft::StateRole;
use tokio::sync::watch;

use super::read_queue::ReadQueue;

/// The published role of a raft-rs state.
pub(super) fn role_of(r: StateRole) -> Role {
    match r {
        StateRole::Leader => Role::Leader,
        StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
        StateRole::Follower => Role::Follower,
    }
}

fn role_to_u8(r: Role) -> u8 {
    match r {
        Role::Follower => 0,
        Role::Candidate => 1,
        Role::Leader => 2,
    }
}

fn role_from_u8(v: u8) -> Role {
    match v {
        2 => Role::Leader,
        1 => Role::Candidate,
        _ => Role::Follower,
    }
}

/// The node's Raft state as last published by the Ready loop.
pub struct Shared {
    /// This node's id (never changes).
    id: u64,
    /// The leader this node knows (0: none); a watch so that waiters wake when it changes.
    leader_tx: watch::Sender<u64>,
    /// The current term.
    term: AtomicU64,
    /// The current role, as [`role_to_u8`].
    role: AtomicU8,
    /// The commit index this node knows.
    commit: AtomicU64,
    /// Set when the loop has stopped (shutdown or storage failure).
    stopped: AtomicBool,
    /// Set when this node has applied its own removal from the cluster.
    removed_tx: watch::Sender<bool>,
    /// The applied index; a watch so that reads waiting for an index wake when it is reached.
    applied_tx: watch::Sender<u64>,
    /// Client requests (proposals) sent into the loop and not yet taken by it.
    queued: AtomicUsize,
    /// The most of them allowed to wait, and the most reads waiting for their read index
    /// (`reads_waiting`); more are refused as overloaded.
    max_queued: AtomicUsize,
    /// Linearizable reads waiting for their read index, counted by their handlers (at most
    /// `max_queued` of them, apart from `queued`).
    reads_waiting: AtomicUsize,
    /// Linearizable reads handed to raft-rs and waiting for their read index (the loop's
    /// [`super::reads::Reads`] keeps it).
    reads_asked: Arc<AtomicUsize>,
    /// Linearizable reads not yet taken by the loop.
    read_queue: Arc<ReadQueue>,
    /// Requests refused as overloaded since the start (queue full, or too many forwarded
    /// writes).
    overloaded: AtomicU64,
    /// Bumped (to the applied index) whenever an applied entry changed a lock's holder: waiting
    /// lock acquires and blocking lock reads wake on it and look again.
    locks_tx: watch::Sender<u64>,
}

/// Client requests allowed to wait for the loop, unless `--max-pending` says otherwise.
pub const DEFAULT_MAX_QUEUED: usize = 10_000;

impl Shared {
    /// The state of a loop that starts with `term`, `commit` and `applied`.
    pub(super) fn new(id: u64, term: u64, commit: u64, applied: u64) -> Self {
        Shared {
            id,
            leader_tx: watch::channel(0).0,
            term: AtomicU64::new(term),
            role: AtomicU8::new(role_to_u8(Role::Follower)),
            commit: AtomicU64::new(commit),
            stopped: AtomicBool::new(false),
            removed_tx: watch::channel(false).0,
            applied_tx: watch::channel(applied).0,
            queued: AtomicUsize::new(0),
            max_queued: AtomicUsize::new(DEFAULT_MAX_QUEUED),
            reads_waiting: AtomicUsize::new(0),
            reads_asked: Arc::default(),
            read_queue: Arc::default(),
            overloaded: AtomicU64::new(0),
            locks_tx: watch::channel(0).0,
        }
    }

    /// Wakes whoever waits on a lock: an entry up to `applied` changed a holder.
    pub(super) fn locks_changed(&self, applied: u64) {
        self.locks_tx.send_replace(applied);
    }

    /// A receiver that wakes when an applied entry changes a lock's holder.
    pub fn lock_changes(&self) -> watch::Receiver<u64> {
        self.locks_tx.subscribe()
    }

    /// Sets how many client requests may wait for the loop (and, apart, how many reads may wait
    /// for their read index).
    pub fn set_max_queued(&self, n: usize) {
        self.max_queued.store(n, Ordering::Release);
    }

    /// Takes a place in the loop's queue for a client request; false (and counted) when it is
    /// full. The place is given back by [`Shared::release`] (a `Ticket` does it on drop).
    pub(super) fn admit(&self) -> bool {
        self.take_place(&self.queued)
    }

    /// Takes one of `max_queued` places counted by `count`; false (and counted) when none is
    /// free.
    fn take_place(&self, count: &AtomicUsize) -> bool {
        let before = count.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_queued.load(Ordering::Acquire) {
            count.fetch_sub(1, Ordering::AcqRel);
            self.count_overloaded();
            return false;
        }
        true
    }

    /// Whether the loop's backlog is full, counted as a refusal when it is, without taking a
    /// place in it: for linearizable reads, which wait in the read queue beside it.
    pub(super) fn backlog_full(&self) -> bool {
        let full = self.queued.load(Ordering::Acquire) >= self.max_queued.load(Ordering::Acquire);
        if full {
            self.count_overloaded();
        }
        full
    }

    /// Takes a place among the linearizable reads waiting for their read index; false (and
    /// counted) when `--max-pending` of them wait. Given back by [`Shared::release_read`].
    pub(super) fn admit_read(&self) -> bool {
        self.take_place(&self.reads_waiting)
    }

    /// Gives back a place taken by [`Shared::admit_read`].
    pub(super) fn release_read(&self) {
        self.reads_waiting.fetch_sub(1, Ordering::AcqRel);
    }

    /// Gives back a place taken by [`Shared::admit`].
    pub(super) fn release(&self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Counts a request refused as overloaded.
    pub fn count_overloaded(&self) {
        self.overloaded.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics().overloaded.inc();
    }

    /// Client requests in the loop's channel, not yet taken by it.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// Linearizable reads handed to raft-rs and waiting for their read index.
    pub fn reads_asked(&self) -> usize {
        self.reads_asked.load(Ordering::Acquire)
    }

    /// The counter behind [`Shared::reads_asked`], for the loop to keep.
    pub(super) fn reads_asked_counter(&self) -> Arc<AtomicUsize> {
        self.reads_asked.clone()
    }

    /// Requests refused as overloaded since the start.
    pub fn overloaded_total(&self) -> u64 {
        self.overloaded.load(Ordering::Relaxed)
    }

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
        role_from_u8(self.role.load(Ordering::Acquire))
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

    /// Publishes a new leader (0: none); returns whether it changed.
    pub(super) fn set_leader(&self, leader: u64) -> bool {
        self.leader_tx.send_replace(leader) != leader
    }

    /// Publishes a new role.
    pub(super) fn set_role(&self, role: Role) {
        self.role.store(role_to_u8(role), Ordering::Release);
    }

    /// Publishes the term and the commit index.
    pub(super) fn set_term_commit(&self, term: u64, commit: u64) {
        self.term.store(term, Ordering::Release);
        self.commit.store(commit, Ordering::Release);
    }

    /// Publishes a new applied index (waking readers waiting for it).
    pub(super) fn set_applied(&self, applied: u64) {
        self.applied_tx.send_replace(applied);
    }

    /// Publishes that this node was removed from the cluster.
    pub(super) fn set_removed(&self) {
        self.removed_tx.send_replace(true);
    }

    /// The queue linearizable reads wait in for the loop.
    pub(super) fn read_queue(&self) -> &Arc<ReadQueue> {
        &self.read_queue
    }

    /// Publishes that the loop has stopped; reads waiting in the read queue fail as shutting
    /// down and later ones are refused.
    pub(super) fn set_stopped(&self) {
        self.stopped.store(true, Ordering::Release);
        self.read_queue.close();
    }
}
