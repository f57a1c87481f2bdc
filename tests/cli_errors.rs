//! What users see when they get it wrong: clear messages and the documented exit codes.

use crate::harness::{TrackerProc, run};

#[test]
fn usage_errors_exit_2_and_failures_exit_1_or_their_own_code_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    run(d, "chunkify", &["--chunk-size", "1KiB", "x"], b"").code(2);
    run(d, "peer_client", &["frobnicate"], b"").code(2);
    let missing = run(d, "chunkify", &["no-such-file"], b"");
    assert!(
        missing.code(1).contains("no-such-file"),
        "{}",
        missing.stderr
    );
    let bad_id = run(
        d,
        "peer_client",
        &[
            "get",
            // Not an id, nor a name (issue 16: `xyz` is a name now).
            "xyz!",
            "--tracker",
            "http://127.0.0.1:1",
            "--store",
            "s",
        ],
        b"",
    );
    assert!(
        bad_id.code(2).contains("not an asset id"),
        "{}",
        bad_id.stderr
    );
    let down = run(
        d,
        "peer_client",
        &[
            "get",
            &"ab".repeat(32),
            "--tracker",
            "http://127.0.0.1:1",
            "--store",
            "s",
            "-o",
            "x",
        ],
        b"",
    );
    assert!(
        down.code(3).contains("cannot reach the tracker"),
        "{}",
        down.stderr
    );
    for help in ["chunkify", "tracker", "peer_server", "peer_client"] {
        assert!(
            run(d, help, &["--help"], b"").ok().contains("Usage"),
            "{help} --help"
        );
    }
}

#[test]
fn the_tracker_rejects_bad_manifests_and_unknown_assets_with_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tracker = TrackerProc::start(d, &[]);
    let bad = run(
        d,
        "peer_client",
        &["publish", "--tracker", &tracker.url, "-"],
        b"format = 2\nname = \"../etc\"\n",
    );
    assert!(bad.code(1).contains("manifest"), "{}", bad.stderr);
    let evil =
        "format = 2\nname = \"../x\"\nsize = 1\nchunk_size = 65536\nsha256 = \"00\"\nchunks = []\n";
    match ureq::post(&format!("{}/assets", tracker.url)).send_string(evil) {
        Err(ureq::Error::Status(400, response)) => {
            let body: serde_json::Value = response.into_json().unwrap();
            assert!(
                body["error"].as_str().unwrap().contains("path component"),
                "{body}"
            );
        }
        other => panic!("expected 400, got {other:?}"),
    }
    let unknown = run(
        d,
        "peer_client",
        &[
            "get",
            &"cd".repeat(32),
            "--tracker",
            &tracker.url,
            "--store",
            "s",
            "-o",
            "x",
        ],
        b"",
    );
    assert!(
        unknown.code(1).contains("not in the catalog"),
        "{}",
        unknown.stderr
    );
    match ureq::get(&format!("{}/nope", tracker.url)).call() {
        Err(ureq::Error::Status(404, response)) => {
            assert!(response.into_string().unwrap().contains("\"error\""))
        }
        other => panic!("expected 404, got {other:?}"),
    }
}

#[test]
fn a_default_output_name_never_replaces_an_existing_file() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::harness::random_file(&d.join("f.bin"), 1000, 16);
    let tracker = TrackerProc::start(d, &[]);
    let origin = crate::harness::ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin"],
    );
    let id = &origin.seeded[0];
    // The asset is named f.bin and f.bin exists here: without -o nothing is overwritten.
    let refused = run(
        d,
        "peer_client",
        &["get", id, "--tracker", &tracker.url, "--store", "s"],
        b"",
    );
    assert!(
        refused.code(1).contains("-o \"f.bin\""),
        "{}",
        refused.stderr
    );
    let sub = d.join("sub");
    std::fs::create_dir(&sub).unwrap();
    run(
        &sub,
        "peer_client",
        &["get", id, "--tracker", &tracker.url, "--store", "../s"],
        b"",
    )
    .ok();
    assert_eq!(
        std::fs::read(sub.join("f.bin")).unwrap(),
        std::fs::read(d.join("f.bin")).unwrap()
    );
}

#[test]
fn a_get_that_fails_leaves_the_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    crate::harness::random_file(&d.join("f.bin"), 70_000, 19);
    let tracker = TrackerProc::start(d, &[]);
    // Published, but no server holds it: the get announces itself, finds no source, fails.
    let id = crate::harness::publish(d, &tracker.url, "f.bin");
    let failed = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--store",
            "s",
            "-o",
            "x",
        ],
        b"",
    );
    assert!(
        failed.code(4).contains("knows no peer or origin"),
        "{}",
        failed.stderr
    );
    let peers = tracker.get_json(&format!("/assets/{id}/peers"));
    assert_eq!(
        peers.as_array().unwrap().len(),
        0,
        "the failed client said it stopped: {peers}"
    );
}
