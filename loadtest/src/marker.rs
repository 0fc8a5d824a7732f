//! The 16-byte send-time marker inside every synthetic media payload.
//!
//! ```text
//! AVC video tag body:  0x17|0x27  0x01  cts(3)  | magic(4) seq(4) sent_ns(8) | padding ...
//! AAC audio tag body:  0xaf       0x01          | magic(4) seq(4) sent_ns(8) | padding ...
//! ```
//!
//! All fields are big-endian. `seq` counts per stream and per kind: video frames and audio frames
//! have separate counters, both starting at 0 when a publish starts. Keeping them apart lets a
//! player tell a relay that skips video to the next keyframe (a video gap, no audio gap) from one
//! that drops everything. Sequence headers and metadata carry no marker.
//!
//! The marker sits where the first NAL unit length (AVC) or the first raw AAC byte would be, so
//! the frames do not decode: a relay does not need them to, and a server that parses NAL units
//! (for HLS, say) sees garbage. That is the price of a marker every server passes through
//! unchanged.

use rtmp_proto::session::MediaKind;

/// "RLMK": tells a marker from whatever a real encoder put at that offset.
pub const MAGIC: u32 = 0x524c_4d4b;
/// Encoded length of a [`Marker`].
pub const MARKER_LEN: usize = 16;
/// Bytes of FLV header before the marker in an AVC NALU video tag body.
pub const AVC_HEADER_LEN: usize = 5;
/// Bytes of FLV header before the marker in an AAC raw audio tag body.
pub const AAC_HEADER_LEN: usize = 2;

/// FLV codec id of AVC in the low nibble of a video tag's first byte.
const FLV_CODEC_AVC: u8 = 7;
/// FLV sound format of AAC in the high nibble of an audio tag's first byte.
const FLV_SOUND_AAC: u8 = 10;

/// Who sent a media payload, and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    /// Per stream and per kind, counting from 0 at publish start.
    pub seq: u32,
    /// Nanoseconds since [`crate::clock::epoch`] when the publisher handed it to the session.
    pub sent_ns: u64,
}

impl Marker {
    /// Writes the marker into the first [`MARKER_LEN`] bytes of `out`.
    ///
    /// # Panics
    /// If `out` is shorter than [`MARKER_LEN`]: payload sizes are ours, never a peer's.
    pub fn write(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&MAGIC.to_be_bytes());
        out[4..8].copy_from_slice(&self.seq.to_be_bytes());
        out[8..16].copy_from_slice(&self.sent_ns.to_be_bytes());
    }

    /// Reads a marker from the start of `bytes`; `None` when too short or the magic is wrong.
    pub fn read(bytes: &[u8]) -> Option<Marker> {
        let bytes: &[u8; MARKER_LEN] = bytes.get(..MARKER_LEN)?.try_into().ok()?;
        let [m0, m1, m2, m3, s0, s1, s2, s3, t @ ..] = *bytes;
        if u32::from_be_bytes([m0, m1, m2, m3]) != MAGIC {
            return None;
        }
        Some(Marker { seq: u32::from_be_bytes([s0, s1, s2, s3]), sent_ns: u64::from_be_bytes(t) })
    }
}

/// Where the marker of a media payload starts, if it is a frame that can carry one: an AVC NALU
/// video tag or an AAC raw audio tag (not a sequence header), long enough to hold it.
pub fn marker_offset(kind: MediaKind, payload: &[u8]) -> Option<usize> {
    let (&first, &packet_type) = (payload.first()?, payload.get(1)?);
    let offset = match kind {
        MediaKind::Video if first & 0x0f == FLV_CODEC_AVC && packet_type == 1 => AVC_HEADER_LEN,
        MediaKind::Audio if first >> 4 == FLV_SOUND_AAC && packet_type == 1 => AAC_HEADER_LEN,
        _ => return None,
    };
    (payload.len() >= offset + MARKER_LEN).then_some(offset)
}

/// The marker of a received media payload, if it carries one of ours.
pub fn find(kind: MediaKind, payload: &[u8]) -> Option<Marker> {
    Marker::read(&payload[marker_offset(kind, payload)?..])
}

/// Whether a video tag body is a keyframe (FLV frame type 1), sequence headers included.
pub fn is_video_keyframe(payload: &[u8]) -> bool {
    payload.first().is_some_and(|b| b >> 4 == 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_round_trips() {
        for marker in [
            Marker { seq: 0, sent_ns: 0 },
            Marker { seq: 1, sent_ns: 1_234_567_890 },
            Marker { seq: u32::MAX, sent_ns: u64::MAX },
        ] {
            let mut buf = [0u8; MARKER_LEN];
            marker.write(&mut buf);
            assert_eq!(Marker::read(&buf), Some(marker));
        }
    }

    #[test]
    fn wrong_magic_or_short_input_is_not_a_marker() {
        let mut buf = [0u8; MARKER_LEN];
        Marker { seq: 7, sent_ns: 9 }.write(&mut buf);
        assert_eq!(Marker::read(&buf[..MARKER_LEN - 1]), None);
        buf[0] ^= 1;
        assert_eq!(Marker::read(&buf), None);
    }

    #[test]
    fn finds_markers_after_the_codec_headers() {
        let marker = Marker { seq: 42, sent_ns: 99 };
        let mut video = vec![0x27, 1, 0, 0, 0];
        video.extend_from_slice(&[0; MARKER_LEN + 10]);
        marker.write(&mut video[AVC_HEADER_LEN..]);
        assert_eq!(find(MediaKind::Video, &video), Some(marker));
        assert!(!is_video_keyframe(&video));
        video[0] = 0x17;
        assert!(is_video_keyframe(&video));
        assert_eq!(find(MediaKind::Video, &video), Some(marker));

        let mut audio = vec![0xaf, 1];
        audio.extend_from_slice(&[0; MARKER_LEN]);
        marker.write(&mut audio[AAC_HEADER_LEN..]);
        assert_eq!(find(MediaKind::Audio, &audio), Some(marker));

        // Sequence headers, other codecs, other kinds and short payloads carry none.
        let mut seq_header = video.clone();
        seq_header[1] = 0;
        assert_eq!(find(MediaKind::Video, &seq_header), None);
        let mut hevc = video.clone();
        hevc[0] = 0x1c;
        assert_eq!(find(MediaKind::Video, &hevc), None);
        assert_eq!(find(MediaKind::Audio, &video), None);
        assert_eq!(find(MediaKind::Data, &audio), None);
        assert_eq!(find(MediaKind::Video, &video[..AVC_HEADER_LEN + 3]), None);
        assert_eq!(find(MediaKind::Video, &[]), None);
    }
}
