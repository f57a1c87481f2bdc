//! A download that runs for as long as a gateway serves its asset, read at any offset by
//! any number of readers: each reader's position is a stream window the scheduler fetches
//! first (nearest first), and a read blocks only until the chunks it needs are verified.
//!
//! The download itself is `client::fetch` (the same sources, store, serving to peers,
//! announcing); this module is what sits between it and the readers: the chunks verified
//! so far, the readers' positions, and the live figures a gateway shows.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam_channel::{Receiver, Sender};

use crate::bitfield::Bitfield;
use crate::crypt::{self, ContentKey};
use crate::manifest::Manifest;
use crate::server::UploadCounter;
use crate::sync::LockExt;

use super::scheduler::Event;

/// How long a read waits for one chunk before it gives up: the download's own stall
/// timeout ends a download that gets nothing for 60 s, so this only bounds a reader whose
/// chunk never comes for another reason (a source that keeps it busy with others).
const CHUNK_WAIT: Duration = Duration::from_secs(120);
/// How often a waiting reader looks at whether the download ended or was interrupted.
const POLL: Duration = Duration::from_millis(100);
/// Readers followed at once; past this, the oldest positions are forgotten (they still
/// read, without a window of their own).
const MAX_READERS: usize = 64;

/// Live figures of a feed, read by a gateway's `/stats`.
#[derive(Default)]
pub struct FeedStats {
    /// Bytes verified from peers since the gateway started the download.
    pub bytes_peers: AtomicU64,
    /// Bytes verified from the origin.
    pub bytes_origin: AtomicU64,
    /// Bytes in the store before the download started.
    pub bytes_cache: AtomicU64,
    /// Chunks verified from the network.
    pub chunks_fetched: AtomicU64,
    /// Peers connected right now.
    pub peers: AtomicU64,
    /// Times a reader, once started, had to wait for a chunk.
    pub stalls: AtomicU64,
    /// Bytes handed to readers.
    pub bytes_read: AtomicU64,
}

impl FeedStats {
    /// Counts a chunk of `len` bytes verified from an origin or a peer.
    pub(crate) fn count(&self, origin: bool, len: u64) {
        let bytes = if origin {
            &self.bytes_origin
        } else {
            &self.bytes_peers
        };
        bytes.fetch_add(len, Ordering::Relaxed);
        self.chunks_fetched.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the download hands the feed once it runs.
pub(crate) struct Started {
    pub(crate) data: Arc<File>,
    pub(crate) have: Bitfield,
    /// Where reader positions go; `None` when the store held the whole asset.
    pub(crate) events: Option<Sender<Event>>,
    /// Chunks verified from now on; closed when the download ends.
    pub(crate) done: Option<Receiver<u32>>,
    pub(crate) uploaded: Option<UploadCounter>,
}

struct State {
    data: Option<Arc<File>>,
    have: Bitfield,
    events: Option<Sender<Event>>,
    /// Why the download ended without the whole asset (readers of missing chunks fail).
    ended: Option<String>,
    /// Each reader's next chunk, and when it last moved: the most recent goes first.
    readers: BTreeMap<u64, (u32, Instant)>,
    next_reader: u64,
    uploaded: Option<UploadCounter>,
    /// Each player's chunk ranges it will read next (see [`Feed::set_ahead`]), and until
    /// when they hold.
    ahead: BTreeMap<String, (Vec<Range<u32>>, Instant)>,
}

/// One asset as a gateway reads it.
pub struct Feed {
    manifest: Arc<Manifest>,
    key: Option<ContentKey>,
    state: Mutex<State>,
    changed: Condvar,
    /// The live figures.
    pub stats: FeedStats,
    /// Set once the download and seeding are over and the swarm was told.
    finished: std::sync::atomic::AtomicBool,
}

/// A reader's place in a [`Feed`]; its window goes when it is dropped.
pub struct Reader {
    feed: Arc<Feed>,
    id: u64,
    started: bool,
}

impl Feed {
    pub(crate) fn new(manifest: Arc<Manifest>, key: Option<ContentKey>) -> Feed {
        Feed {
            manifest,
            key,
            state: Mutex::new(State {
                data: None,
                have: Bitfield::new(0),
                events: None,
                ended: None,
                readers: BTreeMap::new(),
                next_reader: 0,
                uploaded: None,
                ahead: BTreeMap::new(),
            }),
            changed: Condvar::new(),
            stats: FeedStats::default(),
            finished: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The asset's manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// Called by the download once it runs; forwards verified chunks to the readers until
    /// the download ends (on the calling thread: spawn it).
    pub(crate) fn started(&self, started: Started) {
        let from_cache: u64 = started
            .have
            .ones()
            .map(|i| self.manifest.chunk_len(i) as u64)
            .sum();
        self.stats.bytes_cache.store(from_cache, Ordering::Relaxed);
        {
            let mut state = self.state.locked();
            state.data = Some(started.data);
            state.have = started.have;
            state.events = started.events;
            state.uploaded = started.uploaded;
            self.tell_positions(&state);
            self.tell_ahead(&state);
        }
        self.changed.notify_all();
        if let Some(done) = started.done {
            for index in done {
                self.state.locked().have.set(index);
                self.changed.notify_all();
            }
        }
    }

    /// Called when the download ended: successfully (`None`) or not.
    pub(crate) fn ended(&self, error: Option<String>) {
        self.stats.peers.store(0, Ordering::Relaxed);
        let mut state = self.state.locked();
        state.events = None;
        if state.ended.is_none() {
            state.ended =
                error.or_else(|| (!state.have.is_full()).then(|| "the download ended".to_string()));
        }
        drop(state);
        self.changed.notify_all();
    }

    /// Called when the download thread is done: it has left the swarm.
    pub(crate) fn finish(&self) {
        self.finished.store(true, Ordering::SeqCst);
    }

    /// Whether the download thread is done (see [`super::open_feed`]).
    pub fn is_finished(&self) -> bool {
        self.finished.load(Ordering::SeqCst)
    }

    /// Whether the download ended short of the whole asset, and why.
    pub fn failed(&self) -> Option<String> {
        let state = self.state.locked();
        state.ended.clone().filter(|_| !state.have.is_full())
    }

    /// Chunks verified (in the store) right now.
    pub fn chunks_have(&self) -> u32 {
        self.state.locked().have.count()
    }

    /// Bytes this host has uploaded of the asset to peers.
    pub fn uploaded(&self) -> u64 {
        let state = self.state.locked();
        let id = self.manifest.id();
        state.uploaded.as_ref().map_or(0, |u| u.get(&id))
    }

    /// Readers at their positions right now.
    pub fn readers(&self) -> usize {
        self.state.locked().readers.len()
    }

    /// A new reader, with no window until it reads.
    pub fn reader(self: &Arc<Self>) -> Reader {
        let mut state = self.state.locked();
        let id = state.next_reader;
        state.next_reader += 1;
        Reader {
            feed: Arc::clone(self),
            id,
            started: false,
        }
    }

    /// The player named `player` (a gateway's client and the playlist it plays) will read
    /// these chunk ranges next, in this order: they are fetched after every reader's
    /// window, for `hold` (then the player is taken to have left). Replaces the player's
    /// earlier ranges (a seek drops them); empty `ranges` forget the player.
    pub fn set_ahead(&self, player: &str, ranges: Vec<Range<u32>>, hold: Duration) {
        let mut state = self.state.locked();
        let now = Instant::now();
        state.ahead.retain(|_, (_, until)| *until > now);
        if ranges.is_empty() {
            state.ahead.remove(player);
        } else {
            if state.ahead.len() >= MAX_READERS && !state.ahead.contains_key(player) {
                let oldest = state
                    .ahead
                    .iter()
                    .min_by_key(|(_, (_, until))| *until)
                    .map(|(name, _)| name.clone());
                if let Some(oldest) = oldest {
                    state.ahead.remove(&oldest);
                }
            }
            state.ahead.insert(player.to_string(), (ranges, now + hold));
        }
        self.tell_ahead(&state);
    }

    /// Sends the players' ranges ahead to the scheduler, the most recent player's first,
    /// holding until the last one's expire.
    fn tell_ahead(&self, state: &State) {
        let Some(events) = &state.events else {
            return;
        };
        let mut players: Vec<&(Vec<Range<u32>>, Instant)> = state.ahead.values().collect();
        players.sort_by_key(|p| std::cmp::Reverse(p.1));
        let until = players.first().map_or_else(Instant::now, |p| p.1);
        let ranges = players.iter().flat_map(|p| p.0.iter().cloned()).collect();
        let _ = events.send(Event::Ahead(ranges, until));
    }

    /// Sends the readers' positions to the scheduler, most recently moved first.
    fn tell_positions(&self, state: &State) {
        let Some(events) = &state.events else {
            return;
        };
        let mut readers: Vec<(u32, Instant)> = state.readers.values().copied().collect();
        readers.sort_by_key(|r| std::cmp::Reverse(r.1));
        let positions = readers.into_iter().map(|(pos, _)| pos).collect();
        let _ = events.send(Event::Readers(positions));
    }
}

impl Reader {
    /// Waits until the chunk holding byte `offset` is verified (its window moved there),
    /// so that a request the download cannot serve is answered with an error before any
    /// header goes out.
    pub fn wait_first(&mut self, offset: u64, cancelled: &dyn Fn() -> bool) -> Result<()> {
        let chunk_size = self.feed.manifest.chunk_size.max(1) as u64;
        let index = u32::try_from(offset / chunk_size).context("offset past the chunk count")?;
        self.wait_for(index, cancelled).map(drop)
    }

    /// Writes `len` bytes of the asset from byte `offset` to `out`, each chunk as soon as it
    /// is verified (decrypted on the way out). The caller checked the range against the
    /// asset's size.
    pub fn read(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut dyn Write,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<()> {
        let feed = Arc::clone(&self.feed);
        let manifest = &*feed.manifest;
        let chunk_size = manifest.chunk_size.max(1) as u64;
        let end = offset.saturating_add(len).min(manifest.size);
        let mut buf = vec![0u8; chunk_size as usize];
        let mut at = offset;
        while at < end {
            let index = u32::try_from(at / chunk_size).context("offset past the chunk count")?;
            let data = self.wait_for(index, cancelled)?;
            let chunk_end = (index as u64 + 1) * chunk_size;
            let upto = chunk_end.min(end);
            let piece = &mut buf[..(upto - at) as usize];
            data.read_exact_at(piece, at).with_context(|| {
                format!("reading chunk {index} of {} from the store", manifest.id())
            })?;
            if let Some(key) = &self.feed.key {
                crypt::apply_range(key, manifest.chunk_size, at, piece);
            }
            out.write_all(piece).context("writing to the client")?;
            self.feed
                .stats
                .bytes_read
                .fetch_add(piece.len() as u64, Ordering::Relaxed);
            at = upto;
        }
        Ok(())
    }

    /// Moves this reader's window to `index` and waits until that chunk is verified.
    fn wait_for(&mut self, index: u32, cancelled: &dyn Fn() -> bool) -> Result<Arc<File>> {
        let feed = Arc::clone(&self.feed);
        let mut state = feed.state.locked();
        if state.readers.get(&self.id).map(|r| r.0) != Some(index) {
            if state.readers.len() >= MAX_READERS && !state.readers.contains_key(&self.id) {
                let oldest = state
                    .readers
                    .iter()
                    .min_by_key(|(_, r)| r.1)
                    .map(|(&id, _)| id);
                if let Some(oldest) = oldest {
                    state.readers.remove(&oldest);
                }
            }
            state.readers.insert(self.id, (index, Instant::now()));
            feed.tell_positions(&state);
        }
        let waited_from = Instant::now();
        let mut waited = false;
        loop {
            if let Some(data) = state.data.clone().filter(|_| state.have.get(index)) {
                if waited && self.started {
                    feed.stats.stalls.fetch_add(1, Ordering::Relaxed);
                }
                self.started = true;
                return Ok(data);
            }
            if let Some(error) = &state.ended {
                bail!(
                    "chunk {index} of {} is not in the store and the download ended: {error}",
                    feed.manifest.id()
                );
            }
            if cancelled() {
                bail!("interrupted");
            }
            if waited_from.elapsed() > CHUNK_WAIT {
                bail!(
                    "chunk {index} of {} did not arrive within {CHUNK_WAIT:?}",
                    feed.manifest.id()
                );
            }
            waited = true;
            state = feed
                .changed
                .wait_timeout(state, POLL)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let mut state = self.feed.state.locked();
        if state.readers.remove(&self.id).is_some() {
            self.feed.tell_positions(&state);
        }
    }
}
