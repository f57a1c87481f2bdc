//! The content keys of encrypted assets, beside the catalog: one file per asset,
//! `content-keys/<asset-id>.key` under the tracker's data directory (directory mode 0700,
//! files 0600, written atomically and fsynced), loaded into memory at start.
//!
//! A key is fixed by the first publish that brings it: the same key again is idempotent,
//! another key for the same id is refused (409), so no holder of the publish right can
//! swap the key of an asset others already fetch. Keys leave the tracker only through
//! `GET /assets/{id}/key` (routes decide to whom); nothing here logs one, and `ContentKey`'s
//! `Debug` shows no byte of it. With `--redis` the keys live in Redis instead, wrapped
//! (`shared_meta`), and these files are copied there when the tracker starts.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::crypt::ContentKey;
use crate::fsutil::write_atomic_private;
use crate::manifest::AssetId;
use crate::sync::LockExt;

/// What [`Secrets::put`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    /// The key is now held (durably).
    Stored,
    /// The same key was already held.
    Same,
    /// Another key is held for this asset; nothing changed.
    Conflict,
}

/// The durable map of content keys.
#[derive(Debug)]
pub struct Secrets {
    dir: PathBuf,
    keys: Mutex<HashMap<AssetId, ContentKey>>,
}

impl Secrets {
    /// Opens (creating, mode 0700) `content-keys/` under `data_dir` and reads every key. A
    /// file that does not parse is reported and skipped: its asset then has no key, and a
    /// `get` of it fails saying the tracker holds none, rather than the tracker staying down.
    pub fn open(data_dir: &Path) -> Result<Secrets> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let dir = data_dir.join("content-keys");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {} (choose another with --data)", dir.display()))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {} to its owner", dir.display()))?;
        let mut keys = HashMap::new();
        for (id, path) in super::asset_files(&dir, ".key")? {
            let parsed = fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| ContentKey::from_field(text.trim()));
            match parsed {
                Ok(key) => {
                    keys.insert(id, key);
                }
                Err(e) => log::warn!(
                    "skipping content key file {}: {e}; the asset {id} has no key until it is published again with one",
                    path.display()
                ),
            }
        }
        Ok(Secrets {
            dir,
            keys: Mutex::new(keys),
        })
    }

    /// Holds `key` for `id` unless another key is held; written to disk before it is
    /// reported stored. Two publishes racing with different keys: one wins, the other is
    /// told [`Put::Conflict`].
    pub fn put(&self, id: &AssetId, key: &ContentKey) -> Result<Put> {
        let mut keys = self.keys.locked();
        match keys.get(id) {
            Some(held) if held == key => return Ok(Put::Same),
            Some(_) => return Ok(Put::Conflict),
            None => {}
        }
        // A few hundred bytes under a lock only publishes of encrypted assets take.
        write_atomic_private(&self.path(id), format!("{}\n", key.to_field()).as_bytes())?;
        keys.insert(*id, *key);
        Ok(Put::Stored)
    }

    /// The key of `id`, when the asset is encrypted.
    pub fn get(&self, id: &AssetId) -> Option<ContentKey> {
        self.keys.locked().get(id).copied()
    }

    /// Every key held (to copy into Redis with `--redis`, which then gives them out).
    pub fn all(&self) -> Vec<(AssetId, ContentKey)> {
        let keys = self.keys.locked();
        keys.iter().map(|(id, k)| (*id, *k)).collect()
    }

    fn path(&self, id: &AssetId) -> PathBuf {
        self.dir.join(format!("{id}.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn keys_survive_a_restart_in_owner_only_files_and_never_change() {
        let dir = tempfile::tempdir().unwrap();
        let id = AssetId([3; 32]);
        let (a, b) = (
            ContentKey::from_bytes([1; 16]),
            ContentKey::from_bytes([2; 16]),
        );
        let secrets = Secrets::open(dir.path()).unwrap();
        assert_eq!(secrets.get(&id), None);
        assert_eq!(secrets.put(&id, &a).unwrap(), Put::Stored);
        assert_eq!(secrets.put(&id, &a).unwrap(), Put::Same);
        assert_eq!(secrets.put(&id, &b).unwrap(), Put::Conflict);
        let file = dir.path().join("content-keys").join(format!("{id}.key"));
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(&dir.path().join("content-keys")), 0o700);
        fs::write(
            dir.path()
                .join("content-keys")
                .join(format!("{}.key", AssetId([4; 32]))),
            "junk",
        )
        .unwrap();
        let again = Secrets::open(dir.path()).unwrap();
        assert_eq!(again.get(&id), Some(a));
        assert_eq!(again.get(&AssetId([4; 32])), None);
        assert_eq!(again.put(&id, &b).unwrap(), Put::Conflict);
    }
}
