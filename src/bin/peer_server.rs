//! `peer_server`: seed files and serve the chunks of a store to other peers.

// The `///` docs below are the --help text, not rustdoc: `[::]:7070` is an address.
#![allow(rustdoc::broken_intra_doc_links)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::error::ErrorKind;
use clap::{ArgAction, CommandFactory, Parser};
use swarmcache::cli::{self, EXIT_OK};
use swarmcache::server::{
    DEFAULT_MAX_CONNS, DEFAULT_MAX_CONNS_PER_ADDR, DEFAULT_UPLOAD_SLOTS, Server, ServerConfig,
};

/// Serve the chunks of a store to other peers over the swarmcache wire protocol, and
/// announce what the store holds to a tracker on a heartbeat.
///
/// Prints "seeded ID NAME" for each --seed, with --metrics "metrics on http://ADDR/metrics",
/// then "listening on ADDR" on stdout once it accepts connections (port 0 picks a port;
/// the lines show the ones bound).
///
/// Example (the origin of a swarm):
///   peer_server --origin --listen 127.0.0.1:7001 --store ./origin --seed big.iso --tracker http://127.0.0.1:7070
///   peer_server --origin --store ./origin --seed big.iso --encrypt --tracker http://127.0.0.1:7070
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    /// Address to listen on, e.g. 127.0.0.1:7001, 0.0.0.0:7001, [::]:7001; port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:7001", value_parser = cli::addr_arg)]
    listen: SocketAddr,
    /// Store directory whose assets are served (shared with peer_client; default: the user's cache).
    #[arg(long, visible_alias = "cache")]
    store: Option<PathBuf>,
    /// Import this file into the store (and publish its manifest when --tracker is given).
    /// A directory is a directory asset, served from its files in place (no copy; symbolic
    /// links are refused); each chunk is checked before it is sent. Repeatable.
    #[arg(long)]
    seed: Vec<PathBuf>,
    /// Asset name for a --seed (default: its file name). Repeatable: the first --name names
    /// the first --seed, and so on. A label only: the asset id depends on the content, so
    /// the same bytes under another name are the same asset.
    #[arg(long)]
    name: Vec<String>,
    /// Chunk size for --seed files, 16KiB to 64MiB.
    #[arg(long, default_value = "256KiB", value_parser = cli::chunk_size_arg)]
    chunk_size: u32,
    /// Encrypt every --seed (AES-128-CTR, a new random key each) on its way into the store,
    /// which then holds ciphertext only, and publish each key to the --tracker (needed; over
    /// https, or on the tracker's host). Each run makes new assets: to seed one encrypted
    /// asset again, seed the ciphertext `chunkify --encrypt --out` wrote, without --encrypt.
    #[arg(long, requires = "tracker")]
    encrypt: bool,
    /// Tracker URL to publish to and announce at, e.g. http://127.0.0.1:7070 or
    /// https://HOST:7443 (a tracker with --tls-cert); several (trackers sharing one Redis,
    /// tried in turn) as URL1,URL2 or by repeating the flag.
    #[arg(long, env = "SWARMCACHE_TRACKER", value_parser = cli::tracker_arg, action = ArgAction::Append)]
    tracker: Vec<String>,
    /// Register as the origin: the fallback of last resort for every asset served.
    #[arg(long)]
    origin: bool,
    /// Address other peers should connect to, when it differs from --listen (NAT, 0.0.0.0).
    /// Without it, a wildcard listen address is announced as the address the tracker sees.
    #[arg(long, value_parser = cli::addr_arg)]
    advertise_addr: Option<SocketAddr>,
    /// Sessions served at once (connections that sent their Hello); when all are taken the
    /// one idle longest yields to a newcomer, or the newcomer is refused with "busy".
    #[arg(long, default_value_t = DEFAULT_MAX_CONNS)]
    max_conns: usize,
    /// Connections one remote address (an IPv6 /64 counts as one) may hold at once; more are
    /// refused with "busy".
    #[arg(long, default_value_t = DEFAULT_MAX_CONNS_PER_ADDR)]
    max_conns_per_addr: usize,
    /// Upload cap for the whole process, e.g. 50MiB (per second).
    #[arg(long, value_parser = cli::size_arg)]
    max_upload_rate: Option<u64>,
    /// Chunks sent at once over all connections; other requests wait their turn. A send
    /// that takes over 100 ms gives its slot up, so a slow reader holds nobody up.
    #[arg(long, default_value_t = DEFAULT_UPLOAD_SLOTS, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    upload_slots: usize,
    /// Heartbeat period (default: what the tracker asks for).
    #[arg(long, value_parser = cli::duration_arg)]
    announce_interval: Option<Duration>,
    /// Serve Prometheus metrics over HTTP at http://ADDR/metrics, e.g. 127.0.0.1:9101:
    /// bytes and chunks served per asset, connections accepted, active and failed, busy
    /// refusals, protocol errors.
    #[arg(long, value_name = "ADDR", value_parser = cli::addr_arg)]
    metrics: Option<SocketAddr>,
    /// Token for a tracker started with --auth (publishing seeds needs the publish right,
    /// --origin the origin right).
    #[arg(long, env = "SWARMCACHE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: cli::TrackerTlsArgs,
    /// The tracker's public key (hex, as GET /keys lists): serve only clients with a ticket
    /// it signed. Repeatable. Default: ask the --tracker; open mode if it has no keys.
    #[arg(long)]
    tracker_key: Vec<String>,
    /// Remove from the store each asset the tracker says was unpublished (its announces
    /// are answered 410), once no connection uses it; a --seed of this server stays while
    /// it runs. Default: stop serving it and keep its files.
    #[arg(long)]
    remove_unpublished: bool,
}

fn run(args: Args) -> Result<u8> {
    if args.name.len() > args.seed.len() {
        Args::command()
            .error(
                ErrorKind::ArgumentConflict,
                format!(
                    "{} --name for {} --seed: each --name names the --seed at its place",
                    args.name.len(),
                    args.seed.len()
                ),
            )
            .exit();
    }
    let config = ServerConfig {
        seeds: args.seed,
        seed_names: args.name,
        chunk_size: args.chunk_size,
        encrypt: args.encrypt,
        tracker: cli::trackers(&args.tracker),
        origin: args.origin,
        advertise: args.advertise_addr,
        max_conns: args.max_conns,
        max_conns_per_addr: args.max_conns_per_addr,
        max_upload_rate: args.max_upload_rate,
        upload_slots: args.upload_slots,
        announce_interval: args.announce_interval,
        remove_unpublished: args.remove_unpublished,
        token: args.token,
        tracker_tls: args.tls.tls(),
        ticket_keys: args.tracker_key,
        ..ServerConfig::new(args.listen, args.store.unwrap_or_else(cli::default_store))
    };
    let server = Server::bind_with_metrics(config, args.metrics)?;
    for manifest in server.seeded() {
        cli::println(&format!("seeded {} {}", manifest.id(), manifest.name))?;
    }
    if let Some(addr) = server.metrics_addr() {
        cli::println(&format!("metrics on http://{addr}/metrics"))?;
    }
    cli::println(&format!("listening on {}", server.local_addr()))?;
    // Ctrl-C and SIGTERM stop the server cleanly: it leaves its swarms and exits 0.
    let stop = server.shutdown_handle();
    cli::on_stop_signal("peer_server", EXIT_OK, move || stop.shutdown())?;
    server.serve()?;
    eprintln!("peer_server: stopped");
    Ok(EXIT_OK)
}

fn main() -> ExitCode {
    cli::init_logging("peer_server");
    cli::finish("peer_server", run(cli::parse("peer_server")))
}
