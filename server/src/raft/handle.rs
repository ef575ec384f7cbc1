//! The way into the Ready loop: the [`Event`]s it takes, the [`NodeHandle`] that sends them and
//! awaits the answers, and the [`Outbox`] through which the loop sends what leaves the node.

use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

use keel_api::{AckPoint, WriteMode};
use raft::eraftpb::{ConfChangeV2, Message};
use tokio::sync::oneshot;

use super::read_queue::Pushed;
use super::shared::Shared;
use super::status::StatusReport;
use crate::error::{ReadError, WriteError};
use crate::members::MemberAddr;
use crate::proto::{ApplyResult, Command};

/// A proposal counted as pending while it lives; as failed when it ends without an answer (an
/// error, or its caller gave up).
struct Pending {
    done: bool,
}

impl Pending {
    fn start() {
        crate::metrics::metrics().proposals_pending.inc();
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let m = crate::metrics::metrics();
        m.proposals_pending.dec();
        if !self.done {
            m.proposals_failed.inc();
        }
    }
}

/// Where a write's outcome goes: the channel a waiting task reads, or a function the loop calls
/// with it (a forwarded write's answer goes straight to the transport: no task waits for it, and
/// none is woken to pass it on).
pub struct Responder(Option<Answer>);

/// The two kinds of [`Responder`].
enum Answer {
    Channel(oneshot::Sender<Result<WriteOk, WriteError>>),
    Call(Box<dyn FnOnce(Result<WriteOk, WriteError>) + Send>),
}

impl Responder {
    /// Answers on a channel (its receiver sees `OutcomeUnknown` if the loop drops this).
    pub fn channel(tx: oneshot::Sender<Result<WriteOk, WriteError>>) -> Self {
        Responder(Some(Answer::Channel(tx)))
    }

    /// Answers by calling `f`, on the loop's thread; dropped unanswered, it is called with
    /// `OutcomeUnknown` (the loop stopped, or the proposal was lost with it).
    pub fn call(f: impl FnOnce(Result<WriteOk, WriteError>) + Send + 'static) -> Self {
        Responder(Some(Answer::Call(Box::new(f))))
    }

    /// Delivers the outcome; false when nobody waits for it any more (a channel's receiver
    /// gave up).
    pub fn send(mut self, out: Result<WriteOk, WriteError>) -> bool {
        match self.0.take() {
            Some(Answer::Channel(tx)) => tx.send(out).is_ok(),
            Some(Answer::Call(f)) => {
                f(out);
                true
            }
            None => false,
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(Answer::Call(f)) = self.0.take() {
            f(Err(WriteError::OutcomeUnknown));
        }
    }
}

/// A client request's place in the loop's queue ([`Shared::admit`]): the loop takes events in
/// order, so the place is given back when it drops the event, whatever it did with it.
pub struct Ticket(Arc<Shared>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// A linearizable read's place among those waiting for their read index ([`Shared::admit_read`]),
/// carried with its reply and given back when the loop answers or drops it.
pub(super) struct ReadPlace(Arc<Shared>);

impl Drop for ReadPlace {
    fn drop(&mut self) {
        self.0.release_read();
    }
}

/// Work for the Ready loop.
pub enum Event {
    /// Propose a client write (only meaningful on the leader).
    Propose {
        /// The write.
        command: Command,
        /// When to answer.
        mode: WriteMode,
        /// Where to answer.
        reply: Responder,
        /// Its place in the loop's queue, given back when the loop drops the event.
        ticket: Ticket,
    },
    /// Propose a membership change (only meaningful on the leader).
    ProposeConfChange {
        /// The change.
        cc: ConfChangeV2,
        /// Its context (a [`crate::members::JoinContext`] as JSON when a member is added).
        context: Vec<u8>,
        /// Where to answer once it is applied.
        reply: Responder,
    },
    /// Hand leadership to this voter (only meaningful on the leader).
    TransferLeader(u64),
    /// Linearizable reads wait in the read queue ([`super::read_queue`]) and no round is out
    /// to wake the loop: take them.
    ReadsQueued,
    /// A Raft message from a peer, and its place in the bounded inbox of peer messages.
    Raft(Box<Message>, super::inbox::Slot),
    /// The transport could not deliver to this peer.
    Unreachable(u64),
    /// A peer restarted with a new, empty data directory: its progress must start over.
    PeerWiped(u64),
    /// The snapshot path finished (or failed) streaming a snapshot to this peer.
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

/// Where the Ready loop sends what leaves the node. Implemented by the node's wiring over the
/// transport and the snapshot sender.
pub trait Outbox: Send + 'static {
    /// Sends Raft messages to their `to` peers (best effort; Raft retries).
    fn send_raft(&self, msgs: Vec<Message>);
    /// Reports this node's applied index to the leader.
    fn send_applied(&self, leader: u64, applied: u64);
    /// Starts (Some) or stops (None) talking to a peer, as membership changes.
    fn set_peer(&self, id: u64, addr: Option<&MemberAddr>);
}

/// A handle to the Ready loop: the channel into it and the state it publishes.
#[derive(Clone)]
pub struct NodeHandle {
    /// Into the loop.
    tx: Sender<Event>,
    /// Out of the loop.
    shared: Arc<Shared>,
}

impl NodeHandle {
    /// A handle over the loop's channel and published state.
    pub(super) fn new(tx: Sender<Event>, shared: Arc<Shared>) -> Self {
        NodeHandle { tx, shared }
    }

    /// The published state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Sends an event; false when the loop has stopped.
    pub fn send(&self, ev: Event) -> bool {
        self.tx.send(ev).is_ok()
    }

    /// Hands a client write to the loop, taking a place in its backlog; the refusal (and the
    /// `reply` back) when the backlog is full or the loop has stopped, in which case nothing
    /// was proposed.
    fn enqueue(
        &self,
        command: Command,
        mode: WriteMode,
        reply: Responder,
    ) -> Result<(), (Responder, WriteError)> {
        if !self.shared.admit() {
            return Err((reply, WriteError::Overloaded));
        }
        let ticket = Ticket(self.shared.clone());
        let ev = Event::Propose {
            command,
            mode,
            reply,
            ticket,
        };
        match self.tx.send(ev) {
            Ok(()) => Ok(()),
            Err(refused) => match refused.0 {
                Event::Propose { reply, .. } => Err((reply, WriteError::ShuttingDown)),
                _ => unreachable!("the event sent is a proposal"),
            },
        }
    }

    /// Proposes a write on this node (which must be the leader) and waits for its answer.
    pub async fn propose(&self, command: Command, mode: WriteMode) -> Result<WriteOk, WriteError> {
        let (reply, rx) = oneshot::channel();
        if let Err((_, e)) = self.enqueue(command, mode, Responder::channel(reply)) {
            crate::metrics::metrics().proposals_failed.inc();
            return Err(e);
        }
        // The loop always answers, unless it stops, in which case the outcome is not known. A
        // caller that gives up (a timeout drops this future) is counted as failed too.
        Pending::start();
        let mut pending = Pending { done: false };
        let out = rx.await.unwrap_or(Err(WriteError::OutcomeUnknown));
        pending.done = out.is_ok();
        out
    }

    /// Proposes a membership change on this node (which must be the leader) and waits until it
    /// is applied here.
    pub async fn propose_conf_change(
        &self,
        cc: ConfChangeV2,
        context: Vec<u8>,
    ) -> Result<WriteOk, WriteError> {
        let (reply, rx) = oneshot::channel();
        if !self.send(Event::ProposeConfChange {
            cc,
            context,
            reply: Responder::channel(reply),
        }) {
            return Err(WriteError::ShuttingDown);
        }
        rx.await.unwrap_or(Err(WriteError::OutcomeUnknown))
    }

    /// Proposes a write on this node (which must be the leader) and has the loop call `then`
    /// with its answer, on the loop's thread: for a forwarded write, whose answer only goes back
    /// to the transport. `then` is called exactly once, here when the write is refused at once.
    pub fn propose_then(
        &self,
        command: Command,
        mode: WriteMode,
        then: impl FnOnce(Result<WriteOk, WriteError>) + Send + 'static,
    ) {
        Pending::start();
        let pending = Pending { done: false };
        let reply = Responder::call(move |out| {
            let mut pending = pending;
            pending.done = out.is_ok();
            then(out)
        });
        // Refused: nothing was proposed, so say why (dropping the reply would say
        // `OutcomeUnknown`); the pending count goes back down and counts a failure.
        if let Err((reply, e)) = self.enqueue(command, mode, reply) {
            reply.send(Err(e));
        }
    }

    /// Obtains a read index through Raft (on any node).
    pub async fn read_index(&self) -> Result<u64, ReadError> {
        // A full backlog of events refuses reads as overloaded, but a read holds no place in it:
        // reads waiting for their read index have a bound of their own, the same number. The
        // place goes with the read's reply: a client that leaves leaves it taken until the loop
        // answers or drops the read (at the latest at its expiry, `--read-timeout`).
        if self.shared.backlog_full() || !self.shared.admit_read() {
            return Err(ReadError::Overloaded);
        }
        let place = ReadPlace(self.shared.clone());
        let (tx, rx) = oneshot::channel();
        let started = std::time::Instant::now();
        match self
            .shared
            .read_queue()
            .push((started, super::reads::Reply::holding(tx, place)))
        {
            Pushed::Queued => {}
            Pushed::Wake => {
                if !self.send(Event::ReadsQueued) {
                    return Err(ReadError::ShuttingDown);
                }
            }
            Pushed::Closed => return Err(ReadError::ShuttingDown),
        }
        let out = rx.await.unwrap_or(Err(ReadError::ShuttingDown));
        if out.is_ok() {
            crate::metrics::observe(&crate::metrics::metrics().read_index, started.elapsed());
        }
        out
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    type Answers = Arc<Mutex<Vec<Result<WriteOk, WriteError>>>>;

    fn recorder() -> (
        Answers,
        impl FnOnce(Result<WriteOk, WriteError>) + Send + 'static,
    ) {
        let answers = Answers::default();
        let sink = answers.clone();
        (answers, move |out| {
            sink.lock().map(|mut a| a.push(out)).ok();
        })
    }

    fn handle(max_queued: usize) -> (NodeHandle, std::sync::mpsc::Receiver<Event>) {
        let (tx, rx) = std::sync::mpsc::channel();
        let shared = Arc::new(Shared::new(1, 1, 0, 0));
        shared.set_max_queued(max_queued);
        (NodeHandle::new(tx, shared), rx)
    }

    fn only(answers: &Answers) -> Result<WriteOk, WriteError> {
        let mut a = answers.lock().expect("answers");
        assert_eq!(a.len(), 1, "exactly one answer");
        a.remove(0)
    }

    #[test]
    fn a_called_responder_answers_once_and_not_again_when_dropped() {
        let (answers, f) = recorder();
        let r = Responder::call(f);
        assert!(r.send(Err(WriteError::Dropped)));
        assert!(matches!(only(&answers), Err(WriteError::Dropped)));
    }

    #[test]
    fn a_responder_the_loop_drops_unanswered_answers_outcome_unknown() {
        let (answers, f) = recorder();
        let (h, rx) = handle(8);
        h.propose_then(Command::default(), WriteMode::Semi, f);
        assert!(
            answers.lock().expect("answers").is_empty(),
            "not answered yet"
        );
        // The loop stops with the proposal in its channel: it may or may not have been taken.
        drop(rx);
        assert!(matches!(only(&answers), Err(WriteError::OutcomeUnknown)));
    }

    #[test]
    fn a_proposal_to_a_stopped_loop_is_refused_as_shutting_down_not_outcome_unknown() {
        let (answers, f) = recorder();
        let (h, rx) = handle(8);
        drop(rx);
        h.propose_then(Command::default(), WriteMode::Semi, f);
        let out = only(&answers);
        // Nothing reached the loop: the answer says so, as `propose` does (dropping the event
        // would have said `OutcomeUnknown`).
        assert!(matches!(out, Err(WriteError::ShuttingDown)), "{out:?}");
    }

    /// Polls `read` once.
    fn poll_once(
        read: &mut std::pin::Pin<Box<impl std::future::Future<Output = Result<u64, ReadError>>>>,
    ) -> std::task::Poll<Result<u64, ReadError>> {
        let waker = futures::task::noop_waker();
        read.as_mut()
            .poll(&mut std::task::Context::from_waker(&waker))
    }

    #[test]
    fn a_read_keeps_its_place_until_the_loop_drops_it_even_after_its_client_left() {
        use std::task::Poll;
        let (h, _rx) = handle(1);
        let mut first = Box::pin(h.read_index());
        assert!(
            poll_once(&mut first).is_pending(),
            "waits for its read index"
        );
        let mut second = Box::pin(h.read_index());
        let refused = poll_once(&mut second);
        assert!(
            matches!(refused, Poll::Ready(Err(ReadError::Overloaded))),
            "{refused:?}"
        );
        // Its client leaves; the read is still in the loop's queue and keeps its place.
        drop(first);
        let mut third = Box::pin(h.read_index());
        assert!(matches!(
            poll_once(&mut third),
            Poll::Ready(Err(ReadError::Overloaded))
        ));
        // The loop takes the read and drops it (answered or expired): the place is free again.
        drop(h.shared.read_queue().take(true));
        let mut fourth = Box::pin(h.read_index());
        assert!(
            poll_once(&mut fourth).is_pending(),
            "admitted once the place came back"
        );
    }

    #[test]
    fn a_proposal_past_the_backlog_is_refused_as_overloaded_without_reaching_the_loop() {
        let (answers, f) = recorder();
        let (h, rx) = handle(0);
        h.propose_then(Command::default(), WriteMode::Semi, f);
        assert!(matches!(only(&answers), Err(WriteError::Overloaded)));
        assert!(rx.try_recv().is_err(), "nothing was sent to the loop");
    }
}
