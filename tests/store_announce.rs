//! One `peer_server` whose store holds 2 000 small assets announces them all in a bounded
//! number of requests per heartbeat (issue 12: batch announces), leaves every swarm in a
//! few when it stops, and its assets can be fetched.

use std::time::Duration;

use crate::harness::{ServerProc, TrackerProc, eventually, get, random_bytes, scrape};

/// Assets in the store: enough that one request per asset would be obvious in the counters.
const ASSETS: usize = 2_000;
/// Most entries of one batch request (`swarmcache::api::BATCH_MAX_ENTRIES`): 2 000 assets
/// make one request a beat.
const REQUESTS_PER_BEAT: u64 = ASSETS.div_ceil(swarmcache::api::BATCH_MAX_ENTRIES) as u64;

/// `/stats`' totals: (announces, batch requests, live peers summed over every swarm).
fn counters(tracker: &TrackerProc) -> (u64, u64, u64) {
    let stats = tracker.get_json("/stats");
    let number = |field: &str| {
        stats[field]
            .as_u64()
            .unwrap_or_else(|| panic!("/stats has no {field}: {stats}"))
    };
    (
        number("announces"),
        number("announce_batches"),
        number("peers"),
    )
}

#[test]
fn a_store_of_2000_assets_is_announced_in_one_request_per_beat_and_left_in_one() {
    // Setting up 2 000 assets is fsyncs (the store's imports, the catalog's publishes): 110 s
    // on this machine's disk, 4 s in memory. A temporary directory in tmpfs, when there is one.
    let shm = std::path::Path::new("/dev/shm");
    let dir = match shm.is_dir() {
        true => tempfile::tempdir_in(shm),
        false => tempfile::tempdir(),
    }
    .unwrap();
    std::fs::create_dir(dir.path().join("files")).unwrap();
    let contents: Vec<Vec<u8>> = (0..ASSETS)
        .map(|n| random_bytes(32, n as u64 + 1))
        .collect();
    let files: Vec<String> = (0..ASSETS).map(|n| format!("files/{n}")).collect();
    for (file, bytes) in files.iter().zip(&contents) {
        std::fs::write(dir.path().join(file), bytes).unwrap();
    }
    // Publishing 2 000 seeds at the default 5 a second would take minutes.
    let tracker = TrackerProc::start(dir.path(), &["--publish-rate", "0"]);
    let seeds: Vec<&str> = files.iter().map(String::as_str).collect();
    let mut server = ServerProc::start(
        dir.path(),
        "store",
        Some(&tracker.url),
        &seeds,
        &["--announce-interval", "1s"],
    );
    assert_eq!(server.seeded.len(), ASSETS);

    // The first beat ran before the server said it listens: every swarm lists it.
    let stats = tracker.get_json("/stats");
    let swarms = stats["swarms"].as_array().unwrap();
    assert_eq!(swarms.len(), ASSETS, "one swarm per asset");
    assert!(
        swarms
            .iter()
            .all(|s| s["peers"] == 1 && s["seeders"] == 1),
        "each asset has the server as its seeder"
    );

    // Two beats more: each one is ASSETS announces in REQUESTS_PER_BEAT requests. A read
    // in the middle of a beat sees part of its entries; such a read is passed over.
    let (announces, batches, _) = counters(&tracker);
    let mut after = (announces, batches, 0);
    eventually(
        "two more beats of the whole store",
        Duration::from_secs(30),
        || {
            after = counters(&tracker);
            let more = after.0 - announces;
            more >= 2 * ASSETS as u64 && more % ASSETS as u64 == 0
        },
    );
    let beats = (after.0 - announces) / ASSETS as u64;
    let requests = after.1 - batches;
    assert_eq!(
        requests,
        beats * REQUESTS_PER_BEAT,
        "{beats} beats of {ASSETS} assets took {requests} requests"
    );
    eprintln!("{beats} beats of {ASSETS} assets: {requests} batch requests");
    let metrics = scrape(&format!("{}/metrics", tracker.url));
    assert!(metrics.value("swarmcache_tracker_announce_batches_total", &[]) >= after.1 as f64);

    // What was announced is served: a client gets one of the assets from the server.
    let pick = ASSETS / 2;
    let id = &server.seeded[pick];
    get(dir.path(), &tracker.url, id, "copy", "client-store", &[]).ok();
    assert_eq!(std::fs::read(dir.path().join("copy")).unwrap(), contents[pick]);

    // Stopping, it leaves every swarm at once, in one batch.
    let (_, batches, peers) = counters(&tracker);
    assert!(peers >= ASSETS as u64, "{peers} live peers before stopping");
    server.proc.signal("TERM");
    assert!(
        server.proc.exited_within(Duration::from_secs(5)).is_some(),
        "peer_server did not exit after SIGTERM"
    );
    let (_, batches_after, peers_after) = counters(&tracker);
    assert_eq!(
        peers_after, 0,
        "every swarm left, none waiting for the timeout"
    );
    assert!(
        batches_after - batches <= 1 + REQUESTS_PER_BEAT,
        "leaving took {} requests",
        batches_after - batches
    );
}
