//! What a client announces, through the crate's one announce loop ([`crate::announce`]):
//! one announce before the download (its sources), then while it downloads as often as
//! each answer's `next_announce_ms` says (the tracker's cadence: twice a second in a small
//! swarm, less often the more downloaders share it; each answer, with new peers and the
//! origin share, goes to the scheduler), at the tracker's heartbeat period while it seeds,
//! and "stopped" on the way out, with the peers found unreachable or corrupt since the
//! last announce. What a download holds is announced for the tracker's origin plan;
//! other peers learn it over the wire.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::announce::{self, DEFAULT_ANNOUNCE_INTERVAL, Departure, LEAVE_BUDGET, Rhythm};
use crate::api::{AnnounceEvent, AnnounceRequest, AnnounceResponse};
use crate::manifest::AssetId;
use crate::sync::{LockExt, RwLockExt};
use crate::tracker_client::{TrackerClient, new_peer_id};

use super::plan::Complaint;
use super::serving::{Serving, TicketKeys, UploadCounter};
use super::worker::Ticket;
use crate::bitfield::LiveHave;

/// While downloading, progress is announced this often when the tracker does not say
/// (a tracker older than `next_announce_ms`, which planned for announces twice a second).
const ANNOUNCE_PERIOD: Duration = Duration::from_millis(500);
/// While a restarted tracker knows no source yet, it is asked again this often: a source
/// that announces is found within a second, for one announce a second.
const SOURCE_POLL: Duration = Duration::from_secs(1);

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
    /// While downloading, where each answer goes (the scheduler); `None` when seeding.
    on_answer: Option<OnAnswer>,
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
            on_answer: None,
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
            keys.set(&answer.keys, &self.tracker.clock())
                .context("the tracker's announce answer carries a bad key")?;
        }
        Ok(answer)
    }

    /// The first announce's answer, for the sources to start with. While the tracker names
    /// none but says it is warming up after a restart (see
    /// [`AnnounceResponse::warming_up_secs`]), announces again every [`SOURCE_POLL`] until
    /// it names one, stops saying so, `bound` has passed, or `interrupted()`; the caller
    /// tells those apart by the answer.
    pub(crate) fn first_sources(
        &self,
        bound: Duration,
        patience: Duration,
        interrupted: fn() -> bool,
    ) -> Result<AnnounceResponse> {
        let started = Instant::now();
        // A tracker not reachable for a moment is asked again for up to `patience` (see
        // [`TrackerClient::patient`]); the announces after this one are not.
        let patient = Announce {
            tracker: self.tracker.patient(patience, interrupted),
            ..self.clone()
        };
        let mut answer = patient.once()?;
        let mut told = false;
        while answer.peers.is_empty() && answer.origins.is_empty() {
            let Some(hint) = answer.warming_up_secs else {
                break;
            };
            let left = bound.saturating_sub(started.elapsed());
            if left.is_zero() || interrupted() {
                break;
            }
            if !told {
                log::info!(
                    "the tracker restarted moments ago and knows no source of {} yet (all should have announced within {hint} s); waiting up to {} s for one (--source-wait)",
                    self.asset,
                    bound.as_secs()
                );
                told = true;
            }
            super::sleep_until(Instant::now() + SOURCE_POLL.min(left), interrupted);
            answer = patient.once()?;
        }
        if told && !(answer.peers.is_empty() && answer.origins.is_empty()) {
            log::info!(
                "a source of {} announced after {:.1} s of waiting",
                self.asset,
                started.elapsed().as_secs_f64()
            );
        }
        Ok(answer)
    }

    /// Tells the tracker this peer is gone, with what it served and found wrong since the
    /// last announce.
    fn stopped(&self) {
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
        // Bounded: a process told to exit must not wait on a tracker it cannot reach.
        let _ = self
            .tracker
            .hurried(LEAVE_BUDGET)
            .announce(&self.asset, &request);
    }
}

impl announce::Announce for Announce {
    /// One announce; while downloading the answer goes to the scheduler; the period is
    /// the tracker's cadence, or when it names none its heartbeat while seeding (and the
    /// period kept while downloading).
    fn beat(&mut self) -> Result<Option<Duration>> {
        let answer = self.once()?;
        let next = answer.next_announce();
        match &self.on_answer {
            Some(on_answer) => {
                on_answer(answer);
                Ok(next)
            }
            None => Ok(next.or(Some(Duration::from_secs(answer.interval_secs)))),
        }
    }

    fn leave(&mut self) {
        self.stopped();
    }

    fn tracker(&self) -> String {
        self.tracker.url().to_string()
    }
}

/// Where a downloading client's announce answers go.
pub(crate) type OnAnswer = Arc<dyn Fn(AnnounceResponse) + Send + Sync>;

/// The client's announce loop.
pub(crate) type Announcer = announce::Announcer<Announce>;

/// Announces at the tracker's cadence while the download runs, the first after `first`
/// (what the first answer asked for, or [`ANNOUNCE_PERIOD`]), handing each answer to
/// `on_answer`; dropping the announcer leaves the swarm.
pub(crate) fn downloading(
    mut departure: Departure<Announce>,
    on_answer: OnAnswer,
    first: Option<Duration>,
) -> Announcer {
    departure.announce().on_answer = Some(on_answer);
    let first = first.map_or(ANNOUNCE_PERIOD, |f| {
        f.clamp(
            announce::MIN_ANNOUNCE_INTERVAL,
            announce::MAX_ANNOUNCE_INTERVAL,
        )
    });
    Announcer::start(departure, Rhythm::tracker(ANNOUNCE_PERIOD), first)
}

/// Announces at the tracker's heartbeat period, the first at once, while the asset is
/// seeded; dropping the announcer leaves the swarm.
pub(crate) fn seeding(mut departure: Departure<Announce>) -> Announcer {
    departure.announce().on_answer = None;
    Announcer::start(
        departure,
        Rhythm::tracker(DEFAULT_ANNOUNCE_INTERVAL),
        Duration::ZERO,
    )
}
