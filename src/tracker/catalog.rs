//! The tracker's catalog: every published manifest, durable in the tracker's data directory
//! as `manifests/<asset-id>.toml`, written atomically so a crash never leaves half a file.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::fsutil::write_atomic;
use crate::manifest::{AssetId, Manifest};

/// The durable set of published manifests.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    assets: BTreeMap<AssetId, Arc<Manifest>>,
}

impl Catalog {
    /// Opens (creating if needed) the catalog under `data_dir` and loads every manifest.
    /// A file that does not parse or does not match its name is reported and skipped, so
    /// one damaged file never keeps the tracker down.
    pub fn open(data_dir: &Path) -> Result<Catalog> {
        let dir = data_dir.join("manifests");
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "creating catalog directory {} (choose another with --data)",
                dir.display()
            )
        })?;
        let mut assets = BTreeMap::new();
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
            let Some(id) = name
                .strip_suffix(".toml")
                .and_then(|s| s.parse::<AssetId>().ok())
            else {
                continue;
            };
            let loaded = fs::File::open(&path)
                .map_err(anyhow::Error::from)
                .and_then(Manifest::read_from);
            match loaded {
                Ok(m) if m.id() == id => {
                    assets.insert(id, Arc::new(m));
                }
                Ok(m) => log::warn!("skipping {}: it holds asset {}", path.display(), m.id()),
                Err(e) => log::warn!("skipping {}: {e:#}", path.display()),
            }
        }
        Ok(Catalog { dir, assets })
    }

    /// Adds a manifest; returns its id and whether it was new. Publishing twice is harmless,
    /// and so is publishing the same content under another name (the name is not part of
    /// the id): the first name published stays, so an asset's name never changes.
    pub fn publish(&mut self, manifest: Manifest) -> Result<(AssetId, bool)> {
        let id = manifest.id();
        if self.assets.contains_key(&id) {
            return Ok((id, false));
        }
        write_atomic(
            &self.dir.join(format!("{id}.toml")),
            manifest.to_toml().as_bytes(),
        )?;
        self.assets.insert(id, Arc::new(manifest));
        Ok((id, true))
    }

    /// The manifest of `id`.
    pub fn get(&self, id: &AssetId) -> Option<Arc<Manifest>> {
        self.assets.get(id).cloned()
    }

    /// Every manifest, ordered by id.
    pub fn iter(&self) -> impl Iterator<Item = (&AssetId, &Arc<Manifest>)> {
        self.assets.iter()
    }

    /// Number of assets.
    pub fn len(&self) -> usize {
        self.assets.len()
    }

    /// True when nothing is published.
    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, chunkify};

    #[test]
    fn published_manifests_survive_a_restart_and_junk_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let m = chunkify(&b"hello"[..], "hello.txt", MIN_CHUNK_SIZE).unwrap();
        {
            let mut catalog = Catalog::open(dir.path()).unwrap();
            assert_eq!(catalog.publish(m.clone()).unwrap(), (m.id(), true));
            assert_eq!(catalog.publish(m.clone()).unwrap(), (m.id(), false));
        }
        let manifests = dir.path().join("manifests");
        fs::write(manifests.join(".half-written.tmp-1-0"), b"form").unwrap();
        let other = chunkify(&b"x"[..], "x", MIN_CHUNK_SIZE).unwrap();
        fs::write(manifests.join(format!("{}.toml", other.id())), b"garbage").unwrap();
        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.len(), 1);
        assert_eq!(*catalog.get(&m.id()).unwrap(), m);
        assert!(!manifests.join(".half-written.tmp-1-0").exists());
    }

    #[test]
    fn the_same_content_under_another_name_is_the_same_asset_and_keeps_its_first_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut catalog = Catalog::open(dir.path()).unwrap();
        let first = chunkify(&b"same bytes"[..], "dir.tar", MIN_CHUNK_SIZE).unwrap();
        let second = chunkify(&b"same bytes"[..], "stdin", MIN_CHUNK_SIZE).unwrap();
        assert_eq!(catalog.publish(first.clone()).unwrap(), (first.id(), true));
        assert_eq!(catalog.publish(second).unwrap(), (first.id(), false));
        assert_eq!(catalog.len(), 1);
        assert_eq!(catalog.get(&first.id()).unwrap().name, "dir.tar");
        drop(catalog);
        let reopened = Catalog::open(dir.path()).unwrap();
        assert_eq!(*reopened.get(&first.id()).unwrap(), first);
    }
}
