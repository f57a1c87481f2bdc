//! Connections that hold no request cost the tracker no worker: a crowd of idle kept-alive
//! connections and of clients trickling a request a byte at a time, more than the tracker
//! has workers, leave a real `get` and `/health` answered.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::harness::{ServerProc, TrackerProc, get, random_file, read_answer};

/// The tracker's request threads (`HTTP_THREADS` in src/tracker/mod.rs): a worker-per-
/// connection server is exhausted by this many connections.
const WORKERS: usize = 32;

fn connect(to: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads one answer on `stream`: its status.
fn read_status(stream: &TcpStream) -> u16 {
    let mut reader = BufReader::new(stream);
    let (status, _) = read_answer(&mut reader);
    // A BufReader may read ahead; answers here are one per request, so nothing is lost.
    assert!(reader.buffer().is_empty(), "an answer nobody asked for");
    status
}

/// `GET /health` on a kept-alive connection: the status.
fn health(mut stream: &TcpStream) -> u16 {
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: tracker\r\n\r\n")
        .unwrap();
    read_status(stream)
}

#[test]
fn sixty_four_idle_connections_and_a_worker_count_of_tricklers_leave_a_get_served() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 32 * 65536, 12);
    // Every connection here comes from 127.0.0.1; the deadlines are long enough that none
    // is cut off while the get runs, so each is provably still held at the end.
    let tracker = TrackerProc::start(
        d,
        &[
            "--max-conns-per-ip",
            "0",
            "--idle-timeout",
            "120s",
            "--request-timeout",
            "120s",
        ],
    );
    let to: SocketAddr = tracker.url.trim_start_matches("http://").parse().unwrap();
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();

    let idle: Vec<TcpStream> = (0..64).map(|_| connect(to)).collect();
    for (n, stream) in idle.iter().enumerate() {
        assert_eq!(health(stream), 200, "idle connection {n}");
    }
    // As many tricklers as the tracker has workers, one header byte each every 100 ms.
    let tricklers: Vec<TcpStream> = (0..WORKERS).map(|_| connect(to)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let streams: Vec<TcpStream> = tricklers.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut streams = streams;
            for s in &mut streams {
                s.write_all(b"GET /health HTTP/1.1\r\nHost: tracker\r\nX-Slow: ")
                    .unwrap();
            }
            // Bounded: 60 s at most, far past any get of 2 MiB.
            for _ in 0..600 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                for s in &mut streams {
                    s.write_all(b"z").unwrap();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    get(d, &tracker.url, &id, "copy.bin", "client", &[]).ok();
    assert_eq!(std::fs::read(d.join("copy.bin")).unwrap(), bytes);

    stop.store(true, Ordering::SeqCst);
    trickle.join().unwrap();
    // Nothing was closed to make room: every connection is still served.
    for (n, mut stream) in tricklers.iter().enumerate() {
        stream.write_all(b"\r\n\r\n").unwrap();
        assert_eq!(read_status(stream), 200, "trickler {n}");
    }
    for (n, stream) in idle.iter().enumerate() {
        assert_eq!(health(stream), 200, "idle connection {n}");
    }
}

#[test]
fn a_worker_count_of_connections_polling_health_leaves_health_answered() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--max-conns-per-ip", "0"]);
    let to: SocketAddr = tracker.url.trim_start_matches("http://").parse().unwrap();
    // The case: kept-alive connections each asking for /health every 0.5 s, as many
    // as the tracker has workers; a newcomer used to wait for one of them for ever.
    let pollers: Vec<TcpStream> = (0..WORKERS).map(|_| connect(to)).collect();
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    for round in 0..4 {
        for (n, stream) in pollers.iter().enumerate() {
            assert_eq!(health(stream), 200, "round {round}, connection {n}");
        }
        let answer: serde_json::Value = agent
            .get(&format!("{}/health", tracker.url))
            .call()
            .unwrap_or_else(|e| panic!("round {round}: a newcomer's /health: {e}"))
            .into_json()
            .unwrap();
        assert_eq!(answer["status"], "ok", "round {round}");
        std::thread::sleep(Duration::from_millis(500));
    }
}
