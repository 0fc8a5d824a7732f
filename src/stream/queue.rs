//! The per-connection outbound queue: the one place where the relay's shared frames and a
//! connection's own protocol output wait for the socket.
//!
//! Producers (the connection's session, the streams it plays) push reference-counted bytes;
//! the connection's writer task drains them with vectored writes. The queue knows how many bytes
//! it holds and how far behind its oldest media is, which is what the slow-subscriber policy
//! decides on, and it carries the writer's progress clock for stall detection. Everything is
//! shard-local (`Cell`/`RefCell`): pushing is a `VecDeque` slot and a refcount increment.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::IoSlice;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use hdrhistogram::Histogram;
use rtmp_proto::time::RtmpTimestamp;

use crate::frame::Frame;
use crate::metrics::stats::{new_latency_histogram, record_duration};
use rtmp_proto::session::MediaKind;

/// How long one stream's frames wait for its players' sockets, on one shard: the per-viewer lag
/// no other server exports. Shared by the stream and its players' queues; recorded by the
/// writers as frames leave, read when someone scrapes.
#[derive(Debug)]
pub struct WaitStats {
    /// Live frames: from arrival from the publisher to the last byte handed to the socket (µs).
    pub wait: RefCell<Histogram<u64>>,
    /// From play to the first frame handed to the socket (µs).
    pub time_to_first_frame: RefCell<Histogram<u64>>,
}

impl Default for WaitStats {
    fn default() -> Self {
        Self {
            wait: RefCell::new(new_latency_histogram()),
            time_to_first_frame: RefCell::new(new_latency_histogram()),
        }
    }
}

/// Why a queue stopped accepting data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The connection ended on its own (peer closed, error).
    ConnectionEnded,
    /// The player fell further behind than the hard limit allows.
    HardLimit,
    /// The player made no write progress for longer than the stall limit.
    Stalled,
    /// The server ends the connection once what is queued is written (a refused publisher, an
    /// expired wait for a republish).
    AfterFlush,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::ConnectionEnded => "connection ended",
            CloseReason::HardLimit => "subscriber queue over its hard limit",
            CloseReason::Stalled => "subscriber stalled",
            CloseReason::AfterFlush => "closed by server",
        }
    }
}

#[derive(Debug)]
enum Item {
    /// A live frame: its wait is measured.
    Frame(Rc<Frame>),
    /// A frame replayed from the late-join cache: it counts for time to first frame only.
    Replay(Rc<Frame>),
    Bytes(Bytes),
}

impl Item {
    fn bytes(&self) -> &[u8] {
        match self {
            Item::Frame(frame) | Item::Replay(frame) => &frame.chunks,
            Item::Bytes(bytes) => bytes,
        }
    }
}

/// The stream time a queue holds, per track: where each queued audio and video frame ends in
/// the queue's byte sequence, and its timestamp. Lag is measured per track, because a stream's
/// tracks need not share a time base (encoders that start audio seconds before video, headers
/// stamped 0 in front of media stamped hours in); comparing a video frame with a queued audio
/// frame or a header would call a player seconds behind that is not behind at all.
#[derive(Debug, Default)]
struct Backlog {
    audio: VecDeque<(u64, RtmpTimestamp)>,
    video: VecDeque<(u64, RtmpTimestamp)>,
}

impl Backlog {
    fn track(&mut self, kind: MediaKind) -> Option<&mut VecDeque<(u64, RtmpTimestamp)>> {
        match kind {
            MediaKind::Audio => Some(&mut self.audio),
            MediaKind::Video => Some(&mut self.video),
            MediaKind::Data => None,
        }
    }

    /// Forgets frames that end at or before `written`.
    fn consume(&mut self, written: u64) {
        for track in [&mut self.audio, &mut self.video] {
            while track.front().is_some_and(|&(end, _)| end <= written) {
                track.pop_front();
            }
        }
    }

    fn clear(&mut self) {
        self.audio.clear();
        self.video.clear();
    }
}

/// Media milliseconds from the oldest queued frame of a track to `newest` (of the same track).
fn span(track: &VecDeque<(u64, RtmpTimestamp)>, newest: Option<RtmpTimestamp>) -> u32 {
    match (track.front(), newest.or(track.back().map(|&(_, ts)| ts))) {
        (Some(&(_, oldest)), Some(newest)) => newest.signed_since(oldest).max(0) as u32,
        _ => 0,
    }
}

pub struct OutQueue {
    items: RefCell<VecDeque<Item>>,
    /// Bytes ever pushed: the position in the connection's byte sequence where the next item
    /// starts.
    pushed: Cell<u64>,
    backlog: RefCell<Backlog>,
    /// Bytes of the front item already written.
    front_offset: Cell<usize>,
    bytes: Cell<usize>,
    writer: Cell<Option<Waker>>,
    closed: Cell<Option<CloseReason>>,
    /// When the writer last made progress, or when the queue last went from empty to non-empty.
    last_progress: Cell<Instant>,
    bytes_written: Cell<u64>,
    /// What the peer says it has received (RTMP Acknowledgement), widened to 64 bits.
    acknowledged: Cell<u64>,
    stats: RefCell<Option<Rc<WaitStats>>>,
    /// When the player asked to play, until its first frame is written.
    play_started: Cell<Option<Instant>>,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue")
            .field("queued_bytes", &self.bytes.get())
            .field("closed", &self.closed.get())
            .finish_non_exhaustive()
    }
}

impl OutQueue {
    pub fn new(now: Instant) -> Self {
        Self {
            items: RefCell::new(VecDeque::new()),
            pushed: Cell::new(0),
            backlog: RefCell::new(Backlog::default()),
            front_offset: Cell::new(0),
            bytes: Cell::new(0),
            writer: Cell::new(None),
            closed: Cell::new(None),
            last_progress: Cell::new(now),
            bytes_written: Cell::new(0),
            acknowledged: Cell::new(0),
            stats: RefCell::new(None),
            play_started: Cell::new(None),
        }
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.bytes.get()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.get() == 0
    }

    pub fn bytes_written(&self) -> u64 {
        self.bytes_written.get()
    }

    /// Records the peer's Acknowledgement: `sequence_number` is the total it has received,
    /// modulo 2^32. It can only acknowledge what was written, so it is widened against
    /// `bytes_written` (clients differ on whether the handshake counts: a few KiB either way).
    pub fn acknowledge(&self, sequence_number: u32) {
        let written = self.bytes_written.get();
        let behind = (written as u32).wrapping_sub(sequence_number);
        // "Behind" by more than half the 32-bit space means a little ahead: a peer that
        // counted bytes we did not (the handshake). It has everything.
        let behind = if behind > u32::MAX / 2 { 0 } else { u64::from(behind) };
        self.acknowledged.set(written.saturating_sub(behind).max(1));
    }

    /// Bytes written to the socket that the peer has not acknowledged yet: what is in the
    /// kernel's buffers and on the network. Zero for peers that never acknowledge.
    pub fn unacknowledged_bytes(&self) -> u64 {
        match self.acknowledged.get() {
            0 => 0,
            acked => self.bytes_written.get().saturating_sub(acked),
        }
    }

    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.get()
    }

    /// Stream time queued, in media milliseconds: the most on any one track (audio or video),
    /// each track measured in its own timestamps.
    pub fn lag_ms(&self) -> u32 {
        self.lag_behind(None, None)
    }

    /// How far behind live this connection is: per track, from its oldest queued frame to the
    /// newest the stream has (`None`: the newest queued), the most of the two tracks.
    pub fn lag_behind(
        &self,
        newest_audio: Option<RtmpTimestamp>,
        newest_video: Option<RtmpTimestamp>,
    ) -> u32 {
        let backlog = self.backlog.borrow();
        span(&backlog.audio, newest_audio).max(span(&backlog.video, newest_video))
    }

    /// The lag this connection would have with `frame` queued too.
    pub fn lag_ms_with(&self, frame: &Frame) -> u32 {
        match frame.kind {
            MediaKind::Audio => self.lag_behind(Some(frame.timestamp), None),
            MediaKind::Video => self.lag_behind(None, Some(frame.timestamp)),
            MediaKind::Data => self.lag_ms(),
        }
    }

    /// The stream's time base may change from here on (a new publisher): what is queued so far
    /// is not compared with what comes next. It still counts against the byte limit and the
    /// stall timer until it is written.
    pub fn restart_time_base(&self) {
        self.backlog.borrow_mut().clear();
    }

    /// How long the writer has had data and made no progress.
    pub fn stalled_for(&self, now: Instant) -> std::time::Duration {
        if self.is_empty() {
            std::time::Duration::ZERO
        } else {
            now.saturating_duration_since(self.last_progress.get())
        }
    }

    /// Measures this queue's frames into `stats` from now on, and its time to first frame
    /// from `play_started`.
    pub fn attach_stats(&self, stats: Rc<WaitStats>, play_started: Instant) {
        *self.stats.borrow_mut() = Some(stats);
        self.play_started.set(Some(play_started));
    }

    pub fn push_frame(&self, frame: Rc<Frame>, now: Instant) {
        let len = frame.chunks.len();
        let timed = frame.is_timed().then_some((frame.kind, frame.timestamp));
        self.push(Item::Frame(frame), len, timed, now);
    }

    /// Queues a frame from the late-join cache.
    pub fn push_replay(&self, frame: Rc<Frame>, now: Instant) {
        let len = frame.chunks.len();
        let timed = frame.is_timed().then_some((frame.kind, frame.timestamp));
        self.push(Item::Replay(frame), len, timed, now);
    }

    pub fn push_bytes(&self, bytes: Bytes, now: Instant) {
        let len = bytes.len();
        if len > 0 {
            self.push(Item::Bytes(bytes), len, None, now);
        }
    }

    /// Queues bytes that carry `frame` for another message stream id: they count for lag like
    /// the frame itself.
    pub fn push_encoded(&self, bytes: Bytes, frame: &Frame, now: Instant) {
        let len = bytes.len();
        let timed = frame.is_timed().then_some((frame.kind, frame.timestamp));
        if len > 0 {
            self.push(Item::Bytes(bytes), len, timed, now);
        }
    }

    fn push(
        &self,
        item: Item,
        len: usize,
        timed: Option<(MediaKind, RtmpTimestamp)>,
        now: Instant,
    ) {
        if self.closed.get().is_some_and(|r| r != CloseReason::AfterFlush) {
            return;
        }
        if self.bytes.get() == 0 {
            self.last_progress.set(now);
        }
        self.items.borrow_mut().push_back(item);
        self.bytes.set(self.bytes.get() + len);
        let end = self.pushed.get() + len as u64;
        self.pushed.set(end);
        if let Some((kind, timestamp)) = timed {
            if let Some(track) = self.backlog.borrow_mut().track(kind) {
                track.push_back((end, timestamp));
            }
        }
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    /// Stops the queue. `AfterFlush` lets the writer finish what is queued first; any other
    /// reason drops what is queued and ends the writer at once.
    pub fn close(&self, reason: CloseReason) {
        if self.closed.get().is_some_and(|r| r != CloseReason::AfterFlush) {
            return;
        }
        self.closed.set(Some(reason));
        if reason != CloseReason::AfterFlush {
            self.items.borrow_mut().clear();
            self.backlog.borrow_mut().clear();
            self.bytes.set(0);
            self.front_offset.set(0);
        }
        if let Some(waker) = self.writer.take() {
            waker.wake();
        }
    }

    /// For the writer: ready when there is something to write or the queue is done.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<WriterState> {
        if self.bytes.get() > 0 {
            return Poll::Ready(WriterState::Data);
        }
        if self.closed.get().is_some() {
            return Poll::Ready(WriterState::Done);
        }
        self.writer.set(Some(cx.waker().clone()));
        Poll::Pending
    }

    /// Calls `write` with up to `max` slices of queued data, in order, then consumes the bytes
    /// it reports written. The slices borrow the queue, so `write` must not push to it.
    pub fn write_with<E>(
        &self,
        max: usize,
        now: Instant,
        write: impl FnOnce(&[IoSlice<'_>]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let written = {
            let items = self.items.borrow();
            let mut slices: [IoSlice<'_>; 64] = [IoSlice::new(&[]); 64];
            let mut count = 0;
            for (i, item) in items.iter().take(max.min(slices.len())).enumerate() {
                let bytes = item.bytes();
                slices[count] =
                    IoSlice::new(if i == 0 { &bytes[self.front_offset.get()..] } else { bytes });
                count += 1;
            }
            write(&slices[..count])?
        };
        self.consume(written, now);
        Ok(written)
    }

    fn consume(&self, mut written: usize, now: Instant) {
        if written == 0 {
            return;
        }
        self.bytes.set(self.bytes.get() - written);
        self.bytes_written.set(self.bytes_written.get() + written as u64);
        self.last_progress.set(now);
        // Positions count from the first push; bytes written count the same bytes.
        self.backlog.borrow_mut().consume(self.pushed.get() - self.bytes.get() as u64);
        let mut items = self.items.borrow_mut();
        while written > 0 {
            let Some(front) = items.front() else { break };
            let left = front.bytes().len() - self.front_offset.get();
            if written >= left {
                written -= left;
                if let Some(item) = items.pop_front() {
                    self.measure(&item, now);
                }
                self.front_offset.set(0);
            } else {
                self.front_offset.set(self.front_offset.get() + written);
                written = 0;
            }
        }
    }
}

impl OutQueue {
    fn measure(&self, item: &Item, now: Instant) {
        let frame = match item {
            Item::Frame(frame) | Item::Replay(frame) => frame,
            Item::Bytes(_) => return,
        };
        let stats = self.stats.borrow();
        let Some(stats) = stats.as_ref() else { return };
        if let Some(started) = self.play_started.take() {
            record_duration(&mut stats.time_to_first_frame.borrow_mut(), now - started);
        }
        if let Item::Frame(_) = item {
            record_duration(
                &mut stats.wait.borrow_mut(),
                now.saturating_duration_since(frame.arrived),
            );
        }
    }
}

/// What the writer should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterState {
    Data,
    Done,
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmp_proto::chunk::ChunkEncoder;
    use rtmp_proto::session::MediaKind;

    #[test]
    fn acknowledgements_are_widened_against_what_was_written() {
        let now = Instant::now();
        let queue = OutQueue::new(now);
        assert_eq!(queue.unacknowledged_bytes(), 0, "no acknowledgement yet");
        // As if 5 GiB had been written: the 32-bit sequence number has wrapped once.
        queue.bytes_written.set(5 << 30);
        let acked: u64 = (5 << 30) - 100_000;
        queue.acknowledge(acked as u32);
        assert_eq!(queue.unacknowledged_bytes(), 100_000);
        // A peer that claims a little more than was written (it counted the handshake) has
        // everything.
        queue.acknowledge(((5u64 << 30) + 3073) as u32);
        assert_eq!(queue.unacknowledged_bytes(), 0);
    }

    fn frame(ts: u32, len: usize) -> Rc<Frame> {
        let encoder = ChunkEncoder::new(4096);
        Rc::new(Frame::new(
            MediaKind::Audio,
            RtmpTimestamp(ts),
            Bytes::from(vec![0xaf; len]),
            false,
            &encoder,
        ))
    }

    #[test]
    fn partial_writes_resume_at_the_right_byte() {
        let now = Instant::now();
        let queue = OutQueue::new(now);
        queue.push_bytes(Bytes::from_static(b"hello"), now);
        queue.push_bytes(Bytes::from_static(b"world"), now);
        let mut out = Vec::new();
        while !queue.is_empty() {
            queue
                .write_with(64, now, |slices| -> Result<usize, ()> {
                    // Write at most 3 bytes per call, across slice boundaries.
                    let mut n = 0;
                    for s in slices {
                        for b in s.iter() {
                            if n == 3 {
                                return Ok(n);
                            }
                            out.push(*b);
                            n += 1;
                        }
                    }
                    Ok(n)
                })
                .unwrap();
        }
        assert_eq!(out, b"helloworld");
        assert_eq!(queue.bytes_written(), 10);
    }

    #[test]
    fn lag_and_stall_follow_the_oldest_frame() {
        let start = Instant::now();
        let queue = OutQueue::new(start);
        queue.push_frame(frame(1000, 10), start);
        queue.push_frame(frame(1500, 10), start);
        assert_eq!(queue.lag_ms(), 500);
        assert_eq!(queue.lag_ms_with(&frame(4000, 10)), 3000);
        let later = start + std::time::Duration::from_secs(5);
        assert_eq!(queue.stalled_for(later), std::time::Duration::from_secs(5));
        queue.close(CloseReason::HardLimit);
        assert!(queue.is_empty());
        queue.push_frame(frame(2000, 10), later);
        assert!(queue.is_empty(), "a closed queue takes nothing");
    }

    fn video(ts: u32) -> Rc<Frame> {
        Rc::new(Frame::new(
            MediaKind::Video,
            RtmpTimestamp(ts),
            Bytes::from_static(&[0x27, 1, 0, 0, 0, 1]),
            false,
            &ChunkEncoder::new(4096),
        ))
    }

    #[test]
    fn lag_is_measured_per_track_and_ignores_headers() {
        let now = Instant::now();
        let queue = OutQueue::new(now);
        // A sequence header stamped 0 in front of media stamped 100 s in.
        let header = Rc::new(Frame::new(
            MediaKind::Video,
            RtmpTimestamp(0),
            Bytes::from_static(&[0x17, 0, 0, 0, 0, 1]),
            false,
            &ChunkEncoder::new(4096),
        ));
        queue.push_frame(header, now);
        assert_eq!(queue.lag_ms_with(&video(100_000)), 0, "headers are not on the clock");
        // Audio stamped 9 s behind video: each track is measured on its own.
        queue.push_frame(frame(91_000, 10), now);
        queue.push_frame(video(100_000), now);
        assert_eq!(queue.lag_ms_with(&video(100_040)), 40);
        queue.push_frame(frame(91_500, 10), now);
        assert_eq!(queue.lag_ms(), 500);
        // Once written, frames no longer count.
        queue
            .write_with(64, now, |s| -> Result<usize, ()> { Ok(s.iter().map(|s| s.len()).sum()) })
            .unwrap();
        assert_eq!(queue.lag_ms(), 0);
    }

    #[test]
    fn a_new_time_base_is_not_compared_with_the_old_one() {
        let now = Instant::now();
        let queue = OutQueue::new(now);
        queue.push_frame(video(500_000), now);
        assert_eq!(queue.lag_ms_with(&video(600_000)), 100_000);
        // A republish continues its clock 100 s on while the old frames still wait.
        queue.restart_time_base();
        assert_eq!(queue.lag_ms_with(&video(600_000)), 0);
        queue.push_frame(video(600_000), now);
        assert_eq!(queue.lag_ms_with(&video(600_040)), 40);
        assert!(queue.queued_bytes() > 0, "the old frames still count as bytes");
    }
}
