//! The command line against secure clusters: `keel` speaks https with a CA, a client
//! certificate and a token to nodes that require all three, and `keel cluster --secure` starts a
//! local cluster with TLS on both ports and an admin token, which the CLI then uses.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use keel_client::http::{HttpClient, HttpError, HttpOptions};
use keel_client::TlsOptions;
use keel_tests::http::Http;
use keel_tests::secure::Secure;
use keel_tests::{free_ports, keel_bin, wait_until, Cluster, DEADLINE};

/// Runs `keel` with `args`; (exit code, stdout, stderr).
fn keel(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(keel_bin())
        .args(args)
        .output()
        .expect("run keel");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    eprintln!(
        "keel {args:?} → {:?}\n{stdout}\n{stderr}",
        out.status.code()
    );
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

#[test]
fn the_cli_presents_a_ca_a_client_certificate_and_a_token() {
    let mut c = Cluster::start_secure(3, &["--client-certs", "required"]);
    c.wait_for_leader();
    let s = Secure::get();
    let file = |name: &str| s.dir().join(name).display().to_string();
    let (ca, cert, key) = (
        file("ca.pem"),
        file("client-tests.pem"),
        file("client-tests-key.pem"),
    );
    let endpoints = c.endpoints().join(",");
    let with = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["--endpoints", &endpoints, "--ca", &ca]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        keel(&refs)
    };
    let full = |cmd: &[&str]| {
        let mut v = with(&["--cert", &cert, "--key", &key, "--token", &s.token]);
        v.extend(cmd.iter().map(|s| s.to_string()));
        run(v)
    };
    let (code, _, _) = full(&["put", "secure/cli", "hello"]);
    assert_eq!(code, 0, "a put with CA, certificate and token");
    assert_eq!(full(&["get", "secure/cli"]).1, "hello");

    // Without the client certificate the node lets no TLS session in; without the token it
    // answers 401. Neither writes.
    let mut no_cert = with(&["--token", &s.token]);
    no_cert.extend(["put", "secure/nocert", "x"].map(String::from));
    let (code, _, err) = run(no_cert);
    assert_ne!(code, 0, "a put without a client certificate succeeded");
    // Said plainly. TLS 1.3 sends the request before the server checks the certificate, so the
    // refusal is an alert after the request; it was taken for a broken connection and reported
    // as "outcome unknown: gave up after 12 attempts: timed out: ... fatal alert".
    assert!(
        err.contains("refused the TLS session") && err.contains("client certificate"),
        "{err}"
    );
    let mut no_token = with(&["--cert", &cert, "--key", &key]);
    no_token.extend(["put", "secure/notoken", "x"].map(String::from));
    let (code, _, err) = run(no_token);
    assert_ne!(code, 0, "a put without a token succeeded");
    assert!(err.contains("unauthorized") || err.contains("401"), "{err}");
    for k in ["secure/nocert", "secure/notoken"] {
        assert_eq!(full(&["get", k]).0, 2, "{k} was written");
    }
}

/// A client without a certificate, where one is required, is told so on every try, whichever
/// way the node's alert races the request. With TLS 1.3 the alert comes after the client's
/// handshake is done: read with the answer it is a refusal, but when the connection dies before
/// the request is handed to it, hyper says only "connection was not ready", and the refusal was
/// reported as a broken request, its outcome unknown (seen in CI: the CLI gave up after 12
/// tries). Many fresh connections, sixteen at a time, make both orders happen: before the fix,
/// every one of twelve runs failed, with 2 to 19 of its 24,000 tries misreported.
///
/// A try with no answer at all is counted apart and allowed (at most two): about one try in
/// 100,000 waits out the client's timeout although a packet capture shows every connection
/// refused and closed within milliseconds, with and without the fix. That is hyper's own race
/// (hyperium/hyper#4122, open; fix proposed in #4150): a request sent just as the connection's
/// task ends can be left in the task's channel, answered by nobody.
#[test]
fn a_refused_tls_session_is_named_whichever_way_the_alert_races_the_request() {
    let mut c = Cluster::start_secure(1, &["--client-certs", "required"]);
    c.wait_for_leader();
    let addr = c.endpoints()[0].clone();
    let s = Secure::get();
    let no_cert = TlsOptions::from_files(&s.dir().join("ca.pem"), None).expect("the CA loads");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .expect("runtime");
    const TASKS: usize = 16;
    const TRIES: usize = 1500;
    let (others, silent) = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (addr, tls, token) = (addr.clone(), no_cert.clone(), s.token.clone());
            tasks.push(tokio::spawn(async move {
                let (mut others, mut silent) = (Vec::new(), 0usize);
                for _ in 0..TRIES {
                    // A new client each time: a fresh connection and handshake.
                    let http = HttpClient::new(HttpOptions {
                        request_timeout: Duration::from_secs(5),
                        token: Some(token.clone()),
                        tls: Some(tls.clone()),
                        ..HttpOptions::default()
                    });
                    let r = http
                        .request(&addr, "PUT", "/v1/kv/race", &[], Bytes::from_static(b"x"))
                        .await;
                    match r {
                        Err(HttpError::TlsRefused { .. }) => {}
                        Err(HttpError::Timeout { .. }) => silent += 1,
                        other => others.push(format!("{other:?}")),
                    }
                }
                (others, silent)
            }));
        }
        let (mut all, mut silent) = (Vec::new(), 0);
        for t in tasks {
            let (o, s) = t.await.expect("a task");
            all.extend(o);
            silent += s;
        }
        (all, silent)
    });
    eprintln!(
        "of {} tries: {} misreported, {} unanswered",
        TASKS * TRIES,
        others.len(),
        silent
    );
    assert!(others.is_empty(), "not named a refusal: {others:?}");
    assert!(silent <= 2, "{silent} tries got no answer");
    let r = c.get(1, "race").expect("answers");
    assert_eq!(r.status, 404, "a refused client wrote: {}", r.text());
}

/// A base port `p` with `p..p+3` and `p+100..p+103` free (what `keel cluster` binds).
fn cluster_base_port() -> u16 {
    for _ in 0..50 {
        let base = free_ports(1)[0];
        if base > 31_800 {
            continue;
        }
        let all_free = (0..3)
            .flat_map(|i| [base + i, base + 100 + i])
            .all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no free ports for a local cluster after 50 tries");
}

/// The launcher and its nodes (PR_SET_PDEATHSIG stops the nodes when it dies): killed on drop.
struct Launcher(Child);

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn keel_cluster_secure_starts_a_cluster_with_tls_and_an_admin_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let base = cluster_base_port();
    let log = std::fs::File::create(dir.path().join("cluster.log")).expect("log file");
    let _launcher = Launcher(
        Command::new(keel_bin())
            .args(["cluster", "--secure", "--nodes", "3"])
            .arg("--data-dir")
            .arg(&data)
            .args(["--base-port", &base.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .expect("start keel cluster --secure"),
    );
    let ca = data.join("certs").join("ca.pem");
    let auth = data.join("auth.json");
    wait_until(DEADLINE, "the certificates and the auth file", || {
        (ca.exists() && auth.exists()).then_some(())
    });
    let token = admin_token(&auth);
    let addrs: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", base + i)).collect();
    let t = Duration::from_secs(5);
    let https = Http::with(
        t,
        t,
        Some(&token),
        Some(TlsOptions::from_files(&ca, None).expect("the CA loads")),
    );
    for a in &addrs {
        wait_until(DEADLINE, "a node ready over https", || {
            https
                .send(a, "GET", "/ready", &[], None)
                .ok()
                .filter(|r| r.status == 200)
        });
    }
    // The CLI with the CA and the token the launcher wrote.
    let endpoints = addrs.join(",");
    let ca_arg = ca.display().to_string();
    let cli = |cmd: &[&str]| {
        let mut args = vec![
            "--endpoints",
            &endpoints,
            "--ca",
            &ca_arg,
            "--token",
            &token,
        ];
        args.extend_from_slice(cmd);
        keel(&args)
    };
    assert_eq!(cli(&["put", "local/secure", "yes"]).0, 0);
    assert_eq!(cli(&["get", "local/secure"]).1, "yes");
    // Plain HTTP is refused; https without a token gets 401.
    let plain = Http::with(t, t, Some(&token), None)
        .send(&addrs[0], "GET", "/v1/kv/local/secure", &[], None)
        .expect("an answer in plain text");
    assert_eq!(plain.status, 400, "{}", plain.text());
    assert!(plain.text().contains("tls_required"), "{}", plain.text());
    let anonymous = Http::with(
        t,
        t,
        None,
        Some(TlsOptions::from_files(&ca, None).expect("the CA loads")),
    )
    .send(&addrs[1], "GET", "/v1/kv/local/secure", &[], None)
    .expect("an answer");
    assert_eq!(anonymous.status, 401, "{}", anonymous.text());
    // The launcher gives each of its nodes an equal share of this machine's cores as workers
    // (or what the caller set).
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let share = match std::env::var("KEEL_WORKER_THREADS") {
        Ok(v) => match v.parse::<usize>() {
            Ok(0) => format!("workers={cores}"),
            _ => format!("workers={v}"),
        },
        Err(_) => format!("workers={}", (cores / 3).max(1)),
    };
    for id in 1..=3 {
        let log = std::fs::read_to_string(data.join(format!("node{id}.log"))).expect("node log");
        // A whole field: "workers=1" must not pass for "workers=12".
        let logged = log
            .lines()
            .filter(|l| l.contains("keel node started"))
            .any(|l| l.split_whitespace().any(|w| w == share));
        assert!(logged, "node {id} does not log {share}:\n{log}");
    }
}

/// The admin token of the auth file `keel cluster --secure` wrote.
fn admin_token(auth: &Path) -> String {
    let text = wait_until(DEADLINE, "a complete auth file", || {
        let t = std::fs::read_to_string(auth).ok()?;
        serde_json::from_str::<serde_json::Value>(&t).ok()
    });
    text["tokens"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["role"] == "admin"))
        .and_then(|t| t["token"].as_str())
        .expect("an admin token in the auth file")
        .to_string()
}
