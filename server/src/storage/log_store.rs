//! The Raft log, hard state and conf state of one node behind raft-rs's `Storage` trait.

use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use rocksdb::{Direction, IteratorMode, WriteBatch, WriteOptions, DB};

use super::entry_cache::EntryCache;
use super::{
    cf, decode_pb, decode_u64, encode_pb, index_key, meta, rocks, StorageError, CF_LOG, CF_META,
};

/// The `data` of every snapshot keel sends: the real data travels in chunks beside it
/// (see [`crate::snapshot`]).
pub const SNAPSHOT_MARKER: &[u8] = b"keel-snapshot-stream-v1";

/// Records that the entry `index` has `term` in a list of term boundaries (entries in order).
fn note_term(terms: &mut Vec<(u64, u64)>, index: u64, term: u64) {
    if terms.last().is_none_or(|(_, t)| *t != term) {
        terms.push((index, term));
    }
}

/// Whether writes of the Raft log are fsynced: always, unless the planted bug `skip-fsync`
/// (test build only) is active, for the power-loss profile to show it would be caught.
pub(crate) fn log_sync() -> bool {
    !crate::planted::active(crate::planted::Bug::SkipFsync)
}

/// The Raft log, hard state and conf state of one node, implementing raft-rs's `Storage`.
///
/// Owned by the Ready loop thread; positions are cached in memory and every change is written
/// through to RocksDB before the cache moves.
pub struct RaftLogStore {
    /// The node's database (shared with the state machine and the snapshot path).
    db: Arc<DB>,
    /// The persisted hard state (term, vote, commit), as raft-rs last handed it.
    hard_state: HardState,
    /// The persisted configuration (changed by applied conf changes and snapshots).
    conf_state: ConfState,
    /// Index of the last entry removed by compaction (0 when none).
    truncated_index: u64,
    /// Term of that entry (raft-rs asks for it to check the entry after it).
    truncated_term: u64,
    /// Index of the last entry in the log (equal to the truncation point when empty).
    last_index: u64,
    /// Term of the last entry in the log.
    last_term: u64,
    /// Where each term starts in the log, `(first index, term)` in order, covering every entry
    /// after the truncation point: raft-rs asks for terms constantly, and reading an entry from
    /// RocksDB (and decoding its payload) to learn its term was the Raft thread's biggest cost.
    terms: Vec<(u64, u64)>,
    /// The state machine's applied index: the index of the next snapshot.
    applied: u64,
    /// The term of that index: the term of the next snapshot.
    applied_term: u64,
    /// The newest entries, in memory: most reads of entries are served from here.
    cache: EntryCache,
}

impl RaftLogStore {
    /// Loads the log state from `db`. On first boot (nothing stored) with initial `voters`, every
    /// initial member bootstraps alike, as if from a snapshot at index 1 of term 1 holding the
    /// initial configuration: the log starts at 2, so a node added later (which boots with no
    /// voters) cannot be fed the log from its start and gets a snapshot, configuration included.
    pub fn open(db: Arc<DB>, voters: &[u64]) -> Result<Self, StorageError> {
        if meta::read_conf_state(&db)?.is_none() {
            meta::bootstrap(&db, voters, 1, 1)?;
        }
        let hard_state = meta::read_hard_state(&db)?;
        let conf_state = meta::read_conf_state(&db)?.ok_or_else(|| StorageError::Corrupt {
            what: "conf state",
            detail: "missing after bootstrap".into(),
        })?;
        let (truncated_index, truncated_term) = meta::read_truncated(&db)?;
        let (applied, applied_term) = meta::read_applied(&db)?;
        let mut store = RaftLogStore {
            db,
            hard_state,
            conf_state,
            truncated_index,
            truncated_term,
            last_index: truncated_index,
            last_term: truncated_term,
            terms: Vec::new(),
            applied,
            applied_term,
            cache: EntryCache::default(),
        };
        store.load_terms()?;
        if let Some(last) = store.read_last_entry()? {
            store.last_index = last.index;
            store.last_term = last.term;
        }
        // Apply happens before the hard state of the same Ready is persisted; a crash in between
        // leaves applied > commit. Applied entries were committed (and an installed snapshot's
        // data holds only committed entries), so the commit index may move up, as far as the
        // log goes.
        let committed_floor = applied.min(store.last_index);
        if committed_floor > store.hard_state.commit {
            store.hard_state.commit = committed_floor;
        }
        // A snapshot's data is read a little after its metadata, so an installed state machine
        // can be ahead of the log it came with (applied > the snapshot's index = the last
        // index). After a crash before the entries in between are appended, the log cannot
        // vouch for the data: raft-rs starts from the log's end (see `raft_applied`), the
        // entries in between come again from the leader and are skipped as already applied,
        // and the next snapshot this node makes is described by what its log holds.
        if applied > store.last_index {
            store.applied = store.last_index;
            store.applied_term = store.last_term;
        }
        Ok(store)
    }

    /// The applied index to start raft-rs with: the state machine's, unless it is ahead of the
    /// log (see [`RaftLogStore::open`]); raft-rs refuses an applied index beyond its log.
    pub fn raft_applied(&self, sm_applied: u64) -> u64 {
        sm_applied.min(self.last_index)
    }

    /// Rebuilds the term boundaries from the log on disk (once, at open).
    fn load_terms(&mut self) -> Result<(), StorageError> {
        let log = cf(&self.db, CF_LOG)?;
        let mut terms = Vec::new();
        for item in self.db.iterator_cf(log, IteratorMode::Start) {
            let (_, v) = item.map_err(rocks("scan the log"))?;
            let e: Entry = decode_pb(&v, "log entry")?;
            note_term(&mut terms, e.index, e.term);
        }
        self.terms = terms;
        Ok(())
    }

    fn read_last_entry(&self) -> Result<Option<Entry>, StorageError> {
        let log = cf(&self.db, CF_LOG)?;
        match self.db.iterator_cf(log, IteratorMode::End).next() {
            Some(item) => {
                let (_, v) = item.map_err(rocks("read last entry"))?;
                Ok(Some(decode_pb(&v, "log entry")?))
            }
            None => Ok(None),
        }
    }

    /// The database this log lives in (shared with the state machine).
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// The persisted hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The persisted conf state.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The index and term of the last entry removed by compaction.
    pub fn truncated(&self) -> (u64, u64) {
        (self.truncated_index, self.truncated_term)
    }

    /// Records what the state machine has applied (the metadata of the next snapshot).
    pub fn set_applied(&mut self, index: u64, term: u64) {
        self.applied = index;
        self.applied_term = term;
    }

    /// Drops the log up to and including `to` (which must be applied). The WAL is synced first,
    /// so that no apply batch fed by the dropped entries can be lost in a crash.
    pub fn compact(&mut self, to: u64) -> Result<(), StorageError> {
        if to <= self.truncated_index || to > self.applied || to > self.last_index {
            return Ok(());
        }
        let term = match self.entry_at(to)? {
            Some(e) => e.term,
            None => {
                return Err(StorageError::Corrupt {
                    what: "compaction",
                    detail: format!("entry {to} is missing"),
                })
            }
        };
        self.db
            .flush_wal(log_sync())
            .map_err(rocks("sync the WAL before compaction"))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOG)?,
            index_key(self.truncated_index + 1),
            index_key(to + 1),
        );
        batch.put_cf(
            cf(&self.db, CF_META)?,
            meta::KEY_TRUNCATED,
            meta::truncation_value(to, term),
        );
        let mut opts = WriteOptions::default();
        opts.set_sync(log_sync());
        self.db
            .write_opt(batch, &opts)
            .map_err(rocks("compact log"))?;
        self.truncated_index = to;
        self.truncated_term = term;
        self.cache.compact(to);
        while self.terms.len() >= 2 && self.terms[1].0 <= to + 1 {
            self.terms.remove(0);
        }
        if let Some(first) = self.terms.first_mut() {
            first.0 = first.0.max(to + 1);
        }
        if self.last_index <= to {
            self.terms.clear();
        }
        Ok(())
    }

    /// Installs a snapshot: `batch` already holds the state machine's new data; this adds the
    /// log's side (every entry dropped, truncation point, hard state, conf state) and writes it
    /// all at once, synced.
    pub fn install_snapshot(
        &mut self,
        mut batch: WriteBatch,
        snap: &raft::eraftpb::SnapshotMetadata,
        applied: u64,
        applied_term: u64,
    ) -> Result<(), StorageError> {
        let log = cf(&self.db, CF_LOG)?;
        let metacf = cf(&self.db, CF_META)?;
        batch.delete_range_cf(log, index_key(0), index_key(u64::MAX));
        batch.put_cf(
            metacf,
            meta::KEY_TRUNCATED,
            meta::truncation_value(snap.index, snap.term),
        );
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(snap.term);
        hs.commit = hs.commit.max(snap.index);
        meta::put_hard_state(&self.db, &mut batch, &hs)?;
        let cs = snap.get_conf_state().clone();
        meta::put_conf_state(&self.db, &mut batch, &cs)?;
        let mut opts = WriteOptions::default();
        opts.set_sync(log_sync());
        self.db
            .write_opt(batch, &opts)
            .map_err(rocks("install snapshot"))?;
        self.truncated_index = snap.index;
        self.truncated_term = snap.term;
        self.last_index = snap.index;
        self.last_term = snap.term;
        self.terms.clear();
        self.cache.clear();
        self.hard_state = hs;
        self.conf_state = cs;
        self.applied = applied;
        self.applied_term = applied_term;
        Ok(())
    }

    /// Records a conf state that the caller persists in its own batch (see [`meta::put_conf_state`]).
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Appends `entries` (truncating any conflicting suffix) and persists `hs`, in one batch.
    /// `sync` asks for an fsync; the Ready loop passes `true` whenever there is something to make
    /// durable (one fsync for the whole Ready: group commit).
    pub fn append(
        &mut self,
        entries: &[Entry],
        hs: Option<&HardState>,
        sync: bool,
    ) -> Result<(), StorageError> {
        if entries.is_empty() && hs.is_none() {
            return Ok(());
        }
        let log = cf(&self.db, CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut new_last = None;
        if let (Some(first), Some(last)) = (entries.first(), entries.last()) {
            if first.index <= self.truncated_index {
                return Err(StorageError::Corrupt {
                    what: "append",
                    detail: format!(
                        "entry {} is at or before the truncation point {}",
                        first.index, self.truncated_index
                    ),
                });
            }
            if first.index > self.last_index + 1 {
                return Err(StorageError::Corrupt {
                    what: "append",
                    detail: format!(
                        "gap in the log: last index {}, appending from {}",
                        self.last_index, first.index
                    ),
                });
            }
            for e in entries {
                batch.put_cf(log, index_key(e.index), encode_pb(e, "log entry")?);
            }
            if last.index < self.last_index {
                // A new leader overwrote our tail: drop what lies beyond the new last entry.
                batch.delete_range_cf(
                    log,
                    index_key(last.index + 1),
                    index_key(self.last_index + 1),
                );
            }
            new_last = Some((last.index, last.term));
        }
        if let Some(hs) = hs {
            meta::put_hard_state(&self.db, &mut batch, hs)?;
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync && log_sync());
        self.db
            .write_opt(batch, &opts)
            .map_err(rocks("append log"))?;
        if let Some((index, term)) = new_last {
            self.last_index = index;
            self.last_term = term;
            let from = entries[0].index;
            let keep = self.terms.partition_point(|(first, _)| *first < from);
            self.terms.truncate(keep);
            for e in entries {
                note_term(&mut self.terms, e.index, e.term);
            }
            self.cache.append(entries);
        }
        if let Some(hs) = hs {
            self.hard_state = hs.clone();
        }
        Ok(())
    }

    /// Persists a new commit index (from a light ready). No fsync: the commit index can always be
    /// recovered from the leader; it is only an optimisation on restart.
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        let mut batch = WriteBatch::default();
        meta::put_hard_state(&self.db, &mut batch, &hs)?;
        self.db.write(batch).map_err(rocks("write commit index"))?;
        self.hard_state = hs;
        Ok(())
    }

    fn entry_at(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        let log = cf(&self.db, CF_LOG)?;
        match self
            .db
            .get_pinned_cf(log, index_key(index))
            .map_err(rocks("read entry"))?
        {
            Some(v) => Ok(Some(decode_pb(&v, "log entry")?)),
            None => Ok(None),
        }
    }

    fn to_raft_error(e: StorageError) -> raft::Error {
        raft::Error::Store(RaftStorageError::Other(Box::new(e)))
    }
}

impl raft::Storage for RaftLogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let max_size = max_size.into().unwrap_or(u64::MAX);
        if low <= self.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if let Some(cached) = self.cache.get(low, high, max_size) {
            return Ok(cached);
        }
        let log = cf(&self.db, CF_LOG).map_err(Self::to_raft_error)?;
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let start = index_key(low);
        let iter = self
            .db
            .iterator_cf(log, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (k, v) = item
                .map_err(rocks("read entries"))
                .map_err(Self::to_raft_error)?;
            let index = decode_u64(&k, "log key").map_err(Self::to_raft_error)?;
            if index >= high {
                break;
            }
            let expected = low + out.len() as u64;
            if index != expected {
                return Err(Self::to_raft_error(StorageError::Corrupt {
                    what: "log",
                    detail: format!("expected entry {expected}, found {index}"),
                }));
            }
            size += v.len() as u64;
            if !out.is_empty() && size > max_size {
                break;
            }
            out.push(decode_pb(&v, "log entry").map_err(Self::to_raft_error)?);
        }
        if out.is_empty() && low < high {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.truncated_index {
            return Ok(self.truncated_term);
        }
        if idx < self.truncated_index {
            return Err(raft::Error::Store(RaftStorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(RaftStorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        let i = self.terms.partition_point(|(first, _)| *first <= idx);
        match i.checked_sub(1).and_then(|i| self.terms.get(i)) {
            Some((_, term)) => Ok(*term),
            None => Err(raft::Error::Store(RaftStorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // The snapshot is the state machine as it stands: its metadata here, its data streamed
        // by the transport (see the module docs).
        if self.applied == 0 || self.applied < request_index {
            return Err(raft::Error::Store(
                RaftStorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        let mut snap = Snapshot {
            data: SNAPSHOT_MARKER.to_vec().into(),
            ..Default::default()
        };
        let meta = snap.mut_metadata();
        meta.index = self.applied;
        meta.term = self.applied_term;
        meta.set_conf_state(self.conf_state.clone());
        Ok(snap)
    }
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
