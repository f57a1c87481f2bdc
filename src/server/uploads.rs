//! Sending chunks: the upload slots (how many chunks go out at once over all connections),
//! the process's upload rate cap, the `sendfile` loop that gives its slot up when a
//! client reads slowly, and the gauge of what the uploads did (for a `get` that keeps a
//! headroom below its uplink, `client::headroom`).

use std::fs::File;
use std::io;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::bounded;

use super::WRITE_TIMEOUT;
use crate::net::is_timeout;
use crate::ratelimit::{self, RateLimiter};
use crate::wire;

/// A send that has taken this long gives its slot up and finishes without one, so that a
/// client reading slowly (or not at all) cannot keep the others waiting: a 256 KiB chunk
/// takes 10 ms at 25 MiB/s.
const SLOT_HOLD: Duration = Duration::from_millis(100);
/// Bytes per `sendfile` call, so that a send can give its slot up between calls.
const SEND_PIECE: usize = 64 << 10;
/// Unsent bytes an upload socket of a downloading `get` holds at most (`TCP_NOTSENT_LOWAT`):
/// half a 256 KiB chunk. Without it the kernel's send buffer (up to 4 MiB, `tcp_wmem`)
/// takes every chunk asked for at once and a write never waits, so the server cannot see
/// that its uplink holds its uploads back (`client::headroom` learns the uplink from that
/// wait): on issue 14's harness a full 200 Mbit/s uplink showed 0.0-0.5 chunks waiting.
/// With it, a chunk's write lasts until half of it has gone out; 128 KiB is 5 ms of a
/// 25 MB/s connection, more than a loaded box takes to wake a writer.
const NOTSENT_LOWAT: u32 = 128 << 10;

/// What every chunk sent waits for: an upload slot, then its bytes under the rate cap and
/// under the rate its embedding client yields to (see [`super::ServerConfig::yield_to`]).
pub(super) struct Uploads {
    slots: Slots,
    limiter: Option<RateLimiter>,
    yielding: Option<Arc<RateLimiter>>,
    pub(super) gauge: Arc<UploadGauge>,
}

/// What the uploads of a server did, counted since it started: bytes written to sockets,
/// and the time chunks spent between asking for a slot and their last byte written, and
/// asleep in a rate limiter (summed over the chunks: 2 s over 1 s is two chunks at once).
/// Its owner reads it to tell an uplink that holds the uploads back from a demand that does
/// not fill it ([`crate::client`]'s headroom).
#[derive(Debug, Default)]
pub struct UploadGauge {
    sent: AtomicU64,
    busy_ns: AtomicU64,
    limited_ns: AtomicU64,
}

/// An [`UploadGauge`]'s counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GaugeReading {
    /// Bytes written to the sockets.
    pub sent: u64,
    /// Time chunks spent waiting for a slot or the rate, or being written.
    pub busy: Duration,
    /// Time chunks spent asleep in a rate limiter.
    pub limited: Duration,
}

impl UploadGauge {
    /// The counters now.
    pub fn read(&self) -> GaugeReading {
        GaugeReading {
            sent: self.sent.load(Ordering::Relaxed),
            busy: Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed)),
            limited: Duration::from_nanos(self.limited_ns.load(Ordering::Relaxed)),
        }
    }

    fn add(counter: &AtomicU64, time: Duration) {
        counter.fetch_add(time.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A chunk asked for its slot at `asked` and is sent now (or given back).
    pub(super) fn done(&self, asked: Instant) {
        Self::add(&self.busy_ns, asked.elapsed());
    }
}

impl Uploads {
    /// `slots` chunks at once, at most `rate` bytes a second over all of them, and at most
    /// what `yielding` lets through at the time.
    pub(super) fn new(
        slots: usize,
        rate: Option<u64>,
        yielding: Option<Arc<RateLimiter>>,
    ) -> Uploads {
        Uploads {
            slots: Slots::new(slots),
            limiter: rate.map(RateLimiter::new),
            yielding,
            gauge: Arc::default(),
        }
    }

    /// Readies a connection's socket for uploads: with a limit its owner adapts (a
    /// downloading `get`), its unsent bytes are kept to [`NOTSENT_LOWAT`], so that the gauge
    /// sees the time the network holds the uploads back.
    pub(super) fn prepare(&self, stream: &TcpStream) {
        if self.yielding.is_none() {
            return;
        }
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(NOTSENT_LOWAT) {
            log::debug!("serving: TCP_NOTSENT_LOWAT not set ({e}); the headroom learns less");
        }
        #[cfg(not(any(target_os = "linux", target_os = "android")))]
        let _ = stream;
    }

    /// Waits for a slot and for `len` bytes of the rate; the time asleep in the rate goes
    /// to the gauge.
    pub(super) fn take(&self, len: u64) -> Slot<'_> {
        let slot = self.slots.take();
        let asleep = Instant::now();
        ratelimit::take(self.limiter.as_ref(), len);
        ratelimit::take(self.yielding.as_deref(), len);
        UploadGauge::add(&self.gauge.limited_ns, asleep.elapsed());
        slot
    }

    /// Gives back a slot and its bytes, for a chunk cancelled before it was sent.
    pub(super) fn give_back(&self, slot: Slot<'_>, len: u64) {
        drop(slot);
        for limiter in self.limiter.iter().chain(self.yielding.as_deref()) {
            limiter.give_back(len);
        }
    }
}

/// A counting semaphore: [`Slots::take`] waits for one of a fixed number of slots, which
/// goes back when the returned guard is dropped.
pub(super) struct Slots {
    give: crossbeam_channel::Sender<()>,
    take: crossbeam_channel::Receiver<()>,
}

impl Slots {
    pub(super) fn new(count: usize) -> Slots {
        let count = count.max(1);
        let (give, take) = bounded(count);
        for _ in 0..count {
            give.send(()).expect("room for every slot");
        }
        Slots { give, take }
    }

    pub(super) fn take(&self) -> Slot<'_> {
        self.take
            .recv()
            .expect("the sender lives as long as the receiver");
        Slot(self)
    }
}

/// A taken upload slot.
pub(super) struct Slot<'a>(&'a Slots);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let _ = self.0.give.send(());
    }
}

/// What a chunk frame carries: a range of a content file (sent with `sendfile`), or bytes
/// already read and checked (a chunk of a directory seeded in place).
pub(super) enum Body<'a> {
    /// The content file, and the chunk's offset in it.
    File(&'a File, u64),
    /// The chunk's bytes, exactly its length.
    Bytes(Vec<u8>),
}

/// Sends one chunk frame; on Linux the data goes from the page cache to the socket with
/// `sendfile`, without passing through user space. The upload slot goes back when the
/// chunk is sent, or once the send has taken [`SLOT_HOLD`]: while it holds the slot, the
/// socket waits at most that long for room (a client that does not read fills it), and
/// then the rest goes out without a slot, under the usual [`WRITE_TIMEOUT`].
pub(super) fn send_chunk(
    stream: &TcpStream,
    body: Body<'_>,
    index: u32,
    len: u32,
    slot: Slot<'_>,
    gauge: &UploadGauge,
) -> Result<()> {
    let started = Instant::now();
    let mut slot = Some(slot);
    stream.set_write_timeout(Some(SLOT_HOLD))?;
    let header = wire::chunk_header(index, len);
    let mut header_sent = 0;
    let (mut position, end) = match body {
        Body::File(_, offset) => (offset, offset + len as u64),
        Body::Bytes(_) => (0, len as u64),
    };
    while header_sent < header.len() || position < end {
        if slot.is_some() && started.elapsed() > SLOT_HOLD {
            slot = None;
            stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
        }
        let sent = if header_sent < header.len() {
            io::Write::write(&mut &*stream, &header[header_sent..]).inspect(|&n| header_sent += n)
        } else {
            match &body {
                Body::File(data, _) => send_piece(stream, data, &mut position, end),
                Body::Bytes(bytes) => io::Write::write(&mut &*stream, &bytes[position as usize..])
                    .inspect(|&n| position += n as u64),
            }
        };
        match sent {
            Ok(0) => {
                // The frame header promised `len` bytes; closing is the only honest option.
                anyhow::bail!(
                    "store file ends {} bytes early; the store is damaged",
                    end - position
                );
            }
            Ok(n) => {
                gauge.sent.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if slot.is_some() && is_timeout(&e) => {
                slot = None;
                stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if slot.is_some() {
        stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    }
    Ok(())
}

/// Sends up to [`SEND_PIECE`] bytes of the data file from `position` (advanced by what
/// went out) to the socket.
fn send_piece(stream: &TcpStream, data: &File, position: &mut u64, end: u64) -> io::Result<usize> {
    let left = ((end - *position) as usize).min(SEND_PIECE);
    #[cfg(target_os = "linux")]
    {
        rustix::fs::sendfile(stream, data, Some(position), left).map_err(io::Error::from)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let mut buf = vec![0u8; left];
        let n = std::os::unix::fs::FileExt::read_at(data, &mut buf, *position)?;
        let sent = io::Write::write(&mut &*stream, &buf[..n])?;
        *position += sent as u64;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_goes_back_when_dropped_or_given_back() {
        let uploads = Uploads::new(1, None, None);
        let slot = uploads.take(10);
        let (taken_tx, taken) = crossbeam_channel::bounded(1);
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let _second = uploads.take(10);
                taken_tx.send(()).unwrap();
            });
            assert!(
                taken.recv_timeout(Duration::from_millis(100)).is_err(),
                "one slot: the second waits"
            );
            uploads.give_back(slot, 10);
            taken
                .recv_timeout(Duration::from_secs(5))
                .expect("the slot went back");
        });
        drop(uploads.take(10));
        drop(uploads.take(10));
    }
}
