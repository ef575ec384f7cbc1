//! Test harness for multi-process keel clusters: real `keel server` processes on loopback, each
//! with its own RocksDB directory, driven over real HTTP.
//!
//! A [`Cluster`] picks free ports, starts the nodes, and can kill (-9), pause (SIGSTOP), resume
//! and restart any of them. Every wait is a bounded poll for a condition ([`wait_until`]), never
//! a fixed sleep. When a test panics, the cluster keeps its directory (data and node logs) and
//! prints where it is, with the tail of each node's log.
//!
//! The `keel` binary is found through `KEEL_BIN`, or next to the test executable's directory
//! (`target/<profile>/keel`): build it first (`cargo build --release --workspace`).

#![warn(missing_docs)]

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod checker;
mod cluster;
pub mod coord;
mod faults;
pub mod history;
pub mod http;
pub mod locks;
pub mod nemesis;
pub mod netns;
pub mod observe;
pub mod peerwire;
mod plan;
pub mod powerfs;
pub mod proxy;
pub mod secure;
pub mod suite;
mod waits;
pub mod watch;
pub mod watchers;
pub mod workload;

pub use cluster::{Cluster, Node, Spec};
pub use faults::Cut;
pub use proxy::{LinkMode, LinkProxy};

/// Default deadline for cluster-wide conditions (leader elected, data replicated).
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Poll interval of [`wait_until`].
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `cond` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_until<T>(timeout: Duration, what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = cond() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {:?} waiting for {what}", timeout);
        }
        std::thread::sleep(POLL);
    }
}

/// Whether every thread of process `pid` is in the stopped state (`T` in
/// `/proc/PID/task/TID/stat`). A process that is gone counts as stopped: nothing of it runs.
pub fn all_threads_stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|task| {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            return true; // the thread exited
        };
        // The state follows the command name, which is in parentheses and may hold spaces.
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "T" || state == "t" || state == "Z" || state == "X")
    })
}

/// Path of the `keel` binary under test.
pub fn keel_bin() -> PathBuf {
    if let Ok(p) = std::env::var("KEEL_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // A test runs from target/<profile>/deps/, keel-bench from target/<profile>/: keel sits in
    // target/<profile>/ either way.
    let candidates: Vec<PathBuf> = exe
        .ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("keel"))
        .collect();
    match candidates.iter().find(|b| b.is_file()) {
        Some(bin) => bin.clone(),
        None => panic!(
            "keel not found in {candidates:?}: build it first with `cargo build --release --workspace` or set KEEL_BIN"
        ),
    }
}

/// Ports handed out by this process (never twice, so parallel tests cannot collide).
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
/// Ports are picked from here: below the kernel's ephemeral range (32768-60999 by default), so
/// that the source port of some outgoing connection cannot take a port between the moment it is
/// picked and the moment the node binds it (which once failed a CI run with "Address already in
/// use"), and above the ports people run services on.
const PORTS: std::ops::Range<u16> = 20_000..32_000;

/// Picks `n` distinct TCP ports that are free on 127.0.0.1 now and were never handed out by
/// this process before.
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut handed = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let mut out = Vec::with_capacity(n);
    let span = u32::from(PORTS.end - PORTS.start);
    // Start at a random place so that two test processes rarely walk the same ports.
    let mut at = rand::random::<u32>() % span;
    for _ in 0..span {
        if out.len() == n {
            break;
        }
        at = (at + 1) % span;
        let port = PORTS.start + at as u16;
        if handed.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed.push(port);
            out.push(port);
        }
    }
    assert_eq!(out.len(), n, "no {n} free ports in {PORTS:?}");
    out
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    /// Status code.
    pub status: u16,
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Resp {
    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    /// A header as u64.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.headers.get(name).and_then(|v| v.parse().ok())
    }
    /// The error code of a JSON error body.
    pub fn error_code(&self) -> Option<String> {
        serde_json::from_slice::<Value>(&self.body)
            .ok()?
            .get("error")?
            .get("code")?
            .as_str()
            .map(str::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn a_sigstopped_process_is_seen_stopped_and_a_running_one_is_not() {
        let mut child = Command::new("sleep")
            .arg("60")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        assert!(
            !all_threads_stopped(pid),
            "a sleeping process is not stopped"
        );
        // SAFETY: kill(2) on a child we spawned.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        wait_until(Duration::from_secs(10), "sleep to stop", || {
            all_threads_stopped(pid).then_some(())
        });
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGCONT) };
        wait_until(Duration::from_secs(10), "sleep to run again", || {
            (!all_threads_stopped(pid)).then_some(())
        });
        let _ = child.kill();
        let _ = child.wait();
    }
}
