//! Stats people can see: the tracker's `/stats` and `/metrics` and the peer server's
//! `--metrics` endpoint, scraped from real processes, parsed strictly, and checked against
//! what the clients report.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    ServerProc, TrackerProc, eventually, get, http_get, random_file, scrape, spawn_get,
};

/// An asset name whose label value needs escaping: a name may hold quotes, commas, braces.
const AWKWARD_NAME: &str = "we\"ird, name={1}.bin";
/// How long the tracker may take to hear of served bytes: heartbeats come every second
/// with `--peer-timeout 3s`.
const HEARD_WITHIN: Duration = Duration::from_secs(15);

#[test]
fn stats_and_metrics_add_up_what_clients_got_and_keep_it_after_they_leave() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join(AWKWARD_NAME), 32 * 65536 + 100, 41);
    let size = bytes.len() as u64;
    let tracker = TrackerProc::start(d, &["--peer-timeout", "3s"]);
    let tracker_metrics = format!("{}/metrics", tracker.url);
    let empty = scrape(&tracker_metrics);
    assert_eq!(empty.value("swarmcache_tracker_assets", &[]), 0.0);
    assert_eq!(tracker.get_json("/stats")["p2p_ratio"], Value::Null);

    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &[AWKWARD_NAME],
        &["--origin", "--metrics", "127.0.0.1:0"],
    );
    let id = origin.seeded[0].clone();
    let origin_metrics = origin.metrics.clone().expect("a metrics line");
    let asset = [("asset", id.as_str()), ("name", AWKWARD_NAME)];
    let source = |source| [asset[0], asset[1], ("source", source)];

    // A first client gets everything from the origin, then stays to seed.
    let mut first = spawn_get(
        d,
        &tracker.url,
        &id,
        "copy-1.bin",
        "client-1",
        &["--seed-for", "60s"],
    );
    let s1 = first.summary();
    assert_eq!(fs::read(d.join("copy-1.bin")).unwrap(), bytes);
    assert_eq!(s1["from_origin"], size, "{s1}");
    let served = scrape(&origin_metrics);
    let served_bytes = "swarmcache_peer_server_served_bytes_total";
    assert_eq!(served.value(served_bytes, &asset), size as f64);
    assert_eq!(
        served.value("swarmcache_peer_server_served_chunks_total", &asset),
        33.0
    );
    eventually(
        "the tracker hears of the origin's bytes",
        HEARD_WITHIN,
        || tracker.get_json("/stats")["origin_uploaded"] == size,
    );
    let swarm = &tracker.get_json("/stats")["swarms"][0];
    assert_eq!(swarm["p2p_ratio"], 0.0, "{swarm}");

    // A second client, download only, takes from the first (and the origin if it must).
    let s2 = get(
        d,
        &tracker.url,
        &id,
        "copy-2.bin",
        "client-2",
        &["--no-serve"],
    )
    .json();
    assert_eq!(fs::read(d.join("copy-2.bin")).unwrap(), bytes);
    let total = |field: &str| s1[field].as_u64().unwrap() + s2[field].as_u64().unwrap();
    let (from_peers, from_origin) = (total("from_peers"), total("from_origin"));
    assert!(from_peers > 0, "the second client used the first: {s2}");
    // What the tracker counts is what the servers say they sent: the origin's own counter
    // exactly, and at least what the clients kept. A chunk asked of two sources (a late or
    // slow one rescued elsewhere) is sent twice and kept once, so the servers' bytes may
    // exceed the clients' by such chunks, never by a copy of the file.
    let origin_sent = || scrape(&origin_metrics).value(served_bytes, &asset) as u64;
    let figures = |swarm: &Value| {
        let field = |f: &str| swarm[f].as_u64().unwrap_or(0);
        (field("peer_uploaded"), field("origin_uploaded"))
    };
    eventually(
        "the tracker hears of every byte the servers sent",
        HEARD_WITHIN,
        || {
            let (peer, origin) = figures(&tracker.get_json("/stats")["swarms"][0]);
            peer >= from_peers && origin >= from_origin && origin == origin_sent()
        },
    );
    let stats = tracker.get_json("/stats");
    let swarm = stats["swarms"][0].clone();
    let (peer_uploaded, origin_uploaded) = figures(&swarm);
    assert!(
        peer_uploaded + origin_uploaded < from_peers + from_origin + size,
        "the servers sent {peer_uploaded} + {origin_uploaded} bytes for {from_peers} + \
         {from_origin} the clients kept: {s2}"
    );
    assert_eq!(swarm["id"], id.as_str());
    assert_eq!(swarm["name"], AWKWARD_NAME);
    assert_eq!(swarm["uploaded"], peer_uploaded + origin_uploaded);
    let ratio = peer_uploaded as f64 / (peer_uploaded + origin_uploaded) as f64;
    let reported = swarm["p2p_ratio"].as_f64().unwrap();
    assert!((reported - ratio).abs() < 1e-12, "{reported} != {ratio}");
    assert_eq!(
        (&swarm["peers"], &swarm["seeders"], &swarm["origins"]),
        (&Value::from(2), &Value::from(2), &Value::from(1)),
        "the origin and the seeding client: {swarm}"
    );
    for field in ["peer_uploaded", "origin_uploaded", "p2p_ratio", "peers"] {
        assert_eq!(stats[field], swarm[field], "one swarm: global {field}");
    }

    let metrics = scrape(&tracker_metrics);
    let swarm_served = "swarmcache_tracker_swarm_served_bytes_total";
    assert_eq!(
        metrics.value(swarm_served, &source("peer")),
        peer_uploaded as f64
    );
    assert_eq!(
        metrics.value(swarm_served, &source("origin")),
        origin_uploaded as f64
    );
    assert_eq!(metrics.value("swarmcache_tracker_swarm_peers", &asset), 2.0);
    assert_eq!(
        metrics.value("swarmcache_tracker_swarm_seeders", &asset),
        2.0
    );
    assert_eq!(
        metrics.value("swarmcache_tracker_swarm_origins", &asset),
        1.0
    );
    assert_eq!(metrics.value("swarmcache_tracker_assets", &[]), 1.0);
    assert!(metrics.value("swarmcache_tracker_announces_total", &[]) >= 3.0);
    // The origin's own count agrees with what the tracker was told.
    assert_eq!(
        scrape(&origin_metrics).value(served_bytes, &asset),
        origin_uploaded as f64
    );

    // The first client leaves: the swarm shrinks, the totals stay.
    first.signal("INT");
    assert!(first.wait().success(), "{}", first.stderr());
    tracker.wait_for_peers(&id, 1);
    // Its leaving announce may still add the last of what it served; nothing drops.
    let after = &tracker.get_json("/stats")["swarms"][0];
    assert_eq!(
        after["origin_uploaded"], swarm["origin_uploaded"],
        "{after}"
    );
    let (peer_after, _) = figures(after);
    assert!(peer_after >= peer_uploaded, "{after} after {swarm}");
    let metrics = scrape(&tracker_metrics);
    assert_eq!(
        metrics.value(swarm_served, &source("peer")),
        peer_after as f64
    );
    assert_eq!(metrics.value("swarmcache_tracker_swarm_peers", &asset), 1.0);
}

#[test]
fn the_peer_server_counts_connections_refusals_and_protocol_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 65536, 42);
    let server = ServerProc::start(
        d,
        "store",
        None,
        &["f.bin"],
        &[
            "--max-conns",
            "2",
            "--max-conns-per-addr",
            "1",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    let url = server.metrics.clone().expect("a metrics line");
    let metric = |name: &str| scrape(&url).value(name, &[]);
    let read_reply = |stream: &mut TcpStream| {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        reply
    };

    // A session holds this address's only slot.
    let id = server.seeded[0].clone();
    let mut holder = crate::harness::connect(&server.addr);
    crate::harness::handshake(&mut holder, &id, vec![]);
    eventually("the slot is taken", Duration::from_secs(10), || {
        metric("swarmcache_peer_server_connections_active") == 1.0
    });
    let mut refused = crate::harness::connect(&server.addr);
    let reply = crate::harness::handshake(&mut refused, &id, vec![]);
    assert!(
        matches!(reply, swarmcache::wire::Message::Error { code: 4, .. }),
        "a busy error frame: {reply:?}"
    );
    assert_eq!(metric("swarmcache_peer_server_busy_refusals_total"), 1.0);
    drop(holder);
    eventually("the slot is free", Duration::from_secs(10), || {
        metric("swarmcache_peer_server_connections_active") == 0.0
    });

    // A frame header declaring 4 GiB is a protocol error.
    let mut garbage = TcpStream::connect(&server.addr).unwrap();
    garbage.write_all(&[0xff; 16]).unwrap();
    assert!(
        !read_reply(&mut garbage).is_empty(),
        "a bad-frame error frame"
    );
    eventually(
        "the protocol error is counted",
        Duration::from_secs(10),
        || metric("swarmcache_peer_server_protocol_errors_total") == 1.0,
    );
    let metrics = scrape(&url);
    assert_eq!(
        metrics.value("swarmcache_peer_server_connections_accepted_total", &[]),
        3.0
    );
    assert_eq!(
        metrics.value("swarmcache_peer_server_connections_failed_total", &[]),
        1.0,
        "the garbage (the holder left cleanly, the refused one was refused)"
    );
    assert_eq!(
        metrics.value("swarmcache_peer_server_connection_slots", &[]),
        2.0
    );
    // Nothing of the seeded asset was served, and it is listed all the same.
    let asset = [("asset", server.seeded[0].as_str()), ("name", "f.bin")];
    assert_eq!(
        metrics.value("swarmcache_peer_server_served_bytes_total", &asset),
        0.0
    );
}

#[test]
fn unknown_paths_are_404_json_errors_on_both_http_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tracker = TrackerProc::start(d, &[]);
    let server = ServerProc::start(d, "store", None, &[], &["--metrics", "127.0.0.1:0"]);
    let metrics = server.metrics.clone().expect("a metrics line");
    let server_base = metrics.strip_suffix("/metrics").unwrap();
    for url in [
        format!("{}/metric", tracker.url),
        format!("{}/metrics/x", tracker.url),
        format!("{server_base}/"),
        format!("{server_base}/stats"),
        format!("{metrics}/x"),
    ] {
        let answer = http_get(&url);
        assert_eq!(answer.status, 404, "GET {url}: {}", answer.body);
        assert_eq!(answer.content_type, "application/json", "GET {url}");
        let body: Value = serde_json::from_str(&answer.body).unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains("no such endpoint"), "GET {url}: {body}");
    }
    // The peer server's metrics are there all the same, before anything was served.
    let scraped = scrape(&metrics);
    assert_eq!(
        scraped.value("swarmcache_peer_server_connections_accepted_total", &[]),
        0.0
    );
}
