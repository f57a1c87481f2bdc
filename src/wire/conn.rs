//! A peer connection: the socket, the buffer each frame is read into, the frame limit and
//! the per-frame deadline in one [`Conn`], so that callers send and receive messages
//! instead of passing `(stream, limit, deadline, &mut buf)` around. Frames are cut and
//! decoded by the [`codec`] alone; this file only moves bytes.
//!
//! A read never takes a byte past the frame at hand: what has not been returned as a
//! message is still in the socket, where [`Conn::frames_waiting`] can peek at it.

use std::borrow::Borrow;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use rustix::io::Errno;
use rustix::net::RecvFlags;

use super::codec::{self, Message};
use super::codes::kind;
use super::{MAX_CONTROL_FRAME, WireError};
use crate::net::is_timeout;

/// How far ahead [`Conn::frames_waiting`] looks for whole frames: requests and cancels are
/// 9 bytes, so 4 KiB holds hundreds of them.
const PEEK_BYTES: usize = 4096;

/// One peer connection over a socket it owns (`Conn<TcpStream>`) or borrows
/// (`Conn<&TcpStream>`).
#[derive(Debug)]
pub struct Conn<S = TcpStream> {
    stream: S,
    /// Largest frame length accepted, checked before room for the frame is made.
    max_frame: u32,
    /// The frame being read, length prefix included. Reused from frame to frame, so that a
    /// download receives gigabytes of chunks through one buffer of the largest chunk frame.
    buf: Vec<u8>,
    /// Frames queued by [`Conn::queue`], sent together by [`Conn::flush`].
    out: Vec<u8>,
}

impl<S: Borrow<TcpStream>> Conn<S> {
    /// A connection over `stream` accepting frames of up to `max_frame` bytes.
    pub fn new(stream: S, max_frame: u32) -> Conn<S> {
        Conn {
            stream,
            max_frame,
            buf: Vec::new(),
            out: Vec::new(),
        }
    }

    /// The socket, for what is not a message: socket options, a chunk's data sent straight
    /// from a file after its [`chunk_header`](super::chunk_header), shutting down.
    pub fn stream(&self) -> &TcpStream {
        self.stream.borrow()
    }

    /// Reads the next message, which must arrive whole within `within` of this call: a peer
    /// trickling one byte at a time cannot hold the connection past it. A missed deadline
    /// is [`WireError::Timeout`]; a clean close between frames is [`WireError::Closed`].
    pub fn recv(&mut self, within: Duration) -> Result<Message<'_>, WireError> {
        self.recv_at_most(self.max_frame, within)
    }

    /// Reads the next message like [`Conn::recv`], one that cannot be a `Chunk`: the limit
    /// is at most [`MAX_CONTROL_FRAME`] (the answer to a `Hello` or a `HaveRequest`).
    pub fn recv_control(&mut self, within: Duration) -> Result<Message<'_>, WireError> {
        self.recv_at_most(self.max_frame.min(MAX_CONTROL_FRAME), within)
    }

    fn recv_at_most(&mut self, max_frame: u32, within: Duration) -> Result<Message<'_>, WireError> {
        let total = self.fill_before(max_frame, Instant::now() + within, within)?;
        Message::decode(&self.buf[4..total])
    }

    /// Reads the reply to a request, which must arrive whole within `within` of this call
    /// (at most [`MAX_CONTROL_FRAME`] bytes when `control`, as for [`Conn::recv_control`]).
    /// A `Gained`, which a server pushes between replies, may come first: each is handed to
    /// `gained` and the wait goes on, with the same deadline, so a peer cannot hold the wait
    /// open with pushes.
    pub fn recv_reply(
        &mut self,
        within: Duration,
        control: bool,
        gained: impl FnMut(Vec<u32>),
    ) -> Result<Message<'_>, WireError> {
        let max_frame = if control {
            self.max_frame.min(MAX_CONTROL_FRAME)
        } else {
            self.max_frame
        };
        self.reply(max_frame, within, gained, None)
    }

    /// Reads the reply to a request like [`Conn::recv_reply`], and while it waits for the
    /// reply's bytes, sends what `more` has to send: before every read of the socket (a
    /// chunk arrives in many), and at least every `SEND_TICK` while none arrives, `more`
    /// is asked for messages until it has none, and they go out at once. A `Cancel` for a
    /// request queued behind the one arriving then reaches the source while it is still
    /// sending this one, instead of after it, when the next is already on its way.
    pub fn recv_reply_sending(
        &mut self,
        within: Duration,
        gained: impl FnMut(Vec<u32>),
        mut more: impl FnMut() -> Option<Message<'static>>,
    ) -> Result<Message<'_>, WireError> {
        self.reply(self.max_frame, within, gained, Some(&mut more))
    }

    /// The wait of [`Conn::recv_reply`] and [`Conn::recv_reply_sending`] (`more`: what to
    /// send while it waits, if anything).
    fn reply(
        &mut self,
        max_frame: u32,
        within: Duration,
        mut gained: impl FnMut(Vec<u32>),
        mut more: Option<&mut dyn FnMut() -> Option<Message<'static>>>,
    ) -> Result<Message<'_>, WireError> {
        let deadline = Instant::now() + within;
        loop {
            let stream: &TcpStream = self.stream.borrow();
            let out = &mut self.out;
            let mut send = more.as_deref_mut().map(|more| {
                move || -> io::Result<()> {
                    while let Some(message) = more() {
                        refuse_over_limit(&message)?;
                        message.encode(out);
                    }
                    if out.is_empty() {
                        return Ok(());
                    }
                    let sent = (&mut &*stream).write_all(out);
                    out.clear();
                    sent
                }
            });
            let mut reader = DeadlineReader {
                stream,
                deadline,
                between: send
                    .as_mut()
                    .map(|s| s as &mut dyn FnMut() -> io::Result<()>),
            };
            let total = fill_within(&mut reader, max_frame, &mut self.buf, within)?;
            // Only the type byte is looked at before deciding, so that the reply returned
            // borrows the buffer and a `Gained` does not.
            if self.buf[4] != kind::GAINED {
                return Message::decode(&self.buf[4..total]);
            }
            if let Message::Gained { indices } = Message::decode(&self.buf[4..total])? {
                gained(indices);
            }
        }
    }

    /// Reads the next frame into the buffer by `deadline`; its length, prefix included.
    fn fill_before(
        &mut self,
        max_frame: u32,
        deadline: Instant,
        within: Duration,
    ) -> Result<usize, WireError> {
        let mut reader = DeadlineReader {
            stream: self.stream.borrow(),
            deadline,
            between: None,
        };
        fill_within(&mut reader, max_frame, &mut self.buf, within)
    }

    /// Adds a message to those [`Conn::flush`] sends together. Fails with `InvalidInput`,
    /// queueing nothing, when a field is over its limit ([`Message::over_limit`]).
    pub fn queue(&mut self, message: &Message) -> io::Result<()> {
        refuse_over_limit(message)?;
        message.encode(&mut self.out);
        Ok(())
    }

    /// Sends the queued messages, in one write when the socket takes them.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let sent = (&mut self.stream.borrow()).write_all(&self.out);
        self.out.clear();
        sent
    }

    /// Sends one message, after any queued ones.
    pub fn send(&mut self, message: &Message) -> io::Result<()> {
        self.queue(message)?;
        self.flush()
    }

    /// How many whole frames wait in the socket (counting one whose declared length is
    /// already out of bounds, which the next [`Conn::recv`] refuses at once), looking at
    /// most `PEEK_BYTES` (4 KiB) ahead and without waiting; `None` when the peer closed its side
    /// and nothing is left. Reading that many frames next does not wait.
    pub fn frames_waiting(&self) -> io::Result<Option<usize>> {
        let mut peeked = [0u8; PEEK_BYTES];
        let flags = RecvFlags::PEEK | RecvFlags::DONTWAIT;
        match rustix::net::recv(self.stream(), &mut peeked[..], flags) {
            Ok((0, _)) => Ok(None),
            Ok((n, _)) => Ok(Some(codec::whole_frames(&peeked[..n], self.max_frame))),
            Err(e) if e == Errno::AGAIN || e == Errno::INTR => Ok(Some(0)),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

fn refuse_over_limit(message: &Message) -> io::Result<()> {
    if message.over_limit() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame field over its protocol limit",
        ));
    }
    Ok(())
}

/// Writes one message as a single frame. Fails with `InvalidInput`, writing nothing, when a
/// field is over its limit (a ticket over [`MAX_TICKET`](super::MAX_TICKET), error text over
/// [`MAX_ERROR_TEXT`](super::MAX_ERROR_TEXT)).
pub fn write_message(w: &mut impl Write, message: &Message) -> io::Result<()> {
    refuse_over_limit(message)?;
    let mut frame = Vec::with_capacity(64);
    message.encode(&mut frame);
    w.write_all(&frame)
}

/// Reads one frame from any reader, refusing a declared length over `max_frame` before
/// allocating, and returns its message owning its data (for tests and tools; a peer
/// connection is a [`Conn`]). A clean close between frames is [`WireError::Closed`].
pub fn read_message(r: &mut impl Read, max_frame: u32) -> Result<Message<'static>, WireError> {
    let mut buf = Vec::new();
    let total = fill_frame(r, max_frame, &mut buf)?;
    Message::decode(&buf[4..total]).map(Message::into_owned)
}

/// Reads one frame into `buf` and decodes it; a chunk's data borrows `buf`.
#[cfg(test)]
fn read_frame<'b>(
    r: &mut impl Read,
    max_frame: u32,
    buf: &'b mut Vec<u8>,
) -> Result<Message<'b>, WireError> {
    let total = fill_frame(r, max_frame, buf)?;
    Message::decode(&buf[4..total])
}

/// Reads one frame into `buf`, which only ever grows, asking the reader for no more than
/// the codec says is missing; returns its length, prefix included.
fn fill_frame(r: &mut impl Read, max_frame: u32, buf: &mut Vec<u8>) -> Result<usize, WireError> {
    let mut filled = 0;
    let total = loop {
        let (more, total) = codec::missing(&buf[..filled], max_frame)?;
        if more == 0 {
            break total;
        }
        if buf.len() < filled + more {
            buf.resize(filled + more, 0);
        }
        match r.read(&mut buf[filled..filled + more]) {
            Ok(0) if filled == 0 => return Err(WireError::Closed),
            Ok(0) if filled < 4 => {
                return Err(WireError::Malformed(
                    "connection closed inside a frame length".into(),
                ));
            }
            Ok(0) => {
                return Err(WireError::Malformed(format!(
                    "connection closed inside a frame of {} bytes",
                    total - 4
                )));
            }
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    };
    Ok(total)
}

/// [`fill_frame`] from a reader whose deadline was `within` from its start: a read past it
/// is a [`WireError::Timeout`] naming that time.
fn fill_within(
    r: &mut DeadlineReader<'_>,
    max_frame: u32,
    buf: &mut Vec<u8>,
    within: Duration,
) -> Result<usize, WireError> {
    match fill_frame(r, max_frame, buf) {
        Err(WireError::Io(e)) if is_timeout(&e) => Err(WireError::Timeout(within)),
        other => other,
    }
}

/// How often a reply's read that waits for bytes stops to send what has come up meanwhile
/// ([`Conn::recv_reply_sending`]): a cancel held back longer than this may miss the moment
/// the source starts on its chunk. 20 ms is a tenth of a 256 KiB chunk's time at 10 Mbit/s
/// (a peer's share of its uplink in a crowd), and costs a stalled connection 50 wake-ups a
/// second; while the reply flows, reads return far more often than that anyway.
const SEND_TICK: Duration = Duration::from_millis(20);

/// A socket reader whose every read waits at most until a fixed instant, and that can run
/// `between` before each read (and every [`SEND_TICK`] while it waits).
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
    between: Option<&'a mut dyn FnMut() -> io::Result<()>>,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let left = self.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "frame deadline passed",
                ));
            }
            let Some(between) = self.between.as_mut() else {
                self.stream.set_read_timeout(Some(left))?;
                return (&mut &*self.stream).read(buf);
            };
            between()?;
            let wait = left.min(SEND_TICK);
            self.stream.set_read_timeout(Some(wait))?;
            match (&mut &*self.stream).read(buf) {
                // Only the tick passed: send what came up, and wait on.
                Err(e) if is_timeout(&e) && wait < left => continue,
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{AssetId, MAX_CHUNKS};
    use crate::wire::codec::tests::properties::{check_decoded, message};
    use crate::wire::codec::tests::{chunk, every_message, frame_of};
    use crate::wire::{MAX_ERROR_TEXT, MAX_FRAME, MAX_TICKET, code};
    use std::net::TcpListener;

    /// Both ends of a loopback connection: the accepted side, and the connecting side.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn truncated_streams_are_malformed_and_an_empty_one_is_closed() {
        for m in every_message() {
            let frame = frame_of(&m);
            for cut in 1..frame.len() {
                let result = read_message(&mut &frame[..cut], MAX_FRAME);
                assert!(
                    matches!(result, Err(WireError::Malformed(_))),
                    "{m:?} cut at {cut}: {result:?}"
                );
            }
            assert_eq!(read_message(&mut &frame[..], MAX_FRAME).unwrap(), m);
        }
        assert!(matches!(
            read_message(&mut &[][..], MAX_FRAME),
            Err(WireError::Closed)
        ));
    }

    #[test]
    fn over_limit_fields_are_refused_on_write() {
        let hello = Message::Hello {
            version: 1,
            asset: AssetId([0; 32]),
            ticket: vec![0; MAX_TICKET + 1],
        };
        let mut out = Vec::new();
        assert_eq!(
            write_message(&mut out, &hello).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let error = Message::Error {
            code: 1,
            message: "x".repeat(MAX_ERROR_TEXT + 1),
        };
        assert_eq!(
            write_message(&mut out, &error).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(out.is_empty());
        let (_server, client) = pair();
        let mut conn = Conn::new(client, MAX_FRAME);
        assert_eq!(
            conn.send(&error).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(conn.out.is_empty());
    }

    #[test]
    fn a_trickled_frame_misses_its_deadline() {
        let (stream, mut sender) = pair();
        let sender = std::thread::spawn(move || {
            // A 9-byte Request, one byte every 100 ms: each read is quick, the frame is not.
            for byte in [0u8, 0, 0, 5, 5, 0, 0, 0, 1] {
                if sender.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let started = Instant::now();
        let mut conn = Conn::new(&stream, MAX_CONTROL_FRAME);
        let result = conn.recv(Duration::from_millis(350));
        assert!(
            matches!(&result, Err(e @ WireError::Timeout(d)) if e.is_timeout() && d.as_millis() == 350),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(700));
        assert_eq!(
            result.unwrap_err().to_string(),
            "timed out after 350ms",
            "the error says how long the frame had"
        );
        drop(stream);
        sender.join().unwrap();
    }

    #[test]
    fn a_silent_peer_is_a_timeout_not_a_socket_mystery() {
        let (stream, _sender) = pair();
        let mut conn = Conn::new(stream, MAX_CONTROL_FRAME);
        let result = conn.recv_control(Duration::from_millis(50));
        assert!(matches!(result, Err(WireError::Timeout(_))), "{result:?}");
    }

    #[test]
    fn replies_read_through_one_buffer_match_their_messages() {
        let (stream, sender) = pair();
        let sent = vec![
            chunk(3, vec![7; 1000]),
            // Shorter than the first: no byte of the earlier chunk may show through.
            chunk(4, vec![1, 2, 3]),
            chunk(5, vec![]),
            Message::DontHave { index: 6 },
            Message::error(code::INTERNAL, "gone"),
        ];
        let mut peer = Conn::new(sender, MAX_FRAME);
        for m in &sent {
            peer.queue(m).unwrap();
        }
        peer.flush().unwrap();
        drop(peer);
        let mut conn = Conn::new(stream, MAX_FRAME);
        let within = Duration::from_secs(10);
        for m in &sent {
            let reply = conn.recv(within).unwrap();
            if let Message::Chunk { data, .. } = &reply {
                assert!(matches!(data, std::borrow::Cow::Borrowed(_)), "copied");
            }
            assert_eq!(&reply, m);
        }
        assert_eq!(
            conn.buf.len(),
            1009,
            "the buffer grew to the largest frame only"
        );
        assert!(matches!(conn.recv(within), Err(WireError::Closed)));
    }

    #[test]
    fn pushes_before_a_reply_are_handed_over_and_the_reply_returned() {
        let (stream, sender) = pair();
        let mut peer = Conn::new(sender, MAX_FRAME);
        for m in [
            Message::Gained { indices: vec![4] },
            Message::Gained {
                indices: vec![1, 9],
            },
            chunk(3, vec![7; 100]),
            Message::Gained { indices: vec![2] },
            Message::DontHave { index: 5 },
        ] {
            peer.queue(&m).unwrap();
        }
        peer.flush().unwrap();
        let mut conn = Conn::new(stream, MAX_FRAME);
        let mut gained = Vec::new();
        let within = Duration::from_secs(10);
        let reply = conn
            .recv_reply(within, false, |indices| gained.extend(indices))
            .unwrap();
        assert!(
            matches!(&reply, Message::Chunk { index: 3, data: std::borrow::Cow::Borrowed(d) } if d.len() == 100),
            "{reply:?}"
        );
        assert_eq!(gained, [4, 1, 9]);
        let reply = conn
            .recv_reply(within, true, |indices| gained.extend(indices))
            .unwrap();
        assert_eq!(reply, Message::DontHave { index: 5 });
        assert_eq!(gained, [4, 1, 9, 2]);
        // Pushes alone are no reply: the wait ends at its deadline, not at the last push.
        peer.send(&Message::Gained { indices: vec![6] }).unwrap();
        let started = Instant::now();
        let result = conn.recv_reply(Duration::from_millis(200), false, |i| gained.extend(i));
        assert!(matches!(result, Err(WireError::Timeout(_))), "{result:?}");
        assert!(started.elapsed() >= Duration::from_millis(200));
        assert_eq!(gained, [4, 1, 9, 2, 6]);
    }

    #[test]
    fn a_control_read_refuses_a_chunk_sized_frame() {
        let (stream, mut sender) = pair();
        sender
            .write_all(&frame_of(&chunk(0, vec![0; 200_000])))
            .unwrap();
        let mut conn = Conn::new(stream, MAX_FRAME);
        assert!(matches!(
            conn.recv_control(Duration::from_secs(10)),
            Err(WireError::TooLarge {
                max: MAX_CONTROL_FRAME,
                ..
            })
        ));
    }

    #[test]
    fn frames_waiting_counts_only_whole_frames_and_sees_a_close() {
        let (stream, mut sender) = pair();
        let mut conn = Conn::new(stream, MAX_CONTROL_FRAME);
        assert_eq!(conn.frames_waiting().unwrap(), Some(0));
        let mut bytes = frame_of(&Message::Request { index: 1 });
        bytes.extend_from_slice(&frame_of(&Message::Cancel { index: 1 }));
        bytes.extend_from_slice(&[0, 0, 0]);
        sender.write_all(&bytes).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.frames_waiting().unwrap() != Some(2) {
            assert!(Instant::now() < deadline, "the frames never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        let within = Duration::from_secs(10);
        assert_eq!(conn.recv(within).unwrap(), Message::Request { index: 1 });
        assert_eq!(conn.frames_waiting().unwrap(), Some(1));
        assert_eq!(conn.recv(within).unwrap(), Message::Cancel { index: 1 });
        assert_eq!(conn.frames_waiting().unwrap(), Some(0));
        sender.write_all(&[5, 5, 0, 0, 0, 2]).unwrap();
        drop(sender);
        let deadline = Instant::now() + Duration::from_secs(10);
        while conn.frames_waiting().unwrap() != Some(1) {
            assert!(Instant::now() < deadline, "the last frame never arrived");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(conn.recv(within).unwrap(), Message::Request { index: 2 });
        assert_eq!(conn.frames_waiting().unwrap(), None);
    }

    /// Property tests of reading frames from a stream however its bytes arrive.
    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// A reader that hands out at most `step` bytes per read and remembers the largest
        /// buffer it was given: a frame is read into one buffer of its length.
        struct Trickle<'a> {
            data: &'a [u8],
            step: usize,
            largest_buffer: usize,
            consumed: usize,
        }

        impl<'a> Trickle<'a> {
            fn new(data: &'a [u8], step: usize) -> Self {
                Trickle {
                    data,
                    step,
                    largest_buffer: 0,
                    consumed: 0,
                }
            }
        }

        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.largest_buffer = self.largest_buffer.max(buf.len());
                let n = buf.len().min(self.step).min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                self.consumed += n;
                Ok(n)
            }
        }

        proptest! {
            #[test]
            fn every_message_is_written_as_its_frame(m in message()) {
                let mut written = Vec::new();
                write_message(&mut written, &m)?;
                prop_assert_eq!(&written, &frame_of(&m));
                prop_assert_eq!(read_message(&mut &written[..], MAX_FRAME)?, m);
            }

            #[test]
            fn frames_read_back_in_order_however_the_bytes_arrive(
                messages in vec(message(), 1..5),
                step in 1usize..64,
            ) {
                let stream: Vec<u8> = messages.iter().flat_map(|m| frame_of(m)).collect();
                let mut reader = Trickle::new(&stream, step);
                let mut buf = Vec::new();
                for m in &messages {
                    prop_assert_eq!(&read_frame(&mut reader, MAX_FRAME, &mut buf)?, m);
                }
                prop_assert!(matches!(
                    read_message(&mut reader, MAX_FRAME),
                    Err(WireError::Closed)
                ));
            }

            #[test]
            fn arbitrary_streams_never_read_a_frame_over_the_limit(
                len in prop_oneof![0u32..700, any::<u32>()],
                rest in vec(any::<u8>(), 0..700),
                max in prop_oneof![Just(MAX_CONTROL_FRAME), 1u32..700],
                step in 1usize..32,
            ) {
                let stream: Vec<u8> = len.to_be_bytes().into_iter().chain(rest).collect();
                let mut reader = Trickle::new(&stream, step);
                let mut buf = Vec::new();
                while let Ok(m) = read_frame(&mut reader, max, &mut buf) {
                    check_decoded(&m, max as usize)?;
                    if let Message::Have(bits) = &m {
                        prop_assert!(bits.len() as u64 <= MAX_CHUNKS);
                    }
                }
                prop_assert!(reader.largest_buffer <= max.max(4) as usize);
                prop_assert!(buf.len() <= 4 + max as usize);
            }

            #[test]
            fn a_length_over_the_limit_is_refused_before_the_body_is_read(
                max in 1u32..=MAX_FRAME,
                over in 1u32..,
                rest in vec(any::<u8>(), 0..64),
            ) {
                let len = max.saturating_add(over);
                let stream: Vec<u8> = len.to_be_bytes().into_iter().chain(rest).collect();
                let mut reader = Trickle::new(&stream, 64);
                let result = read_message(&mut reader, max);
                prop_assert!(
                    matches!(result, Err(WireError::TooLarge { len: l, max: m }) if l == len && m == max),
                    "{:?}", result
                );
                prop_assert_eq!((reader.consumed, reader.largest_buffer), (4, 4));
            }
        }
    }
}
