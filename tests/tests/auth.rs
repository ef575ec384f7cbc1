//! Bearer tokens with roles and key prefixes (`--auth-file`), on a real cluster: a stranger
//! without a token or with a wrong one gets 401, a token outside its role or prefixes gets 403
//! and changes nothing, admin endpoints need admin, backups stay under `--backup-dir`, tokens
//! rotate without a restart, and keel-client and the CLI present a token.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use keel_client::keel_api::watch::SseEvent;
use keel_tests::http::Http;
use keel_tests::watch::change;
use keel_tests::{keel_bin, wait_until, Cluster, Resp, DEADLINE};
use serde_json::json;

const ADMIN: &str = "admin-token-0123456789";
const WRITER: &str = "writer-token-0123456789";
const READER: &str = "reader-token-0123456789";
const APP: &str = "app-token-0123456789abc";

fn auth_file(dir: &tempfile::TempDir, tokens: serde_json::Value) -> PathBuf {
    let path = dir.path().join("auth.json");
    std::fs::write(&path, json!({ "tokens": tokens }).to_string()).expect("auth file written");
    path
}

fn all_tokens() -> serde_json::Value {
    json!([
        {"name": "ops", "token": ADMIN, "role": "admin"},
        {"name": "writer", "token": WRITER, "role": "write"},
        {"name": "viewer", "token": READER, "role": "read"},
        {"name": "app", "token": APP, "role": "write", "prefixes": ["app/"]},
    ])
}

/// A cluster with `--auth-file`; the harness's own requests present the admin token.
fn start(path: &std::path::Path) -> Cluster {
    let p = path.display().to_string();
    let mut c = Cluster::start_with(3, &["--auth-file", &p]);
    c.use_token(ADMIN);
    c
}

/// A client of the test's own, without a default token.
fn plain() -> Http {
    Http::new(Duration::from_secs(2), Duration::from_secs(15))
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// One request to node `id`, with `token` or with none at all.
fn call(
    c: &Cluster,
    id: u64,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Resp {
    let auth = token.map(bearer);
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    let addr = &c.endpoints()[id as usize - 1];
    plain()
        .send(addr, method, path, &headers, body.map(str::as_bytes))
        .expect("the node answers")
}

fn assert_error(r: &Resp, status: u16, code: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.error_code().as_deref(), Some(code), "{}", r.text());
}

/// The value of `key` as the admin reads it (None when absent).
fn value(c: &Cluster, id: u64, key: &str) -> Option<String> {
    let r = call(c, id, "GET", &format!("/v1/kv/{key}"), Some(ADMIN), None);
    match r.status {
        200 => Some(r.text()),
        404 => None,
        s => panic!("admin read of {key}: {s} {}", r.text()),
    }
}

#[test]
fn tokens_decide_who_may_do_what_and_refusals_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = auth_file(&dir, all_tokens());
    let mut c = start(&path);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];

    // Probes need no token; everything else does.
    assert_eq!(call(&c, follower, "GET", "/health", None, None).status, 200);
    for (method, path) in [
        ("GET", "/v1/kv/x"),
        ("PUT", "/v1/kv/x"),
        ("GET", "/v1/status"),
        ("GET", "/metrics"),
        ("POST", "/v1/admin/backup"),
    ] {
        let r = call(&c, follower, method, path, None, Some("v"));
        assert_error(&r, 401, "unauthorized");
        assert!(
            r.headers
                .get("www-authenticate")
                .is_some_and(|v| v.starts_with("Bearer")),
            "{method} {path}: {:?}",
            r.headers
        );
        let wrong = call(
            &c,
            follower,
            method,
            path,
            Some("not-a-known-token-at-all"),
            Some("v"),
        );
        assert_error(&wrong, 401, "unauthorized");
    }
    assert_eq!(value(&c, leader, "x"), None, "a refused PUT wrote nothing");

    // A writer writes through a follower (the follower forwards), a reader reads.
    let r = call(&c, follower, "PUT", "/v1/kv/x", Some(WRITER), Some("1"));
    assert_eq!(r.status, 200, "{}", r.text());
    let r = call(&c, follower, "GET", "/v1/kv/x", Some(READER), None);
    assert_eq!((r.status, r.text().as_str()), (200, "1"));
    // A reader may not write, by any route.
    for (method, path, body) in [
        ("PUT", "/v1/kv/x", "2"),
        ("DELETE", "/v1/kv/x", ""),
        ("POST", "/v1/kv/x/add", "{\"delta\": 1}"),
        (
            "POST",
            "/v1/txn",
            "{\"success\": [{\"op\": \"put\", \"key\": \"x\", \"value\": \"3\"}]}",
        ),
    ] {
        let r = call(&c, follower, method, path, Some(READER), Some(body));
        assert_error(&r, 403, "forbidden");
    }
    // Its read-only transaction is a read.
    let r = call(
        &c,
        follower,
        "POST",
        "/v1/txn",
        Some(READER),
        Some("{\"success\": [{\"op\": \"get\", \"key\": \"x\"}]}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // ...unless it carries an idempotency key: then it goes through the log and takes a key
    // other writers may want, so it is a write.
    let auth = bearer(READER);
    let keyed = plain()
        .send(
            &c.endpoints()[follower as usize - 1],
            "POST",
            "/v1/txn",
            &[("authorization", &auth), ("idempotency-key", "k-1")],
            Some(b"{\"success\": [{\"op\": \"get\", \"key\": \"x\"}]}"),
        )
        .expect("answers");
    assert_error(&keyed, 403, "forbidden");
    assert_eq!(
        value(&c, leader, "x").as_deref(),
        Some("1"),
        "refused writes changed nothing"
    );

    // A prefix-limited token: inside its prefix only, in every kind of request.
    assert_eq!(
        call(&c, leader, "PUT", "/v1/kv/app/a", Some(APP), Some("ok")).status,
        200
    );
    assert_error(
        &call(&c, leader, "PUT", "/v1/kv/other", Some(APP), Some("no")),
        403,
        "forbidden",
    );
    assert_error(
        &call(&c, leader, "GET", "/v1/kv/x", Some(APP), None),
        403,
        "forbidden",
    );
    assert_eq!(
        call(&c, leader, "GET", "/v1/kv?prefix=app/", Some(APP), None).status,
        200
    );
    assert_error(
        &call(&c, leader, "GET", "/v1/kv", Some(APP), None),
        403,
        "forbidden",
    );
    assert_error(
        &call(&c, leader, "GET", "/v1/kv?prefix=ap", Some(APP), None),
        403,
        "forbidden",
    );
    // Watches: the read role on the prefix or the key watched.
    let app = bearer(APP);
    for (query, token, status) in [
        ("prefix=app/", Some(app.as_str()), 200),
        ("key=app/x", Some(app.as_str()), 200),
        ("prefix=ap", Some(app.as_str()), 403),
        ("key=x", Some(app.as_str()), 403),
        ("prefix=", Some(app.as_str()), 403),
        ("prefix=app/", None, 401),
    ] {
        let headers: Vec<(&str, &str)> = match token {
            Some(t) => vec![("authorization", t)],
            None => vec![("authorization", "Bearer not-a-token")],
        };
        let got = match c.watch(leader, query, &headers) {
            Ok(s) => s.status,
            Err(r) => r.status,
        };
        assert_eq!(got, status, "watch {query} with {token:?}");
    }
    let mixed = json!({
        "compare": [{"key": "x", "target": "version", "op": ">", "value": 0}],
        "success": [{"op": "put", "key": "app/b", "value": "sneaky"}],
    })
    .to_string();
    assert_error(
        &call(&c, leader, "POST", "/v1/txn", Some(APP), Some(&mixed)),
        403,
        "forbidden",
    );
    assert_eq!(
        value(&c, leader, "app/b"),
        None,
        "the refused transaction did nothing"
    );
    // Keys are checked once decoded (and are names, not paths: `app/../x` is inside `app/`).
    assert_eq!(
        call(
            &c,
            leader,
            "PUT",
            "/v1/kv/%61pp%2Fenc",
            Some(APP),
            Some("v")
        )
        .status,
        200
    );
    assert_eq!(value(&c, leader, "app/enc").as_deref(), Some("v"));
    assert_error(
        &call(
            &c,
            leader,
            "PUT",
            "/v1/kv/other%2Fapp%2Fx",
            Some(APP),
            Some("v"),
        ),
        403,
        "forbidden",
    );

    // Administrative endpoints need the admin role.
    let add = json!({"id": 9, "peer_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2"}).to_string();
    let remove = format!("/v1/cluster/members/{follower}");
    let promote = format!("/v1/cluster/members/{follower}/promote");
    let admin_calls = [
        ("POST", promote.as_str(), None),
        ("POST", "/v1/cluster/members", Some(add.as_str())),
        ("POST", "/v1/cluster/transfer-leader", Some("")),
        ("DELETE", remove.as_str(), None),
        ("POST", "/v1/admin/backup", Some("{\"dir\": \"b\"}")),
    ];
    for token in [WRITER, READER, APP] {
        for (method, path, body) in admin_calls {
            let r = call(&c, leader, method, path, Some(token), body);
            assert_error(&r, 403, "forbidden");
        }
    }
    // Status and the member list are reads.
    assert_eq!(
        call(&c, leader, "GET", "/v1/cluster/members", Some(READER), None).status,
        200
    );
    assert_eq!(
        call(&c, leader, "GET", "/v1/status", Some(READER), None).status,
        200
    );

    // Backups: a new directory under --backup-dir, nowhere else.
    let root = c.dir().join("backups");
    let r = call(
        &c,
        leader,
        "POST",
        "/v1/admin/backup",
        Some(ADMIN),
        Some("{\"dir\": \"first\"}"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        root.join("first").is_dir(),
        "written under the backup directory"
    );
    let outside = dir.path().join("escaped");
    for d in ["../escaped", outside.to_str().expect("utf-8"), "first"] {
        let body = json!({ "dir": d }).to_string();
        let r = call(
            &c,
            leader,
            "POST",
            "/v1/admin/backup",
            Some(ADMIN),
            Some(&body),
        );
        assert_error(&r, 400, "invalid_dir");
    }
    assert!(
        !outside.exists() && !c.dir().join("escaped").exists(),
        "nothing written outside"
    );
}

#[test]
fn tokens_rotate_without_a_restart_and_clients_present_theirs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = auth_file(&dir, all_tokens());
    let mut c = start(&path);
    let leader = c.wait_for_leader();

    // keel-client with a token; the same client without one is refused.
    let endpoints = c.endpoints();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let client = keel_client::Client::builder(endpoints.clone())
            .token(WRITER)
            .build()
            .await
            .expect("client");
        client.put("lib", "v").await.expect("a put with a token");
        assert_eq!(&client.get("lib").await.expect("read").value[..], b"v");
        let anonymous = keel_client::Client::builder(endpoints.clone())
            .build()
            .await
            .expect("client");
        let err = anonymous.put("lib", "w").await.expect_err("no token");
        assert!(err.to_string().contains("unauthorized"), "{err}");
    });

    // The CLI, with the token from the environment.
    let eps = endpoints.join(",");
    let cli = |token: Option<&str>, args: &[&str]| {
        let mut cmd = Command::new(keel_bin());
        cmd.args(["--endpoints", &eps])
            .args(args)
            .env_remove("KEEL_TOKEN");
        if let Some(t) = token {
            cmd.env("KEEL_TOKEN", t);
        }
        cmd.output().expect("keel runs")
    };
    let out = cli(Some(WRITER), &["put", "cli", "yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cli(None, &["get", "cli"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Rotation: the writer's token is replaced; every node drops the old one and takes the new
    // one without a restart.
    let mut rotated = all_tokens();
    rotated[1]["token"] = json!("writer-token-ROTATED-0001");
    std::fs::write(&path, json!({ "tokens": rotated }).to_string()).expect("rewritten");
    for id in c.ids() {
        wait_until(
            DEADLINE,
            "the old token refused and the new one taken",
            || {
                let old = call(&c, id, "GET", "/v1/kv/cli", Some(WRITER), None).status;
                let new = call(
                    &c,
                    id,
                    "GET",
                    "/v1/kv/cli",
                    Some("writer-token-ROTATED-0001"),
                    None,
                )
                .status;
                (old == 401 && new == 200).then_some(())
            },
        );
    }
    // A broken file keeps the tokens in force: once every node has read it and said so.
    std::fs::write(&path, "{ not json").expect("broken");
    for id in c.ids() {
        wait_until(DEADLINE, "the broken auth file read and refused", || {
            c.log_tail(id, 200)
                .contains("auth file changed but cannot be used")
                .then_some(())
        });
    }
    let r = call(
        &c,
        leader,
        "PUT",
        "/v1/kv/after",
        Some("writer-token-ROTATED-0001"),
        Some("1"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    c.wait_for_leader();
}

/// A watch ends when its token is revoked (the auth file rewritten without it): the token is
/// checked while the stream runs, not only when it opens. Failed before the fix: the stream
/// went on sending progress events to the revoked token.
#[test]
fn a_watch_ends_when_its_token_is_revoked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = auth_file(&dir, all_tokens());
    let mut c = start(&path);
    let leader = c.wait_for_leader();
    let open = |token: &str, query: &str| {
        let auth = bearer(token);
        match c.watch(leader, query, &[("Authorization", auth.as_str())]) {
            Ok(w) => w,
            Err(r) => panic!("watch with {token} refused: {} {}", r.status, r.text()),
        }
    };
    let progress = |e: &SseEvent| e.event == "progress";
    // Three watches, each running (a progress event seen): the viewer's token will be revoked,
    // the app's narrowed to another prefix, the writer's left as it is (the control).
    let mut revoked = open(READER, "prefix=&progress_ms=100");
    let mut narrowed = open(APP, "prefix=app/&progress_ms=100");
    let mut kept = open(WRITER, "prefix=&progress_ms=100");
    for w in [&mut revoked, &mut narrowed, &mut kept] {
        w.until(DEADLINE, "a first progress event", progress);
    }

    let mut tokens = all_tokens();
    if let Some(list) = tokens.as_array_mut() {
        list.retain(|t| t["token"] != READER);
        for t in list.iter_mut() {
            if t["token"] == APP {
                t["prefixes"] = json!(["other/"]);
            }
        }
    }
    std::fs::write(&path, json!({ "tokens": tokens }).to_string()).expect("rewritten");
    for (w, whose) in [(&mut revoked, "revoked"), (&mut narrowed, "narrowed")] {
        let got = w.until(DEADLINE, &format!("the {whose} watch's cutoff"), |e| {
            e.event == "cutoff"
        });
        let last = got.last().expect("the cutoff");
        assert!(
            last.data.contains("\"reason\":\"unauthorized\""),
            "{whose}: {last:?}"
        );
        assert!(
            w.next(Duration::from_secs(2)).is_none(),
            "{whose}: nothing after the cutoff"
        );
    }
    // Both cut off, so the rewrite was read: the writer's watch goes on and sees a new write.
    let put = c.put(leader, "after-revocation", b"v").expect("put");
    assert_eq!(put.status, 200, "{}", put.text());
    let got = kept.until(DEADLINE, "the write after the revocation", |e| {
        e.event == "put" && change(e).key == "after-revocation"
    });
    assert!(
        got.iter().all(|e| e.event != "cutoff"),
        "the untouched token's watch was cut off: {got:?}"
    );
}
