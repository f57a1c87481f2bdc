//! `peer_client`: publish manifests and get assets from the swarm.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use swarmcache::cli::{self, EXIT_OK};
use swarmcache::client::{self, DEFAULT_WORKERS, GetConfig};
use swarmcache::manifest::{self, Manifest};
use swarmcache::tracker_client::TrackerClient;

/// Publish manifests to a tracker and get assets: from the local store first, then in
/// parallel from peers, then from the origin; every chunk verified before it is written.
///
/// Examples:
///   ID=$(chunkify big.iso | peer_client publish --tracker http://127.0.0.1:7070 -)
///   peer_client get "$ID" --tracker http://127.0.0.1:7070 -o copy.iso
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a manifest (a file, or - for standard input) and print its asset id.
    Publish {
        /// The manifest TOML, as printed by chunkify, or - for standard input.
        manifest: PathBuf,
        /// Tracker URL, e.g. http://127.0.0.1:7070.
        #[arg(long, env = "SWARMCACHE_TRACKER")]
        tracker: String,
    },
    /// Get an asset into the store and write it to a file.
    ///
    /// Interrupted downloads resume: run the same command again and only missing chunks are
    /// fetched. The output appears under its name only once complete and verified.
    Get {
        /// The asset id (64 hex digits).
        asset: String,
        /// Tracker URL, e.g. http://127.0.0.1:7070 (not needed when the store holds the whole asset).
        #[arg(long, env = "SWARMCACHE_TRACKER")]
        tracker: Option<String>,
        /// Output file (default: the asset's name in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Store (cache) directory, shared with peer_server (default: the user's cache).
        #[arg(long, visible_alias = "cache")]
        store: Option<PathBuf>,
        /// Parallel connections to peers and origin.
        #[arg(long, default_value_t = DEFAULT_WORKERS)]
        workers: usize,
        /// Drop a source when a requested chunk has not started arriving after this long.
        #[arg(long, default_value = "10s", value_parser = cli::duration_arg)]
        chunk_timeout: Duration,
        /// Download cap, e.g. 25MiB (per second).
        #[arg(long, value_parser = cli::size_arg)]
        max_download_rate: Option<u64>,
        /// Print the summary as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// No progress bar and no summary line on stderr.
        #[arg(short, long)]
        quiet: bool,
    },
}

fn run(args: Args) -> Result<u8> {
    match args.command {
        Command::Publish { manifest, tracker } => {
            let manifest = read_manifest(&manifest)?;
            let answer = TrackerClient::new(&tracker)?.publish(&manifest)?;
            cli::println(&answer.id)?;
        }
        Command::Get {
            asset,
            tracker,
            output,
            store,
            workers,
            chunk_timeout,
            max_download_rate,
            json,
            quiet,
        } => {
            let asset = manifest::parse_asset_id(&asset)?;
            let config = GetConfig {
                asset,
                tracker,
                output,
                store: store.unwrap_or_else(cli::default_store),
                workers,
                chunk_timeout,
                max_download_rate,
                progress: !quiet && std::io::stderr().is_terminal(),
            };
            let summary = client::get(&config)?;
            if !quiet {
                eprintln!("peer_client: {}", summary.human());
            }
            if json {
                cli::println(&serde_json::to_string(&summary)?)?;
            }
        }
    }
    Ok(EXIT_OK)
}

fn read_manifest(path: &Path) -> Result<Manifest> {
    let manifest = if path == Path::new("-") {
        Manifest::read_from(std::io::stdin().lock())
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening manifest {}", path.display()))?;
        Manifest::read_from(file)
    };
    manifest.with_context(|| format!("manifest {}", path.display()))
}

fn main() -> ExitCode {
    cli::finish("peer_client", run(Args::parse()))
}
