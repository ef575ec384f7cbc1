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
