//! The operational handlers: liveness, readiness, metrics and backups.

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::HeaderMap;
use keel_api::cluster::{BackupRequest, BackupResponse, Health, Ready, Role};
use keel_api::limits::MAX_SMALL_BODY_BYTES;
use keel_api::ErrorCode;

use super::error::ApiError;
use super::reply::{Answer, Reply};
use super::request::{self, Query};
use super::Api;
use crate::snapshot::backup;

impl Api {
    /// `GET /health`: 200 while the process serves.
    pub(super) fn health(&self) -> Answer {
        Reply::json(
            &Health {
                status: "ok".into(),
            },
            None,
        )
    }

    /// `GET /ready`: 200 when a leader is known and this node has applied its commit index.
    pub(super) fn ready(&self) -> Answer {
        let shared = self.node.shared();
        let applied = shared.applied();
        let commit = shared.commit();
        match shared.leader() {
            Some(leader) if applied >= commit && !shared.stopped() => Reply::json(
                &Ready {
                    ready: true,
                    leader,
                    applied_index: applied,
                },
                None,
            ),
            leader => Err(ApiError::new(
                ErrorCode::NotReady,
                format!("leader: {leader:?}, applied {applied} of commit {commit}"),
            )),
        }
    }

    /// `GET /metrics`: Prometheus text.
    pub(super) fn metrics(&self) -> Reply {
        let s = self.node.shared();
        let text = format!(
            "# HELP keel_applied_index Highest log index applied to the state machine.\n\
             # TYPE keel_applied_index gauge\nkeel_applied_index {}\n\
             # HELP keel_commit_index Highest log index known committed.\n\
             # TYPE keel_commit_index gauge\nkeel_commit_index {}\n\
             # HELP keel_term Current Raft term.\n\
             # TYPE keel_term gauge\nkeel_term {}\n\
             # HELP keel_is_leader 1 if this node leads.\n\
             # TYPE keel_is_leader gauge\nkeel_is_leader {}\n\
             # HELP keel_leader_known 1 if a leader is known.\n\
             # TYPE keel_leader_known gauge\nkeel_leader_known {}\n",
            s.applied(),
            s.commit(),
            s.term(),
            u8::from(s.role() == Role::Leader),
            u8::from(s.leader().is_some()),
        );
        Reply::bytes(Bytes::from(text), "text/plain; version=0.0.4", None)
    }

    /// `PUT /v1/admin/failpoints/{name}` (the body: fail-rs actions) and `DELETE` (disarm):
    /// the test build only; the route does not exist elsewhere.
    pub(super) async fn failpoint(
        &self,
        headers: &HeaderMap,
        body: Incoming,
        name: &str,
        method: hyper::Method,
    ) -> Answer {
        let actions = if method == hyper::Method::DELETE {
            String::new()
        } else {
            let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
            String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::new(ErrorCode::InvalidBody, "actions must be UTF-8"))?
        };
        crate::failpoints::configure(name, actions.trim())
            .map_err(|e| ApiError::new(ErrorCode::InvalidParameter, e))?;
        tracing::warn!(failpoint = name, actions = actions.trim(), "failpoint set");
        Reply::json(
            &serde_json::json!({"failpoint": name, "actions": actions.trim()}),
            None,
        )
    }

    /// `POST /v1/admin/backup`: a consistent checkpoint of this node, taken once it has applied
    /// everything acknowledged before the request (a linearizable barrier), into a directory on
    /// this node's machine.
    pub(super) async fn backup(&self, headers: &HeaderMap, body: Incoming) -> Answer {
        let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
        let b: BackupRequest = request::parse_json(&body, "{\"dir\": \"/path\"}")?;
        let dir = std::path::PathBuf::from(&b.dir);
        if !dir.is_absolute() || dir.exists() {
            return Err(ApiError::new(
                ErrorCode::InvalidDir,
                "dir must be an absolute path that does not exist yet",
            ));
        }
        self.read_barrier(&Query::default()).await?;
        let db = self.db.clone();
        let (index, term) = tokio::task::spawn_blocking(move || backup::checkpoint(&db, &dir))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
        Reply::json(
            &BackupResponse {
                index,
                term,
                dir: b.dir,
            },
            Some(index),
        )
    }
}
