//! `chunkify`: cut a file into chunks, hash them on every core, print the manifest.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use swarmcache::cli::{self, EXIT_FAILED, EXIT_OK};
use swarmcache::manifest::{self, Manifest};

/// Cut a file into fixed-size chunks, hash every chunk with SHA-256 on all cores, and print
/// the manifest (TOML, format 2) on stdout. The asset id depends on the content and its
/// chunking only, not on the name: the same bytes under two names are one asset.
///
/// Examples:
///   chunkify big.iso > big.toml
///   chunkify big.iso | peer_client publish --tracker http://127.0.0.1:7070 -
///   tar c dir | chunkify --name dir.tar -
///   chunkify --id big.iso
///   chunkify --sha256 big.iso      (also records the whole file's SHA-256)
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
    /// Asset name recorded in the manifest (default: the file's name; "stdin" for -). A
    /// label: it does not change the asset id.
    #[arg(long)]
    name: Option<String>,
    /// Also record the SHA-256 of the whole content, for comparing with a published
    /// checksum (`sha256sum`). It is one sequential hash, so chunkify runs at about one
    /// core's speed with it; it changes the asset id, and `verify` checks it.
    #[arg(long)]
    sha256: bool,
    /// Print only the asset id instead of the manifest.
    #[arg(long)]
    id: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Check content against a manifest: exit 0 when it matches, else 1 and name the bad
    /// chunks. The whole-content SHA-256 is checked too when the manifest has one.
    Verify {
        /// The manifest (TOML) file.
        manifest: PathBuf,
        /// The content to check, or - for standard input.
        path: PathBuf,
    },
}

/// Where the content comes from: a file is hashed on every core with `pread`, a pipe in order.
enum Input {
    Stdin,
    File(File),
}

fn open_input(path: &Path) -> Result<Input> {
    if path == Path::new("-") {
        return Ok(Input::Stdin);
    }
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Input::File(file))
}

impl Input {
    /// The content's hashes. An empty standard input is refused: it is what a failed
    /// producer (`tar c missing-dir | chunkify -`) leaves, and its manifest helps nobody.
    fn hash(&self, chunk_size: u32, whole: bool) -> Result<manifest::StreamHashes> {
        match self {
            Input::Stdin => {
                let input = cli::nonempty_stdin("nothing to chunk", "the command")?;
                manifest::hash_stream(input, chunk_size, whole)
            }
            Input::File(file) => manifest::hash_file(file, chunk_size, whole),
        }
    }

    fn verify(&self, manifest: &Manifest) -> Result<manifest::VerifyReport> {
        match self {
            Input::Stdin => manifest::verify(manifest, io::stdin().lock()),
            Input::File(file) => manifest::verify_file(manifest, file),
        }
    }
}

fn run(args: Args) -> Result<u8> {
    if let Some(Command::Verify { manifest, path }) = args.command {
        let file = File::open(&manifest)
            .with_context(|| format!("opening manifest {}", manifest.display()))?;
        let manifest_value = Manifest::read_from(file)
            .with_context(|| format!("reading manifest {}", manifest.display()))?;
        let report = open_input(&path)?
            .verify(&manifest_value)
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
        if !report.size_matches {
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
        } else if report.whole_matches == Some(false) {
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
    manifest::check_name(&name).map_err(anyhow::Error::msg)?;
    let manifest = open_input(&path)?
        .hash(args.chunk_size, args.sha256)
        .and_then(|hashes| hashes.into_manifest(&name, args.chunk_size))
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
