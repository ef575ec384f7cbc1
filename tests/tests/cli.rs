//! The `keel` command line, run as a user runs it against a real cluster: each client command
//! prints what the API answered, and exits 0 on success, 2 for a missing key, 1 on an error.

use std::process::Command;

use keel_tests::{keel_bin, Cluster};
use serde_json::Value;

/// Runs `keel ARGS` against `c`; returns the exit code and stdout.
fn keel(c: &Cluster, args: &[&str]) -> (i32, String) {
    let out = Command::new(keel_bin())
        .args(["--endpoints", &c.endpoints().join(",")])
        .args(args)
        .output()
        .expect("run keel");
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    eprintln!(
        "keel {args:?} → {:?}\n{stdout}\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn client_commands_print_the_answers_and_exit_with_meaningful_codes() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();

    let (code, out) = keel(&c, &["put", "cli/a", "hello", "--mode", "sync"]);
    assert_eq!(code, 0);
    let put = json(&out);
    assert_eq!(put["acked"], "All");
    assert!(put["index"]
        .as_u64()
        .is_some_and(|i| i == put["version"].as_u64().unwrap_or(0)));
    assert_eq!(keel(&c, &["get", "cli/a"]), (0, "hello".to_string()));
    assert_eq!(
        keel(&c, &["get", "cli/a", "--consistency", "stale"]).1,
        "hello"
    );
    assert_eq!(
        keel(&c, &["get", "cli/missing"]).0,
        2,
        "a missing key exits 2"
    );

    let (code, out) = keel(&c, &["add", "cli/n", "5"]);
    assert_eq!((code, json(&out)["value"].as_i64()), (0, Some(5)));
    let (code, _) = keel(&c, &["add", "cli/n", "-9", "--min", "0"]);
    assert_eq!(code, 1, "a bound violation is an error");
    assert_eq!(keel(&c, &["get", "cli/n"]).1, "5");

    let version = put["version"].as_u64().expect("version").to_string();
    assert_eq!(keel(&c, &["cas", "cli/a", &version, "bonjour"]).0, 0);
    assert_eq!(keel(&c, &["cas", "cli/a", &version, "lost"]).0, 1);
    assert_eq!(keel(&c, &["get", "cli/a"]).1, "bonjour");

    // A transaction file is the body of POST /v1/txn; the answer is the API's.
    let file = c.dir().join("txn.json");
    std::fs::write(
        &file,
        r#"{"compare": [{"key": "cli/n", "target": "int", "op": ">=", "value": 3}],
            "success": [{"op": "add", "key": "cli/n", "delta": -3, "min": 0},
                        {"op": "get", "key": "cli/a"},
                        {"op": "get", "key": "cli/none"}],
            "failure": []}"#,
    )
    .expect("write the txn file");
    let (code, out) = keel(&c, &["txn", &file.display().to_string()]);
    assert_eq!(code, 0);
    let t = json(&out);
    assert_eq!(t["succeeded"], true);
    assert_eq!(t["results"][0]["op"], "add");
    assert_eq!(t["results"][0]["value"], 2);
    assert_eq!(t["results"][1]["value"], "bonjour");
    assert_eq!(t["results"][2]["found"], false);
    assert!(t["index"].as_u64().is_some());

    let (code, out) = keel(&c, &["list", "cli/"]);
    assert_eq!(code, 0);
    let keys: Vec<&str> = out.lines().filter_map(|l| l.split('\t').next()).collect();
    assert_eq!(keys, vec!["cli/a", "cli/n"]);

    let (code, out) = keel(&c, &["delete", "cli/a"]);
    assert_eq!((code, json(&out)["deleted"].as_bool()), (0, Some(true)));
    assert_eq!(keel(&c, &["get", "cli/a"]).0, 2);

    let (code, out) = keel(&c, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains(&format!("leader Some({leader})")), "{out}");
    assert_eq!(out.matches("  member ").count(), 3, "{out}");
    let (code, out) = keel(&c, &["member", "list"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.lines().filter(|l| l.contains("\tvoter\t")).count(),
        3,
        "{out}"
    );
    assert_eq!(keel(&c, &["health"]).0, 0);
    assert_eq!(keel(&c, &["health", "--ready"]).0, 0);
}

#[test]
fn health_fails_against_a_node_that_is_not_there() {
    let out = Command::new(keel_bin())
        .args(["--endpoints", "127.0.0.1:1", "health"])
        .output()
        .expect("run keel");
    assert_eq!(out.status.code(), Some(1));
}

/// `keel get KEY | head -c 10`: the reader goes before the value is written. The command ends
/// quietly with success (found by the compose test: `println!` panicked, exit code 101, which
/// `pipefail` turned into a failed script).
#[test]
fn a_command_whose_output_is_closed_early_ends_quietly() {
    let mut c = Cluster::start(1);
    let leader = c.wait_for_leader();
    // Larger than a pipe's buffer: the write meets the closed pipe whenever the reader goes.
    let value = vec![b'v'; 256 * 1024];
    c.put_until_ok(leader, "cli/big", &value, keel_tests::DEADLINE);
    let mut child = Command::new(keel_bin())
        .args(["--endpoints", &c.endpoints().join(","), "get", "cli/big"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run keel");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("keel ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "keel panicked: {stderr}");
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
}
