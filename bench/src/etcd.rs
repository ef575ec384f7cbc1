//! A 3-member etcd cluster on loopback (Debian's `etcd-server`, 3.4), started and stopped by
//! the benchmark, with etcd's default timing (100 ms heartbeat, 1 s election), like keel's.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Running etcd members; stopped on drop.
pub struct Etcd {
    children: Vec<Child>,
    /// Client addresses (host:port).
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

/// The etcd binary (`ETCD_BIN` or `etcd` on the PATH).
pub fn binary() -> PathBuf {
    std::env::var("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("etcd"))
}

/// Its version line, if it runs.
pub fn version() -> Option<String> {
    let out = Command::new(binary()).arg("--version").output().ok()?;
    String::from_utf8(out.stdout)
        .ok()?
        .lines()
        .next()
        .map(str::to_string)
}

impl Etcd {
    /// Starts three members and waits until each reports healthy.
    pub fn start() -> Result<Etcd, String> {
        let dir = tempfile::Builder::new()
            .prefix("keel-bench-etcd-")
            .tempdir()
            .map_err(|e| e.to_string())?;
        let ports = keel_tests::free_ports(6);
        let peer = |i: usize| format!("http://127.0.0.1:{}", ports[2 * i + 1]);
        let initial: Vec<String> = (0..3).map(|i| format!("e{i}={}", peer(i))).collect();
        let initial = initial.join(",");
        let mut etcd = Etcd {
            children: Vec::new(),
            endpoints: (0..3)
                .map(|i| format!("127.0.0.1:{}", ports[2 * i]))
                .collect(),
            _dir: dir,
        };
        // etcd keeps Go's default processors (one per core): keel's nodes get a share of the
        // cores each, but one processor per member made etcd slower here (docs/benchmarks.md,
        // "One worker per core").
        for i in 0..3 {
            let client = format!("http://127.0.0.1:{}", ports[2 * i]);
            let log = std::fs::File::create(etcd._dir.path().join(format!("e{i}.log")))
                .map_err(|e| e.to_string())?;
            let child = Command::new(binary())
                .args(["--name", &format!("e{i}")])
                .arg("--data-dir")
                .arg(etcd._dir.path().join(format!("e{i}")))
                .args(["--listen-client-urls", &client])
                .args(["--advertise-client-urls", &client])
                .args(["--listen-peer-urls", &peer(i)])
                .args(["--initial-advertise-peer-urls", &peer(i)])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "keel-bench"])
                .args(["--logger", "zap", "--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start etcd ({}): {e}", binary().display()))?;
            etcd.children.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = keel_tests::http::Http::new(Duration::from_secs(1), Duration::from_secs(1));
        for ep in &etcd.endpoints {
            loop {
                let healthy = http
                    .send(ep, "GET", "/health", &[], None)
                    .is_ok_and(|r| r.status == 200 && r.text().contains("true"));
                if healthy {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("etcd member {ep} not healthy within 30 s"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(etcd)
    }
}

impl Etcd {
    /// The members' process ids.
    pub fn pids(&self) -> Vec<i32> {
        self.children.iter().map(|c| c.id() as i32).collect()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
