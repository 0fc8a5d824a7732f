//! Which shard owns which stream, and what shards say to each other.
//!
//! A stream is owned by the shard `hash(app/key) % shards`: only that shard mutates it. Any
//! other shard reaches it with [`ShardMessage`]s over glommio's channel mesh (the runtime moves
//! them; this module decides what they say). Each shard has one [`ShardOutbox`] per other shard:
//! producers push without ever waiting, the runtime drains it into the bounded mesh channel.
//! When a shard falls behind, media to it follows the slow-subscriber policy (skip to the next
//! keyframe) while control messages always go through.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::poll_fn;
use std::task::{Context, Poll, Waker};

use super::{PublishRefused, PublisherInfo, StreamKey};
use crate::frame::{Frame, FrameClass};
use crate::metrics::{Counter, DeliveryTotals};

/// The owner of `key` among `shards`. FNV-1a: stable across builds and platforms, so an
/// operator (or an edge tier) can compute it too.
pub fn owner_of(key: &StreamKey, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.app.bytes().chain([b'/']).chain(key.name.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash % shards as u64) as usize
}

/// What one shard tells another. Everything in it is `Send`: frames carry `Bytes`.
#[derive(Debug)]
pub enum ShardMessage {
    /// To the owner: a connection on the sending shard asks to publish `key`.
    PublishRequest { key: StreamKey, publisher: PublisherInfo },
    /// To the publisher's shard: the owner's answer, with the stream's uid when accepted.
    PublishReply { conn_id: u64, result: Result<u64, PublishRefused> },
    /// To the owner: one message from a publisher on the sending shard, already encoded.
    PublisherFrame { uid: u64, conn_id: u64, frame: Frame },
    /// To the owner: that publisher stopped.
    Unpublish { uid: u64, conn_id: u64 },
    /// To the shard of a publisher's connection, from the owner of its stream, where a publish
    /// of the same key waits for the answer: is that connection still there?
    ProbePublisher { token: u64, conn_id: u64 },
    /// To the owner: the answer to a probe. `gone` when the connection closed, failed or has
    /// already ended.
    PublisherProbed { token: u64, gone: bool },
    /// To the owner: the sending shard has players for `key` and wants its frames.
    Subscribe { key: StreamKey, token: u64 },
    /// To the owner: the sending shard's last player of `key` left; `delivered` is what its
    /// mirror's players were sent and lost, which the owner keeps so the stream's counters do
    /// not go backwards.
    Unsubscribe { key: StreamKey, delivered: DeliveryTotals },
    /// To a mirror: the answer to a Subscribe: the publisher and the late-join cache.
    Snapshot {
        key: StreamKey,
        token: u64,
        uid: u64,
        publisher: Option<PublisherInfo>,
        frames: Vec<Frame>,
    },
    /// To a mirror: one live frame.
    Frame { uid: u64, frame: Frame },
    /// To a mirror: a publisher started.
    Published { uid: u64, publisher: PublisherInfo },
    /// To a mirror: the publisher left.
    Unpublished { uid: u64 },
}

/// Messages waiting for one other shard.
pub struct ShardOutbox {
    /// The shard the messages go to.
    to: usize,
    items: RefCell<VecDeque<ShardMessage>>,
    /// Frames among `items`: what the media limit counts.
    frames: Cell<usize>,
    /// Frames queued beyond which media to that shard skips to the next keyframe.
    frame_limit: usize,
    /// Control messages queued beyond which that shard counts as stuck: new requests to it
    /// (publish, subscribe, probe) are refused, so the queue grows no further than what
    /// releases already-held state (see [`Self::takes_requests`]).
    control_limit: usize,
    waker: Cell<Option<Waker>>,
    pub sent: Counter,
    pub dropped: Counter,
}

impl std::fmt::Debug for ShardOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardOutbox")
            .field("to", &self.to)
            .field("queued", &self.items.borrow().len())
            .finish_non_exhaustive()
    }
}

impl ShardOutbox {
    pub fn new(to: usize, frame_limit: usize, control_limit: usize) -> Self {
        Self {
            to,
            items: RefCell::new(VecDeque::new()),
            frames: Cell::new(0),
            frame_limit,
            control_limit,
            waker: Cell::new(None),
            sent: Counter::default(),
            dropped: Counter::default(),
        }
    }

    /// The shard the messages go to.
    pub fn to(&self) -> usize {
        self.to
    }

    pub fn len(&self) -> usize {
        self.items.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a new request may go to that shard. Control messages are never dropped (a lost
    /// Unpublish would leave a stream published by nobody), so their bound is taken at the
    /// source: past `control_limit` queued, the requests that would add state are refused,
    /// and only answers and releases, each owed for state already held, still go.
    pub fn takes_requests(&self) -> bool {
        self.len() - self.frames.get() < self.control_limit
    }

    /// Queues a control message: never dropped.
    pub fn push(&self, message: ShardMessage) {
        self.items.borrow_mut().push_back(message);
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Queues a media message unless that shard is too far behind, in which case video waits for
    /// the next keyframe that fits (`skipping` is per stream and shard); audio and headers still
    /// go. Returns whether it was queued.
    pub fn push_frame(&self, message: ShardMessage, frame: &Frame, skipping: &Cell<bool>) -> bool {
        let video = !frame.survives_skip();
        if video {
            let backed_up = self.frames.get() >= self.frame_limit;
            if skipping.get() {
                if frame.class != FrameClass::Keyframe || self.frames.get() >= self.frame_limit / 2
                {
                    self.dropped.inc();
                    return false;
                }
                skipping.set(false);
            } else if backed_up {
                skipping.set(true);
                self.dropped.inc();
                return false;
            }
        }
        self.frames.set(self.frames.get() + 1);
        self.push(message);
        true
    }

    /// Takes the next message, if any.
    pub(super) fn pop(&self) -> Option<ShardMessage> {
        let message = self.items.borrow_mut().pop_front()?;
        if matches!(message, ShardMessage::Frame { .. } | ShardMessage::PublisherFrame { .. }) {
            self.frames.set(self.frames.get() - 1);
        }
        self.sent.inc();
        Some(message)
    }

    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<ShardMessage> {
        match self.pop() {
            Some(message) => Poll::Ready(message),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }

    /// The next message to hand to the mesh.
    pub async fn next(&self) -> ShardMessage {
        poll_fn(|cx| self.poll_next(cx)).await
    }
}

/// A connection waiting for another shard's answer: the owner's decision on a publish
/// ([`PublishWaiter`]), or the owner's snapshot that makes a mirror live ([`SnapshotWaiter`]).
pub struct Waiter<T> {
    result: Cell<Option<T>>,
    waker: Cell<Option<Waker>>,
}

/// The owner's answer to a publish: the stream's uid, or why it refused.
pub type PublishWaiter = Waiter<Result<u64, PublishRefused>>;
/// A mirror's first snapshot from the owner has arrived.
pub type SnapshotWaiter = Waiter<()>;

impl<T> Default for Waiter<T> {
    fn default() -> Self {
        Self { result: Cell::new(None), waker: Cell::new(None) }
    }
}

impl<T> std::fmt::Debug for Waiter<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Waiter")
    }
}

impl<T> Waiter<T> {
    pub(super) fn complete(&self, result: T) {
        self.result.set(Some(result));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// The answer, once it came.
    pub async fn wait(&self) -> T {
        poll_fn(|cx| match self.result.take() {
            Some(result) => Poll::Ready(result),
            None => {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rtmp_proto::chunk::ChunkEncoder;
    use rtmp_proto::session::MediaKind;
    use rtmp_proto::time::RtmpTimestamp;

    fn frame(kind: MediaKind, payload: &'static [u8]) -> Frame {
        Frame::new(
            kind,
            RtmpTimestamp(0),
            Bytes::from_static(payload),
            false,
            &ChunkEncoder::new(4096),
        )
    }

    #[test]
    fn a_backed_up_shard_skips_video_to_the_next_keyframe_but_keeps_control_and_audio() {
        let outbox = ShardOutbox::new(1, 4, 1024);
        let skipping = Cell::new(false);
        let key = frame(MediaKind::Video, &[0x17, 1, 0, 0, 0, 1]);
        let inter = frame(MediaKind::Video, &[0x27, 1, 0, 0, 0, 1]);
        let audio = frame(MediaKind::Audio, &[0xaf, 1, 0x21]);
        let push = |f: &Frame| {
            outbox.push_frame(ShardMessage::Frame { uid: 1, frame: f.clone() }, f, &skipping)
        };
        assert!(push(&key));
        for _ in 0..3 {
            assert!(push(&inter));
        }
        assert!(!push(&inter), "over the limit: video is dropped");
        assert!(skipping.get());
        assert!(push(&audio), "audio still goes");
        outbox.push(ShardMessage::Unpublished { uid: 1 });
        assert_eq!(outbox.len(), 6, "control is never dropped");
        assert!(!push(&key), "still backed up: even a keyframe waits");
        // The mesh drains the outbox.
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        while outbox.poll_next(&mut cx).is_ready() {}
        assert!(!push(&inter), "after draining, inter frames wait for a keyframe");
        assert!(push(&key), "a keyframe resumes");
        assert!(!skipping.get());
        assert!(push(&inter));
        assert_eq!(outbox.dropped.get(), 3);
    }

    #[test]
    fn ownership_is_stable_and_spreads() {
        let key = StreamKey::new("live", "cam1");
        assert_eq!(owner_of(&key, 1), 0);
        assert_eq!(owner_of(&key, 4), owner_of(&key.clone(), 4));
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[owner_of(&StreamKey::new("live", format!("k{i}")), 4)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 60), "keys spread over shards: {seen:?}");
    }
}
