//! Addresses and connection handling: wildcard listeners, IPv6, busy servers, bad frames.

use std::fs;
use std::time::Duration;

use swarmcache::manifest::AssetId;
use swarmcache::wire::{self, MAX_FRAME, Message, PROTOCOL_VERSION, code};

use crate::harness::{ServerProc, TrackerProc, connect, eventually, get, random_file};

#[test]
fn a_wildcard_listener_is_announced_at_the_address_the_tracker_sees() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 3 * 65536, 9);
    let tracker = TrackerProc::start(d, &[]);
    let server = ServerProc::start_on(
        d,
        "0.0.0.0:0",
        "s",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin"],
    );
    let id = server.seeded[0].clone();
    let port = server.addr.rsplit(':').next().unwrap().to_string();
    let mut peers = serde_json::Value::Null;
    eventually("the server to announce", Duration::from_secs(10), || {
        peers = tracker.get_json(&format!("/assets/{id}/peers"));
        peers.as_array().unwrap().len() == 1
    });
    assert_eq!(peers[0]["addr"], format!("127.0.0.1:{port}"), "{peers}");
    get(d, &tracker.url, &id, "copy.bin", "client", &[]).ok();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
}

#[test]
fn ipv6_addresses_work_like_ipv4_ones() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: this machine has no IPv6 loopback");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 3 * 65536 + 1, 10);
    let tracker = TrackerProc::start_on(d, "[::1]:0", &[]);
    assert!(tracker.url.starts_with("http://[::1]:"), "{}", tracker.url);
    let server = ServerProc::start_on(
        d,
        "[::1]:0",
        "s",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin"],
    );
    let id = server.seeded[0].clone();
    assert!(server.addr.starts_with("[::1]:"), "{}", server.addr);
    get(d, &tracker.url, &id, "copy.bin", "client", &[]).ok();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
}

fn hello(asset: &str) -> Message<'static> {
    Message::Hello {
        version: PROTOCOL_VERSION,
        asset: asset.parse::<AssetId>().unwrap(),
        ticket: vec![],
    }
}

#[test]
fn a_full_server_answers_busy_instead_of_queueing() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 65536, 11);
    let server = ServerProc::start(d, "s", None, &["f.bin"], &["--max-conns", "1"]);
    let mut first = connect(&server.addr);
    wire::write_message(&mut first, &hello(&server.seeded[0])).unwrap();
    assert!(matches!(
        wire::read_message(&mut first, MAX_FRAME).unwrap(),
        Message::Welcome { chunk_count: 1, .. }
    ));
    // A session in use (it asked for a chunk less than a second ago) keeps its slot.
    wire::write_message(&mut first, &Message::Request { index: 0 }).unwrap();
    assert!(matches!(
        wire::read_message(&mut first, MAX_FRAME).unwrap(),
        Message::Chunk { index: 0, .. }
    ));
    let mut second = connect(&server.addr);
    wire::write_message(&mut second, &hello(&server.seeded[0])).unwrap();
    match wire::read_message(&mut second, MAX_FRAME).unwrap() {
        Message::Error { code: c, message } => {
            assert_eq!(c, code::SERVER_BUSY);
            assert!(message.contains("busy"), "{message}");
        }
        other => panic!("expected a busy error, got {other:?}"),
    }
    // The first connection is still served.
    wire::write_message(&mut first, &Message::Request { index: 0 }).unwrap();
    assert!(matches!(
        wire::read_message(&mut first, MAX_FRAME).unwrap(),
        Message::Chunk { index: 0, .. }
    ));
}

#[test]
fn bad_frames_get_an_error_frame_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 2 * 65536, 12);
    let server = ServerProc::start(d, "s", None, &["f.bin"], &[]);
    let id = &server.seeded[0];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "garbage before the handshake",
            b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            code::BAD_FRAME,
        ),
        (
            "an oversized length",
            vec![0x7f, 0xff, 0xff, 0xff, 0x01],
            code::BAD_FRAME,
        ),
        ("an unknown type", vec![0, 0, 0, 1, 0x7e], code::BAD_FRAME),
        (
            "a request before hello",
            vec![0, 0, 0, 5, 0x05, 0, 0, 0, 0],
            code::BAD_REQUEST,
        ),
    ];
    for (what, bytes, expected) in cases {
        let mut s = connect(&server.addr);
        std::io::Write::write_all(&mut s, &bytes).unwrap();
        match wire::read_message(&mut s, MAX_FRAME) {
            Ok(Message::Error { code: c, .. }) => assert_eq!(c, expected, "{what}"),
            other => panic!("{what}: expected an error frame, got {other:?}"),
        }
    }
    let mut s = connect(&server.addr);
    wire::write_message(&mut s, &hello(id)).unwrap();
    wire::read_message(&mut s, MAX_FRAME).unwrap();
    wire::write_message(&mut s, &Message::Request { index: 2 }).unwrap();
    match wire::read_message(&mut s, MAX_FRAME) {
        Ok(Message::Error { code: c, .. }) => {
            assert_eq!(c, code::BAD_REQUEST, "out-of-range chunk")
        }
        other => panic!("expected an error for chunk 2 of 2, got {other:?}"),
    }
    let mut unknown = connect(&server.addr);
    wire::write_message(&mut unknown, &hello(&"ab".repeat(32))).unwrap();
    assert!(matches!(
        wire::read_message(&mut unknown, MAX_FRAME),
        Ok(Message::Error {
            code: code::UNKNOWN_ASSET,
            ..
        })
    ));
    let mut good = connect(&server.addr);
    wire::write_message(&mut good, &hello(id)).unwrap();
    assert!(matches!(
        wire::read_message(&mut good, MAX_FRAME),
        Ok(Message::Welcome { chunk_count: 2, .. })
    ));
}

#[test]
fn an_idle_tracker_keeps_accepting_connections() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--http-timeout", "1s"]);
    // Idle for longer than the HTTP timeout. (A receive timeout on the listening socket
    // would also bound accept(), and a server that gave up after a failed accept would
    // go deaf.)
    std::thread::sleep(Duration::from_millis(2500));
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let answer: serde_json::Value = agent
        .get(&format!("{}/health", tracker.url))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    assert_eq!(answer["status"], "ok");
}
