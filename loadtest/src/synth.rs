//! The synthetic H.264 + AAC stream a publisher sends: real sequence headers (a 720p High
//! profile AVC decoder configuration and an AAC-LC AudioSpecificConfig captured from ffmpeg), then
//! frames whose sizes and timing follow the configured bitrate, frame rate and GOP.
//!
//! Video: one keyframe every `gop_frames` frames, keyframes `keyframe_ratio` times the size of
//! an inter frame, sizes chosen so one GOP carries exactly `video_bps` worth of bytes (to within
//! a byte per frame). Audio: one AAC frame per 1024 samples at 44.1 kHz (43.07 frames/s), each
//! `audio_bps * 1024 / 44100 / 8` bytes. Frame *n* of a kind is due `n` frame intervals after
//! the publish started; [`SyntheticStream::next_frame`] yields both kinds merged in due order, so a
//! publisher only has to sleep until each frame's absolute deadline.
//!
//! Sizes are FLV tag body sizes (codec header + marker + padding), i.e. what travels as the
//! RTMP message payload; chunk headers come on top.

use rtmp_proto::amf0::Amf0Value;
use rtmp_proto::session::MediaKind;
use rtmp_proto::time::RtmpTimestamp;

use crate::marker::{Marker, AAC_HEADER_LEN, AVC_HEADER_LEN, MARKER_LEN};

/// AVC decoder configuration record (FLV video tag body, `0x17 0x00 ...`), 1280x720 High.
pub const VIDEO_SEQUENCE_HEADER: &[u8] =
    include_bytes!("../data/media_h264_high_720p_aac_video_seq.bin");
/// AAC AudioSpecificConfig (FLV audio tag body, `0xaf 0x00 ...`), AAC-LC stereo.
pub const AUDIO_SEQUENCE_HEADER: &[u8] =
    include_bytes!("../data/media_h264_high_720p_aac_audio_seq.bin");

/// AAC sample rate the audio frames are paced at.
pub const AAC_SAMPLE_RATE: u64 = 44_100;
/// Samples per AAC frame.
pub const AAC_FRAME_SAMPLES: u64 = 1024;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// What a synthetic stream looks like.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamParams {
    /// Video bits per second (FLV tag bodies).
    pub video_bps: u64,
    /// Audio bits per second (FLV tag bodies); 0 sends no audio at all.
    pub audio_bps: u64,
    /// Video frames per second.
    pub fps: u32,
    /// Frames from one keyframe to the next (GOP length in frames, at least 1).
    pub gop_frames: u32,
    /// Keyframe size over inter frame size.
    pub keyframe_ratio: u32,
}

impl StreamParams {
    /// Parameters from user units: GOP in seconds (rounded to whole frames, at least one).
    pub fn new(
        video_bps: u64,
        audio_bps: u64,
        fps: u32,
        gop_secs: f64,
        keyframe_ratio: u32,
    ) -> Self {
        let gop_frames = (gop_secs * f64::from(fps)).round().max(1.0) as u32;
        Self {
            video_bps,
            audio_bps,
            fps: fps.max(1),
            gop_frames,
            keyframe_ratio: keyframe_ratio.max(1),
        }
    }

    /// Bytes of a keyframe and of an inter frame.
    pub fn video_frame_sizes(&self) -> (usize, usize) {
        let min = AVC_HEADER_LEN + MARKER_LEN;
        let gop_bytes =
            self.video_bps as f64 / 8.0 * f64::from(self.gop_frames) / f64::from(self.fps);
        if self.gop_frames == 1 {
            let size = (gop_bytes.round() as usize).max(min);
            return (size, size);
        }
        let units = f64::from(self.gop_frames - 1 + self.keyframe_ratio);
        let key = (gop_bytes * f64::from(self.keyframe_ratio) / units).round();
        let inter = ((gop_bytes - key) / f64::from(self.gop_frames - 1)).round();
        ((key as usize).max(min), (inter as usize).max(min))
    }

    /// Bytes of an AAC frame, `None` without audio.
    pub fn audio_frame_size(&self) -> Option<usize> {
        if self.audio_bps == 0 {
            return None;
        }
        let bytes = self.audio_bps as f64 * AAC_FRAME_SAMPLES as f64 / AAC_SAMPLE_RATE as f64 / 8.0;
        Some((bytes.round() as usize).max(AAC_HEADER_LEN + MARKER_LEN))
    }

    /// Nanoseconds between video frames (rounded).
    pub fn video_interval_ns(&self) -> u64 {
        NANOS_PER_SEC / u64::from(self.fps)
    }

    /// Nanoseconds between audio frames (rounded).
    pub fn audio_interval_ns(&self) -> u64 {
        AAC_FRAME_SAMPLES * NANOS_PER_SEC / AAC_SAMPLE_RATE
    }

    /// Bits per second of video and audio together, as configured.
    pub fn total_bps(&self) -> u64 {
        self.video_bps + self.audio_bps
    }

    /// `@setDataFrame onMetaData` content, as ffmpeg writes it for such a stream.
    pub fn metadata(&self) -> Amf0Value {
        let number = |v: f64| Amf0Value::Number(v);
        let mut props = vec![
            ("duration".to_owned(), number(0.0)),
            ("width".to_owned(), number(1280.0)),
            ("height".to_owned(), number(720.0)),
            ("videodatarate".to_owned(), number(self.video_bps as f64 / 1000.0)),
            ("framerate".to_owned(), number(f64::from(self.fps))),
            ("videocodecid".to_owned(), number(7.0)),
        ];
        if self.audio_bps > 0 {
            props.extend([
                ("audiodatarate".to_owned(), number(self.audio_bps as f64 / 1000.0)),
                ("audiosamplerate".to_owned(), number(AAC_SAMPLE_RATE as f64)),
                ("audiosamplesize".to_owned(), number(16.0)),
                ("stereo".to_owned(), Amf0Value::Boolean(true)),
                ("audiocodecid".to_owned(), number(10.0)),
            ]);
        }
        props.push(("encoder".to_owned(), Amf0Value::string("rtmp-loadtest")));
        Amf0Value::EcmaArray(props)
    }
}

/// One frame to send: what, when, how big.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSpec {
    pub kind: MediaKind,
    /// Per-kind sequence number (the frame's index since publish start).
    pub seq: u32,
    /// Nanoseconds after publish start at which the frame is due.
    pub due_ns: u64,
    /// RTMP timestamp (milliseconds since publish start, wrapping).
    pub timestamp: RtmpTimestamp,
    pub size: usize,
    pub keyframe: bool,
}

/// The frame schedule and the payload buffers of one publish.
#[derive(Debug)]
pub struct SyntheticStream {
    params: StreamParams,
    /// Keyframes fall where `(frame + phase) % gop_frames == 0` (and on frame 0).
    phase: u64,
    next_video: u64,
    next_audio: u64,
    keyframe: Vec<u8>,
    inter: Vec<u8>,
    audio: Vec<u8>,
}

impl SyntheticStream {
    pub fn new(params: StreamParams) -> Self {
        let (key_size, inter_size) = params.video_frame_sizes();
        let buffer = |size: usize, header: &[u8]| {
            let mut buf = vec![0u8; size];
            buf[..header.len()].copy_from_slice(header);
            buf
        };
        Self {
            params,
            phase: 0,
            next_video: 0,
            next_audio: 0,
            keyframe: buffer(key_size, &[0x17, 1, 0, 0, 0]),
            inter: buffer(inter_size, &[0x27, 1, 0, 0, 0]),
            audio: buffer(params.audio_frame_size().unwrap_or(0).max(AAC_HEADER_LEN), &[0xaf, 1]),
        }
    }

    /// Shifts the keyframe schedule by `phase` frames: the first frame is still a keyframe, the
    /// second one comes `gop_frames - phase` frames later. Publishers started together use
    /// different phases so that their keyframes (8x the bytes) do not all hit the server at the
    /// same instant, as they would not with real encoders.
    pub fn with_keyframe_phase(mut self, phase: u32) -> Self {
        self.phase = u64::from(phase % self.params.gop_frames);
        self
    }

    pub fn params(&self) -> &StreamParams {
        &self.params
    }

    fn video_due(&self) -> u64 {
        (u128::from(self.next_video) * u128::from(NANOS_PER_SEC) / u128::from(self.params.fps))
            as u64
    }

    fn audio_due(&self) -> Option<u64> {
        self.params.audio_frame_size()?;
        let samples = u128::from(self.next_audio) * u128::from(AAC_FRAME_SAMPLES);
        Some((samples * u128::from(NANOS_PER_SEC) / u128::from(AAC_SAMPLE_RATE)) as u64)
    }

    /// When the next frame is due (nanoseconds after publish start).
    pub fn next_due_ns(&self) -> u64 {
        let video = self.video_due();
        self.audio_due().map_or(video, |audio| audio.min(video))
    }

    /// The next frame in due order (video first on a tie).
    pub fn next_frame(&mut self) -> FrameSpec {
        let video_due = self.video_due();
        match self.audio_due() {
            Some(audio_due) if audio_due < video_due => {
                let seq = self.next_audio as u32;
                self.next_audio += 1;
                FrameSpec {
                    kind: MediaKind::Audio,
                    seq,
                    due_ns: audio_due,
                    timestamp: timestamp_of(audio_due),
                    size: self.audio.len(),
                    keyframe: false,
                }
            }
            _ => {
                let seq = self.next_video as u32;
                let keyframe = self.next_video == 0
                    || (self.next_video + self.phase) % u64::from(self.params.gop_frames) == 0;
                self.next_video += 1;
                FrameSpec {
                    kind: MediaKind::Video,
                    seq,
                    due_ns: video_due,
                    timestamp: timestamp_of(video_due),
                    size: if keyframe { self.keyframe.len() } else { self.inter.len() },
                    keyframe,
                }
            }
        }
    }

    /// The payload of `frame` with its marker written in; valid until the next call.
    pub fn payload(&mut self, frame: &FrameSpec, sent_ns: u64) -> &[u8] {
        let (buf, offset) = match frame.kind {
            MediaKind::Video if frame.keyframe => (&mut self.keyframe, AVC_HEADER_LEN),
            MediaKind::Video => (&mut self.inter, AVC_HEADER_LEN),
            _ => (&mut self.audio, AAC_HEADER_LEN),
        };
        Marker { seq: frame.seq, sent_ns }.write(&mut buf[offset..]);
        buf
    }
}

fn timestamp_of(due_ns: u64) -> RtmpTimestamp {
    RtmpTimestamp((due_ns / 1_000_000) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marker;

    fn default_params() -> StreamParams {
        StreamParams::new(2_500_000, 128_000, 30, 2.0, 8)
    }

    /// Bits per second of each kind over the first `secs` seconds of frames.
    fn measured_bps(params: StreamParams, secs: u64) -> (f64, f64) {
        let mut stream = SyntheticStream::new(params);
        let (mut video, mut audio) = (0usize, 0usize);
        while stream.next_due_ns() < secs * NANOS_PER_SEC {
            let frame = stream.next_frame();
            match frame.kind {
                MediaKind::Video => video += frame.size,
                _ => audio += frame.size,
            }
        }
        (video as f64 * 8.0 / secs as f64, audio as f64 * 8.0 / secs as f64)
    }

    #[test]
    fn average_bitrate_is_within_5_percent_over_10_seconds() {
        for (video_bps, fps, gop) in
            [(2_500_000, 30, 2.0), (6_000_000, 60, 1.0), (800_000, 25, 4.0), (2_500_000, 30, 0.5)]
        {
            let params = StreamParams::new(video_bps, 128_000, fps, gop, 8);
            let (video, audio) = measured_bps(params, 10);
            let error = (video - video_bps as f64).abs() / video_bps as f64;
            assert!(error < 0.05, "{video_bps} bps at {fps} fps, GOP {gop} s: got {video}");
            let audio_error = (audio - 128_000.0).abs() / 128_000.0;
            assert!(audio_error < 0.05, "audio: got {audio}");
        }
    }

    #[test]
    fn keyframes_come_every_gop_and_are_8_times_inter_frames() {
        let params = default_params();
        assert_eq!(params.gop_frames, 60);
        let (key, inter) = params.video_frame_sizes();
        assert!((key as f64 / inter as f64 - 8.0).abs() < 0.01, "{key} vs {inter}");
        let mut stream = SyntheticStream::new(params);
        let mut keyframes = Vec::new();
        let mut video_frames = 0;
        while video_frames < 300 {
            let frame = stream.next_frame();
            if frame.kind == MediaKind::Video {
                if frame.keyframe {
                    assert_eq!(frame.size, key);
                    keyframes.push((frame.seq, frame.due_ns));
                } else {
                    assert_eq!(frame.size, inter);
                }
                video_frames += 1;
            }
        }
        assert_eq!(keyframes.iter().map(|k| k.0).collect::<Vec<_>>(), [0, 60, 120, 180, 240]);
        for pair in keyframes.windows(2) {
            assert_eq!(pair[1].1 - pair[0].1, 2 * NANOS_PER_SEC);
        }
    }

    #[test]
    fn keyframe_phase_shortens_only_the_first_gop() {
        let mut stream = SyntheticStream::new(default_params()).with_keyframe_phase(45);
        let keyframes: Vec<u32> = std::iter::from_fn(|| Some(stream.next_frame()))
            .filter(|f| f.kind == MediaKind::Video)
            .take(200)
            .filter(|f| f.keyframe)
            .map(|f| f.seq)
            .collect();
        assert_eq!(keyframes, [0, 15, 75, 135, 195]);
        let (video, _) = measured_bps(default_params(), 10);
        assert!((video - 2_500_000.0).abs() / 2_500_000.0 < 0.05);
    }

    #[test]
    fn frames_come_in_due_order_with_per_kind_sequence_numbers() {
        let mut stream = SyntheticStream::new(default_params());
        let (mut last_due, mut video_seq, mut audio_seq) = (0, 0, 0);
        for _ in 0..1000 {
            let frame = stream.next_frame();
            assert!(frame.due_ns >= last_due);
            last_due = frame.due_ns;
            assert_eq!(u64::from(frame.timestamp.value()), frame.due_ns / 1_000_000);
            let counter =
                if frame.kind == MediaKind::Video { &mut video_seq } else { &mut audio_seq };
            assert_eq!(frame.seq, *counter);
            *counter += 1;
        }
        // 44100/1024 audio frames per second against 30 video frames.
        let ratio = f64::from(audio_seq) / f64::from(video_seq);
        assert!((ratio - 44_100.0 / 1024.0 / 30.0).abs() < 0.01, "{ratio}");
    }

    #[test]
    fn payloads_carry_codec_header_and_marker() {
        let mut stream = SyntheticStream::new(default_params());
        for _ in 0..100 {
            let frame = stream.next_frame();
            let sent_ns = 1_000 + u64::from(frame.seq);
            let payload = stream.payload(&frame, sent_ns).to_vec();
            assert_eq!(payload.len(), frame.size);
            let found = marker::find(frame.kind, &payload).expect("marker");
            assert_eq!(found, Marker { seq: frame.seq, sent_ns });
            match frame.kind {
                MediaKind::Video => {
                    assert_eq!(payload[0], if frame.keyframe { 0x17 } else { 0x27 });
                    assert_eq!(marker::is_video_keyframe(&payload), frame.keyframe);
                }
                _ => assert_eq!(&payload[..2], &[0xaf, 1]),
            }
        }
    }

    #[test]
    fn no_audio_when_its_bitrate_is_zero() {
        let mut stream = SyntheticStream::new(StreamParams::new(1_000_000, 0, 30, 2.0, 8));
        assert!((0..100).all(|_| stream.next_frame().kind == MediaKind::Video));
    }

    #[test]
    fn tiny_bitrates_still_fit_header_and_marker() {
        let params = StreamParams::new(1_000, 1_000, 30, 2.0, 8);
        let (key, inter) = params.video_frame_sizes();
        assert!(key >= AVC_HEADER_LEN + MARKER_LEN && inter >= AVC_HEADER_LEN + MARKER_LEN);
        assert_eq!(params.audio_frame_size(), Some(AAC_HEADER_LEN + MARKER_LEN));
    }

    #[test]
    fn sequence_headers_are_avc_and_aac() {
        assert_eq!(&VIDEO_SEQUENCE_HEADER[..2], &[0x17, 0]);
        assert_eq!(&AUDIO_SEQUENCE_HEADER[..2], &[0xaf, 0]);
        assert!(rtmp_proto::media::parse_video_config(VIDEO_SEQUENCE_HEADER).is_ok());
        assert!(rtmp_proto::media::parse_audio_config(AUDIO_SEQUENCE_HEADER).is_ok());
    }
}
