//! Server and client session state machines: the RTMP conversation above the chunk stream.
//!
//! # Contract
//! A session owns no socket, clock or random source: bytes, randomness and time are arguments
//! (time as an [`Instant`] the driver read from its own clock, as in quinn-proto). The driver of
//! a [`ServerSession`]:
//! 1. creates it with [`ServerSession::new`] when the connection is accepted, giving `now`: the
//!    handshake time limit counts from there;
//! 2. feeds every byte read from the peer to [`ServerSession::handle_input`] with the `now` it
//!    read them at (the call consumes what it can and leaves a partial chunk in the buffer for
//!    the next call);
//! 3. drains [`ServerSession::poll_event`] and acts on each event (accept or reject a publish or
//!    play), then calls `handle_input` again with what is left of the buffer;
//! 4. drains [`ServerSession::poll_transmit`] and writes those bytes to the peer, in order,
//!    before any media frame it queues after the call that produced them;
//! 5. waits for more bytes no later than [`ServerSession::poll_timeout`], asked afresh after the
//!    steps above (each of them may move it), and when that instant passes calls
//!    [`ServerSession::handle_timeout`] with the time it woke at.
//!
//! A [`ClientSession`] is driven the same way without time: it has no limits of its own, and its
//! driver bounds its waits itself.
//!
//! # Time limits (server)
//! At most one limit runs at a time, and `poll_timeout` says when it runs out:
//! - until handshake and `connect` are done: [`SessionConfig::handshake_timeout`], counted
//!   from `new`;
//! - connected, publishing and playing nothing: [`SessionConfig::idle_before_play`], counted
//!   from `connect`, and afresh from the end of the connection's last publish or play;
//! - publishing (playing too or not): [`SessionConfig::publisher_idle`], counted from the last
//!   bytes the peer sent;
//! - only playing: none. A player may stay silent as long as it likes.
//!
//! A publish or play counts once accepted ([`ServerSession::accept_publish`],
//! [`ServerSession::accept_play`]); while the driver decides, the limit before it still runs.
//!
//! Errors from `handle_input` and `handle_timeout` are fatal for the connection: after a framing
//! error (chunk stream, AMF, a size or a limit) the rest of the byte stream cannot be trusted,
//! and a [`SessionError::Timeout`] names the limit that ran out. The error says why, for the
//! log line. A command that is well formed but does not fit the session's state (publish on a
//! stream id already publishing, play before connect, a second connect) is not an error: the
//! server session answers it with `_error` or an onStatus error, changes nothing, and reports
//! it as [`ServerEvent::CommandRefused`]; the connection goes on.
//!
//! Media to players does not pass through the session: the relay encodes each media message
//! once with [`crate::chunk::ChunkEncoder`] and writes the same bytes to every subscriber. The
//! session's own output only ever uses chunk streams 2 and 3 with self-contained type 0 headers,
//! so the two byte sources interleave safely at message boundaries.
//!
//! # Files
//! This file holds what both sides share: errors, configuration, media, and the transport
//! (handshake, chunk codec, control messages); `server.rs` the server session and the
//! notifications a relay sends its players; `client.rs` the client session.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::amf0::{Amf0Value, AmfLimits};
use crate::chunk::{self, ChunkDecoder, ChunkEncoder, MessageHeader, RawMessage};
use crate::command::{
    self, code, level, ClientCommand, CommandError, CommandMessage, ConnectParams, PublishKind,
    StreamName,
};
use crate::handshake::{ClientHandshake, HandshakeError, HandshakeProgress, ServerHandshake};
use crate::message::{
    csid, split_aggregate, type_id, BandwidthLimit, ControlMessage, ShortMessage, UserControlEvent,
};
use crate::time::RtmpTimestamp;

mod client;
mod server;

pub use client::{ClientEvent, ClientSession};
pub use server::{notify, ServerEvent, ServerSession};

/// Why a session ended. Every variant is the peer's fault or a limit; none is ours.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionError {
    Handshake(HandshakeError),
    Chunk(chunk::DecodeError),
    Control(ShortMessage),
    Command(CommandError),
    /// More message streams (createStream) than [`SessionConfig::max_message_streams`].
    TooManyStreams {
        limit: usize,
    },
    /// A time limit of [`SessionConfig`] ran out (see the module doc's table).
    Timeout(TimeLimit),
}

/// The time limits a server session enforces, each stopping a named abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TimeLimit {
    /// Handshake plus `connect` took longer than [`SessionConfig::handshake_timeout`].
    Handshake,
    /// Connected, and neither published nor played for [`SessionConfig::idle_before_play`].
    IdleBeforePlay,
    /// A publisher sent nothing for [`SessionConfig::publisher_idle`].
    PublisherIdle,
}

impl TimeLimit {
    /// The limit's stable name in logs and counters (the relay's
    /// `rtmp_relay_limits_tripped_total{limit}` and its handshake timeout counter).
    pub fn name(self) -> &'static str {
        match self {
            TimeLimit::Handshake => "handshake_timeout",
            TimeLimit::IdleBeforePlay => "idle_before_play",
            TimeLimit::PublisherIdle => "publisher_idle",
        }
    }
}

impl std::fmt::Display for SessionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionError::Handshake(e) => write!(f, "handshake: {e}"),
            SessionError::Chunk(e) => write!(f, "chunk stream: {e}"),
            SessionError::Control(e) => write!(f, "{e}"),
            SessionError::Command(e) => write!(f, "{e}"),
            SessionError::TooManyStreams { limit } => {
                write!(f, "more than {limit} message streams on one connection")
            }
            SessionError::Timeout(limit) => write!(f, "time limit {} reached", limit.name()),
        }
    }
}

impl std::error::Error for SessionError {}

impl SessionError {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            // rtmps:// aimed at the plain port: counted apart, it is a configuration mistake of
            // the client's, not an attack or a broken peer.
            SessionError::Handshake(HandshakeError::UnsupportedVersion(0x16)) => {
                "tls_on_plain_port"
            }
            SessionError::Handshake(_) => "handshake",
            SessionError::Chunk(chunk::DecodeError::MessageTooLong { .. }) => "message_too_long",
            SessionError::Chunk(chunk::DecodeError::TooManyChunkStreams { .. }) => {
                "too_many_chunk_streams"
            }
            SessionError::Chunk(chunk::DecodeError::PartialBytesExceeded { .. }) => {
                "partial_bytes_exceeded"
            }
            SessionError::Chunk(_) => "chunk_framing",
            SessionError::Control(_) => "control_message",
            SessionError::Command(CommandError::Amf(_)) => "amf",
            SessionError::Command(_) => "command",
            SessionError::TooManyStreams { .. } => "too_many_message_streams",
            SessionError::Timeout(limit) => limit.name(),
        }
    }
}

impl From<HandshakeError> for SessionError {
    fn from(e: HandshakeError) -> Self {
        SessionError::Handshake(e)
    }
}
impl From<chunk::DecodeError> for SessionError {
    fn from(e: chunk::DecodeError) -> Self {
        SessionError::Chunk(e)
    }
}
impl From<ShortMessage> for SessionError {
    fn from(e: ShortMessage) -> Self {
        SessionError::Control(e)
    }
}
impl From<CommandError> for SessionError {
    fn from(e: CommandError) -> Self {
        SessionError::Command(e)
    }
}

/// Settings shared by both roles.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SessionConfig {
    pub chunk_limits: chunk::Limits,
    pub amf_limits: AmfLimits,
    /// Chunk size announced to the peer right after connect. Large chunks mean fewer headers and
    /// fewer syscalls; 4096 is what ffmpeg and OBS use themselves.
    pub out_chunk_size: u32,
    /// Window Acknowledgement Size announced to the peer.
    pub window_ack_size: u32,
    /// Most message streams (createStream) one connection may open. Real clients open one.
    pub max_message_streams: usize,
    /// Server only: how long handshake plus `connect` may take, from [`ServerSession::new`].
    /// Stops slowloris clients and half-open floods holding connections without speaking.
    pub handshake_timeout: Duration,
    /// Server only: how long a connected client may publish and play nothing (after `connect`,
    /// or after its last publish or play ended). Stops idle connections holding descriptors.
    pub idle_before_play: Duration,
    /// Server only: how long a publisher may send nothing. Encoders send media continuously; a
    /// silent one is gone or wedged, and its players wait for a republish instead.
    pub publisher_idle: Duration,
}

impl SessionConfig {
    /// The defaults, usable in constant positions (the server's flags take theirs from here).
    pub const DEFAULT: SessionConfig = SessionConfig {
        chunk_limits: chunk::Limits::DEFAULT,
        amf_limits: AmfLimits::DEFAULT,
        out_chunk_size: 4096,
        window_ack_size: 2_500_000,
        max_message_streams: 8,
        handshake_timeout: Duration::from_secs(10),
        idle_before_play: Duration::from_secs(30),
        publisher_idle: Duration::from_secs(30),
    };
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The kind of a relayed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MediaKind {
    Audio,
    Video,
    /// AMF0 data (type 18): metadata, cue points, text.
    Data,
}

impl MediaKind {
    pub fn type_id(self) -> u8 {
        match self {
            MediaKind::Audio => type_id::AUDIO,
            MediaKind::Video => type_id::VIDEO,
            MediaKind::Data => type_id::DATA_AMF0,
        }
    }

    /// The chunk stream relayed messages of this kind travel on.
    pub fn csid(self) -> u32 {
        match self {
            MediaKind::Audio => csid::AUDIO,
            MediaKind::Video => csid::VIDEO,
            MediaKind::Data => csid::DATA,
        }
    }
}

/// One audio, video or data message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media {
    pub stream_id: u32,
    pub kind: MediaKind,
    pub timestamp: RtmpTimestamp,
    pub payload: Bytes,
    /// For data: the payload came wrapped in `@setDataFrame` (the wrapper is already stripped):
    /// it is stream metadata to keep for late joiners.
    pub is_metadata: bool,
}

/// The parts both roles share: chunk codec, acknowledgements, output buffer.
#[derive(Debug)]
struct Transport {
    config: SessionConfig,
    decoder: ChunkDecoder,
    encoder: ChunkEncoder,
    out: BytesMut,
    /// Bytes received since the handshake, for Acknowledgement (wraps at 2^32 like the field).
    received: u64,
    last_ack: u64,
    /// The peer's Window Acknowledgement Size: acknowledge each time this many bytes arrived.
    peer_window: Option<u32>,
}

impl Transport {
    fn new(config: SessionConfig) -> Self {
        Self {
            config,
            decoder: ChunkDecoder::new(config.chunk_limits),
            encoder: ChunkEncoder::default(),
            out: BytesMut::with_capacity(4096),
            received: 0,
            last_ack: 0,
            peer_window: None,
        }
    }

    fn send(&mut self, csid: u32, type_id: u8, stream_id: u32, payload: &[u8]) {
        let header = MessageHeader { timestamp: RtmpTimestamp::ZERO, type_id, stream_id };
        self.encoder.encode(csid, &header, payload, &mut self.out);
    }

    fn send_control(&mut self, message: ControlMessage) {
        let mut payload = BytesMut::with_capacity(10);
        message.encode_payload(&mut payload);
        self.send(csid::CONTROL, message.type_id(), 0, &payload);
        if let ControlMessage::SetChunkSize(size) = message {
            self.encoder.set_chunk_size(size);
        }
    }

    fn send_command(&mut self, stream_id: u32, command: &CommandMessage) {
        self.send(csid::COMMAND, type_id::COMMAND_AMF0, stream_id, &command.to_bytes());
    }

    fn take_output(&mut self) -> Option<Bytes> {
        if self.out.is_empty() {
            None
        } else {
            Some(self.out.split().freeze())
        }
    }

    /// Decodes the next message, acknowledging received bytes as the peer's window asks.
    fn next_message(&mut self, input: &mut BytesMut) -> Result<Option<RawMessage>, SessionError> {
        let before = input.len();
        let message = self.decoder.decode(input)?;
        self.received += (before - input.len()) as u64;
        if let Some(window) = self.peer_window {
            if window > 0 && self.received - self.last_ack >= u64::from(window) {
                self.last_ack = self.received;
                self.send_control(ControlMessage::Acknowledgement {
                    sequence_number: self.received as u32,
                });
            }
        }
        Ok(message)
    }

    /// Handles protocol control and user control messages common to both roles. Returns the
    /// decoded control message, or `None` when `message` is not one.
    fn handle_control(
        &mut self,
        message: &RawMessage,
    ) -> Result<Option<ControlMessage>, SessionError> {
        let Some(control) = ControlMessage::decode(message.header.type_id, &message.payload)?
        else {
            return Ok(None);
        };
        match &control {
            ControlMessage::WindowAckSize(size) => self.peer_window = Some(*size),
            ControlMessage::UserControl(UserControlEvent::PingRequest(t)) => {
                self.send_control(ControlMessage::UserControl(UserControlEvent::PingResponse(*t)))
            }
            // Set Chunk Size and Abort were applied by the decoder; Set Peer Bandwidth limits
            // what we send, which the relay bounds per subscriber already.
            _ => {}
        }
        Ok(Some(control))
    }
}

/// Turns a data or media message into [`Media`], unwrapping `@setDataFrame` and AMF3 data.
fn media_of(message: &RawMessage, limits: &AmfLimits) -> Option<Media> {
    let header = &message.header;
    let (kind, payload, is_metadata) = match header.type_id {
        type_id::AUDIO => (MediaKind::Audio, message.payload.clone(), false),
        type_id::VIDEO => (MediaKind::Video, message.payload.clone(), false),
        type_id::DATA_AMF0 | type_id::DATA_AMF3 => {
            // AMF3 data is AMF0 behind one format byte; players are sent plain AMF0 (type 18).
            let body = if header.type_id == type_id::DATA_AMF3 {
                message.payload.slice(1.min(message.payload.len())..)
            } else {
                message.payload.clone()
            };
            match command::strip_set_data_frame(type_id::DATA_AMF0, &body, limits) {
                Some(stripped) => (MediaKind::Data, stripped, true),
                // GStreamer's rtmp2sink re-sends metadata mid-stream without the wrapper:
                // metadata all the same.
                None => {
                    let name = command::data_name(type_id::DATA_AMF0, &body, limits);
                    let is_metadata = name.as_deref() == Some("onMetaData");
                    (MediaKind::Data, body, is_metadata)
                }
            }
        }
        _ => return None,
    };
    Some(Media {
        stream_id: header.stream_id,
        kind,
        timestamp: header.timestamp,
        payload,
        is_metadata,
    })
}
