//! [`ClientBuilder`]: how a [`Client`] is configured, and the endpoints it is given.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::client::{Client, Inner};
use crate::error::Error;
use crate::http::{HttpClient, HttpOptions};
use crate::types::{Consistency, Mode, ReadFrom, RetryPolicy};
use crate::TlsOptions;

/// Configures a [`Client`].
///
/// ```
/// # let cluster = keel_tests::Cluster::start(1);
/// # let endpoints = cluster.endpoints();
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// use keel_client::{Client, Consistency, Mode};
///
/// let client = Client::builder(endpoints)
///     .request_timeout(Duration::from_secs(3))
///     .default_mode(Mode::Sync)
///     .default_consistency(Consistency::Session)
///     .build()
///     .await?;
/// let put = client.put("k", "v").await?;
/// assert_eq!(put.acked, keel_client::Acked::All);
/// # Ok::<(), keel_client::Error>(())
/// # }).unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ClientBuilder {
    /// The members to start from.
    endpoints: Vec<String>,
    /// Timeout of one HTTP attempt.
    request_timeout: Duration,
    /// How often and how long to retry.
    retry: RetryPolicy,
    /// Mode of writes that do not say.
    mode: Mode,
    /// Consistency of reads that do not say.
    consistency: Consistency,
    /// Talk only to `endpoints`.
    pinned: bool,
    /// Which members serve reads.
    read_from: ReadFrom,
    /// Bearer token for nodes started with `--auth-file`.
    token: Option<String>,
    /// TLS settings for nodes started with `--tls-cert`.
    tls: Option<TlsOptions>,
}

impl ClientBuilder {
    /// The defaults of [`Client::new`].
    pub(crate) fn new(endpoints: Vec<String>) -> Self {
        ClientBuilder {
            endpoints,
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            mode: Mode::Semi,
            consistency: Consistency::Linearizable,
            pinned: false,
            read_from: ReadFrom::Any,
            token: None,
            tls: None,
        }
    }

    /// Timeout of one HTTP attempt (default 10 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Retry policy (default: 12 attempts, 50 ms doubling to 1 s, full jitter).
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }

    /// Mode of writes (default: the server's default, `semi`).
    pub fn default_mode(mut self, m: Mode) -> Self {
        self.mode = m;
        self
    }

    /// Consistency of reads (default `Linearizable`).
    pub fn default_consistency(mut self, c: Consistency) -> Self {
        self.consistency = c;
        self
    }

    /// Which members serve reads (default [`ReadFrom::Any`]).
    pub fn read_from(mut self, r: ReadFrom) -> Self {
        self.read_from = r;
        self
    }

    /// A bearer token sent with every request (for nodes started with `--auth-file`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Speaks https, checking the nodes' certificates (and presenting a client certificate)
    /// as `tls` says. Endpoints may then be given as `https://host:port`.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sends every request to the given endpoints only, never straight to the leader: the
    /// node forwards writes itself. For showing (or testing) a particular node's path, and for
    /// clusters whose advertised addresses are not reachable from the client.
    pub fn pin_to_endpoints(mut self, pinned: bool) -> Self {
        self.pinned = pinned;
        self
    }

    /// Builds the client and discovers the cluster. Fails only if no endpoint was given or one
    /// cannot be parsed; unreachable endpoints are retried on use.
    pub async fn build(self) -> Result<Client, Error> {
        let seeds: Vec<String> = self
            .endpoints
            .iter()
            .map(|e| normalize(e, self.tls.is_some()))
            .collect::<Result<_, _>>()?;
        if seeds.is_empty() {
            return Err(Error::InvalidEndpoint("no endpoint given".into()));
        }
        if let Some(t) = &self.token {
            // Else every request would fail to build, and look like a timeout.
            if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Error::InvalidToken(
                    "a token is visible ASCII, without spaces".into(),
                ));
            }
        }
        let http = HttpClient::new(HttpOptions {
            request_timeout: self.request_timeout,
            token: self.token.clone(),
            tls: self.tls.clone(),
            ..HttpOptions::default()
        });
        let client = Client {
            inner: Arc::new(Inner {
                http,
                members: RwLock::new(seeds.iter().map(|s| (0, s.clone())).collect()),
                seeds,
                leader: AtomicU64::new(0),
                session_index: AtomicU64::new(0),
                next_read: AtomicUsize::new(0),
                retry: self.retry,
                mode: self.mode,
                consistency: self.consistency,
                pinned: self.pinned,
                via_seeds: AtomicBool::new(false),
                read_from: self.read_from,
            }),
        };
        if !client.inner.pinned {
            client.refresh().await;
        }
        Ok(client)
    }
}

/// `host:port` of an endpoint given as `host:port`, `http://host:port` or (with TLS settings)
/// `https://host:port`.
pub(crate) fn normalize(endpoint: &str, tls: bool) -> Result<String, Error> {
    let e = endpoint.trim();
    let (e, https) = match (e.strip_prefix("http://"), e.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => (e, tls),
    };
    if https != tls {
        return Err(Error::InvalidEndpoint(if tls {
            format!("{endpoint:?}: the client speaks https (it has TLS settings)")
        } else {
            format!("{endpoint:?}: https needs TLS settings (a CA: ClientBuilder::tls, or --ca)")
        }));
    }
    let e = e.trim_end_matches('/');
    if e.is_empty() || e.contains('/') || !e.contains(':') {
        return Err(Error::InvalidEndpoint(format!(
            "{endpoint:?}: expected host:port or http(s)://host:port"
        )));
    }
    Ok(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_token_that_cannot_be_a_header_is_refused_at_build() {
        for bad in ["", "two words", "line\nbreak", "é-accent-0123456789"] {
            let r = Client::builder(["127.0.0.1:1"])
                .pin_to_endpoints(true)
                .token(bad)
                .build()
                .await;
            assert!(matches!(r, Err(Error::InvalidToken(_))), "{bad:?}");
        }
        let ok = Client::builder(["127.0.0.1:1"])
            .pin_to_endpoints(true)
            .token("ops-0123456789abcdef")
            .build()
            .await;
        assert!(ok.is_ok());
    }

    #[test]
    fn endpoints_say_their_scheme_and_it_must_match_the_tls_settings() {
        assert_eq!(normalize("http://a:1/", false).ok(), Some("a:1".into()));
        assert_eq!(normalize("a:1", true).ok(), Some("a:1".into()));
        assert_eq!(normalize("https://a:1", true).ok(), Some("a:1".into()));
        assert!(
            normalize("https://a:1", false).is_err(),
            "https without a CA"
        );
        assert!(
            normalize("http://a:1", true).is_err(),
            "http with TLS settings"
        );
        assert!(normalize("a", false).is_err());
    }
}
