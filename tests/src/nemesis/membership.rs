//! The membership fault, as a job of its own (it takes seconds and overlaps other faults): a new
//! node joins as a learner through a random member, waits while it is a learner until its fault
//! heals, is promoted, and then a voter is removed — the leader half of the time, after handing
//! leadership to another voter — so the cluster keeps its size. The removed node's client slot
//! goes to the new node.
//!
//! Every step is retried against whoever leads until it succeeds or the job's deadline passes;
//! a job that does not finish is a failure of the run, never silently dropped. While a node
//! joins or leaves it is "busy" and no other fault targets it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::runtime::lock;
use crate::checker::reads::VoterTimeline;
use crate::history::History;
use crate::http::Http;
use crate::workload::Targets;
use crate::Cluster;

/// How long a whole membership change may take, faults included.
const DEADLINE: Duration = Duration::from_secs(120);

/// What a membership job shares with the nemesis.
pub struct MembershipCtx {
    /// The cluster.
    pub cluster: Arc<Mutex<Cluster>>,
    /// The clients' targets.
    pub targets: Targets,
    /// When each node was a voter.
    pub voters: Arc<Mutex<VoterTimeline>>,
    /// Nodes joining or leaving.
    pub busy: Arc<Mutex<HashSet<u64>>>,
    /// The run's clock.
    pub clock: History,
    /// Fault log lines.
    pub log: Arc<Mutex<Vec<String>>>,
    /// Set when the fault heals: promote the learner then.
    pub promote: Arc<AtomicBool>,
    /// Random choices.
    pub pick: u64,
}

impl MembershipCtx {
    fn say(&self, line: String) {
        let stamped = format!(
            "{:8.3}s membership: {line}",
            self.clock.elapsed().as_secs_f64()
        );
        eprintln!("{stamped}");
        lock(&self.log).push(stamped);
    }

    /// The members' direct client addresses.
    fn addrs(&self) -> Vec<(u64, String)> {
        let c = lock(&self.cluster);
        c.ids()
            .into_iter()
            .map(|id| (id, c.nodes[id as usize - 1].http.clone()))
            .collect()
    }

    /// The leader's id, address and status: of the members that say they lead, the one with
    /// the highest term (an old leader cut off from its peers may still say so).
    fn leader(&self, http: &Http) -> Option<(u64, String, Value)> {
        self.addrs()
            .into_iter()
            .filter_map(|(id, a)| {
                let s = http.get_json(&a, "/v1/status")?;
                (s["role"] == "leader").then_some((id, a, s))
            })
            .max_by_key(|(_, _, s)| s["term"].as_u64().unwrap_or(0))
    }
}

fn ids_in(status: &Value, field: &str) -> Vec<u64> {
    status[field]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

/// Waits (polling every 200 ms) until `f` says done, or the deadline passes.
fn until<T>(deadline: Instant, what: &str, mut f: impl FnMut() -> Option<T>) -> Result<T, String> {
    for _ in 0..100_000 {
        if let Some(t) = f() {
            return Ok(t);
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(format!("timed out: {what}"))
}

/// Runs one membership change; Ok(description) or Err(what did not happen).
pub fn run(ctx: MembershipCtx) -> Result<String, String> {
    let deadline = Instant::now() + DEADLINE;
    let http = Http::new(Duration::from_millis(300), Duration::from_secs(3));
    let slow = Http::new(Duration::from_millis(500), Duration::from_secs(8));

    // Add: a new node joins through a random member.
    let (id, via) = {
        let mut c = lock(&ctx.cluster);
        let ids = c.ids();
        let via = ids[(ctx.pick % ids.len() as u64) as usize];
        let id = c.try_add_node(via)?;
        lock(&ctx.busy).insert(id);
        (id, via)
    };
    ctx.say(format!("node {id} joins through node {via}"));
    let mut respawns = 0;
    let joined = until(deadline, &format!("node {id} to join as a learner"), || {
        let (_, _, s) = ctx.leader(&http)?;
        if ids_in(&s, "learners").contains(&id) || ids_in(&s, "voters").contains(&id) {
            let running = lock(&ctx.cluster).node(id).is_running();
            if running {
                return Some(());
            }
        }
        // A join that failed (its member was cut off or down) ends the process: try again
        // through another member.
        let mut c = lock(&ctx.cluster);
        if !c.node(id).is_running() && respawns < 30 {
            respawns += 1;
            let members = c.ids();
            let others: Vec<u64> = members.into_iter().filter(|m| *m != id).collect();
            let next = others[(ctx.pick as usize + respawns) % others.len()];
            let addr = c.nodes[next as usize - 1].http.clone();
            c.node(id).join = Some(addr);
            c.restart(id);
            drop(c);
            ctx.say(format!(
                "node {id} exited before joining: started again through node {next}"
            ));
        }
        None
    });
    if let Err(e) = joined {
        // It never became a member: not one of the cluster's nodes.
        lock(&ctx.cluster).mark_removed(id);
        lock(&ctx.busy).remove(&id);
        return Err(e);
    }
    ctx.say(format!("node {id} is a learner"));

    // A learner until the fault heals.
    let _ = until(deadline - Duration::from_secs(60), "the heal", || {
        ctx.promote.load(Ordering::Acquire).then_some(())
    });

    // Promote.
    until(deadline, &format!("learner {id} to be promoted"), || {
        let (_, addr, s) = ctx.leader(&http)?;
        if ids_in(&s, "voters").contains(&id) {
            return Some(());
        }
        let _ = slow.send(
            &addr,
            "POST",
            &format!("/v1/cluster/members/{id}/promote"),
            &[],
            None,
        );
        None
    })?;
    lock(&ctx.voters).spans.insert(id, (ctx.clock.now(), None));
    ctx.say(format!("node {id} promoted to voter"));

    // Remove a voter: the leader (after a transfer) or a follower.
    let (leader, _, s) = until(deadline, "a leader", || ctx.leader(&http))?;
    let voters: Vec<u64> = ids_in(&s, "voters")
        .into_iter()
        .filter(|v| *v != id)
        .collect();
    let busy = lock(&ctx.busy).clone();
    let followers: Vec<u64> = voters
        .iter()
        .copied()
        .filter(|v| *v != leader && !busy.contains(v))
        .collect();
    let leader_free = leader != id && !busy.contains(&leader);
    let victim = if leader_free && ((ctx.pick >> 8).is_multiple_of(2) || followers.is_empty()) {
        leader
    } else if followers.is_empty() {
        return Err(format!(
            "no voter to remove: leader {leader}, voters {voters:?}, busy {busy:?}"
        ));
    } else {
        followers[((ctx.pick >> 16) % followers.len() as u64) as usize]
    };
    lock(&ctx.busy).insert(victim);
    let asked = ctx.clock.now();
    if let Some(span) = lock(&ctx.voters).spans.get_mut(&victim) {
        span.1 = Some(span.1.map_or(asked, |u| u.min(asked)));
    }
    ctx.say(format!(
        "removing node {victim}{}",
        if victim == leader {
            " (the leader)"
        } else {
            ""
        }
    ));
    until(deadline, &format!("node {victim} to be removed"), || {
        let (l, addr, s) = ctx.leader(&http)?;
        if !ids_in(&s, "voters").contains(&victim) && !ids_in(&s, "learners").contains(&victim) {
            return Some(());
        }
        if l == victim {
            let body = format!("{{\"to\": {id}}}");
            let _ = slow.send(
                &addr,
                "POST",
                "/v1/cluster/transfer-leader",
                &[],
                Some(body.as_bytes()),
            );
            return None;
        }
        let _ = slow.send(
            &addr,
            "DELETE",
            &format!("/v1/cluster/members/{victim}"),
            &[],
            None,
        );
        None
    })?;
    // A removed node stops by itself once it applies its removal; one that was cut off never
    // learns of it and is stopped here. (Polled, so that the cluster is not held meanwhile.)
    let mut exited = false;
    for _ in 0..50 {
        if !lock(&ctx.cluster).node(victim).is_running() {
            exited = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    {
        let mut c = lock(&ctx.cluster);
        c.mark_removed(victim);
        let endpoint = c.client_endpoint(id);
        let mut t = ctx.targets.write().unwrap_or_else(|p| p.into_inner());
        for slot in t.iter_mut().filter(|s| s.0 == victim) {
            *slot = (id, endpoint.clone());
        }
        drop(t);
        ctx.say(format!(
            "node {victim} removed ({}); its clients now use node {id}",
            if exited {
                "it stopped by itself"
            } else {
                "stopped by the harness"
            }
        ));
    }
    let mut b = lock(&ctx.busy);
    b.remove(&id);
    b.remove(&victim);
    Ok(format!(
        "node {id} added and promoted, node {victim} removed"
    ))
}
