//! One jittered exponential backoff, used by every retry loop in the crate.
//!
//! Why jitter: a crowd of clients that lost the same tracker at the same moment would
//! otherwise retry in lockstep (1 s, 2 s, 4 s … all together) and hit it as one wave each
//! time. Each pause is drawn uniformly from [½·d, d] of the nominal delay d ("equal
//! jitter"): never shorter than half the nominal, so the growth stays exponential.
//! Pure logic: the caller sleeps or schedules; randomness comes from a seed the caller
//! may fix (tests do).

use std::time::Duration;

/// An exponential backoff: `first`, doubling per failure, capped at `max`, with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    failures: u32,
    state: u64,
}

impl Backoff {
    /// A backoff starting at `first` and never waiting longer than `max`.
    pub fn new(first: Duration, max: Duration) -> Backoff {
        Backoff::seeded(first, max, seed_from_clock())
    }

    /// The same with a fixed random seed, so a test sees the same pauses every run.
    pub fn seeded(first: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            first,
            max: max.max(first),
            failures: 0,
            state: seed | 1,
        }
    }

    /// The nominal (un-jittered) delay after the failures counted so far.
    pub fn nominal(&self) -> Duration {
        self.first
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max)
    }

    /// Counts one more failure and returns how long to wait before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let nominal = self.nominal();
        self.failures = self.failures.saturating_add(1);
        let fraction = (self.next_random() >> 11) as f64 / (1u64 << 53) as f64;
        nominal.mul_f64(0.5 + 0.5 * fraction)
    }

    /// Failures counted since the last [`Backoff::reset`].
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Forgets the failures after a success: the next delay is `first` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Caps the delay at a new maximum (a heartbeat period learnt from the tracker).
    pub fn set_max(&mut self, max: Duration) {
        self.max = max.max(self.first);
    }

    fn next_random(&mut self) -> u64 {
        // xorshift64*: enough to spread retries, not for anything secret.
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A seed that differs between processes and calls (time and process id).
pub fn seed_from_clock() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    nanos ^ (u64::from(std::process::id()) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::seeded(100 * MS, 800 * MS, 7);
        for nominal in [100, 200, 400, 800, 800, 800] {
            let d = b.next_delay();
            assert!(
                d >= nominal * MS / 2 && d <= nominal * MS,
                "{d:?} vs {nominal} ms"
            );
        }
        assert_eq!(b.failures(), 6);
    }

    #[test]
    fn reset_starts_again_from_the_first_delay() {
        let mut b = Backoff::seeded(MS, 1000 * MS, 3);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= MS);
    }

    #[test]
    fn two_seeds_spread_their_retries() {
        let mut a = Backoff::seeded(1000 * MS, 1000 * MS, 1);
        let mut b = Backoff::seeded(1000 * MS, 1000 * MS, 2);
        let same = (0..8).filter(|_| a.next_delay() == b.next_delay()).count();
        assert!(same < 8);
    }

    #[test]
    fn huge_failure_counts_do_not_overflow() {
        let mut b = Backoff::seeded(Duration::from_secs(1), Duration::from_secs(60), 9);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
    }
}
