//! TLS: the tracker over HTTPS with a CA and certificates the test makes (rcgen), clients
//! that verify it against `--ca-cert` or the "system" roots (`SSL_CERT_FILE`, so no real
//! system file is read), clear errors for a wrong host name, an untrusted CA and a scheme
//! mix-up, and a token that never crosses a plaintext socket.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use crate::harness::{ServerProc, TrackerProc, bin, random_file, run, run_cmd};
use crate::netns::Netns;

/// A CA (its certificate in `NAME-ca.pem`) that signs certificates for the names asked
/// (tests/web_seed.rs uses it too).
pub(crate) struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    pub(crate) fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let pem = issuer.pem();
        Ca { issuer, pem }
    }

    /// Writes the CA's certificate to `dir/file`.
    pub(crate) fn write(&self, dir: &Path, file: &str) {
        std::fs::write(dir.join(file), &self.pem).unwrap();
    }

    /// A certificate for `names` signed by this CA, written with its key as `stem.pem`
    /// and `stem.key` in `dir`.
    pub(crate) fn issue(&self, dir: &Path, stem: &str, names: &[&str]) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    }
}

/// `tracker token --auth auth.toml …` in `d`; returns the token.
fn token(d: &Path, name: &str, rights: &[&str]) -> String {
    let mut args = vec!["token", "--auth", "auth.toml", "--name", name];
    args.extend_from_slice(rights);
    run(d, "tracker", &args, b"").ok().trim().to_string()
}

/// A tracker serving HTTPS with `stem.pem` and `stem.key` of `d`, and `extra`; its URL is
/// rewritten to name `host` (the certificate's name) instead of 127.0.0.1.
fn https_tracker(d: &Path, stem: &str, host: &str, extra: &[&str]) -> TrackerProc {
    let (cert, key) = (format!("{stem}.pem"), format!("{stem}.key"));
    let mut args = vec!["--tls-cert", &cert, "--tls-key", &key];
    args.extend_from_slice(extra);
    let mut tracker = TrackerProc::start(d, &args);
    assert!(
        tracker.url.starts_with("https://127.0.0.1:"),
        "{}",
        tracker.url
    );
    tracker.url = tracker.url.replace("127.0.0.1", host);
    tracker
}

/// `chunkify --chunk-size 64KiB FILE` in `d`: the manifest.
fn manifest(d: &Path, file: &str) -> String {
    run(d, "chunkify", &["--chunk-size", "64KiB", file], b"")
        .ok()
        .to_string()
}

#[test]
fn over_https_a_good_chain_publishes_and_serves_an_asset_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("good");
    ca.write(d, "ca.pem");
    ca.issue(d, "tracker", &["localhost"]);
    let bytes = random_file(&d.join("big.bin"), 700_000, 16);
    let admin = token(d, "admin", &["--publish", "--origin", "--fetch", "*"]);
    let tracker = https_tracker(d, "tracker", "localhost", &["--auth", "auth.toml"]);
    let url = tracker.url.clone();
    // Publish through the "system" roots: rustls-native-certs reads SSL_CERT_FILE first.
    let published = run_cmd(
        Command::new(bin("peer_client"))
            .args(["publish", "--tracker", &url, "--token", &admin, "-"])
            .env("SSL_CERT_FILE", d.join("ca.pem"))
            .env_remove("SSL_CERT_DIR")
            .current_dir(d),
        "peer_client publish over https with SSL_CERT_FILE",
        manifest(d, "big.bin").as_bytes(),
    );
    let id = published.ok().trim().to_string();
    assert_eq!(id.len(), 64, "{id}");
    let tls = ["--token", &admin, "--ca-cert", "ca.pem"];
    let _origin = ServerProc::start(d, "origin", Some(&url), &["big.bin"], &{
        let mut flags = vec!["--origin"];
        flags.extend_from_slice(&tls);
        flags
    });
    // The CA from the variable, as a fleet's environment gives it.
    let args = [
        "get",
        &id,
        "--tracker",
        &url,
        "-o",
        "copy.bin",
        "--store",
        "client",
        "--token",
        &admin,
    ];
    run_cmd(
        Command::new(bin("peer_client"))
            .args(args)
            .env("SWARMCACHE_CA_CERT", d.join("ca.pem"))
            .current_dir(d),
        "peer_client get over https with SWARMCACHE_CA_CERT",
        b"",
    )
    .ok();
    assert!(
        std::fs::read(d.join("copy.bin")).unwrap() == bytes,
        "the copy is exact"
    );
    // The tracker's /health over HTTPS names no secret; a handler knows it came over TLS
    // (part B uses that); here the catalog lists the asset for the token holder.
    let listed = run(
        d,
        "peer_client",
        &[
            "publish",
            "--tracker",
            &url,
            "--token",
            &admin,
            "--ca-cert",
            "ca.pem",
            "-",
        ],
        manifest(d, "big.bin").as_bytes(),
    );
    assert_eq!(listed.ok().trim(), id, "publishing again gives the same id");
}

#[test]
fn a_wrong_host_name_an_untrusted_ca_and_a_scheme_mix_up_fail_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("good");
    ca.write(d, "ca.pem");
    Ca::new("other").write(d, "other-ca.pem");
    // Issued for a name that is not the one dialled.
    ca.issue(d, "tracker", &["tracker.test"]);
    let tracker = https_tracker(d, "tracker", "localhost", &[]);
    let publish = |url: &str, ca_file: &str| {
        run(
            d,
            "peer_client",
            &["publish", "--tracker", url, "--ca-cert", ca_file, "-"],
            manifest_bytes(),
        )
    };
    let wrong_name = publish(&tracker.url, "ca.pem");
    let text = wrong_name.code(3);
    assert!(text.contains("wrong host name"), "{text}");
    assert!(
        text.contains("not valid for the host name localhost"),
        "{text}"
    );
    assert!(text.contains("reissue the certificate"), "{text}");
    let untrusted = publish(&tracker.url, "other-ca.pem");
    let text = untrusted.code(3);
    assert!(text.contains("untrusted CA"), "{text}");
    assert!(text.contains("--ca-cert FILE"), "{text}");
    // Plain http:// to the HTTPS port: told to use https://.
    let plain_url = tracker.url.replace("https://", "http://");
    let text = publish(&plain_url, "ca.pem").code(1).to_string();
    assert!(
        text.contains("serves HTTPS on this port: use an https:// URL"),
        "{text}"
    );
    // https:// to a plain tracker: told it does not speak TLS.
    std::fs::create_dir(d.join("plain")).unwrap();
    let plain = TrackerProc::start(&d.join("plain"), &[]);
    let text = publish(&plain.url.replace("http://", "https://"), "ca.pem")
        .code(3)
        .to_string();
    assert!(text.contains("answered, but not in TLS"), "{text}");
    // A CA file that holds no certificate.
    std::fs::write(d.join("empty.pem"), "not a certificate\n").unwrap();
    let text = publish(&tracker.url, "empty.pem").code(1).to_string();
    assert!(
        text.contains("--ca-cert empty.pem holds no certificate"),
        "{text}"
    );
}

/// A manifest of a small file, made once per call (the tests need only some manifest).
fn manifest_bytes() -> &'static [u8] {
    static MANIFEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    MANIFEST
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            random_file(&dir.path().join("m.bin"), 100_000, 3);
            manifest(dir.path(), "m.bin")
        })
        .as_bytes()
}

#[test]
fn bad_certificate_or_key_files_stop_the_tracker_at_start_with_a_usage_status() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("good");
    ca.issue(d, "tracker", &["localhost"]);
    ca.issue(d, "other", &["localhost"]);
    let start = |cert: &str, key: &str| {
        run(
            d,
            "tracker",
            &[
                "--listen",
                "127.0.0.1:0",
                "--data",
                "data",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ],
            b"",
        )
    };
    let cases = [
        ("tracker.key", "tracker.pem", "holds no certificate"),
        (
            "tracker.pem",
            "other.key",
            "does not belong to the certificate",
        ),
        (
            "missing.pem",
            "tracker.key",
            "reading the TLS certificate file missing.pem",
        ),
    ];
    for (cert, key, words) in cases {
        let started = start(cert, key);
        let text = started.code(2);
        assert!(text.contains(words), "{cert} {key}: {text}");
        assert!(!text.contains("listening on"), "{text}");
    }
    let lone = run(d, "tracker", &["--tls-cert", "tracker.pem"], b"");
    let text = lone.code(2);
    assert!(text.contains("--tls-key"), "{text}");
}

/// A TCP relay on 127.0.0.1 to `target` that records every byte it passes, both ways.
struct Relay {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (seen.clone(), stop.clone());
        std::thread::spawn(move || {
            // Bounded: the test ends within minutes, and drop sets the flag.
            let until = Instant::now() + Duration::from_secs(300);
            while !stop2.load(Ordering::SeqCst) && Instant::now() < until {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(&target) else {
                            continue;
                        };
                        for (from, to) in [
                            (client.try_clone().unwrap(), server.try_clone().unwrap()),
                            (server, client),
                        ] {
                            let seen = seen2.clone();
                            std::thread::spawn(move || pump(from, to, &seen));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay { addr, seen, stop }
    }

    fn seen(&self) -> Vec<u8> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, recording the bytes, until either side closes or is silent 30 s.
fn pump(mut from: TcpStream, mut to: TcpStream, seen: &Mutex<Vec<u8>>) {
    let _ = from.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = [0u8; 16 << 10];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn over_https_the_token_never_crosses_the_wire_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new("good");
    ca.write(d, "ca.pem");
    ca.issue(d, "tracker", &["localhost"]);
    random_file(&d.join("f.bin"), 200_000, 5);
    let admin = token(d, "admin", &["--publish", "--origin", "--fetch", "*"]);
    let tracker = https_tracker(d, "tracker", "localhost", &["--auth", "auth.toml"]);
    let port = tracker.url.rsplit(':').next().unwrap().to_string();
    let relay = Relay::start(format!("127.0.0.1:{port}"));
    let relay_port = relay.addr.rsplit(':').next().unwrap().to_string();
    let url = format!("https://localhost:{relay_port}");
    let tls = ["--token", admin.as_str(), "--ca-cert", "ca.pem"];
    let mut publish = vec!["publish", "--tracker", &url, "-"];
    publish.extend_from_slice(&tls);
    let id = run(d, "peer_client", &publish, manifest(d, "f.bin").as_bytes())
        .ok()
        .trim()
        .to_string();
    let mut origin = vec!["--origin"];
    origin.extend_from_slice(&tls);
    let _origin = ServerProc::start(d, "origin", Some(&url), &["f.bin"], &origin);
    let mut get = vec![
        "get",
        &id,
        "--tracker",
        &url,
        "-o",
        "copy.bin",
        "--store",
        "c",
    ];
    get.extend_from_slice(&tls);
    run(d, "peer_client", &get, b"").ok();
    let wire = relay.seen();
    assert!(
        wire.len() > 2000,
        "the relay carried the requests: {} bytes",
        wire.len()
    );
    assert_eq!(wire[0], 0x16, "the first byte is a TLS handshake record");
    assert!(
        !contains(&wire, admin.as_bytes()),
        "the token crossed in clear"
    );
    assert!(!contains(&wire, b"Bearer"), "a header crossed in clear");
    // The same through a plain (loopback, so allowed) tracker: the recorder sees the token,
    // so its absence above is TLS's doing.
    std::fs::create_dir(d.join("plain")).unwrap();
    let auth = d.join("auth.toml");
    let plain = TrackerProc::start(&d.join("plain"), &["--auth", auth.to_str().unwrap()]);
    let port = plain.url.rsplit(':').next().unwrap().to_string();
    let plain_relay = Relay::start(format!("127.0.0.1:{port}"));
    let plain_url = format!("http://{}", plain_relay.addr);
    let publish = ["publish", "--tracker", &plain_url, "--token", &admin, "-"];
    run(d, "peer_client", &publish, manifest(d, "f.bin").as_bytes()).ok();
    assert!(contains(&plain_relay.seen(), admin.as_bytes()));
}

#[test]
fn a_token_is_refused_over_plain_http_to_another_host_before_connecting() {
    let Some(ns) = Netns::create("a_token_is_refused_over_plain_http_to_another_host") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A listener of the test's own at the veth address it made: not loopback.
    let listener = TcpListener::bind((ns.host_addr, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let secret = "s3cr3t-token-never-in-clear";
    let refused = run(
        d,
        "peer_client",
        &["publish", "--tracker", &url, "--token", secret, "-"],
        manifest_bytes(),
    );
    let text = refused.code(2);
    assert!(text.contains("refusing to send the token"), "{text}");
    assert!(text.contains("--insecure-http"), "{text}");
    assert!(text.contains("https://"), "{text}");
    let get = run(
        d,
        "peer_client",
        &[
            "get",
            &"ab".repeat(32),
            "--tracker",
            &url,
            "--token",
            secret,
            "--store",
            "s",
        ],
        b"",
    );
    assert!(get.code(2).contains("refusing to send the token"));
    let server = run(
        d,
        "peer_server",
        &[
            "--listen",
            "127.0.0.1:0",
            "--store",
            "srv",
            "--tracker",
            &url,
            "--token",
            secret,
        ],
        b"",
    );
    assert!(server.code(2).contains("refusing to send the token"));
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing connected"
    );
    // Told --insecure-http, the client does connect and the token crosses in clear: what
    // the refusal above prevents.
    let mut client = Command::new(bin("peer_client"))
        .args([
            "publish",
            "--tracker",
            &url,
            "--token",
            secret,
            "--insecure-http",
            "-",
        ])
        .current_dir(d)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    client
        .stdin
        .take()
        .unwrap()
        .write_all(manifest_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("the insecure client never connected: {e}"),
        }
    };
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !contains(&head, b"\r\n\r\n") && head.len() < 64 << 10 {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    assert!(
        contains(&head, secret.as_bytes()),
        "{}",
        String::from_utf8_lossy(&head)
    );
    drop(stream);
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn over_https_a_client_on_another_address_gets_the_key_of_an_encrypted_asset() {
    // A host address the test makes (a veth end in its own namespace): connections to it
    // come from it, so the tracker sees a client that is not on loopback, and gives the
    // key only because the request came over TLS (tests/encrypt.rs has the plain-HTTP
    // refusal).
    let Some(ns) = Netns::create("over_https_a_client_on_another_address_gets_the_key") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let host = ns.host_addr.to_string();
    let ca = Ca::new("good");
    ca.write(d, "ca.pem");
    ca.issue(d, "tracker", &["localhost", &host]);
    let bytes = random_file(&d.join("plain.bin"), 300_000, 44);
    let tracker = TrackerProc::start_on(
        d,
        "0.0.0.0:0",
        &["--tls-cert", "tracker.pem", "--tls-key", "tracker.key"],
    );
    let port = tracker.url.rsplit(':').next().unwrap().to_string();
    let local = format!("https://localhost:{port}");
    let remote = format!("https://{host}:{port}");
    let origin = ServerProc::start(
        d,
        "origin",
        Some(&local),
        &["plain.bin"],
        &["--origin", "--encrypt", "--ca-cert", "ca.pem"],
    );
    let id = origin.seeded[0].clone();
    let args = [
        "get",
        &id,
        "--tracker",
        &remote,
        "--ca-cert",
        "ca.pem",
        "-o",
        "out.bin",
        "--store",
        "c",
        "--no-serve",
    ];
    run(d, "peer_client", &args, b"").ok();
    assert!(
        fs_eq(&d.join("out.bin"), &bytes),
        "the decrypted copy is exact"
    );
}

fn fs_eq(path: &Path, bytes: &[u8]) -> bool {
    std::fs::read(path).is_ok_and(|got| got == bytes)
}
