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
