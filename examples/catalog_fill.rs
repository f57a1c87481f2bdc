//! Makes what `bench/catalog.sh` measures: a tracker catalog of COUNT assets of 2^20 chunks
//! each, written by the catalog's own publish (binary files, 32 MiB each), or one
//! maximum-size manifest's TOML on stdout. Chunk hashes are made up: no content exists.
//!
//!     cargo run --release --example catalog_fill -- fill DATA_DIR COUNT
//!     cargo run --release --example catalog_fill -- toml SEED > huge.toml

use std::io::Write as _;

use anyhow::{Context, Result, bail};
use swarmcache::manifest::{MAX_CHUNKS, MIN_CHUNK_SIZE, Manifest};
use swarmcache::tracker::catalog::Catalog;

/// A manifest of 2^20 chunks whose hashes are distinct per `seed` and per chunk.
fn maximum_manifest(seed: u64) -> Manifest {
    let chunks = (0..MAX_CHUNKS)
        .map(|i| {
            let mut hash = [0x5a; 32];
            hash[..8].copy_from_slice(&seed.to_be_bytes());
            hash[8..16].copy_from_slice(&i.to_be_bytes());
            hash
        })
        .collect();
    let size = MAX_CHUNKS * MIN_CHUNK_SIZE as u64;
    Manifest::new(
        format!("asset-{seed}.img"),
        size,
        MIN_CHUNK_SIZE,
        None,
        chunks,
    )
    .map_err(anyhow::Error::msg)
    .expect("a valid shape")
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number =
        |s: &String| -> Result<u64> { s.parse().with_context(|| format!("{s:?} is not a number")) };
    match args.as_slice() {
        [cmd, data, count] if cmd == "fill" => {
            let catalog = Catalog::open(data.as_ref())?;
            for seed in 0..number(count)? {
                catalog.publish(maximum_manifest(seed))?;
            }
            eprintln!("{} assets in {data}", catalog.len());
        }
        [cmd, seed] if cmd == "toml" => {
            let text = maximum_manifest(number(seed)?).to_toml();
            std::io::stdout().lock().write_all(text.as_bytes())?;
        }
        _ => bail!("usage: catalog_fill fill DATA_DIR COUNT | catalog_fill toml SEED"),
    }
    Ok(())
}
