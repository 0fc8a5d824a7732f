//! FLV file framing, pure bytes: the file header, tag headers, `PreviousTagSize` and the
//! `onMetaData` tag whose `duration` and `filesize` are patched in place when a file closes.
//!
//! Layout (Adobe FLV spec 10.1, annex E.2-E.4):
//!
//! ```text
//! header   "FLV" 0x01 flags:u8 (0x04 audio | 0x01 video) header_size:u32 = 9
//!          PreviousTagSize0:u32 = 0
//! tag      type:u8 (8 audio, 9 video, 18 script) data_size:u24 timestamp:u24
//!          timestamp_extended:u8 (bits 24-31) stream_id:u24 = 0
//!          data[data_size]
//!          PreviousTagSize:u32 = 11 + data_size
//! ```
//!
//! An RTMP audio, video or data message body is exactly an FLV tag body, so a recorded tag is
//! 11 bytes of header, the relayed payload as it is (shared, never copied here) and 4 bytes of
//! trailer.
//!
//! # The patchable `onMetaData`
//! The recorder writes its own `onMetaData` at the start of every file: the publisher's
//! properties, less any `duration` and `filesize` it sent, behind those two placed first with
//! placeholder values. Being first, they sit at fixed offsets from the start of the tag body
//! whatever else the publisher sent, and an AMF0 number is always 9 bytes, so fixing them up is
//! one small write of [`MetadataPatch::LEN`] bytes at a known file offset: no rewrite, no
//! seeking through the file.

use bytes::{BufMut, Bytes, BytesMut};
use rtmp_proto::amf0::{self, Amf0Value, AmfLimits};

/// Tag type of an audio tag.
pub const TAG_AUDIO: u8 = 8;
/// Tag type of a video tag.
pub const TAG_VIDEO: u8 = 9;
/// Tag type of a script data (AMF0) tag.
pub const TAG_SCRIPT: u8 = 18;

/// The file header plus `PreviousTagSize0`.
pub const FILE_HEADER_LEN: usize = 13;
/// Bytes of a tag header.
pub const TAG_HEADER_LEN: usize = 11;
/// Bytes of the `PreviousTagSize` after each tag.
pub const TAG_TRAILER_LEN: usize = 4;
/// The largest tag body FLV can describe (24-bit `DataSize`).
pub const MAX_TAG_DATA: usize = 0xff_ffff;

/// The AMF0 number marker (AMF0 spec 2.2), in the patch window.
const AMF0_NUMBER: u8 = 0x00;

/// Header flag: the file has audio tags.
pub const FLAG_AUDIO: u8 = 0x04;
/// Header flag: the file has video tags.
pub const FLAG_VIDEO: u8 = 0x01;
/// Offset of the flags byte in the file header (for the fix-up on close).
pub const FLAGS_OFFSET: u64 = 4;

/// The 13 bytes every FLV file starts with.
pub fn file_header(flags: u8) -> [u8; FILE_HEADER_LEN] {
    [b'F', b'L', b'V', 1, flags & (FLAG_AUDIO | FLAG_VIDEO), 0, 0, 0, 9, 0, 0, 0, 0]
}

/// The header of a tag of `tag_type` carrying `data_len` bytes at `timestamp` ms. `None` when
/// the body is too large for FLV's 24-bit size field.
pub fn tag_header(tag_type: u8, data_len: usize, timestamp: u32) -> Option<[u8; TAG_HEADER_LEN]> {
    if data_len > MAX_TAG_DATA {
        return None;
    }
    let [_, s1, s2, s3] = (data_len as u32).to_be_bytes();
    let [t0, t1, t2, t3] = timestamp.to_be_bytes();
    // The low 24 bits come first; bits 24-31 follow as `TimestampExtended`.
    Some([tag_type, s1, s2, s3, t1, t2, t3, t0, 0, 0, 0])
}

/// `PreviousTagSize` for a tag whose header is `header`.
pub fn tag_trailer(header: &[u8; TAG_HEADER_LEN]) -> [u8; TAG_TRAILER_LEN] {
    (TAG_HEADER_LEN as u32 + tag_data_len(header) as u32).to_be_bytes()
}

/// The body length a tag header declares.
pub fn tag_data_len(header: &[u8; TAG_HEADER_LEN]) -> usize {
    u32::from_be_bytes([0, header[1], header[2], header[3]]) as usize
}

/// The timestamp a tag header declares, in ms.
pub fn tag_timestamp(header: &[u8; TAG_HEADER_LEN]) -> u32 {
    u32::from_be_bytes([header[7], header[4], header[5], header[6]])
}

/// The bytes a whole tag takes in the file.
pub fn tag_len(data_len: usize) -> usize {
    TAG_HEADER_LEN + data_len + TAG_TRAILER_LEN
}

/// The properties of an `onMetaData` data message body (`"onMetaData"` followed by an ECMA
/// array or object), or `None` when the body is something else or does not decode. `limits`
/// bound what a publisher's metadata can make us build.
pub fn metadata_properties(body: &[u8], limits: &AmfLimits) -> Option<Vec<(String, Amf0Value)>> {
    let mut input = body;
    let name = amf0::decode_one(&mut input, limits).ok()?;
    if name.as_str()? != "onMetaData" {
        return None;
    }
    match amf0::decode_one(&mut input, limits).ok()? {
        Amf0Value::EcmaArray(props) | Amf0Value::Object(props) => Some(props),
        _ => None,
    }
}

/// A complete `onMetaData` script tag (header, body, trailer) at timestamp 0 with `duration`
/// and `filesize` first, both zero until patched, then `props` less any `duration` or
/// `filesize` of their own. Returns the tag and the offset of its patch window within it.
///
/// `None` when the properties do not fit in one tag (a publisher's metadata near 16 MiB): the
/// caller then writes metadata without the publisher's properties.
pub fn metadata_tag(props: &[(String, Amf0Value)]) -> Option<(Bytes, usize)> {
    let mut array = Vec::with_capacity(props.len() + 2);
    array.push(("duration".to_owned(), Amf0Value::Number(0.0)));
    array.push(("filesize".to_owned(), Amf0Value::Number(0.0)));
    array.extend(props.iter().filter(|(k, _)| k != "duration" && k != "filesize").cloned());
    let name = Amf0Value::string("onMetaData");
    let array = Amf0Value::EcmaArray(array);
    let data_len = amf0::encoded_len(&name) + amf0::encoded_len(&array);
    let header = tag_header(TAG_SCRIPT, data_len, 0)?;
    let mut out = BytesMut::with_capacity(tag_len(data_len));
    out.put_slice(&header);
    amf0::encode(&name, &mut out);
    amf0::encode(&array, &mut out);
    out.put_slice(&tag_trailer(&header));
    debug_assert_eq!(out.len(), tag_len(data_len));
    Some((out.freeze(), TAG_HEADER_LEN + MetadataPatch::BODY_OFFSET))
}

/// The body of a mid-file `onMetaData` update: `props` without `duration` and `filesize`, so that
/// a reader that applies the update keeps the values fixed up at the head of the file.
pub fn metadata_update_body(props: &[(String, Amf0Value)]) -> Bytes {
    let name = Amf0Value::string("onMetaData");
    let array = Amf0Value::EcmaArray(
        props.iter().filter(|(k, _)| k != "duration" && k != "filesize").cloned().collect(),
    );
    let mut out = BytesMut::with_capacity(amf0::encoded_len(&name) + amf0::encoded_len(&array));
    amf0::encode(&name, &mut out);
    amf0::encode(&array, &mut out);
    out.freeze()
}

/// The bytes that fix up `duration` (seconds) and `filesize` (bytes) in a tag built by
/// [`metadata_tag`]: the `duration` number, the `filesize` key and the `filesize` number, so
/// one write covers both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetadataPatch {
    pub duration_ms: u64,
    pub filesize: u64,
}

impl MetadataPatch {
    /// Where the window starts in the tag body: after `"onMetaData"` (13 bytes), the ECMA array
    /// marker and count (5), the `duration` key (10) and its number marker (1).
    pub const BODY_OFFSET: usize = 13 + 5 + 10 + 1;
    /// duration:f64, "filesize" key (2 + 8), number marker, filesize:f64.
    pub const LEN: usize = 8 + 10 + 1 + 8;

    pub fn bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..8].copy_from_slice(&(self.duration_ms as f64 / 1000.0).to_be_bytes());
        out[8..10].copy_from_slice(&8u16.to_be_bytes());
        out[10..18].copy_from_slice(b"filesize");
        out[18] = AMF0_NUMBER;
        out[19..].copy_from_slice(&(self.filesize as f64).to_be_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_header_golden() {
        assert_eq!(
            file_header(FLAG_AUDIO | FLAG_VIDEO),
            [0x46, 0x4c, 0x56, 0x01, 0x05, 0, 0, 0, 0x09, 0, 0, 0, 0]
        );
        assert_eq!(file_header(FLAG_VIDEO)[4], 0x01);
        assert_eq!(file_header(0xff)[4], 0x05, "reserved flag bits stay clear");
    }

    #[test]
    fn tag_header_golden_with_extended_timestamp() {
        // 0x12345678 ms: low 24 bits 0x345678, then the extension byte 0x12.
        let header = tag_header(TAG_VIDEO, 0x01_0203, 0x1234_5678).expect("fits");
        assert_eq!(header, [0x09, 0x01, 0x02, 0x03, 0x34, 0x56, 0x78, 0x12, 0, 0, 0]);
        assert_eq!(tag_data_len(&header), 0x01_0203);
        assert_eq!(tag_timestamp(&header), 0x1234_5678);
        assert_eq!(tag_trailer(&header), (11u32 + 0x01_0203).to_be_bytes());
        assert_eq!(tag_len(0x01_0203), 11 + 0x01_0203 + 4);
    }

    #[test]
    fn oversized_tag_is_refused() {
        assert!(tag_header(TAG_AUDIO, MAX_TAG_DATA, 0).is_some());
        assert!(tag_header(TAG_AUDIO, MAX_TAG_DATA + 1, 0).is_none());
    }

    #[test]
    fn metadata_tag_golden_and_patch_window() {
        let props = vec![
            ("duration".to_owned(), Amf0Value::Number(12.0)),
            ("width".to_owned(), Amf0Value::Number(320.0)),
        ];
        let (tag, window) = metadata_tag(&props).expect("fits");
        let mut expected = vec![18u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]; // size patched below
        expected.extend_from_slice(&[0x02, 0x00, 0x0a]);
        expected.extend_from_slice(b"onMetaData");
        expected.extend_from_slice(&[0x08, 0, 0, 0, 3]);
        expected.extend_from_slice(&[0x00, 0x08]);
        expected.extend_from_slice(b"duration");
        expected.extend_from_slice(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0x00, 0x08]);
        expected.extend_from_slice(b"filesize");
        expected.extend_from_slice(&[0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&[0x00, 0x05]);
        expected.extend_from_slice(b"width");
        expected.push(0x00);
        expected.extend_from_slice(&320f64.to_be_bytes());
        expected.extend_from_slice(&[0x00, 0x00, 0x09]);
        let data_len = expected.len() - 11;
        expected[3] = data_len as u8;
        expected.extend_from_slice(&(expected.len() as u32).to_be_bytes());
        assert_eq!(&tag[..], &expected[..]);

        // Patching the window yields what a fresh encoding with those values would.
        let patch = MetadataPatch { duration_ms: 4_040, filesize: 123_456 };
        let mut patched = tag.to_vec();
        patched[window..window + MetadataPatch::LEN].copy_from_slice(&patch.bytes());
        let props = metadata_properties(&patched[11..patched.len() - 4], &AmfLimits::default())
            .expect("decodes");
        assert_eq!(props[0], ("duration".to_owned(), Amf0Value::Number(4.04)));
        assert_eq!(props[1], ("filesize".to_owned(), Amf0Value::Number(123_456.0)));
        assert_eq!(props[2], ("width".to_owned(), Amf0Value::Number(320.0)));
        assert_eq!(props.len(), 3, "the publisher's duration was replaced, not duplicated");
    }

    #[test]
    fn metadata_properties_accepts_objects_and_rejects_other_names() {
        let limits = AmfLimits::default();
        let mut body = BytesMut::new();
        amf0::encode_all(
            &[Amf0Value::string("onMetaData"), Amf0Value::object([("a", Amf0Value::Null)])],
            &mut body,
        );
        assert_eq!(metadata_properties(&body, &limits).map(|p| p.len()), Some(1));
        let mut body = BytesMut::new();
        amf0::encode_all(&[Amf0Value::string("onCuePoint"), Amf0Value::Null], &mut body);
        assert!(metadata_properties(&body, &limits).is_none());
        assert!(metadata_properties(&[0xff, 0x00], &limits).is_none());
        assert!(metadata_properties(&[], &limits).is_none());
    }
}
