//! A player: joins at its time, plays its stream and measures every audio and video message.
//!
//! Per message (one [`MediaHead`] from the connection's demuxer: the payload's first bytes, never
//! the payload): a marker lookup at a fixed offset, a sequence check and one histogram record;
//! nothing is allocated. Receive time is taken once per socket read and applies to every message
//! that read completed.
//!
//! Sequence tracking, per kind (video and audio have separate counters, see
//! [`rtmp_loadtest::marker`]): the first marked frame sets the expectation; a frame above it
//! counts the difference as missing, a frame below it as reordered. Missing frames at or before
//! the first live frame (sent after this player's Play.Start) are *join gaps*: the relay's
//! late-join cache and live feed did not meet. Missing frames after it are *lost*. A publisher
//! that leaves and comes back restarts its counters; the Unpublish/PublishNotify statuses reset
//! the tracking.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use rtmp_loadtest::demux::MediaHead;
use rtmp_loadtest::marker;
use rtmp_proto::command::code;
use rtmp_proto::session::{ClientEvent, MediaKind};

use crate::cli::PlayerClass;
use crate::conn::{
    sleep, sleep_until, Conn, ConnError, GaugeGuard, GaugeKind, Incoming, Role, Shard,
};
use crate::rng::Rng;
use crate::stats::{IntervalStats, PlayerStats};

/// Most bytes a slow player takes per read, so its pace stays smooth.
const SLOW_READ_LEN: usize = 16 * 1024;

/// A sequence number this far below the expected one is a restarted publisher, not reordering.
const RESTART_DISTANCE: i32 = 10_000;

#[derive(Debug, Clone)]
pub struct PlayerSpec {
    pub stream: usize,
    pub class: PlayerClass,
    /// When to join, after the run's start.
    pub join_at: Duration,
    pub seed: u64,
}

/// Plays until the run ends (the task is cancelled then), rejoining after churn leaves and
/// after failures.
pub async fn run(shard: Rc<Shard>, spec: PlayerSpec) {
    sleep_until(shard.start + spec.join_at).await;
    let mut rng = Rng::new(spec.seed);
    let key = shard.plan.key(spec.stream);
    loop {
        match play_once(&shard, &spec, &key, &mut rng).await {
            Ok(()) => shard.stats.borrow_mut().interval.player_leaves += 1,
            Err(e) => {
                shard.stats.borrow_mut().interval.error("player", e.kind());
                sleep(shard.plan.retry_delay).await;
            }
        }
    }
}

/// One connection: join, play, and leave (`Ok`, churn only) or fail.
async fn play_once(
    shard: &Rc<Shard>,
    spec: &PlayerSpec,
    key: &str,
    rng: &mut Rng,
) -> Result<(), ConnError> {
    let plan = &shard.plan;
    let mut conn = Conn::open(shard, Role::Play, rng.next_u64()).await?;
    let started = conn.setup_within(Role::Play, key).await?;
    shard.stats.borrow_mut().interval.player_joins += 1;
    let gauge = match spec.class {
        PlayerClass::Normal | PlayerClass::Churn => GaugeKind::Playing,
        PlayerClass::Slow => GaugeKind::Slow,
        PlayerClass::Stalled => GaugeKind::Stalled,
    };
    let _gauge = GaugeGuard::new(shard, gauge);
    if spec.class == PlayerClass::Stalled {
        // Hold the socket, never read: what a frozen client looks like to the server.
        conn.stop_reading();
        return future::pending().await;
    }

    let slow = spec.class == PlayerClass::Slow;
    let mut state = PlayState::new(started.command_sent_ns, started.started_ns, plan, slow);
    // Messages that came in the same read as Play.Start.
    state.drain(&mut conn, shard, slow, 0)?;
    conn.flush().await?;

    let leave_at = (spec.class == PlayerClass::Churn)
        .then(|| Instant::now() + plan.churn_period.mul_f64(0.5 + rng.next_f64()));
    // Slow players: a token bucket at half the configured stream rate.
    let slow_rate = plan.stream.total_bps() as f64 / 8.0 / 2.0;
    let slow_since = Instant::now();
    let mut slow_bytes = 0.0;

    loop {
        glommio::yield_if_needed().await;
        let limit = if slow {
            let allowed = slow_rate * slow_since.elapsed().as_secs_f64();
            if slow_bytes > allowed {
                sleep(Duration::from_secs_f64((slow_bytes - allowed) / slow_rate)).await;
            }
            SLOW_READ_LEN
        } else {
            usize::MAX
        };
        let read = match leave_at {
            None => conn.read_some(limit).await?,
            Some(at) => {
                let read = future::or(async { Some(conn.read_some(limit).await) }, async {
                    sleep_until(at).await;
                    None
                })
                .await;
                match read {
                    Some(read) => read?,
                    None => {
                        conn.session.delete_stream(started.stream_id);
                        conn.flush().await?;
                        return Ok(());
                    }
                }
            }
        };
        slow_bytes += read as f64;
        conn.handle_input()?;
        state.drain(&mut conn, shard, slow, read)?;
        conn.flush().await?;
    }
}

/// Sequence tracking of one kind.
#[derive(Debug, Default, Clone, Copy)]
struct Track {
    next: Option<u32>,
    live_seen: bool,
}

/// What one play measures.
#[derive(Debug)]
struct PlayState {
    play_sent_ns: u64,
    play_start_ns: u64,
    got_frame: bool,
    got_keyframe: bool,
    video: Track,
    audio: Track,
    video_interval_us: u64,
    audio_interval_us: u64,
    /// Record latency as measured, without coordinated-omission correction: a slow player falls
    /// further behind by design, and back-filling would multiply its samples by the lag.
    uncorrected: bool,
}

impl PlayState {
    fn new(play_sent_ns: u64, play_start_ns: u64, plan: &crate::cli::Plan, slow: bool) -> Self {
        Self {
            uncorrected: slow,
            play_sent_ns,
            play_start_ns,
            got_frame: false,
            got_keyframe: false,
            video: Track::default(),
            audio: Track::default(),
            video_interval_us: plan.stream.video_interval_ns() / 1000,
            audio_interval_us: plan.stream.audio_interval_ns() / 1000,
        }
    }

    /// Handles every queued event; `read` bytes came with them.
    fn drain(
        &mut self,
        conn: &mut Conn,
        shard: &Shard,
        slow: bool,
        read: usize,
    ) -> Result<(), ConnError> {
        let recv_ns = conn.read_ns;
        let mut stats = shard.stats.borrow_mut();
        let IntervalStats { players, slow: slow_players, events, .. } = &mut stats.interval;
        let counters = if slow { slow_players } else { players };
        counters.bytes += read as u64;
        while let Some(incoming) = conn.poll_incoming() {
            let event = match incoming {
                Incoming::Media(head) => {
                    self.on_media(counters, &head, recv_ns);
                    continue;
                }
                Incoming::Event(event) => event,
            };
            match event {
                // Parts of an aggregate message come through the session.
                ClientEvent::Media(media) => {
                    let head = MediaHead::new(
                        media.kind,
                        media.stream_id,
                        media.timestamp,
                        &media.payload,
                    );
                    self.on_media(counters, &head, recv_ns);
                }
                ClientEvent::Status { level, code, .. } => match code.as_str() {
                    code::PLAY_UNPUBLISH_NOTIFY | code::PLAY_PUBLISH_NOTIFY => {
                        let name = if code == code::PLAY_PUBLISH_NOTIFY {
                            "publish_notify"
                        } else {
                            "unpublish_notify"
                        };
                        *events.entry(name).or_default() += 1;
                        self.video = Track::default();
                        self.audio = Track::default();
                    }
                    code::PLAY_STOP => return Err(ConnError::PlayStopped),
                    _ if level == "error" => return Err(ConnError::Rejected { bad_name: false }),
                    _ => {}
                },
                _ => {}
            }
        }
        Ok(())
    }

    fn on_media(&mut self, counters: &mut PlayerStats, media: &MediaHead, recv_ns: u64) {
        let Some(marker) = marker::find(media.kind, media.prefix()) else { return };
        counters.media += 1;
        let since_play_us = recv_ns.saturating_sub(self.play_sent_ns) / 1000;
        if !self.got_frame {
            self.got_frame = true;
            counters.first_frame.record(since_play_us);
        }
        let (track, interval_us) = match media.kind {
            MediaKind::Video => {
                if !self.got_keyframe && marker::is_video_keyframe(media.prefix()) {
                    self.got_keyframe = true;
                    counters.first_keyframe.record(since_play_us);
                }
                (&mut self.video, self.video_interval_us)
            }
            _ => (&mut self.audio, self.audio_interval_us),
        };
        let live = marker.sent_ns > self.play_start_ns;
        match track.next {
            None => track.next = Some(marker.seq.wrapping_add(1)),
            Some(expected) => {
                let ahead = marker.seq.wrapping_sub(expected) as i32;
                if ahead >= 0 {
                    let missing = ahead as u64;
                    if live && track.live_seen {
                        counters.lost += missing;
                    } else {
                        counters.join_gaps += missing;
                    }
                    track.next = Some(marker.seq.wrapping_add(1));
                } else if ahead < -RESTART_DISTANCE {
                    track.next = Some(marker.seq.wrapping_add(1));
                    track.live_seen = false;
                } else {
                    counters.reordered += 1;
                }
            }
        }
        if live {
            track.live_seen = true;
            counters.live += 1;
            let latency_us = recv_ns.saturating_sub(marker.sent_ns) / 1000;
            if self.uncorrected {
                counters.latency.record(latency_us);
            } else {
                counters.latency.record_correct(latency_us, interval_us);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtmp_loadtest::marker::Marker;
    use rtmp_loadtest::synth::{StreamParams, SyntheticStream};
    use rtmp_proto::time::RtmpTimestamp;

    fn state() -> PlayState {
        PlayState {
            play_sent_ns: 1_000_000,
            play_start_ns: 2_000_000,
            got_frame: false,
            got_keyframe: false,
            video: Track::default(),
            audio: Track::default(),
            video_interval_us: 33_333,
            audio_interval_us: 23_219,
            uncorrected: false,
        }
    }

    fn frame(stream: &mut SyntheticStream, kind: MediaKind, seq: u32, sent_ns: u64) -> MediaHead {
        let spec = loop {
            let spec = stream.next_frame();
            if spec.kind == kind {
                break spec;
            }
        };
        let spec = rtmp_loadtest::synth::FrameSpec { seq, ..spec };
        MediaHead::new(kind, 1, RtmpTimestamp::ZERO, stream.payload(&spec, sent_ns))
    }

    #[test]
    fn counts_join_gaps_losses_reordering_and_live_latency() {
        let mut synth = SyntheticStream::new(StreamParams::new(1_000_000, 0, 30, 2.0, 8));
        let mut state = state();
        let mut stats = PlayerStats::default();
        // Cached frames 0 and 2 (sent before Play.Start): a join gap, no latency.
        for seq in [0, 2] {
            let media = frame(&mut synth, MediaKind::Video, seq, 500_000);
            state.on_media(&mut stats, &media, 2_100_000);
        }
        assert_eq!((stats.join_gaps, stats.live, stats.media), (1, 0, 2));
        assert_eq!(stats.first_frame.count(), 1);
        assert_eq!(stats.first_keyframe.count(), 1);
        // First live frame skips 3: still a join gap. Then 5 is lost, 4 comes late.
        for (seq, sent) in [(4, 3_000_000), (6, 3_100_000), (5, 3_200_000), (7, 3_300_000)] {
            let media = frame(&mut synth, MediaKind::Video, seq, sent);
            state.on_media(&mut stats, &media, sent + 250_000);
        }
        assert_eq!((stats.join_gaps, stats.lost, stats.reordered), (2, 1, 1));
        assert_eq!(stats.live, 4);
        let latency = stats.latency.summary();
        assert_eq!((latency.count, latency.min), (4, 250));
        // A restarted publisher is not millions of reordered frames.
        state.video.next = Some(100_000);
        let media = frame(&mut synth, MediaKind::Video, 0, 4_000_000);
        state.on_media(&mut stats, &media, 4_000_100);
        assert_eq!(stats.reordered, 1);
        // Audio frames are tracked on their own counter.
        let mut synth = SyntheticStream::new(StreamParams::new(1_000_000, 128_000, 30, 2.0, 8));
        for seq in [0, 1, 2] {
            let media = frame(&mut synth, MediaKind::Audio, seq, 3_000_000);
            state.on_media(&mut stats, &media, 3_000_200);
        }
        assert_eq!((stats.lost, stats.join_gaps), (1, 2));
    }

    #[test]
    fn ignores_payloads_without_marker() {
        let mut state = state();
        let mut stats = PlayerStats::default();
        let media = MediaHead::new(
            MediaKind::Video,
            1,
            RtmpTimestamp::ZERO,
            rtmp_loadtest::synth::VIDEO_SEQUENCE_HEADER,
        );
        state.on_media(&mut stats, &media, 10);
        assert_eq!(stats.media, 0);
        assert_eq!(stats.first_frame.count(), 0);
        // Too short to hold a whole marker.
        let mut payload = vec![0x27, 1, 0, 0, 0];
        let mut marker = [0u8; rtmp_loadtest::marker::MARKER_LEN];
        Marker { seq: 1, sent_ns: 1 }.write(&mut marker);
        payload.extend_from_slice(&marker[..8]);
        let media = MediaHead::new(MediaKind::Video, 1, RtmpTimestamp::ZERO, &payload);
        state.on_media(&mut stats, &media, 10);
        assert_eq!(stats.media, 0);
    }
}
