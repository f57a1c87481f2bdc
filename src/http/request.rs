//! The [`Request`] a handler reads: its head, and its body taken from the connection on
//! demand and bounded before allocation.

use std::net::SocketAddr;
use std::time::Instant;

use super::conn::{Conn, Failure, transfer_allowance};
use super::head::{Head, Method};

/// A body the handler left unread is read and dropped to keep the connection if it is no
/// larger than this (an announce is far smaller); a larger one closes the connection.
const MAX_DISCARD: u64 = 64 << 10;
/// Most of a body's claimed length allocated before its bytes arrive.
const MAX_BODY_PREALLOCATION: u64 = 1 << 20;

/// A request body that could not be read: the status and message to answer with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BodyError {
    /// 413 (too large), 408 (too slow), 400 (cut short) or 503 (shutting down).
    pub status: u16,
    /// What went wrong, for the error body.
    pub message: String,
}

/// A request: method, target, header fields, the client's address, and a body read on
/// demand with [`Request::body`].
pub struct Request<'c> {
    pub(super) head: Head,
    pub(super) conn: &'c mut Conn,
    pub(super) length: u64,
    /// Body bytes taken from the connection so far.
    pub(super) received: u64,
    pub(super) expect_continue: bool,
    /// Whether "100 Continue" was sent.
    pub(super) continued: bool,
    /// Whether reading the body failed, leaving the connection unusable.
    pub(super) broken: bool,
    pub(super) deadline: Instant,
}

impl Request<'_> {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The request target, as sent: `/assets?x=1`.
    pub fn url(&self) -> &str {
        &self.head.target
    }

    /// The target without its query: `/assets`.
    pub fn path(&self) -> &str {
        self.head.target.split('?').next().unwrap_or("")
    }

    /// The value of the first header field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.header(name)
    }

    /// The client's address.
    pub fn remote_addr(&self) -> SocketAddr {
        self.conn.remote
    }

    /// Whether the request came over TLS (the server was given a certificate): what a
    /// handler checks before it answers with a secret.
    pub fn is_tls(&self) -> bool {
        self.conn.is_tls()
    }

    /// The body's length, from `Content-Length` (0 without one).
    pub fn body_length(&self) -> u64 {
        self.length
    }

    /// Reads the whole body. One longer than `limit` is refused (413) before a byte of it is
    /// read or allocated; a client that asked with `Expect: 100-continue` is told to send it
    /// only once it fits.
    pub fn body(&mut self, limit: usize) -> Result<Vec<u8>, BodyError> {
        let length = self.length;
        if length > limit as u64 {
            return Err(BodyError {
                status: 413,
                message: format!(
                    "request body is {length} bytes, larger than the {limit} bytes allowed"
                ),
            });
        }
        if self.received > 0 || self.broken {
            return Err(BodyError {
                status: 500,
                message: "the request body was already read".into(),
            });
        }
        // Memory grows with the bytes that arrive, not with the length a client claims.
        let mut body = Vec::with_capacity(length.min(MAX_BODY_PREALLOCATION) as usize);
        self.take_body(length, |bytes| body.extend_from_slice(bytes))?;
        Ok(body)
    }

    /// Takes `count` body bytes from the connection, passing them to `sink`.
    fn take_body(&mut self, count: u64, mut sink: impl FnMut(&[u8])) -> Result<(), BodyError> {
        let conn = &mut *self.conn;
        let buffered = (conn.buffered() as u64).min(count) as usize;
        sink(&conn.buf[conn.pos..conn.pos + buffered]);
        conn.pos += buffered;
        self.received += buffered as u64;
        let end = self.received + (count - buffered as u64);
        if self.received < end && self.expect_continue && !self.continued {
            self.continued = true;
            let per_write = conn.limits.write_timeout;
            if let Err(e) = conn
                .socket
                .write_all(&[b"HTTP/1.1 100 Continue\r\n\r\n"], per_write)
            {
                self.broken = true;
                return Err(body_failure(e, self.received, self.length));
            }
        }
        let mut scratch = [0u8; 16 << 10];
        while self.received < end {
            let want = ((end - self.received) as usize).min(scratch.len());
            match conn.socket.read_by(&mut scratch[..want], self.deadline) {
                Ok(n) => {
                    sink(&scratch[..n]);
                    self.received += n as u64;
                    self.deadline += transfer_allowance(n as u64);
                }
                Err(e) => {
                    self.broken = true;
                    return Err(body_failure(e, self.received, self.length));
                }
            }
        }
        Ok(())
    }

    /// Makes the connection ready for its next request by dropping a small unread body;
    /// false when it must close instead.
    pub(super) fn finish(&mut self) -> bool {
        let left = self.length - self.received;
        if self.broken {
            return false;
        }
        if left == 0 {
            return true;
        }
        // A client that asked before sending may send the body or not: nothing tells which
        // bytes come next, so the connection cannot carry another request.
        if self.expect_continue && !self.continued && self.conn.buffered() == 0 {
            return false;
        }
        left <= MAX_DISCARD && self.take_body(left, |_| {}).is_ok()
    }
}

/// The error for a body that could not be read.
fn body_failure(failure: Failure, received: u64, length: u64) -> BodyError {
    let (status, message) = match failure {
        Failure::Timeout => (
            408,
            format!("the request body did not arrive in time: {received} of {length} bytes came"),
        ),
        Failure::Closed => (
            400,
            format!("the connection closed after {received} of {length} body bytes"),
        ),
        Failure::Stopped => (503, "the server is shutting down".to_string()),
        Failure::Io(e) => (400, format!("reading the request body failed: {e}")),
        e @ (Failure::Tls(_) | Failure::NotTls) => {
            (400, format!("reading the request body failed: {e}"))
        }
    };
    BodyError { status, message }
}
