//! `tracker`: the authority — catalog, swarms, HTTP/JSON API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use swarmcache::cli::{self, EXIT_OK};
use swarmcache::tracker::{DEFAULT_MAX_PEERS, Tracker, TrackerConfig};

/// The swarmcache tracker: keeps the catalog of manifests durable in --data, tracks which
/// peers hold which asset, and answers an HTTP/JSON API (try: curl http://ADDR/stats).
///
/// Prints "listening on http://ADDR" on stdout once it accepts requests (port 0 picks a
/// free port). Endpoints: GET /health, GET /assets, POST /assets (manifest TOML),
/// GET /assets/ID, POST /assets/ID/announce, GET /assets/ID/peers,
/// GET /stats (JSON: peers, seeders, origins, bytes served by peers and by origins since
/// the tracker started, P2P ratio; global and per swarm), GET /metrics (the same figures
/// for Prometheus).
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:7070, 0.0.0.0:7070 or [::]:7070.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: SocketAddr,
    /// Directory for the durable catalog (created if missing).
    #[arg(long, default_value = "tracker-data")]
    data: PathBuf,
    /// Peers silent for this long leave their swarm (e.g. 60s, 2m). Peers heartbeat every third of it.
    #[arg(long, default_value = "60s", value_parser = cli::duration_arg)]
    peer_timeout: Duration,
    /// Most peers handed out per announce.
    #[arg(long, default_value_t = DEFAULT_MAX_PEERS)]
    max_peers: usize,
    /// Drop a connection whose client leaves our answer unread this long.
    #[arg(long, default_value = "10s", value_parser = cli::duration_arg)]
    http_timeout: Duration,
}

fn run(args: Args) -> Result<u8> {
    let config = TrackerConfig {
        listen: args.listen,
        data: args.data,
        peer_timeout: args.peer_timeout,
        max_peers: args.max_peers,
        http_timeout: args.http_timeout,
    };
    let tracker = Tracker::bind(&config)?;
    cli::println(&format!("listening on http://{}", tracker.local_addr()))?;
    tracker.serve()?;
    Ok(EXIT_OK)
}

fn main() -> ExitCode {
    cli::finish("tracker", run(Args::parse()))
}
