//! `keel demo balance | inventory | bank`: the correctness demonstrations of SPEC §4, on the
//! client library, against a running cluster (or one the demo starts for itself).
//!
//! Each demo runs the seed's small case step by step, then the same with a naive client that
//! reads, decides and writes back (GET then PUT), then both at scale through every node, and
//! prints what happened in plain words with the invariants checked. With `--kill-leader` it
//! starts its own local cluster and kills its leader with SIGKILL in the middle of the scaled
//! run; clients retry under their idempotency keys.
//!
//! Balance and inventory are the same pattern, a bounded decrement (withdraw from an account that
//! may not go below 0; sell from a stock that may not go below 0), told in different words.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use keel_client::{Client, Error, Mode, Op, PutOptions};
use rand::Rng;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Barrier;

use crate::cluster::LocalCluster;
use crate::config::ClusterArgs;

/// Which demonstration.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DemoKind {
    /// Concurrent withdrawals from one account.
    Balance,
    /// Concurrent purchases from one stock.
    Inventory,
    /// Transfers between accounts with transactions, and reads of all balances.
    Bank,
}

/// Flags of `keel demo`.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Which demonstration.
    #[arg(value_enum)]
    pub kind: DemoKind,
    /// Write mode of every write.
    #[arg(long, default_value = "semi")]
    pub mode: crate::mode::WriteMode,
    /// Operations in the scaled run.
    #[arg(long, default_value_t = 2000)]
    pub ops: u64,
    /// Concurrent clients in the scaled run.
    #[arg(long, default_value_t = 32)]
    pub clients: u64,
    /// Start a local 3-node cluster for the demo (in a temporary directory).
    #[arg(long)]
    pub local: bool,
    /// Kill -9 the leader in the middle of the scaled run (implies --local).
    #[arg(long)]
    pub kill_leader: bool,
    /// HTTP port of node 1 of the cluster started by --local.
    #[arg(long, default_value_t = 7301)]
    pub local_base_port: u16,
    /// Write a JSON summary here (the tests read it).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// Errors of the demos.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A request failed in a way the demo cannot go on from.
    #[error("{context}: {source}")]
    Client {
        /// What was being done.
        context: String,
        /// Why.
        #[source]
        source: Error,
    },
    /// The local cluster could not start.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// Something else.
    #[error("{0}")]
    Other(String),
}

fn failed(context: impl Into<String>) -> impl FnOnce(Error) -> DemoError {
    let context = context.into();
    move |source| DemoError::Client { context, source }
}

fn client_mode(m: crate::mode::WriteMode) -> Mode {
    match m {
        crate::mode::WriteMode::Async => Mode::Async,
        crate::mode::WriteMode::Semi => Mode::Semi,
        crate::mode::WriteMode::Sync => Mode::Sync,
    }
}

/// A client that sends everything through `endpoints` in turn (they forward writes).
async fn pinned(endpoints: &[String], mode: Mode) -> Result<Client, DemoError> {
    Client::builder(endpoints)
        .pin_to_endpoints(true)
        .default_mode(mode)
        .build()
        .await
        .map_err(failed("building a client"))
}

/// Runs a demo and returns whether every invariant held.
pub async fn run(endpoints: &crate::cli::Endpoints, args: DemoArgs) -> Result<bool, DemoError> {
    let mut local = None;
    let endpoints: Vec<String> = if args.local || args.kill_leader {
        let dir = std::env::temp_dir().join(format!("keel-demo-{}", std::process::id()));
        let lc = LocalCluster::start(&ClusterArgs {
            nodes: 3,
            data_dir: dir.clone(),
            base_port: args.local_base_port,
            default_mode: args.mode,
        })?;
        println!(
            "started a local 3-node cluster for the demo in {}",
            dir.display()
        );
        if lc.wait_for_leader(Duration::from_secs(30)).await.is_none() {
            return Err(DemoError::Other(
                "the local cluster elected no leader".into(),
            ));
        }
        let addrs = lc.http_addrs();
        local = Some((lc, dir));
        addrs
    } else {
        endpoints
            .endpoints
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    };
    if endpoints.is_empty() {
        return Err(DemoError::Other("no endpoints".into()));
    }
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let prefix = format!("demo/{run_id}");
    let mut dc = DemoCtx {
        endpoints,
        mode: client_mode(args.mode),
        prefix,
        ops: args.ops.max(1),
        clients: args.clients.max(1),
        killer: args
            .kill_leader
            .then_some(())
            .and(local.as_mut().map(|(lc, _)| lc)),
    };
    println!(
        "mode {}, {} nodes: {}",
        args.mode,
        dc.endpoints.len(),
        dc.endpoints.join(", ")
    );
    let summary = match args.kind {
        DemoKind::Balance => bounded_decrement(&mut dc, &BALANCE).await?,
        DemoKind::Inventory => bounded_decrement(&mut dc, &INVENTORY).await?,
        DemoKind::Bank => bank(&mut dc).await?,
    };
    let ok = summary["invariants_hold"].as_bool().unwrap_or(false);
    if let Some(path) = &args.json {
        std::fs::write(path, summary.to_string())
            .map_err(|e| DemoError::Other(format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some((mut lc, dir)) = local {
        lc.stop().await;
        let _ = std::fs::remove_dir_all(dir);
    }
    println!();
    println!(
        "{}",
        if ok {
            "every invariant held with atomic writes."
        } else {
            "AN INVARIANT WAS BROKEN with atomic writes: this is a bug in keel."
        }
    );
    Ok(ok)
}

struct DemoCtx<'a> {
    endpoints: Vec<String>,
    mode: Mode,
    prefix: String,
    ops: u64,
    clients: u64,
    /// The local cluster, when the demo may kill its leader.
    killer: Option<&'a mut LocalCluster>,
}

/// The words of a bounded-decrement story.
struct Story {
    name: &'static str,
    thing: &'static str,
    start: i64,
    takes: [i64; 3],
    take_verb: &'static str,
    taken: &'static str,
    left: &'static str,
}

const BALANCE: Story = Story {
    name: "balance",
    thing: "account",
    start: 100,
    takes: [50, 60, 40],
    take_verb: "withdraw",
    taken: "paid out",
    left: "balance",
};

const INVENTORY: Story = Story {
    name: "inventory",
    thing: "stock",
    start: 10,
    takes: [3, 5, 4],
    take_verb: "buy",
    taken: "sold",
    left: "remaining",
};

fn check(ok: bool) -> &'static str {
    if ok {
        "✔"
    } else {
        "✘"
    }
}

/// Kills the leader of the demo's own cluster, waits for a new one, restarts the old node.
async fn kill_leader(lc: &mut LocalCluster, client: &Client) -> Result<u64, DemoError> {
    let status = client
        .status()
        .await
        .map_err(failed("finding the leader"))?;
    let leader = status
        .leader
        .ok_or_else(|| DemoError::Other("no leader to kill".into()))?;
    lc.kill(leader).await;
    println!("  -- killed the leader, node {leader}, with SIGKILL --");
    let t = Instant::now();
    // The survivors elect a new leader; then the old node comes back as a follower.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = lc.wait_for_leader(Duration::from_secs(1)).await {
            if l != leader {
                println!(
                    "  -- node {l} leads after {:.1} s; restarting node {leader} --",
                    t.elapsed().as_secs_f64()
                );
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(DemoError::Other("no new leader within 30 s".into()));
        }
    }
    lc.restart(leader)?;
    Ok(leader)
}

async fn bounded_decrement(
    dc: &mut DemoCtx<'_>,
    s: &Story,
) -> Result<serde_json::Value, DemoError> {
    let eps = dc.endpoints.clone();
    let admin = pinned(&eps, dc.mode).await?;
    let node_of = |i: usize| eps[i % eps.len()].clone();

    // 1. The seed's small case with atomic bounded adds.
    println!();
    println!("== {}: the seed case, atomic ==", s.name);
    let key = format!("{}/{}/atomic", dc.prefix, s.name);
    admin
        .put_with(&key, s.start.to_string(), PutOptions::new())
        .await
        .map_err(failed("setting up"))?;
    println!("{} {key} starts at {}", s.thing, s.start);
    println!(
        "three requests at the same time, each through a different node, each to {} only if enough is left",
        s.take_verb
    );
    println!("(answers in the order they came back):");
    let barrier = Arc::new(Barrier::new(3));
    let mut tasks = Vec::new();
    for (i, amount) in s.takes.iter().copied().enumerate() {
        let c = pinned(&[node_of(i)], dc.mode).await?;
        let (key, barrier, node) = (key.clone(), barrier.clone(), node_of(i));
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            (
                node,
                amount,
                c.add_bounded(&key, -amount, Some(0), None).await,
            )
        }));
    }
    let mut approved = 0;
    let mut small_ok = true;
    // In the order the answers come back, which is the order the leader applied them.
    let mut answers: futures::stream::FuturesUnordered<_> = tasks.into_iter().collect();
    while let Some(answer) = futures::StreamExt::next(&mut answers).await {
        let (node, amount, r) = answer.map_err(|e| DemoError::Other(e.to_string()))?;
        match r {
            Ok(a) => {
                approved += amount;
                println!(
                    "  via {node}: {} {amount} → approved, {} now {}",
                    s.take_verb, s.left, a.value
                );
                small_ok &= a.value >= 0;
            }
            Err(Error::BoundViolated { current, .. }) => {
                println!(
                    "  via {node}: {} {amount} → declined: {} was {current}, too little",
                    s.take_verb, s.left
                );
                small_ok &= current < amount;
            }
            Err(e) => return Err(failed("a small-case request")(e)),
        }
    }
    let fin = admin.get(&key).await.map_err(failed("reading back"))?;
    let fin = fin.value_i64().unwrap_or(i64::MIN);
    small_ok &= fin == s.start - approved && fin >= 0;
    println!(
        "final {} {fin} = {} - {approved} {}; never below 0 {}",
        s.left,
        s.start,
        s.taken,
        check(small_ok)
    );

    // 2. The same with a naive client: GET, decide, PUT.
    println!();
    println!("== the same with a naive client (GET, decide, then PUT) ==");
    let nkey = format!("{}/{}/naive", dc.prefix, s.name);
    admin
        .put(&nkey, s.start.to_string())
        .await
        .map_err(failed("setting up"))?;
    println!(
        "{} {nkey} starts at {}; all three read before any writes back, as overlapping requests do:",
        s.thing, s.start
    );
    let barrier = Arc::new(Barrier::new(3));
    let mut tasks = Vec::new();
    for (i, amount) in s.takes.iter().copied().enumerate() {
        let c = pinned(&[node_of(i)], dc.mode).await?;
        let (key, barrier, node) = (nkey.clone(), barrier.clone(), node_of(i));
        tasks.push(tokio::spawn(async move {
            let read = c
                .get(&key)
                .await
                .ok()
                .and_then(|kv| kv.value_i64())
                .unwrap_or(0);
            barrier.wait().await;
            if read >= amount {
                let _ = c.put(&key, (read - amount).to_string()).await;
                (node, amount, read, true)
            } else {
                (node, amount, read, false)
            }
        }));
    }
    let mut naive_approved = 0;
    let mut naive_count = 0;
    for t in tasks {
        let (node, amount, read, ok) = t.await.map_err(|e| DemoError::Other(e.to_string()))?;
        if ok {
            naive_approved += amount;
            naive_count += 1;
            println!(
                "  via {node}: read {read}, {} {amount} → writes {} → \"approved\"",
                s.take_verb,
                read - amount
            );
        } else {
            println!(
                "  via {node}: read {read}, {} {amount} → declined",
                s.take_verb
            );
        }
    }
    let nfin = admin
        .get(&nkey)
        .await
        .map_err(failed("reading back"))?
        .value_i64()
        .unwrap_or(i64::MIN);
    let lost_small = naive_approved - (s.start - nfin);
    println!(
        "naive final {} {nfin}: {naive_approved} {} in {naive_count} \"approved\" requests, but only {} came off the {}: {lost_small} unaccounted for (lost updates){} {}",
        s.left,
        s.taken,
        s.start - nfin,
        s.thing,
        if naive_approved > s.start {
            format!(", {} more than the {} held", naive_approved - s.start, s.thing)
        } else {
            String::new()
        },
        check(lost_small == 0 && naive_approved <= s.start)
    );

    // 3. At scale.
    let n = dc.ops;
    let start = (n / 2) as i64;
    println!();
    println!(
        "== at scale: {n} requests to {} 1 from {} clients through every node, {} starting at {start} ==",
        s.take_verb, dc.clients, s.left
    );
    let akey = format!("{}/{}/scaled-atomic", dc.prefix, s.name);
    admin
        .put(&akey, start.to_string())
        .await
        .map_err(failed("setting up"))?;
    let atomic = scaled(dc, &akey, n, false).await?;
    let afin = admin
        .get(&akey)
        .await
        .map_err(failed("reading back"))?
        .value_i64()
        .unwrap_or(i64::MIN);
    let exact = atomic.unknown == 0 && afin == start - atomic.approved as i64;
    let bounded = afin >= 0
        && afin <= start - atomic.approved as i64
        && afin >= start - atomic.approved as i64 - atomic.unknown as i64;
    let atomic_ok = bounded && (exact || atomic.unknown > 0) && atomic.declined_wrongly == 0;
    println!(
        "atomic: {} approved, {} declined (each saw 0 left: {}), {} unknown; final {afin} = {start} - {} {} ({:.0} ops/s)",
        atomic.approved,
        atomic.declined,
        check(atomic.declined_wrongly == 0),
        atomic.unknown,
        atomic.approved,
        check(atomic_ok),
        atomic.rate
    );
    let nkey2 = format!("{}/{}/scaled-naive", dc.prefix, s.name);
    admin
        .put(&nkey2, start.to_string())
        .await
        .map_err(failed("setting up"))?;
    let naive = scaled(dc, &nkey2, n, true).await?;
    let nfin2 = admin
        .get(&nkey2)
        .await
        .map_err(failed("reading back"))?
        .value_i64()
        .unwrap_or(i64::MIN);
    let lost = naive.approved as i64 - (start - nfin2);
    println!(
        "naive:  {} \"approved\", final {nfin2}: {lost} lost updates ({} {} more than the {} ever went down) ✘",
        naive.approved, lost, s.taken, s.left
    );
    let invariants = small_ok && atomic_ok;
    Ok(json!({
        "demo": s.name,
        "invariants_hold": invariants,
        "small": {"start": s.start, "approved": approved, "final": fin, "ok": small_ok,
                   "naive_final": nfin, "naive_approved": naive_approved},
        "scaled_atomic": {"start": start, "approved": atomic.approved, "declined": atomic.declined,
                           "declined_wrongly": atomic.declined_wrongly, "unknown": atomic.unknown,
                           "final": afin, "ok": atomic_ok, "killed_leader": atomic.killed},
        "scaled_naive": {"start": start, "approved": naive.approved, "final": nfin2, "lost_updates": lost},
    }))
}

/// Counts of a scaled run.
#[derive(Default, Serialize)]
struct Scaled {
    approved: u64,
    declined: u64,
    /// Declined although more than 0 was left: would be a bug.
    declined_wrongly: u64,
    unknown: u64,
    rate: f64,
    killed: Option<u64>,
}

/// `n` decrements of 1 on `key` from `dc.clients` clients through every node; naive = GET+PUT.
async fn scaled(dc: &mut DemoCtx<'_>, key: &str, n: u64, naive: bool) -> Result<Scaled, DemoError> {
    let next = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let counts: Arc<[AtomicI64; 4]> = Arc::new(Default::default());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..dc.clients {
        // Each client goes through every node in turn, starting at a different one.
        let mut eps = dc.endpoints.clone();
        let len = eps.len();
        eps.rotate_left(c as usize % len);
        let client = pinned(&eps, dc.mode).await?;
        let (key, next, done, counts) =
            (key.to_string(), next.clone(), done.clone(), counts.clone());
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let outcome = if naive {
                    match client.get(&key).await.ok().and_then(|kv| kv.value_i64()) {
                        Some(v) if v >= 1 => match client.put(&key, (v - 1).to_string()).await {
                            Ok(_) => 0,
                            Err(_) => 3,
                        },
                        Some(_) => 1,
                        None => 3,
                    }
                } else {
                    match client.add_bounded(&key, -1, Some(0), None).await {
                        Ok(_) => 0,
                        Err(Error::BoundViolated { current, .. }) if current < 1 => 1,
                        Err(Error::BoundViolated { .. }) => 2,
                        Err(_) => 3,
                    }
                };
                counts[outcome].fetch_add(1, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    let mut killed = None;
    if !naive {
        if let Some(lc) = dc.killer.as_deref_mut() {
            // Kill the leader a third of the way in.
            let deadline = Instant::now() + Duration::from_secs(120);
            while done.load(Ordering::Relaxed) < n / 3 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let admin = pinned(&dc.endpoints, dc.mode).await?;
            killed = Some(kill_leader(lc, &admin).await?);
        }
    }
    for t in tasks {
        t.await.map_err(|e| DemoError::Other(e.to_string()))?;
    }
    let get = |i: usize| counts[i].load(Ordering::Relaxed) as u64;
    Ok(Scaled {
        approved: get(0),
        declined: get(1) + get(2),
        declined_wrongly: get(2),
        unknown: get(3),
        rate: n as f64 / started.elapsed().as_secs_f64(),
        killed,
    })
}

const ACCOUNTS: usize = 8;
const OPENING: i64 = 1000;

async fn bank(dc: &mut DemoCtx<'_>) -> Result<serde_json::Value, DemoError> {
    let eps = dc.endpoints.clone();
    let admin = pinned(&eps, dc.mode).await?;
    let total = OPENING * ACCOUNTS as i64;
    let mut summary = serde_json::Map::new();
    let mut all_ok = true;
    for naive in [false, true] {
        let label = if naive {
            "naive (GET both, PUT both)"
        } else {
            "atomic (txn)"
        };
        let base = format!(
            "{}/bank/{}",
            dc.prefix,
            if naive { "naive" } else { "atomic" }
        );
        let accounts: Vec<String> = (0..ACCOUNTS).map(|i| format!("{base}/acct-{i}")).collect();
        for a in &accounts {
            admin
                .put(a, OPENING.to_string())
                .await
                .map_err(failed("opening accounts"))?;
        }
        println!();
        println!(
            "== bank, {label}: {} transfers between {ACCOUNTS} accounts of {OPENING} (total {total}), {} clients, readers summing all balances ==",
            dc.ops, dc.clients
        );
        let next = Arc::new(AtomicU64::new(0));
        let done = Arc::new(AtomicU64::new(0));
        // transferred, declined, unknown, reads, bad reads
        let counts: Arc<[AtomicI64; 5]> = Arc::new(Default::default());
        let stop_readers = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let n = dc.ops;
        let mut tasks = Vec::new();
        for c in 0..dc.clients {
            let mut e = eps.clone();
            let len = e.len();
            e.rotate_left(c as usize % len);
            let client = pinned(&e, dc.mode).await?;
            let (accounts, next, done, counts) =
                (accounts.clone(), next.clone(), done.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < n {
                    let (from, to, amount) = {
                        let mut rng = rand::thread_rng();
                        let from = rng.gen_range(0..ACCOUNTS);
                        let to = (from + rng.gen_range(1..ACCOUNTS)) % ACCOUNTS;
                        (from, to, rng.gen_range(1..=100i64))
                    };
                    let outcome = if naive {
                        naive_transfer(&client, &accounts[from], &accounts[to], amount).await
                    } else {
                        match client
                            .txn()
                            .then(Op::add_bounded(&accounts[from], -amount, Some(0), None))
                            .then(Op::add(&accounts[to], amount))
                            .commit()
                            .await
                        {
                            Ok(_) => 0,
                            Err(Error::BoundViolated { .. }) => 1,
                            Err(_) => 2,
                        }
                    };
                    counts[outcome].fetch_add(1, Ordering::Relaxed);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        let mut readers = Vec::new();
        for r in 0..2usize {
            let mut e = eps.clone();
            let len = e.len();
            e.rotate_left(r % len);
            let client = pinned(&e, dc.mode).await?;
            let (accounts, counts, stop) = (accounts.clone(), counts.clone(), stop_readers.clone());
            readers.push(tokio::spawn(async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                    i += 1;
                    let mut t = client.txn();
                    for a in &accounts {
                        t = t.then(Op::get(a));
                    }
                    if let Ok(res) = t.commit().await {
                        let balances: Vec<i64> =
                            (0..accounts.len()).filter_map(|k| res.int(k)).collect();
                        let sum: i64 = balances.iter().sum();
                        counts[3].fetch_add(1, Ordering::Relaxed);
                        if balances.len() != accounts.len()
                            || sum != total
                            || balances.iter().any(|b| *b < 0)
                        {
                            counts[4].fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }));
        }
        let mut killed = None;
        if !naive {
            if let Some(lc) = dc.killer.as_deref_mut() {
                let deadline = Instant::now() + Duration::from_secs(120);
                while done.load(Ordering::Relaxed) < n / 3 && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                killed = Some(kill_leader(lc, &admin).await?);
            }
        }
        for t in tasks {
            t.await.map_err(|e| DemoError::Other(e.to_string()))?;
        }
        stop_readers.store(true, Ordering::Relaxed);
        for r in readers {
            r.await.map_err(|e| DemoError::Other(e.to_string()))?;
        }
        // A final read of every balance.
        let mut t = admin.txn();
        for a in &accounts {
            t = t.then(Op::get(a));
        }
        let res = t.commit().await.map_err(failed("final read"))?;
        let finals: Vec<i64> = (0..ACCOUNTS).filter_map(|k| res.int(k)).collect();
        let sum: i64 = finals.iter().sum();
        let get = |i: usize| counts[i].load(Ordering::Relaxed);
        let ok = sum == total && finals.iter().all(|b| *b >= 0) && get(4) == 0;
        println!(
            "{} transfers done, {} declined for lack of funds, {} unknown; {} reads of all balances, {} did not sum to {total} {}",
            get(0), get(1), get(2), get(3), get(4), check(get(4) == 0)
        );
        println!(
            "final balances {finals:?} sum to {sum} {}",
            check(sum == total && finals.iter().all(|b| *b >= 0))
        );
        if !naive {
            all_ok &= ok;
        }
        summary.insert(
            if naive { "naive" } else { "atomic" }.into(),
            json!({"transfers": get(0), "declined": get(1), "unknown": get(2), "reads": get(3),
                   "bad_reads": get(4), "final_sum": sum, "finals": finals, "ok": ok, "killed_leader": killed}),
        );
    }
    summary.insert("demo".into(), json!("bank"));
    summary.insert("invariants_hold".into(), json!(all_ok));
    Ok(serde_json::Value::Object(summary))
}

/// A transfer by a client that reads both balances and writes both back: 0 done, 1 declined,
/// 2 failed midway.
async fn naive_transfer(client: &Client, from: &str, to: &str, amount: i64) -> usize {
    let (Ok(f), Ok(t)) = (client.get(from).await, client.get(to).await) else {
        return 2;
    };
    let (Some(f), Some(t)) = (f.value_i64(), t.value_i64()) else {
        return 2;
    };
    if f < amount {
        return 1;
    }
    if client.put(from, (f - amount).to_string()).await.is_err() {
        return 2;
    }
    if client.put(to, (t + amount).to_string()).await.is_err() {
        return 2;
    }
    0
}
