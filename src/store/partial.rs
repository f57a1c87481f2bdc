//! Partial downloads: an asset open for writing ([`Store::begin`]), its chunks written in
//! place, its progress checkpointed, re-hashed on resume where the record is not sealed,
//! and finished (made read-only and sealed) once every chunk is verified.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

use super::{InUse, Store, seal_of};
use crate::bitfield::Bitfield;
use crate::fsutil::{replace, write_atomic};
use crate::manifest::{AssetId, Manifest};

/// The largest single write into a content file. Large writes have the kernel (6.18, ext4)
/// put the bytes in large page-cache folios, which come from the large free blocks that a
/// VM with free page reporting (this machine) has handed back to its host: every such
/// write then waits for the host to supply memory. Measured here, 1 GiB in 1 MiB writes
/// took 1.5-2.2 s, in 256 KiB writes 0.2 s alone but 1.5 s inside a download (four
/// writers); `peer_client get` of 1 GiB took 1.49 s with 256 KiB pieces, 0.79-1.38 s with
/// 64 KiB, 0.87-0.90 s with 32 KiB and 0.89-1.04 s with 16 KiB (bench/single_source.sh).
pub const WRITE_PIECE: usize = 32 << 10;

impl Store {
    /// Opens an asset for writing: holds it in use ([`Store::hold`]), creates its manifest
    /// and full-size data file if needed, takes its lock (one writer at a time), and loads
    /// what is already there. Fails when another process writes the asset.
    pub fn begin(&self, manifest: &Manifest) -> Result<Partial> {
        match self.try_begin(manifest)? {
            Some(partial) => Ok(partial),
            None => bail!(
                "asset {} is being written by another process using store {}; wait for it or use another --store",
                manifest.id(),
                self.root.display()
            ),
        }
    }

    /// Like [`Store::begin`], but `None` (at once, without blocking) while another process
    /// writes the asset, for a caller that waits its turn.
    pub fn try_begin(&self, manifest: &Manifest) -> Result<Option<Partial>> {
        let id = manifest.id();
        let dir = self.asset_dir(&id);
        let in_use = self.hold(&id)?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", lock_path.display()));
            }
        }
        if self.manifest(&id)?.is_none() {
            write_atomic(&dir.join("manifest.toml"), manifest.to_toml().as_bytes())?;
        }
        let have = self.have(&id, manifest)?;
        let data_path = dir.join("data");
        if let Ok(meta) = fs::metadata(&data_path)
            && meta.permissions().readonly()
        {
            // Completed once (completion makes it read-only), changed since: writable again.
            let mut perms = meta.permissions();
            #[allow(clippy::permissions_set_readonly_false)]
            perms.set_readonly(false);
            fs::set_permissions(&data_path, perms)
                .with_context(|| format!("making {} writable", data_path.display()))?;
        }
        let data = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data_path)
            .with_context(|| format!("opening {}", data_path.display()))?;
        let len = data
            .metadata()
            .with_context(|| format!("reading {}", data_path.display()))?
            .len();
        if len != manifest.size {
            data.set_len(manifest.size).with_context(|| {
                format!(
                    "sizing {} to {} bytes (is the disk full?)",
                    data_path.display(),
                    manifest.size
                )
            })?;
        }
        // Anything claimed but not sealed complete is checked before it is trusted.
        let have = if have.count() == 0 || self.is_complete(&id, manifest)? {
            have
        } else {
            recheck(manifest, &data, &have)?
        };
        Ok(Some(Partial {
            id,
            dir,
            data: Arc::new(data),
            have,
            _lock: lock,
            _in_use: in_use,
        }))
    }
}

/// An asset open for writing, locked against other writers until dropped, and in use.
#[derive(Debug)]
pub struct Partial {
    id: AssetId,
    /// The asset's directory in the store.
    pub(super) dir: PathBuf,
    data: Arc<File>,
    have: Bitfield,
    _lock: File,
    _in_use: InUse,
}

impl Partial {
    /// The asset's id.
    pub fn id(&self) -> AssetId {
        self.id
    }

    /// The content file, for positioned writes from several threads.
    pub fn data(&self) -> Arc<File> {
        Arc::clone(&self.data)
    }

    /// Writes verified bytes at `offset` of the content, in pieces of at most
    /// [`WRITE_PIECE`] bytes.
    pub fn write_at(data: &File, bytes: &[u8], offset: u64) -> std::io::Result<()> {
        let mut at = offset;
        for piece in bytes.chunks(WRITE_PIECE) {
            data.write_all_at(piece, at)?;
            at += piece.len() as u64;
        }
        Ok(())
    }

    /// The chunks already verified and written when the asset was opened.
    pub fn have(&self) -> &Bitfield {
        &self.have
    }

    /// Records progress. Call it only with chunks whose bytes were written before the call:
    /// the record then never claims data that a crash of this process could lose (written
    /// data lives in the page cache, which outlives the process). The content is not forced
    /// to disk here: syncing a gigabyte every second stalls the writes behind it and costs
    /// as much disk time as the download itself. After a power loss the record may claim
    /// chunks the disk never got; [`Store::begin`] re-hashes claimed chunks on resume.
    pub fn checkpoint(&self, have: &Bitfield) -> Result<()> {
        replace(&self.dir.join("have"), have.as_bytes())
    }

    /// Marks the asset complete (every chunk verified) and makes its content read-only.
    pub fn finish(self) -> Result<()> {
        replace(
            &self.dir.join("have"),
            Bitfield::full(self.have.len()).as_bytes(),
        )?;
        let data_path = self.dir.join("data");
        let mut perms = self.data.metadata()?.permissions();
        perms.set_readonly(true);
        fs::set_permissions(&data_path, perms)
            .with_context(|| format!("making {} read-only", data_path.display()))?;
        let meta =
            fs::metadata(&data_path).with_context(|| format!("reading {}", data_path.display()))?;
        replace(&self.dir.join("sealed"), seal_of(&meta).as_bytes())
    }
}

/// The chunks of `claimed` whose bytes in `data` match the manifest. Run on resume, so a
/// record that outlived its data (power loss, disk rot, a hand edit) costs a re-fetch, not
/// a corrupt file.
fn recheck(manifest: &Manifest, data: &File, claimed: &Bitfield) -> Result<Bitfield> {
    let mut kept = Bitfield::new(claimed.len());
    let mut buf = vec![0u8; manifest.chunk_size as usize];
    for index in claimed.ones() {
        let chunk = &mut buf[..manifest.chunk_len(index) as usize];
        data.read_exact_at(chunk, manifest.chunk_offset(index))
            .with_context(|| format!("re-reading chunk {index} of {}", manifest.id()))?;
        if manifest.chunk_matches(index, chunk) {
            kept.set(index);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, chunkify};

    #[test]
    fn writes_in_pieces_land_whole_at_their_offset() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("data")).unwrap();
        // Three pieces and a short tail, placed after a gap.
        let bytes: Vec<u8> = (0..3 * WRITE_PIECE + 17).map(|i| (i % 251) as u8).collect();
        Partial::write_at(&file, &bytes, 1000).unwrap();
        let back = fs::read(dir.path().join("data")).unwrap();
        assert_eq!(back.len(), 1000 + bytes.len());
        assert!(back[..1000].iter().all(|&b| b == 0));
        assert_eq!(&back[1000..], &bytes[..]);
    }

    #[test]
    fn partial_progress_survives_reopening_and_one_writer_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = vec![5u8; 3 * MIN_CHUNK_SIZE as usize];
        let m = chunkify(&bytes[..], "p", MIN_CHUNK_SIZE).unwrap();
        let store = Store::open(dir.path()).unwrap();
        {
            let partial = store.begin(&m).unwrap();
            assert_eq!(partial.have().count(), 0);
            assert!(store.begin(&m).is_err(), "a second writer must be refused");
            partial
                .data()
                .write_at(&bytes[..MIN_CHUNK_SIZE as usize], 0)
                .unwrap();
            let mut have = Bitfield::new(3);
            have.set(0);
            partial.checkpoint(&have).unwrap();
        }
        let again = store.begin(&m).unwrap();
        assert_eq!(again.have().ones().collect::<Vec<_>>(), vec![0]);
        // A record claiming a chunk whose bytes are not there loses that claim on resume.
        let mut claims = Bitfield::new(3);
        claims.set(0);
        claims.set(2);
        again.checkpoint(&claims).unwrap();
        drop(again);
        let rechecked = store.begin(&m).unwrap();
        assert_eq!(rechecked.have().ones().collect::<Vec<_>>(), vec![0]);
        assert_eq!(
            fs::metadata(store.data_path(&m.id())).unwrap().len(),
            bytes.len() as u64
        );
    }
}
