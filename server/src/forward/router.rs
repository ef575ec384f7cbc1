//! The follower's side: route a write to the leader and wait for the answer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Semaphore};
use tracing::debug;

use crate::error::WriteError;
use crate::proto::{frame::Body, Command, ForwardReply, ForwardRequest};
use crate::raft::{NodeHandle, WriteOk};
use crate::transport::Transport;
use keel_api::{AckPoint, WriteMode};

/// Attempts per write when the leader moves under it.
const MAX_ATTEMPTS: usize = 3;
/// Pause between attempts, giving an election time to settle.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// Taken off the deadline sent with a forwarded write (`timeout_ms`, which the leader no longer
/// reads: it answers when its loop does; see `serve.rs`).
const REPLY_MARGIN: Duration = Duration::from_millis(200);

/// Routes writes to the leader and matches forwarded replies to their callers.
pub struct Router {
    /// This node's Ready loop (proposals when leading) and its view of the leader.
    pub(super) node: NodeHandle,
    /// Where forwarded writes and replies go.
    pub(super) transport: Transport,
    /// Writes this node forwarded, by request id, waiting for the leader's reply.
    waiting: Mutex<HashMap<u64, oneshot::Sender<ForwardReply>>>,
    /// The next request id (unique per process; replies are matched by it).
    next_id: AtomicU64,
    /// Places for writes other nodes forwarded here and this node is serving.
    pub(super) serving: Arc<Semaphore>,
}

/// Writes forwarded by other nodes that one node serves at once; more are refused as
/// overloaded (at once, without a task each).
pub const MAX_FORWARDED_WRITES: usize = 4096;

impl Router {
    /// Creates a router over this node and its transport, serving at most `max_forwarded`
    /// forwarded writes at once.
    pub fn new(node: NodeHandle, transport: Transport, max_forwarded: usize) -> Arc<Self> {
        Arc::new(Router {
            node,
            transport,
            waiting: Mutex::new(HashMap::new()),
            // Random, like read-index contexts: a reply the leader queued for this node's previous
            // process, delivered after a restart, must not match a new request's id.
            next_id: AtomicU64::new(rand::random::<u64>() >> 1),
            serving: Arc::new(Semaphore::new(max_forwarded)),
        })
    }

    /// Performs a client write wherever the leader is, answering within `timeout`.
    pub async fn write(
        &self,
        command: Command,
        mode: WriteMode,
        timeout: Duration,
    ) -> Result<WriteOk, WriteError> {
        self.route(command, mode, timeout, false).await
    }

    /// Asks the leader something it answers without logging (a lease keepalive or lookup):
    /// like [`Router::write`], but when the leader changes while a forwarded question waits,
    /// it is asked again of the new leader at once (nothing was applied either way), instead of
    /// waiting out the deadline for a leader that may be dead.
    pub async fn ask(&self, command: Command, timeout: Duration) -> Result<WriteOk, WriteError> {
        self.route(command, WriteMode::Semi, timeout, true).await
    }

    async fn route(
        &self,
        command: Command,
        mode: WriteMode,
        timeout: Duration,
        question: bool,
    ) -> Result<WriteOk, WriteError> {
        let deadline = Instant::now() + timeout;
        let mut last_err = WriteError::NoLeader;
        for attempt in 0..MAX_ATTEMPTS {
            if attempt > 0 {
                if Instant::now() + RETRY_PAUSE >= deadline {
                    break;
                }
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let result = match self.node.shared().leader() {
                None => Err(WriteError::NoLeader),
                Some(leader) if leader == self.node.shared().id() => {
                    match tokio::time::timeout(remaining, self.node.propose(command.clone(), mode))
                        .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(WriteError::OutcomeUnknown),
                    }
                }
                Some(leader) => {
                    self.forward(leader, command.clone(), mode, remaining, question)
                        .await
                }
            };
            match result {
                Err(e) if e.certainly_not_applied() => {
                    debug!(attempt, error = %e, "write not applied; retrying");
                    last_err = e;
                }
                other => return other,
            }
        }
        Err(last_err)
    }

    async fn forward(
        &self,
        leader: u64,
        command: Command,
        mode: WriteMode,
        timeout: Duration,
        question: bool,
    ) -> Result<WriteOk, WriteError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_waiting().insert(id, tx);
        let req = ForwardRequest {
            id,
            command: Some(command),
            mode: mode.as_u32(),
            timeout_ms: timeout.saturating_sub(REPLY_MARGIN).as_millis() as u64,
            request_id: super::current_request_id(),
        };
        if !self.transport.send(leader, Body::Forward(req)) {
            self.lock_waiting().remove(&id);
            // Nothing left this node: certainly not applied.
            return Err(WriteError::NoLeader);
        }
        let shared = self.node.shared();
        let moved = async {
            // Only a question gives up on a leader that changed; a write keeps waiting (its
            // entry may be committed by the next leader).
            if !question || !shared.wait_leader(timeout, |l| l != Some(leader)).await {
                std::future::pending::<()>().await;
            }
        };
        let reply = tokio::select! {
            r = tokio::time::timeout(timeout, rx) => match r {
                Ok(Ok(reply)) => reply,
                _ => {
                    self.lock_waiting().remove(&id);
                    return Err(WriteError::OutcomeUnknown);
                }
            },
            () = moved => {
                self.lock_waiting().remove(&id);
                return Err(WriteError::Dropped);
            }
        };
        match (reply.result, AckPoint::from_u32(reply.acked)) {
            (Some(result), Some(acked)) if reply.error_code.is_empty() => {
                Ok(WriteOk { result, acked })
            }
            _ => Err(WriteError::from_code(
                &reply.error_code,
                reply.leader,
                reply.index,
            )),
        }
    }

    /// Delivers a forwarded write's reply to its waiting caller.
    pub fn on_reply(&self, reply: ForwardReply) {
        if let Some(tx) = self.lock_waiting().remove(&reply.id) {
            let _ = tx.send(reply);
        }
    }

    fn lock_waiting(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<ForwardReply>>> {
        // A poisoned lock only means another task panicked mid-insert; the map is still usable.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
