//! The manifest parser on arbitrary bytes, as the tracker (`POST /assets`, the catalog on
//! start) and `chunkify verify` read them. Nothing may panic; whatever parses must be a
//! valid format 2 manifest whose TOML round-trips to the same values, canonical encoding
//! and id, and whose id does not depend on its name; a directory asset's paths all pass the
//! path checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use swarmcache::manifest::{
    AssetId, CANONICAL_FIXED_BYTES, Manifest, check_name, check_path, chunk_count_for,
};

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Manifest::read_from(data) else {
        return;
    };
    assert!(check_name(&m.name).is_ok(), "{:?}", m.name);
    assert_eq!(m.chunks.len() as u64, chunk_count_for(m.size, m.chunk_size));
    let text = m.to_toml();
    let again = Manifest::from_toml(&text).expect("to_toml output parses");
    assert_eq!(again, m);
    let bytes = m.canonical_bytes();
    assert_eq!(bytes, again.canonical_bytes());
    let whole = if m.sha256.is_some() { 32 } else { 0 };
    let files: usize = m.files().iter().map(|f| 14 + f.path.len()).sum();
    assert_eq!(
        bytes.len(),
        CANONICAL_FIXED_BYTES + whole + files + 32 * m.chunks.len()
    );
    // A directory asset's list passed every path check, and its files tile the content.
    for f in m.files() {
        assert!(check_path(&f.path).is_ok(), "{:?}", f.path);
        assert!(f.offset + f.size <= m.size);
    }
    assert_eq!(again.id(), m.id());
    let mut renamed = m.clone();
    renamed.name = "another name".into();
    assert_eq!(renamed.id(), m.id());
    assert_eq!(m.id().to_string().parse::<AssetId>(), Ok(m.id()));
});
