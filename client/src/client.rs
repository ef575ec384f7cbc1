//! The client: topology, routing, retries and the typed calls.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use rand::Rng;
use serde_json::Value;
use tracing::debug;

use crate::error::Error;
use crate::txn::{parse_txn_result, TxnBuilder, TxnResult};
use crate::types::{
    Acked, AddResult, Consistency, DeleteResult, KeyValue, ListPage, Mode, PutResult, ReadFrom,
    RetryPolicy, Status,
};

/// Characters left as they are in a key's path segment (RFC 3986 unreserved).
const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

type Http = hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>;

/// A keel client. Cheap to clone; clones share connections, topology and session.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
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

struct Inner {
    http: Http,
    seeds: Vec<String>,
    /// Known members: (id, host:port). Id 0 for seeds not yet identified.
    members: RwLock<Vec<(u64, String)>>,
    leader: AtomicU64,
    session_index: AtomicU64,
    next_read: AtomicUsize,
    request_timeout: Duration,
    retry: RetryPolicy,
    mode: Mode,
    consistency: Consistency,
    /// Send every request to the given endpoints only (they forward writes to the leader).
    pinned: bool,
    read_from: ReadFrom,
}

/// Configures a [`Client`].
///
/// ```
/// # let cluster = keel_tests::Cluster::start(1);
/// # let endpoints = cluster.endpoints();
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use keel_client::{Client, Consistency, Mode};
///
/// let client = Client::builder(endpoints)
///     .request_timeout(Duration::from_secs(3))
///     .default_mode(Mode::Sync)
///     .default_consistency(Consistency::Session)
///     .build()
///     .await?;
/// let put = client.put("k", "v").await?;
/// assert_eq!(put.acked, keel_client::Acked::All);
/// # Ok::<(), keel_client::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    endpoints: Vec<String>,
    request_timeout: Duration,
    retry: RetryPolicy,
    mode: Mode,
    consistency: Consistency,
    pinned: bool,
    read_from: ReadFrom,
}

impl ClientBuilder {
    /// Timeout of one HTTP attempt (default 10 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Retry policy (default: 12 attempts, 50 ms doubling to 1 s, full jitter).
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }

    /// Mode of writes (default: the server's default, `semi`).
    pub fn default_mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }

    /// Consistency of reads (default `Linearizable`).
    pub fn default_consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }

    /// Which members serve reads (default [`ReadFrom::Any`]).
    pub fn read_from(mut self, r: ReadFrom) -> Self {
        self.read_from = r;
        self
    }

    /// Sends every request to the given endpoints only, never straight to the leader: the
    /// node forwards writes itself. For showing (or testing) a particular node's path; normal
    /// clients leave this off.
    pub fn pin_to_endpoints(mut self, pinned: bool) -> Self {
        self.pinned = pinned;
        self
    }

    /// Builds the client and discovers the cluster. Fails only if no endpoint was given or one
    /// cannot be parsed; unreachable endpoints are retried on use.
    pub async fn build(self) -> Result<Client, Error> {
        let seeds: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| normalize(e))
            .collect::<Result<_, _>>()?;
        if seeds.is_empty() {
            return Err(Error::InvalidEndpoint("no endpoint given".into()));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let client = Client {
            inner: Arc::new(Inner {
                http,
                members: RwLock::new(seeds.iter().map(|s| (0, s.clone())).collect()),
                seeds,
                leader: AtomicU64::new(0),
                session_index: AtomicU64::new(0),
                next_read: AtomicUsize::new(0),
                request_timeout: self.request_timeout,
                retry: self.retry,
                mode: self.mode,
                consistency: self.consistency,
                pinned: self.pinned,
                read_from: self.read_from,
            }),
        };
        if !client.inner.pinned {
            client.refresh().await;
        }
        Ok(client)
    }
}

fn normalize(endpoint: &str) -> Result<String, Error> {
    let e = endpoint.trim();
    let e = e.strip_prefix("http://").unwrap_or(e);
    let e = e.trim_end_matches('/');
    if e.is_empty() || e.contains('/') || !e.contains(':') {
        return Err(Error::InvalidEndpoint(format!(
            "{endpoint:?}: expected host:port or http://host:port"
        )));
    }
    Ok(e.to_string())
}

/// Options of a put.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    mode: Option<Mode>,
    if_version: Option<u64>,
    if_absent: bool,
}

impl PutOptions {
    /// No options: the client's defaults.
    pub fn new() -> Self {
        Self::default()
    }
    /// Write mode of this put.
    pub fn mode(mut self, m: Mode) -> Self {
        self.mode = Some(m);
        self
    }
    /// Only if the key's version is exactly `v` (compare-and-set).
    pub fn if_version(mut self, v: u64) -> Self {
        self.if_version = Some(v);
        self
    }
    /// Only if the key does not exist.
    pub fn if_absent(mut self) -> Self {
        self.if_absent = true;
        self
    }
}

/// An HTTP answer as the retry loop sees it.
struct Answer {
    status: u16,
    /// `X-Keel-Node` of the answering member.
    node: Option<u64>,
    body: Bytes,
    index: Option<u64>,
    /// The `ETag` version, on reads of a key.
    version: Option<u64>,
    replayed: bool,
}

impl Answer {
    fn json(&self) -> Result<Value, Error> {
        serde_json::from_slice(&self.body)
            .map_err(|e| Error::Unexpected(format!("invalid JSON from server ({e})")))
    }

    fn error_code(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string))
            .unwrap_or_default()
    }

    fn error_message(&self) -> String {
        self.json()
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }

    /// Maps a non-2xx answer to a typed error.
    fn to_error(&self, key: &str) -> Error {
        let code = self.error_code();
        let message = self.error_message();
        match (self.status, code.as_str()) {
            (404, "not_found") => Error::NotFound {
                key: key.to_string(),
            },
            (412, _) => Error::PreconditionFailed { message },
            (409, "bound_violated") => {
                let v = self.json().unwrap_or(Value::Null);
                Error::BoundViolated {
                    key: v["key"].as_str().unwrap_or(key).to_string(),
                    current: v["value"].as_i64().unwrap_or(0),
                }
            }
            (503, _) => Error::NoLeader { message },
            (504, "outcome_unknown") => Error::OutcomeUnknown { message },
            (504, "replication_timeout") => Error::ReplicationTimeout {
                index: self
                    .json()
                    .ok()
                    .and_then(|v| v["index"].as_u64())
                    .unwrap_or(0),
            },
            (504, _) => Error::Timeout { message },
            (400..=499, _) => Error::BadRequest { code, message },
            (status, _) => Error::Unexpected(format!("{status}: {message}")),
        }
    }
}

/// A request the retry loop may send several times.
struct Call<'a> {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Bytes,
    /// Writes go to the leader; reads to any member.
    write: bool,
    /// The key, for error messages.
    key: &'a str,
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
        ClientBuilder {
            endpoints: endpoints
                .into_iter()
                .map(|s| s.as_ref().to_string())
                .collect(),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            mode: Mode::Semi,
            consistency: Consistency::Linearizable,
            pinned: false,
            read_from: ReadFrom::Any,
        }
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
        if self.inner.pinned {
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
                .send_once(&addr, Method::GET, "/v1/status", &[], Bytes::new())
                .await
            else {
                continue;
            };
            if ans.status != 200 {
                continue;
            }
            let Ok(status) = serde_json::from_slice::<Status>(&ans.body) else {
                continue;
            };
            let members: Vec<(u64, String)> = status
                .members
                .iter()
                .filter_map(|m| m.http_addr.clone().map(|a| (m.id, strip_scheme(&a))))
                .collect();
            if !members.is_empty() {
                if let Ok(mut m) = self.inner.members.write() {
                    *m = members;
                }
            }
            if let Some(l) = status.leader {
                self.inner.leader.store(l, Ordering::Release);
                return;
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

    fn any_member(&self) -> String {
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
            _ if self.inner.pinned => self.any_member(),
            ReadFrom::Any => self.any_member(),
            ReadFrom::Leader => self.leader_addr().unwrap_or_else(|| self.any_member()),
            ReadFrom::Endpoints => {
                let seeds = &self.inner.seeds;
                let i = self.inner.next_read.fetch_add(1, Ordering::Relaxed);
                seeds[i % seeds.len()].clone()
            }
        }
    }

    async fn send_once(
        &self,
        addr: &str,
        method: Method,
        path: &str,
        headers: &[(&'static str, String)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("http://{addr}{path}"));
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let fut = async {
            let resp = self
                .inner
                .http
                .request(req)
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let index = header("x-keel-index").and_then(|v| v.parse().ok());
            let leader: Option<u64> = header("x-keel-leader").and_then(|v| v.parse().ok());
            let replayed = header("idempotent-replayed").is_some_and(|v| v == "true");
            let version = header("etag").and_then(|v| v.trim_matches('"').parse().ok());
            let node: Option<u64> = header("x-keel-node").and_then(|v| v.parse().ok());
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            Ok::<_, String>((status, node, index, version, leader, replayed, body))
        };
        let (status, node, index, version, leader, replayed, body) =
            match tokio::time::timeout(self.inner.request_timeout, fut).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(format!(
                        "no answer from {addr} within {:?}",
                        self.inner.request_timeout
                    ))
                }
            };
        if let Some(l) = leader {
            self.inner.leader.store(l, Ordering::Release);
        }
        if status < 300 {
            if let Some(i) = index {
                self.inner.session_index.fetch_max(i, Ordering::AcqRel);
            }
        }
        Ok(Answer {
            status,
            node,
            body,
            index,
            version,
            replayed,
        })
    }

    async fn backoff(&self, attempt: u32) {
        let r = &self.inner.retry;
        let cap = r
            .base_backoff
            .saturating_mul(1u32 << attempt.min(16))
            .min(r.max_backoff);
        let ms = rand::thread_rng().gen_range(0..=cap.as_millis() as u64);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Sends `call`, retrying what is safe to retry, and returns the 2xx answer or a typed error.
    async fn execute(&self, call: Call<'_>) -> Result<Answer, Error> {
        let mut headers = call.headers.clone();
        if call.write {
            // One key for every attempt: the server applies the write at most once.
            headers.push(("idempotency-key", new_idempotency_key()));
        }
        let mut maybe_applied = false;
        let mut last = Error::NoLeader {
            message: "no member answered".into(),
        };
        for attempt in 0..self.inner.retry.max_attempts.max(1) {
            if attempt > 0 {
                self.backoff(attempt).await;
            }
            let target = if call.write && !self.inner.pinned {
                self.leader_addr().unwrap_or_else(|| self.any_member())
            } else if call.write {
                self.any_member()
            } else {
                self.read_target()
            };
            match self
                .send_once(
                    &target,
                    call.method.clone(),
                    &call.path,
                    &headers,
                    call.body.clone(),
                )
                .await
            {
                Err(e) => {
                    debug!(%target, error = %e, "request failed; refreshing topology");
                    // The request may have reached the server before the connection broke.
                    maybe_applied |= call.write;
                    last = Error::Timeout { message: e };
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
                        Error::OutcomeUnknown { .. } => {
                            maybe_applied = true;
                            self.refresh().await;
                        }
                        Error::Timeout { .. } => {}
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

    fn read_query(&self, consistency: Consistency) -> String {
        match consistency {
            Consistency::Linearizable => "consistency=linearizable".into(),
            Consistency::Stale => "consistency=stale".into(),
            Consistency::Session => format!("consistency=stale&min_index={}", self.session_index()),
        }
    }

    /// Reads a key at the client's default consistency. [`Error::NotFound`] if it is absent.
    ///
    /// ```
    /// # let cluster = keel_tests::Cluster::start(1);
    /// # let endpoints = cluster.endpoints();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let client = keel_client::Client::new(endpoints).await?;
    /// client.put("colour", "teal").await?;
    /// let kv = client.get("colour").await?;
    /// assert_eq!(kv.value_str(), Some("teal"));
    /// assert!(matches!(client.get("nope").await, Err(keel_client::Error::NotFound { .. })));
    /// # Ok::<(), keel_client::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn get(&self, key: &str) -> Result<KeyValue, Error> {
        self.get_with(key, self.inner.consistency).await
    }

    /// Reads a key at the given consistency.
    pub async fn get_with(&self, key: &str, consistency: Consistency) -> Result<KeyValue, Error> {
        let path = format!(
            "/v1/kv/{}?{}",
            encode_key(key),
            self.read_query(consistency)
        );
        let ans = self
            .execute(Call {
                method: Method::GET,
                path,
                headers: Vec::new(),
                body: Bytes::new(),
                write: false,
                key,
            })
            .await?;
        Ok(KeyValue {
            key: key.to_string(),
            version: ans.version.unwrap_or(0),
            index: ans.index.unwrap_or(0),
            served_by: ans.node,
            value: ans.body,
        })
    }

    /// Sets a key.
    ///
    /// ```
    /// # let cluster = keel_tests::Cluster::start(1);
    /// # let endpoints = cluster.endpoints();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let client = keel_client::Client::new(endpoints).await?;
    /// let put = client.put("k", b"bytes too".to_vec()).await?;
    /// assert_eq!(put.version, put.index);
    /// # Ok::<(), keel_client::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<PutResult, Error> {
        self.put_with(key, value, PutOptions::new()).await
    }

    /// Sets a key with options (mode, compare-and-set, create-only).
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<PutResult, Error> {
        let mut headers = Vec::new();
        if let Some(v) = opts.if_version {
            headers.push(("if-match", format!("\"{v}\"")));
        }
        if opts.if_absent {
            headers.push(("if-none-match", "*".to_string()));
        }
        let mode = opts.mode.unwrap_or(self.inner.mode);
        let ans = self
            .execute(Call {
                method: Method::PUT,
                path: format!("/v1/kv/{}?mode={}", encode_key(key), mode.as_str()),
                headers,
                body: value.into(),
                write: true,
                key,
            })
            .await?;
        let v = ans.json()?;
        Ok(PutResult {
            index: field_u64(&v, "index")?,
            version: field_u64(&v, "version")?,
            acked: acked(&v)?,
            replayed: ans.replayed,
        })
    }

    /// Compare-and-set: writes `value` only if the key's version is `version`
    /// ([`Error::PreconditionFailed`] otherwise).
    ///
    /// ```
    /// # let cluster = keel_tests::Cluster::start(1);
    /// # let endpoints = cluster.endpoints();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let client = keel_client::Client::new(endpoints).await?;
    /// let v1 = client.put("doc", "draft").await?.version;
    /// client.compare_and_set("doc", v1, "final").await?;
    /// let stale = client.compare_and_set("doc", v1, "lost update").await;
    /// assert!(matches!(stale, Err(keel_client::Error::PreconditionFailed { .. })));
    /// # Ok::<(), keel_client::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn compare_and_set(
        &self,
        key: &str,
        version: u64,
        value: impl Into<Bytes>,
    ) -> Result<PutResult, Error> {
        self.put_with(key, value, PutOptions::new().if_version(version))
            .await
    }

    /// Creates a key only if it does not exist ([`Error::PreconditionFailed`] otherwise).
    pub async fn create(&self, key: &str, value: impl Into<Bytes>) -> Result<PutResult, Error> {
        self.put_with(key, value, PutOptions::new().if_absent())
            .await
    }

    /// Deletes a key (`deleted` says whether it existed).
    pub async fn delete(&self, key: &str) -> Result<DeleteResult, Error> {
        self.delete_if(key, None).await
    }

    /// Deletes a key only if its version is `version` (when given).
    pub async fn delete_if(&self, key: &str, version: Option<u64>) -> Result<DeleteResult, Error> {
        let mut headers = Vec::new();
        if let Some(v) = version {
            headers.push(("if-match", format!("\"{v}\"")));
        }
        let ans = self
            .execute(Call {
                method: Method::DELETE,
                path: format!(
                    "/v1/kv/{}?mode={}",
                    encode_key(key),
                    self.inner.mode.as_str()
                ),
                headers,
                body: Bytes::new(),
                write: true,
                key,
            })
            .await?;
        let v = ans.json()?;
        Ok(DeleteResult {
            index: field_u64(&v, "index")?,
            deleted: v["deleted"].as_bool().unwrap_or(false),
            acked: acked(&v)?,
            replayed: ans.replayed,
        })
    }

    /// Adds `delta` to the decimal integer at `key` (absent counts as 0).
    pub async fn add(&self, key: &str, delta: i64) -> Result<AddResult, Error> {
        self.add_bounded(key, delta, None, None).await
    }

    /// Adds `delta` unless the result would leave `[min, max]` ([`Error::BoundViolated`], with the
    /// unchanged current value).
    pub async fn add_bounded(
        &self,
        key: &str,
        delta: i64,
        min: Option<i64>,
        max: Option<i64>,
    ) -> Result<AddResult, Error> {
        let mut body = serde_json::json!({"delta": delta});
        if let Some(m) = min {
            body["min"] = m.into();
        }
        if let Some(m) = max {
            body["max"] = m.into();
        }
        let ans = self
            .execute(Call {
                method: Method::POST,
                path: format!(
                    "/v1/kv/{}/add?mode={}",
                    encode_key(key),
                    self.inner.mode.as_str()
                ),
                headers: Vec::new(),
                body: Bytes::from(body.to_string()),
                write: true,
                key,
            })
            .await?;
        let v = ans.json()?;
        Ok(AddResult {
            value: v["value"]
                .as_i64()
                .ok_or_else(|| Error::Unexpected(format!("no value in {v}")))?,
            index: field_u64(&v, "index")?,
            version: field_u64(&v, "version")?,
            acked: acked(&v)?,
            replayed: ans.replayed,
        })
    }

    /// Lists keys with `prefix`, in order, up to `limit` after `after` (exclusive).
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<ListPage, Error> {
        let mut path = format!(
            "/v1/kv?prefix={}&limit={limit}&{}",
            encode_key(prefix),
            self.read_query(self.inner.consistency)
        );
        if let Some(a) = after {
            path.push_str(&format!("&after={}", encode_key(a)));
        }
        let ans = self
            .execute(Call {
                method: Method::GET,
                path,
                headers: Vec::new(),
                body: Bytes::new(),
                write: false,
                key: prefix,
            })
            .await?;
        let v = ans.json()?;
        let items = v["items"]
            .as_array()
            .ok_or_else(|| Error::Unexpected(format!("no items in {v}")))?
            .iter()
            .map(|i| {
                let value = match (i["value"].as_str(), i["value_base64"].as_str()) {
                    (Some(s), _) => Bytes::from(s.to_string()),
                    (None, Some(b)) => Bytes::from(
                        base64::engine::general_purpose::STANDARD
                            .decode(b)
                            .unwrap_or_default(),
                    ),
                    _ => Bytes::new(),
                };
                KeyValue {
                    key: i["key"].as_str().unwrap_or_default().to_string(),
                    value,
                    version: i["version"].as_u64().unwrap_or(0),
                    index: v["index"].as_u64().unwrap_or(0),
                    served_by: ans.node,
                }
            })
            .collect();
        Ok(ListPage {
            items,
            index: field_u64(&v, "index")?,
            more: v["more"].as_bool().unwrap_or(false),
        })
    }

    /// Starts a transaction.
    ///
    /// ```
    /// # let cluster = keel_tests::Cluster::start(1);
    /// # let endpoints = cluster.endpoints();
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// # let client = keel_client::Client::new(endpoints).await?;
    /// use keel_client::{Cmp, Compare, Op};
    /// client.put("acct/alice", "100").await?;
    /// // Move 30 from alice to bob, only if alice has it.
    /// let t = client
    ///     .txn()
    ///     .when(Compare::int("acct/alice", Cmp::Ge, 30))
    ///     .then(Op::add("acct/alice", -30))
    ///     .then(Op::add("acct/bob", 30))
    ///     .otherwise(Op::get("acct/alice"))
    ///     .commit()
    ///     .await?;
    /// assert!(t.succeeded);
    /// assert_eq!((t.int(0), t.int(1)), (Some(70), Some(30)));
    /// # Ok::<(), keel_client::Error>(())
    /// # }).unwrap();
    /// ```
    pub fn txn(&self) -> TxnBuilder<'_> {
        TxnBuilder::new(self)
    }

    pub(crate) async fn commit_txn(&self, t: TxnBuilder<'_>) -> Result<TxnResult, Error> {
        let read_only = t.is_read_only();
        let path = if read_only {
            format!("/v1/txn?{}", self.read_query(self.inner.consistency))
        } else {
            format!("/v1/txn?mode={}", self.inner.mode.as_str())
        };
        let ans = self
            .execute(Call {
                method: Method::POST,
                path,
                headers: Vec::new(),
                body: Bytes::from(t.body().to_string()),
                write: !read_only,
                key: "",
            })
            .await?;
        parse_txn_result(&ans.json()?)
    }

    /// Sends an administrative request to the leader (membership, leader transfer, backup) and
    /// returns its JSON answer.
    async fn admin(
        &self,
        method: Method,
        path: String,
        body: Option<Value>,
    ) -> Result<Value, Error> {
        self.execute(Call {
            method,
            path,
            headers: Vec::new(),
            body: body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string())),
            write: true,
            key: "",
        })
        .await?
        .json()
    }

    /// Adds a member as a learner (it replicates but does not vote); returns every member.
    /// Promote it with [`Client::promote_member`] once it has caught up.
    pub async fn add_member(
        &self,
        id: u64,
        peer_addr: &str,
        http_addr: Option<&str>,
    ) -> Result<Vec<crate::types::Member>, Error> {
        let body = serde_json::json!({"id": id, "peer_addr": peer_addr, "http_addr": http_addr});
        let v = self
            .admin(Method::POST, "/v1/cluster/members".into(), Some(body))
            .await?;
        parse_members(&v)
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<Vec<crate::types::Member>, Error> {
        let path = format!("/v1/cluster/members/{id}/promote");
        parse_members(&self.admin(Method::POST, path, None).await?)
    }

    /// Removes a member (not the leader: transfer leadership first).
    pub async fn remove_member(&self, id: u64) -> Result<Vec<crate::types::Member>, Error> {
        let path = format!("/v1/cluster/members/{id}");
        parse_members(&self.admin(Method::DELETE, path, None).await?)
    }

    /// Every member, as the leader knows them.
    pub async fn list_members(&self) -> Result<Vec<crate::types::Member>, Error> {
        let path = "/v1/cluster/members".to_string();
        parse_members(&self.admin(Method::GET, path, None).await?)
    }

    /// Asks the leader for a consistent backup into `dir` (an absolute path on its machine that
    /// does not exist yet); returns the applied index the backup holds and the directory.
    pub async fn backup(&self, dir: &str) -> Result<(u64, String), Error> {
        let body = serde_json::json!({ "dir": dir });
        let v = self
            .admin(Method::POST, "/v1/admin/backup".into(), Some(body))
            .await?;
        Ok((
            field_u64(&v, "index")?,
            v["dir"].as_str().unwrap_or(dir).to_string(),
        ))
    }

    /// Hands leadership to `to` (or to the most up-to-date voter); returns the new leader.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<u64, Error> {
        let body = serde_json::json!({ "to": to });
        let v = self
            .admin(
                Method::POST,
                "/v1/cluster/transfer-leader".into(),
                Some(body),
            )
            .await?;
        let leader = field_u64(&v, "leader")?;
        self.inner.leader.store(leader, Ordering::Release);
        Ok(leader)
    }

    /// The status of the leader (or, if it cannot be reached, of any member).
    pub async fn status(&self) -> Result<Status, Error> {
        let ans = self
            .execute(Call {
                method: Method::GET,
                path: "/v1/status".into(),
                headers: Vec::new(),
                body: Bytes::new(),
                write: true,
                key: "",
            })
            .await?;
        serde_json::from_slice(&ans.body)
            .map_err(|e| Error::Unexpected(format!("invalid status ({e})")))
    }
}

fn parse_members(v: &Value) -> Result<Vec<crate::types::Member>, Error> {
    serde_json::from_value(v["members"].clone())
        .map_err(|e| Error::Unexpected(format!("invalid member list ({e}): {v}")))
}

fn strip_scheme(a: &str) -> String {
    a.strip_prefix("http://")
        .unwrap_or(a)
        .trim_end_matches('/')
        .to_string()
}

fn encode_key(key: &str) -> String {
    utf8_percent_encode(key, KEY_SET).to_string()
}

fn new_idempotency_key() -> String {
    let n: u128 = rand::thread_rng().gen();
    format!("kc-{n:032x}")
}

fn field_u64(v: &Value, name: &str) -> Result<u64, Error> {
    v[name]
        .as_u64()
        .ok_or_else(|| Error::Unexpected(format!("no {name} in {v}")))
}

fn acked(v: &Value) -> Result<Acked, Error> {
    serde_json::from_value(v["acked"].clone())
        .map_err(|_| Error::Unexpected(format!("no acked in {v}")))
}
