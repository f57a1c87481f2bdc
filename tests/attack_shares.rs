//! Origin-share theft (issue 13): many fake downloaders from one address announce empty
//! bitfields every second, as a viewer token or any open-mode host can. The origin shares
//! must still reach downloaders that fetch them: a newcomer from another address gets a
//! share, and an honest crowd's origin traffic stays near one copy of the file.
//!
//! The fakes and the newcomer announce from their own loopback addresses (127.0.0.2 and
//! 127.0.0.3; Linux routes all of 127/8 to `lo`), so the tracker tells them apart from the
//! crowd at 127.0.0.1 as it would tell hosts apart.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::harness::{Proc, RUN_TIMEOUT, ServerProc, TrackerProc, random_file, spawn_get};

/// Fake downloaders: well within the tracker's 100 announces a second per address at one
/// announce a second each, and far more than the 128 chunks' worth of shares they would
/// need to take every chunk under an even split.
const FAKES: usize = 60;
/// How often each fake announces (the issue's attackers announced every second).
const FAKE_EVERY: Duration = Duration::from_secs(1);
/// The honest crowd.
const CROWD: usize = 4;
/// Origin bytes the crowd may cost, in copies of the file: one copy plus room for the
/// chunks fetched twice around the edges of the plan (1.03-1.12 F measured without fakes on
/// a loaded machine). Measured before the fix in this test: 1.01-1.10 F, the crowd 3.9-4.3 s
/// (its clients' fall-back to the origin kept the bytes down, at the cost of time); after:
/// 1.00-1.11 F in 2.2-2.4 s. With the default 16 peers per answer the fakes crowd the
/// crowd out of its own peer lists, and it was 1.59 F before and 1.47-1.73 F after; since
/// answers hand out peers holding nothing last, 1.35-1.40 F (three runs): that is peer
/// selection, not the shares (SECURITY.md, "Fake peers are handed out last, but still handed out"). When the
/// tracker's answers stopped starting at the same peer (issue 14), the crowd met only fakes
/// among the 8 peers it took of each answer: 1.33-1.43 F, until a client replaced peers
/// that hang up from the rest of the answer: 1.00 F in 2.1-2.4 s (three runs).
const MAX_ORIGIN_COPIES: f64 = 1.3;
/// The most chunks the fakes may hold in their shares at once: one identity's first grant
/// (`tracker::plan::IDENTITY_FIRST_GRANT`). Before the fix they held all 128.
const MAX_FAKE_CHUNKS: usize = 16;

/// POSTs `body` to `path` of the tracker at `tracker`, from a socket bound to `from`, as
/// a client on another host would; the answer's JSON body. `None` for anything but a 200.
fn post_from(
    from: IpAddr,
    tracker: SocketAddr,
    path: &str,
    body: &str,
) -> Option<serde_json::Value> {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).ok()?;
    bind(&fd, &SocketAddr::new(from, 0)).ok()?;
    connect(&fd, &tracker).ok()?;
    let mut stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(5)))
        .ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {tracker}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).ok()?;
    let answer = String::from_utf8(answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    serde_json::from_str(body).ok()
}

/// The chunks of an answer's `origin_share` runs, as a set of the 128 chunks.
fn share_of(answer: &serde_json::Value) -> u128 {
    let runs = answer["origin_share"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut set = 0u128;
    for run in &runs {
        let (a, b) = (run[0].as_u64().unwrap_or(0), run[1].as_u64().unwrap_or(0));
        for i in a..b.min(128) {
            set |= 1 << i;
        }
    }
    set
}

/// An announce of an empty bitfield of 128 chunks, serving at `addr`.
fn empty_announce(peer_id: &str, addr: SocketAddr, event: &str) -> String {
    format!(
        r#"{{"peer_id":"{peer_id}","addr":"{addr}","have":"{}","complete":false{event}}}"#,
        "0".repeat(32)
    )
}

#[test]
fn fake_downloaders_from_one_address_do_not_take_the_origin_shares() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 128 chunks of 64 KiB at 4 MiB/s: the origin sends one copy in 2 s.
    let bytes = random_file(&d.join("f.bin"), 128 * 65536, 23);
    let size = bytes.len() as u64;
    // The fakes are handed out as peers too, and a client that meets only fakes asks the
    // origin (the clients' side of issue 13, not this test's): with room for every peer in
    // each answer, the rest of an answer beyond the 8 peers a client connects to holds
    // the crowd, a client replaces the fakes that hang up from it, and the origin's
    // traffic measures the shares alone.
    let tracker = TrackerProc::start(d, &["--max-peers", "80"]);
    let tracker_addr: SocketAddr = tracker.url.trim_start_matches("http://").parse().unwrap();
    let origin = ServerProc::capped_origin(d, &tracker.url, "f.bin");
    let id = origin.seeded[0].clone();
    let path = format!("/assets/{id}/announce");

    // The fakes serve at one address that accepts and hangs up, so that they count as
    // reachable; they never fetch anything.
    let fake_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let listener = TcpListener::bind((fake_ip, 0)).unwrap();
    let fake_addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    // Per fake, the share its latest answer named.
    let held = Arc::new(Mutex::new(vec![0u128; FAKES]));
    let (most_held, answered) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let mut threads = vec![{
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => drop(conn),
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        })
    }];
    for n in 0..FAKES {
        let (stop, held, most_held, answered, path) = (
            stop.clone(),
            held.clone(),
            most_held.clone(),
            answered.clone(),
            path.clone(),
        );
        threads.push(thread::spawn(move || {
            // Spread over the second, as independent attackers would be.
            thread::sleep(FAKE_EVERY * n as u32 / FAKES as u32);
            let body = empty_announce(&format!("fake-{n}"), fake_addr, "");
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Some(answer) = post_from(fake_ip, tracker_addr, &path, &body) {
                    answered.fetch_add(1, Ordering::Relaxed);
                    let mut held = held.lock().unwrap();
                    held[n] = share_of(&answer);
                    let union = held.iter().fold(0, |all, s| all | s);
                    most_held.fetch_max(union.count_ones() as usize, Ordering::Relaxed);
                }
                thread::sleep(FAKE_EVERY);
            }
        }));
    }
    // Every fake has announced a few times: each has been handed what it will get.
    let settle = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::Relaxed) < 4 * FAKES {
        assert!(
            Instant::now() < settle,
            "the fakes' announces were not answered"
        );
        thread::sleep(Duration::from_millis(50));
    }

    // A newcomer from a third address, before the crowd: the chunks are all missing, and
    // some of them are its to take from the origin. It leaves at once.
    let newcomer_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let newcomer_addr = SocketAddr::new(newcomer_ip, 9);
    let answer = post_from(
        newcomer_ip,
        tracker_addr,
        &path,
        &empty_announce("newcomer", newcomer_addr, ""),
    )
    .expect("the newcomer's announce was answered");
    let newcomer_share = share_of(&answer).count_ones();
    post_from(
        newcomer_ip,
        tracker_addr,
        &path,
        &empty_announce("newcomer", newcomer_addr, r#","event":"stopped""#),
    );

    // The honest crowd, while the fakes keep announcing.
    let started = Instant::now();
    let mut crowd: Vec<Proc> = (0..CROWD)
        .map(|n| {
            let (out, store) = (format!("copy-{n}.bin"), format!("client-{n}"));
            spawn_get(d, &tracker.url, &id, &out, &store, &["--seed-for", "5s"])
        })
        .collect();
    let summaries: Vec<serde_json::Value> = crowd.iter_mut().map(Proc::summary).collect();
    let crowd_time = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let mut from_origin = 0;
    for (n, s) in summaries.iter().enumerate() {
        assert_eq!(
            fs::read(d.join(format!("copy-{n}.bin"))).unwrap(),
            bytes,
            "client {n}"
        );
        from_origin += s["from_origin"].as_u64().unwrap();
    }
    let copies = from_origin as f64 / size as f64;
    let most_held = most_held.load(Ordering::Relaxed);
    eprintln!(
        "{FAKES} fakes: at most {most_held} of 128 chunks in their shares; a newcomer's share \
         {newcomer_share} chunks; the crowd of {CROWD} took {crowd_time:.1?} and {copies:.2} F \
         from the origin"
    );
    assert!(
        newcomer_share > 0,
        "a newcomer got no origin share while {FAKES} fakes held up to {most_held} chunks"
    );
    assert!(
        most_held <= MAX_FAKE_CHUNKS,
        "{FAKES} fakes that never fetch held up to {most_held} chunks (bound {MAX_FAKE_CHUNKS})"
    );
    assert!(
        copies <= MAX_ORIGIN_COPIES,
        "the origin sent {copies:.2} copies of the file (bound {MAX_ORIGIN_COPIES}) while \
         {FAKES} fakes held up to {most_held} chunks: {summaries:?}"
    );
}
