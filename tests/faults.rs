//! Faults: peers that die or lie, clients killed mid-download, a tracker restart.

use std::fs;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use crate::harness::{
    Proc, ServerProc, Tmpfs, TrackerProc, eventually, get, http_from, random_file, spawn_get,
    stored_chunks,
};

#[test]
fn peers_killed_one_after_another_mid_transfer_lose_their_chunks_to_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 8 MiB through three peers capped at 2 MiB/s each: time to kill two along the way.
    let bytes = random_file(&d.join("f.bin"), 8 << 20, 5);
    let tracker = TrackerProc::start(d, &[]);
    let _origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let mut peers: Vec<ServerProc> = ["peer-a", "peer-b", "peer-c"]
        .iter()
        .map(|store| {
            ServerProc::start(
                d,
                store,
                Some(&tracker.url),
                &["f.bin"],
                &["--max-upload-rate", "2MiB"],
            )
        })
        .collect();
    let id = peers[0].seeded[0].clone();
    tracker.wait_for_peers(&id, 4);

    let mut client = spawn_get(d, &tracker.url, &id, "copy.bin", "client", &[]);
    let client_store = d.join("client");
    // SIGKILL one peer after the first chunks, another after a quarter of the file.
    for (victim, chunks) in [(0, 1), (1, 32)] {
        eventually(
            "the client to record progress",
            Duration::from_secs(30),
            || stored_chunks(&client_store, &id) >= chunks,
        );
        peers[victim].proc.kill();
    }
    assert!(
        client.wait().success(),
        "client failed: {}",
        client.stderr()
    );
    let summary: serde_json::Value = client.summary();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    let sources = summary["sources"].as_array().unwrap();
    for victim in &peers[..2] {
        let entry = sources
            .iter()
            .find(|s| s["addr"] == victim.addr.as_str())
            .expect("victim listed");
        // Failures are transient: a killed peer is retried (it may come back), not
        // dropped, and its last failure is reported.
        assert!(
            entry["last_error"].is_string() && entry["failures"].as_u64().unwrap() >= 1,
            "a killed peer is reported with its failure: {summary}"
        );
        assert!(
            entry["dropped"].is_null(),
            "only liars are dropped: {summary}"
        );
    }
    let total: u64 = ["from_peers", "from_origin"]
        .iter()
        .map(|k| summary[k].as_u64().unwrap())
        .sum();
    assert_eq!(total, bytes.len() as u64);
}

#[test]
fn a_peer_serving_corrupt_bytes_is_dropped_reported_and_no_longer_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 20 * 65536, 6);
    let tracker = TrackerProc::start(d, &[]);
    let _origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let liar = ServerProc::start(
        d,
        "liar",
        Some(&tracker.url),
        &["f.bin"],
        &["--announce-interval", "1s"],
    );
    let id = liar.seeded[0].clone();
    // Rot the liar's disk: every chunk differs from the manifest by one byte.
    let data = liar.store.join("assets").join(&id).join("data");
    let mut perms = fs::metadata(&data).unwrap().permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perms.set_readonly(false);
    fs::set_permissions(&data, perms).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&data).unwrap();
    for chunk in 0..20u64 {
        file.write_all_at(&[bytes[(chunk * 65536) as usize] ^ 0xff], chunk * 65536)
            .unwrap();
    }
    tracker.wait_for_peers(&id, 2);

    let run = get(d, &tracker.url, &id, "copy.bin", "client", &[]);
    let summary = run.json();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    let liar_entry = summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == liar.addr.as_str())
        .unwrap();
    assert!(
        liar_entry["dropped"].as_str().unwrap().contains("SHA-256"),
        "{summary}"
    );
    assert_eq!(liar_entry["bytes"], 0);
    assert_eq!(summary["from_origin"], bytes.len() as u64);
    assert!(
        run.stderr.contains("wrong SHA-256"),
        "the client says why it dropped the peer: {}",
        run.stderr
    );

    // The client reported it; once a second client reports it too, the tracker stops
    // handing it out, and a third client never meets it.
    let listed = |tracker: &TrackerProc| {
        tracker
            .peers(&id)
            .iter()
            .any(|p| p["addr"] == liar.addr.as_str())
    };
    assert!(listed(&tracker), "one report is not enough to drop a peer");
    // Another client on this host is the same holder (issue 13: reporters count by source
    // address in open mode): the same download's verdict, reported from another address.
    let liar_id = tracker
        .peers(&id)
        .iter()
        .find(|p| p["addr"] == liar.addr.as_str())
        .unwrap()["peer_id"]
        .clone();
    get(d, &tracker.url, &id, "copy2.bin", "client2", &[]).ok();
    assert!(
        listed(&tracker),
        "one holder's two clients are one reporter"
    );
    let report = serde_json::json!({"peer_id": "client-elsewhere", "corrupt": [liar_id]});
    let path = format!("/assets/{id}/announce");
    let from = std::net::Ipv4Addr::new(127, 0, 0, 2);
    assert_eq!(
        http_from(from, &tracker.url, "POST", &path, None, Some(&report)).status,
        200
    );
    assert!(
        !listed(&tracker),
        "reported twice, the liar is still handed out"
    );
    let third = get(d, &tracker.url, &id, "copy3.bin", "client3", &[]).json();
    assert!(
        third["sources"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["addr"] != liar.addr.as_str()),
        "{third}"
    );
    // Its heartbeats (every second) do not bring it back.
    let announces = || {
        tracker.get_json("/stats")["swarms"][0]["announces"]
            .as_u64()
            .unwrap()
    };
    let before = announces();
    eventually("two more heartbeats", Duration::from_secs(10), || {
        announces() >= before + 2
    });
    assert!(!listed(&tracker));
}

/// A download that takes a few seconds: 64 chunks of 64 KiB from an origin capped at
/// 1 MiB/s, started in the background into the store `client` with output `copy.bin`.
/// Bind `_origin` to a name for the whole test: dropping it kills the origin.
struct SlowDownload {
    bytes: Vec<u8>,
    tracker: TrackerProc,
    _origin: ServerProc,
    id: String,
    client: Proc,
}

fn slow_download(d: &std::path::Path, seed: u64) -> SlowDownload {
    let bytes = random_file(&d.join("f.bin"), 64 * 65536, seed);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--max-upload-rate", "1MiB"],
    );
    let id = origin.seeded[0].clone();
    let client = spawn_get(d, &tracker.url, &id, "copy.bin", "client", &[]);
    SlowDownload {
        bytes,
        tracker,
        _origin: origin,
        id,
        client,
    }
}

#[test]
fn a_killed_download_resumes_and_fetches_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 4 MiB at 1 MiB/s: about 4 s, so the client is surely killed half way.
    let SlowDownload {
        bytes,
        tracker,
        id,
        mut client,
        _origin: _origin_alive,
    } = slow_download(d, 7);
    let store = d.join("client");
    eventually(
        "a checkpoint with progress",
        Duration::from_secs(20),
        || stored_chunks(&store, &id) >= 8,
    );
    client.kill();
    let kept = stored_chunks(&store, &id) as u64;
    assert!(kept < 64, "the client was killed before it finished");
    assert!(
        !d.join("copy.bin").exists(),
        "no output under the final name before completion"
    );

    let summary = get(d, &tracker.url, &id, "copy.bin", "client", &[]).json();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    let cached = summary["from_cache"].as_u64().unwrap();
    assert!(
        cached >= kept * 65536,
        "resume reuses what was kept: {summary}"
    );
    assert_eq!(
        summary["from_origin"].as_u64().unwrap(),
        bytes.len() as u64 - cached,
        "only the rest is fetched"
    );
}

#[test]
fn a_restarted_tracker_keeps_its_catalog_and_peers_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 5 * 65536, 8);
    // A 3 s peer timeout makes peers heartbeat every second.
    let mut tracker = TrackerProc::start(d, &["--peer-timeout", "3s"]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    tracker.proc.kill();

    let listen = tracker.url.trim_start_matches("http://").to_string();
    let tracker = TrackerProc::start_on(d, &listen, &["--peer-timeout", "3s"]);
    let catalog = tracker.get_json("/assets");
    assert_eq!(
        catalog[0]["id"],
        id.as_str(),
        "the catalog survived SIGKILL"
    );
    tracker.wait_for_peers(&id, 1);
    get(d, &tracker.url, &id, "copy.bin", "client", &[]).ok();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
}

#[test]
fn a_stalled_peer_loses_its_chunks_after_the_chunk_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 12 << 20, 13);
    let tracker = TrackerProc::start(d, &[]);
    // The origin is capped too: a stalled peer's chunks go to it within 100 ms (the peer is
    // found slow), and the download must outlast the chunk timeout for the drop to show.
    let _origin = ServerProc::capped_origin(d, &tracker.url, "f.bin");
    // Capped so that the transfer is still running when the peer is frozen.
    let staller = ServerProc::start(
        d,
        "staller",
        Some(&tracker.url),
        &["f.bin"],
        &["--max-upload-rate", "2MiB"],
    );
    let id = staller.seeded[0].clone();
    tracker.wait_for_peers(&id, 2);
    let mut client = spawn_get(
        d,
        &tracker.url,
        &id,
        "copy.bin",
        "client",
        &["--chunk-timeout", "1s"],
    );
    let store = d.join("client");
    eventually(
        "the client to record progress",
        Duration::from_secs(20),
        || stored_chunks(&store, &id) > 0,
    );
    // SIGSTOP: the peer keeps its connections open but never sends another byte.
    staller.proc.signal("STOP");
    assert!(
        client.wait().success(),
        "client failed: {}",
        client.stderr()
    );
    let summary: serde_json::Value = client.summary();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    let entry = summary["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["addr"] == staller.addr.as_str())
        .unwrap();
    assert!(
        entry["last_error"].as_str().unwrap().contains("stalled"),
        "{summary}"
    );
    assert!(
        summary["from_origin"].as_u64().unwrap() > 0,
        "the origin took over: {summary}"
    );
}

#[test]
fn a_busy_origin_is_retried_not_given_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 40 * 65536, 14);
    let tracker = TrackerProc::start(d, &[]);
    // One slot, four client connections: three are refused "busy" at first.
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--max-conns", "1"],
    );
    let id = origin.seeded[0].clone();
    let summary = get(
        d,
        &tracker.url,
        &id,
        "copy.bin",
        "client",
        &["--workers", "4"],
    )
    .json();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    assert_eq!(summary["from_origin"], bytes.len() as u64);
    assert!(summary["sources"][0]["dropped"].is_null(), "{summary}");
}

#[test]
fn an_output_edited_in_place_does_not_poison_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 8 * 65536, 15);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();
    get(d, &tracker.url, &id, "copy.bin", "client", &[]).ok();
    // The output is a copy (issue 11): scribbling on it leaves the store as it was.
    let scribble = |path: &std::path::Path| {
        let mut perms = fs::metadata(path).unwrap().permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        fs::set_permissions(path, perms).unwrap();
        let file = fs::OpenOptions::new().write(true).open(path).unwrap();
        file.write_all_at(b"scribble", 3 * 65536 + 10).unwrap();
    };
    scribble(&d.join("copy.bin"));
    let summary = get(d, &tracker.url, &id, "again.bin", "client", &[]).json();
    assert_eq!(fs::read(d.join("again.bin")).unwrap(), bytes);
    assert_eq!(summary["from_origin"], 0, "nothing to repair: {summary}");

    // The store's own content edited in place: only the damaged chunk is fetched again.
    scribble(&d.join("client/assets").join(&id).join("data"));
    let summary = get(d, &tracker.url, &id, "again.bin", "client", &[]).json();
    assert_eq!(
        fs::read(d.join("again.bin")).unwrap(),
        bytes,
        "the damaged chunk is fetched again"
    );
    assert_eq!(
        summary["from_origin"], 65536,
        "only the damaged chunk: {summary}"
    );
}

#[test]
fn ctrl_c_keeps_progress_and_leaves_the_swarm() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let SlowDownload {
        bytes,
        tracker,
        id,
        mut client,
        _origin: _origin_alive,
    } = slow_download(d, 20);
    let store = d.join("client");
    eventually(
        "progress and the client in the swarm",
        Duration::from_secs(20),
        || stored_chunks(&store, &id) >= 4 && tracker.peers(&id).len() == 2,
    );
    client.signal("INT");
    let status = client.wait();
    assert_eq!(status.code(), Some(130), "stderr: {}", client.stderr());
    assert!(
        client.stderr().contains("interrupted"),
        "{}",
        client.stderr()
    );
    assert_eq!(tracker.peers(&id).len(), 1, "the client left the swarm");
    let kept = stored_chunks(&store, &id) as u64;
    let summary = get(d, &tracker.url, &id, "copy.bin", "client", &[]).json();
    assert_eq!(fs::read(d.join("copy.bin")).unwrap(), bytes);
    assert!(
        summary["from_cache"].as_u64().unwrap() >= kept * 65536,
        "{summary}"
    );
}

#[test]
fn one_address_cannot_take_every_connection_slot() {
    use crate::harness::{connect, handshake};
    use std::net::TcpStream;
    use swarmcache::wire::{Message, code};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 65536, 16);
    let server = ServerProc::start(
        d,
        "seeder",
        None,
        &["f.bin"],
        &["--max-conns", "8", "--max-conns-per-addr", "2"],
    );
    let id = server.seeded[0].clone();
    // Two sessions hold this address's share of the slots (silent connections wait in the
    // lobby, apart, tests/attack_server.rs)...
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut stream = connect(&server.addr);
            assert!(matches!(
                handshake(&mut stream, &id, vec![]),
                Message::Welcome { .. }
            ));
            stream
        })
        .collect();
    match handshake(&mut connect(&server.addr), &id, vec![]) {
        Message::Error { code: c, message } => {
            assert_eq!(c, code::SERVER_BUSY);
            assert!(message.contains("127.0.0.1 already has 2"), "{message}");
        }
        other => panic!("a third connection from one address was served: {other:?}"),
    }
    // ...and once they go, the address is served again.
    drop(silent);
    eventually("a slot for this address", Duration::from_secs(10), || {
        matches!(
            handshake(&mut connect(&server.addr), &id, vec![]),
            Message::Welcome { .. }
        )
    });
}

#[test]
fn a_full_disk_is_a_clear_error_and_the_download_resumes_once_there_is_room() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let Some(disk) = Tmpfs::mount(&d.join("small"), "size=1m") else {
        eprintln!("skipped: mounting a tmpfs needs root (the disk-full case is not tested)");
        return;
    };
    let bytes = random_file(&d.join("f.bin"), 3 << 20, 17);
    let tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["f.bin"], &["--origin"]);
    let id = origin.seeded[0].clone();

    let full = get(d, &tracker.url, &id, "copy.bin", "small/store", &[]);
    let stderr = full.code(5);
    assert!(stderr.contains("disk is full"), "{stderr}");
    assert!(
        !d.join("copy.bin").exists(),
        "a partial file under the final name"
    );
    // What the store claims is there, is there: the resume re-hashes nothing in vain and
    // fetches only the rest.
    let kept = stored_chunks(&d.join("small/store"), &id);
    disk.remount("size=8m");
    let summary = get(d, &tracker.url, &id, "copy.bin", "small/store", &[]).json();
    assert!(fs::read(d.join("copy.bin")).unwrap() == bytes);
    assert_eq!(
        summary["from_cache"].as_u64().unwrap(),
        u64::from(kept) * 65536,
        "the chunks recorded before the disk filled are kept: {summary}"
    );
}

#[test]
fn a_tracker_killed_while_publishing_restarts_with_a_readable_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A large manifest (8 Ki chunks of 16 KiB, ~600 KB of TOML) keeps the tracker busy.
    random_file(&d.join("f.bin"), 128 << 20, 18);
    let manifest = crate::harness::run(d, "chunkify", &["--chunk-size", "16KiB", "f.bin"], b"");
    let manifest = manifest.ok().to_string();
    let id = crate::harness::run(
        d,
        "chunkify",
        &["--id", "--chunk-size", "16KiB", "f.bin"],
        b"",
    )
    .ok()
    .trim()
    .to_string();
    for delay_ms in [0u64, 2, 5, 10, 20] {
        let mut tracker = TrackerProc::start(d, &[]);
        let url = tracker.url.clone();
        let body = manifest.clone();
        let publisher = std::thread::spawn(move || {
            let _ = ureq::post(&format!("{url}/assets")).send_string(&body);
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        tracker.proc.kill();
        let _ = publisher.join();
        // Restarted, the tracker reads its catalog: the asset is there whole, or absent.
        let tracker = TrackerProc::start(d, &[]);
        let listed = tracker.get_json("/assets");
        let ids: Vec<&str> = listed
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap())
            .collect();
        if ids.contains(&id.as_str()) {
            let fetched = ureq::get(&format!("{}/assets/{id}", tracker.url))
                .call()
                .unwrap()
                .into_string()
                .unwrap();
            let parsed = swarmcache::manifest::Manifest::from_toml(&fetched).unwrap();
            assert_eq!(parsed.id().to_string(), id, "a half-written manifest");
            return;
        }
        assert!(ids.is_empty(), "{listed}");
    }
}

#[test]
fn a_stopped_peer_server_leaves_its_swarms_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("f.bin"), 65536, 19);
    let tracker = TrackerProc::start(d, &[]);
    let mut server = ServerProc::start(d, "seeder", Some(&tracker.url), &["f.bin"], &[]);
    let id = server.seeded[0].clone();
    tracker.wait_for_peers(&id, 1);
    server.proc.signal("TERM");
    assert!(server.proc.wait().success(), "{}", server.proc.stderr());
    // Well within the 60 s the tracker would otherwise wait.
    tracker.wait_for_peers(&id, 0);
}
