//! A media message as the relay carries it: classified once on arrival, chunk-encoded once, and
//! shared by reference by the late-join cache, every subscriber queue and the recorder.
//!
//! A leaf of its own: the vocabulary `stream` (the fan-out) and `record` (a sink) share, so
//! neither has to import the other's internals to speak of a frame.

use std::time::Instant;

use bytes::{Bytes, BytesMut};
use rtmp_proto::chunk::{ChunkEncoder, MessageHeader};
use rtmp_proto::media;
use rtmp_proto::session::{Media, MediaKind};
use rtmp_proto::time::RtmpTimestamp;

/// The message stream id the relay plays on: the first `createStream` of a connection gets 1,
/// and players open one stream, so frames are encoded for it once. A player on another id gets
/// its own encoding (see [`Frame::encoded_for`]).
pub const PLAY_STREAM_ID: u32 = 1;

/// What a frame is, for the cache and the slow-subscriber policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameClass {
    /// A video frame a decoder can start from.
    Keyframe,
    /// Any other video frame.
    InterFrame,
    /// Codec configuration (AVC/HEVC/AV1 sequence start, AAC AudioSpecificConfig...).
    SequenceHeader,
    /// An audio frame.
    Audio,
    /// Stream metadata (`onMetaData`).
    Metadata,
    /// Other data messages (cue points, captions, text).
    Data,
}

/// One relayed message, immutable once built. Cloning it (to send it to another shard) costs
/// two reference-count increments.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: MediaKind,
    pub class: FrameClass,
    pub timestamp: RtmpTimestamp,
    pub payload: Bytes,
    /// The message as ready-to-send chunks for [`PLAY_STREAM_ID`].
    pub chunks: Bytes,
    /// When the relay received it from the publisher: players' wait times are measured from
    /// here (the monotonic clock is the same on every core, so this crosses shards intact).
    pub arrived: Instant,
}

impl Frame {
    /// Classifies and encodes a message for `encoder`'s chunk size.
    pub fn new(
        kind: MediaKind,
        timestamp: RtmpTimestamp,
        payload: Bytes,
        is_metadata: bool,
        encoder: &ChunkEncoder,
    ) -> Self {
        let class = classify(kind, &payload, is_metadata);
        // onMetaData describes the stream; it is not a sample on its clock. Players get it at
        // timestamp 0 (as nginx-rtmp sends it), whatever the publisher stamped: FFmpeg's FLV
        // demuxer (flv_read_packet) skips an onMetaData tag only at dts 0 and turns one at any
        // other time into a phantom `text` subtitle track.
        let timestamp = if class == FrameClass::Metadata { RtmpTimestamp::ZERO } else { timestamp };
        let chunks = encode(kind, timestamp, &payload, PLAY_STREAM_ID, encoder);
        Frame { kind, class, timestamp, payload, chunks, arrived: Instant::now() }
    }

    /// A message as a session delivered it.
    pub fn of(media: Media, encoder: &ChunkEncoder) -> Self {
        Frame::new(media.kind, media.timestamp, media.payload, media.is_metadata, encoder)
    }

    /// The same message re-stamped (late joiners get cached headers on the GOP's time base).
    pub fn restamped(&self, timestamp: RtmpTimestamp, encoder: &ChunkEncoder) -> Self {
        let chunks = encode(self.kind, timestamp, &self.payload, PLAY_STREAM_ID, encoder);
        Frame {
            kind: self.kind,
            class: self.class,
            timestamp,
            payload: self.payload.clone(),
            chunks,
            arrived: self.arrived,
        }
    }

    /// The chunks for a player on message stream `stream_id`: shared bytes for the usual id, an
    /// encoding of its own otherwise.
    pub fn encoded_for(&self, stream_id: u32, encoder: &ChunkEncoder) -> Bytes {
        if stream_id == PLAY_STREAM_ID {
            self.chunks.clone()
        } else {
            encode(self.kind, self.timestamp, &self.payload, stream_id, encoder)
        }
    }

    /// The chunks a publisher sends for this frame on message stream `stream_id`: metadata
    /// wrapped in `@setDataFrame` again (as encoders send it, so the next server stores it for
    /// its late joiners), anything else as [`Self::encoded_for`] gives it. For outbound relays.
    pub fn encoded_for_publish(&self, stream_id: u32, encoder: &ChunkEncoder) -> Bytes {
        if self.class != FrameClass::Metadata {
            return self.encoded_for(stream_id, encoder);
        }
        const SET_DATA_FRAME: &[u8] = b"\x02\x00\x0d@setDataFrame";
        let mut payload = BytesMut::with_capacity(SET_DATA_FRAME.len() + self.payload.len());
        payload.extend_from_slice(SET_DATA_FRAME);
        payload.extend_from_slice(&self.payload);
        encode(self.kind, self.timestamp, &payload, stream_id, encoder)
    }

    /// Payload bytes (what the bitrate and cache limits count).
    pub fn len(&self) -> usize {
        self.payload.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payload.is_empty()
    }

    /// Whether the frame is on its track's clock: coded audio and video. Sequence headers and
    /// metadata are not: encoders stamp them 0 in front of media stamped hours in, or re-send
    /// them with whatever timestamp they like.
    pub fn is_timed(&self) -> bool {
        matches!(self.class, FrameClass::Keyframe | FrameClass::InterFrame | FrameClass::Audio)
    }

    /// Frames a player skipping to the next keyframe still receives: audio (cheap, and gaps
    /// are audible), codec configuration and metadata.
    pub fn survives_skip(&self) -> bool {
        !matches!(self.class, FrameClass::InterFrame | FrameClass::Keyframe)
    }
}

fn classify(kind: MediaKind, payload: &[u8], is_metadata: bool) -> FrameClass {
    match kind {
        MediaKind::Video => match media::inspect_video(payload) {
            Some(tag) if tag.is_sequence_header() => FrameClass::SequenceHeader,
            Some(tag) if tag.is_keyframe() => FrameClass::Keyframe,
            _ => FrameClass::InterFrame,
        },
        MediaKind::Audio => match media::inspect_audio(payload) {
            Some(tag) if tag.is_sequence_header => FrameClass::SequenceHeader,
            _ => FrameClass::Audio,
        },
        MediaKind::Data if is_metadata => FrameClass::Metadata,
        MediaKind::Data => FrameClass::Data,
    }
}

fn encode(
    kind: MediaKind,
    timestamp: RtmpTimestamp,
    payload: &[u8],
    stream_id: u32,
    encoder: &ChunkEncoder,
) -> Bytes {
    let header = MessageHeader { timestamp, type_id: kind.type_id(), stream_id };
    let mut out = BytesMut::with_capacity(encoder.encoded_len(kind.csid(), &header, payload.len()));
    encoder.encode(kind.csid(), &header, payload, &mut out);
    out.freeze()
}
