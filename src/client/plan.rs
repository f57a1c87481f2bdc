//! The chunk book of one download: which chunks are missing, in flight (on which
//! connection, since when) or done; how many usable peers hold each; the sources and their
//! health; the stream window and the origin share; and, given the time, which chunk to ask
//! of which connection next. Pure: no threads, sockets or clock. The scheduler feeds it
//! what its workers report, calls [`Plan::assign`], and carries out the [`Order`]s; it
//! opens a worker for every connection the plan adds and closes the job channel of every
//! connection the plan stops giving work.
//!
//! Invariants (checked after every step of the unit tests by `Plan::check`):
//! 1. Every chunk is in exactly one state: done (`done`), missing (`missing`: nobody was
//!    asked for it), or in flight (in the queue of at least one connection, neither done
//!    nor missing). That is the only record of chunk state. A done chunk may still sit in
//!    a queue (the slower copy whose cancel is on its way); it is never handed out again.
//! 2. `copies[i]` is how many counted sources hold chunk `i`; a source is counted
//!    (`counted[s]`) exactly when it is a usable peer not judged slow and not failed since
//!    it last delivered, and it holds only
//!    what its own `Have` and `Gained` said (the tracker's `complete` is a claim, not a
//!    holding). Counts move only by what changed: a
//!    new have list by the bits that differ, a gained chunk or a refusal by one bit, a
//!    source becoming usable or unusable (or slow or not) by its own bits, looked at only
//!    for the source whose connection opened or closed, that was dropped or resumed, or
//!    whose pace was judged anew. Nothing rescans
//!    every chunk, or every source, per tick or event.
//! 3. A connection is asked only while open and ready, only for chunks its source holds,
//!    never twice for one chunk, and never for more than its depth at once (which follows
//!    the connection's bandwidth-delay product, [`super::depth`]).
//! 4. A chunk is in flight at two connections at most when it was late at the first
//!    (hedged), at a slow peer and expected sooner at the second (rescued), or in the
//!    endgame when the second is expected to deliver sooner; the first copy to arrive
//!    wins and the other connection is told to cancel.
//! 7. At most `max_peer_conns()` peer connections are open; peers beyond wait in
//!    `pending` for a slot: at most [`NEW_PEERS_PER_ANSWER`] never tried, and peers
//!    whose pause is over or that were rotated out, behind them; with none waiting, the
//!    rest of the latest answer (`reserve`).
//! 5. A source that sent bad data is dropped: its connections take no more work, and
//!    what they had in flight becomes missing again when they close. No other source is
//!    ever dropped: one that failed is paused and tried again (see `sources`), and the
//!    download ends only when no source delivered a chunk for the stall timeout, or when
//!    every source left is dropped or lacks what is missing.
//! 6. `epoch` grows whenever work or availability changes; a connection found starved at
//!    an epoch is not asked again until it grows (a pick costs up to [`RAREST_SCAN`]
//!    steps, so it is not repeated for nothing).
//!
//! This module is over 600 lines of code because the rules of choice belong together: each
//! reads the same book, and splitting them would spread one decision over several files.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::bitfield::Bitfield;

use super::depth::Depth;
use super::ranges::MAX_RUN_CHUNKS;
use super::sources::{End, Holdings, Source};
use super::summary::{Duplicates, OriginAccount, OriginWhy, SecondWhy};

/// Requests kept in flight per origin connection at least, and where its slow start begins:
/// with 256 KiB chunks, 1 MiB per connection and 4 MiB over the default four connections,
/// which covers the bandwidth-delay product of a 1 Gbit/s link with 30 ms of round trip
/// and all of loopback's. Beyond it the depth follows the measured rate and round trip
/// (`client::depth`). Any connection under a download cap keeps 1.
pub const PIPELINE_DEPTH: usize = 4;
/// Requests in flight per peer connection at least (see [`Plan::depth`]).
const PEER_PIPELINE_DEPTH: usize = 2;
/// How many candidate chunks rarest-first compares per pick; bounds the cost of a pick on
/// assets of a million chunks.
const RAREST_SCAN: usize = 256;
/// A chunk in flight is late, and worth asking of a second source (when it is urgent, or
/// nothing else is left to fetch), once it has taken this many times its source's measured
/// time per chunk...
const HEDGE_FACTOR: f64 = 2.0;
/// ...plus this much, which absorbs the jitter of a loaded machine.
const HEDGE_SLACK: Duration = Duration::from_millis(10);
/// While peers can deliver, a streaming download asks the origin for chunks no further
/// ahead of the reader than this many windows: what the player needs soon, not the file.
const ORIGIN_READAHEAD_WINDOWS: u32 = 2;
/// How long after a gateway's last reader left the rest of the file still waits: a
/// player's next Range request after a seek, or a script's next read, comes within
/// milliseconds, and should find the link and the two cores free rather than busy with
/// chunks nobody asked for; a second later the background download resumes.
const READER_GRACE: Duration = Duration::from_secs(1);
/// How long a stream's start waits for its first chunk to go out before the rest of the
/// download starts anyway: a reader that does not read yet must not hold the download up.
const STREAM_START_GRACE: Duration = Duration::from_millis(20);
/// When no peer has delivered for this long, the origin may send chunks outside this
/// client's share: the peer that was to fetch them from the origin may have gone.
const FALLBACK_AFTER: Duration = Duration::from_secs(2);
/// ...and this soon when the share is empty, which the tracker plans when it believes peers
/// hold everything: that belief rests on peers' own claims (`complete: true` costs an
/// announce), so it stands only while a peer that is not slow delivers. An honest seeder
/// sends its first chunk within milliseconds of the connect; a 16 MiB download from the
/// origin takes 0.14 s on loopback, so that 50 ms keeps a swarm of fakes within twice
/// that. (The origin still sends only what no counted peer holds: a seeder that pauses
/// costs nothing.)
const PROOF_GRACE: Duration = Duration::from_millis(50);
/// Peer connections open at once (handshaking or ready), at least the workers: twice the
/// default four connections, so that four busy ones leave four for peers still shaking
/// hands. Each is a thread and three descriptors; with no cap 300 fake peers cost a client
/// 515 threads and about 1 000 descriptors.
///
/// Why 8 still holds in a swarm of 64 on 50 Mbit/s uplinks: a client's fair share is
/// Kumar–Ross's (u_s + N·u)/N = (200 + 64·50)/64 ≈ 53 Mbit/s, one uplink's worth. When each
/// of 64 clients keeps 8 peer connections, each peer serves about 8 of them, about
/// 6 Mbit/s (0.8 MB/s, three 256 KiB chunks a second) each, and 8 of those fill the share.
/// More connections do not raise it (the sum of the uplinks is the bound): 16 would halve
/// each connection's rate, double the threads and descriptors on both ends, and spread
/// the 2 requests each keeps in flight thinner over peers that have little to send. Fewer
/// (4) would let one peer that holds nothing new, or stalls, cost a quarter of the share.
/// What 8 fixed peers cannot do is find better ones: see [`ROTATE_EVERY`].
const MAX_PEER_CONNS: usize = 8;
/// New peers taken from one tracker answer (it names 16), and peers waiting for a free
/// connection at most: enough to fill every slot from one answer; a longer queue goes stale
/// (the next answer names peers that announced more recently), and the tracker's window
/// moves on, so those left out are named again later. The others of the latest answer
/// wait in `Plan::reserve` for slots that free with no peer waiting.
const NEW_PEERS_PER_ANSWER: usize = 8;
/// A peer is slow when its pace (the larger of its measured time per chunk and the age of
/// its oldest request) exceeds this many times the fastest other peer's (or
/// [`SLOW_RATIO_TO_ORIGIN`] times an origin's)... Peers share their uplinks unevenly in a
/// crowd (one serves 2 downloaders, another 12), so 8 times the fastest was ordinary at
/// N = 16 on issue 14's caps: with rescues only in the endgame, the peers judged slow no
/// longer kept the fall-back clock ([`FALLBACK_AFTER`]) from running out, and the origin
/// sent 0.40-0.54 F outside the shares (wall 1.80-2.12 x the bound); at 32 times, 0.04-0.08
/// F and 1.54-1.55. A peer sending 20 KB/s among peers sending 1 MB/s is 50 times slower.
const SLOW_RATIO: f64 = 32.0;
/// ...and this much: below it, any peer is worth waiting for (a chunk of 256 KiB in 50 ms
/// is 5 MB/s). A slow peer's holdings no longer hold the origin back, it keeps one request
/// in flight (so that it is measured again), and that request is also asked of a faster
/// source when it is expected there sooner. A peer sending 20 KB/s is found out within
/// this time instead of costing the 10 s chunk timeout, which is what a 16 MiB download
/// among 300 fakes can afford (see [`PROOF_GRACE`]).
const SLOW_FLOOR: Duration = Duration::from_millis(50);
/// Against an origin a peer is slow only past this many times the origin's pace: an origin
/// serves from a server's uplink, a peer from a host's, which it shares with the rest of its
/// swarm. Measured at N = 8 on issue 14's caps (400 / 200 Mbit/s, 1 MiB chunks): sound
/// peers took 0.3-0.6 s a chunk, the origin 0.03-0.08 s (4-20 times), so at 8 times every
/// peer of the client whose uplink was fullest was judged slow, kept to one request, and it
/// finished last, from the origin. A peer sending 20 KB/s is still hundreds of times slower.
const SLOW_RATIO_TO_ORIGIN: f64 = 32.0;
/// With every peer slot taken and peers waiting for one, the peer that delivered least in
/// the last period gives its slot to the first waiting one this often (BitTorrent's
/// optimistic unchoke, which rotates every 30 s; our downloads last tens of seconds, so
/// 5 s: at 0.8 MB/s a connection delivers about 15 chunks of 256 KiB in that time, enough
/// to tell a peer with nothing to send from a busy one). In a swarm of 64 a client first
/// meets the 8 peers the tracker named first; without rotation a slot held by a peer that
/// holds nothing this client lacks stays useless, and the peers behind it are never tried.
const ROTATE_EVERY: Duration = Duration::from_secs(5);
/// ...when it delivered nothing in the period, or less than a quarter of the best peer:
/// peers within that of each other are equally worth keeping, and a new connection costs a
/// handshake (a few round trips) and a have list before it delivers anything.
const ROTATE_RATIO: u64 = 4;
/// A paused source is tried again at least this many times within the stall timeout: its
/// longest pause is the timeout divided by this.
const TRIES_PER_STALL: u32 = 3;

/// What the plan asks the scheduler to tell a connection's worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Request chunk `index` on connection `conn`.
    Fetch {
        /// The connection.
        conn: usize,
        /// The chunk.
        index: u32,
    },
    /// The chunk came from elsewhere: cancel the request on `conn`, if still unanswered.
    Cancel {
        /// The connection.
        conn: usize,
        /// The chunk.
        index: u32,
    },
}

/// Which list the next announce reports a source on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Complaint {
    /// Sent data failing its hash, or broke the protocol.
    Corrupt,
    /// Could not be connected to.
    Unreachable,
}

/// What became of a source when one of its connections ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to say: the connection ended as asked.
    Kept,
    /// The download cannot go on (the local store failed).
    Fatal(String),
    /// Paused and tried again later; `first` for the first failure in a row.
    Retrying {
        /// Whether this is the first failure since it last delivered.
        first: bool,
        /// What went wrong.
        error: String,
    },
    /// Given up for this download.
    Dropped {
        /// What went wrong.
        error: String,
        /// Whether it had not been given up before (so it is worth a log line).
        newly: bool,
    },
}

/// A chunk's first verified copy arrived: who to credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Credit {
    /// The source that delivered it.
    pub(crate) source: usize,
    /// Its length in bytes.
    pub(crate) len: u64,
    /// Whether that source is an origin.
    pub(crate) origin: bool,
}

/// One connection to one source, as the plan sees it.
#[derive(Debug)]
pub(crate) struct Conn {
    /// The source it is connected to.
    pub(crate) source: usize,
    /// Whether it takes work (its worker's job channel stays open).
    open: bool,
    /// Whether the handshake is done and the source's have list known.
    ready: bool,
    /// When it was opened, so that a connection is judged only over a whole period.
    opened_at: Instant,
    /// Requests sent and not yet answered, oldest first: replies come in request order.
    in_flight: VecDeque<u32>,
    /// Since when the oldest request in flight has been the one being served.
    head_since: Instant,
    /// How many requests it may have in flight, by its measured rate and round trip.
    pace: Depth,
    /// The epoch at which a pick last found nothing for this connection.
    starved_at: Option<u64>,
}

impl Conn {
    /// Whether it still takes work.
    pub(crate) fn is_open(&self) -> bool {
        self.open
    }

    /// Whether its handshake is done (and it still is).
    pub(crate) fn is_ready(&self) -> bool {
        self.ready
    }

    /// Whether it has requests not yet answered.
    pub(crate) fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// What its depth follows: its measured rate and round trip.
    pub(crate) fn pace(&self) -> &Depth {
        &self.pace
    }
}

/// How a download is to be planned.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Connections per download (at least 1).
    pub(crate) workers: usize,
    /// Requests in flight per origin connection ([`PIPELINE_DEPTH`], or 1 under a cap).
    pub(crate) depth: usize,
    /// When streaming, how many chunks ahead of the reader are urgent.
    pub(crate) window: u32,
    /// Whether the asset is streamed out in order.
    pub(crate) streaming: bool,
    /// The chunks the tracker planned for this client to take from the origin (`None`:
    /// no plan, the origin sends whatever no peer holds).
    pub(crate) origin_share: Option<Bitfield>,
    /// Seed of the generator that spreads chunk choices (never 0).
    pub(crate) seed: u64,
    /// The download gives up when no source delivered a chunk for this long.
    pub(crate) stall_timeout: Duration,
}

/// The stall timeout a download under a download cap of `rate` bytes a second keeps: never
/// shorter than two chunks' time at the cap, since the gap between chunks is then the
/// client's own doing (1 KiB/s and 256 KiB chunks: one chunk every 256 s).
pub(crate) fn stall_bound(stall: Duration, chunk_size: u32, rate: Option<u64>) -> Duration {
    let at_cap = rate.filter(|&r| r > 0).map_or(Duration::ZERO, |r| {
        Duration::from_secs_f64(2.0 * chunk_size as f64 / r as f64)
    });
    stall.max(at_cap)
}

/// The single book of a download's chunks, sources and connections.
#[derive(Debug)]
pub(crate) struct Plan {
    size: u64,
    chunk_size: u32,
    count: u32,
    workers: usize,
    depth: usize,
    window: u32,
    /// Verified chunks (what is checkpointed and served).
    done: Bitfield,
    /// How many chunks are not verified yet (`count` minus the ones of `done`).
    remaining: u32,
    /// Chunks nobody was asked for yet (or any more), in index order.
    missing: BTreeSet<u32>,
    sources: Vec<Source>,
    /// Whether each source's holds are in `copies` (it is a usable peer, not slow).
    counted: Vec<bool>,
    /// Whether each source was last judged slow (see [`SLOW_RATIO`]).
    slow: Vec<bool>,
    /// Peers taken from the tracker's answers that wait for a free connection slot.
    pending: VecDeque<usize>,
    /// The rest of the tracker's latest answer, beyond the peers taken from it, in its
    /// order: a slot that frees with no peer waiting takes the next one at once. Without
    /// it, a client whose peers hang up (departed hosts, or fakes that accept and close,
    /// issue 13) had no peer until its next announce and took everything from the origin
    /// meanwhile. Each answer replaces it, so it is never staler than one announce.
    reserve: VecDeque<Source>,
    /// How many usable peers hold each chunk, for rarest-first and the origin's choice.
    copies: Vec<u32>,
    conns: Vec<Conn>,
    origin_share: Option<Bitfield>,
    /// When a chunk last arrived from a peer that is not slow; long silence lets the origin
    /// step outside the share.
    last_peer_progress: Instant,
    fallback_open: bool,
    /// The next chunk the stream needs, when streaming (with a gateway's readers: the one
    /// that moved last).
    stream_pos: Option<u32>,
    /// The next chunk of each other reader of a gateway, most recently moved first.
    more_pos: Vec<u32>,
    /// Until when only what a gateway's readers need next is fetched: `Some(None)` while
    /// readers are at a position, `Some(Some(t))` for [`READER_GRACE`] after the last
    /// left, `None` otherwise (not a gateway, or the grace is over).
    readers_bound: Option<Option<Instant>>,
    /// Chunk ranges a gateway's players will read next (the next segments of an HLS
    /// playlist), fetched after every reader's window and read-ahead, until the instant
    /// given with them: a player that left stops holding the download then.
    ahead: Vec<std::ops::Range<u32>>,
    ahead_until: Option<Instant>,
    /// The first chunk the stream needs from the network (`None`: not streaming, or all
    /// cached).
    stream_first: Option<u32>,
    /// When the first chunk of this download arrived.
    first_chunk_at: Option<Instant>,
    random: u64,
    epoch: u64,
    /// Late chunks asked of a second source (stream or endgame).
    hedged: u32,
    /// See [`Settings::stall_timeout`].
    stall_timeout: Duration,
    /// When a chunk last arrived from any source (the start, before the first).
    last_delivery: Instant,
    /// When the peer slots were last looked at for rotation (see [`ROTATE_EVERY`]).
    last_rotation: Instant,
    orders: Vec<Order>,
    /// Why each request in flight at an origin was made, by (connection, chunk): at most
    /// the requests in flight.
    origin_why: HashMap<(usize, u32), OriginWhy>,
    /// Chunks that were in flight on a peer connection when it failed.
    retried: BTreeSet<u32>,
    /// Origin bytes delivered first, by why they were asked for.
    account: OriginAccount,
    /// Bytes received for chunks already verified.
    duplicates: Duplicates,
    /// Why each chunk in flight at two connections was asked of the second: at most the
    /// requests in flight.
    second_why: HashMap<u32, SecondWhy>,
}

impl Plan {
    /// A book for an asset of `size` bytes in chunks of `chunk_size`, of which `have` is
    /// verified already, with the sources the tracker named (no connection yet).
    pub(crate) fn new(
        size: u64,
        chunk_size: u32,
        have: Bitfield,
        sources: Vec<Source>,
        settings: Settings,
        now: Instant,
    ) -> Plan {
        let count = have.len();
        let missing: BTreeSet<u32> = (0..count).filter(|&i| !have.get(i)).collect();
        let first_missing = missing.first().copied();
        let remaining = count - have.count();
        // The first answer is taken like any other: its first peers, the rest in reserve.
        let mut peers = 0;
        let max_pause = settings.stall_timeout / TRIES_PER_STALL;
        let (sources, reserve): (Vec<Source>, Vec<Source>) = sources.into_iter().partition(|s| {
            peers += usize::from(!s.origin);
            s.origin || peers <= NEW_PEERS_PER_ANSWER
        });
        let sources: Vec<Source> = sources
            .into_iter()
            .map(|mut s| {
                s.cap_backoff(max_pause);
                s
            })
            .collect();
        Plan {
            remaining,
            size,
            chunk_size,
            count,
            workers: settings.workers.max(1),
            depth: settings.depth.max(1),
            window: settings.window,
            done: have,
            missing,
            counted: vec![false; sources.len()],
            slow: vec![false; sources.len()],
            pending: VecDeque::new(),
            reserve: reserve.into(),
            sources,
            copies: vec![0; count as usize],
            conns: Vec::new(),
            origin_share: settings.origin_share,
            last_peer_progress: now,
            fallback_open: false,
            stream_pos: settings.streaming.then_some(0),
            more_pos: Vec::new(),
            readers_bound: None,
            ahead: Vec::new(),
            ahead_until: None,
            stream_first: if settings.streaming {
                first_missing
            } else {
                None
            },
            first_chunk_at: None,
            random: settings.seed | 1,
            epoch: 0,
            hedged: 0,
            stall_timeout: settings.stall_timeout,
            last_delivery: now,
            last_rotation: now,
            orders: Vec::new(),
            origin_why: HashMap::new(),
            retried: BTreeSet::new(),
            account: OriginAccount::default(),
            duplicates: Duplicates::default(),
            second_why: HashMap::new(),
        }
    }

    // ----- what the scheduler reads -----

    /// Whether every chunk is verified.
    pub(crate) fn is_complete(&self) -> bool {
        self.remaining == 0
    }

    /// The verified chunks.
    pub(crate) fn done(&self) -> &Bitfield {
        &self.done
    }

    /// The sources, in the order they were added (their index is their id).
    pub(crate) fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The connections, in the order they were opened (their index is their id).
    pub(crate) fn conns(&self) -> &[Conn] {
        &self.conns
    }

    /// Late chunks asked of a second source so far.
    pub(crate) fn hedged(&self) -> u32 {
        self.hedged
    }

    /// Origin bytes delivered first so far, by why they were asked for.
    pub(crate) fn origin_account(&self) -> OriginAccount {
        self.account
    }

    /// Bytes received so far for chunks already verified.
    pub(crate) fn duplicates(&self) -> Duplicates {
        self.duplicates
    }

    /// When the first chunk of the download arrived.
    pub(crate) fn first_chunk_at(&self) -> Option<Instant> {
        self.first_chunk_at
    }

    /// Whether the stream (or the endgame) must be looked at often: lateness grows with
    /// time alone.
    pub(crate) fn watches_lateness(&self) -> bool {
        self.stream_pos.is_some()
            || self.missing.is_empty()
            || matches!(self.readers_bound, Some(Some(_)))
            || self.ahead_until.is_some()
    }

    /// Distinct peers with a ready connection that takes work.
    pub(crate) fn peers_connected(&self) -> usize {
        let mut peers: Vec<usize> = self
            .conns
            .iter()
            .filter(|c| c.ready && c.open && !self.sources[c.source].origin)
            .map(|c| c.source)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers.len()
    }

    /// The orders given since the last call, oldest first.
    pub(crate) fn take_orders(&mut self) -> Vec<Order> {
        std::mem::take(&mut self.orders)
    }

    /// Length of chunk `index` (the last one may be short).
    fn chunk_len(&self, index: u32) -> u64 {
        let start = index as u64 * self.chunk_size as u64;
        self.size.saturating_sub(start).min(self.chunk_size as u64)
    }

    // ----- connections -----

    /// Opens the first connections: peers share the workers (as many peers as there are
    /// peer slots; the others wait for one), and an origin gets one while peers exist (it is
    /// the fallback) or all of them when it is the only kind of source.
    pub(crate) fn open_initial(&mut self, now: Instant) {
        let peers = self.sources.iter().filter(|s| !s.origin).count();
        let connected = peers.min(self.max_peer_conns());
        let mut seen = 0;
        for source in 0..self.sources.len() {
            let count = if self.sources[source].origin {
                if peers == 0 { self.workers } else { 1 }
            } else {
                seen += 1;
                if seen > connected {
                    self.pending.push_back(source);
                    continue;
                }
                (self.workers / connected).max(1)
            };
            for _ in 0..count {
                self.open_conn(source, now);
            }
        }
    }

    /// Peer connections allowed open at once: [`MAX_PEER_CONNS`], or the workers if more.
    fn max_peer_conns(&self) -> usize {
        MAX_PEER_CONNS.max(self.workers)
    }

    /// Peer connections that take work (handshaking or ready).
    fn open_peer_conns(&self) -> usize {
        self.conns
            .iter()
            .filter(|c| c.open && !self.sources[c.source].origin)
            .count()
    }

    /// Connects waiting peers while peer slots are free, and then peers of the reserve.
    fn fill_peer_slots(&mut self, now: Instant) {
        let mut open = self.open_peer_conns();
        while open < self.max_peer_conns() {
            let source = match self.pending.pop_front() {
                Some(source) => source,
                None => {
                    let Some(peer) = self.reserve.pop_front() else {
                        return;
                    };
                    if self.knows(&peer.addr) {
                        continue;
                    }
                    self.add_source(peer)
                }
            };
            if self.sources[source].dropped.is_none() {
                self.open_conn(source, now);
                open += 1;
            }
        }
    }

    /// Whether a source at `addr` is booked already.
    fn knows(&self, addr: &str) -> bool {
        self.sources.iter().any(|s| s.addr == addr)
    }

    /// Books a source the tracker named (no connection yet); its index.
    fn add_source(&mut self, mut source: Source) -> usize {
        source.cap_backoff(self.stall_timeout / TRIES_PER_STALL);
        self.sources.push(source);
        self.counted.push(false);
        self.slow.push(false);
        self.sources.len() - 1
    }

    /// Adds a connection to `source`; the scheduler starts its worker.
    pub(crate) fn open_conn(&mut self, source: usize, now: Instant) -> usize {
        self.sources[source].tries += 1;
        let least = if self.sources[source].origin {
            self.depth
        } else {
            self.depth.min(PEER_PIPELINE_DEPTH)
        };
        self.conns.push(Conn {
            source,
            open: true,
            ready: false,
            opened_at: now,
            in_flight: VecDeque::new(),
            head_since: now,
            pace: Depth::new(least),
            starved_at: None,
        });
        self.recount(source);
        self.conns.len() - 1
    }

    /// Stops giving every connection work (the download is over).
    pub(crate) fn close_all(&mut self) {
        for conn in &mut self.conns {
            conn.open = false;
        }
        for source in 0..self.sources.len() {
            self.recount(source);
        }
        self.epoch += 1;
    }

    /// Reopens the connections of sources whose pause is over.
    pub(crate) fn reconnect_due(&mut self, now: Instant) {
        for source in 0..self.sources.len() {
            let src = &mut self.sources[source];
            if src.dropped.is_none() && src.retry_at.is_some_and(|t| t <= now) {
                src.retry_at = None;
                let reconnects = std::mem::take(&mut src.reconnects);
                if !src.origin {
                    // A peer waits for a free slot like a newcomer, with one connection.
                    if reconnects > 0 && !self.pending.contains(&source) {
                        self.enqueue(source);
                    }
                } else {
                    for _ in 0..reconnects {
                        self.open_conn(source, now);
                    }
                }
                // No longer paused: with no connection reopened, no longer usable either.
                self.availability_changed(source);
            }
        }
        self.fill_peer_slots(now);
    }

    /// Queues a peer for a free slot behind every waiting peer that failed fewer times in
    /// a row: newcomers first, and a peer that keeps failing last.
    fn enqueue(&mut self, source: usize) {
        let failures = self.sources[source].failures();
        let at = self
            .pending
            .iter()
            .position(|&s| self.sources[s].failures() > failures)
            .unwrap_or(self.pending.len());
        self.pending.insert(at, source);
    }

    /// Peers waiting for a slot that were never connected to.
    fn untried_pending(&self) -> usize {
        self.pending
            .iter()
            .filter(|&&s| self.sources[s].tries == 0)
            .count()
    }

    /// Every [`ROTATE_EVERY`], with every peer slot taken and a peer waiting for one: the
    /// connected peer that delivered least over the whole period (nothing, or under a
    /// [`ROTATE_RATIO`]th of the best) gives its slot to the first waiting peer, and waits
    /// at the back of the queue itself. Its requests in flight are still answered; the
    /// chunks it held go to the others. Returns the peer rotated out, if one was.
    pub(crate) fn rotate_peers(&mut self, now: Instant) -> Option<usize> {
        if now.saturating_duration_since(self.last_rotation) < ROTATE_EVERY {
            return None;
        }
        let since = self.last_rotation;
        self.last_rotation = now;
        let full = self.open_peer_conns() >= self.max_peer_conns();
        let waiting = self
            .pending
            .iter()
            .any(|&s| self.sources[s].dropped.is_none());
        // Judged: peers whose every open connection was ready through the whole period.
        let open = || self.conns.iter().filter(|c| c.open);
        let young: Vec<usize> = open()
            .filter(|c| !c.ready || c.opened_at > since)
            .map(|c| c.source)
            .collect();
        let mut judged: Vec<(usize, u64)> = Vec::new();
        for c in open().filter(|c| !self.sources[c.source].origin && !young.contains(&c.source)) {
            let src = &self.sources[c.source];
            if !judged.iter().any(|j| j.0 == c.source) {
                judged.push((c.source, src.bytes.saturating_sub(src.mark)));
            }
        }
        for src in &mut self.sources {
            src.mark = src.bytes;
        }
        if !full || !waiting {
            return None;
        }
        let best = judged.iter().map(|j| j.1).max().unwrap_or(0);
        let &(victim, delivered) = judged.iter().min_by_key(|j| j.1)?;
        if delivered > 0 && delivered.saturating_mul(ROTATE_RATIO) >= best {
            return None;
        }
        for c in self.conns.iter_mut().filter(|c| c.source == victim) {
            c.open = false;
        }
        self.fill_peer_slots(now);
        if !self.pending.contains(&victim) {
            self.pending.push_back(victim);
        }
        self.availability_changed(victim);
        Some(victim)
    }

    /// Takes in the tracker's latest answer: connects to origins not seen before, queues at
    /// most [`NEW_PEERS_PER_ANSWER`] new peers (those said complete first) for a free
    /// connection slot (one connection each), keeps the other new peers as the reserve,
    /// and replaces the origin share when it names one.
    pub(crate) fn take_swarm(
        &mut self,
        mut new: Vec<Source>,
        share: Option<Bitfield>,
        now: Instant,
    ) {
        // Stable: the tracker's order stands within each kind.
        new.sort_by_key(|s| (!s.origin, !s.said_complete));
        let mut taken = 0;
        self.reserve.clear();
        for source in new {
            if self.knows(&source.addr) {
                continue;
            }
            let origin = source.origin;
            if !origin {
                if taken >= NEW_PEERS_PER_ANSWER || self.untried_pending() >= NEW_PEERS_PER_ANSWER {
                    self.reserve.push_back(source);
                    continue;
                }
                taken += 1;
            }
            let index = self.add_source(source);
            if origin {
                self.open_conn(index, now);
            } else {
                self.enqueue(index);
            }
        }
        // Counts each newcomer in (a peer with unknown holdings counts nothing yet).
        self.fill_peer_slots(now);
        // Origins are never counted: retiring their connections changes no count.
        self.retire_extra_origin_connections();
        if let Some(share) = share.filter(|s| s.len() == self.count) {
            self.origin_share = Some(share);
        }
        self.epoch += 1;
    }

    /// With peers to trade with (and delivering: not while the share is lifted), one
    /// connection per origin is enough: the origin splits its upload between connections,
    /// so a client that started alone with every worker at the origin would otherwise keep
    /// several times its fair part of it and starve the others. Extra connections stop
    /// taking work and close once their requests are answered.
    fn retire_extra_origin_connections(&mut self) {
        if !self.any_usable_peer() || self.fallback_open {
            return;
        }
        for origin in (0..self.sources.len()).filter(|&s| self.sources[s].origin) {
            let open: Vec<usize> = (0..self.conns.len())
                .filter(|&c| self.conns[c].source == origin && self.conns[c].open)
                .collect();
            for &conn in open.iter().skip(1) {
                self.conns[conn].open = false;
            }
        }
    }

    /// Whether `source` can still deliver: not dropped, and connected or paused.
    fn usable(&self, source: usize) -> bool {
        let src = &self.sources[source];
        src.dropped.is_none()
            && (src.retry_at.is_some() || self.conns.iter().any(|c| c.source == source && c.open))
    }

    /// Whether some peer can deliver now: usable, and not failed since it last delivered
    /// (a peer paused after a failure does not hold the origin back).
    fn any_usable_peer(&self) -> bool {
        (0..self.sources.len()).any(|s| {
            let src = &self.sources[s];
            !src.origin && src.failures() == 0 && self.usable(s)
        })
    }

    // ----- availability, kept incrementally -----

    /// Whether `source`'s holds count in `copies`: a usable peer, not slow, and not failed
    /// since it last delivered (a peer that fails is given less weight: what it holds no
    /// longer keeps the origin from sending it).
    fn counts(&self, source: usize) -> bool {
        let src = &self.sources[source];
        !src.origin && self.usable(source) && !self.slow[source] && src.failures() == 0
    }

    /// Counts a source's holds in or out when it became a usable peer or stopped being one.
    fn recount(&mut self, source: usize) {
        let count_it = self.counts(source);
        if count_it == self.counted[source] {
            return;
        }
        self.counted[source] = count_it;
        let src = &self.sources[source];
        let copies = &mut self.copies;
        let mut adjust = |i: u32| {
            let c = &mut copies[i as usize];
            *c = if count_it {
                *c + 1
            } else {
                c.saturating_sub(1)
            };
        };
        match &src.have {
            Holdings::All => (0..self.count)
                .filter(|i| !src.refused.contains(i))
                .for_each(&mut adjust),
            Holdings::Known(have) => have
                .ones()
                .filter(|i| !src.refused.contains(i))
                .for_each(&mut adjust),
            Holdings::Unknown => {}
        }
    }

    /// Replaces what `source` holds; a counted source adjusts only the bits that differ.
    fn set_have(&mut self, source: usize, have: Bitfield) {
        if have.len() != self.count {
            return;
        }
        if self.counted[source] {
            let src = &self.sources[source];
            let other;
            let old = match &src.have {
                Holdings::Known(old) => old,
                Holdings::All => {
                    other = Bitfield::full(self.count);
                    &other
                }
                Holdings::Unknown => {
                    other = Bitfield::new(self.count);
                    &other
                }
            };
            for (byte, (a, b)) in old.as_bytes().iter().zip(have.as_bytes()).enumerate() {
                let mut changed = a ^ b;
                while changed != 0 {
                    let bit = changed.leading_zeros();
                    changed &= !(0x80u8 >> bit);
                    let i = byte as u32 * 8 + bit;
                    if i >= self.count || src.refused.contains(&i) {
                        continue;
                    }
                    let c = &mut self.copies[i as usize];
                    *c = if have.get(i) {
                        *c + 1
                    } else {
                        c.saturating_sub(1)
                    };
                }
            }
        }
        self.sources[source].have = Holdings::Known(have);
    }

    /// Adds chunks a source gained to what it holds, one count each for a counted source.
    fn gain(&mut self, source: usize, indices: &[u32]) -> bool {
        let (count, counted) = (self.count, self.counted[source]);
        let mut changed = false;
        for &index in indices.iter().filter(|&&i| i < count) {
            if self.sources[source].gain(index, count) {
                changed = true;
                if counted {
                    // `gain` only ever makes a chunk held.
                    self.copies[index as usize] += 1;
                }
            }
        }
        changed
    }

    /// `source` may have become usable or unusable: counts it in or out, and has every
    /// connection look again.
    fn availability_changed(&mut self, source: usize) {
        self.recount(source);
        self.epoch += 1;
    }

    // ----- what the workers report -----

    /// The handshake (or a have refresh) on `conn` is done: its source holds `have`.
    pub(crate) fn ready(&mut self, conn: usize, have: Bitfield) {
        let source = self.conns[conn].source;
        self.conns[conn].ready = true;
        self.set_have(source, have);
        self.epoch += 1;
    }

    /// The own download's round trip now: the least of its ready connections' latest
    /// (every request of theirs leaves by this host's uplink, so the least is the one
    /// least disturbed by anything else).
    pub(crate) fn own_rtt(&self) -> Option<Duration> {
        self.conns
            .iter()
            .filter(|c| c.open && c.ready)
            .filter_map(|c| c.pace.recent_rtt())
            .min()
    }

    /// Whether a stream's reader is short of the chunks of its window: some of the next
    /// `window` chunks from its position are not verified yet.
    pub(crate) fn stream_short(&self) -> bool {
        let Some(pos) = self.stream_pos else {
            return false;
        };
        let end = pos.saturating_add(self.window.max(1)).min(self.count);
        (pos..end).any(|i| !self.done.get(i))
    }

    /// The worker timed a have-list exchange on the idle `conn`: a round trip.
    pub(crate) fn round_trip(&mut self, conn: usize, rtt: Duration) {
        self.conns[conn].pace.rtt_sample(rtt);
    }

    /// `conn`'s source says it gained these chunks (a `Gained` frame, at any time). Only a
    /// change bumps the epoch, so that starved connections look again only for news.
    pub(crate) fn gained(&mut self, conn: usize, indices: &[u32]) {
        let source = self.conns[conn].source;
        if self.gain(source, indices) {
            self.epoch += 1;
        }
    }

    /// A chunk arrived verified on `conn`. The first copy counts (and the others in flight
    /// are cancelled); a second copy only measures its source.
    pub(crate) fn delivered(&mut self, conn: usize, index: u32, now: Instant) -> Option<Credit> {
        let len = self.chunk_len(index);
        let c = &mut self.conns[conn];
        c.in_flight.retain(|&i| i != index);
        c.pace.delivered(index, now);
        let service = now.saturating_duration_since(c.head_since);
        c.head_since = now;
        let source = c.source;
        self.sources[source].record_service(service, len);
        let why = self.origin_why.remove(&(conn, index));
        if index >= self.count || self.done.get(index) {
            if self.sources[source].origin {
                self.duplicates.from_origin += len;
            } else {
                self.duplicates.from_peers += len;
            }
            self.duplicates.why.add(self.second_why.remove(&index), len);
            return None;
        }
        if self.sources[source].origin {
            self.account.add(why.unwrap_or(OriginWhy::Share), len);
        }
        self.retried.remove(&index);
        // Asked of other sources too: they need not send it any more.
        for (other, c) in self.conns.iter().enumerate() {
            if c.open && c.in_flight.contains(&index) {
                self.orders.push(Order::Cancel { conn: other, index });
            }
        }
        self.missing.remove(&index);
        self.done.set(index);
        self.remaining -= 1;
        self.settle(index);
        if !self.sources[source].origin && !self.slow[source] {
            self.last_peer_progress = now;
        }
        self.last_delivery = now;
        let src = &mut self.sources[source];
        let recovered = src.failures() > 0;
        src.credit(len);
        let origin = src.origin;
        if recovered {
            // Healthy again: what it holds counts again.
            self.availability_changed(source);
        }
        self.first_chunk_at.get_or_insert(now);
        Some(Credit {
            source,
            len,
            origin,
        })
    }

    /// `conn`'s source does not hold `index`, or would not send it now: ask elsewhere.
    pub(crate) fn refused(&mut self, conn: usize, index: u32, now: Instant) {
        self.answered_without_chunk(conn, index, now);
        let source = self.conns[conn].source;
        let src = &mut self.sources[source];
        let held = src.holds(index);
        src.refused.insert(index);
        if held && self.counted[source] && index < self.count {
            let c = &mut self.copies[index as usize];
            *c = c.saturating_sub(1);
        }
        self.epoch += 1;
    }

    /// `conn`'s source dropped the request for `index`, as asked.
    pub(crate) fn cancelled(&mut self, conn: usize, index: u32, now: Instant) {
        if index < self.count && self.done.get(index) {
            self.duplicates.cancelled += self.chunk_len(index);
        }
        self.answered_without_chunk(conn, index, now);
    }

    /// The request for `index` on `conn` was answered without the chunk: the connection has
    /// room again, and the chunk, unless done or still in flight elsewhere, is missing again.
    fn answered_without_chunk(&mut self, conn: usize, index: u32, now: Instant) {
        let c = &mut self.conns[conn];
        c.in_flight.retain(|&i| i != index);
        c.pace.dropped(index, now);
        c.head_since = now;
        self.origin_why.remove(&(conn, index));
        self.settle(index);
        self.release(index);
        self.epoch += 1;
    }

    /// Forgets why `index` was asked twice once at most one copy is left in flight.
    fn settle(&mut self, index: u32) {
        if !self.second_why.contains_key(&index) {
            return;
        }
        let flying = self
            .conns
            .iter()
            .filter(|c| c.in_flight.contains(&index))
            .count();
        if flying == 0 || (flying == 1 && !self.done.get(index)) {
            self.second_why.remove(&index);
        }
    }

    /// A connection gave up its request for `index`; with no other copy in flight the
    /// chunk is missing again.
    fn release(&mut self, index: u32) {
        if index >= self.count || self.done.get(index) || self.missing.contains(&index) {
            return;
        }
        if !self.conns.iter().any(|c| c.in_flight.contains(&index)) {
            self.missing.insert(index);
            self.epoch += 1;
        }
    }

    /// `conn` ended. Its requests go elsewhere; its source is kept, paused, or dropped.
    pub(crate) fn closed(
        &mut self,
        conn: usize,
        end: End,
        now: Instant,
    ) -> (Verdict, Option<Complaint>) {
        let source = self.conns[conn].source;
        self.conns[conn].open = false;
        self.conns[conn].ready = false;
        self.conns[conn].pace.clear(now);
        let origin = self.sources[source].origin;
        let failed = !matches!(end, End::Finished);
        for index in std::mem::take(&mut self.conns[conn].in_flight) {
            self.origin_why.remove(&(conn, index));
            self.settle(index);
            if failed && !origin && !self.done.get(index) {
                self.retried.insert(index);
            }
            self.release(index);
        }
        let outcome = match end {
            End::Finished => (Verdict::Kept, None),
            End::Local(error) => (Verdict::Fatal(error), None),
            End::Lied(error) => (
                self.drop_source(source, error, now),
                Some(Complaint::Corrupt),
            ),
            // Transient until proven otherwise: a timeout, a refusal, a reset or a stall
            // may pass (a link full for seconds, a restart), so the source is paused and
            // tried again; the stall timeout bounds how long the download waits.
            End::Unreachable(error) => {
                let verdict = self.retry_later(source, error, now);
                // The tracker is told once per run of failures: it checks for itself.
                let complaint = matches!(verdict, Verdict::Retrying { first: true, .. })
                    .then_some(Complaint::Unreachable)
                    .filter(|_| !origin);
                (verdict, complaint)
            }
            End::Busy(error) | End::Failed(error) => (self.retry_later(source, error, now), None),
            End::Unfit(error) => (self.drop_source(source, error, now), None),
        };
        // A peer slot may be free: the next waiting peer takes it.
        self.fill_peer_slots(now);
        // Its last connection closed, or it was dropped: counted out. (An origin a drop
        // connected to anew was counted by `open_conn`.)
        self.availability_changed(source);
        outcome
    }

    /// Pauses a source after a failure; a healthy origin takes over a peer's connection
    /// lost meanwhile.
    fn retry_later(&mut self, source: usize, error: String, now: Instant) -> Verdict {
        let first = self.sources[source].retry_later(&error, now);
        if !self.sources[source].origin {
            self.fill_peer_slots(now);
            self.replace_lost_conn(now);
        }
        Verdict::Retrying { first, error }
    }

    /// Gives a source up for this download: its connections take no more work and their
    /// chunks go elsewhere; a healthy origin takes over the connection lost.
    fn drop_source(&mut self, source: usize, error: String, now: Instant) -> Verdict {
        let newly = self.sources[source].give_up(error.clone());
        for c in self.conns.iter_mut().filter(|c| c.source == source) {
            c.open = false;
        }
        self.fill_peer_slots(now);
        self.replace_lost_conn(now);
        Verdict::Dropped { error, newly }
    }

    /// With fewer connections open than workers, a healthy origin that is not paused gets
    /// one more.
    fn replace_lost_conn(&mut self, now: Instant) {
        let open = self.conns.iter().filter(|c| c.open).count();
        if open < self.workers
            && let Some(origin) = (0..self.sources.len()).find(|&s| {
                let src = &self.sources[s];
                src.origin && src.dropped.is_none() && src.retry_at.is_none()
            })
        {
            self.open_conn(origin, now);
        }
    }

    // ----- what the stream and the clock say -----

    /// The stream needs chunk `next` now.
    pub(crate) fn set_stream_pos(&mut self, next: u32) {
        self.stream_pos = Some(next);
        self.epoch += 1;
    }

    /// A gateway's readers need these chunks next, the one that moved last first: each gets
    /// its window. None left: no reader waits, and the download goes on as a `get`. A
    /// window that moved away leaves its chunks to the rest of the download (no more
    /// hedging for them, no more urgency).
    ///
    /// While readers wait (and for [`READER_GRACE`] after the last left) nothing but what
    /// they need next is asked for: their windows, then the next
    /// [`ORIGIN_READAHEAD_WINDOWS`] windows ahead of each.
    pub(crate) fn set_stream_positions(&mut self, positions: &[u32], now: Instant) {
        self.stream_pos = positions.first().copied();
        self.more_pos = positions.iter().skip(1).copied().collect();
        self.readers_bound = Some(positions.is_empty().then_some(now + READER_GRACE));
        self.epoch += 1;
    }

    /// A gateway's players will read these chunk ranges next, in this order (none: no
    /// player is ahead of its reads), until `until`: fetched at low priority, after the
    /// readers' windows and their read-ahead, and while they last nothing else is.
    pub(crate) fn set_ahead(&mut self, ranges: Vec<std::ops::Range<u32>>, until: Instant) {
        self.ahead_until = (!ranges.is_empty()).then_some(until);
        self.ahead = ranges;
        self.epoch += 1;
    }

    /// Whether the players' ranges ahead still hold at `now`.
    fn ahead_holds(&self, now: Instant) -> bool {
        self.ahead_until.is_some_and(|until| now < until)
    }

    /// Whether only a gateway's readers' next chunks are to be fetched now.
    fn bound_by_readers(&self, now: Instant) -> bool {
        self.ahead_holds(now)
            || match self.readers_bound {
                Some(None) => true,
                Some(Some(until)) => now < until,
                None => false,
            }
    }

    /// The nearest missing chunk ahead of a gateway's readers (their windows and the
    /// read-ahead after them), the most recently moved reader first, that `source` holds;
    /// from an origin, only one no peer holds and of this client's share, as elsewhere.
    /// Then the players' ranges ahead, while they hold.
    fn ahead_of_readers(&self, source: usize, now: Instant) -> Option<u32> {
        let src = &self.sources[source];
        let share = self
            .origin_share
            .as_ref()
            .filter(|_| src.origin && !self.fallback_open);
        let ahead = self
            .window
            .saturating_mul(ORIGIN_READAHEAD_WINDOWS + 1)
            .max(1);
        let starts = self
            .stream_pos
            .into_iter()
            .chain(self.more_pos.iter().copied());
        let players = self
            .ahead
            .iter()
            .filter(|_| self.ahead_holds(now))
            .map(|r| {
                // Never a reversed range (`BTreeSet::range` panics on one).
                let end = r.end.min(self.count);
                r.start.min(end)..end
            });
        starts
            .map(|pos| pos..pos.saturating_add(ahead).min(self.count))
            .chain(players)
            .flat_map(|range| self.missing.range(range).copied())
            .find(|&i| {
                src.holds(i)
                    && (!src.origin || self.copies[i as usize] == 0)
                    && share.is_none_or(|s| s.get(i))
            })
    }

    /// Looks again at every connection because time passed (lateness grows alone).
    pub(crate) fn nudge(&mut self, now: Instant) {
        if !self.ahead_holds(now) {
            self.ahead.clear();
            self.ahead_until = None;
        }
        self.epoch += 1;
        self.assign(now);
    }

    /// The share holds while peers deliver: with no usable peer left, or none that is not
    /// slow delivering for [`FALLBACK_AFTER`] ([`PROOF_GRACE`] when the share is empty), the
    /// origin sends whatever no counted peer holds.
    pub(crate) fn update_fallback(&mut self, now: Instant) {
        let quiet = now.saturating_duration_since(self.last_peer_progress);
        let fallback = quiet > FALLBACK_AFTER
            || (self.empty_share_rests_on_claims() && quiet > PROOF_GRACE)
            || !self.any_usable_peer();
        if fallback != self.fallback_open {
            self.fallback_open = fallback;
            if fallback {
                self.top_up_origin(now);
            } else {
                self.retire_extra_origin_connections();
            }
            self.epoch += 1;
            self.assign(now);
        }
    }

    /// With the share lifted, peers are not delivering: the first healthy origin gets every
    /// worker, as when it is the only source (one connection of four requests carried a
    /// 16 MiB download at under half the speed of four).
    fn top_up_origin(&mut self, now: Instant) {
        let Some(origin) = (0..self.sources.len()).find(|&s| {
            let src = &self.sources[s];
            src.origin && src.dropped.is_none() && src.retry_at.is_none()
        }) else {
            return;
        };
        let open = self
            .conns
            .iter()
            .filter(|c| c.source == origin && c.open)
            .count();
        for _ in open..self.workers {
            self.open_conn(origin, now);
        }
    }

    /// Why the download cannot finish, when chunks are missing that no connection left can
    /// ever deliver.
    pub(crate) fn stuck(&self) -> Option<String> {
        let busy = self
            .conns
            .iter()
            .any(|c| c.open && (!c.ready || !c.in_flight.is_empty()));
        if busy || self.missing.is_empty() {
            return None;
        }
        // A source paused, or waiting for a peer slot, may still deliver, and one never
        // connected to may hold anything.
        let servable = (0..self.sources.len())
            .filter(|&s| {
                self.usable(s) || (self.sources[s].dropped.is_none() && self.pending.contains(&s))
            })
            .any(|s| {
                let src = &self.sources[s];
                src.have == Holdings::Unknown || self.missing.iter().any(|&i| src.holds(i))
            });
        if servable {
            return None;
        }
        let first: Vec<String> = self.missing.iter().take(8).map(|i| i.to_string()).collect();
        Some(format!(
            "{} of {} chunks (first: {}) are held by no source still usable; sources: {}. Progress is kept: run the same command again to resume",
            self.missing.len(),
            self.count,
            first.join(", "),
            self.describe_sources()
        ))
    }

    /// Why the download gives up, when no source delivered a chunk for the stall timeout:
    /// every source, how often it was tried and how it last failed. Sources paused at that
    /// moment are not waited for: their pauses are capped well below the timeout (see
    /// [`TRIES_PER_STALL`]), so each was tried again within it.
    pub(crate) fn stalled(&self, now: Instant) -> Option<String> {
        let quiet = now.saturating_duration_since(self.last_delivery);
        if self.is_complete() || quiet < self.stall_timeout {
            return None;
        }
        let what = if self.first_chunk_at.is_some() {
            "no further chunk"
        } else {
            "no chunk"
        };
        Some(format!(
            "{what} arrived for {:?} (the stall timeout), {} of {} chunks missing; sources: {}. Progress is kept: run the same command again to resume, or give a longer --stall-timeout",
            self.stall_timeout,
            self.remaining,
            self.count,
            self.describe_sources()
        ))
    }

    /// Every source in a line each (the first 16, then how many more).
    fn describe_sources(&self) -> String {
        const SHOWN: usize = 16;
        let mut lines: Vec<String> = self
            .sources
            .iter()
            .take(SHOWN)
            .map(Source::describe)
            .collect();
        if self.sources.len() > SHOWN {
            lines.push(format!("and {} more", self.sources.len() - SHOWN));
        }
        lines.join("; ")
    }

    /// Whether the tracker planned nothing from the origin for this client.
    fn share_is_empty(&self) -> bool {
        self.origin_share.as_ref().is_some_and(|s| s.count() == 0)
    }

    /// Whether the share is empty while some peer was named complete by the tracker: the
    /// tracker plans nothing from the origin once it believes a peer holds everything, and
    /// that belief is the peer's own claim. An empty share in a crowd with no such claim
    /// (every free chunk already planned for someone else) is the plan working: falling
    /// back at once there would have the origin send those chunks twice.
    fn empty_share_rests_on_claims(&self) -> bool {
        self.share_is_empty() && self.sources.iter().any(|s| !s.origin && s.said_complete)
    }

    /// Whether a deadline of the plan's own is running: an empty share waiting for a peer
    /// to prove it, which the scheduler watches as closely as lateness.
    pub(crate) fn awaits_proof(&self) -> bool {
        !self.fallback_open && self.empty_share_rests_on_claims() && self.any_usable_peer()
    }

    /// Judges every connected peer's pace against the fastest other connected source (see
    /// [`SLOW_RATIO`]); a peer that became slow, or stopped being slow, is counted out or
    /// in, and every connection looks again. Costs one pass over the connections and a
    /// comparison per pair of connected sources (a few dozen at most, by the caps).
    pub(crate) fn update_pace(&mut self, now: Instant) {
        let mut paces: Vec<(usize, f64)> = Vec::new();
        for c in self.conns.iter().filter(|c| c.open && c.ready) {
            let mut pace = self.secs_per_chunk(c.source);
            if !c.in_flight.is_empty() {
                pace = pace.max(now.saturating_duration_since(c.head_since).as_secs_f64());
            }
            match paces.iter_mut().find(|p| p.0 == c.source) {
                Some(p) => p.1 = p.1.max(pace),
                None => paces.push((c.source, pace)),
            }
        }
        let mut changed = false;
        for &(source, pace) in &paces {
            if self.sources[source].origin {
                continue;
            }
            let best = |origin: bool| {
                paces
                    .iter()
                    .filter(|p| p.0 != source && self.sources[p.0].origin == origin)
                    .map(|p| p.1)
                    .fold(f64::INFINITY, f64::min)
            };
            let bar = (SLOW_RATIO * best(false)).min(SLOW_RATIO_TO_ORIGIN * best(true));
            let slow = pace > bar.max(SLOW_FLOOR.as_secs_f64());
            if slow != self.slow[source] {
                self.slow[source] = slow;
                self.availability_changed(source);
                changed = true;
            }
        }
        if changed {
            self.assign(now);
        }
    }

    // ----- the choice -----

    /// Requests kept in flight on `conn`: what its rate and round trip call for
    /// ([`super::depth`]), from at least 4 to an origin and 2 to a peer (a short queue at
    /// each peer lets new requests go to whichever peer frees up first, and keeps the chunks
    /// a peer is asked for close to what it has just received); 1 to a slow peer, and 1
    /// under a download cap.
    fn depth(&self, conn: usize) -> usize {
        let c = &self.conns[conn];
        if self.slow[c.source] || self.depth == 1 {
            1
        } else {
            c.pace.depth()
        }
    }

    /// Tops every ready connection up to its depth, as [`Order::Fetch`]es.
    pub(crate) fn assign(&mut self, now: Instant) {
        for conn in 0..self.conns.len() {
            loop {
                let c = &self.conns[conn];
                if !c.ready
                    || !c.open
                    || c.in_flight.len() >= self.depth(conn)
                    || c.starved_at == Some(self.epoch)
                {
                    break;
                }
                let Some((index, why)) = self.pick(conn, now) else {
                    self.conns[conn].starved_at = Some(self.epoch);
                    break;
                };
                if self.sources[self.conns[conn].source].origin {
                    self.origin_why.insert((conn, index), why);
                }
                if !self.missing.remove(&index) {
                    self.hedged += 1;
                    let second = match why {
                        OriginWhy::Rescue => SecondWhy::Rescue,
                        OriginWhy::Stream => SecondWhy::Stream,
                        _ if self.is_late(index, now) => SecondWhy::Late,
                        _ => SecondWhy::Sooner,
                    };
                    self.second_why.insert(index, second);
                }
                let len = self.chunk_len(index);
                let c = &mut self.conns[conn];
                if c.in_flight.is_empty() {
                    c.head_since = now;
                }
                c.in_flight.push_back(index);
                c.pace.sent(index, len, now);
                self.orders.push(Order::Fetch { conn, index });
            }
        }
    }

    /// The next chunk for a connection: from a peer, a rare one it holds; from an origin,
    /// the lowest missing chunk of this client's share that no usable peer holds, so peers
    /// carry all they can.
    /// Also says why, which counts for an origin's chunks (see [`OriginAccount`]).
    ///
    /// A chunk in flight at a slow peer is rescued (asked here too) only in the endgame,
    /// when nothing is missing: the slow peer's copy is usually on its way already, and the
    /// second copy is then a duplicate its uplink and this one both pay for, while the
    /// download does not wait for that chunk as long as other chunks are left to fetch.
    /// Measured at N = 16 on issue 14's caps (128 MiB, 256 KiB chunks): rescued before any
    /// other pick, rescues were 0.63 F of the 0.66 F peers sent twice; rescued when a
    /// connection had nothing missing to fetch, still 0.48-0.68 F (a connection to a
    /// partial peer often has nothing missing that it holds).
    fn pick(&mut self, conn: usize, now: Instant) -> Option<(u32, OriginWhy)> {
        if let Some(index) = self.urgent_for(conn, now) {
            return Some((index, OriginWhy::Stream));
        }
        if self.stream_starting(now) {
            return None;
        }
        if !self.missing.is_empty() {
            return self.fresh_for(conn, now);
        }
        if let Some(index) = self.rescue_for(conn, now) {
            return Some((index, OriginWhy::Rescue));
        }
        self.endgame_for(conn, now).map(|i| (i, OriginWhy::Endgame))
    }

    /// A missing chunk for `conn` (see [`Plan::pick`]).
    fn fresh_for(&mut self, conn: usize, now: Instant) -> Option<(u32, OriginWhy)> {
        let source = self.conns[conn].source;
        if self.bound_by_readers(now) {
            return self
                .ahead_of_readers(source, now)
                .map(|i| (i, OriginWhy::Stream));
        }
        if !self.sources[source].origin {
            return self.rarest_held_by(source).map(|i| (i, OriginWhy::Share));
        }
        // The origin sends this client's planned share; outside it, only what no peer
        // holds, and only once the swarm has gone quiet (the planned peer may be gone).
        let share = self.origin_share.as_ref().filter(|_| !self.fallback_open);
        // A stream does not have the origin read far ahead while peers can deliver.
        let horizon = match self.stream_pos {
            Some(pos) if self.any_usable_peer() => {
                let furthest = self.more_pos.iter().copied().fold(pos, u32::max);
                furthest.saturating_add(self.window.saturating_mul(ORIGIN_READAHEAD_WINDOWS))
            }
            _ => u32::MAX,
        };
        let src = &self.sources[source];
        let free = |i: u32| src.holds(i) && self.copies[i as usize] == 0;
        let planned = self.origin_share.as_ref();
        let index = match planned {
            // With the share lifted and no reader waiting on the order: the share first,
            // then the rest from the highest chunk down. The tracker hands its free chunks
            // out lowest first, and it learns what this client fetched only at its next
            // announce (half a second later): fetched from the bottom, the chunks outside
            // the share are the very ones it hands the next clients to arrive, and the
            // origin sends them twice (issue 14, N = 8: the first client, alone for its
            // first answer, took 15-19 MB outside its share before it knew any peer). An
            // origin URL fetches runs of consecutive chunks in one range request, which
            // falling chunks would split into one each: it goes down by blocks of
            // `MAX_RUN_CHUNKS`, rising within each (in the web seed crowd test, the first
            // client took 15 MB outside its share in rising order, and nginx sent 1.09 F).
            Some(plan) if self.fallback_open && self.stream_pos.is_none() => self
                .missing
                .iter()
                .copied()
                .find(|&i| free(i) && plan.get(i))
                .or_else(|| {
                    let top = self.missing.iter().rev().copied().find(|&i| free(i))?;
                    if !src.web {
                        return Some(top);
                    }
                    let block = top - top % MAX_RUN_CHUNKS as u32;
                    self.missing.range(block..=top).copied().find(|&i| free(i))
                })?,
            _ => self
                .missing
                .range(..horizon)
                .copied()
                .find(|&i| free(i) && share.is_none_or(|s| s.get(i)))?,
        };
        let why = if self.retried.contains(&index) {
            OriginWhy::Retry
        } else if planned.is_some_and(|s| s.get(index)) {
            OriginWhy::Share
        } else if self.fallback_open {
            OriginWhy::Fallback
        } else {
            OriginWhy::Unplanned
        };
        Some((index, why))
    }

    /// When streaming, the chunk of the urgent window (the next `window` chunks the reader
    /// needs) this connection should fetch, nearest first: a missing one, or a late one
    /// another source is slow with (hedged: the first copy to arrive wins). The origin
    /// takes a missing urgent chunk only when no punctual connected peer holds it.
    fn urgent_for(&self, conn: usize, now: Instant) -> Option<u32> {
        let source = self.conns[conn].source;
        let src = &self.sources[source];
        // At the start, only the first chunk the stream needs from the network, even
        // while it still writes out cached ones before it.
        let (pos, window) = match self.stream_first {
            Some(first) if self.stream_starting(now) => (first, 1),
            _ => (self.stream_pos?, self.window),
        };
        // Several readers (a gateway's): their windows interleaved, each nearest first.
        let starts = std::iter::once(pos).chain(self.more_pos.iter().copied());
        (0..window)
            .flat_map(|ahead| {
                starts
                    .clone()
                    .filter_map(move |start| start.checked_add(ahead))
            })
            .filter(|&index| index < self.count)
            .find(|&index| {
                if self.missing.contains(&index) {
                    src.holds(index) && (!src.origin || !self.ready_peer_holds(index, now))
                } else {
                    self.hedgeable(index, source, now)
                }
            })
    }

    /// The endgame: nothing is left to ask for, and the download ends with its slowest
    /// request. A connection with room takes a chunk in flight elsewhere that is late
    /// there, or, from a peer, one this connection is expected to deliver sooner than its
    /// source will (expected time: the requests queued ahead times the measured time per
    /// chunk). The first copy wins and the other is cancelled. An origin takes only late
    /// chunks, so that hedging never costs it more than the chunks peers fail to deliver.
    fn endgame_for(&self, conn: usize, now: Instant) -> Option<u32> {
        let source = self.conns[conn].source;
        let here = self.expected_wait(&self.conns[conn], self.conns[conn].in_flight.len(), now);
        self.conns
            .iter()
            .flat_map(|c| {
                c.in_flight
                    .iter()
                    .enumerate()
                    .map(move |(at, &i)| (c, at, i))
            })
            .filter(|&(c, at, index)| {
                self.hedgeable(index, source, now)
                    || (!self.sources[source].origin
                        && self.duplicable(index, source)
                        && here + HEDGE_SLACK < self.expected_wait(c, at, now))
            })
            .map(|(_, _, index)| index)
            .min()
    }

    /// A chunk in flight at a slow peer that this connection is expected to deliver sooner
    /// (by the measured times per chunk; a request already overdue there is expected to
    /// take as long again as it has so far). An origin takes it within its share, or
    /// whatever it is once the share is lifted. The first copy wins.
    fn rescue_for(&self, conn: usize, now: Instant) -> Option<u32> {
        let source = self.conns[conn].source;
        if self.slow[source] {
            return None;
        }
        // An origin keeps to the share while peers deliver: another peer may rescue.
        let share = self
            .origin_share
            .as_ref()
            .filter(|_| self.sources[source].origin && !self.fallback_open);
        let here = self.expected_wait(&self.conns[conn], self.conns[conn].in_flight.len(), now);
        self.conns
            .iter()
            .filter(|c| c.source != source && self.slow[c.source])
            .flat_map(|c| {
                c.in_flight
                    .iter()
                    .enumerate()
                    .map(move |(at, &i)| (c, at, i))
            })
            .filter(|&(c, at, index)| {
                share.is_none_or(|s| s.get(index))
                    && self.duplicable(index, source)
                    && here + HEDGE_SLACK < self.remaining(c, at, now)
            })
            .map(|(_, _, index)| index)
            .min()
    }

    /// How long the request at `position` of a connection's queue should still take: its
    /// expected wait, or once that is past, as long again as its source has taken so far.
    fn remaining(&self, conn: &Conn, position: usize, now: Instant) -> Duration {
        let wait = self.expected_wait(conn, position, now);
        if wait.is_zero() {
            now.saturating_duration_since(conn.head_since)
        } else {
            wait
        }
    }

    /// How long until the request at `position` of a connection's queue (or a new one at
    /// the end) is done, by the source's measured time per chunk.
    fn expected_wait(&self, conn: &Conn, position: usize, now: Instant) -> Duration {
        let queued =
            Duration::from_secs_f64(self.secs_per_chunk(conn.source) * (position + 1) as f64);
        if conn.in_flight.is_empty() {
            queued
        } else {
            queued.saturating_sub(now.saturating_duration_since(conn.head_since))
        }
    }

    fn secs_per_chunk(&self, source: usize) -> f64 {
        self.sources[source].secs_per_chunk(self.chunk_size)
    }

    /// Copies of `index` in flight (0 when it is done or missing).
    fn flying(&self, index: u32) -> usize {
        if self.done.get(index) || self.missing.contains(&index) {
            return 0;
        }
        self.conns
            .iter()
            .filter(|c| c.in_flight.contains(&index))
            .count()
    }

    /// Whether `index`, in flight at one source only, is late there and `source` could
    /// deliver it too.
    fn hedgeable(&self, index: u32, source: usize, now: Instant) -> bool {
        self.duplicable(index, source) && self.is_late(index, now)
    }

    /// Whether `index` is in flight at one connection only, and `source` holds it too.
    fn duplicable(&self, index: u32, source: usize) -> bool {
        self.flying(index) == 1
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
    fn stream_starting(&self, now: Instant) -> bool {
        let Some(first) = self.stream_first else {
            return false;
        };
        self.stream_pos.is_some_and(|pos| pos <= first)
            && self
                .first_chunk_at
                .is_none_or(|at| now.saturating_duration_since(at) < STREAM_START_GRACE)
    }

    /// Whether a connected peer that still takes work, and is not late with what it was
    /// asked for, holds `index`.
    fn ready_peer_holds(&self, index: u32, now: Instant) -> bool {
        self.conns.iter().any(|c| {
            c.ready
                && c.open
                && !self.sources[c.source].origin
                && self.sources[c.source].holds(index)
                && !self.overdue(c, 0, now)
        })
    }

    /// Whether chunk `index`, in flight, has taken longer than its source should need.
    fn is_late(&self, index: u32, now: Instant) -> bool {
        self.conns.iter().any(|c| {
            c.in_flight
                .iter()
                .position(|&i| i == index)
                .is_some_and(|position| self.overdue(c, position, now))
        })
    }

    /// Whether the request at `position` in the queue of `conn` is overdue: not done
    /// within [`HEDGE_FACTOR`] times the source's measured time per chunk for each request
    /// up to and including it, plus [`HEDGE_SLACK`]. An idle connection is never overdue.
    fn overdue(&self, conn: &Conn, position: usize, now: Instant) -> bool {
        if conn.in_flight.len() <= position {
            return false;
        }
        let allowed = HEDGE_FACTOR * self.secs_per_chunk(conn.source) * (position + 1) as f64;
        now.saturating_duration_since(conn.head_since)
            > Duration::from_secs_f64(allowed) + HEDGE_SLACK
    }

    /// Among the missing chunks `source` holds, one of those fewest peers hold. The scan
    /// starts at a random place so that clients, and connections, asking the same peers
    /// spread over different chunks instead of queueing for the same one.
    fn rarest_held_by(&mut self, source: usize) -> Option<u32> {
        let start = (self.next_random() % self.count.max(1) as u64) as u32;
        let src = &self.sources[source];
        self.missing
            .range(start..)
            .chain(self.missing.range(..start))
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 16384;
    const MS: Duration = Duration::from_millis(1);

    impl Plan {
        /// Asserts the invariants of the module docs.
        fn check(&self) {
            for i in 0..self.count {
                let queued = self.conns.iter().any(|c| c.in_flight.contains(&i));
                let (done, missing) = (self.done.get(i), self.missing.contains(&i));
                assert!(!(done && missing), "chunk {i} both done and missing");
                assert!(!(missing && queued), "chunk {i} missing and in flight");
                assert!(done || missing || queued, "chunk {i} in no state");
            }
            assert_eq!(self.remaining, self.count - self.done.count());
            let mut copies = vec![0u32; self.count as usize];
            for s in 0..self.sources.len() {
                let counted = !self.sources[s].origin
                    && self.usable(s)
                    && !self.slow[s]
                    && self.sources[s].failures() == 0;
                assert_eq!(counted, self.counted[s], "source {s} counted wrongly");
                for i in (0..self.count).filter(|&i| counted && self.sources[s].holds(i)) {
                    copies[i as usize] += 1;
                }
            }
            assert_eq!(copies, self.copies, "availability drifted");
            for &index in self.second_why.keys() {
                assert!(
                    self.conns.iter().any(|c| c.in_flight.contains(&index)),
                    "a second request's reason kept for chunk {index} no longer in flight"
                );
            }
            for &(conn, index) in self.origin_why.keys() {
                assert!(
                    self.conns[conn].in_flight.contains(&index),
                    "a reason kept for chunk {index} no longer in flight on {conn}"
                );
            }
            for c in &self.conns {
                let mut queue: Vec<u32> = c.in_flight.iter().copied().collect();
                queue.sort_unstable();
                queue.dedup();
                assert_eq!(
                    queue.len(),
                    c.in_flight.len(),
                    "a chunk asked twice of one conn"
                );
            }
        }

        /// The fetches ordered since the last call, checking the invariants first.
        fn fetches(&mut self) -> Vec<(usize, u32)> {
            self.check();
            self.take_orders()
                .into_iter()
                .filter_map(|o| match o {
                    Order::Fetch { conn, index } => Some((conn, index)),
                    Order::Cancel { .. } => None,
                })
                .collect()
        }
    }

    fn bits(count: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
        let mut b = Bitfield::new(count);
        ones.into_iter().for_each(|i| b.set(i));
        b
    }

    /// A peer holding `have`, or everything (`None`).
    fn peer(n: u8, have: Option<Bitfield>) -> Source {
        let have = have.map_or(Holdings::All, Holdings::Known);
        Source::new(
            &format!("peer{n}"),
            &format!("10.0.0.{n}:7000"),
            false,
            have,
        )
    }

    /// A partial peer as the tracker names it: holdings unknown until its `Have`.
    fn partial_peer(n: u8) -> Source {
        Source::new(
            &format!("peer{n}"),
            &format!("10.0.0.{n}:7000"),
            false,
            Holdings::Unknown,
        )
    }

    fn origin() -> Source {
        Source::new("origin", "10.0.0.100:7001", true, Holdings::All)
    }

    fn settings(streaming: bool, window: u32, share: Option<Bitfield>) -> Settings {
        Settings {
            workers: 4,
            depth: PIPELINE_DEPTH,
            window,
            streaming,
            origin_share: share,
            seed: 7,
            stall_timeout: Duration::from_secs(60),
        }
    }

    /// A plan of 8 chunks, none held, with `sources` and no connection yet.
    fn unconnected(sources: Vec<Source>, now: Instant) -> Plan {
        let size = 8 * CHUNK as u64;
        Plan::new(
            size,
            CHUNK,
            Bitfield::new(8),
            sources,
            settings(false, 4, None),
            now,
        )
    }

    /// A plan of `count` chunks, none held, with one ready connection per source.
    fn plan_with(count: u32, sources: Vec<Source>, settings: Settings, now: Instant) -> Plan {
        let size = count as u64 * CHUNK as u64;
        let mut plan = Plan::new(size, CHUNK, Bitfield::new(count), sources, settings, now);
        for s in 0..plan.sources.len() {
            let conn = plan.open_conn(s, now);
            let have = match &plan.sources[s].have {
                Holdings::Known(have) => have.clone(),
                Holdings::All | Holdings::Unknown => Bitfield::full(count),
            };
            plan.ready(conn, have);
        }
        plan.check();
        plan
    }

    /// Delivers every fetch as soon as it is ordered until nothing more is ordered.
    fn run_to_end(plan: &mut Plan, now: Instant) -> Vec<(usize, u32)> {
        let mut all = Vec::new();
        loop {
            plan.assign(now);
            let fetches = plan.fetches();
            if fetches.is_empty() {
                return all;
            }
            for &(conn, index) in &fetches {
                plan.delivered(conn, index, now);
            }
            all.extend(fetches);
        }
    }

    #[test]
    fn rarest_first() {
        let now = Instant::now();
        let b_lacks_3 = bits(8, (0..8).filter(|&i| i != 3));
        let mut plan = plan_with(
            8,
            vec![peer(1, Some(Bitfield::full(8))), peer(2, Some(b_lacks_3))],
            settings(false, 4, None),
            now,
        );
        assert_eq!(plan.copies[3], 1);
        assert_eq!(plan.copies[0], 2);
        plan.assign(now);
        assert_eq!(
            plan.fetches()[0],
            (0, 3),
            "the chunk only one peer holds goes first"
        );
    }

    #[test]
    fn a_source_is_never_asked_for_what_it_lacks() {
        let now = Instant::now();
        let evens = bits(16, (0..16).filter(|i| i % 2 == 0));
        let odds = bits(16, (0..16).filter(|i| i % 2 == 1));
        let mut plan = plan_with(
            16,
            vec![peer(1, Some(evens)), peer(2, Some(odds))],
            settings(false, 4, None),
            now,
        );
        let all = run_to_end(&mut plan, now);
        assert_eq!(all.len(), 16);
        for (conn, index) in all {
            assert_eq!(index % 2, conn as u32, "conn {conn} asked for {index}");
        }
        assert!(plan.is_complete());
    }

    #[test]
    fn done_chunks_are_never_handed_out_again() {
        let now = Instant::now();
        let size = 8 * CHUNK as u64;
        let mut plan = Plan::new(
            size,
            CHUNK,
            bits(8, [0, 1]),
            vec![origin()],
            settings(false, 4, None),
            now,
        );
        let conn = plan.open_conn(0, now);
        plan.ready(conn, Bitfield::full(8));
        let mut fetched: Vec<u32> = run_to_end(&mut plan, now)
            .into_iter()
            .map(|f| f.1)
            .collect();
        fetched.sort_unstable();
        assert_eq!(fetched, (2..8).collect::<Vec<_>>());
        assert!(plan.is_complete());
        plan.nudge(now + Duration::from_secs(60));
        assert!(plan.fetches().is_empty());
    }

    #[test]
    fn the_depth_grows_to_a_long_round_trip_and_stays_within_its_bound() {
        let t0 = Instant::now();
        let mut plan = plan_with(4096, vec![origin()], settings(false, 4, None), t0);
        plan.round_trip(0, Duration::from_millis(50));
        let mut now = t0;
        let mut depths = Vec::new();
        // Every chunk asked comes 50 ms later, whole at once (a link much faster than
        // its round trip): each round the plan may keep more in flight.
        for _ in 0..8 {
            plan.assign(now);
            let fetches = plan.fetches();
            depths.push(fetches.len());
            now += Duration::from_millis(50);
            for &(conn, index) in &fetches {
                plan.delivered(conn, index, now);
            }
            plan.check();
        }
        assert_eq!(depths[0], PIPELINE_DEPTH, "{depths:?}");
        assert!(depths.windows(2).all(|w| w[1] <= 2 * w[0]), "{depths:?}");
        assert_eq!(
            *depths.last().unwrap(),
            super::super::depth::MAX_DEPTH,
            "{depths:?}"
        );
        assert!(
            plan.own_rtt()
                .is_some_and(|r| r >= Duration::from_millis(40))
        );
    }

    #[test]
    fn depths_four_for_the_origin_two_for_a_peer_one_under_a_cap() {
        let now = Instant::now();
        let mut plan = plan_with(
            32,
            vec![peer(1, None), origin()],
            settings(false, 4, None),
            now,
        );
        plan.update_fallback(now + Duration::from_secs(3));
        plan.assign(now);
        let fetches = plan.fetches();
        assert_eq!(fetches.iter().filter(|f| f.0 == 0).count(), 2);
        // The peer holds everything, so the origin, even with the fallback open, has
        // nothing no peer holds to send.
        assert_eq!(fetches.iter().filter(|f| f.0 == 1).count(), 0);
        let mut alone = plan_with(32, vec![origin()], settings(false, 4, None), now);
        alone.assign(now);
        assert_eq!(alone.fetches(), vec![(0, 0), (0, 1), (0, 2), (0, 3)]);
        let capped = Settings {
            depth: 1,
            ..settings(false, 4, None)
        };
        let mut capped = plan_with(32, vec![origin()], capped, now);
        capped.assign(now);
        assert_eq!(capped.fetches(), vec![(0, 0)]);
    }

    #[test]
    fn the_origin_sends_only_its_share_of_what_no_peer_holds() {
        let now = Instant::now();
        let peer_has = bits(8, 4..8);
        let share = bits(8, [0, 1, 4]);
        let mut plan = plan_with(
            8,
            vec![peer(1, Some(peer_has)), origin()],
            settings(false, 4, Some(share)),
            now,
        );
        plan.assign(now);
        let fetches = plan.fetches();
        let at_origin: Vec<u32> = fetches.iter().filter(|f| f.0 == 1).map(|f| f.1).collect();
        assert_eq!(
            at_origin,
            vec![0, 1],
            "4 is in the share but a peer holds it"
        );
        assert!(fetches.iter().filter(|f| f.0 == 0).all(|f| f.1 >= 4));
    }

    #[test]
    fn the_origin_steps_outside_its_share_once_peers_go_quiet() {
        let now = Instant::now();
        let mut plan = plan_with(
            8,
            vec![peer(1, Some(bits(8, 4..8))), origin()],
            settings(false, 4, Some(bits(8, [0, 1]))),
            now,
        );
        plan.assign(now);
        plan.fetches();
        plan.update_fallback(now + Duration::from_secs(1));
        assert!(
            plan.fetches().is_empty(),
            "1 s of silence is not yet a fallback"
        );
        plan.update_fallback(now + Duration::from_secs(3));
        let at_origin: Vec<u32> = plan
            .fetches()
            .iter()
            .filter(|f| f.0 == 1)
            .map(|f| f.1)
            .collect();
        assert_eq!(
            at_origin,
            vec![3, 2],
            "outside the share, from the top: away from what the tracker hands out next"
        );
    }

    #[test]
    fn a_lifted_share_sends_its_own_chunks_first_then_the_rest_from_the_top() {
        let now = Instant::now();
        let mut plan = plan_with(
            16,
            vec![origin()],
            settings(false, 4, Some(bits(16, [5, 9]))),
            now,
        );
        plan.update_fallback(now);
        assert!(plan.fallback_open, "no peer at all: the share is lifted");
        let order: Vec<u32> = run_to_end(&mut plan, now).iter().map(|f| f.1).collect();
        assert_eq!(&order[..2], &[5, 9], "the planned chunks first: {order:?}");
        assert_eq!(
            &order[2..6],
            &[15, 14, 13, 12],
            "then from the top: {order:?}"
        );
        assert!(plan.is_complete());
        let account = plan.origin_account();
        assert_eq!(account.share, 2 * CHUNK as u64);
        assert_eq!(account.fallback, 14 * CHUNK as u64);
    }

    #[test]
    fn an_origin_url_with_its_share_lifted_goes_down_by_blocks_rising_within_each() {
        // Falling chunks one by one would be one range request each; rising blocks from
        // the top are runs, and still leave the bottom, which the tracker hands out first.
        let now = Instant::now();
        let count = 2 * MAX_RUN_CHUNKS as u32 + 4;
        let url = Source::web("http://10.0.0.100/f.bin");
        let mut plan = plan_with(
            count,
            vec![url],
            settings(false, 4, Some(bits(count, [1]))),
            now,
        );
        plan.update_fallback(now);
        let order: Vec<u32> = run_to_end(&mut plan, now).iter().map(|f| f.1).collect();
        let block = 2 * MAX_RUN_CHUNKS as u32;
        let expected: Vec<u32> = [1]
            .into_iter()
            .chain(block..count)
            .chain(MAX_RUN_CHUNKS as u32..block)
            .chain((0..MAX_RUN_CHUNKS as u32).filter(|&i| i != 1))
            .collect();
        assert_eq!(order, expected);
        assert!(plan.is_complete());
    }

    #[test]
    fn a_stream_with_the_share_lifted_still_takes_chunks_in_order() {
        let now = Instant::now();
        let mut plan = plan_with(
            16,
            vec![origin()],
            settings(true, 4, Some(bits(16, [9]))),
            now,
        );
        plan.update_fallback(now);
        plan.assign(now);
        let first = plan.fetches();
        assert_eq!(first, vec![(0, 0)], "the reader waits for chunk 0");
        plan.delivered(0, 0, now);
        plan.set_stream_pos(1);
        plan.assign(now + Duration::from_secs(1));
        let next: Vec<u32> = plan.fetches().iter().map(|f| f.1).collect();
        assert_eq!(&next[..4], &[1, 2, 3, 4], "nearest first, not from the top");
    }

    #[test]
    fn the_origin_account_names_why_each_chunk_was_asked_of_the_origin() {
        let now = Instant::now();
        let len = CHUNK as u64;
        // The peer holds everything; the share is chunks 0-3.
        let mut plan = plan_with(
            8,
            vec![peer(1, None), origin()],
            settings(false, 4, Some(bits(8, 0..4))),
            now,
        );
        plan.assign(now);
        let first = plan.fetches();
        assert!(
            first.iter().all(|f| f.0 == 0),
            "the peer holds all: {first:?}"
        );
        // The peer fails with its requests in flight: the origin takes them again, those
        // of the share only, and says why.
        let (verdict, _) = plan.closed(0, End::Failed("reset".into()), now);
        assert!(matches!(verdict, Verdict::Retrying { .. }));
        plan.assign(now);
        let again = plan.fetches();
        let in_share: Vec<u32> = first.iter().map(|f| f.1).filter(|&i| i < 4).collect();
        assert!(!again.is_empty());
        for &(conn, index) in &again {
            assert_eq!(conn, 1);
            plan.delivered(conn, index, now);
        }
        let account = plan.origin_account();
        let retried = again.iter().filter(|f| in_share.contains(&f.1)).count() as u64;
        assert_eq!(account.retry, retried * len, "{again:?} after {first:?}");
        assert_eq!(
            account.share + account.retry,
            again.len() as u64 * len,
            "the rest of the share is the share's"
        );
        assert_eq!(account.fallback + account.unplanned, 0);
        // A second copy of a verified chunk is a duplicate, not origin bytes.
        let (conn, index) = again[0];
        plan.delivered(conn, index, now);
        assert_eq!(plan.duplicates().from_origin, len);
        assert_eq!(plan.origin_account(), account);
        plan.check();
    }

    #[test]
    fn without_a_usable_peer_the_origin_sends_everything_in_order() {
        let now = Instant::now();
        let mut plan = plan_with(
            8,
            vec![peer(1, Some(bits(8, 4..8))), origin()],
            settings(false, 4, Some(bits(8, [0]))),
            now,
        );
        plan.closed(0, End::Failed("reset".into()), now);
        plan.update_fallback(now);
        let mut all: Vec<u32> = run_to_end(&mut plan, now)
            .into_iter()
            .map(|f| f.1)
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
    }

    #[test]
    fn a_stream_starts_with_its_first_chunk_alone() {
        let now = Instant::now();
        let mut plan = plan_with(16, vec![origin()], settings(true, 4, None), now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, now);
        plan.assign(now);
        assert!(
            plan.fetches().is_empty(),
            "the reader has not taken chunk 0 yet"
        );
        plan.set_stream_pos(1);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 1), (0, 2), (0, 3), (0, 4)]);
    }

    #[test]
    fn a_slow_reader_holds_the_download_up_for_the_grace_only() {
        let now = Instant::now();
        let mut plan = plan_with(16, vec![origin()], settings(true, 4, None), now);
        plan.assign(now);
        plan.fetches();
        plan.delivered(0, 0, now);
        plan.nudge(now + 10 * MS);
        assert!(plan.fetches().is_empty());
        plan.nudge(now + 25 * MS);
        assert_eq!(plan.fetches(), vec![(0, 1), (0, 2), (0, 3), (0, 4)]);
    }

    #[test]
    fn a_stream_cached_at_its_start_asks_first_for_the_first_chunk_it_lacks() {
        let now = Instant::now();
        let mut plan = Plan::new(
            8 * CHUNK as u64,
            CHUNK,
            bits(8, [0, 1, 2]),
            vec![origin()],
            settings(true, 4, None),
            now,
        );
        let conn = plan.open_conn(0, now);
        plan.ready(conn, Bitfield::full(8));
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 3)]);
    }

    #[test]
    fn the_window_goes_first_when_streaming() {
        let now = Instant::now();
        let mut plan = plan_with(64, vec![peer(1, None)], settings(true, 4, None), now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, now);
        plan.set_stream_pos(10);
        plan.assign(now);
        assert_eq!(
            plan.fetches(),
            vec![(0, 10), (0, 11)],
            "nearest the reader first"
        );
    }

    #[test]
    fn each_reader_of_a_gateway_gets_its_window_and_a_seek_moves_one() {
        let now = Instant::now();
        let mut plan = plan_with(64, vec![peer(1, None)], settings(true, 4, None), now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, now);
        // Two readers: the one that moved last (at 40) first, the windows interleaved.
        plan.set_stream_positions(&[40, 10], now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 40), (0, 10)]);
        plan.delivered(0, 40, now);
        plan.delivered(0, 10, now);
        // The reader at 10 seeks to 50: its old window is no longer urgent.
        plan.set_stream_positions(&[50, 41], now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 50), (0, 41)]);
        // No reader left: nothing urgent, and for a second nothing else either, then the
        // download goes on.
        plan.set_stream_positions(&[], now);
        assert!(plan.urgent_for(0, now).is_none());
        plan.delivered(0, 50, now);
        plan.delivered(0, 41, now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![]);
        plan.nudge(now + READER_GRACE);
        assert_eq!(plan.fetches().len(), 2, "the background download resumes");
    }

    #[test]
    fn while_a_gateway_reader_waits_only_what_is_ahead_of_it_is_fetched() {
        let now = Instant::now();
        let mut plan = plan_with(64, vec![peer(1, None)], settings(true, 2, None), now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, now);
        plan.set_stream_positions(&[10], now);
        // Window 2 and two windows of read-ahead: chunks 10 to 15, nothing past them.
        let mut fetched = Vec::new();
        for _ in 0..8 {
            plan.assign(now);
            for (conn, index) in plan.fetches() {
                fetched.push(index);
                plan.delivered(conn, index, now);
            }
        }
        fetched.sort();
        assert_eq!(fetched, (10..16).collect::<Vec<u32>>());
    }

    #[test]
    fn the_ranges_players_read_next_come_after_the_windows_and_hold_until_they_expire() {
        let now = Instant::now();
        let mut plan = plan_with(64, vec![peer(1, None)], settings(true, 2, None), now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, now);
        // A reader at 10 (window 2, two windows of read-ahead: 10 to 15), a player's next
        // segments at 30..32 and 40..41: those after the reader's, nothing past them.
        plan.set_stream_positions(&[10], now);
        // A reversed range (never from a manifest) is taken as empty.
        let reversed = std::ops::Range { start: 70, end: 60 };
        plan.set_ahead(vec![30..32, 40..41, reversed], now + 10 * MS);
        let mut fetched = Vec::new();
        for _ in 0..8 {
            plan.assign(now);
            for (conn, index) in plan.fetches() {
                fetched.push(index);
                plan.delivered(conn, index, now);
            }
        }
        let mut expected: Vec<u32> = (10..16).collect();
        expected.extend([30, 31, 40]);
        assert_eq!(fetched, expected, "in order, the windows first");
        // The reader left and the ranges expired: after the grace the download goes on.
        plan.set_stream_positions(&[], now);
        plan.nudge(now + READER_GRACE);
        assert!(!plan.watches_lateness() || plan.ahead_until.is_none());
        assert_eq!(plan.fetches().len(), 2, "the background download resumes");
    }

    #[test]
    fn the_origin_leaves_urgent_chunks_to_punctual_peers_and_takes_them_from_late_ones() {
        let t0 = Instant::now();
        let mut plan = plan_with(
            16,
            vec![peer(1, None), origin()],
            settings(true, 4, None),
            t0,
        );
        plan.assign(t0);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, t0);
        plan.set_stream_pos(1);
        plan.assign(t0);
        assert_eq!(
            plan.fetches(),
            vec![(0, 1), (0, 2)],
            "the origin waits while the peer is on time"
        );
        // The peer delivered chunk 0 at once (0 s per byte): 100 ms later it is late.
        plan.nudge(t0 + 100 * MS);
        assert_eq!(plan.fetches(), vec![(1, 1), (1, 2), (1, 3), (1, 4)]);
        assert_eq!(
            plan.hedged(),
            2,
            "1 and 2 were hedged; 3 and 4 were missing"
        );
    }

    #[test]
    fn the_origin_reads_at_most_two_windows_ahead_of_a_stream_while_peers_deliver() {
        let now = Instant::now();
        let mut plan = plan_with(
            32,
            vec![peer(1, Some(bits(32, [0]))), origin()],
            settings(true, 1, None),
            now,
        );
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, now);
        plan.set_stream_pos(1);
        plan.assign(now);
        assert_eq!(
            plan.fetches(),
            vec![(1, 1), (1, 2)],
            "window 1 to chunk 1, horizon 3"
        );
    }

    #[test]
    fn the_endgame_hedges_a_late_chunk_and_cancels_the_slower_copy() {
        let t0 = Instant::now();
        let mut plan = plan_with(
            2,
            vec![peer(1, None), peer(2, None)],
            settings(false, 4, None),
            t0,
        );
        plan.assign(t0);
        let first = plan.fetches();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|f| f.0 == 0), "the first peer took both");
        plan.nudge(t0 + 5 * MS);
        assert!(plan.fetches().is_empty(), "nothing is late yet");
        plan.nudge(t0 + 50 * MS);
        assert_eq!(plan.fetches(), vec![(1, 0), (1, 1)]);
        assert_eq!(plan.hedged(), 2);
        let credit = plan.delivered(1, 0, t0 + 60 * MS).unwrap();
        assert_eq!(
            (credit.source, credit.origin, credit.len),
            (1, false, CHUNK as u64)
        );
        assert_eq!(
            plan.take_orders(),
            vec![Order::Cancel { conn: 0, index: 0 }]
        );
        assert_eq!(
            plan.delivered(0, 0, t0 + 70 * MS),
            None,
            "a second copy is not counted"
        );
        plan.cancelled(0, 1, t0 + 70 * MS);
        plan.delivered(1, 1, t0 + 80 * MS);
        assert!(plan.is_complete());
        plan.check();
    }

    #[test]
    fn the_endgame_duplicates_what_a_faster_peer_will_deliver_sooner() {
        let t0 = Instant::now();
        let mut plan = plan_with(
            2,
            vec![peer(1, None), peer(2, None)],
            settings(false, 4, None),
            t0,
        );
        plan.sources[0].secs_per_byte = Some(1e-6); // 16 ms a chunk
        plan.sources[1].secs_per_byte = Some(1e-9); // 16 µs a chunk
        plan.assign(t0);
        let fetches = plan.fetches();
        let to_slow = fetches.iter().filter(|f| f.0 == 0).count();
        let to_fast: Vec<u32> = fetches.iter().filter(|f| f.0 == 1).map(|f| f.1).collect();
        assert_eq!(to_slow, 2);
        assert_eq!(
            to_fast,
            vec![0, 1],
            "expected 16 µs here against 16 and 32 ms there"
        );
    }

    #[test]
    fn an_origin_in_the_endgame_takes_only_late_chunks() {
        let t0 = Instant::now();
        let mut plan = plan_with(
            2,
            vec![peer(1, None), origin()],
            settings(false, 4, None),
            t0,
        );
        plan.sources[0].secs_per_byte = Some(1e-6);
        plan.sources[1].secs_per_byte = Some(1e-9);
        plan.assign(t0);
        let at_peer = plan.fetches();
        assert!(at_peer.iter().all(|f| f.0 == 0));
        let (head, second) = (at_peer[0].1, at_peer[1].1);
        // 2 x 16 ms x 1 + 10 ms = 42.8 ms for the head; 75.6 ms for the second.
        plan.nudge(t0 + 40 * MS);
        assert!(
            plan.fetches().is_empty(),
            "the origin does not race a punctual peer"
        );
        plan.nudge(t0 + 50 * MS);
        assert_eq!(plan.fetches(), vec![(1, head)]);
        plan.nudge(t0 + 80 * MS);
        assert_eq!(plan.fetches(), vec![(1, second)]);
    }

    #[test]
    fn a_lying_source_loses_its_chunks_and_is_never_asked_again() {
        let now = Instant::now();
        let mut plan = plan_with(
            8,
            vec![peer(1, None), peer(2, None)],
            settings(false, 4, None),
            now,
        );
        plan.assign(now);
        let first = plan.fetches();
        let lost: Vec<u32> = first.iter().filter(|f| f.0 == 0).map(|f| f.1).collect();
        assert_eq!(lost.len(), 2);
        let (verdict, complaint) = plan.closed(
            0,
            End::Lied("sent chunk 1 with the wrong SHA-256".into()),
            now,
        );
        assert_eq!(
            verdict,
            Verdict::Dropped {
                error: "sent chunk 1 with the wrong SHA-256".into(),
                newly: true
            }
        );
        assert_eq!(complaint, Some(Complaint::Corrupt));
        assert!(lost.iter().all(|i| plan.missing.contains(i)));
        assert_eq!(plan.copies[0], 1, "the liar's copies no longer count");
        for &(conn, index) in first.iter().filter(|f| f.0 == 1) {
            plan.delivered(conn, index, now);
        }
        let rest = run_to_end(&mut plan, now);
        assert!(rest.iter().all(|f| f.0 == 1));
        assert!(lost.iter().all(|i| rest.iter().any(|f| f.1 == *i)));
        assert!(plan.is_complete());
    }

    #[test]
    fn availability_moves_by_the_bits_that_change() {
        let now = Instant::now();
        let mut plan = plan_with(
            16,
            vec![peer(1, Some(bits(16, 0..8))), peer(2, None), origin()],
            settings(false, 4, None),
            now,
        );
        assert_eq!((plan.copies[0], plan.copies[8], plan.copies[15]), (2, 1, 1));
        plan.ready(0, bits(16, 0..10));
        plan.check();
        assert_eq!((plan.copies[8], plan.copies[9], plan.copies[10]), (2, 2, 1));
        plan.ready(0, bits(16, 2..10));
        plan.check();
        assert_eq!((plan.copies[0], plan.copies[2]), (1, 2));
        plan.refused(1, 8, now);
        plan.check();
        assert_eq!(plan.copies[8], 1);
        plan.refused(1, 8, now);
        assert_eq!(plan.copies[8], 1, "a second refusal changes nothing");
        plan.closed(1, End::Failed("reset".into()), now);
        plan.check();
        assert_eq!((plan.copies[8], plan.copies[10], plan.copies[2]), (1, 0, 1));
        assert!(
            plan.copies.iter().all(|&c| c <= 1),
            "the origin never counts"
        );
    }

    #[test]
    fn a_refused_chunk_goes_to_another_source() {
        let now = Instant::now();
        let mut plan = plan_with(
            1,
            vec![peer(1, None), peer(2, None)],
            settings(false, 4, None),
            now,
        );
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.refused(0, 0, now);
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(1, 0)]);
        plan.refused(1, 0, now);
        plan.assign(now);
        assert!(plan.fetches().is_empty());
        assert!(plan.stuck().unwrap().contains("1 of 1 chunks (first: 0)"));
    }

    #[test]
    fn a_busy_source_is_paused_then_tried_again() {
        let now = Instant::now();
        let mut plan = plan_with(4, vec![origin()], settings(false, 4, None), now);
        let (verdict, complaint) = plan.closed(0, End::Busy("no free slot".into()), now);
        assert_eq!(
            verdict,
            Verdict::Retrying {
                first: true,
                error: "no free slot".into()
            }
        );
        assert_eq!(complaint, None);
        assert_eq!(plan.stuck(), None, "a paused source may still deliver");
        plan.reconnect_due(now);
        assert_eq!(plan.conns().len(), 1, "the pause is at least 125 ms");
        plan.reconnect_due(now + Duration::from_secs(5));
        assert_eq!(plan.conns().len(), 2);
        assert!(plan.conns()[1].is_open());
        plan.check();
    }

    #[test]
    fn a_failing_source_is_retried_for_ever_and_only_a_liar_is_dropped() {
        let now = Instant::now();
        let mut plan = plan_with(
            4,
            vec![peer(1, None), origin()],
            settings(false, 4, None),
            now,
        );
        let ends = [
            End::Unreachable("unreachable timed out after 5s".into()),
            End::Failed("stalled: no handshake within 2s".into()),
            End::Failed("closed the connection with chunk 3 due".into()),
            End::Busy("no free slot".into()),
        ];
        let mut t = now;
        for source in [0, 1] {
            for attempt in 0..40 {
                let conn = (0..plan.conns().len())
                    .rfind(|&c| plan.conns()[c].source == source && plan.conns()[c].is_open())
                    .expect("a connection to the source");
                let end = ends[attempt % ends.len()].clone();
                let (verdict, _) = plan.closed(conn, end, t);
                assert!(
                    matches!(verdict, Verdict::Retrying { first, .. } if first == (attempt == 0)),
                    "attempt {attempt}: {verdict:?}"
                );
                assert_eq!(plan.stuck(), None, "a paused source may still deliver");
                // Every pause is over within the longest one (16 s).
                t += Duration::from_secs(17);
                plan.reconnect_due(t);
                plan.check();
            }
            assert!(plan.sources()[source].dropped.is_none());
            assert_eq!(plan.sources()[source].failed, 40);
        }
        let conn = (0..plan.conns().len())
            .rfind(|&c| plan.conns()[c].source == 0 && plan.conns()[c].is_open())
            .unwrap();
        let (verdict, complaint) = plan.closed(conn, End::Lied("sent chunk 9 unasked".into()), t);
        assert!(matches!(verdict, Verdict::Dropped { newly: true, .. }));
        assert_eq!(complaint, Some(Complaint::Corrupt));
        plan.check();
    }

    #[test]
    fn a_peer_whose_first_connects_fail_is_not_given_up_before_its_have_is_known() {
        let now = Instant::now();
        let mut plan = Plan::new(
            4 * CHUNK as u64,
            CHUNK,
            Bitfield::new(4),
            vec![partial_peer(1)],
            Settings {
                workers: 1,
                ..settings(false, 4, None)
            },
            now,
        );
        plan.open_initial(now);
        let mut t = now;
        for _ in 0..10 {
            let conn = plan.conns().len() - 1;
            let (verdict, _) = plan.closed(
                conn,
                End::Unreachable("unreachable timed out after 2s".into()),
                t,
            );
            assert!(matches!(verdict, Verdict::Retrying { .. }));
            assert_eq!(plan.stuck(), None, "paused, holdings unknown");
            t += Duration::from_secs(17);
            plan.reconnect_due(t);
            assert_eq!(plan.stuck(), None, "connecting again");
        }
        let conn = plan.conns().len() - 1;
        plan.ready(conn, bits(4, [0]));
        plan.assign(t);
        let (c, index) = plan.fetches()[0];
        plan.delivered(c, index, t);
        assert!(plan.stuck().is_some(), "known now: it lacks chunks 1-3");
        plan.check();
    }

    #[test]
    fn the_download_gives_up_only_when_no_chunk_arrived_for_the_stall_timeout() {
        let t0 = Instant::now();
        let stall = Settings {
            stall_timeout: Duration::from_secs(3),
            ..settings(false, 4, None)
        };
        let mut plan = plan_with(8, vec![peer(1, None), origin()], stall, t0);
        plan.assign(t0);
        let fetches = plan.fetches();
        assert_eq!(plan.stalled(t0 + 2900 * MS), None);
        plan.delivered(fetches[0].0, fetches[0].1, t0 + 2 * Duration::from_secs(1));
        assert_eq!(plan.stalled(t0 + 4900 * MS), None, "the clock restarts");
        let (verdict, _) = plan.closed(
            0,
            End::Unreachable("unreachable timed out after 2s".into()),
            t0 + 3 * Duration::from_secs(1),
        );
        assert!(matches!(verdict, Verdict::Retrying { .. }));
        // Paused, the peer is tried again within a third of the timeout.
        let retry = plan.sources()[0].retry_at.unwrap();
        assert!(retry <= t0 + 4 * Duration::from_secs(1), "{retry:?}");
        let error = plan.stalled(t0 + 5100 * MS).expect("stalled");
        assert!(
            error.starts_with(
                "no further chunk arrived for 3s (the stall timeout), 7 of 8 chunks missing"
            ),
            "{error}"
        );
        assert!(
            error.contains(
                "peer 10.0.0.1:7000: 1 connection tried, 1 failed, 1 chunk delivered, last failure: unreachable timed out after 2s"
            ),
            "{error}"
        );
        assert!(
            error.contains("origin 10.0.0.100:7001: 2 connections tried, 0 failed"),
            "{error}"
        );
        assert!(error.contains("--stall-timeout"), "{error}");
        plan.check();
    }

    #[test]
    fn a_download_cap_stretches_the_stall_timeout_to_two_chunks_at_the_cap() {
        let minute = Duration::from_secs(60);
        assert_eq!(stall_bound(minute, 262_144, None), minute);
        assert_eq!(stall_bound(minute, 262_144, Some(0)), minute);
        assert_eq!(stall_bound(minute, 262_144, Some(1 << 20)), minute);
        assert_eq!(
            stall_bound(minute, 262_144, Some(1024)),
            Duration::from_secs(512)
        );
    }

    #[test]
    fn the_peer_that_delivers_least_gives_its_slot_to_a_waiting_one_every_period() {
        let t0 = Instant::now();
        let peers: Vec<Source> = (1..=8).map(|n| peer(n, None)).collect();
        let mut plan = plan_with(64, peers, settings(false, 4, None), t0);
        assert_eq!(plan.open_peer_conns(), MAX_PEER_CONNS);
        plan.take_swarm(vec![partial_peer(20)], None, t0);
        assert_eq!(plan.pending, [8]);
        // Peers 1-7 deliver; peer 8 holds its requests and sends nothing.
        let delivering = |plan: &mut Plan, at: Instant| {
            plan.assign(at);
            for (conn, index) in plan.fetches() {
                if plan.conns()[conn].source != 7 {
                    plan.delivered(conn, index, at);
                }
            }
        };
        delivering(&mut plan, t0 + Duration::from_secs(1));
        assert_eq!(
            plan.rotate_peers(t0 + 4 * Duration::from_secs(1)),
            None,
            "too soon"
        );
        delivering(&mut plan, t0 + Duration::from_secs(4));
        assert_eq!(plan.rotate_peers(t0 + ROTATE_EVERY), Some(7));
        assert!(
            plan.conns().iter().all(|c| c.source != 7 || !c.is_open()),
            "the idle peer's slot is taken"
        );
        let newest = plan.conns().last().unwrap();
        assert_eq!((newest.source, newest.is_open()), (8, true));
        assert_eq!(plan.pending, [7], "it waits at the back for another turn");
        assert_eq!(plan.open_peer_conns(), MAX_PEER_CONNS);
        plan.check();
        // The newcomer has not had a whole period; the others delivered alike: no rotation.
        let t1 = t0 + ROTATE_EVERY;
        for n in 1..=3 {
            delivering(&mut plan, t1 + Duration::from_secs(n));
        }
        assert_eq!(plan.rotate_peers(t1 + ROTATE_EVERY), None);
        plan.check();
    }

    #[test]
    fn a_waiting_peer_that_keeps_failing_queues_behind_newcomers() {
        let now = Instant::now();
        let peers: Vec<Source> = (1..=8).map(|n| peer(n, None)).collect();
        let mut plan = plan_with(8, peers, settings(false, 4, None), now);
        // Peer 1 fails twice in a row, peer 2 once; both wait for a slot again.
        plan.closed(0, End::Failed("reset".into()), now);
        plan.reconnect_due(now + Duration::from_secs(20));
        let again = plan.conns().len() - 1;
        plan.closed(again, End::Failed("reset".into()), now);
        plan.closed(1, End::Failed("reset".into()), now);
        // Both slots are taken by newcomers meanwhile.
        plan.take_swarm(vec![partial_peer(20), partial_peer(21)], None, now);
        plan.take_swarm(vec![partial_peer(22)], None, now);
        plan.reconnect_due(now + Duration::from_secs(60));
        let order: Vec<&str> = plan
            .pending
            .iter()
            .map(|&s| plan.sources()[s].addr.as_str())
            .collect();
        assert_eq!(order, ["10.0.0.22:7000", "10.0.0.2:7000", "10.0.0.1:7000"]);
        plan.check();
    }

    #[test]
    fn an_unreachable_peer_is_reported_retried_and_an_origin_takes_its_place() {
        let now = Instant::now();
        let size = 8 * CHUNK as u64;
        let two = Settings {
            workers: 2,
            ..settings(false, 4, None)
        };
        let mut plan = Plan::new(
            size,
            CHUNK,
            Bitfield::new(8),
            vec![peer(1, None), origin()],
            two,
            now,
        );
        plan.open_initial(now);
        assert_eq!(
            plan.conns().iter().map(|c| c.source).collect::<Vec<_>>(),
            vec![0, 0, 1]
        );
        let (verdict, complaint) =
            plan.closed(0, End::Unreachable("connection refused".into()), now);
        assert!(matches!(verdict, Verdict::Retrying { first: true, .. }));
        assert_eq!(complaint, Some(Complaint::Unreachable));
        assert!(plan.conns()[1].is_open(), "its other connection may work");
        let (verdict, complaint) =
            plan.closed(1, End::Unreachable("connection refused".into()), now);
        assert!(matches!(verdict, Verdict::Retrying { first: false, .. }));
        assert_eq!(complaint, None, "reported once per run of failures");
        assert_eq!(plan.conns().len(), 4);
        assert_eq!(
            plan.conns()[3].source,
            1,
            "an origin connection replaces the lost ones"
        );
        let (verdict, complaint) = plan.closed(2, End::Unreachable("refused".into()), now);
        assert!(matches!(verdict, Verdict::Retrying { .. }));
        assert_eq!(complaint, None, "the origin is retried, not reported");
        assert!(plan.sources().iter().all(|s| s.dropped.is_none()));
        plan.check();
    }

    #[test]
    fn a_store_failure_stops_the_download() {
        let now = Instant::now();
        let mut plan = plan_with(4, vec![origin()], settings(false, 4, None), now);
        plan.assign(now);
        plan.fetches();
        let (verdict, _) = plan.closed(0, End::Local("the disk is full".into()), now);
        assert_eq!(verdict, Verdict::Fatal("the disk is full".into()));
        plan.check();
    }

    #[test]
    fn new_peers_join_once_and_retire_the_extra_origin_connections() {
        let now = Instant::now();
        let mut plan = unconnected(vec![origin()], now);
        plan.open_initial(now);
        assert_eq!(plan.conns().len(), 4, "an origin alone gets every worker");
        plan.take_swarm(
            vec![origin(), peer(1, Some(bits(8, [1])))],
            Some(bits(8, [0])),
            now,
        );
        assert_eq!(
            plan.sources().len(),
            2,
            "a known address is not added twice"
        );
        assert_eq!(plan.conns().len(), 5);
        let open: Vec<bool> = plan.conns().iter().map(Conn::is_open).collect();
        assert_eq!(open, vec![true, false, false, false, true]);
        assert_eq!(plan.origin_share, Some(bits(8, [0])));
        plan.take_swarm(Vec::new(), None, now);
        assert_eq!(
            plan.origin_share,
            Some(bits(8, [0])),
            "no share named: the old holds"
        );
        plan.check();
    }

    #[test]
    fn a_starved_connection_waits_for_something_to_change() {
        let now = Instant::now();
        let mut plan = plan_with(
            8,
            vec![peer(1, Some(bits(8, [0])))],
            settings(false, 4, None),
            now,
        );
        plan.assign(now);
        assert_eq!(plan.fetches(), vec![(0, 0)]);
        plan.delivered(0, 0, now);
        plan.assign(now);
        assert!(plan.fetches().is_empty());
        assert_eq!(plan.conns[0].starved_at, Some(plan.epoch));
        plan.ready(0, bits(8, [0, 5]));
        plan.assign(now);
        assert_eq!(
            plan.fetches(),
            vec![(0, 5)],
            "its new chunk is asked for at once"
        );
    }

    #[test]
    fn partial_peers_of_unknown_holdings_are_connected_and_learnt_on_connect() {
        let now = Instant::now();
        let mut plan = unconnected(vec![partial_peer(1), partial_peer(2), origin()], now);
        plan.open_initial(now);
        let peers_connected: Vec<usize> = plan.conns().iter().map(|c| c.source).collect();
        assert_eq!(
            peers_connected,
            vec![0, 0, 1, 1, 2],
            "each partial peer gets its share of the workers, the origin one"
        );
        plan.check();
        assert!(
            plan.copies.iter().all(|&c| c == 0),
            "unknown holds nothing yet"
        );
        // The first peer's Have arrives: it holds 0-3, and the origin leaves those to it.
        plan.ready(0, bits(8, 0..4));
        plan.ready(4, Bitfield::full(8));
        plan.check();
        assert_eq!(&plan.copies[..5], &[1, 1, 1, 1, 0]);
        plan.assign(now);
        let fetches = plan.fetches();
        assert!(
            fetches.iter().all(|&(conn, i)| (conn == 0) == (i < 4)),
            "{fetches:?}"
        );
        assert_eq!(
            fetches
                .iter()
                .filter(|f| f.0 == 4)
                .map(|f| f.1)
                .collect::<Vec<_>>(),
            vec![4, 5, 6, 7]
        );
    }

    #[test]
    fn a_gained_chunk_counts_once_and_wakes_a_starved_connection() {
        let now = Instant::now();
        let mut plan = plan_with(
            8,
            vec![peer(1, Some(bits(8, [0]))), peer(2, Some(bits(8, [0])))],
            settings(false, 4, None),
            now,
        );
        plan.assign(now);
        let first = plan.fetches();
        assert_eq!(first.len(), 1);
        plan.delivered(first[0].0, 0, now);
        plan.assign(now);
        assert!(plan.fetches().is_empty());
        let starved = plan.epoch;
        assert_eq!(plan.conns[1].starved_at, Some(starved));
        plan.gained(1, &[6, 6, 99]);
        plan.check();
        assert_eq!(
            plan.copies[6], 1,
            "a repeat and an index out of range change nothing"
        );
        assert!(plan.epoch > starved);
        plan.gained(1, &[6]);
        assert_eq!(plan.epoch, starved + 1, "news only bumps the epoch");
        plan.assign(now);
        assert_eq!(
            plan.fetches(),
            vec![(1, 6)],
            "asked at once of the peer that gained it"
        );
        // A refused chunk the source gains later is held again.
        plan.refused(1, 6, now);
        plan.check();
        assert_eq!(plan.copies[6], 0);
        plan.gained(1, &[6]);
        plan.check();
        assert_eq!(plan.copies[6], 1);
    }

    #[test]
    fn a_gain_before_the_have_and_a_gain_at_an_unusable_source_keep_the_counts() {
        let now = Instant::now();
        let mut plan = unconnected(vec![partial_peer(1), partial_peer(2)], now);
        let (a, b) = (plan.open_conn(0, now), plan.open_conn(1, now));
        // Pushed before the Have that answers the handshake: taken in all the same.
        plan.gained(a, &[3]);
        plan.check();
        assert_eq!(plan.copies[3], 1);
        plan.ready(a, bits(8, [3, 4]));
        plan.ready(b, bits(8, [4]));
        plan.check();
        assert_eq!((plan.copies[3], plan.copies[4]), (1, 2));
        // A dropped source's pushes still in the channel count nothing.
        plan.closed(b, End::Failed("reset".into()), now);
        plan.check();
        plan.gained(b, &[5]);
        plan.check();
        assert_eq!((plan.copies[4], plan.copies[5]), (1, 0));
    }

    #[test]
    fn a_failed_peer_counts_for_nothing_until_it_delivers_again() {
        let now = Instant::now();
        let mut plan = plan_with(4, vec![peer(1, None)], settings(false, 4, None), now);
        assert_eq!(plan.copies, vec![1; 4]);
        let (verdict, _) = plan.closed(0, End::Busy("no free slot".into()), now);
        assert!(matches!(verdict, Verdict::Retrying { .. }));
        plan.check();
        assert_eq!(
            plan.copies,
            vec![0; 4],
            "its chunks do not hold the origin back"
        );
        assert_eq!(plan.stuck(), None, "paused, it may still deliver");
        plan.reconnect_due(now + Duration::from_secs(60));
        let conn = plan.conns().len() - 1;
        plan.ready(conn, Bitfield::full(4));
        plan.check();
        assert_eq!(plan.copies, vec![0; 4], "connected again, not yet proven");
        plan.assign(now);
        let (c, index) = plan.fetches()[0];
        plan.delivered(c, index, now);
        plan.check();
        assert_eq!(plan.copies[(index as usize + 1) % 4], 1, "healthy again");
    }

    /// A peer the tracker says is complete: its own claim, holdings unknown.
    fn claimed(n: u8) -> Source {
        let mut source = partial_peer(n);
        source.said_complete = true;
        source
    }

    #[test]
    fn a_peer_said_complete_holds_nothing_until_its_have_says_so() {
        let now = Instant::now();
        let mut plan = Plan::new(
            4 * CHUNK as u64,
            CHUNK,
            Bitfield::new(4),
            vec![claimed(1), origin()],
            settings(false, 4, None),
            now,
        );
        plan.open_initial(now);
        plan.ready(4, Bitfield::full(4));
        plan.check();
        assert_eq!(plan.copies, vec![0; 4], "a claim is not a holding");
        plan.assign(now);
        assert_eq!(
            plan.fetches(),
            vec![(4, 0), (4, 1), (4, 2), (4, 3)],
            "the origin does not wait for the claim"
        );
        plan.ready(0, bits(4, [1]));
        plan.check();
        assert_eq!(plan.copies, vec![0, 1, 0, 0], "its Have says what it holds");
    }

    #[test]
    fn peer_connections_are_capped_and_waiting_peers_take_the_slots_that_free_up() {
        let now = Instant::now();
        let first: Vec<Source> = (1..=12).map(partial_peer).chain([origin()]).collect();
        let mut plan = unconnected(first, now);
        assert_eq!(
            plan.sources().len(),
            NEW_PEERS_PER_ANSWER + 1,
            "the first answer's first peers, and the origin"
        );
        plan.open_initial(now);
        assert_eq!(plan.open_peer_conns(), MAX_PEER_CONNS);
        plan.take_swarm((20..40).map(partial_peer).collect(), None, now);
        assert_eq!(plan.open_peer_conns(), MAX_PEER_CONNS, "no slot is free");
        assert_eq!(plan.pending.len(), NEW_PEERS_PER_ANSWER, "the rest is left");
        plan.take_swarm((40..60).map(partial_peer).collect(), None, now);
        assert_eq!(
            plan.pending.len(),
            NEW_PEERS_PER_ANSWER,
            "the queue is bounded"
        );
        plan.check();
        // A peer that stalls in its handshake is paused; a waiting one takes its slot.
        let (verdict, _) = plan.closed(0, End::Failed("stalled: no handshake".into()), now);
        assert!(matches!(verdict, Verdict::Retrying { .. }));
        assert_eq!(plan.open_peer_conns(), MAX_PEER_CONNS);
        let newest = plan.conns().last().unwrap().source;
        assert_eq!(plan.sources()[newest].addr, "10.0.0.20:7000");
        // A busy peer waits for a slot again rather than reconnecting past the cap.
        plan.closed(1, End::Busy("no free slot".into()), now);
        plan.reconnect_due(now + Duration::from_secs(60));
        assert_eq!(plan.open_peer_conns(), MAX_PEER_CONNS);
        plan.check();
    }

    #[test]
    fn peers_that_hang_up_are_replaced_from_the_rest_of_the_answer_at_once() {
        // Issue 13's fakes: the first 8 peers an answer names accept and close at once.
        let now = Instant::now();
        let first: Vec<Source> = (1..=20).map(partial_peer).chain([origin()]).collect();
        let mut plan = unconnected(first, now);
        plan.open_initial(now);
        let open_peers = |plan: &Plan| -> Vec<String> {
            plan.conns()
                .iter()
                .filter(|c| c.open && !plan.sources()[c.source].origin)
                .map(|c| plan.sources()[c.source].addr.clone())
                .collect()
        };
        let addrs = |ns: std::ops::RangeInclusive<u8>| -> Vec<String> {
            ns.map(|n| format!("10.0.0.{n}:7000")).collect()
        };
        assert_eq!(open_peers(&plan), addrs(1..=8));
        for conn in 0..plan.conns().len() {
            if plan.conns()[conn].open && !plan.sources()[plan.conns()[conn].source].origin {
                let (verdict, _) = plan.closed(conn, End::Failed("closed at once".into()), now);
                assert!(matches!(verdict, Verdict::Retrying { .. }));
            }
        }
        assert_eq!(
            open_peers(&plan),
            addrs(9..=16),
            "the next 8 the answer named take the slots, without waiting for another answer"
        );
        plan.check();
        // A new answer replaces the reserve: peers named once, long ago, are not kept.
        plan.take_swarm((30..=50).map(partial_peer).collect(), None, now);
        let reserve: Vec<String> = plan.reserve.iter().map(|s| s.addr.clone()).collect();
        assert_eq!(reserve, addrs(38..=50));
        plan.check();
    }

    #[test]
    fn an_answer_gives_at_most_its_share_of_new_peers_those_said_complete_first() {
        let now = Instant::now();
        let mut plan = plan_with(4, vec![origin()], settings(false, 4, None), now);
        let mut answer: Vec<Source> = (1..=12).map(partial_peer).collect();
        answer.extend((13..=16).map(claimed));
        plan.take_swarm(answer, None, now);
        let taken: Vec<&str> = plan.sources()[1..]
            .iter()
            .map(|s| s.addr.as_str())
            .collect();
        assert_eq!(taken.len(), NEW_PEERS_PER_ANSWER);
        assert_eq!(
            &taken[..5],
            &[
                "10.0.0.13:7000",
                "10.0.0.14:7000",
                "10.0.0.15:7000",
                "10.0.0.16:7000",
                "10.0.0.1:7000"
            ],
            "said complete first, then in the tracker's order"
        );
        plan.check();
    }

    #[test]
    fn a_slow_peer_is_counted_out_keeps_one_request_and_its_chunks_go_to_the_origin() {
        let t0 = Instant::now();
        let mut plan = plan_with(
            8,
            vec![peer(1, None), origin()],
            settings(false, 4, None),
            t0,
        );
        plan.sources[1].secs_per_byte = Some(1e-9); // 16 µs a chunk
        plan.assign(t0);
        let at_peer = plan.fetches();
        assert_eq!(
            at_peer.len(),
            2,
            "the peer holds everything: the origin waits"
        );
        assert!(at_peer.iter().all(|f| f.0 == 0));
        plan.update_pace(t0 + 40 * MS);
        assert!(
            plan.fetches().is_empty(),
            "under 50 ms, any peer is worth waiting for"
        );
        plan.update_pace(t0 + 60 * MS);
        plan.check();
        assert!(plan.slow[0]);
        assert_eq!(
            plan.copies,
            vec![0; 8],
            "its holdings hold the origin back no more"
        );
        let rescue = plan.fetches();
        let mut held: Vec<u32> = at_peer.iter().map(|f| f.1).collect();
        held.sort_unstable();
        assert_eq!(rescue.len(), 4, "{rescue:?}");
        assert!(
            rescue.iter().all(|f| f.0 == 1),
            "the slow peer takes nothing: {rescue:?}"
        );
        assert!(
            rescue.iter().all(|f| !held.contains(&f.1)),
            "what is missing goes first; the slow peer's chunks wait for the endgame"
        );
        assert_eq!(plan.hedged(), 0);
        // The origin delivers at once, then takes the last two missing chunks, and only
        // then, nothing being missing, the two late at the slow peer.
        for &(conn, index) in &rescue {
            plan.delivered(conn, index, t0 + 110 * MS);
        }
        plan.assign(t0 + 110 * MS);
        let last = plan.fetches();
        assert_eq!(last.len(), 4, "{last:?}");
        assert!(last.iter().all(|f| f.0 == 1));
        assert!(
            held.iter().all(|i| last[2..].iter().any(|f| f.1 == *i)),
            "the last two missing first, then the endgame rescues the slow peer's: {last:?}"
        );
        for &(conn, index) in &last {
            plan.delivered(conn, index, t0 + 110 * MS);
        }
        assert_eq!(plan.hedged(), 2);
        // The slow peer's late copies still measure it (it stays slow), and count as
        // duplicates of the rescues.
        assert!(plan.is_complete());
        plan.delivered(0, at_peer[0].1, t0 + 220 * MS);
        plan.delivered(0, at_peer[1].1, t0 + 330 * MS);
        plan.update_pace(t0 + 330 * MS);
        assert!(plan.slow[0]);
        assert_eq!(plan.duplicates().why.rescue, 2 * CHUNK as u64);
        plan.check();
    }

    #[test]
    fn a_lone_peer_is_never_slow_and_against_an_origin_only_32_times_its_pace_is() {
        let t0 = Instant::now();
        let mut alone = plan_with(8, vec![peer(1, None)], settings(false, 4, None), t0);
        alone.assign(t0);
        alone.fetches();
        alone.update_pace(t0 + Duration::from_secs(5));
        assert!(!alone.slow[0], "there is nothing faster to turn to");
        let mut plan = plan_with(
            8,
            vec![peer(1, None), origin()],
            settings(false, 4, None),
            t0,
        );
        plan.sources[1].secs_per_byte = Some(1e-6); // 16 ms a chunk: 32 x 16 ms = 524 ms
        plan.assign(t0);
        plan.fetches();
        plan.update_pace(t0 + 500 * MS);
        assert!(!plan.slow[0], "within 32 times the origin's pace");
        plan.update_pace(t0 + 540 * MS);
        assert!(plan.slow[0]);
        plan.check();
    }

    #[test]
    fn peers_ten_times_slower_than_the_origin_but_even_among_themselves_are_not_slow() {
        let t0 = Instant::now();
        let mut plan = plan_with(
            8,
            vec![peer(1, None), peer(2, None), origin()],
            settings(false, 4, None),
            t0,
        );
        plan.sources[0].secs_per_byte = Some(4e-6); // 65 ms a chunk
        plan.sources[1].secs_per_byte = Some(4e-6);
        plan.sources[2].secs_per_byte = Some(4e-7); // 6.5 ms a chunk
        plan.assign(t0);
        plan.fetches();
        plan.update_pace(t0 + 60 * MS);
        assert!(
            !plan.slow[0] && !plan.slow[1],
            "a host's uplink is not a server's: 10 times the origin's pace is sound"
        );
        plan.sources[1].secs_per_byte = Some(4e-5); // 655 ms a chunk: 10 x its fellow
        plan.update_pace(t0 + 60 * MS);
        assert!(
            !plan.slow[0] && plan.slow[1],
            "10 times its fellow, 100 times the origin: slow"
        );
        plan.check();
    }

    #[test]
    fn an_empty_share_stands_only_while_a_peer_delivers() {
        let t0 = Instant::now();
        // The tracker planned nothing from the origin: it believes peers hold everything,
        // because this one announced `complete`.
        let empty = settings(false, 4, Some(Bitfield::new(8)));
        let mut claimer = peer(1, Some(bits(8, 0..4)));
        claimer.said_complete = true;
        let mut plan = plan_with(8, vec![claimer, origin()], empty, t0);
        plan.assign(t0);
        let at_peer = plan.fetches();
        assert!(at_peer.iter().all(|f| f.0 == 0));
        plan.update_fallback(t0 + 30 * MS);
        assert!(plan.fetches().is_empty(), "within the grace");
        plan.delivered(0, at_peer[0].1, t0 + 40 * MS);
        plan.update_fallback(t0 + 80 * MS);
        assert!(
            plan.fetches().iter().all(|f| f.0 == 0),
            "a peer delivered 40 ms ago: the share stands"
        );
        plan.update_fallback(t0 + 100 * MS);
        let at_origin: Vec<u32> = plan
            .fetches()
            .iter()
            .filter(|f| f.0 == 1)
            .map(|f| f.1)
            .collect();
        assert_eq!(
            at_origin,
            vec![7, 6, 5, 4],
            "what no peer holds, once they go quiet (from the top)"
        );
        assert_eq!(
            plan.conns()
                .iter()
                .filter(|c| c.source == 1 && c.open)
                .count(),
            4,
            "the origin gets every worker while the share is lifted"
        );
        plan.check();
    }

    #[test]
    fn an_empty_share_with_no_claim_of_completeness_is_the_plan_and_stands() {
        let t0 = Instant::now();
        // Every free chunk was planned for other downloaders, and no peer claims to be
        // complete: the share is empty by design, and falling back would send twice.
        let empty = settings(false, 4, Some(Bitfield::new(8)));
        let mut plan = plan_with(8, vec![peer(1, Some(bits(8, 0..4))), origin()], empty, t0);
        plan.assign(t0);
        plan.update_fallback(t0 + 500 * MS);
        assert!(!plan.awaits_proof());
        assert!(
            plan.fetches().iter().all(|f| f.0 == 0),
            "no claim to prove: the share stands past the proof grace"
        );
        plan.update_fallback(t0 + FALLBACK_AFTER + 10 * MS);
        assert!(
            plan.fetches().iter().any(|f| f.0 == 1),
            "peers quiet for the fallback time: the origin sends what no peer holds"
        );
        plan.check();
    }

    #[test]
    fn an_origin_rescues_from_a_slow_peer_only_what_its_share_allows() {
        let t0 = Instant::now();
        let share = settings(false, 4, Some(bits(8, [7])));
        let mut plan = plan_with(
            8,
            vec![peer(1, None), peer(2, Some(bits(8, 4..8))), origin()],
            share,
            t0,
        );
        plan.sources[2].secs_per_byte = Some(1e-9);
        plan.assign(t0);
        let first = plan.fetches();
        let at_slow: Vec<u32> = first.iter().filter(|f| f.0 == 0).map(|f| f.1).collect();
        assert!(
            at_slow.iter().all(|&i| i < 4),
            "the rarest go to the peer holding all"
        );
        for &(conn, index) in first.iter().filter(|f| f.0 == 1) {
            plan.delivered(conn, index, t0 + MS);
        }
        plan.update_pace(t0 + 60 * MS);
        plan.check();
        assert!(plan.slow[0] && !plan.slow[1]);
        assert!(
            plan.fetches().iter().all(|f| f.0 == 1),
            "peers deliver: the origin keeps to its share, and peer 2 lacks chunks 0-3"
        );
        plan.update_fallback(t0 + Duration::from_secs(3));
        let rescued: Vec<u32> = plan
            .fetches()
            .iter()
            .filter(|f| f.0 == 2)
            .map(|f| f.1)
            .collect();
        assert!(
            at_slow.iter().all(|i| rescued.contains(i)),
            "with the share lifted the origin rescues: {rescued:?} of {at_slow:?}"
        );
        plan.check();
    }

    #[test]
    fn claimed_peers_that_never_shake_hands_hold_an_empty_share_for_the_grace_only() {
        let t0 = Instant::now();
        let mut plan = Plan::new(
            4 * CHUNK as u64,
            CHUNK,
            Bitfield::new(4),
            vec![claimed(1), claimed(2), origin()],
            settings(false, 4, Some(Bitfield::new(4))),
            t0,
        );
        plan.open_initial(t0);
        let origin_conn = plan.conns().len() - 1;
        plan.ready(origin_conn, Bitfield::full(4));
        plan.assign(t0);
        assert!(plan.fetches().is_empty());
        assert!(
            plan.awaits_proof(),
            "the scheduler watches the grace closely"
        );
        plan.update_fallback(t0 + 101 * MS);
        assert_eq!(plan.fetches().len(), 4);
        assert!(!plan.awaits_proof());
        plan.check();
    }
}
