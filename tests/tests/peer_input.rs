//! Raft messages that raft-rs would abort on (`fatal!` or an index out of bounds), sent to a
//! real node on its peer port by a stranger claiming a member's id (the cluster runs without
//! TLS, where a Hello is believed: the worst case). Each is refused and logged on arrival; the
//! node stays up, keeps its term, and serves reads and writes.

use std::io::Write;
use std::net::TcpStream;

use keel_tests::peerwire::{hello, msg_type, Entry, Msg};
use keel_tests::{wait_until, Cluster, DEADLINE};

/// Sends a Hello as `from` (with `from`'s real client address, so that the node's address book
/// is not what changes), then `frame`, on a new connection to `peer`.
fn send(peer: &str, from: u64, http: &str, frame: &[u8]) {
    let mut s = TcpStream::connect(peer).expect("connect");
    s.write_all(&[hello(from, http, 0), frame.to_vec()].concat())
        .expect("write");
}

/// How many times node `id` has logged `reason` with a refusal.
fn refusals(c: &mut Cluster, id: u64, reason: &str) -> usize {
    let log = std::fs::read_to_string(&c.node(id).log).unwrap_or_default();
    log.lines()
        .filter(|l| l.contains("raft message refused") && l.contains(reason))
        .count()
}

#[test]
fn raft_messages_that_would_abort_raft_rs_are_refused_and_the_node_stays_up() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let other = c.others(&[leader, follower])[0];
    for i in 0..5 {
        let r = c.put(leader, &format!("k{i}"), b"v").expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let status = c.status(follower).expect("status");
    let term = status["term"].as_u64().expect("term");
    let commit = status["commit_index"].as_u64().expect("commit");
    let m = |msg_type, to, from, term| Msg {
        msg_type,
        to,
        from,
        term,
        ..Msg::default()
    };
    // (what, target, claimed sender, message, the reason the node must log). Each breaks one
    // rule only; in comments, what raft-rs 0.7 did with it before the guard.
    let attacks: Vec<(&str, u64, u64, Msg, &str)> = vec![
        (
            // forwarded to the leader, which aborts on an empty proposal
            "an empty forwarded proposal",
            follower,
            leader,
            m(msg_type::PROPOSE, follower, leader, 0),
            "MsgPropose without entries",
        ),
        (
            // the leader reads the first entry's context: index out of bounds
            "a read index request without its context",
            leader,
            follower,
            m(msg_type::READ_INDEX, leader, follower, 0),
            "MsgReadIndex without entries",
        ),
        (
            // sent on to the leader with its term: raft-rs aborts sending it
            "a proposal with a term",
            follower,
            leader,
            Msg {
                entries: vec![Entry {
                    term: 0,
                    index: 0,
                    data: &[],
                }],
                ..m(msg_type::PROPOSE, follower, leader, term)
            },
            "MsgPropose with term",
        ),
        (
            // the follower forwards it to the leader with its term set: abort
            "a leadership transfer",
            follower,
            leader,
            m(msg_type::TRANSFER_LEADER, follower, leader, term),
            "leadership transfers are never sent",
        ),
        (
            // answered with a message of term 0: abort
            "a vote without a term",
            follower,
            other,
            m(msg_type::REQUEST_VOTE, follower, other, 0),
            "MsgRequestVote without a term",
        ),
        (
            // entries that do not follow `index` conflict with committed ones: abort
            "an append whose entries do not follow its index",
            follower,
            leader,
            Msg {
                log_term: term,
                index: commit,
                entries: vec![Entry {
                    term: term + 7,
                    index: 1,
                    data: &[],
                }],
                commit,
                ..m(msg_type::APPEND, follower, leader, term)
            },
            "has index 1 term",
        ),
        (
            // term 0 beyond the log matches: the follower commits entries it lacks: abort
            "an append after an entry of term 0 beyond the log",
            follower,
            leader,
            Msg {
                index: commit + 50,
                commit: commit + 50,
                ..m(msg_type::APPEND, follower, leader, term)
            },
            "of term 0",
        ),
        (
            // keel proposes only on the leader and forwards writes as requests of its own, so
            // no node sends a proposal: this one's entry would be logged without the leader's
            // stamps. Its command is stamped for apply version 1000 (tag 14), which no keel
            // applies: committed, it stopped every node's apply, the whole cluster down from
            // one message (found 2026-12-08).
            "a proposal of a command no keel applies",
            leader,
            follower,
            Msg {
                entries: vec![Entry {
                    term: 0,
                    index: 0,
                    data: &[0x70, 0xe8, 0x07],
                }],
                ..m(msg_type::PROPOSE, leader, follower, 0)
            },
            "a proposal from a peer",
        ),
        (
            "a term too large to ever be reached",
            other,
            leader,
            m(msg_type::HEARTBEAT, other, leader, u64::MAX - 1),
            "beyond any real term",
        ),
    ];
    for (what, target, claimed, msg, reason) in attacks {
        let peer = c.node(target).peer.clone();
        let http = c.endpoints()[claimed as usize - 1].clone();
        let before = refusals(&mut c, target, reason);
        send(&peer, claimed, &http, &msg.frame());
        // The node logs the refusal, for this reason (or, without the guard, dies).
        wait_until(DEADLINE, &format!("{what}: refused and logged"), || {
            assert!(
                c.node(target).is_running(),
                "{what} stopped node {target}:\n{}",
                c.log_tail(target, 20)
            );
            (refusals(&mut c, target, reason) > before).then_some(())
        });
        eprintln!("{what}: refused by node {target} ({reason})");
    }
    // Every node is up, with a sane term, and serves writes and linearizable reads.
    let leader = c.wait_for_leader();
    for id in c.ids() {
        assert!(c.node(id).is_running(), "node {id} died");
        let t = c.status(id).expect("status")["term"]
            .as_u64()
            .expect("term");
        assert!(t < 1 << 32, "node {id} took a forged term {t}");
        let r = c
            .put_until_ok(leader, &format!("after{id}"), b"1", DEADLINE)
            .status;
        assert_eq!(r, 200);
        let r = c.get(id, &format!("after{id}")).expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}

/// A node that does not know a peer's id answers it at the address its Hello gives (a member
/// added while the node was cut off: the fault suite's stranded-node bug), but only a few such
/// nodes: a stranger claiming twenty new ids makes the node dial at most
/// `MAX_UNKNOWN_PEERS` (8) of them, and a Hello from an unknown id without an address is refused.
#[test]
fn strangers_claiming_unknown_ids_start_only_a_few_dialers() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let target = c.others(&[leader])[0];
    let peer = c.node(target).peer.clone();
    let log = c.node(target).log.clone();
    // The addresses strangers give point here, a listener of this test.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let sink_addr = sink.local_addr().expect("addr").to_string();
    let count = |what: &str| {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(what))
            .count()
    };
    let answered = || count("answering it at its address");
    let refused = || count("cannot be answered");
    // One at a time: each Hello decided before the next (only a few connections per address
    // may wait for their Hello at once).
    let mut conns = Vec::new();
    let hellos = (0..20u64)
        .map(|i| keel_tests::peerwire::hello_at(1000 + i, "127.0.0.1:1", 1, &sink_addr))
        .chain(std::iter::once(hello(2000, "127.0.0.1:1", 1)));
    for (n, h) in hellos.enumerate() {
        let mut s = TcpStream::connect(&peer).expect("connect");
        let _ = s.write_all(&h);
        conns.push(s);
        wait_until(DEADLINE, "the stranger's Hello decided", || {
            (answered() + refused() > n).then_some(())
        });
    }
    assert_eq!(answered(), 8, "answered");
    assert_eq!(refused(), 13, "refused");
    let r = c.put(leader, "still-served", b"1").expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    drop(conns);
}
