//! The origin shares: which chunks each downloading peer of a swarm takes from the origin.
//!
//! When a crowd arrives together, every leecher asking the origin for every chunk would
//! have the origin send each chunk once per leecher. Instead the chunks no peer holds yet
//! are split into disjoint shares, one per serving leecher: the origin sends each chunk
//! about once, and the leechers trade the rest among themselves.
//!
//! Invariants, after every [`OriginPlan::share_for`]:
//! - no two leechers' shares hold the same chunk, and no share holds a chunk some peer of
//!   the swarm already has;
//! - a share holds at most `fair` chunks (the chunks needed, divided among the leechers,
//!   rounded up) when leechers arrived since the last call; shares never shrink otherwise;
//! - a swarm with a complete peer plans nothing: that peer serves every chunk.
//!
//! Pure: no clocks, locks or sockets. The swarm passes its non-origin peers in, in its
//! stable order (by id), and keeps each peer's share with the peer.

use crate::bitfield::Bitfield;

/// What the plan needs to know of one peer of the swarm that is not an origin.
#[derive(Debug)]
pub struct Member<'a> {
    /// The peer's id.
    pub id: &'a str,
    /// The chunks it holds; `None` when it holds every chunk.
    pub have: Option<&'a Bitfield>,
    /// Its share: the chunks it was told to take from the origin (`None`: never told).
    pub share: &'a mut Option<Bitfield>,
}

/// The state of one swarm's origin plan between announces.
#[derive(Debug, Default)]
pub struct OriginPlan {
    /// How many leechers the origin shares were last split between.
    planned_for: u32,
}

impl OriginPlan {
    /// The chunks leecher `me` should take from the origin, out of `count`, given every
    /// non-origin peer of the swarm (`me` among them, holding some chunks but not all).
    /// Shares are rebalanced as leechers come and go: a share above the fair size gives up
    /// its highest chunks (those its owner fetches last) when leechers arrive, and `me` is
    /// topped up from the chunks nobody has been given. Returns an empty share when `me`
    /// is not among `members`.
    pub fn share_for(&mut self, me: &str, count: u32, members: &mut [Member<'_>]) -> Bitfield {
        let mut needed = Bitfield::full(count);
        for member in members.iter() {
            match member.have {
                Some(have) => needed.remove_all(have),
                None => return Bitfield::new(count), // a complete peer holds everything
            }
        }
        let leechers = members.iter().filter(|m| m.have.is_some()).count().max(1) as u32;
        let fair = needed.count().div_ceil(leechers);
        // Shares shrink only when leechers arrive. Shrinking as the swarm progresses would
        // take from a share the chunks its owner is fetching right now, and both would get
        // them from the origin.
        let arrived = leechers > self.planned_for;
        self.planned_for = leechers;
        let mut assigned = Bitfield::new(count);
        for member in members.iter_mut().filter(|m| m.have.is_some()) {
            let mut plan = member.share.take().unwrap_or_else(|| Bitfield::new(count));
            for index in plan.ones().collect::<Vec<_>>() {
                if !needed.get(index) || assigned.get(index) {
                    plan.unset(index);
                }
            }
            if arrived {
                for index in plan.ones().skip(fair as usize).collect::<Vec<_>>() {
                    plan.unset(index);
                }
            }
            if member.id != me {
                assigned.union_with(&plan);
            }
            *member.share = Some(plan);
        }
        let Some(member) = members.iter_mut().find(|m| m.id == me) else {
            return Bitfield::new(count);
        };
        let plan = member.share.get_or_insert_with(|| Bitfield::new(count));
        let mut room = fair.saturating_sub(plan.count());
        let mut free = needed;
        free.remove_all(&assigned);
        for index in free.ones() {
            if room == 0 {
                break;
            }
            if !plan.get(index) {
                plan.set(index);
                room -= 1;
            }
        }
        plan.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A swarm as the plan sees it: ids, what each holds, and each one's share.
    struct Peers(Vec<(String, Option<Bitfield>, Option<Bitfield>)>);

    impl Peers {
        fn leechers(ids: &[&str], count: u32) -> Peers {
            Peers(
                ids.iter()
                    .map(|id| (id.to_string(), Some(Bitfield::new(count)), None))
                    .collect(),
            )
        }

        fn share(&mut self, plan: &mut OriginPlan, me: &str, count: u32) -> Bitfield {
            let mut members: Vec<Member<'_>> = self
                .0
                .iter_mut()
                .map(|(id, have, share)| Member {
                    id,
                    have: have.as_ref(),
                    share,
                })
                .collect();
            plan.share_for(me, count, &mut members)
        }

        fn have(&mut self, id: &str) -> &mut Bitfield {
            let peer = self.0.iter_mut().find(|p| p.0 == id).unwrap();
            peer.1.as_mut().unwrap()
        }
    }

    fn ones(b: &Bitfield) -> Vec<u32> {
        b.ones().collect()
    }

    #[test]
    fn a_lone_leecher_takes_from_the_origin_only_what_it_lacks() {
        let mut peers = Peers::leechers(&["a"], 10);
        for i in 0..4 {
            peers.have("a").set(i);
        }
        let share = peers.share(&mut OriginPlan::default(), "a", 10);
        assert_eq!(ones(&share), (4..10).collect::<Vec<_>>());
    }

    #[test]
    fn a_complete_peer_means_nothing_from_the_origin() {
        let mut peers = Peers::leechers(&["a", "b"], 10);
        peers.0.push(("seed".into(), None, None));
        let share = peers.share(&mut OriginPlan::default(), "a", 10);
        assert_eq!(share.count(), 0);
    }

    #[test]
    fn chunks_held_by_any_peer_are_in_no_share() {
        let mut peers = Peers::leechers(&["a", "b"], 8);
        peers.have("b").set(0);
        peers.have("b").set(1);
        let mut plan = OriginPlan::default();
        let a = peers.share(&mut plan, "a", 8);
        assert!(!a.get(0) && !a.get(1), "{:?}", ones(&a));
        assert_eq!(a.count(), 3, "half of the six nobody holds");
        // Once a takes chunk 2, it leaves a's share, and b's share never gets it.
        peers.have("a").set(ones(&a)[0]);
        let b = peers.share(&mut plan, "b", 8);
        let a = peers.share(&mut plan, "a", 8);
        let mut both = a.clone();
        both.union_with(&b);
        assert_eq!(both.count(), a.count() + b.count(), "disjoint");
        assert_eq!(both.count(), 5, "every chunk nobody holds, once");
    }

    #[test]
    fn shares_shrink_when_leechers_arrive_and_only_then() {
        let mut plan = OriginPlan::default();
        let mut peers = Peers::leechers(&["a", "b"], 12);
        assert_eq!(peers.share(&mut plan, "a", 12).count(), 6);
        assert_eq!(peers.share(&mut plan, "b", 12).count(), 6);
        // A third arrives: the fair share is 4; a and b give up their highest chunks.
        peers.0.push(("c".into(), Some(Bitfield::new(12)), None));
        let a = peers.share(&mut plan, "a", 12);
        assert_eq!(ones(&a), [0, 1, 2, 3]);
        let c = peers.share(&mut plan, "c", 12);
        assert_eq!(c.count(), 4);
        // c leaves: nobody's share shrinks; the announcer is topped up to the fair 6.
        peers.0.retain(|p| p.0 != "c");
        let b = peers.share(&mut plan, "b", 12);
        assert_eq!(b.count(), 6);
        assert_eq!(peers.share(&mut plan, "a", 12).count(), 6);
    }

    #[test]
    fn a_peer_not_in_the_swarm_gets_nothing() {
        let mut peers = Peers::leechers(&["a"], 4);
        let share = peers.share(&mut OriginPlan::default(), "stranger", 4);
        assert_eq!(share.count(), 0);
    }

    #[test]
    fn every_chunk_nobody_holds_is_in_exactly_one_share_for_any_crowd() {
        for crowd in 1..=7u32 {
            let ids: Vec<String> = (0..crowd).map(|i| format!("p{i}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let mut peers = Peers::leechers(&refs, 100);
            let mut plan = OriginPlan::default();
            let shares: Vec<Bitfield> = refs
                .iter()
                .map(|id| peers.share(&mut plan, id, 100))
                .collect();
            let mut union = Bitfield::new(100);
            for share in &shares {
                assert!(share.count() <= 100u32.div_ceil(crowd));
                let mut overlap = share.clone();
                overlap.remove_all(&union);
                assert_eq!(overlap.count(), share.count(), "crowd {crowd}: disjoint");
                union.union_with(share);
            }
            assert!(union.is_full(), "crowd {crowd}: every chunk covered");
        }
    }
}
