//! The client HTTP API (v1) on hyper 1.x: routing, input validation, and the mapping of every
//! outcome and error to a status code and a JSON body.
//!
//! Handlers are thin: they validate, build a [`Command`] or a read, hand writes to the
//! [`Router`] (which proposes or forwards) and reads to the Raft read path, and turn the answer
//! into a response. Every response carries `X-Keel-Node`, `X-Keel-Leader` (when known) and
//! `X-Keel-Index`. Every error body is `{"error": {"code", "message"}}` plus, where useful,
//! extra fields (`index`, `committed`, `value`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use percent_encoding::percent_decode_str;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::error::{ReadError, WriteError};
use crate::forward::Router;
use crate::mode::{ReadConsistency, WriteMode};
use crate::proto::{
    command::Op, txn_step::Step, AddOp, ApplyResult, Command, Compare, CompareOp, CompareTarget,
    DeleteOp, GetOp, Precondition, PutOp, StepResult, TxnOp, TxnStep, ValueRecord,
};
use crate::raft_node::{NodeHandle, WriteOk};
use crate::state_machine::{codes, StateMachine};
use crate::storage::StorageError;

/// Longest key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 4096;
/// Largest JSON body of an `add`.
pub const MAX_ADD_BODY_BYTES: usize = 64 * 1024;
/// Largest JSON body of a transaction.
pub const MAX_TXN_BODY_BYTES: usize = 4 * 1024 * 1024;
/// Most compares, and most steps per branch, in one transaction.
pub const MAX_TXN_OPS: usize = 128;
/// Longest `Idempotency-Key`.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Default and largest page of a list.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Largest page of a list.
pub const MAX_LIST_LIMIT: usize = 10_000;
/// Concurrent client connections per node.
pub const MAX_CONNECTIONS: usize = 4096;
/// `Retry-After` seconds sent with 503.
const RETRY_AFTER_SECS: &str = "1";

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
}

/// What the handlers share.
pub struct Api {
    cfg: ApiConfig,
    node: NodeHandle,
    sm: StateMachine,
    router: Arc<Router>,
    http_addr: String,
    peer_http: Box<dyn Fn() -> std::collections::HashMap<u64, String> + Send + Sync>,
}

impl Api {
    /// Builds the API state. `peer_http` returns the client addresses learned from peers.
    pub fn new(
        cfg: ApiConfig,
        node: NodeHandle,
        sm: StateMachine,
        router: Arc<Router>,
        http_addr: String,
        peer_http: Box<dyn Fn() -> std::collections::HashMap<u64, String> + Send + Sync>,
    ) -> Arc<Self> {
        Arc::new(Api {
            cfg,
            node,
            sm,
            router,
            http_addr,
            peer_http,
        })
    }
}

/// How long a leadership transfer may take before the API answers 504.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);
/// A learner more entries behind the leader than this is not promoted.
const MAX_PROMOTE_LAG: u64 = 1000;

/// Body of `POST /v1/cluster/members`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddMemberBody {
    id: u64,
    peer_addr: String,
    #[serde(default)]
    http_addr: Option<String>,
}

/// Body of `POST /v1/admin/backup`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    dir: String,
}

/// Body of `POST /v1/cluster/transfer-leader`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TransferBody {
    #[serde(default)]
    to: Option<u64>,
}

/// Serves HTTP on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            warn!(%remote, "too many client connections; closing");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = service_fn(move |req| {
                let api = api.clone();
                async move { Ok::<_, Infallible>(api.handle(req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(%remote, error = %e, "http connection ended with an error");
            }
        });
    }
}

/// An error answer: status, stable code, message and optional extra fields.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    extra: Map<String, Value>,
    retry_after: bool,
    index: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            extra: Map::new(),
            retry_after: false,
            index: None,
        }
    }
    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_string(), value);
        self
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        let msg = e.to_string();
        match e {
            WriteError::NoLeader | WriteError::NotLeader(_) | WriteError::Dropped => {
                let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", msg);
                if e == WriteError::Dropped {
                    err.code = "not_applied";
                }
                err.retry_after = true;
                err
            }
            WriteError::OutcomeUnknown => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", msg)
            }
            WriteError::ReplicationTimeout { index } => {
                let mut err =
                    ApiError::new(StatusCode::GATEWAY_TIMEOUT, "replication_timeout", msg)
                        .with("index", json!(index))
                        .with("committed", json!(true));
                err.index = Some(index);
                err
            }
            WriteError::ShuttingDown => {
                let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", msg);
                err.retry_after = true;
                err
            }
        }
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        let msg = e.to_string();
        match e {
            ReadError::NoLeader => {
                let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no_leader", msg);
                err.retry_after = true;
                err
            }
            ReadError::Timeout(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "timeout", msg),
            ReadError::ShuttingDown => {
                let mut err = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", msg);
                err.retry_after = true;
                err
            }
        }
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "storage", e.to_string())
    }
}

/// A successful answer before the common headers are added.
struct Reply {
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    index: Option<u64>,
    etag: Option<u64>,
    /// The answer is the stored outcome of an earlier request with the same idempotency key.
    replayed: bool,
}

impl Reply {
    fn json(status: StatusCode, value: Value, index: Option<u64>) -> Self {
        Reply {
            status,
            body: Bytes::from(value.to_string()),
            content_type: "application/json",
            index,
            etag: None,
            replayed: false,
        }
    }

    fn write(value: Value, ok: &WriteOk) -> Self {
        let mut r = Reply::json(StatusCode::OK, value, Some(ok.result.index));
        r.replayed = ok.result.replayed;
        r
    }
}

type Answer = Result<Reply, ApiError>;

/// Parsed query string.
#[derive(Default)]
struct Query {
    mode: Option<WriteMode>,
    consistency: Option<ReadConsistency>,
    min_index: Option<u64>,
    prefix: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
}

fn parse_query(raw: Option<&str>) -> Result<Query, ApiError> {
    let mut q = Query::default();
    let Some(raw) = raw else { return Ok(q) };
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        match k.as_ref() {
            "mode" => {
                q.mode = Some(
                    v.parse()
                        .map_err(|e: String| ApiError::bad_request("invalid_mode", e))?,
                )
            }
            "consistency" => {
                q.consistency = Some(
                    v.parse()
                        .map_err(|e: String| ApiError::bad_request("invalid_consistency", e))?,
                )
            }
            "min_index" => {
                q.min_index = Some(v.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_parameter",
                        format!("min_index must be a non-negative integer, not {v:?}"),
                    )
                })?)
            }
            "limit" => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_parameter",
                        format!("limit must be a positive integer, not {v:?}"),
                    )
                })?;
                if n == 0 || n > MAX_LIST_LIMIT {
                    return Err(ApiError::bad_request(
                        "invalid_parameter",
                        format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
                    ));
                }
                q.limit = Some(n);
            }
            "prefix" => q.prefix = Some(v.into_owned()),
            "after" => q.after = Some(v.into_owned()),
            // Unknown parameters are ignored, as most HTTP APIs do.
            _ => {}
        }
    }
    Ok(q)
}

/// Decodes and validates a key taken from the path (still percent-encoded).
pub fn decode_key(raw: &str) -> Result<String, ApiError> {
    if raw.is_empty() {
        return Err(ApiError::bad_request("invalid_key", "the key is empty"));
    }
    // Each byte of a key takes at most 3 characters encoded: reject longer paths before decoding.
    if raw.len() > 3 * MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("the key is longer than {MAX_KEY_BYTES} bytes"),
        ));
    }
    let bytes: Vec<u8> = percent_decode_str(raw).collect();
    if bytes.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!(
                "the key is {} bytes; the limit is {MAX_KEY_BYTES}",
                bytes.len()
            ),
        ));
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("invalid_key", "the key is not valid UTF-8"))
}

fn validate_text_param(name: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_parameter",
            format!("{name} is longer than {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Reads a whole body, refusing (413) anything over `limit` before it is read whole.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    };
    if let Some(len) = req.headers().get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid_header", "bad Content-Length"))?;
        if len > limit as u64 {
            return Err(too_large());
        }
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(ApiError::bad_request(
            "invalid_body",
            format!("cannot read the body: {e}"),
        )),
    }
}

/// Parses `If-Match` / `If-None-Match` into a precondition.
fn precondition(req: &Request<Incoming>) -> Result<Option<Precondition>, ApiError> {
    let mut pre = Precondition::default();
    let mut any = false;
    if let Some(v) = req.headers().get("if-match") {
        let s = v
            .to_str()
            .map_err(|_| ApiError::bad_request("invalid_header", "If-Match is not ASCII"))?
            .trim();
        if s == "*" {
            pre.if_exists = true;
        } else {
            let inner = s
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(s);
            pre.if_version = Some(inner.parse().map_err(|_| {
                ApiError::bad_request(
                    "invalid_header",
                    format!("If-Match must be \"<version>\" or *, not {s:?}"),
                )
            })?);
        }
        any = true;
    }
    if let Some(v) = req.headers().get("if-none-match") {
        if v.as_bytes().trim_ascii() != b"*" {
            return Err(ApiError::bad_request(
                "invalid_header",
                "If-None-Match supports only * (create if absent)",
            ));
        }
        pre.if_absent = true;
        any = true;
    }
    Ok(any.then_some(pre))
}

/// Body of `POST /v1/kv/{key}/add`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    delta: i64,
    #[serde(default)]
    min: Option<i64>,
    #[serde(default)]
    max: Option<i64>,
}

fn record_json(key: &str, rec: &ValueRecord) -> Value {
    let mut item = Map::new();
    item.insert("key".into(), json!(key));
    put_value_json(&mut item, &rec.value);
    item.insert("version".into(), json!(rec.version));
    Value::Object(item)
}

impl Api {
    /// Handles one request; never fails (errors become JSON answers).
    pub async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let answer = self.route(req).await;
        self.finish(answer)
    }

    async fn route(&self, req: Request<Incoming>) -> Answer {
        let path = req.uri().path().to_string();
        let method = req.method().clone();
        let query = parse_query(req.uri().query())?;
        match path.as_str() {
            "/health" => self
                .only(&method, &[Method::GET])
                .map(|_| Reply::json(StatusCode::OK, json!({"status": "ok"}), None)),
            "/ready" => {
                self.only(&method, &[Method::GET])?;
                self.ready()
            }
            "/metrics" => {
                self.only(&method, &[Method::GET])?;
                Ok(self.metrics())
            }
            "/v1/status" => {
                self.only(&method, &[Method::GET])?;
                self.status().await
            }
            "/v1/cluster/members" => match method {
                Method::GET => self.list_members().await,
                Method::POST => self.add_member(req).await,
                _ => Err(ApiError::new(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                    format!("{method} is not allowed here"),
                )),
            },
            "/v1/admin/backup" => {
                self.only(&method, &[Method::POST])?;
                self.backup(req).await
            }
            "/v1/cluster/transfer-leader" => {
                self.only(&method, &[Method::POST])?;
                self.transfer_leader(req).await
            }
            p if p.starts_with("/v1/cluster/members/") => {
                let rest = &p["/v1/cluster/members/".len()..];
                let (id, action) = match rest.split_once('/') {
                    Some((id, action)) => (id, Some(action)),
                    None => (rest, None),
                };
                let id: u64 = id.parse().map_err(|_| {
                    ApiError::bad_request("invalid_member", format!("bad member id {id:?}"))
                })?;
                match (method.clone(), action) {
                    (Method::POST, Some("promote")) => self.promote_member(id).await,
                    (Method::DELETE, None) => self.remove_member(id).await,
                    _ => Err(ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        format!("{method} {path} is not a member operation"),
                    )),
                }
            }
            "/v1/txn" => {
                self.only(&method, &[Method::POST])?;
                self.txn(req, query).await
            }
            "/v1/kv" | "/v1/kv/" => {
                self.only(&method, &[Method::GET])?;
                self.list(query).await
            }
            p if p.starts_with("/v1/kv/") => {
                let rest = &p["/v1/kv/".len()..];
                if method == Method::POST {
                    let Some(raw_key) = rest.strip_suffix("/add") else {
                        return Err(ApiError::new(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "method_not_allowed",
                            "POST is only for /v1/kv/{key}/add",
                        ));
                    };
                    let key = decode_key(raw_key)?;
                    return self.add(req, key, query).await;
                }
                let key = decode_key(rest)?;
                match method {
                    Method::GET => self.get(key, query).await,
                    Method::PUT => self.put(req, key, query).await,
                    Method::DELETE => self.delete(req, key, query).await,
                    _ => Err(ApiError::new(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        format!("{method} is not allowed on a key"),
                    )),
                }
            }
            _ => Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_route",
                format!("no such endpoint: {path}"),
            )),
        }
    }

    fn only(&self, method: &Method, allowed: &[Method]) -> Result<(), ApiError> {
        if allowed.contains(method) {
            Ok(())
        } else {
            Err(ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed here"),
            ))
        }
    }

    fn finish(&self, answer: Answer) -> Response<Full<Bytes>> {
        let shared = self.node.shared();
        let (mut resp, index) = match answer {
            Ok(reply) => {
                let mut resp = Response::new(Full::new(reply.body));
                *resp.status_mut() = reply.status;
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(reply.content_type));
                if let Some(v) = reply.etag {
                    if let Ok(h) = HeaderValue::from_str(&format!("\"{v}\"")) {
                        resp.headers_mut().insert("etag", h);
                    }
                }
                if reply.replayed {
                    resp.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                }
                (resp, reply.index)
            }
            Err(err) => {
                let mut body = err.extra;
                body.insert(
                    "error".into(),
                    json!({"code": err.code, "message": err.message}),
                );
                let mut resp =
                    Response::new(Full::new(Bytes::from(Value::Object(body).to_string())));
                *resp.status_mut() = err.status;
                resp.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                if err.retry_after {
                    resp.headers_mut()
                        .insert("retry-after", HeaderValue::from_static(RETRY_AFTER_SECS));
                }
                (resp, err.index)
            }
        };
        let headers = resp.headers_mut();
        headers.insert("x-keel-node", HeaderValue::from(shared.id()));
        if let Some(leader) = shared.leader() {
            headers.insert("x-keel-leader", HeaderValue::from(leader));
        }
        headers.insert(
            "x-keel-index",
            HeaderValue::from(index.unwrap_or_else(|| shared.applied())),
        );
        resp
    }

    fn ready(&self) -> Answer {
        let shared = self.node.shared();
        let applied = shared.applied();
        let commit = shared.commit();
        match shared.leader() {
            Some(leader) if applied >= commit && !shared.stopped() => Ok(Reply::json(
                StatusCode::OK,
                json!({"ready": true, "leader": leader, "applied_index": applied}),
                None,
            )),
            leader => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                format!("leader: {leader:?}, applied {applied} of commit {commit}"),
            )),
        }
    }

    fn metrics(&self) -> Reply {
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
            u8::from(s.role() == crate::raft_node::Role::Leader),
            u8::from(s.leader().is_some()),
        );
        Reply {
            status: StatusCode::OK,
            body: Bytes::from(text),
            content_type: "text/plain; version=0.0.4",
            index: None,
            etag: None,
            replayed: false,
        }
    }

    async fn report(&self) -> Result<crate::raft_node::StatusReport, ApiError> {
        self.node.status().await.ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the node is stopping",
            )
        })
    }

    /// Every member with its addresses and role, as this node knows them.
    fn members_json(&self, report: &crate::raft_node::StatusReport) -> Vec<Value> {
        let learned = (self.peer_http)();
        report
            .addresses
            .iter()
            .map(|(id, addr)| {
                let http = if *id == report.id {
                    Some(self.http_addr.clone())
                } else {
                    learned.get(id).cloned().or_else(|| addr.http_addr.clone())
                };
                let role = if report.voters.contains(id) {
                    "voter"
                } else if report.learners.contains(id) {
                    "learner"
                } else {
                    "joining"
                };
                json!({"id": id, "peer_addr": addr.peer_addr, "http_addr": http, "role": role})
            })
            .collect()
    }

    async fn status(&self) -> Answer {
        let report = self.report().await?;
        let members = self.members_json(&report);
        let mut v = serde_json::to_value(&report).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
        })?;
        if let Value::Object(m) = &mut v {
            m.insert("members".into(), Value::Array(members));
        }
        Ok(Reply::json(StatusCode::OK, v, Some(report.applied_index)))
    }

    async fn list_members(&self) -> Answer {
        let report = self.report().await?;
        Ok(Reply::json(
            StatusCode::OK,
            json!({"members": self.members_json(&report), "leader": report.leader}),
            Some(report.applied_index),
        ))
    }

    /// Proposes one membership change here (the leader) and answers with the members after it.
    async fn change_membership(
        &self,
        change: raft::eraftpb::ConfChangeType,
        id: u64,
        context: Vec<u8>,
    ) -> Answer {
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(change);
        single.node_id = id;
        let mut cc = raft::eraftpb::ConfChangeV2::default();
        cc.mut_changes().push(single);
        let ok = match tokio::time::timeout(
            self.cfg.request_timeout,
            self.node.propose_conf_change(cc, context),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(WriteError::OutcomeUnknown.into()),
        };
        let r = rejected(&ok.result)?;
        let report = self.report().await?;
        Ok(Reply::json(
            StatusCode::OK,
            json!({"index": r.index, "members": self.members_json(&report)}),
            Some(r.index),
        ))
    }

    fn require_leader(&self, report: &crate::raft_node::StatusReport) -> Result<(), ApiError> {
        if report.role == crate::raft_node::Role::Leader {
            return Ok(());
        }
        Err(match report.leader {
            Some(l) => WriteError::NotLeader(l),
            None => WriteError::NoLeader,
        }
        .into())
    }

    async fn add_member(&self, req: Request<Incoming>) -> Answer {
        let body = read_body(req, MAX_ADD_BODY_BYTES).await?;
        let b: AddMemberBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("expected {{\"id\": u64, \"peer_addr\": \"host:port\", \"http_addr\"?: \"host:port\"}}: {e}"),
            )
        })?;
        if b.id == 0 || !b.peer_addr.contains(':') {
            return Err(ApiError::bad_request(
                "invalid_member",
                "the id must be at least 1 and peer_addr must be host:port",
            ));
        }
        let report = self.report().await?;
        self.require_leader(&report)?;
        if report.addresses.contains_key(&b.id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "member_exists",
                format!("member {} already exists", b.id),
            ));
        }
        let context = serde_json::to_vec(&crate::members::JoinContext {
            id: b.id,
            addr: crate::members::MemberAddr {
                peer_addr: b.peer_addr,
                http_addr: b.http_addr,
            },
        })
        .unwrap_or_default();
        self.change_membership(raft::eraftpb::ConfChangeType::AddLearnerNode, b.id, context)
            .await
    }

    async fn promote_member(&self, id: u64) -> Answer {
        let report = self.report().await?;
        self.require_leader(&report)?;
        if !report.learners.contains(&id) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_a_learner",
                format!("member {id} is not a learner"),
            ));
        }
        let lag = report
            .progress
            .iter()
            .flatten()
            .find(|p| p.id == id && p.reachable && p.match_index > 0)
            .map_or(u64::MAX, |p| {
                report.commit_index.saturating_sub(p.match_index)
            });
        if lag > MAX_PROMOTE_LAG {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "learner_behind",
                if lag == u64::MAX {
                    format!(
                        "learner {id} has not caught up yet (unreachable or nothing replicated)"
                    )
                } else {
                    format!(
                        "learner {id} is {lag} entries behind; promote it once it has caught up"
                    )
                },
            ));
        }
        self.change_membership(raft::eraftpb::ConfChangeType::AddNode, id, Vec::new())
            .await
    }

    async fn remove_member(&self, id: u64) -> Answer {
        let report = self.report().await?;
        self.require_leader(&report)?;
        if !report.addresses.contains_key(&id) {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "no_such_member",
                format!("member {id} does not exist"),
            ));
        }
        if id == report.id {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "is_leader",
                "member is the leader: transfer leadership first (POST /v1/cluster/transfer-leader)",
            ));
        }
        self.change_membership(raft::eraftpb::ConfChangeType::RemoveNode, id, Vec::new())
            .await
    }

    /// A consistent checkpoint of this node, taken once it has applied everything acknowledged
    /// before the request (a linearizable barrier), into a directory on this node's machine.
    async fn backup(&self, req: Request<Incoming>) -> Answer {
        let body = read_body(req, MAX_ADD_BODY_BYTES).await?;
        let b: BackupBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("expected {{\"dir\": \"/path\"}}: {e}"),
            )
        })?;
        let dir = std::path::PathBuf::from(&b.dir);
        if !dir.is_absolute() || dir.exists() {
            return Err(ApiError::bad_request(
                "invalid_dir",
                "dir must be an absolute path that does not exist yet",
            ));
        }
        self.read_barrier(&Query::default()).await?;
        let sm = self.sm.clone();
        let (index, term) = tokio::task::spawn_blocking(move || sm.checkpoint(&dir))
            .await
            .map_err(|e| {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            })??;
        Ok(Reply::json(
            StatusCode::OK,
            json!({"index": index, "term": term, "dir": b.dir}),
            Some(index),
        ))
    }

    async fn transfer_leader(&self, req: Request<Incoming>) -> Answer {
        let body = read_body(req, MAX_ADD_BODY_BYTES).await?;
        let b: TransferBody = if body.is_empty() {
            TransferBody::default()
        } else {
            serde_json::from_slice(&body).map_err(|e| {
                ApiError::bad_request("invalid_json", format!("expected {{\"to\"?: u64}}: {e}"))
            })?
        };
        let report = self.report().await?;
        self.require_leader(&report)?;
        let target = match b.to {
            Some(to) if to == report.id => {
                return Ok(Reply::json(StatusCode::OK, json!({"leader": to}), None))
            }
            Some(to) if report.voters.contains(&to) => to,
            Some(to) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "not_a_voter",
                    format!("member {to} is not a voter"),
                ))
            }
            None => best_successor(&report).ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "no_successor",
                    "no other voter to lead",
                )
            })?,
        };
        self.node
            .send(crate::raft_node::Event::TransferLeader(target));
        let moved = self
            .node
            .shared()
            .wait_leader(TRANSFER_WAIT, |l| l == Some(target))
            .await;
        if !moved {
            return Err(ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "timeout",
                format!(
                    "leadership did not move to {target} within {} s",
                    TRANSFER_WAIT.as_secs()
                ),
            ));
        }
        Ok(Reply::json(StatusCode::OK, json!({"leader": target}), None))
    }

    /// Waits until this node may serve a read at the requested consistency.
    async fn read_barrier(&self, q: &Query) -> Result<(), ApiError> {
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

    async fn get(&self, key: String, q: Query) -> Answer {
        self.read_barrier(&q).await?;
        // The applied index first: the value read after it reflects at least that index.
        let index = self.node.shared().applied();
        match self.sm.get_value(&key)? {
            Some(rec) => Ok(Reply {
                status: StatusCode::OK,
                body: rec.value,
                content_type: "application/octet-stream",
                index: Some(index),
                etag: Some(rec.version),
                replayed: false,
            }),
            None => {
                let mut err = ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no such key: {key:?}"),
                );
                err.index = Some(index);
                Err(err)
            }
        }
    }

    async fn list(&self, q: Query) -> Answer {
        let prefix = q.prefix.clone().unwrap_or_default();
        validate_text_param("prefix", &prefix)?;
        if let Some(a) = &q.after {
            validate_text_param("after", a)?;
        }
        self.read_barrier(&q).await?;
        let limit = q.limit.unwrap_or(DEFAULT_LIST_LIMIT);
        let read = self.sm.list(&prefix, q.after.as_deref(), limit)?;
        let items: Vec<Value> = read
            .value
            .items
            .iter()
            .map(|(k, rec)| record_json(k, rec))
            .collect();
        Ok(Reply::json(
            StatusCode::OK,
            json!({"items": items, "index": read.index, "more": read.value.more}),
            Some(read.index),
        ))
    }

    async fn write(&self, op: Op, q: &Query, idempotency_key: String) -> Result<WriteOk, ApiError> {
        let mode = q.mode.unwrap_or(self.cfg.default_mode);
        let command = Command {
            op: Some(op),
            idempotency_key,
            proposed_at_ms: 0,
        };
        Ok(self
            .router
            .write(command, mode, self.cfg.request_timeout)
            .await?)
    }

    async fn put(&self, req: Request<Incoming>, key: String, q: Query) -> Answer {
        let precondition = precondition(&req)?;
        let idem = idempotency_key(&req)?;
        let value = read_body(req, self.cfg.max_value_bytes).await?;
        let ok = self
            .write(
                Op::Put(PutOp {
                    key,
                    value,
                    precondition,
                }),
                &q,
                idem,
            )
            .await?;
        let r = rejected(&ok.result)?;
        Ok(Reply::write(
            json!({"index": r.index, "version": r.version, "acked": ok.acked.as_str()}),
            &ok,
        ))
    }

    async fn delete(&self, req: Request<Incoming>, key: String, q: Query) -> Answer {
        let precondition = precondition(&req)?;
        let idem = idempotency_key(&req)?;
        let ok = self
            .write(Op::Delete(DeleteOp { key, precondition }), &q, idem)
            .await?;
        let r = rejected(&ok.result)?;
        Ok(Reply::write(
            json!({"index": r.index, "deleted": r.deleted, "acked": ok.acked.as_str()}),
            &ok,
        ))
    }

    async fn add(&self, req: Request<Incoming>, key: String, q: Query) -> Answer {
        let idem = idempotency_key(&req)?;
        let body = read_body(req, MAX_ADD_BODY_BYTES).await?;
        let b: AddBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("expected {{\"delta\": i64, \"min\"?: i64, \"max\"?: i64}}: {e}"),
            )
        })?;
        let ok = self
            .write(
                Op::Add(AddOp {
                    key,
                    delta: b.delta,
                    min: b.min,
                    max: b.max,
                }),
                &q,
                idem,
            )
            .await?;
        let r = rejected(&ok.result)?;
        Ok(Reply::write(
            json!({"value": r.value, "index": r.index, "version": r.version, "acked": ok.acked.as_str()}),
            &ok,
        ))
    }

    async fn txn(&self, req: Request<Incoming>, q: Query) -> Answer {
        let idem = idempotency_key(&req)?;
        let body = read_body(req, MAX_TXN_BODY_BYTES).await?;
        let txn = parse_txn(&body, self.cfg.max_value_bytes)?;
        let read_only = txn
            .success
            .iter()
            .chain(txn.failure.iter())
            .all(|s| matches!(s.step, Some(Step::Get(_))));
        if read_only && idem.is_empty() {
            // Compares and gets only: served like a read, at the requested consistency, from one
            // snapshot; nothing goes through the log.
            self.read_barrier(&q).await?;
            let read = self.sm.read_txn(&txn)?;
            let r = rejected(&read.value)?;
            return Ok(Reply::json(
                StatusCode::OK,
                json!({"succeeded": r.succeeded, "results": step_results_json(&r.results), "index": read.index}),
                Some(read.index),
            ));
        }
        let ok = self.write(Op::Txn(txn), &q, idem).await?;
        let r = rejected(&ok.result)?;
        Ok(Reply::write(
            json!({
                "succeeded": r.succeeded,
                "results": step_results_json(&r.results),
                "index": r.index,
                "acked": ok.acked.as_str(),
            }),
            &ok,
        ))
    }
}

/// Parses and validates the body of `POST /v1/txn`.
pub fn parse_txn(body: &[u8], max_value_bytes: usize) -> Result<TxnOp, ApiError> {
    let parsed: TxnBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid transaction: {e}")))?;
    parsed.into_txn(max_value_bytes)
}

/// Reads and validates the `Idempotency-Key` header (empty when absent).
fn idempotency_key(req: &Request<Incoming>) -> Result<String, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(String::new());
    };
    let s = v.to_str().map_err(|_| {
        ApiError::bad_request("invalid_header", "Idempotency-Key must be visible ASCII")
    })?;
    if s.is_empty()
        || s.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !s.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(ApiError::bad_request(
            "invalid_header",
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
            ),
        ));
    }
    Ok(s.to_string())
}

/// JSON of a value: a string when UTF-8, else null plus `value_base64`.
fn put_value_json(item: &mut Map<String, Value>, value: &[u8]) {
    match std::str::from_utf8(value) {
        Ok(s) => {
            item.insert("value".into(), json!(s));
        }
        Err(_) => {
            item.insert("value".into(), Value::Null);
            item.insert(
                "value_base64".into(),
                json!(base64::engine::general_purpose::STANDARD.encode(value)),
            );
        }
    }
}

fn step_results_json(results: &[StepResult]) -> Vec<Value> {
    results
        .iter()
        .map(|r| {
            let mut item = Map::new();
            item.insert("op".into(), json!(r.kind));
            item.insert("key".into(), json!(r.key));
            match r.kind.as_str() {
                "get" => {
                    item.insert("found".into(), json!(r.found));
                    if r.found {
                        put_value_json(&mut item, &r.value);
                        item.insert("version".into(), json!(r.version));
                    }
                }
                "delete" => {
                    item.insert("deleted".into(), json!(r.deleted));
                }
                "add" => {
                    item.insert("value".into(), json!(r.int));
                    item.insert("version".into(), json!(r.version));
                }
                _ => {
                    item.insert("version".into(), json!(r.version));
                }
            }
            Value::Object(item)
        })
        .collect()
}

/// Body of `POST /v1/txn`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    #[serde(default)]
    compare: Vec<CompareJson>,
    #[serde(default)]
    success: Vec<StepJson>,
    #[serde(default)]
    failure: Vec<StepJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareJson {
    key: String,
    target: String,
    op: String,
    value: Value,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
enum StepJson {
    Put {
        key: String,
        value: String,
    },
    Delete {
        key: String,
    },
    Get {
        key: String,
    },
    Add {
        key: String,
        delta: i64,
        #[serde(default)]
        min: Option<i64>,
        #[serde(default)]
        max: Option<i64>,
    },
}

fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::bad_request(
            "invalid_key",
            format!("keys must be 1 to {MAX_KEY_BYTES} bytes, not {}", key.len()),
        ));
    }
    Ok(())
}

impl TxnBody {
    fn into_txn(self, max_value_bytes: usize) -> Result<TxnOp, ApiError> {
        for (what, n) in [
            ("compare", self.compare.len()),
            ("success", self.success.len()),
            ("failure", self.failure.len()),
        ] {
            if n > MAX_TXN_OPS {
                return Err(ApiError::bad_request(
                    "txn_too_large",
                    format!("{what} has {n} entries; a transaction allows at most {MAX_TXN_OPS} per list"),
                ));
            }
        }
        let compare = self
            .compare
            .into_iter()
            .map(CompareJson::into_compare)
            .collect::<Result<Vec<_>, _>>()?;
        let steps = |list: Vec<StepJson>| {
            list.into_iter()
                .map(|s| s.into_step(max_value_bytes))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(TxnOp {
            compare,
            success: steps(self.success)?,
            failure: steps(self.failure)?,
        })
    }
}

impl CompareJson {
    fn into_compare(self) -> Result<Compare, ApiError> {
        validate_key(&self.key)?;
        let bad = |m: String| ApiError::bad_request("invalid_txn", m);
        let op = match self.op.as_str() {
            "==" => CompareOp::Eq,
            "!=" => CompareOp::Ne,
            "<" => CompareOp::Lt,
            "<=" => CompareOp::Le,
            ">" => CompareOp::Gt,
            ">=" => CompareOp::Ge,
            other => {
                return Err(bad(format!(
                    "unknown compare op {other:?}: expected == != < <= > >="
                )))
            }
        };
        let mut c = Compare {
            key: self.key,
            op: op as i32,
            ..Default::default()
        };
        match self.target.as_str() {
            "value" => {
                let v = self
                    .value
                    .as_str()
                    .ok_or_else(|| bad("a value compare needs a string".into()))?;
                c.target = CompareTarget::Value as i32;
                c.value = Bytes::from(v.to_string());
            }
            "version" => {
                c.target = CompareTarget::Version as i32;
                c.version = self
                    .value
                    .as_u64()
                    .ok_or_else(|| bad("a version compare needs a non-negative integer".into()))?;
            }
            "int" => {
                c.target = CompareTarget::Int as i32;
                c.int = self
                    .value
                    .as_i64()
                    .ok_or_else(|| bad("an int compare needs an integer".into()))?;
            }
            other => {
                return Err(bad(format!(
                    "unknown compare target {other:?}: expected value, version or int"
                )))
            }
        }
        Ok(c)
    }
}

impl StepJson {
    fn into_step(self, max_value_bytes: usize) -> Result<TxnStep, ApiError> {
        let step = match self {
            StepJson::Put { key, value } => {
                validate_key(&key)?;
                if value.len() > max_value_bytes {
                    return Err(ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("the value of {key:?} is larger than {max_value_bytes} bytes"),
                    ));
                }
                Step::Put(PutOp {
                    key,
                    value: Bytes::from(value),
                    precondition: None,
                })
            }
            StepJson::Delete { key } => {
                validate_key(&key)?;
                Step::Delete(DeleteOp {
                    key,
                    precondition: None,
                })
            }
            StepJson::Get { key } => {
                validate_key(&key)?;
                Step::Get(GetOp { key })
            }
            StepJson::Add {
                key,
                delta,
                min,
                max,
            } => {
                validate_key(&key)?;
                Step::Add(AddOp {
                    key,
                    delta,
                    min,
                    max,
                })
            }
        };
        Ok(TxnStep { step: Some(step) })
    }
}

/// The voter (other than the leader) best placed to lead next: reachable first, then the
/// highest match index.
pub fn best_successor(report: &crate::raft_node::StatusReport) -> Option<u64> {
    report
        .progress
        .iter()
        .flatten()
        .filter(|p| p.voter && p.id != report.id)
        .max_by_key(|p| (p.reachable, p.match_index))
        .map(|p| p.id)
}

/// Turns a deterministic rejection into its HTTP error; passes successes through.
fn rejected(r: &ApplyResult) -> Result<&ApplyResult, ApiError> {
    if r.is_ok() {
        return Ok(r);
    }
    let mut err = match r.error_code.as_str() {
        codes::PRECONDITION_FAILED => ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            codes::PRECONDITION_FAILED,
            r.error_message.clone(),
        ),
        codes::BOUND_VIOLATED => ApiError::new(
            StatusCode::CONFLICT,
            codes::BOUND_VIOLATED,
            r.error_message.clone(),
        )
        .with("value", json!(r.value)),
        codes::NOT_INTEGER => ApiError::bad_request(codes::NOT_INTEGER, r.error_message.clone()),
        codes::IDEMPOTENCY_KEY_REUSED => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            codes::IDEMPOTENCY_KEY_REUSED,
            r.error_message.clone(),
        ),
        _ => ApiError::bad_request("invalid_command", r.error_message.clone()),
    };
    if !r.error_key.is_empty() {
        err = err.with("key", json!(r.error_key));
    }
    err = err.with("index", json!(r.index));
    err.index = Some(r.index);
    Err(err)
}
