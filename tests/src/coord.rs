//! HTTP helpers of the lease and lock tests (tests/tests/coord*.rs): grant, keep alive,
//! acquire, fenced writes, a lease's locks.

use serde_json::Value;

use crate::{Cluster, Resp};
/// `POST /v1/lease` through node `via`; the lease id.
pub fn grant(c: &Cluster, via: u64, ttl_ms: u64) -> (u64, Value) {
    let body = format!("{{\"ttl_ms\": {ttl_ms}}}");
    let r = c
        .request(via, "POST", "/v1/lease", &[], Some(body.as_bytes()))
        .expect("node answers");
    assert_eq!(r.status, 200, "grant: {}", r.text());
    let v = r.json();
    let id = v["id"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("the id is a string of digits");
    (id, v)
}

/// `POST /v1/lease/{id}/keepalive` through node `via`.
pub fn keepalive(c: &Cluster, via: u64, id: u64) -> Resp {
    c.request(via, "POST", &format!("/v1/lease/{id}/keepalive"), &[], None)
        .expect("node answers")
}

/// `POST /v1/lock/{name}` through node `via`, with lease, value and wait.
pub fn acquire(c: &Cluster, via: u64, name: &str, lease: u64, value: &str, wait_ms: u64) -> Resp {
    let body =
        format!("{{\"lease\": \"{lease}\", \"value\": \"{value}\", \"wait_ms\": {wait_ms}}}");
    c.request(
        via,
        "POST",
        &format!("/v1/lock/{name}"),
        &[],
        Some(body.as_bytes()),
    )
    .expect("node answers")
}

/// Sends `POST /v1/lock/{name}` (lease, value, wait) to node `via` on a raw connection whose
/// answer nobody reads: dropping the connection is the client going away while it waits.
pub fn waiting_acquire(
    c: &Cluster,
    via: u64,
    name: &str,
    lease: u64,
    value: &str,
    wait_ms: u64,
) -> std::net::TcpStream {
    use std::io::Write as _;
    let body =
        format!("{{\"lease\": \"{lease}\", \"value\": \"{value}\", \"wait_ms\": {wait_ms}}}");
    let head = format!(
        "POST /v1/lock/{name} HTTP/1.1\r\nHost: keel\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let mut conn = std::net::TcpStream::connect(c.http_addr(via)).expect("connect");
    conn.write_all(head.as_bytes()).expect("send head");
    conn.write_all(body.as_bytes()).expect("send body");
    conn
}

/// `PUT /v1/kv/{key}` through node `via` with `If-Fence: fence`.
pub fn fenced_put(c: &Cluster, via: u64, key: &str, value: &str, fence: &str) -> Resp {
    c.request(
        via,
        "PUT",
        &format!("/v1/kv/{key}"),
        &[("if-fence", fence)],
        Some(value.as_bytes()),
    )
    .expect("node answers")
}

/// The lease's locks, as `GET /v1/lease/{id}` shows them; None while `via` cannot answer (an
/// election).
pub fn try_lease_locks(c: &Cluster, via: u64, id: u64) -> Option<Vec<String>> {
    let r = c
        .request(via, "GET", &format!("/v1/lease/{id}"), &[], None)
        .ok()?;
    if r.status != 200 {
        return None;
    }
    Some(serde_json::from_value(r.json()["locks"].clone()).expect("a list of lock names"))
}

/// The lease's locks, as `GET /v1/lease/{id}` shows them.
pub fn lease_locks(c: &Cluster, via: u64, id: u64) -> Vec<String> {
    let r = c
        .request(via, "GET", &format!("/v1/lease/{id}"), &[], None)
        .expect("node answers");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_value(r.json()["locks"].clone()).expect("a list of lock names")
}
