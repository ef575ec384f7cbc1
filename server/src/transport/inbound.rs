//! The inbound side: accepting peer connections, checking the Hello, and handing frames on.

use std::sync::Arc;

use futures::StreamExt;
use prost::Message as _;
use rustls::pki_types::CertificateDer;
use tokio::io::AsyncRead;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::{debug, error, info, warn};

use super::admission::{Admission, Pending};
use super::decode::{decode_after_hello, Decoded};
use super::{
    Inbound, Transport, BACKOFF_MIN, HELLO_DEADLINE, MAX_FRAME_BYTES, MAX_HELLO_BYTES,
    MAX_INBOUND_CONNECTIONS,
};
use crate::proto::{frame::Body, Frame};
use crate::tls;

impl Transport {
    /// Accepts peer connections on `listener` until the task is dropped.
    pub async fn serve_inbound(self, listener: TcpListener, handler: Arc<dyn Inbound>) {
        let admission = Admission::new(MAX_INBOUND_CONNECTIONS);
        loop {
            let (stream, remote) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(BACKOFF_MIN).await;
                    continue;
                }
            };
            let Some(pending) = admission.admit(remote.ip()) else {
                debug!(%remote, "too many peer connections not yet identified; closing");
                continue;
            };
            let this = self.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                if let Err(reason) = this.read_connection(stream, pending, handler).await {
                    debug!(%remote, %reason, "peer connection closed");
                }
            });
        }
    }

    async fn read_connection(
        &self,
        stream: TcpStream,
        pending: Pending,
        handler: Arc<dyn Inbound>,
    ) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        // The handshake and the Hello share one deadline.
        let deadline = tokio::time::Instant::now() + HELLO_DEADLINE;
        let Some(tls) = &self.inner.tls else {
            return self
                .read_frames(stream, None, deadline, pending, handler)
                .await;
        };
        let acceptor = TlsAcceptor::from(tls.current().peer_accept.clone());
        let stream = match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Err(_) => return Err(format!("no TLS handshake within {HELLO_DEADLINE:?}")),
            Ok(Err(e)) => {
                warn!(error = %e, "peer TLS handshake refused");
                return Err(format!("TLS handshake failed: {e}"));
            }
            Ok(Ok(s)) => s,
        };
        // The handshake required a certificate from the CA: it is there.
        let cert = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned());
        if cert.is_none() {
            return Err("no client certificate".into());
        }
        self.read_frames(stream, cert, deadline, pending, handler)
            .await
    }

    /// Reads the Hello, then frames until the connection ends. `cert` is the peer's certificate
    /// when the port speaks TLS (the Hello must claim the member it names).
    async fn read_frames<S: AsyncRead + Unpin>(
        &self,
        stream: S,
        cert: Option<CertificateDer<'static>>,
        deadline: tokio::time::Instant,
        pending: Pending,
        handler: Arc<dyn Inbound>,
    ) -> Result<(), String> {
        // Until the Hello: a small frame, soon.
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_HELLO_BYTES)
            .new_codec();
        let mut frames = FramedRead::new(stream, codec);
        let first = match tokio::time::timeout_at(deadline, frames.next()).await {
            Err(_) => return Err(format!("no Hello within {HELLO_DEADLINE:?}")),
            Ok(Some(Ok(bytes))) => bytes,
            Ok(Some(Err(e))) => return Err(format!("bad first frame: {e}")),
            Ok(None) => return Ok(()),
        };
        // Without TLS any member id is believed; with it, only the one the certificate names.
        let vouched = |id: u64| match (&self.inner.tls, &cert) {
            (None, _) => true,
            (Some(_), Some(c)) => {
                let ok = tls::names_member(c, id)
                    || crate::planted::active(crate::planted::Bug::TrustHello);
                if !ok {
                    warn!(
                        claimed = id,
                        "peer Hello claims a member its certificate does not name: refused"
                    );
                }
                ok
            }
            (Some(_), None) => false,
        };
        let from = match Frame::decode(first) {
            Ok(Frame {
                body: Some(Body::Hello(h)),
            }) if h.from != self.inner.id && h.from != 0 && vouched(h.from) => {
                // An id this node does not know is let in too (with TLS, only as its
                // certificate names it): a member added while this node was cut off is the
                // only one that can bring it up to date, and refusing it stranded this node
                // for good (the fault suite: isolated during a join and the old leader's
                // removal, it refused the new leader's every connection).
                if !self.is_member(h.from) {
                    // It can only be answered on a connection of this node's own: dial it
                    // back at the address it gives (with TLS, checked to be the member its
                    // certificate names). The address book replaces this once it names it.
                    if h.peer_addr.is_empty() || !self.add_unknown_peer(h.from, h.peer_addr.clone())
                    {
                        warn!(
                            peer = h.from,
                            "a node not in the address book cannot be answered (no address, or \
                             too many such nodes already): refused"
                        );
                        return Err(format!("{} is not in the address book", h.from));
                    }
                    info!(
                        peer = h.from,
                        addr = %h.peer_addr,
                        "a node this node does not know yet connected (a member added while \
                         it was away, presumably): answering it at its address"
                    );
                }
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
            Ok(_) => return Err("first frame is not a Hello from another node".into()),
            Err(e) => return Err(format!("undecodable first frame: {e}")),
        };
        let Some(_slot) = pending.promote() else {
            warn!(
                peer = from,
                "every member slot of the peer port is taken; closing"
            );
            return Err("no member slot".into());
        };
        frames.decoder_mut().set_max_frame_length(MAX_FRAME_BYTES);
        info!(peer = from, "peer connected");
        let generation = self.inner.tls.as_ref().map(|t| t.generation());
        // Closed once a peer known as a member stops being one (it was removed).
        let mut was_member = false;
        while let Some(next) = frames.next().await {
            if self.is_member(from) {
                was_member = true;
            } else if was_member {
                return Err(format!("{from} is no longer a member"));
            }
            let bytes = next.map_err(|e| format!("bad frame from {from}: {e}"))?;
            match decode_after_hello(&bytes, from, self.inner.id)? {
                Decoded::Raft(msg) => {
                    if !self.inner.events.raft_message(msg) {
                        return Ok(());
                    }
                }
                Decoded::Other(body) => {
                    if let Some(work) = handler.on_frame(from, body) {
                        // The link goes on; a stream whose frame was lost is abandoned by the
                        // handler (a snapshot's chunks carry sequence numbers).
                        if let Err(e) = work.await {
                            error!(peer = from, error = %e, "a peer frame's work failed");
                        }
                    }
                }
            }
            if self.inner.tls.as_ref().map(|t| t.generation()) != generation {
                // New certificates: the peer must present its certificate again to the new
                // CA (a rotated-out identity stops here).
                return Err("TLS files changed: the peer must reconnect".into());
            }
        }
        Ok(())
    }
}
