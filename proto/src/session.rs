//! Server and client session state machines: the RTMP conversation above the chunk stream.
//!
//! # Contract
//! A session owns no socket, clock or random source. Its driver:
//! 1. feeds every byte read from the peer to `handle_input` (which consumes what it can and
//!    leaves a partial chunk in the buffer for the next call);
//! 2. drains [`ServerSession::poll_event`] / [`ClientSession::poll_event`] and acts on each event
//!    (for a server: accept or reject a publish or play);
//! 3. drains `poll_transmit` and writes those bytes to the peer, in order, before any media
//!    frame it queues after the call that produced them.
//!
//! Errors from `handle_input` are fatal for the connection: after a framing error (chunk
//! stream, AMF, a size or a limit) the rest of the byte stream cannot be trusted. The error says
//! why, for the log line. A command that is well formed but does not fit the session's state
//! (publish on a stream id already publishing, play before connect, a second connect) is not an
//! error: the server session answers it with `_error` or an onStatus error, changes nothing, and
//! reports it as [`ServerEvent::CommandRefused`]; the connection goes on.
//!
//! Media to players does not pass through the session: the relay encodes each media message
//! once with [`crate::chunk::ChunkEncoder`] and writes the same bytes to every subscriber. The
//! session's own output only ever uses chunk streams 2 and 3 with self-contained type 0 headers,
//! so the two byte sources interleave safely at message boundaries.

use std::collections::VecDeque;

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
        }
    }
}

impl std::error::Error for SessionError {}

impl SessionError {
    /// A short stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
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
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            chunk_limits: chunk::Limits::default(),
            amf_limits: AmfLimits::default(),
            out_chunk_size: 4096,
            window_ack_size: 2_500_000,
            max_message_streams: 8,
        }
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

/// What a client asks of the server.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerEvent {
    /// `connect` was accepted (the server answers it itself).
    Connected(ConnectParams),
    /// Answer with [`ServerSession::accept_publish`] or [`ServerSession::reject_publish`].
    PublishRequested { stream_id: u32, name: StreamName, kind: PublishKind },
    /// Answer with [`ServerSession::accept_play`] or [`ServerSession::reject_play`].
    PlayRequested { stream_id: u32, name: StreamName },
    /// Media from a stream accepted for publishing.
    Media(Media),
    /// The client stopped publishing or playing on this stream (FCUnpublish, closeStream,
    /// deleteStream). A connection that closes ends all its streams without this event.
    StreamClosed { stream_id: u32 },
    /// pause / unpause from a player.
    Paused { stream_id: u32, paused: bool },
    /// The peer acknowledged this many bytes in total (wrapping).
    Acknowledged { sequence_number: u32 },
    /// A well-formed command that does not fit the session's state, e.g. publish on a stream id
    /// that is already publishing or playing, publish on a stream id createStream never gave,
    /// any call before connect, a second connect. The session has already answered it (onStatus
    /// `NetStream.Publish.BadName` to a publish, `NetStream.Play.Failed` to a play, `_error` to
    /// any other call that carries a transaction id) and changed nothing: the connection and
    /// its other streams go on. For the driver's log line and counter.
    CommandRefused { stream_id: u32, command: &'static str, reason: &'static str },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamRole {
    Idle,
    PublishPending,
    Publishing,
    PlayPending,
    Playing,
}

impl StreamRole {
    /// Why a publish or play cannot start on a stream in this role; `None` when it can.
    fn busy(self) -> Option<&'static str> {
        match self {
            StreamRole::Idle => None,
            StreamRole::Publishing => Some("this stream id is already publishing"),
            StreamRole::Playing => Some("this stream id is already playing"),
            StreamRole::PublishPending | StreamRole::PlayPending => {
                Some("this stream id is waiting for the answer to a publish or play")
            }
        }
    }
}

#[derive(Debug)]
struct MessageStream {
    id: u32,
    role: StreamRole,
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

#[derive(Debug)]
enum ServerPhase {
    Handshake(Box<ServerHandshake>),
    AwaitingConnect,
    Connected,
}

/// The server side of one RTMP connection.
#[derive(Debug)]
pub struct ServerSession {
    phase: ServerPhase,
    transport: Transport,
    streams: Vec<MessageStream>,
    next_stream_id: u32,
    events: VecDeque<ServerEvent>,
    app: Option<String>,
}

impl ServerSession {
    /// `epoch_ms` and `random` feed the handshake (see [`ServerHandshake::new`]).
    pub fn new(config: SessionConfig, epoch_ms: u32, random: &[u8]) -> Self {
        Self {
            phase: ServerPhase::Handshake(Box::new(ServerHandshake::new(epoch_ms, random))),
            transport: Transport::new(config),
            streams: Vec::new(),
            next_stream_id: 1,
            events: VecDeque::new(),
            app: None,
        }
    }

    /// The app given in `connect`, once connected.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
    }

    /// True once the handshake is complete.
    pub fn is_handshake_done(&self) -> bool {
        !matches!(self.phase, ServerPhase::Handshake(_))
    }

    /// The chunk size of bytes this session writes (after connect: the configured out size).
    pub fn out_chunk_size(&self) -> u32 {
        self.transport.encoder.chunk_size()
    }

    /// Bytes received from the peer since the handshake.
    pub fn bytes_received(&self) -> u64 {
        self.transport.received
    }

    /// Bytes held in partially received messages (for memory accounting).
    pub fn partial_bytes(&self) -> usize {
        self.transport.decoder.partial_bytes()
    }

    /// Feeds bytes read from the peer. Consumes complete chunks; a partial chunk stays in
    /// `input` for the next call. Returns early after a publish or play request, with input
    /// left: answer it, then call again.
    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        if let ServerPhase::Handshake(handshake) = &mut self.phase {
            match handshake.handle_input(input, &mut self.transport.out)? {
                HandshakeProgress::InProgress => return Ok(()),
                HandshakeProgress::Done => self.phase = ServerPhase::AwaitingConnect,
            }
        }
        while let Some(message) = self.transport.next_message(input)? {
            self.handle_message(message)?;
            // Stop at a request the driver must answer first: media that follows a publish in
            // the same read must not be judged before the publish is accepted.
            if matches!(
                self.events.back(),
                Some(ServerEvent::PublishRequested { .. } | ServerEvent::PlayRequested { .. })
            ) {
                break;
            }
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    /// Bytes to write to the peer, if any.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transport.take_output()
    }

    fn stream_mut(&mut self, id: u32) -> Option<&mut MessageStream> {
        self.streams.iter_mut().find(|s| s.id == id)
    }

    fn handle_message(&mut self, message: RawMessage) -> Result<(), SessionError> {
        if let Some(control) = self.transport.handle_control(&message)? {
            if let ControlMessage::Acknowledgement { sequence_number } = control {
                self.events.push_back(ServerEvent::Acknowledged { sequence_number });
            }
            return Ok(());
        }
        match message.header.type_id {
            type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3 => {
                let command = CommandMessage::decode(
                    message.header.type_id,
                    &message.payload,
                    &self.transport.config.amf_limits,
                )?;
                self.handle_command(message.header.stream_id, command)
            }
            type_id::AGGREGATE => {
                // A malformed aggregate is dropped rather than fatal: its framing is inside one
                // message, so the connection itself is still in sync.
                for part in split_aggregate(&message).unwrap_or_default() {
                    self.handle_media(&part);
                }
                Ok(())
            }
            _ => {
                self.handle_media(&message);
                Ok(())
            }
        }
    }

    fn handle_media(&mut self, message: &RawMessage) {
        let publishing = self
            .streams
            .iter()
            .any(|s| s.id == message.header.stream_id && s.role == StreamRole::Publishing);
        if !publishing {
            return;
        }
        if let Some(media) = media_of(message, &self.transport.config.amf_limits) {
            self.events.push_back(ServerEvent::Media(media));
        }
    }

    fn reply(&mut self, stream_id: u32, command: CommandMessage) {
        self.transport.send_command(stream_id, &command);
    }

    /// Why `command` on `stream_id` does not fit the session's state, if it does not. Every
    /// rule for a command out of place is here; none of them closes the connection.
    fn misplaced(&self, stream_id: u32, command: &ClientCommand) -> Option<&'static str> {
        let connected = matches!(self.phase, ServerPhase::Connected);
        let role = self.streams.iter().find(|s| s.id == stream_id).map(|s| s.role);
        match command {
            ClientCommand::Connect(_) if connected => Some("already connected"),
            ClientCommand::Connect(_) => None,
            _ if !connected => Some("connect first"),
            ClientCommand::Publish { .. } => match role {
                None => Some("createStream did not give this stream id"),
                Some(role) => role.busy(),
            },
            // A play on a stream id never created is allowed: see handle_command.
            ClientCommand::Play { .. } => role.and_then(StreamRole::busy),
            _ => None,
        }
    }

    /// Answers a command that does not fit the session's state with an error the client can act
    /// on, and reports it; the session's state is left as it was. nginx-rtmp and SRS answer
    /// such commands and keep the connection too: the client may create another stream, or
    /// give up cleanly, and what it already publishes or plays is not torn down.
    fn refuse(&mut self, stream_id: u32, tid: f64, command: &ClientCommand, reason: &'static str) {
        let name = command.name();
        // Encoders and players wait for an onStatus on the stream, whatever the transaction id.
        let status = match command {
            ClientCommand::Publish { .. } => Some(code::PUBLISH_BAD_NAME),
            ClientCommand::Play { .. } => Some(code::PLAY_FAILED),
            _ => None,
        };
        if let Some(code) = status {
            let description = format!("{name} on stream {stream_id} refused: {reason}");
            self.reply(stream_id, command::on_status(level::ERROR, code, &description, None));
        } else if tid != 0.0 {
            // A call without a transaction id expects no answer, and could not match one.
            let description = format!("{name} refused: {reason}");
            self.reply(0, command::error(tid, code::CALL_FAILED, &description));
        }
        self.events.push_back(ServerEvent::CommandRefused { stream_id, command: name, reason });
    }

    fn handle_command(
        &mut self,
        stream_id: u32,
        message: CommandMessage,
    ) -> Result<(), SessionError> {
        let command = ClientCommand::from_message(&message)?;
        let tid = message.transaction_id;
        if let Some(reason) = self.misplaced(stream_id, &command) {
            self.refuse(stream_id, tid, &command, reason);
            return Ok(());
        }
        match command {
            ClientCommand::Connect(params) => {
                let window = self.transport.config.window_ack_size;
                self.transport.send_control(ControlMessage::WindowAckSize(window));
                self.transport.send_control(ControlMessage::SetPeerBandwidth {
                    size: window,
                    limit: BandwidthLimit::Dynamic,
                });
                self.transport.send_control(ControlMessage::SetChunkSize(
                    self.transport.config.out_chunk_size,
                ));
                self.reply(0, command::connect_result(tid, params.object_encoding));
                self.reply(
                    0,
                    CommandMessage::new("onBWDone", 0.0, Amf0Value::Null)
                        .arg(Amf0Value::Number(8192.0)),
                );
                self.phase = ServerPhase::Connected;
                // The app without its query: `rtmp://host/live?token=...` arrives as app
                // `live?token=...`, and the query (a credential, for whoever authorises: it is in
                // the event's params) must not become part of stream names.
                let app = params.app.split('?').next().unwrap_or_default();
                self.app = Some(app.to_owned());
                self.events.push_back(ServerEvent::Connected(params));
            }
            ClientCommand::CreateStream => {
                if self.streams.len() >= self.transport.config.max_message_streams {
                    return Err(SessionError::TooManyStreams {
                        limit: self.transport.config.max_message_streams,
                    });
                }
                // Skip ids a player took implicitly by playing on them without createStream.
                let mut id = self.next_stream_id;
                while self.streams.iter().any(|s| s.id == id) {
                    id += 1;
                }
                self.next_stream_id = id + 1;
                self.streams.push(MessageStream { id, role: StreamRole::Idle });
                self.reply(0, command::result(tid, vec![Amf0Value::Number(f64::from(id))]));
            }
            ClientCommand::ReleaseStream { .. }
            | ClientCommand::FcPublish { .. }
            | ClientCommand::Courtesy => {
                // FMLE-style pre-publish calls: nothing to reserve, but a reply keeps clients that
                // wait for one (FMLE, some hardware encoders) moving.
                if tid != 0.0 {
                    self.reply(0, command::result(tid, vec![Amf0Value::Undefined]));
                }
            }
            ClientCommand::FcUnpublish { .. } => {
                if tid != 0.0 {
                    self.reply(0, command::result(tid, vec![Amf0Value::Undefined]));
                }
                let publishing: Vec<u32> = self
                    .streams
                    .iter()
                    .filter(|s| s.role == StreamRole::Publishing)
                    .map(|s| s.id)
                    .collect();
                for id in publishing {
                    self.close_stream(id);
                }
            }
            ClientCommand::Publish { name, kind } => {
                // `misplaced` saw that the stream exists and is idle.
                if let Some(stream) = self.stream_mut(stream_id) {
                    stream.role = StreamRole::PublishPending;
                }
                self.events.push_back(ServerEvent::PublishRequested { stream_id, name, kind });
            }
            ClientCommand::Play { name, .. } => {
                // Some players (old Flash, some VLC builds) play on stream 0 without
                // createStream; give them a stream so the relay has an id to send on.
                if self.stream_mut(stream_id).is_none() {
                    if self.streams.len() >= self.transport.config.max_message_streams {
                        return Err(SessionError::TooManyStreams {
                            limit: self.transport.config.max_message_streams,
                        });
                    }
                    self.streams.push(MessageStream { id: stream_id, role: StreamRole::Idle });
                }
                let Some(stream) = self.stream_mut(stream_id) else { return Ok(()) };
                stream.role = StreamRole::PlayPending;
                self.events.push_back(ServerEvent::PlayRequested { stream_id, name });
            }
            ClientCommand::DeleteStream { stream_id: id } => {
                self.close_stream(id);
                self.streams.retain(|s| s.id != id);
            }
            ClientCommand::CloseStream => self.close_stream(stream_id),
            ClientCommand::GetStreamLength { .. } => {
                self.reply(0, command::result(tid, vec![Amf0Value::Number(0.0)]));
            }
            ClientCommand::Pause { pause, .. } => {
                let (code, description) = if pause {
                    (code::PAUSE_NOTIFY, "Paused live")
                } else {
                    (code::UNPAUSE_NOTIFY, "Unpaused live")
                };
                self.reply(stream_id, command::on_status(level::STATUS, code, description, None));
                self.events.push_back(ServerEvent::Paused { stream_id, paused: pause });
            }
            ClientCommand::ReceiveAudio(_)
            | ClientCommand::ReceiveVideo(_)
            | ClientCommand::Reply => {}
            ClientCommand::Other => {
                if tid != 0.0 {
                    self.reply(0, command::error(tid, code::CALL_FAILED, "Method not supported"));
                }
            }
        }
        Ok(())
    }

    fn close_stream(&mut self, id: u32) {
        if let Some(stream) = self.stream_mut(id) {
            let was_active = stream.role != StreamRole::Idle;
            let was_publishing = stream.role == StreamRole::Publishing;
            stream.role = StreamRole::Idle;
            if was_publishing {
                self.reply(
                    id,
                    command::on_status(
                        level::STATUS,
                        code::UNPUBLISH_SUCCESS,
                        "Stopped publishing",
                        None,
                    ),
                );
            }
            if was_active {
                self.events.push_back(ServerEvent::StreamClosed { stream_id: id });
            }
        }
    }

    /// Accepts a publish request: the client may send media from now on.
    pub fn accept_publish(&mut self, stream_id: u32, key: &str) {
        if let Some(stream) = self.stream_mut(stream_id) {
            stream.role = StreamRole::Publishing;
        }
        self.transport
            .send_control(ControlMessage::UserControl(UserControlEvent::StreamBegin(stream_id)));
        let status = command::on_status(
            level::STATUS,
            code::PUBLISH_START,
            &format!("{key} is now published."),
            Some(key),
        );
        self.reply(stream_id, status);
    }

    /// Refuses a publish request with `code` (e.g. [`code::PUBLISH_BAD_NAME`]). The stream id is
    /// idle again and the session goes on; whether the connection does is the caller's choice
    /// (the relay closes a publisher refused because someone else publishes the key).
    pub fn reject_publish(&mut self, stream_id: u32, code: &str, description: &str) {
        if let Some(stream) = self.stream_mut(stream_id) {
            stream.role = StreamRole::Idle;
        }
        self.reply(stream_id, command::on_status(level::ERROR, code, description, None));
    }

    /// Accepts a play request: StreamBegin, Play.Reset, Play.Start, |RtmpSampleAccess. The
    /// caller then queues the stream's metadata, sequence headers and GOP. No StreamIsRecorded:
    /// a live stream is not a recording, and players that see it may offer seeking.
    pub fn accept_play(&mut self, stream_id: u32, key: &str) {
        if let Some(stream) = self.stream_mut(stream_id) {
            stream.role = StreamRole::Playing;
        }
        self.transport
            .send_control(ControlMessage::UserControl(UserControlEvent::StreamBegin(stream_id)));
        let reset = command::on_status(
            level::STATUS,
            code::PLAY_RESET,
            &format!("Playing and resetting {key}."),
            Some(key),
        );
        self.reply(stream_id, reset);
        let start = command::on_status(
            level::STATUS,
            code::PLAY_START,
            &format!("Started playing {key}."),
            Some(key),
        );
        self.reply(stream_id, start);
        let access = command::rtmp_sample_access();
        self.transport.send(csid::COMMAND, type_id::DATA_AMF0, stream_id, &access);
    }

    /// Refuses a play request.
    pub fn reject_play(&mut self, stream_id: u32, code: &str, description: &str) {
        if let Some(stream) = self.stream_mut(stream_id) {
            stream.role = StreamRole::Idle;
        }
        self.reply(stream_id, command::on_status(level::ERROR, code, description, None));
    }
}

/// Server-to-player notifications that do not depend on a session's state. They are free
/// functions so a relay can encode them once per stream and queue the same bytes to every player
/// (the chunks are self-contained, like all output of [`ChunkEncoder`]).
pub mod notify {
    use bytes::BytesMut;

    use super::*;

    fn status(
        encoder: &ChunkEncoder,
        stream_id: u32,
        code: &str,
        text: String,
        key: &str,
        out: &mut BytesMut,
    ) {
        let command = command::on_status(level::STATUS, code, &text, Some(key));
        let header = MessageHeader {
            timestamp: RtmpTimestamp::ZERO,
            type_id: type_id::COMMAND_AMF0,
            stream_id,
        };
        encoder.encode(csid::COMMAND, &header, &command.to_bytes(), out);
    }

    fn user_control(encoder: &ChunkEncoder, event: UserControlEvent, out: &mut BytesMut) {
        let message = ControlMessage::UserControl(event);
        let mut payload = BytesMut::with_capacity(10);
        message.encode_payload(&mut payload);
        let header = MessageHeader {
            timestamp: RtmpTimestamp::ZERO,
            type_id: message.type_id(),
            stream_id: 0,
        };
        encoder.encode(csid::CONTROL, &header, &payload, out);
    }

    /// The publisher left: StreamEOF + NetStream.Play.UnpublishNotify.
    pub fn unpublished(encoder: &ChunkEncoder, stream_id: u32, key: &str, out: &mut BytesMut) {
        user_control(encoder, UserControlEvent::StreamEof(stream_id), out);
        status(
            encoder,
            stream_id,
            code::PLAY_UNPUBLISH_NOTIFY,
            format!("{key} is now unpublished."),
            key,
            out,
        );
    }

    /// A publisher is back: StreamBegin + NetStream.Play.PublishNotify. Its metadata and
    /// sequence headers follow as it sends them.
    pub fn published(encoder: &ChunkEncoder, stream_id: u32, key: &str, out: &mut BytesMut) {
        user_control(encoder, UserControlEvent::StreamBegin(stream_id), out);
        status(
            encoder,
            stream_id,
            code::PLAY_PUBLISH_NOTIFY,
            format!("{key} is now published."),
            key,
            out,
        );
    }

    /// The server ends the play (e.g. no republish in time): StreamEOF + NetStream.Play.Stop.
    pub fn play_stopped(encoder: &ChunkEncoder, stream_id: u32, key: &str, out: &mut BytesMut) {
        user_control(encoder, UserControlEvent::StreamEof(stream_id), out);
        status(encoder, stream_id, code::PLAY_STOP, format!("Stopped playing {key}."), key, out);
    }
}

/// What the server told a client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientEvent {
    /// The handshake is done; send `connect` now.
    HandshakeDone,
    /// `connect` succeeded.
    Connected,
    /// `createStream` returned this message stream id.
    StreamCreated { stream_id: u32 },
    /// onStatus on a stream.
    Status { stream_id: u32, level: String, code: String, description: String },
    /// `_error` for a call, with the code if it had one.
    CallFailed { command: String, code: Option<String> },
    /// A user control event (StreamBegin, StreamEOF, ...).
    UserControl(UserControlEvent),
    /// Audio, video or data for a playing stream.
    Media(Media),
}

#[derive(Debug, Clone, PartialEq)]
enum PendingCall {
    Connect,
    CreateStream,
    Other(String),
}

/// The client side of one RTMP connection: what the load tester and the tests publish and play
/// with.
#[derive(Debug)]
pub struct ClientSession {
    handshake: Option<Box<ClientHandshake>>,
    transport: Transport,
    events: VecDeque<ClientEvent>,
    next_transaction_id: f64,
    pending: Vec<(f64, PendingCall)>,
}

impl ClientSession {
    /// `digest` picks the FP9 digest handshake (as Flash and ffmpeg players do) over the plain one.
    pub fn new(config: SessionConfig, epoch_ms: u32, random: &[u8], digest: bool) -> Self {
        let mut handshake = ClientHandshake::new(epoch_ms, random, digest);
        let mut transport = Transport::new(config);
        handshake.start(&mut transport.out);
        Self {
            handshake: Some(Box::new(handshake)),
            transport,
            events: VecDeque::new(),
            next_transaction_id: 1.0,
            pending: Vec::new(),
        }
    }

    pub fn handle_input(&mut self, input: &mut BytesMut) -> Result<(), SessionError> {
        if let Some(handshake) = &mut self.handshake {
            match handshake.handle_input(input, &mut self.transport.out)? {
                HandshakeProgress::InProgress => return Ok(()),
                HandshakeProgress::Done => {
                    self.handshake = None;
                    self.events.push_back(ClientEvent::HandshakeDone);
                }
            }
        }
        while let Some(message) = self.transport.next_message(input)? {
            self.handle_message(message)?;
        }
        Ok(())
    }

    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        self.transport.take_output()
    }

    /// Bytes received so far (after the handshake).
    pub fn bytes_received(&self) -> u64 {
        self.transport.received
    }

    fn call(&mut self, command: CommandMessage, stream_id: u32, pending: PendingCall) {
        self.pending.push((command.transaction_id, pending));
        self.transport.send_command(stream_id, &command);
    }

    fn next_tid(&mut self) -> f64 {
        let tid = self.next_transaction_id;
        self.next_transaction_id += 1.0;
        tid
    }

    /// Announces our outgoing chunk size (e.g. 4096, as OBS and ffmpeg do).
    pub fn set_chunk_size(&mut self, size: u32) {
        self.transport.send_control(ControlMessage::SetChunkSize(size));
    }

    /// `connect(app)` with the properties ffmpeg sends.
    pub fn connect(&mut self, app: &str, tc_url: &str) {
        let tid = self.next_tid();
        let object = Amf0Value::object([
            ("app", Amf0Value::string(app)),
            ("type", Amf0Value::string("nonprivate")),
            ("flashVer", Amf0Value::string("FMLE/3.0 (compatible; rtmp-proto)")),
            ("tcUrl", Amf0Value::string(tc_url)),
        ]);
        self.call(CommandMessage::new("connect", tid, object), 0, PendingCall::Connect);
    }

    pub fn create_stream(&mut self) {
        let tid = self.next_tid();
        self.call(
            CommandMessage::new("createStream", tid, Amf0Value::Null),
            0,
            PendingCall::CreateStream,
        );
    }

    /// `publish(name, "live")` on a stream from [`ClientEvent::StreamCreated`].
    pub fn publish(&mut self, stream_id: u32, name: &str) {
        let tid = self.next_tid();
        let command = CommandMessage::new("publish", tid, Amf0Value::Null)
            .arg(Amf0Value::string(name))
            .arg(Amf0Value::string("live"));
        self.call(command, stream_id, PendingCall::Other("publish".into()));
    }

    /// `play(name)` on a stream from [`ClientEvent::StreamCreated`], live (start -1000 as Flash).
    pub fn play(&mut self, stream_id: u32, name: &str) {
        let tid = self.next_tid();
        let command = CommandMessage::new("play", tid, Amf0Value::Null)
            .arg(Amf0Value::string(name))
            .arg(Amf0Value::Number(-1000.0));
        self.call(command, stream_id, PendingCall::Other("play".into()));
        self.transport.send_control(ControlMessage::UserControl(
            UserControlEvent::SetBufferLength { stream_id, millis: 1000 },
        ));
    }

    /// `deleteStream(stream_id)`: ends a publish or play.
    pub fn delete_stream(&mut self, stream_id: u32) {
        let command = CommandMessage::new("deleteStream", 0.0, Amf0Value::Null)
            .arg(Amf0Value::Number(f64::from(stream_id)));
        self.transport.send_command(0, &command);
    }

    /// Sends one audio, video or data message on a publishing stream.
    pub fn send_media(
        &mut self,
        stream_id: u32,
        kind: MediaKind,
        timestamp: RtmpTimestamp,
        payload: &[u8],
    ) {
        let header = MessageHeader { timestamp, type_id: kind.type_id(), stream_id };
        self.transport.encoder.encode(kind.csid(), &header, payload, &mut self.transport.out);
    }

    /// Sends metadata the way encoders do: `@setDataFrame("onMetaData", ...)`.
    pub fn send_metadata(&mut self, stream_id: u32, metadata: &Amf0Value) {
        self.send_metadata_at(stream_id, 0, metadata);
    }

    /// Sends metadata stamped `timestamp`, as encoders that re-send it mid-stream do.
    pub fn send_metadata_at(&mut self, stream_id: u32, timestamp: u32, metadata: &Amf0Value) {
        let mut payload = BytesMut::new();
        crate::amf0::encode_all(
            &[
                Amf0Value::string("@setDataFrame"),
                Amf0Value::string("onMetaData"),
                metadata.clone(),
            ],
            &mut payload,
        );
        self.send_media(stream_id, MediaKind::Data, RtmpTimestamp(timestamp), &payload);
    }

    /// Queues raw bytes as if they were protocol output (tests use this to send hand-made
    /// chunks through a real session).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.transport.out.extend_from_slice(bytes);
    }

    fn handle_message(&mut self, message: RawMessage) -> Result<(), SessionError> {
        if let Some(control) = self.transport.handle_control(&message)? {
            if let ControlMessage::UserControl(event) = control {
                self.events.push_back(ClientEvent::UserControl(event));
            }
            return Ok(());
        }
        match message.header.type_id {
            type_id::COMMAND_AMF0 | type_id::COMMAND_AMF3 => {
                let command = CommandMessage::decode(
                    message.header.type_id,
                    &message.payload,
                    &self.transport.config.amf_limits,
                )?;
                self.handle_command(message.header.stream_id, command);
            }
            type_id::AGGREGATE => {
                for part in split_aggregate(&message).unwrap_or_default() {
                    if let Some(media) = media_of(&part, &self.transport.config.amf_limits) {
                        self.events.push_back(ClientEvent::Media(media));
                    }
                }
            }
            _ => {
                if let Some(media) = media_of(&message, &self.transport.config.amf_limits) {
                    self.events.push_back(ClientEvent::Media(media));
                }
            }
        }
        Ok(())
    }

    fn handle_command(&mut self, stream_id: u32, command: CommandMessage) {
        let text = |value: Option<&Amf0Value>, key: &str| {
            value.and_then(|v| v.get(key)).and_then(Amf0Value::as_str).map(str::to_owned)
        };
        match command.name.as_str() {
            "_result" | "_error" => {
                let Some(index) =
                    self.pending.iter().position(|(t, _)| *t == command.transaction_id)
                else {
                    return;
                };
                let (_, call) = self.pending.swap_remove(index);
                let failed = command.name == "_error";
                match (call, failed) {
                    (PendingCall::Connect, false) => self.events.push_back(ClientEvent::Connected),
                    (PendingCall::CreateStream, false) => {
                        let id = command.args.first().and_then(Amf0Value::as_f64).unwrap_or(0.0);
                        self.events.push_back(ClientEvent::StreamCreated { stream_id: id as u32 });
                    }
                    (PendingCall::Other(_), false) => {}
                    (call, true) => {
                        let name = match call {
                            PendingCall::Connect => "connect".to_owned(),
                            PendingCall::CreateStream => "createStream".to_owned(),
                            PendingCall::Other(name) => name,
                        };
                        let code = text(command.args.first(), "code");
                        self.events.push_back(ClientEvent::CallFailed { command: name, code });
                    }
                }
            }
            "onStatus" => {
                let info = command.args.first();
                self.events.push_back(ClientEvent::Status {
                    stream_id,
                    level: text(info, "level").unwrap_or_default(),
                    code: text(info, "code").unwrap_or_default(),
                    description: text(info, "description").unwrap_or_default(),
                });
            }
            _ => {}
        }
    }
}
