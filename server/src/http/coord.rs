//! The coordination handlers (SPEC §8): leases (grant, keepalive, look, revoke) and locks
//! (acquire with a FIFO wait, look with a blocking query, release).
//!
//! Every change goes through the log like any write ([`Api::write`]): the state machine decides
//! who holds a lock and with which fence. Keepalives and lease lookups travel the same way to
//! the leader, which answers them after a read-index round (see `raft/leases.rs`) without
//! logging anything. A waiting acquire is answered from this node's applied state when the
//! grant reaches it, or ends with a cancel entry whose outcome is the truth: a grant made while
//! the wait was ending is reported, never lost.

use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::HeaderMap;
use keel_api::coord::{
    LeaseGrantRequest, LeaseId, LeaseInfo, LeaseResponse, LeaseRevokeResponse, LockHolderInfo,
    LockRequest,
};
use keel_api::kv::JsonValue;
use keel_api::limits::MAX_SMALL_BODY_BYTES;
use keel_api::{ErrorCode, WriteMode};
use serde::Serialize;

use super::error::{rejected, ApiError};
use super::reply::{Answer, Reply};
use super::request::{self, Query};
use super::Api;
use crate::proto::{
    command::Op, CoordResult, LeaseGrantOp, LeaseQueryOp, LeaseRevokeOp, LockAcquireOp, LockHolder,
    LockReleaseOp,
};

/// The longest a lock acquire or a blocking lock read may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(300);

/// Answer to `DELETE /v1/lock/{name}`.
#[derive(Serialize)]
struct Released {
    name: String,
    lease: LeaseId,
    released: bool,
    index: u64,
}

/// A lease id from the path.
pub(super) fn lease_id(raw: &str) -> Result<u64, ApiError> {
    match raw.parse::<u64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("{raw:?} is not a lease id (a positive integer)"),
        )),
    }
}

/// How a holder is shown.
pub(super) fn holder_info(name: &str, h: &LockHolder, index: u64) -> LockHolderInfo {
    LockHolderInfo {
        name: name.to_string(),
        lease: LeaseId(h.lease),
        value: JsonValue::from_bytes(&h.value),
        fence: h.fence,
        index,
    }
}

fn coord_of(r: &crate::proto::ApplyResult) -> CoordResult {
    r.coord.clone().unwrap_or_default()
}

fn wait_of(ms: u64) -> Duration {
    Duration::from_millis(ms).min(MAX_WAIT)
}

/// Whether an acquire with this outcome may have left its lease in the queue: not when it was
/// refused (no lease, say), granted, certainly not applied, or refused as overloaded (nothing
/// was proposed; a cancel would only add to the load).
fn outcome_may_have_queued(
    outcome: &Result<crate::raft::WriteOk, crate::error::WriteError>,
) -> bool {
    match outcome {
        Ok(ok) => ok.result.is_ok() && !coord_of(&ok.result).granted,
        Err(crate::error::WriteError::Overloaded) => false,
        Err(e) => !e.certainly_not_applied(),
    }
}

/// Takes a lease out of a lock's queue when dropped armed: a waiting acquire that ends without
/// its answer (see [`Api::lock_acquire`]). The cancel runs on its own task, since the request's
/// future may be the thing being dropped, and is sent again until applied ([`leave_queue`]). It
/// gives up a grant made from this very wait only when `abandon` says so; else it keeps it.
struct LeaveQueue {
    /// None once disarmed.
    router: Option<std::sync::Arc<crate::forward::Router>>,
    /// The lock.
    name: String,
    /// The waiting lease.
    lease: u64,
    /// The wait ([`LockAcquireOp::wait_id`]).
    wait_id: u64,
    /// Whether its cancel abandons the wait (gives up a grant made from it): only while the
    /// acquire is known to have queued and nothing of this wait has been answered or claimed.
    /// An acquire whose outcome is unknown may be applied after a retry of the same lease was
    /// granted and answered; a cancel that gave that grant up would take a lock from a client
    /// told it holds it.
    abandon: bool,
    /// How long the cancel may take.
    timeout: Duration,
}

impl LeaveQueue {
    /// The request answers for itself from here on.
    fn disarm(&mut self) {
        self.router = None;
    }
}

impl Drop for LeaveQueue {
    fn drop(&mut self) {
        let Some(router) = self.router.take() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let command = crate::proto::Command {
            // Nobody takes this wait's answer: a grant made from it is given up too (if known
            // to be this wait's own).
            op: Some(Op::LockCancel(LockReleaseOp {
                name: std::mem::take(&mut self.name),
                lease: self.lease,
                wait_id: self.wait_id,
                abandoned: self.abandon,
                // It answers nobody: a grant it keeps is not claimed for this wait.
                claim: false,
            })),
            ..Default::default()
        };
        rt.spawn(leave_queue(router, command, self.lease, self.timeout));
    }
}

/// First pause before a failed cancel is sent again (doubling up to [`CANCEL_PAUSE_MAX`]).
const CANCEL_PAUSE_MIN: Duration = Duration::from_millis(200);
/// Longest pause between cancels.
const CANCEL_PAUSE_MAX: Duration = Duration::from_secs(5);
/// How long an abandoned wait keeps trying to leave its queue.
const CANCEL_RETRY_FOR: Duration = Duration::from_secs(60);
/// Most cancels sent for one abandoned wait.
const CANCEL_ATTEMPTS: u32 = 30;

/// Cancels of abandoned lock waits sent at once from this node, at most: many waits abandoned
/// together (a client fleet gone, an election) send their cancels in turn, not all at once.
const CANCELS_IN_FLIGHT: usize = 64;

/// `pause` spread over 50–100% of itself: the cancels of waits that failed together (in one
/// election) do not all come back in the same instant.
fn jittered(pause: Duration) -> Duration {
    pause.mul_f64(0.5 + rand::random::<f64>() / 2.0)
}

/// Sends `cancel` until it is known applied, [`CANCEL_ATTEMPTS`] have failed, or
/// [`CANCEL_RETRY_FOR`] passes (the task ends with the node's runtime).
/// One attempt is not enough: during an election (or while the leader is out of reach) a cancel
/// fails, and a lease left in the queue is later granted the lock nobody waits for, which then
/// stays taken until the lease ends. A cancel applied twice (an attempt that failed here but was
/// applied) does nothing more the second time: it answers nobody, so it claims nothing.
async fn leave_queue(
    router: std::sync::Arc<crate::forward::Router>,
    cancel: crate::proto::Command,
    lease: u64,
    timeout: Duration,
) {
    static IN_FLIGHT: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(CANCELS_IN_FLIGHT);
    let give_up = Instant::now() + CANCEL_RETRY_FOR;
    let mut pause = CANCEL_PAUSE_MIN;
    for attempt in 1..=CANCEL_ATTEMPTS {
        // (The semaphore is never closed: a permit always comes.)
        let turn = IN_FLIGHT.acquire().await.ok();
        let sent = router.write(cancel.clone(), WriteMode::Semi, timeout).await;
        drop(turn);
        let e = match sent {
            Ok(_) => return,
            Err(e) => e,
        };
        crate::metrics::metrics().lock_cancel_failed.inc();
        // (`ShuttingDown` may be the leader's, forwarded: the next leader takes the cancel.)
        if attempt == CANCEL_ATTEMPTS || Instant::now() + pause >= give_up {
            tracing::warn!(lease, attempt, error = %e, "gave up ending an unanswered lock wait");
            return;
        }
        tracing::info!(lease, attempt, error = %e, "could not end an unanswered lock wait yet; retrying");
        tokio::time::sleep(jittered(pause)).await;
        pause = (pause * 2).min(CANCEL_PAUSE_MAX);
    }
}

impl Api {
    /// `POST /v1/lease`.
    pub(super) async fn lease_grant(&self, headers: &HeaderMap, body: Incoming) -> Answer {
        let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
        let b: LeaseGrantRequest = request::parse_json(&body, "{\"ttl_ms\": u64}")?;
        let min = u64::try_from(self.cfg.min_lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let max = u64::try_from(crate::raft::MAX_TTL.as_millis()).unwrap_or(u64::MAX);
        if b.ttl_ms > max {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("ttl_ms may be at most {max} (7 days), not {}", b.ttl_ms),
            ));
        }
        let ttl_ms = b.ttl_ms.max(min);
        let ok = self
            .write_cmd(Op::LeaseGrant(LeaseGrantOp { ttl_ms }), WriteMode::Semi)
            .await?;
        let r = rejected(&ok.result)?;
        let c = coord_of(r);
        Reply::write(
            &LeaseResponse {
                id: LeaseId(c.lease),
                ttl_ms: c.ttl_ms,
                index: r.index,
            },
            &ok,
        )
    }

    /// Asks the leader about a lease (a keepalive resets its countdown).
    async fn lease_query(&self, id: u64, keepalive: bool) -> Result<(CoordResult, u64), ApiError> {
        let command = crate::proto::Command {
            op: Some(Op::LeaseQuery(LeaseQueryOp { id, keepalive })),
            ..Default::default()
        };
        let ok = self.router.ask(command, self.cfg.request_timeout).await?;
        let r = rejected(&ok.result)?;
        Ok((coord_of(r), r.index))
    }

    /// `POST /v1/lease/{id}/keepalive`.
    pub(super) async fn lease_keepalive(&self, id: u64) -> Answer {
        let (c, index) = self.lease_query(id, true).await?;
        Reply::json(
            &LeaseResponse {
                id: LeaseId(id),
                ttl_ms: c.ttl_ms,
                index,
            },
            Some(index),
        )
    }

    /// `GET /v1/lease/{id}`.
    pub(super) async fn lease_info(&self, id: u64) -> Answer {
        let (c, index) = self.lease_query(id, false).await?;
        // The leader answered after applying `index`; the keys and locks are read here once this
        // node has applied it too.
        if index > self.node.shared().applied() {
            self.node.wait_applied(index, self.cfg.read_timeout).await?;
        }
        let rec = self.sm.lease(id)?.unwrap_or_default();
        Reply::json(
            &LeaseInfo {
                id: LeaseId(id),
                ttl_ms: c.ttl_ms,
                remaining_ms: c.remaining_ms,
                keys: rec.keys,
                locks: rec.locks,
                index,
            },
            Some(index),
        )
    }

    /// `DELETE /v1/lease/{id}`.
    pub(super) async fn lease_revoke(&self, id: u64, q: Query) -> Answer {
        let mode = q.mode.unwrap_or(self.cfg.default_mode);
        let ok = self
            .write_cmd(Op::LeaseRevoke(LeaseRevokeOp { id, expired: false }), mode)
            .await?;
        let r = rejected(&ok.result)?;
        let c = coord_of(r);
        Reply::write(
            &LeaseRevokeResponse {
                id: LeaseId(id),
                keys: c.keys,
                locks: c.locks,
                index: r.index,
            },
            &ok,
        )
    }

    /// `POST /v1/lock/{name}`: granted at once, or after waiting in the queue up to `wait_ms`.
    pub(super) async fn lock_acquire(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        name: String,
    ) -> Answer {
        let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
        let b: LockRequest = request::parse_json(
            &body,
            "{\"lease\": id, \"value\"?: string, \"wait_ms\"?: u64}",
        )?;
        let started = Instant::now();
        let lease = b.lease.0;
        // Names this wait, for its cancel (never 0, which names none).
        let wait_id = rand::random::<u64>() | 1;
        let op = Op::LockAcquire(LockAcquireOp {
            name: name.clone(),
            lease,
            value: b.value.into(),
            wait_id,
        });
        // A lease the acquire queues must leave the queue again unless someone waits for it
        // here, or a later grant goes to a waiter nobody waits for. So the acquire runs on its
        // own task and hands its outcome over together with an armed `LeaveQueue`: an outcome
        // nobody takes (the client went away while it was in flight, or before this handler
        // read it) drops the guard, which cancels; once this handler holds both, the guard
        // cancels whatever ends the wait without an answer (an error, a timeout, the client gone
        // and this future dropped).
        let mut queued = LeaveQueue {
            router: Some(self.router.clone()),
            name: name.clone(),
            lease,
            wait_id,
            abandon: false,
            timeout: self.cfg.request_timeout,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (router, timeout) = (self.router.clone(), self.cfg.request_timeout);
        let acquire = crate::proto::Command {
            op: Some(op),
            ..Default::default()
        };
        // The task serves the same request: its id goes with the forwarded write.
        let id = crate::forward::current_request_id_value()
            .unwrap_or_else(|| hyper::header::HeaderValue::from_static(""));
        tokio::spawn(crate::forward::REQUEST_ID.scope(id, async move {
            let outcome = router.write(acquire, WriteMode::Semi, timeout).await;
            if !outcome_may_have_queued(&outcome) {
                queued.disarm();
            }
            // Known queued: a grant later made from this place is this wait's alone.
            queued.abandon = outcome.is_ok() && outcome_may_have_queued(&outcome);
            // Refused (nobody waits): the guard is dropped here, armed or not.
            let _ = tx.send((outcome, queued));
        }));
        let (outcome, mut queued) = rx.await.map_err(|_| {
            ApiError::new(
                ErrorCode::Internal,
                "the lock acquire's task ended unanswered",
            )
        })?;
        let ok = outcome?;
        let r = rejected(&ok.result)?;
        let c = coord_of(r);
        if c.granted {
            if let Some(h) = &c.holder {
                queued.disarm();
                return Reply::write(&holder_info(&name, h, r.index), &ok);
            }
        }
        // Wait for the grant to be applied here, until the wait ends. This node's state
        // machine must first reach the acquire's own entry: before it, a follower that lags may
        // still show this lease holding the lock from an earlier grant it has since released
        // (and another lease holding it now).
        self.node
            .wait_applied(r.index, self.cfg.read_timeout)
            .await?;
        let deadline = started + wait_of(b.wait_ms);
        let mut changes = self.node.shared().lock_changes();
        loop {
            changes.borrow_and_update();
            if let Some(lock) = self.sm.lock(&name)? {
                if let Some(h) = lock.holder.filter(|h| h.lease == lease) {
                    // Granted to another wait of this lease (a retry took the place over, and
                    // may give the grant up if abandoned): the cancel below claims it for this
                    // one before it is answered. A grant from before waits were named (0) is
                    // given up by no one.
                    if h.wait_id != wait_id && h.wait_id != 0 {
                        break;
                    }
                    queued.disarm();
                    let index = self.node.shared().applied();
                    return Reply::json(&holder_info(&name, &h, index), Some(index));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || tokio::time::timeout(left, changes.changed()).await.is_err() {
                break;
            }
        }
        // The wait is over: leave the queue, unless the lock was granted meanwhile (then claim
        // the grant and answer with it). Until this cancel is known applied, the guard still
        // sends one, which no longer abandons: this one may have claimed a grant, and answered.
        queued.abandon = false;
        let ok = self
            .write_cmd(
                // Answered here: a grant made meanwhile is kept, and returned.
                Op::LockCancel(LockReleaseOp {
                    name: name.clone(),
                    lease,
                    wait_id,
                    abandoned: false,
                    claim: true,
                }),
                WriteMode::Semi,
            )
            .await?;
        queued.disarm();
        let r = rejected(&ok.result)?;
        let c = coord_of(r);
        match (&c.holder, c.granted) {
            (Some(h), true) => Reply::write(&holder_info(&name, h, r.index), &ok),
            (holder, _) => Err(held(&name, holder.as_ref(), r.index)),
        }
    }

    /// `GET /v1/lock/{name}`: the holder, or 404; with `wait_index`, answers once the lock's
    /// holder changed after that index, or when `wait_ms` runs out.
    pub(super) async fn lock_get(&self, name: String, q: Query) -> Answer {
        self.read_barrier(&q).await?;
        let deadline = Instant::now() + wait_of(q.wait_ms.unwrap_or(60_000));
        let mut changes = self.node.shared().lock_changes();
        loop {
            changes.borrow_and_update();
            let index = self.node.shared().applied();
            let lock = self.sm.lock(&name)?.unwrap_or_default();
            let changed = q.wait_index.is_none_or(|w| lock.index > w);
            let left = deadline.saturating_duration_since(Instant::now());
            if changed || left.is_zero() {
                return match lock.holder {
                    Some(h) => Reply::json(&holder_info(&name, &h, index), Some(index)),
                    None => Err(ApiError::new(
                        ErrorCode::LockNotFound,
                        format!("lock {name:?} is not held"),
                    )
                    .at_index(index.max(lock.index))),
                };
            }
            // Woken on any lock change (or at the deadline), then look again.
            let _ = tokio::time::timeout(left, changes.changed()).await;
        }
    }

    /// `DELETE /v1/lock/{name}?lease=`: only the holder's lease releases it.
    pub(super) async fn lock_release(&self, name: String, q: Query) -> Answer {
        let Some(lease) = q.lease else {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                "DELETE /v1/lock/{name} needs ?lease=<the holder's lease>",
            ));
        };
        let mode = q.mode.unwrap_or(self.cfg.default_mode);
        let ok = self
            .write_cmd(
                Op::LockRelease(LockReleaseOp {
                    name: name.clone(),
                    lease,
                    ..Default::default()
                }),
                mode,
            )
            .await?;
        let r = rejected(&ok.result)?;
        Reply::write(
            &Released {
                name,
                lease: LeaseId(lease),
                released: true,
                index: r.index,
            },
            &ok,
        )
    }
}

/// 409 `lock_held`, with the holder.
fn held(name: &str, holder: Option<&LockHolder>, index: u64) -> ApiError {
    let mut err = ApiError::new(
        ErrorCode::LockHeld,
        format!("lock {name:?} is held by another lease"),
    )
    .at_index(index);
    err.body.holder = holder.map(|h| holder_info(name, h, index));
    err
}

#[cfg(test)]
mod tests {
    use super::{jittered, outcome_may_have_queued, CANCEL_PAUSE_MAX};
    use crate::error::WriteError;

    /// Only an acquire that may have been applied leaves a cancel behind (found by review: a
    /// 503 overloaded acquire set off a minute of cancel retries into the overloaded node).
    #[test]
    fn only_an_acquire_that_may_have_been_applied_needs_a_cancel() {
        for (e, may) in [
            (WriteError::Overloaded, false),
            (WriteError::NoLeader, false),
            (WriteError::NotLeader(2), false),
            (WriteError::Dropped, false),
            (WriteError::OutcomeUnknown, true),
            (WriteError::ShuttingDown, true),
        ] {
            let label = e.to_string();
            assert_eq!(outcome_may_have_queued(&Err(e)), may, "{label}");
        }
    }

    /// Retry pauses are spread, within half and all of the pause.
    #[test]
    fn retry_pauses_are_jittered_within_bounds() {
        let pauses: Vec<_> = (0..200).map(|_| jittered(CANCEL_PAUSE_MAX)).collect();
        assert!(pauses
            .iter()
            .all(|p| *p >= CANCEL_PAUSE_MAX / 2 && *p <= CANCEL_PAUSE_MAX));
        assert!(pauses.iter().any(|p| *p != pauses[0]), "never spread");
    }
}
