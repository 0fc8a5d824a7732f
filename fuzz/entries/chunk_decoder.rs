//! `ChunkDecoder` fed arbitrary bytes at arbitrary split points, under arbitrary `Limits`.
//!
//! Input: `[max_message_len: u16] [max_chunk_streams: u8] [max_partial_bytes: u16] [schedule]
//! [chunk stream bytes...]`; a `max_message_len` of 0xffff stands for the default (8 MiB).
//!
//! Invariants:
//! - `partial_bytes()` never exceeds `max_partial_bytes`, `chunk_stream_count()` never exceeds
//!   `max_chunk_streams`, and the chunk size stays in 1..=`MAX_CHUNK_SIZE`;
//! - every message is at most `max_message_len` bytes, on a chunk stream id in 2..=`MAX_CSID`,
//!   and a message always consumes input;
//! - fragmentation changes nothing: the same messages, the same error (or none) and the same
//!   number of bytes consumed as decoding the whole stream at once;
//! - after an error, nothing: the connection is over (the decoder is not called again).

use bytes::BytesMut;
use rtmp_proto::chunk::{ChunkDecoder, DecodeError, Limits, RawMessage, MAX_CHUNK_SIZE, MAX_CSID};

use super::input::{Input, Schedule};

/// What decoding a whole stream gave: the messages, then how it stopped.
#[derive(Debug, PartialEq)]
struct Outcome {
    messages: Vec<RawMessage>,
    error: Option<DecodeError>,
    /// Bytes consumed: all but a partial chunk at the end, or those before the error.
    consumed: usize,
}

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let max_message_len = match input.u16() {
        0xffff => Limits::default().max_message_len,
        n => u32::from(n),
    };
    let limits = Limits {
        max_message_len,
        max_chunk_streams: usize::from(input.u8() % 17),
        max_partial_bytes: usize::from(input.u16()),
    };
    let schedule = input.schedule();
    let stream = input.rest();

    let whole = decode(limits, stream, Schedule::WHOLE);
    let pieces = decode(limits, stream, schedule);
    assert_eq!(whole, pieces, "fragmentation changed the result");
}

fn decode(limits: Limits, stream: &[u8], schedule: Schedule<'_>) -> Outcome {
    let mut decoder = ChunkDecoder::new(limits);
    let mut buffer = BytesMut::new();
    let mut messages = Vec::new();
    let mut fed = 0;
    for piece in schedule.pieces(stream) {
        buffer.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let before = buffer.len();
            let result = decoder.decode(&mut buffer);
            assert!(
                decoder.partial_bytes() <= limits.max_partial_bytes,
                "{} partial bytes over the limit {}",
                decoder.partial_bytes(),
                limits.max_partial_bytes
            );
            assert!(decoder.chunk_stream_count() <= limits.max_chunk_streams);
            assert!((1..=MAX_CHUNK_SIZE).contains(&decoder.chunk_size()));
            match result {
                Ok(Some(message)) => {
                    assert!(buffer.len() < before, "a message consumed nothing");
                    assert!(
                        message.payload.len() <= limits.max_message_len as usize,
                        "{}-byte message over the limit {}",
                        message.payload.len(),
                        limits.max_message_len
                    );
                    assert!((2..=MAX_CSID).contains(&message.csid), "csid {}", message.csid);
                    messages.push(message);
                }
                Ok(None) => break,
                Err(error) => {
                    return Outcome { messages, error: Some(error), consumed: fed - buffer.len() }
                }
            }
        }
    }
    Outcome { messages, error: None, consumed: fed - buffer.len() }
}
