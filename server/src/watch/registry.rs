//! Who to wake: every watcher's filter, indexed by key and by prefix, and the dispatcher task
//! that signals a watcher only when a published change matches it.
//!
//! A watcher that nothing concerns is never woken by writes: on its progress timer it moves its
//! position to [`Registry::dispatched`] without reading the feed. That is safe because of one
//! ordering: the dispatcher signals a change's watchers (sets their flag) before it publishes an
//! index at or past the change, and a watcher clears its flag before it reads the feed. So a
//! watcher that finds its flag clear after loading `dispatched` has read every change up to it
//! that matches.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::feed::{Feed, FeedRead};
use super::stream::Filter;

/// Groups the dispatcher takes from the feed per turn.
const DISPATCH_PAGE: usize = 1024;

/// A watcher's wake-up: a flag (a matching change may be in the feed) and a notification.
#[derive(Default)]
pub struct Signal {
    /// Raised by the dispatcher, cleared by the watcher before it reads: a raise between the
    /// read and the wait is not lost.
    flag: AtomicBool,
    /// Wakes the watcher's task.
    notify: Notify,
}

impl Signal {
    fn raise(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_one();
    }

    /// Clears the flag before reading the feed; true if it was raised.
    pub fn take(&self) -> bool {
        self.flag.swap(false, Ordering::AcqRel)
    }

    /// Waits for the next raise (returns at once if one is pending).
    pub async fn raised(&self) {
        self.notify.notified().await;
    }
}

#[derive(Default)]
/// The watchers by what they watch.
struct Index {
    /// The id of the next registration (to find it again when it leaves).
    next_id: u64,
    /// Watchers of one key, by that key.
    keys: HashMap<String, Vec<(u64, Arc<Signal>)>>,
    /// Watchers of a prefix, by that prefix.
    prefixes: HashMap<String, Vec<(u64, Arc<Signal>)>>,
    /// The lengths of the watched prefixes (length → how many prefixes have it): a change looks
    /// up only these prefixes of its key, not all of them (hashing every prefix of a 4 KiB key
    /// is 8 MB of work).
    lengths: BTreeMap<usize, usize>,
}

impl Index {
    fn bucket(&mut self, filter: &Filter) -> &mut Vec<(u64, Arc<Signal>)> {
        match filter {
            Filter::Key(k) => self.keys.entry(k.clone()).or_default(),
            Filter::Prefix(p) => self.prefixes.entry(p.clone()).or_default(),
        }
    }

    fn signal_all(&self) {
        for list in self.keys.values().chain(self.prefixes.values()) {
            for (_, s) in list {
                s.raise();
            }
        }
    }

    /// Signals the watchers of `key`: its own, and those of each prefix of it.
    fn signal(&self, key: &str) {
        if let Some(list) = self.keys.get(key) {
            list.iter().for_each(|(_, s)| s.raise());
        }
        for &len in self.lengths.keys() {
            if len > key.len() {
                break;
            }
            if let Some(list) = key.get(..len).and_then(|p| self.prefixes.get(p)) {
                list.iter().for_each(|(_, s)| s.raise());
            }
        }
    }
}

/// The watchers of a node and the index up to which they have been signalled.
pub struct Registry {
    /// The watchers; locked by registrations, departures and the dispatcher.
    index: Mutex<Index>,
    /// Every change up to this index has been signalled to the watchers it matches.
    dispatched: AtomicU64,
}

/// A watcher's place in the registry; leaves it when dropped.
pub struct Registration {
    /// Where to leave from.
    registry: Arc<Registry>,
    /// Its id in the registry.
    id: u64,
    /// Its bucket in the registry.
    filter: Filter,
    /// The watcher's wake-up.
    pub signal: Arc<Signal>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut index = self.registry.lock();
        let bucket = index.bucket(&self.filter);
        bucket.retain(|(id, _)| *id != self.id);
        if bucket.is_empty() {
            match &self.filter {
                Filter::Key(k) => {
                    index.keys.remove(k);
                }
                Filter::Prefix(p) => {
                    index.prefixes.remove(p);
                    if let Some(n) = index.lengths.get_mut(&p.len()) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            index.lengths.remove(&p.len());
                        }
                    }
                }
            }
        }
    }
}

impl Registry {
    /// An empty registry, everything up to `applied` dispatched.
    pub fn new(applied: u64) -> Arc<Self> {
        Arc::new(Registry {
            index: Mutex::new(Index::default()),
            dispatched: AtomicU64::new(applied),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every change up to this index has been signalled to its watchers.
    pub fn dispatched(&self) -> u64 {
        self.dispatched.load(Ordering::Acquire)
    }

    /// Adds a watcher of `filter`.
    pub fn register(self: &Arc<Self>, filter: Filter) -> Registration {
        let signal = Arc::new(Signal::default());
        let mut index = self.lock();
        index.next_id += 1;
        let id = index.next_id;
        if let Filter::Prefix(p) = &filter {
            if !index.prefixes.contains_key(p) {
                *index.lengths.entry(p.len()).or_default() += 1;
            }
        }
        index.bucket(&filter).push((id, signal.clone()));
        Registration {
            registry: self.clone(),
            id,
            filter,
            signal,
        }
    }

    /// Watchers registered (for `/metrics` and tests).
    pub fn len(&self) -> usize {
        let index = self.lock();
        index
            .keys
            .values()
            .chain(index.prefixes.values())
            .map(Vec::len)
            .sum()
    }

    /// Whether no watcher is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The dispatcher: follows the feed and signals the watchers each change matches, until
    /// the feed closes. Runs as its own task: the Ready loop never waits for it.
    pub async fn dispatch(self: Arc<Self>, feed: Arc<Feed>) {
        let mut heads = feed.subscribe();
        let mut closed = feed.closed();
        // Bounded by the feed's life: each turn handles what was published, then waits.
        loop {
            if *closed.borrow() {
                // Wake everyone so that they see the end.
                self.lock().signal_all();
                return;
            }
            heads.borrow_and_update();
            let mut position = self.dispatched();
            // Bounded: each page moves the position forward or ends the turn.
            for _ in 0..1_000_000 {
                match feed.read_after(position, DISPATCH_PAGE) {
                    FeedRead::Behind { covers_after } => {
                        // Fell out of the feed (a burst, or a snapshot install): every watcher
                        // looks for itself.
                        self.lock().signal_all();
                        position = covers_after;
                    }
                    FeedRead::Groups { groups, through } => {
                        // The lock is taken per entry: registering and leaving never wait
                        // for a whole page.
                        for g in &groups {
                            let index = self.lock();
                            for c in &g.changes {
                                index.signal(&c.key);
                            }
                        }
                        let done = through == position || groups.len() < DISPATCH_PAGE;
                        position = through;
                        self.dispatched.store(position, Ordering::Release);
                        if done {
                            break;
                        }
                    }
                }
            }
            tokio::select! {
                r = heads.changed() => if r.is_err() { return },
                _ = closed.wait_for(|c| *c) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_signals_its_key_and_every_prefix_of_it_only() {
        let r = Registry::new(0);
        let all = r.register(Filter::Prefix(String::new()));
        let jobs = r.register(Filter::Prefix("jobs/".into()));
        let one = r.register(Filter::Key("jobs/1".into()));
        let other = r.register(Filter::Prefix("cfg/".into()));
        let accent = r.register(Filter::Prefix("é".into()));
        assert_eq!(r.len(), 5);
        r.lock().signal("jobs/1");
        assert!(all.signal.take() && jobs.signal.take() && one.signal.take());
        assert!(!other.signal.take() && !accent.signal.take());
        r.lock().signal("jobs/10");
        assert!(all.signal.take() && jobs.signal.take());
        assert!(!one.signal.take(), "a key watcher is not a prefix watcher");
        r.lock().signal("éa");
        assert!(accent.signal.take());
        drop(jobs);
        assert_eq!(r.len(), 4);
        r.lock().signal("jobs/2");
        assert!(all.signal.take() && !one.signal.take());
        // Only the watched prefix lengths are looked up, and they follow who watches.
        assert_eq!(
            r.lock().lengths.keys().copied().collect::<Vec<_>>(),
            vec![0, 2, 4]
        );
        let twin = r.register(Filter::Prefix("cfg/".into()));
        drop(other);
        r.lock().signal("cfg/x");
        assert!(twin.signal.take(), "a prefix still watched by another");
        drop(twin);
        assert_eq!(
            r.lock().lengths.keys().copied().collect::<Vec<_>>(),
            vec![0, 2]
        );
    }
}
