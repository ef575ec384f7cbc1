//! RocksDB storage for one node: the Raft log and its metadata behind raft-rs's [`Storage`]
//! trait, in the same database as the key-value state machine (see [`crate::state_machine`]).
//!
//! # Layout
//! One RocksDB database per node, six column families:
//! - `raft_log`: log entries keyed by their index as a big-endian `u64` (so keys sort by index),
//!   values are protobuf-encoded `eraftpb::Entry`.
//! - `meta`: the hard state, the conf state, the applied index and the truncation point
//!   (index and term of the last entry removed by compaction).
//! - `data`: the state machine's keys and [`crate::proto::ValueRecord`]s.
//! - `idempotency`, `idempotency_ttl`: the state machine's memory of recent idempotent commands
//!   and their outcomes, and the same ordered by age for expiry.
//! - `snapshot_staging`: an incoming snapshot, received in chunks, before it is installed.
//!
//! # Compaction and snapshots
//! The log is compacted up to an applied index once the WAL has been synced (so no apply batch
//! the compacted entries fed can be lost); the truncation point keeps the index and term of the
//! last removed entry. A snapshot is the state machine itself: [`RaftLogStore::snapshot`]
//! returns its metadata (applied index and term, conf state) and the transport streams the data
//! of a RocksDB snapshot taken a moment later, at an applied index at least as high; the
//! receiver skips the entries its installed data already covers.
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

use std::path::Path;
use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError as RaftStorageError};
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

/// Column family of the Raft log.
pub const CF_LOG: &str = "raft_log";
/// Column family of metadata (hard state, conf state, applied index, truncation point).
pub const CF_META: &str = "meta";
/// Column family of the key-value data.
pub const CF_DATA: &str = "data";
/// Column family of idempotency records: client key → [`crate::proto::IdempotencyRecord`].
pub const CF_IDEM: &str = "idempotency";
/// Column family ordering idempotency records by age: BE stamp ++ client key → ().
pub const CF_IDEM_TTL: &str = "idempotency_ttl";
/// Column family where an incoming snapshot is staged before it is installed.
pub const CF_SNAP_STAGING: &str = "snapshot_staging";
/// The state machine's column families, as a snapshot carries them (the index is the `cf`
/// number in [`crate::proto::SnapshotPair`]).
pub const SNAPSHOT_CFS: [&str; 3] = [CF_DATA, CF_IDEM, CF_IDEM_TTL];
/// Key of the term of the applied index in [`CF_META`].
pub const KEY_APPLIED_TERM: &[u8] = b"applied_term";

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
/// Key of the applied index in [`CF_META`]; written by the state machine.
pub const KEY_APPLIED: &[u8] = b"applied_index";
const KEY_TRUNCATED: &[u8] = b"truncated";

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
    /// A column family is missing (the database was not created by keel).
    #[error("missing column family {0}")]
    MissingColumnFamily(&'static str),
}

impl StorageError {
    fn rocks(context: &'static str) -> impl FnOnce(rocksdb::Error) -> StorageError {
        move |source| StorageError::Rocks { context, source }
    }
}

/// Opens (creating if needed) the node's database at `path`.
pub fn open_db(path: &Path) -> Result<Arc<DB>, StorageError> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    opts.set_max_background_jobs(2);
    let cfs = ALL_CFS
        .into_iter()
        .map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
    let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(StorageError::rocks("open"))?;
    Ok(Arc::new(db))
}

/// Every column family keel creates.
pub const ALL_CFS: [&str; 6] = [
    CF_LOG,
    CF_META,
    CF_DATA,
    CF_IDEM,
    CF_IDEM_TTL,
    CF_SNAP_STAGING,
];

/// Opens a database (a backup checkpoint) read-only.
pub fn open_read_only(path: &Path) -> Result<DB, StorageError> {
    DB::open_cf_for_read_only(&Options::default(), path, ALL_CFS, false)
        .map_err(StorageError::rocks("open a backup"))
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

fn decode_pb<M: PbMessage>(bytes: &[u8], what: &'static str) -> Result<M, StorageError> {
    M::parse_from_bytes(bytes).map_err(|e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

fn encode_pb<M: PbMessage>(m: &M, what: &'static str) -> Result<Vec<u8>, StorageError> {
    m.write_to_bytes().map_err(|e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    })
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
    batch.put_cf(meta, KEY_CONF_STATE, encode_pb(&cs, "conf state")?);
    if !voters.is_empty() {
        let hs = HardState {
            term,
            commit: index,
            ..Default::default()
        };
        batch.put_cf(meta, KEY_HARD_STATE, encode_pb(&hs, "hard state")?);
        batch.put_cf(meta, KEY_TRUNCATED, truncation_value(index, term));
        batch.put_cf(meta, KEY_APPLIED, index.to_be_bytes());
        batch.put_cf(meta, KEY_APPLIED_TERM, term.to_be_bytes());
    }
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    db.write_opt(batch, &opts)
        .map_err(StorageError::rocks("bootstrap"))
}

/// Key of the address book (member id → addresses) in [`CF_META`].
pub const KEY_MEMBERS: &[u8] = b"members";

/// Reads the persisted address book (JSON), if any.
pub fn read_members(db: &DB) -> Result<Option<Vec<u8>>, StorageError> {
    db.get_cf(cf(db, CF_META)?, KEY_MEMBERS)
        .map_err(StorageError::rocks("read members"))
}

/// Persists the address book (JSON) outside the apply path: at start and on restore.
pub fn write_members(db: &DB, encoded: &[u8]) -> Result<(), StorageError> {
    db.put_cf(cf(db, CF_META)?, KEY_MEMBERS, encoded)
        .map_err(StorageError::rocks("write members"))
}

/// Records that the entry `index` has `term` in a list of term boundaries (entries in order).
fn note_term(terms: &mut Vec<(u64, u64)>, index: u64, term: u64) {
    if terms.last().is_none_or(|(_, t)| *t != term) {
        terms.push((index, term));
    }
}

/// The `data` of every snapshot keel sends: the real data travels in chunks beside it.
pub const SNAPSHOT_MARKER: &[u8] = b"keel-snapshot-stream-v1";

fn truncation_value(index: u64, term: u64) -> Vec<u8> {
    let mut v = index.to_be_bytes().to_vec();
    v.extend_from_slice(&term.to_be_bytes());
    v
}

/// Puts the conf state into `batch` (used by the apply path, which changes membership).
pub fn put_conf_state(db: &DB, batch: &mut WriteBatch, cs: &ConfState) -> Result<(), StorageError> {
    batch.put_cf(
        cf(db, CF_META)?,
        KEY_CONF_STATE,
        encode_pb(cs, "conf state")?,
    );
    Ok(())
}

/// This data directory's incarnation: a random number made when the database is created, so
/// that peers can tell a restarted node from one whose data was wiped.
pub fn incarnation(db: &DB) -> Result<u64, StorageError> {
    const KEY: &[u8] = b"incarnation";
    let meta = cf(db, CF_META)?;
    if let Some(v) = db
        .get_cf(meta, KEY)
        .map_err(StorageError::rocks("read incarnation"))?
    {
        return decode_u64(&v, "incarnation");
    }
    let n: u64 = rand::random::<u64>() | 1;
    db.put_cf(meta, KEY, n.to_be_bytes())
        .map_err(StorageError::rocks("write incarnation"))?;
    Ok(n)
}

/// Reads the applied index (0 when nothing was ever applied).
pub fn read_applied(db: &DB) -> Result<u64, StorageError> {
    Ok(read_applied_term(db)?.0)
}

/// Reads the applied index and its term (0 when nothing was ever applied).
pub fn read_applied_term(db: &DB) -> Result<(u64, u64), StorageError> {
    let meta = cf(db, CF_META)?;
    applied_through(|key| db.get_cf(meta, key))
}

/// Reads the applied index and its term through `get`, a lookup in [`CF_META`] of the database
/// or of one of its snapshots.
pub fn applied_through(
    get: impl Fn(&[u8]) -> Result<Option<Vec<u8>>, rocksdb::Error>,
) -> Result<(u64, u64), StorageError> {
    let read =
        |key: &[u8], what| match get(key).map_err(StorageError::rocks("read applied index"))? {
            Some(v) => decode_u64(&v, what),
            None => Ok(0),
        };
    Ok((
        read(KEY_APPLIED, "applied index")?,
        read(KEY_APPLIED_TERM, "applied term")?,
    ))
}

/// The Raft log, hard state and conf state of one node, implementing raft-rs's `Storage`.
///
/// Owned by the Ready loop thread; positions are cached in memory and every change is written
/// through to RocksDB before the cache moves.
pub struct RaftLogStore {
    db: Arc<DB>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Index and term of the last entry removed by compaction (0, 0 when none).
    truncated_index: u64,
    truncated_term: u64,
    /// Index and term of the last entry in the log (equal to the truncation point when empty).
    last_index: u64,
    last_term: u64,
    /// Where each term starts in the log, `(first index, term)` in order, covering every entry
    /// after the truncation point: raft-rs asks for terms constantly, and reading an entry from
    /// RocksDB (and decoding its payload) to learn its term was the Raft thread's biggest cost.
    terms: Vec<(u64, u64)>,
    /// The state machine's applied index and its term: the metadata of a snapshot.
    applied: u64,
    applied_term: u64,
}

impl RaftLogStore {
    /// Loads the log state from `db`. On first boot (nothing stored) with initial `voters`, every
    /// initial member bootstraps alike, as if from a snapshot at index 1 of term 1 holding the
    /// initial configuration: the log starts at 2, so a node added later (which boots with no
    /// voters) cannot be fed the log from its start and gets a snapshot, configuration included.
    pub fn open(db: Arc<DB>, voters: &[u64]) -> Result<Self, StorageError> {
        let meta = cf(&db, CF_META)?;
        let first_boot = db
            .get_cf(meta, KEY_CONF_STATE)
            .map_err(StorageError::rocks("read conf state"))?
            .is_none();
        if first_boot {
            bootstrap(&db, voters, 1, 1)?;
        }
        let hard_state: HardState = match db
            .get_cf(meta, KEY_HARD_STATE)
            .map_err(StorageError::rocks("read hard state"))?
        {
            Some(v) => decode_pb(&v, "hard state")?,
            None => HardState::default(),
        };
        let conf_state = match db
            .get_cf(meta, KEY_CONF_STATE)
            .map_err(StorageError::rocks("read conf state"))?
        {
            Some(v) => decode_pb(&v, "conf state")?,
            None => {
                return Err(StorageError::Corrupt {
                    what: "conf state",
                    detail: "missing after bootstrap".into(),
                })
            }
        };
        let (truncated_index, truncated_term) = match db
            .get_cf(meta, KEY_TRUNCATED)
            .map_err(StorageError::rocks("read truncation point"))?
        {
            Some(v) if v.len() == 16 => (
                decode_u64(&v[..8], "truncated index")?,
                decode_u64(&v[8..], "truncated term")?,
            ),
            Some(v) => {
                return Err(StorageError::Corrupt {
                    what: "truncation point",
                    detail: format!("expected 16 bytes, found {}", v.len()),
                })
            }
            None => (0, 0),
        };
        let (applied, applied_term) = read_applied_term(&db)?;
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
        };
        store.load_terms()?;
        if let Some(last) = store.read_last_entry()? {
            store.last_index = last.index;
            store.last_term = last.term;
        }
        // Apply happens before the hard state of the same Ready is persisted; a crash in between
        // leaves applied > commit. Applied entries were committed, so the commit index may move up.
        if applied > store.hard_state.commit && applied <= store.last_index {
            store.hard_state.commit = applied;
        }
        Ok(store)
    }

    /// Rebuilds the term boundaries from the log on disk (once, at open).
    fn load_terms(&mut self) -> Result<(), StorageError> {
        let log = cf(&self.db, CF_LOG)?;
        let mut terms = Vec::new();
        for item in self.db.iterator_cf(log, IteratorMode::Start) {
            let (_, v) = item.map_err(StorageError::rocks("scan the log"))?;
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
                let (_, v) = item.map_err(StorageError::rocks("read last entry"))?;
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
            .flush_wal(true)
            .map_err(StorageError::rocks("sync the WAL before compaction"))?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf(&self.db, CF_LOG)?,
            index_key(self.truncated_index + 1),
            index_key(to + 1),
        );
        batch.put_cf(
            cf(&self.db, CF_META)?,
            KEY_TRUNCATED,
            truncation_value(to, term),
        );
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(StorageError::rocks("compact log"))?;
        self.truncated_index = to;
        self.truncated_term = term;
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
        meta: &raft::eraftpb::SnapshotMetadata,
        applied: u64,
        applied_term: u64,
    ) -> Result<(), StorageError> {
        let log = cf(&self.db, CF_LOG)?;
        let metacf = cf(&self.db, CF_META)?;
        batch.delete_range_cf(log, index_key(0), index_key(u64::MAX));
        batch.put_cf(
            metacf,
            KEY_TRUNCATED,
            truncation_value(meta.index, meta.term),
        );
        let mut hs = self.hard_state.clone();
        hs.term = hs.term.max(meta.term);
        hs.commit = hs.commit.max(meta.index);
        batch.put_cf(metacf, KEY_HARD_STATE, encode_pb(&hs, "hard state")?);
        let cs = meta.get_conf_state().clone();
        batch.put_cf(metacf, KEY_CONF_STATE, encode_pb(&cs, "conf state")?);
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(StorageError::rocks("install snapshot"))?;
        self.truncated_index = meta.index;
        self.truncated_term = meta.term;
        self.last_index = meta.index;
        self.last_term = meta.term;
        self.terms.clear();
        self.hard_state = hs;
        self.conf_state = cs;
        self.applied = applied;
        self.applied_term = applied_term;
        Ok(())
    }

    /// Records a conf state that the caller persists in its own batch (see [`put_conf_state`]).
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
        let meta = cf(&self.db, CF_META)?;
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
            batch.put_cf(meta, KEY_HARD_STATE, encode_pb(hs, "hard state")?);
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db
            .write_opt(batch, &opts)
            .map_err(StorageError::rocks("append log"))?;
        if let Some((index, term)) = new_last {
            self.last_index = index;
            self.last_term = term;
            let from = entries[0].index;
            let keep = self.terms.partition_point(|(first, _)| *first < from);
            self.terms.truncate(keep);
            for e in entries {
                note_term(&mut self.terms, e.index, e.term);
            }
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
        let meta = cf(&self.db, CF_META)?;
        self.db
            .put_cf(meta, KEY_HARD_STATE, encode_pb(&hs, "hard state")?)
            .map_err(StorageError::rocks("write commit index"))?;
        self.hard_state = hs;
        Ok(())
    }

    fn entry_at(&self, index: u64) -> Result<Option<Entry>, StorageError> {
        let log = cf(&self.db, CF_LOG)?;
        match self
            .db
            .get_pinned_cf(log, index_key(index))
            .map_err(StorageError::rocks("read entry"))?
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
        let log = cf(&self.db, CF_LOG).map_err(Self::to_raft_error)?;
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let start = index_key(low);
        let iter = self
            .db
            .iterator_cf(log, IteratorMode::From(&start, Direction::Forward));
        for item in iter {
            let (k, v) = item
                .map_err(StorageError::rocks("read entries"))
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
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: format!("e{index}").into_bytes().into(),
            ..Default::default()
        }
    }

    #[test]
    fn append_truncates_conflicting_tail_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let mut store = RaftLogStore::open(db.clone(), &[1, 2, 3]).unwrap();
        // Bootstrapped as if from a snapshot at index 1, term 1.
        assert_eq!(store.first_index().unwrap(), 2);
        assert_eq!(store.last_index().unwrap(), 1);
        assert_eq!(store.term(1).unwrap(), 1);
        let ents: Vec<_> = (2..=5).map(|i| entry(i, 1)).collect();
        let hs = HardState {
            term: 1,
            vote: 2,
            commit: 3,
            ..Default::default()
        };
        store.append(&ents, Some(&hs), true).unwrap();
        assert_eq!(store.last_index().unwrap(), 5);
        // A new leader in term 2 overwrites from index 4 with a single entry.
        store.append(&[entry(4, 2)], None, true).unwrap();
        assert_eq!(store.last_index().unwrap(), 4);
        assert_eq!(store.term(4).unwrap(), 2);
        assert_eq!(store.term(3).unwrap(), 1);
        assert_eq!(store.term(2).unwrap(), 1);
        store
            .append(&[entry(5, 2), entry(6, 3), entry(7, 3)], None, true)
            .unwrap();
        assert_eq!(
            (2..=7).map(|i| store.term(i).unwrap()).collect::<Vec<_>>(),
            vec![1, 1, 2, 2, 3, 3]
        );
        store.set_applied(6, 3);
        store.compact(5).unwrap();
        assert_eq!(
            store.term(5).unwrap(),
            2,
            "the truncation point keeps its term"
        );
        assert_eq!(store.term(6).unwrap(), 3);
        assert!(store.term(4).is_err());
        store.append(&[entry(7, 4)], None, true).unwrap();
        assert_eq!((store.term(6).unwrap(), store.term(7).unwrap()), (3, 4));
        let got = store
            .entries(6, 8, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(
            got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
            vec![(6, 3), (7, 4)]
        );
        drop(store);
        let store = RaftLogStore::open(db, &[1, 2, 3]).unwrap();
        assert_eq!(store.last_index().unwrap(), 7);
        assert_eq!((store.term(6).unwrap(), store.term(7).unwrap()), (3, 4));
        assert_eq!(store.hard_state(), &hs);
        assert_eq!(store.conf_state().voters, vec![1, 2, 3]);
    }

    #[test]
    fn entries_respects_max_size_but_returns_at_least_one() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(dir.path()).unwrap();
        let mut store = RaftLogStore::open(db, &[1]).unwrap();
        let ents: Vec<_> = (2..=10).map(|i| entry(i, 1)).collect();
        store.append(&ents, None, false).unwrap();
        let one = store
            .entries(3, 11, Some(1), GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(one.len(), 1);
        let all = store
            .entries(3, 11, None, GetEntriesContext::empty(false))
            .unwrap();
        assert_eq!(all.len(), 8);
    }
}
