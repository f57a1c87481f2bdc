//! Swarms across hosts: a tracker host, an origin host and client hosts on one bridge
//! (`crate::netns::Crowd`), each host's upload capped by the kernel (tbf), and with a
//! round-trip delay a `delay_relay` in front of every listener. [`CrowdSwarm`] is the
//! helper the issue 14 tests build on: start it, run `get` in client host i, cut or cap a
//! host's link, read what the origin sent from its interface counters. The tests of the
//! hosts themselves (`Netns`, `Crowd`) are here too: `tests/netns.rs` holds none, since the
//! benchmark driver includes it.

// Helpers for the tests of issue 14's client work that are not all used here yet.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Proc, RUN_TIMEOUT, START_TIMEOUT, bin, bin_dir, random_bytes};
use crate::netns::{Crowd, HOST_IF, Host, Netns, Service, ip};

/// The port each role listens on inside its host (every host has its own ports).
pub const TRACKER_PORT: u16 = 7070;
pub const ORIGIN_PORT: u16 = 7001;
pub const CLIENT_PORT: u16 = 7002;

/// Host 0 runs the tracker, host 1 the origin, hosts 2… the clients.
const FIRST_CLIENT: usize = 2;

/// The shape of a [`CrowdSwarm`].
#[derive(Clone, Debug)]
pub struct SwarmOptions {
    /// Client hosts.
    pub clients: usize,
    /// The origin host's egress cap, bit/s.
    pub origin_rate: u64,
    /// Each client host's egress cap, bit/s.
    pub client_rate: u64,
    /// Round trip added on every path by the relays (0: no relays).
    pub rtt_ms: u64,
    /// The asset's size in bytes.
    pub size: usize,
    /// The origin's `--chunk-size`.
    pub chunk_size: &'static str,
}

impl Default for SwarmOptions {
    /// Four clients and an origin at 40 Mbit/s each: the origin is the scarce uplink
    /// (Kumar–Ross bound F/u_s, 3.4 s), so every byte it sends twice costs wall time and
    /// the peers' uploads (160) must carry the rest. (With the origin at 80, an optimal
    /// distribution has the origin send 4·80/240 = 1.33 F, which would make an "about
    /// once" check pointless.) 16 MiB in 256 KiB chunks gives each client 64 to trade.
    fn default() -> SwarmOptions {
        SwarmOptions {
            clients: 4,
            origin_rate: 40_000_000,
            client_rate: 40_000_000,
            rtt_ms: 0,
            size: 16 << 20,
            chunk_size: "256KiB",
        }
    }
}

/// A tracker, an origin seeding one asset, and hosts for clients, each in its own
/// namespace; everything stops (processes first, then the hosts) on drop.
pub struct CrowdSwarm {
    // Fields drop in order: the processes before the namespaces they run in.
    relays: Vec<Proc>,
    pub tracker: Proc,
    pub origin: Proc,
    /// The tracker's URL, as every host reaches it.
    pub url: String,
    /// The asset the origin seeds.
    pub id: String,
    /// The asset's bytes.
    pub content: Vec<u8>,
    pub options: SwarmOptions,
    pub crowd: Crowd,
    pub dir: tempfile::TempDir,
}

/// The relay binary, built by `cargo test` with the other examples; `None` (saying so)
/// when it is missing, e.g. after `cargo test --test integration` on a fresh target.
pub fn relay_bin(test: &str) -> Option<PathBuf> {
    let path = bin_dir().join("examples").join("delay_relay");
    if path.exists() {
        Some(path)
    } else {
        eprintln!(
            "skipped {test}: {} is missing; build it with `cargo build --example delay_relay`",
            path.display()
        );
        None
    }
}

impl CrowdSwarm {
    /// Makes the hosts, caps them, starts the tracker and the origin (seeded), or says on
    /// stderr why `test` is skipped and answers `None`.
    pub fn start(test: &str, options: SwarmOptions) -> Option<CrowdSwarm> {
        let relay = relay_bin(test)?;
        let crowd = Crowd::create(test, FIRST_CLIENT + options.clients)?;
        crowd.cap(1, options.origin_rate).unwrap();
        for i in 0..options.clients {
            crowd.cap(FIRST_CLIENT + i, options.client_rate).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let content = random_bytes(options.size, 14);
        std::fs::write(dir.path().join("f.bin"), &content).unwrap();
        let mut relays = Vec::new();
        let delay = options.rtt_ms / 2;

        let service = crowd.host(0).service(TRACKER_PORT, delay, None);
        relays.extend(start_relay(crowd.host(0), &service, &relay, &dir));
        let data = dir.path().join("tracker-data");
        let listen = service.listen.to_string();
        let args = ["--listen", &listen, "--data", data.to_str().unwrap()];
        let mut tracker = spawn_in(crowd.host(0), &dir, &bin("tracker"), &args);
        tracker.listening();
        let url = format!("http://{}", service.reach);

        let service = crowd
            .host(1)
            .service(ORIGIN_PORT, delay, Some(options.origin_rate));
        relays.extend(start_relay(crowd.host(1), &service, &relay, &dir));
        let (listen, reach) = (service.listen.to_string(), service.reach.to_string());
        let args = [
            "--origin",
            "--listen",
            &listen,
            "--advertise-addr",
            &reach,
            "--store",
            "origin",
            "--seed",
            "f.bin",
            "--chunk-size",
            options.chunk_size,
            "--tracker",
            &url,
        ];
        let mut origin = spawn_in(crowd.host(1), &dir, &bin("peer_server"), &args);
        let seeded = origin.wait_line("seeded ", START_TIMEOUT);
        let id = seeded.split_whitespace().next().unwrap().to_string();
        origin.listening();
        Some(CrowdSwarm {
            relays,
            tracker,
            origin,
            url,
            id,
            content,
            options,
            crowd,
            dir,
        })
    }

    /// Client host `i` (from 0).
    pub fn client_host(&self, i: usize) -> &Host {
        self.crowd.host(FIRST_CLIENT + i)
    }

    /// Caps client host `i`'s egress at `rate` bit/s.
    pub fn cap_client(&self, i: usize, rate: u64) {
        self.crowd.cap(FIRST_CLIENT + i, rate).unwrap();
    }

    /// Sets client host `i`'s link up or down.
    pub fn set_client_link(&self, i: usize, up: bool) {
        self.crowd.set_link(FIRST_CLIENT + i, up).unwrap();
    }

    /// Bytes the origin host has sent so far, headers included.
    pub fn origin_tx(&self) -> u64 {
        self.crowd.host(1).tx_bytes().unwrap()
    }

    /// The output file of client `i`.
    pub fn output(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("c{i}.out"))
    }

    /// Starts `peer_client get` in client host `i` (one at a time per host: the port is
    /// fixed; its own store, output
    /// [`CrowdSwarm::output`], `--json`), serving others on [`CLIENT_PORT`] behind a relay
    /// when the swarm has a delay; `extra` flags go last.
    pub fn spawn_client(&mut self, i: usize, extra: &[&str]) -> Proc {
        let host = self.client_host(i);
        let service = host.service(
            CLIENT_PORT,
            self.options.rtt_ms / 2,
            Some(self.options.client_rate),
        );
        let relay = bin_dir().join("examples").join("delay_relay");
        let relay = start_relay(host, &service, &relay, &self.dir);
        let (listen, reach) = (service.listen.to_string(), service.reach.to_string());
        let (out, store) = (format!("c{i}.out"), format!("c{i}"));
        let mut args = vec![
            "get",
            &self.id,
            "--tracker",
            &self.url,
            "-o",
            &out,
            "--store",
            &store,
            "--listen",
            &listen,
            "--advertise-addr",
            &reach,
            "--json",
            "--quiet",
        ];
        args.extend_from_slice(extra);
        let proc = spawn_in(host, &self.dir, &bin("peer_client"), &args);
        self.relays.extend(relay);
        proc
    }

    /// Whether client `i`'s output holds exactly the asset.
    pub fn output_is_exact(&self, i: usize) -> bool {
        std::fs::read(self.output(i)).is_ok_and(|b| b == self.content)
    }
}

/// Starts a program in `host`, in `dir`.
fn spawn_in(
    host: &Host,
    dir: &tempfile::TempDir,
    program: &std::path::Path,
    args: &[&str],
) -> Proc {
    let mut cmd = host.command(program, dir.path());
    cmd.args(args);
    let name = program.file_name().unwrap().to_string_lossy();
    Proc::spawn_cmd(
        &mut cmd,
        format!("(in {}) {name} {}", host.name, args.join(" ")),
    )
}

/// Starts the relay in front of `service` when it has one, once it listens.
fn start_relay(
    host: &Host,
    service: &Service,
    relay: &std::path::Path,
    dir: &tempfile::TempDir,
) -> Option<Proc> {
    let args = service.relay_args.as_ref()?;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = spawn_in(host, dir, relay, &args);
    proc.listening();
    Some(proc)
}

/// What the origin host may send, in asset sizes, to the crowd of [`SwarmOptions::default`].
/// Issue 14's target is 1.05 F (1.10 F counting frames); today's client sends 1.16–1.26 F
/// here (1.22–1.41 F with the origin at 80 Mbit/s) (each client is planned a disjoint quarter, then asks the origin again for chunks
/// a slow peer held up and hedges), so this bound only says "the peers carry the crowd"
/// (origin alone: 4 F) until the client work tightens it. Headers add under 1 %:
/// the veth counts offloaded 64 KiB packets with one header each.
const ORIGIN_SHARE_LIMIT: f64 = 1.5;

/// Runs `get` on every client at once and asserts each ends well with an exact copy;
/// answers the wall time and the origin's egress in bytes over the run.
fn run_crowd(swarm: &mut CrowdSwarm) -> (Duration, u64) {
    let before = swarm.origin_tx();
    let started = Instant::now();
    let mut clients: Vec<Proc> = (0..swarm.options.clients)
        .map(|i| swarm.spawn_client(i, &[]))
        .collect();
    for (i, client) in clients.iter_mut().enumerate() {
        let status = client.wait();
        assert!(
            status.success(),
            "{} ended {status}\nstderr: {}",
            client.description,
            client.stderr()
        );
        assert!(swarm.output_is_exact(i), "client {i}'s copy differs");
    }
    (started.elapsed(), swarm.origin_tx() - before)
}

#[test]
fn a_capped_swarm_of_four_hosts_gets_exact_copies_and_the_origin_sends_each_byte_about_once() {
    let test =
        "a_capped_swarm_of_four_hosts_gets_exact_copies_and_the_origin_sends_each_byte_about_once";
    let Some(mut swarm) = CrowdSwarm::start(test, SwarmOptions::default()) else {
        return;
    };
    let (wall, origin) = run_crowd(&mut swarm);
    let f = swarm.content.len() as f64;
    eprintln!(
        "{test}: {wall:?}, origin sent {:.3} F (frames and headers included)",
        origin as f64 / f
    );
    assert!(
        origin as f64 <= ORIGIN_SHARE_LIMIT * f,
        "the origin host sent {origin} bytes for a {f} byte asset to 4 clients"
    );
}

#[test]
fn a_capped_swarm_with_20_ms_round_trips_on_every_path_gets_exact_copies() {
    let test = "a_capped_swarm_with_20_ms_round_trips_on_every_path_gets_exact_copies";
    let options = SwarmOptions {
        rtt_ms: 20,
        ..SwarmOptions::default()
    };
    let Some(mut swarm) = CrowdSwarm::start(test, options) else {
        return;
    };
    let (wall, origin) = run_crowd(&mut swarm);
    eprintln!(
        "{test}: {wall:?}, origin sent {:.3} F",
        origin as f64 / swarm.content.len() as f64
    );
}

/// Echoes every connection to `listener` until its peer half-closes; answers the address
/// each connection came from.
fn echo(listener: TcpListener) -> std::sync::mpsc::Receiver<SocketAddr> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(RUN_TIMEOUT));
            let _ = tx.send(stream.peer_addr().unwrap());
            std::thread::spawn(move || {
                let mut buf = vec![0; 1 << 16];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                let _ = stream.shutdown(Shutdown::Write);
            });
        }
    });
    rx
}

#[test]
fn the_delay_relay_holds_bytes_each_way_and_passes_them_on_intact_from_the_peers_address() {
    let test =
        "the_delay_relay_holds_bytes_each_way_and_passes_them_on_intact_from_the_peers_address";
    let Some(relay) = relay_bin(test) else { return };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let accepted = echo(listener);
    let mut cmd = Command::new(&relay);
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--target",
        &target,
        "--delay-ms",
        "25",
        "--source-loopback",
    ];
    cmd.args(args);
    let mut proc = Proc::spawn_cmd(&mut cmd, format!("delay_relay {}", args.join(" ")));
    let addr: SocketAddr = proc.listening().parse().unwrap();

    // Connect from 127.3.4.5 (bind before connect): the target must see that address.
    use rustix::net::{AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    let from: SocketAddr = "127.3.4.5:0".parse().unwrap();
    rustix::net::bind(&fd, &from).unwrap();
    rustix::net::connect(&fd, &addr).unwrap();
    let mut stream = TcpStream::from(fd);
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(RUN_TIMEOUT)).unwrap();
    let mut one = [0u8; 1];
    for i in 0..5u8 {
        let sent = Instant::now();
        stream.write_all(&[i]).unwrap();
        stream.read_exact(&mut one).unwrap();
        assert_eq!(one[0], i);
        // Held 25 ms on the way in and 25 ms on the way back: never less.
        assert!(
            sent.elapsed() >= Duration::from_millis(50),
            "round trip {i} took {:?} through a 25 ms relay",
            sent.elapsed()
        );
    }
    let seen = accepted.recv_timeout(START_TIMEOUT).unwrap();
    assert_eq!(
        seen.ip().to_string(),
        "127.3.4.5",
        "the relay's source for the peer"
    );

    // 4 MiB each way, then a half close: everything comes back, then the end.
    let payload = random_bytes(4 << 20, 5);
    let mut reader = stream.try_clone().unwrap();
    let back = std::thread::spawn(move || {
        let mut got = Vec::new();
        reader.read_to_end(&mut got).map(|_| got)
    });
    stream.write_all(&payload).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let got = back.join().unwrap().unwrap();
    assert!(
        got == payload,
        "{} bytes came back, not the 4 MiB sent",
        got.len()
    );
    proc.kill();
}

// The hosts themselves (tests/netns.rs keeps no tests: the benchmark driver includes it).

#[test]
fn a_namespace_reaches_the_host_side_and_is_gone_after_drop() {
    let Some(ns) = Netns::create("a_namespace_reaches_the_host_side_and_is_gone_after_drop") else {
        return;
    };
    let listener = std::net::TcpListener::bind((ns.host_addr, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    // bash's /dev/tcp: a connection from inside the namespace, without any other tool.
    let status = ns
        .command(Path::new("bash"), Path::new("/"))
        .args([
            "-c",
            &format!("exec 3<>/dev/tcp/{}/{}", addr.ip(), addr.port()),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "connecting from {} to {addr}", ns.name);
    let (_, from) = listener.accept().unwrap();
    assert_eq!(from.ip(), ns.ns_addr);
    let (name, host_if) = (ns.name.clone(), ns.host_if.clone());
    drop(ns);
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&name));
    assert!(
        ip(&["link", "show", &host_if]).is_err(),
        "{host_if} is gone"
    );
}

#[test]
fn a_panicking_test_leaves_no_namespace_behind() {
    let made = std::sync::Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let Some(ns) = Netns::create("a_panicking_test_leaves_no_namespace_behind") else {
            return;
        };
        *made.lock().unwrap() = Some((ns.name.clone(), ns.host_if.clone()));
        panic!("a failing assertion inside a multi-host test");
    });
    let Some((name, host_if)) = made.into_inner().unwrap() else {
        return;
    };
    assert!(result.is_err());
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&listed.stdout).contains(&name));
    assert!(
        ip(&["link", "show", &host_if]).is_err(),
        "{host_if} is gone"
    );
}

/// Whether a connection from `host` to `addr` opens within 2 s (bash's /dev/tcp).
fn connects(host: &Host, addr: std::net::SocketAddr) -> bool {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{} && echo hello >&3",
        addr.ip(),
        addr.port()
    );
    host.command(Path::new("timeout"), Path::new("/"))
        .args(["2", "bash", "-c", &script])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_crowd_reaches_across_its_bridge_is_capped_and_cut_on_demand_and_is_gone_after_drop() {
    let test =
        "a_crowd_reaches_across_its_bridge_is_capped_and_cut_on_demand_and_is_gone_after_drop";
    let Some(crowd) = Crowd::create(test, 2) else {
        return;
    };
    let listener = std::net::TcpListener::bind((crowd.bridge_addr, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let host = crowd.host(1);
    let sent_before = host.tx_bytes().unwrap();
    assert!(connects(host, addr), "{} reaches {addr}", host.name);
    assert!(
        host.tx_bytes().unwrap() > sent_before,
        "the egress counter counts the connection's frames"
    );

    crowd.cap(1, 8_000_000).unwrap();
    let qdisc = Command::new("ip")
        .args([
            "netns", "exec", &host.name, "tc", "qdisc", "show", "dev", HOST_IF,
        ])
        .output()
        .unwrap();
    let qdisc = String::from_utf8_lossy(&qdisc.stdout);
    assert!(qdisc.contains("tbf") && qdisc.contains("8Mbit"), "{qdisc}");

    crowd.set_link(1, false).unwrap();
    assert!(
        !connects(host, addr),
        "a host whose link is down reaches nothing"
    );
    crowd.set_link(1, true).unwrap();
    // The link comes back within a moment (carrier, the bridge port forwarding again).
    let back = (0..20).any(|_| connects(host, addr));
    assert!(
        back,
        "{} reaches {addr} again once its link is up",
        host.name
    );
    assert!(connects(crowd.host(0), addr), "host 0 was never cut off");

    let (names, bridge) = (
        crowd
            .hosts()
            .iter()
            .map(|h| h.name.clone())
            .collect::<Vec<_>>(),
        crowd.bridge.clone(),
    );
    drop(crowd);
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(
        names.iter().all(|n| !listed.contains(n.as_str())),
        "{listed}"
    );
    assert!(ip(&["link", "show", &bridge]).is_err(), "{bridge} is gone");
}
