//! The outbound side: one task per peer that connects, reconnects, batches and writes.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use prost::Message as _;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::PeerEvents;
use super::{BACKOFF_MAX, BACKOFF_MIN, MAX_BATCH_BYTES};
use crate::proto::{frame::Body, Frame};

fn encode_into(buf: &mut BytesMut, frame: &Frame) {
    let len = frame.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    // Encoding into a buffer with reserved capacity cannot fail.
    let _ = frame.encode(buf);
}

/// Owns the connection to one peer: connects, reconnects, batches and writes.
pub(super) async fn peer_writer(
    peer: u64,
    addr: String,
    hello: Frame,
    mut rx: mpsc::Receiver<Body>,
    events: Arc<dyn PeerEvents>,
) {
    let mut backoff = BACKOFF_MIN;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let mut stream = match TcpStream::connect(addr.as_str()).await {
            Ok(s) => s,
            Err(e) => {
                debug!(peer, %addr, error = %e, "cannot connect to peer");
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
        let _ = stream.set_nodelay(true);
        buf.clear();
        encode_into(&mut buf, &hello);
        if stream.write_all(&buf).await.is_err() {
            continue;
        }
        backoff = BACKOFF_MIN;
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
            if let Err(e) = stream.write_all(&buf).await {
                warn!(peer, error = %e, "peer connection lost");
                events.unreachable(peer);
                break;
            }
        }
    }
}
