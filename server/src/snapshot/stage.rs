//! The receiving side: a follower stages the chunks of a snapshot as they arrive, and the Ready
//! loop installs them when raft-rs takes the snapshot.
//!
//! Chunks are written to the `snapshot_staging` column family, keyed by their column family
//! number and key, as they arrive from the transport (on a network task). Raft may only take a
//! snapshot whose data has arrived whole: the Ready loop locks the staged data before it steps a
//! `MsgSnapshot` ([`Stage::lock_staged`]), adds its replacement of the state machine to the
//! install batch ([`Stage::install_staged`]), and unlocks after the cycle.

use std::sync::{Arc, Mutex, MutexGuard};

use rocksdb::{IteratorMode, WriteBatch, DB};

use crate::proto::SnapshotChunk;
use crate::storage::{
    cf, cf_upper_bound, meta, rocks, StorageError, CF_SNAP_STAGING, SNAPSHOT_CFS,
};

/// Where an incoming snapshot stands.
#[derive(Default)]
struct Staging {
    /// The (index, term) of the Raft snapshot the chunks belong to.
    snap: Option<(u64, u64)>,
    /// The sequence number the next chunk must carry.
    next_seq: u64,
    /// Applied index and term of the data, once the last chunk arrived.
    complete: Option<(u64, u64)>,
    /// Being installed: new streams wait.
    locked: bool,
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
    /// sequence abandons the stream; chunk 0 starts a new one. Ignored while a snapshot is being
    /// installed.
    pub fn stage_chunk(&self, chunk: SnapshotChunk) -> Result<(), StorageError> {
        let mut st = self.lock_staging();
        if st.locked {
            return Ok(());
        }
        let staging = cf(&self.db, CF_SNAP_STAGING)?;
        let id = (chunk.snap_index, chunk.snap_term);
        if chunk.seq == 0 {
            *st = Staging {
                snap: Some(id),
                ..Staging::default()
            };
            self.db
                .delete_range_cf(staging, Vec::new(), cf_upper_bound())
                .map_err(rocks("clear snapshot staging"))?;
        }
        if st.snap != Some(id) || chunk.seq != st.next_seq || st.complete.is_some() {
            st.snap = None;
            return Ok(());
        }
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

    /// Adds to `batch` the replacement of the state machine by the staged snapshot, and returns
    /// the applied index and term it reflects. The caller writes the batch.
    pub fn install_staged(&self, batch: &mut WriteBatch) -> Result<(u64, u64), StorageError> {
        let mut st = self.lock_staging();
        let Some((applied, applied_term)) = st.complete else {
            return Err(StorageError::Corrupt {
                what: "snapshot",
                detail: "installing a snapshot that was not completely received".into(),
            });
        };
        let staging = cf(&self.db, CF_SNAP_STAGING)?;
        let targets: Vec<&rocksdb::ColumnFamily> = SNAPSHOT_CFS
            .iter()
            .map(|n| cf(&self.db, n))
            .collect::<Result<_, _>>()?;
        for t in &targets {
            batch.delete_range_cf(*t, Vec::new(), cf_upper_bound());
        }
        for item in self.db.iterator_cf(staging, IteratorMode::Start) {
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
            batch.put_cf(*t, key, v);
        }
        batch.delete_range_cf(staging, Vec::new(), cf_upper_bound());
        meta::put_applied(&self.db, batch, applied, applied_term)?;
        *st = Staging {
            locked: true,
            ..Staging::default()
        };
        Ok((applied, applied_term))
    }
}
