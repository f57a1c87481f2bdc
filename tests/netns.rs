//! Hosts for multi-host tests and benchmarks, made of network namespaces and removed again
//! on drop, a panicking test included:
//! - [`Netns`]: a second host, joined to the test's own namespace by a veth pair with
//!   private addresses (10.77.N.1 on the host side, 10.77.N.2 inside);
//! - [`Crowd`]: N hosts on one bridge (10.78.S.1 … 10.78.S.N, the bridge 10.78.S.254), each
//!   host's egress capped by `tc … tbf`, its links set down and up, its bytes sent read from
//!   the interface counters.
//!
//! Needs root, `ip netns` (and `tc` for a crowd); `create` answers `None` (after saying why
//! on stderr) when one is missing, and the test returns early as skipped. Only std: the
//! benchmark driver `examples/netns_crowd.rs` includes this file too (`#[path]`), so the
//! benchmark and the tests build their hosts with the same code (and this file holds no
//! tests, which the driver's own test build would run again: they are in
//! `tests/netns_crowd.rs`).

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces created by this test process, so that parallel tests get distinct names and
/// subnets.
static CREATED: AtomicU32 = AtomicU32::new(0);

/// A namespace and its veth pair; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// The veth end left in the test's namespace.
    pub host_if: String,
    /// The veth end moved into the namespace.
    pub ns_if: String,
    /// The address of `host_if` (10.77.N.1/24).
    pub host_addr: Ipv4Addr,
    /// The address of `ns_if` (10.77.N.2/24).
    pub ns_addr: Ipv4Addr,
}

/// The Ethernet address a crowd gives the interface with IPv4 address `addr`: locally
/// administered (02:…), "sc", then the address's last two bytes, so that every host's
/// neighbour entries can be written without asking the others.
fn mac_of(addr: Ipv4Addr) -> String {
    let [_, _, subnet, host] = addr.octets();
    format!("02:73:63:00:{subnet:02x}:{host:02x}")
}

/// Runs `ip -n NAMESPACE -batch -` with `commands` (one a line) on its stdin.
fn ip_batch(namespace: &str, commands: &str) -> Result<(), String> {
    use std::io::Write;
    let what = format!("ip -n {namespace} -batch -");
    let mut child = Command::new("ip")
        .args(["-n", namespace, "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{what}: {e}"))?;
    let written = child
        .stdin
        .take()
        .map(|mut stdin| stdin.write_all(commands.as_bytes()));
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{what}: {e}"))?;
    match written {
        Some(Err(e)) => Err(format!("{what}: writing its commands: {e}")),
        _ if !out.status.success() => Err(format!(
            "{what}: {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        _ => Ok(()),
    }
}

/// Runs `ip ARGS`; the error names the command and what it printed.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process runs as root (from /proc: no libc call, no unsafe).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

impl Netns {
    /// Creates a namespace with its loopback up and a veth pair to the test's namespace,
    /// or says on stderr why `test` is skipped and answers `None`.
    pub fn create(test: &str) -> Option<Netns> {
        if !can_make_hosts(test, &["ip"]) {
            return None;
        }
        // Interface names have at most 15 bytes: "sc" + pid in hex (at most 6 digits on
        // Linux, whose pids stop at 2^22) + a count + one letter.
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("sc{pid:x}n{n}");
        let Some(subnet) = free_subnet(pid.wrapping_add(n * 37)) else {
            eprintln!("skipped {test}: every 10.77.N.0/24 is in use on this host");
            return None;
        };
        let ns = Netns {
            name: format!("{tag}-swarmcache"),
            host_if: format!("{tag}h"),
            ns_if: format!("{tag}p"),
            host_addr: Ipv4Addr::new(10, 77, subnet, 1),
            ns_addr: Ipv4Addr::new(10, 77, subnet, 2),
        };
        // From here on, Drop removes whatever part was made.
        match ns.set_up() {
            Ok(()) => Some(ns),
            Err(e) => {
                eprintln!("skipped {test}: cannot set up a network namespace: {e}");
                None
            }
        }
    }

    fn set_up(&self) -> Result<(), String> {
        let host = format!("{}/24", self.host_addr);
        let inside = format!("{}/24", self.ns_addr);
        ip(&["netns", "add", &self.name])?;
        ip(&[
            "link",
            "add",
            &self.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &self.ns_if,
        ])?;
        ip(&["link", "set", &self.ns_if, "netns", &self.name])?;
        ip(&["addr", "add", &host, "dev", &self.host_if])?;
        ip(&["link", "set", &self.host_if, "up"])?;
        self.ip(&["addr", "add", &inside, "dev", &self.ns_if])?;
        self.ip(&["link", "set", &self.ns_if, "up"])?;
        self.ip(&["link", "set", "lo", "up"])
    }

    /// Runs `ip ARGS` inside the namespace (e.g. `["link", "set", "lo", "down"]`).
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["netns", "exec", &self.name, "ip"];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command running `program` inside the namespace, in `dir`. `ip netns exec` execs
    /// the program, so the child's pid is the program's own and signals reach it.
    pub fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .current_dir(dir);
        cmd
    }
}

/// A /24 of 10.77.0.0/16 that no interface of the test's namespace has an address in,
/// trying 250 of them from `start` on (the pid spreads concurrent test processes).
fn free_subnet(start: u32) -> Option<u8> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .ok()?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    (0..250)
        .map(|i| (start.wrapping_add(i) % 250 + 1) as u8)
        .find(|n| !used.contains(&format!(" 10.77.{n}.")))
}

/// Whether hosts can be made: root, and each of `tools` runs (`ip`, `tc`); when not, says
/// on stderr why `test` is skipped. Removes the leftovers of dead processes first.
fn can_make_hosts(test: &str, tools: &[&str]) -> bool {
    if !is_root() {
        eprintln!("skipped {test}: needs root to create network namespaces");
        return false;
    }
    for tool in tools {
        let runs = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !runs {
            eprintln!("skipped {test}: `{tool}` is not installed (Debian: iproute2)");
            return false;
        }
    }
    remove_leftovers();
    true
}

/// The pid in a name this file gives: `sc` + the pid in hex + `n` + a count + more.
fn pid_in(name: &str) -> Option<u32> {
    let (hex, rest) = name.strip_prefix("sc")?.split_once('n')?;
    rest.starts_with(|c: char| c.is_ascii_digit())
        .then(|| u32::from_str_radix(hex, 16).ok())
        .flatten()
}

/// Whether `name` is a crowd's bridge (`sc…nKb`) or host-side veth end (`sc…nKxI`).
fn is_crowd_link(name: &str) -> bool {
    let Some((_, rest)) = name.strip_prefix("sc").and_then(|n| n.split_once('n')) else {
        return false;
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    match rest.split_once('x') {
        Some((count, host)) => digits(count) && digits(host),
        None => rest.strip_suffix('b').is_some_and(digits),
    }
}

/// Whether the process that made `name` is gone (a SIGKILLed `cargo test` or benchmark).
fn made_by_dead_process(name: &str) -> bool {
    pid_in(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
}

/// Removes the namespaces, veth ends and bridges of processes that died without dropping
/// theirs: their names carry the pid that made them.
fn remove_leftovers() {
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let name = line.split_whitespace().next().unwrap_or("");
            if let Some(tag) = name.strip_suffix("-swarmcache")
                && made_by_dead_process(tag)
            {
                let _ = ip(&["netns", "del", name]);
                let _ = ip(&["link", "del", &format!("{tag}h")]);
            }
        }
    }
    // A crowd's bridge and host-side veth ends (`ip -o link`: "7: NAME@peer: <...").
    if let Ok(out) = Command::new("ip").args(["-o", "link", "show"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Some(name) = line
                .split(':')
                .nth(1)
                .map(|n| n.trim().split('@').next().unwrap_or(""))
            else {
                continue;
            };
            if is_crowd_link(name) && made_by_dead_process(name) {
                let _ = ip(&["link", "del", name]);
            }
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth end inside it, and with it the pair; the
        // host end is deleted by name too, in case a process kept the namespace alive.
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}

/// The name hosts give their end of the veth pair to the bridge.
pub const HOST_IF: &str = "eth0";

/// N hosts on one bridge in the test's namespace; every namespace, veth pair and the bridge
/// are deleted on drop.
#[derive(Debug)]
pub struct Crowd {
    /// The bridge, in the test's namespace.
    pub bridge: String,
    /// The bridge's address (10.78.S.254), by which the test's namespace reaches the hosts.
    pub bridge_addr: Ipv4Addr,
    hosts: Vec<Host>,
}

/// One host of a [`Crowd`]: a namespace whose [`HOST_IF`] is a veth into the bridge.
#[derive(Debug)]
pub struct Host {
    /// The namespace's name, for `ip netns exec`.
    pub name: String,
    /// The veth end on the bridge, in the test's namespace.
    pub bridge_if: String,
    /// The host's address (10.78.S.I/24, I from 1).
    pub addr: Ipv4Addr,
}

/// The most hosts a crowd holds: 10.78.S.1 to .250, below the bridge's .254.
pub const MAX_HOSTS: usize = 250;

/// The token bucket's depth for an egress of `rate` bit/s: at least one whole 64 KiB
/// GSO/TSO packet plus headers (a bucket smaller than a packet makes tbf cut every
/// offloaded packet up in software, CPU that a busy two-core box does not have, or drop
/// it), else 2 ms of the rate (250 KB at 1 Gbit/s), so that tbf's timer, however late
/// the loaded kernel runs it, finds the bucket not yet full. 96 KiB at 50 Mbit/s lets
/// 16 ms go out at once, which a run measured in seconds does not see.
pub fn tbf_burst(rate: u64) -> u64 {
    (rate / 8 / 500).max(96 << 10)
}

/// How long a packet may wait in the capped queue before tbf drops it (tbf's `latency`):
/// 20 ms, a modest home-router buffer. A full uplink delays its host's ACKs and requests
/// by up to this (the "own download first" problem of issue 14 stays visible), and it is
/// short enough that queueing does not swamp the relay's 10–100 ms of RTT; a shorter
/// queue (a few ms) costs TCP throughput in drops on a loaded box whose tbf timer is late.
pub const TBF_LATENCY_MS: u64 = 20;

impl Crowd {
    /// Creates `hosts` namespaces on a new bridge, each with its loopback up and its
    /// address on [`HOST_IF`], or says on stderr why `test` is skipped and answers `None`.
    pub fn create(test: &str, hosts: usize) -> Option<Crowd> {
        if !can_make_hosts(test, &["ip", "tc"]) {
            return None;
        }
        assert!((1..=MAX_HOSTS).contains(&hosts), "a crowd of {hosts} hosts");
        // Names: "sc" + pid in hex (6 digits at most) + "n" + a count + "b" for the bridge,
        // "xI" for a host: at most 15 bytes while the count stays below 100.
        let n = CREATED.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("sc{pid:x}n{n}");
        let Some(subnet) = free_crowd_subnet(pid.wrapping_add(n * 37)) else {
            eprintln!("skipped {test}: every 10.78.S.0/24 is in use on this host");
            return None;
        };
        let mut crowd = Crowd {
            bridge: format!("{tag}b"),
            bridge_addr: Ipv4Addr::new(10, 78, subnet, 254),
            hosts: Vec::new(),
        };
        // From here on, Drop removes whatever part was made.
        if let Err(e) = crowd.set_up_bridge() {
            eprintln!("skipped {test}: cannot set up a bridge: {e}");
            return None;
        }
        for i in 1..=hosts {
            let host = Host {
                name: format!("{tag}x{i}-swarmcache"),
                bridge_if: format!("{tag}x{i}"),
                addr: Ipv4Addr::new(10, 78, subnet, i as u8),
            };
            let made = ip(&["netns", "add", &host.name]);
            // Pushed before it is set up, so that Drop removes a half-made host too.
            crowd.hosts.push(host);
            if let Err(e) = made.and_then(|()| crowd.set_up_host(crowd.hosts.len() - 1)) {
                eprintln!("skipped {test}: cannot set up host {i}: {e}");
                return None;
            }
        }
        if let Err(e) = crowd.pin_neighbours() {
            eprintln!("skipped {test}: cannot pin the hosts' neighbour entries: {e}");
            return None;
        }
        Some(crowd)
    }

    /// Gives every host a permanent neighbour (ARP) entry for every other host and the
    /// bridge. The kernel keeps one ARP table for all namespaces, and refuses new dynamic
    /// entries past `gc_thresh3` (1 024 by default) in all of them together; 66 hosts that
    /// each talk to the 65 others need 4 290. Past the limit a host's packets to a peer it
    /// has no entry for are dropped before they leave it (`table_fulls` in
    /// `/proc/net/stat/arp_cache`, `TCPRetransFail` in the host's `nstat`): at N = 64 the
    /// 5-11 clients started last had every connect time out, the tracker's included, while
    /// the tracker saw no SYN at all. On real machines each host has its own table.
    /// Permanent entries are not counted against the limit, and change no system setting.
    fn pin_neighbours(&self) -> Result<(), String> {
        let mut all: Vec<(Ipv4Addr, String)> = self
            .hosts
            .iter()
            .map(|h| (h.addr, mac_of(h.addr)))
            .collect();
        all.push((self.bridge_addr, mac_of(self.bridge_addr)));
        for host in &self.hosts {
            let batch: String = all
                .iter()
                .filter(|(addr, _)| *addr != host.addr)
                .map(|(addr, mac)| {
                    format!("neigh replace {addr} lladdr {mac} dev {HOST_IF} nud permanent\n")
                })
                .collect();
            ip_batch(&host.name, &batch)?;
        }
        Ok(())
    }

    fn set_up_bridge(&self) -> Result<(), String> {
        ip(&["link", "add", &self.bridge, "type", "bridge"])?;
        // Fixed, so that the hosts' permanent neighbour entries stay right (a bridge
        // without one takes the lowest of its ports' addresses, which changes as they join).
        ip(&[
            "link",
            "set",
            &self.bridge,
            "address",
            &mac_of(self.bridge_addr),
        ])?;
        let addr = format!("{}/24", self.bridge_addr);
        ip(&["addr", "add", &addr, "dev", &self.bridge])?;
        ip(&["link", "set", &self.bridge, "up"])
    }

    fn set_up_host(&self, index: usize) -> Result<(), String> {
        let host = &self.hosts[index];
        // The peer end is made inside the namespace: no name clash between hosts.
        ip(&[
            "link",
            "add",
            &host.bridge_if,
            "type",
            "veth",
            "peer",
            "name",
            HOST_IF,
            "netns",
            &host.name,
        ])?;
        ip(&["link", "set", &host.bridge_if, "master", &self.bridge])?;
        ip(&["link", "set", &host.bridge_if, "up"])?;
        let addr = format!("{}/24", host.addr);
        host.ip(&["link", "set", HOST_IF, "address", &mac_of(host.addr)])?;
        host.ip(&["addr", "add", &addr, "dev", HOST_IF])?;
        host.ip(&["link", "set", HOST_IF, "up"])?;
        host.ip(&["link", "set", "lo", "up"])
    }

    /// Host `i`, counted from 0.
    pub fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// Every host, in order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Caps host `i`'s egress at `rate` bit/s (see [`Host::cap`]).
    pub fn cap(&self, i: usize, rate: u64) -> Result<(), String> {
        self.hosts[i].cap(rate)
    }

    /// Sets host `i`'s link to the bridge up or down (see [`Host::set_link`]).
    pub fn set_link(&self, i: usize, up: bool) -> Result<(), String> {
        self.hosts[i].set_link(up)
    }
}

impl Host {
    /// Runs `ip ARGS` inside the host's namespace.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// A command running `program` inside the host, in `dir`. `ip netns exec` execs the
    /// program, so the child's pid is the program's own and signals reach it.
    pub fn command(&self, program: &Path, dir: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(program)
            .current_dir(dir);
        cmd
    }

    /// Caps what the host sends at `rate` bit/s with a token bucket on its egress
    /// (`tc qdisc replace … tbf`, burst [`tbf_burst`], latency [`TBF_LATENCY_MS`]); a
    /// second call changes the rate.
    pub fn cap(&self, rate: u64) -> Result<(), String> {
        let (rate, burst, latency) = (
            format!("{rate}bit"),
            format!("{}b", tbf_burst(rate)),
            format!("{TBF_LATENCY_MS}ms"),
        );
        let args = [
            "netns", "exec", &self.name, "tc", "qdisc", "replace", "dev", HOST_IF, "root", "tbf",
            "rate", &rate, "burst", &burst, "latency", &latency,
        ];
        ip(&args)
    }

    /// Removes the cap (the default queue again).
    pub fn uncap(&self) -> Result<(), String> {
        ip(&[
            "netns", "exec", &self.name, "tc", "qdisc", "del", "dev", HOST_IF, "root",
        ])
    }

    /// Sets the host's link to the bridge up or down: down, nothing it sends arrives
    /// (connects to it time out, as to a host that vanished), until it is up again.
    pub fn set_link(&self, up: bool) -> Result<(), String> {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &self.bridge_if, state])
    }

    /// Bytes the host has sent to the bridge: its egress counter, frames and headers
    /// included (`/sys/class/net/eth0/statistics/tx_bytes`, read inside the namespace,
    /// where `ip netns exec` mounts the namespace's own sysfs).
    pub fn tx_bytes(&self) -> Result<u64, String> {
        let path = format!("/sys/class/net/{HOST_IF}/statistics/tx_bytes");
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name, "cat", &path])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("reading {path} in {}: {e}", self.name))?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().map_err(|e| {
            format!(
                "{path} in {} reads {:?} ({}): {e}",
                self.name,
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
    }

    /// Bytes the host has sent, as the bridge's end of its veth counts them received
    /// (`rx_bytes` in this namespace): one file read, cheap enough to sample every 100 ms
    /// for 32 hosts, where [`Host::tx_bytes`] starts a process.
    pub fn sent_bytes(&self) -> Result<u64, String> {
        let path = format!("/sys/class/net/{}/statistics/rx_bytes", self.bridge_if);
        let text = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        text.trim()
            .parse()
            .map_err(|e| format!("{path} reads {:?}: {e}", text.trim()))
    }
}

/// Where a listener of a host is bound and where the others reach it: directly, or with a
/// round-trip delay, through a `delay_relay` on the host's address in front of a listener
/// on the host's loopback. Programs listen on `listen` and advertise `reach`.
#[derive(Clone, Debug)]
pub struct Service {
    /// What the program binds.
    pub listen: SocketAddrV4,
    /// What the other hosts dial (and what the program advertises).
    pub reach: SocketAddrV4,
    /// The arguments of the relay in front of `listen`, when there is a delay.
    pub relay_args: Option<Vec<String>>,
}

/// The relay of a service listening on port P listens on P + this.
pub const RELAY_PORT_OFFSET: u16 = 10_000;

/// The bytes a relay holds on their way out of a host capped at `rate` bit/s, with
/// `delay_ms` each way: 1.5 × the bandwidth-delay product (see `examples/delay_relay.rs`),
/// 256 KiB at least; 8 MiB for an uncapped host.
pub fn relay_window(rate: Option<u64>, delay_ms: u64) -> u64 {
    match rate {
        Some(rate) => (rate / 8 * delay_ms * 3 / 2 / 1000).max(256 << 10),
        None => 8 << 20,
    }
}

impl Host {
    /// The service on `port` of this host: with `delay_ms` > 0 reached through a relay
    /// (its window from the host's cap `rate`), else directly on the host's address.
    pub fn service(&self, port: u16, delay_ms: u64, rate: Option<u64>) -> Service {
        let direct = SocketAddrV4::new(self.addr, port);
        if delay_ms == 0 {
            return Service {
                listen: direct,
                reach: direct,
                relay_args: None,
            };
        }
        let listen = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port);
        let reach = SocketAddrV4::new(self.addr, port + RELAY_PORT_OFFSET);
        let args = [
            "--listen".to_string(),
            reach.to_string(),
            "--target".into(),
            listen.to_string(),
            "--delay-ms".into(),
            delay_ms.to_string(),
            "--window".into(),
            relay_window(rate, delay_ms).to_string(),
            // Per-address limits of the target (tracker, peer server) still see one
            // address per host, not every host as the relay's 127.0.0.1.
            "--source-loopback".into(),
        ];
        Service {
            listen,
            reach,
            relay_args: Some(args.to_vec()),
        }
    }
}

/// A /24 of 10.78.0.0/16 that no interface of the test's namespace has an address in,
/// trying 250 of them from `start` on (the pid spreads concurrent test processes).
fn free_crowd_subnet(start: u32) -> Option<u8> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .ok()?;
    let used = String::from_utf8_lossy(&out.stdout).into_owned();
    (0..250)
        .map(|i| (start.wrapping_add(i) % 250 + 1) as u8)
        .find(|n| !used.contains(&format!(" 10.78.{n}.")))
}

impl Drop for Crowd {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end inside it, and with it the pair; the
        // bridge side is deleted by name too, in case a process kept the namespace alive.
        for host in &self.hosts {
            let _ = ip(&["netns", "del", &host.name]);
            let _ = ip(&["link", "del", &host.bridge_if]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
