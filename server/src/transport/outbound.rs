//! The outbound side: one task per peer that connects, reconnects, batches and writes.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use prost::Message as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};

use super::PeerEvents;
use super::{BACKOFF_MAX, BACKOFF_MIN, HELLO_DEADLINE, MAX_BATCH_BYTES};
use crate::proto::{frame::Body, Frame};
use crate::tls::{self, Tls};

fn encode_into(buf: &mut BytesMut, frame: &Frame) {
    let len = frame.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    // Encoding into a buffer with reserved capacity cannot fail.
    let _ = frame.encode(buf);
}

/// An outbound connection: plain TCP or TLS over it.
type PeerStream = Box<dyn AsyncWrite + Send + Unpin>;

/// Why a peer could not be dialed.
enum DialError {
    /// No TCP connection.
    Connect(std::io::Error),
    /// The TLS handshake failed (a wrong certificate on either side, say).
    Tls(String),
}

/// Connects to `peer` at `addr`; with TLS, only to a server whose certificate names `peer`.
async fn dial(peer: u64, addr: &str, tls: Option<&Tls>) -> Result<PeerStream, DialError> {
    let tcp = TcpStream::connect(addr).await.map_err(DialError::Connect)?;
    let _ = tcp.set_nodelay(true);
    let Some(tls) = tls else {
        return Ok(Box::new(tcp));
    };
    let name = ServerName::try_from(tls::member_name(peer))
        .map_err(|e| DialError::Tls(format!("bad member name: {e}")))?;
    let connector = TlsConnector::from(tls.current().peer_dial.clone());
    match tokio::time::timeout(HELLO_DEADLINE, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(DialError::Tls(e.to_string())),
        Err(_) => Err(DialError::Tls(format!(
            "no handshake within {HELLO_DEADLINE:?}"
        ))),
    }
}

/// Writes `buf` and pushes it out (TLS buffers records until flushed).
async fn write(stream: &mut PeerStream, buf: &[u8]) -> std::io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await
}

/// Owns the connection to one peer: connects, reconnects, batches and writes.
pub(super) async fn peer_writer(
    peer: u64,
    addr: String,
    hello: Frame,
    mut rx: mpsc::Receiver<Body>,
    events: Arc<dyn PeerEvents>,
    tls: Option<Arc<Tls>>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let mut stream = match dial(peer, &addr, tls.as_deref()).await {
            Ok(s) => s,
            Err(e) => {
                match e {
                    DialError::Connect(e) => {
                        debug!(peer, %addr, error = %e, "cannot connect to peer")
                    }
                    DialError::Tls(e) => {
                        warn!(peer, %addr, error = %e, "peer TLS handshake failed")
                    }
                }
                // Drop what queued up meanwhile: it is stale, and Raft will retry.
                let mut dropped = false;
                loop {
                    match rx.try_recv() {
                        Ok(_) => dropped = true,
                        Err(mpsc::error::TryRecvError::Empty) => break,
                        Err(mpsc::error::TryRecvError::Disconnected) => return,
                    }
                }
                if dropped && !events.unreachable(peer) {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let connected_at = tokio::time::Instant::now();
        let generation = tls.as_ref().map(|t| t.generation());
        buf.clear();
        encode_into(&mut buf, &hello);
        if write(&mut stream, &buf).await.is_ok() {
            info!(peer, %addr, "connected to peer");
            loop {
                let Some(first) = rx.recv().await else {
                    return;
                };
                buf.clear();
                encode_into(&mut buf, &Frame { body: Some(first) });
                while buf.len() < MAX_BATCH_BYTES {
                    match rx.try_recv() {
                        Ok(body) => encode_into(&mut buf, &Frame { body: Some(body) }),
                        Err(_) => break,
                    }
                }
                if let Err(e) = write(&mut stream, &buf).await {
                    warn!(peer, error = %e, "peer connection lost");
                    events.unreachable(peer);
                    break;
                }
                if tls.as_ref().map(|t| t.generation()) != generation {
                    // New certificates: a new session, so that a replaced (or leaked) identity
                    // stops being used on either side.
                    info!(peer, "TLS files changed: reconnecting with them");
                    break;
                }
            }
        }
        // A connection that ended at once (with TLS 1.3, a peer that refused our certificate
        // lets the handshake finish and closes on the first write) is a failed dial: back off.
        if connected_at.elapsed() < BACKOFF_MAX {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        } else {
            backoff = BACKOFF_MIN;
        }
    }
}
