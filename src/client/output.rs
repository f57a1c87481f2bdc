//! Where a `get` puts the asset, decided and opened before a byte is fetched: a regular
//! file is filled under a temporary name beside it and renamed into place once complete;
//! anything else (a character device, FIFO or socket, or a symlink to one) is written in
//! order like `curl -o` does, and never replaced.
//!
//! The output is a copy of the store's content, never a hard link to it: a user who makes
//! a linked output writable and edits it (restoring its mtime) would change what the store
//! serves to peers and what every later `get` returns, and the store's repair would write
//! into the user's file. Of the three ways to keep them apart, a copy made while the
//! download runs costs least here: the verified chunks are copied from the page cache into
//! the output on a thread of their own, overlapped with the network (a reflink needs btrfs
//! or XFS, and ext4 is what this machine and most CI runners have; a seal with ctime and
//! inode would only detect the edit, after the user's file was already the store's). An
//! asset already complete in the store is copied with `std::io::copy`, which is
//! `copy_file_range`: a clone where the file system can, an in-kernel copy elsewhere.
//!
//! A directory asset is written as a tree ([`TreePlacement`]): into a temporary sibling
//! directory, every file and directory fsynced, then renamed into place in one
//! `renameat2`, so the tree appears complete or not at all. An existing directory is never
//! touched unless asked (`--replace`), and then swapped out atomically (`RENAME_EXCHANGE`)
//! before the old tree is deleted.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::crypt::{self, ContentKey};
use crate::failure::Failure;
use crate::fsutil::sync_dir;
use crate::manifest::FileEntry;
use crate::store::WRITE_PIECE;

/// Where the asset goes.
pub(crate) enum Target {
    /// A device, FIFO or socket: written in order while the asset downloads.
    Sink(Box<dyn Write + Send>),
    /// A regular file, placed once complete.
    File(Placement),
}

/// How a regular output file may be placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replace {
    /// Named with `-o`: an existing file is replaced atomically, as `curl -o` and `cp` do.
    Yes,
    /// The default name from the manifest: an existing file is never replaced.
    No,
}

/// Opens the output at `path` before the download starts, so that a missing or read-only
/// directory fails the `get` before a byte is fetched.
pub(crate) fn open(path: &Path, replace: Replace) -> Result<Target> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(Failure::Local.error(format!(
            "output {} is a directory; name a file inside it",
            path.display()
        ))),
        Ok(meta) if meta.file_type().is_socket() => {
            let socket = UnixStream::connect(path)
                .with_context(|| format!("connecting to the socket {}", path.display()))
                .context(Failure::Local.tag(format!("opening output {}", path.display())))?;
            Ok(Target::Sink(Box::new(socket)))
        }
        Ok(meta) if !meta.is_file() => {
            // A device or a FIFO: written through, never truncated nor replaced. Opening a
            // FIFO waits for its reader, as `curl -o` does.
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .with_context(|| format!("opening output {}", path.display()))
                .context(Failure::Local.tag(format!("opening output {}", path.display())))?;
            Ok(Target::Sink(Box::new(file)))
        }
        Ok(_) if replace == Replace::No => Err(refusal(path)),
        _ => Placement::create(path, replace).map(Target::File),
    }
}

fn refusal(path: &Path) -> anyhow::Error {
    let name = path.display();
    Failure::Local.error(format!(
        "refusing to replace {name:?} in the current directory without being asked; pass -o {name:?} to do so"
    ))
}

/// A regular output file being filled under a temporary name in its directory; removed
/// when dropped unless [`Placement::finish`] put it in place, so nothing is ever left under
/// a temporary name.
pub(crate) struct Placement {
    path: PathBuf,
    dir: PathBuf,
    tmp: PathBuf,
    file: File,
    replace: Replace,
    placed: bool,
}

impl Placement {
    fn create(path: &Path, replace: Replace) -> Result<Placement> {
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .with_context(|| format!("output path {} names no file", path.display()))?;
        let local = |what: &str| {
            Failure::Local.error(format!(
                "cannot write output {}: directory {} {what}",
                path.display(),
                dir.display()
            ))
        };
        match fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(local("is not a directory")),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(local("does not exist")),
            Err(e) => {
                return Err(e).with_context(|| format!("looking at directory {}", dir.display()));
            }
        }
        let tmp = dir.join(format!(
            ".{}.swarmcache-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_file(&tmp);
        // Creating the file is the one test of writability that holds for root too, for
        // whom modes do not apply but a read-only mount or an immutable directory does.
        let file = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => file,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                return Err(local("is not writable"));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("creating a file in directory {}", dir.display()))
                    .context(Failure::Local.tag(format!("writing output {}", path.display())));
            }
        };
        Ok(Placement {
            path: path.to_path_buf(),
            dir,
            tmp,
            file,
            replace,
            placed: false,
        })
    }

    /// The final path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file, for the download's in-order copy.
    pub(crate) fn writer(&self) -> Pieces<'_> {
        Pieces(&self.file)
    }

    /// Fills the file from a complete content file in one go; with the key of an encrypted
    /// asset (and its chunk size), decrypting on the way.
    pub(crate) fn copy_from(&self, data: &Path, key: Option<(&ContentKey, u32)>) -> Result<()> {
        let mut from = File::open(data).with_context(|| format!("opening {}", data.display()))?;
        match key {
            None => io::copy(&mut from, &mut &self.file).map(drop),
            Some((key, chunk_size)) => {
                crypt::copy_decrypted(key, chunk_size, &mut from, &mut self.writer()).map(drop)
            }
        }
        .with_context(|| format!("copying {} to {}", data.display(), self.tmp.display()))?;
        Ok(())
    }

    /// Puts the complete file in place under its name, in one rename.
    pub(crate) fn finish(mut self) -> Result<()> {
        match self.replace {
            Replace::Yes => fs::rename(&self.tmp, &self.path).with_context(|| {
                format!("renaming {} to {}", self.tmp.display(), self.path.display())
            })?,
            // A link fails when the name exists, where a rename would replace it: a file that
            // appeared during the download is kept.
            Replace::No => match fs::hard_link(&self.tmp, &self.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(refusal(&self.path));
                }
                // A file system without hard links: the name was free when the get started.
                Err(_) if !self.path.exists() => {
                    fs::rename(&self.tmp, &self.path).with_context(|| {
                        format!("renaming {} to {}", self.tmp.display(), self.path.display())
                    })?
                }
                Err(_) => return Err(refusal(&self.path)),
            },
        }
        self.placed = true;
        if self.replace == Replace::No {
            let _ = fs::remove_file(&self.tmp);
        }
        sync_dir(&self.dir).with_context(|| format!("syncing {}", self.dir.display()))
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        if !self.placed || self.replace == Replace::No {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// A directory asset's tree being written under a temporary name beside its final path;
/// removed when dropped unless [`TreePlacement::finish`] put it in place.
pub(crate) struct TreePlacement {
    path: PathBuf,
    parent: PathBuf,
    tmp: PathBuf,
    replace: bool,
    placed: bool,
}

/// Bytes copied per read while writing a tree's files.
const TREE_PIECE: usize = 1 << 20;

impl TreePlacement {
    /// Checks that `path` may be created (its parent is a writable directory; an existing
    /// `path` only with `replace`, and only a directory) and creates the temporary sibling,
    /// before anything is fetched.
    pub(crate) fn create(path: &Path, replace: bool) -> Result<TreePlacement> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = path
            .file_name()
            .with_context(|| format!("output path {} names no directory", path.display()))?;
        match fs::symlink_metadata(path) {
            Ok(meta) if meta.is_dir() && replace => {}
            Ok(meta) if meta.is_dir() => {
                return Err(Failure::Local.error(format!(
                    "output {} exists; a directory asset is written as a new directory, and an existing one is left alone unless --replace is given (nothing was written)",
                    path.display()
                )));
            }
            Ok(_) => {
                return Err(Failure::Local.error(format!(
                    "output {} exists and is not a directory; this asset is a directory: name a new path",
                    path.display()
                )));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("looking at {}", path.display())),
        }
        let tmp = parent.join(format!(
            ".{}.swarmcache-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))
            .context(Failure::Local.tag(format!(
                "cannot write output {}: directory {} is missing or not writable",
                path.display(),
                parent.display()
            )))?;
        Ok(TreePlacement {
            path: path.to_path_buf(),
            parent,
            tmp,
            replace,
            placed: false,
        })
    }

    /// The final path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `files` (checked paths of the asset's list) into the temporary tree from the
    /// content file `data` (the asset's byte stream), decrypting with the key of an
    /// encrypted asset; each file gets its mode and is fsynced, then every directory is.
    pub(crate) fn write(
        &self,
        files: &[&FileEntry],
        data: &File,
        key: Option<(&ContentKey, u32)>,
    ) -> Result<()> {
        use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
        let mut dirs = std::collections::BTreeSet::new();
        let mut buf = vec![0u8; TREE_PIECE];
        for f in files {
            // Checked when the manifest was read: relative, no `..`, no empty component.
            let path = self.tmp.join(&f.path);
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                let mut d = dir;
                while d != self.tmp && dirs.insert(d.to_path_buf()) {
                    d = d.parent().expect("under the temporary directory");
                }
            }
            let out = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut done = 0u64;
            while done < f.size {
                let n = (f.size - done).min(TREE_PIECE as u64) as usize;
                let at = f.offset + done;
                data.read_exact_at(&mut buf[..n], at)
                    .with_context(|| format!("reading bytes {at}.. of the store's copy"))?;
                if let Some((key, chunk_size)) = key {
                    crypt::apply_range(key, chunk_size, at, &mut buf[..n]);
                }
                Pieces(&out)
                    .write_all(&buf[..n])
                    .with_context(|| format!("writing {}", path.display()))?;
                done += n as u64;
            }
            out.set_permissions(fs::Permissions::from_mode(f.mode))
                .with_context(|| format!("setting the mode of {}", path.display()))?;
            out.sync_all()
                .with_context(|| format!("syncing {}", path.display()))?;
        }
        // Deepest first, so each directory's entry is on disk before its parent's.
        for dir in dirs.iter().rev() {
            sync_dir(dir).with_context(|| format!("syncing {}", dir.display()))?;
        }
        sync_dir(&self.tmp).with_context(|| format!("syncing {}", self.tmp.display()))
    }

    /// Puts the complete tree in place under its name in one rename: refused if the name
    /// appeared meanwhile, or with `replace` exchanged with the existing directory, which
    /// is then deleted.
    pub(crate) fn finish(mut self) -> Result<()> {
        use rustix::fs::{CWD, RenameFlags, renameat_with};
        let exists = self.path.exists();
        let flags = if self.replace && exists {
            RenameFlags::EXCHANGE
        } else {
            RenameFlags::NOREPLACE
        };
        match renameat_with(CWD, &self.tmp, CWD, &self.path, flags) {
            Ok(()) => {}
            Err(rustix::io::Errno::EXIST) => {
                return Err(Failure::Local.error(format!(
                    "output {} appeared while the asset downloaded; it is left alone (the asset stays in the store: run the command again with another -o)",
                    self.path.display()
                )));
            }
            Err(e) => {
                return Err(io::Error::from(e)).with_context(|| {
                    format!("renaming {} to {}", self.tmp.display(), self.path.display())
                });
            }
        }
        self.placed = true;
        sync_dir(&self.parent).with_context(|| format!("syncing {}", self.parent.display()))?;
        if flags == RenameFlags::EXCHANGE {
            // The old tree is at the temporary name now; --replace asked for it to go.
            fs::remove_dir_all(&self.tmp).with_context(|| {
                format!("deleting the replaced tree, now at {}", self.tmp.display())
            })?;
        }
        Ok(())
    }
}

impl Drop for TreePlacement {
    fn drop(&mut self) {
        if !self.placed {
            let _ = fs::remove_dir_all(&self.tmp);
        }
    }
}

/// Writes into a file in pieces of at most [`WRITE_PIECE`] bytes, for the reason given
/// there: one large write into the page cache waits for memory on this machine.
pub(crate) struct Pieces<'a>(&'a File);

impl Write for Pieces<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let len = buf.len().min(WRITE_PIECE);
        self.0.write(&buf[..len])
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        buf.chunks(WRITE_PIECE)
            .try_for_each(|piece| self.0.write_all(piece))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_placement_leaves_no_temporary_file_whether_placed_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out.bin");
        let Target::File(placement) = open(&out, Replace::Yes).unwrap() else {
            panic!("a new path is a regular file");
        };
        placement.writer().write_all(&[7u8; 100_000]).unwrap();
        placement.finish().unwrap();
        assert_eq!(fs::read(&out).unwrap(), vec![7u8; 100_000]);
        let Target::File(dropped) = open(&out, Replace::Yes).unwrap() else {
            panic!("an existing regular file is replaced");
        };
        drop(dropped);
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("out.bin")]);
    }

    #[test]
    fn the_default_name_never_replaces_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("taken");
        fs::write(&out, b"mine").unwrap();
        assert!(open(&out, Replace::No).is_err());
        // A file that appears during the download is kept too.
        fs::remove_file(&out).unwrap();
        let Target::File(placement) = open(&out, Replace::No).unwrap() else {
            panic!("a free name is a regular file");
        };
        fs::write(&out, b"mine").unwrap();
        let error = placement.finish().unwrap_err();
        assert!(error.to_string().contains("-o"), "{error}");
        assert_eq!(fs::read(&out).unwrap(), b"mine");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    fn tree_files() -> Vec<FileEntry> {
        crate::manifest::files::with_offsets([
            ("a/b/c.txt".to_string(), 3, 0o640),
            ("a/empty".to_string(), 0, 0o600),
            ("run.sh".to_string(), 4, 0o755),
        ])
    }

    #[test]
    fn a_tree_is_placed_whole_and_never_over_an_existing_directory() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let data_path = dir.path().join("data");
        fs::write(&data_path, b"abcdefg").unwrap();
        let data = File::open(&data_path).unwrap();
        let files = tree_files();
        let all: Vec<&FileEntry> = files.iter().collect();
        let out = dir.path().join("out");
        let tree = TreePlacement::create(&out, false).unwrap();
        tree.write(&all, &data, None).unwrap();
        assert!(!out.exists(), "nothing at the name before finish");
        tree.finish().unwrap();
        assert_eq!(fs::read(out.join("a/b/c.txt")).unwrap(), b"abc");
        assert_eq!(fs::read(out.join("a/empty")).unwrap(), b"");
        assert_eq!(fs::read(out.join("run.sh")).unwrap(), b"defg");
        let mode = |p: &str| fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!((mode("run.sh"), mode("a/b/c.txt")), (0o755, 0o640));
        // An existing directory is refused before anything is written, and kept.
        let e = TreePlacement::create(&out, false)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("--replace"), "{e}");
        // One that appears during the download is kept too.
        let late = dir.path().join("late");
        let tree = TreePlacement::create(&late, false).unwrap();
        tree.write(&all[..1], &data, None).unwrap();
        fs::create_dir(&late).unwrap();
        fs::write(late.join("mine"), b"mine").unwrap();
        assert!(
            tree.finish()
                .unwrap_err()
                .to_string()
                .contains("left alone")
        );
        assert_eq!(fs::read(late.join("mine")).unwrap(), b"mine");
        // With replace, the old tree goes and the new one takes its place.
        let tree = TreePlacement::create(&late, true).unwrap();
        tree.write(&all[2..], &data, None).unwrap();
        tree.finish().unwrap();
        assert!(!late.join("mine").exists());
        assert_eq!(fs::read(late.join("run.sh")).unwrap(), b"defg");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 3, "no temporary directory left: {names:?}");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let error = open(&dir.path().join("nodir/x"), Replace::Yes)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("nodir does not exist"), "{error}");
    }
}
