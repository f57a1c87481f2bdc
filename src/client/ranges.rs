//! The HTTP side of a web seed, pure: which run of consecutive chunks one request asks
//! for, its `Range` header, and whether an answer is the bytes asked for (status 206, no
//! content coding, a `Content-Range` of exactly that range of a file of the asset's size).
//! The worker in `web_seed` does the I/O and follows what these say.

use std::fmt;

/// Chunks asked for in one request at most: the plan keeps a few requests in flight per
/// origin connection ([`super::PIPELINE_DEPTH`]), and one request carries all of them that
/// are consecutive. The bound keeps a request's deadline (a chunk timeout per chunk) and
/// what a cancel cannot stop small.
pub const MAX_RUN_CHUNKS: usize = 16;

/// Splits off the front of `queue` the run one request asks for: the first chunk and
/// those that follow it by one, up to [`MAX_RUN_CHUNKS`]; returns `(first, count)`.
/// `queue` is in the order the plan asked (lowest first for an origin).
pub fn front_run(queue: &[u32]) -> Option<(u32, u32)> {
    let first = *queue.first()?;
    let count = queue
        .iter()
        .take(MAX_RUN_CHUNKS)
        .enumerate()
        .take_while(|&(n, &i)| u64::from(i) == u64::from(first) + n as u64)
        .count();
    Some((first, count as u32))
}

/// The bytes of chunks `first .. first + count` of an asset of `size` bytes cut in
/// `chunk_size` chunks, as an inclusive `(start, end)` as HTTP writes them. `None` when
/// the run is empty or past the end.
pub fn byte_range(size: u64, chunk_size: u32, first: u32, count: u32) -> Option<(u64, u64)> {
    let start = u64::from(first) * u64::from(chunk_size);
    let end = (u64::from(first) + u64::from(count))
        .saturating_mul(u64::from(chunk_size))
        .min(size);
    (count > 0 && start < end).then(|| (start, end - 1))
}

/// The `Range` header value for an inclusive byte range.
pub fn range_header((start, end): (u64, u64)) -> String {
    format!("bytes={start}-{end}")
}

/// Why an answer is not the bytes asked for. [`Refusal::is_unfit`] tells a server that
/// cannot serve as an origin at all from one that sent the wrong bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 200: the server ignored `Range` and would send the whole file.
    NoRanges,
    /// 206 with a content coding (gzip, br…): the bytes are not the file's.
    Encoded(String),
    /// No `Content-Range`, or one that does not parse.
    BadContentRange(String),
    /// A file of another size than the asset's: another file, or another version of it.
    OtherSize {
        /// What the server says.
        total: u64,
        /// The manifest's size.
        size: u64,
    },
    /// Another range than the one asked for.
    OtherRange {
        /// Asked.
        asked: (u64, u64),
        /// Answered.
        got: (u64, u64),
    },
    /// A `Content-Length` that is not the range's length.
    BadLength {
        /// The range's length.
        expected: u64,
        /// The header.
        got: String,
    },
    /// Any other status (redirects included: the URL to list is the final one).
    Status(u16),
}

impl Refusal {
    /// Whether the server cannot serve as an origin whatever it is asked (as opposed to
    /// having sent other bytes than those asked for, which is a lie about the content).
    pub fn is_unfit(&self) -> bool {
        !matches!(self, Refusal::OtherRange { .. } | Refusal::BadLength { .. })
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::NoRanges => write!(
                f,
                "answered 200 with the whole file to a Range request: the server does not serve byte ranges, which an origin must (nginx: remove max_ranges 0; any static file server or object store serves them)"
            ),
            Refusal::Encoded(coding) => write!(
                f,
                "answered 206 with Content-Encoding {coding:?} despite Accept-Encoding: identity: the bytes are not the file's; turn compression off for this file (nginx: gzip off, or leave its type out of gzip_types)"
            ),
            Refusal::BadContentRange(text) => write!(
                f,
                "answered 206 without a valid Content-Range (got {text:?}; an origin must send bytes START-END/TOTAL)"
            ),
            Refusal::OtherSize { total, size } => write!(
                f,
                "serves a file of {total} bytes, but the asset has {size}: the URL points at another file or another version of it"
            ),
            Refusal::OtherRange { asked, got } => write!(
                f,
                "answered bytes {}-{} when asked for bytes {}-{}",
                got.0, got.1, asked.0, asked.1
            ),
            Refusal::BadLength { expected, got } => write!(
                f,
                "answered a range of {expected} bytes with Content-Length {got:?}"
            ),
            Refusal::Status(416) => write!(
                f,
                "answered 416 (range not satisfiable): the file there is shorter than the asset; the URL points at another file"
            ),
            Refusal::Status(status) if (300..400).contains(status) => write!(
                f,
                "answered {status} (a redirect), which clients do not follow: list the URL it redirects to"
            ),
            Refusal::Status(status) => write!(f, "answered HTTP {status} to a Range request"),
        }
    }
}

/// Parses `bytes START-END/TOTAL` (RFC 9110 14.4) into `(start, end, total)`; a `*` total
/// or any other form is refused: an origin must say exactly what it sends.
pub fn parse_content_range(text: &str) -> Option<(u64, u64, u64)> {
    let spec = text.trim().strip_prefix("bytes ")?;
    let (range, total) = spec.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let number = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    let (start, end, total) = (number(start)?, number(end)?, number(total)?);
    (start <= end && end < total).then_some((start, end, total))
}

/// What a server answered, as the checks need it.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    /// The status code.
    pub status: u16,
    /// `Content-Range`, if any.
    pub content_range: Option<&'a str>,
    /// `Content-Encoding`, if any.
    pub content_encoding: Option<&'a str>,
    /// `Content-Length`, if any (absent with chunked transfer coding).
    pub content_length: Option<&'a str>,
}

/// Checks that `answer` carries exactly bytes `asked` (inclusive) of a file of `size`
/// bytes, unencoded.
pub fn check_answer(answer: &Answer<'_>, asked: (u64, u64), size: u64) -> Result<(), Refusal> {
    match answer.status {
        206 => {}
        200 => return Err(Refusal::NoRanges),
        other => return Err(Refusal::Status(other)),
    }
    if let Some(coding) = answer.content_encoding {
        let coding = coding.trim();
        if !coding.is_empty() && !coding.eq_ignore_ascii_case("identity") {
            return Err(Refusal::Encoded(coding.to_string()));
        }
    }
    let text = answer.content_range.unwrap_or("");
    let Some((start, end, total)) = parse_content_range(text) else {
        return Err(Refusal::BadContentRange(text.chars().take(80).collect()));
    };
    if total != size {
        return Err(Refusal::OtherSize { total, size });
    }
    if (start, end) != asked {
        return Err(Refusal::OtherRange {
            asked,
            got: (start, end),
        });
    }
    let expected = end - start + 1;
    if let Some(length) = answer.content_length
        && length.trim().parse::<u64>().ok() != Some(expected)
    {
        return Err(Refusal::BadLength {
            expected,
            got: length.chars().take(40).collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_the_consecutive_front_of_the_queue_and_bounded() {
        assert_eq!(front_run(&[]), None);
        assert_eq!(front_run(&[7]), Some((7, 1)));
        assert_eq!(front_run(&[3, 4, 5, 9, 10]), Some((3, 3)));
        assert_eq!(front_run(&[5, 4]), Some((5, 1)), "only upwards");
        assert_eq!(front_run(&[u32::MAX, 0]), Some((u32::MAX, 1)));
        let long: Vec<u32> = (10..100).collect();
        assert_eq!(front_run(&long), Some((10, MAX_RUN_CHUNKS as u32)));
    }

    #[test]
    fn byte_ranges_are_inclusive_and_end_at_the_file() {
        // 10 chunks of 100 bytes, the last one 50.
        assert_eq!(byte_range(950, 100, 0, 1), Some((0, 99)));
        assert_eq!(byte_range(950, 100, 2, 3), Some((200, 499)));
        assert_eq!(byte_range(950, 100, 9, 1), Some((900, 949)));
        assert_eq!(byte_range(950, 100, 8, 5), Some((800, 949)));
        assert_eq!(byte_range(950, 100, 10, 1), None);
        assert_eq!(byte_range(950, 100, 3, 0), None);
        assert!(byte_range(u64::MAX, u32::MAX, u32::MAX, u32::MAX).is_some());
        assert_eq!(range_header((200, 499)), "bytes=200-499");
    }

    #[test]
    fn content_range_is_exact_or_refused() {
        assert_eq!(parse_content_range("bytes 0-99/950"), Some((0, 99, 950)));
        for bad in [
            "",
            "bytes 0-99/*",
            "bytes */950",
            "bytes 5-4/950",
            "bytes 0-950/950",
            "bytes -5/950",
            "bytes +1-5/950",
            "items 0-99/950",
            "bytes 0-99/950/1",
            "bytes 0-99999999999999999999999/1",
        ] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    fn answer<'a>(status: u16, range: Option<&'a str>, coding: Option<&'a str>) -> Answer<'a> {
        Answer {
            status,
            content_range: range,
            content_encoding: coding,
            content_length: None,
        }
    }

    #[test]
    fn answers_are_checked_status_coding_range_size_and_length() {
        let asked = (200, 499);
        let ok = answer(206, Some("bytes 200-499/950"), None);
        assert_eq!(check_answer(&ok, asked, 950), Ok(()));
        let identity = answer(206, Some("bytes 200-499/950"), Some("identity"));
        assert_eq!(check_answer(&identity, asked, 950), Ok(()));
        let with_length = Answer {
            content_length: Some("300"),
            ..ok
        };
        assert_eq!(check_answer(&with_length, asked, 950), Ok(()));

        let refused = |a: Answer<'_>| check_answer(&a, asked, 950).unwrap_err();
        let whole = refused(answer(200, None, None));
        assert_eq!(whole, Refusal::NoRanges);
        assert!(whole.is_unfit() && whole.to_string().contains("does not serve byte ranges"));
        let gzip = refused(answer(206, Some("bytes 200-499/950"), Some("gzip")));
        assert_eq!(gzip, Refusal::Encoded("gzip".into()));
        assert!(gzip.to_string().contains("Content-Encoding \"gzip\""));
        assert!(matches!(
            refused(answer(206, None, None)),
            Refusal::BadContentRange(_)
        ));
        assert_eq!(
            refused(answer(206, Some("bytes 200-499/951"), None)),
            Refusal::OtherSize {
                total: 951,
                size: 950
            }
        );
        let shifted = refused(answer(206, Some("bytes 201-500/950"), None));
        assert!(!shifted.is_unfit(), "other bytes than asked: a lie");
        let long = refused(Answer {
            content_length: Some("301"),
            ..ok
        });
        assert!(matches!(long, Refusal::BadLength { expected: 300, .. }));
        for status in [301, 404, 416, 503] {
            assert_eq!(refused(answer(status, None, None)), Refusal::Status(status));
        }
        assert!(Refusal::Status(302).to_string().contains("redirect"));
        assert!(Refusal::Status(416).to_string().contains("shorter"));
    }
}
