//! In-use marks: while some process holds an [`InUse`] for an asset (a shared OS file
//! lock on its `used` file, so it ends with the process however the process ends), no
//! process removes the asset; [`Store::remove`] takes that lock exclusively or leaves the
//! asset alone. Also who holds an asset ([`Store::users`]) and when it was last used.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::{REMOVED_PREFIX, Store, remove_tree};
use crate::backoff::Backoff;
use crate::fsutil::sync_dir;
use crate::manifest::AssetId;

/// The per-asset file whose shared lock marks the asset in use and whose modification
/// time records its last use.
const USED: &str = "used";
/// How long [`Store::hold`] waits for a removal of the same asset by another process to
/// get out of the way. A removal holds its lock only while it renames one directory and
/// syncs two, milliseconds on any disk; ten seconds means that process is stuck.
const HOLD_WAIT: Duration = Duration::from_secs(10);
/// First pause between two attempts to take an asset's lock while it is being removed:
/// a removal takes milliseconds, so the first retries come quickly.
const HOLD_RETRY_FIRST: Duration = Duration::from_millis(1);
/// Longest pause between two attempts to take an asset's lock while it is being removed.
const HOLD_RETRY_MAX: Duration = Duration::from_millis(50);

impl Store {
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
        let mut backoff = Backoff::new(HOLD_RETRY_FIRST, HOLD_RETRY_MAX);
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
            std::thread::sleep(backoff.next_delay());
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
    // The kernel writes /proc/locks a page at a time from a list that other processes'
    // locking changes meanwhile, so one read can miss a line: read it again (a few
    // times at most) when it names no holder.
    (0..LOCKS_READS)
        .map(|_| holders_in(&fs::read_to_string("/proc/locks").unwrap_or_default(), &key))
        .find(|users| !users.is_empty())
        .unwrap_or_default()
}

/// Reads of `/proc/locks` before [`lock_holders`] gives up finding a holder.
const LOCKS_READS: usize = 3;

/// The processes that `locks` (the text of `/proc/locks`) says hold a lock on `key`.
fn holders_in(locks: &str, key: &str) -> Vec<User> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, Manifest, chunkify};
    use std::os::unix::fs::FileExt;
    use std::sync::Arc;

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
