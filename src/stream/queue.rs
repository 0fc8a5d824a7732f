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

use super::frame::Frame;
use crate::metrics::stats::{new_latency_histogram, record_duration};

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

pub struct OutQueue {
    items: RefCell<VecDeque<Item>>,
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

    /// Media milliseconds between the oldest queued frame and `timestamp`: how far behind live
    /// this connection is. Zero when the front of the queue is not media.
    pub fn lag_ms(&self, timestamp: RtmpTimestamp) -> u32 {
        match self.items.borrow().front() {
            Some(Item::Frame(front) | Item::Replay(front)) => {
                timestamp.signed_since(front.timestamp).max(0) as u32
            }
            _ => 0,
        }
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
        self.push(Item::Frame(frame), len, now);
    }

    /// Queues a frame from the late-join cache.
    pub fn push_replay(&self, frame: Rc<Frame>, now: Instant) {
        let len = frame.chunks.len();
        self.push(Item::Replay(frame), len, now);
    }

    pub fn push_bytes(&self, bytes: Bytes, now: Instant) {
        let len = bytes.len();
        if len > 0 {
            self.push(Item::Bytes(bytes), len, now);
        }
    }

    fn push(&self, item: Item, len: usize, now: Instant) {
        if self.closed.get().is_some_and(|r| r != CloseReason::AfterFlush) {
            return;
        }
        if self.bytes.get() == 0 {
            self.last_progress.set(now);
        }
        self.items.borrow_mut().push_back(item);
        self.bytes.set(self.bytes.get() + len);
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
        assert_eq!(queue.lag_ms(RtmpTimestamp(4000)), 3000);
        let later = start + std::time::Duration::from_secs(5);
        assert_eq!(queue.stalled_for(later), std::time::Duration::from_secs(5));
        queue.close(CloseReason::HardLimit);
        assert!(queue.is_empty());
        queue.push_frame(frame(2000, 10), later);
        assert!(queue.is_empty(), "a closed queue takes nothing");
    }
}
