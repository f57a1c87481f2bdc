//! Clients among liars (issue 13): fake peers, registered as complete through the tracker's
//! announce, that stay silent, stall after their `Welcome`, or send correct bytes at
//! 20 KB/s. A `get` with an origin finishes correctly, near its normal time, and keeps
//! its connections to them under the client's cap.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use swarmcache::bitfield::Bitfield;
use swarmcache::wire::{MAX_FRAME, Message, PROTOCOL_VERSION, read_message, write_message};

use crate::harness::{ServerProc, TrackerProc, get, random_bytes};

/// The client's cap on peer connections open at once (`MAX_PEER_CONNS` in the plan).
const PEER_CONN_CAP: usize = 8;
/// The chunk size the harness publishes with.
const CHUNK: usize = 64 << 10;
/// A trickling fake sends this many bytes...
const TRICKLE_PIECE: usize = 2_000;
/// ...this often: 20 KB/s.
const TRICKLE_PAUSE: Duration = Duration::from_millis(100);
/// Bound on how long a fake keeps a connection the client neither uses nor closes.
const FAKE_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How a fake peer behaves once connected to.
#[derive(Clone, Copy, Debug)]
enum Lie {
    /// Reads, never writes.
    Silent,
    /// Answers the `Hello` with a `Welcome`, then nothing.
    StallAfterWelcome,
    /// Shakes hands, says it holds everything, and sends each chunk asked for, correct, at
    /// 20 KB/s.
    Trickle,
}

/// Connections the fakes accepted: open now, the most open at once, and in all.
#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    peak: AtomicUsize,
    total: AtomicUsize,
}

/// Fake peers listening on 127.0.0.1, each with its lie, served by one accepting thread
/// and a thread per connection.
struct Fakes {
    addrs: Vec<(String, Lie)>,
    counts: Arc<Counts>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Fakes {
    fn start(lies: &[Lie], content: Arc<Vec<u8>>) -> Fakes {
        let listeners: Vec<(TcpListener, Lie)> = lies
            .iter()
            .map(|&lie| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.set_nonblocking(true).unwrap();
                (l, lie)
            })
            .collect();
        let addrs = listeners
            .iter()
            .map(|(l, lie)| (l.local_addr().unwrap().to_string(), *lie))
            .collect();
        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = {
            let (counts, stop) = (Arc::clone(&counts), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let mut idle = true;
                    for (listener, lie) in &listeners {
                        let Ok((stream, _)) = listener.accept() else {
                            continue;
                        };
                        idle = false;
                        let open = counts.open.fetch_add(1, Ordering::SeqCst) + 1;
                        counts.peak.fetch_max(open, Ordering::SeqCst);
                        counts.total.fetch_add(1, Ordering::SeqCst);
                        let (counts, content, lie) =
                            (Arc::clone(&counts), Arc::clone(&content), *lie);
                        std::thread::spawn(move || {
                            lie_to(stream, lie, &content);
                            counts.open.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    if idle {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            })
        };
        Fakes {
            addrs,
            counts,
            stop,
            acceptor: Some(acceptor),
        }
    }

    /// Registers every fake in the swarm of `id` as a complete peer, at 75 announces a
    /// second (under the tracker's 100 per second per address, as the attack was).
    fn announce(&self, tracker: &str, id: &str) {
        let url = format!("{tracker}/assets/{id}/announce");
        for (n, (addr, lie)) in self.addrs.iter().enumerate() {
            let body = serde_json::json!({
                "peer_id": format!("fake-{n}-{lie:?}"),
                "addr": addr,
                "complete": true,
            });
            ureq::post(&url)
                .send_json(body)
                .unwrap_or_else(|e| panic!("announcing fake {n} at {addr}: {e}"));
            std::thread::sleep(Duration::from_millis(13));
        }
    }
}

impl Drop for Fakes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Plays `lie` on one connection until the client closes it (or [`FAKE_READ_TIMEOUT`]).
fn lie_to(mut stream: TcpStream, lie: Lie, content: &[u8]) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(FAKE_READ_TIMEOUT));
    let chunks = content.len().div_ceil(CHUNK) as u32;
    let drain = |stream: &mut TcpStream| {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
    };
    if matches!(lie, Lie::Silent) {
        return drain(&mut stream);
    }
    if !matches!(
        read_message(&mut stream, MAX_FRAME),
        Ok(Message::Hello { .. })
    ) {
        return;
    }
    let welcome = Message::Welcome {
        version: PROTOCOL_VERSION,
        chunk_count: chunks,
    };
    if write_message(&mut stream, &welcome).is_err() {
        return;
    }
    if matches!(lie, Lie::StallAfterWelcome) {
        return drain(&mut stream);
    }
    // Trickle: every answer correct, every chunk at 20 KB/s.
    while let Ok(message) = read_message(&mut stream, MAX_FRAME) {
        let reply = match message {
            Message::HaveRequest => Message::Have(Bitfield::full(chunks)),
            Message::Request { index } if index < chunks => {
                let start = index as usize * CHUNK;
                let end = (start + CHUNK).min(content.len());
                Message::Chunk {
                    index,
                    data: content[start..end].to_vec().into(),
                }
            }
            // A cancel is ignored: the liar keeps trickling.
            _ => continue,
        };
        let mut frame = Vec::new();
        write_message(&mut frame, &reply).unwrap();
        for piece in frame.chunks(TRICKLE_PIECE) {
            if stream.write_all(piece).is_err() {
                return;
            }
            if frame.len() > TRICKLE_PIECE {
                std::thread::sleep(TRICKLE_PAUSE);
            }
        }
    }
}

/// The figures of one attack: the median `get` in a clean swarm and among the fakes, and
/// the fakes' connection counts.
struct Figures {
    normal: Duration,
    attacked: Duration,
    peak: usize,
    total: usize,
}

/// A tracker and an origin seeding `bytes` as `f.bin`, in a directory of their own.
fn swarm(d: &Path, bytes: &[u8]) -> (TrackerProc, ServerProc, String) {
    fs::create_dir(d).unwrap();
    fs::write(d.join("f.bin"), bytes).unwrap();
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    (tracker, origin, id)
}

/// Two swarms of `size` bytes, each with a tracker and an origin: a clean one, and one
/// where the fakes of `lies` registered as complete. `rounds` gets from each, in turns (so
/// that a loaded machine slows both alike); every copy must be right.
fn attack(size: usize, lies: &[Lie], rounds: usize) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_bytes(size, 53);
    let (clean, _clean_origin, id) = swarm(&d.join("clean"), &bytes);
    let (tracker, _origin, attacked_id) = swarm(&d.join("attacked"), &bytes);
    assert_eq!(id, attacked_id);
    let fakes = Fakes::start(lies, Arc::new(bytes.clone()));
    fakes.announce(&tracker.url, &id);
    let listed = tracker.peers(&id).len();
    assert!(
        listed >= lies.len(),
        "the fakes are in the swarm: {listed} peers listed"
    );

    let timed_get = |tracker: &TrackerProc, name: String| {
        let started = Instant::now();
        let run = get(d, &tracker.url, &id, &format!("{name}.bin"), &name, &[]);
        let took = started.elapsed();
        run.ok();
        assert_eq!(
            fs::read(d.join(format!("{name}.bin"))).unwrap(),
            bytes,
            "{name}"
        );
        took
    };
    let (mut normal, mut attacked) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        normal.push(timed_get(&clean, format!("clean-{round}")));
        attacked.push(timed_get(&tracker, format!("attacked-{round}")));
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let figures = Figures {
        normal: median(&mut normal),
        attacked: median(&mut attacked),
        peak: fakes.counts.peak.load(Ordering::SeqCst),
        total: fakes.counts.total.load(Ordering::SeqCst),
    };
    eprintln!(
        "{} MiB among {} fakes ({:?}…), median of {rounds}: {:.3} s (clean swarm {:.3} s); all: {attacked:.3?} against {normal:.3?}; connections to fakes: at most {} at once, {} in all",
        size >> 20,
        lies.len(),
        lies[0],
        figures.attacked.as_secs_f64(),
        figures.normal.as_secs_f64(),
        figures.peak,
        figures.total
    );
    figures
}

/// 300 fakes, a hundred of each lie, in turns.
fn three_hundred() -> Vec<Lie> {
    [Lie::Silent, Lie::StallAfterWelcome, Lie::Trickle]
        .into_iter()
        .cycle()
        .take(300)
        .collect()
}

#[test]
fn three_hundred_fake_complete_peers_neither_stall_a_get_nor_take_its_connections() {
    // 8 MiB in 128 chunks. Before the fix the origin waited for the fakes: a get took
    // 17-54 s and opened 240-300 connections.
    let figures = attack(8 << 20, &three_hundred(), 1);
    // Generous for a debug build on a loaded 2-core machine; the figure (at most
    // twice the normal time, in release) is measured by the ignored test below.
    assert!(
        figures.attacked < figures.normal * 2 + Duration::from_secs(5),
        "{:?} among the fakes against {:?} alone",
        figures.attacked,
        figures.normal
    );
    assert!(
        figures.peak <= PEER_CONN_CAP,
        "{} connections to fakes at once; the cap is {PEER_CONN_CAP}",
        figures.peak
    );
}

#[test]
fn a_single_silent_stalling_or_trickling_peer_costs_no_chunk_timeout() {
    for lie in [Lie::Silent, Lie::StallAfterWelcome, Lie::Trickle] {
        let figures = attack(2 << 20, &[lie], 1);
        // Before: the full 10 s chunk timeout each.
        assert!(
            figures.attacked < figures.normal + Duration::from_secs(4),
            "{lie:?}: {:?} against {:?} alone",
            figures.attacked,
            figures.normal
        );
    }
}

/// The figure: 16 MiB among 300 fakes within twice the normal time (medians of
/// seven). Run it in release: `cargo test --release --test integration attack_liars::figures -- --ignored
/// --nocapture`.
#[test]
#[ignore = "a measurement: run in release, see the doc comment"]
fn figures() {
    let figures = attack(16 << 20, &three_hundred(), 7);
    assert!(
        figures.attacked <= figures.normal * 2,
        "more than twice the normal time"
    );
}
