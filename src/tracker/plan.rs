//! The origin shares: which chunks each downloading peer of a swarm takes from the origin,
//! planned from per-chunk availability that the swarm keeps up to date incrementally.
//!
//! When a crowd arrives together, every leecher asking the origin for every chunk would
//! have the origin send each chunk once per leecher. Instead the chunks no peer holds yet
//! are split into disjoint shares, one per serving leecher: the origin sends each chunk
//! about once, and the leechers trade the rest among themselves.
//!
//! A share is only worth what its owner fetches: chunks in the share of a peer that never
//! fetches them are fetched by nobody until every client gives up on the plan and asks the
//! origin itself, once per client. So shares go to downloaders that make progress:
//! - a member that has shown nothing gets at most [`FIRST_GRANT`] chunks, and each chunk its
//!   have grows by lets its share grow by [`GROWTH`] more;
//! - a member that gains none of its own share's chunks for the stall bound
//!   ([`stall_bound`], a few announce intervals) loses its share to the others, and gets none
//!   until its have grows again;
//! - the members of one identity (a token, or an address, an IPv6 /64, in open mode) are
//!   handed chunks only while they hold fewer than [`IDENTITY_FIRST_GRANT`] plus [`GROWTH`]
//!   per chunk they have gained (those gone included); once an identity's shares have been
//!   out for the stall bound with none of its members gaining a chunk, it gets no more,
//!   however many new peer ids it announces;
//! - the chunks are divided between the proven members (those that gained a chunk) plus one
//!   per identity for all its unproven ones, so that fresh ids cannot shrink everyone's share.
//!
//! The plan counts, for every chunk, the partial members holding it, and the complete
//! members; it owns each member's have (to diff the next one against) and its share. A have
//! change costs one XOR per 64 chunks plus one step per chunk that changed; a departure
//! subtracts what the member held and frees its share; a share is handed out in time
//! proportional to its size (plus one scan for free chunks when it is topped up); a stalled
//! share is found at the front of a queue ordered by when each share last moved. Nothing
//! walks every member's bitfield, so an announce costs the same in a swarm of 10 peers and
//! of 10 000.
//!
//! Invariants, after every operation ([`OriginPlan::check`] verifies them in the tests):
//! - a chunk is in at most one share (each chunk has one owner), and no share holds a chunk
//!   some partial member holds;
//! - a share holds at most [`FIRST_GRANT`] + [`GROWTH`] × what its owner gained, and at most
//!   `fair` chunks (the chunks nobody holds, divided as above, rounded up) after a
//!   [`OriginPlan::share_for`] that saw that divisor grow since the previous one; shares never
//!   shrink otherwise, but for chunks someone now holds and shares reclaimed;
//! - an identity's members hold at most its cap together ([`IDENTITY_FIRST_GRANT`] plus
//!   [`GROWTH`] per chunk its members, present or gone, gained): an identity none of whose
//!   members gained a chunk holds at most [`IDENTITY_FIRST_GRANT`];
//! - every non-empty share has a stall clock, and a stalled member holds no share;
//! - while a complete member is in the swarm, every share handed out is empty: that member
//!   serves every chunk.
//!
//! Pure: no clocks, locks or sockets; time is an argument. The swarm joins its non-origin
//! peers with their identity and keeps the [`Slot`] each one got.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::{Duration, Instant};

use crate::bitfield::Bitfield;

/// Chunks a member that has shown no progress may hold: at 64 KiB to 1 MiB chunks, what a
/// client fetches from a shared origin in well under the half second until its next
/// announce shows what it did with them. Small enough that a fake holds little of any
/// asset, and only for the stall bound.
pub const FIRST_GRANT: u32 = 8;
/// How many more chunks a member's share may hold for each chunk its have grew by. Above
/// one, so that an honest downloader's share grows faster than it is fetched (in a crowd of
/// N it gains N chunks for each one it fetches from the origin); two makes a lone
/// downloader's share triple with every announce.
pub const GROWTH: u32 = 2;
/// Chunks all members of one identity may hold before any of them gained a chunk: two
/// members' first grants. A fleet behind one token or address starts with 16 chunks from
/// the origin and has earned thousands by its second announce; a thousand fake ids from
/// one host hold 16 chunks, for one stall bound, once.
pub const IDENTITY_FIRST_GRANT: u32 = 2 * FIRST_GRANT;
/// Announce intervals a share may go without its owner gaining one of its chunks before
/// it is reclaimed: a downloader's progress is seen only when it announces, and one late
/// announce on a loaded machine must not cost it its share.
pub const STALL_INTERVALS: u32 = 4;
/// The least stall bound: a client's first chunk from the origin takes a connection, a
/// handshake and a chunk's transfer, about a second on a loaded 2-core machine at 1 MiB;
/// three leave room, and stay below the fall-back by which clients that see the swarm stop
/// delivering ask the origin for everything (after 2 s with no peer delivering, plus the
/// chunks they still fetch).
pub const STALL_FLOOR: Duration = Duration::from_secs(3);

/// How long a share may go without progress, for downloaders told to announce every
/// `interval`: [`STALL_INTERVALS`] intervals, at least [`STALL_FLOOR`].
pub fn stall_bound(interval: Duration) -> Duration {
    interval.saturating_mul(STALL_INTERVALS).max(STALL_FLOOR)
}

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
    /// Its identity's index in [`OriginPlan::identities`].
    who: u32,
    /// The most chunks it has held at once.
    best: u32,
    /// What it has shown it fetches: how far `best` grew since it joined (what it joined
    /// with proves nothing, and a chunk dropped and claimed again counts once).
    gained: u32,
    /// When its share last moved (handed out while it held none, or a chunk of it fetched):
    /// its key in [`OriginPlan::clocks`]. Always set while its share is not empty.
    clock: Option<Instant>,
    /// Its share was reclaimed, or its identity stalled: no share until its have grows.
    stalled: bool,
}

impl Member {
    /// Whether it counts among the leechers the chunks are divided between, and whether it
    /// is proven (gained a chunk).
    fn standing(&self) -> (bool, bool) {
        let eligible = self.have.is_some() && !self.stalled;
        (eligible, eligible && self.gained > 0)
    }

    /// The most chunks its share may hold.
    fn limit(&self) -> usize {
        (FIRST_GRANT as usize)
            .saturating_add((GROWTH as usize).saturating_mul(self.gained as usize))
    }
}

/// The members of one identity, together.
#[derive(Debug)]
struct Identity<W> {
    name: W,
    /// Members (partial or complete).
    members: u32,
    /// Chunks in their shares.
    held: u32,
    /// What its members gained, those gone included: what the identity has shown it
    /// fetches, kept while it has members so that its cap never shrinks under what its
    /// members hold.
    gained: u64,
    /// Members that count among the leechers, and the proven ones among them.
    eligible: u32,
    proven: u32,
    /// When one of its members last gained a chunk, or when it was first handed chunks;
    /// `None` until then. Past the stall bound, it is handed nothing more.
    clock: Option<Instant>,
}

impl<W> Identity<W> {
    /// How many leechers it counts as when the chunks are divided: its proven members, and
    /// one for all its unproven ones.
    fn weight(&self) -> u32 {
        self.proven + (self.eligible - self.proven).min(1)
    }

    /// The most chunks its members may hold together before it is handed no more.
    fn cap(&self) -> u64 {
        u64::from(IDENTITY_FIRST_GRANT)
            .saturating_add(u64::from(GROWTH).saturating_mul(self.gained))
    }
}

/// One swarm's availability counts and origin shares; `W` names an identity.
#[derive(Debug)]
pub struct OriginPlan<W> {
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
    /// The sum of the identities' weights: what the chunks nobody holds are divided by.
    divisor: u32,
    /// The divisor the shares were last split by.
    planned_for: u32,
    members: Vec<Option<Member>>,
    /// Slots of members gone, to reuse.
    vacant: Vec<u32>,
    /// Identities with members, by index, and the index of each.
    identities: Vec<Option<Identity<W>>>,
    by_name: HashMap<W, u32>,
    vacant_identities: Vec<u32>,
    /// The members with a stall clock, oldest first.
    clocks: BTreeSet<(Instant, u32)>,
}

impl<W> Default for OriginPlan<W> {
    fn default() -> OriginPlan<W> {
        OriginPlan {
            count: 0,
            holders: Vec::new(),
            owner: Vec::new(),
            free: Vec::new(),
            missing: 0,
            complete: 0,
            leechers: 0,
            divisor: 0,
            planned_for: 0,
            members: Vec::new(),
            vacant: Vec::new(),
            identities: Vec::new(),
            by_name: HashMap::new(),
            vacant_identities: Vec::new(),
            clocks: BTreeSet::new(),
        }
    }
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

impl<W: Clone + Eq + Hash> OriginPlan<W> {
    /// An empty plan for an asset of `count` chunks.
    pub fn new(count: u32) -> OriginPlan<W> {
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

    /// A new member of identity `who` holding `have` (`None`: every chunk), at `now`.
    pub fn join(&mut self, have: Option<&Bitfield>, who: &W, now: Instant) -> Slot {
        let x = match self.by_name.get(who) {
            Some(&x) => x,
            None => {
                let identity = Identity {
                    name: who.clone(),
                    members: 0,
                    held: 0,
                    gained: 0,
                    eligible: 0,
                    proven: 0,
                    clock: None,
                };
                let x = match self.vacant_identities.pop() {
                    Some(x) => {
                        self.identities[x as usize] = Some(identity);
                        x
                    }
                    None => {
                        self.identities.push(Some(identity));
                        self.identities.len() as u32 - 1
                    }
                };
                self.by_name.insert(who.clone(), x);
                x
            }
        };
        if let Some(Some(identity)) = self.identities.get_mut(x as usize) {
            identity.members += 1;
        }
        let member = Member {
            have: None,
            share: BTreeSet::new(),
            who: x,
            best: 0,
            gained: 0,
            clock: None,
            stalled: false,
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
        // Joined as complete, then told what it holds: one path for every change. What it
        // joins with is no progress.
        self.complete += 1;
        self.update(Slot(slot), have, now);
        Slot(slot)
    }

    /// `slot` now holds `have` (`None`: every chunk), at `now`: the counts follow the
    /// difference, and what it gained is its progress.
    pub fn update(&mut self, Slot(slot): Slot, have: Option<&Bitfield>, now: Instant) {
        let Some(member) = self.members.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let before = member.standing();
        // Taken out while the counts change, the share left in place: a chunk the member
        // gained leaves its own share too.
        let old = member.have.take();
        let new = have.map(|h| words(h, self.count));
        // Chunks of its own share it gained: its share moves.
        let mut own = 0u32;
        match (&old, &new) {
            (Some(old), Some(new)) => {
                for (w, (a, b)) in old.iter().zip(new).enumerate() {
                    each_bit(w, b & !a, |i| own += u32::from(self.gained(i, slot)));
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
                    each_bit(w, word, |i| {
                        self.gained(i, slot);
                    });
                }
                self.complete -= 1;
                self.leechers += 1;
            }
            (None, None) => {}
        }
        let held = match &new {
            Some(new) => new.iter().map(|w| w.count_ones()).sum(),
            None => self.count,
        };
        let Some(member) = self.members[slot as usize].as_mut() else {
            return;
        };
        // Growth beyond the most it ever held, and only from a have it had before: a
        // joining have, or one that comes back after a loss, proves nothing.
        let grew = if old.is_some() {
            held.saturating_sub(member.best)
        } else {
            0
        };
        member.best = member.best.max(held);
        member.gained = member.gained.saturating_add(grew);
        let done = new.is_none();
        member.have = new;
        let who = member.who;
        if grew > 0 {
            member.stalled = false;
            if let Some(Some(identity)) = self.identities.get_mut(who as usize) {
                identity.gained = identity.gained.saturating_add(u64::from(grew));
                identity.clock = Some(now);
            }
        }
        if done {
            // A complete member fetches nothing more.
            let share = std::mem::take(&mut member.share);
            self.release(who, share);
            self.set_clock(slot, None);
        } else if own > 0 {
            let moving = !member.share.is_empty();
            self.set_clock(slot, moving.then_some(now));
        }
        self.restand(slot, before);
    }

    /// `slot` is gone (left, timed out, reported, banned): what it held no longer counts,
    /// and its share is free for the others.
    pub fn leave(&mut self, Slot(slot): Slot) {
        let Some(mut member) = self.members.get_mut(slot as usize).and_then(Option::take) else {
            return;
        };
        let (eligible, proven) = member.standing();
        match &member.have {
            Some(have) => {
                for (w, &word) in have.iter().enumerate() {
                    each_bit(w, word, |i| self.lost(i));
                }
                self.leechers -= 1;
            }
            None => self.complete -= 1,
        }
        self.release(member.who, std::mem::take(&mut member.share));
        if let Some(at) = member.clock {
            self.clocks.remove(&(at, slot));
        }
        let x = member.who as usize;
        if let Some(Some(identity)) = self.identities.get_mut(x) {
            let old = identity.weight();
            identity.eligible -= u32::from(eligible);
            identity.proven -= u32::from(proven);
            identity.members -= 1;
            self.divisor = self.divisor + identity.weight() - old;
            if identity.members == 0 {
                self.by_name.remove(&identity.name);
                self.identities[x] = None;
                self.vacant_identities.push(x as u32);
            }
        }
        self.vacant.push(slot);
    }

    /// The chunks leecher `slot` should take from the origin, as runs `[start, end)`, at
    /// `now`, with shares that went `stall` without progress reclaimed first. Shares are
    /// rebalanced as leechers prove themselves or arrive: when the divisor grew since the
    /// last call, every share above the fair size gives up its highest chunks; `slot`'s is
    /// then topped up from the chunks nobody holds or has been given, to the fair size, its
    /// own limit or its identity's cap, whichever is least. Empty for a complete member, a
    /// slot not in the plan, a stalled member or identity, or while a complete member is
    /// present.
    pub fn share_for(&mut self, Slot(slot): Slot, now: Instant, stall: Duration) -> Vec<[u32; 2]> {
        self.reclaim(now, stall);
        let Some(member) = self.members.get(slot as usize).and_then(Option::as_ref) else {
            return Vec::new();
        };
        if member.have.is_none() || member.stalled || self.complete > 0 {
            return Vec::new();
        }
        let who = member.who as usize;
        let identity_stalled = self.identities[who]
            .as_ref()
            .and_then(|x| x.clock)
            .is_some_and(|at| now.saturating_duration_since(at) > stall);
        if identity_stalled {
            self.stall(slot);
            return Vec::new();
        }
        let fair = self.missing.div_ceil(self.divisor.max(1)) as usize;
        // Shares shrink only when the divisor grows. Shrinking as the swarm progresses would
        // take from a share the chunks its owner is fetching right now, and both would get
        // them from the origin.
        if self.divisor > self.planned_for {
            for s in 0..self.members.len() {
                let Some(member) = self.members[s].as_mut() else {
                    continue;
                };
                let before = member.share.len();
                while member.share.len() > fair {
                    let Some(i) = member.share.pop_last() else {
                        break;
                    };
                    self.owner[i as usize] = 0;
                    self.free[i as usize / 64] |= bit(i);
                }
                if let Some(Some(identity)) = self.identities.get_mut(member.who as usize) {
                    identity.held -= (before - member.share.len()) as u32;
                }
            }
        }
        self.planned_for = self.divisor;
        let (Some(member), Some(identity)) = (
            self.members[slot as usize].as_mut(),
            self.identities[who].as_mut(),
        ) else {
            return Vec::new();
        };
        let cap_room = identity.cap().saturating_sub(u64::from(identity.held));
        let mut room = fair
            .min(member.limit())
            .saturating_sub(member.share.len())
            .min(usize::try_from(cap_room).unwrap_or(usize::MAX));
        let (was_empty, mut handed) = (member.share.is_empty(), 0u32);
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
                handed += 1;
            }
        }
        identity.held += handed;
        if handed > 0 {
            // The identity's clock runs from its first chunks on, and only progress
            // restarts it: ids that come and go do not.
            identity.clock.get_or_insert(now);
            if was_empty {
                self.set_clock(slot, Some(now));
            }
        }
        let member = self.members[slot as usize].as_ref();
        runs(member.into_iter().flat_map(|m| m.share.iter().copied()))
    }

    /// Reclaims the share of every member whose share has not moved for longer than
    /// `stall`: they are stalled until their have grows.
    fn reclaim(&mut self, now: Instant, stall: Duration) {
        while self
            .clocks
            .first()
            .is_some_and(|&(at, _)| now.saturating_duration_since(at) > stall)
        {
            let Some((_, slot)) = self.clocks.pop_first() else {
                break;
            };
            let Some(member) = self.members.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            member.clock = None;
            // A share emptied by others' progress holds nothing to reclaim.
            if !member.share.is_empty() {
                self.stall(slot);
            }
        }
    }

    /// Member `slot` makes no progress: its share goes back to the free chunks, and it gets
    /// none until its have grows.
    fn stall(&mut self, slot: u32) {
        let Some(member) = self.members.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let before = member.standing();
        member.stalled = true;
        let (who, share) = (member.who, std::mem::take(&mut member.share));
        self.release(who, share);
        self.set_clock(slot, None);
        self.restand(slot, before);
    }

    /// Sets member `slot`'s stall clock, keeping [`OriginPlan::clocks`] in step.
    fn set_clock(&mut self, slot: u32, at: Option<Instant>) {
        let Some(member) = self.members.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        if let Some(old) = member.clock.take() {
            self.clocks.remove(&(old, slot));
        }
        if let Some(at) = at {
            self.clocks.insert((at, slot));
        }
        member.clock = at;
    }

    /// Moves member `slot`'s standing in its identity's counts, and the divisor, from
    /// `before` to its present one.
    fn restand(&mut self, slot: u32, before: (bool, bool)) {
        let Some(member) = self.members.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let after = member.standing();
        if after == before {
            return;
        }
        let Some(Some(identity)) = self.identities.get_mut(member.who as usize) else {
            return;
        };
        let old = identity.weight();
        identity.eligible = identity.eligible + u32::from(after.0) - u32::from(before.0);
        identity.proven = identity.proven + u32::from(after.1) - u32::from(before.1);
        self.divisor = self.divisor + identity.weight() - old;
    }

    /// A partial member, `slot`, gained chunk `i`; whether `i` was in its own share.
    fn gained(&mut self, i: u32, slot: u32) -> bool {
        let Some(holders) = self.holders.get_mut(i as usize) else {
            return false;
        };
        *holders += 1;
        if *holders != 1 {
            return false;
        }
        self.missing -= 1;
        self.free[i as usize / 64] &= !bit(i);
        // Someone holds it now: no share needs it from the origin any more.
        let owner = std::mem::take(&mut self.owner[i as usize]) as usize;
        if owner > 0
            && let Some(Some(member)) = self.members.get_mut(owner - 1)
        {
            member.share.remove(&i);
            if let Some(Some(identity)) = self.identities.get_mut(member.who as usize) {
                identity.held -= 1;
            }
        }
        owner == slot as usize + 1
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

    /// Gives every chunk of `share`, held by a member of identity `who`, back to the free
    /// chunks.
    fn release(&mut self, who: u32, share: BTreeSet<u32>) {
        let n = share.len() as u32;
        for i in share {
            self.owner[i as usize] = 0;
            if self.holders[i as usize] == 0 {
                self.free[i as usize / 64] |= bit(i);
            }
        }
        if let Some(Some(identity)) = self.identities.get_mut(who as usize) {
            identity.held -= n;
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
        // Per identity: members, held, gained, eligible, proven.
        let mut tally: HashMap<u32, (u32, u32, u64, u32, u32)> = HashMap::new();
        let mut clocks = 0;
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
            if member.share.len() > member.limit() {
                return Err(format!(
                    "slot {s} holds {} chunks, above its limit {} (gained {})",
                    member.share.len(),
                    member.limit(),
                    member.gained
                ));
            }
            if member.stalled && !member.share.is_empty() {
                return Err(format!("slot {s} is stalled and holds a share"));
            }
            match member.clock {
                Some(at) if !self.clocks.contains(&(at, s as u32)) => {
                    return Err(format!("slot {s}'s clock is not queued"));
                }
                None if !member.share.is_empty() => {
                    return Err(format!("slot {s} holds a share without a clock"));
                }
                _ => {}
            }
            clocks += usize::from(member.clock.is_some());
            let t = tally.entry(member.who).or_default();
            let (eligible, proven) = member.standing();
            t.0 += 1;
            t.1 += member.share.len() as u32;
            t.2 += u64::from(member.gained);
            t.3 += u32::from(eligible);
            t.4 += u32::from(proven);
        }
        if clocks != self.clocks.len() {
            return Err(format!("{clocks} clocks set, {} queued", self.clocks.len()));
        }
        if (complete, leechers) != (self.complete, self.leechers) {
            return Err(format!(
                "counted {complete} complete and {leechers} leechers, kept {} and {}",
                self.complete, self.leechers
            ));
        }
        let mut divisor = 0;
        for (x, identity) in self.identities.iter().enumerate() {
            let Some(identity) = identity else { continue };
            let kept = (
                identity.members,
                identity.held,
                identity.eligible,
                identity.proven,
            );
            let Some((members, held, gained, eligible, proven)) = tally.remove(&(x as u32)) else {
                return Err(format!("identity {x} has no members"));
            };
            if (members, held, eligible, proven) != kept || gained > identity.gained {
                return Err(format!(
                    "identity {x}: kept {kept:?} and {} gained, counted {:?} and {gained}",
                    identity.gained,
                    (members, held, eligible, proven)
                ));
            }
            if self.by_name.get(&identity.name) != Some(&(x as u32)) {
                return Err(format!("identity {x} is not found by its name"));
            }
            if u64::from(identity.held) > identity.cap() {
                return Err(format!(
                    "identity {x} holds {}, above its cap {}",
                    identity.held,
                    identity.cap()
                ));
            }
            divisor += identity.weight();
        }
        if !tally.is_empty() || self.by_name.len() != self.identities.iter().flatten().count() {
            return Err("members of identities that are not kept".into());
        }
        if divisor != self.divisor {
            return Err(format!("divisor {divisor}, kept {}", self.divisor));
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

    /// Chunks in the shares of identity `who`'s members.
    #[cfg(test)]
    pub fn held_by(&self, who: &W) -> u32 {
        let identity = self
            .by_name
            .get(who)
            .and_then(|&x| self.identities[x as usize].as_ref());
        identity.map_or(0, |x| x.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stall bound the tests plan with.
    const STALL: Duration = Duration::from_secs(3);

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

    /// A plan whose members are told apart by a number, and a moment to plan at.
    fn plan(count: u32) -> (OriginPlan<u32>, Instant) {
        (OriginPlan::new(count), Instant::now())
    }

    #[test]
    fn a_lone_leecher_takes_from_the_origin_only_what_it_lacks() {
        let (mut plan, t) = plan(10);
        let a = plan.join(Some(&bits(10, 0..4)), &1, t);
        assert_eq!(plan.share_for(a, t, STALL), [[4, 10]]);
        plan.check().unwrap();
    }

    #[test]
    fn a_complete_peer_means_nothing_from_the_origin() {
        let (mut plan, t) = plan(10);
        let a = plan.join(Some(&Bitfield::new(10)), &1, t);
        let b = plan.join(Some(&Bitfield::new(10)), &2, t);
        assert_eq!(ones(&plan.share_for(b, t, STALL)).len(), 5);
        let seed = plan.join(None, &3, t);
        assert!(plan.share_for(a, t, STALL).is_empty());
        // Once it leaves, shares are handed out again.
        plan.leave(seed);
        assert_eq!(ones(&plan.share_for(a, t, STALL)).len(), 5);
        plan.check().unwrap();
    }

    #[test]
    fn chunks_held_by_any_peer_are_in_no_share() {
        let (mut plan, t) = plan(8);
        let a = plan.join(Some(&Bitfield::new(8)), &1, t);
        let b = plan.join(Some(&bits(8, [0, 1])), &2, t);
        let share_a = ones(&plan.share_for(a, t, STALL));
        assert!(
            !share_a.contains(&0) && !share_a.contains(&1),
            "{share_a:?}"
        );
        assert_eq!(share_a.len(), 3, "half of the six nobody holds");
        // Once a takes a chunk of its share, it leaves the share, and b's never gets it.
        plan.update(a, Some(&bits(8, [share_a[0]])), t);
        plan.check().unwrap();
        let share_b = ones(&plan.share_for(b, t, STALL));
        let share_a2 = ones(&plan.share_for(a, t, STALL));
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
        let (mut plan, t) = plan(12);
        let a = plan.join(Some(&Bitfield::new(12)), &1, t);
        let b = plan.join(Some(&Bitfield::new(12)), &2, t);
        assert_eq!(ones(&plan.share_for(a, t, STALL)).len(), 6);
        assert_eq!(ones(&plan.share_for(b, t, STALL)).len(), 6);
        // A third arrives: the fair share is 4; a and b give up their highest chunks.
        let c = plan.join(Some(&Bitfield::new(12)), &3, t);
        assert_eq!(plan.share_for(a, t, STALL), [[0, 4]]);
        assert_eq!(ones(&plan.share_for(c, t, STALL)).len(), 4);
        // c leaves: nobody's share shrinks; the announcer is topped up to the fair 6.
        plan.leave(c);
        assert_eq!(ones(&plan.share_for(b, t, STALL)).len(), 6);
        assert_eq!(ones(&plan.share_for(a, t, STALL)).len(), 6);
        plan.check().unwrap();
    }

    #[test]
    fn a_departure_frees_its_share_and_uncounts_its_chunks() {
        let (mut plan, t) = plan(8);
        let a = plan.join(Some(&bits(8, [0, 1, 2, 3])), &1, t);
        let b = plan.join(Some(&Bitfield::new(8)), &2, t);
        assert_eq!(plan.share_for(b, t, STALL), [[4, 6]]);
        plan.leave(a);
        plan.check().unwrap();
        // a's chunks are needed again, and b alone is fair for all eight.
        assert_eq!(plan.share_for(b, t, STALL), [[0, 8]]);
        // A slot that left gets nothing, and its number is reused.
        assert!(plan.share_for(a, t, STALL).is_empty());
        let c = plan.join(None, &1, t);
        assert_eq!(c, a);
        plan.check().unwrap();
    }

    #[test]
    fn a_leecher_that_completes_frees_its_share() {
        let (mut plan, t) = plan(8);
        let a = plan.join(Some(&Bitfield::new(8)), &1, t);
        assert_eq!(plan.share_for(a, t, STALL), [[0, 8]]);
        plan.update(a, None, t);
        plan.check().unwrap();
        assert!(plan.share_for(a, t, STALL).is_empty());
        assert_eq!(plan.share_sizes(), [0]);
    }

    #[test]
    fn a_share_starts_small_and_grows_with_what_its_owner_fetches() {
        let (mut plan, t) = plan(1000);
        let a = plan.join(Some(&Bitfield::new(1000)), &1, t);
        let share = ones(&plan.share_for(a, t, STALL));
        assert_eq!(share.len(), FIRST_GRANT as usize, "nothing shown yet");
        // It fetched its eight: it may hold 8 + 2 × 8 now.
        plan.update(a, Some(&bits(1000, share)), t);
        let share = ones(&plan.share_for(a, t, STALL));
        assert_eq!(share.len(), 24);
        assert!(share.iter().all(|&i| i >= 8));
        // Claiming a chunk, dropping it and claiming it again earns nothing more.
        plan.update(a, Some(&bits(1000, (0..8).chain([999]))), t);
        plan.update(a, Some(&bits(1000, 0..8)), t);
        plan.update(a, Some(&bits(1000, (0..8).chain([999]))), t);
        assert_eq!(plan.members[0].as_ref().unwrap().gained, 9);
        // Joining with chunks (a resumed download) proves nothing either.
        let b = plan.join(Some(&bits(1000, 500..900)), &2, t);
        assert_eq!(
            ones(&plan.share_for(b, t, STALL)).len(),
            FIRST_GRANT as usize
        );
        plan.check().unwrap();
    }

    #[test]
    fn a_stalled_share_is_reclaimed_and_given_to_a_newcomer() {
        let (mut plan, t) = plan(64);
        // Two downloaders take a share each; only b fetches from its own.
        let a = plan.join(Some(&Bitfield::new(64)), &1, t);
        let b = plan.join(Some(&Bitfield::new(64)), &2, t);
        let share_a = ones(&plan.share_for(a, t, STALL));
        let share_b = ones(&plan.share_for(b, t, STALL));
        assert_eq!((share_a.len(), share_b.len()), (8, 8));
        let mut b_has = Vec::new();
        for second in 1..=6u32 {
            let at = t + Duration::from_secs(second.into());
            b_has.push(share_b[second as usize]);
            plan.update(b, Some(&bits(64, b_has.iter().copied())), at);
            plan.update(a, Some(&Bitfield::new(64)), at);
            plan.check().unwrap();
        }
        // Past the bound, a newcomer's announce takes a's share back first.
        let later = t + STALL + Duration::from_secs(4);
        let c = plan.join(Some(&Bitfield::new(64)), &3, later);
        let share_c = ones(&plan.share_for(c, later, STALL));
        assert_eq!(share_c, share_a, "the lowest free chunks: a's");
        assert!(plan.share_for(a, later, STALL).is_empty(), "a is stalled");
        assert!(
            !ones(&plan.share_for(b, later, STALL)).is_empty(),
            "b kept fetching its share: it keeps one"
        );
        plan.check().unwrap();
        // Once a gets a chunk (from a peer, say), it may have a share again.
        plan.update(a, Some(&bits(64, [b_has[0]])), later);
        assert!(!plan.share_for(a, later, STALL).is_empty());
        plan.check().unwrap();
    }

    #[test]
    fn fakes_with_empty_haves_never_hold_more_than_the_cap() {
        let (mut plan, t) = plan(1024);
        let fake = 7;
        let (mut fakes, mut newcomer_shares) = (Vec::new(), Vec::new());
        let honest = plan.join(Some(&Bitfield::new(1024)), &1, t);
        let mut honest_have = Vec::new();
        // Every 100 ms for 20 s: five more fake ids from one address, every fake announcing
        // once a second, and an honest downloader fetching two chunks of its share.
        for tick in 0..200u32 {
            let now = t + Duration::from_millis(100 * u64::from(tick));
            for _ in 0..5 {
                fakes.push(plan.join(Some(&Bitfield::new(1024)), &fake, now));
            }
            for (n, &slot) in fakes.iter().enumerate() {
                if n % 10 == tick as usize % 10 {
                    plan.update(slot, Some(&Bitfield::new(1024)), now);
                    plan.share_for(slot, now, STALL);
                }
                assert!(
                    plan.held_by(&fake) <= IDENTITY_FIRST_GRANT,
                    "tick {tick}: fakes hold {}",
                    plan.held_by(&fake)
                );
            }
            let share = ones(&plan.share_for(honest, now, STALL));
            honest_have.extend(share.iter().take(2));
            plan.update(honest, Some(&bits(1024, honest_have.iter().copied())), now);
            // A newcomer from a third address, once a second, gets a share and leaves.
            if tick % 10 == 0 {
                let newcomer = plan.join(Some(&Bitfield::new(1024)), &(1000 + tick), now);
                newcomer_shares.push(ones(&plan.share_for(newcomer, now, STALL)).len());
                plan.leave(newcomer);
            }
        }
        plan.check().unwrap();
        assert!(
            newcomer_shares.iter().all(|&n| n > 0),
            "{newcomer_shares:?}"
        );
        assert_eq!(plan.held_by(&fake), 0, "the fakes' first grant went back");
        assert!(
            honest_have.len() >= 300,
            "{} chunks fetched",
            honest_have.len()
        );
    }

    /// An honest crowd of `crowd` downloaders of `count` chunks, from `identities`
    /// identities, in rounds: each announces, fetches its share from the origin, then gets
    /// every chunk the others hold from them. Returns the chunks the origin sent and the
    /// round from which every chunk nobody held was in exactly one share.
    fn honest_crowd(count: u32, crowd: u32, identities: u32) -> (u32, u32) {
        let (mut plan, t) = plan(count);
        let slots: Vec<Slot> = (0..crowd)
            .map(|n| plan.join(Some(&Bitfield::new(count)), &(n % identities), t))
            .collect();
        let (mut held, mut from_origin, mut covered_from) = (BTreeSet::new(), 0, None);
        for round in 1..=20u32 {
            let now = t + Duration::from_millis(500 * u64::from(round));
            let shares: Vec<Vec<u32>> = slots
                .iter()
                .map(|&s| ones(&plan.share_for(s, now, STALL)))
                .collect();
            let mut union: Vec<u32> = shares.concat();
            let total = union.len();
            union.sort();
            union.dedup();
            assert_eq!(union.len(), total, "disjoint");
            if covered_from.is_none() && total == (count as usize - held.len()) {
                covered_from = Some(round);
            }
            from_origin += total as u32;
            held.extend(union);
            for &s in &slots {
                plan.update(s, Some(&bits(count, held.iter().copied())), now);
            }
            plan.check().unwrap();
            if held.len() == count as usize {
                break;
            }
        }
        assert_eq!(held.len(), count as usize, "the crowd finished");
        (from_origin, covered_from.unwrap_or(u32::MAX))
    }

    #[test]
    fn an_honest_crowd_takes_each_chunk_once_and_is_covered_within_a_few_rounds() {
        for count in [100, 1024, 16_384] {
            for crowd in [1, 2, 4, 8, 16] {
                for identities in [1, crowd] {
                    let (sent, covered) = honest_crowd(count, crowd, identities);
                    let what = format!("{crowd} peers of {identities} identities, {count} chunks");
                    assert_eq!(sent, count, "{what}: each chunk once from the origin");
                    // Shares start small and grow with what each peer fetched: a crowd of
                    // four or more covers a 1 024-chunk asset from its third announce (1 s
                    // in); anything is covered by the eighth, for a lone peer of 16 384
                    // chunks (it then has the origin to itself anyway).
                    let rounds = if crowd >= 4 && count <= 1024 { 3 } else { 8 };
                    assert!(
                        covered <= rounds,
                        "{what}: every chunk in a share from round {covered}"
                    );
                }
            }
        }
    }

    #[test]
    fn fresh_ids_of_one_identity_do_not_shrink_everyone_s_share() {
        let (mut plan, t) = plan(600);
        let honest: Vec<Slot> = (0..3)
            .map(|n| plan.join(Some(&Bitfield::new(600)), &n, t))
            .collect();
        // The honest three prove themselves.
        for (n, &s) in honest.iter().enumerate() {
            let share = ones(&plan.share_for(s, t, STALL));
            plan.update(s, Some(&bits(600, share.into_iter().take(1))), t);
            assert_eq!(plan.members[n].as_ref().unwrap().gained, 1);
        }
        for n in 0..500 {
            plan.join(Some(&Bitfield::new(600)), &99, t + Duration::from_millis(n));
        }
        // The chunks are divided by four: three proven, one for all the fakes.
        assert_eq!(plan.divisor, 4);
        let later = t + Duration::from_secs(1);
        let share = ones(&plan.share_for(honest[0], later, STALL));
        assert_eq!(
            share.len(),
            10,
            "8 + 2 × 1, well under the fair {}",
            597 / 4
        );
        plan.check().unwrap();
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
            /// A member of an identity joins holding these chunks (`None`: all).
            Join(u32, Option<Vec<u32>>),
            /// A member now also holds these chunks, and loses those.
            Update(usize, Vec<u32>, Vec<u32>),
            /// A member fetches the first chunks of its latest share.
            Fetch(usize, usize),
            /// A member completes.
            Complete(usize),
            /// A member leaves.
            Leave(usize),
            /// A member announces and is handed its share.
            Share(usize),
            /// Time passes, in milliseconds.
            Wait(u64),
        }

        const COUNT: u32 = 150;

        fn step() -> impl Strategy<Value = Step> {
            let chunks = || vec(0..COUNT + 5, 0..40);
            prop_oneof![
                2 => (0..3u32, proptest::option::weighted(0.9, chunks()))
                    .prop_map(|(who, have)| Step::Join(who, have)),
                2 => (any::<usize>(), chunks(), vec(0..COUNT, 0..5))
                    .prop_map(|(m, add, drop)| Step::Update(m, add, drop)),
                2 => (any::<usize>(), 0..10usize).prop_map(|(m, n)| Step::Fetch(m, n)),
                1 => any::<usize>().prop_map(Step::Complete),
                1 => any::<usize>().prop_map(Step::Leave),
                5 => any::<usize>().prop_map(Step::Share),
                2 => (0..2000u64).prop_map(Step::Wait),
            ]
        }

        /// A member present: its slot, its identity, what it holds (`None`: complete), and
        /// its latest share.
        type Present = (Slot, u32, Option<Bitfield>, Vec<u32>);

        proptest! {
            #[test]
            fn the_invariants_hold_over_any_announce_sequence(steps in vec(step(), 1..80)) {
                let mut plan: OriginPlan<u32> = OriginPlan::new(COUNT);
                let mut now = Instant::now();
                let mut members: Vec<Present> = Vec::new();
                for step in steps {
                    match step {
                        Step::Join(who, have) => {
                            let have = have.map(|c| bits(COUNT, c));
                            let slot = plan.join(have.as_ref(), &who, now);
                            members.push((slot, who, have, Vec::new()));
                        }
                        Step::Update(m, add, drop) if !members.is_empty() => {
                            let m = m % members.len();
                            let (slot, _, have, _) = &mut members[m];
                            if let Some(have) = have {
                                add.iter().for_each(|&i| have.set(i));
                                drop.iter().for_each(|&i| have.unset(i));
                            }
                            plan.update(*slot, have.as_ref(), now);
                        }
                        Step::Fetch(m, n) if !members.is_empty() => {
                            let m = m % members.len();
                            let (slot, _, have, share) = &mut members[m];
                            if let Some(have) = have {
                                share.iter().take(n).for_each(|&i| have.set(i));
                            }
                            plan.update(*slot, have.as_ref(), now);
                        }
                        Step::Complete(m) if !members.is_empty() => {
                            let m = m % members.len();
                            let (slot, _, have, _) = &mut members[m];
                            *have = None;
                            plan.update(*slot, None, now);
                        }
                        Step::Leave(m) if !members.is_empty() => {
                            let (slot, ..) = members.remove(m % members.len());
                            plan.leave(slot);
                        }
                        Step::Share(m) if !members.is_empty() => {
                            let m = m % members.len();
                            let planned = plan.planned_for;
                            let before = plan.share_sizes();
                            let share = ones(&plan.share_for(members[m].0, now, STALL));
                            members[m].3 = share.clone();
                            let (slot, who, have, _) = &members[m];
                            let complete = members.iter().any(|(_, _, h, _)| h.is_none());
                            if complete || have.is_none() {
                                prop_assert!(share.is_empty(), "a complete member is present");
                            }
                            for &i in &share {
                                prop_assert!(
                                    members.iter().all(|(_, _, h, _)| h.as_ref().is_some_and(|h| !h.get(i))),
                                    "chunk {} of the share is held by a peer", i
                                );
                            }
                            let fair = plan.missing.div_ceil(plan.planned_for.max(1)) as usize;
                            if plan.planned_for > planned {
                                prop_assert!(
                                    plan.share_sizes().iter().all(|&n| n <= fair),
                                    "shares {:?} above the fair {} after arrivals", plan.share_sizes(), fair
                                );
                            }
                            let member = plan.members[slot.0 as usize].as_ref().unwrap();
                            let identity = plan.identities[member.who as usize].as_ref().unwrap();
                            let grew = share.len() > before[slot.0 as usize];
                            if grew {
                                prop_assert!(u64::from(identity.held) <= identity.cap(), "identity {} above its cap", who);
                            }
                            let short = share.len() < fair.min(member.limit());
                            let room = u64::from(identity.held) < identity.cap();
                            if !share.is_empty() && short && room {
                                prop_assert_eq!(plan.free_count(), 0, "topped up short with chunks free");
                            }
                        }
                        Step::Wait(ms) => now += Duration::from_millis(ms),
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
