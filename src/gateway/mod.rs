//! The HTTP gateway (`peer_client gateway`): serves assets of the swarm to players and
//! browsers over plain HTTP, with `Range` reads answered as soon as their chunks are
//! verified, a listing at `/`, live figures at `/stats/ID` and a player page at `/watch/ID`.
//!
//! It runs on our own HTTP server ([`crate::http`]), not a crate's: the gateway faces
//! whatever connects to it (a browser's six connections, a player's seek storm, a hostile
//! local process), and only ours bounds how long a client may take to send its request,
//! how many connections one address holds, and how long an answer may sit unread, which is
//! what keeps one client from holding the workers that stream to the others. Each asset is
//! one [`Feed`]: a download that runs for the gateway's lifetime, in which every reader's
//! position is a window fetched first, nearest first (see [`crate::client::feed`]).
//! A directory asset with HLS playlists is read ahead along them: after a playlist or one
//! of its segments, the next segments come ahead of the player ([`hls`]).
//!
//! Routes: `GET|HEAD /ID` and `/ID/NAME` (the asset's bytes; 206 for a `Range`, 416 for an
//! unsatisfiable one), `/ID/PATH` (a file of a directory asset, read from its place in
//! the asset's byte stream), `GET /stats/ID` (JSON), `GET /watch/ID[/PATH]` (an HTML page),
//! `GET /` (the assets, HTML or JSON by `Accept` or `?format=json`).

pub mod hls;
pub mod range;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::client::feed::Feed;
use crate::client::{self, GetConfig};
use crate::http::{HttpConfig, HttpServer, Method, Request, Response, ShutdownHandle};
use crate::manifest::{AssetId, parse_asset_id};
use crate::store::Store;
use crate::sync::LockExt;
use range::{Wanted, content_type, parse_range, path_escape, path_unescape};

/// The player page at `/watch/ID`: plain HTML and JavaScript, no build step.
const WATCH_PAGE: &str = include_str!("watch.html");

/// Worker threads of the gateway's HTTP server. A streaming answer holds its worker for as
/// long as the client reads (minutes for a film), so this is the number of readers served
/// at once: a browser opens up to 6 connections to a host and a player 1 or 2, so 16 serve
/// a page, its player and a few scripts, with the per-address cap below keeping one client
/// from taking them all.
pub const DEFAULT_WORKERS: usize = 16;
/// Connections one address may hold: a browser's 6 and a player's 2 with room to spare,
/// half the workers, so one client can never hold all of them.
pub const MAX_CONNS_PER_IP: usize = 8;
/// Whole requests waiting for a worker before newcomers are told the gateway is busy.
const QUEUE: usize = 16;
/// How long a stopping gateway waits for its downloads to leave the swarm.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Most assets listed at `/`.
const MAX_LISTED: usize = 1000;
/// Playlists remembered per asset (a master and its variants are a handful; a hostile
/// asset of thousands must not grow the gateway's memory).
const MAX_PLAYLISTS: usize = 64;
/// How long the segments ahead of a player hold the download after its last request: a
/// player with a full buffer asks for one segment per segment duration (2 to 10 s), so
/// 30 s is three of the longest common ones; after it the player is taken to have left
/// and the background download resumes.
const AHEAD_HOLD: std::time::Duration = std::time::Duration::from_secs(30);

/// Settings of a [`Gateway`].
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Address to listen on (127.0.0.1 by default: see the warning in [`Gateway::bind`]).
    pub listen: SocketAddr,
    /// How each asset is downloaded: tracker, store, token, rates, serving. Its `asset`
    /// is replaced by each asset asked for.
    pub get: GetConfig,
    /// HTTP worker threads (see [`DEFAULT_WORKERS`]).
    pub workers: usize,
}

/// A bound gateway, ready to [`Gateway::serve`].
pub struct Gateway {
    server: HttpServer,
    shared: Arc<Shared>,
}

/// The playlists of one asset read so far: path and what it lists.
type Playlists = Vec<(String, Arc<hls::Playlist>)>;

/// What the request handlers share.
struct Shared {
    get: GetConfig,
    /// Every asset asked for, with its download. Opening one holds the lock (a tracker
    /// request), so no asset is ever downloaded twice.
    feeds: Mutex<HashMap<AssetId, Arc<Feed>>>,
    /// The last sample of each asset's byte counts, for the rates of `/stats`.
    rates: Mutex<HashMap<AssetId, Rates>>,
    /// The HLS playlists of each directory asset read so far, by path, the latest last.
    playlists: Mutex<HashMap<AssetId, Playlists>>,
    stopping: Arc<AtomicBool>,
}

/// Byte counts at a moment, and the rates measured up to it.
#[derive(Clone, Copy)]
struct Rates {
    at: Instant,
    downloaded: u64,
    uploaded: u64,
    download_bps: u64,
    upload_bps: u64,
}

/// The live figures of `/stats/ID`. The first nine fields are the page's contract (the
/// `/watch` page and scripts read them): change none, add freely.
#[derive(Serialize)]
pub struct StatsBody {
    /// Peers connected to download from.
    pub peers: u64,
    /// Bytes per second verified from the network, over the last second or more.
    pub download_bps: u64,
    /// Bytes per second uploaded to peers.
    pub upload_bps: u64,
    /// Bytes of the asset that were in the store when the gateway opened it.
    pub bytes_cache: u64,
    /// Bytes verified from peers since.
    pub bytes_peers: u64,
    /// Bytes verified from the origin since.
    pub bytes_origin: u64,
    /// `bytes_peers / (bytes_peers + bytes_origin)`, 0 before any.
    pub p2p_ratio: f64,
    /// Times a reader had to wait for a chunk after its first byte.
    pub stalls: u64,
    /// The asset's size in bytes.
    pub size: u64,
    /// Chunks in the asset.
    pub chunks: u32,
    /// Chunks verified in the store now.
    pub chunks_have: u32,
    /// Chunks verified from the network since the gateway opened the asset.
    pub chunks_fetched: u64,
    /// Bytes uploaded to peers.
    pub bytes_uploaded: u64,
    /// Bytes sent to the gateway's readers.
    pub bytes_read: u64,
    /// Readers at a position now.
    pub readers: usize,
    /// Why the download ended short of the whole asset, if it did.
    pub error: Option<String>,
}

impl Gateway {
    /// Binds `config.listen`; warns when that address is reachable from other hosts.
    pub fn bind(config: GatewayConfig) -> Result<Gateway> {
        if !config.listen.ip().is_loopback() {
            log::warn!(
                "the gateway listens on {}, not a loopback address: anyone who can reach it reads every asset the tracker lets this host fetch (no token is asked of them)",
                config.listen
            );
        }
        let mut http = HttpConfig::new(config.listen, "the gateway");
        http.workers = config.workers.max(1);
        http.queue = QUEUE;
        http.max_conns_per_ip = MAX_CONNS_PER_IP;
        let server = HttpServer::bind(http)?;
        Ok(Gateway {
            server,
            shared: Arc::new(Shared {
                get: config.get,
                feeds: Mutex::new(HashMap::new()),
                rates: Mutex::new(HashMap::new()),
                playlists: Mutex::new(HashMap::new()),
                stopping: Arc::new(AtomicBool::new(false)),
            }),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }

    /// A handle that stops [`Gateway::serve`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.server.shutdown_handle()
    }

    /// Answers requests until shut down (or [`client::interrupt`]); the downloads and
    /// seeding stop with it.
    pub fn serve(self) -> Result<()> {
        let shared = Arc::clone(&self.shared);
        let stop = self.server.shutdown_handle();
        let watcher_stop = stop.clone();
        let stopping = Arc::clone(&shared.stopping);
        // Ctrl-C stops the server as it stops downloads.
        let watcher = std::thread::spawn(move || {
            while !watcher_stop.is_shutdown() && !stopping.load(Ordering::SeqCst) {
                if client::interrupted() {
                    watcher_stop.shutdown();
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        let result = self.server.serve(|request| shared.answer(request));
        shared.stopping.store(true, Ordering::SeqCst);
        let _ = watcher.join();
        // Each download and seeding leaves the swarm ("stopped") before the process ends,
        // within a bound: a tracker that does not answer must not keep the gateway up.
        let deadline = Instant::now() + LEAVE_TIMEOUT;
        let feeds: Vec<Arc<Feed>> = shared.feeds.locked().values().cloned().collect();
        while feeds.iter().any(|f| !f.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        result
    }
}

impl Shared {
    fn answer(&self, request: &mut Request<'_>) -> Response {
        let head = match request.method() {
            Method::Get => false,
            Method::Head => true,
            _ => {
                return Response::error(405, "the gateway answers GET and HEAD only")
                    .with_header("Allow", "GET, HEAD");
            }
        };
        let path = request.path().to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').splitn(3, '/').collect();
        match parts.as_slice() {
            [""] => self.index(request),
            ["stats", id] => self.with_feed(id, |feed| self.stats(feed)),
            ["watch", id, ..] => match parse_asset_id(id) {
                Ok(_) => Response::new(200, "text/html; charset=utf-8", WATCH_PAGE)
                    .with_header("Cache-Control", "no-store"),
                Err(e) => Response::error(404, format!("{id:?} is no asset id: {e:#}")),
            },
            [id] => self.with_feed(id, |feed| self.bytes(request, feed, None, head)),
            [id, rest @ ..] => match path_unescape(&rest.join("/")) {
                Some(file) => {
                    self.with_feed(id, |feed| self.bytes(request, feed, Some(&file), head))
                }
                None => Response::error(400, format!("the path {path:?} is not a file name")),
            },
            _ => Response::error(404, format!("no such path {path:?}; try /")),
        }
    }

    /// Calls `then` with the feed of the asset named `id`, opened if need be.
    fn with_feed(&self, id: &str, then: impl FnOnce(&Arc<Feed>) -> Response) -> Response {
        let id = match parse_asset_id(id) {
            Ok(id) => id,
            Err(e) => return Response::error(404, format!("{id:?} is no asset id: {e:#}")),
        };
        match self.feed(id) {
            Ok(feed) => then(&feed),
            Err(e) => Response::error(502, format!("cannot open asset {id}: {e:#}")),
        }
    }

    /// The feed of `id`: the one open, or a new one (again after a download that failed).
    fn feed(&self, id: AssetId) -> Result<Arc<Feed>> {
        let mut feeds = self.feeds.locked();
        if let Some(feed) = feeds.get(&id).filter(|f| f.failed().is_none()) {
            return Ok(Arc::clone(feed));
        }
        let config = GetConfig {
            asset: id,
            ..self.get.clone()
        };
        let stopping = Arc::clone(&self.stopping);
        let feed = client::open_feed(config, move || stopping.load(Ordering::SeqCst))?;
        log::info!("gateway: serving {id} ({})", feed.manifest().name);
        feeds.insert(id, Arc::clone(&feed));
        Ok(feed)
    }

    /// `GET|HEAD /ID[/NAME]`: the asset's bytes.
    fn bytes(
        &self,
        request: &Request<'_>,
        feed: &Arc<Feed>,
        file: Option<&str>,
        head: bool,
    ) -> Response {
        let manifest = feed.manifest();
        let id = manifest.id();
        // Where the file is in the asset's byte stream, its size, its name and tag.
        let (base, size, name, etag) = if manifest.is_directory() {
            let Some(entry) = file.and_then(|f| manifest.file(f)) else {
                return Response::error(
                    404,
                    format!(
                        "asset {id} is a directory of {} files; ask for /{id}/PATH with a PATH it lists{}",
                        manifest.files().len(),
                        file.map_or(String::new(), |f| format!(" ({f:?} is not one)"))
                    ),
                );
            };
            let etag = format!("\"{id}-{}\"", entry.offset);
            (entry.offset, entry.size, entry.path.as_str(), etag)
        } else {
            if let Some(file) = file.filter(|f| *f != manifest.name) {
                return Response::error(
                    404,
                    format!(
                        "asset {id} is the single file {:?}, not {file:?}",
                        manifest.name
                    ),
                );
            }
            (
                0,
                manifest.size,
                manifest.name.as_str(),
                format!("\"{id}\""),
            )
        };
        // A range asked of another version (If-Range with another tag) gets the whole.
        let range = request.header("range").filter(|_| {
            request
                .header("if-range")
                .is_none_or(|tag| tag.trim() == etag)
        });
        let wanted = parse_range(range, size);
        let kind = content_type(name);
        let (status, start, len) = match wanted {
            Wanted::Whole => (200, 0, size),
            Wanted::Part { start, end } => (206, start, end - start + 1),
            Wanted::Unsatisfiable => {
                return Response::error(
                    416,
                    format!("the range {range:?} is outside asset {id} of {size} bytes"),
                )
                .with_header("Content-Range", format!("bytes */{size}"))
                .with_header("Accept-Ranges", "bytes");
            }
        };
        if !head {
            log::info!(
                "gateway: {} GET {id} bytes {start}-{} of {size}{}",
                request.remote_addr(),
                (start + len).saturating_sub(1),
                if range.is_some() { " (Range)" } else { "" }
            );
        }
        let stopping = Arc::clone(&self.stopping);
        let cancelled = move || stopping.load(Ordering::SeqCst) || client::interrupted();
        if manifest.is_directory() && !head {
            self.read_ahead(request, feed, name, &cancelled);
        }
        let mut reader = feed.reader();
        // The first chunk before the status line: a download that cannot deliver it gets
        // its client an error, not a 200 cut short.
        if !head
            && len > 0
            && let Err(e) = reader.wait_first(base + start, &cancelled)
        {
            return Response::error(
                504,
                format!("asset {id}: byte {start} could not be fetched: {e:#}"),
            );
        }
        let mut response = Response::streamed(
            status,
            kind,
            len,
            Box::new(move |out| {
                reader
                    .read(base + start, len, out, &cancelled)
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))
            }),
        )
        .with_header("Accept-Ranges", "bytes")
        .with_header("ETag", etag)
        .with_header("Cache-Control", "no-transform");
        if status == 206 {
            response = response.with_header(
                "Content-Range",
                format!("bytes {start}-{}/{size}", start + len - 1),
            );
        }
        response
    }

    /// A player reads `path` of a directory asset: if it is a playlist, the playlist is
    /// read and remembered; if it is a playlist or a segment one lists, the segments that
    /// follow it are fetched ahead of the player (see [`hls::Playlist::ahead_of`]), until
    /// it asks for something else or [`AHEAD_HOLD`] passes.
    fn read_ahead(
        &self,
        request: &Request<'_>,
        feed: &Arc<Feed>,
        path: &str,
        cancelled: &dyn Fn() -> bool,
    ) {
        let manifest = feed.manifest();
        let id = manifest.id();
        if hls::is_playlist(path)
            && let Some(entry) = manifest.file(path)
        {
            let len = entry.size.min(hls::MAX_PLAYLIST_BYTES as u64);
            let mut bytes = Vec::new();
            match feed.reader().read(entry.offset, len, &mut bytes, cancelled) {
                Ok(()) => {
                    let playlist = Arc::new(hls::parse(path, &bytes));
                    if playlist.skipped > 0 {
                        log::warn!(
                            "gateway: playlist {path:?} of {id}: {} entries left out (outside the asset, too long, or past the bounds)",
                            playlist.skipped
                        );
                    }
                    let mut playlists = self.playlists.locked();
                    let known = playlists.entry(id).or_default();
                    known.retain(|(p, _)| p != path);
                    if known.len() >= MAX_PLAYLISTS {
                        known.remove(0);
                    }
                    known.push((path.to_string(), playlist));
                }
                Err(e) => log::warn!("gateway: reading playlist {path:?} of {id}: {e:#}"),
            }
        }
        // The latest playlist that lists the path (or is it).
        let found = self.playlists.locked().get(&id).and_then(|known| {
            known.iter().rev().find_map(|(list, playlist)| {
                let ahead = playlist.ahead_of(list, path);
                let listed = list == path
                    || playlist.init.as_deref() == Some(path)
                    || playlist.segments.iter().any(|s| s.path == path);
                listed.then(|| (list.clone(), ahead))
            })
        });
        let Some((list, ahead)) = found else {
            return;
        };
        let ranges = ahead
            .iter()
            .filter_map(|p| manifest.file(p))
            .map(|entry| manifest.file_chunks(entry))
            .filter(|r| !r.is_empty())
            .collect();
        let player = format!("{} {list}", request.remote_addr().ip());
        feed.set_ahead(&player, ranges, AHEAD_HOLD);
    }

    /// `GET /stats/ID`: the live figures.
    fn stats(&self, feed: &Arc<Feed>) -> Response {
        let body = self.stats_body(feed);
        match serde_json::to_string(&body) {
            Ok(json) => Response::new(200, "application/json", json)
                .with_header("Cache-Control", "no-store"),
            Err(e) => Response::error(500, format!("writing the figures: {e}")),
        }
    }

    fn stats_body(&self, feed: &Feed) -> StatsBody {
        let s = &feed.stats;
        let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
        let (peers_bytes, origin_bytes) = (load(&s.bytes_peers), load(&s.bytes_origin));
        let uploaded = feed.uploaded();
        let downloaded = peers_bytes + origin_bytes;
        let manifest = feed.manifest();
        let now = Instant::now();
        let rates = {
            let mut rates = self.rates.locked();
            let entry = rates.entry(manifest.id()).or_insert(Rates {
                at: now,
                downloaded,
                uploaded,
                download_bps: 0,
                upload_bps: 0,
            });
            let secs = now.saturating_duration_since(entry.at).as_secs_f64();
            // Rates over at least a second, so that a page polling twice a second sees no
            // jitter of single chunks.
            if secs >= 1.0 {
                *entry = Rates {
                    at: now,
                    downloaded,
                    uploaded,
                    download_bps: ((downloaded - entry.downloaded.min(downloaded)) as f64 / secs)
                        as u64,
                    upload_bps: ((uploaded - entry.uploaded.min(uploaded)) as f64 / secs) as u64,
                };
            }
            *entry
        };
        StatsBody {
            peers: load(&s.peers),
            download_bps: rates.download_bps,
            upload_bps: rates.upload_bps,
            bytes_cache: load(&s.bytes_cache),
            bytes_peers: peers_bytes,
            bytes_origin: origin_bytes,
            p2p_ratio: if downloaded == 0 {
                0.0
            } else {
                peers_bytes as f64 / downloaded as f64
            },
            stalls: load(&s.stalls),
            size: manifest.size,
            chunks: manifest.chunk_count(),
            chunks_have: feed.chunks_have(),
            chunks_fetched: load(&s.chunks_fetched),
            bytes_uploaded: uploaded,
            bytes_read: load(&s.bytes_read),
            readers: feed.readers(),
            error: feed.failed(),
        }
    }

    /// `GET /`: the assets open in the gateway and those the store holds.
    fn index(&self, request: &Request<'_>) -> Response {
        #[derive(Serialize)]
        struct Listed {
            id: String,
            name: String,
            size: Option<u64>,
            url: String,
            watch: String,
        }
        let mut listed: Vec<Listed> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let feeds: Vec<Arc<Feed>> = self.feeds.locked().values().cloned().collect();
        for feed in feeds {
            let m = feed.manifest();
            seen.insert(m.id());
            listed.push(Listed {
                id: m.id().to_string(),
                name: m.name.clone(),
                size: Some(m.size),
                url: format!("/{}/{}", m.id(), path_escape(&m.name)),
                watch: format!("/watch/{}", m.id()),
            });
        }
        if let Ok(store) = Store::open(&self.get.store) {
            for id in store.list().unwrap_or_default() {
                if listed.len() >= MAX_LISTED || !seen.insert(id) {
                    continue;
                }
                let manifest = store.manifest(&id).ok().flatten();
                let name = manifest
                    .as_ref()
                    .map_or_else(String::new, |m| m.name.clone());
                listed.push(Listed {
                    id: id.to_string(),
                    size: manifest.as_ref().map(|m| m.size),
                    url: if name.is_empty() {
                        format!("/{id}")
                    } else {
                        format!("/{id}/{}", path_escape(&name))
                    },
                    name,
                    watch: format!("/watch/{id}"),
                });
            }
        }
        listed.truncate(MAX_LISTED);
        let json = request.url().contains("format=json")
            || request
                .header("accept")
                .is_some_and(|a| a.contains("application/json") && !a.contains("text/html"));
        if json {
            return match serde_json::to_string(&serde_json::json!({ "assets": listed })) {
                Ok(body) => Response::new(200, "application/json", body),
                Err(e) => Response::error(500, format!("writing the list: {e}")),
            };
        }
        let mut html = String::from(
            "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>swarmcache gateway</title></head>\n<body><h1>Assets</h1>\n<table>\n<tr><th>name</th><th>size</th><th>id</th><th></th></tr>\n",
        );
        for a in &listed {
            html.push_str(&format!(
                "<tr><td><a href=\"{}\">{}</a></td><td>{}</td><td><code>{}</code></td><td><a href=\"{}\">watch</a></td></tr>\n",
                escape(&a.url),
                escape(&a.name),
                a.size.map_or_else(String::new, |s| s.to_string()),
                a.id,
                a.watch
            ));
        }
        html.push_str("</table>\n</body></html>\n");
        Response::new(200, "text/html; charset=utf-8", html)
    }
}

/// Text made safe inside HTML (names come from whoever published the manifest).
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_in_the_listing() {
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
    }
}
