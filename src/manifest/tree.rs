//! A directory on disk as a directory asset: listing its files ([`scan`]), hashing their
//! concatenated bytes ([`chunkify_dir`]), and reading any range of that byte stream from the
//! files themselves ([`Tree::read_at`]), so a seeded directory is served in place without a
//! tar copy.
//!
//! Symbolic links are refused, not listed or followed: a listed link would let a manifest
//! make a writer create a link and then write "inside" it (a link `out -> /etc` and a file
//! `out/passwd`), and a followed one would make the asset depend on what lies outside the
//! directory (or loop). The message says to copy with `cp -rL` to resolve them. Other
//! special files (fifos, sockets, devices) are refused too. Empty directories carry no
//! bytes and are not listed (as in git): a tree written out has the directories its files
//! need.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use super::files::{FileEntry, MAX_DEPTH, MAX_FILES, check_files, with_offsets};
use super::{Manifest, VerifyReport, check_name, hash_stream, verify};

/// Lists the regular files under `root`, sorted bytewise by relative path, with their sizes,
/// permission bits and offsets; refuses symbolic links, special files, names that are not
/// UTF-8 or fail [`super::check_path`], more than [`MAX_FILES`] files and more than
/// [`MAX_DEPTH`] levels, and a directory without any file.
pub fn scan(root: &Path) -> Result<Vec<FileEntry>> {
    let mut found = Vec::new();
    walk(root, root, 0, &mut found)?;
    if found.is_empty() {
        bail!(
            "directory {} holds no file; a directory asset needs at least one",
            root.display()
        );
    }
    found.sort_by(|a: &(String, u64, u32), b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let files = with_offsets(found);
    let size = files.last().map_or(0, |f| f.offset + f.size);
    check_files(&files, size).map_err(|e| anyhow::anyhow!("directory {}: {e}", root.display()))?;
    Ok(files)
}

fn walk(root: &Path, dir: &Path, depth: usize, out: &mut Vec<(String, u64, u32)>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        let meta =
            fs::symlink_metadata(&path).with_context(|| format!("reading {}", path.display()))?;
        let kind = meta.file_type();
        if kind.is_symlink() {
            bail!(
                "{} is a symbolic link; directory assets hold regular files only (copy the tree with `cp -rL` to replace links with what they point to)",
                path.display()
            );
        }
        let rel = path
            .strip_prefix(root)
            .expect("walked under root")
            .to_str()
            .with_context(|| {
                format!(
                    "{} has a name that is not UTF-8; rename it to ship the directory",
                    path.display()
                )
            })?
            .to_string();
        if kind.is_dir() {
            if depth + 2 > MAX_DEPTH {
                bail!(
                    "{} is more than {MAX_DEPTH} levels deep; directory assets are bounded in depth",
                    path.display()
                );
            }
            walk(root, &path, depth + 1, out)?;
        } else if kind.is_file() {
            if out.len() >= MAX_FILES {
                bail!(
                    "{} holds more than {MAX_FILES} files; ship it as several assets or a tar",
                    root.display()
                );
            }
            out.push((
                rel,
                meta.len(),
                meta.permissions().mode() & super::files::MODE_BITS,
            ));
        } else {
            bail!(
                "{} is not a regular file or directory (a fifo, socket or device); directory assets hold regular files only",
                path.display()
            );
        }
    }
    Ok(())
}

/// Hashes the directory `root` into the manifest of a directory asset named `name`, with
/// the whole-content SHA-256 when `whole`. A file that changes size while it is read makes
/// this fail rather than describe bytes that are not there.
pub fn chunkify_dir(root: &Path, name: &str, chunk_size: u32, whole: bool) -> Result<Manifest> {
    check_name(name).map_err(anyhow::Error::msg)?;
    let files = scan(root)?;
    let reader = Concat {
        tree: Tree::new(root, files.clone()),
        next: 0,
        current: None,
    };
    hash_stream(reader, chunk_size, whole)
        .with_context(|| format!("hashing directory {}", root.display()))?
        .into_manifest(name, chunk_size)?
        .with_files(files)
        .map_err(anyhow::Error::msg)
}

/// Checks the directory `root` against a directory asset's manifest: its file list (paths,
/// sizes, modes) first, then its bytes chunk by chunk. `Err` with the first difference of
/// the lists (a file missing, extra, of another size or mode); else the content's report.
pub fn verify_dir(manifest: &Manifest, root: &Path) -> Result<VerifyReport> {
    if !manifest.is_directory() {
        bail!(
            "the manifest describes a single file, and {} is a directory",
            root.display()
        );
    }
    let found = scan(root)?;
    if let Some(why) = list_difference(manifest.files(), &found) {
        bail!(
            "directory {} differs from the manifest: {why}",
            root.display()
        );
    }
    let reader = Concat {
        tree: Tree::new(root, found),
        next: 0,
        current: None,
    };
    verify(manifest, reader)
}

/// The first difference between a manifest's file list and what a directory holds.
fn list_difference(listed: &[FileEntry], found: &[FileEntry]) -> Option<String> {
    let (mut a, mut b) = (listed.iter().peekable(), found.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return None,
            (Some(l), None) => return Some(format!("{:?} is missing", l.path)),
            (None, Some(f)) => return Some(format!("{:?} is not listed", f.path)),
            (Some(l), Some(f)) => match l.path.as_bytes().cmp(f.path.as_bytes()) {
                std::cmp::Ordering::Less => return Some(format!("{:?} is missing", l.path)),
                std::cmp::Ordering::Greater => {
                    return Some(format!("{:?} is not listed", f.path));
                }
                std::cmp::Ordering::Equal if l.size != f.size => {
                    return Some(format!(
                        "{:?} is {} bytes, listed as {}",
                        f.path, f.size, l.size
                    ));
                }
                std::cmp::Ordering::Equal if l.mode != f.mode => {
                    return Some(format!(
                        "{:?} has mode {:04o}, listed as {:04o}",
                        f.path, f.mode, l.mode
                    ));
                }
                std::cmp::Ordering::Equal => {
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// A directory's files read as one byte stream, in the list's order.
#[derive(Clone, Debug)]
pub struct Tree {
    root: PathBuf,
    files: Vec<FileEntry>,
}

impl Tree {
    /// The files `files` (a checked list, as a manifest holds) under `root`.
    pub fn new(root: &Path, files: Vec<FileEntry>) -> Tree {
        Tree {
            root: root.to_path_buf(),
            files,
        }
    }

    /// Where a listed file lives on disk.
    pub fn path_of(&self, file: &FileEntry) -> PathBuf {
        self.root.join(&file.path)
    }

    /// The directory the tree is read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Fills `buf` with the stream's bytes from `offset`, reading each file it spans (a
    /// chunk may span many small files). Fails when a file is shorter than listed (changed
    /// since it was hashed: the chunk's hash check catches other changes) or the range
    /// ends past the stream.
    pub fn read_at(&self, mut buf: &mut [u8], mut offset: u64) -> Result<()> {
        // The first file that ends after `offset`: empty files never hold a byte.
        let mut i = self.files.partition_point(|f| f.offset + f.size <= offset);
        while !buf.is_empty() {
            let Some(f) = self.files.get(i) else {
                bail!(
                    "reading {} bytes past the end of directory {}",
                    buf.len(),
                    self.root.display()
                );
            };
            i += 1;
            if f.size == 0 {
                continue;
            }
            let within = offset - f.offset;
            let n = ((f.size - within) as usize).min(buf.len());
            let path = self.path_of(f);
            let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
            file.read_exact_at(&mut buf[..n], within).with_context(|| {
                format!(
                    "reading {} bytes at {within} of {} (listed as {} bytes: changed since it was seeded?)",
                    n,
                    path.display(),
                    f.size
                )
            })?;
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// The tree as a [`Read`], for hashing: each file opened in turn and read for exactly its
/// listed size.
struct Concat {
    tree: Tree,
    next: usize,
    current: Option<(io::Take<File>, PathBuf, u64)>,
}

impl Read for Concat {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some((file, path, size)) = &mut self.current {
                let n = file.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if file.limit() > 0 {
                    return Err(io::Error::other(format!(
                        "{} shrank while it was hashed (listed at {size} bytes); hash it again once it is still",
                        path.display()
                    )));
                }
                let mut more = [0u8; 1];
                if file.get_mut().read(&mut more)? > 0 {
                    return Err(io::Error::other(format!(
                        "{} grew while it was hashed (listed at {size} bytes); hash it again once it is still",
                        path.display()
                    )));
                }
                self.current = None;
            }
            let Some(f) = self.tree.files.get(self.next) else {
                return Ok(0);
            };
            self.next += 1;
            let path = self.tree.path_of(f);
            let file = File::open(&path).map_err(|e| {
                io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
            })?;
            self.current = Some((file.take(f.size), path, f.size));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{MIN_CHUNK_SIZE, chunkify};

    fn sample(dir: &Path) -> Vec<u8> {
        let mut all = Vec::new();
        for (path, len) in [
            ("a.txt", 5usize),
            ("b/c.bin", 40_000),
            ("b/d/empty", 0),
            ("z", 3),
        ] {
            let p = dir.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + path.len()) as u8).collect();
            fs::write(&p, &bytes).unwrap();
            all.extend_from_slice(&bytes);
        }
        fs::set_permissions(dir.join("z"), fs::Permissions::from_mode(0o755)).unwrap();
        all
    }

    #[test]
    fn a_directory_hashes_as_its_files_concatenated_in_order() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        let all = sample(&root);
        let m = chunkify_dir(&root, "tree", MIN_CHUNK_SIZE, false).unwrap();
        let flat = chunkify(&all[..], "tree", MIN_CHUNK_SIZE).unwrap();
        assert_eq!((m.size, &m.chunks), (flat.size, &flat.chunks));
        assert_ne!(m.id(), flat.id(), "the file list is in the id");
        let paths: Vec<_> = m.files().iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.txt", "b/c.bin", "b/d/empty", "z"]);
        assert_eq!(m.file("z").unwrap().mode, 0o755);
        assert_eq!(m.file("b/c.bin").unwrap().offset, 5);
        assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m);
        // Any range reads back across file boundaries.
        let tree = Tree::new(&root, m.files.clone());
        for (at, len) in [(0usize, all.len()), (3, 10), (40_004, 4), (40_005, 3)] {
            let mut buf = vec![0; len];
            tree.read_at(&mut buf, at as u64).unwrap();
            assert_eq!(buf, all[at..at + len], "{at}+{len}");
        }
        assert!(tree.read_at(&mut [0; 2], all.len() as u64 - 1).is_err());
    }

    #[test]
    fn a_directory_verifies_against_its_manifest_or_says_how_it_differs() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        sample(&root);
        let m = chunkify_dir(&root, "tree", MIN_CHUNK_SIZE, true).unwrap();
        assert!(verify_dir(&m, &root).unwrap().ok());
        let mut flipped = fs::read(root.join("b/c.bin")).unwrap();
        flipped[20_000] ^= 1;
        fs::write(root.join("b/c.bin"), &flipped).unwrap();
        let report = verify_dir(&m, &root).unwrap();
        assert_eq!(report.bad_chunks, vec![1]);
        for (change, why) in [
            (
                Box::new(|r: &Path| fs::write(r.join("new"), b"").unwrap()) as Box<dyn Fn(&Path)>,
                "\"new\" is not listed",
            ),
            (
                Box::new(|r: &Path| fs::remove_file(r.join("new")).unwrap()),
                "",
            ),
            (
                Box::new(|r: &Path| fs::write(r.join("z"), b"four").unwrap()),
                "\"z\" is 4 bytes, listed as 3",
            ),
            (
                Box::new(|r: &Path| fs::remove_file(r.join("a.txt")).unwrap()),
                "\"a.txt\" is missing",
            ),
        ] {
            change(&root);
            if why.is_empty() {
                continue;
            }
            let e = format!("{:#}", verify_dir(&m, &root).unwrap_err());
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn links_special_files_and_empty_trees_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        sample(&root);
        std::os::unix::fs::symlink("/etc", root.join("b/etc")).unwrap();
        let e = format!(
            "{:#}",
            chunkify_dir(&root, "t", MIN_CHUNK_SIZE, false).unwrap_err()
        );
        assert!(e.contains("symbolic link") && e.contains("cp -rL"), "{e}");
        let empty = tmp.path().join("empty");
        fs::create_dir_all(empty.join("sub")).unwrap();
        let e = format!("{:#}", scan(&empty).unwrap_err());
        assert!(e.contains("holds no file"), "{e}");
    }

    #[test]
    fn a_file_that_changes_while_hashed_fails_the_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("tree");
        sample(&root);
        let files = scan(&root).unwrap();
        fs::write(root.join("a.txt"), b"longer than before").unwrap();
        let reader = Concat {
            tree: Tree::new(&root, files),
            next: 0,
            current: None,
        };
        let e = format!(
            "{:#}",
            hash_stream(reader, MIN_CHUNK_SIZE, false).unwrap_err()
        );
        assert!(e.contains("grew while it was hashed"), "{e}");
    }
}
