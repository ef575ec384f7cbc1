//! `keel cluster --secure`: the files a local cluster needs for TLS and tokens, written once
//! under the data directory and reused when the cluster is started again on it.

use std::path::{Path, PathBuf};

use keel_client::http::HttpOptions;
use keel_client::TlsOptions;

use super::ClusterError;
use crate::certs::{self, CertsArgs};

/// The TLS and token files of a local secure cluster.
pub struct Secure {
    /// `ca.pem` and the nodes' certificates.
    pub certs: PathBuf,
    /// The auth file.
    pub auth_file: PathBuf,
    /// The admin token in it.
    pub token: String,
}

impl Secure {
    /// Writes what is missing under `data_dir` for `nodes` nodes.
    pub fn prepare(data_dir: &Path, nodes: u64) -> Result<Secure, ClusterError> {
        let certs = data_dir.join("certs");
        let missing: Vec<u64> = (1..=nodes)
            .filter(|i| !certs.join(format!("node-{i}.pem")).exists())
            .collect();
        if !missing.is_empty() {
            certs::run(&CertsArgs {
                dir: certs.clone(),
                nodes: 0,
                node: missing,
                host: vec!["127.0.0.1".into(), "localhost".into()],
                client: Vec::new(),
                days: 365,
            })
            .map_err(|e| ClusterError::Invalid(format!("cannot write certificates: {e}")))?;
        }
        let auth_file = data_dir.join("auth.json");
        let io = |context: String| move |source| ClusterError::Io { context, source };
        if !auth_file.exists() {
            let token: String = (0..32)
                .map(|_| char::from(b"0123456789abcdef"[rand::random::<usize>() % 16]))
                .collect();
            let body = serde_json::json!({"tokens": [
                {"name": "admin", "token": token, "role": "admin"}
            ]});
            write_private(&auth_file, body.to_string().as_bytes())
                .map_err(io(format!("cannot write {}", auth_file.display())))?;
        }
        let text = std::fs::read_to_string(&auth_file)
            .map_err(io(format!("cannot read {}", auth_file.display())))?;
        let token = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v["tokens"]
                    .as_array()?
                    .iter()
                    .find(|t| t["role"] == "admin")?["token"]
                    .as_str()
                    .map(str::to_string)
            })
            .ok_or_else(|| {
                ClusterError::Invalid(format!("{} holds no admin token", auth_file.display()))
            })?;
        Ok(Secure {
            certs,
            auth_file,
            token,
        })
    }

    /// The `keel server` flags of node `id`.
    pub fn server_args(&self, id: u64) -> Vec<String> {
        let path = |name: String| self.certs.join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            path(format!("node-{id}.pem")),
            "--tls-key".into(),
            path(format!("node-{id}-key.pem")),
            "--tls-ca".into(),
            path("ca.pem".into()),
            "--auth-file".into(),
            self.auth_file.display().to_string(),
        ]
    }

    /// The CA file.
    pub fn ca(&self) -> PathBuf {
        self.certs.join("ca.pem")
    }

    /// `opts` with the CA and the admin token.
    pub fn http_options(&self, opts: HttpOptions) -> Result<HttpOptions, ClusterError> {
        let tls = TlsOptions::from_files(&self.ca(), None)
            .map_err(|e| ClusterError::Invalid(e.to_string()))?;
        Ok(HttpOptions {
            tls: Some(tls),
            token: Some(self.token.clone()),
            ..opts
        })
    }
}

/// Writes a secret readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}
