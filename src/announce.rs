//! The one announce loop, for the peer server's heartbeat and for a client serving what it
//! downloads: a thread that announces on a period, retries a failing tracker with the
//! crate's jittered [`Backoff`], and leaves the swarms ("stopped") when it stops. It waits
//! on a channel with a timeout, so a stop is seen at once rather than at the next poll of
//! a flag.
//!
//! What is announced is the caller's [`Announce`]: the peer server announces every asset of
//! its store, a client the asset it downloads (and forwards each answer to its scheduler).
//! A [`Departure`] leaves the swarm when dropped, so every way out of a download or a
//! server says "stopped", and [`Announcer::halt`] hands it back to start another rhythm
//! without leaving (a client switching from downloading to seeding).
//!
//! How a client fits: its `beat` announces the asset with the live have, the complaints
//! since the last beat and the uploaded bytes, keeps the ticket and tells its server the
//! keys, then sends the answer to its scheduler and returns the tracker's `next_announce_ms`,
//! on [`Rhythm::tracker`] while it downloads (the tracker sets the cadence from the swarm's
//! size); to seed, it [`Announcer::halt`]s, drops the scheduler's sender from its announce,
//! and starts again on [`Rhythm::tracker`] with a first wait of zero. The peer server's
//! `beat` announces every asset of its store.

use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use crossbeam_channel::{RecvTimeoutError, Sender, bounded};

use crate::backoff::Backoff;

/// Heartbeat period used until the tracker says otherwise.
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(20);
/// Longest heartbeat period accepted from a tracker: an hour, whatever it answers.
pub const MAX_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest period accepted from a tracker: the fastest our tracker ever asks for (a
/// downloader of a small swarm), so a broken one cannot have its peers announce in a loop.
pub const MIN_ANNOUNCE_INTERVAL: Duration = Duration::from_millis(500);
/// The most a peer's `"stopped"` announces may take together when it stops: leaving only
/// spares clients a failed connection to it, and a SIGTERM must end the process within
/// 2 s even when the tracker cannot be reached (a host that drops TCP never answers a
/// connect; the tracker client's own connect timeout is 5 s).
pub const LEAVE_BUDGET: Duration = Duration::from_secs(1);
/// First retry after a failed announce; later ones back off exponentially up to the
/// period, so a tracker that starts after its peers, or restarts, learns of them within
/// seconds.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// What an announce loop announces.
pub trait Announce: Send + 'static {
    /// Announces once; on success, the heartbeat period the tracker asked for, if it did.
    fn beat(&mut self) -> Result<Option<Duration>>;
    /// Tells the tracker this peer is gone ([`crate::api::AnnounceEvent::Stopped`]), best
    /// effort.
    fn leave(&mut self);
    /// The tracker, for log lines (its URL).
    fn tracker(&self) -> String;
}

/// Leaves the swarm when dropped, unless [`Departure::disarm`]ed.
pub struct Departure<A: Announce>(Option<A>);

impl<A: Announce> Departure<A> {
    /// Arms a departure: from now on, dropping it says "stopped".
    pub fn new(announce: A) -> Departure<A> {
        Departure(Some(announce))
    }

    /// The announce it will leave with.
    pub fn announce(&mut self) -> &mut A {
        self.0.as_mut().expect("armed until disarmed or dropped")
    }

    /// Takes the announce back without leaving.
    pub fn disarm(mut self) -> A {
        self.0.take().expect("armed until disarmed or dropped")
    }
}

impl<A: Announce> Drop for Departure<A> {
    fn drop(&mut self) {
        if let Some(mut announce) = self.0.take() {
            announce.leave();
        }
    }
}

/// When to announce next: the period (the tracker's, or a fixed one), and the backoff of a
/// failing tracker.
#[derive(Debug, Clone)]
pub struct Rhythm {
    period: Duration,
    /// A period set by the caller, which the tracker's answers do not change.
    fixed: bool,
    backoff: Backoff,
}

impl Rhythm {
    /// Beats at the period the tracker asks for, `initial` until it has.
    pub fn tracker(initial: Duration) -> Rhythm {
        Rhythm {
            period: initial,
            fixed: false,
            backoff: Backoff::new(RETRY_FIRST, initial),
        }
    }

    /// Beats every `period`, whatever the tracker asks for.
    pub fn fixed(period: Duration) -> Rhythm {
        Rhythm {
            fixed: true,
            ..Rhythm::tracker(period)
        }
    }

    /// How long to wait after a beat that ended with `result`; logs the first failure of a
    /// run of them, and the recovery.
    pub fn after(&mut self, result: Result<Option<Duration>>, tracker: &str) -> Duration {
        match result {
            Ok(asked) => {
                if self.backoff.failures() > 0 {
                    log::info!("announce: tracker {tracker} reachable again");
                }
                self.backoff.reset();
                if let (false, Some(asked)) = (self.fixed, asked) {
                    self.period = asked.clamp(MIN_ANNOUNCE_INTERVAL, MAX_ANNOUNCE_INTERVAL);
                    self.backoff.set_max(self.period);
                }
                self.period
            }
            Err(e) => {
                if self.backoff.failures() == 0 {
                    log::warn!("announcing failed (retrying with backoff): {e:#}");
                }
                self.backoff.next_delay().min(self.period)
            }
        }
    }
}

/// What the loop's owner tells it.
enum Signal {
    /// Leave the swarm and end.
    Stop,
    /// End without leaving, handing the departure back.
    Halt,
}

/// Announces from its own thread, so a slow tracker never holds up its owner. Dropping it
/// (or [`Announcer::stop`]) leaves the swarm and joins the thread.
pub struct Announcer<A: Announce> {
    signals: Sender<Signal>,
    thread: Option<JoinHandle<Option<Departure<A>>>>,
}

impl<A: Announce> Announcer<A> {
    /// Starts beating on `rhythm`, the first beat after `first`.
    pub fn start(departure: Departure<A>, mut rhythm: Rhythm, first: Duration) -> Announcer<A> {
        let (signals, inbox) = bounded(1);
        let thread = std::thread::spawn(move || {
            let mut departure = departure;
            let mut wait = first;
            loop {
                match inbox.recv_timeout(wait) {
                    Err(RecvTimeoutError::Timeout) => {}
                    Ok(Signal::Halt) => return Some(departure),
                    // Dropping the departure leaves the swarm.
                    Ok(Signal::Stop) | Err(RecvTimeoutError::Disconnected) => return None,
                }
                let announce = departure.announce();
                let result = announce.beat();
                wait = rhythm.after(result, &announce.tracker());
            }
        });
        Announcer {
            signals,
            thread: Some(thread),
        }
    }

    /// Leaves the swarm and waits for the thread to end.
    pub fn stop(self) {
        drop(self);
    }

    /// Ends the loop without leaving the swarm: the departure, for another rhythm.
    pub fn halt(mut self) -> Departure<A> {
        let _ = self.signals.send(Signal::Halt);
        let thread = self.thread.take().expect("joined only here or on drop");
        thread
            .join()
            .ok()
            .flatten()
            .expect("a halted loop hands its departure back")
    }
}

impl<A: Announce> Drop for Announcer<A> {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.signals.send(Signal::Stop);
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// Records what the loop did: "beat" or "leave", in order; fails its first `fail` beats.
    #[derive(Clone, Default)]
    struct Log {
        events: Arc<Mutex<Vec<&'static str>>>,
        fail: Arc<Mutex<u32>>,
    }

    impl Announce for Log {
        fn beat(&mut self) -> Result<Option<Duration>> {
            self.events.lock().unwrap().push("beat");
            let mut fail = self.fail.lock().unwrap();
            if *fail > 0 {
                *fail -= 1;
                anyhow::bail!("tracker down");
            }
            Ok(Some(Duration::from_secs(3600)))
        }
        fn leave(&mut self) {
            self.events.lock().unwrap().push("leave");
        }
        fn tracker(&self) -> String {
            "test".into()
        }
    }

    fn events(log: &Log) -> Vec<&'static str> {
        log.events.lock().unwrap().clone()
    }

    #[test]
    fn a_stop_is_seen_at_once_and_leaves_the_swarm() {
        let log = Log::default();
        let rhythm = Rhythm::tracker(Duration::from_secs(3600));
        let announcer = Announcer::start(Departure::new(log.clone()), rhythm, Duration::ZERO);
        let deadline = Instant::now() + Duration::from_secs(5);
        while events(&log).is_empty() {
            assert!(Instant::now() < deadline, "no first beat");
            std::thread::sleep(Duration::from_millis(5));
        }
        let asked = Instant::now();
        announcer.stop();
        assert!(
            asked.elapsed() < Duration::from_millis(500),
            "{:?}",
            asked.elapsed()
        );
        assert_eq!(events(&log), ["beat", "leave"]);
    }

    #[test]
    fn halt_hands_the_departure_back_without_leaving() {
        let log = Log::default();
        let rhythm = Rhythm::fixed(Duration::from_secs(3600));
        let announcer = Announcer::start(Departure::new(log.clone()), rhythm, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(50));
        let departure = announcer.halt();
        assert_eq!(events(&log), ["beat"]);
        drop(departure);
        assert_eq!(events(&log), ["beat", "leave"]);
    }

    #[test]
    fn failures_back_off_up_to_the_period_and_success_resets() {
        let mut rhythm = Rhythm::tracker(Duration::from_secs(20));
        let down = || Err(anyhow::anyhow!("down"));
        let first = rhythm.after(down(), "t");
        assert!(first >= Duration::from_millis(500) && first <= Duration::from_secs(1));
        let waits: Vec<Duration> = (0..8).map(|_| rhythm.after(down(), "t")).collect();
        assert!(
            waits.iter().all(|w| *w <= Duration::from_secs(20)),
            "{waits:?}"
        );
        assert!(waits[7] >= Duration::from_secs(10), "{waits:?}");
        // The tracker's period is taken (bounded), and a success forgets the failures.
        assert_eq!(
            rhythm.after(Ok(Some(Duration::from_secs(5))), "t"),
            Duration::from_secs(5)
        );
        assert!(rhythm.after(down(), "t") <= Duration::from_secs(1));
        assert_eq!(
            rhythm.after(Ok(Some(Duration::from_secs(1 << 20))), "t"),
            MAX_ANNOUNCE_INTERVAL
        );
        assert_eq!(
            rhythm.after(Ok(Some(Duration::from_millis(750))), "t"),
            Duration::from_millis(750),
            "sub-second cadences are taken"
        );
        assert_eq!(
            rhythm.after(Ok(Some(Duration::ZERO)), "t"),
            MIN_ANNOUNCE_INTERVAL
        );
        // A fixed period ignores what the tracker asks.
        let mut fixed = Rhythm::fixed(Duration::from_secs(2));
        assert_eq!(
            fixed.after(Ok(Some(Duration::from_secs(60))), "t"),
            Duration::from_secs(2)
        );
    }
}
