//! The faults a test inflicts on a [`Cluster`]: links cut (iptables in namespaces, or the
//! proxies), delayed or lossy links, processes killed, stopped gracefully, paused and resumed,
//! and nodes added.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::powerfs::PowerDisk;
use crate::{
    all_threads_stopped, free_ports, wait_until, Cluster, LinkMode, LinkProxy, Node, DEADLINE, POLL,
};

/// How a cut link fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Every packet vanishes: connections hang until they time out.
    Drop,
    /// Connections are refused or reset at once.
    Reject,
}

impl Cluster {
    /// Makes node `id` the leader, restarted with an election timeout ten times the default
    /// (`KEEL_ELECTION_TICKS=100`) and then handed leadership: cut off from its quorum, it goes
    /// on leading 10–20 s before its check-quorum steps it down, a window a test can act in.
    pub fn lead_slowly(&mut self, id: u64) {
        self.kill(id);
        self.set_node_env(id, "KEEL_ELECTION_TICKS", Some("100"));
        self.restart(id);
        let body = format!("{{\"to\": {id}}}");
        wait_until(DEADLINE, &format!("leadership moved to node {id}"), || {
            if self.leads(id) {
                return Some(());
            }
            let leader = self.ids().into_iter().find(|&n| self.leads(n))?;
            let path = "/v1/cluster/transfer-leader";
            let _ = self.request(leader, "POST", path, &[], Some(body.as_bytes()));
            None
        });
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

    /// Restores every link (proxies pass, iptables rules flushed), client proxies included.
    pub fn heal(&self) {
        self.apply_links(&[], LinkMode::Pass, &[]);
    }

    /// Starts a new node that joins the cluster through node `via` (as a learner); returns its id.
    pub fn add_node(&mut self, via: u64) -> u64 {
        self.try_add_node(via)
            .unwrap_or_else(|e| panic!("cannot add a node: {e}"))
    }

    /// [`Cluster::add_node`], with an error instead of a panic. On a plain cluster the node
    /// listens on loopback; in namespaces it gets a namespace of its own and a proxy in front of
    /// its peer port, which it advertises, so that every link to and from it can be cut like the
    /// others. A proxied cluster without namespaces cannot route a new member's links (each of
    /// its links has its own proxy, named in each node's `--cluster`): an error.
    pub fn try_add_node(&mut self, via: u64) -> Result<u64, String> {
        let id = self.nodes.len() as u64 + 1;
        let join = self.nodes[via as usize - 1].http.clone();
        let dir = self.dir().to_path_buf();
        let (http, peer, advertise_peer) = match &mut self.net {
            Some(net) => {
                net.add_node(id)?;
                let (http, peer) = (
                    format!("{}:7001", net.ip(id)),
                    format!("{}:7101", net.ip(id)),
                );
                let proxy = Arc::new(LinkProxy::start_on(&net.host_ip(), peer.clone()));
                let advertised = proxy.addr().to_string();
                for other in self.nodes.iter().map(|n| n.id) {
                    self.links.insert((other, id), proxy.clone());
                    if let Some(p) = self.dest_proxies.get(&other) {
                        self.links.insert((id, other), p.clone());
                    }
                }
                self.dest_proxies.insert(id, proxy);
                (http, peer, Some(advertised))
            }
            None if self.links.is_empty() => {
                let ports = free_ports(2);
                (
                    format!("127.0.0.1:{}", ports[0]),
                    format!("127.0.0.1:{}", ports[1]),
                    None,
                )
            }
            None => return Err("a proxied cluster without namespaces cannot add a member".into()),
        };
        let data_dir = dir.join(format!("node{id}"));
        if !self.disks.is_empty() {
            let disk = PowerDisk::mount(&data_dir)?;
            self.disks.insert(id, disk);
        }
        if self.client_cuts && self.net.is_none() {
            self.client_proxies
                .insert(id, LinkProxy::start(http.clone()));
        }
        self.nodes.push(Node {
            id,
            http,
            peer,
            data_dir,
            log: dir.join(format!("node{id}.log")),
            join: Some(join),
            advertise_peer,
            child: None,
        });
        self.spawn(id);
        Ok(id)
    }

    /// Applies a set of link faults at once, replacing whatever was in place: `cuts` are
    /// directed peer links that lose every packet ([`Cut::Drop`]) or refuse connections
    /// ([`Cut::Reject`]); `slow` is the mode of every peer link that is not cut (delay or loss);
    /// `clients` are nodes whose client port the fault suite's clients cannot reach. With
    /// namespaces, cuts are iptables rules in the sender's namespace (on the link's proxy port and
    /// on the peer's own address, so that no route around them exists); without, the links'
    /// proxies close (`Reject`) or swallow bytes (`Drop`).
    pub fn apply_links(&self, cuts: &[(u64, u64, Cut)], slow: LinkMode, clients: &[(u64, Cut)]) {
        if let Some(net) = &self.net {
            for from in self.nodes.iter().map(|n| n.id) {
                let mut rules = Vec::new();
                for &(_, to, how) in cuts.iter().filter(|c| c.0 == from) {
                    let Some(proxy) = self.links.get(&(from, to)) else {
                        continue;
                    };
                    let reject = how == Cut::Reject;
                    rules.push((net.host_ip(), proxy.port(), reject));
                    rules.push((net.ip(to), 7101, reject));
                }
                if let Err(e) = net.set_output_rules(from, &rules) {
                    panic!("cannot set the cuts of node {from}: {e}");
                }
            }
            // What the proxies already hold from a cut-off sender is lost with the partition.
            for &(from, to, _) in cuts {
                if let (Some(proxy), Ok(ip)) = (self.links.get(&(from, to)), net.ip(from).parse()) {
                    proxy.sever_from(ip);
                }
            }
            for p in self.dest_proxies.values() {
                p.set(slow);
            }
        } else {
            for (&(from, to), proxy) in &self.links {
                let mode = match cuts.iter().find(|c| c.0 == from && c.1 == to) {
                    Some((_, _, Cut::Reject)) => LinkMode::Cut,
                    Some((_, _, Cut::Drop)) => LinkMode::Blackhole,
                    None => slow,
                };
                proxy.set(mode);
            }
        }
        if let Some(net) = &self.net {
            net.flush_clients();
            for &(id, how) in clients {
                if let Err(e) = net.cut_client(id, 7001, how == Cut::Reject) {
                    panic!("cannot cut the clients off node {id}: {e}");
                }
            }
        }
        for (id, proxy) in &self.client_proxies {
            let mode = match clients.iter().find(|c| c.0 == *id) {
                Some((_, Cut::Reject)) => LinkMode::Cut,
                Some((_, Cut::Drop)) => LinkMode::Blackhole,
                None => LinkMode::Pass,
            };
            proxy.set(mode);
        }
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

    /// Restarts node `id` unless it runs already or was removed; says whether it did.
    pub fn restart_if_down(&mut self, id: u64) -> bool {
        if self.is_removed(id) || self.node(id).is_running() {
            return false;
        }
        self.spawn(id);
        true
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
