//! Downloads: local store first, then the peers the tracker names, then the origin.
//!
//! One scheduler thread (`scheduler`) owns the download state, kept in a pure chunk
//! book (`plan`: which chunk is missing, in flight on which connection, or done, and
//! which to ask of whom next). Each connection is a worker thread (`worker`) that keeps
//! its bandwidth-delay product of requests in flight (`depth`, from [`PIPELINE_DEPTH`]
//! up), verifies every chunk it receives
//! against the manifest, writes it to the store at its offset, and reports the outcome
//! back on one channel. A source (`sources`) that sends a chunk failing its hash loses its
//! chunks to other sources and is not used again in this download; a source that is busy,
//! times out, drops or stalls loses its chunks too but is tried again after a jittered
//! pause that grows while it keeps failing. The download gives up only when no source
//! delivered a chunk for the stall timeout (`--stall-timeout`, 60 s), naming each source,
//! its tries and its last failure; a tracker it cannot reach for what it cannot start
//! without (manifest, key, first sources) is asked again for as long. Progress is recorded
//! every second, so a killed download resumes where it stopped.
//!
//! Peers may lie (SECURITY.md, "Clients among lying peers"): a peer holds only what its
//! own `Have` says, whatever the tracker's `complete`; it has 2 s to shake hands; at most 8
//! peer connections are open and 8 new peers are taken from an answer; a peer far slower
//! than the other sources is counted out and its chunks are also asked of a faster one;
//! every 5 s the peer that delivered least gives its slot to a peer waiting for one.
//!
//! While it downloads, the client serves what it has through an embedded server
//! (`serving`), whose uploads yield when its own download's round trip shows them queueing
//! ahead of its requests or its stream runs short (`uplink`), and announces its progress
//! as often as the tracker asks (`announce`: twice
//! a second in a small swarm, less often in a big one); the tracker answers with new peers
//! and the share of chunks this client should take from the origin.
//! [`stream`](mod@stream) writes the asset out in order while it downloads; `summary` reports.
//! After the download its server may serve on while peers still fetch from it, announced
//! as a seeder (`linger`, [`Seeding::linger`]), so the last downloaders keep their peers.
//!
//! The data path reads one way: socket → [`crate::wire`] (in the worker) → `plan` →
//! [`crate::store`]; the plan imports neither the scheduler, the workers nor sockets.

mod announce;
mod config;
mod depth;
pub mod feed;
mod headroom;
mod linger;
mod output;
mod plan;
mod ranges;
mod scheduler;
mod serving;
mod sources;
pub mod stream;
mod summary;
mod uplink;
mod web_seed;
mod worker;

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam_channel::unbounded;

use crate::bitfield::Bitfield;
use crate::crypt::ContentKey;
use crate::failure::Failure;
use crate::manifest::{AssetId, FileEntry, Manifest};
use crate::store::cache;
use crate::store::{InUse, Partial, Store};
use crate::tracker_client::{HttpStatus, TrackerClient};

use crate::announce::Departure;
use crate::bitfield::{Live, LiveHave};
use announce::{Announce, Announcer};
use output::{Placement, Replace, Target, TreePlacement};
use scheduler::{Event, Scheduler, Watch};
use serving::Serving;
use sources::Source;
use stream::{RanDry, Stream};

pub use config::{
    DEFAULT_CHUNK_TIMEOUT, DEFAULT_SOURCE_WAIT, DEFAULT_STALL_TIMEOUT, DEFAULT_WORKERS, GetConfig,
    Progress,
};
pub use linger::{DEFAULT_LINGER, LINGER_IDLE, LingerEnd};
pub use plan::PIPELINE_DEPTH;
pub use stream::{DEFAULT_WINDOW, StreamStats};
pub use summary::{SourceSummary, Summary};

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

/// How often a wait looks at `interrupted`: a Ctrl-C is seen within 50 ms.
const INTERRUPT_POLL: Duration = Duration::from_millis(50);

/// Sleeps until `deadline`, or until `interrupted()` says to stop.
fn sleep_until(deadline: Instant, interrupted: impl Fn() -> bool) {
    while Instant::now() < deadline && !interrupted() {
        std::thread::sleep(INTERRUPT_POLL.min(deadline.saturating_duration_since(Instant::now())));
    }
}

/// The outcome of [`get`]: the summary, and the embedded server when the asset is to be
/// seeded on after the download, or may linger (see [`GetConfig::linger`]).
pub struct Got {
    /// What the download did.
    pub summary: Summary,
    /// Keeps serving the asset, for [`Seeding::run`] or [`Seeding::linger`] to finish
    /// (dropped, it leaves the swarm at once).
    pub seeding: Option<Seeding>,
}

/// What [`Seeding::linger`] did.
#[derive(Debug, Clone, Copy)]
pub struct Lingered {
    /// How long it served on.
    pub time: Duration,
    /// Bytes uploaded meanwhile.
    pub uploaded: u64,
    /// Why it stopped; `None`: interrupted.
    pub left: Option<LingerEnd>,
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
        sleep_until(Instant::now() + duration, interrupted);
        self.leave();
    }

    /// Leaves the swarm: dropping the announcer says "stopped"; dropping the server shuts
    /// it down.
    fn leave(self) {
        drop(self.announcer);
        drop(self.serving);
    }

    /// Serves while peers still fetch: until no upload has been active for
    /// [`LINGER_IDLE`], `bound` has passed, or [`interrupt`]; then leaves the swarm. Reads
    /// the server's own upload gauge (bytes written to its sockets), the one the headroom
    /// learns the uplink from.
    pub fn linger(self, bound: Duration) -> Lingered {
        let gauge = &self.serving.gauge;
        let started = Instant::now();
        let first = gauge.read().sent;
        let mut linger = linger::Linger::new(bound, first, started);
        let left = loop {
            if interrupted() {
                break None;
            }
            if let Some(left) = linger.observe(gauge.read().sent, Instant::now()) {
                break Some(left);
            }
            std::thread::sleep(INTERRUPT_POLL);
        };
        let lingered = Lingered {
            time: started.elapsed(),
            uploaded: gauge.read().sent.saturating_sub(first),
            left,
        };
        self.leave();
        lingered
    }
}

/// Fetches an asset into the store and places it at the output path. Unless
/// `config.serve` is `None`, the asset is served to other peers while it downloads; with
/// `seed` the server is handed back, still serving, for [`Seeding::run`], and so it is
/// after a download when `config.linger` is not zero, for [`Seeding::linger`].
pub fn get(config: &GetConfig, seed: bool) -> Result<Got> {
    fetch(config, seed, None, None)
}

/// Like [`get`], but writes the asset to `out` in order while it downloads instead of
/// placing a file: each chunk as soon as it and those before it are verified. The next
/// `config.window` chunks are fetched first; a late one is also asked of another source.
/// The asset still lands in the store, so memory stays bounded however slowly `out` reads.
pub fn stream(config: &GetConfig, seed: bool, out: &mut (dyn Write + Send)) -> Result<Got> {
    fetch(config, seed, Some(out), None)
}

/// Opens `config.asset` for readers at any offset (a gateway): looks up its manifest and
/// key, then runs the download in a thread for as long as the returned [`feed::Feed`] is used,
/// reader windows first; once complete, the asset is seeded on until `stop` says to stop.
/// Returns once the manifest is known; the download's sources are found in the thread.
pub fn open_feed(
    config: GetConfig,
    stop: impl Fn() -> bool + Send + 'static,
) -> Result<Arc<feed::Feed>> {
    let store = Store::open(&config.store)?;
    let tracker = TrackerClient::optional(config.tracker.as_deref(), &config.tracker_tls)?
        .map(|t| t.with_token(config.token.clone()));
    let tracker = tracker.map(|t| t.patient(config.stall_timeout, interrupted));
    let manifest = Arc::new(match store.manifest(&config.asset)? {
        Some(m) => m,
        None => match &tracker {
            Some(t) => t.manifest(&config.asset)?,
            None => bail!(
                "asset {} is not in the store {} and no --tracker was given",
                config.asset,
                config.store.display()
            ),
        },
    });
    let key = content_key(&store, tracker.as_ref(), &config.asset)?;
    let feed = Arc::new(feed::Feed::new(manifest, key));
    let shared = Arc::clone(&feed);
    std::thread::Builder::new()
        .name(format!("feed {}", config.asset))
        .spawn(move || {
            let got = fetch(&config, true, None, Some(&shared));
            match got {
                Ok(got) => {
                    shared.ended(None);
                    // Seeds what it holds until the gateway stops.
                    let seeding = got.seeding;
                    while !stop() && !interrupted() {
                        std::thread::sleep(INTERRUPT_POLL);
                    }
                    drop(seeding);
                }
                Err(e) => {
                    log::warn!("downloading {} for the gateway: {e:#}", config.asset);
                    shared.ended(Some(format!("{e:#}")));
                }
            }
            shared.finish();
        })
        .context("starting a download thread")?;
    Ok(feed)
}

fn fetch(
    config: &GetConfig,
    seed: bool,
    out: Option<&mut (dyn Write + Send)>,
    feed: Option<&Arc<feed::Feed>>,
) -> Result<Got> {
    let started = Instant::now();
    let store = Store::open(&config.store)?;
    // Marked in use before anything is looked up, so that no eviction can take the asset
    // between our look and our use.
    let in_use = store.hold(&config.asset)?;
    let tracker = TrackerClient::optional(config.tracker.as_deref(), &config.tracker_tls)?
        .map(|t| t.with_token(config.token.clone()));
    if let Some(tracker) = &tracker {
        tracker.check_token_transport()?;
    }
    // What the download cannot start without (manifest, key, first sources) is asked with
    // patience: a tracker not reachable for a moment is asked again within the stall
    // timeout. The announces while it runs are not: the next one comes soon anyway.
    let patient = tracker
        .as_ref()
        .map(|t| t.patient(config.stall_timeout, interrupted));
    // The key of an encrypted asset, from the tracker each time (never kept on this host):
    // asked before the output is opened or a chunk fetched, so a client the tracker gives
    // no key fails at once, having written nothing. It is asked while the manifest is
    // fetched: each is a round trip to the tracker and neither needs the other (at a
    // 50 ms RTT the two in turn cost 100 ms of every get's start, curl's whole wait for its
    // first byte twice). A failed manifest is still the error told first.
    let (manifest, key) = std::thread::scope(|scope| {
        let key = scope.spawn(|| content_key(&store, patient.as_ref(), &config.asset));
        let manifest = match store.manifest(&config.asset) {
            Ok(Some(m)) => Ok(m),
            Ok(None) => match &patient {
                Some(t) => t.manifest(&config.asset),
                None => Err(anyhow::anyhow!(
                    "asset {} is not in the store {} and no --tracker was given",
                    config.asset,
                    config.store.display()
                )),
            },
            Err(e) => Err(e),
        };
        let key = key
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (manifest, key)
    });
    // Shared with the scheduler's workers: its chunk hashes are copied nowhere.
    let manifest = Arc::new(manifest?);
    let key = key?;
    // `--file`: the listed files asked for, and the chunks nobody needs for them.
    let selected = select_files(config, &manifest)?;
    let skipped = selected.as_ref().map(|files| {
        let mut skipped = Bitfield::full(manifest.chunk_count());
        for f in files {
            for i in manifest.file_chunks(f) {
                skipped.unset(i);
            }
        }
        skipped
    });
    // The output is opened before anything is fetched: a directory that is missing or
    // not writable fails the get now, not after the download.
    let mut sink: Option<Box<dyn Write + Send + '_>> = None;
    let mut placement: Option<Placement> = None;
    let mut tree: Option<TreePlacement> = None;
    let output = match out {
        Some(_) if selected.is_some() => bail!(
            "--file writes files into a directory, and --stream writes the whole asset in order; use one of them"
        ),
        Some(out) => {
            sink = Some(Box::new(out));
            None
        }
        // A feed's readers read the store.
        None if feed.is_some() => None,
        None if manifest.is_directory() => {
            let (path, _) = output_path(config, &manifest)?;
            tree = Some(TreePlacement::create(&path, config.replace)?);
            Some(path)
        }
        None => {
            let (path, replace) = output_path(config, &manifest)?;
            match output::open(&path, replace)? {
                Target::Sink(writer) => sink = Some(writer),
                Target::File(file) => placement = Some(file),
            }
            Some(path)
        }
    };
    // A reader waits on a sink, so the chunks it needs next go first.
    let reader_waits = sink.is_some() || feed.is_some();
    if let Some(limit) = config.cache_size {
        let report = cache::make_room_for(&store, limit, &manifest)?;
        if let Some(warning) = &report.warning {
            log::warn!("warning: {warning}");
        }
    }
    let partial = open_for_writing(&store, &manifest)?;
    let complete = partial.is_none();
    let initial = partial.as_ref().map_or_else(
        || Bitfield::full(manifest.chunk_count()),
        |p| p.have().clone(),
    );
    let from_cache: u64 = initial.ones().map(|i| manifest.chunk_len(i) as u64).sum();
    // Everything `--file` needs may be here already (from an earlier `get`).
    let needed_held = skipped.as_ref().is_some_and(|skipped| {
        (0..manifest.chunk_count()).all(|i| skipped.get(i) || initial.get(i))
    });
    let live: LiveHave = Live::new(initial.clone());
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
    // Only a download is lingered after: peers fetch from a `get` they found in the swarm
    // while it downloaded, and a feed seeds on anyway.
    let mut lingers = false;
    let mut announcer = None;
    // A file being placed is filled while the download runs, overlapped with the network
    // (see `output`); once complete in the store, it is copied in one go below.
    let mut pieces = placement
        .as_ref()
        .filter(|_| partial.is_some())
        .map(Placement::writer);
    let out: Option<&mut (dyn Write + Send)> = match (&mut sink, &mut pieces) {
        (Some(sink), _) => Some(sink.as_mut()),
        (None, Some(pieces)) => Some(pieces),
        (None, None) => None,
    };
    // Chunks verified during the download, for the stream.
    let (done_tx, done_rx) = unbounded();
    let streaming = (out.is_some() || feed.is_some()).then_some(done_tx);
    let scheduler = match &partial {
        None => None,
        Some(_) if needed_held => None,
        Some(partial) => {
            let announce = announce.clone().with_context(|| {
                format!(
                    "asset {} is only partly in the store; give --tracker to fetch the rest",
                    config.asset
                )
            })?;
            let first =
                announce.first_sources(config.source_wait, config.stall_timeout, interrupted)?;
            // From here on, every way out of this function leaves the swarm again.
            let departure = Departure::new(announce.clone());
            if interrupted() {
                bail!("interrupted while waiting for a source; run the same command again");
            }
            let count = manifest.chunk_count();
            let mut sources: Vec<Source> = first
                .peers
                .iter()
                .chain(&first.origins)
                .map(Source::from_info)
                .collect();
            sources.extend(first.web_origins().map(Source::web));
            if sources.is_empty() {
                return Err(Failure::NoSource.error(format!(
                    "the tracker knows no peer or origin for {}; start a peer_server that holds it, or list an origin URL (peer_client origin add)",
                    config.asset
                )));
            }
            let origin_share = first.share(count);
            let scheduler = Scheduler::new(
                config,
                Arc::clone(&manifest),
                partial,
                sources,
                origin_share,
                Watch {
                    started,
                    live: Arc::clone(&live),
                    complaints: announce.reports.clone(),
                    ticket: Arc::clone(&announce.ticket),
                    streaming,
                    reader_waits,
                    yielding: serving.as_ref().map(|s| s.yielding(config.asset)),
                    skipped: skipped.clone(),
                    feed: feed.cloned(),
                },
            );
            let events = scheduler.events();
            lingers = !config.linger.is_zero() && feed.is_none();
            announcer = Some(announce::downloading(
                departure,
                Arc::new(move |answer| {
                    let _ = events.send(Event::Swarm(answer));
                }),
                first.next_announce(),
            ));
            Some(scheduler)
        }
    };
    let data = match (&partial, out.is_some() || feed.is_some()) {
        (Some(partial), _) => Some(partial.data()),
        (None, true) => {
            let path = store.data_path(&config.asset);
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            Some(Arc::new(file))
        }
        (None, false) => None,
    };
    let output_failed = AtomicBool::new(false);
    // A feed learns what there is, and where, before the scheduler runs; it ends with the
    // download, when the scheduler drops its sender of verified chunks.
    let mut done_rx = Some(done_rx);
    let mut data = data;
    let (downloaded, streamed) = std::thread::scope(|scope| {
        if let Some(feed) = feed {
            let started = feed::Started {
                data: Arc::clone(data.as_ref().expect("a feed's data is opened")),
                have: initial.clone(),
                events: scheduler.as_ref().map(Scheduler::events),
                done: scheduler.as_ref().and(done_rx.take()),
                uploaded: serving.as_ref().map(|s| s.uploaded.clone()),
            };
            let feed = Arc::clone(feed);
            scope.spawn(move || feed.started(started));
            data = None;
        }
        let done_rx = done_rx.take();
        let streamer = out.zip(data).map(|(out, data)| {
            let events = scheduler.as_ref().map(Scheduler::events);
            let stream = Stream {
                manifest: &manifest,
                data,
                have: initial.clone(),
                done: done_rx.expect("the stream's channel"),
                started,
                key,
            };
            let output_failed = &output_failed;
            scope.spawn(move || {
                let tell = |event: Event| {
                    if let Some(events) = &events {
                        let _ = events.send(event);
                    }
                };
                let position = |next| {
                    if reader_waits {
                        tell(Event::Position(next));
                    }
                };
                let result = stream.run(out, position, interrupted);
                if result
                    .as_ref()
                    .is_err_and(|e| e.downcast_ref::<RanDry>().is_none())
                {
                    output_failed.store(true, Ordering::SeqCst);
                    tell(Event::OutputFailed);
                }
                result
            })
        });
        let downloaded = scheduler.map(|s| s.run(interrupted)).transpose();
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
    // A `--file` get leaves the rest of the asset to fetch: its record claims only what
    // it holds, and the asset is sealed only when that is every chunk.
    let mut fetched = Bitfield::full(manifest.chunk_count());
    if let Some(skipped) = &skipped {
        fetched.remove_all(skipped);
        fetched.union_with(&initial);
    }
    let data_file = partial.as_ref().map(Partial::data);
    if let Some(partial) = partial {
        if skipped.is_none() || fetched.is_full() {
            partial.finish()?;
        } else {
            partial.checkpoint(&fetched)?;
        }
    }
    if let Some(tree) = tree {
        let path = tree.path().display().to_string();
        let data = match data_file {
            Some(data) => data,
            None => {
                let at = store.data_path(&config.asset);
                Arc::new(File::open(&at).with_context(|| format!("opening {}", at.display()))?)
            }
        };
        let files: Vec<&FileEntry> = match &selected {
            Some(files) => files.clone(),
            None => manifest.files().iter().collect(),
        };
        tree.write(
            &files,
            &data,
            key.as_ref().map(|k| (k, manifest.chunk_size)),
        )
        .and_then(|()| tree.finish())
        .with_context(|| format!("writing output {path}"))?;
    }
    if let Some(placement) = placement {
        let path = placement.path().display().to_string();
        if complete {
            placement
                .copy_from(
                    &store.data_path(&config.asset),
                    key.as_ref().map(|k| (k, manifest.chunk_size)),
                )
                .with_context(|| format!("writing output {path}"))?;
        }
        placement
            .finish()
            .with_context(|| format!("writing output {path}"))?;
    }
    // What a stream into a file saw is no stream's.
    let streamed = if reader_waits { streamed } else { None };
    let summary = Summary {
        output,
        ..Summary::new(
            &config.asset,
            &manifest,
            from_cache,
            downloaded.unwrap_or_default(),
            streamed.unwrap_or_default(),
            serving
                .as_ref()
                .map_or(0, |s| s.uploaded.get(&config.asset)),
            started.elapsed(),
        )
    };
    // Without seeding or lingering, `announcer` and `serving` are dropped here: the client
    // says "stopped" to the tracker and its server shuts down.
    let seeding = match serving {
        Some(serving) if seed || lingers => {
            let announcer = match announcer {
                // The peer stays in the swarm across the switch.
                Some(announcer) => Some(announce::seeding(announcer.halt())),
                None => announce.map(|a| announce::seeding(Departure::new(a))),
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

/// The content key of `id` when it is encrypted, `None` when it is plain. The tracker says
/// which (and gives the key to a holder of the fetch right over TLS or on its host); the
/// store's mark of an encrypted asset keeps a `get` from handing out ciphertext when the
/// tracker is not given, cannot be reached, or forgot the key. A tracker that refuses the
/// key fails the `get` with its reason.
fn content_key(
    store: &Store,
    tracker: Option<&TrackerClient>,
    id: &AssetId,
) -> Result<Option<ContentKey>> {
    let marked = store.is_encrypted(id);
    let Some(tracker) = tracker else {
        if marked {
            bail!(
                "asset {id} is encrypted and its key comes only from the tracker, which gives it to holders of the fetch right: give --tracker (its https:// URL, or run on its host)"
            );
        }
        return Ok(None);
    };
    let no_key = |e: anyhow::Error| {
        e.context(format!(
            "the tracker {} gave no key for the encrypted asset {id}, so it cannot be written out; the store keeps only its ciphertext",
            tracker.url()
        ))
    };
    match tracker.content_key(id) {
        Ok(Some(key)) => {
            // Marked before a byte is fetched: a store never holds unmarked ciphertext.
            if !marked {
                store.mark_encrypted(id)?;
            }
            Ok(Some(key))
        }
        Ok(None) if marked => Err(no_key(anyhow::anyhow!(
            "it says the asset is not encrypted, but the store {} holds it as ciphertext; remove it from the store (peer_client cache rm {id}) if it was seeded plain",
            store.root().display()
        ))),
        Ok(None) => Ok(None),
        // A refusal names its reason (no fetch right; a key asked for in clear).
        Err(e)
            if e.downcast_ref::<HttpStatus>()
                .is_some_and(|s| matches!(s.status, 401 | 403)) =>
        {
            Err(e.context(format!("getting the content key of {id}")))
        }
        // A tracker that knows no such endpoint or asset, or cannot be reached: a plain
        // asset in the store is still the user's to read, as before keys existed.
        Err(_) if !marked => Ok(None),
        Err(e) => Err(no_key(e)),
    }
}

/// How long a `get` waits between two looks at an asset another process is writing: short
/// next to any download, long enough that waiting costs no CPU, and a bound on how late
/// Ctrl-C is noticed.
const WRITER_POLL: Duration = Duration::from_millis(100);

/// Opens the asset for writing, or `None` when the store holds it complete. While another
/// process writes it, waits (saying so once) and then takes what that process left: the
/// whole asset, or, if it stopped, the rest to fetch. Nothing is downloaded twice.
fn open_for_writing(store: &Store, manifest: &Manifest) -> Result<Option<Partial>> {
    let id = manifest.id();
    let mut told = false;
    loop {
        if store.is_complete(&id, manifest)? {
            return Ok(None);
        }
        if let Some(partial) = store.try_begin(manifest)? {
            // The other process may have completed it between the two looks.
            if partial.have().is_full() && store.is_complete(&id, manifest)? {
                return Ok(None);
            }
            return Ok(Some(partial));
        }
        if !told {
            log::info!(
                "waiting for another process that is downloading {id} into store {}",
                store.root().display()
            );
            told = true;
        }
        if interrupted() {
            bail!("interrupted while waiting for another process downloading {id}");
        }
        std::thread::sleep(WRITER_POLL);
    }
}

/// The files `--file` names, each looked up in the manifest's list; `None` without
/// `--file`. A path the asset does not list is refused before anything is fetched.
fn select_files<'m>(
    config: &GetConfig,
    manifest: &'m Manifest,
) -> Result<Option<Vec<&'m FileEntry>>> {
    if config.files.is_empty() {
        return Ok(None);
    }
    if !manifest.is_directory() {
        bail!(
            "--file picks files of a directory asset, and {} is a single file; drop --file",
            config.asset
        );
    }
    let mut picked: Vec<&FileEntry> = Vec::new();
    for path in &config.files {
        let want = path.trim_start_matches("./");
        let file = manifest.file(want).with_context(|| {
            format!(
                "--file {path:?}: asset {} lists no such file ({} files; `curl TRACKER/assets/{}` shows the list)",
                config.asset,
                manifest.files().len(),
                config.asset
            )
        })?;
        if !picked.contains(&file) {
            picked.push(file);
        }
    }
    picked.sort_by_key(|f| f.offset);
    Ok(Some(picked))
}

/// Where the output goes, and whether it may replace a file: as given with `-o` (which
/// may), or the asset's name in the current directory. The name comes from whoever
/// published the manifest: it may not replace a file nobody named.
fn output_path(config: &GetConfig, manifest: &Manifest) -> Result<(PathBuf, Replace)> {
    if let Some(path) = &config.output {
        return Ok((path.clone(), Replace::Yes));
    }
    let path = PathBuf::from(&manifest.name);
    if path.exists() || manifest.name.starts_with('.') {
        bail!(
            "refusing to write {:?} in the current directory without being asked; pass -o {:?} to do so",
            manifest.name,
            manifest.name
        );
    }
    Ok((path, Replace::No))
}
