//! Restarts, shutdown and a second host (issue 11): a get right after a tracker restart,
//! every command's exit on SIGTERM (also when nothing can reach its listeners), and the
//! loopback address a remote tracker must refuse.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::harness::{
    Proc, START_TIMEOUT, ServerProc, TrackerProc, bin, eventually, get, publish, random_file,
    spawn_get,
};
use crate::netns::Netns;

/// What issue 11 promises for SIGTERM.
const EXIT_LIMIT: Duration = Duration::from_secs(2);

/// The port of an `ip:port` or `http://ip:port` address.
fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

/// Sends SIGTERM to each of `procs` at once, then asserts that each exits within
/// [`EXIT_LIMIT`] of it.
fn terminate_all(procs: &mut [&mut Proc]) {
    for proc in procs.iter() {
        proc.signal("TERM");
    }
    let sent = Instant::now();
    for proc in procs.iter_mut() {
        let left = EXIT_LIMIT.saturating_sub(sent.elapsed());
        let status = proc.exited_within(left);
        assert!(
            status.is_some(),
            "{} still runs {:?} after SIGTERM\nstderr: {}",
            proc.description,
            sent.elapsed(),
            proc.stderr()
        );
    }
}

#[test]
fn a_get_started_a_second_after_a_tracker_restart_waits_for_the_origin_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 5 * 65536 + 7, 71);
    let tracker = TrackerProc::start(d, &[]);
    let port = port_of(&tracker.url).to_string();
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    // The origin announced at its start and heartbeats every 20 s: the restarted tracker
    // hears from it again only then, long after the get below starts.
    let mut tracker = tracker;
    tracker.proc.kill();
    let tracker = TrackerProc::start_on(d, &format!("127.0.0.1:{port}"), &[]);
    assert!(tracker.peers(&id).is_empty(), "a new tracker knows no peer");
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let run = get(d, &tracker.url, &id, "copy.bin", "client", &[]);
    run.ok();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    assert!(
        run.stderr.contains("waiting"),
        "the get said that it waits: {}",
        run.stderr
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "it waited a heartbeat period at most, plus slack: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_get_of_an_asset_published_since_the_start_with_no_source_fails_at_once() {
    // The warm-up hint is for assets the tracker knew before it started: one published
    // since has had every chance to be announced, and waiting would only hide the error.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 65536, 72);
    let tracker = TrackerProc::start(d, &[]);
    let id = publish(d, &tracker.url, "f.bin");
    let started = Instant::now();
    let run = get(d, &tracker.url, &id, "copy.bin", "client", &[]);
    assert!(
        run.code(4).contains("knows no peer or origin"),
        "{}",
        run.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[test]
fn every_command_exits_within_two_seconds_of_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("big.bin"), 64 * 65536, 73);
    random_file(&d.join("small.bin"), 2 * 65536, 74);
    let mut tracker = TrackerProc::start(d, &[]);
    let mut origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["big.bin", "small.bin"],
        &["--origin"],
    );
    let (big, small) = (origin.seeded[0].clone(), origin.seeded[1].clone());
    tracker.wait_for_peers(&small, 1);
    // Seeding: done with the download, serving for ten minutes more.
    let mut seeding = spawn_get(
        d,
        &tracker.url,
        &small,
        "s.bin",
        "seeder",
        &["--seed-for", "10m"],
    );
    seeding.summary();
    // Downloading: 4 MiB at 128 KiB/s takes half a minute.
    let mut downloading = spawn_get(
        d,
        &tracker.url,
        &big,
        "b.bin",
        "leecher",
        &["--max-download-rate", "128KiB", "--progress", "json"],
    );
    eventually("the download to make progress", START_TIMEOUT, || {
        downloading.stderr().contains("\"bytes\":")
    });
    // Waiting: a tracker restarted with the asset in its catalog and no source yet.
    let other = d.join("other");
    fs::create_dir(&other).unwrap();
    fs::copy(d.join("small.bin"), other.join("small.bin")).unwrap();
    let mut first = TrackerProc::start(&other, &[]);
    let lonely = publish(&other, &first.url, "small.bin");
    first.proc.kill();
    let restarted = TrackerProc::start(&other, &[]);
    let mut waiting = spawn_get(&other, &restarted.url, &lonely, "w.bin", "w", &[]);
    eventually("the get to say it waits", START_TIMEOUT, || {
        waiting.stderr().contains("waiting")
    });
    let mut restarted = restarted;
    terminate_all(&mut [
        &mut waiting,
        &mut downloading,
        &mut seeding,
        &mut origin.proc,
        &mut tracker.proc,
        &mut restarted.proc,
    ]);
}

/// A process inside `ns`, running one of our binaries in `dir`.
fn spawn_in(ns: &Netns, dir: &Path, name: &str, args: &[&str]) -> Proc {
    let mut cmd = ns.command(&bin(name), dir);
    cmd.args(args);
    Proc::spawn_cmd(
        &mut cmd,
        format!("(in {}) {name} {}", ns.name, args.join(" ")),
    )
}

#[test]
fn every_command_exits_within_two_seconds_of_sigterm_when_nothing_reaches_its_listeners() {
    let Some(ns) = Netns::create(
        "every_command_exits_within_two_seconds_of_sigterm_when_nothing_reaches_its_listeners",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 3 * 65536, 75);
    let data = d.join("tracker-data");
    let mut tracker = spawn_in(
        &ns,
        d,
        "tracker",
        &["--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()],
    );
    let url = tracker.listening();
    let mut origin = spawn_in(
        &ns,
        d,
        "peer_server",
        &[
            "--listen",
            "127.0.0.1:0",
            "--store",
            "origin",
            "--chunk-size",
            "64KiB",
            "--tracker",
            &url,
            "--seed",
            "f.bin",
            "--origin",
        ],
    );
    let id = origin.wait_line("seeded ", START_TIMEOUT);
    let id = id.split_whitespace().next().unwrap().to_string();
    origin.listening();
    let mut seeding = spawn_in(
        &ns,
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &url,
            "-o",
            "copy.bin",
            "--store",
            "client",
            "--json",
            "--listen",
            "127.0.0.1:0",
            "--seed-for",
            "10m",
        ],
    );
    seeding.summary();
    // From now on nothing reaches the listeners: not a peer, not the tracker, not a
    // connection of the process to its own port.
    ns.ip(&["link", "set", "lo", "down"]).unwrap();
    terminate_all(&mut [&mut origin, &mut tracker, &mut seeding]);
}

#[test]
fn a_loopback_address_announced_from_another_host_is_refused_and_a_wildcard_one_is_announced_at_the_source()
 {
    let Some(ns) = Netns::create("a_loopback_address_announced_from_another_host_is_refused")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 2 * 65536, 76);
    let tracker = TrackerProc::start_on(d, &format!("{}:0", ns.host_addr), &[]);
    let origin = |listen: &str, store: &str| {
        spawn_in(
            &ns,
            d,
            "peer_server",
            &[
                "--listen",
                listen,
                "--store",
                store,
                "--chunk-size",
                "64KiB",
                "--tracker",
                &tracker.url,
                "--seed",
                "f.bin",
                "--origin",
            ],
        )
    };
    // As every README example starts an origin: refused, with what to do instead.
    let mut refused = origin("127.0.0.1:0", "a");
    let status = refused.exited_within(Duration::from_secs(20));
    let stderr = refused.stderr();
    assert!(status.is_some_and(|s| !s.success()), "{status:?}: {stderr}");
    for words in ["loopback", "--listen 0.0.0.0:", "--advertise-addr"] {
        assert!(stderr.contains(words), "{words}: {stderr}");
    }
    // On every interface: announced at the address the tracker sees, the namespace's.
    let mut wildcard = origin("0.0.0.0:0", "b");
    let id = wildcard.wait_line("seeded ", START_TIMEOUT);
    let id = id.split_whitespace().next().unwrap().to_string();
    let port = port_of(&wildcard.listening()).to_string();
    tracker.wait_for_peers(&id, 1);
    assert_eq!(
        tracker.peers(&id)[0]["addr"],
        format!("{}:{port}", ns.ns_addr),
        "{:?}",
        tracker.peers(&id)
    );
    drop(wildcard);
}

#[test]
fn a_stream_whose_reader_stopped_reading_exits_within_two_seconds_of_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("big.bin"), 64 * 65536, 75);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["big.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    // The test holds the stream's pipe and never reads it: after 64 KiB the client's write
    // blocks in the kernel, where no flag it polls is ever looked at.
    let mut child = std::process::Command::new(bin("peer_client"))
        .args([
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--store",
            "reader",
            "--stream",
        ])
        .args(["--progress", "json"])
        .current_dir(d)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let _unread = child.stdout.take().unwrap();
    let stderr = crate::harness::collect(child.stderr.take().unwrap());
    // The first progress line comes after a second: by then the 4 MiB are long fetched
    // and the stream has been blocked on the full pipe.
    eventually("a progress line", START_TIMEOUT, || {
        stderr.lock().unwrap().contains("\"bytes\":")
    });
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let sent = Instant::now();
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if sent.elapsed() > EXIT_LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if exited.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let status = exited.unwrap_or_else(|| {
        panic!(
            "a --stream get blocked on its output still ran {EXIT_LIMIT:?} after SIGTERM\nstderr: {}",
            stderr.lock().unwrap()
        )
    });
    assert_eq!(
        status.code(),
        Some(130),
        "stderr: {}",
        stderr.lock().unwrap()
    );
}
