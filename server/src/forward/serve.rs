//! The leader's side: serve a write a follower forwarded, and send the answer back.
//!
//! A forwarded write goes from the transport's receiving task straight into the Ready loop, and
//! its answer from the loop's thread straight back to the transport ([`NodeHandle::propose_then`]):
//! no task per write waits in between, so none has to be woken to pass the answer on. The
//! follower keeps its own deadline (`router.rs`); the leader's loop answers every write it took
//! (applied, refused, failed when leadership is lost, a `sync` write's own timeout), in the end.
//!
//! A write's place among the `--max-forwarded` is held until the loop answers it, however long
//! that takes: while nothing commits (a leader that keeps its quorum's heartbeats but cannot
//! replicate, a hung disk), forwarded writes past the bound are refused as overloaded (503)
//! instead of piling up in the loop. (Before, the leader gave up on a write at the follower's
//! deadline and gave back its place, while its proposal stayed in the loop.)
//!
//! [`NodeHandle::propose_then`]: crate::raft::NodeHandle::propose_then

use std::sync::Arc;

use keel_api::WriteMode;

use super::Router;
use crate::error::WriteError;
use crate::proto::{frame::Body, ForwardReply, ForwardRequest};
use crate::raft::WriteOk;

impl Router {
    /// Serves a write another node forwarded, or refuses it at once as overloaded when
    /// `--max-forwarded` (default [`super::router::MAX_FORWARDED_WRITES`]) are being served.
    pub fn accept_forwarded(self: &Arc<Self>, from: u64, req: ForwardRequest) {
        let leader = || self.node.shared().leader().unwrap_or(0);
        let Ok(permit) = self.serving.clone().try_acquire_owned() else {
            self.node.shared().count_overloaded();
            let reply = reply_to(req.id, leader(), Err(WriteError::Overloaded));
            self.transport.send(from, Body::ForwardReply(reply));
            return;
        };
        let ForwardRequest {
            id,
            command,
            mode,
            request_id,
            ..
        } = req;
        let (Some(command), Some(mode)) = (command, WriteMode::from_u32(mode)) else {
            // A peer running another version sent something we cannot read: refuse it unapplied.
            tracing::debug!(
                request_id,
                from,
                mode,
                "refused a forwarded write it cannot read"
            );
            let reply = reply_to(id, leader(), Err(WriteError::Dropped));
            self.transport.send(from, Body::ForwardReply(reply));
            return;
        };
        let transport = self.transport.clone();
        let shared = self.node.shared().clone();
        self.node.propose_then(command, mode, move |outcome| {
            let _serving = permit;
            let reply = reply_to(id, shared.leader().unwrap_or(0), outcome);
            tracing::debug!(
                request_id,
                from,
                index = reply.result.as_ref().map_or(reply.index, |r| r.index),
                error = %reply.error_code,
                "served a forwarded write"
            );
            // If the reply cannot be queued the follower times out with outcome_unknown.
            transport.send(from, Body::ForwardReply(reply));
        });
    }
}

/// The reply to forwarded write `id`, naming the leader as this node knows it (or, for a
/// refusal as not the leader, the leader the refusal names when it names one: the loop's own
/// view at the moment it refused, newer than `leader`, which was read after).
fn reply_to(id: u64, leader: u64, outcome: Result<WriteOk, WriteError>) -> ForwardReply {
    let leader = match &outcome {
        Err(WriteError::NotLeader(named)) if *named != 0 => *named,
        _ => leader,
    };
    let mut reply = ForwardReply {
        id,
        leader,
        ..Default::default()
    };
    match outcome {
        Ok(ok) => {
            reply.acked = ok.acked.as_u32();
            reply.result = Some(ok.result);
        }
        Err(e) => {
            reply.error_code = e.code().to_string();
            reply.error_message = e.to_string();
            if let WriteError::ReplicationTimeout { index } = e {
                reply.index = index;
            }
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_the_leader_the_loop_named() {
        let reply = reply_to(7, 1, Err(WriteError::NotLeader(3)));
        assert_eq!((reply.id, reply.leader), (7, 3));
        assert_eq!(reply.error_code, "not_leader");
        // A refusal naming no leader keeps the node's own view; other outcomes too.
        assert_eq!(reply_to(7, 1, Err(WriteError::NotLeader(0))).leader, 1);
        assert_eq!(reply_to(7, 2, Err(WriteError::Overloaded)).leader, 2);
    }
}
