//! When a completed `get` stops serving (`--linger`): its embedded server goes on serving
//! the swarm while peers still fetch from it, and leaves once no upload has been active for
//! [`LINGER_IDLE`] or the linger bound has passed, whichever comes first.
//!
//! Why: a `get` that leaves the moment its output is in place takes its uplink with it,
//! and the last downloaders of a flash crowd lose their peers and fall back to the origin,
//! which sends those chunks a second time. In issue 14's harness (N = 8, 400/200 Mbit/s)
//! the uplinks of hosts that had already exited were 27-29 % of N × wall idle, and the
//! origin sent up to 1.47 F (BENCHMARKS.md, eighth session). Pure: time and the gauge's
//! byte count are arguments.
//!
//! The process itself stays while it lingers; it does not hand the serving to a detached
//! child. Everything a caller waits for is final first: the output is renamed into place,
//! the summary printed, stdout closed (a `| jq` or the player of `--stream` sees its end)
//! and the exit status decided (0; a Ctrl-C now still exits 0). What waits is the exit:
//! [`LINGER_IDLE`] past the last upload, at most the bound. A detached server would
//! outlive the job that started it (a CI step whose runner then deletes the store, a
//! container, a `wait` in a script) and keep a port open nobody asked for; a script that
//! cannot spare those moments says `--linger 0s`, one that needs only the file can read
//! the summary line or watch the file appear.

use std::time::{Duration, Instant};

/// How long a `get` serves on after its download by default (`--linger`): a few times what
/// the last downloaders of a crowd trail the first by (1-3 s at N = 8-32 in issue 14's
/// harness), so the bound is rarely what ends it, while a crowd that never ends (a peer
/// stuck on a dead link) cannot keep a script waiting for long.
pub const DEFAULT_LINGER: Duration = Duration::from_secs(10);

/// No byte uploaded for this long and the lingering ends: a peer fetching from this host
/// keeps its requests in flight back to back, so a gap this long means nobody asks. A
/// 256 KiB chunk through a 50 Mbit/s uplink shared by four readers takes 170 ms; this is
/// more than that, and what a script waits past the last upload.
pub const LINGER_IDLE: Duration = Duration::from_millis(250);

/// Why a lingering `get` left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LingerEnd {
    /// No upload for [`LINGER_IDLE`].
    Idle,
    /// The bound (`--linger`) passed while peers still fetched.
    Bound,
}

/// The linger decision of one `get`, fed the server's bytes uploaded so far.
#[derive(Debug)]
pub(crate) struct Linger {
    /// When the bound passes (`None`: a bound too far to count to).
    until: Option<Instant>,
    /// Bytes uploaded at the last look.
    sent: u64,
    /// When an upload was last seen going on (the start counts as one, so a `get` nobody
    /// fetches from stays [`LINGER_IDLE`]: a peer that had a request under way when the
    /// download ended gets its reply).
    active: Instant,
}

impl Linger {
    /// Lingering from `now` for at most `bound`, with `sent` bytes uploaded so far.
    pub(crate) fn new(bound: Duration, sent: u64, now: Instant) -> Linger {
        Linger {
            until: now.checked_add(bound),
            sent,
            active: now,
        }
    }

    /// Takes in the bytes uploaded so far at `now`; `Some` when it is time to leave.
    pub(crate) fn observe(&mut self, sent: u64, now: Instant) -> Option<LingerEnd> {
        if sent != self.sent {
            self.sent = sent;
            self.active = now;
        }
        if self.until.is_some_and(|until| now >= until) {
            Some(LingerEnd::Bound)
        } else if now.saturating_duration_since(self.active) >= LINGER_IDLE {
            Some(LingerEnd::Idle)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn nobody_fetching_leaves_after_the_idle_time() {
        let t0 = Instant::now();
        let mut linger = Linger::new(DEFAULT_LINGER, 1000, t0);
        assert_eq!(linger.observe(1000, t0 + 100 * MS), None);
        assert_eq!(linger.observe(1000, t0 + 249 * MS), None);
        assert_eq!(
            linger.observe(1000, t0 + LINGER_IDLE),
            Some(LingerEnd::Idle)
        );
    }

    #[test]
    fn uploads_keep_it_serving_and_the_idle_time_counts_from_the_last_one() {
        let t0 = Instant::now();
        let mut linger = Linger::new(DEFAULT_LINGER, 0, t0);
        // A peer fetches for 3 s: a piece every 50 ms.
        let mut sent = 0;
        for tick in 1..=60 {
            sent += 64 << 10;
            assert_eq!(
                linger.observe(sent, t0 + tick * 50 * MS),
                None,
                "tick {tick}"
            );
        }
        let last = t0 + 3000 * MS;
        assert_eq!(linger.observe(sent, last + 200 * MS), None);
        assert_eq!(linger.observe(sent, last + 250 * MS), Some(LingerEnd::Idle));
    }

    #[test]
    fn the_bound_ends_it_while_peers_still_fetch() {
        let t0 = Instant::now();
        let mut linger = Linger::new(Duration::from_secs(1), 0, t0);
        assert_eq!(linger.observe(10, t0 + 900 * MS), None);
        assert_eq!(linger.observe(20, t0 + 1000 * MS), Some(LingerEnd::Bound));
        // A bound of zero leaves at the first look; one past the clock's range never ends it.
        let mut linger = Linger::new(Duration::ZERO, 0, t0);
        assert_eq!(linger.observe(0, t0), Some(LingerEnd::Bound));
        let mut linger = Linger::new(Duration::MAX, 0, t0);
        assert_eq!(linger.observe(1, t0 + Duration::from_secs(3600)), None);
    }

    #[test]
    fn a_clock_that_goes_back_or_a_counter_that_does_not_grow_is_no_upload() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut linger = Linger::new(DEFAULT_LINGER, 500, t0);
        // An earlier `now` (threads racing to look) neither leaves nor counts as activity.
        assert_eq!(linger.observe(500, t0 - 100 * MS), None);
        assert_eq!(linger.observe(500, t0 + LINGER_IDLE), Some(LingerEnd::Idle));
    }
}
