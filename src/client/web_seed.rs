//! A web seed worker: one thread fetching an asset's chunks from an origin URL (any
//! HTTP(S) server that answers `Range` requests: nginx, an object store, a CDN) where a
//! `worker` talks the peer protocol to a `peer_server --origin`. It takes the same jobs
//! and sends the same reports, so the plan treats it as an origin like any other.
//!
//! The jobs waiting are sent as one request per run of consecutive chunks
//! ([`ranges::front_run`]), with `Accept-Encoding: identity`; the answer must be a 206 of
//! exactly that range of a file of the asset's size ([`ranges::check_answer`]). Each
//! chunk is verified against the manifest as soon as its bytes are in, written, and
//! reported, so a long run does not hold back the stream. A server that cannot serve as an
//! origin (no ranges, a content coding, another file) ends the connection as
//! [`End::Unfit`]; one that sends other bytes than the file's ends it as [`End::Lied`],
//! which drops the URL and reports it like a lying peer.
//!
//! All the web seed workers of a download share one [`ureq::Agent`], which keeps their
//! connections open between requests (one per worker per host); timeouts bound the
//! connect, every read, and the whole request.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use crossbeam_channel::RecvTimeoutError;

use crate::bitfield::Bitfield;
use crate::manifest::Manifest;
use crate::ratelimit::{self, RateLimiter};
use crate::store::Partial;

use super::ranges::{self, Answer};
use super::sources::End;
use super::worker::{Job, JobsRx, Report};

/// Connecting to a web server or CDN edge takes milliseconds; 5 s, as for a peer, is
/// already far past any use.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections each web host keeps open between requests: one per worker of a download
/// (the default is four; `--workers` allows up to 64).
const IDLE_PER_HOST: usize = 64;
/// How long an idle worker waits for a job before it looks whether the scheduler is gone.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The HTTP client every web seed of a download shares, speaking TLS with `tls` (the
/// tracker client's setup: the CAs of `--ca-cert`, or the system's) to `https://` URLs.
pub(crate) fn agent(
    tls: Option<&Arc<rustls::ClientConfig>>,
    read_timeout: Duration,
) -> ureq::Agent {
    let builder = ureq::AgentBuilder::new()
        .timeout_connect(CONNECT_TIMEOUT)
        .timeout_read(read_timeout)
        .timeout_write(read_timeout)
        // A redirect could lead an https:// origin to plain http, or anywhere: an origin
        // URL is the final one (see `Refusal::Status`).
        .redirects(0)
        .max_idle_connections_per_host(IDLE_PER_HOST)
        .user_agent(concat!("swarmcache/", env!("CARGO_PKG_VERSION")));
    match tls {
        Some(tls) => builder.tls_config(Arc::clone(tls)).build(),
        None => builder.build(),
    }
}

/// The TLS setup of the origin URLs: the same as for an `https://` tracker (see
/// [`crate::tracker_client`]), so one `--ca-cert` file holds the CAs of both.
pub(crate) fn tls_config(ca_cert: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    crate::tracker_client::client_config(ca_cert)
}

/// What to say when TLS with `url` failed with `e`: which check, and what to do.
fn tls_message(url: &str, e: &rustls::Error) -> String {
    use rustls::CertificateError as Cert;
    match e {
        rustls::Error::InvalidCertificate(Cert::UnknownIssuer) => {
            "its certificate is signed by a CA this client does not trust (untrusted CA); pass --ca-cert FILE with that CA (one file may hold several: the tracker's and the origins'), or add it to the system's trust store".to_string()
        }
        rustls::Error::InvalidCertificate(Cert::NotValidForName)
        | rustls::Error::InvalidCertificate(Cert::NotValidForNameContext { .. }) => format!(
            "its certificate is not valid for the host name in {url} (wrong host name: {e}); list the URL under a name the certificate holds"
        ),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "answered, but not in TLS: is it an http:// URL?".to_string()
        }
        e => format!("TLS failed: {e}"),
    }
}

/// One worker fetching from one origin URL.
pub(crate) struct WebSeed {
    /// The plan's id of this connection.
    pub(crate) conn: usize,
    /// The origin URL.
    pub(crate) url: String,
    /// The download's shared HTTP client.
    pub(crate) agent: ureq::Agent,
    /// The manifest, to verify chunks against.
    pub(crate) manifest: Arc<Manifest>,
    /// The store's content file, where verified chunks are written.
    pub(crate) data: Arc<File>,
    /// How long a chunk may take to arrive whole; a request of a run gets one per chunk.
    pub(crate) chunk_timeout: Duration,
    /// The download cap, if any.
    pub(crate) limiter: Option<Arc<RateLimiter>>,
    /// Where reports go.
    pub(crate) tell: Box<dyn Fn(Report) + Send>,
}

impl WebSeed {
    /// Runs until the scheduler closes its jobs or the URL fails.
    pub(crate) fn run(self, jobs: JobsRx) {
        let end = self.session(&jobs);
        (self.tell)(Report::Closed {
            conn: self.conn,
            end,
        });
    }

    fn session(&self, jobs: &JobsRx) -> End {
        let count = self.manifest.chunk_count();
        // An origin holds every chunk; the first request shows whether this one does.
        (self.tell)(Report::Ready {
            conn: self.conn,
            have: Bitfield::full(count),
            rtt: None,
        });
        // Chunks asked for and not yet requested, in the order asked.
        let mut queue: Vec<u32> = Vec::new();
        let mut closed = false;
        loop {
            if queue.is_empty() {
                if closed {
                    return End::Finished;
                }
                match jobs.channel().recv_timeout(IDLE_POLL) {
                    Ok(job) => self.take(job, &mut queue),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return End::Finished,
                }
            }
            closed |= self.drain(jobs, &mut queue);
            let Some((first, n)) = ranges::front_run(&queue) else {
                continue;
            };
            queue.drain(..n as usize);
            if let Err(end) = self.fetch_run(first, n, jobs, &mut queue, &mut closed) {
                return end;
            }
        }
    }

    /// Takes every job waiting; returns whether the scheduler closed the channel.
    fn drain(&self, jobs: &JobsRx, queue: &mut Vec<u32>) -> bool {
        loop {
            match jobs.channel().try_recv() {
                Ok(job) => self.take(job, queue),
                Err(crossbeam_channel::TryRecvError::Empty) => return false,
                Err(crossbeam_channel::TryRecvError::Disconnected) => return true,
            }
        }
    }

    /// Queues a fetch; a cancel of a chunk not yet requested is answered at once (one
    /// already requested arrives anyway, and counts as delivered, as a late cancel does on
    /// the peer wire).
    fn take(&self, job: Job, queue: &mut Vec<u32>) {
        match job {
            Job::Fetch(index) => queue.push(index),
            Job::Cancel(index) => {
                if let Some(at) = queue.iter().position(|&i| i == index) {
                    queue.remove(at);
                    (self.tell)(Report::Cancelled {
                        conn: self.conn,
                        index,
                    });
                }
            }
        }
    }

    /// Requests chunks `first .. first + n` in one range and takes each in as it arrives;
    /// jobs that come meanwhile are queued.
    fn fetch_run(
        &self,
        first: u32,
        n: u32,
        jobs: &JobsRx,
        queue: &mut Vec<u32>,
        closed: &mut bool,
    ) -> Result<(), End> {
        let m = &self.manifest;
        let Some(asked) = ranges::byte_range(m.size, m.chunk_size, first, n) else {
            return Err(End::Local(format!(
                "chunks {first}..{} are past the end of the asset",
                first as u64 + n as u64
            )));
        };
        for index in first..first + n {
            ratelimit::take(self.limiter.as_deref(), m.chunk_len(index) as u64);
        }
        let whole = self.chunk_timeout.saturating_mul(n);
        let response = self
            .agent
            .get(&self.url)
            .set("Range", &ranges::range_header(asked))
            .set("Accept-Encoding", "identity")
            .timeout(whole)
            .call();
        let response = match response {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                let answer = Answer {
                    status,
                    content_range: r.header("Content-Range"),
                    content_encoding: r.header("Content-Encoding"),
                    content_length: r.header("Content-Length"),
                };
                let refusal = ranges::check_answer(&answer, asked, m.size).unwrap_err();
                // Overloaded or failing now (429, 5xx): worth a pause and a retry.
                return Err(match status {
                    429 | 500..=599 => End::Busy(refusal.to_string()),
                    _ => End::Unfit(refusal.to_string()),
                });
            }
            Err(ureq::Error::Transport(t)) => {
                // A certificate that fails its checks will fail them again: not worth a retry.
                if let Some(e) = crate::tracker_client::tls_error(&t) {
                    return Err(End::Unfit(tls_message(&self.url, &e)));
                }
                return Err(transport_end(&t, whole));
            }
        };
        let answer = Answer {
            status: response.status(),
            content_range: response.header("Content-Range"),
            content_encoding: response.header("Content-Encoding"),
            content_length: response.header("Content-Length"),
        };
        if let Err(refusal) = ranges::check_answer(&answer, asked, m.size) {
            return Err(match refusal.is_unfit() {
                true => End::Unfit(refusal.to_string()),
                false => End::Lied(refusal.to_string()),
            });
        }
        let mut body = response.into_reader();
        let mut buf = vec![0; m.chunk_size as usize];
        for index in first..first + n {
            let len = m.chunk_len(index) as usize;
            let chunk = &mut buf[..len];
            if let Err(e) = body.read_exact(chunk) {
                return Err(End::Failed(if crate::net::is_timeout(&e) {
                    format!("stalled: chunk {index} did not arrive within {whole:?}")
                } else {
                    format!("reading chunk {index} of the answer: {e}")
                }));
            }
            if !m.chunk_matches(index, chunk) {
                return Err(End::Lied(format!(
                    "sent chunk {index} with the wrong SHA-256"
                )));
            }
            if let Err(e) = Partial::write_at(&self.data, chunk, m.chunk_offset(index)) {
                let hint = if e.kind() == std::io::ErrorKind::StorageFull {
                    " (the disk is full)"
                } else {
                    ""
                };
                return Err(End::Local(format!(
                    "writing chunk {index} to the store failed{hint}: {e}"
                )));
            }
            (self.tell)(Report::Done {
                conn: self.conn,
                index,
            });
            *closed |= self.drain(jobs, queue);
        }
        // Read to the end so that the connection goes back to the agent for the next run;
        // a byte past the range asked is a lie about its length.
        match body.read(&mut buf[..1]) {
            Ok(0) => Ok(()),
            Ok(_) => Err(End::Lied(format!(
                "sent more than the {} bytes of the range asked",
                asked.1 - asked.0 + 1
            ))),
            Err(e) => Err(End::Failed(format!("ending the answer: {e}"))),
        }
    }
}

/// How a transport failure ends the connection: no connection at all is `Unreachable`.
fn transport_end(t: &ureq::Transport, whole: Duration) -> End {
    use std::error::Error;
    let mut timed_out = false;
    let mut cause = t.source();
    while let Some(e) = cause {
        timed_out |= e
            .downcast_ref::<std::io::Error>()
            .is_some_and(crate::net::is_timeout);
        cause = e.source();
    }
    match t.kind() {
        ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed => {
            End::Unreachable(format!("unreachable: {t}"))
        }
        ureq::ErrorKind::InvalidUrl | ureq::ErrorKind::UnknownScheme => {
            End::Unfit(format!("cannot be fetched: {t}"))
        }
        ureq::ErrorKind::BadStatus | ureq::ErrorKind::BadHeader => {
            End::Unfit(format!("did not answer in HTTP: {t}"))
        }
        _ if timed_out => End::Failed(format!("stalled: no answer within {whole:?}")),
        _ => End::Failed(format!("request failed: {t}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn transport(agent: &ureq::Agent, url: &str) -> ureq::Transport {
        match agent.get(url).call() {
            Err(ureq::Error::Transport(t)) => t,
            other => panic!("{url}: {other:?}"),
        }
    }

    #[test]
    fn no_connection_is_unreachable_and_a_server_not_speaking_http_is_unfit() {
        let agent = agent(None, Duration::from_secs(2));
        // A port nobody listens on: bound, then released.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = transport(&agent, &format!("http://127.0.0.1:{port}/f"));
        assert!(
            matches!(
                transport_end(&t, Duration::from_secs(1)),
                End::Unreachable(_)
            ),
            "{t}"
        );
        // Something that answers, but not in HTTP (a peer_server port, say).
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"\x00\x01not http at all\r\n\r\n");
        });
        let t = transport(&agent, &format!("http://{addr}/f"));
        server.join().unwrap();
        match transport_end(&t, Duration::from_secs(1)) {
            End::Unfit(message) => assert!(message.contains("did not answer in HTTP"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
