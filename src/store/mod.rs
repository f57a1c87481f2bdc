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

pub mod cache;

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use crate::bitfield::Bitfield;
use crate::fsutil::{replace, sync_dir, write_atomic};
use crate::manifest::{self, AssetId, Manifest};

/// Age after which a file in `tmp/` belongs to an import that died.
const STALE_TMP: Duration = Duration::from_secs(3600);
/// The per-asset file whose shared lock marks the asset in use and whose modification
/// time records its last use.
const USED: &str = "used";
/// Prefix of an asset directory moved into `tmp/` to be deleted.
const REMOVED_PREFIX: &str = "removed-";
/// How long [`Store::hold`] waits for a removal of the same asset by another process to
/// get out of the way. A removal holds its lock only while it renames one directory and
/// syncs two, milliseconds on any disk; ten seconds means that process is stuck.
const HOLD_WAIT: Duration = Duration::from_secs(10);
/// Longest pause between two attempts to take an asset's lock while it is being removed.
const HOLD_RETRY_MAX: Duration = Duration::from_millis(50);

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

    /// Marks `id` in use by this process until the returned guard drops (or the process
    /// ends, however it ends), and records now as its last use. While any process holds
    /// it, [`Store::remove`] in every process leaves the asset alone. The asset need not be
    /// in the store yet: its directory is created, so a download can hold the asset before
    /// it looks for it, and nothing can remove it between the look and the use.
    pub fn hold(&self, id: &AssetId) -> Result<InUse> {
        let held = self.hold_inner(id, true)?;
        held.with_context(|| format!("asset {id} vanished from {}", self.root.display()))
    }

    /// Marks `id` in use like [`Store::hold`] if the store has its manifest, without
    /// counting as a use: for serving the asset to others, which keeps it in the store only
    /// while a transfer runs. `None` when the store does not have the asset.
    pub fn hold_existing(&self, id: &AssetId) -> Result<Option<InUse>> {
        self.hold_inner(id, false)
    }

    fn hold_inner(&self, id: &AssetId, create: bool) -> Result<Option<InUse>> {
        let dir = self.asset_dir(id);
        let path = dir.join(USED);
        let deadline = Instant::now() + HOLD_WAIT;
        let mut pause = Duration::from_millis(1);
        loop {
            if create {
                match fs::create_dir_all(&dir) {
                    Ok(()) => {}
                    // The directory existed, then a removal renamed it away before
                    // create_dir_all could see it was a directory: look again.
                    Err(e)
                        if e.kind() == io::ErrorKind::AlreadyExists
                            && Instant::now() < deadline =>
                    {
                        continue;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| format!("creating {}", dir.display()));
                    }
                }
            } else if !dir.join("manifest.toml").exists() {
                return Ok(None);
            }
            // Not found: the directory was moved away (removed) after the line above.
            let file = match open_used(&path) {
                Ok(file) => Some(file),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                // A store this process may only read (an origin's, mounted read-only) is
                // still served: the mark is taken if the file is there, else skipped.
                Err(e) if read_only(&e) => match File::open(&path) {
                    Ok(file) => Some(file),
                    Err(_) => {
                        return Ok(Some(InUse {
                            id: *id,
                            _file: None,
                        }));
                    }
                },
                Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
            };
            if let Some(file) = file {
                match file.try_lock_shared() {
                    // Locked, but maybe the file of a directory removed while we opened it:
                    // only the file still at `path` protects the asset.
                    Ok(()) if same_file(&file, &path) => {
                        // Not recorded in a store this process may only read.
                        if create
                            && let Err(e) = file.set_modified(SystemTime::now())
                            && !read_only(&e)
                        {
                            return Err(e).with_context(|| {
                                format!("recording the use of {id} in {}", path.display())
                            });
                        }
                        return Ok(Some(InUse {
                            id: *id,
                            _file: Some(file),
                        }));
                    }
                    Ok(()) | Err(TryLockError::WouldBlock) => {}
                    Err(TryLockError::Error(e)) => {
                        return Err(e).with_context(|| format!("locking {}", path.display()));
                    }
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "asset {id} in store {} stayed locked for removal for {HOLD_WAIT:?} by \
                     another process (a peer_client cache rm or gc) that does not finish; stop \
                     it and retry",
                    self.root.display()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(HOLD_RETRY_MAX);
        }
    }

    /// When `id` was last used (held with [`Store::hold`]); for an asset never held, when
    /// its manifest arrived. `None` when the store does not have it.
    pub fn last_used(&self, id: &AssetId) -> Option<SystemTime> {
        let dir = self.asset_dir(id);
        [USED, "manifest.toml"]
            .iter()
            .find_map(|name| fs::metadata(dir.join(name)).and_then(|m| m.modified()).ok())
    }

    /// `None` when no process uses `id`; otherwise the processes that hold it in use, as
    /// far as the OS names them (on Linux, from `/proc/locks`; elsewhere an empty list).
    pub fn users(&self, id: &AssetId) -> Result<Option<Vec<User>>> {
        let path = self.asset_dir(id).join(USED);
        let file = match File::open(&path) {
            Ok(file) => file,
            // Every holder creates the file before it locks it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        // A probe: an exclusive lock is granted only when no one holds a shared one. It is
        // released at once; a holder that tries in that instant retries (see `hold_inner`).
        match file.try_lock() {
            Ok(()) => Ok(None),
            Err(TryLockError::WouldBlock) => Ok(Some(lock_holders(&file))),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("probing the lock on {}", path.display()))
            }
        }
    }

    /// Removes `id` from the store unless a process holds it in use. The directory leaves
    /// `assets/` in one rename (synced) before anything in it is deleted, so a crash at any
    /// point leaves the asset whole or gone, never half there; a later `get` fetches it again.
    pub fn remove(&self, id: &AssetId) -> Result<Removal> {
        let dir = self.asset_dir(id);
        let path = dir.join(USED);
        let file = match open_used(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Absent),
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(Removal::InUse),
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        // Another removal moved the directory away between our open and our lock.
        if !same_file(&file, &path) {
            return Ok(Removal::Absent);
        }
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp");
        let grave = tmp.join(format!(
            "{REMOVED_PREFIX}{id}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::rename(&dir, &grave)
            .with_context(|| format!("moving {} to {}", dir.display(), grave.display()))?;
        for synced in [&self.root.join("assets"), &tmp] {
            sync_dir(synced).with_context(|| format!("syncing {}", synced.display()))?;
        }
        // Holders waiting on the lock now find nothing at `path` and look again.
        drop(file);
        remove_tree(&grave)?;
        Ok(Removal::Removed)
    }

    /// Opens an asset for writing: holds it in use ([`Store::hold`]), creates its manifest
    /// and full-size data file if needed, takes its lock (one writer at a time), and loads
    /// what is already there.
    pub fn begin(&self, manifest: &Manifest) -> Result<Partial> {
        let id = manifest.id();
        let dir = self.asset_dir(&id);
        let in_use = self.hold(&id)?;
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
            _in_use: in_use,
        })
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
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let tmp = self.root.join("tmp").join(format!(
            "import-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| -> Result<(Manifest, InUse)> {
            fs::copy(path, &tmp)
                .with_context(|| format!("copying {} into the store", path.display()))?;
            let file = File::open(&tmp).with_context(|| format!("opening {}", tmp.display()))?;
            let manifest = manifest::chunkify(file, name, chunk_size)
                .with_context(|| format!("hashing {}", path.display()))?;
            let id = manifest.id();
            let in_use = self.hold(&id)?;
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

/// Opens (creating it if needed) an asset's `used` file, writable so its time can be set.
fn open_used(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// True for the errors of a store this process may read but not write.
fn read_only(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
    )
}

/// True when `path` names the open `file` (not another file put in its place since).
fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
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

/// The processes holding a lock on `file`, from `/proc/locks` (Linux; best effort).
fn lock_holders(file: &File) -> Vec<User> {
    let Ok(meta) = file.metadata() else {
        return Vec::new();
    };
    let key = format!(
        "{:02x}:{:02x}:{}",
        rustix::fs::major(meta.dev()),
        rustix::fs::minor(meta.dev()),
        meta.ino()
    );
    let locks = fs::read_to_string("/proc/locks").unwrap_or_default();
    let mut users: Vec<User> = Vec::new();
    for line in locks.lines() {
        // "1: FLOCK  ADVISORY  READ 1234 fd:00:5678 0 EOF"; waiters have "->" after the
        // number and hold nothing yet.
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [_, "FLOCK", _, _, pid, lock_key, ..] = fields[..] else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        // Pid 0: a process in a pid namespace this one cannot see.
        if lock_key != key || pid == 0 || users.iter().any(|u| u.pid == pid) {
            continue;
        }
        let command = fs::read_to_string(format!("/proc/{pid}/comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        users.push(User { pid, command });
    }
    users
}

/// A mark that this process uses an asset: while it lives, no process removes the asset
/// from the store. It is an OS file lock, so it ends with the process, however that ends.
#[derive(Debug)]
pub struct InUse {
    id: AssetId,
    /// The locked `used` file; `None` in a store this process may not write, which it
    /// cannot mark.
    _file: Option<File>,
}

impl InUse {
    /// The asset held.
    pub fn id(&self) -> AssetId {
        self.id
    }
}

/// A process holding an asset in use.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct User {
    /// Its process id.
    pub pid: u32,
    /// Its command name (`peer_server`, `peer_client`), empty when the OS does not say.
    pub command: String,
}

impl std::fmt::Display for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.command.as_str() {
            "" => write!(f, "process {}", self.pid),
            command => write!(f, "{command} (pid {})", self.pid),
        }
    }
}

/// What [`Store::remove`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// The asset was removed.
    Removed,
    /// A process holds the asset in use; it was left alone.
    InUse,
    /// The store did not have the asset (maybe another process just removed it).
    Absent,
}

/// The largest single write into a content file. Large writes have the kernel (6.18, ext4)
/// put the bytes in large page-cache folios, which come from the large free blocks that a
/// VM with free page reporting (this machine) has handed back to its host: every such
/// write then waits for the host to supply memory. Measured here, 1 GiB in 1 MiB writes
/// took 1.5-2.2 s, in 256 KiB writes 0.2 s alone but 1.5 s inside a download (four
/// writers); `peer_client get` of 1 GiB took 1.49 s with 256 KiB pieces, 0.79-1.38 s with
/// 64 KiB, 0.87-0.90 s with 32 KiB and 0.89-1.04 s with 16 KiB (bench/single_source.sh).
pub const WRITE_PIECE: usize = 32 << 10;

/// An asset open for writing, locked against other writers until dropped, and in use.
#[derive(Debug)]
pub struct Partial {
    id: AssetId,
    dir: PathBuf,
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
    use std::os::unix::fs::FileExt;

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

    fn stored(store: &Store, content: &[u8], name: &str) -> Manifest {
        let m = chunkify(content, name, MIN_CHUNK_SIZE).unwrap();
        let partial = store.begin(&m).unwrap();
        partial.data().write_all_at(content, 0).unwrap();
        partial.finish().unwrap();
        m
    }

    #[test]
    fn an_asset_in_use_is_not_removed_and_a_removed_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let m = stored(&store, b"in use", "u");
        let id = m.id();
        let held = store.hold(&id).unwrap();
        assert_eq!(held.id(), id);
        assert_eq!(store.remove(&id).unwrap(), Removal::InUse);
        let users = store.users(&id).unwrap().expect("held, so in use");
        if cfg!(target_os = "linux") {
            assert!(
                users.iter().any(|u| u.pid == std::process::id()),
                "{users:?}"
            );
        }
        // A download in progress counts as in use too.
        drop(held);
        let partial = store.begin(&m).unwrap();
        assert_eq!(store.remove(&id).unwrap(), Removal::InUse);
        drop(partial);
        assert_eq!(store.users(&id).unwrap(), None);
        assert_eq!(store.remove(&id).unwrap(), Removal::Removed);
        assert_eq!(store.remove(&id).unwrap(), Removal::Absent);
        assert!(store.list().unwrap().is_empty());
        assert_eq!(fs::read_dir(dir.path().join("assets")).unwrap().count(), 0);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        assert!(store.hold_existing(&id).unwrap().is_none());
        // Stored again, it is whole again.
        stored(&store, b"in use", "u");
        assert!(store.is_complete(&id, &m).unwrap());
    }

    #[test]
    fn a_hold_never_guards_a_directory_a_removal_moved_away() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = stored(&store, b"raced", "r").id();
        let path = store.asset_dir(&id).join(USED);
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let remover = {
            let (store, done) = (store.clone(), Arc::clone(&done));
            std::thread::spawn(move || {
                (0..100_000)
                    .take_while(|_| !done.load(Ordering::SeqCst))
                    .filter(|_| store.remove(&id).unwrap() == Removal::Removed)
                    .count()
            })
        };
        for _ in 0..300 {
            let held = store.hold(&id).unwrap();
            let file = held._file.as_ref().unwrap();
            assert!(same_file(file, &path), "held a removed directory");
            assert_eq!(store.remove(&id).unwrap(), Removal::InUse);
        }
        done.store(true, Ordering::SeqCst);
        remover.join().unwrap();
    }

    #[test]
    fn a_hold_records_the_use_and_a_crashed_removal_is_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = (
            stored(&store, b"a", "a").id(),
            stored(&store, b"b", "b").id(),
        );
        drop(store.hold(&a).unwrap());
        assert!(store.last_used(&a).unwrap() > store.last_used(&b).unwrap());
        drop(store.hold(&b).unwrap());
        assert!(store.last_used(&b).unwrap() > store.last_used(&a).unwrap());
        // Serving to others holds the asset without counting as a use.
        let before = store.last_used(&a).unwrap();
        drop(store.hold_existing(&a).unwrap().unwrap());
        assert_eq!(store.last_used(&a).unwrap(), before);

        // A removal that crashed after its rename left its directory in tmp/.
        let grave = dir
            .path()
            .join("tmp")
            .join(format!("{REMOVED_PREFIX}{a}-1-0"));
        fs::rename(store.asset_dir(&a), &grave).unwrap();
        // A hold that failed before the manifest arrived left an empty directory.
        let c = chunkify(&b"c"[..], "c", MIN_CHUNK_SIZE).unwrap().id();
        drop(store.hold(&c).unwrap());
        assert_eq!(store.list().unwrap(), vec![b]);
        assert_eq!(store.leftovers().unwrap(), vec![c]);
        assert_eq!(store.clean_tmp().unwrap(), 1);
        assert!(!grave.exists());
    }
}
