//! Swarming: clients serve while they download, the tracker splits the origin's work,
//! and rate caps hold.

use std::fs;

use crate::harness::{Proc, ServerProc, TrackerProc, get, random_file, spawn_get};

fn client(dir: &std::path::Path, n: usize, tracker: &str, id: &str, extra: &[&str]) -> Proc {
    spawn_get(
        dir,
        tracker,
        id,
        &format!("copy-{n}.bin"),
        &format!("client-{n}"),
        extra,
    )
}

#[test]
fn a_crowd_shares_the_work_and_a_late_client_takes_nothing_from_the_origin() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 8 MiB at 4 MiB/s: the origin alone would need 8 s to serve four clients.
    let bytes = random_file(&d.join("f.bin"), 128 * 65536, 17);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--max-upload-rate", "4MiB"],
    );
    let id = origin.seeded[0].clone();
    let mut crowd: Vec<Proc> = (0..4)
        .map(|n| client(d, n, &tracker.url, &id, &["--seed-for", "8s"]))
        .collect();
    let summaries: Vec<serde_json::Value> = crowd.iter_mut().map(Proc::summary).collect();
    let mut from_origin = 0;
    for (n, s) in summaries.iter().enumerate() {
        assert_eq!(
            fs::read(d.join(format!("copy-{n}.bin"))).unwrap(),
            bytes,
            "client {n}"
        );
        from_origin += s["from_origin"].as_u64().unwrap();
    }
    let size = bytes.len() as u64;
    eprintln!(
        "crowd of 4: origin sent {:.2} × the file",
        from_origin as f64 / size as f64
    );
    assert!(
        from_origin < 2 * size,
        "the origin sent {from_origin} bytes for a {size}-byte file: {summaries:?}"
    );
    assert!(
        summaries
            .iter()
            .any(|s| s["from_peers"].as_u64().unwrap() > 0),
        "clients served each other"
    );

    // The crowd is seeding now: a newcomer needs nothing from the origin.
    let late_summary = client(d, 9, &tracker.url, &id, &[]).summary();
    assert_eq!(fs::read(d.join("copy-9.bin")).unwrap(), bytes);
    assert_eq!(late_summary["from_origin"], 0, "{late_summary}");
    assert_eq!(late_summary["from_peers"], size);
}

#[test]
fn a_capped_server_stays_within_its_rate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 128 * 65536, 18);
    let cap = 2u64 << 20;
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--max-upload-rate", "2MiB"],
    );
    let summary = get(
        d,
        &tracker.url,
        &origin.seeded[0],
        "copy.bin",
        "client",
        &["--no-serve"],
    )
    .json();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    let rate = bytes.len() as f64 / summary["seconds"].as_f64().unwrap();
    eprintln!(
        "capped at {cap} B/s, measured {rate:.0} B/s over {} s",
        summary["seconds"]
    );
    assert!(
        rate <= cap as f64 * 1.10,
        "the cap was exceeded: {rate:.0} B/s"
    );
    assert!(rate >= cap as f64 * 0.5, "far below the cap: {rate:.0} B/s");
}

#[test]
fn a_crowd_behind_one_address_gets_through_a_tight_connection_cap() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 8 * 65536, 23);
    // Two connections per address: eight clients starting together are refused (429) at
    // first and must retry.
    let tracker = TrackerProc::start(d, &["--max-conns-per-ip", "2"]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    let mut clients: Vec<Proc> = (0..8)
        .map(|n| client(d, n, &tracker.url, &id, &[]))
        .collect();
    for (n, c) in clients.iter_mut().enumerate() {
        assert!(c.wait().success(), "client {n}: {}", c.stderr());
        assert_eq!(fs::read(d.join(format!("copy-{n}.bin"))).unwrap(), bytes);
    }
    assert!(
        tracker.proc.stderr().contains("refused"),
        "the cap was never reached, so retrying was not tested: {}",
        tracker.proc.stderr()
    );
}
