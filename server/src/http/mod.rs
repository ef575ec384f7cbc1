//! # http: the client API (v1) on hyper 1.x
//!
//! This stage owns the conversation with clients: the routing table (`routes.rs`), reading
//! requests (`request.rs`), the handlers per resource (`kv.rs`, `txn.rs`, `cluster.rs`,
//! `admin.rs`, `coord.rs` for leases and locks, `watch.rs` for the change feed), and the mapping
//! of every outcome to a status, headers and a JSON body or an event stream (`error.rs`,
//! `reply.rs`). The JSON shapes are keel-api's, shared with the client.
//!
//! Handlers are thin: they validate, build a [`Command`] or a read, hand writes to the
//! [`Router`] (which proposes or forwards) and reads to the Raft read path ([`NodeHandle`] for
//! the read index, [`StateMachine`] for the data), and turn the answer into a response. They
//! never touch the Ready loop's `RawNode`, the log, or RocksDB's write path.
//!
//! Every response carries `X-Keel-Node`, `X-Keel-Leader` (when known) and `X-Keel-Index`; every
//! error is `{"error": {"code", "message"}}`. HTTP's conventions hold: an unknown query parameter
//! is a 400, `HEAD` works wherever `GET` does (but on `/v1/watch`, which only streams), a read
//! with `If-None-Match` of the current version is a 304, and a 405 carries `Allow`.
//!
//! [`Command`]: crate::proto::Command

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use keel_api::{ErrorCode, WriteMode};
use rocksdb::DB;

use crate::forward::Router;
use crate::raft::NodeHandle;
use crate::sm::StateMachine;
use crate::transport::Transport;
use crate::watch::Feed;

mod admin;
pub mod auth;
mod cluster;
mod coord;
mod error;
mod kv;
mod observe;
#[cfg(test)]
mod proptests;
mod reply;
mod request;
mod routes;
mod serve;
mod txn;
mod watch;

pub use error::ApiError;
pub use reply::Body;
pub use request::decode_key;
pub use serve::serve;
pub use txn::parse_txn;

use auth::{Caller, Role, Tokens};
use reply::Answer;
use routes::Route;

/// Concurrent client connections per node, unless `--max-connections` says otherwise.
pub const MAX_CONNECTIONS: usize = 4096;
/// How long a client may take to send a request's headers, and how long an idle keep-alive
/// connection stays open: after it the connection is closed, so that slow or silent sockets
/// cannot hold the connection slots.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to send a small request's body once its headers are in; a
/// larger body gets one more second per [`MIN_BODY_RATE`] bytes of its length.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// The slowest upload rate accepted for a large body, in bytes per second.
pub const MIN_BODY_RATE: u64 = 64 * 1024;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiConfig {
    /// Largest value accepted.
    pub max_value_bytes: usize,
    /// Mode of writes that do not say.
    pub default_mode: WriteMode,
    /// Deadline of a write (proposal, forwarding, replication).
    pub request_timeout: Duration,
    /// How long a read may wait for a read index or for `min_index` to be applied.
    pub read_timeout: Duration,
    /// The only directory backups may be written under; None: backups are refused.
    pub backup_dir: Option<std::path::PathBuf>,
    /// The shortest lease granted (twice the election timeout): a lease asked for with less
    /// gets this.
    pub min_lease_ttl: Duration,
    /// Client connections served at once; one more is closed as soon as it is accepted.
    pub max_connections: usize,
}

/// What the API is built from.
pub struct Parts {
    /// Settings.
    pub cfg: ApiConfig,
    /// The Ready loop: read indexes, status, membership changes, published state.
    pub node: NodeHandle,
    /// Local reads.
    pub sm: StateMachine,
    /// Recent changes, for watches.
    pub feed: Arc<Feed>,
    /// The database, for backups.
    pub db: Arc<DB>,
    /// Where writes go.
    pub router: Arc<Router>,
    /// This node's advertised HTTP address.
    pub http_addr: String,
    /// The peer transport, for the HTTP addresses peers announce.
    pub transport: Transport,
    /// The tokens of `--auth-file`; None: every request is allowed.
    pub tokens: Option<Arc<Tokens>>,
}

/// What the handlers share.
pub struct Api {
    /// Settings.
    cfg: ApiConfig,
    /// The Ready loop.
    node: NodeHandle,
    /// Local reads.
    sm: StateMachine,
    /// Recent changes, for watches.
    feed: Arc<Feed>,
    /// The database, for backups.
    db: Arc<DB>,
    /// Where writes go.
    router: Arc<Router>,
    /// This node's advertised HTTP address (in member lists).
    http_addr: String,
    /// The HTTP addresses peers announced in their Hello.
    transport: Transport,
    /// Who may do what (None: everyone everything).
    tokens: Option<Arc<Tokens>>,
    /// When `/metrics` last counted leases and locks.
    coord_counted: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Api {
    /// Builds the API state.
    pub fn new(parts: Parts) -> Arc<Self> {
        Arc::new(Api {
            cfg: parts.cfg,
            node: parts.node,
            sm: parts.sm,
            feed: parts.feed,
            db: parts.db,
            router: parts.router,
            http_addr: parts.http_addr,
            transport: parts.transport,
            tokens: parts.tokens,
            coord_counted: std::sync::Mutex::new(None),
        })
    }

    /// Handles one request; never fails (errors become JSON answers).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<reply::Body> {
        let started = std::time::Instant::now();
        let head = req.method() == Method::HEAD;
        let labels = observe::Labels::of(req.method(), req.uri().path(), req.uri().query());
        let id = observe::request_id(req.headers());
        let cors = matches!(req.uri().path(), "/v1/status" | "/metrics")
            .then(|| self.member_origin(req.headers()))
            .flatten();
        // At debug level: a span per request costs the subscriber an allocation and a
        // formatting of the id on every request (5% of the read rate at info, measured); the
        // id travels with forwarded writes whatever the level (`forward::REQUEST_ID`).
        let span = tracing::debug_span!("request", request_id = id.to_str().unwrap_or_default());
        let answer = crate::forward::REQUEST_ID
            .scope(
                id.clone(),
                tracing::Instrument::instrument(self.route(req), span),
            )
            .await;
        let mut resp = reply::finish(answer, self.node.shared(), head);
        observe::set_request_id(resp.headers_mut(), id);
        if let Some(origin) = cors {
            // The dashboard of another member reads this node's status and metrics: allowed to
            // the members' own origins only (not to any page an operator has open).
            resp.headers_mut()
                .insert(hyper::header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            resp.headers_mut().insert(
                hyper::header::VARY,
                hyper::header::HeaderValue::from_static("Origin"),
            );
        }
        labels.record(resp.status(), started.elapsed());
        resp
    }

    /// The request's `Origin` when it is a member's client address (this node's or one a peer
    /// announced), over http or https.
    fn member_origin(&self, headers: &hyper::HeaderMap) -> Option<hyper::header::HeaderValue> {
        let origin = headers.get(hyper::header::ORIGIN)?;
        let text = origin.to_str().ok()?;
        let host = text
            .strip_prefix("http://")
            .or_else(|| text.strip_prefix("https://"))?;
        let known = host == self.http_addr
            || self
                .transport
                .peer_http_addrs()
                .values()
                .any(|a| a.as_str() == host);
        known.then(|| origin.clone())
    }

    /// Finds the endpoint, checks the method and the query, and calls the handler.
    async fn route(&self, req: Request<Incoming>) -> Answer {
        let (parts, body) = req.into_parts();
        let path = parts.uri.path();
        let Some(m) = routes::find(path) else {
            return Err(ApiError::new(
                ErrorCode::NoRoute,
                format!("no such endpoint: {path}"),
            ));
        };
        let caller = match (&self.tokens, m.route) {
            (None, _) | (_, Route::Health | Route::Ready | Route::Ui) => Caller::default(),
            (Some(t), _) => Caller(Some(t.authenticate(&parts.headers)?)),
        };
        let allowed = routes::methods(m.route, m.param);
        if !allowed.contains(&parts.method.as_str()) {
            let mut err = ApiError::method_not_allowed(&parts.method, allowed);
            if m.route == Route::Key && parts.method == Method::POST {
                err.body.error.message = "POST is only for /v1/kv/{key}/add".into();
            }
            return Err(err);
        }
        // HEAD is a GET without the body.
        let method = if parts.method == Method::HEAD {
            Method::GET
        } else {
            parts.method.clone()
        };
        let q = request::parse_query(
            parts.uri.query(),
            routes::params(m.route, &method),
            &routes::describe(m.route, &method),
        )?;
        let param = m.param.unwrap_or_default();
        // Roles by endpoint; the key-scoped ones are checked once the key is known.
        match m.route {
            Route::Health
            | Route::Ready
            | Route::Txn
            | Route::List
            | Route::Key
            | Route::Lock
            | Route::Watch
            | Route::Ui => {}
            Route::Leases | Route::Keepalive => caller.need(Role::Write)?,
            Route::Lease if method == Method::GET => caller.need(Role::Read)?,
            Route::Lease => caller.need(Role::Write)?,
            Route::Metrics | Route::Status => caller.need(Role::Read)?,
            Route::Members if method == Method::GET => caller.need(Role::Read)?,
            Route::Members
            | Route::Member
            | Route::Promote
            | Route::TransferLeader
            | Route::Backup
            | Route::Failpoint => caller.need(Role::Admin)?,
        }
        match (m.route, method) {
            (Route::Health, _) => self.health(),
            (Route::Ready, _) => self.ready(),
            (Route::Metrics, _) => Ok(self.metrics().await),
            (Route::Ui, _) => Ok(reply::Reply::bytes(
                bytes::Bytes::from_static(include_bytes!("ui/index.html")),
                "text/html; charset=utf-8",
                None,
            )),
            (Route::Status, _) => self.status().await,
            (Route::Members, Method::GET) => self.list_members().await,
            (Route::Members, _) => self.add_member(&parts.headers, body).await,
            (Route::Member, _) => self.remove_member(cluster::member_id(param)?).await,
            (Route::Promote, _) => self.promote_member(cluster::member_id(param)?).await,
            (Route::TransferLeader, _) => self.transfer_leader(&parts.headers, body).await,
            (Route::Backup, _) => self.backup(&parts.headers, body).await,
            (Route::Failpoint, method) => self.failpoint(&parts.headers, body, param, method).await,
            (Route::Txn, _) => self.txn(&parts.headers, body, q, &caller).await,
            (Route::Leases, _) => self.lease_grant(&parts.headers, body).await,
            (Route::Keepalive, _) => self.lease_keepalive(coord::lease_id(param)?).await,
            (Route::Lease, Method::GET) => self.lease_info(coord::lease_id(param)?).await,
            (Route::Lease, _) => self.lease_revoke(coord::lease_id(param)?, q).await,
            (Route::Lock, method) => {
                let name = request::decode_key(param)?;
                let role = if method == Method::GET {
                    Role::Read
                } else {
                    Role::Write
                };
                caller.need_key(role, &name)?;
                match method {
                    Method::GET => self.lock_get(name, q).await,
                    Method::POST => self.lock_acquire(&parts.headers, body, name).await,
                    _ => self.lock_release(name, q).await,
                }
            }
            (Route::Watch, _) => self.watch(&parts.headers, q, &caller),
            (Route::List, _) => {
                caller.need_prefix(Role::Read, q.prefix.as_deref().unwrap_or_default())?;
                self.list(q).await
            }
            (Route::Key, Method::POST) => {
                let raw = routes::add_target(param).unwrap_or(param);
                let key = request::decode_key(raw)?;
                caller.need_key(Role::Write, &key)?;
                self.add(&parts.headers, body, key, q).await
            }
            (Route::Key, method) => {
                let key = request::decode_key(param)?;
                let role = if method == Method::GET {
                    Role::Read
                } else {
                    Role::Write
                };
                caller.need_key(role, &key)?;
                match method {
                    Method::GET => self.get(&parts.headers, key, q).await,
                    Method::PUT => self.put(&parts.headers, body, key, q).await,
                    _ => self.delete(&parts.headers, key, q).await,
                }
            }
        }
    }
}
