//! What a download reports: the [`Summary`] of a `get` (bytes per source, rates, stream
//! stalls), and while it runs the [`Meter`] that counts bytes by kind of source and
//! draws the progress bar or writes `--progress json` lines.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::manifest::{AssetId, Manifest};

use super::config::Progress;
use super::stream::StreamStats;

/// Bytes taken from one source.
#[derive(Clone, Debug, Serialize)]
pub struct SourceSummary {
    /// Where the source listens.
    pub addr: String,
    /// Whether it is an origin.
    pub origin: bool,
    /// Verified bytes received from it.
    pub bytes: u64,
    /// Verified chunks received from it.
    pub chunks: u32,
    /// Connections to it tried.
    pub tries: u32,
    /// Of those, the ones that failed or were refused (each was retried after a pause).
    pub failures: u32,
    /// How its last failed connection failed, if one did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Why it was dropped (it sent bad data), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<String>,
}

/// Why a chunk was asked of an origin (see [`OriginAccount`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum OriginWhy {
    /// Of this client's share in the tracker's plan.
    Share,
    /// The tracker named no share: what no peer held.
    Unplanned,
    /// Outside the share, once peers went quiet or none was usable.
    Fallback,
    /// In flight at a slow peer, expected sooner from the origin.
    Rescue,
    /// Late at another source in the endgame.
    Endgame,
    /// A stream's urgent window, or what a gateway's readers need next.
    Stream,
    /// Asked again after the peer connection it was in flight on failed.
    Retry,
}

/// Where an origin's chunk bytes went and why they were asked of it: every chunk counted
/// once, by the reason its first verified copy was requested; copies that came twice are
/// in [`Duplicates`]. What a crowd's origin sends beyond F is the sum over its clients of
/// everything but `share` (and `unplanned` where shares overlap).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OriginAccount {
    /// Of this client's share in the tracker's plan.
    pub share: u64,
    /// Without a share (no plan from the tracker): what no peer held.
    pub unplanned: u64,
    /// Outside the share after no peer delivered for the fall-back time, or with no
    /// usable peer.
    pub fallback: u64,
    /// Taken over from a slow peer.
    pub rescue: u64,
    /// Late elsewhere in the endgame.
    pub endgame: u64,
    /// A stream's urgent window or a gateway reader's next chunks.
    pub stream: u64,
    /// Asked again after a peer connection failed with it in flight.
    pub retry: u64,
}

impl OriginAccount {
    /// Counts `len` bytes delivered first by an origin that was asked for `why`.
    pub(crate) fn add(&mut self, why: OriginWhy, len: u64) {
        let field = match why {
            OriginWhy::Share => &mut self.share,
            OriginWhy::Unplanned => &mut self.unplanned,
            OriginWhy::Fallback => &mut self.fallback,
            OriginWhy::Rescue => &mut self.rescue,
            OriginWhy::Endgame => &mut self.endgame,
            OriginWhy::Stream => &mut self.stream,
            OriginWhy::Retry => &mut self.retry,
        };
        *field += len;
    }
}

/// Chunk bytes received whole for a chunk already verified: the slower copy of a hedged
/// or rescued chunk, or one whose cancel came too late. Network bytes no file needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Duplicates {
    /// From origins.
    pub from_origin: u64,
    /// From peers.
    pub from_peers: u64,
    /// All of them (from origins and peers), by why the chunk was asked of a second source.
    pub why: SecondCopies,
    /// Bytes of second copies that a cancel stopped before they were sent: what the
    /// duplicates would have been without it.
    pub cancelled: u64,
}

/// Why a chunk was asked of a second source while a first still had it in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecondWhy {
    /// A slow peer had it; another source was expected to deliver sooner.
    Rescue,
    /// The endgame: overdue at the first source by that source's own pace.
    Late,
    /// The endgame: not overdue, but expected sooner at the second source.
    Sooner,
    /// A stream's urgent window: overdue at the first source.
    Stream,
}

/// Duplicate bytes by [`SecondWhy`]; `other` counts a duplicate of a chunk that was not
/// asked twice on purpose (none is expected).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SecondCopies {
    /// See [`SecondWhy::Rescue`].
    pub rescue: u64,
    /// See [`SecondWhy::Late`].
    pub late: u64,
    /// See [`SecondWhy::Sooner`].
    pub sooner: u64,
    /// See [`SecondWhy::Stream`].
    pub stream: u64,
    /// A duplicate with no second request on record.
    pub other: u64,
}

impl SecondCopies {
    /// Counts `len` bytes for a chunk asked twice for `why` (`None`: not on record).
    pub(crate) fn add(&mut self, why: Option<SecondWhy>, len: u64) {
        let field = match why {
            Some(SecondWhy::Rescue) => &mut self.rescue,
            Some(SecondWhy::Late) => &mut self.late,
            Some(SecondWhy::Sooner) => &mut self.sooner,
            Some(SecondWhy::Stream) => &mut self.stream,
            None => &mut self.other,
        };
        *field += len;
    }
}

/// What a `get` did.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// The asset id.
    pub asset: String,
    /// Asset name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Where the file was placed (`None` when streamed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,
    /// Bytes already in the local store.
    pub from_cache: u64,
    /// Bytes received from peers.
    pub from_peers: u64,
    /// Bytes received from origins.
    pub from_origin: u64,
    /// Peer bytes / network bytes (`None` when nothing came over the network).
    pub p2p_ratio: Option<f64>,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Network bytes per second over the whole `get`.
    pub average_rate: f64,
    /// Network bytes per second in the best one-second stretch (or the whole download when
    /// it took less).
    pub peak_rate: f64,
    /// Bytes of this asset served to other peers during the `get`.
    pub uploaded: u64,
    /// Peers that delivered at least one chunk.
    pub peers_used: usize,
    /// Seconds to the first byte: written to the stream when streaming, otherwise the
    /// first chunk verified (`None` when nothing was needed from the network or stream).
    pub first_byte_secs: Option<f64>,
    /// Times the stream, after its first byte, waited for a chunk longer than a player's
    /// buffer hides ([`super::stream::STALL_THRESHOLD`], 50 ms; 0 when not streaming).
    pub stalls: u32,
    /// Seconds the stream spent in those stalls.
    pub stall_secs: f64,
    /// Every wait of the stream for a chunk after its first byte, the stalls included.
    pub waits: u32,
    /// Seconds the stream spent in those waits.
    pub wait_secs: f64,
    /// Late chunks also asked of a second source (urgent ones of a stream, and any in the
    /// endgame).
    pub hedged: u32,
    /// The bytes of `from_origin` by why they were asked of an origin.
    pub origin_reasons: OriginAccount,
    /// Bytes received for chunks already verified (not in `from_peers` or `from_origin`).
    pub duplicates: Duplicates,
    /// Every source used or tried.
    pub sources: Vec<SourceSummary>,
}

impl Summary {
    /// The summary of a `get` of `manifest` that took `elapsed`, from what the download
    /// and the stream saw (with no output path: the caller names it).
    pub(crate) fn new(
        asset: &AssetId,
        manifest: &Manifest,
        from_cache: u64,
        downloaded: Downloaded,
        streamed: StreamStats,
        uploaded: u64,
        elapsed: Duration,
    ) -> Summary {
        let sum = |origin: bool| {
            downloaded
                .sources
                .iter()
                .filter(|s| s.origin == origin)
                .map(|s| s.bytes)
                .sum::<u64>()
        };
        let (from_peers, from_origin) = (sum(false), sum(true));
        let network = from_peers + from_origin;
        let seconds = elapsed.as_secs_f64();
        Summary {
            asset: asset.to_string(),
            name: manifest.name.clone(),
            size: manifest.size,
            output: None,
            from_cache,
            from_peers,
            from_origin,
            p2p_ratio: (network > 0).then(|| from_peers as f64 / network as f64),
            seconds,
            average_rate: network as f64 / seconds.max(1e-9),
            peak_rate: downloaded.peak_rate,
            uploaded,
            peers_used: downloaded
                .sources
                .iter()
                .filter(|s| !s.origin && s.bytes > 0)
                .count(),
            first_byte_secs: streamed.first_byte_secs.or(downloaded.first_chunk_secs),
            stalls: streamed.stalls,
            stall_secs: streamed.stall_secs,
            waits: streamed.waits,
            wait_secs: streamed.wait_secs,
            hedged: downloaded.hedged,
            origin_reasons: downloaded.origin_reasons,
            duplicates: downloaded.duplicates,
            sources: downloaded.sources,
        }
    }

    /// One line for people: where the bytes came from, time and rates.
    pub fn human(&self) -> String {
        use crate::units::{format_bytes, format_rate};
        let network = self.from_peers + self.from_origin;
        let mut line = format!(
            "got {} ({}) in {:.2} s",
            self.name,
            format_bytes(self.size),
            self.seconds
        );
        if network == 0 {
            line.push_str(", all from the local store");
        } else {
            line.push_str(&format!(
                ", {} (peak {}): cache {}, peers {} ({} peer{}), origin {}, p2p {:.0}%",
                format_rate(network, Duration::from_secs_f64(self.seconds)),
                format_rate(self.peak_rate as u64, Duration::from_secs(1)),
                format_bytes(self.from_cache),
                format_bytes(self.from_peers),
                self.peers_used,
                if self.peers_used == 1 { "" } else { "s" },
                format_bytes(self.from_origin),
                self.p2p_ratio.unwrap_or(0.0) * 100.0,
            ));
        }
        let failures: u32 = self.sources.iter().map(|s| s.failures).sum();
        if failures > 0 {
            let sources = self.sources.iter().filter(|s| s.failures > 0).count();
            line.push_str(&format!(
                ", {failures} failed connection{} to {sources} source{} retried",
                if failures == 1 { "" } else { "s" },
                if sources == 1 { "" } else { "s" },
            ));
        }
        if self.uploaded > 0 {
            line.push_str(&format!(", uploaded {}", format_bytes(self.uploaded)));
        }
        if let Some(first) = self.first_byte_secs {
            line.push_str(&format!(", first byte {:.1} ms", first * 1000.0));
        }
        if self.output.is_none() {
            line.push_str(&format!(
                ", {} stall{} ({:.2} s)",
                self.stalls,
                if self.stalls == 1 { "" } else { "s" },
                self.stall_secs
            ));
        }
        line
    }
}

/// What a download did, for the summary.
#[derive(Default)]
pub(crate) struct Downloaded {
    /// Every source used or tried.
    pub(crate) sources: Vec<SourceSummary>,
    /// Seconds from the start of the `get` to the first chunk verified.
    pub(crate) first_chunk_secs: Option<f64>,
    /// Best network rate over a one-second stretch, in bytes per second.
    pub(crate) peak_rate: f64,
    /// Late chunks asked of a second source (stream or endgame).
    pub(crate) hedged: u32,
    /// Origin bytes by why they were asked for.
    pub(crate) origin_reasons: OriginAccount,
    /// Bytes that came twice.
    pub(crate) duplicates: Duplicates,
}

/// One line of `--progress json`.
#[derive(Serialize)]
struct ProgressLine {
    elapsed_secs: f64,
    bytes: u64,
    size: u64,
    from_cache: u64,
    from_peers: u64,
    from_origin: u64,
    /// Network bytes per second over the last second.
    rate: f64,
    eta_secs: Option<f64>,
    peers_connected: usize,
    p2p_ratio: Option<f64>,
}

/// Byte accounting and progress display of a running download.
pub(crate) struct Meter {
    progress: Progress,
    size: u64,
    /// When the `get` started.
    started: Instant,
    bar: Option<indicatif::ProgressBar>,
    from_cache: u64,
    from_peers: u64,
    from_origin: u64,
    /// When progress was last sampled, and the network bytes then.
    sampled: (Instant, u64),
    peak_rate: f64,
}

impl Meter {
    /// A meter for an asset of `size` bytes of which `from_cache` are in the store.
    pub(crate) fn new(progress: Progress, size: u64, from_cache: u64, started: Instant) -> Meter {
        let bar = (progress == Progress::Bar).then(|| {
            let bar = indicatif::ProgressBar::new(size);
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bar:30} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar.set_position(from_cache);
            bar
        });
        Meter {
            progress,
            size,
            started,
            bar,
            from_cache,
            from_peers: 0,
            from_origin: 0,
            sampled: (Instant::now(), 0),
            peak_rate: 0.0,
        }
    }

    /// Counts `len` verified bytes from a peer or an origin.
    pub(crate) fn add(&mut self, origin: bool, len: u64) {
        if origin {
            self.from_origin += len;
        } else {
            self.from_peers += len;
        }
        if let Some(bar) = &self.bar {
            bar.inc(len);
        }
    }

    /// Best network rate over a one-second stretch so far.
    pub(crate) fn peak_rate(&self) -> f64 {
        self.peak_rate
    }

    /// Once a second (and at the end): the peak rate, the bar's message, a JSON line.
    pub(crate) fn sample(&mut self, last: bool, peers_connected: impl FnOnce() -> usize) {
        let (at, bytes) = self.sampled;
        let elapsed = at.elapsed();
        if elapsed < Duration::from_secs(1) && !last {
            return;
        }
        let peers_connected = peers_connected();
        let network = self.from_peers + self.from_origin;
        let rate = (network - bytes) as f64 / elapsed.as_secs_f64().max(1e-9);
        // A download shorter than a second has its only stretch as its peak.
        if elapsed >= Duration::from_secs(1) || self.peak_rate == 0.0 {
            self.peak_rate = self.peak_rate.max(rate);
        }
        self.sampled = (Instant::now(), network);
        let p2p_ratio = (network > 0).then(|| self.from_peers as f64 / network as f64);
        if let Some(bar) = &self.bar {
            bar.set_message(format!(
                "{peers_connected} peers, p2p {:.0}%",
                p2p_ratio.unwrap_or(0.0) * 100.0
            ));
        }
        if self.progress == Progress::Json {
            let done = self.from_cache + network;
            let left = self.size - done.min(self.size);
            let line = ProgressLine {
                elapsed_secs: self.started.elapsed().as_secs_f64(),
                bytes: done,
                size: self.size,
                from_cache: self.from_cache,
                from_peers: self.from_peers,
                from_origin: self.from_origin,
                rate,
                eta_secs: (rate > 0.0).then(|| left as f64 / rate),
                peers_connected,
                p2p_ratio,
            };
            // The progress stream for scripts, one object a line; not a log message.
            if let Ok(text) = serde_json::to_string(&line) {
                eprintln!("{text}");
            }
        }
    }

    /// Removes the bar.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
