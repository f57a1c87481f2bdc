//! The HTTP gateway: `peer_client gateway` serves assets of the swarm to curl (the real
//! binary) with Range reads, answered as soon as their chunks are verified, and bounds its
//! clients as the tracker's HTTP side does.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    Proc, START_TIMEOUT, ServerProc, TrackerProc, eventually, random_file, run_cmd,
};

/// A tracker, an origin (capped at `rate` so that a download takes a while), and a gateway
/// in front of them, with the asset's bytes.
struct Swarm {
    _tracker: TrackerProc,
    _origin: ServerProc,
    gateway: Proc,
    /// `http://127.0.0.1:PORT`.
    url: String,
    id: String,
    bytes: Vec<u8>,
}

fn swarm(d: &Path, size: usize, rate: &str, name: &str) -> Swarm {
    swarm_with(d, size, rate, name, &[])
}

/// [`swarm`] with more flags for the origin.
fn swarm_with(d: &Path, size: usize, rate: &str, name: &str, origin_flags: &[&str]) -> Swarm {
    let bytes = random_file(&d.join(name), size, 15);
    let tracker = TrackerProc::start(d, &[]);
    let mut flags = vec!["--origin", "--max-upload-rate", rate];
    flags.extend_from_slice(origin_flags);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &[name], &flags);
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    let mut gateway = Proc::spawn(
        d,
        "peer_client",
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--tracker",
            &tracker.url,
            "--store",
            "gw",
        ],
    );
    let line = gateway.wait_line("listening on ", START_TIMEOUT);
    let url = line.trim().to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    Swarm {
        _tracker: tracker,
        _origin: origin,
        gateway,
        url,
        id,
        bytes,
    }
}

/// What curl got: status, header fields (lowercase names), body.
struct Curled {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Curled {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl -s -D - URL ARGS…` (the real binary), headers and body split.
fn curl(d: &Path, url: &str, args: &[&str]) -> Curled {
    let head = d.join("curl-head");
    let body = d.join("curl-body");
    let _ = std::fs::remove_file(&body);
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "60", "-D"])
        .arg(&head)
        .arg("-o")
        .arg(&body)
        .args(args)
        .arg(url);
    let run = run_cmd(&mut cmd, &format!("curl {args:?} {url}"), b"");
    run.ok();
    let head = std::fs::read_to_string(&head).unwrap();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line from curl: {head:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Curled {
        status,
        headers,
        body: std::fs::read(&body).unwrap_or_default(),
    }
}

fn stats(d: &Path, s: &Swarm) -> serde_json::Value {
    let got = curl(d, &format!("{}/stats/{}", s.url, s.id), &[]);
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    serde_json::from_slice(&got.body).unwrap()
}

#[test]
fn curl_reads_ranges_at_the_start_middle_end_suffix_and_the_whole_file() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = swarm(d, 3 << 20, "64MiB", "clip.mp4");
    let size = s.bytes.len();
    let url = format!("{}/{}", s.url, s.id);
    let cases: [(&str, usize, usize); 5] = [
        ("0-99", 0, 99),
        ("1500000-1600000", 1_500_000, 1_600_000),
        (&format!("{}-", size - 10), size - 10, size - 1),
        ("-100", size - 100, size - 1),
        ("100-", 100, size - 1),
    ];
    for (range, start, end) in cases {
        let got = curl(d, &url, &["-r", range]);
        assert_eq!(got.status, 206, "range {range}");
        assert_eq!(
            got.header("content-range"),
            Some(format!("bytes {start}-{end}/{size}").as_str()),
            "range {range}"
        );
        assert_eq!(
            got.header("content-length"),
            Some((end - start + 1).to_string().as_str())
        );
        assert!(
            got.body == s.bytes[start..=end],
            "range {range}: the bytes differ from the file's"
        );
        assert_eq!(got.header("accept-ranges"), Some("bytes"));
        assert_eq!(got.header("content-type"), Some("video/mp4"));
        assert_eq!(got.header("etag"), Some(format!("\"{}\"", s.id).as_str()));
        assert!(got.header("content-encoding").is_none());
    }
    // Unsatisfiable: 416 with the size.
    let got = curl(d, &url, &["-r", &format!("{size}-")]);
    assert_eq!(got.status, 416);
    assert_eq!(
        got.header("content-range"),
        Some(format!("bytes */{size}").as_str())
    );
    // HEAD: the length and type, no body.
    let got = curl(d, &url, &["-I"]);
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(got.header("content-type"), Some("video/mp4"));
    // The whole file, under its name too.
    let got = curl(d, &format!("{url}/clip.mp4"), &[]);
    assert_eq!(got.status, 200);
    assert!(got.body == s.bytes, "the whole file differs");
    let got = curl(d, &format!("{url}/other.mp4"), &[]);
    assert_eq!(got.status, 404);
    // The figures: everything came from the origin, nothing was in the store before.
    let figures = stats(d, &s);
    for field in [
        "peers",
        "download_bps",
        "upload_bps",
        "bytes_cache",
        "bytes_peers",
        "bytes_origin",
        "p2p_ratio",
        "stalls",
        "size",
    ] {
        assert!(figures[field].is_number(), "{field}: {figures}");
    }
    assert_eq!(figures["size"], size as u64, "{figures}");
    assert_eq!(figures["bytes_origin"], size as u64, "{figures}");
    assert_eq!(figures["bytes_cache"], 0, "{figures}");
    // The listing names the asset, as JSON and as HTML; the page is HTML.
    let list = curl(d, &format!("{}/?format=json", s.url), &[]);
    let list: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    assert_eq!(list["assets"][0]["id"], s.id.as_str(), "{list}");
    let html = curl(d, &format!("{}/", s.url), &[]);
    assert!(String::from_utf8_lossy(&html.body).contains(&s.id));
    let page = curl(d, &format!("{}/watch/{}", s.url, s.id), &[]);
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    assert!(String::from_utf8_lossy(&page.body).contains("<video"));
}

#[test]
fn a_read_at_the_end_is_answered_long_before_the_whole_asset_is_fetched() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 32 MiB at 4 MiB/s from the origin: 8 s for the whole, 512 chunks of 64 KiB.
    let s = swarm(d, 32 << 20, "4MiB", "big.webm");
    let size = s.bytes.len();
    let url = format!("{}/{}", s.url, s.id);
    let got = curl(d, &url, &["-r", "-1000"]);
    assert_eq!(got.status, 206);
    assert!(got.body == s.bytes[size - 1000..]);
    let figures = stats(d, &s);
    let fetched = figures["chunks_fetched"].as_u64().unwrap();
    let chunks = figures["chunks"].as_u64().unwrap();
    assert!(
        fetched < chunks / 4,
        "{fetched} of {chunks} chunks were fetched by the time the end was read: {figures}"
    );
    // Two readers at different offsets, at once: each gets its own bytes.
    let (a, b) = (4 << 20, 20 << 20);
    let readers: Vec<_> = [a, b]
        .into_iter()
        .map(|start| {
            let url = url.clone();
            let dir = d.join(format!("r{start}"));
            std::fs::create_dir(&dir).unwrap();
            std::thread::spawn(move || {
                let range = format!("{start}-{}", start + (1 << 20) - 1);
                (start, curl(&dir, &url, &["-r", &range]))
            })
        })
        .collect();
    for reader in readers {
        let (start, got) = reader.join().unwrap();
        assert_eq!(got.status, 206);
        assert!(
            got.body == s.bytes[start..start + (1 << 20)],
            "the reader at {start} got other bytes"
        );
    }
    let figures = stats(d, &s);
    let fetched = figures["chunks_fetched"].as_u64().unwrap();
    assert!(
        fetched < chunks * 3 / 4,
        "two 1 MiB reads cost {fetched} of {chunks} chunks: {figures}"
    );
}

#[test]
fn an_encrypted_asset_is_decrypted_on_the_way_out() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = swarm_with(d, 1 << 20, "64MiB", "secret.mkv", &["--encrypt"]);
    let url = format!("{}/{}", s.url, s.id);
    // A range across a chunk boundary (64 KiB chunks), starting inside a chunk.
    let (start, end) = (65_000, 200_000);
    let got = curl(d, &url, &["-r", &format!("{start}-{end}")]);
    assert_eq!(got.status, 206);
    assert!(
        got.body == s.bytes[start..=end],
        "the bytes are not the plaintext"
    );
    // The store keeps ciphertext only.
    let stored = std::fs::read(d.join("gw/assets").join(&s.id).join("data")).unwrap();
    assert!(stored[start..=end] != s.bytes[start..=end]);
}

#[test]
fn a_hostile_client_is_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = swarm(d, 1 << 20, "64MiB", "a.bin");
    let addr = s.url.trim_start_matches("http://").to_string();
    // Past the per-address cap, connections are refused with a 429 at once.
    let held: Vec<TcpStream> = (0..8).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let mut extra = TcpStream::connect(&addr).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = String::new();
    let _ = extra.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    drop(held);
    // A slow head is cut off (408) within the request deadline, not held for ever. (The
    // slots of the connections just closed are freed by the poller soon after: until then
    // a newcomer is still refused, so it tries again.)
    let deadline = Instant::now() + Duration::from_secs(10);
    let (answer, took) = loop {
        let mut slow = TcpStream::connect(&addr).unwrap();
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let started = Instant::now();
        let _ = slow.write_all(b"GET / HTTP/1.1\r\nHo");
        let mut answer = String::new();
        let _ = slow.read_to_string(&mut answer);
        if !answer.starts_with("HTTP/1.1 429") || Instant::now() > deadline {
            break (answer, started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(took < Duration::from_secs(25), "{took:?}");
    // And the gateway still answers.
    let mut ok = TcpStream::connect(&addr).unwrap();
    ok.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    ok.write_all(format!("HEAD /{} HTTP/1.1\r\n\r\n", s.id).as_bytes())
        .unwrap();
    let mut buf = [0u8; 12];
    ok.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"HTTP/1.1 200", "{}", s.gateway.stderr());
}

#[test]
fn a_gateway_on_a_wider_address_than_loopback_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut gateway = Proc::spawn(
        d,
        "peer_client",
        &["gateway", "--listen", "0.0.0.0:0", "--store", "gw"],
    );
    let line = gateway.wait_line("listening on ", START_TIMEOUT);
    assert!(line.starts_with("http://0.0.0.0:"), "{line}");
    eventually("the warning", Duration::from_secs(10), || {
        gateway.stderr().contains("not a loopback address")
    });
}

#[test]
fn a_file_of_a_directory_asset_is_served_from_its_place_in_the_asset() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::create_dir_all(d.join("show/segments")).unwrap();
    std::fs::write(d.join("show/index.m3u8"), b"#EXTM3U\n").unwrap();
    let seg = random_file(&d.join("show/segments/s1.ts"), 300_000, 7);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["show"], &["--origin"]);
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    let mut gateway = Proc::spawn(
        d,
        "peer_client",
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--tracker",
            &tracker.url,
            "--store",
            "gw",
        ],
    );
    let url = gateway
        .wait_line("listening on ", START_TIMEOUT)
        .trim()
        .to_string();
    let got = curl(d, &format!("{url}/{id}/segments/s1.ts"), &["-r", "70000-"]);
    assert_eq!(got.status, 206);
    assert_eq!(got.header("content-type"), Some("video/mp2t"));
    assert_eq!(
        got.header("content-range"),
        Some("bytes 70000-299999/300000")
    );
    assert!(got.body == seg[70_000..], "the file's bytes differ");
    let got = curl(d, &format!("{url}/{id}/index.m3u8"), &[]);
    assert_eq!(got.status, 200);
    assert_eq!(
        got.header("content-type"),
        Some("application/vnd.apple.mpegurl")
    );
    assert_eq!(got.body, b"#EXTM3U\n");
    for missing in [format!("{url}/{id}"), format!("{url}/{id}/nope.ts")] {
        assert_eq!(curl(d, &missing, &[]).status, 404, "{missing}");
    }
}

/// The chunks of the gateway's store for `id`, once its have file lists them all.
fn stored_set(d: &Path, id: &str, count: u32) -> std::collections::BTreeSet<u32> {
    let bytes = std::fs::read(d.join("gw/assets").join(id).join("have")).unwrap_or_default();
    match swarmcache::bitfield::Bitfield::from_bytes(count, &bytes) {
        Ok(have) => (0..count).filter(|&i| have.get(i)).collect(),
        Err(_) => Default::default(),
    }
}

#[test]
fn an_hls_player_finds_the_next_segments_fetched_before_it_asks_and_no_more() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipped: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 10 segments of 2 s, 8 chunks of 64 KiB each (not aligned to chunks), an init
    // segment, and entries that point outside the asset (left out).
    std::fs::create_dir_all(d.join("show")).unwrap();
    let mut playlist = String::from(
        "#EXTM3U\n#EXT-X-VERSION:7\n#EXT-X-TARGETDURATION:2\n#EXT-X-MAP:URI=\"init.mp4\"\n\
         #EXTINF:2.0,\nhttp://evil.example/x.m4s\n#EXTINF:2.0,\n../../../etc/passwd\n",
    );
    random_file(&d.join("show/init.mp4"), 1000, 1);
    for k in 0..10 {
        random_file(&d.join(format!("show/seg{k}.m4s")), 8 * 65536 - 100, k + 2);
        playlist.push_str(&format!("#EXTINF:2.000,\nseg{k}.m4s\n"));
    }
    playlist.push_str("#EXT-X-ENDLIST\n");
    std::fs::write(d.join("show/index.m3u8"), &playlist).unwrap();
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["show"], &["--origin"]);
    let id = origin.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    let manifest = crate::harness::http_get(&format!("{}/assets/{id}", tracker.url)).body;
    let manifest = swarmcache::manifest::Manifest::from_toml(&manifest).unwrap();
    let chunks = |path: &str| manifest.file_chunks(manifest.file(path).unwrap());
    // Window 1: a reader's own read-ahead (3 chunks) never reaches past the next segment.
    let mut gateway = Proc::spawn(
        d,
        "peer_client",
        &[
            "gateway",
            "--listen",
            "127.0.0.1:0",
            "--tracker",
            &tracker.url,
            "--store",
            "gw",
            "--window",
            "1",
        ],
    );
    let url = gateway
        .wait_line("listening on ", START_TIMEOUT)
        .trim()
        .to_string();
    let count = manifest.chunk_count();
    let expect_exactly = |expected: &std::collections::BTreeSet<u32>, what: &str| {
        eventually(what, Duration::from_secs(30), || {
            stored_set(d, &id, count).is_superset(expected)
        });
        // Past the readers' grace (1 s) and a checkpoint (1 s): still nothing more.
        std::thread::sleep(Duration::from_millis(2500));
        let have = stored_set(d, &id, count);
        let extra: Vec<u32> = have.difference(expected).copied().collect();
        assert!(
            extra.is_empty(),
            "{what}: chunks {extra:?} were fetched too"
        );
    };

    // The playlist: the init segment and the first 6 s (3 segments) come ahead.
    let got = curl(d, &format!("{url}/{id}/index.m3u8"), &[]);
    assert_eq!(got.status, 200);
    assert_eq!(got.body, playlist.as_bytes());
    let mut expected: std::collections::BTreeSet<u32> = ["index.m3u8", "init.mp4"]
        .into_iter()
        .chain(["seg0.m4s", "seg1.m4s", "seg2.m4s"])
        .flat_map(chunks)
        .collect();
    expect_exactly(&expected, "the playlist's first segments");

    // A seek to segment 4: segments 5 to 7 come ahead, 3 and 8 on do not.
    let got = curl(d, &format!("{url}/{id}/seg4.m4s"), &[]);
    assert_eq!(got.status, 200);
    assert!(got.body == std::fs::read(d.join("show/seg4.m4s")).unwrap());
    expected.extend(
        ["seg4.m4s", "seg5.m4s", "seg6.m4s", "seg7.m4s"]
            .into_iter()
            .flat_map(chunks),
    );
    expect_exactly(&expected, "the segments after segment 4");
    for k in [3, 8, 9] {
        let own = chunks(&format!("seg{k}.m4s"));
        let inside: Vec<u32> = own.clone().filter(|i| expected.contains(i)).collect();
        // Only a chunk it shares with a neighbour that came ahead.
        assert!(
            inside.len() <= 2,
            "segment {k} ({own:?}) came ahead: {inside:?}"
        );
    }
}
