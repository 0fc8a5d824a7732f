//! One live stream on one shard: its publisher, late-join cache, local subscribers and, on the
//! owner shard, the other shards that mirror it.
//!
//! The same type serves as the owner's stream and as a mirror on another shard. The owner
//! encodes and classifies each published message once and forwards the resulting [`Frame`]
//! once per mirroring shard, never once per player on another shard; a mirror keeps its own late-join
//! cache so later players on its shard start without asking the owner.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtmp_proto::chunk::ChunkEncoder;
use rtmp_proto::media::{self, AudioConfig, VideoConfig};
use rtmp_proto::session::{notify, MediaKind};
use rtmp_proto::time::RtmpTimestamp;
use tracing::{info, warn};

use super::cache::{CacheLimits, LateJoinCache};
use super::queue::WaitStats;
use super::shard::{ShardMessage, ShardOutbox};
use super::subscriber::Subscriber;
use super::{PublishRefused, PublisherInfo, RelaySettings, StreamKey};
use crate::frame::{Frame, FrameClass, PLAY_STREAM_ID};
use crate::metrics::stats::{AudioStats, PublisherStats, StreamStats, SubscriberStats, VideoStats};
use crate::metrics::{DeliveryTotals, ShardCounters};
use crate::record::Recorder;

/// What a stream knows about its codecs, from the sequence headers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CodecInfo {
    pub video: Option<VideoConfig>,
    pub audio: Option<AudioConfig>,
    /// Whether the codec line was logged for the current publisher.
    logged: bool,
    /// Whether an unreadable sequence header was logged for the current publisher: once is
    /// enough, a hostile publisher must not flood the log.
    warned: bool,
    /// Whether the video size came from keyframes (VP8/VP9, whose sequence header has none):
    /// then each keyframe may change it, and a repeated sequence header does not erase it.
    size_from_keyframe: bool,
}

/// A shard that mirrors this (owned) stream.
#[derive(Debug)]
struct MirrorShard {
    shard: usize,
    outbox: Rc<ShardOutbox>,
    /// Dropping video to that shard until the next keyframe (its channel is backed up).
    skipping: Cell<bool>,
}

#[derive(Debug)]
struct StreamState {
    publisher: Option<PublisherInfo>,
    cache: LateJoinCache,
    subscribers: Vec<Rc<Subscriber>>,
    /// What players who left were sent and lost (on the owner, also what mirrors that went
    /// away reported), so the stream's out counters never go backwards.
    departed: DeliveryTotals,
    /// Shards that mirror this stream (owner only).
    mirror_shards: Vec<MirrorShard>,
    codecs: CodecInfo,
    /// Since when the stream has had no publisher (players wait until `republish_wait`).
    idle_since: Option<Instant>,
    /// The newest audio or video timestamp of the current publish (none before its first coded
    /// frame): where a late joiner's headers are stamped when no GOP is cached.
    last_timestamp: Option<RtmpTimestamp>,
    /// The newest audio and video timestamps of the current publish: live, per track, for the
    /// players' lag in the stats.
    newest: Newest,
    messages_in: u64,
    bytes_in: u64,
    video_frames: u64,
    /// When the current publisher started.
    published_at: Option<Instant>,
    rates: Rates,
    /// The current publish's recording (owner only, when recording is on).
    recorder: Option<Recorder>,
}

/// The newest timestamp seen on each track.
#[derive(Debug, Default)]
struct Newest {
    audio: Option<RtmpTimestamp>,
    video: Option<RtmpTimestamp>,
}

impl Newest {
    fn note(&mut self, frame: &Frame) {
        match frame.kind {
            MediaKind::Audio => self.audio = Some(frame.timestamp),
            MediaKind::Video => self.video = Some(frame.timestamp),
            MediaKind::Data => {}
        }
    }
}

/// Ingress bitrate and frame rate, measured over the last tick (about a second).
#[derive(Debug, Default)]
struct Rates {
    at: Option<Instant>,
    bytes_in: u64,
    video_frames: u64,
    bitrate_bps: u64,
    frame_rate: f64,
}

/// One live stream on one shard.
#[derive(Debug)]
pub struct Stream {
    pub key: StreamKey,
    /// The owner's id for the stream, unique across shards; a mirror learns it from the
    /// owner's snapshot (0 until then).
    uid: Cell<u64>,
    /// True on a shard that does not own the key.
    mirror: bool,
    state: RefCell<StreamState>,
    /// Wait and time-to-first-frame of this shard's players of the stream.
    wait: Rc<WaitStats>,
}

impl Stream {
    pub(super) fn new(
        key: StreamKey,
        uid: u64,
        mirror: bool,
        cache: CacheLimits,
        now: Instant,
    ) -> Self {
        Self {
            key,
            uid: Cell::new(uid),
            mirror,
            state: RefCell::new(StreamState {
                publisher: None,
                cache: LateJoinCache::new(cache),
                subscribers: Vec::new(),
                departed: DeliveryTotals::default(),
                mirror_shards: Vec::new(),
                codecs: CodecInfo::default(),
                idle_since: Some(now),
                last_timestamp: None,
                newest: Newest::default(),
                messages_in: 0,
                bytes_in: 0,
                video_frames: 0,
                published_at: None,
                rates: Rates::default(),
                recorder: None,
            }),
            wait: Rc::new(WaitStats::default()),
        }
    }

    pub fn uid(&self) -> u64 {
        self.uid.get()
    }

    pub(super) fn set_uid(&self, uid: u64) {
        self.uid.set(uid);
    }

    pub fn is_mirror(&self) -> bool {
        self.mirror
    }

    pub fn publisher(&self) -> Option<PublisherInfo> {
        self.state.borrow().publisher.clone()
    }

    pub fn subscriber_count(&self) -> usize {
        self.state.borrow().subscribers.len()
    }

    /// Whether anyone watches: a player here (outbound relays do not count) or a mirror shard.
    pub fn has_audience(&self) -> bool {
        let state = self.state.borrow();
        !state.mirror_shards.is_empty() || state.subscribers.iter().any(|s| !s.is_relay())
    }

    /// Shards mirroring this stream (owner only).
    pub fn mirror_shards(&self) -> Vec<usize> {
        self.state.borrow().mirror_shards.iter().map(|r| r.shard).collect()
    }

    pub(super) fn idle_since(&self) -> Option<Instant> {
        let state = self.state.borrow();
        if state.publisher.is_some() {
            None
        } else {
            state.idle_since
        }
    }

    /// Nothing needs it any more: a mirror without local players, or an owned stream that
    /// nobody publishes, plays or mirrors.
    pub(super) fn is_unused(&self) -> bool {
        let state = self.state.borrow();
        if self.mirror {
            return state.subscribers.is_empty();
        }
        state.publisher.is_none() && state.subscribers.is_empty() && state.mirror_shards.is_empty()
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

    /// Relays one ready frame (from a local publisher, a publisher on another shard, or the
    /// owner for a mirror): update the cache, queue a reference to every local subscriber
    /// and send it once to every mirroring shard.
    pub fn relay_frame(
        &self,
        frame: Rc<Frame>,
        now: Instant,
        settings: &RelaySettings,
        counters: &ShardCounters,
    ) {
        let mut state = self.state.borrow_mut();
        state.messages_in += 1;
        state.bytes_in += frame.len() as u64;
        if frame.is_timed() {
            state.last_timestamp = Some(frame.timestamp);
            state.newest.note(&frame);
        }
        if frame.kind == MediaKind::Video && frame.class != FrameClass::SequenceHeader {
            state.video_frames += 1;
        }
        self.detect_codec(&mut state.codecs, &frame);
        if let Some(recorder) = state.recorder.as_mut() {
            recorder.write(&frame);
        }
        if let Some(limit) = state.cache.on_frame(&frame) {
            counters.gop_cache_overflows.inc();
            counters.limit_tripped(limit);
        }
        for subscriber in &state.subscribers {
            subscriber.deliver(&frame, now, settings, counters);
        }
        for mirror in &state.mirror_shards {
            mirror.outbox.push_frame(
                ShardMessage::Frame { uid: self.uid(), frame: Frame::clone(&frame) },
                &frame,
                &mirror.skipping,
            );
        }
    }

    /// Reads codec configuration from sequence headers (and, for codecs without one, from the
    /// first audio frame; for a video size the sequence header lacks, VP8/VP9, from
    /// keyframes). The stream's codecs are logged in one line when its first coded
    /// frame arrives, by which time an encoder has sent every header it is going to send; a
    /// configuration that changes mid-stream is logged again. Mirrors stay quiet: the owner
    /// logs.
    fn detect_codec(&self, codecs: &mut CodecInfo, frame: &Frame) {
        let changed = match (frame.kind, frame.class) {
            (MediaKind::Video, FrameClass::SequenceHeader) => {
                match media::parse_video_config(&frame.payload) {
                    Ok(mut config) => {
                        let old = codecs.video.as_ref().filter(|old| old.codec == config.codec);
                        match old {
                            Some(old) if config.width.is_none() && codecs.size_from_keyframe => {
                                (config.width, config.height) = (old.width, old.height);
                            }
                            _ => codecs.size_from_keyframe = false,
                        }
                        replace_if_changed(&mut codecs.video, config)
                    }
                    Err(e) => {
                        if !std::mem::replace(&mut codecs.warned, true) {
                            warn!(stream = %self.key, error = %e, "unreadable video sequence header");
                        }
                        false
                    }
                }
            }
            (MediaKind::Audio, FrameClass::SequenceHeader) => {
                match media::parse_audio_config(&frame.payload) {
                    Ok(config) => replace_if_changed(&mut codecs.audio, config),
                    Err(e) => {
                        if !std::mem::replace(&mut codecs.warned, true) {
                            warn!(stream = %self.key, error = %e, "unreadable audio sequence header");
                        }
                        false
                    }
                }
            }
            // A size the sequence header did not give. Each keyframe is read (a few header
            // bytes), since VP8/VP9 may change resolution at any keyframe.
            (MediaKind::Video, FrameClass::Keyframe) => match codecs.video.as_mut() {
                Some(video) if video.width.is_none() || codecs.size_from_keyframe => {
                    match media::parse_keyframe_dimensions(&frame.payload) {
                        Some((width, height)) => {
                            codecs.size_from_keyframe = true;
                            let size = (Some(width), Some(height));
                            let changed = (video.width, video.height) != size;
                            (video.width, video.height) = size;
                            changed
                        }
                        None => false,
                    }
                }
                _ => false,
            },
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
            if !self.mirror {
                let describe = |c: Option<String>| c.unwrap_or_else(|| "none".into());
                info!(
                    stream = %self.key,
                    video = %describe(codecs.video.as_ref().map(ToString::to_string)),
                    audio = %describe(codecs.audio.as_ref().map(ToString::to_string)),
                    "{}",
                    if codecs.logged { "codec changed" } else { "codecs detected" }
                );
            }
            codecs.logged = true;
        }
    }

    /// A publisher starts: players already waiting are told the stream (re)started and resume
    /// at the new publisher's first keyframe; mirrors are told too.
    pub(super) fn start_publishing(
        &self,
        publisher: PublisherInfo,
        now: Instant,
        settings: &RelaySettings,
    ) -> Result<(), PublishRefused> {
        let mut state = self.state.borrow_mut();
        if let Some(current) = &state.publisher {
            return Err(PublishRefused::AlreadyPublishing { by: current.peer });
        }
        state.publisher = Some(publisher.clone());
        state.idle_since = None;
        state.published_at = Some(now);
        state.cache.clear();
        state.codecs = CodecInfo::default();
        state.last_timestamp = None;
        state.newest = Newest::default();
        for subscriber in &state.subscribers {
            subscriber.skipping.set(true);
            // The new publisher's clock owes nothing to the old one's: it may restart at zero
            // or continue hours on.
            subscriber.queue.restart_time_base();
        }
        notify_all(&state.subscribers, settings, &self.key.name, now, notify::published);
        for mirror in &state.mirror_shards {
            mirror.skipping.set(false);
            mirror
                .outbox
                .push(ShardMessage::Published { uid: self.uid(), publisher: publisher.clone() });
        }
        Ok(())
    }

    /// Records the current publish from now on.
    pub(super) fn set_recorder(&self, recorder: Recorder) {
        self.state.borrow_mut().recorder = Some(recorder);
    }

    /// The current publish's recording, taken away to be finished.
    pub(super) fn take_recorder(&self) -> Option<Recorder> {
        self.state.borrow_mut().recorder.take()
    }

    /// The publisher left: players get StreamEOF + UnpublishNotify and wait for a republish.
    /// Returns false when `conn_id` was not the publisher (a stale request).
    pub(super) fn stop_publishing(
        &self,
        conn_id: Option<u64>,
        now: Instant,
        settings: &RelaySettings,
    ) -> bool {
        let mut state = self.state.borrow_mut();
        match (&state.publisher, conn_id) {
            (None, _) => return false,
            (Some(p), Some(id)) if p.conn_id != id => return false,
            _ => {}
        }
        state.publisher = None;
        state.idle_since = Some(now);
        state.cache.clear();
        state.codecs = CodecInfo::default();
        notify_all(&state.subscribers, settings, &self.key.name, now, notify::unpublished);
        for mirror in &state.mirror_shards {
            mirror.outbox.push(ShardMessage::Unpublished { uid: self.uid() });
        }
        true
    }

    /// Adds a local player and queues the late-join cache to it (the caller has queued the
    /// play replies already).
    pub(super) fn add_subscriber(
        &self,
        subscriber: Rc<Subscriber>,
        now: Instant,
        settings: &RelaySettings,
    ) {
        if !subscriber.is_relay() {
            subscriber.queue.attach_stats(self.wait.clone(), now);
        }
        let mut state = self.state.borrow_mut();
        if state.publisher.is_some() {
            let replay = state.cache.replay(state.last_timestamp, &settings.encoder);
            subscriber.start_from(&replay, now, settings);
        } else {
            subscriber.skipping.set(true);
        }
        state.subscribers.push(subscriber);
    }

    /// Adds an outbound relay's sink to a stream this shard owns: it gets the late-join cache
    /// (metadata, sequence headers, the GOP from its keyframe) and then every frame, under the
    /// slow-sink policy, like a player. Its driver removes it with [`Self::detach_sink`].
    pub fn attach_sink(&self, sink: Rc<Subscriber>, now: Instant, settings: &RelaySettings) {
        self.add_subscriber(sink, now, settings);
    }

    /// Removes an outbound relay's sink.
    pub fn detach_sink(&self, conn_id: u64, stream_id: u32) {
        self.remove_subscriber(conn_id, stream_id);
    }

    /// Removes a local player; returns how many entries went (0 or 1).
    pub(super) fn remove_subscriber(&self, conn_id: u64, stream_id: u32) -> usize {
        let mut state = self.state.borrow_mut();
        let before = state.subscribers.len();
        let mut departed = DeliveryTotals::default();
        state.subscribers.retain(|s| {
            let leaving = s.conn_id == conn_id && s.stream_id == stream_id;
            if leaving {
                departed += s.delivery();
            }
            !leaving
        });
        state.departed += departed;
        before - state.subscribers.len()
    }

    /// Takes every local player away (the wait for a publisher ran out).
    pub(super) fn take_subscribers(&self) -> Vec<Rc<Subscriber>> {
        let mut state = self.state.borrow_mut();
        let subscribers = std::mem::take(&mut state.subscribers);
        for subscriber in &subscribers {
            state.departed += subscriber.delivery();
        }
        subscribers
    }

    /// What this shard's players of the stream, present and departed, were sent and lost.
    pub fn delivery(&self) -> DeliveryTotals {
        let state = self.state.borrow();
        let mut totals = state.departed;
        for subscriber in &state.subscribers {
            totals += subscriber.delivery();
        }
        totals
    }

    /// Owner: adds what a mirror that went away delivered to its players, so the stream's
    /// totals, merged across shards, do not drop when a mirror ends before the stream does.
    pub(super) fn add_departed(&self, totals: DeliveryTotals) {
        self.state.borrow_mut().departed += totals;
    }

    /// Owner: starts feeding `shard`, and returns what its mirror needs to start: the publisher
    /// and the late-join cache, in replay order.
    pub(super) fn add_mirror_shard(
        &self,
        shard: usize,
        outbox: Rc<ShardOutbox>,
        encoder: &ChunkEncoder,
    ) -> (Option<PublisherInfo>, Vec<Frame>) {
        let mut state = self.state.borrow_mut();
        state.mirror_shards.retain(|r| r.shard != shard);
        state.mirror_shards.push(MirrorShard { shard, outbox, skipping: Cell::new(false) });
        let frames = if state.publisher.is_some() {
            state
                .cache
                .replay(state.last_timestamp, encoder)
                .iter()
                .map(|f| Frame::clone(f))
                .collect()
        } else {
            Vec::new()
        };
        (state.publisher.clone(), frames)
    }

    /// Owner: stops feeding `shard`.
    pub(super) fn remove_mirror_shard(&self, shard: usize) {
        self.state.borrow_mut().mirror_shards.retain(|r| r.shard != shard);
    }

    /// Mirror: loads the owner's state, then queues the cache to the local players who waited
    /// for it.
    pub(super) fn load_snapshot(
        &self,
        publisher: Option<PublisherInfo>,
        frames: Vec<Frame>,
        now: Instant,
        settings: &RelaySettings,
    ) {
        let mut state = self.state.borrow_mut();
        state.cache.clear();
        state.publisher = publisher;
        if state.publisher.is_none() {
            return;
        }
        state.idle_since = None;
        state.published_at = Some(now);
        let frames: Vec<Rc<Frame>> = frames.into_iter().map(Rc::new).collect();
        for frame in &frames {
            if frame.is_timed() {
                state.last_timestamp = Some(frame.timestamp);
                state.newest.note(frame);
            }
            let codecs = &mut state.codecs;
            self.detect_codec(codecs, frame);
            state.cache.on_frame(frame);
        }
        for subscriber in &state.subscribers {
            subscriber.start_from(&frames, now, settings);
        }
    }
}

impl Stream {
    /// Updates the ingress bitrate and frame rate; called about once a second.
    pub(super) fn tick(&self, now: Instant) {
        let mut state = self.state.borrow_mut();
        let (bytes_in, video_frames) = (state.bytes_in, state.video_frames);
        let rates = &mut state.rates;
        if let Some(at) = rates.at {
            let seconds = now.saturating_duration_since(at).as_secs_f64();
            if seconds > 0.0 {
                rates.bitrate_bps = ((bytes_in - rates.bytes_in) as f64 * 8.0 / seconds) as u64;
                rates.frame_rate = (video_frames - rates.video_frames) as f64 / seconds;
            }
        }
        rates.at = Some(now);
        rates.bytes_in = bytes_in;
        rates.video_frames = video_frames;
    }

    /// This shard's view of the stream, for the stats API and /metrics.
    pub fn stats(&self, shard: usize, now: Instant) -> StreamStats {
        let state = self.state.borrow();
        let publisher = state.publisher.as_ref().map(|p| PublisherStats {
            peer: p.peer.to_string(),
            conn_id: p.conn_id,
            uptime_secs: state
                .published_at
                .map_or(0.0, |t| now.saturating_duration_since(t).as_secs_f64()),
            bitrate_bps: state.rates.bitrate_bps,
        });
        let video = state.codecs.video.as_ref().map(|v| VideoStats {
            codec: v.codec.to_string(),
            profile: v.profile.clone(),
            level: v.level.clone(),
            width: v.width,
            height: v.height,
            frame_rate: state.rates.frame_rate,
        });
        let audio = state.codecs.audio.as_ref().map(|a| AudioStats {
            codec: a.codec.to_string(),
            profile: a.profile.clone(),
            sample_rate: a.sample_rate,
            channels: a.channels,
        });
        let subscribers: Vec<SubscriberStats> = state
            .subscribers
            .iter()
            .filter(|s| !s.is_relay())
            .map(|s| SubscriberStats {
                peer: s.peer.to_string(),
                conn_id: s.conn_id,
                shard,
                bytes: s.queue.bytes_written(),
                dropped: s.dropped(),
                queue_bytes: s.queue.queued_bytes(),
                lag_ms: s.queue.lag_behind(state.newest.audio, state.newest.video),
                unacknowledged_bytes: s.queue.unacknowledged_bytes(),
            })
            .collect();
        StreamStats {
            app: self.key.app.clone(),
            name: self.key.name.clone(),
            shard,
            mirror: self.mirror,
            publisher,
            video,
            audio,
            bytes_in: state.bytes_in,
            messages_in: state.messages_in,
            gop_cache_bytes: state.cache.gop_bytes(),
            delivery: self.delivery(),
            subscribers,
            wait: self.wait.wait.borrow().clone(),
            time_to_first_frame: self.wait.time_to_first_frame.borrow().clone(),
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
pub(super) fn notify_all(
    subscribers: &[Rc<Subscriber>],
    settings: &RelaySettings,
    key: &str,
    now: Instant,
    write: fn(&ChunkEncoder, u32, &str, &mut BytesMut),
) {
    let shared = notification(settings, PLAY_STREAM_ID, key, write);
    // Relays are told by their driver (FCUnpublish, deleteStream), not with play notices.
    for subscriber in subscribers.iter().filter(|s| !s.is_relay()) {
        let bytes = if subscriber.stream_id == PLAY_STREAM_ID {
            shared.clone()
        } else {
            notification(settings, subscriber.stream_id, key, write)
        };
        subscriber.queue.push_bytes(bytes, now);
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use rtmp_proto::session::Media;

    use super::*;
    use crate::config::Config;

    /// libvpx-vp9 640x360 in Enhanced RTMP: `vpcC` (which has no size) and the first keyframe.
    const VP9_SEQ: &[u8] = include_bytes!("../../proto/tests/data/media_vp9_360p_ex_seq.bin");
    const VP9_KEY: &[u8] = include_bytes!("../../proto/tests/data/media_vp9_360p_ex_key.bin");
    const VP9_INTER: &[u8] = include_bytes!("../../proto/tests/data/media_vp9_360p_ex_inter.bin");

    /// An Enhanced RTMP VP9 keyframe (`CodedFrames`) whose uncompressed header says `w`x`h`:
    /// profile 0, shown, the sync code, BT.601 limited range, then the size minus one.
    fn vp9_keyframe(w: u32, h: u32) -> Vec<u8> {
        let mut payload = b"\x91vp09\x82\x49\x83\x42".to_vec();
        let bits = (0b0010u64 << 32) | (u64::from(w - 1) << 16) | u64::from(h - 1);
        payload.extend_from_slice(&(bits << 4).to_be_bytes()[3..]);
        payload
    }

    fn video_size(payloads: &[&[u8]]) -> Option<(Option<u32>, Option<u32>)> {
        let now = Instant::now();
        let settings = Config::default().relay_settings();
        let counters = ShardCounters::default();
        let stream = Stream::new(StreamKey::new("live", "vp9"), 1, false, settings.cache, now);
        for (i, payload) in payloads.iter().enumerate() {
            let media = Media {
                stream_id: 1,
                kind: MediaKind::Video,
                timestamp: RtmpTimestamp(40 * i as u32),
                payload: Bytes::copy_from_slice(payload),
                is_metadata: false,
            };
            stream.relay_frame(
                Rc::new(Frame::of(media, &settings.encoder)),
                now,
                &settings,
                &counters,
            );
        }
        stream.stats(0, now).video.map(|v| (v.width, v.height))
    }

    #[test]
    fn a_vp9_stream_takes_its_size_from_the_keyframe() {
        assert_eq!(video_size(&[VP9_SEQ]), Some((None, None)), "vpcC carries no size");
        assert_eq!(video_size(&[VP9_SEQ, VP9_KEY]), Some((Some(640), Some(360))));
        // Inter frames leave it alone, and an encoder repeating its sequence header (which
        // still has no size) does not erase it.
        let repeated = video_size(&[VP9_SEQ, VP9_KEY, VP9_INTER, VP9_SEQ, VP9_INTER]);
        assert_eq!(repeated, Some((Some(640), Some(360))));
        // VP9 may change resolution at a keyframe.
        let resized = video_size(&[VP9_SEQ, VP9_KEY, &vp9_keyframe(1280, 720)]);
        assert_eq!(resized, Some((Some(1280), Some(720))));
        // A keyframe before any sequence header names no codec to attach a size to.
        assert_eq!(video_size(&[VP9_KEY]), None);
    }
}
