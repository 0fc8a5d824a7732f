//! What players and publishers count, per executor and per interval, and how intervals merge.
//!
//! Each executor owns one [`ShardStats`] (in a `RefCell`, touched only by its own tasks). At every
//! interval boundary its reporter takes the [`IntervalStats`] out (leaving a fresh one) and sends
//! it to the controlling thread, which merges the executors' reports of the same interval into
//! one line, and the measured intervals into the totals.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Largest value a histogram holds, in microseconds (one minute); larger ones are clamped.
const HIST_MAX_US: u64 = 60_000_000;

/// An HDR histogram of microseconds, 3 significant digits.
#[derive(Debug, Clone)]
pub struct Hist(Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("static histogram bounds"))
    }
}

impl Hist {
    pub fn record(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, HIST_MAX_US));
    }

    /// Records `us` with coordinated-omission correction: a value longer than the expected
    /// interval between samples also records the samples that would have been taken while it
    /// was stuck (`us - interval`, `us - 2 * interval`, ...).
    pub fn record_correct(&mut self, us: u64, interval_us: u64) {
        let us = us.clamp(1, HIST_MAX_US);
        if self.0.record_correct(us, interval_us).is_err() {
            self.0.saturating_record(us);
        }
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides: `add` cannot fail.
        let _ = self.0.add(&other.0);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min: h.min(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: h.mean(),
        }
    }
}

/// Percentiles of a histogram (microseconds).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

/// What one class of players received.
#[derive(Debug, Clone, Default)]
pub struct PlayerStats {
    /// Relay latency of live frames (µs), coordinated-omission corrected.
    pub latency: Hist,
    /// From play sent to the first audio or video message (µs).
    pub first_frame: Hist,
    /// From play sent to the first video keyframe that is not a sequence header (µs).
    pub first_keyframe: Hist,
    /// Bytes read from the socket (everything, chunk headers included).
    pub bytes: u64,
    /// Audio and video messages with our marker.
    pub media: u64,
    /// Of those, live frames (sent after the player's Play.Start): the ones in `latency`.
    pub live: u64,
    /// Frames missing in the sequence numbers after the first live frame.
    pub lost: u64,
    /// Frames that arrived with a sequence number below one already seen.
    pub reordered: u64,
    /// Frames missing before or at the first live frame (between the late-join cache and live).
    pub join_gaps: u64,
}

impl PlayerStats {
    pub fn merge(&mut self, other: &PlayerStats) {
        self.latency.merge(&other.latency);
        self.first_frame.merge(&other.first_frame);
        self.first_keyframe.merge(&other.first_keyframe);
        self.bytes += other.bytes;
        self.media += other.media;
        self.live += other.live;
        self.lost += other.lost;
        self.reordered += other.reordered;
        self.join_gaps += other.join_gaps;
    }
}

/// Everything counted during one interval on one executor (or merged over several).
#[derive(Debug, Clone, Default)]
pub struct IntervalStats {
    /// Normal and churning players.
    pub players: PlayerStats,
    /// Slow players (`--slow`).
    pub slow: PlayerStats,
    /// Frames the publishers sent.
    pub frames_sent: u64,
    /// Payload bytes the publishers sent (FLV tag bodies).
    pub bytes_sent: u64,
    /// How late publishers sent frames after their deadline (µs): timer and executor delay plus
    /// any earlier write that had to wait.
    pub send_lag: Hist,
    /// How long publishers' socket writes waited for the server to take the bytes (µs, one
    /// record per batch of due frames): server backpressure, as opposed to generator delay.
    pub write_wait: Hist,
    /// Plays that reached Play.Start.
    pub player_joins: u64,
    /// Churning players that left on purpose.
    pub player_leaves: u64,
    /// Publishes that reached Publish.Start.
    pub publisher_starts: u64,
    /// Failed or dropped connections by (role, reason).
    pub errors: BTreeMap<(&'static str, &'static str), u64>,
    /// Notable server events by name (unpublish notifications, ...).
    pub events: BTreeMap<&'static str, u64>,
}

impl IntervalStats {
    pub fn merge(&mut self, other: &IntervalStats) {
        self.players.merge(&other.players);
        self.slow.merge(&other.slow);
        self.frames_sent += other.frames_sent;
        self.bytes_sent += other.bytes_sent;
        self.send_lag.merge(&other.send_lag);
        self.write_wait.merge(&other.write_wait);
        self.player_joins += other.player_joins;
        self.player_leaves += other.player_leaves;
        self.publisher_starts += other.publisher_starts;
        for (k, v) in &other.errors {
            *self.errors.entry(*k).or_default() += v;
        }
        for (k, v) in &other.events {
            *self.events.entry(k).or_default() += v;
        }
    }

    pub fn error(&mut self, role: &'static str, reason: &'static str) {
        *self.errors.entry((role, reason)).or_default() += 1;
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// Connections in each state right now, on one executor (or summed).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Gauges {
    /// Publishers past Publish.Start.
    pub publishing: u64,
    /// Normal and churning players past Play.Start.
    pub playing: u64,
    /// Slow players past Play.Start.
    pub slow: u64,
    /// Stalled players past Play.Start (their sockets are held, not read).
    pub stalled: u64,
}

impl Gauges {
    pub fn add(&mut self, other: &Gauges) {
        self.publishing += other.publishing;
        self.playing += other.playing;
        self.slow += other.slow;
        self.stalled += other.stalled;
    }

    /// Players of every class past Play.Start.
    pub fn all_players(&self) -> u64 {
        self.playing + self.slow + self.stalled
    }
}

/// One executor's counters.
#[derive(Debug, Default)]
pub struct ShardStats {
    pub interval: IntervalStats,
    pub gauges: Gauges,
}

impl ShardStats {
    /// The interval so far, leaving a fresh one in its place.
    pub fn take_interval(&mut self) -> IntervalStats {
        std::mem::take(&mut self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_merge_and_summarise() {
        let mut a = Hist::default();
        let mut b = Hist::default();
        for us in 1..=1000 {
            a.record(us);
        }
        b.record(u64::MAX);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 1001);
        assert!((499..=501).contains(&s.p50), "{s:?}");
        assert!(s.max >= HIST_MAX_US && s.max <= HIST_MAX_US + HIST_MAX_US / 1000, "{s:?}");
    }

    #[test]
    fn coordinated_omission_correction_backfills() {
        let mut h = Hist::default();
        h.record_correct(100_000, 33_333);
        // 100 ms stall at a 33 ms cadence: the 67 ms and 33 ms samples that were missed too.
        assert_eq!(h.count(), 3);
        h.record_correct(500, 33_333);
        assert_eq!(h.count(), 4);
    }

    #[test]
    fn intervals_merge() {
        let mut a = IntervalStats::default();
        a.error("player", "connect");
        a.players.lost = 2;
        let mut b = IntervalStats::default();
        b.error("player", "connect");
        b.error("publisher", "io");
        b.players.lost = 3;
        a.merge(&b);
        assert_eq!(a.players.lost, 5);
        assert_eq!(a.errors.get(&("player", "connect")), Some(&2));
        assert_eq!(a.error_count(), 3);
    }
}
