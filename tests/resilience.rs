//! Failures are transient until proven otherwise: a source whose first connects time out
//! is retried until it delivers, a get whose tracker is not listening yet asks it again
//! until it is, and `--stall-timeout` ends a download whose only source stops delivering,
//! naming it.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{
    Proc, ServerProc, TrackerProc, bin, eventually, publish, random_file, spawn_get, stored_chunks,
};
use crate::netns::Netns;

#[test]
fn a_peer_whose_first_connects_time_out_is_retried_until_it_delivers() {
    let Some(ns) =
        Netns::create("a_peer_whose_first_connects_time_out_is_retried_until_it_delivers")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 2 << 20, 41);
    // On every interface: the client reaches it on 127.0.0.1, the peer in the namespace
    // on the host end of the veth.
    let tracker = TrackerProc::start_on(d, "0.0.0.0:0", &[]);
    let port = tracker.url.rsplit(':').next().unwrap().to_string();
    let from_ns = format!("http://{}:{port}", ns.host_addr);
    let local = format!("http://127.0.0.1:{port}");
    let id = publish(d, &local, "f.bin");
    // The only source: a complete peer (not an origin) inside the namespace, which the
    // client would once drop for good after one failed connect.
    let args = [
        "--listen",
        "0.0.0.0:0",
        "--store",
        "peer",
        "--chunk-size",
        "64KiB",
        "--tracker",
        &from_ns,
        "--seed",
        "f.bin",
    ];
    let mut peer = Proc::spawn_cmd(
        ns.command(&bin("peer_server"), d).args(args),
        format!("peer_server {} (in {})", args.join(" "), ns.name),
    );
    peer.wait_line("seeded ", Duration::from_secs(20));
    peer.listening();
    tracker.wait_for_peers(&id, 1);
    // SYNs vanish: the namespace's end goes down and the host keeps the peer's MAC, so
    // nothing answers (no refusal, no "no route" from a failed ARP) and connects time out.
    let mac = fs_in_ns(&ns, &format!("/sys/class/net/{}/address", ns.ns_if));
    let neigh = [
        "neigh",
        "replace",
        &ns.ns_addr.to_string(),
        "lladdr",
        mac.trim(),
        "dev",
        &ns.host_if,
        "nud",
        "permanent",
    ];
    host_ip(&neigh);
    ns.ip(&["link", "set", &ns.ns_if, "down"]).unwrap();
    let started = Instant::now();
    let mut client = spawn_get(d, &local, &id, "copy.bin", "client", &[]);
    eventually("a connect to time out", Duration::from_secs(20), || {
        client.stderr().contains("timed out")
    });
    // Down for about 7 s: several connects of 2 s time out meanwhile.
    let down_for = Duration::from_secs(7);
    std::thread::sleep(down_for.saturating_sub(started.elapsed()));
    ns.ip(&["link", "set", &ns.ns_if, "up"]).unwrap();
    let status = client.wait();
    let stderr = client.stderr();
    assert!(status.success(), "client failed: {stderr}");
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    assert!(stderr.contains("retrying"), "{stderr}");
    assert!(
        stderr.contains("retried"),
        "the summary line says so: {stderr}"
    );
    let summary = client.summary();
    let source = &summary["sources"][0];
    assert_eq!(source["bytes"], bytes.len() as u64, "{summary}");
    assert!(source["failures"].as_u64().unwrap() >= 1, "{summary}");
    assert!(
        source["tries"].as_u64().unwrap() > source["failures"].as_u64().unwrap(),
        "{summary}"
    );
    assert!(
        source["last_error"].as_str().unwrap().contains("timed out"),
        "{summary}"
    );
    assert!(source["dropped"].is_null(), "{summary}");
    eprintln!("the peer after an outage of {down_for:?}: {source}");
}

/// Reads a file as seen inside the namespace (its own /sys).
fn fs_in_ns(ns: &Netns, path: &str) -> String {
    let out = ns
        .command(Path::new("cat"), Path::new("/"))
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success(), "cat {path} in {}", ns.name);
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `ip ARGS` in the test's own namespace.
fn host_ip(args: &[&str]) {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_get_whose_tracker_is_not_listening_for_its_first_seconds_waits_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 8 * 65536 + 3, 43);
    // Peers heartbeat every third of the peer timeout: the restarted tracker hears from
    // the origin within 2 s.
    let quick = ["--peer-timeout", "6s"];
    let mut tracker = TrackerProc::start(d, &quick);
    let port = tracker.url.rsplit(':').next().unwrap().to_string();
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    // Nothing listens on the tracker's port now: every connect is refused at once.
    tracker.proc.kill();
    let url = tracker.url.clone();
    let mut client = spawn_get(d, &url, &id, "copy.bin", "client", &[]);
    eventually(
        "the client to find the tracker unreachable",
        Duration::from_secs(20),
        || client.stderr().contains("unreachable"),
    );
    // Before, a request gave up after 4 rounds 100-400 ms apart (under a second).
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        client.exited_within(Duration::ZERO).is_none(),
        "the client gave up on a tracker down for 1.5 s: {}",
        client.stderr()
    );
    let _tracker = TrackerProc::start_on(d, &format!("127.0.0.1:{port}"), &quick);
    let status = client.wait();
    let stderr = client.stderr();
    assert!(status.success(), "client failed: {stderr}");
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    assert!(stderr.contains("asking again in"), "{stderr}");
}

#[test]
fn the_stall_timeout_ends_a_download_whose_only_source_stops_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 64 chunks at 1 MiB/s: still running when the origin is frozen.
    random_file(&d.join("f.bin"), 64 * 65536, 42);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--max-upload-rate", "1MiB"],
    );
    let id = origin.seeded[0].clone();
    let mut client = spawn_get(
        d,
        &tracker.url,
        &id,
        "copy.bin",
        "client",
        &["--stall-timeout", "3s"],
    );
    eventually(
        "the client to record progress",
        Duration::from_secs(20),
        || stored_chunks(&d.join("client"), &id) >= 2,
    );
    // SIGSTOP: the connections stay open and the port accepts, but nothing is answered.
    origin.proc.signal("STOP");
    let stopped = Instant::now();
    // The stall timeout is 3 s, the chunk timeout 10 s: bounded well before a minute.
    let status = client
        .exited_within(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("still running 30 s after the stop: {}", client.stderr()));
    let waited = stopped.elapsed();
    let stderr = client.stderr();
    assert_eq!(status.code(), Some(4), "exit 4 (no source): {stderr}");
    assert!(
        stderr.contains("arrived for 3s (the stall timeout)"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("origin {}:", origin.addr)),
        "the message names the source: {stderr}"
    );
    assert!(stderr.contains("connection"), "and its tries: {stderr}");
    assert!(!d.join("copy.bin").exists(), "no output from a failed get");
    eprintln!("the stall timeout of 3 s ended the get {waited:?} after the stop");
}
