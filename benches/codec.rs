//! Protocol codec micro-benchmarks: chunk encode and decode throughput, AMF0 decode of real
//! ffmpeg payloads, onStatus encode.
//!
//! `cargo bench --bench codec` (add `-- FILTER` to run the rows whose name contains FILTER).
//! See `benches/harness/mod.rs` for how figures are taken.

mod harness;

use bytes::{Bytes, BytesMut};
use harness::{
    black_box, fmt_allocs, fmt_faults, fmt_gbps, fmt_ns, payload, Harness, Results, Suite, Table,
};
use rtmp_proto::amf0::{self, Amf0Value, AmfLimits};
use rtmp_proto::chunk::{ChunkDecoder, ChunkEncoder, Limits, MessageHeader};
use rtmp_proto::command::{self, code, level};
use rtmp_proto::message::{csid, type_id};
use rtmp_proto::session::MediaKind;
use rtmp_proto::time::RtmpTimestamp;
use rtmp_relay::stream::Frame;

/// AMF0 body of ffmpeg's `connect` command, as captured.
const FFMPEG_CONNECT: &[u8] = include_bytes!("../proto/tests/data/ffmpeg_connect_amf0.bin");
/// ffmpeg's `@setDataFrame onMetaData` data message body, as captured.
const FFMPEG_SET_DATA_FRAME: &[u8] =
    include_bytes!("../proto/tests/data/amf0_ffmpeg_setdataframe.bin");
/// First bytes of real H.264 FLV video tags (key and inter frame) from ffmpeg.
const VIDEO_KEY_HEAD: &[u8] =
    include_bytes!("../proto/tests/data/media_h264_high_720p_aac_video_key.bin");
const VIDEO_INTER_HEAD: &[u8] =
    include_bytes!("../proto/tests/data/media_h264_high_720p_aac_video_inter.bin");

const CHUNK_SIZES: [u32; 3] = [128, 4096, 65536];
const KIB: usize = 1024;
/// What the relay reads from a publisher socket at once.
const READ_SIZE: usize = 64 * KIB;
/// AAC-LC at 128 kbit/s and 48 kHz: 1024 samples a frame, 46.9 frames a second, ~341 bytes each.
const AUDIO_FRAME_LEN: usize = 341;

/// Builds a section's table once the suite has run.
type TableFn = Box<dyn FnOnce(&Results) -> Table>;

fn main() {
    let h = Harness::from_args();
    let mut suite = Suite::new(&h);
    let tables: Vec<TableFn> = vec![encode(&mut suite), decode(&mut suite), amf(&mut suite)];
    let results = suite.run();
    for table in tables {
        table(&results).print(&h);
    }
}

fn header(timestamp: u32, type_id: u8) -> MessageHeader {
    MessageHeader { timestamp: RtmpTimestamp(timestamp), type_id, stream_id: 1 }
}

fn encode(suite: &mut Suite<'_>) -> TableFn {
    let mut rows = Vec::new();
    for len in [10 * KIB, 100 * KIB] {
        let video = payload(VIDEO_INTER_HEAD, len, 1);
        for chunk_size in CHUNK_SIZES {
            let name = format!("{} KB video @ {chunk_size}", len / KIB);
            let encoder = ChunkEncoder::new(chunk_size);
            let header = header(40_000, type_id::VIDEO);
            let encoded_len = encoder.encoded_len(csid::VIDEO, &header, len);
            let mut out = BytesMut::with_capacity(encoded_len);
            let video = video.clone();
            let id = suite.add_fn(&format!("encode {name}"), move || {
                out.clear();
                encoder.encode(csid::VIDEO, &header, black_box(&video), &mut out);
                assert_eq!(out.len(), encoded_len);
            });
            rows.extend(id.map(|id| (name, id, len)));
        }
    }
    // What `Stream::relay` pays per message before fan-out: classify, then encode into a buffer
    // of its own that becomes the shared `Bytes`.
    for len in [10 * KIB, 100 * KIB] {
        let name = format!("Frame::new {} KB video @ 4096 (fresh buffer)", len / KIB);
        let video = Bytes::from(payload(VIDEO_INTER_HEAD, len, 2));
        let encoder = ChunkEncoder::new(4096);
        let id = suite.add_fn(&format!("encode {name}"), move || {
            Frame::new(MediaKind::Video, RtmpTimestamp(40_000), video.clone(), false, &encoder)
        });
        rows.extend(id.map(|id| (name, id, len)));
    }
    Box::new(move |results| {
        let mut table = Table::new(
            "chunk encode: one video message into a reused buffer (throughput = payload bytes)",
            &[
                "message @ chunk size",
                "median",
                "min",
                "IQR",
                "passes",
                "throughput",
                "allocs/op",
                "faults/op",
            ],
        );
        for (name, id, len) in rows {
            let stats = results.one(id);
            table.row(vec![
                name,
                fmt_ns(stats.median),
                fmt_ns(stats.min),
                stats.iqr(),
                stats.passes(),
                fmt_gbps(len, stats.median),
                fmt_allocs(stats.allocs),
                fmt_faults(stats.faults),
            ]);
        }
        table
    })
}

/// One second of a publisher's stream at `chunk_size`, as it arrives on the socket: Set Chunk
/// Size, then 30 fps of 10 KB video on chunk stream 7 and ~45 fps of AAC audio on chunk stream
/// 6. One audio message goes right after the first chunk of each video message (so at chunk
/// sizes below 10 KB it lands mid-message and both chunk streams hold state), and every other
/// video message is followed by a second one.
struct Wire {
    bytes: Vec<u8>,
    /// (type id, payload) of every message, in the order the decoder completes them.
    messages: Vec<(u8, Vec<u8>)>,
}

fn interleaved_wire(chunk_size: u32) -> Wire {
    let mut bytes = BytesMut::new();
    let mut messages = Vec::new();
    let control = MessageHeader {
        timestamp: RtmpTimestamp(0),
        type_id: type_id::SET_CHUNK_SIZE,
        stream_id: 0,
    };
    ChunkEncoder::default().encode(csid::CONTROL, &control, &chunk_size.to_be_bytes(), &mut bytes);
    messages.push((type_id::SET_CHUNK_SIZE, chunk_size.to_be_bytes().to_vec()));

    let encoder = ChunkEncoder::new(chunk_size);
    let mut audio_count = 0u32;
    let mut push_audio = |bytes: &mut BytesMut, messages: &mut Vec<(u8, Vec<u8>)>| {
        let audio = payload(&[0xaf, 0x01], AUDIO_FRAME_LEN, 1000 + u64::from(audio_count));
        let timestamp = audio_count * 1024 * 1000 / 48_000;
        encoder.encode(csid::AUDIO, &header(timestamp, type_id::AUDIO), &audio, bytes);
        messages.push((type_id::AUDIO, audio));
        audio_count += 1;
    };
    for i in 0..30u32 {
        let head = if i == 0 { VIDEO_KEY_HEAD } else { VIDEO_INTER_HEAD };
        let video = payload(head, 10 * KIB, 100 + u64::from(i));
        let mut chunks = BytesMut::new();
        encoder.encode(csid::VIDEO, &header(i * 1000 / 30, type_id::VIDEO), &video, &mut chunks);
        // Basic header (1 byte for csid 7) + type 0 message header (11), then the first piece.
        let first = 12 + video.len().min(chunk_size as usize);
        bytes.extend_from_slice(&chunks[..first]);
        if first == chunks.len() {
            // The video message is complete before the audio message starts.
            messages.push((type_id::VIDEO, video.clone()));
        }
        push_audio(&mut bytes, &mut messages);
        if first < chunks.len() {
            bytes.extend_from_slice(&chunks[first..]);
            messages.push((type_id::VIDEO, video));
        }
        if i % 2 == 1 {
            push_audio(&mut bytes, &mut messages);
        }
    }
    Wire { bytes: bytes.to_vec(), messages }
}

/// Feeds `wire` in socket-sized reads, decoding every complete message: what a publisher's
/// connection does with each read. Returns the number of messages.
fn decode_wire(
    decoder: &mut ChunkDecoder,
    input: &mut BytesMut,
    wire: &[u8],
    mut on_message: impl FnMut(u8, Bytes),
) -> usize {
    let mut count = 0;
    for read in wire.chunks(READ_SIZE) {
        input.extend_from_slice(read);
        while let Some(message) = decoder.decode(input).expect("the bench stream is valid") {
            on_message(message.header.type_id, message.payload);
            count += 1;
        }
    }
    count
}

fn decode(suite: &mut Suite<'_>) -> TableFn {
    let mut rows = Vec::new();
    for chunk_size in CHUNK_SIZES {
        let wire = interleaved_wire(chunk_size);
        // Correctness first: every message comes out whole and in order.
        let mut decoder = ChunkDecoder::new(Limits::default());
        let mut input = BytesMut::with_capacity(READ_SIZE);
        let mut decoded = Vec::new();
        decode_wire(&mut decoder, &mut input, &wire.bytes, |t, p| decoded.push((t, p.to_vec())));
        assert!(decoded == wire.messages, "decoded messages differ from those encoded");
        assert!(input.is_empty());

        // The decoder and read buffer persist across iterations, as on a live connection.
        let (messages, wire_len) = (wire.messages.len(), wire.bytes.len());
        let id = suite.add_fn(&format!("decode {chunk_size}"), move || {
            let n = decode_wire(&mut decoder, &mut input, black_box(&wire.bytes), |_, p| {
                black_box(p);
            });
            assert_eq!(n, messages);
        });
        rows.extend(id.map(|id| (chunk_size, id, messages, wire_len)));
    }
    Box::new(move |results| {
        let mut table = Table::new(
            "chunk decode: 1 s of 10 KB video (30 fps, csid 7) + AAC audio (45 fps, csid 6), \
             interleaved, fed in 64 KiB reads (throughput = wire bytes)",
            &[
                "chunk size",
                "per 1 s of media",
                "min",
                "IQR",
                "passes",
                "throughput",
                "per message",
                "allocs/message",
                "faults/message",
            ],
        );
        for (chunk_size, id, messages, wire_len) in rows {
            let stats = results.one(id);
            table.row(vec![
                chunk_size.to_string(),
                fmt_ns(stats.median),
                fmt_ns(stats.min),
                stats.iqr(),
                stats.passes(),
                fmt_gbps(wire_len, stats.median),
                fmt_ns(stats.median / messages as f64),
                fmt_allocs(stats.allocs / messages as f64),
                fmt_faults(stats.faults / messages as f64),
            ]);
        }
        table
    })
}

fn amf(suite: &mut Suite<'_>) -> TableFn {
    let limits = AmfLimits::default();
    let mut rows = Vec::new();

    let name = format!("amf0::decode ffmpeg connect ({} B)", FFMPEG_CONNECT.len());
    let values = amf0::decode(FFMPEG_CONNECT, &limits).expect("ffmpeg connect decodes");
    assert_eq!(values[0].as_str(), Some("connect"));
    let id = suite.add_fn(&name, move || amf0::decode(black_box(FFMPEG_CONNECT), &limits));
    rows.extend(id.map(|id| (name, id)));

    let name =
        format!("amf0::decode ffmpeg @setDataFrame onMetaData ({} B)", FFMPEG_SET_DATA_FRAME.len());
    let values = amf0::decode(FFMPEG_SET_DATA_FRAME, &limits).expect("ffmpeg metadata decodes");
    assert_eq!(values[1].as_str(), Some("onMetaData"));
    assert!(values[2].get("width").is_some());
    let id = suite.add_fn(&name, move || amf0::decode(black_box(FFMPEG_SET_DATA_FRAME), &limits));
    rows.extend(id.map(|id| (name, id)));

    let status = || {
        command::on_status(level::STATUS, code::PLAY_START, "Started playing cam1.", Some("cam1"))
    };
    let name = "onStatus Play.Start: build + encode".to_owned();
    let mut out = BytesMut::with_capacity(256);
    let id = suite.add_fn(&name, move || {
        out.clear();
        status().encode(&mut out);
        black_box(out.len())
    });
    rows.extend(id.map(|id| (name, id)));

    let name = "onStatus Play.Start: encode a built message".to_owned();
    let message = status();
    let mut out = BytesMut::with_capacity(256);
    message.encode(&mut out);
    let decoded = amf0::decode(&out, &limits).expect("onStatus decodes");
    assert_eq!(decoded[3].get("code").and_then(Amf0Value::as_str), Some(code::PLAY_START));
    let id = suite.add_fn(&name, move || {
        out.clear();
        black_box(&message).encode(&mut out);
        black_box(out.len())
    });
    rows.extend(id.map(|id| (name, id)));

    Box::new(move |results| {
        let mut table = Table::new(
            "AMF0 and commands (decode includes dropping the decoded values)",
            &["operation", "median", "min", "IQR", "passes", "allocs/op", "faults/op"],
        );
        for (name, id) in rows {
            let stats = results.one(id);
            table.row(vec![
                name,
                fmt_ns(stats.median),
                fmt_ns(stats.min),
                stats.iqr(),
                stats.passes(),
                fmt_allocs(stats.allocs),
                fmt_faults(stats.faults),
            ]);
        }
        table
    })
}
