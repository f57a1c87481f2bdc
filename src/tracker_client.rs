//! The client side of the tracker's HTTP API: publish, fetch manifests, announce (one asset,
//! or a store's many in batches split to the tracker's bounds), over `http://` or
//! `https://`.
//!
//! An `https://` tracker is verified against the system's trusted CAs, read with
//! `rustls-native-certs` (Debian's ca-certificates, `SSL_CERT_FILE`/`SSL_CERT_DIR` when
//! set), or against the CAs of `--ca-cert FILE`. The system store rather than a list built
//! into the binary (webpki-roots): a tracker is most often on a private network with an
//! in-house CA, which administrators add to the system store (`update-ca-certificates`)
//! and which a built-in list never holds; and the store gets security updates without a
//! rebuild. A token never crosses plain `http://` to a tracker not on this host, unless
//! the caller says `--insecure-http`: anyone on the path could replay it.
//!
//! A request no tracker URL answers goes round them a few times (under a second), or, from
//! a [`TrackerClient::patient`] client, for as long as its patience.

mod tags;

use std::io::Read;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::api::{
    AnnounceRequest, AnnounceResponse, BATCH_MAX_BODY, BATCH_MAX_ENTRIES, BatchAnnounceRequest,
    BatchAnnounceResponse, BatchEntry, ContentKeyResponse, ErrorBody, KeysResponse,
    OriginUrlRequest, OriginUrlsResponse, PeerInfo, PublishResponse,
};
use crate::auth::TrackerClock;
use crate::backoff::Backoff;
use crate::crypt::{self, ContentKey};
use crate::failure::Failure;
use crate::manifest::{AssetId, MAX_MANIFEST_BYTES, Manifest};

/// Connecting to a tracker on a LAN takes milliseconds; 5 s covers a loaded one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole request, body included: a 1 Mi-chunk manifest is ~70 MB, which takes well under
/// 30 s on any network worth using.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Tries of a request the tracker answers "busy" (503) or "too many from your address"
/// (429), waiting 100 ms, 200 ms, 400 ms … (jittered down to half, so a crowd behind one
/// address does not retry in step; or the `Retry-After` it gives, at most 2 s) between
/// them: 2 to 4 s in all before the error is reported.
const BUSY_ATTEMPTS: u32 = 6;
const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(2);
/// Rounds over every tracker URL a request makes when none can be reached, with the
/// jittered backoff between rounds (100 ms, 200 ms, 400 ms): a tracker killed or restarting
/// is skipped at once for the next URL, and a moment when all are down (a network blip, a
/// rolling restart) costs under a second before the error is reported.
const FAILOVER_ROUNDS: u32 = 4;
/// How often a patient request's pause between rounds looks whether the process was told
/// to stop: a Ctrl-C is seen within 50 ms.
const PATIENCE_POLL: Duration = Duration::from_millis(50);
/// Most tracker URLs one client takes: a handful of trackers behind one Redis.
pub const MAX_TRACKER_URLS: usize = 16;
/// Largest JSON answer read (an announce answer with 30 partial peers of a huge asset).
const MAX_JSON_ANSWER: u64 = 16 << 20;

/// The tracker answered with an error status; callers that must branch on it downcast.
#[derive(Debug)]
pub struct HttpStatus {
    /// The HTTP status code.
    pub status: u16,
    /// The tracker's error message.
    pub message: String,
}

impl std::fmt::Display for HttpStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for HttpStatus {}

/// How a client talks to an `https://` tracker, and whether it may send a token over plain
/// `http://` to a tracker on another host.
#[derive(Clone, Debug, Default)]
pub struct TrackerTls {
    /// CA certificates (PEM) to verify the tracker with, instead of the system's.
    pub ca_cert: Option<PathBuf>,
    /// Send the token over plain `http://` to a tracker that is not on this host.
    pub insecure_http: bool,
}

/// A tracker at a base URL such as `http://127.0.0.1:7070`, or several trackers serving the
/// same swarms (`URL1,URL2`: trackers sharing one Redis), used one at a time: a request
/// that cannot reach the current one moves every clone of the client to the next.
#[derive(Clone, Debug)]
pub struct TrackerClient {
    bases: Arc<[String]>,
    /// Index in `bases` of the tracker in use; shared by the clones, so one failed
    /// connection moves the whole process on.
    current: Arc<AtomicUsize>,
    agent: ureq::Agent,
    /// For `https://`: the CAs trusted, and the session cache (shared by the clones, so
    /// a peer's heartbeats resume their TLS session instead of a full handshake each).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Whether a token may go over plain HTTP to a tracker on another host.
    insecure_http: bool,
    token: Option<String>,
    /// Tries of a request answered "busy": [`BUSY_ATTEMPTS`], or 1 for a hurried client.
    attempts: u32,
    /// The tracker's clock, set from the `Date` of every answer; shared by the clones.
    clock: Arc<TrackerClock>,
    /// For a patient client: how long a request keeps asking trackers it cannot reach.
    /// Behind a pointer: every peer server's ticket check holds a client, in an enum whose
    /// other variants are empty.
    patience: Option<Arc<Patience>>,
}

/// How long a request keeps going round the tracker URLs while none can be reached, past
/// [`FAILOVER_ROUNDS`], and what tells it to stop sooner (the process was interrupted).
#[derive(Clone, Copy, Debug)]
struct Patience {
    within: Duration,
    stop: fn() -> bool,
}

/// Checks a tracker URL's form and returns it without a trailing `/`: `http://HOST:PORT`
/// or `https://HOST:PORT`. Pure; no request is made.
pub fn check_url(url: &str) -> Result<String> {
    let base = url.trim_end_matches('/').to_string();
    let rest = base
        .strip_prefix("https://")
        .or_else(|| base.strip_prefix("http://"));
    match rest {
        Some(rest) if !host_of(rest).is_empty() => Ok(base),
        _ => bail!("tracker URL {url:?} must look like http://HOST:PORT or https://HOST:PORT"),
    }
}

/// Checks a comma-separated list of tracker URLs (trackers sharing one Redis, tried in
/// turn), each as [`check_url`] does; drops repeats. Pure; no request is made.
pub fn check_urls(list: &str) -> Result<Vec<String>> {
    let mut bases = Vec::new();
    for one in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let base = check_url(one)?;
        if !bases.contains(&base) {
            bases.push(base);
        }
    }
    if bases.is_empty() {
        bail!("no tracker URL in {list:?}: give http://HOST:PORT, or several separated by commas");
    }
    if bases.len() > MAX_TRACKER_URLS {
        bail!(
            "{} tracker URLs in {list:?}: at most {MAX_TRACKER_URLS}",
            bases.len()
        );
    }
    Ok(bases)
}

/// The host of `rest`, a URL after its `scheme://`: `[::1]` (brackets kept), `10.0.0.5`,
/// `tracker.lan`.
fn host_of(rest: &str) -> &str {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &authority[..=h.len()]);
    }
    authority.split(':').next().unwrap_or("")
}

/// Whether `host` (bare, or an IPv6 address in brackets) is this host: a loopback address or
/// `localhost`, which resolvers must map to loopback (RFC 6761). Other names are not
/// resolved: what a name points at can change between the check and the connect.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if bare.trim_end_matches('.').eq_ignore_ascii_case("localhost") {
        return true;
    }
    match bare.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        Err(_) => false,
    }
}

/// The rustls client setup for an `https://` tracker: the CAs of `ca_cert`, or the
/// system's.
pub(crate) fn client_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_cert {
        Some(path) => {
            let source = format!("--ca-cert {}", path.display());
            let pem = crate::http::tls::read_pem(path, "CA certificate")?;
            for cert in crate::http::tls::parse_certs(&pem, &source)? {
                roots
                    .add(cert)
                    .with_context(|| format!("{source}: a certificate is not a usable CA"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                bail!(
                    "found no trusted CA certificates on this system{why} to check an https:// tracker with: install the ca-certificates package, or pass --ca-cert FILE with the CA that signed the tracker's certificate"
                );
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("setting up TLS")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

impl TrackerClient {
    /// Checks the URL's form (see [`check_url`]), verifying an `https://` tracker against
    /// the system's CAs; no request is made yet.
    pub fn new(url: &str) -> Result<TrackerClient> {
        TrackerClient::with_tls(url, &TrackerTls::default())
    }

    /// Like [`TrackerClient::new`], with the CAs and the plain-HTTP rule of `tls`.
    pub fn with_tls(url: &str, tls: &TrackerTls) -> Result<TrackerClient> {
        let bases = check_urls(url)?;
        let config = match bases.iter().any(|b| b.starts_with("https://")) {
            true => Some(client_config(tls.ca_cert.as_deref())?),
            false => None,
        };
        Ok(TrackerClient {
            bases: bases.into(),
            current: Arc::default(),
            agent: agent(CONNECT_TIMEOUT, REQUEST_TIMEOUT, config.as_ref()),
            tls: config,
            insecure_http: tls.insecure_http,
            token: None,
            attempts: BUSY_ATTEMPTS,
            clock: Arc::default(),
            patience: None,
        })
    }

    /// The same tracker, for a request that must be over within `within` whatever the
    /// tracker or the network does: one try, connection and answer bounded by `within`.
    /// For the `"stopped"` announce of a process told to exit, which only spares peers a
    /// failed connection, and must not keep the process past its 2 s after SIGTERM.
    pub fn hurried(&self, within: Duration) -> TrackerClient {
        TrackerClient {
            agent: agent(within, within, self.tls.as_ref()),
            attempts: 1,
            patience: None,
            ..self.clone()
        }
    }

    /// The same tracker, for the requests a download cannot start without (its manifest,
    /// key and first sources): while no tracker URL can be reached, each request keeps
    /// going round them, with the jittered backoff between rounds (100 ms doubling to 2 s),
    /// until `within` has passed since it began (a download's stall timeout) or `stop()`
    /// says the process is told to exit. A tracker restarting, or a crowd of 64 hosts
    /// starting at once on a loaded network, is a moment, not a reason to fail; a tracker
    /// that answers with an error is not retried (that answer is the result).
    pub fn patient(&self, within: Duration, stop: fn() -> bool) -> TrackerClient {
        TrackerClient {
            patience: Some(Arc::new(Patience { within, stop })),
            ..self.clone()
        }
    }

    /// Presents `token` (`Authorization: Bearer`) with every request, for a tracker
    /// started with `--auth`.
    pub fn with_token(mut self, token: Option<String>) -> TrackerClient {
        self.token = token.filter(|t| !t.is_empty());
        self
    }

    /// A client for `url` when one is given.
    pub fn optional(url: Option<&str>, tls: &TrackerTls) -> Result<Option<TrackerClient>> {
        url.map(|url| TrackerClient::with_tls(url, tls)).transpose()
    }

    /// Refuses, before anything is sent, a token bound for plain `http://` to a tracker
    /// not on this host (unless [`TrackerTls::insecure_http`]).
    pub fn check_token_transport(&self) -> Result<()> {
        if self.token.is_none() || self.insecure_http || self.is_private() {
            return Ok(());
        }
        Err(Failure::Usage.error(format!(
            "refusing to send the token to {} over plain http: anyone on the network path could read and reuse it; start the tracker with --tls-cert and --tls-key and use an https:// URL, or pass --insecure-http on a network you trust",
            self.base()
        )))
    }

    /// The base URL of the tracker in use.
    pub fn url(&self) -> &str {
        self.base()
    }

    /// Every tracker URL, comma-separated, as [`TrackerClient::new`] takes them.
    pub fn urls(&self) -> String {
        self.bases.join(",")
    }

    fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Moves the clones on from `failed` to the next URL (unless another thread already
    /// did), and gives the URL to try now.
    fn fail_over(&self, failed: &str) -> &str {
        let n = self.bases.len();
        let at = self.current.load(Ordering::Relaxed) % n;
        if self.bases[at] == failed {
            let _ = self.current.compare_exchange(
                at,
                (at + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        self.base()
    }

    /// The tracker's clock as its answers tell it (this host's until one is seen): what a
    /// serving peer checks the expiry of tickets against.
    pub fn clock(&self) -> Arc<TrackerClock> {
        Arc::clone(&self.clock)
    }

    fn call(&self, request: ureq::Request, body: Option<(&str, &str)>) -> Result<ureq::Response> {
        self.check_token_transport()?;
        let what = format!("{} {}", request.method(), request.url());
        let method = request.method().to_string();
        // The path after the base URL it was built with, to ask another tracker the same.
        let (mut base, path) = {
            let base = self.base().to_string();
            let path = request
                .url()
                .strip_prefix(base.as_str())
                .map(str::to_string);
            (base, path)
        };
        let authorize = |request: ureq::Request| match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        };
        let mut request = authorize(request);
        let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
        // Unreachable trackers met so far: after each round over all of them, a backoff.
        let mut unreached = 0;
        let mut round = Backoff::new(FIRST_RETRY, MAX_RETRY);
        let began = Instant::now();
        for attempt in 1.. {
            let result = match body {
                Some((content_type, text)) => request
                    .clone()
                    .set("Content-Type", content_type)
                    .send_string(text),
                None => request.clone().call(),
            };
            match result {
                Ok(response) => {
                    if let Some(date) = response.header("Date") {
                        self.clock.note_date(date);
                    }
                    return Ok(response);
                }
                // Busy (503) or over this address's share (429): a crowd arriving at once
                // behind one address meets these; every request here may be repeated.
                Err(ureq::Error::Status(429 | 503, response)) if attempt < self.attempts => {
                    let asked = response
                        .header("Retry-After")
                        .and_then(|s| s.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    let pause = backoff.next_delay();
                    std::thread::sleep(asked.unwrap_or(pause).min(MAX_RETRY));
                }
                Err(ureq::Error::Status(status, response)) => {
                    let text = response.into_string().unwrap_or_default();
                    let message = serde_json::from_str::<ErrorBody>(&text)
                        .map(|b| b.error)
                        .unwrap_or(text);
                    let error = anyhow::Error::new(HttpStatus { status, message });
                    let refusal = format!("tracker refused {what}");
                    // Refusals of the caller (credentials, load, a broken tracker) are what
                    // a script retries or escalates; 400/404/409/413 answer the request itself.
                    return Err(match status {
                        401 | 403 | 429 | 500..=599 => {
                            error.context(Failure::TrackerRefused.tag(refusal))
                        }
                        _ => error.context(refusal),
                    });
                }
                Err(ureq::Error::Transport(t))
                    if !answered_but_not_http(&t)
                        && tls_error(&t).is_none()
                        && path.is_some()
                        && self.may_go_on(unreached + 1, began, round.nominal()) =>
                {
                    // Another tracker serves the same swarms: ask it, and after a round over
                    // every URL, wait a little (all may be restarting at once).
                    unreached += 1;
                    if unreached % self.bases.len() as u32 == 0 {
                        let pause = round.next_delay();
                        log::warn!(
                            "tracker {base} unreachable ({t}); asking again in {} ms",
                            pause.as_millis()
                        );
                        self.pause(pause);
                    } else {
                        log::warn!("tracker {base} unreachable ({t}); trying the next tracker URL");
                    }
                    base = self.fail_over(&base).to_string();
                    let url = format!("{base}{}", path.as_deref().unwrap_or(""));
                    request = authorize(self.agent.request(&method, &url));
                }
                Err(ureq::Error::Transport(t)) => {
                    let message = if let Some(e) = tls_error(&t) {
                        tls_message(&base, &e)
                    } else if answered_but_not_http(&t) {
                        format!(
                            "{} answered but is not a swarmcache tracker (is it a peer_server port?)",
                            self.base()
                        )
                    } else {
                        format!(
                            "cannot reach the tracker at {} ({what}, {} tries in {:.1} s): {t}; is it running?",
                            self.urls(),
                            unreached + 1,
                            began.elapsed().as_secs_f64()
                        )
                    };
                    return Err(Failure::TrackerUnreachable.error(message));
                }
            }
        }
        unreachable!("the loop returns")
    }

    /// Rounds over the URLs a request makes: one for a hurried client.
    fn rounds(&self) -> u32 {
        if self.attempts == 1 {
            1
        } else {
            FAILOVER_ROUNDS
        }
    }

    /// Whether a request that found no tracker reachable `unreached` times since `began`
    /// asks again: within its [`FAILOVER_ROUNDS`] always; a patient one also while the next
    /// pause (at most `next_pause`) still ends inside its patience and it was not stopped.
    fn may_go_on(&self, unreached: u32, began: Instant, next_pause: Duration) -> bool {
        if unreached < self.bases.len() as u32 * self.rounds() {
            return true;
        }
        self.patience
            .as_deref()
            .is_some_and(|p| !(p.stop)() && began.elapsed() + next_pause < p.within)
    }

    /// Sleeps `pause`, or less if a patient client's process is told to stop.
    fn pause(&self, pause: Duration) {
        let Some(patience) = self.patience.as_deref() else {
            return std::thread::sleep(pause);
        };
        let until = Instant::now() + pause;
        while !(patience.stop)() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(PATIENCE_POLL));
        }
    }
}

/// An agent with these bounds on connecting and on a whole request, speaking TLS with
/// `tls` to an `https://` tracker.
fn agent(
    connect: Duration,
    request: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout(request)
        // The tracker never redirects; following one could lead an https:// client to
        // plain http.
        .redirects(0)
        // The tracker closes idle connections after 10 s; a pooled one may be dead by the
        // next heartbeat, and ureq does not retry a POST on it. A fresh connection per
        // request costs a millisecond (over TLS, a resumed session: one more round trip).
        .max_idle_connections(0);
    match tls {
        Some(tls) => builder.tls_config(Arc::clone(tls)).build(),
        None => builder.build(),
    }
}

/// The TLS error under a transport error, if TLS failed: rustls reports through an
/// `io::Error`, whose `source` skips the error it wraps, so each `io::Error` is opened.
pub(crate) fn tls_error(t: &ureq::Transport) -> Option<rustls::Error> {
    use std::error::Error;
    let mut cause: Option<&(dyn Error + 'static)> = t.source();
    while let Some(c) = cause {
        if let Some(e) = c.downcast_ref::<rustls::Error>() {
            return Some(e.clone());
        }
        if let Some(e) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(e.clone());
        }
        cause = c.source();
    }
    None
}

/// What to tell the user when TLS with the tracker at `base` failed with `e`: which check
/// failed, and what to do.
fn tls_message(base: &str, e: &rustls::Error) -> String {
    use rustls::CertificateError as Cert;
    let host = host_of(base.split_once("://").map_or(base, |(_, rest)| rest));
    match e {
        rustls::Error::InvalidCertificate(Cert::NotValidForName)
        | rustls::Error::InvalidCertificate(Cert::NotValidForNameContext { .. }) => format!(
            "the tracker's certificate is not valid for the host name {host} (wrong host name: {e}); use the name the certificate was issued for in the --tracker URL, or reissue the certificate with {host} among its names"
        ),
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => format!(
            "the tracker's certificate at {base} is signed by a CA this client does not trust (untrusted CA); pass --ca-cert FILE with the CA certificate that signed it, or add that CA to the system's trust store"
        ),
        rustls::Error::InvalidCertificate(
            Cert::Expired | Cert::ExpiredContext { .. } | Cert::NotValidYet,
        )
        | rustls::Error::InvalidCertificate(Cert::NotValidYetContext { .. }) => format!(
            "the tracker's certificate at {base} is outside its validity period ({e}); renew it, or check this host's clock"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            format!(
                "{base} answered, but not in TLS: is the tracker started with --tls-cert? (for a tracker serving plain HTTP, use http://)"
            )
        }
        e => format!("TLS with the tracker at {base} failed: {e}"),
    }
}

/// Whether a transport error means that something answered, but not in HTTP: a
/// peer_server port answers a request with a wire frame (`00 00 00 38 09 …`, no newline),
/// which ureq reports as a bad status line or header, or as an `InvalidInput` read error.
fn answered_but_not_http(t: &ureq::Transport) -> bool {
    use std::error::Error;
    use ureq::ErrorKind::{BadHeader, BadStatus, Io};
    let io_kind = t
        .source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    match t.kind() {
        BadStatus | BadHeader => true,
        Io => matches!(
            io_kind,
            Some(std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData)
        ),
        _ => false,
    }
}

impl TrackerClient {
    fn json<T: DeserializeOwned>(&self, response: ureq::Response, what: &str) -> Result<T> {
        let mut text = String::new();
        response
            .into_reader()
            .take(MAX_JSON_ANSWER)
            .read_to_string(&mut text)
            .with_context(|| format!("reading the tracker's answer to {what}"))?;
        serde_json::from_str(&text)
            .with_context(|| format!("the tracker's answer to {what} is not the expected JSON"))
    }

    /// Publishes a manifest; returns the tracker's answer (the id among it).
    pub fn publish(&self, manifest: &Manifest) -> Result<PublishResponse> {
        self.publish_keyed(manifest, None)
    }

    /// Publishes a manifest with the content key of an encrypted asset, which the tracker
    /// keeps and gives to the holders of the fetch right. The key is sent only over TLS or
    /// to a tracker on this host: never in clear across a network.
    pub fn publish_keyed(
        &self,
        manifest: &Manifest,
        key: Option<&ContentKey>,
    ) -> Result<PublishResponse> {
        self.check_key_channel(manifest, key)?;
        let url = format!("{}/assets", self.base());
        self.post_manifest(&url, manifest, key)
    }

    /// Refuses to send a content key where it would travel in clear.
    fn check_key_channel(&self, manifest: &Manifest, key: Option<&ContentKey>) -> Result<()> {
        if key.is_some() && !self.is_private() {
            bail!(
                "refusing to send the content key of {} in clear to the tracker {}: keys travel only over https or to a tracker on this host (127.0.0.1, ::1, localhost)",
                manifest.id(),
                self.base()
            );
        }
        Ok(())
    }

    /// Posts `manifest` (with its key) to `url` and checks the id in the answer.
    fn post_manifest(
        &self,
        url: &str,
        manifest: &Manifest,
        key: Option<&ContentKey>,
    ) -> Result<PublishResponse> {
        let response = self.call(
            self.agent.post(url),
            Some(("application/toml", &manifest.to_toml_keyed(key))),
        )?;
        let answer: PublishResponse = self.json(response, "publish")?;
        if answer.id != manifest.id().to_string() {
            bail!(
                "tracker published the manifest as {} but its id is {}",
                answer.id,
                manifest.id()
            );
        }
        Ok(answer)
    }

    /// Lists `url` as an origin URL of the published asset `id` (the publish right); the
    /// answer lists them all.
    pub fn add_origin_url(&self, id: &AssetId, url: &str) -> Result<OriginUrlsResponse> {
        crate::origin_url::check(url)?;
        let endpoint = format!("{}/assets/{id}/origins", self.base());
        let body = serde_json::to_string(&OriginUrlRequest {
            url: url.to_string(),
        })
        .expect("strings serialize");
        let response = self.call(
            self.agent.post(&endpoint),
            Some(("application/json", &body)),
        )?;
        self.json(response, "origin add")
    }

    /// Fetches the manifest of `id` and checks that it hashes to `id`.
    pub fn manifest(&self, id: &AssetId) -> Result<Manifest> {
        let url = format!("{}/assets/{id}", self.base());
        let response = self.call(self.agent.get(&url), None)?;
        let manifest =
            Manifest::read_from(response.into_reader().take(MAX_MANIFEST_BYTES as u64 + 1))
                .with_context(|| format!("reading the manifest of {id} from {url}"))?;
        if manifest.id() != *id {
            bail!(
                "the tracker's manifest for {id} hashes to {}; refusing it",
                manifest.id()
            );
        }
        Ok(manifest)
    }

    /// Whether a secret may cross the connection to this tracker: it is `https://`, or on
    /// this host (a loopback address, or `localhost`).
    pub fn is_private(&self) -> bool {
        // Any of the trackers may be the one asked: each must be.
        self.bases
            .iter()
            .all(|base| match base.strip_prefix("http://") {
                None => true,
                Some(rest) => is_loopback_host(host_of(rest)),
            })
    }

    /// The content key of `id` when the asset is encrypted (`None` when it is not). A
    /// tracker that withholds the key (no fetch right, or a plain-HTTP connection from
    /// another host) answers 401 or 403: its message says why.
    pub fn content_key(&self, id: &AssetId) -> Result<Option<ContentKey>> {
        let url = format!("{}/assets/{id}/key", self.base());
        let response = self.call(self.agent.get(&url), None)?;
        let answer: ContentKeyResponse = self.json(response, "key")?;
        if answer.id != id.to_string() {
            bail!(
                "the tracker answered the key of {} when asked for {id}",
                answer.id
            );
        }
        if !answer.encrypted {
            return Ok(None);
        }
        match (answer.cipher.as_deref(), answer.key.as_deref()) {
            (Some(crypt::CIPHER), Some(key)) => ContentKey::from_hex(key)
                .map(Some)
                .map_err(|e| anyhow::anyhow!("the tracker's key of {id}: {e}")),
            (cipher, _) => bail!(
                "the tracker says {id} is encrypted with {cipher:?}, which this build cannot decrypt (it knows {})",
                crypt::CIPHER
            ),
        }
    }

    /// Announces (joins, heartbeats or leaves) the swarm of `id`.
    pub fn announce(&self, id: &AssetId, request: &AnnounceRequest) -> Result<AnnounceResponse> {
        let url = format!("{}/assets/{id}/announce", self.base());
        let body = serde_json::to_string(request).expect("announce serializes");
        let response = self.call(self.agent.post(&url), Some(("application/json", &body)))?;
        self.json(response, "announce")
    }

    /// Announces many assets for one peer in one request (`POST /announce`); `request`
    /// must be within the bounds (see [`split_batch`]). A tracker without the endpoint
    /// answers 404 ([`HttpStatus`]); the entries it refused are in the answer.
    pub fn announce_batch(&self, request: &BatchAnnounceRequest) -> Result<BatchAnnounceResponse> {
        let url = format!("{}/announce", self.base());
        let body = serde_json::to_string(request).expect("batch announce serializes");
        let response = self.call(self.agent.post(&url), Some(("application/json", &body)))?;
        self.json(response, "batch announce")
    }

    /// The public keys tickets are signed with (none in open mode).
    pub fn keys(&self) -> Result<Vec<String>> {
        let url = format!("{}/keys", self.base());
        let response = self.call(self.agent.get(&url), None)?;
        Ok(self.json::<KeysResponse>(response, "keys")?.keys)
    }

    /// Every live peer of the swarm of `id`.
    pub fn peers(&self, id: &AssetId) -> Result<Vec<PeerInfo>> {
        let url = format!("{}/assets/{id}/peers", self.base());
        let response = self.call(self.agent.get(&url), None)?;
        self.json(response, "peers")
    }
}

/// Splits one peer's announces of `entries` into batch requests within the tracker's bounds
/// ([`BATCH_MAX_ENTRIES`] entries and [`BATCH_MAX_BODY`] bytes each), in order; `peer`
/// gives the peer's fields (its `assets` are ignored). Also returns the entries too big for
/// a request of their own, which no tracker would take (none from a valid manifest: its
/// `have` is at most 256 KiB of hex).
pub fn split_batch(
    peer: &BatchAnnounceRequest,
    entries: Vec<BatchEntry>,
) -> (Vec<BatchAnnounceRequest>, Vec<BatchEntry>) {
    let envelope = BatchAnnounceRequest {
        assets: Vec::new(),
        ..peer.clone()
    };
    let fixed = serde_json::to_string(&envelope)
        .expect("batch announce serializes")
        .len();
    let sizes: Vec<usize> = entries
        .iter()
        .map(|e| {
            serde_json::to_string(e)
                .expect("batch entry serializes")
                .len()
        })
        .collect();
    let runs = pack(fixed, &sizes, BATCH_MAX_ENTRIES, BATCH_MAX_BODY);
    let mut requests = Vec::with_capacity(runs.len());
    let mut oversized = Vec::new();
    let mut entries = entries.into_iter().enumerate().peekable();
    for run in runs {
        while let Some((_, entry)) = entries.next_if(|(i, _)| *i < run.start) {
            oversized.push(entry);
        }
        let assets = entries
            .by_ref()
            .take(run.len())
            .map(|(_, entry)| entry)
            .collect();
        requests.push(BatchAnnounceRequest {
            assets,
            ..envelope.clone()
        });
    }
    oversized.extend(entries.map(|(_, entry)| entry));
    (requests, oversized)
}

/// Groups items of serialized `sizes` into consecutive runs (ranges of indices) of at most
/// `max_items`, each making a JSON array that fits `max_bytes` inside an envelope of `fixed`
/// bytes (its items joined by commas). An item that cannot fit even alone is in no run.
/// Greedy, in order: every run but the last of a stretch is full by one bound or the other.
fn pack(
    fixed: usize,
    sizes: &[usize],
    max_items: usize,
    max_bytes: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut bytes = fixed;
    for (i, &size) in sizes.iter().enumerate() {
        let comma = usize::from(i > start);
        let fits = i - start < max_items && bytes + comma + size <= max_bytes;
        if !fits {
            if i > start {
                runs.push(start..i);
            }
            start = i;
            bytes = fixed;
        }
        if fixed + size > max_bytes {
            // Alone it does not fit either: skipped, and the next run starts after it.
            start = i + 1;
            bytes = fixed;
            continue;
        }
        bytes += usize::from(i > start) + size;
    }
    if sizes.len() > start {
        runs.push(start..sizes.len());
    }
    runs
}

/// A random-enough peer id: 16 bytes of SHA-256 over the process id, the time, and a
/// counter, in hex. It only has to be unique within a swarm, not secret.
pub fn new_peer_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seed = format!(
        "{}-{}-{}-{:?}",
        std::process::id(),
        now.as_nanos(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::thread::current().id()
    );
    hex::encode(&crate::manifest::sha256(seed.as_bytes())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_of_tracker_urls_is_checked_deduplicated_and_bounded() {
        let t = TrackerClient::new("http://a:1/, http://b:2,http://a:1,").unwrap();
        assert_eq!(t.urls(), "http://a:1,http://b:2");
        assert_eq!(t.url(), "http://a:1");
        assert!(TrackerClient::new("http://a:1,b:2").is_err());
        assert!(TrackerClient::new(" , ").is_err());
        let many: Vec<String> = (0..=MAX_TRACKER_URLS)
            .map(|i| format!("http://h:{i}"))
            .collect();
        assert!(TrackerClient::new(&many.join(",")).is_err());
    }

    #[test]
    fn a_failed_url_moves_every_clone_on_once_and_round_the_list() {
        let t = TrackerClient::new("http://a:1,http://b:2").unwrap();
        let clone = t.clone();
        assert_eq!(t.fail_over("http://a:1"), "http://b:2");
        // Another thread that failed on the same URL does not skip the next one.
        assert_eq!(clone.fail_over("http://a:1"), "http://b:2");
        assert_eq!(clone.url(), "http://b:2");
        assert_eq!(clone.fail_over("http://b:2"), "http://a:1");
    }

    #[test]
    fn a_request_reaches_the_second_tracker_when_the_first_is_down() {
        // A port nothing listens on (bound, then released), and a tiny HTTP server.
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let live = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = live.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{BufRead, BufReader, Write};
            let (mut s, _) = live.accept().unwrap();
            let mut line = String::new();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let body = r#"{"keys":["ab"]}"#;
            write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
        });
        let t = TrackerClient::new(&format!("http://{dead},http://{addr}")).unwrap();
        assert_eq!(t.keys().unwrap(), vec!["ab".to_string()]);
        assert_eq!(t.url(), format!("http://{addr}"));
        server.join().unwrap();
    }

    /// The tries a failed request reports: "… (GET …, N tries in …".
    fn tries_in(error: &anyhow::Error) -> u32 {
        let text = format!("{error:#}");
        let (before, _) = text.split_once(" tries in ").expect(&text);
        before.rsplit(' ').next().unwrap().parse().expect(&text)
    }

    #[test]
    fn a_patient_request_keeps_asking_an_unreachable_tracker_until_its_patience_ends() {
        // Bound but not listening, and held: connects are refused, and no other test's
        // socket can take the port meanwhile.
        let socket = rustix::net::socket(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::STREAM,
            None,
        )
        .unwrap();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        rustix::net::bind(&socket, &any).unwrap();
        let dead =
            std::net::SocketAddr::try_from(rustix::net::getsockname(&socket).unwrap()).unwrap();
        let t = TrackerClient::new(&format!("http://{dead}")).unwrap();
        // Connects are refused at once: the plain client gives up after its rounds.
        let plain = t.keys().unwrap_err();
        assert_eq!(tries_in(&plain), FAILOVER_ROUNDS, "{plain:#}");
        // Pauses of 100, 200, 400, 800 ms (jittered down to half): 1.5 s hold 4 to 7 more.
        let patient = t.patient(Duration::from_millis(1500), || false);
        let began = Instant::now();
        let error = patient.keys().unwrap_err();
        assert!(tries_in(&error) > FAILOVER_ROUNDS, "{error:#}");
        assert!(began.elapsed() < Duration::from_millis(1500) + CONNECT_TIMEOUT);
        assert!(
            format!("{error:#}").contains("cannot reach the tracker"),
            "{error:#}"
        );
        // Told to stop, it asks no more than the plain client.
        let stopped = t
            .patient(Duration::from_secs(60), || true)
            .keys()
            .unwrap_err();
        assert_eq!(tries_in(&stopped), FAILOVER_ROUNDS, "{stopped:#}");
        // Neither the hurried client nor an error answer inherits the patience.
        assert!(patient.hurried(Duration::from_secs(1)).patience.is_none());
    }

    #[test]
    fn only_https_and_this_host_are_private() {
        for (url, private) in [
            ("http://127.0.0.1:7070", true),
            ("http://127.0.0.2:7070/", true),
            ("http://[::1]:7070", true),
            ("http://localhost:7070", true),
            ("http://LOCALHOST", true),
            ("http://10.0.0.5:7070", false),
            ("http://tracker.example:7070", false),
            ("http://[::ffff:127.0.0.1]:1", true),
            ("http://127.0.0.1.evil.example:1", false),
        ] {
            assert_eq!(
                TrackerClient::new(url).unwrap().is_private(),
                private,
                "{url}"
            );
        }
    }

    /// The body each request of `split_batch` is sent as.
    fn bodies(requests: &[BatchAnnounceRequest]) -> Vec<String> {
        requests
            .iter()
            .map(|r| serde_json::to_string(r).unwrap())
            .collect()
    }

    fn entry(n: usize, have_hex: usize) -> BatchEntry {
        BatchEntry {
            id: format!("{n:064x}"),
            complete: have_hex == 0,
            have: (have_hex > 0).then(|| "f".repeat(have_hex)),
            uploaded: n as u64 * 1000,
            event: None,
        }
    }

    fn peer() -> BatchAnnounceRequest {
        BatchAnnounceRequest {
            peer_id: "p".repeat(32),
            addr: Some("0.0.0.0:7001".into()),
            ..BatchAnnounceRequest::default()
        }
    }

    #[test]
    fn urls_are_http_or_https_and_hosts_are_found_in_every_form() {
        assert_eq!(
            check_url("https://t.lan:7443/").unwrap(),
            "https://t.lan:7443"
        );
        assert_eq!(
            check_url("http://127.0.0.1:7070").unwrap(),
            "http://127.0.0.1:7070"
        );
        for bad in [
            "ftp://t:1",
            "t:7070",
            "http://",
            "https://",
            "https://:7070",
        ] {
            let e = check_url(bad).unwrap_err();
            assert!(format!("{e}").contains("https://HOST:PORT"), "{bad}: {e}");
        }
        assert_eq!(host_of("[::1]:7070/x"), "[::1]");
        assert_eq!(host_of("10.0.0.5:7070"), "10.0.0.5");
        assert_eq!(host_of("t.lan"), "t.lan");
        assert_eq!(host_of("user@t.lan:1/a?b"), "t.lan");
    }

    #[test]
    fn only_this_host_counts_as_loopback() {
        for here in [
            "127.0.0.1",
            "127.8.9.10",
            "[::1]",
            "localhost",
            "LOCALHOST.",
            "[::ffff:127.0.0.1]",
        ] {
            assert!(is_loopback_host(here), "{here}");
        }
        for there in [
            "10.0.0.5",
            "[::2]",
            "localhost.evil.com",
            "tracker",
            "0.0.0.0",
            "192.168.1.1",
        ] {
            assert!(!is_loopback_host(there), "{there}");
        }
    }

    #[test]
    fn a_token_for_plain_http_to_another_host_is_refused_unless_told_otherwise() {
        let token = || Some("t0ken".to_string());
        let remote = TrackerClient::new("http://10.1.2.3:7070").unwrap();
        assert!(
            remote.check_token_transport().is_ok(),
            "no token, nothing to leak"
        );
        let with = remote.clone().with_token(token());
        let e = with.check_token_transport().unwrap_err();
        assert_eq!(Failure::of(&e), Some(Failure::Usage));
        let text = format!("{e:#}");
        assert!(text.contains("http://10.1.2.3:7070"), "{text}");
        assert!(
            text.contains("--insecure-http") && text.contains("https://"),
            "{text}"
        );
        let told = TrackerTls {
            insecure_http: true,
            ..TrackerTls::default()
        };
        let insecure = TrackerClient::with_tls("http://10.1.2.3:7070", &told).unwrap();
        assert!(insecure.with_token(token()).check_token_transport().is_ok());
        let local = TrackerClient::new("http://localhost:7070").unwrap();
        assert!(local.with_token(token()).check_token_transport().is_ok());
    }

    #[test]
    fn tls_failures_say_which_check_failed_and_what_to_do() {
        use rustls::CertificateError as Cert;
        let base = "https://t.lan:7443";
        let name = tls_message(
            base,
            &rustls::Error::InvalidCertificate(Cert::NotValidForName),
        );
        assert!(
            name.contains("wrong host name") && name.contains("t.lan"),
            "{name}"
        );
        let ca = tls_message(
            base,
            &rustls::Error::InvalidCertificate(Cert::UnknownIssuer),
        );
        assert!(
            ca.contains("untrusted CA") && ca.contains("--ca-cert FILE"),
            "{ca}"
        );
        let old = tls_message(base, &rustls::Error::InvalidCertificate(Cert::Expired));
        assert!(old.contains("validity period"), "{old}");
        let plain = tls_message(
            base,
            &rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType),
        );
        assert!(
            plain.contains("not in TLS") && plain.contains("http://"),
            "{plain}"
        );
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one run is one range
    fn packing_fills_each_run_to_the_byte_or_item_bound_and_skips_the_oversized() {
        // Envelope 10, items joined by commas: 10 + 5 + 1 + 5 = 21 fits 21, a third does not.
        assert_eq!(pack(10, &[5, 5, 5, 5, 5], 100, 21), [0..2, 2..4, 4..5]);
        assert_eq!(pack(10, &[5, 5, 5, 5, 5], 2, 1000), [0..2, 2..4, 4..5]);
        assert_eq!(pack(10, &[5; 3], 100, 1000), [0..3]);
        // An item that does not fit alone is left out, and splits the runs around it.
        assert_eq!(pack(10, &[5, 12, 5], 100, 21), [0..1, 2..3]);
        assert_eq!(pack(10, &[12, 5], 100, 21), [1..2]);
        assert_eq!(pack(10, &[5, 12], 100, 21), [0..1]);
        // Exactly the bound fits alone.
        assert_eq!(pack(10, &[11, 11], 100, 21), [0..1, 1..2]);
        assert!(pack(10, &[], 100, 21).is_empty());
    }

    #[test]
    fn a_store_of_ten_thousand_complete_assets_is_three_requests_within_the_bounds() {
        let entries: Vec<BatchEntry> = (0..10_000).map(|n| entry(n, 0)).collect();
        let (requests, oversized) = split_batch(&peer(), entries.clone());
        assert!(oversized.is_empty());
        assert_eq!(requests.len(), 10_000usize.div_ceil(BATCH_MAX_ENTRIES));
        for (request, body) in requests.iter().zip(bodies(&requests)) {
            assert!(request.assets.len() <= BATCH_MAX_ENTRIES);
            assert!(body.len() <= BATCH_MAX_BODY, "{} bytes", body.len());
            assert_eq!(request.peer_id, peer().peer_id);
            assert_eq!(request.addr, peer().addr);
        }
        let sent: Vec<BatchEntry> = requests.into_iter().flat_map(|r| r.assets).collect();
        assert_eq!(sent, entries, "every entry once, in order");
    }

    #[test]
    fn partial_assets_split_by_size_and_an_impossible_entry_is_handed_back() {
        // 2^20 chunks: 256 KiB of hex, the biggest have a valid manifest gives.
        let big = 1 << 18;
        let mut entries: Vec<BatchEntry> = (0..10).map(|n| entry(n, big)).collect();
        entries.insert(3, entry(99, BATCH_MAX_BODY));
        entries.push(entry(100, 0));
        let (requests, oversized) = split_batch(&peer(), entries.clone());
        assert_eq!(oversized, [entries[3].clone()]);
        let counts: Vec<usize> = requests.iter().map(|r| r.assets.len()).collect();
        // Three 256 KiB entries and the envelope fit 1 MiB; a fourth does not.
        assert_eq!(
            counts,
            [3, 3, 3, 2],
            "split around the oversized one, in order"
        );
        let full = serde_json::to_string(&requests[1]).unwrap().len();
        assert!(
            full + big > BATCH_MAX_BODY,
            "a fourth would not have fit: {full}"
        );
        for body in bodies(&requests) {
            assert!(body.len() <= BATCH_MAX_BODY, "{} bytes", body.len());
        }
        let sent: Vec<BatchEntry> = requests.into_iter().flat_map(|r| r.assets).collect();
        let mut expected = entries;
        expected.remove(3);
        assert_eq!(sent, expected);
    }
}
