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
use tracing::{error, info};

use crate::api::{self, Api, ApiConfig};
use crate::config::{ConfigError, ServerArgs};
use crate::forward::Router;
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

/// Runs a node until SIGINT/SIGTERM or a fatal error.
pub async fn run(args: ServerArgs) -> Result<(), ServerError> {
    let members = args.validate()?;
    let peer_listen = args
        .peer
        .clone()
        .unwrap_or_else(|| members[&args.id].clone());
    let advertise_http = args
        .advertise_http
        .clone()
        .unwrap_or_else(|| args.http.clone());
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ServerError::DataDir {
        path: args.data_dir.display().to_string(),
        source,
    })?;

    let db = storage::open_db(&args.data_dir)?;
    let mut voters: Vec<u64> = members.keys().copied().collect();
    voters.sort_unstable();
    let store = RaftLogStore::open(db.clone(), &voters)?;
    let sm = StateMachine::new(db.clone());

    let peer_listener = transport::bind(&peer_listen).await?;
    let http_listener =
        TcpListener::bind(&args.http)
            .await
            .map_err(|source| ServerError::HttpBind {
                addr: args.http.clone(),
                source,
            })?;

    let (tx, rx) = mpsc::channel();
    let incarnation = storage::incarnation(&db)?;
    let transport = Transport::start(
        args.id,
        advertise_http.clone(),
        incarnation,
        &members,
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
    let peer_task = tokio::spawn(transport.clone().serve_inbound(
        peer_listener,
        members.clone(),
        inbound,
    ));

    let mut member_list: Vec<(u64, String)> =
        members.iter().map(|(k, v)| (*k, v.clone())).collect();
    member_list.sort_unstable();
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
        member_list,
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
    let outcome = tokio::select! {
        _ = shutdown_signal() => {
            info!("shutting down");
            let _ = stop_tx.send(true);
            node.send(Event::Shutdown);
            match tokio::time::timeout(Duration::from_secs(5), &mut raft_done).await {
                Ok(Ok(Ok(Ok(())))) | Err(_) => Ok(()),
                Ok(Ok(Ok(Err(e)))) => Err(ServerError::Storage(e)),
                Ok(Ok(Err(_))) | Ok(Err(_)) => Err(ServerError::RaftLoop("panicked".into())),
            }
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
