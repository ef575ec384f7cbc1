//! The faults a test inflicts on a [`Cluster`]: links cut (iptables in namespaces, or the
//! proxies), delayed or lossy links, processes killed, stopped gracefully, paused and resumed,
//! and nodes added.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::{
    all_threads_stopped, free_ports, wait_until, Cluster, LinkMode, LinkProxy, Node, POLL,
};

impl Cluster {
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
