//! Video decoder configuration: what a sequence header says about the picture (profile,
//! level, size), codec by codec, and the picture size of VP8/VP9 keyframes, whose sequence
//! header does not carry it.
//!
//! This is the bulk of the module's parsing (SPS and OBU syntax, cropping arithmetic) and none
//! of it is on the per-frame path: it runs once per sequence header, or per keyframe for VP8/VP9,
//! and may allocate a little (an unescaped SPS, names).

use super::reader::{Bits, ByteCursor};
use super::tag::{parse_video_header, PT_MPEG2TS_SEQUENCE_START};
use super::{MediaError, VideoCodec, VideoConfig};

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

#[cfg(test)]
mod tests {
    use super::super::test_support::{data, vcfg, video, W};
    use super::super::{inspect_video, FrameType, MediaError};
    use super::*;

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
}
