//! # storage: the node's RocksDB database and the Raft log in it
//!
//! This stage owns the bytes on disk: the one RocksDB database of a node, its column families,
//! and the Raft log behind raft-rs's `Storage` trait ([`RaftLogStore`]). It knows nothing of
//! HTTP, the network or what a command means; the state machine ([`crate::sm`]) and the
//! snapshot path ([`crate::snapshot`]) keep their own records in the same database, in the
//! column families listed here, and write them in their own batches.
//!
//! # Layout
//! One RocksDB database per node, nine column families:
//! - `raft_log`: log entries keyed by their index as a big-endian `u64` (so keys sort by index),
//!   values are protobuf-encoded `eraftpb::Entry`.
//! - `meta`: the hard state, the conf state, the member address book, the applied index and its
//!   term, the truncation point (index and term of the last entry removed by compaction), and
//!   the data directory's incarnation ([`meta`]).
//! - `data`: the state machine's keys and [`crate::proto::ValueRecord`]s.
//! - `idempotency`, `idempotency_ttl`: the state machine's memory of recent idempotent commands
//!   and their outcomes, and the same ordered by age for expiry.
//! - `leases`, `locks`: the state machine's leases and locks (SPEC §8, [`crate::sm`]'s
//!   `coord.rs`); in snapshots like `data`.
//! - `changes`: the change log, every key each applied entry changed, written in the apply batch
//!   and trimmed to the retained history (`--watch-history`); it travels with snapshots (a node
//!   that installs one keeps the sender's history, so watches resume on it), not with backups
//!   (SPEC §9, [`crate::watch`]).
//! - `snapshot_staging`: an incoming snapshot, received in chunks, before it is installed.
//!
//! # Durability
//! [`RaftLogStore::append`] writes a whole Ready's entries and hard state in one `WriteBatch` with
//! `sync = true`: one fsync per Ready (group commit). The state machine writes its data together
//! with the applied index in one `WriteBatch` without fsync: all writes share one WAL, written in
//! order, so a crash can only lose a suffix of apply batches, which are re-applied from the
//! (synced) log on restart; since the applied index moves in the same batch as the data, no entry
//! is ever applied twice.
//!
//! The one ordering hazard (the Ready loop applies committed entries before it persists the hard
//! state carrying the new commit index) is handled at load: the commit index is raised to the
//! applied index, which is safe because only committed entries are ever applied.
//!
//! # Compaction and snapshots
//! The log is compacted up to an applied index once the WAL has been synced (so no apply batch
//! the compacted entries fed can be lost); the truncation point keeps the index and term of the
//! last removed entry. A snapshot is the state machine itself: [`RaftLogStore::snapshot`]
//! returns its metadata (applied index and term, conf state) and [`crate::snapshot`] streams the
//! data of a RocksDB snapshot taken a moment later, at an applied index at least as high; the
//! receiver skips the entries its installed data already covers.

use std::path::Path;
use std::sync::Arc;

use protobuf::Message as PbMessage;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Options, DB};

mod entry_cache;
mod log_store;
pub(crate) use log_store::log_sync;
pub mod meta;

pub use log_store::{RaftLogStore, SNAPSHOT_MARKER};

/// Column family of the Raft log.
pub const CF_LOG: &str = "raft_log";
/// Column family of metadata (see [`meta`]).
pub const CF_META: &str = "meta";
/// Column family of the key-value data.
pub const CF_DATA: &str = "data";
/// Column family of idempotency records: client key → [`crate::proto::IdempotencyRecord`].
pub const CF_IDEM: &str = "idempotency";
/// Column family ordering idempotency records by age: BE stamp ++ client key → ().
pub const CF_IDEM_TTL: &str = "idempotency_ttl";
/// Column family of leases: id (big-endian) → [`crate::proto::LeaseRecord`].
pub const CF_LEASES: &str = "leases";
/// Column family of locks: name → [`crate::proto::LockRecord`].
pub const CF_LOCKS: &str = "locks";
/// Column family of the change log: BE index ++ BE place → [`crate::proto::ChangeRecord`]
/// (the history watches resume from; it travels with snapshots, not with backups).
pub const CF_CHANGES: &str = "changes";
/// Column family where an incoming snapshot is staged before it is installed.
pub const CF_SNAP_STAGING: &str = "snapshot_staging";
/// The state machine's column families, as a snapshot or a backup carries them (the index is the
/// `cf` number in [`crate::proto::SnapshotPair`]).
pub const SNAPSHOT_CFS: [&str; 6] = [
    CF_DATA,
    CF_IDEM,
    CF_IDEM_TTL,
    CF_LEASES,
    CF_LOCKS,
    CF_CHANGES,
];
/// Every column family keel creates.
pub const ALL_CFS: [&str; 9] = [
    CF_LOG,
    CF_META,
    CF_DATA,
    CF_IDEM,
    CF_IDEM_TTL,
    CF_SNAP_STAGING,
    CF_LEASES,
    CF_LOCKS,
    CF_CHANGES,
];

/// Failures of the storage layer. Any of these makes the node stop: the disk is not trustworthy.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// RocksDB reported an error.
    #[error("rocksdb {context}: {source}")]
    Rocks {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: rocksdb::Error,
    },
    /// Stored bytes did not decode.
    #[error("corrupt {what}: {detail}")]
    Corrupt {
        /// Which record.
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A committed entry was written for newer apply semantics than this binary knows: applying
    /// it the old way could make this node's state differ from the others'.
    #[error(
        "entry {index} was written for apply version {version}, and this keel applies up to \
         {supported}: upgrade this node's binary (docs/operations.md, Upgrades)"
    )]
    NewerEntry {
        /// The entry's index.
        index: u64,
        /// The apply version it was written for.
        version: u32,
        /// The newest this binary applies.
        supported: u32,
    },
    /// A column family is missing (the database was not created by keel).
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
    /// A snapshot is being copied into place: the state machine is neither the old one nor the
    /// new one and is not read ([`crate::sm::InstallGate`]).
    #[error(
        "a snapshot is being installed on this node; read from another member or retry shortly"
    )]
    Installing,
}

/// Wraps a RocksDB error with what was being done: `.map_err(rocks("read key"))`.
pub fn rocks(context: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
    move |source| StorageError::Rocks { context, source }
}

/// Most write-ahead log kept before the column families holding its oldest file are flushed.
pub const MAX_TOTAL_WAL_BYTES: u64 = 256 * 1024 * 1024;

/// Opens (creating if needed) the node's database at `path`, with every table file kept open.
pub fn open_db(path: &Path) -> Result<Arc<DB>, StorageError> {
    open_db_with(path, None)
}

/// Opens (creating if needed) the node's database at `path`, keeping at most `max_open_files`
/// table files open (None: all of them), so that it shares the process's descriptors with
/// client connections (`node/files.rs`).
pub fn open_db_with(path: &Path, max_open_files: Option<i32>) -> Result<Arc<DB>, StorageError> {
    let mut opts = Options::default();
    if let Some(n) = max_open_files {
        opts.set_max_open_files(n);
    }
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    // Nine column families share one write-ahead log, and a log file is kept until every family
    // with data in it has flushed. `meta` takes a few bytes with every apply and would flush
    // only when its 64 MiB memtable fills: RocksDB's default bound (four times all memtables,
    // about 4.6 GB here) let the log grow to gigabytes under load, and every restart replayed
    // it. Past this much log, the families holding the oldest file are flushed.
    opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
    let cfs = ALL_CFS
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(rocks("open"))?;
    Ok(Arc::new(db))
}

/// Most table files a read-only database (a backup checkpoint) keeps open: it is opened inside
/// a running node, whose descriptors are budgeted (`node/files.rs`).
pub const READ_ONLY_OPEN_FILES: i32 = 64;

/// Opens a database (a backup checkpoint) read-only.
pub fn open_read_only(path: &Path) -> Result<DB, StorageError> {
    let mut opts = Options::default();
    opts.set_max_open_files(READ_ONLY_OPEN_FILES);
    DB::open_cf_for_read_only(&opts, path, ALL_CFS, false).map_err(rocks("open a backup"))
}

/// Looks up a column family handle.
pub fn cf<'a>(db: &'a DB, name: &'static str) -> Result<&'a ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or(StorageError::MissingColumnFamily(name))
}

/// Big-endian encoding of a log index: keys sort by index.
pub fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Decodes a big-endian `u64`.
pub fn decode_u64(bytes: &[u8], what: &'static str) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes.try_into().map_err(|_| StorageError::Corrupt {
        what,
        detail: format!("expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

/// Decodes a rust-protobuf message (raft-rs's types) stored as `what`.
fn decode_pb<M: PbMessage>(bytes: &[u8], what: &'static str) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// Encodes a rust-protobuf message (raft-rs's types) to store as `what`.
fn encode_pb<M: PbMessage>(m: &M, what: &'static str) -> Result<Vec<u8>, StorageError> {
    m.write_to_bytes().map_err(|e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

/// An upper bound for every key of the state machine's column families (keys are at most 4 KiB
/// plus an 8-byte prefix), for range deletions of a whole column family.
pub fn cf_upper_bound() -> Vec<u8> {
    vec![0xff; 8192]
}
