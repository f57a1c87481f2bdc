//! Swarming: clients serve while they download, the tracker splits the origin's work,
//! and rate caps hold.

use std::fs;
use std::io::Write;
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use swarmcache::wire::{MAX_FRAME, Message, read_message};

use crate::harness::{
    Proc, ServerProc, TrackerProc, connect, get, handshake, random_file, spawn_get,
};

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
    let origin = ServerProc::capped_origin(d, &tracker.url, "f.bin");
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

/// A raw connection to the peer server at `addr`, past the handshake for asset `id`, its
/// reads bounded to 10 s.
fn wire_session(addr: &str, id: &str) -> TcpStream {
    let mut stream = connect(addr);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let welcome = handshake(&mut stream, id, vec![]);
    assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");
    stream
}

/// The frames of `messages`, back to back.
fn frames(messages: impl IntoIterator<Item = Message<'static>>) -> Vec<u8> {
    let mut out = Vec::new();
    for m in messages {
        m.encode(&mut out);
    }
    out
}

#[test]
fn a_cancel_drops_a_queued_request_and_replies_keep_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 8 * 65536, 29);
    // Four 64 KiB chunks a second: requests queue behind one another.
    let server = ServerProc::start(
        d,
        "origin",
        None,
        &["f.bin"],
        &["--max-upload-rate", "256KiB"],
    );
    let mut stream = wire_session(&server.addr, &server.seeded[0]);
    let requests = (0..4).map(|index| Message::Request { index });
    // Sent with the requests: they reach the server while chunk 0 waits for its rate.
    let cancels = [Message::Cancel { index: 3 }, Message::Cancel { index: 2 }];
    stream.write_all(&frames(requests.chain(cancels))).unwrap();
    let mut replies = Vec::new();
    for _ in 0..4 {
        replies.push(match read_message(&mut stream, MAX_FRAME).unwrap() {
            Message::Chunk { index, data } => {
                let at = index as usize * 65536;
                assert_eq!(*data, bytes[at..at + 65536], "chunk {index}");
                format!("chunk {index}")
            }
            other => format!("{other:?}"),
        });
    }
    assert_eq!(
        replies,
        [
            "chunk 0",
            "chunk 1",
            "Cancelled { index: 2 }",
            "Cancelled { index: 3 }"
        ]
    );
    // A cancel of a chunk already sent gets no reply; the connection serves on.
    stream
        .write_all(&frames([
            Message::Cancel { index: 0 },
            Message::Request { index: 5 },
        ]))
        .unwrap();
    match read_message(&mut stream, MAX_FRAME).unwrap() {
        Message::Chunk { index: 5, data } => assert_eq!(*data, bytes[5 * 65536..6 * 65536]),
        other => panic!("expected chunk 5, got {other:?}"),
    }
}

#[test]
fn a_client_that_stops_reading_does_not_keep_the_upload_slot() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let chunks = 512;
    let bytes = random_file(&d.join("f.bin"), chunks * 65536, 31);
    let server = ServerProc::start(d, "origin", None, &["f.bin"], &["--upload-slots", "1"]);
    let id = &server.seeded[0];
    // The greedy client asks for all 32 MiB, more than the socket buffers hold, and reads
    // nothing: a send to it blocks with the only slot taken.
    let mut greedy = wire_session(&server.addr, id);
    let requests = (0..chunks as u32).map(|index| Message::Request { index });
    greedy.write_all(&frames(requests)).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    // Another client is still served.
    let mut other = wire_session(&server.addr, id);
    other
        .write_all(&frames([Message::Request { index: 7 }]))
        .unwrap();
    match read_message(&mut other, MAX_FRAME) {
        Ok(Message::Chunk { index: 7, data }) => assert_eq!(*data, bytes[7 * 65536..8 * 65536]),
        other => panic!("expected chunk 7, got {other:?}"),
    }
    drop(greedy);
}

#[test]
fn a_half_sent_frame_neither_holds_the_slot_nor_loses_the_replies_of_a_closing_client() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 8 * 65536, 37);
    let chunk = |i: usize| bytes[i * 65536..(i + 1) * 65536].to_vec();
    // One slot, and 250 ms per chunk: each request waits its turn holding the slot.
    let server = ServerProc::start(
        d,
        "origin",
        None,
        &["f.bin"],
        &["--upload-slots", "1", "--max-upload-rate", "256KiB"],
    );
    let id = &server.seeded[0];
    // The first client asks for two chunks and starts a third request it never finishes.
    let mut stuck = wire_session(&server.addr, id);
    let mut sent = frames([Message::Request { index: 0 }, Message::Request { index: 1 }]);
    sent.extend_from_slice(&[0, 0, 0]);
    stuck.write_all(&sent).unwrap();
    // The second asks for two chunks and closes its sending side at once.
    let mut closing = wire_session(&server.addr, id);
    closing
        .write_all(&frames([
            Message::Request { index: 2 },
            Message::Request { index: 3 },
        ]))
        .unwrap();
    closing.shutdown(Shutdown::Write).unwrap();
    for (stream, index) in [(&stuck, 0), (&closing, 2), (&stuck, 1), (&closing, 3)] {
        match read_message(&mut &*stream, MAX_FRAME) {
            Ok(Message::Chunk { index: i, data }) if i == index => {
                assert_eq!(data, chunk(index as usize))
            }
            other => panic!("expected chunk {index}, got {other:?}"),
        }
    }
}

/// The complete, non-origin peers the tracker lists for `id`.
fn complete_peers(tracker: &TrackerProc, id: &str) -> usize {
    tracker
        .peers(id)
        .iter()
        .filter(|p| p["complete"] == true && p["origin"] == false)
        .count()
}

/// A get that starts first and finishes first, and one that starts once the first holds
/// half the file and fetches slowly (512 KiB/s, 8 MiB: 16 s), from it and from an origin at
/// 4 MiB/s. The first waits on the second only for chunks of the second's origin share
/// (a few seconds at most, then it takes them from the origin), so it finishes long before.
fn early_and_late(
    d: &std::path::Path,
    early: &[&str],
) -> (TrackerProc, ServerProc, Vec<u8>, Proc, Proc) {
    let bytes = random_file(&d.join("f.bin"), 128 * 65536, 41);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::capped_origin(d, &tracker.url, "f.bin");
    let id = origin.seeded[0].clone();
    let first = client(d, 0, &tracker.url, &id, early);
    crate::harness::eventually(
        "the first get to hold half the file",
        Duration::from_secs(60),
        || crate::harness::stored_chunks(&d.join("client-0"), &id) >= 64,
    );
    let late = ["--max-download-rate", "512KiB", "--linger", "0s"];
    let second = client(d, 1, &tracker.url, &id, &late);
    (tracker, origin, bytes, first, second)
}

#[test]
fn a_finished_get_serves_on_while_a_later_get_fetches_from_it_and_then_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A bound far above the test's length: what ends the lingering is its idle rule.
    let (tracker, mut origin, bytes, mut first, mut second) =
        early_and_late(d, &["--linger", "120s"]);
    let id = origin.seeded[0].clone();
    let summary = first.summary();
    assert_eq!(fs::read(d.join("copy-0.bin")).unwrap(), bytes, "{summary}");
    // From here on the second get has only the first to fetch from.
    origin.proc.kill();
    assert!(
        first.exited_within(Duration::ZERO).is_none(),
        "the first get left while the second still fetched from it: {}",
        first.stderr()
    );
    crate::harness::eventually(
        "the lingering get listed by the tracker as complete",
        Duration::from_secs(10),
        || complete_peers(&tracker, &id) == 1,
    );
    let late = second.summary();
    assert_eq!(fs::read(d.join("copy-1.bin")).unwrap(), bytes, "{late}");
    assert!(late["from_peers"].as_u64().unwrap() > 0, "{late}");
    assert!(second.wait().success(), "{}", second.stderr());
    // Nobody fetches any more: it leaves long before its bound, and says "stopped".
    let status = first.exited_within(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first get, 10 s after the last peer finished: {status:?}\n{}",
        first.stderr()
    );
    assert!(
        first.stderr().contains("until peers stopped fetching"),
        "{}",
        first.stderr()
    );
    crate::harness::eventually(
        "the lingering get gone from the tracker's list",
        Duration::from_secs(10),
        || complete_peers(&tracker, &id) == 0,
    );
}

#[test]
fn a_finished_get_with_linger_0s_exits_at_once_although_a_peer_fetches_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_tracker, _origin, bytes, mut first, mut second) = early_and_late(d, &["--linger", "0s"]);
    let summary = first.summary();
    assert_eq!(fs::read(d.join("copy-0.bin")).unwrap(), bytes, "{summary}");
    let status = first.exited_within(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first get, 5 s after its summary: {status:?}\n{}",
        first.stderr()
    );
    assert!(
        second.exited_within(Duration::ZERO).is_none(),
        "the second get was to be still fetching, or this shows nothing: {}\nthe first: {summary}",
        second.stderr()
    );
    second.summary();
    assert!(second.wait().success(), "{}", second.stderr());
    assert_eq!(fs::read(d.join("copy-1.bin")).unwrap(), bytes);
}

#[test]
fn ctrl_c_while_a_finished_get_serves_on_exits_promptly_with_its_success() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_tracker, _origin, bytes, mut first, mut second) =
        early_and_late(d, &["--linger", "120s"]);
    first.summary();
    assert!(
        first.exited_within(Duration::ZERO).is_none(),
        "the first get was to be serving the second: {}",
        first.stderr()
    );
    first.signal("INT");
    let status = first.exited_within(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first get, 5 s after Ctrl-C: {status:?}\n{}",
        first.stderr()
    );
    assert_eq!(fs::read(d.join("copy-0.bin")).unwrap(), bytes);
    second.summary();
    assert!(second.wait().success(), "{}", second.stderr());
    assert_eq!(fs::read(d.join("copy-1.bin")).unwrap(), bytes);
}
