//! A host's own download first: a `get` on a host whose uplink is capped by the kernel
//! (tbf, with a deep queue) and full of what it serves to others still finishes within a
//! bound derived from its caps, because its embedded server yields (`client::uplink`).
//! Needs root (network namespaces, `tc`); skipped with a message otherwise.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{Proc, TrackerProc, bin, random_file};
use crate::netns::Netns;

/// The host's uplink: 20 Mbit/s, 2.5 MB/s...
const UPLINK: &str = "20mbit";
const UPLINK_BYTES_PER_SEC: f64 = 2.5e6;
/// ...with a queue of 10 MB in front of it, 4 s of it: what a home router's buffer or a
/// deep tbf holds, and what makes a host's own requests wait behind its uploads.
const UPLINK_QUEUE: &str = "10mb";
/// Its downlink: 100 Mbit/s, 12.5 MB/s.
const DOWNLINK: &str = "100mbit";
const DOWNLINK_BYTES_PER_SEC: f64 = 12.5e6;
/// The asset: 24 MiB in 256 KiB chunks (the default), 2 s at the downlink's rate; its
/// pullers ask the host for about 18 MB, 7 s of its uplink.
const SIZE: usize = 24 << 20;
/// The origin's upload cap: the swarm needs every chunk from it once, 3 s.
const ORIGIN_RATE: &str = "8MiB";
const ORIGIN_BYTES_PER_SEC: f64 = 8.0 * 1048576.0;
/// What each of them uploads at most: slow peers, so that they pull what the capped host
/// holds from it rather than from each other.
const PULLER_UPLOAD: &str = "256KiB";
const PULLER_BYTES_PER_SEC: f64 = 262144.0;
/// Clients pulling the asset at once, from the origin, each other and the capped host.
const PULLERS: usize = 6;

/// Runs `tc ARGS` in the namespace `ns` (or the test's own with `None`).
fn tc(ns: Option<&Netns>, args: &[&str]) {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &ns.name, "tc"]);
            c
        }
        None => Command::new("tc"),
    };
    let out = cmd.args(args).output().expect("running tc");
    assert!(
        out.status.success(),
        "tc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn spawn_in(ns: &Netns, dir: &Path, name: &str, args: &[&str]) -> Proc {
    let mut cmd = ns.command(&bin(name), dir);
    cmd.args(args);
    Proc::spawn_cmd(
        &mut cmd,
        format!("(in {}) {name} {}", ns.name, args.join(" ")),
    )
}

#[test]
fn a_host_whose_uplink_is_full_of_uploads_still_finishes_its_own_download_in_time() {
    let test = "a_host_whose_uplink_is_full_of_uploads_still_finishes_its_own_download_in_time";
    let Some(ns) = Netns::create(test) else {
        return;
    };
    if Command::new("tc").arg("-V").output().is_err() {
        eprintln!("skipped {test}: needs tc (iproute2)");
        return;
    }
    // The host's egress (its uplink) and the test side's egress towards it (its downlink).
    tc(
        Some(&ns),
        &[
            "qdisc",
            "add",
            "dev",
            &ns.ns_if,
            "root",
            "tbf",
            "rate",
            UPLINK,
            "burst",
            "32kb",
            "limit",
            UPLINK_QUEUE,
        ],
    );
    tc(
        None,
        &[
            "qdisc",
            "add",
            "dev",
            &ns.host_if,
            "root",
            "tbf",
            "rate",
            DOWNLINK,
            "burst",
            "64kb",
            "limit",
            "1mb",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let content = random_file(&d.join("f.bin"), SIZE, 141);
    let host = ns.host_addr.to_string();
    let tracker = TrackerProc::start_on(d, &format!("{host}:0"), &[]);
    let mut origin = Proc::spawn(
        d,
        "peer_server",
        &[
            "--listen",
            "0.0.0.0:0",
            "--store",
            "origin",
            "--tracker",
            &tracker.url,
            "--seed",
            "f.bin",
            "--origin",
            "--max-upload-rate",
            ORIGIN_RATE,
        ],
    );
    let id = origin.wait_line("seeded ", Duration::from_secs(30));
    let id = id.split_whitespace().next().unwrap().to_string();
    origin.listening();
    let started = Instant::now();
    let mut capped = spawn_in(
        &ns,
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "-o",
            "capped.bin",
            "--store",
            "capped",
            "--json",
            "--listen",
            "0.0.0.0:0",
            "--yield-uplink",
        ],
    );
    let mut pullers: Vec<Proc> = (0..PULLERS)
        .map(|i| {
            let (out, store) = (format!("p{i}.bin"), format!("p{i}"));
            Proc::spawn(
                d,
                "peer_client",
                &[
                    "get",
                    &id,
                    "--tracker",
                    &tracker.url,
                    "-o",
                    &out,
                    "--store",
                    &store,
                    "--json",
                    "--listen",
                    "0.0.0.0:0",
                    "--seed-for",
                    "60s",
                    "--max-upload-rate",
                    PULLER_UPLOAD,
                ],
            )
        })
        .collect();
    let summary = capped.summary();
    let took = started.elapsed();
    assert_eq!(std::fs::read(d.join("capped.bin")).unwrap(), content);
    // The bound: three times the Kumar–Ross bound of the swarm the caps make (the origin's
    // upload, the host's downlink, or everybody's upload together, 14 s), plus 2 s for a
    // debug build to start: a host whose connects and requests time out behind its uploads
    // (the 5 s connect and 2 s handshake timeouts) takes longer or fails.
    let clients = (PULLERS + 1) as f64;
    let uploads =
        ORIGIN_BYTES_PER_SEC + UPLINK_BYTES_PER_SEC + PULLERS as f64 * PULLER_BYTES_PER_SEC;
    let needed = (SIZE as f64 / DOWNLINK_BYTES_PER_SEC)
        .max(SIZE as f64 / ORIGIN_BYTES_PER_SEC)
        .max(clients * SIZE as f64 / uploads);
    let bound = Duration::from_secs_f64(3.0 * needed + 2.0);
    assert!(
        took <= bound,
        "took {took:?}, bound {bound:?}: {summary}\nstderr: {}",
        capped.stderr()
    );
    // It served while downloading: the yielding lowered its uploads, it did not stop them.
    assert!(summary["uploaded"].as_u64().unwrap() > 0, "{summary}");
    for p in &mut pullers {
        p.summary();
    }
    eprintln!(
        "{test}: took {took:?} (bound {bound:?}), uploaded {} bytes",
        summary["uploaded"]
    );
}
