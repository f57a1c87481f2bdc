//! The client's announces: one before the download (its sources), then from their own
//! thread twice a second while it downloads (new peers and origin shares go to the
//! scheduler), at the tracker's heartbeat period while it seeds, and "stopped" on the way
//! out, with the peers found unreachable or corrupt since the last announce.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use crossbeam_channel::{Sender, bounded};

use crate::api::{AnnounceEvent, AnnounceRequest, AnnounceResponse};
use crate::manifest::AssetId;
use crate::sync::{LockExt, RwLockExt};
use crate::tracker_client::{TrackerClient, new_peer_id};

use super::plan::Complaint;
use super::serving::{LiveHave, Serving, TicketKeys, UploadCounter};
use super::worker::Ticket;

/// While downloading, progress is announced this often, so that other peers learn within
/// half a second what this one can serve and this one learns of newcomers as fast.
const ANNOUNCE_PERIOD: Duration = Duration::from_millis(500);
/// After a failed announce the next comes at least this much later.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// Peers the scheduler gave up on for a reason the tracker should know, drained by the next
/// announce.
#[derive(Default)]
struct Complaints {
    /// Could not be connected to.
    unreachable: Vec<String>,
    /// Sent data failing its hash, or broke the protocol.
    corrupt: Vec<String>,
}

/// Complaints shared between the scheduler, which files them, and the announces.
#[derive(Clone, Default)]
pub(crate) struct Reports(Arc<Mutex<Complaints>>);

impl Reports {
    /// Files `peer_id` on the list `complaint` names.
    pub(crate) fn file(&self, peer_id: &str, complaint: Complaint) {
        let mut c = self.0.locked();
        match complaint {
            Complaint::Corrupt => c.corrupt.push(peer_id.to_string()),
            Complaint::Unreachable => c.unreachable.push(peer_id.to_string()),
        }
    }

    fn take(&self) -> Complaints {
        std::mem::take(&mut *self.0.locked())
    }
}

/// What this client announces, and to which tracker.
#[derive(Clone)]
pub(crate) struct Announce {
    tracker: TrackerClient,
    asset: AssetId,
    template: AnnounceRequest,
    live: LiveHave,
    uploaded: Option<UploadCounter>,
    /// Peers to report since the last announce.
    pub(crate) reports: Reports,
    /// The latest ticket the tracker handed out (empty in open mode).
    pub(crate) ticket: Ticket,
    /// The embedded server, told the tracker's keys from every answer.
    keys: Option<TicketKeys>,
}

impl Announce {
    /// Announces of `asset` holding what `live` holds, serving through `serving`.
    pub(crate) fn new(
        tracker: TrackerClient,
        asset: AssetId,
        serving: Option<&Serving>,
        live: LiveHave,
    ) -> Announce {
        let template = AnnounceRequest {
            peer_id: new_peer_id(),
            addr: serving.map(|s| s.advertised.to_string()),
            ..AnnounceRequest::default()
        };
        Announce {
            tracker,
            asset,
            template,
            live,
            uploaded: serving.map(|s| s.uploaded.clone()),
            reports: Reports::default(),
            ticket: Ticket::default(),
            keys: serving.map(|s| s.keys.clone()),
        }
    }

    /// One announce of what `live` holds, with the peers found unreachable since the last.
    pub(crate) fn once(&self) -> Result<AnnounceResponse> {
        let have = self.live.read_now().clone();
        let Complaints {
            unreachable,
            corrupt,
        } = self.reports.take();
        let request = AnnounceRequest {
            complete: have.is_full(),
            have: (!have.is_full()).then(|| have.to_hex()),
            uploaded: self.uploaded.as_ref().map_or(0, |u| u.get(&self.asset)),
            unreachable,
            corrupt,
            ..self.template.clone()
        };
        let answer = self.tracker.announce(&self.asset, &request)?;
        if let Some(ticket) = answer.ticket.as_deref().and_then(|t| hex::decode(t).ok()) {
            *self.ticket.write_now() = ticket;
        }
        if let Some(keys) = &self.keys {
            keys.set(&answer.keys)
                .context("the tracker's announce answer carries a bad key")?;
        }
        Ok(answer)
    }

    /// Tells the tracker this peer is gone, with what it served and found wrong since the
    /// last announce.
    fn leave(&self) {
        let Complaints {
            unreachable,
            corrupt,
        } = self.reports.take();
        let request = AnnounceRequest {
            event: Some(AnnounceEvent::Stopped),
            unreachable,
            corrupt,
            uploaded: self.uploaded.as_ref().map_or(0, |u| u.get(&self.asset)),
            ..self.template.clone()
        };
        let _ = self.tracker.announce(&self.asset, &request);
    }
}

/// Says "stopped" to the tracker when dropped, unless disarmed.
pub(crate) struct Departure(pub(crate) Option<Announce>);

impl Drop for Departure {
    fn drop(&mut self) {
        if let Some(announce) = self.0.take() {
            announce.leave();
        }
    }
}

/// Where a downloading client's announce answers go.
pub(crate) type OnAnswer = Box<dyn Fn(AnnounceResponse) + Send>;

/// Announces on a period from its own thread, so a slow tracker never holds up the
/// scheduler, and hands each answer (new peers, a new origin share) to it. Without a
/// scheduler (seeding) it beats at the tracker's heartbeat period. Dropping it stops the
/// thread at once and, through its [`Departure`], leaves the swarm.
pub(crate) struct Announcer {
    /// Dropped to stop the thread (it waits on the other end instead of sleeping).
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
    announce: Announce,
    departure: Departure,
}

impl Announcer {
    /// Starts announcing; `on_answer` is the scheduler's, `None` when seeding.
    pub(crate) fn start(
        announce: Announce,
        on_answer: Option<OnAnswer>,
        departure: Departure,
    ) -> Announcer {
        let (stop, stopped) = bounded::<()>(0);
        let thread = {
            let announce = announce.clone();
            std::thread::spawn(move || {
                let mut period = if on_answer.is_some() {
                    ANNOUNCE_PERIOD
                } else {
                    Duration::ZERO
                };
                let mut failing = false;
                // Disconnected (the announcer dropped) ends the loop; a timeout announces.
                while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    match announce.once() {
                        Ok(answer) => {
                            failing = false;
                            match &on_answer {
                                Some(on_answer) => on_answer(answer),
                                None => {
                                    period =
                                        Duration::from_secs(answer.interval_secs.clamp(1, 3600))
                                }
                            }
                        }
                        Err(e) => {
                            if !failing {
                                log::warn!("announcing failed (will retry): {e:#}");
                            }
                            failing = true;
                            period = period.max(RETRY_AFTER_FAILURE);
                        }
                    }
                }
            })
        };
        Announcer {
            stop: Some(stop),
            thread: Some(thread),
            announce,
            departure,
        }
    }

    fn halt(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }

    /// The same announces, now at the tracker's heartbeat period and without a scheduler;
    /// the peer stays in the swarm across the switch.
    pub(crate) fn seeding(mut self) -> Announcer {
        self.halt();
        let departure = Departure(self.departure.0.take());
        Announcer::start(self.announce.clone(), None, departure)
    }
}

impl Drop for Announcer {
    fn drop(&mut self) {
        self.halt();
    }
}
