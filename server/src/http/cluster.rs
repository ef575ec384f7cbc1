//! The cluster handlers: status, membership (list, add a learner, promote, remove) and
//! leadership transfer. Membership changes and transfers are made on the leader only; another
//! node answers 503 `no_leader` with the leader in `X-Keel-Leader`, and the client follows it.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::HeaderMap;
use keel_api::cluster::{
    AddMemberRequest, Member, MemberRole, MembersResponse, MembershipChangeResponse, Role, Status,
    TransferRequest, TransferResponse,
};
use keel_api::limits::MAX_SMALL_BODY_BYTES;
use keel_api::ErrorCode;
use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};

use super::error::{rejected, ApiError};
use super::reply::{Answer, Reply};
use super::request;
use super::Api;
use crate::error::WriteError;
use crate::members::{JoinContext, MemberAddr};
use crate::raft::{Event, StatusReport};

/// How long a leadership transfer may take before the API answers 504.
const TRANSFER_WAIT: Duration = Duration::from_secs(5);
/// A learner more entries behind the leader than this is not promoted.
const MAX_PROMOTE_LAG: u64 = 1000;

/// The member id in a path.
pub(super) fn member_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidMember, format!("bad member id {raw:?}")))
}

impl Api {
    /// The Ready loop's status report (503 while the node stops).
    async fn report(&self) -> Result<StatusReport, ApiError> {
        self.node
            .status()
            .await
            .ok_or_else(|| ApiError::new(ErrorCode::ShuttingDown, "the node is stopping"))
    }

    /// Every member with its addresses and role, as this node knows them.
    fn members(&self, report: &StatusReport) -> Vec<Member> {
        let learned = self.transport.peer_http_addrs();
        report
            .addresses
            .iter()
            .map(|(id, addr)| {
                let http_addr = if *id == report.status.id {
                    Some(self.http_addr.clone())
                } else {
                    learned.get(id).cloned().or_else(|| addr.http_addr.clone())
                };
                let role = if report.status.voters.contains(id) {
                    MemberRole::Voter
                } else if report.status.learners.contains(id) {
                    MemberRole::Learner
                } else {
                    MemberRole::Joining
                };
                Member {
                    id: *id,
                    peer_addr: addr.peer_addr.clone(),
                    http_addr,
                    role: Some(role),
                }
            })
            .collect()
    }

    /// `GET /v1/status`.
    pub(super) async fn status(&self) -> Answer {
        let report = self.report().await?;
        let members = self.members(&report);
        let index = report.status.applied_index;
        let status = Status {
            members,
            ..report.status
        };
        Reply::json(&status, Some(index))
    }

    /// `GET /v1/cluster/members`.
    pub(super) async fn list_members(&self) -> Answer {
        let report = self.report().await?;
        Reply::json(
            &MembersResponse {
                members: self.members(&report),
                leader: report.status.leader,
            },
            Some(report.status.applied_index),
        )
    }

    /// Proposes one membership change here (the leader) and answers with the members after it.
    async fn change_membership(&self, change: ConfChangeType, id: u64, context: Vec<u8>) -> Answer {
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change);
        single.node_id = id;
        let mut cc = ConfChangeV2::default();
        cc.mut_changes().push(single);
        let ok = match tokio::time::timeout(
            self.cfg.request_timeout,
            self.node.propose_conf_change(cc, context),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => return Err(WriteError::OutcomeUnknown.into()),
        };
        let r = rejected(&ok.result)?;
        let report = self.report().await?;
        Reply::json(
            &MembershipChangeResponse {
                index: r.index,
                members: self.members(&report),
            },
            Some(r.index),
        )
    }

    fn require_leader(report: &StatusReport) -> Result<(), ApiError> {
        if report.status.role == Role::Leader {
            return Ok(());
        }
        Err(match report.status.leader {
            Some(l) => WriteError::NotLeader(l),
            None => WriteError::NoLeader,
        }
        .into())
    }

    /// `POST /v1/cluster/members`: add a learner.
    pub(super) async fn add_member(&self, headers: &HeaderMap, body: Incoming) -> Answer {
        let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
        let b: AddMemberRequest = request::parse_json(
            &body,
            "{\"id\": u64, \"peer_addr\": \"host:port\", \"http_addr\"?: \"host:port\"}",
        )?;
        if b.id == 0 || !b.peer_addr.contains(':') {
            return Err(ApiError::new(
                ErrorCode::InvalidMember,
                "the id must be at least 1 and peer_addr must be host:port",
            ));
        }
        let report = self.report().await?;
        Self::require_leader(&report)?;
        if let Some(existing) = report.addresses.get(&b.id) {
            // The same node asking again (its first answer was lost, or it restarted before it
            // stored it): it is already a learner, so the request succeeds without a new change.
            // A node that cannot learn it was added could never start. Only a learner, never a
            // voter: a voter's id handed to a node with no data would vote with no log.
            if report.status.learners.contains(&b.id)
                && existing.peer_addr == b.peer_addr
                && existing.http_addr == b.http_addr
            {
                let index = report.status.applied_index;
                return Reply::json(
                    &MembershipChangeResponse {
                        index,
                        members: self.members(&report),
                    },
                    Some(index),
                );
            }
            return Err(ApiError::new(
                ErrorCode::MemberExists,
                format!("member {} already exists", b.id),
            ));
        }
        let context = serde_json::to_vec(&JoinContext {
            id: b.id,
            addr: MemberAddr {
                peer_addr: b.peer_addr,
                http_addr: b.http_addr,
            },
        })
        .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
        self.change_membership(ConfChangeType::AddLearnerNode, b.id, context)
            .await
    }

    /// `POST /v1/cluster/members/{id}/promote`: make a caught-up learner a voter.
    pub(super) async fn promote_member(&self, id: u64) -> Answer {
        let report = self.report().await?;
        Self::require_leader(&report)?;
        if !report.status.learners.contains(&id) {
            return Err(ApiError::new(
                ErrorCode::NotALearner,
                format!("member {id} is not a learner"),
            ));
        }
        let lag = report
            .status
            .progress
            .iter()
            .flatten()
            .find(|p| p.id == id && p.reachable && p.match_index > 0)
            .map_or(u64::MAX, |p| {
                report.status.commit_index.saturating_sub(p.match_index)
            });
        if lag > MAX_PROMOTE_LAG {
            return Err(ApiError::new(
                ErrorCode::LearnerBehind,
                if lag == u64::MAX {
                    format!(
                        "learner {id} has not caught up yet (unreachable or nothing replicated)"
                    )
                } else {
                    format!(
                        "learner {id} is {lag} entries behind; promote it once it has caught up"
                    )
                },
            ));
        }
        self.change_membership(ConfChangeType::AddNode, id, Vec::new())
            .await
    }

    /// `DELETE /v1/cluster/members/{id}`.
    pub(super) async fn remove_member(&self, id: u64) -> Answer {
        let report = self.report().await?;
        Self::require_leader(&report)?;
        if !report.addresses.contains_key(&id) {
            return Err(ApiError::new(
                ErrorCode::NoSuchMember,
                format!("member {id} does not exist"),
            ));
        }
        if id == report.status.id {
            return Err(ApiError::new(
                ErrorCode::IsLeader,
                "member is the leader: transfer leadership first (POST /v1/cluster/transfer-leader)",
            ));
        }
        self.change_membership(ConfChangeType::RemoveNode, id, Vec::new())
            .await
    }

    /// `POST /v1/cluster/transfer-leader`: hand leadership to `to`, or to the best successor.
    pub(super) async fn transfer_leader(&self, headers: &HeaderMap, body: Incoming) -> Answer {
        let body = request::read_body(headers, body, MAX_SMALL_BODY_BYTES).await?;
        let b: TransferRequest = if body.is_empty() {
            TransferRequest::default()
        } else {
            request::parse_json(&body, "{\"to\"?: u64}")?
        };
        let report = self.report().await?;
        Self::require_leader(&report)?;
        let target = match b.to {
            Some(to) if to == report.status.id => {
                return Reply::json(&TransferResponse { leader: to }, None)
            }
            Some(to) if report.status.voters.contains(&to) => to,
            Some(to) => {
                return Err(ApiError::new(
                    ErrorCode::NotAVoter,
                    format!("member {to} is not a voter"),
                ))
            }
            None => report
                .best_successor()
                .ok_or_else(|| ApiError::new(ErrorCode::NoSuccessor, "no other voter to lead"))?,
        };
        self.node.send(Event::TransferLeader(target));
        let moved = self
            .node
            .shared()
            .wait_leader(TRANSFER_WAIT, |l| l == Some(target))
            .await;
        if !moved {
            return Err(ApiError::new(
                ErrorCode::Timeout,
                format!(
                    "leadership did not move to {target} within {} s",
                    TRANSFER_WAIT.as_secs()
                ),
            ));
        }
        Reply::json(&TransferResponse { leader: target }, None)
    }
}
