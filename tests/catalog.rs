//! The catalog at its largest (issue 12): a publish of a maximum-size manifest while another
//! swarm's announces keep being answered, the manifest served back with its id, and kept
//! across a restart.

use std::time::{Duration, Instant};

use swarmcache::manifest::{MAX_CHUNKS, MIN_CHUNK_SIZE, Manifest, chunkify};

use crate::harness::TrackerProc;

/// The bound the issue names for an announce to another swarm during a publish.
const ANNOUNCE_BOUND: Duration = Duration::from_millis(100);
/// Most announces the test makes while the publish runs (one every 20 ms).
const MAX_ANNOUNCES: usize = 3_000;

/// A manifest of [`MAX_CHUNKS`] chunks of 16 KiB (16 GiB of content that never exists):
/// its hashes are any bytes, distinct per chunk.
fn maximum_manifest() -> Manifest {
    let chunks: Vec<[u8; 32]> = (0..MAX_CHUNKS)
        .map(|i| {
            let mut hash = [0xa5; 32];
            hash[..8].copy_from_slice(&i.to_le_bytes());
            hash[24..].copy_from_slice(&(i * 0x9e37_79b9).to_be_bytes());
            hash
        })
        .collect();
    let size = MAX_CHUNKS * MIN_CHUNK_SIZE as u64 - 1;
    Manifest::new("huge.img".into(), size, MIN_CHUNK_SIZE, None, chunks).unwrap()
}

/// POSTs an announce on `agent`'s kept-alive connection; returns how long the answer took.
fn announce(agent: &ureq::Agent, url: &str, body: &serde_json::Value) -> Duration {
    let started = Instant::now();
    let answer: serde_json::Value = agent
        .post(url)
        .send_json(body.clone())
        .unwrap_or_else(|e| panic!("announce {body} to {url}: {e}"))
        .into_json()
        .unwrap();
    let took = started.elapsed();
    assert!(answer.is_object(), "{answer}");
    took
}

/// The manifest `GET /assets/{id}` serves, parsed.
fn fetched(tracker: &str, id: &str) -> Manifest {
    let url = format!("{tracker}/assets/{id}");
    let response = ureq::get(&url)
        .timeout(Duration::from_secs(120))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.header("Content-Type"), Some("application/toml"));
    Manifest::read_from(response.into_reader()).unwrap()
}

#[test]
fn a_maximum_size_publish_leaves_another_swarms_announces_answered_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tracker = TrackerProc::start(d, &[]);
    let small = chunkify(&[9u8; 50_000][..], "small.bin", MIN_CHUNK_SIZE).unwrap();
    let small_id = small.id().to_string();
    ureq::post(&format!("{}/assets", tracker.url))
        .send_string(&small.to_toml())
        .unwrap();
    let huge = maximum_manifest();
    let huge_id = huge.id().to_string();
    let text = huge.to_toml();
    assert!(text.len() > 70 << 20, "{} bytes", text.len());

    let announce_url = format!("{}/assets/{small_id}/announce", tracker.url);
    let origin = serde_json::json!({
        "peer_id": "origin", "addr": "127.0.0.1:40001", "origin": true, "complete": true,
    });
    let downloader = serde_json::json!({"peer_id": "downloader", "addr": "127.0.0.1:40002"});
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    // The connection is open and both peers known before the publish starts.
    announce(&agent, &announce_url, &origin);
    announce(&agent, &announce_url, &downloader);

    let (publish_took, took) = std::thread::scope(|s| {
        let publisher = s.spawn(|| {
            let started = Instant::now();
            let response = ureq::post(&format!("{}/assets", tracker.url))
                .timeout(Duration::from_secs(300))
                .send_string(&text)
                .unwrap_or_else(|e| panic!("publishing the maximum-size manifest: {e}"));
            assert_eq!(response.status(), 201);
            let answer: serde_json::Value = response.into_json().unwrap();
            assert_eq!(answer["id"], huge_id.as_str());
            assert_eq!(answer["chunks"], MAX_CHUNKS);
            started.elapsed()
        });
        let mut took = Vec::new();
        while !publisher.is_finished() && took.len() < MAX_ANNOUNCES {
            for body in [&origin, &downloader] {
                took.push(announce(&agent, &announce_url, body));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (publisher.join().unwrap(), took)
    });
    let slowest = took.iter().max().copied().unwrap_or_default();
    eprintln!(
        "publish of {} MiB took {publish_took:?}; {} announces meanwhile, slowest {slowest:?}",
        text.len() >> 20,
        took.len()
    );
    assert!(
        took.len() >= 10,
        "the publish ({publish_took:?}) was too quick to overlap announces: {took:?}"
    );
    assert!(
        slowest < ANNOUNCE_BOUND,
        "an announce to another swarm waited {slowest:?} during the publish: {took:?}"
    );

    let served = fetched(&tracker.url, &huge_id);
    assert_eq!(served.id().to_string(), huge_id);
    assert_eq!(served, huge);

    let mut tracker = tracker;
    tracker.proc.kill();
    let started = Instant::now();
    let tracker = TrackerProc::start(d, &[]);
    eprintln!("restart listened after {:?}", started.elapsed());
    let listed = tracker.get_json("/assets");
    let mut ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["id"].as_str().unwrap())
        .collect();
    ids.sort();
    let mut expected = vec![huge_id.as_str(), small_id.as_str()];
    expected.sort();
    assert_eq!(ids, expected, "{listed}");
    assert_eq!(fetched(&tracker.url, &huge_id).id().to_string(), huge_id);
    assert_eq!(fetched(&tracker.url, &small_id), small);
}
