//! TLS on both ports, on a real cluster started with certificates from `keel certs`: plain HTTP
//! is refused on the client port, a client that does not trust the cluster's CA or presents no
//! certificate (with `--client-certs required`) gets nothing, and on the peer port a stranger
//! without a certificate, with one from another CA, or with another member's certificate can
//! neither send a frame that Raft sees nor change any member's advertised address. A control
//! shows that the same observations do see a Hello and a frame that are let in.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::TlsOptions;
use keel_tests::http::Http;
use keel_tests::peerwire::{heartbeat, hello};
use keel_tests::secure::{keel_certs, Secure};
use keel_tests::{wait_until, Cluster, Spec};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use serde_json::Value;

const CLOSE_DEADLINE: Duration = Duration::from_secs(30);

// ---- TLS as a stranger ----

fn certs(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .expect("read certificates")
        .collect::<Result<_, _>>()
        .expect("PEM certificates")
}

/// A client configuration trusting `ca`, presenting `identity` (certificate, key) if given.
fn peer_config(ca: &Path, identity: Option<(&Path, &Path)>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca) {
        roots.add(c).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let b = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let config = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                certs(cert),
                PrivateKeyDer::from_pem_file(key).expect("private key"),
            )
            .expect("client certificate"),
    };
    Arc::new(config)
}

/// Connects to `addr` (the peer port of member `member`) and sends `bytes` over TLS. Returns
/// the stream, or None when the node refused the handshake before anything was sent.
fn send_as(
    addr: &str,
    member: u64,
    config: Arc<ClientConfig>,
    bytes: &[u8],
) -> Option<StreamOwned<ClientConnection, TcpStream>> {
    let name = ServerName::try_from(format!("node-{member}.keel")).expect("name");
    let conn = ClientConnection::new(config, name).expect("client connection");
    let tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("read timeout");
    let mut s = StreamOwned::new(conn, tcp);
    match s.write_all(bytes).and_then(|()| s.flush()) {
        Ok(()) => Some(s),
        Err(e) => {
            eprintln!("refused while sending: {e}");
            None
        }
    }
}

/// Whether the node closes `s` (EOF, reset or a TLS alert) within `limit`.
fn closes_within(s: Option<StreamOwned<ClientConnection, TcpStream>>, limit: Duration) -> bool {
    let Some(mut s) = s else {
        return true;
    };
    let start = Instant::now();
    let mut buf = [0u8; 256];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                eprintln!("closed by the node ({e})");
                return true;
            }
        }
    }
    false
}

/// Node `on`'s term and its view of member `member`'s client address.
fn term_and_addr(c: &Cluster, on: u64, member: u64) -> (u64, Option<String>) {
    let s: Value = c.status(on).expect("status");
    let term = s["term"].as_u64().expect("term");
    let addr = s["members"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["id"] == member))
        .and_then(|m| m["http_addr"].as_str())
        .map(str::to_string);
    (term, addr)
}

/// A second CA, unknown to the cluster, with node certificates of the same names.
fn other_ca() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().display().to_string();
    keel_certs(&["--dir", &d, "--nodes", "3", "--client", "tests"]);
    dir
}

/// Three strangers connect to a follower's peer port claiming another member's id, each
/// sending a Hello with a new client address and a heartbeat of a much higher term: without a
/// certificate, with one from another CA, and with a third member's real certificate. Returns
/// what got through (empty when nothing did), after each connection was closed or a deadline.
fn strangers_try(c: &mut Cluster) -> Vec<String> {
    let leader = c.wait_for_leader();
    let target = c.others(&[leader])[0];
    let victim = c.others(&[target])[0]; // the member whose identity strangers claim
    let third = c.others(&[target, victim])[0];
    let addr = c.node(target).peer.clone();
    let s = Secure::get();
    let ca = s.dir().join("ca.pem");
    let (term_before, addr_before) = term_and_addr(c, target, victim);
    let addr_before = addr_before.expect("the victim's address is known");
    let forged_term = term_before + 1000;
    let payload = [
        hello(victim, "127.0.0.1:1", 99),
        heartbeat(victim, target, forged_term),
    ]
    .concat();
    let other = other_ca();
    let foreign = (
        other.path().join(format!("node-{victim}.pem")),
        other.path().join(format!("node-{victim}-key.pem")),
    );
    let real_third = (
        s.dir().join(format!("node-{third}.pem")),
        s.dir().join(format!("node-{third}-key.pem")),
    );
    let own = |name: &str| {
        (
            s.dir().join(format!("{name}.pem")),
            s.dir().join(format!("{name}-key.pem")),
        )
    };
    let (client, non_member, target_own) = (
        own("client-tests"),
        own(&format!("node-{}", keel_tests::secure::NODES)),
        own(&format!("node-{target}")),
    );
    let claim_self = [
        hello(target, "127.0.0.1:1", 99),
        heartbeat(target, target, forged_term),
    ]
    .concat();
    let strangers = [
        ("no certificate", peer_config(&ca, None), &payload),
        (
            "another CA",
            peer_config(&ca, Some((&foreign.0, &foreign.1))),
            &payload,
        ),
        (
            "another member's certificate",
            peer_config(&ca, Some((&real_third.0, &real_third.1))),
            &payload,
        ),
        (
            "a client certificate of the same CA",
            peer_config(&ca, Some((&client.0, &client.1))),
            &payload,
        ),
        (
            "a non-member's certificate",
            peer_config(&ca, Some((&non_member.0, &non_member.1))),
            &payload,
        ),
        // A certificate the CA issued for an id that is not a member, claiming that id, is let
        // in: it is a node this one may not know yet (added while it was cut off, the only one
        // able to bring it up to date). The CA's certificates are the cluster's identities.
        (
            "the target's own certificate claiming the target",
            peer_config(&ca, Some((&target_own.0, &target_own.1))),
            &claim_self,
        ),
    ];
    let mut through = Vec::new();
    for (what, config, payload) in strangers {
        let s = send_as(&addr, target, config, payload);
        // Let in, the connection stays open; refused, it closes. A refusal is decided on the
        // Hello, before the node closes the connection: so once it is closed, what the Hello
        // could have changed has changed, and one sample of the term and the address tells.
        let open = s.is_some() && !closes_within(s, Duration::from_secs(8));
        let (term, address) = term_and_addr(c, target, victim);
        if open || term >= forged_term || address.as_deref() != Some(addr_before.as_str()) {
            through.push(format!(
                "{what}: connection kept open {open}, term {term} (forged {forged_term}), \
                 address {address:?} (was {addr_before})"
            ));
        }
    }
    through
}

#[test]
fn strangers_on_the_peer_port_cannot_send_a_frame_or_change_an_address() {
    let mut c = Cluster::start_secure(3, &[]);
    let through = strangers_try(&mut c);
    assert!(through.is_empty(), "strangers got through: {through:#?}");
    let leader = c.wait_for_leader();
    let r = c
        .put(leader, "still-served", b"1")
        .expect("the cluster answers");
    assert_eq!(r.status, 200, "{}", r.text());

    // Control: the victim's own certificate is let in, and the same observations see it.
    let target = c.others(&[leader])[0];
    let victim = c.others(&[target])[0];
    let addr = c.node(target).peer.clone();
    let s = Secure::get();
    let (term, _) = term_and_addr(&c, target, victim);
    let (vc, vk) = (
        s.dir().join(format!("node-{victim}.pem")),
        s.dir().join(format!("node-{victim}-key.pem")),
    );
    let payload = [
        hello(victim, "127.0.0.1:1", 99),
        heartbeat(victim, target, term + 1000),
    ]
    .concat();
    let ca = s.dir().join("ca.pem");
    let genuine = send_as(&addr, target, peer_config(&ca, Some((&vc, &vk))), &payload);
    assert!(genuine.is_some(), "the genuine certificate was refused");
    wait_until(
        CLOSE_DEADLINE,
        "the genuine Hello and frame take effect",
        || {
            let (t, address) = term_and_addr(&c, target, victim);
            (t >= term + 1000 && address.as_deref() == Some("127.0.0.1:1")).then_some(())
        },
    );
    drop(genuine);
}

/// The check above can fail: on the planted build whose transport believes a Hello whatever
/// the certificate names (`trust-hello`), the impostor with a real member's certificate gets
/// through.
#[test]
fn a_transport_that_believes_hellos_is_caught() {
    let mut c = Cluster::launch_spec(Spec {
        nodes: 3,
        extra: &[],
        proxied: false,
        netns: false,
        bin: keel_tests::suite::planted_bin(),
        env: &[("KEEL_PLANTED_BUG", "trust-hello")],
        power_disks: false,
        client_cuts: false,
        secure: true,
    })
    .expect("cluster");
    let through = strangers_try(&mut c);
    eprintln!("through on the planted build: {through:#?}");
    assert!(
        through
            .iter()
            .any(|t| t.starts_with("another member's certificate")),
        "the planted bug was not caught: {through:?}"
    );
    assert!(
        !through
            .iter()
            .any(|t| t.starts_with("no certificate") || t.starts_with("another CA")),
        "TLS itself let a stranger in: {through:?}"
    );
}

#[test]
fn the_client_port_refuses_plain_http_unknown_cas_and_missing_client_certificates() {
    let mut c = Cluster::start_secure(3, &["--client-certs", "required"]);
    let leader = c.wait_for_leader();
    let addr = c.endpoints()[leader as usize - 1].clone();
    let s = Secure::get();
    let t = Duration::from_secs(10);

    // Plain HTTP: a clear 400, and nothing written.
    let plain = Http::with(t, t, Some(&s.token), None);
    let r = plain
        .send(&addr, "PUT", "/v1/kv/plain", &[], Some(b"v"))
        .expect("an answer in plain text");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("tls_required"), "{}", r.text());

    // A client that trusts another CA: no connection.
    let other = other_ca();
    let foreign = TlsOptions::from_files(&other.path().join("ca.pem"), None).expect("tls");
    let err = Http::with(t, t, Some(&s.token), Some(foreign))
        .send(&addr, "PUT", "/v1/kv/foreign", &[], Some(b"v"))
        .expect_err("the node's certificate is not trusted");
    assert!(err.certainly_not_sent(), "{err:?}");
    eprintln!("unknown CA: {err}");

    // The right CA but no client certificate, where one is required.
    let no_cert = TlsOptions::from_files(&s.dir().join("ca.pem"), None).expect("tls");
    let r = Http::with(t, t, Some(&s.token), Some(no_cert)).send(
        &addr,
        "PUT",
        "/v1/kv/nocert",
        &[],
        Some(b"v"),
    );
    assert!(
        r.is_err(),
        "no TLS session without a client certificate: {r:?}"
    );
    eprintln!("no client certificate: {:?}", r.map(|r| r.status));

    // A client certificate from another CA.
    let (oc, ok) = (
        other.path().join("client-tests.pem"),
        other.path().join("client-tests-key.pem"),
    );
    let foreign_client =
        TlsOptions::from_files(&s.dir().join("ca.pem"), Some((&oc, &ok))).expect("tls");
    let r = Http::with(t, t, Some(&s.token), Some(foreign_client)).send(
        &addr,
        "PUT",
        "/v1/kv/foreigncert",
        &[],
        Some(b"v"),
    );
    assert!(
        r.is_err(),
        "no TLS session with a client certificate from another CA: {r:?}"
    );

    // The real client: its certificate and token.
    let r = c.put(leader, "served", b"1").expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    for key in ["plain", "foreign", "nocert", "foreigncert"] {
        let r = c.get(leader, key).expect("answers");
        assert_eq!(r.status, 404, "{key} was written: {}", r.text());
    }
    // Without a token, over TLS with a certificate: still 401.
    let anonymous = Http::with(t, t, None, Some(s.client_tls()));
    let r = anonymous
        .send(&addr, "GET", "/v1/kv/served", &[], None)
        .expect("answers");
    assert_eq!(r.status, 401);
}

/// A flood of silent sockets from another address on both TLS ports, kept up for the whole
/// test: real clients on new connections are served, and a restarted member reconnects to its
/// peers and catches up while the flood goes on (the peer port keeps pending slots per address,
/// apart from the members' slots).
#[test]
fn silent_sockets_on_tls_ports_do_not_keep_real_clients_and_peers_out() {
    let mut c = Cluster::start_secure(3, &[]);
    let leader = c.wait_for_leader();
    let follower = c.others(&[leader])[0];
    let http = c.endpoints()[follower as usize - 1].clone();
    // A stranger on another address (127.0.0.2) keeps 200 sockets open to the follower's client
    // port and to the leader's peer port (more than its 64 member slots), saying
    // nothing, re-opening those the node closes, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let targets = [http.clone(), c.node(leader).peer.clone()];
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flood = {
        let (stop, ready) = (stop.clone(), ready.clone());
        std::thread::spawn(move || {
            let targets: Vec<&str> = targets.iter().map(String::as_str).collect();
            flood_from(&["127.0.0.2"], &targets, 200, &stop, &ready)
        })
    };
    wait_until(CLOSE_DEADLINE, "the flood under way", || {
        ready
            .load(std::sync::atomic::Ordering::Acquire)
            .then_some(())
    });
    // Real clients are served meanwhile, each request on a new connection, through the
    // follower (which forwards to the leader over its peer connection).
    let s = Secure::get();
    for i in 0..30 {
        let fresh = Http::with(
            Duration::from_secs(5),
            Duration::from_secs(15),
            Some(&s.token),
            Some(s.client_tls()),
        );
        let r = fresh
            .send(&http, "PUT", &format!("/v1/kv/real{i}"), &[], Some(b"v"))
            .expect("answers");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // The peers still connect while the flood goes on: the follower, restarted, dials the
    // others and is dialed by them over TLS, and catches up.
    c.kill(follower);
    c.put_until_ok(leader, "while-away", b"1", Duration::from_secs(30));
    c.restart(follower);
    // A linearizable read on the follower needs its read index from the leader, asked over the
    // follower's new connection to the leader's flooded peer port.
    wait_until(
        Duration::from_secs(20),
        "a linearizable read on the restarted follower",
        || {
            let r = c.get(follower, "while-away").ok()?;
            (r.status == 200).then_some(())
        },
    );
    stop.store(true, std::sync::atomic::Ordering::Release);
    let (opened, closed) = flood.join().expect("the flood thread");
    eprintln!("the flood opened {opened} sockets; the node closed {closed} of them");
    assert!(closed > 0, "the node closed none of the silent sockets");
}

/// Keeps `per_target` silent sockets from `sources` open to each of `targets`, re-opening those
/// the node closes every 20 ms, until `stop` (`ready` once under way); returns how many were
/// opened and how many the node closed.
fn flood_from(
    sources: &[&str],
    targets: &[&str],
    per_target: usize,
    stop: &std::sync::atomic::AtomicBool,
    ready: &std::sync::atomic::AtomicBool,
) -> (usize, usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut open: Vec<Vec<tokio::net::TcpStream>> =
            targets.iter().map(|_| Vec::new()).collect();
        let (mut opened, mut closed) = (0usize, 0usize);
        let start = Instant::now();
        while !stop.load(std::sync::atomic::Ordering::Acquire)
            && start.elapsed() < Duration::from_secs(120)
        {
            for (t, target) in targets.iter().enumerate() {
                // Drop what the node closed.
                let before = open[t].len();
                open[t].retain(|s| {
                    let mut buf = [0u8; 64];
                    match s.try_read(&mut buf) {
                        Ok(0) => false,
                        Ok(_) => true,
                        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
                    }
                });
                closed += before - open[t].len();
                while open[t].len() < per_target {
                    let source = sources[opened % sources.len()];
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                        break;
                    };
                    let Ok(bind) = format!("{source}:0").parse() else {
                        break;
                    };
                    if socket.bind(bind).is_err() {
                        break;
                    }
                    let Ok(addr) = target.parse() else { break };
                    match tokio::time::timeout(Duration::from_secs(1), socket.connect(addr)).await {
                        Ok(Ok(s)) => {
                            open[t].push(s);
                            opened += 1;
                        }
                        _ => break,
                    }
                }
            }
            // After two rounds every slot the node gives this address is held.
            if start.elapsed() > Duration::from_millis(300) {
                ready.store(true, std::sync::atomic::Ordering::Release);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        (opened, closed)
    })
}

/// A node added later, with a certificate issued then by a second run of `keel certs` on the
/// same CA, joins the secure cluster: `--join` over https with its own certificate and the
/// token, then mutual TLS with every member; it catches up and serves reads.
#[test]
fn a_node_certified_later_joins_a_secure_cluster() {
    let mut c = Cluster::start_secure(3, &[]);
    let leader = c.wait_for_leader();
    let r = c.put(leader, "before-join", b"1").expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    // Re-issue node 4's certificate now, from the CA's stored key (no other test of this
    // process uses id 4).
    let dir = Secure::get().dir().display().to_string();
    keel_certs(&["--dir", &dir, "--node", "4"]);
    let id = c.add_node(leader);
    assert_eq!(id, 4);
    wait_until(CLOSE_DEADLINE, "the new node catches up over TLS", || {
        let r = c.get(id, "before-join?consistency=stale").ok()?;
        (r.status == 200).then_some(())
    });
    let log = c.log_tail(id, 200);
    assert!(
        !log.contains("TLS handshake"),
        "TLS errors on the new node: {log}"
    );
}

/// The certificate node at `addr` (a client port) presents to a new connection.
fn presented(addr: &str) -> Option<CertificateDer<'static>> {
    let ca = Secure::get().dir().join("ca.pem");
    let host = addr.rsplit_once(':').map(|(h, _)| h).unwrap_or(addr);
    let name = ServerName::try_from(host.to_string()).ok()?;
    let mut conn = ClientConnection::new(peer_config(&ca, None), name).ok()?;
    let mut tcp = TcpStream::connect(addr).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).ok()?;
    }
    conn.peer_certificates()?
        .first()
        .map(|c| c.clone().into_owned())
}

/// Rotation of a node's certificate without a restart: a new certificate written over the
/// node's files (same CA) is presented to new connections within seconds, and the node's
/// peers accept it when they connect anew.
#[test]
fn a_node_certificate_replaced_on_disk_is_used_without_a_restart() {
    let mut c = Cluster::start_secure(3, &[]);
    let leader = c.wait_for_leader();
    let node = c.others(&[leader])[0];
    let addr = c.endpoints()[node as usize - 1].clone();
    let s = Secure::get();
    let file = s.dir().join(format!("node-{node}.pem"));
    let old = presented(&addr).expect("a TLS session");
    assert_eq!(
        old,
        certs(&file)[0],
        "the node presents its certificate file"
    );
    let dir = s.dir().display().to_string();
    keel_certs(&["--dir", &dir, "--node", &node.to_string()]);
    let new = certs(&file)[0].clone();
    assert_ne!(new, old);
    wait_until(
        CLOSE_DEADLINE,
        "the node presents its new certificate",
        || (presented(&addr)? == new).then_some(()),
    );
    // The third member, restarted, dials the rotated node anew (and is dialed by it).
    let third = c.others(&[leader, node])[0];
    c.kill(third);
    c.put_until_ok(leader, "rotated", b"1", Duration::from_secs(30));
    c.restart(third);
    wait_until(CLOSE_DEADLINE, "the restarted member catches up", || {
        let r = c.get(third, "rotated?consistency=stale").ok()?;
        (r.status == 200).then_some(())
    });
    let r = c.put(node, "through-rotated", b"1").expect("answers");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        c.log_tail(node, 400).contains("TLS files changed"),
        "the node logged the change"
    );
}
