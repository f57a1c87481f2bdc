//! Request heads: the method, the parsed and owned head, and how its body is framed
//! (pure: no socket; the connection reads a head and this says what it means).

use super::Response;

/// A request method: those our servers route on, and any other as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`: answered like `GET`, without the body.
    Head,
    /// `POST`
    Post,
    /// Any other method.
    Other(String),
}

impl Method {
    pub(super) fn parse(text: &str) -> Method {
        match text {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            other => Method::Other(other.to_string()),
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Other(text) => text,
        })
    }
}

/// A request head, parsed and owned.
#[derive(Debug)]
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(super) minor_version: u8,
    pub(super) headers: Vec<(String, String)>,
}

impl Head {
    pub(super) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }
}

/// How a request's body is framed, and whether the connection may carry another request.
pub(super) struct Framing {
    pub(super) length: u64,
    pub(super) keep_alive: bool,
    pub(super) expect_continue: bool,
}

/// Reads the framing from the head; a request we cannot frame is answered and its
/// connection closed.
pub(super) fn framing(head: &Head) -> Result<Framing, Response> {
    if let Some(coding) = head.header("Transfer-Encoding") {
        return Err(if head.has_token("Transfer-Encoding", "chunked") {
            Response::error(
                411,
                "chunked request bodies are not accepted: send the body with a Content-Length header",
            )
        } else {
            Response::error(
                501,
                format!(
                    "Transfer-Encoding {coding:?} is not supported: send the body with a Content-Length header"
                ),
            )
        });
    }
    let mut length = None;
    for (_, value) in head
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Length"))
    {
        let parsed = value
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|_| value.trim().bytes().all(|b| b.is_ascii_digit()));
        match (parsed, length) {
            (Some(n), None) => length = Some(n),
            (Some(n), Some(m)) if n == m => {}
            _ => {
                return Err(Response::error(
                    400,
                    format!("invalid Content-Length {value:?}: give one decimal number of bytes"),
                ));
            }
        }
    }
    let keep_alive = head.minor_version >= 1 && !head.has_token("Connection", "close");
    Ok(Framing {
        length: length.unwrap_or(0),
        keep_alive,
        expect_continue: head.has_token("Expect", "100-continue"),
    })
}
