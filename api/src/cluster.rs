//! Bodies of the cluster endpoints: `/v1/status`, `/v1/cluster/members`,
//! `/v1/cluster/transfer-leader`, `/v1/admin/backup`, `/health` and `/ready`.

use serde::{Deserialize, Serialize};

/// A node's Raft role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Pre-campaigning or campaigning.
    Candidate,
    /// The leader.
    Leader,
}

impl Role {
    /// The name used in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        }
    }
}

/// A member's place in the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberRole {
    /// Votes.
    Voter,
    /// Replicates without voting.
    Learner,
    /// Named in the address book but not (yet) in the configuration.
    Joining,
}

impl MemberRole {
    /// The name used in answers.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberRole::Voter => "voter",
            MemberRole::Learner => "learner",
            MemberRole::Joining => "joining",
        }
    }
}

/// A member and where it listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Member id.
    pub id: u64,
    /// Peer transport address (host:port).
    pub peer_addr: String,
    /// Client HTTP address (host:port), when known.
    pub http_addr: Option<String>,
    /// Its place in the configuration.
    #[serde(default)]
    pub role: Option<MemberRole>,
}

/// A member's progress as the leader sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Member id.
    pub id: u64,
    /// Whether it votes.
    pub voter: bool,
    /// Highest log index known to be replicated on it.
    pub match_index: u64,
    /// Its last reported applied index.
    pub applied_index: u64,
    /// The leader's last index minus `match_index`.
    pub lag: u64,
    /// Whether the leader heard from it within an election timeout.
    pub reachable: bool,
    /// Milliseconds since the leader last heard from it (null: never).
    #[serde(default)]
    pub last_contact_ms: Option<u64>,
}

/// Answer to `GET /v1/status`: a node's view of itself and, on the leader, of every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The answering node's id.
    pub id: u64,
    /// Its role.
    pub role: Role,
    /// Its term.
    pub term: u64,
    /// The leader it knows (null when unknown).
    pub leader: Option<u64>,
    /// Its commit index.
    pub commit_index: u64,
    /// Its applied index.
    pub applied_index: u64,
    /// Its first log index (everything before was compacted into the state machine).
    #[serde(default)]
    pub first_index: u64,
    /// Its last log index.
    #[serde(default)]
    pub last_index: u64,
    /// Voters of the current configuration.
    #[serde(default)]
    pub voters: Vec<u64>,
    /// Learners of the current configuration.
    #[serde(default)]
    pub learners: Vec<u64>,
    /// On the leader: every member's progress (null elsewhere).
    #[serde(default)]
    pub progress: Option<Vec<Progress>>,
    /// Every member with its addresses and role.
    pub members: Vec<Member>,
}

/// Answer to `GET /v1/cluster/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembersResponse {
    /// Every member.
    pub members: Vec<Member>,
    /// The leader the answering node knows.
    pub leader: Option<u64>,
}

/// Answer to a membership change (add, promote, remove).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipChangeResponse {
    /// The log index of the change.
    pub index: u64,
    /// Every member after it.
    pub members: Vec<Member>,
}

/// Body of `POST /v1/cluster/members`: add a learner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddMemberRequest {
    /// Its id (at least 1).
    pub id: u64,
    /// Its peer address (host:port).
    pub peer_addr: String,
    /// Its client address (host:port).
    #[serde(default)]
    pub http_addr: Option<String>,
}

/// Body of `POST /v1/cluster/transfer-leader` (may be empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransferRequest {
    /// The voter to lead (default: the most up-to-date one).
    #[serde(default)]
    pub to: Option<u64>,
}

/// Answer to a leader transfer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferResponse {
    /// The new leader.
    pub leader: u64,
}

/// Body of `POST /v1/admin/backup`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupRequest {
    /// An absolute path, on the node's machine, that does not exist yet.
    pub dir: String,
}

/// Answer to a backup.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupResponse {
    /// The applied index the backup holds.
    pub index: u64,
    /// The term of that index.
    pub term: u64,
    /// Where it was written.
    pub dir: String,
}

/// Answer to `GET /health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

/// Answer to `GET /ready` when ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Always true (a node that is not ready answers 503 `not_ready`).
    pub ready: bool,
    /// The leader it knows.
    pub leader: u64,
    /// Its applied index.
    pub applied_index: u64,
}
