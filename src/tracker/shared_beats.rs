//! A seeder's heartbeat with `--redis`, answered from this tracker's view of its swarm and
//! written to Redis behind the answer, many heartbeats in one script call ([`BEATS`]).
//!
//! Why: in a fleet, most announces are heartbeats of complete peers (peer servers, finished
//! clients) that change nothing but their entry's expiry, and a complete peer downloads
//! nothing, so the peers of its answer are of little use to it. One script call per
//! heartbeat cost ~170 µs of CPU on the tracker and Redis together (context switches and
//! socket work on both sides, Redis's one thread running the script), against ~45 µs in
//! memory. Here a heartbeat costs a lookup and a share of one batched call.
//!
//! When: the swarm's view (its pools, instance, origin URLs, manifest present), made by the
//! last full announce of the swarm through this tracker, is at most [`VIEW_FRESH`] old; the
//! peer is a seeder whose last write this tracker saw confirmed (by the full script or a
//! batch) with the same holder and address, at most half a peer timeout ago. Its entry in
//! Redis then lives half a peer timeout more at least, so a batch lost in a crash costs
//! nothing: the next heartbeat (a third of the timeout later) finds the confirmation too
//! old and takes the full path. Every other announce (joins, moves, downloaders, origins,
//! leaving) is one script call as before, and sees every change at once.
//!
//! What it gives up: a seeder's answer may miss a change of its swarm for up to
//! [`VIEW_FRESH`]; an unpublish through another tracker reaches a seeder that late.
//! What it keeps: the holder check. The batch script refreshes an entry only if it is live
//! with the same holder, kind and address, and answers "gone" or "owner" otherwise, which
//! drops the confirmation (the next heartbeat takes the full path and is refused there).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::shared::{CONNECT_TIMEOUT, IO_TIMEOUT, Pools, ms};
use crate::manifest::AssetId;
use crate::sync::LockExt;

/// The batch script (see its header).
const BEATS: &str = include_str!("shared/beats.lua");
/// How old a swarm's view may be when it answers a heartbeat.
/// With 1 000 swarms, each then takes one full call every 2 s per tracker for its seeders
/// (at 1 s it was 7 % of 14 000 heartbeats a second).
pub(super) const VIEW_FRESH: Duration = Duration::from_secs(2);
/// How long heartbeats wait to be written: the delay a peer's expiry refresh may take.
const WINDOW: Duration = Duration::from_millis(50);
/// Most heartbeats in one script call: ~10-15 µs each in Redis's one thread, so that a
/// call holds it ~1.5 ms at most and the full announces queued behind it wait no longer
/// (with 1 024 a call, at 13 000 heartbeats a second, a call held it ~10 ms and the
/// throughput of 8 closed-loop connections fell with it).
const MOST_PER_CALL: usize = 128;
/// Most peers whose confirmations a tracker keeps (~200 bytes each); past it, all are
/// dropped and confirmed again by their next full announce.
const MOST_MEMBERS: usize = 1 << 20;
/// Queued heartbeats past which new ones take the full path (Redis is too slow to drain).
const MOST_QUEUED: usize = 64 * 1024;

/// What the last full announce of a swarm told this tracker.
pub(super) struct View {
    pub made: Instant,
    pub pools: Arc<Pools>,
    pub instance: String,
    /// The instance's age, and Redis's clock (ms), when the view was made.
    pub instance_age: Duration,
    pub redis_now: u64,
    pub origin_urls: Vec<String>,
}

/// A seeder whose write was last confirmed at `at`, with this holder and address.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Member {
    owner: String,
    addr: String,
    at: Instant,
}

/// One heartbeat waiting to be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Beat {
    pub asset: AssetId,
    pub peer_id: String,
    pub owner: String,
    pub addr: String,
}

#[derive(Default)]
struct SwarmState {
    view: Option<Arc<View>>,
    members: HashMap<String, Member>,
}

#[derive(Default)]
struct Tables {
    swarms: HashMap<AssetId, SwarmState>,
    members: usize,
}

/// The views, the confirmations and the queue, shared with the writer thread.
pub(super) struct Beats {
    tables: Mutex<Tables>,
    queue: Mutex<Vec<Beat>>,
    queued: Condvar,
    peer_timeout: Duration,
    most_swarms: usize,
}

/// Whether a confirmation made `age` ago still covers a heartbeat: its entry then lives at
/// least half a peer timeout more.
pub(super) fn covers(age: Duration, peer_timeout: Duration) -> bool {
    age <= peer_timeout / 2
}

impl Beats {
    pub(super) fn new(peer_timeout: Duration, most_swarms: usize) -> Beats {
        Beats {
            tables: Mutex::new(Tables::default()),
            queue: Mutex::new(Vec::new()),
            queued: Condvar::new(),
            peer_timeout,
            most_swarms,
        }
    }

    /// The view to answer this seeder's heartbeat from, if it may be (see the module).
    pub(super) fn view_for(
        &self,
        asset: &AssetId,
        peer_id: &str,
        owner: &str,
        addr: &str,
        now: Instant,
    ) -> Option<Arc<View>> {
        let tables = self.tables.locked();
        let swarm = tables.swarms.get(asset)?;
        let view = swarm.view.as_ref()?;
        let member = swarm.members.get(peer_id)?;
        let fresh = now.saturating_duration_since(view.made) <= VIEW_FRESH;
        let same = member.owner == owner && member.addr == addr;
        (fresh && same && covers(now.saturating_duration_since(member.at), self.peer_timeout))
            .then(|| view.clone())
    }

    /// Queues a heartbeat answered from a view; false if the queue is full (take the full
    /// path instead).
    pub(super) fn queue(&self, beat: Beat) -> bool {
        let mut queue = self.queue.locked();
        if queue.len() >= MOST_QUEUED {
            return false;
        }
        queue.push(beat);
        if queue.len() == 1 {
            self.queued.notify_one();
        }
        true
    }

    /// After a full announce of the swarm: its new view, and the peer's confirmation (a
    /// seeder's, or none for any other kind).
    pub(super) fn learned(
        &self,
        asset: &AssetId,
        view: View,
        peer_id: &str,
        seeder: Option<(&str, &str)>,
    ) {
        let mut tables = self.tables.locked();
        if tables.swarms.len() >= self.most_swarms && !tables.swarms.contains_key(asset) {
            tables.swarms.clear();
            tables.members = 0;
        }
        if tables.members >= MOST_MEMBERS {
            tables.swarms.values_mut().for_each(|s| s.members.clear());
            tables.members = 0;
        }
        let swarm = tables.swarms.entry(*asset).or_default();
        let at = view.made;
        swarm.view = Some(Arc::new(view));
        let before = swarm.members.len();
        match seeder {
            Some((owner, addr)) => {
                swarm.members.insert(
                    peer_id.to_string(),
                    Member {
                        owner: owner.to_string(),
                        addr: addr.to_string(),
                        at,
                    },
                );
            }
            None => {
                swarm.members.remove(peer_id);
            }
        }
        let after = swarm.members.len();
        tables.members = tables.members + after - before;
    }

    /// The pools held for the swarm (to name their version in a full call).
    pub(super) fn pools(&self, asset: &AssetId) -> Arc<Pools> {
        self.tables
            .locked()
            .swarms
            .get(asset)
            .and_then(|s| s.view.as_ref())
            .map(|v| v.pools.clone())
            .unwrap_or_default()
    }

    /// Drops what this tracker knows of a swarm: its next announces take the full path.
    pub(super) fn forget(&self, asset: &AssetId) {
        let mut tables = self.tables.locked();
        if let Some(swarm) = tables.swarms.remove(asset) {
            tables.members -= swarm.members.len();
        }
    }

    /// What a batch call told of each heartbeat: a refresh confirmed at `at` (`true`), or
    /// refused (the entry gone or another holder's, or the call failed), which drops what
    /// this tracker knows of that swarm, so that a Redis that restarted empty or a peer
    /// that left through another tracker show at the swarm's next announce.
    fn confirmed(&self, beats: &[Beat], outcome: &[bool], at: Instant) {
        for (beat, ok) in beats.iter().zip(outcome) {
            if !*ok {
                self.forget(&beat.asset);
                continue;
            }
            let mut tables = self.tables.locked();
            if let Some(m) = tables
                .swarms
                .get_mut(&beat.asset)
                .and_then(|s| s.members.get_mut(&beat.peer_id))
                && m.owner == beat.owner
                && m.addr == beat.addr
            {
                m.at = at;
            }
        }
    }

    /// Takes what is queued, waiting a window for more once something is there.
    fn next_batch(&self) -> Vec<Beat> {
        let mut queue = self.queue.locked();
        while queue.is_empty() {
            queue = self.queued.wait(queue).unwrap_or_else(|e| e.into_inner());
        }
        drop(queue);
        std::thread::sleep(WINDOW);
        std::mem::take(&mut *self.queue.locked())
    }
}

/// The batch script's reply: "ok" for each refreshed entry, anything else refused; a
/// reply of another length refuses them all.
pub(super) fn outcome(reply: &redis::Value, n: usize) -> Vec<bool> {
    match reply {
        redis::Value::Array(items) if items.len() == n => items
            .iter()
            .map(|v| {
                matches!(v, redis::Value::SimpleString(s) if s == "ok")
                    || matches!(v, redis::Value::BulkString(b) if b == b"ok")
            })
            .collect(),
        _ => vec![false; n],
    }
}

/// Writes the queued heartbeats, a batch per window, until the tracker exits. A failed
/// call refuses its batch: those peers' next heartbeats take the full path, which reports
/// Redis's failure to them.
pub(super) fn write_behind(beats: Arc<Beats>, client: redis::Client, url: String) {
    let script = redis::Script::new(BEATS);
    let ttl = ms(beats.peer_timeout);
    let mut conn: Option<redis::Connection> = None;
    loop {
        let batch = beats.next_batch();
        for part in batch.chunks(MOST_PER_CALL) {
            let sent = Instant::now();
            let reply = call(&script, &client, &mut conn, part, ttl);
            let outcome = match reply {
                Ok(v) => outcome(&v, part.len()),
                Err(e) => {
                    log::warn!(
                        "tracker: writing {} heartbeats to Redis at {url} failed: {e}",
                        part.len()
                    );
                    conn = None;
                    vec![false; part.len()]
                }
            };
            beats.confirmed(part, &outcome, sent);
        }
    }
}

fn call(
    script: &redis::Script,
    client: &redis::Client,
    conn: &mut Option<redis::Connection>,
    part: &[Beat],
    ttl: u64,
) -> redis::RedisResult<redis::Value> {
    let c = match conn {
        Some(c) => c,
        None => {
            let c = client.get_connection_with_timeout(CONNECT_TIMEOUT)?;
            c.set_read_timeout(Some(IO_TIMEOUT))?;
            c.set_write_timeout(Some(IO_TIMEOUT))?;
            conn.insert(c)
        }
    };
    let mut invoke = script.prepare_invoke();
    invoke.arg(ttl);
    for b in part {
        let prefix = format!("sc:{{{}}}:", b.asset);
        invoke
            .key(format!("{prefix}swarm"))
            .key(prefix)
            .arg(&b.peer_id)
            .arg(&b.owner)
            .arg(&b.addr);
    }
    invoke.invoke(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> AssetId {
        AssetId([n; 32])
    }

    fn view(made: Instant) -> View {
        View {
            made,
            pools: Arc::new(Pools::default()),
            instance: "i".into(),
            instance_age: Duration::ZERO,
            redis_now: 0,
            origin_urls: Vec::new(),
        }
    }

    #[test]
    fn a_heartbeat_is_answered_from_a_fresh_view_of_a_confirmed_seeder_only() {
        let t0 = Instant::now();
        let beats = Beats::new(Duration::from_secs(60), 16);
        assert!(
            beats.view_for(&id(1), "s", "h", "a:1", t0).is_none(),
            "nothing known"
        );
        beats.learned(&id(1), view(t0), "s", Some(("h", "a:1")));
        assert!(beats.view_for(&id(1), "s", "h", "a:1", t0).is_some());
        assert!(
            beats.view_for(&id(1), "s", "other", "a:1", t0).is_none(),
            "another holder"
        );
        assert!(
            beats.view_for(&id(1), "s", "h", "a:2", t0).is_none(),
            "a move"
        );
        assert!(
            beats.view_for(&id(1), "t", "h", "a:1", t0).is_none(),
            "another peer"
        );
        assert!(
            beats.view_for(&id(2), "s", "h", "a:1", t0).is_none(),
            "another swarm"
        );
        let late = t0 + VIEW_FRESH + Duration::from_millis(1);
        assert!(
            beats.view_for(&id(1), "s", "h", "a:1", late).is_none(),
            "a stale view"
        );
        // The same peer announcing as a downloader (or leaving) is no longer confirmed.
        beats.learned(&id(1), view(t0), "s", None);
        assert!(beats.view_for(&id(1), "s", "h", "a:1", t0).is_none());
    }

    #[test]
    fn a_confirmation_covers_half_a_peer_timeout_and_a_refusal_drops_it() {
        let t = Duration::from_secs(60);
        assert!(covers(Duration::from_secs(30), t));
        assert!(!covers(Duration::from_secs(31), t));
        let t0 = Instant::now();
        let beats = Beats::new(t, 16);
        beats.learned(&id(1), view(t0), "s", Some(("h", "a:1")));
        beats.learned(&id(1), view(t0), "u", Some(("h", "a:2")));
        let beat = |p: &str, a: &str| Beat {
            asset: id(1),
            peer_id: p.into(),
            owner: "h".into(),
            addr: a.into(),
        };
        beats.confirmed(&[beat("s", "a:1"), beat("u", "a:2")], &[true, false], t0);
        let (s_ok, u_refused) = (
            beats.view_for(&id(1), "s", "h", "a:1", t0),
            beats.view_for(&id(1), "u", "h", "a:2", t0),
        );
        assert!(
            s_ok.is_none() && u_refused.is_none(),
            "a refusal drops the swarm"
        );
        assert_eq!(beats.tables.locked().members, 0);
        // A refresh confirmed later moves the half timeout on.
        let later = t0 + Duration::from_secs(20);
        beats.learned(&id(1), view(later), "s", Some(("h", "a:1")));
        beats.confirmed(&[beat("s", "a:1")], &[true], later + Duration::from_secs(1));
        let then = later + Duration::from_secs(31);
        beats.learned(&id(1), view(then), "other", None);
        assert!(beats.view_for(&id(1), "s", "h", "a:1", then).is_some());
        let past = then + Duration::from_secs(1);
        assert!(beats.view_for(&id(1), "s", "h", "a:1", past).is_none());
    }

    #[test]
    fn the_tables_stay_bounded_and_the_queue_refuses_past_its_bound() {
        let t0 = Instant::now();
        let beats = Beats::new(Duration::from_secs(60), 2);
        for n in 0..5 {
            beats.learned(&id(n), view(t0), "s", Some(("h", "a:1")));
        }
        let tables = beats.tables.locked();
        assert!(tables.swarms.len() <= 2 && tables.members <= 2);
        drop(tables);
        let beat = Beat {
            asset: id(1),
            peer_id: "s".into(),
            owner: "h".into(),
            addr: "a".into(),
        };
        for _ in 0..MOST_QUEUED {
            assert!(beats.queue(beat.clone()));
        }
        assert!(!beats.queue(beat));
    }

    #[test]
    fn a_batch_reply_of_the_wrong_shape_refuses_every_heartbeat() {
        use redis::Value;
        let ok = || Value::SimpleString("ok".into());
        let gone = Value::BulkString(b"gone".to_vec());
        assert_eq!(
            outcome(&Value::Array(vec![ok(), gone, ok()]), 3),
            [true, false, true]
        );
        assert_eq!(outcome(&Value::Array(vec![ok()]), 3), [false; 3]);
        assert_eq!(outcome(&Value::Int(1), 2), [false; 2]);
    }
}
