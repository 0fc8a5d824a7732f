//! Reassembles messages from chunks, one partial message per chunk stream.
//!
//! The decoder never consumes a chunk until the whole chunk (header and its payload piece) is in
//! the input, so "need more bytes" is `Ok(None)` and calling again after more bytes arrive is
//! always correct, whatever the fragmentation.

use bytes::{Buf, Bytes, BytesMut};

use super::header::{BasicHeader, EXTENDED_TIMESTAMP_MARKER};
use super::{Limits, MessageHeader, RawMessage, DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE};
use crate::message::type_id;
use crate::time::RtmpTimestamp;

/// Why the chunk stream cannot be decoded any further. Each of these ends the connection: after
/// a framing error the position of the next chunk is unknown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// A chunk header declared a message longer than [`Limits::max_message_len`].
    MessageTooLong { csid: u32, length: u32, limit: u32 },
    /// More chunk streams than [`Limits::max_chunk_streams`].
    TooManyChunkStreams { limit: usize },
    /// More bytes held in partial messages than [`Limits::max_partial_bytes`].
    PartialBytesExceeded { limit: usize },
    /// A type 2 or 3 chunk on a chunk stream that has no previous header to refer to.
    NoPreviousHeader { csid: u32, fmt: u8 },
    /// A type 0 chunk arrived while a message on the same chunk stream was incomplete.
    NewMessageMidMessage { csid: u32 },
    /// A type 1 chunk changed the length or type of a message that was incomplete. Accepting it
    /// would corrupt the reassembly (the bug class of rml_rtmp's shared buffer).
    LengthChangedMidMessage { csid: u32, was: u32, now: u32 },
    /// Set Chunk Size of 0, or with the reserved top bit set, or a malformed payload.
    InvalidChunkSize(u32),
    /// A protocol control message (Set Chunk Size, Abort) shorter than its 4-byte body.
    ShortControlMessage { type_id: u8 },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::MessageTooLong { csid, length, limit } => {
                write!(f, "chunk stream {csid} declared a {length}-byte message (limit {limit})")
            }
            DecodeError::TooManyChunkStreams { limit } => {
                write!(f, "more than {limit} chunk streams in use")
            }
            DecodeError::PartialBytesExceeded { limit } => {
                write!(f, "more than {limit} bytes in partial messages")
            }
            DecodeError::NoPreviousHeader { csid, fmt } => {
                write!(f, "type {fmt} chunk on chunk stream {csid} with no previous header")
            }
            DecodeError::NewMessageMidMessage { csid } => {
                write!(f, "type 0 chunk on chunk stream {csid} while a message is incomplete")
            }
            DecodeError::LengthChangedMidMessage { csid, was, now } => {
                write!(f, "chunk stream {csid} changed message length {was} -> {now} mid-message")
            }
            DecodeError::InvalidChunkSize(size) => write!(f, "invalid chunk size {size}"),
            DecodeError::ShortControlMessage { type_id } => {
                write!(f, "protocol control message type {type_id} shorter than 4 bytes")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// What a chunk stream remembers between chunks.
#[derive(Debug)]
struct ChunkStream {
    csid: u32,
    /// Header of the current (or last) message.
    timestamp: RtmpTimestamp,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last timestamp field seen: absolute after type 0, a delta after types 1 and 2. A type 3
    /// chunk that starts a new message adds it again (spec 5.3.1.2.4).
    timestamp_field: u32,
    /// Whether the last header used an extended timestamp, so type 3 chunks may repeat it.
    extended: bool,
    /// Payload received so far of an incomplete message; `None` between messages.
    partial: Option<BytesMut>,
}

/// Incoming chunk stream state of one connection.
#[derive(Debug)]
pub struct ChunkDecoder {
    chunk_size: u32,
    limits: Limits,
    streams: Vec<ChunkStream>,
    partial_bytes: usize,
}

/// The parse of one chunk, computed before anything is committed.
struct ParsedChunk {
    /// Bytes of header (basic + message + extended timestamp) to consume.
    header_len: usize,
    /// Payload bytes of this chunk.
    piece_len: usize,
    /// `None` for a continuation of the message in progress.
    new_message: Option<NewMessage>,
}

struct NewMessage {
    timestamp: RtmpTimestamp,
    length: u32,
    type_id: u8,
    stream_id: u32,
    timestamp_field: u32,
    extended: bool,
}

impl ChunkDecoder {
    pub fn new(limits: Limits) -> Self {
        Self { chunk_size: DEFAULT_CHUNK_SIZE, limits, streams: Vec::new(), partial_bytes: 0 }
    }

    /// The chunk size the peer is currently using.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes held in partial messages, all chunk streams together.
    pub fn partial_bytes(&self) -> usize {
        self.partial_bytes
    }

    /// Chunk streams with state on this connection.
    pub fn chunk_stream_count(&self) -> usize {
        self.streams.len()
    }

    /// Applies a Set Chunk Size value (already masked of nothing: the top bit must be zero).
    pub fn set_chunk_size(&mut self, size: u32) -> Result<(), DecodeError> {
        if size == 0 || size > MAX_CHUNK_SIZE {
            return Err(DecodeError::InvalidChunkSize(size));
        }
        self.chunk_size = size;
        Ok(())
    }

    /// Decodes the next complete message from `input`, consuming the chunks it is made of.
    /// `Ok(None)` means the input holds no complete message yet; what was consumed is kept.
    ///
    /// Set Chunk Size and Abort are applied here, before the next chunk is read, because the
    /// very next bytes may already depend on them; they are returned as well.
    pub fn decode(&mut self, input: &mut BytesMut) -> Result<Option<RawMessage>, DecodeError> {
        loop {
            let Some((basic, parsed)) = self.parse_chunk(input)? else { return Ok(None) };
            if let Some(message) = self.commit_chunk(basic, parsed, input)? {
                self.apply_control(&message)?;
                return Ok(Some(message));
            }
        }
    }

    fn stream_index(&self, csid: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.csid == csid)
    }

    /// Reads the header of the next chunk without consuming anything.
    fn parse_chunk(&self, input: &[u8]) -> Result<Option<(BasicHeader, ParsedChunk)>, DecodeError> {
        let Some((basic, basic_len)) = BasicHeader::parse(input) else { return Ok(None) };
        let csid = basic.csid;
        let stream = self.stream_index(csid).map(|i| &self.streams[i]);
        let rest = &input[basic_len..];
        let message_header_len = [11usize, 7, 3, 0][usize::from(basic.fmt)];
        if rest.len() < message_header_len {
            return Ok(None);
        }
        let u24 = |b: &[u8]| u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        let mut header_len = basic_len + message_header_len;
        let read_extended = |field: u32, header_len: &mut usize| -> Option<(u32, bool)> {
            if field != EXTENDED_TIMESTAMP_MARKER {
                return Some((field, false));
            }
            let ext = input.get(*header_len..*header_len + 4)?;
            *header_len += 4;
            Some((u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]), true))
        };

        let in_progress = stream.and_then(|s| s.partial.as_ref()).map(|p| p.len());
        let new_message = match basic.fmt {
            0 => {
                if in_progress.is_some() {
                    return Err(DecodeError::NewMessageMidMessage { csid });
                }
                let Some((timestamp, extended)) = read_extended(u24(rest), &mut header_len) else {
                    return Ok(None);
                };
                let stream_id = u32::from_le_bytes([rest[7], rest[8], rest[9], rest[10]]);
                Some(NewMessage {
                    timestamp: RtmpTimestamp(timestamp),
                    length: u24(&rest[3..]),
                    type_id: rest[6],
                    stream_id,
                    timestamp_field: timestamp,
                    extended,
                })
            }
            1 | 2 => {
                // librtmp opens chunk stream 2 with a type 1 chunk (SRS logs the same quirk), so
                // a type 1 header on a fresh chunk stream starts from an all-zero previous header.
                let (prev_ts, prev_len, prev_type, prev_sid) = match stream {
                    Some(s) => (s.timestamp, s.length, s.type_id, s.stream_id),
                    None if basic.fmt == 1 => (RtmpTimestamp::ZERO, 0, 0, 0),
                    None => return Err(DecodeError::NoPreviousHeader { csid, fmt: basic.fmt }),
                };
                let Some((delta, extended)) = read_extended(u24(rest), &mut header_len) else {
                    return Ok(None);
                };
                let (length, type_id) =
                    if basic.fmt == 1 { (u24(&rest[3..]), rest[6]) } else { (prev_len, prev_type) };
                match in_progress {
                    // Some encoders repeat the header mid-message (SRS accepts a type 1 there);
                    // harmless only while the message keeps its shape.
                    Some(_) if length != prev_len || type_id != prev_type => {
                        return Err(DecodeError::LengthChangedMidMessage {
                            csid,
                            was: prev_len,
                            now: length,
                        });
                    }
                    Some(_) => None,
                    None => Some(NewMessage {
                        timestamp: prev_ts.add_delta(delta),
                        length,
                        type_id,
                        stream_id: prev_sid,
                        timestamp_field: delta,
                        extended,
                    }),
                }
            }
            _ => {
                let Some(s) = stream else {
                    return Err(DecodeError::NoPreviousHeader { csid, fmt: basic.fmt });
                };
                if s.extended {
                    // Adobe's spec repeats the extended timestamp on type 3 chunks; some
                    // encoders (older librtmp/ffmpeg builds) do not. As SRS does, take the next
                    // four bytes as the repeat only when they equal the last extended value.
                    // Decide on the bytes already here: one that differs settles it, so a
                    // short last chunk from such an encoder is not held back for more input.
                    let expected = s.timestamp_field.to_be_bytes();
                    let available = &input[header_len.min(input.len())..];
                    let seen = available.len().min(4);
                    if available[..seen] == expected[..seen] {
                        if seen < 4 {
                            return Ok(None);
                        }
                        header_len += 4;
                    }
                }
                match in_progress {
                    Some(_) => None,
                    None => Some(NewMessage {
                        timestamp: s.timestamp.add_delta(s.timestamp_field),
                        length: s.length,
                        type_id: s.type_id,
                        stream_id: s.stream_id,
                        timestamp_field: s.timestamp_field,
                        extended: s.extended,
                    }),
                }
            }
        };

        let (length, received) = match (&new_message, stream) {
            (Some(m), _) => (m.length, 0),
            (None, Some(s)) => (s.length, in_progress.unwrap_or(0)),
            (None, None) => return Err(DecodeError::NoPreviousHeader { csid, fmt: basic.fmt }),
        };
        if length > self.limits.max_message_len {
            return Err(DecodeError::MessageTooLong {
                csid,
                length,
                limit: self.limits.max_message_len,
            });
        }
        if stream.is_none() && self.streams.len() >= self.limits.max_chunk_streams {
            return Err(DecodeError::TooManyChunkStreams { limit: self.limits.max_chunk_streams });
        }
        let remaining = (length as usize).saturating_sub(received);
        let piece_len = remaining.min(self.chunk_size as usize);
        if piece_len < remaining && self.partial_bytes + piece_len > self.limits.max_partial_bytes {
            return Err(DecodeError::PartialBytesExceeded { limit: self.limits.max_partial_bytes });
        }
        if input.len() < header_len + piece_len {
            return Ok(None);
        }
        Ok(Some((basic, ParsedChunk { header_len, piece_len, new_message })))
    }

    /// Consumes a fully available chunk and returns the message it completes, if any.
    fn commit_chunk(
        &mut self,
        basic: BasicHeader,
        parsed: ParsedChunk,
        input: &mut BytesMut,
    ) -> Result<Option<RawMessage>, DecodeError> {
        input.advance(parsed.header_len);
        let index = match self.stream_index(basic.csid) {
            Some(i) => i,
            None => {
                self.streams.push(ChunkStream {
                    csid: basic.csid,
                    timestamp: RtmpTimestamp::ZERO,
                    length: 0,
                    type_id: 0,
                    stream_id: 0,
                    timestamp_field: 0,
                    extended: false,
                    partial: None,
                });
                self.streams.len() - 1
            }
        };
        let stream = &mut self.streams[index];
        if let Some(m) = parsed.new_message {
            stream.timestamp = m.timestamp;
            stream.length = m.length;
            stream.type_id = m.type_id;
            stream.stream_id = m.stream_id;
            stream.timestamp_field = m.timestamp_field;
            stream.extended = m.extended;
        }
        let header = MessageHeader {
            timestamp: stream.timestamp,
            type_id: stream.type_id,
            stream_id: stream.stream_id,
        };
        let length = stream.length as usize;
        let piece = &input[..parsed.piece_len];

        let payload = match stream.partial.take() {
            // The common case with a large chunk size: the whole message in one chunk.
            None if parsed.piece_len == length => Some(Bytes::copy_from_slice(piece)),
            None => {
                // Reserve only this chunk's bytes, never the declared length: what a partial
                // message holds in memory is what it received (growth is amortised doubling).
                let mut partial = BytesMut::with_capacity(parsed.piece_len);
                partial.extend_from_slice(piece);
                self.partial_bytes += parsed.piece_len;
                stream.partial = Some(partial);
                None
            }
            Some(mut partial) => {
                partial.extend_from_slice(piece);
                self.partial_bytes += parsed.piece_len;
                if partial.len() == length {
                    self.partial_bytes -= length;
                    Some(partial.freeze())
                } else {
                    stream.partial = Some(partial);
                    None
                }
            }
        };
        input.advance(parsed.piece_len);
        Ok(payload.map(|payload| RawMessage { csid: basic.csid, header, payload }))
    }

    fn apply_control(&mut self, message: &RawMessage) -> Result<(), DecodeError> {
        let type_id = message.header.type_id;
        if message.header.stream_id != 0
            || (type_id != type_id::SET_CHUNK_SIZE && type_id != type_id::ABORT)
        {
            return Ok(());
        }
        let Some(value) = message.payload.get(..4) else {
            return Err(DecodeError::ShortControlMessage { type_id });
        };
        let value = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
        if type_id == type_id::SET_CHUNK_SIZE {
            self.set_chunk_size(value)
        } else {
            if let Some(stream) = self.streams.iter_mut().find(|s| s.csid == value) {
                if let Some(partial) = stream.partial.take() {
                    self.partial_bytes -= partial.len();
                }
            }
            Ok(())
        }
    }
}
