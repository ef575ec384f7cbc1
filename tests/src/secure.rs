//! Clusters with TLS on both ports and bearer tokens: the certificates (`keel certs`, run once
//! per test process), an auth file with an admin token, and the client settings that go with
//! them.
//!
//! `KEEL_TEST_SECURE=1` switches every cluster of the process to TLS and tokens, and every
//! [`crate::http::Http`] and [`Cluster::client_builder`] to https with the admin token: the
//! ordinary cluster tests then run again on a secure cluster (scripts/test.sh does this for the
//! basic, modes, atomic and client tests).
//!
//! [`Cluster::client_builder`]: crate::Cluster::client_builder

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use keel_client::TlsOptions;

use crate::keel_bin;

/// Node certificates issued, for ids 1..=NODES (nodes added by tests included).
pub const NODES: u64 = 16;

/// The files of the secure clusters of this process.
pub struct Secure {
    /// Kept for the process's lifetime (removed at exit by the OS's temp cleaning, not by us:
    /// a failing test's nodes may still read them).
    dir: PathBuf,
    /// The admin token of the auth file.
    pub token: String,
}

/// Whether `KEEL_TEST_SECURE=1` asks for every cluster to be secure.
pub fn everywhere() -> bool {
    std::env::var("KEEL_TEST_SECURE").is_ok_and(|v| v == "1")
}

/// Runs `keel certs` with `args`; panics with its output when it fails.
pub fn keel_certs(args: &[&str]) {
    let out = Command::new(keel_bin())
        .arg("certs")
        .args(args)
        .output()
        .expect("run keel certs");
    assert!(
        out.status.success(),
        "keel certs {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Secure {
    /// The process's certificates and auth file, made on first use.
    pub fn get() -> &'static Secure {
        static SECURE: OnceLock<Secure> = OnceLock::new();
        SECURE.get_or_init(|| {
            let dir = tempfile::Builder::new()
                .prefix("keel-certs-")
                .tempdir()
                .expect("tempdir")
                .keep();
            let nodes = NODES.to_string();
            let d = dir.display().to_string();
            keel_certs(&["--dir", &d, "--nodes", &nodes, "--client", "tests"]);
            let token = "admin-token-0123456789abcdef".to_string();
            let auth = serde_json::json!({"tokens": [
                {"name": "admin", "token": token, "role": "admin"}
            ]});
            std::fs::write(dir.join("auth.json"), auth.to_string()).expect("write auth file");
            Secure { dir, token }
        })
    }

    /// The directory of the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `keel server` flags of node `id`: TLS on both ports, the auth file, and the token
    /// it presents when it joins.
    pub fn server_args(&self, id: u64) -> Vec<String> {
        let p = |name: String| self.dir.join(name).display().to_string();
        vec![
            "--tls-cert".into(),
            p(format!("node-{id}.pem")),
            "--tls-key".into(),
            p(format!("node-{id}-key.pem")),
            "--tls-ca".into(),
            p("ca.pem".into()),
            "--auth-file".into(),
            p("auth.json".into()),
            "--token".into(),
            self.token.clone(),
        ]
    }

    /// Client TLS settings: the CA, and the `tests` client certificate.
    pub fn client_tls(&self) -> TlsOptions {
        let cert = self.dir.join("client-tests.pem");
        let key = self.dir.join("client-tests-key.pem");
        TlsOptions::from_files(&self.dir.join("ca.pem"), Some((&cert, &key)))
            .expect("the test certificates load")
    }
}
