//! Reading a request: the query string (only the parameters a route accepts), the body (with
//! its size limit), the key in the path, and the headers keel gives meaning to
//! (`If-Match`, `If-None-Match`, `Idempotency-Key`).

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::CONTENT_LENGTH;
use hyper::HeaderMap;
use keel_api::limits::{MAX_IDEMPOTENCY_KEY_BYTES, MAX_KEY_BYTES, MAX_LIST_LIMIT};
use keel_api::{params, ErrorCode, ReadConsistency, WriteMode};
use percent_encoding::percent_decode_str;

use super::error::ApiError;
use crate::proto::{FenceCheck, Precondition};

/// The query parameters keel knows, parsed and checked.
#[derive(Default, Debug)]
pub struct Query {
    /// `mode`: when a write is acknowledged.
    pub mode: Option<WriteMode>,
    /// `consistency`: how fresh a read must be.
    pub consistency: Option<ReadConsistency>,
    /// `min_index`: a read waits until this node has applied it.
    pub min_index: Option<u64>,
    /// `prefix` of a list.
    pub prefix: Option<String>,
    /// `after`: a list starts strictly after this key.
    pub after: Option<String>,
    /// `limit`: most keys in a page of a list.
    pub limit: Option<usize>,
    /// `lease`: the lease a key is put with, or the lease releasing a lock.
    pub lease: Option<u64>,
    /// `wait_index`: a blocking lock read answers once the lock changed after it.
    pub wait_index: Option<u64>,
    /// `wait_ms`: how long a blocking lock read may wait.
    pub wait_ms: Option<u64>,
    /// `key`: the one key a watch follows.
    pub key: Option<String>,
    /// `from_index`: a watch starts with the changes of this index.
    pub from_index: Option<u64>,
    /// `progress_ms`: how often an idle watch sends a progress event.
    pub progress_ms: Option<u64>,
}

fn number(name: &str, v: &str) -> Result<u64, ApiError> {
    v.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidParameter,
            format!("{name} must be a non-negative integer, not {v:?}"),
        )
    })
}

/// Parses `raw`, refusing any parameter not in `accepted` (a typo such as `mod=sync` must not
/// silently fall back to a default), any parameter given twice, and bad values. `what` names the
/// endpoint in messages.
pub fn parse_query(raw: Option<&str>, accepted: &[&str], what: &str) -> Result<Query, ApiError> {
    let mut q = Query::default();
    let Some(raw) = raw else { return Ok(q) };
    let mut seen: Vec<String> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if !accepted.contains(&k.as_ref()) {
            let accepts = if accepted.is_empty() {
                "no query parameters".to_string()
            } else {
                format!("only {}", accepted.join(", "))
            };
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("unknown query parameter {k:?}: {what} accepts {accepts}"),
            ));
        }
        if seen.iter().any(|s| s == k.as_ref()) {
            return Err(ApiError::new(
                ErrorCode::InvalidParameter,
                format!("query parameter {k:?} is given more than once"),
            ));
        }
        seen.push(k.to_string());
        match k.as_ref() {
            params::MODE => {
                q.mode = Some(
                    v.parse()
                        .map_err(|e: String| ApiError::new(ErrorCode::InvalidMode, e))?,
                )
            }
            params::CONSISTENCY => {
                q.consistency = Some(
                    v.parse()
                        .map_err(|e: String| ApiError::new(ErrorCode::InvalidConsistency, e))?,
                )
            }
            params::MIN_INDEX => {
                q.min_index = Some(v.parse().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("min_index must be a non-negative integer, not {v:?}"),
                    )
                })?)
            }
            params::LIMIT => {
                let n: usize = v.parse().map_err(|_| {
                    ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("limit must be a positive integer, not {v:?}"),
                    )
                })?;
                if n == 0 || n > MAX_LIST_LIMIT {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
                    ));
                }
                q.limit = Some(n);
            }
            params::LEASE => match number("lease", &v)? {
                0 => {
                    return Err(ApiError::new(
                        ErrorCode::InvalidParameter,
                        "lease must be a lease id (a positive integer)",
                    ))
                }
                id => q.lease = Some(id),
            },
            params::WAIT_INDEX => q.wait_index = Some(number("wait_index", &v)?),
            params::WAIT_MS => q.wait_ms = Some(number("wait_ms", &v)?),
            params::FROM_INDEX => q.from_index = Some(number("from_index", &v)?),
            params::PROGRESS_MS => q.progress_ms = Some(number("progress_ms", &v)?),
            params::KEY => q.key = Some(text_param("key", v.into_owned())?),
            params::PREFIX => q.prefix = Some(text_param("prefix", v.into_owned())?),
            params::AFTER => q.after = Some(text_param("after", v.into_owned())?),
            _ => {}
        }
    }
    Ok(q)
}

/// A text parameter no longer than a key.
fn text_param(name: &str, v: String) -> Result<String, ApiError> {
    if v.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("{name} is longer than {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(v)
}

/// Decodes and validates a key taken from the path (still percent-encoded).
pub fn decode_key(raw: &str) -> Result<String, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidKey, m);
    if raw.is_empty() {
        return Err(bad("the key is empty".into()));
    }
    // Each byte of a key takes at most 3 characters encoded: reject longer paths before decoding.
    if raw.len() > 3 * MAX_KEY_BYTES {
        return Err(bad(format!("the key is longer than {MAX_KEY_BYTES} bytes")));
    }
    let bytes: Vec<u8> = percent_decode_str(raw).collect();
    if bytes.len() > MAX_KEY_BYTES {
        return Err(bad(format!(
            "the key is {} bytes; the limit is {MAX_KEY_BYTES}",
            bytes.len()
        )));
    }
    String::from_utf8(bytes).map_err(|_| bad("the key is not valid UTF-8".into()))
}

/// Checks a key that came in a JSON body.
pub fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(ApiError::new(
            ErrorCode::InvalidKey,
            format!("keys must be 1 to {MAX_KEY_BYTES} bytes, not {}", key.len()),
        ));
    }
    Ok(())
}

/// How long a body of `len` bytes may take to arrive: [`super::BODY_TIMEOUT`], plus the time
/// it takes at [`super::MIN_BODY_RATE`] (a large value on a slow link is not cut off; a
/// trickle is).
pub fn body_deadline(len: u64) -> std::time::Duration {
    super::BODY_TIMEOUT + std::time::Duration::from_secs(len / super::MIN_BODY_RATE)
}

/// Reads a whole body, refusing (413) anything over `limit` before it is read whole.
pub async fn read_body(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the body is larger than {limit} bytes"),
        )
    };
    let mut expected = limit as u64;
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| ApiError::new(ErrorCode::InvalidHeader, "bad Content-Length"))?;
        if len > limit as u64 {
            return Err(too_large());
        }
        expected = len;
    }
    let allowed = body_deadline(expected);
    let read = tokio::time::timeout(allowed, Limited::new(body, limit).collect());
    match read.await {
        Err(_) => Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("the body did not arrive within {} s", allowed.as_secs()),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::InvalidBody,
            format!("cannot read the body: {e}"),
        )),
    }
}

/// Parses a JSON body, or answers `invalid_json` with what was `expected`.
pub fn parse_json<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidJson, format!("expected {expected}: {e}")))
}

/// Parses `If-Match` / `If-None-Match` of a write into a precondition.
pub fn precondition(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::InvalidHeader, m);
    let mut pre = Precondition::default();
    let mut any = false;
    if let Some(v) = headers.get("if-match") {
        let s = v
            .to_str()
            .map_err(|_| bad("If-Match is not ASCII".into()))?
            .trim();
        if s == "*" {
            pre.if_exists = true;
        } else {
            let inner = s
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(s);
            pre.if_version = Some(
                inner
                    .parse()
                    .map_err(|_| bad(format!("If-Match must be \"<version>\" or *, not {s:?}")))?,
            );
        }
        any = true;
    }
    if let Some(v) = headers.get("if-none-match") {
        if v.as_bytes().trim_ascii() != b"*" {
            return Err(bad(
                "on a write, If-None-Match supports only * (create if absent)".into(),
            ));
        }
        pre.if_absent = true;
        any = true;
    }
    Ok(any.then_some(pre))
}

/// Parses a write's `If-Fence: <lock>=<fence>`.
pub fn if_fence(headers: &HeaderMap) -> Result<Option<FenceCheck>, ApiError> {
    let Some(v) = headers.get(keel_api::coord::IF_FENCE) else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::new(ErrorCode::InvalidHeader, "If-Fence is not ASCII"))?;
    let (name, fence) = keel_api::coord::parse_if_fence(s)
        .map_err(|m| ApiError::new(ErrorCode::InvalidHeader, m))?;
    validate_key(&name)?;
    Ok(Some(FenceCheck { name, fence }))
}

/// The entity tags of a read's `If-None-Match`: None without the header; `*` matches any
/// existing key. Weak tags (`W/"5"`) compare like strong ones, as RFC 9110 asks for
/// `If-None-Match`.
#[derive(Debug, PartialEq, Eq)]
pub enum IfNoneMatch {
    /// `*`.
    Any,
    /// The versions listed (tags that are not versions are kept out: they never match).
    Versions(Vec<u64>),
}

impl IfNoneMatch {
    /// Whether a key at `version` matches (then the answer is 304 Not Modified).
    pub fn matches(&self, version: u64) -> bool {
        match self {
            IfNoneMatch::Any => true,
            IfNoneMatch::Versions(v) => v.contains(&version),
        }
    }
}

/// Parses a read's `If-None-Match`.
pub fn if_none_match(headers: &HeaderMap) -> Result<Option<IfNoneMatch>, ApiError> {
    let Some(v) = headers.get("if-none-match") else {
        return Ok(None);
    };
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidHeader,
            "If-None-Match must be * or a list of entity tags such as \"12\"",
        )
    };
    let s = v.to_str().map_err(|_| bad())?.trim();
    if s == "*" {
        return Ok(Some(IfNoneMatch::Any));
    }
    let mut versions = Vec::new();
    for tag in s.split(',').map(str::trim) {
        let opaque = tag.strip_prefix("W/").unwrap_or(tag);
        let inner = opaque
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .filter(|t| !t.contains('"'))
            .ok_or_else(bad)?;
        if let Ok(v) = inner.parse() {
            versions.push(v);
        }
    }
    Ok(Some(IfNoneMatch::Versions(versions)))
}

/// Reads and validates the `Idempotency-Key` header (empty when absent).
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let Some(v) = headers.get(keel_api::headers::IDEMPOTENCY_KEY) else {
        return Ok(String::new());
    };
    let bad = || {
        ApiError::new(
            ErrorCode::InvalidHeader,
            format!(
                "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"
            ),
        )
    };
    let s = v.to_str().map_err(|_| bad())?;
    if s.is_empty()
        || s.len() > MAX_IDEMPOTENCY_KEY_BYTES
        || !s.bytes().all(|b| b.is_ascii_graphic())
    {
        return Err(bad());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_gets_time_by_its_length() {
        use std::time::Duration;
        assert_eq!(body_deadline(10), Duration::from_secs(10));
        assert_eq!(body_deadline(1024 * 1024), Duration::from_secs(26));
        assert_eq!(
            body_deadline(64 * 1024 * 1024),
            Duration::from_secs(10 + 1024)
        );
    }

    #[test]
    fn unknown_repeated_and_bad_parameters_are_refused() {
        let accepted = [params::MODE];
        let q = parse_query(Some("mode=sync"), &accepted, "PUT").expect("valid");
        assert_eq!(q.mode, Some(WriteMode::Sync));
        let err = parse_query(Some("mod=sync"), &accepted, "PUT").expect_err("a typo");
        assert_eq!(err.code(), ErrorCode::InvalidParameter);
        let err = parse_query(Some("mode=sync&mode=async"), &accepted, "PUT").expect_err("twice");
        assert_eq!(err.code(), ErrorCode::InvalidParameter);
        let err = parse_query(Some("mode=fast"), &accepted, "PUT").expect_err("bad mode");
        assert_eq!(err.code(), ErrorCode::InvalidMode);
        let err = parse_query(Some("x=1"), &[], "GET /health").expect_err("none accepted");
        assert_eq!(err.code(), ErrorCode::InvalidParameter);
        assert!(parse_query(None, &[], "GET /health").is_ok());
        let q = parse_query(
            Some("prefix=a%2Fb&limit=10&after=a%2Fb%2F1"),
            &[params::PREFIX, params::LIMIT, params::AFTER],
            "GET /v1/kv",
        )
        .expect("valid");
        assert_eq!(q.prefix.as_deref(), Some("a/b"));
        assert_eq!((q.limit, q.after.as_deref()), (Some(10), Some("a/b/1")));
    }

    #[test]
    fn keys_are_decoded_and_checked() {
        assert_eq!(decode_key("a%2Fb").ok().as_deref(), Some("a/b"));
        assert_eq!(
            decode_key("").expect_err("empty").code(),
            ErrorCode::InvalidKey
        );
        assert_eq!(
            decode_key("bad%FF").expect_err("utf8").code(),
            ErrorCode::InvalidKey
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            decode_key(&long).expect_err("long").code(),
            ErrorCode::InvalidKey
        );
        assert!(decode_key(&"k".repeat(MAX_KEY_BYTES)).is_ok());
    }

    #[test]
    fn if_none_match_lists() {
        let parse = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("if-none-match", v.parse().expect("header value"));
            if_none_match(&h)
        };
        assert_eq!(parse("*").expect("valid"), Some(IfNoneMatch::Any));
        assert_eq!(
            parse("\"5\", W/\"7\", \"abc\"").expect("valid"),
            Some(IfNoneMatch::Versions(vec![5, 7]))
        );
        assert!(parse("5").is_err(), "tags are quoted");
        assert!(if_none_match(&HeaderMap::new()).expect("absent").is_none());
        assert!(IfNoneMatch::Versions(vec![5, 7]).matches(7));
        assert!(!IfNoneMatch::Versions(vec![5]).matches(6));
    }

    #[test]
    fn write_preconditions_and_idempotency_keys() {
        let mut h = HeaderMap::new();
        h.insert("if-match", "\"12\"".parse().expect("header value"));
        let pre = precondition(&h).expect("valid").expect("present");
        assert_eq!(pre.if_version, Some(12));
        h.insert("if-match", "W/\"abc\"".parse().expect("header value"));
        assert!(precondition(&h).is_err());
        let mut h = HeaderMap::new();
        h.insert("if-none-match", "\"3\"".parse().expect("header value"));
        assert!(
            precondition(&h).is_err(),
            "a write's If-None-Match is only *"
        );
        let mut h = HeaderMap::new();
        assert_eq!(idempotency_key(&h).expect("absent"), "");
        h.insert(
            keel_api::headers::IDEMPOTENCY_KEY,
            "k-1".parse().expect("v"),
        );
        assert_eq!(idempotency_key(&h).expect("valid"), "k-1");
        h.insert(
            keel_api::headers::IDEMPOTENCY_KEY,
            "x".repeat(300).parse().expect("v"),
        );
        assert!(idempotency_key(&h).is_err());
    }
}
