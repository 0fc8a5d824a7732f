//! Cuts messages into chunks.
//!
//! Every message starts with a type 0 header and continues with type 3 headers. Header
//! compression (types 1 and 2) would save at most 11 bytes a message, and it makes each
//! message's bytes depend on what the same receiver got before: a relay could then no longer
//! encode a media message once and send those bytes to subscribers that joined at different
//! times or skipped frames. Self-contained messages are what makes encode-once fan-out correct.

use bytes::{BufMut, BytesMut};

use super::header::{BasicHeader, ChunkHeader, EXTENDED_TIMESTAMP_MARKER};
use super::{MessageHeader, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};

/// Outgoing chunk size of one connection (or of one shared frame encoding).
#[derive(Debug, Clone, Copy)]
pub struct ChunkEncoder {
    chunk_size: u32,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self { chunk_size: DEFAULT_CHUNK_SIZE }
    }
}

impl ChunkEncoder {
    /// An encoder for `chunk_size`, clamped to 1..=[`MAX_CHUNK_SIZE`].
    pub fn new(chunk_size: u32) -> Self {
        Self { chunk_size: chunk_size.clamp(1, MAX_CHUNK_SIZE) }
    }

    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Changes the chunk size for the messages encoded after this call. The caller must have
    /// sent (or be sending first) the Set Chunk Size message that announces it.
    pub fn set_chunk_size(&mut self, chunk_size: u32) {
        self.chunk_size = chunk_size.clamp(1, MAX_CHUNK_SIZE);
    }

    /// Bytes [`Self::encode`] appends for a message of `payload_len` bytes.
    pub fn encoded_len(&self, csid: u32, header: &MessageHeader, payload_len: usize) -> usize {
        let basic = match csid {
            0..=63 => 1,
            64..=319 => 2,
            _ => 3,
        };
        let extended = if header.timestamp.0 >= EXTENDED_TIMESTAMP_MARKER { 4 } else { 0 };
        let chunks = payload_len.div_ceil(self.chunk_size as usize).max(1);
        payload_len + basic + 11 + extended + (chunks - 1) * (basic + extended)
    }

    /// Appends the chunks of one message to `out`. Payloads longer than the 24-bit length field
    /// are the caller's error; they are written truncated to 16 MiB - 1 rather than corrupting
    /// the framing.
    pub fn encode(&self, csid: u32, header: &MessageHeader, payload: &[u8], out: &mut BytesMut) {
        let payload = &payload[..payload.len().min(0xff_ffff)];
        out.reserve(self.encoded_len(csid, header, payload.len()));
        let timestamp = header.timestamp.0;
        ChunkHeader::Type0 {
            timestamp,
            length: payload.len() as u32,
            type_id: header.type_id,
            stream_id: header.stream_id,
        }
        .encode(csid, out);
        let mut pieces = payload.chunks(self.chunk_size as usize);
        if let Some(first) = pieces.next() {
            out.extend_from_slice(first);
        }
        for piece in pieces {
            BasicHeader { fmt: 3, csid }.encode(out);
            // Adobe's spec repeats the extended timestamp on type 3 chunks, and ffmpeg, OBS
            // and Flash read it there.
            if timestamp >= EXTENDED_TIMESTAMP_MARKER {
                out.put_u32(timestamp);
            }
            out.extend_from_slice(piece);
        }
    }
}
