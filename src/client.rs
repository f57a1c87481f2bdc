//! Downloads: local store first, then the peers the tracker names, then the origin.
//!
//! One scheduler thread owns the download state (which chunk is missing, in flight on which
//! connection, or done). Each connection is a worker thread that keeps up to
//! [`PIPELINE_DEPTH`] requests in flight, verifies every chunk it receives against the
//! manifest, writes it to the store at its offset, and reports the outcome back on one
//! channel. A source that stalls, drops, or sends a chunk that fails its hash loses its
//! chunks to other sources and is not used again in this download. Progress is persisted
//! every second, so a killed download resumes where it stopped.

use std::collections::{BTreeSet, HashSet, VecDeque};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};
use serde::Serialize;

use crate::api::{AnnounceRequest, PeerInfo};
use crate::bitfield::Bitfield;
use crate::manifest::{AssetId, Manifest};
use crate::ratelimit::{self, RateLimiter};
use crate::store::{Partial, Store};
use crate::tracker_client::{TrackerClient, new_peer_id};
use crate::wire::{self, Message, PROTOCOL_VERSION, WireError, chunk_frame_limit};

/// Requests kept in flight per connection: with 1 MiB chunks, 4 MiB outstanding covers the
/// bandwidth-delay product of a 1 Gbit/s link with 30 ms of round trip.
pub const PIPELINE_DEPTH: usize = 4;
/// Default connections per download: enough to overlap receiving, hashing and writing on a
/// two-core machine and to spread load over several peers.
pub const DEFAULT_WORKERS: usize = 4;
/// Default time a chunk may take to start arriving before its source is declared stalled.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Connecting to a peer on a LAN takes milliseconds; one that takes 5 s is of no use.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Progress is synced and recorded this often, bounding what a crash can lose.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the scheduler waits for an event before it looks at the clock again.
const TICK: Duration = Duration::from_millis(100);

/// Validated settings of one `get`.
#[derive(Clone, Debug)]
pub struct GetConfig {
    /// The asset to fetch.
    pub asset: AssetId,
    /// Tracker URL; optional when the store already has the manifest and every chunk.
    pub tracker: Option<String>,
    /// Where to place the finished file; `None` leaves it in the store only.
    pub output: Option<PathBuf>,
    /// The local store (cache).
    pub store: PathBuf,
    /// Parallel connections.
    pub workers: usize,
    /// A source silent for this long while a chunk is due is dropped.
    pub chunk_timeout: Duration,
    /// Download cap in bytes per second.
    pub max_download_rate: Option<u64>,
    /// Show a progress bar on stderr.
    pub progress: bool,
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
    /// Where the file was placed, if anywhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Bytes already in the local store.
    pub from_cache: u64,
    /// Bytes received from peers.
    pub from_peers: u64,
    /// Bytes received from origins.
    pub from_origin: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Every source used or tried.
    pub sources: Vec<SourceSummary>,
}

impl Summary {
    /// One line for people: where the bytes came from, time and rate.
    pub fn human(&self) -> String {
        use crate::units::{format_bytes, format_rate};
        let network = self.from_peers + self.from_origin;
        let head = format!(
            "got {} ({}) in {:.2} s",
            self.name,
            format_bytes(self.size),
            self.seconds
        );
        if network == 0 {
            return format!("{head}, all from the local store");
        }
        let peers = self
            .sources
            .iter()
            .filter(|s| !s.origin && s.bytes > 0)
            .count();
        format!(
            "{head}, {}: cache {}, peers {} ({peers} peer{}), origin {}",
            format_rate(network, Duration::from_secs_f64(self.seconds)),
            format_bytes(self.from_cache),
            format_bytes(self.from_peers),
            if peers == 1 { "" } else { "s" },
            format_bytes(self.from_origin),
        )
    }
}

/// Fetches an asset into the store and places it at the output path.
pub fn get(config: &GetConfig) -> Result<Summary> {
    let started = Instant::now();
    let store = Store::open(&config.store)?;
    let tracker = config
        .tracker
        .as_deref()
        .map(TrackerClient::new)
        .transpose()?;
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
    let partial = store.begin(&manifest)?;
    let initial = partial.have().clone();
    let from_cache: u64 = initial.ones().map(|i| manifest.chunk_len(i) as u64).sum();
    let mut sources_summary = Vec::new();
    if !initial.is_full() {
        let tracker = tracker.with_context(|| {
            format!(
                "asset {} is only partly in the store; give --tracker to fetch the rest",
                config.asset
            )
        })?;
        let answer = tracker.announce(
            &config.asset,
            &AnnounceRequest {
                peer_id: new_peer_id(),
                have: Some(initial.to_hex()),
                ..AnnounceRequest::default()
            },
        )?;
        let sources = answer
            .peers
            .iter()
            .chain(&answer.origins)
            .map(Source::from_info)
            .collect::<Vec<_>>();
        if sources.is_empty() {
            bail!(
                "the tracker knows no peer or origin for {}; start a peer_server that holds it",
                config.asset
            );
        }
        let manifest = Arc::new(manifest.clone());
        sources_summary = Scheduler::new(config, manifest, &partial, sources).run()?;
    }
    partial.finish()?;
    if let Some(out) = &config.output {
        store.export(&config.asset, out)?;
    }
    let sum = |origin: bool| {
        sources_summary
            .iter()
            .filter(|s| s.origin == origin)
            .map(|s| s.bytes)
            .sum()
    };
    Ok(Summary {
        asset: config.asset.to_string(),
        name: manifest.name.clone(),
        size: manifest.size,
        output: config.output.clone(),
        from_cache,
        from_peers: sum(false),
        from_origin: sum(true),
        seconds: started.elapsed().as_secs_f64(),
        sources: sources_summary,
    })
}

/// A place chunks can come from.
#[derive(Debug)]
struct Source {
    addr: String,
    origin: bool,
    /// What the source holds, as far as we know; `None` means everything.
    have: Option<Bitfield>,
    dropped: Option<String>,
    bytes: u64,
    chunks: u32,
    /// Chunks this source said it does not hold or would not send now.
    refused: HashSet<u32>,
}

impl Source {
    fn from_info(info: &PeerInfo) -> Source {
        Source {
            addr: info.addr.clone(),
            origin: info.origin,
            have: None,
            dropped: None,
            bytes: 0,
            chunks: 0,
            refused: HashSet::new(),
        }
    }

    fn can_serve(&self, index: u32) -> bool {
        self.dropped.is_none()
            && self.have.as_ref().is_none_or(|h| h.get(index))
            && !self.refused.contains(&index)
    }
}

/// What a connection worker reports.
#[derive(Debug)]
enum Event {
    /// Handshake done; the source holds these chunks.
    Ready { conn: usize, have: Bitfield },
    /// Chunk verified and written.
    Done { conn: usize, index: u32 },
    /// The source does not hold, or will not now send, this chunk.
    Refused { conn: usize, index: u32 },
    /// The connection is over; `trust` is false when the source misbehaved.
    Closed {
        conn: usize,
        error: Option<String>,
        trust: bool,
    },
}

struct Conn {
    source: usize,
    jobs: Option<Sender<u32>>,
    in_flight: VecDeque<u32>,
    ready: bool,
    handle: Option<std::thread::JoinHandle<()>>,
}

enum ChunkState {
    Missing,
    InFlight,
    Done,
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
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    limiter: Option<Arc<RateLimiter>>,
    progress: Option<indicatif::ProgressBar>,
}

impl<'a> Scheduler<'a> {
    fn new(
        config: &'a GetConfig,
        manifest: Arc<Manifest>,
        partial: &'a Partial,
        sources: Vec<Source>,
    ) -> Self {
        let have = partial.have().clone();
        let chunks = (0..manifest.chunk_count())
            .map(|i| {
                if have.get(i) {
                    ChunkState::Done
                } else {
                    ChunkState::Missing
                }
            })
            .collect();
        let missing = (0..manifest.chunk_count())
            .filter(|&i| !have.get(i))
            .collect();
        let (events_tx, events_rx) = unbounded();
        let progress = config.progress.then(|| {
            let bar = indicatif::ProgressBar::new(manifest.size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(have.ones().map(|i| manifest.chunk_len(i) as u64).sum());
            bar
        });
        Scheduler {
            config,
            limiter: config
                .max_download_rate
                .map(|r| Arc::new(RateLimiter::new(r))),
            manifest,
            partial,
            sources,
            conns: Vec::new(),
            chunks,
            missing,
            have,
            events_tx,
            events_rx,
            progress,
        }
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
        let worker = Worker {
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
            ready: false,
            handle: Some(handle),
        });
    }

    fn run(mut self) -> Result<Vec<SourceSummary>> {
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
            drop(ckpt_tx);
            let persisted = persister.join().expect("checkpoint thread panicked");
            outcome.and(persisted)
        });
        self.stop_all();
        if let Some(bar) = &self.progress {
            bar.finish_and_clear();
        }
        result?;
        Ok(self.summaries())
    }

    fn drive(&mut self, ckpt_tx: &Sender<Bitfield>) -> Result<()> {
        let mut last_checkpoint = Instant::now();
        let mut dirty = false;
        while !self.missing.is_empty()
            || self
                .chunks
                .iter()
                .any(|c| matches!(c, ChunkState::InFlight))
        {
            if let Ok(event) = self.events_rx.recv_timeout(TICK) {
                dirty |= matches!(event, Event::Done { .. });
                self.handle(event);
                while let Ok(event) = self.events_rx.try_recv() {
                    dirty |= matches!(event, Event::Done { .. });
                    self.handle(event);
                }
            }
            if dirty && last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                // Skipped when the last checkpoint is still being written; the next tick retries.
                if ckpt_tx.try_send(self.have.clone()).is_ok() {
                    dirty = false;
                    last_checkpoint = Instant::now();
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
                self.assign_all();
            }
            Event::Done { conn, index } => {
                self.conns[conn].in_flight.retain(|&i| i != index);
                if !matches!(self.chunks[index as usize], ChunkState::Done) {
                    self.chunks[index as usize] = ChunkState::Done;
                    self.missing.remove(&index);
                    self.have.set(index);
                    let len = self.manifest.chunk_len(index) as u64;
                    let source = &mut self.sources[self.conns[conn].source];
                    source.bytes += len;
                    source.chunks += 1;
                    if let Some(bar) = &self.progress {
                        bar.inc(len);
                    }
                }
                self.assign_all();
            }
            Event::Refused { conn, index } => {
                self.conns[conn].in_flight.retain(|&i| i != index);
                let source = self.conns[conn].source;
                self.sources[source].refused.insert(index);
                self.release(index);
                self.assign_all();
            }
            Event::Closed { conn, error, trust } => {
                let source = self.conns[conn].source;
                self.conns[conn].jobs = None;
                for index in std::mem::take(&mut self.conns[conn].in_flight) {
                    self.release(index);
                }
                if let Some(error) = error {
                    let src = &mut self.sources[source];
                    if src.dropped.is_none() {
                        eprintln!(
                            "peer_client: dropping {} {}: {error}",
                            if src.origin { "origin" } else { "peer" },
                            src.addr
                        );
                        src.dropped = Some(error);
                    }
                    if !trust {
                        // Stop every other connection to the same source.
                        for c in self.conns.iter_mut().filter(|c| c.source == source) {
                            c.jobs = None;
                        }
                    }
                    self.replace_lost_connection();
                }
                self.assign_all();
            }
        }
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

    fn release(&mut self, index: u32) {
        if matches!(self.chunks[index as usize], ChunkState::InFlight) {
            self.chunks[index as usize] = ChunkState::Missing;
            self.missing.insert(index);
        }
    }

    /// Tops every ready connection up to the pipeline depth.
    fn assign_all(&mut self) {
        for conn in 0..self.conns.len() {
            while self.conns[conn].ready
                && self.conns[conn].jobs.is_some()
                && self.conns[conn].in_flight.len() < PIPELINE_DEPTH
            {
                let Some(index) = self.pick(conn) else { break };
                self.chunks[index as usize] = ChunkState::InFlight;
                self.missing.remove(&index);
                self.conns[conn].in_flight.push_back(index);
                if let Some(jobs) = &self.conns[conn].jobs {
                    let _ = jobs.send(index);
                }
            }
        }
    }

    /// The next chunk for a connection: the lowest missing one its source holds. An origin
    /// only takes chunks that no usable peer holds, so peers carry all they can.
    fn pick(&self, conn: usize) -> Option<u32> {
        let source = &self.sources[self.conns[conn].source];
        self.missing.iter().copied().find(|&i| {
            source.can_serve(i)
                && (!source.origin
                    || !self
                        .sources
                        .iter()
                        .any(|s| !s.origin && s.can_serve(i) && self.has_live_conn(s)))
        })
    }

    fn has_live_conn(&self, source: &Source) -> bool {
        self.conns
            .iter()
            .any(|c| c.jobs.is_some() && std::ptr::eq(&self.sources[c.source], source))
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
        let live_sources: Vec<&Source> = self
            .sources
            .iter()
            .filter(|s| s.dropped.is_none() && self.has_live_conn(s))
            .collect();
        let servable = self
            .missing
            .iter()
            .any(|&i| live_sources.iter().any(|s| s.can_serve(i)));
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
                    if s.origin { "origin" } else { "peer" },
                    s.addr,
                    s.dropped.as_deref().unwrap_or("does not hold them")
                )
            })
            .collect();
        bail!(
            "{} of {} chunks (first: {}) are held by no source still usable; sources: {}. Progress is kept: run the same command again to resume",
            self.missing.len(),
            self.manifest.chunk_count(),
            first.join(", "),
            reasons.join("; ")
        )
    }

    fn stop_all(&mut self) {
        for conn in &mut self.conns {
            conn.jobs = None;
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

/// One connection to one source.
struct Worker {
    conn: usize,
    addr: String,
    asset: AssetId,
    manifest: Arc<Manifest>,
    data: Arc<File>,
    chunk_timeout: Duration,
    limiter: Option<Arc<RateLimiter>>,
    events: Sender<Event>,
}

/// Why a connection ended.
enum End {
    /// The scheduler has no more work for it.
    Finished,
    /// A network or protocol failure; the source may be fine later.
    Failed(String),
    /// The source sent bad data: never trust it again in this download.
    Lied(String),
}

impl Worker {
    fn run(self, jobs: Receiver<u32>) {
        let end = self.session(&jobs);
        let (error, trust) = match end {
            End::Finished => (None, true),
            End::Failed(e) => (Some(e), true),
            End::Lied(e) => (Some(e), false),
        };
        let _ = self.events.send(Event::Closed {
            conn: self.conn,
            error,
            trust,
        });
    }

    fn session(&self, jobs: &Receiver<u32>) -> End {
        let addr: SocketAddr = match self.addr.parse() {
            Ok(a) => a,
            Err(_) => {
                return End::Failed(format!("tracker gave an invalid address {:?}", self.addr));
            }
        };
        let stream = match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
            Ok(s) => s,
            Err(e) => return End::Failed(format!("unreachable: {e}")),
        };
        let setup = stream
            .set_write_timeout(Some(self.chunk_timeout))
            .and_then(|()| stream.set_nodelay(true));
        if let Err(e) = setup {
            return End::Failed(format!("configuring the socket: {e}"));
        }
        let mut writer = &stream;
        let limit = chunk_frame_limit(self.manifest.chunk_size);
        // Every reply must arrive whole within the chunk timeout of our starting to wait for
        // it, so a source trickling a byte at a time is as stalled as a silent one.
        let next_reply =
            || wire::read_message_by(&stream, limit, Instant::now() + self.chunk_timeout);
        let hello = Message::Hello {
            version: PROTOCOL_VERSION,
            asset: self.asset,
            ticket: Vec::new(),
        };
        if let Err(e) = wire::write_message(&mut writer, &hello)
            .and_then(|()| wire::write_message(&mut writer, &Message::HaveRequest))
        {
            return End::Failed(format!("sending the handshake: {e}"));
        }
        let count = self.manifest.chunk_count();
        match next_reply() {
            Ok(Message::Welcome { chunk_count, .. }) if chunk_count == count => {}
            Ok(Message::Welcome { chunk_count, .. }) => {
                return End::Lied(format!(
                    "it says the asset has {chunk_count} chunks, the manifest says {count}"
                ));
            }
            Ok(Message::Error { code, message }) => {
                return End::Failed(format!("refused the handshake (code {code}): {message}"));
            }
            Ok(other) => return End::Lied(format!("answered the handshake with {other:?}")),
            Err(e) => return End::Failed(format!("handshake: {e}")),
        }
        match next_reply() {
            Ok(Message::Have(have)) if have.len() == count => {
                let _ = self.events.send(Event::Ready {
                    conn: self.conn,
                    have,
                });
            }
            Ok(Message::Error { code, message }) => {
                return End::Failed(format!("refused the have request (code {code}): {message}"));
            }
            Ok(other) => return End::Lied(format!("answered a have request with {other:?}")),
            Err(e) => return End::Failed(format!("reading its have list: {e}")),
        }
        // Requests sent and not yet answered, oldest first: replies come in request order.
        let mut in_flight: VecDeque<u32> = VecDeque::new();
        let mut frames = Vec::new();
        loop {
            frames.clear();
            if in_flight.is_empty() {
                match jobs.recv() {
                    Ok(index) => {
                        Message::Request { index }.encode(&mut frames);
                        in_flight.push_back(index);
                    }
                    Err(_) => return End::Finished,
                }
            }
            while let Ok(index) = jobs.try_recv() {
                Message::Request { index }.encode(&mut frames);
                in_flight.push_back(index);
            }
            if !frames.is_empty()
                && let Err(e) = std::io::Write::write_all(&mut writer, &frames)
            {
                return End::Failed(format!("sending requests: {e}"));
            }
            let expected = *in_flight.front().expect("in flight is not empty");
            let message = match next_reply() {
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
                    if !self.manifest.chunk_matches(index, &data) {
                        return End::Lied(format!("sent chunk {index} with the wrong SHA-256"));
                    }
                    ratelimit::take(self.limiter.as_deref(), data.len() as u64);
                    if let Err(e) = self
                        .data
                        .write_all_at(&data, self.manifest.chunk_offset(index))
                    {
                        return End::Failed(format!("writing chunk {index} to the store: {e}"));
                    }
                    let _ = self.events.send(Event::Done {
                        conn: self.conn,
                        index,
                    });
                }
                Message::DontHave { index } | Message::Busy { index } if index == expected => {
                    in_flight.pop_front();
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
                        describe(&other)
                    ));
                }
            }
        }
    }
}

fn describe(m: &Message) -> String {
    match m {
        Message::Chunk { index, data } => {
            format!("chunk {index} ({} bytes) out of order", data.len())
        }
        other => format!("{other:?}"),
    }
}
