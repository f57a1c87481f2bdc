//! How many requests one connection keeps in flight: about its source's measured rate times
//! max(2 × its round trip, [`FLOOR`]) in bytes, the way libtorrent's `request_queue_time`
//! keeps a number of seconds of each peer's download rate requested. A fixed depth is
//! stop-and-wait once the round trip is long: 4 chunks of 256 KiB per 50 ms is 20 MiB/s a
//! connection, whatever the link. The depth starts at the connection's minimum (today's
//! fixed depths), grows by at most double per delivered round (slow start: the rate a round
//! measures is bounded by the depth it ran at, so the depth can only earn its next
//! doubling), and never exceeds [`MAX_DEPTH`].
//!
//! Measured per connection (that is, per source):
//! - the rate: bytes delivered over a round (as many deliveries as the depth) over the time
//!   requests were outstanding in it (idle time is not counted); its recent peak sizes the
//!   depth (a round bounded by its depth measures less than the link, the peak forgets
//!   slowly);
//! - the round trip, smoothed as TCP does (an eighth weight, RFC 6298), from two clean
//!   measurements only: the have-list exchange of the handshake (timed from the `Hello`,
//!   which its have request goes out with: one trip and the server's ticket check) and of
//!   every keepalive (a request and a small answer on an idle connection, timed by the
//!   worker), and every
//!   chunk asked of an idle connection (from the request sent to the chunk whole: the trip
//!   and the chunk's own transfer). A chunk asked behind others waits for them at the
//!   source, and its latency grows with the very depth it would size: estimating that
//!   wait from the rate (exact when the source was idle, a lower bound otherwise) made the
//!   depth feed itself on a loaded machine (40-100 ms "round trips" on loopback, depth 32,
//!   a 256 MiB download 2-5 times slower). The cost: a queue that builds while a
//!   connection never runs dry is seen only at its next idle moment. The trip includes the
//!   time this host's requests wait behind its own uploads ([`super::uplink`] watches it).
//!
//! Pure: no clock, time is an argument.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Requests in flight per connection at most: half the requests a server reads ahead per
/// session (64, `server::session`), so that a cancel or a have request sent behind a full
/// queue is still read at once. At 256 KiB chunks that is 8 MiB per connection, 32 MiB over
/// the default four: a 1 Gbit/s link with a 100 ms round trip on one connection (2 × RTT ×
/// 125 MB/s is 25 MB), or 250 ms over four. The client keeps nothing per request but its
/// index, so memory does not bound it further.
pub(crate) const MAX_DEPTH: usize = 32;
/// The least time of rate kept requested, for a round trip too short to measure (loopback:
/// tens of microseconds): it covers a loaded server's wake-up. Kept short, because on
/// loopback a deeper queue only costs (keeping 50 ms of rate requested made a 1 GiB
/// loopback download 6-10% slower): at 1 GB/s a connection, 1 ms is 4 chunks of 256 KiB,
/// the origin's depth of before.
pub(crate) const FLOOR: Duration = Duration::from_millis(1);
/// A round lasts at least this long (of time with requests outstanding), and at least a
/// round trip: the scheduler times deliveries when it handles them, and on a loaded
/// machine it handles a burst of them at once, which over a short round read as rates of
/// 2-11 GB/s on loopback.
const MIN_ROUND: Duration = Duration::from_millis(5);
/// Weight of a new round-trip sample (TCP's alpha, RFC 6298).
const RTT_GAIN: f64 = 0.125;
/// Weight of a new round's rate: four rounds to follow a change, one slow round does not
/// halve the depth.
const RATE_GAIN: f64 = 0.25;
/// The peak rate forgets this much per round, so that a burst (chunks already on their way
/// arriving at once) does not stand for ever.
const PEAK_DECAY: f64 = 0.9;

/// One request sent and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Sent {
    index: u32,
    at: Instant,
    len: u64,
    /// Bytes requested before it and not yet answered when it was sent.
    ahead: u64,
}

/// The depth of one connection and what it is measured from.
#[derive(Debug)]
pub(crate) struct Depth {
    min: usize,
    depth: usize,
    srtt: Option<f64>,
    rate: Option<f64>,
    peak: f64,
    sent: VecDeque<Sent>,
    /// Since when requests have been outstanding (`None`: idle).
    busy_since: Option<Instant>,
    /// Time with requests outstanding in this round, before `busy_since`.
    round_busy: Duration,
    round_bytes: u64,
    /// Deliveries in this round so far, and how many more it needs at least.
    round_count: usize,
    round_left: usize,
    /// Whether the queue was full (at the depth) during the round: only then did the depth,
    /// not a lack of work, bound what the round measured.
    round_full: bool,
    recent_rtt: Option<Duration>,
}

impl Depth {
    /// A connection that starts at `min` requests in flight (at least 1).
    pub(crate) fn new(min: usize) -> Depth {
        let min = min.clamp(1, MAX_DEPTH);
        Depth {
            min,
            depth: min,
            srtt: None,
            rate: None,
            peak: 0.0,
            sent: VecDeque::new(),
            busy_since: None,
            round_busy: Duration::ZERO,
            round_bytes: 0,
            round_count: 0,
            round_left: min,
            round_full: false,
            recent_rtt: None,
        }
    }

    /// Requests this connection may have in flight now.
    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// The smoothed round trip, once measured.
    pub(crate) fn srtt(&self) -> Option<Duration> {
        self.srtt.map(Duration::from_secs_f64)
    }

    /// The smoothed rate in bytes a second, once a round was measured.
    pub(crate) fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// The latest round-trip sample, unsmoothed (see the module docs).
    pub(crate) fn recent_rtt(&self) -> Option<Duration> {
        self.recent_rtt
    }

    /// A round trip measured outside the chunk pipeline (the have-list exchange).
    pub(crate) fn rtt_sample(&mut self, rtt: Duration) {
        self.recent_rtt = Some(rtt);
        let sample = rtt.as_secs_f64();
        self.srtt = Some(match self.srtt {
            Some(s) => s + RTT_GAIN * (sample - s),
            None => sample,
        });
    }

    /// A request for chunk `index` of `len` bytes went out.
    pub(crate) fn sent(&mut self, index: u32, len: u64, now: Instant) {
        if self.sent.is_empty() {
            // The connection was idle: the round's time counts from now.
            self.busy_since = Some(now);
        }
        let ahead = self.sent.iter().map(|s| s.len).sum();
        self.sent.push_back(Sent {
            index,
            at: now,
            len,
            ahead,
        });
        if self.sent.len() >= self.depth {
            self.round_full = true;
        }
    }

    /// The request for `index` was answered without the chunk, or given up: no sample.
    pub(crate) fn dropped(&mut self, index: u32, now: Instant) {
        self.sent.retain(|s| s.index != index);
        self.idle_if_empty(now);
    }

    /// Every request was given up (the connection closed).
    pub(crate) fn clear(&mut self, now: Instant) {
        self.sent.clear();
        self.idle_if_empty(now);
    }

    fn idle_if_empty(&mut self, now: Instant) {
        if self.sent.is_empty()
            && let Some(since) = self.busy_since.take()
        {
            self.round_busy += now.saturating_duration_since(since);
        }
    }

    /// Chunk `index` arrived whole.
    pub(crate) fn delivered(&mut self, index: u32, now: Instant) {
        let Some(at) = self.sent.iter().position(|s| s.index == index) else {
            return;
        };
        let Some(s) = self.sent.remove(at) else {
            return;
        };
        if s.ahead == 0 {
            // Asked of an idle connection: the trip and its own transfer, nothing else.
            let rtt = now.saturating_duration_since(s.at);
            self.rtt_sample(rtt);
        }
        self.round_bytes += s.len;
        self.round_count += 1;
        self.round_left = self.round_left.saturating_sub(1);
        self.idle_if_empty(now);
        if self.round_left == 0 && self.busy(now) >= MIN_ROUND.max(self.srtt().unwrap_or_default())
        {
            self.end_round(now);
        }
    }

    /// Time with requests outstanding in this round so far.
    fn busy(&self, now: Instant) -> Duration {
        self.round_busy
            + self
                .busy_since
                .map_or(Duration::ZERO, |since| now.saturating_duration_since(since))
    }

    fn end_round(&mut self, now: Instant) {
        let elapsed = self.busy(now).as_secs_f64();
        if let Some(since) = self.busy_since.as_mut() {
            *since = now;
        }
        if elapsed > 0.0 && self.round_bytes > 0 {
            let sample = self.round_bytes as f64 / elapsed;
            self.rate = Some(match self.rate {
                Some(r) => r + RATE_GAIN * (sample - r),
                None => sample,
            });
            self.peak = sample.max(self.peak * PEAK_DECAY);
            let mean_len = self.round_bytes as f64 / self.round_count as f64;
            self.depth = self.next_depth(mean_len);
        }
        self.round_busy = Duration::ZERO;
        self.round_bytes = 0;
        self.round_count = 0;
        self.round_left = self.depth;
        self.round_full = self.sent.len() >= self.depth;
    }

    /// Peak rate × max(2 × RTT, floor) in requests, at most double the depth after a full round
    /// (none after a round that lacked work), between the minimum and [`MAX_DEPTH`].
    fn next_depth(&self, mean_len: f64) -> usize {
        let (rate, true) = (self.peak, mean_len > 0.0) else {
            return self.depth;
        };
        let hold = (2.0 * self.srtt.unwrap_or(0.0)).max(FLOOR.as_secs_f64());
        let want = (rate * hold / mean_len).ceil();
        let want = if want.is_finite() {
            want.min(MAX_DEPTH as f64) as usize
        } else {
            MAX_DEPTH
        };
        let cap = if self.round_full {
            self.depth.saturating_mul(2)
        } else {
            self.depth
        };
        want.min(cap).clamp(self.min, MAX_DEPTH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u64 = 256 << 10;

    /// One connection to a source `rtt` away that sends `rate` bytes a second, its requests
    /// answered in order; the client asks for a new chunk whenever the depth allows.
    /// Returns each depth the estimator moved to, and the estimator.
    fn simulate(rtt: Duration, rate: f64, min: usize, deliveries: usize) -> (Vec<usize>, Depth) {
        let t0 = Instant::now();
        let mut d = Depth::new(min);
        d.rtt_sample(rtt);
        let mut now = t0;
        // (index, delivered at), in order.
        let mut flying: VecDeque<(u32, Instant)> = VecDeque::new();
        let mut server_free = t0;
        let mut next = 0u32;
        let mut depths = Vec::new();
        let per_chunk = Duration::from_secs_f64(CHUNK as f64 / rate);
        for _ in 0..deliveries {
            while flying.len() < d.depth() {
                d.sent(next, CHUNK, now);
                let arrives = now + rtt / 2;
                let start = arrives.max(server_free);
                server_free = start + per_chunk;
                flying.push_back((next, server_free + rtt / 2));
                next += 1;
            }
            let (index, at) = flying.pop_front().expect("requests in flight");
            now = at;
            let before = d.depth();
            d.delivered(index, now);
            if d.depth() != before || depths.is_empty() {
                depths.push(d.depth());
            }
        }
        (depths, d)
    }

    #[test]
    fn slow_start_doubles_per_round_up_to_the_bandwidth_delay_product() {
        // 1 Gbit/s, 50 ms: 2 × RTT × rate is 12.5 MB, 48 chunks: the bound of 32 holds.
        let (depths, d) = simulate(Duration::from_millis(50), 125e6, 4, 200);
        assert!(depths.len() <= 6, "{depths:?}");
        assert!(
            depths.windows(2).all(|w| w[0] < w[1] && w[1] <= 2 * w[0]),
            "{depths:?}"
        );
        assert_eq!(d.depth(), MAX_DEPTH);
        // 100 Mbit/s, 20 ms: 2 × 20 ms × 12.5 MB/s is 500 kB, 2 chunks; the minimum is 4.
        let (_, d) = simulate(Duration::from_millis(20), 12.5e6, 4, 200);
        assert_eq!(d.depth(), 4);
        // 400 Mbit/s, 20 ms: 2 MB, 8 chunks.
        let (_, d) = simulate(Duration::from_millis(20), 50e6, 4, 300);
        assert!((7..=10).contains(&d.depth()), "depth {}", d.depth());
    }

    #[test]
    fn loopback_keeps_the_minimum_depth() {
        // 1 GB/s at 50 µs: the floor of 1 ms is 4 chunks, what the origin kept before.
        let (_, d) = simulate(Duration::from_micros(50), 1e9, 4, 400);
        assert_eq!(d.depth(), 4);
        let (_, d) = simulate(Duration::from_micros(50), 1e9, 2, 400);
        assert!(d.depth() <= 4, "depth {}", d.depth());
    }

    #[test]
    fn a_round_short_of_work_does_not_grow_the_depth() {
        let t0 = Instant::now();
        let mut d = Depth::new(4);
        d.rtt_sample(Duration::from_millis(100));
        // One request at a time, answered 100 ms later: the queue never reaches the depth.
        for i in 0..40u32 {
            let at = t0 + Duration::from_millis(200 * u64::from(i));
            d.sent(i, CHUNK, at);
            d.delivered(i, at + Duration::from_millis(100));
        }
        assert_eq!(d.depth(), 4);
        // Idle time between the requests is not counted in the rate: 256 KiB per 100 ms.
        let rate = d.rate().expect("measured");
        assert!(
            (rate - CHUNK as f64 * 10.0).abs() < CHUNK as f64,
            "rate {rate}"
        );
    }

    #[test]
    fn the_depth_stays_within_its_bounds_and_a_dropped_request_is_no_sample() {
        let t0 = Instant::now();
        let mut d = Depth::new(0);
        assert_eq!(d.depth(), 1);
        let mut d2 = Depth::new(1000);
        assert_eq!(d2.depth(), MAX_DEPTH);
        d2.rtt_sample(Duration::from_secs(3600));
        for i in 0..200u32 {
            d2.sent(i, CHUNK, t0);
        }
        for i in 0..200u32 {
            d2.delivered(i, t0 + Duration::from_nanos(1));
        }
        assert_eq!(d2.depth(), MAX_DEPTH);
        d.sent(7, CHUNK, t0);
        d.dropped(7, t0);
        d.delivered(7, t0 + Duration::from_secs(1));
        assert_eq!(d.rate(), None);
        // Unknown chunks are ignored.
        d.delivered(99, t0);
        assert_eq!(d.depth(), 1);
    }

    #[test]
    fn the_round_trip_is_the_trip_not_the_queue_at_the_source() {
        // Bounded by the link (a queue at the source) or by the depth (none), the round trip
        // measured is the trip's.
        for (rtt, rate) in [
            (20, 50e6),
            (520, 50e6),
            (50, 125e6),
            (5, 12.5e6),
            (300, 2.5e6),
        ] {
            let rtt = Duration::from_millis(rtt);
            let (_, d) = simulate(rtt, rate, 4, 300);
            let recent = d.recent_rtt().expect("measured");
            // The trip and one chunk's transfer, within a fifth of the trip or an eighth of
            // the transfer, whichever is longer.
            let own = Duration::from_secs_f64(CHUNK as f64 / rate);
            let slack = (rtt / 5).max(own / 8);
            assert!(
                recent <= rtt + own + slack && recent + rtt / 2 >= rtt,
                "trip {rtt:?} at {rate} B/s: measured {recent:?}, depth {}",
                d.depth()
            );
        }
    }

    #[test]
    fn the_round_trip_is_smoothed() {
        let mut d = Depth::new(4);
        assert_eq!(d.srtt(), None);
        d.rtt_sample(Duration::from_millis(80));
        d.rtt_sample(Duration::from_millis(160));
        assert_eq!(d.srtt(), Some(Duration::from_millis(90)));
    }
}
