//! `keel demo balance | inventory | bank | cron | pause`: the correctness demonstrations of
//! SPEC §4 and §8, on the client library, against a running cluster (or one the demo starts for
//! itself).
//!
//! Each demo runs the seed's small case step by step, then the same with a naive client that
//! reads, decides and writes back (GET then PUT), then both at scale through every node, and
//! prints what happened in plain words with the invariants checked. With `--kill-leader` it
//! starts its own local cluster and kills its leader with SIGKILL in the middle of the scaled
//! run; clients retry under their idempotency keys.
//!
//! Balance and inventory are the same pattern, a bounded decrement (withdraw from an account that
//! may not go below 0; sell from a stock that may not go below 0), told in different words.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use keel_client::{Client, Error, Mode};

use crate::launcher::LocalCluster;
use crate::opts::{ClusterArgs, Endpoints};

mod bank;
pub mod cron;
mod decrement;
mod pause;

/// Which demonstration.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DemoKind {
    /// Concurrent withdrawals from one account.
    Balance,
    /// Concurrent purchases from one stock.
    Inventory,
    /// Transfers between accounts with transactions, and reads of all balances.
    Bank,
    /// Three schedulers and one job: naive duplicates, a keel lock, a frozen holder fenced off.
    Cron,
    /// A lease holder paused past its TTL: its late write, without and with the fence check.
    Pause,
}

/// Flags of `keel demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Which demonstration.
    #[arg(value_enum)]
    pub kind: DemoKind,
    /// Write mode of every write.
    #[arg(long, default_value = "semi")]
    pub mode: Mode,
    /// Operations in the scaled run.
    #[arg(long, default_value_t = 2000)]
    pub ops: u64,
    /// Concurrent clients in the scaled run.
    #[arg(long, default_value_t = 32)]
    pub clients: u64,
    /// Start a local 3-node cluster for the demo (in a temporary directory).
    #[arg(long)]
    pub local: bool,
    /// Kill -9 the leader in the middle of the scaled run (implies --local).
    #[arg(long)]
    pub kill_leader: bool,
    /// HTTP port of node 1 of the cluster started by --local.
    #[arg(long, default_value_t = 7301)]
    pub local_base_port: u16,
    /// Write a JSON summary here (the tests read it).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Errors of the demos.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A request failed in a way the demo cannot go on from.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// The local cluster could not start.
    #[error(transparent)]
    Cluster(#[from] crate::launcher::ClusterError),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

fn failed(context: impl Into<String>) -> impl FnOnce(Error) -> DemoError {
    let context = context.into();
    move |source| DemoError::Client { context, source }
}

/// A client that sends everything through `endpoints` in turn (they forward writes).
async fn pinned(endpoints: &[String], mode: Mode) -> Result<Client, DemoError> {
    Client::builder(endpoints)
        .pin_to_endpoints(true)
        .default_mode(mode)
        .build()
        .await
        .map_err(failed("building a client"))
}

/// Runs a demo and returns whether every invariant held.
pub async fn run(endpoints: &Endpoints, args: DemoArgs) -> Result<bool, DemoError> {
    let mut local = None;
    let endpoints: Vec<String> = if args.local || args.kill_leader {
        let dir = std::env::temp_dir().join(format!("keel-demo-{}", std::process::id()));
        let lc = LocalCluster::start(&ClusterArgs {
            nodes: 3,
            data_dir: dir.clone(),
            base_port: args.local_base_port,
            default_mode: args.mode,
            secure: false,
        })?;
        outln!(
            "started a local 3-node cluster for the demo in {}",
            dir.display()
        );
        if lc.wait_for_leader(Duration::from_secs(30)).await.is_none() {
            return Err(DemoError::Other(
                "the local cluster elected no leader".into(),
            ));
        }
        let addrs = lc.http_addrs();
        local = Some((lc, dir));
        addrs
    } else {
        endpoints
            .endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    if endpoints.is_empty() {
        return Err(DemoError::Other("no endpoints".into()));
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let prefix = format!("demo/{run_id}");
    let mut dc = DemoCtx {
        endpoints,
        mode: args.mode,
        prefix,
        ops: args.ops.max(1),
        clients: args.clients.max(1),
        killer: args
            .kill_leader
            .then_some(())
            .and(local.as_mut().map(|(lc, _)| lc)),
    };
    outln!(
        "mode {}, {} nodes: {}",
        args.mode,
        dc.endpoints.len(),
        dc.endpoints.join(", ")
    );
    let summary = match args.kind {
        DemoKind::Balance => decrement::bounded_decrement(&mut dc, &decrement::BALANCE).await?,
        DemoKind::Inventory => decrement::bounded_decrement(&mut dc, &decrement::INVENTORY).await?,
        DemoKind::Bank => bank::bank(&mut dc).await?,
        DemoKind::Cron => cron::cron(&mut dc).await?,
        DemoKind::Pause => pause::pause(&mut dc).await?,
    };
    let ok = summary["invariants_hold"].as_bool().unwrap_or(false);
    if let Some(path) = &args.json {
        std::fs::write(path, summary.to_string())
            .map_err(|e| DemoError::Other(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some((mut lc, dir)) = local {
        lc.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    outln!();
    outln!(
        "{}",
        if ok {
            "every invariant held with atomic writes."
        } else {
            "AN INVARIANT WAS BROKEN with atomic writes: this is a bug in keel."
        }
    );
    Ok(ok)
}

/// What every demo is given.
struct DemoCtx<'a> {
    /// The nodes clients talk to (each client is pinned to them, so every node forwards).
    endpoints: Vec<String>,
    /// Write mode of every write.
    mode: Mode,
    /// Key prefix of this run (unique per run, so runs do not see each other's keys).
    prefix: String,
    /// Operations in the scaled run.
    ops: u64,
    /// Concurrent clients in the scaled run.
    clients: u64,
    /// The local cluster, when the demo may kill its leader.
    killer: Option<&'a mut LocalCluster>,
}

fn check(ok: bool) -> &'static str {
    if ok {
        "✔"
    } else {
        "✘"
    }
}

/// Kills the leader of the demo's own cluster, waits for a new one, restarts the old node.
async fn kill_leader(lc: &mut LocalCluster, client: &Client) -> Result<u64, DemoError> {
    let status = client
        .status()
        .await
        .map_err(failed("finding the leader"))?;
    let leader = status
        .leader
        .ok_or_else(|| DemoError::Other("no leader to kill".into()))?;
    lc.kill(leader).await;
    outln!("  -- killed the leader, node {leader}, with SIGKILL --");
    let t = Instant::now();
    // The survivors elect a new leader; then the old node comes back as a follower.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = lc.wait_for_leader(Duration::from_secs(1)).await {
            if l != leader {
                outln!(
                    "  -- node {l} leads after {:.1} s; restarting node {leader} --",
                    t.elapsed().as_secs_f64()
                );
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(DemoError::Other("no new leader within 30 s".into()));
        }
    }
    lc.restart(leader)?;
    Ok(leader)
}
