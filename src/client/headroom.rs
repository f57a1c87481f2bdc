//! A host's own download first, with no flag: the server a `get` embeds keeps its uploads a
//! headroom ([`HEADROOM`]) below what the host's uplink carries, so that the download's
//! requests and TCP acknowledgements, which leave by the same uplink, find its queue
//! (a router's buffer, a provider's shaper, tbf) nearly empty instead of full: behind a
//! full 20 ms tail-drop queue they wait 20 ms each and are dropped when it overflows, and
//! a dropped request costs its connection a 200 ms retransmission timeout.
//!
//! The uplink's rate is learnt, not configured: it is what the uploads achieve while the
//! network holds them back, i.e. while chunks wait to be sent ([`BACKLOG`] or more at once
//! on average) and no rate limit is what holds them. Once learnt, uploads are capped at
//! [`HEADROOM`] of it; while that cap is what holds them back, every [`PROBE_EVERY`] the
//! cap is lifted for [`PROBE_WINDOWS`] windows and the rate is learnt again, so a link that
//! got faster (or was under-estimated) is found. A link that got slower shows as the
//! network holding the uploads below the cap, and the estimate follows it down.
//!
//! Why not the delay of the own download (`--yield-uplink`, [`super::uplink`]): a chunk's
//! round trip is mostly the serving peer's uplink (256 KiB through a 50 Mbit/s uplink
//! shared by four downloaders: 170 ms), not this host's, whose tbf queue holds at most
//! 20 ms in issue 14's harness; at N = 32 that controller saw 142 ms over a 0.28 ms base
//! and halved to its floor (BENCHMARKS.md, eighth session). The uploads' own rate is this
//! host's alone. Pure: time and the gauge's readings are arguments.

use std::time::{Duration, Instant};

use crate::server::GaugeReading;

/// The share of the learnt uplink rate uploads may use. Issue 14's harness (N = 8,
/// 200 Mbit/s uplinks, 20 ms tbf queue): `--max-upload-rate 22MB`, 0.88 of the uplink,
/// took the origin from 1.26-1.65 F to 1.00 F and evened the clients' finish times; the
/// acknowledgements of a download at the same rate take about 4 % of an uplink (a 66-byte
/// ACK per two 1 448-byte segments, 2.3 % each way of framing), so less than 10 % spare
/// leaves the queue to fill.
pub(crate) const HEADROOM: f64 = 0.9;
/// Rates are measured over windows this long: at 50 Mbit/s, 3 MB, 48 of the server's
/// 64 KiB `sendfile` pieces; shorter windows see the bursts of TCP and of the token bucket.
const WINDOW: Duration = Duration::from_millis(500);
/// Chunks waiting or being sent at once, on average over a window, above which the uploads
/// are held back rather than asked for little: one slow reader keeps one chunk busy, an
/// uplink that cannot carry what is asked keeps every connection's chunk waiting.
const BACKLOG: f64 = 2.0;
/// Chunks asleep in a rate limiter at once, on average, above which the limit (this cap,
/// or `--max-upload-rate`) is what holds the uploads back, not the network.
const BOUND: f64 = 0.25;
/// How long the cap holds the uploads back before it is lifted to learn the rate again:
/// BBR's probing period (about 8 s), and the cost: the queue fills for one probe of 1 s
/// in 9 s.
const PROBE_EVERY: Duration = Duration::from_secs(8);
/// Windows of a probe: the first lets TCP's windows and the send buffers grow back (bytes
/// written then are partly buffered, not sent), the second measures.
const PROBE_WINDOWS: u32 = 2;
/// At most this fall of the estimate per window: a loaded box that stalls every sender for
/// a moment looks like a slow network for one window, not like a link lost.
const MAX_FALL: f64 = 0.75;
/// No cap below this (bytes a second): 1 Mbit/s, one 256 KiB chunk in 2 s, below which a
/// network-held window says more about a stalled box than about an uplink.
const MIN_RATE: f64 = 125_000.0;

/// Where the controller is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// No estimate yet: no cap.
    Learning,
    /// Capped at [`HEADROOM`] of the estimate, since then.
    Capped { since: Instant },
    /// The cap lifted, windows left.
    Probing { left: u32 },
}

/// The headroom of one download's embedded server.
#[derive(Debug)]
pub(crate) struct Headroom {
    /// The uplink's rate learnt, bytes a second.
    estimate: Option<f64>,
    phase: Phase,
    /// The gauge at the start of the current window, and when that was.
    window: Option<(Instant, GaugeReading)>,
}

impl Headroom {
    /// A controller that has learnt nothing and caps nothing.
    pub(crate) fn new() -> Headroom {
        Headroom {
            estimate: None,
            phase: Phase::Learning,
            window: None,
        }
    }

    /// The cap now, in bytes a second (`None`: none).
    pub(crate) fn rate(&self) -> Option<u64> {
        match (self.phase, self.estimate) {
            (Phase::Capped { .. }, Some(estimate)) => Some((estimate * HEADROOM) as u64),
            _ => None,
        }
    }

    /// The uplink's rate learnt so far, bytes a second.
    pub(crate) fn estimate(&self) -> Option<u64> {
        self.estimate.map(|e| e as u64)
    }

    /// Takes in the gauge's counters at `now`; returns the cap.
    pub(crate) fn observe(&mut self, reading: GaugeReading, now: Instant) -> Option<u64> {
        let Some((start, before)) = self.window else {
            self.window = Some((now, reading));
            return self.rate();
        };
        let dt = now.saturating_duration_since(start);
        if dt < WINDOW {
            return self.rate();
        }
        self.window = Some((now, reading));
        let secs = dt.as_secs_f64();
        let rate = reading.sent.saturating_sub(before.sent) as f64 / secs;
        let busy = reading.busy.saturating_sub(before.busy).as_secs_f64() / secs;
        let limited = reading.limited.saturating_sub(before.limited).as_secs_f64() / secs;
        // The network held the uploads back: what went out is what the uplink carries.
        let held = busy >= BACKLOG && limited < BOUND && rate >= MIN_RATE;
        log::trace!(
            "uploads over {secs:.2} s: {:.1} MB/s, {busy:.1} chunks busy, {limited:.1} held by a rate",
            rate / 1e6
        );
        self.phase = match self.phase {
            Phase::Learning if held => {
                self.estimate = Some(rate);
                Phase::Capped { since: now }
            }
            Phase::Learning => Phase::Learning,
            Phase::Capped { since } => {
                if held {
                    // Less than the cap got through: the link is slower than learnt.
                    let estimate = self.estimate.unwrap_or(rate);
                    self.estimate = Some(rate.max(estimate * MAX_FALL));
                    Phase::Capped { since }
                } else if limited >= BOUND && now.saturating_duration_since(since) >= PROBE_EVERY {
                    Phase::Probing {
                        left: PROBE_WINDOWS,
                    }
                } else {
                    Phase::Capped { since }
                }
            }
            Phase::Probing { left } if left > 1 => Phase::Probing { left: left - 1 },
            Phase::Probing { .. } => {
                let estimate = self.estimate.unwrap_or(rate);
                // Held: the rate the link carries now, higher or lower. Not held: the
                // demand fell short of the link, which carries at least this.
                self.estimate = Some(if held { rate } else { rate.max(estimate) });
                Phase::Capped { since: now }
            }
        };
        self.rate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: f64 = 1e6;

    /// A gauge that counts what a server would: `rate` bytes a second sent, `busy` chunks
    /// waiting or sending at once, `limited` of them asleep in a limiter.
    struct Gauge {
        reading: GaugeReading,
        now: Instant,
    }

    impl Gauge {
        fn new() -> Gauge {
            Gauge {
                reading: GaugeReading::default(),
                now: Instant::now(),
            }
        }

        /// Ticks of 100 ms (the scheduler's) for `secs`, fed to `h`.
        fn run(&mut self, h: &mut Headroom, secs: f64, rate: f64, busy: f64, limited: f64) {
            let tick = Duration::from_millis(100);
            for _ in 0..(secs * 10.0).round() as u32 {
                self.now += tick;
                self.reading.sent += (rate * 0.1) as u64;
                self.reading.busy += tick.mul_f64(busy);
                self.reading.limited += tick.mul_f64(limited);
                h.observe(self.reading, self.now);
            }
        }
    }

    #[test]
    fn no_cap_while_the_uploads_are_not_held_back() {
        let (mut h, mut g) = (Headroom::new(), Gauge::new());
        // A slow reader or two: one or one and a half chunks busy, whatever the rate.
        g.run(&mut h, 5.0, 20.0 * MB, 1.5, 0.0);
        assert_eq!((h.rate(), h.estimate()), (None, None));
        // Nothing asked at all.
        g.run(&mut h, 5.0, 0.0, 0.0, 0.0);
        assert_eq!(h.rate(), None);
    }

    #[test]
    fn an_uplink_that_holds_the_uploads_back_is_learnt_and_capped_below() {
        let (mut h, mut g) = (Headroom::new(), Gauge::new());
        // 25 MB/s (200 Mbit/s) and six chunks waiting: the uplink is full.
        g.run(&mut h, 0.6, 25.0 * MB, 6.0, 0.0);
        assert_eq!(h.estimate(), Some(25_000_000));
        assert_eq!(h.rate(), Some(22_500_000));
        // Now the cap holds them back: it stays, and the estimate with it.
        g.run(&mut h, 5.0, 22.5 * MB, 6.0, 3.0);
        assert_eq!(h.rate(), Some(22_500_000));
    }

    #[test]
    fn a_first_estimate_too_high_follows_the_link_down_by_at_most_a_quarter_a_window() {
        let (mut h, mut g) = (Headroom::new(), Gauge::new());
        // The first window's bytes were partly buffered: 30 MB/s "seen" on a 20 MB/s link.
        g.run(&mut h, 0.6, 30.0 * MB, 6.0, 0.0);
        assert_eq!(h.estimate(), Some(30_000_000));
        // The cap (27 MB/s) does not hold them: the network does, at 20 MB/s.
        g.run(&mut h, 0.5, 20.0 * MB, 6.0, 0.0);
        assert_eq!(h.estimate(), Some(22_500_000), "a quarter at most");
        g.run(&mut h, 0.5, 20.0 * MB, 6.0, 0.0);
        assert_eq!(h.estimate(), Some(20_000_000));
        assert_eq!(h.rate(), Some(18_000_000));
    }

    #[test]
    fn a_cap_that_holds_the_uploads_is_lifted_now_and_then_and_a_faster_link_found() {
        let (mut h, mut g) = (Headroom::new(), Gauge::new());
        g.run(&mut h, 0.6, 10.0 * MB, 4.0, 0.0);
        assert_eq!(h.rate(), Some(9_000_000));
        // Held by the cap for a while: capped until PROBE_EVERY has passed.
        g.run(&mut h, 7.0, 9.0 * MB, 4.0, 2.0);
        assert_eq!(h.rate(), Some(9_000_000));
        g.run(&mut h, 1.5, 9.0 * MB, 4.0, 2.0);
        assert_eq!(h.rate(), None, "lifted to probe");
        // The link grew to 20 MB/s: the probe's second window learns it.
        g.run(&mut h, 1.0, 20.0 * MB, 4.0, 0.0);
        assert_eq!(h.estimate(), Some(20_000_000));
        assert_eq!(h.rate(), Some(18_000_000));
    }

    #[test]
    fn a_probe_whose_demand_falls_short_keeps_the_estimate_and_a_rate_limit_is_not_a_link() {
        let (mut h, mut g) = (Headroom::new(), Gauge::new());
        g.run(&mut h, 0.6, 10.0 * MB, 4.0, 0.0);
        g.run(&mut h, 8.5, 9.0 * MB, 4.0, 2.0);
        assert_eq!(h.rate(), None, "probing");
        // Little asked during the probe: it says the link carries at least that, no less.
        g.run(&mut h, 1.0, 3.0 * MB, 1.0, 0.0);
        assert_eq!(h.estimate(), Some(10_000_000));
        assert_eq!(h.rate(), Some(9_000_000));
        // A `--max-upload-rate` that holds every chunk: never taken for the uplink.
        let (mut h, mut g) = (Headroom::new(), Gauge::new());
        g.run(&mut h, 5.0, 2.0 * MB, 6.0, 5.0);
        assert_eq!((h.rate(), h.estimate()), (None, None));
    }
}
