//! Backups: a consistent checkpoint of a node's database, and the restore of one into the data
//! directory of a node of a new cluster.

use std::path::Path;

use rocksdb::{IteratorMode, WriteBatch, DB};

use crate::storage::{
    cf, meta, open_read_only, rocks, StorageError, CF_CHANGES, CF_DATA, SNAPSHOT_CFS,
};

/// Writes a consistent checkpoint of the whole database to `dir` (which must not exist) and
/// returns the applied index and term it holds.
pub fn checkpoint(db: &DB, dir: &Path) -> Result<(u64, u64), StorageError> {
    rocksdb::checkpoint::Checkpoint::new(db)
        .and_then(|c| c.create_checkpoint(dir))
        .map_err(rocks("create a checkpoint"))?;
    let backup = open_read_only(dir)?;
    // Taken while a snapshot was copied into place: the data is half old, half new.
    if meta::read_pending_install(&backup)?.is_some() {
        drop(backup);
        if let Err(e) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a refused checkpoint");
        }
        return Err(StorageError::Installing);
    }
    meta::read_applied(&backup)
}

/// Fills the state machine of `db` (a new, empty database) from a backup checkpoint; returns the
/// backup's applied index and term and the number of keys.
pub fn restore_from(db: &DB, backup_dir: &Path) -> Result<(u64, u64, u64), StorageError> {
    let backup = open_read_only(backup_dir)?;
    if meta::read_pending_install(&backup)?.is_some() {
        return Err(StorageError::Corrupt {
            what: "backup",
            detail: "taken while a snapshot was being installed; take another".into(),
        });
    }
    let (applied, term) = meta::read_applied(&backup)?;
    let mut keys = 0u64;
    // The change log describes the old cluster's log: the restored one starts after it.
    for name in SNAPSHOT_CFS.into_iter().filter(|n| *n != CF_CHANGES) {
        let (from, to) = (cf(&backup, name)?, cf(db, name)?);
        let mut batch = WriteBatch::default();
        for item in backup.iterator_cf(from, IteratorMode::Start) {
            let (k, v) = item.map_err(rocks("read a backup"))?;
            if name == CF_DATA {
                keys += 1;
            }
            batch.put_cf(to, k, v);
            if batch.len() >= 10_000 {
                db.write(std::mem::take(&mut batch))
                    .map_err(rocks("restore"))?;
            }
        }
        db.write(batch).map_err(rocks("restore"))?;
    }
    db.flush_wal(true).map_err(rocks("restore"))?;
    Ok((applied, term, keys))
}
