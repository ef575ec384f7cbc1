//! `keel-bench`: a closed-loop load generator for keel.
//!
//! N concurrent clients, each sending one request at a time for a fixed duration, spread over
//! the given endpoints; latency recorded in an HDR histogram. Several write modes can be run
//! one after the other in one invocation, so their figures are measured side by side.
//!
//! ```text
//! keel-bench --endpoints 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \
//!            --workload write --modes async,semi,sync --clients 64 --duration 10s
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::Rng;
use serde::Serialize;

/// What each client does.
#[derive(Clone, Copy, Debug, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
enum Workload {
    /// PUT random keys.
    Write,
    /// GET random keys (preloaded).
    Read,
    /// Half reads, half writes.
    Mixed,
    /// Atomic add on one contended counter.
    Counter,
}

#[derive(Parser, Debug)]
#[command(name = "keel-bench", about = "closed-loop load generator for keel")]
struct Args {
    /// Comma-separated host:port of the nodes; requests are spread over all of them.
    #[arg(long, default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003")]
    endpoints: String,
    /// Workload.
    #[arg(long, value_enum, default_value = "write")]
    workload: Workload,
    /// Write modes to run, one after the other.
    #[arg(long, default_value = "semi")]
    modes: String,
    /// Read consistency.
    #[arg(long, default_value = "linearizable")]
    consistency: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured duration of each run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each run.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Write results as JSON to this file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Serialize)]
struct RunResult {
    workload: Workload,
    mode: String,
    consistency: String,
    clients: usize,
    duration_s: f64,
    ops: u64,
    errors: u64,
    throughput: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn one_request(
    client: &HttpClient,
    method: Method,
    url: &str,
    body: Bytes,
) -> Result<u16, String> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    resp.into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(status)
}

struct Plan {
    endpoints: Vec<String>,
    workload: Workload,
    mode: String,
    consistency: String,
    keys: u64,
    value: Bytes,
}

impl Plan {
    fn request(&self, rng: &mut impl Rng) -> (Method, String, Bytes) {
        let ep = &self.endpoints[rng.gen_range(0..self.endpoints.len())];
        let key = rng.gen_range(0..self.keys);
        let read = match self.workload {
            Workload::Read => true,
            Workload::Write | Workload::Counter => false,
            Workload::Mixed => rng.gen_bool(0.5),
        };
        match (self.workload, read) {
            (Workload::Counter, _) => (
                Method::POST,
                format!("http://{ep}/v1/kv/bench-counter/add?mode={}", self.mode),
                Bytes::from_static(b"{\"delta\": 1}"),
            ),
            (_, true) => (
                Method::GET,
                format!(
                    "http://{ep}/v1/kv/bench-{key}?consistency={}",
                    self.consistency
                ),
                Bytes::new(),
            ),
            (_, false) => (
                Method::PUT,
                format!("http://{ep}/v1/kv/bench-{key}?mode={}", self.mode),
                self.value.clone(),
            ),
        }
    }
}

async fn run(args: &Args, plan: Arc<Plan>, client: HttpClient) -> RunResult {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..args.clients {
        let (plan, client, stop, measuring) = (
            plan.clone(),
            client.clone(),
            stop.clone(),
            measuring.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut errors = 0u64;
            let mut rng = rand::rngs::StdRng::from_entropy();
            while !stop.load(Ordering::Relaxed) {
                let (m, url, body) = plan.request(&mut rng);
                let t = Instant::now();
                let ok = matches!(one_request(&client, m, &url, body).await, Ok(s) if s < 300 || s == 404);
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    } else {
                        errors += 1;
                    }
                }
            }
            (hist, errors)
        }));
    }
    tokio::time::sleep(args.warmup).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(args.duration).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            let _ = hist.add(&h);
            errors += e;
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    RunResult {
        workload: args.workload,
        mode: plan.mode.clone(),
        consistency: plan.consistency.clone(),
        clients: args.clients,
        duration_s: elapsed,
        ops: hist.len(),
        errors,
        throughput: hist.len() as f64 / elapsed,
        p50_ms: ms(0.5),
        p90_ms: ms(0.9),
        p99_ms: ms(0.99),
        p999_ms: ms(0.999),
        max_ms: hist.max() as f64 / 1000.0,
    }
}

use rand::SeedableRng;

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let endpoints: Vec<String> = args
        .endpoints
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    if endpoints.is_empty() || args.clients == 0 || args.keys == 0 {
        eprintln!("keel-bench: need endpoints, --clients > 0 and --keys > 0");
        std::process::exit(2);
    }
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.clients)
        .build(connector);
    let value = Bytes::from(vec![b'x'; args.value_size]);
    if matches!(args.workload, Workload::Read | Workload::Mixed) {
        eprintln!("preloading {} keys...", args.keys);
        for k in 0..args.keys {
            let url = format!("http://{}/v1/kv/bench-{k}", endpoints[0]);
            if let Err(e) = one_request(&client, Method::PUT, &url, value.clone()).await {
                eprintln!("keel-bench: preload failed: {e}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{:<8} {:<8} {:<13} {:>7} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6}",
        "workload",
        "mode",
        "consistency",
        "clients",
        "ops/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "p99.9",
        "max ms",
        "errors"
    );
    let mut results = Vec::new();
    for mode in args
        .modes
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        let plan = Arc::new(Plan {
            endpoints: endpoints.clone(),
            workload: args.workload,
            mode: mode.to_string(),
            consistency: args.consistency.clone(),
            keys: args.keys,
            value: value.clone(),
        });
        let r = run(&args, plan, client.clone()).await;
        println!(
            "{:<8} {:<8} {:<13} {:>7} {:>10.0} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>6}",
            format!("{:?}", r.workload).to_lowercase(),
            r.mode,
            r.consistency,
            r.clients,
            r.throughput,
            r.p50_ms,
            r.p90_ms,
            r.p99_ms,
            r.p999_ms,
            r.max_ms,
            r.errors
        );
        results.push(r);
    }
    if let Some(path) = &args.json {
        match serde_json::to_string_pretty(&results) {
            Ok(s) => {
                if let Err(e) = std::fs::write(path, s) {
                    eprintln!("keel-bench: cannot write {}: {e}", path.display());
                }
            }
            Err(e) => eprintln!("keel-bench: {e}"),
        }
    }
}
