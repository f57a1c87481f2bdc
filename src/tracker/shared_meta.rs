//! What a tracker knows besides the swarms, shared through Redis with `--redis`, so that
//! every tracker on one Redis answers alike at once: the book of tags and unpublished
//! assets ([`super::tags::Book`]), the origin URLs of each asset, and the content keys of
//! encrypted assets. Without `--redis` each stays in the data directory as before
//! (`tags.json`, `origin-urls/`, `content-keys/`). With it, Redis is what every tracker
//! answers from, and those files become each tracker's copy of what it read there (the
//! keys among them, mode 0600, as without Redis): copied into a Redis holding none when
//! the tracker starts, and given back when Redis restarted empty (the book when Redis has
//! no version, an asset's URLs and key when Redis lost its manifest or its key), so that
//! Redis's durability is not theirs. A first tracker moving to Redis loses nothing.
//!
//! In Redis:
//! - `sc:tags` (the book as JSON) and `sc:tags:version` (a counter). A tracker keeps the
//!   book it read last with its version; a look costs one `GET` of the version, and a
//!   `MGET` of both only when another tracker changed it. A change is a compare-and-set
//!   (script [`BOOK_PUT`]): applied to the book of the version read, stored only if the
//!   version is still that one, else read and applied again (at most [`BOOK_TRIES`] times).
//!   The book is bounded as on disk (tags, history, unpublished ids: see `tags`).
//! - `sc:origin-urls:ID`: a list, added to by script ([`ORIGIN_ADD`]) with the same checks
//!   and bound ([`MAX_ORIGIN_URLS`]) as the files; every announce's script reads it, so an
//!   announce still costs one round trip.
//! - `sc:content-key:ID`: the key, wrapped. A content key is a secret and Redis is often
//!   reachable by more than the trackers (no TLS, a shared instance, RDB dumps in backups),
//!   so the key is sealed with AES-256-GCM under a wrapping key of the trackers' own, the
//!   file `content-wrap.key` in the key directory (`tracker --keys DIR`, default
//!   `DATA/keys`), which trackers sharing a Redis already share for ticket signing: one
//!   secret to hand out, not two. The asset id is the sealed data's associated data, so a
//!   wrapped key moved to another asset does not open. Redis alone (its dump, its network)
//!   gives no key; a tracker started with another wrapping key says so, naming the file.
//!   A key is fixed by its first publish (`SET NX`) as on disk, never logged, and kept in
//!   memory once opened (keys never change).
//!
//! An unpublish through one tracker removes the manifest from Redis and records the asset in
//! the shared book; another tracker still holding the manifest learns it at its next
//! announce of the asset (the script says Redis no longer holds the manifest, the book says
//! why), drops it and answers 410, as on any other route that reads the book.

use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use anyhow::{Context, Result, bail};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use sha2::{Digest, Sha256};

use super::State;
use super::catalog::Entry;
use super::origin_urls::{Added, OriginUrls};
use super::routes::HttpError;
use super::secrets::{Put, Secrets};
use super::shared::Shared;
use super::tags::Book;
use crate::crypt::ContentKey;
use crate::manifest::AssetId;
use crate::origin_url::MAX_ORIGIN_URLS;
use crate::sync::{LockExt, RwLockExt};

/// The book's compare-and-set. KEYS: 1 the book, 2 its version; ARGV: 1 the version the
/// change was made to ('0': none yet), 2 the new book. Answers the new version, or nil
/// when another tracker changed the book meanwhile.
const BOOK_PUT: &str = "
local v = redis.call('GET', KEYS[2]) or '0'
if v ~= ARGV[1] then return false end
redis.call('SET', KEYS[1], ARGV[2])
return redis.call('INCR', KEYS[2])
";
/// Adds an origin URL. KEYS: 1 the asset's list; ARGV: 1 the URL, 2 the most allowed.
const ORIGIN_ADD: &str = "
local urls = redis.call('LRANGE', KEYS[1], 0, -1)
for _, u in ipairs(urls) do
  if u == ARGV[1] then return 'same' end
end
if #urls >= tonumber(ARGV[2]) then return 'full' end
redis.call('RPUSH', KEYS[1], ARGV[1])
return 'stored'
";
/// Tries of a book change racing other trackers' changes (each lost one waits a little
/// longer, a millisecond more each time: about half a second in all at most). Changes are
/// operators' acts, a few a second; a CI fleet tagging at once still gets through.
const BOOK_TRIES: u32 = 32;
const BOOK: &str = "sc:tags";
const BOOK_VERSION: &str = "sc:tags:version";
/// The wrapping key's file in the key directory.
pub(super) const WRAP_FILE: &str = "content-wrap.key";
/// What a wrapped key starts with: the format, for a later one to be told apart.
const WRAP_FORMAT: &str = "v1";
/// Bound into every wrapped key with the asset id: a sealed key of this purpose only.
const WRAP_CONTEXT: &[u8] = b"swarmcache content key v1 ";

fn origin_urls_key(id: &AssetId) -> String {
    format!("sc:origin-urls:{id}")
}

fn content_key_key(id: &AssetId) -> String {
    format!("sc:content-key:{id}")
}

/// The shared side's memory: the book last read, the wrapping key, the keys opened.
pub(super) struct Meta {
    book: RwLock<(u64, Arc<Book>)>,
    wrap: OnceLock<WrapKey>,
    keys: Mutex<HashMap<AssetId, ContentKey>>,
    book_put: redis::Script,
    origin_add: redis::Script,
}

impl Meta {
    pub(super) fn new() -> Meta {
        Meta {
            book: RwLock::new((0, Arc::new(Book::default()))),
            wrap: OnceLock::new(),
            keys: Mutex::new(HashMap::new()),
            book_put: redis::Script::new(BOOK_PUT),
            origin_add: redis::Script::new(ORIGIN_ADD),
        }
    }
}

/// The trackers' key for wrapping content keys, and its id (to name a mismatch).
pub(super) struct WrapKey {
    key: LessSafeKey,
    id: [u8; 8],
}

impl WrapKey {
    fn from_bytes(bytes: &[u8; 32]) -> WrapKey {
        let mut id = [0u8; 8];
        id.copy_from_slice(&Sha256::digest([&b"swarmcache wrap key id "[..], bytes].concat())[..8]);
        WrapKey {
            key: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, bytes).expect("32 bytes is an AES-256 key"),
            ),
            id,
        }
    }

    /// Reads `DIR/content-wrap.key`, or makes it (mode 0600) when absent. Two trackers
    /// starting at once on a shared directory end with the same key: the file is linked
    /// into place only if none is there yet, and then read back.
    pub(super) fn load_or_create(dir: &Path) -> Result<WrapKey> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let path = dir.join(WRAP_FILE);
        if !path.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| format!("creating {}", dir.display()))?;
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| anyhow::anyhow!("no randomness for a wrapping key: {e}"))?;
            let tmp = dir.join(format!(".{WRAP_FILE}.tmp-{}", std::process::id()));
            let _ = fs::remove_file(&tmp);
            let written = (|| -> std::io::Result<()> {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                file.write_all(format!("{}\n", hex::encode(bytes)).as_bytes())?;
                file.sync_all()?;
                match fs::hard_link(&tmp, &path) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                    _ => crate::fsutil::sync_dir(dir),
                }
            })();
            let _ = fs::remove_file(&tmp);
            written.with_context(|| format!("writing {}", path.display()))?;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut bytes).map_err(|_| {
            anyhow::anyhow!(
                "{} is not a wrapping key (64 hex digits); restore it from another tracker's key directory",
                path.display()
            )
        })?;
        Ok(WrapKey::from_bytes(&bytes))
    }

    /// `key` sealed for `asset`: `v1:KEYID:NONCE:SEALED`, in hex.
    fn wrap(&self, asset: &AssetId, key: &ContentKey) -> Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let mut sealed = hex::decode(key.to_hex()).expect("hex of our own");
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from([WRAP_CONTEXT, &asset.0[..]].concat()),
                &mut sealed,
            )
            .map_err(|_| anyhow::anyhow!("sealing a content key failed"))?;
        Ok(format!(
            "{WRAP_FORMAT}:{}:{}:{}",
            hex::encode(self.id),
            hex::encode(nonce),
            hex::encode(sealed)
        ))
    }

    /// Opens what [`WrapKey::wrap`] made for `asset`; says why not (another wrapping key,
    /// damage, or another asset's key), never what it holds.
    fn unwrap(&self, asset: &AssetId, text: &str) -> Result<ContentKey, String> {
        let parts: Vec<&str> = text.trim().split(':').collect();
        let [WRAP_FORMAT, id, nonce, sealed] = parts[..] else {
            return Err("it is not a wrapped key of this version".into());
        };
        if id != hex::encode(self.id) {
            return Err(format!(
                "it was wrapped with another wrapping key (id {id}, this tracker's is {}): start every tracker on this Redis with the same --keys directory (its {WRAP_FILE})",
                hex::encode(self.id)
            ));
        }
        let mut nonce_bytes = [0u8; NONCE_LEN];
        let mut sealed = hex::decode(sealed).map_err(|_| "it is damaged".to_string())?;
        hex::decode_to_slice(nonce, &mut nonce_bytes).map_err(|_| "it is damaged".to_string())?;
        let plain = self
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from([WRAP_CONTEXT, &asset.0[..]].concat()),
                &mut sealed,
            )
            .map_err(|_| "it does not open: damaged, or another asset's".to_string())?;
        let bytes: [u8; 16] = (&*plain)
            .try_into()
            .map_err(|_| "it holds no key of 16 bytes".to_string())?;
        Ok(ContentKey::from_bytes(bytes))
    }
}

fn failed(e: HttpError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

impl Shared {
    /// Takes the wrapping key (once, at the start).
    pub(super) fn set_wrap_key(&self, key: WrapKey) {
        let _ = self.meta.wrap.set(key);
    }

    /// The shared book and its version (0: Redis holds none): the kept copy if the version
    /// is unchanged.
    pub(super) fn book(&self) -> Result<(u64, Arc<Book>)> {
        let version: Option<u64> = self
            .with(|c| redis::cmd("GET").arg(BOOK_VERSION).query(c))
            .map_err(failed)?;
        let version = version.unwrap_or(0);
        {
            let kept = self.meta.book.read_now();
            if kept.0 == version {
                return Ok((kept.0, Arc::clone(&kept.1)));
            }
        }
        let (version, text): (Option<u64>, Option<String>) = self
            .with(|c| redis::cmd("MGET").arg(BOOK_VERSION).arg(BOOK).query(c))
            .map_err(failed)?;
        let book = match text {
            Some(text) => serde_json::from_str(&text)
                .context("the tags in Redis (sc:tags) are damaged; restore them, or delete sc:tags and sc:tags:version to start with none")?,
            None => Book::default(),
        };
        let fresh = (version.unwrap_or(0), Arc::new(book));
        *self.meta.book.write_now() = fresh.clone();
        Ok(fresh)
    }

    /// Applies `change` to the shared book, racing other trackers by compare-and-set.
    pub(super) fn update_book<T>(&self, mut change: impl FnMut(&mut Book) -> T) -> Result<T> {
        for tries in 0..BOOK_TRIES {
            if tries > 0 {
                std::thread::sleep(std::time::Duration::from_millis(u64::from(tries)));
            }
            let (version, book) = self.book()?;
            let mut next = (*book).clone();
            let out = change(&mut next);
            if next == *book {
                return Ok(out);
            }
            let text = serde_json::to_string(&next).expect("the book always serializes");
            let mut call = self.meta.book_put.prepare_invoke();
            call.key(BOOK).key(BOOK_VERSION).arg(version).arg(text);
            let stored: Option<u64> = self.with(|c| call.invoke(c)).map_err(failed)?;
            if let Some(stored) = stored {
                *self.meta.book.write_now() = (stored, Arc::new(next));
                return Ok(out);
            }
        }
        bail!("the tags in Redis changed under {BOOK_TRIES} tries in a row; retry")
    }

    /// Puts a tracker's own book into a Redis that holds none (its first start with
    /// `--redis`); a Redis holding one keeps it.
    pub(super) fn seed_book(&self, local: &Book) -> Result<()> {
        if *local == Book::default() {
            return Ok(());
        }
        let mut call = self.meta.book_put.prepare_invoke();
        let text = serde_json::to_string(local).expect("the book always serializes");
        call.key(BOOK).key(BOOK_VERSION).arg(0).arg(text);
        let stored: Option<u64> = self.with(|c| call.invoke(c)).map_err(failed)?;
        if stored.is_some() {
            log::info!("tracker: copied this tracker's tags into Redis, which held none");
        }
        Ok(())
    }

    /// Lists `url` for `id` (checked by the caller), for every tracker.
    pub(super) fn add_origin_url(&self, id: &AssetId, url: &str) -> Result<Added, HttpError> {
        let mut call = self.meta.origin_add.prepare_invoke();
        call.key(origin_urls_key(id)).arg(url).arg(MAX_ORIGIN_URLS);
        let answer: String = self.with(|c| call.invoke(c))?;
        Ok(match answer.as_str() {
            "stored" => Added::Stored,
            "full" => Added::Full,
            _ => Added::Same,
        })
    }

    /// The origin URLs of `id`, as every tracker hands them out.
    pub(super) fn origin_urls(&self, id: &AssetId) -> Result<Vec<String>, HttpError> {
        self.with(|c| {
            redis::cmd("LRANGE")
                .arg(origin_urls_key(id))
                .arg(0)
                .arg(MAX_ORIGIN_URLS - 1)
                .query(c)
        })
    }

    /// The Redis key the announce script reads the origin URLs of `id` from.
    pub(super) fn origin_urls_key(id: &AssetId) -> String {
        origin_urls_key(id)
    }

    fn wrap_key(&self) -> Result<&WrapKey, HttpError> {
        self.meta.wrap.get().ok_or_else(|| {
            super::routes::err(500, "this tracker has no wrapping key for content keys")
        })
    }

    /// Holds `key` for `id` in Redis unless another key is held (the first publish wins).
    pub(super) fn put_key(&self, id: &AssetId, key: &ContentKey) -> Result<Put, HttpError> {
        let wrap = self.wrap_key()?;
        let wrapped = wrap
            .wrap(id, key)
            .map_err(|e| super::routes::err(500, format!("{e:#}")))?;
        let set: Option<String> = self.with(|c| {
            redis::cmd("SET")
                .arg(content_key_key(id))
                .arg(wrapped)
                .arg("NX")
                .query(c)
        })?;
        if set.is_some() {
            self.meta.keys.locked().insert(*id, *key);
            return Ok(Put::Stored);
        }
        Ok(match self.key(id)? {
            Some(held) if held == *key => Put::Same,
            _ => Put::Conflict,
        })
    }

    /// The content key of `id` held in Redis, if the asset is encrypted.
    pub(super) fn key(&self, id: &AssetId) -> Result<Option<ContentKey>, HttpError> {
        if let Some(key) = self.meta.keys.locked().get(id) {
            return Ok(Some(*key));
        }
        let wrapped: Option<String> =
            self.with(|c| redis::cmd("GET").arg(content_key_key(id)).query(c))?;
        let Some(wrapped) = wrapped else {
            return Ok(None);
        };
        let key = self.wrap_key()?.unwrap(id, &wrapped).map_err(|why| {
            super::routes::err(
                500,
                format!("the content key of {id} in Redis cannot be used: {why}"),
            )
        })?;
        self.meta.keys.locked().insert(*id, key);
        Ok(Some(key))
    }

    /// Whether Redis still holds the manifest of `id` (an unpublish removes it).
    pub(super) fn holds_manifest(&self, id: &AssetId) -> Result<bool, HttpError> {
        self.with(|c| {
            redis::cmd("EXISTS")
                .arg(format!("sc:manifest:{id}"))
                .query(c)
        })
    }
}

impl Shared {
    /// Copies what this tracker kept in its data directory (tags, origin URLs, content
    /// keys) into Redis, at its start: a Redis holding some already keeps its own (a key
    /// held there for an asset wins over this tracker's, which is reported).
    pub(super) fn seed(&self, tags: &Book, urls: &OriginUrls, secrets: &Secrets) -> Result<()> {
        self.seed_book(tags)?;
        for (id, list) in urls.all() {
            for url in list.iter() {
                self.add_origin_url(&id, url).map_err(failed)?;
            }
        }
        for (id, key) in secrets.all() {
            if self.put_key(&id, &key).map_err(failed)? == Put::Conflict {
                log::warn!(
                    "tracker: the content key of {id} in this tracker's data directory differs from the one in Redis; Redis's is given out"
                );
            }
        }
        Ok(())
    }
}

impl State {
    /// The catalog entry of `id` for a route other than an announce: with `--redis`, also
    /// checked against Redis (an announce's script does that in its own round trip), so an
    /// asset unpublished through another tracker is 410 here too.
    pub(super) fn published(&self, id: &AssetId) -> Result<Arc<Entry>, HttpError> {
        let entry = self.manifest(id)?;
        // A Redis that fails was logged; this tracker's copy answers meanwhile.
        if let Some(shared) = &self.shared
            && matches!(shared.holds_manifest(id), Ok(false))
        {
            self.check_published(shared, id)?;
            self.restore_shared(shared, id)?;
        }
        Ok(entry)
    }

    /// Redis lost what it held of `id`, which this tracker holds (it restarted empty):
    /// given back this tracker's copies of the manifest, its origin URLs and its key.
    pub(super) fn restore_shared(&self, shared: &Shared, id: &AssetId) -> Result<(), HttpError> {
        if let Ok(Some(manifest)) = self.catalog.manifest(id) {
            shared.publish(id, &manifest.to_toml())?;
        }
        for url in self.origin_urls.get(id).iter() {
            shared.add_origin_url(id, url)?;
        }
        if let Some(key) = self.secrets.get(id) {
            shared.put_key(id, &key)?;
        }
        Ok(())
    }

    /// The shared book, kept in this tracker's file too; given back to a Redis that holds
    /// none (it restarted empty) from that file, which also answers while Redis fails
    /// (logged: tags as of the last read).
    pub(super) fn shared_book(&self, shared: &Shared) -> Arc<Book> {
        let (version, book) = match shared.book() {
            Ok(book) => book,
            Err(e) => {
                log::warn!(
                    "tracker: reading the tags from Redis failed ({e:#}); answering from this tracker's copy"
                );
                return self.tags.current();
            }
        };
        if version > 0 {
            self.tags.mirror(&book);
            return book;
        }
        let local = self.tags.current();
        if *local == Book::default() {
            return book;
        }
        if let Err(e) = shared.seed_book(&local) {
            log::warn!("tracker: giving Redis back the tags failed: {e:#}");
            return local;
        }
        shared.book().map_or(local, |(_, b)| b)
    }

    /// Keeps origin URLs listed in Redis in this tracker's files too (a write only for one
    /// it lacks), so that a Redis that lost them gets them back; checked as a file's are.
    pub(super) fn mirror_origin_urls(&self, id: &AssetId, urls: &[String]) {
        let held = self.origin_urls.get(id);
        for url in urls.iter().filter(|u| !held.contains(u)) {
            if crate::origin_url::check(url).is_err() {
                continue;
            }
            if let Err(e) = self.origin_urls.add(id, url) {
                log::warn!("tracker: keeping a copy of an origin URL of {id} failed: {e:#}");
            }
        }
    }

    /// Keeps a content key held in Redis in this tracker's key files too (mode 0600), so
    /// that a Redis that lost it gets it back: Redis's durability is not the keys'.
    pub(super) fn mirror_key(&self, id: &AssetId, key: &ContentKey) {
        match self.secrets.put(id, key) {
            Ok(Put::Conflict) => log::warn!(
                "tracker: the content key of {id} in this tracker's data directory differs from the one in Redis; Redis's is given out"
            ),
            Ok(_) => {}
            Err(e) => {
                log::warn!("tracker: keeping a copy of the content key of {id} failed: {e:#}")
            }
        }
    }

    /// Redis holds no manifest of `id`, which this tracker holds: if the shared book says
    /// it was unpublished (through another tracker), it is dropped here too and refused
    /// (410); otherwise Redis lost it (restarted empty) and it stands.
    pub(super) fn check_published(&self, shared: &Shared, id: &AssetId) -> Result<(), HttpError> {
        if !self.shared_book(shared).is_unpublished(id) {
            return Ok(());
        }
        if let Err(e) = self.catalog.remove(id) {
            log::warn!(
                "tracker: dropping {id}, unpublished through another tracker, failed: {e:#}"
            );
        }
        self.swarms.write_now().remove(id);
        log::info!("tracker: {id} was unpublished through another tracker: dropped here too");
        Err(self.missing(id))
    }

    /// The content key of `id`: this tracker's, or with `--redis` the shared one.
    pub(super) fn key_of(&self, id: &AssetId) -> Result<Option<ContentKey>, HttpError> {
        let Some(shared) = &self.shared else {
            return Ok(self.secrets.get(id));
        };
        match (shared.key(id)?, self.secrets.get(id)) {
            (Some(key), held) => {
                if held.is_none() {
                    self.mirror_key(id, &key);
                }
                Ok(Some(key))
            }
            // Redis lost it (restarted empty): given back.
            (None, Some(key)) => {
                shared.put_key(id, &key)?;
                Ok(Some(key))
            }
            (None, None) => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_key_opens_for_its_asset_only_and_with_its_wrapping_key_only() {
        let wrap = WrapKey::from_bytes(&[7; 32]);
        let (a, b) = (AssetId([1; 32]), AssetId([2; 32]));
        let key = ContentKey::from_bytes([9; 16]);
        let text = wrap.wrap(&a, &key).unwrap();
        assert!(!text.contains(&key.to_hex()), "the key is not in the clear");
        assert_ne!(
            text,
            wrap.wrap(&a, &key).unwrap(),
            "a fresh nonce each time"
        );
        assert_eq!(wrap.unwrap(&a, &text).unwrap(), key);
        assert!(
            wrap.unwrap(&b, &text)
                .unwrap_err()
                .contains("another asset")
        );
        let other = WrapKey::from_bytes(&[8; 32]);
        let e = other.unwrap(&a, &text).unwrap_err();
        assert!(
            e.contains("another wrapping key") && e.contains("--keys"),
            "{e}"
        );
        let mut torn = text.clone();
        torn.pop();
        torn.push(if text.ends_with('0') { '1' } else { '0' });
        assert!(wrap.unwrap(&a, &torn).is_err());
        assert!(wrap.unwrap(&a, "junk").is_err());
        assert!(wrap.unwrap(&a, "v1:zz:zz:zz").is_err());
    }

    #[test]
    fn the_wrapping_key_file_is_made_once_owner_only_and_read_back() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        let first = WrapKey::load_or_create(&keys).unwrap();
        let again = WrapKey::load_or_create(&keys).unwrap();
        assert_eq!(first.id, again.id);
        let mode = fs::metadata(keys.join(WRAP_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let asset = AssetId([3; 32]);
        let key = ContentKey::from_bytes([4; 16]);
        let text = first.wrap(&asset, &key).unwrap();
        assert_eq!(again.unwrap(&asset, &text).unwrap(), key);
        fs::write(keys.join(WRAP_FILE), "nonsense").unwrap();
        let e = format!("{:#}", WrapKey::load_or_create(&keys).err().unwrap());
        assert!(e.contains("not a wrapping key"), "{e}");
    }
}
