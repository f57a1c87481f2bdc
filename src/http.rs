//! The HTTP/1.1 server under the tracker's API and the peer server's metrics endpoint:
//! blocking sockets, one accept thread, a fixed pool of workers, and a bound on everything
//! a client controls: how long it takes to send a request, how long it idles between
//! requests, how long it leaves an answer unread, how large a head or a body may be, and
//! how many connections one address holds. Request heads are parsed by `httparse` (hyper's
//! parser); bodies come with a `Content-Length` or not at all.
//!
//! A worker serves one connection from accept to close, kept-alive requests included. When
//! every worker is busy, new connections wait in a short queue, connections that have been
//! silent for a second give their worker up, and once the queue is full newcomers are
//! answered 503 at once. Refusals (503, 429) are written by two threads of their own, so the
//! accept thread never waits on a client.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{self, IoSlice, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::api::ErrorBody;
use crate::ratelimit::client_key;

/// Default time a client has to send a whole request, head and body, from its first byte
/// (from the connection being taken up, for its first request). Requests are a few hundred
/// bytes sent at once, so 10 s only ever cuts off the stuck and the hostile; a client that
/// dribbles a byte a second gets no longer (only body bytes push the deadline back, at
/// [`MIN_TRANSFER_RATE`]).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a kept-alive connection may sit idle between requests: our own clients open
/// a connection per request, and pooling clients reconnect when they find one closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client may leave our answer unread (no progress in one write) before its
/// connection is dropped: generous for any client, short enough that a stalled one cannot
/// keep a worker for long.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connections one client address (see [`client_key`]) may hold at once, queued or
/// served. Our clients open one per request, so a machine running several downloads rarely
/// has more than one or two open; 8 leaves room for a small NAT, and one address can never
/// hold more than 8 workers.
pub const DEFAULT_MAX_CONNS_PER_IP: usize = 8;
/// Default worker threads, what an endpoint scraped every few seconds needs; a busy
/// server sets its own.
pub const DEFAULT_WORKERS: usize = 2;
/// Default connections that may wait for a worker before newcomers are told it is busy.
pub const DEFAULT_QUEUE: usize = 8;
/// Largest request head (request line and header fields). Ours are under 300 bytes; 16 KiB
/// is what common proxies accept, and it is the one buffer each connection gets.
pub const MAX_HEAD: usize = 16 << 10;
/// Most header fields in one request head: clients send a handful, browsers about 15.
const MAX_HEADERS: usize = 64;
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
/// Threads that answer refused connections. A refusal takes one write and, usually, a
/// moment for the client to close; two keep up with a flood while the accept thread
/// never waits on a client.
const REFUSERS: usize = 2;
/// Refused connections waiting for a refuser; past this many they are closed unanswered.
const REFUSAL_QUEUE: usize = 64;
/// How long a closing connection waits for the client to take our last answer and close
/// first: closing with unread input makes the kernel send a reset, which can destroy the
/// answer before it is read. Long enough on any LAN, short enough not to hold a thread.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// Most bytes read and dropped while lingering.
const MAX_DRAIN: usize = 64 << 10;
/// A body the handler left unread is read and dropped to keep the connection if it is no
/// larger than this (an announce is far smaller); a larger one closes the connection.
const MAX_DISCARD: u64 = 64 << 10;
/// Most of a body's claimed length allocated before its bytes arrive.
const MAX_BODY_PREALLOCATION: u64 = 1 << 20;
/// After a failed accept (most often: out of file descriptors), wait this long before the
/// next one instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Most lines a server logs per second about failing connections, so that a flood of bad
/// clients cannot flood the log.
const LOG_LINES_PER_SEC: u32 = 10;

/// Settings of an [`HttpServer`].
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// What the server is, in errors: "the tracker".
    pub what: &'static str,
    /// The prefix of its log lines: "tracker".
    pub program: &'static str,
    /// Worker threads: connections served at once.
    pub workers: usize,
    /// Accepted connections that may wait for a worker; past this, newcomers get a 503.
    pub queue: usize,
    /// Connections one client address may hold at once; 0 for no limit.
    pub max_conns_per_ip: usize,
    /// Time to send a whole request (see [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Time a kept-alive connection may idle between requests.
    pub idle_timeout: Duration,
    /// Time a client may leave our answer unread.
    pub write_timeout: Duration,
}

impl HttpConfig {
    /// The defaults: see the `DEFAULT_…` constants.
    pub fn new(listen: SocketAddr, what: &'static str, program: &'static str) -> HttpConfig {
        HttpConfig {
            listen,
            what,
            program,
            workers: DEFAULT_WORKERS,
            queue: DEFAULT_QUEUE,
            max_conns_per_ip: DEFAULT_MAX_CONNS_PER_IP,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
        }
    }
}

/// A bound HTTP server, ready to [`HttpServer::serve`].
#[derive(Debug)]
pub struct HttpServer {
    listener: TcpListener,
    addr: SocketAddr,
    config: HttpConfig,
    stop: Arc<AtomicBool>,
}

/// Stops a serving [`HttpServer`] from another thread.
#[derive(Clone, Debug)]
pub struct ShutdownHandle {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
}

impl ShutdownHandle {
    /// Stops accepting; `serve` returns once the requests under way are answered, and
    /// connections waiting for their next request are closed within [`POLL`].
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        crate::net::wake_accept_loop(self.addr);
    }
}

/// An answer: status, content type, body, and any further header fields.
#[derive(Clone, Debug)]
pub struct Response {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

impl Response {
    /// An answer with `body` of type `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    /// An error answer: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::new(status, "application/json", error_body(message))
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// The JSON body of an error answer.
pub fn error_body(message: impl Into<String>) -> String {
    serde_json::to_string(&ErrorBody {
        error: message.into(),
    })
    .expect("an error body always serializes")
}

/// A request body that could not be read: the status and message to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError {
    /// 413 (too large), 408 (too slow), 400 (cut short) or 503 (shutting down).
    pub status: u16,
    /// What went wrong, for the error body.
    pub message: String,
}

/// A request method: those our servers route on, and any other as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`: answered like `GET`, without the body.
    Head,
    /// `POST`
    Post,
    /// Any other method.
    Other(String),
}

impl Method {
    fn parse(text: &str) -> Method {
        match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            other => Method::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Other(text) => text,
        })
    }
}

/// A request head, parsed and owned.
#[derive(Debug)]
struct Head {
    method: Method,
    target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    minor_version: u8,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// How a request's body is framed, and whether the connection may carry another request.
struct Framing {
    length: u64,
    keep_alive: bool,
    expect_continue: bool,
}

/// Reads the framing from the head; a request we cannot frame is answered and its
/// connection closed.
fn framing(head: &Head) -> Result<Framing, Response> {
    if let Some(coding) = head.header("Transfer-Encoding") {
        return Err(if head.has_token("Transfer-Encoding", "chunked") {
            Response::error(
                411,
                "chunked request bodies are not accepted: send the body with a Content-Length header",
            )
        } else {
            Response::error(
                501,
                format!(
                    "Transfer-Encoding {coding:?} is not supported: send the body with a Content-Length header"
                ),
            )
        });
    }
    let mut length = None;
    for (_, value) in head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
    {
        let parsed = value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|_| value.trim().bytes().all(|b| b.is_ascii_digit()));
        match (parsed, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(m)) if n == m => {}
            _ => {
                return Err(Response::error(
                    400,
                    format!("invalid Content-Length {value:?}: give one decimal number of bytes"),
                ));
            }
        }
    }
    let keep_alive = head.minor_version >= 1 && !head.has_token("Connection", "close");
    Ok(Framing {
        length: length.unwrap_or(0),
        keep_alive,
        expect_continue: head.has_token("Expect", "100-continue"),
    })
}

/// Why reading or writing a connection stopped.
#[derive(Debug)]
enum Failure {
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
struct Socket {
    stream: TcpStream,
    stop: Arc<AtomicBool>,
    /// The read timeout last set, to skip setting it again.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
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
    fn read_by(&mut self, into: &mut [u8], deadline: Instant) -> Result<usize, Failure> {
        loop {
            if self.stop.load(Ordering::SeqCst) {
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
    fn write_all(&mut self, parts: &[&[u8]], per_write: Duration) -> Result<(), Failure> {
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

/// A timed-out blocking read or write: `WouldBlock` on Unix, `TimedOut` on Windows.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// The extra time `bytes` may take at [`MIN_TRANSFER_RATE`].
fn transfer_allowance(bytes: u64) -> Duration {
    Duration::from_secs_f64(bytes as f64 / MIN_TRANSFER_RATE)
}

/// Closes after our last answer: no more writes, then a short wait for the client to
/// close first, reading and dropping what it still sends (see [`CLOSE_LINGER`]).
fn linger_close(stream: &TcpStream) {
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

/// The bytes of an answer's status line and header fields.
fn response_head(response: &Response, body_len: usize, close: bool) -> String {
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        httpdate::fmt_http_date(SystemTime::now()),
        response.content_type,
        body_len,
    );
    for (name, value) in &response.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// The reason phrase of the statuses we send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// Log lines about failing connections, at most [`LOG_LINES_PER_SEC`] a second.
struct Log {
    program: &'static str,
    window: Mutex<(Instant, u32)>,
}

impl Log {
    fn line(&self, text: std::fmt::Arguments<'_>) {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        window.1 += 1;
        match window.1 {
            n if n <= LOG_LINES_PER_SEC => eprintln!("{}: {text}", self.program),
            n if n == LOG_LINES_PER_SEC + 1 => eprintln!(
                "{}: more failing connections this second are not logged",
                self.program
            ),
            _ => {}
        }
    }
}

/// Connections open per client address.
#[derive(Default)]
struct OpenConns(Mutex<HashMap<IpAddr, usize>>);

/// One open connection counted in [`OpenConns`], uncounted when dropped.
struct Counted<'a> {
    open: &'a OpenConns,
    key: IpAddr,
}

impl OpenConns {
    /// Counts a connection from `key`, unless `cap` are open already (then: how many).
    fn enter(&self, key: IpAddr, cap: usize) -> Result<Counted<'_>, usize> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = map.entry(key).or_insert(0);
        if cap > 0 && *count >= cap {
            return Err(*count);
        }
        *count += 1;
        Ok(Counted { open: self, key })
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        let mut map = self.open.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = map.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// An accepted connection on its way to a worker.
struct Accepted<'a> {
    stream: TcpStream,
    remote: SocketAddr,
    _counted: Counted<'a>,
}

/// A request: method, target, header fields, the client's address, and a body read on
/// demand with [`Request::body`].
pub struct Request<'c> {
    head: Head,
    conn: &'c mut Conn,
    length: u64,
    /// Body bytes taken from the connection so far.
    received: u64,
    expect_continue: bool,
    /// Whether "100 Continue" was sent.
    continued: bool,
    /// Whether reading the body failed, leaving the connection unusable.
    broken: bool,
    deadline: Instant,
}

impl Request<'_> {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The request target, as sent: `/assets?x=1`.
    pub fn url(&self) -> &str {
        &self.head.target
    }

    /// The target without its query: `/assets`.
    pub fn path(&self) -> &str {
        self.head.target.split('?').next().unwrap_or("")
    }

    /// The value of the first header field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote
    }

    /// The body's length, from `Content-Length` (0 without one).
    pub fn body_length(&self) -> u64 {
        self.length
    }

    /// Reads the whole body. One longer than `limit` is refused (413) before a byte of it is
    /// read or allocated; a client that asked with `Expect: 100-continue` is told to send it
    /// only once it fits.
    pub fn body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let length = self.length;
        if length > limit as u64 {
            return Err(BodyError {
                status: 413,
                message: format!(
                    "request body is {length} bytes, larger than the {limit} bytes allowed"
                ),
            });
        }
        if self.received > 0 || self.broken {
            return Err(BodyError {
                status: 500,
                message: "the request body was already read".into(),
            });
        }
        // Memory grows with the bytes that arrive, not with the length a client claims.
        let mut body = Vec::with_capacity(length.min(MAX_BODY_PREALLOCATION) as usize);
        self.take_body(length, |bytes| body.extend_from_slice(bytes))?;
        Ok(body)
    }

    /// Takes `count` body bytes from the connection, passing them to `sink`.
    fn take_body(&mut self, count: u64, mut sink: impl FnMut(&[u8])) -> Result<(), BodyError> {
        let conn = &mut *self.conn;
        let buffered = ((conn.filled - conn.pos) as u64).min(count) as usize;
        sink(&conn.buf[conn.pos..conn.pos + buffered]);
        conn.pos += buffered;
        self.received += buffered as u64;
        let end = self.received + (count - buffered as u64);
        if self.received < end && self.expect_continue && !self.continued {
            self.continued = true;
            let per_write = conn.write_timeout;
            if let Err(e) = conn
                .socket
                .write_all(&[b"HTTP/1.1 100 Continue\r\n\r\n"], per_write)
            {
                self.broken = true;
                return Err(body_failure(e, self.received, self.length));
            }
        }
        let mut scratch = [0u8; 16 << 10];
        while self.received < end {
            let want = ((end - self.received) as usize).min(scratch.len());
            match conn.socket.read_by(&mut scratch[..want], self.deadline) {
                Ok(n) => {
                    sink(&scratch[..n]);
                    self.received += n as u64;
                    self.deadline += transfer_allowance(n as u64);
                }
                Err(e) => {
                    self.broken = true;
                    return Err(body_failure(e, self.received, self.length));
                }
            }
        }
        Ok(())
    }

    /// Makes the connection ready for its next request by dropping a small unread body;
    /// false when it must close instead.
    fn finish(&mut self) -> bool {
        let left = self.length - self.received;
        if self.broken {
            return false;
        }
        if left == 0 {
            return true;
        }
        // A client that asked before sending may send the body or not: nothing tells which
        // bytes come next, so the connection cannot carry another request.
        if self.expect_continue && !self.continued && self.conn.filled == self.conn.pos {
            return false;
        }
        left <= MAX_DISCARD && self.take_body(left, |_| {}).is_ok()
    }
}

/// The error for a body that could not be read.
fn body_failure(failure: Failure, received: u64, length: u64) -> BodyError {
    let (status, message) = match failure {
        Failure::Timeout => (
            408,
            format!("the request body did not arrive in time: {received} of {length} bytes came"),
        ),
        Failure::Closed => (
            400,
            format!("the connection closed after {received} of {length} body bytes"),
        ),
        Failure::Stopped => (503, "the server is shutting down".to_string()),
        Failure::Io(e) => (400, format!("reading the request body failed: {e}")),
    };
    BodyError { status, message }
}

/// A connection being served: its socket and the buffer its request heads are read into.
struct Conn {
    socket: Socket,
    remote: SocketAddr,
    request_timeout: Duration,
    write_timeout: Duration,
    buf: Vec<u8>,
    /// Where the unconsumed bytes in `buf` start and end.
    pos: usize,
    filled: usize,
}

/// How waiting for a request ended without one.
enum NoRequest {
    /// Closed, quietly: the client went, the server stops, or the connection gave way to
    /// waiting ones.
    Quiet,
    /// Silent past its deadline.
    Timeout,
}

impl Conn {
    /// Waits up to `limit` for the first byte of a request. When connections wait for a
    /// worker, a silent one gives its worker up after [`IDLE_UNDER_PRESSURE`].
    fn wait_for_request(
        &mut self,
        limit: Duration,
        queue: &Receiver<Accepted<'_>>,
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
    fn read_head(&mut self, deadline: Instant) -> Result<Head, (Option<Response>, String)> {
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
    fn send(&mut self, response: &Response, close: bool, head_only: bool) -> Result<(), Failure> {
        let body: &[u8] = if head_only { &[] } else { &response.body };
        let head = response_head(response, response.body.len(), close);
        let per_write = self.write_timeout;
        self.socket.write_all(&[head.as_bytes(), body], per_write)
    }
}

impl HttpServer {
    /// Binds `config.listen`.
    pub fn bind(config: HttpConfig) -> Result<HttpServer> {
        let listener = TcpListener::bind(config.listen).with_context(|| {
            format!(
                "binding {} to {} (is another process using it?)",
                config.what, config.listen
            )
        })?;
        let addr = listener
            .local_addr()
            .with_context(|| format!("reading the address {} is bound to", config.what))?;
        Ok(HttpServer {
            listener,
            addr,
            config,
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops [`HttpServer::serve`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            stop: Arc::clone(&self.stop),
            addr: self.addr,
        }
    }

    /// Answers requests with `handler` until shut down, then joins its threads and returns.
    /// A handler that panics gets its client a 500 and its connection closed.
    pub fn serve<H>(self, handler: H) -> Result<()>
    where
        H: Fn(&mut Request<'_>) -> Response + Sync,
    {
        let config = &self.config;
        let open = OpenConns::default();
        let log = Log {
            program: config.program,
            window: Mutex::new((Instant::now(), 0)),
        };
        let (conn_tx, conn_rx) = bounded::<Accepted<'_>>(config.queue.max(1));
        let (refuse_tx, refuse_rx) = bounded::<(TcpStream, Response)>(REFUSAL_QUEUE);
        std::thread::scope(|scope| {
            for _ in 0..config.workers.max(1) {
                let (rx, handler, log) = (conn_rx.clone(), &handler, &log);
                let this = &self;
                scope.spawn(move || {
                    for accepted in rx.iter() {
                        this.serve_connection(accepted, &rx, handler, log);
                    }
                });
            }
            for _ in 0..REFUSERS {
                let rx = refuse_rx.clone();
                scope.spawn(move || {
                    for (stream, response) in rx {
                        refuse_now(&stream, &response);
                    }
                });
            }
            self.accept_loop(&open, &log, conn_tx, refuse_tx);
        });
        Ok(())
    }

    fn accept_loop<'a>(
        &self,
        open: &'a OpenConns,
        log: &Log,
        conn_tx: Sender<Accepted<'a>>,
        refuse_tx: Sender<(TcpStream, Response)>,
    ) {
        let config = &self.config;
        let refuse = |stream: TcpStream, response: Response| {
            // With every refuser busy and the queue full, a flood is closed unanswered.
            let _ = refuse_tx.try_send((stream, response));
        };
        for stream in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(stream) => stream,
                Err(e) => {
                    log.line(format_args!("accepting a connection failed: {e}"));
                    std::thread::sleep(ACCEPT_BACKOFF);
                    continue;
                }
            };
            let Ok(remote) = stream.peer_addr() else {
                continue; // gone already
            };
            // No socket is ever without timeouts; workers and refusers narrow them.
            let _ = stream.set_read_timeout(Some(config.request_timeout));
            let _ = stream.set_write_timeout(Some(config.write_timeout));
            // Answers leave in one write, but a head and a large body may be two segments;
            // without this the second waits for the client's delayed ACK (40 ms).
            let _ = stream.set_nodelay(true);
            let key = client_key(remote.ip());
            let counted = match open.enter(key, config.max_conns_per_ip) {
                Ok(counted) => counted,
                Err(count) => {
                    log.line(format_args!(
                        "{remote}: refused, {count} connections from {key} are open already"
                    ));
                    let message = format!(
                        "too many connections from {key}: {count} are open, and {} allows {} per address; close idle ones or retry later",
                        config.what, config.max_conns_per_ip
                    );
                    refuse(
                        stream,
                        Response::error(429, message).with_header("Retry-After", "1"),
                    );
                    continue;
                }
            };
            let accepted = Accepted {
                stream,
                remote,
                _counted: counted,
            };
            match conn_tx.try_send(accepted) {
                Ok(()) => {}
                Err(TrySendError::Full(accepted) | TrySendError::Disconnected(accepted)) => {
                    log.line(format_args!("{remote}: refused, every worker is busy"));
                    let message = format!(
                        "{} is busy: all {} workers are taken and {} connections wait; retry in a moment",
                        config.what,
                        config.workers.max(1),
                        config.queue.max(1)
                    );
                    let Accepted { stream, .. } = accepted;
                    refuse(
                        stream,
                        Response::error(503, message).with_header("Retry-After", "1"),
                    );
                }
            }
        }
    }

    /// Serves one connection's requests until it closes, fails or gives way.
    fn serve_connection<H>(
        &self,
        accepted: Accepted<'_>,
        queue: &Receiver<Accepted<'_>>,
        handler: &H,
        log: &Log,
    ) where
        H: Fn(&mut Request<'_>) -> Response + Sync,
    {
        let config = &self.config;
        let remote = accepted.remote;
        let mut conn = Conn {
            socket: Socket {
                stream: accepted.stream,
                stop: Arc::clone(&self.stop),
                read_timeout: None,
                write_timeout: None,
            },
            remote,
            request_timeout: config.request_timeout,
            write_timeout: config.write_timeout,
            buf: vec![0; MAX_HEAD],
            pos: 0,
            filled: 0,
        };
        let picked_up = Instant::now();
        let mut first = true;
        loop {
            // A connection's first request must arrive within the request timeout of the
            // connection being taken up; later ones may follow an idle pause.
            let limit = if first {
                config.request_timeout
            } else {
                config.idle_timeout
            };
            let started = match conn.wait_for_request(limit, queue) {
                Ok(started) => started,
                Err(NoRequest::Timeout) if first => {
                    let message = format!(
                        "no request within {:?} of connecting; closing",
                        config.request_timeout
                    );
                    log.line(format_args!("{remote}: {message}"));
                    let _ = conn.send(&Response::error(408, message), true, false);
                    linger_close(&conn.socket.stream);
                    return;
                }
                Err(_) => return,
            };
            let deadline = if first { picked_up } else { started } + config.request_timeout;
            first = false;
            let head = match conn.read_head(deadline) {
                Ok(head) => head,
                Err((answer, message)) => {
                    if !message.is_empty() {
                        log.line(format_args!("{remote}: {message}"));
                    }
                    if let Some(answer) = answer {
                        let _ = conn.send(&answer, true, false);
                        linger_close(&conn.socket.stream);
                    }
                    return;
                }
            };
            let framing = match framing(&head) {
                Ok(framing) => framing,
                Err(answer) => {
                    let _ = conn.send(&answer, true, false);
                    linger_close(&conn.socket.stream);
                    return;
                }
            };
            let head_only = head.method == Method::Head;
            let mut request = Request {
                head,
                conn: &mut conn,
                length: framing.length,
                received: 0,
                expect_continue: framing.expect_continue,
                continued: false,
                broken: false,
                deadline,
            };
            let response =
                catch_unwind(AssertUnwindSafe(|| handler(&mut request))).unwrap_or_else(|_| {
                    request.broken = true;
                    Response::error(500, "internal error while answering; see the server's log")
                });
            let keep = framing.keep_alive && request.finish() && !self.stop.load(Ordering::SeqCst);
            if let Err(e) = conn.send(&response, !keep, head_only) {
                log.line(format_args!("{remote}: answering failed: {e}"));
                return;
            }
            if !keep {
                linger_close(&conn.socket.stream);
                return;
            }
        }
    }
}

/// Answers a refused connection and closes it.
fn refuse_now(stream: &TcpStream, response: &Response) {
    let head = response_head(response, response.body.len(), true);
    let _ = stream.set_write_timeout(Some(CLOSE_LINGER));
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(&response.body);
    let _ = (&*stream).write_all(&bytes);
    linger_close(stream);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    /// A server on 127.0.0.1:0 whose handler echoes method, path and body; it stops when
    /// the returned handle is dropped and `serve` is joined by the guard.
    struct TestServer {
        addr: SocketAddr,
        stop: ShutdownHandle,
        done: Option<std::thread::JoinHandle<()>>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.shutdown();
            if let Some(done) = self.done.take() {
                let _ = done.join();
            }
        }
    }

    fn start(config: impl FnOnce(&mut HttpConfig)) -> TestServer {
        let mut c = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server", "test");
        c.request_timeout = Duration::from_secs(5);
        config(&mut c);
        let server = HttpServer::bind(c).unwrap();
        let (addr, stop) = (server.local_addr(), server.shutdown_handle());
        let done = std::thread::spawn(move || {
            server
                .serve(|request| {
                    if request.path() == "/panic" {
                        panic!("a handler that panics");
                    }
                    let body = match request.body(100) {
                        Ok(body) => body,
                        Err(e) => return Response::error(e.status, e.message),
                    };
                    let text = format!(
                        "{} {} {}",
                        request.method(),
                        request.path(),
                        String::from_utf8_lossy(&body)
                    );
                    Response::new(200, "text/plain", text)
                })
                .unwrap();
        });
        TestServer {
            addr,
            stop,
            done: Some(done),
        }
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
    }

    /// Reads one answer: status, header fields (lowercase names), body.
    fn read_answer(reader: &mut impl BufRead) -> (u16, Vec<(String, String)>, String) {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let status = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_else(|| panic!("no status line: {line:?}"))
            .parse()
            .unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        (status, headers, String::from_utf8(body).unwrap())
    }

    fn closed(reader: &mut impl Read) -> bool {
        let mut byte = [0u8; 1];
        matches!(reader.read(&mut byte), Ok(0) | Err(_))
    }

    #[test]
    fn keep_alive_pipelining_bodies_and_connection_close() {
        let server = start(|_| {});
        let mut stream = connect(server.addr);
        // Two pipelined requests in one write, the first with a body, then a third that
        // asks to close.
        stream
            .write_all(
                b"POST /a HTTP/1.1\r\nHost: x\r\ncontent-length: 5\r\n\r\nhelloGET /b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n",
            )
            .unwrap();
        let mut reader = io::BufReader::new(stream.try_clone().unwrap());
        let (status, headers, body) = read_answer(&mut reader);
        assert_eq!((status, body.as_str()), (200, "POST /a hello"));
        assert!(headers.iter().any(|(n, _)| n == "date"), "{headers:?}");
        assert!(!headers.iter().any(|(n, _)| n == "connection"));
        assert_eq!(read_answer(&mut reader).2, "GET /b ");
        stream
            .write_all(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (_, headers, body) = read_answer(&mut reader);
        assert_eq!(body, "GET /c ");
        assert!(headers.contains(&("connection".into(), "close".into())));
        assert!(closed(&mut reader), "closed after Connection: close");
        // HTTP/1.0 closes after one answer; HEAD gets the head alone.
        let mut stream = connect(server.addr);
        stream.write_all(b"HEAD /d HTTP/1.0\r\n\r\n").unwrap();
        let mut reader = io::BufReader::new(stream);
        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body after a HEAD: {text:?}");
    }

    #[test]
    fn bodies_over_the_limit_are_refused_before_they_are_sent() {
        let server = start(|_| {});
        let mut stream = connect(server.addr);
        stream
            .write_all(
                b"POST /big HTTP/1.1\r\nContent-Length: 1000000000\r\nExpect: 100-continue\r\n\r\n",
            )
            .unwrap();
        let mut reader = io::BufReader::new(stream.try_clone().unwrap());
        let (status, headers, body) = read_answer(&mut reader);
        assert_eq!(status, 413, "{body}");
        assert!(body.contains("larger than the 100 bytes allowed"), "{body}");
        assert!(headers.contains(&("connection".into(), "close".into())));
        // With Expect: 100-continue and a body that fits, the client is told to go on.
        let mut stream = connect(server.addr);
        stream
            .write_all(b"POST /ok HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut reader = io::BufReader::new(stream.try_clone().unwrap());
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 100 Continue\r\n");
        reader.read_line(&mut line).unwrap();
        stream.write_all(b"ok").unwrap();
        assert_eq!(read_answer(&mut reader).2, "POST /ok ok");
    }

    #[test]
    fn unframeable_and_malformed_requests_get_clear_errors() {
        let server = start(|_| {});
        let cases: [(&[u8], u16, &str); 5] = [
            (
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                411,
                "Content-Length",
            ),
            (
                b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                501,
                "not supported",
            ),
            (
                b"POST /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                400,
                "HTTP/1.1",
            ),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400, "HTTP/2"),
        ];
        for (bytes, status, words) in cases {
            let mut stream = connect(server.addr);
            stream.write_all(bytes).unwrap();
            let mut reader = io::BufReader::new(stream);
            let (got, _, body) = read_answer(&mut reader);
            let what = String::from_utf8_lossy(bytes);
            assert_eq!(got, status, "{what:?}: {body}");
            assert!(body.contains(words), "{what:?}: {body}");
            assert!(closed(&mut reader), "{what:?}: closed after the error");
        }
        // A head past the limit, and one with too many fields.
        for head in [
            format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD)),
            format!(
                "GET / HTTP/1.1\r\n{}\r\n",
                "X: y\r\n".repeat(MAX_HEADERS + 1)
            ),
        ] {
            let mut stream = connect(server.addr);
            let _ = stream.write_all(head.as_bytes());
            let (status, _, body) = read_answer(&mut io::BufReader::new(stream));
            assert_eq!(status, 431, "{body}");
        }
        // A panicking handler costs its client a 500, and the server keeps serving.
        let mut stream = connect(server.addr);
        stream.write_all(b"GET /panic HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_answer(&mut io::BufReader::new(stream)).0, 500);
        let mut stream = connect(server.addr);
        stream.write_all(b"GET /fine HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_answer(&mut io::BufReader::new(stream)).0, 200);
    }

    /// Connects and waits up to 300 ms for an unasked answer: a refusal's status line.
    fn refused_at_once(addr: SocketAddr) -> Result<(String, String), TcpStream> {
        let stream = connect(addr);
        stream
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut reader = io::BufReader::new(stream);
        let mut line = String::new();
        if reader.read_line(&mut line).is_ok() && !line.is_empty() {
            let mut rest = String::new();
            reader.read_to_string(&mut rest).unwrap();
            return Ok((line, rest));
        }
        let stream = reader.into_inner();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        Err(stream)
    }

    #[test]
    fn a_full_queue_answers_503_and_silent_connections_give_way() {
        let server = start(|c| {
            c.workers = 1;
            c.queue = 1;
        });
        // The one worker is taken by a client in the middle of its second request's head
        // (the answer to its first shows the worker has it); the next connection waits in
        // the queue, and the one after finds it full.
        let mut slow = connect(server.addr);
        slow.write_all(b"GET /first HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_answer(&mut io::BufReader::new(&slow)).0, 200);
        slow.write_all(b"GET /slow HTTP/1.1\r\n").unwrap();
        let queued = refused_at_once(server.addr).expect_err("the first waits in the queue");
        let (line, rest) = refused_at_once(server.addr).expect("the second is refused");
        assert!(line.starts_with("HTTP/1.1 503"), "{line}");
        assert!(rest.contains("retry in a moment"), "{rest}");
        // The slow client finishes and is answered, then its kept-alive connection, silent,
        // gives the worker up to the one waiting.
        slow.write_all(b"\r\n").unwrap();
        assert_eq!(read_answer(&mut io::BufReader::new(&slow)).2, "GET /slow ");
        let mut queued = queued;
        queued.write_all(b"GET /next HTTP/1.1\r\n\r\n").unwrap();
        let answer = read_answer(&mut io::BufReader::new(&queued));
        assert_eq!(answer.2, "GET /next ");
        assert!(closed(&mut slow), "the idle connection gave way");
    }

    #[test]
    fn the_per_address_cap_refuses_with_429_and_frees_slots_on_close() {
        let server = start(|c| c.max_conns_per_ip = 2);
        let held: Vec<TcpStream> = (0..2).map(|_| connect(server.addr)).collect();
        let (line, rest) = refused_at_once(server.addr).expect("a refusal past the cap");
        assert!(line.starts_with("HTTP/1.1 429"), "{line}");
        assert!(
            rest.contains("too many connections from 127.0.0.1"),
            "{rest}"
        );
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut stream = connect(server.addr);
            stream.write_all(b"GET /again HTTP/1.1\r\n\r\n").unwrap();
            let (status, _, _) = read_answer(&mut io::BufReader::new(stream));
            if status == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "slots never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn shutdown_returns_from_serve_with_connections_open() {
        let config = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server", "test");
        let server = HttpServer::bind(config).unwrap();
        let (addr, stop) = (server.local_addr(), server.shutdown_handle());
        let (done_tx, done) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let result = server.serve(|_| Response::new(200, "text/plain", "ok"));
            let _ = done_tx.send(result.is_ok());
        });
        // One kept-alive connection between requests, one in the middle of a head, one
        // that never said anything.
        let mut idle = connect(addr);
        idle.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_answer(&mut io::BufReader::new(&idle)).0, 200);
        let mut partial = connect(addr);
        partial.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        let _silent = connect(addr);
        let asked = Instant::now();
        stop.shutdown();
        assert_eq!(
            done.recv_timeout(Duration::from_secs(5)),
            Ok(true),
            "serve returns"
        );
        assert!(
            asked.elapsed() < Duration::from_secs(2),
            "{:?}",
            asked.elapsed()
        );
        assert!(closed(&mut idle) && closed(&mut partial));
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
            "the listener is closed"
        );
    }
}
