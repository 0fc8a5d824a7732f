//! The relay's hot path: one published message fanned out to N subscribers, and the late-join
//! cache.
//!
//! `cargo bench --bench fanout` (add `-- FILTER`, e.g. `-- cache`, to run part of it). See
//! `benches/harness/mod.rs` for how figures are taken.
//!
//! The fan-out setup is a shard's: a [`Registry`] built from the default [`Config`], one
//! published stream, N players on message stream 1 (each a [`Subscriber`] with its own
//! [`OutQueue`]), and a publisher sending 30 fps of 10 KB H.264 video with a keyframe every 2 s.
//! After each relayed message every queue is drained by a writer that reports all bytes
//! written (a socket that never blocks), so queues stay one item deep, as for players that keep
//! up. The clock is read once per message, as a shard does, and counts in the relay phase. The
//! payloads are static `Bytes`: what the chunk decoder allocated for them is the codec bench's
//! business.

mod harness;

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use bytes::Bytes;
use harness::{
    allocations, black_box, fmt_allocs, fmt_faults, fmt_ns, payload, Harness, Phase, Results,
    Stats, Suite, Table,
};
use rtmp_proto::amf0::AmfLimits;
use rtmp_proto::chunk::ChunkEncoder;
use rtmp_proto::command::strip_set_data_frame;
use rtmp_proto::message::type_id;
use rtmp_proto::session::{Media, MediaKind};
use rtmp_proto::time::RtmpTimestamp;
use rtmp_relay::metrics::ShardCounters;
use rtmp_relay::stream::{
    Frame, LateJoinCache, OutQueue, PublisherInfo, Registry, Stream, StreamKey, Subscriber,
};
use rtmp_relay::Config;

const FFMPEG_SET_DATA_FRAME: &[u8] =
    include_bytes!("../proto/tests/data/amf0_ffmpeg_setdataframe.bin");
const VIDEO_SEQ: &[u8] =
    include_bytes!("../proto/tests/data/media_h264_high_720p_aac_video_seq.bin");
const AUDIO_SEQ: &[u8] =
    include_bytes!("../proto/tests/data/media_h264_high_720p_aac_audio_seq.bin");
const VIDEO_KEY_HEAD: &[u8] =
    include_bytes!("../proto/tests/data/media_h264_high_720p_aac_video_key.bin");
const VIDEO_INTER_HEAD: &[u8] =
    include_bytes!("../proto/tests/data/media_h264_high_720p_aac_video_inter.bin");

const KIB: usize = 1024;
const FPS: u64 = 30;
/// Video frames per GOP: a keyframe every 2 s.
const GOP_FRAMES: u64 = 2 * FPS;
/// AAC at 48 kHz: 1024 samples a frame.
const AUDIO_FRAMES_PER_2S: u64 = 2 * 48_000 / 1024;
const AUDIO_FRAME_LEN: usize = 341;
/// The most slices one `write_with` call hands to the writer (what the connection uses).
const WRITE_SLICES: usize = 64;

/// Builds a section's tables once the suite has run.
type TableFn = Box<dyn FnOnce(&Results) -> Vec<Table>>;

fn main() {
    let h = Harness::from_args();
    let mut suite = Suite::new(&h);
    let tables: Vec<TableFn> = vec![fanout(&mut suite, h.timer_overhead_ns()), cache(&mut suite)];
    let results = suite.run();
    for table in tables.into_iter().flat_map(|t| t(&results)) {
        table.print(&h);
    }
}

fn peer(n: u64) -> SocketAddr {
    SocketAddr::from(([10, 0, (n >> 8) as u8, n as u8], 40_000 + (n % 20_000) as u16))
}

/// `Bytes` over a buffer that lives as long as the bench: cloning it costs a pointer copy, no
/// allocation and no refcount.
fn static_bytes(data: Vec<u8>) -> Bytes {
    Bytes::from_static(Box::leak(data.into_boxed_slice()))
}

fn timestamp_of_video(frame: u64) -> RtmpTimestamp {
    RtmpTimestamp((frame * 1000 / FPS) as u32)
}

fn metadata_payload() -> Bytes {
    strip_set_data_frame(
        type_id::DATA_AMF0,
        &Bytes::from_static(FFMPEG_SET_DATA_FRAME),
        &AmfLimits::default(),
    )
    .expect("the ffmpeg capture is an @setDataFrame")
}

/// The publisher: 10 KB video frames, a keyframe every [`GOP_FRAMES`].
struct Source {
    key: Bytes,
    inter: Bytes,
    frame: u64,
}

impl Source {
    fn new(len: usize) -> Self {
        Source {
            key: static_bytes(payload(VIDEO_KEY_HEAD, len, 1)),
            inter: static_bytes(payload(VIDEO_INTER_HEAD, len, 2)),
            frame: 0,
        }
    }

    fn next(&mut self) -> Media {
        let n = self.frame;
        self.frame += 1;
        let payload = if n % GOP_FRAMES == 0 { self.key.clone() } else { self.inter.clone() };
        Media {
            stream_id: 1,
            kind: MediaKind::Video,
            timestamp: timestamp_of_video(n),
            payload,
            is_metadata: false,
        }
    }
}

fn media(kind: MediaKind, timestamp: RtmpTimestamp, payload: Bytes, is_metadata: bool) -> Media {
    Media { stream_id: 1, kind, timestamp, payload, is_metadata }
}

/// One shard with one published stream and `subscribers` players.
struct Fanout {
    registry: Registry,
    stream: Rc<Stream>,
    queues: Vec<Rc<OutQueue>>,
    source: Source,
    now: Instant,
}

impl Fanout {
    fn new(subscribers: u64, play_stream_id: u32) -> Self {
        let settings = Config::default().relay_settings();
        let registry = Registry::new(settings, Rc::new(ShardCounters::default()));
        let now = Instant::now();
        let key = StreamKey::new("live", "bench");
        let stream = registry
            .publish(key.clone(), PublisherInfo { conn_id: 0, shard: 0, peer: peer(0) }, now)
            .expect("a fresh key");
        let (settings, counters) = (registry.settings(), registry.counters());
        let zero = RtmpTimestamp(0);
        let relay = |media: Media| {
            stream.relay_frame(
                Rc::new(Frame::of(media, &settings.encoder)),
                now,
                &settings,
                counters,
            )
        };
        relay(media(MediaKind::Data, zero, metadata_payload(), true));
        let audio_seq = Bytes::from_static(AUDIO_SEQ);
        relay(media(MediaKind::Audio, zero, audio_seq, false));
        let video_seq = Bytes::from_static(VIDEO_SEQ);
        relay(media(MediaKind::Video, zero, video_seq, false));
        let queues: Vec<Rc<OutQueue>> = (1..=subscribers)
            .map(|conn_id| {
                let queue = Rc::new(OutQueue::new(now));
                let subscriber =
                    Subscriber::new(conn_id, peer(conn_id), play_stream_id, queue.clone());
                registry.play(key.clone(), Rc::new(subscriber), now).expect("within limits");
                queue
            })
            .collect();
        let mut fanout = Fanout { registry, stream, queues, source: Source::new(10 * KIB), now };
        fanout.drain();
        // Warm-up: two GOPs, so every player is past its first keyframe, every queue and the
        // GOP cache have their capacity, and the cache has dropped a GOP.
        for _ in 0..2 * GOP_FRAMES {
            fanout.relay_one();
            fanout.drain();
        }
        fanout
    }

    /// One message in, as a shard handles it: the clock read once per message (the arrival
    /// time, stall and wait accounting use it), then the relay.
    fn relay_one(&mut self) {
        self.now = Instant::now();
        let media = self.source.next();
        let settings = self.registry.settings();
        let frame = Rc::new(Frame::of(media, &settings.encoder));
        self.stream.relay_frame(frame, self.now, &settings, self.registry.counters());
    }

    /// What each player's writer does when its socket takes everything.
    fn drain(&self) {
        for queue in &self.queues {
            let written = queue.write_with(WRITE_SLICES, self.now, |slices| {
                Ok::<usize, Infallible>(slices.iter().map(|s| s.len()).sum())
            });
            black_box(written.unwrap_or_else(|never| match never {}));
        }
    }

    /// Relay and drain timed apart (two clock reads per message).
    fn sample_split(&mut self, iters: u64) -> Vec<Phase> {
        let (mut relay, mut drain) = (Phase::default(), Phase::default());
        let mut t0 = Instant::now();
        let mut a0 = allocations();
        for _ in 0..iters {
            self.relay_one();
            let (t1, a1) = (Instant::now(), allocations());
            relay.add(t1 - t0, a1 - a0);
            self.drain();
            let (t2, a2) = (Instant::now(), allocations());
            drain.add(t2 - t1, a2 - a1);
            (t0, a0) = (t2, a2);
        }
        vec![relay, drain]
    }

    /// Relay and drain together, with no clock reads inside the loop.
    fn sample_total(&mut self, iters: u64) -> Vec<Phase> {
        let a0 = allocations();
        let t0 = Instant::now();
        for _ in 0..iters {
            self.relay_one();
            self.drain();
        }
        let time = t0.elapsed();
        // Read before `vec!` allocates.
        let allocs = allocations() - a0;
        vec![Phase { time, allocs }]
    }

    /// Every player got every frame and nobody was dropped, skipped or disconnected.
    fn check(&self) {
        let counters = self.registry.counters();
        assert_eq!(counters.messages_dropped.get(), 0, "no frame dropped");
        assert_eq!(counters.skip_to_keyframe.get(), 0, "no player skipped");
        assert_eq!(counters.slow_subscriber_disconnects.get(), 0, "no player disconnected");
        let written = self.queues[0].bytes_written();
        assert!(written > 0);
        for queue in &self.queues {
            assert!(queue.is_empty() && queue.close_reason().is_none());
            assert_eq!(queue.bytes_written(), written, "every player got the same bytes");
        }
    }
}

fn fanout(suite: &mut Suite<'_>, timer: f64) -> TableFn {
    let mut rows = Vec::new();
    for (subscribers, stream_id) in [(1, 1), (100, 1), (1000, 1), (100, 2)] {
        let name = if stream_id == 1 {
            format!("{subscribers}")
        } else {
            format!("{subscribers} on stream id {stream_id}")
        };
        let fanout = Rc::new(RefCell::new(Fanout::new(subscribers, stream_id)));
        let split = {
            let fanout = fanout.clone();
            suite.add(&format!("fanout split {name}"), GOP_FRAMES, move |iters| {
                fanout.borrow_mut().sample_split(iters)
            })
        };
        let total = {
            let fanout = fanout.clone();
            suite.add(&format!("fanout total {name}"), GOP_FRAMES, move |iters| {
                fanout.borrow_mut().sample_total(iters)
            })
        };
        if let (Some(split), Some(total)) = (split, total) {
            rows.push((name, subscribers, stream_id, split, total, fanout));
        }
    }
    Box::new(move |results| {
        let mut table = Table::new(
            &format!(
                "fan-out of one 10 KB video message (30 fps, keyframe every 2 s, chunk size \
                 4096), per message; relay and drain timed apart (less {timer:.0} ns for the \
                 clock read in each), total timed without clock reads inside the loop"
            ),
            &[
                "players",
                "relay",
                "drain",
                "total",
                "IQR",
                "passes",
                "total / player",
                "allocs relay",
                "allocs drain",
                "allocs / player",
                "faults",
            ],
        );
        // (players, relay, drain, total) for players on stream id 1.
        let mut measured = Vec::new();
        for (name, subscribers, stream_id, split, total, fanout) in rows {
            fanout.borrow().check();
            let (relay, drain) = (results.get(split)[0], results.get(split)[1]);
            let (relay, drain, total) =
                (relay.minus_ns(timer), drain.minus_ns(timer), results.one(total));
            let n = subscribers as f64;
            table.row(vec![
                name,
                fmt_ns(relay.median),
                fmt_ns(drain.median),
                fmt_ns(total.median),
                total.iqr(),
                total.passes(),
                fmt_ns(total.median / n),
                fmt_allocs(relay.allocs),
                fmt_allocs(drain.allocs),
                fmt_allocs(total.allocs / n),
                fmt_faults(total.faults),
            ]);
            if stream_id == 1 {
                measured.push((subscribers, relay, drain, total));
            }
        }

        // What one more player costs: the slope between the smallest and the largest fan-out.
        let mut marginal = Table::new(
            "marginal cost of one more player per message (slope between the fewest and the most \
             players above)",
            &["phase", "ns / player / message", "allocs / player / message"],
        );
        if let (Some(small), Some(large)) = (measured.first(), measured.last()) {
            let dn = (large.0 - small.0) as f64;
            let slope = |a: Stats, b: Stats| {
                (fmt_ns((b.median - a.median) / dn), fmt_allocs((b.allocs - a.allocs) / dn))
            };
            if dn > 0.0 {
                for (name, (ns, allocs)) in [
                    ("relay (Subscriber::deliver: checks + queue push)", slope(small.1, large.1)),
                    ("drain (OutQueue::write_with + consume)", slope(small.2, large.2)),
                    ("total", slope(small.3, large.3)),
                ] {
                    marginal.row(vec![name.to_owned(), ns, allocs]);
                }
            }
        }
        vec![table, marginal]
    })
}

/// A 2 s GOP as published: 60 video frames (a 40 KB keyframe, 10 KB inter frames) and ~94 AAC
/// frames, interleaved by timestamp.
fn gop(encoder: &ChunkEncoder) -> Vec<Rc<Frame>> {
    let key = static_bytes(payload(VIDEO_KEY_HEAD, 40 * KIB, 3));
    let inter = static_bytes(payload(VIDEO_INTER_HEAD, 10 * KIB, 4));
    let audio = static_bytes(payload(&[0xaf, 0x01], AUDIO_FRAME_LEN, 5));
    let mut frames: Vec<(u64, Rc<Frame>)> = Vec::new();
    for n in 0..GOP_FRAMES {
        let payload = if n == 0 { key.clone() } else { inter.clone() };
        let ts = timestamp_of_video(n);
        let frame = Frame::new(MediaKind::Video, ts, payload, false, encoder);
        frames.push((u64::from(ts.0), Rc::new(frame)));
    }
    for n in 0..AUDIO_FRAMES_PER_2S {
        let ts = RtmpTimestamp((n * 1024 * 1000 / 48_000) as u32);
        let frame = Frame::new(MediaKind::Audio, ts, audio.clone(), false, encoder);
        frames.push((u64::from(ts.0), Rc::new(frame)));
    }
    // Stable: at equal timestamps video (pushed first) stays ahead, keyframe first of all.
    frames.sort_by_key(|(ts, _)| *ts);
    frames.into_iter().map(|(_, f)| f).collect()
}

fn headers(encoder: &ChunkEncoder) -> [Rc<Frame>; 3] {
    let zero = RtmpTimestamp(0);
    [
        Frame::new(MediaKind::Data, zero, metadata_payload(), true, encoder),
        Frame::new(MediaKind::Audio, zero, Bytes::from_static(AUDIO_SEQ), false, encoder),
        Frame::new(MediaKind::Video, zero, Bytes::from_static(VIDEO_SEQ), false, encoder),
    ]
    .map(Rc::new)
}

fn cache(suite: &mut Suite<'_>) -> TableFn {
    let settings = Config::default().relay_settings();
    let encoder = settings.encoder;
    let gop = Rc::new(gop(&encoder));
    let headers = headers(&encoder);
    let title = format!(
        "late-join cache, 2 s GOP of 30 fps video + 48 kHz AAC ({} frames), chunk size {}",
        gop.len(),
        encoder.chunk_size()
    );
    let frames = gop.len() as f64;
    let mut rows = Vec::new();

    let mut filled = LateJoinCache::new(settings.cache);
    for frame in headers.iter().chain(gop.iter()) {
        filled.on_frame(frame);
    }
    assert_eq!(filled.gop_frames(), gop.len(), "the whole GOP fits the default limits");
    let replay = filled.replay(Some(RtmpTimestamp(2_000)), &encoder);
    assert_eq!(replay.len(), 3 + gop.len());

    // Feeding a GOP over and over: each keyframe drops the previous GOP (the frames live on in
    // `gop`, so no frame is freed here).
    let name = "LateJoinCache::on_frame (per frame)".to_owned();
    let mut cache = LateJoinCache::new(settings.cache);
    let frames_in = gop.clone();
    let id = suite.add_fn(&format!("cache {name}"), move || {
        for frame in frames_in.iter() {
            cache.on_frame(frame);
        }
        assert_eq!(cache.gop_frames(), frames_in.len());
    });
    rows.extend(id.map(|id| (name, id, frames)));

    let name = format!("LateJoinCache::replay ({} frames out)", replay.len());
    let id = suite.add_fn(&format!("cache {name}"), move || {
        filled.replay(Some(RtmpTimestamp(2_000)), &encoder)
    });
    rows.extend(id.map(|id| (name, id, 1.0)));

    // The whole late join as a shard does it: replay queued onto a new player's queue, then the
    // player leaves again (its queue, never drained, is dropped with its frame references).
    let registry = Registry::new(settings.clone(), Rc::new(ShardCounters::default()));
    let key = StreamKey::new("live", "bench");
    let now = Instant::now();
    let stream = registry
        .publish(key.clone(), PublisherInfo { conn_id: 0, shard: 0, peer: peer(0) }, now)
        .expect("a fresh key");
    for frame in headers.iter().chain(gop.iter()) {
        let is_metadata = frame.kind == MediaKind::Data;
        let media = media(frame.kind, frame.timestamp, frame.payload.clone(), is_metadata);
        let frame = Rc::new(Frame::of(media, &registry.settings().encoder));
        stream.relay_frame(frame, now, &registry.settings(), registry.counters());
    }
    let name = "Registry::play + leave (late joiner gets headers + GOP)".to_owned();
    let replayed: usize = replay.iter().map(|f| f.chunks.len()).sum();
    let id = suite.add_fn(&format!("cache {name}"), move || {
        let queue = Rc::new(OutQueue::new(now));
        let subscriber = Rc::new(Subscriber::new(1, peer(1), 1, queue.clone()));
        registry.play(key.clone(), subscriber, now).expect("within limits");
        registry.leave(&stream, 1, 1);
        assert_eq!(queue.queued_bytes(), replayed);
    });
    rows.extend(id.map(|id| (name, id, 1.0)));

    Box::new(move |results| {
        let mut table = Table::new(
            &title,
            &["operation", "median", "min", "IQR", "passes", "allocs/op", "faults/op"],
        );
        for (name, id, per) in rows {
            let stats = results.one(id).per(per);
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
        vec![table]
    })
}
