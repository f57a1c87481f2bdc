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
//! assets/<asset-id>/encrypted       present when `data` is ciphertext: the cipher's name,
//!                                   never the key (that comes from the tracker each time)
//! assets/<asset-id>/tree            a directory seeded in place (`peer_server --seed DIR`):
//!                                   the directory's absolute path; there is no `data`, the
//!                                   chunks are read from its files ([`Store::source`])
//! assets/<asset-id>/lock            locked by the one process writing the asset
//! assets/<asset-id>/used            shared-locked by every process using the asset; its
//!                                   modification time is when the asset was last used
//! tmp/import-*                      files being imported
//! tmp/removed-*                     assets being deleted (moved here first, in one rename)
//! ```
//!
//! An asset is in use while some process holds an [`InUse`] for it: a shared OS file lock
//! on `used`, so it ends with the process however the process ends. [`Store::remove`]
//! takes that lock exclusively or leaves the asset alone, and removes an asset by renaming
//! its directory into `tmp/` before deleting anything, so a crash part way through never
//! leaves a half-deleted asset in `assets/`.
//!
//! Rooms: this file is the layout (open, paths, manifests, listing, import, export);
//! `locks` the in-use marks and removal; `partial` downloads in progress; [`cache`]
//! what to evict to stay under a size limit.

pub mod cache;
mod locks;
mod partial;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::bitfield::Bitfield;
use crate::crypt::{self, ContentKey};
use crate::fsutil::sync_dir;
use crate::manifest::tree::Tree;
use crate::manifest::{self, AssetId, Manifest};

pub use locks::{InUse, Removal, User};
pub use partial::{Partial, WRITE_PIECE};

/// Age after which a file in `tmp/` belongs to an import that died.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// Prefix of an asset directory moved into `tmp/` to be deleted.
const REMOVED_PREFIX: &str = "removed-";

/// A store directory.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
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
        let store = Store { root };
        // Leftovers are only disk space; failing to reclaim them must not stop a download.
        let _ = store.clean_tmp();
        Ok(store)
    }

    /// Deletes what interrupted work left in `tmp/`: assets whose deletion a crash cut
    /// short (at once: they left `assets/` in one rename, so nothing can be using them)
    /// and imports abandoned for an hour. Returns how many entries went.
    pub fn clean_tmp(&self) -> Result<usize> {
        let dir = self.root.join("tmp");
        let mut cleaned = 0;
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            let path = entry.path();
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(REMOVED_PREFIX)
            {
                remove_tree(&path)?;
                cleaned += 1;
                continue;
            }
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a > STALE_TMP) {
                match fs::remove_file(&path) {
                    Ok(()) => cleaned += 1,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| format!("removing {}", path.display()));
                    }
                }
            }
        }
        Ok(cleaned)
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
    /// A directory seeded in place holds every chunk whatever `have` says (a `get` into
    /// the same store may be filling `data` beside it).
    pub fn have(&self, id: &AssetId, manifest: &Manifest) -> Result<Bitfield> {
        if self.asset_dir(id).join("tree").exists() {
            return Ok(Bitfield::full(manifest.chunk_count()));
        }
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

    /// The ids of asset directories without a manifest: a download held the asset, then
    /// failed before it learned the manifest (say, the tracker did not know the id).
    pub fn leftovers(&self) -> Result<Vec<AssetId>> {
        let dir = self.root.join("assets");
        let mut ids = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
            if let Ok(id) = entry.file_name().to_string_lossy().parse::<AssetId>()
                && !entry.path().join("manifest.toml").exists()
            {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Records that the content of `id` is ciphertext, so that no output of it is ever made
    /// without its key (a `get` without a tracker is refused, not handed ciphertext).
    pub fn mark_encrypted(&self, id: &AssetId) -> Result<()> {
        let dir = self.asset_dir(id);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        crate::fsutil::write_atomic(
            &dir.join("encrypted"),
            format!("{}\n", crypt::CIPHER).as_bytes(),
        )
    }

    /// Whether the content of `id` is recorded as ciphertext ([`Store::mark_encrypted`]).
    pub fn is_encrypted(&self, id: &AssetId) -> bool {
        self.asset_dir(id).join("encrypted").exists()
    }

    /// Seeds the directory `root` in place: hashes its files into a directory asset's
    /// manifest and records the directory (`tree`) with every chunk held, without copying a
    /// byte: [`Store::source`] reads the chunks from the files themselves. The asset is
    /// held in use. An asset the store already holds complete as a content file is served
    /// from that file instead.
    pub fn seed_tree(&self, root: &Path, name: &str, chunk_size: u32) -> Result<(Manifest, InUse)> {
        let root = fs::canonicalize(root)
            .with_context(|| format!("resolving directory {}", root.display()))?;
        let manifest = manifest::tree::chunkify_dir(&root, name, chunk_size, false)?;
        let id = manifest.id();
        let in_use = self.hold(&id)?;
        if self.manifest(&id)?.is_some() && self.is_complete(&id, &manifest)? {
            return Ok((manifest, in_use));
        }
        let dir = self.asset_dir(&id);
        let path = root.to_str().with_context(|| {
            format!("directory {} has a path that is not UTF-8", root.display())
        })?;
        crate::fsutil::write_atomic(&dir.join("tree"), format!("{path}\n").as_bytes())?;
        if self.manifest(&id)?.is_none() {
            crate::fsutil::write_atomic(&dir.join("manifest.toml"), manifest.to_toml().as_bytes())?;
        }
        crate::fsutil::replace(
            &dir.join("have"),
            crate::bitfield::Bitfield::full(manifest.chunk_count()).as_bytes(),
        )?;
        Ok((manifest, in_use))
    }

    /// The directory an asset is seeded from in place ([`Store::seed_tree`]), if it is.
    pub fn tree(&self, id: &AssetId, manifest: &Manifest) -> Result<Option<Tree>> {
        let path = self.asset_dir(id).join("tree");
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(Tree::new(
                Path::new(text.trim_end_matches('\n')),
                manifest.files().to_vec(),
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Where the bytes of `id` are read from: its content file, or the directory it is
    /// seeded from in place.
    pub fn source(&self, id: &AssetId, manifest: &Manifest) -> Result<Source> {
        if let Some(tree) = self.tree(id, manifest)? {
            return Ok(Source::Tree(tree));
        }
        let path = self.data_path(id);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(Source::File(file))
    }

    /// Copies a local file into the store, hashes it, and returns its manifest, with the
    /// asset held in use (and its use recorded). The copy is hashed (not the original), so
    /// the store holds exactly what the manifest describes.
    pub fn import_file(
        &self,
        path: &Path,
        name: &str,
        chunk_size: u32,
    ) -> Result<(Manifest, InUse)> {
        self.import(path, name, chunk_size, None)
    }

    /// Like [`Store::import_file`], encrypting the file with `key` on the way in: the store
    /// never holds a byte of the plaintext, and the manifest (so the asset id) is over the
    /// ciphertext. The asset is marked encrypted.
    pub fn import_encrypted(
        &self,
        path: &Path,
        name: &str,
        chunk_size: u32,
        key: &ContentKey,
    ) -> Result<(Manifest, InUse)> {
        self.import(path, name, chunk_size, Some(key))
    }

    fn import(
        &self,
        path: &Path,
        name: &str,
        chunk_size: u32,
        key: Option<&ContentKey>,
    ) -> Result<(Manifest, InUse)> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp").join(format!(
            "import-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> Result<(Manifest, InUse)> {
            match key {
                None => {
                    fs::copy(path, &tmp)
                        .with_context(|| format!("copying {} into the store", path.display()))?;
                }
                Some(key) => encrypt_into(path, &tmp, key, chunk_size)?,
            }
            let file = File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
            let manifest = manifest::chunkify(file, name, chunk_size)
                .with_context(|| format!("hashing {}", path.display()))?;
            let id = manifest.id();
            let in_use = self.hold(&id)?;
            if key.is_some() {
                self.mark_encrypted(&id)?;
            }
            if self.manifest(&id)?.is_some() && self.is_complete(&id, &manifest)? {
                return Ok((manifest, in_use));
            }
            let partial = self.begin(&manifest)?;
            fs::rename(&tmp, partial.dir.join("data"))
                .with_context(|| format!("moving {} into the store", tmp.display()))?;
            partial.finish()?;
            Ok((manifest, in_use))
        })();
        let _ = fs::remove_file(&tmp);
        result
    }

    /// Places a complete asset at `out`: a copy (never a hard link: the output must not
    /// share its inode with the store, or editing it would change what the store serves)
    /// under a temporary name renamed into place, so `out` never holds partial content.
    /// `std::fs::copy` is `copy_file_range`, which clones on file systems that can (btrfs,
    /// XFS) and copies in the kernel elsewhere. The bytes are the store's: an encrypted
    /// asset's ciphertext (a `get` decrypts its outputs through [`crate::crypt`]).
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
            fs::copy(&data, &tmp)
                .with_context(|| format!("copying {} to {}", data.display(), tmp.display()))?;
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

/// Where an asset's bytes are read from ([`Store::source`]).
#[derive(Debug)]
pub enum Source {
    /// The store's content file (`data`), which holds what `have` says.
    File(File),
    /// A directory seeded in place: its files may have changed since they were hashed, so
    /// every chunk read from it is checked against the manifest before it is used.
    Tree(Tree),
}

impl Source {
    /// Fills `buf` with the asset's bytes from `offset`. Bytes of a [`Source::Tree`] are
    /// the user's files as they are now: check whole chunks against the manifest before
    /// trusting them.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt as _;
        match self {
            Source::File(file) => file.read_exact_at(buf, offset).with_context(|| {
                format!(
                    "reading {} bytes at {offset} of the store's copy",
                    buf.len()
                )
            }),
            Source::Tree(tree) => tree.read_at(buf, offset),
        }
    }
}

/// Writes `path` encrypted with `key` to `tmp` (a new file), through a buffer of one piece.
fn encrypt_into(path: &Path, tmp: &Path, key: &ContentKey, chunk_size: u32) -> Result<()> {
    let mut from = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let to = File::create(tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let mut sealed = crypt::Encrypting::new(io::BufWriter::new(to), *key, chunk_size);
    io::copy(&mut from, &mut sealed)
        .and_then(|_| sealed.into_inner())
        .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
        .with_context(|| format!("encrypting {} into {}", path.display(), tmp.display()))?;
    Ok(())
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

/// Deletes a directory tree; one already gone (another process cleaning up) is fine.
fn remove_tree(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("deleting {}", path.display()))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, chunkify};

    #[test]
    fn import_then_export_gives_back_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(&src, &bytes).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let (m, _held) = store.import_file(&src, "src.bin", MIN_CHUNK_SIZE).unwrap();
        assert_eq!(store.list().unwrap(), vec![m.id()]);
        assert!(store.have(&m.id(), &m).unwrap().is_full());
        let out = dir.path().join("out.bin");
        store.export(&m.id(), &out).unwrap();
        assert_eq!(fs::read(&out).unwrap(), bytes);
        // Importing the same file again is a no-op that gives the same manifest.
        assert_eq!(
            store
                .import_file(&src, "src.bin", MIN_CHUNK_SIZE)
                .unwrap()
                .0,
            m
        );
    }

    #[test]
    fn an_encrypted_import_holds_ciphertext_only_and_is_marked() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src.bin");
        let bytes = b"plain words ".repeat(10_000);
        fs::write(&src, &bytes).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let key = ContentKey::from_bytes([5; 16]);
        let (m, _held) = store
            .import_encrypted(&src, "src.bin", MIN_CHUNK_SIZE, &key)
            .unwrap();
        assert!(store.is_encrypted(&m.id()));
        let data = fs::read(store.data_path(&m.id())).unwrap();
        assert_eq!(data.len(), bytes.len());
        assert!(!data.windows(12).any(|w| w == b"plain words "));
        assert_eq!(m, chunkify(&data[..], "src.bin", MIN_CHUNK_SIZE).unwrap());
        let mut back = data.clone();
        crypt::apply_range(&key, MIN_CHUNK_SIZE, 0, &mut back);
        assert_eq!(back, bytes);
        let (plain, _held) = store.import_file(&src, "src.bin", MIN_CHUNK_SIZE).unwrap();
        assert_ne!(plain.id(), m.id());
        assert!(!store.is_encrypted(&plain.id()));
    }

    #[test]
    fn a_directory_is_seeded_in_place_and_read_from_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("tree");
        fs::create_dir_all(root.join("sub")).unwrap();
        fs::write(root.join("a"), b"hello ").unwrap();
        fs::write(root.join("sub/b"), vec![7u8; 70_000]).unwrap();
        let store = Store::open(dir.path().join("store")).unwrap();
        let (m, _held) = store.seed_tree(&root, "tree", MIN_CHUNK_SIZE).unwrap();
        assert!(m.is_directory());
        assert!(!store.data_path(&m.id()).exists(), "no copy of the bytes");
        assert!(store.have(&m.id(), &m).unwrap().is_full());
        let source = store.source(&m.id(), &m).unwrap();
        assert!(matches!(source, Source::Tree(_)));
        let mut buf = vec![0u8; 10];
        source.read_at(&mut buf, 2).unwrap();
        assert_eq!(&buf, b"llo \x07\x07\x07\x07\x07\x07");
        // Removing the asset leaves the directory alone.
        drop(_held);
        store.remove(&m.id()).unwrap();
        assert_eq!(fs::read(root.join("a")).unwrap(), b"hello ");
        assert!(store.list().unwrap().is_empty());
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
