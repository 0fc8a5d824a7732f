//! One player of one stream, and the slow-subscriber policy (design invariant 6) applied to
//! every frame queued to it.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Instant;

use tracing::warn;

use super::frame::{Frame, FrameClass, PLAY_STREAM_ID};
use super::queue::{CloseReason, OutQueue};
use super::RelaySettings;
use crate::metrics::{DeliveryTotals, ShardCounters};

/// One player of one stream.
#[derive(Debug)]
pub struct Subscriber {
    pub conn_id: u64,
    pub peer: SocketAddr,
    /// The message stream id the player plays on.
    pub stream_id: u32,
    pub queue: Rc<OutQueue>,
    /// Dropping video until the next keyframe (fell behind, joined without a cached GOP, or
    /// resumed from pause).
    pub(super) skipping: Cell<bool>,
    paused: Cell<bool>,
    delivery: Delivery,
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
            skipping: Cell::new(false),
            paused: Cell::new(false),
            delivery: Delivery::default(),
        }
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
        if self.stream_id == PLAY_STREAM_ID {
            self.queue.push_frame(frame.clone(), now);
        } else {
            // A player on an unusual message stream id gets its own encoding; its frames are
            // not measured for wait time.
            self.queue.push_bytes(frame.encoded_for(self.stream_id, &settings.encoder), now);
        }
    }

    /// Queues a frame from the late-join cache (counted for time to first frame only).
    pub(super) fn push_replay(&self, frame: &Rc<Frame>, now: Instant, settings: &RelaySettings) {
        if self.stream_id == PLAY_STREAM_ID {
            self.queue.push_replay(frame.clone(), now);
        } else {
            self.queue.push_bytes(frame.encoded_for(self.stream_id, &settings.encoder), now);
        }
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
        if self.queue.queued_bytes() > settings.hard_queue_bytes {
            self.disconnect(CloseReason::HardLimit, counters);
            return;
        }
        if self.queue.stalled_for(now) > settings.stall {
            self.disconnect(CloseReason::Stalled, counters);
            return;
        }
        let is_video = !frame.survives_skip();
        if (is_video || frame.class == FrameClass::Audio) && self.paused.get() {
            return;
        }
        if is_video {
            let behind = self.queue.lag_ms(frame.timestamp) > settings.soft_lag_ms;
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
                warn!(
                    peer = %self.peer,
                    conn = self.conn_id,
                    lag_ms = self.queue.lag_ms(frame.timestamp),
                    queued_bytes = self.queue.queued_bytes(),
                    "slow subscriber: skipping to the next keyframe"
                );
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

    fn disconnect(&self, reason: CloseReason, counters: &ShardCounters) {
        counters.slow_subscriber_disconnects.inc();
        bump(&self.delivery.slow_subscriber_disconnects, 1);
        warn!(
            peer = %self.peer,
            conn = self.conn_id,
            queued_bytes = self.queue.queued_bytes(),
            reason = reason.as_str(),
            "disconnecting slow subscriber"
        );
        self.queue.close(reason);
    }
}
