//! The store: one directory per machine holding assets by id, shared by `peer_server` and
//! `peer_client`. Files are replaced by rename, so a crash at any moment leaves either the
//! old or the new version; manifests are also fsynced. Chunk data is written in place and
//! recorded in `have` only after it is written, so a killed process never loses a chunk it
//! recorded; data is not fsynced during a download, and [`Store::begin`] re-hashes what a
//! partial record claims, so a power loss costs a re-fetch. A record that claims every chunk
//! is trusted when the `sealed` file matches the content's size and modification time
//! (checking the hashes would cost a full read on every use); otherwise it is re-hashed.
//!
//! Layout of a store root:
//! ```text
//! assets/<asset-id>/manifest.toml   the manifest (its hash is the directory name)
//! assets/<asset-id>/data            the content, at its final size from the start
//! assets/<asset-id>/have            the bitfield of chunks verified and written to `data`
//! assets/<asset-id>/sealed          "size mtime_ns" of `data` when it was completed
//! assets/<asset-id>/lock            locked by the one process writing the asset
//! tmp/                              files being imported
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result, bail};

use crate::bitfield::Bitfield;
use crate::manifest::{self, AssetId, Manifest};

/// Age after which a file in `tmp/` belongs to an import that died.
const STALE_TMP: std::time::Duration = std::time::Duration::from_secs(3600);

/// A store directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

/// Writes `bytes` to `path` durably and atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync the directory. For manifests and the
/// catalog, which must survive a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_rename(path, bytes, true)
}

/// Replaces `path` atomically without forcing it to disk: a reader, or a process started
/// after any crash of ours, sees the old or the new content, never a mix. For progress
/// records, which are rewritten every second and checked again on resume.
fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_rename(path, bytes, false)
}

fn write_via_rename(path: &Path, bytes: &[u8], durable: bool) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = path.parent().unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> io::Result<()> {
        let mut file = File::create(&tmp)?;
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        fs::rename(&tmp, path)?;
        if durable {
            sync_dir(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// Flushes a directory's entries (new names, renames) to disk.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Store {
    /// Opens a store, creating its directories when missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for sub in ["assets", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).with_context(|| {
                format!(
                    "creating store directory {} (choose another with --store)",
                    dir.display()
                )
            })?;
        }
        // Imports interrupted by a crash leave copies behind; an hour-old one is abandoned.
        if let Ok(entries) = fs::read_dir(root.join("tmp")) {
            for entry in entries.flatten() {
                let age = entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok());
                if age.is_some_and(|a| a > STALE_TMP) {
                    let _ = fs::remove_file(entry.path());
                }
            }
        }
        Ok(Store { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn asset_dir(&self, id: &AssetId) -> PathBuf {
        self.root.join("assets").join(id.to_string())
    }

    /// Path of an asset's content file.
    pub fn data_path(&self, id: &AssetId) -> PathBuf {
        self.asset_dir(id).join("data")
    }

    /// The manifest of `id` if the store has it; fails if the stored one is damaged.
    pub fn manifest(&self, id: &AssetId) -> Result<Option<Manifest>> {
        let path = self.asset_dir(id).join("manifest.toml");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        let m = Manifest::read_from(file).with_context(|| format!("reading {}", path.display()))?;
        if m.id() != *id {
            bail!(
                "{} holds the manifest of {}, not {id}; remove that directory",
                path.display(),
                m.id()
            );
        }
        Ok(Some(m))
    }

    /// The chunks of `id` that are verified and on disk (empty when nothing is).
    pub fn have(&self, id: &AssetId, manifest: &Manifest) -> Result<Bitfield> {
        let path = self.asset_dir(id).join("have");
        match fs::read(&path) {
            Ok(bytes) => Bitfield::from_bytes(manifest.chunk_count(), &bytes).map_err(|e| {
                anyhow::anyhow!("{}: {e}; delete it to start the asset over", path.display())
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Bitfield::new(manifest.chunk_count()))
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// True when every chunk of `id` is in the store and its content file is as it was
    /// when it was completed (same size and modification time). Anything else (say, the
    /// exported copy edited in place) makes the asset go through [`Store::begin`], which
    /// re-hashes it.
    pub fn is_complete(&self, id: &AssetId, manifest: &Manifest) -> Result<bool> {
        if !self.have(id, manifest)?.is_full() {
            return Ok(false);
        }
        let seal = fs::read_to_string(self.asset_dir(id).join("sealed")).unwrap_or_default();
        Ok(matches!(fs::metadata(self.data_path(id)), Ok(meta) if seal_of(&meta) == seal))
    }

    /// The ids of every asset whose manifest the store holds.
    pub fn list(&self) -> Result<Vec<AssetId>> {
        let dir = self.root.join("assets");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            if let Ok(id) = entry.file_name().to_string_lossy().parse::<AssetId>()
                && entry.path().join("manifest.toml").exists()
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Opens an asset for writing: creates its directory, manifest and full-size data file
    /// if needed, takes its lock (one writer at a time), and loads what is already there.
    pub fn begin(&self, manifest: &Manifest) -> Result<Partial> {
        let id = manifest.id();
        let dir = self.asset_dir(&id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => bail!(
                "asset {id} is being written by another process using store {}; wait for it or use another --store",
                self.root.display()
            ),
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
        Ok(Partial {
            id,
            dir,
            data: Arc::new(data),
            have,
            _lock: lock,
        })
    }

    /// Copies a local file into the store, hashes it, and returns its manifest. The copy is
    /// hashed (not the original), so the store holds exactly what the manifest describes.
    pub fn import_file(&self, path: &Path, name: &str, chunk_size: u32) -> Result<Manifest> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp").join(format!(
            "import-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> Result<Manifest> {
            fs::copy(path, &tmp)
                .with_context(|| format!("copying {} into the store", path.display()))?;
            let file = File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
            let manifest = manifest::chunkify(file, name, chunk_size)
                .with_context(|| format!("hashing {}", path.display()))?;
            let id = manifest.id();
            if self.manifest(&id)?.is_some() && self.is_complete(&id, &manifest)? {
                return Ok(manifest);
            }
            let partial = self.begin(&manifest)?;
            fs::rename(&tmp, partial.dir.join("data"))
                .with_context(|| format!("moving {} into the store", tmp.display()))?;
            partial.finish()?;
            Ok(manifest)
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Places a complete asset at `out`: a hard link to the stored content when both are on
    /// one file system, a copy otherwise; either way under a temporary name renamed into
    /// place, so `out` never holds partial content.
    pub fn export(&self, id: &AssetId, out: &Path) -> Result<()> {
        let data = self.data_path(id);
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = out
            .file_name()
            .with_context(|| format!("output path {} names no file", out.display()))?;
        let tmp = dir.join(format!(
            ".{}.swarmcache-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        let result = (|| -> Result<()> {
            if fs::hard_link(&data, &tmp).is_err() {
                fs::copy(&data, &tmp)
                    .with_context(|| format!("copying {} to {}", data.display(), tmp.display()))?;
            }
            fs::rename(&tmp, out)
                .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.with_context(|| format!("writing output {}", out.display()))
    }
}

/// What identifies the content file as the one that was completed: size and mtime.
fn seal_of(meta: &fs::Metadata) -> String {
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    format!("{} {}", meta.len(), mtime.as_nanos())
}

/// An asset open for writing, locked against other writers until dropped.
#[derive(Debug)]
pub struct Partial {
    id: AssetId,
    dir: PathBuf,
    data: Arc<File>,
    have: Bitfield,
    _lock: File,
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
    use std::os::unix::fs::FileExt;

    #[test]
    fn import_then_export_gives_back_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(&src, &bytes).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let m = store.import_file(&src, "src.bin", MIN_CHUNK_SIZE).unwrap();
        assert_eq!(store.list().unwrap(), vec![m.id()]);
        assert!(store.have(&m.id(), &m).unwrap().is_full());
        let out = dir.path().join("out.bin");
        store.export(&m.id(), &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), bytes);
        // Importing the same file again is a no-op that gives the same manifest.
        assert_eq!(
            store.import_file(&src, "src.bin", MIN_CHUNK_SIZE).unwrap(),
            m
        );
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

    #[test]
    fn a_manifest_under_the_wrong_id_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let a = chunkify(&b"a"[..], "a", MIN_CHUNK_SIZE).unwrap();
        let b = chunkify(&b"b"[..], "b", MIN_CHUNK_SIZE).unwrap();
        store.begin(&a).unwrap();
        let wrong = dir.path().join("assets").join(b.id().to_string());
        fs::create_dir_all(&wrong).unwrap();
        fs::copy(
            dir.path()
                .join("assets")
                .join(a.id().to_string())
                .join("manifest.toml"),
            wrong.join("manifest.toml"),
        )
        .unwrap();
        assert!(
            store
                .manifest(&b.id())
                .unwrap_err()
                .to_string()
                .contains("not")
        );
    }
}
