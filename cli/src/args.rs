//! The command line of the `keel` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keel_api::WriteMode;
use keel_client::{Client, ClientBuilder, TlsError, TlsOptions};
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
    /// The CA of a cluster started with TLS (PEM): with it the client speaks https.
    #[arg(long = "ca", env = "KEEL_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate to present (PEM), for nodes started with `--client-certs`.
    #[arg(long = "cert", env = "KEEL_CERT", global = true, requires_all = ["client_key", "tls_ca"])]
    pub client_cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        env = "KEEL_KEY",
        global = true,
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
}

impl Endpoints {
    /// The TLS settings, when --ca is given.
    pub fn tls(&self) -> Result<Option<TlsOptions>, TlsError> {
        let Some(ca) = &self.tls_ca else {
            return Ok(None);
        };
        let identity = self.client_cert.as_deref().zip(self.client_key.as_deref());
        TlsOptions::from_files(ca, identity).map(Some)
    }

    /// A client builder for these endpoints, with the token and TLS settings given.
    pub fn builder(&self) -> Result<ClientBuilder, TlsError> {
        let mut builder = Client::builder(self.list()).pin_to_endpoints(self.direct);
        if let Some(t) = &self.token {
            builder = builder.token(t.clone());
        }
        if let Some(tls) = self.tls()? {
            builder = builder.tls(tls);
        }
        Ok(builder)
    }

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
    /// TLS on both ports and bearer tokens: writes a CA and certificates (`<data-dir>/certs`)
    /// and an auth file with an admin token (`<data-dir>/auth.json`), and prints how to use them.
    #[arg(long)]
    pub secure: bool,
}
