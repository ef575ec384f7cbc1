//! `keel-bench`: benchmarks of keel.
//!
//! - `keel-bench run`: a closed-loop load (N clients, one request each in flight) against given
//!   keel nodes or etcd members.
//! - `keel-bench modes`: the replication modes (async, semi, sync) with the peer links delayed
//!   by 0, 1, 10 and 50 ms (a userspace proxy on each link: the kernel here has no netem), on a
//!   cluster it starts, reporting the delay it measured on a link.
//! - `keel-bench compare`: keel and a 3-member etcd (3.4, through its HTTP gateway) started on
//!   loopback, the same workloads against both in one run, reported as keel/etcd ratios.
//! - `keel-bench all`: `modes` and `compare`, writing JSON, a Markdown summary and SVG plots.
//! - `keel-bench breakdown`: where one write's time goes, from the nodes' own histograms.
//! - `keel-bench watch`: what watchers cost and how fast changes reach them.
//! - `keel-bench scale`: millions of keys: load rate, latency as the data grows, restart time,
//!   a learner catching up from a snapshot and its peak memory.
//!
//! Runs given the nodes' process ids (`run --pids`; `compare` knows them) report the CPU time of
//! those processes per 1,000 operations, from `/proc`.
//!
//! Criterion micro-benchmarks of the hot paths are in `benches/hot_paths.rs` (`cargo bench`).

mod breakdown;
mod budget;
mod compare;
mod etcd;
mod load;
mod plot;
mod procfs;
mod report;
mod scale;
mod watch;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use compare::Compared;
use keel_tests::{Cluster, LinkMode, LinkProxy};
use load::{RunResult, Spec, System, Workload};

#[derive(Parser, Debug)]
#[command(
    name = "keel-bench",
    about = "benchmarks of keel, alone and beside etcd"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One closed-loop run against running nodes.
    Run(RunArgs),
    /// Replication modes under injected peer-link delay.
    Modes(Common),
    /// keel beside etcd, same workloads, one run.
    Compare(Common),
    /// Both, with plots and a summary.
    All(Common),
    /// Watchers: memory of idle ones, delay from a write to its event on a follower.
    Watch(watch::WatchArgs),
    /// Where one write's time goes (HTTP, forward, append+fsync, replication, apply).
    Breakdown(breakdown::BreakdownArgs),
    /// Millions of keys: load, latency as the data grows, restart, a learner's catch-up.
    Scale(scale::ScaleArgs),
}

#[derive(Args, Debug, Clone)]
struct Common {
    /// Measured seconds per run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up per run.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Clients of the concurrent runs.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Peer-link delays for `modes`, in milliseconds.
    #[arg(long, default_value = "0,1,10,50", value_delimiter = ',')]
    delays: Vec<u64>,
    /// Where JSON, Markdown and SVG results go.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Key space.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// `compare`: rounds of its five workloads (each row reports the median round of each
    /// system, by throughput; the system that runs first alternates from round to round and
    /// from workload to workload).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=99))]
    rounds: u64,
    /// `compare`: stop the other system's processes (SIGSTOP) while one system is measured,
    /// and let them go on (SIGCONT) after, so that an idle cluster takes no CPU from the run
    /// (`--pause-idle false` leaves both running).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pause_idle: bool,
}

#[derive(Args, Debug, Clone)]
struct RunArgs {
    /// Nodes (host:port), comma-separated.
    #[arg(
        long,
        default_value = "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Target them as etcd members instead of keel nodes.
    #[arg(long)]
    etcd: bool,
    /// Workload.
    #[arg(long, value_enum, default_value = "write")]
    workload: Workload,
    /// keel write modes to run one after the other.
    #[arg(long, default_value = "semi", value_delimiter = ',')]
    modes: Vec<String>,
    /// Stale (keel) / serializable (etcd) reads instead of linearizable.
    #[arg(long)]
    stale: bool,
    /// Clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Warm-up.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Key space.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Offer this many operations per second in all (spread over the clients) instead of as
    /// many as the answers allow.
    #[arg(long)]
    rate: Option<f64>,
    /// Process ids of the nodes (comma-separated), whose CPU time per 1,000 operations is
    /// reported.
    #[arg(long, value_delimiter = ',')]
    pids: Vec<i32>,
}

fn spec(
    c: &Common,
    label: &str,
    system: &System,
    workload: Workload,
    mode: &str,
    stale: bool,
    clients: usize,
) -> Spec {
    Spec {
        label: label.to_string(),
        system: system.clone(),
        workload,
        mode: mode.to_string(),
        stale,
        clients,
        duration: c.duration,
        warmup: c.warmup,
        keys: c.keys,
        value_size: c.value_size,
        rate: None,
        pids: Vec::new(),
    }
}

/// A fixed rate must be a positive number at which every client sends at least once in the
/// measured time (each client sends every `clients / rate` seconds: a smaller rate would leave
/// clients asleep past the end of the run).
fn check_rate(rate: Option<f64>, clients: usize, duration: Duration) -> Result<(), String> {
    let Some(rate) = rate else { return Ok(()) };
    let least = clients.max(1) as f64 / duration.as_secs_f64().max(1e-3);
    if !rate.is_finite() || rate < least {
        return Err(format!(
            "--rate {rate}: with {clients} clients over {duration:?} it must be at least {least:.2} ops/s (every client sends at least once)"
        ));
    }
    Ok(())
}

/// Median one-way delay measured through a proxy in `mode`: pings through it to an echo server.
fn measure_link_delay(mode: LinkMode) -> f64 {
    let echo = TcpListener::bind("127.0.0.1:0").expect("echo listener");
    let addr = echo.local_addr().expect("echo addr").to_string();
    std::thread::spawn(move || {
        if let Ok((mut s, _)) = echo.accept() {
            let mut b = [0u8; 1];
            while s.read_exact(&mut b).is_ok() && s.write_all(&b).is_ok() {}
        }
    });
    let proxy = LinkProxy::start(addr);
    proxy.set(mode);
    let Ok(mut s) = TcpStream::connect(proxy.addr()) else {
        return f64::NAN;
    };
    let _ = s.set_nodelay(true);
    let mut rtts = Vec::new();
    let mut b = [0u8; 1];
    for _ in 0..21 {
        let t = Instant::now();
        if s.write_all(&[7]).is_err() || s.read_exact(&mut b).is_err() {
            break;
        }
        rtts.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    rtts.sort_by(f64::total_cmp);
    rtts.get(rtts.len() / 2).map_or(f64::NAN, |m| m / 2.0)
}

/// Results of the modes benchmark: (configured delay, measured one-way delay, results).
pub(crate) type ModesResults = Vec<(u64, f64, Vec<RunResult>)>;

async fn modes(c: &Common) -> ModesResults {
    let mut out = Vec::new();
    for &d in &c.delays {
        let mut cluster = Cluster::start_proxied(3, &[]);
        let leader = cluster.wait_for_leader();
        let mode = if d == 0 {
            LinkMode::Pass
        } else {
            LinkMode::Delay(Duration::from_millis(d))
        };
        cluster.set_all_links(mode);
        let measured = measure_link_delay(mode);
        eprintln!("peer delay {d} ms (measured one-way {measured:.2} ms), writes to the leader (node {leader})");
        let system = System::Keel(vec![cluster.node(leader).http.clone()]);
        let http = load::http(c.clients);
        let mut results = Vec::new();
        // Concurrent clients, then one client: latency without queueing.
        for clients in [c.clients, 1] {
            for m in ["async", "semi", "sync"] {
                let label = match clients {
                    1 => format!("{m} @{d}ms, 1 client"),
                    _ => format!("{m} @{d}ms"),
                };
                let r = load::run(
                    &http,
                    &spec(c, &label, &system, Workload::Write, m, false, clients),
                    true,
                )
                .await;
                eprintln!("{}", load::row(&r));
                results.push(r);
            }
        }
        out.push((d, measured, results));
    }
    out
}

/// `compare.json`: each system's median round per workload, each workload's runs round by
/// round, and the latency-against-load sweep.
fn write_compare_json(out: &std::path::Path, r: &Compared) {
    let medians: Vec<&RunResult> = r.pairs.iter().flat_map(|(_, k, e)| [k, e]).collect();
    let rounds: Vec<serde_json::Value> = r
        .rounds
        .iter()
        .map(|(name, k, e)| serde_json::json!({ "workload": name, "keel": k, "etcd": e }))
        .collect();
    let json = serde_json::json!({
        "medians": medians,
        "rounds": rounds,
        "sweep": r.sweep,
    });
    let _ = std::fs::write(
        out.join("compare.json"),
        serde_json::to_string_pretty(&json).unwrap_or_default(),
    );
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    // The idle governor, and with haltpoll how long an idle virtual CPU polls before it halts:
    // 0 can make every wake-up of a thread on an idle CPU a trip through the hypervisor
    // (docs/benchmarks.md, "Halted virtual CPUs"). The parameter means nothing under another
    // governor.
    let read = |p: &str| std::fs::read_to_string(p).map(|s| s.trim().to_string());
    let governor = read("/sys/devices/system/cpu/cpuidle/current_governor")
        .or_else(|_| read("/sys/devices/system/cpu/cpuidle/current_governor_ro"))
        .unwrap_or_else(|_| "unknown".into());
    let halt_poll = match read("/sys/module/haltpoll/parameters/guest_halt_poll_ns") {
        Ok(ns) if governor == "haltpoll" => {
            format!("idle governor haltpoll, guest_halt_poll_ns {ns}")
        }
        _ => format!("idle governor {governor}"),
    };
    format!(
        "{cores} cores ({cpu}); {halt_poll}; etcd: {}",
        etcd::version().unwrap_or_else(|| "not found".into())
    )
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Watch(a) => match tokio::task::spawn_blocking(move || watch::run(&a)).await {
            Ok(md) => println!("{md}"),
            Err(e) => {
                eprintln!("keel-bench: the watch benchmark failed: {e}");
                std::process::exit(1);
            }
        },
        Cmd::Breakdown(a) => println!("{}", breakdown::run(&a).await),
        Cmd::Scale(a) => match scale::run(&a).await {
            Ok(md) => println!("{md}"),
            Err(e) => {
                eprintln!("keel-bench: the scale benchmark failed: {e}");
                std::process::exit(1);
            }
        },
        Cmd::Run(a) => {
            if let Err(e) = check_rate(a.rate, a.clients, a.duration) {
                eprintln!("keel-bench: {e}");
                std::process::exit(2);
            }
            let system = if a.etcd {
                System::Etcd(a.endpoints.clone())
            } else {
                System::Keel(a.endpoints.clone())
            };
            let http = load::http(a.clients);
            if matches!(a.workload, Workload::Read | Workload::Mixed) {
                if let Err(e) = load::preload(&http, &system, a.keys, a.value_size).await {
                    eprintln!("keel-bench: preload failed: {e}");
                    std::process::exit(1);
                }
            }
            println!("{}", load::HEADER);
            let mut results = Vec::new();
            for m in &a.modes {
                let s = Spec {
                    label: format!("{} {:?}", system.name(), a.workload),
                    system: system.clone(),
                    workload: a.workload,
                    mode: m.clone(),
                    stale: a.stale,
                    clients: a.clients,
                    duration: a.duration,
                    warmup: a.warmup,
                    keys: a.keys,
                    value_size: a.value_size,
                    rate: a.rate,
                    pids: a.pids.clone(),
                };
                let r = load::run(&http, &s, true).await;
                println!("{}", load::row(&r));
                results.push(r);
            }
            if let Some(p) = a.json {
                let _ = std::fs::write(
                    p,
                    serde_json::to_string_pretty(&results).unwrap_or_default(),
                );
            }
        }
        Cmd::Modes(c) | Cmd::Compare(c) | Cmd::All(c)
            if std::fs::create_dir_all(&c.out).is_err() =>
        {
            eprintln!("keel-bench: cannot create {}", c.out.display());
            std::process::exit(1);
        }
        Cmd::Modes(c) => {
            let r = modes(&c).await;
            let md = report::write_modes(&c.out, &r);
            let _ = std::fs::write(c.out.join("modes.md"), &md);
            let _ = std::fs::write(
                c.out.join("modes.json"),
                serde_json::to_string_pretty(&r).unwrap_or_default(),
            );
            println!("{md}");
        }
        Cmd::Compare(c) => match compare::run(&c).await {
            Ok(r) => {
                let md = report::write_compare(&c.out, &r);
                let _ = std::fs::write(c.out.join("compare.md"), &md);
                write_compare_json(&c.out, &r);
                println!("{md}");
            }
            Err(e) => {
                eprintln!("keel-bench: {e}");
                std::process::exit(1);
            }
        },
        Cmd::All(c) => {
            let mut md = format!("# keel-bench results\n\nMachine: {}\nRun: {:?} per run after {:?} warm-up, {} clients, {}-byte values, {} keys.\n\n", machine(), c.duration, c.warmup, c.clients, c.value_size, c.keys);
            match compare::run(&c).await {
                Ok(r) => {
                    md.push_str(&report::write_compare(&c.out, &r));
                    write_compare_json(&c.out, &r);
                }
                Err(e) => md.push_str(&format!("## keel beside etcd\n\nnot run: {e}\n\n")),
            }
            let r = modes(&c).await;
            md.push_str(&report::write_modes(&c.out, &r));
            let _ = std::fs::write(
                c.out.join("modes.json"),
                serde_json::to_string_pretty(&r).unwrap_or_default(),
            );
            let _ = std::fs::write(c.out.join("summary.md"), &md);
            println!("{md}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rate_too_small_for_every_client_to_send_is_refused() {
        let d = Duration::from_secs(10);
        assert!(check_rate(None, 64, d).is_ok());
        assert!(check_rate(Some(3000.0), 32, d).is_ok());
        assert!(check_rate(Some(6.4), 64, d).is_ok());
        for bad in [0.0, -1.0, 0.001, 6.3, f64::NAN, f64::INFINITY] {
            assert!(check_rate(Some(bad), 64, d).is_err(), "{bad}");
        }
    }
}
