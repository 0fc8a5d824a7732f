//! The streams one shard knows: those it owns and its mirrors of other shards' streams.
//!
//! Connections call the registry for publish, play and leave; the runtime feeds it the other
//! shards' [`ShardMessage`]s. Every decision about a stream is taken on its owner shard: a
//! publish on another shard is a request to the owner, a play on another shard subscribes that
//! shard's mirror to the owner.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use rtmp_proto::session::Media;
use tracing::{debug, info};

use super::frame::Frame;
use super::live::{notify_all, Stream};
use super::shard::{owner_of, PeerOutbox, PublishWaiter, ShardMessage};
use super::subscriber::Subscriber;
use super::{CloseReason, PublishRefused, PublisherInfo, RelaySettings, StreamKey};
use crate::metrics::{Counter, ShardCounters, ShardStats};

/// The streams of one shard.
#[derive(Debug)]
pub struct Registry {
    shard_id: usize,
    shard_count: usize,
    /// Owned streams and mirrors, by key: a key is owned here or mirrored here, never both.
    streams: RefCell<HashMap<StreamKey, Rc<Stream>>>,
    /// The same streams by the owner's uid, for mesh messages.
    by_uid: RefCell<HashMap<u64, Rc<Stream>>>,
    /// Mirrors waiting for their snapshot: key -> the Subscribe token they sent.
    pending_snapshots: RefCell<HashMap<StreamKey, u64>>,
    /// Outboxes to the other shards, indexed by shard (this shard's own slot is unused).
    outboxes: Vec<Rc<PeerOutbox>>,
    /// Mesh messages received, per sending shard.
    received: Vec<Counter>,
    publish_waiters: RefCell<HashMap<u64, Rc<PublishWaiter>>>,
    next_uid: Cell<u64>,
    next_token: Cell<u64>,
    settings: RelaySettings,
    counters: Rc<ShardCounters>,
}

impl Registry {
    /// A registry for a server with one shard.
    pub fn new(settings: RelaySettings, counters: Rc<ShardCounters>) -> Self {
        Self::sharded(settings, counters, 0, Vec::new())
    }

    /// The registry of shard `shard_id`, with one outbox per shard (`outboxes.len()` is the
    /// shard count; an empty list means one shard).
    pub fn sharded(
        settings: RelaySettings,
        counters: Rc<ShardCounters>,
        shard_id: usize,
        outboxes: Vec<Rc<PeerOutbox>>,
    ) -> Self {
        let shard_count = outboxes.len().max(1);
        Self {
            shard_id,
            shard_count,
            streams: RefCell::new(HashMap::new()),
            by_uid: RefCell::new(HashMap::new()),
            pending_snapshots: RefCell::new(HashMap::new()),
            received: (0..shard_count).map(|_| Counter::default()).collect(),
            outboxes,
            publish_waiters: RefCell::new(HashMap::new()),
            // Uids carry the shard id in the top bits: unique across shards.
            next_uid: Cell::new((shard_id as u64) << 48),
            next_token: Cell::new(0),
            settings,
            counters,
        }
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    pub fn shard_id(&self) -> usize {
        self.shard_id
    }

    /// Which shard owns `key`.
    pub fn owner_of(&self, key: &StreamKey) -> usize {
        owner_of(key, self.shard_count)
    }

    pub fn owns(&self, key: &StreamKey) -> bool {
        self.owner_of(key) == self.shard_id
    }

    pub fn get(&self, key: &StreamKey) -> Option<Rc<Stream>> {
        self.streams.borrow().get(key).cloned()
    }

    /// Streams this shard owns or mirrors.
    pub fn stream_count(&self) -> usize {
        self.streams.borrow().len()
    }

    /// All streams (owned and mirrors), for stats.
    pub fn streams(&self) -> Vec<Rc<Stream>> {
        self.streams.borrow().values().cloned().collect()
    }

    /// Mesh messages sent to and received from each shard, and media dropped to each.
    pub fn mesh_counts(&self) -> Vec<(u64, u64, u64)> {
        (0..self.shard_count)
            .map(|peer| {
                let received = self.received[peer].get();
                match self.outboxes.get(peer) {
                    Some(o) => (o.sent.get(), received, o.dropped.get()),
                    None => (0, received, 0),
                }
            })
            .collect()
    }

    fn outbox(&self, shard: usize) -> &Rc<PeerOutbox> {
        &self.outboxes[shard]
    }

    fn get_or_create(&self, key: StreamKey, now: Instant) -> Rc<Stream> {
        if let Some(stream) = self.get(&key) {
            return stream;
        }
        let owner = self.owner_of(&key);
        let mirror = owner != self.shard_id;
        let uid = if mirror {
            0
        } else {
            let uid = self.next_uid.get() + 1;
            self.next_uid.set(uid);
            uid
        };
        let stream = Rc::new(Stream::new(key.clone(), uid, mirror, self.settings.cache, now));
        self.streams.borrow_mut().insert(key.clone(), stream.clone());
        if mirror {
            self.counters.mirrors.inc();
            let token = self.next_token.get() + 1;
            self.next_token.set(token);
            self.pending_snapshots.borrow_mut().insert(key.clone(), token);
            self.outbox(owner).push(ShardMessage::Subscribe { key, token });
        } else {
            self.counters.streams.inc();
            self.by_uid.borrow_mut().insert(uid, stream.clone());
        }
        stream
    }

    /// Makes `publisher` the publisher of `key`, which this shard must own.
    pub fn publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        now: Instant,
    ) -> Result<Rc<Stream>, PublishRefused> {
        debug_assert!(self.owns(&key), "publish on the owner shard only");
        let stream = self.get_or_create(key, now);
        if let Err(refused) = stream.start_publishing(publisher, now, &self.settings) {
            self.remove_if_unused(&stream);
            return Err(refused);
        }
        self.counters.publishes.inc();
        self.counters.publishers.inc();
        Ok(stream)
    }

    /// Asks the owner of `key` (another shard) to accept `publisher`; the answer arrives
    /// through the returned waiter.
    pub fn request_publish(&self, key: StreamKey, publisher: PublisherInfo) -> Rc<PublishWaiter> {
        let waiter = Rc::new(PublishWaiter::default());
        self.publish_waiters.borrow_mut().insert(publisher.conn_id, waiter.clone());
        let owner = self.owner_of(&key);
        self.outbox(owner).push(ShardMessage::PublishRequest { key, publisher });
        waiter
    }

    /// Gives up on a publish request (the connection ended or timed out while waiting).
    pub fn forget_publish_request(&self, conn_id: u64) {
        self.publish_waiters.borrow_mut().remove(&conn_id);
    }

    /// Sends one message of a publisher on this shard to the owner of its stream, encoded here
    /// once. `skipping` is the publisher's own skip state for a backed-up owner.
    pub fn forward_published(
        &self,
        owner: usize,
        uid: u64,
        conn_id: u64,
        media: Media,
        skipping: &Cell<bool>,
    ) {
        let frame = Frame::new(
            media.kind,
            media.timestamp,
            media.payload,
            media.is_metadata,
            &self.settings.encoder,
        );
        let message = ShardMessage::PublisherFrame { uid, conn_id, frame: frame.clone() };
        self.outbox(owner).push_frame(message, &frame, skipping);
    }

    /// Ends a publish whose stream another shard owns.
    pub fn unpublish_remote(&self, owner: usize, uid: u64, conn_id: u64) {
        self.outbox(owner).push(ShardMessage::Unpublish { uid, conn_id });
    }

    /// Ends `conn_id`'s publishing of `stream` (owned here).
    pub fn unpublish(&self, stream: &Rc<Stream>, conn_id: u64, now: Instant) {
        if stream.stop_publishing(Some(conn_id), now, &self.settings) {
            self.counters.publishers.dec();
        }
        self.remove_if_unused(stream);
    }

    /// Adds a player to `key` and queues the late-join cache to it. On a shard that does not
    /// own `key`, the player joins this shard's mirror (created and subscribed on first use).
    pub fn play(&self, key: StreamKey, subscriber: Rc<Subscriber>, now: Instant) -> Rc<Stream> {
        let stream = self.get_or_create(key, now);
        stream.add_subscriber(subscriber, now, &self.settings);
        self.counters.plays.inc();
        self.counters.subscribers.inc();
        stream
    }

    /// Removes a player from `stream`.
    pub fn leave(&self, stream: &Rc<Stream>, conn_id: u64, stream_id: u32) {
        for _ in 0..stream.remove_subscriber(conn_id, stream_id) {
            self.counters.subscribers.dec();
        }
        self.remove_if_unused(stream);
    }

    fn remove_if_unused(&self, stream: &Rc<Stream>) {
        if !stream.is_unused() {
            return;
        }
        let removed = {
            let mut streams = self.streams.borrow_mut();
            if streams.get(&stream.key).is_some_and(|s| Rc::ptr_eq(s, stream)) {
                streams.remove(&stream.key);
                true
            } else {
                false
            }
        };
        if !removed {
            return;
        }
        let mut by_uid = self.by_uid.borrow_mut();
        if by_uid.get(&stream.uid()).is_some_and(|s| Rc::ptr_eq(s, stream)) {
            by_uid.remove(&stream.uid());
        }
        if stream.is_mirror() {
            self.counters.mirrors.dec();
            self.pending_snapshots.borrow_mut().remove(&stream.key);
            self.outbox(self.owner_of(&stream.key))
                .push(ShardMessage::Unsubscribe { key: stream.key.clone() });
        } else {
            self.counters.streams.dec();
        }
    }

    /// Stops players that waited longer than `republish_wait` for a publisher: Play.Stop, then
    /// their connections close once that is written. Called periodically by the shard.
    pub fn expire_waiting(&self, now: Instant) {
        let expired: Vec<Rc<Stream>> = self
            .streams
            .borrow()
            .values()
            .filter(|s| {
                s.subscriber_count() > 0
                    && s.idle_since()
                        .is_some_and(|t| now.duration_since(t) >= self.settings.republish_wait)
            })
            .cloned()
            .collect();
        for stream in expired {
            let subscribers = stream.take_subscribers();
            info!(stream = %stream.key, players = subscribers.len(), "no publisher in time: stopping players");
            notify_all(
                &subscribers,
                &self.settings,
                &stream.key.name,
                now,
                rtmp_proto::session::notify::play_stopped,
            );
            for subscriber in &subscribers {
                subscriber.queue.close(CloseReason::AfterFlush);
                self.counters.republish_wait_expired.inc();
                self.counters.subscribers.dec();
            }
            self.remove_if_unused(&stream);
        }
    }

    /// Periodic work: rates every second.
    pub fn tick(&self, now: Instant) {
        for stream in self.streams.borrow().values() {
            stream.tick(now);
        }
    }

    /// Everything this shard reports when someone scrapes.
    pub fn shard_stats(&self, now: Instant) -> ShardStats {
        ShardStats {
            shard: self.shard_id,
            counters: self.counters.snapshot(),
            protocol_errors: self.counters.protocol_errors_by_kind(),
            mesh: self.mesh_counts(),
            streams: self.streams.borrow().values().map(|s| s.stats(self.shard_id, now)).collect(),
        }
    }

    /// Handles one message from shard `from`.
    pub fn handle(&self, from: usize, message: ShardMessage, now: Instant) {
        if let Some(counter) = self.received.get(from) {
            counter.inc();
        }
        match message {
            ShardMessage::PublishRequest { key, publisher } => {
                let conn_id = publisher.conn_id;
                let result = self.publish(key.clone(), publisher, now).map(|stream| stream.uid());
                if result.is_ok() {
                    debug!(stream = %key, from, "publish from another shard accepted");
                }
                self.outbox(from).push(ShardMessage::PublishReply { conn_id, result });
            }
            ShardMessage::PublishReply { conn_id, result } => {
                if let Some(waiter) = self.publish_waiters.borrow_mut().remove(&conn_id) {
                    waiter.complete(result);
                }
            }
            ShardMessage::PublisherFrame { uid, conn_id, frame } => {
                let stream = self.by_uid.borrow().get(&uid).cloned();
                if let Some(stream) =
                    stream.filter(|s| s.publisher().is_some_and(|p| p.conn_id == conn_id))
                {
                    stream.relay_frame(Rc::new(frame), now, &self.settings, &self.counters);
                }
            }
            ShardMessage::Unpublish { uid, conn_id } => {
                let stream = self.by_uid.borrow().get(&uid).cloned();
                if let Some(stream) = stream {
                    self.unpublish(&stream, conn_id, now);
                }
            }
            ShardMessage::Subscribe { key, token } => {
                let stream = self.get_or_create(key.clone(), now);
                let (publisher, frames) =
                    stream.add_remote(from, self.outbox(from).clone(), &self.settings.encoder);
                self.outbox(from).push(ShardMessage::Snapshot {
                    key,
                    token,
                    uid: stream.uid(),
                    publisher,
                    frames,
                });
            }
            ShardMessage::Unsubscribe { key } => {
                if let Some(stream) = self.get(&key).filter(|s| !s.is_mirror()) {
                    stream.remove_remote(from);
                    self.remove_if_unused(&stream);
                }
            }
            ShardMessage::Snapshot { key, token, uid, publisher, frames } => {
                // Only the answer to this mirror's own Subscribe counts: an earlier mirror of
                // the same key may have left with its answer still in flight.
                if self.pending_snapshots.borrow().get(&key) != Some(&token) {
                    return;
                }
                self.pending_snapshots.borrow_mut().remove(&key);
                if let Some(mirror) = self.get(&key).filter(|s| s.is_mirror()) {
                    mirror.set_uid(uid);
                    self.by_uid.borrow_mut().insert(uid, mirror.clone());
                    mirror.load_snapshot(publisher, frames, now, &self.settings);
                }
            }
            ShardMessage::Frame { uid, frame } => {
                let mirror = self.by_uid.borrow().get(&uid).cloned();
                if let Some(mirror) = mirror.filter(|s| s.is_mirror()) {
                    mirror.relay_frame(Rc::new(frame), now, &self.settings, &self.counters);
                }
            }
            ShardMessage::Published { uid, publisher } => {
                let mirror = self.by_uid.borrow().get(&uid).cloned();
                if let Some(mirror) = mirror.filter(|s| s.is_mirror()) {
                    let _ = mirror.start_publishing(publisher, now, &self.settings);
                }
            }
            ShardMessage::Unpublished { uid } => {
                let mirror = self.by_uid.borrow().get(&uid).cloned();
                if let Some(mirror) = mirror.filter(|s| s.is_mirror()) {
                    mirror.stop_publishing(None, now, &self.settings);
                }
            }
        }
    }
}
