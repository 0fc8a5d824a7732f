//! FLV audio/video tag inspection: which codec a stream carries, which tags are sequence headers,
//! which video tags are keyframes, and what the sequence headers say (profile, level, size, rate).
//!
//! The body of an RTMP audio (type 8) or video (type 9) message is exactly an FLV `AUDIODATA` /
//! `VIDEODATA` tag body, so everything here works on a message payload as received. The relay
//! needs three answers from it and nothing more:
//! - **late join:** a player that joins mid-stream must first get the audio and video sequence
//!   headers and then the current GOP starting at a keyframe ([`VideoTag::is_sequence_header`],
//!   [`VideoTag::is_keyframe`], [`AudioTag::is_sequence_header`]);
//! - **slow subscribers** skip to the next keyframe, so keyframes must be recognised for every
//!   codec, legacy or Enhanced RTMP;
//! - **codec detection** for logs and the stats API ([`parse_video_config`],
//!   [`parse_audio_config`]), which must never refuse a stream: the relay is codec-transparent,
//!   so an unknown codec is reported (`Other`, `FourCc`), never an error on the media path.
//!
//! # Two header layouts
//! *Legacy FLV* (Adobe FLV spec 10.1, annex E.4.2/E.4.3): video byte 0 is `FrameType:4 |
//! CodecID:4`, and AVC (codec 7) follows it with `AVCPacketType:8` and `CompositionTime:SI24`;
//! audio byte 0 is `SoundFormat:4 | SoundRate:2 | SoundSize:1 | SoundType:1`, and AAC
//! (format 10) follows it with `AACPacketType:8`.
//!
//! *Enhanced RTMP* (veovera, enhanced-rtmp-v1 and v2): in video byte 0 bit 7 is `IsExHeader`,
//! bits 4-6 the frame type and the low nibble a `VideoPacketType`; audio uses `SoundFormat` 9
//! (`ExHeader`) with the low nibble an `AudioPacketType`. A FourCC naming the codec follows,
//! after any `ModEx` blocks and the `Multitrack` byte (v2):
//!
//! ```text
//! video:  [1 fff pppp] {ModEx: size(1|1+2) data type<<4|ptype}* [Multitrack: mtype<<4|ptype]
//!         FourCC "avc1" | "hvc1" | "av01" | "vp09" | "vp08"
//!         (a command frame, fff = 5 and pppp != Metadata, carries a command byte and no FourCC)
//! audio:  [1001 pppp] {ModEx}* [Multitrack]  FourCC "mp4a" | "Opus" | "fLaC" | "ac-3" | "ec-3" | ".mp3"
//! ```
//!
//! # Field evidence
//! - Legacy codec id **12 is HEVC** with exactly the AVC layout (packet type, composition time,
//!   `HEVCDecoderConfigurationRecord`). It is not in any Adobe spec; it was introduced by Chinese
//!   CDNs (the "flv_hevc" patches, SRS, nginx-rtmp forks) years before Enhanced RTMP, and some OBS
//!   and FFmpeg forks still publish it. We accept it so those streams get HEVC detection and
//!   keyframes; nothing else in the legacy range is treated specially.
//! - FFmpeg writes **Speex** with the 11 kHz rate flag although the FLV spec says Speex is always
//!   16 kHz mono; and **48 kHz MP3** with the 44 kHz flag (flvenc `get_audio_flags`), so the MP3
//!   rate comes from the MPEG frame header when there is one.
//! - The **AAC** flags byte always says 44 kHz stereo (FLV spec: "SoundRate: For AAC: always 3")
//!   whatever the stream is: only the AudioSpecificConfig is believed.
//! - FFmpeg ends an AVC stream with a keyframe-flagged end-of-sequence tag (`17 02 00 00 00`),
//!   which is not a place to start decoding: a keyframe must also carry coded frames.
//! - x265 stores a ~2 KB SEI array in `hvcC`; SPS search walks all arrays and ignores the rest.
//!
//! # Robustness
//! Every input here comes from a peer. No function panics on any byte string (property-tested),
//! every read is bounds-checked, and every loop whose count comes from the data either consumes
//! input on each turn or is capped by the syntax it parses (H.264 `num_ref_frames_in_pic_order
//! _cnt_cycle` <= 255, HEVC sub-layers <= 7, AV1 operating points <= 32), so work is linear in
//! the payload length. [`inspect_video`] and [`inspect_audio`] look at a few header bytes and do
//! not allocate; the `parse_*_config` functions allocate a little (strings, an unescaped SPS) and
//! are meant for sequence headers, which arrive once per stream.
//!
//! # Layout
//! - this file: the public types (codecs, tag classifications, configurations, [`MediaError`])
//!   and the robustness tests that run every entry point over the same hostile bytes;
//! - `tag.rs`: the legacy and Enhanced RTMP tag headers. It is the per-frame path
//!   ([`inspect_video`], [`inspect_audio`]), and the configuration parsers start from the body
//!   it finds behind the header;
//! - `video.rs` and `audio.rs`: the configuration records, one parser per codec (H.264, HEVC,
//!   AV1, VP8/VP9; AAC, Opus, FLAC, AC-3/E-AC-3, MP3 and the legacy formats), run once per
//!   sequence header;
//! - `reader.rs`: the two bounds-checked readers all of them stand on, one for byte-aligned
//!   records and one for bit-packed syntax;
//! - `test_support.rs` (tests only): the golden captures and helpers the tests share.

use std::fmt;

mod audio;
mod reader;
mod tag;
#[cfg(test)]
mod test_support;
mod video;

pub use audio::parse_audio_config;
pub use tag::{inspect_audio, inspect_video};
pub use video::{parse_keyframe_dimensions, parse_video_config};

// ---------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------

/// A video codec, from the legacy codec id or the Enhanced RTMP FourCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoCodec {
    /// Legacy codec id 7, or FourCC `avc1`.
    H264,
    /// FourCC `hvc1`, or the non-standard legacy codec id 12 (see the module doc).
    Hevc,
    /// FourCC `av01`.
    Av1,
    /// FourCC `vp09`.
    Vp9,
    /// FourCC `vp08`.
    Vp8,
    /// Legacy codec id 2.
    SorensonH263,
    /// Legacy codec id 3.
    ScreenVideo,
    /// Legacy codec id 4.
    On2Vp6,
    /// Legacy codec id 5.
    On2Vp6Alpha,
    /// Legacy codec id 6.
    ScreenVideo2,
    /// A legacy codec id with no known meaning (0, 1, 8-11, 13-15).
    Other(u8),
    /// An Enhanced RTMP FourCC we do not know. An enhanced command frame names no codec at all
    /// and reports `FourCc([0; 4])`.
    FourCc([u8; 4]),
}

impl fmt::Display for VideoCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VideoCodec::H264 => f.write_str("H.264"),
            VideoCodec::Hevc => f.write_str("HEVC"),
            VideoCodec::Av1 => f.write_str("AV1"),
            VideoCodec::Vp9 => f.write_str("VP9"),
            VideoCodec::Vp8 => f.write_str("VP8"),
            VideoCodec::SorensonH263 => f.write_str("Sorenson H.263"),
            VideoCodec::ScreenVideo => f.write_str("Screen Video"),
            VideoCodec::On2Vp6 => f.write_str("On2 VP6"),
            VideoCodec::On2Vp6Alpha => f.write_str("On2 VP6 with alpha"),
            VideoCodec::ScreenVideo2 => f.write_str("Screen Video 2"),
            VideoCodec::Other(id) => write!(f, "unknown video codec id {id}"),
            VideoCodec::FourCc(cc) => write!(f, "unknown video FourCC {}", FourCcText(cc)),
        }
    }
}

/// The video frame type: legacy `FrameType` (4 bits, only 0-7 reachable since bit 7 would be
/// `IsExHeader`) or Enhanced RTMP `VideoFrameType` (3 bits); both use the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    /// 1: a seekable frame (IDR / key frame).
    Key,
    /// 2: a non-seekable frame.
    Inter,
    /// 3: disposable inter frame (H.263 only).
    DisposableInter,
    /// 4: generated keyframe, reserved for server use (seeking in recordings).
    Generated,
    /// 5: video info / command frame: not media. Carries a command byte (0 start of
    /// client-side seek, 1 end of seek) instead of video data.
    Command,
    /// 0, 6, 7: reserved.
    Reserved(u8),
}

impl FrameType {
    fn from_bits(v: u8) -> Self {
        match v {
            1 => FrameType::Key,
            2 => FrameType::Inter,
            3 => FrameType::DisposableInter,
            4 => FrameType::Generated,
            5 => FrameType::Command,
            other => FrameType::Reserved(other),
        }
    }
}

/// What a video tag carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VideoPacketKind {
    /// Decoder configuration: legacy `AVCPacketType` 0, enhanced `SequenceStart` (0) or
    /// `MPEG2TSSequenceStart` (5).
    SequenceHeader,
    /// Coded video: legacy `AVCPacketType` 1, enhanced `CodedFrames` (1) and `CodedFramesX` (3,
    /// the same with an implied zero composition time), and every tag of a legacy codec that has
    /// no packet type (H.263, VP6, Screen Video).
    CodedFrames,
    /// Legacy `AVCPacketType` 2, enhanced `SequenceEnd` (2).
    EndOfSequence,
    /// Enhanced `Metadata` (4): an AMF-encoded object (e.g. HDR `colorInfo`), no video.
    Metadata,
    /// Any other packet type value (legacy `AVCPacketType` > 2, reserved enhanced values).
    Other(u8),
}

/// The classification of one video tag: enough to route it (sequence header cache, GOP cache,
/// keyframe skipping) without decoding it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VideoTag {
    pub codec: VideoCodec,
    pub frame_type: FrameType,
    pub packet: VideoPacketKind,
    /// True for the Enhanced RTMP header (`IsExHeader` set).
    pub enhanced: bool,
}

impl VideoTag {
    /// True when this tag configures the decoder and must be cached for late joiners.
    pub fn is_sequence_header(&self) -> bool {
        self.packet == VideoPacketKind::SequenceHeader && self.frame_type != FrameType::Command
    }

    /// A keyframe carrying coded media: where a late joiner can start decoding.
    ///
    /// Only `FrameType::Key` counts, as in FFmpeg's demuxer (which is what most players are):
    /// a server-generated keyframe (4) belongs to recordings, not to live publishers. A sequence
    /// header or end-of-sequence tag flagged as a keyframe (encoders do flag them so) is not one.
    pub fn is_keyframe(&self) -> bool {
        self.frame_type == FrameType::Key && self.packet == VideoPacketKind::CodedFrames
    }
}

/// An audio codec, from the legacy `SoundFormat` or the Enhanced RTMP FourCC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)] // `Mp3_8k` is the spec's name (SoundFormat 14, "MP3 8 kHz").
pub enum AudioCodec {
    /// SoundFormat 10, or FourCC `mp4a`.
    Aac,
    /// SoundFormat 2, or FourCC `.mp3`.
    Mp3,
    /// FourCC `Opus`.
    Opus,
    /// FourCC `fLaC`.
    Flac,
    /// FourCC `ac-3`.
    Ac3,
    /// FourCC `ec-3`.
    Eac3,
    /// SoundFormat 0: linear PCM, platform endian.
    LinearPcm,
    /// SoundFormat 3: linear PCM, little endian.
    LinearPcmLe,
    /// SoundFormats 4 (16 kHz mono), 5 (8 kHz mono) and 6.
    Nellymoser,
    /// SoundFormat 7.
    G711ALaw,
    /// SoundFormat 8.
    G711MuLaw,
    /// SoundFormat 11.
    Speex,
    /// SoundFormat 14: MP3 at 8 kHz.
    Mp3_8k,
    /// SoundFormat 15: device-specific sound.
    DeviceSpecific,
    /// SoundFormat 1: ADPCM.
    Adpcm,
    /// A reserved SoundFormat (12, 13).
    Other(u8),
    /// An Enhanced RTMP FourCC we do not know.
    FourCc([u8; 4]),
}

impl fmt::Display for AudioCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AudioCodec::Aac => f.write_str("AAC"),
            AudioCodec::Mp3 => f.write_str("MP3"),
            AudioCodec::Opus => f.write_str("Opus"),
            AudioCodec::Flac => f.write_str("FLAC"),
            AudioCodec::Ac3 => f.write_str("AC-3"),
            AudioCodec::Eac3 => f.write_str("E-AC-3"),
            AudioCodec::LinearPcm => f.write_str("PCM"),
            AudioCodec::LinearPcmLe => f.write_str("PCM LE"),
            AudioCodec::Nellymoser => f.write_str("Nellymoser"),
            AudioCodec::G711ALaw => f.write_str("G.711 A-law"),
            AudioCodec::G711MuLaw => f.write_str("G.711 mu-law"),
            AudioCodec::Speex => f.write_str("Speex"),
            AudioCodec::Mp3_8k => f.write_str("MP3 8 kHz"),
            AudioCodec::DeviceSpecific => f.write_str("device-specific audio"),
            AudioCodec::Adpcm => f.write_str("ADPCM"),
            AudioCodec::Other(id) => write!(f, "unknown sound format {id}"),
            AudioCodec::FourCc(cc) => write!(f, "unknown audio FourCC {}", FourCcText(cc)),
        }
    }
}

/// The classification of one audio tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioTag {
    pub codec: AudioCodec,
    /// Legacy `AACPacketType` 0 or enhanced `SequenceStart`. An enhanced `MultichannelConfig`
    /// packet is not counted: a cache that keeps one audio header must keep the codec's.
    pub is_sequence_header: bool,
    /// True for the Enhanced RTMP header (`SoundFormat` 9).
    pub enhanced: bool,
}

/// What a video sequence header says. Fields the header does not carry, or that we do not
/// parse for that codec, are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VideoConfig {
    pub codec: VideoCodec,
    /// Profile name as the codec spec names it ("High", "Main 10", "Profile 0").
    pub profile: Option<String>,
    /// Level as the codec spec writes it ("4.0" for H.264, "3.1" for HEVC/AV1/VP9).
    pub level: Option<String>,
    /// Display width in pixels, after cropping (H.264/HEVC); the maximum frame width for AV1.
    pub width: Option<u32>,
    /// Display height in pixels, after cropping (H.264/HEVC); the maximum frame height for AV1.
    pub height: Option<u32>,
}

impl fmt::Display for VideoConfig {
    /// E.g. `H.264 High@4.0 1280x720`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.codec)?;
        match (&self.profile, &self.level) {
            (Some(p), Some(l)) => write!(f, " {p}@{l}")?,
            (Some(p), None) => write!(f, " {p}")?,
            (None, Some(l)) => write!(f, " level {l}")?,
            (None, None) => {}
        }
        if let (Some(w), Some(h)) = (self.width, self.height) {
            write!(f, " {w}x{h}")?;
        }
        Ok(())
    }
}

impl VideoConfig {
    /// A configuration that names only the codec.
    fn bare(codec: VideoCodec) -> Self {
        VideoConfig { codec, profile: None, level: None, width: None, height: None }
    }
}

/// What an audio sequence header (or, for codecs without one, an audio tag) says.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AudioConfig {
    pub codec: AudioCodec,
    /// Profile name ("LC", "HE-AAC", ...), where the codec has profiles.
    pub profile: Option<String>,
    /// Output sample rate in Hz (for HE-AAC the SBR rate, not the core rate).
    pub sample_rate: Option<u32>,
    /// Output channel count (for HE-AACv2 the PS stereo output, not the mono core).
    pub channels: Option<u8>,
}

impl fmt::Display for AudioConfig {
    /// E.g. `AAC LC 48000 Hz 2 ch`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.codec)?;
        if let Some(p) = &self.profile {
            write!(f, " {p}")?;
        }
        if let Some(r) = self.sample_rate {
            write!(f, " {r} Hz")?;
        }
        if let Some(c) = self.channels {
            write!(f, " {c} ch")?;
        }
        Ok(())
    }
}

/// Why a configuration could not be read. None of these is a reason to stop relaying: the
/// stream is codec-transparent, the error only means "no details to log".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaError {
    /// The payload ended inside a header or configuration record.
    Truncated,
    /// The tag is not a sequence header (and the codec needs one to be described).
    NotSequenceHeader,
    /// A field holds a value the spec forbids; the text names it.
    Malformed(&'static str),
}

impl fmt::Display for MediaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MediaError::Truncated => f.write_str("media header truncated"),
            MediaError::NotSequenceHeader => f.write_str("not a sequence header"),
            MediaError::Malformed(what) => write!(f, "malformed media header: {what}"),
        }
    }
}

impl std::error::Error for MediaError {}

/// Prints a FourCC as text when it is printable ASCII, as hex otherwise, so a log line never
/// carries control bytes from a peer.
struct FourCcText<'a>(&'a [u8; 4]);

impl fmt::Display for FourCcText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
            f.write_str("'")?;
            for &b in self.0 {
                write!(f, "{}", b as char)?;
            }
            f.write_str("'")
        } else {
            write!(f, "0x{:08x}", u32::from_be_bytes(*self.0))
        }
    }
}
#[cfg(test)]
mod tests {
    use super::test_support::data;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn errors_display() {
        assert_eq!(MediaError::Truncated.to_string(), "media header truncated");
        assert_eq!(MediaError::Malformed("x").to_string(), "malformed media header: x");
        let e: Box<dyn std::error::Error> = Box::new(MediaError::NotSequenceHeader);
        assert_eq!(e.to_string(), "not a sequence header");
    }

    fn all_golden() -> Vec<&'static [u8]> {
        vec![
            data!("h264_high_720p_aac_video_seq"),
            data!("h264_baseline_240p_mp3_video_seq"),
            data!("h264_main_1080p_aac_mono_video_seq"),
            data!("h264_422_480p_video_seq"),
            data!("h264_high10_1080i_video_seq"),
            data!("h264_444_720p_video_seq"),
            data!("hevc_main_480p_ex_seq"),
            data!("hevc_main_480p_legacy12_seq"),
            data!("hevc_main10_1080p_ex_seq"),
            data!("av1_svt_480p_ex_seq"),
            data!("av1_aom_720p_ex_seq"),
            data!("vp9_360p_ex_seq"),
            data!("vp9_360p_ex_key"),
            data!("vp8_240p_ex_key"),
            data!("h264_high_720p_aac_audio_seq"),
            data!("aac_48k_stereo_ex_seq"),
            data!("opus_48k_stereo_dops_seq"),
            data!("opus_48k_stereo_opushead_seq"),
            data!("flac_44k_mono_seq"),
            data!("ac3_48k_51_frame"),
            data!("eac3_48k_stereo_frame"),
            data!("mp3_48k_audio_frame"),
        ]
    }

    fn exercise(p: &[u8]) {
        let _ = inspect_video(p);
        let _ = inspect_audio(p);
        let _ = parse_video_config(p).map(|c| c.to_string());
        let _ = parse_audio_config(p).map(|c| c.to_string());
        let _ = parse_keyframe_dimensions(p);
    }

    #[test]
    fn every_prefix_of_golden_headers_is_safe() {
        for g in all_golden() {
            for n in 0..=g.len() {
                exercise(&g[..n]);
            }
        }
        // Truncating a sequence header's record is an error, not a wrong answer.
        let seq = data!("h264_high_720p_aac_video_seq");
        let sps_end = 5 + 8 + usize::from(u16::from_be_bytes([seq[11], seq[12]]));
        for n in 0..sps_end {
            assert!(parse_video_config(&seq[..n]).is_err(), "prefix {n}");
        }
    }

    /// Header prefixes behind which proptest puts arbitrary bytes, so the record parsers see
    /// random input and not just random first bytes.
    const PREFIXES: &[&[u8]] = &[
        &[0x17, 0x00, 0, 0, 0],
        &[0x17, 0x00, 0, 0, 0, 1, 100, 0, 40, 0xff, 0xe1],
        &[0x1c, 0x00, 0, 0, 0],
        b"\x90hvc1",
        b"\x90avc1",
        b"\x90av01",
        b"\x90av01\x81\x04\x0c\x00",
        b"\x90vp09",
        b"\x91vp09",
        b"\x91vp08",
        b"\x96\x20hvc1",
        b"\x97",
        b"\xaf\x00",
        b"\x90mp4a",
        b"\x90Opus",
        b"\x90OpusOpusHead",
        b"\x90fLaC",
        b"\x91ac-3\x0b\x77",
        b"\x91ec-3\x0b\x77",
        b"\x91.mp3\xff\xfb",
        b"\x2f\xff\xfb",
        b"\x95\x20Opus",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(p in proptest::collection::vec(any::<u8>(), 0..512)) {
            exercise(&p);
        }

        #[test]
        fn arbitrary_bytes_behind_valid_prefixes(
            i in 0..PREFIXES.len(),
            tail in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut p = PREFIXES[i].to_vec();
            p.extend_from_slice(&tail);
            exercise(&p);
        }

        #[test]
        fn mutated_golden_headers_never_panic(
            i in 0..all_golden().len(),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let mut p = all_golden()[i].to_vec();
            for (at, x) in flips {
                let n = p.len();
                p[at % n] ^= x;
            }
            exercise(&p);
        }
    }
}
