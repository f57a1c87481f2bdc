//! The tracker: the authority. It serves the durable [`Catalog`] and the in-memory swarms
//! (which peer holds what, where it listens, when it last announced) over an HTTP/JSON API
//! that `curl` can use. Peers silent for longer than the peer timeout leave their swarm.
//!
//! | method and path | answer |
//! |---|---|
//! | `GET /health` | `{"status":"ok",…}` |
//! | `GET /assets` | the catalog: `[{"id","name","size","chunk_size","chunks"}]` |
//! | `POST /assets` (body: manifest TOML) | `{"id",…,"created"}`; 201 when new, 200 when known |
//! | `GET /assets/{id}` | the manifest, as TOML |
//! | `POST /assets/{id}/announce` (JSON) | peers and origins to use, and the heartbeat interval |
//! | `GET /assets/{id}/peers` | every live peer of the swarm |
//! | `GET /stats` | global and per-swarm figures: peers, bytes served by peers and origins |
//! | `GET /metrics` | the same figures in the Prometheus text format |
//!
//! Errors are JSON `{"error": "…"}` with a 4xx or 5xx status.

pub mod catalog;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use crate::api::{
    AnnounceRequest, AnnounceResponse, AssetSummary, ErrorBody, Figures, KeysResponse, PeerInfo,
    PublishResponse, Stats, SwarmStats,
};
use crate::auth::{Action, DEFAULT_TICKET_TTL, Denied, Grant, KeyRing, Tokens};
use crate::bitfield::Bitfield;
use catalog::Catalog;
use crate::http::{self, HttpConfig, HttpServer};
use crate::manifest::{AssetId, MAX_MANIFEST_BYTES, Manifest};
use crate::metrics::{self, Exposition, Kind};
use crate::ratelimit::AddressLimiter;

/// Default time after which a silent peer leaves its swarm: three missed heartbeats at the
/// default 20 s interval, so one lost announce never drops a healthy peer.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of peers handed out per announce: enough to fill a client's connection
/// pool several times over, small enough to keep the answer a few kilobytes.
pub const DEFAULT_MAX_PEERS: usize = 30;
/// A peer reported unreachable is dropped from its swarm unless it announced within this
/// long: downloading peers announce twice a second, so two seconds of silence from one that
/// others cannot reach means it is gone; a seeder is dropped until its next heartbeat.
const REPORT_GRACE: Duration = Duration::from_secs(2);
/// Largest JSON body accepted (an announce carries at most a 128 KiB bitfield in hex).
const MAX_JSON_BODY: usize = 1 << 20;
/// Default for how long a client may leave our answer unread before its connection is
/// dropped: generous for any client, short enough that a stalled one cannot keep a request
/// thread for long.
pub const DEFAULT_HTTP_TIMEOUT: Duration = http::DEFAULT_WRITE_TIMEOUT;
/// Request-handling threads. Most requests take microseconds; a client that stalls holds
/// its thread until the request timeout at most, and one address holds at most
/// `max_conns_per_ip` of them, so 32 leave everyone else served.
const HTTP_THREADS: usize = 32;
/// Connections that may wait for a thread before newcomers are told the tracker is busy:
/// a crowd of peers starting together, while the threads answer in microseconds.
const HTTP_QUEUE: usize = 128;
/// Default announces a second per client address. A downloading peer announces twice a
/// second and a seeder every 20 s; 100 lets fifty downloads run at once behind one address
/// (a machine running a crowd, a NAT of CI runners) before clients have to retry.
pub const DEFAULT_ANNOUNCE_RATE: u32 = 100;
/// Default connections one client address may hold at once: half the request threads. Our
/// clients open one per request, so this is how many of them behind one address can start
/// at the same instant (a crowd arriving together retries the rest: 429 is answered with
/// `Retry-After`); one address can never hold more than half the threads.
pub const DEFAULT_MAX_CONNS_PER_IP: usize = HTTP_THREADS / 2;
/// Default publishes a second per client address: publishing is an operator's act.
pub const DEFAULT_PUBLISH_RATE: u32 = 5;
/// Per-address limits let through this many seconds' worth of requests at once from an
/// address that was quiet: peers starting together, a script publishing a few files.
const RATE_BURST_SECS: u32 = 2;
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

/// Validated tracker settings.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory of the durable catalog.
    pub data: PathBuf,
    /// Silence after which a peer leaves its swarm.
    pub peer_timeout: Duration,
    /// Most peers handed out per announce.
    pub max_peers: usize,
    /// Longest time a client may leave an answer unread.
    pub http_timeout: Duration,
    /// Longest time a client may take to send a request, head and body.
    pub request_timeout: Duration,
    /// Longest time a kept-alive connection may idle between requests.
    pub idle_timeout: Duration,
    /// Most connections one client address may hold open; 0 for no limit.
    pub max_conns_per_ip: usize,
    /// Most announces a second per client address; 0 for no limit.
    pub announce_rate: u32,
    /// Most publishes a second per client address; 0 for no limit.
    pub publish_rate: u32,
    /// Permissions file: with one, every request but `/health` and `/keys` needs a token,
    /// and announces are answered with signed tickets. `None`: open mode.
    pub auth: Option<PathBuf>,
    /// How long a ticket stays valid.
    pub ticket_ttl: Duration,
}

impl TrackerConfig {
    /// Open-mode settings with the defaults for everything but the address and data.
    pub fn new(listen: SocketAddr, data: PathBuf) -> TrackerConfig {
        TrackerConfig {
            listen,
            data,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            max_peers: DEFAULT_MAX_PEERS,
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            request_timeout: http::DEFAULT_REQUEST_TIMEOUT,
            idle_timeout: http::DEFAULT_IDLE_TIMEOUT,
            max_conns_per_ip: DEFAULT_MAX_CONNS_PER_IP,
            announce_rate: DEFAULT_ANNOUNCE_RATE,
            publish_rate: DEFAULT_PUBLISH_RATE,
            auth: None,
            ticket_ttl: DEFAULT_TICKET_TTL,
        }
    }
}

/// With auth on: who may do what, and the keys tickets are signed with.
struct Auth {
    tokens: Tokens,
    keys: KeyRing,
    ticket_ttl: Duration,
}

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

#[derive(Debug, Default)]
struct Swarm {
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
    /// How many leechers the origin shares were last split between.
    planned_for: u32,
    /// Peers reported for sending corrupt data, and by whom (peer ids).
    accused: HashMap<String, HashSet<String>>,
    /// Peers no longer handed out for lying, by id and by address, and since when.
    banned_ids: HashMap<String, Instant>,
    banned_addrs: HashMap<SocketAddr, Instant>,
}

impl Swarm {
    fn prune(&mut self, now: Instant, timeout: Duration) {
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
            eprintln!(
                "tracker: origin {} of {asset} was reported for corrupt data by {LIAR_REPORTS} peers; check its store",
                peer.addr
            );
            return;
        }
        eprintln!(
            "tracker: no longer handing out peer {accused} at {} for {asset}: {LIAR_REPORTS} peers got corrupt data from it",
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

    /// The chunks leecher `me` should take from the origin. The chunks no peer holds yet
    /// are split into disjoint shares, one per serving leecher, so that when a crowd
    /// arrives together the origin sends each chunk about once and the leechers trade the
    /// rest. Shares are rebalanced as leechers come and go: a share above the fair size
    /// gives up its highest chunks (those its owner fetches last) when leechers arrive, and
    /// the announcing leecher is topped up from the chunks nobody has been given.
    fn plan_for(&mut self, me: &str, count: u32) -> Bitfield {
        let mut needed = Bitfield::full(count);
        for peer in self.peers.values().filter(|p| !p.origin) {
            match &peer.have {
                Some(have) => needed.remove_all(have),
                None => return Bitfield::new(count), // a complete peer holds everything
            }
        }
        let leechers = self
            .peers
            .values()
            .filter(|p| p.is_leecher())
            .count()
            .max(1) as u32;
        let fair = needed.count().div_ceil(leechers);
        // Shares shrink only when leechers arrive. Shrinking as the swarm progresses would
        // take from a share the chunks its owner is fetching right now, and both would get
        // them from the origin.
        let arrived = leechers > self.planned_for;
        self.planned_for = leechers;
        let mut assigned = Bitfield::new(count);
        for (id, peer) in self.peers.iter_mut().filter(|(_, p)| p.is_leecher()) {
            let mut plan = peer.plan.take().unwrap_or_else(|| Bitfield::new(count));
            for index in plan.ones().collect::<Vec<_>>() {
                if !needed.get(index) || assigned.get(index) {
                    plan.unset(index);
                }
            }
            if arrived {
                for index in plan.ones().skip(fair as usize).collect::<Vec<_>>() {
                    plan.unset(index);
                }
            }
            if id != me {
                assigned.union_with(&plan);
            }
            peer.plan = Some(plan);
        }
        let Some(peer) = self.peers.get_mut(me) else {
            return Bitfield::new(count);
        };
        let plan = peer.plan.get_or_insert_with(|| Bitfield::new(count));
        let mut room = fair.saturating_sub(plan.count());
        let mut free = needed;
        free.remove_all(&assigned);
        for index in free.ones() {
            if room == 0 {
                break;
            }
            if !plan.get(index) {
                plan.set(index);
                room -= 1;
            }
        }
        plan.clone()
    }
}

struct State {
    catalog: RwLock<Catalog>,
    swarms: Mutex<HashMap<AssetId, Swarm>>,
    started: Instant,
    announces: AtomicU64,
    peer_timeout: Duration,
    max_peers: usize,
    auth: Option<Auth>,
    announce_limit: Option<AddressLimiter>,
    publish_limit: Option<AddressLimiter>,
}

/// A failed request: the status and the message for the JSON error body.
#[derive(Debug)]
struct HttpError {
    status: u16,
    message: String,
}

fn err(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

/// What a handler answers.
enum Reply {
    Json(u16, String),
    Toml(String),
    Metrics(String),
}

fn json(status: u16, value: &impl Serialize) -> Reply {
    Reply::Json(
        status,
        serde_json::to_string(value).expect("API types always serialize"),
    )
}

/// A bound tracker, ready to [`Tracker::serve`].
pub struct Tracker {
    http: HttpServer,
    state: Arc<State>,
}

/// Stops a serving tracker from another thread.
#[derive(Clone, Debug)]
pub struct ShutdownHandle(http::ShutdownHandle);

impl ShutdownHandle {
    /// Asks `serve` to return; it does so once the requests under way are answered.
    pub fn shutdown(&self) {
        self.0.shutdown();
    }
}

impl Tracker {
    /// Loads the catalog and binds the listening socket.
    pub fn bind(config: &TrackerConfig) -> Result<Tracker> {
        let catalog = Catalog::open(&config.data)?;
        let auth = match &config.auth {
            Some(path) => Some(Auth {
                tokens: Tokens::load(path)?,
                keys: KeyRing::load_or_create(&KeyRing::dir(&config.data))?,
                ticket_ttl: config.ticket_ttl,
            }),
            None => None,
        };
        let http = HttpServer::bind(HttpConfig {
            workers: HTTP_THREADS,
            queue: HTTP_QUEUE,
            max_conns_per_ip: config.max_conns_per_ip,
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.http_timeout,
            ..HttpConfig::new(config.listen, "the tracker", "tracker")
        })?;
        let limit = |rate: u32| {
            (rate > 0).then(|| AddressLimiter::new(rate, rate.saturating_mul(RATE_BURST_SECS)))
        };
        Ok(Tracker {
            http,
            state: Arc::new(State {
                catalog: RwLock::new(catalog),
                swarms: Mutex::new(HashMap::new()),
                started: Instant::now(),
                announces: AtomicU64::new(0),
                peer_timeout: config.peer_timeout,
                max_peers: config.max_peers,
                auth,
                announce_limit: limit(config.announce_rate),
                publish_limit: limit(config.publish_rate),
            }),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// A handle that stops [`Tracker::serve`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.http.shutdown_handle())
    }

    /// Answers requests until shut down.
    pub fn serve(self) -> Result<()> {
        let state = self.state;
        self.http.serve(|request| state.respond(request))
    }
}

impl State {
    fn respond(&self, request: &mut http::Request<'_>) -> http::Response {
        let remote = Some(request.remote_addr());
        let reply = self
            .route(request, remote)
            .unwrap_or_else(|e| json(e.status, &ErrorBody { error: e.message }));
        let (status, body, content_type) = match reply {
            Reply::Json(status, body) => (status, body, "application/json"),
            Reply::Toml(body) => (200, body, "application/toml"),
            Reply::Metrics(body) => (200, body, metrics::CONTENT_TYPE),
        };
        http::Response::new(status, content_type, body)
    }

    fn route(
        &self,
        request: &mut http::Request<'_>,
        remote: Option<SocketAddr>,
    ) -> Result<Reply, HttpError> {
        use http::Method::{Get, Post};
        let path = request.url().split('?').next().unwrap_or("").to_string();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = request.method().clone();
        let token = bearer_token(request);
        let allow = |action: Action| self.authorize(token.as_deref(), action);
        match (&method, parts.as_slice()) {
            (Get, ["health"]) => Ok(json(200, &self.health())),
            (Get, ["keys"]) => Ok(json(200, &self.keys())),
            (Get, ["stats"]) => {
                allow(Action::Browse)?;
                Ok(json(200, &self.stats()))
            }
            (Get, ["metrics"]) => {
                allow(Action::Browse)?;
                Ok(Reply::Metrics(self.metrics()))
            }
            (Get, ["assets"]) => {
                let grant = allow(Action::Browse)?;
                Ok(json(200, &self.list(grant)))
            }
            (Post, ["assets"]) => {
                rate_limit(&self.publish_limit, remote, "publishes")?;
                allow(Action::Publish)?;
                let body = read_body(request, MAX_MANIFEST_BYTES)?;
                self.publish(&body)
            }
            (Get, ["assets", id]) => {
                let id = parse_id(id)?;
                allow(Action::Fetch(&id))?;
                let manifest = self.manifest(&id)?;
                Ok(Reply::Toml(manifest.to_toml()))
            }
            (Post, ["assets", id, "announce"]) => {
                rate_limit(&self.announce_limit, remote, "announces")?;
                let id = parse_id(id)?;
                allow(Action::Fetch(&id))?;
                let body = read_body(request, MAX_JSON_BODY)?;
                let req: AnnounceRequest = serde_json::from_str(&body)
                    .map_err(|e| err(400, format!("announce body is not valid JSON: {e}")))?;
                if req.origin {
                    allow(Action::Origin(&id))?;
                }
                self.announce(id, req, remote)
            }
            (Get, ["assets", id, "peers"]) => {
                let id = parse_id(id)?;
                allow(Action::Fetch(&id))?;
                self.peers(&id)
            }
            (_, ["health" | "keys" | "stats" | "metrics" | "assets"])
            | (_, ["assets", _])
            | (_, ["assets", _, "announce" | "peers"]) => {
                Err(err(405, format!("{method} is not allowed on {path}")))
            }
            _ => Err(err(
                404,
                format!("no such endpoint: {path} (see GET /health, /assets, /stats, /metrics)"),
            )),
        }
    }

    /// With auth on, what the presented token may do; in open mode, anything (`None`).
    fn authorize(&self, token: Option<&str>, action: Action) -> Result<Option<&Grant>, HttpError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        match auth.tokens.authorize(token, action) {
            Ok(grant) => Ok(Some(grant)),
            Err(Denied::Unauthenticated(message)) => Err(err(401, message)),
            Err(Denied::Forbidden(message)) => Err(err(403, message)),
        }
    }

    fn keys(&self) -> KeysResponse {
        KeysResponse {
            keys: self
                .auth
                .as_ref()
                .map(|a| a.keys.public_keys())
                .unwrap_or_default(),
        }
    }

    fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "status": "ok",
            "assets": self.catalog.read().unwrap_or_else(|e| e.into_inner()).len(),
            "uptime_secs": self.started.elapsed().as_secs(),
        })
    }

    fn manifest(&self, id: &AssetId) -> Result<Arc<Manifest>, HttpError> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .ok_or_else(|| {
                err(
                    404,
                    format!("asset {id} is not in the catalog; publish its manifest first"),
                )
            })
    }

    /// The catalog, or the part of it `grant` may fetch.
    fn list(&self, grant: Option<&Grant>) -> Vec<AssetSummary> {
        let catalog = self.catalog.read().unwrap_or_else(|e| e.into_inner());
        catalog
            .iter()
            .filter(|(id, _)| grant.is_none_or(|g| g.may_fetch(id)))
            .map(|(id, m)| AssetSummary {
                id: id.to_string(),
                name: m.name.clone(),
                size: m.size,
                chunk_size: m.chunk_size,
                chunks: m.chunk_count(),
            })
            .collect()
    }

    fn publish(&self, body: &str) -> Result<Reply, HttpError> {
        let manifest =
            Manifest::from_toml(body).map_err(|e| err(400, format!("rejected manifest: {e}")))?;
        let (name, size, chunks) = (manifest.name.clone(), manifest.size, manifest.chunk_count());
        let (id, created) = self
            .catalog
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .publish(manifest)
            .map_err(|e| err(500, format!("storing the manifest failed: {e:#}")))?;
        let status = if created { 201 } else { 200 };
        Ok(json(
            status,
            &PublishResponse {
                id: id.to_string(),
                name,
                size,
                chunks,
                created,
            },
        ))
    }

    fn announce(
        &self,
        id: AssetId,
        req: AnnounceRequest,
        remote: Option<SocketAddr>,
    ) -> Result<Reply, HttpError> {
        let chunk_count = self.manifest(&id)?.chunk_count();
        if req.peer_id.is_empty()
            || req.peer_id.len() > 64
            || !req
                .peer_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err(
                400,
                "peer_id must be 1 to 64 characters of letters, digits, '-' and '_'",
            ));
        }
        let have = match (&req.have, req.complete) {
            (_, true) => None,
            (Some(hex), false) => Some(
                Bitfield::from_hex(chunk_count, hex).map_err(|e| err(400, format!("have: {e}")))?,
            ),
            (None, false) => Some(Bitfield::new(chunk_count)),
        };
        let addr = match &req.addr {
            Some(text) => Some(resolve_addr(text, remote)?),
            None => None,
        };
        self.announces.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut swarms = self.swarms.lock().unwrap_or_else(|e| e.into_inner());
        let swarm = swarms.entry(id).or_default();
        swarm.prune(now, self.peer_timeout);
        swarm.announces += 1;
        let stopping = req.event.as_deref() == Some("stopped");
        swarm.count_upload(&req.peer_id, req.uploaded, req.origin, stopping, now);
        for accused in &req.corrupt {
            swarm.accuse(accused, &req.peer_id, &id, now);
        }
        for reported in &req.unreachable {
            // A peer that announced a moment ago is alive as far as the tracker can tell
            // (the reporter may be the one with the network problem); a quiet one is gone.
            // Origins are registered by their operator and are never dropped on a report.
            if swarm
                .peers
                .get(reported)
                .is_some_and(|p| !p.origin && now.duration_since(p.last_seen) > REPORT_GRACE)
            {
                swarm.peers.remove(reported);
            }
        }
        match addr {
            Some(addr) if !stopping && !swarm.is_banned(&req.peer_id, &addr) => {
                let have = have.filter(|h| !h.is_full());
                let plan = swarm.peers.remove(&req.peer_id).and_then(|p| p.plan);
                let peer = Peer {
                    addr,
                    addr_text: addr.to_string(),
                    have,
                    origin: req.origin,
                    last_seen: now,
                    plan,
                };
                swarm.peers.insert(req.peer_id.clone(), peer);
            }
            _ => {
                swarm.peers.remove(&req.peer_id);
            }
        }
        let leeching = swarm.peers.get(&req.peer_id).is_some_and(Peer::is_leecher);
        let origin_share = leeching.then(|| swarm.plan_for(&req.peer_id, chunk_count).to_hex());
        let rotation = swarm.rotation;
        swarm.rotation = rotation.wrapping_add(self.max_peers);
        // A stable order (complete peers first, then by id), handed out as a window that
        // moves on with every answer, so that large swarms spread load over every peer.
        // The announcer is told apart by where its key lives, not by comparing ids.
        let me = swarm
            .peers
            .get_key_value(&req.peer_id)
            .map_or(std::ptr::null(), |(k, _)| k as *const String);
        let others: Vec<(&String, &Peer)> = [true, false]
            .into_iter()
            .flat_map(|complete| {
                swarm.peers.iter().filter(move |(pid, p)| {
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
            .take(others.len().min(self.max_peers))
            .map(|(pid, p)| p.info(pid, now))
            .collect();
        let origins = swarm
            .peers
            .iter()
            .filter(|(pid, p)| **pid != req.peer_id && p.origin)
            .map(|(pid, p)| p.info(pid, now))
            .collect();
        // Written while the swarm is locked: the answer borrows its peers' strings.
        Ok(json(
            200,
            &AnnounceResponse {
                interval_secs: (self.peer_timeout.as_secs() / 3).max(1),
                chunk_count,
                peers,
                origins,
                your_addr: addr.map(|a| a.to_string()),
                origin_share,
                ticket: self
                    .auth
                    .as_ref()
                    .filter(|_| !stopping)
                    .map(|a| hex::encode(a.keys.issue(&id, &req.peer_id, a.ticket_ttl))),
                keys: self.keys().keys,
            },
        ))
    }

    /// The swarm's live peers, by id.
    fn peers(&self, id: &AssetId) -> Result<Reply, HttpError> {
        self.manifest(id)?;
        let now = Instant::now();
        let mut swarms = self.swarms.lock().unwrap_or_else(|e| e.into_inner());
        let Some(swarm) = swarms.get_mut(id) else {
            return Ok(json(200, &Vec::<PeerInfo>::new()));
        };
        swarm.prune(now, self.peer_timeout);
        let list: Vec<PeerInfo<&str>> = swarm
            .peers
            .iter()
            .map(|(pid, p)| p.info(pid, now))
            .collect();
        Ok(json(200, &list))
    }

    fn stats(&self) -> Stats {
        let now = Instant::now();
        let catalog = self.catalog.read().unwrap_or_else(|e| e.into_inner());
        let mut swarms = self.swarms.lock().unwrap_or_else(|e| e.into_inner());
        let mut list: Vec<SwarmStats> = swarms
            .iter_mut()
            .map(|(id, swarm)| {
                swarm.prune(now, self.peer_timeout);
                let live = swarm.peers.values();
                let counts = (
                    swarm.peers.len(),
                    live.clone().filter(|p| p.have.is_none()).count(),
                    live.filter(|p| p.origin).count(),
                );
                SwarmStats {
                    id: id.to_string(),
                    name: catalog.get(id).map(|m| m.name.clone()).unwrap_or_default(),
                    figures: Figures::new(
                        counts,
                        swarm.peer_bytes,
                        swarm.origin_bytes,
                        swarm.announces,
                    ),
                }
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let figures = || list.iter().map(|s| &s.figures);
        let count = |figure: fn(&Figures) -> usize| figures().map(figure).sum();
        let bytes =
            |figure: fn(&Figures) -> u64| figures().map(figure).fold(0, u64::saturating_add);
        Stats {
            assets: catalog.len(),
            totals: Figures::new(
                (
                    count(|f| f.peers),
                    count(|f| f.seeders),
                    count(|f| f.origins),
                ),
                bytes(|f| f.peer_uploaded),
                bytes(|f| f.origin_uploaded),
                self.announces.load(Ordering::Relaxed),
            ),
            uptime_secs: self.started.elapsed().as_secs(),
            swarms: list,
        }
    }

    /// The figures of `GET /stats` in the Prometheus text format.
    fn metrics(&self) -> String {
        let stats = self.stats();
        let mut m = Exposition::new();
        m.gauge(
            "swarmcache_tracker_uptime_seconds",
            "Seconds since the tracker started.",
        )
        .sample(&[], stats.uptime_secs);
        m.gauge("swarmcache_tracker_assets", "Assets in the catalog.")
            .sample(&[], stats.assets);
        m.counter(
            "swarmcache_tracker_announces_total",
            "Announces received, every swarm together.",
        )
        .sample(&[], stats.totals.announces);
        let per_swarm = |m: &mut Exposition, name, kind, help, figure: fn(&Figures) -> u64| {
            let mut family = m.family(name, kind, help);
            for swarm in &stats.swarms {
                family.sample(
                    &[("asset", &swarm.id), ("name", &swarm.name)],
                    figure(&swarm.figures),
                );
            }
        };
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_peers",
            Kind::Gauge,
            "Live serving peers of the swarm, origins included.",
            |s| s.peers as u64,
        );
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_seeders",
            Kind::Gauge,
            "Live peers of the swarm holding every chunk, origins included.",
            |s| s.seeders as u64,
        );
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_origins",
            Kind::Gauge,
            "Live origins of the swarm.",
            |s| s.origins as u64,
        );
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_announces_total",
            Kind::Counter,
            "Announces received for the asset.",
            |s| s.announces,
        );
        let mut family = m.counter(
            "swarmcache_tracker_swarm_served_bytes_total",
            "Bytes served in the swarm, as its peers report them, by source: peer or origin.",
        );
        for swarm in &stats.swarms {
            for (source, bytes) in [
                ("peer", swarm.figures.peer_uploaded),
                ("origin", swarm.figures.origin_uploaded),
            ] {
                let labels = [
                    ("asset", swarm.id.as_str()),
                    ("name", &swarm.name),
                    ("source", source),
                ];
                family.sample(&labels, bytes);
            }
        }
        m.finish()
    }
}

/// The share of the bytes served that peers served; `None` when nothing was served.
/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(request: &http::Request<'_>) -> Option<String> {
    request
        .header("Authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// Takes one request from `remote`'s allowance of `what`, when there is a limit.
fn rate_limit(
    limiter: &Option<AddressLimiter>,
    remote: Option<SocketAddr>,
    what: &str,
) -> Result<(), HttpError> {
    let (Some(limiter), Some(remote)) = (limiter, remote) else {
        return Ok(());
    };
    limiter.check(remote.ip()).map_err(|wait| {
        err(
            429,
            format!(
                "too many {what} from {}: at most {} a second per address (bursts of {}); retry in {} ms",
                remote.ip().to_canonical(),
                limiter.rate(),
                limiter.burst(),
                wait.as_millis().max(1)
            ),
        )
    })
}

fn parse_id(text: &str) -> Result<AssetId, HttpError> {
    text.parse().map_err(|e: String| err(400, e))
}

/// Reads a request body of at most `limit` bytes as UTF-8, refusing larger ones up front.
fn read_body(request: &mut http::Request<'_>, limit: usize) -> Result<String, HttpError> {
    let body = request.body(limit).map_err(|e| err(e.status, e.message))?;
    String::from_utf8(body).map_err(|_| err(400, "request body is not UTF-8"))
}

/// Where a peer serves: its stated address, with an unspecified ip (`0.0.0.0`, `::`)
/// replaced by the address its announce came from.
fn resolve_addr(text: &str, remote: Option<SocketAddr>) -> Result<SocketAddr, HttpError> {
    let stated: SocketAddr = text.parse().map_err(|_| {
        err(
            400,
            format!("addr {text:?} is not ip:port (IPv6 as [::1]:7001)"),
        )
    })?;
    if stated.port() == 0 {
        return Err(err(
            400,
            format!("addr {text:?} has port 0; announce the port the peer listens on"),
        ));
    }
    if !stated.ip().is_unspecified() {
        return Ok(stated);
    }
    let remote = remote.ok_or_else(|| {
        err(
            400,
            "addr has an unspecified ip and the request's source is unknown",
        )
    })?;
    Ok(SocketAddr::new(remote.ip().to_canonical(), stated.port()))
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

    #[test]
    fn the_p2p_ratio_is_the_peers_share_and_absent_before_any_byte() {
        let p2p_ratio = |peer, origin| Figures::new((0, 0, 0), peer, origin, 0).p2p_ratio;
        assert_eq!(p2p_ratio(0, 0), None);
        assert_eq!(p2p_ratio(0, 10), Some(0.0));
        assert_eq!(p2p_ratio(30, 10), Some(0.75));
        assert_eq!(p2p_ratio(u64::MAX, 0), Some(1.0));
    }

    #[test]
    fn unspecified_addresses_take_the_announce_source() {
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(
            resolve_addr("0.0.0.0:7001", Some(remote)).unwrap(),
            "192.0.2.7:7001".parse().unwrap()
        );
        assert_eq!(
            resolve_addr("[::]:7001", Some("[::ffff:192.0.2.7]:1".parse().unwrap())).unwrap(),
            "192.0.2.7:7001".parse().unwrap()
        );
        assert_eq!(
            resolve_addr("[::1]:7001", Some(remote)).unwrap(),
            "[::1]:7001".parse().unwrap()
        );
        assert_eq!(
            resolve_addr("127.0.0.1:0", Some(remote))
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            resolve_addr("nonsense", Some(remote)).unwrap_err().status,
            400
        );
    }
}
