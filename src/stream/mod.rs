//! Streams: who publishes what, who plays it, and the fan-out between them.
//!
//! A shard owns a [`Registry`] of the streams whose key it owns; each [`Stream`] holds its
//! publisher, its late-join cache and its subscribers, all shard-local (`Rc`, `RefCell`,
//! `Cell`). A published message becomes one [`Frame`], encoded once, and each subscriber's
//! queue gets a reference to it: one queue push per subscriber, no copy.
//!
//! This module knows nothing of sockets: subscribers are [`OutQueue`]s that a connection
//! drains.

mod cache;
pub mod frame;
pub mod queue;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtmp_proto::chunk::ChunkEncoder;
use rtmp_proto::media::{self, AudioConfig, VideoConfig};
use rtmp_proto::session::{notify, Media, MediaKind};
use rtmp_proto::time::RtmpTimestamp;
use tracing::{info, warn};

pub use cache::{CacheLimits, LateJoinCache};
pub use frame::{Frame, FrameClass, PLAY_STREAM_ID};
pub use queue::{CloseReason, OutQueue};

use crate::metrics::ShardCounters;

/// A stream's identity: the `connect` app and the publish/play name without its query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub app: String,
    pub name: String,
}

impl StreamKey {
    pub fn new(app: impl Into<String>, name: impl Into<String>) -> Self {
        Self { app: app.into(), name: name.into() }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

/// The relay's knobs, resolved from the config once per shard.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Encodes every frame and notification at the server's outgoing chunk size.
    pub encoder: ChunkEncoder,
    pub cache: CacheLimits,
    /// A player further behind live than this skips to the next keyframe.
    pub soft_lag_ms: u32,
    /// A player with more queued bytes than this is disconnected.
    pub hard_queue_bytes: usize,
    /// A player with data queued and no write progress for this long is disconnected.
    pub stall: Duration,
    /// How long players wait for a publisher that left (or never came).
    pub republish_wait: Duration,
}

/// Who publishes a stream.
#[derive(Debug, Clone)]
pub struct PublisherInfo {
    pub conn_id: u64,
    pub peer: SocketAddr,
}

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
    skipping: Cell<bool>,
    paused: Cell<bool>,
    dropped: Cell<u64>,
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
            dropped: Cell::new(0),
        }
    }

    /// Frames this subscriber skipped.
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    /// Pause stops video and audio; unpause resumes at the next keyframe.
    pub fn set_paused(&self, paused: bool) {
        self.paused.set(paused);
        if !paused {
            self.skipping.set(true);
        }
    }

    fn push_frame(&self, frame: &Rc<Frame>, now: Instant, settings: &RelaySettings) {
        if self.stream_id == PLAY_STREAM_ID {
            self.queue.push_frame(frame.clone(), now);
        } else {
            self.queue.push_bytes(frame.encoded_for(self.stream_id, &settings.encoder), now);
        }
    }

    /// Queues one live frame, applying the slow-subscriber policy (design invariant 6).
    fn deliver(
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
        self.push_frame(frame, now, settings);
    }

    fn drop_frame(&self, counters: &ShardCounters) {
        self.dropped.set(self.dropped.get() + 1);
        counters.messages_dropped.inc();
    }

    fn disconnect(&self, reason: CloseReason, counters: &ShardCounters) {
        counters.slow_subscriber_disconnects.inc();
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

/// Why a publish was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishRefused {
    /// Someone publishes this key already; the first publisher keeps it.
    AlreadyPublishing { by: SocketAddr },
}

impl fmt::Display for PublishRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishRefused::AlreadyPublishing { by } => write!(f, "already published by {by}"),
        }
    }
}

/// What a stream knows about its codecs, from the sequence headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodecInfo {
    pub video: Option<VideoConfig>,
    pub audio: Option<AudioConfig>,
    /// Whether the codec line was logged for the current publisher.
    logged: bool,
}

#[derive(Debug)]
struct StreamState {
    publisher: Option<PublisherInfo>,
    cache: LateJoinCache,
    subscribers: Vec<Rc<Subscriber>>,
    codecs: CodecInfo,
    /// Since when the stream has had no publisher (players wait until `republish_wait`).
    idle_since: Option<Instant>,
    last_timestamp: RtmpTimestamp,
    messages_in: u64,
    bytes_in: u64,
}

/// One live stream on its owner shard.
#[derive(Debug)]
pub struct Stream {
    pub key: StreamKey,
    state: RefCell<StreamState>,
}

impl Stream {
    fn new(key: StreamKey, cache: CacheLimits, now: Instant) -> Self {
        Self {
            key,
            state: RefCell::new(StreamState {
                publisher: None,
                cache: LateJoinCache::new(cache),
                subscribers: Vec::new(),
                codecs: CodecInfo::default(),
                idle_since: Some(now),
                last_timestamp: RtmpTimestamp::ZERO,
                messages_in: 0,
                bytes_in: 0,
            }),
        }
    }

    pub fn publisher(&self) -> Option<PublisherInfo> {
        self.state.borrow().publisher.clone()
    }

    pub fn subscriber_count(&self) -> usize {
        self.state.borrow().subscribers.len()
    }

    pub fn codecs(&self) -> CodecInfo {
        self.state.borrow().codecs.clone()
    }

    pub fn gop_cache_bytes(&self) -> usize {
        self.state.borrow().cache.gop_bytes()
    }

    /// Messages and payload bytes received from publishers.
    pub fn ingress(&self) -> (u64, u64) {
        let state = self.state.borrow();
        (state.messages_in, state.bytes_in)
    }

    /// Pauses or resumes one player of this stream.
    pub fn set_paused(&self, conn_id: u64, stream_id: u32, paused: bool) {
        let state = self.state.borrow();
        for s in
            state.subscribers.iter().filter(|s| s.conn_id == conn_id && s.stream_id == stream_id)
        {
            s.set_paused(paused);
        }
    }

    /// Relays one published message: classify and encode once, update the cache, queue a
    /// reference to every subscriber.
    pub fn relay(
        &self,
        media: Media,
        now: Instant,
        settings: &RelaySettings,
        counters: &ShardCounters,
    ) {
        let frame = Rc::new(Frame::new(
            media.kind,
            media.timestamp,
            media.payload,
            media.is_metadata,
            &settings.encoder,
        ));
        counters.messages_in.inc();
        counters.bytes_in.add(frame.len() as u64);
        let mut state = self.state.borrow_mut();
        state.messages_in += 1;
        state.bytes_in += frame.len() as u64;
        if frame.kind != MediaKind::Data {
            state.last_timestamp = frame.timestamp;
        }
        self.detect_codec(&mut state.codecs, &frame);
        state.cache.on_frame(&frame);
        for subscriber in &state.subscribers {
            subscriber.deliver(&frame, now, settings, counters);
        }
    }

    /// Reads codec configuration from sequence headers (and, for codecs without one, from the
    /// first audio frame). The stream's codecs are logged in one line when its first coded
    /// frame arrives, by which time an encoder has sent every header it is going to send; a
    /// configuration that changes mid-stream is logged again.
    fn detect_codec(&self, codecs: &mut CodecInfo, frame: &Frame) {
        let changed = match (frame.kind, frame.class) {
            (MediaKind::Video, FrameClass::SequenceHeader) => {
                match media::parse_video_config(&frame.payload) {
                    Ok(config) => replace_if_changed(&mut codecs.video, config),
                    Err(e) => {
                        warn!(stream = %self.key, error = %e, "unreadable video sequence header");
                        false
                    }
                }
            }
            (MediaKind::Audio, FrameClass::SequenceHeader) => {
                match media::parse_audio_config(&frame.payload) {
                    Ok(config) => replace_if_changed(&mut codecs.audio, config),
                    Err(e) => {
                        warn!(stream = %self.key, error = %e, "unreadable audio sequence header");
                        false
                    }
                }
            }
            // MP3, PCM, Speex... have no sequence header: their flags byte says it all.
            (MediaKind::Audio, FrameClass::Audio) if codecs.audio.is_none() => {
                match media::parse_audio_config(&frame.payload) {
                    Ok(config) => replace_if_changed(&mut codecs.audio, config),
                    Err(_) => false,
                }
            }
            _ => false,
        };
        let coded = matches!(
            frame.class,
            FrameClass::Keyframe | FrameClass::InterFrame | FrameClass::Audio
        );
        if (coded && !codecs.logged) || (changed && codecs.logged) {
            let describe = |c: Option<String>| c.unwrap_or_else(|| "none".into());
            info!(
                stream = %self.key,
                video = %describe(codecs.video.as_ref().map(ToString::to_string)),
                audio = %describe(codecs.audio.as_ref().map(ToString::to_string)),
                "{}",
                if codecs.logged { "codec changed" } else { "codecs detected" }
            );
            codecs.logged = true;
        }
    }
}

fn replace_if_changed<T: PartialEq>(slot: &mut Option<T>, value: T) -> bool {
    if slot.as_ref() == Some(&value) {
        return false;
    }
    *slot = Some(value);
    true
}

/// Encodes a notification for one message stream id.
fn notification(
    settings: &RelaySettings,
    stream_id: u32,
    key: &str,
    write: fn(&ChunkEncoder, u32, &str, &mut BytesMut),
) -> Bytes {
    let mut out = BytesMut::with_capacity(256);
    write(&settings.encoder, stream_id, key, &mut out);
    out.freeze()
}

/// Queues the same notification to every subscriber, encoding it once per message stream id.
fn notify_all(
    subscribers: &[Rc<Subscriber>],
    settings: &RelaySettings,
    key: &str,
    now: Instant,
    write: fn(&ChunkEncoder, u32, &str, &mut BytesMut),
) {
    let shared = notification(settings, PLAY_STREAM_ID, key, write);
    for subscriber in subscribers {
        let bytes = if subscriber.stream_id == PLAY_STREAM_ID {
            shared.clone()
        } else {
            notification(settings, subscriber.stream_id, key, write)
        };
        subscriber.queue.push_bytes(bytes, now);
    }
}

/// The streams one shard owns.
#[derive(Debug)]
pub struct Registry {
    streams: RefCell<HashMap<StreamKey, Rc<Stream>>>,
    settings: RelaySettings,
    counters: Rc<ShardCounters>,
}

impl Registry {
    pub fn new(settings: RelaySettings, counters: Rc<ShardCounters>) -> Self {
        Self { streams: RefCell::new(HashMap::new()), settings, counters }
    }

    pub fn settings(&self) -> &RelaySettings {
        &self.settings
    }

    pub fn counters(&self) -> &ShardCounters {
        &self.counters
    }

    pub fn get(&self, key: &StreamKey) -> Option<Rc<Stream>> {
        self.streams.borrow().get(key).cloned()
    }

    pub fn stream_count(&self) -> usize {
        self.streams.borrow().len()
    }

    /// All streams, for stats.
    pub fn streams(&self) -> Vec<Rc<Stream>> {
        self.streams.borrow().values().cloned().collect()
    }

    fn get_or_create(&self, key: StreamKey, now: Instant) -> Rc<Stream> {
        let mut streams = self.streams.borrow_mut();
        streams
            .entry(key)
            .or_insert_with_key(|key| {
                self.counters.streams.inc();
                Rc::new(Stream::new(key.clone(), self.settings.cache, now))
            })
            .clone()
    }

    /// Makes `publisher` the publisher of `key`. Players already waiting on the key are told
    /// the stream (re)started.
    pub fn publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        now: Instant,
    ) -> Result<Rc<Stream>, PublishRefused> {
        let stream = self.get_or_create(key, now);
        {
            let mut state = stream.state.borrow_mut();
            if let Some(current) = &state.publisher {
                return Err(PublishRefused::AlreadyPublishing { by: current.peer });
            }
            state.publisher = Some(publisher);
            state.idle_since = None;
            state.cache.clear();
            state.codecs = CodecInfo::default();
            // Waiting players restart on the new publisher's first keyframe.
            for subscriber in &state.subscribers {
                subscriber.skipping.set(true);
            }
            notify_all(
                &state.subscribers,
                &self.settings,
                &stream.key.name,
                now,
                notify::published,
            );
        }
        self.counters.publishes.inc();
        self.counters.publishers.inc();
        Ok(stream)
    }

    /// Ends `conn_id`'s publishing of `stream`: players get StreamEOF + UnpublishNotify and
    /// wait for a republish.
    pub fn unpublish(&self, stream: &Rc<Stream>, conn_id: u64, now: Instant) {
        {
            let mut state = stream.state.borrow_mut();
            if state.publisher.as_ref().map(|p| p.conn_id) != Some(conn_id) {
                return;
            }
            state.publisher = None;
            state.idle_since = Some(now);
            state.cache.clear();
            state.codecs = CodecInfo::default();
            notify_all(
                &state.subscribers,
                &self.settings,
                &stream.key.name,
                now,
                notify::unpublished,
            );
        }
        self.counters.publishers.dec();
        self.remove_if_unused(stream);
    }

    /// Adds a player to `key` (creating a waiting stream if nobody publishes it yet) and queues
    /// the late-join cache to it. The caller has queued the play replies already.
    pub fn play(&self, key: StreamKey, subscriber: Rc<Subscriber>, now: Instant) -> Rc<Stream> {
        let stream = self.get_or_create(key, now);
        {
            let mut state = stream.state.borrow_mut();
            if state.publisher.is_some() {
                let replay = state.cache.replay(state.last_timestamp, &self.settings.encoder);
                let has_keyframe = replay.iter().any(|f| f.class == FrameClass::Keyframe);
                for frame in &replay {
                    subscriber.push_frame(frame, now, &self.settings);
                }
                // Without a cached GOP, inter frames before the next keyframe are undecodable.
                subscriber.skipping.set(!has_keyframe);
            } else {
                subscriber.skipping.set(true);
            }
            state.subscribers.push(subscriber);
        }
        self.counters.plays.inc();
        self.counters.subscribers.inc();
        stream
    }

    /// Removes a player from `stream`.
    pub fn leave(&self, stream: &Rc<Stream>, conn_id: u64, stream_id: u32) {
        let removed = {
            let mut state = stream.state.borrow_mut();
            let before = state.subscribers.len();
            state.subscribers.retain(|s| !(s.conn_id == conn_id && s.stream_id == stream_id));
            before - state.subscribers.len()
        };
        for _ in 0..removed {
            self.counters.subscribers.dec();
        }
        self.remove_if_unused(stream);
    }

    fn remove_if_unused(&self, stream: &Rc<Stream>) {
        let unused = {
            let state = stream.state.borrow();
            state.publisher.is_none() && state.subscribers.is_empty()
        };
        if unused {
            let mut streams = self.streams.borrow_mut();
            if streams.get(&stream.key).is_some_and(|s| Rc::ptr_eq(s, stream)) {
                streams.remove(&stream.key);
                self.counters.streams.dec();
            }
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
                let state = s.state.borrow();
                state.publisher.is_none()
                    && state
                        .idle_since
                        .is_some_and(|t| now.duration_since(t) >= self.settings.republish_wait)
            })
            .cloned()
            .collect();
        for stream in expired {
            let subscribers = std::mem::take(&mut stream.state.borrow_mut().subscribers);
            info!(stream = %stream.key, players = subscribers.len(), "no publisher in time: stopping players");
            notify_all(&subscribers, &self.settings, &stream.key.name, now, notify::play_stopped);
            for subscriber in &subscribers {
                subscriber.queue.close(CloseReason::AfterFlush);
                self.counters.republish_wait_expired.inc();
                self.counters.subscribers.dec();
            }
            self.remove_if_unused(&stream);
        }
    }
}
