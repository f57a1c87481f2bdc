//! The load generator's pure parts: what each simulated peer sends and when it sends it
//! again, the framing of the tracker's answers, and the figures. No sockets or threads
//! here, so that all of it is unit-tested.

use std::time::Duration;

use swarmcache::announce::{MAX_ANNOUNCE_INTERVAL, MIN_ANNOUNCE_INTERVAL};
use swarmcache::api::{AnnounceRequest, AnnounceResponse};

/// A downloading client announces its progress this often (`ANNOUNCE_PERIOD` in
/// src/client/announce.rs, which is private to the client).
pub const DOWNLOAD_PERIOD: Duration = Duration::from_millis(500);
/// The tracker client's tries of an announce answered 503 or 429 (`BUSY_ATTEMPTS` in
/// src/tracker_client.rs), the first retry after 100 ms, doubling, each at most 2 s.
const BUSY_ATTEMPTS: u32 = 6;
const BUSY_FIRST_RETRY: Duration = Duration::from_millis(100);
const BUSY_MAX_RETRY: Duration = Duration::from_secs(2);
/// After an announce that failed for good, the announce loop tries again after 1 s
/// (`RETRY_FIRST` in src/announce.rs), never later than the period.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// What a simulated peer is doing; it sets how often the peer announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Fetching chunks: a client announces its progress on its own fixed period.
    Downloading,
    /// Holding every chunk (a seeder, a finished client, a peer server's heartbeat).
    Seeding,
}

/// When a peer in `phase` announces again after `answer`. The one place the generator reads
/// the cadence from an answer: when the tracker sets it (issue 12), only this changes.
pub fn cadence(answer: &AnnounceResponse, phase: Phase) -> Duration {
    // The client takes the tracker's `next_announce_ms` in either phase, within bounds;
    // without one, its own period while it downloads and the heartbeat while it seeds.
    let fallback = match phase {
        Phase::Downloading => DOWNLOAD_PERIOD,
        Phase::Seeding => Duration::from_secs(answer.interval_secs),
    };
    (answer.next_announce())
        .unwrap_or(fallback)
        .clamp(MIN_ANNOUNCE_INTERVAL, MAX_ANNOUNCE_INTERVAL)
}

/// How an announce ended, as the figures count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 200 with a well-formed answer.
    Answered,
    /// An answer with this status (503 and 429 are the "busy" ones a client retries).
    Status(u16),
    /// A 200 whose body is not an announce answer.
    BadAnswer,
    /// No whole answer within the timeout.
    Timeout,
    /// The connection failed or closed before a whole answer came.
    Broken,
}

/// When a peer announces again after a failed announce that was its `attempt`-th try
/// (0 for the first), and which try that will be; `jitter` in [0, 1) draws the client's
/// jitter. The tracker client retries "busy" answers itself (honouring `Retry-After`); past
/// its tries, or on any other failure, the announce loop waits a second, at most `period`.
pub fn after_failure(
    outcome: Outcome,
    attempt: u32,
    retry_after: Option<u64>,
    period: Duration,
    jitter: f64,
) -> (Duration, u32) {
    let busy = matches!(outcome, Outcome::Status(429 | 503));
    if busy && attempt + 1 < BUSY_ATTEMPTS {
        let pause = BUSY_FIRST_RETRY
            .saturating_mul(1 << attempt.min(8))
            .min(BUSY_MAX_RETRY)
            .mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
        let asked = retry_after.map(Duration::from_secs);
        (asked.unwrap_or(pause).min(BUSY_MAX_RETRY), attempt + 1)
    } else {
        (RETRY_FIRST.min(period), 0)
    }
}

/// The order in which a simulated downloader completes the chunks of an asset of `n`:
/// k ↦ (a·k + b) mod n with a coprime to n, a permutation that scatters chunks over the
/// asset as a rarest-first plan does, held in three numbers instead of n.
#[derive(Clone, Copy, Debug)]
pub struct Order {
    a: u64,
    b: u64,
    n: u64,
}

impl Order {
    /// An order over `n` chunks drawn from `seed`.
    pub fn new(n: u32, seed: u64) -> Order {
        let n = u64::from(n.max(1));
        let mut a = ((seed >> 17) % n) | 1;
        while gcd(a, n) != 1 {
            a = (a + 2) % n.max(2);
            a |= 1;
        }
        Order { a, b: seed % n, n }
    }

    /// The `k`-th chunk completed.
    pub fn chunk(&self, k: u32) -> u32 {
        ((self.a * u64::from(k) + self.b) % self.n) as u32
    }
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// One announce, ready to write: the request head and its JSON body, with where the `have`
/// bitfield's hex sits in it, so progress is patched in place rather than re-encoded.
#[derive(Clone, Debug)]
pub struct Prebuilt {
    /// Head and body.
    pub bytes: Vec<u8>,
    /// Offset of the first hex digit of `have` in `bytes`.
    have_at: Option<usize>,
}

impl Prebuilt {
    /// `request` for the announce of `asset` at `host`, as the tracker client sends it.
    pub fn new(host: &str, asset: &str, request: &AnnounceRequest) -> Prebuilt {
        let body = serde_json::to_vec(request).expect("an announce request serializes");
        let head = format!(
            "POST /assets/{asset}/announce HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        const KEY: &[u8] = b"\"have\":\"";
        let have_at = request.have.as_ref().and_then(|_| {
            body.windows(KEY.len())
                .position(|w| w == KEY)
                .map(|at| head.len() + at + KEY.len())
        });
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(&body);
        Prebuilt { bytes, have_at }
    }

    /// Marks chunk `i` held in the `have` bitfield (bits most significant first, as
    /// [`swarmcache::bitfield::Bitfield`] has them); nothing without a `have`.
    pub fn set_chunk(&mut self, i: u32) {
        let Some(at) = self.have_at else { return };
        let at = at + 2 * (i / 8) as usize;
        let Some(pair) = self.bytes.get_mut(at..at + 2) else {
            return;
        };
        let byte = pair.iter().fold(0u8, |acc, &c| acc << 4 | nibble(c)) | 0x80 >> (i % 8);
        const HEX: &[u8; 16] = b"0123456789abcdef";
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 15)];
    }
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => 0,
    }
}

/// How far an answer has arrived in a connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Framed {
    /// Not whole yet.
    Partial,
    /// A whole answer of `len` bytes (head and body) at the start of the buffer.
    Whole {
        status: u16,
        head_len: usize,
        len: usize,
        /// The tracker closes the connection after it.
        close: bool,
        /// Its `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
}

/// Frames the answer at the start of `buf`. The tracker sends a `Content-Length` with every
/// answer; one without it, or a head that does not parse, is an error (what was received
/// is in it).
pub fn frame(buf: &[u8]) -> Result<Framed, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head_len = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(Framed::Partial),
        Err(e) => {
            let start = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
            return Err(format!("the answer's head does not parse ({e}): {start:?}"));
        }
    };
    let status = response.code.unwrap_or(0);
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    let Some(length) = header("content-length").and_then(|v| v.parse::<usize>().ok()) else {
        return Err(format!("answer {status} has no usable Content-Length"));
    };
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    let retry_after = header("retry-after").and_then(|v| v.parse().ok());
    let len = head_len.saturating_add(length);
    Ok(if buf.len() < len {
        Framed::Partial
    } else {
        Framed::Whole {
            status,
            head_len,
            len,
            close,
            retry_after,
        }
    })
}

/// The figures of one class of simulated peers.
#[derive(Clone, Debug, Default)]
pub struct Figures {
    /// Announces answered 200 with a well-formed answer.
    pub answered: u64,
    /// Answered 503.
    pub busy: u64,
    /// Answered with another status than 200 or 503 (429 included), or a bad answer.
    pub refused: u64,
    /// Not answered within the timeout.
    pub timeouts: u64,
    /// Connection failed or closed before an answer.
    pub broken: u64,
    /// Announces due that the generator never sent before the run ended (its own backlog).
    pub unsent: u64,
    /// Latency of each answered announce, from when it was due, in microseconds.
    pub latency_us: Vec<u32>,
    /// Body size of each answer, in bytes.
    pub answer_bytes: Vec<u32>,
}

impl Figures {
    /// Counts one announce's `outcome`.
    pub fn count(&mut self, outcome: Outcome, latency: Duration, body: usize) {
        match outcome {
            Outcome::Answered => {
                self.answered += 1;
                self.latency_us
                    .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
                self.answer_bytes.push(body.min(u32::MAX as usize) as u32);
            }
            Outcome::Status(503) => self.busy += 1,
            Outcome::Status(_) | Outcome::BadAnswer => self.refused += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Broken => self.broken += 1,
        }
    }

    /// Adds `other`'s figures.
    pub fn merge(&mut self, other: Figures) {
        self.answered += other.answered;
        self.busy += other.busy;
        self.refused += other.refused;
        self.timeouts += other.timeouts;
        self.broken += other.broken;
        self.unsent += other.unsent;
        self.latency_us.extend(other.latency_us);
        self.answer_bytes.extend(other.answer_bytes);
    }

    /// Announces not answered: every outcome but a good 200.
    pub fn unanswered(&self) -> u64 {
        self.busy + self.refused + self.timeouts + self.broken
    }

    /// Sorts the samples for [`percentile`].
    pub fn sort(&mut self) {
        self.latency_us.sort_unstable();
        self.answer_bytes.sort_unstable();
    }
}

/// The `p`-quantile (0..=1) of `sorted`, by the nearest rank; `None` when empty.
pub fn percentile(sorted: &[u32], p: f64) -> Option<u32> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median of `values` (sorted here), the mean of the middle two for an even count.
pub fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// Clock ticks a second in `/proc/PID/stat`: USER_HZ, 100 on every Linux ABI.
pub const USER_HZ: f64 = 100.0;

/// utime + stime, in clock ticks, from the text of `/proc/PID/stat`. The command name
/// (field 2) may hold spaces and parentheses, so fields are counted after its last ')'.
pub fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// A `kB` figure such as `VmRSS` from the text of `/proc/PID/status`, in KiB.
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()
}

/// A small fast generator for the simulation's draws (xorshift64*), seeded per thread.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (any value).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A draw in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A draw in [0, n) (0 for n = 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmcache::bitfield::Bitfield;

    fn answer(interval_secs: u64) -> AnnounceResponse {
        AnnounceResponse {
            interval_secs,
            next_announce_ms: None,
            chunk_count: 4,
            peers: Vec::new(),
            origins: Vec::new(),
            origin_urls: Vec::new(),
            your_addr: None,
            instance: None,
            warming_up_secs: None,
            origin_share: None,
            ticket: None,
            keys: Vec::new(),
        }
    }

    #[test]
    fn downloaders_keep_the_clients_period_and_seeders_take_the_trackers_within_bounds() {
        assert_eq!(cadence(&answer(20), Phase::Downloading), DOWNLOAD_PERIOD);
        assert_eq!(
            cadence(&answer(20), Phase::Seeding),
            Duration::from_secs(20)
        );
        assert_eq!(cadence(&answer(0), Phase::Seeding), MIN_ANNOUNCE_INTERVAL);
        // The tracker's cadence wins in either phase (issue 12).
        let told = AnnounceResponse {
            next_announce_ms: Some(3000),
            ..answer(20)
        };
        assert_eq!(cadence(&told, Phase::Downloading), Duration::from_secs(3));
        assert_eq!(cadence(&told, Phase::Seeding), Duration::from_secs(3));
        assert_eq!(
            cadence(&answer(u64::MAX), Phase::Seeding),
            MAX_ANNOUNCE_INTERVAL
        );
    }

    #[test]
    fn busy_answers_are_retried_as_the_tracker_client_does_then_the_loop_waits() {
        let busy = Outcome::Status(503);
        let period = Duration::from_secs(20);
        let (wait, next) = after_failure(busy, 0, None, period, 0.999);
        assert!(wait <= Duration::from_millis(100) && wait >= Duration::from_millis(50));
        assert_eq!(next, 1);
        assert_eq!(
            after_failure(busy, 1, Some(1), period, 0.0),
            (Duration::from_secs(1), 2)
        );
        assert_eq!(
            after_failure(busy, 2, Some(60), period, 0.0).0,
            BUSY_MAX_RETRY
        );
        assert_eq!(
            after_failure(busy, BUSY_ATTEMPTS - 1, None, period, 0.0),
            (RETRY_FIRST, 0)
        );
        assert_eq!(
            after_failure(Outcome::Timeout, 0, None, DOWNLOAD_PERIOD, 0.5),
            (DOWNLOAD_PERIOD, 0)
        );
    }

    #[test]
    fn the_completion_order_visits_every_chunk_once() {
        for (n, seed) in [
            (1, 7),
            (2, 3),
            (12, 99),
            (65_536, 0xDEAD_BEEF),
            (1000, 12_345),
        ] {
            let order = Order::new(n, seed);
            let mut seen = vec![false; n as usize];
            for k in 0..n {
                let c = order.chunk(k) as usize;
                assert!(!seen[c], "n {n}: chunk {c} twice");
                seen[c] = true;
            }
        }
    }

    #[test]
    fn patched_progress_is_the_bitfield_the_client_would_send() {
        let n = 61;
        let mut have = Bitfield::new(n);
        let request = AnnounceRequest {
            peer_id: "p".into(),
            have: Some(have.to_hex()),
            ..AnnounceRequest::default()
        };
        let mut built = Prebuilt::new("h:1", "abc", &request);
        let order = Order::new(n, 42);
        for k in 0..n {
            built.set_chunk(order.chunk(k));
            have.set(order.chunk(k));
            let expected = Prebuilt::new(
                "h:1",
                "abc",
                &AnnounceRequest {
                    have: Some(have.to_hex()),
                    ..request.clone()
                },
            );
            assert_eq!(built.bytes, expected.bytes, "after {k} chunks");
        }
        let text = String::from_utf8(built.bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("POST /assets/abc/announce HTTP/1.1\r\n"));
        assert!(head.ends_with(&format!("Content-Length: {}", body.len())));
        let back: AnnounceRequest = serde_json::from_str(body).unwrap();
        assert_eq!(
            back.have.as_deref(),
            Some(Bitfield::full(n).to_hex().as_str())
        );
    }

    #[test]
    fn a_request_without_have_is_left_alone() {
        let request = AnnounceRequest {
            peer_id: "have".into(),
            complete: true,
            ..AnnounceRequest::default()
        };
        let mut built = Prebuilt::new("h:1", "abc", &request);
        let before = built.bytes.clone();
        built.set_chunk(0);
        assert_eq!(built.bytes, before);
    }

    #[test]
    fn answers_are_framed_by_their_length_and_bad_heads_are_errors() {
        let whole = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy";
        let head_len = whole.len() - 4;
        assert_eq!(
            frame(whole).unwrap(),
            Framed::Whole {
                status: 503,
                head_len,
                len: whole.len(),
                close: true,
                retry_after: Some(1)
            }
        );
        for cut in [0, 10, head_len, whole.len() - 1] {
            assert_eq!(frame(&whole[..cut]).unwrap(), Framed::Partial, "cut {cut}");
        }
        let mut two = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}".to_vec();
        two.extend_from_slice(whole);
        assert!(matches!(
            frame(&two).unwrap(),
            Framed::Whole {
                status: 200,
                len: 40,
                close: false,
                ..
            }
        ));
        assert!(frame(b"\x00\x00\x00\x38\x09 not http\r\n\r\n").is_err());
        assert!(frame(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
    }

    #[test]
    fn figures_count_each_outcome_where_the_report_reads_it() {
        let mut f = Figures::default();
        f.count(Outcome::Answered, Duration::from_millis(3), 100);
        f.count(Outcome::Status(503), Duration::ZERO, 0);
        f.count(Outcome::Status(429), Duration::ZERO, 0);
        f.count(Outcome::BadAnswer, Duration::ZERO, 0);
        f.count(Outcome::Timeout, Duration::ZERO, 0);
        f.count(Outcome::Broken, Duration::ZERO, 0);
        let mut g = Figures::default();
        g.count(Outcome::Answered, Duration::from_millis(1), 300);
        f.merge(g);
        f.sort();
        assert_eq!(
            (f.answered, f.busy, f.refused, f.timeouts, f.broken),
            (2, 1, 2, 1, 1)
        );
        assert_eq!(f.unanswered(), 5);
        assert_eq!(f.latency_us, [1000, 3000]);
        assert_eq!(percentile(&f.answer_bytes, 0.5), Some(100));
        assert_eq!(percentile(&f.answer_bytes, 1.0), Some(300));
    }

    #[test]
    fn percentiles_and_medians_pick_the_right_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), Some(50));
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }

    #[test]
    fn proc_figures_are_read_past_an_awkward_command_name() {
        let stat =
            "4242 (tra cker) (x)) S 1 4242 4242 0 -1 4194560 1 0 0 0 150 25 0 0 20 0 33 0 1 1 1";
        assert_eq!(cpu_ticks(stat), Some(175));
        assert_eq!(cpu_ticks("4242 (tracker"), None);
        let status = "Name:\ttracker\nVmHWM:\t  20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(10_240));
        assert_eq!(status_kib(status, "VmHWM"), Some(20_480));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }
}
