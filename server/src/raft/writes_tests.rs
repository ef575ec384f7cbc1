//! Tests of the batched proposal path ([`Writes::propose`], [`Writes::flush`]) on a real
//! raft-rs `RawNode` over a real RocksDB log store: one voter, which leads once it campaigns.

use super::*;
use crate::proto::{command::Op, PutOp};
use tokio::sync::oneshot;
use tokio::sync::oneshot::error::TryRecvError;

type Rx = oneshot::Receiver<Result<WriteOk, WriteError>>;

/// Node `id` of a cluster of `voters`, on a fresh log in `dir` (the read tests use it too).
pub(crate) fn raw_node(dir: &std::path::Path, id: u64, voters: &[u64]) -> RawNode<RaftLogStore> {
    let db = crate::storage::open_db(dir).expect("open RocksDB");
    let store = RaftLogStore::open(db, voters).expect("open the log");
    let cfg = raft::Config {
        id,
        election_tick: 10,
        heartbeat_tick: 2,
        ..Default::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    RawNode::new(&cfg, store, &logger).expect("raw node")
}

/// A single-voter leader on a fresh log in `dir` (the read tests use it too).
pub(crate) fn leader(dir: &std::path::Path) -> RawNode<RaftLogStore> {
    let mut raw = raw_node(dir, 1, &[1]);
    raw.campaign().expect("campaign");
    assert_eq!(raw.raft.state, StateRole::Leader, "one voter leads at once");
    raw
}

fn put(key: &str) -> Command {
    Command {
        op: Some(Op::Put(PutOp {
            key: key.into(),
            value: b"v".to_vec().into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// Takes a put of `key` into the batch; returns where it is answered.
fn take(w: &mut Writes, raw: &mut RawNode<RaftLogStore>, key: &str) -> Rx {
    let (reply, rx) = oneshot::channel();
    w.propose(raw, put(key), WriteMode::Semi, Reply::channel(reply));
    rx
}

/// The key of the put in the leader's log at `index`.
fn key_at(raw: &RawNode<RaftLogStore>, index: u64) -> String {
    let ents = raw
        .raft
        .raft_log
        .entries(index, u64::MAX, raft::GetEntriesContext::empty(false))
        .expect("entries");
    let cmd = Command::decode(&ents[0].data[..]).expect("a command");
    match cmd.op {
        Some(Op::Put(p)) => p.key,
        other => panic!("not a put at {index}: {other:?}"),
    }
}

fn dropped(rx: &mut Rx) -> bool {
    matches!(rx.try_recv(), Ok(Err(WriteError::Dropped)))
}

#[test]
fn a_turns_writes_are_proposed_together_in_order_after_what_was_proposed_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = leader(dir.path());
    let mut w = Writes::default();
    let start = raw.raft.raft_log.last_index();
    let mut a = take(&mut w, &mut raw, "a");
    let mut b = take(&mut w, &mut raw, "b");
    assert_eq!(
        raw.raft.raft_log.last_index(),
        start,
        "taken, not yet proposed"
    );
    // Something proposed directly in the same turn (a membership change goes this way).
    let (reply, mut direct) = oneshot::channel();
    w.submit(
        &mut raw,
        WriteMode::Semi,
        false,
        Reply::channel(reply),
        |raw| raw.propose(Vec::new(), put("direct").encode_to_vec()),
    );
    let c = take(&mut w, &mut raw, "c");
    w.flush(&mut raw);
    assert_eq!(raw.raft.raft_log.last_index(), start + 4);
    let keys: Vec<String> = (start + 1..=start + 4).map(|i| key_at(&raw, i)).collect();
    assert_eq!(keys, ["direct", "a", "b", "c"]);
    // Each waits under its own entry's index, in this term.
    let waiting: Vec<u64> = w.pending.keys().copied().collect();
    assert_eq!(waiting, (start + 1..=start + 4).collect::<Vec<_>>());
    assert!(w.pending.values().all(|p| p.term == raw.raft.term));
    for rx in [&mut a, &mut b, &mut direct] {
        assert!(
            matches!(rx.try_recv(), Err(TryRecvError::Empty)),
            "not yet answered"
        );
    }
    drop(c);
    // Nothing left to propose: a second flush appends nothing.
    w.flush(&mut raw);
    assert_eq!(raw.raft.raft_log.last_index(), start + 4);
}

#[test]
fn a_full_batch_is_proposed_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = leader(dir.path());
    let mut w = Writes::default();
    let start = raw.raft.raft_log.last_index();
    let _rxs: Vec<Rx> = (0..MAX_BATCH)
        .map(|i| take(&mut w, &mut raw, &format!("k{i}")))
        .collect();
    assert_eq!(raw.raft.raft_log.last_index(), start + MAX_BATCH as u64);
    assert!(w.batch.is_empty());
    assert_eq!(
        key_at(&raw, start + MAX_BATCH as u64),
        format!("k{}", MAX_BATCH - 1)
    );
}

/// The byte cap is hard: a write that would take the batch past [`MAX_BATCH_BYTES`] sends the
/// batch before it off alone and starts the next one.
#[test]
fn a_write_that_would_cross_the_byte_cap_starts_the_next_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = leader(dir.path());
    let mut w = Writes::default();
    let start = raw.raft.raft_log.last_index();
    let big = |key: &str| Command {
        op: Some(Op::Put(PutOp {
            key: key.into(),
            value: vec![b'v'; MAX_BATCH_BYTES * 2 / 3].into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    let mut rxs = Vec::new();
    for key in ["a", "b"] {
        let (reply, rx) = oneshot::channel();
        w.propose(&mut raw, big(key), WriteMode::Semi, Reply::channel(reply));
        rxs.push(rx);
    }
    assert_eq!(
        raw.raft.raft_log.last_index(),
        start + 1,
        "the first went alone"
    );
    assert_eq!(key_at(&raw, start + 1), "a");
    assert_eq!(w.batch.len(), 1, "the second waits in the next batch");
    assert!(w.batch_bytes <= MAX_BATCH_BYTES);
}

#[test]
fn writes_raft_rs_refuses_or_never_proposed_are_answered_dropped_and_append_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut raw = leader(dir.path());
    let mut w = Writes::default();
    let start = raw.raft.raft_log.last_index();
    // raft-rs drops proposals while leadership is being handed over.
    let mut a = take(&mut w, &mut raw, "a");
    raw.raft.lead_transferee = Some(2);
    w.flush(&mut raw);
    assert!(dropped(&mut a));
    assert_eq!(raw.raft.raft_log.last_index(), start);
    assert!(w.pending.is_empty());
    raw.raft.lead_transferee = None;
    // The loop stops with writes taken but not proposed: never appended, so `Dropped` (which
    // the router may retry), unlike the proposed ones (`OutcomeUnknown`).
    let mut proposed = take(&mut w, &mut raw, "proposed");
    w.flush(&mut raw);
    let mut unproposed = take(&mut w, &mut raw, "unproposed");
    w.fail_all(WriteError::OutcomeUnknown);
    assert!(dropped(&mut unproposed));
    assert!(matches!(
        proposed.try_recv(),
        Ok(Err(WriteError::OutcomeUnknown))
    ));
    assert_eq!(raw.raft.raft_log.last_index(), start + 1);
}
