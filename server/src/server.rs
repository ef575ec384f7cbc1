//! Wiring of one node: opens storage, starts the Ready loop, the peer transport and the HTTP
//! API, and shuts them down in order on SIGINT/SIGTERM.
//!
//! A storage failure stops the Ready loop; the node then exits with an error rather than keep
//! serving from a disk it cannot trust (crash-stop, as etcd does).

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use slog::Drain;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::{self, Api, ApiConfig};
use crate::config::{ConfigError, ServerArgs};
use crate::forward::Router;
use crate::members::{self, AddressBook, MemberAddr};
use crate::proto::frame::Body;
use crate::raft_node::{self, Event, NodeHandle, RaftConfig};
use crate::state_machine::StateMachine;
use crate::storage::{self, RaftLogStore, StorageError};
use crate::transport::{self, Inbound, Transport, TransportError};

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad flags.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data directory could not be created.
    #[error("cannot create data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// raft-rs refused to start.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// The peer listener failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The HTTP listener failed.
    #[error("cannot listen for clients on {addr}: {source}")]
    HttpBind {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The Ready loop ended abnormally.
    #[error("the raft loop stopped: {0}")]
    RaftLoop(String),
    /// Joining through --join failed.
    #[error("cannot join the cluster: {0}")]
    Join(String),
    /// The address book stored in the data dir does not parse.
    #[error("the member address book in the data dir is damaged: {0}")]
    CorruptMembers(#[source] serde_json::Error),
}

/// Routes non-Raft peer frames to where they belong.
struct PeerFrames {
    node: NodeHandle,
    router: Arc<Router>,
    sm: StateMachine,
}

impl Inbound for PeerFrames {
    fn on_frame(&self, from: u64, body: Body) {
        match body {
            Body::Forward(req) => {
                let router = self.router.clone();
                tokio::spawn(async move { router.serve_forwarded(from, req).await });
            }
            Body::ForwardReply(reply) => self.router.on_reply(reply),
            Body::Applied(report) => {
                self.node.send(Event::Applied {
                    from,
                    applied: report.applied,
                });
            }
            Body::SnapshotChunk(chunk) => {
                if let Err(e) = self.sm.stage_chunk(chunk) {
                    error!(from, error = %e, "cannot stage a snapshot chunk");
                }
            }
            // Hello and Raft frames are handled by the transport itself.
            Body::Hello(_) | Body::Raft(_) => {}
        }
    }
}

/// Routes raft-rs's slog output into `tracing` (through the `log` facade).
fn raft_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// How long a leader stopping gracefully waits for its successor to take over.
const HANDOVER_WAIT: Duration = Duration::from_secs(3);

/// Decides this node's starting address book and initial voters: from its own data if it has
/// any, else from `--cluster` (a new cluster), else by joining through `--join`.
async fn membership(
    args: &ServerArgs,
    db: &rocksdb::DB,
    cluster: &HashMap<u64, String>,
    advertise_peer: &str,
    advertise_http: &str,
) -> Result<(AddressBook, Vec<u64>), ServerError> {
    if let Some(bytes) = storage::read_members(db)? {
        // A node that has run before knows its cluster from its own disk; an address book that
        // does not parse is damage to report, never a reason to fall back to the flags.
        let book = members::decode(&bytes).map_err(ServerError::CorruptMembers)?;
        return Ok((book, Vec::new()));
    }
    if !cluster.is_empty() {
        return Ok((members::from_cluster(cluster), members::ids_sorted(cluster)));
    }
    let Some(join) = &args.join else {
        return Err(ConfigError::Invalid("no --cluster and no --join".into()).into());
    };
    info!(via = %join, "joining the cluster as a learner");
    let client = keel_client::Client::new(join.split(','))
        .await
        .map_err(|e| ServerError::Join(e.to_string()))?;
    let list = client
        .add_member(args.id, advertise_peer, Some(advertise_http))
        .await
        .map_err(|e| ServerError::Join(e.to_string()))?;
    let book = list
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
        .collect();
    // No voters: the node learns the configuration from the leader's snapshot.
    Ok((book, Vec::new()))
}

/// Runs a node until SIGINT/SIGTERM, its removal from the cluster, or a fatal error.
pub async fn run(args: ServerArgs) -> Result<(), ServerError> {
    let cluster = args.validate()?;
    let peer_listen = match (&args.peer, cluster.get(&args.id)) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => p.clone(),
        (None, None) => return Err(ConfigError::Invalid("--peer is needed".into()).into()),
    };
    let advertise_peer = args
        .advertise_peer
        .clone()
        .unwrap_or_else(|| peer_listen.clone());
    let advertise_http = args
        .advertise_http
        .clone()
        .unwrap_or_else(|| args.http.clone());
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ServerError::DataDir {
        path: args.data_dir.display().to_string(),
        source,
    })?;

    let db = storage::open_db(&args.data_dir)?;
    let peer_listener = transport::bind(&peer_listen).await?;
    let http_listener =
        TcpListener::bind(&args.http)
            .await
            .map_err(|source| ServerError::HttpBind {
                addr: args.http.clone(),
                source,
            })?;
    let (mut book, voters) =
        membership(&args, &db, &cluster, &advertise_peer, &advertise_http).await?;
    book.entry(args.id).or_insert_with(|| MemberAddr {
        peer_addr: advertise_peer.clone(),
        http_addr: Some(advertise_http.clone()),
    });
    storage::write_members(&db, &members::encode(&book))?;
    let store = RaftLogStore::open(db.clone(), &voters)?;
    let sm = StateMachine::new(db.clone());

    let (tx, rx) = mpsc::channel();
    let incarnation = storage::incarnation(&db)?;
    let peers: HashMap<u64, String> = book
        .iter()
        .map(|(id, a)| (*id, a.peer_addr.clone()))
        .collect();
    let transport = Transport::start(
        args.id,
        advertise_http.clone(),
        incarnation,
        &peers,
        tx.clone(),
        sm.clone(),
    );
    let raft_cfg = RaftConfig {
        id: args.id,
        voters,
        tick: Duration::from_millis(args.tick_ms),
        election_ticks: args.election_ticks,
        heartbeat_ticks: args.heartbeat_ticks,
        read_timeout: args.read_timeout,
        sync_timeout: args.sync_timeout,
        snapshot_entries: args.snapshot_entries,
    };
    let (node, raft_thread) = raft_node::start(
        raft_cfg,
        store,
        sm.clone(),
        book,
        transport.clone(),
        tx,
        rx,
        &raft_logger(),
    )?;
    let router = Router::new(node.clone(), transport.clone());
    let inbound = Arc::new(PeerFrames {
        node: node.clone(),
        router: router.clone(),
        sm: sm.clone(),
    });
    let peer_task = tokio::spawn(transport.clone().serve_inbound(peer_listener, inbound));

    let api_state = Api::new(
        ApiConfig {
            max_value_bytes: args.max_value_bytes,
            default_mode: args.default_mode,
            request_timeout: args.request_timeout,
            read_timeout: args.read_timeout,
        },
        node.clone(),
        sm,
        router,
        advertise_http,
        {
            let t = transport.clone();
            Box::new(move || -> HashMap<u64, String> { t.peer_http_addrs() })
        },
    );
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let http_task = tokio::spawn(api::serve(http_listener, api_state, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    info!(
        id = args.id,
        http = %args.http,
        peer = %peer_listen,
        data_dir = %args.data_dir.display(),
        "keel node started"
    );

    let mut raft_done = tokio::task::spawn_blocking(move || raft_thread.join());
    let shared = node.shared().clone();
    let removed = shared.removed();
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            info!("shutting down");
            hand_over_leadership(&node).await;
            let _ = stop_tx.send(true);
            node.send(Event::Shutdown);
            match tokio::time::timeout(Duration::from_secs(5), &mut raft_done).await {
                Ok(Ok(Ok(Ok(())))) | Err(_) => Ok(()),
                Ok(Ok(Ok(Err(e)))) => Err(ServerError::Storage(e)),
                Ok(Ok(Err(_))) | Ok(Err(_)) => Err(ServerError::RaftLoop("panicked".into())),
            }
        }
        _ = removed => {
            info!("removed from the cluster: stopping");
            let _ = stop_tx.send(true);
            node.send(Event::Shutdown);
            let _ = tokio::time::timeout(Duration::from_secs(5), &mut raft_done).await;
            Ok(())
        }
        joined = &mut raft_done => {
            let _ = stop_tx.send(true);
            match joined {
                Ok(Ok(Ok(()))) => Err(ServerError::RaftLoop("ended unexpectedly".into())),
                Ok(Ok(Err(e))) => Err(ServerError::Storage(e)),
                Ok(Err(_)) | Err(_) => Err(ServerError::RaftLoop("panicked".into())),
            }
        }
    };
    http_task.abort();
    peer_task.abort();
    if let Err(e) = &outcome {
        error!(error = %e, "node stopped");
    }
    outcome
}

/// A leader that stops on purpose hands leadership to its most up-to-date voter first, so that
/// a planned restart costs no election timeout.
async fn hand_over_leadership(node: &NodeHandle) {
    let Some(report) = node.status().await else {
        return;
    };
    if report.role != raft_node::Role::Leader {
        return;
    }
    let Some(target) = api::best_successor(&report) else {
        return;
    };
    info!(to = target, "handing leadership over before stopping");
    node.send(Event::TransferLeader(target));
    let moved = node
        .shared()
        .wait_leader(HANDOVER_WAIT, |l| l.is_some_and(|l| l != report.id))
        .await;
    if !moved {
        warn!("leadership did not move in time; stopping anyway");
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `keel restore`: fills a new node's data directory from a backup, so that it starts at the
/// backup's applied index with the new cluster's membership.
pub fn restore(args: crate::config::RestoreArgs) -> Result<String, ServerError> {
    let cluster = crate::config::parse_cluster(&args.cluster)?;
    if args.data_dir.exists()
        && std::fs::read_dir(&args.data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(ConfigError::Invalid(format!(
            "{} exists and is not empty",
            args.data_dir.display()
        ))
        .into());
    }
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ServerError::DataDir {
        path: args.data_dir.display().to_string(),
        source,
    })?;
    let db = storage::open_db(&args.data_dir)?;
    let sm = StateMachine::new(db.clone());
    let (index, term, keys) = sm.restore_from(&args.from)?;
    let voters = members::ids_sorted(&cluster);
    storage::bootstrap(&db, &voters, index, term)?;
    storage::write_members(&db, &members::encode(&members::from_cluster(&cluster)))?;
    Ok(format!(
        "restored {keys} keys at index {index} (term {term}) into {} for members {voters:?}",
        args.data_dir.display()
    ))
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
        let db = storage::open_db(&args.data_dir).expect("open RocksDB");
        let (_, voters) = membership(&args, &db, &cluster, "127.0.0.1:1", "127.0.0.1:7001")
            .await
            .expect("a new node takes its members from --cluster");
        assert_eq!(voters, vec![1, 2, 3]);
        storage::write_members(&db, b"{\"1\": not json").expect("write");
        let err = membership(&args, &db, &cluster, "127.0.0.1:1", "127.0.0.1:7001")
            .await
            .expect_err("a damaged address book must not be ignored");
        assert!(matches!(err, ServerError::CorruptMembers(_)), "{err}");
    }
}
