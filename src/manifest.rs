//! The manifest: what an asset is (size, chunking, SHA-256 of every chunk and optionally of
//! the whole, a name as a label), its TOML form, its canonical encoding and asset id.
//! Hashing content into a manifest and verifying content against one live in [`hash`]; the
//! compact form the tracker stores in [`binary`]; the TOML chunk list's fast path in
//! `chunk_list`; a directory asset's file list and its path checks in [`files`], and reading
//! a directory from disk in [`tree`].
//!
//! Format 2 (this build): the asset id hashes the content's description only, never the
//! name, so the same bytes chunked the same way are one asset whatever they are called.
//! The whole-content SHA-256 is optional because it is one sequential chain: without it,
//! hashing a file scales with the cores (see [`hash_file`]).

use std::fmt;
use std::io::Read;
use std::str::FromStr;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::crypt::ContentKey;

pub mod binary;
mod chunk_list;
pub mod files;
pub mod hash;
pub mod tree;

pub use files::{FileEntry, MAX_DEPTH, MAX_FILES, MAX_PATH_BYTES, check_files, check_path};
pub use hash::{StreamHashes, VerifyReport, chunkify, hash_file, hash_stream, verify, verify_file};

/// The manifest format this build writes and accepts.
pub const FORMAT_VERSION: u32 = 2;
/// Smallest chunk size: below 16 KiB the per-request overhead (a frame, a hash, a bitfield
/// bit) outweighs the transfer and manifests grow large.
pub const MIN_CHUNK_SIZE: u32 = 16 << 10;
/// Largest chunk size: a chunk is held in memory whole while it is verified, so 64 MiB
/// bounds a connection's buffer.
pub const MAX_CHUNK_SIZE: u32 = 64 << 20;
/// Default chunk size. A chunk crosses a swarm one hop at a time, each hop taking a chunk's
/// time at the uploader's rate, so smaller chunks start a crowd's trading sooner and end
/// it with a shorter tail: with 8 clients at 25 MiB/s on 256 MiB, 256 KiB chunks took
/// 1.13x the lower bound where 1 MiB chunks took 1.17x (bench/flash_crowd.sh). A single
/// 1 GiB transfer is as fast with either (1.60x and 1.58x curl, bench/single_source.sh).
pub const DEFAULT_CHUNK_SIZE: u32 = 256 << 10;
/// Most chunks a manifest may list (256 GiB at the default chunk size, 1 TiB at 1 MiB); bounds the manifest's memory.
pub const MAX_CHUNKS: u64 = 1 << 20;
/// Largest manifest text accepted: 1 Mi chunk lines of ~70 bytes, plus room.
pub const MAX_MANIFEST_BYTES: usize = 80 << 20;
/// Most TOML separators (`,` `=` `.` `[` `{`, counted anywhere in the text) a manifest may
/// hold: one per chunk hash plus room for the six keys, comments and a name full of them,
/// and eight per listed file (`[[files]]` and four `=` as chunkify writes them, and room for
/// dots in paths).
/// The TOML parser builds every value (about 150 bytes each) before the chunk count can be
/// checked, so without this bound 80 MiB of `"",` would cost 4 GiB; with it, at most what a
/// manifest of [`MAX_CHUNKS`] chunks costs anyway.
pub const MAX_MANIFEST_SEPARATORS: usize = MAX_CHUNKS as usize + 1024 + 8 * MAX_FILES;
/// Longest asset name in bytes (a common file-system limit).
pub const MAX_NAME_BYTES: usize = 255;
/// The prefix of the canonical encoding, so an asset id can never be confused with the
/// hash of some other structure.
pub const CANONICAL_MAGIC: &[u8; 20] = b"swarmcache/manifest\0";
/// Bytes of the canonical encoding without the whole-content hash and the chunk hashes:
/// magic 20, format 4, size 8, chunk size 4, whole-hash flag 1, file count 4, chunk count 4.
pub const CANONICAL_FIXED_BYTES: usize = 45;

/// A SHA-256 digest.
pub type Digest = [u8; 32];

/// SHA-256 of a byte slice.
pub fn sha256(data: &[u8]) -> Digest {
    Sha256::digest(data).into()
}

/// The id of an asset: the SHA-256 of its manifest's canonical encoding.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AssetId(pub Digest);

impl fmt::Display for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AssetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AssetId({self})")
    }
}

impl FromStr for AssetId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        parse_digest(s.trim())
            .map(AssetId)
            .map_err(|_| format!("{s:?} is not an asset id (64 hex digits, as printed by `chunkify --id` or `peer_client publish`)"))
    }
}

fn parse_digest(s: &str) -> Result<Digest, String> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|e| format!("{s:?} is not a SHA-256 hex digest: {e}"))?;
    Ok(out)
}

/// A validated manifest. Construct it with [`Manifest::from_toml`] or [`chunkify`]; both
/// check every bound, so the rest of the code can trust its fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    /// Asset name: a single path component, safe to create in any directory. A label
    /// only: it is not part of the asset id.
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
    /// Chunk size in bytes; every chunk but the last has exactly this size.
    pub chunk_size: u32,
    /// SHA-256 of the whole content, when the manifest carries one (`chunkify --sha256`).
    pub sha256: Option<Digest>,
    /// SHA-256 of each chunk, in order.
    pub chunks: Vec<Digest>,
    /// A directory asset's files, in the byte stream's order (checked by [`check_files`]);
    /// empty for a single-file asset.
    pub files: Vec<FileEntry>,
}

/// The TOML shape of a manifest, before validation. The hashes are decoded as they are
/// read (no `String` per hash: see `chunk_list`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestToml {
    format: u32,
    name: String,
    size: u64,
    chunk_size: u32,
    #[serde(default)]
    sha256: Option<String>,
    /// The content key of an encrypted asset (`aes-128-ctr:<hex>`), only in the manifest
    /// `chunkify --encrypt` prints for `peer_client publish` to hand to the tracker: not part
    /// of the asset id, never stored (see [`Manifest::from_toml_keyed`]).
    #[serde(default)]
    key: Option<String>,
    #[serde(deserialize_with = "chunk_list::digests")]
    chunks: Vec<Digest>,
    /// A directory asset's file list (PROTOCOL.md, 12.3).
    #[serde(default)]
    files: Option<Vec<files::FileToml>>,
}

/// What `to_toml` writes before the chunk list, in this order (the list is written by hand,
/// in the layout the TOML writer would give it: see `chunk_list`).
#[derive(Serialize)]
struct HeadToml<'a> {
    format: u32,
    name: &'a str,
    size: u64,
    chunk_size: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
}

/// Just the format of a manifest, to say why one that is not format 2 fails to parse.
#[derive(Deserialize)]
struct FormatOnly {
    format: u32,
}

/// Why a manifest of another format is refused, with what to do about it.
fn format_error(format: u32) -> String {
    if format == 1 {
        format!(
            "this is a format 1 manifest, which this build no longer reads: format {FORMAT_VERSION} asset ids leave the name out, so ids changed; re-run chunkify on the content to make a format {FORMAT_VERSION} manifest (and publish that)"
        )
    } else {
        format!(
            "manifest format {format} is not supported (this build reads format {FORMAT_VERSION})"
        )
    }
}

/// Checks that `name` is one safe path component: not empty, at most 255 bytes, not `.`
/// or `..`, and free of `/`, `\`, NUL and control characters.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("asset name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "asset name is {} bytes long, at most {MAX_NAME_BYTES} allowed",
            name.len()
        ));
    }
    if name == "." || name == ".." {
        return Err(format!("asset name {name:?} would escape its directory"));
    }
    if let Some(c) = name
        .chars()
        .find(|&c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(format!(
            "asset name {name:?} contains {c:?}; names must be one path component without control characters"
        ));
    }
    Ok(())
}

/// Number of chunks needed for `size` bytes in chunks of `chunk_size`.
pub fn chunk_count_for(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(chunk_size as u64)
}

fn check_chunk_size(chunk_size: u32) -> Result<(), String> {
    if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(format!(
            "chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE} bytes (16 KiB to 64 MiB)"
        ));
    }
    Ok(())
}

/// The chunk count `size` needs, refused above [`MAX_CHUNKS`].
fn check_chunk_count(size: u64, chunk_size: u32) -> Result<u64, String> {
    let count = chunk_count_for(size, chunk_size);
    if count > MAX_CHUNKS {
        return Err(format!(
            "{size} bytes in chunks of {chunk_size} make {count} chunks, more than the {MAX_CHUNKS} allowed; use a larger chunk size"
        ));
    }
    Ok(count)
}

/// Checks name, chunk size and that `count` hashes are exactly what `size` needs.
fn check_shape(name: &str, size: u64, chunk_size: u32, count: usize) -> Result<(), String> {
    check_name(name)?;
    check_chunk_size(chunk_size)?;
    let expected = check_chunk_count(size, chunk_size)?;
    if count as u64 != expected {
        return Err(format!(
            "size {size} with chunk size {chunk_size} needs {expected} chunk hashes, the manifest lists {count}"
        ));
    }
    Ok(())
}

impl Manifest {
    /// Builds a manifest from its parts, checking every bound.
    pub fn new(
        name: String,
        size: u64,
        chunk_size: u32,
        sha256: Option<Digest>,
        chunks: Vec<Digest>,
    ) -> Result<Self, String> {
        check_shape(&name, size, chunk_size, chunks.len())?;
        Ok(Manifest {
            name,
            size,
            chunk_size,
            sha256,
            chunks,
            files: Vec::new(),
        })
    }

    /// This manifest as a directory asset of `files` (checked by [`check_files`] against
    /// the size).
    pub fn with_files(self, files: Vec<FileEntry>) -> Result<Self, String> {
        check_files(&files, self.size)?;
        Ok(Manifest { files, ..self })
    }

    /// Whether this is a directory asset (it lists files).
    pub fn is_directory(&self) -> bool {
        !self.files.is_empty()
    }

    /// A directory asset's files in byte-stream order, with path, size, mode and offset;
    /// empty for a single-file asset.
    pub fn files(&self) -> &[FileEntry] {
        &self.files
    }

    /// The listed file at `path` (exactly as listed: relative, `/`-separated), if any.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        // The list is checked to be in bytewise order.
        self.files
            .binary_search_by(|f| f.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.files[i])
    }

    /// The chunks holding any byte of `file` (see [`FileEntry::chunk_range`]).
    pub fn file_chunks(&self, file: &FileEntry) -> std::ops::Range<u32> {
        file.chunk_range(self.chunk_size)
    }

    /// Parses and validates manifest TOML. A content key in it (`key`, from `chunkify
    /// --encrypt`) is left out: only the publish path reads it, with
    /// [`Manifest::from_toml_keyed`].
    pub fn from_toml(text: &str) -> Result<Self, String> {
        Manifest::from_toml_keyed(text).map(|(manifest, _)| manifest)
    }

    /// Parses and validates manifest TOML, and the content key it carries, if any: what
    /// `peer_client publish` sends and the tracker's publish reads.
    pub fn from_toml_keyed(text: &str) -> Result<(Self, Option<ContentKey>), String> {
        if text.len() > MAX_MANIFEST_BYTES {
            return Err(format!(
                "manifest is {} bytes, more than the {MAX_MANIFEST_BYTES} allowed",
                text.len()
            ));
        }
        // Every key, value and table the parser builds is introduced by one of these bytes.
        let separators = text
            .bytes()
            .filter(|b| matches!(b, b',' | b'=' | b'.' | b'[' | b'{'))
            .count();
        if separators > MAX_MANIFEST_SEPARATORS {
            return Err(format!(
                "manifest has {separators} of the separators `,` `=` `.` `[` `{{`, more than the {MAX_MANIFEST_SEPARATORS} that {MAX_CHUNKS} chunk hashes need"
            ));
        }
        // The list as chunkify writes it is read without the TOML tree; the parser reads
        // the rest. A refusal is explained from the whole text, as the parser sees it.
        let fast = chunk_list::split(text).and_then(|(rest, chunks)| {
            // `rest` lists `chunks = []`; a second `chunks` key would not parse.
            let raw = toml::from_str::<ManifestToml>(&rest).ok()?;
            Some(ManifestToml { chunks, ..raw })
        });
        let raw: ManifestToml = match fast {
            Some(raw) => raw,
            None => match toml::from_str(text) {
                Ok(raw) => raw,
                // Another format may have other keys: name the format rather than a key. The
                // second parse costs what the first did, and only on this failing path.
                Err(e) => match toml::from_str::<FormatOnly>(text) {
                    Ok(f) if f.format != FORMAT_VERSION => return Err(format_error(f.format)),
                    _ => return Err(format!("manifest is not valid TOML: {e}")),
                },
            },
        };
        if raw.format != FORMAT_VERSION {
            return Err(format_error(raw.format));
        }
        if let Some(list) = &raw.files
            && list.len() > MAX_FILES
        {
            return Err(format!(
                "the manifest lists {} files, more than the {MAX_FILES} allowed",
                list.len()
            ));
        }
        // The shape first: a bad name or size is the refusal a publisher needs to read.
        check_shape(&raw.name, raw.size, raw.chunk_size, raw.chunks.len())?;
        let sha256 = raw
            .sha256
            .map(|h| parse_digest(&h).map_err(|e| format!("manifest sha256: {e}")))
            .transpose()?;
        let key = raw
            .key
            .map(|k| ContentKey::from_field(&k).map_err(|e| format!("manifest key: {e}")))
            .transpose()?;
        let mut manifest = Manifest::new(raw.name, raw.size, raw.chunk_size, sha256, raw.chunks)?;
        if let Some(list) = raw.files {
            let list = list
                .into_iter()
                .map(files::FileToml::into_entry)
                .collect::<Result<Vec<_>, _>>()?;
            manifest = manifest.with_files(list)?;
        }
        Ok((manifest, key))
    }

    /// Reads and validates a manifest from a reader, refusing more than [`MAX_MANIFEST_BYTES`].
    pub fn read_from(reader: impl Read) -> Result<Self> {
        Manifest::read_from_keyed(reader).map(|(manifest, _)| manifest)
    }

    /// Like [`Manifest::read_from`], with the content key the manifest carries, if any.
    pub fn read_from_keyed(reader: impl Read) -> Result<(Self, Option<ContentKey>)> {
        let mut text = String::new();
        reader
            .take(MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_string(&mut text)
            .context("reading manifest (it must be UTF-8 TOML)")?;
        Manifest::from_toml_keyed(&text).map_err(anyhow::Error::msg)
    }

    /// The manifest as TOML, one chunk hash per line.
    pub fn to_toml(&self) -> String {
        self.to_toml_keyed(None)
    }

    /// The manifest as TOML with the content key of an encrypted asset: what `chunkify
    /// --encrypt` prints and `peer_client publish` sends. Never written to a store.
    pub fn to_toml_keyed(&self, key: Option<&ContentKey>) -> String {
        let head = HeadToml {
            format: FORMAT_VERSION,
            name: &self.name,
            size: self.size,
            chunk_size: self.chunk_size,
            sha256: self.sha256.map(hex::encode),
            key: key.map(ContentKey::to_field),
        };
        let mut text = toml::to_string_pretty(&head).expect("a manifest always serializes");
        chunk_list::write(&mut text, &self.chunks);
        if self.is_directory() {
            let list: Vec<_> = self.files.iter().map(files::FileToml::from_entry).collect();
            text.push('\n');
            text.push_str(
                &toml::to_string_pretty(&files::FilesToml { files: &list })
                    .expect("a file list always serializes"),
            );
        }
        text
    }

    /// The canonical binary encoding that the asset id hashes (PROTOCOL.md, section 13):
    /// every value that describes the content, and not the name.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(CANONICAL_FIXED_BYTES + 32 + 32 * self.chunks.len());
        self.canonical_parts(|part| out.extend_from_slice(part));
        out
    }

    /// The canonical encoding in pieces, so the id is hashed without a copy of every hash.
    fn canonical_parts(&self, mut sink: impl FnMut(&[u8])) {
        sink(CANONICAL_MAGIC);
        sink(&FORMAT_VERSION.to_be_bytes());
        sink(&self.size.to_be_bytes());
        sink(&self.chunk_size.to_be_bytes());
        match &self.sha256 {
            Some(whole) => {
                sink(&[1]);
                sink(whole);
            }
            None => sink(&[0]),
        }
        // The file count, 0 for a single-file asset, then the files: single-file ids stay
        // what they were before directory assets.
        sink(&(self.files.len() as u32).to_be_bytes());
        files::canonical_parts(&self.files, &mut sink);
        sink(&(self.chunks.len() as u32).to_be_bytes());
        sink(self.chunks.as_flattened());
    }

    /// The asset id: SHA-256 of [`Manifest::canonical_bytes`].
    pub fn id(&self) -> AssetId {
        let mut hasher = Sha256::new();
        self.canonical_parts(|part| hasher.update(part));
        AssetId(hasher.finalize().into())
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Byte offset of chunk `index`.
    pub fn chunk_offset(&self, index: u32) -> u64 {
        index as u64 * self.chunk_size as u64
    }

    /// Length in bytes of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u32) -> u32 {
        let start = self.chunk_offset(index);
        (self.size - start).min(self.chunk_size as u64) as u32
    }

    /// Whether `data` is exactly chunk `index`.
    pub fn chunk_matches(&self, index: u32, data: &[u8]) -> bool {
        (index as usize) < self.chunks.len()
            && data.len() == self.chunk_len(index) as usize
            && sha256(data) == self.chunks[index as usize]
    }
}

/// Fails with a clear message unless `text` parses as an asset id.
pub fn parse_asset_id(text: &str) -> Result<AssetId> {
    match text.parse() {
        Ok(id) => Ok(id),
        Err(e) => bail!(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Test content that is not all one byte (shared with the hashing tests).
    pub(super) fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// A manifest with the whole-content SHA-256 (shared with the hashing tests).
    pub(super) fn with_whole(bytes: &[u8], name: &str, chunk_size: u32) -> Manifest {
        hash_stream(bytes, chunk_size, true)
            .unwrap()
            .into_manifest(name, chunk_size)
            .unwrap()
    }

    #[test]
    fn chunkify_cuts_and_hashes_every_chunk() {
        let bytes = data(3 * MIN_CHUNK_SIZE as usize + 5);
        let m = chunkify(&bytes[..], "a.bin", MIN_CHUNK_SIZE).unwrap();
        assert_eq!(m.chunk_count(), 4);
        assert_eq!(m.chunk_len(3), 5);
        assert_eq!(
            m.sha256, None,
            "format 2 leaves the whole-content hash out by default"
        );
        assert_eq!(
            with_whole(&bytes, "a.bin", MIN_CHUNK_SIZE).sha256,
            Some(sha256(&bytes))
        );
        assert_eq!(
            m.chunks[1],
            sha256(&bytes[MIN_CHUNK_SIZE as usize..2 * MIN_CHUNK_SIZE as usize])
        );
        assert!(m.chunk_matches(3, &bytes[3 * MIN_CHUNK_SIZE as usize..]));
    }

    #[test]
    fn empty_and_one_byte_inputs_have_zero_and_one_chunks() {
        let empty = chunkify(&[][..], "e", MIN_CHUNK_SIZE).unwrap();
        assert_eq!((empty.size, empty.chunk_count()), (0, 0));
        assert_eq!(
            with_whole(&[], "e", MIN_CHUNK_SIZE).sha256,
            Some(sha256(b""))
        );
        let one = chunkify(&[42u8][..], "o", MIN_CHUNK_SIZE).unwrap();
        assert_eq!((one.size, one.chunk_count(), one.chunk_len(0)), (1, 1, 1));
    }

    #[test]
    fn toml_round_trips_and_id_is_stable() {
        for m in [
            chunkify(&data(100_000)[..], "x.iso", MIN_CHUNK_SIZE).unwrap(),
            with_whole(&data(100_000), "x.iso", MIN_CHUNK_SIZE),
        ] {
            let back = Manifest::from_toml(&m.to_toml()).unwrap();
            assert_eq!(back, m);
            assert_eq!(back.id(), m.id());
        }
        // Golden ids: the canonical encoding must never change between builds.
        let golden = |name: &str, whole| {
            Manifest::new(name.into(), 1, MIN_CHUNK_SIZE, whole, vec![sha256(b"a")]).unwrap()
        };
        assert_eq!(
            golden("golden", None).id().to_string(),
            "b7873dcefc10ed3a36ebcd082d05edfb2060d30aa0d7e4cf81074a8d242b0321"
        );
        assert_eq!(
            golden("golden", Some(sha256(b"a"))).id().to_string(),
            "d104563fe7183e49961adb70c27a6582b9df897c7aae00db085f4950ba4791a0"
        );
        assert_eq!(
            golden("another name", None).id(),
            golden("golden", None).id()
        );
    }

    #[test]
    fn the_name_is_a_label_and_any_change_of_content_changes_the_id() {
        let m = chunkify(&data(50_000)[..], "x", MIN_CHUNK_SIZE).unwrap();
        let mut renamed = m.clone();
        renamed.name = "y".into();
        assert_eq!(
            m.id(),
            renamed.id(),
            "byte-identical content under two names"
        );
        let mut other_chunk = m.clone();
        other_chunk.chunks[0][0] ^= 1;
        let mut whole = m.clone();
        whole.sha256 = Some(sha256(&data(50_000)));
        let mut other_whole = whole.clone();
        other_whole.sha256.as_mut().unwrap()[31] ^= 1;
        let other_chunking = chunkify(&data(50_000)[..], "x", 2 * MIN_CHUNK_SIZE).unwrap();
        let ids = [
            m.id(),
            other_chunk.id(),
            whole.id(),
            other_whole.id(),
            other_chunking.id(),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn bounds_are_checked() {
        let h = sha256(b"");
        assert!(
            Manifest::new("a".into(), 10, 1000, None, vec![h]).is_err(),
            "chunk size below 16 KiB"
        );
        assert!(
            Manifest::new("a".into(), 10, 128 << 20, Some(h), vec![h]).is_err(),
            "chunk size above 64 MiB"
        );
        assert!(
            Manifest::new("a".into(), 100_000, MIN_CHUNK_SIZE, None, vec![h]).is_err(),
            "too few hashes"
        );
        assert!(
            Manifest::new("a".into(), 1 << 50, MIN_CHUNK_SIZE, None, vec![]).is_err(),
            "too many chunks"
        );
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "..\\x",
            "a\0b",
            "a\nb",
            &"n".repeat(300),
        ] {
            assert!(
                Manifest::new(bad.into(), 0, MIN_CHUNK_SIZE, None, vec![]).is_err(),
                "name {bad:?}"
            );
        }
        assert!(Manifest::new("ok name.iso".into(), 0, MIN_CHUNK_SIZE, None, vec![]).is_ok());
    }

    #[test]
    fn bad_toml_is_rejected_with_a_reason() {
        assert!(
            Manifest::from_toml("not toml [")
                .unwrap_err()
                .contains("TOML")
        );
        let m = chunkify(&data(20_000)[..], "x", MIN_CHUNK_SIZE).unwrap();
        let future = m.to_toml().replace("format = 2", "format = 9");
        assert!(
            Manifest::from_toml(&future)
                .unwrap_err()
                .contains("format 9")
        );
        let future_keys = format!("{future}\nsomething_new = 1\n");
        assert!(
            Manifest::from_toml(&future_keys)
                .unwrap_err()
                .contains("format 9")
        );
        let extra = format!("{}\nevil = 1\n", m.to_toml());
        assert!(Manifest::from_toml(&extra).is_err());
    }

    #[test]
    fn format_1_manifests_are_refused_with_what_to_do() {
        // What chunkify wrote before format 2 (fuzz/seeds/manifest_parse had it).
        let old = "format = 1\nname = \"one.bin\"\nsize = 1\nchunk_size = 16384\n\
            sha256 = \"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb\"\n\
            chunks = [\"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb\"]\n";
        let e = Manifest::from_toml(old).unwrap_err();
        assert!(
            e.contains("format 1") && e.contains("re-run chunkify"),
            "{e}"
        );
        let e = Manifest::from_toml("format = 1\nname = \"x\"\n").unwrap_err();
        assert!(e.contains("format 1"), "{e}");
    }

    #[test]
    fn a_content_key_travels_in_the_toml_and_leaves_the_id_alone() {
        let m = chunkify(&data(50_000)[..], "x", MIN_CHUNK_SIZE).unwrap();
        let key = ContentKey::from_bytes([7; 16]);
        let keyed = m.to_toml_keyed(Some(&key));
        assert!(keyed.contains("key = \"aes-128-ctr:0707"), "{keyed}");
        assert_eq!(
            Manifest::from_toml_keyed(&keyed).unwrap(),
            (m.clone(), Some(key))
        );
        assert_eq!(Manifest::from_toml(&keyed).unwrap().id(), m.id());
        assert_eq!(Manifest::from_toml_keyed(&m.to_toml()).unwrap().1, None);
        assert!(!m.to_toml().contains("key"));
        let bad = keyed.replace("aes-128-ctr:", "rot13:");
        assert!(Manifest::from_toml(&bad).unwrap_err().contains("rot13"));
    }

    /// A directory asset of three files over 50 000 bytes.
    fn directory() -> Manifest {
        let m = chunkify(&data(50_000)[..], "dir", MIN_CHUNK_SIZE).unwrap();
        let list = files::with_offsets([
            ("a/b.txt".to_string(), 20_000, 0o644),
            ("a/empty".to_string(), 0, 0o600),
            ("c.bin".to_string(), 30_000, 0o755),
        ]);
        m.with_files(list).unwrap()
    }

    #[test]
    fn a_directory_asset_round_trips_and_its_file_list_is_in_the_id() {
        let m = directory();
        let text = m.to_toml();
        assert!(
            text.contains(
                "[[files]]\npath = \"a/b.txt\"\nsize = 20000\nmode = \"0644\"\noffset = 0\n"
            ),
            "{text}"
        );
        let back = Manifest::from_toml(&text).unwrap();
        assert_eq!((&back, back.id()), (&m, m.id()));
        assert_eq!(m.file("c.bin").unwrap().offset, 20_000);
        assert_eq!(m.file("a").map(|f| &f.path), None);
        assert_eq!(m.file_chunks(m.file("c.bin").unwrap()), 1..4);
        let single = Manifest {
            files: Vec::new(),
            ..m.clone()
        };
        let mut other_mode = m.clone();
        other_mode.files[2].mode = 0o644;
        let mut other_path = m.clone();
        other_path.files[2].path = "d.bin".into();
        let mut other_split = m.clone();
        other_split.files[0].size -= 1;
        other_split.files[1].offset -= 1;
        other_split.files[2].offset -= 1;
        other_split.files[2].size += 1;
        let ids = [
            m.id(),
            single.id(),
            other_mode.id(),
            other_path.id(),
            other_split.id(),
        ];
        for (i, a) in ids.iter().enumerate() {
            for b in &ids[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Golden: the directory asset of fuzz/seeds/manifest_parse/files.toml (PROTOCOL.md
        // 13.1); its id must never change between builds.
        let golden = Manifest::new("dir".into(), 1, MIN_CHUNK_SIZE, None, vec![sha256(b"a")])
            .unwrap()
            .with_files(files::with_offsets([
                ("a/b.txt".to_string(), 1, 0o644),
                ("a/empty".to_string(), 0, 0o600),
            ]))
            .unwrap();
        assert_eq!(
            golden.id().to_string(),
            "60ba7bc908c8df2b3490a063d6f79e5c0a8f51e36697689035541f3dc6beca06"
        );
        // The canonical layout: the file count, then each file, before the chunk count.
        let bytes = m.canonical_bytes();
        assert_eq!(&bytes[37..41], &3u32.to_be_bytes());
        assert_eq!(&bytes[41..43], &7u16.to_be_bytes());
        assert_eq!(&bytes[43..50], b"a/b.txt");
        assert_eq!(&bytes[50..58], &20_000u64.to_be_bytes());
        assert_eq!(&bytes[58..62], &0o644u32.to_be_bytes());
    }

    #[test]
    fn hostile_file_lists_are_refused_when_read() {
        let text = directory().to_toml();
        for (from, to, why) in [
            ("\"a/b.txt\"", "\"../b.txt\"", "\"..\" component"),
            ("\"a/b.txt\"", "\"/etc/b.txt\"", "absolute"),
            ("\"a/b.txt\"", "\"a/b\\u0000t\"", "'\\0'"),
            ("\"a/empty\"", "\"a/b.txt\"", "listed twice"),
            ("\"c.bin\"", "\"a/b.txt/c\"", "bytewise order"),
            ("\"0755\"", "\"4755\"", "set-uid"),
            ("\"0755\"", "\"rwx\"", "octal"),
            ("offset = 20000", "offset = 19999", "starts at offset 19999"),
            ("size = 30000", "size = 30001", "hold 50001 bytes"),
            ("offset = 0\n", "offset = 0\nowner = \"root\"\n", "owner"),
        ] {
            assert!(text.contains(from), "{from}");
            let e = Manifest::from_toml(&text.replacen(from, to, 1)).unwrap_err();
            assert!(e.contains(why), "{to}: {e}");
        }
        let deep = format!("\"{}x\"", "d/".repeat(MAX_DEPTH));
        let e = Manifest::from_toml(&text.replacen("\"a/b.txt\"", &deep, 1)).unwrap_err();
        assert!(e.contains("levels deep"), "{e}");
        let e = Manifest::from_toml(&format!(
            "{}files = []\n",
            chunkify(&data(1)[..], "x", MIN_CHUNK_SIZE)
                .unwrap()
                .to_toml()
        ))
        .unwrap_err();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn many_tiny_values_are_refused_before_parsing() {
        // A short list of empty strings: each costs the parser ~150 bytes, its text 3.
        let mut text = String::from("format = 2\nname = \"a\"\nsize = 0\nchunk_size = 16384\n");
        text.push_str("sha256 = \"\"\nchunks = [");
        text.push_str(&"\"\",".repeat(MAX_MANIFEST_SEPARATORS));
        text.push(']');
        let e = Manifest::from_toml(&text).unwrap_err();
        assert!(e.contains("separators"), "{e}");
        // The bound is inclusive, and a manifest of MAX_CHUNKS chunks whose name is all
        // separators stays within it: to_toml writes one comma per chunk and a few others.
        let m = with_whole(&data(100_000), &".,=[{".repeat(51), MIN_CHUNK_SIZE);
        let text = m.to_toml();
        let count = |t: &str| t.bytes().filter(|b| b",=.[{".contains(b)).count();
        assert!(count(&text) <= m.chunks.len() + 300, "{text}");
        let at_limit = format!(
            "{text}#{}",
            ",".repeat(MAX_MANIFEST_SEPARATORS - count(&text))
        );
        assert_eq!(Manifest::from_toml(&at_limit).unwrap(), m);
        assert!(Manifest::from_toml(&format!("{at_limit},")).is_err());
    }

    #[test]
    fn the_fuzz_seeds_follow_the_format() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/seeds/manifest_parse");
        for (seed, refusal) in [
            ("empty.toml", None),
            ("one.toml", None),
            ("three.toml", None),
            ("format1.toml", Some("re-run chunkify")),
            ("files.toml", None),
            ("files_hostile.toml", Some("\"..\" component")),
        ] {
            let text = std::fs::read_to_string(format!("{dir}/{seed}")).unwrap();
            match (Manifest::from_toml(&text), refusal) {
                (Ok(m), None) => assert_eq!(m.to_toml(), text, "{seed} is what chunkify writes"),
                (Err(e), Some(why)) => assert!(e.contains(why), "{seed}: {e}"),
                (other, _) => panic!("{seed}: {other:?}"),
            }
        }
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::sample::Index;

        fn name() -> impl Strategy<Value = String> {
            // Plain names, and any non-control Unicode (quotes, `#`, `=`, emoji …).
            prop_oneof!["[a-zA-Z0-9._ -]{1,40}", "\\PC{1,80}"]
                .prop_filter("a valid name", |n| check_name(n).is_ok())
        }

        fn manifest() -> impl Strategy<Value = Manifest> {
            (name(), MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE, 0usize..40)
                .prop_flat_map(|(name, chunk_size, count)| {
                    let last = if count == 0 { 0..=0 } else { 1..=chunk_size };
                    (
                        Just(name),
                        Just(chunk_size),
                        last,
                        proptest::option::of(any::<Digest>()),
                        vec(any::<Digest>(), count),
                    )
                })
                .prop_map(|(name, chunk_size, last, whole, chunks)| {
                    let size =
                        (chunks.len() as u64).saturating_sub(1) * chunk_size as u64 + last as u64;
                    Manifest::new(name, size, chunk_size, whole, chunks).expect("a valid shape")
                })
        }

        /// A directory asset: a manifest whose bytes are split among a few files with any
        /// names (quotes, `#`, `=`, non-ASCII), modes and sizes (empty ones too).
        fn directory() -> impl Strategy<Value = Manifest> {
            let path = prop_oneof!["[a-z]{1,6}(/[a-z.]{1,6}){0,3}", "\\PC{1,12}(/\\PC{1,6})?"];
            (
                manifest(),
                proptest::collection::btree_set(path, 1..6),
                vec((any::<u64>(), 0u32..=0o777), 6),
            )
                .prop_filter_map("a valid file list", |(m, paths, cuts)| {
                    let mut paths: Vec<String> = paths.into_iter().collect();
                    paths.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                    let mut ends: Vec<u64> = cuts[..paths.len() - 1]
                        .iter()
                        .map(|(c, _)| c % (m.size + 1))
                        .collect();
                    ends.sort();
                    ends.push(m.size);
                    let mut at = 0;
                    let list =
                        paths
                            .into_iter()
                            .zip(ends)
                            .zip(&cuts)
                            .map(|((p, end), (_, mode))| {
                                let size = end - at;
                                at = end;
                                (p, size, *mode)
                            });
                    m.with_files(files::with_offsets(list)).ok()
                })
        }

        fn parse(text: &str) -> Result<Manifest, TestCaseError> {
            Manifest::from_toml(text).map_err(TestCaseError::fail)
        }

        /// The same values as `to_toml` writes, written another way: keys in reverse
        /// order, hashes in uppercase, the array on one line, comments.
        fn rewritten(m: &Manifest) -> String {
            let chunks: Vec<String> = m
                .chunks
                .iter()
                .map(|c| format!("\"{}\"", hex::encode_upper(c)))
                .collect();
            let whole = m
                .sha256
                .map(|h| format!("sha256 = '{}'\n", hex::encode_upper(h)))
                .unwrap_or_default();
            format!(
                "# rewritten\nchunks = [{}] # {}\n{whole}chunk_size = {}\nsize = {}\nname = {}\nformat = 2\n",
                chunks.join(", "),
                m.chunks.len(),
                m.chunk_size,
                m.size,
                toml::Value::String(m.name.clone()),
            )
        }

        /// What the TOML writer makes of the whole manifest, hashes as strings: the
        /// layout `to_toml` keeps while writing the list by hand.
        fn written_by_the_toml_crate(m: &Manifest) -> String {
            #[derive(Serialize)]
            struct Whole {
                format: u32,
                name: String,
                size: u64,
                chunk_size: u32,
                #[serde(skip_serializing_if = "Option::is_none")]
                sha256: Option<String>,
                chunks: Vec<String>,
            }
            toml::to_string_pretty(&Whole {
                format: FORMAT_VERSION,
                name: m.name.clone(),
                size: m.size,
                chunk_size: m.chunk_size,
                sha256: m.sha256.map(hex::encode),
                chunks: m.chunks.iter().map(hex::encode).collect(),
            })
            .unwrap()
        }

        proptest! {
            #[test]
            fn to_toml_writes_what_the_toml_crate_writes_and_its_list_takes_the_fast_path(
                m in manifest(),
            ) {
                let text = m.to_toml();
                prop_assert_eq!(&text, &written_by_the_toml_crate(&m));
                prop_assert_eq!(chunk_list::split(&text).is_some(), m.chunks.len() >= 2);
                if let Some((_, chunks)) = chunk_list::split(&text) {
                    prop_assert_eq!(&chunks, &m.chunks);
                }
            }

            #[test]
            fn toml_round_trips_and_the_id_is_stable(m in manifest()) {
                let back = parse(&m.to_toml())?;
                prop_assert_eq!(&back, &m);
                prop_assert_eq!(back.canonical_bytes(), m.canonical_bytes());
                prop_assert_eq!(back.id(), m.id());
                prop_assert_eq!(back.to_toml(), m.to_toml());
                let other_text = parse(&rewritten(&m))?;
                prop_assert_eq!(other_text.id(), m.id());
            }

            #[test]
            fn the_canonical_encoding_has_its_documented_layout(m in manifest()) {
                let bytes = m.canonical_bytes();
                let w = if m.sha256.is_some() { 32 } else { 0 };
                let c = m.chunks.len();
                prop_assert_eq!(bytes.len(), CANONICAL_FIXED_BYTES + w + 32 * c);
                prop_assert_eq!(&bytes[..20], CANONICAL_MAGIC);
                prop_assert_eq!(&bytes[20..24], &2u32.to_be_bytes());
                prop_assert_eq!(&bytes[24..32], &m.size.to_be_bytes());
                prop_assert_eq!(&bytes[32..36], &m.chunk_size.to_be_bytes());
                prop_assert_eq!(bytes[36], m.sha256.is_some() as u8);
                if let Some(whole) = &m.sha256 {
                    prop_assert_eq!(&bytes[37..69], whole);
                }
                prop_assert_eq!(&bytes[37 + w..41 + w], &[0u8; 4]);
                prop_assert_eq!(&bytes[41 + w..45 + w], &(c as u32).to_be_bytes());
                for (i, chunk) in m.chunks.iter().enumerate() {
                    prop_assert_eq!(&bytes[45 + w + 32 * i..77 + w + 32 * i], chunk);
                }
                prop_assert_eq!(m.id(), AssetId(sha256(&bytes)));
            }

            #[test]
            fn directory_assets_round_trip_through_toml_and_the_binary_form(m in directory()) {
                let back = parse(&m.to_toml())?;
                prop_assert_eq!(&back, &m);
                prop_assert_eq!(back.id(), m.id());
                prop_assert_eq!(binary::decode(&binary::encode(&m)).map_err(TestCaseError::fail)?, m.clone());
                let single = Manifest { files: Vec::new(), ..m.clone() };
                prop_assert_ne!(single.id(), m.id());
                for f in m.files() {
                    prop_assert_eq!(m.file(&f.path), Some(f));
                }
            }

            #[test]
            fn arbitrary_text_never_panics(
                text in prop_oneof![any::<String>(), "[a-z_=\\[\\]{}\"',.0-9 \n#-]{0,200}"],
            ) {
                if let Ok(m) = Manifest::from_toml(&text) {
                    prop_assert_eq!(parse(&m.to_toml())?, m);
                }
            }

            #[test]
            fn damaged_manifests_are_rejected_or_valid(
                m in manifest(),
                damage in vec((any::<Index>(), any::<char>()), 1..4),
                cut in any::<Index>(),
            ) {
                let mut text: Vec<char> = m.to_toml().chars().collect();
                for (at, c) in damage {
                    let at = at.index(text.len());
                    text[at] = c;
                }
                text.truncate(cut.index(text.len() + 1).max(text.len() / 2));
                let text: String = text.into_iter().collect();
                if let Ok(m) = Manifest::from_toml(&text) {
                    prop_assert!(check_name(&m.name).is_ok());
                    prop_assert_eq!(m.chunks.len() as u64, chunk_count_for(m.size, m.chunk_size));
                    prop_assert_eq!(parse(&m.to_toml())?, m);
                }
            }
        }
    }
}
