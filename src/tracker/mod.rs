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
//! | `GET /assets/{id}/key` | an encrypted asset's content key (fetch right, over TLS or from loopback only) |
//! | `POST /assets/{id}/announce` (JSON) | peers and origins to use, the origin share, when to announce next |
//! | `POST /announce` (JSON) | a batch: one peer's announces of many assets, the refused ones |
//! | `GET /assets/{id}/peers` | every live peer of the swarm |
//! | `GET /stats` | global and per-swarm figures: peers, bytes served by peers and origins |
//! | `GET /metrics` | the same figures in the Prometheus text format |
//! | `DELETE /assets/{id}` | unpublish (admin right): the catalog forgets it, announces of it get 410 |
//! | `GET /tags`, `GET /tags/{name}` | the names; a name's tags, each with its history |
//! | `GET /tags/{name}:{tag}`, `PUT /tags/{name}:{tag}` | where a tag points; move it (`{"id"}`) |
//!
//! Errors are JSON `{"error": "…"}` with a 4xx or 5xx status.
//!
//! Rooms: this file binds and serves; `routes` parses, authorises and answers each
//! request, binding it to an identity (`identity`) (a token, or a source address in open mode);
//! `batch` answers a store's announces of many assets in one request; `swarm` keeps one
//! asset's peers (heartbeats, timeouts, reports, bans) and
//! picks whom to hand out and when each peer announces next; `plan` keeps per-chunk
//! availability and splits what the origin sends among the downloaders (pure); `stats`
//! computes `/stats` and `/metrics`; `warmup` is what a restarted tracker says until its
//! swarms have filled again; `shared` keeps the catalog and the swarms in Redis instead, with `--redis` (several trackers, one Redis), and `shared_meta` the tags, origin URLs and content keys; `probe` checks a report that a peer is unreachable with a
//! connect of the tracker's own before the peer is dropped; [`catalog`] keeps the manifests on disk (binary,
//! loaded lazily; its index answers announces without waiting behind a publish). A request goes
//! routes → swarm → plan, and nothing below calls back up. `tags` keeps names, tags and
//! unpublished assets (and their routes); `housekeeping` reloads the permissions file and
//! applies `--retain`.
//!
//! Swarms are independent, and so are their locks: the map of swarms is read-locked just
//! long enough to find one (write-locked only to add one), each swarm has its own mutex,
//! and the global counters are atomics. Announces to different swarms run in parallel, on
//! every core; `/stats` takes one swarm at a time.

mod batch;
pub mod catalog;
mod housekeeping;
mod identity;
mod origin_urls;
mod plan;
mod probe;
mod routes;
mod secrets;
mod shared;
mod shared_beats;
mod shared_meta;
mod stats;
mod swarm;
mod tags;
mod warmup;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::auth::{DEFAULT_TICKET_TTL, KeyRing, Tokens};
use crate::http::{self, HttpConfig, HttpServer};
use crate::manifest::AssetId;
use crate::ratelimit::AddressLimiter;
use crate::sync::{LockExt, RwLockExt};
use catalog::Catalog;
use origin_urls::OriginUrls;
use probe::{Probe, Prober};
use secrets::Secrets;
use swarm::Swarm;
use warmup::WarmUp;

/// Default time after which a silent peer leaves its swarm: three missed heartbeats at the
/// default 20 s interval, so one lost announce never drops a healthy peer.
pub const DEFAULT_PEER_TIMEOUT: Duration = Duration::from_secs(60);
/// Default number of peers handed out per announce: four times a client's default four
/// connections, so that it still fills its pool when some of those named are busy
/// (throttled seeders answer "busy"), unreachable, or already its sources; successive
/// answers hand out a window that moves on, so a client of a big swarm meets new peers at
/// every announce. Sixteen peers are about 1.5 KiB of JSON (they carry no bitfields).
pub const DEFAULT_MAX_PEERS: usize = 16;
/// Default for how long a client may leave our answer unread before its connection is
/// dropped: generous for any client, short enough that a stalled one cannot keep a request
/// thread for long.
pub const DEFAULT_HTTP_TIMEOUT: Duration = http::DEFAULT_WRITE_TIMEOUT;
/// Request-handling threads. They are held by requests, not connections (idle and
/// trickling connections wait in the HTTP poller), and most requests take microseconds;
/// what holds one longer is a client sending a large body slowly (up to the request
/// timeout) or leaving its answer unread (up to the write timeout), and one address holds
/// at most `max_conns_per_ip` of them that way, so 32 leave everyone else served.
const HTTP_THREADS: usize = 32;
/// Whole requests that may wait for a thread before newcomers are told the tracker is
/// busy (503): a crowd of peers announcing together, while the threads answer in
/// microseconds.
const HTTP_QUEUE: usize = 128;
/// Default announces a second per client address. A downloading peer announces twice a
/// second and a seeder every 20 s; 100 lets fifty downloads run at once behind one address
/// (a machine running a crowd, a NAT of CI runners) before clients have to retry.
pub const DEFAULT_ANNOUNCE_RATE: u32 = 100;
/// Default connections one client address may hold at once: a quarter of the request
/// threads, so one address can never hold more than a quarter of them (with slow bodies or
/// unread answers; an idle connection holds none). Our clients open one connection per
/// request and hold it about a millisecond on a LAN, and the announce rate limit already
/// bounds a NAT of CI runners to 100 announces a second (bursts of 200): that is 0.1 to
/// 0.2 connections open on average, so 8 refuses only a crowd connecting within the same
/// few milliseconds, which retries after the `Retry-After: 1` of its 429. The load
/// generator, which keeps many connections from one address, turns the cap off.
pub const DEFAULT_MAX_CONNS_PER_IP: usize = HTTP_THREADS / 4;
/// Default publishes a second per client address: publishing is an operator's act.
pub const DEFAULT_PUBLISH_RATE: u32 = 5;
/// Per-address limits let through this many seconds' worth of requests at once from an
/// address that was quiet: peers starting together, a script publishing a few files.
const RATE_BURST_SECS: u32 = 2;
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
    /// Drop untagged assets no peer announced for this long; `None`: keep every asset.
    pub retain: Option<Duration>,
    /// Serve HTTPS with this certificate and key (see [`http::tls::server_config`]);
    /// `None`: plain HTTP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// `redis://HOST:PORT/DB`: keep the catalog and the swarms in that Redis, shared with
    /// every tracker started with the same (see `shared`). `None`: in memory, this process only.
    pub redis: Option<String>,
    /// Directory of the ticket-signing keys; `None`: `DATA/keys`. Trackers sharing a Redis
    /// share this directory's files, so that a ticket from any verifies at every peer.
    pub keys: Option<PathBuf>,
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
            retain: None,
            tls: None,
            redis: None,
            keys: None,
        }
    }
}

/// How often peers are asked to announce: a third of the peer timeout (at least 1 s), so
/// one lost announce never drops a healthy peer.
fn heartbeat(peer_timeout: Duration) -> Duration {
    Duration::from_secs((peer_timeout.as_secs() / 3).max(1))
}

/// With auth on: who may do what, and the keys tickets are signed with.
struct Auth {
    /// Replaced whole when the permissions file is reloaded; a request uses the tokens it
    /// found when it started.
    tokens: RwLock<Arc<Tokens>>,
    keys: KeyRing,
    ticket_ttl: Duration,
}

/// What every request thread shares: the catalog, the swarms, and the settings.
struct State {
    /// Locks inside, for a map lookup or insert only: announces never wait behind a publish.
    catalog: Catalog,
    /// The content keys of encrypted assets (files of mode 0600 beside the catalog).
    secrets: Secrets,
    /// Names, tags and unpublished assets.
    tags: tags::Tags,
    /// The origin URLs (web seeds) of the assets that list any, beside the catalog.
    origin_urls: OriginUrls,
    /// Write-locked only to add a swarm; each swarm has its own lock.
    swarms: RwLock<HashMap<AssetId, Arc<Mutex<Swarm>>>>,
    started: Instant,
    /// The instance id, and the hint for sources that may not have announced since the start.
    warm_up: WarmUp,
    announces: AtomicU64,
    /// Batch announce requests, each of which added its entries to `announces`.
    batches: AtomicU64,
    peer_timeout: Duration,
    max_peers: usize,
    auth: Option<Auth>,
    announce_limit: Option<AddressLimiter>,
    publish_limit: Option<AddressLimiter>,
    /// Checks `unreachable` reports with a connect of its own before a peer is dropped.
    prober: Prober,
    /// With `--redis`: the catalog and swarms shared with other trackers, which the routes
    /// ask instead of `swarms` (and before `catalog` on a miss).
    shared: Option<shared::Shared>,
}

impl State {
    /// The swarm of `id`, created when `create` and absent; the map's write lock is taken
    /// only then.
    fn swarm(&self, id: &AssetId, create: bool) -> Option<Arc<Mutex<Swarm>>> {
        if let Some(swarm) = self.swarms.read_now().get(id) {
            return Some(Arc::clone(swarm));
        }
        if !create {
            return None;
        }
        let mut swarms = self.swarms.write_now();
        Some(Arc::clone(swarms.entry(*id).or_default()))
    }

    /// Drops a reported peer the prober could not connect to (if it is still there).
    fn unreachable(state: &Weak<State>, probe: Probe) {
        let Some(state) = state.upgrade() else {
            return;
        };
        if let Some(swarm) = state.swarm(&probe.asset, false) {
            let mut swarm = swarm.locked();
            swarm.unreachable(&probe.peer_id, probe.addr, &probe.asset);
        }
    }

    /// Every swarm, to be locked one at a time.
    fn all_swarms(&self) -> Vec<(AssetId, Arc<Mutex<Swarm>>)> {
        let swarms = self.swarms.read_now();
        swarms.iter().map(|(id, s)| (*id, Arc::clone(s))).collect()
    }
}

/// A bound tracker, ready to [`Tracker::serve`].
pub struct Tracker {
    http: HttpServer,
    state: Arc<State>,
    /// Set to reload the permissions file (the binary's SIGHUP handler sets it).
    reload: Arc<AtomicBool>,
}

/// Stops a serving tracker from another thread: `serve` returns once the requests under
/// way are answered. The one handle of every server in the crate.
pub use crate::net::ShutdownHandle;

impl Tracker {
    /// Loads the catalog and binds the listening socket.
    pub fn bind(config: &TrackerConfig) -> Result<Tracker> {
        let catalog = Catalog::open(&config.data)?;
        let secrets = Secrets::open(&config.data)?;
        let tags = tags::Tags::open(&config.data)?;
        // An unpublish interrupted by a crash between its record and the manifest's removal.
        for id in tags.unpublished_ids() {
            if catalog.remove(&id)? {
                log::info!("finished unpublishing {id}: its manifest was still in the catalog");
            }
        }
        let origin_urls = OriginUrls::open(&config.data)?;
        let auth = match &config.auth {
            Some(path) => Some(Auth {
                tokens: RwLock::new(Arc::new(Tokens::load(path)?)),
                keys: KeyRing::load_or_create(
                    &config
                        .keys
                        .clone()
                        .unwrap_or_else(|| KeyRing::dir(&config.data)),
                )?,
                ticket_ttl: config.ticket_ttl,
            }),
            None => None,
        };
        if config.redis.is_some() && config.retain.is_some() {
            // Retention reads who announced from the in-memory swarms, which are empty
            // with --redis: it would drop every asset.
            anyhow::bail!(
                "--retain cannot be used with --redis yet (the swarms it reads live in Redis); drop one of them"
            );
        }
        let shared = config
            .redis
            .as_deref()
            .map(|url| shared::Shared::connect(url, config.peer_timeout))
            .transpose()?;
        if let Some(shared) = &shared {
            // Content keys in Redis are wrapped with the trackers' shared key (shared_meta).
            let keys = config
                .keys
                .clone()
                .unwrap_or_else(|| KeyRing::dir(&config.data));
            shared.set_wrap_key(shared_meta::WrapKey::load_or_create(&keys)?);
            shared
                .seed(&tags.read(Clone::clone), &origin_urls, &secrets)
                .context("copying this tracker's tags, origin URLs and keys into Redis")?;
        }
        let http = HttpServer::bind(HttpConfig {
            workers: HTTP_THREADS,
            queue: HTTP_QUEUE,
            max_conns_per_ip: config.max_conns_per_ip,
            request_timeout: config.request_timeout,
            idle_timeout: config.idle_timeout,
            write_timeout: config.http_timeout,
            tls: config.tls.clone(),
            ..HttpConfig::new(config.listen, "the tracker")
        })?;
        let started = Instant::now();
        let known = catalog.ids().into_iter().collect();
        let warm_up = WarmUp::new(started, heartbeat(config.peer_timeout), known)?;
        let limit = |rate: u32| {
            (rate > 0).then(|| AddressLimiter::new(rate, rate.saturating_mul(RATE_BURST_SECS)))
        };
        let state = Arc::new_cyclic(|weak: &Weak<State>| State {
            catalog,
            secrets,
            tags,
            origin_urls,
            swarms: RwLock::new(HashMap::new()),
            started,
            warm_up,
            announces: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            peer_timeout: config.peer_timeout,
            max_peers: config.max_peers,
            auth,
            announce_limit: limit(config.announce_rate),
            publish_limit: limit(config.publish_rate),
            prober: Prober::start({
                let weak = weak.clone();
                move |probe| State::unreachable(&weak, probe)
            }),
            shared,
        });
        let reload = Arc::new(AtomicBool::new(false));
        // Holds the state weakly, as the prober's threads do: dropping the tracker ends it.
        housekeeping::start(
            Arc::downgrade(&state),
            housekeeping::Watch {
                auth: config.auth.clone(),
                reload: Arc::clone(&reload),
                retain: config.retain,
            },
        )
        .map_err(|e| anyhow::anyhow!("starting the housekeeping thread: {e}"))?;
        Ok(Tracker {
            http,
            state,
            reload,
        })
    }

    /// The flag that has the permissions file reloaded within 100 ms when set (the
    /// tracker binary sets it on SIGHUP).
    pub fn reload_flag(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.reload)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }

    /// A handle that stops [`Tracker::serve`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.http.shutdown_handle()
    }

    /// Answers requests until shut down.
    pub fn serve(self) -> Result<()> {
        let state = self.state;
        self.http.serve(|request| state.respond(request))
    }
}

/// Makes the key that wraps content keys kept in Redis in the key directory `dir`, unless
/// it is there (`tracker keygen`, so one copy of the directory serves every tracker).
pub fn ensure_wrap_key(dir: &std::path::Path) -> Result<()> {
    shared_meta::WrapKey::load_or_create(dir).map(drop)
}

/// The per-asset files `ID.SUFFIX` in `dir` (the content keys, the origin URL lists), with
/// their ids. A name starting with `.` is a temporary file a crash left before its rename
/// and is removed; other names are not ours and are skipped.
fn asset_files(dir: &std::path::Path, suffix: &str) -> Result<Vec<(AssetId, PathBuf)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.starts_with('.') {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if let Some(Ok(id)) = name.strip_suffix(suffix).map(str::parse::<AssetId>) {
            files.push((id, path));
        }
    }
    Ok(files)
}
