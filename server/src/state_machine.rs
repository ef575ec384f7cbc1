//! The key-value state machine: applies committed [`Command`]s to the `data` column family and
//! serves local reads.
//!
//! # Invariants
//! - Apply is deterministic: the outcome of a command depends only on the data and the entry's
//!   index, so every replica reaches the same state and the same [`ApplyResult`].
//! - A batch of entries is applied in one RocksDB `WriteBatch` that also moves the applied index
//!   (see [`crate::storage`]): data and applied index never disagree, so no entry is applied twice.
//! - Within a batch, later commands see earlier ones through an in-memory overlay (RocksDB write
//!   batches cannot be read back).
//! - A key's version is the index of the entry that last wrote it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use rocksdb::{Direction, IteratorMode, ReadOptions, WriteBatch, WriteOptions, DB};

use crate::proto::{
    command::Op, AddOp, ApplyResult, Command, DeleteOp, Precondition, PutOp, ValueRecord,
};
use crate::storage::{cf, decode_u64, StorageError, CF_DATA, CF_META, KEY_APPLIED};

/// Error codes of deterministic rejections, as they appear in [`ApplyResult::error_code`].
pub mod codes {
    /// `If-Match` / `If-None-Match` did not hold.
    pub const PRECONDITION_FAILED: &str = "precondition_failed";
    /// An `add` would leave its bounds (or the range of i64).
    pub const BOUND_VIOLATED: &str = "bound_violated";
    /// An `add` target holds something other than a decimal integer.
    pub const NOT_INTEGER: &str = "not_integer";
    /// The entry did not decode as a command.
    pub const INVALID_COMMAND: &str = "invalid_command";
}

/// Read access to the state machine, shared by the HTTP handlers (RocksDB is thread-safe).
#[derive(Clone)]
pub struct StateMachine {
    db: Arc<DB>,
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
        StateMachine { db }
    }

    /// The applied index as stored.
    pub fn applied_index(&self) -> Result<u64, StorageError> {
        crate::storage::read_applied(&self.db)
    }

    /// Reads one key from a consistent snapshot.
    pub fn get(&self, key: &str) -> Result<ReadResult<Option<ValueRecord>>, StorageError> {
        let snap = self.db.snapshot();
        let index = match snap
            .get_cf(cf(&self.db, CF_META)?, KEY_APPLIED)
            .map_err(rocks("read applied index"))?
        {
            Some(v) => decode_u64(&v, "applied index")?,
            None => 0,
        };
        let value = match snap
            .get_cf(cf(&self.db, CF_DATA)?, key.as_bytes())
            .map_err(rocks("read key"))?
        {
            Some(v) => Some(decode_record(&v)?),
            None => None,
        };
        Ok(ReadResult { value, index })
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
        let index = match snap
            .get_cf(cf(&self.db, CF_META)?, KEY_APPLIED)
            .map_err(rocks("read applied index"))?
        {
            Some(v) => decode_u64(&v, "applied index")?,
            None => 0,
        };
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
            applied: None,
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

/// Applies a run of committed entries as one atomic RocksDB write.
pub struct ApplyBatch<'a> {
    db: &'a DB,
    batch: WriteBatch,
    /// Writes of this batch not yet in RocksDB: key → record (None = deleted).
    overlay: HashMap<String, Option<ValueRecord>>,
    applied: Option<u64>,
}

impl ApplyBatch<'_> {
    /// The underlying write batch, for the caller's own records (conf state).
    pub fn write_batch(&mut self) -> &mut WriteBatch {
        &mut self.batch
    }

    /// Marks `index` applied without a command (the leader's empty entry, conf changes).
    pub fn skip(&mut self, index: u64) {
        self.applied = Some(index);
    }

    /// Applies the command encoded in `data` at `index`.
    pub fn apply(&mut self, index: u64, data: &[u8]) -> Result<ApplyResult, StorageError> {
        self.applied = Some(index);
        let op = match Command::decode(data) {
            Ok(Command { op: Some(op) }) => op,
            Ok(Command { op: None }) => {
                return Ok(reject(
                    index,
                    codes::INVALID_COMMAND,
                    "empty command".into(),
                ))
            }
            Err(e) => return Ok(reject(index, codes::INVALID_COMMAND, e.to_string())),
        };
        match op {
            Op::Put(p) => self.put(index, p),
            Op::Delete(d) => self.delete(index, d),
            Op::Add(a) => self.add(index, a),
        }
    }

    /// Writes the batch and the applied index. Returns the applied index (None if nothing ran).
    pub fn commit(mut self) -> Result<Option<u64>, StorageError> {
        let Some(applied) = self.applied else {
            return Ok(None);
        };
        let data = cf(self.db, CF_DATA)?;
        for (key, rec) in self.overlay.drain() {
            match rec {
                Some(rec) => self.batch.put_cf(data, key.as_bytes(), rec.encode_to_vec()),
                None => self.batch.delete_cf(data, key.as_bytes()),
            }
        }
        self.batch
            .put_cf(cf(self.db, CF_META)?, KEY_APPLIED, applied.to_be_bytes());
        let mut opts = WriteOptions::default();
        opts.set_sync(false);
        self.db
            .write_opt(self.batch, &opts)
            .map_err(rocks("apply batch"))?;
        Ok(Some(applied))
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
        let cur = self.current(&p.key)?;
        if let Some(msg) = check_precondition(p.precondition.as_ref(), cur.as_ref()) {
            return Ok(reject(index, codes::PRECONDITION_FAILED, msg));
        }
        let create_index = cur.as_ref().map_or(index, |c| c.create_index);
        self.overlay.insert(
            p.key,
            Some(ValueRecord {
                value: p.value,
                version: index,
                create_index,
            }),
        );
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
        let current = match &cur {
            None => 0,
            Some(rec) => match parse_int(&rec.value) {
                Some(v) => v,
                None => {
                    return Ok(reject(
                        index,
                        codes::NOT_INTEGER,
                        format!("the value of {:?} is not a decimal integer", a.key),
                    ))
                }
            },
        };
        let new = current.checked_add(a.delta);
        let within = new.filter(|n| a.min.is_none_or(|m| *n >= m) && a.max.is_none_or(|m| *n <= m));
        let Some(new) = within else {
            let mut r = reject(
                index,
                codes::BOUND_VIOLATED,
                format!(
                    "{current} + {} would leave [{}, {}]",
                    a.delta,
                    a.min.map_or("-inf".into(), |m| m.to_string()),
                    a.max.map_or("+inf".into(), |m| m.to_string())
                ),
            );
            r.value = Some(current);
            r.version = cur.map_or(0, |c| c.version);
            return Ok(r);
        };
        let create_index = cur.as_ref().map_or(index, |c| c.create_index);
        self.overlay.insert(
            a.key,
            Some(ValueRecord {
                value: Bytes::from(new.to_string()),
                version: index,
                create_index,
            }),
        );
        Ok(ApplyResult {
            index,
            version: index,
            value: Some(new),
            ..Default::default()
        })
    }
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

    fn cmd(op: Op) -> Vec<u8> {
        Command { op: Some(op) }.encode_to_vec()
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
        assert!(b.apply(1, &add("n", 5, None)).unwrap().is_ok());
        let r = b.apply(2, &add("n", -3, Some(0))).unwrap();
        assert_eq!(r.value, Some(2));
        let r = b.apply(3, &add("n", -3, Some(0))).unwrap();
        assert_eq!(r.error_code, codes::BOUND_VIOLATED);
        assert_eq!(r.value, Some(2));
        // Nothing is visible before commit.
        assert!(sm.get("n").unwrap().value.is_none());
        assert_eq!(b.commit().unwrap(), Some(3));
        let got = sm.get("n").unwrap();
        assert_eq!(got.index, 3);
        let rec = got.value.unwrap();
        assert_eq!(&rec.value[..], b"2");
        assert_eq!(rec.version, 2);
        assert_eq!(rec.create_index, 1);
    }

    #[test]
    fn preconditions_and_non_integer_add() {
        let (_d, sm) = open();
        let mut b = sm.batch();
        b.apply(1, &put("k", "hello")).unwrap();
        let r = b.apply(2, &add("k", 1, None)).unwrap();
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
            b.apply(3, &cas(7)).unwrap().error_code,
            codes::PRECONDITION_FAILED
        );
        assert!(b.apply(4, &cas(1)).unwrap().is_ok());
        let create = cmd(Op::Put(PutOp {
            key: "k".into(),
            value: Bytes::from_static(b"y"),
            precondition: Some(Precondition {
                if_absent: true,
                ..Default::default()
            }),
        }));
        assert_eq!(
            b.apply(5, &create).unwrap().error_code,
            codes::PRECONDITION_FAILED
        );
        let del = cmd(Op::Delete(DeleteOp {
            key: "k".into(),
            precondition: None,
        }));
        assert!(b.apply(6, &del).unwrap().deleted);
        assert!(!b.apply(7, &del).unwrap().deleted);
        assert!(b.apply(8, &create).unwrap().is_ok());
        b.commit().unwrap();
        let rec = sm.get("k").unwrap().value.unwrap();
        assert_eq!(&rec.value[..], b"y");
        assert_eq!(rec.version, 8);
    }

    #[test]
    fn list_by_prefix_in_order_with_paging() {
        let (_d, sm) = open();
        let mut b = sm.batch();
        for (i, k) in ["b/2", "a/1", "b/1", "b/3", "c"].iter().enumerate() {
            b.apply(i as u64 + 1, &put(k, "v")).unwrap();
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
