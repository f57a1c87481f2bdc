//! A swarm: the peers of one asset, their heartbeats and timeouts, what they served, and
//! the reports against them (unreachable, corrupt data) and the bans that follow. One
//! announce is applied by [`Swarm::announce`], which answers with the peers to hand out,
//! the announcer's origin share and when it should announce next ([`cadence`]); the routes
//! only parse, authorise and write the answer.
//!
//! Every non-origin peer is a member of the swarm's [`OriginPlan`], which keeps per-chunk
//! availability as haves change; every way out of the swarm (leave, timeout, report, ban)
//! goes through [`Swarm::remove`], so what a departed peer held stops counting.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use super::plan::{OriginPlan, Slot};
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
/// A peer's `uploaded` counter is remembered for this many peer timeouts after its last
/// announce, so that a peer dropped from its swarm (silent too long, reported unreachable)
/// that comes back under the same id is not counted twice. Ids live as long as their
/// process, so a peer away for longer is almost certainly gone for good.
const COUNTER_MEMORY_TIMEOUTS: u32 = 10;
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
        match (self.origin, self.complete) {
            (true, _) => ORIGINS,
            (false, true) => SEEDERS,
            (false, false) => LEECHERS,
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
/// partial ones; origins are all listed.
const SEEDERS: usize = 0;
const LEECHERS: usize = 1;
const ORIGINS: usize = 2;

/// Up to `n` ids of `ids` other than `me`, from just after `cursor` on, wrapping around;
/// the cursor moves to the last one taken. Costs `n` steps, not a walk of every id.
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
    if let Some(last) = taken.last() {
        *cursor = Some(last.to_string());
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

/// The last `uploaded` counter a peer reported, and when.
#[derive(Debug)]
struct Reported {
    uploaded: u64,
    at: Instant,
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
    /// Every peer's last reported counter, kept past its departure (see
    /// [`COUNTER_MEMORY_TIMEOUTS`]); peers that never served are not listed.
    counters: HashMap<String, Reported>,
    /// When `counters` was last swept of peers long gone.
    swept: Option<Instant>,
    /// The peers' ids by class ([`SEEDERS`], [`LEECHERS`], [`ORIGINS`]), in id order: an
    /// answer takes a window of them rather than walking every peer.
    classes: [BTreeSet<String>; 3],
    /// Where the next window of seeders and of leechers starts (after the last id handed
    /// out), so that large swarms spread load over every peer.
    cursors: [Option<String>; 2],
    /// Per-chunk availability, and which chunks each leecher takes from the origin.
    origin_plan: OriginPlan,
    /// Peers reported for sending corrupt data, and by whom (peer ids).
    accused: HashMap<String, HashSet<String>>,
    /// Peers no longer handed out for lying, by id and by address, and since when.
    banned_ids: HashMap<String, Instant>,
    banned_addrs: HashMap<SocketAddr, Instant>,
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
            self.counters
                .retain(|_, r| now.duration_since(r.at) <= memory);
            self.banned_ids
                .retain(|_, at| now.duration_since(*at) <= BAN_TIME);
            self.banned_addrs
                .retain(|_, at| now.duration_since(*at) <= BAN_TIME);
            let peers = &self.peers;
            self.accused.retain(|id, _| peers.contains_key(id));
            self.swept = Some(now);
        }
    }

    /// Takes `reporter`'s word that `accused` sent it corrupt data. A peer reported by
    /// [`LIAR_REPORTS`] different peers is dropped and no longer handed out, under its id
    /// and at its address, for [`BAN_TIME`]. Origins are only logged: they are the
    /// operator's, and the swarm's last resort.
    fn accuse(&mut self, accused: &str, reporter: &str, asset: &AssetId, now: Instant) {
        let Some(peer) = self.peers.get(accused) else {
            return;
        };
        let reporters = self.accused.entry(accused.to_string()).or_default();
        if reporters.len() >= LIAR_REPORTS || !reporters.insert(reporter.to_string()) {
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
            "no longer handing out peer {accused} at {} for {asset}: {LIAR_REPORTS} peers got corrupt data from it",
            peer.addr
        );
        self.banned_addrs.insert(peer.addr, now);
        self.banned_ids.insert(accused.to_string(), now);
        self.remove(accused);
        self.accused.remove(accused);
    }

    /// Whether a peer was banned for lying.
    fn is_banned(&self, peer_id: &str, addr: &SocketAddr) -> bool {
        self.banned_ids.contains_key(peer_id) || self.banned_addrs.contains_key(addr)
    }

    /// Adds to the swarm's totals what `peer_id`'s cumulative `uploaded` counter grew by
    /// since its previous report. A counter lower than before belongs to a restarted peer,
    /// so all of it is new. A leaving peer's counter is forgotten once counted.
    fn count_upload(
        &mut self,
        peer_id: &str,
        uploaded: u64,
        origin: bool,
        leaving: bool,
        now: Instant,
    ) {
        let previous = self.counters.get(peer_id).map_or(0, |r| r.uploaded);
        let increase = uploaded.checked_sub(previous).unwrap_or(uploaded);
        let total = if origin {
            &mut self.origin_bytes
        } else {
            &mut self.peer_bytes
        };
        *total = total.saturating_add(increase);
        if leaving {
            self.counters.remove(peer_id);
        } else if uploaded > 0 || previous > 0 {
            let report = Reported { uploaded, at: now };
            // A peer's id is copied once, not at every announce.
            match self.counters.get_mut(peer_id) {
                Some(known) => *known = report,
                None => {
                    self.counters.insert(peer_id.to_string(), report);
                }
            }
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
        match self.peers.get_mut(a.peer_id) {
            Some(peer) => {
                let class = peer.class();
                peer.slot = match (peer.slot, a.origin) {
                    (Some(slot), false) => {
                        plan.update(slot, have);
                        Some(slot)
                    }
                    (Some(slot), true) => {
                        plan.leave(slot);
                        None
                    }
                    (None, false) => Some(plan.join(have)),
                    (None, true) => None,
                };
                if peer.addr != addr {
                    peer.addr = addr;
                    peer.addr_text = addr.to_string();
                }
                peer.complete = have.is_none();
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
                    origin: a.origin,
                    last_seen: now,
                    slot: (!a.origin).then(|| plan.join(have)),
                    told: FASTEST_ANNOUNCE,
                };
                self.classes[peer.class()].insert(a.peer_id.to_string());
                self.peers.insert(a.peer_id.to_string(), peer);
            }
        }
    }
}

/// One announce, checked, as the swarm applies it.
#[derive(Debug)]
pub(super) struct Announce<'a> {
    /// The announcing peer's id.
    pub peer_id: &'a str,
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
}

impl Swarm {
    /// Applies `a` to the swarm of `asset` (`chunk_count` chunks) at `now`: counts its
    /// upload, takes its reports, records or drops the peer, and answers with at most
    /// `max_peers` peers, the origins, the announcer's origin share, and when to announce
    /// next. Costs what the announcer's have changed by and the answer's size (no bitfield
    /// but the announcer's, and no walk of every peer but the once-a-second prune).
    pub(super) fn announce(
        &mut self,
        a: Announce<'_>,
        asset: &AssetId,
        chunk_count: u32,
        max_peers: usize,
        timeout: Duration,
        now: Instant,
    ) -> Answer<'_> {
        self.prune(now, timeout);
        self.announces += 1;
        self.count_upload(a.peer_id, a.uploaded, a.origin, a.leaving, now);
        for accused in a.corrupt {
            self.accuse(accused, a.peer_id, asset, now);
        }
        for reported in a.unreachable {
            // A peer that announced a moment ago is alive as far as the tracker can tell
            // (the reporter may be the one with the network problem); a quiet one is gone.
            // Origins are registered by their operator and are never dropped on a report.
            if self
                .peers
                .get(reported)
                .is_some_and(|p| !p.origin && now.duration_since(p.last_seen) > p.report_grace())
            {
                self.remove(reported);
            }
        }
        match a.addr {
            Some(addr) if !a.leaving && !self.is_banned(a.peer_id, &addr) => {
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
        let next_announce = cadence(
            phase,
            u32::try_from(downloaders).unwrap_or(u32::MAX),
            super::heartbeat(timeout),
        );
        let origin_share = match self.peers.get_mut(a.peer_id) {
            Some(peer) => {
                peer.told = next_announce;
                peer.slot.filter(|_| peer.is_leecher())
            }
            None => None,
        }
        .map(|slot| self.origin_plan.share_for(slot));
        // Complete peers first, then partial ones, each list in id order and handed out as
        // a window that moves on with every answer.
        let [seeders, leechers, origins] = &self.classes;
        let [seeder_cursor, leecher_cursor] = &mut self.cursors;
        let mut ids = window(seeders, seeder_cursor, a.peer_id, max_peers);
        let room = max_peers.saturating_sub(ids.len());
        ids.extend(window(leechers, leecher_cursor, a.peer_id, room));
        let peers = &self.peers;
        let info = |id| peers.get(id).map(|p: &Peer| p.info(id, now));
        let listed = ids.into_iter().filter_map(info).collect();
        let origins = origins
            .iter()
            .map(String::as_str)
            .filter(|id| *id != a.peer_id)
            .filter_map(info)
            .collect();
        Answer {
            peers: listed,
            origins,
            origin_share,
            next_announce,
        }
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

    #[test]
    fn leechers_get_disjoint_shares_that_rebalance_as_they_arrive() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([3; 32]);
        let mut swarm = Swarm::default();
        let share = |swarm: &mut Swarm, id: &str, port, have| {
            let answer = swarm.announce(announce(id, port, have), &asset, 100, 30, timeout, now);
            chunks(&answer.origin_share)
        };
        let origin = Announce {
            origin: true,
            ..announce("origin", 9, None)
        };
        swarm.announce(origin, &asset, 100, 30, timeout, now);
        let alone = share(&mut swarm, "a", 1, partial(100, []));
        assert_eq!(
            alone.len(),
            100,
            "a lone leecher takes everything from the origin"
        );
        for (id, port) in [("b", 2), ("c", 3), ("d", 4)] {
            share(&mut swarm, id, port, partial(100, []));
        }
        let mut union = Vec::new();
        for (id, port) in [("b", 2), ("c", 3), ("d", 4), ("a", 1)] {
            let share = share(&mut swarm, id, port, partial(100, []));
            assert_eq!(share.len(), 25, "{id}: a fair quarter");
            union.extend(share);
        }
        union.sort();
        union.dedup();
        assert_eq!(union.len(), 100, "disjoint, and together every chunk");
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
        swarm.announce(now_origin, &asset, 100, 30, timeout, now);
        swarm.check();
        share(&mut swarm, "b", 2, None);
        swarm.check();
        assert_eq!(swarm.classes.map(|ids| ids.len()), [2, 2, 2]);
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
                swarm.announce(
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
                swarm.announce(b, &AssetId([4; 32]), 100, 30, timeout, at + timeout / 2);
                swarm.prune(at + timeout + Duration::from_secs(1), timeout)
            }),
            ("report", |swarm, at| {
                let gone = ["gone".to_string()];
                let report = Announce {
                    unreachable: &gone,
                    ..announce("reporter", 3, partial(100, []))
                };
                swarm.announce(
                    report,
                    &AssetId([4; 32]),
                    100,
                    30,
                    Duration::from_secs(60),
                    at,
                );
            }),
            ("ban", |swarm, at| {
                let gone = ["gone".to_string()];
                for (id, port) in [("r1", 4), ("r2", 5)] {
                    let report = Announce {
                        corrupt: &gone,
                        ..announce(id, port, partial(100, []))
                    };
                    swarm.announce(
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
            swarm.announce(
                announce("gone", 1, partial(100, 0..50)),
                &asset,
                100,
                30,
                timeout,
                start,
            );
            let answer = swarm.announce(
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
            swarm.announce(passive(id), &asset, 10, 30, timeout, now);
        }
        let answer = swarm.announce(passive(&ids[0]), &asset, 10, 30, timeout, now);
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
            swarm.announce(leave, &asset, 10, 30, timeout, now);
        }
        let answer = swarm.announce(passive(&ids[100]), &asset, 10, 30, timeout, now);
        assert_eq!(answer.next_announce, Duration::from_secs(2));
        let later = now + timeout + Duration::from_secs(1);
        let answer = swarm.announce(passive(&ids[0]), &asset, 10, 30, timeout, later);
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
        swarm.announce(origin, &asset, count, 30, timeout, now);
        let ids: Vec<String> = (0..1000)
            .map(|p| format!("peer-{p:04}-0123456789abcdef"))
            .collect();
        for (p, id) in ids.iter().enumerate() {
            // Each holds its own stretch of 40 chunks.
            let p = p as u32;
            let have = partial(count, p * 40..p * 40 + 40);
            swarm.announce(
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
        let answer = swarm.announce(
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
        let mut swarm = Swarm::default();
        swarm.count_upload("origin", 100, true, false, start);
        swarm.count_upload("a", 50, false, false, start);
        swarm.count_upload("a", 80, false, false, start);
        swarm.count_upload("origin", 100, true, false, start);
        assert_eq!((swarm.peer_bytes, swarm.origin_bytes), (80, 100));
        // A counter lower than before is a restarted peer: all of it is new.
        swarm.count_upload("a", 10, false, false, start);
        assert_eq!(swarm.peer_bytes, 90);
        // Peers that never served cost no memory.
        swarm.count_upload("leecher", 0, false, false, start);
        assert!(!swarm.counters.contains_key("leecher"));
        // Gone for two peer timeouts and back under the same id: only the increase counts.
        let later = start + 2 * timeout;
        swarm.prune(later, timeout);
        swarm.count_upload("a", 15, false, false, later);
        assert_eq!(swarm.peer_bytes, 95);
        // A leaving peer's last increase counts, then its counter is forgotten.
        swarm.count_upload("a", 20, false, true, later);
        assert_eq!(swarm.peer_bytes, 100);
        assert!(!swarm.counters.contains_key("a"));
        // Past the memory, a counter is forgotten and would count in full again.
        swarm.prune(start + (COUNTER_MEMORY_TIMEOUTS + 1) * timeout, timeout);
        assert!(swarm.counters.is_empty());
        assert_eq!((swarm.peer_bytes, swarm.origin_bytes), (100, 100));
    }

    fn announce<'a>(peer_id: &'a str, port: u16, have: Option<Bitfield>) -> Announce<'a> {
        Announce {
            peer_id,
            addr: Some(SocketAddr::from(([127, 0, 0, 1], port))),
            have,
            origin: false,
            leaving: false,
            uploaded: 0,
            corrupt: &[],
            unreachable: &[],
        }
    }

    #[test]
    fn answers_hand_out_others_complete_first_in_a_moving_window() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([0; 32]);
        let mut swarm = Swarm::default();
        for (id, port) in [("a", 1), ("b", 2), ("c", 3), ("e", 5)] {
            swarm.announce(announce(id, port, None), &asset, 4, 2, timeout, now);
        }
        swarm.announce(
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
        let first = swarm.announce(announce("a", 1, None), &asset, 4, 2, timeout, now);
        let first = ids(&first);
        let second = swarm.announce(announce("a", 1, None), &asset, 4, 2, timeout, now);
        let second = ids(&second);
        assert_eq!(first.len(), 2);
        assert!(!first.contains(&"a".to_string()) && !second.contains(&"a".to_string()));
        assert_ne!(first, second, "the window moves on");
        assert!(
            !first.contains(&"d".to_string()) && !second.contains(&"d".to_string()),
            "three complete others fill two places"
        );
        // With room for more than the complete peers, the partial ones follow them.
        let all = swarm.announce(announce("a", 1, None), &asset, 4, 10, timeout, now);
        let all = ids(&all);
        assert_eq!(&all[3..], ["d"], "{all:?}");
        // A leaver is no longer handed out.
        let leaving = Announce {
            leaving: true,
            ..announce("d", 4, Some(Bitfield::new(4)))
        };
        swarm.announce(leaving, &asset, 4, 2, timeout, now);
        assert_eq!(swarm.list(now).len(), 4);
        let answer = swarm.announce(announce("b", 2, None), &asset, 4, 10, timeout, now);
        assert_eq!(ids(&answer).len(), 3, "a, c and e");
        swarm.check();
    }

    #[test]
    fn two_reports_of_corrupt_data_ban_a_peer_by_id_and_address() {
        let timeout = Duration::from_secs(60);
        let now = Instant::now();
        let asset = AssetId([1; 32]);
        let mut swarm = Swarm::default();
        swarm.announce(announce("liar", 9, None), &asset, 4, 30, timeout, now);
        let liar = ["liar".to_string()];
        for (reporter, port) in [("r1", 1), ("r1", 1), ("r2", 2)] {
            let a = Announce {
                corrupt: &liar,
                ..announce(reporter, port, Some(Bitfield::new(4)))
            };
            swarm.announce(a, &asset, 4, 30, timeout, now);
            let held = swarm.peers.contains_key("liar");
            assert_eq!(held, reporter == "r1", "after {reporter}'s report");
        }
        // Back under the same id, or another id at the same address: still out.
        swarm.announce(announce("liar", 9, None), &asset, 4, 30, timeout, now);
        swarm.announce(announce("other", 9, None), &asset, 4, 30, timeout, now);
        assert!(!swarm.peers.contains_key("liar") && !swarm.peers.contains_key("other"));
        // After the ban, it may come back.
        let later = now + BAN_TIME + timeout * 2;
        swarm.announce(announce("liar", 9, None), &asset, 4, 30, timeout, later);
        assert!(swarm.peers.contains_key("liar"));
        swarm.check();
    }

    #[test]
    fn an_unreachable_report_drops_a_quiet_peer_but_not_a_fresh_one_or_an_origin() {
        let timeout = Duration::from_secs(60);
        let start = Instant::now();
        let asset = AssetId([2; 32]);
        let mut swarm = Swarm::default();
        swarm.announce(announce("quiet", 1, None), &asset, 4, 30, timeout, start);
        let origin = Announce {
            origin: true,
            ..announce("origin", 2, None)
        };
        swarm.announce(origin, &asset, 4, 30, timeout, start);
        let gone = ["quiet".to_string(), "origin".to_string()];
        let report = || Announce {
            unreachable: &gone,
            ..announce("reporter", 3, Some(Bitfield::new(4)))
        };
        // Announced a moment ago: alive as far as the tracker can tell.
        swarm.announce(report(), &asset, 4, 30, timeout, start + REPORT_GRACE / 2);
        assert!(swarm.peers.contains_key("quiet"));
        let later = start + REPORT_GRACE * 2;
        let answer = swarm.announce(report(), &asset, 4, 30, timeout, later);
        assert!(answer.peers.is_empty(), "{:?}", answer.peers);
        assert_eq!(answer.origins.len(), 1, "origins stay whatever is reported");
        assert!(!swarm.peers.contains_key("quiet"));
        swarm.check();
    }
}
