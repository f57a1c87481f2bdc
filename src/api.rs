//! The JSON bodies of the tracker's HTTP API, shared by the tracker and its clients.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bitfield::Bitfield;

/// Answer to `POST /assets`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PublishResponse {
    /// The asset id.
    pub id: String,
    /// Asset name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u32,
    /// False when the asset was already in the catalog (publishing is idempotent).
    pub created: bool,
}

/// Answer to `GET /assets/{id}/key`: whether the asset is encrypted and, when it is, its
/// content key. Given only to a holder of the fetch right, over TLS or from loopback.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContentKeyResponse {
    /// The asset id.
    pub id: String,
    /// Whether the asset's content is ciphertext.
    pub encrypted: bool,
    /// The cipher, `"aes-128-ctr"`, when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// The key, 32 hex digits, when encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// Body of `POST /assets/{id}/origins`: an origin URL to list for the asset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OriginUrlRequest {
    /// An `http://` or `https://` URL serving the asset's bytes with `Range` requests.
    pub url: String,
}

/// Answer to `POST` and `GET /assets/{id}/origins`: the asset's origin URLs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OriginUrlsResponse {
    /// The asset id.
    pub id: String,
    /// Its origin URLs, in the order they were added.
    pub origin_urls: Vec<String>,
    /// For a `POST`: false when the URL was listed already.
    #[serde(default)]
    pub added: bool,
}

/// One catalog entry, in `GET /assets`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AssetSummary {
    /// The asset id.
    pub id: String,
    /// Asset name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub chunks: u32,
}

/// Body of `POST /assets/{id}/announce`: join a swarm or heartbeat.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnnounceRequest {
    /// A random id the peer keeps for its lifetime. In each swarm it belongs to the holder
    /// that first announced it (with auth, the token; in open mode, the source address,
    /// IPv6 by /64): the tracker refuses anyone else's announce of it with 409.
    pub peer_id: String,
    /// Where the peer serves chunks, as `ip:port`. An unspecified ip (`0.0.0.0:7001`,
    /// `[::]:7001`) means "the address you see my announce come from"; with auth, another
    /// ip than that needs the token's `advertise` right. `None` means the peer only
    /// downloads and is never handed to others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The peer holds every chunk.
    #[serde(default)]
    pub complete: bool,
    /// Hex bitfield of the chunks held, when not complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub have: Option<String>,
    /// The peer is an origin: the swarm's fallback of last resort.
    #[serde(default)]
    pub origin: bool,
    /// `"stopped"` to leave the swarm now instead of timing out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AnnounceEvent>,
    /// Bytes this peer has served of this asset since it started: a running total, of
    /// which the tracker adds each increase to the swarm's figures, at most what a 10 Gbit/s
    /// link serves between two announces (a lower value than last time means the peer
    /// restarted, and counts in full within that cap).
    #[serde(default)]
    pub uploaded: u64,
    /// Bytes this peer has downloaded of this asset from the network since it started.
    #[serde(default)]
    pub downloaded: u64,
    /// Ids of peers of this swarm that this peer could not connect to. The tracker tries to
    /// connect to those that have not announced recently, and drops them if it cannot.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
    /// Ids of peers of this swarm that sent this peer a chunk failing its hash or broke the
    /// protocol. Once two different holders (tokens, or addresses in open mode) report one,
    /// the tracker stops handing it out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt: Vec<String>,
}

/// The `event` of an announce: a JSON string. Only `"stopped"` changes what the tracker
/// does; any other word is accepted and ignored, as it always was, so a client that sends
/// an event this tracker does not know (say, a newer one's) is not refused.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceEvent {
    /// Leave the swarm now instead of timing out.
    Stopped,
    /// Any other word.
    #[serde(other)]
    Other,
}

/// A peer as the tracker hands it out. `S` is the string type: owned where an answer is
/// read, borrowed from the swarm where the tracker writes one (no copy per peer listed).
/// What a partial peer holds is not listed: peers tell each other over the wire (a Have on
/// connect, then updates), which keeps an answer a few KiB however big the asset.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo<S = String> {
    /// The peer's id.
    pub peer_id: S,
    /// Where to connect, `ip:port`.
    pub addr: S,
    /// The peer holds every chunk.
    pub complete: bool,
    /// The peer is an origin.
    pub origin: bool,
    /// Seconds since the peer last announced.
    pub last_seen_secs: u64,
}

/// Answer to an announce (`S` as in [`PeerInfo`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AnnounceResponse<S = String> {
    /// Announce again within this many seconds to stay in the swarm (the heartbeat).
    pub interval_secs: u64,
    /// When to announce next, in milliseconds: the tracker's cadence for this peer, from
    /// its phase (joining, downloading, seeding) and the swarm's size (absent from trackers
    /// older than it, whose clients announced every 500 ms while downloading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_announce_ms: Option<u64>,
    /// Chunk count of the asset.
    pub chunk_count: u32,
    /// Peers to use (never the announcing peer, never an origin).
    pub peers: Vec<PeerInfo<S>>,
    /// The swarm's origins, to use as a fallback.
    pub origins: Vec<PeerInfo<S>>,
    /// The asset's origin URLs from its catalog entry (web seeds: any HTTP(S) server that
    /// answers `Range` requests), used like `origins` (absent when there are none, and
    /// from trackers older than them). See [`AnnounceResponse::web_origins`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub origin_urls: Vec<S>,
    /// The address the tracker recorded for this peer, when it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub your_addr: Option<String>,
    /// A random id the tracker picks at each start. A peer that sees it change knows the
    /// tracker restarted and forgot every swarm (absent from trackers older than it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<S>,
    /// "Warming up, retry in N s": set when the tracker knows no source for the asset
    /// because it restarted less than a heartbeat period ago. Every live source announces
    /// again within N seconds, so a client waits and announces again instead of failing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warming_up_secs: Option<u64>,
    /// For a serving peer still downloading: the chunks to take from the origin, as runs
    /// `[start, end)` of chunk indexes in increasing order (`[[0, 64], [128, 130]]`: chunks
    /// 0 to 63, 128 and 129). Other leechers were given disjoint shares; the rest comes
    /// from peers. See [`AnnounceResponse::share`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin_share: Option<Vec<[u32; 2]>>,
    /// With auth on: a ticket (hex) for this peer and asset, signed by the tracker, to
    /// present in the `Hello` to other peers. Each announce brings a fresh one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// With auth on: the tracker's public keys (as `GET /keys` lists them), so that a
    /// client serving while it downloads checks the tickets presented to it, and learns a
    /// rotated key from its next announce.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
}

impl<S> AnnounceResponse<S> {
    /// When the tracker asked to be announced to next (`next_announce_ms`), if it did.
    pub fn next_announce(&self) -> Option<Duration> {
        self.next_announce_ms.map(Duration::from_millis)
    }

    /// The origin URLs a client may fetch from: those that pass [`crate::origin_url::check`],
    /// at most [`crate::origin_url::MAX_ORIGIN_URLS`] (a hostile tracker could list
    /// anything).
    pub fn web_origins(&self) -> impl Iterator<Item = &str>
    where
        S: AsRef<str>,
    {
        self.origin_urls
            .iter()
            .map(AsRef::as_ref)
            .filter(|url| crate::origin_url::check(url).is_ok())
            .take(crate::origin_url::MAX_ORIGIN_URLS)
    }

    /// The origin share as a set of `count` chunks; `None` when there is none, or when its
    /// runs are not increasing, empty, or past `count` (a hostile or broken tracker: the
    /// client then plans as if no share was given). Costs at most `count` steps whatever
    /// the answer says.
    pub fn share(&self, count: u32) -> Option<Bitfield> {
        let runs = self.origin_share.as_ref()?;
        let mut share = Bitfield::new(count);
        let mut next = 0;
        for &[start, end] in runs {
            if start < next || end <= start || end > count {
                return None;
            }
            (start..end).for_each(|i| share.set(i));
            next = end;
        }
        Some(share)
    }
}

/// Most entries in one batch announce (`POST /announce`). An entry costs the tracker about
/// 2 µs (a swarm update and no answer to build), so a full batch holds one HTTP worker for
/// under 10 ms, and a store of 10 000 assets is three requests a beat.
pub const BATCH_MAX_ENTRIES: usize = 4096;
/// Largest body of one batch announce. A complete entry is about 110 bytes, so a full batch
/// of them is under half of it; an entry of a partial asset carries its `have` in hex, up
/// to 256 KiB for 2^20 chunks, so the biggest four still fit one request. Clients split a
/// store into requests under both bounds.
pub const BATCH_MAX_BODY: usize = 1 << 20;

/// Body of `POST /announce`: one peer announcing many assets at once, the heartbeat of a
/// store (a `peer_server`), so that a host holding thousands of assets costs the tracker a
/// few requests per beat instead of one per asset. Each entry is applied as a single
/// announce of that asset would be; the answer lists the entries refused.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchAnnounceRequest {
    /// As in [`AnnounceRequest::peer_id`].
    pub peer_id: String,
    /// As in [`AnnounceRequest::addr`], for every entry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// The peer is the origin of every asset announced.
    #[serde(default)]
    pub origin: bool,
    /// One entry per asset.
    pub assets: Vec<BatchEntry>,
}

/// One asset of a [`BatchAnnounceRequest`]: the fields of [`AnnounceRequest`] that a
/// seeder sends (no reports: a store's heartbeat downloads nothing).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchEntry {
    /// The asset id, 64 hex digits.
    pub id: String,
    /// As in [`AnnounceRequest::complete`].
    #[serde(default)]
    pub complete: bool,
    /// As in [`AnnounceRequest::have`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub have: Option<String>,
    /// As in [`AnnounceRequest::uploaded`].
    #[serde(default)]
    pub uploaded: u64,
    /// As in [`AnnounceRequest::event`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<AnnounceEvent>,
}

/// Answer to `POST /announce`: what a seeder needs (no peers lists, no tickets: a store
/// serves, it does not download), and the entries that were refused.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchAnnounceResponse {
    /// As in [`AnnounceResponse::interval_secs`].
    pub interval_secs: u64,
    /// As in [`AnnounceResponse::instance`].
    pub instance: String,
    /// As in [`AnnounceResponse::your_addr`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub your_addr: Option<String>,
    /// As in [`AnnounceResponse::keys`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Entries applied to their swarm.
    pub accepted: u32,
    /// Entries refused, in request order; the others were accepted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<BatchRefusal>,
}

/// One refused entry of a batch announce: what a single announce of it would have been
/// answered.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchRefusal {
    /// The entry's position in `assets`, from 0.
    pub index: u32,
    /// The entry's `id`, as sent (cut to 64 characters).
    pub id: String,
    /// The HTTP status a single announce would have got: 400, 403 or 404.
    pub status: u16,
    /// Why, as in [`ErrorBody::error`].
    pub error: String,
}

/// `GET /keys`: the public keys peers verify tickets with, current first (empty in open
/// mode, where peers need no ticket).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeysResponse {
    /// Ed25519 public keys, hex.
    pub keys: Vec<String>,
}

/// What `GET /stats` reports of one swarm, or summed over every swarm. The byte totals
/// count from the tracker's start and never drop when peers leave: each announce adds what
/// the peer's `uploaded` counter grew by since its previous one.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Figures {
    /// Live serving peers, origins included.
    pub peers: usize,
    /// Live peers holding every chunk, origins included.
    pub seeders: usize,
    /// Live origins.
    pub origins: usize,
    /// Bytes served, by peers and origins together.
    pub uploaded: u64,
    /// Bytes served by peers that are not origins.
    pub peer_uploaded: u64,
    /// Bytes served by origins.
    pub origin_uploaded: u64,
    /// `peer_uploaded / uploaded`: the share of the bytes that peers served. `null` until
    /// something was served.
    pub p2p_ratio: Option<f64>,
    /// Announces received (for the asset, or by the tracker).
    pub announces: u64,
}

impl Figures {
    /// The figures from the counts; the total and the ratio follow from the bytes.
    pub fn new(
        (peers, seeders, origins): (usize, usize, usize),
        peer_uploaded: u64,
        origin_uploaded: u64,
        announces: u64,
    ) -> Figures {
        let uploaded = peer_uploaded.saturating_add(origin_uploaded);
        Figures {
            peers,
            seeders,
            origins,
            uploaded,
            peer_uploaded,
            origin_uploaded,
            p2p_ratio: (uploaded > 0).then(|| peer_uploaded as f64 / uploaded as f64),
            announces,
        }
    }
}

/// One swarm in `GET /stats`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SwarmStats {
    /// The asset id.
    pub id: String,
    /// Asset name.
    pub name: String,
    /// The swarm's figures.
    #[serde(flatten)]
    pub figures: Figures,
}

/// `GET /stats`: the figures of every swarm, and their sums.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Stats {
    /// Assets in the catalog.
    pub assets: usize,
    /// Every swarm's figures summed (announces: all the tracker received, each entry of a
    /// batch counting as one).
    #[serde(flatten)]
    pub totals: Figures,
    /// Batch announce requests (`POST /announce`) received.
    #[serde(default)]
    pub announce_batches: u64,
    /// Seconds since the tracker started.
    pub uptime_secs: u64,
    /// One entry per swarm announced to since the tracker started, by asset id.
    pub swarms: Vec<SwarmStats>,
}

/// The body of every error answer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// What went wrong and, where useful, what to do.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announce_event_is_a_bare_string_on_the_wire_and_unknown_words_pass() {
        let leave = AnnounceRequest {
            peer_id: "p".into(),
            event: Some(AnnounceEvent::Stopped),
            ..AnnounceRequest::default()
        };
        let text = serde_json::to_string(&leave).unwrap();
        assert!(text.contains(r#""event":"stopped""#), "{text}");
        assert_eq!(
            serde_json::from_str::<AnnounceRequest>(&text).unwrap(),
            leave
        );
        let event = |json: &str| serde_json::from_str::<AnnounceRequest>(json).map(|r| r.event);
        assert_eq!(event(r#"{"peer_id":"p"}"#).unwrap(), None);
        assert_eq!(event(r#"{"peer_id":"p","event":null}"#).unwrap(), None);
        for word in ["started", "completed", "Stopped", ""] {
            let json = format!(r#"{{"peer_id":"p","event":"{word}"}}"#);
            assert_eq!(event(&json).unwrap(), Some(AnnounceEvent::Other), "{word}");
        }
        assert!(event(r#"{"peer_id":"p","event":5}"#).is_err());
        let without = serde_json::to_string(&AnnounceRequest::default()).unwrap();
        assert!(!without.contains("event"), "{without}");
    }

    #[test]
    fn an_origin_share_is_read_from_increasing_runs_and_refused_otherwise() {
        let answer = |runs: Vec<[u32; 2]>| AnnounceResponse::<String> {
            interval_secs: 20,
            next_announce_ms: Some(1500),
            chunk_count: 10,
            peers: Vec::new(),
            origins: Vec::new(),
            origin_urls: Vec::new(),
            your_addr: None,
            instance: None,
            warming_up_secs: None,
            origin_share: Some(runs),
            ticket: None,
            keys: Vec::new(),
        };
        let share = answer(vec![[0, 2], [5, 6], [9, 10]]).share(10).unwrap();
        assert_eq!(share.ones().collect::<Vec<_>>(), [0, 1, 5, 9]);
        assert_eq!(answer(vec![]).share(10).unwrap().count(), 0);
        for bad in [
            vec![[0, 11]],
            vec![[3, 3]],
            vec![[4, 6], [5, 7]],
            vec![[5, 6], [0, 1]],
        ] {
            assert_eq!(answer(bad.clone()).share(10), None, "{bad:?}");
        }
        let text = serde_json::to_string(&answer(vec![[0, 2]])).unwrap();
        assert!(text.contains(r#""origin_share":[[0,2]]"#), "{text}");
        let back: AnnounceResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(back.next_announce(), Some(Duration::from_millis(1500)));
        let mut none = answer(vec![]);
        none.origin_share = None;
        assert_eq!(none.share(10), None);
    }
}
