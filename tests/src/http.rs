//! Blocking HTTP for the tests, over the one HTTP stack every keel tool shares
//! ([`keel_client::http`]). Test code runs on plain threads; requests run on a small tokio
//! runtime of the harness's own, so this works from any thread (inside an async test too).

use std::collections::HashMap;
use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use keel_client::http::{HttpClient, HttpOptions};

pub use keel_client::http::HttpError;

use crate::Resp;

/// The runtime that drives every request of the harness (its I/O and timers run on its two
/// worker threads; the calling thread only waits).
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("keel-tests-http")
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => panic!("cannot start the test harness's HTTP runtime: {e}"),
        }
    })
}

/// A blocking HTTP client with its own timeouts; cheap to clone.
#[derive(Clone, Debug)]
pub struct Http {
    /// keel's HTTP stack, driven by the harness's runtime.
    client: HttpClient,
}

impl Http {
    /// A client whose connections must open within `connect` and whose answers must arrive
    /// within `timeout`. With `KEEL_TEST_SECURE=1` it speaks https and presents the admin
    /// token ([`crate::secure`]).
    pub fn new(connect: Duration, timeout: Duration) -> Http {
        let secure = crate::secure::everywhere().then(crate::secure::Secure::get);
        Self::with(
            connect,
            timeout,
            secure.map(|s| s.token.as_str()),
            secure.map(|s| s.client_tls()),
        )
    }

    /// [`Http::new`], sending `token` as a bearer token with every request that does not carry
    /// its own `Authorization` (https with `KEEL_TEST_SECURE=1`).
    pub fn with_token(connect: Duration, timeout: Duration, token: Option<&str>) -> Http {
        let tls = crate::secure::everywhere().then(|| crate::secure::Secure::get().client_tls());
        Self::with(connect, timeout, token, tls)
    }

    /// A client with exactly these settings: a bearer token, and TLS (https) or not.
    pub fn with(
        connect: Duration,
        timeout: Duration,
        token: Option<&str>,
        tls: Option<keel_client::TlsOptions>,
    ) -> Http {
        Http {
            client: HttpClient::new(HttpOptions {
                connect_timeout: connect,
                request_timeout: timeout,
                token: token.map(str::to_string),
                tls,
                ..HttpOptions::default()
            }),
        }
    }

    /// Sends one request to `addr` (host:port) and waits for the whole answer. Err only when
    /// there is no answer ([`HttpError::certainly_not_sent`] tells a refused connection).
    pub fn send(
        &self,
        addr: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<Resp, HttpError> {
        let body = body.map_or_else(Bytes::new, Bytes::copy_from_slice);
        let fut = self.client.request(addr, method, path, headers, body);
        let _guard = runtime().enter();
        let resp = futures::executor::block_on(fut)?;
        let headers: HashMap<String, String> = resp
            .headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        Ok(Resp {
            status: resp.status,
            headers,
            body: resp.body.to_vec(),
        })
    }

    /// The HTTP stack underneath (for streams: call it inside [`runtime`]).
    pub fn raw(&self) -> &HttpClient {
        &self.client
    }

    /// `GET path` on `addr` as JSON, when it answers 200 with JSON.
    pub fn get_json(&self, addr: &str, path: &str) -> Option<serde_json::Value> {
        let r = self.send(addr, "GET", path, &[], None).ok()?;
        if r.status != 200 {
            return None;
        }
        serde_json::from_slice(&r.body).ok()
    }
}
