//! A token bucket shared by every connection of a process (`--max-upload-rate`,
//! `--max-download-rate`).
//!
//! The bucket starts empty, not full, so a process never opens with a one-second burst.
//! Callers take a whole chunk at once and may drive the balance negative; the debt is paid
//! by sleeping before the bytes go out. Over any interval T the bytes let through are at
//! most `rate × T + burst + one chunk`, where the burst is 50 ms of rate.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How much unused allowance may accumulate: 50 ms of rate, enough to absorb scheduling
/// jitter between chunks without letting a long idle period turn into a spike.
const BURST_WINDOW: Duration = Duration::from_millis(50);

/// A thread-safe token bucket in bytes per second.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter letting `bytes_per_sec` through on average.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        RateLimiter {
            rate,
            burst: rate * BURST_WINDOW.as_secs_f64(),
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// The configured rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate as u64
    }

    /// Blocks until `bytes` may pass.
    pub fn take(&self, bytes: u64) {
        let wait = {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let (tokens, last) = *state;
            let refilled =
                (tokens + now.duration_since(last).as_secs_f64() * self.rate).min(self.burst);
            let left = refilled - bytes as f64;
            *state = (left, now);
            if left < 0.0 {
                Duration::from_secs_f64(-left / self.rate)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Takes from the limiter when there is one.
pub fn take(limiter: Option<&RateLimiter>, bytes: u64) {
    if let Some(l) = limiter {
        l.take(bytes);
    }
}

/// Who counts as one client for per-address limits: an IPv4 address (an IPv4-mapped IPv6
/// one included), or an IPv6 /64, the block a single host or home network is given, so
/// that a host cannot escape its limit by cycling through its addresses.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_makes_the_caller_wait() {
        // 1 MB/s: taking 100 kB from an empty bucket must wait about 100 ms.
        let limiter = RateLimiter::new(1_000_000);
        let start = Instant::now();
        limiter.take(100_000);
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn idle_time_accumulates_only_the_burst() {
        let limiter = RateLimiter::new(1_000_000);
        limiter.take(0);
        std::thread::sleep(Duration::from_millis(120));
        let start = Instant::now();
        // 50 ms of allowance saved up; 100 kB needs 100 ms, so about 50 ms of waiting.
        limiter.take(100_000);
        assert!(
            start.elapsed() >= Duration::from_millis(40),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn an_ipv6_host_is_one_client_across_its_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }
}
