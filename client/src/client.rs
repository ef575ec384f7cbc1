//! The client's core: topology (discovery, the leader, where each request goes), the retry loop,
//! and the mapping of answers to typed errors. The calls themselves are in `kv.rs` and
//! `admin.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use keel_api::cluster::Status;
use keel_api::{headers, ErrorBody, ErrorCode};
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng;
use serde::de::DeserializeOwned;
use tracing::{debug, warn};

use crate::builder::ClientBuilder;
use crate::error::Error;
use crate::http::{HttpClient, HttpError};
use crate::types::{Consistency, Mode, ReadFrom, RetryPolicy};

/// Characters left as they are in a key's path segment (RFC 3986 unreserved).
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A keel client. Cheap to clone; clones share connections, topology and session.
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("members", &self.members())
            .field("leader", &self.leader())
            .field("session_index", &self.session_index())
            .finish()
    }
}

/// What every clone of a [`Client`] shares.
pub(crate) struct Inner {
    /// The HTTP stack (keep-alive connections to every member).
    pub(crate) http: HttpClient,
    /// The endpoints the client was built with.
    pub(crate) seeds: Vec<String>,
    /// Known members: (id, host:port). Id 0 for seeds not yet identified.
    pub(crate) members: RwLock<Vec<(u64, String)>>,
    /// The leader last seen (0: unknown).
    pub(crate) leader: AtomicU64,
    /// The highest log index seen in a successful answer (the session).
    pub(crate) session_index: AtomicU64,
    /// Round-robin position of reads.
    pub(crate) next_read: AtomicUsize,
    /// How often and how long to retry.
    pub(crate) retry: RetryPolicy,
    /// Mode of writes that do not say.
    pub(crate) mode: Mode,
    /// Consistency of reads that do not say.
    pub(crate) consistency: Consistency,
    /// Send every request to the given endpoints only (they forward writes to the leader).
    pub(crate) pinned: bool,
    /// Set once a member's advertised address (not a given endpoint) took no connection: from
    /// then on the client talks to the given endpoints only, as if pinned.
    pub(crate) via_seeds: AtomicBool,
    /// Which members serve reads.
    pub(crate) read_from: ReadFrom,
}

/// An HTTP answer as the retry loop sees it.
pub(crate) struct Answer {
    pub(crate) status: u16,
    /// `X-Keel-Node` of the answering member.
    pub(crate) node: Option<u64>,
    pub(crate) body: Bytes,
    pub(crate) index: Option<u64>,
    /// The `ETag` version, on reads of a key.
    pub(crate) version: Option<u64>,
    /// `Idempotent-Replayed: true`.
    pub(crate) replayed: bool,
    /// `Retry-After` in seconds, on a 503.
    pub(crate) retry_after: Option<u64>,
}

impl Answer {
    /// The body as the JSON type `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Unexpected(format!(
                "invalid answer from server ({e}): {}",
                String::from_utf8_lossy(&self.body)
            ))
        })
    }

    /// Maps a non-2xx answer to a typed error; `key` names the key in messages.
    fn to_error(&self, key: &str) -> Error {
        let body: Option<ErrorBody> = serde_json::from_slice(&self.body).ok();
        let message = body
            .as_ref()
            .map(|b| b.error.message.clone())
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        let code = body.as_ref().and_then(ErrorBody::code);
        match (self.status, code) {
            (404, Some(ErrorCode::NotFound)) => Error::NotFound {
                key: key.to_string(),
            },
            (404, Some(ErrorCode::LeaseNotFound)) => Error::LeaseNotFound { message },
            (404, Some(ErrorCode::LockNotFound)) => Error::LockNotFound {
                name: key.to_string(),
                index: self.index.unwrap_or(0),
            },
            (409, Some(ErrorCode::LockHeld)) => Error::LockHeld {
                message,
                holder: body.and_then(|b| b.holder).map(Box::new),
            },
            (412, Some(ErrorCode::NotHolder)) => Error::NotHolder { message },
            (412, Some(ErrorCode::FenceRejected)) => Error::FenceRejected {
                message,
                holder: body.and_then(|b| b.holder).map(Box::new),
            },
            (412, _) => Error::PreconditionFailed { message },
            (409, Some(ErrorCode::BoundViolated)) => Error::BoundViolated {
                key: body
                    .as_ref()
                    .and_then(|b| b.key.clone())
                    .unwrap_or_else(|| key.to_string()),
                current: body.as_ref().and_then(|b| b.value).unwrap_or(0),
            },
            (503, Some(ErrorCode::Overloaded)) => Error::Overloaded { message },
            (503, _) => Error::NoLeader { message },
            (504, Some(ErrorCode::OutcomeUnknown)) => Error::OutcomeUnknown { message },
            (504, Some(ErrorCode::ReplicationTimeout)) => Error::ReplicationTimeout {
                index: body.as_ref().and_then(|b| b.index).unwrap_or(0),
            },
            (504, _) => Error::Timeout { message },
            (410, _) => Error::Compacted {
                message,
                oldest_index: body.as_ref().and_then(|b| b.oldest_index).unwrap_or(0),
            },
            (400..=499, _) => Error::BadRequest {
                code: body.map(|b| b.error.code).unwrap_or_default(),
                message,
            },
            (status, _) => Error::Unexpected(format!("{status}: {message}")),
        }
    }
}

/// A request the retry loop may send several times.
pub(crate) struct Call<'a> {
    pub(crate) method: &'static str,
    pub(crate) path: String,
    pub(crate) headers: Vec<(&'static str, String)>,
    pub(crate) body: Bytes,
    /// Writes (and administrative calls) go to the leader; reads to any member.
    pub(crate) write: bool,
    /// The key, for error messages.
    pub(crate) key: &'a str,
}

impl Client {
    /// Connects to a cluster through any of its members (`host:port` or `http://host:port`).
    ///
    /// ```
    /// # let cluster = keel_tests::Cluster::start(1);
    /// # let endpoints = cluster.endpoints();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let client = keel_client::Client::new(endpoints).await?;
    /// // Writes are retried until a leader is elected, then go straight to it.
    /// client.put("hello", "world").await?;
    /// let status = client.status().await?;
    /// assert_eq!(status.members.len(), 1);
    /// assert_eq!(status.leader, client.leader());
    /// # Ok::<(), keel_client::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn new<I, S>(endpoints: I) -> Result<Client, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::builder(endpoints).build().await
    }

    /// A builder with the defaults of [`Client::new`].
    pub fn builder<I, S>(endpoints: I) -> ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClientBuilder::new(
            endpoints
                .into_iter()
                .map(|s| s.as_ref().to_string())
                .collect(),
        )
    }

    /// The members known (id, host:port); id 0 for a seed not yet identified.
    pub fn members(&self) -> Vec<(u64, String)> {
        self.inner
            .members
            .read()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// The leader last seen (None if unknown).
    pub fn leader(&self) -> Option<u64> {
        match self.inner.leader.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// The highest log index this client has seen in an answer (its session).
    pub fn session_index(&self) -> u64 {
        self.inner.session_index.load(Ordering::Acquire)
    }

    /// Re-reads the topology from the first member that answers `/v1/status` (a pinned client
    /// keeps its endpoints).
    pub async fn refresh(&self) {
        if self.pinned() {
            return;
        }
        let mut candidates = self
            .members()
            .into_iter()
            .map(|(_, a)| a)
            .collect::<Vec<_>>();
        for s in &self.inner.seeds {
            if !candidates.contains(s) {
                candidates.push(s.clone());
            }
        }
        for addr in candidates {
            let Ok(ans) = self
                .send_once(&addr, "GET", "/v1/status", &[], Bytes::new())
                .await
            else {
                continue;
            };
            if ans.status != 200 {
                continue;
            }
            let Ok(status) = ans.json::<Status>() else {
                continue;
            };
            let members: Vec<(u64, String)> = status
                .members
                .iter()
                .filter_map(|m| m.http_addr.clone().map(|a| (m.id, strip_scheme(&a))))
                .collect();
            if !members.is_empty() {
                if let Ok(mut m) = self.inner.members.write() {
                    // A fall-back to the given endpoints that happened while this refresh was
                    // under way wins: its addresses were unreachable.
                    if !self.pinned() {
                        *m = members;
                    }
                }
            }
            if let Some(l) = status.leader {
                self.inner.leader.store(l, Ordering::Release);
                return;
            }
        }
    }

    /// Whether every request goes to the given endpoints only.
    fn pinned(&self) -> bool {
        self.inner.pinned || self.inner.via_seeds.load(Ordering::Acquire)
    }

    /// A member's advertised address `target` refused or could not take a connection: if it is
    /// not one of the given endpoints, the advertised addresses may not be reachable from here
    /// at all (a compose cluster advertising `keel1:7001` to a client on the host), so the
    /// client goes on through the given endpoints, which forward writes to the leader.
    fn fall_back_to_seeds(&self, target: &str) {
        if self.inner.pinned || self.inner.seeds.iter().any(|s| s == target) {
            return;
        }
        if !self.inner.via_seeds.swap(true, Ordering::AcqRel) {
            warn!(
                %target,
                seeds = ?self.inner.seeds,
                "cannot connect to a member's advertised address; going on through the given \
                 endpoints only (they forward writes)"
            );
            if let Ok(mut m) = self.inner.members.write() {
                *m = self.inner.seeds.iter().map(|s| (0, s.clone())).collect();
            }
        }
    }

    fn leader_addr(&self) -> Option<String> {
        let leader = self.leader()?;
        self.members()
            .into_iter()
            .find(|(id, _)| *id == leader)
            .map(|(_, a)| a)
    }

    pub(crate) fn any_member(&self) -> String {
        let members = self.members();
        if members.is_empty() {
            return self.inner.seeds[0].clone();
        }
        let i = self.inner.next_read.fetch_add(1, Ordering::Relaxed);
        members[i % members.len()].1.clone()
    }

    /// Where the next read goes.
    fn read_target(&self) -> String {
        match self.inner.read_from {
            _ if self.pinned() => self.any_member(),
            ReadFrom::Any => self.any_member(),
            ReadFrom::Leader => self.leader_addr().unwrap_or_else(|| self.any_member()),
            ReadFrom::Endpoints => {
                let seeds = &self.inner.seeds;
                let i = self.inner.next_read.fetch_add(1, Ordering::Relaxed);
                seeds[i % seeds.len()].clone()
            }
        }
    }

    /// One attempt: sends the request and notes the leader and the session index it reports.
    async fn send_once(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, HttpError> {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let resp = self
            .inner
            .http
            .request(addr, method, path, &headers, body)
            .await?;
        let num = |name: &str| resp.header(name).and_then(|v| v.parse::<u64>().ok());
        let index = num(headers::INDEX);
        if let Some(l) = num(headers::LEADER) {
            self.inner.leader.store(l, Ordering::Release);
        }
        if resp.status < 300 {
            if let Some(i) = index {
                self.inner.session_index.fetch_max(i, Ordering::AcqRel);
            }
        }
        Ok(Answer {
            status: resp.status,
            node: num(headers::NODE),
            index,
            version: resp
                .header("etag")
                .and_then(|v| v.trim_matches('"').parse().ok()),
            replayed: resp.header(headers::IDEMPOTENT_REPLAYED) == Some("true"),
            retry_after: num("retry-after"),
            body: resp.body,
        })
    }

    pub(crate) async fn backoff(&self, attempt: u32) {
        let r = &self.inner.retry;
        let cap = r
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(r.max_backoff);
        let ms = rand::thread_rng().gen_range(0..=cap.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Sends `call`, retrying what is safe to retry, and returns the 2xx answer or a typed error.
    pub(crate) async fn execute(&self, call: Call<'_>) -> Result<Answer, Error> {
        let mut headers = call.headers.clone();
        if call.write {
            // One key for every attempt: the server applies the write at most once.
            headers.push((headers::IDEMPOTENCY_KEY, new_idempotency_key()));
        }
        let mut maybe_applied = false;
        let mut last = Error::NoLeader {
            message: "no member answered".into(),
        };
        for attempt in 0..self.inner.retry.max_attempts.max(1) {
            if attempt > 0 {
                self.backoff(attempt).await;
            }
            let target = if call.write && !self.pinned() {
                self.leader_addr().unwrap_or_else(|| self.any_member())
            } else if call.write {
                self.any_member()
            } else {
                self.read_target()
            };
            match self
                .send_once(
                    &target,
                    call.method,
                    &call.path,
                    &headers,
                    call.body.clone(),
                )
                .await
            {
                Err(e @ HttpError::TlsRefused { .. }) => {
                    // This node refused this client's certificate and never read the request.
                    // Another may not (a CA being rotated node by node): go on, and say so
                    // plainly if none takes it.
                    debug!(%target, error = %e, "TLS session refused");
                    last = Error::TlsRefused(e.to_string());
                    self.inner.leader.store(0, Ordering::Release);
                    self.refresh().await;
                }
                Err(e) => {
                    debug!(%target, error = %e, "request failed; refreshing topology");
                    if matches!(e, HttpError::Connect { .. }) {
                        self.fall_back_to_seeds(&target);
                    }
                    // The request may have reached the server before the connection broke
                    // (not when no connection was made).
                    maybe_applied |= call.write && !e.certainly_not_sent();
                    last = Error::Timeout {
                        message: e.to_string(),
                    };
                    self.inner.leader.store(0, Ordering::Release);
                    self.refresh().await;
                }
                Ok(ans) if ans.status < 300 => return Ok(ans),
                Ok(ans) => {
                    let err = ans.to_error(call.key);
                    match &err {
                        Error::NoLeader { .. } => {
                            // 503: nothing was applied; the leader may have moved.
                            self.refresh().await;
                        }
                        Error::Overloaded { .. } => {
                            // Nothing was applied and the topology is fine: wait as asked
                            // (within the retry policy's longest pause) before the next try.
                            let wait = Duration::from_secs(ans.retry_after.unwrap_or(1))
                                .min(self.inner.retry.max_backoff);
                            tokio::time::sleep(wait).await;
                        }
                        Error::OutcomeUnknown { .. } => {
                            maybe_applied = true;
                            self.refresh().await;
                        }
                        // A 504 without keel's error code (a proxy's gateway timeout): the
                        // write may have been applied.
                        Error::Timeout { .. } => maybe_applied |= call.write,
                        _ => return Err(err),
                    }
                    last = err;
                }
            }
        }
        if maybe_applied && !matches!(last, Error::OutcomeUnknown { .. }) {
            return Err(Error::OutcomeUnknown {
                message: format!(
                    "gave up after {} attempts: {last}",
                    self.inner.retry.max_attempts
                ),
            });
        }
        Err(last)
    }

    /// The query string of a read at `consistency`.
    pub(crate) fn read_query(&self, consistency: Consistency) -> String {
        match consistency {
            Consistency::Linearizable => "consistency=linearizable".into(),
            Consistency::Stale => "consistency=stale".into(),
            Consistency::Session => format!("consistency=stale&min_index={}", self.session_index()),
        }
    }
}

fn strip_scheme(a: &str) -> String {
    a.strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a)
        .trim_end_matches('/')
        .to_string()
}

/// A key (or any text) encoded for a path segment or a query value.
pub(crate) fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_SET).to_string()
}

fn new_idempotency_key() -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("kc-{n:032x}")
}
