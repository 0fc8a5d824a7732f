//! The FLV tag inspectors and sequence-header parsers of `rtmp_proto::media` on an arbitrary
//! message payload, read both as a video tag and as an audio tag.
//!
//! Input: the payload itself, so the captured tags in `proto/tests/data/` are seeds as they are.
//!
//! Invariants (the relay is codec-transparent, so these answers may be "unknown" but never
//! contradictory):
//! - `inspect_*` is `None` exactly when `parse_*_config` says `Truncated`;
//! - a parsed configuration names the codec `inspect_*` saw; a video configuration comes only
//!   from a sequence header, and a tag is never both a sequence header and a keyframe;
//! - keyframe dimensions come only from an Enhanced RTMP VP8/VP9 keyframe, within the sizes
//!   the bitstreams can express;
//! - every `Display` (logged for peers' streams) stays short.

use rtmp_proto::media::{
    inspect_audio, inspect_video, parse_audio_config, parse_keyframe_dimensions,
    parse_video_config, MediaError, VideoCodec,
};

/// Longest log text a configuration may produce: a few names and numbers.
const MAX_DISPLAY: usize = 160;

pub fn run(data: &[u8]) {
    video(data);
    audio(data);
}

fn video(data: &[u8]) {
    let tag = inspect_video(data);
    let config = parse_video_config(data);
    let dimensions = parse_keyframe_dimensions(data);
    let Some(tag) = tag else {
        assert_eq!(config, Err(MediaError::Truncated), "no video header, yet {config:?}");
        assert_eq!(dimensions, None);
        return;
    };
    assert!(!(tag.is_keyframe() && tag.is_sequence_header()), "{tag:?}");
    short(&tag.codec);
    match &config {
        Ok(config) => {
            assert!(tag.is_sequence_header(), "configuration {config:?} from {tag:?}");
            assert_eq!(config.codec, tag.codec);
            short(config);
        }
        Err(MediaError::NotSequenceHeader) => assert!(!tag.is_sequence_header(), "{tag:?}"),
        Err(MediaError::Truncated | MediaError::Malformed(_)) => {
            assert!(tag.is_sequence_header(), "{config:?} for {tag:?}")
        }
    }
    if let Err(error) = &config {
        short(error);
    }
    if let Some((width, height)) = dimensions {
        assert!(tag.enhanced && tag.is_keyframe(), "dimensions from {tag:?}");
        let max = match tag.codec {
            VideoCodec::Vp8 => 0x3fff,
            VideoCodec::Vp9 => 0x1_0000,
            other => panic!("keyframe dimensions for {other:?}"),
        };
        assert!(width <= max && height <= max, "{width}x{height} for {:?}", tag.codec);
    }
}

fn audio(data: &[u8]) {
    let tag = inspect_audio(data);
    let config = parse_audio_config(data);
    let Some(tag) = tag else {
        assert_eq!(config, Err(MediaError::Truncated), "no audio header, yet {config:?}");
        return;
    };
    short(&tag.codec);
    match &config {
        Ok(config) => {
            assert_eq!(config.codec, tag.codec);
            short(config);
        }
        Err(error) => short(error),
    }
}

fn short(value: &impl std::fmt::Display) {
    let text = value.to_string();
    assert!(text.len() <= MAX_DISPLAY, "{} bytes of log text: {text:?}", text.len());
}
