//! The routing table: every endpoint, the methods it allows and the query parameters each
//! method accepts, in one place. `HEAD` is allowed wherever `GET` is.

use std::sync::OnceLock;

use hyper::Method;
use keel_api::params::{
    AFTER, CONSISTENCY, FROM_INDEX, KEY, LEASE, LIMIT, MIN_INDEX, MODE, PREFIX, PROGRESS_MS,
    WAIT_INDEX, WAIT_MS,
};

/// An endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// `/health`: the process serves.
    Health,
    /// `/ready`: a leader is known and this node has caught up.
    Ready,
    /// `/metrics`: Prometheus text.
    Metrics,
    /// `/v1/status`.
    Status,
    /// `/v1/cluster/members`: list, add a learner.
    Members,
    /// `/v1/cluster/members/{id}`: remove.
    Member,
    /// `/v1/cluster/members/{id}/promote`.
    Promote,
    /// `/v1/cluster/transfer-leader`.
    TransferLeader,
    /// `/v1/admin/backup`.
    Backup,
    /// `/v1/txn`.
    Txn,
    /// `/v1/kv` and `/v1/kv/`: list by prefix.
    List,
    /// `/v1/kv/{key}`, and `POST /v1/kv/{key}/add`.
    Key,
    /// `/v1/admin/failpoints/{name}`: only in the test build (see [`crate::failpoints`]).
    Failpoint,
    /// `/v1/lease`: grant.
    Leases,
    /// `/v1/lease/{id}`: look, revoke.
    Lease,
    /// `/v1/lease/{id}/keepalive`.
    Keepalive,
    /// `/v1/lock/{name}`: acquire, look (blocking), release.
    Lock,
    /// `/v1/watch`: the change feed (Server-Sent Events).
    Watch,
    /// `/ui`: the dashboard page.
    Ui,
}

/// The table, built once.
fn table() -> &'static matchit::Router<Route> {
    static TABLE: OnceLock<matchit::Router<Route>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = matchit::Router::new();
        for (path, route) in [
            ("/health", Route::Health),
            ("/ready", Route::Ready),
            ("/metrics", Route::Metrics),
            ("/v1/status", Route::Status),
            ("/v1/cluster/members", Route::Members),
            ("/v1/cluster/members/{id}", Route::Member),
            ("/v1/cluster/members/{id}/promote", Route::Promote),
            ("/v1/cluster/transfer-leader", Route::TransferLeader),
            ("/v1/admin/backup", Route::Backup),
            ("/v1/txn", Route::Txn),
            ("/v1/kv", Route::List),
            ("/v1/kv/", Route::List),
            ("/v1/kv/{*key}", Route::Key),
            ("/v1/lease", Route::Leases),
            ("/v1/lease/{id}", Route::Lease),
            ("/v1/lease/{id}/keepalive", Route::Keepalive),
            ("/v1/lock/{*name}", Route::Lock),
            ("/v1/watch", Route::Watch),
            ("/ui", Route::Ui),
            ("/ui/", Route::Ui),
        ] {
            // The table is a constant: a conflict is a programming error caught by the tests.
            if let Err(e) = t.insert(path, route) {
                panic!("routing table: {path}: {e}");
            }
        }
        if crate::failpoints::ENABLED {
            if let Err(e) = t.insert("/v1/admin/failpoints/{name}", Route::Failpoint) {
                panic!("routing table: failpoints: {e}");
            }
        }
        t
    })
}

/// A request's route and its path parameter (a member id, or a key still percent-encoded).
#[derive(Debug, PartialEq, Eq)]
pub struct Matched<'p> {
    /// The endpoint.
    pub route: Route,
    /// `{id}` or `{key}`, when the route has one.
    pub param: Option<&'p str>,
}

/// Finds the route of `path`.
pub fn find(path: &str) -> Option<Matched<'_>> {
    let m = table().at(path).ok()?;
    let param = m
        .params
        .get("id")
        .or_else(|| m.params.get("key"))
        .or_else(|| m.params.get("name"));
    Some(Matched {
        route: *m.value,
        param,
    })
}

/// A key path ending in `/add` is the target of `POST /v1/kv/{key}/add`.
pub fn add_target(raw_key: &str) -> Option<&str> {
    raw_key.strip_suffix("/add")
}

/// The methods `route` allows (HEAD with GET); `param` decides whether a key path takes POST.
pub fn methods(route: Route, param: Option<&str>) -> &'static [&'static str] {
    match route {
        Route::Health | Route::Ready | Route::Metrics | Route::Status | Route::List | Route::Ui => {
            &["GET", "HEAD"]
        }
        Route::Members => &["GET", "HEAD", "POST"],
        Route::Member => &["DELETE"],
        Route::Promote | Route::TransferLeader | Route::Backup | Route::Txn => &["POST"],
        Route::Key if param.and_then(add_target).is_some() => {
            &["GET", "HEAD", "PUT", "DELETE", "POST"]
        }
        Route::Key => &["GET", "HEAD", "PUT", "DELETE"],
        Route::Failpoint => &["PUT", "DELETE"],
        Route::Leases | Route::Keepalive => &["POST"],
        Route::Lease => &["GET", "HEAD", "DELETE"],
        Route::Lock => &["GET", "HEAD", "POST", "DELETE"],
        Route::Watch => &["GET"],
    }
}

/// The query parameters `method` accepts on `route` (with HEAD as GET).
pub fn params(route: Route, method: &Method) -> &'static [&'static str] {
    match (route, method.as_str()) {
        (Route::Key, "GET") => &[CONSISTENCY, MIN_INDEX],
        (Route::Key, "PUT") => &[MODE, LEASE],
        (Route::Key, "DELETE" | "POST") => &[MODE],
        (Route::Lease, "DELETE") => &[MODE],
        (Route::Lock, "GET") => &[CONSISTENCY, MIN_INDEX, WAIT_INDEX, WAIT_MS],
        (Route::Lock, "DELETE") => &[MODE, LEASE],
        (Route::List, "GET") => &[PREFIX, AFTER, LIMIT, CONSISTENCY, MIN_INDEX],
        (Route::Txn, "POST") => &[MODE, CONSISTENCY, MIN_INDEX],
        (Route::Watch, "GET") => &[KEY, PREFIX, FROM_INDEX, PROGRESS_MS],
        _ => &[],
    }
}

/// How messages name an endpoint: `PUT /v1/kv/{key}`.
pub fn describe(route: Route, method: &Method) -> String {
    format!("{method} {}", template(route, method))
}

/// The path template of `route` (with `method`: `POST` on a key path is `/add`).
pub fn template(route: Route, method: &Method) -> &'static str {
    match route {
        Route::Health => "/health",
        Route::Ready => "/ready",
        Route::Metrics => "/metrics",
        Route::Status => "/v1/status",
        Route::Members => "/v1/cluster/members",
        Route::Member => "/v1/cluster/members/{id}",
        Route::Promote => "/v1/cluster/members/{id}/promote",
        Route::TransferLeader => "/v1/cluster/transfer-leader",
        Route::Backup => "/v1/admin/backup",
        Route::Txn => "/v1/txn",
        Route::List => "/v1/kv",
        Route::Key if method == Method::POST => "/v1/kv/{key}/add",
        Route::Key => "/v1/kv/{key}",
        Route::Failpoint => "/v1/admin/failpoints/{name}",
        Route::Leases => "/v1/lease",
        Route::Lease => "/v1/lease/{id}",
        Route::Keepalive => "/v1/lease/{id}/keepalive",
        Route::Lock => "/v1/lock/{name}",
        Route::Watch => "/v1/watch",
        Route::Ui => "/ui",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_routes_every_endpoint() {
        let cases = [
            ("/health", Route::Health, None),
            ("/v1/status", Route::Status, None),
            ("/v1/cluster/members", Route::Members, None),
            ("/v1/cluster/members/4", Route::Member, Some("4")),
            ("/v1/cluster/members/4/promote", Route::Promote, Some("4")),
            ("/v1/kv", Route::List, None),
            ("/v1/kv/", Route::List, None),
            ("/v1/kv/a", Route::Key, Some("a")),
            ("/v1/kv/acct/alice/add", Route::Key, Some("acct/alice/add")),
            ("/v1/kv/a%2Fb", Route::Key, Some("a%2Fb")),
            ("/v1/lease", Route::Leases, None),
            ("/v1/lease/12", Route::Lease, Some("12")),
            ("/v1/lease/12/keepalive", Route::Keepalive, Some("12")),
            ("/v1/lock/jobs/9am", Route::Lock, Some("jobs/9am")),
            ("/v1/watch", Route::Watch, None),
            ("/ui", Route::Ui, None),
        ];
        for (path, route, param) in cases {
            assert_eq!(find(path), Some(Matched { route, param }), "{path}");
        }
        // The failpoint route exists only in the test build.
        assert_eq!(
            find("/v1/admin/failpoints/x").is_some(),
            crate::failpoints::ENABLED
        );
        for path in ["/", "/v2/kv/x", "/v1/cluster/members/4/demote", "/healthz"] {
            assert_eq!(find(path), None, "{path}");
        }
    }

    #[test]
    fn methods_and_parameters() {
        assert_eq!(
            methods(Route::Key, Some("a")),
            ["GET", "HEAD", "PUT", "DELETE"]
        );
        assert!(methods(Route::Key, Some("a/add")).contains(&"POST"));
        assert_eq!(params(Route::Key, &Method::PUT), [MODE, LEASE]);
        assert_eq!(params(Route::Key, &Method::DELETE), [MODE]);
        assert_eq!(params(Route::Key, &Method::GET), [CONSISTENCY, MIN_INDEX]);
        assert!(params(Route::Status, &Method::GET).is_empty());
        assert_eq!(describe(Route::Key, &Method::POST), "POST /v1/kv/{key}/add");
    }
}
