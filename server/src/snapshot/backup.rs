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
    // A checkpoint refused, for whatever reason, is removed, so that nobody restores it later
    // by mistake.
    let checked = verify(dir);
    if checked.is_err() {
        if let Err(rm) = std::fs::remove_dir_all(dir) {
            tracing::warn!(dir = %dir.display(), error = %rm, "cannot remove a refused checkpoint");
        }
    }
    checked
}

/// Opens the checkpoint at `dir` and checks it: whole, and not taken during a snapshot install.
/// Its applied index and term.
fn verify(dir: &Path) -> Result<(u64, u64), StorageError> {
    let backup = open_read_only(dir)?;
    // Opened with a few table files (the node's descriptors are budgeted), of which RocksDB
    // checks those it opens: every file the checkpoint names is checked to be there, whole.
    complete(&backup, dir)?;
    // Taken while a snapshot was copied into place: the data is half old, half new.
    if meta::read_pending_install(&backup)?.is_some() {
        return Err(StorageError::Installing);
    }
    meta::read_applied(&backup)
}

/// Checks that every table file the database `db` at `dir` names is there with its size.
pub fn complete(db: &DB, dir: &Path) -> Result<(), StorageError> {
    let files = db.live_files().map_err(rocks("list a backup's files"))?;
    for f in files {
        let path = dir.join(f.name.trim_start_matches('/'));
        let size = std::fs::metadata(&path).map(|m| m.len()).ok();
        if size != Some(f.size as u64) {
            return Err(StorageError::Corrupt {
                what: "backup",
                detail: format!(
                    "{} is {} (expected {} bytes)",
                    path.display(),
                    size.map_or("missing".to_string(), |s| format!("{s} bytes")),
                    f.size
                ),
            });
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::open_db;

    /// A checkpoint missing a table file, or with one cut short, is refused: its read-only open
    /// reads only a few table files, so the list is checked instead.
    #[test]
    fn a_checkpoint_with_a_missing_or_short_table_file_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = open_db(&dir.path().join("db")).expect("open");
        let data = cf(&db, CF_DATA).expect("cf");
        for i in 0..100u32 {
            db.put_cf(data, i.to_be_bytes(), [7u8; 100]).expect("put");
        }
        db.flush_cf(data).expect("flush");
        let target = dir.path().join("backup");
        rocksdb::checkpoint::Checkpoint::new(&db)
            .and_then(|c| c.create_checkpoint(&target))
            .expect("checkpoint");
        let backup = open_read_only(&target).expect("open the checkpoint");
        complete(&backup, &target).expect("a whole checkpoint");
        let sst = backup
            .live_files()
            .expect("files")
            .into_iter()
            .map(|f| target.join(f.name.trim_start_matches('/')))
            .next()
            .expect("a table file");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&sst)
            .expect("open the table file");
        file.set_len(10).expect("cut it short");
        assert!(complete(&backup, &target).is_err(), "a short file passed");
        std::fs::remove_file(&sst).expect("remove");
        assert!(complete(&backup, &target).is_err(), "a missing file passed");
    }
}
