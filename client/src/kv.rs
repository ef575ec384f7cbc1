//! The key-value calls: get, put, compare-and-set, delete, add, list, and transactions.

use bytes::Bytes;
use keel_api::kv::{AddRequest, AddResponse, DeleteResponse, ListResponse, PutResponse};
use keel_api::txn::TxnResponse;

use crate::client::{encode_key, Call, Client};
use crate::error::Error;
use crate::txn::TxnBuilder;
use crate::types::{AddResult, Consistency, DeleteResult, KeyValue, ListPage, Mode, PutResult};

/// Options of a put.
#[derive(Clone, Debug, Default)]
pub struct PutOptions {
    /// Write mode (None: the client's default).
    mode: Option<Mode>,
    /// `If-Match: "<version>"`.
    if_version: Option<u64>,
    /// `If-None-Match: *`.
    if_absent: bool,
    /// `If-Fence: <lock>=<fence>`.
    fence: Option<(String, u64)>,
    /// `?lease=`: the key lives as long as this lease.
    lease: Option<u64>,
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
    /// Only if the guard's lock is still held with the guard's fence (checked by the state
    /// machine, atomically with the write): a holder that lost its lock while paused cannot
    /// write any more ([`Error::FenceRejected`]).
    pub fn fence(mut self, guard: &crate::LockGuard) -> Self {
        self.fence = Some((guard.name.clone(), guard.fence));
        self
    }
    /// `If-Fence` with a lock name and fence given directly.
    pub fn fence_raw(mut self, name: &str, fence: u64) -> Self {
        self.fence = Some((name.to_string(), fence));
        self
    }
    /// The key lives as long as this lease (it is deleted when the lease ends).
    pub fn lease(mut self, lease: &crate::Lease) -> Self {
        self.lease = Some(lease.id());
        self
    }
}

impl Client {
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
                method: "GET",
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
        if let Some((name, fence)) = &opts.fence {
            headers.push((keel_api::coord::IF_FENCE, format!("{name}={fence}")));
        }
        let mode = opts.mode.unwrap_or(self.inner.mode);
        let lease = opts
            .lease
            .map(|l| format!("&lease={l}"))
            .unwrap_or_default();
        let ans = self
            .execute(Call {
                method: "PUT",
                path: format!("/v1/kv/{}?mode={}{lease}", encode_key(key), mode.as_str()),
                headers,
                body: value.into(),
                write: true,
                key,
            })
            .await?;
        let r: PutResponse = ans.json()?;
        Ok(PutResult {
            index: r.index,
            version: r.version,
            acked: r.acked,
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
                method: "DELETE",
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
        let r: DeleteResponse = ans.json()?;
        Ok(DeleteResult {
            index: r.index,
            deleted: r.deleted,
            acked: r.acked,
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
        let body = serde_json::to_vec(&AddRequest { delta, min, max })
            .map_err(|e| Error::Unexpected(e.to_string()))?;
        let ans = self
            .execute(Call {
                method: "POST",
                path: format!(
                    "/v1/kv/{}/add?mode={}",
                    encode_key(key),
                    self.inner.mode.as_str()
                ),
                headers: Vec::new(),
                body: Bytes::from(body),
                write: true,
                key,
            })
            .await?;
        let r: AddResponse = ans.json()?;
        Ok(AddResult {
            value: r.value,
            index: r.index,
            version: r.version,
            acked: r.acked,
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
                method: "GET",
                path,
                headers: Vec::new(),
                body: Bytes::new(),
                write: false,
                key: prefix,
            })
            .await?;
        let page: ListResponse = ans.json()?;
        let items = page
            .items
            .into_iter()
            .map(|i| {
                let value = i.value.to_bytes().ok_or_else(|| {
                    Error::Unexpected(format!("invalid base64 value of {:?}", i.key))
                })?;
                Ok(KeyValue {
                    key: i.key,
                    value: Bytes::from(value),
                    version: i.version,
                    index: page.index,
                    served_by: ans.node,
                })
            })
            .collect::<Result<_, Error>>()?;
        Ok(ListPage {
            items,
            index: page.index,
            more: page.more,
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

    pub(crate) async fn commit_txn(&self, t: TxnBuilder<'_>) -> Result<TxnResponse, Error> {
        let req = t.into_request();
        let read_only = req.is_read_only();
        let path = if read_only {
            format!("/v1/txn?{}", self.read_query(self.inner.consistency))
        } else {
            format!("/v1/txn?mode={}", self.inner.mode.as_str())
        };
        let body = serde_json::to_vec(&req).map_err(|e| Error::Unexpected(e.to_string()))?;
        let ans = self
            .execute(Call {
                method: "POST",
                path,
                headers: Vec::new(),
                body: Bytes::from(body),
                write: !read_only,
                key: "",
            })
            .await?;
        ans.json()
    }
}
