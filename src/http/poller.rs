//! The poller: one thread that holds, in one `epoll` set, every connection without a whole
//! request (new ones, idle kept-alive ones, ones whose head or small body is still
//! arriving), reads them without blocking, and hands a connection to the workers only once
//! a request is whole. It accepts too (the listener is in the same set), enforces the
//! request and idle deadlines of the connections it holds, and has refusals (429, 503, 408)
//! written by the refusal pool, so it never waits on a client.
//!
//! Each connection is in the set with `EPOLLONESHOT`: one wake-up per arrival, after which
//! it stays quiet until its holder arms it again, so a connection a worker holds never wakes
//! the poller. A worker done with a connection arms it and sends it back on a channel; the
//! poller takes what was sent back each time it wakes, before it looks at the events. An
//! event can still beat its connection (the worker armed it and has not sent it yet): the
//! slot is then marked, and the poller looks at the channel again within
//! [`PENDING_POLL`].

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use rustix::buffer::spare_capacity;
use rustix::event::epoll::{self, Event, EventData, EventFlags};

use super::conn::{Conn, Failure, Limits, Socket, timespec};
use super::head::Parsed;
use super::{HttpConfig, Log, Response, response, tls};
use crate::net::{Conns, Listener, Refusals, Refused, ShutdownHandle};

/// Longest the poller sleeps before it looks at its stop flag and its deadlines: a stop
/// is seen within 100 ms, and a deadline is enforced within 100 ms of passing.
const POLL: Duration = Duration::from_millis(100);
/// How soon the poller looks again for a connection whose event came before the worker
/// that armed it had sent it back: that worker is between two calls, so a millisecond is
/// plenty, and it happens rarely enough that the extra wake-ups cost nothing.
const PENDING_POLL: Duration = Duration::from_millis(1);
/// Times the poller yields to the workers for a connection whose event came before it
/// was sent back, before it waits [`PENDING_POLL`]: a send takes microseconds once the
/// worker runs.
const PENDING_YIELDS: usize = 4;
/// After a failed accept (most often: out of file descriptors), the listener is left alone
/// this long instead of failing again at once.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Most connections accepted per wake-up, so that a crowd connecting cannot starve the
/// connections already held.
const ACCEPT_BATCH: usize = 64;
/// Events taken per wake-up.
const EVENTS: usize = 256;
/// Most bytes the poller keeps in the buffers of the connections it holds before it stops
/// gathering small bodies (they are then left to the workers, like large ones): memory for
/// requests under way grows only with bytes that arrived, and no faster than this, however
/// many addresses send slowly. 32 MiB is two thousand announces of 16 KiB in flight at
/// once. Heads are gathered whatever this says: at most 16 KiB each.
const GATHER_BUDGET: usize = 32 << 20;
/// The listener's token; connections' tokens are their slot and its generation.
const LISTENER: u64 = u64::MAX;

/// A connection with a whole request, for a worker.
pub(super) struct Job {
    pub(super) conn: Conn,
    pub(super) parsed: Parsed,
}

/// What a worker sends back to the poller when it is done with a connection.
// Unboxed: boxing would cost an allocation per hand-back, to save bytes of a channel slot.
#[allow(clippy::large_enum_variant)]
pub(super) enum Back {
    /// The connection, armed again, to wait for its next request.
    Conn(Conn),
    /// The connection (this token) is closed: its slot is free.
    Closed(u64),
}

/// The events a held connection waits for: its next bytes, and room to write while TLS
/// bytes (a handshake flight the socket did not take whole) wait to go out.
fn interest(conn: &Conn) -> EventFlags {
    let wanted = EventFlags::IN | EventFlags::RDHUP | EventFlags::ONESHOT;
    if conn.socket.wants_write() {
        wanted | EventFlags::OUT
    } else {
        wanted
    }
}

/// Arms `conn` in the poller's set: its next bytes (or its close) wake the poller once.
pub(super) fn arm(epoll: &OwnedFd, conn: &mut Conn) -> io::Result<()> {
    let data = EventData::new_u64(conn.token);
    let interest = interest(conn);
    if conn.registered {
        epoll::modify(epoll, &conn.socket.stream, data, interest)?;
    } else {
        epoll::add(epoll, &conn.socket.stream, data, interest)?;
        conn.registered = true;
    }
    Ok(())
}

/// Where a connection is.
// Unboxed: a slot mostly holds a connection, and boxing would cost an allocation per hold.
#[allow(clippy::large_enum_variant)]
enum Slot {
    Free,
    /// Held here, armed, waiting for bytes.
    Held(Conn),
    /// With a worker (or being looked at); `pending` when its event came first.
    Away {
        pending: bool,
    },
}

/// A slot and its generation, which makes a token of a closed connection stale.
struct Entry {
    generation: u32,
    slot: Slot,
}

fn token(index: usize, generation: u32) -> u64 {
    (u64::from(generation) << 32) | index as u64
}

fn index(token: u64) -> usize {
    (token & u64::from(u32::MAX)) as usize
}

/// The poller's state; [`Poller::run`] is its thread.
pub(super) struct Poller<'s> {
    epoll: &'s OwnedFd,
    listener: &'s Listener,
    config: &'s HttpConfig,
    stop: &'s ShutdownHandle,
    log: &'s Log,
    refusals: &'s Refusals,
    ready: Sender<Job>,
    back: Receiver<Back>,
    limits: Limits,
    /// The cap on open connections (see [`super::connection_cap`]).
    max_conns: usize,
    conns: Conns,
    slots: Vec<Entry>,
    free: Vec<usize>,
    /// Slots marked pending.
    pending: usize,
    /// Buffer bytes (capacity) of the connections held.
    held_bytes: usize,
    next_sweep: Instant,
    /// Until when the listener is left alone after a failed accept.
    accept_paused: Option<Instant>,
}

impl<'s> Poller<'s> {
    /// A poller for `listener`; nothing runs until [`Poller::run`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        epoll: &'s OwnedFd,
        listener: &'s Listener,
        config: &'s HttpConfig,
        stop: &'s ShutdownHandle,
        log: &'s Log,
        refusals: &'s Refusals,
        ready: Sender<Job>,
        back: Receiver<Back>,
        max_conns: usize,
    ) -> Poller<'s> {
        Poller {
            epoll,
            listener,
            config,
            stop,
            log,
            refusals,
            ready,
            back,
            limits: Limits {
                request_timeout: config.request_timeout,
                idle_timeout: config.idle_timeout,
                write_timeout: config.write_timeout,
            },
            max_conns,
            conns: Conns::default(),
            slots: Vec::new(),
            free: Vec::new(),
            pending: 0,
            held_bytes: 0,
            next_sweep: Instant::now() + POLL,
            accept_paused: None,
        }
    }

    /// Accepts and holds connections until the server stops; then closes those it holds
    /// (dropping the channel to the workers, which finish what they have and return).
    pub(super) fn run(mut self) -> io::Result<()> {
        epoll::add(
            self.epoll,
            self.listener,
            EventData::new_u64(LISTENER),
            EventFlags::IN,
        )?;
        let mut events: Vec<Event> = Vec::with_capacity(EVENTS);
        while !self.stop.is_shutdown() {
            let now = Instant::now();
            let mut until = self.next_sweep.min(now + POLL);
            if let Some(paused) = self.accept_paused {
                until = until.min(paused);
            }
            if self.pending > 0 {
                until = until.min(now + PENDING_POLL);
            }
            events.clear();
            let timeout = timespec(until.saturating_duration_since(now));
            if let Err(e) = epoll::wait(self.epoll, spare_capacity(&mut events), Some(&timeout))
                && e != rustix::io::Errno::INTR
            {
                self.log
                    .line(format_args!("waiting for connections failed: {e}"));
                std::thread::sleep(ACCEPT_BACKOFF);
            }
            self.take_back();
            for event in events.iter().copied() {
                let Event { data, .. } = event;
                match data.u64() {
                    LISTENER => self.accept(),
                    token => self.readable(token),
                }
            }
            // A worker arms a connection a moment before it sends it back, so its next
            // request can come first. On one core the worker was likely preempted between
            // the two: let it run and finish, rather than sleep a whole PENDING_POLL.
            for _ in 0..PENDING_YIELDS {
                if self.pending == 0 {
                    break;
                }
                std::thread::yield_now();
                self.take_back();
            }
            let now = Instant::now();
            if self.accept_paused.is_some_and(|paused| now >= paused) {
                self.accept_paused = None;
                let data = EventData::new_u64(LISTENER);
                let _ = epoll::modify(self.epoll, self.listener, data, EventFlags::IN);
            }
            if now >= self.next_sweep {
                self.sweep(now);
            }
        }
        Ok(())
    }

    /// A free slot for a new connection: its token.
    fn alloc(&mut self) -> u64 {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Entry {
                    generation: 0,
                    slot: Slot::Free,
                });
                self.slots.len() - 1
            }
        };
        let entry = &mut self.slots[index];
        entry.slot = Slot::Away { pending: false };
        token(index, entry.generation)
    }

    /// Frees the slot of `token`'s connection (gone or closed); its token goes stale.
    fn release(&mut self, token: u64) {
        let index = index(token);
        let Some(entry) = self.slots.get_mut(index) else {
            return;
        };
        if let Slot::Away { pending: true } = entry.slot {
            self.pending -= 1;
        }
        entry.slot = Slot::Free;
        entry.generation = entry.generation.wrapping_add(1);
        self.free.push(index);
    }

    /// The slot of a live token.
    fn slot(&mut self, token: u64) -> Option<&mut Slot> {
        let entry = self.slots.get_mut(index(token))?;
        let generation = (token >> 32) as u32;
        (entry.generation == generation && !matches!(entry.slot, Slot::Free))
            .then_some(&mut entry.slot)
    }

    /// Puts `conn` in its slot, held: it waits here for bytes or its deadline.
    fn put_held(&mut self, conn: Conn) {
        let deadline = conn.deadline();
        let bytes = conn.buf.capacity();
        let Some(slot) = self.slot(conn.token) else {
            return; // its slot was freed: the connection is dropped
        };
        let pending = matches!(slot, Slot::Away { pending: true });
        let token = conn.token;
        *slot = Slot::Held(conn);
        self.held_bytes += bytes;
        self.next_sweep = self.next_sweep.min(deadline);
        if pending {
            // Its event came before it did.
            self.pending -= 1;
            self.readable(token);
        }
    }

    /// Takes the connection held in `index`'s slot, if one is, leaving the slot away.
    fn take_held(&mut self, index: usize) -> Option<Conn> {
        let entry = self.slots.get_mut(index)?;
        if !matches!(entry.slot, Slot::Held(_)) {
            return None;
        }
        let Slot::Held(conn) = std::mem::replace(&mut entry.slot, Slot::Away { pending: false })
        else {
            return None;
        };
        self.held_bytes -= conn.buf.capacity();
        Some(conn)
    }

    /// Takes the connections workers sent back (and the slots of those they closed).
    fn take_back(&mut self) {
        while let Ok(back) = self.back.try_recv() {
            match back {
                Back::Conn(conn) => {
                    // Bytes TLS decrypted already wake no epoll: read them now.
                    let (token, decrypted) = (conn.token, conn.socket.has_plaintext());
                    self.put_held(conn);
                    if decrypted {
                        self.readable(token);
                    }
                }
                Back::Closed(token) => self.release(token),
            }
        }
    }

    /// An event for the connection of `token`: reads what came.
    fn readable(&mut self, token: u64) {
        let Some(slot) = self.slot(token) else {
            return; // stale: closed since
        };
        if let Slot::Away { pending } = slot {
            // With a worker that armed it and has not sent it back yet.
            if !*pending {
                *pending = true;
                self.pending += 1;
            }
            return;
        }
        if let Some(conn) = self.take_held(index(token)) {
            self.take_in(conn);
        }
    }

    /// Reads what `conn` sent; a whole request goes to a worker, anything less waits here.
    fn take_in(&mut self, mut conn: Conn) {
        let looked = conn.buf.len();
        if let Err(e) = conn.fill() {
            if let Failure::NotTls = e {
                let remote = conn.remote;
                self.log.line(format_args!(
                    "{remote}: refused, the client spoke plain HTTP to an HTTPS port"
                ));
                self.release(conn.token);
                let message = format!(
                    "{} serves HTTPS on this port: use an https:// URL",
                    self.config.what
                );
                let answer = response::refusal(&Response::error(400, message));
                self.refusals.refuse(conn.into_plain_stream(), answer);
                return;
            }
            if conn.buffered() > 0 || matches!(e, Failure::Tls(_)) {
                let remote = conn.remote;
                match e {
                    Failure::Closed => self.log.line(format_args!(
                        "{remote}: the client closed in the middle of a request"
                    )),
                    e => self
                        .log
                        .line(format_args!("{remote}: reading a request: {e}")),
                }
            }
            self.release(conn.token);
            return;
        }
        match conn.next_request(looked, self.held_bytes < GATHER_BUDGET) {
            Some(parsed) => self.dispatch(conn, parsed),
            None => self.hold(conn),
        }
    }

    /// Keeps `conn` here, armed, until it sends more or its deadline passes.
    fn hold(&mut self, mut conn: Conn) {
        conn.shed_buffer();
        if let Err(e) = arm(self.epoll, &mut conn) {
            let remote = conn.remote;
            self.log.line(format_args!(
                "{remote}: cannot wait for the connection: {e}"
            ));
            self.release(conn.token);
            return;
        }
        self.put_held(conn);
    }

    /// Hands `conn` and its request to a worker, or answers 503 when as many requests wait
    /// for one as the queue holds.
    fn dispatch(&mut self, conn: Conn, parsed: Parsed) {
        match self.ready.try_send(Job { conn, parsed }) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                let conn = job.conn;
                self.release(conn.token);
                let remote = conn.remote;
                self.log
                    .line(format_args!("{remote}: refused, every worker is busy"));
                let config = self.config;
                let message = format!(
                    "{} is busy: all {} workers are taken and {} requests wait; retry in a moment",
                    config.what,
                    config.workers.max(1),
                    config.queue.max(1)
                );
                let answer = Response::error(503, message).with_header("Retry-After", "1");
                self.refuse(conn, &answer);
            }
            Err(TrySendError::Disconnected(job)) => self.release(job.conn.token),
        }
    }

    /// Has `answer` written on `conn` (encrypted on TLS) and the connection closed, by the
    /// refusal pool. A socket still in the set leaves it when the refuser closes it; an
    /// event before that finds its slot freed.
    fn refuse(&self, conn: Conn, answer: &Response) {
        let (stream, last_words) = conn.into_refusal(answer);
        self.refusals.refuse(stream, last_words);
    }

    /// Has `answer` written on a connection refused as it was accepted and the connection
    /// closed, by the refusal pool; on a TLS server the refuser first completes the
    /// handshake (see [`tls::refuse_after_handshake`]).
    fn refuse_new(&self, stream: TcpStream, answer: &Response) {
        let _ = stream.set_nonblocking(false);
        let last_words = response::refusal(answer);
        match &self.config.tls {
            None => self.refusals.refuse(stream, last_words),
            Some(config) => {
                let config = config.clone();
                self.refusals.run(move || {
                    tls::refuse_after_handshake(stream, config, last_words);
                });
            }
        }
    }

    /// Accepts the connections waiting, up to [`ACCEPT_BATCH`].
    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            match self.listener.try_accept() {
                Ok(Some((stream, remote))) => self.accepted(stream, remote),
                Ok(None) => return,
                Err(e) => {
                    self.log
                        .line(format_args!("accepting a connection failed: {e}"));
                    // Left armed, a listener that cannot accept would wake us at once.
                    let data = EventData::new_u64(LISTENER);
                    let _ = epoll::modify(self.epoll, self.listener, data, EventFlags::empty());
                    self.accept_paused = Some(Instant::now() + ACCEPT_BACKOFF);
                    return;
                }
            }
        }
    }

    /// Counts a new connection against the caps (429 past its address's, 503 past the
    /// total) and takes it in.
    fn accepted(&mut self, stream: TcpStream, remote: SocketAddr) {
        let config = self.config;
        // Answers leave in one write, but a head and a large body may be two segments;
        // without this the second waits for the client's delayed ACK (40 ms).
        let _ = stream.set_nodelay(true);
        let counted = match self.conns.enter(
            remote.ip(),
            config.max_conns_per_ip,
            self.max_conns,
            None,
        ) {
            Ok(counted) => counted,
            Err(Refused::Address { key, open }) => {
                self.log.line(format_args!(
                    "{remote}: refused, {open} connections from {key} are open already"
                ));
                let message = format!(
                    "too many connections from {key}: {open} are open, and {} allows {} per address; close idle ones or retry later",
                    config.what, config.max_conns_per_ip
                );
                let answer = Response::error(429, message).with_header("Retry-After", "1");
                self.refuse_new(stream, &answer);
                return;
            }
            Err(Refused::Full) => {
                let open = self.max_conns;
                self.log.line(format_args!(
                    "{remote}: refused, {open} connections are open, the most {} takes",
                    config.what
                ));
                let message = format!(
                    "{} is busy: {open} connections are open, the most it takes; retry in a moment",
                    config.what
                );
                let answer = Response::error(503, message).with_header("Retry-After", "1");
                self.refuse_new(stream, &answer);
                return;
            }
        };
        let session = match &self.config.tls {
            None => None,
            Some(config) => match rustls::ServerConnection::new(config.clone()) {
                Ok(session) => Some(Box::new(session)),
                Err(e) => {
                    self.log
                        .line(format_args!("{remote}: cannot start TLS: {e}"));
                    return;
                }
            },
        };
        let token = self.alloc();
        let socket = Socket::new(stream, self.stop.clone(), session);
        let conn = Conn::new(socket, remote, self.limits, counted, token, Instant::now());
        // The request often comes with the connection: read it now rather than after one
        // more trip through the set.
        self.take_in(conn);
    }

    /// Closes the held connections past their deadline (408 to one that owes a request,
    /// quietly an idle one) and notes when the next deadline falls.
    fn sweep(&mut self, now: Instant) {
        let mut next = now + POLL;
        for index in 0..self.slots.len() {
            let Slot::Held(conn) = &self.slots[index].slot else {
                continue;
            };
            let deadline = conn.deadline();
            if deadline > now {
                next = next.min(deadline);
                continue;
            }
            let Some(conn) = self.take_held(index) else {
                continue;
            };
            self.release(conn.token);
            if let Some((answer, message)) = conn.expired() {
                let remote = conn.remote;
                self.log.line(format_args!("{remote}: {message}"));
                self.refuse(conn, &answer);
            }
        }
        self.next_sweep = next;
    }
}
