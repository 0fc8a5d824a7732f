//! Audio configuration: sample rate, channels and profile, from the sequence header where the
//! codec has one (AAC, Opus, FLAC) and from any coded frame where it does not (MP3, AC-3,
//! E-AC-3, and the legacy formats, whose flags byte is all there is).
//!
//! Kept apart from video because the field evidence differs (flags bytes that lie about the
//! rate, HE-AAC's two signalling forms) and the parsers share nothing but the readers.

use super::reader::Bits;
use super::tag::{parse_audio_header, PT_CODED_FRAMES, PT_SEQUENCE_START};
use super::{AudioCodec, AudioConfig, MediaError};

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

#[cfg(test)]
mod tests {
    use super::super::inspect_audio;
    use super::super::test_support::{acfg, audio, data, W};
    use super::*;

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
}
