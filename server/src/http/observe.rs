//! Each request's id and metrics: `X-Request-Id` (the client's, when it sends a usable one, or a
//! new one), a tracing span that carries it (into forwarded writes too: [`crate::forward`]), and
//! the request's count and duration under bounded labels (SPEC §11).

use std::time::Duration;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, StatusCode};

use super::routes::{self, Route};
use crate::metrics::{metrics, observe, HttpLabels, Op, OpLabels};

/// The request id header.
pub const REQUEST_ID: &str = "x-request-id";
/// The request id header's name, built once: inserting a header by a `&str` name that is not
/// one of HTTP's standard ones allocates a copy of the name on every response (7–9% of a
/// node's CPU serving stale reads, four such headers each: docs/benchmarks.md).
const REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
/// The longest request id taken from a client (a longer or non-visible one is replaced).
const MAX_REQUEST_ID: usize = 64;

/// The client's request id when it is 1 to 64 visible ASCII characters, else a new one of 16
/// hex digits; as the header value the response carries (the client's is shared, not copied).
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(id) = headers.get(&REQUEST_ID_NAME).filter(|v| {
        let b = v.as_bytes();
        !b.is_empty() && b.len() <= MAX_REQUEST_ID && b.iter().all(u8::is_ascii_graphic)
    }) {
        return id.clone();
    }
    let mut hex = [0u8; 16];
    let n = rand::random::<u64>();
    for (i, d) in hex.iter_mut().enumerate() {
        *d = b"0123456789abcdef"[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&hex).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// Sets the response's `X-Request-Id`.
pub fn set_request_id(headers: &mut HeaderMap, id: HeaderValue) {
    headers.insert(REQUEST_ID_NAME, id);
}

/// What a request is, for its metrics, read before it is handled.
pub struct Labels {
    route: &'static str,
    method: &'static str,
    op: Op,
    mode: &'static str,
    consistency: &'static str,
}

fn method_name(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "other",
    }
}

/// The value of query parameter `name`, as one of `known` (or `invalid`), or None.
fn param(query: Option<&str>, name: &str, known: &[&'static str]) -> Option<&'static str> {
    let query = query?;
    let value = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)?
        .1;
    Some(
        known
            .iter()
            .copied()
            .find(|k| *k == value)
            .unwrap_or("invalid"),
    )
}

impl Labels {
    /// The labels of a request to `path` with `method` and `query`.
    pub fn of(method: &Method, path: &str, query: Option<&str>) -> Labels {
        let route = routes::find(path).map(|m| (m.route, m.param));
        let op = match (route, method) {
            (Some((Route::Watch, _)), _) => Op::watch,
            (
                Some((Route::Key | Route::List | Route::Lock | Route::Lease, _)),
                &Method::GET | &Method::HEAD,
            ) => Op::read,
            (
                Some((
                    Route::Key
                    | Route::Txn
                    | Route::Leases
                    | Route::Lease
                    | Route::Keepalive
                    | Route::Lock,
                    _,
                )),
                &Method::PUT | &Method::POST | &Method::DELETE,
            ) => Op::write,
            _ => Op::other,
        };
        let mode = match op {
            Op::write => param(query, "mode", &["async", "semi", "sync"]).unwrap_or("default"),
            _ => "none",
        };
        let consistency = match op {
            Op::read => {
                param(query, "consistency", &["linearizable", "stale"]).unwrap_or("default")
            }
            _ => "none",
        };
        Labels {
            route: route.map_or("unknown", |(r, _)| routes::template(r, method)),
            method: method_name(method),
            op,
            mode,
            consistency,
        }
    }

    /// Counts the answered request and its duration.
    pub fn record(self, status: StatusCode, took: Duration) {
        let class = match status.as_u16() {
            200..=299 => "2xx",
            300..=399 => "3xx",
            400..=499 => "4xx",
            _ => "5xx",
        };
        let m = metrics();
        observe(
            &m.http_duration.get_or_create(&OpLabels {
                route: self.route,
                op: self.op,
            }),
            took,
        );
        m.http_requests
            .get_or_create(&HttpLabels {
                route: self.route,
                method: self.method,
                op: self.op,
                class,
                mode: self.mode,
                consistency: self.consistency,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_route_templates_never_keys_and_bounded_values() {
        let l = Labels::of(&Method::PUT, "/v1/kv/secret/customer-42", Some("mode=sync"));
        assert_eq!((l.route, l.op, l.mode), ("/v1/kv/{key}", Op::write, "sync"));
        let l = Labels::of(&Method::GET, "/v1/kv/x", Some("consistency=whatever"));
        assert_eq!((l.op, l.consistency, l.mode), (Op::read, "invalid", "none"));
        let l = Labels::of(&Method::GET, "/v1/kv", None);
        assert_eq!((l.route, l.consistency), ("/v1/kv", "default"));
        let l = Labels::of(&Method::POST, "/no/such/path", None);
        assert_eq!((l.route, l.op), ("unknown", Op::other));
        let l = Labels::of(&Method::GET, "/v1/watch", Some("prefix=a"));
        assert_eq!(l.op, Op::watch);
    }

    #[test]
    fn a_usable_client_request_id_is_kept_and_any_other_replaced() {
        let mut h = HeaderMap::new();
        h.insert(REQUEST_ID, HeaderValue::from_static("abc-123"));
        assert_eq!(request_id(&h), "abc-123");
        let mut seen = std::collections::HashSet::new();
        for bad in ["", "has space", &"x".repeat(65)] {
            let mut h = HeaderMap::new();
            h.insert(REQUEST_ID, HeaderValue::from_str(bad).expect("header"));
            let id = request_id(&h);
            assert_ne!(id, bad);
            assert_eq!(id.len(), 16);
            assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit), "{id:?}");
            assert!(seen.insert(id), "ids repeat");
        }
    }
}
