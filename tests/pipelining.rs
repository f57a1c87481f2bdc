//! Requests in flight on one connection (issue 14): a client keeps its connection's depth
//! requested while it waits for a reply, and sends its first have request with its `Hello`.
//! The source here answers only what a client that pipelines gets answered: it reads the
//! frame after the `Hello` before it says `Welcome`, and sends no chunk while fewer than two
//! requests wait (the least depth of a peer connection), unless every chunk has been asked
//! for. A client that sends requests only between replies, or waits for the `Welcome`
//! before its have request, is never answered and the `get` fails at its stall timeout.

use std::collections::{HashSet, VecDeque};
use std::fs;
use std::io::{ErrorKind, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use swarmcache::bitfield::Bitfield;
use swarmcache::wire::{MAX_FRAME, Message, PROTOCOL_VERSION, read_message, write_message};

use crate::harness::{TrackerProc, get, publish, random_bytes};

/// The chunk size [`publish`] uses.
const CHUNK: usize = 64 << 10;
/// Requests the source waits for before it answers the oldest.
const HELD: usize = 2;
/// How often a source holding one request looks whether every chunk was asked for.
const RECHECK: Duration = Duration::from_millis(20);
/// Bound on each read of the source, so that its threads end when the test does.
const READ_TIMEOUT: Duration = Duration::from_secs(20);

/// What the source saw over all its connections.
#[derive(Default)]
struct Seen {
    /// Chunks asked for at least once.
    asked: Mutex<HashSet<u32>>,
    /// Connections whose second frame, sent before any answer, was a have request.
    pipelined_handshakes: AtomicUsize,
    /// Chunks sent while `HELD` or more requests waited.
    sent_with_queue: AtomicUsize,
}

/// Serves one connection by the rules of the module docs.
fn serve(mut stream: TcpStream, content: &[u8], seen: &Seen) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let chunks = content.len().div_ceil(CHUNK) as u32;
    if !matches!(
        read_message(&mut stream, MAX_FRAME),
        Ok(Message::Hello { .. })
    ) {
        return;
    }
    // Nothing is answered before the have request arrives.
    if !matches!(
        read_message(&mut stream, MAX_FRAME),
        Ok(Message::HaveRequest)
    ) {
        return;
    }
    seen.pipelined_handshakes.fetch_add(1, Ordering::SeqCst);
    let mut frames = Vec::new();
    write_message(
        &mut frames,
        &Message::Welcome {
            version: PROTOCOL_VERSION,
            chunk_count: chunks,
        },
    )
    .unwrap();
    write_message(&mut frames, &Message::Have(Bitfield::full(chunks))).unwrap();
    if stream.write_all(&frames).is_err() {
        return;
    }
    let mut pending: VecDeque<u32> = VecDeque::new();
    loop {
        loop {
            let all_asked = seen.asked.lock().unwrap().len() == chunks as usize;
            let answer = pending.len() >= HELD || (all_asked && !pending.is_empty());
            if !answer {
                break;
            }
            if pending.len() >= HELD {
                seen.sent_with_queue.fetch_add(1, Ordering::SeqCst);
            }
            let index = pending.pop_front().expect("a request waits");
            let start = index as usize * CHUNK;
            let end = (start + CHUNK).min(content.len());
            let chunk = Message::Chunk {
                index,
                data: content[start..end].to_vec().into(),
            };
            if write_message(&mut stream, &chunk).is_err() {
                return;
            }
        }
        // A request held alone is sent once the other connections have asked for every
        // other chunk: looked at again every 20 ms while nothing arrives.
        if !pending.is_empty() {
            let _ = stream.set_read_timeout(Some(RECHECK));
            let waiting = stream.peek(&mut [0u8; 1]);
            let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
            match waiting {
                Ok(0) => return,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    continue;
                }
                Err(_) => return,
            }
        }
        match read_message(&mut stream, MAX_FRAME) {
            Ok(Message::Request { index }) if index < chunks => {
                seen.asked.lock().unwrap().insert(index);
                pending.push_back(index);
            }
            Ok(Message::HaveRequest) => {
                if write_message(&mut stream, &Message::Have(Bitfield::full(chunks))).is_err() {
                    return;
                }
            }
            // A cancel is ignored: every request is answered in order.
            Ok(_) => {}
            Err(_) => return,
        }
    }
}

#[test]
fn a_source_that_answers_only_a_queue_of_requests_still_delivers_every_chunk() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 48 chunks: rounds of two and a last one alone.
    let bytes = random_bytes(47 * CHUNK + 1000, 91);
    fs::write(d.join("f.bin"), &bytes).unwrap();
    let tracker = TrackerProc::start(d, &[]);
    let id = publish(d, &tracker.url, "f.bin");

    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let (seen, stop, content) = (Arc::clone(&seen), Arc::clone(&stop), bytes.clone());
        let content = Arc::new(content);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let (seen, content) = (Arc::clone(&seen), Arc::clone(&content));
                        std::thread::spawn(move || serve(stream, &content, &seen));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    let url = format!("{}/assets/{id}/announce", tracker.url);
    ureq::post(&url)
        .send_json(serde_json::json!({
            "peer_id": "queue-only-source",
            "addr": addr,
            "complete": true,
        }))
        .unwrap_or_else(|e| panic!("announcing the source at {addr}: {e}"));

    // Without pipelining, every handshake waits out its 2 s and nothing arrives: the stall
    // timeout ends the get instead of the test's own bound.
    let run = get(
        d,
        &tracker.url,
        &id,
        "out.bin",
        "store",
        &["--no-serve", "--stall-timeout", "8s"],
    );
    run.ok();
    stop.store(true, Ordering::SeqCst);
    acceptor.join().unwrap();
    assert!(
        fs::read(d.join("out.bin")).unwrap() == bytes,
        "the copy differs"
    );
    assert!(seen.pipelined_handshakes.load(Ordering::SeqCst) >= 1);
    // Every chunk but those of the end came out of a queue of two.
    let queued = seen.sent_with_queue.load(Ordering::SeqCst);
    assert!(
        queued >= 40,
        "{queued} of 48 chunks sent from a queue of {HELD}"
    );
}
