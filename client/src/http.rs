//! One small HTTP/1.1 client on hyper, for everything that talks to a keel node: this library,
//! the `keel` command line, the local cluster launcher, the load generator and the test harness.
//! It sends one request and returns the status, headers and whole body; it knows nothing of keel
//! (no retries, no routing): [`crate::Client`] builds those on top.
//!
//! ```
//! # let mut cluster = keel_tests::Cluster::start(1);
//! # cluster.wait_for_leader();
//! # let endpoint = cluster.endpoints()[0].clone();
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use keel_client::http::{HttpClient, HttpOptions};
//!
//! let http = HttpClient::new(HttpOptions::default());
//! let resp = http.request(&endpoint, "GET", "/health", &[], bytes::Bytes::new()).await?;
//! assert_eq!(resp.status, 200);
//! # Ok::<(), keel_client::http::HttpError>(())
//! # }).unwrap();
//! ```

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::refusal::{refusal_of, WatchingConnector};

/// Settings of an [`HttpClient`].
#[derive(Clone, Debug)]
pub struct HttpOptions {
    /// Longest wait for a TCP connection.
    pub connect_timeout: Duration,
    /// Longest wait for a whole answer (headers and body), connection included.
    pub request_timeout: Duration,
    /// Idle keep-alive connections kept per host.
    pub max_idle_per_host: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// A bearer token sent with every request (`Authorization: Bearer ...`), for nodes started
    /// with `--auth-file`.
    pub token: Option<String>,
    /// TLS settings: with them every request is https (for nodes started with `--tls-cert`).
    pub tls: Option<crate::TlsOptions>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            max_idle_per_host: 64,
            // Below the server's 10 s idle close, so that a pooled connection is not reused just
            // as the server closes it.
            idle_timeout: Duration::from_secs(5),
            token: None,
            tls: None,
        }
    }
}

/// Why a request got no answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// The request could not be built (bad address, method or header).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No connection could be made: the request certainly did not reach the server.
    #[error("cannot connect to {addr}: {message}")]
    Connect {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// The node refused the TLS session (its check of this client's certificate): it never read
    /// the request. Retrying will not help until the client's TLS settings change.
    #[error("{addr} refused the TLS session ({alert}): does it need a client certificate from its CA (--cert, --key)?")]
    TlsRefused {
        /// The address.
        addr: String,
        /// The alert it sent.
        alert: String,
    },
    /// The connection failed after the request may have been sent.
    #[error("request to {addr} failed: {message}")]
    Transport {
        /// The address.
        addr: String,
        /// Why.
        message: String,
    },
    /// No whole answer within the request timeout (the request may have been sent).
    #[error("no answer from {addr} within {timeout:?}")]
    Timeout {
        /// The address.
        addr: String,
        /// The timeout.
        timeout: Duration,
    },
}

impl HttpError {
    /// Whether the request certainly never reached the server.
    pub fn certainly_not_sent(&self) -> bool {
        matches!(
            self,
            HttpError::InvalidRequest(_) | HttpError::Connect { .. } | HttpError::TlsRefused { .. }
        )
    }
}

/// A whole answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status code.
    pub status: u16,
    /// The headers (names are lower case).
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl RawResponse {
    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// hyper's pooled client (keep-alive connections per host), over TCP or TLS.
#[derive(Clone, Debug)]
enum Pool {
    /// http.
    Plain(hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>),
    /// https.
    Tls(
        hyper_util::client::legacy::Client<
            WatchingConnector<HttpsConnector<HttpConnector>>,
            Full<Bytes>,
        >,
    ),
}

/// A keep-alive HTTP/1.1 client; cheap to clone (clones share connections).
#[derive(Clone, Debug)]
pub struct HttpClient {
    /// hyper's pooled client.
    client: Pool,
    /// `https` with TLS settings, else `http`.
    scheme: &'static str,
    /// Longest wait for a whole answer.
    request_timeout: Duration,
    /// `Authorization` sent with every request, when a token was given.
    authorization: Option<String>,
}

impl HttpClient {
    /// A client with `opts`. Requests must be made inside a tokio runtime.
    pub fn new(opts: HttpOptions) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(opts.connect_timeout));
        let mut builder = hyper_util::client::legacy::Client::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(opts.max_idle_per_host)
            .pool_idle_timeout(opts.idle_timeout);
        let client = match &opts.tls {
            None => Pool::Plain(builder.build(connector)),
            Some(tls) => {
                connector.enforce_http(false);
                let https = HttpsConnectorBuilder::new()
                    .with_tls_config((*tls.config).clone())
                    .https_only()
                    .enable_http1()
                    .wrap_connector(connector);
                Pool::Tls(builder.build(WatchingConnector(https)))
            }
        };
        HttpClient {
            client,
            scheme: if opts.tls.is_some() { "https" } else { "http" },
            request_timeout: opts.request_timeout,
            authorization: opts.token.map(|t| format!("Bearer {t}")),
        }
    }

    /// The longest wait for a whole answer.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends `GET path` to `addr` and returns the status and headers as soon as they arrive,
    /// with the body to read as it comes ([`StreamingResponse::chunk`]): for a watch.
    pub async fn stream(
        &self,
        addr: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<StreamingResponse, HttpError> {
        let req = self.build(addr, "GET", path, headers, Bytes::new())?;
        let resp = match tokio::time::timeout(self.request_timeout, self.send(addr, req)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(HttpError::Timeout {
                    addr: addr.to_string(),
                    timeout: self.request_timeout,
                })
            }
        };
        let (parts, body) = resp.into_parts();
        Ok(StreamingResponse {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body,
            addr: addr.to_string(),
        })
    }

    fn build(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Request<Full<Bytes>>, HttpError> {
        let method = Method::from_bytes(method.as_bytes())
            .map_err(|e| HttpError::InvalidRequest(format!("method {method:?}: {e}")))?;
        let mut req = Request::builder()
            .method(method)
            .uri(format!("{}://{addr}{path}", self.scheme));
        if let Some(a) = &self.authorization {
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            {
                req = req.header("authorization", a.as_str());
            }
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(body))
            .map_err(|e| HttpError::InvalidRequest(e.to_string()))
    }

    async fn send(
        &self,
        addr: &str,
        req: Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Incoming>, HttpError> {
        let sent = match &self.client {
            Pool::Plain(c) => c.request(req),
            Pool::Tls(c) => c.request(req),
        };
        sent.await.map_err(|e| {
            let message = error_chain(&e);
            if let Some(alert) = refusal_of(&e) {
                // With TLS 1.3 the client sends its request before the server has checked its
                // certificate; a server that refuses the certificate answers with an alert and
                // never reads the request (crate::refusal says how the alert is found).
                return HttpError::TlsRefused {
                    addr: addr.to_string(),
                    alert: format!("{alert:?}"),
                };
            }
            if e.is_connect() {
                HttpError::Connect {
                    addr: addr.to_string(),
                    message,
                }
            } else {
                HttpError::Transport {
                    addr: addr.to_string(),
                    message,
                }
            }
        })
    }

    /// Sends `method path` (path and query) to `addr` (host:port) with `headers` and `body`,
    /// and reads the whole answer.
    pub async fn request(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<RawResponse, HttpError> {
        let req = self.build(addr, method, path, headers, body)?;
        let exchange = async {
            let resp = self.send(addr, req).await?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| HttpError::Transport {
                    addr: addr.to_string(),
                    message: e.to_string(),
                })?
                .to_bytes();
            Ok(RawResponse {
                status: parts.status.as_u16(),
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout {
                addr: addr.to_string(),
                timeout: self.request_timeout,
            }),
        }
    }
}

/// An answer whose body is read as it arrives.
#[derive(Debug)]
pub struct StreamingResponse {
    /// The status code.
    pub status: u16,
    /// The headers (names are lower case).
    pub headers: HeaderMap,
    body: Incoming,
    addr: String,
}

impl StreamingResponse {
    /// A header as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next piece of the body, waiting at most `idle` for it; None at the body's end.
    pub async fn chunk(&mut self, idle: Duration) -> Result<Option<Bytes>, HttpError> {
        // Bounded: trailers and empty frames are skipped, a few at most.
        for _ in 0..64 {
            let frame = match tokio::time::timeout(idle, self.body.frame()).await {
                Err(_) => {
                    return Err(HttpError::Timeout {
                        addr: self.addr.clone(),
                        timeout: idle,
                    })
                }
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => {
                    return Err(HttpError::Transport {
                        addr: self.addr.clone(),
                        message: error_chain(&e),
                    })
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                if !data.is_empty() {
                    return Ok(Some(data));
                }
            }
        }
        Ok(Some(Bytes::new()))
    }

    /// Reads the rest of the body whole (an error answer), waiting at most `timeout`.
    pub async fn collect(self, timeout: Duration) -> Result<Bytes, HttpError> {
        let addr = self.addr.clone();
        match tokio::time::timeout(timeout, self.body.collect()).await {
            Ok(Ok(b)) => Ok(b.to_bytes()),
            Ok(Err(e)) => Err(HttpError::Transport {
                addr,
                message: e.to_string(),
            }),
            Err(_) => Err(HttpError::Timeout { addr, timeout }),
        }
    }
}

/// An error with its sources, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn client(timeout: Duration) -> HttpClient {
        HttpClient::new(HttpOptions {
            connect_timeout: timeout,
            request_timeout: timeout,
            ..HttpOptions::default()
        })
    }

    /// What the test harness relies on to tell "certainly not applied" from "unknown": only a
    /// connection that could not be made is certainly not sent.
    #[tokio::test]
    async fn failures_are_classified_by_whether_the_request_may_have_arrived() {
        let http = client(Duration::from_millis(500));

        // Nothing listens: the request never left.
        let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = closed.local_addr().expect("addr").to_string();
        drop(closed);
        let err = http
            .request(&addr, "PUT", "/v1/kv/k", &[], Bytes::from_static(b"v"))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, HttpError::Connect { .. }), "{err:?}");
        assert!(err.certainly_not_sent());

        // The server reads the request and hangs up without answering: it may have acted.
        let rude = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = rude.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut s, _)) = rude.accept().await else {
                    return;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                drop(s);
            }
        });
        let err = http
            .request(&addr, "PUT", "/v1/kv/k", &[], Bytes::from_static(b"v"))
            .await
            .expect_err("no answer");
        assert!(!err.certainly_not_sent(), "{err:?}");
        server.abort();

        // The server accepts and never answers: a timeout, also not certainly unsent.
        let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = silent.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..4 {
                let Ok((s, _)) = silent.accept().await else {
                    return;
                };
                held.push(s);
            }
        });
        let err = http
            .request(&addr, "GET", "/health", &[], Bytes::new())
            .await
            .expect_err("no answer");
        assert!(matches!(err, HttpError::Timeout { .. }), "{err:?}");
        assert!(!err.certainly_not_sent());
        server.abort();
    }

    #[tokio::test]
    async fn a_whole_answer_comes_back_with_status_headers_and_body() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\nX-Keel-Node: 2\r\nContent-Length: 4\r\n\r\nnope",
                )
                .await;
        });
        let resp = client(Duration::from_secs(5))
            .request(&addr, "GET", "/v1/kv/x", &[("accept", "*/*")], Bytes::new())
            .await
            .expect("an answer");
        assert_eq!(resp.status, 404);
        assert_eq!(resp.header("x-keel-node"), Some("2"));
        assert_eq!(&resp.body[..], b"nope");
        let err = client(Duration::from_secs(5))
            .request(&addr, "NOT A METHOD", "/", &[], Bytes::new())
            .await
            .expect_err("invalid");
        assert!(matches!(err, HttpError::InvalidRequest(_)));
        server.abort();
    }
}
