//! The tracker's figures: `GET /stats` (JSON: peers, seeders, origins, bytes served by
//! peers and by origins, announces; per swarm and summed) and `GET /metrics` (the same
//! figures in the Prometheus text format).
//!
//! With auth on, both show only the swarms of the assets the token may fetch (issue 13: a
//! token for A saw B's id, name and figures), and their totals are those swarms' sums; the
//! tracker-wide announce count is shown only to a token that may fetch every asset.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::State;
use crate::api::{Figures, Stats, SwarmStats};
use crate::auth::Grant;
use crate::manifest::AssetId;
use crate::metrics::{Exposition, Kind};
use crate::sync::LockExt;

impl State {
    /// The figures of `GET /stats` that `grant` may see (`None`: open mode, all), every
    /// swarm pruned first. Swarms are locked one at a time, so `/stats` holds up announces
    /// to one swarm at most, for one swarm's walk.
    pub(super) fn stats(&self, grant: Option<&Grant>) -> Stats {
        let now = Instant::now();
        let visible = |id: &AssetId| grant.is_none_or(|g| g.may_fetch(id));
        let figures: Vec<(AssetId, Figures)> = self
            .all_swarms()
            .into_iter()
            .filter(|(id, _)| visible(id))
            .map(|(id, swarm)| {
                let mut swarm = swarm.locked();
                swarm.prune(now, self.peer_timeout);
                (id, swarm.figures())
            })
            .collect();
        let catalog = &self.catalog;
        let mut list: Vec<SwarmStats> = figures
            .into_iter()
            .map(|(id, figures)| SwarmStats {
                id: id.to_string(),
                name: catalog.get(&id).map(|m| m.name.clone()).unwrap_or_default(),
                figures,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        let figures = || list.iter().map(|s| &s.figures);
        let count = |figure: fn(&Figures) -> usize| figures().map(figure).sum();
        let bytes =
            |figure: fn(&Figures) -> u64| figures().map(figure).fold(0, u64::saturating_add);
        let everything = grant.is_none_or(|g| g.may_fetch_all());
        let (assets, announces) = if everything {
            (catalog.len(), self.announces.load(Ordering::Relaxed))
        } else {
            let assets = catalog
                .entries()
                .iter()
                .filter(|(id, _)| visible(id))
                .count();
            (assets, figures().map(|f| f.announces).sum())
        };
        Stats {
            assets,
            totals: Figures::new(
                (
                    count(|f| f.peers),
                    count(|f| f.seeders),
                    count(|f| f.origins),
                ),
                bytes(|f| f.peer_uploaded),
                bytes(|f| f.origin_uploaded),
                announces,
            ),
            announce_batches: self.batches.load(Ordering::Relaxed),
            uptime_secs: self.started.elapsed().as_secs(),
            swarms: list,
        }
    }

    /// The figures of `GET /stats` in the Prometheus text format, as `grant` may see them.
    pub(super) fn metrics(&self, grant: Option<&Grant>) -> String {
        let stats = self.stats(grant);
        let mut m = Exposition::new();
        m.gauge(
            "swarmcache_tracker_uptime_seconds",
            "Seconds since the tracker started.",
        )
        .sample(&[], stats.uptime_secs);
        m.gauge("swarmcache_tracker_assets", "Assets in the catalog.")
            .sample(&[], stats.assets);
        m.counter(
            "swarmcache_tracker_announces_total",
            "Announces received, every swarm together.",
        )
        .sample(&[], stats.totals.announces);
        m.counter(
            "swarmcache_tracker_announce_batches_total",
            "Batch announce requests received (each entry counts among the announces).",
        )
        .sample(&[], stats.announce_batches);
        let per_swarm = |m: &mut Exposition, name, kind, help, figure: fn(&Figures) -> u64| {
            let mut family = m.family(name, kind, help);
            for swarm in &stats.swarms {
                family.sample(
                    &[("asset", &swarm.id), ("name", &swarm.name)],
                    figure(&swarm.figures),
                );
            }
        };
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_peers",
            Kind::Gauge,
            "Live serving peers of the swarm, origins included.",
            |s| s.peers as u64,
        );
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_seeders",
            Kind::Gauge,
            "Live peers of the swarm holding every chunk, origins included.",
            |s| s.seeders as u64,
        );
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_origins",
            Kind::Gauge,
            "Live origins of the swarm.",
            |s| s.origins as u64,
        );
        per_swarm(
            &mut m,
            "swarmcache_tracker_swarm_announces_total",
            Kind::Counter,
            "Announces received for the asset.",
            |s| s.announces,
        );
        let mut family = m.counter(
            "swarmcache_tracker_swarm_served_bytes_total",
            "Bytes served in the swarm, as its peers report them, by source: peer or origin.",
        );
        for swarm in &stats.swarms {
            for (source, bytes) in [
                ("peer", swarm.figures.peer_uploaded),
                ("origin", swarm.figures.origin_uploaded),
            ] {
                let labels = [
                    ("asset", swarm.id.as_str()),
                    ("name", &swarm.name),
                    ("source", source),
                ];
                family.sample(&labels, bytes);
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_p2p_ratio_is_the_peers_share_and_absent_before_any_byte() {
        let p2p_ratio = |peer, origin| Figures::new((0, 0, 0), peer, origin, 0).p2p_ratio;
        assert_eq!(p2p_ratio(0, 0), None);
        assert_eq!(p2p_ratio(0, 10), Some(0.0));
        assert_eq!(p2p_ratio(30, 10), Some(0.75));
        assert_eq!(p2p_ratio(u64::MAX, 0), Some(1.0));
    }
}
