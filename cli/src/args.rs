//! The command line of the `keel` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keel_api::WriteMode;
use keel_server::config::{RestoreArgs, ServerArgs};

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
    /// Client commands.
    #[command(flatten)]
    Client(crate::commands::ClientCommand),
}

/// Where the cluster is.
#[derive(Args, Debug, Clone)]
pub struct Endpoints {
    /// Nodes to contact (host:port, comma-separated); the client discovers the rest.
    #[arg(
        long,
        env = "KEEL_ENDPOINTS",
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        global = true
    )]
    pub endpoints: String,
    /// Talk only to these endpoints (they forward writes), without discovering the others: for
    /// clusters whose advertised addresses are not reachable from here (e.g. inside Docker).
    #[arg(long, env = "KEEL_DIRECT", global = true)]
    pub direct: bool,
    /// Bearer token for clusters started with `--auth-file` (better from the environment than
    /// on the command line, where other users of the machine can read it).
    #[arg(long, env = "KEEL_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
}

impl Endpoints {
    /// The endpoints as a list.
    pub fn list(&self) -> Vec<String> {
        self.endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    }
}

/// Flags of `keel cluster`.
#[derive(Args, Debug, Clone)]
pub struct ClusterArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Parent directory of the nodes' data directories (`node1`, `node2`, ...).
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// HTTP port of node 1; node i listens on base+i-1 for HTTP and base+100+i-1 for peers.
    #[arg(long, default_value_t = 7001)]
    pub base_port: u16,
    /// Mode of writes that do not give `?mode=`.
    #[arg(long, default_value = "semi")]
    pub default_mode: WriteMode,
}
