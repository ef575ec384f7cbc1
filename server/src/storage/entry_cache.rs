//! The newest entries of the Raft log, kept in memory beside RocksDB.
//!
//! raft-rs reads entries back from [`super::RaftLogStore`] soon after they are appended: to
//! apply them once committed, and on the leader to send them to followers. Reading them from
//! RocksDB (an iterator, a memtable search, a decode per entry) took 4–6% of the Raft thread's
//! samples with 64 clients writing (docs/benchmarks.md). The cache holds a contiguous run of the
//! newest entries, ending at the log's last index, and serves a read only when the whole range
//! lies inside it; anything older is read from RocksDB as before. It follows every change of
//! the log: an append (which may replace a conflicting tail), a compaction and a snapshot
//! install.

use std::collections::VecDeque;

use protobuf::Message as _;
use raft::eraftpb::Entry;

/// At most this many entries are cached.
const MAX_ENTRIES: usize = 4096;
/// At most this many bytes of entries (their encoded size) are cached.
const MAX_BYTES: u64 = 8 * 1024 * 1024;

/// A contiguous run of the newest log entries (see the module docs).
#[derive(Default)]
pub(super) struct EntryCache {
    /// The entries, by index, without gaps; the last one is the log's last entry.
    entries: VecDeque<Entry>,
    /// The encoded size of each entry in `entries`, in the same order.
    sizes: VecDeque<u64>,
    /// The sum of `sizes`.
    bytes: u64,
}

impl EntryCache {
    /// Records entries just written to the log (after the write succeeded). Cached entries at
    /// or after the first of them are dropped first: the append replaced them. Only the newest
    /// entries that fit the bounds are kept (a follower catching up appends far more at once).
    pub(super) fn append(&mut self, appended: &[Entry]) {
        let Some(first) = appended.first() else {
            return;
        };
        debug_assert!(appended.windows(2).all(|w| w[0].index + 1 == w[1].index));
        while self.entries.back().is_some_and(|e| e.index >= first.index) {
            self.pop_back();
        }
        if self
            .entries
            .back()
            .is_some_and(|e| e.index + 1 != first.index)
        {
            self.clear();
        }
        // The newest run of `appended` within the bounds, found from the end.
        let mut keep = 0;
        let mut keep_bytes = 0u64;
        let mut sizes = Vec::new();
        for e in appended.iter().rev() {
            let size = u64::from(e.compute_size());
            if keep == MAX_ENTRIES || keep_bytes + size > MAX_BYTES {
                break;
            }
            keep += 1;
            keep_bytes += size;
            sizes.push(size);
        }
        if keep < appended.len() {
            // Nothing older may stay in front of a cut (no gaps).
            self.clear();
        }
        // Clones share the payload (entries are decoded into buffers of their own).
        for (e, size) in appended[appended.len() - keep..]
            .iter()
            .zip(sizes.into_iter().rev())
        {
            self.entries.push_back(e.clone());
            self.sizes.push_back(size);
            self.bytes += size;
        }
        while self.entries.len() > MAX_ENTRIES || self.bytes > MAX_BYTES {
            self.pop_front();
        }
    }

    /// Forgets the entries up to and including `to` (compacted away).
    pub(super) fn compact(&mut self, to: u64) {
        while self.entries.front().is_some_and(|e| e.index <= to) {
            self.pop_front();
        }
    }

    /// Forgets everything (a snapshot replaced the log), and the room it took.
    pub(super) fn clear(&mut self) {
        self.entries = VecDeque::new();
        self.sizes = VecDeque::new();
        self.bytes = 0;
    }

    /// The entries `[low, high)`, cut after `max_size` bytes but at least one, as raft-rs's
    /// `Storage::entries` returns them; None unless the whole range is cached.
    pub(super) fn get(&self, low: u64, high: u64, max_size: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.index;
        let last = self.entries.back()?.index;
        if low < first || high > last + 1 || low >= high {
            return None;
        }
        let start = usize::try_from(low - first).ok()?;
        let count = usize::try_from(high - low).ok()?;
        let end = start.checked_add(count)?;
        if end > self.entries.len() {
            return None;
        }
        let mut out = Vec::with_capacity(count.min(1024));
        let mut size = 0u64;
        for (e, s) in self
            .entries
            .range(start..end)
            .zip(self.sizes.range(start..end))
        {
            size += s;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(e.clone());
        }
        Some(out)
    }

    fn pop_front(&mut self) {
        self.entries.pop_front();
        if let Some(s) = self.sizes.pop_front() {
            self.bytes -= s;
        }
    }

    fn pop_back(&mut self) {
        self.entries.pop_back();
        if let Some(s) = self.sizes.pop_back() {
            self.bytes -= s;
        }
    }
}

/// A log entry for tests: `index`, `term` and a small payload naming the index.
#[cfg(test)]
pub(super) fn test_entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("e{index}").into_bytes().into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::test_entry as entry;
    use super::*;

    fn indexes(v: &[Entry]) -> Vec<(u64, u64)> {
        v.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn serves_only_whole_ranges_and_follows_a_replaced_tail() {
        let mut c = EntryCache::default();
        assert!(c.get(1, 2, u64::MAX).is_none());
        c.append(&(5..=9).map(|i| entry(i, 1)).collect::<Vec<_>>());
        assert_eq!(
            indexes(&c.get(5, 10, u64::MAX).unwrap()),
            (5..=9).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        assert!(c.get(4, 6, u64::MAX).is_none(), "starts before the cache");
        assert!(c.get(9, 11, u64::MAX).is_none(), "ends after the cache");
        // A new leader overwrites 8.. with its own entries.
        c.append(&[entry(8, 2)]);
        assert_eq!(
            indexes(&c.get(6, 9, u64::MAX).unwrap()),
            vec![(6, 1), (7, 1), (8, 2)]
        );
        assert!(c.get(9, 10, u64::MAX).is_none(), "9 was replaced away");
        // A gap (never from a correct caller) empties the cache rather than caching around it.
        c.append(&[entry(20, 2)]);
        assert!(c.get(6, 7, u64::MAX).is_none());
        assert_eq!(indexes(&c.get(20, 21, u64::MAX).unwrap()), vec![(20, 2)]);
        c.compact(20);
        assert!(c.get(20, 21, u64::MAX).is_none());
    }

    /// The byte count matches the entries held, and they run without gaps.
    fn check(c: &EntryCache) {
        assert_eq!(c.entries.len(), c.sizes.len());
        assert_eq!(c.bytes, c.sizes.iter().sum::<u64>());
        assert!(c.bytes <= MAX_BYTES && c.entries.len() <= MAX_ENTRIES);
        let idx: Vec<u64> = c.entries.iter().map(|e| e.index).collect();
        assert!(idx.windows(2).all(|w| w[0] + 1 == w[1]));
    }

    #[test]
    fn one_huge_append_keeps_only_its_newest_entries() {
        let mut c = EntryCache::default();
        c.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>());
        let n = MAX_ENTRIES as u64 * 3;
        c.append(&(11..11 + n).map(|i| entry(i, 1)).collect::<Vec<_>>());
        check(&c);
        assert_eq!(c.entries.len(), MAX_ENTRIES);
        assert_eq!(c.entries.back().unwrap().index, 10 + n);
        // An entry bigger than the whole cache: the entries after it stay, nothing before it.
        let mut big = entry(11 + n, 1);
        big.data = vec![0u8; MAX_BYTES as usize + 1].into();
        let after: Vec<_> = (12 + n..15 + n).map(|i| entry(i, 1)).collect();
        let mut batch = vec![big];
        batch.extend(after);
        c.append(&batch);
        check(&c);
        assert_eq!(
            indexes(&c.get(12 + n, 15 + n, u64::MAX).unwrap()),
            (12 + n..15 + n).map(|i| (i, 1)).collect::<Vec<_>>()
        );
        assert!(c.get(11 + n, 12 + n, u64::MAX).is_none());
        c.clear();
        check(&c);
        assert!(c.get(12 + n, 13 + n, u64::MAX).is_none());
    }

    #[test]
    fn cuts_by_size_but_returns_at_least_one_and_stays_bounded() {
        let mut c = EntryCache::default();
        c.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>());
        let one = u64::from(entry(1, 1).compute_size());
        assert_eq!(c.get(1, 11, 0).unwrap().len(), 1);
        assert_eq!(c.get(1, 11, one * 3).unwrap().len(), 3);
        c.append(
            &(11..=(MAX_ENTRIES as u64 + 100))
                .map(|i| entry(i, 1))
                .collect::<Vec<_>>(),
        );
        assert_eq!(c.entries.len(), MAX_ENTRIES);
        check(&c);
        assert!(c.get(1, 2, u64::MAX).is_none(), "the oldest went first");
        let last = MAX_ENTRIES as u64 + 100;
        assert_eq!(c.get(last, last + 1, u64::MAX).unwrap()[0].index, last);
    }
}
