//! `peer_client`: publish manifests and get assets from the swarm.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgAction, Parser, Subcommand};
use swarmcache::cli::{self, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_READER_CLOSED};
use swarmcache::client::{self, DEFAULT_WINDOW, DEFAULT_WORKERS, GetConfig, Progress};
use swarmcache::crypt::ContentKey;
use swarmcache::gateway::{Gateway, GatewayConfig};
use swarmcache::manifest::AssetId;
use swarmcache::manifest::Manifest;
use swarmcache::names::{Reference, TagRef};
use swarmcache::store::Store;
use swarmcache::store::cache;
use swarmcache::tracker_client::TrackerClient;

/// Publish manifests to a tracker and get assets: from the local store first, then in
/// parallel from peers, then from the origin; every chunk verified before it is written.
///
/// Examples:
///   ID=$(chunkify big.iso | peer_client publish --tracker http://127.0.0.1:7070 -)
///   peer_client get "$ID" --tracker http://127.0.0.1:7070 -o copy.iso
///   peer_client get "$ID" --tracker http://127.0.0.1:7070 --stream | mpv -
///
/// Names and tags (CI: publish each build as ci/app:latest, pull the latest in one command):
///   chunkify app.tar | peer_client publish --tag ci/app:latest -
///   peer_client get ci/app -o app.tar        # ci/app means ci/app:latest
///   peer_client tag ci/app:stable "$ID"      # move a tag; peer_client tags ci/app: history
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish a manifest (a file, or - for standard input) and print its asset id.
    ///
    /// The manifest of an encrypted asset (chunkify --encrypt) carries its content key: it
    /// goes to the tracker, which keeps it (file mode 0600) and gives it only to holders of
    /// the fetch right; it is sent only over https or to a tracker on this host.
    Publish {
        /// The manifest TOML, as printed by chunkify, or - for standard input.
        manifest: PathBuf,
        /// Tracker URL, e.g. http://127.0.0.1:7070 or https://HOST:7443; several (trackers sharing one Redis,
        /// tried in turn) as URL1,URL2 or by repeating the flag.
        #[arg(long, env = "SWARMCACHE_TRACKER", value_parser = cli::tracker_arg, action = ArgAction::Append, required = true)]
        tracker: Vec<String>,
        /// Token with the publish right, for a tracker started with --auth.
        #[arg(long, env = "SWARMCACHE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Also point this tag at the asset, e.g. ci/app:latest (NAME alone means
        /// NAME:latest). The token must be allowed the name (auth.toml `names`); when it is
        /// not, nothing is published.
        #[arg(long, value_name = "NAME:TAG", value_parser = tag_arg)]
        tag: Option<TagRef>,
        #[command(flatten)]
        tls: cli::TrackerTlsArgs,
        /// An http:// or https:// URL serving the asset's bytes (a web server, an S3
        /// bucket, a CDN: anything that answers Range requests), used by clients as an
        /// origin. Repeatable, at most 8; more later with `origin add`.
        #[arg(long = "origin-url", value_name = "URL", value_parser = origin_url_arg)]
        origin_urls: Vec<String>,
    },
    /// Point a tag at an asset already published (the tag moves atomically; its history
    /// is kept: see `peer_client tags NAME`).
    ///
    /// A name is 1 to 128 bytes of a-z 0-9 . _ - in /-separated parts, each starting with a
    /// letter or a digit (ci/app, team.x/build-7); a tag is 1 to 64 bytes of letters,
    /// digits, . _ -, starting with a letter or a digit (latest, v1.2.0). Moving a tag
    /// needs the publish right, and a name the token's `names` prefixes allow.
    Tag {
        /// The tag to move, NAME:TAG (NAME alone means NAME:latest).
        #[arg(value_name = "NAME:TAG", value_parser = tag_arg)]
        tag: TagRef,
        /// The asset id (64 hex digits) it is to point at.
        #[arg(value_parser = cli::asset_id_arg)]
        id: AssetId,
        /// Tracker URL, e.g. http://127.0.0.1:7070; several (trackers sharing one Redis,
        /// tried in turn) as URL1,URL2 or by repeating the flag.
        #[arg(long, env = "SWARMCACHE_TRACKER", value_parser = cli::tracker_arg, action = ArgAction::Append, required = true)]
        tracker: Vec<String>,
        /// Token with the publish right, for a tracker started with --auth.
        #[arg(long, env = "SWARMCACHE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: cli::TrackerTlsArgs,
    },
    /// List the tags of a name: where each points, and when and by whom it moved.
    Tags {
        /// The name, e.g. ci/app.
        name: String,
        /// Tracker URL, e.g. http://127.0.0.1:7070; several (trackers sharing one Redis,
        /// tried in turn) as URL1,URL2 or by repeating the flag.
        #[arg(long, env = "SWARMCACHE_TRACKER", value_parser = cli::tracker_arg, action = ArgAction::Append, required = true)]
        tracker: Vec<String>,
        /// Token, for a tracker started with --auth.
        #[arg(long, env = "SWARMCACHE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Print the tracker's JSON answer instead.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: cli::TrackerTlsArgs,
    },
    /// Unpublish an asset (the admin right): the tracker forgets it and hands out no more
    /// tickets for it; serving peers stop serving it within a heartbeat (their copies stay
    /// in their stores: `peer_client cache rm ID` removes one); tags pointing at it answer
    /// that it was unpublished. Tickets already handed out still open connections to peers
    /// that have not heard yet, until they expire.
    Unpublish {
        /// The asset id (64 hex digits).
        #[arg(value_parser = cli::asset_id_arg)]
        id: AssetId,
        /// Tracker URL, e.g. http://127.0.0.1:7070; several (trackers sharing one Redis,
        /// tried in turn) as URL1,URL2 or by repeating the flag.
        #[arg(long, env = "SWARMCACHE_TRACKER", value_parser = cli::tracker_arg, action = ArgAction::Append, required = true)]
        tracker: Vec<String>,
        /// Token with the admin right, for a tracker started with --auth.
        #[arg(long, env = "SWARMCACHE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: cli::TrackerTlsArgs,
    },
    /// Manage an asset's origin URLs (web seeds) in the tracker's catalog.
    #[command(subcommand)]
    Origin(OriginCommand),
    /// Get an asset into the store and write it to a file, or stream it to stdout.
    ///
    /// Sources in order: the local store, then peers, then the origin. While it downloads,
    /// the asset is served to other peers (see --listen, --no-serve, --seed-for).
    /// Interrupted downloads resume: run the same command again and only missing chunks are
    /// fetched. The output appears under its name only once complete and verified (a copy:
    /// editing it never changes the store); with
    /// --stream, bytes go to stdout in order as soon as they are verified. An encrypted
    /// asset (chunkify --encrypt, peer_server --encrypt) is decrypted on the way out with the
    /// key the tracker gives at every get (fetch right; over https or on its host): the
    /// store and every peer keep ciphertext only.
    Get(Box<GetArgs>),
    /// Serve assets over HTTP to players and browsers, fetched from the swarm as they are
    /// read: GET/HEAD /ID (Range reads: each answered as soon as its chunks are verified,
    /// the chunks at the reader's offset fetched first), /ID/NAME, /watch/ID (a player page
    /// with live figures), /stats/ID (those figures as JSON), / (the assets).
    ///
    /// Everything fetched lands in the store and is served to peers as `get` does.
    /// Examples:
    ///   peer_client gateway --tracker http://127.0.0.1:7070
    ///   ffplay http://127.0.0.1:8080/ID        # or mpv, VLC, curl -r 0-99
    ///   xdg-open http://127.0.0.1:8080/watch/ID
    #[command(verbatim_doc_comment)]
    Gateway(Box<GatewayArgs>),
    /// Look at the cache (the store get fills) and trim it: ls, rm, gc.
    ///
    /// Assets in use by a running process (a get, a peer_server seeding them or sending
    /// them to a peer) are never removed. A removed asset is simply fetched again by the
    /// next get. Files written by get -o are copies: removing an asset leaves them alone.
    ///
    /// Examples:
    ///   peer_client cache ls
    ///   peer_client cache gc --cache-size 10GiB
    ///   peer_client cache rm 3f5c…e1 --cache /srv/swarmcache
    #[command(verbatim_doc_comment)]
    Cache(CacheArgs),
}

#[derive(Subcommand)]
enum OriginCommand {
    /// List an origin URL for a published asset: clients fetch from it where they would
    /// from a peer_server --origin (the publish right).
    ///
    /// The server must answer Range requests with 206 and the exact Content-Range, and
    /// must not compress the file (clients send Accept-Encoding: identity). Prints the
    /// asset's origin URLs, one a line.
    ///
    /// Example:
    ///   peer_client origin add "$ID" https://cdn.example.com/big.iso --tracker https://t:7443
    #[command(verbatim_doc_comment)]
    // The text is --help's: a bare URL reads as one there.
    #[allow(rustdoc::bare_urls)]
    Add {
        /// The asset id (64 hex digits).
        #[arg(value_parser = cli::asset_id_arg)]
        id: AssetId,
        /// The URL, http:// or https://.
        #[arg(value_parser = origin_url_arg)]
        url: String,
        /// Tracker URL, e.g. http://127.0.0.1:7070; several (trackers sharing one Redis,
        /// tried in turn) as URL1,URL2 or by repeating the flag.
        #[arg(long, env = "SWARMCACHE_TRACKER", value_parser = cli::tracker_arg, action = ArgAction::Append, required = true)]
        tracker: Vec<String>,
        /// Token with the publish right, for a tracker started with --auth.
        #[arg(long, env = "SWARMCACHE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: cli::TrackerTlsArgs,
    },
}

/// Checks an origin URL for clap.
fn origin_url_arg(text: &str) -> Result<String, String> {
    swarmcache::origin_url::check(text)
        .map(str::to_string)
        .map_err(|e| format!("{e:#}"))
}

#[derive(clap::Args)]
struct CacheArgs {
    /// Cache (store) directory (default: the user's cache, as for get).
    #[arg(long, visible_alias = "cache", global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List the cached assets, most recently used first.
    ///
    /// Columns: id, full size, share present, last use, the processes using it, name.
    Ls {
        /// Print a JSON array instead: id, name, size, present (bytes), complete,
        /// last_used (Unix seconds), in_use, users ([{pid, command}]).
        #[arg(long)]
        json: bool,
    },
    /// Remove assets from the cache.
    ///
    /// An asset in use by a running process is refused (exit 1), naming the process to
    /// stop; the other ids are still removed.
    Rm {
        /// Asset ids (64 hex digits each).
        #[arg(required = true, value_parser = cli::asset_id_arg)]
        ids: Vec<AssetId>,
    },
    /// Evict least recently used assets until the cache fits in --cache-size.
    ///
    /// Assets a running process uses are never evicted; when what is left still exceeds
    /// the size, a warning on stderr says why (exit 0). Leftovers of interrupted work are
    /// removed too.
    Gc {
        /// Size limit for the whole cache, e.g. 10GiB; every asset counts at its full size.
        #[arg(
            long,
            env = "SWARMCACHE_CACHE_SIZE",
            value_name = "SIZE",
            value_parser = cli::cache_size_arg
        )]
        cache_size: u64,
        /// Print what was done as JSON on stdout instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct GetArgs {
    /// The asset: its id (64 hex digits), or NAME:TAG (e.g. ci/app:latest; NAME alone
    /// means NAME:latest), which the tracker resolves in one request.
    #[arg(value_name = "ID|NAME:TAG", value_parser = reference_arg)]
    asset: Reference,
    /// Output file, placed once complete: -o FILE replaces an existing file atomically (as
    /// curl -o and cp do). Default: the asset's name in the current directory, never
    /// replacing a file (pass -o NAME to). A device, FIFO or socket (or a symlink to one)
    /// is written into in order, never replaced; - writes to stdout as --stream does.
    /// A directory asset is written as a new directory tree (-o DIR, or its name), which
    /// appears complete or not at all; an existing directory is refused unless --replace.
    #[arg(short, long)]
    output: Option<PathBuf>,
    /// With a directory asset: fetch and write only this file (its path as listed in the
    /// manifest, e.g. --file docs/intro.mp4); only the chunks it needs are fetched.
    /// Repeatable. The tree written holds only the files named.
    #[arg(long = "file", value_name = "PATH", conflicts_with = "stream")]
    files: Vec<String>,
    /// With a directory asset: replace an existing output directory (the new tree is
    /// swapped in atomically, then the old one deleted). Without it, an existing directory
    /// is left alone and the get fails before fetching anything.
    #[arg(long)]
    replace: bool,
    /// Write the asset to stdout in order while it downloads (e.g. `| mpv -`, `| tar x`).
    /// Only verified bytes are written; the asset also lands in the store. Refused when
    /// stdout is a terminal; a reader that closes early exits 23.
    #[arg(long, conflicts_with = "output")]
    stream: bool,
    /// Address to serve the asset to other peers from while downloading, e.g.
    /// 0.0.0.0:7002 for a port a firewall lets in (default: every interface, a free port).
    #[arg(long, value_parser = cli::addr_arg)]
    listen: Option<SocketAddr>,
    /// Do not serve the asset to other peers.
    #[arg(long, conflicts_with_all = ["listen", "seed_for"])]
    no_serve: bool,
    /// Keep serving this long after the download completes (e.g. 30s, 10m); replaces
    /// --linger.
    #[arg(long, value_parser = cli::duration_arg)]
    seed_for: Option<Duration>,
    /// After a download, go on serving the peers that still fetch from this host, for at
    /// most this long; 0s exits at once. The output is in place, the summary printed and
    /// stdout closed (a reader of --stream or of --json sees its end) before; the process
    /// exits, with the get's status, once no upload has been active for 250 ms. Without
    /// it, the last downloaders of a crowd lose their peers when the others finish and
    /// fetch the rest from the origin a second time. Ctrl-C ends it at once (exit 0).
    /// Nothing lingers when the store held the whole asset already.
    #[arg(long, default_value = "10s", value_parser = swarmcache::units::parse_duration)]
    linger: Duration,
    /// Print the summary as JSON on stdout (on stderr with --stream).
    #[arg(long)]
    json: bool,
    /// How to show progress on stderr: a bar when stderr is a terminal (auto), always a bar,
    /// one JSON object per line every second (json), or nothing.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    progress: ProgressArg,
    /// No progress and no summary line on stderr.
    #[arg(short, long)]
    quiet: bool,
    #[command(flatten)]
    swarm: SwarmArgs,
}

/// How assets are fetched and shared: the flags `get` and `gateway` share.
#[derive(clap::Args)]
struct SwarmArgs {
    /// Tracker URL, e.g. http://127.0.0.1:7070 or https://HOST:7443 (not needed when the
    /// store holds the whole asset and it is named by id); several (trackers sharing one
    /// Redis, tried in turn) as URL1,URL2 or by repeating the flag.
    #[arg(long, env = "SWARMCACHE_TRACKER", value_parser = cli::tracker_arg, action = ArgAction::Append)]
    tracker: Vec<String>,
    /// With --stream (and for each reader of a gateway): how many chunks ahead of the
    /// reader are fetched first; one that is late is also asked of a second source.
    #[arg(long, default_value_t = DEFAULT_WINDOW, value_parser = clap::value_parser!(u32).range(1..))]
    window: u32,
    /// Store (cache) directory, shared with peer_server (default: the user's cache).
    #[arg(long, visible_alias = "cache")]
    store: Option<PathBuf>,
    /// Parallel connections to peers and origin.
    #[arg(long, default_value_t = DEFAULT_WORKERS)]
    workers: usize,
    /// End a connection whose requested chunk has not fully arrived this long after its
    /// turn: the chunk goes to another source, and the source is tried again later.
    #[arg(long, default_value = "10s", value_parser = cli::duration_arg)]
    chunk_timeout: Duration,
    /// Download cap, e.g. 25MiB (per second).
    #[arg(long, value_parser = cli::size_arg)]
    max_download_rate: Option<u64>,
    /// Address other peers should connect to, when it differs from --listen (NAT).
    #[arg(long, value_parser = cli::addr_arg)]
    advertise_addr: Option<SocketAddr>,
    /// Upload cap while serving, e.g. 25MiB (per second).
    #[arg(long, value_parser = cli::size_arg)]
    max_upload_rate: Option<u64>,
    /// Token for a tracker started with --auth.
    #[arg(long, env = "SWARMCACHE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    tls: cli::TrackerTlsArgs,
    /// Bound the store, e.g. 10GiB: before downloading, least recently used assets that no
    /// running process uses are evicted until this asset fits.
    #[arg(long, env = "SWARMCACHE_CACHE_SIZE", value_parser = cli::cache_size_arg)]
    cache_size: Option<u64>,
    /// When the tracker restarted moments ago and knows no source yet (it says so while
    /// one heartbeat period has not passed), wait this long at most for one to announce,
    /// asking every second; 0s fails at once. Without that hint, no source fails at once.
    #[arg(long, default_value = "30s", value_parser = cli::duration_arg)]
    source_wait: Duration,
    /// Give up (exit 4) when no source has delivered a verified chunk for this long; until
    /// then a source that times out, refuses, resets or stalls is paused and tried again
    /// (for at most a third of this, backing off while it keeps failing), and only one that
    /// sends bad data is dropped. The error names every source, its tries and its last
    /// failure. The clock starts once the tracker has named sources (--source-wait bounds
    /// the wait before that) and restarts with each chunk. Keep it above --chunk-timeout: a
    /// chunk is only counted once it has arrived whole (under --max-download-rate it is
    /// never shorter than two chunks' time at that rate).
    #[arg(long, default_value = "60s", value_parser = cli::duration_arg)]
    stall_timeout: Duration,
    /// Slow what this host serves while its own download's round trips show a queue on its
    /// uplink (LEDBAT-like: halved down to 256 KiB/s, grown back when the queue drains; with
    /// --stream, at the floor while the player's window is short). Off by default: on
    /// kernel-capped links it also slowed the peers a crowd relies on, and the origin sent
    /// more (BENCHMARKS.md, issue 14).
    #[arg(long)]
    yield_uplink: bool,
}

#[derive(clap::Args)]
struct GatewayArgs {
    /// Address to answer HTTP on. 127.0.0.1 by default: anyone who reaches the gateway
    /// reads every asset this host may fetch, so a wider address is warned about.
    // Its own id and variable: `listen` (SWARMCACHE_PEER_CLIENT_LISTEN, a config file's
    // `listen`) is get's address for peers, which must not become an HTTP address here.
    #[arg(
        long = "listen",
        id = "gateway_listen",
        value_name = "ADDR",
        env = "SWARMCACHE_GATEWAY_LISTEN",
        default_value = "127.0.0.1:8080",
        value_parser = cli::addr_arg
    )]
    listen: SocketAddr,
    /// HTTP worker threads: clients read at once (a player holds one while it plays).
    #[arg(long, default_value_t = swarmcache::gateway::DEFAULT_WORKERS)]
    http_workers: usize,
    /// Address to serve fetched assets to other peers from (default: every interface, a
    /// free port).
    #[arg(long, value_parser = cli::addr_arg)]
    peer_listen: Option<SocketAddr>,
    /// Do not serve assets to other peers.
    #[arg(long, conflicts_with = "peer_listen")]
    no_serve: bool,
    #[command(flatten)]
    swarm: SwarmArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ProgressArg {
    Auto,
    Bar,
    Json,
    None,
}

fn run(args: Args) -> Result<u8> {
    match args.command {
        Command::Publish {
            manifest,
            tracker,
            token,
            tag,
            tls,
            origin_urls,
        } => {
            let origin_urls =
                swarmcache::origin_url::check_all(origin_urls.iter().map(|u| u.as_str()))?;
            let (manifest, key) = read_manifest(&manifest)?;
            let tracker =
                TrackerClient::with_tls(&tracker.join(","), &tls.tls())?.with_token(token);
            let answer = match &tag {
                Some(tag) => tracker.publish_tagged(&manifest, key.as_ref(), tag)?,
                None => tracker.publish_keyed(&manifest, key.as_ref())?,
            };
            for url in &origin_urls {
                tracker
                    .add_origin_url(&manifest.id(), url)
                    .with_context(|| format!("listing the origin URL {url} for {}", answer.id))?;
            }
            cli::println(&answer.id)?;
        }
        Command::Tag {
            tag,
            id,
            tracker,
            token,
            tls,
        } => {
            let answer = TrackerClient::with_tls(&tracker.join(","), &tls.tls())?
                .with_token(token)
                .tag(&tag, &id)?;
            match answer.previous {
                Some(previous) if previous != answer.id => {
                    eprintln!("peer_client: {tag} moved from {previous} to {}", answer.id)
                }
                Some(_) => eprintln!("peer_client: {tag} already points at {}", answer.id),
                None => eprintln!("peer_client: {tag} now points at {}", answer.id),
            }
        }
        Command::Tags {
            name,
            tracker,
            token,
            json,
            tls,
        } => {
            let answer = TrackerClient::with_tls(&tracker.join(","), &tls.tls())?
                .with_token(token)
                .tags(&name)?;
            if json {
                cli::println(&serde_json::to_string(&answer)?)?;
            } else {
                for tag in &answer.tags {
                    let gone = if tag.unpublished.is_some() {
                        " (unpublished)"
                    } else {
                        ""
                    };
                    cli::println(&format!("{}:{} {}{gone}", answer.name, tag.tag, tag.id))?;
                    for moved in tag.history.iter().rev() {
                        cli::println(&format!(
                            "  {} {} by {}",
                            httpdate::fmt_http_date(
                                std::time::UNIX_EPOCH + Duration::from_secs(moved.at)
                            ),
                            moved.id,
                            moved.by
                        ))?;
                    }
                }
            }
        }
        Command::Unpublish {
            id,
            tracker,
            token,
            tls,
        } => {
            let answer = TrackerClient::with_tls(&tracker.join(","), &tls.tls())?
                .with_token(token)
                .unpublish(&id)?;
            let tags = if answer.tags.is_empty() {
                String::new()
            } else {
                format!("; tags now pointing at nothing: {}", answer.tags.join(", "))
            };
            eprintln!("peer_client: unpublished {}{tags}", answer.id);
        }
        Command::Origin(OriginCommand::Add {
            id,
            url,
            tracker,
            token,
            tls,
        }) => {
            let answer = TrackerClient::with_tls(&tracker.join(","), &tls.tls())?
                .with_token(token)
                .add_origin_url(&id, &url)?;
            for url in &answer.origin_urls {
                cli::println(url)?;
            }
        }
        Command::Get(args) => return get(*args),
        Command::Gateway(args) => return gateway(*args),
        Command::Cache(args) => return cache_command(args),
    }
    Ok(EXIT_OK)
}

fn get(mut args: GetArgs) -> Result<u8> {
    let asset = match &args.asset {
        Reference::Id(id) => *id,
        Reference::Tag(tag) => {
            let Some(url) = cli::trackers(&args.swarm.tracker) else {
                anyhow::bail!(
                    "{tag} is a name: give --tracker (or SWARMCACHE_TRACKER) to resolve it"
                );
            };
            let id = TrackerClient::with_tls(&url, &args.swarm.tls.tls())?
                .with_token(args.swarm.token.clone())
                .resolve(tag)?;
            if !args.quiet {
                eprintln!("peer_client: {tag} is {id}");
            }
            id
        }
    };
    if args.output.as_deref() == Some(Path::new("-")) {
        args.output = None;
        args.stream = true;
    }
    if args.stream {
        cli::refuse_terminal_stdout()?;
    }
    // Ctrl-C and SIGTERM end the download or seeding cleanly: progress recorded, the swarm
    // told, the embedded server stopped.
    cli::on_stop_signal("peer_client", EXIT_INTERRUPTED, client::interrupt)?;
    let progress = match args.progress {
        _ if args.quiet => Progress::Off,
        ProgressArg::Auto if std::io::stderr().is_terminal() => Progress::Bar,
        ProgressArg::Auto | ProgressArg::None => Progress::Off,
        ProgressArg::Bar => Progress::Bar,
        ProgressArg::Json => Progress::Json,
    };
    let serve = (!args.no_serve).then_some(args.listen);
    let config = GetConfig {
        output: args.output,
        files: args.files,
        replace: args.replace,
        progress,
        linger: args.linger,
        ..swarm_config(args.swarm, asset, serve)
    };
    let seed = args.seed_for.is_some();
    let result = if args.stream {
        let mut stdout = stdout_file()?;
        client::stream(&config, seed, &mut stdout)
    } else {
        client::get(&config, seed)
    };
    let got = match result {
        Err(e) if client::interrupted() => {
            eprintln!("peer_client: {e:#}");
            return Ok(EXIT_INTERRUPTED);
        }
        // A player that quits mid-stream must not look like a complete delivery.
        Err(e) if args.stream && cli::is_broken_pipe(&e) => {
            eprintln!(
                "peer_client: the reader of the stream closed it early ({e:#}); progress is kept in the store"
            );
            return Ok(EXIT_READER_CLOSED);
        }
        result => result?,
    };
    if !args.quiet {
        eprintln!("peer_client: {}", got.summary.human());
    }
    if args.json {
        let json = serde_json::to_string(&got.summary)?;
        if args.stream {
            eprintln!("{json}");
        } else {
            cli::println(&json)?;
        }
    }
    // The download is done: a signal from here on ends serving, not the get.
    cli::set_stop_code(EXIT_OK);
    match (got.seeding, args.seed_for) {
        (Some(seeding), Some(duration)) => {
            if !args.quiet {
                eprintln!("peer_client: seeding for {duration:?}");
            }
            seeding.run(duration);
        }
        (Some(seeding), None) => {
            // What reads stdout has had everything; it need not wait for the peers.
            if let Err(e) = cli::close_stdout() {
                log::debug!("closing stdout before lingering: {e}");
            }
            let lingered = seeding.linger(config.linger);
            if !args.quiet && lingered.uploaded > 0 {
                let why = match lingered.left {
                    Some(client::LingerEnd::Idle) => "until peers stopped fetching",
                    Some(client::LingerEnd::Bound) => "until --linger's bound",
                    None => "until interrupted",
                };
                eprintln!(
                    "peer_client: served {} more over {:.1} s after the download, {why}",
                    swarmcache::units::format_bytes(lingered.uploaded),
                    lingered.time.as_secs_f64()
                );
            }
        }
        (None, _) => {}
    }
    Ok(EXIT_OK)
}

/// The download settings of `get` and `gateway`: the shared flags, the asset, and where
/// to serve it to peers (`Some(None)`: a free port).
fn swarm_config(swarm: SwarmArgs, asset: AssetId, serve: Option<Option<SocketAddr>>) -> GetConfig {
    // Serve on the address family the tracker is reached by, so the address the tracker
    // sees the announce come from is one this listener answers on.
    let tracker = cli::trackers(&swarm.tracker);
    let any_port = match &tracker {
        Some(url) if url.contains('[') => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
        _ => SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    GetConfig {
        workers: swarm.workers,
        chunk_timeout: swarm.chunk_timeout,
        max_download_rate: swarm.max_download_rate,
        window: swarm.window,
        serve: serve.map(|listen| listen.unwrap_or(any_port)),
        advertise: swarm.advertise_addr,
        max_upload_rate: swarm.max_upload_rate,
        cache_size: swarm.cache_size,
        token: swarm.token,
        tracker_tls: swarm.tls.tls(),
        source_wait: swarm.source_wait,
        stall_timeout: swarm.stall_timeout,
        yield_uplink: swarm.yield_uplink,
        ..GetConfig::new(
            asset,
            tracker,
            swarm.store.unwrap_or_else(cli::default_store),
        )
    }
}

fn gateway(args: GatewayArgs) -> Result<u8> {
    cli::on_stop_signal("peer_client", EXIT_INTERRUPTED, client::interrupt)?;
    let serve = (!args.no_serve).then_some(args.peer_listen);
    // The asset is set per request; the zero id is never fetched.
    let get = GetConfig {
        progress: Progress::Off,
        ..swarm_config(args.swarm, AssetId([0; 32]), serve)
    };
    let gateway = Gateway::bind(GatewayConfig {
        listen: args.listen,
        get,
        workers: args.http_workers,
    })?;
    cli::println(&format!("listening on http://{}", gateway.local_addr()))?;
    gateway.serve()?;
    Ok(if client::interrupted() {
        EXIT_INTERRUPTED
    } else {
        EXIT_OK
    })
}

/// What a stream asks its output pipe to hold: 1 MiB (the most an unprivileged process
/// may ask by default, `/proc/sys/fs/pipe-max-size`), a second of 8 Mbit/s video, where
/// the default 64 KiB holds 65 ms. The stream writes each chunk as soon as it is verified;
/// what the pipe holds is what carries the player over a moment when this process is not
/// scheduled (a player without its own buffer was starved 0.23 s once at load 26 on two
/// cores while every chunk was already here).
const STREAM_PIPE_BYTES: usize = 1 << 20;

/// Standard output as a plain file: the stream writes whole chunks, which std's line
/// buffering would only split. A pipe is grown to [`STREAM_PIPE_BYTES`] where allowed.
fn stdout_file() -> Result<std::fs::File> {
    use std::os::fd::AsFd;
    let fd = std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .context("duplicating standard output")?;
    // Not a pipe (a file), or not allowed that much: the output works as it is.
    let _ = rustix::pipe::fcntl_setpipe_size(&fd, STREAM_PIPE_BYTES);
    Ok(std::fs::File::from(fd))
}

fn cache_command(args: CacheArgs) -> Result<u8> {
    let store = Store::open(args.store.unwrap_or_else(cli::default_store))?;
    match args.command {
        CacheCommand::Ls { json: true } => {
            cli::println(&serde_json::to_string(&cache::entries(&store)?)?)?;
        }
        CacheCommand::Ls { json: false } => {
            let table = cache::table(&cache::entries(&store)?, std::time::SystemTime::now());
            cli::println(table.trim_end())?;
        }
        CacheCommand::Rm { ids } => {
            let mut failed = false;
            for id in &ids {
                match cache::remove(&store, id) {
                    Ok(gone) => cli::println(&format!("removed {} {}", gone.id, gone.name))?,
                    Err(e) => {
                        eprintln!("peer_client: error: {e:#}");
                        failed = true;
                    }
                }
            }
            return Ok(if failed { EXIT_FAILED } else { EXIT_OK });
        }
        CacheCommand::Gc { cache_size, json } => {
            let report = cache::make_room(&store, cache_size, 0, &[])?;
            if json {
                cli::println(&serde_json::to_string(&report)?)?;
            } else {
                for gone in &report.evicted {
                    cli::println(&format!("evicted {} {}", gone.id, gone.name))?;
                }
                eprintln!(
                    "peer_client: cache {}: {}",
                    store.root().display(),
                    report.human()
                );
            }
            if let Some(warning) = &report.warning {
                eprintln!("peer_client: warning: {warning}");
            }
        }
    }
    Ok(EXIT_OK)
}

/// Parses `NAME:TAG` for clap.
fn tag_arg(text: &str) -> Result<TagRef, String> {
    text.parse()
}

/// Parses an asset id or `NAME:TAG` for clap.
fn reference_arg(text: &str) -> Result<Reference, String> {
    text.parse()
}

/// The manifest to publish, and the content key of an encrypted asset (`chunkify --encrypt`).
fn read_manifest(path: &Path) -> Result<(Manifest, Option<ContentKey>)> {
    let manifest = if path == Path::new("-") {
        Manifest::read_from_keyed(cli::nonempty_stdin("no manifest to publish", "chunkify")?)
    } else {
        let file = std::fs::File::open(path)
            .with_context(|| format!("opening manifest {}", path.display()))?;
        Manifest::read_from_keyed(file)
    };
    manifest.with_context(|| format!("manifest {}", path.display()))
}

fn main() -> ExitCode {
    cli::init_logging("peer_client");
    cli::finish("peer_client", run(cli::parse("peer_client")))
}
