//! A source's identity and health: where it listens, what it holds as far as this client
//! knows, what it delivered and how fast, its retries (one [`Backoff`]), its last failure
//! and why it was dropped; and [`End`], the typed reason a connection to it ended. Pure:
//! time is an argument.
//!
//! Failures are transient until proven otherwise: a source that timed out, refused, reset
//! or stalled is paused and tried again, for as long as the download lasts (the stall
//! timeout bounds that); only a source that lied is dropped. On capped links in a crowd of
//! 32 every connection of one client once "timed out after 5s" together, and dropping each
//! source after that one failure ended the download with every source still healthy.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::api::PeerInfo;
use crate::backoff::Backoff;
use crate::bitfield::Bitfield;

use super::summary::SourceSummary;

/// A refusing or failing source is tried again after about 250 ms, 500 ms, 1 s … (each
/// pause jittered into the upper half, so clients refused together do not come back
/// together).
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest pause of an origin: it is the last resort, so it is tried at least every
/// 4 s (a connect attempt to it costs one SYN).
const ORIGIN_MAX_BACKOFF: Duration = Duration::from_secs(4);
/// The longest pause of a peer that keeps failing: pushed back further than an origin,
/// since others can serve instead, but back within 16 s, a fraction of a download of a
/// crowd (25 s at N = 32 on 50 Mbit/s links) and of the default 60 s stall timeout.
const PEER_MAX_BACKOFF: Duration = Duration::from_secs(16);
/// The time per byte assumed for a source not yet measured: 100 MB/s, 2.6 ms a 256 KiB
/// chunk.
const UNMEASURED_SECS_PER_BYTE: f64 = 1e-8;

/// Why a connection ended: the worker says, the plan branches on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The scheduler has no more work for it.
    Finished,
    /// The source has no free connection slot now; worth trying again later.
    Busy(String),
    /// The source could not be connected to at all.
    Unreachable(String),
    /// The network or the source failed (reset, stalled, closed).
    Failed(String),
    /// The source sent bad data: never use it again in this download.
    Lied(String),
    /// The source cannot serve as an origin at all (an origin URL whose server ignores
    /// ranges, encodes the content, or holds another file): dropped, not reported.
    Unfit(String),
    /// Writing to the local store failed: no source can help, so the download stops.
    Local(String),
}

/// What a source holds, as far as this client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holdings {
    /// Every chunk: an origin, until its `Have` says otherwise. (A peer the tracker calls
    /// complete is [`Holdings::Unknown`] like any other: anyone can announce `complete`.)
    All,
    /// These chunks, from its `Have` and the `Gained` frames since.
    Known(Bitfield),
    /// Not known until its `Have` arrives: every peer as the tracker names it (answers carry
    /// no bitfields, and a peer's `complete` is its own claim). Counts as holding nothing,
    /// but is connected to like any peer, which is how its holdings become known.
    Unknown,
}

/// A place chunks can come from.
#[derive(Debug)]
pub(crate) struct Source {
    /// The tracker's id of the peer, for complaints.
    pub(crate) peer_id: String,
    /// Where it listens, `ip:port`.
    pub(crate) addr: String,
    /// Whether it is an origin.
    pub(crate) origin: bool,
    /// Whether it is an origin URL (a web seed: `addr` is the URL), fetched over HTTP(S)
    /// rather than the peer wire.
    pub(crate) web: bool,
    /// What the source holds, as far as we know.
    pub(crate) have: Holdings,
    /// Whether the tracker listed it as complete: a hint for whom to connect to first, never
    /// a holding (300 fake "complete" peers from one address once kept a client's origin
    /// idle for 17-54 s).
    pub(crate) said_complete: bool,
    /// Chunks this source said it does not hold or would not send now.
    pub(crate) refused: HashSet<u32>,
    /// Why it was given up, if it was.
    pub(crate) dropped: Option<String>,
    /// Verified bytes received from it.
    pub(crate) bytes: u64,
    /// Verified chunks received from it.
    pub(crate) chunks: u32,
    /// `bytes` when the plan last judged the peer slots, to measure it over a period.
    pub(crate) mark: u64,
    /// Failed or refused connections since the source last delivered a chunk, and the
    /// pause before the next attempt.
    backoff: Backoff,
    /// Connections tried (each connect counts, failed or not).
    pub(crate) tries: u32,
    /// Connections that ended in a failure or refusal, in all.
    pub(crate) failed: u32,
    /// What went wrong last, for the summary and the stall message.
    pub(crate) last_error: Option<String>,
    /// Connections to open again once `retry_at` has passed.
    pub(crate) reconnects: u32,
    /// When to try it again, while it is paused.
    pub(crate) retry_at: Option<Instant>,
    /// Measured seconds per byte of chunk service (moving average), once it delivered.
    pub(crate) secs_per_byte: Option<f64>,
}

impl Source {
    /// A source nothing is known about yet but what it holds.
    pub(crate) fn new(peer_id: &str, addr: &str, origin: bool, have: Holdings) -> Source {
        Source {
            peer_id: peer_id.to_string(),
            addr: addr.to_string(),
            origin,
            web: false,
            have,
            said_complete: false,
            refused: HashSet::new(),
            dropped: None,
            bytes: 0,
            chunks: 0,
            mark: 0,
            backoff: Backoff::new(
                FIRST_BACKOFF,
                if origin {
                    ORIGIN_MAX_BACKOFF
                } else {
                    PEER_MAX_BACKOFF
                },
            ),
            tries: 0,
            failed: 0,
            last_error: None,
            reconnects: 0,
            retry_at: None,
            secs_per_byte: None,
        }
    }

    /// A source as the tracker describes it: an origin holds everything (only the origin
    /// right may announce one); any peer, complete or not by its own word, holds what its
    /// `Have` will say.
    pub(crate) fn from_info(info: &PeerInfo) -> Source {
        let have = if info.origin {
            Holdings::All
        } else {
            Holdings::Unknown
        };
        Source {
            said_complete: info.complete,
            ..Source::new(&info.peer_id, &info.addr, info.origin, have)
        }
    }

    /// An origin URL from the tracker's answer: an origin, holding every chunk. Its id in
    /// complaints is the URL itself, which the tracker knows from the catalog.
    pub(crate) fn web(url: &str) -> Source {
        Source {
            web: true,
            ..Source::new(url, url, true, Holdings::All)
        }
    }

    /// Whether the source holds chunk `index` and has not refused it.
    pub(crate) fn holds(&self, index: u32) -> bool {
        self.has_bit(index) && !self.refused.contains(&index)
    }

    /// Whether its have list (or its being complete) says it holds `index`.
    pub(crate) fn has_bit(&self, index: u32) -> bool {
        match &self.have {
            Holdings::All => true,
            Holdings::Known(have) => have.get(index),
            Holdings::Unknown => false,
        }
    }

    /// Adds chunk `index` (of `count`) to what it holds, as a `Gained` said, and forgets an
    /// earlier refusal of it: a source that gained a chunk it did not hold now sends it.
    /// Returns whether [`Source::holds`] changed for it.
    pub(crate) fn gain(&mut self, index: u32, count: u32) -> bool {
        let before = self.holds(index);
        match &mut self.have {
            Holdings::All => {}
            Holdings::Known(have) => have.set(index),
            Holdings::Unknown => {
                let mut have = Bitfield::new(count);
                have.set(index);
                self.have = Holdings::Known(have);
            }
        }
        self.refused.remove(&index);
        self.holds(index) != before
    }

    /// "origin URL", "origin" or "peer", for messages.
    pub(crate) fn kind(&self) -> &'static str {
        match (self.web, self.origin) {
            (true, _) => "origin URL",
            (false, true) => "origin",
            (false, false) => "peer",
        }
    }

    /// Takes in how long one chunk of `len` bytes took to serve (moving average: a
    /// quarter weight for the newest sample, so one slow chunk does not condemn a source).
    pub(crate) fn record_service(&mut self, service: Duration, len: u64) {
        let sample = service.as_secs_f64() / len.max(1) as f64;
        self.secs_per_byte = Some(match self.secs_per_byte {
            Some(avg) => 0.75 * avg + 0.25 * sample,
            None => sample,
        });
    }

    /// Counts a verified chunk of `len` bytes; a delivering source is healthy again.
    pub(crate) fn credit(&mut self, len: u64) {
        self.bytes += len;
        self.chunks += 1;
        self.backoff.reset();
    }

    /// Failed or refused connections since the source last delivered.
    pub(crate) fn failures(&self) -> u32 {
        self.backoff.failures()
    }

    /// Caps its pauses at `max` (a fraction of the stall timeout, so that a paused source
    /// is tried again before the download gives up on it), never above its own cap.
    pub(crate) fn cap_backoff(&mut self, max: Duration) {
        let own = if self.origin {
            ORIGIN_MAX_BACKOFF
        } else {
            PEER_MAX_BACKOFF
        };
        self.backoff.set_max(own.min(max));
    }

    /// Pauses the source after a failure saying `error`; returns whether it is the first
    /// in a row. Each failure in a row doubles the pause (to its cap).
    pub(crate) fn retry_later(&mut self, error: &str, now: Instant) -> bool {
        let pause = self.backoff.next_delay();
        self.failed += 1;
        self.last_error = Some(error.to_string());
        self.reconnects += 1;
        self.retry_at = Some(now + pause);
        self.backoff.failures() == 1
    }

    /// Gives the source up; returns whether it was not given up already.
    pub(crate) fn give_up(&mut self, error: String) -> bool {
        if self.dropped.is_some() {
            return false;
        }
        self.last_error = Some(error.clone());
        self.dropped = Some(error);
        self.reconnects = 0;
        self.retry_at = None;
        true
    }

    /// Its measured time per chunk of `chunk_size` bytes (an assumed one before it has
    /// delivered).
    pub(crate) fn secs_per_chunk(&self, chunk_size: u32) -> f64 {
        self.secs_per_byte.unwrap_or(UNMEASURED_SECS_PER_BYTE) * chunk_size as f64
    }

    /// What the summary says of it.
    pub(crate) fn summary(&self) -> SourceSummary {
        SourceSummary {
            addr: self.addr.clone(),
            origin: self.origin,
            bytes: self.bytes,
            chunks: self.chunks,
            tries: self.tries,
            failures: self.failed,
            last_error: self.last_error.clone(),
            dropped: self.dropped.clone(),
        }
    }

    /// One line for an error message: where it is, how often it was tried, and how it
    /// last failed (or why it was dropped).
    pub(crate) fn describe(&self) -> String {
        let state = match (&self.dropped, &self.last_error) {
            (Some(why), _) => format!("dropped: {why}"),
            (None, Some(last)) => format!("last failure: {last}"),
            (None, None) if self.tries == 0 => "never connected".to_string(),
            (None, None) => "no failure".to_string(),
        };
        format!(
            "{} {}: {} connection{} tried, {} failed, {} chunk{} delivered, {state}",
            self.kind(),
            self.addr,
            self.tries,
            if self.tries == 1 { "" } else { "s" },
            self.failed,
            self.chunks,
            if self.chunks == 1 { "" } else { "s" },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_resets_the_failures() {
        let mut s = Source::new("p", "127.0.0.1:1", false, Holdings::All);
        let now = Instant::now();
        assert!(s.retry_later("reset", now));
        assert!(!s.retry_later("reset", now));
        assert_eq!(s.failures(), 2);
        assert_eq!(s.reconnects, 2);
        assert!(s.retry_at.unwrap() <= now + PEER_MAX_BACKOFF);
        s.credit(10);
        assert_eq!(s.failures(), 0);
        assert_eq!((s.bytes, s.chunks), (10, 1));
        assert_eq!(s.failed, 2, "the total stays for the summary");
    }

    /// The pause after each failure in a row of a source that keeps failing.
    fn pauses(s: &mut Source, n: usize) -> Vec<Duration> {
        let now = Instant::now();
        (0..n)
            .map(|_| {
                s.retry_later("connect timed out after 2s", now);
                s.retry_at.unwrap() - now
            })
            .collect()
    }

    #[test]
    fn a_failing_peer_is_pushed_back_further_than_an_origin_and_never_dropped() {
        let mut peer = Source::new("p", "a", false, Holdings::Unknown);
        let peer_pauses = pauses(&mut peer, 12);
        // 250 ms doubling, jittered into the upper half of each nominal pause.
        for (n, pause) in peer_pauses.iter().enumerate() {
            let nominal = (FIRST_BACKOFF * (1 << n.min(10))).min(PEER_MAX_BACKOFF);
            assert!(
                *pause >= nominal / 2 && *pause <= nominal,
                "pause {n}: {pause:?} vs {nominal:?}"
            );
        }
        assert!(peer_pauses[11] > PEER_MAX_BACKOFF / 2, "{peer_pauses:?}");
        assert!(peer.dropped.is_none() && peer.failed == 12);
        assert_eq!(
            peer.last_error.as_deref(),
            Some("connect timed out after 2s")
        );
        let mut origin = Source::new("o", "b", true, Holdings::All);
        assert!(
            pauses(&mut origin, 12)
                .iter()
                .all(|p| *p <= ORIGIN_MAX_BACKOFF)
        );
    }

    #[test]
    fn pauses_are_capped_below_the_stall_timeout() {
        let mut peer = Source::new("p", "a", false, Holdings::Unknown);
        peer.cap_backoff(Duration::from_secs(1));
        assert!(
            pauses(&mut peer, 10)
                .iter()
                .all(|p| *p <= Duration::from_secs(1))
        );
        // A cap above its own changes nothing.
        let mut origin = Source::new("o", "b", true, Holdings::All);
        origin.cap_backoff(Duration::from_secs(600));
        assert!(
            pauses(&mut origin, 10)
                .iter()
                .all(|p| *p <= ORIGIN_MAX_BACKOFF)
        );
    }

    #[test]
    fn a_description_names_the_source_its_tries_and_its_last_failure() {
        let mut s = Source::new("p", "10.0.0.1:7000", false, Holdings::Unknown);
        assert_eq!(
            s.describe(),
            "peer 10.0.0.1:7000: 0 connections tried, 0 failed, 0 chunks delivered, never connected"
        );
        s.tries = 3;
        s.retry_later("unreachable timed out after 2s", Instant::now());
        assert_eq!(
            s.describe(),
            "peer 10.0.0.1:7000: 3 connections tried, 1 failed, 0 chunks delivered, last failure: unreachable timed out after 2s"
        );
        s.give_up("sent chunk 1 with the wrong SHA-256".into());
        assert!(
            s.describe()
                .ends_with("dropped: sent chunk 1 with the wrong SHA-256")
        );
    }

    #[test]
    fn the_measured_rate_is_a_moving_average() {
        let mut s = Source::new("p", "a", false, Holdings::All);
        assert_eq!(s.secs_per_chunk(100), UNMEASURED_SECS_PER_BYTE * 100.0);
        s.record_service(Duration::from_secs(4), 4);
        assert_eq!(s.secs_per_byte, Some(1.0));
        s.record_service(Duration::from_secs(0), 4);
        assert_eq!(s.secs_per_byte, Some(0.75));
    }

    #[test]
    fn a_refused_chunk_is_no_longer_held_and_giving_up_is_once() {
        let mut s = Source::new("p", "a", false, Holdings::Known(Bitfield::full(4)));
        assert!(s.holds(2));
        s.refused.insert(2);
        assert!(!s.holds(2) && s.has_bit(2));
        assert!(s.give_up("lied".into()));
        assert!(!s.give_up("again".into()));
        assert_eq!(s.dropped.as_deref(), Some("lied"));
    }

    #[test]
    fn the_tracker_names_every_peer_with_unknown_holdings_complete_or_not() {
        // Built from JSON, as an answer is read: whatever else the tracker sends, only
        // `complete` and `origin` count.
        let info = |complete: bool, origin: bool| -> PeerInfo {
            serde_json::from_value(serde_json::json!({
                "peer_id": "p",
                "addr": "10.0.0.1:7000",
                "complete": complete,
                "origin": origin,
                "last_seen_secs": 0,
            }))
            .unwrap()
        };
        let complete = Source::from_info(&info(true, false));
        assert_eq!(complete.have, Holdings::Unknown, "complete is a claim");
        assert!(complete.said_complete && !complete.has_bit(0));
        assert_eq!(Source::from_info(&info(false, true)).have, Holdings::All);
        let partial = Source::from_info(&info(false, false));
        assert_eq!(partial.have, Holdings::Unknown);
        assert!(!partial.has_bit(0), "unknown holds nothing until its Have");
    }

    #[test]
    fn a_gain_adds_a_chunk_and_lifts_its_refusal() {
        let mut s = Source::new("p", "a", false, Holdings::Unknown);
        assert!(s.gain(2, 4));
        assert!(!s.gain(2, 4), "known already");
        assert_eq!(
            s.have,
            Holdings::Known(Bitfield::from_bytes(4, &[0x20]).unwrap())
        );
        s.refused.insert(3);
        assert!(s.gain(3, 4));
        assert!(s.holds(3));
        let mut all = Source::new("p", "a", false, Holdings::All);
        assert!(!all.gain(1, 4));
        all.refused.insert(1);
        assert!(all.gain(1, 4), "a refusal lifted");
    }
}
