//! TLS for the HTTP server: the certificate chain and key loaded from PEM files into a
//! rustls [`ServerConfig`] (checked at start, so a bad file is a clear error before the
//! server listens), and the last words of a connection refused before its handshake, which
//! a refuser thread writes after completing the handshake itself.
//!
//! Where the TLS session lives, and why: in the connection's `Socket` (`conn`), next
//! to the `TcpStream` it runs over, so that it travels with the connection between the
//! poller and the workers exactly as the socket does. The poller drives the handshake
//! without blocking (`read_tls`, `process_new_packets`, `write_tls` until `WouldBlock`, and
//! `EPOLLOUT` in the connection's interest while rustls has bytes the socket did not take),
//! so a client that stalls its handshake costs the poller a few kilobytes and no worker,
//! and its time counts against the request deadline from the accept, like a request head
//! that trickles in. Workers read and write through the same session with the same
//! per-phase deadlines as on a plain socket. A session per connection is the only shape
//! that fits: rustls keeps per-connection record state, and our connections move.
//!
//! The cost: the handshake's cryptography runs on the poller thread. Measured (release,
//! loopback, two shared cores, an ECDSA P-256 certificate; `openssl s_time`, and a Python
//! loop for plain HTTP; one request per connection), a connection costs the tracker
//! 0.17 ms of CPU in plain HTTP, 0.48 ms with a full TLS 1.3 handshake and 0.36 ms resumed
//! (resumption still does an ECDHE). A thousand peers announcing every 20 s on fresh
//! connections are 50 handshakes a second, 2.4 % of a core; a crowd of a thousand
//! connecting at once keeps the poller busy for about half a second. An RSA-2048 key signs
//! several times slower than P-256:
//! prefer EC keys.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::net::{CLOSE_LINGER, linger_close};

/// A PEM file larger than this is not a certificate chain or a key (a chain of ten
/// certificates is some 20 KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads the PEM file `path` (a TLS `what`: "certificate", "key"), bounded by
/// 1 MiB (no chain or key is near that).
pub fn read_pem(path: &Path, what: &str) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_PEM_BYTES + 1).read_to_end(&mut bytes))
        .with_context(|| format!("reading the TLS {what} file {}", path.display()))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        bail!(
            "the TLS {what} file {} is over {MAX_PEM_BYTES} bytes: not a PEM {what}",
            path.display()
        );
    }
    Ok(bytes)
}

/// The certificates of a PEM chain, leaf first; an error names `source` when it holds none.
pub fn parse_certs(pem: &[u8], source: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{source}: not a valid PEM certificate chain: {e}"))?;
    if certs.is_empty() {
        bail!(
            "{source} holds no certificate (a PEM \"BEGIN CERTIFICATE\" block); is it the key file?"
        );
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
fn parse_key(pem: &[u8], source: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow!(
            "{source} holds no private key (a PEM \"BEGIN PRIVATE KEY\" block); is it the certificate file?"
        ),
        e => anyhow!("{source}: not a valid PEM private key: {e}"),
    })
}

/// The server side of TLS from PEM text: `cert` (the chain, leaf first) and `key` (its
/// private key), named `cert_source` and `key_source` in errors. Pure: for tests.
pub fn server_config_from_pem(
    cert: &[u8],
    key: &[u8],
    cert_source: &str,
    key_source: &str,
) -> Result<Arc<ServerConfig>> {
    let chain = parse_certs(cert, cert_source)?;
    let key = parse_key(key, key_source)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => anyhow!(
                "the key in {key_source} does not belong to the certificate in {cert_source}: pass the key the certificate was issued for"
            ),
            e => anyhow!("{cert_source} and {key_source} cannot serve TLS: {e}"),
        })?;
    // We speak HTTP/1.1 only; a client offering h2 too is told which it gets.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The server side of TLS from a PEM certificate chain file and its key file.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let cert_pem = read_pem(cert, "certificate")?;
    let key_pem = read_pem(key, "key")?;
    server_config_from_pem(
        &cert_pem,
        &key_pem,
        &format!("--tls-cert {}", cert.display()),
        &format!("--tls-key {}", key.display()),
    )
}

/// Whether the first bytes a client sent on a TLS port can open a TLS handshake: a
/// handshake record starts with 0x16. A client speaking plain HTTP (`http://` to an HTTPS
/// tracker) starts with a method's letters, and is told so in plain HTTP.
pub(super) fn looks_like_tls(first: u8) -> bool {
    first == 0x16
}

/// Answers a connection refused before its handshake (past a connection cap) in TLS:
/// completes the handshake, blocking, within about twice [`CLOSE_LINGER`], sends
/// `last_words` and a close_notify, then closes without a reset. A client that does not
/// finish its handshake in time is closed unanswered. Runs on a refuser thread.
pub(super) fn refuse_after_handshake(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    last_words: Vec<u8>,
) {
    let Ok(mut tls) = rustls::ServerConnection::new(config) else {
        return;
    };
    let deadline = Instant::now() + 2 * CLOSE_LINGER;
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(CLOSE_LINGER)).is_err()
        || stream.set_write_timeout(Some(CLOSE_LINGER)).is_err()
    {
        return;
    }
    let mut io = &stream;
    while tls.is_handshaking() {
        if Instant::now() >= deadline || tls.complete_io(&mut io).is_err() {
            return;
        }
    }
    let _ = tls.writer().write_all(&last_words);
    tls.send_close_notify();
    while tls.wants_write() && Instant::now() < deadline {
        match tls.write_tls(&mut io) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    linger_close(&stream);
}

/// Moves what rustls has to send into `out` (ciphertext for a refuser to write).
pub(super) fn drain_into(tls: &mut rustls::ServerConnection, out: &mut Vec<u8>) {
    while tls.wants_write() {
        match tls.write_tls(out) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name`, and its key, in PEM.
    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_matching_chain_and_key_load_and_mistakes_are_named() {
        let (cert, key) = self_signed("tracker.test");
        let config = server_config_from_pem(cert.as_bytes(), key.as_bytes(), "c.pem", "k.pem");
        assert!(config.is_ok(), "{:#}", config.unwrap_err());
        // The two files swapped.
        let swapped =
            server_config_from_pem(key.as_bytes(), cert.as_bytes(), "c.pem", "k.pem").unwrap_err();
        let text = format!("{swapped:#}");
        assert!(text.contains("c.pem holds no certificate"), "{text}");
        assert!(text.contains("is it the key file?"), "{text}");
        let (_, other_key) = self_signed("other.test");
        let text = format!(
            "{:#}",
            server_config_from_pem(cert.as_bytes(), cert.as_bytes(), "c.pem", "k.pem").unwrap_err()
        );
        assert!(text.contains("k.pem holds no private key"), "{text}");
        let text = format!(
            "{:#}",
            server_config_from_pem(cert.as_bytes(), other_key.as_bytes(), "c.pem", "k.pem")
                .unwrap_err()
        );
        assert!(
            text.contains("does not belong to the certificate"),
            "{text}"
        );
        let text = format!(
            "{:#}",
            server_config_from_pem(b"hello", key.as_bytes(), "c.pem", "k.pem").unwrap_err()
        );
        assert!(text.contains("c.pem holds no certificate"), "{text}");
    }

    #[test]
    fn only_a_handshake_record_opens_tls() {
        assert!(looks_like_tls(0x16));
        assert!(!looks_like_tls(b'G'));
        assert!(!looks_like_tls(b'P'));
    }
}
