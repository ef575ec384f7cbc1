//! # sm: the key-value state machine
//!
//! This stage owns the meaning of a command: it applies committed [`Command`]s to the `data`
//! column family (and the idempotency memory beside it) and serves local reads. It is handed
//! entries by the Ready loop ([`crate::raft`]) and reads by the HTTP handlers ([`crate::http`]);
//! it never talks to the network and never decides what is committed.
//!
//! - [`apply`]: the apply path, a run of entries in one RocksDB batch with the applied index;
//! - [`eval`]: the pure evaluation of put preconditions, `add`, compares and transactions,
//!   tested without RocksDB;
//! - [`idempotency`]: the memory of idempotent requests and its expiry;
//! - [`coord`]: leases and locks, and the `If-Fence` check (SPEC §8);
//! - [`changes`]: the change log watches resume from (SPEC §9), written in the apply batch;
//! - [`gate`]: reads refused while a snapshot is copied into place;
//! - [`cache`]: records of keys read before, kept coherent with the apply and the install;
//! - this file: reads (one key, a prefix page, a read-only transaction on one snapshot).
//!
//! # Invariants
//! - Apply is deterministic: the outcome of a command depends only on the data and the entry
//!   (its index, its term and the leader's `leader_ms` stamp), so every replica reaches the same state
//!   and the same [`ApplyResult`].
//! - A batch of entries is applied in one RocksDB `WriteBatch` that also moves the applied index
//!   (see [`crate::storage`]): data and applied index never disagree, so no entry is applied twice.
//! - A transaction works on a scratch overlay merged only if every step succeeds, so an aborted
//!   transaction changes nothing.
//! - A key's version is the index of the entry that last wrote it.
//!
//! [`Command`]: crate::proto::Command

use std::sync::Arc;

use prost::Message as _;
use rocksdb::{Direction, IteratorMode, ReadOptions, DB};

use crate::proto::{ApplyResult, TxnOp, ValueRecord};
use crate::storage::{cf, meta, rocks, StorageError, CF_DATA, CF_META};

pub mod apply;
pub mod cache;
pub mod changes;
pub mod coord;
pub mod eval;
pub mod gate;
pub mod idempotency;

pub use apply::ApplyBatch;

/// The apply semantics this binary writes and applies. Raise it with any change to how an
/// existing command applies (a proto field older binaries would ignore, a new rule): a node that
/// knows only older semantics then stops at the first entry written for newer ones instead of
/// applying it differently from the others (and diverging). The rule that comes with raising
/// it: an entry is applied by the rules of the version it carries, so that a newer node applies
/// what an older leader wrote exactly as the older nodes do. 0 (entries of binaries before the
/// field) and 1 apply alike: the lock waits named by wait ids. 2: a transaction whose gets
/// return more than [`keel_api::limits::MAX_TXN_RESULT_BYTES`] of values is rejected
/// (`txn_too_large`): its answer (sent back to a forwarding follower, kept for its idempotency
/// key, and so sent in snapshots) must fit one peer frame.
pub const APPLY_VERSION: u32 = 2;

/// Only the apply version of an entry ([`crate::proto::Command`]'s tag 14; every other field
/// skipped): read when the whole command does not decode.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct VersionOnly {
    /// [`crate::proto::Command::apply_version`].
    #[prost(uint32, tag = "14")]
    pub apply_version: u32,
}

/// The newest apply semantics this node applies: [`APPLY_VERSION`], or lower in the planted-bug
/// test build when `KEEL_TEST_APPLY_VERSION` says so (to play an older binary).
pub fn max_apply_version() -> u32 {
    #[cfg(feature = "planted-bugs")]
    {
        // Read once: this is asked for every entry applied and every proposal.
        static TEST_VERSION: std::sync::OnceLock<Option<u32>> = std::sync::OnceLock::new();
        if let Some(v) = *TEST_VERSION.get_or_init(|| {
            std::env::var("KEEL_TEST_APPLY_VERSION")
                .ok()
                .and_then(|v| v.parse().ok())
        }) {
            return v;
        }
    }
    APPLY_VERSION
}
pub use changes::{Change, History, HistoryPage, DEFAULT_HISTORY_ENTRIES};
pub use coord::CoordEvent;
pub use eval::parse_int;
pub use gate::InstallGate;
pub use idempotency::{IDEMPOTENCY_CROSS_TERM_ENTRIES, IDEMPOTENCY_TTL_MS};

/// Read access to the state machine, shared by the HTTP handlers (RocksDB is thread-safe), and
/// the start of every apply batch.
#[derive(Clone)]
pub struct StateMachine {
    /// The node's database (shared with the log store and the snapshot path).
    pub(super) db: Arc<DB>,
    /// How much of the change log is kept, and where it starts.
    pub(super) history: Arc<History>,
    /// Closed while a snapshot is copied into place; every read goes through it.
    pub(super) gate: Arc<InstallGate>,
    /// Records of keys read before (point reads only).
    pub(super) cache: Arc<cache::ValueCache>,
}

/// A snapshot install in progress: the install gate closed and the value cache emptied
/// ([`StateMachine::close_for_install`]).
#[must_use = "reads stay refused until open() is called"]
pub struct Installing<'a> {
    closed: gate::Closed<'a>,
    cache: &'a cache::ValueCache,
}

impl Installing<'_> {
    /// The install is done: the cache is emptied again (of anything a read filled meanwhile;
    /// such a read is refused by the gate, but its fill would outlive it), then reads may go on.
    pub fn open(self) {
        // Before the gate opens: a read let in after it must find nothing filled during the
        // install.
        if !crate::planted::active(crate::planted::Bug::CacheKeptOnInstall) {
            self.cache.clear();
        }
        self.closed.open();
    }
}

/// The value cache's budget unless the node is told otherwise (`--value-cache-mib`).
pub const DEFAULT_VALUE_CACHE_BYTES: usize = 64 << 20;

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
    /// Wraps the node's database, with a value cache of the default budget.
    pub fn new(db: Arc<DB>) -> Self {
        Self::with_value_cache(db, DEFAULT_VALUE_CACHE_BYTES)
    }

    /// Wraps the node's database, with a value cache of `bytes` (0: none). Fixed for the state
    /// machine's life: every clone shares the one cache the apply tells of its writes.
    pub fn with_value_cache(db: Arc<DB>, bytes: usize) -> Self {
        StateMachine {
            db,
            history: Arc::new(History::new(DEFAULT_HISTORY_ENTRIES, 0)),
            gate: Arc::new(InstallGate::default()),
            cache: Arc::new(cache::ValueCache::new(bytes)),
        }
    }

    /// The install gate (tests; an install closes it through
    /// [`StateMachine::close_for_install`]).
    #[cfg(test)]
    pub(super) fn gate(&self) -> &InstallGate {
        &self.gate
    }

    /// Closes the install gate for a snapshot install and empties the value cache (the data it
    /// mirrors is about to be replaced); [`Installing::open`] ends it.
    pub fn close_for_install(&self) -> Installing<'_> {
        let closed = self.gate.close();
        if !crate::planted::active(crate::planted::Bug::CacheKeptOnInstall) {
            self.cache.clear();
        }
        Installing {
            closed,
            cache: &self.cache,
        }
    }

    /// The applied index as stored.
    pub fn applied_index(&self) -> Result<u64, StorageError> {
        Ok(meta::read_applied(&self.db)?.0)
    }

    fn snapshot_applied(&self, snap: &rocksdb::Snapshot<'_>) -> Result<u64, StorageError> {
        let meta_cf = cf(&self.db, CF_META)?;
        Ok(meta::applied_through(|key| snap.get_cf(meta_cf, key))?.0)
    }

    /// Reads one key's current record, without a snapshot: the caller reads the applied index
    /// first, so that the answer reflects at least that index (one RocksDB lookup per read).
    pub fn get_value(&self, key: &str) -> Result<Option<ValueRecord>, StorageError> {
        self.gate.read(|| {
            let ticket = match self.cache.get(key) {
                Ok(rec) => return Ok(Some(rec)),
                Err(ticket) => ticket,
            };
            let rec = match self
                .db
                .get_pinned_cf(cf(&self.db, CF_DATA)?, key.as_bytes())
                .map_err(rocks("read key"))?
            {
                Some(v) => Some(decode_record(&v)?),
                None => None,
            };
            if let (Some(ticket), Some(rec)) = (ticket, &rec) {
                self.cache.fill(key, ticket, rec);
            }
            Ok(rec)
        })
    }

    /// Reads one key's record on a snapshot, with the snapshot's exact applied index (dearer
    /// than [`StateMachine::get_value`]: for answers whose index must be exact, such as "absent").
    pub fn get_at_snapshot(
        &self,
        key: &str,
    ) -> Result<ReadResult<Option<ValueRecord>>, StorageError> {
        self.gate.read(|| {
            let snap = self.db.snapshot();
            let index = self.snapshot_applied(&snap)?;
            let data = cf(&self.db, CF_DATA)?;
            let value = read_record(&snap.get_cf(data, key.as_bytes()))?;
            Ok(ReadResult { value, index })
        })
    }

    /// Evaluates a transaction of compares and gets only, on one consistent snapshot.
    pub fn read_txn(&self, t: &TxnOp) -> Result<ReadResult<ApplyResult>, StorageError> {
        self.gate.read(|| self.read_txn_ungated(t))
    }

    fn read_txn_ungated(&self, t: &TxnOp) -> Result<ReadResult<ApplyResult>, StorageError> {
        let snap = self.db.snapshot();
        let index = self.snapshot_applied(&snap)?;
        let data = cf(&self.db, CF_DATA)?;
        let read = |key: &str| read_record(&snap.get_cf(data, key.as_bytes()));
        let max = Some(keel_api::limits::MAX_TXN_RESULT_BYTES);
        let (result, _) = eval::run_txn(read, index, t, max)?;
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
        self.gate.read(|| self.list_ungated(prefix, after, limit))
    }

    fn list_ungated(
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
        // A page stops at `limit` keys, or early once its values pass the page's bytes (a
        // thousand values of 32 MiB would be a page of 32 GB).
        let mut bytes = 0usize;
        for item in iter {
            let (k, v) = item.map_err(rocks("list keys"))?;
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            if items.len() == limit || bytes >= keel_api::limits::MAX_LIST_PAGE_BYTES {
                more = true;
                break;
            }
            bytes = bytes.saturating_add(v.len());
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
        ApplyBatch::new(&self.db, &self.history, &self.cache)
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

/// Decodes a stored [`ValueRecord`].
pub(crate) fn decode_record(bytes: &[u8]) -> Result<ValueRecord, StorageError> {
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

#[cfg(test)]
mod cache_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod version_tests;
