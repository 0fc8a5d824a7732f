//! Chunk header codec (RTMP spec 1.0, 5.3.1): the basic header (fmt + chunk stream id in 1-3
//! bytes) and the four message-header formats.
//!
//! ```text
//! basic header   0 1 2 3 4 5 6 7
//!               +-+-+-+-+-+-+-+-+
//!               |fmt|   csid    |   csid 2..63 in one byte; 0 => csid 64 + next byte;
//!               +-+-+-+-+-+-+-+-+   1 => csid 64 + next byte + 256 * the byte after
//! fmt 0 (11 bytes): timestamp(3) length(3) type(1) stream id(4, little endian)
//! fmt 1 (7 bytes):  timestamp delta(3) length(3) type(1)
//! fmt 2 (3 bytes):  timestamp delta(3)
//! fmt 3 (0 bytes):  everything as the previous chunk of this chunk stream
//! ```
//! A timestamp field of 0xffffff means a 4-byte extended timestamp follows the header.

use bytes::{BufMut, BytesMut};

/// The 24-bit timestamp value that announces an extended timestamp.
pub const EXTENDED_TIMESTAMP_MARKER: u32 = 0x00ff_ffff;

/// fmt and chunk stream id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasicHeader {
    pub fmt: u8,
    pub csid: u32,
}

impl BasicHeader {
    /// Parses a basic header at the start of `buf`; `None` when more bytes are needed.
    /// Returns the header and its length in bytes.
    pub fn parse(buf: &[u8]) -> Option<(BasicHeader, usize)> {
        let first = *buf.first()?;
        let fmt = first >> 6;
        match first & 0x3f {
            0 => Some((BasicHeader { fmt, csid: 64 + u32::from(*buf.get(1)?) }, 2)),
            1 => {
                let low = u32::from(*buf.get(1)?);
                let high = u32::from(*buf.get(2)?);
                Some((BasicHeader { fmt, csid: 64 + low + 256 * high }, 3))
            }
            csid => Some((BasicHeader { fmt, csid: u32::from(csid) }, 1)),
        }
    }

    /// Writes the shortest encoding of this header. `csid` must be in 2..=65599 (see
    /// [`super::MAX_CSID`]); ids 0 and 1 are reserved escape values and are not encodable.
    pub fn encode(&self, out: &mut BytesMut) {
        let fmt = self.fmt << 6;
        match self.csid {
            2..=63 => out.put_u8(fmt | self.csid as u8),
            64..=319 => {
                out.put_u8(fmt);
                out.put_u8((self.csid - 64) as u8);
            }
            _ => {
                let id = self.csid.saturating_sub(64);
                out.put_u8(fmt | 1);
                out.put_u8((id & 0xff) as u8);
                out.put_u8(((id >> 8) & 0xff) as u8);
            }
        }
    }
}

/// The message header of one chunk, by format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkHeader {
    /// Starts a message with everything absolute.
    Type0 { timestamp: u32, length: u32, type_id: u8, stream_id: u32 },
    /// Same message stream as the previous message on this chunk stream.
    Type1 { delta: u32, length: u32, type_id: u8 },
    /// Same stream, length and type; only the timestamp delta changes.
    Type2 { delta: u32 },
    /// A continuation of the current message, or a new message identical in shape and delta
    /// to the previous one.
    Type3,
}

impl ChunkHeader {
    pub fn fmt(&self) -> u8 {
        match self {
            ChunkHeader::Type0 { .. } => 0,
            ChunkHeader::Type1 { .. } => 1,
            ChunkHeader::Type2 { .. } => 2,
            ChunkHeader::Type3 => 3,
        }
    }

    /// Writes basic header, message header and, when the timestamp needs it, the extended
    /// timestamp. A type-3 header is written without one: the caller decides (see
    /// [`super::ChunkEncoder`]) whether the continuation repeats the extended timestamp.
    pub fn encode(&self, csid: u32, out: &mut BytesMut) {
        BasicHeader { fmt: self.fmt(), csid }.encode(out);
        let put_u24 = |out: &mut BytesMut, v: u32| out.put_uint(u64::from(v.min(0xff_ffff)), 3);
        let time = match *self {
            ChunkHeader::Type0 { timestamp, length, type_id, stream_id } => {
                put_u24(out, timestamp.min(EXTENDED_TIMESTAMP_MARKER));
                put_u24(out, length);
                out.put_u8(type_id);
                out.put_u32_le(stream_id);
                timestamp
            }
            ChunkHeader::Type1 { delta, length, type_id } => {
                put_u24(out, delta.min(EXTENDED_TIMESTAMP_MARKER));
                put_u24(out, length);
                out.put_u8(type_id);
                delta
            }
            ChunkHeader::Type2 { delta } => {
                put_u24(out, delta.min(EXTENDED_TIMESTAMP_MARKER));
                delta
            }
            ChunkHeader::Type3 => return,
        };
        if time >= EXTENDED_TIMESTAMP_MARKER {
            out.put_u32(time);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_header_golden_vectors() {
        let cases: &[(&[u8], BasicHeader)] = &[
            (&[0x03], BasicHeader { fmt: 0, csid: 3 }),
            (&[0xc4], BasicHeader { fmt: 3, csid: 4 }),
            (&[0x7f], BasicHeader { fmt: 1, csid: 63 }),
            (&[0x80, 0x00], BasicHeader { fmt: 2, csid: 64 }),
            (&[0x00, 0xff], BasicHeader { fmt: 0, csid: 319 }),
            (&[0x41, 0x00, 0x01], BasicHeader { fmt: 1, csid: 320 }),
            (&[0xc1, 0xff, 0xff], BasicHeader { fmt: 3, csid: 65599 }),
        ];
        for (bytes, header) in cases {
            assert_eq!(BasicHeader::parse(bytes), Some((*header, bytes.len())));
            let mut out = BytesMut::new();
            header.encode(&mut out);
            assert_eq!(&out[..], *bytes, "{header:?}");
            for cut in 0..bytes.len() {
                assert_eq!(BasicHeader::parse(&bytes[..cut]), None);
            }
        }
    }

    #[test]
    fn message_header_golden_vectors() {
        let cases: &[(ChunkHeader, &[u8])] = &[
            (
                ChunkHeader::Type0 {
                    timestamp: 0x010203,
                    length: 0x000145,
                    type_id: 20,
                    stream_id: 1,
                },
                &[0x03, 0x01, 0x02, 0x03, 0x00, 0x01, 0x45, 0x14, 0x01, 0x00, 0x00, 0x00],
            ),
            (
                ChunkHeader::Type0 { timestamp: 0x0100_0000, length: 4, type_id: 9, stream_id: 1 },
                &[
                    0x03, 0xff, 0xff, 0xff, 0x00, 0x00, 0x04, 0x09, 0x01, 0x00, 0x00, 0x00, 0x01,
                    0x00, 0x00, 0x00,
                ],
            ),
            (
                ChunkHeader::Type1 { delta: 40, length: 300, type_id: 8 },
                &[0x43, 0x00, 0x00, 0x28, 0x00, 0x01, 0x2c, 0x08],
            ),
            (ChunkHeader::Type2 { delta: 33 }, &[0x83, 0x00, 0x00, 0x21]),
            (ChunkHeader::Type3, &[0xc3]),
        ];
        for (header, bytes) in cases {
            let mut out = BytesMut::new();
            header.encode(3, &mut out);
            assert_eq!(&out[..], *bytes, "{header:?}");
        }
    }
}
