//! Authority: tokens at the tracker, signed tickets at every peer, key rotation.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use swarmcache::auth::KeyRing;
use swarmcache::wire::{Message, code};

use crate::harness::{
    Proc, ServerProc, TrackerProc, bin, connect, eventually, handshake, random_file, run, run_cmd,
};

/// `tracker token --auth auth.toml …` in `d`; returns the token.
fn token(d: &Path, name: &str, rights: &[&str]) -> String {
    let mut args = vec!["token", "--auth", "auth.toml", "--name", name];
    args.extend_from_slice(rights);
    run(d, "tracker", &args, b"").ok().trim().to_string()
}

/// A new connection's answer to a `Hello` for `asset` with `ticket`.
fn hello(addr: &str, asset: &str, ticket: Vec<u8>) -> Message<'static> {
    handshake(&mut connect(addr), asset, ticket)
}

fn refused_as_unauthorized(answer: &Message) -> bool {
    matches!(answer, Message::Error { code: c, .. } if *c == code::UNAUTHORIZED)
}

/// An announce with `token` (may be empty); returns the HTTP status and the JSON body.
fn announce(tracker: &str, asset: &str, token: &str) -> (u16, serde_json::Value) {
    let mut request = ureq::post(&format!("{tracker}/assets/{asset}/announce"));
    if !token.is_empty() {
        request = request.set("Authorization", &format!("Bearer {token}"));
    }
    match request.send_string(r#"{"peer_id":"tester"}"#) {
        Ok(r) => (r.status(), r.into_json().unwrap()),
        Err(ureq::Error::Status(status, r)) => (status, r.into_json().unwrap()),
        Err(e) => panic!("announce: {e}"),
    }
}

fn ticket_of(answer: &serde_json::Value) -> Vec<u8> {
    hex::decode(answer["ticket"].as_str().expect("a ticket in the answer")).unwrap()
}

#[test]
fn tokens_gate_the_tracker_and_tickets_gate_every_peer() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let a = random_file(&d.join("a.bin"), 300_000, 70);
    random_file(&d.join("b.bin"), 200_000, 71);
    let admin = token(d, "admin", &["--publish", "--origin", "--fetch", "*"]);
    // The viewer's rights name asset a, whose id chunkify tells before anything runs.
    let a_id = run(
        d,
        "chunkify",
        &["--id", "--chunk-size", "64KiB", "a.bin"],
        b"",
    )
    .ok()
    .trim()
    .to_string();
    let viewer = token(d, "viewer", &["--fetch", &a_id]);
    let tracker = TrackerProc::start(d, &["--auth", "auth.toml"]);

    // Without the publish right, or without any token, nothing is published or served.
    let stderr = run_cmd(
        Command::new(bin("peer_server"))
            .args(["--listen", "127.0.0.1:0", "--store", "x", "--seed", "a.bin"])
            .args(["--tracker", &tracker.url, "--token", &viewer])
            .current_dir(d),
        "peer_server with the viewer's token",
        b"",
    );
    assert!(
        stderr.code(3).contains("may not publish"),
        "{}",
        stderr.stderr
    );
    let (status, body) = announce(&tracker.url, &a_id, "");
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token"), "{body}");

    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["a.bin", "b.bin"],
        &["--origin", "--token", &admin],
    );
    let b_id = origin.seeded[1].clone();
    assert_eq!(origin.seeded[0], a_id);

    // The viewer gets a, byte for byte, and nothing of b.
    let get = |id: &str, token: &str, out: &str| {
        let store = format!("{out}.store");
        let mut args = vec!["get", id, "--tracker", &tracker.url, "-o", out];
        args.extend_from_slice(&["--store", &store, "--no-serve"]);
        if !token.is_empty() {
            args.extend_from_slice(&["--token", token]);
        }
        run(d, "peer_client", &args, b"")
    };
    get(&a_id, &viewer, "a.out").ok();
    assert!(std::fs::read(d.join("a.out")).unwrap() == a);
    assert!(get(&b_id, &viewer, "b.out").code(3).contains("403"));
    assert!(get(&a_id, "", "a2.out").code(3).contains("401"));
    let listed = ureq::get(&format!("{}/assets", tracker.url))
        .set("Authorization", &format!("Bearer {viewer}"))
        .call()
        .unwrap()
        .into_json::<serde_json::Value>()
        .unwrap();
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "viewer sees only a: {listed}"
    );

    // The origin serves only a valid, unexpired ticket for the asset asked for.
    assert!(refused_as_unauthorized(&hello(&origin.addr, &a_id, vec![])));
    let (status, answer) = announce(&tracker.url, &a_id, &viewer);
    assert_eq!(status, 200, "{answer}");
    let ticket = ticket_of(&answer);
    assert!(matches!(
        hello(&origin.addr, &a_id, ticket.clone()),
        Message::Welcome { .. }
    ));
    assert!(refused_as_unauthorized(&hello(
        &origin.addr,
        &b_id,
        ticket.clone()
    )));
    let mut tampered = ticket.clone();
    tampered[20] ^= 1;
    assert!(refused_as_unauthorized(&hello(
        &origin.addr,
        &a_id,
        tampered
    )));
    let stranger = tempfile::tempdir().unwrap();
    let forged = KeyRing::load_or_create(stranger.path()).unwrap().issue(
        &a_id.parse().unwrap(),
        "tester",
        Duration::from_secs(600),
    );
    assert!(refused_as_unauthorized(&hello(&origin.addr, &a_id, forged)));

    // A client serving while it downloads checks tickets too.
    let mut seeder = Proc::spawn(
        d,
        "peer_client",
        &[
            "get",
            &a_id,
            "--tracker",
            &tracker.url,
            "-o",
            "a3.out",
            "--store",
            "seeder",
            "--token",
            &viewer,
            "--listen",
            "127.0.0.1:0",
            "--seed-for",
            "60s",
            "--json",
        ],
    );
    let summary = seeder.summary();
    assert_eq!(summary["size"], 300_000);
    let peers = tracker_peers(&tracker, &a_id, &admin);
    let seeder_addr = peers
        .iter()
        .map(|p| p["addr"].as_str().unwrap().to_string())
        .next()
        .expect("the seeding client is listed");
    assert!(refused_as_unauthorized(&hello(&seeder_addr, &a_id, vec![])));
    assert!(matches!(
        hello(&seeder_addr, &a_id, ticket),
        Message::Welcome { .. }
    ));
}

fn tracker_peers(tracker: &TrackerProc, id: &str, token: &str) -> Vec<serde_json::Value> {
    ureq::get(&format!("{}/assets/{id}/peers", tracker.url))
        .set("Authorization", &format!("Bearer {token}"))
        .call()
        .unwrap()
        .into_json::<Vec<serde_json::Value>>()
        .unwrap()
}

#[test]
fn a_rotated_key_is_learned_by_running_peers_and_old_tickets_still_pass() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = random_file(&d.join("f.bin"), 200_000, 72);
    let admin = token(d, "admin", &["--publish", "--origin", "--fetch", "*"]);
    let mut tracker = TrackerProc::start(d, &["--auth", "auth.toml"]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["f.bin"],
        &["--origin", "--token", &admin, "--announce-interval", "1s"],
    );
    let id = origin.seeded[0].clone();
    let old_ticket = ticket_of(&announce(&tracker.url, &id, &admin).1);

    // Rotate, and restart the tracker on the same address with the new key.
    let keys = run(d, "tracker", &["keygen", "--data", "tracker-data"], b"");
    assert_eq!(keys.ok().lines().count(), 2, "new and previous public key");
    let addr = tracker.url.trim_start_matches("http://").to_string();
    tracker.proc.kill();
    tracker = TrackerProc::start_on(d, &addr, &["--auth", "auth.toml"]);

    // The origin learned its keys before the rotation; a ticket from the new key makes it
    // fetch them again, and a get through it works.
    let new_ticket = ticket_of(&announce(&tracker.url, &id, &admin).1);
    eventually(
        "the origin to announce to the restarted tracker",
        Duration::from_secs(30),
        || {
            tracker_peers(&tracker, &id, &admin)
                .iter()
                .any(|p| p["origin"] == true)
        },
    );
    assert_ne!(
        new_ticket[4..12],
        old_ticket[4..12],
        "signed by another key"
    );
    assert!(matches!(
        hello(&origin.addr, &id, new_ticket),
        Message::Welcome { .. }
    ));
    assert!(matches!(
        hello(&origin.addr, &id, old_ticket),
        Message::Welcome { .. }
    ));
    let out = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "-o",
            "f.out",
            "--store",
            "c",
            "--token",
            &admin,
        ],
        b"",
    );
    out.ok();
    assert!(std::fs::read(d.join("f.out")).unwrap() == bytes);
}
