//! The command line of the `keel` binary.

use clap::{Parser, Subcommand};
use keel_server::config::{RestoreArgs, ServerArgs};

use crate::opts::{ClusterArgs, Endpoints};

/// keel: a leader-routed replicated key-value store.
#[derive(Parser, Debug)]
#[command(name = "keel", version, about)]
pub struct Cli {
    /// Where the cluster is, for the client commands and the demos.
    #[command(flatten)]
    pub endpoints: Endpoints,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `keel`.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one node of a cluster.
    Server(Box<ServerArgs>),
    /// Start a local cluster of N nodes on 127.0.0.1 as child processes (the embedded default).
    Cluster(ClusterArgs),
    /// Run a correctness demonstration: balance, inventory or bank.
    Demo(crate::demo::DemoArgs),
    /// Restore a backup into a new node's data directory (run once per node of the new cluster,
    /// with the same --cluster, then start the nodes).
    Restore(RestoreArgs),
    /// Write a private CA and node and client certificates for a secure cluster.
    Certs(crate::certs::CertsArgs),
    /// Leases: grant, keepalive, show, revoke.
    Lease(crate::coord::LeaseArgs),
    /// Hold a lock (kept alive by a lease) while a command runs, or until Ctrl-C.
    Lock(crate::coord::LockArgs),
    /// Campaign in an election and lead until Ctrl-C, or watch who leads (--observe).
    Elect(crate::coord::ElectArgs),
    /// Print the changes of a prefix (or a key) as they happen, as JSON lines.
    Watch(crate::watch::WatchArgs),
    /// One scheduler of `keel demo cron` (started by the demo).
    #[command(hide = true)]
    CronWorker(crate::demo::cron::WorkerArgs),
    /// Client commands.
    #[command(flatten)]
    Client(crate::commands::ClientCommand),
}
