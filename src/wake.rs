//! Wake-ups a blocking thread can wait for together with its socket: a [`Waker`] that
//! another thread calls, and the [`Wait`] whose descriptor becomes readable when it does, so
//! that one `poll` covers "the peer sent a frame" and "there is news for the peer" (a
//! server session's new chunks to push, a client worker's new jobs) without waking on a
//! timer to look.
//!
//! A wake-up is a byte on a Unix socket pair. The waiting side arms itself before it looks
//! for news and sleeps; a wake sends a byte only to an armed side, so a thread that is busy
//! costs its wakers nothing, and a waiting one costs one byte per sleep however many wakes
//! came. Dropping the [`Waker`] makes the [`Wait`] readable for good (end of file), which is
//! how a waiting thread learns that nobody will wake it any more.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::io::Errno;
use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

/// The side that wakes (`Clone`: every clone wakes the same [`Wait`]).
#[derive(Clone, Debug)]
pub struct Waker {
    armed: Arc<AtomicBool>,
    tx: Arc<OwnedFd>,
}

/// The side that waits: readable once woken, or once every [`Waker`] is gone.
#[derive(Debug)]
pub struct Wait {
    armed: Arc<AtomicBool>,
    rx: OwnedFd,
}

/// What [`Wait::poll`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Woken {
    /// The other descriptor (a socket) is readable, or closed, or in error.
    pub socket: bool,
    /// A waker called, or every waker is gone ([`Wait::clear`] tells which).
    pub woken: bool,
}

/// A connected waker and wait.
pub fn pair() -> io::Result<(Waker, Wait)> {
    let (tx, rx) = rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
        None,
    )?;
    let armed = Arc::new(AtomicBool::new(false));
    Ok((
        Waker {
            armed: Arc::clone(&armed),
            tx: Arc::new(tx),
        },
        Wait { armed, rx },
    ))
}

impl Waker {
    /// Wakes the waiting side if it is armed (asleep, or about to be). Never blocks: a full
    /// socket buffer means it is readable already.
    pub fn wake(&self) {
        if self.armed.swap(false, Ordering::AcqRel) {
            // Errors (the wait is gone) need no answer: nobody is left to wake.
            let _ = rustix::net::send(&*self.tx, &[1], SendFlags::DONTWAIT | SendFlags::NOSIGNAL);
        }
    }

    /// Whether the [`Wait`] still exists (nobody to wake otherwise).
    pub fn is_waited(&self) -> bool {
        // Every waker holds both; the wait holds `armed` alone.
        Arc::strong_count(&self.armed) > Arc::strong_count(&self.tx)
    }
}

impl Wait {
    /// Arms the wait: wakes from now on send a byte. Look for news after arming and before
    /// [`Wait::poll`], so that news arriving in between is not slept through.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::Release);
    }

    /// Takes the wake-up bytes out; returns false when every [`Waker`] is gone.
    pub fn clear(&self) -> io::Result<bool> {
        let mut bytes = [0u8; 64];
        loop {
            match rustix::net::recv(&self.rx, &mut bytes[..], RecvFlags::DONTWAIT) {
                Ok((0, _)) => return Ok(false),
                Ok(_) => {}
                Err(e) if e == Errno::AGAIN => return Ok(true),
                Err(e) if e == Errno::INTR => {}
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Waits at most `timeout` until `socket` is readable (or closed) or a waker calls.
    /// Arm first ([`Wait::arm`]); a wake-up stays readable until [`Wait::clear`].
    pub fn poll(&self, socket: BorrowedFd<'_>, timeout: Duration) -> io::Result<Woken> {
        let ready = PollFlags::IN | PollFlags::HUP | PollFlags::ERR;
        let mut fds = [
            PollFd::from_borrowed_fd(socket, PollFlags::IN),
            PollFd::from_borrowed_fd(self.rx.as_fd(), PollFlags::IN),
        ];
        let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: i64::MAX,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut fds, Some(&timeout)) {
            Ok(_) => {}
            Err(e) if e == Errno::INTR => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Woken {
            socket: fds[0].revents().intersects(ready),
            woken: fds[1].revents().intersects(ready),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::Instant;

    fn sockets() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener.accept().unwrap().0, client)
    }

    #[test]
    fn a_wake_reaches_an_armed_wait_only() {
        let (server, _client) = sockets();
        let (waker, wait) = pair().unwrap();
        waker.wake();
        let quiet = wait
            .poll(server.as_fd(), Duration::from_millis(20))
            .unwrap();
        assert_eq!(
            quiet,
            Woken {
                socket: false,
                woken: false
            },
            "not armed: no byte"
        );
        wait.arm();
        let other = waker.clone();
        other.wake();
        waker.wake();
        let woken = wait.poll(server.as_fd(), Duration::from_secs(10)).unwrap();
        assert_eq!(
            woken,
            Woken {
                socket: false,
                woken: true
            }
        );
        assert!(wait.clear().unwrap(), "wakers remain");
        assert!(waker.is_waited());
        let quiet = wait
            .poll(server.as_fd(), Duration::from_millis(20))
            .unwrap();
        assert!(!quiet.woken, "one byte per sleep, and it was taken");
    }

    #[test]
    fn a_thread_asleep_on_its_socket_is_woken_from_another() {
        let (server, mut client) = sockets();
        let (waker, wait) = pair().unwrap();
        wait.arm();
        let started = Instant::now();
        let wake = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            waker.wake();
            waker
        });
        let woken = wait.poll(server.as_fd(), Duration::from_secs(10)).unwrap();
        assert!(woken.woken && !woken.socket);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "woken, not timed out"
        );
        let waker = wake.join().unwrap();
        wait.clear().unwrap();
        client.write_all(&[1]).unwrap();
        let woken = wait.poll(server.as_fd(), Duration::from_secs(10)).unwrap();
        assert_eq!(
            woken,
            Woken {
                socket: true,
                woken: false
            }
        );
        drop(waker);
        let woken = wait.poll(server.as_fd(), Duration::from_secs(10)).unwrap();
        assert!(woken.woken, "the last waker gone wakes for good");
        assert!(!wait.clear().unwrap());
    }

    #[test]
    fn a_waker_knows_when_its_wait_is_gone() {
        let (waker, wait) = pair().unwrap();
        let clone = waker.clone();
        assert!(waker.is_waited() && clone.is_waited());
        drop(wait);
        assert!(!waker.is_waited());
        waker.arm_for_test();
        waker.wake();
    }

    impl Waker {
        fn arm_for_test(&self) {
            self.armed.store(true, Ordering::Release);
        }
    }
}
