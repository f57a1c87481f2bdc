//! The HTTP/1.1 server under the tracker's API, the gateway and the peer server's metrics
//! endpoint.
//! Our own because no blocking HTTP server crate bounds how long a client may take to send
//! its request (tiny_http has no read deadlines), and a tracker handed to hostile token
//! holders needs that bound. Request heads are parsed by `httparse` (hyper's parser);
//! bodies come with a `Content-Length` or not at all; an answer's body is a buffer, or is
//! streamed by the handler's code under the write deadline (a gateway's Range answer).
//!
//! Workers are held by requests, not by connections. One poller thread (`poller`) holds
//! every connection that has no whole request in one `epoll` set: new ones, idle
//! kept-alive ones, and ones whose head (or small body) is still trickling in. It reads
//! them without blocking, and only once a whole request has arrived does it hand the
//! connection to one of a fixed pool of workers, which answers it and then looks for the
//! next request on the same connection for up to [`FOLLOW_UP`] before giving the connection
//! back, so a busy kept-alive client costs no trip through the poller per request. An idle
//! connection costs a few hundred bytes and no thread, a trickling one the bytes it sent.
//!
//! Everything a client controls is bounded: how long it takes to send a request (from its
//! first byte), how long it idles between requests, how long it leaves an answer unread,
//! how large a head or a body may be, how many requests one connection carries, how many
//! connections one address holds, and how many are open in all (within the file
//! descriptors the process may open). Past a bound the client is answered 408, 429 or 503;
//! 503 also when more whole requests wait for a worker than the queue holds. Refusals are
//! written by a pool of two threads, so the poller never waits on a client.
//!
//! With [`HttpConfig::tls`] the server speaks HTTPS (rustls) on the same connections,
//! deadlines and caps: the handshake is read and written by the poller without blocking,
//! and counts against the request deadline from the accept, so a client that stalls it
//! holds no worker; `tls` says where the session lives and why. A client that speaks plain
//! HTTP to it is answered 400 in plain HTTP, saying to use `https://`.
//! [`Request::is_tls`] tells a handler which transport a request came over.
//!
//! Rooms: `head` (methods, heads, body framing, whether buffered bytes hold a request:
//! pure), `request` (what a handler reads, bodies), `response` (answers), `conn` (one
//! connection's socket, TLS session, deadlines and buffer), `poller` (the thread that holds
//! connections between requests), `tls` (certificates and keys, refusals before a
//! handshake); this file has the workers.

mod conn;
mod head;
mod poller;
mod request;
mod response;
pub mod tls;

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

pub use crate::net::ShutdownHandle;
use crate::net::{Listener, Refusals};
use crate::sync::LockExt;
use conn::{Conn, Failure};
pub use head::Method;
use head::Parsed;
use poller::{Back, Job, Poller};
pub use request::{BodyError, Request};
pub use response::{BodyWriter, Response, error_body};

/// Default time a client has to send a whole request, head and body, from its first byte
/// (from the connection being accepted, for its first request). Requests are a few hundred
/// bytes sent at once, so 10 s only ever cuts off the stuck and the hostile; a client that
/// dribbles a byte a second gets no longer (only body bytes push the deadline back, at
/// 256 KiB/s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a kept-alive connection may sit idle between requests: our own clients open
/// a connection per request, and pooling clients reconnect when they find one closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a client may leave our answer unread (no progress in one write) before its
/// connection is dropped: generous for any client, short enough that a stalled one cannot
/// keep a worker for long.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default connections one client address (see [`crate::ratelimit::client_key`]) may hold at once. Our clients
/// open one per request, so a machine running several downloads rarely has more than one
/// or two open; 8 leaves room for a small NAT.
pub const DEFAULT_MAX_CONNS_PER_IP: usize = 8;
/// Default connections open at once, idle ones included. An idle connection costs the
/// poller a few hundred bytes, so the bound is file descriptors, not memory: 4 096 holds a
/// fleet of a thousand hosts with a kept-alive connection or two each, and a crowd
/// connecting on top. It is lowered to what `ulimit -n` allows (see `FD_RESERVE`).
pub const DEFAULT_MAX_CONNS: usize = 4096;
/// Default worker threads, what an endpoint scraped every few seconds needs; a busy
/// server sets its own.
pub const DEFAULT_WORKERS: usize = 2;
/// Default whole requests that may wait for a worker before newcomers are told it is busy.
pub const DEFAULT_QUEUE: usize = 8;
/// Largest request head (request line and header fields). Ours are under 300 bytes; 16 KiB
/// is what common proxies accept.
pub const MAX_HEAD: usize = 16 << 10;
/// Requests one connection carries; the answer to the last says `Connection: close`. A
/// kept-alive client announcing twice a second reconnects every eight minutes, and a
/// benchmark client at 5 000 requests a second five times a second, which costs it
/// 0.1 % (a reconnect is tens of microseconds on a LAN). The cap keeps a connection from
/// living for ever: clients come back through the accept (and its caps) now and then, so a
/// tracker behind a load balancer gets its share of them again, and what one connection
/// holds is given back. 1 000 is what nginx settled on (`keepalive_requests`).
pub const MAX_REQUESTS_PER_CONN: u32 = 1000;
/// How long a worker that has answered waits for the next request on the same connection
/// before giving the connection back to the poller. A client that keeps its connection
/// busy sends its next request as soon as it has read our answer: on loopback or a LAN
/// that is tens to a few hundred microseconds, longer only when the client waits for a CPU
/// (our benchmark shares two cores with the tracker). One millisecond catches those, while
/// a client over a WAN (its next request a round trip away at least) is handed back. Each
/// request not followed costs a worker this long at most, and only while no other request
/// waits for a worker (otherwise the connection is handed back at once). Waiting in
/// `poll(2)` is exact to microseconds, unlike a socket timeout, which Linux rounds up to a
/// scheduler tick (4 ms at 250 Hz).
pub const FOLLOW_UP: Duration = Duration::from_millis(1);
/// File descriptors kept for everything but connections: the listener and the poller's set,
/// the refusals queued (66 at most), the catalog's files, logs. The connection cap is the
/// descriptor limit less these.
const FD_RESERVE: u64 = 256;
/// Threads that answer refused connections. A refusal takes one write and, usually, a
/// moment for the client to close; two keep up with a flood while the poller never waits
/// on a client.
const REFUSERS: usize = 2;
/// Refused connections waiting for a refuser; past this many they are closed unanswered.
const REFUSAL_QUEUE: usize = 64;
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
    /// Worker threads: requests answered at once.
    pub workers: usize,
    /// Whole requests that may wait for a worker; past this, they are answered 503.
    pub queue: usize,
    /// Connections one client address may hold at once; 0 for no limit.
    pub max_conns_per_ip: usize,
    /// Connections open at once (see [`DEFAULT_MAX_CONNS`]); past it, newcomers get a 503.
    pub max_conns: usize,
    /// Time to send a whole request (see [`DEFAULT_REQUEST_TIMEOUT`]).
    pub request_timeout: Duration,
    /// Time a kept-alive connection may idle between requests.
    pub idle_timeout: Duration,
    /// Time a client may leave our answer unread.
    pub write_timeout: Duration,
    /// Serve HTTPS with this certificate and key (see [`tls::server_config`]); `None`:
    /// plain HTTP.
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
}

impl HttpConfig {
    /// The defaults: see the `DEFAULT_…` constants.
    pub fn new(listen: SocketAddr, what: &'static str) -> HttpConfig {
        HttpConfig {
            listen,
            what,
            workers: DEFAULT_WORKERS,
            queue: DEFAULT_QUEUE,
            max_conns_per_ip: DEFAULT_MAX_CONNS_PER_IP,
            max_conns: DEFAULT_MAX_CONNS,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            tls: None,
        }
    }
}

/// A bound HTTP server, ready to [`HttpServer::serve`].
#[derive(Debug)]
pub struct HttpServer {
    listener: Listener,
    config: HttpConfig,
    stop: ShutdownHandle,
}

/// Log lines about failing connections, at most [`LOG_LINES_PER_SEC`] a second.
struct Log {
    window: Mutex<(Instant, u32)>,
}

impl Log {
    fn line(&self, text: std::fmt::Arguments<'_>) {
        let mut window = self.window.locked();
        let now = Instant::now();
        if now.duration_since(window.0) >= Duration::from_secs(1) {
            *window = (now, 0);
        }
        window.1 += 1;
        match window.1 {
            n if n <= LOG_LINES_PER_SEC => log::warn!("{text}"),
            n if n == LOG_LINES_PER_SEC + 1 => {
                log::warn!("more failing connections this second are not logged")
            }
            _ => {}
        }
    }
}

/// The cap on open connections with `soft` file descriptors allowed (`None`: no limit):
/// `wanted`, or the limit less [`FD_RESERVE`] (half the limit, when it is that small).
fn cap_within(wanted: usize, soft: Option<u64>) -> usize {
    let Some(soft) = soft else {
        return wanted.max(1);
    };
    let room = if soft > 2 * FD_RESERVE {
        soft - FD_RESERVE
    } else {
        soft / 2
    };
    wanted
        .min(usize::try_from(room).unwrap_or(usize::MAX))
        .max(1)
}

/// The cap on open connections for `config`: the process's soft limit on file descriptors
/// is raised, within the hard one, to fit `max_conns` (as Go's runtime does at start; the
/// common default of 1 024 is far below what a server needs, and nothing here uses
/// `select(2)`), and the cap lowered to what the limit allows, so that past it newcomers
/// are refused with a 503 rather than accepts failing.
fn connection_cap(config: &HttpConfig) -> usize {
    let wanted = config.max_conns.max(1);
    let needed = wanted as u64 + FD_RESERVE;
    let limit = getrlimit(Resource::Nofile);
    let mut soft = limit.current;
    if let Some(current) = soft.filter(|&current| current < needed) {
        let raised = limit.maximum.map_or(needed, |hard| hard.min(needed));
        let new = Rlimit {
            current: Some(raised),
            maximum: limit.maximum,
        };
        if raised > current && setrlimit(Resource::Nofile, new).is_ok() {
            soft = Some(raised);
        }
    }
    let cap = cap_within(wanted, soft);
    if cap < wanted {
        log::warn!(
            "{} takes at most {cap} connections, not {wanted}: the process may open {} files (raise `ulimit -n`)",
            config.what,
            soft.unwrap_or(0)
        );
    }
    cap
}

/// What a request left its connection fit for.
enum After {
    /// Another request.
    Keep,
    /// Nothing more: the answer is out, the connection is closed.
    Closed,
}

/// How looking for the next request on a connection ended.
enum FollowUp {
    /// It came: serve it.
    Next(Parsed),
    /// Not yet: back to the poller.
    HandBack,
    /// The client went, or the server stops.
    Close,
}

impl HttpServer {
    /// Binds `config.listen`.
    pub fn bind(config: HttpConfig) -> Result<HttpServer> {
        let listener = Listener::bind(config.listen).with_context(|| {
            format!(
                "binding {} to {} (is another process using it?)",
                config.what, config.listen
            )
        })?;
        Ok(HttpServer {
            listener,
            config,
            stop: ShutdownHandle::new(),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// A handle that stops [`HttpServer::serve`]: it stops accepting within 100 ms, and
    /// returns once the requests under way are answered; connections waiting for their
    /// next request are closed within 100 ms.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.stop.clone()
    }

    /// Answers requests with `handler` until shut down, then joins its threads and returns.
    /// A handler that panics gets its client a 500 and its connection closed.
    pub fn serve<H>(self, handler: H) -> Result<()>
    where
        H: Fn(&mut Request<'_>) -> Response + Sync,
    {
        let config = &self.config;
        let epoll = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
            .with_context(|| format!("creating the epoll set of {}", config.what))?;
        let log = Log {
            window: Mutex::new((Instant::now(), 0)),
        };
        let max_conns = connection_cap(config);
        let (ready_tx, ready_rx) = bounded::<Job>(config.queue.max(1));
        // One message at most per open connection is ever in flight.
        let (back_tx, back_rx) = unbounded::<Back>();
        let refusals = Refusals::start(REFUSERS, REFUSAL_QUEUE);
        let polled = std::thread::scope(|scope| {
            for _ in 0..config.workers.max(1) {
                let (ready, back) = (ready_rx.clone(), back_tx.clone());
                let (this, handler, log, epoll) = (&self, &handler, &log, &epoll);
                scope.spawn(move || {
                    for job in ready.iter() {
                        this.work(job, &ready, &back, epoll, handler, log);
                    }
                });
            }
            drop((ready_rx, back_tx));
            let poller = Poller::new(
                &epoll,
                &self.listener,
                config,
                &self.stop,
                &log,
                &refusals,
                ready_tx,
                back_rx,
                max_conns,
            );
            poller.run()
        });
        polled.with_context(|| format!("waiting for connections to {}", config.what))
    }

    /// Serves a connection's requests as long as they come without waiting; then gives it
    /// back to the poller, or closes it.
    fn work<H>(
        &self,
        job: Job,
        ready: &Receiver<Job>,
        back: &Sender<Back>,
        epoll: &OwnedFd,
        handler: &H,
        log: &Log,
    ) where
        H: Fn(&mut Request<'_>) -> Response + Sync,
    {
        let Job {
            mut conn,
            mut parsed,
        } = job;
        let token = conn.token;
        while let After::Keep = self.answer(&mut conn, parsed, handler, log) {
            match self.follow_up(&mut conn, ready) {
                FollowUp::Next(next) => parsed = next,
                FollowUp::HandBack => {
                    conn.shed_buffer();
                    match poller::arm(epoll, &mut conn) {
                        // The poller takes it back; if it is gone, so is the connection.
                        Ok(()) => drop(back.send(Back::Conn(conn))),
                        Err(e) => {
                            let remote = conn.remote;
                            log.line(format_args!(
                                "{remote}: cannot give the connection back to the poller: {e}"
                            ));
                            drop(conn);
                            let _ = back.send(Back::Closed(token));
                        }
                    }
                    return;
                }
                FollowUp::Close => break,
            }
        }
        drop(conn);
        let _ = back.send(Back::Closed(token));
    }

    /// Answers the request `parsed` found at the start of `conn`'s buffer. The connection
    /// is closed (after the answer) unless it can carry another request.
    fn answer<H>(&self, conn: &mut Conn, parsed: Parsed, handler: &H, log: &Log) -> After
    where
        H: Fn(&mut Request<'_>) -> Response + Sync,
    {
        let remote = conn.remote;
        let (head, framing) = match parsed.outcome {
            Ok(request) => request,
            Err(bad) => {
                if !bad.log.is_empty() {
                    log.line(format_args!("{remote}: {}", bad.log));
                }
                let mut answer = bad.answer;
                if conn.send(&mut answer, true, false).is_ok() {
                    conn.close_after_answer();
                }
                return After::Closed;
            }
        };
        conn.pos += parsed.head_len;
        let deadline = conn.request_deadline();
        let head_only = head.method == Method::Head;
        let mut request = Request {
            head,
            conn: &mut *conn,
            length: framing.length,
            received: 0,
            expect_continue: framing.expect_continue,
            continued: false,
            broken: false,
            deadline,
        };
        let mut response =
            catch_unwind(AssertUnwindSafe(|| handler(&mut request))).unwrap_or_else(|_| {
                request.broken = true;
                Response::error(500, "internal error while answering; see the server's log")
            });
        let keep = framing.keep_alive
            && request.finish()
            && conn.served + 1 < MAX_REQUESTS_PER_CONN
            && !self.stop.is_shutdown();
        if let Err(e) = conn.send(&mut response, !keep, head_only) {
            log.line(format_args!("{remote}: answering failed: {e}"));
            return After::Closed;
        }
        if !keep {
            conn.close_after_answer();
            return After::Closed;
        }
        conn.answered();
        After::Keep
    }

    /// Looks for the next request on `conn`: already buffered, or arriving within
    /// [`FOLLOW_UP`] while no other request waits for a worker.
    fn follow_up(&self, conn: &mut Conn, ready: &Receiver<Job>) -> FollowUp {
        let until = Instant::now() + FOLLOW_UP;
        let mut looked = 0;
        loop {
            if let Some(parsed) = conn.next_request(looked, true) {
                return FollowUp::Next(parsed);
            }
            looked = conn.buf.len();
            if !ready.is_empty() || self.stop.is_shutdown() || Instant::now() >= until {
                return FollowUp::HandBack;
            }
            match conn.wait_more(until) {
                Ok(true) => {}
                Ok(false) => return FollowUp::HandBack,
                Err(Failure::Timeout) => return FollowUp::HandBack,
                Err(_) => return FollowUp::Close,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::head::MAX_HEADERS;
    use super::*;
    use std::io::{self, BufRead, Read, Write};
    use std::net::TcpStream;

    /// A server on 127.0.0.1:0 whose handler echoes method, path and body (and, for
    /// `/block`, waits to be released); it stops when the returned guard is dropped, which
    /// joins `serve`.
    struct TestServer {
        addr: SocketAddr,
        stop: ShutdownHandle,
        done: Option<std::thread::JoinHandle<()>>,
        /// A request for `/block` says so here, then waits for `release`.
        entered: Receiver<()>,
        release: Sender<()>,
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
        let mut c = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server");
        c.request_timeout = Duration::from_secs(5);
        config(&mut c);
        let server = HttpServer::bind(c).unwrap();
        let (addr, stop) = (server.local_addr(), server.shutdown_handle());
        let (entered_tx, entered) = bounded(8);
        let (release, release_rx) = bounded::<()>(8);
        let done = std::thread::spawn(move || {
            server
                .serve(|request| {
                    if request.path() == "/panic" {
                        panic!("a handler that panics");
                    }
                    if request.path() == "/block" {
                        let _ = entered_tx.send(());
                        let _ = release_rx.recv_timeout(Duration::from_secs(10));
                    }
                    let body = match request.body(100) {
                        Ok(body) => body,
                        Err(e) => return Response::error(e.status, e.message),
                    };
                    if request.path() == "/tls" {
                        return Response::new(200, "text/plain", format!("{}", request.is_tls()));
                    }
                    if let Some(size) = request.path().strip_prefix("/big/") {
                        let size: usize = size.parse().unwrap_or(0);
                        return Response::new(200, "text/plain", vec![b'x'; size]);
                    }
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
            entered,
            release,
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

    /// Sends `request` on `stream` and reads the answer in a thread, which reports it on
    /// `answers` with `name`.
    fn ask_in_thread(
        name: &'static str,
        mut stream: TcpStream,
        request: &'static [u8],
        answers: &Sender<(&'static str, u16, String)>,
    ) {
        let answers = answers.clone();
        std::thread::spawn(move || {
            stream.write_all(request).unwrap();
            let (status, _, body) = read_answer(&mut io::BufReader::new(stream));
            let _ = answers.send((name, status, body));
        });
    }

    #[test]
    fn idle_and_trickling_connections_hold_no_worker_and_a_full_queue_answers_503() {
        let server = start(|c| {
            c.workers = 1;
            c.queue = 1;
        });
        // A trickler in the middle of its head, and four kept-alive connections, each
        // answered once: with a worker per connection, the second would have waited in
        // the queue and the third been refused.
        let mut slow = connect(server.addr);
        slow.write_all(b"GET /slow HTTP/1.1\r\nHo").unwrap();
        let mut idle: Vec<TcpStream> = (0..4).map(|_| connect(server.addr)).collect();
        for (n, stream) in idle.iter_mut().enumerate() {
            stream.write_all(b"GET /first HTTP/1.1\r\n\r\n").unwrap();
            let (status, _, body) = read_answer(&mut io::BufReader::new(&*stream));
            assert_eq!(
                (status, body.as_str()),
                (200, "GET /first "),
                "connection {n}"
            );
        }
        // The one worker is taken by a request that waits; of two more whole requests, one
        // waits in the queue and the other finds it full.
        let (answers_tx, answers) = bounded(4);
        ask_in_thread(
            "blocked",
            connect(server.addr),
            b"GET /block HTTP/1.1\r\n\r\n",
            &answers_tx,
        );
        server
            .entered
            .recv_timeout(Duration::from_secs(5))
            .expect("the blocking request reaches the worker");
        for name in ["one", "other"] {
            ask_in_thread(
                name,
                connect(server.addr),
                b"GET /x HTTP/1.1\r\n\r\n",
                &answers_tx,
            );
        }
        let (refused, status, body) = answers.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(status, 503, "{refused}: {body}");
        assert!(body.contains("retry in a moment"), "{body}");
        server.release.send(()).unwrap();
        let mut rest: Vec<(&str, u16)> = (0..2)
            .map(|_| {
                let (name, status, _) = answers.recv_timeout(Duration::from_secs(5)).unwrap();
                (name, status)
            })
            .collect();
        rest.sort();
        let queued = if refused == "one" { "other" } else { "one" };
        let mut expected = vec![("blocked", 200), (queued, 200)];
        expected.sort();
        assert_eq!(rest, expected);
        // The trickler finishes and is answered; every idle connection is still served.
        slow.write_all(b"st: x\r\n\r\n").unwrap();
        assert_eq!(read_answer(&mut io::BufReader::new(&slow)).2, "GET /slow ");
        for (n, stream) in idle.iter_mut().enumerate().rev() {
            stream.write_all(b"GET /again HTTP/1.1\r\n\r\n").unwrap();
            let (status, _, body) = read_answer(&mut io::BufReader::new(&*stream));
            assert_eq!(
                (status, body.as_str()),
                (200, "GET /again "),
                "connection {n}"
            );
        }
    }

    #[test]
    fn a_small_body_arriving_slowly_holds_no_worker() {
        let server = start(|c| c.workers = 1);
        let mut slow = connect(server.addr);
        slow.write_all(b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhe")
            .unwrap();
        // The one worker is free for everyone else while the body is on its way.
        for _ in 0..3 {
            let mut other = connect(server.addr);
            other.write_all(b"GET /other HTTP/1.1\r\n\r\n").unwrap();
            assert_eq!(read_answer(&mut io::BufReader::new(other)).2, "GET /other ");
        }
        slow.write_all(b"llo").unwrap();
        assert_eq!(
            read_answer(&mut io::BufReader::new(&slow)).2,
            "POST /p hello"
        );
    }

    /// Whether the server closed `stream` cleanly (not: the read timed out).
    fn eof(stream: &TcpStream) -> bool {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0u8; 1];
        matches!((&*stream).read(&mut byte), Ok(0))
    }

    #[test]
    fn the_poller_closes_idle_connections_and_answers_408_to_late_requests() {
        let server = start(|c| {
            c.idle_timeout = Duration::from_millis(300);
            c.request_timeout = Duration::from_secs(1);
        });
        let mut idle = connect(server.addr);
        idle.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let mut reader = io::BufReader::new(idle.try_clone().unwrap());
        assert_eq!(read_answer(&mut reader).0, 200);
        let mut partial = connect(server.addr);
        partial.write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        let silent = connect(server.addr);
        assert!(eof(&idle), "an idle connection is closed quietly");
        for (stream, words) in [
            (&partial, "did not arrive within 1s"),
            (&silent, "no request within 1s of connecting"),
        ] {
            let (status, _, body) = read_answer(&mut io::BufReader::new(stream));
            assert_eq!(status, 408, "{body}");
            assert!(body.contains(words), "{body}");
        }
        let _ = idle.write_all(b"GET / HTTP/1.1\r\n\r\n");
    }

    #[test]
    fn a_connection_carries_at_most_its_request_cap() {
        let server = start(|_| {});
        let stream = connect(server.addr);
        let mut writer = stream.try_clone().unwrap();
        // Pipelined, more than the cap: the answers stop at it, the last saying close.
        let requests = b"GET /n HTTP/1.1\r\n\r\n".repeat(MAX_REQUESTS_PER_CONN as usize + 5);
        let written = std::thread::spawn(move || {
            let _ = writer.write_all(&requests);
        });
        let mut reader = io::BufReader::new(stream);
        for n in 1..=MAX_REQUESTS_PER_CONN {
            let (status, headers, _) = read_answer(&mut reader);
            assert_eq!(status, 200, "request {n}");
            let close = headers.contains(&("connection".into(), "close".into()));
            assert_eq!(
                close,
                n == MAX_REQUESTS_PER_CONN,
                "request {n}: {headers:?}"
            );
        }
        assert!(closed(&mut reader), "closed after the cap");
        written.join().unwrap();
    }

    #[test]
    fn the_connection_cap_follows_the_file_descriptor_limit() {
        assert_eq!(cap_within(4096, None), 4096);
        assert_eq!(cap_within(4096, Some(20_000)), 4096);
        assert_eq!(cap_within(4096, Some(1024)), 1024 - FD_RESERVE as usize);
        assert_eq!(cap_within(4096, Some(256)), 128, "a tiny limit: half of it");
        assert_eq!(cap_within(4096, Some(0)), 1);
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
    fn past_the_total_cap_newcomers_get_503() {
        let server = start(|c| {
            c.max_conns_per_ip = 0;
            c.max_conns = 2;
        });
        let held: Vec<TcpStream> = (0..2).map(|_| connect(server.addr)).collect();
        let (line, rest) = refused_at_once(server.addr).expect("a refusal past the cap");
        assert!(line.starts_with("HTTP/1.1 503"), "{line}");
        assert!(rest.contains("2 connections are open"), "{rest}");
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut stream = connect(server.addr);
            stream.write_all(b"GET /again HTTP/1.1\r\n\r\n").unwrap();
            if read_answer(&mut io::BufReader::new(stream)).0 == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "slots never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn shutdown_returns_from_serve_with_connections_open() {
        let config = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server");
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

    #[test]
    fn a_streamed_body_is_written_as_it_comes_and_head_gets_only_its_length() {
        let config = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server");
        let server = HttpServer::bind(config).unwrap();
        let (addr, stop) = (server.local_addr(), server.shutdown_handle());
        let done = std::thread::spawn(move || {
            server
                .serve(|request| {
                    let short = request.path() == "/short";
                    Response::streamed(
                        206,
                        "video/mp4",
                        10,
                        Box::new(move |out| {
                            out.write_all(b"01234")?;
                            if !short {
                                out.write_all(b"56789")?;
                            }
                            Ok(())
                        }),
                    )
                    .with_header("Content-Range", "bytes 0-9/20")
                })
                .unwrap()
        });
        let mut stream = connect(addr);
        stream
            .write_all(b"GET /a HTTP/1.1\r\n\r\nHEAD /a HTTP/1.1\r\n\r\n")
            .unwrap();
        let mut reader = io::BufReader::new(stream);
        let (status, headers, body) = read_answer(&mut reader);
        assert_eq!((status, body.as_str()), (206, "0123456789"));
        assert!(headers.contains(&("content-range".into(), "bytes 0-9/20".into())));
        // HEAD: the length, no body (the next byte would be a status line).
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert_eq!(line, "HTTP/1.1 206 Partial Content\r\n");
        let mut rest = String::new();
        loop {
            let mut l = String::new();
            reader.read_line(&mut l).unwrap();
            rest.push_str(&l);
            if l == "\r\n" {
                break;
            }
        }
        assert!(rest.contains("Content-Length: 10\r\n"), "{rest}");
        // A body short of its length closes the connection rather than leave the client
        // waiting for the rest.
        let mut short = connect(addr);
        short.write_all(b"GET /short HTTP/1.1\r\n\r\n").unwrap();
        let mut got = Vec::new();
        let _ = short.read_to_end(&mut got);
        assert!(String::from_utf8_lossy(&got).ends_with("01234"));
        stop.shutdown();
        done.join().unwrap();
    }

    #[test]
    fn shutdown_with_no_connection_ever_made_returns_within_a_second() {
        let config = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server");
        let server = HttpServer::bind(config).unwrap();
        let stop = server.shutdown_handle();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let result = server.serve(|_| Response::new(200, "text/plain", "ok"));
            let _ = done_tx.send(result.is_ok());
        });
        std::thread::sleep(Duration::from_millis(50));
        let asked = Instant::now();
        stop.shutdown();
        assert_eq!(done.recv_timeout(Duration::from_secs(1)), Ok(true));
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
    }

    /// The server side of TLS for `localhost`, and the client side that trusts it.
    fn tls_pair() -> (
        std::sync::Arc<rustls::ServerConfig>,
        std::sync::Arc<rustls::ClientConfig>,
    ) {
        tls_pair_naming(&[])
    }

    /// [`tls_pair`] with a certificate naming `more` too (to make it large).
    fn tls_pair_naming(
        more: &[String],
    ) -> (
        std::sync::Arc<rustls::ServerConfig>,
        std::sync::Arc<rustls::ClientConfig>,
    ) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut names = vec!["localhost".to_string()];
        names.extend_from_slice(more);
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let server = tls::server_config_from_pem(
            cert.pem().as_bytes(),
            key.serialize_pem().as_bytes(),
            "c",
            "k",
        )
        .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (server, std::sync::Arc::new(client))
    }

    type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

    /// A TLS connection to `addr` (its handshake happens with the first write or read).
    fn tls_connect(addr: SocketAddr, client: &std::sync::Arc<rustls::ClientConfig>) -> TlsStream {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let session = rustls::ClientConnection::new(client.clone(), name).unwrap();
        rustls::StreamOwned::new(session, connect(addr))
    }

    fn start_tls(
        config: impl FnOnce(&mut HttpConfig),
    ) -> (TestServer, std::sync::Arc<rustls::ClientConfig>) {
        let (server, client) = tls_pair();
        let server = start(|c| {
            c.tls = Some(server);
            config(c);
        });
        (server, client)
    }

    #[test]
    fn over_tls_requests_keep_alive_pipeline_carry_bodies_and_know_they_are_tls() {
        let (server, client) = start_tls(|_| {});
        let mut reader = io::BufReader::new(tls_connect(server.addr, &client));
        reader
            .get_mut()
            .write_all(
                b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET /tls HTTP/1.1\r\n\r\n",
            )
            .unwrap();
        assert_eq!(read_answer(&mut reader).2, "POST /a hello");
        assert_eq!(read_answer(&mut reader).2, "true", "is_tls over TLS");
        // A large answer goes out through rustls's bounded buffer, a large body in.
        let big = 3 << 20;
        let ask = format!("GET /big/{big} HTTP/1.1\r\n\r\n");
        reader.get_mut().write_all(ask.as_bytes()).unwrap();
        let (status, _, body) = read_answer(&mut reader);
        assert_eq!((status, body.len()), (200, big));
        let head = "POST /b HTTP/1.1\r\nContent-Length: 90\r\n\r\n".to_string();
        reader.get_mut().write_all(head.as_bytes()).unwrap();
        reader.get_mut().write_all(&[b'y'; 90]).unwrap();
        assert_eq!(
            read_answer(&mut reader).2,
            format!("POST /b {}", "y".repeat(90))
        );
        reader
            .get_mut()
            .write_all(b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let (_, headers, _) = read_answer(&mut reader);
        assert!(headers.contains(&("connection".into(), "close".into())));
        // Closed with a close_notify: a clean end of stream, not an error.
        let mut rest = Vec::new();
        assert!(reader.read_to_end(&mut rest).is_ok(), "a clean TLS close");
        // The same server over plain TCP: `is_tls` is false only there.
        let plain = start(|_| {});
        let mut stream = connect(plain.addr);
        stream.write_all(b"GET /tls HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(read_answer(&mut io::BufReader::new(stream)).2, "false");
    }

    #[test]
    fn a_stalled_handshake_holds_no_worker_and_is_closed_at_the_request_deadline() {
        let (server, client) = start_tls(|c| {
            c.workers = 1;
            c.request_timeout = Duration::from_secs(3);
        });
        // One client sends half a ClientHello, one nothing at all.
        let mut stalled = connect(server.addr);
        stalled
            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
            .unwrap();
        let silent = connect(server.addr);
        // The one worker serves everybody else meanwhile.
        for _ in 0..3 {
            let mut other = io::BufReader::new(tls_connect(server.addr, &client));
            other
                .get_mut()
                .write_all(b"GET /other HTTP/1.1\r\n\r\n")
                .unwrap();
            assert_eq!(read_answer(&mut other).2, "GET /other ");
        }
        // Both are still open: had a worker waited on one, the others would have been
        // served only once it was closed at its deadline.
        for stream in [&stalled, &silent] {
            stream.set_nonblocking(true).unwrap();
            let mut byte = [0u8; 1];
            let open =
                matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
            assert!(open, "a stalled handshake is still waiting in the poller");
            stream.set_nonblocking(false).unwrap();
        }
        // Past the deadline both are closed (no HTTP answer can precede a handshake).
        assert!(eof(&stalled) && eof(&silent), "closed at the deadline");
        // A request that trickles in after its handshake is answered 408, in TLS.
        let mut late = io::BufReader::new(tls_connect(server.addr, &client));
        late.get_mut().write_all(b"GET / HTTP/1.1\r\nHo").unwrap();
        let (status, _, body) = read_answer(&mut late);
        assert_eq!(status, 408, "{body}");
    }

    #[test]
    fn refusals_reach_tls_clients_in_tls_and_plain_http_is_told_to_use_https() {
        let (server, client) = start_tls(|c| c.max_conns_per_ip = 2);
        let held: Vec<TlsStream> = (0..2)
            .map(|_| {
                let mut s = tls_connect(server.addr, &client);
                s.write_all(b"GET /x HTTP/1.1\r\n\r\n").unwrap();
                s
            })
            .collect();
        let mut held: Vec<_> = held.into_iter().map(io::BufReader::new).collect();
        for reader in &mut held {
            assert_eq!(read_answer(reader).0, 200);
        }
        // The third is refused before its handshake: the refuser completes it, then says 429.
        let mut refused = io::BufReader::new(tls_connect(server.addr, &client));
        let _ = refused.get_mut().write_all(b"GET /x HTTP/1.1\r\n\r\n");
        let (status, _, body) = read_answer(&mut refused);
        assert_eq!(status, 429, "{body}");
        assert!(
            body.contains("too many connections from 127.0.0.1"),
            "{body}"
        );
        drop(held);
        // Plain HTTP to the TLS port, once a slot is free: a plain 400 that says what to do.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let mut stream = connect(server.addr);
            stream.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
            let (status, _, body) = read_answer(&mut io::BufReader::new(stream));
            if status == 400 {
                assert!(body.contains("use an https:// URL"), "{body}");
                break;
            }
            assert_eq!(status, 429, "{body}");
            assert!(Instant::now() < deadline, "slots never freed");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn a_handshake_flight_larger_than_the_socket_takes_goes_out_as_room_comes() {
        // A 40 KB certificate through a 4 KiB send buffer (set on the listener, which
        // accepted sockets inherit, autotuning off) to a client with a 4 KiB receive
        // buffer that leaves it unread a moment: the poller's writes stop at WouldBlock, and only the connection's
        // interest in writing sends the rest (the client says nothing more until it has
        // the whole flight).
        let names: Vec<String> = (0..1500)
            .map(|n| format!("name-{n:04}.example.test"))
            .collect();
        let (server_config, client) = tls_pair_naming(&names);
        let mut config = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server");
        config.tls = Some(server_config);
        let server = HttpServer::bind(config).unwrap();
        rustix::net::sockopt::set_socket_send_buffer_size(&server.listener, 4096).unwrap();
        let (addr, stop) = (server.local_addr(), server.shutdown_handle());
        let serving = std::thread::spawn(move || {
            server
                .serve(|request| Response::new(200, "text/plain", format!("{}", request.is_tls())))
        });
        // The client's receive window small too, so the flight fits neither side's buffer.
        let fd = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .unwrap();
        rustix::net::sockopt::set_socket_recv_buffer_size(&fd, 4096).unwrap();
        rustix::net::connect(&fd, &addr).unwrap();
        let stream = TcpStream::from(fd);
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut session = rustls::ClientConnection::new(client, name).unwrap();
        while session.wants_write() {
            session.write_tls(&mut &stream).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        let mut reader = io::BufReader::new(rustls::StreamOwned::new(session, stream));
        reader
            .get_mut()
            .write_all(b"GET /tls HTTP/1.1\r\n\r\n")
            .unwrap();
        assert_eq!(read_answer(&mut reader).2, "true");
        stop.shutdown();
        serving.join().unwrap().unwrap();
    }
}
