//! HTTP answers: the [`Response`] a handler returns, and the bytes of its status line and
//! header fields.

use std::fmt::Write as _;
use std::time::SystemTime;

/// An answer: status, content type, body, and any further header fields.
#[derive(Clone, Debug)]
pub struct Response {
    pub(super) status: u16,
    pub(super) content_type: &'static str,
    pub(super) body: Vec<u8>,
    pub(super) headers: Vec<(&'static str, String)>,
}

impl Response {
    /// An answer with `body` of type `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
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
pub(super) fn response_head(response: &Response, body_len: usize, close: bool) -> String {
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
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The bytes of a whole answer sent to a refused connection before it is closed.
pub(super) fn refusal(response: &Response) -> Vec<u8> {
    let mut bytes = response_head(response, response.body.len(), true).into_bytes();
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
