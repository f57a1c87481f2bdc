//! The generator's engine: one thread's share of the simulated peers, announcing over a
//! few kept-alive connections to the tracker. The sockets are non-blocking and waited on
//! together in one `poll`, so a thread keeps hundreds of announces a second in flight at
//! the cost of a few system calls each: the generator shares the tracker's two cores and
//! must leave them to the tracker.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use swarmcache::announce::DEFAULT_ANNOUNCE_INTERVAL;
use swarmcache::api::AnnounceResponse;

use crate::model::{
    DOWNLOAD_PERIOD, Figures, Framed, Order, Outcome, Phase, Prebuilt, Rng, after_failure, cadence,
    frame,
};

/// Longest wait in one `poll`, so that due announces are never later than this.
const MAX_POLL: Duration = Duration::from_millis(20);
/// Read buffer: an answer of today's tracker with 30 partial peers of 65 536 chunks is
/// about 500 KiB; it is read in pieces this big.
const READ_PIECE: usize = 64 << 10;

/// A simulated downloader's progress: chunks complete at a steady rate from its start.
#[derive(Clone, Debug)]
pub struct Download {
    pub order: Order,
    pub done: u32,
    pub total: u32,
    pub start: Instant,
    pub secs: f64,
    /// What it announces once it holds every chunk.
    pub then: Prebuilt,
}

/// One simulated peer.
#[derive(Clone, Debug)]
pub struct Peer {
    /// Index of the figures it counts in.
    pub class: usize,
    pub phase: Phase,
    pub request: Prebuilt,
    /// Its announce period, for the wait after a failure.
    pub period: Duration,
    /// Tries of the current announce that were answered "busy".
    pub attempt: u32,
    pub download: Option<Download>,
}

impl Peer {
    /// A peer that always announces `request` in `phase`.
    pub fn new(class: usize, phase: Phase, request: Prebuilt) -> Peer {
        Peer {
            class,
            phase,
            request,
            period: match phase {
                Phase::Downloading => DOWNLOAD_PERIOD,
                Phase::Seeding => DEFAULT_ANNOUNCE_INTERVAL,
            },
            attempt: 0,
            download: None,
        }
    }

    /// Completes the chunks due by `now`; a download that ends becomes a seeder.
    fn progress(&mut self, now: Instant) {
        let Some(d) = &mut self.download else { return };
        let elapsed = now.saturating_duration_since(d.start).as_secs_f64();
        let target = ((f64::from(d.total) * elapsed / d.secs.max(1e-3)) as u64)
            .min(u64::from(d.total)) as u32;
        for k in d.done..target {
            self.request.set_chunk(d.order.chunk(k));
        }
        d.done = d.done.max(target);
        if d.done >= d.total {
            let d = self.download.take().expect("checked above");
            self.request = d.then;
            self.phase = Phase::Seeding;
        }
    }
}

/// What the engine does after an announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Nothing: each scheduled announce is made once (registering peers).
    Once,
    /// The peer announces again when its client would (the cadence, or a retry).
    Follow,
    /// The connection sends another random peer's announce at once (closed loop).
    Closed,
}

/// An announce in flight.
#[derive(Clone, Copy, Debug)]
struct Job {
    peer: u32,
    due: Instant,
    sent: Instant,
    record: bool,
}

/// A kept-alive connection to the tracker from one source address.
struct Conn {
    source: Ipv4Addr,
    stream: Option<TcpStream>,
    connecting: bool,
    job: Option<Job>,
    written: usize,
    inbuf: Vec<u8>,
}

/// One thread's peers, connections and figures.
pub struct Engine {
    tracker: SocketAddrV4,
    pub peers: Vec<Peer>,
    conns: Vec<Conn>,
    heap: BinaryHeap<Reverse<(Instant, u32)>>,
    /// Due announces waiting for a connection, one queue per connection: a peer always
    /// announces over its home connection ([`Engine::home`]), so from one source address,
    /// as a real host does (the tracker binds a peer id to the address that first used it).
    ready: Vec<VecDeque<(Instant, u32)>>,
    /// Per class of peers.
    pub figures: Vec<Figures>,
    timeout: Duration,
    rng: Rng,
    /// Announces due in this window are counted.
    window: (Instant, Instant),
    /// Whole answers are decoded into [`AnnounceResponse`] (the cadence needs it); a closed
    /// loop only checks that they are JSON, which costs the generator less.
    decode: bool,
    piece: Vec<u8>,
}

impl Engine {
    /// An engine for `peers`, over one connection from each of `sources`, counting into
    /// `classes` classes of figures.
    pub fn new(
        tracker: SocketAddrV4,
        peers: Vec<Peer>,
        sources: &[Ipv4Addr],
        classes: usize,
        timeout: Duration,
        seed: u64,
    ) -> Engine {
        let now = Instant::now();
        Engine {
            tracker,
            peers,
            conns: sources
                .iter()
                .map(|&source| Conn {
                    source,
                    stream: None,
                    connecting: false,
                    job: None,
                    written: 0,
                    inbuf: Vec::new(),
                })
                .collect(),
            heap: BinaryHeap::new(),
            ready: vec![VecDeque::new(); sources.len().max(1)],
            figures: vec![Figures::default(); classes],
            timeout,
            rng: Rng::new(seed),
            window: (now, now),
            decode: true,
            piece: vec![0; READ_PIECE],
        }
    }

    /// Peer `peer` announces at `at`.
    pub fn schedule(&mut self, peer: usize, at: Instant) {
        self.heap.push(Reverse((at, peer as u32)));
    }

    /// The connection peer `peer` always announces over.
    fn home(&self, peer: u32) -> usize {
        peer as usize % self.ready.len()
    }

    /// A random peer whose home is connection `home` (none when it has no peers).
    fn random_peer_of(&mut self, home: usize) -> Option<u32> {
        let homes = self.ready.len();
        let of_home = (self.peers.len() + homes - 1 - home) / homes;
        (of_home > 0).then(|| (home + homes * self.rng.below(of_home)) as u32)
    }

    /// A draw in [0, 1) from the engine's generator.
    pub fn unit(&mut self) -> f64 {
        self.rng.unit()
    }

    /// How long an announce may wait for a connection and its answer; returns the old one.
    pub fn set_timeout(&mut self, timeout: Duration) -> Duration {
        std::mem::replace(&mut self.timeout, timeout)
    }

    /// Takes the figures counted so far, leaving empty ones.
    pub fn take_figures(&mut self) -> Vec<Figures> {
        let classes = self.figures.len();
        std::mem::replace(&mut self.figures, vec![Figures::default(); classes])
    }

    /// Runs until `until` (for [`Policy::Once`], until every scheduled announce is made or
    /// `until`), counting the announces due from `from`; those in flight at the end are
    /// waited for, up to the timeout.
    pub fn run(&mut self, from: Instant, until: Instant, policy: Policy) {
        self.window = (from, until);
        self.decode = policy != Policy::Closed;
        if policy == Policy::Closed {
            let now = Instant::now();
            for i in 0..self.conns.len() {
                if let Some(peer) = self.random_peer_of(i) {
                    self.ready[i].push_back((now, peer));
                }
            }
        }
        let mut fds_of: Vec<usize> = Vec::new();
        loop {
            let now = Instant::now();
            let stopping = now >= until;
            if !stopping {
                while let Some(&Reverse((at, peer))) = self.heap.peek() {
                    if at > now {
                        break;
                    }
                    self.heap.pop();
                    let home = self.home(peer);
                    self.ready[home].push_back((at, peer));
                }
            }
            // An announce that waited for a connection past its timeout is not answered:
            // a client of its own would have given up too.
            for home in 0..self.ready.len() {
                while let Some(&(due, peer)) = self.ready[home].front() {
                    if due + self.timeout > now {
                        break;
                    }
                    self.ready[home].pop_front();
                    self.ended(
                        peer,
                        due,
                        due >= self.window.0,
                        Outcome::Timeout,
                        None,
                        policy,
                    );
                }
            }
            if !stopping {
                for i in 0..self.conns.len() {
                    if self.conns[i].job.is_none()
                        && let Some((due, peer)) = self.ready[i].pop_front()
                    {
                        self.start(i, due, peer, policy);
                    }
                }
            }
            let busy = self.conns.iter().any(|c| c.job.is_some());
            let drained = self.heap.is_empty() && self.ready.iter().all(VecDeque::is_empty);
            if !busy && (stopping || (policy == Policy::Once && drained)) {
                break;
            }
            // Wait for sockets, at most until the next due announce or deadline.
            let now = Instant::now();
            let mut wake = now + MAX_POLL;
            if let Some(&Reverse((at, _))) = self.heap.peek() {
                wake = wake.min(at);
            }
            for c in &self.conns {
                if let Some(job) = c.job {
                    wake = wake.min(job.sent + self.timeout);
                }
            }
            fds_of.clear();
            let mut fds: Vec<PollFd<'_>> = Vec::new();
            for (i, c) in self.conns.iter().enumerate() {
                if let (Some(stream), Some(job)) = (&c.stream, c.job) {
                    let writing = c.connecting
                        || c.written < self.peers[job.peer as usize].request.bytes.len();
                    let flags = if writing {
                        PollFlags::IN | PollFlags::OUT
                    } else {
                        PollFlags::IN
                    };
                    fds.push(PollFd::new(stream, flags));
                    fds_of.push(i);
                }
            }
            let left = wake.saturating_duration_since(now);
            let timeout = Timespec {
                tv_sec: left.as_secs() as _,
                tv_nsec: left.subsec_nanos() as _,
            };
            // An error (EINTR) only means looking at the sockets sooner.
            let _ = rustix::event::poll(&mut fds, Some(&timeout));
            let events: Vec<(usize, PollFlags)> = fds
                .iter()
                .zip(&fds_of)
                .map(|(fd, &i)| (i, fd.revents()))
                .filter(|(_, r)| !r.is_empty())
                .collect();
            drop(fds);
            for (i, revents) in events {
                self.progress(i, revents, policy);
            }
            let now = Instant::now();
            for i in 0..self.conns.len() {
                if let Some(job) = self.conns[i].job
                    && job.sent + self.timeout <= now
                {
                    self.fail(i, Outcome::Timeout, policy);
                }
            }
        }
        // What was due and never sent is the generator's backlog, not the tracker's.
        let (from, to) = self.window;
        for queue in &mut self.ready {
            for (due, peer) in queue.drain(..) {
                if due >= from && due < to {
                    self.figures[self.peers[peer as usize].class].unsent += 1;
                }
            }
        }
    }

    /// Starts the announce of `peer` due at `due` on connection `i`.
    fn start(&mut self, i: usize, due: Instant, peer: u32, policy: Policy) {
        let now = Instant::now();
        let record = due >= self.window.0 && due < self.window.1;
        self.peers[peer as usize].progress(now);
        if self.conns[i].stream.is_none() {
            match open(self.conns[i].source, self.tracker) {
                Ok((stream, connecting)) => {
                    self.conns[i].stream = Some(stream);
                    self.conns[i].connecting = connecting;
                }
                Err(e) => {
                    log_once(&format!(
                        "connecting from {} to {}: {e}",
                        self.conns[i].source, self.tracker
                    ));
                    self.ended(peer, due, record, Outcome::Broken, None, policy);
                    return;
                }
            }
        }
        let c = &mut self.conns[i];
        c.job = Some(Job {
            peer,
            due,
            sent: now,
            record,
        });
        c.written = 0;
        c.inbuf.clear();
        if !c.connecting {
            self.progress(i, PollFlags::OUT, policy);
        }
    }

    /// Moves connection `i` on after `revents`: finishes connecting, writes, reads, and
    /// ends the announce when its answer is whole or the connection failed.
    fn progress(&mut self, i: usize, revents: PollFlags, policy: Policy) {
        let Some(job) = self.conns[i].job else { return };
        let c = &mut self.conns[i];
        let Some(stream) = &mut c.stream else { return };
        if c.connecting {
            if !revents.intersects(PollFlags::OUT | PollFlags::ERR | PollFlags::HUP) {
                return;
            }
            match rustix::net::sockopt::socket_error(&*stream) {
                Ok(Ok(())) => c.connecting = false,
                Ok(Err(e)) | Err(e) => {
                    log_once(&format!("connecting to {}: {e}", self.tracker));
                    return self.fail(i, Outcome::Broken, policy);
                }
            }
        }
        // Read before writing: a refusal (503) comes before the request is read.
        let mut eof = false;
        loop {
            match stream.read(&mut self.piece) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => c.inbuf.extend_from_slice(&self.piece[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        match frame(&c.inbuf) {
            Ok(Framed::Whole {
                status,
                head_len,
                len,
                close,
                retry_after,
            }) => {
                return self.answered(i, status, head_len, len, close || eof, retry_after, policy);
            }
            Ok(Framed::Partial) if eof => return self.fail(i, Outcome::Broken, policy),
            Ok(Framed::Partial) => {}
            Err(e) => {
                log_once(&e);
                return self.fail(i, Outcome::Broken, policy);
            }
        }
        let bytes = &self.peers[job.peer as usize].request.bytes;
        while c.written < bytes.len() {
            match stream.write(&bytes[c.written..]) {
                Ok(n) => c.written += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // The answer may still be on its way (a refusal, then a reset): poll on.
                Err(_) => break,
            }
        }
    }

    /// Ends the announce on connection `i` with the whole answer at the start of its buffer.
    #[allow(clippy::too_many_arguments)]
    fn answered(
        &mut self,
        i: usize,
        status: u16,
        head_len: usize,
        len: usize,
        close: bool,
        retry_after: Option<u64>,
        policy: Policy,
    ) {
        let c = &mut self.conns[i];
        let job = c.job.take().expect("an answer ends a job");
        let body = &c.inbuf[head_len..len];
        let (outcome, answer) = match status {
            200 if self.decode => match serde_json::from_slice::<AnnounceResponse>(body) {
                Ok(answer) => (Outcome::Answered, Some(answer)),
                Err(e) => {
                    log_once(&format!("an announce answer does not decode: {e}"));
                    (Outcome::BadAnswer, None)
                }
            },
            200 => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Ok(_) => (Outcome::Answered, None),
                Err(_) => (Outcome::BadAnswer, None),
            },
            status => (Outcome::Status(status), None),
        };
        let body_len = len - head_len;
        // Anything past the answer was not asked for: start afresh.
        if close || c.inbuf.len() > len {
            c.stream = None;
        }
        c.inbuf.clear();
        let latency = Instant::now().saturating_duration_since(job.due);
        if job.record {
            let class = self.peers[job.peer as usize].class;
            self.figures[class].count(outcome, latency, body_len);
        }
        self.after(job.peer, outcome, answer.as_ref(), retry_after, policy);
    }

    /// Ends the announce on connection `i` with `outcome`, and drops the connection.
    fn fail(&mut self, i: usize, outcome: Outcome, policy: Policy) {
        let c = &mut self.conns[i];
        c.stream = None;
        c.connecting = false;
        c.inbuf.clear();
        if let Some(job) = c.job.take() {
            self.ended(job.peer, job.due, job.record, outcome, None, policy);
        }
    }

    /// Counts an announce that ended without an answer, and schedules what follows it.
    fn ended(
        &mut self,
        peer: u32,
        due: Instant,
        record: bool,
        outcome: Outcome,
        retry_after: Option<u64>,
        policy: Policy,
    ) {
        if record && due < self.window.1 {
            let class = self.peers[peer as usize].class;
            self.figures[class].count(outcome, Duration::ZERO, 0);
        }
        self.after(peer, outcome, None, retry_after, policy);
    }

    /// Schedules what follows an announce of `peer` that ended with `outcome`.
    fn after(
        &mut self,
        peer: u32,
        outcome: Outcome,
        answer: Option<&AnnounceResponse>,
        retry_after: Option<u64>,
        policy: Policy,
    ) {
        let now = Instant::now();
        if let Some(answer) = answer {
            let p = &mut self.peers[peer as usize];
            p.period = cadence(answer, p.phase);
        }
        match policy {
            Policy::Once => {}
            Policy::Closed => {
                let home = self.home(peer);
                if let Some(next) = self.random_peer_of(home) {
                    self.ready[home].push_back((now, next));
                }
            }
            Policy::Follow => {
                let jitter = self.rng.unit();
                let p = &mut self.peers[peer as usize];
                let wait = match answer {
                    Some(_) => {
                        p.attempt = 0;
                        p.period
                    }
                    None => {
                        let (wait, attempt) =
                            after_failure(outcome, p.attempt, retry_after, p.period, jitter);
                        p.attempt = attempt;
                        wait
                    }
                };
                self.heap.push(Reverse((now + wait, peer)));
            }
        }
    }
}

/// A non-blocking connection from `source` to `tracker`, and whether it is still connecting.
fn open(source: Ipv4Addr, tracker: SocketAddrV4) -> std::io::Result<(TcpStream, bool)> {
    let fd = rustix::net::socket_with(
        AddressFamily::INET,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    rustix::net::bind(&fd, &SocketAddrV4::new(source, 0))?;
    let connecting = match rustix::net::connect(&fd, &SocketAddr::V4(tracker)) {
        Ok(()) => false,
        Err(Errno::INPROGRESS) => true,
        Err(e) => return Err(e.into()),
    };
    let stream = TcpStream::from(fd);
    stream.set_nodelay(true)?;
    Ok((stream, connecting))
}

/// Logs `what` the first time a message of its kind (its first 40 bytes) is seen in this
/// process, so a failing tracker does not flood the generator's output.
pub fn log_once(what: &str) {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static SEEN: Mutex<Option<HashSet<String>>> = Mutex::new(None);
    let key: String = what.chars().take(40).collect();
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    if seen.get_or_insert_with(HashSet::new).insert(key) {
        eprintln!("tracker_load: {what}");
    }
}
