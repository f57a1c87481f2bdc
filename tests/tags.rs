//! Names and tags, unpublishing, retention, and tokens reloaded without a restart (issue 16).

use std::path::Path;
use std::time::{Duration, Instant};

use swarmcache::wire::{Message, code};

use crate::harness::{
    ServerProc, TrackerProc, connect, eventually, get, handshake, random_file, run,
};

/// `tracker token --auth auth.toml …` in `d`; returns the token.
fn token(d: &Path, name: &str, rights: &[&str]) -> String {
    let mut args = vec!["token", "--auth", "auth.toml", "--name", name];
    args.extend_from_slice(rights);
    run(d, "tracker", &args, b"").ok().trim().to_string()
}

/// `chunkify FILE | peer_client publish --tag TAG -` plus `extra`.
fn publish_tagged(
    d: &Path,
    tracker: &str,
    file: &str,
    tag: &str,
    extra: &[&str],
) -> crate::harness::Run {
    let manifest = run(d, "chunkify", &["--chunk-size", "64KiB", file], b"");
    let mut args = vec!["publish", "--tracker", tracker, "--tag", tag];
    args.extend_from_slice(extra);
    args.push("-");
    run(d, "peer_client", &args, manifest.ok().as_bytes())
}

/// A request to the tracker with `token` (may be empty): the status and the JSON body.
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

#[test]
fn a_tag_resolves_moves_keeps_its_history_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = random_file(&d.join("a.bin"), 300_000, 160);
    let b = random_file(&d.join("b.bin"), 200_000, 161);
    let mut tracker = TrackerProc::start(d, &[]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["a.bin", "b.bin"],
        &["--origin"],
    );
    let (a_id, b_id) = (origin.seeded[0].clone(), origin.seeded[1].clone());

    // Publish with a tag prints the id, as a plain publish does.
    let published = publish_tagged(d, &tracker.url, "a.bin", "ci/app:latest", &[]);
    assert_eq!(published.ok().trim(), a_id);
    // NAME:TAG and NAME (meaning :latest) both get it, byte for byte.
    for (n, reference) in ["ci/app:latest", "ci/app"].iter().enumerate() {
        let out = format!("a{n}.out");
        let run = get(
            d,
            &tracker.url,
            reference,
            &out,
            &format!("s{n}"),
            &["--no-serve"],
        );
        assert!(run.ok().contains(&a_id), "{}", run.stdout);
        assert!(run.stderr.contains(&format!("is {a_id}")), "{}", run.stderr);
        assert!(std::fs::read(d.join(&out)).unwrap() == a, "{reference}");
    }
    // Moving it: the next get takes the new asset.
    let moved = run(
        d,
        "peer_client",
        &["tag", "ci/app:latest", &b_id, "--tracker", &tracker.url],
        b"",
    );
    assert!(moved.ok().is_empty());
    assert!(
        moved
            .stderr
            .contains(&format!("moved from {a_id} to {b_id}")),
        "{}",
        moved.stderr
    );
    get(d, &tracker.url, "ci/app", "b.out", "s2", &["--no-serve"]).ok();
    assert!(std::fs::read(d.join("b.out")).unwrap() == b);
    // The history: both moves, oldest first, when and by whom.
    let history = tracker.get_json("/tags/ci/app");
    let latest = &history["tags"][0];
    assert_eq!(latest["tag"], "latest", "{history}");
    assert_eq!(latest["id"], b_id.as_str(), "{history}");
    let moves = latest["history"].as_array().unwrap();
    assert_eq!(moves.len(), 2, "{history}");
    assert_eq!(
        (moves[0]["id"].as_str(), moves[1]["id"].as_str()),
        (Some(a_id.as_str()), Some(b_id.as_str()))
    );
    assert_eq!(moves[1]["by"], "127.0.0.1");
    assert!(moves[0]["at"].as_u64().unwrap() <= moves[1]["at"].as_u64().unwrap());
    let listing = run(
        d,
        "peer_client",
        &["tags", "ci/app", "--tracker", &tracker.url],
        b"",
    );
    assert!(
        listing.ok().starts_with(&format!("ci/app:latest {b_id}\n")),
        "{}",
        listing.stdout
    );
    // A tag that does not exist, and a hostile name, are refused with what is wrong.
    let missing = get(d, &tracker.url, "ci/app:v9", "x.out", "s3", &["--no-serve"]);
    assert!(
        missing.code(1).contains("no tag ci/app:v9"),
        "{}",
        missing.stderr
    );
    let hostile = get(d, &tracker.url, "ci/../etc", "x.out", "s3", &["--no-serve"]);
    assert!(
        hostile.code(2).contains("name \"ci/../etc\" is refused"),
        "{}",
        hostile.stderr
    );
    let (status, body) = call(
        "GET",
        &format!("{}/tags/ci/.hidden:latest", tracker.url),
        "",
        None,
    );
    assert_eq!(status, 400, "{body}");
    let (status, body) = call(
        "PUT",
        &format!("{}/tags/ci/app:{}", tracker.url, "t".repeat(65)),
        "",
        Some(&format!("{{\"id\":\"{a_id}\"}}")),
    );
    assert_eq!(status, 400, "{body}");
    // Tags persist: a restarted tracker resolves them as before.
    drop(origin);
    tracker.proc.kill();
    let tracker = TrackerProc::start(d, &[]);
    assert_eq!(tracker.get_json("/tags/ci/app:latest")["id"], b_id.as_str());
    assert_eq!(
        tracker.get_json("/tags/ci/app")["tags"][0]["history"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_token_limited_to_a_name_prefix_may_not_tag_other_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("a.bin"), 100_000, 162);
    let ci = token(d, "ci", &["--publish", "--names", "ci/", "--fetch", "*"]);
    let tracker = TrackerProc::start(d, &["--auth", "auth.toml"]);
    let refused = publish_tagged(
        d,
        &tracker.url,
        "a.bin",
        "prod/app:latest",
        &["--token", &ci],
    );
    let stderr = refused.code(3);
    assert!(
        stderr.contains("403") && stderr.contains("prod/app") && stderr.contains("ci/"),
        "{stderr}"
    );
    // Refused before the body was read: nothing was published.
    let (status, listed) = call("GET", &format!("{}/assets", tracker.url), &ci, None);
    assert_eq!(
        (status, listed.as_array().unwrap().len()),
        (200, 0),
        "{listed}"
    );
    let id = publish_tagged(d, &tracker.url, "a.bin", "ci/app:latest", &["--token", &ci]);
    let id = id.ok().trim().to_string();
    // Moving a tag of another name to a published asset is refused too.
    let moved = run(
        d,
        "peer_client",
        &[
            "tag",
            "prod/app",
            &id,
            "--tracker",
            &tracker.url,
            "--token",
            &ci,
        ],
        b"",
    );
    assert!(moved.code(3).contains("prod/app"), "{}", moved.stderr);
    let (status, tag) = call(
        "GET",
        &format!("{}/tags/ci/app:latest", tracker.url),
        &ci,
        None,
    );
    assert_eq!(
        (status, tag["id"].as_str()),
        (200, Some(id.as_str())),
        "{tag}"
    );
    let (status, _) = call(
        "GET",
        &format!("{}/tags/prod/app:latest", tracker.url),
        &ci,
        None,
    );
    assert_eq!(status, 404);
}

/// An announce of `asset` as peer `tester` with `token`: the ticket of the answer.
fn ticket(tracker: &str, asset: &str, token: &str) -> Vec<u8> {
    let (status, answer) = call(
        "POST",
        &format!("{tracker}/assets/{asset}/announce"),
        token,
        Some(r#"{"peer_id":"tester"}"#),
    );
    assert_eq!(status, 200, "{answer}");
    hex::decode(answer["ticket"].as_str().expect("a ticket")).unwrap()
}

#[test]
fn unpublishing_refuses_new_gets_and_serving_peers_stop_within_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("a.bin"), 300_000, 163);
    let admin = token(
        d,
        "admin",
        &["--publish", "--origin", "--admin", "--fetch", "*"],
    );
    let viewer = token(d, "viewer", &["--fetch", "*"]);
    // A 3 s peer timeout: peers announce every second.
    let heartbeat = Duration::from_secs(1);
    let tracker = TrackerProc::start(d, &["--auth", "auth.toml", "--peer-timeout", "3s"]);
    let mut origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["a.bin"],
        &["--origin", "--token", &admin],
    );
    let id = origin.seeded[0].clone();
    run(
        d,
        "peer_client",
        &[
            "tag",
            "ci/app",
            &id,
            "--tracker",
            &tracker.url,
            "--token",
            &admin,
        ],
        b"",
    )
    .ok();
    get(
        d,
        &tracker.url,
        "ci/app",
        "a.out",
        "s1",
        &["--no-serve", "--token", &viewer],
    )
    .ok();
    // A second server serves the copy that get left in s1, and is told to remove what the
    // tracker unpublishes.
    let mut keeper = ServerProc::start(
        d,
        "s1",
        Some(&tracker.url),
        &[],
        &["--remove-unpublished", "--token", &viewer],
    );
    wait_for_peers_with(&tracker, &id, 2, &admin);
    // A ticket handed out before: the origin serves it now.
    let before = ticket(&tracker.url, &id, &viewer);
    let welcome = handshake(&mut connect(&origin.addr), &id, before.clone());
    assert!(matches!(welcome, Message::Welcome { .. }), "{welcome:?}");

    // Only the admin right unpublishes.
    let denied = run(
        d,
        "peer_client",
        &[
            "unpublish",
            &id,
            "--tracker",
            &tracker.url,
            "--token",
            &viewer,
        ],
        b"",
    );
    assert!(denied.code(3).contains("admin = true"), "{}", denied.stderr);
    let done = run(
        d,
        "peer_client",
        &[
            "unpublish",
            &id,
            "--tracker",
            &tracker.url,
            "--token",
            &admin,
        ],
        b"",
    );
    let unpublished_at = Instant::now();
    assert!(done.ok().is_empty());
    assert!(done.stderr.contains("ci/app:latest"), "{}", done.stderr);

    // No new get, by id or by the tag, and no new ticket: each says it was unpublished.
    let by_id = get(
        d,
        &tracker.url,
        &id,
        "b.out",
        "s2",
        &["--no-serve", "--token", &viewer],
    );
    assert!(by_id.code(1).contains("unpublished"), "{}", by_id.stderr);
    let by_tag = get(
        d,
        &tracker.url,
        "ci/app",
        "c.out",
        "s3",
        &["--no-serve", "--token", &viewer],
    );
    let stderr = by_tag.code(1);
    assert!(
        stderr.contains("ci/app:latest points at asset") && stderr.contains("unpublished"),
        "{stderr}"
    );
    let (status, body) = call(
        "POST",
        &format!("{}/assets/{id}/announce", tracker.url),
        &viewer,
        Some(r#"{"peer_id":"tester"}"#),
    );
    assert_eq!(status, 410, "{body}");
    let (status, _) = call("GET", &format!("{}/assets", tracker.url), &viewer, None);
    assert_eq!(status, 200);
    assert!(tracker_lists_nothing(&tracker.url, &viewer));

    // The serving peer hears at its next beat and refuses the old ticket's holder on the wire.
    let mut refusal = None;
    eventually(
        "the origin refusing the unpublished asset",
        Duration::from_secs(15),
        || match handshake(&mut connect(&origin.addr), &id, before.clone()) {
            Message::Error { code: c, message } if c == code::UNKNOWN_ASSET => {
                refusal = Some((unpublished_at.elapsed(), message.to_string()));
                true
            }
            _ => false,
        },
    );
    let (after, message) = refusal.unwrap();
    eprintln!("the origin refused the unpublished asset {after:?} after the unpublish");
    assert!(message.contains("unpublished"), "{message}");
    // Within a heartbeat, with 2 s for a loaded two-core box to run the beat and this loop.
    assert!(
        after <= heartbeat + Duration::from_secs(2),
        "still served {after:?} after the unpublish"
    );
    eventually("the origin's log line", Duration::from_secs(5), || {
        origin
            .proc
            .stderr()
            .contains(&format!("asset {id} was unpublished; no longer serving it"))
    });
    // Its files stay; the server told to remove them does, and says so.
    assert!(origin.store.join("assets").join(&id).exists());
    eventually("the copy in s1 removed", Duration::from_secs(10), || {
        !keeper.store.join("assets").join(&id).exists()
    });
    let removed = format!("removed unpublished asset {id} from the store");
    eventually("the removal logged", Duration::from_secs(5), || {
        keeper.proc.stderr().contains(&removed)
    });
    origin.proc.kill();
    keeper.proc.kill();
}

/// Waits until the swarm of `id` lists `count` peers, asking with `token`.
fn wait_for_peers_with(tracker: &TrackerProc, id: &str, count: usize, token: &str) {
    let url = format!("{}/assets/{id}/peers", tracker.url);
    eventually(
        &format!("{count} peers of {id}"),
        Duration::from_secs(15),
        || {
            call("GET", &url, token, None)
                .1
                .as_array()
                .is_some_and(|peers| peers.len() == count)
        },
    );
}

/// Whether `GET /assets` lists no asset.
fn tracker_lists_nothing(tracker: &str, token: &str) -> bool {
    let (_, listed) = call("GET", &format!("{tracker}/assets"), token, None);
    listed.as_array().is_some_and(Vec::is_empty)
}

#[test]
fn retention_drops_an_untagged_asset_nobody_announced_and_keeps_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    random_file(&d.join("lone.bin"), 70_000, 164);
    random_file(&d.join("tagged.bin"), 70_000, 165);
    random_file(&d.join("seeded.bin"), 70_000, 166);
    let tracker = TrackerProc::start(d, &["--retain", "2s"]);
    let lone = crate::harness::publish(d, &tracker.url, "lone.bin");
    let tagged = publish_tagged(d, &tracker.url, "tagged.bin", "keep/me", &[])
        .ok()
        .trim()
        .to_string();
    let _seeder = ServerProc::start(d, "seeder", Some(&tracker.url), &["seeded.bin"], &[]);
    let seeded = _seeder.seeded[0].clone();
    let status = |id: &str| call("GET", &format!("{}/assets/{id}", tracker.url), "", None).0;
    assert_eq!(status(&lone), 200);
    eventually(
        "the unannounced asset dropped",
        Duration::from_secs(15),
        || status(&lone) == 410,
    );
    let (_, body) = call("GET", &format!("{}/assets/{lone}", tracker.url), "", None);
    assert!(
        body["error"].as_str().unwrap().contains("by retention"),
        "{body}"
    );
    // The tagged and the announced ones were published as long ago and stay, a sweep later too.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!((status(&tagged), status(&seeded)), (200, 200));
}

#[test]
fn tokens_added_and_revoked_take_effect_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = token(d, "first", &["--fetch", "*"]);
    let tracker = TrackerProc::start(d, &["--auth", "auth.toml"]);
    let assets = format!("{}/assets", tracker.url);
    let status = |token: &str| call("GET", &assets, token, None).0;
    assert_eq!(status(&first), 200);

    // Added: accepted once the tracker sees the file changed.
    let second = token(d, "second", &["--fetch", "*"]);
    eventually("the added token accepted", Duration::from_secs(10), || {
        status(&second) == 200
    });

    // Revoked: refused without a restart; the command says how long its tickets live.
    let revoked = run(
        d,
        "tracker",
        &["token", "--auth", "auth.toml", "--revoke", "first"],
        b"",
    );
    let said = revoked.ok();
    assert!(
        said.contains("at most 630 s") && said.contains("--ticket-ttl 600 s"),
        "{said}"
    );
    eventually("the revoked token refused", Duration::from_secs(10), || {
        status(&first) == 401
    });
    assert_eq!(status(&second), 200);

    // A broken file keeps the tokens loaded before, and the log says why.
    let good = std::fs::read_to_string(d.join("auth.toml")).unwrap();
    std::fs::write(
        d.join("auth.toml"),
        format!("{good}\n[[token]]\nname = \"half"),
    )
    .unwrap();
    eventually(
        "the refusal to reload logged",
        Duration::from_secs(10),
        || tracker.proc.stderr().contains("not reloading"),
    );
    assert!(
        tracker
            .proc
            .stderr()
            .contains("keeping the 1 tokens loaded before"),
        "{}",
        tracker.proc.stderr()
    );
    assert_eq!(status(&second), 200);

    let reloads = || {
        tracker
            .proc
            .stderr()
            .matches("(the file changed): 1 tokens")
            .count()
    };
    let before = reloads();
    std::fs::write(d.join("auth.toml"), &good).unwrap();
    eventually("the good file reloaded", Duration::from_secs(10), || {
        reloads() > before
    });

    // SIGHUP reloads at once, and no longer ends the tracker. The change is made so that
    // polling cannot see it (same inode, length and modification time): the second
    // token's digest swapped for a third token's, in place.
    let (third, third_entry) = swarmcache::auth::new_token("third", &Default::default()).unwrap();
    let digest = |entry: &str| entry.split('"').nth(3).unwrap().to_string();
    let second_digest = hex::encode(swarmcache::manifest::sha256(second.as_bytes()));
    let swapped = good.replace(&second_digest, &digest(&third_entry));
    assert_ne!(swapped, good);
    let path = d.join("auth.toml");
    let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
    std::fs::write(&path, &swapped).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(modified)
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        (status(&second), status(&third)),
        (200, 401),
        "polling saw the change"
    );
    tracker.proc.signal("HUP");
    eventually("the reload on SIGHUP", Duration::from_secs(10), || {
        tracker.proc.stderr().contains("(SIGHUP): 1 tokens")
    });
    assert_eq!(
        (status(&second), status(&third), status(&first)),
        (401, 200, 401)
    );
}

#[test]
fn an_encrypted_asset_published_with_a_tag_is_fetched_by_name_and_decrypted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = random_file(&d.join("app.tar"), 200_000, 167);
    let tracker = TrackerProc::start(d, &[]);
    let manifest = run(
        d,
        "chunkify",
        &[
            "--encrypt",
            "--chunk-size",
            "64KiB",
            "app.tar",
            "--out",
            "app.enc",
        ],
        b"",
    );
    let id = run(
        d,
        "peer_client",
        &[
            "publish",
            "--tracker",
            &tracker.url,
            "--tag",
            "enc/app",
            "-",
        ],
        manifest.ok().as_bytes(),
    );
    let id = id.ok().trim().to_string();
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["app.enc"], &["--origin"]);
    assert_eq!(origin.seeded[0], id);
    get(
        d,
        &tracker.url,
        "enc/app",
        "copy.tar",
        "s1",
        &["--no-serve"],
    )
    .ok();
    assert!(
        std::fs::read(d.join("copy.tar")).unwrap() == plain,
        "decrypted by name"
    );
}
