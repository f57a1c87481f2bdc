//! What a restarted tracker says while its swarms fill again: its instance id (random per
//! start) and, during its first heartbeat period, the "warming up, retry in N s" hint for
//! an asset it knew before the restart but holds no source of yet. Pure: the routes pass
//! the clock in.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};

use crate::manifest::AssetId;

/// Added to the heartbeat period: a source's heartbeat may be late by its announce's own
/// retries (2 to 4 s for a busy tracker, see `tracker_client`) and by a second of timer
/// slack, so sources that heartbeat on time have all announced 5 s after the period.
pub(super) const HEARTBEAT_SLACK: Duration = Duration::from_secs(5);

/// A tracker's start: when, its instance id, and which assets the catalog held then.
#[derive(Debug)]
pub(super) struct WarmUp {
    /// 32 hex digits, random per start.
    instance: String,
    started: Instant,
    /// Until `started + period`, sources of `known_at_start` may not have announced yet.
    period: Duration,
    /// Assets already in the catalog when the tracker started. An asset published since
    /// was published by this instance, and its sources announce right after publishing.
    known_at_start: HashSet<AssetId>,
}

impl WarmUp {
    /// A start at `started` whose peers heartbeat every `heartbeat`, with the catalog
    /// holding `known_at_start`.
    pub(super) fn new(
        started: Instant,
        heartbeat: Duration,
        known_at_start: HashSet<AssetId>,
    ) -> Result<WarmUp> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow!("no randomness for the tracker's instance id: {e}"))?;
        Ok(WarmUp {
            instance: hex::encode(bytes),
            started,
            period: heartbeat.saturating_add(HEARTBEAT_SLACK),
            known_at_start,
        })
    }

    /// This start's instance id.
    pub(super) fn instance(&self) -> &str {
        &self.instance
    }

    /// For an announce of `asset` at `now` answered with no source at all: the seconds
    /// (at least 1) until every source that was live before the restart has announced
    /// again, while that may still happen; `None` once the period is over, for an asset
    /// published since the start, or when the answer has sources.
    pub(super) fn retry_in(&self, asset: &AssetId, has_sources: bool, now: Instant) -> Option<u64> {
        if has_sources || !self.known_at_start.contains(asset) {
            return None;
        }
        let left = (self.started + self.period).checked_duration_since(now)?;
        if left.is_zero() {
            return None;
        }
        // Rounded up: "retry in 0 s" would have the client announce before it is worth it.
        Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(byte: u8) -> AssetId {
        format!("{:02x}", byte).repeat(32).parse().unwrap()
    }

    #[test]
    fn only_assets_known_before_the_start_warm_up_and_only_for_a_period() {
        let t0 = Instant::now();
        let warm = WarmUp::new(t0, Duration::from_secs(20), [id(1)].into()).unwrap();
        let at = |secs: f64| t0 + Duration::from_secs_f64(secs);
        assert_eq!(warm.retry_in(&id(1), false, at(1.0)), Some(24));
        assert_eq!(warm.retry_in(&id(1), false, at(24.5)), Some(1));
        assert_eq!(warm.retry_in(&id(1), false, at(25.0)), None);
        assert_eq!(warm.retry_in(&id(1), false, at(90.0)), None);
        assert_eq!(warm.retry_in(&id(1), true, at(1.0)), None, "it has sources");
        assert_eq!(
            warm.retry_in(&id(2), false, at(1.0)),
            None,
            "published since"
        );
    }

    #[test]
    fn each_start_has_its_own_instance_id() {
        let t0 = Instant::now();
        let a = WarmUp::new(t0, Duration::from_secs(1), HashSet::new()).unwrap();
        let b = WarmUp::new(t0, Duration::from_secs(1), HashSet::new()).unwrap();
        assert_eq!(a.instance().len(), 32);
        assert_ne!(a.instance(), b.instance());
    }
}
