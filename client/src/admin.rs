//! The administrative calls, all sent to the leader: membership, leadership transfer, backups
//! and the cluster's status.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use keel_api::cluster::{
    AddMemberRequest, BackupRequest, BackupResponse, Member, MembersResponse,
    MembershipChangeResponse, Status, TransferRequest, TransferResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{Call, Client};
use crate::error::Error;

impl Client {
    /// Sends an administrative request to the leader and parses its JSON answer.
    async fn admin<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: String,
        body: Option<&impl Serialize>,
    ) -> Result<T, Error> {
        let body = match body {
            Some(b) => {
                Bytes::from(serde_json::to_vec(b).map_err(|e| Error::Unexpected(e.to_string()))?)
            }
            None => Bytes::new(),
        };
        self.execute(Call {
            method,
            path,
            headers: Vec::new(),
            body,
            write: true,
            key: "",
        })
        .await?
        .json()
    }

    /// Adds a member as a learner (it replicates but does not vote); returns every member.
    /// Promote it with [`Client::promote_member`] once it has caught up.
    pub async fn add_member(
        &self,
        id: u64,
        peer_addr: &str,
        http_addr: Option<&str>,
    ) -> Result<Vec<Member>, Error> {
        let body = AddMemberRequest {
            id,
            peer_addr: peer_addr.to_string(),
            http_addr: http_addr.map(str::to_string),
        };
        let r: MembershipChangeResponse = self
            .admin("POST", "/v1/cluster/members".into(), Some(&body))
            .await?;
        Ok(r.members)
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<Vec<Member>, Error> {
        let path = format!("/v1/cluster/members/{id}/promote");
        let r: MembershipChangeResponse = self.admin("POST", path, None::<&()>).await?;
        Ok(r.members)
    }

    /// Removes a member (not the leader: transfer leadership first).
    pub async fn remove_member(&self, id: u64) -> Result<Vec<Member>, Error> {
        let path = format!("/v1/cluster/members/{id}");
        let r: MembershipChangeResponse = self.admin("DELETE", path, None::<&()>).await?;
        Ok(r.members)
    }

    /// Every member, as the leader knows them.
    pub async fn list_members(&self) -> Result<Vec<Member>, Error> {
        let path = "/v1/cluster/members".to_string();
        let r: MembersResponse = self.admin("GET", path, None::<&()>).await?;
        Ok(r.members)
    }

    /// Asks the leader for a consistent backup into `dir` (an absolute path on its machine that
    /// does not exist yet); returns the applied index the backup holds and the directory.
    pub async fn backup(&self, dir: &str) -> Result<(u64, String), Error> {
        let body = BackupRequest {
            dir: dir.to_string(),
        };
        let r: BackupResponse = self
            .admin("POST", "/v1/admin/backup".into(), Some(&body))
            .await?;
        Ok((r.index, r.dir))
    }

    /// Hands leadership to `to` (or to the most up-to-date voter); returns the new leader.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<u64, Error> {
        let r: TransferResponse = self
            .admin(
                "POST",
                "/v1/cluster/transfer-leader".into(),
                Some(&TransferRequest { to }),
            )
            .await?;
        self.inner.leader.store(r.leader, Ordering::Release);
        Ok(r.leader)
    }

    /// The status of the leader (or, if it cannot be reached, of any member).
    pub async fn status(&self) -> Result<Status, Error> {
        self.admin("GET", "/v1/status".into(), None::<&()>).await
    }
}
