//! What shards report when someone scrapes: plain, `Send`, serialisable data, gathered from each
//! shard on request and merged off the media path. The stream layer fills these in; this module
//! only knows their shape.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::CountersSnapshot;

/// Microsecond histograms: 1 µs to 1 hour, 3 significant digits.
pub fn new_latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// Records `elapsed` in microseconds, saturating at the histogram's top.
pub fn record_duration(histogram: &mut Histogram<u64>, elapsed: Duration) {
    let micros = (elapsed.as_micros() as u64).clamp(1, histogram.high());
    histogram.saturating_record(micros);
}

/// One shard's report.
#[derive(Debug, Clone)]
pub struct ShardStats {
    pub shard: usize,
    pub counters: CountersSnapshot,
    /// Protocol errors by kind (`SessionError::kind`).
    pub protocol_errors: Vec<(&'static str, u64)>,
    /// How many times each limit tripped.
    pub limits: super::LimitCounts,
    /// This shard's recordings.
    pub recording: super::RecordCountersSnapshot,
    /// Per other shard: (messages sent to it, received from it, media dropped to it).
    pub mesh: Vec<(u64, u64, u64)>,
    pub streams: Vec<StreamStats>,
    /// RTMPS handshakes and push relays (filled in by the runtime).
    pub transport: super::TransportStats,
}

/// A stream as one shard sees it: the owner's full view, or a mirror's local players.
#[derive(Debug, Clone)]
pub struct StreamStats {
    pub app: String,
    pub name: String,
    pub shard: usize,
    pub mirror: bool,
    pub publisher: Option<PublisherStats>,
    pub video: Option<VideoStats>,
    pub audio: Option<AudioStats>,
    /// Payload bytes and messages received (from the publisher, or from the owner by a mirror).
    pub bytes_in: u64,
    pub messages_in: u64,
    pub gop_cache_bytes: usize,
    /// What this shard's players of the stream were sent and lost since the stream began here,
    /// players who left included, so the exported counters never go backwards.
    pub delivery: DeliveryTotals,
    pub subscribers: Vec<SubscriberStats>,
    /// How long frames waited between arriving from the publisher and being written to a
    /// player's socket, in microseconds.
    pub wait: Histogram<u64>,
    /// Time from play to the first frame written, in microseconds.
    pub time_to_first_frame: Histogram<u64>,
}

/// What one or more players were sent and lost. Each player keeps these in `Cell`s on its
/// shard; a stream adds them up when someone scrapes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DeliveryTotals {
    /// Live messages queued to the players (the late-join replay is not counted, as in the
    /// shard's `messages_relayed`).
    pub messages_out: u64,
    /// Payload bytes of those messages: comparable with the stream's `bytes_in`.
    pub bytes_out: u64,
    /// Frames skipped by the slow-subscriber policy.
    pub dropped: u64,
    /// Times a player started skipping to the next keyframe.
    pub skip_to_keyframe: u64,
    /// Players disconnected for falling too far behind or stalling.
    pub slow_subscriber_disconnects: u64,
}

impl std::ops::AddAssign for DeliveryTotals {
    fn add_assign(&mut self, o: DeliveryTotals) {
        self.messages_out += o.messages_out;
        self.bytes_out += o.bytes_out;
        self.dropped += o.dropped;
        self.skip_to_keyframe += o.skip_to_keyframe;
        self.slow_subscriber_disconnects += o.slow_subscriber_disconnects;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PublisherStats {
    pub peer: String,
    pub conn_id: u64,
    pub uptime_secs: f64,
    /// Ingress bitrate over the last measurement second.
    pub bitrate_bps: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VideoStats {
    pub codec: String,
    pub profile: Option<String>,
    pub level: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
    /// Video frames per second over the last measurement second.
    pub frame_rate: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AudioStats {
    pub codec: String,
    pub profile: Option<String>,
    pub sample_rate: Option<u32>,
    pub channels: Option<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SubscriberStats {
    pub peer: String,
    pub conn_id: u64,
    pub shard: usize,
    /// Bytes written to the player's socket.
    pub bytes: u64,
    /// Frames skipped by the slow-subscriber policy.
    pub dropped: u64,
    pub queue_bytes: usize,
    /// Milliseconds of media queued: how far behind live the player is.
    pub lag_ms: u32,
    /// Bytes written but not yet acknowledged by the player (RTMP Acknowledgement): what waits
    /// in kernel buffers and on the network, beyond `queue_bytes`. 0 if it never acknowledges.
    pub unacknowledged_bytes: u64,
}
