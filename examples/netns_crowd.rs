//! The driver of `bench/netns_crowd.sh`: swarms across network namespaces with
//! kernel-capped uplinks and relayed round trips, built with the same host helper as the
//! integration tests (`tests/netns.rs`, included below), so that what the benchmark
//! measures is what the tests check.
//!
//! - `crowd`: a tracker host, an origin host and N client hosts; per run a fresh tracker
//!   and origin, then N `peer_client get` at once (no rate flags: the kernel caps). Prints
//!   wall time (from starting the clients to the last exit, discovery included), the
//!   Kumar–Ross bound, their ratio, the origin host's egress ÷ F, failed and stuck
//!   clients, then medians. Also the time to the last summary (every output in place:
//!   clients that linger for their peers exit later) and where the clients' idle uplink
//!   went (start-up, middle, lingering, tail of exited hosts, as shares of N × wall), from
//!   each client's veth counter sampled every 100 ms.
//! - `single`: one client and one origin on a capped link, at several round trips: our
//!   `get` next to `curl` from a plain HTTP server (nginx, else python3 -m http.server)
//!   serving the same file over the same relay.
//! - `viewer`: a tracker host, an origin host, a viewer host and P puller hosts. The viewer
//!   runs `peer_client get --stream` into a player (a thread of this driver reading the pipe
//!   at a playback bitrate: the pipe is the only buffer); a moment later the P pullers `get`
//!   the same asset and find the viewer as a peer, so its uplink fills with their requests.
//!   Prints the viewer's first byte, stalls and stall seconds (its summary), the player's
//!   own underruns, the viewer's upload, the pullers' wall and whether every copy (what
//!   the player read included) is exact, then medians.
//!
//! Everything it creates is removed on exit; run as root.

#[path = "../tests/netns.rs"]
mod netns;

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::ChildStdout;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use netns::{Crowd, Host, Service};
use sha2::{Digest, Sha256};

/// Swarms across network namespaces with capped uplinks (see bench/netns_crowd.sh).
#[derive(Parser)]
struct Args {
    /// Directory of the release binaries (tracker, peer_server, peer_client) and of
    /// examples/delay_relay.
    #[arg(long, default_value = "target/release")]
    bin: PathBuf,
    /// The asset's size in MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: u64,
    /// Runs (crowd) or runs per round trip and tool (single).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The origin's --chunk-size (default: chunkify's).
    #[arg(long)]
    chunk_size: Option<String>,
    /// Work directory (the asset, stores, outputs, logs); default: a new one in $TMPDIR,
    /// removed at the end.
    #[arg(long)]
    work: Option<PathBuf>,
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N clients at once.
    Crowd {
        /// Client hosts.
        #[arg(long)]
        clients: usize,
        /// The origin host's egress cap, Mbit/s.
        #[arg(long)]
        origin_mbit: u64,
        /// Each client host's egress cap, Mbit/s.
        #[arg(long)]
        client_mbit: u64,
        /// Round trip added on every path, ms (0: no relays).
        #[arg(long, default_value_t = 0)]
        rtt_ms: u64,
        /// A run whose clients have not all exited this long after they started counts
        /// the rest as stuck (and kills them).
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        /// Print each client's summary line.
        #[arg(long)]
        show_clients: bool,
    },
    /// One client, one origin, at each round trip.
    Single {
        /// The link's cap (both hosts' egress), Mbit/s.
        #[arg(long, default_value_t = 1000)]
        mbit: u64,
        /// Round trips, ms, comma separated.
        #[arg(long, default_value = "0,10,50,100", value_delimiter = ',')]
        rtts: Vec<u64>,
    },
    /// A streaming viewer whose uplink pullers fill.
    Viewer {
        /// Puller hosts.
        #[arg(long, default_value_t = 8)]
        pullers: usize,
        /// The origin host's egress cap, Mbit/s.
        #[arg(long, default_value_t = 200)]
        origin_mbit: u64,
        /// The viewer host's egress cap, Mbit/s.
        #[arg(long, default_value_t = 50)]
        viewer_mbit: u64,
        /// Each puller host's egress cap, Mbit/s.
        #[arg(long, default_value_t = 50)]
        puller_mbit: u64,
        /// The player's playback bitrate, Mbit/s.
        #[arg(long, default_value_t = 8)]
        bitrate_mbit: u64,
        /// How long after the viewer the pullers start, ms.
        #[arg(long, default_value_t = 1000)]
        pull_delay_ms: u64,
        /// Round trip added on every path, ms (0: no relays).
        #[arg(long, default_value_t = 0)]
        rtt_ms: u64,
        /// A run whose viewer or pullers have not all exited this long after the viewer
        /// started counts the rest as stuck (and kills them).
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
    },
}

const TRACKER_PORT: u16 = 7070;
const ORIGIN_PORT: u16 = 7001;
const CLIENT_PORT: u16 = 7002;
const HTTP_PORT: u16 = 8080;
/// How long a server may take to print its `listening on` line (seeding a large file
/// included, on a busy box).
const START_TIMEOUT: Duration = Duration::from_secs(120);

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("netns_crowd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A child process with its output in files; killed (and reaped) on drop.
struct Daemon {
    child: Child,
    what: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    fn spawn(host: &Host, dir: &Path, program: &Path, args: &[&str], name: &str) -> Result<Daemon> {
        let stdout = File::create(dir.join(format!("{name}.out")))?;
        Daemon::spawn_to(host, dir, program, args, name, stdout.into())
    }

    /// As [`Daemon::spawn`], with stdout a pipe to the caller (its `.out` file stays empty).
    fn spawn_piped(
        host: &Host,
        dir: &Path,
        program: &Path,
        args: &[&str],
        name: &str,
    ) -> Result<(Daemon, ChildStdout)> {
        File::create(dir.join(format!("{name}.out")))?;
        let mut daemon = Daemon::spawn_to(host, dir, program, args, name, Stdio::piped())?;
        let pipe = daemon.child.stdout.take().context("no stdout pipe")?;
        Ok((daemon, pipe))
    }

    fn spawn_to(
        host: &Host,
        dir: &Path,
        program: &Path,
        args: &[&str],
        name: &str,
        out: Stdio,
    ) -> Result<Daemon> {
        let (stdout, stderr) = (
            dir.join(format!("{name}.out")),
            dir.join(format!("{name}.err")),
        );
        let what = format!(
            "(in {}) {} {}",
            host.name,
            program.display(),
            args.join(" ")
        );
        let child = host
            .command(program, dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Daemon {
            child,
            what,
            stdout,
            stderr,
        })
    }

    /// The rest of the first stdout line starting with `prefix`, waiting for it.
    fn wait_line(&mut self, prefix: &str) -> Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
            if let Some(rest) = out.lines().find_map(|l| l.strip_prefix(prefix)) {
                return Ok(rest.trim().to_string());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} ended {status} before printing {prefix:?}: {}",
                    self.what,
                    self.err()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} printed no {prefix:?} within {START_TIMEOUT:?}",
                    self.what
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn err(&self) -> String {
        let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binaries, and the relay's path.
struct Bins {
    dir: PathBuf,
    relay: PathBuf,
}

impl Bins {
    fn get(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Starts the relay in front of `service` when it has one; returns it once it listens.
fn start_relay(
    host: &Host,
    service: &Service,
    bins: &Bins,
    dir: &Path,
    name: &str,
) -> Result<Option<Daemon>> {
    let Some(args) = &service.relay_args else {
        return Ok(None);
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut relay = Daemon::spawn(host, dir, &bins.relay, &args, name)?;
    relay.wait_line("listening on ")?;
    Ok(Some(relay))
}

/// A tracker and an origin seeding `file`, with their relays.
struct Servers {
    // Held for their lifetime: dropping one kills it.
    _daemons: Vec<Daemon>,
    url: String,
    id: String,
}

fn start_servers(
    crowd: &Crowd,
    bins: &Bins,
    dir: &Path,
    delay_ms: u64,
    origin_rate: u64,
    chunk_size: Option<&str>,
) -> Result<Servers> {
    let mut daemons = Vec::new();
    let tracker = crowd.host(0);
    let service = tracker.service(TRACKER_PORT, delay_ms, None);
    daemons.extend(start_relay(tracker, &service, bins, dir, "tracker-relay")?);
    let _ = std::fs::remove_dir_all(dir.join("tracker-data"));
    let listen = service.listen.to_string();
    let args = ["--listen", &listen, "--data", "tracker-data"];
    let mut t = Daemon::spawn(tracker, dir, &bins.get("tracker"), &args, "tracker")?;
    t.wait_line("listening on ")?;
    daemons.push(t);
    let url = format!("http://{}", service.reach);

    let origin = crowd.host(1);
    let service = origin.service(ORIGIN_PORT, delay_ms, Some(origin_rate));
    daemons.extend(start_relay(origin, &service, bins, dir, "origin-relay")?);
    let _ = std::fs::remove_dir_all(dir.join("origin"));
    let (listen, reach) = (service.listen.to_string(), service.reach.to_string());
    let mut args = vec![
        "--origin",
        "--listen",
        &listen,
        "--advertise-addr",
        &reach,
        "--store",
        "origin",
        "--seed",
        "file.bin",
        "--tracker",
        &url,
    ];
    if let Some(size) = chunk_size {
        args.extend_from_slice(&["--chunk-size", size]);
    }
    let mut o = Daemon::spawn(origin, dir, &bins.get("peer_server"), &args, "origin")?;
    let seeded = o.wait_line("seeded ")?;
    let id = seeded
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    o.wait_line("listening on ")?;
    daemons.push(o);
    Ok(Servers {
        _daemons: daemons,
        url,
        id,
    })
}

/// The SHA-256 of a file, hex.
fn sha256(path: &Path) -> Result<String> {
    let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Writes `size` pseudo-random bytes (xorshift: fast, and incompressible for our purposes).
fn write_file(path: &Path, size: u64) -> Result<()> {
    let mut out = std::io::BufWriter::new(File::create(path)?);
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    for _ in 0..size.div_ceil(1 << 20) {
        for word in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    drop(out);
    File::options().write(true).open(path)?.set_len(size)?;
    Ok(())
}

/// Kumar & Ross's lower bound for F bytes to `n` clients, origin upload `us` and client
/// uploads `uc` (bytes/s, downloads unbounded): max(F/u_s, N·F/(u_s + N·u_c)).
fn kumar_ross(f: f64, n: usize, us: f64, uc: f64) -> f64 {
    let n = n as f64;
    (f / us).max(n * f / (us + n * uc))
}

/// The clients' origin bytes by reason and their duplicates, summed over a run (the
/// `origin_reasons` and `duplicates` of each `--json` summary).
#[derive(Default)]
struct Why {
    reasons: Vec<(String, u64)>,
    dup_origin: u64,
    dup_peers: u64,
    /// Duplicates by why the chunk was asked of a second source (`duplicates.why`).
    dup_why: Vec<(String, u64)>,
    /// Second copies a cancel stopped in time (`duplicates.cancelled`).
    cancelled: u64,
}

/// Adds the byte counts of a JSON object (name → bytes) to `sums`, by name.
fn add_named(sums: &mut Vec<(String, u64)>, counts: &serde_json::Value) {
    for (name, bytes) in counts.as_object().into_iter().flatten() {
        let bytes = bytes.as_u64().unwrap_or(0);
        match sums.iter_mut().find(|r| r.0 == *name) {
            Some(r) => r.1 += bytes,
            None => sums.push((name.clone(), bytes)),
        }
    }
}

/// Each named sum that is not nil, as "name 0.123" in F.
fn in_f(sums: &[(String, u64)], f: f64) -> Vec<String> {
    sums.iter()
        .filter(|r| r.1 > 0)
        .map(|(name, bytes)| format!("{name} {:.3}", *bytes as f64 / f))
        .collect()
}

impl Why {
    fn add(&mut self, summary: &serde_json::Value) {
        add_named(&mut self.reasons, &summary["origin_reasons"]);
        self.dup_origin += summary["duplicates"]["from_origin"].as_u64().unwrap_or(0);
        self.dup_peers += summary["duplicates"]["from_peers"].as_u64().unwrap_or(0);
        add_named(&mut self.dup_why, &summary["duplicates"]["why"]);
        self.cancelled += summary["duplicates"]["cancelled"].as_u64().unwrap_or(0);
    }

    /// One line, in F.
    fn line(&self, f: f64) -> String {
        let (reasons, why) = (in_f(&self.reasons, f), in_f(&self.dup_why, f));
        format!(
            "origin chunks/F by reason: {}; duplicates/F: from origin {:.3}, from peers {:.3} (second asked for: {}; cancelled in time {:.3})",
            if reasons.is_empty() {
                "none".to_string()
            } else {
                reasons.join(", ")
            },
            self.dup_origin as f64 / f,
            self.dup_peers as f64 / f,
            if why.is_empty() {
                "none".to_string()
            } else {
                why.join(", ")
            },
            self.cancelled as f64 / f
        )
    }
}

/// How often the clients' uplink counters are sampled for [`IdleSplit`].
const UPLINK_SAMPLE: Duration = Duration::from_millis(100);

/// Where the clients' unused uplink went, in bytes their caps would have let out: before a
/// host's uplink first carried half its cap (start-up), while it downloaded (middle), after
/// its output was complete while it still served (lingering), and after it exited (tail).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct IdleSplit {
    startup: f64,
    middle: f64,
    lingering: f64,
    tail: f64,
}

/// One client's state at the start of a sampled interval, for [`IdleSplit::add`].
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    StartUp,
    Middle,
    Lingering,
    Exited,
}

impl Phase {
    /// A client's phase at `at`: whether its uplink was busy yet, and when its output was
    /// done and it exited, if it has.
    fn at(at: Instant, busy_yet: bool, done: Option<Instant>, exited: Option<Instant>) -> Phase {
        let by = |t: Option<Instant>| t.is_some_and(|t| t <= at);
        if by(exited) {
            Phase::Exited
        } else if !busy_yet {
            Phase::StartUp
        } else if by(done) {
            Phase::Lingering
        } else {
            Phase::Middle
        }
    }
}

impl IdleSplit {
    /// An interval in which a client in `phase` could send `cap` bytes and sent `sent`;
    /// answers whether its uplink was busy (half its cap or more), which ends its start-up.
    fn add(&mut self, phase: Phase, cap: f64, sent: f64) -> bool {
        let idle = (cap - sent).max(0.0);
        *match phase {
            Phase::StartUp => &mut self.startup,
            Phase::Middle => &mut self.middle,
            Phase::Lingering => &mut self.lingering,
            Phase::Exited => &mut self.tail,
        } += idle;
        sent >= cap / 2.0
    }

    /// One line, each part over `total` (N x cap x wall).
    fn line(&self, total: f64) -> String {
        let pct = |x: f64| x / total.max(1.0) * 100.0;
        format!(
            "idle client uplinks / (N x wall): start-up {:.0}%, middle {:.0}%, lingering {:.0}%, tail (exited) {:.0}%",
            pct(self.startup),
            pct(self.middle),
            pct(self.lingering),
            pct(self.tail)
        )
    }
}

/// The box's CPU time from /proc/stat, in ticks: busy (all but idle and iowait) and total.
struct CpuTicks {
    busy: u64,
    total: u64,
}

impl CpuTicks {
    /// The share of the box's CPU time that was busy since `before` (0 to 1, all cores).
    fn busy_since(&self, before: &CpuTicks) -> f64 {
        let total = self.total.saturating_sub(before.total);
        self.busy.saturating_sub(before.busy) as f64 / total.max(1) as f64
    }
}

fn cpu_ticks() -> Result<CpuTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat has no cpu line")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|t| t.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let total: u64 = ticks.iter().take(8).sum();
    Ok(CpuTicks {
        busy: total.saturating_sub(idle),
        total,
    })
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// The bytes each of the `n` clients (hosts 2..) has sent so far.
fn sent_by(crowd: &Crowd, n: usize) -> Result<Vec<u64>> {
    (0..n)
        .map(|i| crowd.host(2 + i).sent_bytes().map_err(anyhow::Error::msg))
        .collect()
}

fn mbit(rate: u64) -> u64 {
    rate * 1_000_000
}

fn run(args: Args) -> Result<()> {
    let bins = Bins {
        relay: args.bin.join("examples").join("delay_relay"),
        dir: args.bin.clone(),
    };
    for path in [
        bins.get("tracker"),
        bins.get("peer_client"),
        bins.relay.clone(),
    ] {
        if !path.exists() {
            bail!(
                "{} is missing: cargo build --release --bins --example delay_relay",
                path.display()
            );
        }
    }
    let made = match &args.work {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("swarmcache-netns.")
                .tempdir()?,
        ),
    };
    let dir = args
        .work
        .as_deref()
        .or(made.as_ref().map(|t| t.path()))
        .context("no work directory")?;
    // nginx's workers and python serve the file as whoever they run as.
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let size = args.size_mib << 20;
    write_file(&dir.join("file.bin"), size)?;
    let sum = sha256(&dir.join("file.bin"))?;
    match &args.mode {
        Mode::Crowd {
            clients,
            origin_mbit,
            client_mbit,
            rtt_ms,
            timeout_s,
            show_clients,
        } => {
            let setup = CrowdSetup {
                clients: *clients,
                origin_rate: mbit(*origin_mbit),
                client_rate: mbit(*client_mbit),
                delay_ms: rtt_ms / 2,
                timeout: Duration::from_secs(*timeout_s),
                show_clients: *show_clients,
            };
            crowd(&args, &bins, dir, &sum, &setup)
        }
        Mode::Single { mbit: rate, rtts } => single(&args, &bins, dir, &sum, mbit(*rate), rtts),
        Mode::Viewer {
            pullers,
            origin_mbit,
            viewer_mbit,
            puller_mbit,
            bitrate_mbit,
            pull_delay_ms,
            rtt_ms,
            timeout_s,
        } => {
            let setup = ViewerSetup {
                pullers: *pullers,
                origin_rate: mbit(*origin_mbit),
                viewer_rate: mbit(*viewer_mbit),
                puller_rate: mbit(*puller_mbit),
                bitrate: mbit(*bitrate_mbit),
                pull_delay: Duration::from_millis(*pull_delay_ms),
                delay_ms: rtt_ms / 2,
                timeout: Duration::from_secs(*timeout_s),
            };
            viewer(&args, &bins, dir, &sum, &setup)
        }
    }
}

/// The arguments of a serving `peer_client get` named `name` in `dir` (store `name`,
/// output `name.bin`, or stdout with `stream`), after removing what an earlier run left.
fn get_argv(
    servers: &Servers,
    dir: &Path,
    name: &str,
    service: &Service,
    stream: bool,
) -> Vec<String> {
    let _ = std::fs::remove_dir_all(dir.join(name));
    let _ = std::fs::remove_file(dir.join(format!("{name}.bin")));
    let (listen, reach) = (service.listen.to_string(), service.reach.to_string());
    let out = format!("{name}.bin");
    let output: &[&str] = if stream { &["--stream"] } else { &["-o", &out] };
    let mut argv = vec!["get", &servers.id, "--tracker", &servers.url];
    argv.extend_from_slice(output);
    argv.extend_from_slice(&[
        "--store",
        name,
        "--listen",
        &listen,
        "--advertise-addr",
        &reach,
        "--json",
    ]);
    if std::env::var_os("NETNS_PROGRESS").is_some() {
        argv.extend_from_slice(&["--progress", "json"]);
    } else {
        argv.push("--quiet");
    }
    let mut argv: Vec<String> = argv.iter().map(|s| s.to_string()).collect();
    if let Ok(extra) = std::env::var("CLIENT_ARGS") {
        argv.extend(extra.split_whitespace().map(str::to_string));
    }
    argv
}

struct CrowdSetup {
    clients: usize,
    origin_rate: u64,
    client_rate: u64,
    delay_ms: u64,
    timeout: Duration,
    show_clients: bool,
}

fn crowd(args: &Args, bins: &Bins, dir: &Path, sum: &str, setup: &CrowdSetup) -> Result<()> {
    let n = setup.clients;
    let Some(crowd) = Crowd::create("netns_crowd", 2 + n) else {
        bail!("cannot make the hosts (see above)");
    };
    crowd
        .cap(1, setup.origin_rate)
        .map_err(anyhow::Error::msg)?;
    for i in 0..n {
        crowd
            .cap(2 + i, setup.client_rate)
            .map_err(anyhow::Error::msg)?;
    }
    let f = (args.size_mib << 20) as f64;
    let bound = kumar_ross(
        f,
        n,
        setup.origin_rate as f64 / 8.0,
        setup.client_rate as f64 / 8.0,
    );
    println!(
        "N={n}, F={} MiB, caps origin/client {}/{} Mbit/s, RTT {} ms, bound {bound:.2} s",
        args.size_mib,
        setup.origin_rate / 1_000_000,
        setup.client_rate / 1_000_000,
        setup.delay_ms * 2
    );
    println!(
        "{:<4} {:>8} {:>10} {:>13} {:>15} {:>7} {:>6} {:>7} {:>10}",
        "run",
        "wall_s",
        "wall/bound",
        "origin_tx/F",
        "origin_chunks/F",
        "failed",
        "stuck",
        "done_s",
        "done/bound"
    );
    let (mut walls, mut ratios, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
    let mut dones = Vec::new();
    let (mut failed_total, mut stuck_total) = (0, 0);
    for run in 1..=args.runs {
        let servers = start_servers(
            &crowd,
            bins,
            dir,
            setup.delay_ms,
            setup.origin_rate,
            args.chunk_size.as_deref(),
        )?;
        let mut relays = Vec::new();
        let mut commands = Vec::new();
        for i in 0..n {
            let host = crowd.host(2 + i);
            let service = host.service(CLIENT_PORT, setup.delay_ms, Some(setup.client_rate));
            relays.extend(start_relay(
                host,
                &service,
                bins,
                dir,
                &format!("c{i}-relay"),
            )?);
            commands.push(get_argv(&servers, dir, &format!("c{i}"), &service, false));
        }
        let origin_before = crowd.host(1).tx_bytes().map_err(anyhow::Error::msg)?;
        let clients_before = (0..n)
            .map(|i| crowd.host(2 + i).tx_bytes().map_err(anyhow::Error::msg))
            .collect::<Result<Vec<u64>>>()?;
        let cpu_before = cpu_ticks()?;
        let started = Instant::now();
        let mut running = Vec::new();
        for (i, argv) in commands.iter().enumerate() {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            running.push(Some(Daemon::spawn(
                crowd.host(2 + i),
                dir,
                &bins.get("peer_client"),
                &argv,
                &format!("c{i}"),
            )?));
        }
        let mut last_exit = started;
        let mut failed = Vec::new();
        let mut left = n;
        // When each client's summary was written (its output is in place) and it exited.
        let (mut done, mut exited) = (vec![None; n], vec![None; n]);
        let mut split = IdleSplit::default();
        let mut busy_yet = vec![false; n];
        let mut sampled = (started, sent_by(&crowd, n)?);
        let cap_rate = setup.client_rate as f64 / 8.0;
        while left > 0 && started.elapsed() < setup.timeout {
            for (i, slot) in running.iter_mut().enumerate() {
                let Some(client) = slot else { continue };
                if done[i].is_none() && client.stdout.metadata().is_ok_and(|m| m.len() > 0) {
                    done[i] = Some(Instant::now());
                }
                if let Some(status) = client.child.try_wait()? {
                    last_exit = Instant::now();
                    exited[i] = Some(last_exit);
                    done[i].get_or_insert(last_exit);
                    if !status.success() {
                        failed.push(format!("client {i} ended {status}: {}", client.err()));
                    }
                    *slot = None;
                    left -= 1;
                }
            }
            let now = Instant::now();
            if now.duration_since(sampled.0) >= UPLINK_SAMPLE || left == 0 {
                let sent = sent_by(&crowd, n)?;
                let cap = cap_rate * now.duration_since(sampled.0).as_secs_f64();
                for i in 0..n {
                    let phase = Phase::at(sampled.0, busy_yet[i], done[i], exited[i]);
                    let bytes = sent[i].saturating_sub(sampled.1[i]) as f64;
                    busy_yet[i] |= split.add(phase, cap, bytes);
                }
                sampled = (now, sent);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let wall = last_exit.duration_since(started).as_secs_f64();
        let last_done = done.iter().flatten().max().copied().unwrap_or(last_exit);
        let done_s = last_done.duration_since(started).as_secs_f64();
        let cpu_busy = cpu_ticks()?.busy_since(&cpu_before);
        let stuck: Vec<usize> = (0..n).filter(|&i| running[i].is_some()).collect();
        drop(running);
        let origin_tx = crowd.host(1).tx_bytes().map_err(anyhow::Error::msg)? - origin_before;
        // Each uplink's use over the run: bytes sent over what its cap allows in the wall.
        let mut uplinks = Vec::new();
        for (i, before) in clients_before.iter().enumerate() {
            let tx = crowd.host(2 + i).tx_bytes().map_err(anyhow::Error::msg)?;
            uplinks
                .push(tx.saturating_sub(*before) as f64 / (setup.client_rate as f64 / 8.0 * wall));
        }
        let origin_use = origin_tx as f64 / (setup.origin_rate as f64 / 8.0 * wall);
        let mut from_origin = 0u64;
        let mut why = Why::default();
        for i in 0..n {
            let summary =
                std::fs::read_to_string(dir.join(format!("c{i}.out"))).unwrap_or_default();
            if setup.show_clients {
                println!("  client {i}: {}", summary.trim());
            }
            if let Ok(json) = serde_json::from_str::<serde_json::Value>(summary.trim()) {
                from_origin += json["from_origin"].as_u64().unwrap_or(0);
                why.add(&json);
            }
            if stuck.contains(&i) {
                continue;
            }
            let out = dir.join(format!("c{i}.bin"));
            match sha256(&out) {
                Ok(s) if s == sum => {}
                Ok(s) => failed.push(format!("client {i}: output sha256 {s}, not {sum}")),
                Err(e)
                    if !failed
                        .iter()
                        .any(|m| m.starts_with(&format!("client {i} "))) =>
                {
                    failed.push(format!("client {i}: {e:#}"))
                }
                Err(_) => {}
            }
            let _ = std::fs::remove_file(&out);
            let _ = std::fs::remove_dir_all(dir.join(format!("c{i}")));
        }
        drop(relays);
        drop(servers);
        for message in &failed {
            eprintln!("  run {run}: {message}");
        }
        for i in &stuck {
            eprintln!(
                "  run {run}: client {i} had not exited after {:?} (killed)",
                setup.timeout
            );
        }
        let (ratio, payload) = (origin_tx as f64 / f, from_origin as f64 / f);
        println!(
            "{run:<4} {wall:>8.2} {:>10.2} {ratio:>13.3} {payload:>15.3} {:>7} {:>6} {done_s:>7.2} {:>10.2}",
            wall / bound,
            failed.len(),
            stuck.len(),
            done_s / bound
        );
        println!("     {}", why.line(f));
        println!("     {}", split.line(n as f64 * cap_rate * wall));
        uplinks.sort_by(f64::total_cmp);
        println!(
            "     uplink use: clients min {:.0}% median {:.0}%, origin {:.0}%; box CPU busy {:.0}%",
            uplinks.first().copied().unwrap_or(0.0) * 100.0,
            median(&uplinks) * 100.0,
            origin_use * 100.0,
            cpu_busy * 100.0
        );
        walls.push(wall);
        dones.push(done_s);
        ratios.push(ratio);
        payloads.push(payload);
        failed_total += failed.len();
        stuck_total += stuck.len();
    }
    let (w, d) = (median(&walls), median(&dones));
    println!(
        "{:<4} {w:>8.2} {:>10.2} {:>13.3} {:>15.3} {failed_total:>7} {stuck_total:>6} {d:>7.2} {:>10.2}",
        "med",
        w / bound,
        median(&ratios),
        median(&payloads),
        d / bound
    );
    println!(
        "(medians of {} runs; wall from starting the clients to the last exit, done to the last summary \
         (every output in place; a client that lingers for its peers exits later); origin_tx: the origin \
         host's egress counter, frames included; origin_chunks: chunk bytes the clients got from it)",
        args.runs
    );
    Ok(())
}

/// A read that arrives this much after the player wanted it counts as an underrun: less is
/// the sleep and scheduling jitter of a loaded box, which a real player's few frames of
/// decoded buffer absorb.
const UNDERRUN_SLACK: Duration = Duration::from_millis(50);

/// A player's clock: byte b is due at start + b / rate, and the clock restarts later by
/// however late a byte came (a player that rebuffers resumes from where it stopped).
#[derive(Debug)]
struct Playback {
    /// Bytes per second.
    rate: f64,
    /// When byte 0 was played, shifted by every underrun so far.
    start: Option<Instant>,
    underruns: u32,
    underrun_secs: f64,
    /// The longest underrun: how late, and at which second of the playback.
    longest: (f64, f64),
    /// When each underrun ended, and how late it was.
    events: Vec<(Instant, f64)>,
    /// Reads over the slack late only because the player itself woke late (the data was
    /// in the pipe): the box's scheduling, not the stream's doing.
    late_wakes: u32,
}

impl Playback {
    fn new(rate: f64) -> Playback {
        Playback {
            rate,
            start: None,
            underruns: 0,
            underrun_secs: 0.0,
            longest: (0.0, 0.0),
            events: Vec::new(),
            late_wakes: 0,
        }
    }

    /// When the player wants the byte at `offset` (now, before the first byte).
    fn due(&self, offset: u64, now: Instant) -> Instant {
        match self.start {
            Some(start) => start + Duration::from_secs_f64(offset as f64 / self.rate),
            None => now,
        }
    }

    /// Bytes from `offset` on arrived at `now`, read by a player that woke to read them at
    /// `woke`: starts the clock on the first; counts an underrun when the read waited on an
    /// empty pipe past their due time by over the slack (starved: from the later of due and
    /// the wake-up to `now`), a late wake-up when only the player itself was late; either
    /// way over the slack, the clock restarts from now (the player resumes from there).
    fn arrived(&mut self, offset: u64, woke: Instant, now: Instant) {
        let Some(start) = self.start else {
            self.start = Some(now);
            return;
        };
        let due = self.due(offset, now);
        let late = now.saturating_duration_since(due);
        let starved = now.saturating_duration_since(due.max(woke));
        if starved > UNDERRUN_SLACK {
            self.underruns += 1;
            self.underrun_secs += starved.as_secs_f64();
            if starved.as_secs_f64() > self.longest.0 {
                self.longest = (starved.as_secs_f64(), offset as f64 / self.rate);
            }
            self.events.push((now, starved.as_secs_f64()));
        } else if late > UNDERRUN_SLACK {
            self.late_wakes += 1;
        }
        if late > UNDERRUN_SLACK {
            self.start = Some(start + late);
        }
    }
}

/// What the player read.
struct Played {
    bytes: u64,
    sha256: String,
    underruns: u32,
    underrun_secs: f64,
    longest: (f64, f64),
    events: Vec<(Instant, f64)>,
    late_wakes: u32,
}

/// Reads `pipe` to its end as a player at `rate` bytes/s would: a small read each time
/// the playback reaches the end of what it has, never ahead (the pipe is the only buffer).
fn play(mut pipe: impl Read, rate: f64) -> std::io::Result<Played> {
    // 20 ms of playback per read, so that the pipe, not this buffer, holds what is ahead.
    let mut buf = vec![0; ((rate / 50.0) as usize).clamp(4 << 10, 64 << 10)];
    let (mut clock, mut hasher, mut offset) = (Playback::new(rate), Sha256::new(), 0u64);
    loop {
        let wait = clock
            .due(offset, Instant::now())
            .saturating_duration_since(Instant::now());
        std::thread::sleep(wait);
        let woke = Instant::now();
        let n = pipe.read(&mut buf)?;
        if n == 0 {
            break;
        }
        clock.arrived(offset, woke, Instant::now());
        hasher.update(&buf[..n]);
        offset += n as u64;
    }
    Ok(Played {
        bytes: offset,
        sha256: hex::encode(hasher.finalize()),
        underruns: clock.underruns,
        underrun_secs: clock.underrun_secs,
        longest: clock.longest,
        events: clock.events,
        late_wakes: clock.late_wakes,
    })
}

struct ViewerSetup {
    pullers: usize,
    origin_rate: u64,
    viewer_rate: u64,
    puller_rate: u64,
    bitrate: u64,
    pull_delay: Duration,
    delay_ms: u64,
    timeout: Duration,
}

/// The last line of `text` that is a JSON object (the summary of a `get --json`).
fn last_json(text: &str) -> Option<serde_json::Value> {
    text.lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l.trim()).ok())
        .filter(serde_json::Value::is_object)
}

fn viewer(args: &Args, bins: &Bins, dir: &Path, sum: &str, setup: &ViewerSetup) -> Result<()> {
    let p = setup.pullers;
    // Hosts: 0 tracker, 1 origin, 2 viewer, 3.. pullers.
    let Some(crowd) = Crowd::create("netns_crowd viewer", 3 + p) else {
        bail!("cannot make the hosts (see above)");
    };
    crowd
        .cap(1, setup.origin_rate)
        .map_err(anyhow::Error::msg)?;
    crowd
        .cap(2, setup.viewer_rate)
        .map_err(anyhow::Error::msg)?;
    for i in 0..p {
        crowd
            .cap(3 + i, setup.puller_rate)
            .map_err(anyhow::Error::msg)?;
    }
    let f = args.size_mib << 20;
    println!(
        "viewer + {p} pullers, F={} MiB, caps origin/viewer/puller {}/{}/{} Mbit/s, playback {} Mbit/s, \
         pullers {} ms after the viewer, RTT {} ms",
        args.size_mib,
        setup.origin_rate / 1_000_000,
        setup.viewer_rate / 1_000_000,
        setup.puller_rate / 1_000_000,
        setup.bitrate / 1_000_000,
        setup.pull_delay.as_millis(),
        setup.delay_ms * 2
    );
    println!(
        "{:<4} {:>8} {:>9} {:>8} {:>7} {:>6} {:>8} {:>6} {:>8} {:>10} {:>5} {:>7} {:>6}",
        "run",
        "first_s",
        "underruns",
        "under_s",
        "during",
        "stalls",
        "stall_s",
        "waits",
        "up_MiB",
        "pullers_s",
        "exact",
        "failed",
        "stuck"
    );
    let mut rows: Vec<[f64; VIEWER_COLUMNS]> = Vec::new();
    let (mut failed_total, mut stuck_total, mut all_exact) = (0, 0, true);
    for run in 1..=args.runs {
        let servers = start_servers(
            &crowd,
            bins,
            dir,
            setup.delay_ms,
            setup.origin_rate,
            args.chunk_size.as_deref(),
        )?;
        let mut relays = Vec::new();
        let mut commands = Vec::new();
        for i in 0..=p {
            let (host, rate) = match i {
                0 => (crowd.host(2), setup.viewer_rate),
                _ => (crowd.host(2 + i), setup.puller_rate),
            };
            let name = if i == 0 {
                "v".to_string()
            } else {
                format!("p{i}")
            };
            let service = host.service(CLIENT_PORT, setup.delay_ms, Some(rate));
            relays.extend(start_relay(
                host,
                &service,
                bins,
                dir,
                &format!("{name}-relay"),
            )?);
            commands.push((
                name.clone(),
                get_argv(&servers, dir, &name, &service, i == 0),
            ));
        }
        let argv: Vec<&str> = commands[0].1.iter().map(String::as_str).collect();
        let (viewer, pipe) =
            Daemon::spawn_piped(crowd.host(2), dir, &bins.get("peer_client"), &argv, "v")?;
        let rate = setup.bitrate as f64 / 8.0;
        let player = std::thread::spawn(move || play(pipe, rate));
        let viewer_started = Instant::now();
        std::thread::sleep(setup.pull_delay);
        let started = Instant::now();
        let mut running = vec![Some(viewer)];
        for (i, (name, argv)) in commands.iter().enumerate().skip(1) {
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            running.push(Some(Daemon::spawn(
                crowd.host(2 + i),
                dir,
                &bins.get("peer_client"),
                &argv,
                name,
            )?));
        }
        let mut last_exit = started;
        let mut failed = Vec::new();
        let mut left = running.len();
        while left > 0 && viewer_started.elapsed() < setup.timeout {
            for (i, slot) in running.iter_mut().enumerate() {
                let Some(client) = slot else { continue };
                if let Some(status) = client.child.try_wait()? {
                    if i > 0 {
                        last_exit = Instant::now();
                    }
                    if !status.success() {
                        failed.push(format!(
                            "{} ended {status}: {}",
                            commands[i].0,
                            client.err()
                        ));
                    }
                    *slot = None;
                    left -= 1;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let pullers_wall = last_exit.duration_since(started).as_secs_f64();
        let stuck: Vec<usize> = (0..=p).filter(|&i| running[i].is_some()).collect();
        // Killing a stuck viewer closes the pipe: the player then reads to its end.
        drop(running);
        let played = match player.join() {
            Ok(played) => played.context("the player's read of the viewer's stdout")?,
            Err(_) => bail!("the player thread panicked"),
        };
        let summary = last_json(&std::fs::read_to_string(dir.join("v.err")).unwrap_or_default());
        let field = |name: &str| summary.as_ref().and_then(|s| s[name].as_f64());
        let mut exact = played.sha256 == sum && played.bytes == f;
        if !exact && !stuck.contains(&0) {
            failed.push(format!(
                "the player read {} bytes, sha256 {}, not {f} bytes, {sum}",
                played.bytes, played.sha256
            ));
        }
        for (i, (name, _)) in commands.iter().enumerate().skip(1) {
            if stuck.contains(&i) {
                exact = false;
                continue;
            }
            let out = dir.join(format!("{name}.bin"));
            match sha256(&out) {
                Ok(s) if s == sum => {}
                Ok(s) => {
                    exact = false;
                    failed.push(format!("{name}: output sha256 {s}, not {sum}"));
                }
                Err(e) => {
                    exact = false;
                    if !failed.iter().any(|m| m.starts_with(&format!("{name} "))) {
                        failed.push(format!("{name}: {e:#}"));
                    }
                }
            }
        }
        for (name, _) in &commands {
            let _ = std::fs::remove_file(dir.join(format!("{name}.bin")));
            let _ = std::fs::remove_dir_all(dir.join(name));
        }
        drop(relays);
        drop(servers);
        for message in &failed {
            eprintln!("  run {run}: {message}");
        }
        // Those after the pullers ended are not theirs (a loaded box's scheduling, or the
        // viewer's own end).
        let during: Vec<f64> = played
            .events
            .iter()
            .filter(|(at, _)| *at <= last_exit)
            .map(|(_, late)| *late)
            .collect();
        if played.late_wakes > 0 {
            eprintln!(
                "  run {run}: the player itself woke over {} ms late {} times with the data in the \
                 pipe (this box's scheduling; not underruns)",
                UNDERRUN_SLACK.as_millis(),
                played.late_wakes
            );
        }
        if played.underruns > 0 {
            eprintln!(
                "  run {run}: the player's longest underrun: {:.2} s, at {:.1} s of playback; \
                 {} of {} ({:.2} s) while the pullers ran",
                played.longest.0,
                played.longest.1,
                during.len(),
                played.underruns,
                during.iter().sum::<f64>()
            );
        }
        for &i in &stuck {
            eprintln!(
                "  run {run}: {} had not exited {:?} after the viewer started (killed)",
                commands[i].0, setup.timeout
            );
        }
        let row = [
            field("first_byte_secs").unwrap_or(f64::NAN),
            played.underruns as f64,
            played.underrun_secs,
            during.len() as f64,
            field("stalls").unwrap_or(f64::NAN),
            field("stall_secs").unwrap_or(f64::NAN),
            field("waits").unwrap_or(f64::NAN),
            field("uploaded").unwrap_or(f64::NAN) / (1 << 20) as f64,
            pullers_wall,
        ];
        print_viewer_row(&run.to_string(), &row, exact, failed.len(), stuck.len());
        rows.push(row);
        all_exact &= exact;
        failed_total += failed.len();
        stuck_total += stuck.len();
    }
    let medians: Vec<f64> = (0..VIEWER_COLUMNS)
        .map(|c| median(&rows.iter().map(|r| r[c]).collect::<Vec<_>>()))
        .collect();
    let medians: [f64; VIEWER_COLUMNS] = medians.try_into().unwrap_or([f64::NAN; VIEWER_COLUMNS]);
    print_viewer_row("med", &medians, all_exact, failed_total, stuck_total);
    let underruns: f64 = rows.iter().map(|r| r[1]).sum();
    println!(
        "target (issue 14): 0 underruns after the first byte: {} ({underruns} in {} runs)",
        if underruns == 0.0 { "met" } else { "missed" },
        args.runs
    );
    println!(
        "(medians of {} runs; underruns, the figure the target is judged on: the player's reads over \
         {} ms late, under_s their total, during: those before the last puller exited; first_s, \
         stalls, stall_s, waits, up_MiB: the viewer's summary (a stall: a wait for a chunk over {} ms \
         after the first byte; waits: every wait, however short; up: bytes it served); pullers_s: \
         from starting the pullers to the last exit; exact: every copy, what the player read \
         included, has the file's sha256)",
        args.runs,
        UNDERRUN_SLACK.as_millis(),
        swarmcache::client::stream::STALL_THRESHOLD.as_millis()
    );
    Ok(())
}

/// The figures of a viewer row: first_s, underruns, under_s, during, stalls, stall_s,
/// waits, up_MiB, pullers_s.
const VIEWER_COLUMNS: usize = 9;

fn print_viewer_row(
    label: &str,
    r: &[f64; VIEWER_COLUMNS],
    exact: bool,
    failed: usize,
    stuck: usize,
) {
    println!(
        "{label:<4} {:>8.2} {:>9} {:>8.2} {:>7} {:>6} {:>8.3} {:>6} {:>8.1} {:>10.2} {:>5} {failed:>7} {stuck:>6}",
        r[0],
        r[1],
        r[2],
        r[3],
        r[4],
        r[5],
        r[6],
        r[7],
        r[8],
        if exact { "yes" } else { "no" }
    );
}

/// The HTTP server for curl: nginx when installed (sendfile, as a CDN would), else
/// python3's http.server. Answers it and its name.
fn start_http(host: &Host, dir: &Path, listen: &str) -> Result<(Daemon, &'static str)> {
    let has_nginx = Command::new("nginx")
        .arg("-v")
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if has_nginx {
        let conf = dir.join("nginx.conf");
        let d = dir.display();
        std::fs::write(
            &conf,
            format!(
                "daemon off; master_process off; worker_processes 1; user root;\n\
                 error_log {d}/nginx-error.log; pid {d}/nginx.pid;\n\
                 events {{ worker_connections 64; }}\n\
                 http {{ access_log off; sendfile on; client_body_temp_path {d}/nginx-tmp;\n\
                 proxy_temp_path {d}/nginx-tmp; fastcgi_temp_path {d}/nginx-tmp;\n\
                 uwsgi_temp_path {d}/nginx-tmp; scgi_temp_path {d}/nginx-tmp;\n\
                 server {{ listen {listen}; root {d}; }} }}\n"
            ),
        )?;
        let conf = conf.to_string_lossy().into_owned();
        let prefix = dir.to_string_lossy().into_owned();
        let args = ["-p", &prefix, "-c", &conf];
        Ok((
            Daemon::spawn(host, dir, Path::new("nginx"), &args, "nginx")?,
            "nginx",
        ))
    } else {
        let (ip, port) = listen.rsplit_once(':').context("listen address")?;
        let args = ["-m", "http.server", "--bind", ip, port];
        Ok((
            Daemon::spawn(host, dir, Path::new("python3"), &args, "http")?,
            "python3 -m http.server",
        ))
    }
}

/// Runs `program args` in `host` to completion; its wall time, or why it failed.
fn timed(host: &Host, dir: &Path, program: &Path, args: &[&str]) -> Result<f64> {
    let started = Instant::now();
    let out = host
        .command(program, dir)
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    let secs = started.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{} {} ended {}: {}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(secs)
}

/// Time to the first byte of `GET /health` from `host` to the tracker at `reach`, each
/// on a new connection: what the relay adds to a round trip (nominally 2·D).
fn tracker_ttfb(host: &Host, dir: &Path, url: &str) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..7 {
        let out = host
            .command(Path::new("curl"), dir)
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{time_starttransfer}",
                &format!("{url}/health"),
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        times.push(
            text.trim()
                .parse::<f64>()
                .with_context(|| format!("curl said {text:?}"))?,
        );
    }
    Ok(median(&times) * 1000.0)
}

fn single(args: &Args, bins: &Bins, dir: &Path, sum: &str, rate: u64, rtts: &[u64]) -> Result<()> {
    let Some(crowd) = Crowd::create("netns_crowd single", 3) else {
        bail!("cannot make the hosts (see above)");
    };
    for i in 0..3 {
        crowd.cap(i, rate).map_err(anyhow::Error::msg)?;
    }
    let client = crowd.host(2);
    let f = (args.size_mib << 20) as f64;
    println!(
        "single source: F={} MiB, {} Mbit/s caps, {} runs each",
        args.size_mib,
        rate / 1_000_000,
        args.runs
    );
    for &rtt in rtts {
        let delay = rtt / 2;
        let servers = start_servers(&crowd, bins, dir, delay, rate, args.chunk_size.as_deref())?;
        let service = crowd.host(1).service(HTTP_PORT, delay, Some(rate));
        let relay = start_relay(crowd.host(1), &service, bins, dir, "http-relay")?;
        let (http, server_name) = start_http(crowd.host(1), dir, &service.listen.to_string())?;
        let url = format!("http://{}/file.bin", service.reach);
        // Wait (bounded) until the HTTP server answers.
        let up = (0..100).any(|_| {
            let ok = TcpStream::connect(std::net::SocketAddr::V4(service.reach)).is_ok()
                && timed(
                    client,
                    dir,
                    Path::new("curl"),
                    &["-sf", "-o", "/dev/null", "-r", "0-0", &url],
                )
                .is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        if !up {
            bail!(
                "{server_name} in {} does not answer {url}",
                crowd.host(1).name
            );
        }
        let ttfb = tracker_ttfb(client, dir, &servers.url)?;
        let (mut ours, mut curls) = (Vec::new(), Vec::new());
        for run in 0..args.runs {
            let out = dir.join("single.bin");
            let _ = std::fs::remove_file(&out);
            let c = timed(
                client,
                dir,
                Path::new("curl"),
                &["-s", "-o", "single.bin", &url],
            )?;
            if sha256(&out)? != sum {
                bail!("curl's copy differs");
            }
            // Each tool writes a new file: replacing curl's copy would charge get for
            // freeing it (a rename over a 256 MiB file takes 0.2 s on ext4).
            std::fs::remove_file(&out)?;
            let store = format!("single-store-{run}");
            let s = timed(
                client,
                dir,
                &bins.get("peer_client"),
                &[
                    "get",
                    &servers.id,
                    "--tracker",
                    &servers.url,
                    "-o",
                    "single.bin",
                    "--store",
                    &store,
                    "--no-serve",
                    "--quiet",
                ],
            )?;
            if sha256(&out)? != sum {
                bail!("peer_client's copy differs");
            }
            let _ = std::fs::remove_dir_all(dir.join(&store));
            curls.push(c);
            ours.push(s);
        }
        let (c, s) = (median(&curls), median(&ours));
        println!(
            "RTT {rtt:>3} ms (relay TTFB {ttfb:>6.1} ms): curl {c:>7.2} s ({:>6.1} Mbit/s), get {s:>7.2} s ({:>6.1} Mbit/s), get/curl throughput {:.2}",
            f * 8.0 / c / 1e6,
            f * 8.0 / s / 1e6,
            c / s
        );
        drop(http);
        drop(relay);
        drop(servers);
    }
    println!(
        "(medians; curl from {} over the same relay; TTFB: curl's time to first byte of the tracker's /health)",
        if Command::new("nginx")
            .arg("-v")
            .stderr(Stdio::null())
            .status()
            .is_ok()
        {
            "nginx"
        } else {
            "python3 -m http.server"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_the_origin_or_the_crowds_total_upload() {
        // Origin-bound: one client can never beat F/u_s.
        assert_eq!(kumar_ross(100.0, 1, 10.0, 10.0), 10.0);
        // Crowd-bound: 8·100 / (50 + 8·25) = 3.2 s, above F/u_s = 2 s.
        assert!((kumar_ross(100.0, 8, 50.0, 25.0) - 3.2).abs() < 1e-9);
    }

    #[test]
    fn idle_uplink_goes_to_the_phase_it_was_idle_in_and_half_a_cap_ends_the_start_up() {
        let mut split = IdleSplit::default();
        assert!(!split.add(Phase::StartUp, 100.0, 10.0));
        assert!(split.add(Phase::StartUp, 100.0, 50.0));
        assert!(
            split.add(Phase::Middle, 100.0, 120.0),
            "a burst over the cap is not idle"
        );
        split.add(Phase::Lingering, 100.0, 75.0);
        split.add(Phase::Exited, 100.0, 0.0);
        let want = IdleSplit {
            startup: 140.0,
            middle: 0.0,
            lingering: 25.0,
            tail: 100.0,
        };
        assert_eq!(split, want);
        assert!(split.line(1000.0).contains("start-up 14%"));
    }

    #[test]
    fn the_median_takes_the_middle_or_the_mean_of_the_middle_two() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn the_player_counts_a_late_read_once_and_resumes_from_it() {
        // 1 000 bytes/s: byte 500 is due 0.5 s after the first.
        let mut clock = Playback::new(1000.0);
        let t0 = Instant::now();
        assert_eq!(clock.due(0, t0), t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        clock.arrived(0, t0, t0);
        assert_eq!(clock.due(500, t0), t0 + Duration::from_millis(500));
        // On time, and late by less than the slack: no underrun.
        clock.arrived(500, at(500), at(500));
        clock.arrived(600, at(600), at(640));
        assert_eq!(clock.underruns, 0);
        // 0.3 s late: one underrun of 0.3 s, and the clock moves on by as much.
        clock.arrived(700, at(700), at(1000));
        assert_eq!(clock.underruns, 1);
        assert_eq!(
            clock.events,
            [(t0 + Duration::from_millis(1000), clock.longest.0)]
        );
        assert!((clock.underrun_secs - 0.3).abs() < 1e-6);
        assert!((clock.longest.0 - 0.3).abs() < 1e-6 && clock.longest.1 == 0.7);
        assert_eq!(clock.due(800, t0), t0 + Duration::from_millis(1100));
        clock.arrived(800, at(1100), at(1100));
        assert_eq!(clock.underruns, 1);
        // The player woke 0.2 s late and the read returned at once: not an underrun, and
        // the clock resumes from there.
        clock.arrived(900, at(1400), at(1401));
        assert_eq!((clock.underruns, clock.late_wakes), (1, 1));
        assert_eq!(clock.due(1000, t0), at(1501));
        // Woke 0.1 s late, then waited 0.2 s more on an empty pipe: an underrun of 0.2 s.
        clock.arrived(1000, at(1601), at(1801));
        assert_eq!((clock.underruns, clock.late_wakes), (2, 1));
        assert!((clock.events[1].1 - 0.2).abs() < 1e-6);
    }

    #[test]
    fn the_player_reads_everything_and_hashes_it() {
        let data: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let played = play(&data[..], 1e9).unwrap();
        assert_eq!(played.bytes, data.len() as u64);
        assert_eq!(played.sha256, hex::encode(Sha256::digest(&data)));
        assert_eq!(played.underruns, 0);
    }

    #[test]
    fn the_summary_is_the_last_json_object_on_stderr() {
        let text = "peer_client: warning\n{\"stalls\":2}\n";
        assert_eq!(last_json(text).unwrap()["stalls"], 2);
        assert!(last_json("no json\n3\n").is_none());
    }
}
