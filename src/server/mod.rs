//! The peer server: serves the chunks of a store to other peers over the [`wire`] protocol
//! and announces what it holds to a tracker. One accept thread (the [`crate::net`]
//! skeleton) holds new connections in a lobby, without a thread each, until their whole
//! `Hello` arrives (2 s at most), then seats them (`seats`) and hands them to a fixed pool
//! of workers; when all `max_conns` seats are taken the session idle longest yields, or
//! the newcomer gets a "server busy" error frame instead of waiting in a queue.
//! Optionally an HTTP endpoint serves the server's counters as Prometheus metrics
//! (`GET /metrics`).
//!
//! Rooms: `seats` (session slots, per address, and who yields), `session` (one
//! connection's protocol), `uploads` (upload slots, sending chunks,
//! the rate cap), `tickets` (who may be served), `stats` (counters, `/metrics`); the
//! heartbeat runs on [`crate::announce`].
//!
//! [`wire`]: crate::wire

mod seats;
mod session;
mod stats;
mod tickets;
mod uploads;

use std::collections::{HashMap, HashSet};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam_channel::{Sender, bounded};

use crate::announce::{Announce, Announcer, Departure, LEAVE_BUDGET, Rhythm};
use crate::api::{AnnounceEvent, AnnounceRequest, BatchAnnounceRequest, BatchEntry};
use crate::bitfield::LiveHave;
use crate::crypt::ContentKey;
use crate::http::{HttpConfig, HttpServer};
use crate::manifest::{AssetId, Manifest};
use crate::net::{Greeter, Listener, LobbyLimits, LobbyRefusal};
use crate::ratelimit::RateLimiter;
use crate::store::{InUse, Store};
use crate::sync::LockExt;
use crate::tracker_client::{HttpStatus, TrackerClient, new_peer_id, split_batch};
use crate::wire::{self, code};
use seats::{Held, NoSeat, Seats};
use stats::{Counters, Served};
use tickets::{Gate, TicketCheck, Tickets};
use uploads::Uploads;

pub use crate::announce::DEFAULT_ANNOUNCE_INTERVAL;
pub use crate::net::ShutdownHandle;
pub use stats::UploadCounter;
pub use tickets::TicketKeys;
pub use uploads::{GaugeReading, UploadGauge};

/// A client has this long to send its whole `Hello` after connecting: a healthy one sends
/// it at once, in one segment; 2 s leave room for one lost segment (TCP's first
/// retransmission comes after 1 s) and cut off a silent or trickling connection five times
/// sooner than the 10 s this was.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
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
/// A metrics scraper that leaves our answer unread this long loses its connection: a
/// scrape is a few kilobytes, so 10 s is generous.
const METRICS_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections that have not sent their whole `Hello` yet, held by the accept thread
/// without a thread each (see [`crate::net::Listener::accept_greeted`]): twice the seats,
/// so that a flood of silent connections must outrun 128 honest handshakes (each of which
/// takes one round trip) to keep one out: the oldest waiting connection makes room for a
/// newcomer.
const LOBBY_SLOTS: usize = 128;
/// Of those, what one address (an IPv4 address or an IPv6 /64) may hold: a client opens
/// at most four connections to a source at once (`--workers`), so 16 lets four clients
/// behind one NAT handshake together, and it takes eight addresses to fill the lobby.
const LOBBY_PER_ADDR: usize = 16;
/// Refused sockets whose last words are being written and drained at once by the accept
/// thread; past it a refusal is written and closed at once (the words still leave: a
/// fresh socket's buffer takes them).
const CLOSING_AT_ONCE: usize = 512;
/// Sessions told to yield their seat that may still be saying so at once; the worker pool
/// has this many threads beyond the seats.
const YIELDS_AT_ONCE: usize = 8;
/// The largest `Hello` frame: type, magic, version, asset, ticket length and a ticket of
/// [`wire::MAX_TICKET`] bytes. A longer first frame is refused before it is read.
const MAX_HELLO_FRAME: u32 = 1 + 4 + 2 + 32 + 2 + wire::MAX_TICKET as u32;

/// Validated peer server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (`0.0.0.0:7001`, `[::]:7001`, `127.0.0.1:0` …).
    pub listen: SocketAddr,
    /// The store whose chunks are served.
    pub store: PathBuf,
    /// Files to import into the store (and publish, with a tracker) before serving.
    pub seeds: Vec<PathBuf>,
    /// Asset names for the seeds, in order; a seed without one is named by its file name.
    /// A label kept beside the manifest: it does not change the asset id.
    pub seed_names: Vec<String>,
    /// Chunk size for seeded files.
    pub chunk_size: u32,
    /// Encrypt each seed with a new random key on its way into the store (the store holds
    /// only ciphertext) and publish the key with its manifest; needs a tracker.
    pub encrypt: bool,
    /// Tracker to publish to and announce at.
    pub tracker: Option<String>,
    /// Register as the swarms' origin (fallback of last resort).
    pub origin: bool,
    /// Address to announce instead of the listening one.
    pub advertise: Option<SocketAddr>,
    /// Connection slots.
    pub max_conns: usize,
    /// Connections one remote address (an IPv4 address or an IPv6 /64) may hold at once.
    pub max_conns_per_addr: usize,
    /// Upload cap in bytes per second for the whole process.
    pub max_upload_rate: Option<u64>,
    /// Chunks sent at once over all connections (see [`DEFAULT_UPLOAD_SLOTS`]).
    pub upload_slots: usize,
    /// Heartbeat period override (otherwise what the tracker asks for).
    pub announce_interval: Option<Duration>,
    /// Token presented to the tracker (publish, announce).
    pub token: Option<String>,
    /// How to reach an `https://` tracker (CAs), and whether the token may cross plain
    /// `http://` to another host.
    pub tracker_tls: crate::tracker_client::TrackerTls,
    /// The tracker's public keys (hex): with any, clients must present a ticket signed by
    /// one of them. Empty: ask the tracker (`GET /keys`), whose empty answer means open mode.
    pub ticket_keys: Vec<String>,
    /// Refuse every client until [`Server::ticket_keys`]'s handle is told the keys (for a
    /// server whose owner learns them from its announces).
    pub await_keys: bool,
    /// Remove from the store each asset the tracker says was unpublished, once nothing
    /// uses it (a `--seed` of this server is in use while it runs). Default: keep it.
    pub remove_unpublished: bool,
    /// A second upload limit whose rate its owner changes while serving: a `get` lowers it
    /// when its own download is starved (`client::uplink`). `None` for a pure seed.
    pub yield_to: Option<Arc<RateLimiter>>,
}

impl ServerConfig {
    /// A server of `store` on `listen` with the defaults: nothing seeded, no tracker, not
    /// an origin, the `DEFAULT_*` slots and caps, no upload cap, open mode.
    pub fn new(listen: SocketAddr, store: PathBuf) -> ServerConfig {
        ServerConfig {
            listen,
            store,
            seeds: Vec::new(),
            seed_names: Vec::new(),
            encrypt: false,
            chunk_size: crate::manifest::DEFAULT_CHUNK_SIZE,
            tracker: None,
            origin: false,
            advertise: None,
            max_conns: DEFAULT_MAX_CONNS,
            max_conns_per_addr: DEFAULT_MAX_CONNS_PER_ADDR,
            max_upload_rate: None,
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            announce_interval: None,
            token: None,
            tracker_tls: crate::tracker_client::TrackerTls::default(),
            ticket_keys: Vec::new(),
            await_keys: false,
            remove_unpublished: false,
            yield_to: None,
        }
    }
}

/// What the workers, the announcer and the metrics endpoint share.
struct Shared {
    store: Store,
    /// Assets being downloaded by this process, served from their in-memory progress.
    live: Mutex<HashMap<AssetId, LiveHave>>,
    assets: Mutex<HashMap<AssetId, Arc<Served>>>,
    uploads: Uploads,
    stop: ShutdownHandle,
    /// Whether, and how, every `Hello`'s ticket is checked.
    gate: Arc<Gate>,
    /// Sessions being served, per address, closed on shutdown.
    seats: Seats,
    /// What the metrics endpoint reports beyond the per-asset counters.
    counters: Counters,
    /// Assets the tracker answered "unpublished" (410) for at the last beat: not served,
    /// whatever the store holds, until a beat finds them published again.
    withdrawn: Mutex<HashSet<AssetId>>,
    /// Whether to remove those from the store ([`ServerConfig::remove_unpublished`]).
    remove_unpublished: bool,
}

impl Shared {
    /// Whether the tracker unpublished `asset` (as of the last beat).
    fn is_withdrawn(&self, asset: &AssetId) -> bool {
        self.withdrawn.locked().contains(asset)
    }

    /// Records the assets a beat found unpublished, saying which stop and which resume;
    /// with `remove_unpublished`, removes them from the store (tried again at each beat
    /// while something uses one).
    fn withdraw(&self, gone: HashSet<AssetId>, tracker: &str) {
        let mut withdrawn = self.withdrawn.locked();
        for id in gone.difference(&withdrawn) {
            let files = if self.remove_unpublished {
                "removing it from the store once nothing uses it".to_string()
            } else {
                format!("its files stay in the store: `peer_client cache rm {id}` removes them")
            };
            log::warn!(
                "announce: tracker {tracker} says asset {id} was unpublished; no longer serving it ({files})"
            );
        }
        for id in withdrawn.difference(&gone) {
            // A removed asset is no longer announced, so no longer refused: not a return.
            if matches!(self.store.manifest(id), Ok(Some(_))) {
                log::info!("announce: asset {id} is published again at {tracker}; serving it");
            }
        }
        if self.remove_unpublished {
            for id in &gone {
                match self.store.remove(id) {
                    Ok(crate::store::Removal::Removed) => {
                        self.assets.locked().remove(id);
                        log::info!("removed unpublished asset {id} from the store");
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("removing unpublished asset {id}: {e:#}"),
                }
            }
        }
        *withdrawn = gone;
    }
}

/// A bound peer server, ready to [`Server::serve`].
pub struct Server {
    listener: Listener,
    config: ServerConfig,
    shared: Arc<Shared>,
    seeded: Vec<Manifest>,
    /// The seeded assets, held in use (safe from eviction) for as long as the server runs.
    _seeds_in_use: Vec<InUse>,
    /// With a tracker: the heartbeat, already announced once, its rhythm and when to beat
    /// next.
    heartbeat: Option<(StoreAnnounce, Rhythm, Duration)>,
    /// The metrics endpoint, when asked for.
    metrics: Option<HttpServer>,
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
        let tracker = TrackerClient::optional(config.tracker.as_deref(), &config.tracker_tls)?
            .map(|t| t.with_token(config.token.clone()));
        if let Some(tracker) = &tracker {
            tracker.check_token_transport()?;
        }
        let keys = match (&tracker, config.ticket_keys.is_empty()) {
            (Some(tracker), true) => tracker
                .keys()
                .context("asking the tracker whether peers need tickets (GET /keys)")?,
            _ => config.ticket_keys.clone(),
        };
        let tickets = match (config.await_keys, keys.is_empty()) {
            (true, _) => Tickets::Pending,
            (false, true) => Tickets::Open,
            // The answer to GET /keys above has already set the tracker's clock.
            (false, false) => {
                let clock = tracker
                    .as_ref()
                    .map(TrackerClient::clock)
                    .unwrap_or_default();
                Tickets::Check(TicketCheck::new(&keys, tracker.clone(), clock)?)
            }
        };
        if config.encrypt && tracker.is_none() && !config.seeds.is_empty() {
            bail!(
                "--encrypt needs --tracker: the tracker keeps each seed's content key, which would otherwise exist nowhere"
            );
        }
        let (mut seeded, mut seeds_in_use) = (Vec::new(), Vec::new());
        for (i, path) in config.seeds.iter().enumerate() {
            let name = match config.seed_names.get(i) {
                Some(name) => name.clone(),
                None => path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .with_context(|| {
                        format!("seed path {} names no file; give --name", path.display())
                    })?,
            };
            // A new key for every run: the same file seeded twice is two assets (a key is
            // never derived from the content).
            let key = config.encrypt.then(ContentKey::generate).transpose()?;
            if let (Some(_), Some(tracker)) = (&key, &tracker)
                && !tracker.is_private()
            {
                bail!(
                    "--encrypt: refusing to send content keys in clear to the tracker {}: use its https:// URL, or run on its host",
                    tracker.url()
                );
            }
            let imported = match &key {
                _ if path.is_dir() && key.is_some() => Err(anyhow::anyhow!(
                    "--encrypt takes files, and {} is a directory; seed an encrypted tar of it",
                    path.display()
                )),
                // A directory is served from its files in place: no copy in the store.
                _ if path.is_dir() => store.seed_tree(path, &name, config.chunk_size),
                Some(key) => store.import_encrypted(path, &name, config.chunk_size, key),
                None => store.import_file(path, &name, config.chunk_size),
            };
            let (manifest, in_use) =
                imported.with_context(|| format!("seeding {}", path.display()))?;
            if let Some(tracker) = &tracker {
                tracker
                    .publish_keyed(&manifest, key.as_ref())
                    .with_context(|| format!("publishing {}", path.display()))?;
            }
            seeded.push(manifest);
            seeds_in_use.push(in_use);
        }
        let listener = Listener::bind(config.listen)
            .with_context(|| format!("binding {} (is another process using it?)", config.listen))?;
        let metrics = match metrics {
            Some(at) => Some(HttpServer::bind(HttpConfig {
                write_timeout: METRICS_SEND_TIMEOUT,
                ..HttpConfig::new(at, "the metrics endpoint")
            })?),
            None => None,
        };
        let shared = Arc::new(Shared {
            store,
            live: Mutex::new(HashMap::new()),
            assets: Mutex::new(HashMap::new()),
            uploads: Uploads::new(
                config.upload_slots,
                config.max_upload_rate,
                config.yield_to.clone(),
            ),
            stop: ShutdownHandle::new(),
            gate: Arc::new(Gate::new(tickets)),
            seats: Seats::new(
                config.max_conns.max(1),
                config.max_conns_per_addr.max(1),
                YIELDS_AT_ONCE,
            ),
            counters: Counters::new(config.max_conns.max(1)),
            withdrawn: Mutex::new(HashSet::new()),
            remove_unpublished: config.remove_unpublished,
        });
        // Announce before reporting "listening", so that a script which starts a download as
        // soon as the server is up finds it in the swarm.
        let heartbeat = match tracker {
            None => None,
            Some(tracker) => {
                let mut announce = StoreAnnounce {
                    tracker,
                    peer_id: new_peer_id(),
                    addr: config
                        .advertise
                        .unwrap_or(listener.local_addr())
                        .to_string(),
                    origin: config.origin,
                    shared: Arc::clone(&shared),
                    instance: None,
                    batches: true,
                    refused: 0,
                };
                let mut rhythm = match config.announce_interval {
                    Some(fixed) => Rhythm::fixed(fixed),
                    None => Rhythm::tracker(DEFAULT_ANNOUNCE_INTERVAL),
                };
                // A tracker that refuses the announce itself (400: a loopback address it sees
                // come from another host, say; 403: an --advertise-addr the token may not
                // advertise) refuses every later one too: retrying for ever would leave a
                // server that nobody is ever sent to, saying so only in its log.
                let first = match announce.beat() {
                    Err(e)
                        if e.downcast_ref::<HttpStatus>()
                            .is_some_and(|s| matches!(s.status, 400 | 403)) =>
                    {
                        let url = announce.tracker.url();
                        return Err(
                            e.context(format!("the tracker {url} refused to list this server"))
                        );
                    }
                    other => other,
                };
                let wait = rhythm.after(first, &announce.tracker());
                Some((announce, rhythm, wait))
            }
        };
        Ok(Server {
            listener,
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
        self.listener.local_addr()
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
        self.shared.live.locked().insert(asset, have);
    }

    /// What this server's uploads did: bytes written, time busy and held by a rate.
    pub fn upload_gauge(&self) -> Arc<UploadGauge> {
        Arc::clone(&self.shared.uploads.gauge)
    }

    /// A counter of the bytes of `asset` this server has sent, for announces.
    pub fn uploaded(&self) -> UploadCounter {
        UploadCounter(Arc::clone(&self.shared))
    }

    /// A handle that sets the ticket keys while the server runs (see
    /// [`ServerConfig::await_keys`]).
    pub fn ticket_keys(&self) -> TicketKeys {
        TicketKeys(Arc::clone(&self.shared.gate))
    }

    /// A handle that stops [`Server::serve`]: it stops accepting within
    /// [`crate::net::ACCEPT_POLL`], closes open connections, leaves the swarms and returns.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shared.stop.clone()
    }

    /// Serves until shut down; announces to the tracker, if any, and answers metrics
    /// requests, if asked to, in the background.
    pub fn serve(self) -> Result<()> {
        let announcer = self.heartbeat.map(|(announce, rhythm, wait)| {
            Announcer::start(Departure::new(announce), rhythm, wait)
        });
        let metrics_stop = self.metrics.as_ref().map(HttpServer::shutdown_handle);
        let metrics = self.metrics.map(|http| {
            let shared = Arc::clone(&self.shared);
            std::thread::spawn(move || http.serve(|request| shared.answer_metrics(request)))
        });
        let max_conns = self.config.max_conns.max(1);
        let per_addr = self.config.max_conns_per_addr.max(1);
        // Seats are counted, not inferred from idle workers: a session is refused only when
        // `max_conns` are really being served and none can yield, and the workers (one per
        // seat, plus one per yield under way) always outnumber what the queue can hold, so
        // sending on it never blocks the accept loop.
        let threads = max_conns + YIELDS_AT_ONCE;
        let (conn_tx, conn_rx) = bounded::<(Held, TcpStream, Vec<u8>)>(threads);
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                let (rx, shared) = (conn_rx.clone(), Arc::clone(&self.shared));
                std::thread::spawn(move || {
                    for (held, stream, hello) in rx {
                        shared.serve_connection(&stream, &hello, &held);
                        drop(held);
                    }
                })
            })
            .collect();
        let shared = &self.shared;
        let mut greeter = HelloGreeter {
            shared,
            conn_tx: &conn_tx,
            max_conns,
            per_addr,
        };
        let limits = LobbyLimits {
            capacity: LOBBY_SLOTS,
            per_addr: LOBBY_PER_ADDR,
            deadline: HANDSHAKE_TIMEOUT,
            closing: CLOSING_AT_ONCE,
        };
        self.listener
            .accept_greeted(&shared.stop, limits, &mut greeter, |e| {
                log::warn!("serving: accept failed: {e}")
            });
        // Workers blocked reading a connection return as soon as it is shut down.
        shared.seats.close_all();
        if let Some(stop) = metrics_stop {
            stop.shutdown();
        }
        // Leaves the swarms, while the workers finish.
        drop(announcer);
        drop(conn_tx);
        for worker in workers {
            let _ = worker.join();
        }
        if let Some(metrics) = metrics {
            let _ = metrics.join();
        }
        Ok(())
    }
}

/// The accept loop's view of the protocol: a `Hello` frame's length, the words of each
/// refusal, and the seat a whole `Hello` gets.
struct HelloGreeter<'a> {
    shared: &'a Shared,
    conn_tx: &'a Sender<(Held, TcpStream, Vec<u8>)>,
    max_conns: usize,
    per_addr: usize,
}

impl HelloGreeter<'_> {
    fn busy(&self, text: &str) -> Vec<u8> {
        Counters::bump(&self.shared.counters.refused);
        session::error_frame(code::SERVER_BUSY, text)
    }
}

impl Greeter for HelloGreeter<'_> {
    fn accepted(&mut self) {
        Counters::bump(&self.shared.counters.accepted);
    }

    fn frame_len(&self, bytes: &[u8]) -> Result<Option<usize>, Vec<u8>> {
        wire::codec::frame_len(bytes, MAX_HELLO_FRAME).map_err(|e| {
            Counters::bump(&self.shared.counters.failed);
            Counters::bump(&self.shared.counters.protocol_errors);
            session::error_frame(
                code::BAD_FRAME,
                &format!("{e} (the first frame must be a Hello)"),
            )
        })
    }

    fn refusal(&self, why: LobbyRefusal) -> Vec<u8> {
        match why {
            LobbyRefusal::Address { key, open } => self.busy(&format!(
                "server busy: {key} has {open} connections here that have not said Hello yet, the most one address may; send Hello at once after connecting"
            )),
            LobbyRefusal::Evicted => self.busy(
                "server busy: too many connections are waiting to say Hello; retry later",
            ),
            LobbyRefusal::Late(limit) => {
                Counters::bump(&self.shared.counters.failed);
                session::error_frame(
                    code::BAD_REQUEST,
                    &format!("no whole Hello within {limit:?} of connecting; send it at once"),
                )
            }
        }
    }

    fn greeted(
        &mut self,
        stream: TcpStream,
        remote: SocketAddr,
        frame: Vec<u8>,
    ) -> Result<(), (TcpStream, Vec<u8>)> {
        let text = match self
            .shared
            .seats
            .enter(remote.ip(), Some(&stream), Instant::now())
        {
            Ok(held) => match self.conn_tx.try_send((held, stream, frame)) {
                Ok(()) => return Ok(()),
                // Not while the seats and threads are counted right; said plainly if so.
                Err(e) => {
                    let (_, stream, _) = e.into_inner();
                    return Err((
                        stream,
                        self.busy("server busy: no worker free; retry later"),
                    ));
                }
            },
            Err(NoSeat::Address { key, .. }) => format!(
                "server busy: {key} already has {} connections here, the most one address may hold; use those",
                self.per_addr
            ),
            Err(NoSeat::Full) => format!(
                "server busy: all {} connection slots are taken and none is idle; try another peer or retry later",
                self.max_conns
            ),
        };
        Err((stream, self.busy(&text)))
    }
}

/// The peer server's heartbeat: every asset of its store, announced to its tracker in batches
/// (`POST /announce`, a few requests for thousands of assets), or one request per asset to a
/// tracker without the batch endpoint.
struct StoreAnnounce {
    tracker: TrackerClient,
    peer_id: String,
    addr: String,
    origin: bool,
    shared: Arc<Shared>,
    /// The tracker instance last answering, to say when it restarted.
    instance: Option<String>,
    /// Whether to announce in batches: until the tracker answers 404 to one (a tracker older
    /// than the endpoint), and again once it restarts (it may have been upgraded). Falling
    /// back keeps this server in its swarms through a rolling upgrade, trackers last, at the
    /// old cost, rather than out of all of them.
    batches: bool,
    /// Entries the tracker refused at the last beat (other than unknown assets), so that a
    /// refusal is logged when it starts, not at every beat.
    refused: usize,
}

impl StoreAnnounce {
    /// What to announce of every asset of the store: the ids, and their entries (for
    /// `event`, `None`). One damaged asset must not take the server out of every other
    /// swarm: it is logged and left out; so is an asset of which no chunk is held.
    fn entries(&self) -> Result<(Vec<AssetId>, Vec<BatchEntry>)> {
        let shared = &self.shared;
        let (mut ids, mut entries) = (Vec::new(), Vec::new());
        for id in shared.store.list()? {
            let state = shared.served(&id).and_then(|served| {
                let served = served.with_context(|| format!("asset {id} has no manifest"))?;
                let have = shared.store.have(&id, &served.manifest)?;
                Ok((served, have))
            });
            let (served, have) = match state {
                Ok(state) => state,
                Err(e) => {
                    log::warn!("announce: not announcing {id}: {e:#}");
                    continue;
                }
            };
            if have.count() == 0 && !have.is_empty() {
                continue;
            }
            entries.push(BatchEntry {
                id: id.to_string(),
                complete: have.is_full(),
                have: (!have.is_full()).then(|| have.to_hex()),
                uploaded: served.uploaded.load(Ordering::Relaxed),
                event: None,
            });
            ids.push(id);
        }
        Ok((ids, entries))
    }

    /// This peer's fields of a batch announce.
    fn peer(&self, addr: Option<String>) -> BatchAnnounceRequest {
        BatchAnnounceRequest {
            peer_id: self.peer_id.clone(),
            addr,
            origin: self.origin,
            assets: Vec::new(),
        }
    }

    /// Notes the instance a tracker answered with: a change means it restarted, and this
    /// beat announces every asset anyway, so it knows them all again when the beat ends.
    fn answered_by(&mut self, instance: Option<String>) {
        let (old, new) = (&self.instance, &instance);
        if matches!((old, new), (Some(old), Some(new)) if old != new) {
            log::info!(
                "announce: tracker {} restarted; announcing every asset again",
                self.tracker.url()
            );
            self.batches = true;
        }
        if instance.is_some() {
            self.instance = instance;
        }
    }

    /// One beat in batches; `Ok(None)` when the tracker has no batch endpoint.
    fn beat_batched(&mut self, entries: Vec<BatchEntry>) -> Result<Option<Option<Duration>>> {
        let (requests, oversized) = split_batch(&self.peer(Some(self.addr.clone())), entries);
        for entry in oversized {
            log::warn!(
                "announce: not announcing {}: its entry is larger than a batch announce may be",
                entry.id
            );
        }
        let (mut asked, mut refused, mut gone) = (None, Vec::new(), HashSet::new());
        for request in &requests {
            let answer = match self.tracker.announce_batch(request) {
                Ok(answer) => answer,
                Err(e) if status(&e) == Some(404) => return Ok(None),
                Err(e) => return Err(e),
            };
            asked = Some(Duration::from_secs(answer.interval_secs));
            self.answered_by(Some(answer.instance));
            for refusal in answer.refused {
                match refusal.status {
                    // An asset published to another tracker is not an error for this one.
                    404 => {}
                    410 => gone.extend(refusal.id.parse::<AssetId>()),
                    _ => refused.push(refusal),
                }
            }
        }
        self.shared.withdraw(gone, self.tracker.url());
        if refused.len() != self.refused
            && let Some(first) = refused.first()
        {
            log::warn!(
                "announce: tracker {} refused {} of this store's assets, first {} ({} {})",
                self.tracker.url(),
                refused.len(),
                first.id,
                first.status,
                first.error
            );
        }
        self.refused = refused.len();
        Ok(Some(asked))
    }

    /// One beat with one request per asset, for a tracker without the batch endpoint.
    fn beat_single(
        &mut self,
        ids: &[AssetId],
        entries: Vec<BatchEntry>,
    ) -> Result<Option<Duration>> {
        let (mut asked, mut gone) = (None, HashSet::new());
        for (id, entry) in ids.iter().zip(entries) {
            let request = AnnounceRequest {
                peer_id: self.peer_id.clone(),
                addr: Some(self.addr.clone()),
                complete: entry.complete,
                have: entry.have,
                origin: self.origin,
                uploaded: entry.uploaded,
                ..AnnounceRequest::default()
            };
            match self.tracker.announce(id, &request) {
                Ok(answer) => {
                    asked = Some(Duration::from_secs(answer.interval_secs));
                    self.answered_by(answer.instance);
                }
                // An asset published to another tracker is not an error for this one.
                Err(e) if status(&e) == Some(404) => {}
                Err(e) if status(&e) == Some(410) => {
                    gone.insert(*id);
                }
                Err(e) => return Err(e),
            }
        }
        self.shared.withdraw(gone, self.tracker.url());
        Ok(asked)
    }

    /// The `"stopped"` entries of every asset of the store, with what it served of each.
    fn departures(&self) -> (Vec<AssetId>, Vec<BatchEntry>) {
        let ids = self.shared.store.list().unwrap_or_default();
        let entries = ids
            .iter()
            .map(|id| BatchEntry {
                id: id.to_string(),
                uploaded: self.shared.uploaded(id),
                event: Some(AnnounceEvent::Stopped),
                ..BatchEntry::default()
            })
            .collect();
        (ids, entries)
    }
}

/// The HTTP status of a tracker's refusal, when `e` is one.
fn status(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<HttpStatus>().map(|s| s.status)
}

impl Announce for StoreAnnounce {
    /// Announces every asset in the store; the interval the tracker asked for.
    fn beat(&mut self) -> Result<Option<Duration>> {
        if self.batches {
            let (_, entries) = self.entries()?;
            let count = entries.len();
            match self.beat_batched(entries)? {
                Some(asked) => return Ok(asked),
                None => {
                    log::warn!(
                        "announce: tracker {} has no batch announce (POST /announce: 404, an older tracker); announcing each of {count} assets on its own",
                        self.tracker.url(),
                    );
                    self.batches = false;
                }
            }
        }
        // Read again rather than kept from the batch: this happens once per tracker.
        let (ids, entries) = self.entries()?;
        self.beat_single(&ids, entries)
    }

    /// Tells the tracker this server is gone from each swarm, with what it served, so that
    /// clients stop being sent to it now rather than after the peer timeout: in batches
    /// (a few requests, whatever the store holds), or one request per asset to a tracker
    /// without them, within [`LEAVE_BUDGET`] in all.
    fn leave(&mut self) {
        let started = Instant::now();
        let left = || LEAVE_BUDGET.saturating_sub(started.elapsed());
        let (ids, entries) = self.departures();
        let mut one_by_one = !self.batches;
        if self.batches {
            // Without an address: a leaving peer is dropped from the swarm whatever it says.
            let (requests, _) = split_batch(&self.peer(None), entries.clone());
            for request in &requests {
                if left().is_zero() {
                    break;
                }
                let result = self.tracker.hurried(left()).announce_batch(request);
                // A tracker that restarted into an older version than the one that took
                // batches: what is left of the budget goes to leaving one swarm at a time.
                if result.is_err_and(|e| status(&e) == Some(404)) {
                    one_by_one = true;
                    break;
                }
            }
        }
        if one_by_one {
            for (id, entry) in ids.iter().zip(entries) {
                if left().is_zero() {
                    break;
                }
                let request = AnnounceRequest {
                    peer_id: self.peer_id.clone(),
                    event: entry.event,
                    uploaded: entry.uploaded,
                    // So that the tracker counts an origin's last bytes as the origin's.
                    origin: self.origin,
                    ..AnnounceRequest::default()
                };
                let _ = self.tracker.hurried(left()).announce(id, &request);
            }
        }
        if left().is_zero() {
            log::info!(
                "announce: out of time to leave every swarm; the tracker times the rest out"
            );
        }
    }

    fn tracker(&self) -> String {
        self.tracker.url().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn shutdown_stops_the_metrics_endpoint_too() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig {
            chunk_size: 1 << 16,
            max_conns: 2,
            max_conns_per_addr: 2,
            ..ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("store"))
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

    #[test]
    fn shutdown_with_no_connection_ever_made_returns_within_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let config = ServerConfig::new("127.0.0.1:0".parse().unwrap(), dir.path().join("s"));
        let server = Server::bind(config).expect("bind");
        let stop = server.shutdown_handle();
        let (done_tx, done) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || done_tx.send(server.serve().is_ok()));
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
