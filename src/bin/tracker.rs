//! `tracker`: the authority — catalog, swarms, HTTP/JSON API.

// The `///` docs below are the --help text, not rustdoc: `[::]:7070` is an address.
#![allow(rustdoc::broken_intra_doc_links)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};
use swarmcache::auth::{self, KeyRing};
use swarmcache::cli::{self, EXIT_OK, EXIT_USAGE};
use swarmcache::tracker::{
    DEFAULT_ANNOUNCE_RATE, DEFAULT_MAX_CONNS_PER_IP, DEFAULT_MAX_PEERS, DEFAULT_PUBLISH_RATE,
    Tracker, TrackerConfig,
};

/// The swarmcache tracker: keeps the catalog of manifests durable in --data, tracks which
/// peers hold which asset, and answers an HTTP/JSON API (try: curl http://ADDR/stats).
///
/// Prints "listening on http://ADDR" (https:// with --tls-cert) on stdout once it accepts
/// requests (port 0 picks a free port). Endpoints: GET /health, GET /assets, POST /assets (manifest TOML),
/// GET /assets/ID, POST /assets/ID/announce, GET /assets/ID/peers,
/// GET /stats (JSON: peers, seeders, origins, bytes served by peers and by origins since
/// the tracker started, P2P ratio; global and per swarm), GET /metrics (the same figures
/// for Prometheus), GET /keys (the public keys peers check tickets with), DELETE /assets/ID
/// (unpublish), GET /tags, GET /tags/NAME (its tags and their history), GET and PUT
/// /tags/NAME:TAG (resolve, move).
///
/// Open mode by default. With --auth FILE every request but /health and /keys needs a
/// token (Authorization: Bearer TOKEN) with the right permission, and each announce is
/// answered with a short-lived ticket signed by the tracker's Ed25519 key (kept in
/// DATA/keys, created on first start), which peers check before serving anything:
///   TOKEN=$(tracker token --auth auth.toml --name ci --publish --origin --fetch '*')
///   tracker --auth auth.toml --data tracker-data
///   tracker keygen --data tracker-data     # rotate the key, then restart the tracker
///
/// Tokens added (tracker token) or revoked (tracker token --revoke NAME) take effect
/// without a restart: the tracker looks at the permissions file every second and reloads
/// it when it changed, or at once on SIGHUP; a file that does not load keeps the old
/// tokens (the log says why). Tickets handed out before a revocation stay valid until they
/// expire (--ticket-ttl, plus the 30 s clock skew peers allow).
///
/// Names and tags: peer_client publish --tag ci/app:latest, peer_client tag, GET /tags/NAME
/// (kept in DATA/tags.json). DELETE /assets/ID (peer_client unpublish, the admin right)
/// unpublishes an asset; --retain 30d drops untagged assets no peer announced for 30 days.
///
/// With --tls-cert and --tls-key it serves HTTPS, so tokens and answers are encrypted:
///   tracker --tls-cert fullchain.pem --tls-key key.pem --listen 0.0.0.0:7443 --auth auth.toml
/// Clients then use --tracker https://HOST:7443 (the name the certificate is issued for).
///
/// Hostile clients are bounded: a request must arrive whole within --request-timeout, an
/// idle connection closes after --idle-timeout, one address holds at most
/// --max-conns-per-ip connections and may announce and publish at most --announce-rate
/// and --publish-rate times a second (bursts of twice that); beyond, answers are 429.
#[derive(Parser)]
#[command(version, verbatim_doc_comment, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address to listen on, e.g. 127.0.0.1:7070, 0.0.0.0:7070 or [::]:7070.
    #[arg(long, default_value = "127.0.0.1:7070", value_parser = cli::addr_arg)]
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
    /// Drop a connection whose client takes longer than this to send a request (head and
    /// body; large bodies get one more second per 256 KiB).
    #[arg(long, default_value = "10s", value_parser = cli::duration_arg)]
    request_timeout: Duration,
    /// Close a kept-alive connection idle this long between requests.
    #[arg(long, default_value = "10s", value_parser = cli::duration_arg)]
    idle_timeout: Duration,
    /// Most connections one client address (an IPv4 address, an IPv6 /64) may hold open;
    /// more are answered 429. 0: no limit.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNS_PER_IP)]
    max_conns_per_ip: usize,
    /// Most announces a second from one client address (bursts of twice that); more are
    /// answered 429. 0: no limit.
    #[arg(long, default_value_t = DEFAULT_ANNOUNCE_RATE)]
    announce_rate: u32,
    /// Most publishes (POST /assets) a second from one client address (bursts of twice
    /// that); more are answered 429. 0: no limit.
    #[arg(long, default_value_t = DEFAULT_PUBLISH_RATE)]
    publish_rate: u32,
    /// Permissions file (TOML, see `tracker token`): turns authentication and tickets on.
    #[arg(long)]
    auth: Option<PathBuf>,
    /// How long the tickets handed out with announces stay valid.
    #[arg(long, default_value = "10m", value_parser = cli::duration_arg)]
    ticket_ttl: Duration,
    /// Unpublish assets no tag points at and no peer announced for this long (e.g. 30d,
    /// 12h), checked every quarter of it (every minute at most, twice a second at least).
    /// Default: keep every asset. The time counts from the tracker's start at the earliest.
    #[arg(long, value_parser = cli::duration_arg)]
    retain: Option<Duration>,
    /// Serve HTTPS with this certificate chain (PEM, the server's certificate first, then
    /// any intermediates), e.g. Let's Encrypt's fullchain.pem. Needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM: PKCS#8, RSA or EC) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Keep the catalog, the swarms, tags, origin URLs and content keys (wrapped with
    /// --keys DIR/content-wrap.key) in this Redis (redis://HOST:PORT/DB, or
    /// redis://:PASSWORD@HOST:PORT/DB), so that every tracker started with the same serves
    /// the same; clients list them all (--tracker URL1,URL2) and fail over. Without it,
    /// swarms live in this process and the rest in --data.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Directory of the ticket-signing keys and, with --redis, of the content keys'
    /// wrapping key (default: DATA/keys). Trackers sharing a Redis are given the same
    /// keys: copy this directory to each (mode 0700).
    #[arg(long, value_name = "DIR")]
    keys: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Create the ticket-signing key, or rotate it: the new key signs, the old one still
    /// verifies tickets it signed until they expire. Restart the tracker to use it; peers
    /// fetch the new public key from GET /keys when they meet it. Prints the public keys.
    /// Also makes, once, the key that wraps content keys kept in Redis (content-wrap.key,
    /// never rotated), so that one copy of the directory serves every tracker.
    Keygen {
        /// The tracker's data directory (the keys go in DATA/keys).
        #[arg(long, default_value = "tracker-data")]
        data: PathBuf,
        /// The key directory, when the tracker is started with --keys.
        #[arg(long, value_name = "DIR")]
        keys: Option<PathBuf>,
    },
    /// Make a new token: appends its entry (name, SHA-256, permissions) to the permissions
    /// file, creating it, and prints the token itself on stdout. The file never holds the
    /// token. A running tracker accepts it within a second (or at once on SIGHUP).
    ///
    /// With --revoke NAME, removes every token of that name instead: a running tracker
    /// refuses it within a second; the tickets it was handed stay valid until they expire,
    /// which the command prints.
    Token {
        /// The permissions file to append to.
        #[arg(long)]
        auth: PathBuf,
        /// Who the token is for (shown in errors and logs).
        #[arg(long, required_unless_present = "revoke", conflicts_with = "revoke")]
        name: Option<String>,
        /// Revoke the tokens of this name (remove their entries from the file).
        #[arg(long, value_name = "NAME")]
        revoke: Option<String>,
        /// With --revoke: the running tracker's --ticket-ttl, to say how long the revoked
        /// token's tickets stay valid.
        #[arg(long, default_value = "10m", value_parser = cli::duration_arg, requires = "revoke")]
        ticket_ttl: Duration,
        /// May unpublish assets (DELETE /assets/ID, peer_client unpublish).
        #[arg(long)]
        admin: bool,
        /// With --publish: the name prefixes whose tags it may move, e.g. ci/ (repeatable;
        /// default: every name).
        #[arg(long, value_name = "PREFIX")]
        names: Vec<String>,
        /// May publish manifests.
        #[arg(long)]
        publish: bool,
        /// May announce as an origin.
        #[arg(long)]
        origin: bool,
        /// May announce its peers at an address other than the one its announces come
        /// from (an origin behind NAT or a port forward, with `--advertise-addr`).
        #[arg(long)]
        advertise: bool,
        /// May read GET /metrics (of the assets it may fetch).
        #[arg(long)]
        metrics: bool,
        /// Assets it may fetch and serve: an id, or '*' for all (repeatable).
        #[arg(long)]
        fetch: Vec<String>,
    },
}

fn run(args: Args) -> Result<u8> {
    match args.command {
        Some(Command::Keygen { data, keys }) => {
            let dir = keys.unwrap_or_else(|| KeyRing::dir(&data));
            let ring = KeyRing::rotate(&dir)?;
            // Made once, never rotated: it opens every content key kept in Redis.
            swarmcache::tracker::ensure_wrap_key(&dir)?;
            for key in ring.public_keys() {
                cli::println(&key)?;
            }
            return Ok(EXIT_OK);
        }
        Some(Command::Token {
            revoke: Some(name),
            auth,
            ticket_ttl,
            ..
        }) => {
            let removed = auth::revoke_token(&auth, &name)?;
            let lasts = auth::ticket_outlives_revocation(ticket_ttl);
            cli::println(&format!(
                "revoked {removed} token(s) named {name:?} in {}; a running tracker refuses them within {:?}                  (at once on SIGHUP); tickets already handed out stay valid at peers until they expire,                  at most {} s from now (--ticket-ttl {} s plus the {} s clock skew peers allow)",
                auth.display(),
                auth::RELOAD_POLL,
                lasts.as_secs(),
                ticket_ttl.as_secs(),
                lasts.as_secs() - ticket_ttl.as_secs(),
            ))?;
            return Ok(EXIT_OK);
        }
        Some(Command::Token {
            auth,
            name,
            publish,
            origin,
            advertise,
            metrics,
            admin,
            names,
            fetch,
            ..
        }) => {
            let name = name.expect("clap requires --name without --revoke");
            let rights = auth::Rights {
                publish,
                origin,
                advertise,
                metrics,
                admin,
                names,
                fetch,
            };
            let (token, entry) = auth::new_token(&name, &rights)?;
            auth::append_token(&auth, &entry)?;
            cli::println(&token)?;
            return Ok(EXIT_OK);
        }
        None => {}
    }
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => match swarmcache::http::tls::server_config(cert, key) {
            Ok(tls) => Some(tls),
            // A bad file is a bad flag: the usage status, before anything listens.
            Err(e) => {
                eprintln!("tracker: error: {e:#}");
                return Ok(EXIT_USAGE);
            }
        },
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let config = TrackerConfig {
        peer_timeout: args.peer_timeout,
        max_peers: args.max_peers,
        http_timeout: args.http_timeout,
        request_timeout: args.request_timeout,
        idle_timeout: args.idle_timeout,
        max_conns_per_ip: args.max_conns_per_ip,
        announce_rate: args.announce_rate,
        publish_rate: args.publish_rate,
        auth: args.auth,
        ticket_ttl: args.ticket_ttl,
        retain: args.retain,
        tls,
        redis: args.redis,
        keys: args.keys,
        ..TrackerConfig::new(args.listen, args.data)
    };
    let tracker = Tracker::bind(&config)?;
    // SIGHUP reloads the permissions file (and no longer ends the tracker).
    signal_hook::flag::register(signal_hook::consts::SIGHUP, tracker.reload_flag())
        .map_err(|e| anyhow::anyhow!("installing the SIGHUP handler: {e}"))?;
    let addr = tracker.local_addr();
    cli::println(&format!("listening on {scheme}://{addr}"))?;
    if addr.ip().is_unspecified() {
        // Scripts read the line above as is; this one tells people what to give --tracker.
        let urls: Vec<String> = cli::dial_addrs(addr)
            .iter()
            .map(|a| format!("{scheme}://{a}"))
            .collect();
        eprintln!(
            "tracker: listening on every interface; dial {}",
            urls.join(" or ")
        );
    }
    tracker.serve()?;
    Ok(EXIT_OK)
}

fn main() -> ExitCode {
    cli::init_logging("tracker");
    cli::finish("tracker", run(cli::parse("tracker")))
}
