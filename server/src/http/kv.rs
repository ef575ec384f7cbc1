//! The key-value handlers: read one key, list a prefix, put, delete and add.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::HeaderMap;
use keel_api::kv::{
    AddRequest, AddResponse, DeleteResponse, JsonValue, ListItem, ListResponse, PutResponse,
};
use keel_api::limits::{DEFAULT_LIST_LIMIT, MAX_SMALL_BODY_BYTES};
use keel_api::{ErrorCode, ReadConsistency, WriteMode};

use super::error::{rejected, ApiError};
use super::reply::{Answer, Reply};
use super::request::{self, Query};
use super::Api;
use crate::proto::{command::Op, AddOp, Command, DeleteOp, PutOp};
use crate::raft::WriteOk;

impl Api {
    /// Waits until this node may serve a read at the requested consistency: for a linearizable
    /// read, until it has applied the read index Raft confirms; with `min_index`, until it has
    /// applied that.
    pub(super) async fn read_barrier(&self, q: &Query) -> Result<(), ApiError> {
        let mut need = q.min_index.unwrap_or(0);
        if q.consistency.unwrap_or(ReadConsistency::Linearizable) == ReadConsistency::Linearizable
            && !crate::planted::active(crate::planted::Bug::StaleRead)
        {
            need = need.max(self.node.read_index().await?);
        }
        if need > self.node.shared().applied() {
            self.node.wait_applied(need, self.cfg.read_timeout).await?;
        }
        Ok(())
    }

    /// `GET /v1/kv/{key}`: the raw value with its version as `ETag`, or 304 when the client's
    /// `If-None-Match` names the current version.
    pub(super) async fn get(&self, headers: &HeaderMap, key: String, q: Query) -> Answer {
        let conditional = request::if_none_match(headers)?;
        self.read_barrier(&q).await?;
        // The applied index first: the value read after it reflects at least that index. The
        // value may be newer still (applied in between): the answer's index is then its version,
        // so that a session that goes on from this index never reads an older version (the
        // fault suite's snapshot check found a GET with a version above its index).
        let applied = self.node.shared().applied();
        let (rec, index) = match self.sm.get_value(&key)? {
            Some(rec) => {
                let index = applied.max(rec.version);
                (Some(rec), index)
            }
            // Absent: no version to go by, and a delete may have been applied after `applied`
            // was read; read again on a snapshot, whose index is exact (a rare path).
            None => {
                let read = self.sm.get_at_snapshot(&key)?;
                (read.value, read.index)
            }
        };
        match rec {
            Some(rec) if conditional.as_ref().is_some_and(|c| c.matches(rec.version)) => {
                Ok(Reply::not_modified(rec.version, index))
            }
            Some(rec) => {
                let mut r = Reply::bytes(rec.value, "application/octet-stream", Some(index));
                r.etag = Some(rec.version);
                Ok(r)
            }
            None => Err(
                ApiError::new(ErrorCode::NotFound, format!("no such key: {key:?}")).at_index(index),
            ),
        }
    }

    /// `GET /v1/kv?prefix=&after=&limit=`: one page of keys in order.
    pub(super) async fn list(&self, q: Query) -> Answer {
        self.read_barrier(&q).await?;
        let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        let sm = self.sm.clone();
        // A page may cover many keys, large values and deleted keys RocksDB still holds: it is
        // read and encoded off the async workers, which also carry the peer links' heartbeats
        // (a node may run one worker: `--worker-threads`).
        off_the_workers("list", move || {
            let prefix = q.prefix.as_deref().unwrap_or_default();
            let read = sm.list(prefix, q.after.as_deref(), limit)?;
            let items = read
                .value
                .items
                .iter()
                .map(|(k, rec)| ListItem {
                    key: k.clone(),
                    value: JsonValue::from_bytes(&rec.value),
                    version: rec.version,
                })
                .collect();
            Reply::json(
                &ListResponse {
                    items,
                    index: read.index,
                    more: read.value.more,
                },
                Some(read.index),
            )
        })
        .await
    }

    /// Sends a write wherever the leader is and waits for its acknowledgement. The write
    /// carries the request's `Idempotency-Key` and `If-Fence`.
    pub(super) async fn write(
        &self,
        op: Op,
        q: &Query,
        headers: &HeaderMap,
    ) -> Result<WriteOk, ApiError> {
        let mode = q.mode.unwrap_or(self.cfg.default_mode);
        let command = Command {
            op: Some(op),
            idempotency_key: request::idempotency_key(headers)?,
            leader_ms: 0,
            fence: request::if_fence(headers)?,
            // Both stamped by the leader when it proposes.
            apply_version: 0,
        };
        Ok(self
            .router
            .write(command, mode, self.cfg.request_timeout)
            .await?)
    }

    /// Sends a command without idempotency key or fence (leases and locks).
    pub(super) async fn write_cmd(&self, op: Op, mode: WriteMode) -> Result<WriteOk, ApiError> {
        let command = Command {
            op: Some(op),
            ..Default::default()
        };
        Ok(self
            .router
            .write(command, mode, self.cfg.request_timeout)
            .await?)
    }

    /// `PUT /v1/kv/{key}`.
    pub(super) async fn put(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        key: String,
        q: Query,
    ) -> Answer {
        let precondition = request::precondition(headers)?;
        let value: Bytes = request::read_body(headers, body, self.cfg.max_value_bytes).await?;
        let op = Op::Put(PutOp {
            key,
            value,
            precondition,
            lease: q.lease.unwrap_or(0),
        });
        let ok = self.write(op, &q, headers).await?;
        let r = rejected(&ok.result)?;
        Reply::write(
            &PutResponse {
                index: r.index,
                version: r.version,
                acked: ok.acked,
            },
            &ok,
        )
    }

    /// `DELETE /v1/kv/{key}`.
    pub(super) async fn delete(&self, headers: &HeaderMap, key: String, q: Query) -> Answer {
        let precondition = request::precondition(headers)?;
        let ok = self
            .write(Op::Delete(DeleteOp { key, precondition }), &q, headers)
            .await?;
        let r = rejected(&ok.result)?;
        Reply::write(
            &DeleteResponse {
                index: r.index,
                deleted: r.deleted,
                acked: ok.acked,
            },
            &ok,
        )
    }

    /// `POST /v1/kv/{key}/add`.
    pub(super) async fn add(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        key: String,
        q: Query,
    ) -> Answer {
        let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
        let b: AddRequest =
            request::parse_json(&body, "{\"delta\": i64, \"min\"?: i64, \"max\"?: i64}")?;
        let op = Op::Add(AddOp {
            key,
            delta: b.delta,
            min: b.min,
            max: b.max,
        });
        let ok = self.write(op, &q, headers).await?;
        let r = rejected(&ok.result)?;
        Reply::write(
            &AddResponse {
                value: r.value.unwrap_or_default(),
                index: r.index,
                version: r.version,
                acked: ok.acked,
            },
            &ok,
        )
    }
}

/// Long reads (list pages, read-only transactions) a node runs at once; more wait for a place.
/// Each holds its place until its work ends, even if its client has gone, so that clients
/// cannot fill the blocking pool, which snapshot staging also uses.
pub(super) const LONG_READS_AT_ONCE: usize = 16;

/// The places of [`LONG_READS_AT_ONCE`].
static LONG_READS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(LONG_READS_AT_ONCE);

/// Runs `work` (a read that may be long: many keys, large values) on the blocking pool instead
/// of an async worker, at most [`LONG_READS_AT_ONCE`] at a time, and answers with its result.
pub(super) async fn off_the_workers<F>(what: &'static str, work: F) -> Answer
where
    F: FnOnce() -> Answer + Send + 'static,
{
    let failed = || ApiError::new(ErrorCode::Internal, format!("the {what} failed"));
    // The semaphore is never closed.
    let place = LONG_READS.acquire().await.map_err(|_| failed())?;
    let place = tokio::task::spawn_blocking(move || {
        let _place = place;
        work()
    });
    match place.await {
        Ok(answer) => answer,
        Err(e) => {
            tracing::error!(error = %e, "a {what} failed on the blocking pool");
            Err(failed())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn long_reads_run_at_most_so_many_at_once_and_all_finish() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..LONG_READS_AT_ONCE * 3 {
            let (running, most) = (running.clone(), most.clone());
            tasks.push(tokio::spawn(off_the_workers("test read", move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Reply::bytes(Bytes::new(), "text/plain", None))
            })));
        }
        for t in tasks {
            assert!(t.await.expect("task").is_ok());
        }
        let most = most.load(Ordering::SeqCst);
        assert!(most <= LONG_READS_AT_ONCE, "{most} long reads at once");
        assert!(most > 1, "the reads ran one at a time ({most})");
    }
}
