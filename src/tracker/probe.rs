//! The tracker's own check of an `unreachable` report: a TCP connect, bounded in time, to
//! the reported peer's address from a small pool of threads. A peer is dropped from its
//! swarm on a report only when the tracker cannot connect either, so one reporter's word
//! never takes an honest peer out, while a peer that is really gone leaves at once rather
//! than at the peer timeout. The pool and its queue are small and fixed, and a full queue
//! drops the probe (the peer stays, as it would without a report): reports can never make
//! the tracker open connections without bound.

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError, bounded};

use crate::manifest::AssetId;

/// Threads that probe: a probe waits at most [`PROBE_TIMEOUT`], and each reported peer is
/// probed at most once per `swarm::PROBE_EVERY` (10 s), so two threads keep up with 10
/// unreachable peers a second, far more than any honest swarm reports.
const PROBE_THREADS: usize = 2;
/// Probes that may wait for a thread; beyond them a probe is dropped.
const PROBE_QUEUE: usize = 64;
/// How long a connect may take before the peer counts as unreachable: a peer on the same
/// continent answers a SYN in well under 300 ms; two seconds leave room for a loaded host.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One peer to probe: where it was announced, in which swarm.
#[derive(Debug)]
pub(super) struct Probe {
    pub asset: AssetId,
    pub peer_id: String,
    pub addr: SocketAddr,
}

/// The pool. Dropping it lets its threads finish their probe and exit.
pub(super) struct Prober {
    jobs: Sender<Probe>,
}

impl Prober {
    /// Starts the threads; `unreachable` is called, on a probing thread, with each probe
    /// whose connect failed.
    pub(super) fn start(unreachable: impl Fn(Probe) + Send + Sync + Clone + 'static) -> Prober {
        let (jobs, queue) = bounded::<Probe>(PROBE_QUEUE);
        for n in 0..PROBE_THREADS {
            let queue = queue.clone();
            let unreachable = unreachable.clone();
            let spawned = thread::Builder::new()
                .name(format!("tracker-probe-{n}"))
                .spawn(move || {
                    for probe in queue {
                        if !reachable(probe.addr) {
                            unreachable(probe);
                        }
                    }
                });
            // Without a thread, probes wait in the queue and are dropped when it is full:
            // the reported peers stay, as they would without the report.
            if let Err(e) = spawned {
                log::warn!(
                    "tracker: no probe thread ({e}); unreachable reports will not drop peers"
                );
            }
        }
        Prober { jobs }
    }

    /// Queues `probe`; answers false when the queue is full (the probe is dropped).
    pub(super) fn submit(&self, probe: Probe) -> bool {
        match self.jobs.try_send(probe) {
            Ok(()) => true,
            Err(TrySendError::Full(p) | TrySendError::Disconnected(p)) => {
                log::debug!(
                    "tracker: probe of {} at {} dropped: queue full",
                    p.peer_id,
                    p.addr
                );
                false
            }
        }
    }
}

/// Whether a TCP connect to `addr` succeeds within [`PROBE_TIMEOUT`]. The connection is
/// closed at once: a peer counts it as a client that left before its `Hello`.
fn reachable(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::mpsc;

    #[test]
    fn only_peers_the_tracker_cannot_connect_to_are_reported_back() {
        let listening = TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listening.local_addr().unwrap();
        // A port nobody listens on: bound, then closed.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let tx = std::sync::Arc::new(std::sync::Mutex::new(tx));
        let prober = Prober::start(move |p: Probe| {
            let _ = tx.lock().unwrap().send(p.peer_id);
        });
        for (id, addr) in [("open", open), ("closed", closed)] {
            let probe = Probe {
                asset: AssetId([0; 32]),
                peer_id: id.into(),
                addr,
            };
            assert!(prober.submit(probe));
        }
        let reported = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(reported, "closed");
        assert!(rx.recv_timeout(Duration::from_millis(500)).is_err());
        drop(prober);
    }
}
