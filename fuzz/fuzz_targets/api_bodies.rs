//! The tracker's JSON API on arbitrary bodies. Each input is parsed in process into the
//! request type the tracker reads and the answer types its clients read, and is sent as the
//! body of `POST /assets/{id}/announce` to a real tracker on 127.0.0.1 (one per fuzzing
//! process, with a published 100-chunk asset). The tracker must answer every body, with 200
//! only for a request that meets the documented rules (PROTOCOL.md) and a JSON error with a
//! 4xx status otherwise, never a 5xx or a dropped connection.
#![no_main]

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use swarmcache::api::{
    AnnounceRequest, AnnounceResponse, AssetSummary, ErrorBody, PeerInfo, PublishResponse, Stats,
};
use swarmcache::bitfield::Bitfield;
use swarmcache::manifest::{AssetId, MIN_CHUNK_SIZE, Manifest};
use swarmcache::tracker::{Tracker, TrackerConfig};
use swarmcache::tracker_client::TrackerClient;

/// Chunks of the published asset: enough for multi-byte bitfields and origin shares.
const CHUNKS: u32 = 100;

struct Live {
    announce_url: String,
    agent: ureq::Agent,
}

/// The tracker this process fuzzes, started on first use and left running until exit.
fn live() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        // The catalog is read once at start and written on publish only; the announces
        // fuzzed here never touch it, so its directory can go as soon as the asset is in.
        let data = tempfile::tempdir().expect("a temporary directory");
        let config = TrackerConfig {
            // Fuzzed peers leave their swarm after a second, so it stays small.
            peer_timeout: Duration::from_secs(1),
            // Every request comes from 127.0.0.1: the per-address limits would only
            // measure themselves.
            announce_rate: 0,
            publish_rate: 0,
            max_conns_per_ip: 0,
            ..TrackerConfig::new("127.0.0.1:0".parse().unwrap(), data.path().to_path_buf())
        };
        let tracker = Tracker::bind(&config).expect("binding a tracker on 127.0.0.1:0");
        let url = format!("http://{}", tracker.local_addr());
        std::thread::spawn(move || tracker.serve());
        let hash = [7; 32];
        let chunks = vec![hash; CHUNKS as usize];
        let size = CHUNKS as u64 * MIN_CHUNK_SIZE as u64;
        let manifest = Manifest::new("fuzz".into(), size, MIN_CHUNK_SIZE, Some(hash), chunks).unwrap();
        TrackerClient::new(&url)
            .and_then(|client| client.publish(&manifest))
            .expect("publishing the fuzzed asset");
        Live {
            announce_url: format!("{url}/assets/{}/announce", manifest.id()),
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(10))
                .build(),
        }
    })
}

/// The rules PROTOCOL.md gives for an announce the tracker accepts.
fn acceptable(req: &AnnounceRequest) -> bool {
    let id_ok = (1..=64).contains(&req.peer_id.len())
        && req
            .peer_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let have_ok = req.complete
        || req
            .have
            .as_ref()
            .is_none_or(|hex| Bitfield::from_hex(CHUNKS, hex).is_ok());
    let addr_ok = req
        .addr
        .as_ref()
        .is_none_or(|a| a.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0));
    id_ok && have_ok && addr_ok
}

fuzz_target!(|data: &[u8]| {
    // What a client makes of a tracker's answers, whatever the tracker sends.
    let _ = serde_json::from_slice::<AnnounceResponse>(data);
    let _ = serde_json::from_slice::<Vec<PeerInfo>>(data);
    let _ = serde_json::from_slice::<Vec<AssetSummary>>(data);
    let _ = serde_json::from_slice::<PublishResponse>(data);
    let _ = serde_json::from_slice::<Stats>(data);
    let _ = serde_json::from_slice::<ErrorBody>(data);
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(id) = text.parse::<AssetId>()
    {
        assert_eq!(id.to_string().parse::<AssetId>(), Ok(id));
    }

    // What the tracker makes of it.
    let request = std::str::from_utf8(data)
        .ok()
        .and_then(|text| serde_json::from_str::<AnnounceRequest>(text).ok());
    if let Some(req) = &request {
        let again = serde_json::to_string(req).expect("an announce serializes");
        assert_eq!(
            &serde_json::from_str::<AnnounceRequest>(&again).unwrap(),
            req
        );
    }
    let live = live();
    let answer = live
        .agent
        .post(&live.announce_url)
        .set("Content-Type", "application/json")
        .send_bytes(data);
    let (status, body) = match answer {
        Ok(response) => (response.status(), response.into_string()),
        Err(ureq::Error::Status(status, response)) => (status, response.into_string()),
        Err(e) => panic!("the tracker did not answer: {e}"),
    };
    let body = body.expect("a readable answer");
    match status {
        200 => {
            let req = request.expect("200 only for an announce that parses");
            assert!(acceptable(&req), "accepted against the rules: {req:?}");
            let answer: AnnounceResponse = serde_json::from_str(&body).expect("a JSON answer");
            assert_eq!(answer.chunk_count, CHUNKS);
            assert!(answer.peers.iter().all(|p| p.peer_id != req.peer_id));
            assert!(answer.peers.iter().all(|p| !p.origin));
            if let Some(share) = &answer.origin_share {
                Bitfield::from_hex(CHUNKS, share).expect("an origin share of the asset's size");
            }
            if let Some(addr) = &answer.your_addr {
                addr.parse::<SocketAddr>().expect("your_addr is ip:port");
            }
        }
        400 => {
            let error: ErrorBody = serde_json::from_str(&body).expect("a JSON error");
            assert!(!error.error.is_empty());
            if let Some(req) = &request {
                assert!(
                    !acceptable(req),
                    "refused within the rules: {req:?}: {}",
                    error.error
                );
            }
        }
        other => panic!("status {other} for an announce: {body}"),
    }
});
