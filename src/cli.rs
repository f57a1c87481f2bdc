//! What the binaries share: exit codes, error reporting, and stdout that tolerates a
//! closed pipe.

use std::io::{self, Write};
use std::process::ExitCode;

/// Exit status for success.
pub const EXIT_OK: u8 = 0;
/// Exit status for a failure (what failed is on stderr).
pub const EXIT_FAILED: u8 = 1;
/// Exit status for a usage error (bad flags or arguments), as clap uses.
pub const EXIT_USAGE: u8 = 2;

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
            ExitCode::from(EXIT_FAILED)
        }
    }
}

fn has_io_kind(e: &anyhow::Error, kind: io::ErrorKind) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == kind)
    })
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    has_io_kind(e, io::ErrorKind::BrokenPipe)
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
    use std::path::PathBuf;
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("swarmcache");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".cache").join("swarmcache");
    }
    PathBuf::from("swarmcache-store")
}
