//! TLS for talking to nodes started with `--tls-cert`: the CA that their certificates chain to,
//! and optionally a client certificate (for nodes started with `--client-certs`).
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use keel_client::{Client, TlsOptions};
//!
//! let tls = TlsOptions::from_files("certs/ca.pem".as_ref(), None)?;
//! let client = Client::builder(["https://127.0.0.1:7001"]).tls(tls).token("…").build().await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// Why TLS settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM object.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// How to check the nodes' certificates, and what to present as a client; cheap to clone.
#[derive(Clone)]
pub struct TlsOptions {
    /// The rustls configuration every connection uses.
    pub(crate) config: Arc<ClientConfig>,
}

impl std::fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsOptions { .. }")
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

impl TlsOptions {
    /// Trusts the CA certificates in `ca` (PEM); presents `identity` (certificate chain and
    /// private key, PEM files) when given.
    pub fn from_files(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, TlsError> {
        let ca_pem = read(ca)?;
        let identity = match identity {
            Some((cert, key)) => Some(((read(cert)?, cert), (read(key)?, key))),
            None => None,
        };
        build(
            (&ca_pem, ca),
            identity
                .as_ref()
                .map(|((c, cp), (k, kp))| ((&c[..], *cp), (&k[..], *kp))),
        )
    }

    /// [`TlsOptions::from_files`] from the files' contents.
    pub fn from_pem(ca: &[u8], identity: Option<(&[u8], &[u8])>) -> Result<Self, TlsError> {
        build(
            (ca, Path::new("CA")),
            identity.map(|(c, k)| ((c, Path::new("certificate")), (k, Path::new("key")))),
        )
    }
}

/// PEM contents, each with the name its errors give.
type Named<'a> = (&'a [u8], &'a Path);

fn build(ca: Named<'_>, identity: Option<(Named<'_>, Named<'_>)>) -> Result<TlsOptions, TlsError> {
    let pem_error = |path: &Path, message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let mut roots = RootCertStore::empty();
    let cas = CertificateDer::pem_slice_iter(ca.0)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(ca.1, format!("not PEM certificates: {e}")))?;
    if cas.is_empty() {
        return Err(pem_error(ca.1, "holds no certificate".into()));
    }
    for c in cas {
        roots
            .add(c)
            .map_err(|e| pem_error(ca.1, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots);
    // No ALPN here: hyper-rustls offers http/1.1 itself.
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert.0)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| pem_error(cert.1, format!("not PEM certificates: {e}")))?;
            if chain.is_empty() {
                return Err(pem_error(cert.1, "holds no certificate".into()));
            }
            let pkey = PrivateKeyDer::from_pem_slice(key.0)
                .map_err(|e| pem_error(key.1, format!("no usable private key: {e}")))?;
            builder
                .with_client_auth_cert(chain, pkey)
                .map_err(|e| TlsError::Config(e.to_string()))?
        }
    };
    Ok(TlsOptions {
        config: Arc::new(config),
    })
}
