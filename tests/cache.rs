//! The cache: `peer_client cache ls / rm / gc` on stores filled by real gets and seeds;
//! eviction takes the least recently used asset and never one a running process uses.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use std::net::TcpStream;

use swarmcache::wire::{Message, code};

use crate::harness::{
    Proc, ServerProc, TrackerProc, eventually, get, handshake, random_file, run, run_cmd, spawn_get,
};

/// `peer_client cache ARGS… --cache cache` in `d`.
fn cache(d: &Path, args: &[&str]) -> crate::harness::Run {
    let mut all = vec!["cache"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--cache", "cache"]);
    run(d, "peer_client", &all, b"")
}

/// The ids `cache ls --json` lists, most recently used first.
fn listed(d: &Path) -> Vec<String> {
    let entries = cache(d, &["ls", "--json"]).json();
    entries
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts the store holds exactly `ids`, each whole (a manifest), and nothing in `tmp/`:
/// no half-deleted asset anywhere.
fn holds_exactly(store: &Path, ids: &[&str]) {
    let mut dirs: Vec<String> = fs::read_dir(store.join("assets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut expected: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(dirs, expected, "asset directories in {}", store.display());
    for id in ids {
        let dir = store.join("assets").join(id);
        assert!(dir.join("manifest.toml").exists(), "{id} lost its manifest");
    }
    let tmp: Vec<_> = fs::read_dir(store.join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "leftovers in tmp/: {tmp:?}");
}

/// Seeds `files` into the store `cache` with a peer_server that is stopped once it serves:
/// each seed counts as a use of its asset, in order.
fn seed_into_cache(d: &Path, files: &[&str]) -> Vec<String> {
    ServerProc::start(d, "cache", None, files, &[]).seeded
}

#[test]
fn gc_evicts_the_least_recently_used_asset_and_a_later_get_fetches_it_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = ["a.bin", "b.bin", "c.bin"];
    let contents: Vec<Vec<u8>> = names
        .iter()
        .enumerate()
        .map(|(i, name)| random_file(&d.join(name), 3 * 65536 + 100 * i, 40 + i as u64))
        .collect();
    let total: usize = contents.iter().map(Vec::len).sum();
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &names, &["--origin"]);
    let ids = origin.seeded.clone();
    for (id, name) in ids.iter().zip(names) {
        get(
            d,
            &tracker.url,
            id,
            &format!("got-{name}"),
            "cache",
            &["--no-serve"],
        )
        .ok();
    }
    // Used in the order a, b, c; then a again (seeded from the cache by a peer_server), so
    // b is the least recently used.
    assert_eq!(seed_into_cache(d, &["a.bin"]), [ids[0].clone()]);
    assert_eq!(listed(d), [&*ids[0], &ids[2], &ids[1]]);

    // One byte under the total: exactly one asset must go, the least recently used.
    let limit = (total - 1).to_string();
    let gc = cache(d, &["gc", "--cache-size", &limit]);
    assert_eq!(gc.ok().trim(), format!("evicted {} b.bin", ids[1]));
    assert!(gc.stderr.contains("evicted 1 asset"), "{}", gc.stderr);
    assert!(!gc.stderr.contains("warning"), "{}", gc.stderr);
    holds_exactly(&d.join("cache"), &[&ids[0], &ids[2]]);
    // Under the limit now: another gc evicts nothing.
    assert_eq!(cache(d, &["gc", "--cache-size", &limit]).ok(), "");

    // The others are intact: served from the cache alone (no tracker), byte for byte.
    for i in [0, 2] {
        let out = format!("again-{}", names[i]);
        let args = ["get", &ids[i], "--store", "cache", "-o", &out, "--json"];
        let summary = run(d, "peer_client", &args, b"").json();
        assert_eq!(summary["from_cache"], contents[i].len() as u64);
        assert_eq!(fs::read(d.join(&out)).unwrap(), contents[i]);
    }
    // The evicted one is simply fetched again.
    let summary = get(
        d,
        &tracker.url,
        &ids[1],
        "again-b.bin",
        "cache",
        &["--no-serve"],
    )
    .json();
    assert_eq!(summary["from_origin"], contents[1].len() as u64);
    assert_eq!(fs::read(d.join("again-b.bin")).unwrap(), contents[1]);
    holds_exactly(&d.join("cache"), &[&ids[0], &ids[1], &ids[2]]);
}

#[test]
fn an_asset_a_running_peer_server_seeds_is_never_evicted_nor_removed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, name) in ["x.bin", "y.bin", "z.bin"].iter().enumerate() {
        random_file(&d.join(name), 2 * 65536, 50 + i as u64);
    }
    // x is seeded first, so it is the least recently used, but its server keeps running.
    let mut server = ServerProc::start(d, "cache", None, &["x.bin"], &[]);
    let x = server.seeded[0].clone();
    let [y, z] = <[String; 2]>::try_from(seed_into_cache(d, &["y.bin", "z.bin"])).unwrap();
    assert_eq!(listed(d), [&*z, &y, &x]);
    let ls = cache(d, &["ls", "--json"]).json();
    assert_eq!(ls[2]["in_use"], true, "{ls}");
    assert_eq!(ls[2]["users"][0]["pid"], server.proc.pid(), "{ls}");
    assert_eq!(ls[0]["in_use"], false, "{ls}");
    let table = cache(d, &["ls"]);
    assert!(
        table
            .ok()
            .contains(&format!("peer_server[{}]", server.proc.pid())),
        "{}",
        table.stdout
    );

    // The limit (from the environment) forces one eviction: y, the oldest not in use.
    let gc = run_cmd(
        Command::new(crate::harness::bin("peer_client"))
            .args(["cache", "gc", "--store", "cache"])
            .env("SWARMCACHE_CACHE_SIZE", "300KiB")
            .current_dir(d),
        "SWARMCACHE_CACHE_SIZE=300KiB peer_client cache gc --store cache",
        b"",
    );
    assert_eq!(gc.ok().trim(), format!("evicted {y} y.bin"));
    holds_exactly(&d.join("cache"), &[&x, &z]);

    // Removing the one in use fails, naming the process; the other id is still removed.
    let rm = cache(d, &["rm", &x, &z]);
    let stderr = rm.code(1);
    assert!(
        stderr.contains(&format!("asset {x} (x.bin) is in use by")),
        "{stderr}"
    );
    let pid = server.proc.pid();
    assert!(
        stderr.contains(&format!("peer_server (pid {pid})")),
        "{stderr}"
    );
    assert_eq!(rm.stdout.trim(), format!("removed {z} z.bin"));

    // Even a limit of nothing leaves it: a warning that says why, not a failure.
    let gc = cache(d, &["gc", "--cache-size", "0"]);
    assert_eq!(gc.ok(), "");
    assert!(gc.stderr.contains("warning: cache"), "{}", gc.stderr);
    assert!(gc.stderr.contains("x.bin ("), "{}", gc.stderr);
    assert!(
        gc.stderr.contains("is in use by peer_server"),
        "{}",
        gc.stderr
    );
    holds_exactly(&d.join("cache"), &[&x]);

    // Once the server is gone, so is the mark.
    server.proc.kill();
    assert_eq!(
        cache(d, &["rm", &x]).ok().trim(),
        format!("removed {x} x.bin")
    );
    holds_exactly(&d.join("cache"), &[]);
    assert_eq!(cache(d, &["ls", "--json"]).ok().trim(), "[]");
}

#[test]
fn a_peer_server_holds_an_asset_it_did_not_seed_only_while_it_sends_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("v.bin"), 65536, 70);
    let [v] = <[String; 1]>::try_from(seed_into_cache(d, &["v.bin"])).unwrap();
    let server = ServerProc::start(d, "cache", None, &[], &[]);
    let hello = |s: &mut TcpStream| handshake(s, &v, vec![]);
    let mut peer = TcpStream::connect(&server.addr).unwrap();
    assert!(matches!(hello(&mut peer), Message::Welcome { .. }));
    let gc = cache(d, &["gc", "--cache-size", "0"]);
    assert!(gc.ok().is_empty(), "evicted while a peer was served");
    let pid = server.proc.pid();
    assert!(
        gc.stderr.contains(&format!("peer_server (pid {pid})")),
        "{}",
        gc.stderr
    );

    // Once the connection ends, the asset is only in the store, not in use.
    drop(peer);
    eventually("the connection to end", Duration::from_secs(10), || {
        cache(d, &["gc", "--cache-size", "0"]).ok().contains(&v)
    });
    holds_exactly(&d.join("cache"), &[]);
    let mut peer = TcpStream::connect(&server.addr).unwrap();
    match hello(&mut peer) {
        Message::Error { code: c, message } => {
            assert_eq!(c, code::UNKNOWN_ASSET, "{message}");
        }
        other => panic!("expected unknown asset, got {other:?}"),
    }
}

#[test]
fn a_download_in_progress_is_in_use_until_its_process_dies() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 16 * 65536, 60);
    let tracker = TrackerProc::start(d, &[]);
    // 1 MiB at 256 KiB/s: the download is still running when it is frozen below.
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--max-upload-rate", "256KiB"],
    );
    let id = origin.seeded[0].clone();
    let mut client: Proc = spawn_get(d, &tracker.url, &id, "copy.bin", "cache", &["--no-serve"]);
    let manifest = d.join("cache/assets").join(&id).join("manifest.toml");
    eventually("the download to start", Duration::from_secs(20), || {
        manifest.exists()
    });
    // Frozen, so it cannot finish (and stop using the asset) while gc runs.
    client.signal("STOP");
    let gc = cache(d, &["gc", "--cache-size", "0"]);
    assert_eq!(gc.ok(), "", "nothing evicted");
    let pid = client.pid();
    assert!(
        gc.stderr
            .contains(&format!("in use by peer_client (pid {pid})")),
        "{}",
        gc.stderr
    );
    let ls = cache(d, &["ls", "--json"]).json();
    assert_eq!(ls[0]["complete"], false, "{ls}");
    assert_eq!(ls[0]["in_use"], true, "{ls}");

    // Killed, it holds nothing: the partial asset can go, leaving nothing behind.
    client.kill();
    let gc = cache(d, &["gc", "--cache-size", "0"]);
    assert_eq!(gc.ok().trim(), format!("evicted {id} f.bin"));
    holds_exactly(&d.join("cache"), &[]);
}

#[test]
fn cache_commands_explain_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let no_size = cache(d, &["gc"]);
    assert!(
        no_size.code(2).contains("--cache-size"),
        "{}",
        no_size.stderr
    );
    cache(d, &["rm"]).code(2);
    let bad = cache(d, &["rm", "xyz"]);
    assert!(bad.code(2).contains("not an asset id"), "{}", bad.stderr);
    let absent = cache(d, &["rm", &"ab".repeat(32)]);
    assert!(
        absent.code(1).contains("not in the cache"),
        "{}",
        absent.stderr
    );
    let empty = cache(d, &["ls"]);
    assert!(
        empty.ok().ends_with("0 assets, 0 B (0 B present)\n"),
        "{}",
        empty.stdout
    );
}

#[test]
fn get_with_a_cache_size_evicts_the_least_recently_used_asset_but_not_one_being_seeded() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let names = ["a.bin", "b.bin", "c.bin", "d.bin"];
    for (i, name) in names.iter().enumerate() {
        random_file(&d.join(name), 4 * 65536, 60 + i as u64);
    }
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &names, &["--origin"]);
    let ids = origin.seeded.clone();
    // a is fetched and seeded on (in use); b and c are fetched after it, c last.
    let mut seeding = spawn_get(
        d,
        &tracker.url,
        &ids[0],
        "a.out",
        "cache",
        &["--seed-for", "60s"],
    );
    seeding.summary();
    for (id, out) in [(&ids[1], "b.out"), (&ids[2], "c.out")] {
        get(d, &tracker.url, id, out, "cache", &[]).ok();
    }
    // Room for three of the four: the least recently used one not in use must go, and that
    // is b (a is older, but in use).
    let limit = (3 * 4 * 65536).to_string();
    get(
        d,
        &tracker.url,
        &ids[3],
        "d.out",
        "cache",
        &["--cache-size", &limit],
    )
    .ok();
    let store = d.join("cache");
    holds_exactly(&store, &[&ids[0], &ids[2], &ids[3]]);
    drop(seeding);
}
