//! The peer server a `get` embeds: it serves the asset from the download's store while it
//! downloads (from the live have-bitmap the scheduler updates), and after it when seeding.
//! Every name this client takes from [`crate::server`] comes through here.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::bitfield::LiveHave;
use crate::manifest::Manifest;
use crate::server::{Server, ServerConfig, ShutdownHandle};
pub(crate) use crate::server::{TicketKeys, UploadCounter};

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
}

impl Serving {
    pub(crate) fn start(
        config: &GetConfig,
        listen: SocketAddr,
        manifest: &Manifest,
        live: &LiveHave,
        await_keys: bool,
    ) -> Result<Serving> {
        let server = Server::bind(ServerConfig {
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
        let thread = std::thread::spawn(move || server.serve());
        Ok(Serving {
            stop,
            thread: Some(thread),
            uploaded,
            advertised,
            keys,
        })
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
