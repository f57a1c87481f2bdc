//! Streaming: `get --stream` writes the asset to stdout in order while it downloads, only
//! verified bytes, with bounded memory however slowly the reader reads.

use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{
    RUN_TIMEOUT, ServerProc, TrackerProc, bin, collect_until_eof, eventually, random_file,
    stored_chunks,
};

/// A `peer_client get --stream --json --progress json` whose stdout the test reads at its
/// own pace; killed when dropped.
struct Streaming {
    child: Child,
    stdout: ChildStdout,
    stderr: Arc<Mutex<String>>,
    /// Disconnects once stderr is read to its end: the summary is its last line.
    stderr_eof: crossbeam_channel::Receiver<()>,
}

impl Streaming {
    fn start(dir: &Path, tracker: &str, id: &str, store: &str, extra: &[&str]) -> Streaming {
        let mut child = Command::new(bin("peer_client"))
            .args(["get", id, "--tracker", tracker, "--store", store])
            .args(["--stream", "--json", "--progress", "json"])
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (stderr, stderr_eof) = collect_until_eof(child.stderr.take().unwrap());
        Streaming {
            child,
            stdout,
            stderr,
            stderr_eof,
        }
    }

    fn read(&mut self, len: usize) -> Vec<u8> {
        let mut buf = vec![0; len];
        self.stdout
            .read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading the stream: {e}\nstderr: {}", self.stderr()));
        buf
    }

    /// Reads the rest of the stream, checks the client succeeded, returns what it read.
    fn finish(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        self.stdout.read_to_end(&mut rest).unwrap();
        let deadline = Instant::now() + RUN_TIMEOUT;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the client did not exit");
            std::thread::sleep(Duration::from_millis(10));
        };
        // The child exited, but its last lines may still be on their way to the collector.
        let _ = self.stderr_eof.recv_timeout(RUN_TIMEOUT);
        assert!(status.success(), "client failed: {}", self.stderr());
        rest
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The JSON objects on stderr: progress lines, then the summary.
    fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stderr()
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?} is not JSON: {e}")))
            .collect()
    }

    fn summary(&self) -> serde_json::Value {
        self.json_lines()
            .into_iter()
            .rfind(|v| v.get("asset").is_some())
            .unwrap_or_else(|| panic!("no summary on stderr: {}", self.stderr()))
    }

    /// Peak resident memory (VmHWM) in bytes.
    fn peak_rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmHWM in /proc/PID/status");
        kib << 10
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tracker, an origin and a peer, both serving `size` pseudo-random bytes at 4 MiB/s;
/// returns them and the bytes once the swarm lists both.
fn origin_and_peer(
    d: &Path,
    size: usize,
    seed: u64,
) -> (TrackerProc, ServerProc, ServerProc, Vec<u8>) {
    let bytes = random_file(&d.join("f.bin"), size, seed);
    let tracker = TrackerProc::start(d, &[]);
    let serve = |store: &str, origin: bool| {
        let mut extra = vec!["--max-upload-rate", "4MiB"];
        if origin {
            extra.push("--origin");
        }
        ServerProc::start(d, store, Some(&tracker.url), &["f.bin"], &extra)
    };
    let origin = serve("origin", true);
    let peer = serve("peer", false);
    tracker.wait_for_peers(&peer.seeded[0], 2);
    (tracker, origin, peer, bytes)
}

#[test]
fn a_stream_is_the_file_byte_for_byte_even_when_a_peer_dies_mid_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 12 MiB from a peer and an origin capped at 4 MiB/s each: a couple of seconds.
    let (tracker, _origin, mut peer, bytes) = origin_and_peer(d, 12 << 20, 31);
    let id = peer.seeded[0].clone();

    let mut stream = Streaming::start(d, &tracker.url, &id, "client", &[]);
    let mut out = stream.read(2 << 20);
    peer.proc.kill();
    out.extend(stream.finish());
    assert!(out == bytes, "the stream differs from the file");
    let summary = stream.summary();
    assert!(summary["from_peers"].as_u64().unwrap() > 0, "{summary}");
    assert!(summary["first_byte_secs"].as_f64().is_some(), "{summary}");
    assert!(summary["output"].is_null(), "{summary}");
    // The asset landed in the store too: a second stream needs no network at all, not
    // even the tracker.
    let url = tracker.url.clone();
    drop(tracker);
    let mut again = Streaming::start(d, &url, &id, "client", &[]);
    assert!(again.finish() == bytes);
    assert_eq!(again.summary()["from_cache"], 12 << 20);
}

#[test]
fn a_late_chunk_is_asked_of_another_source_instead_of_waiting_for_a_stalled_peer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (tracker, _origin, peer, bytes) = origin_and_peer(d, 8 << 20, 32);
    let id = peer.seeded[0].clone();

    // Without hedging, the chunks the stopped peer holds would wait out the chunk timeout
    // (60 s): the test would still pass, but "hedged" would be 0.
    let mut stream = Streaming::start(d, &tracker.url, &id, "client", &["--chunk-timeout", "60s"]);
    let mut out = stream.read(1 << 20);
    peer.proc.signal("STOP");
    out.extend(stream.finish());
    peer.proc.signal("CONT");
    assert!(out == bytes, "the stream differs from the file");
    let summary = stream.summary();
    assert!(summary["hedged"].as_u64().unwrap() >= 1, "{summary}");
}

#[test]
fn a_reader_that_does_not_read_does_not_make_the_client_buffer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size: u64 = 64 << 20;
    let bytes = random_file(&d.join("f.bin"), size as usize, 33);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();

    let mut stream = Streaming::start(d, &tracker.url, &id, "client", &[]);
    // The reader sleeps; the download goes on into the store, not into memory.
    eventually(
        "the download to finish while nobody reads the stream",
        Duration::from_secs(60),
        || {
            stream
                .json_lines()
                .iter()
                .any(|line| line["bytes"].as_u64() == Some(size))
        },
    );
    let peak = stream.peak_rss();
    assert!(
        peak < 40 << 20,
        "peak RSS {} MiB for a {} MiB asset nobody read",
        peak >> 20,
        size >> 20
    );
    let out = stream.finish();
    assert!(out == bytes, "the stream differs from the file");
    // Each progress line is one JSON object with the fields scripts rely on.
    let lines = stream.json_lines();
    let progress: Vec<_> = lines
        .iter()
        .filter(|l| l.get("elapsed_secs").is_some())
        .collect();
    assert!(!progress.is_empty());
    for line in progress {
        for field in [
            "bytes",
            "size",
            "from_peers",
            "from_origin",
            "rate",
            "peers_connected",
        ] {
            assert!(line.get(field).is_some(), "{field} missing in {line}");
        }
    }
}

#[test]
fn a_stream_resumed_from_a_partial_cache_downloads_on_while_nobody_reads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let size: u64 = 8 << 20;
    let bytes = random_file(&d.join("f.bin"), size as usize, 34);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::capped_origin(d, &tracker.url, "f.bin");
    let id = origin.seeded[0].clone();

    // A first stream stopped with Ctrl-C part way leaves the first chunks in the store.
    let mut first = Streaming::start(d, &tracker.url, &id, "client", &[]);
    first.read(2 << 20);
    let status = Command::new("kill")
        .args(["-INT", &first.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let _ = first.child.wait();
    let cached = stored_chunks(&d.join("client"), &id);
    assert!(cached > 2, "{cached} chunks recorded");

    // The second stream has cached chunks to write before its first missing one, and a
    // reader that reads nothing: the download must go on regardless.
    let mut stream = Streaming::start(d, &tracker.url, &id, "client", &[]);
    eventually(
        "the download to finish while nobody reads the stream",
        Duration::from_secs(30),
        || {
            stream
                .json_lines()
                .iter()
                .any(|line| line["bytes"].as_u64() == Some(size))
        },
    );
    assert!(stream.finish() == bytes, "the stream differs from the file");
    assert!(stream.summary()["from_cache"].as_u64().unwrap() > 0);
}
