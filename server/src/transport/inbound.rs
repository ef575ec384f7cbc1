//! The inbound side: accepting peer connections, checking the Hello, and handing frames on.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::{debug, info, warn};

use super::{
    Inbound, Transport, BACKOFF_MIN, HELLO_DEADLINE, MAX_FRAME_BYTES, MAX_HELLO_BYTES,
    MAX_INBOUND_CONNECTIONS,
};
use crate::proto::{frame::Body, Frame};

impl Transport {
    /// Accepts peer connections on `listener` until the task is dropped.
    pub async fn serve_inbound(self, listener: TcpListener, handler: Arc<dyn Inbound>) {
        let limit = Arc::new(Semaphore::new(MAX_INBOUND_CONNECTIONS));
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                warn!(%remote, "too many peer connections; closing");
                continue;
            };
            let this = self.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(reason) = this.read_connection(stream, handler).await {
                    debug!(%remote, %reason, "peer connection closed");
                }
            });
        }
    }

    async fn read_connection(
        &self,
        stream: TcpStream,
        handler: Arc<dyn Inbound>,
    ) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        // Until the Hello: a small frame, soon.
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_HELLO_BYTES)
            .new_codec();
        let mut frames = FramedRead::new(stream, codec);
        let first = match tokio::time::timeout(HELLO_DEADLINE, frames.next()).await {
            Err(_) => return Err(format!("no Hello within {HELLO_DEADLINE:?}")),
            Ok(Some(Ok(bytes))) => bytes,
            Ok(Some(Err(e))) => return Err(format!("bad first frame: {e}")),
            Ok(None) => return Ok(()),
        };
        let from = match Frame::decode(first) {
            Ok(Frame {
                body: Some(Body::Hello(h)),
            }) if h.from != self.inner.id && self.is_member(h.from) => {
                self.record_peer_http(h.from, h.http_addr);
                let previous = self
                    .inner
                    .peer_incarnation
                    .write()
                    .ok()
                    .and_then(|mut m| m.insert(h.from, h.incarnation));
                if previous.is_some_and(|p| p != h.incarnation) {
                    warn!(
                        peer = h.from,
                        "peer came back with new data (wiped): resetting its progress; it has \
                         forgotten its term and vote too, so replace it under a new id \
                         (docs/operations.md)"
                    );
                    self.inner.events.peer_wiped(h.from);
                }
                h.from
            }
            Ok(_) => return Err("first frame is not a Hello from a member".into()),
            Err(e) => return Err(format!("undecodable first frame: {e}")),
        };
        frames.decoder_mut().set_max_frame_length(MAX_FRAME_BYTES);
        info!(peer = from, "peer connected");
        while let Some(next) = frames.next().await {
            if !self.is_member(from) {
                return Err(format!("{from} is no longer a member"));
            }
            let bytes = next.map_err(|e| format!("bad frame from {from}: {e}"))?;
            let frame =
                Frame::decode(bytes).map_err(|e| format!("undecodable frame from {from}: {e}"))?;
            match frame.body {
                Some(Body::Hello(_)) | None => {
                    return Err(format!("unexpected frame from {from}"));
                }
                Some(Body::Raft(raw)) => {
                    let msg = Message::parse_from_bytes(&raw)
                        .map_err(|e| format!("undecodable raft message from {from}: {e}"))?;
                    if msg.to != self.inner.id || msg.from != from {
                        return Err(format!(
                            "raft message {}→{} on the connection from {from}",
                            msg.from, msg.to
                        ));
                    }
                    if !self.inner.events.raft_message(msg) {
                        return Ok(());
                    }
                }
                Some(body) => handler.on_frame(from, body),
            }
        }
        Ok(())
    }
}
