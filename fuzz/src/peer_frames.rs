//! Fuzz target of the peer port: arbitrary bytes as a frame that member 2 or 3 sent to node 1
//! after its Hello, through the node's own decoder
//! ([`keel_server::transport::decode_after_hello`]) and the guard of the Ready loop
//! ([`keel_server::raft::guard::admit_to`], exactly as the loop calls it); a Raft message the guard admits is then stepped into a
//! real raft-rs `RawNode` (a follower of member 2, or the leader), configured as keel configures it, with a
//! log of ten entries of which eight are committed. Any panic (a decoder bug, a guard bug, a
//! raft-rs `fatal!` the guard let through) is a crash that AFL records.
//!
//! The first input byte chooses the node's role (bit 0) and the sender (bit 1); the rest is
//! the frame. Built and run by scripts/fuzz.sh.

use keel_server::raft::guard::admit_to;
use keel_server::transport::{decode_after_hello, Decoded};
use raft::eraftpb::{Entry, HardState};
use raft::storage::MemStorage;
use raft::{Config, RawNode, ReadOnlyOption};

/// Node 1 of members {1, 2, 3}: entries 1..=10 (terms 1 and 2), 8 committed, term 2; as a
/// leader it has campaigned once more (term 3, its empty entry at 11).
fn node(leader: bool) -> Option<RawNode<MemStorage>> {
    let storage = MemStorage::new_with_conf_state((vec![1, 2, 3], vec![]));
    {
        let mut core = storage.wl();
        let entries: Vec<Entry> = (1..=10)
            .map(|i| Entry {
                index: i,
                term: if i <= 5 { 1 } else { 2 },
                ..Entry::default()
            })
            .collect();
        core.append(&entries).ok()?;
        let hs = HardState {
            term: 2,
            commit: 8,
            ..HardState::default()
        };
        core.set_hardstate(hs);
    }
    let cfg = Config {
        id: 1,
        election_tick: 10,
        heartbeat_tick: 2,
        applied: 8,
        pre_vote: true,
        check_quorum: true,
        read_only_option: ReadOnlyOption::Safe,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        ..Config::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut raw = RawNode::new(&cfg, storage, &logger).ok()?;
    if leader {
        raw.raft.become_candidate();
        raw.raft.become_leader();
    } else {
        // A follower that knows its leader (member 2) forwards what it cannot serve.
        raw.raft.become_follower(2, 2);
    }
    Some(raw)
}

fn main() {
    afl::fuzz!(|data: &[u8]| {
        let Some((&mode, frame)) = data.split_first() else {
            return;
        };
        let from = 2 + u64::from((mode >> 1) & 1);
        let Ok(Decoded::Raft(mut msg)) = decode_after_hello(frame, from, 1) else {
            return;
        };
        let Some(mut raw) = node(mode & 1 == 1) else {
            return;
        };
        let admitted = admit_to(&mut msg, &raw.raft.raft_log).is_ok();
        if admitted {
            let _ = raw.step(msg);
            if raw.has_ready() {
                let _ = raw.ready();
            }
        }
    });
}
