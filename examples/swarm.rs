//! A local swarm on built-in defaults, run with the real binaries: a `tracker`, an origin
//! `peer_server` whose upload is capped at 20 MiB/s, and four `peer_client get`s that
//! start together on a 64 MiB file (its id computed by `chunkify`). The clients serve each
//! other while they download, and the tracker splits the origin's work between them, so
//! the origin sends the file about once instead of four times. Everything runs on
//! 127.0.0.1, with ports chosen by the system, in a temporary directory removed at the end.
//!
//!     cargo run --release --example swarm
//!
//! It first runs `cargo build --bins` in its own profile, so the binaries the README uses
//! next are in `target/release/` when it is done.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};

const FILE_SIZE: usize = 64 << 20;
const CLIENTS: usize = 4;
const ORIGIN_RATE: &str = "20MiB";

/// The binaries the demo and the README's commands use.
const BINARIES: [&str; 4] = ["tracker", "peer_server", "peer_client", "chunkify"];

fn main() -> Result<()> {
    let exe = std::env::current_exe().context("locating this example")?;
    let bins = bins_dir(&exe)?;
    build_binaries()?;
    for name in BINARIES {
        if !bins.join(name).is_file() {
            bail!("{} is missing after the build", bins.join(name).display());
        }
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let d = dir.path();
    let file = d.join("demo.bin");
    std::fs::write(&file, pseudo_random(FILE_SIZE)).context("writing the demo file")?;

    let mut children = Children(Vec::new());
    let (_, url) = children.start(
        &bins,
        d,
        "tracker",
        &["--listen", "127.0.0.1:0", "--data", "tracker-data"],
        "listening on ",
    )?;
    println!("tracker   {url}");
    let (_, origin_addr) = children.start(
        &bins,
        d,
        "peer_server",
        &[
            "--origin",
            "--listen",
            "127.0.0.1:0",
            "--store",
            "origin",
            "--seed",
            "demo.bin",
            "--tracker",
            &url,
            "--max-upload-rate",
            ORIGIN_RATE,
        ],
        "listening on ",
    )?;
    let id = output(
        Command::new(bins.join("chunkify"))
            .args(["--id", "demo.bin"])
            .current_dir(d),
    )?;
    println!("origin    {origin_addr}, upload capped at {ORIGIN_RATE}/s");
    println!("asset     {id} (64.00 MiB)");

    // Four clients at once; each keeps serving (--seed-for) until all are done.
    let started = Instant::now();
    let mut clients = Vec::new();
    for n in 1..=CLIENTS {
        let out = format!("copy-{n}.bin");
        let store = format!("client-{n}");
        let args = [
            "get",
            &id,
            "--tracker",
            &url,
            "-o",
            &out,
            "--store",
            &store,
            "--json",
            "--progress",
            "none",
            "--seed-for",
            "10m",
            "--listen",
            "127.0.0.1:0",
        ];
        let child = Command::new(bins.join("peer_client"))
            .args(args)
            .current_dir(d)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting peer_client")?;
        clients.push(children.push(child));
    }
    let mut from_origin = 0;
    for (n, &index) in clients.iter().enumerate() {
        let child = &mut children.0[index];
        let mut summary = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped"))
            .read_line(&mut summary)
            .context("reading a client's summary")?;
        let mut human = String::new();
        BufReader::new(child.stderr.as_mut().expect("piped"))
            .read_line(&mut human)
            .context("reading a client's summary line")?;
        let summary: serde_json::Value = serde_json::from_str(&summary)
            .with_context(|| format!("client {} failed: {human}", n + 1))?;
        from_origin += summary["from_origin"].as_u64().unwrap_or(0);
        println!(
            "client {}  {}",
            n + 1,
            human.trim().trim_start_matches("peer_client: ")
        );
    }
    let wall = started.elapsed().as_secs_f64();
    let origin_only = (CLIENTS * FILE_SIZE) as f64 / (20 << 20) as f64;
    println!(
        "all {CLIENTS} done in {wall:.1} s; the origin sent {:.2} × the file (alone it would have sent {CLIENTS} × in {origin_only:.1} s)",
        from_origin as f64 / FILE_SIZE as f64
    );
    println!("the binaries are in {}", bins.display());
    Ok(())
}

/// Where cargo puts the binaries of the profile an example was built in: an example runs
/// from `target/PROFILE/examples/NAME` (its test build from `…/examples/NAME-HASH`), the
/// binaries sit in `target/PROFILE/`.
fn bins_dir(exe: &Path) -> Result<PathBuf> {
    let examples = exe.parent().context("the example has no directory")?;
    if examples.file_name().is_none_or(|n| n != "examples") {
        bail!(
            "{} is not under a cargo examples directory; run it with cargo run --example swarm",
            exe.display()
        );
    }
    Ok(examples
        .parent()
        .context("examples has no parent")?
        .to_path_buf())
}

/// The cargo that runs us (cargo sets `CARGO`) builds the binaries in our own profile.
fn build_binaries() -> Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(build_args(cfg!(debug_assertions)));
    let status = build.status().context("running cargo build --bins")?;
    if !status.success() {
        bail!("cargo build --bins failed: {status}");
    }
    Ok(())
}

/// The arguments of the build: release unless this example is a debug build.
fn build_args(debug: bool) -> Vec<&'static str> {
    let mut args = vec!["build", "--bins", "--quiet"];
    if !debug {
        args.push("--release");
    }
    args
}

/// The children of the demo, stopped (SIGTERM, so they leave their swarms) on drop.
struct Children(Vec<Child>);

impl Children {
    fn push(&mut self, child: Child) -> usize {
        self.0.push(child);
        self.0.len() - 1
    }

    /// Starts `bins/name args` in `dir` and waits for its stdout line starting `prefix`.
    fn start(
        &mut self,
        bins: &Path,
        dir: &Path,
        name: &str,
        args: &[&str],
        prefix: &str,
    ) -> Result<(usize, String)> {
        let mut child = Command::new(bins.join(name))
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        let stdout = child.stdout.take().expect("piped");
        let index = self.push(child);
        let mut lines = BufReader::new(stdout).lines();
        let found = loop {
            match lines.next() {
                Some(line) => {
                    let line = line.with_context(|| format!("reading {name}'s output"))?;
                    if let Some(rest) = line.strip_prefix(prefix) {
                        break rest.trim_start_matches("http://").to_string();
                    }
                }
                None => bail!("{name} exited before printing {prefix:?}"),
            }
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let found = if name == "tracker" {
            format!("http://{found}")
        } else {
            found
        };
        Ok((index, found))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in self.0.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// Runs a command to completion and returns its trimmed stdout.
fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().context("running a command")?;
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Incompressible demo content without a random-number crate (xorshift).
fn pseudo_random(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_binaries_are_looked_for_beside_the_examples_directory() {
        let exe = Path::new("/w/target/release/examples/swarm");
        assert_eq!(bins_dir(exe).unwrap(), Path::new("/w/target/release"));
        let test_build = Path::new("/w/target/debug/examples/swarm-0123abcd");
        assert_eq!(bins_dir(test_build).unwrap(), Path::new("/w/target/debug"));
        assert!(bins_dir(Path::new("/usr/bin/swarm")).is_err());
        // `cargo run --release --example swarm` builds release binaries, where the README says.
        assert!(build_args(false).contains(&"--release"));
        assert!(!build_args(true).contains(&"--release"));
    }
}
