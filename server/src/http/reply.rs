//! Turning an answer into a response: the common `X-Keel-*` headers on every one, `ETag`,
//! `Idempotent-Replayed`, `Retry-After`, `WWW-Authenticate` and `Allow` where they belong, the JSON error body, and
//! the HTTP rules for `HEAD` (the headers of a `GET`, no body) and `304 Not Modified`.

use std::convert::Infallible;
use std::pin::Pin;

use bytes::Bytes;
use futures::Stream;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::header::{
    HeaderName, HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use hyper::{Response, StatusCode};
use keel_api::{headers, ErrorCode};
use serde::Serialize;

use super::error::ApiError;
use crate::raft::{Shared, WriteOk};
use crate::watch::Watcher;

/// A streamed body: the events of a watch.
pub type EventStream =
    StreamBody<Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>>>;
/// The body of every response: whole, or a stream of events.
pub type Body = Either<Full<Bytes>, EventStream>;

/// A watcher to stream as the body of a reply.
pub struct Streamed(pub Box<Watcher>);

impl std::fmt::Debug for Streamed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Streamed")
    }
}

/// keel's own header names, built once. Inserting a header by a `&str` name that is not one of
/// HTTP's standard ones parses the name and allocates a copy of it on every response: with the
/// three on every answer and `X-Request-Id`, 7–9% of a node's CPU serving stale reads
/// (docs/benchmarks.md, tenth session).
const NODE: HeaderName = HeaderName::from_static(headers::NODE);
const LEADER: HeaderName = HeaderName::from_static(headers::LEADER);
const INDEX: HeaderName = HeaderName::from_static(headers::INDEX);
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static(headers::IDEMPOTENT_REPLAYED);

/// How many member ids each thread keeps the header value of.
const KEPT_IDS: usize = 8;

thread_local! {
    /// Header values of the member ids this thread wrote last (this node's and the leader's
    /// on every response): cloning one shares its bytes, making one allocates.
    static ID_VALUES: std::cell::RefCell<Vec<(u64, HeaderValue)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The header value of member id `id` (see [`ID_VALUES`]).
fn id_value(id: u64) -> HeaderValue {
    ID_VALUES.with(|kept| {
        let Ok(mut kept) = kept.try_borrow_mut() else {
            return HeaderValue::from(id);
        };
        if let Some((_, v)) = kept.iter().find(|(k, _)| *k == id) {
            return v.clone();
        }
        let v = HeaderValue::from(id);
        if kept.len() >= KEPT_IDS {
            kept.remove(0);
        }
        kept.push((id, v.clone()));
        v
    })
}

/// The `ETag` of version `v`: the version in double quotes, written without a `format!`.
fn etag(v: u64) -> HeaderValue {
    // A u64 has at most 20 digits; with the two quotes, 22 bytes.
    let mut buf = [b'"'; 22];
    let mut at = buf.len() - 1;
    let mut rest = v;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // Digits between quotes are always a valid header value.
    HeaderValue::from_bytes(&buf[at - 1..]).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `Retry-After` seconds sent with 503.
const RETRY_AFTER_SECS: &str = "1";
/// Content type of JSON answers.
const JSON: &str = "application/json";

/// A successful answer before the common headers are added.
#[derive(Debug)]
pub struct Reply {
    /// 200, or 304 for a conditional read of an unchanged key.
    pub status: StatusCode,
    /// The body (empty for 304).
    pub body: Bytes,
    /// Its content type.
    pub content_type: &'static str,
    /// `X-Keel-Index`, when it is not the node's applied index.
    pub index: Option<u64>,
    /// `ETag`: the key's version, on reads of a key.
    pub etag: Option<u64>,
    /// The answer is the stored outcome of an earlier request with the same idempotency key.
    pub replayed: bool,
    /// A stream of events to send instead of `body` (a watch).
    pub stream: Option<Streamed>,
}

/// What a handler returns.
pub type Answer = Result<Reply, ApiError>;

impl Reply {
    /// 200 with a JSON body.
    pub fn json<T: Serialize>(value: &T, index: Option<u64>) -> Answer {
        let body = serde_json::to_vec(value)
            .map_err(|e| ApiError::new(ErrorCode::Internal, format!("cannot encode: {e}")))?;
        Ok(Reply {
            status: StatusCode::OK,
            body: Bytes::from(body),
            content_type: JSON,
            index,
            etag: None,
            replayed: false,
            stream: None,
        })
    }

    /// 200 with the JSON answer of a write (its index, and whether it was replayed).
    pub fn write<T: Serialize>(value: &T, ok: &WriteOk) -> Answer {
        let mut r = Reply::json(value, Some(ok.result.index))?;
        r.replayed = ok.result.replayed;
        Ok(r)
    }

    /// 200 with raw bytes.
    pub fn bytes(body: Bytes, content_type: &'static str, index: Option<u64>) -> Reply {
        Reply {
            status: StatusCode::OK,
            body,
            content_type,
            index,
            etag: None,
            replayed: false,
            stream: None,
        }
    }

    /// 200 with a stream of Server-Sent Events; `index`: where the watch starts.
    pub fn events(watcher: Watcher, index: u64) -> Reply {
        Reply {
            status: StatusCode::OK,
            body: Bytes::new(),
            content_type: "text/event-stream",
            index: Some(index),
            etag: None,
            replayed: false,
            stream: Some(Streamed(Box::new(watcher))),
        }
    }

    /// 304: the key still has the version the client holds.
    pub fn not_modified(version: u64, index: u64) -> Reply {
        Reply {
            status: StatusCode::NOT_MODIFIED,
            body: Bytes::new(),
            content_type: "",
            index: Some(index),
            etag: Some(version),
            replayed: false,
            stream: None,
        }
    }
}

/// Builds the response: `head` answers a `HEAD` request (the same headers, no body).
pub fn finish(answer: Answer, shared: &Shared, head: bool) -> Response<Body> {
    let (resp, index) = match answer {
        Ok(Reply {
            stream: Some(Streamed(watcher)),
            content_type,
            index,
            ..
        }) => (events(*watcher, content_type), index),
        Ok(reply) => {
            let mut resp = response(reply.status, reply.body, reply.content_type, head);
            if let Some(v) = reply.etag {
                resp.headers_mut().insert(ETAG, etag(v));
            }
            if reply.replayed {
                resp.headers_mut()
                    .insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
            }
            (resp, reply.index)
        }
        Err(err) => {
            let body = serde_json::to_vec(&*err.body).unwrap_or_default();
            let status = StatusCode::from_u16(err.code.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = response(status, Bytes::from(body), JSON, head);
            if err.code.retry_after() {
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            }
            if err.code == ErrorCode::Unauthorized {
                resp.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"keel\""),
                );
            }
            if let Some(allow) = err
                .allow
                .as_deref()
                .and_then(|a| HeaderValue::from_str(a).ok())
            {
                resp.headers_mut().insert(ALLOW, allow);
            }
            (resp, err.index)
        }
    };
    common(resp, shared, index)
}

/// A response streaming a watcher's events, as its connection asks for them.
fn events(watcher: Watcher, content_type: &'static str) -> Response<Body> {
    let chunks = futures::stream::unfold(watcher, |mut w| async move {
        let chunk = w.next_chunk().await?;
        Some((Ok(Frame::data(chunk)), w))
    });
    let body: Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, Infallible>> + Send>> =
        Box::pin(chunks);
    let mut resp = Response::new(Either::Right(StreamBody::new(body)));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A response with a body (or, for `HEAD`, only the length it would have).
fn response(
    status: StatusCode,
    body: Bytes,
    content_type: &'static str,
    head: bool,
) -> Response<Body> {
    let len = body.len();
    let mut resp = Response::new(Either::Left(Full::new(if head {
        Bytes::new()
    } else {
        body
    })));
    *resp.status_mut() = status;
    if status != StatusCode::NOT_MODIFIED {
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if head {
            resp.headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
    }
    resp
}

/// Adds the headers every response carries: who answered, who leads, and the index.
fn common(mut resp: Response<Body>, shared: &Shared, index: Option<u64>) -> Response<Body> {
    let h = resp.headers_mut();
    h.insert(NODE, id_value(shared.id()));
    if let Some(leader) = shared.leader() {
        h.insert(LEADER, id_value(leader));
    }
    h.insert(
        INDEX,
        HeaderValue::from(index.unwrap_or_else(|| shared.applied())),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_the_version_in_quotes() {
        for v in [0, 7, 10, 1_234_567, u64::MAX] {
            assert_eq!(etag(v), format!("\"{v}\"").as_str(), "version {v}");
        }
    }

    #[test]
    fn kept_id_values_are_the_ids() {
        for round in 0..3 {
            for id in (1..=2 * KEPT_IDS as u64).chain([u64::MAX]) {
                assert_eq!(id_value(id), id.to_string().as_str(), "round {round}");
            }
        }
        ID_VALUES.with(|kept| assert!(kept.borrow().len() <= KEPT_IDS));
    }
}
