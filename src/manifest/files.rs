//! The file list of a directory asset (PROTOCOL.md, 12.3): which files the chunked byte
//! stream holds, where each starts, and the checks every listed path passes when a manifest
//! is read, so that no path from a manifest can name anything outside the directory it is
//! written into. Pure: no file system here (walking a directory is in [`super::tree`]).
//!
//! A directory asset is its files' bytes concatenated in the list's order (paths sorted
//! bytewise), chunked like any content: a chunk may span several small files, and a file
//! of many chunks starts and ends inside chunks it shares with its neighbours.

use std::collections::HashSet;
use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::MAX_NAME_BYTES;

/// Most files a directory asset may list: bounds the manifest's memory (a file entry costs
/// about 200 bytes parsed) and the checks' time; 65 536 is a large source tree, or 36 hours
/// of 2 s HLS segments.
pub const MAX_FILES: usize = 1 << 16;
/// Longest path in bytes (Linux's `PATH_MAX`), so every listed path can be opened.
pub const MAX_PATH_BYTES: usize = 4096;
/// Most components a path may have: deeper trees are refused rather than risk a writer's
/// recursion or a file system's limit; 32 levels is far beyond real trees.
pub const MAX_DEPTH: usize = 32;
/// The permission bits a file's mode may carry: read, write and execute for owner, group
/// and others. Set-user-id, set-group-id and sticky bits are refused: a download must never
/// create a set-uid program.
pub const MODE_BITS: u32 = 0o777;

/// One file of a directory asset.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FileEntry {
    /// Relative path, components separated by `/`, checked by [`check_path`].
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits (at most [`MODE_BITS`]), as `chmod` takes them.
    pub mode: u32,
    /// Where the file starts in the asset's byte stream: the sum of the sizes before it.
    pub offset: u64,
}

impl FileEntry {
    /// The file's bytes in the asset's byte stream.
    pub fn byte_range(&self) -> Range<u64> {
        self.offset..self.offset + self.size
    }

    /// The chunks holding any byte of this file (empty for an empty file). The first and
    /// last may hold bytes of neighbouring files too.
    pub fn chunk_range(&self, chunk_size: u32) -> Range<u32> {
        if self.size == 0 {
            return 0..0;
        }
        let first = self.offset / chunk_size as u64;
        let last = (self.offset + self.size - 1) / chunk_size as u64;
        first as u32..last as u32 + 1
    }
}

/// Checks that `path` is a safe relative path: not empty, at most [`MAX_PATH_BYTES`] bytes
/// and [`MAX_DEPTH`] components, no leading or trailing `/`, no empty, `.` or `..`
/// component, no component over 255 bytes, and no `\`, NUL or other control character.
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("a listed file has an empty path".into());
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(format!(
            "file path {:?}… is {} bytes long, at most {MAX_PATH_BYTES} allowed",
            path.chars().take(40).collect::<String>(),
            path.len()
        ));
    }
    if let Some(c) = path.chars().find(|&c| c == '\\' || c.is_control()) {
        return Err(format!(
            "file path {path:?} contains {c:?}; paths may not hold `\\`, NUL or control characters"
        ));
    }
    if path.starts_with('/') {
        return Err(format!(
            "file path {path:?} is absolute; listed paths are relative to the asset's directory"
        ));
    }
    let mut depth = 0;
    for part in path.split('/') {
        depth += 1;
        if part.is_empty() {
            return Err(format!(
                "file path {path:?} has an empty component (`//` or a trailing `/`)"
            ));
        }
        if part == "." || part == ".." {
            return Err(format!(
                "file path {path:?} has a {part:?} component, which would step outside its place in the directory"
            ));
        }
        if part.len() > MAX_NAME_BYTES {
            return Err(format!(
                "file path {path:?} has a component of {} bytes, at most {MAX_NAME_BYTES} allowed",
                part.len()
            ));
        }
    }
    if depth > MAX_DEPTH {
        return Err(format!(
            "file path {path:?} is {depth} levels deep, at most {MAX_DEPTH} allowed"
        ));
    }
    Ok(())
}

/// Checks a whole list against the asset's `size`: 1 to [`MAX_FILES`] entries, every path
/// safe, paths strictly in bytewise order (so no duplicates, and one directory always gives
/// one list and one id), no file that is also a directory of another (`a` and `a/b`),
/// modes within [`MODE_BITS`], and each offset the sum of the sizes before it, the sizes
/// adding up to `size`.
pub fn check_files(files: &[FileEntry], size: u64) -> Result<(), String> {
    if files.is_empty() {
        return Err("the manifest's file list is empty; a directory asset lists at least one file (a single-file asset has no `files`)".into());
    }
    if files.len() > MAX_FILES {
        return Err(format!(
            "the manifest lists {} files, more than the {MAX_FILES} allowed",
            files.len()
        ));
    }
    let mut at = 0u64;
    for (i, f) in files.iter().enumerate() {
        check_path(&f.path)?;
        if i > 0 {
            let before = &files[i - 1].path;
            if *before == f.path {
                return Err(format!("file path {:?} is listed twice", f.path));
            }
            if before.as_bytes() > f.path.as_bytes() {
                return Err(format!(
                    "file path {:?} is listed after {before:?}; paths must be in bytewise order",
                    f.path
                ));
            }
        }
        if f.mode & !MODE_BITS != 0 {
            return Err(format!(
                "file {:?} has mode {:o}; only the permission bits {MODE_BITS:o} are allowed (no set-uid, set-gid or sticky)",
                f.path, f.mode
            ));
        }
        if f.offset != at {
            return Err(format!(
                "file {:?} starts at offset {}, but the files before it end at {at}",
                f.path, f.offset
            ));
        }
        at = at
            .checked_add(f.size)
            .ok_or_else(|| format!("file {:?}: the sizes overflow", f.path))?;
    }
    if at != size {
        return Err(format!(
            "the listed files hold {at} bytes, but the manifest's size is {size}"
        ));
    }
    let paths: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    for f in files {
        for (i, _) in f.path.match_indices('/') {
            let dir = &f.path[..i];
            if paths.contains(dir) {
                return Err(format!(
                    "{dir:?} is listed as a file and is also the directory of {:?}",
                    f.path
                ));
            }
        }
    }
    Ok(())
}

/// Entries for `(path, size, mode)` triples in order, their offsets computed.
pub fn with_offsets(list: impl IntoIterator<Item = (String, u64, u32)>) -> Vec<FileEntry> {
    let mut at = 0u64;
    list.into_iter()
        .map(|(path, size, mode)| {
            let entry = FileEntry {
                path,
                size,
                mode,
                offset: at,
            };
            at = at.saturating_add(size);
            entry
        })
        .collect()
}

/// One `[[files]]` table of the TOML form.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileToml {
    path: String,
    size: u64,
    /// Octal digits, as `chmod` takes them (`"0644"`): decimal 420 would hide the bits.
    mode: String,
    offset: u64,
}

/// The `files` array of tables, for writing.
#[derive(Serialize)]
pub(super) struct FilesToml<'a> {
    pub(super) files: &'a [FileToml],
}

impl FileToml {
    pub(super) fn from_entry(f: &FileEntry) -> FileToml {
        FileToml {
            path: f.path.clone(),
            size: f.size,
            mode: format!("{:04o}", f.mode),
            offset: f.offset,
        }
    }

    pub(super) fn into_entry(self) -> Result<FileEntry, String> {
        let digits = self.mode.strip_prefix("0o").unwrap_or(&self.mode);
        let mode = (!digits.is_empty() && digits.len() <= 4)
            .then(|| u32::from_str_radix(digits, 8).ok())
            .flatten()
            .ok_or_else(|| {
                format!(
                    "file {:?} has mode {:?}; a mode is 1 to 4 octal digits such as \"0644\"",
                    self.path, self.mode
                )
            })?;
        Ok(FileEntry {
            path: self.path,
            size: self.size,
            mode,
            offset: self.offset,
        })
    }
}

/// The file list's part of the canonical encoding (PROTOCOL.md, section 13): for each file
/// its path length (u16), path, size (u64) and mode (u32). Offsets follow from the sizes.
pub(super) fn canonical_parts(files: &[FileEntry], sink: &mut impl FnMut(&[u8])) {
    for f in files {
        // A checked path is at most 4096 bytes.
        sink(&(f.path.len() as u16).to_be_bytes());
        sink(f.path.as_bytes());
        sink(&f.size.to_be_bytes());
        sink(&f.mode.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn list(entries: &[(&str, u64)]) -> Vec<FileEntry> {
        with_offsets(entries.iter().map(|(p, s)| (p.to_string(), *s, 0o644)))
    }

    #[test]
    fn hostile_paths_are_refused_with_the_reason() {
        for (bad, why) in [
            ("", "empty path"),
            ("/etc/passwd", "absolute"),
            ("../x", "\"..\" component"),
            ("a/../../x", "\"..\" component"),
            ("a/./b", "\".\" component"),
            ("a//b", "empty component"),
            ("a/", "empty component"),
            ("a\0b", "'\\0'"),
            ("a\nb", "'\\n'"),
            ("a\u{7f}b", "control"),
            ("a\\..\\b", "'\\\\'"),
        ] {
            let e = check_path(bad).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        let deep = vec!["d"; MAX_DEPTH + 1].join("/");
        assert!(check_path(&deep).unwrap_err().contains("levels deep"));
        assert!(check_path(&vec!["d"; MAX_DEPTH].join("/")).is_ok());
        assert!(
            check_path(&"n".repeat(256))
                .unwrap_err()
                .contains("256 bytes")
        );
        assert!(check_path(&"a/".repeat(2100)).unwrap_err().contains("4096"));
        for good in ["a", ".hidden", "..x", "a/b c/d.mp4", "ünï/cödé ☃", "x..y/z"] {
            assert!(check_path(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn lists_are_checked_whole() {
        assert!(check_files(&list(&[("a", 1), ("b/c", 2)]), 3).is_ok());
        let e = check_files(&[], 0).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = check_files(&list(&[("a", 1), ("a", 2)]), 3).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
        let e = check_files(&list(&[("b", 1), ("a", 2)]), 3).unwrap_err();
        assert!(e.contains("bytewise order"), "{e}");
        let e = check_files(&list(&[("a", 1), ("a-b", 0), ("a/b", 2)]), 3).unwrap_err();
        assert!(e.contains("also the directory"), "{e}");
        let e = check_files(&list(&[("a", 1), ("b", 2)]), 4).unwrap_err();
        assert!(e.contains("hold 3 bytes"), "{e}");
        let mut gap = list(&[("a", 1), ("b", 2)]);
        gap[1].offset = 2;
        assert!(check_files(&gap, 3).unwrap_err().contains("offset 2"));
        let mut suid = list(&[("a", 1)]);
        suid[0].mode = 0o4755;
        assert!(check_files(&suid, 1).unwrap_err().contains("set-uid"));
        let many: Vec<_> = (0..=MAX_FILES).map(|i| (format!("{i:06}"), 0, 0)).collect();
        let e = check_files(&with_offsets(many), 0).unwrap_err();
        assert!(e.contains("65537 files"), "{e}");
        let e = check_files(&list(&[("ok", 1), ("/abs", 2)]), 3).unwrap_err();
        assert!(e.contains("absolute"), "{e}");
    }

    #[test]
    fn chunk_ranges_cover_exactly_the_chunks_a_file_touches() {
        let files = list(&[("a", 10), ("b", 0), ("c", 30), ("d", 1)]);
        let cs = 16;
        assert_eq!(files[0].chunk_range(cs), 0..1);
        assert_eq!(files[1].chunk_range(cs), 0..0);
        assert_eq!(files[2].chunk_range(cs), 0..3, "bytes 10..40");
        assert_eq!(files[3].chunk_range(cs), 2..3, "byte 40");
    }

    #[test]
    fn modes_are_octal_text() {
        let entry = FileEntry {
            path: "x".into(),
            size: 0,
            mode: 0o755,
            offset: 0,
        };
        let t = FileToml::from_entry(&entry);
        assert_eq!(t.mode, "0755");
        assert_eq!(t.into_entry().unwrap(), entry);
        for bad in ["", "9", "0x1ff", "12345", "-1"] {
            let t = FileToml {
                path: "x".into(),
                size: 0,
                mode: bad.into(),
                offset: 0,
            };
            assert!(t.into_entry().unwrap_err().contains("octal"), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn a_path_that_passes_stays_inside_its_directory(path in "[a-z./\\\\\0\n]{0,24}") {
            if check_path(&path).is_ok() {
                let joined = std::path::Path::new("/base").join(&path);
                prop_assert!(joined.starts_with("/base"));
                prop_assert!(std::path::Path::new(&path).components().all(|c| matches!(c, std::path::Component::Normal(_))));
                prop_assert!(!path.contains('\0') && !path.contains('\\'));
            }
        }

        #[test]
        fn file_chunk_ranges_together_cover_every_chunk_once_per_file(
            sizes in proptest::collection::vec(0u64..100, 1..20),
            chunk_size in 1u32..64,
        ) {
            let files = with_offsets(sizes.iter().enumerate().map(|(i, s)| (format!("{i:02}"), *s, 0o600)));
            let total: u64 = sizes.iter().sum();
            prop_assert!(check_files(&files, total).is_ok());
            let chunks = total.div_ceil(chunk_size as u64) as u32;
            for f in &files {
                let r = f.chunk_range(chunk_size);
                prop_assert!(r.end <= chunks);
                for c in r.clone() {
                    let (start, end) = (c as u64 * chunk_size as u64, (c as u64 + 1) * chunk_size as u64);
                    prop_assert!(start < f.offset + f.size && f.offset < end, "chunk {} misses {:?}", c, f);
                }
                if f.size > 0 {
                    prop_assert!(r.start as u64 * (chunk_size as u64) <= f.offset);
                    prop_assert!(r.end as u64 * (chunk_size as u64) >= f.offset + f.size);
                }
            }
        }
    }
}
