//! swarmcache: peer-assisted, centrally controlled content delivery.
//!
//! A file is cut into fixed-size chunks, each with a SHA-256 checksum, described by a
//! [`manifest::Manifest`] whose hash is the asset id. A [`tracker`] is the authority: it
//! keeps the catalog of manifests durable on disk and knows which peers hold which asset.
//! A [`server`] serves the chunks in its [`store`] to other peers over the binary [`wire`]
//! protocol; with `--origin` it is the swarm's fallback of last resort. A [`client`] takes
//! an asset from its local store first, then in parallel from peers, then from the origin,
//! verifying every chunk before it is written. The binaries in `src/bin` are thin shells
//! over these modules.
//!
//! Modules:
//! - [`backoff`]: the one jittered exponential backoff of every retry loop.
//! - [`sync`]: locks that survive a panicked holder.
//! - [`wake`]: wake-ups a thread waits for together with its socket.
//! - [`units`]: human sizes and durations (`1MiB`, `60s`) for flags.
//! - [`bitfield`]: which chunks a peer or store holds.
//! - [`manifest`]: the manifest format, asset ids, parallel chunk hashing, verification.
//! - [`crypt`]: content encryption: per-asset keys, AES-128-CTR nonced per chunk, and the
//!   chunk-range decryption every output goes through.
//! - [`fsutil`]: crash-safe writes (temporary name, fsync, rename).
//! - [`store`]: the content-addressed, crash-safe directory of assets: layout, in-use
//!   locks, partial downloads, and the cache (what to evict to stay under a size limit).
//! - [`wire`]: the peer protocol (limits, a pure codec, the connection that reads frames).
//! - [`ratelimit`]: token buckets: bytes per process, requests per client address.
//! - [`api`]: the JSON types of the tracker's HTTP API.
//! - [`origin_url`]: the checks of origin URLs (web seeds: HTTP(S) servers holding an asset).
//! - [`auth`]: tokens and permissions, signing keys, and the tickets peers check.
//! - [`net`]: the one listener skeleton: accept loop, per-address caps, refusals, shutdown.
//! - [`http`]: the HTTP/1.1 server (HTTPS with rustls) of the tracker, the gateway and
//!   the peer server's metrics.
//! - [`tracker`]: the tracker: its routes, swarms, origin shares, figures and durable
//!   catalog of manifests.
//! - [`tracker_client`]: the HTTP client side of the tracker API, over `http://` or
//!   `https://`.
//! - [`server`]: the peer server (seeding and serving chunks).
//! - [`announce`]: the one announce loop (heartbeats, retries, leaving the swarms).
//! - [`client`]: downloads: the pure chunk plan, its scheduler, connection workers,
//!   streaming out in order, feeds read at any offset, the summary.
//! - [`gateway`]: the HTTP gateway for players and browsers (Range reads, `/stats`,
//!   `/watch`).
//! - [`metrics`]: the Prometheus text format of the `/metrics` endpoints.
//! - [`names`]: human names and tags for assets (`ci/app:latest`) and the JSON of `/tags`.
//! - [`failure`]: the typed causes of a failed command that exit codes tell apart.
//! - [`cli`]: helpers shared by the binaries (exit codes, logging, flags, config file).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod announce;
pub mod api;
pub mod auth;
pub mod backoff;
pub mod bitfield;
pub mod cli;
pub mod client;
pub mod crypt;
pub mod failure;
pub mod fsutil;
pub mod gateway;
pub mod http;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod net;
pub mod origin_url;
pub mod ratelimit;
pub mod server;
pub mod store;
pub mod sync;
pub mod tracker;
pub mod tracker_client;
pub mod units;
pub mod wake;
pub mod wire;
