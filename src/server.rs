//! The peer server: serves the chunks of a store to other peers over the [`wire`] protocol
//! and announces what it holds to a tracker. One accept thread hands connections to a fixed
//! pool of workers; when all `max_conns` slots are taken the newcomer gets a "server busy"
//! error frame instead of waiting in a queue. Optionally an HTTP endpoint serves the
//! server's counters as Prometheus metrics (`GET /metrics`).
//!
//! [`wire`]: crate::wire

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Read};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::bounded;

use crate::api::AnnounceRequest;
use crate::auth::TicketVerifier;
use crate::bitfield::Bitfield;
use crate::http::{self, HttpConfig, HttpServer};
use crate::manifest::{AssetId, Manifest};
use crate::metrics::{self, Exposition};
use crate::ratelimit::{self, RateLimiter};
use crate::store::{InUse, Store};
use crate::tracker_client::{HttpStatus, TrackerClient, new_peer_id};
use crate::wire::{self, Conn, MAX_CONTROL_FRAME, Message, PROTOCOL_VERSION, WireError, code};

/// A client has this long to send its `Hello` after connecting: a healthy one sends it at
/// once, so 10 s only ever cuts off the stuck and the hostile.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request for this long is closed, freeing its worker for others.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A write (one chunk to a client) that cannot progress for this long means the client
/// stopped reading; give its worker to someone else.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default connection slots. Each is a thread with a small stack, and a chunk goes out with
/// `sendfile` without a user-space buffer, so 64 cost little memory.
pub const DEFAULT_MAX_CONNS: usize = 64;
/// Default cap of connections from one address: half the slots, so one host (or one NAT of
/// CI runners) cannot take them all, while a crowd on one machine still fits: a client
/// keeps one connection to a peer once it has several peers, and four at most.
pub const DEFAULT_MAX_CONNS_PER_ADDR: usize = DEFAULT_MAX_CONNS / 2;
/// Default upload slots: chunks sent at once over all connections. Fewer chunks at a time
/// each finish sooner, and a chunk a peer has received whole can be passed on; the other
/// requests wait their turn (in order of arrival under an upload cap).
pub const DEFAULT_UPLOAD_SLOTS: usize = 4;
/// A send that has taken this long gives its slot up and finishes without one, so that a
/// client reading slowly (or not at all) cannot keep the others waiting: a 256 KiB chunk
/// takes 10 ms at 25 MiB/s.
const SLOT_HOLD: Duration = Duration::from_millis(100);
/// Bytes per `sendfile` call, so that a send can give its slot up between calls.
const SEND_PIECE: usize = 64 << 10;
/// Heartbeat period used until the tracker says otherwise.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(20);
/// Longest heartbeat period accepted from a tracker: an hour, whatever it answers.
const MAX_ANNOUNCE_INTERVAL_SECS: u64 = 3600;
/// First retry after a failed announce; later ones back off exponentially.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// How long a closing connection waits for its error frame to leave and for the peer's
/// unread bytes to drain: long enough on any LAN, short enough not to hold a worker.
const CLOSE_LINGER: Duration = Duration::from_millis(500);
/// Most bytes drained from a closing connection before giving up on a clean close.
const MAX_DRAIN: usize = 256 << 10;
/// Refusal threads alive at once; a flood beyond this is closed without an explanation.
const MAX_REFUSERS: usize = 16;
/// Messages read ahead of the request being served. The reference client keeps at most
/// four requests in flight, plus a have request and a cancel for each request.
const MAX_PENDING: usize = 64;
/// A metrics scraper that leaves our answer unread this long loses its connection: a
/// scrape is a few kilobytes, so 10 s is generous.
const METRICS_SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Validated peer server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (`0.0.0.0:7001`, `[::]:7001`, `127.0.0.1:0` …).
    pub listen: SocketAddr,
    /// The store whose chunks are served.
    pub store: PathBuf,
    /// Files to import into the store (and publish, with a tracker) before serving.
    pub seeds: Vec<PathBuf>,
    /// Chunk size for seeded files.
    pub chunk_size: u32,
    /// Tracker to publish to and announce at.
    pub tracker: Option<String>,
    /// Register as the swarms' origin (fallback of last resort).
    pub origin: bool,
    /// Address to announce instead of the listening one.
    pub advertise: Option<SocketAddr>,
    /// Connection slots.
    pub max_conns: usize,
    /// Connections one remote address may hold at once.
    pub max_conns_per_addr: usize,
    /// Upload cap in bytes per second for the whole process.
    pub max_upload_rate: Option<u64>,
    /// Chunks sent at once over all connections (see [`DEFAULT_UPLOAD_SLOTS`]).
    pub upload_slots: usize,
    /// Heartbeat period override (otherwise what the tracker asks for).
    pub announce_interval: Option<Duration>,
    /// Token presented to the tracker (publish, announce).
    pub token: Option<String>,
    /// The tracker's public keys (hex): with any, clients must present a ticket signed by
    /// one of them. Empty: ask the tracker (`GET /keys`), whose empty answer means open mode.
    pub ticket_keys: Vec<String>,
    /// Refuse every client until [`Server::ticket_keys`]'s handle is told the keys (for a
    /// server whose owner learns them from its announces).
    pub await_keys: bool,
}

/// Longest a handshake waits for its server to learn whether tickets are needed (a client's
/// server before its first announce answer); then the client is told to retry.
const PENDING_KEYS_WAIT: Duration = Duration::from_secs(2);
/// How often a peer asks the tracker for its keys again when it meets a ticket signed by a
/// key it does not know (after a rotation): a forged ticket cannot make it ask more often.
const KEY_REFRESH: Duration = Duration::from_secs(10);

/// Whether a server asks clients for tickets.
enum Tickets {
    /// Not known yet: every client is refused "busy" until [`TicketKeys::set`] is called
    /// (a client serving while it downloads, before its first announce answer).
    Pending,
    /// Open mode: no ticket needed.
    Open,
    /// A valid ticket for the asset is needed.
    Check(TicketCheck),
}

/// Tells a running server the tracker's public keys, as announce answers bring them: none
/// means open mode.
#[derive(Clone)]
pub struct TicketKeys(Arc<Shared>);

impl TicketKeys {
    /// Sets the keys tickets must be signed with (empty: no tickets needed).
    pub fn set(&self, keys: &[String]) -> Result<()> {
        let mut tickets = self.0.tickets.write().unwrap_or_else(|e| e.into_inner());
        match &*tickets {
            Tickets::Check(check) if check.keys == keys => {}
            Tickets::Open if keys.is_empty() => {}
            _ if keys.is_empty() => *tickets = Tickets::Open,
            _ => *tickets = Tickets::Check(TicketCheck::new(keys, None)?),
        }
        drop(tickets);
        let (known, changed) = &self.0.keys_known;
        *known.lock().unwrap_or_else(|e| e.into_inner()) = true;
        changed.notify_all();
        Ok(())
    }
}

/// Checks the tickets clients present, learning the tracker's new key after a rotation.
struct TicketCheck {
    /// The keys it was made with, to tell whether new ones differ.
    keys: Vec<String>,
    verifier: RwLock<TicketVerifier>,
    tracker: Option<TrackerClient>,
    /// When the keys were last fetched again (`None`: not since start-up).
    refreshed: Mutex<Option<Instant>>,
}

impl TicketCheck {
    /// Checks tickets against `keys`; with `tracker`, fetches them again when a ticket is
    /// signed by a key it does not know.
    fn new(keys: &[String], tracker: Option<TrackerClient>) -> Result<TicketCheck> {
        Ok(TicketCheck {
            keys: keys.to_vec(),
            verifier: RwLock::new(TicketVerifier::from_hex(keys)?),
            tracker,
            refreshed: Mutex::new(None),
        })
    }

    fn verify(&self, ticket: &[u8], asset: &AssetId) -> Result<(), String> {
        let first = self
            .verifier
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .verify(ticket, asset);
        match first {
            Err(e) if e.contains("does not know") && self.refresh() => self
                .verifier
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .verify(ticket, asset)
                .map(drop),
            other => other.map(drop),
        }
    }

    /// Fetches the tracker's keys again, at most every [`KEY_REFRESH`]; whether it did.
    fn refresh(&self) -> bool {
        let Some(tracker) = &self.tracker else {
            return false;
        };
        {
            let mut last = self.refreshed.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_some_and(|t| t.elapsed() < KEY_REFRESH) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match tracker
            .keys()
            .and_then(|keys| TicketVerifier::from_hex(&keys))
        {
            Ok(verifier) => {
                *self.verifier.write().unwrap_or_else(|e| e.into_inner()) = verifier;
                true
            }
            Err(e) => {
                eprintln!("peer_server: refreshing the tracker's keys failed: {e:#}");
                false
            }
        }
    }
}

/// An asset the server has served, with its counters.
struct Served {
    manifest: Arc<Manifest>,
    /// Bytes of chunks sent.
    uploaded: AtomicU64,
    /// Chunks sent.
    chunks: AtomicU64,
}

/// What a download in this process holds so far, shared with the server so that peers can
/// fetch each chunk the moment it is verified, before it is recorded on disk.
pub type LiveHave = Arc<std::sync::RwLock<Bitfield>>;

struct Shared {
    store: Store,
    /// Assets being downloaded by this process, served from their in-memory progress.
    live: Mutex<HashMap<AssetId, LiveHave>>,
    assets: Mutex<HashMap<AssetId, Arc<Served>>>,
    limiter: Option<RateLimiter>,
    upload_slots: Slots,
    stop: AtomicBool,
    /// With auth on: the check every `Hello` must pass.
    tickets: RwLock<Tickets>,
    /// Set (and signalled) once `tickets` is no longer pending.
    keys_known: (Mutex<bool>, std::sync::Condvar),
    /// Connections being served, with the address they come from.
    active: Mutex<HashMap<u64, (IpAddr, TcpStream)>>,
    /// Connections being served now.
    in_use: AtomicUsize,
    /// Refusal threads running now.
    refusing: AtomicUsize,
    /// What the metrics endpoint reports beyond the per-asset counters.
    counters: Counters,
}

/// Connection counters for the metrics endpoint: atomics, bumped once per connection.
struct Counters {
    started: Instant,
    /// Connection slots (`max_conns`).
    slots: usize,
    /// Connections accepted, refused ones included.
    accepted: AtomicU64,
    /// Connections refused because every slot, or the address's share of them, was taken.
    refused: AtomicU64,
    /// Connections that ended in an error (logged on stderr).
    failed: AtomicU64,
    /// Of those, the ones where the client broke the protocol: a malformed frame, an
    /// unsupported version, a request out of order or out of range.
    protocol_errors: AtomicU64,
}

/// A bound peer server, ready to [`Server::serve`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    config: ServerConfig,
    shared: Arc<Shared>,
    seeded: Vec<Manifest>,
    /// The seeded assets, held in use (safe from eviction) for as long as the server runs.
    _seeds_in_use: Vec<InUse>,
    /// With a tracker: the heartbeat, already announced once, and when to beat next.
    heartbeat: Option<(Heartbeat, Duration)>,
    /// The metrics endpoint, when asked for.
    metrics: Option<HttpServer>,
}

/// Reads how many bytes of an asset a [`Server`] has sent, from any thread.
#[derive(Clone)]
pub struct UploadCounter(Arc<Shared>);

impl UploadCounter {
    /// Bytes of `asset` sent so far.
    pub fn get(&self, asset: &AssetId) -> u64 {
        let assets = self.0.assets.lock().unwrap_or_else(|e| e.into_inner());
        assets
            .get(asset)
            .map_or(0, |s| s.uploaded.load(Ordering::Relaxed))
    }
}

/// Stops a serving [`Server`] from another thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    metrics: Option<http::ShutdownHandle>,
}

impl ShutdownHandle {
    /// Stops accepting, closes open connections, and lets `serve` return.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(metrics) = &self.metrics {
            metrics.shutdown();
        }
        crate::net::wake_accept_loop(self.addr);
        for (_, stream) in self
            .shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Server {
    /// Opens the store, imports and publishes the seed files, and binds the socket.
    pub fn bind(config: ServerConfig) -> Result<Server> {
        Server::bind_with_metrics(config, None)
    }

    /// Like [`Server::bind`], and with `metrics` also binds an HTTP endpoint there that
    /// answers `GET /metrics` with the server's counters in the Prometheus text format.
    pub fn bind_with_metrics(config: ServerConfig, metrics: Option<SocketAddr>) -> Result<Server> {
        let store = Store::open(&config.store)?;
        let tracker = TrackerClient::optional(config.tracker.as_deref())?
            .map(|t| t.with_token(config.token.clone()));
        let keys = match (&tracker, config.ticket_keys.is_empty()) {
            (Some(tracker), true) => tracker
                .keys()
                .context("asking the tracker whether peers need tickets (GET /keys)")?,
            _ => config.ticket_keys.clone(),
        };
        let tickets = match (config.await_keys, keys.is_empty()) {
            (true, _) => Tickets::Pending,
            (false, true) => Tickets::Open,
            (false, false) => Tickets::Check(TicketCheck::new(&keys, tracker.clone())?),
        };
        let (mut seeded, mut seeds_in_use) = (Vec::new(), Vec::new());
        for path in &config.seeds {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("seed path {} names no file", path.display()))?;
            let (manifest, in_use) = store
                .import_file(path, &name, config.chunk_size)
                .with_context(|| format!("seeding {}", path.display()))?;
            if let Some(tracker) = &tracker {
                tracker
                    .publish(&manifest)
                    .with_context(|| format!("publishing {}", path.display()))?;
            }
            seeded.push(manifest);
            seeds_in_use.push(in_use);
        }
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding {} (is another process using it?)", config.listen))?;
        let addr = listener.local_addr()?;
        let metrics = match metrics {
            Some(at) => Some(HttpServer::bind(HttpConfig {
                write_timeout: METRICS_SEND_TIMEOUT,
                ..HttpConfig::new(at, "the metrics endpoint", "peer_server")
            })?),
            None => None,
        };
        let shared = Arc::new(Shared {
            store,
            live: Mutex::new(HashMap::new()),
            assets: Mutex::new(HashMap::new()),
            limiter: config.max_upload_rate.map(RateLimiter::new),
            upload_slots: Slots::new(config.upload_slots),
            stop: AtomicBool::new(false),
            keys_known: (
                Mutex::new(!matches!(tickets, Tickets::Pending)),
                std::sync::Condvar::new(),
            ),
            tickets: RwLock::new(tickets),
            active: Mutex::new(HashMap::new()),
            in_use: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            counters: Counters {
                started: Instant::now(),
                slots: config.max_conns.max(1),
                accepted: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                protocol_errors: AtomicU64::new(0),
            },
        });
        // Announce before reporting "listening", so that a script which starts a download as
        // soon as the server is up finds it in the swarm.
        let heartbeat = tracker.map(|tracker| {
            let mut heartbeat = Heartbeat::new(tracker, &config, addr);
            let wait = heartbeat.beat(&shared, &config);
            (heartbeat, wait)
        });
        Ok(Server {
            listener,
            addr,
            config,
            shared,
            seeded,
            _seeds_in_use: seeds_in_use,
            heartbeat,
            metrics,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the metrics endpoint is bound to, when there is one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(HttpServer::local_addr)
    }

    /// The manifests of the files seeded at start.
    pub fn seeded(&self) -> &[Manifest] {
        &self.seeded
    }

    /// Serves `asset` from a download in progress: requests are answered from `have`, which
    /// the downloader updates as chunks are verified and written.
    pub fn serve_live(&self, asset: AssetId, have: LiveHave) {
        self.shared
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(asset, have);
    }

    /// A counter of the bytes of `asset` this server has sent, for announces.
    pub fn uploaded(&self) -> UploadCounter {
        UploadCounter(Arc::clone(&self.shared))
    }

    /// A handle that sets the ticket keys while the server runs (see
    /// [`ServerConfig::await_keys`]).
    pub fn ticket_keys(&self) -> TicketKeys {
        TicketKeys(Arc::clone(&self.shared))
    }

    /// A handle that stops [`Server::serve`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
            addr: self.addr,
            metrics: self.metrics.as_ref().map(HttpServer::shutdown_handle),
        }
    }

    /// Serves until shut down; announces to the tracker, if any, and answers metrics
    /// requests, if asked to, in the background.
    pub fn serve(self) -> Result<()> {
        let announcer = self.heartbeat.map(|(heartbeat, wait)| {
            let (shared, config) = (Arc::clone(&self.shared), self.config.clone());
            std::thread::spawn(move || heartbeat.run(&shared, &config, wait))
        });
        let metrics = self.metrics.map(|http| {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || http.serve(|request| shared.answer_metrics(request)))
        });
        let max_conns = self.config.max_conns.max(1);
        // Slots are counted, not inferred from idle workers: a connection is refused only
        // when `max_conns` are really being served, and the queue never holds more than the
        // free slots, so sending on it never blocks the accept loop.
        let (conn_tx, conn_rx) = bounded::<(u64, TcpStream)>(max_conns);
        let workers: Vec<_> = (0..max_conns)
            .map(|_| {
                let (rx, shared) = (conn_rx.clone(), Arc::clone(&self.shared));
                std::thread::spawn(move || {
                    for (id, stream) in rx {
                        shared.serve_connection(&stream);
                        shared.lock_active().remove(&id);
                        shared.in_use.fetch_sub(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        let mut next_id = 0u64;
        for stream in self.listener.incoming() {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("peer_server: accept failed: {e}");
                    continue;
                }
            };
            let counters = &self.shared.counters;
            counters.accepted.fetch_add(1, Ordering::Relaxed);
            let Ok(ip) = stream.peer_addr().map(|a| a.ip()) else {
                continue;
            };
            let per_addr = self.config.max_conns_per_addr.max(1);
            let from_ip = (self.shared.lock_active().values())
                .filter(|(a, _)| *a == ip)
                .count();
            if from_ip >= per_addr {
                counters.refused.fetch_add(1, Ordering::Relaxed);
                self.shared.refuse(
                    stream,
                    format!(
                        "server busy: {ip} already has {per_addr} connections here, the most one address may hold; use those"
                    ),
                );
                continue;
            }
            if self.shared.in_use.fetch_add(1, Ordering::SeqCst) >= max_conns {
                self.shared.in_use.fetch_sub(1, Ordering::SeqCst);
                counters.refused.fetch_add(1, Ordering::Relaxed);
                self.shared.refuse(
                    stream,
                    format!(
                        "server busy: all {max_conns} connection slots are taken; try another peer or retry later"
                    ),
                );
                continue;
            }
            next_id += 1;
            if let Ok(clone) = stream.try_clone() {
                self.shared.lock_active().insert(next_id, (ip, clone));
            }
            // Cannot fail: the workers hold the receiver until this sender is dropped.
            let _ = conn_tx.send((next_id, stream));
        }
        drop(conn_tx);
        for worker in workers {
            let _ = worker.join();
        }
        if let Some(announcer) = announcer {
            let _ = announcer.join();
        }
        if let Some(metrics) = metrics {
            let _ = metrics.join();
        }
        Ok(())
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

/// Sends a last error frame, then closes without a reset: the write side is shut first and
/// what the peer already sent is drained (briefly), so the error frame is not discarded by
/// a TCP reset on the peer's side.
fn close_with_error(stream: &TcpStream, code: u16, text: &str) {
    let _ = stream.set_write_timeout(Some(CLOSE_LINGER));
    let _ = wire::write_message(&mut &*stream, &Message::error(code, text));
    let _ = stream.shutdown(Shutdown::Write);
    let _ = stream.set_read_timeout(Some(CLOSE_LINGER));
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + CLOSE_LINGER;
    let mut drained = 0;
    while Instant::now() < deadline && drained < MAX_DRAIN {
        match (&mut &*stream).read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
}

impl Shared {
    /// A client may connect as soon as the tracker names this peer, a moment before the
    /// announce answer that says whether tickets are needed is read here: waiting for it
    /// costs that client milliseconds, where a refusal would cost it a retry.
    fn wait_for_ticket_keys(&self) {
        let (known, changed) = &self.keys_known;
        let known = known.lock().unwrap_or_else(|e| e.into_inner());
        let _ = changed.wait_timeout_while(known, PENDING_KEYS_WAIT, |known| !*known);
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (IpAddr, TcpStream)>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tells a client over the connection limit to go elsewhere, on a short-lived thread so
    /// the accept loop never waits on it; past [`MAX_REFUSERS`] at once it just closes.
    fn refuse(self: &Arc<Self>, stream: TcpStream, text: String) {
        if self.refusing.fetch_add(1, Ordering::SeqCst) >= MAX_REFUSERS {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            return;
        }
        let shared = Arc::clone(self);
        std::thread::spawn(move || {
            close_with_error(&stream, code::SERVER_BUSY, &text);
            shared.refusing.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Answers a request to the metrics endpoint.
    fn answer_metrics(&self, request: &mut http::Request<'_>) -> http::Response {
        let path = request.path();
        match (request.method(), path) {
            (http::Method::Get, "/metrics") => {
                http::Response::new(200, metrics::CONTENT_TYPE, self.metrics())
            }
            (method, "/metrics") => {
                http::Response::error(405, format!("{method} is not allowed on /metrics"))
            }
            _ => http::Response::error(
                404,
                format!("no such endpoint: {path} (the peer server answers GET /metrics)"),
            ),
        }
    }

    /// The server's counters in the Prometheus text format.
    fn metrics(&self) -> String {
        // Every asset in the store is listed, served yet or not, so that its counters start
        // at 0 instead of appearing with their first bytes (which `rate()` would miss).
        for id in self.store.list().unwrap_or_default() {
            let _ = self.served(&id);
        }
        let mut assets: Vec<(String, Arc<Served>)> = self
            .assets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(id, served)| (id.to_string(), Arc::clone(served)))
            .collect();
        assets.sort_by(|a, b| a.0.cmp(&b.0));
        let counters = &self.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut m = Exposition::new();
        m.gauge(
            "swarmcache_peer_server_uptime_seconds",
            "Seconds since the peer server started.",
        )
        .sample(&[], counters.started.elapsed().as_secs());
        m.gauge(
            "swarmcache_peer_server_connection_slots",
            "Connections served at once (--max-conns); more are refused as busy.",
        )
        .sample(&[], counters.slots);
        m.gauge(
            "swarmcache_peer_server_connections_active",
            "Connections being served now.",
        )
        .sample(&[], self.lock_active().len());
        m.counter(
            "swarmcache_peer_server_connections_accepted_total",
            "Connections accepted, busy refusals included.",
        )
        .sample(&[], count(&counters.accepted));
        m.counter(
            "swarmcache_peer_server_busy_refusals_total",
            "Connections refused because every slot, or the remote address's share of them, was taken.",
        )
        .sample(&[], count(&counters.refused));
        m.counter(
            "swarmcache_peer_server_connections_failed_total",
            "Connections that ended in an error (timeouts, resets, protocol errors, unknown assets).",
        )
        .sample(&[], count(&counters.failed));
        m.counter(
            "swarmcache_peer_server_protocol_errors_total",
            "Connections closed because the client broke the protocol.",
        )
        .sample(&[], count(&counters.protocol_errors));
        let mut family = m.counter(
            "swarmcache_peer_server_served_bytes_total",
            "Bytes of chunks sent, per asset.",
        );
        for (id, served) in &assets {
            let labels = [("asset", id.as_str()), ("name", &served.manifest.name)];
            family.sample(&labels, count(&served.uploaded));
        }
        let mut family = m.counter(
            "swarmcache_peer_server_served_chunks_total",
            "Chunks sent, per asset.",
        );
        for (id, served) in &assets {
            let labels = [("asset", id.as_str()), ("name", &served.manifest.name)];
            family.sample(&labels, count(&served.chunks));
        }
        m.finish()
    }

    /// The asset's manifest, read from the store once and then kept in memory.
    fn served(&self, id: &AssetId) -> Result<Option<Arc<Served>>> {
        if let Some(s) = self
            .assets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(Some(Arc::clone(s)));
        }
        let Some(manifest) = self.store.manifest(id)? else {
            return Ok(None);
        };
        let served = Arc::new(Served {
            manifest: Arc::new(manifest),
            uploaded: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
        });
        let mut assets = self.assets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(Arc::clone(assets.entry(*id).or_insert(served))))
    }

    /// Serves one connection and, when it ends in error, tells the client why and logs it.
    fn serve_connection(&self, stream: &TcpStream) {
        let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
        let Err(e) = self.handle(stream) else { return };
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
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
                self.counters
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            close_with_error(stream, code, &text);
        }
        eprintln!("peer_server: connection from {peer}: {e:#}");
    }

    /// What the store holds of an asset, and its content file. They are read together: a
    /// `have` is written after the content it describes is in place, so a content file
    /// opened after reading `have` is never older than it.
    fn open_content(&self, asset: &AssetId, manifest: &Manifest) -> Result<(Bitfield, File)> {
        let live = self
            .live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(asset)
            .cloned();
        let have = match live {
            Some(live) => live.read().unwrap_or_else(|e| e.into_inner()).clone(),
            None => self.store.have(asset, manifest)?,
        };
        let path = self.store.data_path(asset);
        let data = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok((have, data))
    }

    /// Serves one connection: handshake, then requests until the client leaves.
    fn handle(&self, stream: &TcpStream) -> Result<()> {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut conn = Conn::new(stream, MAX_CONTROL_FRAME);
        let hello = conn.recv(HANDSHAKE_TIMEOUT).context("waiting for Hello")?;
        let Message::Hello {
            version,
            asset,
            ticket,
        } = hello
        else {
            return Err(reject(code::BAD_REQUEST, "the first frame must be Hello"));
        };
        if version != PROTOCOL_VERSION {
            return Err(reject(
                code::UNSUPPORTED_VERSION,
                format!(
                    "protocol version {version} is not supported; this peer speaks {PROTOCOL_VERSION}"
                ),
            ));
        }
        self.wait_for_ticket_keys();
        match &*self.tickets.read().unwrap_or_else(|e| e.into_inner()) {
            Tickets::Open => {}
            Tickets::Pending => {
                return Err(reject(
                    code::SERVER_BUSY,
                    "not serving yet: this peer has not heard from its tracker; retry soon",
                ));
            }
            Tickets::Check(check) => check
                .verify(&ticket, &asset)
                .map_err(|e| reject(code::UNAUTHORIZED, e))?,
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
        let (mut have, mut data) = self.open_content(&asset, manifest)?;
        let welcome = Message::Welcome {
            version: PROTOCOL_VERSION,
            chunk_count: manifest.chunk_count(),
        };
        conn.send(&welcome)?;
        // Requests read but not answered yet, in order; reading ahead of the one being served
        // lets a `Cancel` reach a request still waiting here.
        let mut pending = VecDeque::new();
        // The client closed its side: what it asked for is still answered, then we close.
        let mut closed = false;
        while !self.stop.load(Ordering::SeqCst) {
            if pending.is_empty() {
                if closed {
                    return Ok(());
                }
                let Some(message) = next_message(&mut conn)? else {
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
                    (have, data) = self.open_content(&asset, manifest)?;
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
                Pending::Chunk(index) => {
                    if !have.get(index) {
                        // The store may have grown since the handshake (a download in progress).
                        (have, data) = self.open_content(&asset, manifest)?;
                    }
                    if !have.get(index) {
                        conn.send(&Message::DontHave { index })?;
                        continue;
                    }
                    let len = manifest.chunk_len(index) as u64;
                    let slot = self.upload_slots.take();
                    ratelimit::take(self.limiter.as_ref(), len);
                    // Waiting for a slot and the rate took time: the client may have got the
                    // chunk elsewhere meanwhile, or left.
                    if !read_ahead(&mut conn, &mut pending, &mut closed)? {
                        return Ok(());
                    }
                    if let Some(at) = pending.iter().position(|p| *p == Pending::Cancel(index)) {
                        pending.remove(at);
                        drop(slot);
                        if let Some(limiter) = &self.limiter {
                            limiter.give_back(len);
                        }
                        conn.send(&Message::Cancelled { index })?;
                    } else {
                        let at = manifest.chunk_offset(index);
                        send_chunk(stream, &data, at, index, len as u32, slot).map_err(|e| {
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

/// A counting semaphore: [`Slots::take`] waits for one of a fixed number of slots, which
/// goes back when the returned guard is dropped.
struct Slots {
    give: crossbeam_channel::Sender<()>,
    take: crossbeam_channel::Receiver<()>,
}

impl Slots {
    fn new(count: usize) -> Slots {
        let count = count.max(1);
        let (give, take) = bounded(count);
        for _ in 0..count {
            give.send(()).expect("room for every slot");
        }
        Slots { give, take }
    }

    fn take(&self) -> Slot<'_> {
        self.take
            .recv()
            .expect("the sender lives as long as the receiver");
        Slot(self)
    }
}

/// A taken upload slot.
struct Slot<'a>(&'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let _ = self.0.give.send(());
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
            eprintln!("peer_server: client closed with error {code}: {message}");
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

/// Reads the client's next message, waiting up to [`IDLE_TIMEOUT`] for it; `None` when the
/// client closed the connection between frames.
fn next_message<'c>(conn: &'c mut Conn<&TcpStream>) -> Result<Option<Message<'c>>> {
    match conn.recv(IDLE_TIMEOUT) {
        Ok(message) => Ok(Some(message)),
        Err(WireError::Closed) => Ok(None),
        Err(e) => Err(anyhow::Error::new(e).context("waiting for a request")),
    }
}

/// Sends one chunk frame; on Linux the data goes from the page cache to the socket with
/// `sendfile`, without passing through user space. The upload slot goes back when the
/// chunk is sent, or once the send has taken [`SLOT_HOLD`]: while it holds the slot, the
/// socket waits at most that long for room (a client that does not read fills it), and
/// then the rest goes out without a slot, under the usual [`WRITE_TIMEOUT`].
fn send_chunk(
    stream: &TcpStream,
    data: &File,
    offset: u64,
    index: u32,
    len: u32,
    slot: Slot<'_>,
) -> Result<()> {
    let started = Instant::now();
    let mut slot = Some(slot);
    stream.set_write_timeout(Some(SLOT_HOLD))?;
    let header = wire::chunk_header(index, len);
    let mut header_sent = 0;
    let mut position = offset;
    let end = offset + len as u64;
    while header_sent < header.len() || position < end {
        if slot.is_some() && started.elapsed() > SLOT_HOLD {
            slot = None;
            stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        }
        let sent = if header_sent < header.len() {
            io::Write::write(&mut &*stream, &header[header_sent..]).inspect(|&n| header_sent += n)
        } else {
            send_piece(stream, data, &mut position, end)
        };
        match sent {
            Ok(0) => {
                // The frame header promised `len` bytes; closing is the only honest option.
                anyhow::bail!(
                    "store file ends {} bytes early; the store is damaged",
                    end - position
                );
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if slot.is_some() && wire::is_timeout(&e) => {
                slot = None;
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if slot.is_some() {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    }
    Ok(())
}

/// Sends up to [`SEND_PIECE`] bytes of the data file from `position` (advanced by what
/// went out) to the socket.
fn send_piece(stream: &TcpStream, data: &File, position: &mut u64, end: u64) -> io::Result<usize> {
    let left = ((end - *position) as usize).min(SEND_PIECE);
    #[cfg(target_os = "linux")]
    {
        rustix::fs::sendfile(stream, data, Some(position), left).map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut buf = vec![0u8; left];
        let n = std::os::unix::fs::FileExt::read_at(data, &mut buf, *position)?;
        let sent = io::Write::write(&mut &*stream, &buf[..n])?;
        *position += sent as u64;
        Ok(sent)
    }
}

/// The server's heartbeats to its tracker.
struct Heartbeat {
    tracker: TrackerClient,
    peer_id: String,
    addr: String,
    interval: Duration,
    failures: u32,
}

impl Heartbeat {
    fn new(tracker: TrackerClient, config: &ServerConfig, bound: SocketAddr) -> Heartbeat {
        Heartbeat {
            tracker,
            peer_id: new_peer_id(),
            addr: config.advertise.unwrap_or(bound).to_string(),
            interval: config
                .announce_interval
                .unwrap_or(DEFAULT_ANNOUNCE_INTERVAL),
            failures: 0,
        }
    }

    /// Announces every asset once; returns how long to wait before the next beat.
    fn beat(&mut self, shared: &Shared, config: &ServerConfig) -> Duration {
        match announce_all(shared, &self.tracker, config, &self.peer_id, &self.addr) {
            Ok(asked) => {
                if self.failures > 0 {
                    eprintln!(
                        "peer_server: tracker {} reachable again",
                        self.tracker.url()
                    );
                }
                self.failures = 0;
                if let Some(asked) = asked {
                    self.interval = config.announce_interval.unwrap_or(asked);
                }
                self.interval
            }
            Err(e) => {
                if self.failures == 0 {
                    eprintln!("peer_server: announcing failed (retrying with backoff): {e:#}");
                }
                self.failures += 1;
                // 1 s, 2 s, 4 s … up to the heartbeat period: a tracker that starts after
                // its peers, or restarts, learns of them within seconds.
                RETRY_FIRST
                    .saturating_mul(1 << (self.failures - 1).min(10))
                    .min(self.interval)
            }
        }
    }

    /// Beats until the server stops, the first after `wait`; then leaves every swarm.
    fn run(mut self, shared: &Shared, config: &ServerConfig, mut wait: Duration) {
        loop {
            let deadline = Instant::now() + wait;
            while Instant::now() < deadline {
                if shared.stop.load(Ordering::SeqCst) {
                    self.leave(shared, config);
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            wait = self.beat(shared, config);
        }
    }

    /// Tells the tracker this server is gone from each swarm, with what it served, so that
    /// clients stop being sent to it now rather than after the peer timeout.
    fn leave(&self, shared: &Shared, config: &ServerConfig) {
        for id in shared.store.list().unwrap_or_default() {
            let uploaded = shared
                .assets
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&id)
                .map_or(0, |s| s.uploaded.load(Ordering::Relaxed));
            let request = AnnounceRequest {
                peer_id: self.peer_id.clone(),
                event: Some(crate::api::AnnounceEvent::Stopped),
                uploaded,
                // So that the tracker counts an origin's last bytes as the origin's.
                origin: config.origin,
                ..AnnounceRequest::default()
            };
            let _ = self.tracker.announce(&id, &request);
        }
    }
}

/// One heartbeat for every asset in the store; returns the interval the tracker asked for.
fn announce_all(
    shared: &Shared,
    tracker: &TrackerClient,
    config: &ServerConfig,
    peer_id: &str,
    addr: &str,
) -> Result<Option<Duration>> {
    let mut asked = None;
    for id in shared.store.list()? {
        // One damaged asset must not take the server out of every other swarm.
        let state = shared.served(&id).and_then(|served| {
            let served = served.with_context(|| format!("asset {id} has no manifest"))?;
            let have = shared.store.have(&id, &served.manifest)?;
            Ok((served, have))
        });
        let (served, have) = match state {
            Ok(state) => state,
            Err(e) => {
                eprintln!("peer_server: not announcing {id}: {e:#}");
                continue;
            }
        };
        if have.count() == 0 && !have.is_empty() {
            continue;
        }
        let request = AnnounceRequest {
            peer_id: peer_id.to_string(),
            addr: Some(addr.to_string()),
            complete: have.is_full(),
            have: (!have.is_full()).then(|| have.to_hex()),
            origin: config.origin,
            uploaded: served.uploaded.load(Ordering::Relaxed),
            ..AnnounceRequest::default()
        };
        match tracker.announce(&id, &request) {
            Ok(answer) => {
                asked = Some(Duration::from_secs(
                    answer.interval_secs.clamp(1, MAX_ANNOUNCE_INTERVAL_SECS),
                ))
            }
            // An asset published to another tracker is not an error for this one.
            Err(e)
                if e.downcast_ref::<HttpStatus>()
                    .is_some_and(|s| s.status == 404) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(asked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shutdown_stops_the_metrics_endpoint_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            store: dir.path().join("store"),
            seeds: Vec::new(),
            chunk_size: 1 << 16,
            tracker: None,
            origin: false,
            advertise: None,
            max_conns: 2,
            max_conns_per_addr: 2,
            max_upload_rate: None,
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            announce_interval: None,
            token: None,
            ticket_keys: Vec::new(),
            await_keys: false,
        };
        let server =
            Server::bind_with_metrics(config, Some("127.0.0.1:0".parse().unwrap())).expect("bind");
        let metrics = server.metrics_addr().expect("a metrics address");
        let stop = server.shutdown_handle();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || done_tx.send(server.serve().is_ok()));
        let body = ureq::get(&format!("http://{metrics}/metrics"))
            .call()
            .expect("a scrape")
            .into_string()
            .unwrap();
        assert!(body.contains("swarmcache_peer_server_connections_accepted_total 0"));
        stop.shutdown();
        assert_eq!(
            done.recv_timeout(Duration::from_secs(10)),
            Ok(true),
            "serve returns, its metrics thread joined"
        );
        // The endpoint's listener closes once its server is dropped, just after.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&metrics, Duration::from_secs(1)).is_ok() {
            assert!(
                Instant::now() < deadline,
                "metrics still accepted after shutdown"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
