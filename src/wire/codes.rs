//! The numbers on the wire that name things: the type byte of each frame and the error
//! codes an `Error` frame carries (`PROTOCOL.md` sections 5 and 6).

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
pub(crate) mod kind {
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
    /// Server → client, unsolicited (version 2): chunks the server gained.
    pub const GAINED: u8 = 0x0c;
}
