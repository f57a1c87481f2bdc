//! The batch announce, `POST /announce`: one peer (a `peer_server` and its store) announces
//! many assets in one request, so that a host holding 10 000 assets costs the tracker three
//! requests a heartbeat instead of 10 000.
//!
//! Each entry is authorised and applied as a single announce of its asset would be (`fetch`
//! of the asset, and `origin` too for an origin), and a refused entry (a malformed id, an
//! asset not in the catalog, a right the token lacks, a malformed `have`) fails alone: the
//! answer lists it with the status a single announce would have got. What concerns the
//! whole request fails it whole: a body over [`BATCH_MAX_BODY`] or with more than
//! [`BATCH_MAX_ENTRIES`] entries (413), malformed JSON, peer id or address (400), a token
//! the tracker does not know (401), the address over its announce rate (429).
//!
//! The answer carries what a seeder needs, the heartbeat interval, the instance and the
//! keys, and no peers lists or tickets: a store serves, it does not download. Each entry
//! takes its swarm's lock on its own, so announces to other swarms are not held up behind
//! a batch.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::routes::{
    Holder, HttpError, Reply, check_peer_id, err, json, parse_have, parse_id, rate_limit_cost,
    read_body, resolve_addr,
};
use super::swarm::Announce;
use super::{State, heartbeat};
use crate::api::{
    AnnounceEvent, BATCH_MAX_BODY, BATCH_MAX_ENTRIES, BatchAnnounceRequest, BatchAnnounceResponse,
    BatchEntry, BatchRefusal,
};
use crate::auth::Action;
use crate::http;
use crate::manifest::AssetId;
use crate::sync::LockExt;

/// Batch entries that cost one token of the address's announce rate. Measured (release,
/// loopback, 10 000 complete assets): a batch entry costs the tracker 2.1 µs of CPU, its
/// share of the request included (no answer to build), a seeder's single announce on its
/// own connection 145 µs. So 100 entries, about 210 µs, are charged as one announce, rounded
/// up: a store of 10 000 assets takes 100 tokens a heartbeat (20 s), a twentieth of the
/// default 100 a second, and its first beat fits the burst of 200.
const ENTRIES_PER_TOKEN: usize = 100;

/// The tokens a batch of `entries` entries is charged: one per [`ENTRIES_PER_TOKEN`]
/// entries, rounded up, and at least one.
fn cost(entries: usize) -> u32 {
    u32::try_from(entries.div_ceil(ENTRIES_PER_TOKEN).max(1)).unwrap_or(u32::MAX)
}

/// The most characters of a refused entry's id repeated in the answer: an id is 64, and a
/// hostile one must not make the answer bigger than the request.
const MAX_ECHOED_ID: usize = 64;

impl State {
    /// Answers `POST /announce`.
    pub(super) fn announce_batch(
        &self,
        request: &mut http::Request<'_>,
        remote: Option<SocketAddr>,
        token: Option<&str>,
    ) -> Result<Reply, HttpError> {
        // One token before the body is read, as a single announce: a flood of bodies is
        // refused before it is parsed. The rest of the cost once the entries are counted.
        rate_limit_cost(&self.announce_limit, remote, "announces", 1)?;
        // A token the tracker does not know is refused once, not once per entry.
        let grant = self.authorize(token, Action::Browse)?;
        // Bound, addressed and counted as its single announces would be (issue 13).
        let holder = Holder::new(grant.as_deref(), remote);
        let body = read_body(request, BATCH_MAX_BODY)?;
        let req: BatchAnnounceRequest = serde_json::from_str(&body)
            .map_err(|e| err(400, format!("batch announce body is not valid JSON: {e}")))?;
        let entries = req.assets.len();
        if entries > BATCH_MAX_ENTRIES {
            return Err(err(
                413,
                format!(
                    "batch announce has {entries} entries, more than the {BATCH_MAX_ENTRIES} allowed; split it into several requests"
                ),
            ));
        }
        let more = cost(entries) - 1;
        if more > 0 {
            rate_limit_cost(&self.announce_limit, remote, "announces", more)?;
        }
        check_peer_id(&req.peer_id)?;
        let addr = match &req.addr {
            Some(text) => Some(resolve_addr(text, remote, holder.may_advertise)?),
            None => None,
        };
        self.batches.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let mut refused = Vec::new();
        // With --redis, Redis's instance (what every tracker sharing it answers with).
        let mut instance = None;
        for (index, entry) in req.assets.iter().enumerate() {
            match self.announce_entry(&req, addr, entry, token, &holder, now) {
                Ok(shared) => instance = shared.or(instance),
                Err(e) => refused.push(BatchRefusal {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    id: entry.id.chars().take(MAX_ECHOED_ID).collect(),
                    status: e.status,
                    error: e.message,
                }),
            }
        }
        Ok(json(
            200,
            &BatchAnnounceResponse {
                interval_secs: heartbeat(self.peer_timeout).as_secs(),
                instance: instance.unwrap_or_else(|| self.warm_up.instance().to_string()),
                your_addr: addr.map(|a| a.to_string()),
                keys: self.keys().keys,
                accepted: u32::try_from(entries - refused.len()).unwrap_or(u32::MAX),
                refused,
            },
        ))
    }

    /// Checks and applies one entry of `batch`, as a single announce of its asset by the
    /// batch's peer would be; with `--redis`, gives the instance Redis answered with.
    fn announce_entry(
        &self,
        batch: &BatchAnnounceRequest,
        addr: Option<SocketAddr>,
        entry: &BatchEntry,
        token: Option<&str>,
        holder: &Holder,
        now: Instant,
    ) -> Result<Option<String>, HttpError> {
        let id = parse_id(&entry.id)?;
        self.authorize(token, Action::Fetch(&id))?;
        if batch.origin {
            self.authorize(token, Action::Origin(&id))?;
        }
        let chunk_count = self.manifest(&id)?.chunk_count();
        let have = parse_have(chunk_count, entry.complete, entry.have.as_deref())?;
        let announce = Announce {
            peer_id: &batch.peer_id,
            who: &holder.who,
            may_origin: holder.may_origin,
            addr,
            have,
            origin: batch.origin,
            leaving: entry.event == Some(AnnounceEvent::Stopped),
            uploaded: entry.uploaded,
            corrupt: &[],
            unreachable: &[],
        };
        self.apply(id, chunk_count, announce, now)
    }

    /// The batch's one call into the swarms: applies a checked announce to the swarm of
    /// `id` as a single announce does, under that swarm's lock only, and builds no answer
    /// from it. Refused as a single announce would be (a peer id of another holder).
    fn apply(
        &self,
        id: AssetId,
        chunk_count: u32,
        announce: Announce<'_>,
        now: Instant,
    ) -> Result<Option<String>, HttpError> {
        if let Some(shared) = &self.shared {
            self.announces.fetch_add(1, Ordering::Relaxed);
            let kind =
                super::shared::Kind::of(announce.leaving, announce.origin, announce.have.as_ref());
            return self
                .announce_to(
                    shared,
                    &id,
                    announce.peer_id,
                    announce.who,
                    announce.addr,
                    kind,
                    announce.have.as_ref(),
                    chunk_count,
                    0,
                )
                .map(|answer| Some(answer.instance));
        }
        self.announces.fetch_add(1, Ordering::Relaxed);
        let swarm = self.swarm(&id, true).expect("created when absent");
        let mut swarm = swarm.locked();
        // No peers to hand out: the answer's list is not built.
        swarm
            .announce(announce, &id, chunk_count, 0, self.peer_timeout, now)
            .map(|_| None)
            .map_err(|r| err(r.status, r.message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_charged_one_token_per_hundred_entries_rounded_up() {
        assert_eq!(cost(0), 1, "an empty batch is still a request");
        assert_eq!(cost(1), 1);
        assert_eq!(cost(ENTRIES_PER_TOKEN), 1);
        assert_eq!(cost(ENTRIES_PER_TOKEN + 1), 2);
        assert_eq!(cost(BATCH_MAX_ENTRIES), 41);
        assert_eq!(cost(usize::MAX), u32::MAX);
    }
}
