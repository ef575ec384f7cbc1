//! The change log: every key each applied entry changed, in the order of the log, kept for
//! watches to resume from (SPEC §9).
//!
//! Each entry's changes are sorted by key and numbered (their place), so that the changes of one
//! transaction arrive in key order and a watcher cut off in the middle of them can resume at
//! the next one. They are written to the `changes` column family in the apply batch, with the
//! data they describe, keyed by index and place (big-endian: the column family sorts in log
//! order). The log keeps the changes of the last `--watch-history` entries: once the applied
//! index runs that far (and a little more) past the log's start, the start moves up in the same
//! batch that deletes what falls below it. Nothing here is replicated through the log: each node
//! writes its change log as it applies, and a snapshot carries the sender's, so that a node that
//! installs one can still resume watches from before it (`snapshot::stage`).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use prost::Message as _;
use rocksdb::{Direction, IteratorMode, WriteBatch};

use super::apply::ApplyBatch;
use super::StateMachine;
use crate::proto::{ChangeKind, ChangeRecord, ValueRecord};
use crate::storage::{cf, index_key, meta, rocks, StorageError, CF_CHANGES, CF_META};

/// Entries whose changes are kept unless `--watch-history` says otherwise.
pub const DEFAULT_HISTORY_ENTRIES: u64 = 100_000;

/// One key's change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The index of the entry that made it.
    pub index: u64,
    /// Its place among that entry's changes (they are in key order).
    pub place: u32,
    /// What happened.
    pub kind: ChangeKind,
    /// The key.
    pub key: String,
    /// The new value (puts only).
    pub value: Bytes,
    /// The key's lease after a put, or the lease whose end deleted it (0: none).
    pub lease: u64,
}

impl Change {
    /// Its key in the `changes` column family.
    fn log_key(&self) -> [u8; 12] {
        let mut k = [0u8; 12];
        k[..8].copy_from_slice(&index_key(self.index));
        k[8..].copy_from_slice(&self.place.to_be_bytes());
        k
    }

    fn decode(k: &[u8], v: &[u8]) -> Result<Change, StorageError> {
        let corrupt = |detail: String| StorageError::Corrupt {
            what: "change record",
            detail,
        };
        let (index, place) = match (k.get(..8), k.get(8..12)) {
            (Some(i), Some(p)) if k.len() == 12 => (
                u64::from_be_bytes(i.try_into().map_err(|_| corrupt("key".into()))?),
                u32::from_be_bytes(p.try_into().map_err(|_| corrupt("key".into()))?),
            ),
            _ => return Err(corrupt(format!("a key of {} bytes", k.len()))),
        };
        let rec = ChangeRecord::decode(v).map_err(|e| corrupt(e.to_string()))?;
        let kind = ChangeKind::try_from(rec.kind)
            .map_err(|_| corrupt(format!("unknown kind {}", rec.kind)))?;
        Ok(Change {
            index,
            place,
            kind,
            key: rec.key,
            value: rec.value,
            lease: rec.lease,
        })
    }

    /// Bytes it holds in memory, roughly (for the feed's bound).
    pub fn size(&self) -> usize {
        self.key.len() + self.value.len() + 64
    }
}

/// How much history the node keeps, and where it starts now.
#[derive(Debug)]
pub struct History {
    /// Entries whose changes are kept.
    retention: u64,
    /// The changes of every entry above this index are in the log (as last written).
    after: AtomicU64,
}

impl History {
    /// A history keeping `retention` entries, starting after `after`.
    pub fn new(retention: u64, after: u64) -> Self {
        History {
            retention,
            after: AtomicU64::new(after),
        }
    }

    /// The changes of every entry above this index are in the log.
    pub fn after(&self) -> u64 {
        self.after.load(Ordering::Acquire)
    }

    /// Publishes a start written by [`ApplyBatch::trim_history`] (once the batch is written).
    pub(super) fn trimmed_to(&self, to: u64) {
        self.after.fetch_max(to, Ordering::AcqRel);
    }

    /// After a snapshot install: the log now starts after `after` (the history that came with
    /// the snapshot).
    pub fn restart_after(&self, after: u64) {
        self.after.store(after, Ordering::Release);
    }

    /// Where the log's start moves to when the applied index reaches `applied` (None: it stays):
    /// it moves once it trails by a sixteenth more than kept (at least 256 entries), so that the
    /// deletion is one range now and then, not one per batch.
    fn trim_to(&self, applied: u64) -> Option<u64> {
        let slack = (self.retention / 16).max(256);
        let keep_from = applied.saturating_sub(self.retention);
        (keep_from > self.after().saturating_add(slack)).then_some(keep_from)
    }
}

/// A page of history read from one RocksDB snapshot.
#[derive(Debug)]
pub struct HistoryPage {
    /// Changes after the asked index, whole entries only, in log order.
    pub changes: Vec<Change>,
    /// Every change up to this index has been read (the last entry read, or the snapshot's
    /// applied index when the log was read to its end).
    pub through: u64,
    /// The log's start at that snapshot: asking after a lower index means changes are missing.
    pub history_after: u64,
}

impl StateMachine {
    /// Reads where the change log starts, writing it down as the applied index when it was
    /// never written (a data directory from before the change log, or a restored backup: no
    /// history before what it holds). Called once at start, with the retention to keep.
    pub fn open_history(&mut self, retention: u64) -> Result<(), StorageError> {
        let meta_cf = cf(&self.db, CF_META)?;
        let after = match meta::history_after_through(|k| self.db.get_cf(meta_cf, k))? {
            Some(after) => after,
            None => {
                let applied = self.applied_index()?;
                let mut batch = WriteBatch::default();
                meta::put_history_after(&self.db, &mut batch, applied)?;
                self.db.write(batch).map_err(rocks("write history start"))?;
                applied
            }
        };
        self.history = std::sync::Arc::new(History::new(retention, after));
        Ok(())
    }

    /// Where the change log starts, as written (exact; [`History::after`] is the published
    /// copy, which a trim updates just after writing).
    pub fn history_start(&self) -> Result<u64, StorageError> {
        let meta_cf = cf(&self.db, CF_META)?;
        Ok(meta::history_after_through(|k| self.db.get_cf(meta_cf, k))?
            .unwrap_or_else(|| self.history.after()))
    }

    /// The node's history settings and start.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Reads the changes made after index `after`, from one snapshot, until about `max` changes
    /// or `max_bytes` of keys and values are read (whole entries: an entry's changes are never
    /// split across pages).
    pub fn read_history(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, StorageError> {
        self.gate
            .read(|| self.read_history_ungated(after, max, max_bytes))
    }

    fn read_history_ungated(
        &self,
        after: u64,
        max: usize,
        max_bytes: usize,
    ) -> Result<HistoryPage, StorageError> {
        let snap = self.db.snapshot();
        let meta_cf = cf(&self.db, CF_META)?;
        let applied = meta::applied_through(|k| snap.get_cf(meta_cf, k))?.0;
        let history_after = meta::history_after_through(|k| snap.get_cf(meta_cf, k))?
            .unwrap_or_else(|| self.history.after());
        let mut page = HistoryPage {
            changes: Vec::new(),
            through: applied.max(after),
            history_after,
        };
        if after < history_after {
            return Ok(page);
        }
        let start = index_key(after.saturating_add(1));
        let mut bytes = 0usize;
        let iter = snap.iterator_cf(
            cf(&self.db, CF_CHANGES)?,
            IteratorMode::From(&start, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item.map_err(rocks("read the change log"))?;
            let change = Change::decode(&k, &v)?;
            if (page.changes.len() >= max || bytes >= max_bytes)
                && page.changes.last().is_some_and(|l| l.index != change.index)
            {
                page.through = page.changes.last().map_or(after, |l| l.index);
                break;
            }
            bytes += change.size();
            page.changes.push(change);
        }
        Ok(page)
    }
}

impl ApplyBatch<'_> {
    /// Writes `key`'s new record (None: deleted) into the batch's overlay and notes the change.
    pub(super) fn write_key(
        &mut self,
        index: u64,
        key: String,
        rec: Option<ValueRecord>,
        kind: ChangeKind,
        ended_lease: u64,
    ) {
        let (value, lease) = match &rec {
            Some(r) => (r.value.clone(), r.lease),
            None => (Bytes::new(), ended_lease),
        };
        self.changes.push(Change {
            index,
            place: 0,
            kind,
            key: key.clone(),
            value,
            lease,
        });
        self.overlay.insert(key, rec);
    }

    /// Closes the changes of the entry whose first change is at `start`: sorted by key,
    /// numbered, and written to the change log in this batch.
    pub(super) fn seal_changes(&mut self, start: usize) -> Result<(), StorageError> {
        let Some(entry) = self.changes.get_mut(start..) else {
            return Ok(());
        };
        if entry.is_empty() {
            return Ok(());
        }
        entry.sort_by(|a, b| a.key.cmp(&b.key));
        let log = cf(self.db, CF_CHANGES)?;
        for (place, c) in entry.iter_mut().enumerate() {
            c.place = u32::try_from(place).unwrap_or(u32::MAX);
            let rec = ChangeRecord {
                key: c.key.clone(),
                kind: c.kind as i32,
                value: c.value.clone(),
                lease: c.lease,
            };
            self.batch.put_cf(log, c.log_key(), rec.encode_to_vec());
        }
        Ok(())
    }

    /// The changes of this batch, in log order (taken once, before commit).
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Moves the change log's start up when the applied index has run far enough past it:
    /// returns the new start, to publish once the batch is written.
    pub(super) fn trim_history(&mut self, applied: u64) -> Result<Option<u64>, StorageError> {
        let Some(to) = self.history.trim_to(applied) else {
            return Ok(None);
        };
        let log = cf(self.db, CF_CHANGES)?;
        self.batch
            .delete_range_cf(log, index_key(0), index_key(to.saturating_add(1)));
        meta::put_history_after(self.db, &mut self.batch, to)?;
        Ok(Some(to))
    }
}
