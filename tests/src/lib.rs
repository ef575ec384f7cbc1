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
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod checker;
pub mod history;
pub mod http;
pub mod nemesis;
pub mod netns;
pub mod proxy;
pub mod suite;
pub mod workload;

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

/// Reserves `n` distinct free TCP ports on 127.0.0.1.
pub fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
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

/// One `keel server` process (running or not).
pub struct Node {
    /// Node id.
    pub id: u64,
    /// Client address, host:port.
    pub http: String,
    /// Peer address, host:port.
    pub peer: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Log file (stdout and stderr).
    pub log: PathBuf,
    /// For a node added after the start: the member it joins through.
    join: Option<String>,
    child: Option<Child>,
}

impl Node {
    /// Whether the process is running (it may be paused).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

/// A cluster of real processes.
pub struct Cluster {
    /// The nodes, `nodes[i].id == i + 1`.
    pub nodes: Vec<Node>,
    dir: Option<tempfile::TempDir>,
    /// `--cluster` of each node (they differ when peer links are proxied).
    cluster_args: Vec<String>,
    /// Proxies of directed peer links (from, to), when started with [`Cluster::start_proxied`].
    links: HashMap<(u64, u64), LinkProxy>,
    extra_args: Vec<String>,
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// Namespaces, when the nodes run in their own network namespaces.
    net: Option<netns::NetnsNet>,
    /// The HTTP client of [`Cluster::request`].
    http: http::Http,
}

impl Cluster {
    /// Starts `n` nodes with default flags.
    pub fn start(n: usize) -> Cluster {
        Self::start_with(n, &[])
    }

    /// Starts `n` nodes, passing `extra` flags to every `keel server`.
    pub fn start_with(n: usize, extra: &[&str]) -> Cluster {
        Self::launch(n, extra, false)
    }

    /// Starts `n` nodes whose every directed peer link goes through a [`LinkProxy`] that the
    /// test controls ([`Cluster::link`], [`Cluster::isolate`], [`Cluster::heal`]).
    pub fn start_proxied(n: usize, extra: &[&str]) -> Cluster {
        Self::launch(n, extra, true)
    }

    fn launch(n: usize, extra: &[&str], proxied: bool) -> Cluster {
        Self::launch_with(n, extra, proxied, keel_bin(), &[])
    }

    /// Starts `n` nodes of binary `bin` with extra environment variables (the fault suite uses
    /// this for the planted-bug build).
    pub fn launch_with(
        n: usize,
        extra: &[&str],
        proxied: bool,
        bin: PathBuf,
        env: &[(&str, &str)],
    ) -> Cluster {
        Self::launch_opts(n, extra, proxied, None, bin, env)
    }

    /// Starts `n` nodes, each in its own network namespace on a private bridge (see
    /// [`netns`]), with every peer link through a proxy; partitions become iptables DROP rules.
    pub fn launch_netns(
        n: usize,
        extra: &[&str],
        bin: PathBuf,
        env: &[(&str, &str)],
    ) -> Result<Cluster, String> {
        let net = netns::NetnsNet::create(n)?;
        Ok(Self::launch_opts(n, extra, true, Some(net), bin, env))
    }

    fn launch_opts(
        n: usize,
        extra: &[&str],
        proxied: bool,
        net: Option<netns::NetnsNet>,
        bin: PathBuf,
        env: &[(&str, &str)],
    ) -> Cluster {
        let mut c = Self::layout(n, extra, proxied, net, bin, env);
        for id in c.ids() {
            c.spawn(id);
        }
        c
    }

    /// Plans a cluster of `n` nodes (addresses, directories, proxies) without starting them.
    fn layout(
        n: usize,
        extra: &[&str],
        proxied: bool,
        net: Option<netns::NetnsNet>,
        bin: PathBuf,
        env: &[(&str, &str)],
    ) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("keel-test-")
            .tempdir()
            .expect("tempdir");
        let ports = free_ports(2 * n);
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u64 + 1;
            let (http, peer) = match &net {
                Some(net) => (
                    format!("{}:7001", net.ip(id)),
                    format!("{}:7101", net.ip(id)),
                ),
                None => (
                    format!("127.0.0.1:{}", ports[2 * i]),
                    format!("127.0.0.1:{}", ports[2 * i + 1]),
                ),
            };
            nodes.push(Node {
                id,
                http,
                peer,
                data_dir: dir.path().join(format!("node{id}")),
                log: dir.path().join(format!("node{id}.log")),
                join: None,
                child: None,
            });
        }
        let proxy_ip = net
            .as_ref()
            .map_or("127.0.0.1".to_string(), |n| n.host_ip());
        let mut links = HashMap::new();
        if proxied {
            for from in &nodes {
                for to in &nodes {
                    if from.id != to.id {
                        links.insert(
                            (from.id, to.id),
                            LinkProxy::start_on(&proxy_ip, to.peer.clone()),
                        );
                    }
                }
            }
        }
        let cluster_args = nodes
            .iter()
            .map(|me| {
                nodes
                    .iter()
                    .map(|n| match links.get(&(me.id, n.id)) {
                        Some(proxy) => format!("{}={}", n.id, proxy.addr()),
                        None => format!("{}={}", n.id, n.peer),
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect();
        let http = http::Http::new(Duration::from_secs(2), Duration::from_secs(15));
        Cluster {
            nodes,
            dir: Some(dir),
            cluster_args,
            links,
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            bin,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            net,
            http,
        }
    }

    /// Starts `n` nodes whose data directories are first restored from a backup with
    /// `keel restore` (a new cluster holding the backup's data).
    pub fn start_from_backup(n: usize, backup: &Path) -> Cluster {
        let mut c = Self::layout(n, &[], false, None, keel_bin(), &[]);
        for id in c.ids() {
            let data_dir = c.node(id).data_dir.clone();
            let cluster = c.cluster_args[id as usize - 1].clone();
            let out = Command::new(keel_bin())
                .arg("restore")
                .arg("--from")
                .arg(backup)
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--cluster", &cluster])
                .output()
                .expect("run keel restore");
            assert!(
                out.status.success(),
                "keel restore failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{}", String::from_utf8_lossy(&out.stdout).trim());
        }
        for id in c.ids() {
            c.spawn(id);
        }
        c
    }

    /// Whether the nodes run in network namespaces.
    pub fn in_netns(&self) -> bool {
        self.net.is_some()
    }

    /// The node with this id.
    pub fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[id as usize - 1]
    }

    /// Client addresses (host:port) of all nodes.
    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.http.clone()).collect()
    }

    /// Ids of all nodes.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// Every node's id except those in `excluding`, in order.
    pub fn others(&self, excluding: &[u64]) -> Vec<u64> {
        self.ids()
            .into_iter()
            .filter(|id| !excluding.contains(id))
            .collect()
    }

    /// Directory holding data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("dir").path()
    }

    fn spawn(&mut self, id: u64) {
        let bin = self.bin.clone();
        let env = self.env.clone();
        let ns = self.net.as_ref().map(|n| n.ns(id).to_string());
        let cluster_arg = self.cluster_args.get(id as usize - 1).cloned();
        let extra = self.extra_args.clone();
        let node = self.node(id);
        let membership: Vec<String> = match (&node.join, cluster_arg) {
            (Some(via), _) => vec!["--join".into(), via.clone()],
            (None, Some(c)) => vec!["--cluster".into(), c],
            (None, None) => Vec::new(),
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = match &ns {
            // `ip netns exec` enters the namespace and execs keel: the pid is keel's.
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&bin);
                c
            }
            None => Command::new(&bin),
        };
        let child = cmd
            .arg("server")
            .args(["--id", &id.to_string()])
            .args(["--http", &node.http])
            .args(&membership)
            .args(["--peer", &node.peer])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .args(&extra)
            .env("KEEL_LOG", "info")
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn keel server");
        node.child = Some(child);
    }

    /// The proxy of the directed link `from` → `to` (panics unless started proxied).
    pub fn link(&self, from: u64, to: u64) -> &LinkProxy {
        self.links
            .get(&(from, to))
            .unwrap_or_else(|| panic!("no proxy {from}→{to}: use Cluster::start_proxied"))
    }

    /// Cuts the directed link `from` → `to`: with namespaces, an iptables rule in `from`'s
    /// namespace drops every packet it sends on that link; otherwise the link's proxy closes its
    /// connections and refuses new ones.
    pub fn cut(&self, from: u64, to: u64) {
        match (&self.net, self.links.get(&(from, to))) {
            (Some(net), Some(proxy)) => {
                if let Err(e) = net.drop_output(from, &net.host_ip(), proxy.port()) {
                    panic!("cannot cut {from}→{to}: {e}");
                }
            }
            (_, Some(proxy)) => proxy.set(LinkMode::Cut),
            (_, None) => panic!("no link {from}→{to}: start the cluster proxied"),
        }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: u64) {
        for other in self.ids() {
            if other != id {
                self.cut(id, other);
                self.cut(other, id);
            }
        }
    }

    /// Sets every link to `mode`.
    pub fn set_all_links(&self, mode: LinkMode) {
        for link in self.links.values() {
            link.set(mode);
        }
    }

    /// Restores every link (proxies pass, iptables rules flushed).
    pub fn heal(&self) {
        if let Some(net) = &self.net {
            net.flush();
        }
        self.set_all_links(LinkMode::Pass);
    }

    /// Starts a new node that joins the cluster through node `via` (as a learner); returns its id.
    pub fn add_node(&mut self, via: u64) -> u64 {
        assert!(
            self.net.is_none() && self.links.is_empty(),
            "add_node needs a plain cluster"
        );
        let id = self.nodes.len() as u64 + 1;
        let ports = free_ports(2);
        let join = self.nodes[via as usize - 1].http.clone();
        let dir = self.dir().to_path_buf();
        self.nodes.push(Node {
            id,
            http: format!("127.0.0.1:{}", ports[0]),
            peer: format!("127.0.0.1:{}", ports[1]),
            data_dir: dir.join(format!("node{id}")),
            log: dir.join(format!("node{id}.log")),
            join: Some(join),
            child: None,
        });
        self.spawn(id);
        id
    }

    /// SIGTERM (a graceful stop: a leader hands over leadership first) and wait for the exit
    /// (kill -9 after 15 s).
    pub fn stop(&mut self, id: u64) {
        if let Some(pid) = self.node(id).pid() {
            // SAFETY: kill(2) on a child we spawned.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if !self.wait_exit(id, Duration::from_secs(15)) {
            self.kill(id);
        }
    }

    /// Waits for the node's process to exit on its own (e.g. after being removed).
    pub fn wait_exit(&mut self, id: u64, timeout: Duration) -> bool {
        let node = self.node(id);
        let Some(c) = node.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                node.child = None;
                return true;
            }
            std::thread::sleep(POLL);
        }
        false
    }

    /// kill -9 the node and reap it.
    pub fn kill(&mut self, id: u64) {
        let node = self.node(id);
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts a killed node on the same data directory.
    pub fn restart(&mut self, id: u64) {
        assert!(!self.node(id).is_running(), "node {id} is still running");
        self.spawn(id);
    }

    /// SIGSTOP: the process freezes (sockets stay open). Returns once every thread of the
    /// process has stopped: kill(2) only starts a group stop, and on a loaded machine the other
    /// threads of the node can go on answering peers for milliseconds after it returns.
    pub fn pause(&mut self, id: u64) {
        if let Some(pid) = self.node(id).pid() {
            // SAFETY: kill(2) on a child we spawned.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            wait_until(
                Duration::from_secs(10),
                &format!("every thread of node {id} (pid {pid}) to stop"),
                || all_threads_stopped(pid).then_some(()),
            );
        }
    }

    /// SIGCONT after [`Cluster::pause`].
    pub fn resume(&mut self, id: u64) {
        if let Some(pid) = self.node(id).pid() {
            // SAFETY: kill(2) on a child we spawned.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
    }

    /// Sends one HTTP request to node `id`. Err only for transport failures (node down).
    pub fn request(
        &self,
        id: u64,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, String> {
        self.http
            .send(
                &self.nodes[id as usize - 1].http,
                method,
                path_and_query,
                headers,
                body,
            )
            .map_err(|e| e.to_string())
    }

    /// PUT a value (query such as `?mode=sync` may be appended to the key path).
    pub fn put(&self, id: u64, key_and_query: &str, value: &[u8]) -> Result<Resp, String> {
        self.request(
            id,
            "PUT",
            &format!("/v1/kv/{key_and_query}"),
            &[],
            Some(value),
        )
    }

    /// GET a key (query may be appended).
    pub fn get(&self, id: u64, key_and_query: &str) -> Result<Resp, String> {
        self.request(id, "GET", &format!("/v1/kv/{key_and_query}"), &[], None)
    }

    /// POST an atomic add.
    pub fn add(&self, id: u64, key_and_query: &str, delta: i64) -> Result<Resp, String> {
        let path = match key_and_query.split_once('?') {
            Some((k, q)) => format!("/v1/kv/{k}/add?{q}"),
            None => format!("/v1/kv/{key_and_query}/add"),
        };
        let body = format!("{{\"delta\": {delta}}}");
        self.request(id, "POST", &path, &[], Some(body.as_bytes()))
    }

    /// The node's `/v1/status` JSON, if it answers.
    pub fn status(&self, id: u64) -> Option<Value> {
        let r = self.request(id, "GET", "/v1/status", &[], None).ok()?;
        (r.status == 200).then(|| r.json())
    }

    /// Waits until every running node (except `excluding`) agrees on one leader that itself
    /// reports being leader; returns its id.
    pub fn wait_for_leader_excluding(&mut self, excluding: &[u64], timeout: Duration) -> u64 {
        let ids: Vec<u64> = self
            .ids()
            .into_iter()
            .filter(|id| !excluding.contains(id))
            .collect();
        wait_until(timeout, "a leader known to every live node", || {
            let mut leader = None;
            for &id in &ids {
                let s = self.status(id)?;
                let l = s.get("leader")?.as_u64()?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            let l = leader?;
            let s = self.status(l)?;
            (s.get("role")?.as_str()? == "leader").then_some(l)
        })
    }

    /// [`Cluster::wait_for_leader_excluding`] with nobody excluded.
    pub fn wait_for_leader(&mut self) -> u64 {
        self.wait_for_leader_excluding(&[], DEADLINE)
    }

    /// Retries a write through node `id` until it answers 200 (503/504 and transport errors
    /// are retried), within `timeout`. Use only for writes that are safe to repeat.
    pub fn put_until_ok(
        &self,
        id: u64,
        key_and_query: &str,
        value: &[u8],
        timeout: Duration,
    ) -> Resp {
        wait_until(
            timeout,
            &format!("PUT {key_and_query} via node {id} to succeed"),
            || match self.put(id, key_and_query, value) {
                Ok(r) if r.status == 200 => Some(r),
                Ok(r) if r.status == 503 || r.status == 504 => None,
                Ok(r) => panic!("PUT {key_and_query}: unexpected {} {}", r.status, r.text()),
                Err(_) => None,
            },
        )
    }

    /// Tail of a node's log (for failure reports).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[id as usize - 1].log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Sends raw bytes to a node's address and returns what comes back before the peer closes
    /// or `timeout` passes.
    pub fn raw_exchange(addr: &str, bytes: &[u8], timeout: Duration) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(timeout)).expect("read timeout");
        let _ = s.write_all(bytes);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(_) => break,
            }
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                // SAFETY: kill(2) on a child we spawned; SIGCONT first so a paused child dies.
                unsafe { libc::kill(c.id() as i32, libc::SIGCONT) };
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            if let Some(dir) = self.dir.take() {
                let path = dir.keep();
                eprintln!(
                    "test failed: cluster data and logs kept in {}",
                    path.display()
                );
                for n in &self.nodes {
                    let text = std::fs::read_to_string(&n.log).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    eprintln!("---- node {} log (last 30 lines) ----", n.id);
                    for l in &lines[lines.len().saturating_sub(30)..] {
                        eprintln!("{l}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
