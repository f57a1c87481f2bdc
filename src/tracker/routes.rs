//! The tracker's HTTP routes: parse each request, check its rate limit and token, call
//! into the catalog or the swarm, and answer JSON (or TOML, or the metrics text). Nothing
//! here decides who is handed out or what comes from the origin: that is `swarm`
//! and `plan`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use super::catalog::{Busy, Entry};
use super::identity::Identity;
use super::origin_urls::Added;
use super::probe::Probe;
use super::secrets::Put;
use super::swarm::Announce;
use super::{State, heartbeat};
use crate::api::{
    AnnounceEvent, AnnounceRequest, AnnounceResponse, AssetSummary, ContentKeyResponse, ErrorBody,
    KeysResponse, OriginUrlRequest, OriginUrlsResponse, PeerInfo, PublishResponse,
};
use crate::auth::{Action, Denied, Grant};
use crate::bitfield::Bitfield;
use crate::crypt::{self, ContentKey};
use crate::http;
use crate::manifest::{AssetId, MAX_MANIFEST_BYTES, Manifest};
use crate::metrics;
use crate::ratelimit::AddressLimiter;
use crate::sync::{LockExt, RwLockExt};

/// Largest JSON body accepted (an announce carries at most a 128 KiB bitfield in hex).
const MAX_JSON_BODY: usize = 1 << 20;
/// Publishes with a larger body take a turn of the catalog's heavy work first: 1 MiB is
/// about 14 000 chunks, parsed in milliseconds into a few MiB; the largest are 80 MiB.
const LARGE_MANIFEST_BODY: u64 = 1 << 20;
/// `GET /assets/{id}` of a manifest of more chunks takes a turn too (1 MiB of TOML).
const LARGE_MANIFEST_CHUNKS: u64 = 1 << 14;
/// A failed request: the status and the message for the JSON error body.
#[derive(Debug)]
pub(super) struct HttpError {
    pub(super) status: u16,
    pub(super) message: String,
}

pub(super) fn err(status: u16, message: impl Into<String>) -> HttpError {
    HttpError {
        status,
        message: message.into(),
    }
}

/// What a handler answers.
pub(super) enum Reply {
    Json(u16, String),
    Toml(String),
    Metrics(String),
}

pub(super) fn json(status: u16, value: &impl Serialize) -> Reply {
    Reply::Json(
        status,
        serde_json::to_string(value).expect("API types always serialize"),
    )
}

impl State {
    /// Answers one request: routes it, and turns a refusal into a JSON error body.
    pub(super) fn respond(&self, request: &mut http::Request<'_>) -> http::Response {
        let remote = Some(request.remote_addr());
        let reply = self
            .route(request, remote)
            .unwrap_or_else(|e| json(e.status, &ErrorBody { error: e.message }));
        let (status, body, content_type) = match reply {
            Reply::Json(status, body) => (status, body, "application/json"),
            Reply::Toml(body) => (200, body, "application/toml"),
            Reply::Metrics(body) => (200, body, metrics::CONTENT_TYPE),
        };
        let response = http::Response::new(status, content_type, body);
        // Busy (a publish waits for its turn, see catalog::HEAVY_AT_ONCE): clients retry.
        if status == 503 {
            return response.with_header("Retry-After", "1");
        }
        response
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
                let grant = allow(Action::Browse)?;
                Ok(json(200, &self.stats(grant.as_deref())))
            }
            (Get, ["metrics"]) => {
                let grant = allow(Action::Metrics)?;
                Ok(Reply::Metrics(self.metrics(grant.as_deref())))
            }
            (Get, ["assets"]) => {
                let grant = allow(Action::Browse)?;
                Ok(json(200, &self.list(grant.as_deref())?))
            }
            (Post, ["assets"]) => {
                rate_limit(&self.publish_limit, remote, "publishes")?;
                let grant = allow(Action::Publish)?;
                // With `?tag=NAME:TAG`, publish and tag (see `tags`).
                self.publish_tagged(request, grant.as_deref(), remote, token.as_deref())
            }
            (http::Method::Other(m), ["assets", id]) if m == "DELETE" => {
                rate_limit(&self.publish_limit, remote, "publishes")?;
                self.unpublish_route(id, token.as_deref(), remote)
            }
            (_, ["tags", rest @ ..]) => {
                if !matches!(method, Get) {
                    rate_limit(&self.publish_limit, remote, "publishes")?;
                }
                self.tags_route(&method, rest, request, token.as_deref(), remote)
            }
            (Get, ["assets", id]) => {
                let id = parse_id(id)?;
                allow(Action::Fetch(&id))?;
                self.manifest_toml(&id)
            }
            (Post, ["assets", id, "announce"]) => {
                rate_limit(&self.announce_limit, remote, "announces")?;
                let id = parse_id(id)?;
                let grant = allow(Action::Fetch(&id))?;
                let body = read_body(request, MAX_JSON_BODY)?;
                let req: AnnounceRequest = serde_json::from_str(&body)
                    .map_err(|e| err(400, format!("announce body is not valid JSON: {e}")))?;
                if req.origin {
                    allow(Action::Origin(&id))?;
                }
                let holder = Holder::new(grant.as_deref(), remote);
                self.announce(id, req, remote, &holder)
            }
            (Get, ["assets", id, "key"]) => {
                let id = parse_id(id)?;
                allow(Action::Fetch(&id))?;
                self.content_key(&id, request)
            }
            (Post, ["assets", id, "origins"]) => {
                rate_limit(&self.publish_limit, remote, "publishes")?;
                let id = parse_id(id)?;
                allow(Action::Publish)?;
                let body = read_body(request, MAX_JSON_BODY)?;
                let req: OriginUrlRequest = serde_json::from_str(&body)
                    .map_err(|e| err(400, format!("origin URL body is not valid JSON: {e}")))?;
                self.add_origin_url(&id, &req.url)
            }
            (Get, ["assets", id, "origins"]) => {
                let id = parse_id(id)?;
                allow(Action::Fetch(&id))?;
                self.published(&id)?;
                Ok(json(200, &self.origin_urls_of(&id, false)?))
            }
            (Post, ["announce"]) => self.announce_batch(request, remote, token.as_deref()),
            (Get, ["assets", id, "peers"]) => {
                let id = parse_id(id)?;
                allow(Action::Fetch(&id))?;
                self.peers(&id)
            }
            (_, ["health" | "keys" | "stats" | "metrics" | "assets" | "announce"])
            | (_, ["assets", _])
            | (_, ["assets", _, "announce" | "peers" | "key" | "origins"]) => {
                Err(err(405, format!("{method} is not allowed on {path}")))
            }
            _ => Err(err(
                404,
                format!(
                    "no such endpoint: {path} (see GET /health, /assets, /tags, /stats, /metrics)"
                ),
            )),
        }
    }

    /// With auth on, what the presented token may do; in open mode, anything (`None`).
    pub(super) fn authorize(
        &self,
        token: Option<&str>,
        action: Action,
    ) -> Result<Option<Arc<Grant>>, HttpError> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let tokens = Arc::clone(&auth.tokens.read_now());
        match tokens.authorize(token, action) {
            Ok(grant) => Ok(Some(grant)),
            Err(Denied::Unauthenticated(message)) => Err(err(401, message)),
            Err(Denied::Forbidden(message)) => Err(err(403, message)),
        }
    }

    pub(super) fn keys(&self) -> KeysResponse {
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
            "instance": self.warm_up.instance(),
            "assets": self.catalog.len(),
            "uptime_secs": self.started.elapsed().as_secs(),
        })
    }

    /// What the catalog's index knows of `id` (the chunk count, not the hashes): a map
    /// lookup that never waits behind a publish.
    /// With `--redis`, an asset another tracker published is adopted on its first miss.
    pub(super) fn manifest(&self, id: &AssetId) -> Result<Arc<Entry>, HttpError> {
        if let Some(entry) = self.catalog.get(id) {
            return Ok(entry);
        }
        match &self.shared {
            // One this tracker unpublished stays unpublished here (410).
            Some(shared) if self.missing(id).status != 410 => {
                self.adopt(shared, id)?.ok_or_else(|| self.missing(id))
            }
            Some(_) => Err(self.missing(id)),
            None => Err(self.missing(id)),
        }
    }

    /// `GET /assets/{id}`: the manifest's TOML, built from the stored hashes. A manifest of
    /// many chunks waits for a turn like a publish (tens of MiB of text each).
    fn manifest_toml(&self, id: &AssetId) -> Result<Reply, HttpError> {
        let entry = self.published(id)?;
        let _turn = (entry.chunk_count() as u64 > LARGE_MANIFEST_CHUNKS)
            .then(|| self.catalog.heavy().enter().map_err(busy))
            .transpose()?;
        match self.catalog.manifest(id) {
            Ok(Some(manifest)) => Ok(Reply::Toml(manifest.to_toml())),
            Ok(None) => Err(not_published(id)),
            Err(e) => Err(err(500, format!("{e:#}"))),
        }
    }

    /// The catalog, or the part of it `grant` may fetch.
    fn list(&self, grant: Option<&Grant>) -> Result<Vec<AssetSummary>, HttpError> {
        // With --redis, the book says what was unpublished through another tracker and is
        // still in this one's catalog.
        let gone = match &self.shared {
            Some(shared) => {
                self.adopt_all(shared)?;
                Some(self.shared_book(shared))
            }
            None => None,
        };
        Ok(self
            .catalog
            .entries()
            .into_iter()
            .filter(|(id, _)| grant.is_none_or(|g| g.may_fetch(id)))
            .filter(|(id, _)| gone.as_ref().is_none_or(|b| !b.is_unpublished(id)))
            .map(|(id, e)| AssetSummary {
                id: id.to_string(),
                name: e.name.clone(),
                size: e.size,
                chunk_size: e.chunk_size,
                chunks: e.chunk_count(),
            })
            .collect())
    }

    /// `POST /assets`: the body is read, parsed, checked and stored without any lock that
    /// announces or catalog reads take; a large one first waits for a turn, so that ten
    /// maximum-size publishes at once hold two parses' memory, not ten.
    pub(super) fn publish(&self, request: &mut http::Request<'_>) -> Result<Reply, HttpError> {
        let _turn = (request.body_length() > LARGE_MANIFEST_BODY)
            .then(|| self.catalog.heavy().enter().map_err(busy))
            .transpose()?;
        let body = read_body(request, MAX_MANIFEST_BYTES)?;
        let (manifest, key) = Manifest::from_toml_keyed(&body)
            .map_err(|e| err(400, format!("rejected manifest: {e}")))?;
        drop(body);
        if let Some(key) = &key {
            self.keep_key(&manifest.id(), key, request)?;
        }
        let (size, chunks) = (manifest.size, manifest.chunk_count());
        let toml = self.shared.as_ref().map(|_| manifest.to_toml());
        let published = self
            .catalog
            .publish(manifest)
            .map_err(|e| err(500, format!("storing the manifest failed: {e:#}")))?;
        if let (Some(shared), Some(toml)) = (&self.shared, toml) {
            shared.publish(&published.id, &toml)?;
        }
        let status = if published.created { 201 } else { 200 };
        Ok(json(
            status,
            &PublishResponse {
                id: published.id.to_string(),
                // The same content under another name is the same asset: the first name stays.
                name: published.name,
                size,
                chunks,
                created: published.created,
            },
        ))
    }

    /// `POST /assets/{id}/origins`: lists an origin URL for a published asset.
    fn add_origin_url(&self, id: &AssetId, url: &str) -> Result<Reply, HttpError> {
        self.published(id)?;
        crate::origin_url::check(url).map_err(|e| err(400, format!("{e:#}")))?;
        let added = match &self.shared {
            Some(shared) => {
                let added = shared.add_origin_url(id, url)?;
                self.mirror_origin_urls(id, &[url.to_string()]);
                Ok(added)
            }
            None => self.origin_urls.add(id, url),
        };
        match added {
            Ok(Added::Stored) => Ok(json(201, &self.origin_urls_of(id, true)?)),
            Ok(Added::Same) => Ok(json(200, &self.origin_urls_of(id, false)?)),
            Ok(Added::Full) => Err(err(
                409,
                format!(
                    "asset {id} lists {} origin URLs already, the most allowed",
                    crate::origin_url::MAX_ORIGIN_URLS
                ),
            )),
            Err(e) => Err(err(500, format!("storing the origin URL failed: {e:#}"))),
        }
    }

    fn origin_urls_of(&self, id: &AssetId, added: bool) -> Result<OriginUrlsResponse, HttpError> {
        Ok(OriginUrlsResponse {
            id: id.to_string(),
            origin_urls: match &self.shared {
                Some(shared) => {
                    let urls = shared.origin_urls(id)?;
                    self.mirror_origin_urls(id, &urls);
                    urls
                }
                None => self.origin_urls.get(id).to_vec(),
            },
            added,
        })
    }

    /// Holds the content key a publish brought, before the manifest is stored: a key that
    /// came in clear from another host, or that would change an asset's key, is refused.
    fn keep_key(
        &self,
        id: &AssetId,
        key: &ContentKey,
        request: &http::Request<'_>,
    ) -> Result<(), HttpError> {
        if !private_channel(request) {
            return Err(err(
                403,
                format!(
                    "the content key of {id} came over plain HTTP from {}: the tracker takes and gives keys only over TLS or on this host (loopback); take that key as seen by others, encrypt again (chunkify --encrypt makes a new key) and publish over https",
                    request.remote_addr().ip()
                ),
            ));
        }
        // With --redis, published through any tracker (this one may not have adopted it).
        let published = match &self.shared {
            Some(shared) => self.catalog.get(id).is_some() || shared.holds_manifest(id)?,
            None => self.catalog.get(id).is_some(),
        };
        if published && self.key_of(id)?.is_none() {
            return Err(err(
                409,
                format!(
                    "asset {id} is published without a content key; a key cannot be added to it"
                ),
            ));
        }
        let put = match &self.shared {
            Some(shared) => {
                let put = shared.put_key(id, key)?;
                if put != Put::Conflict {
                    self.mirror_key(id, key);
                }
                Ok(put)
            }
            None => self.secrets.put(id, key),
        };
        match put {
            Ok(Put::Stored | Put::Same) => Ok(()),
            Ok(Put::Conflict) => Err(err(
                409,
                format!(
                    "asset {id} is published with another content key, and a key never changes; publish the manifest chunkify printed with this ciphertext"
                ),
            )),
            Err(e) => Err(err(500, format!("storing the content key failed: {e:#}"))),
        }
    }

    /// `GET /assets/{id}/key`: whether the asset is encrypted, and its key to a holder of
    /// the fetch right over TLS or from loopback; anyone else is told why not (403).
    fn content_key(&self, id: &AssetId, request: &http::Request<'_>) -> Result<Reply, HttpError> {
        self.published(id)?;
        let Some(key) = self.key_of(id)? else {
            return Ok(json(
                200,
                &ContentKeyResponse {
                    id: id.to_string(),
                    encrypted: false,
                    cipher: None,
                    key: None,
                },
            ));
        };
        if !private_channel(request) {
            return Err(err(
                403,
                format!(
                    "asset {id} is encrypted and the tracker gives its key only over TLS or to this host (loopback), not over plain HTTP to {}; use the tracker's https:// URL",
                    request.remote_addr().ip()
                ),
            ));
        }
        Ok(json(
            200,
            &ContentKeyResponse {
                id: id.to_string(),
                encrypted: true,
                cipher: Some(crypt::CIPHER.to_string()),
                key: Some(key.to_hex()),
            },
        ))
    }

    fn announce(
        &self,
        id: AssetId,
        req: AnnounceRequest,
        remote: Option<SocketAddr>,
        holder: &Holder,
    ) -> Result<Reply, HttpError> {
        let chunk_count = self.manifest(&id)?.chunk_count();
        check_peer_id(&req.peer_id)?;
        let have = parse_have(chunk_count, req.complete, req.have.as_deref())?;
        let addr = match &req.addr {
            Some(text) => Some(resolve_addr(text, remote, holder.may_advertise)?),
            None => None,
        };
        if let Some(shared) = &self.shared {
            return self.announce_shared(shared, id, req, addr, have, &holder.who, chunk_count);
        }
        self.announces.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let leaving = req.event == Some(AnnounceEvent::Stopped);
        let swarm = self.swarm(&id, true).expect("created when absent");
        let mut swarm = swarm.locked();
        let announce = Announce {
            peer_id: &req.peer_id,
            who: &holder.who,
            may_origin: holder.may_origin,
            addr,
            have,
            origin: req.origin,
            leaving,
            uploaded: req.uploaded,
            corrupt: &req.corrupt,
            unreachable: &req.unreachable,
        };
        let mut answer = swarm
            .announce(
                announce,
                &id,
                chunk_count,
                self.max_peers,
                self.peer_timeout,
                now,
            )
            .map_err(|r| err(r.status, r.message))?;
        self.probe(&id, std::mem::take(&mut answer.probes));
        let origin_urls = self.origin_urls.get(&id);
        // An origin URL is the operator's, like an origin: a report of it is logged, for
        // whoever looks after that server, and never bans anything.
        for url in req.corrupt.iter().filter(|c| origin_urls.contains(c)) {
            log::warn!(
                "origin URL {url} of {id} was reported for corrupt data by {}; check the file it serves",
                holder.who
            );
        }
        let has_sources =
            !answer.peers.is_empty() || !answer.origins.is_empty() || !origin_urls.is_empty();
        // Written while the swarm is locked (that swarm only): the answer borrows its
        // peers' strings.
        Ok(json(
            200,
            &AnnounceResponse {
                interval_secs: heartbeat(self.peer_timeout).as_secs(),
                next_announce_ms: Some(answer.next_announce.as_millis() as u64),
                instance: Some(self.warm_up.instance()),
                warming_up_secs: (!leaving)
                    .then(|| self.warm_up.retry_in(&id, has_sources, now))
                    .flatten(),
                chunk_count,
                peers: answer.peers,
                origins: answer.origins,
                origin_urls: origin_urls.iter().map(String::as_str).collect(),
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

    /// Hands peers reported unreachable to the prober (never blocks: a full queue drops).
    fn probe(&self, asset: &AssetId, probes: Vec<(String, SocketAddr)>) {
        for (peer_id, addr) in probes {
            let asset = *asset;
            self.prober.submit(Probe {
                asset,
                peer_id,
                addr,
            });
        }
    }

    /// The swarm's live peers, by id.
    fn peers(&self, id: &AssetId) -> Result<Reply, HttpError> {
        self.published(id)?;
        if let Some(shared) = &self.shared {
            return Ok(json(200, &shared.peers(id, self.peer_timeout)?));
        }
        let now = Instant::now();
        let Some(swarm) = self.swarm(id, false) else {
            return Ok(json(200, &Vec::<PeerInfo>::new()));
        };
        let mut swarm = swarm.locked();
        swarm.prune(now, self.peer_timeout);
        Ok(json(200, &swarm.list(now)))
    }
}

/// Who announces and what they may do with a peer entry: with auth, the token's identity
/// and rights; in open mode, the source address's network, with every right.
pub(super) struct Holder {
    pub who: Identity,
    pub may_origin: bool,
    pub may_advertise: bool,
}

impl Holder {
    /// The holder of a request authorised as `grant` (`None`: open mode) from `remote`.
    pub(super) fn new(grant: Option<&Grant>, remote: Option<SocketAddr>) -> Holder {
        match grant {
            Some(g) => Holder {
                who: Identity::Token {
                    name: g.name.as_str().into(),
                    key: g.key(),
                },
                // Fetch of the asset is checked before any announce is applied.
                may_origin: g.may_originate(),
                may_advertise: g.may_advertise(),
            },
            // Open mode trusts its network (SECURITY.md): any holder may advertise, as
            // `--advertise-addr` behind NAT needs; ids are still bound to the address.
            None => Holder {
                who: Identity::of_addr(
                    remote.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |r| r.ip()),
                ),
                may_origin: true,
                may_advertise: true,
            },
        }
    }
}

/// Whether a secret (a content key) may cross this request's connection: it came over TLS,
/// or from this host, where no network carries it.
fn private_channel(request: &http::Request<'_>) -> bool {
    request.is_tls() || request.remote_addr().ip().to_canonical().is_loopback()
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(request: &http::Request<'_>) -> Option<String> {
    request
        .header("Authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
}

/// Refuses a peer id that is not 1 to 64 characters of `A-Z a-z 0-9 - _`.
pub(super) fn check_peer_id(peer_id: &str) -> Result<(), HttpError> {
    let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if peer_id.is_empty() || peer_id.len() > 64 || !peer_id.bytes().all(valid) {
        return Err(err(
            400,
            "peer_id must be 1 to 64 characters of letters, digits, '-' and '_'",
        ));
    }
    Ok(())
}

/// What an announce says it holds: `None` for every chunk, else its `have` bitfield of
/// `chunk_count` bits (none held when absent).
pub(super) fn parse_have(
    chunk_count: u32,
    complete: bool,
    have: Option<&str>,
) -> Result<Option<Bitfield>, HttpError> {
    Ok(match (have, complete) {
        (_, true) => None,
        (Some(hex), false) => {
            Some(Bitfield::from_hex(chunk_count, hex).map_err(|e| err(400, format!("have: {e}")))?)
        }
        (None, false) => Some(Bitfield::new(chunk_count)),
    })
}

/// Takes one request from `remote`'s allowance of `what`, when there is a limit.
fn rate_limit(
    limiter: &Option<AddressLimiter>,
    remote: Option<SocketAddr>,
    what: &str,
) -> Result<(), HttpError> {
    rate_limit_cost(limiter, remote, what, 1)
}

/// Takes `cost` requests at once from `remote`'s allowance of `what` (see
/// [`AddressLimiter::check_cost`]), when there is a limit.
pub(super) fn rate_limit_cost(
    limiter: &Option<AddressLimiter>,
    remote: Option<SocketAddr>,
    what: &str,
    cost: u32,
) -> Result<(), HttpError> {
    let (Some(limiter), Some(remote)) = (limiter, remote) else {
        return Ok(());
    };
    limiter.check_cost(remote.ip(), cost).map_err(|wait| {
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

fn not_published(id: &AssetId) -> HttpError {
    err(
        404,
        format!("asset {id} is not in the catalog; publish its manifest first"),
    )
}

/// The refusal of a large publish or manifest when every turn is taken and waiting.
fn busy(b: Busy) -> HttpError {
    err(
        503,
        format!(
            "the tracker is busy with {} large manifests and {} waiting; retry in a second",
            b.running, b.waiting
        ),
    )
}

pub(super) fn parse_id(text: &str) -> Result<AssetId, HttpError> {
    text.parse().map_err(|e: String| err(400, e))
}

/// Reads a request body of at most `limit` bytes as UTF-8, refusing larger ones up front.
pub(super) fn read_body(
    request: &mut http::Request<'_>,
    limit: usize,
) -> Result<String, HttpError> {
    let body = request.body(limit).map_err(|e| err(e.status, e.message))?;
    String::from_utf8(body).map_err(|_| err(400, "request body is not UTF-8"))
}

/// Where a peer serves: its stated address, with an unspecified ip (`0.0.0.0`, `::`)
/// replaced by the address its announce came from. Refused (400) whatever the rights:
/// port 0, broadcast and multicast addresses (peers dial one host over TCP), the
/// IPv4-mapped IPv6 form (`[::ffff:10.0.0.1]`: the same host as its IPv4 form, and a way
/// past per-address bans), and a loopback address announced from another address (handed
/// out, it would send every client to itself). Without `may_advertise` (with auth, a token
/// lacking the `advertise` right) only the source address itself may be named (403).
pub(super) fn resolve_addr(
    text: &str,
    remote: Option<SocketAddr>,
    may_advertise: bool,
) -> Result<SocketAddr, HttpError> {
    let stated: SocketAddr = text.parse().map_err(|_| {
        err(
            400,
            format!("addr {text:?} is not ip:port (IPv6 as [::1]:7001)"),
        )
    })?;
    let port = stated.port();
    if port == 0 {
        return Err(err(
            400,
            format!("addr {text:?} has port 0; announce the port the peer listens on"),
        ));
    }
    let source = remote.map(|r| r.ip().to_canonical());
    let ip = stated.ip();
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err(err(
            400,
            format!(
                "addr {stated} is an IPv4-mapped IPv6 address; announce its IPv4 form {v4}:{port}"
            ),
        ));
    }
    if ip.is_unspecified() {
        let source = source.ok_or_else(|| {
            err(
                400,
                "addr has an unspecified ip and the request's source is unknown",
            )
        })?;
        return Ok(SocketAddr::new(source, port));
    }
    let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
    if ip.is_multicast() || broadcast {
        let kind = if broadcast { "broadcast" } else { "multicast" };
        return Err(err(
            400,
            format!(
                "addr {stated} is a {kind} address: peers connect to one host over TCP; \
                 announce 0.0.0.0:{port} (the address the tracker sees) or the address this peer listens on"
            ),
        ));
    }
    let from_elsewhere = source.is_some_and(|r| !r.is_loopback());
    if ip.is_loopback() && from_elsewhere {
        return Err(err(
            400,
            format!(
                "addr {stated} is a loopback address, but this announce came from {}: \
                 peers on other hosts cannot reach it; listen with --listen 0.0.0.0:{port} \
                 (announced as the address the tracker sees) or give --advertise-addr HOST:PORT",
                source.map(|r| r.to_string()).unwrap_or_default(),
            ),
        ));
    }
    if !may_advertise && source != Some(ip) {
        return Err(err(
            403,
            format!(
                "addr {stated} is not the address this announce came from ({}), and this token may not \
                 advertise another: announce 0.0.0.0:{port} (the address the tracker sees), or ask the \
                 tracker's operator for a token with the advertise right (tracker token --advertise)",
                source
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| "unknown".into()),
            ),
        ));
    }
    Ok(stated)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tracker::{Tracker, TrackerConfig};
    use std::time::Duration;

    #[test]
    fn a_swarm_held_busy_does_not_hold_up_announces_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let listen = "127.0.0.1:0".parse().unwrap();
        let tracker = Tracker::bind(&TrackerConfig::new(listen, dir.path().into())).unwrap();
        let url = format!("http://{}", tracker.local_addr());
        let state = Arc::clone(&tracker.state);
        let stop = tracker.shutdown_handle();
        let serving = std::thread::spawn(move || tracker.serve());
        // Announces that would wait for ever behind a global lock fail after 10 s instead.
        let agent = ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(10))
            .build();
        let ids: Vec<AssetId> = [&b"one"[..], b"two"]
            .iter()
            .map(|bytes| {
                let manifest = crate::manifest::chunkify(*bytes, "f", 16 * 1024).unwrap();
                let body = manifest.to_toml();
                agent
                    .post(&format!("{url}/assets"))
                    .send_string(&body)
                    .unwrap();
                manifest.id()
            })
            .collect();
        let announce = move |id: AssetId| {
            agent
                .post(&format!("{url}/assets/{id}/announce"))
                .send_string(r#"{"peer_id":"p","addr":"127.0.0.1:7001","complete":true}"#)
                .map(|r| r.status())
                .map_err(|e| e.to_string())
        };
        announce(ids[0]).unwrap();
        let first = state.swarm(&ids[0], false).unwrap();
        let held = first.locked();
        assert_eq!(announce(ids[1]).unwrap(), 200, "another swarm answers");
        let waiting = std::thread::spawn({
            let announce = announce.clone();
            move || announce(ids[0])
        });
        drop(held);
        assert_eq!(waiting.join().unwrap().unwrap(), 200, "then the held one");
        // Its kept-alive connections closed, so the shutdown does not wait for them.
        drop(announce);
        stop.shutdown();
        serving.join().unwrap().unwrap();
    }

    #[test]
    fn unspecified_addresses_take_the_announce_source() {
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        assert_eq!(
            resolve_addr("0.0.0.0:7001", Some(remote), true).unwrap(),
            "192.0.2.7:7001".parse().unwrap()
        );
        assert_eq!(
            resolve_addr(
                "[::]:7001",
                Some("[::ffff:192.0.2.7]:1".parse().unwrap()),
                true
            )
            .unwrap(),
            "192.0.2.7:7001".parse().unwrap()
        );
        // A stated address is kept as is (issue 11: unless it is loopback, see below).
        assert_eq!(
            resolve_addr("[2001:db8::1]:7001", Some(remote), true).unwrap(),
            "[2001:db8::1]:7001".parse().unwrap()
        );
        assert_eq!(
            resolve_addr("127.0.0.1:0", Some(remote), true)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            resolve_addr("nonsense", Some(remote), true)
                .unwrap_err()
                .status,
            400
        );
    }

    #[test]
    fn a_loopback_address_is_refused_from_another_host_and_kept_from_this_one() {
        let remote: SocketAddr = "10.77.0.2:40000".parse().unwrap();
        let refused = resolve_addr("127.0.0.1:7001", Some(remote), true).unwrap_err();
        assert_eq!(refused.status, 400);
        for words in [
            "127.0.0.1:7001",
            "10.77.0.2",
            "--listen 0.0.0.0:7001",
            "--advertise-addr",
        ] {
            assert!(
                refused.message.contains(words),
                "{words}: {}",
                refused.message
            );
        }
        let mapped: SocketAddr = "[::ffff:10.77.0.2]:1".parse().unwrap();
        assert_eq!(
            resolve_addr("[::1]:7001", Some(mapped), true)
                .unwrap_err()
                .status,
            400
        );
        assert_eq!(
            resolve_addr("127.0.0.2:7001", Some(remote), true)
                .unwrap_err()
                .status,
            400,
            "all of 127/8 is loopback"
        );
        let local: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        assert_eq!(
            resolve_addr("127.0.0.1:7001", Some(local), true).unwrap(),
            "127.0.0.1:7001".parse().unwrap()
        );
        let mapped_local: SocketAddr = "[::ffff:127.0.0.1]:1".parse().unwrap();
        assert!(resolve_addr("127.0.0.1:7001", Some(mapped_local), true).is_ok());
        assert!(resolve_addr("10.77.0.2:7001", Some(remote), true).is_ok());
    }

    #[test]
    fn broadcast_multicast_mapped_and_port_zero_are_refused_whatever_the_rights() {
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        // Issue 13: the tracker accepted every one of these.
        for (addr, words) in [
            ("255.255.255.255:80", "broadcast"),
            ("224.0.0.1:80", "multicast"),
            ("[ff02::1]:80", "multicast"),
            (
                "[::ffff:127.0.0.1]:80",
                "announce its IPv4 form 127.0.0.1:80",
            ),
            ("[::ffff:192.0.2.7]:80", "IPv4-mapped"),
            ("192.0.2.7:0", "port 0"),
        ] {
            for may_advertise in [false, true] {
                let refused = resolve_addr(addr, Some(remote), may_advertise).unwrap_err();
                assert_eq!(refused.status, 400, "{addr}");
                assert!(
                    refused.message.contains(words),
                    "{addr}: {}",
                    refused.message
                );
            }
        }
    }

    #[test]
    fn only_the_advertise_right_names_an_address_other_than_the_source() {
        let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let refused = resolve_addr("8.8.8.8:53", Some(remote), false).unwrap_err();
        assert_eq!(refused.status, 403);
        for words in ["192.0.2.7", "0.0.0.0:53", "tracker token --advertise"] {
            assert!(
                refused.message.contains(words),
                "{words}: {}",
                refused.message
            );
        }
        assert_eq!(
            resolve_addr("8.8.8.8:53", Some(remote), true).unwrap(),
            "8.8.8.8:53".parse().unwrap()
        );
        // Its own address, or the unspecified one, needs no right.
        for addr in ["192.0.2.7:7001", "0.0.0.0:7001", "[::]:7001"] {
            assert_eq!(
                resolve_addr(addr, Some(remote), false).unwrap(),
                "192.0.2.7:7001".parse().unwrap(),
                "{addr}"
            );
        }
        // From a mapped source, its IPv4 form is its own.
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:1".parse().unwrap();
        assert!(resolve_addr("192.0.2.7:7001", Some(mapped), false).is_ok());
        let v6: SocketAddr = "[2001:db8::7]:1".parse().unwrap();
        assert!(resolve_addr("[2001:db8::8]:7001", Some(v6), false).is_err());
        assert!(resolve_addr("[2001:db8::7]:7001", Some(v6), false).is_ok());
    }

    #[test]
    fn a_holder_is_its_token_with_auth_and_its_network_in_open_mode() {
        let remote: SocketAddr = "[2001:db8:0:1::5]:40000".parse().unwrap();
        let open = Holder::new(None, Some(remote));
        assert_eq!(
            open.who,
            Identity::of_addr("2001:db8:0:1::9".parse().unwrap())
        );
        assert!(open.may_advertise && open.may_origin);
        let (token, entry) = crate::auth::new_token(
            "viewer",
            &crate::auth::Rights {
                fetch: vec!["*".into()],
                ..Default::default()
            },
        )
        .unwrap();
        let tokens = crate::auth::Tokens::parse(&entry).unwrap();
        let grant = tokens.authorize(Some(&token), Action::Browse).unwrap();
        let viewer = Holder::new(Some(&grant), Some(remote));
        assert!(!viewer.may_advertise && !viewer.may_origin);
        assert_eq!(viewer.who.to_string(), "token \"viewer\"");
        assert_eq!(
            Holder::new(Some(&grant), None).who,
            viewer.who,
            "wherever it comes from"
        );
    }
}
