//! The HTTP/1.1 server under the tracker's API and the peer server's metrics endpoint.
//! Our own because no blocking HTTP server crate bounds how long a client may take to send
//! its request (tiny_http has no read deadlines), and a tracker handed to hostile token
//! holders needs that bound. It runs on the listener skeleton of [`crate::net`]: one accept thread, a fixed pool of workers, and
//! a bound on everything a client controls: how long it takes to send a request, how long
//! it idles between requests, how long it leaves an answer unread, how large a head or a
//! body may be, and how many connections one address holds. Request heads are parsed by
//! `httparse` (hyper's parser); bodies come with a `Content-Length` or not at all.
//!
//! A worker serves one connection from accept to close, kept-alive requests included. When
//! every worker is busy, new connections wait in a short queue, connections that have been
//! silent for a second give their worker up, and once the queue is full newcomers are
//! answered 503 at once. Refusals (503, 429) are written by a pool of two threads, so the
//! accept thread never waits on a client.
//!
//! Rooms: `head` (methods, heads, body framing: pure), `request` (what a handler reads,
//! bodies), `response` (answers), `conn` (one connection's socket, deadlines and buffer).

mod conn;
mod head;
mod request;
mod response;

use std::net::{SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

pub use crate::net::ShutdownHandle;
use crate::net::{Conns, Counted, Listener, Refusals, Refused, linger_close};
use crate::sync::LockExt;
use conn::{Conn, NoRequest, Socket};
pub use head::Method;
use head::framing;
pub use request::{BodyError, Request};
pub use response::{Response, error_body};

/// Default time a client has to send a whole request, head and body, from its first byte
/// (from the connection being taken up, for its first request). Requests are a few hundred
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
/// Default connections one client address (see [`crate::ratelimit::client_key`]) may hold at once, queued or
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
/// Threads that answer refused connections. A refusal takes one write and, usually, a
/// moment for the client to close; two keep up with a flood while the accept thread
/// never waits on a client.
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
    pub fn new(listen: SocketAddr, what: &'static str) -> HttpConfig {
        HttpConfig {
            listen,
            what,
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

/// An accepted connection on its way to a worker.
struct Accepted {
    stream: TcpStream,
    remote: SocketAddr,
    _counted: Counted,
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

    /// A handle that stops [`HttpServer::serve`]: it stops accepting within
    /// [`crate::net::ACCEPT_POLL`], and returns once the requests under way are answered;
    /// connections waiting for their next request are closed within 100 ms.
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
        let log = Log {
            window: Mutex::new((Instant::now(), 0)),
        };
        let (conn_tx, conn_rx) = bounded::<Accepted>(config.queue.max(1));
        let refusals = Refusals::start(REFUSERS, REFUSAL_QUEUE);
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
            self.accept_loop(&log, conn_tx, &refusals);
        });
        Ok(())
    }

    fn accept_loop(&self, log: &Log, conn_tx: Sender<Accepted>, refusals: &Refusals) {
        let config = &self.config;
        let open = Conns::default();
        // With every refuser busy and its queue full, a flood is closed unanswered.
        let refuse = |stream: TcpStream, response: Response| {
            refusals.refuse(stream, response::refusal(&response));
        };
        let accepted = |stream: TcpStream, remote: SocketAddr| {
            // No socket is ever without timeouts; workers and refusers narrow them.
            let _ = stream.set_read_timeout(Some(config.request_timeout));
            let _ = stream.set_write_timeout(Some(config.write_timeout));
            // Answers leave in one write, but a head and a large body may be two segments;
            // without this the second waits for the client's delayed ACK (40 ms).
            let _ = stream.set_nodelay(true);
            let counted = match open.enter(remote.ip(), config.max_conns_per_ip, 0, None) {
                Ok(counted) => counted,
                Err(Refused::Address { key, open: count }) => {
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
                    return;
                }
                // No total cap here: the queue below is the bound.
                Err(Refused::Full) => return,
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
        };
        self.listener.accept_until(&self.stop, accepted, |e| {
            log.line(format_args!("accepting a connection failed: {e}"))
        });
    }

    /// Serves one connection's requests until it closes, fails or gives way.
    fn serve_connection<H>(
        &self,
        accepted: Accepted,
        queue: &Receiver<Accepted>,
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
                stop: self.stop.clone(),
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
            let keep = framing.keep_alive && request.finish() && !self.stop.is_shutdown();
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

#[cfg(test)]
mod tests {
    use super::conn::MAX_HEADERS;
    use super::*;
    use std::io::{self, BufRead, Read, Write};

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
        let mut c = HttpConfig::new("127.0.0.1:0".parse().unwrap(), "the test server");
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
}
