//! The validated settings of one `get` ([`GetConfig`]) and their defaults.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::manifest::AssetId;

use super::linger::DEFAULT_LINGER;
use super::stream::DEFAULT_WINDOW;

/// Default connections per download: enough to overlap receiving, hashing and writing on a
/// two-core machine and to spread load over several peers.
pub const DEFAULT_WORKERS: usize = 4;
/// Default time a reply (a whole chunk) may take to arrive, from when the client starts
/// waiting for it, before its source is declared stalled: 256 KiB in 10 s is 26 KiB/s.
pub const DEFAULT_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound on waiting for a first source while the tracker is warming up after a
/// restart: its default heartbeat period (20 s), the 5 s it allows for late heartbeats,
/// and 5 s for this client's own announces.
pub const DEFAULT_SOURCE_WAIT: Duration = Duration::from_secs(30);

/// Default for how long a download waits with no chunk arriving from any source before it
/// gives up: a failing source is paused at most a third of it (16 s for a peer, 4 s for an
/// origin), so each is tried several times, and it is six chunk timeouts.
pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Validated settings of one `get`.
#[derive(Clone, Debug)]
pub struct GetConfig {
    /// The asset to fetch.
    pub asset: AssetId,
    /// Tracker URL; optional when the store already has the manifest and every chunk.
    pub tracker: Option<String>,
    /// Where to place the finished file; `None` means the asset's name in the current
    /// directory, which must not exist yet.
    pub output: Option<PathBuf>,
    /// The local store (cache).
    pub store: PathBuf,
    /// Of a directory asset, only these files (listed paths): only the chunks they need are
    /// fetched, and only they are written. Empty: the whole asset.
    pub files: Vec<String>,
    /// A directory asset's `-o DIR` may replace an existing directory (swapped atomically).
    pub replace: bool,
    /// Parallel connections.
    pub workers: usize,
    /// A source whose due reply has not fully arrived this long after the client started
    /// waiting for it is declared stalled.
    pub chunk_timeout: Duration,
    /// Download cap in bytes per second.
    pub max_download_rate: Option<u64>,
    /// How progress is shown on stderr.
    pub progress: Progress,
    /// When streaming, how many chunks ahead of the reader are urgent.
    pub window: u32,
    /// Serve the asset to other peers while downloading, listening here (`None`: do not).
    pub serve: Option<SocketAddr>,
    /// Address to announce instead of the listening one.
    pub advertise: Option<SocketAddr>,
    /// Upload cap in bytes per second while serving.
    pub max_upload_rate: Option<u64>,
    /// Bound on the store's size: least recently used assets no process uses are evicted
    /// to make room before the download starts.
    pub cache_size: Option<u64>,
    /// Token for a tracker started with `--auth`.
    pub token: Option<String>,
    /// How to reach an `https://` tracker (CAs), and whether the token may cross plain
    /// `http://` to another host.
    pub tracker_tls: crate::tracker_client::TrackerTls,
    /// How long to wait for a first source while the tracker says it is warming up after
    /// a restart (zero: fail at once, as when it is not).
    pub source_wait: Duration,
    /// The download gives up when no source delivered a verified chunk for this long
    /// (failing sources are retried until then).
    pub stall_timeout: Duration,
    /// Whether the embedded server's uploads yield to this download when the uplink queues
    /// (`client::uplink`). Off by default: on kernel-capped links it throttled honest
    /// peers to its floor, and 32 hosts' origin sent 3.2 F instead of 2.0 F (issue 14's
    /// harness, 128 MiB, one run each), while no test showed it speeding the host's own
    /// download.
    pub yield_uplink: bool,
    /// After a download, how long at most its server may go on serving peers that still
    /// fetch from it (zero: leave at once); [`super::Got::seeding`] is then handed back for
    /// [`super::Seeding::linger`].
    pub linger: Duration,
}

impl GetConfig {
    /// Settings for fetching `asset` into `store` with defaults for everything else:
    /// serving while downloading on an ephemeral port of every interface.
    pub fn new(asset: AssetId, tracker: Option<String>, store: PathBuf) -> GetConfig {
        GetConfig {
            asset,
            tracker,
            output: None,
            store,
            files: Vec::new(),
            replace: false,
            workers: DEFAULT_WORKERS,
            chunk_timeout: DEFAULT_CHUNK_TIMEOUT,
            max_download_rate: None,
            progress: Progress::Off,
            window: DEFAULT_WINDOW,
            serve: Some(SocketAddr::from(([0, 0, 0, 0], 0))),
            advertise: None,
            max_upload_rate: None,
            cache_size: None,
            token: None,
            tracker_tls: crate::tracker_client::TrackerTls::default(),
            source_wait: DEFAULT_SOURCE_WAIT,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
            yield_uplink: false,
            linger: DEFAULT_LINGER,
        }
    }
}

/// How a download shows its progress on stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Nothing.
    Off,
    /// A bar with rate, ETA, peers connected and the P2P share so far (for terminals).
    Bar,
    /// One JSON object per line every second (for scripts and CI logs).
    Json,
}
