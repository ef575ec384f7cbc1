//! The feed: the most recent changes in memory, published by the Ready loop after each apply
//! batch, and a wake-up for every watcher.
//!
//! The loop only appends and evicts under a short lock and bumps a `watch` channel: it never
//! waits for a watcher. The feed covers every entry above `covers_after` up to `head` (the
//! applied index last published); a watcher whose position is below `covers_after` has fallen
//! out of it (it reads the change log instead, or is cut off).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use super::registry::Registry;
use crate::sm::Change;

/// The changes of one entry, in key order.
#[derive(Debug)]
pub struct Group {
    /// The entry's index.
    pub index: u64,
    /// Its changes.
    pub changes: Vec<Change>,
}

/// Bounds of the feed, from the flags.
#[derive(Clone, Copy, Debug)]
pub struct FeedLimits {
    /// Most changes held.
    pub max_changes: usize,
    /// Most bytes of keys and values held.
    pub max_bytes: usize,
}

impl Default for FeedLimits {
    fn default() -> Self {
        FeedLimits {
            max_changes: 65_536,
            max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// The changes held, oldest first, and what they cover.
struct Ring {
    /// One group per applied entry that changed something, in index order.
    groups: VecDeque<Arc<Group>>,
    /// Every entry above this index (up to `head`) has its changes here.
    covers_after: u64,
    /// The applied index last published.
    head: u64,
    /// Changes held (bounded by [`FeedLimits::max_changes`]).
    changes: usize,
    /// Bytes of keys and values held (bounded by [`FeedLimits::max_bytes`]).
    bytes: usize,
}

/// What a watcher finds in the feed after its position.
#[derive(Debug)]
pub enum FeedRead {
    /// Its position is below what the feed holds.
    Behind {
        /// The feed holds every entry above this.
        covers_after: u64,
    },
    /// The groups after its position (at most the number asked for), and the index through
    /// which they are complete.
    Groups {
        /// The groups, in log order.
        groups: Vec<Arc<Group>>,
        /// Every change up to this index is in `groups` or at or below the position.
        through: u64,
    },
}

/// The in-memory feed of recent changes.
pub struct Feed {
    /// The changes; locked briefly by the publisher (the Ready loop) and by readers.
    ring: Mutex<Ring>,
    /// How much the ring may hold before its oldest groups are dropped.
    limits: FeedLimits,
    /// The published applied index; watchers wait on it. Closed (sender gone) never: watchers
    /// end on `closed`.
    head_tx: watch::Sender<u64>,
    /// Set when the node stops serving: every watcher ends.
    closed: watch::Sender<bool>,
    /// The watchers, and who to wake for a change.
    registry: Arc<Registry>,
}

impl Feed {
    /// An empty feed at applied index `applied`.
    pub fn new(applied: u64, limits: FeedLimits) -> Self {
        Feed {
            ring: Mutex::new(Ring {
                groups: VecDeque::new(),
                covers_after: applied,
                head: applied,
                changes: 0,
                bytes: 0,
            }),
            limits,
            head_tx: watch::channel(applied).0,
            closed: watch::channel(false).0,
            registry: Registry::new(applied),
        }
    }

    /// The watchers of this feed.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves the ring consistent (every update is a push or a
        // pop): keep serving.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes an apply batch: its changes (in log order) and the applied index it reached.
    pub fn publish(&self, changes: Vec<Change>, applied: u64) {
        {
            let mut ring = self.ring();
            let mut group: Option<Group> = None;
            for c in changes {
                if c.index <= ring.head {
                    continue;
                }
                match &mut group {
                    Some(g) if g.index == c.index => g.changes.push(c),
                    _ => {
                        if let Some(g) = group.take() {
                            push(&mut ring, g);
                        }
                        group = Some(Group {
                            index: c.index,
                            changes: vec![c],
                        });
                    }
                }
            }
            if let Some(g) = group {
                push(&mut ring, g);
            }
            ring.head = ring.head.max(applied);
            while ring.changes > self.limits.max_changes || ring.bytes > self.limits.max_bytes {
                let Some(old) = ring.groups.pop_front() else {
                    break;
                };
                ring.changes = ring.changes.saturating_sub(old.changes.len());
                ring.bytes = ring.bytes.saturating_sub(group_bytes(&old));
                ring.covers_after = old.index;
            }
        }
        self.head_tx.send_replace(applied);
    }

    /// After a snapshot install: nothing before `applied` can be told any more.
    pub fn reset(&self, applied: u64) {
        {
            let mut ring = self.ring();
            ring.groups.clear();
            ring.changes = 0;
            ring.bytes = 0;
            ring.covers_after = applied;
            ring.head = applied;
        }
        self.head_tx.send_replace(applied);
    }

    /// Ends every watcher (the node stops serving).
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// A receiver that wakes when a batch is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head_tx.subscribe()
    }

    /// A receiver that wakes when the feed closes.
    pub fn closed(&self) -> watch::Receiver<bool> {
        self.closed.subscribe()
    }

    /// The feed holds every change of the entries above this index.
    pub fn covers_after(&self) -> u64 {
        self.ring().covers_after
    }

    /// The applied index last published.
    pub fn head(&self) -> u64 {
        self.ring().head
    }

    /// The groups after `position`, at most `max`.
    pub fn read_after(&self, position: u64, max: usize) -> FeedRead {
        let ring = self.ring();
        if position < ring.covers_after {
            return FeedRead::Behind {
                covers_after: ring.covers_after,
            };
        }
        let first = ring.groups.partition_point(|g| g.index <= position);
        let groups: Vec<Arc<Group>> = ring.groups.range(first..).take(max).cloned().collect();
        let through = if first + groups.len() < ring.groups.len() {
            groups.last().map_or(position, |g| g.index)
        } else {
            ring.head.max(position)
        };
        FeedRead::Groups { groups, through }
    }

    /// Changes and bytes held (for `/metrics`).
    pub fn held(&self) -> (usize, usize) {
        let ring = self.ring();
        (ring.changes, ring.bytes)
    }
}

fn group_bytes(g: &Group) -> usize {
    g.changes.iter().map(Change::size).sum()
}

fn push(ring: &mut Ring, g: Group) {
    ring.changes += g.changes.len();
    ring.bytes += group_bytes(&g);
    ring.groups.push_back(Arc::new(g));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::ChangeKind;

    fn change(index: u64, key: &str) -> Change {
        Change {
            index,
            place: 0,
            kind: ChangeKind::Put,
            key: key.into(),
            value: bytes::Bytes::from_static(b"v"),
            lease: 0,
        }
    }

    fn indexes(read: FeedRead) -> (Vec<u64>, u64) {
        match read {
            FeedRead::Groups { groups, through } => {
                (groups.iter().map(|g| g.index).collect(), through)
            }
            FeedRead::Behind { covers_after } => panic!("behind {covers_after}"),
        }
    }

    #[test]
    fn groups_by_entry_evicts_oldest_and_says_when_a_position_fell_behind() {
        let feed = Feed::new(
            10,
            FeedLimits {
                max_changes: 4,
                max_bytes: usize::MAX,
            },
        );
        feed.publish(vec![change(11, "a"), change(11, "b"), change(13, "c")], 14);
        assert_eq!(indexes(feed.read_after(10, 10)), (vec![11, 13], 14));
        assert_eq!(indexes(feed.read_after(11, 10)), (vec![13], 14));
        assert_eq!(indexes(feed.read_after(11, 0)), (vec![], 11));
        assert_eq!(indexes(feed.read_after(10, 1)), (vec![11], 11));
        // A position ahead of the node: nothing yet, complete through the position.
        assert_eq!(indexes(feed.read_after(20, 10)), (vec![], 20));
        // Two more changes: the oldest entry (two changes) is evicted.
        feed.publish(vec![change(15, "d"), change(16, "e")], 16);
        assert!(matches!(
            feed.read_after(10, 10),
            FeedRead::Behind { covers_after: 11 }
        ));
        assert_eq!(indexes(feed.read_after(11, 10)), (vec![13, 15, 16], 16));
        // A change at or below the head is never published twice.
        feed.publish(vec![change(16, "e")], 16);
        assert_eq!(indexes(feed.read_after(11, 10)), (vec![13, 15, 16], 16));
        feed.reset(40);
        assert!(matches!(
            feed.read_after(16, 10),
            FeedRead::Behind { covers_after: 40 }
        ));
        assert_eq!(indexes(feed.read_after(40, 10)), (vec![], 40));
    }
}
