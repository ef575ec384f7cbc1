//! A userspace TCP proxy for one directed peer link, so tests can delay or cut traffic between
//! nodes without netem (this machine's kernel has none).
//!
//! keel dials one outbound connection per peer and uses it for everything it sends to that peer,
//! so a proxy placed on the address node A dials for node B controls exactly the traffic A→B.
//! The harness gives every node its own `--cluster` map pointing at its proxies.
//!
//! Modes: [`LinkMode::Pass`] forwards; [`LinkMode::Delay`] holds each chunk for a fixed time
//! (latency, not bandwidth); [`LinkMode::Lossy`] stalls random chunks; [`LinkMode::Cut`] closes
//! live connections and refuses new ones (a partition as the sender sees it: connection
//! refused/reset); [`LinkMode::Blackhole`] swallows bytes on open connections.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a link does with traffic.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LinkMode {
    /// Forward at once.
    Pass,
    /// Forward each chunk after this long.
    Delay(Duration),
    /// Close connections and refuse new ones.
    Cut,
    /// Keep connections open but drop every byte (what an iptables DROP looks like to the
    /// application: messages vanish, nothing fails fast).
    Blackhole,
    /// Stall a chunk with this probability for this long (head-of-line blocking, as TCP
    /// retransmissions after loss cause).
    Lossy {
        /// Chance that a chunk stalls.
        probability: f64,
        /// How long it stalls.
        stall: Duration,
    },
    /// Both: every chunk delayed, and some stalled on top.
    DelayLossy {
        /// The delay of every chunk.
        delay: Duration,
        /// Chance that a chunk also stalls.
        probability: f64,
        /// How long it stalls.
        stall: Duration,
    },
}

struct State {
    mode: Mutex<LinkMode>,
    /// Bumped on every cut: connections of an older epoch close themselves.
    epoch: AtomicU64,
    /// Per source address, bumped by [`LinkProxy::sever_from`]: that source's connections of an
    /// older generation close without delivering what they still hold.
    severed: Mutex<HashMap<IpAddr, u64>>,
    stop: AtomicBool,
    /// Reads of bytes swallowed by [`LinkMode::Blackhole`].
    swallowed: AtomicU64,
}

impl State {
    fn mode(&self) -> LinkMode {
        *self.mode.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn generation(&self, source: IpAddr) -> u64 {
        self.severed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&source)
            .copied()
            .unwrap_or(0)
    }
}

/// Who a connection came from, and the generation it was accepted in.
#[derive(Clone, Copy)]
struct Origin {
    source: IpAddr,
    generation: u64,
}

/// One proxied link: listens on an ephemeral loopback port, forwards to `target`.
pub struct LinkProxy {
    addr: String,
    state: Arc<State>,
}

/// How often blocked reads wake to notice a cut or a stop.
const WAKE: Duration = Duration::from_millis(50);

impl LinkProxy {
    /// Starts a proxy to `target` (host:port), listening on loopback.
    pub fn start(target: String) -> LinkProxy {
        Self::start_on("127.0.0.1", target)
    }

    /// Starts a proxy to `target`, listening on an ephemeral port of `ip`.
    pub fn start_on(ip: &str, target: String) -> LinkProxy {
        let listener = TcpListener::bind(format!("{ip}:0")).expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr").to_string();
        let state = Arc::new(State {
            mode: Mutex::new(LinkMode::Pass),
            epoch: AtomicU64::new(0),
            severed: Mutex::new(HashMap::new()),
            stop: AtomicBool::new(false),
            swallowed: AtomicU64::new(0),
        });
        let st = state.clone();
        std::thread::spawn(move || accept_loop(listener, target, st));
        LinkProxy { addr, state }
    }

    /// The address to dial instead of the target.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// How many reads of bytes a blackhole has swallowed so far: once it has grown after a
    /// message was sent, that message is gone too (bytes pass in order).
    pub fn swallowed(&self) -> u64 {
        self.state.swallowed.load(Ordering::Acquire)
    }

    /// Changes the link's mode; a cut also closes live connections.
    pub fn set(&self, mode: LinkMode) {
        *self.state.mode.lock().unwrap_or_else(|p| p.into_inner()) = mode;
        if mode == LinkMode::Cut {
            self.state.epoch.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The current mode.
    pub fn mode(&self) -> LinkMode {
        self.state.mode()
    }

    /// Closes every connection that `source` opened through this proxy, discarding what the
    /// proxy still holds for it (delayed bytes): what a partition loses in flight. (A cut made by
    /// iptables in the sender's namespace stops new packets, not the bytes a delaying proxy has
    /// already taken in.)
    pub fn sever_from(&self, source: IpAddr) {
        *self
            .state
            .severed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(source)
            .or_default() += 1;
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.state.epoch.fetch_add(1, Ordering::AcqRel);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(
            &self.addr.parse().expect("proxy addr parses"),
            Duration::from_millis(200),
        );
    }
}

fn accept_loop(listener: TcpListener, target: String, state: Arc<State>) {
    for conn in listener.incoming() {
        if state.stop.load(Ordering::Acquire) {
            return;
        }
        let Ok(inbound) = conn else { continue };
        if state.mode() == LinkMode::Cut {
            drop(inbound);
            continue;
        }
        let Ok(target_addr) = target.parse() else {
            continue;
        };
        let Ok(outbound) = TcpStream::connect_timeout(&target_addr, Duration::from_secs(1)) else {
            continue;
        };
        let epoch = state.epoch.load(Ordering::Acquire);
        let Ok(peer) = inbound.peer_addr() else {
            continue;
        };
        let origin = Origin {
            source: peer.ip(),
            generation: state.generation(peer.ip()),
        };
        let _ = inbound.set_nodelay(true);
        let _ = outbound.set_nodelay(true);
        for (from, to) in [
            (inbound.try_clone(), outbound.try_clone()),
            (outbound.try_clone(), inbound.try_clone()),
        ] {
            if let (Ok(from), Ok(to)) = (from, to) {
                let st = state.clone();
                std::thread::spawn(move || pump(from, to, st, epoch, origin));
            }
        }
    }
}

/// Copies one direction, through a delay queue so that ordering holds when the delay changes.
fn pump(mut from: TcpStream, to: TcpStream, state: Arc<State>, epoch: u64, origin: Origin) {
    let _ = from.set_read_timeout(Some(WAKE));
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    let writer_state = state.clone();
    let writer = std::thread::spawn(move || {
        let mut to = to;
        while let Ok((at, bytes)) = rx.recv() {
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            if writer_state.epoch.load(Ordering::Acquire) != epoch
                || writer_state.generation(origin.source) != origin.generation
                || to.write_all(&bytes).is_err()
            {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
    });
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if state.epoch.load(Ordering::Acquire) != epoch
            || state.generation(origin.source) != origin.generation
        {
            break;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let delay = match state.mode() {
                    LinkMode::Delay(d) => d,
                    LinkMode::Blackhole => {
                        state.swallowed.fetch_add(1, Ordering::AcqRel);
                        continue;
                    }
                    LinkMode::Lossy { probability, stall } => {
                        if rand::random::<f64>() < probability {
                            stall
                        } else {
                            Duration::ZERO
                        }
                    }
                    LinkMode::DelayLossy {
                        delay,
                        probability,
                        stall,
                    } => {
                        if rand::random::<f64>() < probability {
                            delay + stall
                        } else {
                            delay
                        }
                    }
                    LinkMode::Pass | LinkMode::Cut => Duration::ZERO,
                };
                if tx
                    .send((Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    drop(tx);
    let _ = writer.join();
    let _ = from.shutdown(Shutdown::Both);
}
