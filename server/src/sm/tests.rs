//! The state machine's tests: apply, idempotency and reads on a real RocksDB.

use super::idempotency::{IDEMPOTENCY_CROSS_TERM_ENTRIES, IDEMPOTENCY_TTL_MS};
use super::*;
use crate::proto::command::Op;
use crate::proto::txn_step::Step;
use crate::proto::{
    AddOp, Command, Compare, CompareOp, CompareTarget, DeleteOp, Precondition, PutOp,
};
use bytes::Bytes;
use keel_api::ErrorCode;

pub(super) fn cmd(op: Op) -> Vec<u8> {
    Command {
        op: Some(op),
        ..Default::default()
    }
    .encode_to_vec()
}

fn idem(op: Op, key: &str, stamp: u64) -> Vec<u8> {
    Command {
        op: Some(op),
        idempotency_key: key.into(),
        leader_ms: stamp,
        fence: None,
        apply_version: APPLY_VERSION,
    }
    .encode_to_vec()
}

fn step(s: Step) -> crate::proto::TxnStep {
    crate::proto::TxnStep { step: Some(s) }
}

fn add_op(key: &str, delta: i64, min: Option<i64>) -> AddOp {
    AddOp {
        key: key.into(),
        delta,
        min,
        max: None,
    }
}

#[test]
fn txn_applies_all_or_nothing() {
    let (_d, sm) = open();
    let mut b = sm.batch();
    b.apply(1, 1, &add("a", 100, None)).unwrap();
    b.apply(2, 1, &add("b", 0, None)).unwrap();
    // Transfer 30 from a to b when a >= 30.
    let transfer = |amount: i64| {
        cmd(Op::Txn(TxnOp {
            compare: vec![Compare {
                key: "a".into(),
                target: CompareTarget::Int as i32,
                op: CompareOp::Ge as i32,
                int: amount,
                ..Default::default()
            }],
            success: vec![
                step(Step::Add(add_op("a", -amount, Some(0)))),
                step(Step::Add(add_op("b", amount, None))),
            ],
            failure: vec![step(Step::Get(crate::proto::GetOp { key: "a".into() }))],
        }))
    };
    let r = b.apply(3, 1, &transfer(30)).unwrap();
    assert!(r.is_ok() && r.succeeded);
    assert_eq!(r.results[0].int, Some(70));
    assert_eq!(r.results[1].int, Some(30));
    // Compare fails: the failure branch reads a.
    let r = b.apply(4, 1, &transfer(500)).unwrap();
    assert!(r.is_ok() && !r.succeeded);
    assert_eq!(&r.results[0].value[..], b"70");
    // Compare passes but the first add would break its bound... make a bound that the second
    // step violates: the whole txn aborts, the first step's effect is discarded.
    let abort = cmd(Op::Txn(TxnOp {
        compare: vec![],
        success: vec![
            step(Step::Add(add_op("a", -10, Some(0)))),
            step(Step::Add(add_op("b", -1000, Some(0)))),
        ],
        failure: vec![],
    }));
    let r = b.apply(5, 1, &abort).unwrap();
    assert_eq!(r.error_code, ErrorCode::BoundViolated.as_str());
    assert_eq!(r.error_key, "b");
    assert_eq!(r.value, Some(30));
    b.commit().unwrap();
    assert_eq!(&sm.get_value("a").unwrap().unwrap().value[..], b"70");
    assert_eq!(&sm.get_value("b").unwrap().unwrap().value[..], b"30");
    // A read-only txn on a snapshot.
    let ro = TxnOp {
        compare: vec![],
        success: vec![
            step(Step::Get(crate::proto::GetOp { key: "a".into() })),
            step(Step::Get(crate::proto::GetOp { key: "zz".into() })),
        ],
        failure: vec![],
    };
    let r = sm.read_txn(&ro).unwrap();
    assert_eq!(r.index, 5);
    assert!(r.value.results[0].found && !r.value.results[1].found);
}

#[test]
fn a_retry_under_a_new_leader_whose_clock_is_ahead_is_not_applied_twice() {
    let (_d, sm) = open();
    let t0 = 1_000_000_000;
    let mut b = sm.batch();
    let first = b
        .apply(1, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", t0))
        .unwrap();
    assert!(!first.replayed);
    // The leader changes; the new leader's clock is 10 minutes ahead of the old one's. The
    // client's retry of the same request, a second later, must still be recognised.
    let retry = b
        .apply(
            2,
            2,
            &idem(Op::Add(add_op("n", 5, None)), "req-1", t0 + 600_000),
        )
        .unwrap();
    assert!(retry.replayed, "the retry was applied a second time");
    b.commit().unwrap();
    assert_eq!(&sm.get_value("n").unwrap().unwrap().value[..], b"5");
}

/// Replicas batch their applies differently; whether a retry is applied must not depend on
/// it (a record deleted at one batch boundary on one replica and kept on another would make
/// them diverge).
#[test]
fn replicas_that_batch_differently_decide_a_retry_alike() {
    let stamp = |ms: u64| {
        Command {
            op: Some(Op::Put(PutOp {
                key: "other".into(),
                value: Bytes::from_static(b"x"),
                ..Default::default()
            })),
            leader_ms: ms,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let retry = idem(Op::Add(add_op("n", 1, None)), "k", 0);
    // Replica A: entry 1, then entry 2 alone (its leader's clock 5 minutes on), then the
    // retry under the next leader.
    let (_da, a) = open();
    let mut b = a.batch();
    b.apply(1, 3, &retry).unwrap();
    b.commit().unwrap();
    let mut b = a.batch();
    b.apply(2, 3, &stamp(IDEMPOTENCY_TTL_MS)).unwrap();
    b.commit().unwrap();
    let mut b = a.batch();
    let on_a = b.apply(3, 4, &retry).unwrap();
    b.commit().unwrap();
    // Replica B: the same entries, 2 and 3 in one batch.
    let (_db, r) = open();
    let mut b = r.batch();
    b.apply(1, 3, &retry).unwrap();
    b.commit().unwrap();
    let mut b = r.batch();
    b.apply(2, 3, &stamp(IDEMPOTENCY_TTL_MS)).unwrap();
    let on_b = b.apply(3, 4, &retry).unwrap();
    b.commit().unwrap();
    assert_eq!(
        on_a.replayed, on_b.replayed,
        "the replicas decided the retry differently"
    );
    assert_eq!(
        a.get_value("n").unwrap().unwrap().value,
        r.get_value("n").unwrap().unwrap().value,
        "the replicas diverged"
    );
}

#[test]
fn idempotent_commands_apply_once_until_their_key_expires() {
    let (_d, sm) = open();
    let t0 = 1_000_000_000;
    let mut b = sm.batch();
    let r1 = b
        .apply(1, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", t0))
        .unwrap();
    let r2 = b
        .apply(2, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", t0 + 10))
        .unwrap();
    assert_eq!(r1.value, Some(5));
    assert!(r2.replayed);
    assert_eq!(r2.value, Some(5));
    assert_eq!(r2.index, 1, "the replay carries the first outcome");
    b.commit().unwrap();
    // Survives a new batch (persisted), and a different request under the same key is refused.
    let mut b = sm.batch();
    let r3 = b
        .apply(3, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", t0 + 20))
        .unwrap();
    assert!(r3.replayed);
    let r4 = b
        .apply(4, 1, &idem(Op::Add(add_op("n", 7, None)), "req-1", t0 + 30))
        .unwrap();
    assert_eq!(r4.error_code, ErrorCode::IdempotencyKeyReused.as_str());
    // After the TTL the key is free again: the command applies.
    let later = t0 + IDEMPOTENCY_TTL_MS + 1;
    let r5 = b
        .apply(5, 1, &idem(Op::Add(add_op("n", 5, None)), "req-1", later))
        .unwrap();
    assert!(!r5.replayed);
    assert_eq!(r5.value, Some(10));
    b.commit().unwrap();
    assert_eq!(&sm.get_value("n").unwrap().unwrap().value[..], b"10");
    // Expired records are physically removed by later batches, but not the fresh one.
    let mut b = sm.batch();
    b.apply(
        6,
        1,
        &idem(
            Op::Add(add_op("m", 1, None)),
            "req-2",
            later + IDEMPOTENCY_TTL_MS / 2,
        ),
    )
    .unwrap();
    b.commit().unwrap();
    let mut b = sm.batch();
    let r = b
        .apply(
            7,
            1,
            &idem(Op::Add(add_op("n", 5, None)), "req-1", later + 5),
        )
        .unwrap();
    assert!(r.replayed, "the record written at `later` is still live");
    b.commit().unwrap();
    // Dead by the leader's clock, the records stay: the next leader's commands would still
    // count them. Past the window of entries, a batch deletes them physically.
    let stored = |sm: &StateMachine, key: &str| {
        let idem = cf(&sm.db, crate::storage::CF_IDEM).unwrap();
        sm.db.get_cf(idem, key.as_bytes()).unwrap().is_some()
    };
    let end = later + 2 * IDEMPOTENCY_TTL_MS;
    let mut b = sm.batch();
    b.apply(8, 1, &idem(Op::Add(add_op("z", 1, None)), "req-3", end))
        .unwrap();
    b.commit().unwrap();
    assert!(stored(&sm, "req-1") && stored(&sm, "req-2"));
    let mut b = sm.batch();
    let far = 8 + IDEMPOTENCY_CROSS_TERM_ENTRIES;
    let past = end + IDEMPOTENCY_TTL_MS;
    b.apply(far, 1, &idem(Op::Add(add_op("z", 1, None)), "req-4", past))
        .unwrap();
    b.commit().unwrap();
    assert!(!stored(&sm, "req-1") && !stored(&sm, "req-2") && !stored(&sm, "req-3"));
    assert!(stored(&sm, "req-4"));
}

#[test]
fn once_leadership_changes_a_key_is_remembered_for_a_number_of_entries() {
    let (_d, sm) = open();
    let mut b = sm.batch();
    b.apply(10, 1, &idem(Op::Add(add_op("n", 1, None)), "k", 0))
        .unwrap();
    // The next leader's clock is far ahead and no help: entries are counted.
    let edge = 10 + IDEMPOTENCY_CROSS_TERM_ENTRIES;
    let r = b
        .apply(
            edge - 1,
            2,
            &idem(Op::Add(add_op("n", 1, None)), "k", u64::MAX),
        )
        .unwrap();
    assert!(r.replayed);
    let r = b
        .apply(edge, 2, &idem(Op::Add(add_op("n", 1, None)), "k", 0))
        .unwrap();
    assert!(!r.replayed, "forgotten after the window of entries");
    b.commit().unwrap();
    assert_eq!(&sm.get_value("n").unwrap().unwrap().value[..], b"2");
}

fn put(key: &str, value: &str) -> Vec<u8> {
    cmd(Op::Put(PutOp {
        key: key.into(),
        value: Bytes::from(value.to_string()),
        ..Default::default()
    }))
}

fn add(key: &str, delta: i64, min: Option<i64>) -> Vec<u8> {
    cmd(Op::Add(AddOp {
        key: key.into(),
        delta,
        min,
        max: None,
    }))
}

pub(super) fn open() -> (tempfile::TempDir, StateMachine) {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::open_db(dir.path()).unwrap();
    (dir, StateMachine::new(db))
}

#[test]
fn batch_sees_its_own_writes_and_moves_applied_index_atomically() {
    let (_d, sm) = open();
    let mut b = sm.batch();
    assert!(b.apply(1, 1, &add("n", 5, None)).unwrap().is_ok());
    let r = b.apply(2, 1, &add("n", -3, Some(0))).unwrap();
    assert_eq!(r.value, Some(2));
    let r = b.apply(3, 1, &add("n", -3, Some(0))).unwrap();
    assert_eq!(r.error_code, ErrorCode::BoundViolated.as_str());
    assert_eq!(r.value, Some(2));
    // Nothing is visible before commit.
    assert!(sm.get_value("n").unwrap().is_none());
    assert_eq!(b.commit().unwrap(), Some((3, 1)));
    assert_eq!(sm.applied_index().unwrap(), 3);
    let rec = sm.get_value("n").unwrap().unwrap();
    assert_eq!(&rec.value[..], b"2");
    assert_eq!(rec.version, 2);
}

#[test]
fn preconditions_and_non_integer_add() {
    let (_d, sm) = open();
    let mut b = sm.batch();
    b.apply(1, 1, &put("k", "hello")).unwrap();
    let r = b.apply(2, 1, &add("k", 1, None)).unwrap();
    assert_eq!(r.error_code, ErrorCode::NotInteger.as_str());
    let cas = |v| {
        cmd(Op::Put(PutOp {
            key: "k".into(),
            value: Bytes::from_static(b"x"),
            precondition: Some(Precondition {
                if_version: Some(v),
                ..Default::default()
            }),
            lease: 0,
        }))
    };
    assert_eq!(
        b.apply(3, 1, &cas(7)).unwrap().error_code,
        ErrorCode::PreconditionFailed.as_str()
    );
    assert!(b.apply(4, 1, &cas(1)).unwrap().is_ok());
    let create = cmd(Op::Put(PutOp {
        key: "k".into(),
        value: Bytes::from_static(b"y"),
        precondition: Some(Precondition {
            if_absent: true,
            ..Default::default()
        }),
        lease: 0,
    }));
    assert_eq!(
        b.apply(5, 1, &create).unwrap().error_code,
        ErrorCode::PreconditionFailed.as_str()
    );
    let del = cmd(Op::Delete(DeleteOp {
        key: "k".into(),
        precondition: None,
    }));
    assert!(b.apply(6, 1, &del).unwrap().deleted);
    assert!(!b.apply(7, 1, &del).unwrap().deleted);
    assert!(b.apply(8, 1, &create).unwrap().is_ok());
    b.commit().unwrap();
    let rec = sm.get_value("k").unwrap().unwrap();
    assert_eq!(&rec.value[..], b"y");
    assert_eq!(rec.version, 8);
}

#[test]
fn list_by_prefix_in_order_with_paging() {
    let (_d, sm) = open();
    let mut b = sm.batch();
    for (i, k) in ["b/2", "a/1", "b/1", "b/3", "c"].iter().enumerate() {
        b.apply(i as u64 + 1, 1, &put(k, "v")).unwrap();
    }
    b.commit().unwrap();
    let page = sm.list("b/", None, 2).unwrap().value;
    let keys: Vec<_> = page.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["b/1", "b/2"]);
    assert!(page.more);
    let page = sm.list("b/", Some("b/2"), 2).unwrap().value;
    let keys: Vec<_> = page.items.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, vec!["b/3"]);
    assert!(!page.more);
    assert_eq!(sm.list("", None, 100).unwrap().value.items.len(), 5);
}

/// The change log is read in pages of whole entries, cut by count or by bytes (a watcher far
/// behind over large values reads a page of about the budget, not 256 large values).
#[test]
fn history_pages_are_whole_entries_cut_by_count_or_bytes() {
    let (_d, sm) = open();
    let mut b = sm.batch();
    let big = Bytes::from(vec![b'v'; 10_000]);
    for i in 1..=20u64 {
        let op = Op::Put(PutOp {
            key: format!("k{i:02}"),
            value: big.clone(),
            ..Default::default()
        });
        b.apply(i, 1, &cmd(op)).unwrap();
    }
    b.commit().unwrap();
    let all = sm.read_history(0, 256, usize::MAX).unwrap();
    assert_eq!((all.changes.len(), all.through), (20, 20));
    let few = sm.read_history(0, 5, usize::MAX).unwrap();
    assert_eq!((few.changes.len(), few.through), (5, 5));
    let small = sm.read_history(0, 256, 25_000).unwrap();
    assert_eq!((small.changes.len(), small.through), (3, 3));
    let next = sm.read_history(small.through, 256, 25_000).unwrap();
    assert_eq!(next.changes.first().map(|c| c.index), Some(4));
}

/// Every read of the state machine goes through the install gate (found by review: lease and
/// lock reads did not, and showed a lock free while its column family was emptied).
#[test]
fn every_read_is_refused_while_a_snapshot_is_copied_into_place() {
    let (_d, sm) = open();
    let mut b = sm.batch();
    b.apply(1, 1, &put("k", "v")).unwrap();
    b.commit().unwrap();
    let closed = sm.gate().close();
    let refused = |r: Result<(), StorageError>, what: &str| {
        assert!(
            matches!(r, Err(StorageError::Installing)),
            "{what} read during an install: {r:?}"
        );
    };
    refused(sm.get_value("k").map(drop), "get_value");
    refused(sm.get_at_snapshot("k").map(drop), "get_at_snapshot");
    refused(sm.list("", None, 10).map(drop), "list");
    refused(sm.read_txn(&TxnOp::default()).map(drop), "read_txn");
    refused(sm.read_history(0, 10, 1024).map(drop), "read_history");
    refused(sm.lease(1).map(drop), "lease");
    refused(sm.leases().map(drop), "leases");
    refused(sm.lock("l").map(drop), "lock");
    refused(sm.coord_counts().map(drop), "coord_counts");
    closed.open();
    assert_eq!(&sm.get_value("k").unwrap().unwrap().value[..], b"v");
}

/// A cancel ends only the wait it names. When a client's retry (the same lease, a later
/// acquire) has taken the place or the grant over, the abandoned request's late cancel leaves it
/// alone, and the retry's own cancel ends it; a grant made from an abandoned wait is given up to
/// the next waiter, and one a waiter that still answers gets is kept. Before, the late cancel
/// took the retry's shared place, and a grant to an abandoned wait stayed held for nobody.
#[test]
fn a_cancel_ends_only_the_wait_it_names() {
    use crate::proto::{LeaseGrantOp, LockAcquireOp, LockReleaseOp};
    let (_d, sm) = open();
    let grant = cmd(Op::LeaseGrant(LeaseGrantOp { ttl_ms: 60_000 }));
    let acquire = |lease: u64, value: &str, wait_id: u64| {
        cmd(Op::LockAcquire(LockAcquireOp {
            name: "l".into(),
            lease,
            value: Bytes::copy_from_slice(value.as_bytes()),
            wait_id,
        }))
    };
    let cancel = |lease: u64, wait_id: u64, abandoned: bool| {
        cmd(Op::LockCancel(LockReleaseOp {
            name: "l".into(),
            lease,
            wait_id,
            abandoned,
            claim: false,
        }))
    };
    // The handler's own cancel: it answers, with a grant it finds, which it claims.
    let answer = |lease: u64, wait_id: u64| {
        cmd(Op::LockCancel(LockReleaseOp {
            name: "l".into(),
            lease,
            wait_id,
            claim: true,
            ..Default::default()
        }))
    };
    let release = |lease: u64| {
        cmd(Op::LockRelease(LockReleaseOp {
            name: "l".into(),
            lease,
            ..Default::default()
        }))
    };
    let granted = |r: ApplyResult| r.coord.unwrap_or_default().granted;
    let lock = || sm.lock("l").unwrap().unwrap_or_default();
    let waiters = || -> Vec<u64> { lock().waiters.iter().map(|w| w.lease).collect() };
    let holder = || {
        lock()
            .holder
            .map(|h| (h.lease, String::from_utf8_lossy(&h.value).into_owned()))
    };

    let mut b = sm.batch();
    for i in 1..=3 {
        b.apply(i, 1, &grant).unwrap(); // leases 1, 2, 3
    }
    assert!(granted(b.apply(4, 1, &acquire(1, "one", 41)).unwrap()));
    assert!(!granted(b.apply(5, 1, &acquire(2, "two", 51)).unwrap()));
    // Lease 2's client gave up on wait 51 and retried at once, with another value.
    assert!(!granted(
        b.apply(6, 1, &acquire(2, "two again", 61)).unwrap()
    ));
    // The abandoned request's cancel lands after the retry: the place is the retry's now.
    assert!(!granted(b.apply(7, 1, &cancel(2, 51, true)).unwrap()));
    b.commit().unwrap();
    assert_eq!(waiters(), vec![2], "the late cancel took the retry's place");

    // The retry's own cancel ends the wait; a cancel naming no wait ends any.
    let mut b = sm.batch();
    b.apply(8, 1, &cancel(2, 61, false)).unwrap();
    b.commit().unwrap();
    assert_eq!(waiters(), Vec::<u64>::new());
    let mut b = sm.batch();
    assert!(!granted(b.apply(9, 1, &acquire(2, "two", 91)).unwrap()));
    b.apply(10, 1, &cancel(2, 0, false)).unwrap();
    b.commit().unwrap();
    assert_eq!(waiters(), Vec::<u64>::new());

    // Lease 2 waits (111) and retries (121); the lock passes to it with the retry's value.
    let mut b = sm.batch();
    assert!(!granted(b.apply(11, 1, &acquire(2, "two", 111)).unwrap()));
    assert!(!granted(
        b.apply(12, 1, &acquire(2, "two at last", 121)).unwrap()
    ));
    assert!(!granted(b.apply(13, 1, &acquire(3, "three", 131)).unwrap()));
    b.apply(14, 1, &release(1)).unwrap();
    b.commit().unwrap();
    assert_eq!(holder(), Some((2, "two at last".into())));
    // The first wait's abandoned cancel leaves the grant alone: it answers the retry.
    let mut b = sm.batch();
    assert!(granted(b.apply(15, 1, &cancel(2, 111, true)).unwrap()));
    // A cancel of the retry's wait whose handler still answers keeps it, and says so.
    assert!(granted(b.apply(16, 1, &answer(2, 121)).unwrap()));
    b.commit().unwrap();
    assert_eq!(holder(), Some((2, "two at last".into())));
    // The retry's wait abandoned: nobody takes the grant, so it goes to the next waiter.
    let mut b = sm.batch();
    assert!(!granted(b.apply(17, 1, &cancel(2, 121, true)).unwrap()));
    b.commit().unwrap();
    assert_eq!(holder(), Some((3, "three".into())));
    assert_eq!(lock().holder.map(|h| h.fence), Some(17));
    // A holder that acquires again (its first answer lost) takes the grant over.
    let mut b = sm.batch();
    assert!(granted(b.apply(18, 1, &acquire(3, "three", 181)).unwrap()));
    assert!(granted(b.apply(19, 1, &cancel(3, 131, true)).unwrap()));
    b.commit().unwrap();
    assert_eq!(holder(), Some((3, "three".into())));
    // A cancel whose wait answers claims the grant it returns: an abandoned cancel of another
    // wait of the lease can no longer give it up.
    let mut b = sm.batch();
    assert!(granted(b.apply(20, 1, &answer(3, 201)).unwrap()));
    assert!(granted(b.apply(21, 1, &cancel(3, 181, true)).unwrap()));
    // A cancel that answers nobody keeps the grant without claiming it.
    assert!(granted(b.apply(22, 1, &cancel(3, 221, false)).unwrap()));
    b.commit().unwrap();
    assert_eq!(holder(), Some((3, "three".into())));
    assert_eq!(lock().holder.map(|h| h.wait_id), Some(201));
}
