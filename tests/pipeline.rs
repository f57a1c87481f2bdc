//! The scripted pipeline of the README, end to end on real sockets.

use std::fs;
use std::process::Command;

use crate::harness::{self, ServerProc, TrackerProc, get, publish, random_file, run};

#[test]
fn pipeline_delivers_a_multi_chunk_file_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 50 chunks of 64 KiB plus a short last one.
    let bytes = random_file(&d.join("big.iso"), 50 * 65536 + 1234, 1);
    let tracker = TrackerProc::start(d, &[]);
    let id = publish(d, &tracker.url, "big.iso");
    let expected_id = run(
        d,
        "chunkify",
        &["--id", "--chunk-size", "64KiB", "big.iso"],
        b"",
    );
    assert_eq!(
        id,
        expected_id.ok().trim(),
        "publish must print the asset id chunkify computes"
    );
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["big.iso"], &["--origin"]);
    assert_eq!(origin.seeded, vec![id.clone()]);

    let summary = get(d, &tracker.url, &id, "copy.iso", "client", &[]).json();
    assert_eq!(fs::read(d.join("copy.iso")).unwrap(), bytes);
    assert_eq!(summary["size"], bytes.len() as u64);
    assert_eq!(summary["from_origin"], bytes.len() as u64);
    assert_eq!(summary["from_cache"], 0);
    // The client served while it downloaded and left the swarm when it finished.
    let peers = tracker.get_json(&format!("/assets/{id}/peers"));
    assert_eq!(
        peers.as_array().unwrap().len(),
        1,
        "only the origin is left: {peers}"
    );

    // The catalog lists it and the manifest served verifies the copy.
    let catalog = tracker.get_json("/assets");
    assert_eq!(catalog[0]["id"], id.as_str());
    let manifest = ureq::get(&format!("{}/assets/{id}", tracker.url))
        .call()
        .unwrap()
        .into_string()
        .unwrap();
    fs::write(d.join("m.toml"), manifest).unwrap();
    run(d, "chunkify", &["verify", "m.toml", "copy.iso"], b"").ok();
}

#[test]
fn empty_one_byte_and_uneven_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = [("empty", 0usize), ("one", 1), ("uneven", 3 * 65536 + 7)];
    let contents: Vec<Vec<u8>> = files
        .iter()
        .map(|(name, len)| random_file(&d.join(name), *len, *len as u64))
        .collect();
    let tracker = TrackerProc::start(d, &[]);
    let names: Vec<&str> = files.iter().map(|(n, _)| *n).collect();
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &names, &["--origin"]);
    for ((name, _), (bytes, id)) in files.iter().zip(contents.iter().zip(&origin.seeded)) {
        let out = format!("{name}.copy");
        let summary = get(d, &tracker.url, id, &out, "client", &[]).json();
        assert_eq!(&fs::read(d.join(&out)).unwrap(), bytes, "{name}");
        assert_eq!(summary["size"], bytes.len() as u64, "{name}");
    }
}

#[test]
fn chunkify_reads_stdin_and_verify_names_bad_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut bytes = random_file(&d.join("f.bin"), 5 * 65536 + 99, 3);
    let from_file = run(
        d,
        "chunkify",
        &["--chunk-size", "64KiB", "--name", "f.bin", "f.bin"],
        b"",
    );
    let from_stdin = run(
        d,
        "chunkify",
        &["--chunk-size", "64KiB", "--name", "f.bin", "-"],
        &bytes,
    );
    assert_eq!(
        from_file.ok(),
        from_stdin.ok(),
        "the same bytes give the same manifest from a pipe"
    );
    fs::write(d.join("f.toml"), from_file.ok()).unwrap();

    run(d, "chunkify", &["verify", "f.toml", "f.bin"], b"").ok();
    run(d, "chunkify", &["verify", "f.toml", "-"], &bytes).ok();
    bytes[2 * 65536 + 5] ^= 1;
    bytes[4 * 65536] ^= 1;
    fs::write(d.join("bad.bin"), &bytes).unwrap();
    let bad = run(d, "chunkify", &["verify", "f.toml", "bad.bin"], b"");
    bad.code(1);
    assert_eq!(bad.stdout.trim(), "bad chunks: 2 4");
}

#[test]
fn a_second_get_comes_from_the_store_without_the_tracker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("a.bin"), 4 * 65536, 4);
    let mut tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["a.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    get(d, &tracker.url, &id, "one.bin", "client", &[]).ok();
    tracker.proc.kill();
    let again = get(d, &tracker.url, &id, "two.bin", "client", &[]).json();
    assert_eq!(again["from_cache"], bytes.len() as u64);
    assert_eq!(again["from_peers"], 0);
    assert_eq!(again["from_origin"], 0);
    assert_eq!(fs::read(d.join("two.bin")).unwrap(), bytes);
}

#[test]
fn the_pipeline_example_script_runs_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/pipeline.sh");
    let path = format!(
        "{}:{}",
        harness::bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let result = harness::run_cmd(
        Command::new("bash")
            .arg(script)
            .current_dir(dir.path())
            .env("PATH", path)
            .env("TRACKER_LISTEN", "127.0.0.1:0")
            .env("ORIGIN_LISTEN", "127.0.0.1:0")
            .env("SIZE_MIB", "8"),
        "bash examples/pipeline.sh",
        b"",
    );
    let stdout = result.ok();
    for line in [
        "copy.iso and big.iso are identical",
        "hashes like big.iso",
        "unpacks identical",
    ] {
        assert!(stdout.contains(line), "{line:?} missing; stdout: {stdout}");
    }
}
