//! The apply step of the Ready loop: committed entries become one state-machine batch, then
//! everything that waits on them is told (writes, sync writes, lease countdowns, lock waiters);
//! and the loop's share of coordination: following leadership for the lease countdowns,
//! answering keepalives whose read index is applied, proposing the revocation of expired leases.

use std::time::Instant;

use keel_api::{ErrorCode, WriteMode};
use raft::eraftpb::{Entry, EntryType};
use tokio::sync::oneshot;
use tracing::{info, warn};

use super::handle::{Outbox, Responder};
use super::membership::{self, PeerChange};
use super::ready::Driver;
use crate::failpoints;
use crate::proto::{command::Op, ApplyResult, Command, LeaseRevokeOp};
use crate::sm::CoordEvent;
use crate::storage::StorageError;

impl<O: Outbox> Driver<O> {
    /// Applies committed entries in one batch, then answers the writes waiting for them.
    pub(super) fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        failpoints::crash_point(failpoints::BEFORE_APPLY);
        let applying = Instant::now();
        // Entries a snapshot install already covered are handed out again: not applied twice.
        let count = entries.iter().filter(|e| e.index > self.applied).count() as u64;
        let sm = self.sm.clone();
        let mut batch = sm.batch();
        let mut outcomes = Vec::new();
        let mut dropped = Vec::new();
        let mut peer_changes: Vec<PeerChange> = Vec::new();
        for entry in &entries {
            // After a snapshot the state machine may already cover entries Raft hands out again
            // (its data was read at an index above the snapshot's): their effects are in it.
            let covered = entry.index <= self.applied;
            match entry.get_entry_type() {
                EntryType::EntryNormal if covered => {}
                EntryType::EntryNormal if entry.data.is_empty() => {
                    // A new leader's empty entry, or a proposal raft-rs emptied (a refused conf
                    // change): whoever waits at this index learns it was not applied.
                    batch.skip(entry.index, entry.term);
                    dropped.push(entry.index);
                }
                EntryType::EntryNormal => {
                    let result = batch.apply(entry.index, entry.term, &entry.data)?;
                    outcomes.push((entry.index, entry.term, result));
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let result = match membership::apply(
                        &mut self.raw,
                        entry,
                        &mut batch,
                        &mut self.members,
                        &mut peer_changes,
                    )? {
                        Ok(()) => {
                            failpoints::crash_point(failpoints::CONF_CHANGE_APPLIED);
                            ApplyResult {
                                index: entry.index,
                                ..Default::default()
                            }
                        }
                        Err(e) => {
                            warn!(index = entry.index, error = %e, "conf change rejected");
                            ApplyResult {
                                index: entry.index,
                                error_code: ErrorCode::InvalidCommand.as_str().into(),
                                error_message: e,
                                ..Default::default()
                            }
                        }
                    };
                    if covered {
                        // Re-applied below the applied index (the installed data was ahead of its
                        // snapshot): nothing records that raft-rs applied it, so on a restart the
                        // log would not replay it. Its configuration must be durable now.
                        batch.sync_on_commit();
                    } else {
                        batch.skip(entry.index, entry.term);
                        outcomes.push((entry.index, entry.term, result));
                    }
                }
            }
        }
        let events = batch.take_events();
        let changes = batch.take_changes();
        let m = crate::metrics::metrics();
        if let Some((applied, applied_term)) = batch.commit()? {
            self.applied = applied;
            self.raw.mut_store().set_applied(applied, applied_term);
            self.feed.publish(changes, applied);
            self.shared.set_applied(applied);
            m.proposals_applied.inc_by(count);
            crate::metrics::observe(&m.apply, applying.elapsed());
            let leader = self.raw.raft.leader_id;
            if leader != 0 && leader != self.cfg.id {
                self.outbox.send_applied(leader, applied);
            }
        }
        for (id, addr) in peer_changes {
            if id == self.cfg.id {
                if addr.is_none() {
                    warn!("this node was removed from the cluster");
                    self.shared.set_removed();
                }
            } else {
                self.outbox.set_peer(id, addr.as_ref());
            }
        }
        let now = Instant::now();
        self.leases.on_applied(&events, now);
        if events.contains(&CoordEvent::LockChanged) {
            self.shared.locks_changed(self.applied);
        }
        for index in dropped {
            self.writes.drop_at(index);
        }
        for (index, term, result) in outcomes {
            self.writes
                .complete(index, term, result, now, self.cfg.sync_timeout);
        }
        self.release_sync_writes(now);
        Ok(())
    }

    /// Once per turn of the loop: lease countdowns follow leadership, and keepalives whose read
    /// index is applied are answered.
    pub(super) fn coord_cycle(&mut self) -> Result<(), StorageError> {
        self.leases
            .follow_leadership(&self.raw, &self.sm, Instant::now())?;
        self.leases.poll(&self.raw, &self.sm, self.applied)
    }

    /// On a tick: proposes the revocation of every lease whose time ran out on this leader's
    /// clock (once; again only if that proposal failed).
    pub(super) fn expire_leases(&mut self, now: Instant) {
        for id in self.leases.expired(now) {
            info!(
                lease = id,
                "lease expired on the leader's clock: revoking it"
            );
            let command = Command {
                op: Some(Op::LeaseRevoke(LeaseRevokeOp { id, expired: true })),
                ..Default::default()
            };
            let (tx, rx) = oneshot::channel();
            self.writes.propose(
                &mut self.raw,
                command,
                WriteMode::Semi,
                Responder::channel(tx),
            );
            self.leases.revoking(id, rx);
        }
    }
}
