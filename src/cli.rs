//! What the binaries share: exit codes and their mapping from typed failures, error
//! reporting, stdout that tolerates a closed pipe, flag value parsers, and the one parse
//! step that adds `SWARMCACHE_*` variables, the config file, completions and man pages to
//! every clap command.

use std::io::{self, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

use crate::failure::Failure;

pub mod config;

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status for a failure (what failed is on stderr).
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error (bad flags or arguments), as clap uses.
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the tracker is unreachable, is not a tracker, or refuses us.
pub const EXIT_TRACKER: u8 = 3;
/// Exit status when no source (peer or origin) could deliver the asset, or none delivered
/// a chunk for the stall timeout.
pub const EXIT_NO_SOURCE: u8 = 4;
/// Exit status when the local disk or permissions stopped the command.
pub const EXIT_LOCAL: u8 = 5;
/// Exit status when the reader of `--stream` (or `-o -`) closed the pipe early, as curl's 23.
pub const EXIT_READER_CLOSED: u8 = 23;
/// Exit status after Ctrl-C or SIGTERM, as shells report a SIGINT.
pub const EXIT_INTERRUPTED: u8 = 130;

/// The exit statuses, as every `--help` and the README list them.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    success
  1    failure (the reason is on stderr)
  2    usage error (bad flag, argument, variable or config file; a token refused
       for plain http:// to another host)
  3    tracker unreachable, not a tracker, failing TLS checks, or refusing (401, 403,
       429, 5xx)
  4    no source (peer or origin) could deliver the asset, or none delivered
       for --stall-timeout
  5    local disk full, read-only or permission denied
  23   the reader of --stream or -o - closed early
  130  interrupted (Ctrl-C, SIGTERM)";

/// Turns a command's result into an exit code, printing the error chain on stderr.
/// A broken pipe on stdout (`chunkify big.iso | head`) is not a failure.
pub fn finish(program: &str, result: anyhow::Result<u8>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) if is_broken_pipe(&e) => ExitCode::from(EXIT_OK),
        Err(e) => {
            let hint = if has_io_kind(&e, io::ErrorKind::StorageFull) {
                "; the disk is full: free some space (peer_client cache gc) and run the same command again"
            } else {
                ""
            };
            eprintln!("{program}: error: {e:#}{hint}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit status for a failed command: its tagged [`Failure`], else a local disk or
/// permission error anywhere in its chain, else [`EXIT_FAILED`].
pub fn exit_code(e: &anyhow::Error) -> u8 {
    use io::ErrorKind::{
        FileTooLarge, PermissionDenied, QuotaExceeded, ReadOnlyFilesystem, StorageFull,
    };
    match Failure::of(e) {
        Some(Failure::TrackerUnreachable | Failure::TrackerRefused) => EXIT_TRACKER,
        Some(Failure::NoSource) => EXIT_NO_SOURCE,
        Some(Failure::Local) => EXIT_LOCAL,
        Some(Failure::Usage) => EXIT_USAGE,
        None if [
            StorageFull,
            PermissionDenied,
            ReadOnlyFilesystem,
            QuotaExceeded,
            FileTooLarge,
        ]
        .into_iter()
        .any(|kind| has_io_kind(e, kind)) =>
        {
            EXIT_LOCAL
        }
        None => EXIT_FAILED,
    }
}

fn has_io_kind(e: &anyhow::Error, kind: io::ErrorKind) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

/// Whether `e` is (caused by) a write to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    has_io_kind(e, io::ErrorKind::BrokenPipe)
}

/// Refuses to write an asset to a terminal, as curl does: binary bytes garble it.
pub fn refuse_terminal_stdout() -> anyhow::Result<()> {
    use std::io::IsTerminal;
    if io::stdout().is_terminal() {
        anyhow::bail!(
            "would write binary to a terminal; redirect or pipe it (--stream > FILE, --stream | mpv -)"
        );
    }
    Ok(())
}

/// Sends the library's `log` records to stderr as `PROGRAM: message`, the way the
/// binaries have always printed: info and above by default, `RUST_LOG=swarmcache=debug`
/// for more (debug lines also name their module), `SWARMCACHE_LOG_TIMESTAMPS=1` to
/// prefix each line with the time. Safe to call more than once (later calls do nothing).
pub fn init_logging(program: &'static str) {
    use std::io::Write as _;
    let stamps =
        std::env::var_os("SWARMCACHE_LOG_TIMESTAMPS").is_some_and(|v| v != "0" && !v.is_empty());
    let _ = env_logger::Builder::new()
        .filter_level(log::LevelFilter::Warn)
        .filter_module("swarmcache", log::LevelFilter::Info)
        .parse_env(env_logger::Env::default())
        .format(move |f, record| {
            if stamps {
                write!(f, "{} ", f.timestamp_millis())?;
            }
            write!(f, "{program}: ")?;
            match record.level() {
                log::Level::Error | log::Level::Warn | log::Level::Info => {}
                level => write!(f, "{} {}: ", level.as_str().to_lowercase(), record.target())?,
            }
            writeln!(f, "{}", record.args())
        })
        .try_init();
}

/// How long a command may take to stop cleanly after Ctrl-C or SIGTERM (record progress,
/// leave the swarm, close its server) before it exits anyway. Issue 11 promises an exit
/// within 2 s; a thread blocked in the kernel (a write to a pipe nobody reads, a connect to
/// a host that drops packets) never looks at a flag, so only an exit can keep that promise.
/// Progress is checkpointed every second, so the forced exit loses at most that.
pub const STOP_GRACE: std::time::Duration = std::time::Duration::from_millis(1500);

/// The status a process exits with when it is still busy [`STOP_GRACE`] after a stop
/// signal: set by [`on_stop_signal`], changed by [`set_stop_code`].
static STOP_CODE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Runs `stop` on Ctrl-C or SIGTERM (once per signal), and exits the process with
/// `code` (or what [`set_stop_code`] set since) if it is still running [`STOP_GRACE`]
/// after the first signal.
pub fn on_stop_signal(
    program: &'static str,
    code: u8,
    stop: impl Fn() + Send + 'static,
) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    STOP_CODE.store(code, Ordering::SeqCst);
    let armed = AtomicBool::new(false);
    ctrlc::set_handler(move || {
        stop();
        if !armed.swap(true, Ordering::SeqCst) {
            std::thread::spawn(move || {
                std::thread::sleep(STOP_GRACE);
                eprintln!(
                    "{program}: still busy {STOP_GRACE:?} after the signal (blocked on a reader or \
                     a peer); exiting now"
                );
                std::process::exit(i32::from(STOP_CODE.load(Ordering::SeqCst)));
            });
        }
    })
    .map_err(|e| anyhow::anyhow!("installing the Ctrl-C/SIGTERM handler: {e}"))
}

/// From now on a stop signal that has to force the exit exits with `code`: a `get` whose
/// download is done and which only serves on exits 0, whatever a signal interrupts.
pub fn set_stop_code(code: u8) {
    STOP_CODE.store(code, std::sync::atomic::Ordering::SeqCst);
}

/// Points standard output at `/dev/null`, so that whoever reads it (a pipe into `jq`, a
/// player reading `--stream`) sees its end while the process goes on with other work
/// (a `get` serving its peers after the download). What is written to it later is lost.
pub fn close_stdout() -> io::Result<()> {
    io::stdout().lock().flush()?;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    rustix::stdio::dup2_stdout(&null).map_err(io::Error::from)
}

/// Writes `text` and a newline to stdout and flushes, so scripts see each line at once.
pub fn println(text: &str) -> io::Result<()> {
    let mut out = io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Parses a rate or size flag (`1MiB`, `25MiB`, `65536`) for clap; zero is refused, since
/// a zero rate would stall for ever.
pub fn size_arg(text: &str) -> Result<u64, String> {
    match crate::units::parse_size(text)? {
        0 => Err(format!(
            "{text} is zero; give a positive size such as 25MiB"
        )),
        n => Ok(n),
    }
}

/// Parses a cache size limit (`10GiB`) for clap; zero is allowed and keeps only what is in use.
pub fn cache_size_arg(text: &str) -> Result<u64, String> {
    crate::units::parse_size(text)
}

/// Parses a duration flag (`500ms`, `10s`, `2m`) for clap; zero is refused.
pub fn duration_arg(text: &str) -> Result<std::time::Duration, String> {
    match crate::units::parse_duration(text)? {
        d if d.is_zero() => Err(format!(
            "{text} is zero; give a positive duration such as 500ms or 10s"
        )),
        d => Ok(d),
    }
}

/// Parses a chunk size flag for clap, checking the manifest's bounds.
pub fn chunk_size_arg(text: &str) -> Result<u32, String> {
    let size = crate::units::parse_size(text)?;
    let min = crate::manifest::MIN_CHUNK_SIZE as u64;
    let max = crate::manifest::MAX_CHUNK_SIZE as u64;
    if !(min..=max).contains(&size) {
        return Err(format!("chunk size {text} is outside 16KiB..=64MiB"));
    }
    Ok(size as u32)
}

/// The default store: `$XDG_CACHE_HOME/swarmcache`, else `~/.cache/swarmcache`, else
/// `./swarmcache-store`.
pub fn default_store() -> std::path::PathBuf {
    xdg_home("XDG_CACHE_HOME", ".cache")
        .map(|base| base.join("swarmcache"))
        .unwrap_or_else(|| "swarmcache-store".into())
}

/// An XDG base directory: `$VAR` when set and not empty, else `$HOME/DOT_DIR`; none
/// without either.
fn xdg_home(var: &str, dot_dir: &str) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    std::env::var_os(var)
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|d| !d.is_empty())
                .map(|h| PathBuf::from(h).join(dot_dir))
        })
}

/// Standard input, refused when it is empty: that is what a failed producer before the
/// `|` leaves, and nothing made of it helps anybody. `nothing` says what is missing
/// ("nothing to chunk", "no manifest to publish"), `producer` what probably failed.
pub fn nonempty_stdin(
    nothing: &str,
    producer: &str,
) -> anyhow::Result<io::BufReader<io::StdinLock<'static>>> {
    use std::io::BufRead;
    let mut input = io::BufReader::new(io::stdin().lock());
    if input
        .fill_buf()
        .map_err(|e| anyhow::Error::new(e).context("reading standard input"))?
        .is_empty()
    {
        anyhow::bail!("standard input is empty: {nothing} (did {producer} before | fail?)");
    }
    Ok(input)
}

/// Parses a socket address for clap: `127.0.0.1:7001`, `[::1]:7001`, or a host name such
/// as `localhost:7070` (resolved; its first IPv4 address is preferred). An address
/// without a port says to add one.
pub fn addr_arg(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text.trim_start_matches('[').trim_end_matches(']');
    if bare.parse::<std::net::IpAddr>().is_ok() || !text.contains(':') {
        let example = if bare.contains(':') {
            format!("[{bare}]:7001")
        } else {
            format!("{bare}:7001")
        };
        return Err(format!("{text} has no port; add :PORT, e.g. {example}"));
    }
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|e| format!("{text} is not HOST:PORT: {e}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("{text} resolves to no address"))
}

/// Parses a tracker URL for clap: `http://HOST:PORT`, or several separated by commas
/// (trackers sharing one Redis, tried in turn). A bare `HOST:PORT` suggests the `http://` form.
pub fn tracker_arg(text: &str) -> Result<String, String> {
    if let Some(bare) = text
        .split(',')
        .find(|t| !t.contains("://") && addr_arg(t.trim()).is_ok())
    {
        let text = bare.trim();
        return Err(format!(
            "{text} is an address, not a URL; did you mean http://{text}?"
        ));
    }
    crate::tracker_client::check_urls(text)
        .map(|bases| bases.join(","))
        .map_err(|e| format!("{e:#}"))
}

/// The tracker URLs of a `--tracker` flag given several times (each maybe a comma list,
/// checked by [`tracker_arg`]) as the one comma list the clients take; `None` when absent.
pub fn trackers(given: &[String]) -> Option<String> {
    (!given.is_empty()).then(|| given.join(","))
}

/// The flags of every command that talks to a tracker about TLS (flattened into each).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TrackerTlsArgs {
    /// CA certificate(s) (PEM) to verify an https:// tracker (and a get's https:// origin
    /// URLs) with, instead of the system's trusted CAs: the CA that signed a tracker's
    /// self-made certificate. One file may hold several CAs.
    #[arg(long, value_name = "FILE")]
    pub ca_cert: Option<std::path::PathBuf>,
    /// Send the token over plain http:// to a tracker on another host, where anyone on
    /// the network path can read it. Without it that is refused; prefer an https:// tracker.
    #[arg(long)]
    pub insecure_http: bool,
}

impl TrackerTlsArgs {
    /// The library's form.
    pub fn tls(&self) -> crate::tracker_client::TrackerTls {
        crate::tracker_client::TrackerTls {
            ca_cert: self.ca_cert.clone(),
            insecure_http: self.insecure_http,
        }
    }
}

/// Parses an asset id (64 hex digits) for clap.
pub fn asset_id_arg(text: &str) -> Result<crate::manifest::AssetId, String> {
    crate::manifest::parse_asset_id(text).map_err(|e| format!("{e:#}"))
}

/// The addresses to dial a server listening on `addr` by: itself, or for a wildcard
/// (`0.0.0.0`, `[::]`) the loopback address and the address of the interface the default
/// route leaves by (found by connecting a UDP socket, which sends nothing).
pub fn dial_addrs(addr: SocketAddr) -> Vec<SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, UdpSocket};
    if !addr.ip().is_unspecified() {
        return vec![addr];
    }
    let (loopback, any, probe): (IpAddr, IpAddr, SocketAddr) = if addr.is_ipv4() {
        (
            Ipv4Addr::LOCALHOST.into(),
            Ipv4Addr::UNSPECIFIED.into(),
            // TEST-NET-1 (RFC 5737): routed by the default route, never answered.
            SocketAddr::from(([192, 0, 2, 1], 9)),
        )
    } else {
        (
            Ipv6Addr::LOCALHOST.into(),
            Ipv6Addr::UNSPECIFIED.into(),
            // The documentation prefix (RFC 3849).
            SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1), 9)),
        )
    };
    let mut out = Vec::new();
    if let Ok(ip) = UdpSocket::bind(SocketAddr::new(any, 0))
        .and_then(|s| s.connect(probe).and_then(|()| s.local_addr()))
        .map(|a| a.ip())
        && !ip.is_loopback()
        && !ip.is_unspecified()
    {
        out.push(SocketAddr::new(ip, addr.port()));
    }
    out.push(SocketAddr::new(loopback, addr.port()));
    out
}

/// Long flags whose meaning differs between programs: their variable carries the program's
/// name (`SWARMCACHE_TRACKER_LISTEN`, `SWARMCACHE_PEER_SERVER_LISTEN`), so one exported for
/// one program does not move another.
const PER_PROGRAM_FLAGS: [&str; 4] = ["listen", "advertise-addr", "metrics", "name"];

/// Parses the command line of `A` the way every binary does: each flag also read from its
/// `SWARMCACHE_*` variable, then from the config file ([`config`]); `--version` on every
/// subcommand; the exit statuses in `--help`; `--completions SHELL` and `--man` print a
/// shell completion script or the man page and exit. Usage errors exit 2.
pub fn parse<A: clap::Parser>(program: &'static str) -> A {
    let file = match config::Config::load() {
        Ok(file) => file,
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            std::process::exit(EXIT_USAGE.into());
        }
    };
    let mut command = command::<A>(program, &file);
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Some(code) = generate(&mut command, program, &args) {
        std::process::exit(code.into());
    }
    let matches = command.get_matches_from(args);
    A::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The clap command of `A` with variables, config-file defaults, help text and the
/// completion and man flags added (what [`parse`] parses with).
pub fn command<A: clap::CommandFactory>(
    program: &'static str,
    file: &config::Config,
) -> clap::Command {
    let command = A::command()
        .name(program)
        .bin_name(program)
        .propagate_version(true)
        .arg(
            clap::Arg::new("completions")
                .long("completions")
                .value_name("SHELL")
                .value_parser(clap::value_parser!(clap_complete::Shell))
                .exclusive(true)
                .hide_short_help(true)
                .help("Print a completion script for SHELL (bash, zsh, fish, elvish, powershell) and exit"),
        )
        .arg(
            clap::Arg::new("man")
                .long("man")
                .action(clap::ArgAction::SetTrue)
                .exclusive(true)
                .hide_short_help(true)
                .help("Print the man page (roff) and exit"),
        );
    let prefix = program.to_uppercase();
    with_env_and_defaults(command, &prefix, file)
}

/// Adds a `SWARMCACHE_*` variable to every flag of `command` and its subcommands that has
/// none, and the config file's values as defaults of the flags they name.
fn with_env_and_defaults(
    mut command: clap::Command,
    prefix: &str,
    file: &config::Config,
) -> clap::Command {
    command = command.after_help(format!("{EXIT_STATUS_HELP}\n\n{}", config::HELP));
    let ids: Vec<(String, String)> = command
        .get_arguments()
        .filter(|a| a.get_env().is_none())
        .filter_map(|a| Some((a.get_id().to_string(), a.get_long()?.to_string())))
        .filter(|(id, _)| !["help", "version", "completions", "man"].contains(&id.as_str()))
        .collect();
    for (id, long) in ids {
        let flag = long.to_uppercase().replace('-', "_");
        let name = if PER_PROGRAM_FLAGS.contains(&long.as_str()) {
            format!("SWARMCACHE_{prefix}_{flag}")
        } else {
            format!("SWARMCACHE_{flag}")
        };
        command = command.mut_arg(id, |a| {
            // A switch from a variable takes what shells write: 1/0, yes/no, true/false.
            let switch = matches!(a.get_action(), clap::ArgAction::SetTrue);
            let a = a.env(name);
            if switch {
                a.value_parser(clap::builder::FalseyValueParser::new())
            } else {
                a
            }
        });
    }
    let present: Vec<String> = command
        .get_arguments()
        .map(|a| a.get_id().to_string())
        .collect();
    for (id, value) in file.values() {
        if present.iter().any(|p| p == id) {
            command = command.mut_arg(id, |a| a.default_value(value.clone()).required(false));
        }
    }
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |c| with_env_and_defaults(c, prefix, file));
    }
    command
}

/// Handles `PROGRAM --completions SHELL` and `PROGRAM --man`; the exit status when one was
/// asked for.
fn generate(command: &mut clap::Command, program: &str, args: &[std::ffi::OsString]) -> Option<u8> {
    let asked = args.get(1)?.to_str()?;
    let mut out = io::stdout().lock();
    let written = match (asked, args.get(2).and_then(|a| a.to_str())) {
        ("--man", None) => {
            command.build();
            clap_mangen::Man::new(command.clone()).render(&mut out)
        }
        ("--completions", Some(shell)) => {
            let shell: clap_complete::Shell = match shell.parse() {
                Ok(shell) => shell,
                Err(_) => return None,
            };
            clap_complete::generate(shell, command, program, &mut out);
            Ok(())
        }
        _ => return None,
    };
    Some(match written.and_then(|()| out.flush()) {
        Ok(()) => EXIT_OK,
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => EXIT_OK,
        Err(e) => {
            eprintln!("{program}: error: writing to stdout: {e}");
            EXIT_FAILED
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_listener_is_dialled_at_loopback_and_the_routed_address() {
        let any: SocketAddr = "0.0.0.0:7070".parse().unwrap();
        let dial = dial_addrs(any);
        assert!(
            dial.contains(&"127.0.0.1:7070".parse().unwrap()),
            "{dial:?}"
        );
        assert!(
            dial.iter()
                .all(|a| !a.ip().is_unspecified() && a.port() == 7070)
        );
        let one: SocketAddr = "10.1.2.3:7070".parse().unwrap();
        assert_eq!(dial_addrs(one), [one]);
    }

    #[test]
    fn addresses_need_a_port_and_host_names_resolve() {
        assert!(addr_arg("127.0.0.1").unwrap_err().contains("add :PORT"));
        assert!(addr_arg("[::1]").unwrap_err().contains("[::1]:7001"));
        assert!(addr_arg("localhost").unwrap_err().contains("add :PORT"));
        assert_eq!(addr_arg("localhost:7070").unwrap().port(), 7070);
        assert!(
            tracker_arg("127.0.0.1:7070")
                .unwrap_err()
                .contains("http://127.0.0.1:7070")
        );
        assert_eq!(tracker_arg("http://t:7070/").unwrap(), "http://t:7070");
    }

    #[test]
    fn typed_failures_and_local_io_errors_get_their_exit_codes() {
        use anyhow::Context;
        let tagged = Err::<(), _>(Failure::NoSource.error("none"))
            .context("getting x")
            .unwrap_err();
        assert_eq!(exit_code(&tagged), EXIT_NO_SOURCE);
        let full = anyhow::Error::new(io::Error::from(io::ErrorKind::StorageFull));
        assert_eq!(exit_code(&full.context("writing chunk 3")), EXIT_LOCAL);
        let missing = anyhow::Error::new(io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(exit_code(&missing), EXIT_FAILED);
        let refused = Failure::TrackerRefused.error("403");
        assert_eq!(exit_code(&refused), EXIT_TRACKER);
    }
}
