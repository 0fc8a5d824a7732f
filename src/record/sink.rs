//! The file side of a recording: one glommio task per recording that takes the [`Op`]s the
//! relay path queued and writes them with io_uring.
//!
//! # Why `BufferedFile::write_at`
//! glommio offers two file APIs. `DmaFile` and its stream writer use O_DIRECT: buffers must be
//! block-aligned and come from the executor's registered `io_memory`, which the runtime keeps
//! at 64 KiB - 1 MiB per shard (it is locked memory, shared with the rings; see
//! `runtime::io_memory_per_shard`), and fixing up `onMetaData` would mean a read-modify-write of
//! an aligned block. `BufferedFile::write_at` takes a plain `Vec<u8>`, needs no registered
//! memory and no alignment, and is still an io_uring write: the executor thread only queues it,
//! and the kernel completes it from the page cache (or its io-wq workers when it must wait).
//! Opening goes through io_uring too, and `mkdir` through glommio's blocking-thread pool, so
//! nothing here blocks the shard.
//!
//! # Copies
//! The relay path queues references to the shared payloads (no copy there). This task gathers
//! queued tags into one `Vec` per write of about [`WRITE_CHUNK`] bytes, because `write_at` owns
//! its buffer and glommio has no vectored file write: one `memcpy` per byte, off the relay path,
//! in exchange for one system call per chunk instead of three per tag.
//!
//! # When bytes reach the file
//! The task sleeps until something is queued, then lets bytes accumulate until `flush_interval`
//! has passed since its previous drain (or until a quarter of `buffer_bytes`, at most
//! [`WRITE_CHUNK`], is waiting, or the recording closes), then writes everything queued and
//! refreshes the `onMetaData` duration and filesize. A frame handed to
//! [`super::Recorder::write`] is therefore in the kernel within `flush_interval` plus the time
//! the disk takes for the writes before it, and survives a `kill -9` of the server from then on
//! (not a power loss: there is no fsync). A file cut short that way ends where a drain ended,
//! on a tag boundary (unless the kill lands inside a write, which can leave part of one tag that
//! readers skip), with a duration and filesize that were right at that drain.
//!
//! # Bounds
//! Bytes queued plus bytes being written may not exceed `buffer_bytes`: past it the recording
//! is stopped (see `Recorder::write`), so a slow disk costs a recording, never the relay's
//! memory or latency. One write gathers at most [`WRITE_CHUNK`] bytes, or one tag if a tag is
//! larger (at most 16 MiB, FLV's limit).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::future::{poll_fn, FutureExt};
use glommio::io::{BufferedFile, Directory, OpenOptions};
use tracing::{debug, error, info};

use super::flv::{self, MetadataPatch, FLAG_AUDIO, FLAG_VIDEO};
use super::mux::{Op, OpSink};
use super::path::{with_collision_suffix, NameTemplate, Names};
use super::{RecordCounters, RecordError, RecordingSummary};

/// Bytes gathered into one write. Large enough that a system call moves a good amount of data,
/// small enough that the gather buffer is a modest allocation.
pub const WRITE_CHUNK: usize = 512 * 1024;
/// Names tried when a rendered file name exists already (`name.flv`, `name-1.flv`, ...).
const MAX_COLLISION_SUFFIX: u32 = 32;

/// What the relay side and the writer task share (same shard, so a `RefCell`).
#[derive(Debug, Default)]
pub struct Shared {
    queue: VecDeque<Op>,
    /// File bytes in `queue`.
    queued: usize,
    /// File bytes the writer took from the queue and has not finished writing.
    in_flight: usize,
    /// No more ops will come: write everything and close.
    closing: bool,
    /// The recording failed: nothing more is queued or written.
    failed: Option<Failure>,
    waker: Option<Waker>,
    /// What the parked writer waits for.
    waiting_for: Want,
    /// Queued bytes that make the writer write before the flush interval is up.
    high_water: usize,
}

/// Why the relay side stopped a recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The disk did not keep up: this many bytes were buffered against a limit.
    Overflow { buffered: usize, limit: usize },
    /// The writer failed (and said why itself).
    Writer,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Anything queued (the writer is idle).
    #[default]
    Any,
    /// Only what cannot wait for the flush timer (the writer is accumulating).
    Urgent,
}

impl OpSink for Shared {
    fn push_op(&mut self, op: Op) {
        self.queued += op.file_len();
        self.queue.push_back(op);
    }
}

impl Shared {
    pub fn new(high_water: usize) -> Self {
        Shared { high_water, ..Shared::default() }
    }

    /// Bytes held for the disk: queued and being written.
    pub fn buffered(&self) -> usize {
        self.queued + self.in_flight
    }

    pub fn has_failed(&self) -> bool {
        self.failed.is_some()
    }

    pub fn is_stopped(&self) -> bool {
        self.closing || self.failed.is_some()
    }

    /// Stops the recording: drops what is queued and wakes the writer to close the file.
    pub fn fail(&mut self, failure: Failure) {
        self.failed.get_or_insert(failure);
        self.queue.clear();
        self.queued = 0;
        self.wake();
    }

    /// No more ops: the writer writes what is queued and closes.
    pub fn close(&mut self) {
        self.closing = true;
        self.wake();
    }

    fn urgent(&self) -> bool {
        self.closing || self.failed.is_some() || self.queued >= self.high_water
    }

    fn ready(&self, want: Want) -> bool {
        match want {
            Want::Any => !self.queue.is_empty() || self.urgent(),
            Want::Urgent => self.urgent(),
        }
    }

    /// Wakes the writer if it waits for what is now there. Cheap when it does not: the relay
    /// path calls this once per frame.
    pub fn notify(&mut self) {
        if self.waker.is_some() && self.ready(self.waiting_for) {
            self.wake();
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

async fn wait_for(shared: &RefCell<Shared>, want: Want) {
    poll_fn(|cx| {
        let mut s = shared.borrow_mut();
        if s.ready(want) {
            s.waker = None;
            Poll::Ready(())
        } else {
            s.waker = Some(cx.waker().clone());
            s.waiting_for = want;
            Poll::Pending
        }
    })
    .await
}

/// What the writer task needs besides the shared queue.
#[derive(Debug)]
pub struct SinkParams {
    pub dir: PathBuf,
    pub template: NameTemplate,
    pub names: Names,
    pub flush_interval: Duration,
    pub counters: Rc<RecordCounters>,
}

/// The file being written.
#[derive(Debug)]
struct OpenFile {
    file: BufferedFile,
    path: PathBuf,
    /// Bytes written (the end of the last complete write, always a tag boundary).
    pos: u64,
    /// Where the `onMetaData` patch window is (none if the file has no metadata tag).
    patch_at: Option<u64>,
    /// What the header says, and what the file turned out to hold.
    flags: u8,
    seen: u8,
    /// Latest tag timestamp: the file's duration.
    last_ts: u32,
    /// The (duration, filesize) the file's `onMetaData` says now.
    patched: (u32, u64),
}

/// The writer task of one recording. Returns when the recording is closed or failed.
pub async fn run(
    shared: Rc<RefCell<Shared>>,
    params: SinkParams,
) -> Result<RecordingSummary, RecordError> {
    let mut writer = Writer { params, file: None, summary: RecordingSummary::default() };
    let result = writer.serve(&shared).await;
    let counters = writer.params.counters.clone();
    counters.recordings_active.dec();
    match result {
        Ok(()) => {
            counters.recordings_finished.inc();
            info!(
                stream = %writer.stream(),
                files = writer.summary.paths.len(),
                bytes = writer.summary.bytes,
                duration_ms = writer.summary.duration_ms,
                "recording finished"
            );
            Ok(writer.summary)
        }
        Err(e) => {
            shared.borrow_mut().fail(Failure::Writer);
            if !matches!(e, RecordError::Overflow { .. }) {
                // An overflow was logged and counted where it was detected.
                counters.recording_errors.inc();
                let path = writer.file.as_ref().map(|f| f.path.display().to_string());
                error!(
                    stream = %writer.stream(),
                    path = path.as_deref().unwrap_or("-"),
                    error = %e,
                    "recording stopped; the stream is still relayed"
                );
            }
            // Leave what was written readable: fix up its metadata and close it. On a full
            // disk this still works, since it rewrites bytes that exist.
            if let Err(e) = writer.close_file().await {
                debug!(error = %e, "closing a failed recording");
            }
            Err(e)
        }
    }
}

struct Writer {
    params: SinkParams,
    file: Option<OpenFile>,
    summary: RecordingSummary,
}

impl Writer {
    fn stream(&self) -> String {
        format!("{}/{}", self.params.names.app, self.params.names.key)
    }

    async fn serve(&mut self, shared: &RefCell<Shared>) -> Result<(), RecordError> {
        let mut last_drain = Instant::now();
        loop {
            wait_for(shared, Want::Any).await;
            let deadline = last_drain + self.params.flush_interval;
            let now = Instant::now();
            if deadline > now && !shared.borrow().urgent() {
                wait_for(shared, Want::Urgent).or(glommio::timer::sleep(deadline - now)).await;
            }
            let (ops, bytes) = {
                let mut s = shared.borrow_mut();
                if let Some(failure) = s.failed {
                    return Err(failure_error(failure));
                }
                let bytes = std::mem::take(&mut s.queued);
                s.in_flight += bytes;
                (std::mem::take(&mut s.queue), bytes)
            };
            last_drain = Instant::now();
            let result = self.write_ops(ops, shared).await;
            {
                let mut s = shared.borrow_mut();
                s.in_flight = s.in_flight.saturating_sub(bytes);
            }
            result?;
            self.refresh_metadata().await?;
            let finished = {
                let s = shared.borrow();
                s.closing && s.queue.is_empty()
            };
            if finished {
                return self.close_file().await;
            }
        }
    }

    async fn write_ops(
        &mut self,
        ops: VecDeque<Op>,
        shared: &RefCell<Shared>,
    ) -> Result<(), RecordError> {
        let mut batch = Vec::new();
        let mut batch_len = 0;
        for op in ops {
            if let Some(failure) = shared.borrow().failed {
                return Err(failure_error(failure));
            }
            match op {
                Op::Open { segment, flags, patch_at } => {
                    self.write_batch(&mut batch, &mut batch_len).await?;
                    self.close_file().await?;
                    self.open_file(segment, flags, patch_at).await?;
                }
                Op::Close => {
                    self.write_batch(&mut batch, &mut batch_len).await?;
                    self.close_file().await?;
                }
                data => {
                    batch_len += data.file_len();
                    batch.push(data);
                    if batch_len >= WRITE_CHUNK {
                        self.write_batch(&mut batch, &mut batch_len).await?;
                    }
                }
            }
        }
        self.write_batch(&mut batch, &mut batch_len).await
    }

    /// Writes `batch` at the end of the current file and empties it.
    async fn write_batch(
        &mut self,
        batch: &mut Vec<Op>,
        len: &mut usize,
    ) -> Result<(), RecordError> {
        let ops = std::mem::take(batch);
        let total = std::mem::take(len);
        if ops.is_empty() {
            return Ok(());
        }
        let Some(file) = &mut self.file else {
            // The muxer opens before it writes; data without a file has nowhere to go.
            debug_assert!(false, "data op without an open file");
            return Ok(());
        };
        let start = file.pos;
        let mut done = 0;
        let mut failure = None;
        while done < total {
            let buf = gather(&ops, done, total - done);
            match file.file.write_at(buf, start + done as u64).await {
                Ok(0) => {
                    failure = Some(io::Error::new(io::ErrorKind::WriteZero, "no bytes written"));
                    break;
                }
                Ok(n) => done += n,
                Err(e) => {
                    failure = Some(io::Error::from(e));
                    break;
                }
            }
        }
        // On a failure (a full disk writes what fits, then fails), keep the whole ops that made
        // it and cut a partly written tag off, so the file still ends on a tag boundary.
        let kept = if failure.is_some() { whole_ops_len(&ops, done) } else { total };
        if kept < done {
            // Best effort: the disk is failing, and the error below is what gets reported.
            let _ = file.file.truncate(start + kept as u64).await;
        }
        file.pos += kept as u64;
        self.summary.bytes += kept as u64;
        self.params.counters.recording_bytes.add(kept as u64);
        let mut offset = 0;
        for op in &ops {
            offset += op.file_len();
            if offset > kept {
                break;
            }
            if let Op::Tag { header, .. } = op {
                file.last_ts = file.last_ts.max(flv::tag_timestamp(header));
                file.seen |= match header[0] {
                    flv::TAG_AUDIO => FLAG_AUDIO,
                    flv::TAG_VIDEO => FLAG_VIDEO,
                    _ => 0,
                };
            }
        }
        match failure {
            Some(e) => Err(RecordError::Io(annotate(e, &file.path))),
            None => Ok(()),
        }
    }

    async fn open_file(
        &mut self,
        segment: u32,
        flags: u8,
        patch_at: Option<u64>,
    ) -> Result<(), RecordError> {
        let relative = self
            .params
            .template
            .render(&self.params.names, segment)
            .map_err(RecordError::UnsafeKey)?;
        let dir = &self.params.dir;
        create_dirs(dir, relative.parent().unwrap_or(Path::new(""))).await?;
        let mut attempt = 0;
        let (file, path) = loop {
            let candidate = if attempt == 0 {
                dir.join(&relative)
            } else {
                dir.join(with_collision_suffix(&relative, attempt))
            };
            // create_new: never truncate or follow into an existing file (or symlink).
            match OpenOptions::new().write(true).create_new(true).buffered_open(&candidate).await {
                Ok(file) => break (file, candidate),
                Err(e) => {
                    let e = io::Error::from(e);
                    if e.kind() != io::ErrorKind::AlreadyExists || attempt >= MAX_COLLISION_SUFFIX {
                        return Err(RecordError::Io(annotate(e, &candidate)));
                    }
                    attempt += 1;
                }
            }
        };
        info!(stream = %self.stream(), path = %path.display(), segment, "recording to file");
        self.params.counters.files_opened.inc();
        self.summary.paths.push(path.clone());
        self.file = Some(OpenFile {
            file,
            path,
            pos: 0,
            patch_at,
            flags,
            seen: 0,
            last_ts: 0,
            patched: (0, 0),
        });
        Ok(())
    }

    /// Brings the open file's `onMetaData` duration and filesize up to date.
    async fn refresh_metadata(&mut self) -> Result<(), RecordError> {
        let Some(file) = &mut self.file else { return Ok(()) };
        let Some(patch_at) = file.patch_at else { return Ok(()) };
        let now = (file.last_ts, file.pos);
        if now == file.patched || file.pos < patch_at + MetadataPatch::LEN as u64 {
            return Ok(());
        }
        let patch = MetadataPatch { duration_ms: u64::from(now.0), filesize: now.1 };
        let result = file.file.write_at(patch.bytes().to_vec(), patch_at).await;
        match result {
            Ok(n) if n == MetadataPatch::LEN => {
                file.patched = now;
                Ok(())
            }
            Ok(_) => Err(RecordError::Io(annotate(
                io::Error::new(io::ErrorKind::WriteZero, "short metadata write"),
                &file.path,
            ))),
            Err(e) => Err(RecordError::Io(annotate(io::Error::from(e), &file.path))),
        }
    }

    /// Fixes up and closes the open file, if any.
    async fn close_file(&mut self) -> Result<(), RecordError> {
        let patched = self.refresh_metadata().await;
        let Some(file) = self.file.take() else { return patched };
        self.summary.duration_ms = self.summary.duration_ms.saturating_add(file.last_ts);
        let mut result = patched;
        // The header promised what the stream announced; say what the file holds.
        if result.is_ok() && file.seen != 0 && file.seen != file.flags {
            let flags = flv::file_header(file.seen)[4];
            if let Err(e) = file.file.write_at(vec![flags], flv::FLAGS_OFFSET).await {
                result = Err(RecordError::Io(annotate(io::Error::from(e), &file.path)));
            }
        }
        let path = file.path.clone();
        let closed = file.file.close().await;
        debug!(path = %path.display(), bytes = file.pos, "recording file closed");
        match (result, closed) {
            (Err(e), _) => Err(e),
            (Ok(()), Err(e)) => Err(RecordError::Io(annotate(io::Error::from(e), &path))),
            (Ok(()), Ok(())) => Ok(()),
        }
    }
}

fn failure_error(failure: Failure) -> RecordError {
    match failure {
        Failure::Overflow { buffered, limit } => RecordError::Overflow { buffered, limit },
        Failure::Writer => RecordError::Cancelled,
    }
}

/// `total` bytes of the file image of `ops`, starting `skip` bytes in.
fn gather(ops: &[Op], skip: usize, total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total);
    let mut skip = skip;
    for op in ops {
        let pieces: [&[u8]; 3] = match op {
            Op::Bytes(bytes) => [bytes, &[], &[]],
            Op::Tag { header, payload, trailer } => [header, payload, trailer],
            Op::Open { .. } | Op::Close => continue,
        };
        for piece in pieces {
            if skip >= piece.len() {
                skip -= piece.len();
            } else {
                out.extend_from_slice(&piece[skip..]);
                skip = 0;
            }
        }
    }
    out
}

/// Bytes of the longest run of whole ops at the start of `ops` that fits in `written` bytes.
fn whole_ops_len(ops: &[Op], written: usize) -> usize {
    let mut kept = 0;
    for op in ops {
        let end = kept + op.file_len();
        if end > written {
            break;
        }
        kept = end;
    }
    kept
}

/// Creates `dir` and the directories of `relative` under it (each may exist already).
async fn create_dirs(dir: &Path, relative: &Path) -> Result<(), RecordError> {
    let mut path = dir.to_path_buf();
    let mut levels = vec![path.clone()];
    for component in relative.components() {
        path.push(component);
        levels.push(path.clone());
    }
    for level in levels {
        match Directory::create(&level).await {
            Ok(handle) => {
                let _ = handle.close().await;
            }
            Err(e) => return Err(RecordError::Io(annotate(io::Error::from(e), &level))),
        }
    }
    Ok(())
}

/// Names the path in an error that may not (glommio's errors sometimes do).
fn annotate(e: io::Error, path: &Path) -> io::Error {
    let text = e.to_string();
    if text.contains(&*path.to_string_lossy()) {
        e
    } else {
        io::Error::new(e.kind(), format!("{}: {text}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn gather_resumes_after_a_short_write() {
        let header = flv::tag_header(flv::TAG_AUDIO, 3, 7).expect("fits");
        let ops = vec![
            Op::Bytes(Bytes::from_static(b"head")),
            Op::Tag {
                header,
                payload: Bytes::from_static(b"abc"),
                trailer: flv::tag_trailer(&header),
            },
        ];
        let whole = gather(&ops, 0, 4 + 18);
        assert_eq!(whole.len(), 22);
        assert_eq!(&whole[..4], b"head");
        assert_eq!(&whole[15..18], b"abc");
        for skip in 0..whole.len() {
            assert_eq!(gather(&ops, skip, whole.len() - skip), whole[skip..], "skip {skip}");
        }
    }

    #[test]
    fn a_short_write_keeps_whole_ops_only() {
        let ops = vec![
            Op::Bytes(Bytes::from_static(&[0; 13])),
            Op::Bytes(Bytes::from_static(&[0; 20])),
            Op::Bytes(Bytes::from_static(&[0; 7])),
        ];
        assert_eq!(whole_ops_len(&ops, 0), 0);
        assert_eq!(whole_ops_len(&ops, 12), 0);
        assert_eq!(whole_ops_len(&ops, 13), 13);
        assert_eq!(whole_ops_len(&ops, 32), 13);
        assert_eq!(whole_ops_len(&ops, 33), 33);
        assert_eq!(whole_ops_len(&ops, 40), 40);
    }

    #[test]
    fn writer_wakes_only_for_what_it_waits_for() {
        let mut shared = Shared::new(100);
        shared.waiting_for = Want::Urgent;
        shared.push_op(Op::Bytes(Bytes::from_static(&[0; 10])));
        assert!(!shared.ready(Want::Urgent));
        assert!(shared.ready(Want::Any));
        shared.push_op(Op::Bytes(Bytes::from_static(&[0; 90])));
        assert!(shared.ready(Want::Urgent), "high water reached");
        assert_eq!(shared.buffered(), 100);
        shared.fail(Failure::Overflow { buffered: 100, limit: 50 });
        assert_eq!(shared.buffered(), 0, "a failed recording frees its queue");
        assert!(shared.is_stopped());
    }
}
