//! The peer wire decoder on arbitrary bytes: as one frame body (`Message::decode`), as a
//! stream of frames cut by the pure codec (`wire::decode`), and as the same stream read a few
//! bytes at a time (`read_message`), with the server's limit and with a small one. Nothing
//! may panic, no read may ask for more than the frame limit, the codec and the reader must
//! agree frame by frame, and every decoded message must be within the field limits and
//! survive being sent on.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use swarmcache::manifest::MAX_CHUNKS;
use swarmcache::wire::{
    Decoded, MAX_CONTROL_FRAME, MAX_ERROR_TEXT, MAX_GAINED, MAX_TICKET, Message, WireError, decode,
    read_message, write_message,
};

/// Hands out at most `step` bytes per read and remembers the largest buffer it was given:
/// `read_message` asks for no more than the codec says is missing.
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
        Message::Gained { indices } => assert!((1..=MAX_GAINED).contains(&indices.len())),
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
        let mut frames = Vec::new();
        let mut at = 0;
        let codec_failed = loop {
            match decode(&stream[at..], max) {
                Ok(Decoded::Message(m, used)) => {
                    assert!((5..=4 + max as usize).contains(&used), "{used} bytes used");
                    check(&m, max as usize);
                    frames.push(m.into_owned());
                    at += used;
                }
                Ok(Decoded::NeedMore(n)) => {
                    let frame = stream.len() - at + n;
                    assert!(n > 0 && frame <= 4 + max as usize, "needs {n} more at {at}");
                    break false;
                }
                Err(e) => {
                    assert!(e.reply_code().is_some(), "{e}: the codec does no I/O");
                    break true;
                }
            }
        };
        let mut reader = Trickle {
            data: stream,
            step: step as usize % 16 + 1,
            largest_buffer: 0,
        };
        for m in &frames {
            assert_eq!(&read_message(&mut reader, max).expect("the codec read it"), m);
        }
        match read_message(&mut reader, max) {
            Ok(m) => panic!("the codec stopped before {m:?}"),
            Err(WireError::Closed) => assert!(!codec_failed && at == stream.len()),
            Err(e) => {
                assert!(
                    e.reply_code().is_some(),
                    "{e}: an in-memory read cannot fail"
                );
                assert!(!e.to_string().is_empty());
                assert!(codec_failed || at < stream.len());
            }
        }
        assert!(reader.largest_buffer <= max.max(4) as usize);
    }
});
