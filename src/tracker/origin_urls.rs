//! The origin URLs of the catalog's assets (web seeds: HTTP(S) servers holding the bytes),
//! beside the catalog: one file per asset with any, `origin-urls/<asset-id>.json` (a JSON
//! list of strings) under the tracker's data directory, written atomically, loaded into
//! memory at start. They are not in the manifest: the asset id is the hash of the content's
//! description, and where the content can be fetched from changes without it changing.
//!
//! A URL is added by a holder of the publish right (`POST /assets/{id}/origins`), checked
//! by [`crate::origin_url::check`], at most [`MAX_ORIGIN_URLS`] per asset; adding one
//! already listed changes nothing. Every announce answer lists them. An unpublished asset
//! keeps its list, as it keeps its content key: publishing it again restores both. With
//! `--redis` the lists live in Redis instead (`shared_meta`), and these files are copied
//! there when the tracker starts.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use anyhow::{Context, Result, bail};

use crate::fsutil::write_atomic;
use crate::manifest::AssetId;
use crate::origin_url::{self, MAX_ORIGIN_URLS};
use crate::sync::RwLockExt;

/// What [`OriginUrls::add`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Added {
    /// The URL is now listed (durably).
    Stored,
    /// It was listed already.
    Same,
    /// The asset lists [`MAX_ORIGIN_URLS`] already; nothing changed.
    Full,
}

/// The durable map of origin URLs, by asset.
#[derive(Debug)]
pub struct OriginUrls {
    dir: PathBuf,
    urls: RwLock<HashMap<AssetId, Arc<[String]>>>,
}

impl OriginUrls {
    /// Opens (creating) `origin-urls/` under `data_dir` and reads every list. A file that
    /// does not parse, or lists a URL that fails the checks, is reported and skipped: its
    /// asset lists none until one is added again.
    pub fn open(data_dir: &Path) -> Result<OriginUrls> {
        let dir = data_dir.join("origin-urls");
        fs::create_dir_all(&dir)
            .with_context(|| format!("creating {} (choose another with --data)", dir.display()))?;
        let mut urls = HashMap::new();
        for (id, path) in super::asset_files(&dir, ".json")? {
            match read_list(&path) {
                Ok(list) => {
                    urls.insert(id, list.into());
                }
                Err(e) => log::warn!(
                    "skipping origin URL file {}: {e:#}; the asset {id} lists no origin URL until one is added again",
                    path.display()
                ),
            }
        }
        Ok(OriginUrls {
            dir,
            urls: RwLock::new(urls),
        })
    }

    /// Lists `url` for `id` (checked by the caller with [`origin_url::check`]); written to
    /// disk before it is reported stored.
    pub fn add(&self, id: &AssetId, url: &str) -> Result<Added> {
        let mut urls = self.urls.write_now();
        let held = urls.get(id).map(|l| l.to_vec()).unwrap_or_default();
        if held.iter().any(|u| u == url) {
            return Ok(Added::Same);
        }
        if held.len() >= MAX_ORIGIN_URLS {
            return Ok(Added::Full);
        }
        let mut list = held;
        list.push(url.to_string());
        // At most 16 KiB, under a lock only adds take (announces read a copy of the Arc).
        let text = serde_json::to_string(&list).expect("strings serialize");
        write_atomic(&self.path(id), text.as_bytes())?;
        urls.insert(*id, list.into());
        Ok(Added::Stored)
    }

    /// The origin URLs of `id` (empty when it lists none).
    pub fn get(&self, id: &AssetId) -> Arc<[String]> {
        self.urls
            .read_now()
            .get(id)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }

    /// Every asset's list (to copy into Redis with `--redis`).
    pub fn all(&self) -> Vec<(AssetId, Arc<[String]>)> {
        let urls = self.urls.read_now();
        urls.iter().map(|(id, l)| (*id, Arc::clone(l))).collect()
    }

    fn path(&self, id: &AssetId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }
}

/// Reads one asset's list, checking every URL as an add would.
fn read_list(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).context("reading it")?;
    let list: Vec<String> = serde_json::from_str(&text).context("not a JSON list of strings")?;
    let checked = origin_url::check_all(list.iter().map(String::as_str))?;
    if checked.is_empty() {
        bail!("it lists no URL");
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> AssetId {
        format!("{n:02x}").repeat(32).parse().unwrap()
    }

    #[test]
    fn urls_survive_a_restart_once_each_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let urls = OriginUrls::open(dir.path()).unwrap();
        assert!(urls.get(&id(1)).is_empty());
        assert_eq!(urls.add(&id(1), "http://a/f").unwrap(), Added::Stored);
        assert_eq!(urls.add(&id(1), "http://a/f").unwrap(), Added::Same);
        assert_eq!(urls.add(&id(1), "https://b/f").unwrap(), Added::Stored);
        for n in 2..MAX_ORIGIN_URLS {
            assert_eq!(
                urls.add(&id(1), &format!("http://c/{n}")).unwrap(),
                Added::Stored
            );
        }
        assert_eq!(urls.add(&id(1), "http://d/full").unwrap(), Added::Full);
        drop(urls);
        let again = OriginUrls::open(dir.path()).unwrap();
        let list = again.get(&id(1));
        assert_eq!(list.len(), MAX_ORIGIN_URLS);
        assert_eq!(&list[..2], ["http://a/f", "https://b/f"]);
        assert!(again.get(&id(2)).is_empty());
    }

    #[test]
    fn a_damaged_or_hostile_file_is_skipped_and_the_rest_loads() {
        let dir = tempfile::tempdir().unwrap();
        let urls = OriginUrls::open(dir.path()).unwrap();
        urls.add(&id(1), "http://a/f").unwrap();
        let files = dir.path().join("origin-urls");
        fs::write(files.join(format!("{}.json", id(2))), "not json").unwrap();
        fs::write(
            files.join(format!("{}.json", id(3))),
            r#"["file:///etc/passwd"]"#,
        )
        .unwrap();
        fs::write(files.join(".tmp-left-by-a-crash"), "x").unwrap();
        let again = OriginUrls::open(dir.path()).unwrap();
        assert_eq!(&again.get(&id(1))[..], ["http://a/f"]);
        assert!(again.get(&id(2)).is_empty());
        assert!(again.get(&id(3)).is_empty());
        assert!(!files.join(".tmp-left-by-a-crash").exists());
    }
}
