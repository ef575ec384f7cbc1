//! Leases and locks in the state machine (SPEC §8): granting, ending and attaching leases,
//! acquiring, queueing for and releasing locks, and the `If-Fence` check. All of it is decided by
//! the log: the same entries give the same holders, fences and deletions on every replica.
//!
//! What is **not** here: when a lease expires. Only the leader decides that, on its monotonic
//! clock ([`crate::raft`]'s `leases.rs`), and proposes a revocation like any other command.
//!
//! Records: `leases` maps a lease id (big-endian) to a [`LeaseRecord`] (its TTL, its keys, its
//! locks); `locks` maps a lock name to a [`LockRecord`] (holder with fence, FIFO waiters). A key
//! put with a lease names it in its [`crate::proto::ValueRecord`]; when the lease ends only the
//! keys that still name it are deleted (a key put again without the lease was detached).

use keel_api::ErrorCode;
use prost::Message as _;

use super::apply::ApplyBatch;
use super::eval::reject;
use super::StateMachine;
use crate::proto::{
    ApplyResult, ChangeKind, CoordResult, FenceCheck, LeaseGrantOp, LeaseRecord, LeaseRevokeOp,
    LockAcquireOp, LockHolder, LockRecord, LockReleaseOp, LockWaiter,
};
use crate::storage::{cf, rocks, StorageError, CF_LEASES, CF_LOCKS};

/// Something the apply path changed that others wait on: the leader's lease countdowns, and
/// handlers waiting for a lock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CoordEvent {
    /// A lease was granted with this TTL (the leader starts its countdown).
    LeaseGranted {
        /// The lease.
        id: u64,
        /// Its time to live.
        ttl_ms: u64,
    },
    /// A lease ended (revoked or expired): no countdown any more.
    LeaseEnded {
        /// The lease.
        id: u64,
    },
    /// A lock's holder changed.
    LockChanged,
}

/// The key of a lease record.
pub fn lease_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

fn decode<T: prost::Message + Default>(
    bytes: &[u8],
    what: &'static str,
) -> Result<T, StorageError> {
    T::decode(bytes).map_err(|e| StorageError::Corrupt {
        what,
        detail: e.to_string(),
    })
}

impl StateMachine {
    /// A lease as applied on this node.
    pub fn lease(&self, id: u64) -> Result<Option<LeaseRecord>, StorageError> {
        self.gate.read(|| {
            match self
                .db
                .get_pinned_cf(cf(&self.db, CF_LEASES)?, lease_key(id))
                .map_err(rocks("read lease"))?
            {
                Some(v) => Ok(Some(decode(&v, "lease record")?)),
                None => Ok(None),
            }
        })
    }

    /// Every lease as applied on this node (the leader restarts their countdowns).
    pub fn leases(&self) -> Result<Vec<(u64, LeaseRecord)>, StorageError> {
        self.gate.read(|| self.leases_ungated())
    }

    fn leases_ungated(&self) -> Result<Vec<(u64, LeaseRecord)>, StorageError> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_LEASES)?, rocksdb::IteratorMode::Start)
        {
            let (k, v) = item.map_err(rocks("scan leases"))?;
            let id: [u8; 8] = k.as_ref().try_into().map_err(|_| StorageError::Corrupt {
                what: "lease key",
                detail: format!("{} bytes, not 8", k.len()),
            })?;
            out.push((u64::from_be_bytes(id), decode(&v, "lease record")?));
        }
        Ok(out)
    }

    /// How many leases live, and how many locks have a holder, as applied on this node.
    pub fn coord_counts(&self) -> Result<(usize, usize), StorageError> {
        self.gate.read(|| self.coord_counts_ungated())
    }

    fn coord_counts_ungated(&self) -> Result<(usize, usize), StorageError> {
        let leases = self.leases_ungated()?.len();
        let mut held = 0;
        for item in self
            .db
            .iterator_cf(cf(&self.db, CF_LOCKS)?, rocksdb::IteratorMode::Start)
        {
            let (_, v) = item.map_err(rocks("scan locks"))?;
            let rec: LockRecord = decode(&v, "lock record")?;
            held += usize::from(rec.holder.is_some());
        }
        Ok((leases, held))
    }

    /// A lock as applied on this node (None: free, nobody waiting).
    pub fn lock(&self, name: &str) -> Result<Option<LockRecord>, StorageError> {
        self.gate.read(|| {
            match self
                .db
                .get_pinned_cf(cf(&self.db, CF_LOCKS)?, name.as_bytes())
                .map_err(rocks("read lock"))?
            {
                Some(v) => Ok(Some(decode(&v, "lock record")?)),
                None => Ok(None),
            }
        })
    }
}

fn coord(r: CoordResult, index: u64) -> ApplyResult {
    ApplyResult {
        index,
        coord: Some(r),
        ..Default::default()
    }
}

fn no_lease(index: u64, id: u64) -> ApplyResult {
    reject(
        index,
        ErrorCode::LeaseNotFound,
        format!("lease {id} does not exist (it expired, was revoked, or was never granted)"),
    )
}

impl ApplyBatch<'_> {
    /// A lease as this batch sees it.
    pub(super) fn lease(&self, id: u64) -> Result<Option<LeaseRecord>, StorageError> {
        if let Some(rec) = self.leases.get(&id) {
            return Ok(rec.clone());
        }
        match self
            .db
            .get_pinned_cf(cf(self.db, CF_LEASES)?, lease_key(id))
            .map_err(rocks("read lease for apply"))?
        {
            Some(v) => Ok(Some(decode(&v, "lease record")?)),
            None => Ok(None),
        }
    }

    /// A lock as this batch sees it.
    fn lock(&self, name: &str) -> Result<Option<LockRecord>, StorageError> {
        if let Some(rec) = self.locks.get(name) {
            return Ok(rec.clone());
        }
        match self
            .db
            .get_pinned_cf(cf(self.db, CF_LOCKS)?, name.as_bytes())
            .map_err(rocks("read lock for apply"))?
        {
            Some(v) => Ok(Some(decode(&v, "lock record")?)),
            None => Ok(None),
        }
    }

    /// Stores a lock's record; a free lock keeps its record too, so that a blocking read knows
    /// the index at which it was last released.
    fn save_lock(&mut self, name: &str, rec: LockRecord) {
        self.locks.insert(name.to_string(), Some(rec));
    }

    /// Writes the lease and lock records of this batch (called by commit).
    pub(super) fn write_coord(&mut self) -> Result<(), StorageError> {
        if !self.leases.is_empty() {
            let leases = cf(self.db, CF_LEASES)?;
            for (id, rec) in self.leases.drain() {
                match rec {
                    Some(rec) => self
                        .batch
                        .put_cf(leases, lease_key(id), rec.encode_to_vec()),
                    None => self.batch.delete_cf(leases, lease_key(id)),
                }
            }
        }
        if !self.locks.is_empty() {
            let locks = cf(self.db, CF_LOCKS)?;
            for (name, rec) in self.locks.drain() {
                match rec {
                    Some(rec) => self
                        .batch
                        .put_cf(locks, name.as_bytes(), rec.encode_to_vec()),
                    None => self.batch.delete_cf(locks, name.as_bytes()),
                }
            }
        }
        Ok(())
    }

    /// `If-Fence`: None when lock `f.name` is held now with exactly `f.fence`, else the refusal
    /// (with the current holder).
    pub(super) fn check_fence(
        &self,
        index: u64,
        f: &FenceCheck,
    ) -> Result<Option<ApplyResult>, StorageError> {
        if crate::planted::active(crate::planted::Bug::SkipFence) {
            return Ok(None);
        }
        let holder = self.lock(&f.name)?.and_then(|l| l.holder);
        if holder.as_ref().is_some_and(|h| h.fence == f.fence) {
            return Ok(None);
        }
        let why = match &holder {
            Some(h) => format!(
                "lock {:?} is held with fence {}, not {}",
                f.name, h.fence, f.fence
            ),
            None => format!("lock {:?} is not held (fence {} is over)", f.name, f.fence),
        };
        let mut r = reject(index, ErrorCode::FenceRejected, why);
        r.error_key = f.name.clone();
        r.coord = Some(CoordResult {
            holder,
            ..Default::default()
        });
        Ok(Some(r))
    }

    /// Grants a lease whose id is this entry's index.
    pub(super) fn lease_grant(&mut self, index: u64, op: LeaseGrantOp) -> ApplyResult {
        if op.ttl_ms == 0 {
            return reject(
                index,
                ErrorCode::InvalidCommand,
                "a lease needs a TTL".into(),
            );
        }
        self.leases.insert(
            index,
            Some(LeaseRecord {
                ttl_ms: op.ttl_ms,
                ..Default::default()
            }),
        );
        self.events.push(CoordEvent::LeaseGranted {
            id: index,
            ttl_ms: op.ttl_ms,
        });
        coord(
            CoordResult {
                lease: index,
                ttl_ms: op.ttl_ms,
                remaining_ms: op.ttl_ms,
                ..Default::default()
            },
            index,
        )
    }

    /// Ends a lease: deletes the keys that still belong to it and releases its locks, each to
    /// the next waiter whose lease lives (fence: this entry's index).
    pub(super) fn lease_revoke(
        &mut self,
        index: u64,
        op: LeaseRevokeOp,
    ) -> Result<ApplyResult, StorageError> {
        let Some(rec) = self.lease(op.id)? else {
            return Ok(no_lease(index, op.id));
        };
        for key in &rec.keys {
            if self.current(key)?.is_some_and(|v| v.lease == op.id) {
                let kind = if op.expired {
                    ChangeKind::Expire
                } else {
                    ChangeKind::Delete
                };
                self.write_key(index, key.clone(), None, kind, op.id);
            }
        }
        for name in &rec.locks {
            self.leave_lock(index, name, op.id)?;
        }
        self.leases.insert(op.id, None);
        self.events.push(CoordEvent::LeaseEnded { id: op.id });
        Ok(coord(
            CoordResult {
                lease: op.id,
                ttl_ms: rec.ttl_ms,
                keys: rec.keys,
                locks: rec.locks,
                ..Default::default()
            },
            index,
        ))
    }

    /// Attaches `key` to lease `id` (a put with `?lease=`); the refusal if the lease is gone.
    pub(super) fn attach(
        &mut self,
        index: u64,
        key: &str,
        id: u64,
    ) -> Result<Option<ApplyResult>, StorageError> {
        let Some(mut rec) = self.lease(id)? else {
            return Ok(Some(no_lease(index, id)));
        };
        if !rec.keys.iter().any(|k| k == key) {
            rec.keys.push(key.to_string());
            self.leases.insert(id, Some(rec));
        }
        Ok(None)
    }

    /// Takes `lease` out of lock `name`: as holder, the lock goes to the next live waiter; as a
    /// waiter, it leaves the queue. Returns the lock's holder afterwards.
    fn leave_lock(
        &mut self,
        index: u64,
        name: &str,
        lease: u64,
    ) -> Result<Option<LockHolder>, StorageError> {
        let Some(mut lock) = self.lock(name)? else {
            return Ok(None);
        };
        if lock.holder.as_ref().is_some_and(|h| h.lease == lease) {
            lock.holder = None;
            lock.waiters.retain(|w| w.lease != lease);
            while !lock.waiters.is_empty() {
                let next = lock.waiters.remove(0);
                if next.lease != lease && self.lease(next.lease)?.is_some() {
                    lock.holder = Some(LockHolder {
                        lease: next.lease,
                        value: next.value,
                        fence: index,
                        wait_id: next.wait_id,
                    });
                    break;
                }
            }
            lock.index = index;
            self.events.push(CoordEvent::LockChanged);
        } else {
            lock.waiters.retain(|w| w.lease != lease);
        }
        let holder = lock.holder.clone();
        self.save_lock(name, lock);
        Ok(holder)
    }

    fn forget_lock(&mut self, lease: u64, name: &str) -> Result<(), StorageError> {
        if let Some(mut rec) = self.lease(lease)? {
            rec.locks.retain(|n| n != name);
            self.leases.insert(lease, Some(rec));
        }
        Ok(())
    }

    /// Grants the lock to `op.lease` when free (fence: this index), else queues it (once).
    pub(super) fn lock_acquire(
        &mut self,
        index: u64,
        op: LockAcquireOp,
    ) -> Result<ApplyResult, StorageError> {
        let Some(mut lease) = self.lease(op.lease)? else {
            return Ok(no_lease(index, op.lease));
        };
        let mut lock = self.lock(&op.name)?.unwrap_or_default();
        let granted = match &mut lock.holder {
            None => {
                lock.holder = Some(LockHolder {
                    lease: op.lease,
                    value: op.value,
                    fence: index,
                    wait_id: op.wait_id,
                });
                lock.index = index;
                self.events.push(CoordEvent::LockChanged);
                true
            }
            // Held already (a retry whose first answer was lost): the grant now answers this
            // acquire, so the cancel of the first one's abandoned wait leaves it alone.
            Some(h) if h.lease == op.lease => {
                h.wait_id = op.wait_id;
                true
            }
            Some(_) => {
                // A lease waits once; a second acquire (a retry) takes the place over, with its
                // value, so that the cancel of the first one's abandoned wait leaves it alone.
                match lock.waiters.iter_mut().find(|w| w.lease == op.lease) {
                    Some(w) => {
                        w.wait_id = op.wait_id;
                        w.value = op.value;
                    }
                    None => lock.waiters.push(LockWaiter {
                        lease: op.lease,
                        value: op.value,
                        wait_id: op.wait_id,
                    }),
                }
                false
            }
        };
        if !lease.locks.contains(&op.name) {
            lease.locks.push(op.name.clone());
            self.leases.insert(op.lease, Some(lease));
        }
        let holder = lock.holder.clone();
        self.save_lock(&op.name, lock);
        Ok(coord(
            CoordResult {
                lease: op.lease,
                holder,
                granted,
                ..Default::default()
            },
            index,
        ))
    }

    /// Releases the lock held by `op.lease`; refused when another lease (or nobody) holds it.
    pub(super) fn lock_release(
        &mut self,
        index: u64,
        op: LockReleaseOp,
    ) -> Result<ApplyResult, StorageError> {
        let holder = self.lock(&op.name)?.and_then(|l| l.holder);
        if holder.as_ref().is_none_or(|h| h.lease != op.lease) {
            let why = match &holder {
                Some(h) => format!(
                    "lock {:?} is held by lease {}, not {}",
                    op.name, h.lease, op.lease
                ),
                None => format!("lock {:?} is not held", op.name),
            };
            let mut r = reject(index, ErrorCode::NotHolder, why);
            r.error_key = op.name.clone();
            r.coord = Some(CoordResult {
                holder,
                ..Default::default()
            });
            return Ok(r);
        }
        let next = self.leave_lock(index, &op.name, op.lease)?;
        self.forget_lock(op.lease, &op.name)?;
        Ok(coord(
            CoordResult {
                lease: op.lease,
                holder: next,
                ..Default::default()
            },
            index,
        ))
    }

    /// Ends a wait (`op.wait_id`; 0: the lease's, whichever acquire queued it): out of the queue.
    /// A grant made meanwhile is kept, said so, and claimed for this wait if `op.claim`, unless
    /// the wait was abandoned (nobody takes the answer) and the grant answers that very wait:
    /// then it is given up, to the next waiter. A place or a grant another wait of the lease
    /// holds is left alone.
    pub(super) fn lock_cancel(
        &mut self,
        index: u64,
        op: LockReleaseOp,
    ) -> Result<ApplyResult, StorageError> {
        let lock = self.lock(&op.name)?;
        let ends = |wait_id: u64| op.wait_id == 0 || wait_id == 0 || wait_id == op.wait_id;
        let holder = lock.as_ref().and_then(|l| l.holder.clone());
        let held = holder.as_ref().filter(|h| h.lease == op.lease);
        let leave = match held {
            Some(h) => op.abandoned && op.wait_id != 0 && h.wait_id == op.wait_id,
            None => lock.as_ref().is_some_and(|l| {
                l.waiters
                    .iter()
                    .any(|w| w.lease == op.lease && ends(w.wait_id))
            }),
        };
        if !leave {
            let granted = held.is_some();
            // A cancel that answers with the grant claims it, so that an abandoned cancel of
            // another wait of the lease can no longer give it up.
            let claims = held.is_some_and(|h| h.wait_id != op.wait_id)
                && op.claim
                && !op.abandoned
                && op.wait_id != 0;
            let mut holder = holder;
            if let (true, Some(mut lock)) = (claims, lock) {
                if let Some(h) = lock.holder.as_mut() {
                    h.wait_id = op.wait_id;
                }
                holder = lock.holder.clone();
                self.save_lock(&op.name, lock);
            }
            return Ok(coord(
                CoordResult {
                    lease: op.lease,
                    granted,
                    holder,
                    ..Default::default()
                },
                index,
            ));
        }
        let holder = self.leave_lock(index, &op.name, op.lease)?;
        self.forget_lock(op.lease, &op.name)?;
        Ok(coord(
            CoordResult {
                lease: op.lease,
                holder,
                granted: false,
                ..Default::default()
            },
            index,
        ))
    }
}
