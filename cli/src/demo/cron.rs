//! `keel demo cron`: the duplicate cron job (SPEC §8, the seeds' first story).
//!
//! Three scheduler *processes* each want to run the same job once per tick (a second). Naive,
//! each runs it: the job runs three times a tick. With a keel lock (an election), only the
//! holder runs it, and every run is a write fenced by the holder's fence. Then the holder is
//! frozen with SIGSTOP for longer than its lease's TTL, as a GC pause or a VM freeze would: its
//! lease expires on the leader, the next scheduler in line takes over, and when the frozen one
//! wakes up still believing it leads, its run is refused by its fence.
//!
//! A scheduler is `keel cron-worker` (hidden), a child process of the demo. Runs are recorded in
//! keel (naive: a counter per tick, `<prefix>/naive/tick/<n>`; locked: one fenced key per run,
//! `<prefix>/locked/tick/<n>/<scheduler>`), refusals too (`<prefix>/locked/refused`), so the
//! demo's numbers are what the store says, not what the processes claim.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use keel_client::{Client, Election, Error, PutOptions};
use serde_json::json;

use super::{check, failed, pinned, DemoCtx, DemoError};

/// Flags of the hidden `keel cron-worker` (one scheduler of the demo).
#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// The scheduler's name.
    #[arg(long)]
    pub name: String,
    /// `naive` (runs the job every tick) or `locked` (only while holding the lock, fenced).
    #[arg(long)]
    pub role: String,
    /// Key prefix of the run.
    #[arg(long)]
    pub prefix: String,
    /// Tick 0 starts at this Unix time in milliseconds (shared by the schedulers).
    #[arg(long)]
    pub start_ms: u64,
    /// Ticks to run.
    #[arg(long)]
    pub ticks: u64,
    /// Lease TTL in milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub ttl_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Sleeps until tick `n` starts.
async fn until_tick(start_ms: u64, n: u64) {
    let at = start_ms + n * 1000;
    let now = now_ms();
    if at > now {
        tokio::time::sleep(Duration::from_millis(at - now)).await;
    }
}

/// The tick the wall clock is in (the job's schedule, not keel's: keel never reads one).
fn current_tick(start_ms: u64) -> u64 {
    now_ms().saturating_sub(start_ms) / 1000
}

/// One scheduler: runs until its last tick; prints what it does.
pub async fn worker(endpoints: &[String], a: WorkerArgs) -> Result<(), DemoError> {
    let client = pinned(endpoints, keel_client::Mode::Semi).await?;
    let runs = |tick: u64| format!("{}/{}/tick/{tick}", a.prefix, a.role);
    if a.role == "naive" {
        for tick in 0..a.ticks {
            until_tick(a.start_ms, tick).await;
            client
                .add(&runs(tick), 1)
                .await
                .map_err(failed("running the job"))?;
            outln!("    {}: tick {tick}: ran the job", a.name);
        }
        return Ok(());
    }
    let election = Election::new(&client, &format!("{}/lock", a.prefix));
    while current_tick(a.start_ms) < a.ticks {
        let lease = client
            .lease(Duration::from_millis(a.ttl_ms))
            .await
            .map_err(failed("granting a lease"))?;
        let left = (a.start_ms + a.ticks * 1000).saturating_sub(now_ms());
        let guard = match election
            .campaign(&lease, &a.name, Duration::from_millis(left))
            .await
        {
            Ok(g) => g,
            Err(Error::LockHeld { .. }) => continue,
            Err(e) => return Err(failed("campaigning")(e)),
        };
        outln!("    {}: leads now (fence {})", a.name, guard.fence);
        // Runs the job every tick while it believes it leads. It does not look at its lease
        // first: a process can be frozen between any check and its write; the fence is the
        // check that cannot be outrun.
        loop {
            let tick = current_tick(a.start_ms) + 1;
            if tick >= a.ticks {
                return Ok(());
            }
            until_tick(a.start_ms, tick).await;
            // One key per run and scheduler: two schedulers running the same tick would leave
            // two keys (a counter could hide nothing either, but keys also say who ran it).
            let opts = PutOptions::new().fence(&guard);
            let run = format!("{}/{}", runs(tick), a.name);
            match client.put_with(&run, "ran", opts).await {
                Ok(_) => outln!("    {}: tick {tick}: ran the job", a.name),
                Err(Error::FenceRejected { holder, .. }) => {
                    let who = holder
                        .and_then(|h| h.value.value)
                        .unwrap_or_else(|| "nobody".into());
                    outln!(
                        "    {}: tick {tick}: woke up and tried to run the job with fence {}: \
                         REFUSED by the store ({who} leads now); standing down",
                        a.name,
                        guard.fence
                    );
                    client
                        .add(&format!("{}/locked/refused", a.prefix), 1)
                        .await
                        .map_err(failed("counting a refusal"))?;
                    break;
                }
                Err(e) => return Err(failed("running the job")(e)),
            }
        }
    }
    Ok(())
}

/// Starts the three schedulers of one phase.
fn spawn_workers(
    dc: &DemoCtx<'_>,
    role: &str,
    start_ms: u64,
    ticks: u64,
) -> Result<Vec<(String, std::process::Child)>, DemoError> {
    let exe = std::env::current_exe()
        .map_err(|e| DemoError::Other(format!("cannot find the keel binary: {e}")))?;
    (1..=3)
        .map(|i| {
            let name = format!("scheduler-{i}");
            let child = std::process::Command::new(&exe)
                .args(["--endpoints", &dc.endpoints.join(","), "cron-worker"])
                .args(["--name", &name, "--role", role, "--prefix", &dc.prefix])
                .args(["--start-ms", &start_ms.to_string()])
                .args(["--ticks", &ticks.to_string()])
                .spawn()
                .map_err(|e| DemoError::Other(format!("cannot start a scheduler: {e}")))?;
            Ok((name, child))
        })
        .collect()
}

fn wait_all(children: Vec<(String, std::process::Child)>) -> Result<(), DemoError> {
    for (name, mut c) in children {
        let status = c
            .wait()
            .map_err(|e| DemoError::Other(format!("{name}: {e}")))?;
        if !status.success() {
            return Err(DemoError::Other(format!("{name} failed: {status}")));
        }
    }
    Ok(())
}

/// How many times the job ran in each tick of a phase.
async fn runs_per_tick(
    client: &Client,
    prefix: &str,
    role: &str,
    ticks: u64,
) -> Result<Vec<i64>, DemoError> {
    let mut out = Vec::new();
    for tick in 0..ticks {
        let key = format!("{prefix}/{role}/tick/{tick}");
        if role == "locked" {
            let page = client
                .list(&format!("{key}/"), None, 100)
                .await
                .map_err(failed("listing the runs"))?;
            out.push(i64::try_from(page.items.len()).unwrap_or(i64::MAX));
            continue;
        }
        let n = match client.get(&key).await {
            Ok(kv) => kv.value_str().and_then(|s| s.parse().ok()).unwrap_or(0),
            Err(Error::NotFound { .. }) => 0,
            Err(e) => return Err(failed("reading the runs")(e)),
        };
        out.push(n);
    }
    Ok(out)
}

fn signal(child: &std::process::Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on a child process of ours, with a valid signal number.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The demo.
pub(super) async fn cron(dc: &mut DemoCtx<'_>) -> Result<serde_json::Value, DemoError> {
    let client = pinned(&dc.endpoints, dc.mode).await?;
    outln!();
    outln!("Three schedulers each want to run the same job (the 9:00 report) once per tick.");
    outln!();
    outln!("1. Naive: every scheduler runs the job when its clock says so.");
    let naive_ticks = 4;
    let start = now_ms() + 1500;
    let workers = spawn_workers(dc, "naive", start, naive_ticks)?;
    wait_all(workers)?;
    let naive = runs_per_tick(&client, &dc.prefix, "naive", naive_ticks).await?;
    for (t, n) in naive.iter().enumerate() {
        outln!("   tick {t}: the job ran {n} times");
    }
    let naive_dups: i64 = naive.iter().map(|n| (n - 1).max(0)).sum();
    outln!("   {naive_dups} duplicate runs in {naive_ticks} ticks.");

    outln!();
    outln!("2. With a keel lock: only the holder runs the job, each run fenced by its fence.");
    let ticks = 14;
    let start = now_ms() + 1500;
    let mut workers = spawn_workers(dc, "locked", start, ticks)?;
    let election = Election::new(&client, &format!("{}/lock", dc.prefix));
    // Let the holder run a few ticks, then freeze it.
    until_tick(start, 4).await;
    let holder = election
        .leader()
        .await
        .map_err(failed("reading the lock"))?
        .ok_or_else(|| DemoError::Other("nobody holds the lock".into()))?;
    let name = holder.value.value.clone().unwrap_or_default();
    let Some(frozen) = workers.iter().position(|(n, _)| *n == name) else {
        return Err(DemoError::Other(format!("unknown holder {name:?}")));
    };
    outln!();
    outln!(
        "3. {name} (fence {}) freezes (SIGSTOP), as in a GC pause, for longer than its lease.",
        holder.fence
    );
    signal(&workers[frozen].1, libc::SIGSTOP);
    let (next, _) = election
        .observe(holder.index, Duration::from_secs(5))
        .await
        .map_err(failed("waiting for a new leader"))?;
    let mut next = next;
    for _ in 0..5 {
        if next.as_ref().is_some_and(|n| n.fence != holder.fence) {
            break;
        }
        next = election
            .observe(holder.index, Duration::from_secs(5))
            .await
            .map_err(failed("waiting for a new leader"))?
            .0;
    }
    let next = next.filter(|n| n.fence != holder.fence);
    let taken_by = next
        .as_ref()
        .and_then(|n| n.value.value.clone())
        .unwrap_or_default();
    match &next {
        Some(n) => outln!(
            "   its lease expired on the leader; {taken_by} took over with fence {}.",
            n.fence
        ),
        None => outln!("   nobody took over (unexpected)."),
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    outln!("4. {name} wakes up (SIGCONT), still believing it leads.");
    signal(&workers[frozen].1, libc::SIGCONT);
    let done = std::mem::take(&mut workers);
    tokio::task::spawn_blocking(move || wait_all(done))
        .await
        .map_err(|e| DemoError::Other(e.to_string()))??;
    let locked = runs_per_tick(&client, &dc.prefix, "locked", ticks).await?;
    outln!();
    for (t, n) in locked.iter().enumerate().skip(1) {
        outln!("   tick {t}: the job ran {n} times");
    }
    let locked_dups: i64 = locked.iter().map(|n| (n - 1).max(0)).sum();
    let refused = match client.get(&format!("{}/locked/refused", dc.prefix)).await {
        Ok(kv) => kv.value_str().and_then(|s| s.parse().ok()).unwrap_or(0),
        Err(Error::NotFound { .. }) => 0,
        Err(e) => return Err(failed("reading the refusals")(e)),
    };
    let ok = naive_dups > 0 && locked_dups == 0 && refused >= 1 && next.is_some();
    outln!();
    outln!(
        "{} naive: {naive_dups} duplicate runs (expected: some)",
        check(naive_dups > 0)
    );
    outln!(
        "{} with the lock: {locked_dups} duplicate runs, the frozen holder's late run refused \
         {refused} time(s) by its fence",
        check(locked_dups == 0 && refused >= 1)
    );
    Ok(json!({
        "demo": "cron",
        "naive_runs": naive,
        "naive_duplicates": naive_dups,
        "locked_runs": locked,
        "locked_duplicates": locked_dups,
        "frozen": name,
        "frozen_fence": holder.fence,
        "taken_over_by": taken_by,
        "new_fence": next.map(|n| n.fence),
        "late_runs_refused": refused,
        "invariants_hold": ok,
    }))
}
