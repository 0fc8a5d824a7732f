//! The recording state machine, pure: relayed frames in, file operations out.
//!
//! [`Muxer::push`] turns each [`Frame`] into [`Op`]s (open a segment file, bytes, one tag,
//! close) that the sink writes in order. It holds no file and does no I/O, so every decision
//! below is unit-tested on plain values:
//!
//! - **Where a file starts.** A file starts at the stream's first coded frame: a video
//!   keyframe or an audio frame. Metadata and sequence headers seen before are held and written
//!   at the head of the file; video inter frames before the file's first keyframe are dropped,
//!   since nothing could decode them; so are other data messages (cue points) before the file
//!   starts. A stream that never sends media creates no file.
//! - **What every file starts with.** The FLV header, an `onMetaData` tag (the publisher's
//!   latest, or an empty one) whose `duration` and `filesize` the sink fixes up, then the video
//!   and audio sequence headers, all at timestamp 0. Each segment starts the same way, so each
//!   is decodable on its own.
//! - **Time.** Timestamps are rebased so that each file starts at 0 and never go backwards
//!   ([`Clock`]). Only audio and video frames move the clock; metadata, data and sequence
//!   headers are stamped with the current time, since encoders often send them at 0 mid-stream.
//! - **Segments.** With a duration or size limit, a new file starts at the first cut point at or
//!   past the limit: a video keyframe, or any audio frame in a stream without video. A segment
//!   therefore runs over its limit by up to one GOP.
//! - **Metadata updates.** A new `onMetaData` mid-file is written where it arrives, less any
//!   `duration` and `filesize` (they would undo the fixed-up ones in readers that apply every
//!   update), and becomes the head of later segments.
//! - **Zero copy.** A tag is the 11 header bytes, the relayed payload (a reference to the
//!   shared `Bytes`) and the 4 trailer bytes; only the `onMetaData` tag and the 13-byte file
//!   header are built here.

use std::collections::VecDeque;

use bytes::Bytes;
use rtmp_proto::amf0::{Amf0Value, AmfLimits};
use rtmp_proto::session::MediaKind;
use rtmp_proto::time::RtmpTimestamp;
use tracing::warn;

use super::flv::{self, MetadataPatch, FLAG_AUDIO, FLAG_VIDEO, TAG_HEADER_LEN, TAG_TRAILER_LEN};
use crate::frame::{Frame, FrameClass};

/// How far (ms) a frame may lag the newest one and still be treated as interleaving jitter
/// (audio stamped a little before the video frame sent ahead of it): it is written at the
/// current time. A bigger step back is a timestamp discontinuity: time goes on from where it
/// was, without a jump.
pub const MAX_REORDER_MS: u32 = 1_000;
/// A step forward bigger than this (ms) is a discontinuity too (a publisher whose clock
/// jumped), not a gap to reproduce: one bad timestamp would otherwise give the file hours of
/// duration.
pub const MAX_FORWARD_GAP_MS: u32 = 60_000;

/// One thing for the sink to do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Start segment `segment`: close the current file (if any) and open a new one. The file's
    /// header says `flags`; its `onMetaData` patch window is at byte `patch_at`.
    Open { segment: u32, flags: u8, patch_at: Option<u64> },
    /// Bytes built here: the file header and the `onMetaData` tag.
    Bytes(Bytes),
    /// One tag: header, the relayed payload (shared, not copied), `PreviousTagSize`.
    Tag { header: [u8; TAG_HEADER_LEN], payload: Bytes, trailer: [u8; TAG_TRAILER_LEN] },
    /// The current file is complete: fix it up and close it.
    Close,
}

impl Op {
    /// Bytes this op appends to the file.
    pub fn file_len(&self) -> usize {
        match self {
            Op::Open { .. } | Op::Close => 0,
            Op::Bytes(bytes) => bytes.len(),
            Op::Tag { payload, .. } => TAG_HEADER_LEN + payload.len() + TAG_TRAILER_LEN,
        }
    }

    fn tag(tag_type: u8, payload: &Bytes, timestamp: u32) -> Option<Op> {
        let header = flv::tag_header(tag_type, payload.len(), timestamp)?;
        Some(Op::Tag { header, payload: payload.clone(), trailer: flv::tag_trailer(&header) })
    }
}

/// Where the muxer's ops go (the sink's queue, or a `VecDeque` in tests).
pub trait OpSink {
    fn push_op(&mut self, op: Op);
}

impl OpSink for VecDeque<Op> {
    fn push_op(&mut self, op: Op) {
        self.push_back(op);
    }
}

/// The recording's time line: RTMP timestamps in, milliseconds since the first media frame out,
/// never decreasing. Incremental (each frame is measured against the last one that moved the
/// clock), so 32-bit wrap-around after 49.7 days is harmless.
#[derive(Debug, Clone, Default)]
pub struct Clock {
    last_in: Option<RtmpTimestamp>,
    now: u64,
}

impl Clock {
    /// Moves the clock with a media frame stamped `ts` and returns the frame's time.
    pub fn advance(&mut self, ts: RtmpTimestamp) -> u64 {
        let Some(last) = self.last_in else {
            self.last_in = Some(ts);
            return self.now;
        };
        let delta = ts.signed_since(last);
        if delta >= 0 && delta.unsigned_abs() <= MAX_FORWARD_GAP_MS {
            self.now += u64::from(delta.unsigned_abs());
            self.last_in = Some(ts);
        } else if delta < 0 && delta.unsigned_abs() <= MAX_REORDER_MS {
            // Jitter: keep the anchor, so the frames after it are not shifted.
        } else {
            // Discontinuity: re-anchor here and carry on from the current time.
            self.last_in = Some(ts);
        }
        self.now
    }

    /// The current time, for frames that do not move the clock.
    pub fn now(&self) -> u64 {
        self.now
    }
}

/// The file being written.
#[derive(Debug)]
struct Segment {
    /// Clock time at which the file starts (its timestamp 0).
    start: u64,
    /// Bytes queued to it so far.
    bytes: u64,
}

/// Turns frames into file operations. See the module doc.
#[derive(Debug)]
pub struct Muxer {
    segment_ms: Option<u64>,
    segment_bytes: Option<u64>,
    limits: AmfLimits,
    /// The `onMetaData` tag every new file starts with (built from the publisher's latest).
    metadata: Option<Bytes>,
    audio_header: Option<Bytes>,
    video_header: Option<Bytes>,
    /// Whether the stream carries audio/video (sequence headers, frames, or metadata codec ids):
    /// what a file header announces.
    has_audio: bool,
    has_video: bool,
    /// Whether video frames actually came: then only keyframes are places to cut.
    video_frames: bool,
    clock: Clock,
    segment: Option<Segment>,
    next_segment: u32,
    /// Video inter frames are dropped until the first keyframe of the recording.
    awaiting_keyframe: bool,
    oversized_warned: bool,
}

impl Muxer {
    pub fn new(segment_secs: Option<u32>, segment_bytes: Option<u64>) -> Self {
        Self {
            segment_ms: segment_secs.map(|s| u64::from(s) * 1000),
            segment_bytes,
            limits: AmfLimits::default(),
            metadata: None,
            audio_header: None,
            video_header: None,
            has_audio: false,
            has_video: false,
            video_frames: false,
            clock: Clock::default(),
            segment: None,
            next_segment: 0,
            awaiting_keyframe: true,
            oversized_warned: false,
        }
    }

    /// Segments started so far.
    #[cfg(test)]
    pub fn segments(&self) -> u32 {
        self.next_segment
    }

    /// Turns one relayed frame into ops.
    pub fn push(&mut self, frame: &Frame, out: &mut impl OpSink) {
        if frame.payload.len() > flv::MAX_TAG_DATA {
            // Unreachable with a validated config (messages are at most 16 MiB - 1), but FLV
            // cannot describe a bigger tag, so it is dropped rather than written corrupt.
            if !self.oversized_warned {
                warn!(bytes = frame.payload.len(), "frame too large for FLV: not recorded");
                self.oversized_warned = true;
            }
            return;
        }
        match (frame.kind, frame.class) {
            (MediaKind::Data, _) => self.push_data(frame, out),
            (MediaKind::Audio, FrameClass::SequenceHeader) => {
                self.has_audio = true;
                self.audio_header = Some(frame.payload.clone());
                self.write_now(flv::TAG_AUDIO, &frame.payload, out);
            }
            (MediaKind::Video, FrameClass::SequenceHeader) => {
                self.has_video = true;
                self.video_frames = true;
                self.video_header = Some(frame.payload.clone());
                self.write_now(flv::TAG_VIDEO, &frame.payload, out);
            }
            (MediaKind::Audio, _) => {
                self.has_audio = true;
                // Without video, any audio frame is a place to cut.
                let cut_point = !self.video_frames;
                self.push_media(flv::TAG_AUDIO, frame, cut_point, out);
            }
            (MediaKind::Video, FrameClass::Keyframe) => {
                self.has_video = true;
                self.video_frames = true;
                self.awaiting_keyframe = false;
                self.push_media(flv::TAG_VIDEO, frame, true, out);
            }
            (MediaKind::Video, _) => {
                self.has_video = true;
                self.video_frames = true;
                if self.awaiting_keyframe || self.segment.is_none() {
                    return;
                }
                self.push_media(flv::TAG_VIDEO, frame, false, out);
            }
        }
    }

    /// Ends the recording: closes the current file, if one was started.
    pub fn finish(&mut self, out: &mut impl OpSink) {
        if self.segment.take().is_some() {
            out.push_op(Op::Close);
        }
    }

    fn push_data(&mut self, frame: &Frame, out: &mut impl OpSink) {
        // `@setDataFrame onMetaData` arrives unwrapped as Metadata; an encoder sending
        // `onMetaData` bare means the same.
        let Some(props) = flv::metadata_properties(&frame.payload, &self.limits) else {
            // Other data (cue points, captions): written where it arrives, as sent.
            self.write_now(flv::TAG_SCRIPT, &frame.payload, out);
            return;
        };
        self.note_codecs(&props);
        self.metadata = match flv::metadata_tag(&props) {
            Some((tag, _)) => Some(tag),
            None => flv::metadata_tag(&[]).map(|(tag, _)| tag),
        };
        if self.segment.is_some() {
            // An update mid-file, without the publisher's duration and filesize so that it does
            // not undo the fixed-up ones (ffmpeg applies every onMetaData it reads).
            let update = flv::metadata_update_body(&props);
            self.write_now(flv::TAG_SCRIPT, &update, out);
        }
    }

    /// Metadata codec ids say which tracks will come, before their first frame.
    fn note_codecs(&mut self, props: &[(String, Amf0Value)]) {
        let present = |key: &str| {
            props
                .iter()
                .any(|(k, v)| k == key && !matches!(v, Amf0Value::Null | Amf0Value::Undefined))
        };
        self.has_audio |= present("audiocodecid");
        self.has_video |= present("videocodecid");
    }

    /// Writes a non-media tag into the current file at the current time (nothing before the
    /// file starts: such tags are held or rebuilt for the head of the file).
    fn write_now(&mut self, tag_type: u8, payload: &Bytes, out: &mut impl OpSink) {
        let Some(segment) = &mut self.segment else { return };
        let ts = self.clock.now().saturating_sub(segment.start);
        if let Some(op) = Op::tag(tag_type, payload, ts as u32) {
            segment.bytes += op.file_len() as u64;
            out.push_op(op);
        }
    }

    fn push_media(&mut self, tag_type: u8, frame: &Frame, cut_point: bool, out: &mut impl OpSink) {
        let now = self.clock.advance(frame.timestamp);
        let cut = match &self.segment {
            None => true,
            Some(segment) => {
                cut_point
                    && (self.segment_ms.is_some_and(|ms| now.saturating_sub(segment.start) >= ms)
                        || self.segment_bytes.is_some_and(|bytes| segment.bytes >= bytes))
            }
        };
        if cut {
            self.start_segment(now, out);
        }
        let Some(segment) = &mut self.segment else { return };
        // Wraps after 49.7 days in one file, as FLV's 32-bit timestamps do.
        let ts = now.saturating_sub(segment.start) as u32;
        if let Some(op) = Op::tag(tag_type, &frame.payload, ts) {
            segment.bytes += op.file_len() as u64;
            out.push_op(op);
        }
    }

    fn start_segment(&mut self, now: u64, out: &mut impl OpSink) {
        if self.segment.is_some() {
            out.push_op(Op::Close);
        }
        let flags = if self.has_audio { FLAG_AUDIO } else { 0 }
            | if self.has_video { FLAG_VIDEO } else { 0 };
        let metadata = self.metadata.clone().or_else(|| flv::metadata_tag(&[]).map(|(t, _)| t));
        // The metadata tag follows the file header; its window is at a fixed place in it.
        let patch_at = metadata
            .as_ref()
            .map(|_| (flv::FILE_HEADER_LEN + TAG_HEADER_LEN + MetadataPatch::BODY_OFFSET) as u64);
        let segment = self.next_segment;
        self.next_segment += 1;
        out.push_op(Op::Open { segment, flags, patch_at });
        let header = Op::Bytes(Bytes::copy_from_slice(&flv::file_header(flags)));
        let mut bytes = header.file_len() as u64;
        out.push_op(header);
        if let Some(metadata) = metadata {
            bytes += metadata.len() as u64;
            out.push_op(Op::Bytes(metadata));
        }
        for (tag_type, header) in
            [(flv::TAG_VIDEO, &self.video_header), (flv::TAG_AUDIO, &self.audio_header)]
        {
            if let Some(op) = header.as_ref().and_then(|h| Op::tag(tag_type, h, 0)) {
                bytes += op.file_len() as u64;
                out.push_op(op);
            }
        }
        self.segment = Some(Segment { start: now, bytes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rtmp_proto::amf0;
    use rtmp_proto::chunk::ChunkEncoder;

    const AVC_SEQ: &[u8] = &[0x17, 0, 0, 0, 0, 1, 0x64, 0, 0x1f, 0xff];
    const AAC_SEQ: &[u8] = &[0xaf, 0, 0x12, 0x10];

    fn frame(kind: MediaKind, ts: u32, payload: &[u8], is_metadata: bool) -> Frame {
        Frame::new(
            kind,
            RtmpTimestamp(ts),
            Bytes::copy_from_slice(payload),
            is_metadata,
            &ChunkEncoder::new(4096),
        )
    }

    fn key(ts: u32) -> Frame {
        frame(MediaKind::Video, ts, &[0x17, 1, 0, 0, 0, 0xaa], false)
    }

    fn inter(ts: u32) -> Frame {
        frame(MediaKind::Video, ts, &[0x27, 1, 0, 0, 0, 0xbb], false)
    }

    fn audio(ts: u32) -> Frame {
        frame(MediaKind::Audio, ts, &[0xaf, 1, 0xcc], false)
    }

    fn metadata(width: f64) -> Frame {
        let mut body = BytesMut::new();
        amf0::encode_all(
            &[
                Amf0Value::string("onMetaData"),
                Amf0Value::EcmaArray(vec![
                    ("duration".into(), Amf0Value::Number(0.0)),
                    ("width".into(), Amf0Value::Number(width)),
                    ("videocodecid".into(), Amf0Value::Number(7.0)),
                ]),
            ],
            &mut body,
        );
        frame(MediaKind::Data, 0, &body, true)
    }

    /// The files the ops describe: (segment, bytes) per file, as the sink would write them.
    fn files(ops: &VecDeque<Op>) -> Vec<(u32, Vec<u8>)> {
        let mut files: Vec<(u32, Vec<u8>)> = Vec::new();
        for op in ops {
            match op {
                Op::Open { segment, .. } => files.push((*segment, Vec::new())),
                Op::Bytes(b) => files.last_mut().expect("open file").1.extend_from_slice(b),
                Op::Tag { header, payload, trailer } => {
                    let file = &mut files.last_mut().expect("open file").1;
                    file.extend_from_slice(header);
                    file.extend_from_slice(payload);
                    file.extend_from_slice(trailer);
                }
                Op::Close => {}
            }
        }
        files
    }

    /// (tag type, timestamp, first payload byte) of each tag in an FLV image, checking the
    /// header and every PreviousTagSize on the way.
    fn tags(file: &[u8]) -> Vec<(u8, u32, u8)> {
        assert_eq!(&file[..3], b"FLV");
        assert_eq!(&file[5..13], &[0, 0, 0, 9, 0, 0, 0, 0]);
        let mut at = 13;
        let mut out = Vec::new();
        while at < file.len() {
            let header: [u8; 11] = file[at..at + 11].try_into().expect("tag header");
            let len = flv::tag_data_len(&header);
            let prev = u32::from_be_bytes(file[at + 11 + len..at + 15 + len].try_into().unwrap());
            assert_eq!(prev as usize, 11 + len, "PreviousTagSize of tag at {at}");
            out.push((header[0], flv::tag_timestamp(&header), file[at + 11]));
            at += 15 + len;
        }
        assert_eq!(at, file.len());
        out
    }

    #[test]
    fn file_starts_with_header_metadata_and_sequence_headers() {
        let mut muxer = Muxer::new(None, None);
        let mut ops = VecDeque::new();
        for f in [
            metadata(320.0),
            frame(MediaKind::Video, 0, AVC_SEQ, false),
            frame(MediaKind::Audio, 0, AAC_SEQ, false),
            inter(1000), // before any keyframe: dropped, and it does not start the file
            key(1000),
            audio(1010),
            inter(1040),
        ] {
            muxer.push(&f, &mut ops);
        }
        muxer.finish(&mut ops);
        assert_eq!(
            ops.front(),
            Some(&Op::Open { segment: 0, flags: 0x05, patch_at: Some(13 + 11 + 29) })
        );
        assert_eq!(ops.back(), Some(&Op::Close));
        let files = files(&ops);
        assert_eq!(files.len(), 1);
        let tags = tags(&files[0].1);
        assert_eq!(
            tags,
            [(18, 0, 0x02), (9, 0, 0x17), (8, 0, 0xaf), (9, 0, 0x17), (8, 10, 0xaf), (9, 40, 0x27)]
        );
        // The metadata is ours: duration and filesize first, then the publisher's width.
        let file = &files[0].1;
        let body_len = flv::tag_data_len(file[13..24].try_into().unwrap());
        let props =
            flv::metadata_properties(&file[24..24 + body_len], &AmfLimits::default()).unwrap();
        let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["duration", "filesize", "width", "videocodecid"]);
    }

    #[test]
    fn nothing_is_written_without_media() {
        let mut muxer = Muxer::new(None, None);
        let mut ops = VecDeque::new();
        muxer.push(&metadata(1.0), &mut ops);
        muxer.push(&frame(MediaKind::Video, 0, AVC_SEQ, false), &mut ops);
        muxer.push(&inter(0), &mut ops);
        muxer.finish(&mut ops);
        assert!(ops.is_empty());
    }

    #[test]
    fn timestamps_start_at_zero_and_never_go_back() {
        let mut clock = Clock::default();
        let got: Vec<u64> = [5000, 5040, 5030, 5080, 100, 140, 140 + 120_000, 140 + 120_040]
            .iter()
            .map(|&t| clock.advance(RtmpTimestamp(t)))
            .collect();
        // Jitter (5030) is held at the current time without shifting what follows; a jump back
        // (100) and a jump forward of two minutes are discontinuities bridged without a gap.
        assert_eq!(got, [0, 40, 40, 80, 80, 120, 120, 160]);
        let mut clock = Clock::default();
        let wrapped: Vec<u64> = [u32::MAX - 20, u32::MAX, 19]
            .iter()
            .map(|&t| clock.advance(RtmpTimestamp(t)))
            .collect();
        assert_eq!(wrapped, [0, 20, 40], "32-bit wrap-around is just time going on");
    }

    #[test]
    fn data_and_late_headers_do_not_move_the_clock() {
        let mut muxer = Muxer::new(None, None);
        let mut ops = VecDeque::new();
        muxer.push(&key(2000), &mut ops);
        muxer.push(&metadata(640.0), &mut ops); // stamped 0 by the encoder
        muxer.push(&inter(2040), &mut ops);
        muxer.finish(&mut ops);
        let tags = tags(&files(&ops)[0].1);
        assert_eq!(tags, [(18, 0, 0x02), (9, 0, 0x17), (18, 0, 0x02), (9, 40, 0x27)]);
        // The update is the publisher's, less its duration.
        let Some(Op::Tag { payload, .. }) =
            ops.iter().filter(|op| matches!(op, Op::Tag { .. })).nth(1)
        else {
            panic!("the metadata update")
        };
        let props = flv::metadata_properties(payload, &AmfLimits::default()).expect("decodes");
        let names: Vec<&str> = props.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["width", "videocodecid"]);
    }

    #[test]
    fn segments_cut_at_keyframes_and_restart_with_headers() {
        let mut muxer = Muxer::new(Some(2), None);
        let mut ops = VecDeque::new();
        muxer.push(&metadata(320.0), &mut ops);
        muxer.push(&frame(MediaKind::Video, 0, AVC_SEQ, false), &mut ops);
        muxer.push(&frame(MediaKind::Audio, 0, AAC_SEQ, false), &mut ops);
        // One keyframe every 1.5 s, a frame every 500 ms, audio in between.
        for i in 0..10u32 {
            let ts = i * 500;
            if i % 3 == 0 {
                muxer.push(&key(ts), &mut ops);
            } else {
                muxer.push(&inter(ts), &mut ops);
            }
            muxer.push(&audio(ts + 10), &mut ops);
        }
        muxer.finish(&mut ops);
        let files = files(&ops);
        // Cuts at the first keyframe 2 s or more into a segment: 3000 ms only (4500 is 1.5 s
        // into the second segment).
        assert_eq!(files.len(), 2);
        assert_eq!(muxer.segments(), 2);
        for (index, (segment, file)) in files.iter().enumerate() {
            assert_eq!(*segment as usize, index);
            let tags = tags(file);
            assert_eq!(tags[..3], [(18, 0, 0x02), (9, 0, 0x17), (8, 0, 0xaf)], "segment {index}");
            assert_eq!(tags[3], (9, 0, 0x17), "segment {index} starts on a keyframe at 0");
        }
        let second = tags(&files[1].1);
        assert_eq!(second.last(), Some(&(8, 1510, 0xaf)));
        let closes = ops.iter().filter(|op| **op == Op::Close).count();
        assert_eq!(closes, 2);
    }

    #[test]
    fn size_segments_and_audio_only_cut_anywhere() {
        let mut muxer = Muxer::new(None, Some(100));
        let mut ops = VecDeque::new();
        muxer.push(&frame(MediaKind::Audio, 0, AAC_SEQ, false), &mut ops);
        for i in 0..20 {
            muxer.push(&audio(i * 23), &mut ops);
        }
        muxer.finish(&mut ops);
        let files = files(&ops);
        assert!(files.len() > 2, "{} files", files.len());
        for (_, file) in &files {
            assert_eq!(file[4], FLAG_AUDIO, "audio-only header");
            let tags = tags(file);
            assert_eq!(tags[1], (8, 0, 0xaf), "audio sequence header first");
            assert_eq!(tags[2].1, 0, "each file starts at 0");
        }
    }

    #[test]
    fn payloads_are_shared_not_copied() {
        let mut muxer = Muxer::new(None, None);
        let mut ops = VecDeque::new();
        let f = key(0);
        muxer.push(&f, &mut ops);
        let Some(Op::Tag { payload, .. }) = ops.back() else { panic!("a tag") };
        assert_eq!(payload.as_ptr(), f.payload.as_ptr());
    }
}
