//! Lease countdowns: the leader's, and only the leader's (SPEC §8).
//!
//! A lease ends only through the log (a `LeaseRevoke` entry); *when* is decided here, by the
//! leader, on its monotonic clock, and nowhere else. Wall clocks are never read.
//!
//! - Taking office, a leader starts every lease's countdown afresh at its full TTL: a lease may
//!   outlive its TTL by an election, it never ends early because two machines' clocks differ.
//! - A lease granted while this node leads starts its countdown when the grant is applied here.
//! - On each tick, every lease past its deadline gets one revocation proposed (again only if
//!   that proposal failed).
//! - A keepalive (and a lease query) is not logged. It is answered only after a read-index round
//!   confirms that this node still leads and after the read index is applied: a deposed leader
//!   cannot complete the round, so it extends nothing, and a revocation committed by anyone is
//!   applied before the lease is looked at. The new deadline is counted from the keepalive's
//!   arrival, so the lease lives at least TTL past the moment the client sent it.
//! - A keepalive for a lease whose deadline has passed is answered `lease_not_found`: its
//!   revocation is on its way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use keel_api::{AckPoint, ErrorCode};
use raft::{RawNode, StateRole};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::handle::WriteOk;
use super::reads::Reads;
use crate::error::{ReadError, WriteError};
use crate::proto::{ApplyResult, CoordResult, LeaseQueryOp};
use crate::sm::{CoordEvent, StateMachine};
use crate::storage::{RaftLogStore, StorageError};

/// Where a keepalive's answer goes.
type Reply = super::handle::Responder;

/// One lease's countdown.
struct Countdown {
    /// When it expires on this leader's clock.
    deadline: Instant,
    /// Its time to live.
    ttl: Duration,
}

/// A keepalive or a query, waiting for its read index and for that index to be applied.
struct Waiting {
    /// What is asked.
    op: LeaseQueryOp,
    /// When it reached the loop: a keepalive extends the lease to this + TTL.
    arrival: Instant,
    /// The term this node led in when it arrived; a different term later means it was deposed.
    term: u64,
    /// The read index, when it comes.
    read: oneshot::Receiver<Result<u64, ReadError>>,
    /// The read index, once it came.
    index: Option<u64>,
    /// Where to answer.
    reply: Reply,
}

/// Every countdown of this leader, and the keepalives in flight.
#[derive(Default)]
pub(super) struct Leases {
    /// The countdowns (empty unless this node leads).
    countdowns: HashMap<u64, Countdown>,
    /// The term the countdowns belong to; 0 while this node does not lead.
    term: u64,
    /// Leases whose revocation this leader proposed, with the proposal's answer: a failed
    /// proposal is retried at the next tick, a pending one is not proposed twice.
    revoking: HashMap<u64, oneshot::Receiver<Result<WriteOk, WriteError>>>,
    /// Keepalives and queries waiting for their read index.
    waiting: Vec<Waiting>,
}

fn answer(op: &LeaseQueryOp, ttl_ms: u64, remaining_ms: u64, index: u64) -> WriteOk {
    WriteOk {
        result: ApplyResult {
            index,
            coord: Some(CoordResult {
                lease: op.id,
                ttl_ms,
                remaining_ms,
                ..Default::default()
            }),
            ..Default::default()
        },
        acked: AckPoint::Quorum,
    }
}

fn gone(op: &LeaseQueryOp, index: u64) -> WriteOk {
    WriteOk {
        result: ApplyResult {
            index,
            error_code: ErrorCode::LeaseNotFound.as_str().into(),
            error_message: format!("lease {} has expired or was revoked", op.id),
            ..Default::default()
        },
        acked: AckPoint::Quorum,
    }
}

/// `t + d`, or a moment far enough for any lease when that does not fit in an `Instant` (a TTL
/// from a log entry is never trusted to be small).
fn after(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(MAX_TTL))
        .unwrap_or(t)
}

/// The longest TTL the HTTP API grants; also what a countdown falls back to.
pub const MAX_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Leases {
    /// Follows leadership: a node that stops leading forgets its countdowns and fails what waits;
    /// a node that takes office starts every lease afresh at its full TTL.
    pub(super) fn follow_leadership(
        &mut self,
        raw: &RawNode<RaftLogStore>,
        sm: &StateMachine,
        now: Instant,
    ) -> Result<(), StorageError> {
        let leading = raw.raft.state == StateRole::Leader;
        if !leading {
            if self.term != 0 {
                self.countdowns.clear();
                self.revoking.clear();
                self.term = 0;
            }
            let leader = raw.raft.leader_id;
            for w in self.waiting.drain(..) {
                let err = if leader == 0 {
                    WriteError::NoLeader
                } else {
                    WriteError::NotLeader(leader)
                };
                let _ = w.reply.send(Err(err));
            }
            return Ok(());
        }
        if self.term == raw.raft.term {
            return Ok(());
        }
        self.countdowns.clear();
        self.revoking.clear();
        for (id, rec) in sm.leases()? {
            let ttl = Duration::from_millis(rec.ttl_ms);
            self.countdowns.insert(
                id,
                Countdown {
                    deadline: after(now, ttl),
                    ttl,
                },
            );
        }
        self.term = raw.raft.term;
        if !self.countdowns.is_empty() {
            info!(
                leases = self.countdowns.len(),
                term = self.term,
                "taking office: every lease restarts at its full TTL"
            );
        }
        Ok(())
    }

    /// What the apply path changed: grants start a countdown, ends remove it.
    pub(super) fn on_applied(&mut self, events: &[CoordEvent], now: Instant) {
        if self.term == 0 {
            return;
        }
        for ev in events {
            match ev {
                CoordEvent::LeaseGranted { id, ttl_ms } => {
                    let ttl = Duration::from_millis(*ttl_ms);
                    self.countdowns.insert(
                        *id,
                        Countdown {
                            deadline: after(now, ttl),
                            ttl,
                        },
                    );
                }
                CoordEvent::LeaseEnded { id } => {
                    self.countdowns.remove(id);
                    self.revoking.remove(id);
                }
                CoordEvent::LockChanged => {}
            }
        }
    }

    /// The leases whose time ran out and whose revocation is not already proposed. The caller
    /// proposes each and hands the proposal's answer to [`Leases::revoking`].
    pub(super) fn expired(&mut self, now: Instant) -> Vec<u64> {
        // A proposal that failed (this node stopped leading for a moment, raft-rs dropped it)
        // may be proposed again.
        self.revoking.retain(|_, rx| {
            !matches!(
                rx.try_recv(),
                Ok(Err(_)) | Err(oneshot::error::TryRecvError::Closed)
            )
        });
        let mut out: Vec<u64> = self
            .countdowns
            .iter()
            .filter(|(id, c)| c.deadline <= now && !self.revoking.contains_key(id))
            .map(|(id, _)| *id)
            .collect();
        out.sort_unstable();
        out
    }

    /// Remembers the revocation proposed for `id`.
    pub(super) fn revoking(&mut self, id: u64, rx: oneshot::Receiver<Result<WriteOk, WriteError>>) {
        self.revoking.insert(id, rx);
    }

    /// Takes a keepalive or a query: answered once a read index confirms this node leads.
    pub(super) fn query(
        &mut self,
        raw: &RawNode<RaftLogStore>,
        reads: &mut Reads,
        sm: &StateMachine,
        op: LeaseQueryOp,
        reply: Reply,
    ) {
        if raw.raft.state != StateRole::Leader || self.term != raw.raft.term {
            let err = match raw.raft.leader_id {
                0 => WriteError::NoLeader,
                id => WriteError::NotLeader(id),
            };
            let _ = reply.send(Err(err));
            return;
        }
        let now = Instant::now();
        if crate::planted::active(crate::planted::Bug::KeepaliveNoReadIndex) {
            // Planted: answered from local state, without confirming leadership first.
            let index = raw.raft.raft_log.applied;
            let ok = match sm.lease(op.id) {
                Ok(Some(rec)) => self.renew(&op, rec.ttl_ms, now, now, index),
                _ => gone(&op, index),
            };
            let _ = reply.send(Ok(ok));
            return;
        }
        let (tx, rx) = oneshot::channel();
        reads.push(tx.into());
        self.waiting.push(Waiting {
            op,
            arrival: now,
            term: raw.raft.term,
            read: rx,
            index: None,
            reply,
        });
    }

    /// Resets (for a keepalive) and reports a lease that exists.
    fn renew(
        &mut self,
        op: &LeaseQueryOp,
        ttl_ms: u64,
        arrival: Instant,
        now: Instant,
        index: u64,
    ) -> WriteOk {
        let ttl = Duration::from_millis(ttl_ms);
        let Some(c) = self.countdowns.get_mut(&op.id) else {
            // Applied but its grant not yet seen by this leader's countdowns (taking office scans
            // the leases, so this should not happen): start its countdown now.
            self.countdowns.insert(
                op.id,
                Countdown {
                    deadline: after(arrival, ttl),
                    ttl,
                },
            );
            return answer(op, ttl_ms, ttl_ms, index);
        };
        if c.deadline <= arrival || self.revoking.contains_key(&op.id) {
            return gone(op, index);
        }
        if op.keepalive {
            c.deadline = c.deadline.max(after(arrival, ttl));
            c.ttl = ttl;
        }
        answer(
            op,
            ttl_ms,
            millis(c.deadline.saturating_duration_since(now)),
            index,
        )
    }

    /// Answers the keepalives and queries whose read index has come and is applied.
    pub(super) fn poll(
        &mut self,
        raw: &RawNode<RaftLogStore>,
        sm: &StateMachine,
        applied: u64,
    ) -> Result<(), StorageError> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        let mut still = Vec::new();
        for mut w in std::mem::take(&mut self.waiting) {
            if w.index.is_none() {
                match w.read.try_recv() {
                    Ok(Ok(i)) => w.index = Some(i),
                    Ok(Err(e)) => {
                        let _ = w.reply.send(Err(read_failure(e)));
                        continue;
                    }
                    Err(oneshot::error::TryRecvError::Empty) => {
                        still.push(w);
                        continue;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        let _ = w.reply.send(Err(WriteError::Dropped));
                        continue;
                    }
                }
            }
            let index = w.index.unwrap_or(0);
            if applied < index {
                still.push(w);
                continue;
            }
            if raw.raft.state != StateRole::Leader || raw.raft.term != w.term {
                let _ = w.reply.send(Err(WriteError::NotLeader(raw.raft.leader_id)));
                continue;
            }
            let ok = match sm.lease(w.op.id)? {
                Some(rec) => self.renew(&w.op, rec.ttl_ms, w.arrival, now, applied),
                None => gone(&w.op, applied),
            };
            let _ = w.reply.send(Ok(ok));
        }
        self.waiting = still;
        Ok(())
    }
}

/// A failed read index, as a keepalive's failure: the keepalive did nothing either way.
fn read_failure(e: ReadError) -> WriteError {
    match e {
        ReadError::NoLeader => WriteError::NoLeader,
        ReadError::ShuttingDown => WriteError::ShuttingDown,
        ReadError::Overloaded => WriteError::Overloaded,
        ReadError::Timeout(_) => {
            warn!("a keepalive's read index timed out");
            WriteError::Dropped
        }
    }
}
