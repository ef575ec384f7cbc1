//! The nemesis: faults injected into a running [`Cluster`] and healed, on a schedule drawn from
//! a seed before the run starts. Faults overlap (a partition during a pause, a kill during a
//! membership change, delay plus loss plus a leader transfer); the schedule is printed, and the
//! same seed (`KEEL_FAULT_SEED`) gives the same schedule: the same faults, at the same offsets,
//! for the same durations, with the same random picks. What a pick resolves to at run time (which
//! node is the leader when "kill the leader" fires) depends on the run.
//!
//! Every fault targets only processes and links the harness made itself.
//!
//! - `mod.rs`: the faults and the schedule (pure: unit-tested for determinism);
//! - `runtime.rs`: injecting and healing on a live cluster, with overlapping link faults merged;
//! - `membership.rs`: the membership-change fault (add a learner, promote it, remove a voter,
//!   the leader half of the time), run in a thread of its own because it takes seconds.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

pub mod membership;
pub mod runtime;

pub use runtime::Nemesis;

/// One kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    /// Cut every link to and from the leader (packets dropped).
    PartitionLeader,
    /// Cut the cluster into a random minority and majority.
    PartitionHalves,
    /// Cut every link of one follower voter (its clients still reach it).
    IsolateFollower,
    /// Drop everything the leader sends (it still hears the others).
    OneWayLeaderOut,
    /// Drop everything sent to the leader (it still reaches the others).
    OneWayLeaderIn,
    /// The leader's links refuse connections (TCP resets) instead of dropping packets.
    RejectLeader,
    /// Blackhole the leader's links: packets dropped on established connections too.
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
    /// Hand leadership to another voter (nothing to heal).
    TransferLeader,
    /// Add a node as a learner, promote it at heal, then remove a voter (the leader, after a
    /// transfer, half of the time): the cluster keeps its size.
    Membership,
    /// The clients cannot reach the leader's client port (packets dropped: requests hang).
    ClientsOffLeader,
    /// The clients are refused by a random follower's client port.
    ClientsOffRandom,
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
            Fault::IsolateFollower => "isolate-follower",
            Fault::OneWayLeaderOut => "one-way-leader-out",
            Fault::OneWayLeaderIn => "one-way-leader-in",
            Fault::RejectLeader => "reject-leader",
            Fault::BlackholeLeader => "blackhole-leader",
            Fault::Delay => "delay",
            Fault::Loss => "loss",
            Fault::Split22 => "split-2-2",
            Fault::PowerLossRandom => "power-loss-random",
            Fault::PowerLossMinority => "power-loss-minority",
            Fault::PowerLossAll => "power-loss-all",
            Fault::TransferLeader => "transfer-leader",
            Fault::Membership => "membership",
            Fault::ClientsOffLeader => "clients-off-leader",
            Fault::ClientsOffRandom => "clients-off-random",
        }
    }

    /// Whether the fault, when it opens a scene, lasts until the scene's other faults have
    /// healed. An isolated follower does: a voter then lags for the whole life of a learner that
    /// the scene adds (the window in which a learner could wrongly stand in for it in a `sync`
    /// acknowledgement), not only for the part of it that a random length happens to cover.
    pub fn outlasts_scene(self) -> bool {
        matches!(self, Fault::IsolateFollower)
    }

    /// Whether the fault makes the cluster change leader (or try to) by itself.
    pub fn disturbs_leadership(self) -> bool {
        !matches!(
            self,
            Fault::Delay | Fault::Loss | Fault::ClientsOffLeader | Fault::ClientsOffRandom
        )
    }
}

/// A group of faults that overlap: the first starts, the others start while it lasts.
pub type Scene = Vec<Fault>;

/// What the schedule does at one moment.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Inject a fault; `pick` decides every random choice it makes at run time.
    Inject {
        /// The fault.
        fault: Fault,
        /// Its random choices (which node, how long a delay...).
        pick: u64,
    },
    /// Heal the fault injected in the same slot.
    Heal,
}

/// One step of a schedule.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    /// Offset from the start of the faulty phase.
    pub at: Duration,
    /// The fault's slot: its inject and heal share it.
    pub slot: usize,
    /// The scene it belongs to.
    pub scene: usize,
    /// What to do.
    pub action: Action,
}

/// A whole schedule, drawn from a seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The seed.
    pub seed: u64,
    /// Steps in time order.
    pub steps: Vec<Step>,
    /// Each scene's start, in order (windows for the validity rule).
    pub scene_starts: Vec<Duration>,
}

/// How a schedule is drawn.
#[derive(Clone, Debug)]
pub struct ScheduleSpec {
    /// The scenes, used in turn from a random first one.
    pub scenes: Vec<Scene>,
    /// Length of the faulty phase.
    pub duration: Duration,
    /// Healthy time before each scene (jittered ±50%).
    pub calm: Duration,
    /// How long each fault lasts (jittered ±30%).
    pub fault_for: Duration,
}

impl Schedule {
    /// Draws a schedule: scenes in turn, each after a calm; a scene's later faults start while
    /// its first one lasts, at random offsets. Every scene plays at least once, even past
    /// `duration`; after that, scenes go on while they end within it.
    pub fn generate(seed: u64, spec: &ScheduleSpec) -> Schedule {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut steps = Vec::new();
        let mut scene_starts = Vec::new();
        let mut t = Duration::ZERO;
        let mut slot = 0usize;
        let first = if spec.scenes.is_empty() {
            0
        } else {
            rng.gen_range(0..spec.scenes.len())
        };
        for n in 0..10_000usize {
            let Some(scene) = spec.scenes.get((first + n) % spec.scenes.len().max(1)) else {
                break;
            };
            let calm = spec.calm.mul_f64(rng.gen_range(0.5..1.5));
            let start = t + calm;
            let mut end = start;
            let mut scene_steps = Vec::new();
            let mut offset = Duration::ZERO;
            for (i, fault) in scene.iter().enumerate() {
                if i > 0 {
                    offset += spec.fault_for.mul_f64(rng.gen_range(0.15..0.45));
                }
                let len = spec.fault_for.mul_f64(rng.gen_range(0.7..1.3));
                let pick = rng.gen::<u64>();
                scene_steps.push(Step {
                    at: start + offset,
                    slot,
                    scene: n,
                    action: Action::Inject {
                        fault: *fault,
                        pick,
                    },
                });
                scene_steps.push(Step {
                    at: start + offset + len,
                    slot,
                    scene: n,
                    action: Action::Heal,
                });
                end = end.max(start + offset + len);
                slot += 1;
            }
            if scene.len() > 1 && scene.first().is_some_and(|f| f.outlasts_scene()) {
                // Every fault injects one step and heals one; the first heal is the second step.
                let later = scene_steps
                    .iter()
                    .skip(2)
                    .map(|s| s.at)
                    .max()
                    .unwrap_or(start);
                let hold = later + Duration::from_millis(500);
                if let Some(first_heal) = scene_steps.get_mut(1) {
                    if first_heal.at < hold {
                        first_heal.at = hold;
                    }
                    end = end.max(first_heal.at);
                }
            }
            if end > spec.duration && n >= spec.scenes.len() {
                break;
            }
            scene_starts.push(start);
            steps.extend(scene_steps);
            t = end;
        }
        steps.sort_by_key(|s| (s.at, s.slot));
        Schedule {
            seed,
            steps,
            scene_starts,
        }
    }

    /// The schedule as text, one step a line (what a run prints and a replay must match).
    pub fn describe(&self) -> String {
        let mut out = format!("schedule of seed {}:\n", self.seed);
        for s in &self.steps {
            let what = match &s.action {
                Action::Inject { fault, pick } => format!("inject {} (pick {pick})", fault.name()),
                Action::Heal => "heal".to_string(),
            };
            out.push_str(&format!(
                "  {:8.3}s scene {} slot {}: {what}\n",
                s.at.as_secs_f64(),
                s.scene,
                s.slot
            ));
        }
        out
    }
}

/// The seed of a run: `KEEL_FAULT_SEED` if set (a replay), else fresh. A value that is not a
/// number stops the test: a replay that silently ran another schedule would prove nothing.
pub fn seed_from_env() -> u64 {
    parse_seed(std::env::var("KEEL_FAULT_SEED").ok().as_deref())
        .unwrap_or_else(|bad| panic!("{bad}"))
        .unwrap_or_else(rand::random)
}

/// The seed given (None: none given), or why it cannot be one.
pub fn parse_seed(given: Option<&str>) -> Result<Option<u64>, String> {
    match given.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|e| {
            format!("KEEL_FAULT_SEED={s:?} is not a seed (an unsigned 64-bit number): {e}")
        }),
    }
}

/// Picks one of `items` with `pick` (None when empty).
pub fn choose<T: Copy>(items: &[T], pick: u64) -> Option<T> {
    if items.is_empty() {
        None
    } else {
        Some(items[(pick % items.len() as u64) as usize])
    }
}

/// A shuffled copy of `items`, shuffled by `pick`.
pub fn shuffled<T: Clone>(items: &[T], pick: u64) -> Vec<T> {
    let mut v = items.to_vec();
    v.shuffle(&mut rand::rngs::StdRng::seed_from_u64(pick));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_that_is_not_a_number_is_refused_not_replaced() {
        assert_eq!(parse_seed(None), Ok(None));
        assert_eq!(parse_seed(Some(" ")), Ok(None));
        assert_eq!(parse_seed(Some(" 42\n")), Ok(Some(42)));
        let err = parse_seed(Some("0x2a")).expect_err("not a decimal seed");
        assert!(err.contains("KEEL_FAULT_SEED"), "{err}");
        assert!(parse_seed(Some("-1")).is_err());
    }

    fn spec() -> ScheduleSpec {
        ScheduleSpec {
            scenes: vec![
                vec![Fault::PauseLeader, Fault::PartitionHalves],
                vec![Fault::Membership, Fault::KillLeader],
                vec![Fault::Delay, Fault::Loss, Fault::TransferLeader],
            ],
            duration: Duration::from_secs(120),
            calm: Duration::from_secs(2),
            fault_for: Duration::from_secs(4),
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let a = Schedule::generate(42, &spec());
        let b = Schedule::generate(42, &spec());
        assert_eq!(a, b);
        assert_eq!(a.describe(), b.describe());
        let c = Schedule::generate(43, &spec());
        assert_ne!(a.describe(), c.describe());
    }

    #[test]
    fn scenes_overlap_every_scene_plays_and_every_fault_is_healed() {
        let s = Schedule::generate(7, &spec());
        assert!(s.scene_starts.len() >= 5, "{}", s.describe());
        // A short duration still plays every scene once.
        let mut short = spec();
        short.duration = Duration::from_secs(5);
        let played: std::collections::HashSet<Fault> = Schedule::generate(7, &short)
            .steps
            .iter()
            .filter_map(|s| match s.action {
                Action::Inject { fault, .. } => Some(fault),
                Action::Heal => None,
            })
            .collect();
        assert_eq!(played.len(), 7, "{played:?}");
        let mut open = std::collections::HashMap::new();
        let mut overlapped = 0;
        for step in &s.steps {
            assert!(step.at <= spec().duration + Duration::from_secs(30));
            match step.action {
                Action::Inject { .. } => {
                    if !open.is_empty() {
                        overlapped += 1;
                    }
                    open.insert(step.slot, step.at);
                }
                Action::Heal => {
                    assert!(open.remove(&step.slot).is_some(), "heal before inject");
                }
            }
        }
        assert!(open.is_empty(), "every fault is healed");
        assert!(overlapped >= s.scene_starts.len(), "{}", s.describe());
    }

    #[test]
    fn an_isolated_follower_opening_a_scene_outlasts_the_membership_change() {
        let spec = ScheduleSpec {
            scenes: vec![vec![Fault::IsolateFollower, Fault::Membership]],
            duration: Duration::from_secs(60),
            calm: Duration::from_secs(2),
            fault_for: Duration::from_secs(5),
        };
        for seed in 0..50 {
            let s = Schedule::generate(seed, &spec);
            let mut heal_at = std::collections::HashMap::new();
            let mut fault_of = std::collections::HashMap::new();
            for step in &s.steps {
                match step.action {
                    Action::Inject { fault, .. } => {
                        fault_of.insert(step.slot, fault);
                    }
                    Action::Heal => {
                        heal_at.insert(step.slot, step.at);
                    }
                }
            }
            for (slot, fault) in &fault_of {
                if *fault == Fault::Membership {
                    let isolation = slot - 1;
                    assert_eq!(fault_of.get(&isolation), Some(&Fault::IsolateFollower));
                    assert!(
                        heal_at[&isolation] > heal_at[slot],
                        "seed {seed}: {}",
                        s.describe()
                    );
                }
            }
        }
    }
}
