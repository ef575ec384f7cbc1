//! How `keel server --join` joins a running cluster: through the client library, so that the
//! server crate makes no HTTP requests of its own.

use keel_client::{Client, TlsOptions};
use keel_server::members::MemberAddr;
use keel_server::node::{Join, JoinRequest};

/// Joins through `keel-client`: asks the leader to add this node as a learner.
pub struct ClientJoin;

impl Join for ClientJoin {
    async fn join(&self, req: JoinRequest) -> Result<Vec<(u64, MemberAddr)>, String> {
        let mut builder = Client::builder(req.via.split(','));
        if let Some(t) = &req.token {
            builder = builder.token(t.clone());
        }
        if let Some(files) = &req.tls {
            // The node's own certificate serves as its client certificate.
            let tls = TlsOptions::from_files(&files.ca, Some((&files.cert, &files.key)))
                .map_err(|e| e.to_string())?;
            builder = builder.tls(tls);
        }
        let client = builder.build().await.map_err(|e| e.to_string())?;
        let members = client
            .add_member(req.id, &req.peer_addr, Some(&req.http_addr))
            .await
            .map_err(|e| e.to_string())?;
        Ok(members
            .into_iter()
            .map(|m| {
                (
                    m.id,
                    MemberAddr {
                        peer_addr: m.peer_addr,
                        http_addr: m.http_addr,
                    },
                )
            })
            .collect())
    }
}
