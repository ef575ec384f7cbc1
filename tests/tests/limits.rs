//! What a stranger can tie up on each port: sockets that say nothing, or send headers a byte at
//! a time, or announce a huge first frame on the peer port. The node must go on serving real
//! clients and peers, and must close such sockets by itself (header and idle timeouts on HTTP,
//! a Hello deadline and a small pre-Hello frame limit on the peer port), so that they cannot
//! hold its connection slots for ever.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use keel_tests::{wait_until, Cluster, DEADLINE};

/// Longer than the node's header timeout (10 s) and Hello deadline (5 s), with room for a
/// loaded machine.
const CLOSE_DEADLINE: Duration = Duration::from_secs(45);

/// Whether the server has closed `s` (EOF or reset); false while it is still open.
fn closed_by_server(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        Ok(0) => true,
        // A 408 or 400 answer before the close counts as closing; keep reading next time.
        Ok(_) => false,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => false,
        Err(_) => true,
    }
}

fn open_many(addr: &str, n: usize, first_bytes: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            if !first_bytes.is_empty() {
                s.write_all(first_bytes).expect("write");
            }
            s.set_read_timeout(Some(Duration::from_millis(20)))
                .expect("read timeout");
            s
        })
        .collect()
}

/// Waits until the server has closed every socket; returns how long it took.
fn wait_all_closed(socks: &mut [TcpStream], what: &str) -> Duration {
    let start = Instant::now();
    let mut open: Vec<usize> = (0..socks.len()).collect();
    wait_until(CLOSE_DEADLINE, what, || {
        open.retain(|&i| !closed_by_server(&mut socks[i]));
        open.is_empty().then_some(())
    });
    start.elapsed()
}

#[test]
fn silent_and_slow_http_clients_are_cut_off_and_real_clients_are_served() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let addr = c.endpoints()[leader as usize - 1].clone();
    // 100 sockets that say nothing, 100 that send half a request's headers and stop.
    let mut silent = open_many(&addr, 100, b"");
    let mut slow = open_many(&addr, 100, b"PUT /v1/kv/slow HTTP/1.1\r\nHost: keel\r\n");
    // A request whose headers arrived and whose body never does.
    let mut no_body = open_many(
        &addr,
        20,
        b"PUT /v1/kv/nobody HTTP/1.1\r\nHost: keel\r\nContent-Length: 10\r\n\r\nabc",
    );
    // Meanwhile real clients are served.
    for i in 0..50 {
        let r = c.put(leader, &format!("real{i}"), b"v").expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let t = wait_all_closed(&mut silent, "silent sockets closed by the node");
    eprintln!("100 silent HTTP sockets closed after {t:?}");
    let t = wait_all_closed(&mut slow, "slowloris sockets closed by the node");
    eprintln!("100 slowloris HTTP sockets closed after {t:?}");
    let t = wait_all_closed(&mut no_body, "body-less requests answered and closed");
    eprintln!("20 requests without their body closed after {t:?}");
    let r = c.get(leader, "nobody").expect("answers");
    assert_eq!(r.status, 404, "a body that never came wrote nothing");
    let r = c.get(leader, "real49").expect("answers");
    assert_eq!(r.status, 200);
}

#[test]
fn strangers_on_the_peer_port_cannot_hold_its_slots() {
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let peer = c.node(follower).peer.clone();
    // A first frame that announces 60 MiB: refused at once, never buffered.
    let mut huge = open_many(&peer, 5, &(60u32 * 1024 * 1024).to_be_bytes());
    let t = wait_all_closed(&mut huge, "huge first frames refused");
    eprintln!("5 connections announcing a 60 MiB first frame closed after {t:?}");
    // More silent sockets than the peer port's connection slots (64).
    let mut silent = open_many(&peer, 80, b"");
    let t = wait_all_closed(&mut silent, "silent peer sockets closed by the node");
    eprintln!("80 silent peer sockets closed after {t:?}");
    // The real peers still connect: the follower, restarted, dials the others and they dial it.
    c.kill(follower);
    c.put_until_ok(leader, "while-away", b"1", Duration::from_secs(30));
    c.restart(follower);
    wait_until(CLOSE_DEADLINE, "the restarted follower catches up", || {
        let r = c.get(follower, "while-away?consistency=stale").ok()?;
        (r.status == 200).then_some(())
    });
}

#[test]
fn a_hello_dribbled_a_byte_at_a_time_is_cut_off_at_the_hello_deadline() {
    // Bytes keep arriving, so no read timeout fires: the deadline is on the whole Hello.
    let mut c = Cluster::start(3);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let peer = c.node(follower).peer.clone();
    let mut socks = open_many(&peer, 3, &200u32.to_be_bytes());
    let start = Instant::now();
    let mut cut_off = vec![None; socks.len()];
    // Bounded: one byte per socket every 200 ms for at most 45 s (the Hello deadline is 5 s).
    for _ in 0..225 {
        for (i, s) in socks.iter_mut().enumerate() {
            if cut_off[i].is_none() && (s.write_all(b"x").is_err() || closed_by_server(s)) {
                cut_off[i] = Some(start.elapsed());
            }
        }
        if cut_off.iter().all(Option::is_some) || start.elapsed() > CLOSE_DEADLINE {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("dribbled Hellos cut off after {cut_off:?}");
    for t in &cut_off {
        let t = t.expect("a dribbled Hello held its connection for 45 s");
        // Well past the 5 s deadline would mean each byte restarted a timer.
        assert!(t < Duration::from_secs(15), "cut off only after {t:?}");
    }
    // The node still serves its peers: a write reaches it.
    c.put_until_ok(
        leader,
        "after-dribble?mode=sync",
        b"1",
        Duration::from_secs(30),
    );
}

/// One `GET /health` on a new connection, kept open (keep-alive): Some(connection) when the node
/// served it, None when the node closed the connection instead.
fn served(addr: &str) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    health_on(&mut s).then_some(s)
}

/// Whether `GET /health` on `s` was answered 200 (false: the node closed or reset it).
fn health_on(s: &mut TcpStream) -> bool {
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: keel\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 1024];
    match s.read(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            let head = String::from_utf8_lossy(&buf[..n]);
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            true
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            panic!("neither an answer nor a close within 10 s")
        }
        Err(_) => false,
    }
}

/// A node serves at most `--max-connections` client connections at once: one more is closed as
/// soon as it is accepted, while the connections it holds are still served and the node goes on
/// applying with its peers; once some close, new ones are served again.
#[test]
fn connections_past_the_cap_are_closed_and_the_node_goes_on() {
    const CAP: usize = 40;
    let mut c = Cluster::start_with(3, &["--max-connections", "40"]);
    let leader = c.wait_for_leader();
    let node = c.others(&[leader])[0];
    let addr = c.http_addr(node);
    // The harness's own keep-alive connections count too: the cap is reached at CAP or a few
    // before.
    let mut held = Vec::new();
    let reached = loop {
        assert!(
            held.len() <= CAP,
            "more than {CAP} connections served at once"
        );
        match served(&addr) {
            Some(s) => held.push(s),
            None => break held.len(),
        }
    };
    assert!(
        reached >= CAP - 8,
        "refused after only {reached} connections"
    );
    assert!(served(&addr).is_none(), "served past the cap");
    assert!(
        held.last_mut().is_some_and(health_on),
        "a held connection is no longer served"
    );
    // Its peer port is another matter: a sync write waits until every voter, this node too,
    // has applied it.
    let r = c.put_until_ok(leader, "cap/k?mode=sync", b"v", DEADLINE);
    assert_eq!(r.status, 200, "{}", r.text());
    // Slots come back (none leaks): with half the held connections closed (and idle ones timed
    // out by the node), new connections are served again; every refusal was counted.
    held.truncate(reached / 2);
    wait_until(
        DEADLINE,
        "a new connection served once others closed",
        || served(&addr).map(|_| ()),
    );
    let refused = c.metric(node, "keel_http_connections_refused_total");
    assert!(refused >= Some(2), "refusals counted: {refused:?}");
}

/// Under a low open-file limit a node serves fewer client connections than `--max-connections`
/// rather than run out of descriptors: past its budget (the limit less RocksDB's share and the
/// node's own files) one more connection is closed at once, the held ones are served, and the
/// node still opens files (a backup: a flush and a checkpoint) and goes on writing. Before the
/// budget, with 768 descriptors and the default cap of 4,096, the flood took every descriptor:
/// the next connection was neither served nor closed (`accept` failed), and RocksDB could fail
/// to open a file, which stops a node.
#[test]
fn a_low_open_file_limit_caps_client_connections_below_it() {
    const LIMIT: usize = 768;
    let dir = tempfile::tempdir().expect("tempdir");
    let wrapper = dir.path().join("keel-nofile");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec prlimit --nofile={LIMIT}:{LIMIT} -- {} \"$@\"\n",
            keel_tests::keel_bin().display()
        ),
    )
    .expect("write the wrapper");
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("make the wrapper executable");
    let mut c = Cluster::launch_with(3, &[], false, wrapper, &[]);
    let leader = c.wait_for_leader();
    let node = c.others(&[leader])[0];
    let addr = c.http_addr(node);
    let cap = c
        .metric(node, "keel_http_connections_max")
        .expect("the node reports its connection cap");
    // 768 less 512 for the node and its peers, less 192 for RocksDB (node/files.rs).
    assert_eq!(cap, 64, "the cap under {LIMIT} descriptors");
    let mut held = Vec::new();
    // Bounded: a node without the budget takes connections until its descriptors run out, and
    // then more as its idle ones time out.
    let reached = loop {
        if held.len() >= LIMIT {
            break held.len();
        }
        match served(&addr) {
            Some(s) => held.push(s),
            None => break held.len(),
        }
    };
    let log = c.log_tail(node, 10_000);
    assert!(
        !log.contains("Too many open files"),
        "the node ran out of descriptors ({reached} connections held)"
    );
    assert!(
        reached as u64 <= cap,
        "{reached} connections held, past the cap of {cap}"
    );
    assert!(served(&addr).is_none(), "served past the cap");
    let last = held.last_mut().expect("some connections were served");
    assert!(health_on(last), "a held connection is no longer served");
    // Files can still be opened: a backup flushes the memtables and writes a checkpoint.
    let body = r#"{"dir":"under-flood"}"#;
    let request = format!(
        "POST /v1/admin/backup HTTP/1.1\r\nHost: keel\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    );
    last.write_all(request.as_bytes())
        .expect("send the backup request");
    let mut answer = [0u8; 4096];
    let n = last.read(&mut answer).expect("an answer to the backup");
    let head = String::from_utf8_lossy(&answer[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let r = c.put_until_ok(leader, "files/k?mode=sync", b"v", DEADLINE);
    assert_eq!(r.status, 200, "{}", r.text());
}
