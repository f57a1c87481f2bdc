//! The peer wire decoder on arbitrary bytes: as one frame body (`Message::decode`) and as a
//! stream of frames (`read_message`) arriving a few bytes at a time, with the server's limit
//! and with a small one. Nothing may panic, no body buffer may exceed the frame limit, and
//! every decoded message must be within the field limits and survive being sent on.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use swarmcache::manifest::MAX_CHUNKS;
use swarmcache::wire::{
    MAX_CONTROL_FRAME, MAX_ERROR_TEXT, MAX_TICKET, Message, WireError, read_message, write_message,
};

/// Hands out at most `step` bytes per read and remembers the largest buffer it was given:
/// `read_message` reads each frame body into one buffer of the body's length.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    largest_buffer: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.largest_buffer = self.largest_buffer.max(buf.len());
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fn check(m: &Message, body_len: usize) {
    match m {
        Message::Hello { ticket, .. } => assert!(ticket.len() <= MAX_TICKET),
        Message::Have(bits) => assert!(bits.len() as u64 <= MAX_CHUNKS),
        Message::Chunk { data, .. } => assert!(data.len() < body_len),
        Message::Error { message, .. } => assert!(message.len() <= MAX_ERROR_TEXT),
        _ => {}
    }
    let mut frame = Vec::new();
    write_message(&mut frame, m).expect("a decoded message can be sent on");
    assert_eq!(&Message::decode(&frame[4..]).expect("re-decodes"), m);
}

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        check(&m, data.len());
    }
    // The first byte picks the read size, so that frames split anywhere are tried.
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    for max in [MAX_CONTROL_FRAME, 64] {
        let mut reader = Trickle {
            data: stream,
            step: step as usize % 16 + 1,
            largest_buffer: 0,
        };
        loop {
            match read_message(&mut reader, max) {
                Ok(m) => check(&m, max as usize),
                Err(WireError::Closed) => break,
                Err(e) => {
                    assert!(
                        e.reply_code().is_some(),
                        "{e}: an in-memory read cannot fail"
                    );
                    assert!(!e.to_string().is_empty());
                    break;
                }
            }
        }
        assert!(reader.largest_buffer <= max.max(4) as usize);
    }
});
