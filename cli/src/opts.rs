//! Options shared by the subcommands: where the cluster is (endpoints, token, TLS) and the
//! flags of the local cluster. A leaf module: the subcommands import it, it imports none of them
//! (so the command line, which names every subcommand, and the subcommands form no circle).

use std::path::PathBuf;

use clap::Args;
use keel_api::WriteMode;
use keel_client::{Client, ClientBuilder, TlsError, TlsOptions};

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
