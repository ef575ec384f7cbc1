//! The receiving side: a follower stages the chunks of a snapshot as they arrive, and the Ready
//! loop installs them when raft-rs takes the snapshot.
//!
//! Chunks are written to the `snapshot_staging` column family, keyed by their column family
//! number and key, as they arrive from the transport (on a network task). Raft may only take a
//! snapshot whose data has arrived whole: the Ready loop locks the staged data before it steps a
//! `MsgSnapshot` ([`Stage::lock_staged`]), empties the state machine in the install batch
//! ([`Stage::install_staged`]), copies the staged data into place in bounded batches
//! ([`finish_install`]), and unlocks after the cycle. Reads are refused in between
//! ([`crate::sm::InstallGate`]); a crash in between is finished when the node starts.

use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{IteratorMode, WriteBatch, DB};
use tracing::warn;

use crate::members::{self, AddressBook};
use crate::proto::SnapshotChunk;
use crate::storage::meta::PendingInstall;
use crate::storage::{
    cf, cf_upper_bound, meta, rocks, StorageError, CF_CHANGES, CF_SNAP_STAGING, SNAPSHOT_CFS,
};

/// Where an incoming snapshot stands.
#[derive(Default)]
struct Staging {
    /// The (index, term) of the Raft snapshot the chunks belong to.
    snap: Option<(u64, u64)>,
    /// The sender's term and number for the stream (chunks of another stream never continue
    /// it; a first chunk of an older one never restarts staging).
    stream: (u64, u64),
    /// The sequence number the next chunk must carry.
    next_seq: u64,
    /// Applied index and term of the data, once the last chunk arrived.
    complete: Option<(u64, u64)>,
    /// The address book that came with the last chunk (None: the sender had none).
    members: Option<AddressBook>,
    /// Where the sender's change log starts, from the last chunk (None: it did not say).
    history_after: Option<u64>,
    /// Being installed: new streams wait.
    locked: bool,
}

/// Keys longer than this are refused (keel's keys are at most 4 KiB, plus prefixes in the
/// idempotency column families; range deletions of a column family end at 8 KiB of 0xff).
const MAX_STAGED_KEY: usize = 8 * 1024 - 1;

/// What an install puts in place.
#[derive(Debug)]
pub struct Installed {
    /// The applied index the installed data reflects (at least the snapshot's index).
    pub applied: u64,
    /// The term of that index.
    pub applied_term: u64,
    /// The address book after the snapshot (this node's, updated with the one that came with
    /// the snapshot: [`members::merge_snapshot`]), written in the same batch.
    pub members: Option<AddressBook>,
    /// Where the installed change log starts: every change of the entries above it came with
    /// the snapshot.
    pub history_after: u64,
}

/// The staging area of incoming snapshots; cheap to clone (the transport's inbound side and the
/// Ready loop share one).
#[derive(Clone)]
pub struct Stage {
    /// The node's database.
    db: Arc<DB>,
    /// The stream being received.
    state: Arc<Mutex<Staging>>,
}

impl Stage {
    /// A staging area in the node's database.
    pub fn new(db: Arc<DB>) -> Self {
        Stage {
            db,
            state: Arc::new(Mutex::new(Staging::default())),
        }
    }

    fn lock_staging(&self) -> MutexGuard<'_, Staging> {
        // A poisoned lock only means another thread panicked while holding it; the state is a
        // few plain fields, still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receives one chunk of an incoming snapshot into the staging column family. A chunk out of
    /// sequence abandons the stream; a chunk of another stream is dropped; chunk 0 starts a new
    /// one. Ignored while a snapshot is being installed.
    pub fn stage_chunk(&self, chunk: SnapshotChunk) -> Result<(), StorageError> {
        let mut st = self.lock_staging();
        if st.locked {
            return Ok(());
        }
        let staging = cf(&self.db, CF_SNAP_STAGING)?;
        let id = (chunk.snap_index, chunk.snap_term);
        let stream = (chunk.leader_term, chunk.stream);
        if chunk.seq == 0 {
            // The late start of a stream the sender began before this one (an older connection
            // still delivering) must not abandon this one; the leader of a newer term, or the
            // same leader later, numbers its streams higher. (Senders before the term say 0.)
            if chunk.leader_term != 0 && stream < st.stream {
                tracing::debug!(
                    ?stream,
                    current = ?st.stream,
                    "the first chunk of an older snapshot stream dropped"
                );
                return Ok(());
            }
            *st = Staging {
                snap: Some(id),
                stream,
                ..Staging::default()
            };
            self.db
                .delete_range_cf(staging, Vec::new(), cf_upper_bound())
                .map_err(rocks("clear snapshot staging"))?;
        }
        // Two streams of one snapshot may overlap (an old connection still delivering when a new
        // one starts): a chunk of another stream is dropped, never mixed into this one (data
        // read at two points in time), and this one goes on.
        if stream != st.stream {
            return Ok(());
        }
        if st.snap != Some(id) || chunk.seq != st.next_seq || st.complete.is_some() {
            st.snap = None;
            return Ok(());
        }
        // Refused on arrival, not at install: a chunk the install could not write (an unknown
        // column family, a key longer than any keel writes, an address book that does not
        // parse) abandons the stream; the leader sends the snapshot again.
        if let Some(p) = chunk
            .pairs
            .iter()
            .find(|p| p.cf as usize >= SNAPSHOT_CFS.len() || p.key.len() >= MAX_STAGED_KEY)
        {
            warn!(
                cf = p.cf,
                key_len = p.key.len(),
                "snapshot chunk with an unknown column family or an oversized key; stream abandoned"
            );
            st.snap = None;
            return Ok(());
        }
        if chunk.applied < chunk.snap_index {
            warn!(
                applied = chunk.applied,
                index = chunk.snap_index,
                "snapshot data older than its snapshot; stream abandoned"
            );
            st.snap = None;
            return Ok(());
        }
        let book = if chunk.done && !chunk.members.is_empty() {
            match members::decode(&chunk.members) {
                Ok(book) => Some(book),
                Err(e) => {
                    warn!(error = %e, "snapshot with a damaged address book; stream abandoned");
                    st.snap = None;
                    return Ok(());
                }
            }
        } else {
            None
        };
        let mut batch = WriteBatch::default();
        for p in &chunk.pairs {
            let mut key = Vec::with_capacity(1 + p.key.len());
            key.push(p.cf as u8);
            key.extend_from_slice(&p.key);
            batch.put_cf(staging, key, &p.value);
        }
        self.db
            .write(batch)
            .map_err(rocks("stage snapshot chunk"))?;
        st.next_seq += 1;
        if chunk.done {
            st.complete = Some((chunk.applied, chunk.applied_term));
            st.members = book;
            st.history_after = chunk.history_after;
            drop(st);
            crate::failpoints::crash_point(crate::failpoints::SNAPSHOT_STAGED);
        }
        Ok(())
    }

    /// If the staged snapshot is complete and belongs to `(index, term)`, locks it for
    /// installation and returns true.
    pub fn lock_staged(&self, index: u64, term: u64) -> bool {
        let mut st = self.lock_staging();
        let ready = st.snap == Some((index, term)) && st.complete.is_some();
        st.locked |= ready;
        ready
    }

    /// Releases the lock of [`Stage::lock_staged`] (after installing, or if Raft did not
    /// take the snapshot after all).
    pub fn unlock_staged(&self) {
        self.lock_staging().locked = false;
    }

    /// Adds to `batch` the first half of an install: the state machine emptied, and the
    /// [`PendingInstall`] that says what the staged data installs (its applied index, where its
    /// change log starts, the address book after it). The caller writes the batch synced (with
    /// the log's side of the install), then calls [`finish_install`], which copies the staged
    /// data into place in bounded batches: memory does not grow with the snapshot. Returns what
    /// the install puts in place.
    pub fn install_staged(
        &self,
        batch: &mut WriteBatch,
        current: &AddressBook,
    ) -> Result<Installed, StorageError> {
        let mut st = self.lock_staging();
        let Some((applied, applied_term)) = st.complete else {
            return Err(StorageError::Corrupt {
                what: "snapshot",
                detail: "installing a snapshot that was not completely received".into(),
            });
        };
        for name in SNAPSHOT_CFS {
            batch.delete_range_cf(cf(&self.db, name)?, Vec::new(), cf_upper_bound());
        }
        // Where the sender's change log starts, as it says; from a sender that does not say,
        // before the first change that came (its history may start earlier, with entries that
        // changed no key: a watch from there is refused, never shown a gap), or after the
        // snapshot when none came.
        let history_after = match st.history_after {
            Some(h) => h,
            None => self
                .first_staged_change()?
                .map_or(applied, |i| i.saturating_sub(1)),
        }
        .min(applied);
        let members = st
            .members
            .take()
            .map(|book| members::merge_snapshot(current, &book));
        meta::put_pending_install(
            &self.db,
            batch,
            &PendingInstall {
                applied,
                applied_term,
                history_after,
                members: members.as_ref().map(members::encode),
            },
        )?;
        *st = Staging {
            locked: true,
            ..Staging::default()
        };
        Ok(Installed {
            applied,
            applied_term,
            members,
            history_after,
        })
    }

    /// The install's second half, after the first is written: [`finish_install`] on this
    /// node's database.
    pub fn finish_install(&self) -> Result<Option<PendingInstall>, StorageError> {
        finish_install(&self.db, INSTALL_BATCH_BYTES)
    }

    /// The index of the first staged change-log entry, if any came.
    fn first_staged_change(&self) -> Result<Option<u64>, StorageError> {
        let Some(n) = SNAPSHOT_CFS.iter().position(|n| *n == CF_CHANGES) else {
            return Ok(None);
        };
        let staging = cf(&self.db, CF_SNAP_STAGING)?;
        let start = [n as u8];
        let mut iter = self.db.iterator_cf(
            staging,
            IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        let Some(item) = iter.next() else {
            return Ok(None);
        };
        let (k, _) = item.map_err(rocks("read staged snapshot"))?;
        Ok(match k.split_first() {
            Some((&c, key)) if c as usize == n => key
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes),
            _ => None,
        })
    }
}

/// Largest batch of staged data copied into place at once.
pub const INSTALL_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Finishes a snapshot install whose first half is written ([`Stage::install_staged`]): copies
/// the staged data into the state machine in batches of about `max_batch_bytes`, then, in one
/// synced write, records the installed applied index, change-log start and address book, and
/// drops the staged data and the [`PendingInstall`]. Does nothing when no install is pending.
///
/// A crash anywhere in between leaves the pending install and the staged data on disk; the node
/// calls this again when it starts, before it reads its state machine or its log, and the copy
/// runs again from the start (copying a key twice writes the same value).
pub fn finish_install(
    db: &DB,
    max_batch_bytes: usize,
) -> Result<Option<PendingInstall>, StorageError> {
    let Some(pending) = meta::read_pending_install(db)? else {
        return Ok(None);
    };
    let staging = cf(db, CF_SNAP_STAGING)?;
    let targets: Vec<&rocksdb::ColumnFamily> = SNAPSHOT_CFS
        .iter()
        .map(|n| cf(db, n))
        .collect::<Result<_, _>>()?;
    let mut batch = WriteBatch::default();
    let mut size = 0usize;
    for item in db.iterator_cf(staging, IteratorMode::Start) {
        let (k, v) = item.map_err(rocks("read staged snapshot"))?;
        let Some((&n, key)) = k.split_first() else {
            continue;
        };
        let Some(t) = targets.get(n as usize) else {
            return Err(StorageError::Corrupt {
                what: "snapshot",
                detail: format!("unknown column family number {n}"),
            });
        };
        size += key.len() + v.len();
        batch.put_cf(*t, key, v);
        if size >= max_batch_bytes {
            db.write(std::mem::take(&mut batch))
                .map_err(rocks("copy snapshot into place"))?;
            size = 0;
            crate::failpoints::crash_point(crate::failpoints::SNAPSHOT_COPYING);
        }
    }
    db.write(std::mem::take(&mut batch))
        .map_err(rocks("copy snapshot into place"))?;
    crate::failpoints::crash_point(crate::failpoints::SNAPSHOT_COPYING);
    meta::put_applied(db, &mut batch, pending.applied, pending.applied_term)?;
    meta::put_history_after(db, &mut batch, pending.history_after)?;
    if let Some(book) = &pending.members {
        meta::put_members_raw(db, &mut batch, book)?;
    }
    batch.delete_range_cf(staging, Vec::new(), cf_upper_bound());
    meta::delete_pending_install(db, &mut batch)?;
    // Synced (like the log: not with the planted `skip-fsync`), and after every copy batch in
    // the write-ahead log: once the pending install is gone, the whole copy is durable.
    let mut opts = rocksdb::WriteOptions::default();
    opts.set_sync(crate::storage::log_sync());
    db.write_opt(batch, &opts)
        .map_err(rocks("finish snapshot install"))?;
    Ok(Some(pending))
}

#[cfg(test)]
#[path = "stage_tests.rs"]
mod tests;
