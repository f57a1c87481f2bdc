//! A connection worker: one thread, one socket to one source. It shakes hands, keeps the
//! requests the scheduler sends in flight, verifies every chunk against the manifest,
//! writes it to the store at its offset, and reports each outcome as a [`Report`], and
//! what the source says it gained (`Gained`, pushed at any time between replies) as soon
//! as it arrives: an idle worker waits on its socket and its job channel at once
//! ([`crate::wake`]). It decides nothing: which chunk to ask for comes from the plan,
//! through the scheduler.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, unbounded};

use crate::bitfield::Bitfield;
use crate::manifest::{AssetId, Manifest};
use crate::ratelimit::{self, RateLimiter};
use crate::store::Partial;
use crate::sync::{LockExt, RwLockExt};
use crate::wake::{self, Wait, Waker};
use crate::wire::{
    self, GAINED_VERSION, MIN_PROTOCOL_VERSION, Message, PROTOCOL_VERSION, WireError,
    chunk_frame_limit, code,
};

use super::sources::End;

/// Connecting to a peer on a LAN takes milliseconds; one that takes 5 s is of no use.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time a peer has, from the connect, to answer the handshake with its `Welcome` and its
/// first `Have`: two small frames, many round trips on any network peers share, and well
/// within the 1-2 s a server under load gives a `Hello` before it closes. A peer that stays
/// silent or stalls after its `Welcome` used to cost the 10 s chunk timeout.
pub(crate) const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// An idle connection asks for its source's have list this often, which keeps the
/// connection inside the server's 30 s idle timeout. For a version-2 source it is also the
/// safety refresh: such a source pushes what it gains, except a partial asset served from
/// a store rather than from a download in progress (it grows only by a download in
/// another process, whose own server pushes), so its news is at most 10 s late.
const KEEPALIVE: Duration = Duration::from_secs(10);
/// An idle connection to a version-1 source that is still downloading asks this often, as
/// version-1 clients did: such a source pushes nothing. At 25 MiB/s a peer gains a 256 KiB
/// chunk every 10 ms; a tenth of a second keeps the lag to a few chunks.
const LEGACY_REFRESH: Duration = Duration::from_millis(100);

/// A connection's socket, shared with the scheduler once connected (the latest one: a
/// version-1 server is connected to twice).
pub(crate) type Socket = Arc<Mutex<Option<TcpStream>>>;

/// The ticket to present to peers, renewed by every announce (empty in open mode).
pub(crate) type Ticket = Arc<RwLock<Vec<u8>>>;

/// What a connection worker reports.
#[derive(Debug)]
pub(crate) enum Report {
    /// Handshake or keepalive done; the source holds these chunks.
    Ready {
        /// The connection.
        conn: usize,
        /// What its source holds.
        have: Bitfield,
        /// From the have request sent to the whole answer, on a connection with nothing
        /// else in flight: a round trip (and a small frame). `None` from a web seed, which
        /// has no such exchange.
        rtt: Option<Duration>,
    },
    /// The source says it gained these chunks (each below the chunk count).
    Gained {
        /// The connection.
        conn: usize,
        /// The chunks.
        indices: Vec<u32>,
    },
    /// Chunk verified and written.
    Done {
        /// The connection.
        conn: usize,
        /// The chunk.
        index: u32,
    },
    /// The source does not hold, or will not now send, this chunk.
    Refused {
        /// The connection.
        conn: usize,
        /// The chunk.
        index: u32,
    },
    /// The source dropped this request, as asked: the chunk came from another source.
    Cancelled {
        /// The connection.
        conn: usize,
        /// The chunk.
        index: u32,
    },
    /// The connection is over, and why.
    Closed {
        /// The connection.
        conn: usize,
        /// Why.
        end: End,
    },
}

/// What the scheduler asks of a connection's worker.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Job {
    /// Request this chunk.
    Fetch(u32),
    /// The chunk came from elsewhere: cancel the request, if still unanswered.
    Cancel(u32),
}

/// The scheduler's end of a worker's job channel: each job sent wakes the worker if it is
/// idle. Dropping it ends the worker (after its requests in flight are answered).
pub(crate) struct Jobs {
    // Dropped before the waker, so that the worker woken by the close finds the channel
    // closed.
    tx: Sender<Job>,
    waker: Waker,
}

/// The worker's end of its job channel.
pub(crate) struct JobsRx {
    rx: Receiver<Job>,
    wait: Wait,
}

/// A job channel whose sends wake its idle worker.
pub(crate) fn jobs() -> std::io::Result<(Jobs, JobsRx)> {
    let (waker, wait) = wake::pair()?;
    let (tx, rx) = unbounded();
    Ok((Jobs { tx, waker }, JobsRx { rx, wait }))
}

impl JobsRx {
    /// The jobs, for a worker that waits on nothing else (a web seed: its socket is
    /// ureq's, and is read only while an answer is due).
    pub(crate) fn channel(&self) -> &Receiver<Job> {
        &self.rx
    }
}

impl Jobs {
    /// Sends a job; false when the worker is gone.
    pub(crate) fn send(&self, job: Job) -> bool {
        let sent = self.tx.send(job).is_ok();
        self.waker.wake();
        sent
    }
}

/// How a handshake failed.
enum Handshake {
    /// The source speaks an older protocol only: say `Hello` again in version 1.
    Older,
    /// The connection is over.
    Ended(End),
}

/// One connection to one source.
pub(crate) struct Worker {
    /// The plan's id of this connection.
    pub(crate) conn: usize,
    /// Where to leave a handle on the socket as soon as it is connected, for the
    /// scheduler to shut down a wait that is no longer needed (a handshake included).
    pub(crate) socket: Socket,
    /// The ticket to present, as of the latest announce.
    pub(crate) ticket: Ticket,
    /// Where the source listens.
    pub(crate) addr: String,
    /// The asset.
    pub(crate) asset: AssetId,
    /// Its manifest, to verify chunks against.
    pub(crate) manifest: Arc<Manifest>,
    /// The store's content file, where verified chunks are written.
    pub(crate) data: Arc<File>,
    /// How long a reply may take to arrive whole.
    pub(crate) chunk_timeout: Duration,
    /// How long the connect, the `Welcome` and the first `Have` may take together.
    pub(crate) handshake_timeout: Duration,
    /// The download cap, if any.
    pub(crate) limiter: Option<Arc<RateLimiter>>,
    /// Where reports go.
    pub(crate) tell: Box<dyn Fn(Report) + Send>,
}

/// Describes a socket error, naming a timeout as one (a timed-out socket says "os error 11").
fn socket_error(phase: &str, e: &std::io::Error, timeout: Duration) -> String {
    if crate::net::is_timeout(e) {
        // To the millisecond: a deadline's remainder reads 1.999997226s otherwise.
        let shown = Duration::from_millis((timeout.as_micros() as u64).div_ceil(1000));
        format!("{phase} timed out after {shown:?}")
    } else {
        format!("{phase}: {e}")
    }
}

/// Whether a read of the answer to `Hello` failed because the source closed or reset the
/// connection before sending a byte of it.
fn closed_at_once(e: &WireError) -> bool {
    match e {
        WireError::Closed => true,
        WireError::Io(e) => matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

impl Worker {
    /// Runs the connection until the scheduler closes its jobs or the source fails.
    pub(crate) fn run(self, jobs: JobsRx) {
        let end = self.session(&jobs);
        // The scheduler's handle would keep the descriptor open for the whole download.
        self.socket.locked().take();
        (self.tell)(Report::Closed {
            conn: self.conn,
            end,
        });
    }

    /// Adds a job's frame to those about to be sent. Under a download cap the allowance for
    /// a chunk is taken before asking, so a source never has a chunk waiting on a client
    /// that is asleep. A cancel goes out only for a request still unanswered; the request
    /// stays in flight until its reply (`Cancelled`, or the chunk if the cancel came late).
    fn queue(
        &self,
        job: Job,
        conn: &mut wire::Conn,
        in_flight: &mut VecDeque<u32>,
        cancelled: &mut HashSet<u32>,
    ) -> std::io::Result<()> {
        match self.frame_for(job, in_flight, cancelled) {
            Some(message) => conn.queue(&message),
            None => Ok(()),
        }
    }

    /// The frame a job sends, if any, with the job taken into the connection's books (see
    /// [`Worker::queue`]).
    fn frame_for(
        &self,
        job: Job,
        in_flight: &mut VecDeque<u32>,
        cancelled: &mut HashSet<u32>,
    ) -> Option<Message<'static>> {
        match job {
            Job::Fetch(index) => {
                ratelimit::take(
                    self.limiter.as_deref(),
                    self.manifest.chunk_len(index) as u64,
                );
                in_flight.push_back(index);
                Some(Message::Request { index })
            }
            Job::Cancel(index) if in_flight.contains(&index) => {
                cancelled.insert(index);
                Some(Message::Cancel { index })
            }
            Job::Cancel(_) => None,
        }
    }

    /// Reports chunks the source says it gained; one out of range is a lie.
    fn take_gained(&self, indices: Vec<u32>) -> Result<(), End> {
        let count = self.manifest.chunk_count();
        if let Some(bad) = indices.iter().find(|&&i| i >= count) {
            return Err(End::Lied(format!(
                "said it gained chunk {bad} of an asset of {count} chunks"
            )));
        }
        (self.tell)(Report::Gained {
            conn: self.conn,
            indices,
        });
        Ok(())
    }

    /// Sends HaveRequest and reports the answer, which must arrive whole within `timeout`;
    /// returns whether the source is complete.
    fn refresh_have(&self, conn: &mut wire::Conn, timeout: Duration) -> Result<bool, End> {
        let asked = Instant::now();
        conn.send(&Message::HaveRequest).map_err(|e| {
            End::Failed(socket_error(
                "sending a have request",
                &e,
                self.chunk_timeout,
            ))
        })?;
        self.read_have(conn, asked, timeout)
    }

    /// Reads and reports the answer to the have request sent at `asked`, which must arrive
    /// whole within `timeout`; returns whether the source is complete.
    fn read_have(
        &self,
        conn: &mut wire::Conn,
        asked: Instant,
        timeout: Duration,
    ) -> Result<bool, End> {
        let count = self.manifest.chunk_count();
        // Every reply must arrive whole within the chunk timeout of our starting to wait for
        // it, so a source trickling a byte at a time is as stalled as a silent one. Pushes
        // before it are taken in as they come.
        let mut lie = Ok(());
        let reply = conn.recv_reply(timeout, true, |indices| {
            if lie.is_ok() {
                lie = self.take_gained(indices);
            }
        });
        lie?;
        match reply {
            Ok(Message::Have(have)) if have.len() == count => {
                let complete = have.is_full();
                (self.tell)(Report::Ready {
                    conn: self.conn,
                    have,
                    rtt: Some(asked.elapsed()),
                });
                Ok(complete)
            }
            Ok(Message::Error { code, message }) => Err(End::Failed(format!(
                "refused the have request (code {code}): {message}"
            ))),
            Ok(other) => Err(End::Lied(format!(
                "answered a have request with {}",
                other.name()
            ))),
            Err(e) if e.is_timeout() => Err(End::Failed(format!(
                "stalled: no have list within {timeout:?}"
            ))),
            Err(e) => Err(End::Failed(format!("reading its have list: {e}"))),
        }
    }

    /// Connects and says `Hello` in `version` by `deadline`, with the first have request
    /// behind it; the connection, the version it speaks and when the have request went out
    /// (its answer is the caller's to read).
    fn handshake(
        &self,
        addr: SocketAddr,
        version: u16,
        deadline: Instant,
    ) -> Result<(wire::Conn, u16, Instant), Handshake> {
        let ended = |end| Err(Handshake::Ended(end));
        let left = || deadline.saturating_duration_since(Instant::now());
        let connect_within = CONNECT_TIMEOUT.min(left()).max(Duration::from_millis(1));
        let stream = match TcpStream::connect_timeout(&addr, connect_within) {
            Ok(s) => s,
            Err(e) => {
                return ended(End::Unreachable(socket_error(
                    "unreachable",
                    &e,
                    connect_within,
                )));
            }
        };
        if let Ok(handle) = stream.try_clone() {
            *self.socket.locked() = Some(handle);
        }
        if let Err(e) = stream
            .set_write_timeout(Some(self.chunk_timeout))
            .and_then(|()| stream.set_nodelay(true))
        {
            return ended(End::Failed(format!("configuring the socket: {e}")));
        }
        let hello = Message::Hello {
            version,
            asset: self.asset,
            ticket: self.ticket.read_now().clone(),
        };
        let mut conn = wire::Conn::new(stream, chunk_frame_limit(self.manifest.chunk_size));
        // The first have request goes out with the `Hello`, in the same segment: a server
        // reads no byte past the frame at hand (its lobby neither, `net::accept_greeted`),
        // so the request waits in the socket until the `Welcome` is written, and the
        // handshake costs one round trip instead of two (50 ms of every connection's start
        // at a 50 ms RTT). A server that refuses the `Hello` drains it with its linger-close.
        let sent = conn
            .queue(&hello)
            .and_then(|()| conn.queue(&Message::HaveRequest))
            .and_then(|()| conn.flush());
        if let Err(e) = sent {
            return ended(End::Failed(socket_error(
                "sending the handshake",
                &e,
                self.chunk_timeout,
            )));
        }
        let asked = Instant::now();
        let count = self.manifest.chunk_count();
        // At least a millisecond: a zero timeout would mean none.
        let spoken = match conn.recv_control(left().max(Duration::from_millis(1))) {
            // A server answers in the highest version both speak.
            Ok(Message::Welcome {
                chunk_count,
                version: spoken,
            }) if chunk_count == count => spoken.min(version),
            Ok(Message::Welcome { chunk_count, .. }) => {
                return ended(End::Lied(format!(
                    "it says the asset has {chunk_count} chunks, the manifest says {count}"
                )));
            }
            Ok(Message::Error {
                code: code::UNSUPPORTED_VERSION,
                ..
            }) if version > MIN_PROTOCOL_VERSION => return Err(Handshake::Older),
            Ok(Message::Error {
                code: code::SERVER_BUSY,
                message,
            }) => return ended(End::Busy(message)),
            Ok(Message::Error { code, message }) => {
                return ended(End::Failed(format!(
                    "refused the handshake (code {code}): {message}"
                )));
            }
            Ok(other) => {
                return ended(End::Lied(format!(
                    "answered the handshake with {}",
                    other.name()
                )));
            }
            Err(e) if e.is_timeout() => {
                return ended(End::Failed(format!(
                    "stalled: no handshake within {:?}",
                    self.handshake_timeout
                )));
            }
            // A source that closes (or resets) right after the connect, before any answer,
            // is one with no slot for us, as servers were that closed unanswered: busy,
            // worth a pause and a retry, not a failure that gives an origin up.
            Err(e) if closed_at_once(&e) => {
                return ended(End::Busy(format!(
                    "closed the connection before answering Hello ({e}); taken as busy"
                )));
            }
            Err(e) => return ended(End::Failed(format!("handshake: {e}"))),
        };
        Ok((conn, spoken, asked))
    }

    /// Reads what an idle connection's source sent unasked: a `Gained`, or a last `Error`.
    fn unsolicited(&self, conn: &mut wire::Conn) -> Result<(), End> {
        match conn.recv_control(self.chunk_timeout) {
            Ok(Message::Gained { indices }) => self.take_gained(indices),
            // An idle connection whose slot went to a newcomer: busy, not a failure.
            Ok(Message::Error {
                code: code::SERVER_BUSY,
                message,
            }) => Err(End::Busy(message)),
            Ok(Message::Error { code, message }) => {
                Err(End::Failed(format!("closed with error {code}: {message}")))
            }
            Ok(other) => Err(End::Lied(format!("sent {} unasked", other.name()))),
            Err(WireError::Closed) => Err(End::Failed("closed the connection".into())),
            Err(e) if e.is_timeout() => Err(End::Failed(format!(
                "stalled: a frame begun did not arrive within {:?}",
                self.chunk_timeout
            ))),
            Err(e) => Err(End::Failed(format!("reading what it sent: {e}"))),
        }
    }

    /// Until the source's next reply begins to arrive (or `due_by`, which the read of the
    /// reply then reports), sends the requests the scheduler adds meanwhile. A worker that
    /// sent only between replies held a request back for a whole reply: at the start of a
    /// connection the scheduler's first jobs reach the worker one at a time, the first went
    /// out alone and the others waited a round trip for its chunk (one request instead of
    /// four in the first round at 50 ms), and later every new request waited for the
    /// chunk being received. The socket is only polled, never read: a read takes no byte
    /// past the frame at hand ([`wire::Conn`]), so what is readable is a reply's start.
    fn send_while_waiting(
        &self,
        jobs: &JobsRx,
        conn: &mut wire::Conn,
        in_flight: &mut VecDeque<u32>,
        cancelled: &mut HashSet<u32>,
        due_by: Instant,
    ) -> Result<(), End> {
        loop {
            // Armed before looking, so that a job sent after the look wakes the poll.
            jobs.wait.arm();
            let mut queued = Ok(());
            let mut open = true;
            while queued.is_ok() {
                match jobs.rx.try_recv() {
                    Ok(job) => queued = self.queue(job, conn, in_flight, cancelled),
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            if let Err(e) = queued.and_then(|()| conn.flush()) {
                return Err(End::Failed(socket_error(
                    "sending requests",
                    &e,
                    self.chunk_timeout,
                )));
            }
            let left = due_by.saturating_duration_since(Instant::now());
            // Closed: no job comes any more (and the wake-up socket would poll readable for
            // ever); only the replies in flight are left to read.
            if !open || left.is_zero() {
                return Ok(());
            }
            let woken = jobs
                .wait
                .poll(conn.stream().as_fd(), left)
                .map_err(|e| End::Local(format!("waiting for a reply: {e}")))?;
            if woken.woken {
                let _ = jobs.wait.clear();
            }
            if woken.socket || !woken.woken {
                return Ok(());
            }
        }
    }

    fn session(&self, jobs: &JobsRx) -> End {
        let addr: SocketAddr = match self.addr.parse() {
            Ok(a) => a,
            Err(_) => {
                return End::Failed(format!("tracker gave an invalid address {:?}", self.addr));
            }
        };
        // A version-1 server refuses a version-2 `Hello`; it is asked again in version 1,
        // by the same deadline.
        let deadline = Instant::now() + self.handshake_timeout;
        let (mut conn, version, asked) = match self.handshake(addr, PROTOCOL_VERSION, deadline) {
            Ok(done) => done,
            Err(Handshake::Older) => match self.handshake(addr, MIN_PROTOCOL_VERSION, deadline) {
                Ok(done) => done,
                Err(Handshake::Ended(end)) => return end,
                Err(Handshake::Older) => unreachable!("version 1 is the oldest"),
            },
            Err(Handshake::Ended(end)) => return end,
        };
        let pushes = version >= GAINED_VERSION;
        // The first Have is part of the handshake, and due by its deadline.
        let first_have = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        // Its time counts from the `Hello`: one round trip and the server's handshake (a
        // ticket check of tens of microseconds), the connection's first round-trip sample.
        let mut complete = match self.read_have(&mut conn, asked, first_have) {
            Ok(complete) => complete,
            Err(end) => return end,
        };
        let refresh_every = |complete: bool| {
            if pushes || complete {
                KEEPALIVE
            } else {
                LEGACY_REFRESH
            }
        };
        let mut next_refresh = Instant::now() + refresh_every(complete);
        // Requests sent and not yet answered, oldest first: replies come in request order.
        // Every chunk is received into the connection's one buffer, verified and written
        // from it.
        let mut in_flight: VecDeque<u32> = VecDeque::new();
        // Requests in flight that this connection asked the source to cancel.
        let mut cancelled = HashSet::new();
        loop {
            if in_flight.is_empty() {
                // Armed before looking, so that a job sent after the look wakes the poll.
                jobs.wait.arm();
                match jobs.rx.try_recv() {
                    Ok(job) => {
                        if let Err(e) = self.queue(job, &mut conn, &mut in_flight, &mut cancelled) {
                            return End::Failed(socket_error(
                                "sending requests",
                                &e,
                                self.chunk_timeout,
                            ));
                        }
                    }
                    Err(TryRecvError::Disconnected) => return End::Finished,
                    Err(TryRecvError::Empty) => {
                        let now = Instant::now();
                        if now >= next_refresh {
                            complete = match self.refresh_have(&mut conn, self.chunk_timeout) {
                                Ok(complete) => complete,
                                Err(end) => return end,
                            };
                            next_refresh = Instant::now() + refresh_every(complete);
                            continue;
                        }
                        let woken = match jobs.wait.poll(conn.stream().as_fd(), next_refresh - now)
                        {
                            Ok(woken) => woken,
                            Err(e) => return End::Local(format!("waiting for work: {e}")),
                        };
                        if woken.woken {
                            // A job, or the scheduler closed the channel: the look above sees.
                            let _ = jobs.wait.clear();
                        }
                        if woken.socket
                            && let Err(end) = self.unsolicited(&mut conn)
                        {
                            return end;
                        }
                        continue;
                    }
                }
            }
            let mut queued = Ok(());
            while queued.is_ok()
                && let Ok(job) = jobs.rx.try_recv()
            {
                queued = self.queue(job, &mut conn, &mut in_flight, &mut cancelled);
            }
            if let Err(e) = queued.and_then(|()| conn.flush()) {
                return End::Failed(socket_error("sending requests", &e, self.chunk_timeout));
            }
            // Only a cancel of an answered request came: nothing to wait for.
            let Some(&expected) = in_flight.front() else {
                continue;
            };
            let due_by = Instant::now() + self.chunk_timeout;
            if let Err(end) =
                self.send_while_waiting(jobs, &mut conn, &mut in_flight, &mut cancelled, due_by)
            {
                return end;
            }
            let left = due_by
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1));
            let mut lie = Ok(());
            // Jobs that come while the reply arrives go out at once: a cancel of a request
            // queued behind this one reaches the source before it starts on that chunk.
            let reply = conn.recv_reply_sending(
                left,
                |indices| {
                    if lie.is_ok() {
                        lie = self.take_gained(indices);
                    }
                },
                || loop {
                    let job = jobs.rx.try_recv().ok()?;
                    if let Some(message) = self.frame_for(job, &mut in_flight, &mut cancelled) {
                        return Some(message);
                    }
                },
            );
            if let Err(end) = lie {
                return end;
            }
            let message = match reply {
                Ok(m) => m,
                Err(e) if e.is_timeout() => {
                    return End::Failed(format!(
                        "stalled: chunk {expected} did not arrive within {:?}",
                        self.chunk_timeout
                    ));
                }
                Err(WireError::Closed) => {
                    return End::Failed(format!("closed the connection with chunk {expected} due"));
                }
                Err(e) => return End::Failed(format!("receiving chunk {expected}: {e}")),
            };
            match message {
                Message::Chunk { index, data } if index == expected => {
                    in_flight.pop_front();
                    cancelled.remove(&index);
                    if !self.manifest.chunk_matches(index, &data) {
                        return End::Lied(format!("sent chunk {index} with the wrong SHA-256"));
                    }
                    if let Err(e) =
                        Partial::write_at(&self.data, &data, self.manifest.chunk_offset(index))
                    {
                        let hint = if e.kind() == std::io::ErrorKind::StorageFull {
                            " (the disk is full)"
                        } else {
                            ""
                        };
                        return End::Local(format!(
                            "writing chunk {index} to the store failed{hint}: {e}"
                        ));
                    }
                    (self.tell)(Report::Done {
                        conn: self.conn,
                        index,
                    });
                }
                Message::Chunk { index, .. } => {
                    return End::Lied(format!("sent chunk {index} when chunk {expected} was due"));
                }
                Message::Cancelled { index } if index == expected && cancelled.remove(&index) => {
                    in_flight.pop_front();
                    // The allowance taken for it under a download cap was not used.
                    if let Some(limiter) = &self.limiter {
                        limiter.give_back(self.manifest.chunk_len(index) as u64);
                    }
                    (self.tell)(Report::Cancelled {
                        conn: self.conn,
                        index,
                    });
                }
                Message::DontHave { index } | Message::Busy { index } if index == expected => {
                    in_flight.pop_front();
                    cancelled.remove(&index);
                    (self.tell)(Report::Refused {
                        conn: self.conn,
                        index,
                    });
                }
                Message::Error { code, message } => {
                    return End::Failed(format!(
                        "error {code} with chunk {expected} due: {message}"
                    ));
                }
                other => {
                    return End::Lied(format!(
                        "answered a request for chunk {expected} with {}",
                        other.name()
                    ));
                }
            }
        }
    }
}
