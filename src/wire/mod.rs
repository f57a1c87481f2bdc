//! The peer wire protocol: length-prefixed binary frames over TCP, the messages they carry,
//! and the limits checked before anything is allocated. `PROTOCOL.md` documents it byte by
//! byte. Only this module encodes or decodes bytes on a peer socket:
//! - [`codes`]: the frame type bytes and the error codes of an `Error` frame;
//! - [`codec`]: the pure codec, bytes in and messages out, never a socket;
//! - [`conn`]: a peer connection that owns its socket, read buffer, frame limit and
//!   deadlines, and reads each frame through the codec.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::manifest::{MAX_CHUNK_SIZE, MAX_CHUNKS};
use crate::net::is_timeout;

pub mod codec;
pub mod codes;
pub mod conn;

pub use codec::{Decoded, Message, chunk_header, decode};
pub use codes::code;
pub use conn::{Conn, read_message, write_message};

/// The protocol version this build speaks: 2 adds the server's unsolicited `Gained` frame
/// (holdings pushed as chunks complete). A server answers a version-1 `Hello` as a
/// version-1 peer (it never sends `Gained` there), and a client refused by a version-1
/// server says `Hello` again in version 1 (`PROTOCOL.md` section 7.3).
pub const PROTOCOL_VERSION: u16 = 2;
/// The oldest protocol version this build still speaks: version 1, which has no `Gained`.
pub const MIN_PROTOCOL_VERSION: u16 = 1;
/// The first protocol version whose servers push `Gained` and whose clients take it.
pub const GAINED_VERSION: u16 = 2;
/// Most chunk indexes one `Gained` frame carries: 1 024 of 4 bytes, a 4 KiB frame like the
/// `Have` of 32 768 chunks. A server pushes after every reply, so a frame usually carries a
/// few indexes; one that fell further behind sends several frames. Each chunk is pushed
/// once per connection, so a whole download costs a connection 4 bytes a chunk, where the
/// version-1 client's polling cost a full `Have` ten times a second.
pub const MAX_GAINED: usize = 1024;
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

/// The largest frame a client should accept for an asset cut in chunks of `chunk_size`.
pub fn chunk_frame_limit(chunk_size: u32) -> u32 {
    (1 + 4 + chunk_size).max(MAX_CONTROL_FRAME)
}

/// Why reading a frame failed.
#[derive(Debug)]
pub enum WireError {
    /// The socket failed.
    Io(io::Error),
    /// The whole frame did not arrive within this allowance (a silent peer and one
    /// trickling a byte at a time alike).
    Timeout(Duration),
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
    /// True when the whole frame missed its deadline, or the socket timed out.
    pub fn is_timeout(&self) -> bool {
        match self {
            WireError::Timeout(_) => true,
            WireError::Io(e) => is_timeout(e),
            _ => false,
        }
    }

    /// The error code to send back to the peer for this failure, if one should be sent.
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            WireError::TooLarge { .. } | WireError::UnknownType(_) | WireError::Malformed(_) => {
                Some(code::BAD_FRAME)
            }
            WireError::Io(_) | WireError::Timeout(_) | WireError::Closed => None,
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Timeout(after) => write!(f, "timed out after {after:?}"),
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
