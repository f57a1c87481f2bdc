//! Real players through the gateway: ffprobe and ffmpeg read and seek over HTTP, an HLS
//! directory plays from its playlist's URL, and headless Chromium, driven over chromedriver's
//! WebDriver HTTP API, plays `/watch/ID`, seeks, and shows the same figures as `/stats/ID`.
//!
//! The media are made with ffmpeg at test time (cached in Cargo's target tmp directory). Each
//! test says "skipped" and passes where ffmpeg, Chromium or chromedriver is not installed
//! (`.ci/run` installs them); the HLS tests also where chunkify takes no directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Proc, ServerProc, TrackerProc, bin, run_cmd};

/// Length of the generated clips: long enough for a seek to 40 s and to 80 %.
const CLIP_SECS: u32 = 48;
/// Chromium's flags: headless on a shared box, no network or background work of its own.
const CHROMIUM_FLAGS: [&str; 9] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--mute-audio",
];
/// How long the browser may take to start playing: on two loaded cores, Chromium's start
/// alone can take several seconds.
const PLAY_TIMEOUT: Duration = Duration::from_secs(60);

/// Whether `program` runs (`program -version` or `--version` exits 0).
fn installed(program: &str, flag: &str) -> bool {
    Command::new(program)
        .arg(flag)
        .output()
        .is_ok_and(|out| out.status.success())
}

/// `None` when the test can run; otherwise the reason it is skipped, already printed.
fn missing(tools: &[&str]) -> Option<String> {
    let missing: Vec<String> = tools
        .iter()
        .filter(|tool| {
            let flag = if tool.starts_with("ff") {
                "-version"
            } else {
                "--version"
            };
            !installed(tool, flag)
        })
        .map(|tool| {
            format!(
                "{tool} is not installed (Debian: apt-get install ffmpeg chromium chromium-driver)"
            )
        })
        .collect();
    if missing.is_empty() {
        return None;
    }
    let reason = missing.join("; ");
    eprintln!("skipped: {reason}");
    Some(reason)
}

/// A clip made once per test run and kept in Cargo's tmp directory for the other tests.
fn media(name: &str, make: fn(&Path)) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("player-media");
    let path = dir.join(name);
    if !path.exists() {
        std::fs::create_dir_all(&dir).unwrap();
        let partial = dir.join(format!("partial-{name}"));
        let _ = std::fs::remove_dir_all(&partial);
        let _ = std::fs::remove_file(&partial);
        make(&partial);
        std::fs::rename(&partial, &path).unwrap();
    }
    path
}

/// Runs ffmpeg with `args` (quiet, overwriting) and asserts it succeeded.
fn ffmpeg(args: &[&str]) {
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args);
    run_cmd(&mut cmd, &format!("ffmpeg {}", args.join(" ")), b"").ok();
}

/// The test pattern and a tone, `CLIP_SECS` long, at `size`, as ffmpeg input arguments.
fn source(size: &str) -> Vec<String> {
    let secs = CLIP_SECS.to_string();
    [
        "-f",
        "lavfi",
        "-i",
        &format!("testsrc2=size={size}:rate=25"),
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:sample_rate=48000",
        "-t",
        &secs,
    ]
    .map(String::from)
    .to_vec()
}

/// VP9/Opus WebM, small and fast to encode, a key frame every 2 s so that seeks land quickly;
/// the codecs Debian's Chromium plays (it has no H.264).
fn webm() -> PathBuf {
    media("clip.webm", |out| {
        let mut args = source("320x180");
        args.extend(
            [
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-b:v",
                "400k",
                "-g",
                "50",
                "-c:a",
                "libopus",
                "-b:a",
                "64k",
            ]
            .map(String::from),
        );
        args.push(out.with_extension("webm").to_string_lossy().into());
        ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
        std::fs::rename(out.with_extension("webm"), out).unwrap();
    })
}

/// An MP4 with its index (moov) at the end, ffmpeg's default: a player must read the end of
/// the file before anything else, which a pipe cannot give it. About 3 Mbit/s, so that the
/// bytes after 40 s are a small part of the whole.
fn mp4() -> PathBuf {
    media("clip.mp4", |out| {
        let mut args = source("640x360");
        args.extend(
            [
                "-c:v", "mpeg4", "-b:v", "3M", "-g", "50", "-c:a", "aac", "-b:a", "96k", "-f",
                "mp4",
            ]
            .map(String::from),
        );
        args.push(out.to_string_lossy().into());
        ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    })
}

/// An HLS directory: `index.m3u8`, `init.mp4` and 2 s segments. Fragmented MP4 segments with
/// VP9/Opus rather than the default MPEG-TS: Debian's Chromium plays HLS natively (156 says
/// "maybe" to the playlist type) but decoded no video from MPEG-4 Part 2 in TS, and has no H.264.
fn hls_dir() -> PathBuf {
    media("hls", |out| {
        std::fs::create_dir_all(out).unwrap();
        let mut args = source("320x180");
        let segments = out.join("seg%03d.m4s");
        args.extend(
            [
                "-c:v",
                "libvpx-vp9",
                "-deadline",
                "realtime",
                "-cpu-used",
                "8",
                "-b:v",
                "400k",
                "-g",
                "50",
                "-c:a",
                "libopus",
                "-f",
                "hls",
                "-hls_time",
                "2",
                "-hls_playlist_type",
                "vod",
                "-hls_segment_type",
                "fmp4",
                "-hls_segment_filename",
            ]
            .map(String::from),
        );
        args.push(segments.to_string_lossy().into());
        args.push(out.join("index.m3u8").to_string_lossy().into());
        ffmpeg(&args.iter().map(String::as_str).collect::<Vec<_>>());
    })
}

/// A tracker, an origin seeding `media` and `peers` more peer_servers holding it, and a
/// gateway with an empty store: what a viewer's machine starts from.
struct Swarm {
    _dir: tempfile::TempDir,
    _tracker: TrackerProc,
    _seeders: Vec<ServerProc>,
    _gateway: Proc,
    /// `http://ADDR` of the gateway.
    url: String,
    id: String,
}

impl Swarm {
    fn start(media: &Path, peers: usize) -> Swarm {
        Self::start_with_origin(media, peers, &[])
    }

    /// Like [`Swarm::start`], with `origin_flags` added to the origin's.
    fn start_with_origin(media: &Path, peers: usize, origin_flags: &[&str]) -> Swarm {
        let dir = tempfile::tempdir().unwrap();
        let tracker = TrackerProc::start(dir.path(), &[]);
        let seed = media.to_str().unwrap();
        let mut flags = vec!["--origin"];
        flags.extend_from_slice(origin_flags);
        let origin = ServerProc::start(dir.path(), "origin", Some(&tracker.url), &[seed], &flags);
        let id = origin.seeded[0].clone();
        let mut seeders = vec![origin];
        for p in 0..peers {
            let store = format!("peer-{p}");
            seeders.push(ServerProc::start(
                dir.path(),
                &store,
                Some(&tracker.url),
                &[seed],
                &[],
            ));
        }
        tracker.wait_for_peers(&id, peers + 1);
        let mut gateway = Proc::spawn(
            dir.path(),
            "peer_client",
            &[
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--tracker",
                &tracker.url,
                "--store",
                "gateway-store",
            ],
        );
        let url = gateway.listening();
        assert!(url.starts_with("http://"), "the gateway listens on {url}");
        Swarm {
            _dir: dir,
            _tracker: tracker,
            _seeders: seeders,
            _gateway: gateway,
            url,
            id,
        }
    }

    /// The gateway's `/stats/ID`.
    fn stats(&self) -> Value {
        ureq::get(&format!("{}/stats/{}", self.url, self.id))
            .call()
            .unwrap_or_else(|e| panic!("GET /stats/{}: {e}", self.id))
            .into_json()
            .unwrap()
    }
}

/// A JSON number field of `stats`, failing with the whole object when absent.
fn field(stats: &Value, name: &str) -> f64 {
    stats[name]
        .as_f64()
        .unwrap_or_else(|| panic!("/stats has no number {name:?}: {stats}"))
}

/// ffprobe's view of `url`: the container's duration and the streams' codec names.
fn probe(url: &str) -> (f64, Vec<String>) {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-of",
        "json",
        "-show_format",
        "-show_streams",
        url,
    ]);
    let out = run_cmd(&mut cmd, &format!("ffprobe {url}"), b"");
    let json: Value = serde_json::from_str(out.ok()).unwrap();
    let duration = json["format"]["duration"]
        .as_str()
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("ffprobe {url}: no duration in {json}"));
    let codecs = json["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["codec_name"].as_str().unwrap_or("").to_string())
        .collect();
    (duration, codecs)
}

#[test]
fn ffprobe_reads_duration_and_streams_over_the_gateway() {
    if missing(&["ffmpeg", "ffprobe"]).is_some() {
        return;
    }
    for (clip, codecs) in [(webm(), ["vp9", "opus"]), (mp4(), ["mpeg4", "aac"])] {
        let swarm = Swarm::start(&clip, 0);
        let (duration, found) = probe(&format!("{}/{}", swarm.url, swarm.id));
        assert!(
            (duration - f64::from(CLIP_SECS)).abs() < 1.0,
            "{clip:?}: ffprobe says {duration} s, the clip is {CLIP_SECS} s"
        );
        for codec in codecs {
            assert!(
                found.iter().any(|c| c == codec),
                "{clip:?}: streams {found:?}, no {codec}"
            );
        }
    }
}

/// The byte offset of the first video packet at or after `secs` in a local file.
fn packet_offset(file: &Path, secs: u32) -> u64 {
    let mut cmd = Command::new("ffprobe");
    cmd.args([
        "-v",
        "error",
        "-select_streams",
        "v:0",
        "-show_entries",
        "packet=pts_time,pos",
    ])
    .args(["-of", "csv=p=0", "-read_intervals", &format!("{secs}%+#1")])
    .arg(file);
    let out = run_cmd(&mut cmd, "ffprobe -show_entries packet=pos", b"");
    out.ok()
        .lines()
        .find_map(|line| line.split(',').nth(1)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no packet at {secs} s in {file:?}: {}", out.ok()))
}

/// The `Range: bytes=N-` starts of the requests in an ffmpeg debug log.
fn range_starts(log: &str) -> Vec<u64> {
    log.lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once("Range: bytes=")?;
            rest.split('-').next()?.trim().parse().ok()
        })
        .collect()
}

#[test]
fn ffmpeg_seeks_to_40s_in_an_mp4_with_moov_at_the_end_fetching_little() {
    if missing(&["ffmpeg", "ffprobe"]).is_some() {
        return;
    }
    let clip = mp4();
    let size = std::fs::metadata(&clip).unwrap().len();
    let at_40s = packet_offset(&clip, 40);
    // The gateway downloads the whole asset in the background, nearest the readers first; an
    // origin capped at 1 MiB/s takes some 18 s over the 18 MB clip, so what it holds when
    // ffmpeg is done shows what the seek needed, not how fast loopback is. The seek itself
    // needs the first chunk, the moov at the end and about 1 s of media: under 1 MB.
    let swarm = Swarm::start_with_origin(&clip, 0, &["--max-upload-rate", "1MiB"]);
    let url = format!("{}/{}", swarm.url, swarm.id);
    // -loglevel debug makes ffmpeg's http protocol print each request's headers, Range included.
    let mut cmd = Command::new("ffmpeg");
    cmd.args([
        "-hide_banner",
        "-nostdin",
        "-loglevel",
        "debug",
        "-ss",
        "40",
        "-i",
        &url,
    ])
    .args(["-t", "1", "-f", "null", "-"]);
    let started = Instant::now();
    let run = run_cmd(
        &mut cmd,
        &format!("ffmpeg -ss 40 -i {url} -t 1 -f null -"),
        b"",
    );
    run.ok();
    let took = started.elapsed();
    // Read at once: what the gateway had fetched when the seek was answered and decoded.
    let stats = swarm.stats();
    let fetched = field(&stats, "bytes_peers") + field(&stats, "bytes_origin");
    assert_eq!(field(&stats, "size") as u64, size, "{stats}");
    let starts = range_starts(&run.stderr);
    // A request starting within 1 MiB before the 40 s packet: the seek went straight there.
    assert!(
        starts.iter().any(|&s| s <= at_40s && at_40s - s < 1 << 20),
        "no Range request near byte {at_40s} (40 s) of {size}; ranges asked: {starts:?}"
    );
    assert!(
        fetched < size as f64 / 2.0,
        "the gateway fetched {fetched} of {size} bytes to answer a seek to 40 s: {stats}"
    );
    eprintln!(
        "seek to 40 s: ranges {starts:?}, 40 s at byte {at_40s}, fetched {fetched} of {size} \
         bytes, ffmpeg took {took:?}"
    );
}

/// Whether this build's chunkify takes a directory (directory assets, issue 15 part A).
fn directories_supported(dir: &Path) -> bool {
    let mut cmd = Command::new(bin("chunkify"));
    cmd.arg(dir);
    cmd.output().is_ok_and(|out| out.status.success())
}

#[test]
fn hls_playlist_plays_in_ffmpeg_from_its_gateway_url() {
    if missing(&["ffmpeg"]).is_some() {
        return;
    }
    let dir = hls_dir();
    if !directories_supported(&dir) {
        eprintln!("skipped: chunkify does not take a directory in this build");
        return;
    }
    let swarm = Swarm::start(&dir, 1);
    let url = format!("{}/{}/index.m3u8", swarm.url, swarm.id);
    let mut cmd = Command::new("ffmpeg");
    cmd.args(["-hide_banner", "-nostdin", "-loglevel", "error", "-i", &url])
        .args(["-f", "null", "-progress", "pipe:1", "-"]);
    let run = run_cmd(&mut cmd, &format!("ffmpeg -i {url} -f null -"), b"");
    let out_us: f64 = run
        .ok()
        .lines()
        .filter_map(|line| line.strip_prefix("out_time_us=")?.parse().ok())
        .fold(0.0, f64::max);
    assert!(
        out_us / 1e6 > f64::from(CLIP_SECS) - 2.0,
        "ffmpeg decoded {} s of the {CLIP_SECS} s playlist",
        out_us / 1e6
    );
}

/// Headless Chromium under chromedriver, spoken to over WebDriver's HTTP API; the session is
/// deleted (which ends the browser) and chromedriver killed when dropped.
pub struct Browser {
    driver: Proc,
    base: String,
}

impl Browser {
    pub fn start(dir: &Path) -> Browser {
        // chromedriver takes a port, not a listener: take a free one from the kernel. Another
        // process could take it in between; chromedriver then fails to start, loudly.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut driver = Proc::spawn_cmd(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .current_dir(dir),
            format!("chromedriver --port={port}"),
        );
        driver.wait_line(
            "ChromeDriver was started successfully",
            Duration::from_secs(30),
        );
        let profile = dir.join("chromium-profile");
        let mut args: Vec<String> = CHROMIUM_FLAGS.map(String::from).to_vec();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.push("--autoplay-policy=no-user-gesture-required".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"args": args, "binary": chromium_binary()},
        }}});
        let root = format!("http://127.0.0.1:{port}");
        let session: Value = ureq::post(&format!("{root}/session"))
            .timeout(Duration::from_secs(60))
            .send_json(caps)
            .unwrap_or_else(|e| panic!("starting a Chromium session: {e}"))
            .into_json()
            .unwrap();
        let id = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id in {session}"));
        Browser {
            base: format!("{root}/session/{id}"),
            driver,
        }
    }

    fn command(&self, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let answer = ureq::post(&url)
            .timeout(Duration::from_secs(60))
            .send_json(body);
        let answer: Value = match answer {
            Ok(response) => response.into_json().unwrap(),
            Err(ureq::Error::Status(status, response)) => {
                let text = response.into_string().unwrap_or_default();
                panic!(
                    "WebDriver {path}: {status}: {text}\nchromedriver: {}",
                    self.driver.stderr()
                )
            }
            Err(e) => panic!("WebDriver {path}: {e}"),
        };
        answer["value"].clone()
    }

    pub fn open(&self, url: &str) {
        self.command("/url", json!({ "url": url }));
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page; its return value.
    pub fn eval(&self, script: &str, args: Value) -> Value {
        self.command("/execute/sync", json!({ "script": script, "args": args }))
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1](value)` when done.
    pub fn eval_async(&self, script: &str, args: Value) -> Value {
        self.command("/timeouts", json!({ "script": 30_000 }));
        self.command("/execute/async", json!({ "script": script, "args": args }))
    }

    /// Polls `script` until it returns true, at most `timeout`.
    pub fn wait_for(&self, what: &str, script: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.eval(script, json!([])) != json!(true) {
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what}; page: {}",
                self.eval(PAGE_STATE, json!([]))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the page, base64-encoded.
    pub fn screenshot(&self) -> String {
        let url = format!("{}/screenshot", self.base);
        let answer: Value = ureq::get(&url).call().unwrap().into_json().unwrap();
        answer["value"].as_str().unwrap_or("").to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&self.base)
            .timeout(Duration::from_secs(10))
            .call();
        self.driver.kill();
    }
}

/// Debian names the binary `chromium`; elsewhere it may be `chromium-browser`.
fn chromium_binary() -> String {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or(&"/usr/bin/chromium")
        .to_string()
}

/// What a failed wait prints: the video's state, the page's status line and its events.
const PAGE_STATE: &str = "const v = document.getElementById('video'); return {
    currentTime: v.currentTime, duration: v.duration, paused: v.paused, readyState: v.readyState,
    error: v.error && v.error.code, status: document.getElementById('status').textContent,
    events: (window.watchEvents || []).map(e => e.type).slice(-20) };";

/// Chromium plays `url`: `currentTime` passes 1 s and the video has no error.
fn wait_playing(browser: &Browser) {
    browser.wait_for(
        "the video to play past 1 s",
        "const v = document.getElementById('video'); return !v.error && v.currentTime > 1;",
        PLAY_TIMEOUT,
    );
}

fn no_video_error(browser: &Browser) {
    let state = browser.eval(PAGE_STATE, json!([]));
    assert!(state["error"].is_null(), "the video failed: {state}");
}

#[test]
fn chromium_plays_the_watch_page_and_seeks_to_80_percent() {
    if missing(&["chromium", "chromedriver", "ffmpeg"]).is_some() {
        return;
    }
    let swarm = Swarm::start(&webm(), 0);
    let dir = tempfile::tempdir().unwrap();
    let browser = Browser::start(dir.path());
    browser.open(&format!("{}/watch/{}", swarm.url, swarm.id));
    wait_playing(&browser);
    // Seek to 80 % and wait for `seeked`, bounded by the script timeout.
    let seek = browser.eval_async(
        "const done = arguments[arguments.length - 1];
         const v = document.getElementById('video');
         const target = v.duration * 0.8;
         v.addEventListener('seeked', () => done({ seeked: true, at: v.currentTime, target }),
                            { once: true });
         v.addEventListener('error', () => done({ error: v.error.code }), { once: true });
         v.currentTime = target;",
        json!([]),
    );
    assert_eq!(
        seek["seeked"],
        json!(true),
        "the seek to 80 % did not finish: {seek}"
    );
    let target = seek["target"].as_f64().unwrap();
    assert!(
        (target - 0.8 * f64::from(CLIP_SECS)).abs() < 1.0,
        "80 % of the video is {target} s; the clip is {CLIP_SECS} s"
    );
    // Playback continues from there.
    browser.wait_for(
        "playback to continue after the seek",
        &format!(
            "const v = document.getElementById('video');
             return !v.error && !v.paused && v.currentTime > {};",
            target + 1.0
        ),
        PLAY_TIMEOUT,
    );
    no_video_error(&browser);
    let events = browser.eval("return window.watchEvents.map(e => e.type);", json!([]));
    for event in ["playing", "seeking", "seeked"] {
        assert!(
            events.as_array().unwrap().iter().any(|e| e == event),
            "no {event} event: {events}"
        );
    }
}

/// The page's figures as the JSON field names, from each figure's `data-value`.
const PAGE_FIGURES: &str = "const ids = { peers: 'peers', download_bps: 'download-rate',
    upload_bps: 'upload-rate', bytes_cache: 'bytes-cache', bytes_peers: 'bytes-peers',
    bytes_origin: 'bytes-origin', p2p_ratio: 'p2p-ratio', stalls: 'stalls', size: 'size' };
    const out = {};
    for (const field in ids) {
      const el = document.getElementById(ids[field]);
      out[field] = el.dataset.value === undefined ? null : Number(el.dataset.value);
      out[field + '_text'] = el.textContent;
    }
    return out;";

#[test]
fn watch_page_shows_p2p_bytes_and_the_same_figures_as_the_json_in_a_warm_swarm() {
    if missing(&["chromium", "chromedriver", "ffmpeg"]).is_some() {
        return;
    }
    let swarm = Swarm::start(&webm(), 3);
    let dir = tempfile::tempdir().unwrap();
    let browser = Browser::start(dir.path());
    browser.open(&format!("{}/watch/{}", swarm.url, swarm.id));
    wait_playing(&browser);
    browser.wait_for(
        "the page to show bytes from peers",
        "return Number(document.getElementById('bytes-peers').dataset.value) > 0;",
        PLAY_TIMEOUT,
    );
    // The page polls once a second: its figures and a fetch of the JSON made right after
    // reading them agree unless the figures moved in between. Bounded retries until they do.
    let fields = [
        "peers",
        "download_bps",
        "upload_bps",
        "bytes_cache",
        "bytes_peers",
        "bytes_origin",
        "p2p_ratio",
        "stalls",
        "size",
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        let page = browser.eval(PAGE_FIGURES, json!([]));
        let stats = swarm.stats();
        let within_a_second = started.elapsed() < Duration::from_secs(1);
        let equal = fields
            .iter()
            .all(|f| page[*f].as_f64() == stats[*f].as_f64());
        if within_a_second && equal {
            // Not `peers`: it counts live connections, and the 2.5 MiB clip may be whole (its
            // connections closed) before the figures are read.
            assert!(field(&stats, "bytes_peers") > 0.0, "{stats}");
            let text = page["bytes_peers_text"].as_str().unwrap();
            assert!(
                ["B", "KiB", "MiB", "GiB"].iter().any(|u| text.ends_with(u)),
                "bytes from peers shown as {text:?}"
            );
            let ratio = page["p2p_ratio_text"].as_str().unwrap();
            assert!(ratio.ends_with('%'), "P2P ratio shown as {ratio:?}");
            eprintln!("page and /stats agree: {page}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the page's figures never equalled /stats/{}:\npage {page}\njson {stats}",
            swarm.id
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    no_video_error(&browser);
    // The screenshot the closing note describes, for whoever runs this test.
    let png = browser.screenshot();
    assert!(!png.is_empty(), "WebDriver returned no screenshot");
}

#[test]
fn watch_page_reports_whether_chromium_plays_hls() {
    if missing(&["chromium", "chromedriver", "ffmpeg"]).is_some() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let browser = Browser::start(tmp.path());
    browser.open("about:blank");
    let support = browser.eval(
        "return document.createElement('video').canPlayType('application/vnd.apple.mpegurl');",
        json!([]),
    );
    // The finding the issue asks for, printed in every run (Chromium 156: "maybe").
    eprintln!("Chromium canPlayType('application/vnd.apple.mpegurl') = {support}");
    let dir = hls_dir();
    if !directories_supported(&dir) {
        eprintln!("skipped: chunkify does not take a directory in this build");
        return;
    }
    let swarm = Swarm::start(&dir, 0);
    browser.open(&format!("{}/watch/{}/index.m3u8", swarm.url, swarm.id));
    if support == json!("") {
        let notice = browser.eval(
            "return document.getElementById('hls').textContent;",
            json!([]),
        );
        assert!(
            notice
                .as_str()
                .unwrap()
                .contains("cannot play HLS natively"),
            "the page does not say HLS cannot play here: {notice}"
        );
    } else {
        wait_playing(&browser);
        // Frames decoded, not only the audio clock moving.
        browser.wait_for(
            "video frames from the HLS segments",
            "const v = document.getElementById('video');
             return v.videoWidth > 0 && v.getVideoPlaybackQuality().totalVideoFrames > 10;",
            PLAY_TIMEOUT,
        );
        no_video_error(&browser);
    }
}
