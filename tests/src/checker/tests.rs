//! Unit tests of the checkers.

use super::*;

fn ev(op: RegOp, invoke: u64, complete: Option<u64>) -> RegEvent {
    RegEvent {
        op,
        invoke,
        complete,
    }
}

#[test]
fn sequential_history_is_linearizable() {
    let h = vec![
        ev(RegOp::Read(None), 0, Some(1)),
        ev(RegOp::Write(1), 2, Some(3)),
        ev(RegOp::Read(Some(1)), 4, Some(5)),
        ev(
            RegOp::Cas {
                from: 1,
                to: 2,
                ok: true,
            },
            6,
            Some(7),
        ),
        ev(
            RegOp::Cas {
                from: 1,
                to: 3,
                ok: false,
            },
            8,
            Some(9),
        ),
        ev(RegOp::Read(Some(2)), 10, Some(11)),
    ];
    assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
}

#[test]
fn stale_read_after_a_completed_write_is_caught() {
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(RegOp::Write(2), 2, Some(3)),
        ev(RegOp::Read(Some(1)), 4, Some(5)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn concurrent_operations_may_take_either_order() {
    // The read overlaps both writes: it may see either.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(10)),
        ev(RegOp::Write(2), 1, Some(9)),
        ev(RegOp::Read(Some(1)), 2, Some(8)),
        ev(RegOp::Read(Some(2)), 11, Some(12)),
    ];
    // Read(1) inside, then Read(2) after both: needs 1 then... 2 last: W1, R1, W2, R2. OK.
    assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
    // But two later sequential reads cannot go back in time.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(10)),
        ev(RegOp::Write(2), 1, Some(9)),
        ev(RegOp::Read(Some(2)), 11, Some(12)),
        ev(RegOp::Read(Some(1)), 13, Some(14)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn unknown_writes_may_or_may_not_happen_but_not_twice_or_before_invocation() {
    // An unknown write that is later observed: fine.
    let h = vec![
        ev(RegOp::Write(1), 0, None),
        ev(RegOp::Read(Some(1)), 5, Some(6)),
    ];
    assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
    // One that is never observed: fine.
    let h = vec![
        ev(RegOp::Write(1), 0, None),
        ev(RegOp::Read(None), 5, Some(6)),
    ];
    assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
    // Observed before it was invoked: not linearizable.
    let h = vec![
        ev(RegOp::Read(Some(1)), 0, Some(1)),
        ev(RegOp::Write(1), 5, None),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
    // Observed, then gone although nothing else wrote: a lost write.
    let h = vec![
        ev(RegOp::Write(1), 0, None),
        ev(RegOp::Read(Some(1)), 5, Some(6)),
        ev(RegOp::Read(None), 7, Some(8)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn an_acknowledged_write_that_vanishes_is_caught() {
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(RegOp::Write(2), 2, Some(3)),
        ev(RegOp::Read(Some(2)), 4, Some(5)),
        ev(RegOp::Read(Some(1)), 6, Some(7)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn a_larger_concurrent_history_checks_quickly() {
    // 4 clients, 200 operations, overlapping in pairs; all reads see the latest write.
    let mut h = Vec::new();
    let mut t = 0;
    for i in 0..100 {
        h.push(ev(RegOp::Write(i), t, Some(t + 3)));
        h.push(ev(RegOp::Read(Some(i)), t + 4, Some(t + 6)));
        t += 7;
    }
    assert_eq!(check_register(&h, 10_000_000), Verdict::Linearizable);
}

#[test]
fn bank_and_set_checks() {
    let v = check_bank(&[vec![50, 50], vec![60, 30], vec![-10, 110]], 2, 100);
    assert_eq!(v.len(), 2);
    let r = check_set(&[1, 2, 3], &[4, 5], &[1, 3, 4, 9], 5);
    assert_eq!(r.lost, vec![2]);
    assert_eq!(r.unexpected, vec![9]);
    assert_eq!(r.duplicates, 1);
    assert_eq!(r.unknown_present, 1);
}

fn cas(from: i64, to: i64, ok: bool) -> RegOp {
    RegOp::Cas { from, to, ok }
}

#[test]
fn cas_histories_known_to_be_wrong_are_caught() {
    // A CAS that claims success although the value it compared against was overwritten first.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(RegOp::Write(2), 2, Some(3)),
        ev(cas(1, 5, true), 4, Some(5)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
    // Two CASes from the same value both succeeding, one after the other.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(cas(1, 2, true), 2, Some(3)),
        ev(cas(1, 3, true), 4, Some(5)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
    // A CAS that reports failure although its compare held and nothing else ran.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(cas(1, 2, false), 2, Some(3)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
    // Concurrent CASes from the same value: exactly one may win.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(cas(1, 2, true), 2, Some(6)),
        ev(cas(1, 3, false), 3, Some(7)),
        ev(RegOp::Read(Some(2)), 8, Some(9)),
    ];
    assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
}

#[test]
fn an_unknown_cas_may_take_effect_or_not_but_only_if_its_compare_held() {
    // Took effect: its value is read later.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(cas(1, 2, false), 2, None),
        ev(RegOp::Read(Some(2)), 5, Some(6)),
    ];
    assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
    // Did not: the old value is read later.
    let h = vec![
        ev(RegOp::Write(1), 0, Some(1)),
        ev(cas(1, 2, false), 2, None),
        ev(RegOp::Read(Some(1)), 5, Some(6)),
    ];
    assert_eq!(check_register(&h, 1_000_000), Verdict::Linearizable);
    // Its compare could never hold (the value was 7 throughout): its value cannot appear.
    let h = vec![
        ev(RegOp::Write(7), 0, Some(1)),
        ev(cas(1, 2, false), 2, None),
        ev(RegOp::Read(Some(2)), 5, Some(6)),
    ];
    assert!(matches!(
        check_register(&h, 1_000_000),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn histories_of_more_than_64_concurrent_operations_are_decided() {
    // 70 reads of the empty register, all concurrent with each other and with a write of 1
    // invoked in their midst; then a read of 1. Linearizable (the reads, then the write); the
    // search must backtrack over operations whose bits lie in the second word of its bitset.
    let mut h: Vec<RegEvent> = (0..70)
        .map(|i| ev(RegOp::Read(None), i, Some(1000 + i)))
        .collect();
    h.push(ev(RegOp::Write(1), 35, Some(1100)));
    h.push(ev(RegOp::Read(Some(1)), 2000, Some(2001)));
    assert_eq!(check_register(&h, 10_000_000), Verdict::Linearizable);
    // The same 70 concurrent reads after the write completed: every one of them is stale.
    let mut h: Vec<RegEvent> = vec![ev(RegOp::Write(1), 0, Some(1))];
    h.extend((0..70).map(|i| ev(RegOp::Read(None), 10 + i, Some(1000 + i))));
    assert!(matches!(
        check_register(&h, 10_000_000),
        Verdict::NotLinearizable { .. }
    ));
}

#[test]
fn a_search_that_runs_out_of_budget_says_unknown_never_linearizable() {
    // Twelve concurrent writes and a read of one of them: the search needs more than a handful
    // of steps, and with a budget of five it must give up and say so.
    let mut h: Vec<RegEvent> = (0..12)
        .map(|i| ev(RegOp::Write(i), i as u64, Some(100 + i as u64)))
        .collect();
    h.push(ev(RegOp::Read(Some(3)), 200, Some(201)));
    assert_eq!(check_register(&h, 5), Verdict::Unknown);
    assert_eq!(check_register(&h, 10_000_000), Verdict::Linearizable);
}

/// The register model, for the brute-force checker: None if `op` cannot happen in `state`.
fn apply(state: Option<i64>, op: &RegOp, known: bool) -> Option<Option<i64>> {
    match op {
        RegOp::Read(v) => (state == *v).then_some(state),
        RegOp::Write(v) => Some(Some(*v)),
        RegOp::Cas { from, to, ok } => {
            let holds = state == Some(*from);
            // Unknown: it took effect if its compare held. Known: its answer must match.
            (!known || holds == *ok).then_some(if holds { Some(*to) } else { state })
        }
    }
}

/// Linearizable by brute force: some order of all known operations and any subset of the
/// unknown ones, respecting real time, is legal.
fn brute_force(h: &[RegEvent]) -> bool {
    let unknown: Vec<usize> = (0..h.len()).filter(|&i| h[i].complete.is_none()).collect();
    for mask in 0..(1u32 << unknown.len()) {
        let chosen: Vec<usize> = (0..h.len())
            .filter(|&i| match unknown.iter().position(|&u| u == i) {
                Some(p) => mask & (1 << p) != 0,
                None => true,
            })
            .collect();
        if permute(h, &chosen, &mut Vec::new(), None) {
            return true;
        }
    }
    false
}

fn permute(h: &[RegEvent], left: &[usize], done: &mut Vec<usize>, state: Option<i64>) -> bool {
    if left.is_empty() {
        return true;
    }
    for (k, &i) in left.iter().enumerate() {
        // Every operation still left that completed before `i` was invoked must come first.
        let blocked = left
            .iter()
            .any(|&j| j != i && h[j].complete.is_some_and(|c| c < h[i].invoke));
        if blocked {
            continue;
        }
        if let Some(next) = apply(state, &h[i].op, h[i].complete.is_some()) {
            let rest: Vec<usize> = left
                .iter()
                .enumerate()
                .filter(|(x, _)| *x != k)
                .map(|(_, j)| *j)
                .collect();
            done.push(i);
            if permute(h, &rest, done, next) {
                return true;
            }
            done.pop();
        }
    }
    false
}

#[test]
fn the_checker_agrees_with_a_brute_force_search_on_random_small_histories() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(20261123);
    let (mut lin, mut not) = (0, 0);
    for case in 0..3000 {
        let n = rng.gen_range(1..=6);
        let mut h = Vec::new();
        let mut next_value = 1;
        for _ in 0..n {
            let invoke = rng.gen_range(0..20u64);
            let complete = if rng.gen_bool(0.2) {
                None
            } else {
                Some(invoke + rng.gen_range(0..8))
            };
            let op = match rng.gen_range(0..3) {
                0 => {
                    next_value += 1;
                    RegOp::Write(next_value)
                }
                1 => {
                    let v = rng.gen_range(0..=next_value + 1);
                    RegOp::Read(if v == 0 { None } else { Some(v) })
                }
                _ => {
                    next_value += 1;
                    RegOp::Cas {
                        from: rng.gen_range(1..=next_value),
                        to: next_value,
                        ok: rng.gen_bool(0.5),
                    }
                }
            };
            // Reads of unknown outcome are never checked.
            let complete = match op {
                RegOp::Read(_) => complete.or(Some(invoke + 1)),
                _ => complete,
            };
            h.push(ev(op, invoke, complete));
        }
        let expected = brute_force(&h);
        let got = check_register(&h, 10_000_000);
        match (expected, &got) {
            (true, Verdict::Linearizable) => lin += 1,
            (false, Verdict::NotLinearizable { .. }) => not += 1,
            _ => panic!("case {case}: brute force says {expected}, the checker {got:?}: {h:?}"),
        }
    }
    // Both verdicts come up often enough for the comparison to mean something.
    assert!(lin > 300 && not > 300, "{lin} linearizable, {not} not");
}

mod reads {
    use super::super::reads::*;

    fn write(key: &str, value: i64, index: u64, mode: &str, client: usize, t: u64) -> KnownWrite {
        KnownWrite {
            key: key.into(),
            value,
            index,
            mode: mode.into(),
            client,
            invoke: t,
            complete: t + 1,
        }
    }

    fn read(
        kind: ReadKind,
        client: usize,
        node: u64,
        t: u64,
        at: u64,
        items: &[(i64, u64)],
    ) -> ReadObs {
        ReadObs {
            op: 0,
            client,
            node,
            kind,
            invoke: t,
            complete: t + 1,
            at,
            min_index: None,
            items: items
                .iter()
                .map(|(v, ver)| KeyRead {
                    key: "k".into(),
                    value: Some(*v),
                    version: Some(*ver),
                })
                .collect(),
        }
    }

    fn voters() -> VoterTimeline {
        let mut t = VoterTimeline::default();
        for n in 1..=3 {
            t.spans.insert(n, (0, None));
        }
        t
    }

    #[test]
    fn consistent_reads_pass_and_each_kind_of_wrong_read_is_named() {
        let w = vec![
            write("k", 10, 5, "semi", 0, 10),
            write("k", 11, 8, "sync", 0, 20),
        ];
        let ok = vec![
            read(ReadKind::Linearizable, 1, 1, 30, 9, &[(11, 8)]),
            read(ReadKind::Stale, 1, 2, 15, 6, &[(10, 5)]),
        ];
        assert_eq!(check_reads(&w, &ok, &voters(), &[]).total(), 0);
        let cases = [
            // An older value than the state at its own index.
            (read(ReadKind::List, 1, 1, 30, 9, &[(10, 5)]), "snapshot"),
            // A version above the index it was read at.
            (read(ReadKind::Txn, 1, 1, 30, 7, &[(11, 8)]), "snapshot"),
            // A version whose value is not what was written at it.
            (
                read(ReadKind::Linearizable, 1, 1, 30, 9, &[(99, 8)]),
                "snapshot",
            ),
            // A stale read on a voter after the sync write was acknowledged, below its index.
            (
                read(ReadKind::Stale, 1, 2, 40, 6, &[(10, 5)]),
                "sync_visibility",
            ),
        ];
        for (r, check) in cases {
            let f = check_reads(&w, std::slice::from_ref(&r), &voters(), &[]);
            assert_eq!(f.anomalies.get(check), Some(&1), "{r:?}: {f:?}");
        }
        // min_index not honoured.
        let mut r = read(ReadKind::Session, 1, 1, 30, 9, &[(11, 8)]);
        r.min_index = Some(12);
        assert_eq!(
            check_reads(&w, &[r], &voters(), &[])
                .anomalies
                .get("min_index"),
            Some(&1)
        );
        // A node that lost power after the sync write is not held to it; one that is no voter
        // either.
        let late = read(ReadKind::Stale, 1, 2, 40, 6, &[(10, 5)]);
        assert_eq!(
            check_reads(&w, std::slice::from_ref(&late), &voters(), &[(2, 25)]).total(),
            0
        );
        let mut t = voters();
        t.spans.insert(2, (30, None));
        assert_eq!(check_reads(&w, &[late], &t, &[]).total(), 0);
    }

    #[test]
    fn a_linearizable_read_sent_after_an_acknowledged_write_must_see_it() {
        let w = vec![
            write("k", 10, 5, "semi", 0, 10),
            write("k", 11, 8, "sync", 0, 20),
        ];
        // A consistent snapshot at index 6 (the state a new leader that has not committed in
        // its term may still hold), but sent after the write at 8 was acknowledged (at 21).
        for kind in [ReadKind::Linearizable, ReadKind::Txn, ReadKind::List] {
            let stale = read(kind, 1, 1, 30, 6, &[(10, 5)]);
            let f = check_reads(&w, &[stale], &voters(), &[]);
            assert_eq!(f.anomalies.get("recency"), Some(&1), "{kind:?}: {f:?}");
            assert_eq!(f.anomalies.get("snapshot"), None, "{f:?}");
        }
        // The same answer to a read sent before the acknowledgement is fine (concurrent).
        let concurrent = read(ReadKind::Linearizable, 1, 1, 20, 6, &[(10, 5)]);
        assert_eq!(check_reads(&w, &[concurrent], &voters(), &[]).total(), 0);
        // A read at a late enough index that saw an older version of the key: flagged too
        // (by the snapshot check as well).
        let old = read(ReadKind::Linearizable, 1, 1, 30, 9, &[(10, 5)]);
        let f = check_reads(&w, &[old], &voters(), &[]);
        assert_eq!(f.anomalies.get("recency"), Some(&1), "{f:?}");
        // A key read as absent after its write was acknowledged.
        let mut absent = read(ReadKind::List, 1, 1, 30, 9, &[]);
        absent.items.push(KeyRead {
            key: "k".into(),
            value: None,
            version: None,
        });
        let f = check_reads(&w, &[absent], &voters(), &[]);
        assert_eq!(f.anomalies.get("recency"), Some(&1), "{f:?}");
        // Stale reads are not held to it.
        let stale = read(ReadKind::Stale, 1, 1, 30, 6, &[(10, 5)]);
        let f = check_reads(&w, &[stale], &voters(), &[]);
        assert_eq!(f.anomalies.get("recency"), None, "{f:?}");
        // A read sent after another read answered at 9 may not read at 8, even with the same
        // value; one sent while it ran may.
        let first = read(ReadKind::List, 1, 1, 30, 9, &[(11, 8)]);
        let after = read(ReadKind::Linearizable, 2, 2, 40, 8, &[(11, 8)]);
        let f = check_reads(&w, &[first.clone(), after], &voters(), &[]);
        assert_eq!(f.anomalies.get("recency"), Some(&1), "{f:?}");
        let during = read(ReadKind::Linearizable, 2, 2, 31, 8, &[(11, 8)]);
        assert_eq!(check_reads(&w, &[first, during], &voters(), &[]).total(), 0);
    }

    #[test]
    fn session_reads_must_be_monotonic_and_see_their_own_writes() {
        let w = vec![
            write("k", 10, 5, "semi", 1, 10),
            write("k", 11, 8, "semi", 2, 20),
        ];
        // Client 1 reads version 8, then version 5: back in time.
        let back = vec![
            read(ReadKind::Session, 1, 1, 30, 9, &[(11, 8)]),
            read(ReadKind::Session, 1, 2, 40, 9, &[(10, 5)]),
        ];
        let f = check_reads(&w, &back, &voters(), &[]);
        assert!(
            f.anomalies.get("monotonic").is_some_and(|n| *n >= 1),
            "{f:?}"
        );
        // Client 2 wrote version 8 and then reads version 5.
        let own = vec![read(ReadKind::Session, 2, 1, 30, 6, &[(10, 5)])];
        let f = check_reads(&w, &own, &voters(), &[]);
        assert_eq!(f.anomalies.get("read_your_writes"), Some(&1), "{f:?}");
    }
}
