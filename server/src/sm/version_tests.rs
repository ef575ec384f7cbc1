//! The state machine's apply-version gate, on a real RocksDB.

use prost::Message as _;

use super::{StateMachine, APPLY_VERSION};
use crate::proto::command::Op;
use crate::proto::{Command, DeleteOp};
use crate::storage::StorageError;

/// An entry written for newer apply semantics than this binary knows stops the apply (the node
/// stops) instead of being applied the old way; entries of this version, and of binaries before
/// the field (0), apply. Nothing of the stopped batch is written.
#[test]
fn an_entry_for_newer_apply_semantics_stops_the_apply() {
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachine::new(crate::storage::open_db(dir.path()).unwrap());
    let versioned = |apply_version: u32, key: &str| {
        let op = Op::Delete(DeleteOp {
            key: key.into(),
            ..Default::default()
        });
        Command {
            op: Some(op),
            apply_version,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let mut b = sm.batch();
    assert!(b.apply(1, 1, &versioned(0, "old")).unwrap().is_ok());
    assert!(b
        .apply(2, 1, &versioned(APPLY_VERSION, "now"))
        .unwrap()
        .is_ok());
    match b.apply(3, 1, &versioned(APPLY_VERSION + 1, "next")) {
        Err(StorageError::NewerEntry {
            index: 3,
            version,
            supported,
        }) => {
            assert_eq!((version, supported), (APPLY_VERSION + 1, APPLY_VERSION))
        }
        other => panic!("applied an entry of newer semantics: {other:?}"),
    }
    // The node stops here: the batch is dropped, nothing of it written.
    drop(b);
    assert_eq!(sm.applied_index().unwrap(), 0);
}

/// An entry that does not decode is refused as invalid by a node of its version, but stops a
/// node that knows only older semantics: newer ones may change how a field is encoded, and the
/// newer nodes apply what the older one cannot read.
#[test]
fn an_undecodable_entry_for_newer_semantics_stops_the_apply() {
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachine::new(crate::storage::open_db(dir.path()).unwrap());
    // Tag 1 (a put, a message) sent as a varint, then tag 14 (the apply version).
    let entry = |version: u32| {
        let mut bytes = vec![0x08, 0x01, 0x70];
        prost::encoding::encode_varint(u64::from(version), &mut bytes);
        bytes
    };
    assert!(Command::decode(entry(APPLY_VERSION + 1).as_slice()).is_err());
    let mut b = sm.batch();
    let refused = b.apply(1, 1, &entry(APPLY_VERSION)).unwrap();
    assert!(!refused.is_ok(), "an undecodable entry was applied");
    match b.apply(2, 1, &entry(APPLY_VERSION + 1)) {
        Err(StorageError::NewerEntry {
            index: 2, version, ..
        }) => {
            assert_eq!(version, APPLY_VERSION + 1)
        }
        other => panic!("an entry for newer semantics was refused as invalid: {other:?}"),
    }
}

/// Apply version 2's rule: a transaction whose gets return more than
/// `MAX_TXN_RESULT_BYTES` of values is rejected, nothing written; the same entry written by a
/// leader of version 1 applies as version 1 did (every node decides alike, whatever its binary).
#[test]
fn a_transaction_returning_too_much_is_rejected_from_version_2_only() {
    use crate::proto::{txn_step::Step, GetOp, PutOp, TxnOp, TxnStep};
    use keel_api::limits::MAX_TXN_RESULT_BYTES;
    let dir = tempfile::tempdir().unwrap();
    let sm = StateMachine::new(crate::storage::open_db(dir.path()).unwrap());
    let put = |key: &str, value: Vec<u8>| {
        Step::Put(PutOp {
            key: key.into(),
            value: value.into(),
            ..Default::default()
        })
    };
    let command = |apply_version: u32, op: Op| {
        Command {
            op: Some(op),
            apply_version,
            ..Default::default()
        }
        .encode_to_vec()
    };
    let half = MAX_TXN_RESULT_BYTES / 2 + 1;
    let big = Op::Txn(TxnOp {
        success: vec![TxnStep {
            step: Some(put("big", vec![7; half])),
        }],
        ..Default::default()
    });
    let mut b = sm.batch();
    assert!(b.apply(1, 1, &command(APPLY_VERSION, big)).unwrap().is_ok());
    b.commit().unwrap();
    // A put of its own, then two gets of just over half the bound each.
    let reads = || {
        Op::Txn(TxnOp {
            success: vec![
                TxnStep {
                    step: Some(put("marker", b"1".to_vec())),
                },
                TxnStep {
                    step: Some(Step::Get(GetOp { key: "big".into() })),
                },
                TxnStep {
                    step: Some(Step::Get(GetOp { key: "big".into() })),
                },
            ],
            ..Default::default()
        })
    };
    let mut b = sm.batch();
    let r = b.apply(2, 1, &command(2, reads())).unwrap();
    assert_eq!(r.error_code, "txn_too_large");
    b.commit().unwrap();
    assert!(sm.get_value("marker").unwrap().is_none(), "nothing written");
    let mut b = sm.batch();
    let r = b.apply(3, 1, &command(1, reads())).unwrap();
    assert!(
        r.is_ok(),
        "a version 1 entry applies as version 1 did: {r:?}"
    );
    b.commit().unwrap();
    assert!(sm.get_value("marker").unwrap().is_some());
}
