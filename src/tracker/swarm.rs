//! A swarm: the peers of one asset, their heartbeats and timeouts, what they served, and
//! the reports against them (unreachable, corrupt data) and the bans that follow. One
//! announce is applied by [`Swarm::announce`], which answers with the peers to hand out,
//! the announcer's origin share and when it should announce next ([`cadence`]); the routes
//! only parse, authorise and write the answer.
//!
//! Every non-origin peer is a member of the swarm's [`OriginPlan`], which keeps per-chunk
//! availability as haves change and hands origin shares only to downloaders that make
//! progress, capped per announcer [`Identity`]; every way out of the swarm (leave, timeout,
//! report, ban) goes through [`Swarm::remove`], so what a departed peer held stops counting.
//!
//! The swarm's authority (issue 13): a peer id belongs to the [`Identity`] that first
//! announced it (a token, or an address in open mode) for as long as the swarm remembers
//! the id, and an announce of it by anyone else is refused before it changes anything.
//! Reports count once per reporting identity; an `unreachable` report is never believed on
//! its word: it asks the tracker to probe the peer ([`Answer::probes`]), and only a failed
//! probe drops it ([`Swarm::unreachable`]). Bans hold the liar's identity and its address's
//! network ([`super::identity::network`]), so a new id, another port or a mapped form of
//! the address stay out. Each announce's `uploaded` increase is capped at what
//! [`MAX_UPLOAD_RATE`] allows since the id's previous announce.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use super::identity::Identity;
use super::plan::{OriginPlan, Slot, stall_bound};
use crate::api::{Figures, PeerInfo};
use crate::bitfield::Bitfield;
use crate::manifest::AssetId;

/// A peer reported unreachable is dropped from its swarm unless it announced within this
/// long, or within two of the intervals it was told to announce at while downloading (a
/// downloader of a big swarm announces every few seconds, and a report within one interval
/// of its last announce is no evidence it is gone; two missed ones are). A seeder is
/// dropped after this long, until its next heartbeat.
const REPORT_GRACE: Duration = Duration::from_secs(2);
/// Downloaders' announces a second that one swarm is sized for, however many downloaders
/// it has: downloaders announce every `leechers / DOWNLOADER_BUDGET` seconds, between
/// [`FASTEST_ANNOUNCE`] and the heartbeat. One downloader's announce costs tens of
/// microseconds at 65 536 chunks (a have diff, a share, a few KiB of JSON), so 100 a second
/// is under 1 % of a core per swarm; swarms of up to 50 downloaders announce every half
/// second as before (what the flash-crowd figures were measured with), and 1 000
/// downloaders every 10 s, within the 20 s heartbeat.
pub(super) const DOWNLOADER_BUDGET: u32 = 100;
/// The shortest interval the tracker asks for: other peers learn holdings over the wire,
/// so an announce only keeps the origin plan's counts current, and twice a second is as
/// fresh as the plan needs.
pub(super) const FASTEST_ANNOUNCE: Duration = Duration::from_millis(500);
/// A peer holding no chunk yet (joining) announces this many times sooner than the other
/// downloaders: its share dates from the crowd's arrival, the part of the plan that moves
/// most, and its first chunks make it a source. It holds nothing for a second or so.
const JOINING_SPEEDUP: u32 = 4;
/// A peer id, its holder and its `uploaded` counter are remembered for this many peer
/// timeouts after its last announce, so that a peer dropped from its swarm (silent too
/// long, reported unreachable) that comes back under the same id is not counted twice, and
/// nobody else can take the id over meanwhile. Ids live as long as their process, so a
/// peer away for longer is almost certainly gone for good.
const COUNTER_MEMORY_TIMEOUTS: u32 = 10;
/// The most bytes a second one peer is believed to have served: a 10 Gbit/s link, more
/// than any peer here reaches (a loopback download runs at about 1 GB/s). An announce's
/// `uploaded` increase counts up to this rate times the time since the id's previous
/// announce, so one announce of 2^64-1 adds at most one interval's worth, not a number
/// that pins the swarm's ratio until restart.
pub(super) const MAX_UPLOAD_RATE: u64 = 1_250_000_000;
/// A peer reported unreachable is probed by the tracker at most once in this long: the
/// prober's load is bounded by the swarm's size, not by how often a liar reports; a peer
/// really gone is dropped by the first failed probe, or at the peer timeout.
pub(super) const PROBE_EVERY: Duration = Duration::from_secs(10);
/// How often a swarm drops peers silent past the timeout.
const PRUNE_EVERY: Duration = Duration::from_secs(1);
/// Different peers that must report a peer for corrupt data before it is no longer handed
/// out: one report could be a lie about an honest peer (peer ids cost nothing, so this
/// only raises the bar; with `--auth`, reporters are token holders), while a peer whose
/// disk rots is caught by the second client that meets it.
const LIAR_REPORTS: usize = 2;
/// How long a peer dropped for lying stays out of its swarm: long enough to matter, short
/// enough that a repaired peer at a reused address is not out for ever.
const BAN_TIME: Duration = Duration::from_secs(3600);

/// One peer of a swarm.
#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    /// `addr` as handed out, formatted once per announce rather than once per answer.
    addr_text: String,
    /// It holds every chunk (what it holds otherwise is the plan's).
    complete: bool,
    /// It holds no chunk at all: it is handed out only after the peers that hold some.
    empty: bool,
    origin: bool,
    last_seen: Instant,
    /// Its place in the origin plan; `None` for an origin.
    slot: Option<Slot>,
    /// The interval its last answer asked for.
    told: Duration,
}

impl Peer {
    fn is_leecher(&self) -> bool {
        !self.origin && !self.complete
    }

    /// Which list of ids it is handed out from.
    fn class(&self) -> usize {
        match (self.origin, self.complete, self.empty) {
            (true, _, _) => ORIGINS,
            (false, true, _) => SEEDERS,
            (false, false, false) => LEECHERS,
            (false, false, true) => EMPTY,
        }
    }

    fn info<'a>(&'a self, peer_id: &'a str, now: Instant) -> PeerInfo<&'a str> {
        PeerInfo {
            peer_id,
            addr: &self.addr_text,
            complete: self.complete,
            origin: self.origin,
            last_seen_secs: now.duration_since(self.last_seen).as_secs(),
        }
    }

    /// How long after its last announce a report that it is unreachable is believed.
    fn report_grace(&self) -> Duration {
        if self.is_leecher() {
            REPORT_GRACE.max(self.told.saturating_mul(2))
        } else {
            REPORT_GRACE
        }
    }
}

/// The lists of ids answers hand peers out from: complete non-origin peers first, then the
/// partial ones holding something, then those holding nothing yet (they can serve nobody
/// until they gain a chunk, and a crowd of fake downloaders with empty bitfields must not
/// push the useful peers out of the answers: issue 13); origins are all listed.
const SEEDERS: usize = 0;
const LEECHERS: usize = 1;
const EMPTY: usize = 2;
const ORIGINS: usize = 3;

/// Up to `n` ids of `ids` other than `me`, from just after `cursor` on, wrapping around;
/// the cursor moves half the answer on (to the middle one taken). Costs `n` steps, not a
/// walk of every id.
///
/// Why half: a client connects to the first half of an answer (8 of the 16 peers named,
/// `client::plan`'s `NEW_PEERS_PER_ANSWER`), so the first halves of successive answers
/// tile the list and every peer is taken by as many clients. Moving to the last one taken
/// tiles only when the list is longer than an answer; when the whole list fits (a swarm of
/// 16 or fewer), it started every answer at the same id, every client took the same 8
/// peers, and the others served no one: in issue 14's harness at N = 16, 2 of 16 hosts
/// uploaded nothing in 28 s and 2 more nothing for their first 10 s.
fn window<'s>(
    ids: &'s BTreeSet<String>,
    cursor: &mut Option<String>,
    me: &str,
    n: usize,
) -> Vec<&'s str> {
    let (after, before) = match cursor.as_deref() {
        Some(c) => (
            (Bound::Excluded(c), Bound::Unbounded),
            (Bound::Unbounded, Bound::Included(c)),
        ),
        None => (
            (Bound::Unbounded, Bound::Unbounded),
            (Bound::Unbounded, Bound::Excluded("")),
        ),
    };
    let taken: Vec<&str> = ids
        .range::<str, _>(after)
        .chain(ids.range::<str, _>(before))
        .map(String::as_str)
        .filter(|id| *id != me)
        .take(n)
        .collect();
    if let Some(middle) = taken.get(taken.len().div_ceil(2).saturating_sub(1)) {
        *cursor = Some(middle.to_string());
    }
    taken
}

/// What a peer is doing, as the announce cadence sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Holds no chunk yet.
    Joining,
    /// Holds some chunks.
    Downloading,
    /// Holds every chunk, or is an origin.
    Seeding,
}

/// When a peer in `phase` should announce next, in a swarm of `leechers` downloaders
/// (serving or not) whose
/// peers heartbeat every `heartbeat`: seeders at the heartbeat (their announce only says
/// they are alive); downloaders so that together they announce [`DOWNLOADER_BUDGET`] times
/// a second, at most twice a second each and at least once a heartbeat; joining peers
/// [`JOINING_SPEEDUP`] times as often as downloaders. The tracker's load from one swarm is
/// then bounded however big the fleet grows.
pub(super) fn cadence(phase: Phase, leechers: u32, heartbeat: Duration) -> Duration {
    let fastest = FASTEST_ANNOUNCE.min(heartbeat);
    let spread = Duration::from_millis(u64::from(leechers) * 1000 / u64::from(DOWNLOADER_BUDGET));
    match phase {
        Phase::Seeding => heartbeat,
        Phase::Downloading => spread.clamp(fastest, heartbeat),
        Phase::Joining => (spread / JOINING_SPEEDUP).clamp(fastest, heartbeat),
    }
}

/// A peer id the swarm remembers: who holds it, its last `uploaded` counter, and when it
/// last announced.
#[derive(Debug)]
struct Held {
    owner: Identity,
    uploaded: u64,
    at: Instant,
}

/// An announce the swarm refuses, unapplied: the HTTP status and what to do.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refused {
    pub status: u16,
    pub message: String,
}

/// One asset's swarm: its live peers, what they served, and who was reported for lying.
#[derive(Debug, Default)]
pub(super) struct Swarm {
    /// By id: iterating gives the stable order answers hand peers out in.
    peers: BTreeMap<String, Peer>,
    /// When expired peers were last removed.
    pruned: Option<Instant>,
    announces: u64,
    /// Bytes served in this swarm since the tracker started, by peers that are not origins
    /// and by origins: the sums of the increases of every peer's `uploaded` counter.
    peer_bytes: u64,
    origin_bytes: u64,
    /// Every peer id announced lately: its holder and last counter, kept past its
    /// departure (see [`COUNTER_MEMORY_TIMEOUTS`]).
    held: HashMap<String, Held>,
    /// When `held` was last swept of peers long gone.
    swept: Option<Instant>,
    /// The peers' ids by class ([`SEEDERS`], [`LEECHERS`], [`EMPTY`], [`ORIGINS`]), in id
    /// order: an answer takes a window of them rather than walking every peer.
    classes: [BTreeSet<String>; 4],
    /// Where the next window of seeders, of leechers and of empty peers starts (after the
    /// last id handed out), so that large swarms spread load over every peer.
    cursors: [Option<String>; 3],
    /// Per-chunk availability, and which chunks each leecher takes from the origin.
    origin_plan: OriginPlan<Identity>,
    /// Peers reported for sending corrupt data, and by whom (identities, not peer ids:
    /// one holder's many ids are one reporter).
    accused: HashMap<String, HashSet<Identity>>,
    /// Peers no longer handed out for lying, by id, and by holder and address network
    /// (both as identities), and since when.
    banned_ids: HashMap<String, Instant>,
    banned: HashMap<Identity, Instant>,
    /// When each peer reported unreachable was last handed to the prober.
    probed: HashMap<String, Instant>,
    /// Downloaders that do not serve (no `addr`), by id, and when they last announced: never
    /// handed out, but they count among the downloaders the cadence spreads out.
    passive: HashMap<String, Instant>,
}

impl Swarm {
    /// Drops peers silent for longer than `timeout`, and forgets old counters and bans.
    pub(super) fn prune(&mut self, now: Instant, timeout: Duration) {
        // Walking every peer on every announce cost a tenth of the tracker's time; a peer
        // silent past the timeout may be handed out for one second more.
        if self
            .pruned
            .is_none_or(|t| now.duration_since(t) >= PRUNE_EVERY)
        {
            let (plan, classes) = (&mut self.origin_plan, &mut self.classes);
            self.peers.retain(|id, p| {
                let live = now.duration_since(p.last_seen) <= timeout;
                if !live {
                    classes[p.class()].remove(id);
                    if let Some(slot) = p.slot {
                        plan.leave(slot);
                    }
                }
                live
            });
            self.passive
                .retain(|_, at| now.duration_since(*at) <= timeout);
            self.pruned = Some(now);
        }
        // A sweep walks every peer seen lately; once per peer timeout is often enough.
        if self.swept.is_none_or(|t| now.duration_since(t) >= timeout) {
            let memory = timeout.saturating_mul(COUNTER_MEMORY_TIMEOUTS);
            self.held.retain(|_, h| now.duration_since(h.at) <= memory);
            self.banned_ids
                .retain(|_, at| now.duration_since(*at) <= BAN_TIME);
            self.banned
                .retain(|_, at| now.duration_since(*at) <= BAN_TIME);
            self.probed
                .retain(|_, at| now.duration_since(*at) <= PROBE_EVERY);
            let peers = &self.peers;
            self.accused.retain(|id, _| peers.contains_key(id));
            self.swept = Some(now);
        }
    }

    /// Takes `reporter`'s word that `accused` sent it corrupt data. A peer reported by
    /// [`LIAR_REPORTS`] different holders is dropped and no longer handed out, under its
    /// id, its holder and its address's network, for [`BAN_TIME`]. Origins are only
    /// logged: they are the operator's, and the swarm's last resort.
    fn accuse(&mut self, accused: &str, reporter: &Identity, asset: &AssetId, now: Instant) {
        let Some(peer) = self.peers.get(accused) else {
            return;
        };
        let owner = self.held.get(accused).map(|h| &h.owner);
        let reporters = self.accused.entry(accused.to_string()).or_default();
        if reporters.len() >= LIAR_REPORTS || !reporters.insert(reporter.clone()) {
            return;
        }
        if reporters.len() < LIAR_REPORTS {
            return;
        }
        if peer.origin {
            log::warn!(
                "origin {} of {asset} was reported for corrupt data by {LIAR_REPORTS} peers; check its store",
                peer.addr
            );
            return;
        }
        log::warn!(
            "no longer handing out peer {accused} at {} for {asset}: {LIAR_REPORTS} holders got corrupt data from it",
            peer.addr
        );
        self.banned.insert(Identity::of_addr(peer.addr.ip()), now);
        if let Some(owner) = owner {
            self.banned.insert(owner.clone(), now);
        }
        self.banned_ids.insert(accused.to_string(), now);
        self.remove(accused);
        self.accused.remove(accused);
    }

    /// Whether a holder, or a peer at `addr` under `peer_id`, was banned for lying. An
    /// origin's announce is held to its id's ban only: origins are never banned (see
    /// [`Swarm::accuse`]), and a liar's holder or network may be the operator's too (one
    /// host, one NAT).
    fn is_banned(&self, a: &Announce<'_>, addr: Option<&SocketAddr>) -> bool {
        self.banned_ids.contains_key(a.peer_id)
            || (!a.origin
                && (self.banned.contains_key(a.who)
                    || addr.is_some_and(|a| self.banned.contains_key(&Identity::of_addr(a.ip())))))
    }

    /// Refuses an announce of `peer_id` by `who` when the id belongs to another holder, or
    /// when it would change an origin's entry without the origin right.
    fn check_holder(&self, a: &Announce<'_>) -> Result<(), Refused> {
        if self.held.get(a.peer_id).is_some_and(|h| h.owner != *a.who) {
            return Err(Refused {
                status: 409,
                message: format!(
                    "peer id {} belongs to another holder in this swarm (it was announced first by someone else); \
                     a peer picks a random id at start: do not reuse another peer's id",
                    a.peer_id
                ),
            });
        }
        if !a.may_origin && self.peers.get(a.peer_id).is_some_and(|p| p.origin) {
            return Err(Refused {
                status: 403,
                message: format!(
                    "peer {} is an origin of this swarm: changing its entry needs the origin right",
                    a.peer_id
                ),
            });
        }
        Ok(())
    }

    /// Adds to the swarm's totals what `peer_id`'s cumulative `uploaded` counter grew by
    /// since its previous announce, at most [`MAX_UPLOAD_RATE`] times the time between
    /// them. A counter lower than before belongs to a restarted peer, so all of it is new
    /// (within the cap). An id's first announce sets where its counter starts: a new peer
    /// has served nothing before anyone was told of it, and what a peer served before the
    /// tracker started is not the tracker's to count. Binds the id to `who` (checked by
    /// [`Swarm::check_holder`] first).
    fn count_upload(
        &mut self,
        peer_id: &str,
        who: &Identity,
        uploaded: u64,
        origin: bool,
        now: Instant,
    ) {
        let Some(held) = self.held.get_mut(peer_id) else {
            let held = Held {
                owner: who.clone(),
                uploaded,
                at: now,
            };
            self.held.insert(peer_id.to_string(), held);
            return;
        };
        let increase = uploaded.checked_sub(held.uploaded).unwrap_or(uploaded);
        let allowed = upload_cap(now.saturating_duration_since(held.at));
        held.uploaded = uploaded;
        held.at = now;
        let total = if origin {
            &mut self.origin_bytes
        } else {
            &mut self.peer_bytes
        };
        *total = total.saturating_add(increase.min(allowed));
    }

    /// Drops `peer_id` if it is still served at `addr`: the tracker's own probe could not
    /// connect to it after a report said it was unreachable. Origins stay (the operator's).
    pub(super) fn unreachable(&mut self, peer_id: &str, addr: SocketAddr, asset: &AssetId) {
        if self
            .peers
            .get(peer_id)
            .is_some_and(|p| !p.origin && p.addr == addr)
        {
            log::info!(
                "dropping peer {peer_id} at {addr} from {asset}: reported unreachable, and the tracker could not connect either"
            );
            self.remove(peer_id);
        }
    }

    /// Takes `peer_id` out of the swarm, and what it held out of the plan's counts.
    fn remove(&mut self, peer_id: &str) -> Option<Peer> {
        let peer = self.peers.remove(peer_id)?;
        self.classes[peer.class()].remove(peer_id);
        if let Some(slot) = peer.slot {
            self.origin_plan.leave(slot);
        }
        Some(peer)
    }

    /// Records `a` (serving at `addr`) as a live peer: a newcomer joins the plan, a known
    /// peer's have change is applied to the counts.
    fn record(&mut self, a: &Announce<'_>, addr: SocketAddr, count: u32, now: Instant) {
        if self.origin_plan.count() != count && self.origin_plan.is_empty() {
            self.origin_plan = OriginPlan::new(count);
        }
        let have = a.have.as_ref().filter(|h| !h.is_full());
        let plan = &mut self.origin_plan;
        // The announcer's holder: a peer id keeps its first holder, so a member's origin
        // share always counts against the identity it joined with.
        let who = a.who;
        match self.peers.get_mut(a.peer_id) {
            Some(peer) => {
                let class = peer.class();
                peer.slot = match (peer.slot, a.origin) {
                    (Some(slot), false) => {
                        plan.update(slot, have, now);
                        Some(slot)
                    }
                    (Some(slot), true) => {
                        plan.leave(slot);
                        None
                    }
                    (None, false) => Some(plan.join(have, who, now)),
                    (None, true) => None,
                };
                if peer.addr != addr {
                    peer.addr = addr;
                    peer.addr_text = addr.to_string();
                }
                peer.complete = have.is_none();
                peer.empty = have.is_some_and(|h| h.count() == 0);
                peer.origin = a.origin;
                peer.last_seen = now;
                if peer.class() != class {
                    self.classes[class].remove(a.peer_id);
                    self.classes[peer.class()].insert(a.peer_id.to_string());
                }
            }
            None => {
                let peer = Peer {
                    addr,
                    addr_text: addr.to_string(),
                    complete: have.is_none(),
                    empty: have.is_some_and(|h| h.count() == 0),
                    origin: a.origin,
                    last_seen: now,
                    slot: (!a.origin).then(|| plan.join(have, who, now)),
                    told: FASTEST_ANNOUNCE,
                };
                self.classes[peer.class()].insert(a.peer_id.to_string());
                self.peers.insert(a.peer_id.to_string(), peer);
            }
        }
    }
}

/// The most bytes a peer can have served in `elapsed` (see [`MAX_UPLOAD_RATE`]).
pub(super) fn upload_cap(elapsed: Duration) -> u64 {
    let bytes = elapsed
        .as_nanos()
        .saturating_mul(u128::from(MAX_UPLOAD_RATE))
        / 1_000_000_000;
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// One announce, checked, as the swarm applies it.
#[derive(Debug)]
pub(super) struct Announce<'a> {
    /// The announcing peer's id.
    pub peer_id: &'a str,
    /// Who announces: the token, or the source address's network in open mode.
    pub who: &'a Identity,
    /// The announcer holds the origin right for this asset (always, in open mode).
    pub may_origin: bool,
    /// Where it serves; `None` for a peer that only downloads and is never handed out.
    pub addr: Option<SocketAddr>,
    /// The chunks it holds; `None` when it holds every chunk.
    pub have: Option<Bitfield>,
    /// It is an origin.
    pub origin: bool,
    /// It leaves the swarm now.
    pub leaving: bool,
    /// Its running total of bytes served.
    pub uploaded: u64,
    /// Peers it got corrupt data from.
    pub corrupt: &'a [String],
    /// Peers it could not reach.
    pub unreachable: &'a [String],
}

/// What the swarm answers an announce with. Borrows the swarm's strings: the caller
/// writes it while it holds the swarm.
#[derive(Debug)]
pub(super) struct Answer<'a> {
    /// Peers to use (never the announcer, never an origin).
    pub peers: Vec<PeerInfo<&'a str>>,
    /// The swarm's origins (never the announcer).
    pub origins: Vec<PeerInfo<&'a str>>,
    /// For a serving leecher: the chunks to take from the origin, as runs `[start, end)`.
    pub origin_share: Option<Vec<[u32; 2]>>,
    /// When the announcer should announce next.
    pub next_announce: Duration,
    /// Peers reported unreachable that the tracker should try to connect to (id and
    /// address); the caller hands them to the prober, which calls [`Swarm::unreachable`]
    /// for each it cannot reach.
    pub probes: Vec<(String, SocketAddr)>,
}

impl Swarm {
    /// Applies `a` to the swarm of `asset` (`chunk_count` chunks) at `now`: counts its
    /// upload, takes its reports, records or drops the peer, and answers with at most
    /// `max_peers` peers, the origins, the announcer's origin share, and when to announce
    /// next. Costs what the announcer's have changed by and the answer's size (no bitfield
    /// but the announcer's, and no walk of every peer but the once-a-second prune).
    /// Refused, changing nothing, when the peer id belongs to another holder.
    pub(super) fn announce(
        &mut self,
        a: Announce<'_>,
        asset: &AssetId,
        chunk_count: u32,
        max_peers: usize,
        timeout: Duration,
        now: Instant,
    ) -> Result<Answer<'_>, Refused> {
        self.prune(now, timeout);
        self.check_holder(&a)?;
        self.announces += 1;
        self.count_upload(a.peer_id, a.who, a.uploaded, a.origin, now);
        // A banned holder's reports are not taken: it is the one known to lie.
        let believed = !self.is_banned(&a, None);
        for accused in a.corrupt.iter().filter(|_| believed) {
            self.accuse(accused, a.who, asset, now);
        }
        let mut probes = Vec::new();
        for reported in a.unreachable.iter().filter(|_| believed) {
            // A peer that announced a moment ago is alive as far as the tracker can tell
            // (the reporter may be the one with the network problem); a quiet one is
            // probed, at most once per PROBE_EVERY, and dropped only if the tracker cannot
            // connect either: one reporter's word never takes a peer out. Origins are
            // registered by their operator and are never dropped on a report.
            let Some(peer) = self.peers.get(reported) else {
                continue;
            };
            let quiet = now.duration_since(peer.last_seen) > peer.report_grace();
            let probed_lately = self
                .probed
                .get(reported)
                .is_some_and(|at| now.duration_since(*at) < PROBE_EVERY);
            if !peer.origin && quiet && !probed_lately {
                probes.push((reported.clone(), peer.addr));
                self.probed.insert(reported.clone(), now);
            }
        }
        match a.addr {
            Some(addr) if !a.leaving && !self.is_banned(&a, Some(&addr)) => {
                self.passive.remove(a.peer_id);
                self.record(&a, addr, chunk_count, now);
            }
            _ => {
                self.remove(a.peer_id);
                let downloading = a.have.as_ref().is_some_and(|h| !h.is_full());
                if a.addr.is_none() && !a.leaving && downloading {
                    match self.passive.get_mut(a.peer_id) {
                        Some(at) => *at = now,
                        None => {
                            self.passive.insert(a.peer_id.to_string(), now);
                        }
                    }
                } else {
                    self.passive.remove(a.peer_id);
                }
            }
        }
        let phase = match &a.have {
            _ if a.origin => Phase::Seeding,
            None => Phase::Seeding,
            Some(have) if have.is_full() => Phase::Seeding,
            Some(have) if have.count() == 0 => Phase::Joining,
            Some(_) => Phase::Downloading,
        };
        let downloaders = self.origin_plan.leechers() as usize + self.passive.len();
        let downloaders = u32::try_from(downloaders).unwrap_or(u32::MAX);
        let heartbeat = super::heartbeat(timeout);
        let next_announce = cadence(phase, downloaders, heartbeat);
        // A share is reclaimed after a few of the intervals its owner announces at.
        let stall = stall_bound(cadence(Phase::Downloading, downloaders, heartbeat));
        let origin_share = match self.peers.get_mut(a.peer_id) {
            Some(peer) => {
                peer.told = next_announce;
                peer.slot.filter(|_| peer.is_leecher())
            }
            None => None,
        }
        .map(|slot| self.origin_plan.share_for(slot, now, stall));
        // Complete peers first, then partial ones, then empty ones, each list in id order
        // and handed out as a window that moves on with every answer.
        let [seeders, leechers, empty, origins] = &self.classes;
        let [seeder_cursor, leecher_cursor, empty_cursor] = &mut self.cursors;
        let mut ids = window(seeders, seeder_cursor, a.peer_id, max_peers);
        let room = max_peers.saturating_sub(ids.len());
        ids.extend(window(leechers, leecher_cursor, a.peer_id, room));
        let room = max_peers.saturating_sub(ids.len());
        ids.extend(window(empty, empty_cursor, a.peer_id, room));
        let peers = &self.peers;
        let info = |id| peers.get(id).map(|p: &Peer| p.info(id, now));
        let listed = ids.into_iter().filter_map(info).collect();
        let origins = origins
            .iter()
            .map(String::as_str)
            .filter(|id| *id != a.peer_id)
            .filter_map(info)
            .collect();
        Ok(Answer {
            peers: listed,
            origins,
            origin_share,
            next_announce,
            probes,
        })
    }

    /// Checks that the lists of ids by class and the plan's members are the peers'.
    #[cfg(test)]
    fn check(&self) {
        for (class, ids) in self.classes.iter().enumerate() {
            let expected: BTreeSet<String> = (self.peers.iter())
                .filter(|(_, p)| p.class() == class)
                .map(|(id, _)| id.clone())
                .collect();
            assert_eq!(ids, &expected, "class {class}");
        }
        let members = self.peers.values().filter(|p| p.slot.is_some()).count();
        let origins = self.peers.values().filter(|p| p.origin).count();
        assert_eq!(
            members + origins,
            self.peers.len(),
            "every other peer is a member"
        );
        self.origin_plan.check().unwrap();
    }

    /// Every live peer, by id, as `GET /assets/{id}/peers` lists them.
    pub(super) fn list(&self, now: Instant) -> Vec<PeerInfo<&str>> {
        self.peers.iter().map(|(pid, p)| p.info(pid, now)).collect()
    }

    /// The swarm's figures for `/stats`: live peers, seeders and origins, bytes served,
    /// announces.
    pub(super) fn figures(&self) -> Figures {
        let live = self.peers.values();
        let counts = (
            self.peers.len(),
            live.clone().filter(|p| p.complete).count(),
            live.filter(|p| p.origin).count(),
        );
        Figures::new(counts, self.peer_bytes, self.origin_bytes, self.announces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(count: u32, ones: impl IntoIterator<Item = u32>) -> Option<Bitfield> {
        let mut have = Bitfield::new(count);
        ones.into_iter().for_each(|i| have.set(i));
        Some(have)
    }

    /// The chunks of a share's runs.
    fn chunks(share: &Option<Vec<[u32; 2]>>) -> Vec<u32> {
        let runs = share.as_deref().unwrap_or_default();
        runs.iter().flat_map(|&[a, b]| a..b).collect()
    }

    impl Swarm {
        /// An announce that must not be refused.
        fn announce_ok(
            &mut self,
            a: Announce<'_>,
            asset: &AssetId,
            chunk_count: u32,
            max_peers: usize,
            timeout: Duration,
            now: Instant,
        ) -> Answer<'_> {
            self.announce(a, asset, chunk_count, max_peers, timeout, now)
                .unwrap()
        }
    }

    #[test]
    fn leechers_get_disjoint_shares_that_rebalance_as_they_arrive() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([3; 32]);
        let mut swarm = Swarm::default();
        let share = |swarm: &mut Swarm, id: &str, port, have| {
            let answer = swarm.announce_ok(announce(id, port, have), &asset, 100, 30, timeout, now);
            chunks(&answer.origin_share)
        };
        let origin = Announce {
            origin: true,
            ..announce("origin", 9, None)
        };
        swarm.announce_ok(origin, &asset, 100, 30, timeout, now);
        let first = share(&mut swarm, "a", 1, partial(100, []));
        assert_eq!(first, (0..8).collect::<Vec<_>>(), "a first grant");
        // Once it shows it fetched them, a lone leecher's share grows past them.
        let grown = share(&mut swarm, "a", 1, partial(100, 0..8));
        assert_eq!(grown, (8..32).collect::<Vec<_>>(), "8 + 2 × 8");
        for (id, n) in [("b", 2), ("c", 3), ("d", 4)] {
            share(&mut swarm, id, n, partial(100, []));
        }
        // Everyone fetched its own share's first chunk: all four are proven, and the 92
        // chunks nobody holds are split four ways, within each one's limit.
        let mut held: Vec<u32> = (0..8).collect();
        for (id, n) in [("b", 2), ("c", 3), ("d", 4), ("a", 1)] {
            let before = share(&mut swarm, id, n, partial(100, held.iter().copied()));
            held.push(before[0]);
            share(&mut swarm, id, n, partial(100, held.iter().copied()));
        }
        let mut union = Vec::new();
        for (id, n) in [("b", 2), ("c", 3), ("d", 4), ("a", 1)] {
            let share = share(&mut swarm, id, n, partial(100, held.iter().copied()));
            assert!(share.len() <= 23, "{id}: at most a fair quarter of 88");
            assert!(share.iter().all(|i| !held.contains(i)), "{id}: {share:?}");
            union.extend(share);
        }
        let total = union.len();
        union.sort();
        union.dedup();
        assert_eq!(union.len(), total, "disjoint");
        swarm.origin_plan.check().unwrap();
        // A complete peer holds everything: nothing more is needed from the origin.
        share(&mut swarm, "seed", 5, None);
        assert!(share(&mut swarm, "a", 1, partial(100, [])).is_empty());
        swarm.check();
        // Peers change class: a leecher becomes an origin, another completes.
        let now_origin = Announce {
            origin: true,
            ..announce("a", 1, partial(100, [1]))
        };
        swarm.announce_ok(now_origin, &asset, 100, 30, timeout, now);
        swarm.check();
        share(&mut swarm, "b", 2, None);
        swarm.check();
        assert_eq!(swarm.classes.map(|ids| ids.len()), [2, 2, 0, 2]);
    }

    #[test]
    fn many_peer_ids_of_one_holder_share_one_cap() {
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        let asset = AssetId([7; 32]);
        let mut swarm = Swarm::default();
        let ids: Vec<String> = (0..100).map(|n| format!("fake-{n}")).collect();
        let mut held = 0;
        for (n, id) in ids.iter().enumerate() {
            // The lower half of an IPv6 /64 is the holder's to vary: one holder.
            let addr = SocketAddr::from(([0x2001, 0xdb8, 0, 1, 0, 0, 0, n as u16], 7000));
            let who = Identity::of_addr(addr.ip());
            let a = Announce {
                who: &who,
                addr: Some(addr),
                ..announce(id, 7000, partial(128, []))
            };
            let answer = swarm.announce_ok(a, &asset, 128, 30, timeout, start);
            held += chunks(&answer.origin_share).len();
        }
        assert_eq!(held, super::super::plan::IDENTITY_FIRST_GRANT as usize);
        // A holder of its own gets a share.
        let answer = swarm.announce_ok(
            announce("b", 2, partial(128, [])),
            &asset,
            128,
            30,
            timeout,
            start,
        );
        assert_eq!(chunks(&answer.origin_share).len(), 8);
        swarm.check();
    }

    #[test]
    fn every_way_out_of_the_swarm_uncounts_what_the_peer_held() {
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        let asset = AssetId([4; 32]);
        // Each way out, applied at `later` to peer "gone" (which holds chunks 0..50).
        type WayOut = fn(&mut Swarm, Instant);
        let ways: [(&str, WayOut); 4] = [
            ("leave", |swarm, at| {
                let leave = Announce {
                    leaving: true,
                    ..announce("gone", 1, partial(100, 0..50))
                };
                swarm.announce_ok(
                    leave,
                    &AssetId([4; 32]),
                    100,
                    30,
                    Duration::from_secs(60),
                    at,
                );
            }),
            ("timeout", |swarm, at| {
                // b stays alive; gone is silent past the timeout.
                let b = announce("b", 2, partial(100, []));
                let timeout = Duration::from_secs(60);
                swarm.announce_ok(b, &AssetId([4; 32]), 100, 30, timeout, at + timeout / 2);
                swarm.prune(at + timeout + Duration::from_secs(1), timeout)
            }),
            ("report", |swarm, at| {
                let gone = ["gone".to_string()];
                let report = Announce {
                    unreachable: &gone,
                    ..announce("reporter", 3, partial(100, []))
                };
                let asset = AssetId([4; 32]);
                let answer =
                    swarm.announce_ok(report, &asset, 100, 30, Duration::from_secs(60), at);
                // The tracker's probe cannot connect either.
                for (id, addr) in answer.probes.clone() {
                    swarm.unreachable(&id, addr, &asset);
                }
            }),
            ("ban", |swarm, at| {
                let gone = ["gone".to_string()];
                for (id, port) in [("r1", 4), ("r2", 5)] {
                    let report = Announce {
                        corrupt: &gone,
                        ..announce(id, port, partial(100, []))
                    };
                    swarm.announce_ok(
                        report,
                        &AssetId([4; 32]),
                        100,
                        30,
                        Duration::from_secs(60),
                        at,
                    );
                }
            }),
        ];
        for (way, apply) in ways {
            let mut swarm = Swarm::default();
            swarm.announce_ok(
                announce("gone", 1, partial(100, 0..50)),
                &asset,
                100,
                30,
                timeout,
                start,
            );
            let answer = swarm.announce_ok(
                announce("b", 2, partial(100, [])),
                &asset,
                100,
                30,
                timeout,
                start,
            );
            assert!(
                chunks(&answer.origin_share).iter().all(|&i| i >= 50),
                "{way}"
            );
            let later = start + Duration::from_secs(5);
            apply(&mut swarm, later);
            assert!(!swarm.peers.contains_key("gone"), "{way}");
            swarm.check();
            assert_eq!(
                swarm.origin_plan.missing(),
                100,
                "{way}: its chunks count no more"
            );
        }
    }

    #[test]
    fn downloaders_that_do_not_serve_count_in_the_cadence_until_they_go() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([6; 32]);
        let mut swarm = Swarm::default();
        let ids: Vec<String> = (0..300).map(|p| format!("passive-{p}")).collect();
        let passive = |id| Announce {
            addr: None,
            ..announce(id, 1, partial(10, [1]))
        };
        for id in &ids {
            swarm.announce_ok(passive(id), &asset, 10, 30, timeout, now);
        }
        let answer = swarm.announce_ok(passive(&ids[0]), &asset, 10, 30, timeout, now);
        assert_eq!(
            answer.next_announce,
            Duration::from_secs(3),
            "300 / 100 a second"
        );
        assert!(answer.peers.is_empty() && answer.origin_share.is_none());
        // They leave, or fall silent: the swarm is small again.
        for id in &ids[..100] {
            let leave = Announce {
                leaving: true,
                ..passive(id)
            };
            swarm.announce_ok(leave, &asset, 10, 30, timeout, now);
        }
        let answer = swarm.announce_ok(passive(&ids[100]), &asset, 10, 30, timeout, now);
        assert_eq!(answer.next_announce, Duration::from_secs(2));
        let later = now + timeout + Duration::from_secs(1);
        let answer = swarm.announce_ok(passive(&ids[0]), &asset, 10, 30, timeout, later);
        assert_eq!(answer.next_announce, FASTEST_ANNOUNCE);
    }

    #[test]
    fn the_cadence_follows_the_phase_and_the_number_of_downloaders() {
        let beat = Duration::from_secs(20);
        let ms = |d: Duration| d.as_millis();
        assert_eq!(ms(cadence(Phase::Seeding, 1000, beat)), 20_000);
        // Small swarms announce twice a second, as before; big ones spread out.
        assert_eq!(ms(cadence(Phase::Downloading, 1, beat)), 500);
        assert_eq!(ms(cadence(Phase::Downloading, 50, beat)), 500);
        assert_eq!(ms(cadence(Phase::Downloading, 200, beat)), 2000);
        assert_eq!(ms(cadence(Phase::Downloading, 1000, beat)), 10_000);
        assert_eq!(ms(cadence(Phase::Downloading, 100_000, beat)), 20_000);
        assert_eq!(ms(cadence(Phase::Joining, 1000, beat)), 2500);
        assert_eq!(ms(cadence(Phase::Joining, 10, beat)), 500);
        // The downloaders' announces a second stay within the budget however many they are.
        for leechers in [100, 1000, 2000] {
            let every = cadence(Phase::Downloading, leechers, beat).as_secs_f64();
            assert!(f64::from(leechers) / every <= f64::from(DOWNLOADER_BUDGET) + 0.5);
        }
        // A short heartbeat (a test's --peer-timeout) bounds every interval.
        assert_eq!(
            ms(cadence(Phase::Downloading, 1000, Duration::from_secs(1))),
            1000
        );
        assert_eq!(
            ms(cadence(Phase::Joining, 1, Duration::from_millis(300))),
            300
        );
    }

    #[test]
    fn an_answer_in_a_swarm_of_a_thousand_peers_is_a_few_kib() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([5; 32]);
        let count = 65_536;
        let mut swarm = Swarm::default();
        let origin = Announce {
            origin: true,
            ..announce("origin", 60_000, None)
        };
        swarm.announce_ok(origin, &asset, count, 30, timeout, now);
        let ids: Vec<String> = (0..1000)
            .map(|p| format!("peer-{p:04}-0123456789abcdef"))
            .collect();
        for (p, id) in ids.iter().enumerate() {
            // Each holds its own stretch of 40 chunks.
            let p = p as u32;
            let have = partial(count, p * 40..p * 40 + 40);
            swarm.announce_ok(
                announce(id, 1000 + p as u16, have),
                &asset,
                count,
                30,
                timeout,
                now,
            );
        }
        let max_peers = super::super::DEFAULT_MAX_PEERS;
        let have = partial(count, 0..40);
        let answer = swarm.announce_ok(
            announce(&ids[0], 1000, have),
            &asset,
            count,
            max_peers,
            timeout,
            now,
        );
        assert_eq!(answer.peers.len(), max_peers);
        let share = chunks(&answer.origin_share);
        assert!(
            !share.is_empty() && share.iter().all(|&i| i >= 40_000),
            "{share:?}"
        );
        let response = crate::api::AnnounceResponse {
            interval_secs: 20,
            next_announce_ms: Some(answer.next_announce.as_millis() as u64),
            chunk_count: count,
            peers: answer.peers,
            origins: answer.origins,
            origin_urls: Vec::new(),
            your_addr: Some("127.0.0.1:1000".into()),
            instance: Some("0123456789abcdef0123456789abcdef"),
            warming_up_secs: None,
            origin_share: answer.origin_share,
            ticket: None,
            keys: Vec::new(),
        };
        let bytes = serde_json::to_string(&response).unwrap().len();
        eprintln!("answer in a swarm of 1000 peers of {count} chunks: {bytes} bytes");
        assert!(bytes < 4096, "{bytes} bytes");
    }

    #[test]
    fn served_bytes_add_up_counter_increases_and_survive_departures() {
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        let who = Identity::of_addr([10, 0, 0, 1].into());
        let mut swarm = Swarm::default();
        // A first announce sets where each counter starts.
        swarm.count_upload("origin", &who, 100, true, start);
        swarm.count_upload("a", &who, 50, false, start);
        assert_eq!((swarm.peer_bytes, swarm.origin_bytes), (0, 0));
        swarm.count_upload("a", &who, 80, false, at(1));
        swarm.count_upload("origin", &who, 200, true, at(1));
        assert_eq!((swarm.peer_bytes, swarm.origin_bytes), (30, 100));
        // A counter lower than before is a restarted peer: all of it is new.
        swarm.count_upload("a", &who, 10, false, at(2));
        assert_eq!(swarm.peer_bytes, 40);
        // Gone for two peer timeouts and back under the same id: only the increase counts.
        let later = start + 2 * timeout;
        swarm.prune(later, timeout);
        swarm.count_upload("a", &who, 15, false, later);
        assert_eq!(swarm.peer_bytes, 45);
        // Past the memory, an id is forgotten: its next announce starts afresh.
        swarm.prune(later + COUNTER_MEMORY_TIMEOUTS * timeout + timeout, timeout);
        assert!(swarm.held.is_empty());
        assert_eq!((swarm.peer_bytes, swarm.origin_bytes), (45, 100));
    }

    #[test]
    fn an_uploaded_increase_is_capped_at_the_link_rate_times_the_interval() {
        assert_eq!(upload_cap(Duration::ZERO), 0);
        assert_eq!(upload_cap(Duration::from_millis(500)), MAX_UPLOAD_RATE / 2);
        assert_eq!(upload_cap(Duration::from_secs(20)), 20 * MAX_UPLOAD_RATE);
        assert_eq!(upload_cap(Duration::MAX), u64::MAX);
        let start = Instant::now();
        let who = Identity::of_addr([10, 0, 0, 1].into());
        let mut swarm = Swarm::default();
        // Issue 13: one announce of 2^64-1 pinned the ratio at 1.0 until restart.
        swarm.count_upload("liar", &who, u64::MAX, false, start);
        assert_eq!(swarm.peer_bytes, 0, "a first announce counts nothing");
        swarm.count_upload("liar", &who, 0, false, start + Duration::from_secs(1));
        swarm.count_upload(
            "liar",
            &who,
            u64::MAX,
            false,
            start + Duration::from_secs(2),
        );
        assert_eq!(swarm.peer_bytes, MAX_UPLOAD_RATE, "one second's worth");
        // An honest origin's bytes then move the ratio.
        swarm.count_upload("origin", &who, 0, true, start);
        swarm.count_upload(
            "origin",
            &who,
            3 * MAX_UPLOAD_RATE,
            true,
            start + Duration::from_secs(3),
        );
        let ratio = swarm.figures().p2p_ratio.unwrap();
        assert!((0.2..0.3).contains(&ratio), "{ratio}");
    }

    #[test]
    fn a_peer_id_belongs_to_its_first_holder_and_others_change_nothing() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([7; 32]);
        let mut swarm = Swarm::default();
        let origin = Announce {
            origin: true,
            ..announce("origin", 1, None)
        };
        swarm.announce_ok(origin, &asset, 4, 30, timeout, now);
        swarm.announce_ok(announce("seeder", 2, None), &asset, 4, 30, timeout, now);
        // Another holder (another address) announces those ids: stopped, at its own
        // address, complete, with a counter: each refused with 409, nothing changed.
        for victim in ["origin", "seeder"] {
            for attack in [
                Announce {
                    leaving: true,
                    ..announce(victim, 666, None)
                },
                Announce {
                    uploaded: u64::MAX,
                    ..announce(victim, 666, None)
                },
                Announce {
                    origin: true,
                    corrupt: &[],
                    ..announce(victim, 666, None)
                },
            ] {
                let refused = swarm
                    .announce(attack, &asset, 4, 30, timeout, now)
                    .unwrap_err();
                assert_eq!(refused.status, 409, "{refused:?}");
                assert!(refused.message.contains(victim), "{}", refused.message);
            }
        }
        assert_eq!(swarm.peers["origin"].addr_text, "10.0.0.1:1");
        assert_eq!(swarm.peers["seeder"].addr_text, "10.0.0.2:2");
        assert!(swarm.peers["origin"].origin);
        assert_eq!((swarm.announces, swarm.peer_bytes), (2, 0));
        // The holder itself still moves its peer, and leaves.
        let moved = Announce {
            addr: Some(SocketAddr::from(([10, 0, 0, 2], 9))),
            ..announce("seeder", 2, None)
        };
        swarm.announce_ok(moved, &asset, 4, 30, timeout, now);
        assert_eq!(swarm.peers["seeder"].addr_text, "10.0.0.2:9");
        // A holder without the origin right cannot change an origin's entry.
        let demoted = Announce {
            may_origin: false,
            leaving: true,
            ..announce("origin", 1, None)
        };
        assert_eq!(
            swarm
                .announce(demoted, &asset, 4, 30, timeout, now)
                .unwrap_err()
                .status,
            403
        );
        let leave = Announce {
            leaving: true,
            ..announce("seeder", 2, None)
        };
        swarm.announce_ok(leave, &asset, 4, 30, timeout, now);
        assert!(!swarm.peers.contains_key("seeder"));
        // A left id stays its holder's for the memory: nobody else takes it over.
        let squat = announce("seeder", 666, None);
        assert!(swarm.announce(squat, &asset, 4, 30, timeout, now).is_err());
        swarm.check();
    }

    #[test]
    fn an_unreachable_report_is_probed_not_believed_and_at_most_once_per_period() {
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        let asset = AssetId([8; 32]);
        let mut swarm = Swarm::default();
        swarm.announce_ok(announce("seeder", 1, None), &asset, 4, 30, timeout, start);
        let gone = ["seeder".to_string()];
        let report = |id| Announce {
            unreachable: &gone,
            ..announce(id, 3, Some(Bitfield::new(4)))
        };
        // Issue 13: one reporter saying `unreachable` once a second kept an honest seeder
        // out 77-80 % of the time. Now each report asks for a probe, at most one per period.
        let mut probes = 0;
        for second in 0..30 {
            let at = start + REPORT_GRACE + Duration::from_secs(second);
            let answer = swarm.announce_ok(report("liar"), &asset, 4, 30, timeout, at);
            probes += answer.probes.len();
            if let Some((id, addr)) = answer.probes.first() {
                assert_eq!(
                    (id.as_str(), addr.to_string().as_str()),
                    ("seeder", "10.0.0.1:1")
                );
            }
            assert!(swarm.peers.contains_key("seeder"), "second {second}");
        }
        assert_eq!(probes, 3, "one probe every {PROBE_EVERY:?}");
        // A failed probe drops it; one of a peer that moved meanwhile does not.
        swarm.unreachable("seeder", SocketAddr::from(([10, 0, 0, 1], 2)), &asset);
        assert!(swarm.peers.contains_key("seeder"));
        swarm.unreachable("seeder", SocketAddr::from(([10, 0, 0, 1], 1)), &asset);
        assert!(!swarm.peers.contains_key("seeder"));
        swarm.check();
    }

    #[test]
    fn corrupt_reports_from_one_holders_many_ids_do_not_ban_and_bans_cover_the_network() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([9; 32]);
        let mut swarm = Swarm::default();
        swarm.announce_ok(announce("honest", 9, None), &asset, 4, 30, timeout, now);
        let honest = ["honest".to_string()];
        // Issue 13: two fake ids of one holder banned a seeder for an hour.
        for fake in ["fake-1", "fake-2", "fake-3"] {
            let a = Announce {
                corrupt: &honest,
                ..announce(fake, 5, Some(Bitfield::new(4)))
            };
            swarm.announce_ok(a, &asset, 4, 30, timeout, now);
        }
        assert!(
            swarm.peers.contains_key("honest"),
            "one holder is one reporter"
        );
        // A liar reported by two holders is out under a new id, another port, and the
        // IPv4-mapped form of its address.
        swarm.announce_ok(announce("liar", 7, None), &asset, 4, 30, timeout, now);
        let liar = ["liar".to_string()];
        for (reporter, port) in [("r1", 1), ("r2", 2)] {
            let a = Announce {
                corrupt: &liar,
                ..announce(reporter, port, Some(Bitfield::new(4)))
            };
            swarm.announce_ok(a, &asset, 4, 30, timeout, now);
        }
        assert!(!swarm.peers.contains_key("liar"));
        let mapped: SocketAddr = "[::ffff:10.0.0.7]:4000".parse().unwrap();
        let back = [
            announce("new-id", 7, None),
            Announce {
                addr: Some(SocketAddr::from(([10, 0, 0, 7], 8000))),
                ..announce("new-id-2", 7, None)
            },
            Announce {
                addr: Some(mapped),
                who: Box::leak(Box::new(Identity::of_addr(mapped.ip()))),
                ..announce("new-id-3", 7, None)
            },
        ];
        for a in back {
            let id = a.peer_id;
            swarm.announce_ok(a, &asset, 4, 30, timeout, now);
            assert!(!swarm.peers.contains_key(id), "{id}");
        }
        // An origin on the liar's host is not kept out: origins are never banned.
        let origin = Announce {
            origin: true,
            ..announce("origin", 7, None)
        };
        swarm.announce_ok(origin, &asset, 4, 30, timeout, now);
        assert!(swarm.peers.contains_key("origin"));
        swarm.check();
    }

    /// An announce of `peer_id` serving at 10.0.X.Y:`port`, from that address (X.Y the
    /// port's bytes), in open mode: each port is another holder.
    fn announce<'a>(peer_id: &'a str, port: u16, have: Option<Bitfield>) -> Announce<'a> {
        let [x, y] = port.to_be_bytes();
        let ip = std::net::IpAddr::from([10, 0, x, y]);
        Announce {
            peer_id,
            who: Box::leak(Box::new(Identity::of_addr(ip))),
            may_origin: true,
            addr: Some(SocketAddr::new(ip, port)),
            have,
            origin: false,
            leaving: false,
            uploaded: 0,
            corrupt: &[],
            unreachable: &[],
        }
    }

    #[test]
    fn peers_holding_nothing_are_handed_out_after_those_holding_something() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([6; 32]);
        let mut swarm = Swarm::default();
        // Fake downloaders that never hold a chunk, announced before (and sorting before)
        // the one useful partial peer.
        let fakes: Vec<String> = (0..20).map(|n| format!("fake-{n:02}")).collect();
        for (id, port) in fakes.iter().zip(100..) {
            swarm.announce_ok(
                announce(id, port, partial(8, [])),
                &asset,
                8,
                4,
                timeout,
                now,
            );
        }
        swarm.announce_ok(
            announce("useful", 9, partial(8, [0, 1])),
            &asset,
            8,
            4,
            timeout,
            now,
        );
        let answer = swarm.announce_ok(
            announce("new", 10, partial(8, [])),
            &asset,
            8,
            4,
            timeout,
            now,
        );
        let ids: Vec<&str> = answer.peers.iter().map(|p| p.peer_id).collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert_eq!(ids[0], "useful", "{ids:?}");
        swarm.check();
        // Once it gains a chunk, a peer moves up among those holding something.
        let gained = announce("fake-19", 119, partial(8, [5]));
        swarm.announce_ok(gained, &asset, 8, 4, timeout, now);
        swarm.check();
        assert_eq!(swarm.classes.map(|ids| ids.len()), [0, 2, 20, 0]);
    }

    #[test]
    fn answers_hand_out_others_complete_first_in_a_moving_window() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([0; 32]);
        let mut swarm = Swarm::default();
        for (id, port) in [("a", 1), ("b", 2), ("c", 3), ("e", 5)] {
            swarm.announce_ok(announce(id, port, None), &asset, 4, 2, timeout, now);
        }
        swarm.announce_ok(
            announce("d", 4, Some(Bitfield::new(4))),
            &asset,
            4,
            2,
            timeout,
            now,
        );
        let ids = |answer: &Answer<'_>| -> Vec<String> {
            answer.peers.iter().map(|p| p.peer_id.to_string()).collect()
        };
        let first = swarm.announce_ok(announce("a", 1, None), &asset, 4, 2, timeout, now);
        let first = ids(&first);
        let second = swarm.announce_ok(announce("a", 1, None), &asset, 4, 2, timeout, now);
        let second = ids(&second);
        assert_eq!(first.len(), 2);
        assert!(!first.contains(&"a".to_string()) && !second.contains(&"a".to_string()));
        assert_ne!(first, second, "the window moves on");
        assert!(
            !first.contains(&"d".to_string()) && !second.contains(&"d".to_string()),
            "three complete others fill two places"
        );
        // With room for more than the complete peers, the partial ones follow them.
        let all = swarm.announce_ok(announce("a", 1, None), &asset, 4, 10, timeout, now);
        let all = ids(&all);
        assert_eq!(&all[3..], ["d"], "{all:?}");
        // A leaver is no longer handed out.
        let leaving = Announce {
            leaving: true,
            ..announce("d", 4, Some(Bitfield::new(4)))
        };
        swarm.announce_ok(leaving, &asset, 4, 2, timeout, now);
        assert_eq!(swarm.list(now).len(), 4);
        let answer = swarm.announce_ok(announce("b", 2, None), &asset, 4, 10, timeout, now);
        assert_eq!(ids(&answer).len(), 3, "a, c and e");
        swarm.check();
    }

    #[test]
    fn clients_taking_the_first_half_of_their_answers_take_every_peer_alike() {
        // Issue 14's crowd: every peer announces in turn, is named all 15 others (the whole
        // list fits in one answer) and connects to the first 8.
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([0; 32]);
        let mut swarm = Swarm::default();
        let ids: Vec<String> = (0..16).map(|i| format!("peer{i:02}")).collect();
        for (port, id) in (1..).zip(&ids) {
            swarm.announce_ok(announce(id, port, None), &asset, 4, 16, timeout, now);
        }
        let mut taken: BTreeMap<String, usize> = BTreeMap::new();
        for _round in 0..2 {
            for (port, id) in (1..).zip(&ids) {
                let answer =
                    swarm.announce_ok(announce(id, port, None), &asset, 4, 16, timeout, now);
                assert_eq!(answer.peers.len(), 15);
                for peer in answer.peers.iter().take(8) {
                    *taken.entry(peer.peer_id.to_string()).or_default() += 1;
                }
            }
        }
        // 32 answers of 8: 16 each on average.
        let counts: Vec<usize> = ids
            .iter()
            .map(|id| taken.get(id).copied().unwrap_or(0))
            .collect();
        let (least, most) = (counts.iter().min(), counts.iter().max());
        assert!(least >= Some(&12) && most <= Some(&20), "taken {counts:?}");
    }

    #[test]
    fn two_reports_of_corrupt_data_ban_a_peer_by_id_and_address() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([1; 32]);
        let mut swarm = Swarm::default();
        swarm.announce_ok(announce("liar", 9, None), &asset, 4, 30, timeout, now);
        let liar = ["liar".to_string()];
        for (reporter, port) in [("r1", 1), ("r1", 1), ("r2", 2)] {
            let a = Announce {
                corrupt: &liar,
                ..announce(reporter, port, Some(Bitfield::new(4)))
            };
            swarm.announce_ok(a, &asset, 4, 30, timeout, now);
            let held = swarm.peers.contains_key("liar");
            assert_eq!(held, reporter == "r1", "after {reporter}'s report");
        }
        // Back under the same id, or another id at the same address: still out.
        swarm.announce_ok(announce("liar", 9, None), &asset, 4, 30, timeout, now);
        swarm.announce_ok(announce("other", 9, None), &asset, 4, 30, timeout, now);
        assert!(!swarm.peers.contains_key("liar") && !swarm.peers.contains_key("other"));
        // After the ban, it may come back.
        let later = now + BAN_TIME + timeout * 2;
        swarm.announce_ok(announce("liar", 9, None), &asset, 4, 30, timeout, later);
        assert!(swarm.peers.contains_key("liar"));
        swarm.check();
    }

    #[test]
    fn an_unreachable_report_probes_a_quiet_peer_but_not_a_fresh_one_or_an_origin() {
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        let asset = AssetId([2; 32]);
        let mut swarm = Swarm::default();
        swarm.announce_ok(announce("quiet", 1, None), &asset, 4, 30, timeout, start);
        let origin = Announce {
            origin: true,
            ..announce("origin", 2, None)
        };
        swarm.announce_ok(origin, &asset, 4, 30, timeout, start);
        let gone = ["quiet".to_string(), "origin".to_string()];
        let report = || Announce {
            unreachable: &gone,
            ..announce("reporter", 3, Some(Bitfield::new(4)))
        };
        // Announced a moment ago: alive as far as the tracker can tell.
        let soon = start + REPORT_GRACE / 2;
        let answer = swarm.announce_ok(report(), &asset, 4, 30, timeout, soon);
        assert!(answer.probes.is_empty());
        let later = start + REPORT_GRACE * 2;
        let answer = swarm.announce_ok(report(), &asset, 4, 30, timeout, later);
        let probed: Vec<&str> = answer.probes.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(probed, ["quiet"], "origins stay whatever is reported");
        assert!(
            swarm.peers.contains_key("quiet"),
            "a report alone drops nobody"
        );
        swarm.unreachable("origin", SocketAddr::from(([10, 0, 0, 2], 2)), &asset);
        assert!(swarm.peers.contains_key("origin"));
        swarm.check();
    }
}
