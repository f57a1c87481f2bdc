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

#[test]
fn the_same_bytes_under_two_names_are_one_asset_and_keep_the_first_name() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("dir.tar"), 3 * 65536 + 17, 11);
    let tracker = TrackerProc::start(d, &[]);
    // `tar c dir | chunkify - | peer_client publish -`: the manifest is named "stdin".
    let manifest = run(d, "chunkify", &["--chunk-size", "64KiB", "-"], &bytes);
    assert!(
        manifest.ok().contains("name = \"stdin\""),
        "{}",
        manifest.stdout
    );
    let published = run(
        d,
        "peer_client",
        &["publish", "--tracker", &tracker.url, "-"],
        manifest.ok().as_bytes(),
    );
    let id = published.ok().trim().to_string();
    // `peer_server --seed dir.tar` publishes the same content under its file name, and
    // another server the same again under --name: one asset, whose first name stays.
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["dir.tar"], &["--origin"]);
    assert_eq!(origin.seeded, vec![id.clone()]);
    let named = ServerProc::start(
        d,
        "named",
        Some(&tracker.url),
        &["dir.tar"],
        &["--name", "backup.tar"],
    );
    assert_eq!(named.seeded, vec![id.clone()]);
    let catalog = tracker.get_json("/assets");
    assert_eq!(catalog.as_array().unwrap().len(), 1, "{catalog}");
    assert_eq!(catalog[0]["id"], id.as_str());
    assert_eq!(catalog[0]["name"], "stdin");
    let again = ureq::post(&format!("{}/assets", tracker.url))
        .send_string(
            &manifest
                .ok()
                .replace("name = \"stdin\"", "name = \"other.tar\""),
        )
        .unwrap();
    assert_eq!(again.status(), 200);
    let answer: serde_json::Value = again.into_json().unwrap();
    assert_eq!(
        (answer["id"].as_str(), answer["name"].as_str()),
        (Some(id.as_str()), Some("stdin"))
    );
    assert_eq!(answer["created"], false);

    let summary = get(d, &tracker.url, &id, "copy.tar", "client", &[]).json();
    assert_eq!(fs::read(d.join("copy.tar")).unwrap(), bytes);
    assert_eq!(summary["size"], bytes.len() as u64);
}

#[test]
fn peer_server_names_each_seed_with_its_name_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("a.bin"), 65536, 12);
    random_file(&d.join("b.bin"), 65536, 13);
    let server = ServerProc::start(d, "s", None, &["a.bin", "b.bin"], &["--name", "first"]);
    let store = d.join("s");
    let names: Vec<String> = origin_names(&store, &server.seeded);
    assert_eq!(names, ["first", "b.bin"]);
    let too_many = run(
        d,
        "peer_server",
        &[
            "--listen",
            "127.0.0.1:0",
            "--store",
            "t",
            "--seed",
            "a.bin",
            "--name",
            "x",
            "--name",
            "y",
        ],
        b"",
    );
    assert!(too_many.code(2).contains("--name"), "{}", too_many.stderr);
}

/// The names the store's manifests of `ids` record.
fn origin_names(store: &std::path::Path, ids: &[String]) -> Vec<String> {
    ids.iter()
        .map(|id| {
            let text =
                fs::read_to_string(store.join("assets").join(id).join("manifest.toml")).unwrap();
            let line = text
                .lines()
                .find(|l| l.starts_with("name = "))
                .unwrap()
                .to_string();
            line["name = ".len()..].trim_matches('"').to_string()
        })
        .collect()
}

#[test]
fn chunkify_sha256_records_the_whole_hash_and_verify_checks_it() {
    use sha2::Digest as _;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 4 * 65536 + 3, 14);
    let whole = hex::encode(sha2::Sha256::digest(&bytes));
    let plain = run(d, "chunkify", &["--chunk-size", "64KiB", "f.bin"], b"");
    assert!(!plain.ok().contains("sha256"), "{}", plain.stdout);
    let with = run(
        d,
        "chunkify",
        &["--sha256", "--chunk-size", "64KiB", "f.bin"],
        b"",
    );
    assert!(
        with.ok().contains(&format!("sha256 = \"{whole}\"")),
        "{}",
        with.stdout
    );
    let from_pipe = run(
        d,
        "chunkify",
        &["--sha256", "--chunk-size", "64KiB", "--name", "f.bin", "-"],
        &bytes,
    );
    assert_eq!(from_pipe.ok(), with.ok());
    let ids: Vec<String> = [&["--id"][..], &["--id", "--sha256"][..]]
        .iter()
        .map(|flags| {
            let mut args = flags.to_vec();
            args.extend_from_slice(&["--chunk-size", "64KiB", "f.bin"]);
            run(d, "chunkify", &args, b"").ok().trim().to_string()
        })
        .collect();
    assert_ne!(ids[0], ids[1], "the whole-content hash is part of the id");

    fs::write(d.join("plain.toml"), plain.ok()).unwrap();
    fs::write(d.join("with.toml"), with.ok()).unwrap();
    run(d, "chunkify", &["verify", "plain.toml", "f.bin"], b"").ok();
    run(d, "chunkify", &["verify", "with.toml", "f.bin"], b"").ok();
    run(d, "chunkify", &["verify", "with.toml", "-"], &bytes).ok();
    let lying = with.ok().replace(&whole, &"0".repeat(64));
    fs::write(d.join("lying.toml"), lying).unwrap();
    let bad = run(d, "chunkify", &["verify", "lying.toml", "f.bin"], b"");
    assert!(
        bad.code(1).contains("whole-content SHA-256 differs"),
        "{}",
        bad.stderr
    );
}

#[test]
fn format_1_manifests_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    fs::write(d.join("one.bin"), b"a").unwrap();
    // What chunkify printed before format 2.
    let old = "format = 1\nname = \"one.bin\"\nsize = 1\nchunk_size = 16384\n\
        sha256 = \"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb\"\n\
        chunks = [\"ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb\"]\n";
    fs::write(d.join("old.toml"), old).unwrap();
    let verify = run(d, "chunkify", &["verify", "old.toml", "one.bin"], b"");
    let stderr = verify.code(1);
    assert!(
        stderr.contains("format 1") && stderr.contains("re-run chunkify"),
        "{stderr}"
    );
    let tracker = TrackerProc::start(d, &[]);
    let publish = run(
        d,
        "peer_client",
        &["publish", "--tracker", &tracker.url, "-"],
        old.as_bytes(),
    );
    assert!(
        publish.code(1).contains("re-run chunkify"),
        "{}",
        publish.stderr
    );
}
