//! The server side of the conversation: what a publisher or player asks, and the replies the
//! relay decides on; the time limits a connection runs under.

use super::*;

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

#[derive(Debug)]
enum ServerPhase {
    Handshake(Box<ServerHandshake>),
    AwaitingConnect,
    Connected,
}

/// What a server session knows of time: only the instants its driver gave it.
#[derive(Debug, Clone, Copy)]
struct Clock {
    /// When the connection was accepted: the handshake limit counts from here.
    started: Instant,
    /// The latest `now` the driver gave with input.
    now: Instant,
    /// When bytes last came from the peer: a publisher's silence counts from here.
    heard_from: Instant,
    /// Since when the connection, once connected, has published and played nothing: its
    /// `connect`, or the end of its last publish or play.
    idle_since: Instant,
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
    clock: Clock,
}

impl ServerSession {
    /// A session for a connection accepted at `now`: the handshake time limit counts from it.
    /// `epoch_ms` and `random` feed the handshake (see [`ServerHandshake::new`]).
    pub fn new(config: SessionConfig, epoch_ms: u32, random: &[u8], now: Instant) -> Self {
        Self {
            phase: ServerPhase::Handshake(Box::new(ServerHandshake::new(epoch_ms, random))),
            transport: Transport::new(config),
            streams: Vec::new(),
            next_stream_id: 1,
            events: VecDeque::new(),
            app: None,
            clock: Clock { started: now, now, heard_from: now, idle_since: now },
        }
    }

    /// The app given in `connect`, once connected.
    pub fn app(&self) -> Option<&str> {
        self.app.as_deref()
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

    /// Feeds bytes read from the peer at `now`. Consumes complete chunks; a partial chunk stays
    /// in `input` for the next call. Returns early after a publish or play request, with input
    /// left: answer it, then call again. Bytes in `input` count as the peer being heard from
    /// at `now`, which pushes a publisher's idle deadline forward; an empty `input` does not.
    pub fn handle_input(&mut self, input: &mut BytesMut, now: Instant) -> Result<(), SessionError> {
        self.clock.now = self.clock.now.max(now);
        if !input.is_empty() {
            self.clock.heard_from = self.clock.now;
        }
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

    /// When the time limit that runs now runs out, if one does (see the module doc): wait for
    /// input no later than this, then call [`Self::handle_timeout`]. Every other call may move
    /// it, so ask again after each.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.running_limit().map(|(deadline, _)| deadline)
    }

    /// Tells the session the time is `now` and no input came. Fails with
    /// [`SessionError::Timeout`] when the running limit has run out by `now` (fatal, like the
    /// errors of `handle_input`); before its deadline (a timer that woke early) it does nothing.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), SessionError> {
        match self.running_limit() {
            Some((deadline, limit)) if now >= deadline => Err(SessionError::Timeout(limit)),
            _ => Ok(()),
        }
    }

    /// The time limit that runs now and its deadline.
    fn running_limit(&self) -> Option<(Instant, TimeLimit)> {
        let config = &self.transport.config;
        let clock = &self.clock;
        if !matches!(self.phase, ServerPhase::Connected) {
            return Some((clock.started + config.handshake_timeout, TimeLimit::Handshake));
        }
        if self.streams.iter().any(|s| s.role == StreamRole::Publishing) {
            return Some((clock.heard_from + config.publisher_idle, TimeLimit::PublisherIdle));
        }
        if self.streams.iter().any(|s| s.role == StreamRole::Playing) {
            return None;
        }
        Some((clock.idle_since + config.idle_before_play, TimeLimit::IdleBeforePlay))
    }

    /// True while a stream of this connection publishes or plays.
    fn is_active(&self) -> bool {
        self.streams.iter().any(|s| matches!(s.role, StreamRole::Publishing | StreamRole::Playing))
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
                self.clock.idle_since = self.clock.now;
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
        let was_busy = self.is_active();
        if let Some(stream) = self.stream_mut(id) {
            let was_active = stream.role != StreamRole::Idle;
            let was_publishing = stream.role == StreamRole::Publishing;
            stream.role = StreamRole::Idle;
            if was_busy && !self.is_active() {
                // Its last publish or play ended: it waits for the next one as if just connected.
                self.clock.idle_since = self.clock.now;
            }
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
