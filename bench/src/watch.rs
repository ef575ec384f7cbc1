//! `keel-bench watch`: what watchers cost and how fast changes reach them (issue 19).
//!
//! On a fresh 3-node cluster: the resident memory of a follower before and after opening `idle`
//! watchers on it (on a prefix nobody writes), then, at each write rate, the delay from a write's
//! send (and from its acknowledgement: the leader answers once it is committed and applied) to
//! its event on a watcher of that follower, with and without the idle watchers attached, and the
//! follower's CPU time per 1,000 writes.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_client::http::{HttpClient, HttpOptions, StreamingResponse};
use keel_tests::http::Http;
use keel_tests::watch::change;
use keel_tests::Cluster;

use crate::procfs::{cpu_secs, rss_kib};

/// Settings of the watch benchmark.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Idle watchers to open on the follower.
    #[arg(long, default_value_t = 2000)]
    pub idle: usize,
    /// Write rates (writes per second), one run each.
    #[arg(long, default_value = "200,1000", value_delimiter = ',')]
    pub rates: Vec<u64>,
    /// Seconds per run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
}

/// Opens one idle watcher through keel's HTTP stack and waits for its opening event.
async fn idle_watcher(http: &HttpClient, addr: &str) -> Option<StreamingResponse> {
    let mut s = http
        .stream(addr, "/v1/watch?prefix=idle/", &[])
        .await
        .ok()?;
    if s.status != 200 {
        return None;
    }
    let mut got = Vec::new();
    // Bounded: at most 16 pieces before the first event.
    for _ in 0..16 {
        let piece = s.chunk(Duration::from_secs(10)).await.ok()??;
        got.extend_from_slice(&piece);
        if got.windows(15).any(|w| w == b"event: progress") {
            return Some(s);
        }
    }
    None
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One run: writes at `rate` for `duration` to the leader; the delays to the follower's watcher.
fn latency_run(c: &Cluster, leader: u64, follower: u64, rate: u64, duration: Duration) -> String {
    let start_index = c
        .put(leader, "lat/start", b"0")
        .ok()
        .and_then(|r| r.json()["index"].as_u64())
        .unwrap_or(1);
    let mut stream = match c.watch(
        follower,
        &format!("prefix=lat/&from_index={start_index}"),
        &[],
    ) {
        Ok(s) => s,
        Err(r) => return format!("watch refused: {} {}", r.status, r.text()),
    };
    let base = Instant::now();
    let total = (rate as f64 * duration.as_secs_f64()) as u64;
    let sent: Arc<Mutex<Vec<(f64, f64)>>> =
        Arc::new(Mutex::new(vec![(f64::NAN, f64::NAN); total as usize]));
    let leader_addr = c.http_addr(leader);
    let pid = c.nodes[follower as usize - 1].pid().unwrap_or(0);
    let cpu_before = cpu_secs(pid).unwrap_or(0.0);
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (sent, addr) = (sent.clone(), leader_addr.clone());
            std::thread::spawn(move || {
                let http = Http::new(Duration::from_secs(1), Duration::from_secs(5));
                let mut i = t;
                while i < total {
                    let due = Duration::from_secs_f64(i as f64 / rate as f64);
                    let now = base.elapsed();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let at = base.elapsed().as_secs_f64();
                    let ok = http
                        .send(&addr, "PUT", &format!("/v1/kv/lat/{i}"), &[], Some(b"x"))
                        .is_ok_and(|r| r.status == 200);
                    if ok {
                        let acked = base.elapsed().as_secs_f64();
                        if let Ok(mut s) = sent.lock() {
                            s[i as usize] = (at, acked);
                        }
                    }
                    i += 4;
                }
            })
        })
        .collect();
    let mut received = vec![f64::NAN; total as usize];
    let mut count = 0u64;
    let deadline = Instant::now() + duration + Duration::from_secs(30);
    while count < total && Instant::now() < deadline {
        let Some(e) = stream.next(Duration::from_secs(5)) else {
            if stream.ended {
                break;
            }
            continue;
        };
        if e.event != "put" {
            continue;
        }
        let key = change(&e).key;
        if let Some(i) = key
            .strip_prefix("lat/")
            .and_then(|n| n.parse::<usize>().ok())
        {
            if i < received.len() && received[i].is_nan() {
                received[i] = base.elapsed().as_secs_f64();
                count += 1;
            }
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let cpu = cpu_secs(pid).unwrap_or(0.0) - cpu_before;
    let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
    let mut from_send = Vec::new();
    let mut from_ack = Vec::new();
    for (i, r) in received.iter().enumerate() {
        let (s, a) = sent[i];
        if r.is_nan() || s.is_nan() {
            continue;
        }
        from_send.push((r - s) * 1000.0);
        from_ack.push((r - a) * 1000.0);
    }
    from_send.sort_by(f64::total_cmp);
    from_ack.sort_by(f64::total_cmp);
    format!(
        "| {rate} | {} / {total} | {:.2} | {:.2} | {:.2} | {:.2} | {:.0} |",
        from_send.len(),
        percentile(&from_send, 0.5),
        percentile(&from_send, 0.99),
        percentile(&from_ack, 0.5),
        percentile(&from_ack, 0.99),
        cpu * 1000.0 / (total.max(1) as f64) * 1000.0,
    )
}

/// Runs the watch benchmark; Markdown.
pub fn run(a: &WatchArgs) -> String {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let pid = c.nodes[follower as usize - 1].pid().unwrap_or(0);
    let header = "| writes/s | events seen | send → event p50 (ms) | p99 | ack → event p50 (ms) | p99 | follower CPU ms / 1,000 writes |\n|---|---|---|---|---|---|---|";
    let mut md = String::from("## Watch\n\n");
    md.push_str(&format!(
        "3 nodes on loopback; one watcher on a follower (node {follower}), writes to the leader (node {leader}) at a fixed rate from 4 threads, {:?} per run.\n\n### Without idle watchers\n\n{header}\n",
        a.duration
    ));
    for &rate in &a.rates {
        let row = latency_run(&c, leader, follower, rate, a.duration);
        eprintln!("{row}");
        md.push_str(&row);
        md.push('\n');
    }
    let before = rss_kib(pid).unwrap_or(0);
    let opened_at = Instant::now();
    let addr = c.http_addr(follower);
    let streams = HttpClient::new(HttpOptions::default());
    // In keel-bench's blocking task: the streams' connections run on the runtime.
    let idle: Vec<StreamingResponse> = tokio::runtime::Handle::current().block_on(async {
        let mut open = Vec::with_capacity(a.idle);
        for _ in 0..a.idle {
            if let Some(s) = idle_watcher(&streams, &addr).await {
                open.push(s);
            }
        }
        open
    });
    let after = rss_kib(pid).unwrap_or(0);
    md.push_str(&format!(
        "\n### {} idle watchers on the follower\n\nOpened in {:.1} s; the follower's resident memory {} KiB → {} KiB: {:.1} KiB per idle watcher (connection included).\n\n{header}\n",
        idle.len(),
        opened_at.elapsed().as_secs_f64(),
        before,
        after,
        (after.saturating_sub(before)) as f64 / idle.len().max(1) as f64
    ));
    for &rate in &a.rates {
        let row = latency_run(&c, leader, follower, rate, a.duration);
        eprintln!("{row}");
        md.push_str(&row);
        md.push('\n');
    }
    drop(idle);
    md
}
