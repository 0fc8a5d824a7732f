//! What recording did on one shard: the counters the recorder bumps and the stats API reports.

use super::{Counter, Gauge};

/// What recording did on one shard. Shard-local cells, like the
/// other shard counters. Defined here, beside the counters it is reported with, so that
/// metrics depends on nothing else in the crate; `record` bumps them.
#[derive(Debug, Default)]
pub struct RecordCounters {
    /// Recorders started (publishes recorded).
    pub recordings_started: Counter,
    /// Recordings that closed cleanly.
    pub recordings_finished: Counter,
    /// Recordings whose writer is still running.
    pub recordings_active: Gauge,
    /// Files created (one per segment).
    pub files_opened: Counter,
    /// Bytes written to recording files.
    pub recording_bytes: Counter,
    /// Recordings stopped by a write error, a full disk or a disk that did not keep up.
    pub recording_errors: Counter,
    /// Publishes not recorded because their app or key cannot be a safe file name.
    pub unsafe_keys_refused: Counter,
}

/// A plain copy of [`RecordCounters`], for stats and summing over shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecordCountersSnapshot {
    pub recordings_started: u64,
    pub recordings_finished: u64,
    pub recordings_active: i64,
    pub files_opened: u64,
    pub recording_bytes: u64,
    pub recording_errors: u64,
    pub unsafe_keys_refused: u64,
}

impl RecordCounters {
    pub fn snapshot(&self) -> RecordCountersSnapshot {
        RecordCountersSnapshot {
            recordings_started: self.recordings_started.get(),
            recordings_finished: self.recordings_finished.get(),
            recordings_active: self.recordings_active.get(),
            files_opened: self.files_opened.get(),
            recording_bytes: self.recording_bytes.get(),
            recording_errors: self.recording_errors.get(),
            unsafe_keys_refused: self.unsafe_keys_refused.get(),
        }
    }
}

impl std::ops::Add for RecordCountersSnapshot {
    type Output = RecordCountersSnapshot;

    fn add(self, o: RecordCountersSnapshot) -> RecordCountersSnapshot {
        RecordCountersSnapshot {
            recordings_started: self.recordings_started + o.recordings_started,
            recordings_finished: self.recordings_finished + o.recordings_finished,
            recordings_active: self.recordings_active + o.recordings_active,
            files_opened: self.files_opened + o.files_opened,
            recording_bytes: self.recording_bytes + o.recording_bytes,
            recording_errors: self.recording_errors + o.recording_errors,
            unsafe_keys_refused: self.unsafe_keys_refused + o.unsafe_keys_refused,
        }
    }
}
