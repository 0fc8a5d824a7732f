//! The tag headers: which codec a message carries and what kind of packet it is, for both the
//! legacy FLV layout and Enhanced RTMP (ModEx, Multitrack, FourCC), as drawn in the module doc.
//!
//! This is the part of the module on the per-frame path: [`inspect_video`] and
//! [`inspect_audio`] run on every published message, so they read a few header bytes and never
//! allocate (the relay also reads VP8/VP9 keyframes for their size, which costs about as
//! little). The configuration parsers in `video.rs` and `audio.rs` start from the
//! [`VideoHeader`] / [`AudioHeader`] found here, so a header is decoded one way only.

use super::reader::ByteCursor;
use super::{AudioCodec, AudioTag, FrameType, VideoCodec, VideoPacketKind, VideoTag};

/// Legacy video codec ids (FLV spec E.4.3.1) and the field-evidence HEVC id.
const VIDEO_CODEC_AVC: u8 = 7;
const VIDEO_CODEC_HEVC_LEGACY: u8 = 12;

/// Enhanced RTMP `VideoPacketType` / `AudioPacketType` values.
pub(super) const PT_SEQUENCE_START: u8 = 0;
pub(super) const PT_CODED_FRAMES: u8 = 1;
const PT_SEQUENCE_END: u8 = 2;
const PT_CODED_FRAMES_X: u8 = 3;
const PT_METADATA: u8 = 4; // video; for audio 4 is MultichannelConfig
pub(super) const PT_MPEG2TS_SEQUENCE_START: u8 = 5; // video only
const PT_VIDEO_MULTITRACK: u8 = 6;
const PT_AUDIO_MULTITRACK: u8 = 5;
const PT_MOD_EX: u8 = 7;

/// `AvMultitrackType::OneTrack`: a track id but no track size.
const MULTITRACK_ONE_TRACK: u8 = 0;

/// Legacy SoundFormat values that change how the header is read.
const SOUND_FORMAT_EX_HEADER: u8 = 9;
const SOUND_FORMAT_AAC: u8 = 10;

fn video_codec_from_fourcc(cc: [u8; 4]) -> VideoCodec {
    match &cc {
        b"avc1" => VideoCodec::H264,
        b"hvc1" => VideoCodec::Hevc,
        b"av01" => VideoCodec::Av1,
        b"vp09" => VideoCodec::Vp9,
        b"vp08" => VideoCodec::Vp8,
        _ => VideoCodec::FourCc(cc),
    }
}

fn video_codec_from_id(id: u8) -> VideoCodec {
    match id {
        2 => VideoCodec::SorensonH263,
        3 => VideoCodec::ScreenVideo,
        4 => VideoCodec::On2Vp6,
        5 => VideoCodec::On2Vp6Alpha,
        6 => VideoCodec::ScreenVideo2,
        VIDEO_CODEC_AVC => VideoCodec::H264,
        VIDEO_CODEC_HEVC_LEGACY => VideoCodec::Hevc,
        other => VideoCodec::Other(other),
    }
}

fn audio_codec_from_fourcc(cc: [u8; 4]) -> AudioCodec {
    match &cc {
        b"mp4a" => AudioCodec::Aac,
        b"Opus" => AudioCodec::Opus,
        b"fLaC" => AudioCodec::Flac,
        b"ac-3" => AudioCodec::Ac3,
        b"ec-3" => AudioCodec::Eac3,
        b".mp3" => AudioCodec::Mp3,
        _ => AudioCodec::FourCc(cc),
    }
}

fn audio_codec_from_format(format: u8) -> AudioCodec {
    match format {
        0 => AudioCodec::LinearPcm,
        1 => AudioCodec::Adpcm,
        2 => AudioCodec::Mp3,
        3 => AudioCodec::LinearPcmLe,
        4..=6 => AudioCodec::Nellymoser,
        7 => AudioCodec::G711ALaw,
        8 => AudioCodec::G711MuLaw,
        SOUND_FORMAT_AAC => AudioCodec::Aac,
        11 => AudioCodec::Speex,
        14 => AudioCodec::Mp3_8k,
        15 => AudioCodec::DeviceSpecific,
        other => AudioCodec::Other(other),
    }
}

/// The part of an Enhanced RTMP header after byte 0, shared by audio and video.
struct ExHeader<'a> {
    /// The packet type after any ModEx and Multitrack bytes.
    packet_type: u8,
    fourcc: [u8; 4],
    /// The `AvMultitrackType` when the message is multitrack.
    multitrack: Option<u8>,
    /// The cursor after the FourCC.
    rest: ByteCursor<'a>,
}

/// Reads `ModEx` blocks, then the `Multitrack` byte, then the FourCC. `None` when truncated.
///
/// `is_command_frame` is the video-only case where a command byte replaces the FourCC
/// (`Err` with the cursor after it); it is checked after the ModEx blocks, as in the v2
/// pseudocode.
fn parse_ex_header(
    first_packet_type: u8,
    mut cur: ByteCursor<'_>,
    multitrack_type_value: u8,
    is_command_frame: bool,
) -> Option<Result<ExHeader<'_>, ByteCursor<'_>>> {
    let mut packet_type = first_packet_type;
    // ModEx (v2): `size-1` as UI8 (UI16 when the UI8 is 255), the data, then
    // `modExType:4 | packetType:4`. Each turn consumes at least two bytes, so the loop ends.
    while packet_type == PT_MOD_EX {
        let mut size = usize::from(cur.u8()?) + 1;
        if size == 256 {
            size = usize::from(cur.u16()?) + 1;
        }
        cur.take(size)?;
        packet_type = cur.u8()? & 0x0f;
    }
    if is_command_frame && packet_type != PT_METADATA {
        // "ExVideoTagBody has no payload if we got here": a command byte, no FourCC.
        cur.u8()?;
        return Some(Err(cur));
    }
    let mut multitrack = None;
    if packet_type == multitrack_type_value {
        let b = cur.u8()?;
        multitrack = Some(b >> 4);
        // The spec forbids a nested Multitrack here; if one comes it stays a reserved value.
        packet_type = b & 0x0f;
    }
    let fourcc = cur.fourcc()?;
    Some(Ok(ExHeader { packet_type, fourcc, multitrack, rest: cur }))
}

/// A video tag header with what follows it.
pub(super) struct VideoHeader<'a> {
    pub(super) tag: VideoTag,
    /// The packet type as on the wire (legacy AVCPacketType or enhanced VideoPacketType).
    pub(super) raw_packet_type: u8,
    /// For a sequence header: the decoder configuration record (the first track's, in a
    /// multitrack message).
    pub(super) body: &'a [u8],
}

pub(super) fn parse_video_header(payload: &[u8]) -> Option<VideoHeader<'_>> {
    let mut cur = ByteCursor::new(payload);
    let b0 = cur.u8()?;
    if b0 & 0x80 != 0 {
        let frame_type = FrameType::from_bits((b0 >> 4) & 0x07);
        let ex = match parse_ex_header(
            b0 & 0x0f,
            cur,
            PT_VIDEO_MULTITRACK,
            frame_type == FrameType::Command,
        )? {
            Ok(ex) => ex,
            Err(rest) => {
                let tag = VideoTag {
                    codec: VideoCodec::FourCc([0; 4]),
                    frame_type,
                    packet: VideoPacketKind::Other(b0 & 0x0f),
                    enhanced: true,
                };
                return Some(VideoHeader { tag, raw_packet_type: b0 & 0x0f, body: rest.rest() });
            }
        };
        let packet = match ex.packet_type {
            PT_SEQUENCE_START | PT_MPEG2TS_SEQUENCE_START => VideoPacketKind::SequenceHeader,
            PT_CODED_FRAMES | PT_CODED_FRAMES_X => VideoPacketKind::CodedFrames,
            PT_SEQUENCE_END => VideoPacketKind::EndOfSequence,
            PT_METADATA => VideoPacketKind::Metadata,
            other => VideoPacketKind::Other(other),
        };
        let tag = VideoTag {
            codec: video_codec_from_fourcc(ex.fourcc),
            frame_type,
            packet,
            enhanced: true,
        };
        let body = multitrack_first_track(ex.rest, ex.multitrack);
        return Some(VideoHeader { tag, raw_packet_type: ex.packet_type, body });
    }
    let frame_type = FrameType::from_bits(b0 >> 4);
    let codec_id = b0 & 0x0f;
    let codec = video_codec_from_id(codec_id);
    if codec_id == VIDEO_CODEC_AVC || codec_id == VIDEO_CODEC_HEVC_LEGACY {
        // AVCPacketType, then a 24-bit composition time we do not need to classify the tag.
        let packet_type = cur.u8()?;
        let packet = match packet_type {
            0 => VideoPacketKind::SequenceHeader,
            1 => VideoPacketKind::CodedFrames,
            2 => VideoPacketKind::EndOfSequence,
            other => VideoPacketKind::Other(other),
        };
        let body = cur.rest().get(3..).unwrap_or(&[]);
        let tag = VideoTag { codec, frame_type, packet, enhanced: false };
        return Some(VideoHeader { tag, raw_packet_type: packet_type, body });
    }
    // H.263, Screen Video, VP6: every tag is a coded frame (VP6 adds an adjustment byte).
    let tag = VideoTag { codec, frame_type, packet: VideoPacketKind::CodedFrames, enhanced: false };
    Some(VideoHeader { tag, raw_packet_type: PT_CODED_FRAMES, body: cur.rest() })
}

/// In a multitrack message, skips to the first track's body: `trackId:UI8`, and unless there is
/// one track, `sizeOfTrack:UI24` bounding the track (the FourCC of a ManyTracksManyCodecs track
/// has already been read as the header FourCC). A truncated track yields an empty body, which
/// the configuration parsers report as truncated.
fn multitrack_first_track(mut cur: ByteCursor<'_>, multitrack: Option<u8>) -> &[u8] {
    let Some(kind) = multitrack else {
        return cur.rest();
    };
    if cur.u8().is_none() {
        return &[];
    }
    if kind == MULTITRACK_ONE_TRACK {
        return cur.rest();
    }
    let Some(size) = cur.u24() else {
        return &[];
    };
    let rest = cur.rest();
    let size = usize::try_from(size).unwrap_or(usize::MAX).min(rest.len());
    &rest[..size]
}

/// Classifies a video message payload (an FLV `VIDEODATA` body).
///
/// `None` only when there is nothing to classify: an empty payload, or a payload shorter than
/// the header its first byte announces (the packet-type byte of legacy AVC/HEVC; the ModEx,
/// Multitrack, FourCC or command bytes of an enhanced header). Unknown codecs and packet types
/// are `Some` with `Other`/`FourCc` values, so the relay can forward what it does not know.
pub fn inspect_video(payload: &[u8]) -> Option<VideoTag> {
    parse_video_header(payload).map(|h| h.tag)
}

pub(super) struct AudioHeader<'a> {
    pub(super) tag: AudioTag,
    /// The legacy flags byte (`None` for enhanced audio).
    pub(super) legacy_flags: Option<u8>,
    /// Enhanced packet type (`None` for legacy audio).
    pub(super) packet_type: Option<u8>,
    /// What follows the header: the configuration for a sequence header, else coded audio.
    pub(super) body: &'a [u8],
}

pub(super) fn parse_audio_header(payload: &[u8]) -> Option<AudioHeader<'_>> {
    let mut cur = ByteCursor::new(payload);
    let b0 = cur.u8()?;
    let format = b0 >> 4;
    if format == SOUND_FORMAT_EX_HEADER {
        let ex = match parse_ex_header(b0 & 0x0f, cur, PT_AUDIO_MULTITRACK, false)? {
            Ok(ex) => ex,
            Err(_) => return None, // unreachable: audio has no command frames
        };
        let tag = AudioTag {
            codec: audio_codec_from_fourcc(ex.fourcc),
            is_sequence_header: ex.packet_type == PT_SEQUENCE_START,
            enhanced: true,
        };
        let body = multitrack_first_track(ex.rest, ex.multitrack);
        return Some(AudioHeader {
            tag,
            legacy_flags: None,
            packet_type: Some(ex.packet_type),
            body,
        });
    }
    let codec = audio_codec_from_format(format);
    let mut is_sequence_header = false;
    if format == SOUND_FORMAT_AAC {
        // AACPacketType: 0 = AudioSpecificConfig, 1 = raw frames.
        is_sequence_header = cur.u8()? == 0;
    }
    let tag = AudioTag { codec, is_sequence_header, enhanced: false };
    Some(AudioHeader { tag, legacy_flags: Some(b0), packet_type: None, body: cur.rest() })
}

/// Classifies an audio message payload (an FLV `AUDIODATA` body).
///
/// `None` only for an empty payload or one shorter than the header its first byte announces
/// (AAC's packet-type byte; the ModEx, Multitrack or FourCC bytes of an enhanced header).
pub fn inspect_audio(payload: &[u8]) -> Option<AudioTag> {
    parse_audio_header(payload).map(|h| h.tag)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{acfg, audio, data, video};
    use super::super::{
        parse_audio_config, parse_video_config, AudioConfig, MediaError, VideoConfig,
    };
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn h264_golden_frames_are_classified() {
        let key = inspect_video(data!("h264_high_720p_aac_video_key")).unwrap();
        assert_eq!(
            key,
            VideoTag {
                codec: VideoCodec::H264,
                frame_type: FrameType::Key,
                packet: VideoPacketKind::CodedFrames,
                enhanced: false
            }
        );
        assert!(key.is_keyframe() && !key.is_sequence_header());
        let inter = inspect_video(data!("h264_high_720p_aac_video_inter")).unwrap();
        assert_eq!(inter.frame_type, FrameType::Inter);
        assert!(!inter.is_keyframe() && !inter.is_sequence_header());
        assert_eq!(
            parse_video_config(data!("h264_high_720p_aac_video_key")),
            Err(MediaError::NotSequenceHeader)
        );
        // FFmpeg's trailing end-of-sequence tag is keyframe-flagged but not a keyframe.
        let eos = inspect_video(&[0x17, 0x02, 0, 0, 0]).unwrap();
        assert_eq!(eos.packet, VideoPacketKind::EndOfSequence);
        assert!(!eos.is_keyframe());
    }

    #[test]
    fn enhanced_video_header_variants() {
        let hvcc = &data!("hevc_main_480p_ex_seq")[5..];
        // CodedFramesX keyframe, CodedFrames inter frame, Metadata, SequenceEnd.
        let t = inspect_video(b"\x93hvc1\x00\x00").unwrap();
        assert!(t.is_keyframe() && t.packet == VideoPacketKind::CodedFrames);
        let t = inspect_video(b"\xa1av01\x12\x00").unwrap();
        assert_eq!((t.codec, t.frame_type), (VideoCodec::Av1, FrameType::Inter));
        let t = inspect_video(b"\x94hvc1\x02").unwrap();
        assert_eq!(t.packet, VideoPacketKind::Metadata);
        assert!(!t.is_keyframe());
        let t = inspect_video(b"\x92vp09").unwrap();
        assert_eq!(t.packet, VideoPacketKind::EndOfSequence);
        // Unknown FourCC: classified, and its sequence header answers with the codec only.
        let t = inspect_video(b"\x90vvc1\x01\x02").unwrap();
        assert_eq!(t.codec, VideoCodec::FourCc(*b"vvc1"));
        assert_eq!(video(b"\x90vvc1\x01\x02"), VideoConfig::bare(VideoCodec::FourCc(*b"vvc1")));
        // Command frame: a command byte, no FourCC, not media.
        let t = inspect_video(&[0xd1, 0x00]).unwrap();
        assert_eq!(t.frame_type, FrameType::Command);
        assert!(!t.is_keyframe() && !t.is_sequence_header());
        assert_eq!(inspect_video(&[0xd1]), None);
        // ModEx (a 3-byte nanosecond offset), then SequenceStart.
        let mut p = vec![0x97, 2, 0x01, 0x02, 0x03, 0x00];
        p.extend_from_slice(b"hvc1");
        p.extend_from_slice(hvcc);
        assert!(inspect_video(&p).unwrap().is_sequence_header());
        assert_eq!(video(&p).width, Some(854));
        // Multitrack, OneTrack: track id then the record.
        let mut p = vec![0x96, 0x00];
        p.extend_from_slice(b"hvc1");
        p.push(0);
        p.extend_from_slice(hvcc);
        assert_eq!(video(&p).height, Some(480));
        // Multitrack, ManyTracksManyCodecs: FourCC, track id, UI24 size, record; then more.
        let mut p = vec![0x96, 0x20];
        p.extend_from_slice(b"hvc1");
        p.push(0);
        p.extend_from_slice(&(hvcc.len() as u32).to_be_bytes()[1..]);
        p.extend_from_slice(hvcc);
        p.extend_from_slice(b"av01\x01\x00\x00\x02\x81\x04");
        let t = inspect_video(&p).unwrap();
        assert_eq!((t.codec, t.is_sequence_header()), (VideoCodec::Hevc, true));
        assert_eq!(video(&p).width, Some(854));
        // Truncated enhanced headers.
        for short in [&[0x90][..], b"\x90hvc", b"\x97\x05\x01", b"\x96", b"\x96\x00hv"] {
            assert_eq!(inspect_video(short), None, "{short:?}");
        }
        assert_eq!(inspect_video(&[]), None);
        assert_eq!(inspect_video(&[0x17]), None);
        // Legacy codecs without packet types are coded frames.
        let t = inspect_video(&[0x12, 0, 0]).unwrap();
        assert_eq!(t.codec, VideoCodec::SorensonH263);
        assert!(t.is_keyframe());
        assert_eq!(parse_video_config(&[0x12, 0, 0]), Err(MediaError::NotSequenceHeader));
        assert_eq!(inspect_video(&[0x2f]).unwrap().codec, VideoCodec::Other(15));
    }

    #[test]
    fn enhanced_audio_header_variants() {
        let t = inspect_audio(b"\x91Opus\xfc").unwrap();
        assert!(t.enhanced && !t.is_sequence_header && t.codec == AudioCodec::Opus);
        assert_eq!(parse_audio_config(b"\x91Opus\xfc"), Err(MediaError::NotSequenceHeader));
        // Multitrack OneTrack Opus sequence start.
        let dops = &data!("opus_48k_stereo_dops_seq")[5..];
        let mut p = vec![0x95, 0x00];
        p.extend_from_slice(b"Opus");
        p.push(0);
        p.extend_from_slice(dops);
        assert!(inspect_audio(&p).unwrap().is_sequence_header);
        assert_eq!(audio(&p).channels, Some(2));
        // MultichannelConfig is not the sequence header.
        assert!(!inspect_audio(b"\x94Opus\x01\x02\x00\x00\x00\x03").unwrap().is_sequence_header);
        // Unknown FourCC.
        let t = inspect_audio(b"\x90mha1").unwrap();
        assert_eq!(t.codec, AudioCodec::FourCc(*b"mha1"));
        assert_eq!(t.codec.to_string(), "unknown audio FourCC 'mha1'");
        assert_eq!(AudioCodec::FourCc([0, 1, 2, 3]).to_string(), "unknown audio FourCC 0x00010203");
        // .mp3 coded frame with a real header.
        let mut p = b"\x91.mp3".to_vec();
        p.extend_from_slice(&data!("mp3_48k_audio_frame")[1..]);
        assert_eq!(audio(&p), acfg(AudioCodec::Mp3, None, 48000, 2));
        for short in [&[0x90][..], b"\x90Opu", b"\x97\xff", b"\x95"] {
            assert_eq!(inspect_audio(short), None);
        }
        assert_eq!(inspect_audio(&[]), None);
        assert_eq!(inspect_audio(&[0xaf]), None);
        assert_eq!(inspect_audio(&[0xd0]).unwrap().codec, AudioCodec::Other(13));
        assert_eq!(
            audio(&[0xf0]),
            AudioConfig {
                codec: AudioCodec::DeviceSpecific,
                profile: None,
                sample_rate: None,
                channels: None
            }
        );
    }

    proptest! {
        #[test]
        fn inspect_is_none_only_for_short_payloads(p in proptest::collection::vec(any::<u8>(), 0..64)) {
            // A legacy header that needs no second byte always classifies.
            if let Some(&b) = p.first() {
                if b & 0x80 == 0 && !matches!(b & 0x0f, 7 | 12) {
                    prop_assert!(inspect_video(&p).is_some());
                }
                if b >> 4 != 9 && b >> 4 != 10 {
                    prop_assert!(inspect_audio(&p).is_some());
                }
            } else {
                prop_assert!(inspect_video(&p).is_none() && inspect_audio(&p).is_none());
            }
        }
    }
}
