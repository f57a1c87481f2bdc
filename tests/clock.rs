//! Clock skew between peers and tracker (issue 13): an origin whose clock is 11 minutes
//! fast, run under `faketime`, still serves the tickets the tracker signs, because it
//! checks their expiry by the tracker's clock (the `Date` of the tracker's answers).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Proc, START_TIMEOUT, TrackerProc, bin, random_file, run};

/// libfaketime (Debian package `faketime`), when it is installed. The test preloads it into
/// the origin itself rather than running the `faketime` wrapper, which forks: stopping the
/// wrapper would leave the origin running.
fn libfaketime() -> Option<PathBuf> {
    let lib = Path::new("/usr/lib");
    let arch_dirs = std::fs::read_dir(lib)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()));
    std::iter::once(lib.to_path_buf())
        .chain(arch_dirs)
        .map(|dir| dir.join("faketime/libfaketime.so.1"))
        .find(|path| path.is_file())
}

/// `tracker token --auth auth.toml …` in `d`; returns the token.
fn token(d: &Path, name: &str, rights: &[&str]) -> String {
    let mut args = vec!["token", "--auth", "auth.toml", "--name", name];
    args.extend_from_slice(rights);
    run(d, "tracker", &args, b"").ok().trim().to_string()
}

#[test]
fn an_origin_eleven_minutes_fast_serves_the_tickets_of_the_tracker() {
    let Some(libfaketime) = libfaketime() else {
        eprintln!(
            "skipped: no libfaketime (apt-get install faketime) to run an origin with a fast clock"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let data = random_file(&d.join("a.bin"), 300_000, 130);
    let admin = token(d, "admin", &["--publish", "--origin", "--fetch", "*"]);
    let viewer = token(d, "viewer", &["--fetch", "*"]);
    let tracker = TrackerProc::start(d, &["--auth", "auth.toml"]);

    // 11 minutes fast: a ticket lives 10 minutes of the tracker's time, so by the origin's
    // own clock every ticket is expired (beyond the 30 s skew allowed) the moment it is
    // signed.
    let mut origin = Proc::spawn_cmd(
        Command::new(bin("peer_server"))
            .env("LD_PRELOAD", &libfaketime)
            .env("FAKETIME", "+11m")
            .args(["--listen", "127.0.0.1:0", "--store", "origin"])
            .args(["--chunk-size", "64KiB", "--seed", "a.bin"])
            .args(["--tracker", &tracker.url, "--origin", "--token", &admin])
            .current_dir(d),
        "peer_server --seed a.bin --origin, 11 minutes fast (libfaketime)".into(),
    );
    let seeded = origin.wait_line("seeded ", START_TIMEOUT);
    let id = seeded.split_whitespace().next().unwrap().to_string();
    origin.listening();

    let get = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--token",
            &viewer,
            "-o",
            "a.out",
            "--store",
            "client",
            "--no-serve",
        ],
        b"",
    );
    get.ok();
    assert!(
        std::fs::read(d.join("a.out")).unwrap() == data,
        "a.out differs from a.bin"
    );
    // The origin really ran 11 minutes fast, and said so in the words an operator needs.
    let stderr = origin.stderr();
    assert!(
        stderr.contains("tracker's clock reads") && stderr.contains("fix NTP"),
        "no clock warning from the origin:\n{stderr}"
    );
}
