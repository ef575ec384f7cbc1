//! The state machine's memory of idempotent commands.
//!
//! A command with an idempotency key records its outcome (and a fingerprint of the request) in
//! the `idempotency` column family, in the same batch as its effects, and a pointer to it ordered
//! by log index in `idempotency_ttl`. A later command with the same key, while the record is
//! live, is not applied: it is answered with the recorded outcome (`replayed`), or refused if the
//! request differs.
//!
//! # How long a key is remembered (no wall clock)
//! No clock of any machine is trusted across machines: a new leader whose wall clock ran ahead
//! must not forget a key early and apply a client's retry twice. A record made by the entry at
//! index `i` of term `t`, stamped `ms` on that leader's monotonic clock, is live for a command at
//! index `j` of term `u`, stamped `ms'`:
//! - while the same leader leads (`u == t`): until `ms' >= ms + 5 minutes`
//!   ([`IDEMPOTENCY_TTL_MS`], measured on that one leader's monotonic clock);
//! - once leadership has changed (`u != t`): until `j >= i + 1,000,000`
//!   ([`IDEMPOTENCY_CROSS_TERM_ENTRIES`]): another leader's clock says nothing about how long
//!   ago the record was made, so only the log is counted.
//!
//! Both inputs are in the log entries, so every replica decides alike. A record is deleted only
//! once no later command can count it ([`is_dead_forever`]: 1,000,000 entries after it was made,
//! and, while its leader still leads, 5 minutes of that leader's clock), so that replicas that
//! batch their applies differently, and so delete at different entries, still decide alike. The
//! memory therefore holds at most the records of the last 1,000,000 entries (plus those of a
//! leader's last 5 minutes).
//!
//! Records written before this rule (by the wall clock: no term, no index) count as made at
//! index 0 and are forgotten once the log passes 1,000,000 entries; their old pointers, keyed by
//! wall-clock time, are never reached by the index-ordered cleanup and stay. Every node of a
//! cluster must run the same version: the rule is part of the replicated state machine.

use std::collections::HashMap;

use prost::Message as _;
use rocksdb::{IteratorMode, WriteBatch, DB};

use crate::proto::{command::Op, Command, IdempotencyRecord};
use crate::storage::{cf, decode_u64, rocks, StorageError, CF_IDEM, CF_IDEM_TTL};

/// How long a key is remembered while the leader that recorded it leads, on its monotonic
/// clock. A constant, not a flag: every replica must decide alike.
pub const IDEMPOTENCY_TTL_MS: u64 = 5 * 60 * 1000;
/// How many log entries a key is remembered for once leadership has changed (also the bound on
/// the memory's size then).
pub const IDEMPOTENCY_CROSS_TERM_ENTRIES: u64 = 1_000_000;
/// Records examined for deletion per apply batch at most (bounds the work of one batch).
const EVICT_PER_BATCH: usize = 1024;

/// Where and when a command was applied: its entry and its leader's clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stamp {
    /// The entry's index.
    pub index: u64,
    /// The entry's term: which leader proposed it.
    pub term: u64,
    /// Milliseconds on that leader's monotonic clock.
    pub leader_ms: u64,
}

/// Whether `rec` still counts for a command at `now` (the rule in the module docs).
pub fn is_live(rec: &IdempotencyRecord, now: Stamp) -> bool {
    if rec.term != 0 && rec.term == now.term {
        now.leader_ms < rec.leader_ms.saturating_add(IDEMPOTENCY_TTL_MS)
    } else {
        now.index < rec.index.saturating_add(IDEMPOTENCY_CROSS_TERM_ENTRIES)
    }
}

/// Whether no command after `now` can count `rec` any more, so that deleting it (on any
/// replica, at any later entry) cannot change a decision: it is dead by the entry count (which
/// only grows), and either made by another leader (later commands are never of its term again)
/// or dead by its own leader's clock (which only grows within that term).
pub fn is_dead_forever(rec: &IdempotencyRecord, now: Stamp) -> bool {
    let by_entries = now.index >= rec.index.saturating_add(IDEMPOTENCY_CROSS_TERM_ENTRIES);
    let by_clock_or_term = rec.term == 0
        || rec.term != now.term
        || now.leader_ms >= rec.leader_ms.saturating_add(IDEMPOTENCY_TTL_MS);
    by_entries && by_clock_or_term
}

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

/// Key of a record in `idempotency_ttl`: the big-endian index of the entry that made it, then
/// the client's key.
fn ttl_key(index: u64, key: &str) -> Vec<u8> {
    let mut k = index.to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

/// What one apply batch knows of idempotency records beyond RocksDB.
#[derive(Default)]
pub(super) struct Memory {
    /// Records written by this batch (RocksDB write batches cannot be read back).
    overlay: HashMap<String, IdempotencyRecord>,
    /// The stamp of the last command applied in the batch: expiry is judged against it.
    last: Option<Stamp>,
}

impl Memory {
    /// Notes the stamp of an applied command.
    pub(super) fn observe(&mut self, stamp: Stamp) {
        self.last = Some(stamp);
    }

    /// The record of `key`, if one is live for a command stamped `now`.
    pub(super) fn live(
        &self,
        db: &DB,
        key: &str,
        now: Stamp,
    ) -> Result<Option<IdempotencyRecord>, StorageError> {
        let rec = match self.overlay.get(key) {
            Some(rec) => Some(rec.clone()),
            None => match db
                .get_pinned_cf(cf(db, CF_IDEM)?, key.as_bytes())
                .map_err(rocks("read idempotency record"))?
            {
                Some(v) => Some(decode(&v)?),
                None => None,
            },
        };
        Ok(rec.filter(|r| is_live(r, now)))
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
        batch.put_cf(cf(db, CF_IDEM_TTL)?, ttl_key(rec.index, &key), []);
        self.overlay.insert(key, rec);
        Ok(())
    }

    /// Adds to `batch` the deletion of records that no later command can count
    /// ([`is_dead_forever`]), oldest index first, examining a bounded number.
    pub(super) fn evict_expired(
        &self,
        db: &DB,
        batch: &mut WriteBatch,
    ) -> Result<(), StorageError> {
        let Some(now) = self.last else {
            return Ok(());
        };
        let ttl = cf(db, CF_IDEM_TTL)?;
        let idem = cf(db, CF_IDEM)?;
        for item in db
            .iterator_cf(ttl, IteratorMode::Start)
            .take(EVICT_PER_BATCH)
        {
            let (k, _) = item.map_err(rocks("scan idempotency records"))?;
            if k.len() < 8 {
                batch.delete_cf(ttl, &k);
                continue;
            }
            let index = decode_u64(&k[..8], "idempotency index")?;
            if now.index < index.saturating_add(IDEMPOTENCY_CROSS_TERM_ENTRIES) {
                // This record and every later one are too young to be dead for ever.
                break;
            }
            let key = &k[8..];
            let key_str = String::from_utf8_lossy(key);
            if self.overlay.contains_key(key_str.as_ref()) {
                // Used again in this batch: a newer record with a pointer of its own.
                batch.delete_cf(ttl, &k);
                continue;
            }
            let current = db
                .get_pinned_cf(idem, key)
                .map_err(rocks("read idempotency record"))?;
            match current.map(|v| IdempotencyRecord::decode(&v[..])) {
                // Still the record this pointer tracks, and dead for ever: both go.
                Some(Ok(rec)) if rec.index == index && is_dead_forever(&rec, now) => {
                    batch.delete_cf(idem, key);
                    batch.delete_cf(ttl, &k);
                }
                // Still counted by a later command of its own leader: keep it, and stop. Every
                // later pointer is of that term too (terms only grow along the log, and none is
                // past the current one) with a later stamp, so none is dead for ever either.
                Some(Ok(rec)) if rec.index == index => break,
                // The key was used again later, is gone, or its record does not decode (the
                // apply path stops on that when the key is used): this pointer is stale.
                _ => batch.delete_cf(ttl, &k),
            }
        }
        Ok(())
    }
}

fn decode(v: &[u8]) -> Result<IdempotencyRecord, StorageError> {
    IdempotencyRecord::decode(v).map_err(|e| StorageError::Corrupt {
        what: "idempotency record",
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: u64, term: u64, leader_ms: u64) -> IdempotencyRecord {
        IdempotencyRecord {
            index,
            term,
            leader_ms,
            ..Default::default()
        }
    }

    fn at(index: u64, term: u64, leader_ms: u64) -> Stamp {
        Stamp {
            index,
            term,
            leader_ms,
        }
    }

    #[test]
    fn a_record_is_deleted_only_once_no_later_command_can_count_it() {
        let r = rec(100, 3, 0);
        let cross = IDEMPOTENCY_CROSS_TERM_ENTRIES;
        // Dead by its leader's clock, but a command of the next term would still count it.
        let later_same_term = at(200, 3, IDEMPOTENCY_TTL_MS);
        assert!(!is_live(&r, later_same_term));
        assert!(is_live(&r, at(201, 4, 0)));
        assert!(!is_dead_forever(&r, later_same_term));
        // Past the window of entries: dead for every later stamp.
        assert!(is_dead_forever(&r, at(100 + cross, 4, 0)));
        assert!(is_dead_forever(&r, at(100 + cross, 3, IDEMPOTENCY_TTL_MS)));
        // Its own leader still leads and its clock has not run out: not yet.
        assert!(!is_dead_forever(&r, at(100 + cross, 3, 1)));
    }

    #[test]
    fn the_same_leader_counts_time_another_counts_entries() {
        let r = rec(100, 3, 50_000);
        // Same leader: live for five minutes of its clock, however many entries.
        assert!(is_live(
            &r,
            at(5_000_000, 3, 50_000 + IDEMPOTENCY_TTL_MS - 1)
        ));
        assert!(!is_live(&r, at(101, 3, 50_000 + IDEMPOTENCY_TTL_MS)));
        // Another leader: its clock says nothing, however far ahead it is; entries count.
        assert!(is_live(&r, at(101, 4, u64::MAX)));
        assert!(is_live(
            &r,
            at(100 + IDEMPOTENCY_CROSS_TERM_ENTRIES - 1, 4, 0)
        ));
        assert!(!is_live(&r, at(100 + IDEMPOTENCY_CROSS_TERM_ENTRIES, 4, 0)));
        // A record of an older version (no term) is counted in entries only.
        assert!(is_live(&rec(0, 0, 0), at(10, 0, u64::MAX)));
    }
}
