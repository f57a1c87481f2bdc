//! The tracker's state kept in Redis (`tracker --redis redis://HOST:PORT/DB`), so that any
//! number of tracker processes serve the same swarms: the catalog's manifests, every swarm's
//! peers, what they hold and the origin shares. Each announce is one round trip: one Lua
//! script ([`ANNOUNCE`], by EVALSHA, loaded once and again on NOSCRIPT) records the peer,
//! adds what it holds to the availability, tops up its origin share and picks the peers of
//! the answer. The script reads Redis's clock, so trackers whose clocks differ agree.
//!
//! The seam: `State::shared` is `None` (the embedded in-memory swarms, exactly as before)
//! or `Some` (this module); the routes ask it first, at four places (announce, batch
//! entry, peer list, catalog miss). Two arms of an `Option` rather than a trait: the two
//! sides share no code below the routes (the in-memory swarm is a locked struct walked in
//! Rust, this one a script), so a trait would be one method per route with one caller each.
//!
//! In Redis, per asset (keys share the hash tag `{ID}`): `swarm` and `origin` (hashes: peer
//! id → record, the record being the entry's expiry in Redis's ms, the kind letter, the
//! address and the holder, so that a seeder's heartbeat writes one field), `leech` (the
//! serving downloaders, a sorted set scored by expiry: the cadence's and the fair share's
//! count), `full:GEN` (a seeder announced in this generation of one peer timeout),
//! `held:GEN` (the union of the haves of serving downloaders, by generation), `claim:GEN`
//! (chunks leased as origin shares, by generation of one lease), `mine:ID` (a peer's
//! lease, living two leases) and `pool` (the answer's candidates, below). Catalog:
//! `sc:manifest:ID` (the manifest's TOML) and `sc:assets` (the ids). Entries expire by the
//! expiry in their record: an expired one is never handed out (the tracker drops it from
//! the pool) and is deleted when a sample meets it, so a lost host disappears from the
//! answers within its peer timeout with no per-entry TTL to refresh.
//!
//! The budget (issue 17: at least half the in-memory throughput, p99 ≤ 10 ms, 100 000
//! peers in 1 000 swarms, on 2 cores): the in-memory tracker and the load generator spend
//! ~65 µs of CPU per announce over both cores (27 000 announces/s); half that rate leaves
//! ~130 µs, so the Redis side (the script in Redis's one thread, Redis's own socket work,
//! and the tracker's round trip to it) must stay within ~65 µs. What it costs, measured
//! (load average 10-30): a seeder's heartbeat runs 7 calls in the script, ~40-50 µs of
//! EVALSHA and ~60 µs of Redis CPU with its socket work (it was ~35 calls and ~220 µs); the
//! tracker's round trip ~40 µs more than in memory, most of it the kernel waking the
//! worker. The costly part was the answer: sampling a hash of a hundred records (Redis
//! keeps it as a listpack, which HRANDFIELD seeks once per pick) and shaping the sample in
//! Lua took ~150 µs. So the sample is kept as the swarm's `pool` (candidates four times
//! the answer's size) for the next 16 announces or a quarter of the peer timeout, and a
//! join, a leave, a new address or a new kind drops it; each tracker picks its answer from
//! the pool (complete peers first, at random). A tracker keeps the last pool it was sent
//! for each swarm and names its version in the call, and the script sends the pool only
//! when it has another version (it sent the pool's 3-4 KB with every reply before).
//! A seeder's announce skips the availability bitmaps (it marks `full:GEN`, once per
//! generation) and the downloaders' count. That still cost one round trip per heartbeat,
//! ~90 µs of tracker CPU and ~80 µs of Redis's (0.28-0.33× the in-memory throughput): the
//! context switches and socket work on both sides, which no script change removes. So a
//! seeder's heartbeat is answered from the tracker's view and written behind in batches
//! (`shared_beats`): ~58 µs of tracker CPU and ~25 µs of Redis's per heartbeat.
//!
//! What differs from the in-memory policy (also in PROTOCOL.md, appendix B):
//! - Shares are leases: a downloader keeps what it leased and still lacks while it
//!   announces, and gets new chunks nobody holds or leased, up to
//!   max(FIRST_GRANT, min(unheld / downloaders, GROWTH × chunks held)). A lease is not
//!   taken back from a live peer that makes no progress, nor rebalanced when others arrive;
//!   a dead peer's lease lapses after one to two lease periods. A lost or lapsed claim
//!   costs a duplicate origin fetch, never a wrong byte (every chunk is verified).
//! - A holder has at most [`MAX_IDS_PER_HOLDER`] live peer ids per swarm (the script counts
//!   them in `own:HOLDER`, a sorted set by expiry; one more is refused with 429), which
//!   bounds its entries and its unproven leases (a first grant each); there is no
//!   per-identity cap on what the leases of proven downloaders sum to, no `uploaded`
//!   figures, no corrupt-data reports or bans, no probing of peers reported unreachable
//!   (those fields are accepted and ignored), and a peer id is bound to its holder only
//!   while it is live.
//! - Peers in an answer are a random pick (complete ones first) from the swarm's pool, a
//!   random sample renewed every 16 announces, a quarter of the peer timeout, or a change
//!   of the swarm's members; not a moving window.
//! - `/stats` and `/metrics` show this process's counters, not the swarms in Redis.
//! - `--retain` is refused with `--redis`. Tags, unpublished assets, origin URLs and
//!   content keys are shared too (`shared_meta`); the announce script reads the origin URLs
//!   (`sc:origin-urls:ID`) and tells an asset unpublished through another tracker
//!   (its manifest gone from Redis).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::catalog::Entry;
use super::heartbeat;
use super::identity::Identity;
use super::plan::{FIRST_GRANT, GROWTH, runs, stall_bound};
use super::routes::{HttpError, Reply, err, json};
use super::shared_beats::{Beat, Beats, View, write_behind};
use super::swarm::{Phase, cadence};
use crate::api::{AnnounceEvent, AnnounceRequest, AnnounceResponse, PeerInfo};
use crate::bitfield::Bitfield;
use crate::manifest::{AssetId, Manifest};
use crate::sync::LockExt;

/// The announce script (see its header for keys and arguments).
const ANNOUNCE: &str = include_str!("shared/announce.lua");
/// The peer-list script.
const LIST: &str = include_str!("shared/list.lua");
/// Connecting to Redis on a LAN takes a millisecond; a second covers a loaded one, and a
/// Redis that does not answer within it is reported at once (503, clients retry or fail
/// over) rather than holding a request thread.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// One script call takes well under a millisecond; 2 s is a Redis in trouble.
pub(super) const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Idle connections kept: one per request thread that may talk to Redis at once.
const POOL: usize = super::HTTP_THREADS;
/// A swarm's keys outlive its last announce by this many peer timeouts, then Redis drops
/// them: an abandoned swarm costs nothing for long.
const KEY_LIFETIME_TIMEOUTS: u32 = 10;
/// Live peer ids one holder (a token, or an address's network in open mode) may have in
/// one swarm: the in-memory tracker bounds what a holder's ids weigh by rate limits and
/// per-identity share caps of one process; in Redis several trackers (each with its own
/// rate limits) fill one store, so the store bounds it. A NAT of a thousand CI runners
/// fetching one asset fits; a token holder announcing fake ids through every tracker
/// adds at most this many entries (and first grants) to a swarm.
pub(super) const MAX_IDS_PER_HOLDER: usize = 1024;
/// Most peers (and most origins) `GET /assets/ID/peers` lists from Redis.
const MAX_LISTED: usize = 10_000;
/// Most origins in an answer (the script's pool holds at most as many).
const MAX_ORIGINS: usize = 16;
/// Swarms whose pools (a few KB each) and views a tracker keeps (`shared_beats`); past it
/// they are all dropped and fetched again, one script reply each.
const POOLS_KEPT: usize = 4096;

/// Redis as the tracker's shared state: a client, idle connections, the scripts.
pub(super) struct Shared {
    client: redis::Client,
    /// The seed of the next answer's pick (a Weyl sequence from the clock).
    seed: AtomicU64,
    idle: Mutex<Vec<redis::Connection>>,
    /// The last pools the script sent, by swarm (an announce names the version it holds
    /// and gets the pools again only when they changed), and the seeders' heartbeats
    /// answered from them and written behind.
    beats: Arc<Beats>,
    announce: redis::Script,
    list: redis::Script,
    url: String,
    /// Tags, origin URLs and content keys (`shared_meta`).
    pub(super) meta: super::shared_meta::Meta,
}

/// One announce as the script takes it, checked by the routes.
pub(super) struct Announce<'a> {
    pub peer_id: &'a str,
    /// The holder, as [`super::identity::Identity::key_text`] writes it.
    pub owner: &'a str,
    pub addr: Option<String>,
    pub kind: Kind,
    /// The chunks held; `None` for every chunk.
    pub have: Option<&'a Bitfield>,
    pub chunk_count: u32,
    pub peer_timeout: Duration,
    /// How long a share stays leased without an announce of its holder.
    pub lease: Duration,
    /// Peers wanted in the answer (0 for a batch entry).
    pub max_peers: usize,
    /// An instance id to use if Redis has none (it restarted empty, or is new).
    pub fresh_instance: &'a str,
}

/// What an announcing peer is, as the script files it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    Seeder,
    Partial,
    Empty,
    Origin,
    Leaving,
}

impl Kind {
    /// The kind of an announce: leaving, an origin, or what it holds (`None`: everything).
    pub(super) fn of(leaving: bool, origin: bool, have: Option<&Bitfield>) -> Kind {
        match have {
            _ if leaving => Kind::Leaving,
            _ if origin => Kind::Origin,
            None => Kind::Seeder,
            Some(h) if h.is_full() => Kind::Seeder,
            Some(h) if h.count() == 0 => Kind::Empty,
            Some(_) => Kind::Partial,
        }
    }

    fn letter(self) -> &'static str {
        match self {
            Kind::Seeder => "s",
            Kind::Partial => "p",
            Kind::Empty => "e",
            Kind::Origin => "o",
            Kind::Leaving => "x",
        }
    }
}

/// A swarm's answer candidates as the script sent them: the peers' and the origins' lines,
/// and the version naming them.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Pools {
    pub version: String,
    pub peers: Vec<Record>,
    pub origins: Vec<Record>,
}

/// The script's answer, parsed.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    /// The dataset's instance id, and how long ago it was made.
    pub instance: String,
    pub instance_age: Duration,
    /// Serving downloaders in the swarm (the cadence's input).
    pub leechers: u32,
    pub peers: Vec<PeerInfo>,
    pub origins: Vec<PeerInfo>,
    /// The origin share as runs, for a serving downloader.
    pub origin_share: Option<Vec<[u32; 2]>>,
    /// Redis holds the asset's manifest: false after it restarted empty (or was flushed),
    /// or after an unpublish.
    pub known: bool,
    /// The asset's origin URLs (`shared_meta`).
    pub origin_urls: Vec<String>,
}

/// The bitmap the script takes for `have` of `count` chunks (`None`: all), with the spare
/// bits of the last byte set, so that they never look like a chunk nobody holds; and how
/// many spare bits there are.
pub(super) fn have_bitmap(have: Option<&Bitfield>, count: u32) -> (Vec<u8>, u32) {
    let full;
    let have = match have {
        Some(h) => h,
        None => {
            full = Bitfield::full(count);
            &full
        }
    };
    let mut bytes = have.as_bytes().to_vec();
    let spare = (8 - count % 8) % 8;
    if let Some(last) = bytes.last_mut() {
        *last |= (1u8 << spare) - 1;
    }
    (bytes, spare)
}

/// The chunks of a share bitmap below `count`, as runs.
pub(super) fn share_runs(bitmap: &[u8], count: u32) -> Vec<[u32; 2]> {
    let limit = (count as usize).min(bitmap.len() * 8);
    runs((0..limit as u32).filter(|&i| bitmap[(i / 8) as usize] & (0x80 >> (i % 8)) != 0))
}

/// Spreads the seeds of consecutive picks (2^64 / φ, odd).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// One peer's record in Redis, as the scripts hand it out in lines `id\trecord\n`, the
/// record being the expiry in ms (13 digits), the kind letter, the address, a tab and the
/// holder (which the tracker does not use here). Parsed once when a pool arrives.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub id: String,
    /// Redis's clock, in ms, when the peer's entry lapses.
    pub expiry: u64,
    pub kind: u8,
    pub addr: String,
}

impl Record {
    /// The peer as an answer lists it, at Redis's clock `now` (ms), its entry having been
    /// made `ttl` ms before its expiry.
    fn info(&self, now: u64, ttl: u64) -> PeerInfo {
        PeerInfo {
            peer_id: self.id.clone(),
            addr: self.addr.clone(),
            complete: self.kind == b's',
            origin: self.kind == b'o',
            last_seen_secs: now.saturating_sub(self.expiry.saturating_sub(ttl)) / 1000,
        }
    }
}

/// The records of the scripts' lines; malformed lines are skipped (Redis is ours, but its
/// data outlives versions of this code).
pub(super) fn records(lines: &[u8]) -> impl Iterator<Item = Record> + '_ {
    lines.split(|&b| b == b'\n').filter_map(|line| {
        let line = std::str::from_utf8(line).ok()?;
        let (id, record) = line.split_once('\t')?;
        let expiry = record.get(..13)?.parse().ok()?;
        let kind = *record.as_bytes().get(13)?;
        let (addr, _holder) = record.get(14..)?.split_once('\t')?;
        (!id.is_empty() && !addr.is_empty()).then(|| Record {
            id: id.to_string(),
            expiry,
            kind,
            addr: addr.to_string(),
        })
    })
}

/// How an answer's peers are picked from the swarm's pool of candidates.
pub(super) struct Pick<'a> {
    /// The announcing peer, never in its own answer.
    pub asker: &'a str,
    pub max_peers: usize,
    /// The peer timeout, in ms.
    pub ttl_ms: u64,
    /// Varies the pick between the answers drawn from one pool.
    pub seed: u64,
}

impl Pick<'_> {
    /// At most `max` live candidates of `pool` at Redis's clock `now` (ms) other than the
    /// asker, chosen at random, complete ones first, then partial, then empty.
    pub(super) fn choose(&self, pool: &[Record], now: u64, max: usize) -> Vec<PeerInfo> {
        let mut live: Vec<&Record> = pool
            .iter()
            .filter(|r| r.expiry > now && r.id != self.asker)
            .collect();
        // Fisher-Yates with xorshift64*: enough to spread the load over the candidates.
        let mut x = self.seed | 1;
        for i in (1..live.len()).rev() {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let j = (x.wrapping_mul(0x2545_f491_4f6c_dd1d) % (i as u64 + 1)) as usize;
            live.swap(i, j);
        }
        let rank = |k: u8| match k {
            b's' => 0,
            b'p' => 1,
            _ => 2,
        };
        live.sort_by_key(|r| rank(r.kind));
        live.iter()
            .take(max)
            .map(|r| r.info(now, self.ttl_ms))
            .collect()
    }
}

/// A timeout as the scripts take it: whole ms, at least 1.
pub(super) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn unavailable(url: &str, e: &redis::RedisError) -> HttpError {
    err(
        503,
        format!("the tracker's Redis at {url} failed ({e}); retry, or use another tracker"),
    )
}

impl Shared {
    /// Checks `url` and that Redis answers (with a clear error if not).
    pub(super) fn connect(url: &str, peer_timeout: Duration) -> Result<Shared> {
        if !url.starts_with("redis://") {
            bail!("--redis {url:?} must look like redis://HOST:PORT/DB");
        }
        let client = redis::Client::open(url).with_context(|| format!("--redis {url:?}"))?;
        let shared = Shared {
            client,
            seed: AtomicU64::new(crate::backoff::seed_from_clock()),
            idle: Mutex::new(Vec::new()),
            beats: Arc::new(Beats::new(peer_timeout, POOLS_KEPT)),
            announce: redis::Script::new(ANNOUNCE),
            list: redis::Script::new(LIST),
            url: url.to_string(),
            meta: super::shared_meta::Meta::new(),
        };
        shared
            .with(|c| redis::cmd("PING").query::<String>(c))
            .map_err(|e| anyhow::anyhow!("{}", e.message))
            .with_context(|| format!("connecting to Redis at {url}: is redis-server running?"))?;
        let (beats, client, url) = (shared.beats.clone(), shared.client.clone(), url.to_string());
        std::thread::Builder::new()
            .name("redis-heartbeats".into())
            .spawn(move || write_behind(beats, client, url))
            .context("starting the tracker's heartbeat writer")?;
        Ok(shared)
    }

    /// Runs `f` on an idle connection, or a new one; a connection that failed is dropped,
    /// so that after a Redis restart the next request connects anew.
    pub(super) fn with<T>(
        &self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, HttpError> {
        let idle = self.idle.locked().pop();
        let mut conn = match idle {
            Some(c) => c,
            None => {
                let c = self
                    .client
                    .get_connection_with_timeout(CONNECT_TIMEOUT)
                    .map_err(|e| unavailable(&self.url, &e))?;
                c.set_read_timeout(Some(IO_TIMEOUT))
                    .and_then(|()| c.set_write_timeout(Some(IO_TIMEOUT)))
                    .map_err(|e| unavailable(&self.url, &e))?;
                c
            }
        };
        match f(&mut conn) {
            Ok(v) => {
                let mut idle = self.idle.locked();
                if idle.len() < POOL {
                    idle.push(conn);
                }
                Ok(v)
            }
            Err(e) => {
                // A refused script (a bug of ours) leaves the connection sound; anything
                // else may have left it mid-answer.
                if e.is_io_error() || e.is_connection_dropped() || e.is_timeout() {
                    log::warn!("tracker: Redis at {} failed: {e}; reconnecting", self.url);
                } else {
                    log::error!("tracker: Redis at {} refused a call: {e}", self.url);
                }
                Err(unavailable(&self.url, &e))
            }
        }
    }

    /// Applies one announce to the swarm of `asset` and answers it, in one round trip.
    pub(super) fn announce(&self, asset: &AssetId, a: &Announce<'_>) -> Result<Answer, HttpError> {
        if let Some(answer) = self.heartbeat(asset, a) {
            return Ok(answer);
        }
        let prefix = format!("sc:{{{asset}}}:");
        let (have, spare) = match a.kind {
            Kind::Origin | Kind::Leaving => (Vec::new(), 0),
            _ => have_bitmap(a.have, a.chunk_count),
        };
        let held = a.have.map_or(a.chunk_count, Bitfield::count);
        let memory = a.peer_timeout.saturating_mul(KEY_LIFETIME_TIMEOUTS);
        let mut call = self.announce.prepare_invoke();
        for part in ["swarm", "origin", "leech", ""] {
            call.key(format!("{prefix}{part}"));
        }
        call.key("sc:instance")
            .key(format!("sc:manifest:{asset}"))
            .key(Shared::origin_urls_key(asset))
            .arg(a.peer_id)
            .arg(a.owner)
            .arg(a.addr.as_deref().unwrap_or(""))
            .arg(a.kind.letter())
            .arg(have)
            .arg(held)
            .arg(a.chunk_count)
            .arg(spare)
            .arg(ms(a.peer_timeout))
            .arg(ms(a.lease))
            .arg(a.max_peers)
            .arg(FIRST_GRANT)
            .arg(GROWTH)
            .arg(a.fresh_instance)
            .arg(ms(memory))
            .arg(MAX_IDS_PER_HOLDER);
        let held = self.beats.pools(asset);
        call.arg(&held.version);
        let reply: redis::Value = self.with(|c| call.invoke(c))?;
        let pick = Pick {
            asker: a.peer_id,
            max_peers: a.max_peers,
            ttl_ms: ms(a.peer_timeout),
            seed: self.seed.fetch_add(GOLDEN, Ordering::Relaxed),
        };
        let made = Instant::now();
        let parsed = parse_answer(reply, a.chunk_count, &pick, held);
        if let Ok((answer, pools, redis_now)) = &parsed
            && a.max_peers > 0
        {
            let view = View {
                made,
                pools: pools.clone(),
                instance: answer.instance.clone(),
                instance_age: answer.instance_age,
                redis_now: *redis_now,
                origin_urls: answer.origin_urls.clone(),
            };
            let seeder = match (a.kind, &a.addr) {
                (Kind::Seeder, Some(addr)) => Some((a.owner, addr.as_str())),
                _ => None,
            };
            if answer.known {
                self.beats.learned(asset, view, a.peer_id, seeder);
            } else {
                self.beats.forget(asset);
            }
        }
        parsed.map(|(answer, ..)| answer).map_err(|m| {
            let status = if m.starts_with("peer id") {
                409
            } else if m.starts_with("holder") {
                429
            } else {
                500
            };
            err(status, m.replace("{id}", a.peer_id))
        })
    }

    /// A seeder's heartbeat answered from this tracker's view of the swarm, its refresh
    /// queued for the writer (`shared_beats`); `None`: take the full path.
    fn heartbeat(&self, asset: &AssetId, a: &Announce<'_>) -> Option<Answer> {
        let addr = a
            .addr
            .as_deref()
            .filter(|_| a.kind == Kind::Seeder && a.max_peers > 0)?;
        let now = Instant::now();
        let view = self.beats.view_for(asset, a.peer_id, a.owner, addr, now)?;
        let beat = Beat {
            asset: *asset,
            peer_id: a.peer_id.to_string(),
            owner: a.owner.to_string(),
            addr: addr.to_string(),
        };
        if !self.beats.queue(beat) {
            return None;
        }
        let elapsed = now.saturating_duration_since(view.made);
        let redis_now = view.redis_now + u64::try_from(elapsed.as_millis()).unwrap_or(0);
        let pick = Pick {
            asker: a.peer_id,
            max_peers: a.max_peers,
            ttl_ms: ms(a.peer_timeout),
            seed: self.seed.fetch_add(GOLDEN, Ordering::Relaxed),
        };
        Some(Answer {
            instance: view.instance.clone(),
            instance_age: view.instance_age + elapsed,
            leechers: 0,
            peers: pick.choose(&view.pools.peers, redis_now, a.max_peers),
            origins: pick.choose(&view.pools.origins, redis_now, MAX_ORIGINS),
            origin_share: None,
            known: true,
            origin_urls: view.origin_urls.clone(),
        })
    }

    /// Every live peer and origin of the swarm of `asset`.
    pub(super) fn peers(
        &self,
        asset: &AssetId,
        peer_timeout: Duration,
    ) -> Result<Vec<PeerInfo>, HttpError> {
        let prefix = format!("sc:{{{asset}}}:");
        let mut call = self.list.prepare_invoke();
        call.key(format!("{prefix}swarm"))
            .key(format!("{prefix}origin"))
            .arg(MAX_LISTED);
        let (now, lines): (u64, Vec<u8>) = self.with(|c| call.invoke(c))?;
        let ttl = ms(peer_timeout);
        Ok(records(&lines)
            .filter(|r| r.expiry > now)
            .map(|r| r.info(now, ttl))
            .collect())
    }

    /// Keeps a published manifest for the other trackers (the first one stays).
    pub(super) fn publish(&self, id: &AssetId, toml: &str) -> Result<(), HttpError> {
        self.with(|c| {
            redis::pipe()
                .cmd("SET")
                .arg(format!("sc:manifest:{id}"))
                .arg(toml)
                .arg("NX")
                .ignore()
                .cmd("SADD")
                .arg("sc:assets")
                .arg(id.to_string())
                .ignore()
                .query::<()>(c)
        })
    }

    /// Drops an unpublished asset's manifest from Redis.
    pub(super) fn forget(&self, id: &AssetId) -> Result<(), HttpError> {
        self.with(|c| {
            redis::pipe()
                .cmd("DEL")
                .arg(format!("sc:manifest:{id}"))
                .ignore()
                .cmd("SREM")
                .arg("sc:assets")
                .arg(id.to_string())
                .ignore()
                .query::<()>(c)
        })
    }

    /// The manifest TOML another tracker published, if any.
    pub(super) fn manifest(&self, id: &AssetId) -> Result<Option<String>, HttpError> {
        self.with(|c| {
            redis::cmd("GET")
                .arg(format!("sc:manifest:{id}"))
                .query::<Option<String>>(c)
        })
    }

    /// Every asset id published through any tracker.
    pub(super) fn ids(&self) -> Result<Vec<String>, HttpError> {
        self.with(|c| {
            redis::cmd("SMEMBERS")
                .arg("sc:assets")
                .query::<Vec<String>>(c)
        })
    }
}

impl super::State {
    /// `POST /assets/{id}/announce` answered from Redis: one script call. Takes what the
    /// route checked, as the in-memory path's `Announce` does.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn announce_shared(
        &self,
        shared: &Shared,
        id: AssetId,
        req: AnnounceRequest,
        addr: Option<SocketAddr>,
        have: Option<Bitfield>,
        who: &Identity,
        chunk_count: u32,
    ) -> Result<Reply, HttpError> {
        self.announces.fetch_add(1, Ordering::Relaxed);
        let leaving = req.event == Some(AnnounceEvent::Stopped);
        let kind = Kind::of(leaving, req.origin, have.as_ref());
        let answer = self.announce_to(
            shared,
            &id,
            &req.peer_id,
            who,
            addr,
            kind,
            have.as_ref(),
            chunk_count,
            self.max_peers,
        )?;
        let heartbeat = heartbeat(self.peer_timeout);
        let phase = match kind {
            Kind::Empty => Phase::Joining,
            Kind::Partial => Phase::Downloading,
            _ => Phase::Seeding,
        };
        let next_announce = cadence(phase, answer.leechers, heartbeat);
        let warming_up_secs = self.rewarm(shared, &id, &answer, leaving)?;
        self.mirror_origin_urls(&id, &answer.origin_urls);
        Ok(json(
            200,
            &AnnounceResponse {
                interval_secs: heartbeat.as_secs(),
                next_announce_ms: Some(next_announce.as_millis() as u64),
                instance: Some(answer.instance),
                warming_up_secs,
                chunk_count,
                peers: answer.peers,
                origins: answer.origins,
                origin_urls: answer.origin_urls,
                your_addr: addr.map(|a| a.to_string()),
                origin_share: answer.origin_share,
                ticket: self
                    .auth
                    .as_ref()
                    .filter(|_| !leaving)
                    .map(|a| hex::encode(a.keys.issue(&id, &req.peer_id, a.ticket_ttl))),
                keys: self.keys().keys,
            },
        ))
    }

    /// After Redis restarted empty (it lost the manifest of `id`, which this tracker
    /// holds): the manifest is stored again for the other trackers, and an answer with no
    /// source says "warming up" until every live source has announced again (one
    /// heartbeat, with the in-memory tracker's slack, from Redis's new start).
    fn rewarm(
        &self,
        shared: &Shared,
        id: &AssetId,
        answer: &Answer,
        leaving: bool,
    ) -> Result<Option<u64>, HttpError> {
        if answer.known {
            return Ok(None);
        }
        self.restore_shared(shared, id)?;
        let period = heartbeat(self.peer_timeout).saturating_add(super::warmup::HEARTBEAT_SLACK);
        let sources = !answer.peers.is_empty() || !answer.origins.is_empty();
        Ok((!leaving && !sources)
            .then(|| period.checked_sub(answer.instance_age))
            .flatten()
            .map(|left| left.as_secs().max(1)))
    }

    /// One announce of `peer_id` to the swarm of `id` in Redis.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn announce_to(
        &self,
        shared: &Shared,
        id: &AssetId,
        peer_id: &str,
        who: &Identity,
        addr: Option<SocketAddr>,
        kind: Kind,
        have: Option<&Bitfield>,
        chunk_count: u32,
        max_peers: usize,
    ) -> Result<Answer, HttpError> {
        let heartbeat = heartbeat(self.peer_timeout);
        // Leases last as long as the in-memory plan lets a share stall.
        let lease = stall_bound(cadence(Phase::Downloading, 0, heartbeat));
        let owner = who.key_text();
        let answer = shared.announce(
            id,
            &Announce {
                peer_id,
                owner: &owner,
                addr: addr.map(|a| a.to_string()),
                kind,
                have,
                chunk_count,
                peer_timeout: self.peer_timeout,
                lease,
                max_peers,
                fresh_instance: self.warm_up.instance(),
            },
        )?;
        if !answer.known {
            // Unpublished through another tracker, or Redis restarted empty (rewarm).
            self.check_published(shared, id)?;
        }
        Ok(answer)
    }

    /// The catalog entry of `id` another tracker published, stored here too; `None` when
    /// no tracker has it.
    pub(super) fn adopt(
        &self,
        shared: &Shared,
        id: &AssetId,
    ) -> Result<Option<Arc<Entry>>, HttpError> {
        let Some(toml) = shared.manifest(id)? else {
            return Ok(None);
        };
        let manifest = Manifest::from_toml(&toml).map_err(|e| {
            err(
                500,
                format!("the manifest of {id} in Redis is damaged: {e}; publish it again"),
            )
        })?;
        if manifest.id() != *id {
            return Err(err(
                500,
                format!("the manifest under {id} in Redis is another asset's; publish it again"),
            ));
        }
        self.catalog.publish(manifest).map_err(|e| {
            err(
                500,
                format!("storing the manifest of {id} from Redis failed: {e:#}"),
            )
        })?;
        Ok(self.catalog.get(id))
    }

    /// Adopts every asset published through another tracker (for `GET /assets`).
    pub(super) fn adopt_all(&self, shared: &Shared) -> Result<(), HttpError> {
        for text in shared.ids()? {
            if let Ok(id) = text.parse::<AssetId>()
                && self.catalog.get(&id).is_none()
            {
                self.adopt(shared, &id)?;
            }
        }
        Ok(())
    }
}

/// The announce script's reply: `["ok", instance, age ms, leechers, share, peer pool,
/// origin pool, known, now ms, origin URLs, pool version]`, `["owner", holder]` or
/// `["cap", holder, live ids]`; the answer's peers and origins are picked from the pools as
/// `pick` says: those of the reply or (both nil: unchanged) the `held` ones. Returns the
/// pools it picked from and Redis's clock (ms) too.
fn parse_answer(
    reply: redis::Value,
    count: u32,
    pick: &Pick<'_>,
    held: Arc<Pools>,
) -> Result<(Answer, Arc<Pools>, u64), String> {
    use redis::Value;
    let Value::Array(items) = reply else {
        return Err(format!("the announce script answered {reply:?}"));
    };
    let bytes = |v: &Value| -> Vec<u8> {
        match v {
            Value::BulkString(b) => b.clone(),
            Value::SimpleString(s) => s.as_bytes().to_vec(),
            Value::Int(i) => i.to_string().into_bytes(),
            _ => Vec::new(),
        }
    };
    let text = |v: &Value| String::from_utf8_lossy(&bytes(v)).into_owned();
    let number = |v: &Value| text(v).parse::<u64>().unwrap_or(0);
    let list = |v: &Value| -> Vec<String> {
        match v {
            Value::Array(items) => items.iter().map(text).collect(),
            _ => Vec::new(),
        }
    };
    match items.first().map(text).as_deref() {
        Some("owner") => Err(format!(
            "peer id {{id}} is live in this swarm under {}; pick a new peer id",
            items.get(1).map(text).unwrap_or_default()
        )),
        Some("cap") => Err(format!(
            "holder {} has {} live peer ids in this swarm, the most one holder may have with --redis; stop some, or wait until silent ones expire (the peer timeout)",
            items.get(1).map(text).unwrap_or_default(),
            items.get(2).map(text).unwrap_or_default()
        )),
        Some("ok") if items.len() == 11 => {
            let share = match &items[4] {
                Value::BulkString(b) if !b.is_empty() => Some(share_runs(b, count)),
                _ => None,
            };
            let now = number(&items[8]);
            let pools = match (&items[5], &items[6]) {
                (Value::Nil, Value::Nil) => held,
                (peers, origins) => Arc::new(Pools {
                    version: text(&items[10]),
                    peers: records(&bytes(peers)).collect(),
                    origins: records(&bytes(origins)).collect(),
                }),
            };
            let answer = Answer {
                instance: text(&items[1]),
                instance_age: Duration::from_millis(number(&items[2])),
                leechers: u32::try_from(number(&items[3])).unwrap_or(u32::MAX),
                peers: pick.choose(&pools.peers, now, pick.max_peers),
                origins: pick.choose(&pools.origins, now, MAX_ORIGINS),
                origin_share: share,
                known: text(&items[7]) == "1",
                origin_urls: list(&items[9]),
            };
            Ok((answer, pools, now))
        }
        _ => Err(format!("the announce script answered {items:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::Value;

    #[test]
    fn spare_bits_are_set_and_full_means_every_chunk() {
        let mut have = Bitfield::new(10);
        have.set(0);
        have.set(9);
        assert_eq!(have_bitmap(Some(&have), 10), (vec![0x80, 0x7f], 6));
        assert_eq!(have_bitmap(None, 10), (vec![0xff, 0xff], 6));
        assert_eq!(have_bitmap(None, 16), (vec![0xff, 0xff], 0));
    }

    #[test]
    fn a_share_bitmap_becomes_runs_below_the_count() {
        assert_eq!(share_runs(&[0b1110_0001, 0xff], 12), vec![[0, 3], [7, 12]]);
        assert_eq!(share_runs(&[], 12), Vec::<[u32; 2]>::new());
    }

    #[test]
    fn the_kind_follows_leaving_origin_then_holdings() {
        let empty = Bitfield::new(4);
        let mut some = Bitfield::new(4);
        some.set(1);
        assert_eq!(Kind::of(true, true, None), Kind::Leaving);
        assert_eq!(Kind::of(false, true, Some(&empty)), Kind::Origin);
        assert_eq!(Kind::of(false, false, None), Kind::Seeder);
        assert_eq!(
            Kind::of(false, false, Some(&Bitfield::full(4))),
            Kind::Seeder
        );
        assert_eq!(Kind::of(false, false, Some(&empty)), Kind::Empty);
        assert_eq!(Kind::of(false, false, Some(&some)), Kind::Partial);
    }

    /// A pool line: `id`, its entry expiring at `expiry` ms, of `kind`, at port `port`.
    fn line(id: &str, expiry: u64, kind: char, port: u16) -> String {
        format!("{id}\t{expiry:013}{kind}127.0.0.1:{port}\tn:10.0.0.1\n")
    }

    fn pick(asker: &str, seed: u64) -> Pick<'_> {
        Pick {
            asker,
            max_peers: 16,
            ttl_ms: 60_000,
            seed,
        }
    }

    #[test]
    fn records_parse_and_damaged_lines_are_skipped() {
        let pool = format!(
            "{}torn\n\tno id\nshort\t12\n{}bad\tx-13digits-sp1:1\tn\n",
            line("a", 1_700_000_060_000, 's', 1),
            line("b", 5, 'p', 2)
        );
        let got: Vec<Record> = records(pool.as_bytes()).collect();
        assert_eq!(
            got,
            vec![
                Record {
                    id: "a".into(),
                    expiry: 1_700_000_060_000,
                    kind: b's',
                    addr: "127.0.0.1:1".into()
                },
                Record {
                    id: "b".into(),
                    expiry: 5,
                    kind: b'p',
                    addr: "127.0.0.1:2".into()
                },
            ]
        );
        assert_eq!(records(&[0xff, b'\t', 0xfe, b'\n']).count(), 0);
    }

    #[test]
    fn a_pick_drops_the_expired_and_the_asker_and_puts_complete_peers_first() {
        let now = 1_000_000;
        let mut pool = String::new();
        for i in 0..20u16 {
            let kind = ['e', 'p', 's', 'p'][usize::from(i % 4)];
            pool += &line(&format!("p{i}"), now + 1 + u64::from(i), kind, i);
        }
        pool += &line("dead", now, 's', 99);
        pool += &line("me", now + 5_000, 's', 98);
        let pool: Vec<Record> = records(pool.as_bytes()).collect();
        let got = pick("me", 7).choose(&pool, now, 8);
        assert_eq!(got.len(), 8);
        // Five seeders live (p2, p6, … p18): all of them come before any other kind.
        assert!(got[..5].iter().all(|p| p.complete), "{got:?}");
        assert!(got[5..].iter().all(|p| !p.complete && !p.origin));
        assert!(got.iter().all(|p| p.peer_id != "dead" && p.peer_id != "me"));
        // Seen 60 s before the expiry, less what is left of it.
        assert_eq!(got[0].last_seen_secs, 59);
        // Other seeds pick other partial peers: the answers from one pool differ.
        let partials = |seed| -> Vec<String> {
            pick("me", seed).choose(&pool, now, 8)[5..]
                .iter()
                .map(|p| p.peer_id.clone())
                .collect()
        };
        assert!((1..20).any(|seed| partials(seed) != partials(0)));
        assert!(pick("me", 1).choose(&[], now, 8).is_empty());
    }

    #[test]
    fn replies_parse_and_junk_is_an_error_not_a_panic() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let now = 1_700_000_000_000u64;
        let ok = |peers: Value, origins: Value| {
            Value::Array(vec![
                b("ok"),
                b("abc"),
                b("1500"),
                b("3"),
                Value::BulkString(vec![0xc0]),
                peers,
                origins,
                Value::Int(1),
                b(&now.to_string()),
                Value::Array(vec![b("https://cdn.example/f")]),
                b("1700000000000.7"),
            ])
        };
        let reply = ok(
            b(&(line("p1", now + 57_500, 's', 1) + "torn\n")),
            b(&line("o1", now + 60_000, 'o', 2)),
        );
        let none = Arc::new(Pools::default());
        let (answer, kept, at) = parse_answer(reply, 8, &pick("me", 1), none.clone()).unwrap();
        assert_eq!(at, now);
        assert_eq!(answer.instance, "abc");
        assert_eq!(answer.instance_age, Duration::from_millis(1500));
        assert_eq!(answer.leechers, 3);
        assert_eq!(answer.origin_share, Some(vec![[0, 2]]));
        assert_eq!(answer.peers.len(), 1);
        assert!(answer.peers[0].complete && answer.peers[0].last_seen_secs == 2);
        assert!(answer.origins[0].origin && answer.known);
        assert_eq!(answer.origin_urls, ["https://cdn.example/f"]);
        // The pools come with their version, to be kept; a reply naming them unchanged
        // (both nil) is answered from the pools held.
        assert_eq!(kept.version, "1700000000000.7");
        let (again, same, _) =
            parse_answer(ok(Value::Nil, Value::Nil), 8, &pick("me", 1), kept.clone()).unwrap();
        assert_eq!((again.peers, again.origins), (answer.peers, answer.origins));
        assert!(Arc::ptr_eq(&same, &kept));
        let cap = parse_answer(
            Value::Array(vec![b("cap"), b("n:10.0.0.1"), b("1024")]),
            8,
            &pick("me", 1),
            none.clone(),
        );
        assert!(cap.unwrap_err().starts_with("holder n:10.0.0.1 has 1024"));
        let owner = parse_answer(
            Value::Array(vec![b("owner"), b("n:10.0.0.1")]),
            8,
            &pick("me", 1),
            none.clone(),
        );
        assert!(owner.unwrap_err().starts_with("peer id"));
        assert!(parse_answer(Value::Int(3), 8, &pick("me", 1), none.clone()).is_err());
        assert!(parse_answer(Value::Array(vec![b("ok")]), 8, &pick("me", 1), none).is_err());
    }
}
