//! Criterion micro-benchmarks of keel's hot paths: applying a batch to RocksDB, appending to the
//! Raft log, encoding and decoding peer frames, parsing requests.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use keel_server::proto::{command::Op, frame::Body, Command, Frame, PutOp};
use keel_server::sm::StateMachine;
use keel_server::storage::{open_db, RaftLogStore};
use prost::Message as _;
use protobuf::Message as PbMessage;
use raft::eraftpb::{Entry, Message, MessageType};

fn put(i: u64) -> Vec<u8> {
    Command {
        op: Some(Op::Put(PutOp {
            key: format!("bench/{i:08}"),
            value: Bytes::from(vec![b'x'; 100]),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec()
}

fn apply_batch(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let sm = StateMachine::new(open_db(dir.path()).expect("db"));
    let cmds: Vec<Vec<u8>> = (0..100).map(put).collect();
    let mut index = 1u64;
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(100));
    g.bench_function("100 puts, one write batch", |b| {
        b.iter(|| {
            let mut batch = sm.batch();
            for cmd in &cmds {
                index += 1;
                let _ = batch.apply(index, 1, cmd).expect("apply");
            }
            batch.commit().expect("commit")
        })
    });
    g.finish();
}

fn log_append(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = open_db(dir.path()).expect("db");
    let mut store = RaftLogStore::open(db, &[1]).expect("store");
    let mut next = 2u64;
    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(100));
    g.bench_function("append 100 entries, no fsync", |b| {
        b.iter_batched(
            || {
                let ents: Vec<Entry> = (0..100)
                    .map(|i| Entry {
                        index: next + i,
                        term: 1,
                        data: put(i).into(),
                        ..Default::default()
                    })
                    .collect();
                next += 100;
                ents
            },
            |ents| store.append(&ents, None, false).expect("append"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn frames(c: &mut Criterion) {
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgAppend);
    m.to = 2;
    m.from = 1;
    m.entries = (0..32)
        .map(|i| Entry {
            index: i,
            term: 1,
            data: put(i).into(),
            ..Default::default()
        })
        .collect::<Vec<_>>()
        .into();
    let frame = Frame {
        body: Some(Body::Raft(m.write_to_bytes().expect("encode").into())),
    };
    let bytes = frame.encode_to_vec();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("encode append of 32 entries", |b| {
        b.iter(|| {
            let raw = m.write_to_bytes().expect("encode");
            Frame {
                body: Some(Body::Raft(raw.into())),
            }
            .encode_to_vec()
        })
    });
    g.bench_function("decode append of 32 entries", |b| {
        b.iter(|| {
            let f = Frame::decode(&bytes[..]).expect("decode");
            match f.body {
                Some(Body::Raft(raw)) => Message::parse_from_bytes(&raw).expect("decode"),
                _ => unreachable!("a raft frame"),
            }
        })
    });
    g.finish();
}

fn requests(c: &mut Criterion) {
    let txn = br#"{"compare": [{"key": "acct/a", "target": "int", "op": ">=", "value": 30}],
        "success": [{"op": "add", "key": "acct/a", "delta": -30, "min": 0},
                    {"op": "add", "key": "acct/b", "delta": 30}],
        "failure": [{"op": "get", "key": "acct/a"}]}"#;
    let mut g = c.benchmark_group("request");
    g.bench_function("parse a transfer txn", |b| {
        b.iter(|| keel_server::http::parse_txn(txn, 1 << 20).expect("valid"))
    });
    g.bench_function("decode a percent-encoded key", |b| {
        b.iter(|| keel_server::http::decode_key("users%2F42%2Fprofile%20photo").expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, apply_batch, log_append, frames, requests);
criterion_main!(benches);
