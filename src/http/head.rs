//! Request heads: the method, the parsed and owned head, how its body is framed, and
//! whether a connection's buffered bytes hold a request a worker can take (pure: no socket;
//! the poller and the connection read bytes and this says what they mean).

use super::{MAX_HEAD, Response};

/// Most header fields in one request head: clients send a handful, browsers about 15.
pub(super) const MAX_HEADERS: usize = 64;
/// Largest body the poller gathers before it hands a request to a worker, so that a slow
/// sender of a small body costs no worker. An announce is a few hundred bytes plus its
/// bitfield in hex (16 KiB at 65 536 chunks), so 64 KiB covers every announce of an asset
/// up to 262 144 chunks; larger bodies (manifests) are read by the worker, bounded by the
/// request timeout, and one address holds at most its connection cap of workers that way.
/// It also bounds a connection's buffer: [`MAX_HEAD`] plus this.
pub(super) const MAX_BUFFERED_BODY: usize = 64 << 10;

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
#[derive(Debug)]
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

/// A request that cannot be served: the answer to close with, and what to log (empty:
/// nothing, the answer says it all).
#[derive(Debug)]
pub(super) struct Bad {
    pub(super) answer: Response,
    pub(super) log: String,
}

/// A whole request head taken from the buffer.
#[derive(Debug)]
pub(super) struct Parsed {
    /// Bytes of the head; the body follows them.
    pub(super) head_len: usize,
    /// The head and its framing, or why it cannot be served.
    pub(super) outcome: Result<(Head, Framing), Bad>,
}

/// What a connection's buffered bytes hold.
#[derive(Debug)]
pub(super) enum Buffered {
    /// Part of a head: worth looking at again once another line ends.
    Head,
    /// A head whose body, small enough to gather, is whole once this many bytes are buffered.
    Body(usize),
    /// A request for a worker: its head and, when small, its whole body; or an error to answer.
    Ready(Parsed),
}

/// Whether `buf` (a connection's unconsumed bytes) starts with a request a worker can take:
/// a whole head and, for a body of at most [`MAX_BUFFERED_BODY`], the whole body. A larger
/// body, or one the client sends only once told to continue (`Expect: 100-continue`), is
/// left to the worker, which can refuse it (413) before it is sent; so is every body when
/// `gather` is false (the poller holds as many gathered bytes as it may).
pub(super) fn inspect(buf: &[u8], gather: bool) -> Buffered {
    let (head, head_len) = match parse(&buf[..buf.len().min(MAX_HEAD)]) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Buffered::Head,
        Err(bad) => {
            return Buffered::Ready(Parsed {
                head_len: 0,
                outcome: Err(bad),
            });
        }
    };
    let framing = match framing(&head) {
        Ok(framing) => framing,
        Err(answer) => {
            return Buffered::Ready(Parsed {
                head_len,
                outcome: Err(Bad {
                    answer,
                    log: String::new(),
                }),
            });
        }
    };
    let whole = head_len as u64 + framing.length;
    if gather
        && framing.length > 0
        && framing.length <= MAX_BUFFERED_BODY as u64
        && !framing.expect_continue
        && (buf.len() as u64) < whole
    {
        return Buffered::Body(whole as usize);
    }
    Buffered::Ready(Parsed {
        head_len,
        outcome: Ok((head, framing)),
    })
}

/// Parses the head at the start of `buf` (at most [`MAX_HEAD`] bytes): the head and its
/// length, `None` while it is incomplete, or the error to answer.
fn parse(buf: &[u8]) -> Result<Option<(Head, usize)>, Bad> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let bad = |status, log: String| Bad {
        answer: Response::error(status, &log),
        log,
    };
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => {
            let head = Head {
                method: Method::parse(parsed.method.unwrap_or("")),
                target: parsed.path.unwrap_or("").to_string(),
                minor_version: parsed.version.unwrap_or(1),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value);
                        (h.name.to_string(), value.into_owned())
                    })
                    .collect(),
            };
            Ok(Some((head, len)))
        }
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => Err(bad(
            431,
            format!("request head is larger than the {MAX_HEAD} bytes allowed"),
        )),
        Ok(httparse::Status::Partial) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(bad(
            431,
            format!("request has more than the {MAX_HEADERS} header fields allowed"),
        )),
        Err(e) => Err(bad(
            400,
            format!("malformed request ({e}): this server speaks HTTP/1.1 (no TLS, no HTTP/2)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(buf: &[u8]) -> Parsed {
        match inspect(buf, true) {
            Buffered::Ready(parsed) => parsed,
            other => panic!(
                "{:?}: not ready but {other:?}",
                String::from_utf8_lossy(buf)
            ),
        }
    }

    fn status(parsed: &Parsed) -> u16 {
        match &parsed.outcome {
            Ok(_) => 200,
            Err(bad) => bad.answer.status,
        }
    }

    #[test]
    fn a_request_is_ready_once_its_head_and_small_body_are_buffered() {
        assert!(matches!(inspect(b"", true), Buffered::Head));
        assert!(matches!(
            inspect(b"GET / HTTP/1.1\r\nHo", true),
            Buffered::Head
        ));
        let get = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b";
        let parsed = ready(get);
        assert_eq!(
            parsed.head_len,
            get.len() - 6,
            "the pipelined rest is not the head"
        );
        let post = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel";
        match inspect(post, true) {
            Buffered::Body(whole) => assert_eq!(whole, post.len() + 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            status(&ready(
                b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello"
            )),
            200
        );
    }

    #[test]
    fn large_and_announced_bodies_are_left_to_the_worker() {
        // The worker refuses a body too large for the route before it is sent, and tells an
        // Expect: 100-continue client to go on: neither may wait for the body here.
        let large = format!(
            "POST /p HTTP/1.1\r\nContent-Length: {}\r\n\r\n",
            MAX_BUFFERED_BODY + 1
        );
        assert_eq!(status(&ready(large.as_bytes())), 200);
        let asks = b"POST /p HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(status(&ready(asks)), 200);
    }

    #[test]
    fn bad_heads_are_ready_with_their_error() {
        assert_eq!(status(&ready(b"\x16\x03\x01\x02\x00\x01")), 400);
        assert_eq!(
            status(&ready(
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            )),
            411
        );
        let long = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(
            status(&ready(long.as_bytes())),
            431,
            "a head past the limit, unfinished"
        );
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(status(&ready(many.as_bytes())), 431);
    }
}
