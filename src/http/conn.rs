//! One HTTP connection: its socket with a deadline on every read and write (looking at the
//! shutdown flag while it waits), and the buffer its request heads are read into.

use std::io::{self, IoSlice, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;

use super::head::{Head, Method};
use super::{Accepted, MAX_HEAD, Response, response};
use crate::net::{ShutdownHandle, is_timeout};

/// Most header fields in one request head: clients send a handful, browsers about 15.
pub(super) const MAX_HEADERS: usize = 64;
/// Large bodies and answers move their deadline back by one second per this many bytes, so
/// an 80 MiB manifest is not cut off by a deadline sized for small requests, while a client
/// dribbling bytes gains nothing. 256 KiB/s is 2 Mbit/s, slower than any link a tracker
/// is used over.
const MIN_TRANSFER_RATE: f64 = (256 << 10) as f64;
/// Longest a blocked read waits before it looks at the shutdown flag (and, between
/// requests, at the queue): a stop reaches every worker within this.
const POLL: Duration = Duration::from_millis(100);
/// A connection silent for this long gives its worker up when others wait for one. Clients
/// send their request within a round trip of connecting or of their previous answer, so a
/// second of silence is a connection pooled for later, or a client with nothing to say.
const IDLE_UNDER_PRESSURE: Duration = Duration::from_secs(1);

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
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Timeout => write!(f, "the client left our answer unread too long"),
            Failure::Closed => write!(f, "the client closed the connection"),
            Failure::Stopped => write!(f, "the server is stopping"),
            Failure::Io(e) => write!(f, "{e}"),
        }
    }
}

/// A connection's socket, with the deadlines of its reads and writes.
pub(super) struct Socket {
    pub(super) stream: TcpStream,
    pub(super) stop: ShutdownHandle,
    /// The read timeout last set, to skip setting it again.
    pub(super) read_timeout: Option<Duration>,
    pub(super) write_timeout: Option<Duration>,
}

impl Socket {
    fn set_read_timeout(&mut self, timeout: Duration) -> Result<(), Failure> {
        // std refuses a zero timeout; under a millisecond left means "now" here anyway.
        let timeout = timeout.max(Duration::from_millis(1));
        if self.read_timeout != Some(timeout) {
            self.stream
                .set_read_timeout(Some(timeout))
                .map_err(Failure::Io)?;
            self.read_timeout = Some(timeout);
        }
        Ok(())
    }

    /// Reads what arrives into `into` (at least one byte) by `deadline`, looking at the
    /// shutdown flag every [`POLL`].
    pub(super) fn read_by(&mut self, into: &mut [u8], deadline: Instant) -> Result<usize, Failure> {
        loop {
            if self.stop.is_shutdown() {
                return Err(Failure::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Timeout);
            }
            self.set_read_timeout(left.min(POLL))?;
            match (&self.stream).read(into) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => return Ok(n),
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Failure::Io(e)),
            }
        }
    }

    /// Writes `parts` in full: each write may wait `per_write` for the client to make room,
    /// and all of it must be out by a deadline of `per_write` plus the time the bytes take
    /// at [`MIN_TRANSFER_RATE`].
    pub(super) fn write_all(
        &mut self,
        parts: &[&[u8]],
        per_write: Duration,
    ) -> Result<(), Failure> {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let deadline = Instant::now() + per_write + transfer_allowance(total as u64);
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut slices = &mut slices[..];
        IoSlice::advance_slices(&mut slices, 0);
        while !slices.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Failure::Timeout);
            }
            let timeout = left.min(per_write).max(Duration::from_millis(1));
            if self.write_timeout != Some(timeout) {
                self.stream
                    .set_write_timeout(Some(timeout))
                    .map_err(Failure::Io)?;
                self.write_timeout = Some(timeout);
            }
            match (&self.stream).write_vectored(slices) {
                Ok(0) => return Err(Failure::Closed),
                Ok(n) => IoSlice::advance_slices(&mut slices, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if is_timeout(&e) => return Err(Failure::Timeout),
                Err(e) => return Err(Failure::Io(e)),
            }
        }
        Ok(())
    }
}

/// The extra time `bytes` may take at [`MIN_TRANSFER_RATE`].
pub(super) fn transfer_allowance(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_RATE)
}

/// A connection being served: its socket and the buffer its request heads are read into.
pub(super) struct Conn {
    pub(super) socket: Socket,
    pub(super) remote: SocketAddr,
    pub(super) request_timeout: Duration,
    pub(super) write_timeout: Duration,
    pub(super) buf: Vec<u8>,
    /// Where the unconsumed bytes in `buf` start and end.
    pub(super) pos: usize,
    pub(super) filled: usize,
}

/// How waiting for a request ended without one.
pub(super) enum NoRequest {
    /// Closed, quietly: the client went, the server stops, or the connection gave way to
    /// waiting ones.
    Quiet,
    /// Silent past its deadline.
    Timeout,
}

impl Conn {
    /// Waits up to `limit` for the first byte of a request. When connections wait for a
    /// worker, a silent one gives its worker up after [`IDLE_UNDER_PRESSURE`].
    pub(super) fn wait_for_request(
        &mut self,
        limit: Duration,
        queue: &Receiver<Accepted>,
    ) -> Result<Instant, NoRequest> {
        self.buf.copy_within(self.pos..self.filled, 0);
        self.filled -= self.pos;
        self.pos = 0;
        let since = Instant::now();
        if self.filled > 0 {
            return Ok(since);
        }
        let deadline = since + limit;
        let under_pressure_from = since + IDLE_UNDER_PRESSURE;
        loop {
            let now = Instant::now();
            // Until the connection has been silent long enough to give way, one long wait;
            // then a look at the queue every POLL.
            let until = if now < under_pressure_from {
                under_pressure_from
            } else {
                now + POLL
            };
            match self.socket.read_by(&mut self.buf, until.min(deadline)) {
                Ok(n) => {
                    self.filled = n;
                    return Ok(Instant::now());
                }
                Err(Failure::Timeout) if Instant::now() >= deadline => {
                    return Err(NoRequest::Timeout);
                }
                Err(Failure::Timeout) if !queue.is_empty() => return Err(NoRequest::Quiet),
                Err(Failure::Timeout) => {}
                Err(_) => return Err(NoRequest::Quiet),
            }
        }
    }

    /// Reads and parses a request head by `deadline`. On failure, the answer to send before
    /// closing (none when the client is gone) and what to log.
    pub(super) fn read_head(
        &mut self,
        deadline: Instant,
    ) -> Result<Head, (Option<Response>, String)> {
        loop {
            let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut parsed = httparse::Request::new(&mut headers);
            match parsed.parse(&self.buf[..self.filled]) {
                Ok(httparse::Status::Complete(len)) => {
                    let head = Head {
                        method: Method::parse(parsed.method.unwrap_or("")),
                        target: parsed.path.unwrap_or("").to_string(),
                        minor_version: parsed.version.unwrap_or(1),
                        headers: parsed
                            .headers
                            .iter()
                            .map(|h| {
                                let value = String::from_utf8_lossy(h.value);
                                (h.name.to_string(), value.into_owned())
                            })
                            .collect(),
                    };
                    self.pos = len;
                    return Ok(head);
                }
                Ok(httparse::Status::Partial) if self.filled == self.buf.len() => {
                    let message =
                        format!("request head is larger than the {MAX_HEAD} bytes allowed");
                    return Err((Some(Response::error(431, &message)), message));
                }
                Ok(httparse::Status::Partial) => {}
                Err(httparse::Error::TooManyHeaders) => {
                    let message =
                        format!("request has more than the {MAX_HEADERS} header fields allowed");
                    return Err((Some(Response::error(431, &message)), message));
                }
                Err(e) => {
                    let message = format!(
                        "malformed request ({e}): this server speaks HTTP/1.1 (no TLS, no HTTP/2)"
                    );
                    return Err((Some(Response::error(400, &message)), message));
                }
            }
            let room = &mut self.buf[self.filled..];
            match self.socket.read_by(room, deadline) {
                Ok(n) => self.filled += n,
                Err(Failure::Timeout) => {
                    let message = format!(
                        "the request did not arrive within {:?}; closing",
                        self.request_timeout
                    );
                    return Err((Some(Response::error(408, &message)), message));
                }
                Err(Failure::Closed) => {
                    return Err((None, "the client closed in the middle of a request".into()));
                }
                Err(Failure::Stopped) => return Err((None, String::new())),
                Err(Failure::Io(e)) => return Err((None, format!("reading a request: {e}"))),
            }
        }
    }

    /// Sends `response` (its head only, for a HEAD request).
    pub(super) fn send(
        &mut self,
        response: &Response,
        close: bool,
        head_only: bool,
    ) -> Result<(), Failure> {
        let body: &[u8] = if head_only { &[] } else { &response.body };
        let head = response::response_head(response, response.body.len(), close);
        let per_write = self.write_timeout;
        self.socket.write_all(&[head.as_bytes(), body], per_write)
    }
}
