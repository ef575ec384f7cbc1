//! The state machine's memory of idempotent commands.
//!
//! A command with an idempotency key records its outcome (and a fingerprint of the request) in
//! the `idempotency` column family, in the same batch as its effects, and a pointer to it ordered
//! by age in `idempotency_ttl`. A later command with the same key whose stamp is within
//! [`IDEMPOTENCY_TTL_MS`] of the record's is not applied: it is answered with the recorded
//! outcome (`replayed`), or refused if the request differs. Whether a record counts is decided by
//! the stamps in the log alone, so replicas agree however late they physically delete expired
//! records (a bounded number per batch).

use std::collections::HashMap;

use prost::Message as _;
use rocksdb::{IteratorMode, ReadOptions, WriteBatch, DB};

use crate::proto::{command::Op, Command, IdempotencyRecord};
use crate::storage::{cf, decode_u64, rocks, StorageError, CF_IDEM, CF_IDEM_TTL};

/// How long an idempotency key is remembered, measured on the proposing leaders' clocks. A
/// constant, not a flag: every replica must decide alike.
pub const IDEMPOTENCY_TTL_MS: u64 = 5 * 60 * 1000;
/// Expired idempotency records deleted per apply batch at most (bounds the work of one batch).
const EVICT_PER_BATCH: usize = 1024;

/// A stable 64-bit FNV-1a hash.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The fingerprint of a request: the hash of its operation (without key and stamp), so that a
/// key reused for another request is told apart from a retry.
pub fn fingerprint(op: &Op) -> u64 {
    fnv1a(
        &Command {
            op: Some(op.clone()),
            ..Default::default()
        }
        .encode_to_vec(),
    )
}

/// Key of a record in `idempotency_ttl`: big-endian stamp, then the client's key.
fn ttl_key(stamp: u64, key: &str) -> Vec<u8> {
    let mut k = stamp.to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

/// What one apply batch knows of idempotency records beyond RocksDB.
#[derive(Default)]
pub(super) struct Memory {
    /// Records written by this batch (RocksDB write batches cannot be read back).
    overlay: HashMap<String, IdempotencyRecord>,
    /// Highest `proposed_at_ms` seen in the batch: records older than it by the TTL are dead.
    max_stamp: u64,
}

impl Memory {
    /// Notes the stamp of an applied command.
    pub(super) fn observe(&mut self, stamp: u64) {
        self.max_stamp = self.max_stamp.max(stamp);
    }

    /// The record of `key`, if one is live for a command stamped `stamp`.
    pub(super) fn live(
        &self,
        db: &DB,
        key: &str,
        stamp: u64,
    ) -> Result<Option<IdempotencyRecord>, StorageError> {
        let rec =
            match self.overlay.get(key) {
                Some(rec) => Some(rec.clone()),
                None => match db
                    .get_pinned_cf(cf(db, CF_IDEM)?, key.as_bytes())
                    .map_err(rocks("read idempotency record"))?
                {
                    Some(v) => Some(IdempotencyRecord::decode(&v[..]).map_err(|e| {
                        StorageError::Corrupt {
                            what: "idempotency record",
                            detail: e.to_string(),
                        }
                    })?),
                    None => None,
                },
            };
        Ok(rec.filter(|r| r.stamp_ms.saturating_add(IDEMPOTENCY_TTL_MS) >= stamp))
    }

    /// Records the outcome of the command with `key` in `batch`.
    pub(super) fn record(
        &mut self,
        db: &DB,
        batch: &mut WriteBatch,
        key: String,
        rec: IdempotencyRecord,
    ) -> Result<(), StorageError> {
        batch.put_cf(cf(db, CF_IDEM)?, key.as_bytes(), rec.encode_to_vec());
        batch.put_cf(cf(db, CF_IDEM_TTL)?, ttl_key(rec.stamp_ms, &key), []);
        self.overlay.insert(key, rec);
        Ok(())
    }

    /// Adds to `batch` the deletion of a bounded number of records that no command can use any
    /// more.
    pub(super) fn evict_expired(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        let Some(threshold) = self.max_stamp.checked_sub(IDEMPOTENCY_TTL_MS) else {
            return Ok(());
        };
        let ttl = cf(db, CF_IDEM_TTL)?;
        let idem = cf(db, CF_IDEM)?;
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(threshold.to_be_bytes().to_vec());
        for item in db
            .iterator_cf_opt(ttl, opts, IteratorMode::Start)
            .take(EVICT_PER_BATCH)
        {
            let (k, _) = item.map_err(rocks("scan idempotency records"))?;
            if k.len() < 8 {
                continue;
            }
            let stamp = decode_u64(&k[..8], "idempotency stamp")?;
            let key = &k[8..];
            batch.delete_cf(ttl, &k);
            // Delete the record only if it is still the one this entry tracks (the key may have
            // been used again after it expired).
            let current = db
                .get_pinned_cf(idem, key)
                .map_err(rocks("read idempotency record"))?;
            if let Some(v) = current {
                if let Ok(rec) = IdempotencyRecord::decode(&v[..]) {
                    let key_str = String::from_utf8_lossy(key);
                    if rec.stamp_ms == stamp && !self.overlay.contains_key(key_str.as_ref()) {
                        batch.delete_cf(idem, key);
                    }
                }
            }
        }
        Ok(())
    }
}
