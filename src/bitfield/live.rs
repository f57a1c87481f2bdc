//! What a download in this process holds so far, shared by the scheduler that verifies
//! chunks and the peer server in the same process, which serves each chunk the moment it is
//! verified (before it is recorded on disk) and pushes it to its clients (`Gained` frames,
//! `PROTOCOL.md` section 5.13).
//!
//! Besides the bitfield, a [`Live`] keeps the order in which chunks were gained: a session
//! holds a cursor into that list, so "what is new since I last told my client" costs the
//! new chunks, not a scan of the bitfield. The list grows to one entry per chunk at most
//! (4 bytes each: 4 MiB for the largest asset of 2^20 chunks, an eighth of its manifest's
//! hashes). Each gain wakes the sessions that wait for one ([`Live::watch`]).

use std::io;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};

use super::Bitfield;
use crate::sync::{LockExt, RwLockExt};
use crate::wake::{self, Wait, Waker};

/// A download's live holdings, shared (see the module docs).
pub type LiveHave = Arc<Live>;

/// The holdings, the order they were gained in, and who waits for the next gain.
#[derive(Debug)]
pub struct Live {
    bits: RwLock<Bitfield>,
    /// Every chunk gained since this was made, in order. Appended while `bits` is held for
    /// writing, so that a copy of `bits` and the length of this list agree.
    gained: Mutex<Vec<u32>>,
    /// The sessions to wake when a chunk is gained; a waker whose wait is gone is dropped.
    watchers: Mutex<Vec<Waker>>,
}

impl Live {
    /// Live holdings starting from `bits` (what the store held when the download began).
    pub fn new(bits: Bitfield) -> LiveHave {
        Arc::new(Live {
            bits: RwLock::new(bits),
            gained: Mutex::new(Vec::new()),
            watchers: Mutex::new(Vec::new()),
        })
    }

    /// The holdings, read-locked: hold the guard briefly, the scheduler writes here.
    pub fn read_now(&self) -> RwLockReadGuard<'_, Bitfield> {
        self.bits.read_now()
    }

    /// Adds chunk `index` (ignored when out of range or held already) and wakes the
    /// watchers; returns whether it was new.
    pub fn insert(&self, index: u32) -> bool {
        {
            let mut bits = self.bits.write_now();
            if index >= bits.len() || bits.get(index) {
                return false;
            }
            bits.set(index);
            self.gained.locked().push(index);
        }
        let mut watchers = self.watchers.locked();
        watchers.retain(Waker::is_waited);
        for waker in watchers.iter() {
            waker.wake();
        }
        true
    }

    /// A copy of the holdings, and the cursor of the gains it includes (for
    /// [`Live::gained_since`]).
    pub fn snapshot(&self) -> (Bitfield, usize) {
        let bits = self.bits.read_now();
        let cursor = self.gained.locked().len();
        (bits.clone(), cursor)
    }

    /// Up to `max` chunks gained after `cursor`, oldest first, and the cursor after them.
    pub fn gained_since(&self, cursor: usize, max: usize) -> (Vec<u32>, usize) {
        let gained = self.gained.locked();
        let from = cursor.min(gained.len());
        let to = from.saturating_add(max).min(gained.len());
        (gained[from..to].to_vec(), to)
    }

    /// A wait that becomes readable when a chunk is gained, once armed ([`Wait::arm`]).
    pub fn watch(&self) -> io::Result<Wait> {
        let (waker, wait) = wake::pair()?;
        self.watchers.locked().push(waker);
        Ok(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::time::Duration;

    #[test]
    fn gains_are_listed_once_in_order_after_a_snapshot() {
        let mut start = Bitfield::new(8);
        start.set(1);
        let live = Live::new(start);
        assert!(!live.insert(1), "held from the start");
        assert!(!live.insert(8), "out of range");
        assert!(live.insert(5));
        let (bits, cursor) = live.snapshot();
        assert_eq!(bits.ones().collect::<Vec<_>>(), vec![1, 5]);
        assert_eq!(cursor, 1);
        assert!(live.insert(0) && live.insert(7) && live.insert(3));
        assert!(!live.insert(7));
        assert_eq!(live.gained_since(cursor, 2), (vec![0, 7], 3));
        assert_eq!(live.gained_since(3, 2), (vec![3], 4));
        assert_eq!(live.gained_since(4, 2), (vec![], 4));
        assert_eq!(
            live.gained_since(99, 2),
            (vec![], 4),
            "a cursor past the end"
        );
        assert_eq!(live.read_now().count(), 5);
    }

    #[test]
    fn a_gain_wakes_an_armed_watcher_and_a_gone_one_is_forgotten() {
        let live = Live::new(Bitfield::new(4));
        let wait = live.watch().unwrap();
        let gone = live.watch().unwrap();
        drop(gone);
        let (socket, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        wait.arm();
        live.insert(2);
        let woken = wait.poll(socket.as_fd(), Duration::from_secs(10)).unwrap();
        assert!(woken.woken && !woken.socket);
        assert_eq!(
            live.watchers.locked().len(),
            1,
            "the dropped watch is pruned"
        );
    }
}
