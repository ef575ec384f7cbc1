//! The leader's side: serve a write a follower forwarded, and send the answer back.

use std::sync::Arc;
use std::time::Duration;

use keel_api::WriteMode;

use super::Router;
use crate::error::WriteError;
use crate::proto::{frame::Body, ForwardReply, ForwardRequest};

impl Router {
    /// Serves a write another node forwarded, in a task of its own, or refuses it at once as
    /// overloaded when `--max-forwarded` (default [`super::router::MAX_FORWARDED_WRITES`]) are
    /// being served.
    pub fn accept_forwarded(self: &Arc<Self>, from: u64, req: ForwardRequest) {
        match self.serving.clone().try_acquire_owned() {
            Ok(permit) => {
                let this = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let span =
                        tracing::debug_span!("forwarded", request_id = %req.request_id, from);
                    tracing::Instrument::instrument(this.serve_forwarded(from, req), span).await;
                });
            }
            Err(_) => {
                self.node.shared().count_overloaded();
                let reply = ForwardReply {
                    id: req.id,
                    leader: self.node.shared().leader().unwrap_or(0),
                    error_code: WriteError::Overloaded.code().to_string(),
                    error_message: WriteError::Overloaded.to_string(),
                    ..Default::default()
                };
                self.transport.send(from, Body::ForwardReply(reply));
            }
        }
    }

    /// Serves a write forwarded by peer `from` (this node is expected to lead) and sends back the
    /// answer.
    async fn serve_forwarded(&self, from: u64, req: ForwardRequest) {
        let timeout = Duration::from_millis(req.timeout_ms);
        let outcome = match (req.command, WriteMode::from_u32(req.mode)) {
            (Some(command), Some(mode)) => {
                match tokio::time::timeout(timeout, self.node.propose(command, mode)).await {
                    Ok(r) => r,
                    Err(_) => Err(WriteError::OutcomeUnknown),
                }
            }
            // A peer running another version sent something we cannot read: refuse it unapplied.
            _ => Err(WriteError::Dropped),
        };
        let mut reply = ForwardReply {
            id: req.id,
            leader: self.node.shared().leader().unwrap_or(0),
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
        tracing::debug!(
            index = reply.result.as_ref().map_or(reply.index, |r| r.index),
            error = %reply.error_code,
            "served a forwarded write"
        );
        // If the reply cannot be queued the follower times out with outcome_unknown.
        self.transport.send(from, Body::ForwardReply(reply));
    }
}
