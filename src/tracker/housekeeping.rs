//! The tracker's housekeeping thread: reloads the permissions file when it changes (its
//! modification time, size or inode, looked at every [`RELOAD_POLL`]) or at once on SIGHUP
//! (a flag the binary's signal handler sets), and, with `--retain`, drops the untagged
//! assets nobody announced for that long. It holds the state weakly, so dropping the
//! tracker ends it.
//!
//! A permissions file that does not load (half edited, a syntax error) keeps the tokens
//! loaded before, and says why in the log; the next change is tried again.
//!
//! Retention's decision is pure ([`Retention::sweep`], time an argument): an asset counts
//! as announced while its swarm has a live peer, as seen at each sweep; one the tracker has
//! not watched for `retain` yet (just published, or since the tracker started: last-seen
//! times are not kept across restarts) is kept, so a restart only ever delays a drop.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::State;
use crate::auth::{RELOAD_POLL, Tokens};
use crate::manifest::AssetId;
use crate::sync::{LockExt, RwLockExt};

/// How often the thread wakes: a SIGHUP is acted on within this.
const TICK: Duration = Duration::from_millis(100);
/// Sweeps of the catalog per retention period, so an asset outlives `retain` by at most a
/// quarter of it; at least every [`MIN_SWEEP`], at most every [`MAX_SWEEP`].
const SWEEPS_PER_RETAIN: u32 = 4;
/// A 2 s retention (the tests') sweeps twice a second.
const MIN_SWEEP: Duration = Duration::from_millis(500);
/// A 30-day retention sweeps every minute: a walk of the catalog's index and swarms.
const MAX_SWEEP: Duration = Duration::from_secs(60);

/// What identifies a version of the permissions file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
    })
}

/// When untagged assets were last seen announced. Pure.
#[derive(Debug, Default)]
pub(super) struct Retention {
    seen: HashMap<AssetId, Instant>,
}

impl Retention {
    /// One sweep at `now`: `catalog` is every asset, `live` those with a live peer,
    /// `tagged` those a tag points at. Returns the assets to drop: untagged, and not seen
    /// announced for `retain` (first seen at their first sweep).
    pub(super) fn sweep(
        &mut self,
        catalog: &[AssetId],
        live: &HashSet<AssetId>,
        tagged: &HashSet<AssetId>,
        now: Instant,
        retain: Duration,
    ) -> Vec<AssetId> {
        let known: HashSet<&AssetId> = catalog.iter().collect();
        self.seen.retain(|id, _| known.contains(id));
        let mut expired = Vec::new();
        for id in catalog {
            let seen = self.seen.entry(*id).or_insert(now);
            if live.contains(id) {
                *seen = now;
            }
            if !tagged.contains(id) && now.saturating_duration_since(*seen) >= retain {
                expired.push(*id);
            }
        }
        for id in &expired {
            self.seen.remove(id);
        }
        expired
    }
}

/// What the thread watches.
pub(super) struct Watch {
    /// The permissions file, with auth on.
    pub auth: Option<PathBuf>,
    /// Set by the SIGHUP handler.
    pub reload: Arc<AtomicBool>,
    /// `--retain`.
    pub retain: Option<Duration>,
}

/// Starts the thread.
pub(super) fn start(state: Weak<State>, watch: Watch) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tracker-housekeeping".into())
        .spawn(move || run(&state, &watch))
        .map(drop)
}

fn run(state: &Weak<State>, watch: &Watch) {
    let mut stamp_seen = watch.auth.as_deref().and_then(stamp);
    let mut polled = Instant::now();
    let sweep_every = watch
        .retain
        .map(|r| (r / SWEEPS_PER_RETAIN).clamp(MIN_SWEEP, MAX_SWEEP));
    let mut swept = Instant::now();
    let mut retention = Retention::default();
    loop {
        std::thread::sleep(TICK);
        let Some(state) = state.upgrade() else {
            return;
        };
        if watch.reload.swap(false, Ordering::SeqCst) {
            match &watch.auth {
                Some(path) => {
                    stamp_seen = stamp(path);
                    state.reload_tokens(path, "SIGHUP");
                }
                None => log::info!("SIGHUP: no permissions file to reload (open mode)"),
            }
        }
        if let Some(path) = &watch.auth
            && polled.elapsed() >= RELOAD_POLL
        {
            polled = Instant::now();
            let now = stamp(path);
            if now != stamp_seen {
                stamp_seen = now;
                state.reload_tokens(path, "the file changed");
            }
        }
        if let (Some(every), Some(retain)) = (sweep_every, watch.retain)
            && swept.elapsed() >= every
        {
            swept = Instant::now();
            state.retain(&mut retention, retain);
        }
    }
}

impl State {
    /// Loads the permissions file again; a file that does not load keeps the old tokens.
    fn reload_tokens(&self, path: &Path, why: &str) {
        let Some(auth) = &self.auth else {
            return;
        };
        match Tokens::load(path) {
            Ok(tokens) => {
                let count = tokens.len();
                *auth.tokens.write_now() = Arc::new(tokens);
                log::info!("reloaded {} ({why}): {count} tokens", path.display());
            }
            Err(e) => {
                let kept = auth.tokens.read_now().len();
                log::warn!(
                    "not reloading {} ({why}): {e:#}; keeping the {kept} tokens loaded before",
                    path.display()
                );
            }
        }
    }

    /// One retention sweep: unpublishes what [`Retention::sweep`] says.
    fn retain(&self, retention: &mut Retention, retain: Duration) {
        let now = Instant::now();
        let catalog = self.catalog.ids();
        let live: HashSet<AssetId> = self
            .all_swarms()
            .into_iter()
            .filter_map(|(id, swarm)| {
                let mut swarm = swarm.locked();
                swarm.prune(now, self.peer_timeout);
                (!swarm.list(now).is_empty()).then_some(id)
            })
            .collect();
        let tagged = self.tags.read(|b| b.tagged());
        for id in retention.sweep(&catalog, &live, &tagged, now, retain) {
            match self.unpublish(&id, "retention") {
                Ok(_) => log::info!(
                    "retention: dropped {id}: untagged, and no peer announced it for {retain:?}"
                ),
                Err(e) => log::warn!("retention: dropping {id} failed: {e:#}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> AssetId {
        AssetId([n; 32])
    }

    #[test]
    fn untagged_assets_unannounced_for_the_retention_go() {
        let mut r = Retention::default();
        let t0 = Instant::now();
        let day = Duration::from_secs(86_400);
        let retain = 30 * day;
        let catalog = [id(1), id(2), id(3)];
        let tagged = HashSet::from([id(3)]);
        let live = |ids: &[AssetId]| ids.iter().copied().collect::<HashSet<_>>();
        // First seen at the first sweep: nothing goes yet, whatever its age.
        assert!(
            r.sweep(&catalog, &live(&[]), &tagged, t0, retain)
                .is_empty()
        );
        // Asset 1 is announced on day 10; 2 never; 3 is tagged.
        assert!(
            r.sweep(&catalog, &live(&[id(1)]), &tagged, t0 + 10 * day, retain)
                .is_empty()
        );
        assert!(
            r.sweep(
                &catalog,
                &live(&[]),
                &tagged,
                t0 + 30 * day - Duration::from_secs(1),
                retain
            )
            .is_empty()
        );
        assert_eq!(
            r.sweep(&catalog, &live(&[]), &tagged, t0 + 30 * day, retain),
            vec![id(2)]
        );
        assert!(
            r.sweep(&[id(1), id(3)], &live(&[]), &tagged, t0 + 39 * day, retain)
                .is_empty()
        );
        assert_eq!(
            r.sweep(&[id(1), id(3)], &live(&[]), &tagged, t0 + 40 * day, retain),
            vec![id(1)]
        );
        // The tagged one stays for ever; once untagged, its own last sighting counts.
        assert!(
            r.sweep(&[id(3)], &live(&[]), &tagged, t0 + 400 * day, retain)
                .is_empty()
        );
        assert_eq!(
            r.sweep(
                &[id(3)],
                &live(&[]),
                &HashSet::new(),
                t0 + 400 * day,
                retain
            ),
            vec![id(3)]
        );
        // Assets gone from the catalog are forgotten; a new one starts its own clock.
        assert!(r.seen.is_empty());
        assert!(
            r.sweep(
                &[id(4)],
                &live(&[]),
                &HashSet::new(),
                t0 + 401 * day,
                retain
            )
            .is_empty()
        );
    }
}
