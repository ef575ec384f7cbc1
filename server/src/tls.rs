//! # tls: the certificates of both ports
//!
//! With `--tls-cert`, `--tls-key` and `--tls-ca` (PEM files; `keel certs` writes them), both
//! ports speak TLS (1.3 or 1.2, rustls with ring):
//!
//! - **The client port** presents the node's certificate (its subject alternative names must
//!   hold the host names or addresses clients use). Client certificates are asked for as
//!   `--client-certs` says: `none`, `optional` (verified against the CA when one is presented)
//!   or `required`. A client certificate authenticates the channel; what a request may do is
//!   still decided by its bearer token (`--auth-file`).
//! - **The peer port** is mutual TLS. Every node's certificate names it `node-<id>.keel` (a DNS
//!   subject alternative name). A node dialing member N accepts only a server certificate from
//!   the CA that is valid for `node-N.keel`; a node accepting a peer connection requires a
//!   client certificate from the CA and, when the Hello arrives, checks that the certificate is
//!   valid for the id the Hello claims ([`names_member`]). A stranger without a certificate, with
//!   one from another CA, or with another member's certificate cannot send a single frame, nor
//!   change any member's advertised address.
//!
//! The three files are read again every second and used for new connections when their content
//! changes (certificates rotate without a restart); a set that does not load is logged and the
//! previous one stays. This module owns the rustls configurations and nothing else: the HTTP
//! server and the transport take the configuration current when a connection starts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// The DNS name a member's certificate must hold: `node-<id>.keel`.
pub fn member_name(id: u64) -> String {
    format!("node-{id}.keel")
}

/// Whether `cert` (an end-entity certificate already verified against the CA by the handshake)
/// is valid for member `id`'s name.
pub fn names_member(cert: &CertificateDer<'_>, id: u64) -> bool {
    let Ok(name) = ServerName::try_from(member_name(id)) else {
        return false;
    };
    match webpki::EndEntityCert::try_from(cert) {
        Ok(ee) => ee.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

/// Whether clients of the HTTP port present certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ClientCerts {
    /// Not asked for.
    #[default]
    None,
    /// Asked for, verified against the CA when presented; connections without one are served.
    Optional,
    /// Connections without a certificate from the CA are refused.
    Required,
}

/// The files of a node's TLS identity.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The node's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates that peers' and clients' certificates must chain to (PEM; several
    /// during a CA rotation).
    pub ca: PathBuf,
}

/// Why a TLS identity cannot be used.
#[derive(Debug, thiserror::Error)]
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

/// The rustls configurations built from one version of the files.
pub struct Configs {
    /// The client port's server side.
    pub http: Arc<ServerConfig>,
    /// The peer port's server side (client certificate required).
    pub peer_accept: Arc<ServerConfig>,
    /// The peer port's dialing side (presents the node's certificate).
    pub peer_dial: Arc<ClientConfig>,
}

/// A node's TLS identity, reloaded when its files change.
pub struct Tls {
    /// Where it is read from.
    files: TlsFiles,
    /// What the client port asks of clients.
    client_certs: ClientCerts,
    /// The configurations in use, and the hash of the files' content last looked at (None:
    /// they could not be read), so that a change is reported once.
    state: RwLock<(Arc<Configs>, Option<u64>)>,
    /// How many times new files were taken: connections made before a change end (peer
    /// connections reconnect with the new identity).
    generation: std::sync::atomic::AtomicU64,
}

impl Tls {
    /// Loads the files; an error if any cannot be used.
    pub fn load(files: TlsFiles, client_certs: ClientCerts) -> Result<Tls, TlsError> {
        let (content, hash) = read_all(&files)?;
        let configs = build(&files, &content, client_certs)?;
        Ok(Tls {
            files,
            client_certs,
            state: RwLock::new((Arc::new(configs), Some(hash))),
            generation: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The configurations for a connection starting now.
    pub fn current(&self) -> Arc<Configs> {
        self.state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// Changes when new files are taken.
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Reads the files again; None when their content has not changed since the last call,
    /// else whether the new content was taken (on an error the previous one stays).
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
        let read = read_all(&self.files);
        let now = read.as_ref().map(|(_, h)| *h).ok();
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        if now == s.1 {
            return None;
        }
        // Either way, not again until the content changes once more.
        s.1 = now;
        let result = read.and_then(|(content, _)| build(&self.files, &content, self.client_certs));
        match result {
            Ok(configs) => {
                s.0 = Arc::new(configs);
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                Some(Ok(()))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// The three files' bytes, and one hash over them.
struct Content {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

fn read_all(files: &TlsFiles) -> Result<(Content, u64), TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::File {
            path: p.to_path_buf(),
            message: e.to_string(),
        })
    };
    let content = Content {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        ca: read(&files.ca)?,
    };
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    content.cert.hash(&mut h);
    content.key.hash(&mut h);
    content.ca.hash(&mut h);
    Ok((content, h.finish()))
}

/// The crypto every configuration uses (no process-wide default is installed).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certs(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |message: String| TlsError::File {
        path: path.to_path_buf(),
        message,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(format!("not PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(file_error("holds no certificate".into()));
    }
    Ok(certs)
}

fn build(files: &TlsFiles, c: &Content, client_certs: ClientCerts) -> Result<Configs, TlsError> {
    let chain = certs(&files.cert, &c.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&c.key).map_err(|e| TlsError::File {
        path: files.key.clone(),
        message: format!("no usable private key: {e}"),
    })?;
    let mut roots = RootCertStore::empty();
    for ca in certs(&files.ca, &c.ca)? {
        roots.add(ca).map_err(|e| TlsError::File {
            path: files.ca.clone(),
            message: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let roots = Arc::new(roots);
    let config = |e: rustls::Error| TlsError::Config(e.to_string());
    let verifier = |optional: bool| {
        let b = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let b = if optional {
            b.allow_unauthenticated()
        } else {
            b
        };
        b.build().map_err(|e| TlsError::Config(e.to_string()))
    };

    let http = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?;
    let http = match client_certs {
        ClientCerts::None => http.with_no_client_auth(),
        ClientCerts::Optional => http.with_client_cert_verifier(verifier(true)?),
        ClientCerts::Required => http.with_client_cert_verifier(verifier(false)?),
    };
    let mut http = http
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config)?;
    http.alpn_protocols = vec![b"http/1.1".to_vec()];

    let peer_accept = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_client_cert_verifier(verifier(false)?)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(config)?;
    let peer_dial = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(config)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(chain, key)
        .map_err(config)?;
    Ok(Configs {
        http: Arc::new(http),
        peer_accept: Arc::new(peer_accept),
        peer_dial: Arc::new(peer_dial),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA and a certificate for member `id` signed by it: (ca pem, cert pem, key pem).
    fn issue(id: u64) -> (String, String, String) {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![member_name(id)])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("cert");
        (ca.pem(), cert.pem(), key.serialize_pem())
    }

    fn write_all(dir: &Path, (ca, cert, key): &(String, String, String)) -> TlsFiles {
        let files = TlsFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node-key.pem"),
            ca: dir.join("ca.pem"),
        };
        std::fs::write(&files.ca, ca).expect("write");
        std::fs::write(&files.cert, cert).expect("write");
        std::fs::write(&files.key, key).expect("write");
        files
    }

    #[test]
    fn a_certificate_names_its_member_only() {
        let (_, cert, _) = issue(3);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("pem");
        assert!(names_member(&der, 3));
        assert!(!names_member(&der, 2));
        assert!(!names_member(&der, 33));
    }

    #[test]
    fn changed_files_are_taken_and_broken_ones_keep_the_previous_identity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = write_all(dir.path(), &issue(1));
        let tls = Tls::load(files.clone(), ClientCerts::Optional).expect("loads");
        let first = tls.current();
        assert!(tls.reload_if_changed().is_none(), "unchanged");
        // A new identity is taken.
        write_all(dir.path(), &issue(1));
        assert!(matches!(tls.reload_if_changed(), Some(Ok(()))));
        let second = tls.current();
        assert!(!Arc::ptr_eq(&first.http, &second.http));
        // A key that does not match the certificate: refused, the second identity stays, and
        // the same broken content is not reported again.
        let (_, _, other_key) = issue(1);
        std::fs::write(&files.key, other_key).expect("write");
        assert!(matches!(tls.reload_if_changed(), Some(Err(_))));
        assert!(Arc::ptr_eq(&second.http, &tls.current().http));
        assert!(tls.reload_if_changed().is_none());
        // A missing file: the same.
        std::fs::remove_file(&files.ca).expect("remove");
        assert!(matches!(tls.reload_if_changed(), Some(Err(_))));
        assert!(Arc::ptr_eq(&second.http, &tls.current().http));
        assert!(tls.reload_if_changed().is_none(), "reported once");
        // And a node does not start on broken files.
        assert!(Tls::load(files, ClientCerts::None).is_err());
    }
}
