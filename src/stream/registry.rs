//! The streams one shard knows: those it owns and its mirrors of other shards' streams.
//!
//! Connections call the registry for publish, play and leave; the runtime feeds it the other
//! shards' [`ShardMessage`]s. Every decision about a stream is taken on its owner shard: a
//! publish on another shard is a request to the owner, a play on another shard subscribes that
//! shard's mirror to the owner.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Instant, SystemTime};

use rtmp_proto::session::Media;
use tracing::{debug, info, warn, Instrument, Span};

use super::live::{notify_all, Stream};
use super::shard::{owner_of, PeerOutbox, PublishWaiter, ShardMessage, SnapshotWaiter};
use super::subscriber::Subscriber;
use super::{CloseReason, PublishRefused, PublisherInfo, RelaySettings, StreamKey};
use crate::frame::Frame;
use crate::metrics::{Counter, Limit, ShardCounters, ShardStats};
use crate::record::{RecordCounters, RecordError, Recorder};

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
    /// Players waiting for a pending snapshot before they are answered (see [`Self::join_mirror`]).
    snapshot_waiters: RefCell<HashMap<StreamKey, Vec<Rc<SnapshotWaiter>>>>,
    /// Outboxes to the other shards, indexed by shard (this shard's own slot is unused).
    outboxes: Vec<Rc<PeerOutbox>>,
    /// Mesh messages received, per sending shard.
    received: Vec<Counter>,
    publish_waiters: RefCell<HashMap<u64, Rc<PublishWaiter>>>,
    next_uid: Cell<u64>,
    next_token: Cell<u64>,
    settings: RelaySettings,
    counters: Rc<ShardCounters>,
    record_counters: Rc<RecordCounters>,
    /// Recordings finishing in the background (their files not yet closed).
    recordings_closing: Rc<Cell<usize>>,
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
            snapshot_waiters: RefCell::new(HashMap::new()),
            received: (0..shard_count).map(|_| Counter::default()).collect(),
            outboxes,
            publish_waiters: RefCell::new(HashMap::new()),
            // Uids carry the shard id in the top bits: unique across shards.
            next_uid: Cell::new((shard_id as u64) << 48),
            next_token: Cell::new(0),
            settings,
            counters,
            record_counters: Rc::default(),
            recordings_closing: Rc::default(),
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

    /// The stream of `key`, created if new, unless this shard holds `max_streams` already.
    fn get_or_create(&self, key: StreamKey, now: Instant) -> Result<Rc<Stream>, Limit> {
        if let Some(stream) = self.get(&key) {
            return Ok(stream);
        }
        if self.stream_count() >= self.settings.max_streams {
            self.counters.limit_tripped(Limit::MaxStreamsPerShard);
            return Err(Limit::MaxStreamsPerShard);
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
        Ok(stream)
    }

    /// Makes `publisher` the publisher of `key`, which this shard must own.
    pub fn publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        now: Instant,
    ) -> Result<Rc<Stream>, PublishRefused> {
        debug_assert!(self.owns(&key), "publish on the owner shard only");
        let stream = self.get_or_create(key, now).map_err(PublishRefused::Limit)?;
        if let Err(refused) = stream.start_publishing(publisher, now, &self.settings) {
            self.remove_if_unused(&stream);
            return Err(refused);
        }
        self.counters.publishes.inc();
        self.counters.publishers.inc();
        self.start_recording(&stream);
        Ok(stream)
    }

    /// Starts recording a publish that just started, if its app is recorded. A key that cannot
    /// be a safe file name is logged and counted by `Recorder::start`; the stream is relayed
    /// either way.
    fn start_recording(&self, stream: &Stream) {
        let Some(config) = self.settings.record.as_ref() else { return };
        if !self.settings.records(&stream.key.app) {
            return;
        }
        let started = Recorder::start(
            config.clone(),
            self.record_counters.clone(),
            &stream.key.app,
            &stream.key.name,
            SystemTime::now(),
        );
        match started {
            Ok(recorder) => stream.set_recorder(recorder),
            Err(RecordError::UnsafeKey(_)) => {}
            Err(e) => warn!(stream = %stream.key, error = %e, "recording not started"),
        }
    }

    /// Finishes the recording of a publish that ended: the writer task writes what is queued,
    /// fixes up `onMetaData` and closes the file in the background.
    fn finish_recording(&self, stream: &Stream) {
        let Some(recorder) = stream.take_recorder() else { return };
        let closing = self.recordings_closing.clone();
        closing.set(closing.get() + 1);
        let finish = async move {
            // The writer task logs the outcome (file, bytes, or the error).
            let _ = recorder.finish().await;
            closing.set(closing.get() - 1);
        };
        // In the span of whatever ended the publish (its connection, or the shard), so the
        // lines it logs say where.
        glommio::spawn_local(finish.instrument(Span::current())).detach();
    }

    /// Recordings whose files are still being closed.
    pub fn recordings_closing(&self) -> usize {
        self.recordings_closing.get()
    }

    /// Shutdown: every publish on this shard ends as if its publisher left (players get
    /// StreamEOF + UnpublishNotify, recordings are finished). Mirrors tell their own players.
    pub fn shutdown(&self, now: Instant) {
        for stream in self.streams() {
            if stream.stop_publishing(None, now, &self.settings) && !stream.is_mirror() {
                self.counters.publishers.dec();
            }
            self.finish_recording(&stream);
        }
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
            self.finish_recording(stream);
        }
        self.remove_if_unused(stream);
    }

    /// Whether a player may join `key` now; `Err` names the limit that refuses it (and counts
    /// it). Checked before the play is answered, so a refused player hears why.
    pub fn check_play(&self, key: &StreamKey) -> Result<(), Limit> {
        let refused = match self.get(key) {
            Some(stream) if stream.subscriber_count() >= self.settings.max_subscribers => {
                Limit::MaxSubscribersPerStream
            }
            None if self.stream_count() >= self.settings.max_streams => Limit::MaxStreamsPerShard,
            _ => return Ok(()),
        };
        self.counters.limit_tripped(refused);
        Err(refused)
    }

    /// For a player of `key` on a shard that does not own it: creates this shard's mirror if
    /// needed and, while the owner's first snapshot is on its way, returns a waiter for it. The
    /// connection answers the play only once the snapshot is in, then calls [`Self::play`].
    ///
    /// Why wait: the owner forwards frames to a mirror from the moment it handles the mirror's
    /// Subscribe. A player told Play.Start before that could miss what its publisher sends
    /// right after (up to a GOP, when a keyframe replaces the cached one in between). Once the
    /// snapshot is in, every frame published after the player's Play.Start reaches it, as on
    /// the owner. The wait is one round trip over the mesh (about 0.1 ms, see tuning.md).
    pub fn join_mirror(
        &self,
        key: &StreamKey,
        now: Instant,
    ) -> Result<Option<Rc<SnapshotWaiter>>, Limit> {
        if self.owns(key) {
            return Ok(None);
        }
        self.get_or_create(key.clone(), now)?;
        if !self.pending_snapshots.borrow().contains_key(key) {
            return Ok(None);
        }
        let waiter = Rc::new(SnapshotWaiter::default());
        self.snapshot_waiters.borrow_mut().entry(key.clone()).or_default().push(waiter.clone());
        Ok(Some(waiter))
    }

    /// A player gave up waiting for `key`'s snapshot (it left, or the owner did not answer).
    pub fn leave_mirror_wait(&self, key: &StreamKey, waiter: &Rc<SnapshotWaiter>) {
        {
            let mut waiters = self.snapshot_waiters.borrow_mut();
            if let Some(list) = waiters.get_mut(key) {
                list.retain(|w| !Rc::ptr_eq(w, waiter));
                if list.is_empty() {
                    waiters.remove(key);
                }
            }
        }
        if let Some(stream) = self.get(key) {
            self.remove_if_unused(&stream);
        }
    }

    /// Adds a player to `key` and queues the late-join cache to it. On a shard that does not
    /// own `key`, the player joins this shard's mirror (created and subscribed on first use).
    /// Call [`Self::check_play`] first.
    pub fn play(
        &self,
        key: StreamKey,
        subscriber: Rc<Subscriber>,
        now: Instant,
    ) -> Result<Rc<Stream>, Limit> {
        let stream = self.get_or_create(key, now)?;
        stream.add_subscriber(subscriber, now, &self.settings);
        self.counters.plays.inc();
        self.counters.subscribers.inc();
        Ok(stream)
    }

    /// Removes a player from `stream`.
    pub fn leave(&self, stream: &Rc<Stream>, conn_id: u64, stream_id: u32) {
        for _ in 0..stream.remove_subscriber(conn_id, stream_id) {
            self.counters.subscribers.dec();
        }
        self.remove_if_unused(stream);
    }

    fn remove_if_unused(&self, stream: &Rc<Stream>) {
        // A mirror that players wait on is in use before they join it.
        if !stream.is_unused() || self.snapshot_waiters.borrow().contains_key(&stream.key) {
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
            self.outbox(self.owner_of(&stream.key)).push(ShardMessage::Unsubscribe {
                key: stream.key.clone(),
                delivered: stream.delivery(),
            });
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
            limits: self.counters.limits_tripped(),
            recording: self.record_counters.snapshot(),
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
                let waiter = self.publish_waiters.borrow_mut().remove(&conn_id);
                match (waiter, result) {
                    (Some(waiter), result) => waiter.complete(result),
                    // The connection gave up (closed, or timed out waiting) before the owner
                    // accepted: release the stream so it does not stay published by nobody.
                    (None, Ok(uid)) => {
                        self.outbox(from).push(ShardMessage::Unpublish { uid, conn_id })
                    }
                    (None, Err(_)) => {}
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
                // Over the stream limit, the mirror gets no snapshot: its players wait for a
                // publisher as long as players wait anywhere, then stop.
                let Ok(stream) = self.get_or_create(key.clone(), now) else { return };
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
            ShardMessage::Unsubscribe { key, delivered } => {
                if let Some(stream) = self.get(&key).filter(|s| !s.is_mirror()) {
                    stream.add_departed(delivered);
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
                let waiters = self.snapshot_waiters.borrow_mut().remove(&key);
                for waiter in waiters.into_iter().flatten() {
                    waiter.complete(());
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use bytes::Bytes;
    use rtmp_proto::chunk::ChunkEncoder;
    use rtmp_proto::session::MediaKind;
    use rtmp_proto::time::RtmpTimestamp;

    use super::*;
    use crate::stream::{CacheLimits, OutQueue};

    fn settings() -> RelaySettings {
        RelaySettings {
            encoder: ChunkEncoder::new(4096),
            cache: CacheLimits { max_bytes: 1 << 20, max_ms: 10_000 },
            soft_lag_ms: 10_000,
            hard_queue_bytes: 1 << 24,
            stall: Duration::from_secs(60),
            republish_wait: Duration::from_secs(30),
            max_streams: 100,
            max_subscribers: 100,
            record: None,
            record_apps: Rc::from([]),
        }
    }

    /// Two shards' registries wired back to back, with the mesh replaced by a pump.
    struct Pair {
        shards: [Registry; 2],
        now: Instant,
    }

    impl Pair {
        fn new() -> Self {
            let registry = |id| {
                let outboxes = (0..2).map(|peer| Rc::new(PeerOutbox::new(peer, 64))).collect();
                Registry::sharded(settings(), Rc::new(ShardCounters::default()), id, outboxes)
            };
            Pair { shards: [registry(0), registry(1)], now: Instant::now() }
        }

        /// Delivers messages both ways until none are left; returns how many moved.
        fn pump(&self) -> usize {
            let mut moved = 0;
            loop {
                let mut any = false;
                for from in 0..2 {
                    let to = 1 - from;
                    while let Some(message) = self.shards[from].outbox(to).pop() {
                        self.shards[to].handle(from, message, self.now);
                        any = true;
                        moved += 1;
                    }
                }
                if !any {
                    return moved;
                }
            }
        }

        fn key_owned_by(&self, shard: usize) -> StreamKey {
            (0..)
                .map(|i| StreamKey::new("live", format!("k{i}")))
                .find(|k| self.shards[0].owner_of(k) == shard)
                .expect("a key for each shard")
        }
    }

    fn publisher(conn_id: u64) -> PublisherInfo {
        PublisherInfo { conn_id, peer: SocketAddr::from(([127, 0, 0, 1], 1000)) }
    }

    fn player(conn_id: u64, now: Instant) -> Rc<Subscriber> {
        let peer = SocketAddr::from(([127, 0, 0, 1], 2000));
        Rc::new(Subscriber::new(conn_id, peer, 1, Rc::new(OutQueue::new(now))))
    }

    #[test]
    fn a_publish_accepted_after_its_connection_gave_up_is_released() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        let waiter = pair.shards[1].request_publish(key.clone(), publisher(7));
        pair.shards[1].forget_publish_request(7);
        drop(waiter);
        pair.pump();
        let stream = pair.shards[0].get(&key);
        assert!(stream.is_none(), "the owner released the orphaned publish");
        assert_eq!(pair.shards[0].counters().publishers.get(), 0);
    }

    #[test]
    fn a_mirror_follows_the_owner_and_goes_away_with_its_last_player() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        let stream = pair.shards[0].publish(key.clone(), publisher(1), pair.now).unwrap();
        let frame = |payload: &'static [u8]| rtmp_proto::session::Media {
            stream_id: 1,
            kind: MediaKind::Video,
            timestamp: RtmpTimestamp(0),
            payload: Bytes::from_static(payload),
            is_metadata: false,
        };
        stream.relay(
            frame(&[0x17, 1, 0, 0, 0, 9]),
            pair.now,
            &settings(),
            pair.shards[0].counters(),
        );
        let remote = player(100, pair.now);
        let mirror = pair.shards[1].play(key.clone(), remote.clone(), pair.now).unwrap();
        assert!(mirror.is_mirror());
        pair.pump();
        assert!(
            remote.queue.queued_bytes() > 0,
            "the snapshot's keyframe reached the remote player"
        );
        assert_eq!(stream.mirror_shards(), vec![1]);

        // A second remote player starts from the mirror, without asking the owner.
        let second = player(101, pair.now);
        pair.shards[1].play(key.clone(), second.clone(), pair.now).unwrap();
        assert_eq!(pair.pump(), 0);
        assert!(second.queue.queued_bytes() > 0);

        pair.shards[1].leave(&mirror, 100, 1);
        pair.shards[1].leave(&mirror, 101, 1);
        pair.pump();
        assert!(pair.shards[1].get(&key).is_none());
        assert!(stream.mirror_shards().is_empty(), "the owner stopped feeding the shard");
        pair.shards[0].unpublish(&stream, 1, pair.now);
        assert!(pair.shards[0].get(&key).is_none());
    }

    #[test]
    fn what_a_mirror_delivered_stays_with_the_stream_after_the_mirror_goes() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        let stream = pair.shards[0].publish(key.clone(), publisher(1), pair.now).unwrap();
        let local = player(100, pair.now);
        pair.shards[0].play(key.clone(), local, pair.now).unwrap();
        let remote = player(200, pair.now);
        let mirror = pair.shards[1].play(key.clone(), remote, pair.now).unwrap();
        pair.pump();
        let keyframe = rtmp_proto::session::Media {
            stream_id: 1,
            kind: MediaKind::Video,
            timestamp: RtmpTimestamp(0),
            payload: Bytes::from_static(&[0x17, 1, 0, 0, 0, 9]),
            is_metadata: false,
        };
        for _ in 0..3 {
            stream.relay(keyframe.clone(), pair.now, &settings(), pair.shards[0].counters());
        }
        pair.pump();
        assert_eq!(mirror.delivery().messages_out, 3);
        assert_eq!(stream.delivery().messages_out, 3, "the owner counts its own player only");

        pair.shards[1].leave(&mirror, 200, 1);
        pair.pump();
        assert!(pair.shards[1].get(&key).is_none(), "the mirror went with its player");
        let delivered = stream.delivery();
        assert_eq!(delivered.messages_out, 6, "the owner kept the mirror's share");
        assert_eq!(delivered.bytes_out, 6 * 6);
        pair.shards[0].leave(&stream, 100, 1);
        assert_eq!(stream.delivery().messages_out, 6, "and its own departed player's");
    }

    #[test]
    fn a_stale_snapshot_for_an_earlier_mirror_is_ignored() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        pair.shards[0].publish(key.clone(), publisher(1), pair.now).unwrap();
        let first = player(100, pair.now);
        let mirror = pair.shards[1].play(key.clone(), first, pair.now).unwrap();
        // The player leaves before the owner answers, and another joins at once.
        pair.shards[1].leave(&mirror, 100, 1);
        let second = player(101, pair.now);
        let mirror = pair.shards[1].play(key.clone(), second.clone(), pair.now).unwrap();
        pair.pump();
        assert_eq!(
            mirror.publisher().map(|p| p.conn_id),
            Some(1),
            "the second mirror got its snapshot"
        );
        assert_eq!(pair.shards[1].counters().mirrors.get(), 1);
        assert_eq!(pair.shards[0].get(&key).map(|s| s.mirror_shards()), Some(vec![1]));
    }
}
