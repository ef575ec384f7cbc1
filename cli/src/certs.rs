//! `keel certs`: a private CA and the certificates a secure cluster needs (docs/security.md).
//!
//! - `ca.pem`, `ca-key.pem`: the CA, created on the first run and reused by later runs in the
//!   same directory (to issue a certificate for a node added later, or to re-issue one).
//! - `node-<id>.pem`, `node-<id>-key.pem`: a node's certificate, valid as server and client. Its
//!   subject alternative names are `node-<id>.keel` (the identity its peers check) and every
//!   `--host` (the names and addresses clients use for it).
//! - `client-<name>.pem`, `client-<name>-key.pem`: a client certificate, named
//!   `<name>.client.keel` (it can never pass for a member).
//!
//! Keys are ECDSA P-256, written readable by their owner only. The CA's key never leaves this
//! directory: keep it off the nodes.

use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SerialNumber,
};

/// Flags of `keel certs`.
#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory of the files (created; an existing CA in it is reused).
    #[arg(long, default_value = "./certs")]
    pub dir: PathBuf,
    /// Issue certificates for nodes 1..=N.
    #[arg(long, default_value_t = 0)]
    pub nodes: u64,
    /// Issue a certificate for this node id (repeatable; for a node added later).
    #[arg(long = "node")]
    pub node: Vec<u64>,
    /// Host names or IP addresses clients use for the nodes (repeatable; each node certificate
    /// holds all of them).
    #[arg(long = "host", default_values = ["127.0.0.1", "localhost"])]
    pub host: Vec<String>,
    /// Issue a client certificate with this name (repeatable).
    #[arg(long = "client")]
    pub client: Vec<String>,
    /// Validity of the certificates issued now, in days.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

/// Why certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// rcgen refused (a host name that is not a DNS name, say).
    #[error("{context}: {source}")]
    Cert {
        /// What was being made.
        context: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// Bad flags.
    #[error("{0}")]
    Invalid(String),
}

fn cert_error(context: impl Into<String>) -> impl FnOnce(rcgen::Error) -> CertsError {
    let context = context.into();
    move |source| CertsError::Cert { context, source }
}

/// Writes what `args` asks for; returns the files written, in words.
pub fn run(args: &CertsArgs) -> Result<Vec<String>, CertsError> {
    let mut nodes: Vec<u64> = (1..=args.nodes).chain(args.node.iter().copied()).collect();
    nodes.sort_unstable();
    nodes.dedup();
    if nodes.contains(&0) {
        return Err(CertsError::Invalid("node ids start at 1".into()));
    }
    if !(1..=3650).contains(&args.days) {
        return Err(CertsError::Invalid(
            "--days must be between 1 and 3650 (the CA's life)".into(),
        ));
    }
    for host in &args.host {
        // `.keel` names are identities: a host named like a member would make every node
        // certificate valid as that member.
        let h = host.trim_end_matches('.').to_ascii_lowercase();
        if h == "keel" || h.ends_with(".keel") || h.contains('*') {
            return Err(CertsError::Invalid(format!(
                "--host {host:?}: names under .keel (and wildcards) are reserved for identities"
            )));
        }
    }
    for name in &args.client {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(CertsError::Invalid(format!(
                "client name {name:?}: letters, digits and '-' only"
            )));
        }
    }
    std::fs::create_dir_all(&args.dir).map_err(|source| CertsError::Io {
        path: args.dir.clone(),
        source,
    })?;
    let mut written = Vec::new();
    let (ca, ca_key) = ca(&args.dir, &mut written)?;
    for id in nodes {
        let mut names = vec![keel_server::tls::member_name(id)];
        names.extend(args.host.iter().cloned());
        let purposes = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let what = format!("node-{id}");
        issue(args, &what, names, purposes, (&ca, &ca_key), &mut written)?;
    }
    for name in &args.client {
        let names = vec![format!("{name}.client.keel")];
        let purposes = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let what = format!("client-{name}");
        issue(args, &what, names, purposes, (&ca, &ca_key), &mut written)?;
    }
    Ok(written)
}

/// The CA's parameters: always the same, so that the CA rebuilt from its stored key issues
/// certificates that chain to the `ca.pem` written on the first run (an issuer is matched by
/// its name and its key).
fn ca_params(days: i64) -> Result<CertificateParams, CertsError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_error("the CA"))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "keel CA");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(days);
    p.serial_number = Some(serial());
    Ok(p)
}

fn serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    // Positive, and never a leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    SerialNumber::from_slice(&bytes)
}

/// The CA of `dir`: loaded when its key is there, else created (valid ten years).
fn ca(dir: &Path, written: &mut Vec<String>) -> Result<(Certificate, KeyPair), CertsError> {
    let key_path = dir.join("ca-key.pem");
    let cert_path = dir.join("ca.pem");
    if key_path.exists() {
        let pem = read(&key_path)?;
        let key = KeyPair::from_pem(&pem).map_err(cert_error("reading ca-key.pem"))?;
        if !cert_path.exists() {
            return Err(CertsError::Invalid(format!(
                "{} exists without {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        // The stored certificate must hold this key (else the certificates issued now would
        // not chain to it).
        let stored = read(&cert_path)?;
        let spki = key.public_key_der();
        let holds_key = first_cert_der(&stored)
            .is_some_and(|der| der.windows(spki.len()).any(|w| w == spki.as_slice()));
        if !holds_key {
            return Err(CertsError::Invalid(format!(
                "{} is not the certificate of {}",
                cert_path.display(),
                key_path.display()
            )));
        }
        let ca = ca_params(3650)?
            .self_signed(&key)
            .map_err(cert_error("the CA"))?;
        return Ok((ca, key));
    }
    let key = KeyPair::generate().map_err(cert_error("the CA's key"))?;
    let ca = ca_params(3650)?
        .self_signed(&key)
        .map_err(cert_error("the CA"))?;
    write(&cert_path, ca.pem().as_bytes(), false)?;
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    written.push(format!(
        "{} (the CA; {} stays here, off the nodes)",
        cert_path.display(),
        key_path.display()
    ));
    Ok((ca, key))
}

fn issue(
    args: &CertsArgs,
    what: &str,
    names: Vec<String>,
    purposes: Vec<ExtendedKeyUsagePurpose>,
    (ca, ca_key): (&Certificate, &KeyPair),
    written: &mut Vec<String>,
) -> Result<(), CertsError> {
    let mut p = CertificateParams::new(names.clone()).map_err(cert_error(what))?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, what);
    p.distinguished_name = dn;
    p.extended_key_usages = purposes;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.use_authority_key_identifier_extension = true;
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + time::Duration::days(args.days);
    p.serial_number = Some(serial());
    let key = KeyPair::generate().map_err(cert_error(what))?;
    let cert = p.signed_by(&key, ca, ca_key).map_err(cert_error(what))?;
    let cert_path = args.dir.join(format!("{what}.pem"));
    let key_path = args.dir.join(format!("{what}-key.pem"));
    write(&cert_path, cert.pem().as_bytes(), false)?;
    write(&key_path, key.serialize_pem().as_bytes(), true)?;
    written.push(format!("{} ({})", cert_path.display(), names.join(", ")));
    Ok(())
}

/// The DER bytes of the first certificate in a PEM text.
fn first_cert_der(pem: &str) -> Option<Vec<u8>> {
    let body: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64_decode(body.trim())
}

/// Standard base64 (the PEM body), without a dependency for it.
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len().saturating_sub(1);
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

fn read(path: &Path) -> Result<String, CertsError> {
    std::fs::read_to_string(path).map_err(|source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` through a temporary file and a rename (a reader never sees half a
/// certificate); a secret is readable by its owner only.
fn write(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertsError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("pem.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(io)?;
    f.write_all(bytes).and_then(|()| f.sync_all()).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &Path) -> CertsArgs {
        CertsArgs {
            dir: dir.to_path_buf(),
            nodes: 1,
            node: Vec::new(),
            host: vec!["127.0.0.1".into()],
            client: Vec::new(),
            days: 30,
        }
    }

    #[test]
    fn a_second_run_reuses_the_ca_and_refuses_a_foreign_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        run(&args(dir.path())).expect("first run");
        let ca = std::fs::read(dir.path().join("ca.pem")).expect("ca");
        run(&args(dir.path())).expect("second run");
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).expect("ca"), ca);
        // Another CA's certificate beside this key: refused.
        let other = tempfile::tempdir().expect("tempdir");
        run(&args(other.path())).expect("other CA");
        std::fs::copy(other.path().join("ca.pem"), dir.path().join("ca.pem")).expect("copy");
        assert!(matches!(
            run(&args(dir.path())),
            Err(CertsError::Invalid(_))
        ));
    }

    #[test]
    fn identity_names_cannot_be_hosts() {
        let dir = tempfile::tempdir().expect("tempdir");
        for host in [
            "node-2.keel",
            "NODE-2.KEEL.",
            "*.keel",
            "keel",
            "x.client.keel",
        ] {
            let mut a = args(dir.path());
            a.host = vec![host.into()];
            assert!(matches!(run(&a), Err(CertsError::Invalid(_))), "{host}");
        }
    }

    #[test]
    fn base64_decodes() {
        assert_eq!(base64_decode("aGVsbG8=").as_deref(), Some(&b"hello"[..]));
        assert_eq!(base64_decode("aGVsbG8h").as_deref(), Some(&b"hello!"[..]));
        assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
        assert!(base64_decode("a$").is_none());
    }
}
