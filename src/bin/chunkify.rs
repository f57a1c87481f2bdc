//! `chunkify`: cut a file into chunks, hash them on every core, print the manifest.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use swarmcache::cli::{self, EXIT_FAILED, EXIT_OK};
use swarmcache::crypt::{ContentKey, Encrypting};
use swarmcache::fsutil;
use swarmcache::manifest::{self, Manifest};

/// Cut a file into fixed-size chunks, hash every chunk with SHA-256 on all cores, and print
/// the manifest (TOML, format 2) on stdout. The asset id depends on the content and its
/// chunking only, not on the name: the same bytes under two names are one asset.
///
/// Examples:
///   chunkify big.iso > big.toml
///   chunkify big.iso | peer_client publish --tracker http://127.0.0.1:7070 -
///   chunkify site/ > site.toml     (a directory asset: its files listed, no tar needed)
///   tar c dir | chunkify --name dir.tar -
///   chunkify --id big.iso
///   chunkify --sha256 big.iso      (also records the whole file's SHA-256)
///   chunkify verify big.toml copy.iso
///   chunkify --encrypt big.iso --out big.iso.enc | peer_client publish --tracker http://127.0.0.1:7070 -
///                                  (then: peer_server --seed big.iso.enc …)
#[derive(Parser)]
#[command(version, args_conflicts_with_subcommands = true, verbatim_doc_comment)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// The file to chunk, a directory (a directory asset: its regular files in bytewise
    /// path order, with their sizes and permission bits; symbolic links are refused), or -
    /// for standard input.
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
    #[arg(long, conflicts_with = "encrypt")]
    id: bool,
    /// Encrypt the content with a new random key (AES-128-CTR, never derived from the
    /// content) into the file --out names, and chunk the ciphertext: the manifest and the
    /// asset id describe the ciphertext, and the manifest printed carries the key in its
    /// `key` field. Pipe it to `peer_client publish`, which hands the key to the tracker;
    /// do not keep it. Seed the --out file (peer_server --seed) without --encrypt.
    #[arg(long, requires = "out")]
    encrypt: bool,
    /// With --encrypt: where the ciphertext goes (replaced atomically once complete and on disk).
    #[arg(long, value_name = "CIPHERTEXT", requires = "encrypt")]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Check content against a manifest: exit 0 when it matches, else 1 and name the bad
    /// chunks. The whole-content SHA-256 is checked too when the manifest has one. A
    /// directory is checked against a directory asset's file list (paths, sizes, modes),
    /// then its bytes.
    Verify {
        /// The manifest (TOML) file.
        manifest: PathBuf,
        /// The content to check (a file or a directory), or - for standard input.
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
        let report = if path.is_dir() {
            manifest::tree::verify_dir(&manifest_value, &path)?
        } else {
            open_input(&path)?
                .verify(&manifest_value)
                .with_context(|| format!("reading {}", path.display()))?
        };
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
    if path != Path::new("-") && path.is_dir() {
        if args.encrypt {
            anyhow::bail!(
                "--encrypt takes a file, and {} is a directory; encrypt a tar of it (tar c DIR > DIR.tar)",
                path.display()
            );
        }
        let manifest = manifest::tree::chunkify_dir(&path, &name, args.chunk_size, args.sha256)
            .with_context(|| format!("chunking directory {}", path.display()))?;
        return print_manifest(&manifest, args.id);
    }
    if let Some(out) = &args.out {
        let key = ContentKey::generate()?;
        let manifest = encrypt_to(&path, out, &key, &name, args.chunk_size, args.sha256)
            .with_context(|| format!("encrypting {} into {}", path.display(), out.display()))?;
        use std::io::Write;
        let mut stdout = io::stdout().lock();
        stdout.write_all(manifest.to_toml_keyed(Some(&key)).as_bytes())?;
        stdout.flush()?;
        return Ok(EXIT_OK);
    }
    let manifest = open_input(&path)?
        .hash(args.chunk_size, args.sha256)
        .and_then(|hashes| hashes.into_manifest(&name, args.chunk_size))
        .with_context(|| format!("chunking {}", path.display()))?;
    print_manifest(&manifest, args.id)
}

/// Prints the manifest's TOML, or with `id` its asset id only.
fn print_manifest(manifest: &Manifest, id: bool) -> Result<u8> {
    if id {
        cli::println(&manifest.id().to_string())?;
    } else {
        use std::io::Write;
        let mut out = io::stdout().lock();
        out.write_all(manifest.to_toml().as_bytes())?;
        out.flush()?;
    }
    Ok(EXIT_OK)
}

/// Encrypts `path` (or stdin) with `key` into `out` and returns the manifest of the
/// ciphertext. The ciphertext is written under a temporary name beside `out`, fsynced,
/// hashed, and renamed into place, so a crash leaves `out` as it was, never half written.
fn encrypt_to(
    path: &Path,
    out: &Path,
    key: &ContentKey,
    name: &str,
    chunk_size: u32,
    whole: bool,
) -> Result<Manifest> {
    let dir = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = out
        .file_name()
        .with_context(|| format!("--out {} names no file", out.display()))?;
    let tmp = dir.join(format!(
        ".{}.chunkify-{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> Result<Manifest> {
        // Read back to be hashed: opened for both.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        let mut sealed = Encrypting::new(io::BufWriter::new(file), *key, chunk_size);
        let copied = match open_input(path)? {
            Input::Stdin => io::copy(
                &mut cli::nonempty_stdin("nothing to chunk", "the command")?,
                &mut sealed,
            ),
            Input::File(mut file) => io::copy(&mut file, &mut sealed),
        };
        copied.with_context(|| format!("reading {}", path.display()))?;
        let file = sealed
            .into_inner()
            .and_then(|w| w.into_inner().map_err(io::IntoInnerError::into_error))
            .with_context(|| format!("writing {}", tmp.display()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", tmp.display()))?;
        let manifest = manifest::hash_file(&file, chunk_size, whole)
            .and_then(|hashes| hashes.into_manifest(name, chunk_size))?;
        std::fs::rename(&tmp, out)
            .with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        fsutil::sync_dir(&dir).with_context(|| format!("syncing {}", dir.display()))?;
        Ok(manifest)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn main() -> ExitCode {
    cli::init_logging("chunkify");
    cli::finish("chunkify", run(cli::parse("chunkify")))
}
