//! Idle mode: kept-alive connections that hold on to the tracker without costing it work,
//! as a crowd of pooling clients (or an attacker) does. Half of them send `GET /health`
//! every half second and idle in between; the other half trickle the same request one
//! byte every half second. Each is admitted first (a whole `GET /health` answered 200);
//! one that the tracker closes is opened again, for as long as the mode runs.
//!
//! Where the tracker refuses a connection from the first source address (its per-address
//! cap), one more is given up there, so that the timed `get`, which comes from 127.0.0.1
//! like that first source, is not shut out by the cap rather than by what is measured:
//! whether held connections starve the tracker's workers. On the other addresses the
//! connections stop at the cap. A tracker whose cap is not below the count asked for
//! (16) refuses nothing, and then the `get` meets the cap on 127.0.0.1.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::model::{Framed, frame};

/// A heartbeating connection sends a request this often; a trickling one, a byte.
const BEAT: Duration = Duration::from_millis(500);
/// Time for the tracker to answer an admission request.
const ADMISSION: Duration = Duration::from_secs(2);
const REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: tracker\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Heartbeat,
    Trickle,
}

struct Held {
    source: Ipv4Addr,
    kind: Kind,
    stream: Option<TcpStream>,
    /// Bytes of the current trickled request sent.
    sent: usize,
    next: Instant,
}

/// A blocking connection from `source` that got a 200 to `GET /health` within
/// [`ADMISSION`], left non-blocking; `Err` with what happened otherwise.
fn admitted(source: Ipv4Addr, tracker: SocketAddrV4) -> Result<TcpStream, String> {
    let fd = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .map_err(|e| format!("socket: {e}"))?;
    rustix::net::bind(&fd, &SocketAddrV4::new(source, 0))
        .map_err(|e| format!("binding {source}: {e} (is it a loopback address?)"))?;
    rustix::net::connect(&fd, &std::net::SocketAddr::V4(tracker))
        .map_err(|e| format!("connecting from {source} to {tracker}: {e}"))?;
    let mut stream = TcpStream::from(fd);
    stream
        .set_read_timeout(Some(ADMISSION))
        .and_then(|()| stream.write_all(REQUEST))
        .map_err(|e| format!("sending from {source}: {e}"))?;
    let mut buf = Vec::new();
    let mut piece = [0u8; 4096];
    loop {
        match frame(&buf) {
            Ok(Framed::Whole {
                status: 200, len, ..
            }) if buf.len() == len => break,
            Ok(Framed::Whole { status, .. }) => return Err(format!("answered {status}")),
            Ok(Framed::Partial) => {}
            Err(e) => return Err(e),
        }
        match stream.read(&mut piece) {
            Ok(0) => return Err("closed before answering".into()),
            Ok(n) => buf.extend_from_slice(&piece[..n]),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    stream
        .set_nonblocking(true)
        .map_err(|e| format!("non-blocking: {e}"))?;
    Ok(stream)
}

/// Holds `per_source` connections from each of `sources` for `seconds`, printing a line
/// once they are held (a caller waits for "holding ").
pub fn hold(
    tracker: SocketAddrV4,
    sources: &[Ipv4Addr],
    per_source: usize,
    seconds: Duration,
) -> Result<()> {
    let end = Instant::now() + seconds;
    let mut held: Vec<Held> = Vec::new();
    let mut capped = Vec::new();
    for (n, &source) in sources.iter().enumerate() {
        for k in 0..per_source {
            match admitted(source, tracker) {
                Ok(stream) => held.push(Held {
                    source,
                    kind: if k % 2 == 0 {
                        Kind::Heartbeat
                    } else {
                        Kind::Trickle
                    },
                    stream: Some(stream),
                    sent: 0,
                    next: Instant::now() + BEAT,
                }),
                Err(why) => {
                    // The address is at the tracker's cap: leave one place on the get's.
                    let mut kept = k;
                    if n == 0
                        && let Some(at) = held.iter().rposition(|h| h.source == source)
                    {
                        held.remove(at);
                        kept -= 1;
                    }
                    capped.push(format!(
                        "{source} refused at connection {} ({why}), holding {kept}",
                        k + 1
                    ));
                    break;
                }
            }
        }
    }
    let count = |kind| held.iter().filter(|h| h.kind == kind).count();
    println!(
        "holding {} connections to {tracker} ({} heartbeating, {} trickling){}",
        held.len(),
        count(Kind::Heartbeat),
        count(Kind::Trickle),
        if capped.is_empty() {
            String::new()
        } else {
            format!("; {}", capped.join("; "))
        }
    );
    let (mut answers, mut reopened, mut lost) = (0u64, 0u64, 0u64);
    let mut piece = [0u8; 4096];
    while Instant::now() < end {
        let now = Instant::now();
        for h in held.iter_mut() {
            let Some(stream) = &mut h.stream else {
                if now >= h.next {
                    match admitted(h.source, tracker) {
                        Ok(s) => {
                            h.stream = Some(s);
                            h.sent = 0;
                            reopened += 1;
                        }
                        Err(_) => lost += 1,
                    }
                    h.next = now + BEAT;
                }
                continue;
            };
            // Drain answers; a close means opening again at the next beat.
            let mut closed = false;
            loop {
                match stream.read(&mut piece) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => {
                        answers += piece[..n].windows(4).filter(|w| *w == b"HTTP").count() as u64
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            if !closed && now >= h.next {
                let bytes = match h.kind {
                    Kind::Heartbeat => REQUEST,
                    Kind::Trickle => &REQUEST[h.sent..h.sent + 1],
                };
                closed = stream.write_all(bytes).is_err();
                h.sent = match h.kind {
                    Kind::Heartbeat => 0,
                    Kind::Trickle => (h.sent + 1) % REQUEST.len(),
                };
                h.next = now + BEAT;
            }
            if closed {
                h.stream = None;
                h.next = now + BEAT;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "held for {:.0} s: {answers} answers, {reopened} connections reopened, {lost} reopenings refused",
        seconds.as_secs_f64()
    );
    Ok(())
}
