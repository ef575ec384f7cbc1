//! The balance and inventory demonstrations: one bounded decrement (withdraw from an account
//! that may not go below 0; sell from a stock that may not go below 0), told in two sets of
//! words. The seed's small case step by step, then a naive GET-then-PUT client beside atomic
//! adds at scale.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::{Error, PutOptions};
use serde::Serialize;
use serde_json::json;
use tokio::sync::Barrier;

use super::{check, failed, kill_leader, pinned, DemoCtx, DemoError};

/// The words of a bounded-decrement story.
pub(super) struct Story {
    name: &'static str,
    thing: &'static str,
    start: i64,
    takes: [i64; 3],
    take_verb: &'static str,
    taken: &'static str,
    left: &'static str,
}

pub(super) const BALANCE: Story = Story {
    name: "balance",
    thing: "account",
    start: 100,
    takes: [50, 60, 40],
    take_verb: "withdraw",
    taken: "paid out",
    left: "balance",
};

pub(super) const INVENTORY: Story = Story {
    name: "inventory",
    thing: "stock",
    start: 10,
    takes: [3, 5, 4],
    take_verb: "buy",
    taken: "sold",
    left: "remaining",
};

pub(super) async fn bounded_decrement(
    dc: &mut DemoCtx<'_>,
    s: &Story,
) -> Result<serde_json::Value, DemoError> {
    let eps = dc.endpoints.clone();
    let admin = pinned(&eps, dc.mode).await?;
    let node_of = |i: usize| eps[i % eps.len()].clone();

    // 1. The seed's small case with atomic bounded adds.
    outln!();
    outln!("== {}: the seed case, atomic ==", s.name);
    let key = format!("{}/{}/atomic", dc.prefix, s.name);
    admin
        .put_with(&key, s.start.to_string(), PutOptions::new())
        .await
        .map_err(failed("setting up"))?;
    outln!("{} {key} starts at {}", s.thing, s.start);
    outln!(
        "three requests at the same time, each through a different node, each to {} only if enough is left",
        s.take_verb
    );
    outln!("(answers in the order they came back):");
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
                outln!(
                    "  via {node}: {} {amount} → approved, {} now {}",
                    s.take_verb,
                    s.left,
                    a.value
                );
                small_ok &= a.value >= 0;
            }
            Err(Error::BoundViolated { current, .. }) => {
                outln!(
                    "  via {node}: {} {amount} → declined: {} was {current}, too little",
                    s.take_verb,
                    s.left
                );
                small_ok &= current < amount;
            }
            Err(e) => return Err(failed("a small-case request")(e)),
        }
    }
    let fin = admin.get(&key).await.map_err(failed("reading back"))?;
    let fin = fin.value_i64().unwrap_or(i64::MIN);
    small_ok &= fin == s.start - approved && fin >= 0;
    outln!(
        "final {} {fin} = {} - {approved} {}; never below 0 {}",
        s.left,
        s.start,
        s.taken,
        check(small_ok)
    );

    // 2. The same with a naive client: GET, decide, PUT.
    outln!();
    outln!("== the same with a naive client (GET, decide, then PUT) ==");
    let nkey = format!("{}/{}/naive", dc.prefix, s.name);
    admin
        .put(&nkey, s.start.to_string())
        .await
        .map_err(failed("setting up"))?;
    outln!(
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
            outln!(
                "  via {node}: read {read}, {} {amount} → writes {} → \"approved\"",
                s.take_verb,
                read - amount
            );
        } else {
            outln!(
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
    outln!(
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
    outln!();
    outln!(
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
    outln!(
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
    outln!(
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
