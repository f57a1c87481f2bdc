//! Downloads: local store first, then the peers the tracker names, then the origin.
//!
//! One scheduler thread owns the download state (which chunk is missing, in flight on which
//! connection, or done). Each connection is a worker thread that keeps a few requests in
//! flight (see [`PIPELINE_DEPTH`]), verifies every chunk it receives against the
//! manifest, writes it to the store at its offset, and reports the outcome back on one
//! channel. A source that sends a chunk failing its hash, or a peer that drops or stalls,
//! loses its chunks to other sources and is not used again in this download; a busy source,
//! or an origin whose connection fails, is tried again with backoff. Progress is recorded
//! every second, so a killed download resumes where it stopped.
//!
//! While it downloads, the client serves what it has through an embedded [`Server`] and
//! announces its progress twice a second; the tracker answers with new peers and the share
//! of chunks this client should take from the origin.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde::Serialize;

use crate::api::{AnnounceRequest, PeerInfo};
use crate::bitfield::{Bitfield, LiveHave};
use crate::manifest::{AssetId, Manifest};
use crate::ratelimit::{self, RateLimiter};
use crate::server::{
    DEFAULT_MAX_CONNS, DEFAULT_MAX_CONNS_PER_ADDR, DEFAULT_UPLOAD_SLOTS, Server, ServerConfig,
    ShutdownHandle, TicketKeys, UploadCounter,
};
use crate::store::cache;
use crate::store::{InUse, Partial, Store};
use crate::stream::{DEFAULT_WINDOW, Stream};
use crate::tracker_client::{TrackerClient, new_peer_id};
use crate::wire::{self, Message, PROTOCOL_VERSION, WireError, chunk_frame_limit, code};

/// Requests kept in flight per origin connection: with 256 KiB chunks, 1 MiB per
/// connection and 4 MiB over the default four connections, which covers the
/// bandwidth-delay product of a 1 Gbit/s link with 30 ms of round trip. Peer connections
/// keep fewer (2), and any connection under a download cap keeps 1. (Keeping 50 ms of each
/// source's measured rate in flight instead, up to 8 or 32 requests, made a 1 GiB loopback
/// download 6-10% slower, so the depths stay fixed.)
pub const PIPELINE_DEPTH: usize = 4;
/// Default connections per download: enough to overlap receiving, hashing and writing on a
/// two-core machine and to spread load over several peers.
pub const DEFAULT_WORKERS: usize = 4;
/// Default time a reply (a whole chunk) may take to arrive, from when the client starts
/// waiting for it, before its source is declared stalled: 256 KiB in 10 s is 26 KiB/s.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to a peer on a LAN takes milliseconds; one that takes 5 s is of no use.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Progress is synced and recorded this often, bounding what a crash can lose.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the scheduler waits for an event before it looks at the clock again.
const TICK: Duration = Duration::from_millis(100);
/// While downloading, progress is announced this often, so that other peers learn within
/// half a second what this one can serve and this one learns of newcomers as fast.
const ANNOUNCE_PERIOD: Duration = Duration::from_millis(500);
/// When no peer has delivered for this long, the origin may send chunks outside this
/// client's share: the peer that was to fetch them from the origin may have gone.
const FALLBACK_AFTER: Duration = Duration::from_secs(2);

/// Validated settings of one `get`.
#[derive(Clone, Debug)]
pub struct GetConfig {
    /// The asset to fetch.
    pub asset: AssetId,
    /// Tracker URL; optional when the store already has the manifest and every chunk.
    pub tracker: Option<String>,
    /// Where to place the finished file; `None` means the asset's name in the current
    /// directory, which must not exist yet.
    pub output: Option<PathBuf>,
    /// The local store (cache).
    pub store: PathBuf,
    /// Parallel connections.
    pub workers: usize,
    /// A source whose due reply has not fully arrived this long after the client started
    /// waiting for it is declared stalled.
    pub chunk_timeout: Duration,
    /// Download cap in bytes per second.
    pub max_download_rate: Option<u64>,
    /// How progress is shown on stderr.
    pub progress: Progress,
    /// When streaming, how many chunks ahead of the reader are urgent.
    pub window: u32,
    /// Serve the asset to other peers while downloading, listening here (`None`: do not).
    pub serve: Option<SocketAddr>,
    /// Address to announce instead of the listening one.
    pub advertise: Option<SocketAddr>,
    /// Upload cap in bytes per second while serving.
    pub max_upload_rate: Option<u64>,
    /// Bound on the store's size: least recently used assets no process uses are evicted
    /// to make room before the download starts.
    pub cache_size: Option<u64>,
    /// Token for a tracker started with `--auth`.
    pub token: Option<String>,
}

impl GetConfig {
    /// Settings for fetching `asset` into `store` with defaults for everything else:
    /// serving while downloading on an ephemeral port of every interface.
    pub fn new(asset: AssetId, tracker: Option<String>, store: PathBuf) -> GetConfig {
        GetConfig {
            asset,
            tracker,
            output: None,
            store,
            workers: DEFAULT_WORKERS,
            chunk_timeout: DEFAULT_CHUNK_TIMEOUT,
            max_download_rate: None,
            progress: Progress::Off,
            window: DEFAULT_WINDOW,
            serve: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            advertise: None,
            max_upload_rate: None,
            cache_size: None,
            token: None,
        }
    }
}

/// How a download shows its progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing.
    Off,
    /// A bar with rate, ETA, peers connected and the P2P share so far (for terminals).
    Bar,
    /// One JSON object per line every second (for scripts and CI logs).
    Json,
}

/// Bytes taken from one source.
#[derive(Clone, Debug, Serialize)]
pub struct SourceSummary {
    /// Where the source listens.
    pub addr: String,
    /// Whether it is an origin.
    pub origin: bool,
    /// Verified bytes received from it.
    pub bytes: u64,
    /// Verified chunks received from it.
    pub chunks: u32,
    /// Why it was dropped, if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// What a `get` did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The asset id.
    pub asset: String,
    /// Asset name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the file was placed (`None` when streamed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Bytes already in the local store.
    pub from_cache: u64,
    /// Bytes received from peers.
    pub from_peers: u64,
    /// Bytes received from origins.
    pub from_origin: u64,
    /// Peer bytes / network bytes (`None` when nothing came over the network).
    pub p2p_ratio: Option<f64>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Network bytes per second over the whole `get`.
    pub average_rate: f64,
    /// Network bytes per second in the best one-second stretch (or the whole download when
    /// it took less).
    pub peak_rate: f64,
    /// Bytes of this asset served to other peers during the `get`.
    pub uploaded: u64,
    /// Peers that delivered at least one chunk.
    pub peers_used: usize,
    /// Seconds to the first byte: written to the stream when streaming, otherwise the
    /// first chunk verified (`None` when nothing was needed from the network or stream).
    pub first_byte_secs: Option<f64>,
    /// Times the stream waited for a chunk after its first byte (0 when not streaming).
    pub stalls: u32,
    /// Seconds the stream spent in those waits.
    pub stall_secs: f64,
    /// Late chunks also asked of a second source (urgent ones of a stream, and any in the
    /// endgame).
    pub hedged: u32,
    /// Every source used or tried.
    pub sources: Vec<SourceSummary>,
}

impl Summary {
    /// One line for people: where the bytes came from, time and rates.
    pub fn human(&self) -> String {
        use crate::units::{format_bytes, format_rate};
        let network = self.from_peers + self.from_origin;
        let mut line = format!(
            "got {} ({}) in {:.2} s",
            self.name,
            format_bytes(self.size),
            self.seconds
        );
        if network == 0 {
            line.push_str(", all from the local store");
        } else {
            line.push_str(&format!(
                ", {} (peak {}): cache {}, peers {} ({} peer{}), origin {}, p2p {:.0}%",
                format_rate(network, Duration::from_secs_f64(self.seconds)),
                format_rate(self.peak_rate as u64, Duration::from_secs(1)),
                format_bytes(self.from_cache),
                format_bytes(self.from_peers),
                self.peers_used,
                if self.peers_used == 1 { "" } else { "s" },
                format_bytes(self.from_origin),
                self.p2p_ratio.unwrap_or(0.0) * 100.0,
            ));
        }
        if self.uploaded > 0 {
            line.push_str(&format!(", uploaded {}", format_bytes(self.uploaded)));
        }
        if let Some(first) = self.first_byte_secs {
            line.push_str(&format!(", first byte {:.1} ms", first * 1000.0));
        }
        if self.output.is_none() {
            line.push_str(&format!(
                ", {} stall{} ({:.2} s)",
                self.stalls,
                if self.stalls == 1 { "" } else { "s" },
                self.stall_secs
            ));
        }
        line
    }
}

/// Set by [`interrupt`]: downloads and seeding in this process stop as soon as they can.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Asks every download and seeding in this process to stop soon (for Ctrl-C or SIGTERM):
/// a download records its progress and fails with "interrupted", seeding ends, and both
/// leave the swarm on the way out. Safe to call from a signal-handling thread.
pub fn interrupt() {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Whether [`interrupt`] was called.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Peers the scheduler gave up on for a reason the tracker should know, drained by the next
/// announce.
#[derive(Default)]
struct Complaints {
    /// Could not be connected to.
    unreachable: Vec<String>,
    /// Sent data failing its hash, or broke the protocol.
    corrupt: Vec<String>,
}

type Reports = Arc<std::sync::Mutex<Complaints>>;

/// The outcome of [`get`]: the summary, and the embedded server when the asset is to be
/// seeded on after the download.
pub struct Got {
    /// What the download did.
    pub summary: Summary,
    /// Keeps serving the asset, for [`Seeding::run`] to finish.
    pub seeding: Option<Seeding>,
}

/// A peer server seeding a downloaded asset, announced to the tracker until it stops.
pub struct Seeding {
    serving: Serving,
    announcer: Option<Announcer>,
    /// Keeps the asset from being evicted while it is seeded.
    _in_use: InUse,
}

impl Seeding {
    /// Serves for `duration` (or until [`interrupt`]), then leaves the swarm.
    pub fn run(self, duration: Duration) {
        let deadline = Instant::now() + duration;
        while Instant::now() < deadline && !interrupted() {
            std::thread::sleep(
                Duration::from_millis(50).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
        // Dropping the announcer says "stopped"; dropping the server shuts it down.
        drop(self.announcer);
        drop(self.serving);
    }
}

/// Fetches an asset into the store and places it at the output path. Unless
/// `config.serve` is `None`, the asset is served to other peers while it downloads; with
/// `seed` the server is handed back, still serving, for [`Seeding::run`].
pub fn get(config: &GetConfig, seed: bool) -> Result<Got> {
    fetch(config, seed, None)
}

/// Like [`get`], but writes the asset to `out` in order while it downloads instead of
/// placing a file: each chunk as soon as it and those before it are verified. The next
/// `config.window` chunks are fetched first; a late one is also asked of another source.
/// The asset still lands in the store, so memory stays bounded however slowly `out` reads.
pub fn stream(config: &GetConfig, seed: bool, out: &mut (dyn Write + Send)) -> Result<Got> {
    fetch(config, seed, Some(out))
}

fn fetch(config: &GetConfig, seed: bool, out: Option<&mut (dyn Write + Send)>) -> Result<Got> {
    let started = Instant::now();
    let store = Store::open(&config.store)?;
    // Marked in use before anything is looked up, so that no eviction can take the asset
    // between our look and our use.
    let in_use = store.hold(&config.asset)?;
    let tracker = TrackerClient::optional(config.tracker.as_deref())?
        .map(|t| t.with_token(config.token.clone()));
    let manifest = match store.manifest(&config.asset)? {
        Some(m) => m,
        None => match &tracker {
            Some(t) => t.manifest(&config.asset)?,
            None => bail!(
                "asset {} is not in the store {} and no --tracker was given",
                config.asset,
                config.store.display()
            ),
        },
    };
    let output = match out {
        Some(_) => None,
        None => Some(output_path(config, &manifest)?),
    };
    if let Some(limit) = config.cache_size {
        let report = cache::make_room_for(&store, limit, &manifest)?;
        if let Some(warning) = &report.warning {
            eprintln!("peer_client: warning: {warning}");
        }
    }
    let complete = store.is_complete(&config.asset, &manifest)?;
    let partial = if complete {
        None
    } else {
        Some(store.begin(&manifest)?)
    };
    let initial = partial.as_ref().map_or_else(
        || Bitfield::full(manifest.chunk_count()),
        |p| p.have().clone(),
    );
    let from_cache: u64 = initial.ones().map(|i| manifest.chunk_len(i) as u64).sum();
    let live: LiveHave = Arc::new(RwLock::new(initial.clone()));
    let serving = match config.serve {
        Some(listen) if seed || !complete => {
            // With a tracker, serve nobody until its first announce answer says whether
            // clients need tickets, and with which keys.
            let await_keys = tracker.is_some();
            Some(Serving::start(
                config, listen, &manifest, &live, await_keys,
            )?)
        }
        _ => None,
    };
    let announce =
        tracker.map(|t| Announce::new(t, config.asset, serving.as_ref(), Arc::clone(&live)));
    let mut announcer = None;
    // Chunks verified during the download, for the stream.
    let (done_tx, done_rx) = unbounded();
    let streaming = out.is_some().then_some(done_tx);
    let scheduler = match &partial {
        None => None,
        Some(partial) => {
            let announce = announce.clone().with_context(|| {
                format!(
                    "asset {} is only partly in the store; give --tracker to fetch the rest",
                    config.asset
                )
            })?;
            let first = announce.once()?;
            // From here on, every way out of this function leaves the swarm again.
            let departure = Departure(Some(announce.clone()));
            let count = manifest.chunk_count();
            let sources: Vec<Source> = first
                .peers
                .iter()
                .chain(&first.origins)
                .map(|info| Source::from_info(info, count))
                .collect();
            if sources.is_empty() {
                return Err(crate::failure::Failure::NoSource.error(format!(
                    "the tracker knows no peer or origin for {}; start a peer_server that holds it",
                    config.asset
                )));
            }
            let origin_share = first
                .origin_share
                .as_deref()
                .and_then(|hex| Bitfield::from_hex(count, hex).ok());
            let scheduler = Scheduler::new(
                config,
                Arc::new(manifest.clone()),
                partial,
                sources,
                origin_share,
                Watch {
                    started,
                    live: Arc::clone(&live),
                    complaints: Arc::clone(&announce.reports),
                    ticket: Arc::clone(&announce.ticket),
                    streaming,
                },
            );
            announcer = Some(Announcer::start(
                announce,
                Some(scheduler.events_tx.clone()),
                departure,
            ));
            Some(scheduler)
        }
    };
    let data = match (&partial, out.is_some()) {
        (Some(partial), _) => Some(partial.data()),
        (None, true) => {
            let path = store.data_path(&config.asset);
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            Some(Arc::new(file))
        }
        (None, false) => None,
    };
    let output_failed = AtomicBool::new(false);
    let (downloaded, streamed) = std::thread::scope(|scope| {
        let streamer = out.zip(data).map(|(out, data)| {
            let events = scheduler.as_ref().map(|s| s.events_tx.clone());
            let stream = Stream {
                manifest: &manifest,
                data,
                have: initial.clone(),
                done: done_rx,
                started,
            };
            let output_failed = &output_failed;
            scope.spawn(move || {
                let tell = |event: Event| {
                    if let Some(events) = &events {
                        let _ = events.send(event);
                    }
                };
                let result = stream.run(out, |next| tell(Event::Position(next)), interrupted);
                if result.is_err() {
                    output_failed.store(true, Ordering::SeqCst);
                    tell(Event::OutputFailed);
                }
                result
            })
        });
        let downloaded = scheduler.map(Scheduler::run).transpose();
        let streamed = streamer
            .map(|s| s.join().expect("stream thread panicked"))
            .transpose();
        (downloaded, streamed)
    });
    // When the stream failed first (the reader went away), its error is the one to tell;
    // when the download failed first, the stream only ran out of chunks.
    let (downloaded, streamed) = match (downloaded, streamed) {
        (Err(_), Err(e)) if output_failed.load(Ordering::SeqCst) => return Err(e),
        (downloaded, streamed) => (downloaded?, streamed?),
    };
    if let Some(partial) = partial {
        partial.finish()?;
    }
    if let Some(output) = &output {
        store.export(&config.asset, output)?;
    }
    let downloaded = downloaded.unwrap_or_default();
    let sum = |origin: bool| {
        downloaded
            .sources
            .iter()
            .filter(|s| s.origin == origin)
            .map(|s| s.bytes)
            .sum::<u64>()
    };
    let (from_peers, from_origin) = (sum(false), sum(true));
    let network = from_peers + from_origin;
    let seconds = started.elapsed().as_secs_f64();
    let streamed = streamed.unwrap_or_default();
    let summary = Summary {
        asset: config.asset.to_string(),
        name: manifest.name.clone(),
        size: manifest.size,
        output,
        from_cache,
        from_peers,
        from_origin,
        p2p_ratio: (network > 0).then(|| from_peers as f64 / network as f64),
        seconds,
        average_rate: network as f64 / seconds.max(1e-9),
        peak_rate: downloaded.peak_rate,
        uploaded: serving
            .as_ref()
            .map_or(0, |s| s.uploaded.get(&config.asset)),
        peers_used: downloaded
            .sources
            .iter()
            .filter(|s| !s.origin && s.bytes > 0)
            .count(),
        first_byte_secs: streamed.first_byte_secs.or(downloaded.first_chunk_secs),
        stalls: streamed.stalls,
        stall_secs: streamed.stall_secs,
        hedged: downloaded.hedged,
        sources: downloaded.sources,
    };
    // Without seeding, `announcer` and `serving` are dropped here: the client says
    // "stopped" to the tracker and its server shuts down.
    let seeding = match serving {
        Some(serving) if seed => {
            let announcer = match announcer {
                Some(announcer) => Some(announcer.seeding()),
                None => announce.map(|a| Announcer::start(a.clone(), None, Departure(Some(a)))),
            };
            Some(Seeding {
                serving,
                announcer,
                _in_use: in_use,
            })
        }
        _ => None,
    };
    Ok(Got { summary, seeding })
}

/// Where the output goes: as given, or the asset's name in the current directory. The name
/// comes from whoever published the manifest: it may not replace a file nobody named.
fn output_path(config: &GetConfig, manifest: &Manifest) -> Result<PathBuf> {
    if let Some(path) = &config.output {
        return Ok(path.clone());
    }
    let path = PathBuf::from(&manifest.name);
    if path.exists() || manifest.name.starts_with('.') {
        bail!(
            "refusing to write {:?} in the current directory without being asked; pass -o {:?} to do so",
            manifest.name,
            manifest.name
        );
    }
    Ok(path)
}

/// The server embedded in a `get`: serves the asset from the download's store while it
/// downloads, and after it when seeding.
struct Serving {
    stop: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    uploaded: UploadCounter,
    advertised: SocketAddr,
    /// Where announce answers put the tracker's keys.
    keys: TicketKeys,
}

impl Serving {
    fn start(
        config: &GetConfig,
        listen: SocketAddr,
        manifest: &Manifest,
        live: &LiveHave,
        await_keys: bool,
    ) -> Result<Serving> {
        let server = Server::bind(ServerConfig {
            listen,
            store: config.store.clone(),
            seeds: Vec::new(),
            seed_names: Vec::new(),
            chunk_size: manifest.chunk_size,
            tracker: None,
            origin: false,
            advertise: config.advertise,
            max_conns: DEFAULT_MAX_CONNS,
            max_conns_per_addr: DEFAULT_MAX_CONNS_PER_ADDR,
            max_upload_rate: config.max_upload_rate,
            upload_slots: DEFAULT_UPLOAD_SLOTS,
            announce_interval: None,
            token: None,
            ticket_keys: Vec::new(),
            await_keys,
        })
        .context("starting to serve while downloading (use --no-serve to download only)")?;
        server.serve_live(manifest.id(), Arc::clone(live));
        let advertised = config.advertise.unwrap_or(server.local_addr());
        let (stop, uploaded) = (server.shutdown_handle(), server.uploaded());
        let keys = server.ticket_keys();
        let thread = std::thread::spawn(move || server.serve());
        Ok(Serving {
            stop,
            thread: Some(thread),
            uploaded,
            advertised,
            keys,
        })
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(Ok(Err(e))) = self.thread.take().map(|t| t.join()) {
            eprintln!("peer_client: serving stopped with an error: {e:#}");
        }
    }
}

/// What this client announces, and to which tracker.
#[derive(Clone)]
struct Announce {
    tracker: TrackerClient,
    asset: AssetId,
    template: AnnounceRequest,
    live: LiveHave,
    uploaded: Option<UploadCounter>,
    /// Peers found unreachable since the last announce.
    reports: Reports,
    /// The latest ticket the tracker handed out (empty in open mode).
    ticket: Ticket,
    /// The embedded server, told the tracker's keys from every answer.
    keys: Option<TicketKeys>,
}

/// The ticket to present to peers, renewed by every announce.
type Ticket = Arc<RwLock<Vec<u8>>>;

impl Announce {
    fn new(
        tracker: TrackerClient,
        asset: AssetId,
        serving: Option<&Serving>,
        live: LiveHave,
    ) -> Announce {
        let template = AnnounceRequest {
            peer_id: new_peer_id(),
            addr: serving.map(|s| s.advertised.to_string()),
            ..AnnounceRequest::default()
        };
        let uploaded = serving.map(|s| s.uploaded.clone());
        let keys = serving.map(|s| s.keys.clone());
        Announce {
            tracker,
            asset,
            template,
            live,
            uploaded,
            reports: Reports::default(),
            ticket: Ticket::default(),
            keys,
        }
    }

    /// One announce of what `live` holds, with the peers found unreachable since the last.
    fn once(&self) -> Result<crate::api::AnnounceResponse> {
        let have = self.live.read().unwrap_or_else(|e| e.into_inner()).clone();
        let Complaints {
            unreachable,
            corrupt,
        } = std::mem::take(&mut *self.reports.lock().unwrap_or_else(|e| e.into_inner()));
        let request = AnnounceRequest {
            complete: have.is_full(),
            have: (!have.is_full()).then(|| have.to_hex()),
            uploaded: self.uploaded.as_ref().map_or(0, |u| u.get(&self.asset)),
            unreachable,
            corrupt,
            ..self.template.clone()
        };
        let answer = self.tracker.announce(&self.asset, &request)?;
        if let Some(ticket) = answer.ticket.as_deref().and_then(|t| hex::decode(t).ok()) {
            *self.ticket.write().unwrap_or_else(|e| e.into_inner()) = ticket;
        }
        if let Some(keys) = &self.keys {
            keys.set(&answer.keys)
                .context("the tracker's announce answer carries a bad key")?;
        }
        Ok(answer)
    }

    /// Tells the tracker this peer is gone, with what it served and found wrong since the
    /// last announce.
    fn leave(&self) {
        let Complaints {
            unreachable,
            corrupt,
        } = std::mem::take(&mut *self.reports.lock().unwrap_or_else(|e| e.into_inner()));
        let request = AnnounceRequest {
            event: Some(crate::api::AnnounceEvent::Stopped),
            unreachable,
            corrupt,
            uploaded: self.uploaded.as_ref().map_or(0, |u| u.get(&self.asset)),
            ..self.template.clone()
        };
        let _ = self.tracker.announce(&self.asset, &request);
    }
}

/// Says "stopped" to the tracker when dropped, unless disarmed.
struct Departure(Option<Announce>);

impl Drop for Departure {
    fn drop(&mut self) {
        if let Some(announce) = self.0.take() {
            announce.leave();
        }
    }
}

/// Announces on a period from its own thread, so a slow tracker never holds up the
/// scheduler, and forwards each answer (new peers, a new origin share) to it. Without a
/// scheduler (seeding) it beats at the tracker's heartbeat period. Dropping it stops the
/// thread and, through its [`Departure`], leaves the swarm.
struct Announcer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    announce: Announce,
    departure: Departure,
}

impl Announcer {
    fn start(announce: Announce, events: Option<Sender<Event>>, departure: Departure) -> Announcer {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, announce) = (Arc::clone(&stop), announce.clone());
            std::thread::spawn(move || {
                let mut period = if events.is_some() {
                    ANNOUNCE_PERIOD
                } else {
                    Duration::ZERO
                };
                let mut failing = false;
                loop {
                    let deadline = Instant::now() + period;
                    while Instant::now() < deadline {
                        if stop.load(Ordering::SeqCst) {
                            return;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    match announce.once() {
                        Ok(answer) => {
                            failing = false;
                            match &events {
                                Some(events) => {
                                    let _ = events.send(Event::Swarm(answer));
                                }
                                None => {
                                    period =
                                        Duration::from_secs(answer.interval_secs.clamp(1, 3600))
                                }
                            }
                        }
                        Err(e) => {
                            if !failing {
                                eprintln!("peer_client: announcing failed (will retry): {e:#}");
                            }
                            failing = true;
                            period = period.max(Duration::from_secs(1));
                        }
                    }
                }
            })
        };
        Announcer {
            stop,
            thread: Some(thread),
            announce,
            departure,
        }
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// The same announces, now at the tracker's heartbeat period and without a scheduler;
    /// the peer stays in the swarm across the switch.
    fn seeding(mut self) -> Announcer {
        self.halt();
        let departure = Departure(self.departure.0.take());
        Announcer::start(self.announce.clone(), None, departure)
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.halt();
    }
}

/// A place chunks can come from.
#[derive(Debug)]
struct Source {
    peer_id: String,
    addr: String,
    origin: bool,
    /// What the source holds, as far as we know; `None` means everything.
    have: Option<Bitfield>,
    dropped: Option<String>,
    bytes: u64,
    chunks: u32,
    /// Chunks this source said it does not hold or would not send now.
    refused: HashSet<u32>,
    /// Failed or refused connections since the source last delivered a chunk.
    failures: u32,
    /// Connections to open again once `retry_at` has passed.
    reconnects: u32,
    retry_at: Option<Instant>,
    /// Measured seconds per byte of chunk service (moving average), once it delivered.
    secs_per_byte: Option<f64>,
}

impl Source {
    fn from_info(info: &PeerInfo, chunk_count: u32) -> Source {
        // The tracker's view of what a partial peer holds, until its own Have arrives.
        let have = match (&info.have, info.complete) {
            (Some(hex), false) => Bitfield::from_hex(chunk_count, hex).ok(),
            _ => None,
        };
        Source {
            peer_id: info.peer_id.clone(),
            addr: info.addr.clone(),
            origin: info.origin,
            have,
            dropped: None,
            bytes: 0,
            chunks: 0,
            refused: HashSet::new(),
            failures: 0,
            reconnects: 0,
            retry_at: None,
            secs_per_byte: None,
        }
    }

    fn holds(&self, index: u32) -> bool {
        self.have.as_ref().is_none_or(|h| h.get(index)) && !self.refused.contains(&index)
    }

    fn kind(&self) -> &'static str {
        if self.origin { "origin" } else { "peer" }
    }
}

/// What a connection worker reports.
#[derive(Debug)]
enum Event {
    /// Handshake or keepalive done; the source holds these chunks.
    Ready { conn: usize, have: Bitfield },
    /// Chunk verified and written.
    Done { conn: usize, index: u32 },
    /// The source does not hold, or will not now send, this chunk.
    Refused { conn: usize, index: u32 },
    /// The source dropped this request, as asked: the chunk came from another source.
    Cancelled { conn: usize, index: u32 },
    /// The connection is over, and why.
    Closed { conn: usize, end: End },
    /// The tracker's latest answer: peers (maybe new ones) and this client's origin share.
    Swarm(crate::api::AnnounceResponse),
    /// The stream needs this chunk next.
    Position(u32),
    /// The stream could not write its output: the download stops.
    OutputFailed,
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    /// The scheduler has no more work for it.
    Finished,
    /// The source has no free connection slot now; worth trying again later.
    Busy(String),
    /// The source could not be connected to at all.
    Unreachable(String),
    /// The network or the source failed (reset, stalled, closed).
    Failed(String),
    /// The source sent bad data: never use it again in this download.
    Lied(String),
    /// Writing to the local store failed: no source can help, so the download stops.
    Local(String),
}

/// What the scheduler asks of a connection's worker.
enum Job {
    /// Request this chunk.
    Fetch(u32),
    /// The chunk came from elsewhere: cancel the request, if still unanswered.
    Cancel(u32),
}

struct Conn {
    source: usize,
    jobs: Option<Sender<Job>>,
    in_flight: VecDeque<u32>,
    /// Since when the oldest request in flight has been the one being served.
    head_since: Instant,
    /// The worker's socket once connected, to shut down a wait that is no longer needed.
    socket: Arc<OnceLock<TcpStream>>,
    ready: bool,
    /// The availability epoch at which `pick` last found nothing for this connection.
    starved_at: Option<u64>,
    handle: Option<std::thread::JoinHandle<()>>,
}

enum ChunkState {
    Missing,
    /// Requested from this many connections (2 when a late urgent chunk was hedged).
    InFlight(u8),
    Done,
}

/// A refusing or failing origin is tried again after 250 ms, 500 ms, 1 s … up to 4 s.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(4);
/// "Server busy" answers a source may give in a row (about 50 s with the backoff above)
/// before it is given up: slots free up as other clients finish.
const BUSY_RETRIES: u32 = 16;
/// Failed connections in a row before the origin is given up. A peer that drops or
/// stalls is dropped at once (there are others), but the origin is the last resort.
const ORIGIN_RETRIES: u32 = 4;
/// An idle connection to a complete source asks for its have list this often, which keeps
/// the connection inside the server's 30 s idle timeout.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// An idle connection to a source that is still downloading asks this often: its new
/// chunks are what this client is waiting for. At 25 MiB/s a peer gains a 256 KiB chunk
/// every 10 ms; a tenth of a second keeps the lag to a few chunks without asking for the
/// have list of every peer a hundred times a second.
const PARTIAL_REFRESH: Duration = Duration::from_millis(100);
/// Requests in flight per peer connection (see `Scheduler::depth`).
const PEER_PIPELINE_DEPTH: usize = 2;
/// How many candidate chunks rarest-first compares per pick; bounds the cost of a pick on
/// assets of a million chunks.
const RAREST_SCAN: usize = 256;
/// How often a stream or a download's endgame looks for late chunks: a 256 KiB chunk takes
/// 10 ms at 25 MiB/s, so the 100 ms tick of the rest of a download would notice too late.
const LATENESS_TICK: Duration = Duration::from_millis(10);
/// A chunk in flight is late, and worth asking of a second source (when it is urgent, or
/// nothing else is left to fetch), once it has taken this many times its source's measured
/// time per chunk...
const HEDGE_FACTOR: f64 = 2.0;
/// ...plus this much, which absorbs the jitter of a loaded machine.
const HEDGE_SLACK: Duration = Duration::from_millis(10);
/// The time per byte assumed for a source not yet measured: 100 MB/s, 2.6 ms a 256 KiB
/// chunk.
const UNMEASURED_SECS_PER_BYTE: f64 = 1e-8;
/// While peers can deliver, a streaming download asks the origin for chunks no further
/// ahead of the reader than this many windows: what the player needs soon, not the file.
const ORIGIN_READAHEAD_WINDOWS: u32 = 2;
/// How long a stream's start waits for its first chunk to go out before the rest of the
/// download starts anyway: a reader that does not read yet must not hold the download up.
const STREAM_START_GRACE: Duration = Duration::from_millis(20);

/// Who watches a download, and what the scheduler tells them.
struct Watch {
    /// When the `get` started, for the time to the first chunk.
    started: Instant,
    /// What is verified and written, shared with the embedded server and the announcer.
    live: LiveHave,
    /// Peers to report to the tracker with the next announce.
    complaints: Reports,
    /// The ticket workers present in their `Hello`.
    ticket: Ticket,
    /// Where to send the index of each chunk verified, when streaming.
    streaming: Option<Sender<u32>>,
}

/// What a download did, for the summary.
#[derive(Default)]
struct Downloaded {
    sources: Vec<SourceSummary>,
    /// Seconds from the start of the `get` to the first chunk verified.
    first_chunk_secs: Option<f64>,
    /// Best network rate over a one-second stretch, in bytes per second.
    peak_rate: f64,
    /// Late chunks asked of a second source (stream or endgame).
    hedged: u32,
}

/// One line of `--progress json`.
#[derive(Serialize)]
struct ProgressLine {
    elapsed_secs: f64,
    bytes: u64,
    size: u64,
    from_cache: u64,
    from_peers: u64,
    from_origin: u64,
    /// Network bytes per second over the last second.
    rate: f64,
    eta_secs: Option<f64>,
    peers_connected: usize,
    p2p_ratio: Option<f64>,
}

/// The single owner of a download's state.
struct Scheduler<'a> {
    config: &'a GetConfig,
    manifest: Arc<Manifest>,
    partial: &'a Partial,
    sources: Vec<Source>,
    conns: Vec<Conn>,
    chunks: Vec<ChunkState>,
    missing: BTreeSet<u32>,
    have: Bitfield,
    /// Requests in flight per origin connection: 1 under a download cap, so a server never
    /// has chunks queued for a client that is sleeping off its rate.
    depth: usize,
    /// Chunks some usable peer holds; an origin is only asked for the others.
    peer_held: Bitfield,
    /// How many usable peers hold each missing chunk, for rarest-first.
    copies: Vec<u16>,
    /// State of the generator that spreads chunk choices.
    random: u64,
    /// Bumped whenever work or availability changes, so starved connections look again.
    epoch: u64,
    /// The chunks the tracker planned for this client to take from the origin (`None`: no
    /// plan, the origin sends whatever no peer holds).
    origin_share: Option<Bitfield>,
    /// When a chunk last arrived from a peer; long silence lets the origin step outside
    /// the share.
    last_peer_progress: Instant,
    fallback_open: bool,
    fatal: Option<String>,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    limiter: Option<Arc<RateLimiter>>,
    bar: Option<indicatif::ProgressBar>,
    watch: Watch,
    /// The next chunk the stream needs, when streaming.
    stream_pos: Option<u32>,
    /// The first chunk the stream needs from the network (`None`: not streaming, or all
    /// cached).
    stream_first: Option<u32>,
    /// When the first chunk of this download arrived.
    first_chunk_at: Option<Instant>,
    from_cache: u64,
    from_peers: u64,
    from_origin: u64,
    /// When progress was last sampled, and the network bytes then.
    sampled: (Instant, u64),
    peak_rate: f64,
    hedged: u32,
}

impl<'a> Scheduler<'a> {
    fn new(
        config: &'a GetConfig,
        manifest: Arc<Manifest>,
        partial: &'a Partial,
        sources: Vec<Source>,
        origin_share: Option<Bitfield>,
        watch: Watch,
    ) -> Self {
        let have = partial.have().clone();
        let first_missing = (0..manifest.chunk_count()).find(|&i| !have.get(i));
        let count = manifest.chunk_count();
        let chunks = (0..count)
            .map(|i| {
                if have.get(i) {
                    ChunkState::Done
                } else {
                    ChunkState::Missing
                }
            })
            .collect();
        let missing = (0..count).filter(|&i| !have.get(i)).collect();
        let (events_tx, events_rx) = unbounded();
        let from_cache = have.ones().map(|i| manifest.chunk_len(i) as u64).sum();
        let bar = (config.progress == Progress::Bar).then(|| {
            let bar = indicatif::ProgressBar::new(manifest.size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(from_cache);
            bar
        });
        let limiter = config
            .max_download_rate
            .map(|r| Arc::new(RateLimiter::new(r)));
        let mut scheduler = Scheduler {
            config,
            depth: if limiter.is_some() { 1 } else { PIPELINE_DEPTH },
            limiter,
            peer_held: Bitfield::new(count),
            copies: vec![0; count as usize],
            random: seed_from_clock(),
            manifest,
            partial,
            sources,
            conns: Vec::new(),
            chunks,
            missing,
            have,
            epoch: 0,
            origin_share,
            last_peer_progress: Instant::now(),
            fallback_open: false,
            fatal: None,
            events_tx,
            events_rx,
            bar,
            stream_pos: watch.streaming.is_some().then_some(0),
            stream_first: watch.streaming.as_ref().and(first_missing),
            first_chunk_at: None,
            watch,
            from_cache,
            from_peers: 0,
            from_origin: 0,
            sampled: (Instant::now(), 0),
            peak_rate: 0.0,
            hedged: 0,
        };
        scheduler.refresh_availability();
        scheduler
    }

    /// Connections per source: peers share the workers, and an origin gets one while peers
    /// exist (it is the fallback) or all of them when it is the only kind of source.
    fn open_connections(&mut self) {
        let peers = self.sources.iter().filter(|s| !s.origin).count();
        let workers = self.config.workers.max(1);
        for source in 0..self.sources.len() {
            let count = if self.sources[source].origin {
                if peers == 0 { workers } else { 1 }
            } else {
                (workers / peers).max(1)
            };
            for _ in 0..count {
                self.connect(source);
            }
        }
    }

    fn connect(&mut self, source: usize) {
        let conn = self.conns.len();
        let (jobs_tx, jobs_rx) = unbounded();
        let socket = Arc::new(OnceLock::new());
        let worker = Worker {
            socket: Arc::clone(&socket),
            ticket: Arc::clone(&self.watch.ticket),
            conn,
            addr: self.sources[source].addr.clone(),
            asset: self.manifest.id(),
            manifest: Arc::clone(&self.manifest),
            data: self.partial.data(),
            chunk_timeout: self.config.chunk_timeout,
            limiter: self.limiter.clone(),
            events: self.events_tx.clone(),
        };
        let handle = std::thread::spawn(move || worker.run(jobs_rx));
        self.conns.push(Conn {
            source,
            jobs: Some(jobs_tx),
            in_flight: VecDeque::new(),
            head_since: Instant::now(),
            socket,
            ready: false,
            starved_at: None,
            handle: Some(handle),
        });
    }

    fn run(mut self) -> Result<Downloaded> {
        self.open_connections();
        let (ckpt_tx, ckpt_rx) = bounded::<Bitfield>(1);
        let result = std::thread::scope(|scope| {
            let partial = self.partial;
            let persister = scope.spawn(move || -> Result<()> {
                for have in ckpt_rx {
                    partial.checkpoint(&have)?;
                }
                Ok(())
            });
            let outcome = self.drive(&ckpt_tx);
            if outcome.is_err() {
                // Keep everything verified so far, so that "run it again to resume" holds.
                let _ = ckpt_tx.send(self.have.clone());
            }
            drop(ckpt_tx);
            let persisted = persister.join().expect("checkpoint thread panicked");
            persisted
                .context("recording download progress")
                .and(outcome)
        });
        self.stop_all();
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        result?;
        self.sample(true);
        Ok(Downloaded {
            sources: self.summaries(),
            first_chunk_secs: self.first_chunk_at.map(|at| {
                at.saturating_duration_since(self.watch.started)
                    .as_secs_f64()
            }),
            peak_rate: self.peak_rate,
            hedged: self.hedged,
        })
    }

    fn drive(&mut self, ckpt_tx: &Sender<Bitfield>) -> Result<()> {
        let mut last_checkpoint = Instant::now();
        let mut dirty = false;
        while !self.missing.is_empty()
            || self
                .chunks
                .iter()
                .any(|c| matches!(c, ChunkState::InFlight(_)))
        {
            // Streams and the endgame act on lateness, which grows with time alone.
            let watch_lateness = self.stream_pos.is_some() || self.missing.is_empty();
            let tick = if watch_lateness { LATENESS_TICK } else { TICK };
            if let Ok(event) = self.events_rx.recv_timeout(tick) {
                dirty |= matches!(event, Event::Done { .. });
                self.handle(event);
                while let Ok(event) = self.events_rx.try_recv() {
                    dirty |= matches!(event, Event::Done { .. });
                    self.handle(event);
                }
            }
            if let Some(error) = self.fatal.take() {
                bail!(error);
            }
            if interrupted() {
                bail!("interrupted; progress is kept: run the same command again to resume");
            }
            self.reconnect_due();
            if watch_lateness {
                self.epoch += 1;
                self.assign_all();
            }
            self.sample(false);
            // The share holds while peers deliver: with no usable peer left, or none
            // delivering for a while, the origin sends whatever no usable peer holds.
            let fallback = self.last_peer_progress.elapsed() > FALLBACK_AFTER
                || !(0..self.sources.len()).any(|s| !self.sources[s].origin && self.usable(s));
            if fallback != self.fallback_open {
                self.fallback_open = fallback;
                self.epoch += 1;
                self.assign_all();
            }
            if dirty && last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                match ckpt_tx.try_send(self.have.clone()) {
                    Ok(()) => {
                        dirty = false;
                        last_checkpoint = Instant::now();
                    }
                    // The last checkpoint is still being written; the next tick retries.
                    Err(crossbeam_channel::TrySendError::Full(_)) => {}
                    // The persister stopped on an error, which `run` reports.
                    Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                        bail!("progress could not be recorded")
                    }
                }
            }
            self.check_stuck()?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready { conn, have } => {
                let source = self.conns[conn].source;
                self.conns[conn].ready = true;
                self.sources[source].have = Some(have);
                self.refresh_availability();
            }
            Event::Done { conn, index } => self.done(conn, index),
            Event::Refused { conn, index } => {
                self.answered_without_chunk(conn, index);
                let source = self.conns[conn].source;
                self.sources[source].refused.insert(index);
                self.refresh_availability();
            }
            Event::Cancelled { conn, index } => self.answered_without_chunk(conn, index),
            Event::Closed { conn, end } => self.closed(conn, end),
            Event::Swarm(answer) => self.swarm(answer),
            Event::Position(next) => {
                self.stream_pos = Some(next);
                self.epoch += 1;
            }
            Event::OutputFailed => self.fatal = Some("the output stream failed".into()),
        }
        self.assign_all();
    }

    /// A chunk arrived verified on `conn`: the first copy counts, a hedged second is ignored.
    fn done(&mut self, conn: usize, index: u32) {
        let now = Instant::now();
        let c = &mut self.conns[conn];
        c.in_flight.retain(|&i| i != index);
        let service = now.saturating_duration_since(c.head_since);
        c.head_since = now;
        let len = self.manifest.chunk_len(index) as u64;
        let source = &mut self.sources[c.source];
        let sample = service.as_secs_f64() / len.max(1) as f64;
        source.secs_per_byte = Some(match source.secs_per_byte {
            Some(avg) => 0.75 * avg + 0.25 * sample,
            None => sample,
        });
        match self.chunks[index as usize] {
            ChunkState::Done => return,
            // Asked of other sources too: they need not send it any more.
            ChunkState::InFlight(n) if n > 1 => {
                for other in self.conns.iter().filter(|c| c.in_flight.contains(&index)) {
                    if let Some(jobs) = &other.jobs {
                        let _ = jobs.send(Job::Cancel(index));
                    }
                }
            }
            _ => {}
        }
        self.chunks[index as usize] = ChunkState::Done;
        self.missing.remove(&index);
        self.have.set(index);
        self.watch
            .live
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .set(index);
        if !source.origin {
            self.last_peer_progress = now;
            self.from_peers += len;
        } else {
            self.from_origin += len;
        }
        source.bytes += len;
        source.chunks += 1;
        source.failures = 0;
        if let Some(stream) = &self.watch.streaming {
            let _ = stream.send(index);
        }
        self.first_chunk_at.get_or_insert(now);
        if let Some(bar) = &self.bar {
            bar.inc(len);
        }
    }

    /// Once a second (and at the end): the peak rate, the bar's message, a JSON line.
    fn sample(&mut self, last: bool) {
        let (at, bytes) = self.sampled;
        let elapsed = at.elapsed();
        if elapsed < Duration::from_secs(1) && !last {
            return;
        }
        let network = self.from_peers + self.from_origin;
        let rate = (network - bytes) as f64 / elapsed.as_secs_f64().max(1e-9);
        // A download shorter than a second has its only stretch as its peak.
        if elapsed >= Duration::from_secs(1) || self.peak_rate == 0.0 {
            self.peak_rate = self.peak_rate.max(rate);
        }
        self.sampled = (Instant::now(), network);
        let peers_connected = self
            .conns
            .iter()
            .filter(|c| c.ready && c.jobs.is_some() && !self.sources[c.source].origin)
            .map(|c| c.source)
            .collect::<HashSet<_>>()
            .len();
        let p2p_ratio = (network > 0).then(|| self.from_peers as f64 / network as f64);
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{peers_connected} peers, p2p {:.0}%",
                p2p_ratio.unwrap_or(0.0) * 100.0
            ));
        }
        if self.config.progress == Progress::Json {
            let done = self.from_cache + network;
            let left = self.manifest.size - done.min(self.manifest.size);
            let line = ProgressLine {
                elapsed_secs: self.watch.started.elapsed().as_secs_f64(),
                bytes: done,
                size: self.manifest.size,
                from_cache: self.from_cache,
                from_peers: self.from_peers,
                from_origin: self.from_origin,
                rate,
                eta_secs: (rate > 0.0).then(|| left as f64 / rate),
                peers_connected,
                p2p_ratio,
            };
            if let Ok(text) = serde_json::to_string(&line) {
                eprintln!("{text}");
            }
        }
    }

    /// Takes in the tracker's latest answer: connects to peers not seen before, and
    /// replaces the origin share.
    fn swarm(&mut self, answer: crate::api::AnnounceResponse) {
        let count = self.manifest.chunk_count();
        for info in answer.peers.iter().chain(&answer.origins) {
            if self.sources.iter().any(|s| s.addr == info.addr) {
                continue;
            }
            self.sources.push(Source::from_info(info, count));
            self.connect(self.sources.len() - 1);
        }
        self.retire_extra_origin_connections();
        if let Some(share) = answer
            .origin_share
            .as_deref()
            .and_then(|hex| Bitfield::from_hex(count, hex).ok())
        {
            self.origin_share = Some(share);
        }
        self.refresh_availability();
    }

    /// With peers to trade with, one connection per origin is enough: the origin splits its
    /// upload between connections, so a client that started alone with every worker at the
    /// origin would otherwise keep several times its fair part of it and starve the others.
    /// Extra connections stop taking work and close once their requests are answered.
    fn retire_extra_origin_connections(&mut self) {
        let peers = (0..self.sources.len()).any(|s| !self.sources[s].origin && self.usable(s));
        if !peers {
            return;
        }
        for origin in (0..self.sources.len()).filter(|&s| self.sources[s].origin) {
            let live: Vec<usize> = (0..self.conns.len())
                .filter(|&c| self.conns[c].source == origin && self.conns[c].jobs.is_some())
                .collect();
            for &conn in live.iter().skip(1) {
                self.conns[conn].jobs = None;
            }
        }
    }

    fn closed(&mut self, conn: usize, end: End) {
        let source = self.conns[conn].source;
        self.conns[conn].jobs = None;
        self.conns[conn].ready = false;
        for index in std::mem::take(&mut self.conns[conn].in_flight) {
            self.release(index);
        }
        let src = &mut self.sources[source];
        match end {
            End::Finished => {}
            End::Local(error) => self.fatal = Some(error),
            End::Lied(error) => {
                self.complain(source, |c| &mut c.corrupt);
                self.drop_source(source, error)
            }
            End::Busy(error) if src.failures < BUSY_RETRIES => self.retry_later(source, &error),
            End::Failed(error) | End::Unreachable(error)
                if src.origin && src.failures < ORIGIN_RETRIES =>
            {
                self.retry_later(source, &error)
            }
            End::Unreachable(error) => {
                if !src.origin {
                    self.complain(source, |c| &mut c.unreachable);
                }
                self.drop_source(source, error)
            }
            End::Busy(error) | End::Failed(error) => self.drop_source(source, error),
        }
        self.refresh_availability();
    }

    /// Adds `source` to one of the lists the next announce reports.
    fn complain(&self, source: usize, list: impl FnOnce(&mut Complaints) -> &mut Vec<String>) {
        let mut complaints = self
            .watch
            .complaints
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        list(&mut complaints).push(self.sources[source].peer_id.clone());
    }

    fn retry_later(&mut self, source: usize, error: &str) {
        let src = &mut self.sources[source];
        let backoff = FIRST_BACKOFF
            .saturating_mul(1 << src.failures.min(8))
            .min(MAX_BACKOFF);
        src.failures += 1;
        src.reconnects += 1;
        src.retry_at = Some(Instant::now() + backoff);
        if src.failures == 1 {
            eprintln!(
                "peer_client: {} {}: {error}; retrying",
                src.kind(),
                src.addr
            );
        }
    }

    /// Gives a source up for this download: its connections close and its chunks go elsewhere.
    fn drop_source(&mut self, source: usize, error: String) {
        let src = &mut self.sources[source];
        if src.dropped.is_none() {
            eprintln!("peer_client: dropping {} {}: {error}", src.kind(), src.addr);
            src.dropped = Some(error);
            src.reconnects = 0;
            src.retry_at = None;
        }
        for c in self.conns.iter_mut().filter(|c| c.source == source) {
            c.jobs = None;
        }
        self.replace_lost_connection();
    }

    /// When a source is lost, an origin that is still healthy takes over its share.
    fn replace_lost_connection(&mut self) {
        let live = self.conns.iter().filter(|c| c.jobs.is_some()).count();
        if live >= self.config.workers.max(1) {
            return;
        }
        if let Some(origin) = (0..self.sources.len())
            .find(|&s| self.sources[s].origin && self.sources[s].dropped.is_none())
        {
            self.connect(origin);
        }
    }

    fn reconnect_due(&mut self) {
        let now = Instant::now();
        for source in 0..self.sources.len() {
            let src = &mut self.sources[source];
            if src.dropped.is_none() && src.retry_at.is_some_and(|t| t <= now) {
                src.retry_at = None;
                for _ in 0..std::mem::take(&mut src.reconnects) {
                    self.connect(source);
                }
            }
        }
    }

    fn usable(&self, source: usize) -> bool {
        let src = &self.sources[source];
        src.dropped.is_none()
            && (src.retry_at.is_some()
                || self
                    .conns
                    .iter()
                    .any(|c| c.source == source && c.jobs.is_some()))
    }

    /// Recomputes which chunks usable peers hold, and wakes starved connections.
    fn refresh_availability(&mut self) {
        let count = self.manifest.chunk_count();
        let mut held = Bitfield::new(count);
        let mut copies = vec![0u16; count as usize];
        for source in (0..self.sources.len()).filter(|&s| !self.sources[s].origin && self.usable(s))
        {
            for index in self
                .missing
                .iter()
                .copied()
                .filter(|&i| self.sources[source].holds(i))
            {
                held.set(index);
                copies[index as usize] = copies[index as usize].saturating_add(1);
            }
        }
        self.peer_held = held;
        self.copies = copies;
        self.epoch += 1;
    }

    /// Requests kept in flight on a connection to `source`. Peers get fewer than the
    /// origin: a short queue at each peer lets new requests go to whichever peer frees up
    /// first, and keeps the chunks a peer is asked for close to what it has just received.
    fn depth(&self, source: usize) -> usize {
        if self.sources[source].origin {
            self.depth
        } else {
            self.depth.min(PEER_PIPELINE_DEPTH)
        }
    }

    /// `conn`'s request for `index` was answered without the chunk (refused, or cancelled
    /// as asked): the connection has room again, and the chunk, unless done elsewhere or
    /// still in flight at another source, is missing again.
    fn answered_without_chunk(&mut self, conn: usize, index: u32) {
        let c = &mut self.conns[conn];
        c.in_flight.retain(|&i| i != index);
        c.head_since = Instant::now();
        self.release(index);
        self.epoch += 1;
    }

    /// One connection gave up its request for `index`; with no other copy in flight the
    /// chunk is missing again.
    fn release(&mut self, index: u32) {
        match self.chunks[index as usize] {
            ChunkState::InFlight(1) => {
                self.chunks[index as usize] = ChunkState::Missing;
                self.missing.insert(index);
                self.epoch += 1;
            }
            ChunkState::InFlight(n) => self.chunks[index as usize] = ChunkState::InFlight(n - 1),
            _ => {}
        }
    }

    /// Tops every ready connection up to the pipeline depth.
    fn assign_all(&mut self) {
        for conn in 0..self.conns.len() {
            loop {
                let c = &self.conns[conn];
                if !c.ready
                    || c.jobs.is_none()
                    || c.in_flight.len() >= self.depth(c.source)
                    || c.starved_at == Some(self.epoch)
                {
                    break;
                }
                let Some(index) = self.pick(conn) else {
                    self.conns[conn].starved_at = Some(self.epoch);
                    break;
                };
                self.chunks[index as usize] = match self.chunks[index as usize] {
                    ChunkState::InFlight(n) => {
                        self.hedged += 1;
                        ChunkState::InFlight(n + 1)
                    }
                    _ => ChunkState::InFlight(1),
                };
                self.missing.remove(&index);
                let c = &mut self.conns[conn];
                if c.in_flight.is_empty() {
                    c.head_since = Instant::now();
                }
                c.in_flight.push_back(index);
                if let Some(jobs) = &self.conns[conn].jobs {
                    let _ = jobs.send(Job::Fetch(index));
                }
            }
        }
    }

    /// The next chunk for a connection: from a peer, a rare one it holds; from an origin,
    /// the lowest missing chunk of this client's share that no usable peer holds, so peers
    /// carry all they can.
    fn pick(&mut self, conn: usize) -> Option<u32> {
        if let Some(index) = self.urgent_for(conn) {
            return Some(index);
        }
        if self.stream_starting() {
            return None;
        }
        if self.missing.is_empty() {
            return self.endgame_for(conn);
        }
        let source = &self.sources[self.conns[conn].source];
        if !source.origin {
            return self.rarest_held_by(self.conns[conn].source);
        }
        // The origin sends this client's planned share; outside it, only what no peer
        // holds, and only once the swarm has gone quiet (the planned peer may be gone).
        let share = self.origin_share.as_ref().filter(|_| !self.fallback_open);
        // A stream does not have the origin read far ahead while peers can deliver.
        let peers = (0..self.sources.len()).any(|s| !self.sources[s].origin && self.usable(s));
        let horizon = match self.stream_pos {
            Some(pos) if peers => {
                pos.saturating_add(self.config.window.saturating_mul(ORIGIN_READAHEAD_WINDOWS))
            }
            _ => u32::MAX,
        };
        self.missing
            .range(..horizon)
            .copied()
            .find(|&i| source.holds(i) && !self.peer_held.get(i) && share.is_none_or(|s| s.get(i)))
    }

    /// When streaming, the chunk of the urgent window (the next `window` chunks the reader
    /// needs) this connection should fetch, nearest first: a missing one, or a late one
    /// another source is slow with (hedged: the first copy to arrive wins). The origin
    /// takes a missing urgent chunk only when no connected peer holds it.
    fn urgent_for(&self, conn: usize) -> Option<u32> {
        let source = self.conns[conn].source;
        let src = &self.sources[source];
        // At the start, only the first chunk the stream needs from the network, even
        // while it still writes out cached ones before it.
        let (pos, window) = match self.stream_first {
            Some(first) if self.stream_starting() => (first, 1),
            _ => (self.stream_pos?, self.config.window),
        };
        let end = pos.saturating_add(window).min(self.manifest.chunk_count());
        (pos..end).find(|&index| match self.chunks[index as usize] {
            ChunkState::Missing => {
                src.holds(index) && (!src.origin || !self.ready_peer_holds(index))
            }
            _ => self.hedgeable(index, source),
        })
    }

    /// The endgame: nothing is left to ask for, and the download ends with its slowest
    /// request. A connection with room takes a chunk in flight elsewhere that is late
    /// there, or, from a peer, one this connection is expected to deliver sooner than its
    /// source will (expected time: the requests queued ahead times the measured time per
    /// chunk). The first copy wins and the other is cancelled. An origin takes only late
    /// chunks, so that hedging never costs it more than the chunks peers fail to deliver.
    fn endgame_for(&self, conn: usize) -> Option<u32> {
        let source = self.conns[conn].source;
        let here = self.expected_wait(&self.conns[conn], self.conns[conn].in_flight.len());
        self.conns
            .iter()
            .flat_map(|c| {
                c.in_flight
                    .iter()
                    .enumerate()
                    .map(move |(at, &i)| (c, at, i))
            })
            .filter(|&(c, at, index)| {
                self.hedgeable(index, source)
                    || (!self.sources[source].origin
                        && self.duplicable(index, source)
                        && here + HEDGE_SLACK < self.expected_wait(c, at))
            })
            .map(|(_, _, index)| index)
            .min()
    }

    /// How long until the request at `position` of a connection's queue (or a new one at
    /// the end) is done, by the source's measured time per chunk.
    fn expected_wait(&self, conn: &Conn, position: usize) -> Duration {
        let queued =
            Duration::from_secs_f64(self.secs_per_chunk(conn.source) * (position + 1) as f64);
        if conn.in_flight.is_empty() {
            queued
        } else {
            queued.saturating_sub(conn.head_since.elapsed())
        }
    }

    /// A source's measured time per chunk (an assumed one before it has delivered).
    fn secs_per_chunk(&self, source: usize) -> f64 {
        self.sources[source]
            .secs_per_byte
            .unwrap_or(UNMEASURED_SECS_PER_BYTE)
            * self.manifest.chunk_size as f64
    }

    /// Whether `index`, in flight at one source only, is late there and `source` could
    /// deliver it too.
    fn hedgeable(&self, index: u32, source: usize) -> bool {
        self.duplicable(index, source) && self.is_late(index)
    }

    /// Whether `index` is in flight at one source only, and `source` holds it too.
    fn duplicable(&self, index: u32, source: usize) -> bool {
        matches!(self.chunks[index as usize], ChunkState::InFlight(1))
            && self.sources[source].holds(index)
            && !self
                .conns
                .iter()
                .any(|c| c.source == source && c.in_flight.contains(&index))
    }

    /// Whether a stream is waiting for the first chunk it needs from the network. Until that
    /// chunk has gone out (or [`STREAM_START_GRACE`] after it arrived, if the reader is
    /// slow) no other chunk is asked for: requests in flight share the bandwidth, and eight
    /// requests at once would put the first byte eight chunks of transfer away instead of one;
    /// and the workers verifying them would keep the two cores from the stream's write.
    fn stream_starting(&self) -> bool {
        let Some(first) = self.stream_first else {
            return false;
        };
        self.stream_pos.is_some_and(|pos| pos <= first)
            && self
                .first_chunk_at
                .is_none_or(|at| at.elapsed() < STREAM_START_GRACE)
    }

    /// Whether a connected peer that still takes work, and is not late with what it was
    /// asked for, holds `index`.
    fn ready_peer_holds(&self, index: u32) -> bool {
        self.conns.iter().any(|c| {
            c.ready
                && c.jobs.is_some()
                && !self.sources[c.source].origin
                && self.sources[c.source].holds(index)
                && !self.overdue(c, 0)
        })
    }

    /// Whether chunk `index`, in flight, has taken longer than its source should need.
    fn is_late(&self, index: u32) -> bool {
        self.conns.iter().any(|c| {
            c.in_flight
                .iter()
                .position(|&i| i == index)
                .is_some_and(|position| self.overdue(c, position))
        })
    }

    /// Whether the request at `position` in the queue of `conn` is overdue: not done
    /// within [`HEDGE_FACTOR`] times the source's measured time per chunk for each request
    /// up to and including it, plus [`HEDGE_SLACK`]. An idle connection is never overdue.
    fn overdue(&self, conn: &Conn, position: usize) -> bool {
        if conn.in_flight.len() <= position {
            return false;
        }
        let allowed = HEDGE_FACTOR * self.secs_per_chunk(conn.source) * (position + 1) as f64;
        conn.head_since.elapsed() > Duration::from_secs_f64(allowed) + HEDGE_SLACK
    }

    /// Among the missing chunks `source` holds, one of those fewest peers hold. The scan
    /// starts at a random place so that clients, and connections, asking the same peers
    /// spread over different chunks instead of queueing for the same one.
    fn rarest_held_by(&mut self, source: usize) -> Option<u32> {
        let start = (self.next_random() % self.manifest.chunk_count().max(1) as u64) as u32;
        let candidates = self
            .missing
            .range(start..)
            .chain(self.missing.range(..start));
        let src = &self.sources[source];
        candidates
            .copied()
            .filter(|&i| src.holds(i))
            .take(RAREST_SCAN)
            .min_by_key(|&i| self.copies[i as usize])
    }

    /// xorshift64: enough to spread choices, no need for a random-number crate.
    fn next_random(&mut self) -> u64 {
        let mut x = self.random;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.random = x;
        x
    }

    /// Fails when chunks are missing that no connection left can ever deliver.
    fn check_stuck(&self) -> Result<()> {
        let busy = self
            .conns
            .iter()
            .any(|c| c.jobs.is_some() && (!c.ready || !c.in_flight.is_empty()));
        if busy || self.missing.is_empty() {
            return Ok(());
        }
        let servable = (0..self.sources.len())
            .filter(|&s| self.usable(s))
            .any(|s| self.missing.iter().any(|&i| self.sources[s].holds(i)));
        if servable {
            return Ok(());
        }
        let first: Vec<String> = self.missing.iter().take(8).map(|i| i.to_string()).collect();
        let reasons: Vec<String> = self
            .sources
            .iter()
            .map(|s| {
                format!(
                    "{} {}: {}",
                    s.kind(),
                    s.addr,
                    s.dropped.as_deref().unwrap_or("does not hold them")
                )
            })
            .collect();
        Err(crate::failure::Failure::NoSource.error(format!(
            "{} of {} chunks (first: {}) are held by no source still usable; sources: {}. Progress is kept: run the same command again to resume",
            self.missing.len(),
            self.manifest.chunk_count(),
            first.join(", "),
            reasons.join("; ")
        )))
    }

    /// Ends every connection. Those still waiting for a reply (a hedged request, a stalled
    /// source) are shut down rather than left to time out: the download is over.
    fn stop_all(&mut self) {
        for conn in &mut self.conns {
            conn.jobs = None;
            if !conn.in_flight.is_empty()
                && let Some(socket) = conn.socket.get()
            {
                let _ = socket.shutdown(std::net::Shutdown::Both);
            }
        }
        for conn in &mut self.conns {
            if let Some(handle) = conn.handle.take() {
                let _ = handle.join();
            }
        }
    }

    fn summaries(&self) -> Vec<SourceSummary> {
        self.sources
            .iter()
            .map(|s| SourceSummary {
                addr: s.addr.clone(),
                origin: s.origin,
                bytes: s.bytes,
                chunks: s.chunks,
                dropped: s.dropped.clone(),
            })
            .collect()
    }
}

/// A seed for the chunk-choice generator: the clock's nanoseconds, never zero.
fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    (nanos as u64 ^ u64::from(std::process::id()).rotate_left(32)) | 1
}

/// One connection to one source.
struct Worker {
    conn: usize,
    /// Where to leave a handle on the connected socket for the scheduler.
    socket: Arc<OnceLock<TcpStream>>,
    /// The ticket to present, as of the latest announce.
    ticket: Ticket,
    addr: String,
    asset: AssetId,
    manifest: Arc<Manifest>,
    data: Arc<File>,
    chunk_timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
    events: Sender<Event>,
}

/// Describes a socket error, naming a timeout as one (a timed-out socket says "os error 11").
fn socket_error(phase: &str, e: &std::io::Error, timeout: Duration) -> String {
    if wire::is_timeout(e) {
        format!("{phase} timed out after {timeout:?}")
    } else {
        format!("{phase}: {e}")
    }
}

impl Worker {
    fn run(self, jobs: Receiver<Job>) {
        let end = self.session(&jobs);
        let _ = self.events.send(Event::Closed {
            conn: self.conn,
            end,
        });
    }

    /// Adds a job's frame to those about to be sent. Under a download cap the allowance for
    /// a chunk is taken before asking, so a source never has a chunk waiting on a client
    /// that is asleep. A cancel goes out only for a request still unanswered; the request
    /// stays in flight until its reply (`Cancelled`, or the chunk if the cancel came late).
    fn queue(
        &self,
        job: Job,
        conn: &mut wire::Conn,
        in_flight: &mut VecDeque<u32>,
        cancelled: &mut HashSet<u32>,
    ) -> std::io::Result<()> {
        match job {
            Job::Fetch(index) => {
                ratelimit::take(
                    self.limiter.as_deref(),
                    self.manifest.chunk_len(index) as u64,
                );
                conn.queue(&Message::Request { index })?;
                in_flight.push_back(index);
            }
            Job::Cancel(index) if in_flight.contains(&index) => {
                conn.queue(&Message::Cancel { index })?;
                cancelled.insert(index);
            }
            Job::Cancel(_) => {}
        }
        Ok(())
    }

    /// Sends HaveRequest and reports the answer; returns whether the source is complete.
    fn refresh_have(&self, conn: &mut wire::Conn) -> Result<bool, End> {
        let count = self.manifest.chunk_count();
        conn.send(&Message::HaveRequest).map_err(|e| {
            End::Failed(socket_error(
                "sending a have request",
                &e,
                self.chunk_timeout,
            ))
        })?;
        // Every reply must arrive whole within the chunk timeout of our starting to wait for
        // it, so a source trickling a byte at a time is as stalled as a silent one.
        match conn.recv_control(self.chunk_timeout) {
            Ok(Message::Have(have)) if have.len() == count => {
                let complete = have.is_full();
                let _ = self.events.send(Event::Ready {
                    conn: self.conn,
                    have,
                });
                Ok(complete)
            }
            Ok(Message::Error { code, message }) => Err(End::Failed(format!(
                "refused the have request (code {code}): {message}"
            ))),
            Ok(other) => Err(End::Lied(format!(
                "answered a have request with {}",
                other.name()
            ))),
            Err(e) if e.is_timeout() => Err(End::Failed(format!(
                "stalled: no have list within {:?}",
                self.chunk_timeout
            ))),
            Err(e) => Err(End::Failed(format!("reading its have list: {e}"))),
        }
    }

    fn session(&self, jobs: &Receiver<Job>) -> End {
        let addr: SocketAddr = match self.addr.parse() {
            Ok(a) => a,
            Err(_) => {
                return End::Failed(format!("tracker gave an invalid address {:?}", self.addr));
            }
        };
        let stream = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => return End::Unreachable(socket_error("unreachable", &e, CONNECT_TIMEOUT)),
        };
        if let Ok(handle) = stream.try_clone() {
            let _ = self.socket.set(handle);
        }
        if let Err(e) = stream
            .set_write_timeout(Some(self.chunk_timeout))
            .and_then(|()| stream.set_nodelay(true))
        {
            return End::Failed(format!("configuring the socket: {e}"));
        }
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            asset: self.asset,
            ticket: self
                .ticket
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        };
        let mut conn = wire::Conn::new(stream, chunk_frame_limit(self.manifest.chunk_size));
        if let Err(e) = conn.send(&hello) {
            return End::Failed(socket_error(
                "sending the handshake",
                &e,
                self.chunk_timeout,
            ));
        }
        let count = self.manifest.chunk_count();
        match conn.recv_control(self.chunk_timeout) {
            Ok(Message::Welcome { chunk_count, .. }) if chunk_count == count => {}
            Ok(Message::Welcome { chunk_count, .. }) => {
                return End::Lied(format!(
                    "it says the asset has {chunk_count} chunks, the manifest says {count}"
                ));
            }
            Ok(Message::Error {
                code: code::SERVER_BUSY,
                message,
            }) => return End::Busy(message),
            Ok(Message::Error { code, message }) => {
                return End::Failed(format!("refused the handshake (code {code}): {message}"));
            }
            Ok(other) => return End::Lied(format!("answered the handshake with {}", other.name())),
            Err(e) if e.is_timeout() => {
                return End::Failed(format!(
                    "stalled: no handshake within {:?}",
                    self.chunk_timeout
                ));
            }
            Err(e) => return End::Failed(format!("handshake: {e}")),
        }
        let mut complete = match self.refresh_have(&mut conn) {
            Ok(complete) => complete,
            Err(end) => return end,
        };
        // Requests sent and not yet answered, oldest first: replies come in request order.
        // Every chunk is received into the connection's one buffer, verified and written
        // from it.
        let mut in_flight: VecDeque<u32> = VecDeque::new();
        // Requests in flight that this connection asked the source to cancel.
        let mut cancelled = HashSet::new();
        loop {
            if in_flight.is_empty() {
                let idle = if complete { KEEPALIVE } else { PARTIAL_REFRESH };
                match jobs.recv_timeout(idle) {
                    Ok(job) => {
                        if let Err(e) = self.queue(job, &mut conn, &mut in_flight, &mut cancelled) {
                            return End::Failed(socket_error(
                                "sending requests",
                                &e,
                                self.chunk_timeout,
                            ));
                        }
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => {
                        complete = match self.refresh_have(&mut conn) {
                            Ok(complete) => complete,
                            Err(end) => return end,
                        };
                        continue;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return End::Finished,
                }
            }
            let mut queued = Ok(());
            while queued.is_ok()
                && let Ok(job) = jobs.try_recv()
            {
                queued = self.queue(job, &mut conn, &mut in_flight, &mut cancelled);
            }
            if let Err(e) = queued.and_then(|()| conn.flush()) {
                return End::Failed(socket_error("sending requests", &e, self.chunk_timeout));
            }
            // Only a cancel of an answered request came: nothing to wait for.
            let Some(&expected) = in_flight.front() else {
                continue;
            };
            let message = match conn.recv(self.chunk_timeout) {
                Ok(m) => m,
                Err(e) if e.is_timeout() => {
                    return End::Failed(format!(
                        "stalled: chunk {expected} did not arrive within {:?}",
                        self.chunk_timeout
                    ));
                }
                Err(WireError::Closed) => {
                    return End::Failed(format!("closed the connection with chunk {expected} due"));
                }
                Err(e) => return End::Failed(format!("receiving chunk {expected}: {e}")),
            };
            match message {
                Message::Chunk { index, data } if index == expected => {
                    in_flight.pop_front();
                    cancelled.remove(&index);
                    if !self.manifest.chunk_matches(index, &data) {
                        return End::Lied(format!("sent chunk {index} with the wrong SHA-256"));
                    }
                    if let Err(e) =
                        Partial::write_at(&self.data, &data, self.manifest.chunk_offset(index))
                    {
                        let hint = if e.kind() == std::io::ErrorKind::StorageFull {
                            " (the disk is full)"
                        } else {
                            ""
                        };
                        return End::Local(format!(
                            "writing chunk {index} to the store failed{hint}: {e}"
                        ));
                    }
                    let _ = self.events.send(Event::Done {
                        conn: self.conn,
                        index,
                    });
                }
                Message::Chunk { index, .. } => {
                    return End::Lied(format!("sent chunk {index} when chunk {expected} was due"));
                }
                Message::Cancelled { index } if index == expected && cancelled.remove(&index) => {
                    in_flight.pop_front();
                    // The allowance taken for it under a download cap was not used.
                    if let Some(limiter) = &self.limiter {
                        limiter.give_back(self.manifest.chunk_len(index) as u64);
                    }
                    let _ = self.events.send(Event::Cancelled {
                        conn: self.conn,
                        index,
                    });
                }
                Message::DontHave { index } | Message::Busy { index } if index == expected => {
                    in_flight.pop_front();
                    cancelled.remove(&index);
                    let _ = self.events.send(Event::Refused {
                        conn: self.conn,
                        index,
                    });
                }
                Message::Error { code, message } => {
                    return End::Failed(format!(
                        "error {code} with chunk {expected} due: {message}"
                    ));
                }
                other => {
                    return End::Lied(format!(
                        "answered a request for chunk {expected} with {}",
                        other.name()
                    ));
                }
            }
        }
    }
}
