//! Atomic conditional writes on real processes: bounded adds never overdraw or oversell, even
//! with a leader killed mid-run and clients retrying under the same Idempotency-Key; transactions
//! keep a bank's total; compare-and-set and create-only hold.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_tests::http::Http;
use keel_tests::{wait_until, Cluster, Resp, DEADLINE};
use serde_json::{json, Value};

/// One bounded withdrawal, retried through the nodes in turn under one Idempotency-Key until a
/// definitive answer (200 or 409). Returns Ok(new value) or Err(current value when refused).
fn withdraw(
    addrs: &[String],
    key: &str,
    amount: i64,
    idem: &str,
    start_node: usize,
) -> Result<i64, i64> {
    let http = Http::new(Duration::from_secs(2), Duration::from_secs(10));
    let body = json!({"delta": -amount, "min": 0}).to_string();
    let path = format!("/v1/kv/{key}/add");
    for attempt in 0..200usize {
        let addr = &addrs[(start_node + attempt) % addrs.len()];
        let r = http.send(
            addr,
            "POST",
            &path,
            &[("Idempotency-Key", idem)],
            Some(body.as_bytes()),
        );
        match r {
            Ok(r) if (200..300).contains(&r.status) => {
                let v: Value = r.json();
                return Ok(v["value"].as_i64().expect("value"));
            }
            Ok(r) if r.status == 409 => {
                let v: Value = r.json();
                assert_eq!(v["error"]["code"], "bound_violated");
                return Err(v["value"].as_i64().expect("current value"));
            }
            Ok(r) if r.status == 503 || r.status == 504 => {}
            Ok(r) => panic!("withdrawal answered {}: {}", r.status, r.text()),
            Err(_) => {} // node down: try the next one, same key
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("withdrawal {idem} got no definitive answer");
}

struct Tally {
    approved: i64,
    approved_count: u64,
    declined: u64,
}

/// Runs `n` withdrawals of 1..=max_amount from `threads` threads through every node.
fn run_withdrawals(
    addrs: Vec<String>,
    key: &str,
    n: u64,
    threads: u64,
    max_amount: i64,
    progress: Arc<AtomicU64>,
) -> Tally {
    let tally = Arc::new(Mutex::new(Tally {
        approved: 0,
        approved_count: 0,
        declined: 0,
    }));
    let next = Arc::new(AtomicU64::new(0));
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (addrs, key, tally, next, progress) = (
                addrs.clone(),
                key.to_string(),
                tally.clone(),
                next.clone(),
                progress.clone(),
            );
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return;
                }
                let amount = (i as i64 * 7919) % max_amount + 1;
                let idem = format!("{key}-w{i}");
                let r = withdraw(
                    &addrs,
                    &key,
                    amount,
                    &idem,
                    (t as usize + i as usize) % addrs.len(),
                );
                let mut tl = tally.lock().expect("tally");
                match r {
                    Ok(new) => {
                        assert!(new >= 0, "balance went below 0: {new}");
                        tl.approved += amount;
                        tl.approved_count += 1;
                    }
                    Err(current) => {
                        assert!(
                            current < amount,
                            "declined {amount} although {current} was left"
                        );
                        tl.declined += 1;
                    }
                }
                drop(tl);
                progress.fetch_add(1, Ordering::Relaxed);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("withdrawal thread");
    }
    Arc::try_unwrap(tally)
        .ok()
        .expect("threads done")
        .into_inner()
        .expect("tally")
}

fn read_int(c: &Cluster, id: u64, key: &str) -> i64 {
    let r = wait_until(DEADLINE, "a linearizable read", || {
        let r = c.get(id, key).ok()?;
        (r.status == 200).then_some(r)
    });
    r.text().parse().expect("integer")
}

#[test]
fn concurrent_withdrawals_through_every_node_never_overdraw() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    c.put_until_ok(1, "acct/balance", b"1000", DEADLINE);
    let t = run_withdrawals(
        c.endpoints(),
        "acct/balance",
        400,
        12,
        20,
        Arc::new(AtomicU64::new(0)),
    );
    for id in c.ids() {
        let fin = read_int(&c, id, "acct/balance");
        assert_eq!(
            fin,
            1000 - t.approved,
            "node {id}: final = start - approved"
        );
        assert!(fin >= 0);
    }
    eprintln!(
        "approved {} withdrawals ({}), declined {}",
        t.approved_count, t.approved, t.declined
    );
    assert!(
        t.declined > 0,
        "the run must exhaust the balance to test the bound"
    );
}

#[test]
fn withdrawals_survive_a_leader_kill_with_retries_under_the_same_idempotency_key() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    c.put_until_ok(1, "acct/k", b"5000", DEADLINE);
    let progress = Arc::new(AtomicU64::new(0));
    let n = 600;
    let runner = {
        let (addrs, progress) = (c.endpoints(), progress.clone());
        std::thread::spawn(move || run_withdrawals(addrs, "acct/k", n, 12, 20, progress))
    };
    wait_until(DEADLINE, "a third of the withdrawals", || {
        (progress.load(Ordering::Relaxed) >= n / 3).then_some(())
    });
    c.kill(leader);
    let done_at_kill = progress.load(Ordering::Relaxed);
    let new = c.wait_for_leader_excluding(&[leader], DEADLINE);
    c.restart(leader);
    let t = runner.join().expect("runner");
    eprintln!(
        "killed leader {leader} after {done_at_kill} withdrawals; node {new} took over; \
         approved {} ({}), declined {}",
        t.approved_count, t.approved, t.declined
    );
    assert!(
        done_at_kill < n,
        "the kill must land in the middle of the run"
    );
    assert!(
        t.declined > 0 && t.approved > 5000 - 1000,
        "the balance must still be drawn on after the kill and run out by the end"
    );
    c.wait_for_leader();
    for id in c.ids() {
        let fin = read_int(&c, id, "acct/k");
        // Every withdrawal got a definitive answer, so the ledger must match exactly: one applied
        // twice would make it lower, one acknowledged and lost would make it higher.
        assert_eq!(fin, 5000 - t.approved, "node {id}");
    }
}

#[test]
fn concurrent_purchases_never_oversell() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    c.put_until_ok(2, "stock/widget", b"150", DEADLINE);
    let t = run_withdrawals(
        c.endpoints(),
        "stock/widget",
        300,
        12,
        5,
        Arc::new(AtomicU64::new(0)),
    );
    let remaining = read_int(&c, 3, "stock/widget");
    assert!(remaining >= 0);
    assert_eq!(
        t.approved + remaining,
        150,
        "sold + remaining = initial stock"
    );
}

fn txn(c: &Cluster, id: u64, body: &Value, headers: &[(&str, &str)]) -> Result<Resp, String> {
    c.request(
        id,
        "POST",
        "/v1/txn",
        headers,
        Some(body.to_string().as_bytes()),
    )
}

#[test]
fn bank_transfers_by_txn_keep_the_total_before_during_and_after_a_leader_kill() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    const N: usize = 8;
    let accounts: Vec<String> = (0..N).map(|i| format!("bank/acct-{i}")).collect();
    for a in &accounts {
        c.put_until_ok(1, a, b"1000", DEADLINE);
    }
    let total = 1000 * N as i64;
    let read_all = json!({"success": accounts.iter().map(|a| json!({"op": "get", "key": a})).collect::<Vec<_>>()});
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let transfers = Arc::new(AtomicU64::new(0));
    let addrs = c.endpoints();
    let mut handles = Vec::new();
    // Readers: one read-only txn of all balances, through every node.
    for r in 0..2usize {
        let (addrs, stop, reads, read_all) =
            (addrs.clone(), stop.clone(), reads.clone(), read_all.clone());
        handles.push(std::thread::spawn(move || {
            let http = Http::new(Duration::from_secs(2), Duration::from_secs(10));
            let body = read_all.to_string();
            let mut i = r;
            while !stop.load(Ordering::Acquire) && i < 1_000_000 {
                i += 1;
                let addr = &addrs[i % addrs.len()];
                let answer = http.send(addr, "POST", "/v1/txn", &[], Some(body.as_bytes()));
                if let Some(resp) = answer.ok().filter(|r| r.status == 200) {
                    let v: Value = resp.json();
                    let balances: Vec<i64> = v["results"]
                        .as_array()
                        .expect("results")
                        .iter()
                        .map(|x| x["value"].as_str().expect("value").parse().expect("int"))
                        .collect();
                    assert_eq!(balances.len(), N);
                    assert_eq!(
                        balances.iter().sum::<i64>(),
                        total,
                        "a read saw {balances:?}"
                    );
                    assert!(
                        balances.iter().all(|b| *b >= 0),
                        "negative balance in {balances:?}"
                    );
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Transferers: debit bounded at 0 and credit in one txn, retried under one key.
    for w in 0..6usize {
        let (addrs, stop, transfers, accounts) = (
            addrs.clone(),
            stop.clone(),
            transfers.clone(),
            accounts.clone(),
        );
        handles.push(std::thread::spawn(move || {
            let http = Http::new(Duration::from_secs(2), Duration::from_secs(10));
            let mut i = 0usize;
            while !stop.load(Ordering::Acquire) && i < 100_000 {
                i += 1;
                let from = (w * 31 + i * 7) % N;
                let to = (from + 1 + i % (N - 1)) % N;
                let amount = (i % 97 + 1) as i64;
                let body = json!({"success": [
                    {"op": "add", "key": accounts[from], "delta": -amount, "min": 0},
                    {"op": "add", "key": accounts[to], "delta": amount},
                ]})
                .to_string();
                let idem = format!("t-{w}-{i}");
                for attempt in 0..200usize {
                    let addr = &addrs[(w + attempt) % addrs.len()];
                    let headers = [("Idempotency-Key", idem.as_str())];
                    match http.send(addr, "POST", "/v1/txn", &headers, Some(body.as_bytes())) {
                        Ok(r) if (200..300).contains(&r.status) => {
                            transfers.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Ok(r) if r.status == 409 => break,
                        Ok(r) if r.status != 503 && r.status != 504 => {
                            panic!("transfer answered {}: {}", r.status, r.text())
                        }
                        _ => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            }
        }));
    }
    let phase = |what: &str, reads: &AtomicU64, transfers: &AtomicU64| {
        let (r0, t0) = (
            reads.load(Ordering::Relaxed),
            transfers.load(Ordering::Relaxed),
        );
        wait_until(DEADLINE, what, || {
            (reads.load(Ordering::Relaxed) >= r0 + 20
                && transfers.load(Ordering::Relaxed) >= t0 + 50)
                .then_some(())
        });
    };
    phase("reads and transfers before the kill", &reads, &transfers);
    c.kill(leader);
    c.wait_for_leader_excluding(&[leader], DEADLINE);
    phase("reads and transfers after the kill", &reads, &transfers);
    c.restart(leader);
    c.wait_for_leader();
    phase("reads and transfers after the restart", &reads, &transfers);
    stop.store(true, Ordering::Release);
    for h in handles {
        h.join().expect("a reader or transferer failed");
    }
    let v = txn(&c, leader, &read_all, &[]).expect("answers").json();
    let finals: Vec<i64> = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|x| x["value"].as_str().expect("value").parse().expect("int"))
        .collect();
    eprintln!(
        "{} transfers, {} reads of all balances; final {finals:?}",
        transfers.load(Ordering::Relaxed),
        reads.load(Ordering::Relaxed)
    );
    assert_eq!(finals.iter().sum::<i64>(), total);
}

#[test]
fn compare_and_set_and_create_only() {
    let mut c = Cluster::start(3);
    c.wait_for_leader();
    let v1 = c.put_until_ok(1, "cas/doc", b"one", DEADLINE).json()["version"]
        .as_u64()
        .expect("version");
    // Wrong version: 412, nothing changes.
    let r = c
        .request(
            2,
            "PUT",
            "/v1/kv/cas/doc",
            &[("If-Match", &format!("\"{}\"", v1 + 1000))],
            Some(b"two"),
        )
        .expect("answers");
    assert_eq!(r.status, 412, "{}", r.text());
    assert_eq!(c.get(3, "cas/doc").expect("answers").text(), "one");
    // Right version: applied, new version.
    let r = c
        .request(
            2,
            "PUT",
            "/v1/kv/cas/doc",
            &[("If-Match", &format!("\"{v1}\""))],
            Some(b"two"),
        )
        .expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    let v2 = r.json()["version"].as_u64().expect("version");
    assert!(v2 > v1);
    // The old version no longer matches (no lost update).
    let r = c
        .request(
            3,
            "PUT",
            "/v1/kv/cas/doc",
            &[("If-Match", &format!("\"{v1}\""))],
            Some(b"three"),
        )
        .expect("answers");
    assert_eq!(r.status, 412);
    // Create-only.
    let r = c
        .request(
            1,
            "PUT",
            "/v1/kv/cas/new",
            &[("If-None-Match", "*")],
            Some(b"x"),
        )
        .expect("answers");
    assert_eq!(r.status, 200);
    let r = c
        .request(
            2,
            "PUT",
            "/v1/kv/cas/new",
            &[("If-None-Match", "*")],
            Some(b"y"),
        )
        .expect("answers");
    assert_eq!(r.status, 412);
    assert_eq!(c.get(1, "cas/new").expect("answers").text(), "x");
    // Conditional delete.
    let r = c
        .request(
            1,
            "DELETE",
            "/v1/kv/cas/doc",
            &[("If-Match", &format!("\"{v1}\""))],
            None,
        )
        .expect("answers");
    assert_eq!(r.status, 412);
    let r = c
        .request(
            1,
            "DELETE",
            "/v1/kv/cas/doc",
            &[("If-Match", &format!("\"{v2}\""))],
            None,
        )
        .expect("answers");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["deleted"], true);
    assert_eq!(c.get(2, "cas/doc").expect("answers").status, 404);
}

#[test]
fn a_retried_write_with_the_same_idempotency_key_is_applied_once_even_after_a_leader_change() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let body = json!({"delta": 5}).to_string();
    let r1 = c
        .request(
            1,
            "POST",
            "/v1/kv/idem/n/add",
            &[("Idempotency-Key", "op-1")],
            Some(body.as_bytes()),
        )
        .expect("answers");
    assert_eq!(r1.status, 200, "{}", r1.text());
    c.kill(leader);
    let new = c.wait_for_leader_excluding(&[leader], DEADLINE);
    // The retry goes through another node to the new leader: same answer, not applied again.
    let r2 = wait_until(DEADLINE, "the retry to be answered", || {
        let r = c
            .request(
                new,
                "POST",
                "/v1/kv/idem/n/add",
                &[("Idempotency-Key", "op-1")],
                Some(body.as_bytes()),
            )
            .ok()?;
        (r.status == 200).then_some(r)
    });
    assert_eq!(
        r2.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(r2.json()["index"], r1.json()["index"]);
    assert_eq!(r2.json()["value"], 5);
    assert_eq!(c.get(new, "idem/n").expect("answers").text(), "5");
    // The same key with a different request is refused.
    let other = json!({"delta": 6}).to_string();
    let r3 = c
        .request(
            new,
            "POST",
            "/v1/kv/idem/n/add",
            &[("Idempotency-Key", "op-1")],
            Some(other.as_bytes()),
        )
        .expect("answers");
    assert_eq!(r3.status, 422, "{}", r3.text());
    // And after a restart of every node the memory is still there.
    c.restart(leader);
    for id in c.ids() {
        c.kill(id);
    }
    for id in c.ids() {
        c.restart(id);
    }
    let l = c.wait_for_leader();
    let r4 = wait_until(DEADLINE, "the retry after a full restart", || {
        let r = c
            .request(
                l,
                "POST",
                "/v1/kv/idem/n/add",
                &[("Idempotency-Key", "op-1")],
                Some(body.as_bytes()),
            )
            .ok()?;
        (r.status == 200).then_some(r)
    });
    assert_eq!(
        r4.headers.get("idempotent-replayed").map(String::as_str),
        Some("true")
    );
    assert_eq!(c.get(l, "idem/n").expect("answers").text(), "5");
}
