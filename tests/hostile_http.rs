//! Hostile HTTP clients against a real tracker, over raw sockets: silent and slow clients,
//! too many connections from one address, oversized, chunked and garbage requests, and
//! announce and publish floods. Short timeouts and limits come from the tracker's flags.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::harness::{TrackerProc, eventually, random_file, read_answer, run};

/// The tracker's address.
fn addr(tracker: &TrackerProc) -> SocketAddr {
    tracker.url.trim_start_matches("http://").parse().unwrap()
}

fn connect(to: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// One raw HTTP/1.1 connection, kept alive.
struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn new(stream: TcpStream) -> Client {
        let reader = BufReader::new(stream.try_clone().unwrap());
        Client { stream, reader }
    }

    /// Sends a request with `body` (none when empty) and reads the answer.
    fn send(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: tracker\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.stream.write_all(request.as_bytes()).unwrap();
        self.answer()
    }

    /// Reads one answer: status and body.
    fn answer(&mut self) -> (u16, String) {
        read_answer(&mut self.reader)
    }
}

/// The message of a JSON error body.
fn error_message(body: &str) -> String {
    let value: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    value["error"].as_str().unwrap().to_string()
}

/// Whether the peer closed: a read gives end of file (or a reset).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.read(&mut byte), Ok(0) | Err(_))
}

#[test]
fn silent_and_slow_clients_are_cut_off_at_the_deadline_while_others_are_served() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--request-timeout", "2s"]);
    let to = addr(&tracker);
    let started = Instant::now();
    let mut silent = connect(to);
    let slow = connect(to);
    // One header byte every 200 ms: activity that must not push the deadline back.
    let mut writer = slow.try_clone().unwrap();
    let trickle = std::thread::spawn(move || {
        let head = b"GET /health HTTP/1.1\r\nHost: tracker\r\nX-Slow: ";
        if writer.write_all(head).is_err() {
            return;
        }
        for _ in 0..25 {
            if writer.write_all(b"z").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    // Meanwhile everyone else is served at once.
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    for _ in 0..10 {
        let asked = Instant::now();
        let answer: serde_json::Value = agent
            .get(&format!("{}/health", tracker.url))
            .call()
            .unwrap()
            .into_json()
            .unwrap();
        assert_eq!(answer["status"], "ok");
        assert!(
            asked.elapsed() < Duration::from_secs(1),
            "{:?}",
            asked.elapsed()
        );
    }
    for (what, stream) in [
        ("silent", &mut silent),
        ("slow", &mut slow.try_clone().unwrap()),
    ] {
        let (status, body) = read_answer(&mut BufReader::new(&*stream));
        let after = started.elapsed();
        assert_eq!(status, 408, "{what}: {body}");
        assert!(error_message(&body).contains("2s"), "{what}: {body}");
        assert!(
            after >= Duration::from_millis(1500) && after < Duration::from_millis(4000),
            "{what} client cut off after {after:?}, the deadline is 2s"
        );
        assert!(closed(stream), "{what}: the connection is closed");
    }
    trickle.join().unwrap();
}

#[test]
fn one_address_holds_at_most_its_share_of_connections() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &["--max-conns-per-ip", "3"]);
    let to = addr(&tracker);
    let mut held: Vec<Client> = (0..3).map(|_| Client::new(connect(to))).collect();
    // Connections under the cap work.
    assert_eq!(held[0].send("GET", "/health", "").0, 200);
    // One more from the same address is refused at once, with the reason.
    let mut extra = Client::new(connect(to));
    let (status, body) = extra.answer();
    assert_eq!(status, 429, "{body}");
    let message = error_message(&body);
    assert!(
        message.contains("too many connections from 127.0.0.1")
            && message.contains("3 per address"),
        "{message}"
    );
    // Once the idle connections close, the address is served again.
    drop(held);
    eventually(
        "a new connection from 127.0.0.1 to be served",
        Duration::from_secs(5),
        || Client::new(connect(to)).send("GET", "/health", "").0 == 200,
    );
}

#[test]
fn oversized_chunked_invalid_and_garbage_requests_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(dir.path(), &[]);
    let to = addr(&tracker);
    let id = "ab".repeat(32);
    // Bodies over the limit are refused from their Content-Length, before they are sent.
    for (path, length, limit) in [
        ("/assets".to_string(), 100 << 20, 80 << 20),
        (format!("/assets/{id}/announce"), 2 << 20, 1 << 20),
    ] {
        let mut stream = connect(to);
        let head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {length}\r\n\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        let (status, body) = read_answer(&mut BufReader::new(&stream));
        assert_eq!(status, 413, "POST {path}: {body}");
        let message = error_message(&body);
        assert!(
            message.contains(&format!("{limit} bytes allowed")),
            "{message}"
        );
    }
    // Invalid bodies and requests the tracker cannot read.
    let cases: [(&str, Vec<u8>, u16, &str); 5] = [
        (
            "invalid JSON",
            format!("POST /assets/{id}/announce HTTP/1.1\r\nContent-Length: 9\r\n\r\n{{not json")
                .into_bytes(),
            400,
            "not valid JSON",
        ),
        (
            "an invalid manifest",
            b"POST /assets HTTP/1.1\r\nContent-Length: 8\r\n\r\nnot toml".to_vec(),
            400,
            "rejected manifest",
        ),
        (
            "a chunked body",
            b"POST /assets HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nname\r\n0\r\n\r\n"
                .to_vec(),
            411,
            "Content-Length",
        ),
        (
            "TLS",
            b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03".to_vec(),
            400,
            "HTTP/1.1",
        ),
        (
            "garbage",
            b"hello tracker\r\n\r\n".to_vec(),
            400,
            "malformed",
        ),
    ];
    for (what, bytes, expected, words) in cases {
        let mut stream = connect(to);
        stream.write_all(&bytes).unwrap();
        let (status, body) = read_answer(&mut BufReader::new(&stream));
        assert_eq!(status, expected, "{what}: {body}");
        let message = error_message(&body);
        assert!(message.contains(words), "{what}: {message}");
    }
    // None of it disturbed the tracker.
    assert_eq!(tracker.get_json("/health")["status"], "ok");
}

#[test]
fn announce_and_publish_floods_get_429_and_a_paced_client_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tracker = TrackerProc::start(d, &["--announce-rate", "10", "--publish-rate", "1"]);
    let to = addr(&tracker);
    random_file(&d.join("f.bin"), 65536, 31);
    let manifest = run(d, "chunkify", &["--chunk-size", "64KiB", "f.bin"], b"");
    let manifest = manifest.ok();
    // Publishing: a burst of 2, then one a second.
    let mut client = Client::new(connect(to));
    let mut statuses = Vec::new();
    let mut id = String::new();
    for _ in 0..4 {
        let (status, body) = client.send("POST", "/assets", manifest);
        if status == 201 {
            id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string();
        }
        if status == 429 {
            assert!(
                error_message(&body).contains("too many publishes from 127.0.0.1"),
                "{body}"
            );
        }
        statuses.push(status);
    }
    assert_eq!(&statuses[..2], [201, 200], "{statuses:?}");
    assert!(statuses[2..].contains(&429), "{statuses:?}");
    // Announcing: a burst of 20, then ten a second.
    let announce = r#"{"peer_id":"flood","addr":"127.0.0.1:7001","complete":true}"#;
    let path = format!("/assets/{id}/announce");
    let flood: Vec<(u16, String)> = (0..40)
        .map(|_| client.send("POST", &path, announce))
        .collect();
    assert!(flood[..20].iter().all(|(s, _)| *s == 200), "{flood:?}");
    let (_, refused) = flood
        .iter()
        .find(|(s, _)| *s == 429)
        .unwrap_or_else(|| panic!("no 429 in a flood of 40: {flood:?}"));
    let message = error_message(refused);
    assert!(
        message.contains("too many announces from 127.0.0.1")
            && message.contains("at most 10 a second"),
        "{message}"
    );
    // Right after the flood, a client that keeps to five a second is always answered.
    for n in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let (status, body) = client.send("POST", &path, announce);
        assert_eq!(status, 200, "paced announce {n}: {body}");
    }
}
