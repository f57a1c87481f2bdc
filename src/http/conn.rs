//! One HTTP connection: its non-blocking socket (and, on a TLS server, the rustls session
//! over it: see `tls` for why it lives here), with a deadline on every read and write
//! (waited for in `poll(2)`, looking at the shutdown flag), the buffer its requests gather
//! in, and the clock of its request and idle deadlines. The poller and the workers both
//! hold a `Conn`, one at a time.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};

use rustls::ServerConnection;

use super::head::{Buffered, MAX_BUFFERED_BODY, Parsed, inspect};
use super::{MAX_HEAD, Response, response, tls};
use crate::net::{CLOSE_LINGER, Counted, ShutdownHandle, linger_close};

/// Large bodies and answers move their deadline back by one second per this many bytes, so
/// an 80 MiB manifest is not cut off by a deadline sized for small requests, while a client
/// dribbling bytes gains nothing. 256 KiB/s is 2 Mbit/s, slower than any link a tracker
/// is used over.
const MIN_TRANSFER_RATE: f64 = (256 << 10) as f64;
/// Longest a blocked read waits before it looks at the shutdown flag: a stop reaches every
/// worker within this.
const POLL: Duration = Duration::from_millis(100);
/// Bytes asked of one read: a request head and an announce fit, and a larger body takes a
/// few reads into a buffer that grows only as bytes arrive.
const READ_SIZE: usize = 4 << 10;
/// Most unconsumed bytes a connection buffers: a whole head and a gathered body.
const MAX_BUFFERED: usize = MAX_HEAD + MAX_BUFFERED_BODY;

/// Why reading or writing a connection stopped.
#[derive(Debug)]
pub(super) enum Failure {
    /// The deadline passed.
    Timeout,
    /// The client closed its side.
    Closed,
    /// The server is shutting down.
    Stopped,
    /// Any other socket error.
    Io(io::Error),
    /// TLS failed: a bad handshake or record (the client is told by an alert).
    Tls(rustls::Error),
    /// A client spoke plain HTTP to a TLS server.
    NotTls,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "the client left our answer unread too long"),
            Failure::Closed => write!(f, "the client closed the connection"),
            Failure::Stopped => write!(f, "the server is stopping"),
            Failure::Io(e) => write!(f, "{e}"),
            Failure::Tls(e) => write!(f, "TLS failed: {e}"),
            Failure::NotTls => write!(f, "the client spoke plain HTTP to an HTTPS port"),
        }
    }
}

/// A connection's non-blocking socket, and its TLS session on a TLS server.
pub(super) struct Socket {
    pub(super) stream: TcpStream,
    pub(super) stop: ShutdownHandle,
    /// The TLS session over `stream` (boxed: a session is about a kilobyte, and moves
    /// with the connection between threads).
    pub(super) tls: Option<Box<ServerConnection>>,
    /// Decrypted bytes rustls holds that were not read yet: a read finds them without
    /// the socket being readable.
    plain_left: usize,
    /// Whether the first byte was looked at (to tell plain HTTP from a handshake).
    sniffed: bool,
}

/// `timeout` as `poll(2)` and `epoll_wait(2)` take it.
pub(super) fn timespec(timeout: Duration) -> Timespec {
    Timespec {
        tv_sec: timeout.as_secs() as _,
        tv_nsec: timeout.subsec_nanos() as _,
    }
}

impl Socket {
    /// A socket just accepted; with `tls`, a TLS server's.
    pub(super) fn new(
        stream: TcpStream,
        stop: ShutdownHandle,
        tls: Option<Box<ServerConnection>>,
    ) -> Socket {
        Socket {
            stream,
            stop,
            tls,
            plain_left: 0,
            sniffed: false,
        }
    }

    /// Waits up to `timeout` for the socket to be ready for `flags` (and for writing too
    /// while TLS bytes wait to go out); an error (EINTR) only means looking again sooner.
    /// Decrypted bytes already held make a read ready at once.
    fn wait(&self, flags: PollFlags, timeout: Duration) {
        if flags.contains(PollFlags::IN) && self.plain_left > 0 {
            return;
        }
        let flags = if self.wants_write() {
            flags | PollFlags::OUT
        } else {
            flags
        };
        let mut fds = [PollFd::new(&self.stream, flags)];
        let _ = rustix::event::poll(&mut fds, Some(&timespec(timeout)));
    }

    /// Whether TLS bytes (handshake, alerts, answers) wait for room in the socket.
    pub(super) fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Whether TLS holds decrypted bytes not read yet (which no `epoll` event announces).
    pub(super) fn has_plaintext(&self) -> bool {
        self.plain_left > 0
    }

    /// Whether the TLS handshake is over (always, without TLS).
    pub(super) fn handshaken(&self) -> bool {
        self.tls.as_ref().is_none_or(|tls| !tls.is_handshaking())
    }

    /// One read of what has arrived (decrypted, on TLS): `None` when nothing has.
    pub(super) fn try_read(&mut self, into: &mut [u8]) -> Result<Option<usize>, Failure> {
        if self.tls.is_some() {
            return self.try_read_tls(into);
        }
        loop {
            return match (&self.stream).read(into) {
                Ok(0) if !into.is_empty() => Err(Failure::Closed),
                Ok(n) => Ok(Some(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => Err(Failure::Io(e)),
            };
        }
    }

    /// [`Socket::try_read`] through TLS: decrypted bytes first, else what the socket has
    /// (handshake records are answered on the way, without waiting).
    fn try_read_tls(&mut self, into: &mut [u8]) -> Result<Option<usize>, Failure> {
        if !self.sniffed {
            let mut first = [0u8; 1];
            match self.stream.peek(&mut first) {
                Ok(0) => return Err(Failure::Closed),
                Ok(_) if !tls::looks_like_tls(first[0]) => return Err(Failure::NotTls),
                Ok(_) => self.sniffed = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(None),
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        loop {
            let Some(session) = self.tls.as_mut() else {
                return Err(Failure::Closed);
            };
            match session.reader().read(into) {
                Ok(0) if !into.is_empty() => return Err(Failure::Closed),
                Ok(n) => {
                    self.plain_left = self.plain_left.saturating_sub(n);
                    return Ok(Some(n));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.plain_left = 0,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Failure::Closed);
                }
                Err(e) => return Err(Failure::Io(e)),
            }
            self.flush_tls()?;
            let Some(session) = self.tls.as_mut() else {
                return Err(Failure::Closed);
            };
            match session.read_tls(&mut &self.stream) {
                Ok(0) => return Err(Failure::Closed),
                Ok(_) => match session.process_new_packets() {
                    Ok(state) => self.plain_left = state.plaintext_bytes_to_read(),
                    Err(e) => {
                        // The alert rustls queued tells the client why.
                        let _ = self.flush_tls();
                        return Err(Failure::Tls(e));
                    }
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Writes what TLS has to send, without waiting: whether all of it went out, and
    /// whether any did.
    pub(super) fn flush_tls(&mut self) -> Result<(bool, bool), Failure> {
        let Some(session) = self.tls.as_mut() else {
            return Ok((true, false));
        };
        let mut wrote = false;
        while session.wants_write() {
            match session.write_tls(&mut &self.stream) {
                Ok(0) => return Err(Failure::Closed),
                Ok(_) => wrote = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((false, wrote)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        Ok((true, wrote))
    }

    /// Reads what arrives into `into` (at least one byte) by `deadline`, looking at the
    /// shutdown flag every [`POLL`].
    pub(super) fn read_by(&mut self, into: &mut [u8], deadline: Instant) -> Result<usize, Failure> {
        loop {
            if self.stop.is_shutdown() {
                return Err(Failure::Stopped);
            }
            if let Some(n) = self.try_read(into)? {
                return Ok(n);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Timeout);
            }
            self.wait(PollFlags::IN, left.min(POLL));
        }
    }

    /// Writes `parts` in full: the client may leave no room for `per_write` at a time, and
    /// all of it must be out by a deadline of `per_write` plus the time the bytes take at
    /// [`MIN_TRANSFER_RATE`].
    pub(super) fn write_all(
        &mut self,
        parts: &[&[u8]],
        per_write: Duration,
    ) -> Result<(), Failure> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let deadline = Instant::now() + per_write + transfer_allowance(total as u64);
        if self.tls.is_some() {
            return self.write_all_tls(parts, per_write, deadline);
        }
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices = &mut slices[..];
        IoSlice::advance_slices(&mut slices, 0);
        let mut progress = Instant::now();
        while !slices.is_empty() {
            match (&self.stream).write_vectored(slices) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => {
                    IoSlice::advance_slices(&mut slices, n);
                    progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let until = (progress + per_write).min(deadline);
                    let left = until.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(Failure::Timeout);
                    }
                    self.wait(PollFlags::OUT, left);
                }
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        Ok(())
    }

    /// [`Socket::write_all`] through TLS: plaintext is handed to rustls as far as its
    /// buffer takes it, and the records go out under the same deadlines.
    fn write_all_tls(
        &mut self,
        parts: &[&[u8]],
        per_write: Duration,
        deadline: Instant,
    ) -> Result<(), Failure> {
        let mut progress = Instant::now();
        let (mut part, mut offset) = (0, 0);
        loop {
            let Some(session) = self.tls.as_mut() else {
                return Err(Failure::Closed);
            };
            let mut took = 0;
            while part < parts.len() {
                let rest = &parts[part][offset..];
                if rest.is_empty() {
                    (part, offset) = (part + 1, 0);
                    continue;
                }
                match session.writer().write(rest) {
                    Ok(0) => break, // rustls's buffer is full: send some first
                    Ok(n) => (offset, took) = (offset + n, took + n),
                    Err(e) => return Err(Failure::Io(e)),
                }
            }
            let (all_out, wrote) = self.flush_tls()?;
            if wrote {
                progress = Instant::now();
            }
            if all_out && part == parts.len() {
                return Ok(());
            }
            if all_out && took == 0 && !wrote {
                // rustls takes nothing and has nothing to send: the session is closing.
                return Err(Failure::Closed);
            }
            if !all_out {
                let until = (progress + per_write).min(deadline);
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(Failure::Timeout);
                }
                self.wait(PollFlags::OUT, left);
            }
        }
    }

    /// Sends a TLS close_notify, waiting [`CLOSE_LINGER`] at most for room (the socket is
    /// blocking by now).
    fn close_tls(&mut self) {
        let Some(session) = self.tls.as_mut() else {
            return;
        };
        session.send_close_notify();
        let _ = self.stream.set_write_timeout(Some(CLOSE_LINGER));
        let deadline = Instant::now() + CLOSE_LINGER;
        while session.wants_write() && Instant::now() < deadline {
            match session.write_tls(&mut &self.stream) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
}

/// The extra time `bytes` may take at [`MIN_TRANSFER_RATE`].
pub(super) fn transfer_allowance(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_RATE)
}

/// The deadlines every connection of a server keeps.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    pub(super) request_timeout: Duration,
    pub(super) idle_timeout: Duration,
    pub(super) write_timeout: Duration,
}

/// When the buffered bytes are worth inspecting again: parsing a head on every byte of a
/// client that sends one at a time would cost us far more than it costs the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Look {
    /// At the next bytes, whatever they are.
    Now,
    /// Once a line ends (or the head limit is reached).
    AtNewline,
    /// Once this many bytes are buffered (the rest of a small body).
    AtLength(usize),
}

/// A connection: its socket, the bytes it sent that are not consumed yet, its deadlines,
/// and its place in the poller.
pub(super) struct Conn {
    pub(super) socket: Socket,
    pub(super) remote: SocketAddr,
    pub(super) limits: Limits,
    /// Received bytes; those from `pos` on are not consumed yet.
    pub(super) buf: Vec<u8>,
    pub(super) pos: usize,
    /// When the request being received began: its first byte, or, for a connection's first
    /// request, the accept (a client must not connect and wait).
    started: Option<Instant>,
    /// When the connection last finished an answer, for the idle timeout.
    idle_since: Instant,
    /// Requests answered.
    pub(super) served: u32,
    look: Look,
    /// The poller's name for it, in its epoll set.
    pub(super) token: u64,
    /// Whether it is in the poller's epoll set.
    pub(super) registered: bool,
    /// Its place in the server's connection counts, freed when it is dropped.
    _counted: Counted,
}

impl Conn {
    /// A connection just accepted at `now` (its socket non-blocking already).
    pub(super) fn new(
        socket: Socket,
        remote: SocketAddr,
        limits: Limits,
        counted: Counted,
        token: u64,
        now: Instant,
    ) -> Conn {
        Conn {
            socket,
            remote,
            limits,
            buf: Vec::new(),
            pos: 0,
            started: Some(now),
            idle_since: now,
            served: 0,
            look: Look::Now,
            token,
            registered: false,
            _counted: counted,
        }
    }

    /// Unconsumed bytes.
    pub(super) fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Appends one read's worth to the buffer: by `deadline` (at least one byte), or without
    /// waiting with `None`. The bytes read (0: nothing had arrived, or the buffer is full)
    /// and whether they filled the room asked for (more may be waiting).
    fn read_more(&mut self, deadline: Option<Instant>) -> Result<(usize, bool), Failure> {
        let old = self.buf.len();
        let room = (MAX_BUFFERED - self.buffered()).min(READ_SIZE.max(self.buf.capacity() - old));
        if room == 0 {
            return Ok((0, false));
        }
        self.buf.resize(old + room, 0);
        let into = &mut self.buf[old..];
        let read = match deadline {
            None => self.socket.try_read(into).map(|n| n.unwrap_or(0)),
            Some(deadline) => self.socket.read_by(into, deadline),
        };
        let n = *read.as_ref().unwrap_or(&0);
        self.buf.truncate(old + n);
        if n > 0 && old == self.pos && self.started.is_none() {
            self.started = Some(Instant::now());
        }
        read.map(|n| (n, n == room))
    }

    /// Reads, without waiting, what the client has sent (up to the buffer's bound).
    pub(super) fn fill(&mut self) -> Result<(), Failure> {
        while self.read_more(None)?.1 {}
        Ok(())
    }

    /// Waits up to `deadline` (and no longer than the request's own) for more bytes; false
    /// when none came.
    pub(super) fn wait_more(&mut self, deadline: Instant) -> Result<bool, Failure> {
        let deadline = deadline.min(self.deadline());
        // Waiting first saves the read that would find nothing: right after an answer, the
        // client has not had the time to send its next request yet.
        let left = deadline.saturating_duration_since(Instant::now());
        self.socket.wait(PollFlags::IN, left.min(POLL));
        match self.read_more(Some(deadline)) {
            Ok((n, _)) => Ok(n > 0),
            Err(Failure::Timeout) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The next request, if the buffered bytes hold one a worker can take. Heads are parsed
    /// only when new bytes can have completed one.
    /// With `gather` false, a small body is left to the worker too (see [`inspect`]).
    pub(super) fn next_request(&mut self, looked_up_to: usize, gather: bool) -> Option<Parsed> {
        let unconsumed = &self.buf[self.pos..];
        let worth = match self.look {
            Look::Now => true,
            Look::AtNewline => {
                let from = looked_up_to.saturating_sub(self.pos).min(unconsumed.len());
                unconsumed[from..].contains(&b'\n') || unconsumed.len() >= MAX_HEAD
            }
            Look::AtLength(len) => unconsumed.len() >= len,
        };
        if !worth || unconsumed.is_empty() {
            return None;
        }
        match inspect(unconsumed, gather) {
            Buffered::Head => {
                self.look = Look::AtNewline;
                None
            }
            Buffered::Body(len) => {
                self.look = Look::AtLength(len);
                None
            }
            Buffered::Ready(parsed) => {
                self.look = Look::Now;
                Some(parsed)
            }
        }
    }

    /// When the connection must have sent its request (from its first byte, or from the
    /// accept for its first), or, idle, its next one's first byte.
    pub(super) fn deadline(&self) -> Instant {
        match self.started {
            Some(started) => started + self.limits.request_timeout,
            None => self.idle_since + self.limits.idle_timeout,
        }
    }

    /// When the request being answered began: its deadline, for a body still to be read.
    pub(super) fn request_deadline(&self) -> Instant {
        self.started.unwrap_or(self.idle_since) + self.limits.request_timeout
    }

    /// What to answer a connection past its [`Conn::deadline`] before closing it, and what
    /// to log: nothing for one that was idle (it is closed quietly).
    pub(super) fn expired(&self) -> Option<(Response, String)> {
        let timeout = self.limits.request_timeout;
        let message = if !self.socket.handshaken() {
            format!("the TLS handshake did not end within {timeout:?} of connecting; closing")
        } else if self.buffered() > 0 {
            format!("the request did not arrive within {timeout:?}; closing")
        } else if self.served == 0 {
            format!("no request within {timeout:?} of connecting; closing")
        } else {
            return None;
        };
        Some((Response::error(408, &message), message))
    }

    /// Readies the connection for its next request once an answer is out: the consumed
    /// bytes dropped, the clocks restarted (a pipelined request already buffered began now).
    pub(super) fn answered(&mut self) {
        self.buf.drain(..self.pos);
        self.pos = 0;
        let now = Instant::now();
        self.served += 1;
        self.idle_since = now;
        self.started = (!self.buf.is_empty()).then_some(now);
        self.look = Look::Now;
    }

    /// Gives back the buffer of a connection with nothing buffered, before it waits in the
    /// poller: an idle connection then costs the size of a `Conn` alone, and the next
    /// request's read allocates again (cheap next to the read itself).
    pub(super) fn shed_buffer(&mut self) {
        if self.buffered() == 0 {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// Sends `response` (its head only, for a HEAD request).
    pub(super) fn send(
        &mut self,
        response: &mut Response,
        close: bool,
        head_only: bool,
    ) -> Result<(), Failure> {
        let body: &[u8] = if head_only { &[] } else { &response.body };
        let head = response::response_head(response, response.body_len(), close);
        let per_write = self.limits.write_timeout;
        self.socket.write_all(&[head.as_bytes(), body], per_write)?;
        let Some((len, write)) = response.stream.take().filter(|_| !head_only) else {
            return Ok(());
        };
        let mut out = BodyOut {
            socket: &mut self.socket,
            per_write,
            left: len,
            failure: None,
        };
        let written = write(&mut out);
        match (written, out.failure) {
            (_, Some(failure)) => Err(failure),
            (Err(e), None) => Err(Failure::Io(e)),
            // A body short of its length leaves the client waiting: close instead.
            (Ok(()), None) if out.left > 0 => Err(Failure::Io(io::Error::other(format!(
                "the answer's body ended {} bytes short of its length",
                out.left
            )))),
            (Ok(()), None) => Ok(()),
        }
    }

    /// Closes after our last answer (with a TLS close_notify on TLS), without a reset
    /// (see [`linger_close`]).
    pub(super) fn close_after_answer(&mut self) {
        if self.socket.stream.set_nonblocking(false).is_ok() {
            self.socket.close_tls();
            linger_close(&self.socket.stream);
        }
    }

    /// The socket, blocking again, and the bytes a refuser writes on it before closing:
    /// `answer`, encrypted on TLS. A TLS connection still in its handshake gets nothing
    /// (no answer can be sent before it ends), only a clean close.
    pub(super) fn into_refusal(self, answer: &Response) -> (TcpStream, Vec<u8>) {
        let mut socket = self.socket;
        let _ = socket.stream.set_nonblocking(false);
        let plain = response::refusal(answer);
        let bytes = match socket.tls.as_mut() {
            None => plain,
            Some(session) if session.is_handshaking() => Vec::new(),
            Some(session) => {
                let mut out = Vec::new();
                // What is still queued (a session ticket, say) goes first.
                tls::drain_into(session, &mut out);
                let _ = session.writer().write_all(&plain);
                session.send_close_notify();
                tls::drain_into(session, &mut out);
                out
            }
        };
        (socket.stream, bytes)
    }

    /// The socket, blocking again, for a plain-HTTP answer to a client that did not speak
    /// TLS to a TLS server.
    pub(super) fn into_plain_stream(self) -> TcpStream {
        let _ = self.socket.stream.set_nonblocking(false);
        self.socket.stream
    }

    /// Whether the connection is over TLS.
    pub(super) fn is_tls(&self) -> bool {
        self.socket.tls.is_some()
    }
}

/// The socket as an [`io::Write`] for a streamed body: every write under the server's write
/// deadline, and never more than the body's declared length.
struct BodyOut<'s> {
    socket: &'s mut Socket,
    per_write: Duration,
    /// Bytes of the declared length not yet written.
    left: u64,
    /// Why the socket failed, kept so that the caller learns a timeout as a timeout.
    failure: Option<Failure>,
}

impl Write for BodyOut<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() as u64 > self.left {
            return Err(io::Error::other(format!(
                "the answer's body runs past its length ({} bytes left, {} written)",
                self.left,
                buf.len()
            )));
        }
        match self.socket.write_all(&[buf], self.per_write) {
            Ok(()) => {
                self.left -= buf.len() as u64;
                Ok(buf.len())
            }
            Err(failure) => {
                let e = io::Error::other(failure.to_string());
                self.failure = Some(failure);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
