//! The peer server: serves the chunks of a store to other peers over the [`wire`] protocol
//! and announces what it holds to a tracker. One accept thread hands connections to a fixed
//! pool of workers; when every worker is busy the newcomer gets a "server busy" error frame
//! instead of waiting in a queue.
//!
//! [`wire`]: crate::wire

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossbeam_channel::{TrySendError, bounded};

use crate::api::AnnounceRequest;
use crate::bitfield::Bitfield;
use crate::manifest::{AssetId, Manifest};
use crate::ratelimit::{self, RateLimiter};
use crate::store::Store;
use crate::tracker_client::{TrackerClient, new_peer_id};
use crate::wire::{self, MAX_CONTROL_FRAME, Message, PROTOCOL_VERSION, WireError, code};

/// A client has this long to send its `Hello` after connecting: a healthy one sends it at
/// once, so 10 s only ever cuts off the stuck and the hostile.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection with no request for this long is closed, freeing its worker for others.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A write (one chunk to a client) that cannot progress for this long means the client
/// stopped reading; give its worker to someone else.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default connection slots. Each is a thread with a small stack, and a 1 MiB chunk goes
/// out with `sendfile` without a user-space buffer, so 64 cost little memory.
pub const DEFAULT_MAX_CONNS: usize = 64;
/// Heartbeat period used until the tracker says otherwise.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(20);
/// First retry after a failed announce; later ones back off exponentially.
const RETRY_FIRST: Duration = Duration::from_secs(1);
/// Refusing a connection must not stall the accept loop on a client that does not read.
const REFUSE_TIMEOUT: Duration = Duration::from_millis(500);

/// Validated peer server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Address to listen on (`0.0.0.0:7001`, `[::]:7001`, `127.0.0.1:0` …).
    pub listen: SocketAddr,
    /// The store whose chunks are served.
    pub store: PathBuf,
    /// Files to import into the store (and publish, with a tracker) before serving.
    pub seeds: Vec<PathBuf>,
    /// Chunk size for seeded files.
    pub chunk_size: u32,
    /// Tracker to publish to and announce at.
    pub tracker: Option<String>,
    /// Register as the swarms' origin (fallback of last resort).
    pub origin: bool,
    /// Address to announce instead of the listening one.
    pub advertise: Option<SocketAddr>,
    /// Connection slots.
    pub max_conns: usize,
    /// Upload cap in bytes per second for the whole process.
    pub max_upload_rate: Option<u64>,
    /// Heartbeat period override (otherwise what the tracker asks for).
    pub announce_interval: Option<Duration>,
}

/// An asset the server has served, with its counter.
struct Served {
    manifest: Arc<Manifest>,
    uploaded: AtomicU64,
}

struct Shared {
    store: Store,
    assets: Mutex<HashMap<AssetId, Arc<Served>>>,
    limiter: Option<RateLimiter>,
    stop: AtomicBool,
    active: Mutex<HashMap<u64, TcpStream>>,
}

/// A bound peer server, ready to [`Server::serve`].
pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    config: ServerConfig,
    shared: Arc<Shared>,
    seeded: Vec<Manifest>,
}

/// Stops a serving [`Server`] from another thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
}

impl ShutdownHandle {
    /// Stops accepting, closes open connections, and lets `serve` return.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop with a connection to ourselves.
        let wake = match self.addr.ip() {
            ip if ip.is_unspecified() && self.addr.is_ipv4() => {
                SocketAddr::from(([127, 0, 0, 1], self.addr.port()))
            }
            ip if ip.is_unspecified() => {
                SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, self.addr.port()))
            }
            _ => self.addr,
        };
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        for stream in self
            .shared
            .active
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

impl Server {
    /// Opens the store, imports and publishes the seed files, and binds the socket.
    pub fn bind(config: ServerConfig) -> Result<Server> {
        let store = Store::open(&config.store)?;
        let tracker = config
            .tracker
            .as_deref()
            .map(TrackerClient::new)
            .transpose()?;
        let mut seeded = Vec::new();
        for path in &config.seeds {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .with_context(|| format!("seed path {} names no file", path.display()))?;
            let manifest = store
                .import_file(path, &name, config.chunk_size)
                .with_context(|| format!("seeding {}", path.display()))?;
            if let Some(tracker) = &tracker {
                tracker
                    .publish(&manifest)
                    .with_context(|| format!("publishing {}", path.display()))?;
            }
            seeded.push(manifest);
        }
        let listener = TcpListener::bind(config.listen)
            .with_context(|| format!("binding {} (is another process using it?)", config.listen))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            store,
            assets: Mutex::new(HashMap::new()),
            limiter: config.max_upload_rate.map(RateLimiter::new),
            stop: AtomicBool::new(false),
            active: Mutex::new(HashMap::new()),
        });
        Ok(Server {
            listener,
            addr,
            config,
            shared,
            seeded,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The manifests of the files seeded at start.
    pub fn seeded(&self) -> &[Manifest] {
        &self.seeded
    }

    /// A handle that stops [`Server::serve`].
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            shared: Arc::clone(&self.shared),
            addr: self.addr,
        }
    }

    /// Serves until shut down; announces to the tracker, if any, in the background.
    pub fn serve(self) -> Result<()> {
        let announcer = match &self.config.tracker {
            Some(url) => {
                let tracker = TrackerClient::new(url)?;
                let shared = Arc::clone(&self.shared);
                let (config, addr) = (self.config.clone(), self.addr);
                Some(std::thread::spawn(move || {
                    announce_loop(&shared, &tracker, &config, addr)
                }))
            }
            None => None,
        };
        let (conn_tx, conn_rx) = bounded::<(u64, TcpStream)>(0);
        let workers: Vec<_> = (0..self.config.max_conns.max(1))
            .map(|_| {
                let (rx, shared) = (conn_rx.clone(), Arc::clone(&self.shared));
                std::thread::spawn(move || {
                    for (id, stream) in rx {
                        let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
                        if let Err(e) = shared.handle(&stream) {
                            eprintln!("peer_server: connection from {peer}: {e:#}");
                        }
                        shared
                            .active
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(&id);
                    }
                })
            })
            .collect();
        let mut next_id = 0u64;
        for stream in self.listener.incoming() {
            if self.shared.stop.load(Ordering::SeqCst) {
                break;
            }
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("peer_server: accept failed: {e}");
                    continue;
                }
            };
            next_id += 1;
            if let Ok(clone) = stream.try_clone() {
                self.shared
                    .active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(next_id, clone);
            }
            match conn_tx.try_send((next_id, stream)) {
                Ok(()) => {}
                Err(
                    TrySendError::Full((id, stream)) | TrySendError::Disconnected((id, stream)),
                ) => {
                    self.shared
                        .active
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    refuse(stream, self.config.max_conns);
                }
            }
        }
        drop(conn_tx);
        for worker in workers {
            let _ = worker.join();
        }
        if let Some(announcer) = announcer {
            let _ = announcer.join();
        }
        Ok(())
    }
}

fn refuse(mut stream: TcpStream, max_conns: usize) {
    let _ = stream.set_write_timeout(Some(REFUSE_TIMEOUT));
    let message = format!(
        "server busy: all {max_conns} connection slots are taken; try another peer or retry later"
    );
    let _ = wire::write_message(&mut stream, &Message::error(code::SERVER_BUSY, message));
}

impl Shared {
    /// The asset's manifest, read from the store once and then kept in memory.
    fn served(&self, id: &AssetId) -> Result<Option<Arc<Served>>> {
        if let Some(s) = self
            .assets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
        {
            return Ok(Some(Arc::clone(s)));
        }
        let Some(manifest) = self.store.manifest(id)? else {
            return Ok(None);
        };
        let served = Arc::new(Served {
            manifest: Arc::new(manifest),
            uploaded: AtomicU64::new(0),
        });
        let mut assets = self.assets.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Some(Arc::clone(assets.entry(*id).or_insert(served))))
    }

    /// Serves one connection: handshake, then requests until the client leaves.
    fn handle(&self, stream: &TcpStream) -> Result<()> {
        stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        stream.set_nodelay(true)?;
        let mut reader = stream;
        let mut writer = stream;
        let hello = match wire::read_message(&mut reader, MAX_CONTROL_FRAME) {
            Ok(m) => m,
            Err(e) => return Err(fail(&mut writer, "handshake", e)),
        };
        let Message::Hello { version, asset, .. } = hello else {
            let _ = wire::write_message(
                &mut writer,
                &Message::error(code::BAD_REQUEST, "the first frame must be Hello"),
            );
            anyhow::bail!("first frame was not Hello");
        };
        if version != PROTOCOL_VERSION {
            let text = format!(
                "protocol version {version} is not supported; this peer speaks {PROTOCOL_VERSION}"
            );
            let _ = wire::write_message(
                &mut writer,
                &Message::error(code::UNSUPPORTED_VERSION, text.clone()),
            );
            anyhow::bail!(text);
        }
        let served = match self.served(&asset) {
            Ok(Some(s)) => s,
            Ok(None) => {
                let text = format!("asset {asset} is not held here");
                wire::write_message(&mut writer, &Message::error(code::UNKNOWN_ASSET, text))?;
                return Ok(());
            }
            Err(e) => {
                let _ = wire::write_message(
                    &mut writer,
                    &Message::error(code::INTERNAL, format!("{e:#}")),
                );
                return Err(e);
            }
        };
        let manifest = &served.manifest;
        let mut have = self.store.have(&asset, manifest)?;
        let data_path = self.store.data_path(&asset);
        let mut data =
            File::open(&data_path).with_context(|| format!("opening {}", data_path.display()))?;
        wire::write_message(
            &mut writer,
            &Message::Welcome {
                version: PROTOCOL_VERSION,
                chunk_count: manifest.chunk_count(),
            },
        )?;
        stream.set_read_timeout(Some(IDLE_TIMEOUT))?;
        loop {
            let message = match wire::read_message(&mut reader, MAX_CONTROL_FRAME) {
                Ok(m) => m,
                Err(WireError::Closed) => return Ok(()),
                Err(e) => return Err(fail(&mut writer, "waiting for a request", e)),
            };
            match message {
                Message::HaveRequest => {
                    have = self.store.have(&asset, manifest)?;
                    wire::write_message(&mut writer, &Message::Have(have.clone()))?;
                }
                Message::Request { index } if index >= manifest.chunk_count() => {
                    let text = format!(
                        "chunk {index} is out of range: the asset has {} chunks",
                        manifest.chunk_count()
                    );
                    let _ = wire::write_message(
                        &mut writer,
                        &Message::error(code::BAD_REQUEST, text.clone()),
                    );
                    anyhow::bail!(text);
                }
                Message::Request { index } => {
                    if !have.get(index) {
                        // The store may have grown since the handshake (a download in progress).
                        have = self.store.have(&asset, manifest)?;
                    }
                    if !have.get(index) {
                        wire::write_message(&mut writer, &Message::DontHave { index })?;
                        continue;
                    }
                    let len = manifest.chunk_len(index);
                    ratelimit::take(self.limiter.as_ref(), len as u64);
                    send_chunk(
                        &mut writer,
                        &mut data,
                        manifest.chunk_offset(index),
                        index,
                        len,
                    )
                    .with_context(|| format!("sending chunk {index} of {asset}"))?;
                    served.uploaded.fetch_add(len as u64, Ordering::Relaxed);
                }
                Message::Cancel { .. } => {}
                other => {
                    let text = format!("unexpected {} after the handshake", message_name(&other));
                    let _ = wire::write_message(
                        &mut writer,
                        &Message::error(code::BAD_REQUEST, text.clone()),
                    );
                    anyhow::bail!(text);
                }
            }
        }
    }
}

/// Sends one chunk frame, the data going from the file to the socket inside the kernel.
fn send_chunk(
    writer: &mut &TcpStream,
    data: &mut File,
    offset: u64,
    index: u32,
    len: u32,
) -> Result<()> {
    data.seek(SeekFrom::Start(offset))?;
    wire::write_chunk_header(writer, index, len)?;
    let sent = io::copy(&mut (&*data).take(len as u64), writer)?;
    if sent != len as u64 {
        // The frame header promised `len` bytes; closing is the only honest option left.
        anyhow::bail!(
            "store file is {} bytes short; the store is damaged",
            len as u64 - sent
        );
    }
    Ok(())
}

/// Answers a protocol failure with an error frame when the peer should hear why.
fn fail(writer: &mut &TcpStream, phase: &str, e: WireError) -> anyhow::Error {
    if let Some(code) = e.reply_code() {
        let _ = wire::write_message(writer, &Message::error(code, e.to_string()));
    }
    anyhow::anyhow!("{phase}: {e}")
}

fn message_name(m: &Message) -> &'static str {
    match m {
        Message::Hello { .. } => "Hello",
        Message::Welcome { .. } => "Welcome",
        Message::HaveRequest => "HaveRequest",
        Message::Have(_) => "Have",
        Message::Request { .. } => "Request",
        Message::Chunk { .. } => "Chunk",
        Message::DontHave { .. } => "DontHave",
        Message::Busy { .. } => "Busy",
        Message::Error { .. } => "Error",
        Message::Cancel { .. } => "Cancel",
    }
}

/// Announces every asset of the store on a heartbeat until the server stops.
fn announce_loop(
    shared: &Shared,
    tracker: &TrackerClient,
    config: &ServerConfig,
    bound: SocketAddr,
) {
    let peer_id = new_peer_id();
    let addr = config.advertise.unwrap_or(bound).to_string();
    let mut interval = config
        .announce_interval
        .unwrap_or(DEFAULT_ANNOUNCE_INTERVAL);
    let mut failures = 0u32;
    while !shared.stop.load(Ordering::SeqCst) {
        let wait = match announce_all(shared, tracker, config, &peer_id, &addr) {
            Ok(asked) => {
                if failures > 0 {
                    eprintln!("peer_server: tracker {} reachable again", tracker.url());
                }
                failures = 0;
                if let Some(asked) = asked {
                    interval = config.announce_interval.unwrap_or(asked);
                }
                interval
            }
            Err(e) => {
                if failures == 0 {
                    eprintln!("peer_server: announcing failed (retrying with backoff): {e:#}");
                }
                failures += 1;
                // 1 s, 2 s, 4 s … up to the heartbeat period: a tracker that starts after
                // its peers, or restarts, learns of them within seconds.
                RETRY_FIRST
                    .saturating_mul(1 << (failures - 1).min(10))
                    .min(interval)
            }
        };
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline && !shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// One heartbeat for every asset in the store; returns the interval the tracker asked for.
fn announce_all(
    shared: &Shared,
    tracker: &TrackerClient,
    config: &ServerConfig,
    peer_id: &str,
    addr: &str,
) -> Result<Option<Duration>> {
    let mut asked = None;
    for id in shared.store.list()? {
        let Some(served) = shared.served(&id)? else {
            continue;
        };
        let have: Bitfield = shared.store.have(&id, &served.manifest)?;
        if have.count() == 0 && !have.is_empty() {
            continue;
        }
        let request = AnnounceRequest {
            peer_id: peer_id.to_string(),
            addr: Some(addr.to_string()),
            complete: have.is_full(),
            have: (!have.is_full()).then(|| have.to_hex()),
            origin: config.origin,
            event: None,
            uploaded: served.uploaded.load(Ordering::Relaxed),
            downloaded: 0,
        };
        match tracker.announce(&id, &request) {
            Ok(answer) => asked = Some(Duration::from_secs(answer.interval_secs.max(1))),
            // An asset published to another tracker is not an error for this one.
            Err(e) if e.to_string().contains("answered 404") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(asked)
}
