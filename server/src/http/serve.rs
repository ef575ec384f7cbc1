//! The connections of the client port: accepting them (at most `--max-connections`), the TLS
//! handshake when the port speaks TLS, and hyper's HTTP/1.1 with its header and idle timeout.
//! A plain HTTP request sent to a TLS port is answered in plain text with 400 `tls_required`
//! (as nginx does), so that a client configured without TLS learns why instead of seeing a
//! closed connection.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use keel_api::ErrorCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::{Api, HEADER_TIMEOUT};
use crate::tls::Tls;

/// The first byte of a TLS connection (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves HTTP (or HTTPS, with `tls`) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    api: Arc<Api>,
    tls: Option<Arc<Tls>>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let limit = Arc::new(Semaphore::new(api.cfg.max_connections));
    crate::metrics::metrics()
        .connections_max
        .set(i64::try_from(api.cfg.max_connections).unwrap_or(i64::MAX));
    let mut last_refusal_logged: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            // Counted every time, logged at most once a second: a flood of connections must not
            // become a flood of log lines.
            crate::metrics::metrics().connections_refused.inc();
            if last_refusal_logged.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(1)) {
                last_refusal_logged = Some(Instant::now());
                warn!(%remote, "too many client connections; closing (keel_http_connections_refused_total counts them)");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let api = api.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                None => serve_connection(stream, api).await,
                Some(tls) => {
                    match tokio::time::timeout(HEADER_TIMEOUT, handshake(stream, &tls)).await {
                        Ok(Ok(Some(s))) => serve_connection(s, api).await,
                        Ok(Ok(None)) => Ok(()),
                        Ok(Err(e)) => Err(e),
                        Err(_) => Err("no TLS handshake in time".into()),
                    }
                }
            };
            if let Err(e) = result {
                debug!(%remote, error = %e, "http connection ended with an error");
            }
        });
    }
}

/// The TLS side of a new connection; None when it was plain HTTP (answered and closed).
async fn handshake(
    mut stream: TcpStream,
    tls: &Tls,
) -> Result<Option<tokio_rustls::server::TlsStream<TcpStream>>, String> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await.map_err(|e| e.to_string())?;
    if n == 0 {
        return Ok(None);
    }
    if first[0] != TLS_HANDSHAKE {
        if first[0].is_ascii_uppercase() {
            let body = serde_json::json!({"error": {
                "code": ErrorCode::TlsRequired.as_str(),
                "message": "this port speaks TLS: use https",
            }})
            .to_string();
            let answer = format!(
                "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            let _ = stream.shutdown().await;
            // Read what the client sent before closing (a close with unread data is a reset,
            // which can destroy the answer before the client reads it); briefly, and bounded.
            let mut sink = [0u8; 4096];
            let drain = async {
                let mut left = 64 * 1024usize;
                while left > 0 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), drain).await;
        }
        return Ok(None);
    }
    let acceptor = TlsAcceptor::from(tls.current().http.clone());
    acceptor
        .accept(stream)
        .await
        .map(Some)
        .map_err(|e| format!("TLS handshake failed: {e}"))
}

/// HTTP/1.1 on one connection until it closes.
async fn serve_connection<S>(io: S, api: Arc<Api>) -> Result<(), String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let api = api.clone();
        async move { Ok::<_, Infallible>(api.handle(req).await) }
    });
    http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(io), service)
        .await
        .map_err(|e| e.to_string())
}
