//! Crash-safe file writes shared by the store, the catalog and the key files: write a
//! temporary name in the same directory, fsync, rename, fsync the directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` durably and atomically: a temporary file in the same
/// directory, fsync, rename over `path`, fsync the directory. For manifests and the
/// catalog, which must survive a power loss.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_rename(path, bytes, true, None)
}

/// Like [`write_atomic`], for a secret (a content key): the file is created readable and
/// writable by its owner only (mode 0600) before a byte is written, so no moment exists
/// when another user could read it.
pub fn write_atomic_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_rename(path, bytes, true, Some(0o600))
}

/// Replaces `path` atomically without forcing it to disk: a reader, or a process started
/// after any crash of ours, sees the old or the new content, never a mix. For progress
/// records, which are rewritten every second and checked again on resume.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    write_via_rename(path, bytes, false, None)
}

fn write_via_rename(path: &Path, bytes: &[u8], durable: bool, mode: Option<u32>) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
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
        let mut options = fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        if let Some(mode) = mode {
            options.mode(mode);
        }
        let mut file = options.open(&tmp)?;
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
