//! `keel lease`, `keel lock` and `keel elect`: the coordination primitives of SPEC §8 from the
//! command line, on the client library.
//!
//! `keel lock NAME -- COMMAND` is the cron-job guard: the command runs only while this process
//! holds the lock, with the lock's fence in `KEEL_FENCE` (so that the command's own writes can
//! be fenced), and is killed if the lease is lost.

use std::time::Duration;

use clap::{Args, Subcommand};
use keel_client::{Client, Election, Error, LeaseLoss};
use serde_json::json;

use crate::opts::Endpoints;

/// `keel lease ...`
#[derive(Args, Debug)]
pub struct LeaseArgs {
    /// What to do.
    #[command(subcommand)]
    pub action: LeaseAction,
}

/// Lease commands.
#[derive(Subcommand, Debug)]
pub enum LeaseAction {
    /// Grant a lease (raised to twice the election timeout) and print its id; it is not kept
    /// alive (see `keepalive`).
    Grant {
        /// Time to live in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        ttl_ms: u64,
    },
    /// Reset a lease's countdown once.
    Keepalive {
        /// The lease id.
        id: u64,
    },
    /// Show a lease's TTL, time left, keys and locks.
    Show {
        /// The lease id.
        id: u64,
    },
    /// Revoke a lease: its keys are deleted and its locks released.
    Revoke {
        /// The lease id.
        id: u64,
    },
}

/// `keel lock NAME [-- COMMAND ...]`
#[derive(Args, Debug)]
pub struct LockArgs {
    /// The lock's name.
    pub name: String,
    /// The holder's value (shown to whoever looks at the lock).
    #[arg(long, default_value = "")]
    pub value: String,
    /// The lease's time to live in milliseconds (kept alive while the lock is held).
    #[arg(long, default_value_t = 10_000)]
    pub ttl_ms: u64,
    /// How long to wait in line for the lock, in milliseconds.
    #[arg(long, default_value_t = 60_000)]
    pub wait_ms: u64,
    /// A command to run while holding the lock (with KEEL_LOCK, KEEL_FENCE and KEEL_LEASE in
    /// its environment); without one, the lock is held until Ctrl-C.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `keel elect NAME [VALUE]`
#[derive(Args, Debug)]
pub struct ElectArgs {
    /// The election's name.
    pub name: String,
    /// This candidate's name; without it (or with --observe), only watch who leads.
    pub value: Option<String>,
    /// Only watch the leader change (a blocking read of the election's lock).
    #[arg(long)]
    pub observe: bool,
    /// Stop watching after this many changes (0: never).
    #[arg(long, default_value_t = 0)]
    pub changes: u64,
    /// The lease's time to live in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub ttl_ms: u64,
}

/// Runs `keel lease`; the exit code (0 ok, 1 error, 2 the lease does not exist).
pub async fn lease(endpoints: &Endpoints, args: LeaseArgs) -> i32 {
    let client = match connect(endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let out =
        match args.action {
            LeaseAction::Grant { ttl_ms } => client
                .grant_lease(Duration::from_millis(ttl_ms))
                .await
                .map(|r| json!({"id": r.id, "ttl_ms": r.ttl_ms, "index": r.index})),
            LeaseAction::Keepalive { id } => client
                .keep_alive(id)
                .await
                .map(|r| json!({"id": r.id, "ttl_ms": r.ttl_ms})),
            LeaseAction::Show { id } => client.lease_info(id).await.and_then(|i| {
                serde_json::to_value(i).map_err(|e| Error::Unexpected(e.to_string()))
            }),
            LeaseAction::Revoke { id } => client.revoke_lease(id).await.and_then(|r| {
                serde_json::to_value(r).map_err(|e| Error::Unexpected(e.to_string()))
            }),
        };
    finish(out)
}

/// Runs `keel lock`; the exit code is the command's, or 0 after Ctrl-C, 1 on error, 4 when the
/// lease was lost while holding the lock.
pub async fn lock(endpoints: &Endpoints, args: LockArgs) -> i32 {
    let client = match connect(endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let lease = match client.lease(Duration::from_millis(args.ttl_ms)).await {
        Ok(l) => l,
        Err(e) => return report(e),
    };
    let guard = match client
        .lock(
            &args.name,
            &lease,
            &args.value,
            Duration::from_millis(args.wait_ms),
        )
        .await
    {
        Ok(g) => g,
        Err(e) => {
            let _ = lease.revoke().await;
            return report(e);
        }
    };
    eprintln!(
        "keel: holding lock {:?} with fence {} (lease {})",
        guard.name, guard.fence, guard.lease
    );
    let code = if args.command.is_empty() {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => 0,
            why = lease.lost() => lost(&why),
        }
    } else {
        let mut child = match tokio::process::Command::new(&args.command[0])
            .args(&args.command[1..])
            .env("KEEL_LOCK", &guard.name)
            .env("KEEL_FENCE", guard.fence.to_string())
            .env("KEEL_LEASE", guard.lease.to_string())
            .kill_on_drop(true)
            .spawn()
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("keel: cannot run {:?}: {e}", args.command[0]);
                let _ = lease.revoke().await;
                return 1;
            }
        };
        tokio::select! {
            status = child.wait() => status.ok().and_then(|s| s.code()).unwrap_or(1),
            why = lease.lost() => {
                let _ = child.kill().await;
                lost(&why)
            }
            _ = tokio::signal::ctrl_c() => {
                let _ = child.kill().await;
                0
            }
        }
    };
    // Releasing is revoking the lease: the lock goes to the next in line.
    let _ = lease.revoke().await;
    code
}

/// Runs `keel elect`.
pub async fn elect(endpoints: &Endpoints, args: ElectArgs) -> i32 {
    let client = match connect(endpoints).await {
        Ok(c) => c,
        Err(code) => return code,
    };
    let election = Election::new(&client, &args.name);
    let Some(value) = args.value.filter(|_| !args.observe) else {
        return observe(&election, args.changes).await;
    };
    let lease = match client.lease(Duration::from_millis(args.ttl_ms)).await {
        Ok(l) => l,
        Err(e) => return report(e),
    };
    loop {
        match election
            .campaign(&lease, &value, Duration::from_secs(30))
            .await
        {
            Ok(g) => {
                let said = crate::out::try_write(format_args!(
                    "{}\n",
                    json!({"elected": args.name, "value": value, "fence": g.fence, "lease": g.lease})
                ));
                if let Err(e) = said {
                    // Nobody reads who leads: step down now rather than lead unseen until the
                    // lease runs out.
                    let _ = election.resign(&g).await;
                    let _ = lease.revoke().await;
                    return crate::out::failed(&e);
                }
                let code = tokio::select! {
                    _ = tokio::signal::ctrl_c() => 0,
                    why = lease.lost() => return lost(&why),
                };
                let _ = election.resign(&g).await;
                let _ = lease.revoke().await;
                return code;
            }
            Err(Error::LockHeld { .. }) => continue,
            Err(e) => return report(e),
        }
    }
}

async fn observe(election: &Election, changes: u64) -> i32 {
    let (mut leader, mut index) = match election.leader().await {
        Ok(l) => {
            let i = l.as_ref().map_or(0, |l| l.index);
            (l, i)
        }
        Err(e) => return report(e),
    };
    print_leader(leader.as_ref());
    let mut seen = 0;
    while changes == 0 || seen < changes {
        match election
            .observe(index.max(1), Duration::from_secs(60))
            .await
        {
            Ok((now, at)) => {
                index = index.max(at);
                let changed = now.as_ref().map(|l| l.fence) != leader.as_ref().map(|l| l.fence);
                if changed {
                    print_leader(now.as_ref());
                    seen += 1;
                }
                leader = now;
            }
            Err(e) => return report(e),
        }
    }
    0
}

fn print_leader(l: Option<&keel_client::LockHolderInfo>) {
    match l {
        Some(l) => outln!(
            "{}",
            json!({"leader": l.value.value, "fence": l.fence, "lease": l.lease, "index": l.index})
        ),
        None => outln!("{}", json!({"leader": null})),
    }
}

async fn connect(endpoints: &Endpoints) -> Result<Client, i32> {
    let builder = endpoints.builder().map_err(|e| {
        eprintln!("keel: {e}");
        1
    })?;
    builder.build().await.map_err(report)
}

fn lost(why: &LeaseLoss) -> i32 {
    eprintln!("keel: the lease was lost ({why:?}): no longer holding the lock");
    4
}

fn report(e: Error) -> i32 {
    eprintln!("keel: {e}");
    match e {
        Error::LeaseNotFound { .. } | Error::LockNotFound { .. } => 2,
        Error::LockHeld { .. } => 3,
        _ => 1,
    }
}

fn finish(out: Result<serde_json::Value, Error>) -> i32 {
    match out {
        Ok(v) => {
            outln!("{v}");
            0
        }
        Err(e) => report(e),
    }
}
