//! Injecting and healing faults on a live cluster. Faults overlap, so each slot remembers what it
//! did, and healing one undoes only that: a node killed by two faults is restarted once, by the
//! heal that finds it down; link faults of every active slot are merged and applied together
//! ([`Cluster::apply_links`]) after every change.
//!
//! Targets are chosen among the members that run and are not already the target of another
//! active fault, nor joining or leaving (a membership change in progress). A fault with no
//! possible target is *skipped* and reported: a run with skipped faults is not valid.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

use super::membership::{self, MembershipCtx};
use super::{choose, shuffled, Fault};
use crate::checker::reads::VoterTimeline;
use crate::history::History;
use crate::http::Http;
use crate::proxy::LinkMode;
use crate::workload::Targets;
use crate::{Cluster, Cut};

/// What one active fault did, to undo at heal.
#[derive(Default)]
struct Active {
    killed: Vec<u64>,
    paused: Vec<u64>,
    cuts: Vec<(u64, u64, Cut)>,
    slow: Option<LinkMode>,
    clients: Vec<(u64, Cut)>,
    /// Set at heal: the membership job promotes its learner then.
    promote: Option<Arc<AtomicBool>>,
}

/// The nemesis of one run.
pub struct Nemesis {
    /// The cluster, shared with the membership jobs.
    pub cluster: Arc<Mutex<Cluster>>,
    /// The clients' targets (a removed node's slot goes to the node that replaced it).
    pub targets: Targets,
    /// When each node was a voter.
    pub voters: Arc<Mutex<VoterTimeline>>,
    /// Nodes joining or leaving: never targets.
    busy: Arc<Mutex<HashSet<u64>>>,
    /// Power losses: (node, time).
    pub power_losses: Vec<(u64, u64)>,
    /// Faults that found no target.
    pub skipped: Vec<String>,
    /// Faults that landed weaker than scheduled (another target than the leader, a transfer that
    /// did not happen): reported, not failing.
    pub weaker: Vec<String>,
    /// Active faults by slot.
    active: HashMap<usize, Active>,
    /// Membership jobs under way.
    jobs: Vec<(usize, JoinHandle<Result<String, String>>)>,
    /// Membership jobs that failed.
    pub failed_jobs: Vec<String>,
    /// Membership changes completed.
    pub membership_changes: usize,
    /// Leader transfers that were answered 200.
    pub transfers: usize,
    /// The run's clock.
    clock: History,
    /// Short timeouts: a paused node must not stall the nemesis.
    http: Http,
    /// Fault log lines from the membership jobs.
    log: Arc<Mutex<Vec<String>>>,
}

/// Locks, ignoring poisoning (a panicked job must not hide the run's results).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader as most members report it (None if none is agreed on), asking with `http`.
pub fn leader_of(http: &Http, addrs: &[String]) -> Option<u64> {
    let mut votes = HashMap::new();
    for a in addrs {
        if let Some(s) = http.get_json(a, "/v1/status") {
            if let Some(l) = s["leader"].as_u64() {
                *votes.entry(l).or_insert(0) += 1;
            }
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
}

impl Nemesis {
    /// A nemesis for `cluster`, whose clients use `targets`.
    pub fn new(cluster: Cluster, targets: Targets, clock: History) -> Nemesis {
        let mut timeline = VoterTimeline::default();
        for id in cluster.ids() {
            timeline.spans.insert(id, (0, None));
        }
        Nemesis {
            cluster: Arc::new(Mutex::new(cluster)),
            targets,
            voters: Arc::new(Mutex::new(timeline)),
            busy: Arc::new(Mutex::new(HashSet::new())),
            power_losses: Vec::new(),
            skipped: Vec::new(),
            weaker: Vec::new(),
            active: HashMap::new(),
            jobs: Vec::new(),
            failed_jobs: Vec::new(),
            membership_changes: 0,
            transfers: 0,
            clock,
            http: Http::new(Duration::from_millis(300), Duration::from_millis(800)),
            log: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// Lines the membership jobs logged since the last call.
    pub fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut *lock(&self.log))
    }

    /// The members' client addresses (direct, not through the client proxies).
    fn member_addrs(&self) -> (Vec<u64>, Vec<String>) {
        let c = lock(&self.cluster);
        let ids = c.ids();
        let addrs = ids
            .iter()
            .map(|&id| c.nodes[id as usize - 1].http.clone())
            .collect();
        (ids, addrs)
    }

    /// Nodes some active fault already holds (killed or paused), and nodes joining or leaving.
    fn taken(&self) -> HashSet<u64> {
        let mut t: HashSet<u64> = lock(&self.busy).clone();
        for a in self.active.values() {
            t.extend(a.killed.iter().chain(a.paused.iter()));
        }
        t
    }

    /// Injects `fault` in `slot`; returns a description for the fault log.
    pub fn inject(&mut self, slot: usize, fault: Fault, pick: u64) -> String {
        let (ids, addrs) = self.member_addrs();
        let leader = leader_of(&self.http, &addrs);
        let taken = self.taken();
        let free: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| !taken.contains(id))
            .collect();
        // The leader if it is free, else a free member: "the leader" faults aim at the leader
        // when there is one to aim at.
        let leader_or_free = leader
            .filter(|l| free.contains(l))
            .or_else(|| choose(&free, pick));
        let missed_leader = match fault {
            Fault::KillLeader | Fault::PauseLeader => !leader.is_some_and(|l| free.contains(&l)),
            Fault::PartitionLeader
            | Fault::RejectLeader
            | Fault::BlackholeLeader
            | Fault::OneWayLeaderOut
            | Fault::OneWayLeaderIn
            | Fault::ClientsOffLeader => leader.is_none(),
            _ => false,
        };
        if missed_leader {
            self.weaker.push(format!(
                "{}: no free leader (leader {leader:?}): another node was targeted",
                fault.name()
            ));
        }
        let random = choose(&free, pick);
        let followers: Vec<u64> = free
            .iter()
            .copied()
            .filter(|id| Some(*id) != leader)
            .collect();
        let mut a = Active::default();
        let desc = match fault {
            Fault::KillLeader | Fault::KillRandom | Fault::PauseLeader | Fault::PauseRandom => {
                let target = if matches!(fault, Fault::KillLeader | Fault::PauseLeader) {
                    leader_or_free
                } else {
                    random
                };
                let Some(t) = target else {
                    return self.skip(fault, "no member free to target");
                };
                let mut c = lock(&self.cluster);
                if matches!(fault, Fault::KillLeader | Fault::KillRandom) {
                    c.kill(t);
                    a.killed.push(t);
                    format!("kill -9 node {t}{}", tag(t, leader))
                } else {
                    c.pause(t);
                    a.paused.push(t);
                    format!("SIGSTOP node {t}{}", tag(t, leader))
                }
            }
            Fault::KillAll => {
                if free.is_empty() {
                    return self.skip(fault, "no member free to kill");
                }
                let mut c = lock(&self.cluster);
                for &id in &free {
                    c.kill(id);
                    a.killed.push(id);
                }
                format!("kill -9 nodes {free:?}")
            }
            Fault::PowerLossRandom | Fault::PowerLossMinority | Fault::PowerLossAll => {
                let mut targets = shuffled(&free, pick);
                match fault {
                    Fault::PowerLossRandom => targets.truncate(1),
                    Fault::PowerLossMinority => targets.truncate(((ids.len() - 1) / 2).max(1)),
                    _ => {}
                }
                if targets.is_empty() {
                    return self.skip(fault, "no member free to target");
                }
                targets.sort_unstable();
                let mut lost = 0;
                let mut c = lock(&self.cluster);
                for &id in &targets {
                    lost += c.power_loss(id);
                    a.killed.push(id);
                    self.power_losses.push((id, self.clock.now()));
                }
                format!("power loss of nodes {targets:?} ({lost} bytes never fsynced dropped)")
            }
            Fault::PartitionLeader | Fault::RejectLeader | Fault::BlackholeLeader => {
                let Some(l) = leader.or_else(|| choose(&ids, pick)) else {
                    return self.skip(fault, "no member");
                };
                let how = if fault == Fault::RejectLeader {
                    Cut::Reject
                } else {
                    Cut::Drop
                };
                for &o in ids.iter().filter(|&&o| o != l) {
                    a.cuts.push((l, o, how));
                    a.cuts.push((o, l, how));
                }
                format!("{}: node {l}{} cut off", fault.name(), tag(l, leader))
            }
            Fault::OneWayLeaderOut | Fault::OneWayLeaderIn => {
                let Some(l) = leader.or_else(|| choose(&ids, pick)) else {
                    return self.skip(fault, "no member");
                };
                for &o in ids.iter().filter(|&&o| o != l) {
                    if fault == Fault::OneWayLeaderOut {
                        a.cuts.push((l, o, Cut::Drop));
                    } else {
                        a.cuts.push((o, l, Cut::Drop));
                    }
                }
                format!("{} on node {l}{}", fault.name(), tag(l, leader))
            }
            Fault::IsolateFollower => {
                let Some(f) = choose(&followers, pick) else {
                    return self.skip(fault, "no follower free to target");
                };
                for &o in ids.iter().filter(|&&o| o != f) {
                    a.cuts.push((f, o, Cut::Drop));
                    a.cuts.push((o, f, Cut::Drop));
                }
                format!("follower {f} cut off from its peers (its clients still reach it)")
            }
            Fault::PartitionHalves | Fault::Split22 => {
                let order = shuffled(&ids, pick);
                let k = if fault == Fault::Split22 {
                    ids.len() / 2
                } else {
                    (ids.len() - 1) / 2
                };
                let side: Vec<u64> = order[..k.min(order.len())].to_vec();
                for &x in &ids {
                    for &y in &ids {
                        if x != y && side.contains(&x) != side.contains(&y) {
                            a.cuts.push((x, y, Cut::Drop));
                        }
                    }
                }
                format!("partition {side:?} | the rest")
            }
            Fault::Delay => {
                let ms = 50 + pick % 201;
                a.slow = Some(LinkMode::Delay(Duration::from_millis(ms)));
                format!("delay {ms} ms on every peer link")
            }
            Fault::Loss => {
                a.slow = Some(LinkMode::Lossy {
                    probability: 0.2,
                    stall: Duration::from_millis(200),
                });
                "lossy peer links: 20% of chunks stall 200 ms".to_string()
            }
            Fault::ClientsOffLeader | Fault::ClientsOffRandom => {
                let (target, how) = if fault == Fault::ClientsOffLeader {
                    (leader.or_else(|| choose(&ids, pick)), Cut::Drop)
                } else {
                    let followers: Vec<u64> = ids
                        .iter()
                        .copied()
                        .filter(|id| Some(*id) != leader)
                        .collect();
                    (choose(&followers, pick), Cut::Reject)
                };
                let Some(t) = target else {
                    return self.skip(fault, "no member");
                };
                a.clients.push((t, how));
                format!("clients cut off from node {t}{} ({how:?})", tag(t, leader))
            }
            Fault::TransferLeader => {
                let Some(l) = leader else {
                    return self.skip(fault, "no leader to transfer from");
                };
                let to = choose(&followers, pick);
                let body = match to {
                    Some(t) => format!("{{\"to\": {t}}}"),
                    None => String::new(),
                };
                let addr = {
                    let c = lock(&self.cluster);
                    c.nodes[l as usize - 1].http.clone()
                };
                let http = Http::new(Duration::from_millis(500), Duration::from_secs(8));
                let r = http.send(
                    &addr,
                    "POST",
                    "/v1/cluster/transfer-leader",
                    &[],
                    Some(body.as_bytes()),
                );
                match r {
                    Ok(r) if r.status == 200 => {
                        self.transfers += 1;
                        format!("leader {l} handed leadership to {to:?}: 200")
                    }
                    Ok(r) => {
                        let line = format!("leader {l} → {to:?}: {} {}", r.status, r.text());
                        self.weaker.push(format!("transfer-leader: {line}"));
                        line
                    }
                    Err(e) => {
                        let line = format!("leader {l} → {to:?}: {e}");
                        self.weaker.push(format!("transfer-leader: {line}"));
                        line
                    }
                }
            }
            Fault::Membership => {
                let promote = Arc::new(AtomicBool::new(false));
                a.promote = Some(promote.clone());
                let ctx = MembershipCtx {
                    cluster: self.cluster.clone(),
                    targets: self.targets.clone(),
                    voters: self.voters.clone(),
                    busy: self.busy.clone(),
                    clock: self.clock.clone(),
                    log: self.log.clone(),
                    promote,
                    pick,
                };
                self.jobs
                    .push((slot, std::thread::spawn(move || membership::run(ctx))));
                "membership change started (add a learner, promote it at heal, remove a voter)"
                    .to_string()
            }
        };
        let links = !a.cuts.is_empty() || a.slow.is_some() || !a.clients.is_empty();
        self.active.insert(slot, a);
        if links {
            self.apply_links();
        }
        desc
    }

    fn skip(&mut self, fault: Fault, why: &str) -> String {
        let line = format!("{} SKIPPED: {why}", fault.name());
        self.skipped.push(line.clone());
        line
    }

    /// Merges the link faults of every active slot and applies them.
    fn apply_links(&self) {
        let mut cuts = Vec::new();
        let mut clients = Vec::new();
        let (mut delay, mut lossy) = (None, None);
        for a in self.active.values() {
            cuts.extend(a.cuts.iter().copied());
            clients.extend(a.clients.iter().copied());
            match a.slow {
                Some(LinkMode::Delay(d)) => delay = Some(d),
                Some(m @ LinkMode::Lossy { .. }) => lossy = Some(m),
                _ => {}
            }
        }
        let slow = match (delay, lossy) {
            (Some(d), Some(LinkMode::Lossy { probability, stall })) => LinkMode::DelayLossy {
                delay: d,
                probability,
                stall,
            },
            (Some(d), _) => LinkMode::Delay(d),
            (None, Some(l)) => l,
            _ => LinkMode::Pass,
        };
        lock(&self.cluster).apply_links(&cuts, slow, &clients);
    }

    /// Heals the fault of `slot`.
    pub fn heal(&mut self, slot: usize) -> String {
        let Some(a) = self.active.remove(&slot) else {
            return "nothing to heal".to_string();
        };
        let mut done = Vec::new();
        let still_paused: HashSet<u64> = self
            .active
            .values()
            .flat_map(|o| o.paused.iter().copied())
            .collect();
        let still_killed: HashSet<u64> = self
            .active
            .values()
            .flat_map(|o| o.killed.iter().copied())
            .collect();
        {
            let mut c = lock(&self.cluster);
            for id in a.paused.iter().filter(|id| !still_paused.contains(id)) {
                c.resume(*id);
                done.push(format!("SIGCONT node {id}"));
            }
            for id in a.killed.iter().filter(|id| !still_killed.contains(id)) {
                if c.restart_if_down(*id) {
                    done.push(format!("restart node {id}"));
                }
            }
        }
        if !a.cuts.is_empty() || a.slow.is_some() || !a.clients.is_empty() {
            self.apply_links();
            done.push("its link faults removed".to_string());
        }
        if let Some(p) = a.promote {
            p.store(true, Ordering::Release);
            done.push("the learner may be promoted".to_string());
        }
        if done.is_empty() {
            "nothing to undo".to_string()
        } else {
            done.join(", ")
        }
    }

    /// Heals every active fault and waits for the membership jobs (each has its own deadline).
    pub fn heal_all_and_finish(&mut self) -> Vec<String> {
        let slots: Vec<usize> = self.active.keys().copied().collect();
        let mut out = Vec::new();
        for s in slots {
            out.push(format!("heal slot {s}: {}", self.heal(s)));
        }
        for (slot, job) in self.jobs.drain(..) {
            match job.join() {
                Ok(Ok(line)) => {
                    self.membership_changes += 1;
                    out.push(format!("membership slot {slot}: {line}"));
                }
                Ok(Err(e)) => {
                    self.failed_jobs.push(format!("slot {slot}: {e}"));
                    out.push(format!("membership slot {slot} FAILED: {e}"));
                }
                Err(_) => {
                    self.failed_jobs
                        .push(format!("slot {slot}: the job panicked"));
                    out.push(format!("membership slot {slot} PANICKED"));
                }
            }
        }
        out
    }

    /// The status of every member, by id (direct addresses, short timeouts).
    pub fn statuses(&self) -> Vec<(u64, Value)> {
        let (ids, addrs) = self.member_addrs();
        ids.into_iter()
            .zip(addrs)
            .filter_map(|(id, a)| Some((id, self.http.get_json(&a, "/v1/status")?)))
            .collect()
    }
}

fn tag(node: u64, leader: Option<u64>) -> &'static str {
    if Some(node) == leader {
        " (leader)"
    } else {
        ""
    }
}
