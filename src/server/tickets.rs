//! Whether the peer server asks clients for tickets, and the check every `Hello` passes:
//! the tracker's keys, learnt at start, from announce answers ([`TicketKeys`]), or again
//! from the tracker after a key rotation; expiry is checked by the tracker's clock as its
//! answers tell it ([`TrackerClock`]).

use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::auth::{TicketError, TicketVerifier, TrackerClock};
use crate::manifest::AssetId;
use crate::sync::{LockExt, RwLockExt};
use crate::tracker_client::TrackerClient;

/// Longest a handshake waits for its server to learn whether tickets are needed (a client's
/// server before its first announce answer); then the client is told to retry.
const PENDING_KEYS_WAIT: Duration = Duration::from_secs(2);
/// How often a peer asks the tracker for its keys again when it meets a ticket signed by a
/// key it does not know (after a rotation): a forged ticket cannot make it ask more often.
const KEY_REFRESH: Duration = Duration::from_secs(10);

/// Whether a server asks clients for tickets.
pub(super) enum Tickets {
    /// Not known yet: every client is refused "busy" until [`TicketKeys::set`] is called
    /// (a client serving while it downloads, before its first announce answer).
    Pending,
    /// Open mode: no ticket needed.
    Open,
    /// A valid ticket for the asset is needed.
    Check(TicketCheck),
}

/// What a `Hello`'s ticket gets.
pub(super) enum Verdict {
    /// Served.
    Pass,
    /// Not yet: the server has not heard from its tracker.
    Pending,
    /// Refused, and why.
    Refused(TicketError),
}

/// The ticket rule of a running server, shared with its [`TicketKeys`] handles.
pub(super) struct Gate {
    tickets: RwLock<Tickets>,
    /// Set (and signalled) once `tickets` is no longer pending.
    keys_known: (Mutex<bool>, Condvar),
}

impl Gate {
    pub(super) fn new(tickets: Tickets) -> Gate {
        let known = !matches!(tickets, Tickets::Pending);
        Gate {
            tickets: RwLock::new(tickets),
            keys_known: (Mutex::new(known), Condvar::new()),
        }
    }

    /// Checks the ticket of a client asking for `asset`. A client may connect as soon as
    /// the tracker names this peer, a moment before the announce answer that says whether
    /// tickets are needed is read here: waiting for it costs that client milliseconds,
    /// where a refusal would cost it a retry.
    pub(super) fn check(&self, ticket: &[u8], asset: &AssetId) -> Verdict {
        {
            let (known, changed) = &self.keys_known;
            let known = known.locked();
            let _ = changed.wait_timeout_while(known, PENDING_KEYS_WAIT, |known| !*known);
        }
        match &*self.tickets.read_now() {
            Tickets::Open => Verdict::Pass,
            Tickets::Pending => Verdict::Pending,
            Tickets::Check(check) => match check.verify(ticket, asset) {
                Ok(()) => Verdict::Pass,
                Err(e) => Verdict::Refused(e),
            },
        }
    }
}

/// Tells a running server the tracker's public keys, as announce answers bring them: none
/// means open mode.
#[derive(Clone)]
pub struct TicketKeys(pub(super) std::sync::Arc<Gate>);

impl TicketKeys {
    /// Sets the keys tickets must be signed with (empty: no tickets needed), and the clock
    /// their expiry is checked by (the tracker's, from the client that announces).
    pub fn set(&self, keys: &[String], clock: &Arc<TrackerClock>) -> Result<()> {
        let mut tickets = self.0.tickets.write_now();
        match &*tickets {
            Tickets::Check(check) if check.keys == keys => {}
            Tickets::Open if keys.is_empty() => {}
            _ if keys.is_empty() => *tickets = Tickets::Open,
            _ => *tickets = Tickets::Check(TicketCheck::new(keys, None, Arc::clone(clock))?),
        }
        drop(tickets);
        let (known, changed) = &self.0.keys_known;
        *known.locked() = true;
        changed.notify_all();
        Ok(())
    }
}

/// Checks the tickets clients present, learning the tracker's new key after a rotation.
pub(super) struct TicketCheck {
    /// The keys it was made with, to tell whether new ones differ.
    keys: Vec<String>,
    verifier: RwLock<TicketVerifier>,
    tracker: Option<TrackerClient>,
    /// When the keys were last fetched again (`None`: not since start-up).
    refreshed: Mutex<Option<Instant>>,
    /// What expiry is checked by, kept for the verifiers of refreshed keys.
    clock: Arc<TrackerClock>,
}

impl TicketCheck {
    /// Checks tickets against `keys` and their expiry against `clock`; with `tracker`,
    /// fetches the keys again when a ticket is signed by a key it does not know.
    pub(super) fn new(
        keys: &[String],
        tracker: Option<TrackerClient>,
        clock: Arc<TrackerClock>,
    ) -> Result<TicketCheck> {
        Ok(TicketCheck {
            keys: keys.to_vec(),
            verifier: RwLock::new(TicketVerifier::from_hex(keys)?.with_clock(Arc::clone(&clock))),
            tracker,
            refreshed: Mutex::new(None),
            clock,
        })
    }

    fn verify(&self, ticket: &[u8], asset: &AssetId) -> Result<(), TicketError> {
        let first = self.verifier.read_now().verify(ticket, asset);
        match first {
            Err(TicketError::UnknownKey) if self.refresh() => {
                self.verifier.read_now().verify(ticket, asset).map(drop)
            }
            other => other.map(drop),
        }
    }

    /// Fetches the tracker's keys again, at most every [`KEY_REFRESH`]; whether it did.
    fn refresh(&self) -> bool {
        let Some(tracker) = &self.tracker else {
            return false;
        };
        {
            let mut last = self.refreshed.locked();
            if last.is_some_and(|t| t.elapsed() < KEY_REFRESH) {
                return false;
            }
            *last = Some(Instant::now());
        }
        match tracker
            .keys()
            .and_then(|keys| TicketVerifier::from_hex(&keys))
        {
            Ok(verifier) => {
                *self.verifier.write_now() = verifier.with_clock(Arc::clone(&self.clock));
                true
            }
            Err(e) => {
                log::warn!("tickets: refreshing the tracker's keys failed: {e:#}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_told_to_a_pending_server_open_it_or_ask_for_tickets() {
        let gate = Arc::new(Gate::new(Tickets::Pending));
        let keys = TicketKeys(Arc::clone(&gate));
        let asset = AssetId([1; 32]);
        let clock = Arc::new(TrackerClock::default());
        keys.set(&[], &clock).unwrap();
        assert!(
            matches!(gate.check(b"", &asset), Verdict::Pass),
            "open mode"
        );
        let dir = tempfile::tempdir().unwrap();
        let ring = crate::auth::KeyRing::load_or_create(dir.path()).unwrap();
        keys.set(&ring.public_keys(), &clock).unwrap();
        assert!(matches!(
            gate.check(b"", &asset),
            Verdict::Refused(TicketError::Missing)
        ));
        let ticket = ring.issue(&asset, "peer", Duration::from_secs(60));
        assert!(matches!(gate.check(&ticket, &asset), Verdict::Pass));
        assert!(matches!(
            gate.check(&ticket, &AssetId([2; 32])),
            Verdict::Refused(TicketError::WrongAsset { .. })
        ));
        assert!(keys.set(&["not a key".into()], &clock).is_err());
    }
}
