//! The lock workload of the fault suite (issue 18): workers that each take a lease, acquire one
//! shared lock, read a counter, and write it back plus one with `If-Fence`, then release; some
//! of them "pause" (stop everything, keepalives included) for longer than their TTL between the
//! read and the write, as a holder frozen in a GC pause would. Meanwhile a nemesis kills,
//! pauses (SIGSTOP) and isolates the leader and isolates followers, from a printed seed.
//!
//! The checker ([`check`]) holds the history to what SPEC §8 promises:
//! - **fenced writes never interleave**: in log order, the fences of the writes the store
//!   admitted never go down (a write under an older grant admitted after one under a newer grant
//!   means two holders wrote in turn);
//! - **no lost update**: in log order, every admitted write's value is one more than the
//!   previous one (each was computed from the value its holder read under its lock);
//! - **fences are unique to their grant**: no fence was handed to two leases;
//! - **no acknowledged keepalive is broken**: a keepalive sent at `s` and answered 200 means
//!   the lease lives until `s + TTL`; a keepalive answered 404 (the lease is gone) that
//!   completed before that contradicts it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::http::Http;
use crate::{Cluster, Spec};

/// The lock every worker wants.
pub const LOCK: &str = "locks/shared";
/// The counter the holder increments.
pub const COUNTER: &str = "locks/counter";

/// What a worker saw, with the test's monotonic clock.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A keepalive of `lease`, sent at `invoke`, answered at `complete` with `status`.
    Keepalive {
        /// The lease.
        lease: u64,
        /// Sent.
        invoke: Instant,
        /// Answered.
        complete: Instant,
        /// 200 alive, 404 gone, anything else unknown.
        status: u16,
    },
    /// The lock was granted to `lease` with `fence`.
    Grant {
        /// The lease.
        lease: u64,
        /// The fence.
        fence: u64,
    },
    /// A fenced write of `value` under `fence`, admitted (200, with its log index) or not.
    Write {
        /// The writer's lease.
        lease: u64,
        /// Its fence.
        fence: u64,
        /// The value written.
        value: i64,
        /// 200: admitted; 412: refused by the fence; else unknown.
        status: u16,
        /// The write's log index, when admitted.
        index: u64,
    },
}

/// What the checker found: one line per violation.
#[derive(Debug, Default)]
pub struct Findings {
    /// Violations, by kind.
    pub violations: Vec<(String, String)>,
    /// Admitted fenced writes.
    pub admitted: usize,
    /// Fenced writes refused by their fence.
    pub refused: usize,
    /// Grants.
    pub grants: usize,
    /// Keepalives answered 200.
    pub keepalives_ok: usize,
}

/// Checks a history (see the module doc). `ttl` is the leases' granted TTL.
pub fn check(events: &[Event], ttl: Duration) -> Findings {
    let mut f = Findings::default();
    let mut fence_owner: HashMap<u64, u64> = HashMap::new();
    let mut writes = Vec::new();
    // Values of writes whose outcome is unknown: any of them may have been admitted.
    let mut maybe: std::collections::HashSet<i64> = std::collections::HashSet::new();
    let mut alive_until: HashMap<u64, Vec<Instant>> = HashMap::new();
    let mut gone_at: HashMap<u64, Vec<Instant>> = HashMap::new();
    for e in events {
        match e {
            Event::Grant { lease, fence } => {
                f.grants += 1;
                if let Some(other) = fence_owner.insert(*fence, *lease) {
                    if other != *lease {
                        f.violations.push((
                            "fence".into(),
                            format!("fence {fence} granted to lease {other} and to lease {lease}"),
                        ));
                    }
                }
            }
            Event::Write { status: 200, .. } => writes.push(e.clone()),
            Event::Write { status: 412, .. } => f.refused += 1,
            Event::Write { value, .. } => {
                maybe.insert(*value);
            }
            Event::Keepalive {
                lease,
                invoke,
                complete,
                status,
            } => match status {
                200 => {
                    f.keepalives_ok += 1;
                    alive_until.entry(*lease).or_default().push(*invoke + ttl);
                }
                404 => gone_at.entry(*lease).or_default().push(*complete),
                _ => {}
            },
        }
    }
    f.admitted = writes.len();
    let key = |e: &Event| match e {
        Event::Write { index, .. } => *index,
        _ => 0,
    };
    writes.sort_by_key(key);
    let mut prev: Option<(u64, i64, u64)> = None;
    for w in &writes {
        let Event::Write {
            fence,
            value,
            index,
            lease,
            ..
        } = w
        else {
            continue;
        };
        if let Some((pf, pv, pi)) = prev {
            if *fence < pf {
                f.violations.push((
                    "interleaving".into(),
                    format!(
                        "write at {index} under fence {fence} (lease {lease}) admitted after the \
                         write at {pi} under the newer fence {pf}"
                    ),
                ));
            }
            // A gap is fine when every missing value was written with an unknown outcome.
            let gap_explained = *value > pv + 1 && (pv + 1..*value).all(|v| maybe.contains(&v));
            if *value != pv + 1 && !gap_explained {
                f.violations.push((
                    "lost_update".into(),
                    format!("write at {index} wrote {value} after the write at {pi} wrote {pv}"),
                ));
            }
        }
        prev = Some((*fence, *value, *index));
    }
    for (lease, gones) in &gone_at {
        let Some(promises) = alive_until.get(lease) else {
            continue;
        };
        for g in gones {
            if let Some(p) = promises.iter().find(|p| g < p) {
                f.violations.push((
                    "lease_ended_early".into(),
                    format!(
                        "lease {lease} was reported gone {:?} before a 200 keepalive's promise ran out",
                        p.saturating_duration_since(*g)
                    ),
                ));
            }
        }
    }
    f
}

/// Options of a lock run.
pub struct LockRun {
    /// The nemesis seed.
    pub seed: u64,
    /// Length of the faulty phase.
    pub duration: Duration,
    /// Planted bug (with the keel-planted binary).
    pub planted: Option<&'static str>,
    /// Worker threads (each pinned to node `i mod 3`).
    pub workers: usize,
}

/// The outcome of a lock run.
#[derive(Debug)]
pub struct LockReport {
    /// What the checker found.
    pub findings: Findings,
    /// The seed.
    pub seed: u64,
    /// The faults played, in order.
    pub faults: Vec<String>,
    /// The granted TTL.
    pub ttl: Duration,
}

impl LockReport {
    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "locks (seed {}, ttl {:?}): {} grants, {} fenced writes admitted, {} refused by their \
             fence, {} keepalives ok; faults {:?}; violations {:?}",
            self.seed,
            self.ttl,
            self.findings.grants,
            self.findings.admitted,
            self.findings.refused,
            self.findings.keepalives_ok,
            self.faults,
            self.findings.violations
        )
    }
}

fn send(
    http: &Http,
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> (u16, Value, Option<u64>) {
    match http.send(addr, method, path, headers, body.map(str::as_bytes)) {
        Ok(r) => {
            let v = serde_json::from_str(&r.text()).unwrap_or(Value::Null);
            (r.status, v, r.header_u64("x-keel-index"))
        }
        Err(_) => (0, Value::Null, None),
    }
}

fn record(h: &Mutex<Vec<Event>>, e: Event) {
    h.lock().unwrap_or_else(|p| p.into_inner()).push(e);
}

/// One worker: lease, lock, read, (maybe pause), fenced write, release; until `stop`.
fn worker(
    i: usize,
    addr: String,
    h: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    ttl: Duration,
    seed: u64,
) {
    let http = Http::new(Duration::from_millis(500), Duration::from_secs(3));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9e37));
    let keepalive = |lease: u64| {
        let invoke = Instant::now();
        let (status, _, _) = send(
            &http,
            &addr,
            "POST",
            &format!("/v1/lease/{lease}/keepalive"),
            &[],
            None,
        );
        record(
            &h,
            Event::Keepalive {
                lease,
                invoke,
                complete: Instant::now(),
                status,
            },
        );
        status
    };
    for _ in 0..100_000 {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let body = format!("{{\"ttl_ms\": {}}}", ttl.as_millis());
        let (status, v, _) = send(&http, &addr, "POST", "/v1/lease", &[], Some(&body));
        let Some(lease) = (status == 200)
            .then(|| v["id"].as_str().and_then(|s| s.parse::<u64>().ok()))
            .flatten()
        else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        let body =
            format!("{{\"lease\": \"{lease}\", \"value\": \"worker-{i}\", \"wait_ms\": 1000}}");
        let (status, v, _) = send(
            &http,
            &addr,
            "POST",
            &format!("/v1/lock/{LOCK}"),
            &[],
            Some(&body),
        );
        let Some(fence) = (status == 200).then(|| v["fence"].as_u64()).flatten() else {
            continue;
        };
        record(&h, Event::Grant { lease, fence });
        if keepalive(lease) != 200 {
            continue;
        }
        let (status, v, _) = send(&http, &addr, "GET", &format!("/v1/kv/{COUNTER}"), &[], None);
        let current = match status {
            200 => v
                .as_i64()
                .or_else(|| v.as_str().and_then(|s| s.parse().ok())),
            404 => Some(0),
            _ => None,
        };
        let Some(current) = current else { continue };
        if rng.gen_ratio(1, 4) {
            // Frozen past the TTL: no keepalive, nothing; the lock goes to someone else.
            std::thread::sleep(ttl * 2);
        } else {
            keepalive(lease);
        }
        let fence_header = format!("{LOCK}={fence}");
        let value = current + 1;
        let (status, _, index) = send(
            &http,
            &addr,
            "PUT",
            &format!("/v1/kv/{COUNTER}"),
            &[("if-fence", &fence_header)],
            Some(&value.to_string()),
        );
        record(
            &h,
            Event::Write {
                lease,
                fence,
                value,
                status,
                index: index.unwrap_or(0),
            },
        );
        keepalive(lease);
        let _ = send(
            &http,
            &addr,
            "DELETE",
            &format!("/v1/lock/{LOCK}?lease={lease}"),
            &[],
            None,
        );
    }
}

/// The nemesis of the lock and watch workloads: a fault, its heal, a calm; faults drawn from
/// the seed (kill, pause or isolate the leader, or isolate a follower).
pub fn nemesis(c: &mut Cluster, seed: u64, until: Instant, log: &mut Vec<String>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for _ in 0..1000 {
        if Instant::now() + Duration::from_secs(6) > until {
            return;
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(1500..3000)));
        let Some(leader) = c.try_wait_for_leader(Duration::from_secs(20)) else {
            log.push("no leader".into());
            continue;
        };
        let hold = Duration::from_millis(rng.gen_range(2500..4500));
        match rng.gen_range(0..4) {
            0 => {
                log.push(format!("kill leader {leader}"));
                c.kill(leader);
                std::thread::sleep(hold);
                c.restart(leader);
            }
            1 => {
                log.push(format!("pause leader {leader}"));
                c.pause(leader);
                std::thread::sleep(hold);
                c.resume(leader);
            }
            2 => {
                log.push(format!("isolate leader {leader}"));
                c.isolate(leader);
                std::thread::sleep(hold);
                c.heal();
            }
            _ => {
                let f = c.others(&[leader]);
                let victim = f[rng.gen_range(0..f.len())];
                log.push(format!("isolate follower {victim}"));
                c.isolate(victim);
                std::thread::sleep(hold);
                c.heal();
            }
        }
    }
}

/// The cluster the lock and watch workloads run on: 3 nodes with proxied peer links (in
/// network namespaces when available), the planted-bug build when `planted` names a bug.
pub fn workload_cluster(planted: Option<&str>) -> Cluster {
    let bin = match planted {
        Some(_) => crate::suite::planted_bin(),
        None => crate::keel_bin(),
    };
    let env: Vec<(&str, &str)> = planted
        .map(|b| vec![("KEEL_PLANTED_BUG", b)])
        .unwrap_or_default();
    match Cluster::launch_spec(Spec {
        nodes: 3,
        extra: &["--read-timeout", "2s"],
        proxied: true,
        netns: crate::netns::NetnsNet::available(),
        bin,
        env: &env,
        power_disks: false,
        client_cuts: false,
        secure: false,
    }) {
        Ok(c) => c,
        Err(e) => panic!("cannot start the cluster: {e}"),
    }
}

/// Runs the lock workload under the nemesis and checks it.
pub fn run(opts: LockRun) -> LockReport {
    let mut c = workload_cluster(opts.planted);
    let leader = c.wait_for_leader();
    // The granted TTL: the cluster's minimum (twice the election timeout).
    let r = c
        .request(leader, "POST", "/v1/lease", &[], Some(b"{\"ttl_ms\": 1}"))
        .expect("grant");
    let ttl = Duration::from_millis(r.json()["ttl_ms"].as_u64().unwrap_or(2000));
    let h = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..opts.workers)
        .map(|i| {
            let id = c.ids()[i % c.ids().len()];
            let addr = c.client_endpoint(id);
            let (h, stop) = (h.clone(), stop.clone());
            let seed = opts.seed;
            std::thread::spawn(move || worker(i, addr, h, stop, ttl, seed))
        })
        .collect();
    let mut faults = Vec::new();
    nemesis(
        &mut c,
        opts.seed,
        Instant::now() + opts.duration,
        &mut faults,
    );
    c.heal();
    // A calm end: every worker finishes a cycle or two on a healthy cluster.
    c.try_wait_for_leader(Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Release);
    for t in threads {
        let _ = t.join();
    }
    let events = h.lock().unwrap_or_else(|p| p.into_inner()).clone();
    LockReport {
        findings: check(&events, ttl),
        seed: opts.seed,
        faults,
        ttl,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(fence: u64, value: i64, index: u64) -> Event {
        Event::Write {
            lease: fence,
            fence,
            value,
            status: 200,
            index,
        }
    }

    #[test]
    fn a_clean_history_passes_and_each_violation_is_named() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(2);
        let clean = vec![
            Event::Grant { lease: 3, fence: 4 },
            w(4, 1, 6),
            w(4, 2, 7),
            Event::Grant { lease: 5, fence: 9 },
            w(9, 3, 10),
            Event::Write {
                lease: 3,
                fence: 4,
                value: 3,
                status: 412,
                index: 0,
            },
            Event::Keepalive {
                lease: 5,
                invoke: t0,
                complete: t0,
                status: 200,
            },
            Event::Keepalive {
                lease: 5,
                invoke: t0,
                complete: t0 + ttl * 2,
                status: 404,
            },
        ];
        let f = check(&clean, ttl);
        assert!(f.violations.is_empty(), "{:?}", f.violations);
        assert_eq!((f.admitted, f.refused, f.grants), (3, 1, 2));

        let kinds = |events: Vec<Event>| -> Vec<String> {
            check(&events, ttl)
                .violations
                .into_iter()
                .map(|(k, _)| k)
                .collect()
        };
        // An older fence admitted after a newer one (and from a stale read).
        assert_eq!(
            kinds(vec![w(4, 1, 6), w(9, 2, 10), w(4, 2, 11)]),
            ["interleaving", "lost_update"]
        );
        // The same value twice: an update lost.
        assert_eq!(kinds(vec![w(4, 1, 6), w(4, 1, 7)]), ["lost_update"]);
        // A gap: lost, unless the missing value was written with an unknown outcome.
        assert_eq!(kinds(vec![w(4, 1, 6), w(4, 3, 8)]), ["lost_update"]);
        let unknown = Event::Write {
            lease: 4,
            fence: 4,
            value: 2,
            status: 0,
            index: 0,
        };
        assert!(kinds(vec![w(4, 1, 6), unknown, w(4, 3, 8)]).is_empty());
        // One fence, two leases.
        assert_eq!(
            kinds(vec![
                Event::Grant { lease: 3, fence: 4 },
                Event::Grant { lease: 5, fence: 4 }
            ]),
            ["fence"]
        );
        // Gone before the promise of a 200 keepalive ran out.
        assert_eq!(
            kinds(vec![
                Event::Keepalive {
                    lease: 5,
                    invoke: t0,
                    complete: t0,
                    status: 200
                },
                Event::Keepalive {
                    lease: 5,
                    invoke: t0,
                    complete: t0 + ttl / 2,
                    status: 404
                },
            ]),
            ["lease_ended_early"]
        );
    }
}
