//! The client side of the tracker's HTTP API: publish, fetch manifests, announce (one asset,
//! or a store's many in batches split to the tracker's bounds).

mod tags;

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;

use crate::api::{
    AnnounceRequest, AnnounceResponse, BATCH_MAX_BODY, BATCH_MAX_ENTRIES, BatchAnnounceRequest,
    BatchAnnounceResponse, BatchEntry, ContentKeyResponse, ErrorBody, KeysResponse, PeerInfo,
    PublishResponse,
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
    /// The tracker's clock, set from the `Date` of every answer; shared by the clones.
    clock: Arc<TrackerClock>,
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
            clock: Arc::default(),
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

    /// The tracker's clock as its answers tell it (this host's until one is seen): what a
    /// serving peer checks the expiry of tickets against.
    pub fn clock(&self) -> Arc<TrackerClock> {
        Arc::clone(&self.clock)
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
        let url = format!("{}/assets", self.base);
        self.post_manifest(&url, manifest, key)
    }

    /// Refuses to send a content key where it would travel in clear.
    fn check_key_channel(&self, manifest: &Manifest, key: Option<&ContentKey>) -> Result<()> {
        if key.is_some() && !self.is_private() {
            bail!(
                "refusing to send the content key of {} in clear to the tracker {}: keys travel only over https or to a tracker on this host (127.0.0.1, ::1, localhost)",
                manifest.id(),
                self.base
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

    /// Whether a secret may cross the connection to this tracker: it is `https://`, or on
    /// this host (a loopback address, or `localhost`).
    pub fn is_private(&self) -> bool {
        if self.base.starts_with("https://") {
            return true;
        }
        let authority = self.base["http://".len()..]
            .split('/')
            .next()
            .unwrap_or_default();
        let host = match authority.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or_default(),
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.to_canonical().is_loopback())
    }

    /// The content key of `id` when the asset is encrypted (`None` when it is not). A
    /// tracker that withholds the key (no fetch right, or a plain-HTTP connection from
    /// another host) answers 401 or 403: its message says why.
    pub fn content_key(&self, id: &AssetId) -> Result<Option<ContentKey>> {
        let url = format!("{}/assets/{id}/key", self.base);
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
        let url = format!("{}/assets/{id}/announce", self.base);
        let body = serde_json::to_string(request).expect("announce serializes");
        let response = self.call(self.agent.post(&url), Some(("application/json", &body)))?;
        self.json(response, "announce")
    }

    /// Announces many assets for one peer in one request (`POST /announce`); `request`
    /// must be within the bounds (see [`split_batch`]). A tracker without the endpoint
    /// answers 404 ([`HttpStatus`]); the entries it refused are in the answer.
    pub fn announce_batch(&self, request: &BatchAnnounceRequest) -> Result<BatchAnnounceResponse> {
        let url = format!("{}/announce", self.base);
        let body = serde_json::to_string(request).expect("batch announce serializes");
        let response = self.call(self.agent.post(&url), Some(("application/json", &body)))?;
        self.json(response, "batch announce")
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
