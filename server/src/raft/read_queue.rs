//! Linearizable reads handed to the Ready loop without waking it for each one.
//!
//! A read-index round is out most of the time under load ([`super::reads`] keeps one in
//! flight), and every read that arrives meanwhile only waits for the next round. Sending each
//! read through the loop's channel woke the loop's thread once per read (a futex wake and two
//! context switches) to do nothing but queue it. Reads now go into this queue; the reader wakes
//! the loop (one [`super::handle::Event::ReadsQueued`]) only when no round is out and no wake is
//! already on its way. When a round is out, its answer (or its re-ask, or its expiry, at the
//! latest a tick later) wakes the loop, which then takes the queue ([`ReadQueue::take`]) and asks
//! the next round.
//!
//! # Why no read is forgotten
//! The queue and its two flags ("a round is out", "a wake is on its way") are under one lock.
//! Before the loop sleeps it settles the first flag to the truth ([`ReadQueue::settle`]: a round
//! is out and a leader is known), and does not sleep if reads wait with no round out. So while
//! the loop sleeps, either a round is out (whose answer, re-ask or expiry wakes it) or a reader
//! that pushes finds the flag clear and wakes it. Within a turn the flag may run ahead of the
//! truth (set when reads are taken, before their round is asked): the settle before sleeping
//! corrects it. When the loop stops, the queue is closed and emptied: its readers' answer
//! channels drop (they fail as shutting down) and later reads are refused.

use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use super::reads::Reply;

/// A read waiting in the queue: when it arrived, and where its read index goes.
pub(super) type Queued = (Instant, Reply);

#[derive(Default)]
struct State {
    /// Reads not yet taken by the loop, in arrival order.
    reads: Vec<Queued>,
    /// A read-index round is out: its answer will wake the loop.
    round_out: bool,
    /// A reader has sent the wake and the loop has not taken the queue since.
    woken: bool,
    /// The loop has stopped: reads are refused.
    closed: bool,
}

/// What a reader does after [`ReadQueue::push`].
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Pushed {
    /// Queued; the loop will take it without being woken.
    Queued,
    /// Queued; the reader must wake the loop.
    Wake,
    /// The loop has stopped.
    Closed,
}

/// The queue (see the module's documentation), shared by the readers and the loop.
#[derive(Default)]
pub struct ReadQueue {
    state: Mutex<State>,
}

impl ReadQueue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can panic half-way through; a poisoned lock still holds a
        // consistent state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a read and says whether the loop must be woken for it.
    pub(super) fn push(&self, read: Queued) -> Pushed {
        let mut s = self.lock();
        if s.closed {
            return Pushed::Closed;
        }
        s.reads.push(read);
        if s.round_out || s.woken {
            return Pushed::Queued;
        }
        s.woken = true;
        Pushed::Wake
    }

    /// For the loop: the queued reads, when `may_take` (no round is out, or no leader to ask:
    /// they then fail at once). Taking reads marks a round out, which the caller is about to
    /// ask; [`ReadQueue::settle`] corrects the mark before the loop sleeps.
    pub(super) fn take(&self, may_take: bool) -> Vec<Queued> {
        let mut s = self.lock();
        s.woken = false;
        if !may_take || s.reads.is_empty() {
            return Vec::new();
        }
        s.round_out = true;
        std::mem::take(&mut s.reads)
    }

    /// For the loop, before it sleeps: records whether a round is out (`round_out`: a round is
    /// asked and a leader is known to answer it). True when reads wait with no round out: the
    /// loop must take them before it sleeps, since no reader will wake it for them.
    pub(super) fn settle(&self, round_out: bool) -> bool {
        let mut s = self.lock();
        s.round_out = round_out;
        !round_out && !s.reads.is_empty()
    }

    /// Whether reads wait in the queue.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().reads.is_empty()
    }

    /// For the loop, when it stops: refuses later reads and drops the queued ones (their
    /// readers then fail as shutting down).
    pub(super) fn close(&self) {
        let dropped = {
            let mut s = self.lock();
            s.closed = true;
            std::mem::take(&mut s.reads)
        };
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ReadError;

    type Answer = tokio::sync::oneshot::Receiver<Result<u64, ReadError>>;

    fn read() -> (Queued, Answer) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        ((Instant::now(), tx.into()), rx)
    }

    #[test]
    fn a_reader_wakes_the_loop_only_when_no_round_is_out_and_no_wake_is_on_its_way() {
        let q = ReadQueue::default();
        let (r1, _rx1) = read();
        assert_eq!(q.push(r1), Pushed::Wake, "idle loop: wake it");
        let (r2, _rx2) = read();
        assert_eq!(q.push(r2), Pushed::Queued, "a wake is on its way");
        // The loop takes both (and asks a round).
        assert_eq!(q.take(true).len(), 2);
        let (r3, _rx3) = read();
        assert_eq!(
            q.push(r3),
            Pushed::Queued,
            "a round is out: its answer wakes the loop"
        );
        // While the round is out the loop leaves the queue alone, and sleeps.
        assert!(q.take(false).is_empty());
        assert!(!q.settle(true));
        // The round is answered: the loop takes the read that waited, asks no round (say, no
        // leader), and must not sleep on a flag that says a round is out.
        assert_eq!(q.take(true).len(), 1);
        assert!(!q.settle(false), "nothing queued: it may sleep");
        let (r4, _rx4) = read();
        assert_eq!(q.push(r4), Pushed::Wake, "no round out: wake the loop");
    }

    /// The stale flag the review found: a round asked and answered within one turn (a single
    /// voter answers a read index at once) left the flag saying a round was out, and a read
    /// queued then waited for the next tick. The settle before sleeping says to take it.
    #[test]
    fn reads_queued_behind_a_round_that_ended_in_the_same_turn_keep_the_loop_awake() {
        let q = ReadQueue::default();
        let (r1, _rx1) = read();
        assert_eq!(q.push(r1), Pushed::Wake);
        assert_eq!(q.take(true).len(), 1, "taken: a round is marked out");
        let (r2, _rx2) = read();
        assert_eq!(q.push(r2), Pushed::Queued, "the mark says a round is out");
        // The round was answered in the same turn: no round is out.
        assert!(
            q.settle(false),
            "a read waits with no round out: do not sleep"
        );
        assert_eq!(q.take(true).len(), 1);
        assert!(!q.settle(true));
    }

    #[test]
    fn a_closed_queue_refuses_reads_and_drops_the_queued_ones() {
        let q = ReadQueue::default();
        let (r1, mut rx1) = read();
        assert_eq!(q.push(r1), Pushed::Wake);
        q.close();
        assert!(
            matches!(
                rx1.try_recv(),
                Err(tokio::sync::oneshot::error::TryRecvError::Closed)
            ),
            "the queued reader learns the loop is gone"
        );
        let (r2, _rx2) = read();
        assert_eq!(q.push(r2), Pushed::Closed);
    }
}
