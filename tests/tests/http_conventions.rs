//! HTTP's conventions, as a new user tries them: a typo in a query parameter is refused (not
//! silently replaced by a default), HEAD works wherever GET does, a conditional GET of an
//! unchanged key is answered 304, and a 405 says which methods are allowed.

use keel_tests::{Cluster, Resp, DEADLINE};

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some(code), "{}", r.text());
}

fn header<'a>(r: &'a Resp, name: &str) -> Option<&'a str> {
    r.headers.get(name).map(String::as_str)
}

#[test]
fn unknown_or_repeated_query_parameters_are_refused_and_change_nothing() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    for id in [leader, follower] {
        // `mod=sync` is a typo of `mode=sync`: it must not be acknowledged at the default mode.
        let r = c.put(id, "typo?mod=sync", b"v").expect("answers");
        assert_error(&r, 400, "invalid_parameter");
        assert!(
            r.text().contains("mod"),
            "the message names the parameter: {}",
            r.text()
        );
        assert_error(
            &c.put(id, "twice?mode=sync&mode=async", b"v")
                .expect("answers"),
            400,
            "invalid_parameter",
        );
        // A write's parameter on a read, and any parameter where none is accepted.
        assert_error(
            &c.get(id, "typo?mode=sync").expect("answers"),
            400,
            "invalid_parameter",
        );
        assert_error(
            &c.request(id, "GET", "/v1/status?verbose=1", &[], None)
                .expect("answers"),
            400,
            "invalid_parameter",
        );
        assert_error(
            &c.request(id, "GET", "/v1/kv?prefx=a", &[], None)
                .expect("answers"),
            400,
            "invalid_parameter",
        );
        assert_error(
            &c.request(
                id,
                "POST",
                "/v1/kv/typo/add?mdoe=sync",
                &[],
                Some(b"{\"delta\": 1}"),
            )
            .expect("answers"),
            400,
            "invalid_parameter",
        );
        // The accepted spellings still work.
        assert_eq!(
            c.put(id, &format!("ok{id}?mode=sync"), b"v")
                .expect("answers")
                .status,
            200
        );
        assert_eq!(
            c.get(id, &format!("ok{id}?consistency=stale&min_index=1"))
                .expect("answers")
                .status,
            200
        );
    }
    for id in c.ids() {
        let r = c.get(id, "typo").expect("answers");
        assert_eq!(
            r.status,
            404,
            "a refused write changed something: {}",
            r.text()
        );
        assert_eq!(c.get(id, "twice").expect("answers").status, 404);
    }
}

#[test]
fn head_works_wherever_get_does_and_conditional_gets_answer_304() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let put = c.put_until_ok(leader, "cond?mode=sync", b"hello", DEADLINE);
    let version = put.json()["version"].as_u64().expect("version");
    let etag = format!("\"{version}\"");

    for id in [leader, follower] {
        // HEAD: the headers of the GET (length, ETag, index), no body.
        let get = c.get(id, "cond").expect("answers");
        let head = c
            .request(id, "HEAD", "/v1/kv/cond", &[], None)
            .expect("answers");
        assert_eq!(head.status, 200);
        assert!(head.body.is_empty(), "HEAD returned a body");
        assert_eq!(header(&head, "content-length"), Some("5"));
        assert_eq!(header(&head, "etag"), header(&get, "etag"));
        assert_eq!(header(&head, "content-type"), header(&get, "content-type"));
        assert!(head.headers.contains_key("x-keel-index"));
        let missing = c
            .request(id, "HEAD", "/v1/kv/nope", &[], None)
            .expect("answers");
        assert_eq!(missing.status, 404);
        assert!(missing.body.is_empty());
        for path in [
            "/health",
            "/ready",
            "/metrics",
            "/v1/status",
            "/v1/kv?prefix=c",
            "/v1/cluster/members",
            "/ui",
            "/v1/lease/1",
            "/v1/lock/no-such-lock",
        ] {
            let get = c.request(id, "GET", path, &[], None).expect("answers");
            let head = c.request(id, "HEAD", path, &[], None).expect("answers");
            assert_eq!(head.status, get.status, "HEAD {path}");
            assert!(head.body.is_empty(), "HEAD {path} returned a body");
        }

        keel_tests::wait_until(DEADLINE, "HEAD /ready to answer 200 without a body", || {
            let r = c.request(id, "HEAD", "/ready", &[], None).ok()?;
            (r.status == 200 && r.body.is_empty()).then_some(())
        });

        // Conditional GET: 304 with the ETag and no body when the version is unchanged.
        for tag in [
            etag.as_str(),
            "*",
            &format!("W/{etag}"),
            &format!("\"1\", {etag}"),
        ] {
            let r = c
                .request(id, "GET", "/v1/kv/cond", &[("If-None-Match", tag)], None)
                .expect("answers");
            assert_eq!(r.status, 304, "If-None-Match: {tag}: {}", r.text());
            assert!(r.body.is_empty());
            assert_eq!(header(&r, "etag"), Some(etag.as_str()));
            assert!(r.headers.contains_key("x-keel-index"));
        }
        let r = c
            .request(id, "HEAD", "/v1/kv/cond", &[("If-None-Match", &etag)], None)
            .expect("answers");
        assert_eq!(r.status, 304);
        // Another version, an opaque tag: the value.
        for tag in ["\"1\"", "\"not-a-version\""] {
            let r = c
                .request(id, "GET", "/v1/kv/cond", &[("If-None-Match", tag)], None)
                .expect("answers");
            assert_eq!((r.status, r.text().as_str()), (200, "hello"), "{tag}");
        }
        // A missing key is still 404; a malformed header is a clear 400.
        let r = c
            .request(id, "GET", "/v1/kv/nope", &[("If-None-Match", "*")], None)
            .expect("answers");
        assert_error(&r, 404, "not_found");
        let r = c
            .request(id, "GET", "/v1/kv/cond", &[("If-None-Match", "12")], None)
            .expect("answers");
        assert_error(&r, 400, "invalid_header");
    }

    // Once the key changes, the old tag gets the new value and its new ETag, on every node
    // (linearizable reads: the follower answers after the new write).
    let put = c.put_until_ok(leader, "cond", b"world", DEADLINE);
    let new_version = put.json()["version"].as_u64().expect("version");
    assert!(new_version > version);
    for id in c.ids() {
        let r = c
            .request(id, "GET", "/v1/kv/cond", &[("If-None-Match", &etag)], None)
            .expect("answers");
        assert_eq!((r.status, r.text().as_str()), (200, "world"), "node {id}");
        assert_eq!(
            header(&r, "etag").map(str::to_string),
            Some(format!("\"{new_version}\""))
        );
    }
}

#[test]
fn method_not_allowed_says_what_is_allowed() {
    let mut c = Cluster::start(1);
    c.wait_for_leader();
    let cases = [
        ("PATCH", "/v1/kv/x", "GET, HEAD, PUT, DELETE"),
        ("POST", "/v1/kv/x", "GET, HEAD, PUT, DELETE"),
        ("PATCH", "/v1/kv/x/add", "GET, HEAD, PUT, DELETE, POST"),
        ("GET", "/v1/txn", "POST"),
        ("PUT", "/v1/status", "GET, HEAD"),
        ("DELETE", "/v1/kv", "GET, HEAD"),
        ("PUT", "/v1/cluster/members", "GET, HEAD, POST"),
        ("GET", "/v1/cluster/members/2", "DELETE"),
        ("GET", "/v1/admin/backup", "POST"),
    ];
    for (method, path, allow) in cases {
        let r = c.request(1, method, path, &[], None).expect("answers");
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(header(&r, "allow"), Some(allow), "{method} {path}");
    }
    // Each method the Allow header names is really served (not 405).
    for method in ["GET", "HEAD", "PUT", "DELETE"] {
        let body = (method == "PUT").then_some(&b"v"[..]);
        let r = c
            .request(1, method, "/v1/kv/x", &[], body)
            .expect("answers");
        assert_ne!(r.status, 405, "{method}");
    }
    let r = c
        .request(1, "POST", "/v1/kv/x/add", &[], Some(b"{\"delta\": 2}"))
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    // An unknown path is still 404, whatever the method.
    assert_error(
        &c.request(1, "PATCH", "/v1/nothing", &[], None)
            .expect("answers"),
        404,
        "no_route",
    );
}
