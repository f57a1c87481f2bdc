//! Runs the real binaries: spawn, wait for their `listening on` line, kill on drop, and on
//! failure show the command, its status, stdout and stderr.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, unbounded};
use openmetrics_parser::{PrometheusType, PrometheusValue};

/// How long a server may take to print its `listening on` line (seeding included).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any one command may run before the test gives up on it.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Path of one of the crate's binaries.
pub fn bin(name: &str) -> PathBuf {
    match name {
        "tracker" => env!("CARGO_BIN_EXE_tracker").into(),
        "chunkify" => env!("CARGO_BIN_EXE_chunkify").into(),
        "peer_server" => env!("CARGO_BIN_EXE_peer_server").into(),
        "peer_client" => env!("CARGO_BIN_EXE_peer_client").into(),
        other => panic!("no binary {other}"),
    }
}

/// The directory holding the binaries, for scripts that call them by name.
pub fn bin_dir() -> PathBuf {
    bin("tracker").parent().unwrap().to_path_buf()
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `len` pseudo-random bytes to `path` and returns them.
pub fn random_file(path: &Path, len: usize, seed: u64) -> Vec<u8> {
    let bytes = random_bytes(len, seed);
    std::fs::write(path, &bytes).unwrap();
    bytes
}

/// A finished command.
pub struct Run {
    pub description: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn report(&self) -> String {
        format!(
            "command: {}\nstatus: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.description, self.status, self.stdout, self.stderr
        )
    }

    /// Asserts success and returns stdout.
    pub fn ok(&self) -> &str {
        assert!(self.status.success(), "command failed\n{}", self.report());
        &self.stdout
    }

    /// Asserts the exit code and returns stderr.
    pub fn code(&self, code: i32) -> &str {
        assert_eq!(
            self.status.code(),
            Some(code),
            "unexpected exit status\n{}",
            self.report()
        );
        &self.stderr
    }

    /// Parses stdout as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok().trim())
            .unwrap_or_else(|e| panic!("stdout is not JSON: {e}\n{}", self.report()))
    }
}

/// Runs a binary to completion (bounded by [`RUN_TIMEOUT`]) in `dir`, feeding `stdin`.
pub fn run(dir: &Path, name: &str, args: &[&str], stdin: &[u8]) -> Run {
    run_cmd(
        Command::new(bin(name)).args(args).current_dir(dir),
        &format!("{name} {}", args.join(" ")),
        stdin,
    )
}

/// Runs a prepared command to completion, bounded by [`RUN_TIMEOUT`].
pub fn run_cmd(cmd: &mut Command, description: &str, stdin: &[u8]) -> Run {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {description}: {e}"));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{description} ran longer than {RUN_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let _ = feeder.join();
    Run {
        description: description.to_string(),
        status,
        stdout: String::from_utf8_lossy(&out_reader.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&err_reader.join().unwrap()).into_owned(),
    }
}

/// Gathers everything `reader` yields into a string, from a thread of its own.
pub fn collect(reader: impl Read + Send + 'static) -> Arc<Mutex<String>> {
    collect_until_eof(reader).0
}

/// Like [`collect`], with a receiver that disconnects once the reader reached its end, so
/// that a caller who saw the child exit can wait for its last lines.
pub fn collect_until_eof(
    mut reader: impl Read + Send + 'static,
) -> (Arc<Mutex<String>>, Receiver<()>) {
    let text = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&text);
    let (eof_tx, eof) = crossbeam_channel::bounded::<()>(0);
    std::thread::spawn(move || {
        let _eof_tx = eof_tx;
        let mut buf = [0u8; 4096];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (text, eof)
}

/// A long-running child, killed when dropped.
pub struct Proc {
    pub description: String,
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_eof: Receiver<()>,
}

impl Proc {
    /// Starts a binary in `dir`.
    pub fn spawn(dir: &Path, name: &str, args: &[&str]) -> Proc {
        Self::spawn_cmd(
            Command::new(bin(name)).args(args).current_dir(dir),
            format!("{name} {}", args.join(" ")),
        )
    }

    /// Starts a prepared command.
    pub fn spawn_cmd(cmd: &mut Command, description: String) -> Proc {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {description}: {e}"));
        let (tx, lines) = unbounded();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (stderr, stderr_eof) = collect_until_eof(child.stderr.take().unwrap());
        Proc {
            description,
            child,
            lines,
            seen: Vec::new(),
            stderr,
            stderr_eof,
        }
    }

    /// Waits for a stdout line starting with `prefix` and returns the rest of it.
    pub fn wait_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_string();
                    }
                }
                Err(_) => panic!(
                    "{} did not print {prefix:?} within {timeout:?}\nstatus: {:?}\nstdout so far: {:?}\nstderr: {}",
                    self.description,
                    self.child.try_wait(),
                    self.seen,
                    self.stderr()
                ),
            }
        }
    }

    /// Waits for the `listening on ADDR` line and returns ADDR.
    pub fn listening(&mut self) -> String {
        self.wait_line("listening on ", START_TIMEOUT)
    }

    /// The stdout lines not yet consumed by `wait_line`, once the child has exited.
    pub fn remaining_stdout(&mut self) -> String {
        self.wait();
        let mut out = String::new();
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            out.push_str(&line);
            out.push('\n');
        }
        out
    }

    /// Waits for the JSON summary line a `get --json` prints and parses it.
    pub fn summary(&mut self) -> serde_json::Value {
        let rest = self.wait_line("{", RUN_TIMEOUT);
        serde_json::from_str(&format!("{{{rest}"))
            .unwrap_or_else(|e| panic!("summary of {}: {e}", self.description))
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`STOP`, `INT`, …) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} {}", self.pid());
    }

    /// Waits at most `limit` for the child to exit; its status, or `None` if it still runs.
    pub fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the child to exit on its own, bounded by [`RUN_TIMEOUT`].
    pub fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + RUN_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // The child has exited, but its last stderr lines may still be in the pipe:
                // wait (bounded) for the collector to reach the end.
                let _ = self.stderr_eof.recv_timeout(Duration::from_secs(5));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {RUN_TIMEOUT:?}",
                self.description
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes.
pub fn eventually(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tracker on 127.0.0.1 port 0 with its data in `dir/tracker-data`.
pub struct TrackerProc {
    pub proc: Proc,
    pub url: String,
}

impl TrackerProc {
    pub fn start(dir: &Path, extra: &[&str]) -> TrackerProc {
        Self::start_on(dir, "127.0.0.1:0", extra)
    }

    pub fn start_on(dir: &Path, listen: &str, extra: &[&str]) -> TrackerProc {
        let mut args = vec!["--listen", listen, "--data", "tracker-data"];
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(dir, "tracker", &args);
        let url = proc.listening();
        TrackerProc { proc, url }
    }

    /// The live peers of the swarm of `id`.
    pub fn peers(&self, id: &str) -> Vec<serde_json::Value> {
        self.get_json(&format!("/assets/{id}/peers"))
            .as_array()
            .unwrap()
            .clone()
    }

    /// Waits until the swarm of `id` lists `count` peers.
    pub fn wait_for_peers(&self, id: &str, count: usize) {
        eventually(
            &format!("{count} peers in the swarm of {id}"),
            Duration::from_secs(15),
            || self.peers(id).len() == count,
        );
    }

    /// GET a path of the tracker API as JSON.
    pub fn get_json(&self, path: &str) -> serde_json::Value {
        ureq::get(&format!("{}{path}", self.url))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    }
}

/// A peer_server on 127.0.0.1 port 0 seeding `seeds` from `dir`, with its store in `dir/store`.
pub struct ServerProc {
    pub proc: Proc,
    pub addr: String,
    pub seeded: Vec<String>,
    pub store: PathBuf,
    /// The URL of its metrics, when started with `--metrics`.
    pub metrics: Option<String>,
}

impl ServerProc {
    /// An origin seeding `file` at 4 MiB/s, slow enough that a crowd of clients must trade
    /// among themselves for the download to be quick.
    pub fn capped_origin(dir: &Path, tracker: &str, file: &str) -> ServerProc {
        let flags = ["--origin", "--max-upload-rate", "4MiB"];
        ServerProc::start(dir, "origin", Some(tracker), &[file], &flags)
    }

    pub fn start(
        dir: &Path,
        store: &str,
        tracker: Option<&str>,
        seeds: &[&str],
        extra: &[&str],
    ) -> ServerProc {
        Self::start_on(dir, "127.0.0.1:0", store, tracker, seeds, extra)
    }

    /// Like [`ServerProc::start`], listening on `listen`.
    pub fn start_on(
        dir: &Path,
        listen: &str,
        store: &str,
        tracker: Option<&str>,
        seeds: &[&str],
        extra: &[&str],
    ) -> ServerProc {
        let mut args = vec![
            "--listen",
            listen,
            "--store",
            store,
            "--chunk-size",
            "64KiB",
        ];
        if let Some(url) = tracker {
            args.extend_from_slice(&["--tracker", url]);
        }
        for seed in seeds {
            args.extend_from_slice(&["--seed", seed]);
        }
        args.extend_from_slice(extra);
        let mut proc = Proc::spawn(dir, "peer_server", &args);
        let seeded = seeds
            .iter()
            .map(|_| proc.wait_line("seeded ", START_TIMEOUT))
            .collect::<Vec<_>>();
        let seeded = seeded
            .iter()
            .map(|l| l.split_whitespace().next().unwrap().to_string())
            .collect();
        let metrics = extra
            .contains(&"--metrics")
            .then(|| proc.wait_line("metrics on ", START_TIMEOUT));
        let addr = proc.listening();
        ServerProc {
            proc,
            addr,
            seeded,
            store: dir.join(store),
            metrics,
        }
    }
}

/// The chunks of `asset` a store records as held.
pub fn stored_chunks(store: &Path, asset: &str) -> u32 {
    std::fs::read(store.join("assets").join(asset).join("have"))
        .map(|bytes| bytes.iter().map(|b| b.count_ones()).sum())
        .unwrap_or(0)
}

/// Publishes `file` (chunked at 64 KiB) with `chunkify | peer_client publish -`; returns the id.
pub fn publish(dir: &Path, tracker: &str, file: &str) -> String {
    let manifest = run(dir, "chunkify", &["--chunk-size", "64KiB", file], b"");
    let id = run(
        dir,
        "peer_client",
        &["publish", "--tracker", tracker, "-"],
        manifest.ok().as_bytes(),
    );
    id.ok().trim().to_string()
}

/// The arguments of `peer_client get ID --tracker URL -o OUT --store STORE --json EXTRA…`.
fn get_args<'a>(
    tracker: &'a str,
    id: &'a str,
    out: &'a str,
    store: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "get",
        id,
        "--tracker",
        tracker,
        "-o",
        out,
        "--store",
        store,
        "--json",
    ];
    args.extend_from_slice(extra);
    args
}

/// Starts `peer_client get ID -o OUT --store STORE --json` plus `extra` in the background.
pub fn spawn_get(
    dir: &Path,
    tracker: &str,
    id: &str,
    out: &str,
    store: &str,
    extra: &[&str],
) -> Proc {
    Proc::spawn(
        dir,
        "peer_client",
        &get_args(tracker, id, out, store, extra),
    )
}

/// `peer_client get ID -o OUT --store STORE --json` plus `extra`; returns the run.
pub fn get(dir: &Path, tracker: &str, id: &str, out: &str, store: &str, extra: &[&str]) -> Run {
    run(
        dir,
        "peer_client",
        &get_args(tracker, id, out, store, extra),
        b"",
    )
}

/// An HTTP answer: status, content type and body, whatever the status.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// GET `url`, any status.
pub fn http_get(url: &str) -> Answer {
    let response = match ureq::get(url).call() {
        Ok(response) => response,
        Err(ureq::Error::Status(_, response)) => response,
        Err(e) => panic!("GET {url}: {e}"),
    };
    Answer {
        status: response.status(),
        content_type: response.header("Content-Type").unwrap_or("").to_string(),
        body: response
            .into_string()
            .unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}")),
    }
}

/// A scrape of a `/metrics` endpoint that a strict parser of the Prometheus text format
/// accepted, flattened to (family, labels) → value.
pub struct Metrics {
    pub text: String,
    pub samples: BTreeMap<(String, BTreeMap<String, String>), f64>,
}

impl Metrics {
    /// The value of the one sample of `family` whose labels include `labels`.
    pub fn value(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<f64> = self
            .samples
            .iter()
            .filter(|((name, have), _)| {
                name == family
                    && labels
                        .iter()
                        .all(|(k, v)| have.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, value)| *value)
            .collect();
        match matching[..] {
            [value] => value,
            _ => panic!(
                "{} samples of {family} with labels {labels:?} in\n{}",
                matching.len(),
                self.text
            ),
        }
    }
}

/// GETs a `/metrics` URL and parses it as the Prometheus text format (version 0.0.4):
/// the content type, the grammar, and that every family has a help text and a type, and
/// every counter a name in `_total`.
pub fn scrape(url: &str) -> Metrics {
    let answer = http_get(url);
    assert_eq!(answer.status, 200, "GET {url}: {}", answer.body);
    assert!(
        answer.content_type.starts_with("text/plain; version=0.0.4"),
        "GET {url}: Content-Type {:?}",
        answer.content_type
    );
    let text = answer.body;
    let parsed = openmetrics_parser::prometheus::parse_prometheus(&text)
        .unwrap_or_else(|e| panic!("GET {url} is not Prometheus text: {e:?}\n{text}"));
    let mut samples = BTreeMap::new();
    for (name, family) in &parsed.families {
        assert!(!family.help.is_empty(), "{name} has no HELP\n{text}");
        let counter = match family.family_type {
            PrometheusType::Counter => true,
            PrometheusType::Gauge => false,
            ref other => panic!("{name} is a {other:?}, not a counter or gauge\n{text}"),
        };
        assert_eq!(
            counter,
            name.ends_with("_total"),
            "{name}: only counters end in _total\n{text}"
        );
        for sample in family.iter_samples() {
            let labels = sample
                .get_labelset()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let value = match &sample.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(n) => n.as_f64(),
                other => panic!("{name}: unexpected sample {other:?}"),
            };
            samples.insert((name.clone(), labels), value);
        }
    }
    Metrics { text, samples }
}

/// Connects to a peer, with a 10 s read timeout so a silent server fails the test.
pub fn connect(addr: &str) -> std::net::TcpStream {
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Sends a `Hello` for `asset` presenting `ticket`, and returns the server's answer.
pub fn handshake(
    stream: &mut std::net::TcpStream,
    asset: &str,
    ticket: Vec<u8>,
) -> swarmcache::wire::Message<'static> {
    use swarmcache::wire::{self, MAX_FRAME, Message, PROTOCOL_VERSION};
    let hello = Message::Hello {
        version: PROTOCOL_VERSION,
        asset: asset.parse().unwrap(),
        ticket,
    };
    wire::write_message(stream, &hello).unwrap();
    wire::read_message(stream, MAX_FRAME).unwrap()
}

/// A tmpfs mounted at `dir` with the mount options `options` (`size=1m`, `ro`) for the life
/// of the value: the test's own file system, never the machine's (tests run as root in CI).
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this process may not mount (not root, or no mount namespace rights).
    pub fn mount(dir: &Path, options: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status()
            .ok()?;
        status.success().then(|| Tmpfs(dir.to_path_buf()))
    }

    /// Mounts it again with other options (`size=8m`).
    pub fn remount(&self, options: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remounting {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// An HTTP answer of [`http_from`]: status and body.
pub struct HttpFrom {
    pub status: u16,
    pub body: String,
}

impl HttpFrom {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// One request to the tracker at `url` from a socket bound to `from` first: any address of
/// 127/8 is this host's, so `127.0.0.2` is another client address to the tracker without
/// root or a namespace (IPv6: an address the test gave an interface of its own). `token` as
/// a bearer token, `body` as JSON; `Connection: close`.
pub fn http_from(
    from: impl Into<std::net::IpAddr>,
    url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> HttpFrom {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    use std::net::{SocketAddr, TcpStream};
    let from = from.into();
    let tracker: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let family = if from.is_ipv6() {
        AddressFamily::INET6
    } else {
        AddressFamily::INET
    };
    let fd = socket(family, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddr::new(from, 0)).unwrap_or_else(|e| panic!("bind {from}: {e}"));
    connect(&fd, &tracker).unwrap_or_else(|e| panic!("connect {tracker} from {from}: {e}"));
    let mut stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {tracker}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer).to_string();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"));
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    HttpFrom { status, body }
}

/// Reads one answer from `reader`: status and body (by its Content-Length).
pub fn read_answer(reader: &mut impl BufRead) -> (u16, String) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no status line, got {line:?}"))
        .parse()
        .unwrap();
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}
