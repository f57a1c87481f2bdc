//! A swarm: the peers of one asset, their heartbeats and timeouts, what they served, and
//! the reports against them (unreachable, corrupt data) and the bans that follow. One
//! announce is applied by [`Swarm::announce`], which answers with the peers to hand out;
//! the routes only parse, authorise and write the answer.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::plan::{Member, OriginPlan};
use crate::api::{Figures, PeerInfo};
use crate::bitfield::Bitfield;
use crate::manifest::AssetId;

/// A peer reported unreachable is dropped from its swarm unless it announced within this
/// long: downloading peers announce twice a second, so two seconds of silence from one that
/// others cannot reach means it is gone; a seeder is dropped until its next heartbeat.
const REPORT_GRACE: Duration = Duration::from_secs(2);
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
    have: Option<Bitfield>,
    origin: bool,
    last_seen: Instant,
    /// For a peer still downloading: the chunks it was told to take from the origin.
    plan: Option<Bitfield>,
}

impl Peer {
    fn is_leecher(&self) -> bool {
        !self.origin && self.have.is_some()
    }

    fn info<'a>(&'a self, peer_id: &'a str, now: Instant) -> PeerInfo<&'a str> {
        PeerInfo {
            peer_id,
            addr: &self.addr_text,
            complete: self.have.is_none(),
            have: self.have.as_ref().map(Bitfield::to_hex),
            origin: self.origin,
            last_seen_secs: now.duration_since(self.last_seen).as_secs(),
        }
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
    /// Where the next answer's list of peers starts, so load spreads over every peer.
    rotation: usize,
    /// Which chunks each leecher takes from the origin.
    origin_plan: OriginPlan,
    /// Peers reported for sending corrupt data, and by whom (peer ids).
    accused: HashMap<String, HashSet<String>>,
    /// Peers no longer handed out for lying, by id and by address, and since when.
    banned_ids: HashMap<String, Instant>,
    banned_addrs: HashMap<SocketAddr, Instant>,
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
            self.peers
                .retain(|_, p| now.duration_since(p.last_seen) <= timeout);
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
        self.peers.remove(accused);
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
            self.counters.insert(peer_id.to_string(), report);
        }
    }

    /// The chunks leecher `me` should take from the origin (see [`OriginPlan`]).
    fn plan_for(&mut self, me: &str, count: u32) -> Bitfield {
        let mut members: Vec<Member<'_>> = self
            .peers
            .iter_mut()
            .filter(|(_, p)| !p.origin)
            .map(|(id, p)| Member {
                id,
                have: p.have.as_ref(),
                share: &mut p.plan,
            })
            .collect();
        self.origin_plan.share_for(me, count, &mut members)
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
    /// For a serving leecher: hex bitfield of the chunks to take from the origin.
    pub origin_share: Option<String>,
}

impl Swarm {
    /// Applies `a` to the swarm of `asset` (`chunk_count` chunks) at `now`: counts its
    /// upload, takes its reports, records or drops the peer, and answers with at most
    /// `max_peers` peers, the origins, and the announcer's origin share.
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
                .is_some_and(|p| !p.origin && now.duration_since(p.last_seen) > REPORT_GRACE)
            {
                self.peers.remove(reported);
            }
        }
        match a.addr {
            Some(addr) if !a.leaving && !self.is_banned(a.peer_id, &addr) => {
                let have = a.have.filter(|h| !h.is_full());
                let plan = self.peers.remove(a.peer_id).and_then(|p| p.plan);
                let peer = Peer {
                    addr,
                    addr_text: addr.to_string(),
                    have,
                    origin: a.origin,
                    last_seen: now,
                    plan,
                };
                self.peers.insert(a.peer_id.to_string(), peer);
            }
            _ => {
                self.peers.remove(a.peer_id);
            }
        }
        let leeching = self.peers.get(a.peer_id).is_some_and(Peer::is_leecher);
        let origin_share = leeching.then(|| self.plan_for(a.peer_id, chunk_count).to_hex());
        let rotation = self.rotation;
        self.rotation = rotation.wrapping_add(max_peers);
        // A stable order (complete peers first, then by id), handed out as a window that
        // moves on with every answer, so that large swarms spread load over every peer.
        // The announcer is told apart by where its key lives, not by comparing ids.
        let me = self
            .peers
            .get_key_value(a.peer_id)
            .map_or(std::ptr::null(), |(k, _)| k as *const String);
        let others: Vec<(&String, &Peer)> = [true, false]
            .into_iter()
            .flat_map(|complete| {
                self.peers.iter().filter(move |(pid, p)| {
                    !p.origin && p.have.is_none() == complete && !std::ptr::eq(*pid, me)
                })
            })
            .collect();
        let start = if others.is_empty() {
            0
        } else {
            rotation % others.len()
        };
        let peers = others
            .iter()
            .cycle()
            .skip(start)
            .take(others.len().min(max_peers))
            .map(|(pid, p)| p.info(pid, now))
            .collect();
        let origins = self
            .peers
            .iter()
            .filter(|(pid, p)| pid.as_str() != a.peer_id && p.origin)
            .map(|(pid, p)| p.info(pid, now))
            .collect();
        Answer {
            peers,
            origins,
            origin_share,
        }
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
            live.clone().filter(|p| p.have.is_none()).count(),
            live.filter(|p| p.origin).count(),
        );
        Figures::new(counts, self.peer_bytes, self.origin_bytes, self.announces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(have: Option<Bitfield>, origin: bool) -> Peer {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        Peer {
            addr,
            addr_text: addr.to_string(),
            have,
            origin,
            last_seen: Instant::now(),
            plan: None,
        }
    }

    #[test]
    fn leechers_get_disjoint_shares_that_rebalance_as_they_arrive() {
        let mut swarm = Swarm::default();
        swarm.peers.insert("origin".into(), peer(None, true));
        swarm
            .peers
            .insert("a".into(), peer(Some(Bitfield::new(100)), false));
        let alone = swarm.plan_for("a", 100);
        assert_eq!(
            alone.count(),
            100,
            "a lone leecher takes everything from the origin"
        );
        for id in ["b", "c", "d"] {
            swarm
                .peers
                .insert(id.into(), peer(Some(Bitfield::new(100)), false));
        }
        let mut union = Bitfield::new(100);
        for id in ["b", "c", "d", "a"] {
            let share = swarm.plan_for(id, 100);
            assert_eq!(share.count(), 25, "{id}: a fair quarter");
            let mut overlap = share.clone();
            overlap.remove_all(&union);
            assert_eq!(overlap.count(), 25, "{id}: shares are disjoint");
            union.union_with(&share);
        }
        assert!(union.is_full(), "together the shares cover every chunk");
        // A complete peer holds everything: nothing more is needed from the origin.
        swarm.peers.insert("seed".into(), peer(None, false));
        assert_eq!(swarm.plan_for("a", 100).count(), 0);
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
        for (id, port) in [("a", 1), ("b", 2), ("c", 3)] {
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
        // A leaver is no longer handed out.
        let leaving = Announce {
            leaving: true,
            ..announce("d", 4, Some(Bitfield::new(4)))
        };
        swarm.announce(leaving, &asset, 4, 2, timeout, now);
        assert_eq!(swarm.list(now).len(), 3);
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
    }
}
