//! The one listener skeleton under the HTTP server and the peer server: binding, an accept
//! loop that sees its stop flag by itself, per-address connection caps (an IPv6 /64 counts
//! as one address), refusals answered by a small fixed pool instead of a thread each, and
//! the linger-close that keeps a last answer from being destroyed by a TCP reset; and
//! [`Listener::accept_greeted`], an accept loop with a lobby where connections wait for
//! their whole first frame without a thread each, bounded in number, per address and in
//! time, and where refusals are written and drained by the same thread.
//!
//! Shutdown never depends on reaching our own port: the listener is non-blocking and the
//! loop waits for it with `poll(2)` for at most [`ACCEPT_POLL`], so a host that drops
//! inbound TCP (a firewall, a dead interface) cannot keep `serve` in `accept` for ever.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded};
use rustix::event::{PollFd, PollFlags, Timespec};

use crate::ratelimit::client_key;
use crate::sync::LockExt;

/// Longest the accept loop waits for a connection before it looks at its stop flag again:
/// a stop is seen within 100 ms, and an idle server wakes ten times a second, which costs
/// nothing measurable.
pub const ACCEPT_POLL: Duration = Duration::from_millis(100);
/// After a failed accept (most often: out of file descriptors), wait this long before the
/// next one instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// How long a closing connection waits for its last answer to leave and for the peer to
/// close first: closing with unread input makes the kernel send a reset, which can destroy
/// the answer before it is read. Long enough on any LAN, short enough not to hold a thread.
pub const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// Most bytes read and dropped while lingering: a peer that pipelined requests (a few
/// hundred 9-byte chunk requests, or HTTP heads of a few hundred bytes) fits many times.
const MAX_DRAIN: usize = 256 << 10;

/// A timed-out blocking read or write: `WouldBlock` on Unix, `TimedOut` on Windows.
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Stops a serving server from another thread: a flag its accept loop and its workers
/// look at. Clones share the flag.
#[derive(Clone, Debug, Default)]
pub struct ShutdownHandle(Arc<AtomicBool>);

impl ShutdownHandle {
    /// A handle not yet shut down.
    pub fn new() -> ShutdownHandle {
        ShutdownHandle::default()
    }

    /// Asks the server to stop: its accept loop returns within [`ACCEPT_POLL`], and
    /// `serve` once the work under way is done.
    pub fn shutdown(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`ShutdownHandle::shutdown`] was called.
    pub fn is_shutdown(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// A bound, non-blocking listening socket.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    addr: SocketAddr,
}

impl Listener {
    /// Binds `addr` (port 0 picks one; [`Listener::local_addr`] tells which).
    pub fn bind(addr: SocketAddr) -> io::Result<Listener> {
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Listener { listener, addr })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Accepts connections until `stop` is set, handing each (blocking, like any socket
    /// from `std`) to `accepted` with its peer's address. A failed accept goes to `failed`
    /// and never ends the loop.
    pub fn accept_until(
        &self,
        stop: &ShutdownHandle,
        mut accepted: impl FnMut(TcpStream, SocketAddr),
        mut failed: impl FnMut(&io::Error),
    ) {
        while !stop.is_shutdown() {
            match self.listener.accept() {
                Ok((stream, remote)) => {
                    // Linux does not pass O_NONBLOCK on to accepted sockets; other systems do.
                    if stream.set_nonblocking(false).is_ok() {
                        accepted(stream, remote);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed(&e);
                    std::thread::sleep(ACCEPT_BACKOFF);
                }
            }
        }
    }

    /// Accepts a connection waiting to be accepted, if any, without blocking (for a caller
    /// that waits for the listener in its own `epoll` set, see [`AsFd`]). The socket comes
    /// back non-blocking.
    pub fn try_accept(&self) -> io::Result<Option<(TcpStream, SocketAddr)>> {
        loop {
            return match self.listener.accept() {
                Ok((stream, remote)) => {
                    stream.set_nonblocking(true)?;
                    Ok(Some((stream, remote)))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Waits up to [`ACCEPT_POLL`] for a connection to accept.
    fn wait(&self) {
        let timeout = Timespec {
            tv_sec: 0,
            tv_nsec: ACCEPT_POLL.as_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.listener, PollFlags::IN)];
        // An error (EINTR, say) only means looking at the flag sooner.
        let _ = rustix::event::poll(&mut fds, Some(&timeout));
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// Why [`Conns::enter`] turned a connection away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Its address (see [`client_key`]) holds `open` connections already, the cap.
    Address {
        /// The address counted: an IPv4 address or an IPv6 /64.
        key: IpAddr,
        /// Connections it holds.
        open: usize,
    },
    /// Every connection slot is taken.
    Full,
}

/// The connections a server has open: how many from each address (an IPv6 /64 counts as
/// one, see [`client_key`]), and the sockets to close when it stops.
#[derive(Clone, Debug, Default)]
pub struct Conns(Arc<Mutex<Table>>);

#[derive(Debug, Default)]
struct Table {
    per_key: HashMap<IpAddr, usize>,
    total: usize,
    next_id: u64,
    /// Clones of the sockets to shut down in [`Conns::close_all`].
    streams: HashMap<u64, TcpStream>,
}

/// One connection counted in [`Conns`]; uncounted when dropped.
#[derive(Debug)]
pub struct Counted {
    conns: Conns,
    key: IpAddr,
    id: u64,
}

impl Conns {
    /// Counts a connection from `ip`, unless its address holds `per_addr` already or
    /// `total` are open (0: no cap). With `stream`, [`Conns::close_all`] shuts it down.
    pub fn enter(
        &self,
        ip: IpAddr,
        per_addr: usize,
        total: usize,
        stream: Option<&TcpStream>,
    ) -> Result<Counted, Refused> {
        let key = client_key(ip);
        let mut table = self.0.locked();
        let open = table.per_key.get(&key).copied().unwrap_or(0);
        if per_addr > 0 && open >= per_addr {
            return Err(Refused::Address { key, open });
        }
        if total > 0 && table.total >= total {
            return Err(Refused::Full);
        }
        *table.per_key.entry(key).or_insert(0) += 1;
        table.total += 1;
        table.next_id += 1;
        let id = table.next_id;
        if let Some(clone) = stream.and_then(|s| s.try_clone().ok()) {
            table.streams.insert(id, clone);
        }
        Ok(Counted {
            conns: self.clone(),
            key,
            id,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.0.locked().total
    }

    /// Shuts down every registered socket, so that workers blocked reading them return.
    pub fn close_all(&self) {
        for stream in self.0.locked().streams.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut table = self.conns.0.locked();
        table.streams.remove(&self.id);
        table.total -= 1;
        if let Some(count) = table.per_key.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                table.per_key.remove(&self.key);
            }
        }
    }
}

/// A refusal for a refuser thread to carry out: write, close.
type RefusalJob = Box<dyn FnOnce() + Send>;

/// A small fixed pool of threads that answer refused connections and close them, so the
/// accept loop never waits on a client and a flood costs no thread per connection.
pub struct Refusals {
    tx: Option<Sender<RefusalJob>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Refusals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refusals")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Refusals {
    /// `threads` refusers with `queue` refused connections waiting for them; past that, a
    /// flood is closed unanswered.
    pub fn start(threads: usize, queue: usize) -> Refusals {
        let (tx, rx) = bounded::<RefusalJob>(queue.max(1));
        let threads = (0..threads.max(1))
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    for job in rx {
                        job();
                    }
                })
            })
            .collect();
        Refusals {
            tx: Some(tx),
            threads,
        }
    }

    /// Sends `last_words` on `stream` and closes it, from a refuser thread.
    pub fn refuse(&self, stream: TcpStream, last_words: Vec<u8>) {
        self.run(move || refuse_now(&stream, &last_words));
    }

    /// Runs `refusal` (which owns the connection it answers and closes: a TLS server's
    /// completes a handshake first) on a refuser thread; dropped, closing the connection
    /// unanswered, when the queue is full.
    pub fn run(&self, refusal: impl FnOnce() + Send + 'static) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Box::new(refusal));
        }
    }
}

impl Drop for Refusals {
    fn drop(&mut self) {
        drop(self.tx.take());
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Writes a last answer (a refusal, an error frame) and closes without a reset, waiting at
/// most [`CLOSE_LINGER`] for the peer to take it.
pub fn refuse_now(stream: &TcpStream, last_words: &[u8]) {
    let _ = stream.set_write_timeout(Some(CLOSE_LINGER));
    let _ = (&*stream).write_all(last_words);
    linger_close(stream);
}

/// Closes after our last answer: no more writes, then a short wait for the peer to close
/// first, reading and dropping what it still sends (see [`CLOSE_LINGER`]).
pub fn linger_close(stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + CLOSE_LINGER;
    let mut sink = [0u8; 4096];
    let mut drained = 0;
    while drained < MAX_DRAIN {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            break;
        }
        match (&*stream).read(&mut sink) {
            Ok(0) => break,
            Ok(n) => drained += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// How the lobby of [`Listener::accept_greeted`] holds connections that have not yet sent
/// their first frame.
#[derive(Clone, Copy, Debug)]
pub struct LobbyLimits {
    /// Connections waiting for their first frame at once; when a newcomer finds it full,
    /// the oldest waiting one is turned away to make room.
    pub capacity: usize,
    /// Of those, how many one address (see [`client_key`]) may hold; past it a newcomer
    /// from that address is turned away.
    pub per_addr: usize,
    /// How long the whole first frame may take to arrive, from the accept.
    pub deadline: Duration,
    /// Sockets closing after a last answer (written, then drained for [`CLOSE_LINGER`])
    /// at once; past it a refused socket gets its answer written and is closed at once.
    pub closing: usize,
}

/// Why the lobby turned a connection away; [`Greeter::refusal`] words the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LobbyRefusal {
    /// Its address holds `open` waiting connections already, the cap.
    Address {
        /// The address counted: an IPv4 address or an IPv6 /64.
        key: IpAddr,
        /// Waiting connections it holds.
        open: usize,
    },
    /// The lobby was full and this was the connection waiting longest.
    Evicted,
    /// Its first frame did not arrive whole within the deadline.
    Late(Duration),
}

/// What a server tells [`Listener::accept_greeted`] about its protocol.
pub trait Greeter {
    /// A connection was accepted into the lobby or turned away from it (for counters).
    fn accepted(&mut self) {}
    /// The length of the first frame (prefix included) once `bytes`, its start, says;
    /// `Ok(None)` while more bytes are needed to tell; `Err` with the last words for a
    /// frame that cannot be (too long, say).
    fn frame_len(&self, bytes: &[u8]) -> Result<Option<usize>, Vec<u8>>;
    /// The last words for a connection the lobby turned away.
    fn refusal(&self, why: LobbyRefusal) -> Vec<u8>;
    /// Takes a connection whose whole first frame arrived (`frame`, read from it; the
    /// socket is blocking again), or answers it with last words to send before closing.
    fn greeted(
        &mut self,
        stream: TcpStream,
        remote: SocketAddr,
        frame: Vec<u8>,
    ) -> Result<(), (TcpStream, Vec<u8>)>;
}

/// Whether a newcomer from `key` enters a lobby whose waiting connections are `waiting`
/// (their keys, oldest first), and which waiting one leaves for it. Pure, for tests.
fn lobby_admits(
    waiting: &[IpAddr],
    key: IpAddr,
    limits: &LobbyLimits,
) -> Result<Option<usize>, LobbyRefusal> {
    let open = waiting.iter().filter(|k| **k == key).count();
    if open >= limits.per_addr.max(1) {
        return Err(LobbyRefusal::Address { key, open });
    }
    if waiting.len() >= limits.capacity.max(1) {
        return Ok(Some(0));
    }
    Ok(None)
}

/// A connection in the lobby: the first frame's bytes so far.
struct Waiting {
    stream: TcpStream,
    remote: SocketAddr,
    key: IpAddr,
    until: Instant,
    frame: Vec<u8>,
}

/// A socket closing after its last words: what is left to write, then a drain.
struct Closing {
    stream: TcpStream,
    words: Vec<u8>,
    written: usize,
    until: Instant,
    drained: usize,
}

impl Closing {
    /// Moves the close on without waiting; false once it is over.
    fn step(&mut self, now: Instant) -> bool {
        if now >= self.until {
            return false;
        }
        while self.written < self.words.len() {
            match (&self.stream).write(&self.words[self.written..]) {
                Ok(0) => return false,
                Ok(n) => {
                    self.written += n;
                    if self.written == self.words.len() {
                        let _ = self.stream.shutdown(Shutdown::Write);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        let mut sink = [0u8; 4096];
        while self.drained < MAX_DRAIN {
            match (&self.stream).read(&mut sink) {
                Ok(0) => return false,
                Ok(n) => self.drained += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }
}

/// Most connections taken from the listener in one round of the lobby loop, so that a
/// flood of connects cannot keep the waiting ones from being read.
const ACCEPTS_PER_ROUND: usize = 64;

impl Listener {
    /// Accepts connections until `stop` is set and holds each in a lobby, without a thread,
    /// until its whole first frame has arrived: then `greeter` takes it. The lobby is
    /// bounded in size, per address and in time (`limits`); every connection it turns
    /// away, and every one `greeter` refuses, gets its last words written (without
    /// blocking) and a short drain before the close, so a refusal is never a silent close.
    /// Everything runs on the calling thread with `poll(2)`.
    pub fn accept_greeted(
        &self,
        stop: &ShutdownHandle,
        limits: LobbyLimits,
        greeter: &mut impl Greeter,
        mut failed: impl FnMut(&io::Error),
    ) {
        let mut lobby: Vec<Waiting> = Vec::new();
        let mut closing: Vec<Closing> = Vec::new();
        let close = |closing: &mut Vec<Closing>, stream: TcpStream, words: Vec<u8>| {
            let _ = stream.set_nonblocking(true);
            let mut entry = Closing {
                stream,
                words,
                written: 0,
                until: Instant::now() + CLOSE_LINGER,
                drained: 0,
            };
            // Past the cap the words are still written (a fresh socket takes them at
            // once); only the drain is skipped.
            if entry.step(Instant::now()) && closing.len() < limits.closing.max(1) {
                closing.push(entry);
            }
        };
        while !stop.is_shutdown() {
            // Wait for the listener, a waiting connection's bytes, or a closing one.
            let now = Instant::now();
            let next = lobby
                .iter()
                .map(|w| w.until)
                .chain(closing.iter().map(|c| c.until))
                .min()
                .map_or(ACCEPT_POLL, |t| t.saturating_duration_since(now))
                .min(ACCEPT_POLL);
            let ready: Vec<bool> = {
                let mut fds = Vec::with_capacity(1 + lobby.len() + closing.len());
                fds.push(PollFd::new(&self.listener, PollFlags::IN));
                fds.extend(lobby.iter().map(|w| PollFd::new(&w.stream, PollFlags::IN)));
                fds.extend(closing.iter().map(|c| {
                    let flags = if c.written < c.words.len() {
                        PollFlags::OUT
                    } else {
                        PollFlags::IN
                    };
                    PollFd::new(&c.stream, flags)
                }));
                let timeout = Timespec {
                    tv_sec: next.as_secs() as _,
                    tv_nsec: next.subsec_nanos() as _,
                };
                // An error (EINTR, say) only means looking sooner.
                let _ = rustix::event::poll(&mut fds, Some(&timeout));
                fds.iter().map(|f| !f.revents().is_empty()).collect()
            };
            let (lobby_ready, closing_ready) = ready[1..].split_at(lobby.len());
            let now = Instant::now();
            // Closing sockets first: each step frees its entry when done.
            let mut i = 0;
            closing.retain_mut(|c| {
                let go = closing_ready.get(i).copied().unwrap_or(false);
                i += 1;
                !go && now < c.until || go && c.step(now)
            });
            // Waiting connections: read what came, hand on whole frames, drop the late.
            let mut kept = Vec::with_capacity(lobby.len());
            for (w, ready) in lobby.drain(..).zip(lobby_ready.iter().copied()) {
                match read_first_frame(w, ready, now, &limits, greeter) {
                    FirstFrame::Waiting(w) => kept.push(w),
                    FirstFrame::Whole(w) => {
                        let _ = w.stream.set_nonblocking(false);
                        if let Err((stream, words)) = greeter.greeted(w.stream, w.remote, w.frame) {
                            close(&mut closing, stream, words);
                        }
                    }
                    FirstFrame::Refused(stream, words) => close(&mut closing, stream, words),
                    FirstFrame::Gone => {}
                }
            }
            lobby = kept;
            // New connections, a bounded number a round.
            for _ in 0..ACCEPTS_PER_ROUND {
                match self.listener.accept() {
                    Ok((stream, remote)) => {
                        greeter.accepted();
                        // Linux does not pass O_NONBLOCK on to accepted sockets; set it.
                        if stream.set_nonblocking(true).is_err() {
                            continue;
                        }
                        let key = client_key(remote.ip());
                        let keys: Vec<IpAddr> = lobby.iter().map(|w| w.key).collect();
                        match lobby_admits(&keys, key, &limits) {
                            Ok(evict) => {
                                if let Some(at) = evict {
                                    let old = lobby.remove(at);
                                    let words = greeter.refusal(LobbyRefusal::Evicted);
                                    close(&mut closing, old.stream, words);
                                }
                                lobby.push(Waiting {
                                    stream,
                                    remote,
                                    key,
                                    until: Instant::now() + limits.deadline,
                                    frame: Vec::new(),
                                });
                            }
                            Err(why) => close(&mut closing, stream, greeter.refusal(why)),
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed(&e);
                        std::thread::sleep(ACCEPT_BACKOFF);
                        break;
                    }
                }
            }
        }
    }
}

/// Where a waiting connection stands after a look at its socket.
enum FirstFrame {
    Waiting(Waiting),
    Whole(Waiting),
    Refused(TcpStream, Vec<u8>),
    /// Closed by the client, or failed: dropped without a word (nobody is listening).
    Gone,
}

/// Reads what has arrived of a waiting connection's first frame, never past its end (the
/// rest stays in the socket for whoever takes the connection).
fn read_first_frame(
    mut w: Waiting,
    ready: bool,
    now: Instant,
    limits: &LobbyLimits,
    greeter: &impl Greeter,
) -> FirstFrame {
    // Sockets poll saw nothing on are only looked at for their deadline.
    if ready {
        loop {
            let want = match greeter.frame_len(&w.frame) {
                Ok(Some(total)) if w.frame.len() >= total => return FirstFrame::Whole(w),
                Ok(Some(total)) => total - w.frame.len(),
                // One byte at a time until the length is known: never past the frame.
                Ok(None) => 1,
                Err(words) => return FirstFrame::Refused(w.stream, words),
            };
            let start = w.frame.len();
            w.frame.resize(start + want, 0);
            match (&w.stream).read(&mut w.frame[start..]) {
                Ok(0) => return FirstFrame::Gone,
                Ok(n) => w.frame.truncate(start + n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    w.frame.truncate(start);
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => w.frame.truncate(start),
                Err(_) => return FirstFrame::Gone,
            }
        }
    }
    if now >= w.until {
        let words = greeter.refusal(LobbyRefusal::Late(limits.deadline));
        return FirstFrame::Refused(w.stream, words);
    }
    FirstFrame::Waiting(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_with_no_connection_ever_made_returns_within_a_second() {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let stop = ShutdownHandle::new();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                listener.accept_until(&stop, |_, _| {}, |_| {});
                let _ = done_tx.send(());
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        let asked = Instant::now();
        stop.shutdown();
        assert_eq!(done.recv_timeout(Duration::from_secs(1)), Ok(()));
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
        thread.join().unwrap();
    }

    #[test]
    fn accepted_sockets_block_and_carry_their_peer() {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr();
        let stop = ShutdownHandle::new();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                listener.accept_until(
                    &stop,
                    |mut stream, _| {
                        let mut byte = [0u8; 1];
                        // Blocking: the client's byte comes 50 ms after the accept.
                        stream.read_exact(&mut byte).unwrap();
                        stream.write_all(&byte).unwrap();
                        stop.shutdown();
                    },
                    |e| panic!("{e}"),
                )
            })
        };
        let mut client = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        thread.join().unwrap();
    }

    #[test]
    fn the_lobby_caps_each_address_and_makes_room_by_the_oldest() {
        let limits = LobbyLimits {
            capacity: 3,
            per_addr: 2,
            deadline: Duration::from_secs(2),
            closing: 8,
        };
        let a: IpAddr = "2001:db8::".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert_eq!(lobby_admits(&[a], a, &limits), Ok(None));
        assert_eq!(
            lobby_admits(&[a, b, a], a, &limits),
            Err(LobbyRefusal::Address { key: a, open: 2 }),
            "an address at its cap is refused, even when the lobby is full"
        );
        assert_eq!(
            lobby_admits(&[a, b, a], b, &limits),
            Ok(Some(0)),
            "full: the oldest goes"
        );
    }

    #[test]
    fn a_whole_first_frame_is_handed_on_and_a_silent_one_refused_after_the_deadline() {
        struct Lines(crossbeam_channel::Sender<Vec<u8>>);
        impl Greeter for Lines {
            fn frame_len(&self, bytes: &[u8]) -> Result<Option<usize>, Vec<u8>> {
                Ok(bytes.iter().position(|b| *b == b'\n').map(|at| at + 1))
            }
            fn refusal(&self, why: LobbyRefusal) -> Vec<u8> {
                format!("{why:?}\n").into_bytes()
            }
            fn greeted(
                &mut self,
                stream: TcpStream,
                _: SocketAddr,
                frame: Vec<u8>,
            ) -> Result<(), (TcpStream, Vec<u8>)> {
                let _ = self.0.send(frame);
                Err((stream, b"bye\n".to_vec()))
            }
        }
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr();
        let stop = ShutdownHandle::new();
        let (tx, frames) = crossbeam_channel::unbounded();
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let limits = LobbyLimits {
                    capacity: 4,
                    per_addr: 4,
                    deadline: Duration::from_millis(300),
                    closing: 4,
                };
                listener.accept_greeted(&stop, limits, &mut Lines(tx), |e| panic!("{e}"));
            })
        };
        let read_all = |mut s: TcpStream| {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let silent = TcpStream::connect(addr).unwrap();
        let mut talker = TcpStream::connect(addr).unwrap();
        // Trickled, and followed by bytes that belong to whoever takes the connection.
        talker.write_all(b"hel").unwrap();
        std::thread::sleep(Duration::from_millis(50));
        talker.write_all(b"lo\nrest").unwrap();
        let frame = frames.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(frame, b"hello\n", "never read past the first frame");
        assert_eq!(read_all(talker), "bye\n");
        assert_eq!(read_all(silent), "Late(300ms)\n", "a word before the close");
        stop.shutdown();
        thread.join().unwrap();
    }

    #[test]
    fn caps_count_an_ipv6_64_as_one_address_and_free_on_drop() {
        let conns = Conns::default();
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::2".parse().unwrap();
        let first = conns.enter(a, 2, 0, None).unwrap();
        let _second = conns.enter(b, 2, 0, None).unwrap();
        assert_eq!(
            conns.enter(a, 2, 0, None).unwrap_err(),
            Refused::Address {
                key: "2001:db8::".parse().unwrap(),
                open: 2
            }
        );
        let other: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(
            conns.enter(other, 2, 2, None).unwrap_err(),
            Refused::Full,
            "every slot taken"
        );
        drop(first);
        assert_eq!(conns.open(), 1);
        conns.enter(a, 2, 2, None).expect("a slot freed");
    }
}
