//! The tracker's catalog: every published manifest, durable in the tracker's data directory
//! as `manifests/<asset-id>.bin` (the binary form, PROTOCOL.md appendix A.5), written
//! atomically so a crash never leaves half a file.
//!
//! Memory stays near nothing whatever the assets' sizes: the index keeps what announces and
//! listings need (name, size, chunk size, chunk count: a hundred bytes an asset, read from
//! each file's header at start), and the hashes are read when a manifest is asked for,
//! checked against the id, and kept in a small cache ([`CACHE_BYTES`]). A start reads one
//! header per file, so 1 000 assets of 2^20 chunks (32 GiB of hashes) open in milliseconds.
//!
//! Nothing here holds a lock while it reads, writes or hashes: the index's lock is taken
//! for a map lookup or insert, so announces never wait behind a publish. Catalogs of
//! `.toml` files (before this layout) are converted at start: the new file is written
//! first, the old one removed after.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::fsutil::{sync_dir, write_atomic};
use crate::manifest::binary::{self, Header, MAX_HEADER_BYTES};
use crate::manifest::{AssetId, Manifest};
use crate::sync::{LockExt, RwLockExt};

/// Bytes of verified manifests kept in memory: two of the largest (2^20 hashes, 32 MiB
/// each), so a crowd fetching the manifest of one big asset costs one read and one hash,
/// while a catalog of many large assets costs at most this on top of its index.
pub const CACHE_BYTES: usize = 64 << 20;
/// Manifests kept in the cache at most, whatever their size: bounds the eviction scan.
const CACHE_ENTRIES: usize = 1024;
/// Large manifests parsed, built or loaded at once. One is CPU-bound for a few hundred
/// milliseconds (2^20 hashes: 75 MiB of text and 32 MiB of digests), so more than one a
/// core would finish none sooner and only hold more memory.
pub const HEAVY_AT_ONCE: usize = 2;
/// Large requests that may wait for a turn; past this they are told to retry (503). They
/// wait rather than be refused because a refusal comes before the body is read, and a
/// client still sending 80 MiB then meets a closed connection, not the 503 (ten
/// maximum-size publishes at once: four failed that way with two waiting places). With
/// 14, publishes hold at most 16 of the tracker's 32 request threads, the share one client
/// address may hold anyway, and never crowd out announces.
pub const HEAVY_WAITING: usize = 14;
/// Longest wait for a turn: 16 maximum-size parses at two at a time take about 8 s; our
/// client gives a whole request 30 s.
pub const HEAVY_WAIT: Duration = Duration::from_secs(20);
/// Threads reading headers at start. On a cold page cache each read waits for the disk
/// (3.5 ms each, one at a time: 1 000 assets took 3.5 s); the disk serves many at once.
const HEADER_READERS: usize = 16;

/// What the index knows of an asset without its hashes.
#[derive(Debug)]
pub struct Entry {
    /// Asset name (the first one published).
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    chunk_count: u32,
    /// Set when reading the file found it damaged: a publish of the asset then rewrites it.
    damaged: AtomicBool,
}

impl Entry {
    fn new(name: String, size: u64, chunk_size: u32, chunk_count: u32) -> Entry {
        Entry {
            name,
            size,
            chunk_size,
            chunk_count,
            damaged: AtomicBool::new(false),
        }
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }
}

/// What a publish did.
#[derive(Debug, PartialEq, Eq)]
pub struct Published {
    /// The asset id.
    pub id: AssetId,
    /// False when the asset was already in the catalog.
    pub created: bool,
    /// The asset's name in the catalog: the first one published.
    pub name: String,
}

/// The durable set of published manifests. Shared by every request thread as is: it locks
/// inside, briefly.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    index: RwLock<BTreeMap<AssetId, Arc<Entry>>>,
    cache: Mutex<Cache>,
    /// Assets a publish is writing now: a second publish of one waits for the first.
    writing: Mutex<HashSet<AssetId>>,
    written: Condvar,
    heavy: Gate,
}

impl Catalog {
    /// Opens (creating if needed) the catalog under `data_dir`: reads each manifest's header
    /// and converts `.toml` manifests to the binary form. A file that does not parse or
    /// does not match its name is reported and skipped (left in place), so one damaged
    /// file never keeps the tracker down.
    pub fn open(data_dir: &Path) -> Result<Catalog> {
        let dir = data_dir.join("manifests");
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating catalog directory {} (choose another with --data)",
                dir.display()
            )
        })?;
        let mut binaries = Vec::new();
        let mut old = Vec::new();
        for entry in fs::read_dir(&dir).with_context(|| format!("listing {}", dir.display()))? {
            let path = entry
                .with_context(|| format!("listing {}", dir.display()))?
                .path();
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            if name.starts_with('.') {
                // A temporary file left by a crash mid-write: its rename never happened.
                let _ = fs::remove_file(&path);
                continue;
            }
            let (stem, kind) = name.rsplit_once('.').unwrap_or((&name, ""));
            let Ok(id) = stem.parse::<AssetId>() else {
                continue;
            };
            match kind {
                "bin" => binaries.push((id, path)),
                "toml" => old.push((id, path)),
                _ => {}
            }
        }
        let index = read_headers(binaries)
            .into_iter()
            .filter_map(|(id, path, header)| match header {
                Ok(h) => Some((
                    id,
                    Arc::new(Entry::new(h.name, h.size, h.chunk_size, h.chunk_count)),
                )),
                Err(e) => {
                    log::warn!("skipping {}: {e}", path.display());
                    None
                }
            })
            .collect();
        let catalog = Catalog {
            dir,
            index: RwLock::new(index),
            cache: Mutex::new(Cache::default()),
            writing: Mutex::new(HashSet::new()),
            written: Condvar::new(),
            heavy: Gate::new(HEAVY_AT_ONCE, HEAVY_WAITING, HEAVY_WAIT),
        };
        if !old.is_empty() {
            let started = Instant::now();
            let count = old.len();
            for (id, path) in old {
                if let Err(e) = catalog.convert(id, &path) {
                    log::warn!("{e:#}");
                }
            }
            log::info!(
                "converted {count} TOML manifests in {} to the binary form in {:.1} s",
                catalog.dir.display(),
                started.elapsed().as_secs_f64()
            );
        }
        Ok(catalog)
    }

    /// Replaces the TOML manifest `path` by the binary form: the new file is written (or, if
    /// a crash left it written, checked) before the old one is removed.
    fn convert(&self, id: AssetId, path: &Path) -> Result<()> {
        if self.get(&id).is_some() && self.load(&id).is_ok() {
            fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
            return Ok(());
        }
        let manifest = fs::File::open(path)
            .map_err(anyhow::Error::from)
            .and_then(Manifest::read_from)
            .with_context(|| format!("skipping {} (left in place)", path.display()))?;
        if manifest.id() != id {
            anyhow::bail!(
                "skipping {} (left in place): it holds asset {}",
                path.display(),
                manifest.id()
            );
        }
        self.store(&id, &manifest)?;
        self.insert(id, &manifest);
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        sync_dir(&self.dir).with_context(|| format!("syncing {}", self.dir.display()))
    }

    /// Adds a manifest; says whether it was new and the name the catalog keeps. Publishing
    /// twice is harmless, and so is publishing the same content under another name (the
    /// name is not part of the id): the first name published stays, so an asset's name
    /// never changes. Two publishes of one asset at once: the second waits for the first's
    /// write (no other request waits), then finds it published.
    pub fn publish(&self, manifest: Manifest) -> Result<Published> {
        let id = manifest.id();
        let mut writing = self.writing.locked();
        loop {
            // Looked up with `writing` held: a publish inserts into the index before it
            // leaves `writing`, so an id in neither is nobody's to write but ours.
            if let Some(entry) = self.live(&id) {
                return Ok(Published {
                    id,
                    created: false,
                    name: entry.name.clone(),
                });
            }
            if writing.insert(id) {
                break;
            }
            writing = self
                .written
                .wait_timeout(writing, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(writing);
        let _done = Writing { catalog: self, id };
        self.store(&id, &manifest)?;
        let name = manifest.name.clone();
        self.insert(id, &manifest);
        self.cache.locked().insert(id, Arc::new(manifest));
        Ok(Published {
            id,
            created: true,
            name,
        })
    }

    /// Writes the binary file of `id`, durably.
    fn store(&self, id: &AssetId, manifest: &Manifest) -> Result<()> {
        write_atomic(&self.path(id), &binary::encode(manifest))
    }

    /// Puts `id` in the index (replacing a damaged entry): the map insert is all the lock covers.
    fn insert(&self, id: AssetId, manifest: &Manifest) {
        let entry = Entry::new(
            manifest.name.clone(),
            manifest.size,
            manifest.chunk_size,
            manifest.chunk_count(),
        );
        self.index.write_now().insert(id, Arc::new(entry));
    }

    fn live(&self, id: &AssetId) -> Option<Arc<Entry>> {
        self.get(id)
            .filter(|entry| !entry.damaged.load(Ordering::Relaxed))
    }

    /// What the index knows of `id`: a lookup, never behind a publish.
    pub fn get(&self, id: &AssetId) -> Option<Arc<Entry>> {
        self.index.read_now().get(id).cloned()
    }

    /// The manifest of `id` with its hashes: from the cache, or read from its file and
    /// checked against the id. `Ok(None)` when the asset is not in the catalog; an error
    /// names the damaged file and what to do.
    pub fn manifest(&self, id: &AssetId) -> Result<Option<Arc<Manifest>>> {
        if self.get(id).is_none() {
            return Ok(None);
        }
        if let Some(manifest) = self.cache.locked().get(id) {
            return Ok(Some(manifest));
        }
        let manifest = Arc::new(self.load(id)?);
        self.cache.locked().insert(*id, Arc::clone(&manifest));
        Ok(Some(manifest))
    }

    /// Reads and checks the file of `id`; a damaged one marks its entry so that a publish
    /// replaces it.
    fn load(&self, id: &AssetId) -> Result<Manifest> {
        let path = self.path(id);
        let checked = read_manifest(&path).and_then(|m| {
            if m.id() == *id {
                Ok(m)
            } else {
                Err(format!(
                    "its hashes give asset {}, not {id} (changed on disk)",
                    m.id()
                ))
            }
        });
        checked.map_err(|reason| {
            if let Some(entry) = self.get(id) {
                entry.damaged.store(true, Ordering::Relaxed);
            }
            let e = anyhow::anyhow!(
                "manifest file {} is damaged: {reason}; publish the asset's manifest again \
                 (`peer_client publish`) to replace it",
                path.display()
            );
            log::error!("{e}");
            e
        })
    }

    /// Forgets `id` (unpublish): out of the index and the cache, its file removed durably;
    /// whether it was there. A publish of it under way is waited for first, and one that
    /// comes meanwhile waits for this.
    pub fn remove(&self, id: &AssetId) -> Result<bool> {
        let mut writing = self.writing.locked();
        while !writing.insert(*id) {
            writing = self
                .written
                .wait_timeout(writing, Duration::from_secs(1))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(writing);
        let _done = Writing {
            catalog: self,
            id: *id,
        };
        let known = self.index.write_now().remove(id).is_some();
        self.cache.locked().remove(id);
        let path = self.path(id);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
        }
        sync_dir(&self.dir).with_context(|| format!("syncing {}", self.dir.display()))?;
        Ok(known)
    }

    /// Every asset's index entry, ordered by id: a copy, so no lock is held while it is used.
    pub fn entries(&self) -> Vec<(AssetId, Arc<Entry>)> {
        self.index
            .read_now()
            .iter()
            .map(|(id, e)| (*id, Arc::clone(e)))
            .collect()
    }

    /// Every asset id, ordered.
    pub fn ids(&self) -> Vec<AssetId> {
        self.index.read_now().keys().copied().collect()
    }

    /// Number of assets.
    pub fn len(&self) -> usize {
        self.index.read_now().len()
    }

    /// True when nothing is published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The turns of large parses, builds and loads (see [`HEAVY_AT_ONCE`]).
    pub fn heavy(&self) -> &Gate {
        &self.heavy
    }

    fn path(&self, id: &AssetId) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }
}

/// Leaves `writing` when a publish ends, written or failed, and wakes its waiters.
struct Writing<'a> {
    catalog: &'a Catalog,
    id: AssetId,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.catalog.writing.locked().remove(&self.id);
        self.catalog.written.notify_all();
    }
}

/// The headers of `files`, read by [`HEADER_READERS`] threads.
fn read_headers(files: Vec<(AssetId, PathBuf)>) -> Vec<(AssetId, PathBuf, Result<Header, String>)> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let read = Mutex::new(Vec::with_capacity(files.len()));
    std::thread::scope(|s| {
        for _ in 0..HEADER_READERS.min(files.len()) {
            s.spawn(|| {
                while let Some((id, path)) = files.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let header = read_header(path);
                    read.locked().push((*id, path.clone(), header));
                }
            });
        }
    });
    read.into_inner().unwrap_or_else(|e| e.into_inner())
}

/// The header of the binary manifest at `path`, checked against the file's length.
fn read_header(path: &Path) -> Result<Header, String> {
    let file = fs::File::open(path).map_err(|e| format!("opening it failed: {e}"))?;
    let len = file
        .metadata()
        .map_err(|e| format!("reading its length failed: {e}"))?
        .len();
    let mut head = Vec::with_capacity(MAX_HEADER_BYTES);
    file.take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| format!("reading it failed: {e}"))?;
    let header = Header::parse(&head)?;
    if len != header.file_len() {
        return Err(format!(
            "it is {len} bytes long, its header announces {} ({} chunk hashes): truncated or extended",
            header.file_len(),
            header.chunk_count
        ));
    }
    Ok(header)
}

/// The whole binary manifest at `path`, read only once its header says how long it is.
fn read_manifest(path: &Path) -> Result<Manifest, String> {
    let header = read_header(path)?;
    let mut bytes = Vec::with_capacity(header.file_len() as usize);
    fs::File::open(path)
        .and_then(|f| f.take(header.file_len() + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("reading it failed: {e}"))?;
    binary::decode(&bytes)
}

/// Recently read manifests, least recently used out first, bounded in bytes and count.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<AssetId, (Arc<Manifest>, u64)>,
    bytes: usize,
    tick: u64,
}

impl Cache {
    fn cost(manifest: &Manifest) -> usize {
        // A directory asset's list: each entry's path and its 48 bytes (String, size,
        // offset, mode) count too, up to 65 536 paths of 4 KiB.
        let files: usize = manifest.files().iter().map(|f| f.path.len() + 48).sum();
        32 * manifest.chunks.len() + manifest.name.len() + 128 + files
    }

    fn get(&mut self, id: &AssetId) -> Option<Arc<Manifest>> {
        self.tick += 1;
        let tick = self.tick;
        self.entries.get_mut(id).map(|(m, used)| {
            *used = tick;
            Arc::clone(m)
        })
    }

    fn remove(&mut self, id: &AssetId) {
        if let Some((gone, _)) = self.entries.remove(id) {
            self.bytes -= Cache::cost(&gone);
        }
    }

    fn insert(&mut self, id: AssetId, manifest: Arc<Manifest>) {
        let cost = Cache::cost(&manifest);
        if cost > CACHE_BYTES || self.entries.contains_key(&id) {
            return;
        }
        while !self.entries.is_empty()
            && (self.bytes + cost > CACHE_BYTES || self.entries.len() >= CACHE_ENTRIES)
        {
            let oldest = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id)
                .expect("not empty");
            if let Some((gone, _)) = self.entries.remove(&oldest) {
                self.bytes -= Cache::cost(&gone);
            }
        }
        self.tick += 1;
        self.bytes += cost;
        self.entries.insert(id, (manifest, self.tick));
    }
}

/// Turns for heavy work: at most `at_once` run, at most `waiting` wait (each at most
/// `wait`), and the rest are refused at once so they hold no thread.
#[derive(Debug)]
pub struct Gate {
    state: Mutex<(usize, usize)>,
    freed: Condvar,
    at_once: usize,
    waiting: usize,
    wait: Duration,
}

/// A turn of a [`Gate`]; dropping it frees the turn.
#[derive(Debug)]
pub struct Turn<'a>(&'a Gate);

/// No turn: how many run and wait, for the refusal's message.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy {
    /// Turns taken.
    pub running: usize,
    /// Requests waiting for one.
    pub waiting: usize,
}

impl Gate {
    /// A gate of `at_once` turns and `waiting` places to wait, each for at most `wait`.
    pub fn new(at_once: usize, waiting: usize, wait: Duration) -> Gate {
        Gate {
            state: Mutex::new((0, 0)),
            freed: Condvar::new(),
            at_once,
            waiting,
            wait,
        }
    }

    /// Takes a turn, waiting for one if there is room to wait.
    pub fn enter(&self) -> Result<Turn<'_>, Busy> {
        let deadline = Instant::now() + self.wait;
        let mut state = self.state.locked();
        if state.0 < self.at_once {
            state.0 += 1;
            return Ok(Turn(self));
        }
        if state.1 >= self.waiting {
            return Err(Busy {
                running: state.0,
                waiting: state.1,
            });
        }
        state.1 += 1;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if state.0 < self.at_once || left.is_zero() {
                break;
            }
            state = self
                .freed
                .wait_timeout(state, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.1 -= 1;
        if state.0 < self.at_once {
            state.0 += 1;
            Ok(Turn(self))
        } else {
            Err(Busy {
                running: state.0,
                waiting: state.1,
            })
        }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.0.state.locked().0 -= 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, chunkify};

    fn manifest(bytes: &[u8], name: &str) -> Manifest {
        chunkify(bytes, name, MIN_CHUNK_SIZE).unwrap()
    }

    #[test]
    fn published_manifests_survive_a_restart_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(&[7u8; 40_000], "hello.txt");
        {
            let catalog = Catalog::open(dir.path()).unwrap();
            let first = catalog.publish(m.clone()).unwrap();
            assert_eq!((first.id, first.created), (m.id(), true));
            assert!(!catalog.publish(m.clone()).unwrap().created);
        }
        let manifests = dir.path().join("manifests");
        fs::write(manifests.join(".half-written.tmp-1-0"), b"form").unwrap();
        let other = manifest(b"x", "x");
        fs::write(manifests.join(format!("{}.bin", other.id())), b"garbage").unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.ids(), vec![m.id()]);
        assert_eq!(*catalog.manifest(&m.id()).unwrap().unwrap(), m);
        let entry = catalog.get(&m.id()).unwrap();
        assert_eq!(
            (entry.name.as_str(), entry.size, entry.chunk_count()),
            ("hello.txt", 40_000, 3)
        );
        assert!(!manifests.join(".half-written.tmp-1-0").exists());
        assert!(catalog.manifest(&other.id()).unwrap().is_none());
    }

    #[test]
    fn a_removed_asset_is_gone_from_the_index_the_cache_and_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(&[5u8; 40_000], "gone.bin");
        let catalog = Catalog::open(dir.path()).unwrap();
        catalog.publish(m.clone()).unwrap();
        assert!(catalog.manifest(&m.id()).unwrap().is_some(), "cached");
        assert!(catalog.remove(&m.id()).unwrap());
        assert!(catalog.get(&m.id()).is_none());
        assert!(catalog.manifest(&m.id()).unwrap().is_none());
        assert_eq!(catalog.cache.locked().bytes, 0);
        assert!(
            !catalog.remove(&m.id()).unwrap(),
            "removing twice is harmless"
        );
        assert!(Catalog::open(dir.path()).unwrap().get(&m.id()).is_none());
        // Published again, it is back.
        assert!(catalog.publish(m.clone()).unwrap().created);
        assert!(Catalog::open(dir.path()).unwrap().get(&m.id()).is_some());
    }

    #[test]
    fn the_same_content_under_another_name_is_the_same_asset_and_keeps_its_first_name() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let first = manifest(b"same bytes", "dir.tar");
        let second = manifest(b"same bytes", "stdin");
        assert!(catalog.publish(first.clone()).unwrap().created);
        let again = catalog.publish(second).unwrap();
        assert_eq!((again.created, again.name.as_str()), (false, "dir.tar"));
        assert_eq!(catalog.len(), 1);
        drop(catalog);
        let reopened = Catalog::open(dir.path()).unwrap();
        assert_eq!(*reopened.manifest(&first.id()).unwrap().unwrap(), first);
    }

    #[test]
    fn concurrent_publishes_of_one_asset_write_it_once_under_one_name() {
        let dir = tempfile::tempdir().unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        let results: Vec<Published> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let catalog = &catalog;
                    s.spawn(move || {
                        catalog
                            .publish(manifest(&[1u8; 50_000], &format!("n{i}")))
                            .unwrap()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(results.iter().filter(|p| p.created).count(), 1);
        let name = &results.iter().find(|p| p.created).unwrap().name;
        assert!(results.iter().all(|p| &p.name == name));
        drop(catalog);
        let reopened = Catalog::open(dir.path()).unwrap();
        assert_eq!(&reopened.get(&results[0].id).unwrap().name, name);
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it_and_a_publish_repairs_it() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest(&[3u8; 70_000], "big.iso");
        Catalog::open(dir.path())
            .unwrap()
            .publish(m.clone())
            .unwrap();
        let path = dir.path().join("manifests").join(format!("{}.bin", m.id()));
        let mut bytes = fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x55;
        fs::write(&path, &bytes).unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(
            catalog.get(&m.id()).unwrap().chunk_count(),
            5,
            "the header is intact"
        );
        let e = format!("{:#}", catalog.manifest(&m.id()).unwrap_err());
        assert!(
            e.contains(&path.display().to_string()) && e.contains("publish"),
            "{e}"
        );
        assert!(e.contains("changed on disk"), "{e}");
        assert!(catalog.publish(m.clone()).unwrap().created, "rewritten");
        assert_eq!(*catalog.manifest(&m.id()).unwrap().unwrap(), m);
        drop(catalog);
        // Truncated: refused at start, left in place; a publish writes it again.
        fs::write(&path, &bytes[..bytes.len() - 7]).unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert!(catalog.get(&m.id()).is_none());
        assert!(path.exists());
        assert!(catalog.publish(m.clone()).unwrap().created);
        assert_eq!(
            *Catalog::open(dir.path())
                .unwrap()
                .manifest(&m.id())
                .unwrap()
                .unwrap(),
            m
        );
    }

    #[test]
    fn toml_catalogs_are_converted_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let manifests = dir.path().join("manifests");
        fs::create_dir_all(&manifests).unwrap();
        let a = manifest(&[1u8; 30_000], "a");
        let b = manifest(&[2u8; 30_000], "b");
        let c = manifest(&[3u8; 30_000], "c");
        for m in [&a, &b, &c] {
            fs::write(manifests.join(format!("{}.toml", m.id())), m.to_toml()).unwrap();
        }
        // b: a crash after its binary file was written, before the TOML was removed.
        fs::write(
            manifests.join(format!("{}.bin", b.id())),
            binary::encode(&b),
        )
        .unwrap();
        // c: its binary file half written and then damaged; the TOML is the good copy.
        let mut half = binary::encode(&c);
        half[40] ^= 1;
        fs::write(manifests.join(format!("{}.bin", c.id())), &half).unwrap();
        // A TOML file that does not parse is left alone.
        let bad = manifest(b"bad", "bad");
        fs::write(manifests.join(format!("{}.toml", bad.id())), "garbage").unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.len(), 3);
        for m in [&a, &b, &c] {
            assert_eq!(*catalog.manifest(&m.id()).unwrap().unwrap(), *m);
            assert!(!manifests.join(format!("{}.toml", m.id())).exists());
            assert!(manifests.join(format!("{}.bin", m.id())).exists());
        }
        assert!(manifests.join(format!("{}.toml", bad.id())).exists());
        drop(catalog);
        assert_eq!(Catalog::open(dir.path()).unwrap().len(), 3);
    }

    #[test]
    fn the_cache_is_bounded_and_evicts_the_least_recently_used() {
        let mut cache = Cache::default();
        let big = |byte: u8| {
            let chunks = vec![[byte; 32]; 1 << 19];
            let size = (chunks.len() as u64) * MIN_CHUNK_SIZE as u64;
            Arc::new(Manifest::new("x".into(), size, MIN_CHUNK_SIZE, None, chunks).unwrap())
        };
        // Four of 16 MiB do not fit in 64 MiB with their overhead: the fourth evicts the
        // least recently used (the second) and the first, used after each insert, stays.
        let ids: Vec<AssetId> = (0..4).map(|i| AssetId([i; 32])).collect();
        for (i, id) in ids.iter().enumerate() {
            cache.insert(*id, big(i as u8));
            cache.get(&ids[0]);
        }
        assert!(cache.bytes <= CACHE_BYTES, "{}", cache.bytes);
        assert!(cache.get(&ids[0]).is_some(), "recently used stays");
        assert!(cache.get(&ids[3]).is_some(), "newest stays");
        assert!(cache.get(&ids[2]).is_some());
        assert!(cache.get(&ids[1]).is_none(), "least recently used goes");
        assert_eq!(cache.entries.len(), 3);
    }

    #[test]
    fn the_gate_runs_some_lets_few_wait_and_refuses_the_rest() {
        let gate = Gate::new(1, 1, Duration::from_secs(10));
        let first = gate.enter().unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| gate.enter().map(|_| ()));
            let deadline = Instant::now() + Duration::from_secs(10);
            while gate.state.locked().1 == 0 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(
                gate.enter().unwrap_err(),
                Busy {
                    running: 1,
                    waiting: 1
                }
            );
            drop(first);
            assert!(
                waiter.join().unwrap().is_ok(),
                "the waiter got the freed turn"
            );
        });
        let short = Gate::new(1, 1, Duration::from_millis(50));
        let _held = short.enter().unwrap();
        assert_eq!(
            short.enter().unwrap_err(),
            Busy {
                running: 1,
                waiting: 0
            }
        );
    }
}
