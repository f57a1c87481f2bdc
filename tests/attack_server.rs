//! Attacks on a server's connections (issue 13, "servers under exhaustion"), by threads of
//! this test against a real `peer_server`: connections that never send, or trickle their
//! `Hello`, from two addresses; valid sessions that then sit idle; a flood of have requests;
//! a source that closes right after connect; and two IPv6 addresses in one /64 (through an
//! interface of a network namespace the test creates, skipped when not root). In each, a
//! legit `get` must complete in about its normal time. Several IPv4 source addresses come
//! from binding sockets to 127.0.0.N before connecting: all of 127/8 is this host.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use swarmcache::wire::{self, MAX_FRAME, Message, PROTOCOL_VERSION};

use crate::harness::{ServerProc, TrackerProc, get, random_file};
use crate::netns::Netns;

/// Longest any attack runs: every attacker loop also stops on its flag.
const ATTACK_LIMIT: Duration = Duration::from_secs(120);

/// A socket from `from` (port chosen by the system) connected to `to`, with a 2 s connect
/// timeout and 1 s read and write timeouts.
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    use rustix::net::{AddressFamily, SocketType, ipproto};
    let family = if from.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(family, SocketType::STREAM, Some(ipproto::TCP))?;
    rustix::net::bind(&fd, &SocketAddr::new(from, 0))?;
    rustix::net::connect(&fd, &to)?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    stream.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(stream)
}

/// What an attacker does with each connection it holds.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// Never sends a byte.
    Silent,
    /// Sends one byte of a `Hello` every 3 s.
    Trickle,
    /// Sends a valid `Hello`, reads the `Welcome`, then asks for nothing.
    IdleSession,
    /// Sends a valid `Hello`, then have requests as fast as the answers come.
    HaveFlood,
}

/// Threads that each hold connections from one address, opening a new one whenever one is
/// closed, until dropped.
struct Attack {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Connections opened, over all threads.
    opened: Arc<AtomicU64>,
    /// Frames the server sent that were `Error`s (busy, timeouts).
    errors: Arc<AtomicU64>,
    /// The texts of the first of those.
    texts: Arc<Mutex<Vec<String>>>,
}

impl Attack {
    /// `per_addr` connections of `kind` from each of `from` to `to`, for asset `asset`.
    fn start(kind: Kind, from: &[IpAddr], per_addr: usize, to: SocketAddr, asset: &str) -> Attack {
        let stop = Arc::new(AtomicBool::new(false));
        let (opened, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let texts = Arc::new(Mutex::new(Vec::new()));
        let hello = hello_frame(asset);
        let mut threads = Vec::new();
        for &ip in from {
            // One thread per connection for the floods (each waits on its own answers), one
            // per address for the rest.
            let (threads_here, conns_each) = match kind {
                Kind::HaveFlood => (per_addr, 1),
                _ => (1, per_addr),
            };
            for _ in 0..threads_here {
                let (stop, opened) = (stop.clone(), opened.clone());
                let errors = Errors(errors.clone(), texts.clone());
                let hello = hello.clone();
                threads.push(std::thread::spawn(move || {
                    hold(kind, ip, to, conns_each, &hello, &stop, &opened, &errors)
                }));
            }
        }
        Attack {
            stop,
            threads,
            opened,
            errors,
            texts,
        }
    }
}

impl Drop for Attack {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn hello_frame(asset: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        asset: asset.parse().unwrap(),
        ticket: vec![],
    };
    wire::write_message(&mut frame, &hello).unwrap();
    frame
}

/// Where attacker threads count the `Error` frames they get, and keep the first texts.
struct Errors(Arc<AtomicU64>, Arc<Mutex<Vec<String>>>);

impl Errors {
    fn saw(&self, message: &str) {
        self.0.fetch_add(1, Ordering::Relaxed);
        let mut texts = self.1.lock().unwrap();
        if texts.len() < 1000 {
            texts.push(message.to_string());
        }
    }
}

/// One attacker thread: keeps `count` connections of `kind` open from `ip`.
#[allow(clippy::too_many_arguments)]
fn hold(
    kind: Kind,
    ip: IpAddr,
    to: SocketAddr,
    count: usize,
    hello: &[u8],
    stop: &AtomicBool,
    opened: &AtomicU64,
    errors: &Errors,
) {
    let started = Instant::now();
    // Each connection and how many bytes of the Hello it has sent.
    let mut conns: Vec<(TcpStream, usize, Instant)> = Vec::new();
    while !stop.load(Ordering::SeqCst) && started.elapsed() < ATTACK_LIMIT {
        while conns.len() < count && !stop.load(Ordering::SeqCst) {
            let Ok(mut stream) = connect_from(ip, to) else {
                std::thread::sleep(Duration::from_millis(20));
                break;
            };
            opened.fetch_add(1, Ordering::Relaxed);
            let mut sent = 0;
            if matches!(kind, Kind::IdleSession | Kind::HaveFlood) {
                if stream.write_all(hello).is_err() {
                    continue;
                }
                sent = hello.len();
                match wire::read_message(&mut stream, MAX_FRAME) {
                    Ok(Message::Welcome { .. }) => {}
                    Ok(Message::Error { message, .. }) => {
                        errors.saw(&message);
                        continue;
                    }
                    _ => continue,
                }
            }
            conns.push((stream, sent, Instant::now()));
        }
        // Drops the connections the server closed, and moves the others on.
        conns.retain_mut(|(stream, sent, last)| match kind {
            Kind::HaveFlood => {
                let mut burst = Vec::new();
                for _ in 0..16 {
                    wire::write_message(&mut burst, &Message::HaveRequest).unwrap();
                }
                if stream.write_all(&burst).is_err() {
                    return false;
                }
                (0..16)
                    .all(|_| matches!(wire::read_message(stream, MAX_FRAME), Ok(Message::Have(_))))
            }
            _ => {
                if matches!(kind, Kind::Trickle)
                    && last.elapsed() >= Duration::from_secs(3)
                    && *sent < hello.len()
                {
                    if stream.write_all(&hello[*sent..*sent + 1]).is_err() {
                        return false;
                    }
                    *sent += 1;
                    *last = Instant::now();
                }
                open_still(stream, errors)
            }
        });
        if !matches!(kind, Kind::HaveFlood) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether the server left `stream` open (nothing to read, no end of stream); counts an
/// `Error` frame it sent before closing.
fn open_still(stream: &TcpStream, errors: &Errors) -> bool {
    let mut byte = [0u8; 1];
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let open = match stream.peek(&mut byte) {
        Ok(0) => false,
        Ok(_) => {
            let _ = stream.set_nonblocking(false);
            if let Ok(Message::Error { message, .. }) = wire::read_message(&mut &*stream, MAX_FRAME)
            {
                errors.saw(&message);
            }
            false
        }
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    let _ = stream.set_nonblocking(false);
    open
}

/// A tracker and an origin `peer_server` of a file of `len` bytes; the asset id.
fn origin_of(
    d: &Path,
    len: usize,
    listen: &str,
    tracker_listen: &str,
) -> (TrackerProc, ServerProc, String) {
    random_file(&d.join("f.bin"), len, 13);
    let tracker = TrackerProc::start_on(d, tracker_listen, &[]);
    let origin = ServerProc::start_on(
        d,
        listen,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin"],
    );
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    (tracker, origin, id)
}

/// Times one `get` of `id` into a fresh store `name`, asserting it succeeded with the
/// right bytes.
fn timed_get(d: &Path, tracker: &str, id: &str, name: &str) -> Duration {
    let started = Instant::now();
    let out = format!("{name}.bin");
    get(d, tracker, id, &out, name, &["--quiet"]).ok();
    let took = started.elapsed();
    assert_eq!(
        std::fs::read(d.join(&out)).unwrap(),
        std::fs::read(d.join("f.bin")).unwrap()
    );
    took
}

/// The generous bound on a `get` under attack: three times its normal time plus 3 s (a
/// loaded 2-core box, and the attack's own threads on it). Before the fixes these gets
/// failed after 14 s or more.
fn bound(normal: Duration) -> Duration {
    normal * 3 + Duration::from_secs(3)
}

fn v4(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Two addresses each holding 32 connections of `kind` against the default 64 slots.
fn two_addresses_holding_every_slot(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, origin, id) = origin_of(d, 4 << 20, "127.0.0.1:0", "127.0.0.1:0");
    let normal = timed_get(d, &tracker.url, &id, "before");
    let to: SocketAddr = origin.addr.parse().unwrap();
    let attack = Attack::start(kind, &[v4(2), v4(3)], 32, to, &id);
    // Let the attackers take what they can (they open 64 connections at once).
    std::thread::sleep(Duration::from_millis(500));
    let took = timed_get(d, &tracker.url, &id, "during");
    let (opened, errors) = (
        attack.opened.load(Ordering::Relaxed),
        attack.errors.load(Ordering::Relaxed),
    );
    drop(attack);
    eprintln!(
        "{kind:?}: get {normal:?} alone, {took:?} under attack ({opened} attacker connections, {errors} error frames)"
    );
    assert!(
        took <= bound(normal),
        "{kind:?}: the get took {took:?} under attack, {normal:?} alone"
    );
}

#[test]
fn silent_connections_from_two_addresses_do_not_keep_a_get_out() {
    two_addresses_holding_every_slot(Kind::Silent);
}

#[test]
fn hellos_trickled_from_two_addresses_do_not_keep_a_get_out() {
    two_addresses_holding_every_slot(Kind::Trickle);
}

#[test]
fn idle_sessions_holding_every_slot_yield_to_a_get() {
    two_addresses_holding_every_slot(Kind::IdleSession);
}

#[test]
fn a_flood_of_have_requests_from_one_address_does_not_slow_a_get() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, origin, id) = origin_of(d, 32 << 20, "127.0.0.1:0", "127.0.0.1:0");
    let normal = timed_get(d, &tracker.url, &id, "before");
    let to: SocketAddr = origin.addr.parse().unwrap();
    let attack = Attack::start(Kind::HaveFlood, &[v4(2)], 32, to, &id);
    std::thread::sleep(Duration::from_millis(500));
    let took = timed_get(d, &tracker.url, &id, "during");
    drop(attack);
    eprintln!("have flood: get of 32 MiB {normal:?} alone, {took:?} under the flood");
    // A timing bound the issue names (2.6x slower before; 4x in this test): at most 2x
    // and half a second.
    assert!(
        took <= normal * 2 + Duration::from_millis(500),
        "the get took {took:?} under the flood, {normal:?} alone"
    );
}

/// A TCP proxy in front of `to` that closes its first `drop_first` connections right after
/// accepting them; the address it listens on.
fn closing_proxy(to: SocketAddr, drop_first: usize, stop: Arc<AtomicBool>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let (started, mut seen) = (Instant::now(), 0);
        while !stop.load(Ordering::SeqCst) && started.elapsed() < ATTACK_LIMIT {
            let Ok((client, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            seen += 1;
            if seen <= drop_first {
                drop(client);
                continue;
            }
            let _ = client.set_nonblocking(false);
            let Ok(server) = TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (client.try_clone().unwrap(), server.try_clone().unwrap()),
                (server, client),
            ] {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || into.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    addr
}

#[test]
fn an_origin_closing_right_after_connect_is_busy_not_failed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 1 << 20, 17);
    let tracker = TrackerProc::start(d, &[]);
    // The origin is reached through a proxy that closes its first 8 connections at once,
    // as a server with every slot taken did: twice the 4 failures that gave it up.
    let stop = Arc::new(AtomicBool::new(false));
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let real: SocketAddr = upstream.local_addr().unwrap();
    drop(upstream);
    let proxy = closing_proxy(real, 8, stop.clone());
    let advertise = proxy.to_string();
    let origin = ServerProc::start_on(
        d,
        &real.to_string(),
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--advertise-addr", &advertise],
    );
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    let run = get(d, &tracker.url, &id, "copy.bin", "client", &["--quiet"]);
    stop.store(true, Ordering::SeqCst);
    run.ok();
    assert_eq!(
        std::fs::read(d.join("copy.bin")).unwrap(),
        std::fs::read(d.join("f.bin")).unwrap()
    );
}

/// Runs `ip ARGS` in the test's namespace, panicking with what it printed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn two_ipv6_addresses_in_one_64_count_as_one_address() {
    let Some(ns) = Netns::create("two_ipv6_addresses_in_one_64_count_as_one_address") else {
        return;
    };
    // Addresses of our own on the namespace's veth end in this namespace (gone with it):
    // two in one /64, and one in another. `nodad`: usable at once.
    let n = ns.host_addr.octets()[2];
    let (a1, a2, b): (IpAddr, IpAddr, IpAddr) = (
        format!("fd77:{n}:0:1::a").parse().unwrap(),
        format!("fd77:{n}:0:1::b").parse().unwrap(),
        format!("fd77:{n}:0:2::c").parse().unwrap(),
    );
    for addr in [a1, a2, b] {
        ip(&[
            "addr",
            "add",
            &format!("{addr}/64"),
            "dev",
            &ns.host_if,
            "nodad",
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // The server listens on every address; the get reaches it at [::1], another /64.
    let (tracker, origin, id) = origin_of(d, 4 << 20, "[::]:0", "[::1]:0");
    let normal = timed_get(d, &tracker.url, &id, "before");
    let port = origin.addr.parse::<SocketAddr>().unwrap().port();
    // The attackers reach it at an address of theirs; 32 silent connections from each of
    // the three: the first /64 has 64 and must be counted as one address.
    let to = SocketAddr::new(a1, port);
    let attack = Attack::start(Kind::Silent, &[a1, a2, b], 32, to, &id);
    std::thread::sleep(Duration::from_millis(500));
    let took = timed_get(d, &tracker.url, &id, "during");
    let (opened, errors) = (
        attack.opened.load(Ordering::Relaxed),
        attack.errors.load(Ordering::Relaxed),
    );
    let texts = attack.texts.lock().unwrap().clone();
    drop(attack);
    eprintln!(
        "ipv6 /64: get {normal:?} alone, {took:?} under attack ({opened} attacker connections, {errors} error frames)"
    );
    let grouped = format!("server busy: fd77:{n}:0:1:: has ");
    assert!(
        texts.iter().any(|t| t.starts_with(&grouped)),
        "the /64 of two addresses was refused as one address; the refusals: {:?}",
        &texts[..texts.len().min(5)]
    );
    assert!(
        took <= bound(normal),
        "the get took {took:?} under attack, {normal:?} alone"
    );
}
