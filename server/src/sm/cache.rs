//! The value cache: key records held in memory for the point reads of
//! [`super::StateMachine::get_value`], so that a read of a key read before costs a hash lookup
//! instead of a RocksDB lookup (whose memtable search through every recent version of every key
//! was the largest cost of a stale read: docs/benchmarks.md).
//!
//! # Coherence
//! The `data` column family changes in two places only, and both tell the cache after RocksDB
//! holds the change and before the applied index that covers it is published (so a reader that
//! waited for an index finds the cache at least that new):
//! - an apply batch's commit ([`super::ApplyBatch::commit`]): for every key it wrote, the key's
//!   shard moves to a new generation and the key's cached record is replaced or dropped
//!   ([`ValueCache::changed`]);
//! - a snapshot install (behind the install gate, [`super::StateMachine::close_for_install`]):
//!   every shard moves to a new generation and is emptied ([`ValueCache::clear`]).
//!
//! Only reads fill the cache: a read that misses takes a [`Ticket`] (its shard's generation),
//! reads RocksDB, and hands the record back with the ticket; [`ValueCache::fill`] keeps it only
//! if the shard is still at that generation. A record read before a change that landed in
//! between is therefore dropped, never cached over the change (the race the generation exists
//! for; `a_fill_that_raced_a_change_is_dropped` below).
//!
//! # Bounds
//! The cache holds at most its byte budget (keys, values and a fixed overhead per entry),
//! spread over [`SHARDS`] shards; a shard over its share starts over empty (its map freed, so
//! its capacity does not outlive the entries). Values longer than
//! [`MAX_CACHED_VALUE`] are never cached. A budget of 0 turns the cache off.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard};

use crate::proto::ValueRecord;

/// Shards (each with its own lock), so that readers on several workers and the apply rarely
/// meet.
pub const SHARDS: usize = 64;

/// The longest value the cache keeps, in bytes.
pub const MAX_CACHED_VALUE: usize = 16 * 1024;

/// Bytes counted per entry beyond its key and value: the map's slot (72 bytes) at its load
/// factor, the key's allocation rounded up, the record's fields, the shared header of its
/// value once cloned, the allocator's rounding (an estimate: the budget is counted, not
/// measured).
const ENTRY_OVERHEAD: usize = 200;

/// One shard: its generation and its records.
#[derive(Default)]
struct Shard {
    /// Moves on with every change to one of its keys and every clear.
    generation: u64,
    /// Cached records by key.
    records: HashMap<String, ValueRecord>,
    /// Bytes held, as [`cost`] counts them.
    bytes: usize,
}

/// What a read that missed needs to fill the cache: its shard and that shard's generation when
/// the read began.
#[derive(Clone, Copy, Debug)]
pub struct Ticket {
    shard: usize,
    generation: u64,
}

/// The cache (see the module's documentation); shared by the readers and the apply.
pub struct ValueCache {
    shards: Vec<Mutex<Shard>>,
    /// Bytes each shard may hold (0: the cache is off).
    shard_budget: usize,
    /// Picks a key's shard, with keys of its own drawn at start (a client cannot aim its keys
    /// at one shard).
    hasher: RandomState,
}

fn cost(key: &str, rec: &ValueRecord) -> usize {
    key.len() + rec.value.len() + ENTRY_OVERHEAD
}

impl ValueCache {
    /// A cache of at most `budget` bytes (0: off).
    pub fn new(budget: usize) -> Self {
        let shard_budget = budget / SHARDS;
        let n = if shard_budget == 0 { 0 } else { SHARDS };
        ValueCache {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            shard_budget,
            hasher: RandomState::new(),
        }
    }

    /// Whether the cache is on.
    pub fn enabled(&self) -> bool {
        !self.shards.is_empty()
    }

    fn shard_of(&self, key: &str) -> usize {
        (self.hasher.hash_one(key) % self.shards.len().max(1) as u64) as usize
    }

    fn lock(&self, shard: usize) -> MutexGuard<'_, Shard> {
        // A panic while a shard was held cannot leave it half-changed in a way that matters
        // more than an empty shard: clear it and go on.
        self.shards[shard].lock().unwrap_or_else(|poisoned| {
            let mut s = poisoned.into_inner();
            s.generation += 1;
            s.records = HashMap::new();
            s.bytes = 0;
            self.shards[shard].clear_poison();
            s
        })
    }

    /// The cached record of `key`, or the ticket to fill it with after reading RocksDB (None
    /// when the cache is off).
    pub fn get(&self, key: &str) -> Result<ValueRecord, Option<Ticket>> {
        if !self.enabled() {
            return Err(None);
        }
        let shard = self.shard_of(key);
        let s = self.lock(shard);
        match s.records.get(key) {
            Some(rec) => Ok(rec.clone()),
            None => Err(Some(Ticket {
                shard,
                generation: s.generation,
            })),
        }
    }

    /// Keeps `rec`, read from RocksDB after `ticket` was taken, unless its shard changed since.
    pub fn fill(&self, key: &str, ticket: Ticket, rec: &ValueRecord) {
        if rec.value.len() > MAX_CACHED_VALUE || ticket.shard >= self.shards.len() {
            return;
        }
        let c = cost(key, rec);
        if c > self.shard_budget {
            return;
        }
        // A full shard starts over; its old map (capacity and all) is freed outside the lock.
        let evicted;
        {
            let mut s = self.lock(ticket.shard);
            if s.generation != ticket.generation || s.records.contains_key(key) {
                return;
            }
            evicted = if s.bytes + c > self.shard_budget {
                s.bytes = 0;
                std::mem::take(&mut s.records)
            } else {
                HashMap::new()
            };
            s.bytes += c;
            s.records.insert(key.to_string(), rec.clone());
        }
        drop(evicted);
    }

    /// `key` was written (`Some`) or deleted (`None`) in RocksDB: its shard moves on, and a
    /// cached record of it is replaced or dropped. Called after the write, before the applied
    /// index that covers it is published.
    pub fn changed(&self, key: &str, rec: Option<&ValueRecord>) {
        if !self.enabled() {
            return;
        }
        let mut s = self.lock(self.shard_of(key));
        s.generation += 1;
        if let Some(old) = s.records.remove(key) {
            s.bytes -= cost(key, &old);
            if let Some(rec) = rec.filter(|r| r.value.len() <= MAX_CACHED_VALUE) {
                let c = cost(key, rec);
                if s.bytes + c <= self.shard_budget {
                    s.bytes += c;
                    s.records.insert(key.to_string(), rec.clone());
                }
            }
        }
    }

    /// Forgets everything (a snapshot install replaced the data): every shard moves on.
    pub fn clear(&self) {
        for shard in 0..self.shards.len() {
            let old = {
                let mut s = self.lock(shard);
                s.generation += 1;
                s.bytes = 0;
                std::mem::take(&mut s.records)
            };
            // Freed outside the lock (a full cache is many allocations).
            drop(old);
        }
    }

    /// Records held (for tests and figures).
    pub fn len(&self) -> usize {
        (0..self.shards.len())
            .map(|i| self.lock(i).records.len())
            .sum()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether every shard's byte count is the sum of its entries' costs (tests).
    #[cfg(test)]
    fn accounted(&self) -> bool {
        (0..self.shards.len()).all(|i| {
            let s = self.lock(i);
            s.bytes == s.records.iter().map(|(k, r)| cost(k, r)).sum::<usize>()
                && s.bytes <= self.shard_budget
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: &str, version: u64) -> ValueRecord {
        ValueRecord {
            value: bytes::Bytes::copy_from_slice(value.as_bytes()),
            version,
            ..Default::default()
        }
    }

    fn miss(c: &ValueCache, key: &str) -> Ticket {
        c.get(key).err().flatten().expect("a miss with a ticket")
    }

    #[test]
    fn a_read_fills_and_a_change_replaces_or_drops() {
        let c = ValueCache::new(1 << 20);
        let t = miss(&c, "k");
        c.fill("k", t, &rec("a", 1));
        assert_eq!(c.get("k").ok().map(|r| r.version), Some(1));
        c.changed("k", Some(&rec("b", 2)));
        assert_eq!(
            c.get("k").ok().map(|r| r.value),
            Some(bytes::Bytes::from_static(b"b"))
        );
        c.changed("k", None);
        assert!(c.get("k").is_err());
        // A write of a key not cached does not cache it.
        c.changed("other", Some(&rec("x", 3)));
        assert!(c.get("other").is_err());
    }

    /// The reader took its ticket, read the old record from RocksDB, and the apply changed the
    /// key before the reader filled: the old record must not be cached (it would be served
    /// for ever after). Seen failing with the generation check taken out of `fill`.
    #[test]
    fn a_fill_that_raced_a_change_is_dropped() {
        let c = ValueCache::new(1 << 20);
        let t = miss(&c, "k");
        c.changed("k", Some(&rec("new", 2)));
        c.fill("k", t, &rec("old", 1));
        assert!(
            c.get("k").is_err(),
            "a record read before the change was cached"
        );
        // So was one read before a clear (a snapshot install).
        let t = miss(&c, "k");
        c.clear();
        c.fill("k", t, &rec("old", 1));
        assert!(c.get("k").is_err());
        // A fill with a fresh ticket is kept.
        let t = miss(&c, "k");
        c.fill("k", t, &rec("new", 2));
        assert_eq!(c.get("k").ok().map(|r| r.version), Some(2));
    }

    #[test]
    fn the_budget_holds_and_long_values_are_never_cached() {
        let budget = SHARDS * 1024;
        let c = ValueCache::new(budget);
        for i in 0..10_000 {
            let k = format!("key{i}");
            let t = miss(&c, &k);
            c.fill(&k, t, &rec("0123456789", i));
        }
        let held = c.len();
        // Every entry costs at least its shortest key (4 bytes), its value and the overhead.
        assert!(
            held > 0 && held * (4 + 10 + ENTRY_OVERHEAD) <= budget,
            "{held}"
        );
        let long = "x".repeat(MAX_CACHED_VALUE + 1);
        let t = miss(&c, "long");
        c.fill("long", t, &rec(&long, 1));
        assert!(c.get("long").is_err());
    }

    /// A record over a shard's share is not cached and leaves the shard as it was (it used to
    /// empty it first); a write of a cached key whose new record cannot be cached drops it.
    #[test]
    fn a_record_that_cannot_be_kept_neither_empties_a_shard_nor_stays_stale() {
        let c = ValueCache::new(SHARDS * 512);
        for i in 0..300 {
            let k = format!("k{i}");
            let t = miss(&c, &k);
            c.fill(&k, t, &rec("v", 1));
        }
        let held = c.len();
        assert!(held > 0);
        let t = miss(&c, "big");
        c.fill("big", t, &rec(&"x".repeat(600), 1));
        assert!(c.get("big").is_err());
        assert_eq!(c.len(), held, "a record over the share emptied a shard");
        // Cached keys written with records that cannot be cached: dropped, not left stale.
        let cached: Vec<String> = (0..300)
            .map(|i| format!("k{i}"))
            .filter(|k| c.get(k).is_ok())
            .take(2)
            .collect();
        assert_eq!(cached.len(), 2);
        c.changed(&cached[0], Some(&rec(&"x".repeat(MAX_CACHED_VALUE + 1), 2)));
        assert!(
            c.get(&cached[0]).is_err(),
            "a value too long to cache left the old one"
        );
        c.changed(&cached[1], Some(&rec(&"x".repeat(600), 2)));
        assert!(
            c.get(&cached[1]).is_err(),
            "a value over the share left the old one"
        );
        assert!(c.accounted());
    }

    /// The byte count follows fills, replacements, drops, evictions and clears.
    #[test]
    fn the_byte_count_is_the_sum_of_the_entries() {
        let c = ValueCache::new(SHARDS * 2048);
        for round in 0..3u64 {
            for i in 0..500 {
                let k = format!("key{i}");
                if let Err(Some(t)) = c.get(&k) {
                    c.fill(&k, t, &rec(&"v".repeat(i % 40), round));
                }
                match i % 3 {
                    0 => c.changed(&k, Some(&rec(&"w".repeat(i % 70), round + 1))),
                    1 => c.changed(&k, None),
                    _ => {}
                }
                assert!(c.accounted(), "round {round}, key {i}");
            }
        }
        c.clear();
        assert!(c.accounted() && c.is_empty());
    }

    /// A thread that panicked holding a shard leaves it poisoned; the next user resets it and
    /// it works again, without reporting poison a second time.
    #[test]
    fn a_poisoned_shard_is_reset_and_serves_again() {
        let c = std::sync::Arc::new(ValueCache::new(1 << 20));
        let t = miss(&c, "k");
        c.fill("k", t, &rec("a", 1));
        let shard = c.shard_of("k");
        let c2 = c.clone();
        let _ = std::thread::spawn(move || {
            let _held = c2.shards[shard].lock();
            panic!("poisons the shard");
        })
        .join();
        assert!(c.shards[shard].is_poisoned());
        assert!(c.get("k").is_err(), "the reset shard is empty");
        assert!(!c.shards[shard].is_poisoned());
        let t = miss(&c, "k");
        c.fill("k", t, &rec("b", 2));
        assert_eq!(c.get("k").ok().map(|r| r.version), Some(2));
        assert!(c.accounted());
    }

    #[test]
    fn a_budget_of_zero_turns_it_off() {
        let c = ValueCache::new(0);
        assert!(!c.enabled());
        assert!(matches!(c.get("k"), Err(None)));
        c.changed("k", None);
        c.clear();
        assert!(c.is_empty());
    }
}
