//! The sending side: a leader streams its state machine to a follower that needs a snapshot.
//!
//! raft-rs asks for a snapshot by emitting `MsgSnapshot`; its data is keel's whole state machine,
//! read from one RocksDB snapshot on a blocking thread and queued to the follower in chunks
//! ([`SnapshotChunk`] frames), followed by the Raft message itself, all on the one ordered queue
//! the transport keeps for that peer. The Ready loop is told how it went (raft-rs's
//! `report_snapshot`).

use std::sync::Arc;

use raft::eraftpb::Message;
use rocksdb::{IteratorMode, DB};
use tracing::{info, warn};

use crate::proto::{frame::Body, SnapshotChunk, SnapshotPair};
use crate::storage::{cf, meta, rocks, StorageError, CF_META, SNAPSHOT_CFS};
use crate::transport::PeerQueue;

/// Largest chunk of a streamed snapshot.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// At most this many frames in a peer's queue before the next chunk is queued.
const CHUNKS_QUEUED: usize = 32;

/// A stream whose peer takes no frame for this long is abandoned (raft-rs is told, and the
/// leader sends a snapshot again later).
const SNAPSHOT_STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads snapshots out of the state machine and streams them to peers.
#[derive(Clone)]
pub struct Sender {
    /// The node's database.
    db: Arc<DB>,
    /// The runtime, for the blocking read started from the Raft thread.
    runtime: tokio::runtime::Handle,
}

impl Sender {
    /// A sender over the node's database. Must be called inside a runtime.
    pub fn new(db: Arc<DB>) -> Self {
        Sender {
            db,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    /// Streams the state machine to `msg.to` in chunks on `queue`, then `raw` (the encoded
    /// `MsgSnapshot`), and calls `done` with whether everything was queued.
    pub fn stream(
        &self,
        msg: &Message,
        raw: bytes::Bytes,
        queue: PeerQueue,
        done: impl FnOnce(bool) + Send + 'static,
    ) {
        let to = msg.to;
        let snap_meta = msg.get_snapshot().get_metadata();
        let (index, term, leader_term) = (snap_meta.index, snap_meta.term, msg.term);
        let this = self.clone();
        info!(peer = to, index, "streaming a snapshot");
        self.runtime.spawn_blocking(move || {
            crate::failpoints::crash_point(crate::failpoints::SNAPSHOT_SEND);
            let started = std::time::Instant::now();
            // A few chunks in the peer's queue at a time: the leader's memory does not grow
            // with the snapshot when the follower takes it slower than RocksDB reads it.
            let sent = this.chunks((index, term), leader_term, SNAPSHOT_CHUNK_BYTES, |chunk| {
                queue.blocking_drain_to(CHUNKS_QUEUED, SNAPSHOT_STALL)
                    && queue.blocking_send(Body::SnapshotChunk(chunk))
            });
            let ok = match sent {
                Ok(true) => queue.blocking_send(Body::Raft(raw)),
                Ok(false) => false,
                Err(e) => {
                    warn!(peer = to, error = %e, "cannot read a snapshot");
                    false
                }
            };
            if ok {
                crate::metrics::observe(
                    &crate::metrics::metrics().snapshot_send,
                    started.elapsed(),
                );
            }
            done(ok);
        });
    }

    /// Streams the state machine, as of one RocksDB snapshot, in chunks of at most `max_bytes`,
    /// tagged with the Raft snapshot `(snap_index, snap_term)` they go with and numbered as a
    /// new stream of this sender at `leader_term`. `emit` returns false to stop (the receiver is
    /// gone). Returns whether every chunk was emitted.
    pub fn chunks(
        &self,
        (snap_index, snap_term): (u64, u64),
        leader_term: u64,
        max_bytes: usize,
        mut emit: impl FnMut(SnapshotChunk) -> bool,
    ) -> Result<bool, StorageError> {
        let snap = self.db.snapshot();
        let meta_cf = cf(&self.db, CF_META)?;
        // A node copying a snapshot into place holds neither the old state nor the new one (a
        // leader that stepped down and installed one while this stream waited to start).
        if meta::pending_install_through(|key| snap.get_cf(meta_cf, key))?.is_some() {
            return Err(StorageError::Installing);
        }
        let (applied, applied_term) = meta::applied_through(|key| snap.get_cf(meta_cf, key))?;
        let members = meta::members_through(|key| snap.get_cf(meta_cf, key))?.unwrap_or_default();
        let history_after = meta::history_after_through(|key| snap.get_cf(meta_cf, key))?;
        let mut chunk = SnapshotChunk {
            snap_index,
            snap_term,
            applied,
            applied_term,
            stream: next_stream(),
            leader_term,
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
        chunk.members = members;
        chunk.history_after = history_after;
        Ok(emit(chunk))
    }
}

/// The number of this process's next stream: upward from a random start (never 0, what senders
/// before the field send), so that a receiver can tell the newer of two streams of one term.
fn next_stream() -> u64 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU64> = std::sync::OnceLock::new();
    NEXT.get_or_init(|| (rand::random::<u32>() as u64 + 1).into())
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by review: a stream that started late, on a node that meanwhile took a snapshot
    /// itself and is copying it into place, would have sent half of it.
    #[test]
    fn a_node_copying_a_snapshot_into_place_does_not_stream_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let db = crate::storage::open_db(dir.path()).expect("open RocksDB");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let sender = Sender {
            db: db.clone(),
            runtime: runtime.handle().clone(),
        };
        let mut chunks = 0;
        let sent = sender.chunks((1, 1), 1, SNAPSHOT_CHUNK_BYTES, |_| {
            chunks += 1;
            true
        });
        assert!(matches!(sent, Ok(true)) && chunks == 1);
        let mut batch = rocksdb::WriteBatch::default();
        let pending = meta::PendingInstall {
            applied: 5,
            applied_term: 1,
            history_after: 5,
            members: None,
        };
        meta::put_pending_install(&db, &mut batch, &pending).expect("batch");
        db.write(batch).expect("write");
        let sent = sender.chunks((1, 1), 1, SNAPSHOT_CHUNK_BYTES, |_| true);
        assert!(matches!(sent, Err(StorageError::Installing)), "{sent:?}");
    }
}
