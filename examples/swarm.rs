//! A local swarm on built-in defaults: a tracker, an origin capped at 50 MiB/s, a peer
//! seeding the same file, and clients that download one after another, each printing where
//! its bytes came from. Everything runs in this process on 127.0.0.1 with ports chosen by
//! the system, in a temporary directory that is removed at the end.
//!
//!     cargo run --release --example swarm

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use swarmcache::client::{self, GetConfig};
use swarmcache::manifest::DEFAULT_CHUNK_SIZE;
use swarmcache::server::{DEFAULT_MAX_CONNS, Server, ServerConfig};
use swarmcache::tracker::{DEFAULT_HTTP_TIMEOUT, DEFAULT_MAX_PEERS, Tracker, TrackerConfig};
use swarmcache::units::format_bytes;

const FILE_SIZE: usize = 64 << 20;
const CLIENTS: usize = 4;
const ORIGIN_RATE: u64 = 50 << 20;

fn main() -> Result<()> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;

    let file = dir.path().join("demo.bin");
    std::fs::write(&file, pseudo_random(FILE_SIZE)).context("writing the demo file")?;

    let tracker = Tracker::bind(&TrackerConfig {
        listen: any_port,
        data: dir.path().join("tracker-data"),
        peer_timeout: Duration::from_secs(60),
        max_peers: DEFAULT_MAX_PEERS,
        http_timeout: DEFAULT_HTTP_TIMEOUT,
    })?;
    let url = format!("http://{}", tracker.local_addr());
    let stop_tracker = tracker.shutdown_handle();
    let tracker_thread = std::thread::spawn(move || tracker.serve());
    println!("tracker   {url}");

    let server = |name: &str, origin: bool, rate: Option<u64>| -> Result<Server> {
        Server::bind(ServerConfig {
            listen: any_port,
            store: dir.path().join(name),
            seeds: vec![file.clone()],
            chunk_size: DEFAULT_CHUNK_SIZE,
            tracker: Some(url.clone()),
            origin,
            advertise: None,
            max_conns: DEFAULT_MAX_CONNS,
            max_upload_rate: rate,
            announce_interval: Some(Duration::from_millis(200)),
        })
    };
    let origin = server("origin", true, Some(ORIGIN_RATE))?;
    let peer = server("peer", false, None)?;
    let asset = origin.seeded()[0].id();
    println!(
        "origin    {} (capped at {}/s)",
        origin.local_addr(),
        format_bytes(ORIGIN_RATE)
    );
    println!("peer      {}", peer.local_addr());
    println!(
        "asset     {asset} ({}, {})",
        origin.seeded()[0].name,
        format_bytes(FILE_SIZE as u64)
    );
    let stops = [origin.shutdown_handle(), peer.shutdown_handle()];
    let servers: Vec<_> = [origin, peer]
        .into_iter()
        .map(|s| std::thread::spawn(move || s.serve()))
        .collect();

    // Wait (bounded) until the tracker knows both servers.
    let tracker_client = swarmcache::tracker_client::TrackerClient::new(&url)?;
    for _ in 0..100 {
        if tracker_client.peers(&asset)?.len() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    for n in 1..=CLIENTS {
        let config = GetConfig {
            output: Some(dir.path().join(format!("copy-{n}.bin"))),
            serve: Some(any_port),
            ..GetConfig::new(
                asset,
                Some(url.clone()),
                dir.path().join(format!("client-{n}")),
            )
        };
        let got = client::get(&config, false)?;
        println!("client {n}  {}", got.summary.human());
    }
    // The first client again, now from its own store.
    let again = GetConfig {
        output: Some(dir.path().join("copy-again.bin")),
        ..GetConfig::new(asset, Some(url.clone()), dir.path().join("client-1"))
    };
    println!(
        "client 1  again: {}",
        client::get(&again, false)?.summary.human()
    );

    let stats = ureq::get(&format!("{url}/stats")).call()?.into_string()?;
    println!("tracker stats: {stats}");

    for stop in &stops {
        stop.shutdown();
    }
    for s in servers {
        s.join().expect("server thread panicked")?;
    }
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
