//! The peer server a `get` embeds: it serves the asset from the download's store while it
//! downloads (from the live have-bitmap the scheduler updates), and after it when seeding.
//! While the download runs, its uploads also pass a limiter whose rate the scheduler sets
//! (the host's own download first): a headroom below the uplink's learnt rate
//! ([`super::headroom`], the default), or with `--yield-uplink` from the download's round
//! trip ([`super::uplink`]); once seeding, that limit is lifted. Every name this client
//! takes from [`crate::server`] comes through here.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::bitfield::LiveHave;
use crate::manifest::{AssetId, Manifest};
use crate::ratelimit::RateLimiter;
use crate::server::{Server, ServerConfig, ShutdownHandle};
pub(crate) use crate::server::{TicketKeys, UploadCounter, UploadGauge};

use super::config::GetConfig;

/// The server embedded in a `get`: serves the asset from the download's store while it
/// downloads, and after it when seeding.
pub(crate) struct Serving {
    stop: ShutdownHandle,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    pub(crate) uploaded: UploadCounter,
    pub(crate) advertised: SocketAddr,
    /// Where announce answers put the tracker's keys.
    pub(crate) keys: TicketKeys,
    /// The upload rate the own download lets the server use.
    pub(crate) yielding: Arc<RateLimiter>,
    /// What the uploads did, to learn the uplink from.
    pub(crate) gauge: Arc<UploadGauge>,
}

/// The rate that stands for "no limit of the own download's": 1 TB/s.
pub(crate) const UNLIMITED: u64 = 1 << 40;

/// What the scheduler needs to make the embedded server yield.
#[derive(Clone)]
pub(crate) struct Yielding {
    /// The limiter every upload passes.
    pub(crate) limiter: Arc<RateLimiter>,
    /// Bytes served so far, of `asset`.
    pub(crate) uploaded: UploadCounter,
    /// The asset downloaded and served.
    pub(crate) asset: AssetId,
    /// What the uploads did (bytes written, time held back), to learn the uplink from.
    pub(crate) gauge: Arc<UploadGauge>,
}

impl Serving {
    pub(crate) fn start(
        config: &GetConfig,
        listen: SocketAddr,
        manifest: &Manifest,
        live: &LiveHave,
        await_keys: bool,
    ) -> Result<Serving> {
        let yielding = Arc::new(RateLimiter::new(UNLIMITED));
        let server = Server::bind(ServerConfig {
            yield_to: Some(Arc::clone(&yielding)),
            chunk_size: manifest.chunk_size,
            advertise: config.advertise,
            max_upload_rate: config.max_upload_rate,
            await_keys,
            ..ServerConfig::new(listen, config.store.clone())
        })
        .context("starting to serve while downloading (use --no-serve to download only)")?;
        server.serve_live(manifest.id(), Arc::clone(live));
        let advertised = config.advertise.unwrap_or(server.local_addr());
        let (stop, uploaded) = (server.shutdown_handle(), server.uploaded());
        let keys = server.ticket_keys();
        let gauge = server.upload_gauge();
        let thread = std::thread::spawn(move || server.serve());
        Ok(Serving {
            stop,
            thread: Some(thread),
            uploaded,
            advertised,
            keys,
            yielding,
            gauge,
        })
    }

    /// What the scheduler adapts while the download of `asset` runs.
    pub(crate) fn yielding(&self, asset: AssetId) -> Yielding {
        Yielding {
            limiter: Arc::clone(&self.yielding),
            uploaded: self.uploaded.clone(),
            asset,
            gauge: Arc::clone(&self.gauge),
        }
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(Ok(Err(e))) = self.thread.take().map(|t| t.join()) {
            log::warn!("serving stopped with an error: {e:#}");
        }
    }
}
