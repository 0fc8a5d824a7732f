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

use std::fmt;

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

// ---------------------------------------------------------------------------------------------
// Tag headers
// ---------------------------------------------------------------------------------------------

/// Legacy video codec ids (FLV spec E.4.3.1) and the field-evidence HEVC id.
const VIDEO_CODEC_AVC: u8 = 7;
const VIDEO_CODEC_HEVC_LEGACY: u8 = 12;

/// Enhanced RTMP `VideoPacketType` / `AudioPacketType` values.
const PT_SEQUENCE_START: u8 = 0;
const PT_CODED_FRAMES: u8 = 1;
const PT_SEQUENCE_END: u8 = 2;
const PT_CODED_FRAMES_X: u8 = 3;
const PT_METADATA: u8 = 4; // video; for audio 4 is MultichannelConfig
const PT_MPEG2TS_SEQUENCE_START: u8 = 5; // video only
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

/// A byte cursor whose every read is bounds-checked and answers `None` past the end.
#[derive(Debug, Clone)]
struct ByteCursor<'a> {
    data: &'a [u8],
}

impl<'a> ByteCursor<'a> {
    fn new(data: &'a [u8]) -> Self {
        ByteCursor { data }
    }
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.data.split_first()?;
        self.data = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<u32> {
        let b = self.take(3)?;
        Some(u32::from_be_bytes([0, b[0], b[1], b[2]]))
    }
    fn fourcc(&mut self) -> Option<[u8; 4]> {
        let b = self.take(4)?;
        Some([b[0], b[1], b[2], b[3]])
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.data.len() {
            return None;
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Some(head)
    }
    fn rest(&self) -> &'a [u8] {
        self.data
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
struct VideoHeader<'a> {
    tag: VideoTag,
    /// The packet type as on the wire (legacy AVCPacketType or enhanced VideoPacketType).
    raw_packet_type: u8,
    /// For a sequence header: the decoder configuration record (the first track's, in a
    /// multitrack message).
    body: &'a [u8],
}

fn parse_video_header(payload: &[u8]) -> Option<VideoHeader<'_>> {
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

struct AudioHeader<'a> {
    tag: AudioTag,
    /// The legacy flags byte (`None` for enhanced audio).
    legacy_flags: Option<u8>,
    /// Enhanced packet type (`None` for legacy audio).
    packet_type: Option<u8>,
    /// What follows the header: the configuration for a sequence header, else coded audio.
    body: &'a [u8],
}

fn parse_audio_header(payload: &[u8]) -> Option<AudioHeader<'_>> {
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

// ---------------------------------------------------------------------------------------------
// Video configuration
// ---------------------------------------------------------------------------------------------

/// Reads the codec configuration from a video sequence-header tag.
///
/// H.264 (`avcC` + SPS), HEVC (`hvcC` + SPS), AV1 (`av1C` + sequence header OBU) and VP8/VP9
/// (`vpcC`, no resolution: see [`parse_keyframe_dimensions`]) are parsed. A sequence header of
/// a codec we do not parse (an unknown FourCC, an MPEG-2 TS sequence start) is `Ok` with only
/// the codec set. Legacy codecs other than AVC/HEVC have no sequence header.
pub fn parse_video_config(payload: &[u8]) -> Result<VideoConfig, MediaError> {
    let header = parse_video_header(payload).ok_or(MediaError::Truncated)?;
    if !header.tag.is_sequence_header() {
        return Err(MediaError::NotSequenceHeader);
    }
    let codec = header.tag.codec;
    if header.tag.enhanced && header.raw_packet_type == PT_MPEG2TS_SEQUENCE_START {
        return Ok(VideoConfig::bare(codec));
    }
    let body = header.body;
    match codec {
        VideoCodec::H264 => parse_avcc(body),
        VideoCodec::Hevc => parse_hvcc(body),
        VideoCodec::Av1 => parse_av1c(body),
        VideoCodec::Vp9 | VideoCodec::Vp8 => parse_vpcc(codec, body),
        other => Ok(VideoConfig::bare(other)),
    }
}

impl VideoConfig {
    fn bare(codec: VideoCodec) -> Self {
        VideoConfig { codec, profile: None, level: None, width: None, height: None }
    }
}

/// A big-endian bit cursor for SPS/OBU syntax. Reads past the end are `Truncated`.
#[derive(Debug)]
struct Bits<'a> {
    data: &'a [u8],
    /// Position in bits from the start of `data`.
    pos: usize,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8]) -> Self {
        Bits { data, pos: 0 }
    }

    fn bits_left(&self) -> usize {
        (self.data.len() * 8).saturating_sub(self.pos)
    }

    fn bit(&mut self) -> Result<bool, MediaError> {
        let byte = *self.data.get(self.pos / 8).ok_or(MediaError::Truncated)?;
        let bit = (byte >> (7 - (self.pos % 8))) & 1;
        self.pos += 1;
        Ok(bit == 1)
    }

    fn flag(&mut self) -> Result<bool, MediaError> {
        self.bit()
    }

    /// Reads `n <= 32` bits.
    fn bits(&mut self, n: u32) -> Result<u32, MediaError> {
        debug_assert!(n <= 32);
        if self.bits_left() < n as usize {
            return Err(MediaError::Truncated);
        }
        let mut v: u64 = 0;
        for _ in 0..n {
            v = (v << 1) | u64::from(self.bit()?);
        }
        // n <= 32, so v fits; the fallback is unreachable but keeps this panic-free.
        Ok(u32::try_from(v).unwrap_or(u32::MAX))
    }

    fn skip(&mut self, n: usize) -> Result<(), MediaError> {
        if self.bits_left() < n {
            return Err(MediaError::Truncated);
        }
        self.pos += n;
        Ok(())
    }

    /// Unsigned Exp-Golomb `ue(v)` (H.264 9.1 / HEVC 9.2). At most 31 leading zeros, so the
    /// value fits in 32 bits; a longer prefix is not valid in any field we read.
    fn ue(&mut self) -> Result<u32, MediaError> {
        let mut zeros = 0u32;
        while !self.bit()? {
            zeros += 1;
            if zeros > 31 {
                return Err(MediaError::Malformed("exp-Golomb code longer than 32 bits"));
            }
        }
        let suffix = self.bits(zeros)?;
        // (2^zeros - 1) + suffix <= 2^32 - 2 for zeros <= 31.
        Ok(((1u64 << zeros) - 1 + u64::from(suffix)).try_into().unwrap_or(u32::MAX))
    }

    /// Signed Exp-Golomb `se(v)`.
    fn se(&mut self) -> Result<i64, MediaError> {
        let k = i64::from(self.ue()?);
        Ok(if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) })
    }

    /// AV1 `uvlc()` (AV1 spec 4.10.3): like ue(v) but 32+ leading zeros mean 2^32 - 1.
    fn uvlc(&mut self) -> Result<u32, MediaError> {
        let mut zeros = 0u32;
        while !self.bit()? {
            zeros += 1;
            if zeros >= 32 {
                return Ok(u32::MAX);
            }
        }
        let suffix = self.bits(zeros)?;
        Ok(((1u64 << zeros) - 1 + u64::from(suffix)).try_into().unwrap_or(u32::MAX))
    }
}

/// Removes emulation-prevention bytes (`00 00 03` -> `00 00`) from a NAL unit, giving the
/// RBSP the syntax tables describe (H.264 7.4.1, HEVC 7.4.2).
fn nal_to_rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0usize;
    for &b in nal {
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Applies a conformance/cropping window: `full - unit * (a + b)`, failing if the window is
/// larger than the picture or the result does not fit 32 bits.
fn cropped(full: u64, unit: u64, a: u32, b: u32) -> Result<u32, MediaError> {
    let crop = unit * (u64::from(a) + u64::from(b));
    let size = full
        .checked_sub(crop)
        .filter(|s| *s > 0)
        .ok_or(MediaError::Malformed("cropping window larger than the picture"))?;
    u32::try_from(size).map_err(|_| MediaError::Malformed("picture size overflows 32 bits"))
}

// ---- H.264 ----------------------------------------------------------------------------------

/// `AVCDecoderConfigurationRecord` (ISO/IEC 14496-15 5.3.3.1): version, profile, compatibility,
/// level, lengthSizeMinusOne, then `numOfSequenceParameterSets` (low 5 bits) SPS entries, each
/// `UI16 length + NAL`. The first SPS gives the picture size; the profile and level are read
/// from it too (they are copies in the record, and the SPS is what decoders use).
fn parse_avcc(body: &[u8]) -> Result<VideoConfig, MediaError> {
    let mut cur = ByteCursor::new(body);
    let version = cur.u8().ok_or(MediaError::Truncated)?;
    if version != 1 {
        return Err(MediaError::Malformed("avcC configurationVersion is not 1"));
    }
    let profile_idc = cur.u8().ok_or(MediaError::Truncated)?;
    let constraints = cur.u8().ok_or(MediaError::Truncated)?;
    let level_idc = cur.u8().ok_or(MediaError::Truncated)?;
    let _length_size = cur.u8().ok_or(MediaError::Truncated)?;
    let sps_count = cur.u8().ok_or(MediaError::Truncated)? & 0x1f;
    let mut config = VideoConfig {
        codec: VideoCodec::H264,
        profile: Some(h264_profile_name(profile_idc, constraints)),
        level: Some(h264_level_name(profile_idc, constraints, level_idc)),
        width: None,
        height: None,
    };
    if sps_count == 0 {
        return Ok(config);
    }
    let len = cur.u16().ok_or(MediaError::Truncated)?;
    let nal = cur.take(usize::from(len)).ok_or(MediaError::Truncated)?;
    let sps = parse_h264_sps(nal)?;
    config.profile = Some(h264_profile_name(sps.profile_idc, sps.constraints));
    config.level = Some(h264_level_name(sps.profile_idc, sps.constraints, sps.level_idc));
    config.width = Some(sps.width);
    config.height = Some(sps.height);
    Ok(config)
}

#[derive(Debug)]
struct H264Sps {
    profile_idc: u8,
    constraints: u8,
    level_idc: u8,
    width: u32,
    height: u32,
}

/// `seq_parameter_set_data()` (H.264 7.3.2.1.1) up to the frame cropping fields.
fn parse_h264_sps(nal: &[u8]) -> Result<H264Sps, MediaError> {
    let rbsp = nal_to_rbsp(nal);
    let mut r = Bits::new(&rbsp);
    let nal_header = r.bits(8)?;
    if nal_header & 0x1f != 7 {
        return Err(MediaError::Malformed("avcC SPS entry is not an SPS NAL unit"));
    }
    let profile_idc = r.bits(8)? as u8;
    let constraints = r.bits(8)? as u8;
    let level_idc = r.bits(8)? as u8;
    let _sps_id = r.ue()?;
    // 4:2:0 unless the profile can say otherwise (7.4.2.1.1: "When chroma_format_idc is not
    // present, it shall be inferred to be equal to 1").
    let mut chroma_format_idc = 1;
    let mut separate_colour_plane = false;
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        chroma_format_idc = r.ue()?;
        if chroma_format_idc > 3 {
            return Err(MediaError::Malformed("H.264 chroma_format_idc > 3"));
        }
        if chroma_format_idc == 3 {
            separate_colour_plane = r.flag()?;
        }
        let _bit_depth_luma_minus8 = r.ue()?;
        let _bit_depth_chroma_minus8 = r.ue()?;
        let _qpprime_y_zero_transform_bypass = r.flag()?;
        if r.flag()? {
            // seq_scaling_matrix_present_flag: 8 lists (12 for 4:4:4), six 4x4 then 8x8.
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.flag()? {
                    skip_h264_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    let _log2_max_frame_num_minus4 = r.ue()?;
    match r.ue()? {
        0 => {
            let _log2_max_pic_order_cnt_lsb_minus4 = r.ue()?;
        }
        1 => {
            let _delta_pic_order_always_zero = r.flag()?;
            let _offset_for_non_ref_pic = r.se()?;
            let _offset_for_top_to_bottom_field = r.se()?;
            let cycle = r.ue()?;
            // 7.4.2.1.1: "in the range of 0 to 255, inclusive". Capping it here keeps a hostile
            // count from driving the loop; each turn also consumes at least one bit.
            if cycle > 255 {
                return Err(MediaError::Malformed("H.264 num_ref_frames_in_pic_order_cnt_cycle"));
            }
            for _ in 0..cycle {
                let _offset_for_ref_frame = r.se()?;
            }
        }
        2 => {}
        _ => return Err(MediaError::Malformed("H.264 pic_order_cnt_type > 2")),
    }
    let _max_num_ref_frames = r.ue()?;
    let _gaps_in_frame_num_allowed = r.flag()?;
    let width_mbs = u64::from(r.ue()?) + 1;
    let height_map_units = u64::from(r.ue()?) + 1;
    let frame_mbs_only = r.flag()?;
    if !frame_mbs_only {
        let _mb_adaptive_frame_field = r.flag()?;
    }
    let _direct_8x8_inference = r.flag()?;
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        left = r.ue()?;
        right = r.ue()?;
        top = r.ue()?;
        bottom = r.ue()?;
    }
    // 7.4.2.1.1, equations 7-18 to 7-21: crop units follow ChromaArrayType (0 when the colour
    // planes are coded separately) and double vertically for field coding.
    let field_factor: u64 = if frame_mbs_only { 1 } else { 2 };
    let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
    let (crop_x, crop_y) = match chroma_array_type {
        0 => (1, field_factor),
        1 => (2, 2 * field_factor),
        2 => (2, field_factor),
        _ => (1, field_factor),
    };
    let width = cropped(width_mbs * 16, crop_x, left, right)?;
    let height = cropped(field_factor * height_map_units * 16, crop_y, top, bottom)?;
    Ok(H264Sps { profile_idc, constraints, level_idc, width, height })
}

/// `scaling_list()` (H.264 7.3.2.1.1.1): only the syntax, the values are not needed. Stops
/// reading deltas once `nextScale` is 0, as the syntax does.
fn skip_h264_scaling_list(r: &mut Bits<'_>, size: usize) -> Result<(), MediaError> {
    let mut last_scale: i64 = 8;
    let mut next_scale: i64 = 8;
    for _ in 0..size {
        if next_scale != 0 {
            let delta = r.se()?;
            next_scale = (last_scale + delta).rem_euclid(256);
        }
        if next_scale != 0 {
            last_scale = next_scale;
        }
    }
    Ok(())
}

/// Profile names from H.264 annex A (and G/H for the scalable and multiview ids).
fn h264_profile_name(profile_idc: u8, constraints: u8) -> String {
    let set1 = constraints & 0x40 != 0;
    let set3 = constraints & 0x10 != 0;
    let name = match profile_idc {
        66 if set1 => "Constrained Baseline",
        66 => "Baseline",
        77 => "Main",
        88 => "Extended",
        100 => "High",
        110 if set3 => "High 10 Intra",
        110 => "High 10",
        122 if set3 => "High 4:2:2 Intra",
        122 => "High 4:2:2",
        244 if set3 => "High 4:4:4 Intra",
        244 => "High 4:4:4 Predictive",
        44 => "CAVLC 4:4:4 Intra",
        83 => "Scalable Baseline",
        86 => "Scalable High",
        118 => "Multiview High",
        128 => "Stereo High",
        134 => "MFC High",
        135 => "MFC Depth High",
        138 => "Multiview Depth High",
        139 => "Enhanced Multiview Depth High",
        other => return format!("profile_idc {other}"),
    };
    name.to_owned()
}

/// H.264 levels are `level_idc / 10`, written with one decimal ("3.1", "4.0"). Level 1b is
/// `level_idc` 9, or 11 with constraint_set3 in the Baseline/Main/Extended profiles (A.3.1).
fn h264_level_name(profile_idc: u8, constraints: u8, level_idc: u8) -> String {
    let set3 = constraints & 0x10 != 0;
    if level_idc == 9 || (level_idc == 11 && set3 && matches!(profile_idc, 66 | 77 | 88)) {
        return "1b".to_owned();
    }
    format!("{}.{}", level_idc / 10, level_idc % 10)
}

// ---- HEVC -----------------------------------------------------------------------------------

/// `HEVCDecoderConfigurationRecord` (ISO/IEC 14496-15 8.3.3.1): a 22-byte fixed part (profile,
/// tier, level at bytes 1 and 12), `numOfArrays`, then arrays of `type:6` + `numNalus:16` +
/// `UI16 length + NAL`. Profile, tier and level come from the record; the size from the first
/// SPS (NAL type 33) of the base layer.
fn parse_hvcc(body: &[u8]) -> Result<VideoConfig, MediaError> {
    let mut cur = ByteCursor::new(body);
    let fixed = cur.take(22).ok_or(MediaError::Truncated)?;
    let profile_byte = fixed[1];
    let compat = u32::from_be_bytes([fixed[2], fixed[3], fixed[4], fixed[5]]);
    let level_idc = fixed[12];
    let mut config = VideoConfig {
        codec: VideoCodec::Hevc,
        profile: Some(hevc_profile_name(profile_byte & 0x1f, compat)),
        level: Some(hevc_level_name(level_idc, profile_byte & 0x20 != 0)),
        width: None,
        height: None,
    };
    let arrays = cur.u8().ok_or(MediaError::Truncated)?;
    // Each array and each NAL entry consumes bytes, so these loops end with the input.
    for _ in 0..arrays {
        let nal_type = cur.u8().ok_or(MediaError::Truncated)? & 0x3f;
        let count = cur.u16().ok_or(MediaError::Truncated)?;
        for _ in 0..count {
            let len = cur.u16().ok_or(MediaError::Truncated)?;
            let nal = cur.take(usize::from(len)).ok_or(MediaError::Truncated)?;
            // Base layer only: an MV-HEVC/SHVC SPS (nuh_layer_id > 0) has a different syntax.
            let layer_id = nal
                .get(..2)
                .map(|h| ((u16::from(h[0]) & 1) << 5) | (u16::from(h[1]) >> 3))
                .unwrap_or(0);
            if nal_type == 33 && config.width.is_none() && layer_id == 0 {
                let (w, h) = parse_hevc_sps(nal)?;
                config.width = Some(w);
                config.height = Some(h);
            }
        }
    }
    Ok(config)
}

/// `seq_parameter_set_rbsp()` (H.265 7.3.2.2) up to the conformance window.
fn parse_hevc_sps(nal: &[u8]) -> Result<(u32, u32), MediaError> {
    let rbsp = nal_to_rbsp(nal);
    let mut r = Bits::new(&rbsp);
    let nal_header = r.bits(16)?;
    if (nal_header >> 9) & 0x3f != 33 {
        return Err(MediaError::Malformed("hvcC SPS entry is not an SPS NAL unit"));
    }
    let _vps_id = r.bits(4)?;
    let max_sub_layers_minus1 = r.bits(3)?; // 3 bits: at most 7 sub-layers, bounded by syntax
    let _temporal_id_nesting = r.flag()?;
    skip_hevc_profile_tier_level(&mut r, max_sub_layers_minus1)?;
    let _sps_id = r.ue()?;
    let chroma_format_idc = r.ue()?;
    if chroma_format_idc > 3 {
        return Err(MediaError::Malformed("HEVC chroma_format_idc > 3"));
    }
    let separate_colour_plane = chroma_format_idc == 3 && r.flag()?;
    let width = r.ue()?;
    let height = r.ue()?;
    let (mut left, mut right, mut top, mut bottom) = (0, 0, 0, 0);
    if r.flag()? {
        left = r.ue()?;
        right = r.ue()?;
        top = r.ue()?;
        bottom = r.ue()?;
    }
    // Table 6-1: SubWidthC/SubHeightC by ChromaArrayType (0 with separate colour planes).
    let chroma_array_type = if separate_colour_plane { 0 } else { chroma_format_idc };
    let (sub_w, sub_h) = match chroma_array_type {
        1 => (2, 2),
        2 => (2, 1),
        _ => (1, 1),
    };
    Ok((
        cropped(u64::from(width), sub_w, left, right)?,
        cropped(u64::from(height), sub_h, top, bottom)?,
    ))
}

/// `profile_tier_level(1, maxNumSubLayersMinus1)` (H.265 7.3.3): 88 bits of general profile,
/// 8 of general level, then per sub-layer presence flags, alignment, and the present parts.
fn skip_hevc_profile_tier_level(
    r: &mut Bits<'_>,
    max_sub_layers_minus1: u32,
) -> Result<(), MediaError> {
    r.skip(88 + 8)?;
    let mut profile_present = [false; 8];
    let mut level_present = [false; 8];
    let n = max_sub_layers_minus1 as usize;
    for i in 0..n {
        profile_present[i] = r.flag()?;
        level_present[i] = r.flag()?;
    }
    if n > 0 {
        r.skip(2 * (8 - n))?; // reserved_zero_2bits for i in maxNumSubLayersMinus1..8
    }
    for i in 0..n {
        if profile_present[i] {
            r.skip(88)?;
        }
        if level_present[i] {
            r.skip(8)?;
        }
    }
    Ok(())
}

/// Profile names from H.265 annex A. `general_profile_idc` 0 with a compatibility flag set is
/// named after the lowest flagged profile, as decoders do.
fn hevc_profile_name(profile_idc: u8, compat: u32) -> String {
    let idc = if profile_idc == 0 {
        (1..32u8).find(|j| compat & (1u32 << (31 - u32::from(*j))) != 0).unwrap_or(0)
    } else {
        profile_idc
    };
    let name = match idc {
        1 => "Main",
        2 => "Main 10",
        3 => "Main Still Picture",
        4 => "RExt",
        5 => "High Throughput",
        6 => "Multiview Main",
        7 => "Scalable Main",
        8 => "3D Main",
        9 => "Screen Extended",
        10 => "Scalable RExt",
        11 => "High Throughput Screen Extended",
        other => return format!("profile_idc {other}"),
    };
    name.to_owned()
}

/// HEVC `general_level_idc` is 30 times the level ("93" is 3.1, "120" is 4); the tier is named
/// only when it is High.
fn hevc_level_name(level_idc: u8, high_tier: bool) -> String {
    let major = level_idc / 30;
    let rem = level_idc % 30;
    let mut s = if rem == 0 {
        major.to_string()
    } else if rem % 3 == 0 {
        format!("{major}.{}", rem / 3)
    } else {
        format!("idc {level_idc}")
    };
    if high_tier {
        s.push_str(" High tier");
    }
    s
}

// ---- AV1 ------------------------------------------------------------------------------------

/// `AV1CodecConfigurationRecord` (AV1 Codec ISO Media File Format Binding 2.3.3): marker and
/// version, `seq_profile:3 seq_level_idx_0:5`, `seq_tier_0:1` and colour fields, the initial
/// presentation delay, then `configOBUs`, where a sequence header OBU gives the frame size.
fn parse_av1c(body: &[u8]) -> Result<VideoConfig, MediaError> {
    let mut cur = ByteCursor::new(body);
    let marker_version = cur.u8().ok_or(MediaError::Truncated)?;
    if marker_version & 0x80 == 0 {
        return Err(MediaError::Malformed("av1C marker bit is not set"));
    }
    let b1 = cur.u8().ok_or(MediaError::Truncated)?;
    let b2 = cur.u8().ok_or(MediaError::Truncated)?;
    let _b3 = cur.u8().ok_or(MediaError::Truncated)?;
    let mut config = VideoConfig {
        codec: VideoCodec::Av1,
        profile: Some(av1_profile_name(b1 >> 5)),
        level: Some(av1_level_name(b1 & 0x1f, b2 & 0x80 != 0)),
        width: None,
        height: None,
    };
    // OBUs (AV1 spec 5.3): header `forbidden:1 type:4 extension:1 has_size:1 reserved:1`, an
    // optional extension byte, an optional leb128 size (without one the OBU runs to the end).
    while !cur.rest().is_empty() {
        let header = cur.u8().ok_or(MediaError::Truncated)?;
        if header & 0x80 != 0 {
            return Err(MediaError::Malformed("AV1 OBU forbidden bit set"));
        }
        let obu_type = (header >> 3) & 0x0f;
        if header & 0x04 != 0 {
            cur.u8().ok_or(MediaError::Truncated)?;
        }
        let size = if header & 0x02 != 0 { leb128(&mut cur)? } else { cur.rest().len() as u64 };
        let size = usize::try_from(size).map_err(|_| MediaError::Truncated)?;
        let obu = cur.take(size).ok_or(MediaError::Truncated)?;
        if obu_type == 1 {
            let (w, h) = parse_av1_sequence_header(obu)?;
            config.width = Some(w);
            config.height = Some(h);
            break;
        }
    }
    Ok(config)
}

/// `leb128()` (AV1 spec 4.10.5): at most 8 bytes.
fn leb128(cur: &mut ByteCursor<'_>) -> Result<u64, MediaError> {
    let mut value = 0u64;
    for i in 0..8 {
        let b = cur.u8().ok_or(MediaError::Truncated)?;
        value |= u64::from(b & 0x7f) << (i * 7);
        if b & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(MediaError::Malformed("AV1 leb128 longer than 8 bytes"))
}

/// `sequence_header_obu()` (AV1 spec 5.5.1) up to `max_frame_height_minus_1`.
fn parse_av1_sequence_header(obu: &[u8]) -> Result<(u32, u32), MediaError> {
    let mut r = Bits::new(obu);
    let _seq_profile = r.bits(3)?;
    let _still_picture = r.flag()?;
    let reduced_still_picture_header = r.flag()?;
    if reduced_still_picture_header {
        let _seq_level_idx_0 = r.bits(5)?;
    } else {
        let timing_info_present = r.flag()?;
        let mut decoder_model_info_present = false;
        let mut buffer_delay_length = 0;
        if timing_info_present {
            // timing_info(): num_units_in_display_tick, time_scale, equal_picture_interval.
            r.skip(64)?;
            if r.flag()? {
                let _num_ticks_per_picture_minus_1 = r.uvlc()?;
            }
            decoder_model_info_present = r.flag()?;
            if decoder_model_info_present {
                // decoder_model_info(): buffer_delay_length_minus_1:5,
                // num_units_in_decoding_tick:32, two more 5-bit lengths.
                buffer_delay_length = r.bits(5)? as usize + 1;
                r.skip(32 + 5 + 5)?;
            }
        }
        let initial_display_delay_present = r.flag()?;
        // 5 bits: at most 32 operating points, bounded by the syntax itself.
        let operating_points = r.bits(5)? + 1;
        for _ in 0..operating_points {
            let _operating_point_idc = r.bits(12)?;
            let seq_level_idx = r.bits(5)?;
            if seq_level_idx > 7 {
                let _seq_tier = r.flag()?;
            }
            if decoder_model_info_present && r.flag()? {
                // operating_parameters_info(): two buffer delays and low_delay_mode_flag.
                r.skip(2 * buffer_delay_length + 1)?;
            }
            if initial_display_delay_present && r.flag()? {
                let _initial_display_delay_minus_1 = r.bits(4)?;
            }
        }
    }
    let width_bits = r.bits(4)? + 1;
    let height_bits = r.bits(4)? + 1;
    let width = u64::from(r.bits(width_bits)?) + 1;
    let height = u64::from(r.bits(height_bits)?) + 1;
    // At most 16 bits each, so both fit u32.
    Ok((width as u32, height as u32))
}

fn av1_profile_name(profile: u8) -> String {
    match profile {
        0 => "Main".to_owned(),
        1 => "High".to_owned(),
        2 => "Professional".to_owned(),
        other => format!("profile {other}"),
    }
}

/// AV1 annex A.3: `seq_level_idx` x is level `2 + (x >> 2)`.`(x & 3)`; 31 means no level
/// constraint. The tier bit only exists above level 3.3 (`seq_level_idx` > 7).
fn av1_level_name(idx: u8, high_tier: bool) -> String {
    let mut s =
        if idx == 31 { "max".to_owned() } else { format!("{}.{}", 2 + (idx >> 2), idx & 3) };
    if high_tier && idx > 7 {
        s.push_str(" High tier");
    }
    s
}

// ---- VP8 / VP9 ------------------------------------------------------------------------------

/// `VPCodecConfigurationRecord` (VP Codec ISO Media File Format Binding 2.2): `profile:8
/// level:8 bitDepth:4 chromaSubsampling:3 videoFullRangeFlag:1 ...`. FFmpeg's writer
/// (`ff_isom_write_vpcc`, used by its FLV muxer) keeps the `vpcC` FullBox `version:8 flags:24`
/// in front, which is what Enhanced RTMP publishers send in practice; a record that starts
/// with version 0/1 and three zero flag bytes and is long enough for both is read that way.
/// The record carries no picture size.
fn parse_vpcc(codec: VideoCodec, body: &[u8]) -> Result<VideoConfig, MediaError> {
    let record = match body {
        [0 | 1, 0, 0, 0, rest @ ..] if rest.len() >= 8 => rest,
        _ => body,
    };
    let mut cur = ByteCursor::new(record);
    let profile = cur.u8().ok_or(MediaError::Truncated)?;
    let level = cur.u8().ok_or(MediaError::Truncated)?;
    // VP9 levels are tenths ("31" is 3.1); 0 is "not specified", and VP8 has no levels.
    let level = match level {
        0 => None,
        l if l % 10 == 0 => Some((l / 10).to_string()),
        l => Some(format!("{}.{}", l / 10, l % 10)),
    };
    Ok(VideoConfig {
        codec,
        profile: Some(format!("Profile {profile}")),
        level,
        width: None,
        height: None,
    })
}

/// The picture size of a VP8 or VP9 keyframe tag, for the codecs whose sequence header does not
/// carry it. `None` for anything else: other codecs, inter frames, truncated or invalid frames.
///
/// VP9: the uncompressed header (VP9 spec 6.2) `frame_marker:2 profile:2 [reserved:1]
/// show_existing_frame:1 frame_type:1 show_frame:1 error_resilient_mode:1`, the sync code
/// `49 83 42`, `color_config()`, then `frame_width_minus_1:16 frame_height_minus_1:16`.
/// VP8: the 3-byte frame tag (bit 0 clear on keyframes), the start code `9d 01 2a`, then
/// little-endian 14-bit width and height (RFC 6386 9.1).
pub fn parse_keyframe_dimensions(payload: &[u8]) -> Option<(u32, u32)> {
    let header = parse_video_header(payload)?;
    if !header.tag.enhanced || !header.tag.is_keyframe() {
        return None;
    }
    // No composition time for VP8/VP9, neither with CodedFrames nor CodedFramesX.
    let frame = header.body;
    match header.tag.codec {
        VideoCodec::Vp9 => vp9_keyframe_size(frame).ok().flatten(),
        VideoCodec::Vp8 => {
            let tag = frame.get(..10)?;
            if tag[0] & 1 != 0 || tag[3..6] != [0x9d, 0x01, 0x2a] {
                return None;
            }
            let w = u16::from_le_bytes([tag[6], tag[7]]) & 0x3fff;
            let h = u16::from_le_bytes([tag[8], tag[9]]) & 0x3fff;
            Some((u32::from(w), u32::from(h)))
        }
        _ => None,
    }
}

fn vp9_keyframe_size(frame: &[u8]) -> Result<Option<(u32, u32)>, MediaError> {
    let mut r = Bits::new(frame);
    if r.bits(2)? != 2 {
        return Ok(None);
    }
    let low = r.bits(1)?;
    let high = r.bits(1)?;
    let profile = (high << 1) | low;
    if profile == 3 {
        r.skip(1)?;
    }
    if r.flag()? {
        return Ok(None); // show_existing_frame: no header follows
    }
    let key = !r.flag()?;
    r.skip(2)?; // show_frame, error_resilient_mode
    if !key || r.bits(24)? != 0x49_83_42 {
        return Ok(None);
    }
    if profile >= 2 {
        r.skip(1)?; // ten_or_twelve_bit
    }
    let color_space = r.bits(3)?;
    if color_space != 7 {
        r.skip(1)?; // color_range
        if profile == 1 || profile == 3 {
            r.skip(3)?; // subsampling_x, subsampling_y, reserved_zero
        }
    } else if profile == 1 || profile == 3 {
        r.skip(1)?; // CS_RGB: reserved_zero
    }
    let w = r.bits(16)? + 1;
    let h = r.bits(16)? + 1;
    Ok(Some((w, h)))
}

// ---------------------------------------------------------------------------------------------
// Audio configuration
// ---------------------------------------------------------------------------------------------

/// Legacy `SoundRate` (FLV spec E.4.2.1): 5.5, 11, 22, 44 kHz.
const LEGACY_RATES: [u32; 4] = [5512, 11025, 22050, 44100];

/// Reads the audio configuration.
///
/// AAC (`AudioSpecificConfig`), Opus (`dOps` or `OpusHead`) and FLAC (`STREAMINFO`) need their
/// sequence header: other tags are [`MediaError::NotSequenceHeader`]. Codecs without one are
/// described from any tag: MP3 from the MPEG audio frame header when the tag carries one (else
/// the legacy flags), AC-3/E-AC-3 from the sync frame header, the other legacy formats from the
/// flags byte with the spec's fixed values (Speex 16 kHz mono, Nellymoser 8/16 kHz mono,
/// G.711 8 kHz). An unknown codec is `Ok` with only the codec set.
pub fn parse_audio_config(payload: &[u8]) -> Result<AudioConfig, MediaError> {
    let header = parse_audio_header(payload).ok_or(MediaError::Truncated)?;
    let codec = header.tag.codec;
    let body = header.body;
    let bare = AudioConfig { codec, profile: None, sample_rate: None, channels: None };
    if let Some(packet_type) = header.packet_type {
        let seq = packet_type == PT_SEQUENCE_START;
        let coded = packet_type == PT_CODED_FRAMES;
        return match codec {
            AudioCodec::Aac | AudioCodec::Opus | AudioCodec::Flac if !seq => {
                Err(MediaError::NotSequenceHeader)
            }
            AudioCodec::Aac => parse_audio_specific_config(body),
            AudioCodec::Opus => parse_opus_header(body),
            AudioCodec::Flac => parse_flac_streaminfo(body),
            AudioCodec::Ac3 | AudioCodec::Eac3 if coded => parse_ac3_frame(codec, body),
            AudioCodec::Mp3 if coded => {
                let (rate, channels) = mpeg_audio_header(body)
                    .ok_or(MediaError::Malformed("MP3 frame header missing"))?;
                Ok(AudioConfig { sample_rate: Some(rate), channels: Some(channels), ..bare })
            }
            AudioCodec::Ac3 | AudioCodec::Eac3 | AudioCodec::Mp3 => {
                Err(MediaError::NotSequenceHeader)
            }
            _ => Ok(bare),
        };
    }
    let flags = header.legacy_flags.unwrap_or(0);
    let flag_rate = LEGACY_RATES[usize::from((flags >> 2) & 3)];
    let flag_channels = if flags & 1 != 0 { 2 } else { 1 };
    let (rate, channels) = match codec {
        AudioCodec::Aac => {
            if !header.tag.is_sequence_header {
                return Err(MediaError::NotSequenceHeader);
            }
            // The flags always say 44 kHz stereo for AAC; only the ASC is believed.
            return parse_audio_specific_config(body);
        }
        AudioCodec::Mp3 => mpeg_audio_header(body).unwrap_or((flag_rate, flag_channels)),
        AudioCodec::Mp3_8k => (8000, mpeg_audio_header(body).map_or(flag_channels, |(_, c)| c)),
        AudioCodec::Nellymoser => match flags >> 4 {
            4 => (16000, 1),
            5 => (8000, 1),
            _ => (flag_rate, flag_channels),
        },
        // G.711 in FLV is 8 kHz whatever the rate bits say (FFmpeg's demuxer does the same).
        AudioCodec::G711ALaw | AudioCodec::G711MuLaw => (8000, flag_channels),
        // FLV spec E.4.2.1: Speex is 16 kHz mono; FFmpeg writes the 11 kHz flag regardless.
        AudioCodec::Speex => (16000, 1),
        AudioCodec::LinearPcm | AudioCodec::LinearPcmLe | AudioCodec::Adpcm => {
            (flag_rate, flag_channels)
        }
        _ => return Ok(bare),
    };
    Ok(AudioConfig { sample_rate: Some(rate), channels: Some(channels), ..bare })
}

/// MPEG-4 audio sampling frequency table (ISO/IEC 14496-3 1.6.3.4); 13 and 14 are reserved,
/// 15 means an explicit 24-bit rate follows.
const AAC_RATES: [u32; 13] =
    [96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350];

fn aac_sampling_frequency(r: &mut Bits<'_>) -> Result<u32, MediaError> {
    let index = r.bits(4)?;
    if index == 15 {
        return r.bits(24);
    }
    AAC_RATES
        .get(index as usize)
        .copied()
        .ok_or(MediaError::Malformed("reserved AAC samplingFrequencyIndex"))
}

/// `GetAudioObjectType()`: 5 bits, 31 escapes to 32 + 6 more bits.
fn aac_object_type(r: &mut Bits<'_>) -> Result<u32, MediaError> {
    let aot = r.bits(5)?;
    if aot == 31 {
        Ok(32 + r.bits(6)?)
    } else {
        Ok(aot)
    }
}

/// `AudioSpecificConfig()` (ISO/IEC 14496-3 1.6.2.1): object type, sampling frequency, channel
/// configuration. HE-AAC is recognised both ways it is signalled: explicitly (object type 5 or
/// 29 with the SBR rate in front of the core object type) and backward-compatibly (an LC config
/// followed by the `0x2b7` sync extension, which FFmpeg's encoder writes with SBR off). Both
/// report the SBR output rate and, with PS, stereo output. The backward-compatible form is only
/// looked for after a plain GASpecificConfig (no program config element), where it is cheap.
fn parse_audio_specific_config(asc: &[u8]) -> Result<AudioConfig, MediaError> {
    let mut r = Bits::new(asc);
    let mut aot = aac_object_type(&mut r)?;
    let mut rate = aac_sampling_frequency(&mut r)?;
    let channel_config = r.bits(4)?;
    let mut sbr = false;
    let mut ps = false;
    if aot == 5 || aot == 29 {
        sbr = true;
        ps = aot == 29;
        rate = aac_sampling_frequency(&mut r)?;
        let _core_aot = aac_object_type(&mut r)?;
    } else if matches!(aot, 1..=4) && channel_config != 0 {
        // GASpecificConfig: frameLengthFlag, dependsOnCoreCoder (+ coreCoderDelay:14),
        // extensionFlag (which for these object types has no further fields but extensionFlag3
        // in later editions; we stop reading the extension if it is set).
        let _frame_length = r.flag()?;
        if r.flag()? {
            r.skip(14)?;
        }
        let extension = r.flag()?;
        if !extension && r.bits_left() >= 16 && r.bits(11)? == 0x2b7 {
            let ext_aot = aac_object_type(&mut r)?;
            if ext_aot == 5 && r.flag()? {
                sbr = true;
                rate = aac_sampling_frequency(&mut r)?;
                if r.bits_left() >= 12 && r.bits(11)? == 0x548 && r.flag()? {
                    ps = true;
                }
            }
        }
    }
    if sbr {
        aot = if ps { 29 } else { 5 };
    }
    // Channel configurations 1-6 are that many channels; 7 and 11-14 are the later layouts;
    // 0 defers to a program config element we do not parse.
    let mut channels = match channel_config {
        1..=6 => Some(channel_config as u8),
        7 | 12 | 14 => Some(8),
        11 => Some(7),
        13 => Some(24),
        _ => None,
    };
    if ps && channels == Some(1) {
        channels = Some(2);
    }
    Ok(AudioConfig {
        codec: AudioCodec::Aac,
        profile: Some(aac_profile_name(aot)),
        sample_rate: Some(rate),
        channels,
    })
}

fn aac_profile_name(aot: u32) -> String {
    let name = match aot {
        1 => "Main",
        2 => "LC",
        3 => "SSR",
        4 => "LTP",
        5 => "HE-AAC",
        29 => "HE-AACv2",
        23 => "LD",
        39 => "ELD",
        42 => "USAC",
        other => return format!("object type {other}"),
    };
    name.to_owned()
}

/// Opus: Enhanced RTMP says the sequence header is the Ogg identification header (`OpusHead`,
/// RFC 7845 5.1, little-endian fields); the MP4 binding's `dOps` box body (big-endian, no
/// magic) is also seen. Both start `version, channels, pre-skip:16, input rate:32`. The input
/// rate is informational (Opus always decodes at 48 kHz); 0 means unknown.
fn parse_opus_header(body: &[u8]) -> Result<AudioConfig, MediaError> {
    let (fields, little_endian) = match body.strip_prefix(b"OpusHead") {
        Some(rest) => (rest, true),
        None => (body, false),
    };
    let f = fields.get(..8).ok_or(MediaError::Truncated)?;
    let channels = f[1];
    if channels == 0 {
        return Err(MediaError::Malformed("Opus channel count is 0"));
    }
    let rate_bytes = [f[4], f[5], f[6], f[7]];
    let rate =
        if little_endian { u32::from_le_bytes(rate_bytes) } else { u32::from_be_bytes(rate_bytes) };
    Ok(AudioConfig {
        codec: AudioCodec::Opus,
        profile: None,
        sample_rate: (rate != 0).then_some(rate),
        channels: Some(channels),
    })
}

/// FLAC `METADATA_BLOCK_STREAMINFO` (RFC 9639 8.2): `min/max block size:16+16, min/max frame
/// size:24+24, sample rate:20, channels-1:3, bits per sample-1:5, ...`. Accepted bare (the 34
/// bytes, FFmpeg's extradata), behind its 4-byte metadata block header, or behind `fLaC` and
/// the header, since writers differ on what "the STREAMINFO block" includes.
fn parse_flac_streaminfo(body: &[u8]) -> Result<AudioConfig, MediaError> {
    let mut info = body.strip_prefix(b"fLaC").unwrap_or(body);
    if let [kind, 0, 0, 34, rest @ ..] = info {
        if kind & 0x7f == 0 && rest.len() >= 34 {
            info = rest;
        }
    }
    let si = info.get(..34).ok_or(MediaError::Truncated)?;
    let rate = (u32::from(si[10]) << 12) | (u32::from(si[11]) << 4) | (u32::from(si[12]) >> 4);
    let channels = ((si[12] >> 1) & 0x07) + 1;
    Ok(AudioConfig {
        codec: AudioCodec::Flac,
        profile: None,
        sample_rate: (rate != 0).then_some(rate),
        channels: Some(channels),
    })
}

/// AC-3 (ATSC A/52 5.3/5.4) and E-AC-3 (annex E) sync frame headers, told apart by `bsid`
/// (<= 10 AC-3, 11-16 E-AC-3) as decoders do, whatever the FourCC says. For E-AC-3 this
/// describes independent substream 0; dependent substreams (7.1) add channels not counted here.
fn parse_ac3_frame(codec: AudioCodec, frame: &[u8]) -> Result<AudioConfig, MediaError> {
    let f = frame.get(..8).ok_or(MediaError::Truncated)?;
    if f[0] != 0x0b || f[1] != 0x77 {
        return Err(MediaError::Malformed("AC-3 sync word missing"));
    }
    let bsid = f[5] >> 3;
    const ACMOD_CHANNELS: [u8; 8] = [2, 1, 2, 3, 3, 4, 4, 5];
    let mut r = Bits::new(&f[2..]);
    let (rate, channels) = if bsid <= 10 {
        // crc1:16, fscod:2, frmsizecod:6, bsid:5, bsmod:3, acmod:3, mix levels, lfeon:1.
        r.skip(16)?;
        let fscod = r.bits(2)?;
        r.skip(6 + 5 + 3)?;
        let acmod = r.bits(3)?;
        if acmod & 1 != 0 && acmod != 1 {
            r.skip(2)?; // cmixlev
        }
        if acmod & 4 != 0 {
            r.skip(2)?; // surmixlev
        }
        if acmod == 2 {
            r.skip(2)?; // dsurmod
        }
        let lfe = u8::from(r.flag()?);
        let rate = match fscod {
            0 => 48000,
            1 => 44100,
            2 => 32000,
            _ => return Err(MediaError::Malformed("AC-3 reserved fscod")),
        };
        (rate, ACMOD_CHANNELS[acmod as usize] + lfe)
    } else if bsid <= 16 {
        // strmtyp:2, substreamid:3, frmsiz:11, fscod:2, fscod2|numblkscod:2, acmod:3, lfeon:1.
        r.skip(2 + 3 + 11)?;
        let fscod = r.bits(2)?;
        let fscod2 = r.bits(2)?;
        let acmod = r.bits(3)?;
        let lfe = u8::from(r.flag()?);
        let rate = match (fscod, fscod2) {
            (0, _) => 48000,
            (1, _) => 44100,
            (2, _) => 32000,
            (_, 0) => 24000,
            (_, 1) => 22050,
            (_, 2) => 16000,
            _ => return Err(MediaError::Malformed("E-AC-3 reserved fscod2")),
        };
        (rate, ACMOD_CHANNELS[acmod as usize] + lfe)
    } else {
        return Err(MediaError::Malformed("AC-3 bsid above 16"));
    };
    Ok(AudioConfig { codec, profile: None, sample_rate: Some(rate), channels: Some(channels) })
}

/// The MPEG-1/2/2.5 audio frame header (ISO/IEC 11172-3 2.4.1.3): `sync:11 version:2 layer:2
/// protection:1 bitrate:4 rate:2 padding:1 private:1 mode:2`. Returns (rate, channels), or
/// `None` when the bytes are not a valid header.
fn mpeg_audio_header(frame: &[u8]) -> Option<(u32, u8)> {
    let h = frame.get(..4)?;
    if h[0] != 0xff || h[1] & 0xe0 != 0xe0 {
        return None;
    }
    let version = (h[1] >> 3) & 3; // 0 = 2.5, 1 reserved, 2 = MPEG-2, 3 = MPEG-1
    let layer = (h[1] >> 1) & 3;
    let rate_index = (h[2] >> 2) & 3;
    if version == 1 || layer == 0 || rate_index == 3 || h[2] >> 4 == 15 {
        return None;
    }
    let base = [44100, 48000, 32000][usize::from(rate_index)];
    let rate = match version {
        3 => base,
        2 => base / 2,
        _ => base / 4,
    };
    let channels = if h[3] >> 6 == 3 { 1 } else { 2 };
    Some((rate, channels))
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // Golden tag bodies. The legacy ones are cut from FLV files written by FFmpeg 5.1's muxer
    // (libx264, aac, libmp3lame, libspeex, nellymoser, pcm_s16le); ffmpeg 5.1 cannot write
    // Enhanced RTMP, so the enhanced ones wrap the real configuration records FFmpeg wrote into
    // MP4 (x265 hvcC without its 2 KB settings SEI, SVT-AV1 and libaom av1C, libvpx vpcC,
    // libopus dOps), real OpusHead/STREAMINFO/AC-3/E-AC-3/IVF frame bytes, in the E-RTMP header.
    // Coded frames are cut to their first bytes: classification needs only the header.
    // Recipe (ffmpeg 5.1, lavfi testsrc/sine, -pix_fmt yuv420p unless named): libx264 -profile:v
    // high -level 4.0 1280x720 + aac 48k stereo; baseline 320x240 + libmp3lame 22.05k mono; main
    // -level 4.1 1920x1080 + aac 44.1k mono; high422 yuv422p 854x480; high10 yuv420p10le
    // interlaced 1920x1080; high444 yuv444p 1280x720; libx265 854x480 and 1920x1080 yuv420p10le;
    // libsvtav1 854x480; libaom-av1 1280x720; libvpx-vp9 640x360 (mp4 + ivf); libvpx 320x240
    // (ivf); libopus (mp4 + ogg); flac 44.1k mono; ac3 5.1 and eac3 stereo 48k; aac 5.1 32k;
    // libmp3lame 48k stereo; libspeex 16k; nellymoser 8k; pcm_s16le 22.05k stereo.
    macro_rules! data {
        ($name:literal) => {
            include_bytes!(concat!("../../tests/data/media_", $name, ".bin")).as_slice()
        };
    }

    fn video(payload: &[u8]) -> VideoConfig {
        parse_video_config(payload).unwrap()
    }

    fn audio(payload: &[u8]) -> AudioConfig {
        parse_audio_config(payload).unwrap()
    }

    fn vcfg(c: VideoCodec, p: &str, l: &str, w: u32, h: u32) -> VideoConfig {
        VideoConfig {
            codec: c,
            profile: Some(p.into()),
            level: Some(l.into()),
            width: Some(w),
            height: Some(h),
        }
    }

    fn acfg(c: AudioCodec, p: Option<&str>, rate: u32, ch: u8) -> AudioConfig {
        AudioConfig {
            codec: c,
            profile: p.map(Into::into),
            sample_rate: Some(rate),
            channels: Some(ch),
        }
    }

    #[test]
    fn h264_golden_sequence_headers() {
        use VideoCodec::H264;
        let cases = [
            (data!("h264_high_720p_aac_video_seq"), vcfg(H264, "High", "4.0", 1280, 720)),
            (
                data!("h264_baseline_240p_mp3_video_seq"),
                vcfg(H264, "Constrained Baseline", "3.0", 320, 240),
            ),
            // 1080 is not a multiple of 16: 1088 coded, cropped by 8.
            (data!("h264_main_1080p_aac_mono_video_seq"), vcfg(H264, "Main", "4.1", 1920, 1080)),
            // 4:2:2: horizontal crop unit 2, vertical 1; 854 = 864 - 2 * 5.
            (data!("h264_422_480p_video_seq"), vcfg(H264, "High 4:2:2", "3.0", 854, 480)),
            // Interlaced (frame_mbs_only = 0): map units are field pairs, crop unit 4 rows.
            (data!("h264_high10_1080i_video_seq"), vcfg(H264, "High 10", "4.0", 1920, 1080)),
            (
                data!("h264_444_720p_video_seq"),
                vcfg(H264, "High 4:4:4 Predictive", "3.1", 1280, 720),
            ),
        ];
        for (payload, want) in cases {
            let tag = inspect_video(payload).unwrap();
            assert!(tag.is_sequence_header() && !tag.is_keyframe() && !tag.enhanced);
            assert_eq!(video(payload), want);
        }
        assert_eq!(
            video(data!("h264_high_720p_aac_video_seq")).to_string(),
            "H.264 High@4.0 1280x720"
        );
    }

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
    fn hevc_golden_sequence_headers() {
        use VideoCodec::Hevc;
        // x265 codes 856 wide (8-pixel CUs) with a 2-pixel conformance window.
        let main = vcfg(Hevc, "Main", "3", 854, 480);
        let ex = data!("hevc_main_480p_ex_seq");
        let tag = inspect_video(ex).unwrap();
        assert!(tag.enhanced && tag.is_sequence_header() && tag.codec == Hevc);
        assert_eq!(video(ex), main);
        // The same record behind the non-standard legacy codec id 12.
        let legacy = data!("hevc_main_480p_legacy12_seq");
        let tag = inspect_video(legacy).unwrap();
        assert!(!tag.enhanced && tag.is_sequence_header() && tag.codec == Hevc);
        assert_eq!(video(legacy), main);
        assert_eq!(
            video(data!("hevc_main10_1080p_ex_seq")),
            vcfg(Hevc, "Main 10", "4", 1920, 1080)
        );
        assert_eq!(video(ex).to_string(), "HEVC Main@3 854x480");
    }

    #[test]
    fn av1_and_vp9_golden_sequence_headers() {
        use VideoCodec::{Av1, Vp9};
        assert_eq!(video(data!("av1_svt_480p_ex_seq")), vcfg(Av1, "Main", "3.0", 854, 480));
        assert_eq!(video(data!("av1_aom_720p_ex_seq")), vcfg(Av1, "Main", "3.1", 1280, 720));
        // libvpx at 640x360@25 is level 2.1; vpcC has no size.
        let vp9 = video(data!("vp9_360p_ex_seq"));
        assert_eq!(
            vp9,
            VideoConfig {
                codec: Vp9,
                profile: Some("Profile 0".into()),
                level: Some("2.1".into()),
                width: None,
                height: None
            }
        );
        assert_eq!(vp9.to_string(), "VP9 Profile 0@2.1");
    }

    #[test]
    fn vp8_vp9_golden_frames() {
        let key = data!("vp9_360p_ex_key");
        let tag = inspect_video(key).unwrap();
        assert!(tag.is_keyframe() && tag.codec == VideoCodec::Vp9 && tag.enhanced);
        assert_eq!(parse_keyframe_dimensions(key), Some((640, 360)));
        let inter = data!("vp9_360p_ex_inter");
        let tag = inspect_video(inter).unwrap();
        assert_eq!(tag.frame_type, FrameType::Inter);
        assert!(!tag.is_keyframe());
        assert_eq!(parse_keyframe_dimensions(inter), None);
        let vp8 = data!("vp8_240p_ex_key");
        assert_eq!(inspect_video(vp8).unwrap().codec, VideoCodec::Vp8);
        assert_eq!(parse_keyframe_dimensions(vp8), Some((320, 240)));
        assert_eq!(parse_keyframe_dimensions(data!("h264_high_720p_aac_video_key")), None);
    }

    #[test]
    fn aac_golden_sequence_headers() {
        use AudioCodec::Aac;
        let seq = data!("h264_high_720p_aac_audio_seq");
        let tag = inspect_audio(seq).unwrap();
        assert!(tag.is_sequence_header && tag.codec == Aac && !tag.enhanced);
        // FFmpeg's ASC carries the 0x2b7 extension with SBR off: still LC, 48 kHz.
        assert_eq!(audio(seq), acfg(Aac, Some("LC"), 48000, 2));
        assert_eq!(audio(seq).to_string(), "AAC LC 48000 Hz 2 ch");
        assert_eq!(
            audio(data!("h264_main_1080p_aac_mono_audio_seq")),
            acfg(Aac, Some("LC"), 44100, 1)
        );
        assert_eq!(audio(data!("aac51_32k_audio_seq")), acfg(Aac, Some("LC"), 32000, 6));
        let ex = data!("aac_48k_stereo_ex_seq");
        let tag = inspect_audio(ex).unwrap();
        assert!(tag.enhanced && tag.is_sequence_header && tag.codec == Aac);
        assert_eq!(audio(ex), acfg(Aac, Some("LC"), 48000, 2));
        // A raw AAC frame is not a sequence header, and its flags byte is not believed.
        assert_eq!(parse_audio_config(&[0xaf, 0x01, 0x21]), Err(MediaError::NotSequenceHeader));
    }

    #[test]
    fn legacy_audio_golden_frames() {
        use AudioCodec::*;
        // 22.05 kHz mono MP3 (flags and frame header agree).
        assert_eq!(audio(data!("h264_baseline_240p_mp3_audio_frame")), acfg(Mp3, None, 22050, 1));
        // 48 kHz MP3: the flags say 44 kHz, the frame header says 48 kHz.
        let mp3 = data!("mp3_48k_audio_frame");
        assert_eq!((mp3[0] >> 2) & 3, 3);
        assert_eq!(audio(mp3), acfg(Mp3, None, 48000, 2));
        // FFmpeg flags Speex as 11 kHz; Speex in FLV is 16 kHz mono.
        assert_eq!(audio(data!("speex_audio_frame")), acfg(Speex, None, 16000, 1));
        assert_eq!(audio(data!("nelly8k_audio_frame")), acfg(Nellymoser, None, 8000, 1));
        assert_eq!(audio(data!("pcmle_audio_frame")), acfg(LinearPcmLe, None, 22050, 2));
        for p in [data!("mp3_48k_audio_frame"), data!("speex_audio_frame")] {
            let tag = inspect_audio(p).unwrap();
            assert!(!tag.is_sequence_header && !tag.enhanced);
        }
    }

    #[test]
    fn enhanced_audio_golden() {
        use AudioCodec::*;
        assert_eq!(audio(data!("opus_48k_stereo_dops_seq")), acfg(Opus, None, 48000, 2));
        assert_eq!(audio(data!("opus_48k_stereo_opushead_seq")), acfg(Opus, None, 48000, 2));
        assert_eq!(audio(data!("flac_44k_mono_seq")), acfg(Flac, None, 44100, 1));
        assert_eq!(audio(data!("ac3_48k_51_frame")), acfg(Ac3, None, 48000, 6));
        assert_eq!(audio(data!("eac3_48k_stereo_frame")), acfg(Eac3, None, 48000, 2));
        let tag = inspect_audio(data!("opus_48k_stereo_dops_seq")).unwrap();
        assert!(tag.enhanced && tag.is_sequence_header);
        let tag = inspect_audio(data!("ac3_48k_51_frame")).unwrap();
        assert!(tag.enhanced && !tag.is_sequence_header && tag.codec == Ac3);
        // FLAC behind its metadata block header, and behind `fLaC` + header.
        let flac = data!("flac_44k_mono_seq");
        let mut with_header = flac[..5].to_vec();
        with_header.extend_from_slice(&[0x80, 0, 0, 34]);
        with_header.extend_from_slice(&flac[5..]);
        assert_eq!(audio(&with_header), acfg(Flac, None, 44100, 1));
        let mut with_magic = flac[..5].to_vec();
        with_magic.extend_from_slice(b"fLaC");
        with_magic.extend_from_slice(&with_header[5..]);
        assert_eq!(audio(&with_magic), acfg(Flac, None, 44100, 1));
    }

    /// A bit writer for crafting syntax the encoders here do not produce.
    #[derive(Default)]
    struct W {
        bytes: Vec<u8>,
        bits: usize,
    }

    impl W {
        fn put(&mut self, n: u32, v: u64) -> &mut Self {
            for i in (0..n).rev() {
                if self.bits % 8 == 0 {
                    self.bytes.push(0);
                }
                let bit = ((v >> i) & 1) as u8;
                if let Some(last) = self.bytes.last_mut() {
                    *last |= bit << (7 - self.bits % 8);
                }
                self.bits += 1;
            }
            self
        }
        fn ue(&mut self, v: u64) -> &mut Self {
            let x = v + 1;
            let len = 64 - x.leading_zeros();
            self.put(len - 1, 0).put(len, x)
        }
        fn se(&mut self, v: i64) -> &mut Self {
            self.ue(if v > 0 { (2 * v - 1) as u64 } else { (-2 * v) as u64 })
        }
        fn finish(&mut self) -> Vec<u8> {
            self.put(1, 1); // rbsp_stop_one_bit
            std::mem::take(&mut self.bytes)
        }
    }

    fn avc_seq_tag(sps: &[u8]) -> Vec<u8> {
        let mut t = vec![0x17, 0, 0, 0, 0, 1, sps[1], sps[2], sps[3], 0xff, 0xe1];
        t.extend_from_slice(&(sps.len() as u16).to_be_bytes());
        t.extend_from_slice(sps);
        t.extend_from_slice(&[1, 0, 4, 0x68, 0xce, 0x3c, 0x80]);
        t
    }

    #[test]
    fn h264_poc_type_1_and_scaling_lists() {
        // High profile, scaling matrix with one 4x4 and one 8x8 list, POC type 1 with a
        // 255-entry cycle, 1280x720 with a 720 = 736 - 2*8 crop.
        let mut w = W::default();
        w.put(8, 0x67).put(8, 100).put(8, 0).put(8, 31).ue(0);
        w.ue(1).ue(0).ue(0).put(1, 0).put(1, 1); // 4:2:0, 8-bit, scaling matrix present
        for i in 0..8 {
            let present = i == 0 || i == 6;
            w.put(1, u64::from(present));
            if present {
                let size = if i < 6 { 16 } else { 64 };
                for j in 0..size {
                    w.se(if j == 3 { -11 } else { 1 }); // 8+3-11: nextScale 0 ends the list
                    if j == 3 {
                        break;
                    }
                }
            }
        }
        w.ue(0).ue(1).put(1, 0).se(-1).se(2).ue(255);
        for k in 0..255 {
            w.se(k % 7 - 3);
        }
        w.ue(4).put(1, 0).ue(79).ue(45).put(1, 1).put(1, 1);
        w.put(1, 1).ue(0).ue(0).ue(0).ue(8);
        let sps = w.finish();
        let cfg = video(&avc_seq_tag(&sps));
        assert_eq!(cfg, vcfg(VideoCodec::H264, "High", "3.1", 1280, 720));
        // One more cycle entry than the spec allows is refused, not looped over.
        let mut w = W::default();
        w.put(8, 0x67).put(8, 66).put(8, 0x40).put(8, 11).ue(0).ue(0).ue(1);
        w.put(1, 0).se(0).se(0).ue(256);
        let sps = w.finish();
        assert_eq!(
            parse_video_config(&avc_seq_tag(&sps)),
            Err(MediaError::Malformed("H.264 num_ref_frames_in_pic_order_cnt_cycle"))
        );
    }

    #[test]
    fn h264_level_names_and_emulation_prevention() {
        assert_eq!(h264_level_name(66, 0x10, 11), "1b");
        assert_eq!(h264_level_name(100, 0x10, 11), "1.1");
        assert_eq!(h264_level_name(100, 0, 9), "1b");
        assert_eq!(h264_level_name(100, 0, 31), "3.1");
        assert_eq!(h264_profile_name(66, 0), "Baseline");
        assert_eq!(h264_profile_name(110, 0x10), "High 10 Intra");
        assert_eq!(nal_to_rbsp(&[0, 0, 3, 1, 0, 0, 3, 0, 0, 3]), [0, 0, 1, 0, 0, 0, 0]);
        // An SPS whose width field straddles an emulation-prevention byte.
        let mut w = W::default();
        w.put(8, 0x67).put(8, 77).put(8, 0).put(8, 40).ue(0).ue(0).ue(2);
        w.ue(1).put(1, 0).ue(0x3fff).ue(0).put(1, 1).put(1, 1).put(1, 0);
        let sps = w.finish();
        let mut escaped = Vec::new();
        let mut zeros = 0;
        for &b in &sps {
            if zeros >= 2 && b <= 3 {
                escaped.push(3);
                zeros = 0;
            }
            zeros = if b == 0 { zeros + 1 } else { 0 };
            escaped.push(b);
        }
        let cfg = video(&avc_seq_tag(&escaped));
        assert_eq!((cfg.width, cfg.height), (Some(0x4000 * 16), Some(16)));
    }

    #[test]
    fn aac_he_signalling() {
        let asc = |w: &W| {
            let mut t = vec![0xaf, 0];
            t.extend_from_slice(&w.bytes);
            t
        };
        // Explicit HE-AAC: AOT 5, core 24 kHz stereo, SBR 48 kHz, core AOT 2.
        let mut w = W::default();
        w.put(5, 5).put(4, 6).put(4, 2).put(4, 3).put(5, 2).put(3, 0);
        assert_eq!(audio(&asc(&w)), acfg(AudioCodec::Aac, Some("HE-AAC"), 48000, 2));
        // Explicit HE-AACv2: AOT 29, mono core, PS gives stereo output.
        let mut w = W::default();
        w.put(5, 29).put(4, 6).put(4, 1).put(4, 3).put(5, 2).put(3, 0);
        assert_eq!(audio(&asc(&w)), acfg(AudioCodec::Aac, Some("HE-AACv2"), 48000, 2));
        // Backward-compatible: LC 22.05 kHz mono + 0x2b7 SBR 44.1 kHz + 0x548 PS.
        let mut w = W::default();
        w.put(5, 2).put(4, 7).put(4, 1).put(3, 0);
        w.put(11, 0x2b7).put(5, 5).put(1, 1).put(4, 4).put(11, 0x548).put(1, 1).put(4, 0);
        assert_eq!(audio(&asc(&w)), acfg(AudioCodec::Aac, Some("HE-AACv2"), 44100, 2));
        // Escaped object type and explicit 24-bit rate.
        let mut w = W::default();
        w.put(5, 31).put(6, 10).put(4, 15).put(24, 12345).put(4, 2).put(3, 0);
        assert_eq!(audio(&asc(&w)), acfg(AudioCodec::Aac, Some("USAC"), 12345, 2));
        // Reserved sampling frequency index.
        let mut w = W::default();
        w.put(5, 2).put(4, 13).put(4, 2).put(3, 0);
        assert!(matches!(parse_audio_config(&asc(&w)), Err(MediaError::Malformed(_))));
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
