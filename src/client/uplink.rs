//! A host's own download first: the upload rate the server a `get` embeds may use, adapted
//! the way LEDBAT (RFC 6817) adapts a background transfer. When this host's uplink is full
//! of what it serves, its own requests and TCP acknowledgements queue behind those uploads,
//! and its own download's round trip grows by that queue. The controller watches that
//! round trip (the least of its connections', [`super::depth`]) against its base (the
//! least seen lately): a queueing delay above [`TARGET`] halves the upload rate (down to
//! [`FLOOR`]), below it the rate grows again additively, and once it is well above what is
//! being served the limit is lifted. With `--stream`, while the player's window is short
//! of chunks, serving drops to the floor at once (never serve at the cost of one's own
//! playback). Used only with `get --yield-uplink`: on issue 14's kernel-capped harness it
//! throttled the peers a crowd relies on to its floor and the origin sent 3.1 F instead of
//! 1.2 F at N = 32 (BENCHMARKS.md). Pure: time and measurements are arguments; the scheduler feeds it and sets
//! the embedded server's limiter. A pure seed (`peer_server`) has no own download and no
//! such controller.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Queueing delay tolerated on the own download's round trip: LEDBAT's 100 ms (the most
/// RFC 6817 allows). A loaded 2-core machine delays a loopback round trip by a few ms to a
/// few tens; a full tbf queue on a 20 Mbit/s uplink delays it by hundreds.
pub(crate) const TARGET: Duration = Duration::from_millis(100);
/// Uploads never drop below this (bytes a second): one 256 KiB chunk a second, a tenth of
/// a 20 Mbit/s uplink, so that a peer waiting on this host still gets its chunk well within
/// its 10 s chunk timeout and finds it slow (and asks elsewhere) instead of failed.
pub(crate) const FLOOR: u64 = 256 << 10;
/// Additive growth, in bytes a second per second when the delay is nil (scaled down as it
/// nears the target, as LEDBAT scales by its off-target): from the floor to 25 MiB/s in
/// 25 s, while a halving takes a tick: uploads come back slowly, the own download's
/// round trip recovers at once.
const GAIN: f64 = (1 << 20) as f64;
/// At most one halving per this long (or per round trip, if longer): the queue a halving
/// drains takes about a round trip to show in the next measurement.
const DECREASE_GAP: Duration = Duration::from_millis(200);
/// The limit is lifted once it exceeds what was served by this factor: uploads are then
/// bounded by demand, not by the limit.
const LIFT_FACTOR: f64 = 4.0;
/// The base round trip is the least of the last [`BASE_BUCKETS`] buckets of this length
/// each (LEDBAT keeps minutes; downloads here last seconds to minutes, and a route that
/// changes must be learnt within one).
const BASE_BUCKET: Duration = Duration::from_secs(10);
const BASE_BUCKETS: usize = 6;
/// Weight of a new upload-rate sample.
const SERVED_GAIN: f64 = 0.25;

/// What the scheduler measured since the last observation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Observation {
    /// The own download's current round trip (least over its connections), if any.
    pub(crate) rtt: Option<Duration>,
    /// Bytes the embedded server sent since the last observation.
    pub(crate) served: u64,
    /// Whether a stream's player is short of the chunks of its window.
    pub(crate) stream_short: bool,
}

/// The upload rate of a host that downloads too.
#[derive(Debug)]
pub(crate) struct UplinkControl {
    /// The limit in bytes a second (`None`: none of its own).
    rate: Option<f64>,
    /// Least round trip per bucket, newest last: (bucket start, least).
    base: VecDeque<(Instant, Duration)>,
    last: Instant,
    last_decrease: Option<Instant>,
    served_rate: f64,
}

impl UplinkControl {
    /// A controller that starts with no limit.
    pub(crate) fn new(now: Instant) -> UplinkControl {
        UplinkControl {
            rate: None,
            base: VecDeque::new(),
            last: now,
            last_decrease: None,
            served_rate: 0.0,
        }
    }

    /// The limit now, in bytes a second (`None`: none).
    pub(crate) fn rate(&self) -> Option<u64> {
        self.rate.map(|r| r as u64)
    }

    /// The base round trip (least seen lately).
    pub(crate) fn base(&self) -> Option<Duration> {
        self.base.iter().map(|b| b.1).min()
    }

    fn learn_base(&mut self, rtt: Duration, now: Instant) {
        match self.base.back_mut() {
            Some((start, least)) if now.saturating_duration_since(*start) < BASE_BUCKET => {
                *least = (*least).min(rtt);
            }
            _ => {
                self.base.push_back((now, rtt));
                if self.base.len() > BASE_BUCKETS {
                    self.base.pop_front();
                }
            }
        }
    }

    /// Takes in what was measured since the last call; returns the new limit.
    pub(crate) fn observe(&mut self, obs: Observation, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        if dt > 0.0 {
            let sample = obs.served as f64 / dt;
            self.served_rate += SERVED_GAIN * (sample - self.served_rate);
        }
        if obs.stream_short {
            // The Spotify rule: the player first, whatever the delay says.
            self.rate = Some(FLOOR as f64);
            return self.rate();
        }
        let Some(rtt) = obs.rtt else {
            return self.rate();
        };
        self.learn_base(rtt, now);
        let base = self.base().unwrap_or(rtt);
        let queueing = rtt.saturating_sub(base);
        if queueing > TARGET {
            let gap = DECREASE_GAP.max(rtt);
            if self
                .last_decrease
                .is_none_or(|at| now.saturating_duration_since(at) >= gap)
            {
                // Halve what is actually served, not a limit far above it.
                let current = self.rate.unwrap_or(f64::INFINITY).min(self.served_rate);
                self.rate = Some((current / 2.0).max(FLOOR as f64));
                self.last_decrease = Some(now);
            }
        } else if let Some(rate) = self.rate {
            let off_target = 1.0 - queueing.as_secs_f64() / TARGET.as_secs_f64();
            let rate = rate + GAIN * off_target * dt;
            self.rate = if rate > LIFT_FACTOR * self.served_rate.max(FLOOR as f64) {
                None
            } else {
                Some(rate)
            };
        }
        self.rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn obs(rtt_ms: u64, served: u64) -> Observation {
        Observation {
            rtt: Some(Duration::from_millis(rtt_ms)),
            served,
            stream_short: false,
        }
    }

    /// Ticks of 100 ms, serving `served_per_tick` while the round trip is `rtt_ms`.
    fn run(c: &mut UplinkControl, now: &mut Instant, ticks: u32, rtt_ms: u64, served: u64) {
        for _ in 0..ticks {
            *now += Duration::from_millis(100);
            c.observe(obs(rtt_ms, served), *now);
        }
    }

    #[test]
    fn no_limit_while_the_own_round_trip_stays_near_its_base() {
        let mut now = Instant::now();
        let mut c = UplinkControl::new(now);
        // 2 MiB per 100 ms served, round trips 20-60 ms (a loaded machine's jitter).
        for i in 0..100u64 {
            now += Duration::from_millis(100);
            assert_eq!(c.observe(obs(20 + (i * 7) % 40, 2 * MIB), now), None);
        }
        assert_eq!(c.base(), Some(Duration::from_millis(20)));
    }

    #[test]
    fn a_queue_on_the_uplink_halves_uploads_down_to_the_floor_then_they_grow_back() {
        let mut now = Instant::now();
        let mut c = UplinkControl::new(now);
        run(&mut c, &mut now, 10, 20, MIB / 4);
        assert_eq!(c.rate(), None);
        // 2.5 MB/s served (a full 20 Mbit/s uplink), and the round trip grows by 500 ms.
        now += Duration::from_millis(100);
        let first = c.observe(obs(520, MIB / 4), now).expect("limited");
        assert!(first <= MIB * 3 / 2, "{first}");
        // At most one halving per round trip.
        now += Duration::from_millis(100);
        assert_eq!(c.observe(obs(520, MIB / 4), now), Some(first));
        run(&mut c, &mut now, 100, 520, 0);
        assert_eq!(c.rate(), Some(FLOOR));
        // The queue drained: the rate grows again, by at most GAIN a second.
        run(&mut c, &mut now, 10, 20, FLOOR);
        let grown = c.rate().expect("still limited");
        assert!(
            grown > FLOOR && grown as f64 <= FLOOR as f64 + GAIN * 1.01,
            "{grown}"
        );
        // Back near the target, it grows more slowly.
        let mut half = UplinkControl::new(now);
        half.rate = Some(FLOOR as f64);
        half.base.push_back((now, Duration::from_millis(20)));
        run(&mut half, &mut now, 10, 90, FLOOR / 10);
        assert!(half.rate().expect("limited") < grown);
        // Once far above what is served, the limit is lifted.
        run(&mut c, &mut now, 300, 20, FLOOR / 10);
        assert_eq!(c.rate(), None);
    }

    #[test]
    fn a_short_stream_window_drops_serving_to_the_floor_at_once() {
        let mut now = Instant::now();
        let mut c = UplinkControl::new(now);
        now += Duration::from_millis(100);
        let short = Observation {
            rtt: None,
            served: MIB,
            stream_short: true,
        };
        assert_eq!(c.observe(short, now), Some(FLOOR));
        // A window that is full again lets it grow as the delay allows.
        run(&mut c, &mut now, 5, 20, 0);
        assert!(c.rate().expect("limited") > FLOOR);
    }

    #[test]
    fn without_a_measurement_nothing_changes_and_the_base_forgets_old_minima() {
        let mut now = Instant::now();
        let mut c = UplinkControl::new(now);
        let none = Observation {
            rtt: None,
            served: MIB,
            stream_short: false,
        };
        now += Duration::from_millis(100);
        assert_eq!(c.observe(none, now), None);
        run(&mut c, &mut now, 1, 5, 0);
        // A longer route from now on: after six buckets the old minimum is gone, and the
        // new round trip is no queue.
        run(&mut c, &mut now, 700, 300, 0);
        assert_eq!(c.base(), Some(Duration::from_millis(300)));
        assert_eq!(c.rate(), None);
    }
}
