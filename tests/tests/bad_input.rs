//! Bad input gets a clear JSON error, changes nothing, and never stops a node from serving.

use std::time::Duration;

use keel_tests::{wait_until, Cluster, DEADLINE};

fn assert_error(r: &keel_tests::Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some(code), "{}", r.text());
    assert_eq!(
        r.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
    assert!(r.headers.contains_key("x-keel-node"));
    assert!(r.headers.contains_key("x-keel-index"));
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let mut c = Cluster::start_with(3, &["--max-value-bytes", "1024"]);
    c.wait_for_leader();
    let follower = 2;

    for id in [1, follower] {
        // Oversized value: 413, nothing written.
        let r = c.put(id, "big", &vec![b'x'; 1025]).expect("answers");
        assert_error(&r, 413, "payload_too_large");
        // Exactly at the limit is fine.
        assert_eq!(
            c.put(id, "limit", &vec![b'x'; 1024])
                .expect("answers")
                .status,
            200
        );
        // Oversized key.
        let long = "k".repeat(4097);
        assert_error(
            &c.put(id, &long, b"v").expect("answers"),
            400,
            "invalid_key",
        );
        assert_error(&c.get(id, &long).expect("answers"), 400, "invalid_key");
        // A key of exactly 4 KiB is fine.
        assert_eq!(
            c.put(id, &"k".repeat(4096), b"v").expect("answers").status,
            200
        );
        // Invalid UTF-8 key.
        assert_error(
            &c.put(id, "bad%FFkey", b"v").expect("answers"),
            400,
            "invalid_key",
        );
        // Unknown mode and consistency.
        assert_error(
            &c.put(id, "m?mode=fast", b"v").expect("answers"),
            400,
            "invalid_mode",
        );
        assert_error(
            &c.get(id, "m?consistency=strong").expect("answers"),
            400,
            "invalid_consistency",
        );
        assert_error(
            &c.get(id, "m?min_index=-1").expect("answers"),
            400,
            "invalid_parameter",
        );
        // Invalid JSON for add; wrong types; unknown fields.
        for body in [
            "{",
            "[]",
            "{\"delta\": \"1\"}",
            "{\"delta\": 1.5}",
            "{\"dleta\": 1}",
            "",
        ] {
            let r = c
                .request(id, "POST", "/v1/kv/counter/add", &[], Some(body.as_bytes()))
                .expect("answers");
            assert_error(&r, 400, "invalid_json");
        }
        // add on a value that is not an integer.
        c.put_until_ok(id, "text", b"hello", DEADLINE);
        assert_error(&c.add(id, "text", 1).expect("answers"), 400, "not_integer");
        // Malformed precondition headers.
        let r = c
            .request(
                id,
                "PUT",
                "/v1/kv/cas",
                &[("If-Match", "W/\"abc\"")],
                Some(b"v"),
            )
            .expect("answers");
        assert_error(&r, 400, "invalid_header");
        // Unknown endpoint and method.
        assert_error(
            &c.request(id, "GET", "/v2/kv/x", &[], None)
                .expect("answers"),
            404,
            "no_route",
        );
        assert_error(
            &c.request(id, "PATCH", "/v1/kv/x", &[], None)
                .expect("answers"),
            405,
            "method_not_allowed",
        );
    }

    // Transactions: malformed JSON, unknown ops, wrong operand types, too many ops, an add on a
    // non-integer, an add out of bounds: all refused, none applied (not even their first steps).
    let id = follower;
    let too_many: Vec<String> = (0..129)
        .map(|i| format!("{{\"op\": \"put\", \"key\": \"txn/{i}\", \"value\": \"v\"}}"))
        .collect();
    let too_many = format!("{{\"success\": [{}]}}", too_many.join(","));
    let cases: Vec<(String, u16, &str)> = vec![
        ("{\"success\": [".into(), 400, "invalid_json"),
        ("{\"success\": [{\"op\": \"frob\", \"key\": \"txn/a\"}]}".into(), 400, "invalid_json"),
        ("{\"success\": [{\"op\": \"put\", \"key\": \"txn/a\"}]}".into(), 400, "invalid_json"),
        ("{\"compare\": [{\"key\": \"txn/a\", \"target\": \"int\", \"op\": \">=\", \"value\": \"x\"}], \"success\": [{\"op\": \"put\", \"key\": \"txn/a\", \"value\": \"1\"}]}".into(), 400, "invalid_txn"),
        ("{\"compare\": [{\"key\": \"txn/a\", \"target\": \"int\", \"op\": \"~\", \"value\": 1}]}".into(), 400, "invalid_txn"),
        ("{\"success\": [{\"op\": \"put\", \"key\": \"\", \"value\": \"1\"}]}".into(), 400, "invalid_key"),
        ("{\"succes\": []}".into(), 400, "invalid_json"),
        (too_many, 400, "txn_too_large"),
        ("{\"success\": [{\"op\": \"put\", \"key\": \"txn/a\", \"value\": \"1\"}, {\"op\": \"add\", \"key\": \"text\", \"delta\": 1}]}".into(), 400, "not_integer"),
        ("{\"success\": [{\"op\": \"put\", \"key\": \"txn/a\", \"value\": \"1\"}, {\"op\": \"add\", \"key\": \"txn/b\", \"delta\": -1, \"min\": 0}]}".into(), 409, "bound_violated"),
    ];
    for (body, status, code) in &cases {
        let r = c
            .request(id, "POST", "/v1/txn", &[], Some(body.as_bytes()))
            .expect("answers");
        assert_error(&r, *status, code);
    }
    let r = c
        .request(id, "GET", "/v1/kv?prefix=txn/", &[], None)
        .expect("answers");
    assert_eq!(
        r.json()["items"].as_array().map(Vec::len),
        Some(0),
        "a refused txn wrote {}",
        r.text()
    );
    // Malformed Idempotency-Key.
    let r = c
        .request(
            id,
            "PUT",
            "/v1/kv/idem",
            &[("Idempotency-Key", &"x".repeat(300))],
            Some(b"v"),
        )
        .expect("answers");
    assert_error(&r, 400, "invalid_header");

    // Nothing was written by any rejected request.
    for key in ["big", "m", "counter", "cas", "x", "idem"] {
        let r = c.get(3, key).expect("answers");
        assert_eq!(r.status, 404, "{key} must not exist: {}", r.text());
    }
    assert_eq!(c.get(3, "text").expect("answers").text(), "hello");
    assert_eq!(c.get(3, "limit").expect("answers").body.len(), 1024);
}

#[test]
fn oversized_body_is_refused_before_it_is_read_and_garbage_never_stops_a_node() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    // Announce 100 MiB and send none of it: the answer must come without the body.
    let head = "PUT /v1/kv/huge HTTP/1.1\r\nHost: keel\r\nContent-Length: 104857600\r\n\r\n";
    let out = Cluster::raw_exchange(&c.nodes[0].http, head.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 413"), "got: {text}");
    assert!(text.contains("payload_too_large"), "got: {text}");

    // Garbage on the HTTP port and on the peer port of every node.
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    for n in &c.nodes {
        let _ = Cluster::raw_exchange(&n.http, &garbage, Duration::from_millis(500));
        let _ = Cluster::raw_exchange(&n.peer, &garbage, Duration::from_millis(500));
        // A length prefix announcing a 4 GiB frame.
        let _ = Cluster::raw_exchange(
            &n.peer,
            &[0xff, 0xff, 0xff, 0xff, 1, 2, 3],
            Duration::from_millis(500),
        );
    }
    // Every node is alive and the cluster still takes writes and serves reads.
    for id in c.ids() {
        assert!(c.node(id).is_running(), "node {id} died");
        let r = c.request(id, "GET", "/health", &[], None).expect("answers");
        assert_eq!(r.status, 200);
    }
    for id in c.ids() {
        c.put_until_ok(id, &format!("after-garbage-{id}"), b"fine", DEADLINE);
    }
    for id in c.ids() {
        for k in c.ids() {
            assert_eq!(
                c.get(id, &format!("after-garbage-{k}"))
                    .expect("answers")
                    .text(),
                "fine"
            );
        }
    }
}

/// The largest value `--max-value-bytes` may allow (32 MiB) is written through a follower
/// (forwarded to the leader) and reaches every node, and a node given a larger limit refuses to
/// start. Up to 2026-12-08 the limit could be 64 MiB, and a value of 64 MiB made a
/// log append larger than a peer frame may be: the followers dropped the connection, the write
/// never committed (the client got 504 `outcome_unknown`) and the leader lost its leadership
/// (seen by hand: `KEEL_MAX_VALUE_BYTES=67108864 keel cluster`, one PUT of 64 MiB).
#[test]
fn the_largest_value_the_configuration_allows_reaches_every_node() {
    const LARGEST: usize = 32 * 1024 * 1024;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = std::process::Command::new(keel_tests::keel_bin())
        .args(["server", "--id", "1", "--cluster", "1=127.0.0.1:1"])
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--max-value-bytes", &(LARGEST + 1).to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run keel server");
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = server.try_wait().expect("wait for keel server") {
            break Some(status);
        }
        if std::time::Instant::now() > deadline {
            let _ = server.kill();
            let _ = server.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = server.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
    }
    assert!(
        status.is_some_and(|s| !s.success()),
        "started with a limit over 32 MiB: {status:?}"
    );
    assert!(
        stderr.contains("--max-value-bytes must be between 1 and 33554432"),
        "{stderr}"
    );

    // A generous write deadline: 32 MiB is appended and synced on three nodes of a shared machine.
    let mut c = Cluster::start_with(
        3,
        &[
            "--max-value-bytes",
            &LARGEST.to_string(),
            "--request-timeout",
            "60s",
        ],
    );
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let value: Vec<u8> = (0..LARGEST).map(|i| (i % 251) as u8).collect();
    // Its own client: the harness's gives up after 15 s, and 32 MiB is appended and synced on
    // three nodes of a shared machine.
    let http = keel_tests::http::Http::new(Duration::from_secs(2), Duration::from_secs(120));
    let send = |id: u64, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]| {
        http.send(&c.http_addr(id), method, path, headers, Some(body))
            .expect("answers")
    };
    let r = send(follower, "PUT", "/v1/kv/big", &[], &value);
    assert_eq!(r.status, 200, "{}", r.text());
    for id in c.ids() {
        wait_until(DEADLINE, &format!("node {id} serves the value"), || {
            let r = c.get(id, "big?consistency=stale").ok()?;
            (r.status == 200 && r.body == value).then_some(())
        });
    }
    // (A byte more is refused with 413 like any value over the limit: `bad_requests_get_clear_
    // errors_and_change_nothing`. Sent here, the node answers before it has read 32 MiB and the
    // client's sending may fail first.)

    // A transaction's gets return at most 32 MiB of values (one value of the largest size),
    // through the log (an idempotency key) and forwarded: up to 2026-12-08 three gets of it
    // (96 MiB) were applied, and their answer, larger than a peer frame, never reached the
    // follower: the client got 504 `outcome_unknown` for an applied transaction, and the answer
    // kept with its key made every snapshot for five minutes one no node could receive (seen by
    // hand). Now they are refused, and nothing of the transaction is written.
    let txn = |gets: usize| {
        let steps: Vec<String> = std::iter::once(r#"{"op": "put", "key": "marker", "value": "1"}"#)
            .map(str::to_string)
            .chain((0..gets).map(|_| r#"{"op": "get", "key": "big"}"#.to_string()))
            .collect();
        format!(r#"{{"success": [{}]}}"#, steps.join(", "))
    };
    let idem = [("Idempotency-Key", "too-large")];
    let r = send(follower, "POST", "/v1/txn", &idem, txn(2).as_bytes());
    assert_error(&r, 400, "txn_too_large");
    // Its retry (same key, same body) is answered the same way.
    let r = send(leader, "POST", "/v1/txn", &idem, txn(2).as_bytes());
    assert_error(&r, 400, "txn_too_large");
    let r = c.get(leader, "marker").expect("answers");
    assert_eq!(r.status, 404, "the refused transaction wrote: {}", r.text());
    let r = send(follower, "POST", "/v1/txn", &[], txn(2).as_bytes());
    assert_error(&r, 400, "txn_too_large");
    // One get of it fits, through the log and back to the follower.
    let idem = [("Idempotency-Key", "fits")];
    let r = send(follower, "POST", "/v1/txn", &idem, txn(1).as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    // A page of a list stops early past 16 MiB of values, and says there is more.
    assert_eq!(
        c.put(leader, "big2", b"small").expect("answers").status,
        200
    );
    let r = send(follower, "GET", "/v1/kv?prefix=big&limit=10", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let page = r.json();
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1), "one key");
    assert_eq!(page["more"], true);

    for id in c.ids() {
        assert!(c.node(id).is_running(), "node {id} stopped");
    }
}
