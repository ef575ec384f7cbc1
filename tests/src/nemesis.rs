//! The nemesis: faults injected into a running [`Cluster`] and healed, one at a time, every few
//! seconds. Every fault targets only processes and links the harness made itself.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::Rng;

use crate::proxy::LinkMode;
use crate::Cluster;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 the leader; restart it at heal.
    KillLeader,
    /// kill -9 a random node; restart it at heal.
    KillRandom,
    /// kill -9 every node; restart them all at heal.
    KillAll,
    /// SIGSTOP the leader for longer than an election timeout; SIGCONT at heal.
    PauseLeader,
    /// SIGSTOP a random node.
    PauseRandom,
    /// Cut every link to and from the leader.
    PartitionLeader,
    /// Cut the cluster into a random minority and majority.
    PartitionHalves,
    /// Drop everything the leader sends (it still hears the others).
    OneWayLeaderOut,
    /// Drop everything sent to the leader (it still reaches the others).
    OneWayLeaderIn,
    /// Blackhole the leader's links: bytes vanish, connections stay open (like an iptables DROP).
    BlackholeLeader,
    /// Delay every peer link by 50–250 ms.
    Delay,
    /// Lossy peer links: random stalls as TCP retransmissions would cause.
    Loss,
    /// Split four nodes two and two: neither side may elect a leader.
    Split22,
    /// Power loss of a random node (kill -9, and its disk forgets what was not fsynced);
    /// restart at heal. Needs a cluster on power disks.
    PowerLossRandom,
    /// Power loss of a random minority at once.
    PowerLossMinority,
    /// Power loss of every node at once.
    PowerLossAll,
}

impl Fault {
    /// Name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::KillLeader => "kill-leader",
            Fault::KillRandom => "kill-random",
            Fault::KillAll => "kill-all",
            Fault::PauseLeader => "pause-leader",
            Fault::PauseRandom => "pause-random",
            Fault::PartitionLeader => "partition-leader",
            Fault::PartitionHalves => "partition-halves",
            Fault::OneWayLeaderOut => "one-way-leader-out",
            Fault::OneWayLeaderIn => "one-way-leader-in",
            Fault::BlackholeLeader => "blackhole-leader",
            Fault::Delay => "delay",
            Fault::Loss => "loss",
            Fault::Split22 => "split-2-2",
            Fault::PowerLossRandom => "power-loss-random",
            Fault::PowerLossMinority => "power-loss-minority",
            Fault::PowerLossAll => "power-loss-all",
        }
    }
}

/// What to undo at heal.
#[derive(Debug, Default)]
pub struct Injected {
    killed: Vec<u64>,
    paused: Vec<u64>,
    links: bool,
}

/// The leader as most nodes report it (None if none is agreed on).
pub fn current_leader(c: &Cluster) -> Option<u64> {
    let mut votes = std::collections::HashMap::new();
    for id in c.ids() {
        if let Some(s) = c.status(id) {
            if let Some(l) = s["leader"].as_u64() {
                *votes.entry(l).or_insert(0) += 1;
            }
        }
    }
    votes.into_iter().max_by_key(|(_, n)| *n).map(|(l, _)| l)
}

/// Injects `fault`, returning what to undo and a description for the fault log.
pub fn inject(c: &mut Cluster, fault: Fault, rng: &mut impl Rng) -> (Injected, String) {
    let ids = c.ids();
    let leader = current_leader(c).unwrap_or_else(|| ids[rng.gen_range(0..ids.len())]);
    let random = ids[rng.gen_range(0..ids.len())];
    let mut inj = Injected::default();
    let desc = match fault {
        Fault::KillLeader | Fault::KillRandom => {
            let target = if fault == Fault::KillLeader {
                leader
            } else {
                random
            };
            c.kill(target);
            inj.killed.push(target);
            format!("kill -9 node {target}")
        }
        Fault::KillAll => {
            for &id in &ids {
                c.kill(id);
                inj.killed.push(id);
            }
            "kill -9 every node".to_string()
        }
        Fault::PauseLeader | Fault::PauseRandom => {
            let target = if fault == Fault::PauseLeader {
                leader
            } else {
                random
            };
            c.pause(target);
            inj.paused.push(target);
            format!("SIGSTOP node {target}")
        }
        Fault::PartitionLeader => {
            c.isolate(leader);
            inj.links = true;
            format!("partition: node {leader} (leader) cut off")
        }
        Fault::PartitionHalves => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let minority: Vec<u64> = shuffled[..(ids.len() - 1) / 2].to_vec();
            for &a in &ids {
                for &b in &ids {
                    if a != b && (minority.contains(&a) != minority.contains(&b)) {
                        c.cut(a, b);
                    }
                }
            }
            inj.links = true;
            format!("partition: minority {minority:?} | majority")
        }
        Fault::OneWayLeaderOut | Fault::OneWayLeaderIn | Fault::BlackholeLeader => {
            for &other in ids.iter().filter(|&&id| id != leader) {
                match fault {
                    Fault::OneWayLeaderOut => c.cut(leader, other),
                    Fault::OneWayLeaderIn => c.cut(other, leader),
                    _ => {
                        c.link(leader, other).set(LinkMode::Blackhole);
                        c.link(other, leader).set(LinkMode::Blackhole);
                    }
                }
            }
            inj.links = true;
            format!("{} on node {leader} (leader)", fault.name())
        }
        Fault::Delay => {
            let ms = rng.gen_range(50..=250);
            c.set_all_links(LinkMode::Delay(Duration::from_millis(ms)));
            inj.links = true;
            format!("delay {ms} ms on every peer link")
        }
        Fault::Loss => {
            c.set_all_links(LinkMode::Lossy {
                probability: 0.2,
                stall: Duration::from_millis(200),
            });
            inj.links = true;
            "lossy peer links: 20% of chunks stall 200 ms".to_string()
        }
        Fault::PowerLossRandom | Fault::PowerLossMinority | Fault::PowerLossAll => {
            let mut targets = ids.clone();
            targets.shuffle(rng);
            match fault {
                Fault::PowerLossRandom => targets.truncate(1),
                Fault::PowerLossMinority => targets.truncate(((ids.len() - 1) / 2).max(1)),
                _ => {}
            }
            targets.sort_unstable();
            let mut lost = 0;
            for &id in &targets {
                lost += c.power_loss(id);
                inj.killed.push(id);
            }
            format!("power loss of nodes {targets:?} ({lost} bytes never fsynced dropped)")
        }
        Fault::Split22 => {
            let mut shuffled = ids.clone();
            shuffled.shuffle(rng);
            let half: Vec<u64> = shuffled[..ids.len() / 2].to_vec();
            for &a in &ids {
                for &b in &ids {
                    if a != b && (half.contains(&a) != half.contains(&b)) {
                        c.cut(a, b);
                    }
                }
            }
            inj.links = true;
            format!("split {half:?} | rest")
        }
    };
    (inj, desc)
}

/// Undoes an injected fault.
pub fn heal(c: &mut Cluster, inj: Injected) -> String {
    let mut done = Vec::new();
    for id in inj.paused {
        c.resume(id);
        done.push(format!("SIGCONT node {id}"));
    }
    for id in inj.killed {
        c.restart(id);
        done.push(format!("restart node {id}"));
    }
    if inj.links {
        c.heal();
        done.push("links restored".to_string());
    }
    done.join(", ")
}
