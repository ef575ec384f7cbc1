//! The operational handlers: liveness, readiness, metrics and backups.

use std::path::{Component, Path, PathBuf};

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

/// How often a scrape recounts leases and locks.
const COORD_COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

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
    pub(super) async fn metrics(&self) -> Reply {
        let s = self.node.shared();
        let m = crate::metrics::metrics();
        let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.applied_index.set(gauge(s.applied()));
        m.commit_index.set(gauge(s.commit()));
        m.term.set(gauge(s.term()));
        m.is_leader.set(i64::from(s.role() == Role::Leader));
        m.has_leader.set(i64::from(s.leader().is_some()));
        m.queue_depth.set(gauge(s.queued() as u64));
        m.reads_waiting.set(gauge(s.reads_asked() as u64));
        // Counting leases and locks scans two column families: off the async workers, and at
        // most once per COORD_COUNT_EVERY whatever the number of scrapers.
        let due = self
            .coord_counted
            .lock()
            .map(|mut last| {
                let due = last.is_none_or(|t| t.elapsed() >= COORD_COUNT_EVERY);
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            })
            .unwrap_or(false);
        if due {
            let sm = self.sm.clone();
            if let Ok(Ok((leases, held))) =
                tokio::task::spawn_blocking(move || sm.coord_counts()).await
            {
                m.leases.set(gauge(leases as u64));
                m.locks_held.set(gauge(held as u64));
            }
        }
        m.watchers.set(gauge(self.feed.registry().len() as u64));
        Reply::bytes(
            Bytes::from(m.encode()),
            "text/plain; version=0.0.4; charset=utf-8",
            None,
        )
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
    /// everything acknowledged before the request (a linearizable barrier), into a new directory
    /// under this node's `--backup-dir` (a name relative to it, or an absolute path inside it).
    pub(super) async fn backup(&self, headers: &HeaderMap, body: Incoming) -> Answer {
        let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
        let b: BackupRequest = request::parse_json(&body, "{\"dir\": \"/path\"}")?;
        let dir = backup_target(self.cfg.backup_dir.as_deref(), &b.dir)?;
        self.read_barrier(&Query::default()).await?;
        let db = self.db.clone();
        let shown = dir.display().to_string();
        let (index, term) = tokio::task::spawn_blocking(move || backup::checkpoint(&db, &dir))
            .await
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
        Reply::json(
            &BackupResponse {
                index,
                term,
                dir: shown,
            },
            Some(index),
        )
    }
}

/// Where a backup named `dir` goes: a new directory under `root`, never outside it (no `..`, no
/// absolute path elsewhere); 403 when the node has no `--backup-dir`.
fn backup_target(root: Option<&Path>, dir: &str) -> Result<PathBuf, ApiError> {
    let Some(root) = root else {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "backups are disabled on this node (start it with --backup-dir)",
        ));
    };
    let invalid = |why: &str| {
        ApiError::new(
            ErrorCode::InvalidDir,
            format!(
                "{dir:?}: {why} (backups go to a new directory under {})",
                root.display()
            ),
        )
    };
    let asked = Path::new(dir);
    if dir.is_empty()
        || asked
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::RootDir))
    {
        return Err(invalid("not a plain path"));
    }
    let target = if asked.is_absolute() {
        asked
            .strip_prefix(root)
            .map_err(|_| invalid("outside the backup directory"))?;
        asked.to_path_buf()
    } else {
        root.join(asked)
    };
    if target == root {
        return Err(invalid("the backup directory itself"));
    }
    if target.exists() {
        return Err(invalid("exists already"));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backups_stay_under_the_backup_directory() {
        let root = Path::new("/srv/keel-backups");
        let ok = |d: &str| backup_target(Some(root), d).expect(d);
        assert_eq!(ok("monday"), root.join("monday"));
        assert_eq!(ok("/srv/keel-backups/a/b"), root.join("a/b"));
        for bad in [
            "",
            "../etc",
            "a/../../x",
            "/etc/cron.d/x",
            "/srv/keel-backups",
            "./x",
        ] {
            let e = backup_target(Some(root), bad).expect_err(bad);
            assert_eq!(e.code(), ErrorCode::InvalidDir, "{bad}");
        }
        let e = backup_target(None, "x").expect_err("disabled");
        assert_eq!(e.code(), ErrorCode::Forbidden);
    }
}
