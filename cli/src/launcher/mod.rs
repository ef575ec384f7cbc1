//! `keel cluster`: the embedded default. Starts N `keel server` child processes on 127.0.0.1,
//! prints where they listen and who leads, and stops them all on Ctrl-C. Data lives in
//! `<data-dir>/node<i>`, so running it again on the same directory finds the data again.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use keel_api::cluster::Status;
use keel_client::http::{HttpClient, HttpOptions};
use tokio::process::{Child, Command};

use crate::opts::ClusterArgs;

mod secure;

use secure::Secure;

/// How long to wait for the first leader before saying so.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long children get to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How long one status request may take while waiting for a leader.
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause between rounds of status requests while waiting for a leader.
const STATUS_POLL: Duration = Duration::from_millis(200);

/// Errors of the launcher.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// Bad flags.
    #[error("{0}")]
    Invalid(String),
    /// Filesystem or process error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// One node the launcher started.
struct ChildNode {
    /// Its id.
    id: u64,
    /// Its client address (host:port).
    http: String,
    /// Its data directory.
    dir: std::path::PathBuf,
    /// Where its stdout and stderr go.
    log_path: std::path::PathBuf,
    /// The process, while it runs.
    child: Option<Child>,
}

/// A cluster of `keel server` child processes on 127.0.0.1 (used by `keel cluster` and by the
/// demos that kill a leader on purpose).
pub struct LocalCluster {
    /// The keel binary (this one).
    exe: std::path::PathBuf,
    /// `--cluster` of every node.
    cluster: String,
    /// `--default-mode` of every node.
    default_mode: keel_api::WriteMode,
    /// The nodes, in id order.
    nodes: Vec<ChildNode>,
    /// TLS and token files, with `--secure`.
    secure: Option<Secure>,
}

impl LocalCluster {
    /// Starts `args.nodes` nodes under `args.data_dir`.
    pub fn start(args: &ClusterArgs) -> Result<LocalCluster, ClusterError> {
        if args.nodes == 0 || args.nodes > 99 {
            return Err(ClusterError::Invalid(
                "--nodes must be between 1 and 99".into(),
            ));
        }
        if u32::from(args.base_port) + 100 + args.nodes as u32 > 65535 {
            return Err(ClusterError::Invalid("--base-port is too high".into()));
        }
        let exe = std::env::current_exe().map_err(|source| ClusterError::Io {
            context: "cannot find the keel binary".into(),
            source,
        })?;
        std::fs::create_dir_all(&args.data_dir).map_err(|source| ClusterError::Io {
            context: format!("cannot create {}", args.data_dir.display()),
            source,
        })?;
        let peer_port = |i: u64| args.base_port + 100 + (i - 1) as u16;
        let http_port = |i: u64| args.base_port + (i - 1) as u16;
        let cluster: Vec<String> = (1..=args.nodes)
            .map(|i| format!("{i}=127.0.0.1:{}", peer_port(i)))
            .collect();
        let secure = if args.secure {
            Some(Secure::prepare(&args.data_dir, args.nodes)?)
        } else {
            None
        };
        let mut lc = LocalCluster {
            secure,
            exe,
            cluster: cluster.join(","),
            default_mode: args.default_mode,
            nodes: (1..=args.nodes)
                .map(|i| ChildNode {
                    id: i,
                    http: format!("127.0.0.1:{}", http_port(i)),
                    dir: args.data_dir.join(format!("node{i}")),
                    log_path: args.data_dir.join(format!("node{i}.log")),
                    child: None,
                })
                .collect(),
        };
        for i in 1..=args.nodes {
            lc.spawn(i)?;
        }
        Ok(lc)
    }

    fn spawn(&mut self, id: u64) -> Result<(), ClusterError> {
        let share = keel_server::config::worker_share(self.nodes.len());
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| ClusterError::Invalid(format!("no node {id}")))?;
        let log = open_log(&n.log_path)?;
        let log_err = log.try_clone().map_err(|source| ClusterError::Io {
            context: "cannot duplicate the log handle".into(),
            source,
        })?;
        let mut command = Command::new(&self.exe);
        // The nodes share this machine: each gets a share of its cores as workers, unless the
        // caller chose (the variable is then inherited).
        if std::env::var_os("KEEL_WORKER_THREADS").is_none() {
            command.env("KEEL_WORKER_THREADS", share.to_string());
        }
        command
            .arg("server")
            .args(["--id", &id.to_string()])
            .args(["--http", &n.http])
            .args(["--cluster", &self.cluster])
            .args(["--default-mode", self.default_mode.as_str()])
            .arg("--data-dir")
            .arg(&n.dir)
            .arg("--backup-dir")
            .arg(n.dir.with_file_name("backups"))
            .args(self.secure.iter().flat_map(|s| s.server_args(id)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .kill_on_drop(true);
        // If this launcher dies, however it dies, its nodes get SIGTERM instead of lingering.
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = command.spawn().map_err(|source| ClusterError::Io {
            context: format!("cannot start node {id}"),
            source,
        })?;
        n.child = Some(child);
        Ok(())
    }

    /// Client addresses (host:port) of the nodes, in id order.
    pub fn http_addrs(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.http.clone()).collect()
    }

    /// `http` or `https`.
    fn scheme(&self) -> &'static str {
        if self.secure.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// One line per node: where it listens, its data and its log.
    pub fn describe(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "node {}: {}://{}  (data {}, log {})",
                    n.id,
                    self.scheme(),
                    n.http,
                    n.dir.display(),
                    n.log_path.display()
                )
            })
            .collect()
    }

    /// kill -9 a node.
    pub async fn kill(&mut self, id: u64) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.id == id) {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill().await;
            }
        }
    }

    /// Starts a killed node again on its data.
    pub fn restart(&mut self, id: u64) -> Result<(), ClusterError> {
        self.spawn(id)
    }

    /// Waits until some node names a leader (up to `timeout`).
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let addrs = self.http_addrs();
        let opts = HttpOptions {
            request_timeout: STATUS_TIMEOUT,
            connect_timeout: STATUS_TIMEOUT,
            ..HttpOptions::default()
        };
        let opts = match &self.secure {
            Some(s) => s.http_options(opts).ok()?,
            None => opts,
        };
        wait_for_leader(&HttpClient::new(opts), &addrs, timeout).await
    }

    /// SIGTERM to every node, then SIGKILL after a grace period.
    pub async fn stop(&mut self) {
        for n in &self.nodes {
            if let Some(pid) = n.child.as_ref().and_then(|c| c.id()) {
                // SAFETY: kill(2) with a pid we spawned and a valid signal number.
                unsafe {
                    libc::kill(pid as libc::pid_t, libc::SIGTERM);
                }
            }
        }
        let deadline = Instant::now() + STOP_GRACE;
        for n in &mut self.nodes {
            if let Some(c) = n.child.as_mut() {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, c.wait()).await.is_err() {
                    let _ = c.kill().await;
                }
            }
        }
    }

    /// Returns once every node has exited, printing each exit.
    async fn watch(&mut self) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let mut running = 0;
            for n in &mut self.nodes {
                if let Some(c) = n.child.as_mut() {
                    match c.try_wait() {
                        Ok(Some(status)) => {
                            outln!("node {} exited: {status}", n.id);
                            n.child = None;
                        }
                        _ => running += 1,
                    }
                }
            }
            if running == 0 {
                return;
            }
        }
    }
}

/// Runs the local cluster until Ctrl-C.
pub async fn run(args: ClusterArgs) -> Result<(), ClusterError> {
    let mut lc = LocalCluster::start(&args)?;
    for line in lc.describe() {
        outln!("{line}");
    }
    let addrs = lc.http_addrs();
    match lc.wait_for_leader(LEADER_WAIT).await {
        Some(leader) => outln!(
            "leader: node {leader} ({}://{})",
            lc.scheme(),
            addrs.get(leader as usize - 1).cloned().unwrap_or_default()
        ),
        None => outln!(
            "no leader after {} s; see the node logs",
            LEADER_WAIT.as_secs()
        ),
    }
    match &lc.secure {
        None => outln!(
            "try: curl -X PUT --data-binary hello http://{}/v1/kv/greeting && curl http://{}/v1/kv/greeting",
            addrs[0],
            addrs[addrs.len() - 1]
        ),
        Some(s) => {
            let ca = s.ca();
            outln!(
                "TLS on both ports and tokens are on; in another shell:\n  \
                 export KEEL_CA={} KEEL_TOKEN=$(grep -o '\"token\":\"[^\"]*' {} | cut -d'\"' -f4)\n  \
                 keel put greeting hello && keel get greeting\n  \
                 curl --cacert \"$KEEL_CA\" -H \"Authorization: Bearer $KEEL_TOKEN\" https://{}/v1/kv/greeting",
                ca.display(),
                s.auth_file.display(),
                addrs[0]
            );
        }
    }
    outln!("press Ctrl-C to stop the cluster");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ClusterError::Io {
            context: "cannot install the SIGTERM handler".into(),
            source,
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => outln!("stopping the cluster"),
        _ = term.recv() => outln!("stopping the cluster"),
        _ = lc.watch() => outln!("every node has exited"),
    }
    lc.stop().await;
    Ok(())
}

fn open_log(path: &Path) -> Result<std::fs::File, ClusterError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ClusterError::Io {
            context: format!("cannot open {}", path.display()),
            source,
        })
}

/// Polls `/v1/status` of `addrs` until one names a leader.
async fn wait_for_leader(http: &HttpClient, addrs: &[String], timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        for addr in addrs {
            let Ok(resp) = http
                .request(addr, "GET", "/v1/status", &[], bytes::Bytes::new())
                .await
            else {
                continue;
            };
            let leader = serde_json::from_slice::<Status>(&resp.body)
                .ok()
                .and_then(|s| s.leader);
            if leader.is_some() {
                return leader;
            }
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    None
}
