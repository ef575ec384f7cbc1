//! Tests of the Raft log store on a real RocksDB.

use super::*;
use crate::storage::entry_cache::test_entry as entry;
use raft::Storage;

#[test]
fn append_truncates_conflicting_tail_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::open_db(dir.path()).unwrap();
    let mut store = RaftLogStore::open(db.clone(), &[1, 2, 3]).unwrap();
    // Bootstrapped as if from a snapshot at index 1, term 1.
    assert_eq!(store.first_index().unwrap(), 2);
    assert_eq!(store.last_index().unwrap(), 1);
    assert_eq!(store.term(1).unwrap(), 1);
    let ents: Vec<_> = (2..=5).map(|i| entry(i, 1)).collect();
    let hs = HardState {
        term: 1,
        vote: 2,
        commit: 3,
        ..Default::default()
    };
    store.append(&ents, Some(&hs), true).unwrap();
    assert_eq!(store.last_index().unwrap(), 5);
    // A new leader in term 2 overwrites from index 4 with a single entry.
    store.append(&[entry(4, 2)], None, true).unwrap();
    assert_eq!(store.last_index().unwrap(), 4);
    assert_eq!(store.term(4).unwrap(), 2);
    assert_eq!(store.term(3).unwrap(), 1);
    assert_eq!(store.term(2).unwrap(), 1);
    store
        .append(&[entry(5, 2), entry(6, 3), entry(7, 3)], None, true)
        .unwrap();
    assert_eq!(
        (2..=7).map(|i| store.term(i).unwrap()).collect::<Vec<_>>(),
        vec![1, 1, 2, 2, 3, 3]
    );
    store.set_applied(6, 3);
    store.compact(5).unwrap();
    assert_eq!(
        store.term(5).unwrap(),
        2,
        "the truncation point keeps its term"
    );
    assert_eq!(store.term(6).unwrap(), 3);
    assert!(store.term(4).is_err());
    store.append(&[entry(7, 4)], None, true).unwrap();
    assert_eq!((store.term(6).unwrap(), store.term(7).unwrap()), (3, 4));
    let got = store
        .entries(6, 8, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
        vec![(6, 3), (7, 4)]
    );
    drop(store);
    let store = RaftLogStore::open(db, &[1, 2, 3]).unwrap();
    assert_eq!(store.last_index().unwrap(), 7);
    assert_eq!((store.term(6).unwrap(), store.term(7).unwrap()), (3, 4));
    assert_eq!(store.hard_state(), &hs);
    assert_eq!(store.conf_state().voters, vec![1, 2, 3]);
}

/// The in-memory entry cache answers exactly as RocksDB does: after appends, replaced tails
/// and compactions, every range read from the live store (mostly from the cache) equals the
/// same read from a store reopened on the same database (from RocksDB only).
#[test]
fn cached_entries_match_the_log_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::open_db(dir.path()).unwrap();
    let mut store = RaftLogStore::open(db.clone(), &[1]).unwrap();
    let mut term = 1;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..300 {
        let last = store.last_index().unwrap();
        let first = store.first_index().unwrap();
        // Mostly appends at the end; sometimes a new term replaces part of the tail.
        let from = if round % 7 == 3 && last >= first {
            term += 1;
            last - next() % (last - first + 1).min(5)
        } else {
            last + 1
        };
        let n = 1 + next() % 6;
        let ents: Vec<_> = (from..from + n).map(|i| entry(i, term)).collect();
        store.append(&ents, None, false).unwrap();
        if round % 11 == 10 {
            let to = store.last_index().unwrap() - 3;
            store.set_applied(to, store.term(to).unwrap());
            store.compact(to).unwrap();
        }
    }
    let first = store.first_index().unwrap();
    let last = store.last_index().unwrap();
    let ctx = || GetEntriesContext::empty(false);
    let live: Vec<_> = (first..=last)
        .map(|low| store.entries(low, last + 1, 64, ctx()).unwrap())
        .collect();
    let all = store.entries(first, last + 1, None, ctx()).unwrap();
    assert!(
        store.cache.get(first, last + 1, u64::MAX).is_some(),
        "the live store's reads came from its cache"
    );
    drop(store);
    let disk = RaftLogStore::open(db, &[1]).unwrap();
    for (low, got) in (first..=last).zip(&live) {
        assert_eq!(got, &disk.entries(low, last + 1, 64, ctx()).unwrap());
    }
    assert_eq!(all, disk.entries(first, last + 1, None, ctx()).unwrap());
    assert_eq!(all.len() as u64, last - first + 1);
    assert!(disk.cache.get(first, first + 1, u64::MAX).is_none());
}

/// After a snapshot replaces a cached log, reads come from the new log only.
#[test]
fn a_snapshot_install_empties_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::open_db(dir.path()).unwrap();
    let mut store = RaftLogStore::open(db, &[1]).unwrap();
    let ents: Vec<_> = (2..=20).map(|i| entry(i, 1)).collect();
    store.append(&ents, None, false).unwrap();
    let mut meta = raft::eraftpb::SnapshotMetadata {
        index: 30,
        term: 2,
        ..Default::default()
    };
    meta.mut_conf_state().voters = vec![1];
    store
        .install_snapshot(WriteBatch::default(), &meta, 30, 2)
        .unwrap();
    assert!(store.cache.get(10, 11, u64::MAX).is_none());
    assert!(store
        .entries(10, 11, None, GetEntriesContext::empty(false))
        .is_err());
    store
        .append(&[entry(31, 2), entry(32, 2)], None, false)
        .unwrap();
    let got = store
        .entries(31, 33, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        got.iter().map(|e| (e.index, e.term)).collect::<Vec<_>>(),
        vec![(31, 2), (32, 2)]
    );
}

#[test]
fn entries_respects_max_size_but_returns_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = crate::storage::open_db(dir.path()).unwrap();
    let mut store = RaftLogStore::open(db, &[1]).unwrap();
    let ents: Vec<_> = (2..=10).map(|i| entry(i, 1)).collect();
    store.append(&ents, None, false).unwrap();
    let one = store
        .entries(3, 11, Some(1), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(one.len(), 1);
    let all = store
        .entries(3, 11, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(all.len(), 8);
}
