//! One player of one stream, and the slow-subscriber policy (design invariant 6) applied to
//! every frame queued to it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tracing::warn;

use super::queue::{CloseReason, OutQueue};
use super::RelaySettings;
use crate::frame::{Frame, FrameClass, PLAY_STREAM_ID};
use crate::metrics::{DeliveryTotals, Limit, ShardCounters};
use crate::telemetry::LogLimiter;

/// At most one "skipping" line per player per this interval. A player that keeps falling
/// behind (or a client that reads slowly on purpose) starts a skip episode every GOP; logging
/// each would let it flood the log. The counters still count every episode.
const SKIP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One player of one stream.
#[derive(Debug)]
pub struct Subscriber {
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// The message stream id the player plays on.
    pub stream_id: u32,
    pub queue: Rc<OutQueue>,
    /// A player, or an outbound relay publishing the stream to another server.
    kind: SinkKind,
    /// Dropping video until the next keyframe (fell behind, joined without a cached GOP, or
    /// resumed from pause).
    pub(super) skipping: Cell<bool>,
    paused: Cell<bool>,
    delivery: Delivery,
    skip_log: LogLimiter,
}

/// What kind of sink a [`Subscriber`] is: both get the same frames under the same slow-sink
/// policy (design.md, invariant 6), each with its own hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// A playing connection: gets the play notifications (StreamEOF, UnpublishNotify...).
    Player,
    /// An outbound relay (push): publishes the stream onwards, so it gets metadata as
    /// `@setDataFrame` and no play notifications (its driver ends the publish itself).
    Relay {
        /// Queued bytes above which the relay is cut (and reconnects).
        hard_queue_bytes: usize,
    },
}

/// This player's share of its stream's out counters: plain `Cell`s, bumped on the shard that
/// serves the player and read only when someone scrapes.
#[derive(Debug, Default)]
struct Delivery {
    messages_out: Cell<u64>,
    bytes_out: Cell<u64>,
    dropped: Cell<u64>,
    skip_to_keyframe: Cell<u64>,
    slow_subscriber_disconnects: Cell<u64>,
}

fn bump(cell: &Cell<u64>, n: u64) {
    cell.set(cell.get().wrapping_add(n));
}

impl Subscriber {
    pub fn new(conn_id: u64, peer: SocketAddr, stream_id: u32, queue: Rc<OutQueue>) -> Self {
        Self {
            conn_id,
            peer,
            stream_id,
            queue,
            kind: SinkKind::Player,
            skipping: Cell::new(false),
            paused: Cell::new(false),
            delivery: Delivery::default(),
            skip_log: LogLimiter::new(SKIP_LOG_INTERVAL),
        }
    }

    /// An outbound relay's sink: the frames of the stream for its queue, on the message stream
    /// the destination gave it.
    pub fn relay(
        conn_id: u64,
        peer: SocketAddr,
        stream_id: u32,
        queue: Rc<OutQueue>,
        hard_queue_bytes: usize,
    ) -> Self {
        Self {
            kind: SinkKind::Relay { hard_queue_bytes },
            ..Self::new(conn_id, peer, stream_id, queue)
        }
    }

    pub fn kind(&self) -> SinkKind {
        self.kind
    }

    pub fn is_relay(&self) -> bool {
        matches!(self.kind, SinkKind::Relay { .. })
    }

    /// Frames this subscriber skipped.
    pub fn dropped(&self) -> u64 {
        self.delivery.dropped.get()
    }

    /// What this subscriber was sent and lost so far.
    pub fn delivery(&self) -> DeliveryTotals {
        let d = &self.delivery;
        DeliveryTotals {
            messages_out: d.messages_out.get(),
            bytes_out: d.bytes_out.get(),
            dropped: d.dropped.get(),
            skip_to_keyframe: d.skip_to_keyframe.get(),
            slow_subscriber_disconnects: d.slow_subscriber_disconnects.get(),
        }
    }

    /// Pause stops video and audio; unpause resumes at the next keyframe.
    pub fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
        if !paused {
            self.skipping.set(true);
        }
    }

    pub(super) fn push_frame(&self, frame: &Rc<Frame>, now: Instant, settings: &RelaySettings) {
        if self.is_relay() && frame.class == FrameClass::Metadata {
            let bytes = frame.encoded_for_publish(self.stream_id, &settings.encoder);
            self.queue.push_encoded(bytes, frame, now);
        } else if self.stream_id == PLAY_STREAM_ID {
            self.queue.push_frame(frame.clone(), now);
        } else {
            // A player on an unusual message stream id gets its own encoding; its frames are
            // not measured for wait time.
            self.queue.push_encoded(
                frame.encoded_for(self.stream_id, &settings.encoder),
                frame,
                now,
            );
        }
    }

    /// Queues a frame from the late-join cache (counted for time to first frame only).
    fn push_replay(&self, frame: &Rc<Frame>, now: Instant, settings: &RelaySettings) {
        if self.is_relay() {
            self.push_frame(frame, now, settings);
        } else if self.stream_id == PLAY_STREAM_ID {
            self.queue.push_replay(frame.clone(), now);
        } else {
            self.queue.push_encoded(
                frame.encoded_for(self.stream_id, &settings.encoder),
                frame,
                now,
            );
        }
    }

    /// Starts a player on a live stream: queues the late-join cache, and skips video until the
    /// next keyframe when the cache holds none (inter frames before it are undecodable).
    pub(super) fn start_from(&self, replay: &[Rc<Frame>], now: Instant, settings: &RelaySettings) {
        for frame in replay {
            self.push_replay(frame, now, settings);
        }
        self.skipping.set(!replay.iter().any(|f| f.class == FrameClass::Keyframe));
    }

    /// Queues one live frame, applying the slow-subscriber policy (design invariant 6).
    pub(super) fn deliver(
        &self,
        frame: &Rc<Frame>,
        now: Instant,
        settings: &RelaySettings,
        counters: &ShardCounters,
    ) {
        if self.queue.close_reason().is_some() {
            return;
        }
        let (hard_limit, limit) = match self.kind {
            SinkKind::Player => (settings.hard_queue_bytes, Limit::PlayerHardLimitBytes),
            SinkKind::Relay { hard_queue_bytes } => (hard_queue_bytes, Limit::PushQueueBytes),
        };
        if self.queue.queued_bytes() > hard_limit {
            self.disconnect(CloseReason::HardLimit, limit, counters);
            return;
        }
        if self.queue.stalled_for(now) > settings.stall {
            self.disconnect(CloseReason::Stalled, Limit::PlayerStallSecs, counters);
            return;
        }
        let is_video = !frame.survives_skip();
        if (is_video || frame.class == FrameClass::Audio) && self.paused.get() {
            return;
        }
        if is_video {
            let lag_ms = self.queue.lag_ms_with(frame);
            let behind = lag_ms > settings.soft_lag_ms;
            if self.skipping.get() {
                if frame.class != FrameClass::Keyframe || behind {
                    self.drop_frame(counters);
                    return;
                }
                self.skipping.set(false);
            } else if behind {
                self.skipping.set(true);
                counters.skip_to_keyframe.inc();
                bump(&self.delivery.skip_to_keyframe, 1);
                if let Some(not_logged) = self.skip_log.check(now) {
                    warn!(
                        peer = %self.peer,
                        conn = self.conn_id,
                        lag_ms,
                        queued_bytes = self.queue.queued_bytes(),
                        skips_not_logged = not_logged,
                        "slow subscriber: skipping to the next keyframe"
                    );
                }
                self.drop_frame(counters);
                return;
            }
        }
        counters.messages_relayed.inc();
        counters.bytes_relayed.add(frame.len() as u64);
        bump(&self.delivery.messages_out, 1);
        bump(&self.delivery.bytes_out, frame.len() as u64);
        self.push_frame(frame, now, settings);
    }

    fn drop_frame(&self, counters: &ShardCounters) {
        bump(&self.delivery.dropped, 1);
        counters.messages_dropped.inc();
    }

    fn disconnect(&self, reason: CloseReason, limit: Limit, counters: &ShardCounters) {
        counters.slow_subscriber_disconnects.inc();
        counters.limit_tripped(limit);
        bump(&self.delivery.slow_subscriber_disconnects, 1);
        warn!(
            peer = %self.peer,
            conn = self.conn_id,
            relay = self.is_relay(),
            queued_bytes = self.queue.queued_bytes(),
            reason = reason.as_str(),
            limit = limit.name(),
            "disconnecting slow subscriber"
        );
        self.queue.close(reason);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use rtmp_proto::chunk::ChunkEncoder;
    use rtmp_proto::session::MediaKind;
    use rtmp_proto::time::RtmpTimestamp;

    use super::*;
    use crate::stream::CacheLimits;

    fn settings() -> RelaySettings {
        RelaySettings {
            encoder: ChunkEncoder::new(4096),
            cache: CacheLimits { max_bytes: 1 << 20, max_ms: 500 },
            soft_lag_ms: 1000,
            hard_queue_bytes: 1 << 24,
            stall: Duration::from_secs(3600),
            republish_wait: Duration::from_secs(30),
            max_streams: 100,
            max_subscribers: 100,
            record: None,
            record_apps: Rc::from([]),
        }
    }

    fn video(timestamp: u32, keyframe: bool) -> Rc<Frame> {
        let payload: &'static [u8] =
            if keyframe { &[0x17, 1, 0, 0, 0, 9] } else { &[0x27, 1, 0, 0, 0, 9] };
        Rc::new(Frame::new(
            MediaKind::Video,
            RtmpTimestamp(timestamp),
            Bytes::from_static(payload),
            false,
            &ChunkEncoder::new(4096),
        ))
    }

    /// What the code under test logs, as JSON lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        fn lines(&self) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
        }
    }

    #[test]
    fn skipping_is_logged_once_per_interval_and_the_next_line_counts_the_rest() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber =
            tracing_subscriber::fmt().json().with_writer(move || writer.clone()).finish();
        let settings = settings();
        let counters = ShardCounters::default();
        let start = Instant::now();
        let queue = Rc::new(OutQueue::new(start));
        let player = Subscriber::new(7, "127.0.0.1:5000".parse().unwrap(), PLAY_STREAM_ID, queue);
        let mut timestamp = 0;
        // One skip episode: a keyframe, then a frame 2 s later (over the 1 s soft lag) starts a
        // skip; the socket catches up, and the next keyframe resumes.
        let mut episode = |now: Instant| {
            player.deliver(&video(timestamp, true), now, &settings, &counters);
            timestamp += 2000;
            player.deliver(&video(timestamp, false), now, &settings, &counters);
            player
                .queue
                .write_with(64, now, |slices| -> Result<usize, ()> {
                    Ok(slices.iter().map(|s| s.len()).sum())
                })
                .unwrap();
            timestamp += 40;
        };
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..50 {
                episode(start);
            }
            episode(start + SKIP_LOG_INTERVAL - Duration::from_millis(1));
            episode(start + SKIP_LOG_INTERVAL);
        });

        assert_eq!(counters.skip_to_keyframe.get(), 52, "every episode is counted");
        assert_eq!(player.delivery().skip_to_keyframe, 52);
        let lines: Vec<_> = captured
            .lines()
            .into_iter()
            .filter(|l| l["fields"]["message"] == "slow subscriber: skipping to the next keyframe")
            .collect();
        assert_eq!(lines.len(), 2, "one line per interval: {lines:?}");
        assert_eq!(lines[0]["fields"]["skips_not_logged"], 0);
        assert_eq!(lines[1]["fields"]["skips_not_logged"], 50, "the second line counts the rest");
        assert_eq!(lines[1]["fields"]["conn"], 7);
    }

    #[test]
    fn the_hard_limit_and_a_stall_each_trip_their_own_limit() {
        let settings =
            RelaySettings { hard_queue_bytes: 20, stall: Duration::from_secs(1), ..settings() };
        let counters = ShardCounters::default();
        let start = Instant::now();
        let player = |conn_id| {
            let queue = Rc::new(OutQueue::new(start));
            Subscriber::new(conn_id, "127.0.0.1:5000".parse().unwrap(), PLAY_STREAM_ID, queue)
        };
        // Nothing written: the queue outgrows 20 bytes.
        let full = player(1);
        for timestamp in 0..10 {
            full.deliver(&video(timestamp, timestamp == 0), start, &settings, &counters);
        }
        assert_eq!(full.queue.close_reason(), Some(CloseReason::HardLimit));
        // One frame, then nothing written for over a second.
        let stuck = player(2);
        stuck.deliver(&video(0, true), start, &settings, &counters);
        stuck.deliver(&video(40, false), start + Duration::from_secs(2), &settings, &counters);
        assert_eq!(stuck.queue.close_reason(), Some(CloseReason::Stalled));

        assert_eq!(counters.slow_subscriber_disconnects.get(), 2);
        let limits = counters.limits_tripped();
        assert_eq!(limits.get(Limit::PlayerHardLimitBytes), 1);
        assert_eq!(limits.get(Limit::PlayerStallSecs), 1);
    }
}
