//! The closed-loop load generator: N clients, each with one request in flight, for a fixed
//! duration after a warm-up, against keel or etcd, with latencies in an HDR histogram.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use keel_client::http::{HttpClient, HttpOptions};
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// An HTTP client with keep-alive connections (keel's one HTTP stack, keel_client::http).
pub type Http = HttpClient;

/// Longest wait for one answer during a run (a stalled request counts as a failure).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Builds the shared HTTP client.
pub fn http(clients: usize) -> Http {
    HttpClient::new(HttpOptions {
        max_idle_per_host: clients.max(1),
        request_timeout: REQUEST_TIMEOUT,
        ..HttpOptions::default()
    })
}

/// The system under load.
#[derive(Clone, Debug)]
pub enum System {
    /// keel nodes (host:port of their HTTP API).
    Keel(Vec<String>),
    /// etcd members (host:port of their client URL), through the v3 HTTP gateway.
    Etcd(Vec<String>),
}

impl System {
    /// `keel` or `etcd`.
    pub fn name(&self) -> &'static str {
        match self {
            System::Keel(_) => "keel",
            System::Etcd(_) => "etcd",
        }
    }
    fn endpoints(&self) -> &[String] {
        match self {
            System::Keel(e) | System::Etcd(e) => e,
        }
    }
}

/// What each client does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    /// Writes of random keys.
    Write,
    /// Reads of random (preloaded) keys.
    Read,
    /// Half and half.
    Mixed,
    /// Atomic add on one contended counter (keel only).
    Counter,
    /// `GET /health`: the ceiling of the HTTP stack (no store, no Raft).
    Health,
}

/// One measured run.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Label in tables and plots.
    pub label: String,
    /// Target.
    pub system: System,
    /// Workload.
    pub workload: Workload,
    /// keel write mode (`async`, `semi`, `sync`).
    pub mode: String,
    /// Reads: linearizable (false) or stale / serializable (true).
    pub stale: bool,
    /// Concurrent clients.
    pub clients: usize,
    /// Measured time.
    pub duration: Duration,
    /// Unmeasured time before.
    pub warmup: Duration,
    /// Key space.
    pub keys: u64,
    /// Value size.
    pub value_size: usize,
    /// Operations per second offered in all (spread over the clients), or None: as fast as
    /// the answers come (closed loop).
    pub rate: Option<f64>,
    /// The processes of the system under load, whose CPU time is counted.
    pub pids: Vec<i32>,
}

/// Figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    /// Label.
    pub label: String,
    /// `keel` or `etcd`.
    pub system: String,
    /// Workload.
    pub workload: Workload,
    /// Write mode (keel) or `-`.
    pub mode: String,
    /// Read consistency.
    pub consistency: String,
    /// Clients.
    pub clients: usize,
    /// Successful operations per second.
    pub throughput: f64,
    /// Mean latency of the successful operations, in milliseconds.
    pub mean_ms: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Maximum.
    pub max_ms: f64,
    /// Failed operations.
    pub errors: u64,
    /// Successful operations.
    pub ops: u64,
    /// CPU time (user + system) of the system's processes per 1,000 successful operations, in
    /// milliseconds, over the measured time (None: no processes given, or unreadable).
    pub cpu_ms_per_1k: Option<f64>,
    /// CPU time of the load generator itself per 1,000 successful operations, in milliseconds
    /// (it shares the machine with the system under load).
    pub gen_cpu_ms_per_1k: Option<f64>,
    /// The whole machine's busy CPU time per 1,000 successful operations, in milliseconds: the
    /// system, the generator, and what neither is charged for (interrupts, other processes).
    pub busy_ms_per_1k: Option<f64>,
    /// Cores the machine kept busy on average over the measured time.
    pub busy_cores: Option<f64>,
}

/// A keel write run of 64 clients at `throughput` with every other figure 1 or unknown (for the
/// tests of what is computed from runs).
#[cfg(test)]
pub(crate) fn sample_run(throughput: f64) -> RunResult {
    RunResult {
        label: "t".into(),
        system: "keel".into(),
        workload: Workload::Write,
        mode: "semi".into(),
        consistency: "linearizable".into(),
        clients: 64,
        throughput,
        mean_ms: 1.0,
        p50_ms: 1.0,
        p90_ms: 1.0,
        p99_ms: 1.0,
        p999_ms: 1.0,
        max_ms: 1.0,
        errors: 0,
        ops: 1,
        cpu_ms_per_1k: None,
        gen_cpu_ms_per_1k: None,
        busy_ms_per_1k: None,
        busy_cores: None,
    }
}

fn b64(s: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// One request: method, address, path and body.
type Req = (&'static str, String, String, Bytes);

/// Builds one request of `spec`.
fn request(spec: &Spec, rng: &mut impl Rng, value: &Bytes) -> Req {
    let eps = spec.system.endpoints();
    let ep = &eps[rng.gen_range(0..eps.len())];
    let key = format!("bench-{}", rng.gen_range(0..spec.keys));
    let read = match spec.workload {
        Workload::Read | Workload::Health => true,
        Workload::Write | Workload::Counter => false,
        Workload::Mixed => rng.gen_bool(0.5),
    };
    match (&spec.system, spec.workload, read) {
        (_, Workload::Health, _) => ("GET", ep.to_string(), "/health".to_string(), Bytes::new()),
        (System::Keel(_), Workload::Counter, _) => (
            "POST",
            ep.to_string(),
            format!("/v1/kv/bench-counter/add?mode={}", spec.mode),
            Bytes::from_static(b"{\"delta\": 1}"),
        ),
        (System::Keel(_), _, true) => (
            "GET",
            ep.to_string(),
            format!(
                "/v1/kv/{key}?consistency={}",
                if spec.stale { "stale" } else { "linearizable" }
            ),
            Bytes::new(),
        ),
        (System::Keel(_), _, false) => (
            "PUT",
            ep.to_string(),
            format!("/v1/kv/{key}?mode={}", spec.mode),
            value.clone(),
        ),
        (System::Etcd(_), _, true) => (
            "POST",
            ep.to_string(),
            "/v3/kv/range".to_string(),
            Bytes::from(
                serde_json::json!({"key": b64(key.as_bytes()), "serializable": spec.stale})
                    .to_string(),
            ),
        ),
        (System::Etcd(_), _, false) => (
            "POST",
            ep.to_string(),
            "/v3/kv/put".to_string(),
            Bytes::from(
                serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value)}).to_string(),
            ),
        ),
    }
}

/// Sends one request; Ok(status).
pub async fn send(
    http: &Http,
    method: &str,
    addr: &str,
    path: &str,
    body: Bytes,
) -> Result<u16, String> {
    let resp = http
        .request(addr, method, path, &[], body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(resp.status)
}

/// Writes every key once, so reads find values.
pub async fn preload(
    http: &Http,
    system: &System,
    keys: u64,
    value_size: usize,
) -> Result<(), String> {
    let value = Bytes::from(vec![b'x'; value_size]);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, system, value, next) =
            (http.clone(), system.clone(), value.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= keys {
                    return Ok(());
                }
                let eps = system.endpoints();
                let ep = &eps[k as usize % eps.len()];
                let (m, addr, path, body) = match &system {
                    System::Keel(_) => (
                        "PUT",
                        ep.to_string(),
            format!("/v1/kv/bench-{k}?mode=semi"),
                        value.clone(),
                    ),
                    System::Etcd(_) => (
                        "POST",
                        ep.to_string(),
            "/v3/kv/put".to_string(),
                        Bytes::from(
                            serde_json::json!({"key": b64(format!("bench-{k}").as_bytes()), "value": b64(&value)})
                                .to_string(),
                        ),
                    ),
                };
                match send(&http, m, &addr, &path, body).await {
                    Ok(s) if s < 300 => {}
                    Ok(s) => return Err(format!("preload answered {s}")),
                    Err(e) => return Err(e),
                }
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// Runs one closed-loop measurement.
pub async fn run(http: &Http, spec: &Spec, progress: bool) -> RunResult {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let value = Bytes::from(vec![b'x'; spec.value_size]);
    let mut tasks = Vec::new();
    for _ in 0..spec.clients {
        let (http, spec, stop, measuring, done, value) = (
            http.clone(),
            spec.clone(),
            stop.clone(),
            measuring.clone(),
            done.clone(),
            value.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist =
                Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let mut rng = rand::rngs::StdRng::from_entropy();
            // At a fixed rate each client sends every `clients / rate` seconds (not faster than
            // its answers come); a client behind its schedule does not burst to catch up.
            let interval = spec
                .rate
                .filter(|r| *r > 0.0)
                .and_then(|r| Duration::try_from_secs_f64(spec.clients as f64 / r).ok())
                .map(|i| i.min(Duration::from_secs(3600)));
            let mut next = tokio::time::Instant::now()
                + interval.map_or(Duration::ZERO, |i| i.mul_f64(rng.gen_range(0.0..1.0)));
            while !stop.load(Ordering::Relaxed) {
                if let Some(i) = interval {
                    tokio::time::sleep_until(next).await;
                    next = (next + i).max(tokio::time::Instant::now());
                }
                let (m, addr, path, body) = request(&spec, &mut rng, &value);
                let t = Instant::now();
                let ok = matches!(send(&http, m, &addr, &path, body).await, Ok(s) if s < 300 || s == 404);
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, errors)
        }));
    }
    tokio::time::sleep(spec.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let cpu_before = crate::procfs::total_cpu_secs(&spec.pids);
    let gen_before = crate::procfs::own_cpu_secs();
    let busy_before = crate::procfs::machine_busy_secs();
    let bar = progress.then(|| {
        let b = indicatif::ProgressBar::new(spec.duration.as_millis() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>28} [{bar:30}] {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_prefix(spec.label.clone());
        b
    });
    while started.elapsed() < spec.duration {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(b) = &bar {
            let el = started.elapsed();
            b.set_position(el.as_millis() as u64);
            b.set_message(format!(
                "{:.0} ops/s",
                done.load(Ordering::Relaxed) as f64 / el.as_secs_f64().max(0.001)
            ));
        }
    }
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_after = crate::procfs::total_cpu_secs(&spec.pids);
    let gen_after = crate::procfs::own_cpu_secs();
    let busy_after = crate::procfs::machine_busy_secs();
    stop.store(true, Ordering::Relaxed);
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    if let Some(rate) = spec.rate {
        let got = hist.len() as f64 / elapsed;
        if got < 0.95 * rate {
            eprintln!(
                "keel-bench: {}: offered {rate:.0} ops/s but completed {got:.0}/s: the system (or this generator) is saturated, so CPU per operation is not at the offered load",
                spec.label
            );
        }
    }
    let per_1k = |before: Option<f64>, after: Option<f64>| match (before, after) {
        (Some(b), Some(a)) if !hist.is_empty() => {
            Some((a - b) * 1000.0 * 1000.0 / hist.len() as f64)
        }
        _ => None,
    };
    RunResult {
        gen_cpu_ms_per_1k: per_1k(gen_before, gen_after),
        busy_ms_per_1k: per_1k(busy_before, busy_after),
        busy_cores: match (busy_before, busy_after) {
            (Some(b), Some(a)) if elapsed > 0.0 => Some((a - b) / elapsed),
            _ => None,
        },
        label: spec.label.clone(),
        system: spec.system.name().to_string(),
        workload: spec.workload,
        mode: match spec.system {
            System::Keel(_) => spec.mode.clone(),
            System::Etcd(_) => "-".into(),
        },
        consistency: if spec.stale { "stale" } else { "linearizable" }.into(),
        clients: spec.clients,
        throughput: hist.len() as f64 / elapsed,
        mean_ms: hist.mean() / 1000.0,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
        errors,
        ops: hist.len(),
        cpu_ms_per_1k: match (cpu_before, cpu_after) {
            (Some(b), Some(a)) if !spec.pids.is_empty() && !hist.is_empty() => {
                Some((a - b) * 1000.0 * 1000.0 / hist.len() as f64)
            }
            _ => None,
        },
    }
}

/// A table row.
pub fn row(r: &RunResult) -> String {
    format!(
        "| {} | {} | {:?} | {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |",
        r.label,
        r.system,
        r.workload,
        r.mode,
        r.consistency,
        r.clients,
        r.throughput,
        r.p50_ms,
        r.p90_ms,
        r.p99_ms,
        r.max_ms,
        r.errors,
        r.cpu_ms_per_1k
            .map_or("-".to_string(), |c| format!("{c:.0}"))
    )
}

/// The table header matching [`row`].
pub const HEADER: &str = "| run | system | workload | mode | reads | clients | ops/s | p50 ms | p90 ms | p99 ms | max ms | errors | CPU ms / 1,000 ops |\n| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";
