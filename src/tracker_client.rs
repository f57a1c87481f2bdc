//! The client side of the tracker's HTTP API: publish, fetch manifests, announce.

use std::io::Read;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::api::{
    AnnounceRequest, AnnounceResponse, ErrorBody, KeysResponse, PeerInfo, PublishResponse,
};
use crate::backoff::Backoff;
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

/// A tracker at a base URL such as `http://127.0.0.1:7070`.
#[derive(Clone, Debug)]
pub struct TrackerClient {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
    /// Tries of a request answered "busy": [`BUSY_ATTEMPTS`], or 1 for a hurried client.
    attempts: u32,
}

impl TrackerClient {
    /// Checks the URL's form; no request is made yet.
    pub fn new(url: &str) -> Result<TrackerClient> {
        let base = url.trim_end_matches('/').to_string();
        if !base.starts_with("http://") || base.len() <= "http://".len() {
            bail!(
                "tracker URL {url:?} must look like http://HOST:PORT (https is not supported yet)"
            );
        }
        Ok(TrackerClient {
            base,
            agent: agent(CONNECT_TIMEOUT, REQUEST_TIMEOUT),
            token: None,
            attempts: BUSY_ATTEMPTS,
        })
    }

    /// The same tracker, for a request that must be over within `within` whatever the
    /// tracker or the network does: one try, connection and answer bounded by `within`.
    /// For the `"stopped"` announce of a process told to exit, which only spares peers a
    /// failed connection, and must not keep the process past its 2 s after SIGTERM.
    pub fn hurried(&self, within: Duration) -> TrackerClient {
        TrackerClient {
            agent: agent(within, within),
            attempts: 1,
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
    pub fn optional(url: Option<&str>) -> Result<Option<TrackerClient>> {
        url.map(TrackerClient::new).transpose()
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    fn call(&self, request: ureq::Request, body: Option<(&str, &str)>) -> Result<ureq::Response> {
        let what = format!("{} {}", request.method(), request.url());
        let request = match &self.token {
            Some(token) => request.set("Authorization", &format!("Bearer {token}")),
            None => request,
        };
        let mut backoff = Backoff::new(FIRST_RETRY, MAX_RETRY);
        for attempt in 1.. {
            let result = match body {
                Some((content_type, text)) => request
                    .clone()
                    .set("Content-Type", content_type)
                    .send_string(text),
                None => request.clone().call(),
            };
            match result {
                Ok(response) => return Ok(response),
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
                Err(ureq::Error::Transport(t)) => {
                    let message = if answered_but_not_http(&t) {
                        format!(
                            "{} answered but is not a swarmcache tracker (is it a peer_server port?)",
                            self.base
                        )
                    } else {
                        format!(
                            "cannot reach the tracker at {} ({what}): {t}; is it running?",
                            self.base
                        )
                    };
                    return Err(Failure::TrackerUnreachable.error(message));
                }
            }
        }
        unreachable!("the loop returns")
    }
}

/// An agent with these bounds on connecting and on a whole request.
fn agent(connect: Duration, request: Duration) -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(connect)
        .timeout(request)
        // The tracker closes idle connections after 10 s; a pooled one may be dead by the
        // next heartbeat, and ureq does not retry a POST on it. A fresh connection per
        // request costs a millisecond.
        .max_idle_connections(0)
        .build()
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
        let url = format!("{}/assets", self.base);
        let response = self.call(
            self.agent.post(&url),
            Some(("application/toml", &manifest.to_toml())),
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

    /// Fetches the manifest of `id` and checks that it hashes to `id`.
    pub fn manifest(&self, id: &AssetId) -> Result<Manifest> {
        let url = format!("{}/assets/{id}", self.base);
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

    /// Announces (joins, heartbeats or leaves) the swarm of `id`.
    pub fn announce(&self, id: &AssetId, request: &AnnounceRequest) -> Result<AnnounceResponse> {
        let url = format!("{}/assets/{id}/announce", self.base);
        let body = serde_json::to_string(request).expect("announce serializes");
        let response = self.call(self.agent.post(&url), Some(("application/json", &body)))?;
        self.json(response, "announce")
    }

    /// The public keys tickets are signed with (none in open mode).
    pub fn keys(&self) -> Result<Vec<String>> {
        let url = format!("{}/keys", self.base);
        let response = self.call(self.agent.get(&url), None)?;
        Ok(self.json::<KeysResponse>(response, "keys")?.keys)
    }

    /// Every live peer of the swarm of `id`.
    pub fn peers(&self, id: &AssetId) -> Result<Vec<PeerInfo>> {
        let url = format!("{}/assets/{id}/peers", self.base);
        let response = self.call(self.agent.get(&url), None)?;
        self.json(response, "peers")
    }
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
