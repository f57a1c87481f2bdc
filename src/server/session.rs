//! One connection's protocol: the handshake (version, ticket, asset), then requests
//! answered in order until the client leaves, reading ahead so that a `Cancel` reaches a
//! request still waiting here. Between replies, and while it waits for the next request,
//! a session serving a download in progress pushes the chunks it gains (`Gained`) to a
//! version-2 client. Failures close with an error frame that says why.

use std::collections::VecDeque;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result};

use super::seats::Held;
use super::stats::Counters;
use super::tickets::Verdict;
use super::uploads::{Body, send_chunk};
use super::{IDLE_TIMEOUT, Shared, WRITE_TIMEOUT};
use crate::bitfield::{Bitfield, LiveHave};
use crate::manifest::tree::Tree;
use crate::manifest::{AssetId, Manifest};
use crate::net::refuse_now;
use crate::store::Source;
use crate::sync::LockExt;
use crate::wake::Wait;
use crate::wire::{
    self, Conn, Decoded, GAINED_VERSION, MAX_CONTROL_FRAME, MAX_GAINED, MIN_PROTOCOL_VERSION,
    Message, PROTOCOL_VERSION, WireError, code,
};

/// Messages read ahead of the request being served. The reference client keeps at most
/// four requests in flight, plus a have request and a cancel for each request.
const MAX_PENDING: usize = 64;

/// What a session that yields its seat tells its client.
const YIELDED: &str = "server busy: this connection asked for nothing for a while and its slot went to a newcomer; connect again when you need chunks";
/// Have requests a client may make at once, then [`HAVE_RATE`] a second: a client asks
/// once after the handshake and then every 10 s (the reference client), or ten times a
/// second to a version-1 source still downloading; 4 a second keeps such a client's view
/// within 250 ms, and caps what a flood costs (a reload and an answer of up to 128 KiB for
/// 2^20 chunks) at 4 a second per connection.
const HAVE_BURST: f64 = 8.0;
/// See [`HAVE_BURST`].
const HAVE_RATE: f64 = 4.0;
/// Chunks a connection may ask for again after they were sent on it. A download takes
/// each chunk once (a chunk that fails its hash drops the source; one that cannot be
/// stored ends the connection), so this only forgives a client's rare re-request without
/// letting a connection ask for one chunk for ever.
const MAX_RESENDS: usize = 16;

/// A token bucket for one session's have requests ([`HAVE_BURST`], [`HAVE_RATE`]). Pure:
/// time is an argument.
#[derive(Debug)]
struct Pace {
    tokens: f64,
    at: Instant,
}

impl Pace {
    fn new(now: Instant) -> Pace {
        Pace {
            tokens: HAVE_BURST,
            at: now,
        }
    }

    /// Takes a token at `now`; how long to wait before answering (zero: at once).
    fn take(&mut self, now: Instant) -> std::time::Duration {
        let since = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + since * HAVE_RATE).min(HAVE_BURST);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return std::time::Duration::ZERO;
        }
        let wait = (1.0 - self.tokens) / HAVE_RATE;
        // The token comes when the wait ends, and is spent on this request.
        self.tokens = 0.0;
        self.at = now + std::time::Duration::from_secs_f64(wait);
        std::time::Duration::from_secs_f64(wait)
    }
}

/// A request the server declines, with the error frame that says why.
#[derive(Debug)]
struct Reject {
    code: u16,
    text: String,
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for Reject {}

/// A failure after a chunk frame's header went out: the peer is mid-frame, so no error
/// frame can follow; the connection just closes.
#[derive(Debug)]
struct MidFrame(String);

impl std::fmt::Display for MidFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MidFrame {}

fn reject(code: u16, text: impl Into<String>) -> anyhow::Error {
    Reject {
        code,
        text: text.into(),
    }
    .into()
}

/// The refusal of an asset the tracker unpublished.
fn unpublished(asset: &AssetId) -> anyhow::Error {
    reject(
        code::UNKNOWN_ASSET,
        format!("asset {asset} was unpublished at the tracker; this peer no longer serves it"),
    )
}

/// Sends a last error frame, then closes without a reset: the write side is shut first and
/// what the peer already sent is drained (briefly), so the error frame is not discarded by
/// a TCP reset on the peer's side.
pub(super) fn close_with_error(stream: &TcpStream, code: u16, text: &str) {
    refuse_now(stream, &error_frame(code, text));
}

/// The bytes of an error frame, for [`close_with_error`] and the refusal pool.
pub(super) fn error_frame(code: u16, text: &str) -> Vec<u8> {
    let mut frame = Vec::new();
    let _ = wire::write_message(&mut frame, &Message::error(code, text));
    frame
}
impl Shared {
    /// Serves one connection and, when it ends in error, tells the client why and logs it.
    pub(super) fn serve_connection(&self, stream: &TcpStream, hello: &[u8], seat: &Held) {
        let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
        let Err(e) = self.handle(stream, hello, seat) else {
            return;
        };
        Counters::bump(&self.counters.failed);
        let reply = if let Some(r) = e.downcast_ref::<Reject>() {
            Some((r.code, r.text.clone()))
        } else if e.downcast_ref::<MidFrame>().is_some() {
            None
        } else if let Some(w) = e.downcast_ref::<WireError>() {
            w.reply_code().map(|code| (code, w.to_string()))
        } else {
            // Includes socket failures, where this last write simply fails fast.
            Some((code::INTERNAL, format!("{e:#}")))
        };
        if let Some((code, text)) = reply {
            if matches!(
                code,
                code::BAD_FRAME | code::UNSUPPORTED_VERSION | code::BAD_REQUEST
            ) {
                Counters::bump(&self.counters.protocol_errors);
            }
            close_with_error(stream, code, &text);
        }
        log::warn!("serving: connection from {peer}: {e:#}");
    }

    /// What the store holds of an asset, and its content file. They are read together: a
    /// `have` is written after the content it describes is in place, so a content file
    /// opened after reading `have` is never older than it. For a download in progress, also
    /// its live holdings and the cursor of the gains the copy includes.
    fn open_content(&self, asset: &AssetId, manifest: &Manifest) -> Result<Content> {
        let live = self.live.locked().get(asset).cloned();
        let (have, live) = match live {
            Some(live) => {
                let (have, cursor) = live.snapshot();
                (have, Some((live, cursor)))
            }
            None => (self.store.have(asset, manifest)?, None),
        };
        let data = self.store.source(asset, manifest)?;
        Ok(Content { have, data, live })
    }

    /// Serves one connection whose first frame, `hello`, the accept loop read: handshake,
    /// then requests until the client leaves or its seat goes to a newcomer.
    fn handle(&self, stream: &TcpStream, hello: &[u8], seat: &Held) -> Result<()> {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        self.uploads.prepare(stream);
        let mut conn = Conn::new(stream, MAX_CONTROL_FRAME);
        let hello = wire::decode(hello, MAX_CONTROL_FRAME).context("reading Hello")?;
        let Decoded::Message(hello, _) = hello else {
            return Err(reject(code::BAD_FRAME, "the first frame is cut short"));
        };
        let Message::Hello {
            version,
            asset,
            ticket,
        } = hello
        else {
            return Err(reject(code::BAD_REQUEST, "the first frame must be Hello"));
        };
        // The highest version both speak: a newer client is answered in ours, and tells
        // from the `Welcome` which one the connection speaks.
        if version < MIN_PROTOCOL_VERSION {
            return Err(reject(
                code::UNSUPPORTED_VERSION,
                format!(
                    "protocol version {version} is not supported; this peer speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"
                ),
            ));
        }
        let version = version.min(PROTOCOL_VERSION);
        match self.gate.check(&ticket, &asset) {
            Verdict::Pass => {}
            Verdict::Pending => {
                return Err(reject(
                    code::SERVER_BUSY,
                    "not serving yet: this peer has not heard from its tracker; retry soon",
                ));
            }
            Verdict::Refused(e) => return Err(reject(code::UNAUTHORIZED, e.to_string())),
        }
        if self.is_withdrawn(&asset) {
            return Err(unpublished(&asset));
        }
        let Some(served) = self.served(&asset)? else {
            return Err(reject(
                code::UNKNOWN_ASSET,
                format!("asset {asset} is not held here"),
            ));
        };
        // Held while this connection serves it, so `cache gc` elsewhere leaves it alone.
        let Some(_in_use) = self.store.hold_existing(&asset)? else {
            return Err(reject(
                code::UNKNOWN_ASSET,
                format!("asset {asset} is not held here (removed from the store)"),
            ));
        };
        let manifest = &served.manifest;
        let Content {
            mut have,
            mut data,
            live,
        } = self.open_content(&asset, manifest)?;
        // Version 2 clients of a download in progress are told of each chunk it gains.
        let mut pushes = match live {
            Some((live, cursor)) if version >= GAINED_VERSION => {
                let wait = live
                    .watch()
                    .context("watching the download for new chunks")?;
                Some(Pushes { live, cursor, wait })
            }
            _ => None,
        };
        let welcome = Message::Welcome {
            version,
            chunk_count: manifest.chunk_count(),
        };
        conn.send(&welcome)?;
        seat.welcomed(Instant::now());
        let mut have_pace = Pace::new(Instant::now());
        // The chunks this connection has been sent, and how many were asked for again.
        let (mut sent, mut resent) = (Bitfield::new(manifest.chunk_count()), 0usize);
        // Requests read but not answered yet, in order; reading ahead of the one being served
        // lets a `Cancel` reach a request still waiting here.
        let mut pending = VecDeque::new();
        // The client closed its side: what it asked for is still answered, then we close.
        let mut closed = false;
        while !self.stop.is_shutdown() {
            // Between two replies, never inside one: what was gained meanwhile.
            if let Some(pushes) = &mut pushes {
                pushes.send(&mut conn)?;
            }
            if pending.is_empty() {
                if closed {
                    return Ok(());
                }
                seat.waiting(true);
                let next = next_request(&mut conn, pushes.as_mut());
                seat.waiting(false);
                if seat.yielding() {
                    return Err(reject(code::SERVER_BUSY, YIELDED));
                }
                let Some(message) = next? else {
                    return Ok(());
                };
                if !take_in(message, &mut pending)? {
                    return Ok(());
                }
            }
            if !read_ahead(&mut conn, &mut pending, &mut closed)? {
                return Ok(());
            }
            match pending.pop_front().expect("a request is pending") {
                Pending::Have => {
                    // Beyond the pace a client needs, a have request waits its turn; the
                    // session counts as idle meanwhile, so a flood cannot hold a seat.
                    let wait = have_pace.take(Instant::now());
                    if !wait.is_zero() {
                        seat.waiting(true);
                        std::thread::sleep(wait);
                        seat.waiting(false);
                        if seat.yielding() {
                            return Err(reject(code::SERVER_BUSY, YIELDED));
                        }
                    }
                    let content = self.open_content(&asset, manifest)?;
                    (have, data) = (content.have, content.data);
                    // What the `Have` includes is not pushed again.
                    if let (Some(pushes), Some((_, cursor))) = (&mut pushes, content.live) {
                        pushes.cursor = pushes.cursor.max(cursor);
                    }
                    conn.send(&Message::Have(have.clone()))?;
                }
                Pending::Cancelled(index) => {
                    conn.send(&Message::Cancelled { index })?;
                }
                Pending::Chunk(index) if index >= manifest.chunk_count() => {
                    return Err(reject(
                        code::BAD_REQUEST,
                        format!(
                            "chunk {index} is out of range: the asset has {} chunks",
                            manifest.chunk_count()
                        ),
                    ));
                }
                // Unpublished while this connection was open: it ends here.
                Pending::Chunk(_) if self.is_withdrawn(&asset) => {
                    return Err(unpublished(&asset));
                }
                Pending::Chunk(index) => {
                    seat.requested(Instant::now());
                    if !have.get(index) {
                        // The store may have grown since the handshake (a download in progress).
                        let content = self.open_content(&asset, manifest)?;
                        (have, data) = (content.have, content.data);
                    }
                    if !have.get(index) {
                        conn.send(&Message::DontHave { index })?;
                        continue;
                    }
                    let len = manifest.chunk_len(index) as u64;
                    let asked = Instant::now();
                    let slot = self.uploads.take(len);
                    // Waiting for a slot and the rate took time: the client may have got the
                    // chunk elsewhere meanwhile, or left.
                    if !read_ahead(&mut conn, &mut pending, &mut closed)? {
                        return Ok(());
                    }
                    if let Some(at) = pending.iter().position(|p| *p == Pending::Cancel(index)) {
                        pending.remove(at);
                        self.uploads.give_back(slot, len);
                        self.uploads.gauge.done(asked);
                        conn.send(&Message::Cancelled { index })?;
                    } else {
                        if sent.get(index) {
                            resent += 1;
                            if resent > MAX_RESENDS {
                                return Err(reject(
                                    code::BAD_REQUEST,
                                    format!(
                                        "chunk {index} was sent on this connection already, and {MAX_RESENDS} others were asked for again; a download needs each chunk once"
                                    ),
                                ));
                            }
                        }
                        let at = manifest.chunk_offset(index);
                        let body = match &data {
                            Source::File(file) => Body::File(file, at),
                            Source::Tree(tree) => match tree_chunk(tree, manifest, index) {
                                Ok(bytes) => Body::Bytes(bytes),
                                Err(e) => {
                                    log::warn!("serving {asset}: {e:#}");
                                    self.uploads.give_back(slot, len);
                                    self.uploads.gauge.done(asked);
                                    conn.send(&Message::DontHave { index })?;
                                    continue;
                                }
                            },
                        };
                        sent.set(index);
                        let sending =
                            send_chunk(stream, body, index, len as u32, slot, &self.uploads.gauge);
                        self.uploads.gauge.done(asked);
                        sending.map_err(|e| {
                            MidFrame(format!("sending chunk {index} of {asset}: {e:#}"))
                        })?;
                        served.uploaded.fetch_add(len, Ordering::Relaxed);
                        served.chunks.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Cancels of requests already answered, or never made.
                Pending::Cancel(_) => {}
            }
        }
        Ok(())
    }
}

/// Chunk `index` read from a directory seeded in place, checked against the manifest: its
/// files are the user's and may have changed since they were hashed, and a peer must never
/// be sent bytes the manifest does not describe.
fn tree_chunk(tree: &Tree, manifest: &Manifest, index: u32) -> Result<Vec<u8>> {
    let mut bytes = vec![0u8; manifest.chunk_len(index) as usize];
    tree.read_at(&mut bytes, manifest.chunk_offset(index))?;
    if !manifest.chunk_matches(index, &bytes) {
        anyhow::bail!(
            "chunk {index} read from directory {} no longer matches its hash (a file changed since it was seeded); restart peer_server to seed what is there now",
            tree.root().display()
        );
    }
    Ok(bytes)
}

/// What a session serves from: the holdings, the content file, and for a download in
/// progress its live holdings with the cursor of the gains `have` includes.
struct Content {
    have: Bitfield,
    data: Source,
    live: Option<(LiveHave, usize)>,
}

/// The chunks a download in progress gains, pushed to a version-2 client as `Gained`.
struct Pushes {
    live: LiveHave,
    /// The gains the client has been told of (by a `Have` or a `Gained`).
    cursor: usize,
    /// Readable when the download gains a chunk, once armed.
    wait: Wait,
}

impl Pushes {
    /// Sends what was gained since the client was last told, [`MAX_GAINED`] per frame.
    fn send(&mut self, conn: &mut Conn<&TcpStream>) -> Result<()> {
        loop {
            let (indices, cursor) = self.live.gained_since(self.cursor, MAX_GAINED);
            if indices.is_empty() {
                break;
            }
            conn.queue(&Message::Gained { indices })?;
            self.cursor = cursor;
        }
        conn.flush().context("pushing new chunks")
    }
}

/// A request read and not yet answered, or a cancel that arrived while its request was
/// being served.
#[derive(Debug, PartialEq, Eq)]
enum Pending {
    Have,
    Chunk(u32),
    /// A chunk request cancelled before it was served: answered with `Cancelled`.
    Cancelled(u32),
    Cancel(u32),
}

/// Adds a message read after the handshake to the requests pending. A `Cancel` turns the
/// pending request for its chunk into a cancelled one, or is kept for the request being
/// served. Returns false when the client said it is leaving (an `Error` frame).
fn take_in(message: Message<'_>, pending: &mut VecDeque<Pending>) -> Result<bool> {
    match message {
        Message::HaveRequest => pending.push_back(Pending::Have),
        Message::Request { index } => pending.push_back(Pending::Chunk(index)),
        Message::Cancel { index } => {
            match pending.iter_mut().find(|p| **p == Pending::Chunk(index)) {
                Some(request) => *request = Pending::Cancelled(index),
                None => pending.push_back(Pending::Cancel(index)),
            }
        }
        // The client gave up and said why; nothing to answer.
        Message::Error { code, message } => {
            log::info!("serving: client closed with error {code}: {message}");
            return Ok(false);
        }
        other => {
            return Err(reject(
                code::BAD_REQUEST,
                format!("unexpected {} after the handshake", other.name()),
            ));
        }
    }
    Ok(true)
}

/// Takes in the whole messages the client has already sent, without waiting for more: a
/// frame only partly arrived stays in the socket for later. Sets `closed` when the client
/// has closed its side. Returns false when the client said it is leaving (an `Error`).
fn read_ahead(
    conn: &mut Conn<&TcpStream>,
    pending: &mut VecDeque<Pending>,
    closed: &mut bool,
) -> Result<bool> {
    while pending.len() < MAX_PENDING {
        let waiting = conn.frames_waiting().context("reading a request")?;
        let whole = match waiting {
            Some(0) => return Ok(true),
            Some(n) => n,
            None => {
                *closed = true;
                return Ok(true);
            }
        };
        for _ in 0..whole {
            // Whole frames are in the socket already: this read does not wait.
            let Some(message) = next_message(conn)? else {
                *closed = true;
                return Ok(true);
            };
            if !take_in(message, pending)? {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Waits up to [`IDLE_TIMEOUT`] for the client's next message, pushing what the download
/// gains meanwhile (with `pushes`); `None` when the client closed the connection between
/// frames.
fn next_request<'c>(
    conn: &'c mut Conn<&TcpStream>,
    pushes: Option<&mut Pushes>,
) -> Result<Option<Message<'c>>> {
    let Some(pushes) = pushes else {
        return next_message(conn);
    };
    let deadline = Instant::now() + IDLE_TIMEOUT;
    loop {
        // Armed before looking, so that a chunk gained after the look wakes the poll.
        pushes.wait.arm();
        pushes.send(conn)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(anyhow::Error::new(WireError::Timeout(IDLE_TIMEOUT))
                .context("waiting for a request"));
        }
        let woken = pushes
            .wait
            .poll(conn.stream().as_fd(), left)
            .context("waiting for a request or a new chunk")?;
        if woken.socket {
            return next_message(conn);
        }
        if woken.woken {
            pushes.wait.clear().context("taking a wake-up")?;
        }
    }
}

/// Reads the client's next message, waiting up to [`IDLE_TIMEOUT`] for it; `None` when the
/// client closed the connection between frames.
fn next_message<'c>(conn: &'c mut Conn<&TcpStream>) -> Result<Option<Message<'c>>> {
    match conn.recv(IDLE_TIMEOUT) {
        Ok(message) => Ok(Some(message)),
        Err(WireError::Closed) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context("waiting for a request")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bitfield::Live;
    use crate::server::{Server, ServerConfig, ShutdownHandle};
    use crate::store::{Partial, Store};
    use crate::wire::{MAX_FRAME, read_message, write_message};
    use std::sync::Arc;
    use std::time::Duration;

    const CHUNK: u32 = 1 << 16;

    /// A server of a download in progress: an asset of 4 chunks of which chunk 0 is held,
    /// served from its live holdings. Returns the live holdings, the manifest, the store's
    /// data file, the server's address, and what keeps it running.
    fn serving_a_download(
        dir: &std::path::Path,
    ) -> (
        LiveHave,
        Manifest,
        Arc<std::fs::File>,
        std::net::SocketAddr,
        impl Drop,
    ) {
        let content: Vec<u8> = (0..4 * CHUNK).map(|i| (i % 251) as u8).collect();
        let path = dir.join("f.bin");
        std::fs::write(&path, &content).unwrap();
        let (manifest, _in_use) = Store::open(dir.join("seed"))
            .unwrap()
            .import_file(&path, "f.bin", CHUNK)
            .unwrap();
        let store = Store::open(dir.join("store")).unwrap();
        let partial = store.begin(&manifest).unwrap();
        let data = partial.data();
        Partial::write_at(&data, &content[..CHUNK as usize], 0).unwrap();
        let mut have = Bitfield::new(4);
        have.set(0);
        let live = Live::new(have);
        let config = ServerConfig {
            chunk_size: CHUNK,
            ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("store"))
        };
        let server = Server::bind(config).unwrap();
        server.serve_live(manifest.id(), Arc::clone(&live));
        let addr = server.local_addr();
        let stop = server.shutdown_handle();
        let thread = std::thread::spawn(move || server.serve());
        /// Stops the server when dropped; the partial asset stays open (and held) until then.
        struct Running {
            stop: ShutdownHandle,
            thread: Option<std::thread::JoinHandle<Result<()>>>,
            _partial: Partial,
        }
        impl Drop for Running {
            fn drop(&mut self) {
                self.stop.shutdown();
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }
        let running = Running {
            stop,
            thread: Some(thread),
            _partial: partial,
        };
        (live, manifest, data, addr, running)
    }

    /// Connects with a `Hello` of `version`; returns the stream and the `Welcome`'s version.
    fn connect(addr: std::net::SocketAddr, manifest: &Manifest, version: u16) -> (TcpStream, u16) {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let hello = Message::Hello {
            version,
            asset: manifest.id(),
            ticket: vec![],
        };
        write_message(&mut stream, &hello).unwrap();
        match read_message(&mut stream, MAX_FRAME).unwrap() {
            Message::Welcome {
                version,
                chunk_count: 4,
            } => (stream, version),
            other => panic!("answered Hello with {other:?}"),
        }
    }

    #[test]
    fn a_version_2_client_is_pushed_each_chunk_the_download_gains() {
        let dir = tempfile::tempdir().unwrap();
        let (live, manifest, data, addr, _running) = serving_a_download(dir.path());
        let (mut stream, version) = connect(addr, &manifest, PROTOCOL_VERSION);
        assert_eq!(version, 2);
        write_message(&mut stream, &Message::HaveRequest).unwrap();
        let Message::Have(have) = read_message(&mut stream, MAX_FRAME).unwrap() else {
            panic!("no Have");
        };
        assert_eq!(have.ones().collect::<Vec<_>>(), [0]);
        // The download verifies chunk 2 while the client is idle: it is told unasked.
        let chunk2 = vec![2u8; CHUNK as usize];
        Partial::write_at(&data, &chunk2, 2 * CHUNK as u64).unwrap();
        assert!(live.insert(2));
        assert_eq!(
            read_message(&mut stream, MAX_FRAME).unwrap(),
            Message::Gained { indices: vec![2] }
        );
        // Gains while requests are answered come between the replies, never inside one.
        write_message(&mut stream, &Message::Request { index: 2 }).unwrap();
        live.insert(1);
        live.insert(3);
        let mut gained = Vec::new();
        let mut chunks = 0;
        while gained.len() < 2 || chunks < 1 {
            match read_message(&mut stream, MAX_FRAME).unwrap() {
                Message::Gained { indices } => gained.extend(indices),
                Message::Chunk { index: 2, data } => {
                    assert_eq!(&data[..], &chunk2[..]);
                    chunks += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(gained, [1, 3], "each gain once, in order");
        write_message(&mut stream, &Message::HaveRequest).unwrap();
        let Message::Have(have) = read_message(&mut stream, MAX_FRAME).unwrap() else {
            panic!("no Have after the pushes");
        };
        assert!(have.is_full());
    }

    #[test]
    fn a_have_request_sent_with_the_hello_is_answered_after_the_welcome() {
        // The client sends its first have request in the Hello's write (one round trip to
        // the first Have): neither the lobby nor the handshake may eat it.
        let dir = tempfile::tempdir().unwrap();
        let (_live, manifest, _data, addr, _running) = serving_a_download(dir.path());
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut frames = Vec::new();
        for message in [
            Message::Hello {
                version: PROTOCOL_VERSION,
                asset: manifest.id(),
                ticket: vec![],
            },
            Message::HaveRequest,
            Message::Request { index: 0 },
        ] {
            write_message(&mut frames, &message).unwrap();
        }
        std::io::Write::write_all(&mut stream, &frames).unwrap();
        assert!(matches!(
            read_message(&mut stream, MAX_FRAME).unwrap(),
            Message::Welcome { chunk_count: 4, .. }
        ));
        let Message::Have(have) = read_message(&mut stream, MAX_FRAME).unwrap() else {
            panic!("the pipelined have request got no Have");
        };
        assert_eq!(have.ones().collect::<Vec<_>>(), [0]);
        assert!(matches!(
            read_message(&mut stream, MAX_FRAME).unwrap(),
            Message::Chunk { index: 0, .. }
        ));
    }

    #[test]
    fn a_version_1_client_is_answered_in_version_1_and_never_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let (live, manifest, _data, addr, _running) = serving_a_download(dir.path());
        let (mut stream, version) = connect(addr, &manifest, 1);
        assert_eq!(version, 1);
        live.insert(3);
        // A version-1 client knows no `Gained`: the next frame is the answer it asks for.
        write_message(&mut stream, &Message::HaveRequest).unwrap();
        let Message::Have(have) = read_message(&mut stream, MAX_FRAME).unwrap() else {
            panic!("a version-1 client got something other than Have");
        };
        assert_eq!(have.ones().collect::<Vec<_>>(), [0, 3]);
        // A newer client than this server is answered in this server's version.
        let (_newer, version) = connect(addr, &manifest, 7);
        assert_eq!(version, PROTOCOL_VERSION);
    }

    #[test]
    fn have_requests_beyond_the_burst_wait_for_the_rate() {
        let t0 = Instant::now();
        let mut pace = Pace::new(t0);
        for _ in 0..HAVE_BURST as usize {
            assert_eq!(pace.take(t0), Duration::ZERO);
        }
        assert_eq!(pace.take(t0), Duration::from_millis(250));
        // The next token comes 250 ms after that one.
        assert_eq!(pace.take(t0), Duration::from_millis(250));
        let later = t0 + Duration::from_secs(10);
        for _ in 0..HAVE_BURST as usize {
            assert_eq!(
                pace.take(later),
                Duration::ZERO,
                "refilled, to the burst only"
            );
        }
        assert!(!pace.take(later).is_zero());
    }

    #[test]
    fn a_cancel_turns_its_waiting_request_into_a_cancelled_one() {
        let mut pending = VecDeque::new();
        for message in [
            Message::Request { index: 1 },
            Message::HaveRequest,
            Message::Request { index: 2 },
            Message::Cancel { index: 2 },
            // For the request being served (not pending here): kept for it to find.
            Message::Cancel { index: 7 },
        ] {
            assert!(take_in(message, &mut pending).unwrap());
        }
        assert_eq!(
            Vec::from(pending),
            [
                Pending::Chunk(1),
                Pending::Have,
                Pending::Cancelled(2),
                Pending::Cancel(7)
            ]
        );
    }

    #[test]
    fn a_leaving_client_ends_and_a_stray_message_is_a_bad_request() {
        let mut pending = VecDeque::new();
        assert!(!take_in(Message::error(code::INTERNAL, "bye"), &mut pending).unwrap());
        let welcome = Message::Welcome {
            version: PROTOCOL_VERSION,
            chunk_count: 1,
        };
        let e = take_in(welcome, &mut pending).unwrap_err();
        let reject = e.downcast_ref::<Reject>().expect("a reject");
        assert_eq!(reject.code, code::BAD_REQUEST);
        assert!(
            reject.text.contains("after the handshake"),
            "{}",
            reject.text
        );
    }
}
