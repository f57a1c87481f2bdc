//! A local swarm on built-in defaults: a tracker, an origin whose upload is capped at
//! 20 MiB/s, and four clients that start together on a 64 MiB file. The clients serve each
//! other while they download, and the tracker splits the origin's work between them, so the
//! origin sends the file about once instead of four times. Everything runs in this process
//! on 127.0.0.1, with ports chosen by the system, in a temporary directory removed at the end.
//!
//!     cargo run --release --example swarm

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use swarmcache::client::{self, GetConfig};
use swarmcache::manifest::DEFAULT_CHUNK_SIZE;
use swarmcache::server::{DEFAULT_MAX_CONNS, DEFAULT_MAX_CONNS_PER_ADDR, Server, ServerConfig};
use swarmcache::tracker::{Tracker, TrackerConfig};
use swarmcache::units::format_bytes;

const FILE_SIZE: usize = 64 << 20;
const CLIENTS: usize = 4;
const ORIGIN_RATE: u64 = 20 << 20;

fn main() -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;
    let file = dir.path().join("demo.bin");
    std::fs::write(&file, pseudo_random(FILE_SIZE)).context("writing the demo file")?;

    let tracker = Tracker::bind(&TrackerConfig::new(
        any_port,
        dir.path().join("tracker-data"),
    ))?;
    let url = format!("http://{}", tracker.local_addr());
    let stop_tracker = tracker.shutdown_handle();
    let tracker_thread = std::thread::spawn(move || tracker.serve());
    println!("tracker   {url}");

    let origin = Server::bind(ServerConfig {
        listen: any_port,
        store: dir.path().join("origin"),
        seeds: vec![file.clone()],
        chunk_size: DEFAULT_CHUNK_SIZE,
        tracker: Some(url.clone()),
        origin: true,
        advertise: None,
        max_conns: DEFAULT_MAX_CONNS,
        max_conns_per_addr: DEFAULT_MAX_CONNS_PER_ADDR,
        max_upload_rate: Some(ORIGIN_RATE),
        upload_slots: swarmcache::server::DEFAULT_UPLOAD_SLOTS,
        announce_interval: None,
        token: None,
        ticket_keys: Vec::new(),
        await_keys: false,
    })?;
    let asset = origin.seeded()[0].id();
    println!(
        "origin    {}, upload capped at {}/s",
        origin.local_addr(),
        format_bytes(ORIGIN_RATE)
    );
    println!("asset     {asset} ({})", format_bytes(FILE_SIZE as u64));
    let stop_origin = origin.shutdown_handle();
    let origin_thread = std::thread::spawn(move || origin.serve());

    // Four clients at once; each keeps serving (seeding) until all are done.
    let started = Instant::now();
    let clients: Vec<_> = (1..=CLIENTS)
        .map(|n| {
            let config = GetConfig {
                output: Some(dir.path().join(format!("copy-{n}.bin"))),
                serve: Some(any_port),
                ..GetConfig::new(
                    asset,
                    Some(url.clone()),
                    dir.path().join(format!("client-{n}")),
                )
            };
            std::thread::spawn(move || client::get(&config, true))
        })
        .collect();
    let mut from_origin = 0;
    let mut seeders = Vec::new();
    for (n, handle) in clients.into_iter().enumerate() {
        let got = handle.join().expect("client thread panicked")?;
        println!("client {}  {}", n + 1, got.summary.human());
        from_origin += got.summary.from_origin;
        seeders.extend(got.seeding);
    }
    let wall = started.elapsed().as_secs_f64();
    let origin_only = (CLIENTS * FILE_SIZE) as f64 / ORIGIN_RATE as f64;
    println!(
        "all {CLIENTS} done in {wall:.1} s; the origin sent {:.2} × the file (alone it would have sent {CLIENTS} × in {origin_only:.1} s)",
        from_origin as f64 / FILE_SIZE as f64
    );
    for seeding in seeders {
        seeding.run(Duration::ZERO);
    }
    stop_origin.shutdown();
    origin_thread.join().expect("origin thread panicked")?;
    stop_tracker.shutdown();
    tracker_thread.join().expect("tracker thread panicked")?;
    Ok(())
}

/// Incompressible demo content without a random-number crate (xorshift).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
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
