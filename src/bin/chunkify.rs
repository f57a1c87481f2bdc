//! `chunkify`: cut a file into chunks, hash them on every core, print the manifest.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::io::BufRead;
use swarmcache::cli::{self, EXIT_FAILED, EXIT_OK};
use swarmcache::manifest::{self, Manifest};

/// Cut a file into fixed-size chunks, hash every chunk with SHA-256 on all cores, and print
/// the manifest (TOML) on stdout.
///
/// Examples:
///   chunkify big.iso > big.toml
///   chunkify big.iso | peer_client publish --tracker http://127.0.0.1:7070 -
///   tar c dir | chunkify --name dir.tar -
///   chunkify --id big.iso
///   chunkify verify big.toml copy.iso
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The file to chunk, or - for standard input.
    path: Option<PathBuf>,
    /// Chunk size, 16KiB to 64MiB (e.g. 256KiB, 1MiB, 4MiB).
    #[arg(long, default_value = "256KiB", value_parser = cli::chunk_size_arg)]
    chunk_size: u32,
    /// Asset name recorded in the manifest (default: the file's name; "stdin" for -).
    #[arg(long)]
    name: Option<String>,
    /// Print only the asset id instead of the manifest.
    #[arg(long)]
    id: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Check content against a manifest: exit 0 when it matches, else 1 and name the bad chunks.
    Verify {
        /// The manifest (TOML) file.
        manifest: PathBuf,
        /// The content to check, or - for standard input.
        path: PathBuf,
    },
}

fn open_input(path: &Path) -> Result<Box<dyn Read>> {
    if path == Path::new("-") {
        return Ok(Box::new(io::stdin().lock()));
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(file))
}

/// The content to chunk; an empty standard input is refused: it is what a failed
/// producer (`tar c missing-dir | chunkify -`) leaves, and its manifest helps nobody.
fn open_content(path: &Path) -> Result<Box<dyn Read>> {
    if path == Path::new("-") {
        let mut input = io::BufReader::new(io::stdin().lock());
        if input
            .fill_buf()
            .context("reading standard input")?
            .is_empty()
        {
            anyhow::bail!(
                "standard input is empty: nothing to chunk (did the command before | fail?)"
            );
        }
        return Ok(Box::new(input));
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Box::new(file))
}

fn run(args: Args) -> Result<u8> {
    if let Some(Command::Verify { manifest, path }) = args.command {
        let file = File::open(&manifest)
            .with_context(|| format!("opening manifest {}", manifest.display()))?;
        let manifest_value = Manifest::read_from(file)
            .with_context(|| format!("reading manifest {}", manifest.display()))?;
        let report = manifest::verify(&manifest_value, open_input(&path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        if report.ok() {
            eprintln!(
                "chunkify: {} matches {} ({} chunks)",
                path.display(),
                manifest_value.id(),
                manifest_value.chunk_count()
            );
            return Ok(EXIT_OK);
        }
        if report.size != manifest_value.size {
            eprintln!(
                "chunkify: {} is {} bytes, the manifest says {}",
                path.display(),
                report.size,
                manifest_value.size
            );
        }
        let bad: Vec<String> = report.bad_chunks.iter().map(u32::to_string).collect();
        if !bad.is_empty() {
            eprintln!(
                "chunkify: {} of {} chunks differ",
                bad.len(),
                manifest_value.chunk_count()
            );
            cli::println(&format!("bad chunks: {}", bad.join(" ")))?;
        } else {
            eprintln!("chunkify: every chunk matches but the whole-content SHA-256 differs");
        }
        return Ok(EXIT_FAILED);
    }
    let path = args.path.unwrap_or_else(|| PathBuf::from("-"));
    let name = match args.name {
        Some(n) => n,
        None if path == Path::new("-") => "stdin".to_string(),
        None => path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .with_context(|| format!("{} names no file; give --name", path.display()))?,
    };
    let manifest = manifest::chunkify(open_content(&path)?, &name, args.chunk_size)
        .with_context(|| format!("chunking {}", path.display()))?;
    if args.id {
        cli::println(&manifest.id().to_string())?;
    } else {
        use std::io::Write;
        let mut out = io::stdout().lock();
        out.write_all(manifest.to_toml().as_bytes())?;
        out.flush()?;
    }
    Ok(EXIT_OK)
}

fn main() -> ExitCode {
    cli::init_logging("chunkify");
    cli::finish("chunkify", run(cli::parse("chunkify")))
}
