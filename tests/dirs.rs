//! Directory assets (issue 15): a tree of 200 files seeded in place (no copy in the
//! origin's store) round-trips through `get -o DIR` with its modes; `--file` fetches only
//! the chunks of that file; hostile file lists are refused by the tracker and the client;
//! `-o DIR` onto an existing directory refuses and leaves it alone.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use swarmcache::manifest::Manifest;

use crate::harness::{ServerProc, TrackerProc, get, random_bytes, run, stored_chunks};

/// Chunk size of the tests' assets (the harness's servers seed at 64 KiB).
const CHUNK: usize = 64 << 10;

/// Writes a tree of 200 files under `root`: nested three levels, every tenth empty, some
/// executable or private, and one (`media/big.bin`) of about 40 chunks.
fn tree(root: &Path) {
    for i in 0..199u64 {
        let path = root
            .join(format!("d{}", i % 7))
            .join(format!("s{}", i % 3))
            .join(format!("f{i:03}.txt"));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        let len = if i % 10 == 0 {
            0
        } else {
            (i * 977 % 9000) as usize
        };
        fs::write(&path, random_bytes(len, i)).unwrap();
        let mode = match i % 5 {
            0 => 0o755,
            1 => 0o600,
            _ => 0o644,
        };
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }
    fs::create_dir_all(root.join("media")).unwrap();
    fs::write(
        root.join("media/big.bin"),
        random_bytes(40 * CHUNK + 1234, 999),
    )
    .unwrap();
}

/// Every file under `root` with its mode, relative paths sorted.
fn listing(root: &Path) -> Vec<(PathBuf, u32)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let meta = fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                dirs.push(e.path());
            } else {
                let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
                out.push((rel, meta.permissions().mode() & 0o777));
            }
        }
    }
    out.sort();
    out
}

/// `diff -r a b` succeeds.
fn same_tree(a: &Path, b: &Path) {
    let out = Command::new("diff")
        .arg("-r")
        .arg(a)
        .arg(b)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "diff -r {} {}:\n{}",
        a.display(),
        b.display(),
        String::from_utf8_lossy(&out.stdout)
    );
}

/// Chunks a `get --json` summary says came over the network.
fn fetched_chunks(summary: &Value) -> u64 {
    summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["chunks"].as_u64().unwrap())
        .sum()
}

/// A tracker and an origin seeding the 200-file tree `site` in place; the manifest.
fn seeded_tree(d: &Path) -> (TrackerProc, ServerProc, Manifest) {
    tree(&d.join("site"));
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["site"], &["--origin"]);
    let text = run(d, "chunkify", &["--chunk-size", "64KiB", "site"], b"");
    let manifest = Manifest::from_toml(text.ok()).unwrap();
    assert_eq!(
        manifest.id().to_string(),
        origin.seeded[0],
        "chunkify DIR and peer_server --seed DIR give one id"
    );
    (tracker, origin, manifest)
}

#[test]
fn a_tree_of_200_files_seeded_in_place_round_trips_with_its_modes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, origin, manifest) = seeded_tree(d);
    let id = manifest.id().to_string();
    assert_eq!(manifest.files().len(), 200);
    assert!(manifest.files().iter().any(|f| f.size == 0));
    // Seeded in place: the origin's store holds the manifest and the directory's path, no
    // copy of the bytes.
    let asset = origin.store.join("assets").join(&id);
    assert!(asset.join("tree").exists() && !asset.join("data").exists());

    let summary = get(d, &tracker.url, &id, "out", "client", &[]).json();
    assert_eq!(summary["size"].as_u64(), Some(manifest.size));
    same_tree(&d.join("site"), &d.join("out"));
    assert_eq!(
        listing(&d.join("site")),
        listing(&d.join("out")),
        "modes kept"
    );
    assert!(
        !fs::read_dir(d).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with('.')),
        "no temporary directory left beside the output"
    );

    // The copy is complete in the client's store: a second tree comes from there alone.
    let again = get(d, &tracker.url, &id, "out2", "client", &[]).json();
    assert_eq!(fetched_chunks(&again), 0);
    same_tree(&d.join("site"), &d.join("out2"));
}

#[test]
fn file_fetches_only_the_chunks_of_that_file_and_writes_only_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, manifest) = seeded_tree(d);
    let id = manifest.id().to_string();
    let big = manifest.file("media/big.bin").unwrap();
    let need = manifest.file_chunks(big);
    assert!(need.len() >= 40, "{need:?}");
    assert!((need.len() as u32) < manifest.chunk_count());

    let summary = get(
        d,
        &tracker.url,
        &id,
        "one",
        "client",
        &["--file", "media/big.bin"],
    )
    .json();
    assert_eq!(fetched_chunks(&summary), need.len() as u64);
    assert_eq!(stored_chunks(&d.join("client"), &id), need.len() as u32);
    assert_eq!(
        listing(&d.join("one")),
        vec![(PathBuf::from("media/big.bin"), 0o644)],
        "only the file asked for is written"
    );
    assert_eq!(
        fs::read(d.join("one/media/big.bin")).unwrap(),
        fs::read(d.join("site/media/big.bin")).unwrap()
    );

    // Two small files: the chunks they need that the store lacks, and no more.
    let small = ["d1/s1/f001.txt", "d3/s0/f003.txt"];
    let mut want: Vec<u32> = small
        .iter()
        .flat_map(|p| manifest.file_chunks(manifest.file(p).unwrap()))
        .filter(|i| !need.contains(i))
        .collect();
    want.sort();
    want.dedup();
    let args = ["--file", small[0], "--file", small[1]];
    let summary = get(d, &tracker.url, &id, "two", "client", &args).json();
    assert_eq!(fetched_chunks(&summary), want.len() as u64);
    for p in small {
        assert_eq!(
            fs::read(d.join("two").join(p)).unwrap(),
            fs::read(d.join("site").join(p)).unwrap()
        );
    }
    assert_eq!(listing(&d.join("two")).len(), 2);

    // A path the asset does not list fails before anything is fetched or written.
    let e = get(
        d,
        &tracker.url,
        &id,
        "three",
        "client",
        &["--file", "nope.txt"],
    )
    .code(1)
    .to_string();
    assert!(e.contains("lists no such file"), "{e}");
    assert!(!d.join("three").exists());
    // The rest is fetched later, and the whole tree is then exact.
    get(d, &tracker.url, &id, "all", "client", &[]).ok();
    same_tree(&d.join("site"), &d.join("all"));
}

#[test]
fn hostile_file_lists_are_refused_by_the_tracker_and_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tree(&d.join("site"));
    let tracker = TrackerProc::start(d, &[]);
    let text = run(d, "chunkify", &["--chunk-size", "64KiB", "site"], b"")
        .ok()
        .to_string();
    let first = Manifest::from_toml(&text).unwrap().files()[0].path.clone();
    let quoted = format!("path = \"{first}\"");
    assert!(text.contains(&quoted));
    let deep = format!("path = \"{}x\"", "d/".repeat(40));
    for (to, why) in [
        (
            "path = \"../../etc/passwd\"".to_string(),
            "\"..\" component",
        ),
        ("path = \"/etc/passwd\"".to_string(), "absolute"),
        ("path = \"a\\u0000b\"".to_string(), "'\\0'"),
        (deep, "levels deep"),
        (
            // The second file's path, listed again in the first place.
            format!(
                "path = \"{}\"",
                Manifest::from_toml(&text).unwrap().files()[1].path
            ),
            "listed twice",
        ),
    ] {
        let hostile = text.replacen(&quoted, &to, 1);
        // The tracker refuses it with the reason.
        match ureq::post(&format!("{}/assets", tracker.url)).send_string(&hostile) {
            Err(ureq::Error::Status(400, answer)) => {
                let body: Value = answer.into_json().unwrap();
                let error = body["error"].as_str().unwrap_or_default();
                assert!(error.contains(why), "{to}: {body}");
            }
            other => panic!("{to}: the tracker took it: {other:?}"),
        }
        // So does the client, before sending anything.
        let publish = run(
            d,
            "peer_client",
            &["publish", "--tracker", &tracker.url, "-"],
            hostile.as_bytes(),
        );
        let e = publish.code(1).to_string();
        assert!(e.contains(why), "{to}: {e}");
        // And `chunkify verify` reading it.
        fs::write(d.join("hostile.toml"), &hostile).unwrap();
        let verify = run(d, "chunkify", &["verify", "hostile.toml", "site"], b"");
        assert!(verify.code(1).contains(why), "{to}");
    }
    // A tree holding a symbolic link is refused when chunked, naming the link.
    std::os::unix::fs::symlink("/etc", d.join("site/d0/etc")).unwrap();
    let e = run(d, "chunkify", &["site"], b"").code(1).to_string();
    assert!(e.contains("symbolic link") && e.contains("d0/etc"), "{e}");
}

#[test]
fn output_onto_an_existing_directory_refuses_and_replace_swaps_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, manifest) = seeded_tree(d);
    let id = manifest.id().to_string();
    fs::create_dir(d.join("mine")).unwrap();
    fs::write(d.join("mine/keep.txt"), b"mine").unwrap();
    // Exit 5: a local cause (see `peer_client --help`).
    let e = get(d, &tracker.url, &id, "mine", "client", &[])
        .code(5)
        .to_string();
    assert!(e.contains("--replace") && e.contains("mine"), "{e}");
    assert_eq!(fs::read(d.join("mine/keep.txt")).unwrap(), b"mine");
    assert_eq!(
        stored_chunks(&d.join("client"), &id),
        0,
        "refused before fetching"
    );
    // A file in the way is refused too.
    fs::write(d.join("afile"), b"x").unwrap();
    get(d, &tracker.url, &id, "afile", "client", &[]).code(5);
    assert_eq!(fs::read(d.join("afile")).unwrap(), b"x");
    // Asked to, the new tree takes the old one's place.
    get(d, &tracker.url, &id, "mine", "client", &["--replace"]).ok();
    same_tree(&d.join("site"), &d.join("mine"));
}

#[test]
fn a_seeded_file_changed_in_place_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, origin, manifest) = seeded_tree(d);
    let id = manifest.id().to_string();
    // Same size, other bytes: only the chunk hashes can tell.
    let big = d.join("site/media/big.bin");
    let mut bytes = fs::read(&big).unwrap();
    bytes[5 * CHUNK] ^= 0xff;
    fs::write(&big, &bytes).unwrap();
    // The origin answers "don't have" for the chunk it can no longer prove.
    let args = ["--file", "media/big.bin", "--stall-timeout", "2s"];
    let e = get(d, &tracker.url, &id, "out", "client", &args)
        .code(4)
        .to_string();
    assert!(e.contains("held by no source"), "{e}");
    assert!(!d.join("out").exists(), "nothing written");
    let log = origin.proc.stderr();
    assert!(log.contains("no longer matches its hash"), "{log}");
    // The other chunks of the file were served, and none of them is wrong.
    let held = stored_chunks(&d.join("client"), &id);
    assert!(
        held > 0
            && held
                < manifest
                    .file_chunks(manifest.file("media/big.bin").unwrap())
                    .len() as u32
    );
}
