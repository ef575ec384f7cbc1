//! The records of the `meta` column family: small, fixed keys written by several stages.
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `hard_state` | raft-rs `HardState` (protobuf) | the log store, in the Ready's append batch |
//! | `conf_state` | raft-rs `ConfState` (protobuf) | apply of a conf change; snapshot install; bootstrap |
//! | `members` | the address book (JSON, [`crate::members`]) | apply of a conf change; start; restore |
//! | `applied_index`, `applied_term` | big-endian `u64` | the state machine, in each apply batch |
//! | `truncated` | index ++ term of the last compacted entry | compaction; snapshot install; bootstrap |
//! | `incarnation` | a random `u64` made with the database | first start |
//! | `installing` | a snapshot install under way ([`PendingInstall`]) | snapshot install |
//!
//! Every function here reads or writes one record and nothing else, so that each writer decides
//! which batch (and which fsync) its record goes with.

use raft::eraftpb::{ConfState, HardState};
use rocksdb::{WriteBatch, WriteOptions, DB};

use super::{cf, decode_pb, decode_u64, encode_pb, rocks, StorageError, CF_META};
use crate::members::{self, AddressBook};

/// Key of the hard state.
pub(super) const KEY_HARD_STATE: &[u8] = b"hard_state";
/// Key of the conf state.
pub(super) const KEY_CONF_STATE: &[u8] = b"conf_state";
/// Key of the truncation point.
pub(super) const KEY_TRUNCATED: &[u8] = b"truncated";
/// Key of the applied index; written by the state machine with the data it covers.
pub const KEY_APPLIED: &[u8] = b"applied_index";
/// Key of the term of the applied index.
pub const KEY_APPLIED_TERM: &[u8] = b"applied_term";
/// Key of the change log's start: every change made by an entry above this index is in the
/// `changes` column family (written with the changes, by the state machine and the snapshot
/// install).
pub const KEY_HISTORY_AFTER: &[u8] = b"history_after";
/// Key of the address book (member id → addresses).
const KEY_MEMBERS: &[u8] = b"members";
/// Key of the data directory's incarnation.
const KEY_INCARNATION: &[u8] = b"incarnation";
/// Key of a snapshot install under way: present from the synced write that empties the state
/// machine and the log until the synced write that finishes the install.
const KEY_INSTALLING: &[u8] = b"installing";

/// A snapshot install that has emptied the state machine and the log, and whose staged data is
/// being copied into place: what the install's last write records once the copy is done. A node
/// that finds one when it starts finishes the install before anything else
/// ([`crate::snapshot::stage::finish_install`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingInstall {
    /// The applied index of the installed data.
    pub applied: u64,
    /// Its term.
    pub applied_term: u64,
    /// Where the installed change log starts.
    pub history_after: u64,
    /// The address book to write with it, encoded (None: keep the node's).
    pub members: Option<Vec<u8>>,
}

impl PendingInstall {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(25 + self.members.as_ref().map_or(0, Vec::len));
        v.extend_from_slice(&self.applied.to_be_bytes());
        v.extend_from_slice(&self.applied_term.to_be_bytes());
        v.extend_from_slice(&self.history_after.to_be_bytes());
        match &self.members {
            Some(m) => {
                v.push(1);
                v.extend_from_slice(m);
            }
            None => v.push(0),
        }
        v
    }

    fn decode(v: &[u8]) -> Result<Self, StorageError> {
        let corrupt = || StorageError::Corrupt {
            what: "pending snapshot install",
            detail: format!("{} bytes, expected at least 25", v.len()),
        };
        let (fixed, rest) = v.split_at_checked(24).ok_or_else(corrupt)?;
        let (&flag, members) = rest.split_first().ok_or_else(corrupt)?;
        Ok(PendingInstall {
            applied: decode_u64(&fixed[..8], "pending install index")?,
            applied_term: decode_u64(&fixed[8..16], "pending install term")?,
            history_after: decode_u64(&fixed[16..], "pending install history")?,
            members: (flag == 1).then(|| members.to_vec()),
        })
    }
}

/// Puts a pending install into `batch` (the install's first write).
pub fn put_pending_install(
    db: &DB,
    batch: &mut WriteBatch,
    pending: &PendingInstall,
) -> Result<(), StorageError> {
    batch.put_cf(cf(db, CF_META)?, KEY_INSTALLING, pending.encode());
    Ok(())
}

/// Deletes the pending install in `batch` (the install's last write).
pub fn delete_pending_install(db: &DB, batch: &mut WriteBatch) -> Result<(), StorageError> {
    batch.delete_cf(cf(db, CF_META)?, KEY_INSTALLING);
    Ok(())
}

/// Reads the pending install, if one is under way.
pub fn read_pending_install(db: &DB) -> Result<Option<PendingInstall>, StorageError> {
    let meta = cf(db, CF_META)?;
    pending_install_through(|key| db.get_cf(meta, key))
}

/// Reads the pending install through `get` (a lookup in [`CF_META`] of the database or of one
/// of its snapshots).
pub fn pending_install_through(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<Option<PendingInstall>, StorageError> {
    get(KEY_INSTALLING)
        .map_err(rocks("read pending install"))?
        .map(|v| PendingInstall::decode(&v))
        .transpose()
}

/// Puts an encoded address book into `batch`.
pub fn put_members_raw(
    db: &DB,
    batch: &mut WriteBatch,
    encoded: &[u8],
) -> Result<(), StorageError> {
    batch.put_cf(cf(db, CF_META)?, KEY_MEMBERS, encoded);
    Ok(())
}

/// The stored form of a truncation point.
pub(super) fn truncation_value(index: u64, term: u64) -> Vec<u8> {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&term.to_be_bytes());
    v
}

/// Reads the truncation point ((0, 0) when the log was never compacted).
pub(super) fn read_truncated(db: &DB) -> Result<(u64, u64), StorageError> {
    match db
        .get_cf(cf(db, CF_META)?, KEY_TRUNCATED)
        .map_err(rocks("read truncation point"))?
    {
        Some(v) if v.len() == 16 => Ok((
            decode_u64(&v[..8], "truncated index")?,
            decode_u64(&v[8..], "truncated term")?,
        )),
        Some(v) => Err(StorageError::Corrupt {
            what: "truncation point",
            detail: format!("expected 16 bytes, found {}", v.len()),
        }),
        None => Ok((0, 0)),
    }
}

/// Reads the hard state (the default when none was written).
pub(super) fn read_hard_state(db: &DB) -> Result<HardState, StorageError> {
    match db
        .get_cf(cf(db, CF_META)?, KEY_HARD_STATE)
        .map_err(rocks("read hard state"))?
    {
        Some(v) => decode_pb(&v, "hard state"),
        None => Ok(HardState::default()),
    }
}

/// Reads the conf state (None before the first boot).
pub fn read_conf_state(db: &DB) -> Result<Option<ConfState>, StorageError> {
    match db
        .get_cf(cf(db, CF_META)?, KEY_CONF_STATE)
        .map_err(rocks("read conf state"))?
    {
        Some(v) => Ok(Some(decode_pb(&v, "conf state")?)),
        None => Ok(None),
    }
}

/// Puts the hard state into `batch`.
pub(super) fn put_hard_state(
    db: &DB,
    batch: &mut WriteBatch,
    hs: &HardState,
) -> Result<(), StorageError> {
    batch.put_cf(
        cf(db, CF_META)?,
        KEY_HARD_STATE,
        encode_pb(hs, "hard state")?,
    );
    Ok(())
}

/// Puts the conf state into `batch` (the apply path, which changes membership).
pub fn put_conf_state(db: &DB, batch: &mut WriteBatch, cs: &ConfState) -> Result<(), StorageError> {
    batch.put_cf(
        cf(db, CF_META)?,
        KEY_CONF_STATE,
        encode_pb(cs, "conf state")?,
    );
    Ok(())
}

/// Puts the applied index and its term into `batch` (with the data they cover).
pub fn put_applied(
    db: &DB,
    batch: &mut WriteBatch,
    index: u64,
    term: u64,
) -> Result<(), StorageError> {
    let meta = cf(db, CF_META)?;
    batch.put_cf(meta, KEY_APPLIED, index.to_be_bytes());
    batch.put_cf(meta, KEY_APPLIED_TERM, term.to_be_bytes());
    Ok(())
}

/// Writes the starting point of a node that has nothing yet: the log truncated at
/// `(index, term)`, the state machine applied to it, the configuration `voters` (empty for a node
/// that joins, which learns its configuration from the leader's snapshot). Used on first boot
/// (index 1, term 1) and by restore (the backup's applied index and term).
pub fn bootstrap(db: &DB, voters: &[u64], index: u64, term: u64) -> Result<(), StorageError> {
    let meta = cf(db, CF_META)?;
    let mut batch = WriteBatch::default();
    let cs = ConfState {
        voters: voters.to_vec(),
        ..Default::default()
    };
    put_conf_state(db, &mut batch, &cs)?;
    if !voters.is_empty() {
        let hs = HardState {
            term,
            commit: index,
            ..Default::default()
        };
        put_hard_state(db, &mut batch, &hs)?;
        batch.put_cf(meta, KEY_TRUNCATED, truncation_value(index, term));
        put_applied(db, &mut batch, index, term)?;
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts).map_err(rocks("bootstrap"))
}

/// Reads the persisted address book, if any. A stored book that does not parse is an error, never
/// a reason to fall back to the flags.
pub fn read_members(
    db: &DB,
) -> Result<Option<Result<AddressBook, serde_json::Error>>, StorageError> {
    Ok(db
        .get_cf(cf(db, CF_META)?, KEY_MEMBERS)
        .map_err(rocks("read members"))?
        .map(|bytes| members::decode(&bytes)))
}

/// Reads the stored address book, as bytes, through `get` (a lookup in [`CF_META`] of the
/// database or of one of its snapshots).
pub fn members_through(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<Option<Vec<u8>>, StorageError> {
    get(KEY_MEMBERS).map_err(rocks("read members"))
}

/// Persists the address book outside the apply path: at start and on restore.
pub fn write_members(db: &DB, book: &AddressBook) -> Result<(), StorageError> {
    write_members_raw(db, &members::encode(book))
}

/// Persists raw bytes as the address book (tests use it to damage the record). Synced: it is
/// written once per start, and the next start must find it after a power loss.
pub fn write_members_raw(db: &DB, encoded: &[u8]) -> Result<(), StorageError> {
    db.put_cf_opt(cf(db, CF_META)?, KEY_MEMBERS, encoded, &synced())
        .map_err(rocks("write members"))
}

/// Write options with fsync.
fn synced() -> WriteOptions {
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    opts
}

/// Puts the address book into `batch` (the apply path, with the conf state it belongs to).
pub fn put_members(
    db: &DB,
    batch: &mut WriteBatch,
    book: &AddressBook,
) -> Result<(), StorageError> {
    batch.put_cf(cf(db, CF_META)?, KEY_MEMBERS, members::encode(book));
    Ok(())
}

/// This data directory's incarnation: a random number made when the database is created, so
/// that peers can tell a restarted node from one whose data was wiped.
pub fn incarnation(db: &DB) -> Result<u64, StorageError> {
    let meta = cf(db, CF_META)?;
    if let Some(v) = db
        .get_cf(meta, KEY_INCARNATION)
        .map_err(rocks("read incarnation"))?
    {
        return decode_u64(&v, "incarnation");
    }
    let n: u64 = rand::random::<u64>() | 1;
    // Synced: an incarnation lost to a power loss would make peers believe the data was wiped.
    db.put_cf_opt(meta, KEY_INCARNATION, n.to_be_bytes(), &synced())
        .map_err(rocks("write incarnation"))?;
    Ok(n)
}

/// Reads the applied index and its term (0 when nothing was ever applied).
pub fn read_applied(db: &DB) -> Result<(u64, u64), StorageError> {
    let meta = cf(db, CF_META)?;
    applied_through(|key| db.get_cf(meta, key))
}

/// Reads the applied index and its term through `get`, a lookup in [`CF_META`] of the database
/// or of one of its snapshots.
pub fn applied_through(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<(u64, u64), StorageError> {
    let read = |key: &[u8], what| match get(key).map_err(rocks("read applied index"))? {
        Some(v) => decode_u64(&v, what),
        None => Ok(0),
    };
    Ok((
        read(KEY_APPLIED, "applied index")?,
        read(KEY_APPLIED_TERM, "applied term")?,
    ))
}

/// Puts the change log's start into `batch` (see [`KEY_HISTORY_AFTER`]).
pub fn put_history_after(db: &DB, batch: &mut WriteBatch, index: u64) -> Result<(), StorageError> {
    batch.put_cf(cf(db, CF_META)?, KEY_HISTORY_AFTER, index.to_be_bytes());
    Ok(())
}

/// Reads the change log's start through `get` (a lookup in [`CF_META`] of the database or of a
/// snapshot); None when it was never written (a data directory older than the change log).
pub fn history_after_through(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<Option<u64>, StorageError> {
    match get(KEY_HISTORY_AFTER).map_err(rocks("read history start"))? {
        Some(v) => Ok(Some(decode_u64(&v, "history start")?)),
        None => Ok(None),
    }
}
