//! The late-join cache: what a player who arrives mid-stream needs to start decoding at once.
//!
//! A decoder needs the codec configuration (sequence headers) and a keyframe. Sending only the
//! headers leaves a black picture until the next keyframe (up to a GOP, often 2-10 s); sending
//! the current GOP from its keyframe gives a picture immediately, at the cost of holding that
//! GOP. The GOP is bounded by bytes and duration: a stream that outgrows the bounds stops caching
//! until its next keyframe, and its late joiners wait for that keyframe instead.

use std::collections::VecDeque;
use std::rc::Rc;

use rtmp_proto::chunk::ChunkEncoder;
use rtmp_proto::session::MediaKind;
use rtmp_proto::time::RtmpTimestamp;

use crate::frame::{Frame, FrameClass};
use crate::metrics::Limit;

/// Bounds on one stream's GOP cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    pub max_bytes: usize,
    pub max_ms: u32,
}

#[derive(Debug)]
pub struct LateJoinCache {
    limits: CacheLimits,
    metadata: Option<Rc<Frame>>,
    audio_header: Option<Rc<Frame>>,
    video_header: Option<Rc<Frame>>,
    /// Frames from the last keyframe on, audio and video interleaved as published.
    gop: VecDeque<Rc<Frame>>,
    gop_bytes: usize,
    /// The first audio and video timestamps in the GOP. The duration limit is measured per
    /// track: audio stamped seconds away from video must not make a short GOP look long.
    gop_first: [Option<RtmpTimestamp>; 2],
    /// False from an overflow (or a codec change) until the next keyframe.
    caching: bool,
}

impl LateJoinCache {
    pub fn new(limits: CacheLimits) -> Self {
        Self {
            limits,
            metadata: None,
            audio_header: None,
            video_header: None,
            gop: VecDeque::new(),
            gop_bytes: 0,
            gop_first: [None; 2],
            caching: false,
        }
    }

    /// Takes note of one published frame. Returns the limit the GOP outgrew, if this frame
    /// made it overflow (the GOP is then dropped).
    pub fn on_frame(&mut self, frame: &Rc<Frame>) -> Option<Limit> {
        match frame.class {
            FrameClass::Metadata => self.metadata = Some(frame.clone()),
            FrameClass::SequenceHeader if frame.kind == MediaKind::Video => {
                // A new video configuration invalidates the cached GOP: its frames belong to the
                // old one.
                if self.video_header.as_ref().is_some_and(|old| old.payload != frame.payload) {
                    self.drop_gop();
                }
                self.video_header = Some(frame.clone());
            }
            FrameClass::SequenceHeader => self.audio_header = Some(frame.clone()),
            FrameClass::Keyframe => {
                self.drop_gop();
                self.caching = true;
                return self.push(frame);
            }
            FrameClass::InterFrame | FrameClass::Audio if self.caching => return self.push(frame),
            FrameClass::InterFrame | FrameClass::Audio | FrameClass::Data => {}
        }
        None
    }

    fn push(&mut self, frame: &Rc<Frame>) -> Option<Limit> {
        self.gop_bytes += frame.len();
        self.gop.push_back(frame.clone());
        let first = self.gop_first[usize::from(frame.kind == MediaKind::Video)]
            .get_or_insert(frame.timestamp);
        let span = frame.timestamp.signed_since(*first).max(0) as u32;
        let outgrown = if self.gop_bytes > self.limits.max_bytes {
            Limit::GopCacheMaxBytes
        } else if span > self.limits.max_ms {
            Limit::GopCacheMaxMs
        } else {
            return None;
        };
        self.drop_gop();
        Some(outgrown)
    }

    fn drop_gop(&mut self) {
        self.gop.clear();
        self.gop_bytes = 0;
        self.gop_first = [None; 2];
        self.caching = false;
    }

    /// Forgets everything: the publisher left, and the next one may use other codecs.
    pub fn clear(&mut self) {
        self.metadata = None;
        self.audio_header = None;
        self.video_header = None;
        self.drop_gop();
    }

    /// Bytes of media held (GOP only; headers are small).
    pub fn gop_bytes(&self) -> usize {
        self.gop_bytes
    }

    pub fn gop_frames(&self) -> usize {
        self.gop.len()
    }

    /// What a late joiner is sent, in order: metadata, audio sequence header, video sequence
    /// header, then the GOP from its keyframe. Sequence headers are re-stamped to the GOP's
    /// first timestamp (or `now`, the stream's newest, when there is no GOP), so a player sees
    /// one time base rather than a jump from the publisher's start to the present; before the
    /// first coded frame there is nothing to jump from, and they keep the publisher's stamps.
    pub fn replay(&self, now: Option<RtmpTimestamp>, encoder: &ChunkEncoder) -> Vec<Rc<Frame>> {
        let base = self.gop.front().map(|f| f.timestamp).or(now);
        let mut frames = Vec::with_capacity(3 + self.gop.len());
        // Metadata stays at 0 (see `Frame::new`); the sequence headers move to the GOP.
        frames.extend(self.metadata.iter().cloned());
        for header in [&self.audio_header, &self.video_header].into_iter().flatten() {
            frames.push(match base {
                Some(base) if base != header.timestamp => Rc::new(header.restamped(base, encoder)),
                _ => header.clone(),
            });
        }
        frames.extend(self.gop.iter().cloned());
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn frame(kind: MediaKind, ts: u32, payload: &'static [u8]) -> Rc<Frame> {
        let encoder = ChunkEncoder::new(4096);
        Rc::new(Frame::new(kind, RtmpTimestamp(ts), Bytes::from_static(payload), false, &encoder))
    }

    // Legacy FLV video tag bodies: 0x17 = keyframe + AVC, 0x27 = inter frame + AVC; the next
    // byte 0 = sequence header, 1 = NALU.
    const AVC_HEADER: &[u8] = &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f];
    const KEY: &[u8] = &[0x17, 1, 0, 0, 0, 0xaa, 0xbb];
    const INTER: &[u8] = &[0x27, 1, 0, 0, 0, 0xcc];
    const AAC_HEADER: &[u8] = &[0xaf, 0, 0x11, 0x90];
    const AAC: &[u8] = &[0xaf, 1, 0x21, 0x10];

    fn limits() -> CacheLimits {
        CacheLimits { max_bytes: 1024, max_ms: 10_000 }
    }

    #[test]
    fn replays_headers_then_gop_from_the_last_keyframe() {
        let mut cache = LateJoinCache::new(limits());
        let encoder = ChunkEncoder::new(4096);
        for f in [
            frame(MediaKind::Audio, 0, AAC_HEADER),
            frame(MediaKind::Video, 0, AVC_HEADER),
            frame(MediaKind::Video, 0, KEY),
            frame(MediaKind::Video, 33, INTER),
            frame(MediaKind::Video, 2000, KEY),
            frame(MediaKind::Audio, 2010, AAC),
            frame(MediaKind::Video, 2033, INTER),
        ] {
            cache.on_frame(&f);
        }
        let replay = cache.replay(Some(RtmpTimestamp(5000)), &encoder);
        let classes: Vec<_> = replay.iter().map(|f| (f.class, f.timestamp.0)).collect();
        assert_eq!(
            classes,
            vec![
                (FrameClass::SequenceHeader, 2000),
                (FrameClass::SequenceHeader, 2000),
                (FrameClass::Keyframe, 2000),
                (FrameClass::Audio, 2010),
                (FrameClass::InterFrame, 2033),
            ]
        );
        assert_eq!(replay[0].kind, MediaKind::Audio);
        assert_eq!(replay[1].kind, MediaKind::Video);
    }

    #[test]
    fn nothing_is_cached_before_the_first_keyframe_and_overflow_waits_for_the_next() {
        let mut cache = LateJoinCache::new(CacheLimits { max_bytes: 20, max_ms: 10_000 });
        cache.on_frame(&frame(MediaKind::Video, 0, INTER));
        cache.on_frame(&frame(MediaKind::Audio, 0, AAC));
        assert_eq!(cache.gop_frames(), 0);
        cache.on_frame(&frame(MediaKind::Video, 10, KEY));
        cache.on_frame(&frame(MediaKind::Video, 20, INTER));
        assert_eq!(cache.gop_frames(), 2);
        let overflows: Vec<_> =
            (30..40).filter_map(|ts| cache.on_frame(&frame(MediaKind::Video, ts, INTER))).collect();
        assert_eq!(cache.gop_frames(), 0, "over max_bytes the GOP is dropped");
        assert_eq!(overflows, [Limit::GopCacheMaxBytes]);
        cache.on_frame(&frame(MediaKind::Video, 50, INTER));
        assert_eq!(cache.gop_frames(), 0, "no caching until the next keyframe");
        cache.on_frame(&frame(MediaKind::Video, 60, KEY));
        assert_eq!(cache.gop_frames(), 1);
    }

    #[test]
    fn duration_limit_and_codec_change_drop_the_gop() {
        let mut cache = LateJoinCache::new(CacheLimits { max_bytes: 1 << 20, max_ms: 1000 });
        cache.on_frame(&frame(MediaKind::Video, 0, KEY));
        cache.on_frame(&frame(MediaKind::Video, 999, INTER));
        assert_eq!(cache.gop_frames(), 2);
        let overflow = cache.on_frame(&frame(MediaKind::Video, 1001, INTER));
        assert_eq!(overflow, Some(Limit::GopCacheMaxMs));
        assert_eq!(cache.gop_frames(), 0);

        cache.on_frame(&frame(MediaKind::Video, 0, AVC_HEADER));
        cache.on_frame(&frame(MediaKind::Video, 2000, KEY));
        assert_eq!(cache.gop_frames(), 1);
        cache.on_frame(&frame(MediaKind::Video, 2001, &[0x17, 0, 0, 0, 0, 1, 0x4d, 0, 0x1f]));
        assert_eq!(cache.gop_frames(), 0, "a new video configuration invalidates the GOP");
        cache.clear();
        assert!(cache.replay(None, &ChunkEncoder::new(128)).is_empty());
    }
}
