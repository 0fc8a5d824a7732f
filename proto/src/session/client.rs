//! The client side of the conversation: connect, create a stream, publish or play, as the load
//! tester and outbound relays speak it.

use super::*;

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

    /// `releaseStream(name)` and `FCPublish(name)`, as FMLE, OBS and ffmpeg send them before
    /// `createStream` when they publish: some servers (and CDN ingests) expect them.
    pub fn announce_publish(&mut self, name: &str) {
        for command in ["releaseStream", "FCPublish"] {
            let tid = self.next_tid();
            let message =
                CommandMessage::new(command, tid, Amf0Value::Null).arg(Amf0Value::string(name));
            self.transport.send_command(0, &message);
        }
    }

    /// `FCUnpublish(name)`: the publisher is done with `name` (sent before `deleteStream`, so
    /// the server sees the stream end, not just the connection).
    pub fn fc_unpublish(&mut self, name: &str) {
        let tid = self.next_tid();
        let command =
            CommandMessage::new("FCUnpublish", tid, Amf0Value::Null).arg(Amf0Value::string(name));
        self.transport.send_command(0, &command);
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
