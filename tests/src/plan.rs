//! Planning a cluster before it starts: ports, directories, proxies and each node's
//! `--cluster` map; and a cluster started from a backup.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::{free_ports, http, keel_bin, netns, Cluster, LinkProxy, Node};

impl Cluster {
    /// Plans a cluster of `n` nodes (addresses, directories, proxies) without starting them.
    pub(crate) fn layout(
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
                advertise_peer: None,
                child: None,
            });
        }
        let proxy_ip = net
            .as_ref()
            .map_or("127.0.0.1".to_string(), |n| n.host_ip());
        let mut links = HashMap::new();
        let mut dest_proxies = HashMap::new();
        if proxied && net.is_some() {
            for to in &nodes {
                let proxy = Arc::new(LinkProxy::start_on(&proxy_ip, to.peer.clone()));
                dest_proxies.insert(to.id, proxy.clone());
                for from in nodes.iter().filter(|f| f.id != to.id) {
                    links.insert((from.id, to.id), proxy.clone());
                }
            }
        } else if proxied {
            for from in &nodes {
                for to in &nodes {
                    if from.id != to.id {
                        links.insert(
                            (from.id, to.id),
                            Arc::new(LinkProxy::start_on(&proxy_ip, to.peer.clone())),
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
            dest_proxies,
            client_proxies: HashMap::new(),
            client_cuts: false,
            removed: HashSet::new(),
            extra_args: extra.iter().map(|s| s.to_string()).collect(),
            bin,
            node_env: HashMap::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            net,
            http,
            disks: HashMap::new(),
            secure: None,
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
}
