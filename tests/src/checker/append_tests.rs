//! Tests of the list-append check: a serial history passes, and each anomaly it names is found
//! in a history built to have it.

use std::collections::HashMap;

use super::*;

/// A transaction sent at `t` and answered at `t + 1`.
fn txn(t: u64, reads: &[(&str, &[i64])], appends: &[(&str, i64)]) -> AppendTxn {
    AppendTxn {
        invoke: t,
        complete: Some(t + 1),
        failed: false,
        reads: reads
            .iter()
            .map(|(k, l)| (k.to_string(), l.to_vec()))
            .collect(),
        appends: appends.iter().map(|(k, e)| (k.to_string(), *e)).collect(),
    }
}

fn finals(lists: &[(&str, &[i64])]) -> HashMap<String, Vec<i64>> {
    lists
        .iter()
        .map(|(k, l)| (k.to_string(), l.to_vec()))
        .collect()
}

fn only(f: &AppendFindings, kind: &str) {
    assert!(
        f.anomalies.get(kind).is_some_and(|n| *n >= 1),
        "no {kind}: {f:?}"
    );
    assert_eq!(f.anomalies.len(), 1, "more than {kind}: {f:?}");
}

#[test]
fn a_serial_history_passes() {
    let h = vec![
        txn(0, &[("a", &[]), ("b", &[])], &[("a", 1)]),
        txn(10, &[("a", &[1]), ("b", &[])], &[("a", 2), ("b", 3)]),
        txn(20, &[("a", &[1, 2]), ("b", &[3])], &[]),
        // Concurrent with the append of 2 (sent before it was answered): may miss it.
        txn(10, &[("a", &[1])], &[]),
    ];
    let f = check_appends(&h, &finals(&[("a", &[1, 2]), ("b", &[3])]));
    assert_eq!(f.total(), 0, "{f:?}");
    assert_eq!(f.committed, 4);
}

#[test]
fn lost_aborted_duplicate_garbage_and_incompatible_orders_are_named() {
    let ok = txn(0, &[("a", &[])], &[("a", 1)]);
    only(
        &check_appends(std::slice::from_ref(&ok), &finals(&[("a", &[])])),
        "lost",
    );

    let mut failed = txn(0, &[("a", &[])], &[("a", 1)]);
    failed.failed = true;
    only(
        &check_appends(&[failed], &finals(&[("a", &[1])])),
        "aborted_read",
    );

    only(
        &check_appends(std::slice::from_ref(&ok), &finals(&[("a", &[1, 1])])),
        "duplicate",
    );
    let f = check_appends(std::slice::from_ref(&ok), &finals(&[("a", &[1, 99])]));
    only(&f, "garbage");

    let h = vec![
        txn(0, &[("a", &[])], &[("a", 1)]),
        txn(0, &[("a", &[])], &[("a", 2)]),
        txn(5, &[("a", &[2, 1])], &[]),
    ];
    let f = check_appends(&h, &finals(&[("a", &[1, 2])]));
    assert!(f.anomalies.contains_key("incompatible_order"), "{f:?}");
}

#[test]
fn a_fractured_read_is_a_cycle() {
    // T appends to a and b at once; R sees its element in a but not in b.
    let h = vec![
        txn(0, &[("a", &[]), ("b", &[])], &[("a", 1), ("b", 2)]),
        txn(0, &[("a", &[1]), ("b", &[])], &[]),
    ];
    only(
        &check_appends(&h, &finals(&[("a", &[1]), ("b", &[2])])),
        "cycle",
    );
}

#[test]
fn write_skew_is_a_cycle() {
    // Both read a and b empty; each appends to the other key than the other one.
    let h = vec![
        txn(0, &[("a", &[]), ("b", &[])], &[("a", 1)]),
        txn(0, &[("a", &[]), ("b", &[])], &[("b", 2)]),
    ];
    only(
        &check_appends(&h, &finals(&[("a", &[1]), ("b", &[2])])),
        "cycle",
    );
}

#[test]
fn a_stale_read_after_an_acknowledged_append_is_a_realtime_cycle() {
    let h = vec![
        txn(0, &[("a", &[])], &[("a", 1)]),
        txn(20, &[("a", &[])], &[]),
    ];
    only(
        &check_appends(&h, &finals(&[("a", &[1])])),
        "realtime_cycle",
    );
    // Sent before the append was answered: concurrent, fine.
    let h = vec![
        txn(0, &[("a", &[])], &[("a", 1)]),
        txn(1, &[("a", &[])], &[]),
    ];
    assert_eq!(check_appends(&h, &finals(&[("a", &[1])])).total(), 0);
}

#[test]
fn unknown_appends_count_only_when_seen() {
    let mut unknown = txn(0, &[("a", &[])], &[("a", 1)]);
    unknown.complete = None;
    // Never seen: not lost (it may not have happened) and not in the graph.
    let f = check_appends(std::slice::from_ref(&unknown), &finals(&[("a", &[])]));
    assert_eq!((f.total(), f.committed), (0, 0), "{f:?}");
    // Seen: it took effect and is in the graph (with no outgoing real-time edge).
    let h = vec![unknown, txn(5, &[("a", &[1])], &[])];
    let f = check_appends(&h, &finals(&[("a", &[1])]));
    assert_eq!((f.total(), f.committed), (0, 2), "{f:?}");
}

#[test]
fn an_element_read_and_later_gone_is_found() {
    // A read saw 2 (appended with an unknown outcome), the final read does not have it.
    let mut unknown = txn(0, &[("a", &[1])], &[("a", 2)]);
    unknown.complete = None;
    let h = vec![
        txn(0, &[("a", &[])], &[("a", 1)]),
        unknown,
        txn(5, &[("a", &[1, 2])], &[]),
    ];
    only(
        &check_appends(&h, &finals(&[("a", &[1])])),
        "incompatible_order",
    );
}

#[test]
fn an_unknown_append_that_took_effect_takes_part_in_cycles() {
    // Write skew between an acknowledged append and one of unknown outcome that was seen.
    let mut unknown = txn(0, &[("a", &[]), ("b", &[])], &[("a", 1)]);
    unknown.complete = None;
    let h = vec![unknown, txn(0, &[("a", &[]), ("b", &[])], &[("b", 2)])];
    let f = check_appends(&h, &finals(&[("a", &[1]), ("b", &[2])]));
    only(&f, "cycle");
    assert_eq!((f.committed, f.appended), (2, 2));
}

#[test]
fn a_stale_read_inside_a_data_cycle_is_still_named() {
    // A write skew (a data cycle) and, among the same transactions, a read sent after both
    // appends were acknowledged that sees neither.
    let h = vec![
        txn(0, &[("a", &[]), ("b", &[])], &[("a", 1)]),
        txn(0, &[("a", &[]), ("b", &[])], &[("b", 2)]),
        txn(10, &[("a", &[]), ("b", &[])], &[]),
    ];
    let f = check_appends(&h, &finals(&[("a", &[1]), ("b", &[2])]));
    assert!(f.anomalies.contains_key("cycle"), "{f:?}");
    assert!(f.anomalies.contains_key("realtime_cycle"), "{f:?}");
}
