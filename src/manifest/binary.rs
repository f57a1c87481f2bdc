//! The compact binary form of a manifest, as the tracker's catalog keeps it on disk: a small
//! header, then the raw 32-byte hashes (PROTOCOL.md, appendix A, "The tracker's catalog"). A third of the TOML's
//! size, and its header alone answers what the catalog's index needs (name, size, chunk
//! size, chunk count) without reading a hash.
//!
//! Layout, integers big-endian like the canonical encoding:
//!
//! | offset | bytes | field |
//! |---|---|---|
//! | 0 | 8 | magic `swcmanif` |
//! | 8 | 2 | layout version, 1 |
//! | 10 | 2 | flags: bit 0 set when the whole-content SHA-256 follows the name, bit 1 when a file list does (a directory asset); others 0 |
//! | 12 | 4 | manifest format, 2 |
//! | 16 | 8 | size |
//! | 24 | 4 | chunk size |
//! | 28 | 4 | chunk count |
//! | 32 | 2 | name length L, 1 to 255 |
//! | 34 | L | name, UTF-8 |
//! | 34 + L | 0 or 32 | whole-content SHA-256 |
//! | then | 0 or 8 | with flag bit 1: file count (u32) and the file list's length F in bytes (u32) |
//! | then | 32 × count | the chunk hashes, in order |
//! | then | F | with flag bit 1: per file, path length (u16), path, size (u64), mode (u32) |
//!
//! Nothing here trusts the bytes: every field is checked as [`Manifest::new`] checks it, and
//! the file's length must be exactly what the header announces.

use super::files::{FileEntry, MAX_FILES, MAX_PATH_BYTES, with_offsets};
use super::{Digest, FORMAT_VERSION, MAX_NAME_BYTES, Manifest, check_shape};

/// The first bytes of every binary manifest.
pub const MAGIC: &[u8; 8] = b"swcmanif";
/// The layout this build writes and reads.
pub const LAYOUT_VERSION: u16 = 1;
/// Bytes before the name.
const FIXED: usize = 34;
/// The longest header: the fixed part, the longest name and the whole-content hash. Reading
/// this many bytes of a file is always enough for [`Header::parse`].
pub const MAX_HEADER_BYTES: usize = FIXED + MAX_NAME_BYTES + 32 + 8;
/// Flag bit: the whole-content SHA-256 is present.
const HAS_WHOLE: u16 = 1;
/// Flag bit: a file list follows the chunk hashes (a directory asset).
const HAS_FILES: u16 = 2;
/// Bytes of one file entry besides its path: path length, size, mode.
const FILE_FIXED: usize = 2 + 8 + 4;
/// The longest file list: bounds what a header may announce before it is read.
const MAX_FILES_BYTES: u64 = (MAX_FILES * (FILE_FIXED + MAX_PATH_BYTES)) as u64;

/// What a binary manifest's header says: everything but the chunk hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// Asset name.
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunk hashes that follow the header.
    pub chunk_count: u32,
    /// The whole-content SHA-256, when the manifest has one.
    pub sha256: Option<Digest>,
    /// Bytes of the header: where the chunk hashes start.
    pub len: usize,
    /// A directory asset's file count and the bytes of its file list (after the hashes).
    pub files: Option<(u32, u32)>,
}

impl Header {
    /// Parses and checks a header from the first bytes of a file (at least the whole
    /// header; [`MAX_HEADER_BYTES`] are always enough). The error says which field is wrong.
    pub fn parse(bytes: &[u8]) -> Result<Header, String> {
        let short = |what: &str| {
            format!(
                "it ends after {} bytes, inside the header's {what} (truncated, or not a binary manifest)",
                bytes.len()
            )
        };
        if bytes.len() < FIXED {
            if bytes.len() >= MAGIC.len() && &bytes[..MAGIC.len()] != MAGIC {
                return Err("it does not start with the binary manifest's magic `swcmanif`".into());
            }
            return Err(short("fixed fields"));
        }
        if &bytes[..8] != MAGIC {
            return Err("it does not start with the binary manifest's magic `swcmanif`".into());
        }
        let u16_at = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
        let u32_at = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let layout = u16_at(8);
        if layout != LAYOUT_VERSION {
            return Err(format!(
                "its layout version is {layout}; this build reads version {LAYOUT_VERSION}"
            ));
        }
        let flags = u16_at(10);
        if flags & !(HAS_WHOLE | HAS_FILES) != 0 {
            return Err(format!(
                "its flags {flags:#06x} set bits this build does not know"
            ));
        }
        let format = u32_at(12);
        if format != FORMAT_VERSION {
            return Err(format!(
                "it holds a format {format} manifest; this build reads format {FORMAT_VERSION}"
            ));
        }
        let size = u64::from_be_bytes(bytes[16..24].try_into().expect("8 bytes"));
        let chunk_size = u32_at(24);
        let chunk_count = u32_at(28);
        let name_len = u16_at(32) as usize;
        if name_len > MAX_NAME_BYTES {
            return Err(format!(
                "its name length is {name_len}, more than the {MAX_NAME_BYTES} allowed"
            ));
        }
        let whole_len = if flags & HAS_WHOLE != 0 { 32 } else { 0 };
        let files_len = if flags & HAS_FILES != 0 { 8 } else { 0 };
        let len = FIXED + name_len + whole_len + files_len;
        if bytes.len() < len {
            return Err(short("name, whole-content hash or file count"));
        }
        let files = (files_len == 8).then(|| {
            let at = FIXED + name_len + whole_len;
            (u32_at(at), u32_at(at + 4))
        });
        if let Some((count, list_len)) = files
            && (count == 0 || count as usize > MAX_FILES || list_len as u64 > MAX_FILES_BYTES)
        {
            return Err(format!(
                "its file list announces {count} files in {list_len} bytes, outside 1..={MAX_FILES} files and {MAX_FILES_BYTES} bytes"
            ));
        }
        let name = std::str::from_utf8(&bytes[FIXED..FIXED + name_len])
            .map_err(|_| "its name is not UTF-8".to_string())?
            .to_string();
        check_shape(&name, size, chunk_size, chunk_count as usize)?;
        let sha256 = (whole_len == 32).then(|| {
            bytes[FIXED + name_len..FIXED + name_len + 32]
                .try_into()
                .expect("32 bytes")
        });
        Ok(Header {
            name,
            size,
            chunk_size,
            chunk_count,
            sha256,
            len,
            files,
        })
    }

    /// The exact length of the file this header starts.
    pub fn file_len(&self) -> u64 {
        self.len as u64 + 32 * self.chunk_count as u64 + self.files.map_or(0, |f| f.1 as u64)
    }
}

/// The binary form of `manifest`.
pub fn encode(manifest: &Manifest) -> Vec<u8> {
    let whole_len = if manifest.sha256.is_some() { 32 } else { 0 };
    let mut out =
        Vec::with_capacity(FIXED + manifest.name.len() + whole_len + 32 * manifest.chunks.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&LAYOUT_VERSION.to_be_bytes());
    let mut flags = if manifest.sha256.is_some() {
        HAS_WHOLE
    } else {
        0
    };
    let mut list = Vec::new();
    for f in manifest.files() {
        // A checked path is at most 4096 bytes.
        list.extend_from_slice(&(f.path.len() as u16).to_be_bytes());
        list.extend_from_slice(f.path.as_bytes());
        list.extend_from_slice(&f.size.to_be_bytes());
        list.extend_from_slice(&f.mode.to_be_bytes());
    }
    if manifest.is_directory() {
        flags |= HAS_FILES;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&manifest.size.to_be_bytes());
    out.extend_from_slice(&manifest.chunk_size.to_be_bytes());
    out.extend_from_slice(&manifest.chunk_count().to_be_bytes());
    // A validated manifest's name is at most 255 bytes.
    out.extend_from_slice(&(manifest.name.len() as u16).to_be_bytes());
    out.extend_from_slice(manifest.name.as_bytes());
    if let Some(whole) = &manifest.sha256 {
        out.extend_from_slice(whole);
    }
    if manifest.is_directory() {
        // At most 65 536 files of at most 4 110 bytes each: well within a u32.
        out.extend_from_slice(&(manifest.files().len() as u32).to_be_bytes());
        out.extend_from_slice(&(list.len() as u32).to_be_bytes());
    }
    for chunk in &manifest.chunks {
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&list);
    out
}

/// Decodes and checks a whole binary manifest. The caller checks the id it expects.
pub fn decode(bytes: &[u8]) -> Result<Manifest, String> {
    let header = Header::parse(bytes)?;
    if bytes.len() as u64 != header.file_len() {
        return Err(format!(
            "it is {} bytes long, but its header announces {} chunk hashes, {} bytes in all ({})",
            bytes.len(),
            header.chunk_count,
            header.file_len(),
            if (bytes.len() as u64) < header.file_len() {
                "truncated"
            } else {
                "bytes after the last hash"
            }
        ));
    }
    let hashes_end = header.len + 32 * header.chunk_count as usize;
    let chunks = bytes[header.len..hashes_end]
        .chunks_exact(32)
        .map(|c| c.try_into().expect("32 bytes"))
        .collect();
    let manifest = Manifest::new(
        header.name,
        header.size,
        header.chunk_size,
        header.sha256,
        chunks,
    )?;
    match header.files {
        None => Ok(manifest),
        Some((count, _)) => manifest.with_files(decode_files(&bytes[hashes_end..], count)?),
    }
}

/// The file list after the hashes: exactly `count` entries filling `bytes`.
fn decode_files(mut bytes: &[u8], count: u32) -> Result<Vec<FileEntry>, String> {
    let mut list = Vec::with_capacity(count as usize);
    for i in 0..count {
        let cut = || format!("its file list ends inside entry {i} of {count}");
        let len =
            u16::from_be_bytes(bytes.get(..2).ok_or_else(cut)?.try_into().expect("2")) as usize;
        let entry = bytes.get(2..2 + len + 12).ok_or_else(cut)?;
        let path = std::str::from_utf8(&entry[..len])
            .map_err(|_| format!("its file list's entry {i} has a path that is not UTF-8"))?;
        let size = u64::from_be_bytes(entry[len..len + 8].try_into().expect("8"));
        let mode = u32::from_be_bytes(entry[len + 8..].try_into().expect("4"));
        list.push((path.to_string(), size, mode));
        bytes = &bytes[2 + len + 12..];
    }
    if !bytes.is_empty() {
        return Err(format!(
            "its file list has {} bytes after its {count} entries",
            bytes.len()
        ));
    }
    Ok(with_offsets(list))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, chunkify};

    fn sample(whole: bool) -> Manifest {
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i * 13 % 251) as u8).collect();
        let mut m = chunkify(&bytes[..], "sample ☃.bin", MIN_CHUNK_SIZE).unwrap();
        if whole {
            m.sha256 = Some(crate::manifest::sha256(&bytes));
        }
        m
    }

    #[test]
    fn the_binary_form_round_trips_and_has_its_documented_layout() {
        for whole in [false, true] {
            let m = sample(whole);
            let bytes = encode(&m);
            let w = if whole { 32 } else { 0 };
            let l = m.name.len();
            assert_eq!(bytes.len(), 34 + l + w + 32 * m.chunks.len());
            assert_eq!(&bytes[..8], b"swcmanif");
            assert_eq!(&bytes[8..12], &[0, 1, 0, whole as u8]);
            assert_eq!(&bytes[12..16], &2u32.to_be_bytes());
            assert_eq!(&bytes[16..24], &m.size.to_be_bytes());
            assert_eq!(&bytes[24..28], &m.chunk_size.to_be_bytes());
            assert_eq!(&bytes[28..32], &m.chunk_count().to_be_bytes());
            assert_eq!(&bytes[32..34], &(l as u16).to_be_bytes());
            assert_eq!(&bytes[34..34 + l], m.name.as_bytes());
            assert_eq!(&bytes[34 + l + w..34 + l + w + 32], &m.chunks[0]);
            let back = decode(&bytes).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.id(), m.id());
            let header = Header::parse(&bytes[..MAX_HEADER_BYTES.min(bytes.len())]).unwrap();
            assert_eq!(
                (header.name.as_str(), header.size, header.chunk_count),
                (m.name.as_str(), m.size, m.chunk_count())
            );
            assert_eq!(header.sha256, m.sha256);
            assert_eq!(header.file_len(), bytes.len() as u64);
        }
        let empty = chunkify(&[][..], "e", MIN_CHUNK_SIZE).unwrap();
        assert_eq!(decode(&encode(&empty)).unwrap(), empty);
    }

    fn directory() -> Manifest {
        let m = sample(false);
        let files = with_offsets([
            ("a/b.txt".to_string(), 1000, 0o644),
            ("a/empty".to_string(), 0, 0o600),
            ("c ☃".to_string(), m.size - 1000, 0o755),
        ]);
        m.with_files(files).unwrap()
    }

    #[test]
    fn a_directory_assets_file_list_round_trips_and_is_checked() {
        let m = directory();
        let bytes = encode(&m);
        assert_eq!(&bytes[10..12], &[0, 2]);
        let back = decode(&bytes).unwrap();
        assert_eq!((&back, back.id()), (&m, m.id()));
        let header = Header::parse(&bytes[..MAX_HEADER_BYTES.min(bytes.len())]).unwrap();
        assert_eq!(header.file_len(), bytes.len() as u64);
        assert_eq!(header.files.map(|f| f.0), Some(3));
        let mut cut = bytes.clone();
        cut.pop();
        assert!(decode(&cut).unwrap_err().contains("truncated"));
        // A path made hostile in the stored bytes is refused as the TOML's would be.
        let mut hostile = bytes.clone();
        let at = hostile.windows(7).position(|w| w == b"a/b.txt").unwrap();
        hostile[at..at + 3].copy_from_slice(b"../");
        assert!(decode(&hostile).unwrap_err().contains("\"..\""));
    }

    #[test]
    fn truncated_and_garbled_files_are_refused_with_the_reason() {
        let bytes = encode(&sample(true));
        let refusal = |b: &[u8]| decode(b).unwrap_err();
        for cut in [0, 5, 20, 40, 34 + 10, bytes.len() - 1, bytes.len() - 32] {
            let e = refusal(&bytes[..cut]);
            assert!(
                e.contains("truncated") || e.contains("magic"),
                "cut {cut}: {e}"
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(refusal(&longer).contains("after the last hash"));
        let garble = |at: usize, value: u8| {
            let mut b = bytes.clone();
            b[at] = value;
            refusal(&b)
        };
        assert!(garble(0, b'S').contains("magic"));
        assert!(garble(9, 2).contains("layout version is 2"));
        assert!(garble(11, 5).contains("flags"));
        assert!(garble(15, 3).contains("format 3"));
        assert!(garble(24, 0xff).contains("chunk size"));
        assert!(
            garble(31, 0).contains("chunk hashes"),
            "count no longer fits the size"
        );
        assert!(garble(34, 0xff).contains("UTF-8"));
        assert!(garble(34, b'/').contains("path component"));
        assert!(garble(32, 0x7f).contains("name length"));
        // A changed hash decodes (any 32 bytes are a hash): the catalog's id check finds it.
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_ne!(decode(&flipped).unwrap().id(), sample(true).id());
    }
}
