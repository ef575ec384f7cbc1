//! The key-value state machine: applies committed [`Command`]s to the `data` column family and
//! serves local reads.
//!
//! # Invariants
//! - Apply is deterministic: the outcome of a command depends only on the data and the entry
//!   (its index and the leader's `proposed_at_ms` stamp), so every replica reaches the same state
//!   and the same [`ApplyResult`].
//! - A batch of entries is applied in one RocksDB `WriteBatch` that also moves the applied index
//!   (see [`crate::storage`]): data and applied index never disagree, so no entry is applied twice.
//! - Within a batch, later commands see earlier ones through an in-memory overlay (RocksDB write
//!   batches cannot be read back). A transaction works on a scratch overlay merged only if every
//!   step succeeds, so an aborted transaction changes nothing.
//! - A key's version is the index of the entry that last wrote it.
//!
//! # Idempotency
//! A command with an idempotency key records its outcome (and a fingerprint of the request)
//! in the `idempotency` column family, in the same batch as its effects. A later command with the
//! same key whose stamp is within [`IDEMPOTENCY_TTL_MS`] of the record's is not applied: it is
//! answered with the recorded outcome (`replayed`), or refused if the request differs. Whether a
//! record counts is decided by the stamps alone, so replicas agree however late they physically
//! delete expired records (a bounded number per batch).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::proto::{
    command::Op, txn_step::Step, AddOp, ApplyResult, Command, Compare, CompareOp, CompareTarget,
    DeleteOp, IdempotencyRecord, Precondition, PutOp, SnapshotChunk, SnapshotPair, StepResult,
    TxnOp, ValueRecord,
};
use crate::storage::{
    applied_through, cf, decode_u64, read_applied_term, StorageError, CF_DATA, CF_IDEM,
    CF_IDEM_TTL, CF_META, CF_SNAP_STAGING, KEY_APPLIED, KEY_APPLIED_TERM, SNAPSHOT_CFS,
};

/// How long an idempotency key is remembered, measured on the proposing leaders' clocks. A
/// constant, not a flag: every replica must decide alike.
pub const IDEMPOTENCY_TTL_MS: u64 = 5 * 60 * 1000;
/// Expired idempotency records deleted per apply batch at most (bounds the work of one batch).
const EVICT_PER_BATCH: usize = 1024;

/// Error codes of deterministic rejections, as they appear in [`ApplyResult::error_code`].
pub mod codes {
    /// `If-Match` / `If-None-Match` did not hold.
    pub const PRECONDITION_FAILED: &str = "precondition_failed";
    /// An `add` would leave its bounds (or the range of i64).
    pub const BOUND_VIOLATED: &str = "bound_violated";
    /// An `add` target or an `int` compare holds something other than a decimal integer.
    pub const NOT_INTEGER: &str = "not_integer";
    /// The entry did not decode as a valid command.
    pub const INVALID_COMMAND: &str = "invalid_command";
    /// An idempotency key was reused for a different request.
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency_key_reused";
}

/// Read access to the state machine, shared by the HTTP handlers (RocksDB is thread-safe).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
    staging: Arc<std::sync::Mutex<Staging>>,
}

/// An incoming snapshot being received (see [`StateMachine::stage_chunk`]).
#[derive(Default)]
struct Staging {
    /// The (index, term) of the Raft snapshot the chunks belong to.
    snap: Option<(u64, u64)>,
    next_seq: u64,
    /// Applied index and term of the data, once the last chunk arrived.
    complete: Option<(u64, u64)>,
    /// Being installed: new streams wait.
    locked: bool,
}

/// Largest chunk of a streamed snapshot.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// An upper bound for every key of the state machine's column families (keys are at most 4 KiB
/// plus an 8-byte prefix), for range deletions of a whole column family.
fn cf_upper_bound() -> Vec<u8> {
    vec![0xff; 8192]
}

/// A consistent read: what was found and the applied index it reflects.
#[derive(Debug)]
pub struct ReadResult<T> {
    /// The data read.
    pub value: T,
    /// The applied index of the snapshot the data was read from.
    pub index: u64,
}

/// One page of a prefix listing.
#[derive(Debug)]
pub struct ListPage {
    /// Keys in order with their records.
    pub items: Vec<(String, ValueRecord)>,
    /// Whether more keys match after the last one returned.
    pub more: bool,
}

impl StateMachine {
    /// Wraps the node's database.
    pub fn new(db: Arc<DB>) -> Self {
        StateMachine {
            db,
            staging: Arc::new(std::sync::Mutex::new(Staging::default())),
        }
    }

    fn lock_staging(&self) -> std::sync::MutexGuard<'_, Staging> {
        self.staging.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a consistent checkpoint of the whole database to `dir` (which must not exist) and
    /// returns the applied index and term it holds.
    pub fn checkpoint(&self, dir: &std::path::Path) -> Result<(u64, u64), StorageError> {
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(rocks("create a checkpoint"))?;
        let backup = crate::storage::open_read_only(dir)?;
        read_applied_term(&backup)
    }

    /// Fills this (new, empty) database's state machine from a backup checkpoint; returns the
    /// backup's applied index and term and the number of keys.
    pub fn restore_from(
        &self,
        backup_dir: &std::path::Path,
    ) -> Result<(u64, u64, u64), StorageError> {
        let backup = crate::storage::open_read_only(backup_dir)?;
        let (applied, term) = read_applied_term(&backup)?;
        let mut keys = 0u64;
        for name in SNAPSHOT_CFS {
            let (from, to) = (cf(&backup, name)?, cf(&self.db, name)?);
            let mut batch = WriteBatch::default();
            for item in backup.iterator_cf(from, IteratorMode::Start) {
                let (k, v) = item.map_err(rocks("read a backup"))?;
                if name == CF_DATA {
                    keys += 1;
                }
                batch.put_cf(to, k, v);
                if batch.len() >= 10_000 {
                    self.db
                        .write(std::mem::take(&mut batch))
                        .map_err(rocks("restore"))?;
                }
            }
            self.db.write(batch).map_err(rocks("restore"))?;
        }
        self.db.flush_wal(true).map_err(rocks("restore"))?;
        Ok((applied, term, keys))
    }

    /// Streams the state machine, as of one RocksDB snapshot, in chunks of at most `max_bytes`,
    /// tagged with the Raft snapshot `(snap_index, snap_term)` they go with. `emit` returns false
    /// to stop (the receiver is gone). Returns whether every chunk was emitted.
    pub fn snapshot_chunks(
        &self,
        snap_index: u64,
        snap_term: u64,
        max_bytes: usize,
        mut emit: impl FnMut(SnapshotChunk) -> bool,
    ) -> Result<bool, StorageError> {
        let snap = self.db.snapshot();
        let meta = cf(&self.db, CF_META)?;
        let (applied, applied_term) = applied_through(|key| snap.get_cf(meta, key))?;
        let mut chunk = SnapshotChunk {
            snap_index,
            snap_term,
            applied,
            applied_term,
            ..Default::default()
        };
        let mut size = 0usize;
        for (n, name) in SNAPSHOT_CFS.iter().enumerate() {
            let handle = cf(&self.db, name)?;
            for item in snap.iterator_cf(handle, IteratorMode::Start) {
                let (k, v) = item.map_err(rocks("read snapshot data"))?;
                size += k.len() + v.len() + 8;
                chunk.pairs.push(SnapshotPair {
                    cf: n as u32,
                    key: k.into_vec(),
                    value: v.into_vec(),
                });
                if size >= max_bytes {
                    let next = SnapshotChunk {
                        seq: chunk.seq + 1,
                        pairs: Vec::new(),
                        ..chunk.clone()
                    };
                    if !emit(std::mem::replace(&mut chunk, next)) {
                        return Ok(false);
                    }
                    size = 0;
                }
            }
        }
        chunk.done = true;
        Ok(emit(chunk))
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

    /// Releases the lock of [`StateMachine::lock_staged`] (after installing, or if Raft did not
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
        let meta = cf(&self.db, CF_META)?;
        batch.put_cf(meta, KEY_APPLIED, applied.to_be_bytes());
        batch.put_cf(meta, KEY_APPLIED_TERM, applied_term.to_be_bytes());
        *st = Staging {
            locked: true,
            ..Staging::default()
        };
        Ok((applied, applied_term))
    }

    /// The applied index as stored.
    pub fn applied_index(&self) -> Result<u64, StorageError> {
        crate::storage::read_applied(&self.db)
    }

    fn snapshot_applied(&self, snap: &rocksdb::Snapshot<'_>) -> Result<u64, StorageError> {
        let meta = cf(&self.db, CF_META)?;
        Ok(applied_through(|key| snap.get_cf(meta, key))?.0)
    }

    /// Reads one key's current record, without a snapshot: the caller reads the applied index
    /// first, so that the answer reflects at least that index (one RocksDB lookup per read).
    pub fn get_value(&self, key: &str) -> Result<Option<ValueRecord>, StorageError> {
        match self
            .db
            .get_pinned_cf(cf(&self.db, CF_DATA)?, key.as_bytes())
            .map_err(rocks("read key"))?
        {
            Some(v) => Ok(Some(decode_record(&v)?)),
            None => Ok(None),
        }
    }

    /// Evaluates a transaction of compares and gets only, on one consistent snapshot.
    pub fn read_txn(&self, t: &TxnOp) -> Result<ReadResult<ApplyResult>, StorageError> {
        let snap = self.db.snapshot();
        let index = self.snapshot_applied(&snap)?;
        let data = cf(&self.db, CF_DATA)?;
        let read = |key: &str| read_record(&snap.get_cf(data, key.as_bytes()));
        let (result, _) = run_txn(read, index, t)?;
        Ok(ReadResult {
            value: result,
            index,
        })
    }

    /// Lists keys starting with `prefix`, strictly after `after` if given, at most `limit`.
    pub fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ReadResult<ListPage>, StorageError> {
        let data = cf(&self.db, CF_DATA)?;
        let snap = self.db.snapshot();
        let index = self.snapshot_applied(&snap)?;
        let start: Vec<u8> = match after {
            // The smallest key strictly greater than `after`.
            Some(a) if a >= prefix => {
                let mut s = a.as_bytes().to_vec();
                s.push(0);
                s
            }
            _ => prefix.as_bytes().to_vec(),
        };
        let mut opts = ReadOptions::default();
        if let Some(upper) = prefix_upper_bound(prefix.as_bytes()) {
            opts.set_iterate_upper_bound(upper);
        }
        let iter = snap.iterator_cf_opt(data, opts, IteratorMode::From(&start, Direction::Forward));
        let mut items = Vec::new();
        let mut more = false;
        for item in iter {
            let (k, v) = item.map_err(rocks("list keys"))?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if items.len() == limit {
                more = true;
                break;
            }
            let key = String::from_utf8(k.into_vec()).map_err(|e| StorageError::Corrupt {
                what: "key",
                detail: e.to_string(),
            })?;
            items.push((key, decode_record(&v)?));
        }
        Ok(ReadResult {
            value: ListPage { items, more },
            index,
        })
    }

    /// Starts a batch of applies.
    pub fn batch(&self) -> ApplyBatch<'_> {
        ApplyBatch {
            db: &self.db,
            batch: WriteBatch::default(),
            overlay: HashMap::new(),
            idem_overlay: HashMap::new(),
            applied: None,
            applied_term: 0,
            max_stamp: 0,
        }
    }
}

/// The smallest byte string greater than every string with this prefix (None: no bound).
fn prefix_upper_bound(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut upper = prefix.to_vec();
    while let Some(last) = upper.pop() {
        if last < u8::MAX {
            upper.push(last + 1);
            return Some(upper);
        }
    }
    None
}

fn rocks(context: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
    move |source| StorageError::Rocks { context, source }
}

fn decode_record(bytes: &[u8]) -> Result<ValueRecord, StorageError> {
    ValueRecord::decode(bytes).map_err(|e| StorageError::Corrupt {
        what: "value record",
        detail: e.to_string(),
    })
}

fn read_record(
    got: &Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<Option<ValueRecord>, StorageError> {
    match got {
        Ok(Some(v)) => Ok(Some(decode_record(v)?)),
        Ok(None) => Ok(None),
        Err(e) => Err(StorageError::Rocks {
            context: "read key",
            source: e.clone(),
        }),
    }
}

/// A stable 64-bit FNV-1a hash (the fingerprint of an idempotent request).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn idem_ttl_key(stamp: u64, key: &str) -> Vec<u8> {
    let mut k = stamp.to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

/// Applies a run of committed entries as one atomic RocksDB write.
pub struct ApplyBatch<'a> {
    db: &'a DB,
    batch: WriteBatch,
    /// Writes of this batch not yet in RocksDB: key → record (None = deleted).
    overlay: HashMap<String, Option<ValueRecord>>,
    /// Idempotency records written by this batch.
    idem_overlay: HashMap<String, IdempotencyRecord>,
    applied: Option<u64>,
    applied_term: u64,
    /// Highest `proposed_at_ms` seen in the batch (drives expiry).
    max_stamp: u64,
}

impl ApplyBatch<'_> {
    /// The underlying write batch, for the caller's own records (conf state).
    pub fn write_batch(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// Marks the entry at `index` (of `term`) applied without a command (the leader's empty
    /// entry, conf changes).
    pub fn skip(&mut self, index: u64, term: u64) {
        self.applied = Some(index);
        self.applied_term = term;
    }

    /// Applies the command encoded in `data`, the entry at `index` of `term`.
    pub fn apply(
        &mut self,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<ApplyResult, StorageError> {
        self.applied = Some(index);
        self.applied_term = term;
        let cmd = match Command::decode(data) {
            Ok(cmd) => cmd,
            Err(e) => return Ok(reject(index, codes::INVALID_COMMAND, e.to_string())),
        };
        self.max_stamp = self.max_stamp.max(cmd.proposed_at_ms);
        let Some(op) = cmd.op else {
            return Ok(reject(
                index,
                codes::INVALID_COMMAND,
                "empty command".into(),
            ));
        };
        if cmd.idempotency_key.is_empty()
            || crate::planted::active(crate::planted::Bug::SkipIdempotency)
        {
            return self.apply_op(index, op);
        }
        let fingerprint = fnv1a(
            &Command {
                op: Some(op.clone()),
                ..Default::default()
            }
            .encode_to_vec(),
        );
        if let Some(rec) = self.idem_lookup(&cmd.idempotency_key)? {
            if rec.stamp_ms.saturating_add(IDEMPOTENCY_TTL_MS) >= cmd.proposed_at_ms {
                if rec.fingerprint != fingerprint {
                    return Ok(reject(
                        index,
                        codes::IDEMPOTENCY_KEY_REUSED,
                        format!(
                            "Idempotency-Key {:?} was used for a different request",
                            cmd.idempotency_key
                        ),
                    ));
                }
                let mut first = rec.result.unwrap_or_default();
                first.replayed = true;
                return Ok(first);
            }
        }
        let result = self.apply_op(index, op)?;
        let rec = IdempotencyRecord {
            fingerprint,
            result: Some(result.clone()),
            stamp_ms: cmd.proposed_at_ms,
        };
        self.batch.put_cf(
            cf(self.db, CF_IDEM)?,
            cmd.idempotency_key.as_bytes(),
            rec.encode_to_vec(),
        );
        self.batch.put_cf(
            cf(self.db, CF_IDEM_TTL)?,
            idem_ttl_key(cmd.proposed_at_ms, &cmd.idempotency_key),
            [],
        );
        self.idem_overlay.insert(cmd.idempotency_key, rec);
        Ok(result)
    }

    fn apply_op(&mut self, index: u64, op: Op) -> Result<ApplyResult, StorageError> {
        match op {
            Op::Put(p) => self.put(index, p),
            Op::Delete(d) => self.delete(index, d),
            Op::Add(a) => self.add(index, a),
            Op::Txn(t) => self.txn(index, t),
        }
    }

    /// Writes the batch and the applied index. Returns the applied index and its term (None if
    /// nothing ran).
    pub fn commit(mut self) -> Result<Option<(u64, u64)>, StorageError> {
        let Some(applied) = self.applied else {
            // Nothing applied, but the caller may have added records (a conf state).
            if !self.batch.is_empty() {
                self.db.write(self.batch).map_err(rocks("apply batch"))?;
            }
            return Ok(None);
        };
        let data = cf(self.db, CF_DATA)?;
        for (key, rec) in self.overlay.drain() {
            match rec {
                Some(rec) => self.batch.put_cf(data, key.as_bytes(), rec.encode_to_vec()),
                None => self.batch.delete_cf(data, key.as_bytes()),
            }
        }
        self.evict_expired()?;
        let meta = cf(self.db, CF_META)?;
        self.batch.put_cf(meta, KEY_APPLIED, applied.to_be_bytes());
        self.batch
            .put_cf(meta, KEY_APPLIED_TERM, self.applied_term.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db
            .write_opt(self.batch, &opts)
            .map_err(rocks("apply batch"))?;
        Ok(Some((applied, self.applied_term)))
    }

    /// Deletes a bounded number of idempotency records that no command can use any more.
    fn evict_expired(&mut self) -> Result<(), StorageError> {
        let Some(threshold) = self.max_stamp.checked_sub(IDEMPOTENCY_TTL_MS) else {
            return Ok(());
        };
        let ttl = cf(self.db, CF_IDEM_TTL)?;
        let idem = cf(self.db, CF_IDEM)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(threshold.to_be_bytes().to_vec());
        for item in self
            .db
            .iterator_cf_opt(ttl, opts, IteratorMode::Start)
            .take(EVICT_PER_BATCH)
        {
            let (k, _) = item.map_err(rocks("scan idempotency records"))?;
            if k.len() < 8 {
                continue;
            }
            let stamp = decode_u64(&k[..8], "idempotency stamp")?;
            let key = &k[8..];
            self.batch.delete_cf(ttl, &k);
            // Delete the record only if it is still the one this entry tracks (the key may have
            // been used again after it expired).
            let current = self
                .db
                .get_pinned_cf(idem, key)
                .map_err(rocks("read idempotency record"))?;
            if let Some(v) = current {
                if let Ok(rec) = IdempotencyRecord::decode(&v[..]) {
                    let key_str = String::from_utf8_lossy(key);
                    if rec.stamp_ms == stamp && !self.idem_overlay.contains_key(key_str.as_ref()) {
                        self.batch.delete_cf(idem, key);
                    }
                }
            }
        }
        Ok(())
    }

    fn idem_lookup(&self, key: &str) -> Result<Option<IdempotencyRecord>, StorageError> {
        if let Some(rec) = self.idem_overlay.get(key) {
            return Ok(Some(rec.clone()));
        }
        match self
            .db
            .get_pinned_cf(cf(self.db, CF_IDEM)?, key.as_bytes())
            .map_err(rocks("read idempotency record"))?
        {
            Some(v) => Ok(Some(IdempotencyRecord::decode(&v[..]).map_err(|e| {
                StorageError::Corrupt {
                    what: "idempotency record",
                    detail: e.to_string(),
                }
            })?)),
            None => Ok(None),
        }
    }

    fn current(&self, key: &str) -> Result<Option<ValueRecord>, StorageError> {
        if let Some(rec) = self.overlay.get(key) {
            return Ok(rec.clone());
        }
        match self
            .db
            .get_pinned_cf(cf(self.db, CF_DATA)?, key.as_bytes())
            .map_err(rocks("read key for apply"))?
        {
            Some(v) => Ok(Some(decode_record(&v)?)),
            None => Ok(None),
        }
    }

    fn put(&mut self, index: u64, p: PutOp) -> Result<ApplyResult, StorageError> {
        // A blind put does not depend on the current value: no read.
        if p.precondition.is_some() {
            let cur = self.current(&p.key)?;
            if let Some(msg) = check_precondition(p.precondition.as_ref(), cur.as_ref()) {
                return Ok(reject(index, codes::PRECONDITION_FAILED, msg));
            }
        }
        self.overlay.insert(p.key, Some(new_record(p.value, index)));
        Ok(ApplyResult {
            index,
            version: index,
            ..Default::default()
        })
    }

    fn delete(&mut self, index: u64, d: DeleteOp) -> Result<ApplyResult, StorageError> {
        let cur = self.current(&d.key)?;
        if let Some(msg) = check_precondition(d.precondition.as_ref(), cur.as_ref()) {
            return Ok(reject(index, codes::PRECONDITION_FAILED, msg));
        }
        let existed = cur.is_some();
        if existed {
            self.overlay.insert(d.key, None);
        }
        Ok(ApplyResult {
            index,
            deleted: existed,
            ..Default::default()
        })
    }

    fn add(&mut self, index: u64, a: AddOp) -> Result<ApplyResult, StorageError> {
        let cur = self.current(&a.key)?;
        match compute_add(cur.as_ref(), &a) {
            Ok(new) => {
                self.overlay
                    .insert(a.key, Some(new_record(Bytes::from(new.to_string()), index)));
                Ok(ApplyResult {
                    index,
                    version: index,
                    value: Some(new),
                    ..Default::default()
                })
            }
            Err(r) => Ok(r.into_result(index)),
        }
    }

    fn txn(&mut self, index: u64, t: TxnOp) -> Result<ApplyResult, StorageError> {
        let (result, scratch) = run_txn(|k| self.current(k), index, &t)?;
        if result.is_ok() {
            self.overlay.extend(scratch);
        }
        Ok(result)
    }
}

fn new_record(value: Bytes, index: u64) -> ValueRecord {
    ValueRecord {
        value,
        version: index,
    }
}

/// Why a command was refused, before it is turned into an [`ApplyResult`].
struct Rejection {
    code: &'static str,
    message: String,
    key: String,
    /// The current value, for bound violations.
    value: Option<i64>,
    version: u64,
}

impl Rejection {
    fn new(code: &'static str, message: String, key: &str) -> Self {
        Rejection {
            code,
            message,
            key: key.to_string(),
            value: None,
            version: 0,
        }
    }

    fn into_result(self, index: u64) -> ApplyResult {
        let mut r = reject(index, self.code, self.message);
        r.error_key = self.key;
        r.value = self.value;
        r.version = self.version;
        r
    }
}

/// The result of an `add`, or why it is refused.
fn compute_add(cur: Option<&ValueRecord>, a: &AddOp) -> Result<i64, Rejection> {
    let current = match cur {
        None => 0,
        Some(rec) => parse_int(&rec.value).ok_or_else(|| {
            Rejection::new(
                codes::NOT_INTEGER,
                format!("the value of {:?} is not a decimal integer", a.key),
                &a.key,
            )
        })?,
    };
    let new = current.checked_add(a.delta);
    match new.filter(|n| a.min.is_none_or(|m| *n >= m) && a.max.is_none_or(|m| *n <= m)) {
        Some(n) => Ok(n),
        None => {
            let mut r = Rejection::new(
                codes::BOUND_VIOLATED,
                format!(
                    "{:?}: {current} + {} would leave [{}, {}]",
                    a.key,
                    a.delta,
                    a.min.map_or("-inf".into(), |m| m.to_string()),
                    a.max.map_or("+inf".into(), |m| m.to_string())
                ),
                &a.key,
            );
            r.value = Some(current);
            r.version = cur.map_or(0, |c| c.version);
            Err(r)
        }
    }
}

/// Evaluates one compare against a key's current record.
fn eval_compare(cur: Option<&ValueRecord>, c: &Compare) -> Result<bool, Rejection> {
    let op = CompareOp::try_from(c.op).unwrap_or(CompareOp::Unspecified);
    let ord = match CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Unspecified) {
        CompareTarget::Value => match cur {
            // An absent key has no value: only `!=` holds.
            None => return Ok(op == CompareOp::Ne),
            Some(rec) => rec.value.as_ref().cmp(c.value.as_ref()),
        },
        CompareTarget::Version => cur.map_or(0, |r| r.version).cmp(&c.version),
        CompareTarget::Int => {
            let v = match cur {
                None => 0,
                Some(rec) => parse_int(&rec.value).ok_or_else(|| {
                    Rejection::new(
                        codes::NOT_INTEGER,
                        format!("compare on {:?}: the value is not a decimal integer", c.key),
                        &c.key,
                    )
                })?,
            };
            v.cmp(&c.int)
        }
        CompareTarget::Unspecified => {
            return Err(Rejection::new(
                codes::INVALID_COMMAND,
                "compare without a target".into(),
                "",
            ))
        }
    };
    use std::cmp::Ordering::*;
    Ok(match op {
        CompareOp::Eq => ord == Equal,
        CompareOp::Ne => ord != Equal,
        CompareOp::Lt => ord == Less,
        CompareOp::Le => ord != Greater,
        CompareOp::Gt => ord == Greater,
        CompareOp::Ge => ord != Less,
        CompareOp::Unspecified => {
            return Err(Rejection::new(
                codes::INVALID_COMMAND,
                "compare without an operator".into(),
                "",
            ))
        }
    })
}

/// Runs a transaction against `read` (the state before it), returning its result and the writes
/// it would make. Rejections (bound violated, not an integer) come back as a result with an
/// error code and no writes.
fn run_txn(
    mut read: impl FnMut(&str) -> Result<Option<ValueRecord>, StorageError>,
    index: u64,
    t: &TxnOp,
) -> Result<(ApplyResult, HashMap<String, Option<ValueRecord>>), StorageError> {
    let mut scratch: HashMap<String, Option<ValueRecord>> = HashMap::new();
    let mut lookup =
        |scratch: &HashMap<String, Option<ValueRecord>>, key: &str| match scratch.get(key) {
            Some(rec) => Ok(rec.clone()),
            None => read(key),
        };
    let fail = |r: Rejection| Ok((r.into_result(index), HashMap::new()));
    let mut succeeded = true;
    for c in &t.compare {
        let cur = lookup(&scratch, &c.key)?;
        match eval_compare(cur.as_ref(), c) {
            Ok(holds) => succeeded &= holds,
            Err(r) => return fail(r),
        }
    }
    let steps = if succeeded { &t.success } else { &t.failure };
    let mut results = Vec::with_capacity(steps.len());
    for step in steps {
        let Some(step) = &step.step else {
            return fail(Rejection::new(
                codes::INVALID_COMMAND,
                "empty transaction step".into(),
                "",
            ));
        };
        match step {
            Step::Put(p) => {
                scratch.insert(p.key.clone(), Some(new_record(p.value.clone(), index)));
                results.push(StepResult {
                    kind: "put".into(),
                    key: p.key.clone(),
                    version: index,
                    ..Default::default()
                });
            }
            Step::Delete(d) => {
                let existed = lookup(&scratch, &d.key)?.is_some();
                if existed {
                    scratch.insert(d.key.clone(), None);
                }
                results.push(StepResult {
                    kind: "delete".into(),
                    key: d.key.clone(),
                    deleted: existed,
                    ..Default::default()
                });
            }
            Step::Get(g) => {
                let cur = lookup(&scratch, &g.key)?;
                results.push(StepResult {
                    kind: "get".into(),
                    key: g.key.clone(),
                    found: cur.is_some(),
                    value: cur.as_ref().map(|r| r.value.clone()).unwrap_or_default(),
                    version: cur.as_ref().map_or(0, |r| r.version),
                    ..Default::default()
                });
            }
            Step::Add(a) => {
                let cur = lookup(&scratch, &a.key)?;
                match compute_add(cur.as_ref(), a) {
                    Ok(new) => {
                        scratch.insert(
                            a.key.clone(),
                            Some(new_record(Bytes::from(new.to_string()), index)),
                        );
                        results.push(StepResult {
                            kind: "add".into(),
                            key: a.key.clone(),
                            version: index,
                            int: Some(new),
                            ..Default::default()
                        });
                    }
                    Err(r) => return fail(r),
                }
            }
        }
    }
    Ok((
        ApplyResult {
            index,
            succeeded,
            results,
            ..Default::default()
        },
        scratch,
    ))
}

/// Parses a strict decimal integer (optional leading `-`, digits only).
pub fn parse_int(bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?;
    let digits = s.strip_prefix('-').unwrap_or(s);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn check_precondition(pre: Option<&Precondition>, cur: Option<&ValueRecord>) -> Option<String> {
    let pre = pre?;
    if pre.if_absent {
        if let Some(c) = cur {
            return Some(format!("the key exists (version {})", c.version));
        }
    }
    if pre.if_exists && cur.is_none() {
        return Some("the key does not exist".to_string());
    }
    if let Some(want) = pre.if_version {
        match cur {
            None => return Some(format!("expected version {want}, the key does not exist")),
            Some(c) if c.version != want => {
                return Some(format!("expected version {want}, found {}", c.version))
            }
            Some(_) => {}
        }
    }
    None
}

fn reject(index: u64, code: &str, message: String) -> ApplyResult {
    ApplyResult {
        index,
        error_code: code.to_string(),
        error_message: message,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::command::Op;
    use crate::proto::txn_step::Step;

    fn cmd(op: Op) -> Vec<u8> {
        Command {
            op: Some(op),
            ..Default::default()
        }
        .encode_to_vec()
    }

    fn idem(op: Op, key: &str, stamp: u64) -> Vec<u8> {
        Command {
            op: Some(op),
            idempotency_key: key.into(),
            proposed_at_ms: stamp,
        }
        .encode_to_vec()
    }

    fn step(s: Step) -> crate::proto::TxnStep {
        crate::proto::TxnStep { step: Some(s) }
    }

    fn add_op(key: &str, delta: i64, min: Option<i64>) -> AddOp {
        AddOp {
            key: key.into(),
            delta,
            min,
            max: None,
        }
    }

    #[test]
    fn txn_applies_all_or_nothing() {
        let (_d, sm) = open();
        let mut b = sm.batch();
        b.apply(1, 1, &add("a", 100, None)).unwrap();
        b.apply(2, 1, &add("b", 0, None)).unwrap();
        // Transfer 30 from a to b when a >= 30.
        let transfer = |amount: i64| {
            cmd(Op::Txn(TxnOp {
                compare: vec![Compare {
                    key: "a".into(),
                    target: CompareTarget::Int as i32,
                    op: CompareOp::Ge as i32,
                    int: amount,
                    ..Default::default()
                }],
                success: vec![
                    step(Step::Add(add_op("a", -amount, Some(0)))),
                    step(Step::Add(add_op("b", amount, None))),
                ],
                failure: vec![step(Step::Get(crate::proto::GetOp { key: "a".into() }))],
            }))
        };
        let r = b.apply(3, 1, &transfer(30)).unwrap();
        assert!(r.is_ok() && r.succeeded);
        assert_eq!(r.results[0].int, Some(70));
        assert_eq!(r.results[1].int, Some(30));
        // Compare fails: the failure branch reads a.
        let r = b.apply(4, 1, &transfer(500)).unwrap();
        assert!(r.is_ok() && !r.succeeded);
        assert_eq!(&r.results[0].value[..], b"70");
        // Compare passes but the first add would break its bound... make a bound that the second
        // step violates: the whole txn aborts, the first step's effect is discarded.
        let abort = cmd(Op::Txn(TxnOp {
            compare: vec![],
            success: vec![
                step(Step::Add(add_op("a", -10, Some(0)))),
                step(Step::Add(add_op("b", -1000, Some(0)))),
            ],
            failure: vec![],
        }));
        let r = b.apply(5, 1, &abort).unwrap();
        assert_eq!(r.error_code, codes::BOUND_VIOLATED);
        assert_eq!(r.error_key, "b");
        assert_eq!(r.value, Some(30));
        b.commit().unwrap();
        assert_eq!(&sm.get_value("a").unwrap().unwrap().value[..], b"70");
        assert_eq!(&sm.get_value("b").unwrap().unwrap().value[..], b"30");
        // A read-only txn on a snapshot.
        let ro = TxnOp {
            compare: vec![],
            success: vec![
                step(Step::Get(crate::proto::GetOp { key: "a".into() })),
                step(Step::Get(crate::proto::GetOp { key: "zz".into() })),
            ],
            failure: vec![],
        };
        let r = sm.read_txn(&ro).unwrap();
        assert_eq!(r.index, 5);
        assert!(r.value.results[0].found && !r.value.results[1].found);
    }

    #[test]
    fn idempotent_commands_apply_once_until_their_key_expires() {
        let (_d, sm) = open();
        let t0 = 1_000_000_000;
        let mut b = sm.batch();
        let r1 = b
            .apply(1, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", t0))
            .unwrap();
        let r2 = b
            .apply(2, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", t0 + 10))
            .unwrap();
        assert_eq!(r1.value, Some(5));
        assert!(r2.replayed);
        assert_eq!(r2.value, Some(5));
        assert_eq!(r2.index, 1, "the replay carries the first outcome");
        b.commit().unwrap();
        // Survives a new batch (persisted), and a different request under the same key is refused.
        let mut b = sm.batch();
        let r3 = b
            .apply(3, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", t0 + 20))
            .unwrap();
        assert!(r3.replayed);
        let r4 = b
            .apply(4, 1, &idem(Op::Add(add_op("n", 7, None)), "req-1", t0 + 30))
            .unwrap();
        assert_eq!(r4.error_code, codes::IDEMPOTENCY_KEY_REUSED);
        // After the TTL the key is free again: the command applies.
        let later = t0 + IDEMPOTENCY_TTL_MS + 1;
        let r5 = b
            .apply(5, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", later))
            .unwrap();
        assert!(!r5.replayed);
        assert_eq!(r5.value, Some(10));
        b.commit().unwrap();
        assert_eq!(&sm.get_value("n").unwrap().unwrap().value[..], b"10");
        // Expired records are physically removed by later batches, but not the fresh one.
        let mut b = sm.batch();
        b.apply(
            6,
            1,
            &idem(
                Op::Add(add_op("m", 1, None)),
                "req-2",
                later + IDEMPOTENCY_TTL_MS / 2,
            ),
        )
        .unwrap();
        b.commit().unwrap();
        let mut b = sm.batch();
        let r = b
            .apply(
                7,
                1,
                &idem(Op::Add(add_op("n", 5, None)), "req-1", later + 5),
            )
            .unwrap();
        assert!(r.replayed, "the record written at `later` is still live");
        b.commit().unwrap();
    }

    fn put(key: &str, value: &str) -> Vec<u8> {
        cmd(Op::Put(PutOp {
            key: key.into(),
            value: Bytes::from(value.to_string()),
            precondition: None,
        }))
    }

    fn add(key: &str, delta: i64, min: Option<i64>) -> Vec<u8> {
        cmd(Op::Add(AddOp {
            key: key.into(),
            delta,
            min,
            max: None,
        }))
    }

    fn open() -> (tempfile::TempDir, StateMachine) {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::storage::open_db(dir.path()).unwrap();
        (dir, StateMachine::new(db))
    }

    #[test]
    fn batch_sees_its_own_writes_and_moves_applied_index_atomically() {
        let (_d, sm) = open();
        let mut b = sm.batch();
        assert!(b.apply(1, 1, &add("n", 5, None)).unwrap().is_ok());
        let r = b.apply(2, 1, &add("n", -3, Some(0))).unwrap();
        assert_eq!(r.value, Some(2));
        let r = b.apply(3, 1, &add("n", -3, Some(0))).unwrap();
        assert_eq!(r.error_code, codes::BOUND_VIOLATED);
        assert_eq!(r.value, Some(2));
        // Nothing is visible before commit.
        assert!(sm.get_value("n").unwrap().is_none());
        assert_eq!(b.commit().unwrap(), Some((3, 1)));
        assert_eq!(sm.applied_index().unwrap(), 3);
        let rec = sm.get_value("n").unwrap().unwrap();
        assert_eq!(&rec.value[..], b"2");
        assert_eq!(rec.version, 2);
    }

    #[test]
    fn preconditions_and_non_integer_add() {
        let (_d, sm) = open();
        let mut b = sm.batch();
        b.apply(1, 1, &put("k", "hello")).unwrap();
        let r = b.apply(2, 1, &add("k", 1, None)).unwrap();
        assert_eq!(r.error_code, codes::NOT_INTEGER);
        let cas = |v| {
            cmd(Op::Put(PutOp {
                key: "k".into(),
                value: Bytes::from_static(b"x"),
                precondition: Some(Precondition {
                    if_version: Some(v),
                    ..Default::default()
                }),
            }))
        };
        assert_eq!(
            b.apply(3, 1, &cas(7)).unwrap().error_code,
            codes::PRECONDITION_FAILED
        );
        assert!(b.apply(4, 1, &cas(1)).unwrap().is_ok());
        let create = cmd(Op::Put(PutOp {
            key: "k".into(),
            value: Bytes::from_static(b"y"),
            precondition: Some(Precondition {
                if_absent: true,
                ..Default::default()
            }),
        }));
        assert_eq!(
            b.apply(5, 1, &create).unwrap().error_code,
            codes::PRECONDITION_FAILED
        );
        let del = cmd(Op::Delete(DeleteOp {
            key: "k".into(),
            precondition: None,
        }));
        assert!(b.apply(6, 1, &del).unwrap().deleted);
        assert!(!b.apply(7, 1, &del).unwrap().deleted);
        assert!(b.apply(8, 1, &create).unwrap().is_ok());
        b.commit().unwrap();
        let rec = sm.get_value("k").unwrap().unwrap();
        assert_eq!(&rec.value[..], b"y");
        assert_eq!(rec.version, 8);
    }

    #[test]
    fn list_by_prefix_in_order_with_paging() {
        let (_d, sm) = open();
        let mut b = sm.batch();
        for (i, k) in ["b/2", "a/1", "b/1", "b/3", "c"].iter().enumerate() {
            b.apply(i as u64 + 1, 1, &put(k, "v")).unwrap();
        }
        b.commit().unwrap();
        let page = sm.list("b/", None, 2).unwrap().value;
        let keys: Vec<_> = page.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["b/1", "b/2"]);
        assert!(page.more);
        let page = sm.list("b/", Some("b/2"), 2).unwrap().value;
        let keys: Vec<_> = page.items.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, vec!["b/3"]);
        assert!(!page.more);
        assert_eq!(sm.list("", None, 100).unwrap().value.items.len(), 5);
    }

    #[test]
    fn strict_integers() {
        assert_eq!(parse_int(b"42"), Some(42));
        assert_eq!(parse_int(b"-7"), Some(-7));
        for bad in [
            &b""[..],
            b"-",
            b"+1",
            b" 1",
            b"1.0",
            b"0x10",
            b"99999999999999999999",
        ] {
            assert_eq!(parse_int(bad), None, "{bad:?}");
        }
    }
}
