//! A player's chunk stream reader: per-chunk-stream reassembly that never copies media payloads.
//!
//! A player measures each audio and video message by its first bytes: the FLV codec header and
//! the 16-byte [`crate::marker`] behind it. [`rtmp_proto::chunk::ChunkDecoder`] copies every
//! payload into a message of its own (and the driver first copies every read into the
//! connection's input buffer); at 2.5 Mbit/s to 1000 players that is 650 MB/s of `memmove` for
//! bytes nobody looks at. [`PlayDemux`] reads the same chunk stream straight out of whatever
//! buffer the socket read filled, keeps the first [`MEDIA_PREFIX_LEN`] bytes of each audio and
//! video message and only counts the rest. Every other message (commands, user control, data,
//! aggregates) is reassembled whole and handed on, for the session to interpret.
//!
//! It is streaming: a chunk header cut by a read boundary is carried over (at most
//! [`MAX_HEADER_LEN`] bytes), a payload piece is consumed as far as it arrived. So it keeps no
//! input buffer, and what one connection holds is its chunk stream headers, one prefix per chunk
//! stream and the partial non-media messages.
//!
//! Framing follows [`rtmp_proto::chunk::ChunkDecoder`] rule for rule, with the same
//! [`DecodeError`]s and [`Limits`]: header formats 0-3, extended timestamps (including the type 3
//! repeat that some encoders leave out), a type 1 header on a fresh chunk stream, Set Chunk Size
//! and Abort applied before the next chunk. The one difference is memory: media is never
//! buffered, so [`Limits::max_partial_bytes`] bounds only the non-media messages in progress.
//! The tests below hold it to the decoder's output at every fragmentation.

use rtmp_proto::chunk::{
    BasicHeader, DecodeError, Limits, MessageHeader, DEFAULT_CHUNK_SIZE, EXTENDED_TIMESTAMP_MARKER,
    MAX_CHUNK_SIZE,
};
use rtmp_proto::message::type_id;
use rtmp_proto::session::MediaKind;
use rtmp_proto::time::RtmpTimestamp;

/// Bytes of each audio and video payload a [`MediaHead`] keeps: an AVC tag header (5 bytes)
/// and a marker (16) with room to spare.
pub const MEDIA_PREFIX_LEN: usize = 32;

/// Longest chunk header: 3-byte basic header, 11-byte type 0 header, 4-byte extended timestamp.
pub const MAX_HEADER_LEN: usize = 3 + 11 + 4;

/// An audio or video message, without its payload past the first [`MEDIA_PREFIX_LEN`] bytes.
#[derive(Debug, Clone, Copy)]
pub struct MediaHead {
    /// [`MediaKind::Audio`] or [`MediaKind::Video`].
    pub kind: MediaKind,
    pub stream_id: u32,
    pub timestamp: RtmpTimestamp,
    /// Length of the whole payload.
    pub len: u32,
    prefix: [u8; MEDIA_PREFIX_LEN],
}

impl MediaHead {
    /// The head of a message whose payload is `payload` (for messages that did not come through
    /// a [`PlayDemux`], e.g. the parts of an aggregate).
    pub fn new(kind: MediaKind, stream_id: u32, timestamp: RtmpTimestamp, payload: &[u8]) -> Self {
        let mut prefix = [0; MEDIA_PREFIX_LEN];
        let n = payload.len().min(MEDIA_PREFIX_LEN);
        prefix[..n].copy_from_slice(&payload[..n]);
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        Self { kind, stream_id, timestamp, len, prefix }
    }

    /// The first `min(len, MEDIA_PREFIX_LEN)` bytes of the payload.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix[..(self.len as usize).min(MEDIA_PREFIX_LEN)]
    }
}

/// Bytes past the payload's end are left over from an earlier message: not compared.
impl PartialEq for MediaHead {
    fn eq(&self, other: &Self) -> bool {
        (self.kind, self.stream_id, self.timestamp, self.len, self.prefix())
            == (other.kind, other.stream_id, other.timestamp, other.len, other.prefix())
    }
}

impl Eq for MediaHead {}

/// One reassembled message.
#[derive(Debug, PartialEq, Eq)]
pub enum Demuxed<'a> {
    /// Audio (type 8) or video (type 9).
    Media(&'a MediaHead),
    /// Any other message, whole (protocol control messages included).
    Other { csid: u32, header: MessageHeader, payload: &'a [u8] },
}

/// What a chunk stream remembers between chunks.
#[derive(Debug)]
struct ChunkStream {
    csid: u32,
    timestamp: RtmpTimestamp,
    length: u32,
    type_id: u8,
    stream_id: u32,
    /// The last timestamp field: absolute after type 0, a delta after types 1 and 2.
    timestamp_field: u32,
    /// Whether the last header used an extended timestamp.
    extended: bool,
    /// Bytes received of the message in progress; `None` between messages.
    received: Option<u32>,
    /// The first bytes of the media message in progress.
    prefix: [u8; MEDIA_PREFIX_LEN],
    /// The non-media message in progress (capacity kept between messages).
    body: Vec<u8>,
}

impl ChunkStream {
    fn is_media(&self) -> bool {
        self.type_id == type_id::AUDIO || self.type_id == type_id::VIDEO
    }
}

/// A chunk header, parsed before anything is committed.
struct Parsed {
    csid: u32,
    header_len: usize,
    piece_len: usize,
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

#[derive(Debug, Clone, Copy)]
enum State {
    /// Next comes a chunk header.
    Header,
    /// `left` payload bytes of the current chunk of `streams[index]` are still to come.
    Payload { index: usize, left: usize },
}

/// Incoming chunk stream of one player connection, from the first byte after the handshake.
#[derive(Debug)]
pub struct PlayDemux {
    chunk_size: u32,
    limits: Limits,
    streams: Vec<ChunkStream>,
    state: State,
    /// A chunk header cut by the end of the last input.
    carry: [u8; MAX_HEADER_LEN],
    carry_len: usize,
    /// Bytes held in partial non-media messages.
    partial_bytes: usize,
    /// Bytes fed so far, and at the last acknowledgement.
    received: u64,
    last_ack: u64,
    /// The peer's Window Acknowledgement Size.
    window: Option<u32>,
}

impl PlayDemux {
    pub fn new(limits: Limits) -> Self {
        Self {
            chunk_size: DEFAULT_CHUNK_SIZE,
            limits,
            streams: Vec::new(),
            state: State::Header,
            carry: [0; MAX_HEADER_LEN],
            carry_len: 0,
            partial_bytes: 0,
            received: 0,
            last_ack: 0,
            window: None,
        }
    }

    /// The chunk size the peer is using.
    pub fn chunk_size(&self) -> u32 {
        self.chunk_size
    }

    /// Bytes fed so far.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// The sequence number to acknowledge, when the bytes received since the last
    /// acknowledgement reached the peer's Window Acknowledgement Size (as
    /// [`rtmp_proto::session::ClientSession`] acknowledges).
    pub fn ack_due(&mut self) -> Option<u32> {
        let window = u64::from(self.window?);
        if window > 0 && self.received - self.last_ack >= window {
            self.last_ack = self.received;
            return Some(self.received as u32);
        }
        None
    }

    /// Consumes `data` (the next bytes of the chunk stream, any amount) and calls `on_message`
    /// for every message it completes, in order. After an error the stream cannot be read on.
    pub fn feed(
        &mut self,
        data: &[u8],
        on_message: &mut impl FnMut(Demuxed<'_>),
    ) -> Result<(), DecodeError> {
        self.received += data.len() as u64;
        self.consume(data, on_message)
    }

    fn consume(
        &mut self,
        mut data: &[u8],
        on_message: &mut impl FnMut(Demuxed<'_>),
    ) -> Result<(), DecodeError> {
        while !data.is_empty() {
            match self.state {
                State::Payload { index, left } => {
                    let n = left.min(data.len());
                    self.take_payload(index, &data[..n]);
                    data = &data[n..];
                    if n == left {
                        self.end_chunk(index, on_message)?;
                    } else {
                        self.state = State::Payload { index, left: left - n };
                    }
                }
                State::Header if self.carry_len == 0 => match self.parse(data)? {
                    Some(parsed) => {
                        data = &data[parsed.header_len..];
                        self.start_chunk(parsed, on_message)?;
                    }
                    None => {
                        // A header is never longer than MAX_HEADER_LEN: with that many bytes
                        // `parse` decides.
                        self.carry[..data.len()].copy_from_slice(data);
                        self.carry_len = data.len();
                        return Ok(());
                    }
                },
                State::Header => {
                    let carried = self.carry_len;
                    let take = (MAX_HEADER_LEN - carried).min(data.len());
                    let mut bytes = self.carry;
                    bytes[carried..carried + take].copy_from_slice(&data[..take]);
                    let Some(parsed) = self.parse(&bytes[..carried + take])? else {
                        self.carry = bytes;
                        self.carry_len = carried + take;
                        data = &data[take..];
                        continue;
                    };
                    self.carry_len = 0;
                    let header_len = parsed.header_len;
                    self.start_chunk(parsed, on_message)?;
                    if header_len >= carried {
                        data = &data[header_len - carried..];
                    } else {
                        // The carried bytes were a type 3 header and payload that might have
                        // been an extended timestamp repeat, and were not: they are payload.
                        self.consume(&bytes[header_len..carried], on_message)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn stream_index(&self, csid: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.csid == csid)
    }

    /// Reads the chunk header at the start of `input` without committing anything; `None` when
    /// more bytes are needed. The same rules as `ChunkDecoder::parse_chunk`.
    fn parse(&self, input: &[u8]) -> Result<Option<Parsed>, DecodeError> {
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

        let in_progress = stream.and_then(|s| s.received);
        let new_message = match basic.fmt {
            0 => {
                if in_progress.is_some() {
                    return Err(DecodeError::NewMessageMidMessage { csid });
                }
                let Some((timestamp, extended)) = read_extended(u24(rest), &mut header_len) else {
                    return Ok(None);
                };
                Some(NewMessage {
                    timestamp: RtmpTimestamp(timestamp),
                    length: u24(&rest[3..]),
                    type_id: rest[6],
                    stream_id: u32::from_le_bytes([rest[7], rest[8], rest[9], rest[10]]),
                    timestamp_field: timestamp,
                    extended,
                })
            }
            1 | 2 => {
                // librtmp opens a chunk stream with a type 1 chunk: it starts from all zeros.
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
                    // The extended timestamp repeat on type 3 chunks, which some encoders leave
                    // out: taken only when the next four bytes equal the last extended value,
                    // decided on the bytes already here (as ChunkDecoder does).
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

        let (length, type_id, received) = match (&new_message, stream) {
            (Some(m), _) => (m.length, m.type_id, 0),
            (None, Some(s)) => (s.length, s.type_id, in_progress.unwrap_or(0)),
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
        let remaining = length.saturating_sub(received) as usize;
        let piece_len = remaining.min(self.chunk_size as usize);
        let buffered = type_id != type_id::AUDIO && type_id != type_id::VIDEO;
        if buffered
            && piece_len < remaining
            && self.partial_bytes + piece_len > self.limits.max_partial_bytes
        {
            return Err(DecodeError::PartialBytesExceeded { limit: self.limits.max_partial_bytes });
        }
        Ok(Some(Parsed { csid, header_len, piece_len, new_message }))
    }

    /// Commits a parsed header: the payload piece comes next.
    fn start_chunk(
        &mut self,
        parsed: Parsed,
        on_message: &mut impl FnMut(Demuxed<'_>),
    ) -> Result<(), DecodeError> {
        let index = match self.stream_index(parsed.csid) {
            Some(i) => i,
            None => {
                self.streams.push(ChunkStream {
                    csid: parsed.csid,
                    timestamp: RtmpTimestamp::ZERO,
                    length: 0,
                    type_id: 0,
                    stream_id: 0,
                    timestamp_field: 0,
                    extended: false,
                    received: None,
                    prefix: [0; MEDIA_PREFIX_LEN],
                    body: Vec::new(),
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
            stream.received = Some(0);
            stream.body.clear();
        }
        if parsed.piece_len == 0 {
            // Only an empty message has an empty piece.
            return self.end_chunk(index, on_message);
        }
        self.state = State::Payload { index, left: parsed.piece_len };
        Ok(())
    }

    fn take_payload(&mut self, index: usize, bytes: &[u8]) {
        let stream = &mut self.streams[index];
        let received = stream.received.unwrap_or(0) as usize;
        if stream.is_media() {
            if received < MEDIA_PREFIX_LEN {
                let n = (MEDIA_PREFIX_LEN - received).min(bytes.len());
                stream.prefix[received..received + n].copy_from_slice(&bytes[..n]);
            }
        } else {
            stream.body.extend_from_slice(bytes);
            self.partial_bytes += bytes.len();
        }
        stream.received = Some((received + bytes.len()) as u32);
    }

    /// The current chunk's payload is in: hands on the message if it is complete.
    fn end_chunk(
        &mut self,
        index: usize,
        on_message: &mut impl FnMut(Demuxed<'_>),
    ) -> Result<(), DecodeError> {
        self.state = State::Header;
        let stream = &mut self.streams[index];
        if stream.received != Some(stream.length) {
            return Ok(());
        }
        stream.received = None;
        let header = MessageHeader {
            timestamp: stream.timestamp,
            type_id: stream.type_id,
            stream_id: stream.stream_id,
        };
        if stream.is_media() {
            let head = MediaHead {
                kind: if header.type_id == type_id::AUDIO {
                    MediaKind::Audio
                } else {
                    MediaKind::Video
                },
                stream_id: header.stream_id,
                timestamp: header.timestamp,
                len: stream.length,
                prefix: stream.prefix,
            };
            on_message(Demuxed::Media(&head));
            return Ok(());
        }
        self.partial_bytes -= stream.body.len();
        let csid = stream.csid;
        on_message(Demuxed::Other { csid, header, payload: &stream.body });
        self.apply_control(index)
    }

    /// Set Chunk Size and Abort take effect before the next chunk (as in `ChunkDecoder`); the
    /// Window Acknowledgement Size is remembered for [`PlayDemux::ack_due`].
    fn apply_control(&mut self, index: usize) -> Result<(), DecodeError> {
        let stream = &self.streams[index];
        let type_id = stream.type_id;
        if stream.stream_id != 0
            || !matches!(
                type_id,
                type_id::SET_CHUNK_SIZE | type_id::ABORT | type_id::WINDOW_ACK_SIZE
            )
        {
            return Ok(());
        }
        let Some(value) = stream.body.get(..4) else {
            if type_id == type_id::WINDOW_ACK_SIZE {
                // The session reports a short one; nothing to apply here.
                return Ok(());
            }
            return Err(DecodeError::ShortControlMessage { type_id });
        };
        let value = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
        match type_id {
            type_id::SET_CHUNK_SIZE => {
                if value == 0 || value > MAX_CHUNK_SIZE {
                    return Err(DecodeError::InvalidChunkSize(value));
                }
                self.chunk_size = value;
            }
            type_id::ABORT => {
                if let Some(stream) = self.streams.iter_mut().find(|s| s.csid == value) {
                    if stream.received.take().is_some() && !stream.is_media() {
                        self.partial_bytes -= stream.body.len();
                        stream.body.clear();
                    }
                }
            }
            _ => self.window = Some(value),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use rtmp_proto::chunk::{ChunkDecoder, ChunkEncoder, ChunkHeader, RawMessage};
    use rtmp_proto::message::ControlMessage;

    use super::*;

    /// xorshift64: test inputs, reproducible by seed.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }

        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// What a message looks like after the demuxer: media by head, the rest whole.
    #[derive(Debug, PartialEq, Eq)]
    enum Seen {
        Media(MediaHead),
        Other { csid: u32, header: MessageHeader, payload: Vec<u8> },
    }

    fn seen_of(message: Demuxed<'_>) -> Seen {
        match message {
            Demuxed::Media(head) => Seen::Media(*head),
            Demuxed::Other { csid, header, payload } => {
                Seen::Other { csid, header, payload: payload.to_vec() }
            }
        }
    }

    /// The reference: rtmp-proto's decoder over the whole input.
    fn reference(bytes: &[u8]) -> Result<Vec<Seen>, DecodeError> {
        let mut decoder = ChunkDecoder::new(Limits::default());
        let mut input = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(RawMessage { csid, header, payload }) = decoder.decode(&mut input)? {
            out.push(match header.type_id {
                type_id::AUDIO | type_id::VIDEO => {
                    let kind = if header.type_id == type_id::AUDIO {
                        MediaKind::Audio
                    } else {
                        MediaKind::Video
                    };
                    Seen::Media(MediaHead::new(kind, header.stream_id, header.timestamp, &payload))
                }
                _ => Seen::Other { csid, header, payload: payload.to_vec() },
            });
        }
        Ok(out)
    }

    /// The demuxer over `bytes` cut into pieces of `sizes` (cycled).
    fn demux(bytes: &[u8], sizes: &[usize]) -> Result<Vec<Seen>, DecodeError> {
        let mut demux = PlayDemux::new(Limits::default());
        let mut out = Vec::new();
        let mut rest = bytes;
        for &size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (piece, tail) = rest.split_at(size.clamp(1, rest.len()));
            demux.feed(piece, &mut |m| out.push(seen_of(m)))?;
            rest = tail;
        }
        assert_eq!(demux.received(), bytes.len() as u64);
        Ok(out)
    }

    fn control(message: ControlMessage, out: &mut BytesMut, encoder: &mut ChunkEncoder) {
        let mut payload = BytesMut::new();
        message.encode_payload(&mut payload);
        let header = MessageHeader {
            timestamp: RtmpTimestamp::ZERO,
            type_id: message.type_id(),
            stream_id: 0,
        };
        encoder.encode(2, &header, &payload, out);
        if let ControlMessage::SetChunkSize(size) = message {
            encoder.set_chunk_size(size);
        }
    }

    fn payload(rng: &mut Rng, len: usize) -> Vec<u8> {
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    /// A server-like stream: control messages, commands, metadata and interleaved audio and
    /// video with every header format, extended timestamps and chunk size changes.
    fn random_stream(seed: u64, with_extended_repeat: bool) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut out = BytesMut::new();
        let mut encoder = ChunkEncoder::default();
        control(ControlMessage::WindowAckSize(2_500_000), &mut out, &mut encoder);
        control(ControlMessage::SetChunkSize(4096), &mut out, &mut encoder);
        let command = MessageHeader { timestamp: RtmpTimestamp::ZERO, type_id: 20, stream_id: 0 };
        encoder.encode(3, &command, &payload(&mut rng, 300), &mut out);
        // Per media chunk stream: the previous message's (timestamp, length, type).
        let mut previous: [Option<(u32, usize, u8)>; 2] = [None, None];
        let mut time = if with_extended_repeat { 0x00ff_fff0 } else { 1000 };
        for i in 0..200 {
            let roll = rng.next_u64() % 100;
            if roll < 3 {
                let size = [128u32, 1000, 4096, 60_000][(rng.next_u64() % 4) as usize];
                control(ControlMessage::SetChunkSize(size), &mut out, &mut encoder);
                continue;
            }
            if roll < 6 {
                let data =
                    MessageHeader { timestamp: RtmpTimestamp(time), type_id: 18, stream_id: 1 };
                encoder.encode(5, &data, &payload(&mut rng, 500), &mut out);
                continue;
            }
            let video = roll % 2 == 0;
            let (csid, type_id, len) = if video {
                (7, type_id::VIDEO, [5usize, 21, 40, 9000, 70_000][(rng.next_u64() % 5) as usize])
            } else {
                (6, type_id::AUDIO, [2usize, 18, 371][(rng.next_u64() % 3) as usize])
            };
            let body = payload(&mut rng, len);
            time = time.wrapping_add(if with_extended_repeat { 40 } else { (i % 3) * 20 + 1 });
            let slot = &mut previous[usize::from(video)];
            let chunk_size = encoder.chunk_size() as usize;
            // Pick the most compressed header that still says what changed.
            let header = match *slot {
                Some((t, l, ty)) if l == len && ty == type_id && rng.next_u64() % 2 == 0 => {
                    ChunkHeader::Type2 { delta: time.wrapping_sub(t) }
                }
                Some((t, _, _)) => {
                    ChunkHeader::Type1 { delta: time.wrapping_sub(t), length: len as u32, type_id }
                }
                None => ChunkHeader::Type0 {
                    timestamp: time,
                    length: len as u32,
                    type_id,
                    stream_id: 1,
                },
            };
            let field = match header {
                ChunkHeader::Type0 { timestamp, .. } => timestamp,
                ChunkHeader::Type1 { delta, .. } | ChunkHeader::Type2 { delta } => delta,
                ChunkHeader::Type3 => 0,
            };
            header.encode(csid, &mut out);
            let mut pieces = body.chunks(chunk_size);
            out.extend_from_slice(pieces.next().unwrap_or(&[]));
            for piece in pieces {
                BasicHeader { fmt: 3, csid }.encode(&mut out);
                if field >= EXTENDED_TIMESTAMP_MARKER && rng.next_u64() % 2 == 0 {
                    out.extend_from_slice(&field.to_be_bytes());
                }
                out.extend_from_slice(piece);
            }
            *slot = Some((time, len, type_id));
        }
        out.to_vec()
    }

    #[test]
    fn matches_the_decoder_at_every_fragmentation() {
        for seed in 1..=6 {
            for extended in [false, true] {
                let bytes = random_stream(seed, extended);
                let expected = reference(&bytes).expect("reference decodes");
                assert!(expected.len() > 150, "{}", expected.len());
                // Byte by byte is slow in debug builds: one seed is enough for it.
                let tiny: &[&[usize]] = if seed == 1 { &[&[1], &[2]] } else { &[] };
                for sizes in tiny.iter().copied().chain([
                    &[usize::MAX][..],
                    &[3, 1, 17],
                    &[7, 128, 5],
                    &[4096],
                    &[32 * 1024],
                    &[65_536, 11],
                ]) {
                    let got = demux(&bytes, sizes).expect("demux decodes");
                    assert_eq!(got.len(), expected.len(), "seed {seed} {extended} {sizes:?}");
                    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                        assert_eq!(g, e, "seed {seed} extended {extended} sizes {sizes:?} #{i}");
                    }
                }
            }
        }
    }

    #[test]
    fn type3_without_the_extended_repeat_is_payload() {
        // A 300-byte video message at an extended timestamp, chunk size 128, whose continuation
        // chunks do not repeat the timestamp; its payload starts with bytes that look like the
        // start of the repeat, so a reader has to look ahead.
        let ts: u32 = 0x0100_0000;
        let mut body = vec![0u8; 300];
        body[128] = 0x01; // equals the first byte of the repeat
        body[129] = 0x00;
        body[130] = 0x00;
        body[131] = 0x01; // differs from the repeat's last byte
        let mut out = BytesMut::new();
        ChunkHeader::Type0 { timestamp: ts, length: 300, type_id: 9, stream_id: 1 }
            .encode(7, &mut out);
        out.extend_from_slice(&body[..128]);
        BasicHeader { fmt: 3, csid: 7 }.encode(&mut out);
        out.extend_from_slice(&body[128..256]);
        BasicHeader { fmt: 3, csid: 7 }.encode(&mut out);
        out.extend_from_slice(&body[256..]);
        let expected = reference(&out).unwrap();
        assert_eq!(expected.len(), 1);
        for size in 1..=20 {
            assert_eq!(demux(&out, &[size]).unwrap(), expected, "pieces of {size}");
        }
    }

    #[test]
    fn errors_as_the_decoder_does() {
        let cases: Vec<Vec<u8>> = vec![
            // Type 2 on a fresh chunk stream.
            vec![0x87, 0, 0, 1],
            // Type 3 on a fresh chunk stream.
            vec![0xc7],
            // A message longer than the limit.
            {
                let mut out = BytesMut::new();
                ChunkHeader::Type0 { timestamp: 0, length: 0xff_ffff, type_id: 9, stream_id: 1 }
                    .encode(7, &mut out);
                out.to_vec()
            },
            // A type 0 chunk in the middle of a message.
            {
                let mut out = BytesMut::new();
                let header =
                    ChunkHeader::Type0 { timestamp: 0, length: 200, type_id: 9, stream_id: 1 };
                header.encode(7, &mut out);
                out.extend_from_slice(&[0; 128]);
                header.encode(7, &mut out);
                out.to_vec()
            },
            // Set Chunk Size 0.
            {
                let mut out = BytesMut::new();
                ChunkHeader::Type0 { timestamp: 0, length: 4, type_id: 1, stream_id: 0 }
                    .encode(2, &mut out);
                out.extend_from_slice(&[0; 4]);
                out.to_vec()
            },
        ];
        for bytes in cases {
            let expected = reference(&bytes).expect_err("reference refuses");
            for size in [1, 3, usize::MAX] {
                assert_eq!(demux(&bytes, &[size]).expect_err("demux refuses"), expected);
            }
        }
    }

    #[test]
    fn acknowledges_by_the_peer_window() {
        let mut out = BytesMut::new();
        let mut encoder = ChunkEncoder::default();
        control(ControlMessage::WindowAckSize(1000), &mut out, &mut encoder);
        let mut demux = PlayDemux::new(Limits::default());
        demux.feed(&out, &mut |_| {}).unwrap();
        assert_eq!(demux.ack_due(), None);
        let mut media = BytesMut::new();
        let header = MessageHeader { timestamp: RtmpTimestamp(1), type_id: 8, stream_id: 1 };
        encoder.encode(6, &header, &[0xaf; 1000], &mut media);
        demux.feed(&media, &mut |_| {}).unwrap();
        let total = (out.len() + media.len()) as u32;
        assert_eq!(demux.ack_due(), Some(total));
        assert_eq!(demux.ack_due(), None);
    }

    #[test]
    fn media_heads_keep_only_the_prefix() {
        let payload: Vec<u8> = (0..100).collect();
        let head = MediaHead::new(MediaKind::Video, 1, RtmpTimestamp(5), &payload);
        assert_eq!(head.len, 100);
        assert_eq!(head.prefix(), &payload[..MEDIA_PREFIX_LEN]);
        let short = MediaHead::new(MediaKind::Audio, 1, RtmpTimestamp(5), &payload[..3]);
        assert_eq!(short.prefix(), &payload[..3]);
    }
}
