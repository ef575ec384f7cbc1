//! Who may do what on the client API: bearer tokens from `--auth-file`, each with a role and
//! optionally key prefixes.
//!
//! - `read`: reads of keys (any consistency), lists, read-only transactions, status, members,
//!   metrics;
//! - `write`: what `read` may, and writes of keys (put, delete, add, transactions);
//! - `admin`: everything, including membership changes, leader transfers, backups and failpoints.
//!
//! A token with `prefixes` may only name keys that start with one of them (a list only a prefix
//! inside one of them, a transaction only such keys); endpoints about the cluster are not about
//! keys and need only the role. `/health` and `/ready` need no token (probes). Without
//! `--auth-file` every request is allowed, as before.
//!
//! The file is JSON, re-read when it changes (so tokens rotate without a restart; a file that
//! does not parse is logged and the tokens already loaded stay):
//!
//! ```json
//! {"tokens": [
//!   {"name": "ops", "token": "…at least 16 characters…", "role": "admin"},
//!   {"name": "billing", "token": "…", "role": "write", "prefixes": ["billing/"]}
//! ]}
//! ```

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use hyper::HeaderMap;
use keel_api::ErrorCode;
use serde::Deserialize;

use super::error::ApiError;

/// Shortest token accepted: guessing must be hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads.
    Read,
    /// Reads and writes of keys.
    Write,
    /// Everything.
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// One token's rights.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Its name (in logs and errors; never the token).
    pub name: String,
    /// The secret.
    token: String,
    /// Its role.
    pub role: Role,
    /// The key prefixes it is limited to; None for every key.
    pub prefixes: Option<Vec<String>>,
}

/// Why an auth file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthFileError {
    /// It could not be read.
    #[error("cannot read the auth file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Its content is not a valid token list.
    #[error("auth file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileJson {
    tokens: Vec<TokenJson>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenJson {
    name: String,
    token: String,
    role: String,
    #[serde(default)]
    prefixes: Option<Vec<String>>,
}

/// Parses and validates the content of an auth file.
pub fn parse_tokens(text: &str) -> Result<Vec<Grant>, String> {
    let file: FileJson = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    if file.tokens.is_empty() {
        return Err("no tokens (an auth file with none would lock everyone out)".into());
    }
    let mut grants: Vec<Grant> = Vec::with_capacity(file.tokens.len());
    for t in file.tokens {
        if t.name.is_empty() {
            return Err("a token without a name".into());
        }
        let role = Role::parse(&t.role).ok_or(format!(
            "token {:?}: role {:?} is not read, write or admin",
            t.name, t.role
        ))?;
        if t.token.chars().count() < MIN_TOKEN_LEN || t.token.chars().any(char::is_whitespace) {
            return Err(format!(
                "token {:?}: a token has at least {MIN_TOKEN_LEN} characters and no spaces",
                t.name
            ));
        }
        if let Some(ps) = &t.prefixes {
            if ps.is_empty() || ps.iter().any(String::is_empty) {
                return Err(format!(
                    "token {:?}: prefixes, when given, are non-empty (leave them out for every key)",
                    t.name
                ));
            }
        }
        if grants.iter().any(|g| g.name == t.name) {
            return Err(format!("two tokens named {:?}", t.name));
        }
        if grants.iter().any(|g| g.token == t.token) {
            return Err(format!("token {:?} repeats another token", t.name));
        }
        grants.push(Grant {
            name: t.name,
            token: t.token,
            role,
            prefixes: t.prefixes,
        });
    }
    Ok(grants)
}

/// Equal, in a time that depends only on the length of `known` (no early exit on the first
/// differing byte, nor on a different length).
fn same_secret(known: &[u8], given: &[u8]) -> bool {
    let mut diff = known.len() ^ given.len();
    for (i, k) in known.iter().enumerate() {
        diff |= usize::from(k ^ given.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// What the file held when it was last read: a hash of its content (None: unreadable). The
/// content itself is compared, not its modification time, so that a rewrite with the same
/// length in the same clock tick, or a copy that keeps the old time, is seen.
type Stamp = Option<u64>;

fn hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// The tokens of an auth file's content.
fn parse_file(path: &Path, bytes: &[u8]) -> Result<Vec<Arc<Grant>>, AuthFileError> {
    let invalid = |message: String| AuthFileError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    Ok(parse_tokens(text)
        .map_err(invalid)?
        .into_iter()
        .map(Arc::new)
        .collect())
}

fn read_error(path: &Path, source: std::io::Error) -> AuthFileError {
    AuthFileError::Read {
        path: path.to_path_buf(),
        source,
    }
}

/// The tokens of `--auth-file`, re-read when the file changes.
pub struct Tokens {
    /// The file.
    path: PathBuf,
    /// The tokens loaded, and the file's stamp when they were.
    state: RwLock<(Arc<Vec<Arc<Grant>>>, Stamp)>,
    /// Bumped whenever a reload puts new tokens in force: a long-lived stream re-checks its
    /// caller only when this moved, instead of scanning every token at every turn.
    generation: AtomicU64,
}

impl Tokens {
    /// Loads the file (a node does not start with a file it cannot use).
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let bytes = std::fs::read(path).map_err(|e| read_error(path, e))?;
        let grants = parse_file(path, &bytes)?;
        Ok(Tokens {
            path: path.to_path_buf(),
            state: RwLock::new((Arc::new(grants), Some(hash(&bytes)))),
            generation: AtomicU64::new(0),
        })
    }

    /// Re-reads the file if it changed since the last read: Some(number of tokens) when it was
    /// re-read, Some(error) when it changed but cannot be used (the old tokens stay), None when
    /// it did not change.
    pub fn reload_if_changed(&self) -> Option<Result<usize, AuthFileError>> {
        let content = std::fs::read(&self.path);
        let now = content.as_deref().ok().map(hash);
        if self.state.read().unwrap_or_else(|p| p.into_inner()).1 == now {
            return None;
        }
        let result = content
            .map_err(|e| read_error(&self.path, e))
            .and_then(|bytes| parse_file(&self.path, &bytes));
        let mut s = self.state.write().unwrap_or_else(|p| p.into_inner());
        // Either way, not again until it changes once more.
        s.1 = now;
        match result {
            Ok(grants) => {
                let n = grants.len();
                s.0 = Arc::new(grants);
                self.generation.fetch_add(1, Ordering::AcqRel);
                Some(Ok(n))
            }
            Err(e) => Some(Err(e)),
        }
    }

    /// The grant of the request's bearer token; 401 without one or with an unknown one.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Grant>, ApiError> {
        let unauthorized = |msg: &str| ApiError::new(ErrorCode::Unauthorized, msg);
        let value = headers.get(hyper::header::AUTHORIZATION).ok_or_else(|| {
            unauthorized("this node needs a bearer token (Authorization: Bearer ...)")
        })?;
        // The scheme is case-insensitive (RFC 7235).
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim())
            .ok_or_else(|| unauthorized("the Authorization header is not \"Bearer <token>\""))?;
        self.lookup(token)
            .ok_or_else(|| unauthorized("unknown token"))
    }

    /// The grant of `token` in the tokens now in force (None: unknown, or revoked since).
    pub fn lookup(&self, token: &str) -> Option<Arc<Grant>> {
        let grants = self
            .state
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone();
        // Every token is compared, so the time taken does not say which one came close.
        let mut found = None;
        for g in grants.iter() {
            if same_secret(g.token.as_bytes(), token.as_bytes()) && found.is_none() {
                found = Some(g.clone());
            }
        }
        found
    }

    /// How many times a reload has put new tokens in force (see [`Tokens::still_allows`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `grant`'s token is still in force with the rights `check` asks for (the file may
    /// have been rewritten since the grant was looked up).
    pub fn still_allows(&self, grant: &Grant, check: impl Fn(&Caller) -> bool) -> bool {
        self.lookup(&grant.token)
            .is_some_and(|now| check(&Caller(Some(now))))
    }
}

/// The caller of a request: None when the node has no `--auth-file` (everything is allowed).
#[derive(Clone, Debug, Default)]
pub struct Caller(pub Option<Arc<Grant>>);

impl Caller {
    fn forbidden(g: &Grant, what: String) -> ApiError {
        ApiError::new(
            ErrorCode::Forbidden,
            format!("token {:?} ({}) may not {what}", g.name, g.role.as_str()),
        )
    }

    /// 403 unless the caller has `role`.
    pub fn need(&self, role: Role) -> Result<(), ApiError> {
        match &self.0 {
            Some(g) if g.role < role => Err(Self::forbidden(
                g,
                format!("do what needs the {} role", role.as_str()),
            )),
            _ => Ok(()),
        }
    }

    /// 403 unless the caller has `role` and may name `key`.
    pub fn need_key(&self, role: Role, key: &str) -> Result<(), ApiError> {
        self.need(role)?;
        match &self.0 {
            Some(g) if !g.key_allowed(key) => {
                Err(Self::forbidden(g, format!("touch the key {key:?}")))
            }
            _ => Ok(()),
        }
    }

    /// 403 unless the caller has `role` and every key under `prefix` is one it may name.
    pub fn need_prefix(&self, role: Role, prefix: &str) -> Result<(), ApiError> {
        self.need(role)?;
        match &self.0 {
            Some(g) if !g.key_allowed(prefix) => Err(Self::forbidden(
                g,
                format!("list the prefix {prefix:?} (its own prefixes must contain it)"),
            )),
            _ => Ok(()),
        }
    }
}

impl Grant {
    /// Whether `key` (or every key starting with it) lies under one of the token's prefixes.
    fn key_allowed(&self, key: &str) -> bool {
        match &self.prefixes {
            None => true,
            Some(ps) => ps.iter().any(|p| key.starts_with(p.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"{"tokens": [
        {"name": "ops", "token": "ops-0123456789abcdef", "role": "admin"},
        {"name": "app", "token": "app-0123456789abcdef", "role": "write", "prefixes": ["app/"]},
        {"name": "viewer", "token": "viewer-0123456789ab", "role": "read"}
    ]}"#;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            hyper::header::AUTHORIZATION,
            v.parse().expect("a valid header value"),
        );
        h
    }

    fn tokens(text: &str) -> (tempfile::TempDir, Tokens) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("auth.json");
        std::fs::write(&path, text).expect("written");
        let t = Tokens::load(&path).expect("a valid file");
        (dir, t)
    }

    #[test]
    fn roles_and_prefixes_decide() {
        let (_d, t) = tokens(FILE);
        let app = Caller(Some(
            t.authenticate(&headers("Bearer app-0123456789abcdef"))
                .expect("known"),
        ));
        assert!(app.need_key(Role::Write, "app/x").is_ok());
        assert!(app.need_key(Role::Read, "other/x").is_err());
        assert!(app.need_prefix(Role::Read, "app/orders/").is_ok());
        assert!(app.need_prefix(Role::Read, "").is_err(), "everything");
        assert!(
            app.need_prefix(Role::Read, "ap").is_err(),
            "wider than app/"
        );
        assert!(app.need(Role::Admin).is_err());
        let viewer = Caller(Some(
            t.authenticate(&headers("Bearer viewer-0123456789ab"))
                .expect("known"),
        ));
        assert!(viewer.need_key(Role::Read, "anything").is_ok());
        let err = viewer.need_key(Role::Write, "x").expect_err("read only");
        assert_eq!(err.code(), ErrorCode::Forbidden);
        assert!(Caller(None).need(Role::Admin).is_ok(), "auth off");
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_401() {
        let (_d, t) = tokens(FILE);
        for h in [
            HeaderMap::new(),
            headers("Basic b3BzOnNlY3JldA=="),
            headers("Bearer ops-0123456789abcdeX"),
            headers("Bearer "),
        ] {
            let e = t.authenticate(&h).expect_err("refused");
            assert_eq!(e.code(), ErrorCode::Unauthorized, "{h:?}");
        }
    }

    #[test]
    fn bad_files_are_refused_with_a_reason() {
        for (text, why) in [
            ("{", "JSON"),
            (r#"{"tokens": []}"#, "no tokens"),
            (
                r#"{"tokens": [{"name": "a", "token": "short", "role": "read"}]}"#,
                "16",
            ),
            (
                r#"{"tokens": [{"name": "a", "token": "0123456789abcdef", "role": "root"}]}"#,
                "role",
            ),
            (
                r#"{"tokens": [{"name": "a", "token": "0123456789abcdef", "role": "read", "prefixes": []}]}"#,
                "prefixes",
            ),
            (
                r#"{"tokens": [{"name": "a", "token": "0123456789abcdef", "role": "read"},
                               {"name": "b", "token": "0123456789abcdef", "role": "read"}]}"#,
                "repeats",
            ),
        ] {
            let e = parse_tokens(text).expect_err(text);
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn a_changed_file_is_reread_and_a_broken_one_keeps_the_old_tokens() {
        let (d, t) = tokens(FILE);
        let path = d.path().join("auth.json");
        assert!(t.reload_if_changed().is_none(), "unchanged");
        std::fs::write(
            &path,
            r#"{"tokens": [{"name": "new", "token": "new-0123456789abcdef", "role": "read"}]}"#,
        )
        .expect("written");
        assert!(matches!(t.reload_if_changed(), Some(Ok(1))));
        assert!(t
            .authenticate(&headers("Bearer ops-0123456789abcdef"))
            .is_err());
        assert!(t
            .authenticate(&headers("Bearer new-0123456789abcdef"))
            .is_ok());
        std::fs::write(&path, "{ broken").expect("written");
        assert!(matches!(t.reload_if_changed(), Some(Err(_))));
        assert!(t
            .authenticate(&headers("Bearer new-0123456789abcdef"))
            .is_ok());
        // A token of the same length, written at once (same size, likely the same mtime).
        std::fs::write(
            &path,
            r#"{"tokens": [{"name": "new", "token": "NEW-0123456789abcdef", "role": "read"}]}"#,
        )
        .expect("written");
        assert!(matches!(t.reload_if_changed(), Some(Ok(1))));
        assert!(t
            .authenticate(&headers("Bearer new-0123456789abcdef"))
            .is_err());
        assert!(
            t.authenticate(&headers("bearer NEW-0123456789abcdef"))
                .is_ok(),
            "the scheme in any case"
        );
    }
}
