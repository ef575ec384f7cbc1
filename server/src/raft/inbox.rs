//! The bound on Raft messages from peers waiting for the Ready loop. Client requests have their
//! own bound ([`super::Shared::admit`]); peer messages share the loop's channel and are admitted
//! here, by count and by the bytes of the entries they carry. A message refused when the queue
//! is full is dropped, which Raft tolerates (the leader sends again after its next heartbeat
//! round), and counted as `keel_raft_inbox_dropped_total`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use raft::prelude::Message;

/// Peer messages allowed to wait for the loop.
pub const MAX_MESSAGES: usize = 4096;
/// Bytes of entries those messages may carry in all.
pub const MAX_BYTES: usize = 256 * 1024 * 1024;

/// What peer messages wait for the loop, and the bounds.
#[derive(Debug)]
pub struct Inbox {
    /// Messages waiting.
    messages: AtomicUsize,
    /// Bytes of entry data they carry.
    bytes: AtomicUsize,
    /// The most messages allowed to wait.
    max_messages: usize,
    /// The most bytes allowed to wait.
    max_bytes: usize,
}

/// One admitted message's place in the inbox; given back when dropped (once the loop has taken
/// the message, or if it never reaches the loop).
#[derive(Debug)]
pub struct Slot {
    /// The inbox the place is in.
    inbox: Arc<Inbox>,
    /// The bytes it holds.
    bytes: usize,
}

impl Inbox {
    /// An empty inbox with the given bounds.
    pub fn new(max_messages: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Inbox {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages,
            max_bytes,
        })
    }

    /// A place for `msg`, or None (counted) when the inbox is full. A message larger than the
    /// whole byte bound is let in when nothing else waits, so that no entry is refused for ever;
    /// a message without payload (a heartbeat, a vote) needs only a place by count.
    pub fn admit(self: &Arc<Self>, msg: &Message) -> Option<Slot> {
        let bytes = weight(msg);
        let before = self.messages.fetch_add(1, Ordering::AcqRel);
        let held = self.bytes.fetch_add(bytes, Ordering::AcqRel);
        let fits = before < self.max_messages
            && (held == 0 || bytes == 0 || held + bytes <= self.max_bytes);
        if !fits {
            self.messages.fetch_sub(1, Ordering::AcqRel);
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            crate::metrics::metrics().raft_inbox_dropped.inc();
            return None;
        }
        Some(Slot {
            inbox: self.clone(),
            bytes,
        })
    }

    /// Messages waiting now.
    pub fn waiting(&self) -> usize {
        self.messages.load(Ordering::Acquire)
    }
}

/// The bytes a message holds beyond its fixed fields: every variable-length part a peer
/// controls (entries' data and context, the message's context, a snapshot's data).
fn weight(msg: &Message) -> usize {
    let entries: usize = msg
        .get_entries()
        .iter()
        .map(|e| e.data.len() + e.context.len())
        .sum();
    entries + msg.context.len() + msg.get_snapshot().data.len()
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.inbox.messages.fetch_sub(1, Ordering::AcqRel);
        self.inbox.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::prelude::Entry;

    fn append(bytes: usize) -> Message {
        let mut m = Message::default();
        let e = Entry {
            data: vec![0u8; bytes].into(),
            ..Default::default()
        };
        m.set_entries(vec![e].into());
        m
    }

    #[test]
    fn a_full_inbox_refuses_until_the_loop_takes_messages() {
        let inbox = Inbox::new(3, 1000);
        let slots: Vec<Slot> = (0..3)
            .map(|_| inbox.admit(&Message::default()).expect("room"))
            .collect();
        assert!(
            inbox.admit(&Message::default()).is_none(),
            "a fourth message"
        );
        assert_eq!(inbox.waiting(), 3);
        drop(slots);
        assert_eq!(inbox.waiting(), 0);
        assert!(inbox.admit(&Message::default()).is_some());
    }

    #[test]
    fn entries_count_against_the_byte_bound_and_a_lone_large_one_passes() {
        let inbox = Inbox::new(100, 1000);
        let a = inbox.admit(&append(600)).expect("room");
        assert!(inbox.admit(&append(600)).is_none(), "1,200 bytes > 1,000");
        let b = inbox.admit(&append(400)).expect("exactly 1,000");
        drop((a, b));
        // Larger than the bound, but alone: let in.
        let big = inbox.admit(&append(5000)).expect("alone");
        assert!(
            inbox.admit(&append(1)).is_none(),
            "behind a message over the bound"
        );
        let heartbeat = inbox.admit(&Message::default()).expect("no payload");
        drop((big, heartbeat));
        // Contexts weigh too: a peer cannot slip bytes past the bound there.
        let m = Message {
            context: vec![0u8; 900].into(),
            ..Default::default()
        };
        let e = Entry {
            context: vec![0u8; 900].into(),
            ..Default::default()
        };
        let mut n = Message::default();
        n.set_entries(vec![e].into());
        let first = inbox.admit(&m).expect("room");
        assert!(inbox.admit(&n).is_none(), "1,800 bytes of contexts > 1,000");
        drop(first);
        assert_eq!(inbox.bytes.load(Ordering::Acquire), 0);
    }
}
