//! Where a starting node learns its cluster: from its own data if it has any, else from
//! `--cluster` (a new cluster), else by joining through `--join`.

use std::collections::HashMap;
use std::future::Future;

use rocksdb::DB;
use tracing::info;

use super::ServerError;
use crate::config::{ConfigError, ServerArgs};
use crate::members::{self, AddressBook, MemberAddr};
use crate::storage::meta;

/// What a joining node asks the cluster for.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// The member it asks through (host:port of its HTTP API; several, comma-separated).
    pub via: String,
    /// Its id.
    pub id: u64,
    /// Its advertised peer address.
    pub peer_addr: String,
    /// Its advertised HTTP address.
    pub http_addr: String,
    /// The bearer token to present (`--token`), when the cluster needs one.
    pub token: Option<String>,
    /// The node's TLS files, when the cluster speaks TLS: the CA to trust, and the node's own
    /// certificate to present as a client certificate.
    pub tls: Option<crate::tls::TlsFiles>,
}

/// How a node joins a running cluster: asks a member to add it as a learner and returns every
/// member's addresses. The `keel` binary implements it with `keel-client` (the server crate
/// makes no HTTP requests of its own).
pub trait Join {
    /// Adds the node described by `req` and returns the members (its own entry included).
    fn join(
        &self,
        req: JoinRequest,
    ) -> impl Future<Output = Result<Vec<(u64, MemberAddr)>, String>> + Send;
}

/// A [`Join`] for nodes that never join (tests, restores): always an error.
pub struct NoJoin;

impl Join for NoJoin {
    async fn join(&self, _req: JoinRequest) -> Result<Vec<(u64, MemberAddr)>, String> {
        Err("joining is not available here".into())
    }
}

/// Decides this node's starting address book and initial voters (empty unless the cluster is
/// new: a node with data or a joining node learns its configuration from its log or snapshot).
pub(super) async fn initial(
    args: &ServerArgs,
    db: &DB,
    cluster: &HashMap<u64, String>,
    advertise_peer: &str,
    advertise_http: &str,
    join: &impl Join,
) -> Result<(AddressBook, Vec<u64>), ServerError> {
    if let Some(stored) = meta::read_members(db)? {
        // A node that has run before knows its cluster from its own disk; an address book that
        // does not parse is damage to report, never a reason to fall back to the flags.
        let book = stored.map_err(ServerError::CorruptMembers)?;
        // The book is written before the first boot's configuration: a crash in between leaves
        // a book and no configuration, and an initial member must still start as one.
        let voters = if meta::read_conf_state(db)?.is_none() {
            members::ids_sorted(cluster)
        } else {
            Vec::new()
        };
        return Ok((book, voters));
    }
    if !cluster.is_empty() {
        return Ok((members::from_cluster(cluster), members::ids_sorted(cluster)));
    }
    let Some(via) = &args.join else {
        return Err(ConfigError::Invalid("no --cluster and no --join".into()).into());
    };
    info!(via = %via, "joining the cluster as a learner");
    let list = join
        .join(JoinRequest {
            via: via.clone(),
            id: args.id,
            peer_addr: advertise_peer.to_string(),
            http_addr: advertise_http.to_string(),
            token: args.token.clone(),
            tls: args.tls_files(),
        })
        .await
        .map_err(ServerError::Join)?;
    // No voters: the node learns the configuration from the leader's snapshot.
    Ok((list.into_iter().collect(), Vec::new()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        server: ServerArgs,
    }

    #[tokio::test]
    async fn a_damaged_address_book_is_an_error_not_a_fallback_to_the_flags() {
        let dir = tempfile::tempdir().expect("temp dir");
        let args = Cli::parse_from([
            "keel",
            "--id",
            "1",
            "--data-dir",
            &dir.path().display().to_string(),
            "--cluster",
            "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3",
        ])
        .server;
        let cluster = args.validate().expect("valid flags");
        let db = crate::storage::open_db(&args.data_dir).expect("open RocksDB");
        let (_, voters) = initial(
            &args,
            &db,
            &cluster,
            "127.0.0.1:1",
            "127.0.0.1:7001",
            &NoJoin,
        )
        .await
        .expect("a new node takes its members from --cluster");
        assert_eq!(voters, vec![1, 2, 3]);
        // Killed after writing the book and before the first boot's configuration: still a
        // new initial member (it used to start with no voters, and never campaign).
        meta::write_members(&db, &members::from_cluster(&cluster)).expect("write");
        let (_, voters) = initial(
            &args,
            &db,
            &cluster,
            "127.0.0.1:1",
            "127.0.0.1:7001",
            &NoJoin,
        )
        .await
        .expect("a new node after a crash before its first boot");
        assert_eq!(voters, vec![1, 2, 3]);
        meta::write_members_raw(&db, b"{\"1\": not json").expect("write");
        let err = initial(
            &args,
            &db,
            &cluster,
            "127.0.0.1:1",
            "127.0.0.1:7001",
            &NoJoin,
        )
        .await
        .expect_err("a damaged address book must not be ignored");
        assert!(matches!(err, ServerError::CorruptMembers(_)), "{err}");
    }
}
