//! The lighter path for a manifest's `chunks` list, which is nearly all of its TOML (a
//! manifest of 2^20 chunks is 75 MiB of it). The TOML parser builds a tree node for every
//! value (about 150 bytes each) before serde sees one, and the tracker used to hold a
//! `String` per hash on top: 250 MiB and seconds for one maximum-size publish. Here:
//!
//! - [`split`] reads the list exactly as [`write`] (and so `chunkify`) lays it out, one
//!   `    "<64 hex>",` line per hash, straight into 32-byte digests, and leaves the TOML
//!   parser the few other lines. Any other layout returns `None` and takes the general path.
//! - [`digests`] is the general path's deserializer: hex straight into digests, no `String`
//!   per hash.

use std::fmt;

use serde::Deserializer;
use serde::de::{self, SeqAccess, Visitor};

use super::{Digest, MAX_CHUNKS};

/// The line that opens the list in [`write`]'s layout.
const OPEN: &str = "chunks = [\n";
/// One hash's line: four spaces, a quote, 64 hex digits, a quote, a comma, a newline.
const LINE: usize = 4 + 1 + 64 + 2 + 1;

/// Appends the `chunks` list as `toml::to_string_pretty` lays out an array of strings: on
/// one line when it has fewer than two, else one per line.
pub(super) fn write(out: &mut String, chunks: &[Digest]) {
    if let [] | [_] = chunks {
        let one = chunks.first().map(|c| format!("\"{}\"", hex::encode(c)));
        out.push_str(&format!("chunks = [{}]\n", one.unwrap_or_default()));
        return;
    }
    out.reserve(OPEN.len() + LINE * chunks.len() + 2);
    out.push_str(OPEN);
    let mut hex = [0u8; 64];
    for chunk in chunks {
        hex::encode_to_slice(chunk, &mut hex).expect("64 bytes hold 32 in hex");
        out.push_str("    \"");
        out.push_str(std::str::from_utf8(&hex).expect("hex is ASCII"));
        out.push_str("\",\n");
    }
    out.push_str("]\n");
}

/// When `text` holds a top-level `chunks = [` line followed by hashes one per line in
/// [`write`]'s layout and a `]` line: the text with the list replaced by `chunks = []`, and
/// the hashes. `None` for any other layout (or more than [`MAX_CHUNKS`] hashes).
///
/// The replaced text still goes through the TOML parser, so every other rule holds. The
/// opening line is at the start of a line; it could otherwise only sit inside a multi-line
/// string, and the two strings of a manifest (name, sha256) refuse newlines either way.
pub(super) fn split(text: &str) -> Option<(String, Vec<Digest>)> {
    let start = if text.starts_with(OPEN) {
        0
    } else {
        text.find("\nchunks = [\n")? + 1
    };
    let bytes = text.as_bytes();
    let mut at = start + OPEN.len();
    let mut chunks = Vec::new();
    loop {
        let rest = &bytes[at..];
        if rest.starts_with(b"]\n") || rest == b"]" {
            break;
        }
        let line = rest.get(..LINE)?;
        if &line[..5] != b"    \"" || &line[69..] != b"\",\n" || chunks.len() as u64 >= MAX_CHUNKS {
            return None;
        }
        let mut digest = [0u8; 32];
        hex::decode_to_slice(&line[5..69], &mut digest).ok()?;
        chunks.push(digest);
        at += LINE;
    }
    let end = (at + 2).min(text.len());
    let mut rest = String::with_capacity(start + 12 + text.len() - end);
    rest.push_str(&text[..start]);
    rest.push_str("chunks = []\n");
    rest.push_str(&text[end..]);
    Some((rest, chunks))
}

/// Deserializes a list of hex strings straight into digests.
pub(super) fn digests<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Digest>, D::Error> {
    deserializer.deserialize_seq(Digests)
}

struct Digests;

impl<'de> Visitor<'de> for Digests {
    type Value = Vec<Digest>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of SHA-256 hex digests")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Digest>, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_CHUNKS as usize));
        while let Some(hash) = seq.next_element::<HexDigest>()? {
            if out.len() as u64 >= MAX_CHUNKS {
                return Err(de::Error::custom(format!(
                    "more than the {MAX_CHUNKS} chunk hashes allowed"
                )));
            }
            match hash.0 {
                Ok(digest) => out.push(digest),
                Err(e) => {
                    return Err(de::Error::custom(format!(
                        "manifest chunk {}: {e}",
                        out.len()
                    )));
                }
            }
        }
        Ok(out)
    }
}

/// One hash of the list, or why its string is not one (so the list can say which chunk).
struct HexDigest(Result<Digest, String>);

impl<'de> de::Deserialize<'de> for HexDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<HexDigest, D::Error> {
        struct Hex;
        impl Visitor<'_> for Hex {
            type Value = HexDigest;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a SHA-256 hex digest")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<HexDigest, E> {
                Ok(HexDigest(super::parse_digest(s)))
            }
        }
        deserializer.deserialize_str(Hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_split_only_in_its_exact_layout() {
        let hashes = [[0xabu8; 32], [0x01; 32]];
        let mut text = String::from("format = 2\n");
        write(&mut text, &hashes);
        text.push_str("# after\n");
        let (rest, chunks) = split(&text).unwrap();
        assert_eq!(chunks, hashes);
        assert_eq!(rest, "format = 2\nchunks = []\n# after\n");
        let no_newline = text.replace("]\n# after\n", "]");
        assert_eq!(split(&no_newline).unwrap().0, "format = 2\nchunks = []\n");
        for other in [
            text.replace("    \"ab", "   \"ab"),
            text.replace("\",\n    \"01", "\", \"01"),
            text.replace("abab\",", "abaX\","),
            text.replace("abab\",", "abab\"#"),
            text.replace("\n]\n", "\n"),
            text.replace("\nchunks = [", "\n chunks = ["),
            "chunks = [\"ab\"]\n".to_string(),
        ] {
            assert!(split(&other).is_none(), "{other}");
        }
        let mut empty = String::new();
        write(&mut empty, &[]);
        assert_eq!(empty, "chunks = []\n");
        assert!(
            split(&empty).is_none(),
            "the general path reads an empty list"
        );
        let mut one = String::new();
        write(&mut one, &hashes[..1]);
        assert_eq!(one, format!("chunks = [\"{}\"]\n", "ab".repeat(32)));
    }
}
