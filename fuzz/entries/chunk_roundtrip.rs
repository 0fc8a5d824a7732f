//! `ChunkEncoder` -> `ChunkDecoder`: whatever messages go in come out, whatever the chunk size,
//! interleaving and fragmentation.
//!
//! Input: `[schedule] {segment}*`, up to 8 segments of
//! `[chunk size choice] [count] {message}*` with at most 8 messages each, a message being
//! `[csid choice] [type id] [timestamp: u32] [stream id: u32] [length: u16] [pattern]`, the
//! payload being `length` bytes of the (length-prefixed, at most 64-byte) pattern repeated.
//! Each segment first announces its chunk size with a Set Chunk Size message (when it changes),
//! then sends its messages with their chunks interleaved across chunk streams in an order the
//! input picks (one byte per chunk), as a peer multiplexing audio and video would. Messages on
//! the same chunk stream stay in order: a chunk stream carries one message at a time.
//!
//! Invariants:
//! - `encoded_len` is exactly what `encode` appends;
//! - the decoder returns every message, with its csid, timestamp, type, stream id and payload,
//!   in the order their last chunks were sent, and no error, at any fragmentation;
//! - at the end nothing is left: no input, no partial bytes.

use bytes::BytesMut;
use rtmp_proto::chunk::{
    ChunkDecoder, ChunkEncoder, Limits, MessageHeader, RawMessage, DEFAULT_CHUNK_SIZE,
    EXTENDED_TIMESTAMP_MARKER, MAX_CHUNK_SIZE, MAX_CSID,
};
use rtmp_proto::message::{csid, type_id, ControlMessage};
use rtmp_proto::time::RtmpTimestamp;

use super::input::Input;

const MAX_SEGMENTS: usize = 8;
const MAX_MESSAGES: usize = 8;
/// Small payloads are enough to cross many chunks at small chunk sizes.
const MAX_PAYLOAD: usize = 4096;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let schedule = input.schedule();
    let mut encoder = ChunkEncoder::default();
    let mut wire = BytesMut::new();
    let mut expected = Vec::new();
    let mut segments = 0;
    while !input.is_empty() && segments < MAX_SEGMENTS {
        segments += 1;
        let chunk_size = chunk_size(&mut input);
        if chunk_size != encoder.chunk_size() {
            let mut payload = BytesMut::new();
            ControlMessage::SetChunkSize(chunk_size).encode_payload(&mut payload);
            let header = MessageHeader {
                timestamp: RtmpTimestamp::ZERO,
                type_id: type_id::SET_CHUNK_SIZE,
                stream_id: 0,
            };
            encode(&encoder, csid::CONTROL, &header, &payload, &mut wire);
            expected.push(RawMessage { csid: csid::CONTROL, header, payload: payload.freeze() });
            encoder.set_chunk_size(chunk_size);
        }
        let count = usize::from(input.u8()) % (MAX_MESSAGES + 1);
        let messages: Vec<RawMessage> = (0..count).map(|_| message(&mut input)).collect();
        interleave(&encoder, &messages, &mut input, &mut wire, &mut expected);
    }

    // Chunk streams are only ever created by our messages, but allow all of them.
    let limits = Limits { max_chunk_streams: MAX_CSID as usize, ..Limits::default() };
    let mut decoder = ChunkDecoder::new(limits);
    let mut buffer = BytesMut::new();
    let mut decoded = Vec::new();
    for piece in schedule.pieces(&wire) {
        buffer.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buffer) {
                Ok(Some(message)) => decoded.push(message),
                Ok(None) => break,
                Err(error) => panic!("decoding our own encoding failed: {error:?}"),
            }
        }
    }
    assert!(buffer.is_empty(), "{} bytes left undecoded", buffer.len());
    assert_eq!(decoder.partial_bytes(), 0);
    assert_eq!(decoded, expected);
    assert_eq!(decoder.chunk_size(), encoder.chunk_size());
}

fn chunk_size(input: &mut Input<'_>) -> u32 {
    match input.u8() % 5 {
        0 => DEFAULT_CHUNK_SIZE,
        1 => 1 + u32::from(input.u8()),
        2 => 1 + u32::from(input.u16()),
        3 => 4096,
        _ => input.u32().clamp(1, MAX_CHUNK_SIZE),
    }
}

fn message(input: &mut Input<'_>) -> RawMessage {
    let choice = input.u8();
    let csid = if choice < 0xf0 {
        // A handful of chunk streams, so several messages share one and some interleave.
        [2, 3, 4, 5, 6, 7, 63, 64, 319, 320, MAX_CSID][usize::from(choice) % 11]
    } else {
        2 + input.u32() % (MAX_CSID - 1)
    };
    let type_id = input.u8();
    let timestamp = RtmpTimestamp(input.u32());
    let mut stream_id = input.u32();
    // The decoder applies Set Chunk Size and Abort on message stream 0 itself; on any other
    // stream they are ordinary messages.
    if matches!(type_id, type_id::SET_CHUNK_SIZE | type_id::ABORT) && stream_id == 0 {
        stream_id = 1;
    }
    let len = input.below(MAX_PAYLOAD + 1);
    let pattern = input.bytes(64);
    let payload: Vec<u8> = if pattern.is_empty() {
        vec![0; len]
    } else {
        pattern.iter().copied().cycle().take(len).collect()
    };
    RawMessage {
        csid,
        header: MessageHeader { timestamp, type_id, stream_id },
        payload: payload.into(),
    }
}

/// `encoder.encode`, checking `encoded_len`.
fn encode(
    encoder: &ChunkEncoder,
    csid: u32,
    header: &MessageHeader,
    payload: &[u8],
    out: &mut BytesMut,
) {
    let before = out.len();
    encoder.encode(csid, header, payload, out);
    assert_eq!(out.len() - before, encoder.encoded_len(csid, header, payload.len()));
}

/// The encoding of one message cut at its chunk boundaries.
fn chunks(encoder: &ChunkEncoder, message: &RawMessage) -> Vec<Vec<u8>> {
    let mut bytes = BytesMut::new();
    encode(encoder, message.csid, &message.header, &message.payload, &mut bytes);
    let basic = match message.csid {
        2..=63 => 1,
        64..=319 => 2,
        _ => 3,
    };
    let extended = if message.header.timestamp.0 >= EXTENDED_TIMESTAMP_MARKER { 4 } else { 0 };
    let size = encoder.chunk_size() as usize;
    let mut left = message.payload.len();
    let mut header = basic + 11 + extended;
    let mut out = Vec::new();
    let mut rest = &bytes[..];
    loop {
        let piece = left.min(size);
        let (chunk, tail) = rest.split_at(header + piece);
        out.push(chunk.to_vec());
        rest = tail;
        left -= piece;
        header = basic + extended;
        if left == 0 {
            break;
        }
    }
    assert!(rest.is_empty(), "chunk boundaries do not add up");
    out
}

/// A message and its chunks not sent yet, the next one last.
type Encoded = (RawMessage, Vec<Vec<u8>>);

/// Sends `messages` with their chunks interleaved across chunk streams.
fn interleave(
    encoder: &ChunkEncoder,
    messages: &[RawMessage],
    input: &mut Input<'_>,
    wire: &mut BytesMut,
    expected: &mut Vec<RawMessage>,
) {
    // One queue per chunk stream, in order of first use; each holds its messages in order,
    // each message as its chunks, front first.
    let mut queues: Vec<(u32, Vec<Encoded>)> = Vec::new();
    for message in messages {
        let encoded = (message.clone(), chunks(encoder, message));
        match queues.iter_mut().find(|(csid, _)| *csid == message.csid) {
            Some((_, queue)) => queue.push(encoded),
            None => queues.push((message.csid, vec![encoded])),
        }
    }
    for (_, queue) in &mut queues {
        queue.reverse();
        for (_, chunks) in queue.iter_mut() {
            chunks.reverse();
        }
    }
    while !queues.is_empty() {
        let index = usize::from(input.u8()) % queues.len();
        let queue = &mut queues[index].1;
        if let Some((message, chunks)) = queue.last_mut() {
            if let Some(chunk) = chunks.pop() {
                wire.extend_from_slice(&chunk);
            }
            if chunks.is_empty() {
                expected.push(message.clone());
                queue.pop();
            }
        }
        if queue.is_empty() {
            // Not `swap_remove`: the input's choices should keep meaning the same queues.
            queues.remove(index);
        }
    }
}
