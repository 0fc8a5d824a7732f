//! FLV recording of published streams.
//!
//! With a record dir configured, every stream a publisher sends is also written to a file:
//! a valid FLV (header, `onMetaData`, sequence headers, every tag with its `PreviousTagSize`),
//! timestamps starting at 0 and never going back, and `duration`/`filesize` fixed up as it
//! grows and when it closes. Optionally it is cut into segments at keyframes, each of which
//! starts decodable.
//!
//! # Shape
//! One [`Recorder`] per published stream, on the stream's owner shard, created when the publish
//! starts and finished when it stops. It is two halves joined by a bounded queue:
//!
//! - the **relay side**, [`Recorder::write`], called with every relayed [`Frame`]: the pure
//!   state machine of `mux.rs` turns the frame into file operations that hold the frame's payload
//!   by reference, and they are queued. No I/O, no await, no copy of media bytes;
//! - the **file side**, a glommio task per recording (`sink.rs`), that writes the queue with
//!   io_uring (`BufferedFile::write_at`, which needs no registered `io_memory`; `sink.rs` says
//!   why not O_DIRECT), and fixes up the metadata.
//!
//! Recording never holds the relay back: when the disk falls `buffer_bytes` behind, or a write
//! fails (full disk, unwritable dir), that recording stops with an error line and
//! [`RecordCounters::recording_errors`]; the stream goes on being relayed.
//!
//! # Untrusted names
//! File names come from the operator's template filled with the publisher's app and key; see
//! [`path`] for the template syntax and for why no key can make a path that leaves the record
//! dir. A key that cannot be made safe is not recorded ([`RecordError::UnsafeKey`], logged and
//! counted by [`Recorder::start`]); the stream is still relayed.
//!
//! # Durability
//! Queued bytes reach the kernel within `flush_interval` (default 1 s) plus the disk's delay, so
//! a `kill -9` loses at most that much of the end of a recording, and what it leaves is a
//! readable FLV whose metadata was right as of its last flush. Nothing is fsynced: a power loss
//! may lose more. See `sink.rs`.
//!
//! # Lifecycle
//! [`Recorder::start`] on publish; [`Recorder::write`] for each relayed frame;
//! [`Recorder::finish`] on unpublish, publisher disconnect and shutdown (await the returned
//! futures before the executor stops, or the last bytes are lost). Dropping a `Recorder`
//! without `finish` also closes its file, in the background. A republish is a new `Recorder`,
//! hence a new file.

pub mod flv;
mod mux;
pub mod path;
mod sink;

use std::cell::RefCell;
use std::future::Future;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use glommio::task::JoinHandle;
use tracing::{error, info, warn, Instrument, Span};

use crate::frame::Frame;
pub use crate::metrics::{RecordCounters, RecordCountersSnapshot};
use mux::Muxer;
use path::{NameTemplate, Names};
use sink::{Failure, Shared, SinkParams};

pub use path::DEFAULT_TEMPLATE;

/// Shortest flush interval accepted: flushing more often only costs system calls.
pub const MIN_FLUSH_INTERVAL: Duration = Duration::from_millis(10);
/// Longest flush interval accepted: bounds what a `kill -9` can lose.
pub const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(60);
/// Smallest recording buffer accepted.
pub const MIN_BUFFER_BYTES: usize = 256 * 1024;
/// Largest recording buffer accepted, per recording.
pub const MAX_BUFFER_BYTES: usize = 1 << 30;
/// Smallest size segment accepted (a segment carries its headers again, so tiny ones are
/// mostly overhead).
pub const MIN_SEGMENT_BYTES: u64 = 64 * 1024;

/// How and where streams are recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordConfig {
    /// Where recordings go; created if missing (its parent must exist).
    pub dir: PathBuf,
    /// File name template relative to `dir`: see [`path`]. Default [`DEFAULT_TEMPLATE`].
    pub template: String,
    /// Start a new file at the first keyframe this many seconds into the current one.
    pub segment_secs: Option<u32>,
    /// Start a new file at the first keyframe once the current one has this many bytes.
    pub segment_bytes: Option<u64>,
    /// How long written frames may wait in memory before they are handed to the kernel; bounds
    /// what a crash loses. Default 1 s.
    pub flush_interval: Duration,
    /// Most bytes one recording may hold waiting for the disk before it is stopped. Must exceed
    /// the largest frame (a keyframe); default 4 MiB.
    pub buffer_bytes: usize,
}

impl RecordConfig {
    /// Recording into `dir` with the defaults.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecordConfig {
            dir: dir.into(),
            template: DEFAULT_TEMPLATE.to_owned(),
            segment_secs: None,
            segment_bytes: None,
            flush_interval: Duration::from_secs(1),
            buffer_bytes: 4 * 1024 * 1024,
        }
    }

    /// Checks the knobs; the error names the one to fix.
    pub fn validate(&self) -> Result<(), RecordError> {
        let template = NameTemplate::parse(&self.template).map_err(RecordError::Template)?;
        let segmented = self.segment_secs.is_some() || self.segment_bytes.is_some();
        if segmented && !template.has_segment() {
            return Err(RecordError::Template(format!(
                "record template {:?} must contain {{segment}} when segmenting: segments would \
                 overwrite each other's names",
                self.template
            )));
        }
        let invalid = |knob, problem: String| Err(RecordError::Config { knob, problem });
        if self.dir.as_os_str().is_empty() {
            return invalid("dir", "the record dir is empty".into());
        }
        if self.segment_secs == Some(0) {
            return invalid("segment_secs", "segment seconds must be at least 1".into());
        }
        if self.segment_bytes.is_some_and(|b| b < MIN_SEGMENT_BYTES) {
            return invalid(
                "segment_bytes",
                format!("segment bytes must be at least {MIN_SEGMENT_BYTES}"),
            );
        }
        if !(MIN_FLUSH_INTERVAL..=MAX_FLUSH_INTERVAL).contains(&self.flush_interval) {
            return invalid(
                "flush_interval",
                format!(
                    "flush interval {:?} must be within {:?}..={:?}",
                    self.flush_interval, MIN_FLUSH_INTERVAL, MAX_FLUSH_INTERVAL
                ),
            );
        }
        if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&self.buffer_bytes) {
            return invalid(
                "buffer_bytes",
                format!(
                    "record buffer of {} bytes must be within {MIN_BUFFER_BYTES}..={MAX_BUFFER_BYTES}",
                    self.buffer_bytes
                ),
            );
        }
        Ok(())
    }
}

/// Why a recording did not start or did not finish cleanly.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The app or key cannot be made into a safe file name; the stream is relayed unrecorded.
    #[error("stream not recorded: {0}")]
    UnsafeKey(String),
    /// The file name template is invalid.
    #[error("invalid record template: {0}")]
    Template(String),
    /// Another recording knob is invalid: `knob` is the [`RecordConfig`] field, so the caller
    /// can name its own setting for it.
    #[error("invalid record config: {knob}: {problem}")]
    Config { knob: &'static str, problem: String },
    /// Creating, writing or closing a file failed (full disk, permissions, ...).
    #[error("recording I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// The disk fell behind: `buffered` bytes waited against a limit of `limit`.
    #[error("recording stopped: {buffered} bytes waiting for the disk (limit {limit})")]
    Overflow { buffered: usize, limit: usize },
    /// The writer task stopped before the recording closed (the executor is going away, or it
    /// stopped after an earlier error).
    #[error("recording task ended early")]
    Cancelled,
}

/// What a finished recording left.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingSummary {
    /// The files written, in order (one per segment).
    pub paths: Vec<PathBuf>,
    /// Bytes written, all files together.
    pub bytes: u64,
    /// Media duration, all files together.
    pub duration_ms: u32,
}

/// The recording of one published stream. Shard-local; see the module doc.
#[derive(Debug)]
pub struct Recorder {
    muxer: Muxer,
    shared: Rc<RefCell<Shared>>,
    task: Option<JoinHandle<Result<RecordingSummary, RecordError>>>,
    buffer_limit: usize,
    counters: Rc<RecordCounters>,
    /// `app/key` as made safe, for log lines.
    stream: String,
}

impl Recorder {
    /// Starts recording the stream `app`/`key` (the key without its query) published at
    /// `started`. Never blocks: the file is created in the background when the first media
    /// frame arrives. Must be called on a glommio executor thread (it spawns the writer task).
    ///
    /// A refused key ([`RecordError::UnsafeKey`]) is already logged and counted here; the
    /// caller just relays without recording.
    pub fn start(
        config: Rc<RecordConfig>,
        counters: Rc<RecordCounters>,
        app: &str,
        key: &str,
        started: SystemTime,
    ) -> Result<Recorder, RecordError> {
        let template = NameTemplate::parse(&config.template).map_err(RecordError::Template)?;
        let names = Names::new(app, key, started)
            .and_then(|names| template.render(&names, 0).map(|_| names))
            .map_err(|why| {
                counters.unsafe_keys_refused.inc();
                warn!(reason = %why, "stream name unsafe for a file name: relayed, not recorded");
                RecordError::UnsafeKey(why)
            })?;
        let high_water = (config.buffer_bytes / 4).clamp(64 * 1024, sink::WRITE_CHUNK);
        let shared = Rc::new(RefCell::new(Shared::new(high_water)));
        let stream = format!("{}/{}", names.app, names.key);
        info!(stream = %stream, dir = %config.dir.display(), "recording started");
        let params = SinkParams {
            dir: config.dir.clone(),
            template,
            names,
            flush_interval: config.flush_interval,
            counters: counters.clone(),
        };
        // The writer task lives on after the call that started it: it keeps the caller's span
        // (the publisher's connection, or the shard) so its lines say whose recording it is.
        let writer = sink::run(shared.clone(), params).instrument(Span::current());
        let task = glommio::spawn_local(writer).detach();
        counters.recordings_started.inc();
        counters.recordings_active.inc();
        Ok(Recorder {
            muxer: Muxer::new(config.segment_secs, config.segment_bytes),
            shared,
            task: Some(task),
            buffer_limit: config.buffer_bytes,
            counters,
            stream,
        })
    }

    /// Records one relayed frame (metadata, sequence header, audio, video or data), in relay
    /// order. Never blocks or awaits: the payload is queued by reference for the writer task.
    /// After a failure it does nothing.
    pub fn write(&mut self, frame: &Frame) {
        let mut shared = self.shared.borrow_mut();
        if shared.is_stopped() {
            return;
        }
        self.muxer.push(frame, &mut *shared);
        let buffered = shared.buffered();
        if buffered > self.buffer_limit {
            shared.fail(Failure::Overflow { buffered, limit: self.buffer_limit });
            drop(shared);
            self.counters.recording_errors.inc();
            error!(
                stream = %self.stream,
                buffered,
                limit = self.buffer_limit,
                "recording stopped: the disk is not keeping up; the stream is still relayed"
            );
            return;
        }
        shared.notify();
    }

    /// True once the recording has stopped on an error (nothing more will be written).
    pub fn has_failed(&self) -> bool {
        self.shared.borrow().has_failed()
    }

    /// Ends the recording: writes what is queued, fixes up `onMetaData` and closes the file.
    /// The returned future completes when the file is closed; the work happens in the writer
    /// task whether or not the future is awaited.
    pub fn finish(mut self) -> impl Future<Output = Result<RecordingSummary, RecordError>> {
        self.close();
        let task = self.task.take();
        async move {
            match task {
                Some(task) => task.await.unwrap_or(Err(RecordError::Cancelled)),
                None => Err(RecordError::Cancelled),
            }
        }
    }

    fn close(&mut self) {
        let mut shared = self.shared.borrow_mut();
        if !shared.is_stopped() {
            self.muxer.finish(&mut *shared);
        }
        shared.close();
    }
}

impl Drop for Recorder {
    /// A recorder dropped without [`Recorder::finish`] still closes its file cleanly: the
    /// writer task, detached, finishes on its own.
    fn drop(&mut self) {
        if self.task.is_some() {
            self.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let config = RecordConfig::new("/var/lib/rtmp-relay");
        config.validate().expect("defaults are valid");
        assert_eq!(config.template, DEFAULT_TEMPLATE);
        assert_eq!(config.flush_interval, Duration::from_secs(1));
    }

    #[test]
    fn bad_knobs_are_named() {
        let base = RecordConfig::new("rec");
        let cases = [
            RecordConfig {
                template: "{app}/{key}.flv".into(),
                segment_secs: Some(10),
                ..base.clone()
            },
            RecordConfig { template: "../{key}.flv".into(), ..base.clone() },
            RecordConfig { segment_secs: Some(0), ..base.clone() },
            RecordConfig { segment_bytes: Some(1000), ..base.clone() },
            RecordConfig { flush_interval: Duration::ZERO, ..base.clone() },
            RecordConfig { flush_interval: Duration::from_secs(600), ..base.clone() },
            RecordConfig { buffer_bytes: 1024, ..base.clone() },
            RecordConfig { dir: PathBuf::new(), ..base.clone() },
        ];
        for config in cases {
            assert!(config.validate().is_err(), "{config:?} must be refused");
        }
        let unsegmented = RecordConfig { template: "{app}/{key}.flv".into(), ..base };
        unsegmented.validate().expect("no {segment} needed without segmentation");
    }
}
