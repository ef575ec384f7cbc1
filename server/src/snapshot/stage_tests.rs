//! Tests of the staging of incoming snapshots (`stage.rs`).

use super::*;
use crate::members::MemberAddr;
use crate::proto::SnapshotPair;

fn chunk(seq: u64, done: bool, pairs: Vec<SnapshotPair>) -> SnapshotChunk {
    SnapshotChunk {
        snap_index: 10,
        snap_term: 2,
        seq,
        done,
        applied: 12,
        applied_term: 2,
        pairs,
        members: Vec::new(),
        history_after: None,
        stream: 7,
        leader_term: 1,
    }
}

fn pair(cf: u32, key: &[u8]) -> SnapshotPair {
    SnapshotPair {
        cf,
        key: key.to_vec(),
        value: b"v".to_vec(),
    }
}

fn stage() -> (tempfile::TempDir, Stage) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = crate::storage::open_db(dir.path()).expect("open RocksDB");
    (dir, Stage::new(db))
}

#[test]
fn a_chunk_the_install_could_not_write_is_refused_on_arrival() {
    let (_d, stage) = stage();
    stage
        .stage_chunk(chunk(0, false, vec![pair(0, b"a")]))
        .expect("stage");
    // Column family 6 does not exist (256 would even wrap to 0 as a byte).
    for bad in [pair(6, b"b"), pair(256, b"b"), pair(0, &[b'k'; 9000])] {
        let (_d, stage) = self::stage();
        stage
            .stage_chunk(chunk(0, false, vec![pair(0, b"a")]))
            .expect("stage");
        stage
            .stage_chunk(chunk(1, true, vec![bad]))
            .expect("refused, not an error");
        assert!(
            !stage.lock_staged(10, 2),
            "a bad stream must not be installable"
        );
    }
    let mut damaged = chunk(1, true, vec![pair(1, b"k")]);
    damaged.members = b"{not json".to_vec();
    stage.stage_chunk(damaged).expect("refused, not an error");
    assert!(!stage.lock_staged(10, 2));
}

/// Chunk `seq` of stream `stream`, whose one pair names both.
fn of_stream(stream: u64, seq: u64, done: bool) -> SnapshotChunk {
    SnapshotChunk {
        stream,
        ..chunk(
            seq,
            done,
            vec![pair(0, format!("{stream}-{seq}").as_bytes())],
        )
    }
}

/// Found by review: a node does not close a peer's older connection when a new one starts,
/// so the chunks of two streams of one snapshot could interleave (A0, B0, A1), and A1 was
/// taken as B's second chunk, mixing data read at two points in time.
#[test]
fn a_chunk_of_another_stream_never_continues_this_one() {
    let (_d, stage) = stage();
    stage.stage_chunk(of_stream(1, 0, false)).expect("stage A0");
    stage.stage_chunk(of_stream(2, 0, false)).expect("stage B0");
    stage
        .stage_chunk(of_stream(1, 1, true))
        .expect("refused, not an error");
    assert!(
        !stage.lock_staged(10, 2),
        "A's last chunk completed B's stream"
    );
    // A stream on its own still completes.
    stage.stage_chunk(of_stream(3, 0, false)).expect("stage C0");
    stage.stage_chunk(of_stream(3, 1, true)).expect("stage C1");
    assert!(stage.lock_staged(10, 2), "a whole stream is installable");
}

/// A straggler of an old stream arriving in the middle of a new one is dropped and the new
/// stream goes on (found by review: it used to abandon the new stream, so an old connection
/// still delivering could keep a follower from ever catching up).
#[test]
fn a_straggler_of_another_stream_leaves_this_one_going() {
    let (_d, stage) = stage();
    stage.stage_chunk(of_stream(1, 0, false)).expect("stage A0");
    stage.stage_chunk(of_stream(2, 0, false)).expect("stage B0");
    stage
        .stage_chunk(of_stream(1, 1, false))
        .expect("dropped A1");
    stage.stage_chunk(of_stream(2, 1, true)).expect("stage B1");
    assert!(stage.lock_staged(10, 2), "B's stream is whole");
}

/// A first chunk of an older stream arriving late (an older connection still delivering) is
/// dropped and the newer stream goes on (it used to restart staging, so the newer stream's next
/// chunks were dropped and the snapshot had to be sent again). A stream of a newer term starts
/// over whatever its number, and so does one from a sender that does not say its term.
#[test]
fn a_late_start_of_an_older_stream_leaves_the_newer_one_going() {
    let (_d, stage) = stage();
    stage.stage_chunk(of_stream(5, 0, false)).expect("stage B0");
    stage
        .stage_chunk(of_stream(4, 0, false))
        .expect("dropped A0");
    stage.stage_chunk(of_stream(5, 1, true)).expect("stage B1");
    assert!(stage.lock_staged(10, 2), "B's stream is whole");
    stage.unlock_staged();
    let newer_term = |seq, done| SnapshotChunk {
        leader_term: 2,
        ..of_stream(1, seq, done)
    };
    stage.stage_chunk(newer_term(0, false)).expect("stage C0");
    stage
        .stage_chunk(of_stream(5, 0, false))
        .expect("dropped B0 again");
    stage.stage_chunk(newer_term(1, false)).expect("stage C1");
    let legacy = |seq, done| SnapshotChunk {
        leader_term: 0,
        ..of_stream(0, seq, done)
    };
    stage.stage_chunk(legacy(0, false)).expect("stage D0");
    stage.stage_chunk(legacy(1, true)).expect("stage D1");
    assert!(
        stage.lock_staged(10, 2),
        "a stream that does not say its term"
    );
}

/// The change log comes with the snapshot: the installed history starts where the sender's
/// did (found by review: taken from the first change alone, it refused resumes whose
/// entries had changed no key), or, from a sender that does not say, before the first
/// change; without either, after the installed index.
#[test]
fn the_installed_history_starts_where_the_senders_changes_do() {
    let changes = SNAPSHOT_CFS
        .iter()
        .position(|n| *n == CF_CHANGES)
        .expect("the change log is in snapshots") as u32;
    let mut key = 7u64.to_be_bytes().to_vec();
    key.extend_from_slice(&0u32.to_be_bytes());
    // (pairs, the sender's start if it says, the installed start)
    for (pairs, said, want) in [
        (vec![pair(0, b"a"), pair(changes, &key)], None, 6),
        (vec![pair(0, b"a")], None, 12),
        // Its last entries changed no key: its word, not the first change, decides.
        (vec![pair(0, b"a"), pair(changes, &key)], Some(3), 3),
        (vec![pair(0, b"a")], Some(99), 12),
    ] {
        let (_d, stage) = stage();
        let mut last = chunk(0, true, pairs);
        last.history_after = said;
        stage.stage_chunk(last).expect("stage");
        assert!(stage.lock_staged(10, 2));
        let mut batch = WriteBatch::default();
        let installed = stage
            .install_staged(&mut batch, &AddressBook::new())
            .expect("install");
        assert_eq!(installed.history_after, want);
        stage.db.write(batch).expect("write");
        finish_install(&stage.db, INSTALL_BATCH_BYTES).expect("finish");
        let meta_cf = cf(&stage.db, crate::storage::CF_META).expect("meta");
        let stored = meta::history_after_through(|k| stage.db.get_cf(meta_cf, k)).expect("read");
        assert_eq!(stored, Some(want));
    }
}

#[test]
fn the_address_book_travels_with_the_snapshot() {
    let (_d, stage) = stage();
    let mut book = AddressBook::new();
    book.insert(
        4,
        MemberAddr {
            peer_addr: "n4:7101".into(),
            http_addr: Some("n4:7001".into()),
        },
    );
    stage
        .stage_chunk(chunk(0, false, vec![pair(0, b"a")]))
        .expect("stage");
    let mut last = chunk(1, true, vec![pair(0, b"b")]);
    last.members = members::encode(&book);
    stage.stage_chunk(last).expect("stage");
    assert!(stage.lock_staged(10, 2));
    let mut batch = WriteBatch::default();
    let installed = stage
        .install_staged(&mut batch, &AddressBook::new())
        .expect("install");
    assert_eq!((installed.applied, installed.applied_term), (12, 2));
    assert_eq!(installed.members, Some(book.clone()));
    stage.db.write(batch).expect("write");
    finish_install(&stage.db, INSTALL_BATCH_BYTES).expect("finish");
    let stored = meta::read_members(&stage.db)
        .expect("read")
        .expect("present");
    assert_eq!(stored.expect("parses"), book);
}

fn data_keys(db: &DB) -> Vec<Vec<u8>> {
    let data = cf(db, crate::storage::CF_DATA).expect("data");
    db.iterator_cf(data, IteratorMode::Start)
        .map(|item| item.expect("read").0.into_vec())
        .collect()
}

/// The install copies the staged data into place in bounded batches after the synced write
/// that empties the state machine; a crash in the middle leaves the pending install, and
/// finishing it again (as the node does when it starts) gives the whole snapshot.
#[test]
fn an_install_interrupted_in_the_middle_of_its_copy_is_finished_whole() {
    let (_d, stage) = stage();
    let data = cf(&stage.db, crate::storage::CF_DATA).expect("data");
    // What the node held before: replaced, not merged.
    stage.db.put_cf(data, b"old", b"x").expect("put");
    let keys: Vec<Vec<u8>> = (0..2000).map(|i| format!("k{i:05}").into_bytes()).collect();
    for (seq, part) in keys.chunks(500).enumerate() {
        let pairs = part.iter().map(|k| pair(0, k)).collect();
        let last = seq == 3;
        stage
            .stage_chunk(chunk(seq as u64, last, pairs))
            .expect("stage");
    }
    assert!(stage.lock_staged(10, 2));
    let mut batch = WriteBatch::default();
    stage
        .install_staged(&mut batch, &AddressBook::new())
        .expect("install");
    stage.db.write(batch).expect("write");
    // The first half: emptied, pending, nothing copied, the applied index not moved.
    assert!(data_keys(&stage.db).is_empty());
    let pending = meta::read_pending_install(&stage.db)
        .expect("read")
        .expect("pending");
    assert_eq!((pending.applied, pending.applied_term), (12, 2));
    assert_eq!(meta::read_applied(&stage.db).expect("read").0, 0);
    // A crash after part of the copy: some keys in place.
    for k in &keys[..700] {
        stage.db.put_cf(data, k, b"v").expect("put");
    }
    // Finished (in batches of about 1 KiB: many batches), it is the snapshot exactly.
    let done = finish_install(&stage.db, 1024).expect("finish");
    assert_eq!(done, Some(pending));
    assert_eq!(data_keys(&stage.db), keys);
    assert_eq!(meta::read_applied(&stage.db).expect("read"), (12, 2));
    assert_eq!(meta::read_pending_install(&stage.db).expect("read"), None);
    let staging = cf(&stage.db, CF_SNAP_STAGING).expect("staging");
    assert!(stage
        .db
        .iterator_cf(staging, IteratorMode::Start)
        .next()
        .is_none());
    // Nothing pending: a second call (the next start) does nothing.
    assert_eq!(finish_install(&stage.db, 1024).expect("again"), None);
    assert_eq!(data_keys(&stage.db), keys);
}
