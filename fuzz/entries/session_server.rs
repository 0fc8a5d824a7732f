//! A `ServerSession` driven the way the relay drives it, by a client that sends arbitrary bytes
//! or an arbitrary sequence of commands, media and control messages.
//!
//! Input: `[flags] [decisions] [limits if flags & 4] [schedule] ...`, then
//! - raw mode (`flags & 1 == 0`): the bytes the server reads, after a valid plain C0 C1 C2 when
//!   `flags & 2` (so chunk-stream seeds need no handshake of their own);
//! - scripted mode (`flags & 1`): a `ClientSession` (digest handshake when `flags & 2`) that then
//!   performs one operation per step: connect, createStream, publish, play, deleteStream, media,
//!   metadata, Set Chunk Size, an arbitrary command (known name or not, AMF0 or AMF3, any
//!   arguments, any message stream), an arbitrary message of any type, an aggregate message, or
//!   raw garbage bytes. Every step's bytes reach the server cut as `schedule` says.
//!
//! Publish and play requests are accepted or rejected by the bits of `decisions`, in turn.
//! With `flags & 4` the server runs under small limits read from the input, so that every limit
//! can trip.
//!
//! Invariants:
//! - `handle_input` never grows its input, and after it returns without a pending request, a
//!   second call with no new bytes does nothing (it consumed all it could);
//! - partial message bytes stay within the limit;
//! - `Connected` comes once, before any publish or play request;
//! - a command out of place is refused (`CommandRefused`) and the session goes on: before
//!   connect, any command but connect is refused; connect is refused only after it;
//! - `Media` comes only from a message stream whose publish was accepted and not closed since,
//!   and is no longer than the message size limit;
//! - after an error the connection is over (nothing more is fed), and the error formats;
//! - time (virtual: 100 µs more at each read) runs the limit the state calls for: the handshake
//!   limit until `Connected`, then the publisher idle limit while a publish is accepted, none
//!   while only plays are, and the idle-before-play limit otherwise; `handle_timeout` fails
//!   exactly from `poll_timeout` on, naming that limit, and is quiet before it;
//! - everything the server writes is well-formed RTMP: S0 S1 S2, then chunks that decode, and
//!   command messages whose AMF decodes; in scripted mode a real `ClientSession` reads it all
//!   without an error.

use bytes::{BufMut, BytesMut};
use rtmp_proto::amf0::{self, Amf0Value, AmfLimits};
use rtmp_proto::amf3::Amf3Value;
use rtmp_proto::chunk::{ChunkDecoder, ChunkEncoder, Limits, MessageHeader, MAX_CHUNK_SIZE};
use rtmp_proto::command::{code, CommandMessage};
use rtmp_proto::handshake::{HANDSHAKE_SIZE, RANDOM_LEN};
use rtmp_proto::message::{csid, type_id};
use std::time::{Duration, Instant};

use rtmp_proto::session::{
    ClientEvent, ClientSession, MediaKind, ServerEvent, ServerSession, SessionConfig, SessionError,
    TimeLimit,
};
use rtmp_proto::time::RtmpTimestamp;

use super::input::{Input, Schedule};

/// Handshake bytes the server writes before its first chunk: S0 + S1 + S2.
const HANDSHAKE_BYTES: usize = 1 + 2 * HANDSHAKE_SIZE;
/// Most steps of one scripted client.
const MAX_STEPS: usize = 64;

pub fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.u8();
    let decisions = input.u8();
    let config = if flags & 4 != 0 { small_config(&mut input) } else { SessionConfig::default() };
    let schedule = input.schedule();
    let mut server = Server::new(config, decisions);
    if flags & 1 == 0 {
        let mut bytes = Vec::new();
        if flags & 2 != 0 {
            bytes.push(3);
            bytes.resize(1 + 2 * HANDSHAKE_SIZE, 0);
        }
        bytes.extend_from_slice(input.rest());
        server.feed(&bytes, schedule);
        server.check_deadline();
        let mut output = server.take_output();
        if output.len() >= HANDSHAKE_BYTES {
            assert_eq!(output[0], 3, "S0");
            check_chunks(&output.split_off(HANDSHAKE_BYTES));
        } else {
            assert!(output.is_empty(), "{} bytes of partial handshake written", output.len());
        }
    } else {
        Script::new(server, schedule, flags & 2 != 0).run(&mut input).check_deadline();
    }
}

/// Small limits from the input, zeros included.
fn small_config(input: &mut Input<'_>) -> SessionConfig {
    SessionConfig {
        chunk_limits: Limits {
            max_message_len: u32::from(input.u16()),
            max_chunk_streams: usize::from(input.u8() % 8),
            max_partial_bytes: usize::from(input.u16()),
        },
        amf_limits: AmfLimits {
            max_depth: usize::from(input.u8() % 8),
            max_string_len: usize::from(input.u8()),
            max_elements: usize::from(input.u8()),
        },
        out_chunk_size: 1 + u32::from(input.u16()),
        window_ack_size: u32::from(input.u16()),
        max_message_streams: usize::from(input.u8() % 4),
        // Not from the input, so that the seeds keep their meaning; time is virtual anyway.
        ..SessionConfig::default()
    }
}

fn random(seed: u8) -> Vec<u8> {
    (0..RANDOM_LEN).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// The server and what the driver knows of it.
struct Server {
    session: ServerSession,
    config: SessionConfig,
    buffer: BytesMut,
    /// Publish and play answers, one bit each in turn (1 accepts).
    decisions: u8,
    requests: u32,
    connected: bool,
    /// Message streams whose publish was accepted and that have not been closed since.
    publishing: Vec<u32>,
    /// Message streams whose play was accepted and that have not been closed since.
    playing: Vec<u32>,
    closed: bool,
    /// The driver's clock: virtual, from one real instant, so runs are deterministic.
    now: Instant,
}

impl Server {
    fn new(config: SessionConfig, decisions: u8) -> Self {
        let now = Instant::now();
        Self {
            session: ServerSession::new(config, 5_000, &random(2), now),
            config,
            buffer: BytesMut::new(),
            decisions,
            requests: 0,
            connected: false,
            publishing: Vec::new(),
            playing: Vec::new(),
            closed: false,
            now,
        }
    }

    /// The limit the session must run in the state the driver sees.
    fn expected_limit(&self) -> Option<TimeLimit> {
        if !self.connected {
            Some(TimeLimit::Handshake)
        } else if !self.publishing.is_empty() {
            Some(TimeLimit::PublisherIdle)
        } else if !self.playing.is_empty() {
            None
        } else {
            Some(TimeLimit::IdleBeforePlay)
        }
    }

    /// What the relay's read loop does before each read: time passes, and a deadline that
    /// passed without input ends the connection.
    fn tick(&mut self) {
        self.now += Duration::from_micros(100);
        let deadline = self.session.poll_timeout();
        assert_eq!(deadline.is_some(), self.expected_limit().is_some(), "a deadline iff a limit");
        match self.session.handle_timeout(self.now) {
            Ok(()) => assert!(deadline.is_none_or(|at| self.now < at), "deadline passed, no error"),
            Err(SessionError::Timeout(limit)) => {
                assert!(deadline.is_some_and(|at| self.now >= at), "{limit:?} before its deadline");
                assert_eq!(Some(limit), self.expected_limit());
                self.closed = true;
            }
            Err(error) => panic!("handle_timeout failed with {error:?}"),
        }
    }

    /// At the end: the running limit trips exactly at its deadline, with its own name.
    fn check_deadline(&mut self) {
        if self.closed {
            return;
        }
        let Some(deadline) = self.session.poll_timeout() else {
            assert_eq!(self.expected_limit(), None, "no deadline");
            return;
        };
        if let Some(before) = deadline.checked_sub(Duration::from_nanos(1)) {
            assert_eq!(self.session.handle_timeout(before), Ok(()), "tripped before the deadline");
        }
        let error = self.session.handle_timeout(deadline).expect_err("no trip at the deadline");
        let SessionError::Timeout(limit) = error else { panic!("not a timeout: {error:?}") };
        assert_eq!(Some(limit), self.expected_limit());
        assert_eq!(error.kind(), limit.name());
        self.closed = true;
    }

    /// Hands `bytes` to the server in pieces, as a socket would.
    fn feed(&mut self, bytes: &[u8], schedule: Schedule<'_>) {
        for piece in schedule.pieces(bytes) {
            if !self.closed {
                self.tick();
            }
            if self.closed {
                return;
            }
            self.buffer.extend_from_slice(piece);
            self.read();
        }
    }

    /// What the relay's connection task does after each read: handle input, answer events,
    /// and go on while a request held input back.
    fn read(&mut self) {
        loop {
            let before = self.buffer.len();
            let result = self.session.handle_input(&mut self.buffer, self.now);
            assert!(self.buffer.len() <= before, "handle_input grew its input");
            self.check_partial();
            let answered = self.events();
            if let Err(error) = result {
                // Logged and counted by the relay: both must work on any error.
                assert!(!error.to_string().is_empty() && !error.kind().is_empty());
                self.closed = true;
                return;
            }
            if answered {
                continue;
            }
            // Nothing held back: calling again without new bytes must change nothing.
            let left = self.buffer.len();
            let again = self.session.handle_input(&mut self.buffer, self.now);
            assert_eq!(again, Ok(()), "a second call failed");
            assert_eq!(self.buffer.len(), left, "a second call consumed input");
            assert!(self.session.poll_event().is_none(), "a second call made an event");
            return;
        }
    }

    fn check_partial(&self) {
        let limit = self.config.chunk_limits.max_partial_bytes;
        assert!(self.session.partial_bytes() <= limit, "partial bytes over {limit}");
    }

    fn decide(&mut self) -> bool {
        let accept = (self.decisions >> (self.requests % 8)) & 1 == 1;
        self.requests += 1;
        accept
    }

    /// Drains events, answering requests; true when a request was answered.
    fn events(&mut self) -> bool {
        let mut answered = false;
        while let Some(event) = self.session.poll_event() {
            match event {
                ServerEvent::Connected(_) => {
                    assert!(!self.connected, "connected twice");
                    self.connected = true;
                }
                ServerEvent::PublishRequested { stream_id, name, .. } => {
                    assert!(self.connected, "publish before connect");
                    if self.decide() {
                        self.session.accept_publish(stream_id, &name.key);
                        self.publishing.push(stream_id);
                    } else {
                        self.session.reject_publish(stream_id, code::PUBLISH_BAD_NAME, "no");
                    }
                    answered = true;
                }
                ServerEvent::PlayRequested { stream_id, name } => {
                    assert!(self.connected, "play before connect");
                    if self.decide() {
                        self.session.accept_play(stream_id, &name.key);
                        self.playing.push(stream_id);
                    } else {
                        self.session.reject_play(stream_id, code::PLAY_STREAM_NOT_FOUND, "no");
                    }
                    answered = true;
                }
                ServerEvent::Media(media) => {
                    assert!(
                        self.publishing.contains(&media.stream_id),
                        "media on stream {} that is not publishing ({:?})",
                        media.stream_id,
                        self.publishing
                    );
                    assert!(
                        media.payload.len() <= self.config.chunk_limits.max_message_len as usize
                    );
                }
                ServerEvent::StreamClosed { stream_id } => {
                    self.publishing.retain(|&id| id != stream_id);
                    self.playing.retain(|&id| id != stream_id);
                }
                ServerEvent::CommandRefused { command, reason, .. } => {
                    assert!(self.connected || reason == "connect first", "{command}: {reason}");
                    assert!(command != "connect" || self.connected, "connect refused: {reason}");
                }
                ServerEvent::Paused { .. } | ServerEvent::Acknowledged { .. } => {}
            }
        }
        answered
    }

    fn take_output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(bytes) = self.session.poll_transmit() {
            assert!(!bytes.is_empty(), "poll_transmit gave an empty buffer");
            out.extend_from_slice(&bytes);
        }
        out
    }
}

/// The server's chunk stream decodes, and its commands are AMF that decodes.
fn check_chunks(output: &[u8]) {
    let mut decoder = ChunkDecoder::new(Limits::default());
    let mut buffer = BytesMut::from(output);
    loop {
        match decoder.decode(&mut buffer) {
            Ok(Some(message)) => {
                if message.header.type_id == type_id::COMMAND_AMF0 {
                    let limits = generous();
                    if let Err(error) = CommandMessage::decode(20, &message.payload, &limits) {
                        panic!("server wrote a command that does not decode: {error:?}");
                    }
                }
            }
            Ok(None) => break,
            Err(error) => panic!("server output does not decode: {error:?}"),
        }
    }
    assert!(buffer.is_empty(), "server output ends in a partial chunk");
}

/// Limits for reading the server's own output, whose strings may echo a long stream key.
fn generous() -> AmfLimits {
    AmfLimits { max_string_len: 1 << 20, ..AmfLimits::default() }
}

/// A client session and the server it talks to.
struct Script<'s> {
    server: Server,
    client: ClientSession,
    schedule: Schedule<'s>,
    /// The client's outgoing chunk size, for messages it sends through `send_raw`.
    chunk_size: u32,
    /// The stream ids `createStream` returned.
    created: Vec<u32>,
}

impl<'s> Script<'s> {
    fn new(server: Server, schedule: Schedule<'s>, digest: bool) -> Self {
        let config = SessionConfig { amf_limits: generous(), ..SessionConfig::default() };
        Self {
            server,
            client: ClientSession::new(config, 1_000, &random(1), digest),
            schedule,
            chunk_size: 128,
            created: Vec::new(),
        }
    }

    /// Runs the script; the server is handed back for the checks at the end.
    fn run(mut self, input: &mut Input<'_>) -> Server {
        self.pump();
        let mut steps = 0;
        while !input.is_empty() && !self.server.closed && steps < MAX_STEPS {
            steps += 1;
            self.step(input);
            self.pump();
        }
        self.server
    }

    /// Carries bytes both ways until both sides are quiet.
    fn pump(&mut self) {
        for _ in 0..4 {
            let mut to_server = Vec::new();
            while let Some(bytes) = self.client.poll_transmit() {
                to_server.extend_from_slice(&bytes);
            }
            self.server.feed(&to_server, self.schedule);
            let to_client = self.server.take_output();
            if to_client.is_empty() && to_server.is_empty() {
                return;
            }
            let mut buffer = BytesMut::new();
            for piece in self.schedule.pieces(&to_client) {
                buffer.extend_from_slice(piece);
                if let Err(error) = self.client.handle_input(&mut buffer) {
                    panic!("the client cannot read the server: {error:?}");
                }
            }
            assert!(buffer.is_empty(), "server output ends in a partial chunk");
            while let Some(event) = self.client.poll_event() {
                if let ClientEvent::StreamCreated { stream_id } = event {
                    self.created.push(stream_id);
                }
            }
            if self.server.closed {
                return;
            }
        }
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 16 {
            0 => {
                let app = text(input, 24);
                self.client.connect(&app, &format!("rtmp://localhost/{app}"));
            }
            1 => self.client.create_stream(),
            2 => {
                let id = self.stream_id(input);
                self.client.publish(id, &text(input, 24));
            }
            3 => {
                let id = self.stream_id(input);
                self.client.play(id, &text(input, 24));
            }
            4 => {
                let id = self.stream_id(input);
                self.client.delete_stream(id);
            }
            5 | 6 => {
                let id = self.stream_id(input);
                let kind = [MediaKind::Audio, MediaKind::Video, MediaKind::Data]
                    [usize::from(input.u8()) % 3];
                let timestamp = RtmpTimestamp(input.u32());
                self.client.send_media(id, kind, timestamp, input.bytes(512));
            }
            7 => {
                let id = self.stream_id(input);
                self.client.send_metadata(id, &value(input, 0));
            }
            8 => {
                let size = match input.u8() % 4 {
                    0 => 4096,
                    1 => 1 + u32::from(input.u8()),
                    2 => 1 + u32::from(input.u16()),
                    _ => input.u32(),
                };
                self.client.set_chunk_size(size);
                // What the client's encoder does with it.
                self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
            }
            9..=11 => self.command(input),
            12 | 13 => self.message(input),
            14 => self.aggregate(input),
            _ => {
                let garbage = input.bytes(32);
                self.client.send_raw(garbage);
            }
        }
    }

    fn stream_id(&self, input: &mut Input<'_>) -> u32 {
        match input.u8() % 8 {
            0 => 0,
            6 => self.created.last().copied().unwrap_or(1),
            7 => input.u32(),
            n => u32::from(n),
        }
    }

    /// Encodes a message the way the client would and queues it.
    fn send(&mut self, csid: u32, type_id: u8, stream_id: u32, timestamp: u32, payload: &[u8]) {
        let header = MessageHeader { timestamp: RtmpTimestamp(timestamp), type_id, stream_id };
        let mut out = BytesMut::new();
        ChunkEncoder::new(self.chunk_size).encode(csid, &header, payload, &mut out);
        self.client.send_raw(&out);
    }

    fn command(&mut self, input: &mut Input<'_>) {
        const NAMES: &[&str] = &[
            "connect",
            "createStream",
            "publish",
            "play",
            "deleteStream",
            "closeStream",
            "releaseStream",
            "FCPublish",
            "FCUnpublish",
            "getStreamLength",
            "pause",
            "pauseRaw",
            "receiveAudio",
            "receiveVideo",
            "FCSubscribe",
            "_checkbw",
            "_result",
            "_error",
            "onStatus",
        ];
        let choice = usize::from(input.u8());
        let name = match NAMES.get(choice) {
            Some(name) => (*name).to_owned(),
            None => text(input, 16),
        };
        let transaction_id = match input.u8() % 4 {
            0 => 0.0,
            1 => f64::from(input.u8()),
            _ => f64::from_bits((u64::from(input.u32()) << 32) | u64::from(input.u32())),
        };
        let object = value(input, 0);
        let mut values = vec![Amf0Value::String(name), Amf0Value::Number(transaction_id), object];
        for _ in 0..input.u8() % 4 {
            values.push(value(input, 0));
        }
        // Clients may leave out the transaction id and command object.
        if input.u8() == 0xff {
            let keep = 1 + usize::from(input.u8()) % values.len();
            values.truncate(keep);
        }
        let mut payload = BytesMut::new();
        let amf3 = input.bool();
        if amf3 {
            payload.put_u8(0);
        }
        amf0::encode_all(&values, &mut payload);
        let type_id = if amf3 { type_id::COMMAND_AMF3 } else { type_id::COMMAND_AMF0 };
        let stream_id = self.stream_id(input);
        self.send(csid::COMMAND, type_id, stream_id, 0, &payload);
    }

    /// Any message type, any chunk stream, any payload: control messages, user control
    /// events, acknowledgements, shared objects, unknown types.
    fn message(&mut self, input: &mut Input<'_>) {
        let type_id = input.u8() % 32;
        let csid = 2 + u32::from(input.u8() % 8);
        let stream_id = self.stream_id(input);
        let timestamp = input.u32();
        let payload = input.bytes(64);
        if type_id == type_id::SET_CHUNK_SIZE && stream_id == 0 && payload.len() >= 4 {
            // Through the client, so that its encoder and the server's decoder agree.
            let size = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            self.client.set_chunk_size(size);
            self.chunk_size = size.clamp(1, MAX_CHUNK_SIZE);
            return;
        }
        self.send(csid, type_id, stream_id, timestamp, payload);
    }

    /// An aggregate message (type 22) of FLV tags, well formed or not.
    fn aggregate(&mut self, input: &mut Input<'_>) {
        let stream_id = self.stream_id(input);
        let mut payload = BytesMut::new();
        for _ in 0..1 + input.u8() % 4 {
            let tag_type = match input.u8() % 4 {
                0 => type_id::AUDIO,
                1 => type_id::VIDEO,
                2 => type_id::DATA_AMF0,
                _ => input.u8(),
            };
            let body = input.bytes(64);
            let timestamp = input.u32();
            let start = payload.len();
            payload.put_u8(tag_type);
            payload.put_uint(body.len() as u64, 3);
            payload.put_uint(u64::from(timestamp & 0xff_ffff), 3);
            payload.put_u8((timestamp >> 24) as u8);
            payload.put_uint(0, 3);
            payload.put_slice(body);
            let size = payload.len() - start;
            // The back pointer, sometimes wrong.
            let back = if input.u8() == 0xff { input.u32() } else { size as u32 };
            payload.put_u32(back);
        }
        if input.u8() == 0xff {
            let cut = input.below(payload.len() + 1);
            payload.truncate(cut);
        }
        let timestamp = input.u32();
        self.send(6, type_id::AGGREGATE, stream_id, timestamp, &payload);
    }
}

/// Text of up to `max` bytes, lossily decoded.
fn text(input: &mut Input<'_>, max: usize) -> String {
    String::from_utf8_lossy(input.bytes(max)).into_owned()
}

/// A small AMF0 value.
fn value(input: &mut Input<'_>, depth: usize) -> Amf0Value {
    let nested = depth < 3;
    match input.u8() % 12 {
        0 => Amf0Value::Null,
        1 => Amf0Value::Undefined,
        2 => Amf0Value::Boolean(input.bool()),
        3 => Amf0Value::Number(f64::from(input.u32())),
        4 => Amf0Value::Number(f64::from_bits(u64::from(input.u32()) << 32)),
        5 => Amf0Value::String(text(input, 24)),
        6 => Amf0Value::LongString(text(input, 24)),
        7 if nested => {
            let keys = ["app", "tcUrl", "flashVer", "objectEncoding", "code", ""];
            let props = (0..input.u8() % 5)
                .map(|_| {
                    let key = keys
                        .get(usize::from(input.u8()))
                        .map_or_else(|| text(input, 8), |key| (*key).to_owned());
                    (key, value(input, depth + 1))
                })
                .collect();
            if input.bool() {
                Amf0Value::Object(props)
            } else {
                Amf0Value::EcmaArray(props)
            }
        }
        8 if nested => {
            Amf0Value::StrictArray((0..input.u8() % 4).map(|_| value(input, depth + 1)).collect())
        }
        9 => Amf0Value::Avmplus(match input.u8() % 3 {
            0 => Amf3Value::String(text(input, 24)),
            1 => Amf3Value::Integer(i32::from(input.u16())),
            _ => Amf3Value::Boolean(input.bool()),
        }),
        10 => Amf0Value::Reference(input.u16()),
        _ => Amf0Value::Date { millis: f64::from(input.u32()), timezone: 0 },
    }
}
