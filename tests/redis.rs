//! Several trackers, one Redis (issue 17): two trackers share a real redis-server on
//! 127.0.0.1 and serve one crowd; one tracker is killed mid-crowd, then Redis itself is
//! restarted mid-crowd, and every client still finishes with an exact copy. Skipped, with a
//! message, where `redis-server` is not installed (`.ci/run` installs it). What a tracker
//! knows besides the swarms is shared too: tags and unpublished assets, origin URLs (an
//! nginx serves them), content keys (wrapped, never in Redis in the clear), and a holder's
//! bound on live peer ids counts what it announced through every tracker.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::{
    Proc, ServerProc, TrackerProc, eventually, get, http_get, publish, random_file, run, spawn_get,
    stored_chunks,
};
use crate::web_seed::{Nginx, nginx_binary};

/// Tries at a free port for redis-server: one picked by binding port 0 and releasing it
/// may be taken by another test before Redis binds it.
const PORT_TRIES: u32 = 5;
/// A redis-server starts in milliseconds; 10 s covers a loaded 2-core box.
const REDIS_START: Duration = Duration::from_secs(10);
/// Peers heartbeat every 2 s (a third of this), so a swarm refills quickly after Redis
/// restarts empty.
const PEER_TIMEOUT: &str = "6s";
/// 24 MiB in 64 KiB chunks: at the origin's 4 MiB/s the crowd takes about 8 s, long
/// enough that the start and the endgame (where clients hedge) weigh little in the origin's
/// total, and a tracker or Redis can be stopped while it runs.
const CHUNKS: usize = 384;
/// The most the origin may send, in files: issue 14's 1.05. This crowd measured 1.055 and
/// 1.065 (one tracker killed) at an earlier build; since a client whose share is lifted
/// fetches the chunks outside it from the top down (client::plan: away from those the
/// tracker hands out next), three runs on a loaded 2-core box gave 1.000 each.
const ORIGIN_BOUND: f64 = 1.05;

/// A redis-server of the test's own: its own directory, no persistence.
struct RedisProc {
    proc: Proc,
    port: u16,
    url: String,
}

fn redis_installed() -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok();
    if !found {
        eprintln!("skipped: redis-server is not installed (apt-get install redis-server)");
    }
    found
}

/// Whether a Redis answers PING on `port`.
fn pong(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let mut answer = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
}

impl RedisProc {
    /// Starts redis-server in `dir/redis` on a free port (or on `port`).
    fn start(dir: &Path, port: Option<u16>) -> RedisProc {
        let home = dir.join("redis");
        fs::create_dir_all(&home).unwrap();
        for _ in 0..PORT_TRIES {
            let port = port.unwrap_or_else(|| {
                let l = TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap().port()
            });
            let port_text = port.to_string();
            let args = [
                "--port",
                &port_text,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                home.to_str().unwrap(),
            ];
            let mut proc = Proc::spawn_cmd(
                Command::new("redis-server").args(args).current_dir(&home),
                format!("redis-server {}", args.join(" ")),
            );
            let deadline = Instant::now() + REDIS_START;
            while Instant::now() < deadline && proc.exited_within(Duration::ZERO).is_none() {
                if pong(port) {
                    return RedisProc {
                        proc,
                        port,
                        url: format!("redis://127.0.0.1:{port}/0"),
                    };
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            proc.kill();
        }
        panic!("redis-server did not start on a free port in {PORT_TRIES} tries");
    }
}

fn tracker(dir: &Path, name: &str, redis: &RedisProc) -> TrackerProc {
    tracker_with(dir, name, redis, &[])
}

/// A Redis and two trackers on it, "one" and "two", each with its own data directory.
fn two_trackers(dir: &Path) -> (RedisProc, TrackerProc, TrackerProc) {
    let redis = RedisProc::start(dir, None);
    let (one, two) = (tracker(dir, "one", &redis), tracker(dir, "two", &redis));
    (redis, one, two)
}

/// A tracker on `redis` with `extra` flags, sharing the key directory `dir/keys` with the
/// others (as trackers on one Redis must: ticket keys, and the content keys' wrapping key).
fn tracker_with(dir: &Path, name: &str, redis: &RedisProc, extra: &[&str]) -> TrackerProc {
    fs::create_dir_all(dir.join(name)).unwrap();
    let keys = dir.join("keys");
    let mut args = vec![
        "--redis",
        &redis.url,
        "--peer-timeout",
        PEER_TIMEOUT,
        "--keys",
        keys.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    TrackerProc::start(&dir.join(name), &args)
}

/// A request to a tracker (with a token when not empty): the status and the body as JSON
/// (or as a JSON string when it is not JSON).
fn call(method: &str, url: &str, token: &str, body: Option<&str>) -> (u16, serde_json::Value) {
    let mut request = ureq::request(method, url);
    if !token.is_empty() {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    let result = match body {
        Some(body) => request.send_string(body),
        None => request.call(),
    };
    let (status, response) = match result {
        Ok(r) => (r.status(), r),
        Err(ureq::Error::Status(status, r)) => (status, r),
        Err(e) => panic!("{method} {url}: {e}"),
    };
    let text = response.into_string().unwrap();
    let value = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, value)
}

/// `chunkify FILE | peer_client publish --tracker URL EXTRA… -`; the id.
fn publish_with(dir: &Path, tracker: &str, file: &str, extra: &[&str]) -> String {
    let manifest = run(dir, "chunkify", &["--chunk-size", "64KiB", file], b"");
    let mut args = vec!["publish", "--tracker", tracker];
    args.extend_from_slice(extra);
    args.push("-");
    let id = run(dir, "peer_client", &args, manifest.ok().as_bytes());
    id.ok().trim().to_string()
}

/// Starts `n` clients of `id`, half listing the trackers one way round, half the other.
fn crowd(dir: &Path, id: &str, urls: [&str; 2], n: usize) -> Vec<Proc> {
    (0..n)
        .map(|i| {
            let list = format!("{},{}", urls[i % 2], urls[1 - i % 2]);
            let (out, store) = (format!("copy-{i}.bin"), format!("client-{i}"));
            spawn_get(dir, &list, id, &out, &store, &["--seed-for", "4s"])
        })
        .collect()
}

/// Waits for every client, checks its copy, and gives the bytes the origin sent in all.
fn finish(dir: &Path, crowd: &mut [Proc], bytes: &[u8]) -> u64 {
    let mut from_origin = 0;
    for (i, client) in crowd.iter_mut().enumerate() {
        let summary = client.summary();
        assert!(
            fs::read(dir.join(format!("copy-{i}.bin"))).unwrap() == bytes,
            "client {i}'s copy differs: {summary}"
        );
        from_origin += summary["from_origin"].as_u64().unwrap();
    }
    from_origin
}

/// Waits until every client holds a chunk of `id`: each has had an answer naming its
/// sources, the origin among them (the crowd is under way).
fn under_way(dir: &Path, id: &str, n: usize) {
    eventually(
        "every client holding a chunk",
        Duration::from_secs(60),
        || (0..n).all(|i| stored_chunks(&dir.join(format!("client-{i}")), id) > 0),
    );
}

/// Announces `body` for asset `id` to the tracker at `url`; the answer's peers as
/// `(peer id, addr)`, sorted.
fn announce(url: &str, id: &str, body: &str) -> Vec<(String, String)> {
    let answer: serde_json::Value = ureq::post(&format!("{url}/assets/{id}/announce"))
        .send_string(body)
        .unwrap()
        .into_json()
        .unwrap();
    let mut peers: Vec<(String, String)> = answer["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let text = |k: &str| p[k].as_str().unwrap().to_string();
            (text("peer_id"), text("addr"))
        })
        .collect();
    peers.sort();
    peers
}

#[test]
fn answers_drawn_from_the_swarms_shared_pool_see_a_join_a_move_and_a_leave_at_once() {
    // A downloader's answers see each change at once; a seeder's heartbeat, answered from
    // the tracker's view of the swarm (src/tracker/shared_beats.rs), within its 2 s.
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (redis, one, other) = two_trackers(d);
    random_file(&d.join("f.bin"), 3 * 65536, 42);
    let id = publish(d, &one.url, "f.bin");
    let seeder = |n: u32, port: u32| {
        format!(r#"{{"peer_id":"s{n}","addr":"127.0.0.1:{port}","complete":true}}"#)
    };
    for n in 1..=3 {
        announce(&one.url, &id, &seeder(n, 9000 + n));
    }
    let asker = r#"{"peer_id":"asker","addr":"127.0.0.1:9100","complete":false}"#;
    let pair = |n: u32, port: u32| (format!("s{n}"), format!("127.0.0.1:{port}"));
    // The first answer makes the pool, the next ones reuse it (its lifetime is seconds,
    // its uses 16): each change below must show in the very next answer all the same.
    assert_eq!(
        announce(&other.url, &id, asker),
        vec![pair(1, 9001), pair(2, 9002), pair(3, 9003)]
    );
    assert_eq!(announce(&other.url, &id, asker).len(), 3);
    announce(&one.url, &id, &seeder(4, 9004));
    assert_eq!(announce(&other.url, &id, asker).len(), 4, "s4 joined");
    announce(&one.url, &id, &seeder(3, 9033));
    assert!(
        announce(&other.url, &id, asker).contains(&pair(3, 9033)),
        "s3 moved to port 9033"
    );
    let stop = r#"{"peer_id":"s2","addr":"127.0.0.1:9002","complete":true,"event":"stopped"}"#;
    announce(&one.url, &id, stop);
    assert_eq!(
        announce(&other.url, &id, asker),
        vec![pair(1, 9001), pair(3, 9033), pair(4, 9004)],
        "s2 left"
    );
    let listed = one.peers(&id);
    assert_eq!(listed.len(), 4, "s1, s3, s4 and the asker: {listed:?}");
    // s1 heartbeats through the other tracker (the second one from its view), s5 joins
    // through the first: s1's answers list s5 within the view's 2 s.
    announce(&other.url, &id, &seeder(1, 9001));
    announce(&other.url, &id, &seeder(1, 9001));
    announce(&one.url, &id, &seeder(5, 9005));
    let start = std::time::Instant::now();
    let mut seen = false;
    for _ in 0..60 {
        seen = announce(&other.url, &id, &seeder(1, 9001)).contains(&pair(5, 9005));
        if seen {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(seen, "s5 not in s1's answers after {:?}", start.elapsed());
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
    drop(redis);
}

#[test]
fn a_catalog_published_through_one_tracker_is_served_by_the_other() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (redis, one, other) = two_trackers(d);
    random_file(&d.join("f.bin"), 5 * 65536 + 7, 41);
    let id = publish(d, &one.url, "f.bin");
    let listed = other.get_json("/assets");
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    let manifest = http_get(&format!("{}/assets/{id}", other.url));
    assert_eq!(manifest.status, 200);
    assert!(manifest.body.contains("f.bin"), "{}", manifest.body);
    // A peer announced to one is handed out by the other.
    let body = r#"{"peer_id":"p1","addr":"127.0.0.1:9","complete":true}"#;
    ureq::post(&format!("{}/assets/{id}/announce", one.url))
        .send_string(body)
        .unwrap();
    let peers = other.peers(&id);
    assert_eq!(peers.len(), 1, "{peers:?}");
    assert_eq!(peers[0]["peer_id"], "p1");
    drop(redis);
}

#[test]
fn a_crowd_on_two_trackers_finishes_when_one_is_killed_and_the_origin_sends_the_file_once() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = RedisProc::start(d, None);
    let one = tracker(d, "one", &redis);
    let two = tracker(d, "two", &redis);
    let both = format!("{},{}", one.url, two.url);
    // The origin serves 4 MiB/s: the crowd must trade among itself.
    let bytes = random_file(&d.join("f.bin"), CHUNKS * 65536, 42);
    let origin = ServerProc::capped_origin(d, &both, "f.bin");
    let id = origin.seeded[0].clone();
    let mut clients = crowd(d, &id, [&one.url, &two.url], 8);
    under_way(d, &id, 8);
    one.proc.signal("KILL");
    let from_origin = finish(d, &mut clients, &bytes);
    let size = bytes.len() as u64;
    eprintln!(
        "crowd of 8 on two trackers, one killed: origin sent {:.3} × the file",
        from_origin as f64 / size as f64
    );
    assert!(
        from_origin as f64 <= ORIGIN_BOUND * size as f64,
        "the origin sent {from_origin} bytes for a {size}-byte file"
    );
    drop((origin, redis));
}

#[test]
fn a_crowd_finishes_when_redis_restarts_under_it() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut redis, one, two) = two_trackers(d);
    let both = format!("{},{}", one.url, two.url);
    let bytes = random_file(&d.join("f.bin"), CHUNKS * 65536, 43);
    let origin = ServerProc::capped_origin(d, &both, "f.bin");
    let id = origin.seeded[0].clone();
    let mut clients = crowd(d, &id, [&one.url, &two.url], 8);
    under_way(d, &id, 8);
    let port = redis.port;
    redis.proc.signal("KILL");
    redis.proc.wait();
    let redis = RedisProc::start(d, Some(port));
    finish(d, &mut clients, &bytes);
    // The swarm refilled the new Redis: the origin announced itself again.
    eventually(
        "the origin back in the swarm",
        Duration::from_secs(15),
        || one.peers(&id).iter().any(|p| p["origin"] == true),
    );
    drop((origin, redis));
}

#[test]
fn a_tag_set_through_one_tracker_resolves_through_the_other_and_an_unpublish_is_410_there() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = RedisProc::start(d, None);
    // Sixteen moves at once from one address: neither its publish rate nor its
    // connections are what this test is about.
    let unlimited = ["--publish-rate", "0", "--max-conns-per-ip", "0"];
    let one = tracker_with(d, "one", &redis, &unlimited);
    let two = tracker_with(d, "two", &redis, &unlimited);
    random_file(&d.join("f.bin"), 3 * 65536 + 5, 44);
    let id = publish_with(d, &one.url, "f.bin", &["--tag", "ci/app:v1"]);
    let (status, tag) = call("GET", &format!("{}/tags/ci/app:v1", two.url), "", None);
    assert_eq!(
        (status, tag["id"].as_str()),
        (200, Some(id.as_str())),
        "{tag}"
    );
    // Moved through the other, seen at once by the first.
    let (status, _) = call(
        "PUT",
        &format!("{}/tags/ci/app:stable", two.url),
        "",
        Some(&format!(r#"{{"id":"{id}"}}"#)),
    );
    assert_eq!(status, 200);
    let names = one.get_json("/tags/ci/app");
    assert_eq!(names["tags"].as_array().unwrap().len(), 2, "{names}");
    // Moves racing through both trackers are all kept (the book changes by compare-and-set).
    std::thread::scope(|s| {
        for i in 0..16 {
            let (url, id) = ([&one.url, &two.url][i % 2], &id);
            s.spawn(move || {
                let path = format!("{url}/tags/ci/race:t{i}");
                let body = format!(r#"{{"id":"{id}"}}"#);
                let (status, answer) = call("PUT", &path, "", Some(&body));
                assert_eq!(status, 200, "{path}: {answer}");
            });
        }
    });
    let race = two.get_json("/tags/ci/race");
    assert_eq!(race["tags"].as_array().unwrap().len(), 16, "{race}");
    // The second tracker serves the asset (adopting it from Redis), then one unpublishes.
    let announce = |url: &str, body: &str| {
        call(
            "POST",
            &format!("{url}/assets/{id}/announce"),
            "",
            Some(body),
        )
    };
    let seeder = r#"{"peer_id":"p1","addr":"127.0.0.1:9","complete":true}"#;
    let downloader = r#"{"peer_id":"p2","addr":"127.0.0.1:10","complete":false}"#;
    assert_eq!(announce(&two.url, seeder).0, 200);
    assert_eq!(announce(&two.url, seeder).0, 200);
    let (status, answer) = call("DELETE", &format!("{}/assets/{id}", one.url), "", None);
    assert_eq!(status, 200, "{answer}");
    // A downloader hears it at once, a seeder's heartbeat (answered from the tracker's
    // view of the swarm) within the view's 2 s.
    let (status, answer) = announce(&two.url, downloader);
    assert_eq!(status, 410, "an announce through the other: {answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("unpublished"),
        "{answer}"
    );
    let start = std::time::Instant::now();
    let mut status = 200;
    for _ in 0..60 {
        status = announce(&two.url, seeder).0;
        if status != 200 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(status, 410, "a seeder after {:?}", start.elapsed());
    for path in [format!("/assets/{id}"), "/tags/ci/app:v1".to_string()] {
        let (status, answer) = call("GET", &format!("{}{path}", two.url), "", None);
        assert_eq!(status, 410, "GET {path} through the other: {answer}");
    }
    assert_eq!(two.get_json("/assets"), serde_json::json!([]));
    // Published again through the other: both serve it.
    assert_eq!(publish_with(d, &two.url, "f.bin", &[]), id);
    assert_eq!(announce(&one.url, seeder).0, 200);
    let (status, tag) = call("GET", &format!("{}/tags/ci/app:v1", one.url), "", None);
    assert_eq!(
        (status, tag["id"].as_str()),
        (200, Some(id.as_str())),
        "{tag}"
    );
    drop(redis);
}

#[test]
fn an_origin_url_added_through_one_tracker_is_handed_out_by_the_other() {
    if !redis_installed() {
        return;
    }
    let Some(binary) = nginx_binary("redis origin URL") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (redis, one, two) = two_trackers(d);
    let www = d.join("www");
    fs::create_dir_all(&www).unwrap();
    let bytes = random_file(&www.join("f.bin"), 40 * 65536 + 3, 45);
    let nginx = Nginx::start(&binary, d, "nginx", &www, "", None);
    let url = nginx.url("f.bin");
    let id = publish_with(d, &one.url, "www/f.bin", &["--origin-url", &url]);
    // No peer_server at all: a client of the other tracker fetches from nginx.
    get(d, &two.url, &id, "copy.bin", "client", &["--no-serve"]).ok();
    assert!(
        fs::read(d.join("copy.bin")).unwrap() == bytes,
        "the copy differs"
    );
    assert!(
        nginx.bytes_sent() >= bytes.len() as u64,
        "nginx sent {} bytes",
        nginx.bytes_sent()
    );
    // One added later through the other is listed by the first.
    let mirror = "https://mirror.example/f.bin";
    run(
        d,
        "peer_client",
        &["origin", "add", &id, mirror, "--tracker", &two.url],
        b"",
    )
    .ok();
    let listed = one.get_json(&format!("/assets/{id}/origins"));
    assert_eq!(
        listed["origin_urls"],
        serde_json::json!([url, mirror]),
        "{listed}"
    );
    drop(redis);
}

#[test]
fn an_encrypted_asset_published_through_one_tracker_gives_its_key_through_the_other() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (redis, one, two) = two_trackers(d);
    let plain = random_file(&d.join("plain.bin"), 5 * 65536 + 11, 46);
    let args = [
        "--encrypt",
        "--chunk-size",
        "64KiB",
        "plain.bin",
        "--out",
        "c.enc",
    ];
    let manifest = run(d, "chunkify", &args, b"").ok().to_string();
    let key = manifest
        .split("aes-128-ctr:")
        .nth(1)
        .map(|rest| rest[..32].to_string())
        .unwrap();
    let published = run(
        d,
        "peer_client",
        &["publish", "--tracker", &one.url, "-"],
        manifest.as_bytes(),
    );
    let id = published.ok().trim().to_string();
    let answer = two.get_json(&format!("/assets/{id}/key"));
    assert_eq!(answer["key"].as_str(), Some(key.as_str()), "{answer}");
    // An asset published without a key through one takes none through the other.
    fs::write(d.join("other.bin"), b"another file, in the clear").unwrap();
    let args = [
        "--encrypt",
        "--chunk-size",
        "64KiB",
        "other.bin",
        "--out",
        "o.enc",
    ];
    let keyed = run(d, "chunkify", &args, b"").ok().to_string();
    let keyless: String = keyed
        .lines()
        .filter(|l| !l.starts_with("key ="))
        .map(|l| format!("{l}\n"))
        .collect();
    let publish_to = |url: &str, text: &str| {
        run(
            d,
            "peer_client",
            &["publish", "--tracker", url, "-"],
            text.as_bytes(),
        )
    };
    publish_to(&one.url, &keyless).ok();
    let refused = publish_to(&two.url, &keyed);
    assert!(
        refused.code(1).contains("published without a content key"),
        "{}",
        refused.stderr
    );
    // Redis holds it wrapped: its dump or its network give no key.
    let mut conn = ::redis::Client::open(redis.url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let stored: String = ::redis::cmd("GET")
        .arg(format!("sc:content-key:{id}"))
        .query(&mut conn)
        .unwrap();
    assert!(
        stored.starts_with("v1:") && !stored.contains(&key),
        "{stored}"
    );
    // A client of the other tracker decrypts what an origin of the first serves.
    let origin = ServerProc::start(d, "origin", Some(&one.url), &["c.enc"], &["--origin"]);
    assert_eq!(origin.seeded[0], id);
    get(d, &two.url, &id, "out.bin", "client", &["--no-serve"]).ok();
    assert!(
        fs::read(d.join("out.bin")).unwrap() == plain,
        "the copy differs"
    );
    // A tracker with another key directory cannot open it, and says what to do.
    fs::create_dir_all(d.join("stray")).unwrap();
    let other_keys = d.join("other-keys");
    let stray = TrackerProc::start(
        &d.join("stray"),
        &[
            "--redis",
            &redis.url,
            "--keys",
            other_keys.to_str().unwrap(),
        ],
    );
    let (status, answer) = call("GET", &format!("{}/assets/{id}/key", stray.url), "", None);
    assert_eq!(status, 500, "{answer}");
    let message = answer["error"].as_str().unwrap();
    assert!(
        message.contains("--keys") && !message.contains(&key),
        "{message}"
    );
    drop((origin, redis));
}

#[test]
fn a_token_holder_over_the_peer_id_cap_through_both_trackers_is_refused() {
    if !redis_installed() {
        return;
    }
    /// The tracker's bound (src/tracker/shared.rs, MAX_IDS_PER_HOLDER).
    const CAP: usize = 1024;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = RedisProc::start(d, None);
    let token = |name: &str, rights: &[&str]| {
        let mut args = vec!["token", "--auth", "auth.toml", "--name", name];
        args.extend_from_slice(rights);
        run(d, "tracker", &args, b"").ok().trim().to_string()
    };
    let ops = token("ops", &["--publish", "--fetch", "*"]);
    let fleet = token("fleet", &["--fetch", "*"]);
    let other = token("other", &["--fetch", "*"]);
    let auth = d.join("auth.toml");
    let flags = ["--auth", auth.to_str().unwrap(), "--announce-rate", "0"];
    let one = tracker_with(d, "one", &redis, &flags);
    let two = tracker_with(d, "two", &redis, &flags);
    random_file(&d.join("f.bin"), 65536, 47);
    let id = publish_with(d, &one.url, "f.bin", &["--token", &ops]);
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build();
    let announce = |url: &str, token: &str, peer: &str| {
        let body = format!(r#"{{"peer_id":"{peer}","addr":"127.0.0.1:9","complete":true}}"#);
        match agent
            .post(&format!("{url}/assets/{id}/announce"))
            .set("Authorization", &format!("Bearer {token}"))
            .send_string(&body)
        {
            Ok(r) => (r.status(), r.into_string().unwrap()),
            Err(ureq::Error::Status(s, r)) => (s, r.into_string().unwrap()),
            Err(e) => panic!("announce {peer}: {e}"),
        }
    };
    // Half the ids through each tracker: one store counts them all.
    for i in 0..CAP {
        let url = [&one.url, &two.url][i % 2];
        let (status, body) = announce(url, &fleet, &format!("f{i}"));
        assert_eq!(status, 200, "id {i}: {body}");
    }
    for url in [&one.url, &two.url] {
        let (status, body) = announce(url, &fleet, "one-more");
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("1024 live peer ids"), "{body}");
    }
    // Its live ids still announce; another holder is not held back.
    assert_eq!(announce(&two.url, &fleet, "f0").0, 200);
    assert_eq!(announce(&one.url, &other, "o1").0, 200);
    drop(redis);
}

#[test]
fn repeated_tracker_flags_fail_over_past_a_dead_tracker() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (redis, one, two) = two_trackers(d);
    // Nothing listens on a port just freed.
    let dead = format!(
        "http://{}",
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    );
    let bytes = random_file(&d.join("f.bin"), 6 * 65536 + 1, 48);
    let flags = ["--origin", "--tracker", &dead, "--tracker", &one.url];
    let origin = ServerProc::start(d, "origin", None, &["f.bin"], &flags);
    let id = origin.seeded[0].clone();
    get(
        d,
        &dead,
        &id,
        "copy.bin",
        "client",
        &["--tracker", &two.url, "--no-serve"],
    )
    .ok();
    assert!(
        fs::read(d.join("copy.bin")).unwrap() == bytes,
        "the copy differs"
    );
    drop((origin, redis));
}

#[test]
fn tags_origin_urls_and_keys_come_back_when_redis_restarts_empty() {
    if !redis_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut redis, one, two) = two_trackers(d);
    random_file(&d.join("plain.bin"), 2 * 65536 + 9, 49);
    let args = [
        "--encrypt",
        "--chunk-size",
        "64KiB",
        "plain.bin",
        "--out",
        "c.enc",
    ];
    let manifest = run(d, "chunkify", &args, b"").ok().to_string();
    let url = "https://cdn.example/c.enc";
    let published = run(
        d,
        "peer_client",
        &[
            "publish",
            "--tracker",
            &one.url,
            "--tag",
            "ci/app:v1",
            "--origin-url",
            url,
            "-",
        ],
        manifest.as_bytes(),
    );
    let id = published.ok().trim().to_string();
    // The other tracker reads them (and keeps a copy) before Redis goes.
    let key = two.get_json(&format!("/assets/{id}/key"))["key"].clone();
    assert!(key.is_string(), "{key}");
    assert_eq!(two.get_json("/tags/ci/app:v1")["id"], id.as_str());
    assert_eq!(
        two.get_json(&format!("/assets/{id}/origins"))["origin_urls"],
        serde_json::json!([url])
    );
    let port = redis.port;
    redis.proc.signal("KILL");
    redis.proc.wait();
    let redis = RedisProc::start(d, Some(port));
    // Each tracker gives its copies back; the first request after the restart may meet
    // the dropped connection (503) and is retried.
    eventually("the tag back", Duration::from_secs(10), || {
        call("GET", &format!("{}/tags/ci/app:v1", two.url), "", None).0 == 200
    });
    let (status, answer) = call("GET", &format!("{}/assets/{id}/key", two.url), "", None);
    assert_eq!((status, &answer["key"]), (200, &key), "{answer}");
    let listed = one.get_json(&format!("/assets/{id}/origins"));
    assert_eq!(listed["origin_urls"], serde_json::json!([url]), "{listed}");
    drop(redis);
}
