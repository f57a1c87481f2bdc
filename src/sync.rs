//! Locks that survive a panicked holder.
//!
//! Every shared state in the crate (counters, have-bitmaps, complaint lists) stays
//! consistent between statements, so a thread that panicked while holding a lock leaves
//! nothing half-written: the next holder takes the value as it is instead of cascading the
//! panic through every thread of a long-running server.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// `lock()` on a [`Mutex`] that ignores poisoning (see the module docs).
pub trait LockExt<T> {
    /// Locks, taking the value as it is if a holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `read()`/`write()` on a [`RwLock`] that ignore poisoning (see the module docs).
pub trait RwLockExt<T> {
    /// Takes the read lock, whatever a panicked holder left.
    fn read_now(&self) -> RwLockReadGuard<'_, T>;
    /// Takes the write lock, whatever a panicked holder left.
    fn write_now(&self) -> RwLockWriteGuard<'_, T>;
}

impl<T> RwLockExt<T> for RwLock<T> {
    fn read_now(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|e| e.into_inner())
    }
    fn write_now(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_panicked_holder_does_not_poison_the_next() {
        let m = Arc::new(Mutex::new(1));
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.locked();
            panic!("holder dies");
        })
        .join();
        *m.locked() += 1;
        assert_eq!(*m.locked(), 2);
    }
}
