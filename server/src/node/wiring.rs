//! The bridges between stages that must not know each other: the Ready loop's [`Outbox`] over
//! the transport and the snapshot sender, and the transport's [`Inbound`] dispatch of frames to
//! forwarding, the Ready loop and the snapshot stage.

use std::sync::Arc;

use protobuf::Message as PbMessage;
use raft::eraftpb::{Message, MessageType};
use tracing::{error, warn};

use crate::forward::Router;
use crate::members::MemberAddr;
use crate::proto::{frame::Body, AppliedReport};
use crate::raft::{Event, NodeHandle, Outbox};
use crate::snapshot;
use crate::transport::{Inbound, PeerEvents, Transport};

/// The Ready loop's way out: Raft messages and applied reports over the transport, snapshots
/// through the snapshot sender.
pub(super) struct PeerOutbox {
    /// The peer transport.
    pub(super) transport: Transport,
    /// Streams snapshots to followers.
    pub(super) snapshots: snapshot::Sender,
    /// Into the Ready loop, for the outcome of a snapshot stream.
    pub(super) node_tx: std::sync::mpsc::Sender<Event>,
}

impl PeerOutbox {
    fn send_snapshot(&self, msg: Message) {
        let to = msg.to;
        let node_tx = self.node_tx.clone();
        let done = move |ok| {
            let _ = node_tx.send(Event::SnapshotSent { to, ok });
        };
        match (self.transport.queue_to(to), msg.write_to_bytes()) {
            (Some(queue), Ok(raw)) => self.snapshots.stream(&msg, raw.into(), queue, done),
            _ => done(false),
        }
    }
}

impl Outbox for PeerOutbox {
    fn send_raft(&self, msgs: Vec<Message>) {
        for msg in msgs {
            let to = msg.to;
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.send_snapshot(msg);
                continue;
            }
            let sent = match msg.write_to_bytes() {
                Ok(bytes) => self.transport.send(to, Body::Raft(bytes.into())),
                Err(e) => {
                    warn!(error = %e, "cannot encode raft message");
                    false
                }
            };
            if !sent {
                self.transport.report_unreachable(to);
            }
        }
    }

    fn send_applied(&self, leader: u64, applied: u64) {
        self.transport
            .send(leader, Body::Applied(AppliedReport { applied }));
    }

    fn set_peer(&self, id: u64, addr: Option<&MemberAddr>) {
        match addr {
            Some(a) if self.transport.peer_addr(id).as_ref() != Some(&a.peer_addr) => {
                self.transport.add_peer(id, a.peer_addr.clone());
            }
            Some(_) => {}
            None => self.transport.remove_peer(id),
        }
    }
}

/// The transport's reports, as events of the Ready loop.
pub(super) struct RaftEvents {
    /// The Ready loop's channel.
    pub(super) tx: std::sync::mpsc::Sender<Event>,
    /// The bound on peer messages waiting in it.
    pub(super) inbox: Arc<crate::raft::inbox::Inbox>,
}

impl PeerEvents for RaftEvents {
    fn raft_message(&self, msg: Message) -> bool {
        let Some(slot) = self.inbox.admit(&msg) else {
            // Full: dropped (and counted); Raft sends it again. The connection stays.
            tracing::debug!(from = msg.from, "raft inbox full; message dropped");
            return true;
        };
        self.tx.send(Event::Raft(Box::new(msg), slot)).is_ok()
    }

    fn unreachable(&self, peer: u64) -> bool {
        self.tx.send(Event::Unreachable(peer)).is_ok()
    }

    fn peer_wiped(&self, peer: u64) {
        let _ = self.tx.send(Event::PeerWiped(peer));
    }
}

/// Routes non-Raft peer frames to where they belong.
pub(super) struct PeerFrames {
    /// The Ready loop, for applied reports.
    pub(super) node: NodeHandle,
    /// Forwarded writes and their replies.
    pub(super) router: Arc<Router>,
    /// Incoming snapshot chunks.
    pub(super) stage: snapshot::Stage,
}

impl Inbound for PeerFrames {
    fn on_frame(&self, from: u64, body: Body) -> Option<tokio::task::JoinHandle<()>> {
        match body {
            Body::Forward(req) => self.router.accept_forwarded(from, req),
            Body::ForwardReply(reply) => self.router.on_reply(reply),
            Body::Applied(report) => {
                self.node.send(Event::Applied {
                    from,
                    applied: report.applied,
                });
            }
            // A RocksDB write (which may stall): on the blocking pool, so that a node with one
            // async worker keeps its peer links and clients served meanwhile.
            Body::SnapshotChunk(chunk) => {
                let stage = self.stage.clone();
                return Some(tokio::task::spawn_blocking(move || {
                    if let Err(e) = stage.stage_chunk(chunk) {
                        error!(from, error = %e, "cannot stage a snapshot chunk");
                    }
                }));
            }
            // Hello and Raft frames are handled by the transport itself.
            Body::Hello(_) | Body::Raft(_) => {}
        }
        None
    }
}
