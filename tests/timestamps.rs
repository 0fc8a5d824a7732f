//! The timestamp matrix: every stream is relayed exactly, whatever its time base.
//!
//! Encoders do not all start at zero: hardware encoders stamp wall-clock or running time, a
//! stream relayed from another server arrives hours in, an encoder that reconnects continues
//! its clock. Each case publishes the same shape of stream (headers stamped 0, as ffmpeg sends
//! them, then audio and video) on a different time base, to three players: one waiting on the
//! owner shard before the publish, one waiting on the other shard (fed through a mirror), and
//! one that joins mid-GOP (late-join cache). Every audio and video payload must arrive
//! byte-exact, in order, with the publisher's timestamps, and no player may be judged slow.

mod common;

use std::net::SocketAddr;

use common::*;
use rtmp_proto::chunk::EXTENDED_TIMESTAMP_MARKER;
use rtmp_proto::session::{Media, MediaKind};
use rtmp_relay::ServerHandle;

/// One stream shape on one time base.
#[derive(Debug, Clone, Copy)]
struct Case {
    name: &'static str,
    /// The first video timestamp.
    base: u32,
    /// Audio timestamps are `base + audio_offset + ...`: encoders that start audio and video
    /// clocks apart stamp tracks seconds from each other. Offsets beyond the soft lag (8 s) and
    /// the GOP cache's duration (6 s) show whether either is measured across tracks.
    audio_offset: i32,
    /// Steps video timestamps a few ms back now and then, as B-frame streams stamp DTS.
    non_monotonic: bool,
    /// Leaves the extended timestamp out of type 3 continuation chunks, as some encoders do
    /// (Adobe's spec, ffmpeg and librtmp repeat it).
    omit_extended_repeat: bool,
}

impl Case {
    const fn at(name: &'static str, base: u32) -> Case {
        Case { name, base, audio_offset: 0, non_monotonic: false, omit_extended_repeat: false }
    }
}

/// Video frames per stream: 4 s at 25 fps, a keyframe each second (every 25th frame).
const VIDEO_FRAMES: u32 = 100;
const GOP: u32 = 25;
/// The late joiner joins once this many video frames are out: mid-way through the third GOP.
const LATE_JOIN_AT: u32 = 62;

/// One message of the published stream, as sent.
#[derive(Debug, Clone)]
struct Sent {
    kind: MediaKind,
    timestamp: u32,
    payload: Vec<u8>,
}

/// The stream of `case`: sequence headers at timestamp 0, then video at 25 fps interleaved
/// with AAC at ~43 fps, each frame carrying its sequence number. Some video frames are larger
/// than the chunk size, so their messages continue in type 3 chunks.
fn stream_of(case: Case) -> (Vec<Sent>, Vec<Vec<Sent>>) {
    let headers = vec![
        Sent { kind: MediaKind::Audio, timestamp: 0, payload: AAC_SEQUENCE_HEADER.to_vec() },
        Sent { kind: MediaKind::Video, timestamp: 0, payload: AVC_SEQUENCE_HEADER.to_vec() },
    ];
    // Per video frame: the video message and the audio that goes with it, so the test can
    // pause after any frame.
    let mut frames = Vec::new();
    let mut audio_seq = 0u32;
    for i in 0..VIDEO_FRAMES {
        let mut step = Vec::new();
        let back = if case.non_monotonic && i % 4 == 3 { 7 } else { 0 };
        let video_ts = case.base.wrapping_add(i * 40).wrapping_sub(back);
        let seq = 1000 + i;
        let len = if i % GOP == 0 { 9000 } else { 300 + (i as usize % 9) * 700 };
        step.push(Sent {
            kind: MediaKind::Video,
            timestamp: video_ts,
            payload: video_frame(seq, i % GOP == 0, len),
        });
        // AAC frames are 1024 samples at 44.1 kHz: ~23.2 ms each.
        while audio_seq * 1024 * 1000 / 44_100 <= i * 40 {
            let audio_ts = case
                .base
                .wrapping_add_signed(case.audio_offset)
                .wrapping_add(audio_seq * 1024 * 1000 / 44_100);
            step.push(Sent {
                kind: MediaKind::Audio,
                timestamp: audio_ts,
                payload: audio_frame(5000 + audio_seq),
            });
            audio_seq += 1;
        }
        frames.push(step);
    }
    (headers, frames)
}

/// A complete message in chunks of `chunk_size` whose type 3 continuations do not repeat the
/// extended timestamp (what some encoders send).
fn chunks_without_extended_repeat(
    csid: u8,
    type_id: u8,
    stream_id: u32,
    timestamp: u32,
    payload: &[u8],
    chunk_size: usize,
) -> Vec<u8> {
    assert!(csid < 64);
    let mut out = vec![csid];
    let field = timestamp.min(EXTENDED_TIMESTAMP_MARKER);
    out.extend_from_slice(&field.to_be_bytes()[1..]);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(type_id);
    out.extend_from_slice(&stream_id.to_le_bytes());
    if field == EXTENDED_TIMESTAMP_MARKER {
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    for (i, piece) in payload.chunks(chunk_size).enumerate() {
        if i > 0 {
            out.push(0xc0 | csid);
        }
        out.extend_from_slice(piece);
    }
    out
}

fn send(publisher: &mut Client, case: Case, message: &Sent) {
    let extended = message.timestamp >= EXTENDED_TIMESTAMP_MARKER;
    if case.omit_extended_repeat && extended && message.payload.len() > 4096 {
        let bytes = chunks_without_extended_repeat(
            message.kind.csid() as u8,
            message.kind.type_id(),
            publisher.stream_id,
            message.timestamp,
            &message.payload,
            4096,
        );
        publisher.send_raw(&bytes).expect("raw chunks sent");
    } else {
        publisher.send(message.kind, message.timestamp, &message.payload);
    }
}

/// Two shards with the default slow-player policy (8 s soft lag, 6 s GOP cache). The players
/// read only between the two halves of a stream, so up to ~4 s of media queue for them: real
/// lag, under the threshold.
fn two_shards() -> ServerHandle {
    start_server(|c| {
        c.shards = Some(2);
        c.debug_shard_listeners = true;
    })
}

fn addr(server: &ServerHandle, shard: usize) -> SocketAddr {
    server.shard_addr(shard).expect("debug shard listeners are on")
}

/// A key owned by shard 0.
fn key_on_shard0(server: &ServerHandle, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|k| server.owner_of("live", k) == 0)
        .expect("some key hashes to shard 0")
}

/// The audio and video messages a player receives until the one whose payload is `last`.
fn receive_until(player: &mut Client, last: &[u8], who: &str) -> Vec<Media> {
    let mut received = Vec::new();
    loop {
        let media = player.media(1, WAIT);
        let Some(m) = media.into_iter().next() else {
            panic!("{who}: timed out after {} messages", received.len());
        };
        if m.kind == MediaKind::Data {
            continue;
        }
        let done = m.payload[..] == *last;
        received.push(m);
        if done {
            return received;
        }
    }
}

fn assert_exact(received: &[Media], sent: &[&Sent], who: &str) {
    let describe = |m: &Media| (m.kind, m.timestamp.0, seq_of(m));
    for (i, (got, want)) in received.iter().zip(sent).enumerate() {
        assert_eq!(
            (got.kind, got.timestamp.0),
            (want.kind, want.timestamp),
            "{who}: message {i} differs: got {:?}",
            describe(got)
        );
        assert_eq!(got.payload[..], want.payload[..], "{who}: payload of message {i}");
    }
    assert_eq!(
        received.len(),
        sent.len(),
        "{who}: message count; first received {:?}",
        received.first().map(describe)
    );
}

/// Publishes `case` to the three players, and checks what each receives. `players` wait from
/// before the publish; returns nothing, panics on the first difference.
fn publish_and_check(
    server: &ServerHandle,
    key: &str,
    case: Case,
    publisher_shard: usize,
    waiting: &mut [(&str, &mut Client)],
) {
    let (headers, frames) = stream_of(case);
    let mut publisher = Client::connect(addr(server, publisher_shard), "live");
    assert_eq!(publisher.publish(key), "NetStream.Publish.Start", "{}", case.name);
    publisher.send_metadata();
    for h in &headers {
        send(&mut publisher, case, h);
    }
    let mut late = None;
    for (i, step) in frames.iter().enumerate() {
        if i as u32 == LATE_JOIN_AT {
            // Let what was sent so far reach the cache before the late joiner asks.
            let last = &frames[i - 1].last().expect("every step has video").payload;
            for (who, player) in waiting.iter_mut() {
                let got = receive_until(player, last, who);
                let sent: Vec<&Sent> = headers.iter().chain(frames[..i].iter().flatten()).collect();
                assert_exact(&got, &sent, &format!("{}: {who} (first part)", case.name));
            }
            let mut player = Client::connect(addr(server, 0), "live");
            player.play(key);
            late = Some(player);
        }
        for message in step {
            send(&mut publisher, case, message);
        }
    }
    let last = &frames.last().and_then(|s| s.last()).expect("frames").payload;
    for (who, player) in waiting.iter_mut() {
        let got = receive_until(player, last, who);
        let sent: Vec<&Sent> = frames[LATE_JOIN_AT as usize..].iter().flatten().collect();
        assert_exact(&got, &sent, &format!("{}: {who} (second part)", case.name));
    }

    // The late joiner: the sequence headers, then the GOP it joined from its keyframe on.
    let mut late = late.expect("late joiner joined");
    let got = receive_until(&mut late, last, "late joiner");
    let who = format!("{}: late joiner", case.name);
    assert!(got.len() > 2, "{who}: got {} messages", got.len());
    assert_eq!(got[0].payload[..], *AAC_SEQUENCE_HEADER, "{who}: audio header first");
    assert_eq!(got[1].payload[..], *AVC_SEQUENCE_HEADER, "{who}: video header second");
    let gop_start = (LATE_JOIN_AT / GOP * GOP) as usize;
    let sent: Vec<&Sent> = frames[gop_start..].iter().flatten().collect();
    assert_exact(&got[2..], &sent, &who);
    // The headers come on the GOP's time base: the keyframe's timestamp.
    assert_eq!(got[1].timestamp.0, sent[0].timestamp, "{who}: headers restamped to the GOP");

    publisher.close();
    late.close();
}

fn assert_nobody_skipped(server: &ServerHandle, case: &str) {
    for s in server.shard_snapshots() {
        assert_eq!(
            (s.counters.skip_to_keyframe, s.counters.messages_dropped),
            (0, 0),
            "{case}: shard {} skipped or dropped frames",
            s.shard
        );
    }
}

fn run(case: Case, publisher_shard: usize) {
    let server = two_shards();
    let key = key_on_shard0(&server, case.name);
    let mut owner = Client::connect(addr(&server, 0), "live");
    owner.play(&key);
    let mut mirror = Client::connect(addr(&server, 1), "live");
    mirror.play(&key);
    eventually("shard 1 mirrors the stream", || server.shard_snapshots()[1].counters.mirrors == 1);
    publish_and_check(
        &server,
        &key,
        case,
        publisher_shard,
        &mut [("player on the owner", &mut owner), ("player on a mirror", &mut mirror)],
    );
    assert_nobody_skipped(&server, case.name);
}

#[test]
fn stream_starting_at_zero() {
    run(Case::at("zero", 0), 0);
}

#[test]
fn stream_starting_at_100000_ms() {
    run(Case::at("100000", 100_000), 0);
}

#[test]
fn stream_published_on_another_shard_starting_at_100000_ms() {
    run(Case::at("100000-remote", 100_000), 1);
}

#[test]
fn stream_crossing_into_extended_timestamps_with_repeated_extended_fields() {
    run(Case::at("extended-repeated", EXTENDED_TIMESTAMP_MARKER - 2000), 0);
}

#[test]
fn stream_crossing_into_extended_timestamps_without_repeated_extended_fields() {
    let case = Case {
        omit_extended_repeat: true,
        ..Case::at("extended-omitted", EXTENDED_TIMESTAMP_MARKER - 2000)
    };
    run(case, 1);
}

#[test]
fn stream_crossing_the_32_bit_wrap() {
    run(Case::at("wrap", u32::MAX - 2000), 0);
}

#[test]
fn stream_with_audio_seconds_ahead_of_video() {
    run(Case { audio_offset: 9000, ..Case::at("audio-ahead", 100_000) }, 0);
}

#[test]
fn stream_with_audio_seconds_behind_video() {
    run(Case { audio_offset: -9000, ..Case::at("audio-behind", 100_000) }, 1);
}

#[test]
fn stream_with_small_backward_steps() {
    run(Case { non_monotonic: true, ..Case::at("dts-steps", 100_000) }, 0);
}

/// A publisher leaves and a new one takes the key on another time base while the players stay
/// attached: they get every frame of both publishes.
fn republish(first: Case, second: Case) {
    let server = two_shards();
    let key = key_on_shard0(&server, first.name);
    let mut owner = Client::connect(addr(&server, 0), "live");
    owner.play(&key);
    let mut mirror = Client::connect(addr(&server, 1), "live");
    mirror.play(&key);
    eventually("shard 1 mirrors the stream", || server.shard_snapshots()[1].counters.mirrors == 1);
    for (case, shard) in [(first, 0), (second, 1)] {
        publish_and_check(
            &server,
            &key,
            case,
            shard,
            &mut [("player on the owner", &mut owner), ("player on a mirror", &mut mirror)],
        );
        // Players stay attached: they are told the publisher left.
        for player in [&mut owner, &mut mirror] {
            player.expect(
                |e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"),
                "UnpublishNotify",
            );
        }
    }
    assert_nobody_skipped(&server, first.name);
}

#[test]
fn republish_that_restarts_at_zero() {
    republish(Case::at("restart", 500_000), Case::at("restart-2", 0));
}

#[test]
fn republish_that_continues_its_clock() {
    republish(Case::at("continue", 500_000), Case::at("continue-2", 600_000));
}
