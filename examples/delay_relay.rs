//! A TCP relay that holds every byte a fixed time in each direction: the round-trip delay
//! of a real network for the multi-host harness (`tests/netns.rs`, `bench/netns_crowd.sh`),
//! on a kernel without `netem`. Run in a host in front of a listener, it accepts on
//! `--listen`, connects to `--target` for each connection, and passes bytes both ways
//! `--delay-ms` after they arrived, so every path through it has RTT ≈ 2 × delay.
//!
//!   delay_relay --listen 10.78.1.2:17001 --target 127.0.0.1:7001 --delay-ms 20 --window 1MiB
//!
//! Prints "listening on ADDR" on stdout once it accepts. Blocking sockets; per connection
//! one reader and one writer thread per direction, so that a byte is stamped when it
//! arrives even while the writer of its direction waits for the far end (one thread per
//! direction would stamp what arrives during a blocked write late, and then leave the link
//! idle for up to the delay when it catches up).
//!
//! Bounded so that it stays honest under bandwidth: bytes on their way to the accepted
//! peers (over the host's capped egress) share one budget of `--window` bytes for the
//! whole relay. A path of one-way delay D at rate R holds R × D bytes; a relay holding more
//! would queue bytes ahead of the cap (window ÷ R seconds of extra delay for everything on
//! the uplink), and one holding less would cap the rate at window ÷ D. The benchmark gives
//! 1.5 × cap × D: full rate, and at most half the delay again of queue (plus one read of
//! 64 KiB per connection waiting for budget). Bytes from the peers to the target
//! (delivered locally, never waiting long) are bounded per connection.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::process::ExitCode;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

/// Bytes read at once: a whole GSO segment, so a fast path is not cut into many stamps.
const READ_SIZE: usize = 64 << 10;
/// Bytes held per connection on their way to the target: the requests and handshakes of
/// our protocol are small; 4 MiB lets a 1 Gbit/s upload through at 30 ms one-way delay.
const TO_TARGET_WINDOW: usize = 4 << 20;
/// Each relay thread's stack: it holds no buffer (those are on the heap), and a relay of
/// a 64-host crowd runs thousands of threads.
const THREAD_STACK: usize = 128 << 10;
/// Connections waiting for the relay's accept (the kernel caps it at somaxconn, 4096).
const ACCEPT_QUEUE: i32 = 1024;
/// A local target that does not accept within this long is down: give up the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A far end that reads nothing for this long has stalled: end its connection, so that
/// its bytes stop holding the budget the other connections share (the peer servers'
/// own write timeout is as long).
const STALLED_WRITE: Duration = Duration::from_secs(30);

/// Holds every byte --delay-ms in each direction between the peers that connect to
/// --listen and --target. Prints "listening on ADDR" once it accepts.
#[derive(Parser)]
#[command(verbatim_doc_comment)]
struct Args {
    /// Address to accept connections on (port 0 picks one).
    #[arg(long)]
    listen: SocketAddr,
    /// Address each accepted connection is relayed to.
    #[arg(long)]
    target: SocketAddr,
    /// One-way delay in milliseconds, in each direction (RTT ≈ twice this).
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Most bytes held at once on their way to the accepted peers, over all connections,
    /// e.g. 1MiB (see the module docs: about 1.5 × rate × delay).
    #[arg(long, default_value = "8MiB", value_parser = swarmcache::cli::size_arg)]
    window: u64,
    /// Connect to a loopback target from 127.B.C.D for a peer at A.B.C.D, so that the
    /// target's per-address limits still see one address per peer host.
    #[arg(long)]
    source_loopback: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("delay_relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    let listener = listen(args.listen)?;
    let delay = Duration::from_millis(args.delay_ms);
    let budget = Arc::new(Budget::new(
        usize::try_from(args.window).unwrap_or(usize::MAX),
    ));
    println!("listening on {}", listener.local_addr()?);
    for accepted in listener.incoming() {
        let peer = match accepted {
            Ok(peer) => peer,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: the next one may work.
                eprintln!("delay_relay: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // The connect to the target happens on the connection's own thread: a target slow
        // to accept must not hold up the accepts of every other connection.
        let (target, loopback, budget) = (args.target, args.source_loopback, Arc::clone(&budget));
        let started = spawn(move || {
            let from = peer.peer_addr().ok();
            let source = from.and_then(|f| source_for(f.ip(), target.ip(), loopback));
            let relayed = connect(target, source).and_then(|t| relay(peer, t, delay, &budget));
            if let Err(e) = relayed {
                eprintln!("delay_relay: relaying {from:?} to {target}: {e:#}");
            }
        });
        if let Err(e) = started {
            eprintln!("delay_relay: {e:#}");
        }
    }
    Ok(())
}

/// Binds `addr` with a deep accept queue: a crowd's clients connect to a peer all in the
/// same second (63 peers × 4 workers at N = 64), beyond std's backlog of 128, and a
/// dropped SYN costs the dialler a second before it tries again.
fn listen(addr: SocketAddr) -> Result<TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = match addr {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)
        .context("making a socket")?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true).context("SO_REUSEADDR")?;
    rustix::net::bind(&fd, &addr).with_context(|| format!("listening on {addr}"))?;
    rustix::net::listen(&fd, ACCEPT_QUEUE).with_context(|| format!("listening on {addr}"))?;
    Ok(TcpListener::from(fd))
}

/// The address to connect to `target` from, for a peer at `peer`: with `loopback` and a
/// loopback target, 127.B.C.D for A.B.C.D (all of 127/8 is this host's), else any.
fn source_for(peer: IpAddr, target: IpAddr, loopback: bool) -> Option<Ipv4Addr> {
    match (peer.to_canonical(), target) {
        (IpAddr::V4(p), IpAddr::V4(t)) if loopback && t.is_loopback() => {
            let [_, b, c, d] = p.octets();
            // 127.0.0.0 is the network's own address, not a host's.
            Some(if [b, c, d] == [0, 0, 0] {
                Ipv4Addr::LOCALHOST
            } else {
                Ipv4Addr::new(127, b, c, d)
            })
        }
        _ => None,
    }
}

/// Connects to `target`, from `source` when given (bind before connect).
fn connect(target: SocketAddr, source: Option<Ipv4Addr>) -> Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)
            .with_context(|| format!("connecting to {target}"))?,
        Some(ip) => {
            use rustix::net::{AddressFamily, SocketFlags, SocketType};
            let fd = rustix::net::socket_with(
                AddressFamily::INET,
                SocketType::STREAM,
                SocketFlags::CLOEXEC,
                None,
            )
            .context("making a socket")?;
            rustix::net::bind(&fd, &SocketAddrV4::new(ip, 0))
                .with_context(|| format!("binding to {ip}"))?;
            // Loopback: a refusal or an accept comes at once, no timeout needed.
            rustix::net::connect(&fd, &target)
                .with_context(|| format!("connecting to {target} from {ip}"))?;
            TcpStream::from(fd)
        }
    };
    Ok(stream)
}

/// Starts the four threads of one connection: `peer` (accepted) and `target` (dialled).
fn relay(peer: TcpStream, target: TcpStream, delay: Duration, budget: &Arc<Budget>) -> Result<()> {
    // Small frames (requests, handshakes) go on at once: the delay is ours, not Nagle's.
    for end in [&peer, &target] {
        end.set_nodelay(true)?;
        end.set_write_timeout(Some(STALLED_WRITE))?;
    }
    let ends = Arc::new([peer.try_clone()?, target.try_clone()?]);
    let to_peer = Arc::new(Pipe::new(Arc::clone(budget)));
    let to_target = Arc::new(Pipe::new(Arc::new(Budget::new(TO_TARGET_WINDOW))));
    let jobs: [(TcpStream, TcpStream, &Arc<Pipe>); 2] = [
        (target, peer.try_clone()?, &to_peer),
        (peer, ends[1].try_clone()?, &to_target),
    ];
    for (from, to, pipe) in jobs {
        let (r_pipe, w_pipe) = (Arc::clone(pipe), Arc::clone(pipe));
        let (r_ends, w_ends) = (Arc::clone(&ends), Arc::clone(&ends));
        spawn(move || read_side(from, &r_pipe, delay, &r_ends))?;
        spawn(move || write_side(to, &w_pipe, &w_ends))?;
    }
    Ok(())
}

fn spawn(f: impl FnOnce() + Send + 'static) -> Result<()> {
    thread::Builder::new()
        .name("relay".into())
        .stack_size(THREAD_STACK)
        .spawn(f)
        .context("starting a relay thread")?;
    Ok(())
}

/// Ends the whole connection at once (a reset or error on either side): every blocked
/// read and write of its four threads returns.
fn break_connection(ends: &[TcpStream; 2]) {
    for end in ends {
        let _ = end.shutdown(Shutdown::Both);
    }
}

/// Reads `from` into the pipe, each read stamped with the time it is due on the far side.
/// The budget is taken after a read, not before: a reader waiting for bytes must not hold
/// budget that busy connections need (a relay of a 64-host crowd has 60-odd connections,
/// most of them idle at any moment). So the bound is soft by at most one read per
/// connection, held in that reader's buffer while it waits, reading nothing more.
fn read_side(mut from: TcpStream, pipe: &Pipe, delay: Duration, ends: &[TcpStream; 2]) {
    let mut buf = vec![0; READ_SIZE];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => {
                pipe.close(false);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => {
                pipe.close(true);
                break_connection(ends);
                return;
            }
        };
        if !pipe.budget.take(n, || pipe.is_broken()) {
            return;
        }
        pipe.push(Instant::now() + delay, buf[..n].to_vec());
    }
}

/// Writes what the pipe holds to `to` once due; passes end of stream on as a half close.
fn write_side(mut to: TcpStream, pipe: &Pipe, ends: &[TcpStream; 2]) {
    loop {
        match pipe.next() {
            Next::Chunk(due, bytes) => {
                let wait = due.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    thread::sleep(wait);
                }
                let written = to.write_all(&bytes);
                pipe.budget.give(bytes.len());
                if written.is_err() {
                    pipe.close(true);
                    break_connection(ends);
                    return;
                }
            }
            Next::End => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Next::Broken => return,
        }
    }
}

/// Bytes that may be held at once, shared by the pipes given the same budget.
struct Budget {
    limit: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

impl Budget {
    fn new(limit: usize) -> Budget {
        Budget {
            limit: limit.max(READ_SIZE),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// Takes `n` bytes of the budget, waiting while it is spent; false (nothing taken)
    /// once `give_up` says so (checked at least every 100 ms).
    fn take(&self, n: usize, give_up: impl Fn() -> bool) -> bool {
        let mut used = lock(&self.used);
        while *used + n > self.limit {
            if give_up() {
                return false;
            }
            used = self
                .freed
                .wait_timeout(used, Duration::from_millis(100))
                .map_or_else(|e| e.into_inner().0, |(g, _)| g);
        }
        *used += n;
        true
    }

    fn give(&self, n: usize) {
        if n > 0 {
            *lock(&self.used) -= n;
            self.freed.notify_all();
        }
    }
}

/// One direction of a connection: the chunks read and not yet written, oldest first.
struct Pipe {
    budget: Arc<Budget>,
    held: Mutex<Held>,
    changed: Condvar,
}

#[derive(Default)]
struct Held {
    chunks: VecDeque<(Instant, Vec<u8>)>,
    /// The reader saw the end of the stream (`Some(false)`) or an error (`Some(true)`).
    closed: Option<bool>,
}

enum Next {
    Chunk(Instant, Vec<u8>),
    /// The stream ended and everything before the end was written.
    End,
    Broken,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pipe {
    fn new(budget: Arc<Budget>) -> Pipe {
        Pipe {
            budget,
            held: Mutex::new(Held::default()),
            changed: Condvar::new(),
        }
    }

    fn push(&self, due: Instant, bytes: Vec<u8>) {
        let mut held = lock(&self.held);
        if held.closed == Some(true) {
            // No writer will take it: its budget goes back now, or the relay would leak it.
            self.budget.give(bytes.len());
            return;
        }
        held.chunks.push_back((due, bytes));
        drop(held);
        self.changed.notify_all();
    }

    fn close(&self, broken: bool) {
        let mut held = lock(&self.held);
        if held.closed != Some(true) {
            held.closed = Some(broken);
        }
        if broken {
            // Nothing more is written: the budget those chunks held goes back.
            let bytes: usize = held.chunks.drain(..).map(|(_, b)| b.len()).sum();
            self.budget.give(bytes);
        }
        drop(held);
        self.changed.notify_all();
    }

    fn is_broken(&self) -> bool {
        lock(&self.held).closed == Some(true)
    }

    /// The oldest chunk, waiting for one; or how the stream ended once nothing is left.
    fn next(&self) -> Next {
        let mut held = lock(&self.held);
        loop {
            if held.closed == Some(true) {
                return Next::Broken;
            }
            if let Some((due, bytes)) = held.chunks.pop_front() {
                return Next::Chunk(due, bytes);
            }
            if held.closed == Some(false) {
                return Next::End;
            }
            held = self.changed.wait(held).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_host_gets_its_own_loopback_source_address() {
        let peer = |s: &str| s.parse::<IpAddr>().unwrap();
        let local: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert_eq!(
            source_for(peer("10.78.3.17"), local, true),
            Some(Ipv4Addr::new(127, 78, 3, 17))
        );
        assert_eq!(
            source_for(peer("::ffff:10.78.3.17"), local, true),
            Some(Ipv4Addr::new(127, 78, 3, 17)),
            "an IPv4-mapped peer counts as its IPv4 form"
        );
        assert_eq!(
            source_for(peer("10.0.0.0"), local, true),
            Some(Ipv4Addr::LOCALHOST)
        );
        assert_eq!(source_for(peer("10.78.3.17"), local, false), None);
        assert_eq!(
            source_for(peer("10.78.3.17"), peer("10.78.3.2"), true),
            None
        );
        assert_eq!(source_for(peer("fd00::1"), local, true), None);
    }

    #[test]
    fn the_budget_waits_while_spent_and_gives_up_when_told() {
        let budget = Budget::new(2 * READ_SIZE);
        assert!(budget.take(READ_SIZE, || false));
        assert!(budget.take(READ_SIZE, || false));
        assert!(!budget.take(1, || true), "spent: only giving up returns");
        budget.give(1);
        assert!(budget.take(1, || true));
    }

    #[test]
    fn a_pipe_hands_out_chunks_in_order_then_the_end() {
        let pipe = Pipe::new(Arc::new(Budget::new(READ_SIZE)));
        let now = Instant::now();
        pipe.push(now, b"ab".to_vec());
        pipe.push(now, b"c".to_vec());
        pipe.close(false);
        let mut got = Vec::new();
        while let Next::Chunk(_, bytes) = pipe.next() {
            got.extend(bytes);
        }
        assert_eq!(got, b"abc");
        assert!(matches!(pipe.next(), Next::End));
        pipe.close(true);
        assert!(
            matches!(pipe.next(), Next::Broken),
            "an error overrides the end"
        );
    }

    #[test]
    fn a_broken_pipe_gives_its_budget_back() {
        let budget = Arc::new(Budget::new(READ_SIZE));
        let pipe = Pipe::new(Arc::clone(&budget));
        assert!(budget.take(10, || false));
        pipe.push(Instant::now(), vec![0; 10]);
        assert!(budget.take(20, || false));
        pipe.close(true);
        assert_eq!(
            *lock(&budget.used),
            20,
            "the held chunk's 10 bytes are back"
        );
        pipe.push(Instant::now(), vec![0; 20]);
        assert_eq!(
            *lock(&budget.used),
            0,
            "a chunk read after the break is not held"
        );
    }
}
