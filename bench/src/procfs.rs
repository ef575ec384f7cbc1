//! What the processes under load cost, read from `/proc`: CPU time (user + system, every
//! thread) and resident memory. On a 2-core machine shared with the load generator the systems
//! are CPU bound, so CPU time per operation compares them better than throughput alone.

/// Clock ticks per second of `/proc/PID/stat`'s times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions; it returns -1 for an unknown name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/PID/stat` after the command name, from the state on.
fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = s.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// User + system CPU time of a process (all its threads), in seconds.
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let f = stat_fields(pid)?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / ticks_per_second())
}

/// A process's state letter (`R`, `S`, `T` stopped, `Z` ended but not reaped, ...); None once
/// it is gone.
pub fn state(pid: i32) -> Option<char> {
    stat_fields(pid)?.first()?.chars().next()
}

/// The CPU seconds of all of `pids` together (None if any cannot be read).
pub fn total_cpu_secs(pids: &[i32]) -> Option<f64> {
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// CPU time of this process (the load generator itself), in seconds.
pub fn own_cpu_secs() -> Option<f64> {
    cpu_secs(i32::try_from(std::process::id()).ok()?)
}

/// The whole machine's busy CPU time (summed over all cores) from `/proc/stat`, in seconds.
pub fn machine_busy_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    Some(busy_ticks(&s)? / ticks_per_second())
}

/// The busy ticks of `/proc/stat`'s `cpu` line: user, nice, system, irq and softirq. Idle and
/// I/O wait are not busy; steal (time the hypervisor gave to others) is not this machine's
/// work; guest time is already counted in user and nice.
fn busy_ticks(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<f64>().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal guest guest_nice
    Some(f.first()? + f.get(1)? + f.get(2)? + f.get(5)? + f.get(6)?)
}

/// VmRSS of a process, in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let me = std::process::id() as i32;
        let before = cpu_secs(me).expect("own stat");
        // Busy for a moment (bounded) so that the clock ticks.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(200) {
            x = x.wrapping_mul(31).wrapping_add(7);
        }
        std::hint::black_box(x);
        let after = cpu_secs(me).expect("own stat");
        assert!(after > before, "{before} → {after}");
        assert!(rss_kib(me).expect("own status") > 0);
        assert_eq!(total_cpu_secs(&[me, -1]), None);
        let own = own_cpu_secs().expect("own CPU");
        assert!(own >= after, "{after} → {own}");
        let busy = machine_busy_secs().expect("/proc/stat");
        assert!(
            busy >= own,
            "the machine was busy {busy} s, this process alone {own} s"
        );
    }

    #[test]
    fn busy_time_leaves_out_idle_io_wait_and_steal_and_counts_guest_once() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  100 20 30 4000 50 6 7 800 90 1\ncpu0 1 2 3 4 5 6 7 8 9 10\n";
        assert_eq!(busy_ticks(stat), Some(163.0));
        assert_eq!(busy_ticks("cpu0 1 2 3\n"), None);
        assert_eq!(busy_ticks("cpu  1 2 x 4 5 6 7 8\n"), None);
    }
}
