//! HTTP answers: the [`Response`] a handler returns, and the bytes of its status line and
//! header fields.

use std::fmt::Write as _;
use std::io;
use std::time::SystemTime;

/// A body written by the handler's code straight to the socket (a gateway's Range answer
/// of a gigabyte is never held in memory): it must write exactly the length it was given
/// with. The writer applies the server's write deadline to every write.
pub type BodyWriter = Box<dyn FnOnce(&mut dyn io::Write) -> io::Result<()> + Send>;

/// An answer: status, content type, body, and any further header fields.
pub struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: Vec<u8>,
    pub(super) headers: Vec<(&'static str, String)>,
    /// A streamed body and its length, instead of `body`.
    pub(super) stream: Option<(u64, BodyWriter)>,
}

impl std::fmt::Debug for Response {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("body_len", &self.body_len())
            .field("headers", &self.headers)
            .finish()
    }
}

impl Response {
    /// An answer with `body` of type `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
            stream: None,
        }
    }

    /// An answer whose `len` body bytes `write` sends to the client as they come (a HEAD
    /// request gets the length and not the body: `write` is then not called).
    pub fn streamed(
        status: u16,
        content_type: &'static str,
        len: u64,
        write: BodyWriter,
    ) -> Response {
        Response {
            stream: Some((len, write)),
            ..Response::new(status, content_type, Vec::new())
        }
    }

    /// The length of the body, sent as `Content-Length`.
    pub(super) fn body_len(&self) -> u64 {
        self.stream
            .as_ref()
            .map_or(self.body.len() as u64, |(len, _)| *len)
    }

    /// An error answer: `{"error": message}`.
    pub fn error(status: u16, message: impl Into<String>) -> Response {
        Response::new(status, "application/json", error_body(message))
    }

    /// Adds a header field.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }
}

/// The JSON body of an error answer: `{"error":"..."}`, the shape every API client reads
/// (written here so that the HTTP layer needs none of the tracker's types).
pub fn error_body(message: impl Into<String>) -> String {
    serde_json::json!({ "error": message.into() }).to_string()
}

/// The bytes of an answer's status line and header fields.
pub(super) fn response_head(response: &Response, body_len: u64, close: bool) -> String {
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "HTTP/1.1 {} {}\r\nDate: {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
        response.status,
        reason(response.status),
        httpdate::fmt_http_date(SystemTime::now()),
        response.content_type,
        body_len,
    );
    for (name, value) in &response.headers {
        let _ = write!(head, "{name}: {value}\r\n");
    }
    if close {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    head
}

/// The reason phrase of the statuses we send.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The bytes of a whole answer sent to a refused connection before it is closed.
pub(super) fn refusal(response: &Response) -> Vec<u8> {
    let mut bytes = response_head(response, response.body.len() as u64, true).into_bytes();
    bytes.extend_from_slice(&response.body);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_is_the_json_every_client_reads() {
        assert_eq!(
            error_body("no \"such\" asset"),
            r#"{"error":"no \"such\" asset"}"#
        );
        let head = response_head(&Response::error(404, "x"), 11, true);
        assert!(head.starts_with("HTTP/1.1 404 Not Found\r\n"), "{head}");
        assert!(head.contains("Content-Type: application/json\r\nContent-Length: 11\r\n"));
        assert!(head.ends_with("Connection: close\r\n\r\n"), "{head}");
    }
}
