//! `keel-bench scale`: a dataset far larger than the tests hold.
//!
//! A 3-node cluster is loaded with `--keys` keys (transactions of up to 128 puts, values of
//! `--value-size` bytes that do not compress) while a probe measures, at a fixed rate, one
//! linearizable read from a follower and one single-key `semi` write to the leader; the figures
//! are kept per tenth of the load, so that a slowdown as the data grows shows. Then a follower
//! is restarted (time until it serves linearizable reads again), and a new node joins as a
//! learner and catches up from a snapshot, its resident memory sampled throughout and its peak
//! (`VmHWM`) read at the end.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use keel_tests::{wait_until, Cluster};
use serde::Serialize;

use crate::load::{self, Http};
use crate::plot::{self, Series};
use crate::procfs;

/// Largest transaction body the loader builds (the server takes 4 MiB).
const MAX_BODY: usize = 3 * 1024 * 1024;
/// Longest wait for the cluster to settle, a restart, or a learner to catch up.
const LONG: Duration = Duration::from_secs(3600);

/// Options of `keel-bench scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// Keys to load.
    #[arg(long, default_value_t = 10_000_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Puts per transaction (at most 128, fewer for large values: a body stays under 3 MiB).
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Concurrent loaders.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Probes per second while loading (each one read and one write).
    #[arg(long, default_value_t = 20)]
    probes: u32,
    /// Where the Markdown, JSON and SVG results go.
    #[arg(long, default_value = "bench-results/scale")]
    out: PathBuf,
}

/// Figures of one tenth of the load.
#[derive(Debug, Serialize)]
struct Tenth {
    /// Keys loaded at its end.
    keys: u64,
    /// Keys per second during it.
    rate: f64,
    /// Probe read latency p50 and p99, ms.
    read_p50: f64,
    read_p99: f64,
    /// Probe write latency p50 and p99, ms.
    write_p50: f64,
    write_p99: f64,
    /// Probes that failed (not 200, or 404 for a key not loaded yet).
    probe_errors: u64,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
struct ScaleResult {
    keys: u64,
    value_size: usize,
    batch: usize,
    load_secs: f64,
    tenths: Vec<Tenth>,
    /// The settled cluster, a restart and a learner.
    #[serde(flatten)]
    after: After,
    /// (seconds since the start, keys loaded) every two seconds.
    progress: Vec<(f64, u64)>,
}

/// A value of `n` printable bytes that does not compress, from `seed`.
fn value(seed: u64, n: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ALPHABET[(x & 63) as usize] as char
        })
        .collect()
}

fn key(k: u64) -> String {
    format!("scale/{k:010}")
}

/// The body of a transaction putting keys `first..first + n`.
fn txn_body(first: u64, n: u64, value_size: usize) -> Bytes {
    let mut s = String::with_capacity(n as usize * (value_size + 48) + 32);
    s.push_str("{\"success\":[");
    for k in first..first + n {
        if k > first {
            s.push(',');
        }
        s.push_str("{\"op\":\"put\",\"key\":\"");
        s.push_str(&key(k));
        s.push_str("\",\"value\":\"");
        s.push_str(&value(k, value_size));
        s.push_str("\"}");
    }
    s.push_str("]}");
    Bytes::from(s)
}

/// Sizes of the files under `dir`: (all, RocksDB's write-ahead log files `*.log`, its tables
/// `*.sst`).
fn dir_bytes(dir: &Path) -> (u64, u64, u64) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (0, 0, 0);
    };
    entries.flatten().fold((0, 0, 0), |(all, wal, sst), e| {
        let path = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => {
                let (a, w, s) = dir_bytes(&path);
                (all + a, wal + w, sst + s)
            }
            Ok(m) => {
                let ext = path.extension().and_then(|x| x.to_str());
                let (w, s) = match ext {
                    Some("log") => (m.len(), 0),
                    Some("sst") => (0, m.len()),
                    _ => (0, 0),
                };
                (all + m.len(), wal + w, sst + s)
            }
            Err(_) => (all, wal, sst),
        }
    })
}

/// `VmHWM` (peak resident memory) of a process, in KiB.
fn peak_rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn applied(c: &Cluster, id: u64) -> Option<u64> {
    c.status(id)?["applied_index"].as_u64()
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// Probe histograms per tenth: (reads, writes, errors).
type Probes = Vec<(Histogram<u64>, Histogram<u64>, u64)>;

/// Loads the keys through the leader with `clients` loaders; returns when all are in.
async fn load_keys(a: &ScaleArgs, http: &Http, leader: &str, loaded: Arc<AtomicU64>) {
    let batch = a
        .batch
        .clamp(1, 128)
        .min((MAX_BODY / (a.value_size + 48)).max(1)) as u64;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..a.clients.max(1) {
        let (http, leader, next, loaded) = (
            http.clone(),
            leader.to_string(),
            next.clone(),
            loaded.clone(),
        );
        let (keys, value_size) = (a.keys, a.value_size);
        tasks.push(tokio::spawn(async move {
            loop {
                let first = next.fetch_add(1, Ordering::Relaxed) * batch;
                if first >= keys {
                    return;
                }
                let n = batch.min(keys - first);
                let body = txn_body(first, n, value_size);
                // Putting the same values again is harmless: retried until it answers 200.
                for attempt in 0..100u32 {
                    match load::send(&http, "POST", &leader, "/v1/txn?mode=semi", body.clone())
                        .await
                    {
                        Ok(200) => break,
                        Ok(s) if attempt == 99 => panic!("a load transaction answered {s}"),
                        Err(e) if attempt == 99 => panic!("a load transaction failed: {e}"),
                        _ => tokio::time::sleep(Duration::from_millis(100)).await,
                    }
                }
                loaded.fetch_add(n, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        if let Err(e) = t.await {
            panic!("a loader failed: {e}");
        }
    }
}

/// Probes until `stop`: a linearizable read of a loaded key from `follower`, a single-key
/// write to `leader`, `per_sec` times a second, kept per tenth of the load.
/// What the probe needs.
struct Probe {
    http: Http,
    leader: String,
    follower: String,
    keys: u64,
    per_sec: u32,
    loaded: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    out: Arc<Mutex<Probes>>,
}

async fn probe(p: Probe) {
    let Probe {
        http,
        leader,
        follower,
        keys,
        per_sec,
        loaded,
        stop,
        out,
    } = p;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(per_sec.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let done = loaded.load(Ordering::Relaxed);
        let tenth = ((done * 10 / keys.max(1)) as usize).min(9);
        n += 1;
        // Keys well below the count are loaded (loaders finish their batches about in order).
        let below = done.saturating_sub(keys / 100);
        let read = if below > 0 {
            let k = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) % below;
            let t = Instant::now();
            let s = load::send(
                &http,
                "GET",
                &follower,
                &format!("/v1/kv/{}", key(k)),
                Bytes::new(),
            )
            .await;
            Some((t.elapsed(), s))
        } else {
            None
        };
        let t = Instant::now();
        let s = load::send(
            &http,
            "PUT",
            &leader,
            &format!("/v1/kv/scale-probe/{}?mode=semi", n % 1000),
            Bytes::from_static(b"probe"),
        )
        .await;
        let write = (t.elapsed(), s);
        let mut g = out.lock().unwrap_or_else(|p| p.into_inner());
        let (reads, writes, errors) = &mut g[tenth];
        if let Some((took, s)) = read {
            match s {
                Ok(200) => {
                    let _ = reads.record(took.as_micros() as u64);
                }
                _ => *errors += 1,
            }
        }
        match write.1 {
            Ok(200) => {
                let _ = writes.record(write.0.as_micros() as u64);
            }
            _ => *errors += 1,
        }
    }
}

/// What happens after the load: the figures of the settled cluster, a restart and a learner.
#[derive(Debug, Serialize)]
struct After {
    /// Data directory of each node after the load, MiB.
    disk_mib: Vec<f64>,
    /// Of which RocksDB's write-ahead log files, MiB.
    wal_mib: Vec<f64>,
    /// And its tables, MiB.
    sst_mib: Vec<f64>,
    /// Leader's resident memory after the load, MiB.
    leader_rss_mib: f64,
    restart_secs: f64,
    learner_catch_up_secs: f64,
    learner_installed_snapshot: bool,
    learner_peak_rss_mib: f64,
    leader_peak_rss_during_catch_up_mib: f64,
}

/// Waits for every node to hold the load, restarts `follower`, adds a learner.
fn after_load(
    mut c: Cluster,
    leader: u64,
    follower: u64,
    leader_pid: i32,
) -> Result<After, String> {
    // Every node holds everything.
    let target = applied(&c, leader).ok_or("the leader does not answer")?;
    for id in c.ids() {
        wait_until(LONG, &format!("node {id} to apply the load"), || {
            (applied(&c, id)? >= target).then_some(())
        });
    }
    let mib = |b: u64| b as f64 / 1048576.0;
    let sizes: Vec<(u64, u64, u64)> = c
        .ids()
        .into_iter()
        .map(|id| dir_bytes(&c.node(id).data_dir))
        .collect();
    let disk_mib: Vec<f64> = sizes.iter().map(|s| mib(s.0)).collect();
    let wal_mib: Vec<f64> = sizes.iter().map(|s| mib(s.1)).collect();
    let sst_mib: Vec<f64> = sizes.iter().map(|s| mib(s.2)).collect();
    let leader_rss_mib = procfs::rss_kib(leader_pid).unwrap_or(0) as f64 / 1024.0;

    // A follower restarted: until it serves a linearizable read again.
    let target = applied(&c, leader).ok_or("the leader does not answer")?;
    c.kill(follower);
    let t = Instant::now();
    c.restart(follower);
    wait_until(LONG, "the restarted follower to catch up", || {
        (applied(&c, follower)? >= target).then_some(())
    });
    wait_until(LONG, "the restarted follower to serve a read", || {
        let r = c.get(follower, &key(0)).ok()?;
        (r.status == 200).then_some(())
    });
    let restart_secs = t.elapsed().as_secs_f64();
    eprintln!("scale: a follower restarted and serves in {restart_secs:.1} s");

    // A learner catches up; its memory sampled until it has.
    let target = applied(&c, leader).ok_or("the leader does not answer")?;
    let t = Instant::now();
    let learner = c.add_node(leader);
    let learner_pid = c.node(learner).pid().ok_or("the learner has no pid")?;
    let mut leader_peak = 0u64;
    let mut learner_peak = 0u64;
    wait_until(LONG, "the learner to catch up", || {
        leader_peak = leader_peak.max(procfs::rss_kib(leader_pid).unwrap_or(0));
        learner_peak = learner_peak.max(peak_rss_kib(learner_pid).unwrap_or(0));
        (applied(&c, learner)? >= target).then_some(())
    });
    let learner_catch_up_secs = t.elapsed().as_secs_f64();
    learner_peak = learner_peak.max(peak_rss_kib(learner_pid).unwrap_or(0));
    let learner_log = std::fs::read_to_string(&c.node(learner).log).unwrap_or_default();
    let installed = learner_log.contains("installed a snapshot");
    eprintln!("scale: the learner caught up in {learner_catch_up_secs:.1} s");

    Ok(After {
        disk_mib,
        wal_mib,
        sst_mib,
        leader_rss_mib,
        restart_secs,
        learner_catch_up_secs,
        learner_installed_snapshot: installed,
        learner_peak_rss_mib: learner_peak as f64 / 1024.0,
        leader_peak_rss_during_catch_up_mib: leader_peak as f64 / 1024.0,
    })
}

/// Runs the scenario and returns its Markdown report (also written under `out`).
pub async fn run(a: &ScaleArgs) -> Result<String, String> {
    std::fs::create_dir_all(&a.out).map_err(|e| format!("{}: {e}", a.out.display()))?;
    let (c, leader, follower) = tokio::task::spawn_blocking(|| {
        let mut c = Cluster::start(3);
        let leader = c.wait_for_leader();
        let follower = c.others(&[leader])[0];
        (c, leader, follower)
    })
    .await
    .map_err(|e| e.to_string())?;
    let http = load::http(a.clients + 2);
    let (leader_addr, follower_addr) = (c.http_addr(leader), c.http_addr(follower));
    let leader_pid = c
        .nodes
        .get(leader as usize - 1)
        .and_then(|n| n.pid())
        .ok_or("the leader has no pid")?;
    let new_hist =
        || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string());
    let probes: Probes = (0..10)
        .map(|_| Ok((new_hist()?, new_hist()?, 0)))
        .collect::<Result<_, String>>()?;
    let probes = Arc::new(Mutex::new(probes));
    let (loaded, stop) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let prober = tokio::spawn(probe(Probe {
        http: http.clone(),
        leader: leader_addr.clone(),
        follower: follower_addr,
        keys: a.keys,
        per_sec: a.probes,
        loaded: loaded.clone(),
        stop: stop.clone(),
        out: probes.clone(),
    }));
    // Progress every two seconds, and the time each tenth was reached.
    let started = Instant::now();
    let sampler = {
        let (loaded, stop, keys) = (loaded.clone(), stop.clone(), a.keys);
        tokio::spawn(async move {
            let mut progress = vec![(0.0, 0u64)];
            let mut tenth_at = vec![0.0f64; 11];
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (t, n) = (
                    started.elapsed().as_secs_f64(),
                    loaded.load(Ordering::Relaxed),
                );
                for (i, at) in tenth_at.iter_mut().enumerate().skip(1) {
                    if *at == 0.0 && n * 10 >= keys * i as u64 {
                        *at = t;
                    }
                }
                if t - progress.last().map_or(0.0, |p| p.0) >= 2.0 {
                    eprintln!("scale: {n} keys in {t:.0} s");
                    progress.push((t, n));
                }
            }
            (progress, tenth_at)
        })
    };
    load_keys(a, &http, &leader_addr, loaded.clone()).await;
    let load_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = prober.await;
    let (mut progress, tenth_at) = sampler.await.map_err(|e| e.to_string())?;
    progress.push((load_secs, a.keys));
    eprintln!("scale: {} keys loaded in {load_secs:.0} s", a.keys);

    // The cluster's blocking calls off the runtime's thread (under the runtime, tokio's
    // cooperative budget starves the harness's blocking client once it runs out: a spin).
    let after = tokio::task::spawn_blocking(move || after_load(c, leader, follower, leader_pid))
        .await
        .map_err(|e| e.to_string())??;

    let probes = probes.lock().unwrap_or_else(|p| p.into_inner());
    let tenths: Vec<Tenth> = probes
        .iter()
        .enumerate()
        .map(|(i, (r, w, e))| {
            let secs = tenth_at[i + 1].max(if i == 9 { load_secs } else { 0.0 }) - tenth_at[i];
            Tenth {
                keys: a.keys * (i as u64 + 1) / 10,
                rate: (a.keys as f64 / 10.0) / secs.max(1e-3),
                read_p50: ms(r, 0.5),
                read_p99: ms(r, 0.99),
                write_p50: ms(w, 0.5),
                write_p99: ms(w, 0.99),
                probe_errors: *e,
            }
        })
        .collect();
    let result = ScaleResult {
        keys: a.keys,
        value_size: a.value_size,
        batch: a.batch,
        load_secs,
        tenths,
        after,
        progress,
    };
    write_outputs(a, &result)
}

fn write_outputs(a: &ScaleArgs, r: &ScaleResult) -> Result<String, String> {
    let name = format!("scale-{}-{}b", r.keys, r.value_size);
    let json = serde_json::to_string_pretty(r).map_err(|e| e.to_string())?;
    std::fs::write(a.out.join(format!("{name}.json")), json).map_err(|e| e.to_string())?;
    let mk = |k: u64| k as f64 / 1e6;
    plot::lines(
        &a.out.join(format!("{name}-load.svg")),
        &format!("loading {} keys of {} bytes", r.keys, r.value_size),
        "seconds",
        "millions of keys loaded",
        &[Series {
            name: "keys loaded".into(),
            points: r.progress.iter().map(|(t, n)| (*t, mk(*n))).collect(),
        }],
        None,
    )?;
    let per_tenth = |f: &dyn Fn(&Tenth) -> f64| -> Vec<(f64, f64)> {
        r.tenths
            .iter()
            .filter(|t| f(t).is_finite())
            .map(|t| (mk(t.keys), f(t)))
            .collect()
    };
    plot::lines(
        &a.out.join(format!("{name}-latency.svg")),
        "probe latency while the data grows (p99, ms)",
        "millions of keys loaded",
        "ms",
        &[
            Series {
                name: "linearizable read from a follower, p99".into(),
                points: per_tenth(&|t| t.read_p99),
            },
            Series {
                name: "semi write to the leader, p99".into(),
                points: per_tenth(&|t| t.write_p99),
            },
        ],
        None,
    )?;
    let mut md = format!(
        "## Scale: {} keys of {} bytes\n\n3 nodes on loopback; loaded through the leader in transactions of up to {} puts ({} loaders), values that do not compress. Loaded in {:.0} s ({:.0} keys/s, {:.1} MB/s of values).\n\n| keys loaded | load rate (keys/s) | read p50 | read p99 | write p50 | write p99 | probe errors |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        r.keys,
        r.value_size,
        r.batch.clamp(1, 128).min((MAX_BODY / (r.value_size + 48)).max(1)),
        a.clients,
        r.load_secs,
        r.keys as f64 / r.load_secs,
        r.keys as f64 * r.value_size as f64 / r.load_secs / 1e6,
    );
    for t in &r.tenths {
        md.push_str(&format!(
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} |\n",
            t.keys, t.rate, t.read_p50, t.read_p99, t.write_p50, t.write_p99, t.probe_errors
        ));
    }
    let list = |v: &[f64]| -> String {
        v.iter()
            .map(|d| format!("{d:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    md.push_str(&format!(
        "\n| after the load | |\n| --- | ---: |\n| data directories (MiB) | {} |\n| of which write-ahead log (MiB) | {} |\n| of which tables (MiB) | {} |\n| leader resident memory (MiB) | {:.0} |\n| a follower restarted: until it serves a linearizable read (s) | {:.1} |\n| a new learner: until it has applied everything (s) | {:.1} |\n| the learner installed a snapshot | {} |\n| the learner's peak resident memory (VmHWM, MiB) | {:.0} |\n| the leader's resident memory while it sent (peak sampled, MiB) | {:.0} |\n\nProbes: latencies in ms, one linearizable `GET` of a loaded key from a follower and one single-key `semi` `PUT` to the leader, {} times a second, while the keys load. Plots: `{name}-load.svg`, `{name}-latency.svg`.\n",
        list(&r.after.disk_mib),
        list(&r.after.wal_mib),
        list(&r.after.sst_mib),
        r.after.leader_rss_mib,
        r.after.restart_secs,
        r.after.learner_catch_up_secs,
        if r.after.learner_installed_snapshot { "yes" } else { "no" },
        r.after.learner_peak_rss_mib,
        r.after.leader_peak_rss_during_catch_up_mib,
        a.probes,
    ));
    std::fs::write(a.out.join(format!("{name}.md")), &md).map_err(|e| e.to_string())?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_transaction_is_the_json_the_server_takes() {
        let body = txn_body(7, 3, 10);
        let t: serde_json::Value = serde_json::from_slice(&body).expect("parses");
        let steps = t["success"].as_array().expect("success steps");
        assert_eq!(steps.len(), 3);
        assert_eq!(
            steps[0],
            serde_json::json!({"op": "put", "key": key(7), "value": value(7, 10)})
        );
        assert_eq!(steps[2]["key"], key(9));
        assert_ne!(value(7, 10), value(8, 10), "values differ from key to key");
    }
}
