//! The bank demonstration: transfers between accounts with transactions (all or nothing, never
//! below zero), reads of every balance in one snapshot, and a naive client that reads both
//! balances and writes both back beside it.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::{Client, Error, Op};
use rand::Rng;
use serde_json::json;

use super::{check, failed, kill_leader, pinned, DemoCtx, DemoError};

/// Accounts in the bank.
const ACCOUNTS: usize = 8;
/// Opening balance of each account.
const OPENING: i64 = 1000;

pub(super) async fn bank(dc: &mut DemoCtx<'_>) -> Result<serde_json::Value, DemoError> {
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
        outln!();
        outln!(
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
        outln!(
            "{} transfers done, {} declined for lack of funds, {} unknown; {} reads of all balances, {} did not sum to {total} {}",
            get(0), get(1), get(2), get(3), get(4), check(get(4) == 0)
        );
        outln!(
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
