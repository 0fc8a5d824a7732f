//! Chunk codec tests.
//!
//! Every decoder test goes through [`check`] or [`check_err`], which decode the same bytes fed
//! in pieces of each of [`PIECES`] bytes (and whole), calling `decode` until `Ok(None)` after
//! each piece, and require the same messages (or the same error) every time: "need more bytes"
//! must be invisible in the output. The byte vectors are written out by hand, or with the small
//! wire builders below, which are deliberately independent of `header.rs`.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;
use crate::message::type_id;

/// Piece sizes every decoder test is repeated at; `usize::MAX` is "all at once".
const PIECES: &[usize] = &[1, 2, 3, 7, 64, 127, 128, 129, 4096, usize::MAX];

/// How a test decoder starts.
#[derive(Clone, Copy)]
struct Setup {
    limits: Limits,
    /// Chunk size as if a Set Chunk Size had already been received.
    chunk_size: u32,
}

impl Default for Setup {
    fn default() -> Self {
        Setup { limits: Limits::default(), chunk_size: DEFAULT_CHUNK_SIZE }
    }
}

impl Setup {
    fn chunk_size(chunk_size: u32) -> Self {
        Setup { chunk_size, ..Setup::default() }
    }

    fn limits(limits: Limits) -> Self {
        Setup { limits, ..Setup::default() }
    }

    fn decoder(&self) -> ChunkDecoder {
        let mut decoder = ChunkDecoder::new(self.limits);
        decoder.set_chunk_size(self.chunk_size).expect("valid test chunk size");
        decoder
    }
}

/// What one fragmented run produced.
#[derive(Debug)]
struct Outcome {
    messages: Vec<RawMessage>,
    /// The first error; feeding stops there.
    error: Option<DecodeError>,
    /// Bytes fed but not consumed.
    left: usize,
    /// The decoder as it ended.
    decoder: ChunkDecoder,
}

/// Feeds `bytes` in pieces of `piece` bytes, calling `decode` until `Ok(None)` (or an error)
/// after each piece. Checks the partial-bytes limit after every call.
fn run(setup: Setup, bytes: &[u8], piece: usize) -> Outcome {
    let mut decoder = setup.decoder();
    let mut input = BytesMut::new();
    let mut messages = Vec::new();
    for part in bytes.chunks(piece.min(bytes.len()).max(1)) {
        input.extend_from_slice(part);
        loop {
            let result = decoder.decode(&mut input);
            assert!(
                decoder.partial_bytes() <= setup.limits.max_partial_bytes,
                "partial bytes {} over the limit {}",
                decoder.partial_bytes(),
                setup.limits.max_partial_bytes
            );
            match result {
                Ok(Some(message)) => messages.push(message),
                Ok(None) => break,
                Err(error) => {
                    return Outcome { messages, error: Some(error), left: input.len(), decoder }
                }
            }
        }
    }
    Outcome { messages, error: None, left: input.len(), decoder }
}

/// Decodes `bytes` at every piece size; all of it must be consumed into exactly `expected`.
/// Returns the decoder of the whole-input run for further checks.
#[track_caller]
fn check(setup: Setup, bytes: &[u8], expected: &[RawMessage]) -> ChunkDecoder {
    let mut last = None;
    for &piece in PIECES {
        let outcome = run(setup, bytes, piece);
        assert_eq!(outcome.error, None, "piece size {piece}");
        assert_eq!(outcome.messages, expected, "piece size {piece}");
        assert_eq!(outcome.left, 0, "piece size {piece}: bytes left unconsumed");
        assert_eq!(outcome.decoder.partial_bytes(), 0, "piece size {piece}");
        last = Some(outcome.decoder);
    }
    last.expect("PIECES is not empty")
}

/// Decodes `bytes` at every piece size; `expected` must come out, then `error`.
#[track_caller]
fn check_err(setup: Setup, bytes: &[u8], expected: &[RawMessage], error: DecodeError) {
    for &piece in PIECES {
        let outcome = run(setup, bytes, piece);
        assert_eq!(outcome.messages, expected, "piece size {piece}");
        assert_eq!(outcome.error.as_ref(), Some(&error), "piece size {piece}");
    }
}

fn msg(csid: u32, timestamp: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> RawMessage {
    RawMessage {
        csid,
        header: MessageHeader { timestamp: RtmpTimestamp(timestamp), type_id, stream_id },
        payload: Bytes::copy_from_slice(payload),
    }
}

/// `len` bytes of a recognisable pattern that never starts with 0x00 or 0xff (so it cannot be
/// mistaken for a repeated extended timestamp by accident).
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed) % 0xfd + 1).collect()
}

// Wire builders, written from the spec independently of `header.rs`.

fn basic(fmt: u8, csid: u32) -> Vec<u8> {
    match csid {
        2..=63 => vec![fmt << 6 | csid as u8],
        64..=319 => vec![fmt << 6, (csid - 64) as u8],
        _ => vec![fmt << 6 | 1, ((csid - 64) & 0xff) as u8, ((csid - 64) >> 8) as u8],
    }
}

fn u24(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.min(0xff_ffff).to_be_bytes()[1..]);
}

fn ext(out: &mut Vec<u8>, time: u32) {
    if time >= 0xff_ffff {
        out.extend_from_slice(&time.to_be_bytes());
    }
}

fn type0(csid: u32, timestamp: u32, len: u32, type_id: u8, stream_id: u32) -> Vec<u8> {
    let mut out = basic(0, csid);
    u24(&mut out, timestamp);
    u24(&mut out, len);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    ext(&mut out, timestamp);
    out
}

fn type1(csid: u32, delta: u32, len: u32, type_id: u8) -> Vec<u8> {
    let mut out = basic(1, csid);
    u24(&mut out, delta);
    u24(&mut out, len);
    out.push(type_id);
    ext(&mut out, delta);
    out
}

fn type2(csid: u32, delta: u32) -> Vec<u8> {
    let mut out = basic(2, csid);
    u24(&mut out, delta);
    ext(&mut out, delta);
    out
}

fn type3(csid: u32) -> Vec<u8> {
    basic(3, csid)
}

/// A one-chunk protocol control message on chunk stream 2.
fn control(type_id: u8, value: u32) -> Vec<u8> {
    let mut out = type0(2, 0, 4, type_id, 0);
    out.extend_from_slice(&value.to_be_bytes());
    out
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

// ---------------------------------------------------------------------------------------------
// Golden vectors, one per header format.

#[test]
fn golden_type0_one_byte_basic_header() {
    #[rustfmt::skip]
    let bytes = [
        0x03,                   // fmt 0, csid 3
        0x00, 0x00, 0x64,       // timestamp 100
        0x00, 0x00, 0x03,       // length 3
        0x14,                   // type 20 (AMF0 command)
        0x01, 0x00, 0x00, 0x00, // stream id 1, little endian
        b'a', b'b', b'c',
    ];
    check(Setup::default(), &bytes, &[msg(3, 100, 20, 1, b"abc")]);
}

#[test]
fn golden_two_and_three_byte_basic_headers() {
    #[rustfmt::skip]
    let bytes = [
        0x00, 0x00,             // fmt 0, csid 64 + 0
        0x00, 0x00, 0x01, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0xa1,
        0x00, 0xff,             // fmt 0, csid 64 + 255 = 319
        0x00, 0x00, 0x02, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0xa2,
        0x01, 0x00, 0x01,       // fmt 0, csid 64 + 0 + 256 * 1 = 320
        0x00, 0x00, 0x03, 0x00, 0x00, 0x01, 0x09, 0x00, 0x00, 0x00, 0x00, 0xa3,
        0x01, 0xff, 0xff,       // fmt 0, csid 64 + 255 + 256 * 255 = 65599
        0x00, 0x00, 0x04, 0x00, 0x00, 0x01, 0x09, 0x00, 0x00, 0x00, 0x00, 0xa4,
        0x01, 0x00, 0x00,       // fmt 0, csid 64 in the three-byte form: legal, if wasteful
        0x00, 0x00, 0x05, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0xa5,
        0xc0, 0x00,             // fmt 3, csid 64: a new message like the last on csid 64
        0xa6,
    ];
    check(
        Setup::default(),
        &bytes,
        &[
            msg(64, 1, 8, 0, &[0xa1]),
            msg(319, 2, 8, 0, &[0xa2]),
            msg(320, 3, 9, 0, &[0xa3]),
            msg(65599, 4, 9, 0, &[0xa4]),
            msg(64, 5, 8, 0, &[0xa5]),
            msg(64, 10, 8, 0, &[0xa6]),
        ],
    );
}

#[test]
fn golden_type1_delta_accumulates_and_keeps_stream_id() {
    #[rustfmt::skip]
    let bytes = [
        0x04, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x02, 0x08, 0x01, 0x00, 0x00, 0x00, // ts 1000, len 2, audio, sid 1
        0x11, 0x22,
        0x44, 0x00, 0x00, 0x14, 0x00, 0x00, 0x03, 0x09, // fmt 1, csid 4: delta 20, len 3, video
        0x33, 0x44, 0x55,
        0x44, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, // fmt 1: delta 0, len 1, audio
        0x66,
    ];
    check(
        Setup::default(),
        &bytes,
        &[
            msg(4, 1000, 8, 1, &[0x11, 0x22]),
            msg(4, 1020, 9, 1, &[0x33, 0x44, 0x55]),
            msg(4, 1020, 8, 1, &[0x66]),
        ],
    );
}

#[test]
fn golden_type2_delta_keeps_length_type_and_stream() {
    #[rustfmt::skip]
    let bytes = [
        0x05, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x02, 0x09, 0x07, 0x00, 0x00, 0x00, // ts 10, len 2, video, sid 7
        0x01, 0x02,
        0x85, 0x00, 0x00, 0x21, // fmt 2, csid 5: delta 33
        0x03, 0x04,
        0x85, 0x00, 0x00, 0x22, // delta 34
        0x05, 0x06,
    ];
    check(
        Setup::default(),
        &bytes,
        &[msg(5, 10, 9, 7, &[1, 2]), msg(5, 43, 9, 7, &[3, 4]), msg(5, 77, 9, 7, &[5, 6])],
    );
}

/// RTMP spec 1.0, 5.3.2.1, example 1: four audio messages, the last two with type 3 headers
/// reusing the type 2 delta.
#[test]
fn golden_spec_example_1_type3_new_message_reuses_delta() {
    let payload = |seed| pattern(32, seed);
    let bytes = cat(&[
        &type0(3, 1000, 32, 8, 12345),
        &payload(1),
        &type2(3, 20),
        &payload(2),
        &type3(3),
        &payload(3),
        &type3(3),
        &payload(4),
    ]);
    // The spec's byte counts: 12, 4, 1, 1 header bytes.
    assert_eq!(bytes.len(), 12 + 4 + 1 + 1 + 4 * 32);
    check(
        Setup::default(),
        &bytes,
        &[
            msg(3, 1000, 8, 12345, &payload(1)),
            msg(3, 1020, 8, 12345, &payload(2)),
            msg(3, 1040, 8, 12345, &payload(3)),
            msg(3, 1060, 8, 12345, &payload(4)),
        ],
    );
}

/// RTMP spec 1.0, 5.3.2.2, example 2: a 307-byte message cut into 128 + 128 + 51 with type 3
/// continuation chunks.
#[test]
fn golden_spec_example_2_type3_continuations() {
    let payload = pattern(307, 9);
    let bytes = cat(&[
        &type0(4, 1000, 307, 9, 12346),
        &payload[..128],
        &[0xc4],
        &payload[128..256],
        &[0xc4],
        &payload[256..],
    ]);
    assert_eq!(bytes.len(), 12 + 1 + 1 + 307);
    check(Setup::default(), &bytes, &[msg(4, 1000, 9, 12346, &payload)]);
}

/// Spec 5.3.1.2.4: "If a Type 3 chunk follows a Type 0 chunk, then the timestamp delta for this
/// Type 3 chunk is the same as the timestamp of the Type 0 chunk." (ffmpeg reads it so too.)
#[test]
fn golden_type3_after_type0_adds_the_absolute_timestamp_again() {
    let bytes = cat(&[&type0(6, 40, 1, 8, 1), &[0xaa], &type3(6), &[0xbb], &type3(6), &[0xcc]]);
    check(
        Setup::default(),
        &bytes,
        &[msg(6, 40, 8, 1, &[0xaa]), msg(6, 80, 8, 1, &[0xbb]), msg(6, 120, 8, 1, &[0xcc])],
    );
}

/// librtmp opens a chunk stream with a type 1 header; the missing previous header counts as all
/// zeros (timestamp 0, stream 0).
#[test]
fn type1_on_a_fresh_chunk_stream_is_accepted() {
    let bytes = [0x42, 0x00, 0x00, 0x05, 0x00, 0x00, 0x04, 0x05, 0x00, 0x26, 0x25, 0xa0];
    check(
        Setup::default(),
        &bytes,
        &[msg(2, 5, type_id::WINDOW_ACK_SIZE, 0, &[0, 0x26, 0x25, 0xa0])],
    );
}

// ---------------------------------------------------------------------------------------------
// Extended timestamps.

#[test]
fn extended_timestamp_on_type0() {
    #[rustfmt::skip]
    let bytes = [
        0x04, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x08, 0x01, 0x00, 0x00, 0x00,
        0x01, 0x02, 0x03, 0x04, // extended timestamp 0x01020304
        0xaa,
        // 0xffffff itself does not fit the field: it is the marker, and needs the extension.
        0x04, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x08, 0x01, 0x00, 0x00, 0x00,
        0x00, 0xff, 0xff, 0xff,
        0xbb,
        // 0xfffffe is the largest value written in place.
        0x04, 0xff, 0xff, 0xfe, 0x00, 0x00, 0x01, 0x08, 0x01, 0x00, 0x00, 0x00,
        0xcc,
    ];
    check(
        Setup::default(),
        &bytes,
        &[
            msg(4, 0x0102_0304, 8, 1, &[0xaa]),
            msg(4, 0x00ff_ffff, 8, 1, &[0xbb]),
            msg(4, 0x00ff_fffe, 8, 1, &[0xcc]),
        ],
    );
}

#[test]
fn extended_deltas_on_type1_and_type2() {
    #[rustfmt::skip]
    let bytes = [
        0x04, 0x00, 0x03, 0xe8, 0x00, 0x00, 0x01, 0x08, 0x01, 0x00, 0x00, 0x00, 0x01, // ts 1000
        0x44, 0xff, 0xff, 0xff, 0x00, 0x00, 0x01, 0x09, 0x01, 0x00, 0x00, 0x00, 0x02, // fmt 1, delta 0x01000000
        0x84, 0xff, 0xff, 0xff, 0x00, 0xff, 0xff, 0xff, 0x03,                         // fmt 2, delta 0xffffff
        0x84, 0x00, 0x00, 0x01, 0x04,                                                 // fmt 2, delta 1
    ];
    check(
        Setup::default(),
        &bytes,
        &[
            msg(4, 1000, 8, 1, &[1]),
            msg(4, 1000 + 0x0100_0000, 9, 1, &[2]),
            msg(4, 1000 + 0x0100_0000 + 0xff_ffff, 9, 1, &[3]),
            msg(4, 1000 + 0x0100_0000 + 0xff_ffff + 1, 9, 1, &[4]),
        ],
    );
}

/// A 300-byte message at an extended timestamp, in 128-byte chunks: Adobe's spec repeats the
/// extended timestamp after every type 3 basic header, some ffmpeg/librtmp builds leave it out.
/// Both must decode to the same message.
#[test]
fn extended_timestamp_on_type3_continuations_repeated_or_omitted() {
    let timestamp = 0x0123_4567;
    let payload = pattern(300, 3);
    let header = type0(6, timestamp, 300, 9, 1);
    let repeat = timestamp.to_be_bytes();
    let adobe = cat(&[
        &header,
        &payload[..128],
        &[0xc6],
        &repeat,
        &payload[128..256],
        &[0xc6],
        &repeat,
        &payload[256..],
    ]);
    let omitted =
        cat(&[&header, &payload[..128], &[0xc6], &payload[128..256], &[0xc6], &payload[256..]]);
    let expected = [msg(6, timestamp, 9, 1, &payload)];
    check(Setup::default(), &adobe, &expected);
    check(Setup::default(), &omitted, &expected);
    // Whatever the next message looks like, it must not change the verdict.
    let next = cat(&[&type0(6, 5, 4, 9, 1), &[1, 2, 3, 4]]);
    let expected = [expected[0].clone(), msg(6, 5, 9, 1, &[1, 2, 3, 4])];
    check(Setup::default(), &cat(&[&adobe, &next]), &expected);
    check(Setup::default(), &cat(&[&omitted, &next]), &expected);
}

/// The same with the extended value a delta (type 1 and 2 headers), and a type 3 header that
/// starts a new message reusing the extended delta.
#[test]
fn extended_delta_on_type3_new_messages_repeated_or_omitted() {
    let delta: u32 = 0x0100_0000;
    let first = pattern(2, 1);
    let second = pattern(200, 2);
    let third = pattern(200, 3);
    let head = cat(&[&type0(7, 10, 2, 9, 1), &first]);
    let d = delta.to_be_bytes();
    let adobe = cat(&[
        &head,
        &type1(7, delta, 200, 9),
        &second[..128],
        &[0xc7],
        &d,
        &second[128..],
        &[0xc7], // a new message: the delta again
        &d,
        &third[..128],
        &[0xc7],
        &d,
        &third[128..],
    ]);
    let omitted = cat(&[
        &head,
        &type1(7, delta, 200, 9),
        &second[..128],
        &[0xc7],
        &second[128..],
        &[0xc7],
        &third[..128],
        &[0xc7],
        &third[128..],
    ]);
    let expected = [
        msg(7, 10, 9, 1, &first),
        msg(7, 10 + delta, 9, 1, &second),
        msg(7, 10 + 2 * delta, 9, 1, &third),
    ];
    check(Setup::default(), &adobe, &expected);
    check(Setup::default(), &omitted, &expected);
}

/// With the extension omitted and the last chunk of the input shorter than four bytes, the
/// message is complete but the decoder waits for four bytes to compare with the extended value.
/// The first byte already differs from the extended timestamp's first byte (0x01 vs 0xaa), so
/// the four bytes cannot be a repeat and the chunk can be taken as it is.
#[test]
fn omitted_extended_timestamp_short_last_chunk_is_not_held_back() {
    let timestamp = 0x0100_0000;
    let payload = [0xaa, 0xbb, 0xcc];
    let bytes = cat(&[&type0(4, timestamp, 3, 9, 1), &payload[..2], &[0xc4], &payload[2..]]);
    check(Setup::chunk_size(2), &bytes, &[msg(4, timestamp, 9, 1, &payload)]);
}

#[test]
fn timestamps_wrap_at_32_bits() {
    let bytes = cat(&[
        &type0(4, 0xffff_fff0, 1, 8, 1),
        &[1],
        &type2(4, 0x20),
        &[2],
        &type3(4),
        &[3],
        &type1(4, 0xffff_ffff, 1, 8), // an extended delta of -1, mod 2^32
        &[4],
        &type0(5, 0xffff_ff00, 1, 9, 1),
        &[5],
        &type2(5, 0x0100_0000),
        &[6],
    ]);
    check(
        Setup::default(),
        &bytes,
        &[
            msg(4, 0xffff_fff0, 8, 1, &[1]),
            msg(4, 0x10, 8, 1, &[2]),
            msg(4, 0x30, 8, 1, &[3]),
            msg(4, 0x2f, 8, 1, &[4]),
            msg(5, 0xffff_ff00, 9, 1, &[5]),
            msg(5, 0x00ff_ff00, 9, 1, &[6]),
        ],
    );
}

// ---------------------------------------------------------------------------------------------
// Interleaving, control messages, sizes.

#[test]
fn interleaved_audio_and_video_reassemble_separately() {
    let audio = pattern(300, 11);
    let video = pattern(400, 22);
    let audio2 = pattern(129, 33);
    let bytes = cat(&[
        &type0(4, 100, 300, 8, 1),
        &audio[..128],
        &type0(6, 90, 400, 9, 1),
        &video[..128],
        &type3(4),
        &audio[128..256],
        &type3(6),
        &video[128..256],
        &type3(4),
        &audio[256..], // audio complete, video still not
        &type3(6),
        &video[256..384],
        &type1(4, 23, 129, 8), // the next audio message starts while video is incomplete
        &audio2[..128],
        &type3(6),
        &video[384..],
        &type3(4),
        &audio2[128..],
    ]);
    check(
        Setup::default(),
        &bytes,
        &[msg(4, 100, 8, 1, &audio), msg(6, 90, 9, 1, &video), msg(4, 123, 8, 1, &audio2)],
    );
}

#[test]
fn set_chunk_size_applies_to_the_next_chunk_in_the_same_input() {
    let big = pattern(1000, 5);
    let small = pattern(40, 6);
    let bytes = cat(&[
        &control(type_id::SET_CHUNK_SIZE, 4096),
        &type0(6, 0, 1000, 9, 1),
        &big, // one chunk at 4096
        &control(type_id::SET_CHUNK_SIZE, 16),
        &type0(6, 1, 40, 9, 1),
        &small[..16],
        &[0xc6],
        &small[16..32],
        &[0xc6],
        &small[32..],
    ]);
    let decoder = check(
        Setup::default(),
        &bytes,
        &[
            msg(2, 0, type_id::SET_CHUNK_SIZE, 0, &4096u32.to_be_bytes()),
            msg(6, 0, 9, 1, &big),
            msg(2, 0, type_id::SET_CHUNK_SIZE, 0, &16u32.to_be_bytes()),
            msg(6, 1, 9, 1, &small),
        ],
    );
    assert_eq!(decoder.chunk_size(), 16);
}

/// Set Chunk Size between two chunks of the same message: the rest is cut at the new size.
#[test]
fn set_chunk_size_mid_message() {
    let payload = pattern(300, 8);
    let bytes = cat(&[
        &type0(6, 0, 300, 9, 1),
        &payload[..128],
        &control(type_id::SET_CHUNK_SIZE, 100),
        &[0xc6],
        &payload[128..228],
        &[0xc6],
        &payload[228..],
    ]);
    check(
        Setup::default(),
        &bytes,
        &[msg(2, 0, type_id::SET_CHUNK_SIZE, 0, &100u32.to_be_bytes()), msg(6, 0, 9, 1, &payload)],
    );
}

/// Protocol control messages count only on message stream 0.
#[test]
fn set_chunk_size_on_a_media_stream_is_not_applied() {
    let mut bytes = type0(2, 0, 4, type_id::SET_CHUNK_SIZE, 1);
    bytes.extend_from_slice(&16u32.to_be_bytes());
    let payload = pattern(100, 1);
    bytes.extend_from_slice(&cat(&[&type0(6, 0, 100, 9, 1), &payload]));
    let decoder = check(
        Setup::default(),
        &bytes,
        &[msg(2, 0, type_id::SET_CHUNK_SIZE, 1, &16u32.to_be_bytes()), msg(6, 0, 9, 1, &payload)],
    );
    assert_eq!(decoder.chunk_size(), DEFAULT_CHUNK_SIZE);
}

#[test]
fn abort_drops_the_partial_message() {
    let dropped = pattern(300, 1);
    let kept = pattern(3, 2);
    let bytes = cat(&[
        &type0(4, 0, 300, 8, 1),
        &dropped[..128],
        &control(type_id::ABORT, 4),
        // A type 0 header is legal again: nothing is in progress on csid 4.
        &type0(4, 10, 3, 8, 1),
        &kept,
    ]);
    check(
        Setup::default(),
        &bytes,
        &[msg(2, 0, type_id::ABORT, 0, &4u32.to_be_bytes()), msg(4, 10, 8, 1, &kept)],
    );
    // The partial bytes are released at the Abort.
    let mut decoder = ChunkDecoder::new(Limits::default());
    let mut input = BytesMut::from(&bytes[..12 + 128]);
    assert_eq!(decoder.decode(&mut input), Ok(None));
    assert_eq!(decoder.partial_bytes(), 128);
    input.extend_from_slice(&control(type_id::ABORT, 4));
    assert!(decoder.decode(&mut input).unwrap().is_some());
    assert_eq!(decoder.partial_bytes(), 0);
}

#[test]
fn abort_of_an_idle_or_unknown_chunk_stream_is_harmless() {
    let bytes = cat(&[
        &control(type_id::ABORT, 9),
        &type0(4, 0, 1, 8, 1),
        &[7],
        &control(type_id::ABORT, 4),
        &type3(4),
        &[8],
    ]);
    check(
        Setup::default(),
        &bytes,
        &[
            msg(2, 0, type_id::ABORT, 0, &9u32.to_be_bytes()),
            msg(4, 0, 8, 1, &[7]),
            msg(2, 0, type_id::ABORT, 0, &4u32.to_be_bytes()),
            msg(4, 0, 8, 1, &[8]),
        ],
    );
}

#[test]
fn zero_length_messages() {
    let bytes = cat(&[
        &type0(3, 5, 0, 9, 1),
        &type3(3), // a new, also empty, message 5 ms later
        &type2(3, 1),
        &type1(3, 1, 0, 8),
        &type0(4, 0, 2, 8, 1),
        &[1],
        &type3(4),
        &[2],
    ]);
    let expected = [
        msg(3, 5, 9, 1, &[]),
        msg(3, 10, 9, 1, &[]),
        msg(3, 11, 9, 1, &[]),
        msg(3, 12, 8, 1, &[]),
        msg(4, 0, 8, 1, &[1, 2]),
    ];
    check(Setup::chunk_size(1), &bytes, &expected);
}

#[test]
fn message_exactly_one_chunk_long() {
    let first = pattern(128, 1);
    let second = pattern(128, 2);
    let third = pattern(129, 3);
    let bytes = cat(&[
        &type0(4, 7, 128, 9, 1),
        &first,
        // The message above is complete, so this type 3 starts a new one.
        &type3(4),
        &second,
        &type1(4, 1, 129, 9),
        &third[..128],
        &type3(4),
        &third[128..],
    ]);
    check(
        Setup::default(),
        &bytes,
        &[msg(4, 7, 9, 1, &first), msg(4, 14, 9, 1, &second), msg(4, 15, 9, 1, &third)],
    );
}

#[test]
fn chunk_size_one() {
    let payload = [0x10, 0x20, 0x30, 0x40, 0x50];
    let mut bytes = control(type_id::SET_CHUNK_SIZE, 1);
    bytes.extend_from_slice(&type0(4, 3, 5, 8, 1));
    for (i, byte) in payload.iter().enumerate() {
        if i > 0 {
            bytes.extend_from_slice(&type3(4));
        }
        bytes.push(*byte);
    }
    let decoder = check(
        Setup::default(),
        &bytes,
        &[msg(2, 0, type_id::SET_CHUNK_SIZE, 0, &1u32.to_be_bytes()), msg(4, 3, 8, 1, &payload)],
    );
    assert_eq!(decoder.chunk_size(), 1);
}

/// Chunk size 1 with an extended timestamp: each one-byte piece is preceded by the four-byte
/// repeat (Adobe) or not (omitted); a trailing message follows so the last piece is never the
/// end of the input.
#[test]
fn chunk_size_one_with_extended_timestamp() {
    let timestamp = 0x0102_0304;
    let payload = [0x10, 0x20, 0x30, 0x40, 0x50];
    let mut adobe = type0(4, timestamp, 5, 8, 1);
    let mut omitted = adobe.clone();
    for (i, byte) in payload.iter().enumerate() {
        if i > 0 {
            adobe.extend_from_slice(&type3(4));
            adobe.extend_from_slice(&timestamp.to_be_bytes());
            omitted.extend_from_slice(&type3(4));
        }
        adobe.push(*byte);
        omitted.push(*byte);
    }
    let trailer = cat(&[&type0(5, 9, 1, 9, 1), &[0xee]]);
    let expected = [msg(4, timestamp, 8, 1, &payload), msg(5, 9, 9, 1, &[0xee])];
    check(Setup::chunk_size(1), &cat(&[&adobe, &trailer]), &expected);
    check(Setup::chunk_size(1), &cat(&[&omitted, &trailer]), &expected);
}

/// A type 1 or 2 header in the middle of a message that keeps its length and type is a
/// continuation (SRS accepts it too): the message keeps the timestamp it started with.
#[test]
fn repeated_header_mid_message_is_a_continuation() {
    let payload = pattern(300, 4);
    let bytes = cat(&[
        &type0(4, 50, 300, 9, 1),
        &payload[..128],
        &type1(4, 33, 300, 9),
        &payload[128..256],
        &type2(4, 33),
        &payload[256..],
    ]);
    check(Setup::default(), &bytes, &[msg(4, 50, 9, 1, &payload)]);
}

// ---------------------------------------------------------------------------------------------
// The encoder, byte for byte.

#[test]
fn encoder_golden_vectors() {
    let encode = |chunk_size, csid, timestamp, payload: &[u8]| {
        let header =
            MessageHeader { timestamp: RtmpTimestamp(timestamp), type_id: 9, stream_id: 1 };
        let encoder = ChunkEncoder::new(chunk_size);
        let mut out = BytesMut::new();
        encoder.encode(csid, &header, payload, &mut out);
        assert_eq!(out.len(), encoder.encoded_len(csid, &header, payload.len()));
        out.to_vec()
    };
    let payload = pattern(300, 1);
    #[rustfmt::skip]
    let expected_head = [
        0x06, 0xff, 0xff, 0xff, 0x00, 0x01, 0x2c, 0x09, 0x01, 0x00, 0x00, 0x00,
        0x01, 0x23, 0x45, 0x67,
    ];
    let adobe = cat(&[
        &expected_head,
        &payload[..128],
        &[0xc6, 0x01, 0x23, 0x45, 0x67],
        &payload[128..256],
        &[0xc6, 0x01, 0x23, 0x45, 0x67],
        &payload[256..],
    ]);
    assert_eq!(encode(128, 6, 0x0123_4567, &payload), adobe);
    #[rustfmt::skip]
    assert_eq!(
        encode(2, 64, 1, &[1, 2, 3]),
        [0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x03, 0x09, 0x01, 0x00, 0x00, 0x00, 1, 2,
         0xc0, 0x00, 3]
    );
    #[rustfmt::skip]
    assert_eq!(
        encode(2, 65599, 1, &[1, 2, 3]),
        [0x01, 0xff, 0xff, 0x00, 0x00, 0x01, 0x00, 0x00, 0x03, 0x09, 0x01, 0x00, 0x00, 0x00,
         1, 2, 0xc1, 0xff, 0xff, 3]
    );
    // An empty message is one header and nothing else.
    assert_eq!(encode(128, 3, 0, &[]), type0(3, 0, 0, 9, 1));
    // The encoder's chunk size is clamped into 1..=MAX_CHUNK_SIZE.
    assert_eq!(ChunkEncoder::new(0).chunk_size(), 1);
    assert_eq!(ChunkEncoder::new(u32::MAX).chunk_size(), MAX_CHUNK_SIZE);
}

// ---------------------------------------------------------------------------------------------
// Errors and limits.

fn small_limits() -> Limits {
    Limits { max_message_len: 1000, max_chunk_streams: 3, max_partial_bytes: 200 }
}

#[test]
fn message_too_long_from_the_header_alone() {
    let setup = Setup::limits(small_limits());
    check_err(
        setup,
        &type0(4, 0, 1001, 9, 1),
        &[],
        DecodeError::MessageTooLong { csid: 4, length: 1001, limit: 1000 },
    );
    // At the limit is fine; the header alone is just "need more".
    let outcome = run(setup, &type0(4, 0, 1000, 9, 1), usize::MAX);
    assert_eq!((outcome.error, outcome.messages.len()), (None, 0));
    // Type 1 headers declare lengths too, also on a fresh chunk stream.
    let bytes = cat(&[&type0(4, 0, 1, 9, 1), &[1], &type1(4, 0, 1001, 9)]);
    check_err(
        setup,
        &bytes,
        &[msg(4, 0, 9, 1, &[1])],
        DecodeError::MessageTooLong { csid: 4, length: 1001, limit: 1000 },
    );
    check_err(
        setup,
        &type1(5, 0, 0xff_ffff, 9),
        &[],
        DecodeError::MessageTooLong { csid: 5, length: 0xff_ffff, limit: 1000 },
    );
    check_err(
        Setup::default(),
        &type0(4, 0, 0xff_ffff, 9, 1),
        &[],
        DecodeError::MessageTooLong { csid: 4, length: 0xff_ffff, limit: 8 * 1024 * 1024 },
    );
}

#[test]
fn too_many_chunk_streams() {
    let bytes = cat(&[
        &type0(3, 0, 1, 9, 1),
        &[1],
        &type0(4, 0, 1, 9, 1),
        &[2],
        &type0(64, 0, 1, 9, 1),
        &[3],
    ]);
    let expected = [msg(3, 0, 9, 1, &[1]), msg(4, 0, 9, 1, &[2]), msg(64, 0, 9, 1, &[3])];
    let setup = Setup::limits(small_limits());
    let decoder = check(setup, &bytes, &expected);
    assert_eq!(decoder.chunk_stream_count(), 3);
    // Known chunk streams stay usable...
    let more = cat(&[&bytes, &type3(4), &[4]]);
    let mut with_more = expected.to_vec();
    with_more.push(msg(4, 0, 9, 1, &[4]));
    check(setup, &more, &with_more);
    // ...a fourth one is refused at its header.
    check_err(
        setup,
        &cat(&[&bytes, &type0(320, 0, 1, 9, 1)]),
        &expected,
        DecodeError::TooManyChunkStreams { limit: 3 },
    );
}

#[test]
fn partial_bytes_exceeded() {
    let setup = Setup::limits(small_limits());
    let payload = pattern(1000, 1);
    // 128 bytes held after the first chunk; the second would make 256 > 200.
    check_err(
        setup,
        &cat(&[&type0(4, 0, 1000, 9, 1), &payload[..128], &type3(4)]),
        &[],
        DecodeError::PartialBytesExceeded { limit: 200 },
    );
    // Two chunk streams together.
    check_err(
        setup,
        &cat(&[&type0(4, 0, 150, 9, 1), &payload[..128], &type0(6, 0, 150, 9, 1)]),
        &[],
        DecodeError::PartialBytesExceeded { limit: 200 },
    );
    // A chunk that completes its message releases what it adds: 128 + 122 is fine.
    check(
        setup,
        &cat(&[&type0(4, 0, 250, 9, 1), &payload[..128], &type3(4), &payload[128..250]]),
        &[msg(4, 0, 9, 1, &payload[..250])],
    );
}

#[test]
fn no_previous_header() {
    check_err(
        Setup::default(),
        &type2(4, 1),
        &[],
        DecodeError::NoPreviousHeader { csid: 4, fmt: 2 },
    );
    check_err(Setup::default(), &type3(4), &[], DecodeError::NoPreviousHeader { csid: 4, fmt: 3 });
    check_err(
        Setup::default(),
        &cat(&[&type0(4, 0, 1, 9, 1), &[1], &type3(320)]),
        &[msg(4, 0, 9, 1, &[1])],
        DecodeError::NoPreviousHeader { csid: 320, fmt: 3 },
    );
}

#[test]
fn new_message_mid_message() {
    let payload = pattern(300, 1);
    check_err(
        Setup::default(),
        &cat(&[&type0(4, 0, 300, 9, 1), &payload[..128], &type0(4, 0, 300, 9, 1)]),
        &[],
        DecodeError::NewMessageMidMessage { csid: 4 },
    );
}

#[test]
fn length_changed_mid_message() {
    let payload = pattern(300, 1);
    let start = cat(&[&type0(4, 0, 300, 9, 1), &payload[..128]]);
    check_err(
        Setup::default(),
        &cat(&[&start, &type1(4, 0, 200, 9)]),
        &[],
        DecodeError::LengthChangedMidMessage { csid: 4, was: 300, now: 200 },
    );
    // A type change is refused the same way.
    check_err(
        Setup::default(),
        &cat(&[&start, &type1(4, 0, 300, 8)]),
        &[],
        DecodeError::LengthChangedMidMessage { csid: 4, was: 300, now: 300 },
    );
}

#[test]
fn invalid_chunk_size() {
    check_err(
        Setup::default(),
        &control(type_id::SET_CHUNK_SIZE, 0),
        &[],
        DecodeError::InvalidChunkSize(0),
    );
    check_err(
        Setup::default(),
        &control(type_id::SET_CHUNK_SIZE, 0x8000_0000),
        &[],
        DecodeError::InvalidChunkSize(0x8000_0000),
    );
    let mut decoder = ChunkDecoder::new(Limits::default());
    assert_eq!(decoder.set_chunk_size(0), Err(DecodeError::InvalidChunkSize(0)));
    assert_eq!(decoder.set_chunk_size(MAX_CHUNK_SIZE), Ok(()));
    assert_eq!(decoder.chunk_size(), MAX_CHUNK_SIZE);
}

#[test]
fn short_control_messages() {
    let mut bytes = type0(2, 0, 3, type_id::SET_CHUNK_SIZE, 0);
    bytes.extend_from_slice(&[0, 0, 1]);
    check_err(
        Setup::default(),
        &bytes,
        &[],
        DecodeError::ShortControlMessage { type_id: type_id::SET_CHUNK_SIZE },
    );
    check_err(
        Setup::default(),
        &type0(2, 0, 0, type_id::ABORT, 0),
        &[],
        DecodeError::ShortControlMessage { type_id: type_id::ABORT },
    );
}

/// A header may declare 8 MiB; until the bytes are there nothing is consumed or held, and
/// afterwards only what arrived is held.
#[test]
fn declared_length_is_not_reserved() {
    let declared = Limits::default().max_message_len;
    let header = type0(6, 0, declared, 9, 1);
    for chunk_size in [DEFAULT_CHUNK_SIZE, 65536, MAX_CHUNK_SIZE] {
        let mut decoder = Setup::chunk_size(chunk_size).decoder();
        let mut input = BytesMut::from(&header[..]);
        input.extend_from_slice(&pattern(10, 1));
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.partial_bytes(), 0);
        assert_eq!(input.len(), header.len() + 10, "a partial chunk stays in the input");
        assert_eq!(decoder.chunk_stream_count(), 0);
    }
    // In 128-byte chunks the decoder holds exactly what it has been sent.
    let mut decoder = ChunkDecoder::new(Limits::default());
    let mut input = BytesMut::from(&header[..]);
    input.extend_from_slice(&pattern(128, 1));
    for chunks in 1..=10 {
        assert_eq!(decoder.decode(&mut input), Ok(None));
        assert_eq!(decoder.partial_bytes(), 128 * chunks);
        assert!(input.is_empty());
        input.extend_from_slice(&type3(6));
        input.extend_from_slice(&pattern(128, chunks as u8));
    }
}

// ---------------------------------------------------------------------------------------------
// Properties.

fn csid_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![2u32..=5, 62u32..=66, 318u32..=322, 65590u32..=MAX_CSID, 2u32..=MAX_CSID]
}

fn timestamp_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..100, 0xff_fff0u32..0x100_0010, Just(u32::MAX), any::<u32>()]
}

fn chunk_size_strategy() -> impl Strategy<Value = u32> {
    prop_oneof![1u32..=8, 120u32..=140, 1u32..=70_000]
}

fn message_strategy() -> impl Strategy<Value = RawMessage> {
    (
        csid_strategy(),
        timestamp_strategy(),
        // Set Chunk Size and Abort on stream 0 would act on the decoder; they have tests above.
        3u8..=255,
        any::<u32>(),
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::collection::vec(any::<u8>(), 0..20_000)
        ],
    )
        .prop_map(|(csid, timestamp, type_id, stream_id, payload)| RawMessage {
            csid,
            header: MessageHeader { timestamp: RtmpTimestamp(timestamp), type_id, stream_id },
            payload: payload.into(),
        })
}

/// Feeds `bytes` in pieces of the given sizes, cycling through them.
fn decode_split(decoder: &mut ChunkDecoder, bytes: &[u8], pieces: &[usize]) -> Vec<RawMessage> {
    let mut input = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    for &piece in pieces.iter().cycle() {
        if pos == bytes.len() {
            break;
        }
        let end = (pos + piece).min(bytes.len());
        input.extend_from_slice(&bytes[pos..end]);
        pos = end;
        while let Some(message) = decoder.decode(&mut input).expect("valid encoder output") {
            out.push(message);
        }
    }
    assert!(input.is_empty());
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn encoder_decoder_round_trip(
        messages in proptest::collection::vec(message_strategy(), 1..6),
        chunk_size in chunk_size_strategy(),
        pieces in proptest::collection::vec(1usize..6000, 1..12),
    ) {
        let encoder = ChunkEncoder::new(chunk_size);
        let mut wire = BytesMut::new();
        for m in &messages {
            let before = wire.len();
            encoder.encode(m.csid, &m.header, &m.payload, &mut wire);
            prop_assert_eq!(
                wire.len() - before,
                encoder.encoded_len(m.csid, &m.header, m.payload.len())
            );
        }
        let mut decoder = ChunkDecoder::new(Limits::default());
        decoder.set_chunk_size(chunk_size).unwrap();
        let decoded = decode_split(&mut decoder, &wire, &pieces);
        prop_assert_eq!(decoded, messages);
        prop_assert_eq!(decoder.partial_bytes(), 0);
    }

    #[test]
    fn encoded_len_is_exact(
        csid in csid_strategy(),
        timestamp in timestamp_strategy(),
        len in 0usize..20_000,
        chunk_size in chunk_size_strategy(),
    ) {
        let header = MessageHeader { timestamp: RtmpTimestamp(timestamp), type_id: 9, stream_id: 1 };
        let encoder = ChunkEncoder::new(chunk_size);
        let mut out = BytesMut::new();
        encoder.encode(csid, &header, &vec![0x5a; len], &mut out);
        prop_assert_eq!(out.len(), encoder.encoded_len(csid, &header, len));
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        piece in prop_oneof![1usize..8, 1usize..5000],
        small in any::<bool>(),
    ) {
        let limits = if small { small_limits() } else { Limits::default() };
        // `run` checks the partial-bytes limit after every call.
        let outcome = run(Setup::limits(limits), &bytes, piece);
        prop_assert!(outcome.decoder.chunk_stream_count() <= limits.max_chunk_streams);
    }

    /// Chunk-shaped noise: real headers with random fields on a few chunk streams, so that
    /// reassembly, the limits and the extended-timestamp guess are reached far more often than
    /// by random bytes.
    #[test]
    fn chunk_shaped_noise_never_panics_and_respects_limits(
        chunks in proptest::collection::vec(
            (
                0u8..4,
                prop_oneof![Just(2u32), Just(3), Just(4), Just(64), Just(320)],
                prop_oneof![0u32..10, 0xff_fff0u32..0x100_0010],
                0u32..600,
                prop_oneof![Just(1u8), Just(2), Just(8), Just(9), any::<u8>()],
                any::<u32>(),
                proptest::collection::vec(any::<u8>(), 0..300),
            ),
            0..40,
        ),
        piece in prop_oneof![1usize..8, 1usize..5000],
        limits in (1u32..700, 1usize..5, 1usize..700).prop_map(|(len, streams, partial)| Limits {
            max_message_len: len,
            max_chunk_streams: streams,
            max_partial_bytes: partial,
        }),
        chunk_size in chunk_size_strategy(),
    ) {
        let mut bytes = Vec::new();
        for (fmt, csid, time, len, type_id, stream_id, payload) in chunks {
            bytes.extend_from_slice(&match fmt {
                0 => type0(csid, time, len, type_id, stream_id),
                1 => type1(csid, time, len, type_id),
                2 => type2(csid, time),
                _ => type3(csid),
            });
            bytes.extend_from_slice(&payload);
        }
        let setup = Setup { limits, chunk_size };
        let outcome = run(setup, &bytes, piece);
        prop_assert!(outcome.decoder.chunk_stream_count() <= limits.max_chunk_streams);
        for message in &outcome.messages {
            prop_assert!(message.payload.len() <= limits.max_message_len as usize);
        }
    }
}
