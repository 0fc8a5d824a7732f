//! Test fixtures shared by the parsers' tests: the golden tags captured from real encoders,
//! shorthands for expected configurations, and a bit writer for syntax no encoder at hand
//! produces. One place, so every file's tests read the same captures the same way.

use super::{
    parse_audio_config, parse_video_config, AudioCodec, AudioConfig, VideoCodec, VideoConfig,
};

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
pub(super) use data;

pub(super) fn video(payload: &[u8]) -> VideoConfig {
    parse_video_config(payload).unwrap()
}

pub(super) fn audio(payload: &[u8]) -> AudioConfig {
    parse_audio_config(payload).unwrap()
}

pub(super) fn vcfg(c: VideoCodec, p: &str, l: &str, w: u32, h: u32) -> VideoConfig {
    VideoConfig {
        codec: c,
        profile: Some(p.into()),
        level: Some(l.into()),
        width: Some(w),
        height: Some(h),
    }
}

pub(super) fn acfg(c: AudioCodec, p: Option<&str>, rate: u32, ch: u8) -> AudioConfig {
    AudioConfig {
        codec: c,
        profile: p.map(Into::into),
        sample_rate: Some(rate),
        channels: Some(ch),
    }
}

/// A bit writer for crafting syntax the encoders here do not produce.
#[derive(Default)]
pub(super) struct W {
    pub(super) bytes: Vec<u8>,
    bits: usize,
}

impl W {
    pub(super) fn put(&mut self, n: u32, v: u64) -> &mut Self {
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
    pub(super) fn ue(&mut self, v: u64) -> &mut Self {
        let x = v + 1;
        let len = 64 - x.leading_zeros();
        self.put(len - 1, 0).put(len, x)
    }
    pub(super) fn se(&mut self, v: i64) -> &mut Self {
        self.ue(if v > 0 { (2 * v - 1) as u64 } else { (-2 * v) as u64 })
    }
    pub(super) fn finish(&mut self) -> Vec<u8> {
        self.put(1, 1); // rbsp_stop_one_bit
        std::mem::take(&mut self.bytes)
    }
}
