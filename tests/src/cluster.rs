//! A cluster of real `keel server` processes: its layout (ports, directories, proxies,
//! namespaces; planned in `plan.rs`), starting and reaching its nodes, and what it leaves behind
//! when a test fails.
//! The faults a test can inflict on it are in `faults.rs`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use crate::powerfs::PowerDisk;
use crate::{http, keel_bin, netns, wait_until, LinkProxy, Resp, DEADLINE};

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
    pub(crate) join: Option<String>,
    /// For a node added after the start behind a proxy: the peer address it advertises (the
    /// proxy every other member dials it through).
    pub(crate) advertise_peer: Option<String>,
    /// The process, while it runs.
    pub(crate) child: Option<Child>,
}

impl Node {
    /// Whether the process is running (it may be paused).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

/// A cluster of real processes.
pub struct Cluster {
    /// The nodes, `nodes[i].id == i + 1`.
    pub nodes: Vec<Node>,
    /// Data directories and logs (kept when a test fails).
    pub(crate) dir: Option<tempfile::TempDir>,
    /// `--cluster` of each node (they differ when peer links are proxied).
    pub(crate) cluster_args: Vec<String>,
    /// Proxies of directed peer links (from, to), when started with [`Cluster::start_proxied`].
    /// In namespaces every link into a node shares one proxy (per-sender cuts are iptables rules
    /// in the sender's namespace), so a member added later is reached through it by everyone.
    pub(crate) links: HashMap<(u64, u64), Arc<LinkProxy>>,
    /// In namespaces: the proxy in front of each node's peer port.
    pub(crate) dest_proxies: HashMap<u64, Arc<LinkProxy>>,
    /// Without namespaces, proxies in front of each node's client port when started with
    /// [`Spec::client_cuts`]: the fault suite's clients go through them so that they can be cut
    /// off from a node. (In namespaces the clients use each node's second address instead, cut
    /// by iptables rules in the root namespace: a dead node then refuses connections, which a
    /// proxy cannot show.)
    pub(crate) client_proxies: HashMap<u64, LinkProxy>,
    /// Whether clients can be cut off from nodes (new nodes too).
    pub(crate) client_cuts: bool,
    /// Members removed from the cluster: no longer in [`Cluster::ids`], never restarted.
    pub(crate) removed: HashSet<u64>,
    /// Flags given to every `keel server`.
    pub(crate) extra_args: Vec<String>,
    /// The binary the nodes run (the planted-bug build for the fault suite's checks).
    pub(crate) bin: PathBuf,
    /// Environment of every node.
    pub(crate) env: Vec<(String, String)>,
    /// Environment of one node, on top of `env` (failpoints armed from the start).
    pub(crate) node_env: HashMap<u64, Vec<(String, String)>>,
    /// Namespaces, when the nodes run in their own network namespaces.
    pub(crate) net: Option<netns::NetnsNet>,
    /// The HTTP client of [`Cluster::request`].
    pub(crate) http: http::Http,
    /// Each node's data directory on a disk that can lose power, when started on them.
    pub(crate) disks: HashMap<u64, PowerDisk>,
    /// TLS on both ports and tokens ([`crate::secure`]), when started so.
    pub(crate) secure: Option<&'static crate::secure::Secure>,
}

/// How to start a cluster (see [`Cluster::launch_spec`]).
pub struct Spec<'a> {
    /// Number of nodes.
    pub nodes: usize,
    /// Flags given to every `keel server`.
    pub extra: &'a [&'a str],
    /// Every directed peer link through a proxy the test controls.
    pub proxied: bool,
    /// Each node in its own network namespace (implies proxied; needs root).
    pub netns: bool,
    /// The binary to run.
    pub bin: PathBuf,
    /// Environment of every node.
    pub env: &'a [(&'a str, &'a str)],
    /// Each node's data directory on its own [`PowerDisk`] (needs /dev/fuse).
    pub power_disks: bool,
    /// Clients can be cut off from nodes ([`Cluster::client_endpoint`], [`Cluster::apply_links`]).
    pub client_cuts: bool,
    /// TLS on both ports and bearer tokens ([`crate::secure`]; also with `KEEL_TEST_SECURE=1`).
    pub secure: bool,
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
        let spec = Spec {
            nodes: n,
            extra,
            proxied,
            netns: false,
            bin,
            env,
            power_disks: false,
            client_cuts: false,
            secure: false,
        };
        // Without namespaces or power disks nothing can fail before the nodes are spawned.
        Self::launch_spec(spec).unwrap_or_else(|e| panic!("cannot start the cluster: {e}"))
    }

    /// Starts `n` nodes, each in its own network namespace on a private bridge (see
    /// [`netns`]), with every peer link through a proxy; partitions become iptables DROP rules.
    pub fn launch_netns(
        n: usize,
        extra: &[&str],
        bin: PathBuf,
        env: &[(&str, &str)],
    ) -> Result<Cluster, String> {
        Self::launch_spec(Spec {
            nodes: n,
            extra,
            proxied: true,
            netns: true,
            bin,
            env,
            power_disks: false,
            client_cuts: false,
            secure: false,
        })
    }

    /// Starts a cluster as `spec` says.
    pub fn launch_spec(spec: Spec<'_>) -> Result<Cluster, String> {
        let net = if spec.netns {
            Some(netns::NetnsNet::create(spec.nodes)?)
        } else {
            None
        };
        let proxied = spec.proxied || spec.netns;
        let mut c = Self::layout(spec.nodes, spec.extra, proxied, net, spec.bin, spec.env);
        if spec.client_cuts {
            c.client_cuts = true;
        }
        if spec.secure || crate::secure::everywhere() {
            let s = crate::secure::Secure::get();
            c.secure = Some(s);
            c.http = http::Http::with(
                Duration::from_secs(2),
                Duration::from_secs(15),
                Some(&s.token),
                Some(s.client_tls()),
            );
        }
        if spec.client_cuts && c.net.is_none() {
            for id in c.ids() {
                let target = c.node(id).http.clone();
                c.client_proxies.insert(id, LinkProxy::start(target));
            }
        }
        if spec.power_disks {
            for id in c.ids() {
                let dir = c.node(id).data_dir.clone();
                let disk = PowerDisk::mount(&dir)?;
                c.disks.insert(id, disk);
            }
        }
        for id in c.ids() {
            c.spawn(id);
        }
        Ok(c)
    }

    /// Power is lost on node `id`: the process dies (kill -9) and its disk forgets everything
    /// not fsynced. Restart it with [`Cluster::restart`]. Panics unless the cluster runs on
    /// power disks.
    pub fn power_loss(&mut self, id: u64) -> u64 {
        self.kill(id);
        match self.disks.get(&id) {
            Some(disk) => disk.power_loss(),
            None => panic!("node {id} has no power disk: launch the cluster with power_disks"),
        }
    }

    /// What node `id`'s power disk holds and has done (None without power disks).
    pub fn disk_stats(&self, id: u64) -> Option<crate::powerfs::Stats> {
        self.disks.get(&id).map(PowerDisk::stats)
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

    /// Ids of every member: every node started, except those removed from the cluster.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .map(|n| n.id)
            .filter(|id| !self.removed.contains(id))
            .collect()
    }

    /// The address a client uses for node `id`: with [`Spec::client_cuts`], its client address
    /// (in namespaces) or its client proxy; else its own client address.
    pub fn client_endpoint(&self, id: u64) -> String {
        if let (true, Some(net)) = (self.client_cuts, &self.net) {
            return format!("{}:7001", net.client_ip(id));
        }
        match self.client_proxies.get(&id) {
            Some(p) => p.addr().to_string(),
            None => self.nodes[id as usize - 1].http.clone(),
        }
    }

    /// Notes that `id` was removed from the cluster: its process is killed if it still runs,
    /// and it leaves [`Cluster::ids`] for good.
    pub fn mark_removed(&mut self, id: u64) {
        self.kill(id);
        self.removed.insert(id);
    }

    /// Whether `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> bool {
        self.removed.contains(&id)
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

    /// Sets (Some) or clears (None) an environment variable of node `id` for its next starts.
    pub fn set_node_env(&mut self, id: u64, key: &str, value: Option<&str>) {
        let env = self.node_env.entry(id).or_default();
        env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            env.push((key.to_string(), v.to_string()));
        }
    }

    /// Starts node `id`'s process.
    pub(crate) fn spawn(&mut self, id: u64) {
        let bin = self.bin.clone();
        let mut env = self.env.clone();
        env.extend(self.node_env.get(&id).cloned().unwrap_or_default());
        let ns = self.net.as_ref().map(|n| n.ns(id).to_string());
        let backups = self.dir().join("backups");
        let cluster_arg = self.cluster_args.get(id as usize - 1).cloned();
        let mut extra = self.extra_args.clone();
        if let Some(s) = self.secure {
            extra.extend(s.server_args(id));
        }
        // An equal share of the machine's cores for each node, as `keel cluster` gives
        // (keel_server::config::worker_share).
        let worker_share = std::env::var("KEEL_WORKER_THREADS").unwrap_or_else(|_| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / self.nodes.len().max(1)).max(1).to_string()
        });
        let node = self.node(id);
        let mut membership: Vec<String> = match (&node.join, cluster_arg) {
            (Some(via), _) => vec!["--join".into(), via.clone()],
            (None, Some(c)) => vec!["--cluster".into(), c],
            (None, None) => Vec::new(),
        };
        if let Some(a) = &node.advertise_peer {
            membership.extend(["--advertise-peer".to_string(), a.clone()]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .expect("open node log");
        let log2 = log.try_clone().expect("clone log handle");
        // In a namespace a node listens on all its addresses (the second one is the clients').
        let http_args: Vec<String> = if ns.is_some() {
            vec![
                "--http".into(),
                "0.0.0.0:7001".into(),
                "--advertise-http".into(),
                node.http.clone(),
            ]
        } else {
            vec!["--http".into(), node.http.clone()]
        };
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
            .args(&http_args)
            .args(&membership)
            .args(["--peer", &node.peer])
            .arg("--data-dir")
            .arg(&node.data_dir)
            .arg("--backup-dir")
            .arg(&backups)
            .args(&extra)
            .env("KEEL_LOG", "info")
            // Like `keel cluster`: the nodes share this machine's cores, unless the caller set
            // the variable (inherited) or a test sets it below.
            .env("KEEL_WORKER_THREADS", worker_share)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .expect("spawn keel server");
        node.child = Some(child);
    }

    /// Starts `n` nodes with TLS on both ports and bearer tokens ([`crate::secure`]); the
    /// harness's own requests use https and the admin token.
    pub fn start_secure(n: usize, extra: &[&str]) -> Cluster {
        Self::launch_spec(Spec {
            nodes: n,
            extra,
            proxied: false,
            netns: false,
            bin: keel_bin(),
            env: &[],
            power_disks: false,
            client_cuts: false,
            secure: true,
        })
        .unwrap_or_else(|e| panic!("cannot start the cluster: {e}"))
    }

    /// The secure files, when the cluster is secure.
    pub fn secure(&self) -> Option<&'static crate::secure::Secure> {
        self.secure
    }

    /// A keel-client builder for `endpoints` with the cluster's TLS settings and admin token
    /// (when it is secure).
    pub fn client_builder<I, S>(&self, endpoints: I) -> keel_client::ClientBuilder
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let b = keel_client::Client::builder(endpoints);
        match self.secure {
            Some(s) => b.tls(s.client_tls()).token(s.token.clone()),
            None => b,
        }
    }

    /// Makes the harness's own requests (status, leader waits, `put`, `get`...) present `token`:
    /// for clusters started with `--auth-file`.
    pub fn use_token(&mut self, token: &str) {
        let tls = self.secure.map(|s| s.client_tls());
        self.http = http::Http::with(
            Duration::from_secs(2),
            Duration::from_secs(15),
            Some(token),
            tls,
        );
    }

    /// Node `id`'s client address, as [`Cluster::request`] uses it.
    pub fn http_addr(&self, id: u64) -> String {
        self.nodes[id as usize - 1].http.clone()
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

    /// Like [`Cluster::wait_for_leader`], but None instead of a panic when no leader is agreed on
    /// within `timeout`.
    pub fn try_wait_for_leader(&mut self, timeout: Duration) -> Option<u64> {
        let start = std::time::Instant::now();
        while start.elapsed() < timeout {
            let ids = self.ids();
            let agreed = (|| {
                let mut leader = None;
                for &id in &ids {
                    let l = self.status(id)?.get("leader")?.as_u64()?;
                    if leader.is_some_and(|x| x != l) {
                        return None;
                    }
                    leader = Some(l);
                }
                let l = leader?;
                (self.status(l)?.get("role")?.as_str()? == "leader").then_some(l)
            })();
            if agreed.is_some() {
                return agreed;
            }
            std::thread::sleep(crate::POLL);
        }
        None
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
        // Unmount the power disks before the directory holding their mount points goes.
        self.disks.clear();
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
