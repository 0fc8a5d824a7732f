//! Churn for about 45 seconds: 10 streams with 10 players each, players joining and leaving
//! all the time (closing, resetting, or deleting their stream first), publishers restarting
//! the same way. Every frame a player gets is checked byte for byte and for order, and must
//! belong to its stream. Afterwards every count is back to zero and a fresh round trip is
//! byte-exact.
//!
//! The 10-minute soak with RSS, descriptor and latency records is a script; this is its short
//! form for CI.

mod common;

use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use rtmp_proto::session::{ClientEvent, Media, MediaKind};

const STREAMS: u32 = 10;
const PLAYERS_PER_STREAM: u32 = 10;
const DURATION: Duration = Duration::from_secs(45);
/// A frame's sequence number carries its stream: `stream * STRIDE + n`.
const STRIDE: u32 = 10_000_000;
/// Time between a publisher's video frames (25 fps; an audio frame goes with each).
const FRAME_INTERVAL: Duration = Duration::from_millis(40);

/// Small deterministic randomness per thread.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn key(stream: u32) -> String {
    format!("churn-{stream}")
}

fn frame_len(seq: u32) -> usize {
    300 + (seq % 17) as usize * 150
}

/// How a client leaves.
fn leave(mut client: Client, how: u64) {
    match how {
        0 => client.close(),
        1 => {
            socket2::SockRef::from(client.socket())
                .set_linger(Some(Duration::ZERO))
                .expect("SO_LINGER 0");
            drop(client);
        }
        _ => {
            let stream_id = client.stream_id;
            client.session().delete_stream(stream_id);
            let _ = client.try_flush();
            client.close();
        }
    }
}

/// Publishes `stream` in sessions of 1.5 to 4 s until `deadline`; returns the sessions.
fn publisher(addr: SocketAddr, stream: u32, deadline: Instant) -> u32 {
    let mut rng = Rng::new(u64::from(stream) + 1);
    let mut next = stream * STRIDE;
    let mut sessions = 0;
    while Instant::now() < deadline {
        let mut client = Client::connect(addr, "live");
        // The previous session's end may still be on its way to the owner shard.
        if client.publish(&key(stream)) != "NetStream.Publish.Start" {
            assert!(client.wait_closed(WAIT), "a refused publisher is closed");
            thread::sleep(Duration::from_millis(50));
            continue;
        }
        sessions += 1;
        client.send_headers();
        let end = (Instant::now() + rng.millis(1500, 4000)).min(deadline);
        let mut first = true;
        while Instant::now() < end {
            let seq = next;
            next += 1;
            let keyframe = first || seq % 25 == 0;
            first = false;
            let timestamp = (seq % STRIDE) * 40;
            client.send(MediaKind::Video, timestamp, &video_frame(seq, keyframe, frame_len(seq)));
            client.send(MediaKind::Audio, timestamp, &audio_frame(seq));
            thread::sleep(FRAME_INTERVAL);
        }
        leave(client, rng.below(3));
        thread::sleep(rng.millis(50, 300));
    }
    sessions
}

/// What a player thread saw.
#[derive(Debug, Default)]
struct Watched {
    sessions: u32,
    frames: u64,
}

/// Checks one relayed message of `stream` against what its publisher sent; `last` holds the
/// last video and audio sequence numbers of this play.
fn check(stream: u32, media: &Media, last: &mut [Option<u32>; 2]) -> bool {
    let (slot, is_frame) = match media.kind {
        // Frames have 1 in the second byte (AVC NALU, AAC raw); sequence headers have 0.
        MediaKind::Video => (0, media.payload.get(1) == Some(&1)),
        MediaKind::Audio => (1, media.payload.get(1) == Some(&1)),
        MediaKind::Data => return false,
    };
    if !is_frame {
        return false;
    }
    let seq = seq_of(media).expect("a sequence number");
    assert_eq!(seq / STRIDE, stream, "a frame of stream {} on stream {stream}", seq / STRIDE);
    let expected = match media.kind {
        MediaKind::Video => video_frame(seq, media.payload[0] == 0x17, frame_len(seq)),
        _ => audio_frame(seq),
    };
    assert!(media.payload[..] == expected[..], "frame {seq} of stream {stream} is byte-exact");
    assert_eq!(media.timestamp.0, (seq % STRIDE) * 40, "timestamp of frame {seq}");
    if let Some(previous) = last[slot] {
        assert!(seq > previous, "frame {seq} after {previous}: in order, none twice");
    }
    last[slot] = Some(seq);
    true
}

/// Plays `stream` for 0.3 to 2.5 s at a time until `deadline`.
fn player(addr: SocketAddr, stream: u32, id: u32, deadline: Instant) -> Watched {
    let mut rng = Rng::new(u64::from(stream * 100 + id) + 1000);
    let mut watched = Watched::default();
    while Instant::now() < deadline {
        let mut client = Client::connect(addr, "live");
        client.play(&key(stream));
        watched.sessions += 1;
        let end = (Instant::now() + rng.millis(300, 2500)).min(deadline);
        let mut last = [None, None];
        loop {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match client.next_event(left) {
                Some(ClientEvent::Media(media)) => {
                    if check(stream, &media, &mut last) {
                        watched.frames += 1;
                    }
                }
                Some(_) => {}
                None => {
                    assert!(Instant::now() >= end, "player {stream}/{id} was disconnected");
                }
            }
        }
        leave(client, rng.below(3));
        thread::sleep(rng.millis(0, 200));
    }
    watched
}

#[test]
fn ten_streams_of_ten_players_churning_leave_nothing_behind() {
    // 110 clients on one address, connecting at once: far over the per-IP handshake limit,
    // which is not what this test is about.
    let server = start_server(|c| c.max_handshaking_per_ip = 1000);
    let addr = server.local_addr();
    let started = Instant::now();
    let deadline = started + DURATION;
    let publishers: Vec<_> = (0..STREAMS)
        .map(|stream| thread::spawn(move || publisher(addr, stream, deadline)))
        .collect();
    let players: Vec<_> = (0..STREAMS)
        .flat_map(|stream| (0..PLAYERS_PER_STREAM).map(move |id| (stream, id)))
        .map(|(stream, id)| thread::spawn(move || player(addr, stream, id, deadline)))
        .collect();
    let mut publish_sessions = 0;
    for publisher in publishers {
        let sessions = publisher.join().expect("publisher thread");
        assert!(sessions >= 5, "a publisher restarted only {sessions} times");
        publish_sessions += sessions;
    }
    let mut plays = 0;
    for player in players {
        let watched = player.join().expect("player thread");
        assert!(watched.frames > 0, "a player saw no frames: {watched:?}");
        plays += watched.sessions;
    }
    assert_all_released(&server);
    let counters = server.counters();
    assert_eq!(counters.publishes, u64::from(publish_sessions), "{counters:?}");
    assert_eq!(counters.plays, u64::from(plays), "{counters:?}");
    assert_round_trip(&server);
    assert_all_released(&server);
    println!(
        "churn: {publish_sessions} publishes, {plays} plays in {:?}; {counters:?}",
        started.elapsed()
    );
}
