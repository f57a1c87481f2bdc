//! A fleet on one machine: an origin and eight clients of one asset, while the test
//! announces to the tracker itself (raw HTTP/JSON, as `curl` would) and checks that the
//! answers are compact (no bitfields) and carry the tracker's cadence.

use std::fs;
use std::time::{Duration, Instant};

use crate::harness::{Proc, RUN_TIMEOUT, ServerProc, TrackerProc, random_file, spawn_get};

/// The fields a peer of an answer may have: no bitfield of what it holds.
const PEER_FIELDS: [&str; 5] = ["peer_id", "addr", "complete", "origin", "last_seen_secs"];

/// POSTs `body` to the announce of `id` as `curl` would; the answer's body as JSON.
fn announce(tracker: &str, id: &str, body: &str) -> (usize, serde_json::Value) {
    let url = format!("{tracker}/assets/{id}/announce");
    let text = ureq::post(&url)
        .set("Content-Type", "application/json")
        .send_string(body)
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
        .into_string()
        .unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (text.len(), value)
}

/// Checks that every peer listed carries only [`PEER_FIELDS`]; how many are partial.
fn partial_peers(list: &serde_json::Value, what: &str) -> usize {
    let peers = list.as_array().unwrap_or_else(|| panic!("{what}: {list}"));
    for peer in peers {
        let fields = peer.as_object().unwrap();
        assert!(
            fields.keys().all(|k| PEER_FIELDS.contains(&k.as_str())),
            "{what}: a peer carries more than {PEER_FIELDS:?}: {peer}"
        );
        assert!(fields["complete"].is_boolean(), "{what}: {peer}");
    }
    peers.iter().filter(|p| p["complete"] == false).count()
}

#[test]
fn a_fleet_of_eight_gets_correct_copies_from_answers_without_bitfields() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 8 MiB at 4 MiB/s from the origin: the swarm lasts seconds, long enough to watch.
    let bytes = random_file(&d.join("f.bin"), 128 * 65536, 41);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::capped_origin(d, &tracker.url, "f.bin");
    let id = origin.seeded[0].clone();
    let mut fleet: Vec<Proc> = (0..8)
        .map(|n| {
            let (out, store) = (format!("copy-{n}.bin"), format!("client-{n}"));
            spawn_get(d, &tracker.url, &id, &out, &store, &["--seed-for", "3s"])
        })
        .collect();
    // An observer that only downloads (no addr: never handed out) announces while the
    // fleet runs, and lists the swarm.
    let observer = r#"{"peer_id":"observer","complete":false}"#;
    let deadline = Instant::now() + RUN_TIMEOUT;
    let (mut answers, mut partial_seen, mut largest) = (0, 0, 0);
    while fleet
        .iter_mut()
        .any(|c| c.exited_within(Duration::ZERO).is_none())
    {
        assert!(
            Instant::now() < deadline,
            "the fleet did not finish within {RUN_TIMEOUT:?}"
        );
        let (len, answer) = announce(&tracker.url, &id, observer);
        answers += 1;
        largest = largest.max(len);
        partial_seen += partial_peers(&answer["peers"], "announce answer");
        partial_peers(&answer["origins"], "announce answer's origins");
        let next = answer["next_announce_ms"].as_u64();
        assert!(
            next.is_some_and(|ms| (500..=20_000).contains(&ms)),
            "the answer names no cadence: {answer}"
        );
        assert!(
            answer.get("origin_share").is_none(),
            "not serving: {answer}"
        );
        let listed = tracker.get_json(&format!("/assets/{id}/peers"));
        partial_seen += partial_peers(&listed, "GET /assets/{id}/peers");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("{answers} announces during the fleet's run, the largest answer {largest} bytes");
    assert!(
        partial_seen > 0,
        "no partial peer was ever listed: the announces missed the swarm"
    );
    for (n, client) in fleet.iter_mut().enumerate() {
        let status = client.wait();
        assert!(
            status.success(),
            "client {n}: {status}: {}",
            client.stderr()
        );
        assert_eq!(
            fs::read(d.join(format!("copy-{n}.bin"))).unwrap(),
            bytes,
            "client {n}"
        );
    }
}
