//! What a gateway request asks for, without sockets: the byte range of a `Range` header
//! (RFC 9110 §14), the content type a file name's extension calls for, and file names in
//! URL paths (percent-encoding).

/// What a `Range` header asks of an asset of a given size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// The whole asset (no header, or one we ignore as the RFC allows: another unit,
    /// garbage): a 200.
    Whole,
    /// Bytes `start..=end`: a 206.
    Part {
        /// The first byte.
        start: u64,
        /// The last byte (inclusive, as in `Content-Range`).
        end: u64,
    },
    /// Nothing of it can be served: a 416 with `Content-Range: bytes */SIZE`.
    Unsatisfiable,
}

/// Longest `Range` value looked at: a player sends one range of two numbers; a longer
/// value is someone's experiment, answered with the whole asset.
const MAX_RANGE_HEADER: usize = 1024;

/// What `header` (the value of `Range`, if any) asks of an asset of `size` bytes. Several
/// ranges are answered with the first satisfiable one (RFC 9110 lets a server answer with
/// less than asked; a multipart answer no player needs). A header that does not parse is
/// ignored (the whole asset), as the RFC says.
pub fn parse_range(header: Option<&str>, size: u64) -> Wanted {
    let Some(header) = header else {
        return Wanted::Whole;
    };
    if header.len() > MAX_RANGE_HEADER {
        return Wanted::Whole;
    }
    let Some((unit, specs)) = header.trim().split_once('=') else {
        return Wanted::Whole;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return Wanted::Whole;
    }
    let mut parsed = Vec::new();
    for spec in specs.split(',') {
        let spec = spec.trim();
        if spec.is_empty() {
            continue;
        }
        match parse_spec(spec) {
            Some(spec) => parsed.push(spec),
            None => return Wanted::Whole,
        }
    }
    if parsed.is_empty() {
        return Wanted::Whole;
    }
    parsed
        .into_iter()
        .find_map(|spec| spec.within(size))
        .map_or(Wanted::Unsatisfiable, |(start, end)| Wanted::Part {
            start,
            end,
        })
}

/// One range of a `Range` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// `first-` or `first-last`.
    From { first: u64, last: Option<u64> },
    /// `-n`: the last n bytes.
    Suffix(u64),
}

fn parse_spec(spec: &str) -> Option<Spec> {
    let (first, last) = spec.split_once('-')?;
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        return Some(Spec::Suffix(number(last)?));
    }
    let first = number(first)?;
    let last = if last.is_empty() {
        None
    } else {
        Some(number(last)?)
    };
    if last.is_some_and(|last| last < first) {
        return None;
    }
    Some(Spec::From { first, last })
}

/// Digits only (no sign, no space inside), at most what fits in a u64.
fn number(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

impl Spec {
    /// The bytes `start..=end` of an asset of `size` this range covers, if any.
    fn within(self, size: u64) -> Option<(u64, u64)> {
        match self {
            Spec::From { first, last } => {
                (first < size).then(|| (first, last.map_or(size - 1, |l| l.min(size - 1))))
            }
            Spec::Suffix(0) => None,
            Spec::Suffix(n) => (size > 0).then(|| (size.saturating_sub(n), size - 1)),
        }
    }
}

/// The content type for a file name, from its extension (lowercase compared); binary
/// data when unknown, so that a browser offers to save rather than guess.
pub fn content_type(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, ext)| ext.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "m4a" => "audio/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "mov" => "video/quicktime",
        "ogg" | "ogv" => "video/ogg",
        "opus" => "audio/ogg",
        "mp3" => "audio/mpeg",
        "wav" => "audio/wav",
        "flac" => "audio/flac",
        "m3u8" => "application/vnd.apple.mpegurl",
        "ts" => "video/mp2t",
        "m4s" => "video/iso.segment",
        "mpd" => "application/dash+xml",
        "vtt" => "text/vtt",
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "json" => "application/json",
        "js" => "text/javascript",
        "css" => "text/css",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "svg" => "image/svg+xml",
        "pdf" => "application/pdf",
        "zip" => "application/zip",
        "gz" | "tgz" => "application/gzip",
        "tar" => "application/x-tar",
        _ => "application/octet-stream",
    }
}

/// `name` as a URL path: every byte but letters, digits, `-._~` and `/` percent-encoded.
pub fn path_escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A URL path with its percent-escapes decoded; `None` when an escape is malformed or the
/// result is not UTF-8 or holds a NUL.
pub fn path_unescape(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    (!text.contains('\0')).then_some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(start: u64, end: u64) -> Wanted {
        Wanted::Part { start, end }
    }

    #[test]
    fn ranges_at_the_start_middle_end_suffix_and_open() {
        let size = 1000;
        assert_eq!(parse_range(Some("bytes=0-99"), size), part(0, 99));
        assert_eq!(parse_range(Some("bytes=400-599"), size), part(400, 599));
        assert_eq!(parse_range(Some("bytes=900-999"), size), part(900, 999));
        assert_eq!(
            parse_range(Some("bytes=900-5000"), size),
            part(900, 999),
            "an end past the size is cut to it"
        );
        assert_eq!(parse_range(Some("bytes=-100"), size), part(900, 999));
        assert_eq!(parse_range(Some("bytes=-5000"), size), part(0, 999));
        assert_eq!(parse_range(Some("bytes=100-"), size), part(100, 999));
        assert_eq!(parse_range(Some("BYTES = 7-7"), size), part(7, 7));
        assert_eq!(parse_range(None, size), Wanted::Whole);
    }

    #[test]
    fn several_ranges_are_answered_with_the_first_satisfiable() {
        assert_eq!(parse_range(Some("bytes=0-9, 20-29"), 100), part(0, 9));
        assert_eq!(parse_range(Some("bytes=500-600,10-19"), 100), part(10, 19));
    }

    #[test]
    fn unsatisfiable_ranges() {
        for header in [
            "bytes=1000-",
            "bytes=1000-2000",
            "bytes=-0",
            "bytes=5000-,6000-",
        ] {
            assert_eq!(
                parse_range(Some(header), 1000),
                Wanted::Unsatisfiable,
                "{header}"
            );
        }
        assert_eq!(parse_range(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-10"), 0), Wanted::Unsatisfiable);
    }

    #[test]
    fn garbage_is_ignored_and_the_whole_asset_answered() {
        let long = format!("bytes={}", "1-2,".repeat(400));
        for header in [
            "",
            "bytes",
            "bytes=",
            "bytes=abc",
            "bytes=5-1",
            "bytes=1-2-3",
            "bytes=+1-2",
            "bytes= - ",
            "items=0-9",
            "bytes=99999999999999999999999-",
            "bytes=0-9,x",
            long.as_str(),
        ] {
            assert_eq!(parse_range(Some(header), 1000), Wanted::Whole, "{header:?}");
        }
    }

    #[test]
    fn names_round_trip_through_url_paths() {
        for name in ["clip.mp4", "a b/c%d é.webm", "x?y#z&.ts"] {
            let escaped = path_escape(name);
            assert!(!escaped.contains([' ', '?', '#', '&']), "{escaped}");
            assert_eq!(path_unescape(&escaped).as_deref(), Some(name));
        }
        for bad in ["%", "%4", "%zz", "%00", "%ff"] {
            assert_eq!(path_unescape(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types_follow_the_extension() {
        assert_eq!(content_type("film.MP4"), "video/mp4");
        assert_eq!(content_type("a/b/clip.webm"), "video/webm");
        assert_eq!(content_type("index.m3u8"), "application/vnd.apple.mpegurl");
        assert_eq!(content_type("seg001.ts"), "video/mp2t");
        assert_eq!(content_type("README"), "application/octet-stream");
        assert_eq!(content_type(""), "application/octet-stream");
    }
}
