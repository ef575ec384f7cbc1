//! The Ready loop's share of the metrics ([`crate::metrics`]): heartbeat round trips to each
//! peer, and each follower's lag as the leader sees it. Everything else the loop measures is one
//! line where it happens (append + fsync, apply, snapshot install, leader changes).

use std::collections::HashMap;
use std::time::Instant;

use raft::eraftpb::{Message, MessageType};
use raft::StateRole;

use super::handle::Outbox;
use super::ready::Driver;
use crate::metrics::{metrics, observe, PeerLabels};

/// Ticks between two exports of the followers' lag (about a second).
pub(super) const LAG_EXPORT_TICKS: u64 = 10;

/// When the last unanswered heartbeat went to each peer.
#[derive(Default)]
pub(super) struct Heartbeats {
    sent: HashMap<u64, Instant>,
}

impl Heartbeats {
    /// Notes the heartbeats among `msgs`. The latest one sent to a peer is the one timed (a
    /// response does not say which heartbeat it answers; timing the first unanswered one would
    /// count a whole outage as one round trip).
    pub(super) fn sending(&mut self, msgs: &[Message], now: Instant) {
        for m in msgs {
            if m.get_msg_type() == MessageType::MsgHeartbeat {
                self.sent.insert(m.to, now);
            }
        }
    }

    /// Forgets what was sent (this node no longer leads).
    pub(super) fn clear(&mut self) {
        self.sent.clear();
    }

    /// A heartbeat response from `from`: its round trip.
    pub(super) fn answered(&mut self, msg: &Message, now: Instant) {
        if msg.get_msg_type() != MessageType::MsgHeartbeatResponse {
            return;
        }
        if let Some(at) = self.sent.remove(&msg.from) {
            observe(
                &metrics()
                    .peer_rtt
                    .get_or_create(&PeerLabels { peer: msg.from }),
                now.saturating_duration_since(at),
            );
        }
    }
}

impl<O: Outbox> Driver<O> {
    /// On the leader: each follower's match and applied lag, in entries; elsewhere the families
    /// are emptied (only the leader knows them).
    pub(super) fn export_lags(&mut self) {
        let m = metrics();
        // Rebuilt each time: a member removed (or a leadership lost) leaves no stale series.
        m.peer_match_lag.clear();
        m.peer_applied_lag.clear();
        if self.raw.raft.state != StateRole::Leader {
            self.heartbeats.clear();
            return;
        }
        let last = self.raw.raft.raft_log.last_index();
        for (id, pr) in self.raw.raft.prs().iter() {
            if *id == self.cfg.id {
                continue;
            }
            let labels = PeerLabels { peer: *id };
            let applied = self.peers.get(*id).applied;
            m.peer_match_lag
                .get_or_create(&labels)
                .set(last.saturating_sub(pr.matched) as i64);
            m.peer_applied_lag
                .get_or_create(&labels)
                .set(last.saturating_sub(applied) as i64);
        }
    }
}
