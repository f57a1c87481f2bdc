//! A second host for multi-host tests: a network namespace the test creates, joined to the
//! test's own namespace by a veth pair with private addresses (10.77.N.1 on the host side,
//! 10.77.N.2 inside), removed again on drop, a panicking test included. Needs root and
//! `ip netns`; [`Netns::create`] answers `None` (after saying why on stderr) when either is
//! missing, and the test returns early as skipped.

#![allow(dead_code)]

use std::net::Ipv4Addr;
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

/// Runs `ip ARGS`; the error names the command and what it printed.
fn ip(args: &[&str]) -> Result<(), String> {
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
        if !is_root() {
            eprintln!("skipped {test}: needs root to create network namespaces");
            return None;
        }
        remove_leftovers();
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

/// Removes the namespaces (and host-side veth ends) of test processes that died without
/// dropping theirs (a SIGKILLed `cargo test`): their names carry the pid that made them.
fn remove_leftovers() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(tag) = name.strip_suffix("-swarmcache") else {
            continue;
        };
        let pid = tag
            .strip_prefix("sc")
            .and_then(|t| t.split('n').next())
            .and_then(|hex| u32::from_str_radix(hex, 16).ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = ip(&["netns", "del", name]);
            let _ = ip(&["link", "del", &format!("{tag}h")]);
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
