//! History checkers: linearizability of a register (a Wing–Gong–Lowe search with memoisation, as
//! in porcupine and Knossos), the bank invariant, and set completeness.
//!
//! # Register model
//! One key holding an optional integer. Operations: `write(v)`, `read() -> Option<v>` and
//! `cas(from, to) -> bool` (compare the value, set it if equal). Every write writes a value no
//! other write uses, as Jepsen's register workload does.
//!
//! # Outcomes
//! - An operation that completed `ok` must be linearized between its invocation and completion.
//! - An operation whose outcome is unknown (timeout, connection lost, 504 outcome_unknown) may
//!   have taken effect at any point after its invocation, or never: its completion is +∞ and it
//!   may stay unlinearized.
//! - Failed operations that certainly had no effect (503) and reads that failed are left out.

use std::collections::HashSet;

pub mod append;
pub mod reads;

/// What a register operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegOp {
    /// Read; `None` means the key was absent.
    Read(Option<i64>),
    /// Write a value.
    Write(i64),
    /// Compare-and-set: `ok` says whether it set the value (meaningful only when known).
    Cas {
        /// Expected value.
        from: i64,
        /// New value.
        to: i64,
        /// Whether the compare held.
        ok: bool,
    },
}

/// One operation of a register history.
#[derive(Clone, Debug)]
pub struct RegEvent {
    /// The operation.
    pub op: RegOp,
    /// Invocation time (any monotonic unit).
    pub invoke: u64,
    /// Completion time; `None` when the outcome is unknown.
    pub complete: Option<u64>,
}

/// The verdict on one register history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists. Carries the longest prefix of operations that could be linearized, to help
    /// read the failure.
    NotLinearizable {
        /// How many operations the deepest attempt linearized.
        deepest: usize,
    },
    /// The search gave up after its step budget (reported, never counted as a pass).
    Unknown,
}

type State = Option<i64>;

fn step(state: State, op: &RegOp, known: bool) -> Option<State> {
    match op {
        RegOp::Read(v) => (state == *v).then_some(state),
        RegOp::Write(v) => Some(Some(*v)),
        RegOp::Cas { from, to, ok } => {
            let holds = state == Some(*from);
            if !known {
                // Unknown outcome: it either set the value (if the compare held) or did nothing.
                return Some(if holds { Some(*to) } else { state });
            }
            match (holds, ok) {
                (true, true) => Some(Some(*to)),
                (false, false) => Some(state),
                _ => None,
            }
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    op: usize,
    is_call: bool,
    time: u64,
    /// Tie-break: calls before returns at the same time (more permissive).
    rank: u8,
}

/// Checks one register history for linearizability, with at most `budget` search steps.
pub fn check_register(events: &[RegEvent], budget: u64) -> Verdict {
    let n = events.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    let mut entries: Vec<Entry> = Vec::with_capacity(2 * n);
    for (i, e) in events.iter().enumerate() {
        entries.push(Entry {
            op: i,
            is_call: true,
            time: e.invoke,
            rank: 0,
        });
        entries.push(Entry {
            op: i,
            is_call: false,
            time: e.complete.unwrap_or(u64::MAX),
            rank: 1,
        });
    }
    entries.sort_by_key(|e| (e.time, e.rank, e.op));
    // A doubly linked list over `entries` (index len = head sentinel).
    let len = entries.len();
    let head = len;
    let mut next: Vec<usize> = (1..=len).collect();
    next.push(0);
    let mut prev: Vec<usize> = Vec::with_capacity(len + 1);
    prev.push(head);
    prev.extend(0..len - 1);
    prev.push(usize::MAX);
    next[head] = 0;
    next[len - 1] = usize::MAX;
    let mut call_pos = vec![0usize; n];
    let mut ret_pos = vec![0usize; n];
    for (pos, e) in entries.iter().enumerate() {
        if e.is_call {
            call_pos[e.op] = pos;
        } else {
            ret_pos[e.op] = pos;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, nx) = (prev[pos], next[pos]);
        next[p] = nx;
        if nx != usize::MAX {
            prev[nx] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, nx) = (prev[pos], next[pos]);
        next[p] = pos;
        if nx != usize::MAX {
            prev[nx] = pos;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut state: State = None;
    let mut cur = next[head];
    let mut steps = 0u64;
    let mut deepest = 0usize;
    loop {
        steps += 1;
        if steps > budget {
            return Verdict::Unknown;
        }
        if cur == usize::MAX {
            return Verdict::Linearizable;
        }
        let e = entries[cur];
        let ev = &events[e.op];
        if e.is_call {
            let known = ev.complete.is_some();
            let mut advanced = false;
            if let Some(new_state) = step(state, &ev.op, known) {
                linearized[e.op / 64] |= 1 << (e.op % 64);
                if cache.insert((linearized.clone(), new_state)) {
                    stack.push((e.op, state));
                    deepest = deepest.max(stack.len());
                    state = new_state;
                    unlink(&mut next, &mut prev, call_pos[e.op]);
                    unlink(&mut next, &mut prev, ret_pos[e.op]);
                    cur = next[head];
                    advanced = true;
                } else {
                    linearized[e.op / 64] &= !(1 << (e.op % 64));
                }
            }
            if !advanced {
                cur = next[cur];
            }
        } else if ev.complete.is_none() {
            // Only unknown-outcome operations remain unlinearized from here on (their return
            // is at +∞): they simply never took effect.
            return Verdict::Linearizable;
        } else {
            // A known operation's return with the operation not linearized: backtrack.
            let Some((op, prev_state)) = stack.pop() else {
                return Verdict::NotLinearizable { deepest };
            };
            state = prev_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, ret_pos[op]);
            relink(&mut next, &mut prev, call_pos[op]);
            cur = next[call_pos[op]];
        }
    }
}

/// What a bank read saw that it must not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BankViolation {
    /// Index of the read in the history.
    pub read: usize,
    /// The balances it saw.
    pub balances: Vec<i64>,
    /// Why it is wrong.
    pub reason: String,
}

/// Checks every read of all balances: it must sum to `total` and have no negative balance.
pub fn check_bank(reads: &[Vec<i64>], accounts: usize, total: i64) -> Vec<BankViolation> {
    reads
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let reason = if b.len() != accounts {
                Some(format!("{} balances instead of {accounts}", b.len()))
            } else if b.iter().sum::<i64>() != total {
                Some(format!("sum {} instead of {total}", b.iter().sum::<i64>()))
            } else if b.iter().any(|x| *x < 0) {
                Some("a negative balance".to_string())
            } else {
                None
            };
            reason.map(|reason| BankViolation {
                read: i,
                balances: b.clone(),
                reason,
            })
        })
        .collect()
}

/// The outcome of a set workload.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct SetReport {
    /// Adds acknowledged.
    pub acked: usize,
    /// Adds with unknown outcome.
    pub unknown: usize,
    /// Acknowledged adds missing from the final read.
    pub lost: Vec<u64>,
    /// Elements read that no add ever attempted.
    pub unexpected: Vec<u64>,
    /// Elements applied more than once (the add counter exceeds the elements present).
    pub duplicates: i64,
    /// Unknown-outcome adds that turned out applied.
    pub unknown_present: usize,
}

/// Checks a set history: `acked` and `unknown` element ids, the elements in the final read and
/// the final value of the counter every add increments once.
pub fn check_set(acked: &[u64], unknown: &[u64], present: &[u64], counter: i64) -> SetReport {
    let present_set: HashSet<u64> = present.iter().copied().collect();
    let attempted: HashSet<u64> = acked.iter().chain(unknown.iter()).copied().collect();
    let mut lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|e| !present_set.contains(e))
        .collect();
    lost.sort_unstable();
    let mut unexpected: Vec<u64> = present
        .iter()
        .copied()
        .filter(|e| !attempted.contains(e))
        .collect();
    unexpected.sort_unstable();
    SetReport {
        acked: acked.len(),
        unknown: unknown.len(),
        lost,
        unexpected,
        duplicates: counter - present_set.len() as i64,
        unknown_present: unknown.iter().filter(|e| present_set.contains(e)).count(),
    }
}

#[cfg(test)]
mod tests;
