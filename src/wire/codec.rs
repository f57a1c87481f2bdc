//! The pure codec: a [`Message`] becomes the bytes of its frame, and bytes become a message
//! and the count of bytes it used, or the count still missing ([`Decoded::NeedMore`]). It
//! never touches a socket, so everything that reads frames (the [`Conn`] of a peer, the
//! server looking ahead at bytes waiting in its socket, the fuzzer) decodes them one way.
//!
//! [`Conn`]: super::Conn

use std::borrow::Cow;

use super::codes::kind;
use super::{MAGIC, MAX_ERROR_TEXT, MAX_GAINED, MAX_TICKET, WireError};
use crate::bitfield::Bitfield;
use crate::manifest::{AssetId, MAX_CHUNKS};

/// One protocol message. A decoded `Chunk` borrows its data from the bytes it was decoded
/// from, so that receiving a chunk copies nothing; `Message<'static>` is a message that
/// owns everything (see [`Message::into_owned`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message<'a> {
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
        /// Chunk bytes (not yet verified), borrowed when decoded.
        data: Cow<'a, [u8]>,
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
        /// One of the [`code`](super::code) constants.
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
    /// Server → client, unsolicited (protocol version 2): the server now holds these chunks
    /// too, gained since its last `Have` or `Gained`. Sent between replies, never inside one.
    Gained {
        /// The chunk indexes, 1 to [`MAX_GAINED`] of them, in the order they were gained.
        indices: Vec<u32>,
    },
}

/// What [`decode`] made of the bytes at hand.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole frame: its message, and the bytes it used (length prefix included).
    Message(Message<'a>, usize),
    /// The frame is not all there: at least this many more bytes are needed (the rest of
    /// the length prefix, or the rest of the frame once its length is known).
    NeedMore(usize),
}

/// Decodes the frame at the start of `bytes`, refusing a declared length over `max_frame`
/// as soon as the length prefix is there, before anyone allocates room for the frame.
/// Bytes after the frame are left alone: they belong to the next one.
pub fn decode(bytes: &[u8], max_frame: u32) -> Result<Decoded<'_>, WireError> {
    match missing(bytes, max_frame)? {
        (0, total) => Ok(Decoded::Message(Message::decode(&bytes[4..total])?, total)),
        (more, _) => Ok(Decoded::NeedMore(more)),
    }
}

/// The length of the frame at the start of `bytes`, prefix included, once its 4-byte
/// length prefix is there; an error for a length of 0 or over `max_frame`.
pub fn frame_len(bytes: &[u8], max_frame: u32) -> Result<Option<usize>, WireError> {
    let Some(prefix) = bytes.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len == 0 {
        return Err(WireError::Malformed("frame of length 0".into()));
    }
    if len > max_frame {
        return Err(WireError::TooLarge {
            len,
            max: max_frame,
        });
    }
    Ok(Some(4 + len as usize))
}

/// How many bytes the frame at the start of `bytes` still misses (0 when it is whole), and
/// its length as far as known (4 while the prefix is incomplete).
pub(super) fn missing(bytes: &[u8], max_frame: u32) -> Result<(usize, usize), WireError> {
    let total = frame_len(bytes, max_frame)?.unwrap_or(4);
    Ok((total.saturating_sub(bytes.len()), total))
}

/// How many whole frames `bytes` starts with, counting one whose declared length is out of
/// bounds (its reader refuses it at once, without waiting for more).
pub fn whole_frames(bytes: &[u8], max_frame: u32) -> usize {
    let (mut at, mut count) = (0, 0);
    loop {
        match frame_len(&bytes[at..], max_frame) {
            Err(_) => return count + 1,
            Ok(Some(len)) if len <= bytes.len() - at => {
                at += len;
                count += 1;
            }
            Ok(_) => return count,
        }
    }
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

impl<'a> Message<'a> {
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
            Message::Gained { .. } => "Gained",
        }
    }

    /// The error frame to send for a fatal problem, its text cut to [`MAX_ERROR_TEXT`]
    /// bytes on a character boundary.
    pub fn error(code: u16, message: impl Into<String>) -> Message<'static> {
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

    /// The same message owning its chunk data (a copy of it, when borrowed).
    pub fn into_owned(self) -> Message<'static> {
        match self {
            Message::Hello {
                version,
                asset,
                ticket,
            } => Message::Hello {
                version,
                asset,
                ticket,
            },
            Message::Welcome {
                version,
                chunk_count,
            } => Message::Welcome {
                version,
                chunk_count,
            },
            Message::HaveRequest => Message::HaveRequest,
            Message::Have(bits) => Message::Have(bits),
            Message::Request { index } => Message::Request { index },
            Message::Chunk { index, data } => Message::Chunk {
                index,
                data: Cow::Owned(data.into_owned()),
            },
            Message::DontHave { index } => Message::DontHave { index },
            Message::Busy { index } => Message::Busy { index },
            Message::Error { code, message } => Message::Error { code, message },
            Message::Cancel { index } => Message::Cancel { index },
            Message::Cancelled { index } => Message::Cancelled { index },
            Message::Gained { indices } => Message::Gained { indices },
        }
    }

    /// True when a field is over its protocol limit (a ticket over [`MAX_TICKET`], error
    /// text over [`MAX_ERROR_TEXT`], a `Gained` of none or over [`MAX_GAINED`] chunks): such
    /// a message must not be sent.
    pub fn over_limit(&self) -> bool {
        match self {
            Message::Hello { ticket, .. } => ticket.len() > MAX_TICKET,
            Message::Error { message, .. } => message.len() > MAX_ERROR_TEXT,
            Message::Gained { indices } => indices.is_empty() || indices.len() > MAX_GAINED,
            _ => false,
        }
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
            Message::Gained { indices } => {
                out.push(kind::GAINED);
                // Callers check `over_limit` first; the count is never cut silently.
                out.extend_from_slice(&(indices.len().min(u16::MAX as usize) as u16).to_be_bytes());
                for index in indices {
                    out.extend_from_slice(&index.to_be_bytes());
                }
            }
        }
        let len = (out.len() - start - 4) as u32;
        out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// Decodes the body of a frame (type byte and payload, without the length prefix). A
    /// `Chunk`'s data is borrowed from `body`.
    pub fn decode(body: &'a [u8]) -> Result<Message<'a>, WireError> {
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
            kind::CHUNK => Message::Chunk {
                index: p.u32()?,
                data: Cow::Borrowed(p.rest()),
            },
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
                Message::error(code, String::from_utf8_lossy(text))
            }
            kind::CANCEL => Message::Cancel { index: p.u32()? },
            kind::CANCELLED => Message::Cancelled { index: p.u32()? },
            kind::GAINED => {
                let count = p.u16()? as usize;
                if count == 0 || count > MAX_GAINED {
                    return Err(WireError::Malformed(format!(
                        "gained list of {count} chunks; 1 to {MAX_GAINED} are allowed"
                    )));
                }
                let indices = (0..count).map(|_| p.u32()).collect::<Result<_, _>>()?;
                Message::Gained { indices }
            }
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

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::wire::{MAX_CONTROL_FRAME, MAX_FRAME, MAX_GAINED, PROTOCOL_VERSION, code};

    /// The frame of `m`, length prefix included.
    pub(crate) fn frame_of(m: &Message) -> Vec<u8> {
        let mut frame = Vec::new();
        m.encode(&mut frame);
        frame
    }

    /// A chunk message owning `data`.
    pub(crate) fn chunk(index: u32, data: Vec<u8>) -> Message<'static> {
        Message::Chunk {
            index,
            data: Cow::Owned(data),
        }
    }

    fn round_trip(m: &Message) {
        let frame = frame_of(m);
        match decode(&frame, MAX_FRAME).unwrap() {
            Decoded::Message(back, used) => {
                assert_eq!(&back, m);
                assert_eq!(used, frame.len());
            }
            other => panic!("{m:?} decoded as {other:?}"),
        }
    }

    /// What decoding the frame at the start of `bytes` gives, as a result.
    fn decoded(bytes: &[u8], max: u32) -> Result<Message<'_>, WireError> {
        match decode(bytes, max)? {
            Decoded::Message(m, _) => Ok(m),
            Decoded::NeedMore(n) => Err(WireError::Malformed(format!("needs {n} more"))),
        }
    }

    pub(crate) fn every_message() -> Vec<Message<'static>> {
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
            chunk(5, vec![1, 2, 3]),
            chunk(0, vec![]),
            Message::DontHave { index: u32::MAX },
            Message::Busy { index: 2 },
            Message::error(code::SERVER_BUSY, "busy: 64 connections"),
            Message::Cancel { index: 9 },
            Message::Cancelled { index: 10 },
            Message::Gained { indices: vec![3] },
            Message::Gained {
                indices: vec![u32::MAX, 0, 7],
            },
        ]
    }

    #[test]
    fn every_message_round_trips() {
        for m in every_message() {
            round_trip(&m);
            assert_eq!(m.clone().into_owned(), m);
        }
    }

    #[test]
    fn a_decoded_chunk_borrows_its_data() {
        let frame = frame_of(&chunk(7, vec![5; 100]));
        let Ok(Decoded::Message(Message::Chunk { index, data }, 109)) = decode(&frame, MAX_FRAME)
        else {
            panic!("not a chunk of 109 bytes");
        };
        assert_eq!(index, 7);
        assert!(matches!(data, Cow::Borrowed(d) if std::ptr::eq(d, &frame[9..])));
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
        let encoded = frame_of(&chunk(2, vec![9, 8, 7]));
        assert_eq!(header, encoded);
        assert_eq!(encoded, [0, 0, 0, 8, 0x06, 0, 0, 0, 2, 9, 8, 7]);

        out.clear();
        Message::Gained {
            indices: vec![5, 0x0102_0304],
        }
        .encode(&mut out);
        assert_eq!(out, [0, 0, 0, 11, 0x0c, 0, 2, 0, 0, 0, 5, 1, 2, 3, 4]);
    }

    #[test]
    fn a_gained_list_holds_one_to_max_gained_indexes() {
        let most = Message::Gained {
            indices: (0..MAX_GAINED as u32).collect(),
        };
        assert!(!most.over_limit());
        let frame = frame_of(&most);
        assert_eq!(frame.len(), 4 + 1 + 2 + 4 * MAX_GAINED);
        assert!(frame.len() as u32 <= MAX_CONTROL_FRAME);
        round_trip(&most);
        let none = Message::Gained { indices: vec![] };
        let too_many = Message::Gained {
            indices: vec![1; MAX_GAINED + 1],
        };
        assert!(none.over_limit() && too_many.over_limit());
        for m in [none, too_many] {
            assert!(
                matches!(
                    decoded(&frame_of(&m), MAX_FRAME),
                    Err(WireError::Malformed(_))
                ),
                "{} indexes decoded",
                m.name()
            );
        }
        // A count that promises more indexes than the frame holds, and one with a spare byte.
        let short = [0, 0, 0, 7, 0x0c, 0, 2, 0, 0, 0, 5];
        let long = [0, 0, 0, 8, 0x0c, 0, 1, 0, 0, 0, 5, 9];
        for bytes in [&short[..], &long[..]] {
            assert!(
                matches!(decoded(bytes, MAX_FRAME), Err(WireError::Malformed(_))),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn every_prefix_of_a_frame_needs_exactly_the_missing_bytes() {
        for m in every_message() {
            let frame = frame_of(&m);
            for cut in 0..frame.len() {
                let want = if cut < 4 { 4 - cut } else { frame.len() - cut };
                assert_eq!(
                    decode(&frame[..cut], MAX_FRAME).unwrap(),
                    Decoded::NeedMore(want),
                    "{m:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn bytes_after_a_frame_are_left_for_the_next() {
        let mut frames = frame_of(&Message::Request { index: 1 });
        frames.extend_from_slice(&frame_of(&Message::HaveRequest));
        frames.extend_from_slice(&[0, 0]);
        let Decoded::Message(first, used) = decode(&frames, MAX_FRAME).unwrap() else {
            panic!("the first frame is whole");
        };
        assert_eq!((first, used), (Message::Request { index: 1 }, 9));
        let Decoded::Message(second, 5) = decode(&frames[9..], MAX_FRAME).unwrap() else {
            panic!("the second frame is whole");
        };
        assert_eq!(second, Message::HaveRequest);
        assert_eq!(
            decode(&frames[14..], MAX_FRAME).unwrap(),
            Decoded::NeedMore(2)
        );
        assert_eq!(whole_frames(&frames, MAX_FRAME), 2);
        assert_eq!(whole_frames(&frames[..13], MAX_FRAME), 1);
        assert_eq!(whole_frames(&[], MAX_FRAME), 0);
    }

    #[test]
    fn a_bad_length_counts_as_a_whole_frame_to_refuse() {
        let mut bytes = frame_of(&Message::Request { index: 1 });
        bytes.extend_from_slice(&[0, 0x10, 0, 0, 0x04]);
        assert_eq!(whole_frames(&bytes, MAX_CONTROL_FRAME), 2);
        assert_eq!(whole_frames(&[0, 0, 0, 0], MAX_CONTROL_FRAME), 1);
        assert_eq!(frame_len(&bytes[9..], MAX_FRAME).unwrap(), Some(0x10_0004));
        assert_eq!(frame_len(&bytes[..3], MAX_FRAME).unwrap(), None);
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
                matches!(decoded(&frame, MAX_FRAME), Err(WireError::Malformed(_))),
                "{body:?}"
            );
        }
    }

    #[test]
    fn oversized_frames_are_refused_from_their_length_alone() {
        match decode(&[0xff, 0xff, 0xff, 0xff, 0x06], MAX_CONTROL_FRAME) {
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
            decoded(&big_ticket, MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        let huge_have = [0, 0, 0, 5, 0x04, 0xff, 0xff, 0xff, 0xff];
        assert!(matches!(
            decoded(&huge_have, MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
    }

    #[test]
    fn unknown_types_bad_magic_and_trailing_bytes_are_rejected() {
        assert!(matches!(
            decoded(&[0, 0, 0, 1, 0x7f], MAX_FRAME),
            Err(WireError::UnknownType(0x7f))
        ));
        assert!(matches!(
            decoded(&[0, 0, 0, 0], MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        let mut hello = frame_of(&Message::Hello {
            version: 1,
            asset: AssetId([0; 32]),
            ticket: vec![],
        });
        hello[5] = b'X';
        assert!(matches!(
            decoded(&hello, MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        let trailing = [0, 0, 0, 6, 0x05, 0, 0, 0, 1, 0];
        assert!(matches!(
            decoded(&trailing, MAX_FRAME),
            Err(WireError::Malformed(_))
        ));
        assert_eq!(
            WireError::UnknownType(1).reply_code(),
            Some(code::BAD_FRAME)
        );
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
        assert!(!m.over_limit());
        round_trip(&m);
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
    pub(crate) mod properties {
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
        pub(crate) fn message() -> impl Strategy<Value = Message<'static>> {
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
                    .prop_map(|(index, data)| chunk(index, data)),
                any::<u32>().prop_map(|index| Message::DontHave { index }),
                any::<u32>().prop_map(|index| Message::Busy { index }),
                // Up to 400 characters of up to 4 bytes: often over the limit, and cut.
                (any::<u16>(), ".{0,400}").prop_map(|(code, text)| Message::error(code, text)),
                any::<u32>().prop_map(|index| Message::Cancel { index }),
                any::<u32>().prop_map(|index| Message::Cancelled { index }),
                vec(any::<u32>(), 1..=MAX_GAINED).prop_map(|indices| Message::Gained { indices }),
            ]
        }

        /// What a decoded message may hold at most, and that it survives being sent on.
        pub(crate) fn check_decoded(m: &Message, body_len: usize) -> Result<(), TestCaseError> {
            match m {
                Message::Hello { ticket, .. } => prop_assert!(ticket.len() <= MAX_TICKET),
                Message::Have(bits) => prop_assert!(bits.len() as u64 <= MAX_CHUNKS),
                Message::Chunk { data, .. } => prop_assert!(data.len() < body_len),
                Message::Error { message, .. } => prop_assert!(message.len() <= MAX_ERROR_TEXT),
                Message::Gained { indices } => {
                    prop_assert!((1..=MAX_GAINED).contains(&indices.len()))
                }
                _ => {}
            }
            prop_assert!(!m.over_limit());
            let frame = frame_of(m);
            prop_assert_eq!(&Message::decode(&frame[4..])?, m);
            Ok(())
        }

        proptest! {
            #[test]
            fn every_message_round_trips(m in message()) {
                let frame = frame_of(&m);
                prop_assert_eq!(&frame[..4], &((frame.len() - 4) as u32).to_be_bytes());
                prop_assert_eq!(&Message::decode(&frame[4..])?, &m);
                prop_assert_eq!(decode(&frame, MAX_FRAME)?, Decoded::Message(m, frame.len()));
            }

            #[test]
            fn any_truncation_of_a_frame_needs_the_rest(m in message(), cut in any::<Index>()) {
                let frame = frame_of(&m);
                let cut = cut.index(frame.len());
                let want = if cut < 4 { 4 - cut } else { frame.len() - cut };
                prop_assert_eq!(decode(&frame[..cut], MAX_FRAME)?, Decoded::NeedMore(want));
                prop_assert_eq!(whole_frames(&frame[..cut], MAX_FRAME), 0);
            }

            #[test]
            fn frames_back_to_back_decode_in_order(messages in vec(message(), 1..5)) {
                let stream: Vec<u8> = messages.iter().flat_map(|m| frame_of(m)).collect();
                prop_assert_eq!(whole_frames(&stream, MAX_FRAME), messages.len());
                let mut at = 0;
                for m in &messages {
                    let Decoded::Message(got, used) = decode(&stream[at..], MAX_FRAME)? else {
                        return Err(TestCaseError::fail("a whole frame needs more"));
                    };
                    prop_assert_eq!(&got, m);
                    at += used;
                }
                prop_assert_eq!(at, stream.len());
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
            fn a_length_over_the_limit_is_refused_from_the_prefix_alone(
                max in 1u32..=MAX_FRAME,
                over in 1u32..,
            ) {
                let len = max.saturating_add(over);
                let prefix = len.to_be_bytes();
                let result = decode(&prefix, max);
                prop_assert!(
                    matches!(result, Err(WireError::TooLarge { len: l, max: m }) if l == len && m == max),
                    "{:?}", result
                );
                prop_assert_eq!(whole_frames(&prefix, max), 1);
            }
        }
    }
}
