//! Encrypted assets: ciphertext in every store and on the peer wire, plaintext only in the
//! outputs, keys only from the tracker to holders of the fetch right on a private channel.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::harness::{
    ServerProc, TrackerProc, bin, get, http_from, http_get, run, run_cmd, stored_chunks,
};

/// The plaintext's marker: no file of any store, nor a byte on the wire, may hold it.
const MARKER: &str = "PLAINTEXT-MARKER-7f3a";

/// About `len` bytes of text, the marker on every line (numbered, so no two chunks match).
fn marked_text(len: usize) -> String {
    let mut text = String::with_capacity(len + 64);
    let mut line = 0;
    while text.len() < len {
        text.push_str(&format!("{MARKER} line {line:08}\n"));
        line += 1;
    }
    text
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    // Bounded: a store is a few levels deep and holds a few files.
    for _ in 0..10_000 {
        let Some(at) = todo.pop() else { break };
        let Ok(entries) = fs::read_dir(&at) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if fs::read(&path).is_ok_and(|b| contains(&b, needle)) {
                found.push(path);
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A TCP relay between clients and one server that records every byte either way: the
/// origin advertises the relay's address, so the test sees the peer wire.
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<Option<SocketAddr>>>,
    recorded: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    /// Most connections relayed, and how long the relay runs at most.
    const MAX_CONNS: usize = 64;
    const LIFETIME: Duration = Duration::from_secs(120);

    fn start() -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            target: Arc::default(),
            recorded: Arc::default(),
            stop: Arc::default(),
        };
        let (target, recorded, stop) = (
            Arc::clone(&relay.target),
            Arc::clone(&relay.recorded),
            Arc::clone(&relay.stop),
        );
        std::thread::spawn(move || {
            let deadline = Instant::now() + Self::LIFETIME;
            let mut conns = 0;
            while conns < Self::MAX_CONNS
                && Instant::now() < deadline
                && !stop.load(Ordering::SeqCst)
            {
                match listener.accept() {
                    Ok((client, _)) => {
                        conns += 1;
                        let Some(to) = *target.lock().unwrap() else {
                            continue;
                        };
                        let Ok(server) = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                        else {
                            continue;
                        };
                        client.set_nonblocking(false).unwrap();
                        pipe(
                            client.try_clone().unwrap(),
                            server.try_clone().unwrap(),
                            &recorded,
                        );
                        pipe(server, client, &recorded);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        relay
    }

    fn bytes(&self) -> Vec<u8> {
        self.recorded.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to` on a thread, recording what passes; ends when either side closes
/// or stays silent for 30 s.
fn pipe(mut from: TcpStream, mut to: TcpStream, recorded: &Arc<Mutex<Vec<u8>>>) {
    let recorded = Arc::clone(recorded);
    from.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    to.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    recorded.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// The content key the tracker holds for `id` (hex), read from its 0600 file.
fn tracker_key(d: &Path, id: &str) -> String {
    let path = d
        .join("tracker-data/content-keys")
        .join(format!("{id}.key"));
    let text = fs::read_to_string(&path).unwrap();
    text.trim()
        .strip_prefix("aes-128-ctr:")
        .unwrap()
        .to_string()
}

#[test]
fn an_encrypted_seed_is_ciphertext_in_every_store_and_on_the_wire_and_plaintext_out() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = marked_text(600_000);
    fs::write(d.join("plain.txt"), &text).unwrap();
    let tracker = TrackerProc::start(d, &[]);
    let relay = Relay::start();
    let relay_addr = relay.addr.to_string();
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["plain.txt"],
        &["--origin", "--encrypt", "--advertise-addr", &relay_addr],
    );
    *relay.target.lock().unwrap() = Some(origin.addr.parse().unwrap());
    let id = origin.seeded[0].clone();
    // The id is the ciphertext's: not the plaintext's, and it names nothing of it.
    let plain_id = run(
        d,
        "chunkify",
        &["--id", "--chunk-size", "64KiB", "plain.txt"],
        b"",
    );
    assert_ne!(plain_id.ok().trim(), id);

    get(d, &tracker.url, &id, "out.txt", "a", &["--no-serve"]).ok();
    assert_eq!(fs::read_to_string(d.join("out.txt")).unwrap(), text);
    let streamed = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--stream",
            "--store",
            "b",
            "--no-serve",
        ],
        b"",
    );
    assert!(streamed.ok() == text, "the stream is not the plaintext");
    // A second get is a local hit: still plaintext out, the key asked of the tracker again.
    get(d, &tracker.url, &id, "again.txt", "a", &["--no-serve"]).ok();
    assert_eq!(fs::read_to_string(d.join("again.txt")).unwrap(), text);

    for store in ["origin", "a", "b", "tracker-data"] {
        let found = files_containing(&d.join(store), MARKER.as_bytes());
        assert!(found.is_empty(), "plaintext in {found:?}");
    }
    assert!(d.join("a/assets").join(&id).join("encrypted").exists());
    let wire = relay.bytes();
    assert!(
        wire.len() >= 2 * text.len(),
        "both downloads went through the relay: {} bytes seen",
        wire.len()
    );
    assert!(
        !contains(&wire, MARKER.as_bytes()),
        "plaintext on the peer wire"
    );

    // The key: in a file of mode 0600 only, never in listings, figures or logs.
    let key = tracker_key(d, &id);
    let key_file = d
        .join("tracker-data/content-keys")
        .join(format!("{id}.key"));
    assert_eq!(
        fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    for path in [
        "/assets",
        "/stats",
        "/metrics",
        &format!("/assets/{id}"),
        &format!("/assets/{id}/peers"),
    ] {
        let answer = http_get(&format!("{}{path}", tracker.url));
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert!(!answer.body.contains(&key), "{path} shows the key");
    }
    for (who, log) in [
        ("tracker", tracker.proc.stderr()),
        ("origin", origin.proc.stderr()),
    ] {
        assert!(!log.contains(&key), "the {who}'s log shows the key:\n{log}");
    }
    let answer = http_get(&format!("{}/assets/{id}/key", tracker.url));
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains(&key),
        "loopback gets the key: {}",
        answer.body
    );
}

#[test]
fn chunkify_encrypt_hands_the_key_to_publish_only_and_the_ciphertext_seeds_as_is() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = marked_text(300_000);
    fs::write(d.join("plain.txt"), &text).unwrap();
    let encrypt = |out: &str| {
        run(
            d,
            "chunkify",
            &[
                "--encrypt",
                "--chunk-size",
                "64KiB",
                "plain.txt",
                "--out",
                out,
            ],
            b"",
        )
        .ok()
        .to_string()
    };
    let manifest = encrypt("c.enc");
    assert!(manifest.contains("key = \"aes-128-ctr:"), "{manifest}");
    let cipher = fs::read(d.join("c.enc")).unwrap();
    assert_eq!(cipher.len(), text.len(), "CTR keeps sizes");
    assert!(!contains(&cipher, MARKER.as_bytes()));
    // A new key each time: the same file encrypted twice is two assets.
    let other = encrypt("d.enc");
    assert_ne!(fs::read(d.join("d.enc")).unwrap(), cipher);
    assert_ne!(other, manifest);
    // The manifest verifies the ciphertext without the key.
    fs::write(d.join("m.toml"), &manifest).unwrap();
    run(d, "chunkify", &["verify", "m.toml", "c.enc"], b"").ok();

    let tracker = TrackerProc::start(d, &[]);
    let publish = |text: &str| {
        run(
            d,
            "peer_client",
            &["publish", "--tracker", &tracker.url, "-"],
            text.as_bytes(),
        )
    };
    let id = publish(&manifest).ok().trim().to_string();
    let key = tracker_key(d, &id);
    assert!(manifest.contains(&key));
    // The catalog's manifest has no key; a publish may repeat it, never change it.
    let stored = http_get(&format!("{}/assets/{id}", tracker.url)).body;
    assert!(
        !stored.contains("key") && !stored.contains(&key),
        "{stored}"
    );
    publish(&manifest).ok();
    let swapped = manifest.replace(&key, &"0".repeat(32));
    assert!(publish(&swapped).code(1).contains("another content key"));
    assert_eq!(tracker_key(d, &id), key);

    // Seeded as it is (no --encrypt), the ciphertext serves; the get decrypts.
    let origin = ServerProc::start(d, "origin", Some(&tracker.url), &["c.enc"], &["--origin"]);
    assert_eq!(origin.seeded[0], id);
    get(d, &tracker.url, &id, "out.txt", "client", &["--no-serve"]).ok();
    assert_eq!(fs::read_to_string(d.join("out.txt")).unwrap(), text);
    assert!(files_containing(&d.join("client"), MARKER.as_bytes()).is_empty());
    assert!(files_containing(&d.join("origin"), MARKER.as_bytes()).is_empty());

    // Without a tracker, the store's ciphertext is never handed out.
    let offline = run(
        d,
        "peer_client",
        &["get", &id, "-o", "offline.txt", "--store", "client"],
        b"",
    );
    assert!(
        offline.code(1).contains("key comes only from the tracker"),
        "{}",
        offline.stderr
    );
    assert!(!d.join("offline.txt").exists());

    // The key outlives the tracker, killed without a chance to flush anything.
    let mut tracker = tracker;
    tracker.proc.kill();
    let restarted = TrackerProc::start(d, &[]);
    let answer = http_get(&format!("{}/assets/{id}/key", restarted.url));
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains(&key), "{}", answer.body);
}

#[test]
fn a_viewer_without_the_fetch_right_gets_neither_key_nor_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = marked_text(200_000);
    fs::write(d.join("plain.txt"), &text).unwrap();
    let token = |name: &str, rights: &[&str]| {
        let mut args = vec!["token", "--auth", "auth.toml", "--name", name];
        args.extend_from_slice(rights);
        run(d, "tracker", &args, b"").ok().trim().to_string()
    };
    let admin = token("admin", &["--publish", "--origin", "--fetch", "*"]);
    let other = "ab".repeat(32);
    let viewer = token("viewer", &["--fetch", &other]);
    let tracker = TrackerProc::start(d, &["--auth", "auth.toml"]);
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&tracker.url),
        &["plain.txt"],
        &["--origin", "--encrypt", "--token", &admin],
    );
    let id = origin.seeded[0].clone();
    let key = tracker_key(d, &id);

    let refused = http_from(
        IpAddr::from([127, 0, 0, 1]),
        &tracker.url,
        "GET",
        &format!("/assets/{id}/key"),
        Some(&viewer),
        None,
    );
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(!refused.body.contains(&key));
    let anonymous = http_from(
        IpAddr::from([127, 0, 0, 1]),
        &tracker.url,
        "GET",
        &format!("/assets/{id}/key"),
        None,
        None,
    );
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);
    assert!(!anonymous.body.contains(&key));

    let got = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--token",
            &viewer,
            "-o",
            "v.txt",
            "--store",
            "v",
        ],
        b"",
    );
    got.code(3);
    assert!(!d.join("v.txt").exists());
    assert_eq!(stored_chunks(&d.join("v"), &id), 0, "the viewer got chunks");

    // The holder of the right gets the plaintext.
    let ok = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &tracker.url,
            "--token",
            &admin,
            "-o",
            "ok.txt",
            "--store",
            "ok",
            "--no-serve",
        ],
        b"",
    );
    ok.ok();
    assert_eq!(fs::read_to_string(d.join("ok.txt")).unwrap(), text);
}

/// An address of this host that is not loopback (the one its default route leaves from),
/// if it has one: connections to it come from it, so the tracker sees another host.
fn non_loopback_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    // No packet is sent: connecting a UDP socket only picks the route and source address.
    socket.connect("192.0.2.200:9").ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

#[test]
fn a_client_the_tracker_gives_no_key_fails_saying_why_and_keys_never_cross_plain_http() {
    let Some(ip) = non_loopback_address() else {
        eprintln!("skipped: this host has no address but loopback");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = marked_text(200_000);
    fs::write(d.join("plain.txt"), &text).unwrap();
    let tracker = TrackerProc::start_on(d, "0.0.0.0:0", &[]);
    let port = tracker.url.rsplit(':').next().unwrap().to_string();
    let local = format!("http://127.0.0.1:{port}");
    let remote = format!("http://{ip}:{port}");
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&local),
        &["plain.txt"],
        &["--origin", "--encrypt"],
    );
    let id = origin.seeded[0].clone();
    let key = tracker_key(d, &id);

    // Over plain HTTP from another address: no key, and the reason.
    let asked = http_from(ip, &remote, "GET", &format!("/assets/{id}/key"), None, None);
    assert_eq!(asked.status, 403, "{}", asked.body);
    assert!(asked.body.contains("only over TLS"), "{}", asked.body);
    assert!(!asked.body.contains(&key));
    let got = run(
        d,
        "peer_client",
        &[
            "get",
            &id,
            "--tracker",
            &remote,
            "-o",
            "out.txt",
            "--store",
            "c",
            "--no-serve",
        ],
        b"",
    );
    let stderr = got.code(3);
    assert!(
        stderr.contains("gives its key only over TLS") && stderr.contains("https://"),
        "{stderr}"
    );
    assert!(!d.join("out.txt").exists());
    assert_eq!(stored_chunks(&d.join("c"), &id), 0);

    // A key is never sent in clear to another host: the client refuses, and the tracker
    // refuses one that came anyway (and keeps nothing of it).
    let manifest = run(
        d,
        "chunkify",
        &[
            "--encrypt",
            "--chunk-size",
            "64KiB",
            "plain.txt",
            "--out",
            "c.enc",
        ],
        b"",
    )
    .ok()
    .to_string();
    let publish = run(
        d,
        "peer_client",
        &["publish", "--tracker", &remote, "-"],
        manifest.as_bytes(),
    );
    assert!(
        publish.code(1).contains("refusing to send the content key"),
        "{}",
        publish.stderr
    );
    let new_id = run(
        d,
        "chunkify",
        &["--id", "--chunk-size", "64KiB", "c.enc"],
        b"",
    )
    .ok()
    .trim()
    .to_string();
    let sent = raw_publish(ip, &remote, &manifest);
    assert!(sent.starts_with("HTTP/1.1 403"), "{sent}");
    assert!(
        !d.join("tracker-data/content-keys")
            .join(format!("{new_id}.key"))
            .exists()
    );
    assert_eq!(http_get(&format!("{local}/assets/{new_id}")).status, 404);
    // A peer_server with --encrypt refuses such a tracker before it encrypts anything.
    let refused = run_cmd(
        std::process::Command::new(bin("peer_server"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--store",
                "s2",
                "--seed",
                "plain.txt",
                "--encrypt",
            ])
            .args(["--tracker", &remote])
            .current_dir(d),
        "peer_server --encrypt to a plain-HTTP tracker on another host",
        b"",
    );
    assert!(
        refused.code(1).contains("refusing to send content keys"),
        "{}",
        refused.stderr
    );
}

/// POSTs `manifest` to `/assets` from `from`, as a client that ignores the rules would;
/// returns the whole answer.
fn raw_publish(from: IpAddr, url: &str, manifest: &str) -> String {
    use rustix::net::{AddressFamily, SocketType, bind, connect, socket};
    let to: SocketAddr = url.trim_start_matches("http://").parse().unwrap();
    let fd = socket(AddressFamily::INET, SocketType::STREAM, None).unwrap();
    bind(&fd, &SocketAddr::new(from, 0)).unwrap();
    connect(&fd, &to).unwrap();
    let mut stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let head = format!(
        "POST /assets HTTP/1.1\r\nHost: {to}\r\nContent-Type: application/toml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        manifest.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(manifest.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}
