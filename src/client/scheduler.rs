//! The one thread that owns a download's state. It takes what the workers, the announcer
//! and the stream report from one channel, hands it to the [`Plan`], and carries out what
//! the plan decides: it starts a worker for every connection the plan opens, sends each
//! worker its jobs, closes the job channel of every connection the plan retires, records
//! progress every second, and keeps the live have-bitmap the embedded server serves from.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam_channel::{Receiver, Sender, bounded, unbounded};

use crate::api::AnnounceResponse;
use crate::bitfield::{Bitfield, LiveHave};
use crate::failure::Failure;
use crate::manifest::Manifest;
use crate::ratelimit::RateLimiter;
use crate::store::Partial;
use crate::sync::LockExt;

use super::announce::Reports;
use super::config::GetConfig;
use super::headroom::Headroom;
use super::plan::{Order, PIPELINE_DEPTH, Plan, Settings, Verdict, stall_bound};
use super::serving::{UNLIMITED, Yielding};
use super::sources::{End, Source};
use super::summary::{Downloaded, Meter};
use super::uplink::{Observation, UplinkControl};
use super::web_seed::{self, WebSeed};
use super::worker::{self, Job, Jobs, Report, Socket, Ticket, Worker};

/// Progress is synced and recorded this often, bounding what a crash can lose.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// How long the scheduler waits for an event before it looks at the clock again.
const TICK: Duration = Duration::from_millis(100);
/// How often the embedded server's upload rate is adapted: a tick, which is several round
/// trips on a LAN and about one on a long link (see [`super::uplink`]).
const YIELD_EVERY: Duration = Duration::from_millis(100);
/// How often a stream or a download's endgame looks for late chunks: a 256 KiB chunk takes
/// 10 ms at 25 MiB/s, so the 100 ms tick of the rest of a download would notice too late.
const LATENESS_TICK: Duration = Duration::from_millis(10);

/// What the scheduler hears about.
#[derive(Debug)]
pub(crate) enum Event {
    /// A connection worker's report.
    Worker(Report),
    /// The tracker's latest answer: peers (maybe new ones) and this client's origin share.
    Swarm(AnnounceResponse),
    /// The stream needs this chunk next.
    Position(u32),
    /// A feed's readers need these chunks next, most recently moved first (none: no
    /// reader waits).
    Readers(Vec<u32>),
    /// A feed's players will read these chunk ranges next, in order, until the instant
    /// (see [`crate::client::plan::Plan::set_ahead`]).
    Ahead(Vec<std::ops::Range<u32>>, Instant),
    /// The stream could not write its output: the download stops.
    OutputFailed,
}

/// Who watches a download, and what the scheduler tells them.
pub(crate) struct Watch {
    /// When the `get` started, for the time to the first chunk.
    pub(crate) started: Instant,
    /// What is verified and written, shared with the embedded server and the announcer.
    pub(crate) live: LiveHave,
    /// Peers to report to the tracker with the next announce.
    pub(crate) complaints: Reports,
    /// The ticket workers present in their `Hello`.
    pub(crate) ticket: Ticket,
    /// Where to send the index of each chunk verified, when streaming.
    pub(crate) streaming: Option<Sender<u32>>,
    /// Whether a reader waits on the stream (a pipe, a device), so that the chunks it needs
    /// next go first; a stream into a file being placed takes chunks in any order.
    pub(crate) reader_waits: bool,
    /// The embedded server's upload limit, adapted to this download's needs (`None`: it
    /// serves nothing).
    pub(crate) yielding: Option<Yielding>,
    /// Chunks not to fetch (`get --file` wants only the chunks of some files): the plan
    /// counts them as done, and no record or summary ever claims them.
    pub(crate) skipped: Option<Bitfield>,
    /// A gateway's feed, whose live figures follow the download.
    pub(crate) feed: Option<Arc<super::feed::Feed>>,
}

/// The embedded server's adapted upload rate, and what it was last measured from.
struct Yield {
    to: Yielding,
    control: Control,
    served: u64,
    next: Instant,
}

/// What sets the embedded server's upload rate while the download runs.
enum Control {
    /// A headroom below the uplink's learnt rate (the default).
    Headroom(Headroom),
    /// The own download's round trip (`--yield-uplink`).
    Delay(UplinkControl),
}

impl Control {
    /// The upload rate it sets now (`None`: no limit of its own).
    fn rate(&self) -> Option<u64> {
        match self {
            Control::Headroom(headroom) => headroom.rate(),
            Control::Delay(control) => control.rate(),
        }
    }
}

/// The threads and channels of one connection; its state is in the plan.
struct Link {
    jobs: Option<Jobs>,
    /// The worker's socket once connected, to shut down a wait that is no longer needed.
    socket: Socket,
    handle: Option<JoinHandle<()>>,
}

/// The single owner of a download's state.
pub(crate) struct Scheduler<'a> {
    config: &'a GetConfig,
    manifest: Arc<Manifest>,
    partial: &'a Partial,
    plan: Plan,
    links: Vec<Link>,
    fatal: Option<String>,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    limiter: Option<Arc<RateLimiter>>,
    meter: Meter,
    watch: Watch,
    yielding: Option<Yield>,
    /// The HTTP client of the origin URLs, made when the first one is connected to, and
    /// why its TLS setup failed, if it did.
    web_agent: Option<(ureq::Agent, Option<String>)>,
}

impl<'a> Scheduler<'a> {
    /// A scheduler for the rest of `partial`, from `sources`.
    pub(crate) fn new(
        config: &'a GetConfig,
        manifest: Arc<Manifest>,
        partial: &'a Partial,
        sources: Vec<Source>,
        origin_share: Option<Bitfield>,
        watch: Watch,
    ) -> Self {
        let have = partial.have().clone();
        let (events_tx, events_rx) = unbounded();
        let from_cache = have.ones().map(|i| manifest.chunk_len(i) as u64).sum();
        let meter = Meter::new(config.progress, manifest.size, from_cache, watch.started);
        let limiter = config
            .max_download_rate
            .map(|r| Arc::new(RateLimiter::new(r)));
        let settings = Settings {
            workers: config.workers,
            // 1 under a download cap, so a server never has chunks queued for a client
            // that is sleeping off its rate.
            depth: if limiter.is_some() { 1 } else { PIPELINE_DEPTH },
            window: config.window,
            streaming: watch.streaming.is_some() && watch.reader_waits,
            origin_share,
            seed: crate::backoff::seed_from_clock(),
            stall_timeout: stall_bound(
                config.stall_timeout,
                manifest.chunk_size,
                config.max_download_rate,
            ),
        };
        let mut planned = have;
        if let Some(skipped) = &watch.skipped {
            planned.union_with(skipped);
        }
        let plan = Plan::new(
            manifest.size,
            manifest.chunk_size,
            planned,
            sources,
            settings,
            Instant::now(),
        );
        Scheduler {
            config,
            manifest,
            partial,
            plan,
            links: Vec::new(),
            fatal: None,
            events_tx,
            events_rx,
            limiter,
            meter,
            yielding: watch.yielding.clone().map(|to| Yield {
                served: to.uploaded.get(&to.asset),
                to,
                control: if config.yield_uplink {
                    Control::Delay(UplinkControl::new(Instant::now()))
                } else {
                    Control::Headroom(Headroom::new())
                },
                next: Instant::now() + YIELD_EVERY,
            }),
            watch,
            web_agent: None,
        }
    }

    /// Where the announcer and the stream tell the scheduler what they see.
    /// What is verified: the plan's done chunks less the skipped ones it counts as done.
    pub(crate) fn verified(&self) -> Bitfield {
        let mut done = self.plan.done().clone();
        if let Some(skipped) = &self.watch.skipped {
            done.remove_all(skipped);
        }
        done
    }

    pub(crate) fn events(&self) -> Sender<Event> {
        self.events_tx.clone()
    }

    /// Downloads every missing chunk, recording progress as it goes; `interrupted` is
    /// polled every tick and ends the download when it says so.
    pub(crate) fn run(mut self, interrupted: impl Fn() -> bool) -> Result<Downloaded> {
        self.plan.open_initial(Instant::now());
        self.sync();
        let (ckpt_tx, ckpt_rx) = bounded::<Bitfield>(1);
        let result = std::thread::scope(|scope| {
            let partial = self.partial;
            let persister = scope.spawn(move || -> Result<()> {
                for have in ckpt_rx {
                    partial.checkpoint(&have)?;
                }
                Ok(())
            });
            let outcome = self.drive(&ckpt_tx, &interrupted);
            if outcome.is_err() {
                // Keep everything verified so far, so that "run it again to resume" holds.
                let _ = ckpt_tx.send(self.verified());
            }
            drop(ckpt_tx);
            let persisted = persister.join().expect("checkpoint thread panicked");
            persisted
                .context("recording download progress")
                .and(outcome)
        });
        self.stop_all();
        // Seeding from here on, or nothing: the own download no longer needs the uplink.
        if let Some(y) = &self.yielding {
            y.to.limiter.set_rate(UNLIMITED);
        }
        self.meter.finish();
        result?;
        self.meter.sample(true, || self.plan.peers_connected());
        Ok(Downloaded {
            sources: self.plan.sources().iter().map(Source::summary).collect(),
            first_chunk_secs: self.plan.first_chunk_at().map(|at| {
                at.saturating_duration_since(self.watch.started)
                    .as_secs_f64()
            }),
            peak_rate: self.meter.peak_rate(),
            hedged: self.plan.hedged(),
            origin_reasons: self.plan.origin_account(),
            duplicates: self.plan.duplicates(),
        })
    }

    fn drive(&mut self, ckpt_tx: &Sender<Bitfield>, interrupted: &impl Fn() -> bool) -> Result<()> {
        let mut last_checkpoint = Instant::now();
        let mut dirty = false;
        while !self.plan.is_complete() {
            // Streams and the endgame act on lateness, which grows with time alone, and an
            // empty share waits at most 50 ms for a peer to prove it.
            let watch_lateness = self.plan.watches_lateness();
            let tick = if watch_lateness || self.plan.awaits_proof() {
                LATENESS_TICK
            } else {
                TICK
            };
            if let Ok(event) = self.events_rx.recv_timeout(tick) {
                dirty |= self.handle(event);
                while let Ok(event) = self.events_rx.try_recv() {
                    dirty |= self.handle(event);
                }
            }
            if let Some(error) = self.fatal.take() {
                bail!(error);
            }
            if interrupted() {
                bail!("interrupted; progress is kept: run the same command again to resume");
            }
            self.plan.reconnect_due(Instant::now());
            self.sync();
            if watch_lateness {
                self.plan.nudge(Instant::now());
                self.sync();
            }
            self.meter.sample(false, || self.plan.peers_connected());
            if let Some(feed) = &self.watch.feed {
                let peers = self.plan.peers_connected() as u64;
                feed.stats.peers.store(peers, Ordering::Relaxed);
            }
            self.plan.update_pace(Instant::now());
            self.adapt_uploads(Instant::now());
            self.plan.update_fallback(Instant::now());
            self.sync();
            if dirty && last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
                match ckpt_tx.try_send(self.verified()) {
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
            if let Some(peer) = self.plan.rotate_peers(Instant::now()) {
                log::debug!(
                    "peer {} delivered least of the connected peers: its slot goes to a waiting peer",
                    self.plan.sources()[peer].addr
                );
                self.sync();
            }
            if let Some(error) = self.plan.stuck() {
                return Err(Failure::NoSource.error(error));
            }
            // Every wait of the download is bounded here: whatever the sources do, the
            // download ends once none delivered a chunk for the stall timeout.
            if let Some(error) = self.plan.stalled(Instant::now()) {
                return Err(Failure::NoSource.error(error));
            }
        }
        Ok(())
    }

    /// Sets the embedded server's upload rate, once per [`YIELD_EVERY`]: a headroom below
    /// the uplink's learnt rate (see [`super::headroom`]), or with `--yield-uplink` from
    /// this download's round trip and stream (see [`super::uplink`]).
    fn adapt_uploads(&mut self, now: Instant) {
        let Some(y) = self.yielding.as_mut() else {
            return;
        };
        if now < y.next {
            return;
        }
        y.next = now + YIELD_EVERY;
        let served = y.to.uploaded.get(&y.to.asset);
        let before = y.control.rate();
        let rate = match &mut y.control {
            Control::Headroom(headroom) => headroom.observe(y.to.gauge.read(), now),
            Control::Delay(control) => control.observe(
                Observation {
                    rtt: self.plan.own_rtt(),
                    served: served.saturating_sub(y.served),
                    stream_short: self.plan.stream_short(),
                },
                now,
            ),
        };
        if rate != before {
            match &y.control {
                Control::Headroom(headroom) => log::debug!(
                    "uploads limited to {rate:?} B/s, a headroom below the uplink's {:?} B/s learnt",
                    headroom.estimate()
                ),
                Control::Delay(control) => log::debug!(
                    "uploads limited to {rate:?} B/s for the own download (round trip {:?}, base {:?})",
                    self.plan.own_rtt(),
                    control.base()
                ),
            }
        }
        y.served = served;
        if rate != before {
            y.to.limiter.set_rate(rate.unwrap_or(UNLIMITED));
        }
    }

    /// Hands one event to the plan and carries out what it decides; returns whether a
    /// chunk arrived (progress to record).
    fn handle(&mut self, event: Event) -> bool {
        let now = Instant::now();
        let mut arrived = false;
        match event {
            Event::Worker(Report::Ready { conn, have, rtt }) => {
                if let Some(rtt) = rtt {
                    self.plan.round_trip(conn, rtt);
                }
                self.plan.ready(conn, have);
            }
            Event::Worker(Report::Gained { conn, indices }) => self.plan.gained(conn, &indices),
            Event::Worker(Report::Done { conn, index }) => {
                arrived = true;
                if let Some(credit) = self.plan.delivered(conn, index, now) {
                    // The one place the live have-bitmap follows the plan.
                    self.watch.live.insert(index);
                    self.meter.add(credit.origin, credit.len);
                    if let Some(feed) = &self.watch.feed {
                        feed.stats.count(credit.origin, credit.len);
                    }
                    if let Some(stream) = &self.watch.streaming {
                        let _ = stream.send(index);
                    }
                }
            }
            Event::Worker(Report::Refused { conn, index }) => self.plan.refused(conn, index, now),
            Event::Worker(Report::Cancelled { conn, index }) => {
                self.plan.cancelled(conn, index, now)
            }
            Event::Worker(Report::Closed { conn, end }) => {
                self.log_pace(conn);
                let source = self.plan.conns()[conn].source;
                let (verdict, complaint) = self.plan.closed(conn, end, now);
                let src = &self.plan.sources()[source];
                if let Some(complaint) = complaint {
                    self.watch.complaints.file(&src.peer_id, complaint);
                }
                match verdict {
                    Verdict::Kept => {}
                    Verdict::Fatal(error) => self.fatal = Some(error),
                    Verdict::Retrying { first, error } => {
                        if first {
                            log::warn!("{} {}: {error}; retrying", src.kind(), src.addr);
                        }
                    }
                    Verdict::Dropped { error, newly } => {
                        if newly {
                            log::warn!("dropping {} {}: {error}", src.kind(), src.addr);
                        }
                    }
                }
            }
            Event::Swarm(answer) => {
                let count = self.manifest.chunk_count();
                // Only sources not seen before are built.
                let known = self.plan.sources();
                let new = answer
                    .peers
                    .iter()
                    .chain(&answer.origins)
                    .filter(|info| !known.iter().any(|s| s.addr == info.addr))
                    .map(Source::from_info)
                    .chain(
                        answer
                            .web_origins()
                            .filter(|url| !known.iter().any(|s| s.addr == *url))
                            .map(Source::web),
                    )
                    .collect();
                let share = answer.share(count);
                self.plan.take_swarm(new, share, now);
            }
            Event::Position(next) => self.plan.set_stream_pos(next),
            Event::Readers(positions) => self.plan.set_stream_positions(&positions, now),
            Event::Ahead(ranges, until) => self.plan.set_ahead(ranges, until),
            Event::OutputFailed => self.fatal = Some("the output stream failed".into()),
        }
        self.plan.assign(now);
        self.sync();
        arrived
    }

    /// Carries out the plan: workers for new connections, jobs, closed job channels.
    fn sync(&mut self) {
        for conn in self.links.len()..self.plan.conns().len() {
            self.spawn(conn);
        }
        for order in self.plan.take_orders() {
            let (conn, job) = match order {
                Order::Fetch { conn, index } => (conn, Job::Fetch(index)),
                Order::Cancel { conn, index } => (conn, Job::Cancel(index)),
            };
            if let Some(jobs) = &self.links[conn].jobs {
                jobs.send(job);
            }
        }
        for (link, conn) in self.links.iter_mut().zip(self.plan.conns()) {
            if !conn.is_open() {
                link.jobs = None;
            }
        }
    }

    /// Says what a connection's depth came to, for `RUST_LOG=swarmcache=debug`.
    fn log_pace(&self, conn: usize) {
        let c = &self.plan.conns()[conn];
        log::debug!(
            "connection {conn} to {}: depth {}, round trip {:?}, {:.1} MB/s",
            self.plan.sources()[c.source].addr,
            c.pace().depth(),
            c.pace().srtt(),
            c.pace().rate().unwrap_or(0.0) / 1e6
        );
    }

    fn spawn(&mut self, conn: usize) {
        let socket = Socket::default();
        let events = self.events_tx.clone();
        let (jobs_tx, jobs_rx) = match worker::jobs() {
            Ok(pair) => pair,
            Err(e) => {
                // Out of descriptors, most likely: the connection ends before it starts,
                // and the plan treats it like any failed one.
                let end = End::Local(format!("making a wake-up socket for a connection: {e}"));
                let _ = events.send(Event::Worker(Report::Closed { conn, end }));
                self.links.push(Link {
                    jobs: None,
                    socket,
                    handle: None,
                });
                return;
            }
        };
        let source = self.plan.conns()[conn].source;
        if self.plan.sources()[source].web {
            let url = &self.plan.sources()[source].addr;
            let agent = match self.web_agent(url.starts_with("https://")) {
                Ok(agent) => agent,
                Err(error) => {
                    let end = End::Unfit(error);
                    let _ = events.send(Event::Worker(Report::Closed { conn, end }));
                    self.links.push(Link {
                        jobs: None,
                        socket,
                        handle: None,
                    });
                    return;
                }
            };
            let seed = WebSeed {
                conn,
                url: self.plan.sources()[source].addr.clone(),
                agent,
                manifest: Arc::clone(&self.manifest),
                data: self.partial.data(),
                chunk_timeout: self.config.chunk_timeout,
                limiter: self.limiter.clone(),
                tell: Box::new(move |report| {
                    let _ = events.send(Event::Worker(report));
                }),
            };
            let handle = std::thread::spawn(move || seed.run(jobs_rx));
            self.links.push(Link {
                jobs: Some(jobs_tx),
                socket,
                handle: Some(handle),
            });
            return;
        }
        let worker = Worker {
            socket: Arc::clone(&socket),
            ticket: Arc::clone(&self.watch.ticket),
            conn,
            addr: self.plan.sources()[source].addr.clone(),
            asset: self.manifest.id(),
            manifest: Arc::clone(&self.manifest),
            data: self.partial.data(),
            chunk_timeout: self.config.chunk_timeout,
            // A peer that has not shaken hands in 2 s is of no use; the origin, the last
            // resort, is given the chunk timeout.
            handshake_timeout: if self.plan.sources()[source].origin {
                self.config.chunk_timeout
            } else {
                worker::PEER_HANDSHAKE_TIMEOUT.min(self.config.chunk_timeout)
            },
            limiter: self.limiter.clone(),
            tell: Box::new(move |report| {
                let _ = events.send(Event::Worker(report));
            }),
        };
        let handle = std::thread::spawn(move || worker.run(jobs_rx));
        self.links.push(Link {
            jobs: Some(jobs_tx),
            socket,
            handle: Some(handle),
        });
    }

    /// The HTTP client of the origin URLs, made at the first one. Its TLS setup is made
    /// then too; when that fails (no CA found, a bad `--ca-cert`), `https://` URLs cannot be
    /// used and say why, while `http://` ones still can.
    fn web_agent(&mut self, https: bool) -> Result<ureq::Agent, String> {
        let (agent, tls_error) = self.web_agent.get_or_insert_with(|| {
            let tls = web_seed::tls_config(self.config.tracker_tls.ca_cert.as_deref());
            let agent = web_seed::agent(tls.as_ref().ok(), self.config.chunk_timeout);
            (agent, tls.err().map(|e| format!("{e:#}")))
        });
        match tls_error {
            Some(error) if https => Err(error.clone()),
            _ => Ok(agent.clone()),
        }
    }

    /// Ends every connection. Those still waiting for a reply (a hedged request, a stalled
    /// source) or for a handshake are shut down rather than left to time out: the download
    /// is over.
    /// A worker still connecting has no socket to shut down: it is left to end by its own
    /// deadline (2 s for a peer) rather than joined, since it has written nothing and will
    /// write nothing; an address that drops connects must not hold up the end of a `get`.
    fn stop_all(&mut self) {
        for conn in 0..self.plan.conns().len() {
            if self.plan.conns()[conn].is_open() {
                self.log_pace(conn);
            }
        }
        self.plan.close_all();
        for (link, conn) in self.links.iter_mut().zip(self.plan.conns()) {
            link.jobs = None;
            let socket = link.socket.locked();
            match socket.as_ref() {
                Some(socket) if conn.has_in_flight() || !conn.is_ready() => {
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                }
                Some(_) => {}
                None if !conn.is_ready() => drop(link.handle.take()),
                None => {}
            }
        }
        for link in &mut self.links {
            if let Some(handle) = link.handle.take() {
                let _ = handle.join();
            }
        }
    }
}
