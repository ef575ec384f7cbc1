//! The flags of `keel server` and `keel restore` (every server flag may also come from a `KEEL_*`
//! environment variable) and their validation into typed settings. The `keel` binary embeds
//! them in its command line.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use keel_api::WriteMode;

/// Flags of `keel restore`.
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The backup (a directory written by `keel backup`).
    #[arg(long)]
    pub from: PathBuf,
    /// The new node's data directory (must not exist or be empty).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// The new cluster's members: `1=host:port,2=host:port,...`.
    #[arg(long)]
    pub cluster: String,
}

/// Flags of `keel server`.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    /// This node's id (a member of --cluster).
    #[arg(long, env = "KEEL_ID")]
    pub id: u64,
    /// Address the client HTTP API listens on.
    #[arg(long, env = "KEEL_HTTP", default_value = "127.0.0.1:7001")]
    pub http: String,
    /// Address the peer transport listens on (default: this node's entry in --cluster).
    #[arg(long, env = "KEEL_PEER")]
    pub peer: Option<String>,
    /// HTTP address other nodes and clients should use for this node (default: --http).
    #[arg(long, env = "KEEL_ADVERTISE_HTTP")]
    pub advertise_http: Option<String>,
    /// Directory of this node's RocksDB database.
    #[arg(long, env = "KEEL_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Every initial member and its peer address: `1=host:port,2=host:port,...` (not needed
    /// with --join, nor once the node has data).
    #[arg(long, env = "KEEL_CLUSTER")]
    pub cluster: Option<String>,
    /// Join a running cluster through one of its members (host:port of its HTTP API): the node
    /// is added as a learner and catches up by snapshot; promote it with `keel member promote`.
    #[arg(long, env = "KEEL_JOIN")]
    pub join: Option<String>,
    /// Peer address other nodes should dial (default: --peer).
    #[arg(long, env = "KEEL_ADVERTISE_PEER")]
    pub advertise_peer: Option<String>,
    /// Mode of writes that do not give `?mode=`.
    #[arg(long, env = "KEEL_DEFAULT_MODE", default_value = "semi")]
    pub default_mode: WriteMode,
    /// How long a `sync` write waits for every voter before answering 504.
    #[arg(long, env = "KEEL_SYNC_TIMEOUT", default_value = "2s", value_parser = humantime::parse_duration)]
    pub sync_timeout: Duration,
    /// Deadline of a write, forwarding included.
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// How long a read may wait for its read index or for `min_index`.
    #[arg(long, env = "KEEL_READ_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub read_timeout: Duration,
    /// Largest value accepted, in bytes (at most 32 MiB: [`MAX_VALUE_BYTES_LIMIT`]).
    #[arg(long, env = "KEEL_MAX_VALUE_BYTES", default_value_t = 1024 * 1024)]
    pub max_value_bytes: usize,
    /// Length of a Raft tick in milliseconds.
    #[arg(long, env = "KEEL_TICK_MS", default_value_t = 100)]
    pub tick_ms: u64,
    /// Election timeout in ticks (randomised in [n, 2n)).
    #[arg(long, env = "KEEL_ELECTION_TICKS", default_value_t = 10)]
    pub election_ticks: usize,
    /// Heartbeat interval in ticks.
    #[arg(long, env = "KEEL_HEARTBEAT_TICKS", default_value_t = 2)]
    pub heartbeat_ticks: usize,
    /// Compact the Raft log after this many applied entries (keeping half for lagging
    /// followers; one further behind gets a snapshot); 0 never compacts.
    #[arg(long, env = "KEEL_SNAPSHOT_ENTRIES", default_value_t = 10_000)]
    pub snapshot_entries: u64,
    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long, env = "KEEL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Memory for records of keys read before, in MiB (point reads answer from it instead of
    /// RocksDB; kept coherent with every write); 0 turns it off.
    #[arg(long, env = "KEEL_VALUE_CACHE_MIB", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(0..=65_536))]
    pub value_cache_mib: u64,
    /// Keep the changes of this many most recent entries for watches to resume from (a watch
    /// starting before them is answered 410 `compacted`).
    #[arg(long, env = "KEEL_WATCH_HISTORY", default_value_t = crate::sm::DEFAULT_HISTORY_ENTRIES)]
    pub watch_history: u64,
    /// Hold this many recent changes in memory for watchers (a watcher further behind than
    /// them, or than `--watch-buffer-bytes`, is cut off and resumes from the change log).
    #[arg(long, env = "KEEL_WATCH_BUFFER", default_value_t = 65_536)]
    pub watch_buffer: usize,
    /// Hold at most this many bytes of recent changes in memory for watchers.
    #[arg(long, env = "KEEL_WATCH_BUFFER_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub watch_buffer_bytes: usize,
    /// Bearer tokens with roles (JSON; see docs/security.md): with it, every request but
    /// `/health` and `/ready` needs a token. Re-read when the file changes.
    #[arg(long, env = "KEEL_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// The directory backups are written under (`POST /v1/admin/backup` names a new directory
    /// in it); without it, backups are refused.
    #[arg(long, env = "KEEL_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Threads that serve client and peer connections (the async runtime's workers); 0: one per
    /// core. Nodes that share a machine do better with a share of its cores each: `keel
    /// cluster` gives each of its nodes [`worker_share`] (docs/operations.md, "Worker threads").
    #[arg(long, env = "KEEL_WORKER_THREADS", default_value_t = 0,
          value_parser = clap::value_parser!(u16).range(0..=1024))]
    pub worker_threads: u16,
    /// Client writes that may wait for the Raft thread at once, and, counted apart, linearizable
    /// reads that may wait for their read index; more are answered 503 `overloaded` with
    /// `Retry-After` (and counted in /metrics).
    #[arg(long, env = "KEEL_MAX_PENDING", default_value_t = 10_000)]
    pub max_pending: usize,
    /// Client connections (HTTP) served at once; one more is closed as soon as it is accepted
    /// (counted, logged). Fewer when the open-file limit (`ulimit -n`, raised at start to its
    /// hard limit) leaves less room beside RocksDB and the node's own files (logged at start,
    /// `keel_http_connections_max`).
    #[arg(long, env = "KEEL_MAX_CONNECTIONS", default_value_t = crate::http::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Writes forwarded by other nodes that this node (as leader) serves at once; more are
    /// refused at once as 503 `overloaded` (counted), without a task each.
    #[arg(long, env = "KEEL_MAX_FORWARDED", default_value_t = crate::forward::MAX_FORWARDED_WRITES)]
    pub max_forwarded: usize,
    /// The token this node presents when it asks a member to add it (`--join`; admin role).
    #[arg(long, env = "KEEL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// This node's certificate chain (PEM; `keel certs` writes one): with --tls-key and
    /// --tls-ca, both ports speak TLS and peers authenticate each other (docs/security.md).
    #[arg(long, env = "KEEL_TLS_CERT", requires_all = ["tls_key", "tls_ca"])]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "KEEL_TLS_KEY", requires_all = ["tls_cert", "tls_ca"])]
    pub tls_key: Option<PathBuf>,
    /// The CA that every peer's (and client's) certificate must chain to (PEM).
    #[arg(long, env = "KEEL_TLS_CA", requires_all = ["tls_cert", "tls_key"])]
    pub tls_ca: Option<PathBuf>,
    /// Whether HTTP clients present certificates (from --tls-ca): none, optional or required.
    #[arg(
        long,
        env = "KEEL_CLIENT_CERTS",
        default_value = "none",
        requires = "tls_cert"
    )]
    pub client_certs: crate::tls::ClientCerts,
}

impl ServerArgs {
    /// The TLS files, when TLS is on.
    pub fn tls_files(&self) -> Option<crate::tls::TlsFiles> {
        Some(crate::tls::TlsFiles {
            cert: self.tls_cert.clone()?,
            key: self.tls_key.clone()?,
            ca: self.tls_ca.clone()?,
        })
    }
}

/// Invalid flags.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--cluster` did not parse.
    #[error("invalid --cluster {0:?}: expected id=host:port,id=host:port,...")]
    Cluster(String),
    /// This node is not a member.
    #[error("--id {0} is not in --cluster")]
    NotAMember(u64),
    /// Some other setting is out of range.
    #[error("{0}")]
    Invalid(String),
}

/// Parses `1=host:port,2=host:port`.
pub fn parse_cluster(spec: &str) -> Result<HashMap<u64, String>, ConfigError> {
    let mut members = HashMap::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| ConfigError::Cluster(spec.to_string()))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| ConfigError::Cluster(spec.to_string()))?;
        let addr = addr.trim();
        if id == 0
            || addr.rsplit_once(':').is_none()
            || members.insert(id, addr.to_string()).is_some()
        {
            return Err(ConfigError::Cluster(spec.to_string()));
        }
    }
    if members.is_empty() {
        return Err(ConfigError::Cluster(spec.to_string()));
    }
    Ok(members)
}

impl ServerArgs {
    /// Checks cross-flag constraints; returns the `--cluster` members (empty with --join).
    pub fn validate(&self) -> Result<HashMap<u64, String>, ConfigError> {
        let members = match (&self.cluster, &self.join) {
            (Some(c), _) => parse_cluster(c)?,
            (None, Some(_)) => HashMap::new(),
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "give --cluster (a new cluster, or a node with data) or --join".into(),
                ))
            }
        };
        if self.cluster.is_some() && !members.contains_key(&self.id) {
            return Err(ConfigError::NotAMember(self.id));
        }
        if self.id == 0 {
            return Err(ConfigError::Invalid("--id must be at least 1".into()));
        }
        if self.cluster.is_none() && self.peer.is_none() {
            return Err(ConfigError::Invalid("--join needs --peer".into()));
        }
        if self.tick_ms == 0
            || self.heartbeat_ticks == 0
            || self.election_ticks <= self.heartbeat_ticks
        {
            return Err(ConfigError::Invalid(
                "need --tick-ms > 0 and 0 < --heartbeat-ticks < --election-ticks".into(),
            ));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > MAX_VALUE_BYTES_LIMIT {
            return Err(ConfigError::Invalid(format!(
                "--max-value-bytes must be between 1 and {MAX_VALUE_BYTES_LIMIT} (32 MiB): a \
                 value travels to the other members in one peer frame of at most 64 MiB, with \
                 its key and, in a snapshot, up to a chunk's worth of other records"
            )));
        }
        if self.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "--max-connections must be at least 1".into(),
            ));
        }
        Ok(members)
    }
}

/// The largest `--max-value-bytes`. A write travels to the followers in one log append, and a
/// record in a snapshot chunk with up to [`crate::snapshot::send::SNAPSHOT_CHUNK_BYTES`] of others
/// before it; both must fit one peer frame ([`crate::transport::MAX_FRAME_BYTES`]), with room
/// for the key (4 KiB at most), the record's and the message's own fields. Up to 2026-12-08
/// the limit was 64 MiB: a value of 64 MiB made an append the followers refused (and dropped
/// the connection for), so the write never committed and the leader lost its leadership.
pub const MAX_VALUE_BYTES_LIMIT: usize = 32 * 1024 * 1024;

const _: () = assert!(
    MAX_VALUE_BYTES_LIMIT + crate::snapshot::send::SNAPSHOT_CHUNK_BYTES + 1024 * 1024
        <= crate::transport::MAX_FRAME_BYTES
);

// A transaction may get one value of the largest size.
const _: () = assert!(keel_api::limits::MAX_TXN_RESULT_BYTES >= MAX_VALUE_BYTES_LIMIT);

// A transaction's answer (its gets' values and keys) goes back to a forwarding follower in one
// frame, and is kept with its idempotency key, a record a snapshot chunk carries.
const _: () = {
    use keel_api::limits::{MAX_KEY_BYTES, MAX_TXN_OPS, MAX_TXN_RESULT_BYTES};
    assert!(
        MAX_TXN_RESULT_BYTES
            + MAX_TXN_OPS * MAX_KEY_BYTES
            + crate::snapshot::send::SNAPSHOT_CHUNK_BYTES
            + 1024 * 1024
            <= crate::transport::MAX_FRAME_BYTES
    );
};

/// Worker threads for each of `nodes` nodes sharing this machine: an equal share of its cores,
/// at least one. A node's workers park whenever its requests wait (for a read index, a commit),
/// and on a machine with fewer cores than workers every wake-up of a parked worker is a context
/// switch; a share keeps the nodes' workers from outnumbering the cores (docs/benchmarks.md,
/// "One worker per core").
pub fn worker_share(nodes: usize) -> usize {
    share_of(
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        nodes,
    )
}

/// `cores` shared by `nodes` (none counts as one): an equal share, at least one.
fn share_of(cores: usize, nodes: usize) -> usize {
    (cores / nodes.max(1)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_spec() {
        let m = parse_cluster("1=127.0.0.1:7101, 2=node2:7102,3=[::1]:7103").unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[&2], "node2:7102");
        for bad in ["", "1", "0=a:1", "1=a:1,1=b:2", "x=a:1", "1=nohostport"] {
            assert!(parse_cluster(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn nodes_sharing_a_machine_get_an_equal_share_of_its_cores_at_least_one() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(worker_share(1), cores);
        assert_eq!(worker_share(0), cores, "no nodes counts as one");
        assert_eq!(worker_share(cores), 1);
        assert_eq!(worker_share(cores + 1), 1, "never none");
        // The rule on machines other than this one: shares never outnumber the cores, unless
        // one each already does.
        for cores in 1..=64 {
            for nodes in 1..=9 {
                let share = share_of(cores, nodes);
                assert!(share >= 1, "{cores} cores, {nodes} nodes: none");
                assert!(
                    share * nodes <= cores.max(nodes),
                    "{cores} cores, {nodes} nodes: {share} each"
                );
                assert!(
                    (share + 1) * nodes > cores,
                    "{cores} cores, {nodes} nodes: {share} each leaves a share unused"
                );
            }
        }
        assert_eq!((share_of(2, 3), share_of(8, 3), share_of(16, 5)), (1, 2, 3));
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, the request span's id).
    Json,
}
