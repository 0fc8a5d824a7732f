//! The streams one shard knows: those it owns and its mirrors of other shards' streams.
//!
//! Connections call the registry for publish, play and leave; the runtime feeds it the other
//! shards' [`ShardMessage`]s. Every decision about a stream is taken on its owner shard: a
//! publish on another shard is a request to the owner, a play on another shard subscribes that
//! shard's mirror to the owner.
//!
//! A publish of a key that is held waits for one fact only the holder's shard knows: whether the
//! holder's connection is still there. A publisher that reconnects at once races its own old
//! connection's release, which the owner may not have seen yet; a holder found gone is released
//! and the key granted, a live one keeps it (see [`Registry::start_publish`]).
//!
//! Files: this one holds the index of streams, plays, limits, expiry and stats; `publish.rs`
//! who publishes what (the owner's decision, holder probes, the recording of a publish);
//! `mesh.rs` what this shard does with each message another shard sends it.

mod mesh;
mod publish;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::Instant;

use tracing::info;

use publish::ParkedPublish;
pub use publish::PublishStart;

use super::live::{notify_all, Stream};
use super::shard::{owner_of, PublishWaiter, ShardMessage, ShardOutbox, SnapshotWaiter};
use super::subscriber::Subscriber;
use super::{CloseReason, Liveness, PublishHook, RelaySettings, StreamKey};
use crate::metrics::{Counter, Limit, ShardCounters, ShardStats};
use crate::record::RecordCounters;

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
    outboxes: Vec<Rc<ShardOutbox>>,
    /// Mesh messages received, per sending shard.
    received: Vec<Counter>,
    publish_waiters: RefCell<HashMap<u64, Rc<PublishWaiter>>>,
    /// This shard's connections that publish or asked to, by id: what an owner's probe asks
    /// about. Weak: the registry never keeps a socket open.
    liveness: RefCell<HashMap<u64, Weak<dyn Liveness>>>,
    /// Publishes of keys this shard owns whose holder is on another shard, waiting for that
    /// shard to say whether the holder is still there; by probe token.
    parked: RefCell<HashMap<u64, ParkedPublish>>,
    next_probe: Cell<u64>,
    next_uid: Cell<u64>,
    next_token: Cell<u64>,
    /// Replaced whole by [`Registry::reload`]; each use takes its own reference, so a reload
    /// never meets a borrow.
    settings: RefCell<Rc<RelaySettings>>,
    counters: Rc<ShardCounters>,
    record_counters: Rc<RecordCounters>,
    /// Recordings finishing in the background (their files not yet closed).
    recordings_closing: Rc<Cell<usize>>,
    /// Told of every publish start and end of an owned stream, and of its players (push
    /// relays, pulls).
    hooks: RefCell<Vec<Rc<dyn PublishHook>>>,
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
        outboxes: Vec<Rc<ShardOutbox>>,
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
            liveness: RefCell::new(HashMap::new()),
            parked: RefCell::new(HashMap::new()),
            next_probe: Cell::new(0),
            // Uids carry the shard id in the top bits: unique across shards.
            next_uid: Cell::new((shard_id as u64) << 48),
            next_token: Cell::new(0),
            settings: RefCell::new(Rc::new(settings)),
            counters,
            record_counters: Rc::default(),
            recordings_closing: Rc::default(),
            hooks: RefCell::new(Vec::new()),
        }
    }

    /// Adds what is told of every publish start and end of a stream this shard owns, and of
    /// its players.
    pub fn add_publish_hook(&self, hook: Rc<dyn PublishHook>) {
        self.hooks.borrow_mut().push(hook);
    }

    /// The hooks, copied out so that a hook may call back into the registry.
    fn hooks(&self) -> Vec<Rc<dyn PublishHook>> {
        self.hooks.borrow().clone()
    }

    pub(super) fn hook_published(&self, stream: &Rc<Stream>, now: Instant) {
        self.hooks().iter().for_each(|hook| hook.published(stream, now));
    }

    pub(super) fn hook_unpublished(&self, stream: &Rc<Stream>, now: Instant) {
        self.hooks().iter().for_each(|hook| hook.unpublished(stream, now));
    }

    /// A player joined `stream`, owned here.
    pub(super) fn hook_wanted(&self, stream: &Rc<Stream>, now: Instant) {
        self.hooks().iter().for_each(|hook| hook.wanted(stream, now));
    }

    /// Whether a configured source feeds `key` (no connection may publish it).
    pub(super) fn reserved(&self, key: &StreamKey) -> bool {
        self.hooks.borrow().iter().any(|hook| hook.claims(key))
    }

    /// The settings in force now (a reload may replace them between two calls).
    pub fn settings(&self) -> Rc<RelaySettings> {
        self.settings.borrow().clone()
    }

    /// A reload: from now on the shard runs with `settings`. The slow-player policy and the
    /// stream and player limits apply at once, to the streams and players already there too;
    /// the late-join cache limits and the recording choice apply to streams that start from
    /// now on. The chunk encoder is kept: every player was told its chunk size when it
    /// connected, so it only changes with a restart.
    pub fn reload(&self, settings: RelaySettings) {
        let mut current = self.settings.borrow_mut();
        let encoder = current.encoder;
        *current = Rc::new(RelaySettings { encoder, ..settings });
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
            .map(|shard| {
                let received = self.received[shard].get();
                match self.outboxes.get(shard) {
                    Some(o) => (o.sent.get(), received, o.dropped.get()),
                    None => (0, received, 0),
                }
            })
            .collect()
    }

    fn outbox(&self, shard: usize) -> &Rc<ShardOutbox> {
        &self.outboxes[shard]
    }

    /// The stream of `key`, created if new, unless this shard holds `max_streams` already.
    fn get_or_create(&self, key: StreamKey, now: Instant) -> Result<Rc<Stream>, Limit> {
        if let Some(stream) = self.get(&key) {
            return Ok(stream);
        }
        if self.stream_count() >= self.settings().max_streams {
            self.counters.limit_tripped(Limit::MaxStreamsPerShard);
            return Err(Limit::MaxStreamsPerShard);
        }
        let owner = self.owner_of(&key);
        let mirror = owner != self.shard_id;
        if mirror {
            self.check_takes_requests(owner)?;
        }
        let uid = if mirror {
            0
        } else {
            let uid = self.next_uid.get() + 1;
            self.next_uid.set(uid);
            uid
        };
        let stream = Rc::new(Stream::new(key.clone(), uid, mirror, self.settings().cache, now));
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

    /// Whether shard `to` takes a new request (see [`ShardOutbox::takes_requests`]); when it
    /// is stuck, the limit that refuses the request, counted.
    fn check_takes_requests(&self, to: usize) -> Result<(), Limit> {
        if self.outbox(to).takes_requests() {
            return Ok(());
        }
        self.counters.limit_tripped(Limit::MeshControlLimit);
        Err(Limit::MeshControlLimit)
    }

    /// Recordings whose files are still being closed.
    pub fn recordings_closing(&self) -> usize {
        self.recordings_closing.get()
    }

    /// Shutdown: every publish on this shard ends as if its publisher left (players get
    /// StreamEOF + UnpublishNotify, recordings are finished). Mirrors tell their own players.
    pub fn shutdown(&self, now: Instant) {
        for stream in self.streams() {
            if stream.stop_publishing(None, now, &self.settings()) && !stream.is_mirror() {
                self.counters.publishers.dec();
                self.hook_unpublished(&stream, now);
            }
            self.finish_recording(&stream);
        }
    }

    /// Whether a player may join `key` now; `Err` names the limit that refuses it (and counts
    /// it). Checked before the play is answered, so a refused player hears why.
    pub fn check_play(&self, key: &StreamKey) -> Result<(), Limit> {
        let refused = match self.get(key) {
            Some(stream) if stream.subscriber_count() >= self.settings().max_subscribers => {
                Limit::MaxPlayersPerStream
            }
            None if self.stream_count() >= self.settings().max_streams => Limit::MaxStreamsPerShard,
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
        stream.add_subscriber(subscriber, now, &self.settings());
        self.counters.plays.inc();
        self.counters.subscribers.inc();
        if !stream.is_mirror() {
            self.hook_wanted(&stream, now);
        }
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
                        .is_some_and(|t| now.duration_since(t) >= self.settings().republish_wait)
            })
            .cloned()
            .collect();
        for stream in expired {
            let subscribers = stream.take_subscribers();
            info!(stream = %stream.key, players = subscribers.len(), "no publisher in time: stopping players");
            notify_all(
                &subscribers,
                &self.settings(),
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
            transport: Default::default(),
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

    use super::publish::PROBE_TIMEOUT;
    use super::*;
    use crate::frame::Frame;
    use crate::stream::{CacheLimits, OutQueue, PublishRefused, PublisherInfo};

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
            Self::with_control_limit(1024)
        }

        fn with_control_limit(control_limit: usize) -> Self {
            let registry = |id| {
                let outboxes = (0..2)
                    .map(|shard| Rc::new(ShardOutbox::new(shard, 64, control_limit)))
                    .collect();
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
        on_shard(conn_id, 0)
    }

    fn on_shard(conn_id: u64, shard: usize) -> PublisherInfo {
        let peer = SocketAddr::from(([127, 0, 0, 1], 1000 + conn_id as u16));
        PublisherInfo { conn_id, shard, peer }
    }

    /// A connection as the registry sees it: there, or gone.
    #[derive(Debug, Default)]
    struct Conn {
        gone: Cell<bool>,
    }

    impl Liveness for Conn {
        fn is_gone(&self) -> bool {
            self.gone.get()
        }
    }

    impl Pair {
        /// Connection `conn_id` of `shard` asks to publish `key`; its stand-in socket comes back
        /// with what the registry answered.
        fn start(&self, shard: usize, conn_id: u64, key: &StreamKey) -> (Rc<Conn>, PublishStart) {
            let conn = Rc::new(Conn::default());
            let liveness = Rc::downgrade(&conn);
            let start = self.shards[shard].start_publish(
                key.clone(),
                on_shard(conn_id, shard),
                liveness,
                self.now,
            );
            (conn, start)
        }

        /// The publisher of `key` on its owner.
        fn publisher_of(&self, key: &StreamKey) -> Option<u64> {
            let owner = self.shards[0].owner_of(key);
            self.shards[owner].get(key).and_then(|s| s.publisher()).map(|p| p.conn_id)
        }
    }

    /// The answer a waiting publish got, if it came.
    fn answer(start: &PublishStart) -> Option<Result<u64, PublishRefused>> {
        match start {
            PublishStart::Decided(result) => Some(result.as_ref().map(|p| p.uid()).map_err(|e| *e)),
            PublishStart::Waiting(waiter) => {
                futures_lite::future::block_on(futures_lite::future::poll_once(waiter.wait()))
            }
        }
    }

    fn refused(result: Option<Result<u64, PublishRefused>>) -> bool {
        matches!(result, Some(Err(PublishRefused::AlreadyPublishing { .. })))
    }

    #[test]
    fn a_key_held_by_a_live_connection_on_the_owner_is_refused_at_once() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        let (_first, start) = pair.start(0, 1, &key);
        assert!(matches!(answer(&start), Some(Ok(_))));
        let (_second, start) = pair.start(0, 2, &key);
        assert!(matches!(start, PublishStart::Decided(_)), "decided without asking anyone");
        assert!(refused(answer(&start)));
        assert_eq!(pair.pump(), 0);
        assert_eq!(pair.publisher_of(&key), Some(1), "the first is untouched");
    }

    #[test]
    fn a_key_held_by_a_gone_connection_on_the_owner_goes_to_the_new_publisher_at_once() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        let (first, _) = pair.start(0, 1, &key);
        first.gone.set(true);
        let (_second, start) = pair.start(0, 2, &key);
        assert!(matches!(start, PublishStart::Decided(Ok(_))));
        assert_eq!(pair.publisher_of(&key), Some(2));
        assert_eq!(pair.shards[0].counters().publishers.get(), 1);
        assert_eq!(pair.shards[0].counters().publishes.get(), 2);
        // The first connection's own release comes later and changes nothing.
        let stream = pair.shards[0].get(&key).unwrap();
        pair.shards[0].unpublish(&stream, 1, pair.now);
        assert_eq!(pair.publisher_of(&key), Some(2));
        assert_eq!(pair.shards[0].counters().publishers.get(), 1);
    }

    #[test]
    fn a_connection_that_ended_counts_as_gone() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        let (first, _) = pair.start(0, 1, &key);
        // Its socket dropped without a word (the registry holds it weakly).
        drop(first);
        let (_second, start) = pair.start(0, 2, &key);
        assert!(matches!(answer(&start), Some(Ok(_))));
        let (_third, start) = pair.start(0, 3, &key);
        pair.shards[0].forget_connection(2);
        assert!(refused(answer(&start)), "refused while the second is open");
        let (_fourth, start) = pair.start(0, 4, &key);
        assert!(matches!(answer(&start), Some(Ok(_))), "the second ended: forgotten");
    }

    #[test]
    fn a_holder_on_another_shard_is_asked_and_released_when_gone() {
        // The new publisher on the owner, then on the holder's own shard.
        for new_on in [0, 1] {
            let pair = Pair::new();
            let key = pair.key_owned_by(0);
            let (first, start) = pair.start(1, 1, &key);
            pair.pump();
            assert!(matches!(answer(&start), Some(Ok(_))));
            first.gone.set(true);
            let (_second, start) = pair.start(new_on, 2, &key);
            assert!(answer(&start).is_none(), "waits for the holder's shard");
            pair.pump();
            assert!(matches!(answer(&start), Some(Ok(_))), "new publisher on shard {new_on}");
            assert_eq!(pair.publisher_of(&key), Some(2));
            // The first connection's release arrives afterwards: stale, ignored.
            let uid = pair.shards[0].get(&key).unwrap().uid();
            pair.shards[1].unpublish_forwarded(0, uid, 1);
            pair.pump();
            assert_eq!(pair.publisher_of(&key), Some(2));
            assert_eq!(pair.shards[0].counters().publishers.get(), 1);
        }
    }

    #[test]
    fn a_live_holder_on_another_shard_keeps_its_key() {
        for new_on in [0, 1] {
            let pair = Pair::new();
            let key = pair.key_owned_by(0);
            let (_first, start) = pair.start(1, 1, &key);
            pair.pump();
            assert!(matches!(answer(&start), Some(Ok(_))));
            let (_second, start) = pair.start(new_on, 2, &key);
            // The probe and its answer; from shard 1, the request and the reply too.
            assert_eq!(pair.pump(), 2 + 2 * new_on);
            assert!(refused(answer(&start)), "new publisher on shard {new_on}");
            assert_eq!(pair.publisher_of(&key), Some(1));
            assert!(pair.shards[0].parked.borrow().is_empty());
        }
    }

    #[test]
    fn a_holders_shard_that_does_not_answer_in_time_means_a_refusal() {
        let pair = Pair::new();
        let key = pair.key_owned_by(0);
        let (first, _) = pair.start(1, 1, &key);
        pair.pump();
        let (_second, start) = pair.start(0, 2, &key);
        pair.shards[0].expire_probes(pair.now + PROBE_TIMEOUT / 2);
        assert!(answer(&start).is_none(), "still waiting within the bound");
        pair.shards[0].expire_probes(pair.now + PROBE_TIMEOUT);
        assert!(refused(answer(&start)));
        // The answer comes at last (the holder gone by then): too late, nothing changes.
        first.gone.set(true);
        pair.pump();
        assert_eq!(pair.publisher_of(&key), Some(1));
        assert!(pair.shards[0].parked.borrow().is_empty());
    }

    #[test]
    fn a_publish_granted_after_its_connection_gave_up_waiting_is_released() {
        for new_on in [0, 1] {
            let pair = Pair::new();
            let key = pair.key_owned_by(0);
            let (first, _) = pair.start(1, 1, &key);
            pair.pump();
            first.gone.set(true);
            let (_second, _start) = pair.start(new_on, 2, &key);
            pair.shards[new_on].forget_publish_request(2);
            pair.pump();
            assert_eq!(pair.publisher_of(&key), None, "new publisher on shard {new_on}");
            assert_eq!(pair.shards[0].counters().publishers.get(), 0);
        }
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
        let settings = settings();
        let keyframe = Rc::new(Frame::of(frame(&[0x17, 1, 0, 0, 0, 9]), &settings.encoder));
        stream.relay_frame(keyframe.clone(), pair.now, &settings, pair.shards[0].counters());
        let remote = player(100, pair.now);
        let mirror = pair.shards[1].play(key.clone(), remote.clone(), pair.now).unwrap();
        assert!(mirror.is_mirror());
        pair.pump();
        // What the player's writer would send: the cached keyframe, chunked for it.
        let sent = |player: &Subscriber| {
            let mut out = Vec::new();
            player
                .queue
                .write_with(64, pair.now, |slices| -> Result<usize, ()> {
                    slices.iter().for_each(|s| out.extend_from_slice(s));
                    Ok(slices.iter().map(|s| s.len()).sum())
                })
                .unwrap();
            out
        };
        assert_eq!(sent(&remote), keyframe.chunks, "the snapshot's keyframe reached the player");
        assert_eq!(stream.mirror_shards(), vec![1]);

        // A second remote player starts from the mirror, without asking the owner.
        let second = player(101, pair.now);
        pair.shards[1].play(key.clone(), second.clone(), pair.now).unwrap();
        assert_eq!(pair.pump(), 0);
        assert_eq!(sent(&second), keyframe.chunks, "the mirror's cache started it");

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
            let settings = settings();
            let frame = Rc::new(Frame::of(keyframe.clone(), &settings.encoder));
            stream.relay_frame(frame, pair.now, &settings, pair.shards[0].counters());
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

    /// Control messages are never dropped, so their bound is at the source: to a shard that
    /// does not drain its queue, new publishes and mirror plays are refused, while releases of
    /// what is already held still go.
    #[test]
    fn a_stuck_shard_gets_no_new_requests_but_still_gets_releases() {
        let pair = Pair::with_control_limit(2);
        // Keys owned by shard 0, asked from shard 1, whose outbox to shard 0 is never pumped.
        let keys: Vec<StreamKey> = (0..)
            .map(|i| StreamKey::new("live", format!("stuck{i}")))
            .filter(|k| pair.shards[1].owner_of(k) == 0)
            .take(3)
            .collect();
        let first = player(100, pair.now);
        let mirror = pair.shards[1].play(keys[0].clone(), first, pair.now).unwrap();
        pair.shards[1].play(keys[1].clone(), player(101, pair.now), pair.now).unwrap();
        assert_eq!(pair.shards[1].outbox(0).len(), 2, "two subscriptions queued");
        assert_eq!(
            pair.shards[1].play(keys[2].clone(), player(102, pair.now), pair.now).unwrap_err(),
            Limit::MeshControlLimit
        );
        let liveness: Weak<dyn Liveness> = Weak::<Conn>::new();
        let refused =
            pair.shards[1].start_publish(keys[2].clone(), on_shard(7, 1), liveness, pair.now);
        assert!(
            matches!(
                refused,
                PublishStart::Decided(Err(PublishRefused::Limit(Limit::MeshControlLimit)))
            ),
            "{refused:?}"
        );
        assert_eq!(pair.shards[1].counters().limits_tripped().get(Limit::MeshControlLimit), 2);
        // The player of the first key leaves: its Unsubscribe still goes.
        pair.shards[1].leave(&mirror, 100, 1);
        assert_eq!(pair.shards[1].outbox(0).len(), 3);
        // Once shard 0 catches up, requests go again.
        pair.pump();
        assert!(pair.shards[1].play(keys[2].clone(), player(102, pair.now), pair.now).is_ok());
    }
}
