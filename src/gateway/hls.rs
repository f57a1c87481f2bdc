//! HLS playlists (`.m3u8`) of a directory asset, read as hostile input: the segments of a
//! media playlist in order with their `#EXTINF` durations and `#EXT-X-MAP` init segment,
//! the variants of a master playlist, every URI resolved to a path inside the asset, and
//! what to fetch ahead of a player that reads one of them.
//!
//! Pure: text in, paths out. The gateway reads the playlist's bytes and looks the paths
//! up in the manifest; a URI that names nothing inside the asset (absolute, another host,
//! `..` above the asset's root) is left out, never followed.

/// Largest playlist parsed: a 2 h film in 2 s segments is 3600 entries of ~60 bytes, 216 KB.
pub const MAX_PLAYLIST_BYTES: usize = 1024 * 1024;
/// Longest line considered; longer ones are skipped (no URI of ours is that long).
const MAX_LINE: usize = 4096;
/// Most segments (or variants) kept of one playlist: 12 h of 2 s segments.
const MAX_ENTRIES: usize = 21_600;
/// Directory depth of a resolved path (the manifest bounds its own depth too).
const MAX_DEPTH: usize = 32;
/// Read-ahead stops after this much media (seconds, from `#EXTINF`): hls.js and AVPlayer
/// ask for the next segment once the current one is in, so 6 s (three 2 s segments, or
/// one of the common 6 s) keeps the next requests answered from the store even when the
/// swarm is slower than the media for a few seconds...
pub const AHEAD_SECS: f64 = 6.0;
/// ...and after this many segments whatever the durations say: a playlist that claims
/// 0 s segments must not turn read-ahead into fetching the whole asset.
pub const AHEAD_MAX: usize = 3;

/// One media segment.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// Its path inside the asset.
    pub path: String,
    /// Its `#EXTINF` duration in seconds (0 when missing or unreadable).
    pub secs: f64,
}

/// What a playlist lists.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Playlist {
    /// The init segment (`#EXT-X-MAP:URI=`) of fmp4 segments, if any.
    pub init: Option<String>,
    /// Media segments, in playlist order.
    pub segments: Vec<Segment>,
    /// Variant playlists of a master playlist (`#EXT-X-STREAM-INF`), in order.
    pub variants: Vec<String>,
    /// Entries left out: URIs outside the asset, lines too long, past the bounds.
    pub skipped: usize,
}

/// Whether `path` names a playlist.
pub fn is_playlist(path: &str) -> bool {
    let lower = path.to_ascii_lowercase();
    lower.ends_with(".m3u8") || lower.ends_with(".m3u")
}

/// Parses the playlist at `playlist_path` (inside the asset) from its bytes; bytes past
/// [`MAX_PLAYLIST_BYTES`] and bytes that are not UTF-8 are ignored.
pub fn parse(playlist_path: &str, bytes: &[u8]) -> Playlist {
    let bytes = &bytes[..bytes.len().min(MAX_PLAYLIST_BYTES)];
    let text = String::from_utf8_lossy(bytes);
    let mut out = Playlist::default();
    let mut secs: Option<f64> = None;
    let mut variant_next = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.len() > MAX_LINE {
            out.skipped += 1;
            continue;
        }
        if let Some(tag) = line.strip_prefix('#') {
            if let Some(value) = tag.strip_prefix("EXTINF:") {
                let number = value.split(',').next().unwrap_or("").trim();
                secs = number
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0);
            } else if tag.starts_with("EXT-X-STREAM-INF") {
                variant_next = true;
            } else if let Some(attrs) = tag.strip_prefix("EXT-X-MAP:")
                && out.init.is_none()
                && let Some(uri) = attribute(attrs, "URI")
            {
                match resolve(playlist_path, uri) {
                    Some(path) => out.init = Some(path),
                    None => out.skipped += 1,
                }
            }
            continue;
        }
        let entry = resolve(playlist_path, line);
        let full = out.segments.len() + out.variants.len() >= MAX_ENTRIES;
        match entry {
            Some(path) if !full => {
                if variant_next {
                    out.variants.push(path);
                } else {
                    out.segments.push(Segment {
                        path,
                        secs: secs.unwrap_or(0.0),
                    });
                }
            }
            _ => out.skipped += 1,
        }
        secs = None;
        variant_next = false;
    }
    out
}

impl Playlist {
    /// What to fetch ahead of a player that reads `path`: after the playlist itself, its
    /// init segment and first segments; after a segment, the segments that follow it, up
    /// to [`AHEAD_SECS`] of media and [`AHEAD_MAX`] segments. Empty for a path it does not
    /// list (the player went elsewhere).
    pub fn ahead_of(&self, playlist_path: &str, path: &str) -> Vec<String> {
        let from = if path == playlist_path || self.init.as_deref() == Some(path) {
            0
        } else {
            match self.segments.iter().position(|s| s.path == path) {
                Some(i) => i + 1,
                None => return Vec::new(),
            }
        };
        let mut out = Vec::new();
        if from == 0
            && path != self.init.as_deref().unwrap_or("")
            && let Some(init) = &self.init
        {
            out.push(init.clone());
        }
        let mut secs = 0.0;
        for segment in self.segments.iter().skip(from).take(AHEAD_MAX) {
            out.push(segment.path.clone());
            secs += segment.secs;
            if secs >= AHEAD_SECS {
                break;
            }
        }
        out
    }
}

/// The value of `name` in an attribute list (`URI="init.mp4",BYTERANGE=...`).
fn attribute<'a>(attrs: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = attrs;
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let (value, after) = quoted.split_once('"')?;
            (value, after.strip_prefix(',').unwrap_or(after))
        } else {
            after.split_once(',').unwrap_or((after, ""))
        };
        if key.trim() == name {
            return Some(value);
        }
        rest = next;
    }
    None
}

/// `uri` relative to the playlist at `playlist_path`, as a path inside the asset; `None`
/// for anything else: a scheme or host (`http://`, `//host`), an absolute path, `..` above
/// the root, NUL or control characters, a bad `%` escape, too deep.
pub fn resolve(playlist_path: &str, uri: &str) -> Option<String> {
    // A query or fragment does not name another file.
    let uri = uri.split(['?', '#']).next().unwrap_or("");
    if uri.is_empty() || uri.starts_with('/') || uri.starts_with('\\') {
        return None;
    }
    // A scheme: letters, digits, `+-.` before the first `:` (a file name with `:` after a
    // `/` is still a path).
    if let Some((scheme, _)) = uri.split_once(':')
        && !scheme.contains('/')
    {
        return None;
    }
    let uri = super::range::path_unescape(uri)?;
    if uri.chars().any(|c| c.is_control() || c == '\\') {
        return None;
    }
    let mut parts: Vec<&str> = playlist_path.split('/').collect();
    parts.pop(); // the playlist's own name
    for part in uri.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop()?;
            }
            part => parts.push(part),
        }
    }
    if parts.is_empty() || parts.len() > MAX_DEPTH {
        return None;
    }
    Some(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEDIA: &str = "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n\
        #EXT-X-MAP:URI=\"init.mp4\"\n#EXTINF:2.000000,\nseg0.m4s\n#EXTINF:2.0,\nseg1.m4s\n\
        #EXTINF:2,\nseg2.m4s\n#EXTINF:2.0,\nseg3.m4s\n#EXTINF:1.5,\nseg4.m4s\n#EXT-X-ENDLIST\n";

    #[test]
    fn a_media_playlist_lists_its_segments_in_order_relative_to_itself() {
        let p = parse("hls/v0/index.m3u8", MEDIA.as_bytes());
        assert_eq!(p.init.as_deref(), Some("hls/v0/init.mp4"));
        let paths: Vec<&str> = p.segments.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(
            paths,
            ["seg0", "seg1", "seg2", "seg3", "seg4"].map(|s| format!("hls/v0/{s}.m4s"))
        );
        assert_eq!(p.segments[4].secs, 1.5);
        assert_eq!(p.skipped, 0);
        assert!(p.variants.is_empty());
    }

    #[test]
    fn read_ahead_follows_the_playlist_up_to_six_seconds_or_three_segments() {
        let p = parse("index.m3u8", MEDIA.as_bytes());
        assert_eq!(
            p.ahead_of("index.m3u8", "index.m3u8"),
            ["init.mp4", "seg0.m4s", "seg1.m4s", "seg2.m4s"]
        );
        assert_eq!(
            p.ahead_of("index.m3u8", "seg1.m4s"),
            ["seg2.m4s", "seg3.m4s", "seg4.m4s"]
        );
        assert_eq!(p.ahead_of("index.m3u8", "seg4.m4s"), Vec::<String>::new());
        assert_eq!(p.ahead_of("index.m3u8", "other.m4s"), Vec::<String>::new());
        // 6 s segments: one is enough.
        let long = parse(
            "a.m3u8",
            b"#EXTINF:6,\na.ts\n#EXTINF:6,\nb.ts\n#EXTINF:6,\nc.ts\n",
        );
        assert_eq!(long.ahead_of("a.m3u8", "a.ts"), ["b.ts"]);
        // Zero-length claims stop at the count.
        let zero = "#EXTINF:0,\nx.ts\n#EXTINF:0,\ny.ts\n".repeat(5);
        let zero = parse("z.m3u8", zero.as_bytes());
        assert_eq!(zero.ahead_of("z.m3u8", "x.ts").len(), AHEAD_MAX);
    }

    #[test]
    fn a_master_playlist_lists_its_variants() {
        let text = "#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=800000,RESOLUTION=640x360\nlow/index.m3u8\n\
            #EXT-X-STREAM-INF:BANDWIDTH=2000000\nhigh/index.m3u8?x=1\n";
        let p = parse("master.m3u8", text.as_bytes());
        assert_eq!(p.variants, ["low/index.m3u8", "high/index.m3u8"]);
        assert!(p.segments.is_empty());
    }

    #[test]
    fn uris_outside_the_asset_are_left_out() {
        let text = "#EXT-X-MAP:URI=\"../../init.mp4\"\n#EXTINF:2,\nhttp://evil.example/a.ts\n\
            #EXTINF:2,\n//evil.example/b.ts\n#EXTINF:2,\n/etc/passwd\n#EXTINF:2,\n../../x.ts\n\
            #EXTINF:2,\n..%2f..%2fy.ts\n#EXTINF:2,\nfile:z.ts\n#EXTINF:2,\na%00b.ts\n\
            #EXTINF:2,\nC:\\w.ts\n#EXTINF:2,\n../ok.ts\n#EXTINF:2,\n./same.ts\n";
        let p = parse("dir/index.m3u8", text.as_bytes());
        let paths: Vec<&str> = p.segments.iter().map(|s| s.path.as_str()).collect();
        assert_eq!(paths, ["ok.ts", "dir/same.ts"]);
        assert_eq!(p.init, None);
        assert_eq!(p.skipped, 9);
    }

    #[test]
    fn hostile_playlists_are_bounded_and_never_panic() {
        // Huge: bytes past the bound are not read.
        let huge = "#EXTINF:2,\ns.ts\n".repeat(MAX_PLAYLIST_BYTES / 8);
        let p = parse("h.m3u8", huge.as_bytes());
        assert!(p.segments.len() <= MAX_ENTRIES);
        assert!(p.segments.len() + p.skipped <= MAX_PLAYLIST_BYTES / 16 + 1);
        // A long line, garbage durations, binary, unterminated attributes.
        let mut text = format!("{}\n", "a".repeat(MAX_LINE + 1)).into_bytes();
        text.extend_from_slice(
            b"#EXTINF:NaN,\na.ts\n#EXTINF:-3,\nb.ts\n#EXTINF:inf\nc.ts\n\xff\xfe\x00\n\
              #EXT-X-MAP:URI=\"unterminated\n#EXT-X-MAP:URI\n#EXTINF:1e999,\nd.ts\n",
        );
        let p = parse("g.m3u8", &text);
        assert!(p.segments.iter().all(|s| s.secs == 0.0), "{p:?}");
        assert_eq!(p.init, None);
        assert_eq!(p.segments.len(), 4);
        assert_eq!(parse("e.m3u8", b""), Playlist::default());
        assert!(resolve("", "..").is_none());
        assert!(resolve("a.m3u8", &"d/".repeat(40)).is_none());
    }
}
