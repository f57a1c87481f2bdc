//! Who may do what: the tracker's tokens and their permissions, its Ed25519 signing keys,
//! and the short-lived tickets it signs so that peers can check that a client was allowed
//! an asset without holding any secret themselves.
//!
//! A ticket is [`TICKET_MAGIC`], the signing key's id (8 bytes: the start of the SHA-256 of
//! its public key), the asset id (32), the expiry in Unix seconds (u64, big-endian), the
//! client's peer id (a length byte, then that many bytes), and an Ed25519 signature (64)
//! over [`TICKET_CONTEXT`] followed by everything before the signature.
//!
//! A ticket's expiry is in the tracker's time, and peers check it in the tracker's time too
//! ([`TrackerClock`]), so that a peer whose clock is wrong neither refuses every ticket nor
//! accepts expired ones.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::Deserialize;

use crate::manifest::{AssetId, Digest, sha256};

/// How long a ticket stays valid. A client announces at least once a heartbeat (20 s by
/// default) while it downloads or seeds, each time getting a fresh ticket, so ten minutes
/// only bounds how long a leaked ticket is worth anything.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(600);
/// First bytes of every ticket (version 1).
pub const TICKET_MAGIC: &[u8; 4] = b"SCT1";
/// What a ticket's signature covers before the ticket's bytes, so that no other message
/// signed with the same key can pass for a ticket.
pub const TICKET_CONTEXT: &[u8] = b"swarmcache/ticket\0";
/// What is left of the disagreement between a peer's clock and the tracker's once the peer
/// follows the tracker's (a `Date` has 1 s resolution, and is a round trip old), or all of
/// it for a peer that has not heard from the tracker.
const CLOCK_SKEW: u64 = 30;
/// Longest peer id a ticket can carry (its length is one byte).
const MAX_PEER_ID: usize = 255;
const KEY_ID_LEN: usize = 8;
const SIGNATURE_LEN: usize = 64;
const HEADER_LEN: usize = TICKET_MAGIC.len() + KEY_ID_LEN + 32 + 8 + 1;

/// What a request wants to do, for [`Tokens::authorize`].
#[derive(Clone, Copy, Debug)]
pub enum Action<'a> {
    /// See the catalog and swarm statistics.
    Browse,
    /// Publish a manifest.
    Publish,
    /// Get a manifest, its peers, and a ticket; serve it to others once held.
    Fetch(&'a AssetId),
    /// Announce as the origin of an asset.
    Origin(&'a AssetId),
    /// Read `GET /metrics` (of the assets the token may fetch).
    Metrics,
    /// Move a tag of this name (the publish right, within the token's name prefixes).
    Tag(&'a str),
    /// Unpublish an asset (`DELETE /assets/ID`).
    Admin,
}

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Denied {
    /// No token, or one the tracker does not know (HTTP 401).
    Unauthenticated(String),
    /// A known token without the permission (HTTP 403).
    Forbidden(String),
}

/// One entry of the permissions file, as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    sha256: String,
    #[serde(default)]
    publish: bool,
    #[serde(default)]
    origin: bool,
    #[serde(default)]
    advertise: bool,
    #[serde(default)]
    metrics: bool,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    names: Option<Vec<String>>,
    #[serde(default)]
    fetch: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    token: Vec<TokenEntry>,
}

/// What one token may do.
#[derive(Clone, Debug)]
pub struct Grant {
    /// Who holds the token, for logs and errors.
    pub name: String,
    digest: Digest,
    publish: bool,
    origin: bool,
    advertise: bool,
    metrics: bool,
    admin: bool,
    /// Prefixes of the names whose tags it may move; `None`: every name.
    names: Option<Vec<String>>,
    /// `None`: every asset.
    fetch: Option<Vec<AssetId>>,
}

impl Grant {
    /// Whether this token may fetch (and serve) `asset`.
    pub fn may_fetch(&self, asset: &AssetId) -> bool {
        self.fetch.as_ref().is_none_or(|ids| ids.contains(asset))
    }

    /// Whether this token may fetch every asset (`fetch = ["*"]`).
    pub fn may_fetch_all(&self) -> bool {
        self.fetch.is_none()
    }

    /// Whether this token may announce its peers at an address other than the one its
    /// announces come from (an origin behind NAT or a port forward).
    pub fn may_advertise(&self) -> bool {
        self.advertise
    }

    /// Whether this token may announce as an origin (of the assets it may fetch).
    pub fn may_originate(&self) -> bool {
        self.origin
    }

    /// Whether this token may move the tags of `name`: the publish right, and `name`
    /// starting with one of its `names` prefixes when it has any.
    pub fn may_tag(&self, name: &str) -> bool {
        self.publish
            && self
                .names
                .as_ref()
                .is_none_or(|prefixes| prefixes.iter().any(|p| name.starts_with(p.as_str())))
    }

    /// What tells this token from every other: the start of its digest (names may repeat).
    pub fn key(&self) -> [u8; 8] {
        let mut key = [0; 8];
        key.copy_from_slice(&self.digest[..8]);
        key
    }
}

/// The tokens the tracker accepts (`tracker --auth auth.toml`).
///
/// ```toml
/// [[token]]
/// name = "ci"
/// sha256 = "…"            # of the token; `tracker token` prints new tokens with this line
/// publish = true
/// origin = true
/// advertise = false       # may announce an address other than the announce's source
/// metrics = false         # may read GET /metrics
/// admin = false           # may unpublish assets (DELETE /assets/ID)
/// names = ["ci/"]         # optional: the name prefixes whose tags it may move
/// fetch = ["*"]           # or asset ids
/// ```
#[derive(Clone, Debug)]
pub struct Tokens {
    grants: Vec<Arc<Grant>>,
}

impl Tokens {
    /// Reads and checks a permissions file.
    pub fn load(path: &Path) -> Result<Tokens> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Tokens::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// Parses a permissions file.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let file: AuthFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut grants = Vec::with_capacity(file.token.len());
        for entry in file.token {
            let digest = hex::decode(&entry.sha256)
                .ok()
                .and_then(|b| Digest::try_from(b.as_slice()).ok())
                .ok_or_else(|| {
                    format!(
                        "token {:?}: sha256 must be 64 hex digits (the SHA-256 of the token)",
                        entry.name
                    )
                })?;
            let fetch = if entry.fetch.iter().any(|f| f == "*") {
                None
            } else {
                let ids = entry
                    .fetch
                    .iter()
                    .map(|f| f.parse::<AssetId>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("token {:?}: fetch: {e}", entry.name))?;
                Some(ids)
            };
            grants.push(Arc::new(Grant {
                name: entry.name,
                digest,
                publish: entry.publish,
                origin: entry.origin,
                advertise: entry.advertise,
                metrics: entry.metrics,
                admin: entry.admin,
                names: entry.names,
                fetch,
            }));
        }
        Ok(Tokens { grants })
    }

    /// How many tokens the file grants.
    pub fn len(&self) -> usize {
        self.grants.len()
    }

    /// Whether the file grants no token at all.
    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// The grant of the token presented (`Authorization: Bearer TOKEN`), if it allows
    /// `action`.
    pub fn authorize(&self, token: Option<&str>, action: Action) -> Result<Arc<Grant>, Denied> {
        let token = token.ok_or_else(|| {
            Denied::Unauthenticated(
                "this tracker needs a token: pass --token or set SWARMCACHE_TOKEN".into(),
            )
        })?;
        // Comparing digests, not tokens, leaks nothing useful through timing.
        let digest = sha256(token.as_bytes());
        let grant = self
            .grants
            .iter()
            .find(|g| g.digest == digest)
            .ok_or_else(|| Denied::Unauthenticated("unknown token".into()))?;
        let allowed = match action {
            Action::Browse => true,
            Action::Publish => grant.publish,
            Action::Fetch(id) => grant.may_fetch(id),
            Action::Origin(id) => grant.origin && grant.may_fetch(id),
            Action::Metrics => grant.metrics,
            Action::Tag(name) => grant.may_tag(name),
            Action::Admin => grant.admin,
        };
        if allowed {
            Ok(Arc::clone(grant))
        } else {
            let what = match action {
                Action::Browse => "browse".to_string(),
                Action::Publish => "publish".to_string(),
                Action::Fetch(id) => format!("fetch {id}"),
                Action::Origin(id) => format!("be the origin of {id}"),
                Action::Metrics => {
                    "read /metrics (give it `metrics = true` in the permissions file)".to_string()
                }
                Action::Tag(name) if grant.publish => format!(
                    "tag {name:?}: its names must start with one of {:?}",
                    grant.names.as_deref().unwrap_or_default()
                ),
                Action::Tag(name) => format!("tag {name:?} (it lacks the publish right)"),
                Action::Admin => {
                    "unpublish assets (give it `admin = true` in the permissions file)".to_string()
                }
            };
            Err(Denied::Forbidden(format!(
                "token {:?} may not {what}",
                grant.name
            )))
        }
    }
}

/// The rights of a new token: each a line of its permissions-file entry.
#[derive(Clone, Debug, Default)]
pub struct Rights {
    /// May publish manifests.
    pub publish: bool,
    /// May announce as an origin.
    pub origin: bool,
    /// May announce an address other than the one its announces come from.
    pub advertise: bool,
    /// May read `GET /metrics`.
    pub metrics: bool,
    /// May unpublish assets.
    pub admin: bool,
    /// Name prefixes whose tags it may move (none: every name).
    pub names: Vec<String>,
    /// Assets it may fetch and serve: ids, or `*`.
    pub fetch: Vec<String>,
}

/// A new random token and the permissions-file entry that grants it `rights`.
pub fn new_token(name: &str, rights: &Rights) -> Result<(String, String)> {
    let Rights {
        publish,
        origin,
        advertise,
        metrics,
        admin,
        names,
        fetch,
    } = rights;
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness for a token: {e}"))?;
    let token = format!("sct_{}", hex::encode(bytes));
    let quoted = |list: &[String]| list.iter().map(|f| format!("{f:?}")).collect::<Vec<_>>();
    let names = if names.is_empty() {
        String::new()
    } else {
        format!("names = [{}]\n", quoted(names).join(", "))
    };
    let entry = format!(
        "[[token]]\nname = {name:?}\nsha256 = \"{}\"\npublish = {publish}\norigin = {origin}\nadvertise = {advertise}\nmetrics = {metrics}\nadmin = {admin}\n{names}fetch = [{}]\n",
        hex::encode(sha256(token.as_bytes())),
        quoted(fetch).join(", ")
    );
    Ok((token, entry))
}

/// Appends a token entry to a permissions file (created readable by its owner only), after
/// checking that the file with it still parses.
pub fn append_token(path: &Path, entry: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let existing = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let separator = if existing.is_empty() || existing.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    Tokens::parse(&format!("{existing}{separator}\n{entry}"))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.write_all(format!("{separator}\n{entry}").as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("appending to {}", path.display()))
}

/// Removes every entry named `name` from a permissions file; how many there were. The
/// file is rewritten atomically (readable by its owner only), everything else in it kept as
/// written, comments included: an entry is the text from its `[[token]]` line to the next
/// one. A running tracker reloads the file within [`RELOAD_POLL`] (or at once on SIGHUP).
pub fn revoke_token(path: &Path, name: &str) -> Result<usize> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut kept = String::with_capacity(text.len());
    let (mut removed, mut names) = (0, Vec::new());
    for (index, block) in token_blocks(&text).into_iter().enumerate() {
        let entries = toml::from_str::<AuthFile>(block)
            .map(|f| f.token)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        // Each piece must be exactly one entry (the preamble none), or removing a piece
        // could remove an entry of another name with it.
        if entries.len() != usize::from(index > 0) {
            bail!(
                "{}: cannot tell its entries apart; write each `[[token]]` header alone on its line, then revoke again",
                path.display()
            );
        }
        match entries.into_iter().next() {
            Some(entry) if entry.name == name => removed += 1,
            other => {
                names.extend(other.map(|e| e.name));
                kept.push_str(block);
            }
        }
    }
    if removed == 0 {
        bail!(
            "{} has no token named {name:?} (it has: {}); nothing revoked",
            path.display(),
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        );
    }
    Tokens::parse(&kept)
        .map_err(|e| anyhow::anyhow!("{} without {name:?}: {e}", path.display()))?;
    write_private(path, kept.as_bytes())?;
    Ok(removed)
}

/// How long a ticket handed out just before its token was revoked can still open a
/// connection at a peer: its lifetime (`ttl`, the tracker's `--ticket-ttl`) plus the clock
/// skew peers allow (30 s). A connection opened before then is not cut.
pub fn ticket_outlives_revocation(ttl: Duration) -> Duration {
    ttl + Duration::from_secs(CLOCK_SKEW)
}

/// How often a tracker looks at its permissions file's modification time (and size) to
/// reload it: revocation takes effect within a second, for one `stat` a second.
pub const RELOAD_POLL: Duration = Duration::from_secs(1);

/// The text of a permissions file cut before each `[[token]]` line: the preamble (perhaps
/// empty), then one piece per entry (a comment above an entry goes with the entry before it).
fn token_blocks(text: &str) -> Vec<&str> {
    let mut starts = vec![0];
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        if line.trim() == "[[token]]" {
            starts.push(at);
        }
        at += line.len();
    }
    starts.push(text.len());
    starts.windows(2).map(|w| &text[w[0]..w[1]]).collect()
}

/// Replaces `path` durably and atomically with a file only its owner may read (the
/// permissions file: its digests are not secrets, but who holds which rights is).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        crate::fsutil::sync_dir(dir)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", path.display()))
}

/// The tracker's signing keys: the current one signs; the previous one, kept after a
/// rotation, still verifies the tickets it signed until they expire.
pub struct KeyRing {
    current: SigningKey,
    previous: Option<SigningKey>,
}

impl KeyRing {
    const CURRENT: &'static str = "signing.key";
    const PREVIOUS: &'static str = "signing.previous.key";

    /// The key directory under a tracker's data directory.
    pub fn dir(data: &Path) -> PathBuf {
        data.join("keys")
    }

    /// Loads the keys in `dir`, creating a first key if there is none.
    pub fn load_or_create(dir: &Path) -> Result<KeyRing> {
        match read_key(&dir.join(Self::CURRENT))? {
            Some(current) => Ok(KeyRing {
                current,
                previous: read_key(&dir.join(Self::PREVIOUS))?,
            }),
            None => Self::rotate(dir),
        }
    }

    /// Makes a new current key; the old current key becomes the previous one (and the old
    /// previous is dropped). A running tracker picks the new key up when restarted.
    pub fn rotate(dir: &Path) -> Result<KeyRing> {
        create_private_dir(dir)?;
        let previous = read_key(&dir.join(Self::CURRENT))?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a key: {e}"))?;
        let current = SigningKey::from_bytes(&seed);
        if let Some(old) = &previous {
            crate::fsutil::write_atomic_private(
                &dir.join(Self::PREVIOUS),
                hex::encode(old.to_bytes()).as_bytes(),
            )?;
        }
        // Owner-only like the directory: a private key copied out of it keeps its mode.
        crate::fsutil::write_atomic_private(
            &dir.join(Self::CURRENT),
            hex::encode(current.to_bytes()).as_bytes(),
        )?;
        Ok(KeyRing { current, previous })
    }

    /// The public keys, current first, as hex: what peers verify tickets with.
    pub fn public_keys(&self) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| hex::encode(k.verifying_key().to_bytes()))
            .collect()
    }

    /// Signs a ticket letting `peer_id` fetch `asset` until `ttl` from now.
    pub fn issue(&self, asset: &AssetId, peer_id: &str, ttl: Duration) -> Vec<u8> {
        let expires = unix_now().saturating_add(ttl.as_secs());
        let peer = &peer_id.as_bytes()[..peer_id.len().min(MAX_PEER_ID)];
        let mut ticket = Vec::with_capacity(HEADER_LEN + peer.len() + SIGNATURE_LEN);
        ticket.extend_from_slice(TICKET_MAGIC);
        ticket.extend_from_slice(&key_id(&self.current.verifying_key()));
        ticket.extend_from_slice(&asset.0);
        ticket.extend_from_slice(&expires.to_be_bytes());
        ticket.push(peer.len() as u8);
        ticket.extend_from_slice(peer);
        let signature = self.current.sign(&signed_bytes(&ticket));
        ticket.extend_from_slice(&signature.to_bytes());
        ticket
    }
}

/// Creates `dir` readable by its owner only: it holds private keys.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restricting {} to its owner", dir.display()))
}

fn read_key(path: &Path) -> Result<Option<SigningKey>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let seed: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| format!("{} is not a signing key (64 hex digits)", path.display()))?;
    Ok(Some(SigningKey::from_bytes(&seed)))
}

fn key_id(key: &VerifyingKey) -> [u8; KEY_ID_LEN] {
    let digest = sha256(key.as_bytes());
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    [TICKET_CONTEXT, body].concat()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The tracker's clock as a serving peer sees it: the offset of the tracker's clock from
/// this host's, learnt from the `Date` of each of the tracker's answers (announces, keys).
/// Tickets expire in the tracker's time, so checking them in the tracker's time makes this
/// host's clock irrelevant to them. Until an answer is seen the offset is zero: this host's
/// clock stands in for the tracker's, as it must for a peer that never reached it.
#[derive(Debug, Default)]
pub struct TrackerClock {
    /// The tracker's time minus this host's, in seconds.
    offset: AtomicI64,
    /// Whether the clocks were once found too far apart (the warning is logged once).
    warned: AtomicBool,
}

impl TrackerClock {
    /// Notes an answer's `Date` header; one that does not parse as an HTTP date is ignored.
    pub fn note_date(&self, date: &str) {
        let Some(tracker) = httpdate::parse_http_date(date.trim())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        else {
            return;
        };
        self.observe(tracker.as_secs(), unix_now());
    }

    /// Notes that the tracker's clock read `tracker` (Unix seconds) when this host's read
    /// `local`. The first time the two are further apart than a ticket lives, which no
    /// network delay explains, logs a warning and returns it: the offset is applied all the
    /// same (tickets keep working), but other things on this host still trust its clock.
    pub fn observe(&self, tracker: u64, local: u64) -> Option<String> {
        let offset = (i128::from(tracker) - i128::from(local))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
        self.offset.store(offset, Ordering::Relaxed);
        let apart = offset.unsigned_abs();
        if apart <= DEFAULT_TICKET_TTL.as_secs() || self.warned.swap(true, Ordering::Relaxed) {
            return None;
        }
        let warning = format!(
            "clock: the tracker's clock reads {} but this host's reads {}: {apart} s apart, more than a ticket's default {} s life. Tickets are checked by the tracker's clock, so they still work, but fix NTP on whichever host is wrong",
            http_date(tracker),
            http_date(local),
            DEFAULT_TICKET_TTL.as_secs(),
        );
        log::warn!("{warning}");
        Some(warning)
    }

    /// The tracker's time minus this host's, in seconds (zero until an answer is seen).
    pub fn offset(&self) -> i64 {
        self.offset.load(Ordering::Relaxed)
    }

    /// The tracker's time now, in Unix seconds, as far as this host can tell.
    pub fn now(&self) -> u64 {
        unix_now().saturating_add_signed(self.offset())
    }
}

/// `secs` as an HTTP date, for messages; a time past year 9999 as plain seconds.
fn http_date(secs: u64) -> String {
    const YEAR_10000: u64 = 253_402_300_800;
    match UNIX_EPOCH.checked_add(Duration::from_secs(secs)) {
        Some(t) if secs < YEAR_10000 => httpdate::fmt_http_date(t),
        _ => format!("{secs} s after 1970"),
    }
}

/// What a valid ticket says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ticket {
    /// The asset it allows.
    pub asset: AssetId,
    /// The client it was issued to.
    pub peer_id: String,
    /// Unix seconds after which it is void.
    pub expires: u64,
}

/// Why a ticket was refused; the texts are what the client is told in its error frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TicketError {
    /// The client presented none.
    Missing,
    /// Not a ticket: wrong magic, lengths or signature encoding.
    Malformed,
    /// Signed by a key this peer does not know (the tracker may have rotated its key).
    UnknownKey,
    /// Signed in the name of a known key, but the signature is false.
    BadSignature,
    /// A valid ticket for another asset.
    WrongAsset {
        /// The asset the ticket allows.
        ticket: AssetId,
        /// The asset the client asked for.
        asked: AssetId,
    },
    /// Past its expiry (beyond the clock skew allowed).
    Expired,
}

impl std::fmt::Display for TicketError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TicketError::Missing => {
                f.write_str("no ticket: this peer serves only clients the tracker allowed")
            }
            TicketError::Malformed => f.write_str("malformed ticket"),
            TicketError::UnknownKey => {
                f.write_str("ticket signed by a key this peer does not know")
            }
            TicketError::BadSignature => f.write_str("ticket signature does not verify"),
            TicketError::WrongAsset { ticket, asked } => {
                write!(f, "ticket is for asset {ticket}, not {asked}")
            }
            TicketError::Expired => {
                f.write_str("ticket expired: the client should announce again for a new one")
            }
        }
    }
}

impl std::error::Error for TicketError {}

/// Checks tickets against the tracker's public keys, and their expiry against the
/// tracker's clock.
#[derive(Clone, Debug)]
pub struct TicketVerifier {
    keys: Vec<VerifyingKey>,
    clock: Arc<TrackerClock>,
}

impl TicketVerifier {
    /// From the tracker's public keys in hex (as `GET /keys` lists them).
    pub fn from_hex(keys: &[String]) -> Result<TicketVerifier> {
        let keys = keys
            .iter()
            .map(|k| {
                let bytes: [u8; 32] = hex::decode(k.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .with_context(|| format!("{k:?} is not a public key (64 hex digits)"))?;
                VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| anyhow::anyhow!("{k:?} is not an Ed25519 public key: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        if keys.is_empty() {
            bail!("no tracker public key to verify tickets with");
        }
        Ok(TicketVerifier {
            keys,
            clock: Arc::default(),
        })
    }

    /// The same keys, checking expiry against `clock` (by default this host's clock).
    pub fn with_clock(self, clock: Arc<TrackerClock>) -> TicketVerifier {
        TicketVerifier { clock, ..self }
    }

    /// The ticket's content, if it was signed by one of the keys, is for `asset`, and has
    /// not expired.
    pub fn verify(&self, ticket: &[u8], asset: &AssetId) -> Result<Ticket, TicketError> {
        if ticket.is_empty() {
            return Err(TicketError::Missing);
        }
        if ticket.len() < HEADER_LEN + SIGNATURE_LEN || &ticket[..4] != TICKET_MAGIC {
            return Err(TicketError::Malformed);
        }
        let (body, signature) = ticket.split_at(ticket.len() - SIGNATURE_LEN);
        let peer_len = body[HEADER_LEN - 1] as usize;
        if body.len() != HEADER_LEN + peer_len {
            return Err(TicketError::Malformed);
        }
        let id = &body[4..4 + KEY_ID_LEN];
        let key = self
            .keys
            .iter()
            .find(|k| key_id(k) == id)
            .ok_or(TicketError::UnknownKey)?;
        let signature = Signature::from_slice(signature).map_err(|_| TicketError::Malformed)?;
        key.verify(&signed_bytes(body), &signature)
            .map_err(|_| TicketError::BadSignature)?;
        let mut digest = Digest::default();
        digest.copy_from_slice(&body[12..44]);
        let ticket_asset = AssetId(digest);
        if &ticket_asset != asset {
            return Err(TicketError::WrongAsset {
                ticket: ticket_asset,
                asked: *asset,
            });
        }
        let expires = u64::from_be_bytes(body[44..52].try_into().expect("8 bytes"));
        if expires.saturating_add(CLOCK_SKEW) < self.clock.now() {
            return Err(TicketError::Expired);
        }
        Ok(Ticket {
            asset: ticket_asset,
            peer_id: String::from_utf8_lossy(&body[HEADER_LEN..]).into_owned(),
            expires,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(n: u8) -> AssetId {
        AssetId([n; 32])
    }

    #[test]
    fn a_ticket_verifies_only_for_its_asset_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path()).unwrap();
        let verifier = TicketVerifier::from_hex(&ring.public_keys()).unwrap();
        let ticket = ring.issue(&asset(1), "peer-7", DEFAULT_TICKET_TTL);
        let t = verifier.verify(&ticket, &asset(1)).unwrap();
        assert_eq!(t.peer_id, "peer-7");
        assert!(
            verifier
                .verify(&ticket, &asset(2))
                .unwrap_err()
                .to_string()
                .contains("not")
        );
        // Any flipped bit breaks it.
        for i in 0..ticket.len() {
            let mut bad = ticket.clone();
            bad[i] ^= 0x01;
            assert!(
                verifier.verify(&bad, &asset(1)).is_err(),
                "bit flip at {i} passed"
            );
        }
        // Truncations never panic and never pass.
        for len in 0..ticket.len() {
            assert!(verifier.verify(&ticket[..len], &asset(1)).is_err());
        }
        let other = tempfile::tempdir().unwrap();
        let stranger = KeyRing::load_or_create(other.path()).unwrap();
        let forged = stranger.issue(&asset(1), "peer-7", DEFAULT_TICKET_TTL);
        assert!(
            verifier
                .verify(&forged, &asset(1))
                .unwrap_err()
                .to_string()
                .contains("does not know")
        );
        assert_eq!(
            verifier.verify(&forged, &asset(1)),
            Err(TicketError::UnknownKey)
        );
        assert_eq!(verifier.verify(&[], &asset(1)), Err(TicketError::Missing));
        assert_eq!(
            verifier.verify(&ticket[..10], &asset(1)),
            Err(TicketError::Malformed)
        );
    }

    /// A ticket for asset 1 signed by `ring`, expiring at `expires` (Unix seconds).
    fn expiring_at(ring: &KeyRing, expires: u64) -> Vec<u8> {
        let mut ticket = ring.issue(&asset(1), "p", Duration::ZERO);
        let body_len = ticket.len() - SIGNATURE_LEN;
        ticket.truncate(body_len);
        ticket[44..52].copy_from_slice(&expires.to_be_bytes());
        let signature = ring.current.sign(&signed_bytes(&ticket));
        ticket.extend_from_slice(&signature.to_bytes());
        ticket
    }

    #[test]
    fn an_expired_ticket_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path()).unwrap();
        let verifier = TicketVerifier::from_hex(&ring.public_keys()).unwrap();
        let ticket = expiring_at(&ring, unix_now() - 3600);
        assert!(
            verifier
                .verify(&ticket, &asset(1))
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        assert_eq!(
            verifier.verify(&ticket, &asset(1)),
            Err(TicketError::Expired)
        );
    }

    #[test]
    fn expiry_is_checked_by_the_tracker_clock_once_an_answer_set_it() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path()).unwrap();
        let clock = Arc::new(TrackerClock::default());
        let verifier = TicketVerifier::from_hex(&ring.public_keys())
            .unwrap()
            .with_clock(Arc::clone(&clock));
        let now = unix_now();
        // This host is 11 minutes fast: the tracker issued a ticket for 10 minutes of its
        // own time, which this host's clock alone calls expired.
        let tracker_now = now - 660;
        let fresh = expiring_at(&ring, tracker_now + 600);
        assert_eq!(
            verifier.verify(&fresh, &asset(1)),
            Err(TicketError::Expired),
            "before any answer this host's clock is used"
        );
        assert!(
            clock.observe(tracker_now, now).is_some(),
            "11 minutes apart is more than a ticket lives: warned"
        );
        assert_eq!(clock.offset(), -660);
        verifier.verify(&fresh, &asset(1)).unwrap();
        // And one the tracker's clock calls expired is refused though this host's would
        // take it: slow by 11 minutes, a host would accept tickets 11 minutes stale.
        assert_eq!(clock.observe(now + 660, now), None, "warned once only");
        let stale = expiring_at(&ring, now + 600);
        assert_eq!(
            verifier.verify(&stale, &asset(1)),
            Err(TicketError::Expired)
        );
        // The skew allowance remains for the residual: 20 s past expiry passes, 40 s not.
        assert_eq!(clock.observe(now, now), None);
        verifier
            .verify(&expiring_at(&ring, now - 20), &asset(1))
            .unwrap();
        assert!(
            verifier
                .verify(&expiring_at(&ring, now - 40), &asset(1))
                .is_err()
        );
        // A Date header sets it too; a bad one changes nothing.
        clock.note_date(&httpdate::fmt_http_date(
            SystemTime::now() - Duration::from_secs(660),
        ));
        assert!(
            (-662..=-659).contains(&clock.offset()),
            "{}",
            clock.offset()
        );
        clock.note_date("yesterday, at noon");
        clock.note_date("");
        assert!(
            (-662..=-659).contains(&clock.offset()),
            "{}",
            clock.offset()
        );
    }

    #[test]
    fn a_huge_offset_is_applied_and_warned_about_once() {
        let dir = tempfile::tempdir().unwrap();
        let ring = KeyRing::load_or_create(dir.path()).unwrap();
        let clock = Arc::new(TrackerClock::default());
        let verifier = TicketVerifier::from_hex(&ring.public_keys())
            .unwrap()
            .with_clock(Arc::clone(&clock));
        let now = unix_now();
        let day = 86_400;
        // This host's clock is a year behind the tracker's.
        let tracker_now = now + 365 * day;
        let warning = clock
            .observe(tracker_now, now)
            .expect("a year apart is warned about");
        for what in [
            http_date(tracker_now).as_str(),
            http_date(now).as_str(),
            "NTP",
        ] {
            assert!(warning.contains(what), "{what:?} not in {warning:?}");
        }
        assert_eq!(clock.observe(tracker_now + 1, now), None, "warned once");
        assert_eq!(clock.offset(), 365 * day as i64 + 1);
        verifier
            .verify(&expiring_at(&ring, tracker_now + 600), &asset(1))
            .unwrap();
        assert_eq!(
            verifier.verify(&expiring_at(&ring, now + 600), &asset(1)),
            Err(TicketError::Expired),
            "valid by this host's clock, a year stale by the tracker's"
        );
        // Absurd clocks neither overflow nor panic.
        clock.observe(u64::MAX, 0);
        assert_eq!(clock.offset(), i64::MAX);
        assert!(clock.now() > i64::MAX as u64);
        clock.observe(0, u64::MAX);
        assert_eq!(clock.offset(), i64::MIN);
        assert_eq!(clock.now(), 0);
        assert!(http_date(u64::MAX).contains("s after 1970"));
    }

    #[test]
    fn rotation_keeps_the_previous_key_verifying() {
        let dir = tempfile::tempdir().unwrap();
        let first = KeyRing::load_or_create(dir.path()).unwrap();
        let old_ticket = first.issue(&asset(3), "p", DEFAULT_TICKET_TTL);
        let rotated = KeyRing::rotate(dir.path()).unwrap();
        assert_eq!(rotated.public_keys()[1], first.public_keys()[0]);
        let reloaded = KeyRing::load_or_create(dir.path()).unwrap();
        assert_eq!(reloaded.public_keys(), rotated.public_keys());
        let verifier = TicketVerifier::from_hex(&reloaded.public_keys()).unwrap();
        verifier.verify(&old_ticket, &asset(3)).unwrap();
        verifier
            .verify(
                &reloaded.issue(&asset(3), "p", DEFAULT_TICKET_TTL),
                &asset(3),
            )
            .unwrap();
        // A second rotation retires the first key.
        let again = KeyRing::rotate(dir.path()).unwrap();
        let verifier = TicketVerifier::from_hex(&again.public_keys()).unwrap();
        assert!(verifier.verify(&old_ticket, &asset(3)).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "key directory readable by others: {mode:o}"
        );
        for file in [KeyRing::CURRENT, KeyRing::PREVIOUS] {
            let mode = fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is {mode:o}");
        }
    }

    #[test]
    fn tokens_grant_what_the_file_says() {
        let (ci, ci_entry) = new_token(
            "ci",
            &Rights {
                publish: true,
                origin: true,
                fetch: vec!["*".into()],
                ..Rights::default()
            },
        )
        .unwrap();
        let id = asset(9).to_string();
        let (viewer, viewer_entry) = new_token(
            "viewer",
            &Rights {
                fetch: vec![id],
                ..Rights::default()
            },
        )
        .unwrap();
        let tokens = Tokens::parse(&format!("{ci_entry}\n{viewer_entry}")).unwrap();
        assert_eq!(
            tokens.authorize(Some(&ci), Action::Publish).unwrap().name,
            "ci"
        );
        assert!(
            tokens
                .authorize(Some(&ci), Action::Origin(&asset(1)))
                .is_ok()
        );
        assert!(
            tokens
                .authorize(Some(&viewer), Action::Fetch(&asset(9)))
                .is_ok()
        );
        assert!(matches!(
            tokens.authorize(Some(&viewer), Action::Fetch(&asset(1))),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            tokens.authorize(Some(&viewer), Action::Publish),
            Err(Denied::Forbidden(_))
        ));
        assert!(matches!(
            tokens.authorize(Some("sct_nope"), Action::Browse),
            Err(Denied::Unauthenticated(_))
        ));
        assert!(matches!(
            tokens.authorize(None, Action::Browse),
            Err(Denied::Unauthenticated(_))
        ));
        // The rights of issue 13: neither token may read /metrics or advertise.
        let denied = tokens.authorize(Some(&ci), Action::Metrics).unwrap_err();
        assert!(matches!(&denied, Denied::Forbidden(m) if m.contains("metrics = true")));
        let ci_grant = tokens.authorize(Some(&ci), Action::Browse).unwrap();
        assert!(!ci_grant.may_advertise() && ci_grant.may_originate());
        let (ops, ops_entry) = new_token(
            "ops",
            &Rights {
                advertise: true,
                metrics: true,
                ..Rights::default()
            },
        )
        .unwrap();
        let tokens = Tokens::parse(&format!("{ci_entry}\n{ops_entry}")).unwrap();
        let ops_grant = tokens.authorize(Some(&ops), Action::Metrics).unwrap();
        assert!(ops_grant.may_advertise() && !ops_grant.may_fetch(&asset(1)));
        assert_ne!(
            ops_grant.key(),
            tokens.authorize(Some(&ci), Action::Browse).unwrap().key()
        );
    }

    #[test]
    fn a_bad_permissions_file_says_what_is_wrong() {
        let short = "[[token]]\nname = \"x\"\nsha256 = \"abc\"\n";
        assert!(Tokens::parse(short).unwrap_err().contains("64 hex digits"));
        let unknown = "[[token]]\nname = \"x\"\nsha256 = \"abc\"\nsuperuser = true\n";
        assert!(Tokens::parse(unknown).unwrap_err().contains("superuser"));
        let bad_id = format!(
            "[[token]]\nname = \"x\"\nsha256 = \"{}\"\nfetch = [\"nope\"]\n",
            "0".repeat(64)
        );
        assert!(
            Tokens::parse(&bad_id)
                .unwrap_err()
                .contains("not an asset id")
        );
    }

    #[test]
    fn name_prefixes_limit_tags_and_admin_is_its_own_right() {
        let (ci, ci_entry) = new_token(
            "ci",
            &Rights {
                publish: true,
                names: vec!["ci/".into(), "team-a/".into()],
                fetch: vec!["*".into()],
                ..Rights::default()
            },
        )
        .unwrap();
        let (ops, ops_entry) = new_token(
            "ops",
            &Rights {
                admin: true,
                ..Rights::default()
            },
        )
        .unwrap();
        let (any, any_entry) = new_token(
            "any",
            &Rights {
                publish: true,
                ..Rights::default()
            },
        )
        .unwrap();
        let tokens = Tokens::parse(&format!("{ci_entry}\n{ops_entry}\n{any_entry}")).unwrap();
        assert!(tokens.authorize(Some(&ci), Action::Tag("ci/app")).is_ok());
        assert!(tokens.authorize(Some(&ci), Action::Tag("team-a/x")).is_ok());
        let refused = tokens
            .authorize(Some(&ci), Action::Tag("prod/app"))
            .unwrap_err();
        assert!(
            matches!(&refused, Denied::Forbidden(m) if m.contains("prod/app") && m.contains("ci/")),
            "{refused:?}"
        );
        assert!(
            tokens
                .authorize(Some(&any), Action::Tag("prod/app"))
                .is_ok()
        );
        assert!(matches!(
            tokens.authorize(Some(&ops), Action::Tag("ci/app")),
            Err(Denied::Forbidden(m)) if m.contains("publish right")
        ));
        assert!(tokens.authorize(Some(&ops), Action::Admin).is_ok());
        assert!(matches!(
            tokens.authorize(Some(&ci), Action::Admin),
            Err(Denied::Forbidden(m)) if m.contains("admin = true")
        ));
    }

    #[test]
    fn revoking_removes_the_named_entries_and_keeps_the_rest_as_written() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("auth.toml");
        fs::write(&path, "# our tokens\n").unwrap();
        let mut tokens = Vec::new();
        for name in ["ci", "viewer", "ci"] {
            let (token, entry) = new_token(name, &Rights::default()).unwrap();
            append_token(&path, &entry).unwrap();
            tokens.push(token);
        }
        assert_eq!(revoke_token(&path, "ci").unwrap(), 2);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("# our tokens\n"), "{text}");
        let left = Tokens::load(&path).unwrap();
        assert_eq!(left.len(), 1);
        assert!(left.authorize(Some(&tokens[1]), Action::Browse).is_ok());
        assert!(left.authorize(Some(&tokens[0]), Action::Browse).is_err());
        let e = format!("{:#}", revoke_token(&path, "ci").unwrap_err());
        assert!(
            e.contains("no token named \"ci\"") && e.contains("viewer"),
            "{e}"
        );
        // Two entries under headers written otherwise would be removed together: refused.
        let odd = dir.path().join("odd.toml");
        let (_, a) = new_token("a", &Rights::default()).unwrap();
        let (_, b) = new_token("b", &Rights::default()).unwrap();
        fs::write(&odd, format!("{a}\n{b}")).unwrap();
        assert_eq!(
            revoke_token(&odd, "a").unwrap(),
            1,
            "a file that starts with an entry"
        );
        fs::write(
            &odd,
            format!("{a}\n{}", b.replace("[[token]]", "[[ token ]]")),
        )
        .unwrap();
        let e = format!("{:#}", revoke_token(&odd, "a").unwrap_err());
        assert!(e.contains("alone on its line"), "{e}");
        assert_eq!(Tokens::load(&odd).unwrap().len(), 2, "nothing removed");
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "permissions file readable by others: {mode:o}"
        );
        assert_eq!(
            ticket_outlives_revocation(DEFAULT_TICKET_TTL),
            Duration::from_secs(630)
        );
    }
}
