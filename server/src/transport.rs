//! The peer transport: persistent TCP connections between nodes carrying length-delimited
//! prost [`Frame`]s.
//!
//! Each node dials every peer once and keeps that connection for its outbound traffic; inbound
//! connections are only read. A reply (a forwarded write's answer) therefore travels on the
//! answering node's own outbound connection. This keeps each connection one-directional and
//! each peer's outbound frames in one ordered queue.
//!
//! # Outbound
//! One task per peer owns a bounded queue. It connects (with exponential backoff), sends a
//! [`Hello`], then writes frames: it takes everything already queued (up to
//! [`MAX_BATCH_BYTES`]) and writes it with one `write_all`, so messages that queue up share a
//! system call and a TCP segment. While a peer cannot be reached, frames are dropped and the
//! Raft loop is told ([`Event::Unreachable`]); Raft retransmits what matters.
//!
//! # Inbound
//! The listener accepts at most [`MAX_INBOUND_CONNECTIONS`] connections. The first frame must be
//! a [`Hello`] from a configured member other than this node; any undecodable or oversized frame
//! closes the connection. Garbage on the peer port can therefore never reach Raft.

use std::collections::HashMap;
use std::sync::mpsc::Sender as StdSender;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::Message;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};
use tracing::{debug, info, warn};

use crate::proto::{frame::Body, AppliedReport, Frame, Hello};
use crate::raft_node::{Event, Outbox};
use crate::state_machine::{StateMachine, SNAPSHOT_CHUNK_BYTES};
use raft::eraftpb::MessageType;

/// Largest frame accepted on the peer port.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Frames queued per peer before new ones are dropped.
pub const PEER_QUEUE_FRAMES: usize = 8192;
/// Bytes gathered into one write.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Concurrent inbound peer connections.
pub const MAX_INBOUND_CONNECTIONS: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// What the transport does with frames that arrive.
pub trait Inbound: Send + Sync + 'static {
    /// Handles one frame from peer `from` (never a Hello).
    fn on_frame(&self, from: u64, body: Body);
}

/// Errors starting the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The peer listener could not bind.
    #[error("cannot listen for peers on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// Handle to the outbound side; cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    id: u64,
    /// This node's Hello, sent first on every connection.
    hello: Frame,
    /// One outbound queue (and writer task) per peer; changes with membership.
    queues: RwLock<HashMap<u64, mpsc::Sender<Body>>>,
    /// Members allowed to connect to us (ids), with their peer addresses.
    members: RwLock<HashMap<u64, String>>,
    node_tx: StdSender<Event>,
    /// Source of snapshot data, streamed to followers that need it.
    sm: StateMachine,
    /// The runtime, for work started from the Raft thread.
    runtime: tokio::runtime::Handle,
    /// Client addresses of peers, learned from their Hello.
    peer_http: RwLock<HashMap<u64, String>>,
    /// Data incarnations of peers, learned from their Hello.
    peer_incarnation: RwLock<HashMap<u64, u64>>,
}

impl Transport {
    /// Starts one writer task per peer (all members but `id`). Must be called inside a runtime.
    pub fn start(
        id: u64,
        http_addr: String,
        incarnation: u64,
        members: &HashMap<u64, String>,
        node_tx: StdSender<Event>,
        sm: StateMachine,
    ) -> Transport {
        let hello = Frame {
            body: Some(Body::Hello(Hello {
                from: id,
                http_addr,
                incarnation,
            })),
        };
        let t = Transport {
            inner: Arc::new(Inner {
                id,
                hello,
                queues: RwLock::new(HashMap::new()),
                members: RwLock::new(HashMap::new()),
                node_tx,
                sm,
                runtime: tokio::runtime::Handle::current(),
                peer_http: RwLock::new(HashMap::new()),
                peer_incarnation: RwLock::new(HashMap::new()),
            }),
        };
        for (&peer, addr) in members {
            t.add_peer(peer, addr.clone());
        }
        t
    }

    /// Starts talking to a peer (or updates its address).
    pub fn add_peer(&self, peer: u64, addr: String) {
        if let Ok(mut m) = self.inner.members.write() {
            m.insert(peer, addr.clone());
        }
        if peer == self.inner.id {
            return;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE_FRAMES);
        if let Ok(mut q) = self.inner.queues.write() {
            // Replacing a queue closes the old one, whose writer then exits.
            q.insert(peer, tx);
        }
        self.inner.runtime.spawn(peer_writer(
            peer,
            addr,
            self.inner.hello.clone(),
            rx,
            self.inner.node_tx.clone(),
        ));
    }

    /// Stops talking to a peer and refuses its connections.
    pub fn remove_peer(&self, peer: u64) {
        if let Ok(mut m) = self.inner.members.write() {
            m.remove(&peer);
        }
        if let Ok(mut q) = self.inner.queues.write() {
            q.remove(&peer);
        }
    }

    fn queue(&self, to: u64) -> Option<mpsc::Sender<Body>> {
        self.inner.queues.read().ok()?.get(&to).cloned()
    }

    fn is_member(&self, id: u64) -> bool {
        self.inner
            .members
            .read()
            .map(|m| m.contains_key(&id))
            .unwrap_or(false)
    }

    /// Queues a frame for `to`. False if `to` is unknown or its queue is full (dropped).
    pub fn send(&self, to: u64, body: Body) -> bool {
        match self.queue(to) {
            Some(q) => q.try_send(body).is_ok(),
            None => false,
        }
    }

    /// Client addresses learned from peers' Hello frames.
    pub fn peer_http_addrs(&self) -> HashMap<u64, String> {
        self.inner
            .peer_http
            .read()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    fn record_peer_http(&self, id: u64, addr: String) {
        if let Ok(mut m) = self.inner.peer_http.write() {
            m.insert(id, addr);
        }
    }

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
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_FRAME_BYTES)
            .new_codec();
        let mut frames = FramedRead::new(stream, codec);
        let first = match frames.next().await {
            Some(Ok(bytes)) => bytes,
            Some(Err(e)) => return Err(format!("bad first frame: {e}")),
            None => return Ok(()),
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
                    let _ = self.inner.node_tx.send(Event::PeerWiped(h.from));
                }
                h.from
            }
            Ok(_) => return Err("first frame is not a Hello from a member".into()),
            Err(e) => return Err(format!("undecodable first frame: {e}")),
        };
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
                    if self.inner.node_tx.send(Event::Raft(Box::new(msg))).is_err() {
                        return Ok(());
                    }
                }
                Some(body) => handler.on_frame(from, body),
            }
        }
        Ok(())
    }
}

impl Transport {
    /// Streams the state machine to `msg.to` in chunks, then the snapshot message itself, on the
    /// same ordered queue, and tells the Raft loop how it went.
    fn stream_snapshot(&self, msg: Message) {
        let to = msg.to;
        let node_tx = self.inner.node_tx.clone();
        let (Some(queue), Ok(raw)) = (self.queue(to), msg.write_to_bytes()) else {
            let _ = node_tx.send(Event::SnapshotSent { to, ok: false });
            return;
        };
        let meta = msg.get_snapshot().get_metadata();
        let (index, term) = (meta.index, meta.term);
        let sm = self.inner.sm.clone();
        info!(peer = to, index, "streaming a snapshot");
        self.inner.runtime.spawn_blocking(move || {
            let sent = sm.snapshot_chunks(index, term, SNAPSHOT_CHUNK_BYTES, |chunk| {
                queue.blocking_send(Body::SnapshotChunk(chunk)).is_ok()
            });
            let ok = match sent {
                Ok(true) => queue.blocking_send(Body::Raft(raw.into())).is_ok(),
                Ok(false) => false,
                Err(e) => {
                    warn!(peer = to, error = %e, "cannot read a snapshot");
                    false
                }
            };
            let _ = node_tx.send(Event::SnapshotSent { to, ok });
        });
    }
}

impl Outbox for Transport {
    fn send_raft(&self, msgs: Vec<Message>) {
        for msg in msgs {
            let to = msg.to;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.stream_snapshot(msg);
                continue;
            }
            let sent = match msg.write_to_bytes() {
                Ok(bytes) => self.send(to, Body::Raft(bytes.into())),
                Err(e) => {
                    warn!(error = %e, "cannot encode raft message");
                    false
                }
            };
            if !sent {
                let _ = self.inner.node_tx.send(Event::Unreachable(to));
            }
        }
    }

    fn send_applied(&self, leader: u64, applied: u64) {
        self.send(leader, Body::Applied(AppliedReport { applied }));
    }

    fn set_peer(&self, id: u64, addr: Option<&crate::members::MemberAddr>) {
        match addr {
            Some(a) => {
                let known = self
                    .inner
                    .members
                    .read()
                    .map(|m| m.get(&id) == Some(&a.peer_addr))
                    .unwrap_or(false);
                if !known {
                    self.add_peer(id, a.peer_addr.clone());
                }
            }
            None => self.remove_peer(id),
        }
    }
}

/// Binds the peer listener.
pub async fn bind(addr: &str) -> Result<TcpListener, TransportError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| TransportError::Bind {
            addr: addr.to_string(),
            source,
        })
}

fn encode_into(buf: &mut BytesMut, frame: &Frame) {
    let len = frame.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    // Encoding into a buffer with reserved capacity cannot fail.
    let _ = frame.encode(buf);
}

/// Owns the connection to one peer: connects, reconnects, batches and writes.
async fn peer_writer(
    peer: u64,
    addr: String,
    hello: Frame,
    mut rx: mpsc::Receiver<Body>,
    node_tx: StdSender<Event>,
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
                if dropped && node_tx.send(Event::Unreachable(peer)).is_err() {
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
                let _ = node_tx.send(Event::Unreachable(peer));
                break;
            }
        }
    }
}
