//! Network namespaces for cluster tests: each node in its own namespace with its own address on
//! a private bridge, so partitions are real packet drops (iptables in the node's namespace) rather
//! than closed connections.
//!
//! Layout, for a cluster numbered `k` in process `pid`:
//! - bridge `kb<pid>x<k>` in the root namespace, address `10.<200 + s / 256>.<s % 256>.254/24`,
//!   where `s` is a subnet slot no other live cluster holds (test binaries run at the same time:
//!   the fault suite beside the others);
//! - namespace `kt<pid>x<k>n<i>` per node, a veth pair into the bridge, address `.<i>`.
//!
//! Everything is created by [`NetnsNet::create`] and removed on drop; leftovers of dead test
//! processes are removed first. Requires root (CAP_NET_ADMIN), `ip` and `iptables`.

use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Where subnet slots are claimed, one file per slot.
const SLOTS_DIR: &str = "/run/keel-tests-subnets";
/// Subnet slots: 10.200.0.0 to 10.249.255.0.
const SLOTS: u32 = 50 * 256;

/// Claims a subnet slot for as long as the returned file stays open: an exclusive `flock` on
/// the slot's file, which conflicts across processes and across clusters of one process, and
/// which the kernel releases when its holder dies (no leftovers to clean).
fn claim_slot() -> Result<(u32, std::fs::File), String> {
    std::fs::create_dir_all(SLOTS_DIR).map_err(|e| format!("{SLOTS_DIR}: {e}"))?;
    let start = std::process::id() % SLOTS;
    for i in 0..SLOTS {
        let slot = (start + i) % SLOTS;
        let path = format!("{SLOTS_DIR}/{slot}");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok((slot, file));
        }
    }
    Err(format!("all {SLOTS} subnet slots are taken"))
}

/// The namespaces and bridge of one cluster.
pub struct NetnsNet {
    bridge: String,
    namespaces: Vec<String>,
    subnet: String,
    /// Process id and cluster number, the parts of every name.
    pid: u32,
    k: u32,
    /// The chain in the root namespace's OUTPUT that cuts clients off from nodes.
    client_chain: String,
    /// The claimed subnet slot (held while this is open).
    _slot: std::fs::File,
}

fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes namespaces and bridges left by test processes that no longer run.
fn clean_leftovers() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("kt") else {
            continue;
        };
        let Some(pid) = rest.split('x').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !pid_alive(pid) {
            let _ = run(&["ip", "netns", "del", &name]);
            let k = rest
                .split('x')
                .nth(1)
                .and_then(|s| s.split('n').next())
                .unwrap_or("0");
            let bridge = format!("kb{pid}x{k}");
            let chain = format!("KC{pid}x{k}");
            let _ = run(&["iptables", "-D", "OUTPUT", "-j", &chain]);
            let _ = run(&["iptables", "-F", &chain]);
            let _ = run(&["iptables", "-X", &chain]);
            let _ = run(&["ip", "link", "del", &bridge]);
            let _ = run(&[
                "iptables", "-D", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
            ]);
        }
    }
}

impl NetnsNet {
    /// Whether namespaces can be made here (root, and `ip netns` works).
    pub fn available() -> bool {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return false;
        }
        let probe = format!("ktprobe{}", std::process::id());
        let ok = run(&["ip", "netns", "add", &probe]).is_ok()
            && run(&["ip", "netns", "exec", &probe, "iptables", "-L", "-n"]).is_ok();
        let _ = run(&["ip", "netns", "del", &probe]);
        ok
    }

    /// Creates a bridge and `n` namespaces, one per node.
    pub fn create(n: usize) -> Result<NetnsNet, String> {
        clean_leftovers();
        let pid = std::process::id();
        let k = NEXT.fetch_add(1, Ordering::Relaxed) % 50;
        let (slot, slot_file) = claim_slot()?;
        let subnet = format!("10.{}.{}", 200 + slot / 256, slot % 256);
        let bridge = format!("kb{pid}x{k}");
        let mut net = NetnsNet {
            bridge: bridge.clone(),
            namespaces: Vec::new(),
            subnet: subnet.clone(),
            pid,
            k,
            client_chain: format!("KC{pid}x{k}"),
            _slot: slot_file,
        };
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{subnet}.254/24"),
            "dev",
            &bridge,
        ])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        // Hosts with Docker drop forwarded packets by default, and bridged packets go through
        // the FORWARD chain (br_netfilter): let the nodes reach each other across this bridge
        // (a joining node asks another node over HTTP; a member may dial a peer directly).
        run(&[
            "iptables", "-I", "FORWARD", "-i", &bridge, "-o", &bridge, "-j", "ACCEPT",
        ])?;
        run(&["iptables", "-N", &net.client_chain])?;
        run(&["iptables", "-I", "OUTPUT", "-j", &net.client_chain])?;
        for i in 1..=n {
            net.add_node(i as u64)?;
        }
        Ok(net)
    }

    /// Creates the namespace of node `i` (1-based, the next one): a veth pair into the bridge and
    /// address `.<i>`. Nodes added after the start (membership changes) come through here too.
    pub fn add_node(&mut self, i: u64) -> Result<(), String> {
        let (pid, k, subnet) = (self.pid, self.k, self.subnet.clone());
        if i as usize != self.namespaces.len() + 1 || i > 250 {
            return Err(format!("namespace {i} out of order"));
        }
        let ns = format!("kt{pid}x{k}n{i}");
        let host_end = format!("kv{pid}x{k}n{i}");
        let host_end: String = host_end.chars().take(15).collect();
        run(&["ip", "netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        run(&[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        run(&["ip", "link", "set", &host_end, "master", &self.bridge, "up"])?;
        // The node's address, and a second one for the fault suite's clients only: cutting it
        // off leaves the harness's own requests (and the other nodes') alone.
        for host in [i, i + 100] {
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{subnet}.{host}/24"),
                "dev",
                "eth0",
            ])?;
        }
        run(&[
            "ip", "netns", "exec", &ns, "ip", "link", "set", "eth0", "up",
        ])?;
        run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    /// The address of node `id` (1-based).
    pub fn ip(&self, id: u64) -> String {
        format!("{}.{id}", self.subnet)
    }

    /// The address of node `id` that the fault suite's clients use (see [`NetnsNet::cut_client`]).
    pub fn client_ip(&self, id: u64) -> String {
        format!("{}.{}", self.subnet, id + 100)
    }

    /// Cuts the clients (everything in the root namespace) off from node `id`'s client address
    /// `port`: packets dropped, or connections refused (`reject`).
    pub fn cut_client(&self, id: u64, port: u16, reject: bool) -> Result<(), String> {
        let ip = self.client_ip(id);
        let port = port.to_string();
        let mut args = vec![
            "iptables",
            "-A",
            &self.client_chain,
            "-p",
            "tcp",
            "-d",
            &ip,
            "--dport",
            &port,
        ];
        if reject {
            args.extend_from_slice(&["-j", "REJECT", "--reject-with", "tcp-reset"]);
        } else {
            args.extend_from_slice(&["-j", "DROP"]);
        }
        run(&args)
    }

    /// Lets the clients reach every node again.
    pub fn flush_clients(&self) {
        let _ = run(&["iptables", "-F", &self.client_chain]);
    }

    /// The root namespace's address on the bridge (where the peer-link proxies listen).
    pub fn host_ip(&self) -> String {
        format!("{}.254", self.subnet)
    }

    /// The namespace of node `id`.
    pub fn ns(&self, id: u64) -> &str {
        &self.namespaces[id as usize - 1]
    }

    /// Drops, inside node `from`'s namespace, every packet it sends to `ip:port`: the sender
    /// hears nothing back, as when a switch or a cable fails (connections hang, then time out).
    pub fn drop_output(&self, from: u64, ip: &str, port: u16) -> Result<(), String> {
        let port = port.to_string();
        run(&[
            "ip",
            "netns",
            "exec",
            self.ns(from),
            "iptables",
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            ip,
            "--dport",
            &port,
            "-j",
            "DROP",
        ])
    }

    /// Replaces, at once, every rule in node `from`'s namespace with drops or rejects of what it
    /// sends to each `(ip, port)` (`true` = reject): one `iptables-restore` of the whole table,
    /// so that no other cut is lifted, even for an instant, while one changes.
    pub fn set_output_rules(&self, from: u64, rules: &[(String, u16, bool)]) -> Result<(), String> {
        use std::io::Write;
        let mut table = String::from(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n",
        );
        for (ip, port, reject) in rules {
            let target = if *reject {
                "REJECT --reject-with tcp-reset"
            } else {
                "DROP"
            };
            table.push_str(&format!(
                "-A OUTPUT -p tcp -d {ip} --dport {port} -j {target}\n"
            ));
        }
        table.push_str("COMMIT\n");
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.ns(from), "iptables-restore"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("iptables-restore in node {from}'s namespace: {e}"))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(table.as_bytes())
                .map_err(|e| format!("iptables-restore input: {e}"))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| format!("iptables-restore: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "iptables-restore in node {from}'s namespace failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for NetnsNet {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        let _ = run(&["iptables", "-D", "OUTPUT", "-j", &self.client_chain]);
        let _ = run(&["iptables", "-F", &self.client_chain]);
        let _ = run(&["iptables", "-X", &self.client_chain]);
        let _ = run(&["ip", "link", "del", &self.bridge]);
        let _ = run(&[
            "iptables",
            "-D",
            "FORWARD",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ]);
    }
}
