//! The `keel` CLI's client commands (`get`, `put`, `delete`, `list`, `cas`, `add`, `txn`,
//! `status`, `member`, `health`, `backup`, `transfer-leader`), all on the `keel-client`
//! library.

use std::io::Read;
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use keel_api::txn::TxnRequest;
use keel_client::http::{HttpClient, HttpOptions};
use keel_client::{Client, Consistency, Error, Mode, PutOptions};
use serde_json::json;

use crate::opts::Endpoints;

/// How long `keel health` waits for an answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// Read consistency on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CliConsistency {
    /// Raft ReadIndex.
    Linearizable,
    /// Local state of the node asked.
    Stale,
}

/// Write mode on the command line.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum CliMode {
    /// Leader's log.
    Async,
    /// Majority.
    Semi,
    /// Every voter.
    Sync,
}

impl From<CliMode> for Mode {
    fn from(m: CliMode) -> Mode {
        match m {
            CliMode::Async => Mode::Async,
            CliMode::Semi => Mode::Semi,
            CliMode::Sync => Mode::Sync,
        }
    }
}

/// Client commands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Print a key's value.
    Get {
        /// The key.
        key: String,
        /// Read consistency.
        #[arg(long, value_enum, default_value = "linearizable")]
        consistency: CliConsistency,
    },
    /// Set a key.
    Put {
        /// The key.
        key: String,
        /// The value (read from stdin when `-`).
        value: String,
        /// Write mode.
        #[arg(long, value_enum, default_value = "semi")]
        mode: CliMode,
        /// Only create: fail if the key exists.
        #[arg(long)]
        if_absent: bool,
    },
    /// Delete a key.
    Delete {
        /// The key.
        key: String,
        /// Only if the key has this version.
        #[arg(long)]
        if_version: Option<u64>,
    },
    /// List keys by prefix, in order.
    List {
        /// The prefix.
        #[arg(default_value = "")]
        prefix: String,
        /// Most keys.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Start after this key.
        #[arg(long)]
        after: Option<String>,
    },
    /// Compare-and-set: write only if the key's version is VERSION.
    Cas {
        /// The key.
        key: String,
        /// The expected version.
        version: u64,
        /// The new value.
        value: String,
    },
    /// Atomic add on an integer value.
    Add {
        /// The key.
        key: String,
        /// The amount (negative to subtract).
        #[arg(allow_hyphen_values = true)]
        delta: i64,
        /// Refuse if the result would be below this.
        #[arg(long, allow_hyphen_values = true)]
        min: Option<i64>,
        /// Refuse if the result would be above this.
        #[arg(long, allow_hyphen_values = true)]
        max: Option<i64>,
    },
    /// Run a transaction given as the JSON body of POST /v1/txn (a file, or `-` for stdin).
    Txn {
        /// The file.
        file: String,
    },
    /// Show the cluster's status as the leader sees it.
    Status,
    /// Membership: add a learner, promote it, remove a member, list members.
    Member {
        /// What to do.
        #[command(subcommand)]
        action: MemberAction,
    },
    /// Exit 0 if the first endpoint answers /health (or /ready with --ready): for health checks.
    Health {
        /// Check readiness (a leader is known and this node has caught up) instead of liveness.
        #[arg(long)]
        ready: bool,
    },
    /// Take a consistent backup: the node writes a checkpoint into a new directory under its
    /// `--backup-dir`, on its own machine.
    Backup {
        /// A new directory's name (relative to the node's --backup-dir, or an absolute path
        /// inside it).
        #[arg(long)]
        to: String,
    },
    /// Hand leadership to another voter (the most up-to-date one unless --to).
    TransferLeader {
        /// The voter to lead.
        #[arg(long)]
        to: Option<u64>,
    },
}

/// Membership commands.
#[derive(Subcommand, Debug)]
pub enum MemberAction {
    /// Add a node as a learner (start it with `keel server --join` instead to do both at once).
    Add {
        /// Its id.
        id: u64,
        /// Its peer address (host:port).
        peer_addr: String,
        /// Its client address (host:port).
        #[arg(long)]
        http: Option<String>,
    },
    /// Make a caught-up learner a voter.
    Promote {
        /// Its id.
        id: u64,
    },
    /// Remove a member (transfer leadership away from it first if it leads).
    Remove {
        /// Its id.
        id: u64,
    },
    /// List the members.
    List,
}

/// Runs a client command; the exit code is 0 on success, 1 on error, 2 for a missing key.
pub async fn run(endpoints: &Endpoints, cmd: ClientCommand) -> i32 {
    let eps = endpoints.list();
    let tls = match endpoints.tls() {
        Ok(t) => t,
        Err(e) => {
            eprintln!("keel: {e}");
            return 1;
        }
    };
    if let ClientCommand::Health { ready } = cmd {
        return health(
            eps.first().map(String::as_str).unwrap_or_default(),
            ready,
            tls,
        )
        .await;
    }
    let built = match endpoints.builder() {
        Ok(b) => b.build().await,
        Err(e) => {
            eprintln!("keel: {e}");
            return 1;
        }
    };
    let client = match built {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: {e}");
            return 1;
        }
    };
    match execute(&client, cmd).await {
        Ok(out) => {
            if !out.is_empty() {
                outln!("{out}");
            }
            0
        }
        Err(e @ Error::NotFound { .. }) => {
            eprintln!("keel: {e}");
            2
        }
        Err(e) => {
            eprintln!("keel: {e}");
            1
        }
    }
}

/// One GET of /health or /ready on `endpoint`, without the client's discovery and retries.
async fn health(endpoint: &str, ready: bool, tls: Option<keel_client::TlsOptions>) -> i32 {
    let path = if ready { "/ready" } else { "/health" };
    let http = HttpClient::new(HttpOptions {
        connect_timeout: HEALTH_TIMEOUT,
        request_timeout: HEALTH_TIMEOUT,
        tls,
        ..HttpOptions::default()
    });
    let endpoint = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    match http
        .request(endpoint, "GET", path, &[], bytes::Bytes::new())
        .await
    {
        Ok(resp) if (200..300).contains(&resp.status) => 0,
        _ => {
            eprintln!(
                "keel: {endpoint} is not {}",
                if ready { "ready" } else { "healthy" }
            );
            1
        }
    }
}

async fn execute(client: &Client, cmd: ClientCommand) -> Result<String, Error> {
    Ok(match cmd {
        ClientCommand::Get { key, consistency } => {
            let c = match consistency {
                CliConsistency::Linearizable => Consistency::Linearizable,
                CliConsistency::Stale => Consistency::Stale,
            };
            let kv = client.get_with(&key, c).await?;
            String::from_utf8_lossy(&kv.value).into_owned()
        }
        ClientCommand::Put {
            key,
            value,
            mode,
            if_absent,
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::stdin()
                    .read_to_end(&mut buf)
                    .map_err(|e| Error::BadRequest {
                        code: "stdin".into(),
                        message: e.to_string(),
                    })?;
                buf
            } else {
                value.into_bytes()
            };
            let mut opts = PutOptions::new().mode(mode.into());
            if if_absent {
                opts = opts.if_absent();
            }
            let r = client.put_with(&key, value, opts).await?;
            json!({"index": r.index, "version": r.version, "acked": format!("{:?}", r.acked)})
                .to_string()
        }
        ClientCommand::Delete { key, if_version } => {
            let r = client.delete_if(&key, if_version).await?;
            json!({"index": r.index, "deleted": r.deleted}).to_string()
        }
        ClientCommand::List {
            prefix,
            limit,
            after,
        } => {
            let page = client.list(&prefix, after.as_deref(), limit).await?;
            let mut lines: Vec<String> = page
                .items
                .iter()
                .map(|kv| format!("{}\t{}", kv.key, String::from_utf8_lossy(&kv.value)))
                .collect();
            if page.more {
                lines.push("(more)".into());
            }
            lines.join("\n")
        }
        ClientCommand::Cas {
            key,
            version,
            value,
        } => {
            let r = client.compare_and_set(&key, version, value).await?;
            json!({"index": r.index, "version": r.version}).to_string()
        }
        ClientCommand::Add {
            key,
            delta,
            min,
            max,
        } => {
            let r = client.add_bounded(&key, delta, min, max).await?;
            json!({"value": r.value, "index": r.index, "version": r.version}).to_string()
        }
        ClientCommand::Txn { file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::stdin()
                    .read_to_string(&mut s)
                    .map(|_| s)
                    .map_err(|e| e.to_string())
            } else {
                std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))
            }
            .map_err(|message| Error::BadRequest {
                code: "input".into(),
                message,
            })?;
            let req: TxnRequest = serde_json::from_str(&text).map_err(|e| Error::BadRequest {
                code: "invalid_json".into(),
                message: e.to_string(),
            })?;
            let mut t = client.txn();
            for c in req.compare {
                t = t.when(c);
            }
            for op in req.success {
                t = t.then(op);
            }
            for op in req.failure {
                t = t.otherwise(op);
            }
            let r = t.commit().await?;
            serde_json::to_string(&r).map_err(|e| Error::Unexpected(e.to_string()))?
        }
        ClientCommand::Member { action } => {
            let members = match action {
                MemberAction::Add {
                    id,
                    peer_addr,
                    http,
                } => client.add_member(id, &peer_addr, http.as_deref()).await?,
                MemberAction::Promote { id } => client.promote_member(id).await?,
                MemberAction::Remove { id } => client.remove_member(id).await?,
                MemberAction::List => client.list_members().await?,
            };
            members
                .iter()
                .map(|m| {
                    format!(
                        "{}\t{}\tpeer {}\thttp {}",
                        m.id,
                        m.role.map_or("?", |r| r.as_str()),
                        m.peer_addr,
                        m.http_addr.as_deref().unwrap_or("?")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n")
        }
        ClientCommand::Health { .. } => String::new(),
        ClientCommand::Backup { to } => {
            let (index, dir) = client.backup(&to).await?;
            format!("backup of index {index} written to {dir}")
        }
        ClientCommand::TransferLeader { to } => {
            let leader = client.transfer_leader(to).await?;
            format!("node {leader} leads")
        }
        ClientCommand::Status => {
            let s = client.status().await?;
            let mut out = format!(
                "node {} ({}), term {}, leader {:?}, commit {}, applied {}",
                s.id,
                s.role.as_str(),
                s.term,
                s.leader,
                s.commit_index,
                s.applied_index
            );
            for m in &s.members {
                out.push_str(&format!(
                    "\n  member {}: http {}, peer {}",
                    m.id,
                    m.http_addr.as_deref().unwrap_or("?"),
                    m.peer_addr
                ));
            }
            for p in s.progress.iter().flatten() {
                out.push_str(&format!(
                    "\n  progress {}: match {}, applied {}, lag {}, {}",
                    p.id,
                    p.match_index,
                    p.applied_index,
                    p.lag,
                    if p.reachable {
                        "reachable"
                    } else {
                        "UNREACHABLE"
                    }
                ));
            }
            out
        }
    })
}
