//! Outputs that never destroy anything: `-o` onto a device, FIFO or socket writes into it;
//! a file output is a copy placed by one rename, never left under a temporary name, never
//! sharing its inode with the store; a bad output directory fails before any download;
//! and a second `get` of an asset another process is downloading waits for it.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{
    Proc, ServerProc, Tmpfs, TrackerProc, bin, eventually, get, random_file, run, spawn_get,
};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// A tracker and an origin seeding `a.bin` (`len` bytes) from `d`; returns them, the id and
/// the bytes.
fn origin(d: &Path, len: usize, seed: u64) -> (TrackerProc, ServerProc, String, Vec<u8>) {
    let bytes = random_file(&d.join("a.bin"), len, seed);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["a.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    (tracker, origin, id, bytes)
}

/// Files in `dir` whose name starts with a dot: temporary names.
fn hidden(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

#[test]
fn output_onto_a_fifo_socket_or_device_writes_into_it_in_order_and_never_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, id, bytes) = origin(d, 5 * 65536 + 123, 71);

    // A FIFO (and a symlink to it): its reader gets the whole asset; it stays a FIFO.
    let status = Command::new("mkfifo").arg(d.join("fifo")).status().unwrap();
    assert!(status.success(), "mkfifo");
    std::os::unix::fs::symlink(d.join("fifo"), d.join("fifo-link")).unwrap();
    for name in ["fifo", "fifo-link"] {
        let path = d.join(name);
        // A FIFO replaced by a file never sees a writer: bounded, so that fails, not hangs.
        let (tx, read) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || tx.send(fs::read(path).unwrap()));
        get(d, &tracker.url, &id, name, "client", &[]).ok();
        let got = read.recv_timeout(Duration::from_secs(10));
        assert!(
            got.ok() == Some(bytes.clone()),
            "{name}: the reader got other bytes"
        );
        assert!(fs::metadata(d.join("fifo")).unwrap().file_type().is_fifo());
    }
    assert!(
        fs::symlink_metadata(d.join("fifo-link"))
            .unwrap()
            .is_symlink()
    );

    // A socket: what connects to it receives the asset.
    let listener = std::os::unix::net::UnixListener::bind(d.join("sock")).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    get(d, &tracker.url, &id, "sock", "client", &[]).ok();
    assert!(
        reader.join().unwrap() == bytes,
        "the socket got other bytes"
    );
    assert!(
        fs::metadata(d.join("sock"))
            .unwrap()
            .file_type()
            .is_socket()
    );

    // `-o -` is stdout, as --stream.
    let out = Command::new(bin("peer_client"))
        .args(["get", &id, "--store", "client", "-o", "-"])
        .current_dir(d)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == bytes, "-o - wrote other bytes to stdout");

    // A character device of our own, a null device, and a symlink to it (root only).
    if !is_root() {
        eprintln!("skipping the character device part: mknod needs root");
        return;
    }
    let status = Command::new("mknod")
        .args([d.join("null").to_str().unwrap(), "c", "1", "3"])
        .status()
        .unwrap();
    assert!(status.success(), "mknod");
    std::os::unix::fs::symlink(d.join("null"), d.join("null-link")).unwrap();
    let rdev = fs::metadata(d.join("null")).unwrap().rdev();
    for name in ["null", "null-link"] {
        get(d, &tracker.url, &id, name, "client", &[]).ok();
        let meta = fs::metadata(d.join("null")).unwrap();
        assert!(
            meta.file_type().is_char_device(),
            "{name}: null was replaced"
        );
        assert_eq!(meta.rdev(), rdev);
    }
    assert!(
        fs::symlink_metadata(d.join("null-link"))
            .unwrap()
            .is_symlink()
    );
    assert_eq!(hidden(d), Vec::<String>::new());
}

#[test]
fn repeated_gets_leave_nothing_under_a_temporary_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, id, bytes) = origin(d, 3 * 65536, 72);
    for _ in 0..3 {
        get(d, &tracker.url, &id, "out.bin", "client", &[]).ok();
        assert_eq!(fs::read(d.join("out.bin")).unwrap(), bytes);
        assert_eq!(hidden(d), Vec::<String>::new());
    }
}

#[test]
fn an_edited_output_changes_neither_the_store_nor_a_later_get() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, id, bytes) = origin(d, 4 * 65536, 73);
    get(d, &tracker.url, &id, "out.bin", "client", &[]).ok();
    let data = d.join("client/assets").join(&id).join("data");
    let out = d.join("out.bin");
    assert_ne!(
        fs::metadata(&out).unwrap().ino(),
        fs::metadata(&data).unwrap().ino(),
        "the output shares its inode with the store"
    );
    // The user makes the output writable, edits it in place and restores its mtime.
    let mtime = fs::metadata(&out).unwrap().modified().unwrap();
    let mut perms = fs::metadata(&out).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&out, perms).unwrap();
    let edited = vec![0xeeu8; bytes.len()];
    let mut file = fs::OpenOptions::new().write(true).open(&out).unwrap();
    file.write_all(&edited).unwrap();
    file.set_modified(mtime).unwrap();
    drop(file);

    assert_eq!(fs::read(&data).unwrap(), bytes, "the store changed");
    let again = get(d, &tracker.url, &id, "two.bin", "client", &[]).json();
    assert_eq!(again["from_cache"], bytes.len() as u64);
    assert_eq!(fs::read(d.join("two.bin")).unwrap(), bytes);
    assert_eq!(
        fs::read(&out).unwrap(),
        edited,
        "the store wrote into the user's file"
    );
}

#[test]
fn explicit_output_replaces_a_file_atomically_and_the_default_name_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, id, bytes) = origin(d, 2 * 65536, 74);
    // A second name for the old file sees the old content: replaced, not overwritten.
    fs::write(d.join("out.bin"), b"old").unwrap();
    fs::hard_link(d.join("out.bin"), d.join("old.bin")).unwrap();
    get(d, &tracker.url, &id, "out.bin", "client", &[]).ok();
    assert_eq!(fs::read(d.join("out.bin")).unwrap(), bytes);
    assert_eq!(fs::read(d.join("old.bin")).unwrap(), b"old");

    // Without -o, the asset's name (a.bin) is taken: refused, saying how.
    fs::create_dir(d.join("work")).unwrap();
    fs::write(d.join("work/a.bin"), b"mine").unwrap();
    let refused = run(
        &d.join("work"),
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--store",
            "../client",
        ],
        b"",
    );
    assert!(!refused.status.success());
    assert!(
        refused.stderr.contains("-o \"a.bin\""),
        "{}",
        refused.stderr
    );
    assert_eq!(fs::read(d.join("work/a.bin")).unwrap(), b"mine");
    assert_eq!(hidden(&d.join("work")), Vec::<String>::new());

    let help = run(d, "peer_client", &["get", "--help"], b"");
    let help = help.ok();
    assert!(help.contains("replaces an existing file"), "{help}");
    assert!(help.contains("never replacing a file"), "{help}");
}

#[test]
fn an_output_directory_missing_or_read_only_fails_before_downloading() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, id, _bytes) = origin(d, 2 * 65536, 75);
    let nothing_fetched = || {
        // The content file is created when the download starts.
        assert!(!d.join("client/assets").join(&id).join("data").exists());
    };
    let missing = get(d, &tracker.url, &id, "nodir/x", "client", &[]);
    let stderr = missing.code(5);
    assert!(
        stderr.contains("directory nodir does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("swarmcache-"), "{stderr}");
    nothing_fetched();

    // Root writes into any directory whatever its mode: a read-only mount stops it.
    if !is_root() {
        eprintln!("skipping the read-only directory part: mounting needs root");
        return;
    }
    let Some(_mount) = Tmpfs::mount(&d.join("ro"), "ro") else {
        eprintln!("skipping the read-only directory part: mount -t tmpfs -o ro failed");
        return;
    };
    let read_only = get(d, &tracker.url, &id, "ro/x", "client", &[]);
    let stderr = read_only.code(5);
    assert!(stderr.contains("directory ro is not writable"), "{stderr}");
    assert!(!stderr.contains("swarmcache-"), "{stderr}");
    nothing_fetched();
}

#[test]
fn a_second_get_waits_for_the_first_and_nothing_is_downloaded_twice() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let len = 32 * 65536;
    let (tracker, _origin, id, bytes) = origin(d, len, 76);
    // 2 MiB at 512 KiB/s: four seconds in which the others come along.
    let mut first = spawn_get(
        d,
        &tracker.url,
        &id,
        "one.bin",
        "client",
        &["--max-download-rate", "512KiB", "--no-serve"],
    );
    let lock = d.join("client/assets").join(&id).join("lock");
    eventually(
        "the first get to start writing",
        Duration::from_secs(30),
        || lock.exists(),
    );
    let args = |out: &'static str| {
        [
            "get",
            id.as_str(),
            "--tracker",
            tracker.url.as_str(),
            "--store",
            "client",
            "--no-serve",
            "--json",
            "-o",
            out,
        ]
    };
    let mut second = Proc::spawn(d, "peer_client", &args("two.bin"));
    let mut stopped = Proc::spawn(d, "peer_client", &args("three.bin"));
    let streamed = {
        let (id, url, d) = (id.clone(), tracker.url.clone(), d.to_path_buf());
        std::thread::spawn(move || {
            Command::new(bin("peer_client"))
                .args(["get", &id, "--tracker", &url, "--store", "client"])
                .args(["--no-serve", "--stream", "--json"])
                .current_dir(d)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        })
    };

    // Waiting is said once, and Ctrl-C/SIGTERM still ends it at once.
    eventually("the third get to wait", Duration::from_secs(10), || {
        stopped.stderr().contains("waiting for another process")
    });
    let signalled = Instant::now();
    stopped.signal("TERM");
    assert_eq!(stopped.wait().code(), Some(130), "{}", stopped.stderr());
    assert!(signalled.elapsed() < Duration::from_secs(2));
    assert!(!d.join("three.bin").exists());

    let one = first.summary();
    assert_eq!(one["from_origin"], len as u64, "{one}");
    let two = second.summary();
    assert_eq!(second.wait().code(), Some(0));
    assert_eq!(
        second
            .stderr()
            .matches("waiting for another process")
            .count(),
        1,
        "{}",
        second.stderr()
    );
    assert_eq!(two["from_cache"], len as u64, "{two}");
    assert_eq!(two["from_origin"], 0, "{two}");
    assert_eq!(two["from_peers"], 0, "{two}");
    assert_eq!(fs::read(d.join("two.bin")).unwrap(), bytes);

    let streamed = streamed.join().unwrap();
    let stderr = String::from_utf8_lossy(&streamed.stderr);
    assert!(streamed.status.success(), "{stderr}");
    assert!(streamed.stdout == bytes, "the stream wrote other bytes");
    assert!(stderr.contains("waiting for another process"), "{stderr}");
    assert!(stderr.contains("\"from_origin\":0"), "{stderr}");
}
