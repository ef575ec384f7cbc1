//! `keel-bench compare`: keel and etcd started side by side on loopback, the same workloads
//! against both in rounds (each system's median round reported), then writes with more and
//! more clients. With `--pause-idle` (the default) the system not being measured is stopped
//! (SIGSTOP) during each run.

use std::io::Write as _;
use std::sync::{Mutex, Once};

use keel_tests::Cluster;

use crate::load::{self, RunResult, Spec, System, Workload};
use crate::{etcd, spec, Common};

/// Pairs of (keel, etcd) results of the same workload.
pub(crate) struct Compared {
    /// (workload, keel's median round, etcd's median round).
    pub(crate) pairs: Vec<(String, RunResult, RunResult)>,
    /// (workload, keel's run in each round, etcd's), in the order the rounds ran.
    pub(crate) rounds: Vec<(String, Vec<RunResult>, Vec<RunResult>)>,
    /// Whether the idle system was stopped during each run (`--pause-idle`).
    pub(crate) paused_idle: bool,
    /// Writes with more and more clients, both systems.
    pub(crate) sweep: Vec<RunResult>,
}

/// Runs the comparison (see the module's documentation).
pub(crate) async fn run(c: &Common) -> Result<Compared, String> {
    let etcd = etcd::Etcd::start()?;
    let mut keel = Cluster::start(3);
    keel.wait_for_leader();
    let ks = System::Keel(keel.endpoints());
    let es = System::Etcd(etcd.endpoints.clone());
    let keel_pids: Vec<i32> = keel.nodes.iter().filter_map(|n| n.pid()).collect();
    let etcd_pids = etcd.pids();
    let pids = |s: &System| match s {
        System::Keel(_) => keel_pids.clone(),
        System::Etcd(_) => etcd_pids.clone(),
    };
    let idle = |s: &System| match s {
        System::Keel(_) => etcd_pids.clone(),
        System::Etcd(_) => keel_pids.clone(),
    };
    listen_for_interrupts();
    // Dropped (below) before either system: their processes are forgotten here before they are
    // stopped and their ids can be reused.
    let interruptible = Interruptible::new([keel_pids.clone(), etcd_pids.clone()].concat());
    let http = load::http(c.clients);
    load::preload(&http, &ks, c.keys, c.value_size).await?;
    load::preload(&http, &es, c.keys, c.value_size).await?;
    let cases: Vec<(&str, Workload, bool, usize)> = vec![
        (
            "writes (keel semi, etcd put)",
            Workload::Write,
            false,
            c.clients,
        ),
        ("linearizable reads", Workload::Read, false, c.clients),
        (
            "stale reads (etcd serializable)",
            Workload::Read,
            true,
            c.clients,
        ),
        ("writes, 1 client", Workload::Write, false, 1),
        (
            "trivial endpoint (GET /health)",
            Workload::Health,
            true,
            c.clients,
        ),
    ];
    // Every round runs every workload on both systems, the first alternating from round to round
    // and from workload to workload (keel first where the round's and the workload's numbers,
    // both from 1, add up to an even number), so that neither always runs on a machine the
    // other just warmed or loaded: with an odd number of rounds each workload still has one
    // system first once more, but not the same system for every workload.
    let mut runs: Vec<(Vec<RunResult>, Vec<RunResult>)> = vec![Default::default(); cases.len()];
    for round in 1..=c.rounds {
        for (i, ((name, w, stale, clients), (keel_runs, etcd_runs))) in
            cases.iter().zip(&mut runs).enumerate()
        {
            let order = if (round as usize + i + 1).is_multiple_of(2) {
                [&ks, &es]
            } else {
                [&es, &ks]
            };
            for system in order {
                let label = format!("{}: {name}", system.name());
                let spec = Spec {
                    pids: pids(system),
                    ..spec(c, &label, system, *w, "semi", *stale, *clients)
                };
                let r = measured(&http, &spec, c.pause_idle.then(|| idle(system))).await;
                eprintln!("round {round} {}", load::row(&r));
                match system {
                    System::Keel(_) => keel_runs.push(r),
                    System::Etcd(_) => etcd_runs.push(r),
                }
            }
        }
    }
    let mut pairs = Vec::new();
    let mut rounds = Vec::new();
    for ((name, ..), (keel_runs, etcd_runs)) in cases.iter().zip(runs) {
        match (
            median_round(keel_runs.clone()),
            median_round(etcd_runs.clone()),
        ) {
            (Some(k), Some(e)) => pairs.push((name.to_string(), k, e)),
            _ => return Err(format!("no round of {name} ran")),
        }
        rounds.push((name.to_string(), keel_runs, etcd_runs));
    }
    // Latency against offered load: writes with more and more clients.
    let mut sweep = Vec::new();
    for clients in [1usize, 4, 16, 64] {
        for system in [&ks, &es] {
            let label = format!("{} writes, {clients} clients", system.name());
            let spec = Spec {
                pids: pids(system),
                ..spec(c, &label, system, Workload::Write, "semi", false, clients)
            };
            let r = measured(&http, &spec, c.pause_idle.then(|| idle(system))).await;
            eprintln!("{}", load::row(&r));
            sweep.push(r);
        }
    }
    // Forgotten before etcd's members are stopped and reaped (their ids can then be reused);
    // keel's nodes are forgotten before the cluster is dropped at the end of this function.
    drop(interruptible);
    drop(etcd);
    Ok(Compared {
        pairs,
        rounds,
        paused_idle: c.pause_idle,
        sweep,
    })
}

/// One run of `spec`, with the `idle` system's processes (if any) stopped while it lasts.
async fn measured(http: &load::Http, spec: &Spec, idle: Option<Vec<i32>>) -> RunResult {
    let _paused = idle.map(Paused::new);
    load::run(http, spec, true).await
}

/// Processes stopped (SIGSTOP) until this is dropped (SIGCONT).
struct Paused(Vec<i32>);

/// Processes stopped by a [`Paused`] right now. Held while they are stopped or let go on, and
/// by the interrupt from the moment it acts until the process exits, so that no pause starts
/// or ends half-way through it, nor after it.
static STOPPED: Mutex<Vec<i32>> = Mutex::new(Vec::new());
/// Processes of the systems being compared, while they run. Held by the interrupt until the
/// process exits, so that none is forgotten (and then reaped) while it signals them.
static RUNNING: Mutex<Vec<i32>> = Mutex::new(Vec::new());

/// Sends `signal` to `pid`, a process this benchmark started (never to a group: `pid` > 0).
fn signal(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: kill(2) has no memory effects; the callers pass only processes started here.
        unsafe { libc::kill(pid, signal) };
    }
}

impl Paused {
    fn new(pids: Vec<i32>) -> Self {
        let mut stopped = lock(&STOPPED);
        for &pid in &pids {
            signal(pid, libc::SIGSTOP);
        }
        stopped.extend(&pids);
        Paused(pids)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let mut stopped = lock(&STOPPED);
        for &pid in &self.0 {
            signal(pid, libc::SIGCONT);
        }
        stopped.retain(|p| !self.0.contains(p));
    }
}

/// While alive, a SIGINT or SIGTERM of this benchmark first stops both systems' processes
/// (SIGTERM, and SIGCONT for those paused, which could not act on it otherwise), then ends
/// the benchmark: an interrupt during the measured runs leaves no cluster stopped or running
/// behind it. (Before the guard, while the systems start, and after it, while they are taken
/// down, an interrupt ends the benchmark alone, as it always did.) The listener stays for the
/// rest of the process (with no systems registered it only ends it), because a signal
/// listened for once no longer ends the process by itself.
struct Interruptible(Vec<i32>);

impl Interruptible {
    fn new(pids: Vec<i32>) -> Self {
        lock(&RUNNING).extend(&pids);
        Interruptible(pids)
    }
}

impl Drop for Interruptible {
    fn drop(&mut self) {
        lock(&RUNNING).retain(|p| !self.0.contains(p));
    }
}

/// Starts the listener [`Interruptible`] relies on (once per process; inside the runtime).
fn listen_for_interrupts() {
    static LISTEN: Once = Once::new();
    LISTEN.call_once(|| {
        tokio::spawn(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                let _ = writeln!(
                    std::io::stderr(),
                    "keel-bench: cannot listen for SIGINT and SIGTERM"
                );
                return;
            };
            let sig = tokio::select! {
                _ = int.recv() => libc::SIGINT,
                _ = term.recv() => libc::SIGTERM,
            };
            // Held until the process is gone: a pause that comes now waits for that.
            let mut stopped = lock(&STOPPED);
            let running = lock(&RUNNING);
            stop_everything(&mut stopped, &running);
            // Not eprintln!, which panics (and lets both locks go) if standard error is gone.
            let _ = writeln!(
                std::io::stderr(),
                "keel-bench: interrupted; both systems' processes were told to stop"
            );
            // Ended by the signal itself, as without this listener (a shell script running
            // keel-bench sees the interrupt); the exit status is the fallback.
            // SAFETY: signal(2) and raise(3) with the default action of a standard signal.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            std::process::exit(128 + sig);
        });
    });
}

/// Tells every process in `running` (the locked [`RUNNING`]) to stop, lets those of them
/// paused (in `stopped`, the locked [`STOPPED`]) go on so that they do, and kills any still
/// there after 5 s.
fn stop_everything(stopped: &mut Vec<i32>, running: &[i32]) {
    for &pid in running {
        signal(pid, libc::SIGTERM);
    }
    stopped.retain(|pid| {
        let ours = running.contains(pid);
        if ours {
            signal(*pid, libc::SIGCONT);
        }
        !ours
    });
    // A child that has ended stays a zombie until reaped, which nobody does here: "gone" is
    // either no entry in /proc or the state Z.
    let gone = |pid: i32| matches!(crate::procfs::state(pid), None | Some('Z'));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !running.iter().all(|&p| gone(p)) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for &pid in running.iter().filter(|&&p| !gone(p)) {
        signal(pid, libc::SIGKILL);
    }
}

/// The list behind `m` (still usable after a panic elsewhere).
fn lock(m: &Mutex<Vec<i32>>) -> std::sync::MutexGuard<'_, Vec<i32>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The round whose throughput is the median of `runs` (the higher middle one of an even count).
fn median_round(mut runs: Vec<RunResult>) -> Option<RunResult> {
    runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let mid = runs.len() / 2;
    (mid < runs.len()).then(|| runs.swap_remove(mid))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn paused_processes_stop_until_the_pause_is_dropped() {
        let wait_for = |pid: i32, stopped: bool| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if keel_tests::all_threads_stopped(pid) == stopped {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        let (_child, pid) = sleeper();
        let paused = Paused::new(vec![pid]);
        assert!(
            wait_for(pid, true),
            "stopped: {:?}",
            crate::procfs::state(pid)
        );
        drop(paused);
        assert!(
            wait_for(pid, false),
            "going on: {:?}",
            crate::procfs::state(pid)
        );
    }

    /// Kills the child however the test ends.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn sleeper() -> (Reaped, i32) {
        spawn("sleep", &["30"])
    }

    /// A process that ends (status 143) on SIGTERM through a handler of its own, as keel's
    /// nodes and etcd's members do: stopped, it cannot run the handler. Returned once the
    /// handler is in place (the process says so on its standard output).
    fn handles_term() -> (Reaped, i32) {
        use std::io::BufRead;
        let script = "trap 'exit 143' TERM; echo ready; i=0; \
                      while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done";
        let mut child = std::process::Command::new("sh")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        let pid = i32::try_from(child.id()).expect("pid");
        let mut line = String::new();
        if let Some(out) = child.stdout.take() {
            // Ends at the first line, or at the end of the output if sh dies first.
            let _ = std::io::BufReader::new(out).read_line(&mut line);
        }
        assert_eq!(line.trim(), "ready", "the handler was not installed");
        (Reaped(child), pid)
    }

    fn spawn(program: &str, args: &[&str]) -> (Reaped, i32) {
        let child = std::process::Command::new(program)
            .args(args)
            .spawn()
            .expect("spawn");
        let pid = i32::try_from(child.id()).expect("pid");
        (Reaped(child), pid)
    }

    #[test]
    fn an_interrupt_stops_every_registered_process_the_paused_ones_too() {
        let (mut paused_child, paused_pid) = handles_term();
        let (mut running_child, running_pid) = handles_term();
        let (mut other_child, other_pid) = handles_term();
        let registered = Interruptible::new(vec![paused_pid, running_pid]);
        let paused = Paused::new(vec![paused_pid]);
        stop_everything(&mut lock(&STOPPED), &lock(&RUNNING));
        let ended_by_term = |c: &mut Reaped| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = c.0.try_wait() {
                    return status.code() == Some(143);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            false
        };
        assert!(ended_by_term(&mut paused_child), "the paused process");
        assert!(ended_by_term(&mut running_child), "the running process");
        // A process never registered is left alone.
        assert!(
            matches!(other_child.0.try_wait(), Ok(None)),
            "pid {other_pid}"
        );
        // Reaped already: its pause must not signal the id again.
        assert!(!lock(&STOPPED).contains(&paused_pid));
        std::mem::forget(paused);
        drop(registered);
        assert!(!lock(&RUNNING).contains(&running_pid));
        let _ = other_child.0.kill();
    }

    #[test]
    fn the_median_round_is_the_middle_one_by_throughput() {
        let run = |label: &str, throughput: f64| RunResult {
            label: label.into(),
            ..load::sample_run(throughput)
        };
        let three = vec![run("a", 9.0), run("b", 3.0), run("c", 5.0)];
        assert_eq!(median_round(three).map(|r| r.label), Some("c".into()));
        let two = vec![run("a", 9.0), run("b", 3.0)];
        assert_eq!(median_round(two).map(|r| r.label), Some("a".into()));
        assert!(median_round(Vec::new()).is_none());
    }
}
