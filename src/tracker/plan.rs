//! The origin shares: which chunks each downloading peer of a swarm takes from the origin,
//! planned from per-chunk availability that the swarm keeps up to date incrementally.
//!
//! When a crowd arrives together, every leecher asking the origin for every chunk would
//! have the origin send each chunk once per leecher. Instead the chunks no peer holds yet
//! are split into disjoint shares, one per serving leecher: the origin sends each chunk
//! about once, and the leechers trade the rest among themselves.
//!
//! The plan counts, for every chunk, the partial members holding it, and the complete
//! members; it owns each member's have (to diff the next one against) and its share. A have
//! change costs one XOR per 64 chunks plus one step per chunk that changed; a departure
//! subtracts what the member held and frees its share; a share is handed out in time
//! proportional to its size (plus one scan for free chunks when it is topped up). Nothing
//! walks every member's bitfield, so an announce costs the same in a swarm of 10 peers and
//! of 10 000.
//!
//! Invariants, after every operation ([`OriginPlan::check`] verifies them in the tests):
//! - a chunk is in at most one share (each chunk has one owner), and no share holds a chunk
//!   some partial member holds;
//! - a share holds at most `fair` chunks (the chunks nobody holds, divided among the
//!   leechers, rounded up) after a [`OriginPlan::share_for`] that saw leechers arrive since
//!   the previous one; shares never shrink otherwise, but for chunks someone now holds;
//! - while a complete member is in the swarm, every share handed out is empty: that member
//!   serves every chunk.
//!
//! Pure: no clocks, locks or sockets. The swarm joins its non-origin peers and keeps the
//! [`Slot`] each one got.

use std::collections::BTreeSet;

use crate::bitfield::Bitfield;

/// A member's place in the plan: handed out by [`OriginPlan::join`], valid until
/// [`OriginPlan::leave`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(u32);

/// One member: what it holds and the chunks it was told to take from the origin.
#[derive(Debug)]
struct Member {
    /// Its have as 64-chunk words (most significant bit first, as [`Bitfield`]'s bytes);
    /// `None` when it holds every chunk.
    have: Option<Vec<u64>>,
    /// Its share. An ordered set: arrivals take a share's highest chunks (those its owner
    /// fetches last), and a share handed out is a few runs of consecutive chunks.
    share: BTreeSet<u32>,
}

/// One swarm's availability counts and origin shares.
#[derive(Debug, Default)]
pub struct OriginPlan {
    count: u32,
    /// Per chunk: how many partial members hold it.
    holders: Vec<u32>,
    /// Per chunk: the slot (plus one) whose share holds it; 0 for none.
    owner: Vec<u32>,
    /// As words: the chunks no partial member holds and no share holds, to top shares up from.
    free: Vec<u64>,
    /// Chunks no partial member holds.
    missing: u32,
    /// Members holding every chunk.
    complete: u32,
    /// Members holding some chunks but not all.
    leechers: u32,
    /// How many leechers the shares were last split between.
    planned_for: u32,
    members: Vec<Option<Member>>,
    /// Slots of members gone, to reuse.
    vacant: Vec<u32>,
}

/// The bit of chunk `i` within its word.
fn bit(i: u32) -> u64 {
    (1u64 << 63) >> (i % 64)
}

/// `have` as words of 64 chunks, bits past `count` cleared (a shorter or longer set is cut
/// to `count` chunks; the routes only pass sets of the asset's length).
fn words(have: &Bitfield, count: u32) -> Vec<u64> {
    let mut out = vec![0u64; (count as usize).div_ceil(64)];
    for (word, bytes) in out.iter_mut().zip(have.as_bytes().chunks(8)) {
        let mut eight = [0u8; 8];
        eight[..bytes.len()].copy_from_slice(bytes);
        *word = u64::from_be_bytes(eight);
    }
    if !count.is_multiple_of(64)
        && let Some(last) = out.last_mut()
    {
        *last &= !(u64::MAX >> (count % 64));
    }
    out
}

/// Calls `f` with each chunk whose bit is set in `word`, word number `w`, lowest first.
fn each_bit(w: usize, mut word: u64, mut f: impl FnMut(u32)) {
    while word != 0 {
        let offset = word.leading_zeros();
        f(w as u32 * 64 + offset);
        word &= !((1u64 << 63) >> offset);
    }
}

/// A set of chunks as runs of consecutive chunks, `[start, end)`, in increasing order.
pub fn runs(chunks: impl IntoIterator<Item = u32>) -> Vec<[u32; 2]> {
    let mut out: Vec<[u32; 2]> = Vec::new();
    for i in chunks {
        match out.last_mut() {
            Some(run) if run[1] == i => run[1] = i + 1,
            _ => out.push([i, i + 1]),
        }
    }
    out
}

impl OriginPlan {
    /// An empty plan for an asset of `count` chunks.
    pub fn new(count: u32) -> OriginPlan {
        let mut free = vec![u64::MAX; (count as usize).div_ceil(64)];
        if !count.is_multiple_of(64)
            && let Some(last) = free.last_mut()
        {
            *last = !(u64::MAX >> (count % 64));
        }
        OriginPlan {
            count,
            holders: vec![0; count as usize],
            owner: vec![0; count as usize],
            free,
            missing: count,
            ..OriginPlan::default()
        }
    }

    /// The chunk count the plan was made for.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Members holding some chunks but not all.
    pub fn leechers(&self) -> u32 {
        self.leechers
    }

    /// Whether no member is in the plan.
    pub fn is_empty(&self) -> bool {
        self.members.len() == self.vacant.len()
    }

    /// A new member holding `have` (`None`: every chunk).
    pub fn join(&mut self, have: Option<&Bitfield>) -> Slot {
        let member = Member {
            have: None,
            share: BTreeSet::new(),
        };
        let slot = match self.vacant.pop() {
            Some(slot) => {
                self.members[slot as usize] = Some(member);
                slot
            }
            None => {
                self.members.push(Some(member));
                self.members.len() as u32 - 1
            }
        };
        // Joined as complete, then told what it holds: one path for every change.
        self.complete += 1;
        self.update(Slot(slot), have);
        Slot(slot)
    }

    /// `slot` now holds `have` (`None`: every chunk): the counts follow the difference.
    pub fn update(&mut self, Slot(slot): Slot, have: Option<&Bitfield>) {
        let Some(member) = self.members.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        // Taken out while the counts change, the share left in place: a chunk the member
        // gained leaves its own share too.
        let old = member.have.take();
        let new = have.map(|h| words(h, self.count));
        match (&old, &new) {
            (Some(old), Some(new)) => {
                for (w, (a, b)) in old.iter().zip(new).enumerate() {
                    each_bit(w, b & !a, |i| self.gained(i));
                    each_bit(w, a & !b, |i| self.lost(i));
                }
            }
            (Some(old), None) => {
                for (w, &word) in old.iter().enumerate() {
                    each_bit(w, word, |i| self.lost(i));
                }
                self.leechers -= 1;
                self.complete += 1;
            }
            (None, Some(new)) => {
                for (w, &word) in new.iter().enumerate() {
                    each_bit(w, word, |i| self.gained(i));
                }
                self.complete -= 1;
                self.leechers += 1;
            }
            (None, None) => {}
        }
        let Some(member) = self.members[slot as usize].as_mut() else {
            return;
        };
        let done = new.is_none();
        member.have = new;
        if done {
            // A complete member fetches nothing more.
            let mut share = std::mem::take(&mut member.share);
            self.release(&mut share);
        }
    }

    /// `slot` is gone (left, timed out, reported, banned): what it held no longer counts,
    /// and its share is free for the others.
    pub fn leave(&mut self, Slot(slot): Slot) {
        let Some(mut member) = self.members.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        match &member.have {
            Some(have) => {
                for (w, &word) in have.iter().enumerate() {
                    each_bit(w, word, |i| self.lost(i));
                }
                self.leechers -= 1;
            }
            None => self.complete -= 1,
        }
        self.release(&mut member.share);
        self.vacant.push(slot);
    }

    /// The chunks leecher `slot` should take from the origin, as runs `[start, end)`.
    /// Shares are rebalanced as leechers come and go: when leechers arrived since the last
    /// call, every share above the fair size gives up its highest chunks; `slot`'s is then
    /// topped up to the fair size from the chunks nobody holds or has been given. Empty for
    /// a complete member, a slot not in the plan, or while a complete member is present.
    pub fn share_for(&mut self, Slot(slot): Slot) -> Vec<[u32; 2]> {
        let partial = self
            .members
            .get(slot as usize)
            .and_then(Option::as_ref)
            .is_some_and(|m| m.have.is_some());
        if !partial || self.complete > 0 {
            return Vec::new();
        }
        let fair = self.missing.div_ceil(self.leechers.max(1)) as usize;
        // Shares shrink only when leechers arrive. Shrinking as the swarm progresses would
        // take from a share the chunks its owner is fetching right now, and both would get
        // them from the origin.
        if self.leechers > self.planned_for {
            for s in 0..self.members.len() {
                let Some(member) = self.members[s].as_mut() else {
                    continue;
                };
                while member.share.len() > fair {
                    let Some(i) = member.share.pop_last() else {
                        break;
                    };
                    self.owner[i as usize] = 0;
                    self.free[i as usize / 64] |= bit(i);
                }
            }
        }
        self.planned_for = self.leechers;
        let Some(member) = self.members[slot as usize].as_mut() else {
            return Vec::new();
        };
        let mut room = fair.saturating_sub(member.share.len());
        for w in 0..self.free.len() {
            if room == 0 {
                break;
            }
            while self.free[w] != 0 && room > 0 {
                let offset = self.free[w].leading_zeros();
                let i = w as u32 * 64 + offset;
                self.free[w] &= !bit(i);
                self.owner[i as usize] = slot + 1;
                member.share.insert(i);
                room -= 1;
            }
        }
        runs(member.share.iter().copied())
    }

    /// A partial member gained chunk `i`.
    fn gained(&mut self, i: u32) {
        let Some(holders) = self.holders.get_mut(i as usize) else {
            return;
        };
        *holders += 1;
        if *holders == 1 {
            self.missing -= 1;
            self.free[i as usize / 64] &= !bit(i);
            // Someone holds it now: no share needs it from the origin any more.
            let owner = std::mem::take(&mut self.owner[i as usize]) as usize;
            if owner > 0
                && let Some(Some(member)) = self.members.get_mut(owner - 1)
            {
                member.share.remove(&i);
            }
        }
    }

    /// A partial member no longer holds chunk `i` (it lost it, completed, or left).
    fn lost(&mut self, i: u32) {
        let Some(holders) = self.holders.get_mut(i as usize) else {
            return;
        };
        *holders = holders.saturating_sub(1);
        if *holders == 0 {
            self.missing += 1;
            self.free[i as usize / 64] |= bit(i);
        }
    }

    /// Gives every chunk of `share` back to the free chunks.
    fn release(&mut self, share: &mut BTreeSet<u32>) {
        for i in std::mem::take(share) {
            self.owner[i as usize] = 0;
            if self.holders[i as usize] == 0 {
                self.free[i as usize / 64] |= bit(i);
            }
        }
    }

    /// Checks every invariant and every count against a recount from the members' haves
    /// and shares; the message names the first that fails.
    #[cfg(test)]
    pub fn check(&self) -> Result<(), String> {
        let (mut holders, mut owner) = (
            vec![0u32; self.count as usize],
            vec![0u32; self.count as usize],
        );
        let (mut complete, mut leechers) = (0, 0);
        for (s, member) in self.members.iter().enumerate() {
            let Some(member) = member else { continue };
            match &member.have {
                Some(have) => {
                    leechers += 1;
                    for (w, &word) in have.iter().enumerate() {
                        each_bit(w, word, |i| holders[i as usize] += 1);
                    }
                }
                None => complete += 1,
            }
            for &i in &member.share {
                if owner[i as usize] != 0 {
                    return Err(format!("chunk {i} is in two shares"));
                }
                owner[i as usize] = s as u32 + 1;
            }
        }
        if (complete, leechers) != (self.complete, self.leechers) {
            return Err(format!(
                "counted {complete} complete and {leechers} leechers, kept {} and {}",
                self.complete, self.leechers
            ));
        }
        if holders != self.holders {
            return Err("per-chunk holder counts differ from a recount".into());
        }
        if owner != self.owner {
            return Err("per-chunk owners differ from the shares".into());
        }
        for i in 0..self.count {
            let (held, owned) = (holders[i as usize] > 0, owner[i as usize] > 0);
            if held && owned {
                return Err(format!("chunk {i} is held by a peer and in a share"));
            }
            let free = self.free[i as usize / 64] & bit(i) != 0;
            if free != (!held && !owned) {
                return Err(format!(
                    "chunk {i}: free bit {free}, held {held}, owned {owned}"
                ));
            }
        }
        let missing = holders.iter().filter(|&&h| h == 0).count() as u32;
        if missing != self.missing {
            return Err(format!("{missing} chunks missing, kept {}", self.missing));
        }
        Ok(())
    }

    /// Chunks no partial member holds.
    #[cfg(test)]
    pub fn missing(&self) -> u32 {
        self.missing
    }

    /// How many chunks are free to hand out.
    #[cfg(test)]
    fn free_count(&self) -> u32 {
        self.free.iter().map(|w| w.count_ones()).sum()
    }

    /// Every member's share size, by slot (0 for vacant slots).
    #[cfg(test)]
    fn share_sizes(&self) -> Vec<usize> {
        let size = |m: &Option<Member>| m.as_ref().map_or(0, |m| m.share.len());
        self.members.iter().map(size).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(count: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
        let mut b = Bitfield::new(count);
        for i in ones {
            b.set(i);
        }
        b
    }

    /// The chunks of a share's runs.
    fn ones(share: &[[u32; 2]]) -> Vec<u32> {
        share.iter().flat_map(|&[a, b]| a..b).collect()
    }

    #[test]
    fn a_lone_leecher_takes_from_the_origin_only_what_it_lacks() {
        let mut plan = OriginPlan::new(10);
        let a = plan.join(Some(&bits(10, 0..4)));
        assert_eq!(plan.share_for(a), [[4, 10]]);
        plan.check().unwrap();
    }

    #[test]
    fn a_complete_peer_means_nothing_from_the_origin() {
        let mut plan = OriginPlan::new(10);
        let a = plan.join(Some(&Bitfield::new(10)));
        let b = plan.join(Some(&Bitfield::new(10)));
        assert_eq!(ones(&plan.share_for(b)).len(), 5);
        let seed = plan.join(None);
        assert!(plan.share_for(a).is_empty());
        // Once it leaves, shares are handed out again.
        plan.leave(seed);
        assert_eq!(ones(&plan.share_for(a)).len(), 5);
        plan.check().unwrap();
    }

    #[test]
    fn chunks_held_by_any_peer_are_in_no_share() {
        let mut plan = OriginPlan::new(8);
        let a = plan.join(Some(&Bitfield::new(8)));
        let b = plan.join(Some(&bits(8, [0, 1])));
        let share_a = ones(&plan.share_for(a));
        assert!(
            !share_a.contains(&0) && !share_a.contains(&1),
            "{share_a:?}"
        );
        assert_eq!(share_a.len(), 3, "half of the six nobody holds");
        // Once a takes a chunk of its share, it leaves the share, and b's never gets it.
        plan.update(a, Some(&bits(8, [share_a[0]])));
        plan.check().unwrap();
        let share_b = ones(&plan.share_for(b));
        let share_a2 = ones(&plan.share_for(a));
        assert!(!share_a2.contains(&share_a[0]));
        let mut both: Vec<u32> = share_a2.iter().chain(&share_b).copied().collect();
        both.sort();
        both.dedup();
        assert_eq!(both.len(), share_a2.len() + share_b.len(), "disjoint");
        assert_eq!(both.len(), 5, "every chunk nobody holds, once");
        plan.check().unwrap();
    }

    #[test]
    fn shares_shrink_when_leechers_arrive_and_only_then() {
        let mut plan = OriginPlan::new(12);
        let a = plan.join(Some(&Bitfield::new(12)));
        let b = plan.join(Some(&Bitfield::new(12)));
        assert_eq!(ones(&plan.share_for(a)).len(), 6);
        assert_eq!(ones(&plan.share_for(b)).len(), 6);
        // A third arrives: the fair share is 4; a and b give up their highest chunks.
        let c = plan.join(Some(&Bitfield::new(12)));
        assert_eq!(plan.share_for(a), [[0, 4]]);
        assert_eq!(ones(&plan.share_for(c)).len(), 4);
        // c leaves: nobody's share shrinks; the announcer is topped up to the fair 6.
        plan.leave(c);
        assert_eq!(ones(&plan.share_for(b)).len(), 6);
        assert_eq!(ones(&plan.share_for(a)).len(), 6);
        plan.check().unwrap();
    }

    #[test]
    fn a_departure_frees_its_share_and_uncounts_its_chunks() {
        let mut plan = OriginPlan::new(8);
        let a = plan.join(Some(&bits(8, [0, 1, 2, 3])));
        let b = plan.join(Some(&Bitfield::new(8)));
        assert_eq!(plan.share_for(b), [[4, 6]]);
        plan.leave(a);
        plan.check().unwrap();
        // a's chunks are needed again, and b alone is fair for all eight.
        assert_eq!(plan.share_for(b), [[0, 8]]);
        // A slot that left gets nothing, and its number is reused.
        assert!(plan.share_for(a).is_empty());
        let c = plan.join(None);
        assert_eq!(c, a);
        plan.check().unwrap();
    }

    #[test]
    fn a_leecher_that_completes_frees_its_share() {
        let mut plan = OriginPlan::new(8);
        let a = plan.join(Some(&Bitfield::new(8)));
        assert_eq!(plan.share_for(a), [[0, 8]]);
        plan.update(a, None);
        plan.check().unwrap();
        assert!(plan.share_for(a).is_empty());
        assert_eq!(plan.share_sizes(), [0]);
    }

    #[test]
    fn every_chunk_nobody_holds_is_in_exactly_one_share_for_any_crowd() {
        for crowd in 1..=7u32 {
            let mut plan = OriginPlan::new(100);
            let slots: Vec<Slot> = (0..crowd)
                .map(|_| plan.join(Some(&Bitfield::new(100))))
                .collect();
            let shares: Vec<Vec<u32>> = slots.iter().map(|&s| ones(&plan.share_for(s))).collect();
            let mut union: Vec<u32> = shares.concat();
            assert!(
                shares
                    .iter()
                    .all(|s| s.len() <= 100usize.div_ceil(crowd as usize)),
                "crowd {crowd}: fair"
            );
            union.sort();
            union.dedup();
            assert_eq!(
                union.len(),
                shares.iter().map(Vec::len).sum::<usize>(),
                "disjoint"
            );
            assert_eq!(union.len(), 100, "crowd {crowd}: every chunk covered");
            plan.check().unwrap();
        }
    }

    #[test]
    fn runs_join_consecutive_chunks() {
        assert_eq!(runs([]), Vec::<[u32; 2]>::new());
        assert_eq!(runs([0, 1, 2, 5, 7, 8]), [[0, 3], [5, 6], [7, 9]]);
    }

    mod properties {
        use super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;

        /// One step of a swarm, as the plan sees it. Indexes pick among the members present.
        #[derive(Clone, Debug)]
        enum Step {
            /// A member joins holding these chunks (`None`: all).
            Join(Option<Vec<u32>>),
            /// A member now also holds these chunks, and loses those.
            Update(usize, Vec<u32>, Vec<u32>),
            /// A member completes.
            Complete(usize),
            /// A member leaves.
            Leave(usize),
            /// A member announces and is handed its share.
            Share(usize),
        }

        const COUNT: u32 = 150;

        fn step() -> impl Strategy<Value = Step> {
            let chunks = || vec(0..COUNT + 5, 0..40);
            prop_oneof![
                2 => proptest::option::weighted(0.9, chunks()).prop_map(Step::Join),
                3 => (any::<usize>(), chunks(), vec(0..COUNT, 0..5))
                    .prop_map(|(m, add, drop)| Step::Update(m, add, drop)),
                1 => any::<usize>().prop_map(Step::Complete),
                1 => any::<usize>().prop_map(Step::Leave),
                5 => any::<usize>().prop_map(Step::Share),
            ]
        }

        proptest! {
            #[test]
            fn the_invariants_hold_over_any_announce_sequence(steps in vec(step(), 1..80)) {
                let mut plan = OriginPlan::new(COUNT);
                // Each member present: its slot and what it holds (`None`: complete).
                let mut members: Vec<(Slot, Option<Bitfield>)> = Vec::new();
                for step in steps {
                    match step {
                        Step::Join(have) => {
                            let have = have.map(|c| bits(COUNT, c));
                            let slot = plan.join(have.as_ref());
                            members.push((slot, have));
                        }
                        Step::Update(m, add, drop) if !members.is_empty() => {
                            let m = m % members.len();
                            let (slot, have) = &mut members[m];
                            if let Some(have) = have {
                                add.iter().for_each(|&i| have.set(i));
                                drop.iter().for_each(|&i| have.unset(i));
                            }
                            plan.update(*slot, have.as_ref());
                        }
                        Step::Complete(m) if !members.is_empty() => {
                            let m = m % members.len();
                            let (slot, have) = &mut members[m];
                            *have = None;
                            plan.update(*slot, None);
                        }
                        Step::Leave(m) if !members.is_empty() => {
                            let (slot, _) = members.remove(m % members.len());
                            plan.leave(slot);
                        }
                        Step::Share(m) if !members.is_empty() => {
                            let (slot, have) = &members[m % members.len()];
                            let arrived = plan.leechers > plan.planned_for;
                            let share = ones(&plan.share_for(*slot));
                            let complete = members.iter().any(|(_, h)| h.is_none());
                            if complete || have.is_none() {
                                prop_assert!(share.is_empty(), "a complete member is present");
                            }
                            for &i in &share {
                                prop_assert!(
                                    members.iter().all(|(_, h)| h.as_ref().is_some_and(|h| !h.get(i))),
                                    "chunk {} of the share is held by a peer", i
                                );
                            }
                            let leechers = members.iter().filter(|(_, h)| h.is_some()).count();
                            let missing = (0..COUNT)
                                .filter(|&i| members.iter().all(|(_, h)| h.as_ref().is_none_or(|h| !h.get(i))))
                                .count();
                            let fair = missing.div_ceil(leechers.max(1));
                            if arrived && !complete {
                                prop_assert!(
                                    plan.share_sizes().iter().all(|&n| n <= fair),
                                    "shares {:?} above the fair {} after arrivals", plan.share_sizes(), fair
                                );
                            }
                            if !complete && have.is_some() && share.len() < fair {
                                prop_assert_eq!(plan.free_count(), 0, "topped up short of fair with chunks free");
                            }
                        }
                        _ => {}
                    }
                    if let Err(e) = plan.check() {
                        return Err(TestCaseError::fail(e));
                    }
                }
            }
        }
    }
}
