//! # transport: persistent TCP connections between nodes, carrying length-delimited frames
//!
//! This stage only moves [`Frame`]s: it dials every peer, keeps one ordered queue per peer,
//! checks who is on the other end of an inbound connection, and hands what arrives to the Ready
//! loop (Raft messages) or to the node's [`Inbound`] dispatcher (forwarded writes and replies,
//! applied reports, snapshot chunks). It does not know what a snapshot, a write or a state
//! machine is.
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
//! Ready loop is told ([`PeerEvents::unreachable`]); Raft retransmits what matters.
//!
//! # Inbound
//! The listener admits connections that have not yet said who they are to a few pending slots
//! per remote address (`admission.rs`); a connection whose Hello is accepted takes one of
//! [`MAX_INBOUND_CONNECTIONS`] member slots. The first frame must be
//! a [`Hello`] from a configured member other than this node, of at most [`MAX_HELLO_BYTES`],
//! within [`HELLO_DEADLINE`] of the connection (so that a stranger can neither make the node
//! buffer a large frame nor hold a connection slot by saying nothing); any undecodable or
//! oversized frame closes the connection. Garbage on the peer port can therefore never reach
//! Raft. Every frame after the Hello is decoded by `decode.rs` (pure: bytes in, a Raft message
//! naming this connection's peer and this node, another frame, or a refusal), which the fuzz
//! target builds without the rest of the node.
//!
//! # TLS
//! With a [`Tls`] identity every connection is mutual TLS: the dialer checks that the server's
//! certificate names the member it dials, the listener requires a client certificate from the
//! CA and refuses a Hello that claims a member the certificate does not name (see
//! [`crate::tls`]). The TLS handshake shares the Hello's deadline. Without TLS a Hello is
//! believed: anyone who can reach the peer port can act as a member (docs/security.md).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::proto::{frame::Body, Frame, Hello};
use crate::tls::Tls;
use raft::eraftpb::Message;

mod admission;
mod decode;
mod inbound;
mod outbound;

pub use admission::MAX_PENDING_CONNECTIONS;
pub use decode::{decode_after_hello, Decoded};
#[cfg(test)]
mod proptests;

/// Largest frame accepted on the peer port.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Frames queued per peer before new ones are dropped.
pub const PEER_QUEUE_FRAMES: usize = 8192;
/// Bytes gathered into one write.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;
/// Concurrent inbound connections of members (after their Hello).
pub const MAX_INBOUND_CONNECTIONS: usize = 64;
/// Largest first frame (the Hello) accepted, before the peer has said who it is.
pub const MAX_HELLO_BYTES: usize = 4 * 1024;
/// Nodes outside the address book answered at once (a stranger without TLS could otherwise make
/// a node start a dialer per id it claims).
pub const MAX_UNKNOWN_PEERS: usize = 8;
/// How long a new peer connection may take to send its Hello.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// First pause before re-dialing an unreachable peer (doubles up to [`BACKOFF_MAX`]).
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause between dials.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where the transport reports what concerns consensus. The node's wiring implements it over
/// the Ready loop's channel, so that the transport does not depend on the Ready loop.
pub trait PeerEvents: Send + Sync + 'static {
    /// A Raft message arrived (already checked: from the connection's peer, to this node).
    /// False once nobody consumes them (the connection then closes).
    fn raft_message(&self, msg: Message) -> bool;
    /// Frames to `peer` were dropped: it could not be reached. False once nobody listens.
    fn unreachable(&self, peer: u64) -> bool;
    /// `peer` came back with a new data incarnation (its data was wiped).
    fn peer_wiped(&self, peer: u64);
}

/// What the transport does with frames that arrive.
pub trait Inbound: Send + Sync + 'static {
    /// Handles one frame from peer `from` (never a Hello). Work that may block (a disk write)
    /// is handed back as a task on the blocking pool: the connection reads its next frame only
    /// once that task has ended, so frames keep their order and a slow disk slows the sender
    /// (through TCP) instead of holding up an async worker.
    fn on_frame(&self, from: u64, body: Body) -> Option<tokio::task::JoinHandle<()>>;
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
    /// Shared by every clone: the writer tasks, the listener and the Ready loop's outbox.
    inner: Arc<Inner>,
}

/// The transport's state.
struct Inner {
    /// This node's id.
    id: u64,
    /// This node's Hello, sent first on every connection.
    hello: Frame,
    /// One outbound queue (and writer task) per peer; changes with membership.
    queues: RwLock<HashMap<u64, mpsc::Sender<Body>>>,
    /// Members allowed to connect to us (ids), with their peer addresses.
    members: RwLock<HashMap<u64, String>>,
    /// Where inbound Raft messages, unreachable and wiped peers are reported.
    events: Arc<dyn PeerEvents>,
    /// The runtime, for writer tasks started from the Raft thread.
    runtime: tokio::runtime::Handle,
    /// Client addresses of peers, learned from their Hello.
    peer_http: RwLock<HashMap<u64, String>>,
    /// Data incarnations of peers, learned from their Hello.
    peer_incarnation: RwLock<HashMap<u64, u64>>,
    /// Nodes not in the address book that connected and are answered at the address they gave
    /// (members added while this node was cut off), at most [`MAX_UNKNOWN_PEERS`] of them.
    unknown: RwLock<std::collections::HashSet<u64>>,
    /// The node's TLS identity when the peer port speaks mutual TLS (None: plain TCP, and a
    /// Hello is believed).
    tls: Option<Arc<Tls>>,
}

impl Transport {
    /// Starts one writer task per peer (all members but `id`). Must be called inside a runtime.
    pub fn start(
        id: u64,
        http_addr: String,
        incarnation: u64,
        members: &HashMap<u64, String>,
        events: Arc<dyn PeerEvents>,
        tls: Option<Arc<Tls>>,
    ) -> Transport {
        let hello = Frame {
            body: Some(Body::Hello(Hello {
                from: id,
                http_addr,
                incarnation,
                peer_addr: members.get(&id).cloned().unwrap_or_default(),
            })),
        };
        let t = Transport {
            inner: Arc::new(Inner {
                id,
                hello,
                queues: RwLock::new(HashMap::new()),
                members: RwLock::new(HashMap::new()),
                events,
                runtime: tokio::runtime::Handle::current(),
                peer_http: RwLock::new(HashMap::new()),
                peer_incarnation: RwLock::new(HashMap::new()),
                unknown: RwLock::new(std::collections::HashSet::new()),
                tls,
            }),
        };
        for (&peer, addr) in members {
            t.add_peer(peer, addr.clone());
        }
        t
    }

    /// Starts talking to a peer (or updates its address): the address book names it, so it no
    /// longer takes one of the places of nodes outside it.
    pub fn add_peer(&self, peer: u64, addr: String) {
        if let Ok(mut u) = self.inner.unknown.write() {
            u.remove(&peer);
        }
        self.start_peer(peer, addr);
    }

    fn start_peer(&self, peer: u64, addr: String) {
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
        self.inner.runtime.spawn(outbound::peer_writer(
            peer,
            addr,
            self.inner.hello.clone(),
            rx,
            self.inner.events.clone(),
            self.inner.tls.clone(),
        ));
    }

    /// Takes a node outside the address book as a peer, answered at `addr`: false when
    /// [`MAX_UNKNOWN_PEERS`] are taken already.
    fn add_unknown_peer(&self, peer: u64, addr: String) -> bool {
        {
            let Ok(mut u) = self.inner.unknown.write() else {
                return false;
            };
            if !u.contains(&peer) && u.len() >= MAX_UNKNOWN_PEERS {
                return false;
            }
            u.insert(peer);
        }
        self.start_peer(peer, addr);
        true
    }

    /// Stops talking to a peer and refuses its connections.
    pub fn remove_peer(&self, peer: u64) {
        if let Ok(mut u) = self.inner.unknown.write() {
            u.remove(&peer);
        }
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

    /// The ordered queue to `to`, for a sender that must block rather than drop (a snapshot
    /// stream). None if `to` is not a peer.
    pub fn queue_to(&self, to: u64) -> Option<PeerQueue> {
        self.queue(to).map(PeerQueue)
    }

    /// Reports that `to` could not be reached (raft-rs then probes it again).
    pub fn report_unreachable(&self, to: u64) {
        self.inner.events.unreachable(to);
    }

    /// The peer address this transport dials for `id`, if it is a member.
    pub fn peer_addr(&self, id: u64) -> Option<String> {
        self.inner.members.read().ok()?.get(&id).cloned()
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
            Some(q) => match q.try_send(body) {
                Ok(()) => true,
                Err(_) => {
                    crate::metrics::metrics()
                        .peer_dropped
                        .get_or_create(&crate::metrics::PeerLabels { peer: to })
                        .inc();
                    false
                }
            },
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
        if !plausible_addr(&addr) {
            tracing::warn!(
                peer = id,
                "a peer announced an HTTP address that is not host:port; ignored"
            );
            return;
        }
        if let Ok(mut m) = self.inner.peer_http.write() {
            m.insert(id, addr);
        }
    }
}

/// Whether `addr` looks like `host:port` (letters, digits, `.-_:[]`, at most 255 bytes): what
/// a peer announces is shown to clients and rendered by the dashboard.
pub fn plausible_addr(addr: &str) -> bool {
    !addr.is_empty()
        && addr.len() <= 255
        && addr.contains(':')
        && addr
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:[]".contains(&b))
}

/// One peer's ordered outbound queue, for senders that must not drop frames.
pub struct PeerQueue(mpsc::Sender<Body>);

impl PeerQueue {
    /// Queues `body`, waiting while the queue is full; false once the peer's writer is gone.
    /// Never call from an async task (it blocks the thread).
    pub fn blocking_send(&self, body: Body) -> bool {
        self.0.blocking_send(body).is_ok()
    }

    /// Waits (blocking the thread) until at most `frames` frames are queued, so that a sender
    /// of large frames keeps only a few in memory. False if the peer's writer is gone, or
    /// nothing left the queue for `stall`.
    pub fn blocking_drain_to(&self, frames: usize, stall: std::time::Duration) -> bool {
        let queued = || self.0.max_capacity() - self.0.capacity();
        let mut last = (queued(), std::time::Instant::now());
        loop {
            if self.0.is_closed() {
                return false;
            }
            let now = queued();
            if now <= frames {
                return true;
            }
            if now < last.0 {
                last = (now, std::time::Instant::now());
            } else if last.1.elapsed() > stall {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
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

#[cfg(test)]
mod tests {
    use super::*;

    struct Nobody;
    impl PeerEvents for Nobody {
        fn raft_message(&self, _: Message) -> bool {
            false
        }
        fn unreachable(&self, _: u64) -> bool {
            false
        }
        fn peer_wiped(&self, _: u64) {}
    }

    #[test]
    fn only_host_port_addresses_are_plausible() {
        for ok in ["127.0.0.1:7001", "keel-1.example:443", "[::1]:7001"] {
            assert!(plausible_addr(ok), "{ok}");
        }
        for bad in [
            "",
            "no-port",
            "<img src=x onerror=alert(1)>:1",
            "a b:1",
            "x\":1",
            &format!("{}:1", "a".repeat(300)),
        ] {
            assert!(!plausible_addr(bad), "{bad}");
        }
    }

    /// A node answered from outside the address book, once the book names it, gives its place
    /// back (found by review: the places were only given back on removal, so eight real joins
    /// over a process's life, or eight strangers, disabled the rule for good). Failed before.
    #[tokio::test]
    async fn a_node_the_address_book_comes_to_name_gives_back_its_unknown_place() {
        let t = Transport::start(1, String::new(), 1, &HashMap::new(), Arc::new(Nobody), None);
        // Addresses nobody listens on: the dialers only retry.
        for id in 100..100 + MAX_UNKNOWN_PEERS as u64 {
            assert!(t.add_unknown_peer(id, "127.0.0.1:1".into()), "{id}");
        }
        assert!(
            !t.add_unknown_peer(200, "127.0.0.1:1".into()),
            "all places taken"
        );
        t.add_peer(100, "127.0.0.1:1".into());
        assert!(
            t.add_unknown_peer(200, "127.0.0.1:1".into()),
            "a member's place is free again"
        );
    }
}
