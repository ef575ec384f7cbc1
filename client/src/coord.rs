//! Coordination (SPEC §8): leases kept alive in the background, locks with fencing tokens, and
//! elections built on locks.
//!
//! A [`Lease`] is granted by the cluster and kept alive by a task of the client until it is
//! dropped or revoked. The client never believes a lease for longer than the server promises:
//! a keepalive answered 200 means the leader will not expire the lease before TTL has passed
//! since the keepalive was *sent*, so the client counts from the moment it sent its last
//! successful keepalive. When that time runs out (the cluster unreachable, the process paused)
//! or the cluster says the lease is gone, the lease is **lost**: [`Lease::lost`] resolves, and
//! the holder must stop acting on anything the lease guarded.
//!
//! A lost lease is not enough on its own: a process paused for longer than the TTL does not
//! know it was paused until it runs again, and may act in between. That is what the **fence**
//! is for: every [`LockGuard`] carries the index of the entry that granted it, and a write
//! sent with [`crate::PutOptions::fence`] is applied only if that lock is still held with that
//! fence (checked by the state machine, atomically with the write).

use std::time::{Duration, Instant};

use bytes::Bytes;
use keel_api::coord::{
    LeaseGrantRequest, LeaseId, LeaseInfo, LeaseResponse, LeaseRevokeResponse, LockHolderInfo,
    LockRequest,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{encode_key, Call, Client};
use crate::error::Error;

/// A wait shorter than this is not worth another request.
const MIN_WAIT: Duration = Duration::from_millis(50);

/// Why a lease was lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseLoss {
    /// The cluster said the lease no longer exists (expired or revoked).
    Gone,
    /// No keepalive succeeded for a whole TTL: the cluster may have expired it.
    TimedOut,
    /// This client revoked it.
    Revoked,
}

/// A lease kept alive by a background task until it is dropped or revoked.
pub struct Lease {
    /// The client that keeps it alive.
    client: Client,
    /// Its id.
    id: u64,
    /// Its time to live, as granted.
    ttl: Duration,
    /// None while alive; why it was lost otherwise.
    state: watch::Receiver<Option<LeaseLoss>>,
    /// The keepalive task.
    task: JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        // The lease then expires on the cluster after its TTL.
        self.task.abort();
    }
}

impl Lease {
    /// The lease's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Its time to live.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether it is still believed alive.
    pub fn is_alive(&self) -> bool {
        self.state.borrow().is_none()
    }

    /// Resolves when the lease is lost, with the reason.
    pub async fn lost(&self) -> LeaseLoss {
        let mut rx = self.state.clone();
        loop {
            if let Some(why) = rx.borrow_and_update().clone() {
                return why;
            }
            if rx.changed().await.is_err() {
                return LeaseLoss::TimedOut;
            }
        }
    }

    /// Revokes it now: its keys are deleted and its locks released, in one entry.
    pub async fn revoke(self) -> Result<LeaseRevokeResponse, Error> {
        self.task.abort();
        self.client.revoke_lease(self.id).await
    }
}

/// A lock held by a lease: its fencing token, until released or lost with its lease.
#[derive(Clone, Debug)]
pub struct LockGuard {
    /// The lock's name.
    pub name: String,
    /// The lease that holds it.
    pub lease: u64,
    /// The fencing token: the index of the entry that granted the lock.
    pub fence: u64,
    /// The holder's value.
    pub value: String,
}

impl LockGuard {
    fn from_info(info: LockHolderInfo) -> Self {
        LockGuard {
            name: info.name,
            lease: info.lease.0,
            fence: info.fence,
            value: info.value.value.unwrap_or_default(),
        }
    }
}

/// An election on a lock: the candidate that holds the lock leads, with its fence.
pub struct Election {
    /// The client.
    client: Client,
    /// The lock the election runs on.
    name: String,
}

impl Election {
    /// The election named `name` (a lock of that name).
    pub fn new(client: &Client, name: &str) -> Self {
        Election {
            client: client.clone(),
            name: name.to_string(),
        }
    }

    /// Campaigns with `value` (the candidate's name) until elected or `wait` runs out
    /// ([`Error::LockHeld`] then, with the leader).
    pub async fn campaign(
        &self,
        lease: &Lease,
        value: &str,
        wait: Duration,
    ) -> Result<LockGuard, Error> {
        self.client.lock(&self.name, lease, value, wait).await
    }

    /// The current leader, if any.
    pub async fn leader(&self) -> Result<Option<LockHolderInfo>, Error> {
        self.client.lock_holder(&self.name).await
    }

    /// Waits until the leadership changes after `index` (or `wait` runs out) and returns the
    /// leader then, if any, with the index the answer reflects.
    pub async fn observe(
        &self,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<LockHolderInfo>, u64), Error> {
        self.client.wait_lock(&self.name, index, wait).await
    }

    /// Gives up leadership.
    pub async fn resign(&self, guard: &LockGuard) -> Result<(), Error> {
        self.client.unlock(guard).await
    }
}

impl Client {
    /// Grants a lease of at least `ttl` (the cluster raises it to twice its election timeout)
    /// and keeps it alive in the background until it is dropped, revoked or lost.
    pub async fn lease(&self, ttl: Duration) -> Result<Lease, Error> {
        let granted = self.grant_lease(ttl).await?;
        let ttl = Duration::from_millis(granted.ttl_ms);
        let (tx, rx) = watch::channel(None);
        let client = self.clone();
        let id = granted.id.0;
        let task = tokio::spawn(async move {
            let mut valid_until = Instant::now() + ttl;
            let every = ttl / 3;
            loop {
                tokio::time::sleep(every).await;
                let sent = Instant::now();
                if sent >= valid_until {
                    let _ = tx.send(Some(LeaseLoss::TimedOut));
                    return;
                }
                // Each attempt is bounded by what is left of the lease.
                let left = valid_until - sent;
                match tokio::time::timeout(left, client.keep_alive(id)).await {
                    Ok(Ok(_)) => valid_until = sent + ttl,
                    Ok(Err(Error::LeaseNotFound { .. })) => {
                        let _ = tx.send(Some(LeaseLoss::Gone));
                        return;
                    }
                    Ok(Err(_)) | Err(_) => {
                        if Instant::now() >= valid_until {
                            let _ = tx.send(Some(LeaseLoss::TimedOut));
                            return;
                        }
                    }
                }
            }
        });
        Ok(Lease {
            client: self.clone(),
            id,
            ttl,
            state: rx,
            task,
        })
    }

    /// Grants a lease without keeping it alive (`POST /v1/lease`).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseResponse, Error> {
        let body = serde_json::to_vec(&LeaseGrantRequest {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        })
        .map_err(|e| Error::Unexpected(e.to_string()))?;
        self.coord_call("POST", "/v1/lease".into(), body.into())
            .await?
            .json()
    }

    /// One keepalive (`POST /v1/lease/{id}/keepalive`); [`Error::LeaseNotFound`] once it ended.
    pub async fn keep_alive(&self, id: u64) -> Result<LeaseResponse, Error> {
        self.coord_call("POST", format!("/v1/lease/{id}/keepalive"), Bytes::new())
            .await?
            .json()
    }

    /// A lease's TTL, time left, keys and locks (`GET /v1/lease/{id}`).
    pub async fn lease_info(&self, id: u64) -> Result<LeaseInfo, Error> {
        self.coord_call("GET", format!("/v1/lease/{id}"), Bytes::new())
            .await?
            .json()
    }

    /// Revokes a lease (`DELETE /v1/lease/{id}`): its keys deleted, its locks released.
    pub async fn revoke_lease(&self, id: u64) -> Result<LeaseRevokeResponse, Error> {
        self.coord_call("DELETE", format!("/v1/lease/{id}"), Bytes::new())
            .await?
            .json()
    }

    /// Acquires lock `name` for `lease` with `value`, waiting in line up to `wait`
    /// ([`Error::LockHeld`] with the holder when it is not granted in time).
    pub async fn lock(
        &self,
        name: &str,
        lease: &Lease,
        value: &str,
        wait: Duration,
    ) -> Result<LockGuard, Error> {
        self.lock_for(name, lease.id, value, wait).await
    }

    /// [`Client::lock`] for a lease id (a lease kept alive elsewhere). A wait longer than the
    /// client's request timeout allows is made of several shorter ones (each joins the back of
    /// the queue again).
    pub async fn lock_for(
        &self,
        name: &str,
        lease: u64,
        value: &str,
        wait: Duration,
    ) -> Result<LockGuard, Error> {
        let deadline = Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .acquire_once(name, lease, value, left.min(self.longest_wait()))
                .await
            {
                Err(Error::LockHeld { .. }) if Instant::now() + MIN_WAIT < deadline => continue,
                other => return other,
            }
        }
    }

    /// The longest a single blocking request may wait: well inside the request timeout.
    fn longest_wait(&self) -> Duration {
        self.inner.http.request_timeout().mul_f32(0.6)
    }

    async fn acquire_once(
        &self,
        name: &str,
        lease: u64,
        value: &str,
        wait: Duration,
    ) -> Result<LockGuard, Error> {
        let body = serde_json::to_vec(&LockRequest {
            lease: LeaseId(lease),
            value: value.to_string(),
            wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
        })
        .map_err(|e| Error::Unexpected(e.to_string()))?;
        let info: LockHolderInfo = self
            .coord_call(
                "POST",
                format!("/v1/lock/{}", encode_key(name)),
                body.into(),
            )
            .await?
            .json()?;
        Ok(LockGuard::from_info(info))
    }

    /// Releases a lock held by the guard's lease.
    pub async fn unlock(&self, guard: &LockGuard) -> Result<(), Error> {
        self.coord_call(
            "DELETE",
            format!("/v1/lock/{}?lease={}", encode_key(&guard.name), guard.lease),
            Bytes::new(),
        )
        .await?;
        Ok(())
    }

    /// The holder of lock `name` (a linearizable read), None when it is free.
    pub async fn lock_holder(&self, name: &str) -> Result<Option<LockHolderInfo>, Error> {
        Ok(self.wait_lock(name, 0, Duration::ZERO).await?.0)
    }

    /// A blocking read of lock `name`: answers once its holder changed after `index`, or after
    /// `wait` (at most a little over half the client's request timeout); returns the holder then
    /// (None: free) and the index the answer reflects.
    pub async fn wait_lock(
        &self,
        name: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(Option<LockHolderInfo>, u64), Error> {
        let mut path = format!("/v1/lock/{}", encode_key(name));
        if index > 0 {
            path.push_str(&format!(
                "?wait_index={index}&wait_ms={}",
                wait.min(self.longest_wait()).as_millis()
            ));
        }
        match self
            .execute(Call {
                method: "GET",
                path,
                headers: Vec::new(),
                body: Bytes::new(),
                write: false,
                key: name,
            })
            .await
        {
            Ok(ans) => {
                let info: LockHolderInfo = ans.json()?;
                let index = info.index;
                Ok((Some(info), index))
            }
            Err(Error::LockNotFound { index, .. }) => Ok((None, index)),
            Err(e) => Err(e),
        }
    }

    async fn coord_call(
        &self,
        method: &'static str,
        path: String,
        body: Bytes,
    ) -> Result<crate::client::Answer, Error> {
        self.execute(Call {
            method,
            path,
            headers: vec![("content-type", "application/json".to_string())],
            body,
            write: method != "GET",
            key: "",
        })
        .await
    }
}
