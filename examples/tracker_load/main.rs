//! Load generator for the tracker, in three modes (`bench/tracker.sh` runs all three against
//! a release tracker and prints one table):
//!
//! - `fleet`: D downloaders and S seeders of one asset of C chunks, announcing as real
//!   clients do (a downloader every half second with its growing `have` bitfield in hex,
//!   a seeder at the heartbeat the answer asks for; busy answers retried as the tracker
//!   client retries them), plus B background swarms holding P peers that heartbeat like
//!   peer servers. Reports announces answered and not (non-200, 503, timeouts), latency
//!   from when each announce was due, answer bytes, and the CPU and memory of the tracker
//!   and of the generator itself.
//! - `throughput`: closed loop at the highest rate over P registered peers, the tracker
//!   pinned (`taskset`) to one core and to two in alternated runs; medians and their ratio.
//! - `idle`: holds kept-alive connections, idle between requests or trickling one, from
//!   two source addresses, while the caller times a real `peer_client get`.
//!
//!     cargo run --release --example tracker_load -- fleet --tracker http://127.0.0.1:7070 --tracker-pid PID
//!
//! The generator shares the tracker's cores, so it is lean: a few threads, each driving a
//! few kept-alive connections with non-blocking sockets in one `poll`, and requests built
//! once per peer (a downloader's progress is patched into its bitfield in place).

mod engine;
mod idle;
mod model;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use swarmcache::api::AnnounceRequest;
use swarmcache::bitfield::Bitfield;
use swarmcache::manifest::{DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE, Manifest, sha256};
use swarmcache::tracker_client::TrackerClient;

use engine::{Download, Engine, Peer, Policy};
use model::{
    Figures, Order, Phase, Prebuilt, Rng, USER_HZ, cpu_ticks, median, percentile, status_kib,
};

/// Classes of simulated peers, each with its own figures.
const DOWNLOADERS: usize = 0;
const SEEDERS: usize = 1;
const BACKGROUND: usize = 2;
const CLASS_NAMES: [&str; 3] = ["downloaders", "seeders", "background"];
/// Connections one source address holds: the tracker caps connections per address, and
/// a fleet is many hosts, not one.
const CONNS_PER_SOURCE: usize = 4;

#[derive(Parser)]
#[command(about = "Load generator for the swarmcache tracker (see bench/tracker.sh)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// A fleet downloading one asset, with background swarms heartbeating.
    Fleet(FleetArgs),
    /// Closed loop at the highest rate, the tracker on one core then two, alternated.
    Throughput(ThroughputArgs),
    /// Holds idle and trickling kept-alive connections until killed or --seconds.
    Idle(IdleArgs),
}

#[derive(Args)]
struct Common {
    /// The tracker's base URL (an IPv4 address).
    #[arg(long)]
    tracker: String,
    /// The tracker's process id, to report its CPU and memory (and to pin it).
    #[arg(long)]
    tracker_pid: Option<u32>,
    /// An announce not answered within this long counts as a timeout.
    #[arg(long, default_value = "5s", value_parser = swarmcache::cli::duration_arg)]
    timeout: Duration,
    /// Generator threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
}

#[derive(Args)]
struct Background {
    /// Background swarms (one small asset each).
    #[arg(long, default_value_t = 1000)]
    swarms: usize,
    /// Peers in the background swarms, in all (the first of each swarm is its origin).
    #[arg(long, default_value_t = 100_000)]
    peers: usize,
}

#[derive(Args)]
struct FleetArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    background: Background,
    /// Downloaders of the fleet's asset.
    #[arg(long, default_value_t = 1000)]
    downloaders: usize,
    /// Seeders of the fleet's asset (the first is its origin).
    #[arg(long, default_value_t = 10)]
    seeders: usize,
    /// Chunks of the fleet's asset (256 KiB each).
    #[arg(long, default_value_t = 65_536)]
    chunks: u32,
    /// Length of the measured run, in seconds.
    #[arg(long, default_value_t = 20.0)]
    seconds: f64,
    /// A download takes between half this and this many seconds (default: 1.5 × --seconds,
    /// so about a third of the fleet finishes and seeds before the end).
    #[arg(long)]
    download_secs: Option<f64>,
    /// Downloaders join over this many seconds from the start (a crowd arriving).
    #[arg(long, default_value_t = 2.0)]
    ramp_secs: f64,
    /// Kept-alive connections, in all (spread over the threads and over source addresses
    /// 127.0.1.x, four each).
    #[arg(long, default_value_t = 24)]
    conns: usize,
}

#[derive(Args)]
struct ThroughputArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    background: Background,
    /// Runs on each core set.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Length of each run, in seconds.
    #[arg(long, default_value_t = 5.0)]
    run_secs: f64,
    /// Connections, in all, each sending its next announce as soon as one is answered.
    #[arg(long, default_value_t = 8)]
    conns: usize,
    /// The two CPU lists the tracker is pinned to in turn (`taskset -c` syntax).
    #[arg(long, default_values_t = ["0".to_string(), "0,1".to_string()], num_args = 2)]
    cpus: Vec<String>,
}

#[derive(Args)]
struct IdleArgs {
    /// The tracker's base URL (an IPv4 address).
    #[arg(long)]
    tracker: String,
    /// Source addresses of the connections.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.1,127.0.0.2")]
    sources: Vec<Ipv4Addr>,
    /// Connections held from each source address.
    #[arg(long, default_value_t = 16)]
    per_source: usize,
    /// Give up holding after this many seconds.
    #[arg(long, default_value_t = 300.0)]
    seconds: f64,
}

fn main() -> Result<()> {
    match Cli::parse().mode {
        Mode::Fleet(args) => fleet(args),
        Mode::Throughput(args) => throughput(args),
        Mode::Idle(args) => idle::hold(
            tracker_addr(&args.tracker)?,
            &args.sources,
            args.per_source,
            Duration::from_secs_f64(args.seconds.max(0.0)),
        ),
    }
}

/// The tracker's IPv4 socket address from its URL.
fn tracker_addr(url: &str) -> Result<SocketAddrV4> {
    let hostport = url
        .strip_prefix("http://")
        .with_context(|| format!("tracker URL {url:?} must look like http://HOST:PORT"))?
        .trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .with_context(|| format!("resolving {hostport:?}"))?
        .find_map(|a| match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        })
        .with_context(|| {
            format!("{hostport:?} has no IPv4 address (the generator binds 127.x sources)")
        })
}

/// Source addresses for `n` connections: 127.0.1.1, 127.0.1.1 … four on each.
fn sources(n: usize) -> Vec<Ipv4Addr> {
    (0..n)
        .map(|k| {
            let a = 1 + k / CONNS_PER_SOURCE;
            Ipv4Addr::new(127, 0, 1 + (a >> 8) as u8, (a & 255) as u8)
        })
        .collect()
}

/// A made-up serving address for peer `n` of a class: never dialled, only recorded.
fn peer_addr(net: u8, n: usize) -> String {
    format!("{net}.{}.{}.{}:7001", n >> 16 & 255, n >> 8 & 255, n & 255)
}

/// Publishes a manifest of `chunks` made-up chunks of `chunk_size` named `name`.
fn publish(tracker: &TrackerClient, name: &str, chunks: u32, chunk_size: u32) -> Result<String> {
    let hashes: Vec<_> = (0..chunks)
        .map(|i| sha256(format!("{name}/{i}").as_bytes()))
        .collect();
    let manifest = Manifest::new(
        name.to_string(),
        u64::from(chunks) * u64::from(chunk_size),
        chunk_size,
        Some(sha256(name.as_bytes())),
        hashes,
    )
    .map_err(anyhow::Error::msg)
    .with_context(|| format!("building the manifest of {name}"))?;
    Ok(tracker
        .publish(&manifest)
        .with_context(|| format!("publishing {name}"))?
        .id)
}

/// The background swarms' peers: complete, heartbeating like peer servers.
fn background_peers(tracker: &TrackerClient, host: &str, b: &Background) -> Result<Vec<Peer>> {
    let swarms = b.swarms.max(1);
    let per_swarm = b.peers.div_ceil(swarms);
    let mut peers = Vec::with_capacity(swarms * per_swarm);
    for s in 0..swarms {
        if per_swarm == 0 {
            break;
        }
        let asset = publish(tracker, &format!("load-{s}"), 1, MIN_CHUNK_SIZE)?;
        for j in 0..per_swarm {
            let n = peers.len();
            let request = AnnounceRequest {
                peer_id: format!("bg-{n}"),
                addr: Some(peer_addr(10, n)),
                complete: true,
                origin: j == 0,
                ..AnnounceRequest::default()
            };
            peers.push(Peer::new(
                BACKGROUND,
                Phase::Seeding,
                Prebuilt::new(host, &asset, &request),
            ));
        }
    }
    Ok(peers)
}

/// CPU ticks so far of process `pid` (`None`: this process).
fn ticks(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or("/proc/self/stat".to_string(), |p| format!("/proc/{p}/stat"));
    cpu_ticks(&std::fs::read_to_string(path).ok()?)
}

/// VmRSS and VmHWM of `pid`, in MiB.
fn memory_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mib = |key| status_kib(&status, key).map(|k| k as f64 / 1024.0);
    Some((mib("VmRSS")?, mib("VmHWM")?))
}

/// Cores used between two tick readings over `wall`.
fn cores(before: Option<u64>, after: Option<u64>, wall: Duration) -> Option<f64> {
    Some((after?.saturating_sub(before?)) as f64 / USER_HZ / wall.as_secs_f64().max(1e-9))
}

/// Splits `peers` round-robin into one engine per thread, with `conns` connections shared.
fn engines(
    tracker: SocketAddrV4,
    peers: Vec<Peer>,
    threads: usize,
    conns: usize,
    timeout: Duration,
) -> Vec<Engine> {
    let threads = threads.clamp(1, conns.max(1));
    let all = sources(conns.max(threads));
    let mut shares: Vec<Vec<Peer>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, p) in peers.into_iter().enumerate() {
        shares[i % threads].push(p);
    }
    shares
        .into_iter()
        .enumerate()
        .map(|(t, share)| {
            let mine: Vec<Ipv4Addr> = all.iter().skip(t).step_by(threads).copied().collect();
            Engine::new(
                tracker,
                share,
                &mine,
                CLASS_NAMES.len(),
                timeout,
                t as u64 + 1,
            )
        })
        .collect()
}

/// Runs every engine on its own thread until `until` under `policy`, counting the
/// announces due from `from`.
fn run_all(engines: &mut [Engine], from: Instant, until: Instant, policy: Policy) {
    std::thread::scope(|scope| {
        for e in engines.iter_mut() {
            scope.spawn(move || e.run(from, until, policy));
        }
    });
}

/// Every engine's figures, merged per class and sorted.
fn gather(engines: &mut [Engine]) -> Vec<Figures> {
    let mut all = vec![Figures::default(); CLASS_NAMES.len()];
    for e in engines.iter_mut() {
        for (class, f) in e.take_figures().into_iter().enumerate() {
            all[class].merge(f);
        }
    }
    all.iter_mut().for_each(Figures::sort);
    all
}

/// Makes every scheduled announce once (registering the peers), not counted. Every
/// announce is scheduled at once, so most wait for a connection: the usual timeout would
/// drop those a slower tracker (with --redis) had not reached within it, and the runs
/// would then measure joins rather than heartbeats.
fn register(engines: &mut [Engine], what: &str) -> Result<()> {
    let started = Instant::now();
    let deadline = Duration::from_secs(600);
    let timeouts: Vec<Duration> = engines
        .iter_mut()
        .map(|e| e.set_timeout(deadline))
        .collect();
    run_all(engines, started, started + deadline, Policy::Once);
    for (e, t) in engines.iter_mut().zip(timeouts) {
        e.set_timeout(t);
    }
    let _ = gather(engines);
    println!(
        "registered {what} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn ms(us: Option<u32>) -> String {
    us.map_or("-".into(), |us| format!("{:.2}", f64::from(us) / 1e3))
}

fn fleet(args: FleetArgs) -> Result<()> {
    let c = &args.common;
    let addr = tracker_addr(&c.tracker)?;
    let host = addr.to_string();
    let tracker = TrackerClient::new(&c.tracker)?;
    if args.chunks == 0 {
        bail!("--chunks must be at least 1");
    }
    let asset = publish(&tracker, "fleet", args.chunks, DEFAULT_CHUNK_SIZE)?;
    let mut peers = background_peers(&tracker, &host, &args.background)?;
    for s in 0..args.seeders {
        let request = AnnounceRequest {
            peer_id: format!("seed-{s}"),
            addr: Some(peer_addr(172, s)),
            complete: true,
            origin: s == 0,
            ..AnnounceRequest::default()
        };
        peers.push(Peer::new(
            SEEDERS,
            Phase::Seeding,
            Prebuilt::new(&host, &asset, &request),
        ));
    }
    let registered = peers.len();
    let download_secs = args.download_secs.unwrap_or(1.5 * args.seconds).max(0.1);
    let mut rng = Rng::new(12);
    let empty = Bitfield::new(args.chunks).to_hex();
    let start = Instant::now() + Duration::from_secs(3600); // set below, once registered
    for d in 0..args.downloaders {
        let template = AnnounceRequest {
            peer_id: format!("dl-{d}"),
            addr: Some(peer_addr(192, d)),
            ..AnnounceRequest::default()
        };
        let request = AnnounceRequest {
            have: Some(empty.clone()),
            ..template.clone()
        };
        let done = AnnounceRequest {
            complete: true,
            ..template
        };
        let mut peer = Peer::new(
            DOWNLOADERS,
            Phase::Downloading,
            Prebuilt::new(&host, &asset, &request),
        );
        peer.download = Some(Download {
            order: Order::new(args.chunks, rng.next()),
            done: 0,
            total: args.chunks,
            start,
            secs: download_secs * (0.5 + rng.unit() / 2.0),
            then: Prebuilt::new(&host, &asset, &done),
        });
        peers.push(peer);
    }
    let mut engines = engines(addr, peers, c.threads, args.conns, c.timeout);
    for e in engines.iter_mut() {
        for i in 0..e.peers.len() {
            if e.peers[i].class != DOWNLOADERS {
                e.schedule(i, Instant::now());
            }
        }
    }
    register(
        &mut engines,
        &format!("{registered} background peers and seeders"),
    )?;

    // The measured run: every registered peer heartbeats from a random point of its
    // period; downloaders join over the ramp.
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.seconds);
    for e in engines.iter_mut() {
        for i in 0..e.peers.len() {
            let u = e.unit();
            let p = &mut e.peers[i];
            let at = match &mut p.download {
                Some(d) => {
                    d.start = start + Duration::from_secs_f64(args.ramp_secs.max(0.0) * u);
                    d.start
                }
                None => start + p.period.mul_f64(u),
            };
            e.schedule(i, at);
        }
    }
    let (tracker_before, self_before) = (ticks(c.tracker_pid), ticks(None));
    run_all(&mut engines, start, until, Policy::Follow);
    let wall = start.elapsed();
    let (tracker_after, self_after) = (ticks(c.tracker_pid), ticks(None));
    let seeding = engines
        .iter()
        .flat_map(|e| &e.peers)
        .filter(|p| p.class == DOWNLOADERS && p.phase == Phase::Seeding)
        .count();
    let figures = gather(&mut engines);

    println!(
        "fleet: {} downloaders ({seeding} finished and seeding by the end) and {} seeders of {} chunks, {} background peers in {} swarms, {:.0} s",
        args.downloaders,
        args.seeders,
        args.chunks,
        registered - args.seeders,
        args.background.swarms,
        wall.as_secs_f64()
    );
    println!(
        "{:<12} {:>9} {:>8} {:>6} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>12}",
        "class",
        "answered",
        "refused",
        "503",
        "timeout",
        "broken",
        "unsent",
        "p50_ms",
        "p99_ms",
        "max_ms",
        "answer_B_med"
    );
    for (name, f) in CLASS_NAMES.iter().zip(&figures) {
        println!(
            "{:<12} {:>9} {:>8} {:>6} {:>8} {:>7} {:>7} {:>8} {:>8} {:>9} {:>12}",
            name,
            f.answered,
            f.refused,
            f.busy,
            f.timeouts,
            f.broken,
            f.unsent,
            ms(percentile(&f.latency_us, 0.5)),
            ms(percentile(&f.latency_us, 0.99)),
            ms(f.latency_us.last().copied()),
            percentile(&f.answer_bytes, 0.5).map_or("-".into(), |b| b.to_string()),
        );
    }
    let mut total = Figures::default();
    figures.iter().cloned().for_each(|f| total.merge(f));
    total.sort();
    let tracker_cores = cores(tracker_before, tracker_after, wall);
    let self_cores = cores(self_before, self_after, wall);
    let memory = c.tracker_pid.and_then(memory_mib);
    let fleet = &figures[DOWNLOADERS];
    let due = total.answered + total.unanswered() + total.unsent;
    println!(
        "| fleet: announces answered / due | {} / {due} ({:.0}/s) | every one |",
        total.answered,
        total.answered as f64 / wall.as_secs_f64()
    );
    println!(
        "| fleet: not answered: non-200 / 503 / timeouts / broken | {} / {} / {} / {} | 0, no 503 |",
        total.refused, total.busy, total.timeouts, total.broken
    );
    println!(
        "| fleet: downloaders' latency p50 / p99 / max | {} / {} / {} ms | p99 ≤ 20 ms |",
        ms(percentile(&fleet.latency_us, 0.5)),
        ms(percentile(&fleet.latency_us, 0.99)),
        ms(fleet.latency_us.last().copied())
    );
    println!(
        "| fleet: all announces' latency p50 / p99 / max | {} / {} / {} ms | p99 ≤ 20 ms |",
        ms(percentile(&total.latency_us, 0.5)),
        ms(percentile(&total.latency_us, 0.99)),
        ms(total.latency_us.last().copied())
    );
    println!(
        "| fleet: downloaders' answer bytes, median | {} | |",
        percentile(&fleet.answer_bytes, 0.5).map_or("-".into(), |b| b.to_string())
    );
    let f2 = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
    println!(
        "| fleet: tracker CPU | {} cores | reported |",
        f2(tracker_cores)
    );
    println!(
        "| fleet: tracker VmRSS / VmHWM | {} | reported |",
        memory.map_or("-".into(), |(rss, hwm)| format!("{rss:.0} / {hwm:.0} MiB"))
    );
    println!(
        "| fleet: generator CPU | {} cores | reported |",
        f2(self_cores)
    );
    if total.unsent > 0 {
        println!(
            "(unsent: announces the generator had due but no free connection for before the end; more --conns)"
        );
    }
    Ok(())
}

/// Pins every thread of `pid` to the CPUs of `list`.
fn pin(pid: u32, list: &str) -> Result<()> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", list, &pid.to_string()])
        .output()
        .context("running taskset (util-linux) to pin the tracker")?;
    if !out.status.success() {
        bail!(
            "taskset -a -p -c {list} {pid} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn throughput(args: ThroughputArgs) -> Result<()> {
    let c = &args.common;
    let Some(pid) = c.tracker_pid else {
        bail!("throughput mode pins the tracker: give --tracker-pid");
    };
    let addr = tracker_addr(&c.tracker)?;
    let tracker = TrackerClient::new(&c.tracker)?;
    let peers = background_peers(&tracker, &addr.to_string(), &args.background)?;
    let registered = peers.len();
    if registered == 0 {
        bail!("throughput mode needs --peers of at least 1");
    }
    let mut engines = engines(addr, peers, c.threads, args.conns, c.timeout);
    for e in engines.iter_mut() {
        for i in 0..e.peers.len() {
            e.schedule(i, Instant::now());
        }
    }
    register(
        &mut engines,
        &format!("{registered} peers in {} swarms", args.background.swarms),
    )?;
    // Alternated: 1 core, 2 cores, 1 core … so that drift on a shared host hits both.
    let mut rates = [Vec::new(), Vec::new()];
    let mut p99s = [Vec::new(), Vec::new()];
    let mut used = [Vec::new(), Vec::new()];
    let mut failed = 0;
    for run in 0..args.runs * 2 {
        let which = run % 2;
        let list = &args.cpus[which];
        pin(pid, list)?;
        let (before, self_before) = (ticks(Some(pid)), ticks(None));
        let started = Instant::now();
        run_all(
            &mut engines,
            started,
            started + Duration::from_secs_f64(args.run_secs),
            Policy::Closed,
        );
        let wall = started.elapsed();
        let (after, self_after) = (ticks(Some(pid)), ticks(None));
        let generator = cores(self_before, self_after, wall).unwrap_or(f64::NAN);
        let f = {
            let mut all = Figures::default();
            gather(&mut engines).into_iter().for_each(|f| all.merge(f));
            all.sort();
            all
        };
        failed += f.unanswered();
        let rate = f.answered as f64 / wall.as_secs_f64();
        let p99 = percentile(&f.latency_us, 0.99).map_or(f64::NAN, |us| f64::from(us) / 1e3);
        let cpu = cores(before, after, wall).unwrap_or(f64::NAN);
        println!(
            "run {}: tracker on cpus {list}: {:.0} announces/s, p99 {p99:.2} ms, tracker {cpu:.2} cores, generator {generator:.2} cores, not answered {}",
            run + 1,
            rate,
            f.unanswered()
        );
        rates[which].push(rate);
        p99s[which].push(p99);
        used[which].push(cpu);
    }
    let _ = pin(pid, &args.cpus[1]);
    let [one, two] = rates.map(|mut r| median(&mut r).unwrap_or(f64::NAN));
    let [_, p99_two] = p99s.map(|mut p| median(&mut p).unwrap_or(f64::NAN));
    let [cpu_one, cpu_two] = used.map(|mut u| median(&mut u).unwrap_or(f64::NAN));
    println!(
        "| throughput: announces/s, tracker on cpus {} (median of {}) | {one:.0} ({cpu_one:.2} cores) | |",
        args.cpus[0], args.runs
    );
    println!(
        "| throughput: announces/s, tracker on cpus {} ({registered} peers registered) | {two:.0} ({cpu_two:.2} cores) | ≥ 20 000 |",
        args.cpus[1]
    );
    println!(
        "| throughput: {} / {} | {:.2}× | ≥ 1.7× |",
        args.cpus[1],
        args.cpus[0],
        two / one
    );
    println!(
        "| throughput: p99 on cpus {} | {p99_two:.2} ms | ≤ 5 ms |",
        args.cpus[1]
    );
    if failed > 0 {
        println!("(throughput: {failed} announces not answered over all runs)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use swarmcache::tracker::{Tracker, TrackerConfig};

    /// A real tracker on 127.0.0.1 port 0, served on a thread until the handle is dropped.
    struct Running {
        url: String,
        stop: swarmcache::net::ShutdownHandle,
        thread: Option<std::thread::JoinHandle<()>>,
        _data: tempfile::TempDir,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            self.stop.shutdown();
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// A tracker as bench/tracker.sh starts one: no per-address rate limits, since the
    /// generator's few source addresses each stand for many hosts.
    fn tracker() -> Running {
        let data = tempfile::tempdir().unwrap();
        let mut config = TrackerConfig::new("127.0.0.1:0".parse().unwrap(), data.path().join("d"));
        config.announce_rate = 0;
        config.publish_rate = 0;
        let tracker = Tracker::bind(&config).unwrap();
        let url = format!("http://{}", tracker.local_addr());
        let stop = tracker.shutdown_handle();
        let thread = Some(std::thread::spawn(move || tracker.serve().unwrap()));
        Running {
            url,
            stop,
            thread,
            _data: data,
        }
    }

    #[test]
    fn a_small_fleet_is_answered_and_its_downloads_finish_and_seed() {
        let t = tracker();
        let addr = tracker_addr(&t.url).unwrap();
        let host = addr.to_string();
        let client = TrackerClient::new(&t.url).unwrap();
        let chunks = 40;
        let asset = publish(&client, "fleet", chunks, DEFAULT_CHUNK_SIZE).unwrap();
        let mut peers = background_peers(
            &client,
            &host,
            &Background {
                swarms: 2,
                peers: 6,
            },
        )
        .unwrap();
        assert_eq!(peers.len(), 6);
        let start = Instant::now();
        for d in 0..4 {
            let template = AnnounceRequest {
                peer_id: format!("dl-{d}"),
                addr: Some(peer_addr(192, d)),
                ..AnnounceRequest::default()
            };
            let have = Some(Bitfield::new(chunks).to_hex());
            let mut peer = Peer::new(
                DOWNLOADERS,
                Phase::Downloading,
                Prebuilt::new(
                    &host,
                    &asset,
                    &AnnounceRequest {
                        have,
                        ..template.clone()
                    },
                ),
            );
            peer.download = Some(Download {
                order: Order::new(chunks, d as u64),
                done: 0,
                total: chunks,
                start,
                secs: 0.8,
                then: Prebuilt::new(
                    &host,
                    &asset,
                    &AnnounceRequest {
                        complete: true,
                        ..template
                    },
                ),
            });
            peers.push(peer);
        }
        let mut engines = engines(addr, peers, 2, 4, Duration::from_secs(5));
        for e in engines.iter_mut() {
            for i in 0..e.peers.len() {
                e.schedule(i, start);
            }
        }
        run_all(
            &mut engines,
            start,
            start + Duration::from_millis(1600),
            Policy::Follow,
        );
        let figures = gather(&mut engines);
        let fleet = &figures[DOWNLOADERS];
        assert_eq!(fleet.unanswered() + fleet.unsent, 0, "{fleet:?}");
        // Four downloaders every half second for 1.6 s: at least two announces each.
        assert!(fleet.answered >= 8, "{fleet:?}");
        assert_eq!(
            figures[BACKGROUND].answered, 6,
            "one heartbeat each (20 s period)"
        );
        assert!(
            engines
                .iter()
                .flat_map(|e| &e.peers)
                .filter(|p| p.class == DOWNLOADERS)
                .all(|p| p.phase == Phase::Seeding && p.download.is_none())
        );
        // What the tracker now holds: the finished downloaders as complete peers.
        let id = asset.parse().unwrap();
        let listed = client.peers(&id).unwrap();
        assert_eq!(
            listed
                .iter()
                .filter(|p| p.peer_id.starts_with("dl-") && p.complete)
                .count(),
            4,
            "{listed:?}"
        );
    }

    #[test]
    fn a_closed_loop_keeps_every_connection_busy_and_counts_each_answer() {
        let t = tracker();
        let addr = tracker_addr(&t.url).unwrap();
        let client = TrackerClient::new(&t.url).unwrap();
        let peers = background_peers(
            &client,
            &addr.to_string(),
            &Background {
                swarms: 3,
                peers: 30,
            },
        )
        .unwrap();
        let mut engines = engines(addr, peers, 1, 3, Duration::from_secs(5));
        let now = Instant::now();
        run_all(
            &mut engines,
            now,
            now + Duration::from_millis(300),
            Policy::Closed,
        );
        let mut all = Figures::default();
        gather(&mut engines).into_iter().for_each(|f| all.merge(f));
        assert_eq!(all.unanswered(), 0, "{all:?}");
        assert!(all.answered >= 30, "{all:?}");
        assert_eq!(all.latency_us.len() as u64, all.answered);
    }

    #[test]
    fn a_tracker_that_is_not_there_is_counted_as_broken_not_answered() {
        // A port nothing listens on: bind one, read it, close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let request = AnnounceRequest {
            peer_id: "p".into(),
            complete: true,
            ..AnnounceRequest::default()
        };
        let peers = vec![Peer::new(
            BACKGROUND,
            Phase::Seeding,
            Prebuilt::new(&addr.to_string(), "x", &request),
        )];
        let mut engines = engines(addr, peers, 1, 1, Duration::from_secs(2));
        let now = Instant::now();
        engines[0].schedule(0, now);
        run_all(
            &mut engines,
            now,
            now + Duration::from_millis(300),
            Policy::Follow,
        );
        let f = &gather(&mut engines)[BACKGROUND];
        assert_eq!((f.answered, f.broken), (0, 1), "{f:?}");
    }
}
