//! `keel cluster`: the embedded default. Starts N `keel server` child processes on 127.0.0.1,
//! prints where they listen and who leads, and stops them all on Ctrl-C. Data lives in
//! `<data-dir>/node<i>`, so running it again on the same directory finds the data again.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::process::{Child, Command};

use crate::config::ClusterArgs;

/// How long to wait for the first leader before saying so.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How long children get to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);

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

struct ChildNode {
    id: u64,
    http: String,
    child: Child,
}

/// Runs the local cluster until Ctrl-C.
pub async fn run(args: ClusterArgs) -> Result<(), ClusterError> {
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
    let cluster = cluster.join(",");

    let mut nodes = Vec::new();
    for i in 1..=args.nodes {
        let dir = args.data_dir.join(format!("node{i}"));
        let log_path = args.data_dir.join(format!("node{i}.log"));
        let log = open_log(&log_path)?;
        let log_err = log.try_clone().map_err(|source| ClusterError::Io {
            context: "cannot duplicate the log handle".into(),
            source,
        })?;
        let http = format!("127.0.0.1:{}", http_port(i));
        let mut command = Command::new(&exe);
        command
            .arg("server")
            .args(["--id", &i.to_string()])
            .args(["--http", &http])
            .args(["--cluster", &cluster])
            .args(["--default-mode", args.default_mode.as_str()])
            .arg("--data-dir")
            .arg(&dir)
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
            context: format!("cannot start node {i}"),
            source,
        })?;
        println!(
            "node {i}: http://{http}  (peer 127.0.0.1:{}, data {}, log {})",
            peer_port(i),
            dir.display(),
            log_path.display()
        );
        nodes.push(ChildNode { id: i, http, child });
    }

    match wait_for_leader(&nodes).await {
        Some(leader) => {
            let url = nodes
                .iter()
                .find(|n| n.id == leader)
                .map(|n| n.http.clone())
                .unwrap_or_default();
            println!("leader: node {leader} (http://{url})");
        }
        None => println!(
            "no leader after {} s; see the node logs",
            LEADER_WAIT.as_secs()
        ),
    }
    println!(
        "try: curl -X PUT --data-binary hello http://{}/v1/kv/greeting && curl http://{}/v1/kv/greeting",
        nodes[0].http,
        nodes[nodes.len() - 1].http
    );
    println!("press Ctrl-C to stop the cluster");

    let exited = watch_children(&mut nodes);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|source| ClusterError::Io {
            context: "cannot install the SIGTERM handler".into(),
            source,
        })?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => println!("stopping the cluster"),
        _ = term.recv() => println!("stopping the cluster"),
        _ = exited => println!("every node has exited"),
    }
    stop_all(&mut nodes).await;
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

/// Returns once every child has exited, printing each exit.
async fn watch_children(nodes: &mut [ChildNode]) {
    let mut running: Vec<bool> = vec![true; nodes.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while running.iter().any(|r| *r) {
        tick.tick().await;
        for (n, alive) in nodes.iter_mut().zip(running.iter_mut()) {
            if *alive {
                if let Ok(Some(status)) = n.child.try_wait() {
                    println!("node {} exited: {status}", n.id);
                    *alive = false;
                }
            }
        }
    }
}

async fn stop_all(nodes: &mut [ChildNode]) {
    for n in nodes.iter() {
        if let Some(pid) = n.child.id() {
            // SAFETY: kill(2) with a pid we spawned and a valid signal number has no memory effects.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + STOP_GRACE;
    for n in nodes.iter_mut() {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, n.child.wait()).await.is_err() {
            let _ = n.child.kill().await;
        }
    }
}

async fn wait_for_leader(nodes: &[ChildNode]) -> Option<u64> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + LEADER_WAIT;
    while Instant::now() < deadline {
        for n in nodes {
            let Ok(uri) = format!("http://{}/v1/status", n.http).parse::<hyper::Uri>() else {
                continue;
            };
            let fetch = async {
                let resp = client.get(uri).await.ok()?;
                let body = resp.into_body().collect().await.ok()?.to_bytes();
                let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
                v.get("leader")?.as_u64()
            };
            if let Ok(Some(leader)) = tokio::time::timeout(Duration::from_secs(1), fetch).await {
                return Some(leader);
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}
