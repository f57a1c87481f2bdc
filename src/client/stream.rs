//! Writes an asset to a pipe in order while it downloads: each chunk once it is verified
//! and in the store, never a byte before.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use crossbeam_channel::{Receiver, RecvTimeoutError};
use serde::Serialize;

use crate::bitfield::Bitfield;
use crate::crypt::{self, ContentKey};
use crate::manifest::Manifest;

/// Chunks ahead of the reader that the download treats as urgent (`--window`): with the
/// default 256 KiB chunks, 20 is 5 MiB, two seconds of 20 Mbit/s video, enough that one
/// slow chunk can be fetched again elsewhere before the player reaches it.
pub const DEFAULT_WINDOW: u32 = 20;

/// How often a waiting stream checks whether it should give up (interrupted).
const POLL: Duration = Duration::from_millis(100);

/// A wait for the next chunk longer than this is a stall: the player reading the stream
/// may run dry. Shorter waits are hidden by what is ahead of it: a pipe holds at least
/// 64 KiB (65 ms at 8 Mbit/s; `peer_client` asks for 1 MiB), and a player keeps a few
/// decoded frames (40 ms at 25 fps) and an audio buffer of 20-100 ms, so 50 ms of nothing
/// new goes unseen. A stall is an upper bound on what the player sees: what the pipe held
/// when the wait began is not known here (a 0.2 s stall once went unnoticed by a player
/// behind a 1 MiB pipe). Every wait, however short (most are microseconds: the next chunk
/// is still being verified), is counted apart as a wait.
pub const STALL_THRESHOLD: Duration = Duration::from_millis(50);

/// What a stream saw: when its first byte went out and how often it had to wait.
#[derive(Clone, Debug, Default, Serialize)]
pub struct StreamStats {
    /// Seconds from the start of the `get` to the first byte handed to the output.
    pub first_byte_secs: Option<f64>,
    /// Waits for the next chunk, once started, longer than [`STALL_THRESHOLD`].
    pub stalls: u32,
    /// Seconds spent in those stalls.
    pub stall_secs: f64,
    /// Every wait for the next chunk once started, the stalls included.
    pub waits: u32,
    /// Seconds spent in those waits.
    pub wait_secs: f64,
}

impl StreamStats {
    /// Counts a wait of `waited` for the next chunk after the first byte.
    fn waited(&mut self, waited: Duration) {
        self.waits += 1;
        self.wait_secs += waited.as_secs_f64();
        if waited > STALL_THRESHOLD {
            self.stalls += 1;
            self.stall_secs += waited.as_secs_f64();
        }
    }
}

/// The stream's error when the download ended (failed) before a chunk it needed arrived:
/// the download's own error is the one to tell, not this.
#[derive(Debug)]
pub(crate) struct RanDry {
    index: u32,
    count: u32,
}

impl std::fmt::Display for RanDry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the download ended before chunk {} of {} arrived",
            self.index, self.count
        )
    }
}

impl std::error::Error for RanDry {}

/// An in-order writer of an asset's verified chunks.
pub struct Stream<'a> {
    /// The asset's manifest.
    pub manifest: &'a Manifest,
    /// The store's content file, where verified chunks are written.
    pub data: Arc<File>,
    /// Chunks verified before the stream started.
    pub have: Bitfield,
    /// Indices of chunks verified since, in any order. Closed when the download ends,
    /// whether it succeeded or not.
    pub done: Receiver<u32>,
    /// When the `get` started, for the time to first byte.
    pub started: Instant,
    /// The content key of an encrypted asset: each chunk is decrypted on its way out (the
    /// store keeps the ciphertext).
    pub key: Option<ContentKey>,
}

impl Stream<'_> {
    /// Writes every chunk to `out` in order, calling `position(next)` each time the index
    /// of the next chunk needed changes, so the download can fetch what is due first.
    /// `cancelled` is polled while waiting.
    pub fn run(
        mut self,
        out: &mut dyn Write,
        mut position: impl FnMut(u32),
        cancelled: impl Fn() -> bool,
    ) -> Result<StreamStats> {
        let count = self.manifest.chunk_count();
        let mut stats = StreamStats::default();
        let mut buf = vec![0u8; self.manifest.chunk_size as usize];
        for index in 0..count {
            position(index);
            if !self.have.get(index) {
                let waited = Instant::now();
                self.wait_for(index, &cancelled)?;
                // Waiting before the first byte is start-up, reported as the time to it.
                if stats.first_byte_secs.is_some() {
                    stats.waited(waited.elapsed());
                }
            }
            let chunk = &mut buf[..self.manifest.chunk_len(index) as usize];
            self.data
                .read_exact_at(chunk, self.manifest.chunk_offset(index))
                .with_context(|| {
                    format!(
                        "reading chunk {index} of {} from the store",
                        self.manifest.id()
                    )
                })?;
            if let Some(key) = &self.key {
                crypt::apply_chunk(key, index, 0, chunk);
            }
            if stats.first_byte_secs.is_none() {
                stats.first_byte_secs = Some(self.started.elapsed().as_secs_f64());
            }
            out.write_all(chunk)
                .and_then(|()| out.flush())
                .context("writing to the output stream")?;
        }
        position(count);
        Ok(stats)
    }

    /// Blocks until chunk `index` is verified; fails when the download ends without it.
    fn wait_for(&mut self, index: u32, cancelled: &impl Fn() -> bool) -> Result<()> {
        while !self.have.get(index) {
            match self.done.recv_timeout(POLL) {
                Ok(done) => self.have.set(done),
                Err(RecvTimeoutError::Timeout) if cancelled() => bail!("interrupted"),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(anyhow::Error::new(RanDry {
                        index,
                        count: self.manifest.chunk_count(),
                    }));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::chunkify;

    fn asset(len: usize, chunk: u32) -> (tempfile::TempDir, Manifest, Arc<File>, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        let path = dir.path().join("data");
        std::fs::write(&path, &bytes).unwrap();
        let manifest = chunkify(&bytes[..], "a", chunk).unwrap();
        let file = Arc::new(File::open(&path).unwrap());
        (dir, manifest, file, bytes)
    }

    #[test]
    fn writes_chunks_in_order_as_they_arrive_out_of_order() {
        let (_dir, manifest, data, bytes) = asset(5 * 16384 + 100, 16384);
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut have = Bitfield::new(manifest.chunk_count());
        have.set(1);
        let stream = Stream {
            manifest: &manifest,
            data,
            have,
            done: rx,
            started: Instant::now(),
            key: None,
        };
        for index in [5, 0, 3, 2, 4] {
            tx.send(index).unwrap();
        }
        drop(tx);
        let mut out = Vec::new();
        let mut positions = Vec::new();
        let stats = stream
            .run(&mut out, |p| positions.push(p), || false)
            .unwrap();
        assert_eq!(out, bytes);
        assert_eq!(positions, vec![0, 1, 2, 3, 4, 5, 6]);
        assert!(stats.first_byte_secs.is_some());
    }

    #[test]
    fn only_a_wait_a_player_would_notice_is_a_stall_and_every_wait_is_counted() {
        let mut stats = StreamStats::default();
        for ms in [0, 3, 50, 51, 400] {
            stats.waited(Duration::from_millis(ms));
        }
        assert_eq!((stats.waits, stats.stalls), (5, 2));
        assert!((stats.stall_secs - 0.451).abs() < 1e-9, "{stats:?}");
        assert!((stats.wait_secs - 0.504).abs() < 1e-9, "{stats:?}");
    }

    #[test]
    fn stops_with_an_error_when_the_download_ends_short() {
        let (_dir, manifest, data, bytes) = asset(3 * 16384, 16384);
        let (tx, rx) = crossbeam_channel::unbounded();
        tx.send(0).unwrap();
        drop(tx);
        let stream = Stream {
            manifest: &manifest,
            data,
            have: Bitfield::new(3),
            done: rx,
            started: Instant::now(),
            key: None,
        };
        let mut out = Vec::new();
        let error = stream.run(&mut out, |_| {}, || false).unwrap_err();
        assert!(error.to_string().contains("before chunk 1 of 3"), "{error}");
        // What was verified went out; nothing else did.
        assert_eq!(out, bytes[..16384]);
    }
}
