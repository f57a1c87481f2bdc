//! The session slots ("seats") of the peer server: how many sessions each address holds
//! (an IPv6 /64 counts as one, see [`client_key`]), how long each has been idle, and, when
//! every seat is taken, which idle session yields its seat to a newcomer whose `Hello`
//! arrived. The choice is pure ([`longest_idle`]); the table only applies it.

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ratelimit::client_key;
use crate::sync::LockExt;

/// A session that has asked for no chunk for this long, and is waiting for its client's
/// next frame, yields its seat to a newcomer when every seat is taken. A client
/// downloading from this server keeps two to four requests in flight, so it is never idle
/// for even one chunk's time (milliseconds); a second without a request means it gets its
/// chunks elsewhere, is done, or is holding the seat for nothing.
pub(super) const YIELD_IDLE: Duration = Duration::from_secs(1);
/// A session that has not asked for a single chunk yields after this long since its
/// `Welcome`: a client that came to download asks for its first chunks one round trip
/// after its have request, well within a quarter second, while connections that only sit
/// there would otherwise renew their hold on the seats by reconnecting once a second.
pub(super) const YIELD_FRESH: Duration = Duration::from_millis(250);

/// Why [`Seats::enter`] turned a newcomer away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum NoSeat {
    /// Its address holds `open` sessions already, the cap.
    Address { key: IpAddr, open: usize },
    /// Every seat is taken by a session busy or idle for less than [`YIELD_IDLE`], or
    /// `spare` sessions are yielding already.
    Full,
}

/// One session as [`longest_idle`] sees it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Occupant {
    /// Whether it waits for its client's next frame, with nothing to answer.
    pub(super) waiting: bool,
    /// When it was last asked for a chunk (or sent `Welcome`).
    pub(super) last_request: Instant,
    /// Whether it was ever asked for a chunk.
    pub(super) asked: bool,
    /// Whether it was told to yield already.
    pub(super) yielding: bool,
}

/// The session that yields to a newcomer at `now`: of those waiting, not yielding, and idle
/// for at least [`YIELD_IDLE`] ([`YIELD_FRESH`] if never asked for a chunk), the one idle
/// longest, those never asked first.
pub(super) fn longest_idle<K: Copy>(
    occupants: impl Iterator<Item = (K, Occupant)>,
    now: Instant,
) -> Option<K> {
    occupants
        .filter(|(_, o)| {
            let grace = if o.asked { YIELD_IDLE } else { YIELD_FRESH };
            o.waiting && !o.yielding && now.saturating_duration_since(o.last_request) >= grace
        })
        .min_by_key(|(_, o)| (o.asked, o.last_request))
        .map(|(k, _)| k)
}

struct Seat {
    key: IpAddr,
    occupant: Occupant,
    /// A clone of the session's socket: shut down to wake it when it must yield or the
    /// server stops.
    stream: Option<TcpStream>,
}

#[derive(Default)]
struct Table {
    seats: HashMap<u64, Seat>,
    per_key: HashMap<IpAddr, usize>,
    /// Seats held by sessions not yielding.
    taken: usize,
    yielding: usize,
    next_id: u64,
}

/// The seats of one server.
#[derive(Clone)]
pub(super) struct Seats {
    table: Arc<Mutex<Table>>,
    total: usize,
    per_addr: usize,
    /// Sessions that may be yielding at once: a yielding session still holds its thread
    /// until its last frame is out, so the worker pool has this many threads beyond the
    /// seats.
    spare: usize,
}

/// A seat held by one session; given back when dropped.
pub(super) struct Held {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Seats {
    /// `total` seats, `per_addr` of them per address, `spare` yields under way at once.
    pub(super) fn new(total: usize, per_addr: usize, spare: usize) -> Seats {
        Seats {
            table: Arc::default(),
            total: total.max(1),
            per_addr: per_addr.max(1),
            spare,
        }
    }

    /// Seats a newcomer from `ip` at `now`, when every seat is taken by making the longest
    /// idle session yield (its read side is shut down, which wakes it to say "busy").
    pub(super) fn enter(
        &self,
        ip: IpAddr,
        stream: Option<&TcpStream>,
        now: Instant,
    ) -> Result<Held, NoSeat> {
        let key = client_key(ip);
        let mut table = self.table.locked();
        let open = table.per_key.get(&key).copied().unwrap_or(0);
        if open >= self.per_addr {
            return Err(NoSeat::Address { key, open });
        }
        if table.taken >= self.total {
            if table.yielding >= self.spare {
                return Err(NoSeat::Full);
            }
            let occupants = table.seats.iter().map(|(id, s)| (*id, s.occupant));
            let Some(victim) = longest_idle(occupants, now) else {
                return Err(NoSeat::Full);
            };
            let seat = table.seats.get_mut(&victim).expect("a chosen seat");
            seat.occupant.yielding = true;
            if let Some(stream) = &seat.stream {
                let _ = stream.shutdown(Shutdown::Read);
            }
            let victim_key = seat.key;
            table.taken -= 1;
            table.yielding += 1;
            uncount(&mut table.per_key, victim_key);
        }
        table.taken += 1;
        *table.per_key.entry(key).or_insert(0) += 1;
        table.next_id += 1;
        let id = table.next_id;
        let occupant = Occupant {
            waiting: false,
            last_request: now,
            asked: false,
            yielding: false,
        };
        let stream = stream.and_then(|s| s.try_clone().ok());
        table.seats.insert(
            id,
            Seat {
                key,
                occupant,
                stream,
            },
        );
        Ok(Held {
            table: Arc::clone(&self.table),
            id,
        })
    }

    /// Sessions seated now, yielding ones included.
    pub(super) fn open(&self) -> usize {
        self.table.locked().seats.len()
    }

    /// Shuts down every session's socket, so that sessions blocked reading return.
    pub(super) fn close_all(&self) {
        for seat in self.table.locked().seats.values() {
            if let Some(stream) = &seat.stream {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
    }
}

fn uncount(per_key: &mut HashMap<IpAddr, usize>, key: IpAddr) {
    if let Some(count) = per_key.get_mut(&key) {
        *count -= 1;
        if *count == 0 {
            per_key.remove(&key);
        }
    }
}

impl Held {
    fn with(&self, f: impl FnOnce(&mut Occupant)) {
        if let Some(seat) = self.table.locked().seats.get_mut(&self.id) {
            f(&mut seat.occupant);
        }
    }

    /// The session waits for its client's next frame (`true`), or has one to answer.
    pub(super) fn waiting(&self, waiting: bool) {
        self.with(|o| o.waiting = waiting);
    }

    /// The session started at `now` (its `Welcome` went out).
    pub(super) fn welcomed(&self, now: Instant) {
        self.with(|o| o.last_request = now);
    }

    /// The client asked for a chunk at `now`.
    pub(super) fn requested(&self, now: Instant) {
        self.with(|o| {
            o.last_request = now;
            o.asked = true;
        });
    }

    /// Whether the session was told to yield its seat.
    pub(super) fn yielding(&self) -> bool {
        let table = self.table.locked();
        table
            .seats
            .get(&self.id)
            .is_some_and(|s| s.occupant.yielding)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut table = self.table.locked();
        let Some(seat) = table.seats.remove(&self.id) else {
            return;
        };
        if seat.occupant.yielding {
            table.yielding -= 1;
        } else {
            table.taken -= 1;
            uncount(&mut table.per_key, seat.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_longest_idle_waiting_session_yields_and_busy_ones_never() {
        let now = Instant::now() + Duration::from_secs(100);
        let idle = |secs: u64, waiting: bool| Occupant {
            waiting,
            last_request: now - Duration::from_secs(secs),
            asked: true,
            yielding: false,
        };
        let seats = [
            (1, idle(5, false)), // idle long, but answering a request
            (2, idle(3, true)),
            (3, idle(4, true)),
            (4, idle(0, true)), // just asked
        ];
        assert_eq!(longest_idle(seats.into_iter(), now), Some(3));
        let young = [
            (1, idle(0, true)),
            (
                2,
                Occupant {
                    yielding: true,
                    ..idle(9, true)
                },
            ),
        ];
        assert_eq!(longest_idle(young.into_iter(), now), None);
        // A session never asked for a chunk goes first, after a quarter second.
        let fresh = |ms: u64| Occupant {
            asked: false,
            last_request: now - Duration::from_millis(ms),
            ..idle(0, true)
        };
        let mixed = [(1, idle(9, true)), (2, fresh(300)), (3, fresh(100))];
        assert_eq!(longest_idle(mixed.into_iter(), now), Some(2));
        assert_eq!(longest_idle([(3, fresh(100))].into_iter(), now), None);
    }

    #[test]
    fn a_full_house_seats_a_newcomer_in_an_idle_seat_and_caps_each_64() {
        let seats = Seats::new(2, 2, 1);
        let t0 = Instant::now();
        let a = seats.enter(ip("2001:db8::1"), None, t0).unwrap();
        let b = seats.enter(ip("2001:db8::2"), None, t0).unwrap();
        assert_eq!(
            seats.enter(ip("2001:db8::3"), None, t0).err(),
            Some(NoSeat::Address {
                key: ip("2001:db8::"),
                open: 2
            }),
            "one /64, one address"
        );
        let later = t0 + YIELD_IDLE;
        assert_eq!(
            seats.enter(ip("10.0.0.1"), None, later).err(),
            Some(NoSeat::Full),
            "nobody waits for a request"
        );
        a.waiting(true);
        a.requested(t0);
        b.waiting(true);
        b.requested(t0 + Duration::from_millis(10));
        let c = seats.enter(ip("10.0.0.1"), None, later + Duration::from_millis(20));
        let c = c.expect("the idle seat yields");
        assert!(a.yielding() && !b.yielding() && !c.yielding());
        assert_eq!(
            seats.open(),
            3,
            "the yielding session holds its thread a moment"
        );
        assert_eq!(
            seats.enter(ip("10.0.0.2"), None, later + YIELD_IDLE).err(),
            Some(NoSeat::Full),
            "one yield at a time (spare 1)"
        );
        drop(a);
        assert_eq!(seats.open(), 2);
        // The /64 gave one seat up: it may take one again, by yielding b.
        let d = seats.enter(ip("2001:db8::4"), None, later + YIELD_IDLE * 2);
        assert!(d.is_ok() && b.yielding());
    }
}
