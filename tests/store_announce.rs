//! One `peer_server` whose store holds 2 000 small assets announces them all in a bounded
//! number of requests per heartbeat (issue 12: batch announces), leaves every swarm in a
//! few when it stops, and its assets can be fetched.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    ServerProc, Tmpfs, TrackerProc, eventually, get, random_bytes, random_file, run, scrape,
};

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
    // on this machine's disk, 4 s in memory: in a tmpfs of the test's own, when it may mount.
    let dir = tempfile::tempdir().unwrap();
    let _memory = Tmpfs::mount(dir.path(), "size=256m");
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
        swarms.iter().all(|s| s["peers"] == 1 && s["seeders"] == 1),
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
    assert_eq!(
        std::fs::read(dir.path().join("copy")).unwrap(),
        contents[pick]
    );

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

/// `tracker token --auth auth.toml …` in `d`; returns the token.
fn token(d: &Path, name: &str, rights: &[&str]) -> String {
    let mut args = vec!["token", "--auth", "auth.toml", "--name", name];
    args.extend_from_slice(rights);
    run(d, "tracker", &args, b"").ok().trim().to_string()
}

/// `chunkify FILE | peer_client publish --token TOKEN -`; returns the id.
fn publish(d: &Path, tracker: &str, file: &str, token: &str) -> String {
    let manifest = run(d, "chunkify", &["--chunk-size", "64KiB", file], b"");
    let args = ["publish", "--tracker", tracker, "--token", token, "-"];
    let id = run(d, "peer_client", &args, manifest.ok().as_bytes());
    id.ok().trim().to_string()
}

/// A batch announce of `body` with `token`: the status and the JSON answer.
fn batch(tracker: &str, token: &str, body: &str) -> (u16, Value) {
    let request = ureq::post(&format!("{tracker}/announce"))
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/json");
    match request.send_string(body) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(status, r)) => (status, r.into_json().unwrap()),
        Err(e) => panic!("POST /announce: {e}"),
    }
}

/// The refused entries of a batch answer, as (index, status).
fn refused(answer: &Value) -> Vec<(u64, u64)> {
    answer["refused"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|r| (r["index"].as_u64().unwrap(), r["status"].as_u64().unwrap()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_batch_refuses_an_entry_alone_as_a_single_announce_would_and_a_bad_request_whole() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("a.bin"), 1000, 90);
    random_file(&d.join("b.bin"), 1000, 91);
    let a_id = run(
        d,
        "chunkify",
        &["--id", "--chunk-size", "64KiB", "a.bin"],
        b"",
    );
    let admin = token(d, "admin", &["--publish", "--fetch", "*"]);
    let viewer = token(d, "viewer", &["--fetch", a_id.ok().trim()]);
    let tracker = TrackerProc::start(d, &["--auth", "auth.toml"]);
    let a = publish(d, &tracker.url, "a.bin", &admin);
    let b = publish(d, &tracker.url, "b.bin", &admin);
    assert_eq!(a, a_id.ok().trim());
    let unknown = "0".repeat(64);
    let entry = |id: &str| json!({"id": id, "complete": true});
    let body = |origin: bool, entries: Vec<Value>| {
        json!({"peer_id": "store", "addr": "127.0.0.1:7001", "origin": origin, "assets": entries})
            .to_string()
    };

    // The viewer may fetch a only: b and an asset of no token's are refused as its single
    // announces would be (403), a malformed id and have as malformed (400).
    let bad_have = json!({"id": a, "have": "zz"});
    let entries = vec![
        entry(&a),
        entry(&b),
        entry(&unknown),
        entry("nonsense"),
        bad_have,
    ];
    let (status, answer) = batch(&tracker.url, &viewer, &body(false, entries));
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(refused(&answer), [(1, 403), (2, 403), (3, 400), (4, 400)]);
    assert!(
        answer["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{answer}"
    );
    assert!(answer["instance"].is_string() && answer["interval_secs"].is_u64());
    assert!(answer.get("peers").is_none(), "no peers lists: {answer}");
    // A token that may fetch everything: an asset not in the catalog is a 404; without the
    // origin right, every entry of an origin's batch is a 403.
    let (_, answer) = batch(
        &tracker.url,
        &admin,
        &body(false, vec![entry(&b), entry(&unknown)]),
    );
    assert_eq!(
        (answer["accepted"].as_u64(), refused(&answer)),
        (Some(1), vec![(1, 404)])
    );
    let (_, answer) = batch(
        &tracker.url,
        &admin,
        &body(true, vec![entry(&a), entry(&b)]),
    );
    assert_eq!(refused(&answer), [(0, 403), (1, 403)], "{answer}");
    let peers = |id: &str| {
        let stats = ureq::get(&format!("{}/stats", tracker.url))
            .set("Authorization", &format!("Bearer {admin}"))
            .call()
            .unwrap()
            .into_json::<Value>()
            .unwrap();
        let swarms = stats["swarms"].as_array().unwrap().clone();
        swarms
            .iter()
            .find(|s| s["id"] == id)
            .map_or(0, |s| s["peers"].as_u64().unwrap())
    };
    assert_eq!(
        (peers(&a), peers(&b)),
        (1, 1),
        "the accepted entries joined"
    );

    // What concerns the whole request fails it whole.
    let (status, answer) = batch(&tracker.url, "", &body(false, vec![entry(&a)]));
    assert_eq!(status, 401, "{answer}");
    let many = vec![entry(&a); swarmcache::api::BATCH_MAX_ENTRIES + 1];
    let (status, answer) = batch(&tracker.url, &viewer, &body(false, many));
    assert_eq!(status, 413, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("split"),
        "{answer}"
    );
    let (status, _) = batch(&tracker.url, &viewer, r#"{"peer_id": "", "assets": []}"#);
    assert_eq!(status, 400);
    let (status, _) = batch(
        &tracker.url,
        &viewer,
        &body(false, vec![entry(&a)]).replace("127.0.0.1:7001", "127.0.0.1:0"),
    );
    assert_eq!(status, 400);
    // Leaving, in a batch too.
    let leave = json!({"id": a, "event": "stopped"});
    let (_, answer) = batch(&tracker.url, &viewer, &body(false, vec![leave]));
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(peers(&a), 0, "left the swarm of a");
}
