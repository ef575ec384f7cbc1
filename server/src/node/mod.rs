//! # node: the wiring of one node
//!
//! This module owns the start and the stop of a node and nothing of what happens in between: it
//! opens storage, decides the initial membership (`membership.rs`), starts the Ready loop, the
//! peer transport and the HTTP API, connects the stages that must not know each other
//! (`wiring.rs`), and shuts everything down in order on SIGINT/SIGTERM (`shutdown.rs`). It also
//! restores a backup into a new data directory ([`restore`]).
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

use crate::config::{ConfigError, RestoreArgs, ServerArgs};
use crate::forward::Router;
use crate::http::{self, Api, ApiConfig};
use crate::members::{self, MemberAddr};
use crate::raft::{self, Event, LoopParts, RaftConfig};
use crate::sm::StateMachine;
use crate::snapshot;
use crate::storage::{self, meta, RaftLogStore, StorageError};
use crate::tls::{Tls, TlsError};
use crate::transport::{self, Transport, TransportError};
use crate::watch::{Feed, FeedLimits};

pub mod files;
mod membership;
mod shutdown;
mod wiring;

pub use membership::{Join, JoinRequest, NoJoin};

/// How long the Ready loop gets to stop once told to.
const LOOP_STOP_WAIT: Duration = Duration::from_secs(5);

/// Why a node could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad flags.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A directory (data, backups) could not be created.
    #[error("cannot create directory {path}: {source}")]
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
    Raft(#[from] ::raft::Error),
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
    /// The auth file cannot be used.
    #[error(transparent)]
    Auth(#[from] crate::http::auth::AuthFileError),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The address book stored in the data dir does not parse.
    #[error("the member address book in the data dir is damaged: {0}")]
    CorruptMembers(#[source] serde_json::Error),
    /// The open-file limit leaves no room for a node.
    #[error(transparent)]
    Files(#[from] files::TooFewFiles),
}

/// Routes raft-rs's slog output into `tracing` (through the `log` facade).
fn raft_logger() -> slog::Logger {
    slog::Logger::root(slog_stdlog::StdLog.fuse(), slog::o!())
}

/// Runs a node until SIGINT/SIGTERM, its removal from the cluster, or a fatal error. `join`
/// is how it joins a running cluster when started with `--join`.
pub async fn run(args: ServerArgs, join: &impl Join) -> Result<(), ServerError> {
    #[cfg(feature = "failpoints")]
    let _failpoints = crate::failpoints::setup();
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
    let tls = match args.tls_files() {
        Some(files) => Some(Arc::new(Tls::load(files, args.client_certs)?)),
        None => None,
    };
    let tokens = match &args.auth_file {
        Some(path) => Some(Arc::new(crate::http::auth::Tokens::load(path)?)),
        None => None,
    };
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ServerError::DataDir {
        path: args.data_dir.display().to_string(),
        source,
    })?;
    // The backup directory, created and resolved once (symbolic links in its own path are
    // followed here, so that a path inside it compares as inside).
    let backup_dir = match &args.backup_dir {
        Some(dir) => {
            let made = std::fs::create_dir_all(dir).and_then(|()| dir.canonicalize());
            Some(made.map_err(|source| ServerError::DataDir {
                path: dir.display().to_string(),
                source,
            })?)
        }
        None => None,
    };

    // The open-file budget, before anything opens files.
    let limit = files::raise_limit().unwrap_or_else(|| {
        tracing::warn!("cannot read the open-file limit; client connections are not budgeted");
        u64::MAX
    });
    // At least 1: the flag's check refuses 0.
    let asked = args
        .max_connections
        .min(tokio::sync::Semaphore::MAX_PERMITS);
    let budget = files::split(limit, asked)?;
    info!(
        limit,
        rocksdb_files = budget.rocksdb_files,
        connections = budget.connections,
        "open-file budget"
    );
    if budget.connections < asked {
        tracing::warn!(
            limit,
            connections = budget.connections,
            asked,
            "the open-file limit leaves room for fewer client connections than --max-connections"
        );
    }

    // Storage and membership.
    let db = storage::open_db_with(&args.data_dir, Some(budget.rocksdb_files))?;
    // A snapshot install that a crash interrupted is finished before anything reads the state
    // machine or the log.
    if let Some(p) = snapshot::stage::finish_install(&db, snapshot::stage::INSTALL_BATCH_BYTES)? {
        info!(
            applied = p.applied,
            "finished a snapshot install that a crash interrupted"
        );
    }
    let peer_listener = transport::bind(&peer_listen).await?;
    let http_listener =
        TcpListener::bind(&args.http)
            .await
            .map_err(|source| ServerError::HttpBind {
                addr: args.http.clone(),
                source,
            })?;
    let (mut book, voters) =
        membership::initial(&args, &db, &cluster, &advertise_peer, &advertise_http, join).await?;
    book.entry(args.id).or_insert_with(|| MemberAddr {
        peer_addr: advertise_peer.clone(),
        http_addr: Some(advertise_http.clone()),
    });
    meta::write_members(&db, &book)?;
    let store = RaftLogStore::open(db.clone(), &voters)?;
    let cache_bytes = usize::try_from(args.value_cache_mib << 20).unwrap_or(usize::MAX);
    let mut sm = StateMachine::with_value_cache(db.clone(), cache_bytes);
    sm.open_history(args.watch_history)?;
    let feed = Arc::new(Feed::new(
        sm.applied_index()?,
        FeedLimits {
            max_changes: args.watch_buffer.max(1),
            max_bytes: args.watch_buffer_bytes.max(1),
        },
    ));
    let stage = snapshot::Stage::new(db.clone());

    // The transport and the Ready loop.
    let (tx, rx) = mpsc::channel();
    let incarnation = meta::incarnation(&db)?;
    let peers: HashMap<u64, String> = book
        .iter()
        .map(|(id, a)| (*id, a.peer_addr.clone()))
        .collect();
    let transport = Transport::start(
        args.id,
        advertise_http.clone(),
        incarnation,
        &peers,
        Arc::new(wiring::RaftEvents {
            tx: tx.clone(),
            inbox: crate::raft::inbox::Inbox::new(
                crate::raft::inbox::MAX_MESSAGES,
                crate::raft::inbox::MAX_BYTES,
            ),
        }),
        tls.clone(),
    );
    let outbox = wiring::PeerOutbox {
        transport: transport.clone(),
        snapshots: snapshot::Sender::new(db.clone()),
        node_tx: tx.clone(),
    };
    let dispatcher = tokio::spawn(feed.registry().clone().dispatch(feed.clone()));
    let (node, raft_thread) = raft::start(
        LoopParts {
            cfg: RaftConfig {
                id: args.id,
                tick: Duration::from_millis(args.tick_ms),
                election_ticks: args.election_ticks,
                heartbeat_ticks: args.heartbeat_ticks,
                read_timeout: args.read_timeout,
                sync_timeout: args.sync_timeout,
                snapshot_entries: args.snapshot_entries,
            },
            store,
            sm: sm.clone(),
            stage: stage.clone(),
            members: book,
            outbox,
            tx,
            rx,
            feed: feed.clone(),
        },
        &raft_logger(),
    )?;
    node.shared().set_max_queued(args.max_pending.max(1));
    let router = Router::new(
        node.clone(),
        transport.clone(),
        args.max_forwarded
            .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
    );
    let inbound = Arc::new(wiring::PeerFrames {
        node: node.clone(),
        router: router.clone(),
        stage,
    });
    let peer_task = tokio::spawn(transport.clone().serve_inbound(peer_listener, inbound));

    // The HTTP API.
    let api = Api::new(http::Parts {
        cfg: ApiConfig {
            max_value_bytes: args.max_value_bytes,
            default_mode: args.default_mode,
            request_timeout: args.request_timeout,
            read_timeout: args.read_timeout,
            backup_dir,
            // Twice the election timeout, as etcd does: a lease outlives an election.
            min_lease_ttl: Duration::from_millis(args.tick_ms)
                * u32::try_from(args.election_ticks.saturating_mul(2)).unwrap_or(u32::MAX),
            max_connections: budget.connections,
        },
        node: node.clone(),
        sm,
        feed: feed.clone(),
        db,
        router,
        http_addr: advertise_http,
        transport,
        tokens: tokens.clone(),
    });
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let watcher = tokio::spawn(watch_files(tokens, tls.clone(), stop_tx.subscribe()));
    let http_task = tokio::spawn(http::serve(http_listener, api, tls, async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    }));
    info!(
        id = args.id,
        http = %args.http,
        peer = %peer_listen,
        data_dir = %args.data_dir.display(),
        workers = tokio::runtime::Handle::current().metrics().num_workers(),
        "keel node started"
    );

    // Until a signal, a removal or a failure.
    let mut raft_done = tokio::task::spawn_blocking(move || raft_thread.join());
    let shared = node.shared().clone();
    let removed = shared.removed();
    let outcome = tokio::select! {
        _ = shutdown::signal() => {
            info!("shutting down");
            shutdown::hand_over_leadership(&node).await;
            let _ = stop_tx.send(true);
            node.send(Event::Shutdown);
            match tokio::time::timeout(LOOP_STOP_WAIT, &mut raft_done).await {
                Ok(Ok(Ok(Ok(())))) | Err(_) => Ok(()),
                Ok(Ok(Ok(Err(e)))) => Err(ServerError::Storage(e)),
                Ok(Ok(Err(_))) | Ok(Err(_)) => Err(ServerError::RaftLoop("panicked".into())),
            }
        }
        _ = removed => {
            info!("removed from the cluster: stopping");
            let _ = stop_tx.send(true);
            node.send(Event::Shutdown);
            let _ = tokio::time::timeout(LOOP_STOP_WAIT, &mut raft_done).await;
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
    // Watch streams end (a graceful stop tells their clients by closing, and they resume on
    // another node).
    feed.close();
    dispatcher.abort();
    http_task.abort();
    peer_task.abort();
    watcher.abort();
    if let Err(e) = &outcome {
        error!(error = %e, "node stopped");
    }
    outcome
}

/// Re-reads the auth file and the TLS files when they change, every second, until the node
/// stops. The reads are blocking file system calls: they run on the blocking pool.
async fn watch_files(
    tokens: Option<Arc<crate::http::auth::Tokens>>,
    tls: Option<Arc<Tls>>,
    mut stop: watch::Receiver<bool>,
) {
    if tokens.is_none() && tls.is_none() {
        return;
    }
    let mut every = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let (tokens, tls) = (tokens.clone(), tls.clone());
        let checked = tokio::task::spawn_blocking(move || {
            (
                tokens.and_then(|t| t.reload_if_changed()),
                tls.and_then(|t| t.reload_if_changed()),
            )
        })
        .await;
        let Ok((auth, certs)) = checked else {
            continue;
        };
        match auth {
            Some(Ok(n)) => info!(tokens = n, "auth file changed: tokens reloaded"),
            Some(Err(e)) => {
                error!(error = %e, "auth file changed but cannot be used; the previous tokens stay")
            }
            None => {}
        }
        match certs {
            Some(Ok(())) => info!("TLS files changed: new connections use them"),
            Some(Err(e)) => error!(
                error = %e,
                "TLS files changed but cannot be used; the previous certificates stay"
            ),
            None => {}
        }
    }
}

/// `keel restore`: fills a new node's data directory from a backup, so that it starts at the
/// backup's applied index with the new cluster's membership. Returns what it did, in words.
pub fn restore(args: RestoreArgs) -> Result<String, ServerError> {
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
    let (index, term, keys) = snapshot::backup::restore_from(&db, &args.from)?;
    let voters = members::ids_sorted(&cluster);
    meta::bootstrap(&db, &voters, index, term)?;
    meta::write_members(&db, &members::from_cluster(&cluster))?;
    Ok(format!(
        "restored {keys} keys at index {index} (term {term}) into {} for members {voters:?}",
        args.data_dir.display()
    ))
}
