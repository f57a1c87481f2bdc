//! What the peer server counts: connections (accepted, refused, failed, broken protocol)
//! and bytes and chunks sent per asset, read by announces ([`UploadCounter`]) and by the
//! `/metrics` endpoint in the Prometheus text format.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Result;

use super::Shared;
use crate::http;
use crate::manifest::{AssetId, Manifest};
use crate::metrics::{self, Exposition};
use crate::sync::LockExt;

/// An asset the server has served, with its counters.
pub(super) struct Served {
    pub(super) manifest: Arc<Manifest>,
    /// Bytes of chunks sent.
    pub(super) uploaded: AtomicU64,
    /// Chunks sent.
    pub(super) chunks: AtomicU64,
}

/// Connection counters for the metrics endpoint: atomics, bumped once per connection.
pub(super) struct Counters {
    pub(super) started: Instant,
    /// Connection slots (`max_conns`).
    pub(super) slots: usize,
    /// Connections accepted, refused ones included.
    pub(super) accepted: AtomicU64,
    /// Connections refused because every slot, or the address's share of them, was taken.
    pub(super) refused: AtomicU64,
    /// Connections that ended in an error (logged).
    pub(super) failed: AtomicU64,
    /// Of those, the ones where the client broke the protocol: a malformed frame, an
    /// unsupported version, a request out of order or out of range.
    pub(super) protocol_errors: AtomicU64,
}

impl Counters {
    pub(super) fn new(slots: usize) -> Counters {
        Counters {
            started: Instant::now(),
            slots,
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
        }
    }

    /// Counts one more of `counter`.
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads how many bytes of an asset a [`super::Server`] has sent, from any thread.
#[derive(Clone)]
pub struct UploadCounter(pub(super) Arc<Shared>);

impl UploadCounter {
    /// Bytes of `asset` sent so far.
    pub fn get(&self, asset: &AssetId) -> u64 {
        self.0.uploaded(asset)
    }
}

impl Shared {
    /// Bytes of `asset` sent so far.
    pub(super) fn uploaded(&self, asset: &AssetId) -> u64 {
        let assets = self.assets.locked();
        assets
            .get(asset)
            .map_or(0, |s| s.uploaded.load(Ordering::Relaxed))
    }

    /// Answers a request to the metrics endpoint.
    pub(super) fn answer_metrics(&self, request: &mut http::Request<'_>) -> http::Response {
        let path = request.path();
        match (request.method(), path) {
            (http::Method::Get, "/metrics") => {
                http::Response::new(200, metrics::CONTENT_TYPE, self.metrics())
            }
            (method, "/metrics") => {
                http::Response::error(405, format!("{method} is not allowed on /metrics"))
            }
            _ => http::Response::error(
                404,
                format!("no such endpoint: {path} (the peer server answers GET /metrics)"),
            ),
        }
    }

    /// The server's counters in the Prometheus text format.
    fn metrics(&self) -> String {
        // Every asset in the store is listed, served yet or not, so that its counters start
        // at 0 instead of appearing with their first bytes (which `rate()` would miss).
        for id in self.store.list().unwrap_or_default() {
            let _ = self.served(&id);
        }
        let mut assets: Vec<(String, Arc<Served>)> = self
            .assets
            .locked()
            .iter()
            .map(|(id, served)| (id.to_string(), Arc::clone(served)))
            .collect();
        assets.sort_by(|a, b| a.0.cmp(&b.0));
        let counters = &self.counters;
        let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let mut m = Exposition::new();
        m.gauge(
            "swarmcache_peer_server_uptime_seconds",
            "Seconds since the peer server started.",
        )
        .sample(&[], counters.started.elapsed().as_secs());
        m.gauge(
            "swarmcache_peer_server_connection_slots",
            "Connections served at once (--max-conns); more are refused as busy.",
        )
        .sample(&[], counters.slots);
        m.gauge(
            "swarmcache_peer_server_connections_active",
            "Connections being served now.",
        )
        .sample(&[], self.seats.open());
        m.counter(
            "swarmcache_peer_server_connections_accepted_total",
            "Connections accepted, busy refusals included.",
        )
        .sample(&[], count(&counters.accepted));
        m.counter(
            "swarmcache_peer_server_busy_refusals_total",
            "Connections refused because every slot, or the remote address's share of them, was taken.",
        )
        .sample(&[], count(&counters.refused));
        m.counter(
            "swarmcache_peer_server_connections_failed_total",
            "Connections that ended in an error (timeouts, resets, protocol errors, unknown assets).",
        )
        .sample(&[], count(&counters.failed));
        m.counter(
            "swarmcache_peer_server_protocol_errors_total",
            "Connections closed because the client broke the protocol.",
        )
        .sample(&[], count(&counters.protocol_errors));
        let mut family = m.counter(
            "swarmcache_peer_server_served_bytes_total",
            "Bytes of chunks sent, per asset.",
        );
        for (id, served) in &assets {
            let labels = [("asset", id.as_str()), ("name", &served.manifest.name)];
            family.sample(&labels, count(&served.uploaded));
        }
        let mut family = m.counter(
            "swarmcache_peer_server_served_chunks_total",
            "Chunks sent, per asset.",
        );
        for (id, served) in &assets {
            let labels = [("asset", id.as_str()), ("name", &served.manifest.name)];
            family.sample(&labels, count(&served.chunks));
        }
        m.finish()
    }

    /// The asset's manifest, read from the store once and then kept in memory.
    pub(super) fn served(&self, id: &AssetId) -> Result<Option<Arc<Served>>> {
        if let Some(s) = self.assets.locked().get(id) {
            return Ok(Some(Arc::clone(s)));
        }
        let Some(manifest) = self.store.manifest(id)? else {
            return Ok(None);
        };
        let served = Arc::new(Served {
            manifest: Arc::new(manifest),
            uploaded: AtomicU64::new(0),
            chunks: AtomicU64::new(0),
        });
        let mut assets = self.assets.locked();
        Ok(Some(Arc::clone(assets.entry(*id).or_insert(served))))
    }
}
