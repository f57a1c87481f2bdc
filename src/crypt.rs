//! Content encryption: the per-asset key, AES-128-CTR keyed per asset and nonced per chunk,
//! and the chunk-range API that every output (`get -o`, `--stream`, a gateway) decrypts
//! through. Pure: no files, sockets or threads, only byte slices and `Read`/`Write`.
//!
//! The counter block of byte `b` of chunk `i` is `i` as a 64-bit big-endian number (the
//! high half) followed by `b / 16` as a 64-bit big-endian number (the low half). Under one
//! key no block is ever used twice: the high half names the chunk (below 2^20 chunks, see
//! [`crate::manifest::MAX_CHUNKS`]) and the low half counts the chunk's 16-byte blocks
//! from 0 (at most 2^22 of them in a 64 MiB chunk, far from wrapping its 64 bits into the
//! next chunk's). A chunk, or any range of one, is therefore decrypted alone, and the
//! ciphertext has the plaintext's size and offsets, so Range reads and resumes still work.
//!
//! A key is 16 random bytes from the operating system, one per asset, never derived from
//! the content (no convergent encryption): two publishes of the same file are two assets
//! whose ids and ciphertexts share nothing. CTR has no integrity of its own; here the
//! chunks' SHA-256 hashes over the ciphertext, in a manifest that only the tracker hands
//! out, are the integrity check, made before a chunk is stored or decrypted.

use std::fmt;
use std::io::{self, Read, Write};

use aes::Aes128;
use ctr::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

/// The only cipher this build knows, as manifests and answers name it.
pub const CIPHER: &str = "aes-128-ctr";
/// Bytes of a content key.
pub const KEY_BYTES: usize = 16;
/// Bytes en- or decrypted at a time by [`Encrypting`] and [`copy_decrypted`]: one buffer,
/// small enough to stay in the CPU's cache, large enough that a call costs nothing.
const PIECE: usize = 64 << 10;

/// AES-128 in CTR mode with a 64-bit big-endian block counter in the low half of the block.
type Aes128Ctr = ctr::Ctr64BE<Aes128>;

/// An asset's content key. Its `Debug` shows no byte of it, so a key never reaches a log
/// through a `{:?}`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ContentKey([u8; KEY_BYTES]);

impl fmt::Debug for ContentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ContentKey(..)")
    }
}

impl ContentKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> anyhow::Result<ContentKey> {
        let mut bytes = [0u8; KEY_BYTES];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("no randomness for a content key: {e}"))?;
        Ok(ContentKey(bytes))
    }

    /// The key from its raw bytes.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> ContentKey {
        ContentKey(bytes)
    }

    /// The key as 32 hex digits (what the tracker's answer carries).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 32 hex digits.
    pub fn from_hex(text: &str) -> Result<ContentKey, String> {
        let mut bytes = [0u8; KEY_BYTES];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            format!(
                "a content key is {} hex digits, got {} characters",
                2 * KEY_BYTES,
                text.trim().len()
            )
        })?;
        Ok(ContentKey(bytes))
    }

    /// The manifest's `key` field: `aes-128-ctr:` and the key in hex.
    pub fn to_field(&self) -> String {
        format!("{CIPHER}:{}", self.to_hex())
    }

    /// Parses a manifest's `key` field; another cipher is refused by name.
    pub fn from_field(text: &str) -> Result<ContentKey, String> {
        match text.split_once(':') {
            Some((cipher, key)) if cipher == CIPHER => ContentKey::from_hex(key),
            Some((cipher, _)) => Err(format!(
                "content key cipher {cipher:?} is not supported (this build knows {CIPHER})"
            )),
            None => Err(format!(
                "a content key looks like \"{CIPHER}:<32 hex digits>\""
            )),
        }
    }
}

/// The counter block that starts chunk `index` (see the module docs).
pub fn chunk_iv(index: u32) -> [u8; 16] {
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&(index as u64).to_be_bytes());
    iv
}

/// En- or decrypts (the same operation in CTR) `buf` in place: the bytes of chunk `index`
/// from byte `offset` of that chunk on. The caller keeps `buf` inside the chunk.
pub fn apply_chunk(key: &ContentKey, index: u32, offset: u32, buf: &mut [u8]) {
    let mut cipher = Aes128Ctr::new(&key.0.into(), &chunk_iv(index).into());
    cipher.seek(offset as u64);
    cipher.apply_keystream(buf);
}

/// En- or decrypts `buf` in place as the bytes of the asset from byte `offset` on, cut into
/// chunks of `chunk_size`: the chunk-range API, for a range that spans chunk boundaries
/// (a Range read of a gateway, a resumed output).
pub fn apply_range(key: &ContentKey, chunk_size: u32, offset: u64, buf: &mut [u8]) {
    let chunk_size = chunk_size.max(1) as u64;
    let mut at = offset;
    let mut rest = buf;
    while !rest.is_empty() {
        let index = (at / chunk_size) as u32;
        let within = (at % chunk_size) as u32;
        let take = ((chunk_size - within as u64) as usize).min(rest.len());
        let (piece, tail) = rest.split_at_mut(take);
        apply_chunk(key, index, within, piece);
        at += take as u64;
        rest = tail;
    }
}

/// Copies `from` to `to` decrypting on the way (or encrypting: CTR is symmetric), `from`
/// starting at byte 0 of the asset. Returns the bytes copied.
pub fn copy_decrypted(
    key: &ContentKey,
    chunk_size: u32,
    from: &mut impl Read,
    to: &mut (impl Write + ?Sized),
) -> io::Result<u64> {
    let mut buf = vec![0u8; PIECE];
    let mut at = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(at),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        apply_range(key, chunk_size, at, &mut buf[..n]);
        to.write_all(&buf[..n])?;
        at += n as u64;
    }
}

/// A writer that encrypts what it is given (an asset from byte 0 on) into `inner`: what
/// `chunkify --encrypt` and `peer_server --seed --encrypt` write the ciphertext with, so
/// the plaintext never reaches a file.
pub struct Encrypting<W> {
    inner: W,
    key: ContentKey,
    chunk_size: u32,
    at: u64,
    buf: Vec<u8>,
}

impl<W: Write> Encrypting<W> {
    /// Encrypts into `inner` with `key`, chunked at `chunk_size`.
    pub fn new(inner: W, key: ContentKey, chunk_size: u32) -> Encrypting<W> {
        Encrypting {
            inner,
            key,
            chunk_size,
            at: 0,
            buf: Vec::with_capacity(PIECE),
        }
    }

    /// The inner writer back, flushed.
    pub fn into_inner(mut self) -> io::Result<W> {
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for Encrypting<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = data.len().min(PIECE);
        self.buf.clear();
        self.buf.extend_from_slice(&data[..take]);
        apply_range(&self.key, self.chunk_size, self.at, &mut self.buf);
        // All or nothing, so that `at` stays the offset of the next byte given.
        self.inner.write_all(&self.buf)?;
        self.at += take as u64;
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK: u32 = 16 << 10;

    fn key() -> ContentKey {
        ContentKey::from_bytes(*b"0123456789abcdef")
    }

    fn plain(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 + i / 7) as u8).collect()
    }

    /// The asset encrypted chunk by chunk, the way the module docs define it.
    fn by_chunks(key: &ContentKey, data: &[u8]) -> Vec<u8> {
        let mut out = data.to_vec();
        for (i, chunk) in out.chunks_mut(CHUNK as usize).enumerate() {
            apply_chunk(key, i as u32, 0, chunk);
        }
        out
    }

    #[test]
    fn a_round_trip_gives_the_plaintext_back_across_chunk_boundaries() {
        for len in [
            0,
            1,
            15,
            16,
            17,
            CHUNK as usize - 1,
            CHUNK as usize,
            3 * CHUNK as usize + 5,
        ] {
            let data = plain(len);
            let sealed = by_chunks(&key(), &data);
            assert_eq!(sealed.len(), data.len());
            if len >= 16 {
                assert_ne!(sealed, data, "{len} bytes left as they were");
            }
            let mut back = sealed.clone();
            apply_range(&key(), CHUNK, 0, &mut back);
            assert_eq!(back, data, "{len} bytes");
            // Through the writer, in odd pieces, and back through the copy.
            let mut writer = Encrypting::new(Vec::new(), key(), CHUNK);
            for piece in data.chunks(977) {
                writer.write_all(piece).unwrap();
            }
            let written = writer.into_inner().unwrap();
            assert_eq!(written, sealed, "{len} bytes through Encrypting");
            let mut copied = Vec::new();
            let n = copy_decrypted(&key(), CHUNK, &mut &written[..], &mut copied).unwrap();
            assert_eq!((n as usize, copied), (len, data));
        }
    }

    #[test]
    fn a_range_in_the_middle_decrypts_alone() {
        let data = plain(4 * CHUNK as usize + 100);
        let sealed = by_chunks(&key(), &data);
        // Inside one chunk, at an offset that is not a block boundary, and across two.
        for (start, len) in [
            (CHUNK as usize + 37, 1000),
            (2 * CHUNK as usize - 5, 300),
            (3, 1),
        ] {
            let mut range = sealed[start..start + len].to_vec();
            apply_range(&key(), CHUNK, start as u64, &mut range);
            assert_eq!(range, &data[start..start + len], "{start}+{len}");
        }
        let mut one = sealed[CHUNK as usize + 16..CHUNK as usize + 48].to_vec();
        apply_chunk(&key(), 1, 16, &mut one);
        assert_eq!(one, &data[CHUNK as usize + 16..CHUNK as usize + 48]);
    }

    #[test]
    fn no_counter_block_repeats_under_one_key() {
        // The first block of every chunk and the last of the largest chunk are distinct.
        let mut seen = std::collections::HashSet::new();
        for index in [0u32, 1, 2, 255, 256, 65_535, (1 << 20) - 1] {
            assert!(seen.insert(chunk_iv(index)), "chunk {index}");
        }
        assert_eq!(chunk_iv(1)[..8], 1u64.to_be_bytes());
        assert_eq!(chunk_iv(1)[8..], [0u8; 8]);
        // Equal plaintext chunks encrypt to different ciphertexts (distinct keystreams),
        // and the last block of a 64 MiB chunk is not the first of the next one.
        let same = vec![0u8; 2 * CHUNK as usize];
        let sealed = by_chunks(&key(), &same);
        assert_ne!(sealed[..CHUNK as usize], sealed[CHUNK as usize..]);
        let last_block = (64u64 << 20) - 16;
        let mut tail = [0u8; 16];
        apply_chunk(&key(), 0, last_block as u32, &mut tail);
        let mut next = [0u8; 16];
        apply_chunk(&key(), 1, 0, &mut next);
        assert_ne!(tail, next);
        // Two keys give two keystreams.
        let other = ContentKey::from_bytes([9; 16]);
        assert_ne!(by_chunks(&other, &same), sealed);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        proptest! {
            #[test]
            fn any_range_decrypts_alone_to_its_plaintext(
                len in 0usize..5 * CHUNK as usize,
                a in any::<Index>(),
                b in any::<Index>(),
            ) {
                let data = plain(len);
                let sealed = by_chunks(&key(), &data);
                let (a, b) = (a.index(len + 1), b.index(len + 1));
                let (start, end) = (a.min(b), a.max(b));
                let mut range = sealed[start..end].to_vec();
                apply_range(&key(), CHUNK, start as u64, &mut range);
                prop_assert_eq!(&range[..], &data[start..end]);
            }
        }
    }

    #[test]
    fn keys_are_random_and_their_field_round_trips_without_showing_in_debug() {
        let (a, b) = (
            ContentKey::generate().unwrap(),
            ContentKey::generate().unwrap(),
        );
        assert_ne!(a, b);
        assert_eq!(ContentKey::from_field(&a.to_field()).unwrap(), a);
        assert!(a.to_field().starts_with("aes-128-ctr:"));
        assert!(!format!("{a:?}").contains(&a.to_hex()));
        for bad in [
            "aes-128-ctr:00",
            "chacha20:00112233445566778899aabbccddeeff",
            "nokey",
            "aes-128-ctr:zz112233445566778899aabbccddeeff",
        ] {
            assert!(ContentKey::from_field(bad).is_err(), "{bad}");
        }
        assert!(
            ContentKey::from_field("chacha20:00")
                .unwrap_err()
                .contains("chacha20")
        );
    }
}
