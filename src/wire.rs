//! The peer wire protocol: length-prefixed binary frames over TCP, the messages they carry,
//! and the limits checked before anything is allocated. `PROTOCOL.md` documents it byte by
//! byte. Only this module encodes or decodes bytes on a peer socket.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::bitfield::Bitfield;
use crate::manifest::{AssetId, MAX_CHUNK_SIZE, MAX_CHUNKS};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The four bytes that open a `Hello`, so a stray client of another protocol is told apart.
pub const MAGIC: &[u8; 4] = b"SWRM";
/// Largest ticket a `Hello` may carry (a signed ticket is about 150 bytes).
pub const MAX_TICKET: usize = 4096;
/// Longest message text an `Error` frame may carry.
pub const MAX_ERROR_TEXT: usize = 1024;
/// Largest frame other than `Chunk`: a `Have` for [`MAX_CHUNKS`] chunks plus its header.
pub const MAX_CONTROL_FRAME: u32 = 1 + 4 + (MAX_CHUNKS as u32) / 8;
/// Largest frame of all: a `Chunk` of [`MAX_CHUNK_SIZE`] bytes plus its header.
pub const MAX_FRAME: u32 = 1 + 4 + MAX_CHUNK_SIZE;

/// Error codes carried by an `Error` frame.
pub mod code {
    /// The frame could not be decoded (bad length, unknown type, bad field).
    pub const BAD_FRAME: u16 = 1;
    /// The `Hello` named a protocol version this peer does not speak.
    pub const UNSUPPORTED_VERSION: u16 = 2;
    /// This peer holds nothing of the asset named in the `Hello`.
    pub const UNKNOWN_ASSET: u16 = 3;
    /// Every connection slot is taken; try another peer or come back later.
    pub const SERVER_BUSY: u16 = 4;
    /// The ticket is missing, invalid or expired.
    pub const UNAUTHORIZED: u16 = 5;
    /// The peer failed internally (for example a disk read error).
    pub const INTERNAL: u16 = 6;
    /// A request was out of order: a chunk index out of range or a message before `Hello`.
    pub const BAD_REQUEST: u16 = 7;
}

/// Frame type bytes.
mod kind {
    pub const HELLO: u8 = 0x01;
    pub const WELCOME: u8 = 0x02;
    pub const HAVE_REQUEST: u8 = 0x03;
    pub const HAVE: u8 = 0x04;
    pub const REQUEST: u8 = 0x05;
    pub const CHUNK: u8 = 0x06;
    pub const DONT_HAVE: u8 = 0x07;
    pub const BUSY: u8 = 0x08;
    pub const ERROR: u8 = 0x09;
    pub const CANCEL: u8 = 0x0a;
    /// Server → client: a request was cancelled before its chunk went out.
    pub const CANCELLED: u8 = 0x0b;
}

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client → server, first frame: protocol version, asset, and a ticket (empty in open mode).
    Hello {
        /// Protocol version the client speaks.
        version: u16,
        /// The asset this connection is about.
        asset: AssetId,
        /// The tracker-issued ticket, or empty.
        ticket: Vec<u8>,
    },
    /// Server → client: the handshake is accepted.
    Welcome {
        /// Protocol version the server speaks.
        version: u16,
        /// Chunk count of the asset, as the server knows it.
        chunk_count: u32,
    },
    /// Client → server: which chunks do you hold now?
    HaveRequest,
    /// Server → client: the chunks the server holds.
    Have(Bitfield),
    /// Client → server: send chunk `index`. Several may be in flight; replies come in order.
    Request {
        /// Chunk index.
        index: u32,
    },
    /// Server → client: the bytes of chunk `index`.
    Chunk {
        /// Chunk index.
        index: u32,
        /// Chunk bytes (not yet verified).
        data: Vec<u8>,
    },
    /// Server → client: chunk `index` is not held here.
    DontHave {
        /// Chunk index.
        index: u32,
    },
    /// Server → client: chunk `index` is held but not served now (throttled); ask elsewhere.
    Busy {
        /// Chunk index.
        index: u32,
    },
    /// Either way: a fatal error; the sender closes the connection after it.
    Error {
        /// One of the [`code`] constants.
        code: u16,
        /// What went wrong, for people.
        message: String,
    },
    /// Client → server: chunk `index` is no longer wanted (answered already elsewhere).
    Cancel {
        /// Chunk index.
        index: u32,
    },
    /// Server → client: the reply, in its turn, to a request for `index` that a `Cancel`
    /// reached before the chunk went out.
    Cancelled {
        /// Chunk index.
        index: u32,
    },
}

/// Why reading a frame failed.
#[derive(Debug)]
pub enum WireError {
    /// The socket failed or timed out.
    Io(io::Error),
    /// The peer closed the connection between frames.
    Closed,
    /// The declared frame length is over the limit; nothing was allocated.
    TooLarge {
        /// Length the frame declared.
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// The frame type byte is not one this version knows.
    UnknownType(u8),
    /// A field is malformed (wrong length, bad UTF-8, bad magic …).
    Malformed(String),
}

impl WireError {
    /// True when the error is a socket read or write timeout.
    pub fn is_timeout(&self) -> bool {
        matches!(self, WireError::Io(e) if is_timeout(e))
    }

    /// The error code to send back to the peer for this failure, if one should be sent.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            WireError::TooLarge { .. } | WireError::UnknownType(_) | WireError::Malformed(_) => {
                Some(code::BAD_FRAME)
            }
            WireError::Io(_) | WireError::Closed => None,
        }
    }
}

/// True for the errors a socket with a read or write timeout returns when it expires
/// (`WouldBlock` on Unix, `TimedOut` on Windows).
pub fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Io(e) if is_timeout(e) => write!(f, "timed out"),
            WireError::Io(e) => write!(f, "{e}"),
            WireError::Closed => write!(f, "connection closed by peer"),
            WireError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max}")
            }
            WireError::UnknownType(t) => write!(f, "unknown frame type 0x{t:02x}"),
            WireError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<io::Error> for WireError {
    fn from(e: io::Error) -> Self {
        WireError::Io(e)
    }
}

impl Message {
    /// The message's name, for logs and error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "Hello",
            Message::Welcome { .. } => "Welcome",
            Message::HaveRequest => "HaveRequest",
            Message::Have(_) => "Have",
            Message::Request { .. } => "Request",
            Message::Chunk { .. } => "Chunk",
            Message::DontHave { .. } => "DontHave",
            Message::Busy { .. } => "Busy",
            Message::Error { .. } => "Error",
            Message::Cancel { .. } => "Cancel",
            Message::Cancelled { .. } => "Cancelled",
        }
    }

    /// The error frame to send for a fatal problem.
    pub fn error(code: u16, message: impl Into<String>) -> Message {
        let mut message: String = message.into();
        if message.len() > MAX_ERROR_TEXT {
            let mut cut = MAX_ERROR_TEXT;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Message::Error { code, message }
    }

    /// Appends the whole frame (length prefix included) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; 4]);
        match self {
            Message::Hello {
                version,
                asset,
                ticket,
            } => {
                out.push(kind::HELLO);
                out.extend_from_slice(MAGIC);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&asset.0);
                out.extend_from_slice(&(ticket.len() as u16).to_be_bytes());
                out.extend_from_slice(ticket);
            }
            Message::Welcome {
                version,
                chunk_count,
            } => {
                out.push(kind::WELCOME);
                out.extend_from_slice(&version.to_be_bytes());
                out.extend_from_slice(&chunk_count.to_be_bytes());
            }
            Message::HaveRequest => out.push(kind::HAVE_REQUEST),
            Message::Have(bits) => {
                out.push(kind::HAVE);
                out.extend_from_slice(&bits.len().to_be_bytes());
                out.extend_from_slice(bits.as_bytes());
            }
            Message::Request { index } => push_index(out, kind::REQUEST, *index),
            Message::Chunk { index, data } => {
                push_index(out, kind::CHUNK, *index);
                out.extend_from_slice(data);
            }
            Message::DontHave { index } => push_index(out, kind::DONT_HAVE, *index),
            Message::Busy { index } => push_index(out, kind::BUSY, *index),
            Message::Error { code, message } => {
                out.push(kind::ERROR);
                out.extend_from_slice(&code.to_be_bytes());
                out.extend_from_slice(message.as_bytes());
            }
            Message::Cancel { index } => push_index(out, kind::CANCEL, *index),
            Message::Cancelled { index } => push_index(out, kind::CANCELLED, *index),
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes the body of a frame (type byte and payload, without the length prefix).
    pub fn decode(body: &[u8]) -> Result<Message, WireError> {
        let (&ty, payload) = body
            .split_first()
            .ok_or_else(|| WireError::Malformed("empty frame".into()))?;
        let mut p = Payload(payload);
        let message = match ty {
            kind::HELLO => {
                if p.take(4)? != MAGIC {
                    return Err(WireError::Malformed(
                        "hello does not start with SWRM".into(),
                    ));
                }
                let version = p.u16()?;
                let asset = AssetId(p.take(32)?.try_into().expect("32 bytes"));
                let ticket_len = p.u16()? as usize;
                if ticket_len > MAX_TICKET {
                    return Err(WireError::Malformed(format!(
                        "ticket of {ticket_len} bytes exceeds {MAX_TICKET}"
                    )));
                }
                let ticket = p.take(ticket_len)?.to_vec();
                Message::Hello {
                    version,
                    asset,
                    ticket,
                }
            }
            kind::WELCOME => Message::Welcome {
                version: p.u16()?,
                chunk_count: p.u32()?,
            },
            kind::HAVE_REQUEST => Message::HaveRequest,
            kind::HAVE => {
                let len = p.u32()?;
                if len as u64 > MAX_CHUNKS {
                    return Err(WireError::Malformed(format!(
                        "have of {len} chunks exceeds {MAX_CHUNKS}"
                    )));
                }
                let bytes = p.take(Bitfield::byte_len(len))?;
                Message::Have(Bitfield::from_bytes(len, bytes).map_err(WireError::Malformed)?)
            }
            kind::REQUEST => Message::Request { index: p.u32()? },
            kind::CHUNK => {
                let (index, data) = chunk_parts(payload)?;
                return Ok(Message::Chunk {
                    index,
                    data: data.to_vec(),
                });
            }
            kind::DONT_HAVE => Message::DontHave { index: p.u32()? },
            kind::BUSY => Message::Busy { index: p.u32()? },
            kind::ERROR => {
                let code = p.u16()?;
                let text = p.rest();
                if text.len() > MAX_ERROR_TEXT {
                    return Err(WireError::Malformed(format!(
                        "error text of {} bytes exceeds {MAX_ERROR_TEXT}",
                        text.len()
                    )));
                }
                // An invalid byte becomes U+FFFD, three bytes: cut the text again so that what
                // was read stays within the limit and can be written back.
                return Ok(Message::error(code, String::from_utf8_lossy(text)));
            }
            kind::CANCEL => Message::Cancel { index: p.u32()? },
            kind::CANCELLED => Message::Cancelled { index: p.u32()? },
            other => return Err(WireError::UnknownType(other)),
        };
        if !p.0.is_empty() {
            return Err(WireError::Malformed(format!(
                "{} trailing bytes after frame type 0x{ty:02x}",
                p.0.len()
            )));
        }
        Ok(message)
    }
}

/// A `Chunk` frame's payload: its index, then the data to the end of the frame.
fn chunk_parts(payload: &[u8]) -> Result<(u32, &[u8]), WireError> {
    let mut p = Payload(payload);
    Ok((p.u32()?, p.rest()))
}

fn push_index(out: &mut Vec<u8>, ty: u8, index: u32) {
    out.push(ty);
    out.extend_from_slice(&index.to_be_bytes());
}

/// A cursor over a frame payload that fails instead of reading past the end.
struct Payload<'a>(&'a [u8]);

impl<'a> Payload<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed(format!(
                "frame ends {} bytes early",
                n - self.0.len()
            )));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Writes one message as a single frame. Fails with `InvalidInput`, writing nothing, when a
/// field is over its limit (a ticket over [`MAX_TICKET`], error text over [`MAX_ERROR_TEXT`]).
pub fn write_message(w: &mut impl Write, message: &Message) -> io::Result<()> {
    let over = match message {
        Message::Hello { ticket, .. } => ticket.len() > MAX_TICKET,
        Message::Error { message, .. } => message.len() > MAX_ERROR_TEXT,
        _ => false,
    };
    if over {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "frame field over its protocol limit",
        ));
    }
    let mut frame = Vec::with_capacity(64);
    message.encode(&mut frame);
    w.write_all(&frame)
}

/// The header of a `Chunk` frame whose `len` data bytes the caller sends next (straight
/// from a file, so that the kernel can send it without a copy).
pub fn chunk_header(index: u32, len: u32) -> [u8; 9] {
    let mut header = [0u8; 9];
    header[..4].copy_from_slice(&(1 + 4 + len).to_be_bytes());
    header[4] = kind::CHUNK;
    header[5..].copy_from_slice(&index.to_be_bytes());
    header
}

/// Reads one frame, refusing any whose declared length exceeds `max_frame` before
/// allocating, and decodes it. A clean close between frames is [`WireError::Closed`].
pub fn read_message(r: &mut impl Read, max_frame: u32) -> Result<Message, WireError> {
    let mut body = Vec::new();
    Message::decode(read_frame(r, max_frame, &mut body)?)
}

/// Reads one frame's body (type byte and payload) into `buf`, which only ever grows, and
/// returns it. Refuses a declared length over `max_frame` before allocating.
fn read_frame<'b>(
    r: &mut impl Read,
    max_frame: u32,
    buf: &'b mut Vec<u8>,
) -> Result<&'b [u8], WireError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Err(WireError::Closed),
            Ok(0) => {
                return Err(WireError::Malformed(
                    "connection closed inside a frame length".into(),
                ));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(WireError::Io(e)),
        }
    }
    let len = u32::from_be_bytes(len);
    if len == 0 {
        return Err(WireError::Malformed("frame of length 0".into()));
    }
    if len > max_frame {
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let len = len as usize;
    if buf.len() < len {
        buf.resize(len, 0);
    }
    let body = &mut buf[..len];
    r.read_exact(body).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => {
            WireError::Malformed(format!("connection closed inside a frame of {len} bytes"))
        }
        _ => WireError::Io(e),
    })?;
    Ok(body)
}

/// A server's reply read by [`read_reply_by`]: a chunk's data stays in the caller's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// Chunk `index`, its data borrowed from the buffer.
    Chunk {
        /// Chunk index.
        index: u32,
        /// The chunk's bytes.
        data: &'a [u8],
    },
    /// Any other message.
    Other(Message),
}

/// Reads one frame like [`read_message_by`] into a buffer the caller keeps from one reply
/// to the next, so that receiving a chunk neither allocates nor copies it: a download
/// reads gigabytes through the same few megabytes.
pub fn read_reply_by<'b>(
    stream: &TcpStream,
    max_frame: u32,
    deadline: Instant,
    buf: &'b mut Vec<u8>,
) -> Result<Reply<'b>, WireError> {
    let body = read_frame(&mut DeadlineReader { stream, deadline }, max_frame, buf)?;
    match body.split_first() {
        Some((&kind::CHUNK, payload)) => {
            let (index, data) = chunk_parts(payload)?;
            Ok(Reply::Chunk { index, data })
        }
        _ => Message::decode(body).map(Reply::Other),
    }
}

/// Reads one frame from a socket like [`read_message`], but the whole frame must arrive
/// before `deadline`: a peer trickling one byte at a time cannot hold the connection past it.
/// An expired deadline is an `Io` error of kind `TimedOut` ([`WireError::is_timeout`]).
pub fn read_message_by(
    stream: &TcpStream,
    max_frame: u32,
    deadline: Instant,
) -> Result<Message, WireError> {
    read_message(&mut DeadlineReader { stream, deadline }, max_frame)
}

/// A socket reader whose every read waits at most until a fixed instant.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "frame deadline passed",
            ));
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

/// The largest frame a client should accept for an asset cut in chunks of `chunk_size`.
pub fn chunk_frame_limit(chunk_size: u32) -> u32 {
    (1 + 4 + chunk_size).max(MAX_CONTROL_FRAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(m: &Message) {
        let mut frame = Vec::new();
        m.encode(&mut frame);
        let back = read_message(&mut &frame[..], MAX_FRAME).unwrap();
        assert_eq!(&back, m);
    }

    fn every_message() -> Vec<Message> {
        let mut have = Bitfield::new(11);
        have.set(3);
        have.set(10);
        vec![
            Message::Hello {
                version: PROTOCOL_VERSION,
                asset: AssetId([7; 32]),
                ticket: vec![],
            },
            Message::Hello {
                version: 9,
                asset: AssetId([1; 32]),
                ticket: b"signed".to_vec(),
            },
            Message::Welcome {
                version: PROTOCOL_VERSION,
                chunk_count: 1024,
            },
            Message::HaveRequest,
            Message::Have(have),
            Message::Have(Bitfield::new(0)),
            Message::Request { index: 5 },
            Message::Chunk {
                index: 5,
                data: vec![1, 2, 3],
            },
            Message::Chunk {
                index: 0,
                data: vec![],
            },
            Message::DontHave { index: u32::MAX },
            Message::Busy { index: 2 },
            Message::error(code::SERVER_BUSY, "busy: 64 connections"),
            Message::Cancel { index: 9 },
            Message::Cancelled { index: 10 },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in every_message() {
            round_trip(&m);
        }
    }

    #[test]
    fn frames_match_golden_bytes() {
        let mut out = Vec::new();
        Message::Request { index: 0x0102_0304 }.encode(&mut out);
        assert_eq!(out, [0, 0, 0, 5, 0x05, 1, 2, 3, 4]);

        out.clear();
        Message::Hello {
            version: 1,
            asset: AssetId([0xab; 32]),
            ticket: vec![0xee],
        }
        .encode(&mut out);
        let mut golden = vec![0, 0, 0, 42, 0x01, b'S', b'W', b'R', b'M', 0, 1];
        golden.extend_from_slice(&[0xab; 32]);
        golden.extend_from_slice(&[0, 1, 0xee]);
        assert_eq!(out, golden);

        out.clear();
        let mut have = Bitfield::new(9);
        have.set(0);
        have.set(8);
        Message::Have(have).encode(&mut out);
        assert_eq!(out, [0, 0, 0, 7, 0x04, 0, 0, 0, 9, 0x80, 0x80]);

        out.clear();
        Message::Error {
            code: 4,
            message: "busy".into(),
        }
        .encode(&mut out);
        assert_eq!(out, [0, 0, 0, 7, 0x09, 0, 4, b'b', b'u', b's', b'y']);

        let mut header = chunk_header(2, 3).to_vec();
        header.extend_from_slice(&[9, 8, 7]);
        let mut encoded = Vec::new();
        Message::Chunk {
            index: 2,
            data: vec![9, 8, 7],
        }
        .encode(&mut encoded);
        assert_eq!(header, encoded);
        assert_eq!(encoded, [0, 0, 0, 8, 0x06, 0, 0, 0, 2, 9, 8, 7]);
    }

    #[test]
    fn truncated_frames_are_errors_not_panics() {
        for m in every_message() {
            let mut frame = Vec::new();
            m.encode(&mut frame);
            for cut in 1..frame.len() {
                let result = read_message(&mut &frame[..cut], MAX_FRAME);
                assert!(
                    matches!(result, Err(WireError::Malformed(_))),
                    "{m:?} cut at {cut}: {result:?}"
                );
            }
        }
        assert!(matches!(
            read_message(&mut &[][..], MAX_FRAME),
            Err(WireError::Closed)
        ));
    }

    #[test]
    fn short_payloads_inside_a_whole_frame_are_malformed() {
        // A frame whose declared length is honest but whose fields are cut short.
        for body in [
            &[0x05, 1, 2][..],
            &[0x01, b'S', b'W'],
            &[0x04, 0, 0, 0, 64, 1],
            &[0x02, 0],
        ] {
            let mut frame = (body.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(body);
            assert!(
                matches!(
                    read_message(&mut &frame[..], MAX_FRAME),
                    Err(WireError::Malformed(_))
                ),
                "{body:?}"
            );
        }
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let frame = [0xff, 0xff, 0xff, 0xff, 0x06];
        match read_message(&mut &frame[..], MAX_CONTROL_FRAME) {
            Err(WireError::TooLarge { len, max }) => {
                assert_eq!((len, max), (u32::MAX, MAX_CONTROL_FRAME))
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        let mut big_ticket = vec![0, 0, 0x20, 0x2b, 0x01];
        big_ticket.extend_from_slice(MAGIC);
        big_ticket.extend_from_slice(&[0, 1]);
        big_ticket.extend_from_slice(&[0; 32]);
        big_ticket.extend_from_slice(&[0x20, 0x00]);
        big_ticket.resize(4 + 0x202b, 0);
        assert!(matches!(
            read_message(&mut &big_ticket[..], MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        let huge_have = [0, 0, 0, 5, 0x04, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            read_message(&mut &huge_have[..], MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_types_bad_magic_and_trailing_bytes_are_rejected() {
        assert!(matches!(
            read_message(&mut &[0, 0, 0, 1, 0x7f][..], MAX_FRAME),
            Err(WireError::UnknownType(0x7f))
        ));
        assert!(matches!(
            read_message(&mut &[0, 0, 0, 0][..], MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        let mut hello = Vec::new();
        Message::Hello {
            version: 1,
            asset: AssetId([0; 32]),
            ticket: vec![],
        }
        .encode(&mut hello);
        hello[5] = b'X';
        assert!(matches!(
            read_message(&mut &hello[..], MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        let trailing = [0, 0, 0, 6, 0x05, 0, 0, 0, 1, 0];
        assert!(matches!(
            read_message(&mut &trailing[..], MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            WireError::UnknownType(1).reply_code(),
            Some(code::BAD_FRAME)
        );
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
    }

    #[test]
    fn a_trickled_frame_misses_its_deadline() {
        use std::time::Duration;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sender = std::thread::spawn(move || {
            let mut s = TcpStream::connect(addr).unwrap();
            // A 9-byte Request, one byte every 100 ms: each read is quick, the frame is not.
            for byte in [0u8, 0, 0, 5, 5, 0, 0, 0, 1] {
                if s.write_all(&[byte]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let (stream, _) = listener.accept().unwrap();
        let started = Instant::now();
        let result = read_message_by(
            &stream,
            MAX_CONTROL_FRAME,
            started + Duration::from_millis(350),
        );
        assert!(matches!(&result, Err(e) if e.is_timeout()), "{result:?}");
        assert!(started.elapsed() < Duration::from_millis(700));
        drop(stream);
        sender.join().unwrap();
    }

    #[test]
    fn replies_read_through_one_buffer_match_their_messages() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let sent = vec![
            Message::Chunk {
                index: 3,
                data: vec![7; 1000],
            },
            // Shorter than the first: no byte of the earlier chunk may show through.
            Message::Chunk {
                index: 4,
                data: vec![1, 2, 3],
            },
            Message::Chunk {
                index: 5,
                data: vec![],
            },
            Message::DontHave { index: 6 },
            Message::error(code::INTERNAL, "gone"),
        ];
        let frames = {
            let mut frames = Vec::new();
            for m in &sent {
                m.encode(&mut frames);
            }
            frames
        };
        let sender = std::thread::spawn(move || {
            TcpStream::connect(addr)
                .unwrap()
                .write_all(&frames)
                .unwrap();
        });
        let (stream, _) = listener.accept().unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = Vec::new();
        for m in &sent {
            let reply = read_reply_by(&stream, MAX_FRAME, deadline, &mut buf).unwrap();
            match (m, reply) {
                (Message::Chunk { index, data }, Reply::Chunk { index: i, data: d }) => {
                    assert_eq!((*index, &data[..]), (i, d));
                }
                (m, Reply::Other(got)) => assert_eq!(&got, m),
                (m, other) => panic!("sent {m:?}, read {other:?}"),
            }
        }
        assert_eq!(buf.len(), 1005, "the buffer grew to the largest frame only");
        assert!(matches!(
            read_reply_by(&stream, MAX_FRAME, deadline, &mut buf),
            Err(WireError::Closed)
        ));
        sender.join().unwrap();
    }

    #[test]
    fn invalid_utf8_error_text_stays_within_the_limit() {
        let mut body = vec![0x09, 0, 1];
        body.extend_from_slice(&[0xff; MAX_ERROR_TEXT]);
        let m = Message::decode(&body).unwrap();
        let Message::Error { message, .. } = &m else {
            unreachable!()
        };
        assert!(message.len() <= MAX_ERROR_TEXT, "{} bytes", message.len());
        assert!(message.chars().all(|c| c == char::REPLACEMENT_CHARACTER));
        let mut frame = Vec::new();
        write_message(&mut frame, &m).unwrap();
        assert_eq!(read_message(&mut &frame[..], MAX_FRAME).unwrap(), m);
    }

    #[test]
    fn long_error_text_is_cut_on_a_char_boundary() {
        let m = Message::error(code::INTERNAL, "é".repeat(MAX_ERROR_TEXT));
        let Message::Error { message, .. } = &m else {
            unreachable!()
        };
        assert!(message.len() <= MAX_ERROR_TEXT);
        round_trip(&m);
    }

    /// Property tests: the cases above, over generated messages and hostile bytes.
    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        fn bitfield() -> impl Strategy<Value = Bitfield> {
            vec(any::<bool>(), 0..2000).prop_map(|bits| {
                let mut field = Bitfield::new(bits.len() as u32);
                for (i, &on) in bits.iter().enumerate() {
                    if on {
                        field.set(i as u32);
                    }
                }
                field
            })
        }

        /// Any message a correct peer may send.
        fn message() -> impl Strategy<Value = Message> {
            prop_oneof![
                (
                    any::<u16>(),
                    any::<[u8; 32]>(),
                    vec(any::<u8>(), 0..=MAX_TICKET)
                )
                    .prop_map(|(version, asset, ticket)| Message::Hello {
                        version,
                        asset: AssetId(asset),
                        ticket,
                    }),
                (any::<u16>(), any::<u32>()).prop_map(|(version, chunk_count)| {
                    Message::Welcome {
                        version,
                        chunk_count,
                    }
                }),
                Just(Message::HaveRequest),
                bitfield().prop_map(Message::Have),
                any::<u32>().prop_map(|index| Message::Request { index }),
                (any::<u32>(), vec(any::<u8>(), 0..4096))
                    .prop_map(|(index, data)| Message::Chunk { index, data }),
                any::<u32>().prop_map(|index| Message::DontHave { index }),
                any::<u32>().prop_map(|index| Message::Busy { index }),
                // Up to 400 characters of up to 4 bytes: often over the limit, and cut.
                (any::<u16>(), ".{0,400}").prop_map(|(code, text)| Message::error(code, text)),
                any::<u32>().prop_map(|index| Message::Cancel { index }),
                any::<u32>().prop_map(|index| Message::Cancelled { index }),
            ]
        }

        fn frame_of(m: &Message) -> Vec<u8> {
            let mut frame = Vec::new();
            m.encode(&mut frame);
            frame
        }

        /// A reader that hands out at most `step` bytes per read and remembers the largest
        /// buffer it was given: `read_message` reads each body into one buffer of its length.
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

        /// What a decoded message may hold at most, and that it survives being sent on.
        fn check_decoded(m: &Message, body_len: usize) -> Result<(), TestCaseError> {
            match m {
                Message::Hello { ticket, .. } => prop_assert!(ticket.len() <= MAX_TICKET),
                Message::Have(bits) => prop_assert!(bits.len() as u64 <= MAX_CHUNKS),
                Message::Chunk { data, .. } => prop_assert!(data.len() < body_len),
                Message::Error { message, .. } => prop_assert!(message.len() <= MAX_ERROR_TEXT),
                _ => {}
            }
            let mut frame = Vec::new();
            write_message(&mut frame, m)?;
            prop_assert_eq!(&Message::decode(&frame[4..])?, m);
            Ok(())
        }

        proptest! {
            #[test]
            fn every_message_round_trips(m in message()) {
                let frame = frame_of(&m);
                prop_assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes());
                prop_assert_eq!(&Message::decode(&frame[4..])?, &m);
                prop_assert_eq!(&read_message(&mut &frame[..], MAX_FRAME)?, &m);
                let mut written = Vec::new();
                write_message(&mut written, &m)?;
                prop_assert_eq!(written, frame);
            }

            #[test]
            fn frames_read_back_in_order_however_the_bytes_arrive(
                messages in vec(message(), 1..5),
                step in 1usize..64,
            ) {
                let stream: Vec<u8> = messages.iter().flat_map(frame_of).collect();
                let mut reader = Trickle::new(&stream, step);
                for m in &messages {
                    prop_assert_eq!(&read_message(&mut reader, MAX_FRAME)?, m);
                }
                prop_assert!(matches!(
                    read_message(&mut reader, MAX_FRAME),
                    Err(WireError::Closed)
                ));
            }

            #[test]
            fn any_truncation_of_a_frame_is_malformed(m in message(), cut in any::<Index>()) {
                let frame = frame_of(&m);
                let cut = 1 + cut.index(frame.len() - 1);
                let result = read_message(&mut &frame[..cut], MAX_FRAME);
                prop_assert!(matches!(result, Err(WireError::Malformed(_))), "{:?}", result);
            }

            #[test]
            fn arbitrary_bodies_decode_within_the_limits(
                ty in prop_oneof![0u8..=0x0c, any::<u8>()],
                payload in vec(any::<u8>(), 0..600),
            ) {
                let body: Vec<u8> = std::iter::once(ty).chain(payload).collect();
                if let Ok(m) = Message::decode(&body) {
                    check_decoded(&m, body.len())?;
                }
            }

            #[test]
            fn damaged_frames_decode_within_the_limits_or_fail(
                m in message(),
                damage in vec((any::<Index>(), any::<u8>()), 1..4),
            ) {
                let mut frame = frame_of(&m);
                for (at, byte) in damage {
                    let at = 4 + at.index(frame.len() - 4);
                    frame[at] = byte;
                }
                if let Ok(m) = Message::decode(&frame[4..]) {
                    check_decoded(&m, frame.len() - 4)?;
                }
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
                while let Ok(m) = read_message(&mut reader, max) {
                    check_decoded(&m, max as usize)?;
                }
                prop_assert!(reader.largest_buffer <= max.max(4) as usize);
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
