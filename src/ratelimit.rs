//! Token buckets: one shared by every connection of a process, in bytes per second
//! (`--max-upload-rate`, `--max-download-rate`), and one per client address, in requests
//! per second (the tracker's `--announce-rate` and `--publish-rate`).
//!
//! The byte bucket starts empty, not full, so a process never opens with a one-second burst.
//! Callers take a whole chunk at once and may drive the balance negative; the debt is paid
//! by sleeping before the bytes go out. Over any interval T the bytes let through are at
//! most `rate × T + burst + one chunk`, where the burst is 50 ms of rate.
//!
//! The request buckets start full and never go negative: a request is let through or
//! refused at once, never delayed, so a refused client learns it straight away.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::sync::LockExt;

/// How much unused allowance may accumulate: 50 ms of rate, enough to absorb scheduling
/// jitter between chunks without letting a long idle period turn into a spike.
const BURST_WINDOW: Duration = Duration::from_millis(50);

/// Addresses tracked at once by an [`AddressLimiter`]. An entry is about 50 bytes, so the
/// table stays under 4 MiB. Buckets idle long enough to be full again are dropped; while
/// the table is full of busy ones, newcomers share one bucket.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// A balance of tokens and when it was last brought up to date.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// Adds what `rate` tokens a second earned since the last update, up to `burst`.
    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let earned = now.saturating_duration_since(self.last).as_secs_f64() * rate;
        self.tokens = (self.tokens + earned).min(burst);
        self.last = now;
    }
}

/// A thread-safe token bucket in bytes per second; its rate may be changed while in use
/// (the upload rate a downloading client adapts, `client::uplink`).
#[derive(Debug)]
pub struct RateLimiter {
    state: Mutex<Limit>,
}

/// A bucket and the rate and burst it refills at.
#[derive(Debug)]
struct Limit {
    rate: f64,
    burst: f64,
    bucket: Bucket,
}

impl RateLimiter {
    /// A limiter letting `bytes_per_sec` through on average.
    pub fn new(bytes_per_sec: u64) -> Self {
        let rate = bytes_per_sec.max(1) as f64;
        RateLimiter {
            state: Mutex::new(Limit {
                rate,
                burst: rate * BURST_WINDOW.as_secs_f64(),
                bucket: Bucket {
                    tokens: 0.0,
                    last: Instant::now(),
                },
            }),
        }
    }

    /// The configured rate in bytes per second.
    pub fn rate(&self) -> u64 {
        self.state.locked().rate as u64
    }

    /// Changes the rate from now on: what was earned so far counts at the old rate, and an
    /// allowance above the new burst is dropped. A caller already asleep keeps its wait.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        let mut limit = self.state.locked();
        let (rate, burst) = (limit.rate, limit.burst);
        limit.bucket.refill(rate, burst, Instant::now());
        limit.rate = bytes_per_sec.max(1) as f64;
        limit.burst = limit.rate * BURST_WINDOW.as_secs_f64();
        limit.bucket.tokens = limit.bucket.tokens.min(limit.burst);
    }

    /// Returns an allowance taken for bytes that were not sent after all (up to the burst),
    /// so that the next caller need not wait for them.
    pub fn give_back(&self, bytes: u64) {
        let mut limit = self.state.locked();
        let (rate, burst) = (limit.rate, limit.burst);
        limit.bucket.refill(rate, burst, Instant::now());
        limit.bucket.tokens = (limit.bucket.tokens + bytes as f64).min(burst);
    }

    /// Blocks until `bytes` may pass.
    pub fn take(&self, bytes: u64) {
        let wait = {
            let mut limit = self.state.locked();
            let (rate, burst) = (limit.rate, limit.burst);
            limit.bucket.refill(rate, burst, Instant::now());
            limit.bucket.tokens -= bytes as f64;
            if limit.bucket.tokens < 0.0 {
                Duration::from_secs_f64(-limit.bucket.tokens / rate)
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

/// Requests a second per client address (see [`client_key`]), with bursts: a token bucket
/// per address, full to start with. Memory is bounded: at most 65 536 addresses are
/// tracked at once (about 50 bytes each).
#[derive(Debug)]
pub struct AddressLimiter {
    rate: f64,
    burst: f64,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    buckets: HashMap<IpAddr, Bucket>,
    /// Shared by the addresses that find the table full.
    overflow: Bucket,
    /// When idle buckets were last dropped.
    swept: Instant,
}

impl AddressLimiter {
    /// Lets `per_sec` requests a second through from each address, and up to `burst` at once
    /// from one that was quiet.
    pub fn new(per_sec: u32, burst: u32) -> AddressLimiter {
        let (rate, burst) = (f64::from(per_sec.max(1)), f64::from(burst.max(1)));
        let now = Instant::now();
        AddressLimiter {
            rate,
            burst,
            table: Mutex::new(Table {
                buckets: HashMap::new(),
                overflow: Bucket {
                    tokens: burst,
                    last: now,
                },
                swept: now,
            }),
        }
    }

    /// The requests a second let through from each address.
    pub fn rate(&self) -> u32 {
        self.rate as u32
    }

    /// The requests let through at once from an address that was quiet.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// Takes one request's token from `ip`'s bucket; when it is empty, says how long until
    /// the next token.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    /// Takes `cost` tokens at once from `ip`'s bucket, or none: for one request that does
    /// the work of several (a batch announce). A cost above the burst is charged as the
    /// burst, so that it can pass at all.
    pub fn check_cost(&self, ip: IpAddr, cost: u32) -> Result<(), Duration> {
        self.check_cost_at(ip, cost, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        self.check_cost_at(ip, 1, now)
    }

    fn check_cost_at(&self, ip: IpAddr, cost: u32, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = (self.rate, self.burst);
        let cost = f64::from(cost).min(burst);
        // A bucket left alone this long is full again, which is what a missing one means.
        let refilled_after = Duration::from_secs_f64(burst / rate);
        let mut table = self.table.locked();
        let table = &mut *table;
        // At most one sweep per refill time, so that a full table of busy addresses does
        // not cost a walk of it per request.
        if now.saturating_duration_since(table.swept) >= refilled_after {
            table
                .buckets
                .retain(|_, b| now.saturating_duration_since(b.last) < refilled_after);
            table.swept = now;
        }
        let key = client_key(ip);
        let bucket = if table.buckets.len() < MAX_TRACKED_ADDRESSES {
            table.buckets.entry(key).or_insert(Bucket {
                tokens: burst,
                last: now,
            })
        } else {
            table.buckets.get_mut(&key).unwrap_or(&mut table.overflow)
        };
        bucket.refill(rate, burst, now);
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - bucket.tokens) / rate))
        }
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
    fn an_allowance_given_back_pays_debt_up_to_the_burst() {
        let limiter = RateLimiter::new(1_000_000);
        let tokens = |l: &RateLimiter| l.state.lock().unwrap().bucket.tokens;
        limiter.state.lock().unwrap().bucket.tokens = -200_000.0;
        limiter.give_back(100_000);
        // Less than 10 ms of refill can have been added meanwhile.
        assert!((-100_000.0..-90_000.0).contains(&tokens(&limiter)));
        limiter.give_back(10_000_000);
        assert_eq!(tokens(&limiter), 50_000.0, "never more than 50 ms of rate");
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
    fn a_new_rate_applies_from_now_and_drops_an_allowance_above_its_burst() {
        let limiter = RateLimiter::new(1_000_000_000);
        let tokens = |l: &RateLimiter| l.state.lock().unwrap().bucket.tokens;
        limiter.state.lock().unwrap().bucket.tokens = 50_000_000.0;
        limiter.set_rate(1_000_000);
        assert_eq!(limiter.rate(), 1_000_000);
        assert_eq!(tokens(&limiter), 50_000.0, "50 ms of the new rate");
        // 100 kB beyond that burst take about 100 ms at the new rate.
        limiter.take(50_000);
        let start = Instant::now();
        limiter.take(100_000);
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn each_address_gets_its_burst_then_its_rate() {
        let limiter = AddressLimiter::new(10, 20);
        let start = Instant::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        for n in 0..20 {
            assert_eq!(
                limiter.check_at(a, start),
                Ok(()),
                "request {n} of the burst"
            );
        }
        let wait = limiter.check_at(a, start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        // Another address has its own bucket.
        assert_eq!(limiter.check_at(b, start), Ok(()));
        // 10 a second: after 100 ms one more request passes, and only one.
        let later = start + Duration::from_millis(100);
        assert_eq!(limiter.check_at(a, later), Ok(()));
        assert!(limiter.check_at(a, later).is_err());
    }

    #[test]
    fn a_costly_request_takes_its_tokens_at_once_or_none() {
        let limiter = AddressLimiter::new(10, 20);
        let start = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limiter.check_cost_at(a, 15, start), Ok(()));
        // Five left: a cost of six is refused whole, and takes nothing.
        let wait = limiter.check_cost_at(a, 6, start).unwrap_err();
        assert!(wait > Duration::from_millis(90) && wait <= Duration::from_millis(100));
        assert_eq!(limiter.check_cost_at(a, 5, start), Ok(()));
        assert!(limiter.check_at(a, start).is_err());
        // A cost above the burst is charged as the burst, so it passes once the bucket is full.
        let full = start + Duration::from_secs(2);
        assert_eq!(limiter.check_cost_at(a, 1000, full), Ok(()));
        assert!(limiter.check_at(a, full).is_err());
    }

    #[test]
    fn an_ipv6_host_is_one_client_across_its_64() {
        let key = |s: &str| client_key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("::ffff:192.0.2.7"), key("192.0.2.7"));
        assert_ne!(key("192.0.2.7"), key("192.0.2.8"));
    }

    #[test]
    fn idle_addresses_are_forgotten_and_a_full_table_shares_one_bucket() {
        let limiter = AddressLimiter::new(1, 2);
        let start = Instant::now();
        for n in 0..MAX_TRACKED_ADDRESSES as u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            limiter.check_at(ip, start).unwrap();
        }
        let newcomer: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        // The table is full of busy addresses: newcomers share the overflow bucket.
        assert_eq!(limiter.check_at(newcomer, start), Ok(()));
        assert_eq!(limiter.check_at(other, start), Ok(()));
        assert!(limiter.check_at(newcomer, start).is_err());
        // Two seconds later every bucket is full again and is dropped.
        let later = start + Duration::from_secs(2);
        assert_eq!(limiter.check_at(newcomer, later), Ok(()));
        let table = limiter.table.lock().unwrap();
        assert_eq!(table.buckets.len(), 1, "only the newcomer is tracked");
    }
}
