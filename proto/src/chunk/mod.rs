//! The RTMP chunk stream (RTMP spec 1.0, section 5.3): how messages are cut into chunks, and
//! interleaved on the wire.
//!
//! [`ChunkDecoder`] reassembles messages per chunk stream id (csid), so interleaved audio and
//! video never touch each other's partial payload, and enforces [`Limits`] before it buffers a
//! single byte. [`ChunkEncoder`] writes a message as one type-0 chunk followed by type-3
//! continuations: every message it emits is self-contained, which is what lets the relay encode
//! a media message once and hand the same bytes to every subscriber, whatever each subscriber
//! received before.

mod decoder;
mod encoder;
mod header;

pub use decoder::{ChunkDecoder, DecodeError};
pub use encoder::ChunkEncoder;
pub use header::{BasicHeader, ChunkHeader, EXTENDED_TIMESTAMP_MARKER};

use bytes::Bytes;

use crate::time::RtmpTimestamp;

/// The chunk size both sides start with, until a Set Chunk Size says otherwise.
pub const DEFAULT_CHUNK_SIZE: u32 = 128;
/// The largest chunk size the spec allows (the top bit of Set Chunk Size must be zero).
pub const MAX_CHUNK_SIZE: u32 = 0x7fff_ffff;
/// Largest chunk stream id a three-byte basic header can carry.
pub const MAX_CSID: u32 = 65599;

/// The message-level part of a chunk header: what the decoder reassembles and the encoder cuts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    pub timestamp: RtmpTimestamp,
    pub type_id: u8,
    /// Message stream id: 0 for the connection, otherwise the id `createStream` handed out.
    pub stream_id: u32,
}

/// One reassembled message with its chunk stream id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMessage {
    pub csid: u32,
    pub header: MessageHeader,
    pub payload: Bytes,
}

/// Bounds on what a peer can make the decoder hold. Each one names the attack it stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message length accepted in a chunk header. A header may declare up to 16 MiB;
    /// refusing large declarations up front stops a peer from making us buffer them
    /// (ffmpeg CVE-2016-10191 came from trusting this field). The default, 8 MiB, is far above
    /// a 4K keyframe.
    pub max_message_len: u32,
    /// Most chunk streams with state on one connection. Each id (up to 65599) keeps a header
    /// and maybe a partial message: without a cap, thousands of ids with one byte pending each
    /// grow memory per connection. Real clients use fewer than 10.
    pub max_chunk_streams: usize,
    /// Most payload bytes held in partially received messages on one connection, all chunk
    /// streams together. Bytes are buffered only as they arrive, never reserved from a declared
    /// length, and this caps the sum.
    pub max_partial_bytes: usize,
}

impl Limits {
    /// The defaults, usable in constant positions (the server's flags take theirs from here).
    pub const DEFAULT: Limits = Limits {
        max_message_len: 8 * 1024 * 1024,
        max_chunk_streams: 64,
        max_partial_bytes: 16 * 1024 * 1024,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

#[cfg(test)]
mod tests;
