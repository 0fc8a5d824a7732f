//! A [`ClientSession`] and a [`ServerSession`] talking through memory, deterministically: fixed
//! epoch, fixed "random" bytes, virtual time (one real instant read once, then moved only by
//! the test). [`Pair::pump`] shuttles bytes both ways until neither
//! side has anything left to say, optionally cutting every transfer into pieces of a given size,
//! so each flow below also runs with TCP-like fragmentation (the idea of quinn-proto's
//! `tests/util.rs`). Everything goes through the crate's public API.
//!
//! Both directions are also logged, so a test can decode exactly what went over the wire.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rtmp_proto::amf0::{self, Amf0Value, AmfLimits};
use rtmp_proto::chunk::{ChunkDecoder, ChunkEncoder, Limits, MessageHeader, RawMessage};
use rtmp_proto::command::{
    self, code, level, CommandMessage, ConnectParams, PublishKind, StreamName,
};
use rtmp_proto::handshake::{HANDSHAKE_SIZE, RANDOM_LEN};
use rtmp_proto::message::{type_id, ControlMessage, UserControlEvent};
use rtmp_proto::session::{
    notify, ClientEvent, ClientSession, Media, MediaKind, ServerEvent, ServerSession,
    SessionConfig, SessionError, TimeLimit,
};
use rtmp_proto::time::RtmpTimestamp;

/// Counts the bytes each thread allocates, so a test can see what one call reserved.
struct CountingAllocator;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: the slot is gone while a thread is being torn down.
    let _ = ALLOCATED.try_with(|n| n.set(n.get() + bytes));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: the caller's contract for `alloc` is the same as `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        // SAFETY: `ptr` came from `System` with this layout; the caller checked `new_size`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Bytes allocated on this thread while `f` ran.
fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let before = ALLOCATED.with(Cell::get);
    let value = f();
    (value, ALLOCATED.with(Cell::get) - before)
}

/// Every flow runs at these transfer sizes; `usize::MAX` hands over whole writes.
const FRAGMENTS: &[usize] = &[usize::MAX, 1, 7, 128, 4096];

/// Bytes of handshake each side writes before its first chunk: C0 + C1 + C2 or S0 + S1 + S2.
const HANDSHAKE_BYTES: usize = 1 + 2 * HANDSHAKE_SIZE;

const CLIENT_EPOCH: u32 = 1_000;
const SERVER_EPOCH: u32 = 5_000;

/// Virtual time zero: the one instant these tests read from the clock. Every other instant is
/// this one plus what a test says has passed.
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn fixed_random(seed: u8) -> Vec<u8> {
    (0..RANDOM_LEN).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Client,
    Server,
}

type PairResult = Result<(), (Side, SessionError)>;

struct Pair {
    client: ClientSession,
    server: ServerSession,
    /// Largest piece handed to a side at once.
    fragment: usize,
    /// Written by one side and not yet handed to the other.
    to_server_wire: BytesMut,
    to_client_wire: BytesMut,
    /// Handed over but not consumed yet (a partial chunk, or input after a request).
    server_input: BytesMut,
    client_input: BytesMut,
    /// The server stopped at a publish or play request: no more input until it is answered.
    server_holds: bool,
    client_events: VecDeque<ClientEvent>,
    server_events: VecDeque<ServerEvent>,
    /// Everything each side wrote, in order.
    client_log: Vec<u8>,
    server_log: Vec<u8>,
    /// Virtual time: what the server is told with each input.
    now: Instant,
}

impl Pair {
    fn new(digest: bool, fragment: usize) -> Self {
        Self::with_configs(digest, fragment, SessionConfig::default(), SessionConfig::default())
    }

    fn with_configs(
        digest: bool,
        fragment: usize,
        client_config: SessionConfig,
        server_config: SessionConfig,
    ) -> Self {
        Pair {
            client: ClientSession::new(client_config, CLIENT_EPOCH, &fixed_random(1), digest),
            server: ServerSession::new(server_config, SERVER_EPOCH, &fixed_random(2), t0()),
            fragment: fragment.max(1),
            to_server_wire: BytesMut::new(),
            to_client_wire: BytesMut::new(),
            server_input: BytesMut::new(),
            client_input: BytesMut::new(),
            server_holds: false,
            client_events: VecDeque::new(),
            server_events: VecDeque::new(),
            client_log: Vec::new(),
            server_log: Vec::new(),
            now: t0(),
        }
    }

    /// Lets virtual time pass without any bytes moving.
    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Moves bytes both ways until neither side writes anything and all that was written has
    /// been handed over (or the server waits for an answer to a request).
    fn pump(&mut self) -> PairResult {
        loop {
            self.collect_output();
            let mut progress = false;
            if !self.server_holds && !self.to_server_wire.is_empty() {
                let n = self.fragment.min(self.to_server_wire.len());
                self.server_input.extend_from_slice(&self.to_server_wire.split_to(n));
                self.feed_server()?;
                progress = true;
            }
            if !self.to_client_wire.is_empty() {
                let n = self.fragment.min(self.to_client_wire.len());
                self.client_input.extend_from_slice(&self.to_client_wire.split_to(n));
                self.client.handle_input(&mut self.client_input).map_err(|e| (Side::Client, e))?;
                self.client_events.extend(std::iter::from_fn(|| self.client.poll_event()));
                progress = true;
            }
            if !progress {
                return Ok(());
            }
        }
    }

    fn collect_output(&mut self) {
        while let Some(bytes) = self.client.poll_transmit() {
            self.client_log.extend_from_slice(&bytes);
            self.to_server_wire.extend_from_slice(&bytes);
        }
        while let Some(bytes) = self.server.poll_transmit() {
            self.server_log.extend_from_slice(&bytes);
            self.to_client_wire.extend_from_slice(&bytes);
        }
    }

    fn feed_server(&mut self) -> PairResult {
        let now = self.now;
        self.server.handle_input(&mut self.server_input, now).map_err(|e| (Side::Server, e))?;
        while let Some(event) = self.server.poll_event() {
            if matches!(
                event,
                ServerEvent::PublishRequested { .. } | ServerEvent::PlayRequested { .. }
            ) {
                self.server_holds = true;
            }
            self.server_events.push_back(event);
        }
        Ok(())
    }

    /// Lets the driver answer a request, then resumes: the server reads what it held back.
    fn answer(&mut self, answer: impl FnOnce(&mut ServerSession)) -> PairResult {
        answer(&mut self.server);
        self.server_holds = false;
        self.feed_server()?;
        self.pump()
    }

    /// Bytes a relay writes to the client beside the session's own output (notifications).
    fn inject_to_client(&mut self, bytes: &[u8]) -> PairResult {
        self.collect_output();
        self.server_log.extend_from_slice(bytes);
        self.to_client_wire.extend_from_slice(bytes);
        self.pump()
    }

    fn client_events(&mut self) -> Vec<ClientEvent> {
        self.client_events.drain(..).collect()
    }

    fn server_events(&mut self) -> Vec<ServerEvent> {
        self.server_events.drain(..).collect()
    }

    /// Every message the server wrote after its handshake, decoded afresh.
    fn server_messages(&self) -> Vec<RawMessage> {
        decode_log(&self.server_log)
    }

    /// Every message the client wrote after its handshake, decoded afresh.
    fn client_messages(&self) -> Vec<RawMessage> {
        decode_log(&self.client_log)
    }

    /// Handshake, connect and createStream: a pair ready to publish or play on stream 1.
    fn connected(digest: bool, fragment: usize) -> Self {
        let mut pair = Pair::new(digest, fragment);
        pair.connect().unwrap();
        pair
    }

    fn connect(&mut self) -> PairResult {
        self.pump()?;
        assert_eq!(self.client_events(), [ClientEvent::HandshakeDone]);
        assert_eq!(self.server.app(), None, "handshake done, connect not yet");
        self.client.connect("live", "rtmp://relay.test/live");
        self.pump()?;
        // Acknowledgements (with a small window) may come any time: leave them queued.
        let (acks, events): (Vec<_>, Vec<_>) = self
            .server_events()
            .into_iter()
            .partition(|e| matches!(e, ServerEvent::Acknowledged { .. }));
        self.server_events.extend(acks);
        assert_eq!(
            events,
            [ServerEvent::Connected(ConnectParams {
                app: "live".into(),
                tc_url: Some("rtmp://relay.test/live".into()),
                flash_ver: Some("FMLE/3.0 (compatible; rtmp-proto)".into()),
                object_encoding: 0.0,
            })]
        );
        assert_eq!(self.client_events(), [ClientEvent::Connected]);
        assert_eq!(self.server.app(), Some("live"));
        assert_eq!(self.server.out_chunk_size(), 4096);
        self.client.create_stream();
        self.pump()?;
        assert_eq!(self.client_events(), [ClientEvent::StreamCreated { stream_id: 1 }]);
        Ok(())
    }
}

fn decode_log(log: &[u8]) -> Vec<RawMessage> {
    let mut decoder = ChunkDecoder::new(Limits::default());
    let mut input = BytesMut::from(&log[HANDSHAKE_BYTES.min(log.len())..]);
    let mut out = Vec::new();
    while let Some(message) = decoder.decode(&mut input).expect("a session writes valid chunks") {
        out.push(message);
    }
    assert!(input.is_empty(), "a session writes whole chunks");
    out
}

fn commands(messages: &[RawMessage]) -> Vec<CommandMessage> {
    messages
        .iter()
        .filter(|m| m.header.type_id == type_id::COMMAND_AMF0)
        .map(|m| CommandMessage::decode(m.header.type_id, &m.payload, &AmfLimits::default()))
        .collect::<Result<_, _>>()
        .expect("valid commands")
}

fn controls(messages: &[RawMessage]) -> Vec<ControlMessage> {
    messages
        .iter()
        .filter_map(|m| ControlMessage::decode(m.header.type_id, &m.payload).expect("valid"))
        .collect()
}

fn status(stream_id: u32, level: &str, code: &str, description: &str) -> ClientEvent {
    ClientEvent::Status {
        stream_id,
        level: level.into(),
        code: code.into(),
        description: description.into(),
    }
}

fn amf(values: &[Amf0Value]) -> Bytes {
    let mut out = BytesMut::new();
    amf0::encode_all(values, &mut out);
    out.freeze()
}

/// A client command as raw chunks, for calls the client API does not make.
fn raw_command(stream_id: u32, command: &CommandMessage) -> Vec<u8> {
    let header = MessageHeader { timestamp: RtmpTimestamp::ZERO, type_id: 20, stream_id };
    let mut out = BytesMut::new();
    ChunkEncoder::default().encode(3, &header, &command.to_bytes(), &mut out);
    out.to_vec()
}

/// A protocol control message as raw chunks.
fn raw_control(message: ControlMessage) -> Vec<u8> {
    let mut payload = BytesMut::new();
    message.encode_payload(&mut payload);
    let header =
        MessageHeader { timestamp: RtmpTimestamp::ZERO, type_id: message.type_id(), stream_id: 0 };
    let mut out = BytesMut::new();
    ChunkEncoder::default().encode(2, &header, &payload, &mut out);
    out.to_vec()
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed)).collect()
}

// ---------------------------------------------------------------------------------------------
// Whole flows.

fn publish_flow(digest: bool, fragment: usize) {
    let mut pair = Pair::connected(digest, fragment);
    // The client writes bigger chunks, as ffmpeg and OBS do; the server follows.
    pair.client.set_chunk_size(1000);
    pair.client.publish(1, "cam?token=t1");
    pair.pump().unwrap();
    assert_eq!(
        pair.server_events(),
        [ServerEvent::PublishRequested {
            stream_id: 1,
            name: StreamName { key: "cam".into(), query: Some("token=t1".into()) },
            kind: PublishKind::Live,
        }]
    );
    assert_eq!(pair.client_events(), []);
    pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
    assert_eq!(
        pair.client_events(),
        [
            ClientEvent::UserControl(UserControlEvent::StreamBegin(1)),
            status(1, level::STATUS, code::PUBLISH_START, "cam is now published."),
        ]
    );

    let metadata = Amf0Value::EcmaArray(vec![
        ("width".into(), Amf0Value::Number(1280.0)),
        ("height".into(), Amf0Value::Number(720.0)),
        ("encoder".into(), Amf0Value::string("rtmp-proto tests")),
    ]);
    pair.client.send_metadata(1, &metadata);
    let sent = [
        (MediaKind::Audio, 0, vec![0xaf, 0x00, 0x12, 0x10]),
        (MediaKind::Video, 0, [&[0x17, 0x00, 0, 0, 0][..], &pattern(40, 1)].concat()),
        (MediaKind::Video, 0, [&[0x17, 0x01, 0, 0, 0][..], &pattern(10_000, 2)].concat()),
        (MediaKind::Audio, 23, [&[0xaf, 0x01][..], &pattern(300, 3)].concat()),
        (MediaKind::Video, 40, vec![0x27, 0x01, 0, 0, 0]),
        (MediaKind::Audio, 46, vec![]),
        // Past 0xffffff: extended timestamps on every chunk of the message.
        (MediaKind::Video, 0x0100_0000, [&[0x27, 0x01, 0, 0, 0][..], &pattern(2500, 4)].concat()),
        (MediaKind::Audio, u32::MAX, vec![0xaf, 0x01, 0x55]),
    ];
    for (kind, timestamp, payload) in &sent {
        pair.client.send_media(1, *kind, RtmpTimestamp(*timestamp), payload);
    }
    pair.pump().unwrap();
    let mut expected = vec![ServerEvent::Media(Media {
        stream_id: 1,
        kind: MediaKind::Data,
        timestamp: RtmpTimestamp::ZERO,
        payload: amf(&[Amf0Value::string("onMetaData"), metadata]),
        is_metadata: true,
    })];
    expected.extend(sent.iter().map(|(kind, timestamp, payload)| {
        ServerEvent::Media(Media {
            stream_id: 1,
            kind: *kind,
            timestamp: RtmpTimestamp(*timestamp),
            payload: Bytes::from(payload.clone()),
            is_metadata: false,
        })
    }));
    assert_eq!(pair.server_events(), expected);
    assert_eq!(pair.server.partial_bytes(), 0);

    // deleteStream ends the publish: the server says so to both.
    pair.client.delete_stream(1);
    pair.pump().unwrap();
    assert_eq!(pair.server_events(), [ServerEvent::StreamClosed { stream_id: 1 }]);
    assert_eq!(
        pair.client_events(),
        [status(1, level::STATUS, code::UNPUBLISH_SUCCESS, "Stopped publishing")]
    );
}

#[test]
fn plain_handshake_publish_flow() {
    publish_flow(false, usize::MAX);
}

#[test]
fn digest_handshake_publish_flow() {
    publish_flow(true, usize::MAX);
}

#[test]
fn publish_flow_at_every_fragment_size() {
    for &fragment in FRAGMENTS {
        for digest in [false, true] {
            publish_flow(digest, fragment);
        }
    }
}

/// The C1 and S1 version fields say which handshake ran: zero for plain; Flash Player 9.0.124.2
/// and FMS 4.5.0.1 for digest.
#[test]
fn handshake_kind_is_visible_on_the_wire() {
    for (digest, client_version, server_version) in
        [(false, [0, 0, 0, 0], [0, 0, 0, 0]), (true, [9, 0, 124, 2], [4, 5, 0, 1])]
    {
        let mut pair = Pair::new(digest, usize::MAX);
        pair.pump().unwrap();
        assert_eq!(pair.client_events(), [ClientEvent::HandshakeDone]);
        assert_eq!(pair.client_log.len(), HANDSHAKE_BYTES);
        assert_eq!(pair.server_log.len(), HANDSHAKE_BYTES);
        assert_eq!((pair.client_log[0], pair.server_log[0]), (3, 3));
        assert_eq!(pair.client_log[1..5], CLIENT_EPOCH.to_be_bytes());
        assert_eq!(pair.server_log[1..5], SERVER_EPOCH.to_be_bytes());
        assert_eq!(pair.client_log[5..9], client_version);
        assert_eq!(pair.server_log[5..9], server_version);
    }
}

/// Two runs with the same inputs write the same bytes.
#[test]
fn pair_is_deterministic() {
    let run = || {
        let mut pair = Pair::connected(true, 7);
        pair.client.publish(1, "cam");
        pair.pump().unwrap();
        pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
        (pair.client_log, pair.server_log)
    };
    assert_eq!(run(), run());
}

fn play_flow(digest: bool, fragment: usize) {
    let mut pair = Pair::connected(digest, fragment);
    pair.client.play(1, "cam");
    pair.pump().unwrap();
    assert_eq!(
        pair.server_events(),
        [ServerEvent::PlayRequested {
            stream_id: 1,
            name: StreamName { key: "cam".into(), query: None }
        }]
    );
    pair.answer(|server| server.accept_play(1, "cam")).unwrap();
    assert_eq!(
        pair.client_events(),
        [
            ClientEvent::UserControl(UserControlEvent::StreamBegin(1)),
            status(1, level::STATUS, code::PLAY_RESET, "Playing and resetting cam."),
            status(1, level::STATUS, code::PLAY_START, "Started playing cam."),
            ClientEvent::Media(Media {
                stream_id: 1,
                kind: MediaKind::Data,
                timestamp: RtmpTimestamp::ZERO,
                payload: amf(&[
                    Amf0Value::string("|RtmpSampleAccess"),
                    Amf0Value::Boolean(true),
                    Amf0Value::Boolean(true),
                ]),
                is_metadata: false,
            }),
        ]
    );
    // The client asked for a buffer with its play, as Flash does.
    assert!(controls(&pair.client_messages()).contains(&ControlMessage::UserControl(
        UserControlEvent::SetBufferLength { stream_id: 1, millis: 1000 }
    )));

    // The relay writes media with its own encoder at the announced chunk size; the client
    // decodes it between session messages.
    let encoder = ChunkEncoder::new(pair.server.out_chunk_size());
    let mut out = BytesMut::new();
    let video = [&[0x17, 0x01][..], &pattern(9000, 5)].concat();
    let header =
        MessageHeader { timestamp: RtmpTimestamp(33), type_id: type_id::VIDEO, stream_id: 1 };
    encoder.encode(MediaKind::Video.csid(), &header, &video, &mut out);
    pair.inject_to_client(&out).unwrap();
    assert_eq!(
        pair.client_events(),
        [ClientEvent::Media(Media {
            stream_id: 1,
            kind: MediaKind::Video,
            timestamp: RtmpTimestamp(33),
            payload: video.into(),
            is_metadata: false,
        })]
    );

    // pause and unpause are answered and reported.
    let pause = CommandMessage::new("pause", 0.0, Amf0Value::Null)
        .arg(Amf0Value::Boolean(true))
        .arg(Amf0Value::Number(1000.0));
    pair.client.send_raw(&raw_command(1, &pause));
    pair.pump().unwrap();
    assert_eq!(pair.server_events(), [ServerEvent::Paused { stream_id: 1, paused: true }]);
    assert_eq!(pair.client_events(), [status(1, level::STATUS, code::PAUSE_NOTIFY, "Paused live")]);
}

#[test]
fn play_flow_plain_and_digest() {
    play_flow(false, usize::MAX);
    play_flow(true, usize::MAX);
}

#[test]
fn play_flow_at_every_fragment_size() {
    for &fragment in FRAGMENTS {
        play_flow(true, fragment);
    }
}

fn reject_publish_flow(fragment: usize) {
    let mut pair = Pair::connected(false, fragment);
    pair.client.publish(1, "taken");
    pair.pump().unwrap();
    assert!(matches!(pair.server_events()[..], [ServerEvent::PublishRequested { .. }]));
    pair.answer(|server| server.reject_publish(1, code::PUBLISH_BAD_NAME, "taken is in use"))
        .unwrap();
    assert_eq!(
        pair.client_events(),
        [status(1, level::ERROR, code::PUBLISH_BAD_NAME, "taken is in use")]
    );
    // Media sent anyway is dropped, not relayed and not an error.
    pair.client.send_media(1, MediaKind::Video, RtmpTimestamp(0), &[0x17, 0x00]);
    pair.pump().unwrap();
    assert_eq!(pair.server_events(), []);
    // The stream is idle again: the client may try another name.
    pair.client.publish(1, "free");
    pair.pump().unwrap();
    assert_eq!(
        pair.server_events(),
        [ServerEvent::PublishRequested {
            stream_id: 1,
            name: StreamName { key: "free".into(), query: None },
            kind: PublishKind::Live,
        }]
    );
}

#[test]
fn reject_publish_at_every_fragment_size() {
    for &fragment in FRAGMENTS {
        reject_publish_flow(fragment);
    }
}

#[test]
fn reject_play() {
    let mut pair = Pair::connected(false, usize::MAX);
    pair.client.play(1, "nothing");
    pair.pump().unwrap();
    pair.answer(|server| server.reject_play(1, code::PLAY_STREAM_NOT_FOUND, "no such stream"))
        .unwrap();
    assert_eq!(
        pair.client_events(),
        [status(1, level::ERROR, code::PLAY_STREAM_NOT_FOUND, "no such stream")]
    );
}

/// Media in the same read as its publish waits for the answer: it is neither dropped nor relayed
/// before the publish is accepted.
#[test]
fn media_right_behind_publish_waits_for_the_answer() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.publish(1, "cam");
        pair.client.send_media(1, MediaKind::Audio, RtmpTimestamp(5), &[0xaf, 0x01, 0x02]);
        pair.pump().unwrap();
        assert!(
            matches!(pair.server_events()[..], [ServerEvent::PublishRequested { .. }]),
            "fragment {fragment}"
        );
        pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
        assert_eq!(
            pair.server_events(),
            [ServerEvent::Media(Media {
                stream_id: 1,
                kind: MediaKind::Audio,
                timestamp: RtmpTimestamp(5),
                payload: Bytes::from_static(&[0xaf, 0x01, 0x02]),
                is_metadata: false,
            })],
            "fragment {fragment}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Notifications a relay writes beside the session.

#[test]
fn notifications_decode_on_the_client() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.play(1, "cam");
        pair.pump().unwrap();
        pair.answer(|server| server.accept_play(1, "cam")).unwrap();
        pair.client_events();
        let encoder = ChunkEncoder::new(pair.server.out_chunk_size());
        type Notify = fn(&ChunkEncoder, u32, &str, &mut BytesMut);
        let cases: [(Notify, UserControlEvent, &str, &str); 3] = [
            (
                notify::unpublished,
                UserControlEvent::StreamEof(1),
                code::PLAY_UNPUBLISH_NOTIFY,
                "cam is now unpublished.",
            ),
            (
                notify::published,
                UserControlEvent::StreamBegin(1),
                code::PLAY_PUBLISH_NOTIFY,
                "cam is now published.",
            ),
            (
                notify::play_stopped,
                UserControlEvent::StreamEof(1),
                code::PLAY_STOP,
                "Stopped playing cam.",
            ),
        ];
        for (write, event, code, description) in cases {
            let mut out = BytesMut::new();
            write(&encoder, 1, "cam", &mut out);
            pair.inject_to_client(&out).unwrap();
            assert_eq!(
                pair.client_events(),
                [ClientEvent::UserControl(event), status(1, level::STATUS, code, description)],
                "fragment {fragment}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Acknowledgements and pings.

/// The client announces a window of N bytes; the server acknowledges each time N more bytes
/// arrived, with the running count.
#[test]
fn server_acknowledges_the_client_window() {
    const WINDOW: u32 = 1000;
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.send_raw(&raw_control(ControlMessage::WindowAckSize(WINDOW)));
        pair.client.publish(1, "cam");
        pair.pump().unwrap();
        pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
        for i in 0..20u32 {
            pair.client.send_media(1, MediaKind::Video, RtmpTimestamp(i * 40), &pattern(700, 1));
            pair.pump().unwrap();
        }
        pair.server_events();
        let acks: Vec<u32> = controls(&pair.server_messages())
            .into_iter()
            .filter_map(|c| match c {
                ControlMessage::Acknowledgement { sequence_number } => Some(sequence_number),
                _ => None,
            })
            .collect();
        let received = (pair.client_log.len() - HANDSHAKE_BYTES) as u32;
        assert!(acks.len() >= 10, "fragment {fragment}: {acks:?}");
        let mut last = 0;
        for &ack in &acks {
            assert!(ack - last >= WINDOW, "fragment {fragment}: {acks:?}");
            assert!(ack <= received);
            last = ack;
        }
        assert!(received - last < WINDOW, "fragment {fragment}: {received} received, {acks:?}");
    }
}

/// The server announces its window in connect's answer; the client acknowledges and the server
/// reports the acknowledgements.
#[test]
fn client_acknowledges_the_server_window() {
    let server_config = SessionConfig { window_ack_size: 300, ..SessionConfig::default() };
    let mut pair = Pair::with_configs(false, 7, SessionConfig::default(), server_config);
    pair.connect().unwrap();
    pair.client.play(1, "cam");
    pair.pump().unwrap();
    pair.answer(|server| server.accept_play(1, "cam")).unwrap();
    let acks: Vec<u32> = pair
        .server_events()
        .into_iter()
        .filter_map(|e| match e {
            ServerEvent::Acknowledged { sequence_number } => Some(sequence_number),
            _ => None,
        })
        .collect();
    let received = pair.client.bytes_received();
    assert_eq!(received, (pair.server_log.len() - HANDSHAKE_BYTES) as u64);
    assert!(!acks.is_empty());
    let mut last = 0;
    for &ack in &acks {
        assert!(ack - last >= 300, "{acks:?}");
        last = ack;
    }
    assert!(received - u64::from(last) < 300, "{received} received, {acks:?}");
}

#[test]
fn ping_request_gets_a_ping_response() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.send_raw(&raw_control(ControlMessage::UserControl(
            UserControlEvent::PingRequest(0x1234_5678),
        )));
        pair.pump().unwrap();
        assert_eq!(
            pair.client_events(),
            [ClientEvent::UserControl(UserControlEvent::PingResponse(0x1234_5678))]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// A command out of place gets an error reply, and the session goes on (design.md, invariant 7).

/// The last command the server wrote: the message stream id it went on and its payload bytes.
fn last_server_command(pair: &Pair) -> (u32, Bytes) {
    let messages = pair.server_messages();
    let last = messages
        .iter()
        .rev()
        .find(|m| m.header.type_id == type_id::COMMAND_AMF0)
        .expect("the server wrote a command");
    (last.header.stream_id, last.payload.clone())
}

fn refused(stream_id: u32, command: &'static str, reason: &'static str) -> ServerEvent {
    ServerEvent::CommandRefused { stream_id, command, reason }
}

/// Publishes `key` on stream 1 of a connected pair and checks that media still reaches the
/// server: the publish survived whatever came before.
fn assert_media_flows(pair: &mut Pair, stream_id: u32, timestamp: u32) {
    pair.client.send_media(stream_id, MediaKind::Audio, RtmpTimestamp(timestamp), &[0xaf, 0x01]);
    pair.pump().unwrap();
    assert_eq!(
        pair.server_events(),
        [ServerEvent::Media(Media {
            stream_id,
            kind: MediaKind::Audio,
            timestamp: RtmpTimestamp(timestamp),
            payload: Bytes::from_static(&[0xaf, 0x01]),
            is_metadata: false,
        })]
    );
}

#[test]
fn calls_before_connect_get_errors_and_connect_still_works() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::new(false, fragment);
        pair.pump().unwrap();
        assert_eq!(pair.client_events(), [ClientEvent::HandshakeDone]);
        pair.client.create_stream(); // transaction 1
        pair.pump().unwrap();
        let description = "createStream refused: connect first";
        assert_eq!(
            last_server_command(&pair),
            (0, command::error(1.0, code::CALL_FAILED, description).to_bytes())
        );
        pair.client.publish(1, "cam");
        pair.pump().unwrap();
        let description = "publish on stream 1 refused: connect first";
        let bad_name = command::on_status(level::ERROR, code::PUBLISH_BAD_NAME, description, None);
        assert_eq!(last_server_command(&pair), (1, bad_name.to_bytes()));
        pair.client.play(1, "cam");
        pair.pump().unwrap();
        let description = "play on stream 1 refused: connect first";
        let failed = command::on_status(level::ERROR, code::PLAY_FAILED, description, None);
        assert_eq!(last_server_command(&pair), (1, failed.to_bytes()));
        assert_eq!(
            pair.client_events(),
            [
                ClientEvent::CallFailed {
                    command: "createStream".into(),
                    code: Some(code::CALL_FAILED.into())
                },
                status(
                    1,
                    level::ERROR,
                    code::PUBLISH_BAD_NAME,
                    "publish on stream 1 refused: connect first"
                ),
                status(
                    1,
                    level::ERROR,
                    code::PLAY_FAILED,
                    "play on stream 1 refused: connect first"
                ),
            ],
            "fragment {fragment}"
        );
        assert_eq!(
            pair.server_events(),
            [
                refused(0, "createStream", "connect first"),
                refused(1, "publish", "connect first"),
                refused(1, "play", "connect first"),
            ],
            "fragment {fragment}"
        );
        assert_eq!(pair.server.app(), None, "still waiting for connect");
        // Nothing was created: after connect, createStream hands out id 1.
        pair.client.connect("live", "rtmp://relay.test/live");
        pair.client.create_stream();
        pair.pump().unwrap();
        assert_eq!(
            pair.client_events(),
            [ClientEvent::Connected, ClientEvent::StreamCreated { stream_id: 1 }],
            "fragment {fragment}"
        );
        assert!(matches!(pair.server_events()[..], [ServerEvent::Connected(_)]));
    }
}

#[test]
fn a_second_connect_gets_an_error_and_the_session_goes_on() {
    let mut pair = Pair::connected(false, usize::MAX);
    pair.client.publish(1, "cam");
    pair.pump().unwrap();
    pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
    pair.client_events();
    pair.server_events();
    pair.client.connect("other", "rtmp://relay.test/other"); // transaction 4
    pair.pump().unwrap();
    let description = "connect refused: already connected";
    assert_eq!(
        last_server_command(&pair),
        (0, command::error(4.0, code::CALL_FAILED, description).to_bytes())
    );
    assert_eq!(
        pair.client_events(),
        [ClientEvent::CallFailed {
            command: "connect".into(),
            code: Some(code::CALL_FAILED.into())
        }]
    );
    assert_eq!(pair.server_events(), [refused(0, "connect", "already connected")]);
    assert_eq!(pair.server.app(), Some("live"), "the first connect stands");
    assert_media_flows(&mut pair, 1, 40);
}

#[test]
fn publish_on_a_stream_never_created_gets_bad_name() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.publish(7, "cam");
        pair.pump().unwrap();
        let description = "publish on stream 7 refused: createStream did not give this stream id";
        let bad_name = command::on_status(level::ERROR, code::PUBLISH_BAD_NAME, description, None);
        assert_eq!(last_server_command(&pair), (7, bad_name.to_bytes()));
        assert_eq!(
            pair.client_events(),
            [status(7, level::ERROR, code::PUBLISH_BAD_NAME, description)]
        );
        assert_eq!(
            pair.server_events(),
            [refused(7, "publish", "createStream did not give this stream id")]
        );
        // Media on the stream that was refused goes nowhere.
        pair.client.send_media(7, MediaKind::Audio, RtmpTimestamp(0), &[0xaf, 0x01]);
        pair.pump().unwrap();
        assert_eq!(pair.server_events(), []);
        // The stream createStream gave is still there to publish on.
        pair.client.publish(1, "cam");
        pair.pump().unwrap();
        assert!(matches!(
            pair.server_events()[..],
            [ServerEvent::PublishRequested { stream_id: 1, .. }]
        ));
        pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
        assert_media_flows(&mut pair, 1, 0);
    }
}

/// A retry of publish on the stream id that publishes already (another name or the same) is
/// refused; the publish that runs is untouched.
#[test]
fn publish_on_a_publishing_stream_gets_bad_name_and_the_publish_goes_on() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.publish(1, "cam");
        pair.pump().unwrap();
        pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
        pair.client_events();
        pair.server_events();
        for name in ["cam", "other"] {
            pair.client.publish(1, name);
            pair.pump().unwrap();
            let description = "publish on stream 1 refused: this stream id is already publishing";
            let bad_name =
                command::on_status(level::ERROR, code::PUBLISH_BAD_NAME, description, None);
            assert_eq!(last_server_command(&pair), (1, bad_name.to_bytes()));
            assert_eq!(
                pair.client_events(),
                [status(1, level::ERROR, code::PUBLISH_BAD_NAME, description)]
            );
            assert_eq!(
                pair.server_events(),
                [refused(1, "publish", "this stream id is already publishing")]
            );
            assert_media_flows(&mut pair, 1, 20);
        }
        // It still ends as a publish does.
        pair.client.delete_stream(1);
        pair.pump().unwrap();
        assert_eq!(pair.server_events(), [ServerEvent::StreamClosed { stream_id: 1 }]);
    }
}

#[test]
fn play_on_a_publishing_stream_gets_play_failed_and_a_fresh_stream_plays() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.publish(1, "cam");
        pair.pump().unwrap();
        pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
        pair.client_events();
        pair.server_events();
        pair.client.play(1, "cam");
        pair.pump().unwrap();
        let description = "play on stream 1 refused: this stream id is already publishing";
        let failed = command::on_status(level::ERROR, code::PLAY_FAILED, description, None);
        assert_eq!(last_server_command(&pair), (1, failed.to_bytes()));
        assert_eq!(pair.client_events(), [status(1, level::ERROR, code::PLAY_FAILED, description)]);
        assert_eq!(
            pair.server_events(),
            [refused(1, "play", "this stream id is already publishing")]
        );
        assert_media_flows(&mut pair, 1, 40);
        pair.client.create_stream();
        pair.pump().unwrap();
        assert_eq!(pair.client_events(), [ClientEvent::StreamCreated { stream_id: 2 }]);
        pair.client.play(2, "cam");
        pair.pump().unwrap();
        assert!(matches!(
            pair.server_events()[..],
            [ServerEvent::PlayRequested { stream_id: 2, .. }]
        ));
        pair.answer(|server| server.accept_play(2, "cam")).unwrap();
        assert!(pair.client_events().contains(&status(
            2,
            level::STATUS,
            code::PLAY_START,
            "Started playing cam."
        )));
    }
}

#[test]
fn publish_or_play_on_a_playing_stream_gets_an_error_and_the_play_goes_on() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        pair.client.play(1, "cam");
        pair.pump().unwrap();
        pair.answer(|server| server.accept_play(1, "cam")).unwrap();
        pair.client_events();
        pair.server_events();
        let description = "publish on stream 1 refused: this stream id is already playing";
        pair.client.publish(1, "cam");
        pair.pump().unwrap();
        let bad_name = command::on_status(level::ERROR, code::PUBLISH_BAD_NAME, description, None);
        assert_eq!(last_server_command(&pair), (1, bad_name.to_bytes()));
        assert_eq!(
            pair.client_events(),
            [status(1, level::ERROR, code::PUBLISH_BAD_NAME, description)]
        );
        assert_eq!(
            pair.server_events(),
            [refused(1, "publish", "this stream id is already playing")]
        );
        // Media a confused client sends on its playing stream is not taken as published.
        pair.client.send_media(1, MediaKind::Audio, RtmpTimestamp(0), &[0xaf, 0x01]);
        pair.pump().unwrap();
        assert_eq!(pair.server_events(), []);
        let description = "play on stream 1 refused: this stream id is already playing";
        pair.client.play(1, "other");
        pair.pump().unwrap();
        let failed = command::on_status(level::ERROR, code::PLAY_FAILED, description, None);
        assert_eq!(last_server_command(&pair), (1, failed.to_bytes()));
        assert_eq!(pair.client_events(), [status(1, level::ERROR, code::PLAY_FAILED, description)]);
        assert_eq!(pair.server_events(), [refused(1, "play", "this stream id is already playing")]);
        // Still playing: pause reaches the driver, and closeStream ends the play.
        let pause = CommandMessage::new("pause", 0.0, Amf0Value::Null)
            .arg(Amf0Value::Boolean(true))
            .arg(Amf0Value::Number(0.0));
        pair.client.send_raw(&raw_command(1, &pause));
        let close = CommandMessage::new("closeStream", 0.0, Amf0Value::Null);
        pair.client.send_raw(&raw_command(1, &close));
        pair.pump().unwrap();
        assert_eq!(
            pair.server_events(),
            [
                ServerEvent::Paused { stream_id: 1, paused: true },
                ServerEvent::StreamClosed { stream_id: 1 }
            ]
        );
    }
}

/// A driver that reads on before answering a request (this crate's relay does not) sees a
/// second request on the same stream id refused, and can still answer the first.
#[test]
fn publish_while_a_request_waits_is_refused() {
    let mut pair = Pair::connected(false, usize::MAX);
    pair.client.publish(1, "cam");
    pair.pump().unwrap();
    assert!(matches!(pair.server_events()[..], [ServerEvent::PublishRequested { .. }]));
    pair.answer(|_| {}).unwrap(); // read on, unanswered
    pair.client.publish(1, "cam");
    pair.pump().unwrap();
    let reason = "this stream id is waiting for the answer to a publish or play";
    assert_eq!(pair.server_events(), [refused(1, "publish", reason)]);
    let description = format!("publish on stream 1 refused: {reason}");
    assert_eq!(
        pair.client_events(),
        [status(1, level::ERROR, code::PUBLISH_BAD_NAME, &description)]
    );
    pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
    assert_media_flows(&mut pair, 1, 0);
}

/// A call without a transaction id expects no answer: a misplaced one is refused silently
/// (and reported to the driver).
#[test]
fn a_misplaced_call_without_transaction_id_gets_no_reply() {
    let mut pair = Pair::new(false, usize::MAX);
    pair.pump().unwrap();
    pair.client_events();
    let before = pair.server_log.len();
    pair.client.delete_stream(1); // transaction id 0
    pair.pump().unwrap();
    assert_eq!(pair.server_log.len(), before, "nothing written");
    assert_eq!(pair.server_events(), [refused(0, "deleteStream", "connect first")]);
}

// ---------------------------------------------------------------------------------------------
// Limits are errors.

#[test]
fn too_many_message_streams() {
    let server_config = SessionConfig { max_message_streams: 2, ..SessionConfig::default() };
    let mut pair = Pair::with_configs(false, 7, SessionConfig::default(), server_config);
    pair.connect().unwrap(); // stream 1
    pair.client.create_stream();
    pair.pump().unwrap();
    assert_eq!(pair.client_events(), [ClientEvent::StreamCreated { stream_id: 2 }]);
    pair.client.create_stream();
    assert_eq!(pair.pump(), Err((Side::Server, SessionError::TooManyStreams { limit: 2 })));
}

/// deleteStream frees a slot: the limit is on open streams, and ids are never reused.
#[test]
fn deleted_streams_free_their_slot() {
    let server_config = SessionConfig { max_message_streams: 1, ..SessionConfig::default() };
    let mut pair = Pair::with_configs(false, 7, SessionConfig::default(), server_config);
    pair.connect().unwrap();
    pair.client.delete_stream(1);
    pair.client.create_stream();
    pair.pump().unwrap();
    assert_eq!(pair.client_events(), [ClientEvent::StreamCreated { stream_id: 2 }]);
}

/// A player that plays without createStream gets an implicit stream with the id it used. A
/// later createStream must not hand out that id again.
#[test]
fn create_stream_after_implicit_play_stream_gets_a_fresh_id() {
    let mut pair = Pair::new(false, usize::MAX);
    pair.pump().unwrap();
    pair.client.connect("live", "rtmp://relay.test/live");
    pair.pump().unwrap();
    pair.client_events();
    pair.server_events();
    pair.client.play(1, "cam"); // no createStream first
    pair.pump().unwrap();
    assert!(matches!(pair.server_events()[..], [ServerEvent::PlayRequested { stream_id: 1, .. }]));
    pair.answer(|server| server.accept_play(1, "cam")).unwrap();
    pair.client_events();
    pair.client.create_stream();
    pair.pump().unwrap();
    let created = pair.client_events();
    assert_eq!(created.len(), 1);
    assert_ne!(created[0], ClientEvent::StreamCreated { stream_id: 1 }, "id 1 is playing");
}

/// Old players play on stream 0 without createStream; the server gives them a stream 0. Playing
/// again on stream 0 after closeStream must reuse it, not add another entry per play until
/// `max_message_streams` refuses the connection.
#[test]
fn repeated_play_on_stream_zero_reuses_its_stream() {
    let server_config = SessionConfig { max_message_streams: 2, ..SessionConfig::default() };
    let mut pair = Pair::with_configs(false, usize::MAX, SessionConfig::default(), server_config);
    pair.connect().unwrap(); // stream 1
    for round in 0..3 {
        pair.client.play(0, "cam");
        pair.pump().unwrap_or_else(|e| panic!("round {round}: {e:?}"));
        assert!(
            matches!(pair.server_events()[..], [ServerEvent::PlayRequested { stream_id: 0, .. }]),
            "round {round}"
        );
        pair.answer(|server| server.accept_play(0, "cam")).unwrap();
        let close = CommandMessage::new("closeStream", 0.0, Amf0Value::Null);
        pair.client.send_raw(&raw_command(0, &close));
        pair.pump().unwrap();
        assert_eq!(pair.server_events(), [ServerEvent::StreamClosed { stream_id: 0 }]);
    }
}

#[test]
fn unknown_command_gets_an_error_reply() {
    let mut pair = Pair::connected(false, 7);
    let call = CommandMessage::new("getSecretSauce", 42.0, Amf0Value::Null);
    pair.client.send_raw(&raw_command(0, &call));
    // Without a transaction id there is nobody to answer.
    let notification = CommandMessage::new("someNotification", 0.0, Amf0Value::Null);
    pair.client.send_raw(&raw_command(0, &notification));
    pair.pump().unwrap();
    assert_eq!(pair.server_events(), []);
    let replies: Vec<CommandMessage> = commands(&pair.server_messages())
        .into_iter()
        .filter(|c| c.name == "_error" || c.transaction_id == 42.0)
        .collect();
    assert_eq!(
        replies,
        [command::error(42.0, "NetConnection.Call.Failed", "Method not supported")]
    );
}

/// The client reports an `_error` for a call it made as CallFailed with the code. The client
/// API only makes calls the server answers, so the call here is made by hand with the next
/// transaction id the client will expect... for its publish, whose answer is onStatus: the
/// unknown command reuses the publish's transaction id.
#[test]
fn client_sees_call_failed_for_an_error_reply() {
    let mut pair = Pair::connected(false, usize::MAX);
    // Transaction ids so far: connect 1, createStream 2. publish takes 3 and is never answered
    // with `_result`, so 3 stays pending on the client.
    pair.client.publish(1, "cam");
    pair.pump().unwrap();
    pair.answer(|server| server.accept_publish(1, "cam")).unwrap();
    pair.client_events();
    let call = CommandMessage::new("getSecretSauce", 3.0, Amf0Value::Null);
    pair.client.send_raw(&raw_command(0, &call));
    pair.pump().unwrap();
    assert_eq!(
        pair.client_events(),
        [ClientEvent::CallFailed {
            command: "publish".into(),
            code: Some("NetConnection.Call.Failed".into())
        }]
    );
}

/// FMLE-style calls before publish, and ffmpeg's FCSubscribe before play, get an empty
/// `_result` so the client does not wait.
#[test]
fn courtesy_calls_get_a_result() {
    for &fragment in FRAGMENTS {
        let mut pair = Pair::connected(false, fragment);
        let names = ["releaseStream", "FCPublish", "FCSubscribe", "getStreamLength"];
        for (i, name) in names.iter().enumerate() {
            let call = CommandMessage::new(*name, 10.0 + i as f64, Amf0Value::Null)
                .arg(Amf0Value::string("cam"));
            pair.client.send_raw(&raw_command(0, &call));
        }
        pair.pump().unwrap();
        assert_eq!(pair.server_events(), []);
        let replies: Vec<CommandMessage> = commands(&pair.server_messages())
            .into_iter()
            .filter(|c| c.transaction_id >= 10.0)
            .collect();
        assert_eq!(
            replies,
            [
                command::result(10.0, vec![Amf0Value::Undefined]),
                command::result(11.0, vec![Amf0Value::Undefined]),
                command::result(12.0, vec![Amf0Value::Undefined]),
                command::result(13.0, vec![Amf0Value::Number(0.0)]),
            ],
            "fragment {fragment}"
        );
    }
}

#[test]
fn chunk_errors_surface_as_session_errors() {
    let mut pair = Pair::connected(false, usize::MAX);
    // A type 3 chunk on a chunk stream never used.
    pair.client.send_raw(&[0xc9]);
    assert_eq!(
        pair.pump(),
        Err((
            Side::Server,
            SessionError::Chunk(rtmp_proto::chunk::DecodeError::NoPreviousHeader {
                csid: 9,
                fmt: 3
            })
        ))
    );
}

#[test]
fn a_bad_version_byte_is_a_handshake_error() {
    let mut server = ServerSession::new(SessionConfig::default(), 0, &fixed_random(3), t0());
    let mut input = BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]);
    let error = server.handle_input(&mut input, t0()).unwrap_err();
    assert_eq!(error.kind(), "handshake");
}

// ---------------------------------------------------------------------------------------------
// Time limits, on virtual time: nothing sleeps, the test says how much time passes, and the
// server is asked what the relay's read loop asks (`poll_timeout`, then `handle_timeout`).

/// Distinct limits, so each deadline says which limit it belongs to.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(5);
const IDLE_LIMIT: Duration = Duration::from_secs(7);
const PUBLISHER_LIMIT: Duration = Duration::from_secs(3);
/// Less than any limit: "a moment before".
const TICK: Duration = Duration::from_millis(1);

fn timed_pair(fragment: usize) -> Pair {
    let server = SessionConfig {
        handshake_timeout: HANDSHAKE_LIMIT,
        idle_before_play: IDLE_LIMIT,
        publisher_idle: PUBLISHER_LIMIT,
        ..SessionConfig::default()
    };
    Pair::with_configs(false, fragment, SessionConfig::default(), server)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl Pair {
    /// The server's next deadline, as virtual time since `t0`.
    fn deadline(&self) -> Option<Duration> {
        self.server.poll_timeout().map(|at| at - t0())
    }

    /// What the read loop does when no bytes come: a moment before the deadline nothing
    /// happens; at it, `limit` ends the session.
    fn expect_timeout_at(&mut self, at: Duration, limit: TimeLimit) {
        assert_eq!(self.deadline(), Some(at), "the {limit:?} deadline");
        assert_eq!(self.server.handle_timeout(t0() + at - TICK), Ok(()), "early: nothing");
        let error = self.server.handle_timeout(t0() + at).unwrap_err();
        assert_eq!(error, SessionError::Timeout(limit));
        assert_eq!(error.kind(), limit.name());
        assert_eq!(self.server.handle_timeout(t0() + at + secs(60)), Err(error), "and later");
    }

    /// publish(`key`) on `stream_id`, accepted.
    fn publish_accepted(&mut self, stream_id: u32, key: &str) {
        self.client.publish(stream_id, key);
        self.pump().unwrap();
        assert!(matches!(self.server_events()[..], [ServerEvent::PublishRequested { .. }]));
        self.answer(|server| server.accept_publish(stream_id, key)).unwrap();
        self.client_events();
    }

    /// play(`key`) on `stream_id`, accepted.
    fn play_accepted(&mut self, stream_id: u32, key: &str) {
        self.client.play(stream_id, key);
        self.pump().unwrap();
        assert!(matches!(self.server_events()[..], [ServerEvent::PlayRequested { .. }]));
        self.answer(|server| server.accept_play(stream_id, key)).unwrap();
        self.client_events();
    }
}

/// The names the relay's counters and logs have always used.
#[test]
fn time_limits_keep_their_names() {
    assert_eq!(TimeLimit::Handshake.name(), "handshake_timeout");
    assert_eq!(TimeLimit::IdleBeforePlay.name(), "idle_before_play");
    assert_eq!(TimeLimit::PublisherIdle.name(), "publisher_idle");
    let error = SessionError::Timeout(TimeLimit::IdleBeforePlay);
    assert_eq!(error.kind(), "idle_before_play");
    assert_eq!(error.to_string(), "time limit idle_before_play reached");
}

/// The defaults are the relay's flag defaults (`--handshake-timeout-secs` and the others).
#[test]
fn default_time_limits() {
    let config = SessionConfig::default();
    assert_eq!(config.handshake_timeout, secs(10));
    assert_eq!(config.idle_before_play, secs(30));
    assert_eq!(config.publisher_idle, secs(30));
}

/// A connection that says nothing at all is cut off when the handshake limit runs out.
#[test]
fn a_silent_connection_meets_the_handshake_limit() {
    let mut pair = timed_pair(usize::MAX);
    pair.expect_timeout_at(HANDSHAKE_LIMIT, TimeLimit::Handshake);
}

/// Handshake plus connect must fit the limit, counted from `new`: bytes that come meanwhile,
/// however many, do not push it (a slowloris trickling its handshake or its connect).
#[test]
fn the_handshake_limit_counts_from_new_until_connect() {
    for &fragment in FRAGMENTS {
        let mut pair = timed_pair(fragment);
        pair.advance(secs(1));
        pair.pump().unwrap();
        assert_eq!(pair.client_events(), [ClientEvent::HandshakeDone]);
        assert_eq!(pair.deadline(), Some(HANDSHAKE_LIMIT), "fragment {fragment}");
        // A call before connect is refused, and does not buy time either.
        pair.advance(secs(3));
        pair.client.create_stream();
        pair.pump().unwrap();
        assert!(matches!(pair.server_events()[..], [ServerEvent::CommandRefused { .. }]));
        pair.expect_timeout_at(HANDSHAKE_LIMIT, TimeLimit::Handshake);
    }
}

/// Once connected, the handshake limit is over; the client has `idle_before_play` from its
/// connect to publish or play, and other calls do not extend it.
#[test]
fn connect_ends_the_handshake_limit_and_starts_idle_before_play() {
    let mut pair = timed_pair(usize::MAX);
    pair.advance(secs(2));
    pair.connect().unwrap(); // handshake, connect and createStream, all at 2 s
    assert_eq!(pair.deadline(), Some(secs(2) + IDLE_LIMIT));
    assert_eq!(pair.server.handle_timeout(t0() + HANDSHAKE_LIMIT + secs(1)), Ok(()));
    pair.advance(secs(3));
    pair.client.create_stream();
    pair.pump().unwrap();
    assert_eq!(pair.client_events(), [ClientEvent::StreamCreated { stream_id: 2 }]);
    pair.expect_timeout_at(secs(2) + IDLE_LIMIT, TimeLimit::IdleBeforePlay);
}

/// While the driver decides on a publish or play, and after it refuses one, the wait for a
/// publish or play goes on: a refused request does not restart it.
#[test]
fn a_pending_or_refused_request_leaves_idle_before_play_running() {
    let mut pair = timed_pair(usize::MAX);
    pair.connect().unwrap();
    pair.advance(secs(5));
    pair.client.publish(1, "taken");
    pair.pump().unwrap();
    assert!(matches!(pair.server_events()[..], [ServerEvent::PublishRequested { .. }]));
    assert_eq!(pair.deadline(), Some(IDLE_LIMIT), "pending");
    pair.answer(|server| server.reject_publish(1, code::PUBLISH_BAD_NAME, "taken")).unwrap();
    assert_eq!(pair.deadline(), Some(IDLE_LIMIT), "refused");
    pair.client.play(1, "nothing");
    pair.pump().unwrap();
    assert_eq!(pair.deadline(), Some(IDLE_LIMIT), "play pending");
    pair.answer(|server| server.reject_play(1, code::PLAY_STREAM_NOT_FOUND, "no")).unwrap();
    pair.expect_timeout_at(IDLE_LIMIT, TimeLimit::IdleBeforePlay);
}

/// An accepted publish ends the wait for one; from then on the publisher's silence is what is
/// limited, and every read, even of bytes that do not make a whole message yet, pushes the
/// deadline forward.
#[test]
fn a_publisher_meets_the_idle_limit_pushed_by_each_input() {
    for &fragment in FRAGMENTS {
        let mut pair = timed_pair(fragment);
        pair.connect().unwrap();
        pair.advance(secs(6));
        pair.publish_accepted(1, "cam");
        assert_eq!(pair.deadline(), Some(secs(6) + PUBLISHER_LIMIT), "fragment {fragment}");
        // Past the idle-before-play deadline: it no longer runs.
        assert_eq!(pair.server.handle_timeout(t0() + IDLE_LIMIT + secs(1)), Ok(()));

        pair.advance(secs(2));
        assert_media_flows(&mut pair, 1, 0);
        assert_eq!(pair.deadline(), Some(secs(8) + PUBLISHER_LIMIT), "fragment {fragment}");

        // The first byte of a chunk: no message yet, but the peer is there.
        pair.advance(secs(2));
        pair.client.send_raw(&[0x04]);
        pair.pump().unwrap();
        assert_eq!(pair.server_events(), []);
        assert_eq!(pair.deadline(), Some(secs(10) + PUBLISHER_LIMIT), "fragment {fragment}");
        pair.expect_timeout_at(secs(10) + PUBLISHER_LIMIT, TimeLimit::PublisherIdle);
    }
}

/// A player may stay silent as long as it likes: no deadline once its play is accepted.
#[test]
fn a_player_has_no_deadline() {
    let mut pair = timed_pair(usize::MAX);
    pair.connect().unwrap();
    pair.advance(secs(1));
    pair.play_accepted(1, "cam");
    assert_eq!(pair.deadline(), None);
    assert_eq!(pair.server.handle_timeout(t0() + secs(24 * 3600)), Ok(()));
    // Nor when it pauses.
    let pause = CommandMessage::new("pause", 0.0, Amf0Value::Null)
        .arg(Amf0Value::Boolean(true))
        .arg(Amf0Value::Number(0.0));
    pair.client.send_raw(&raw_command(1, &pause));
    pair.pump().unwrap();
    assert_eq!(pair.deadline(), None);
}

/// A publisher that also plays is limited as a publisher; when it stops publishing it is a
/// player, with no deadline.
#[test]
fn publishing_and_playing_is_limited_as_publishing() {
    let mut pair = timed_pair(usize::MAX);
    pair.connect().unwrap();
    pair.publish_accepted(1, "cam");
    pair.client.create_stream();
    pair.pump().unwrap();
    assert_eq!(pair.client_events(), [ClientEvent::StreamCreated { stream_id: 2 }]);
    pair.advance(secs(1));
    pair.play_accepted(2, "other");
    assert_eq!(pair.deadline(), Some(secs(1) + PUBLISHER_LIMIT));
    pair.advance(secs(1));
    pair.client.delete_stream(1);
    pair.pump().unwrap();
    assert_eq!(pair.server_events(), [ServerEvent::StreamClosed { stream_id: 1 }]);
    assert_eq!(pair.deadline(), None);
}

/// A connection whose last publish or play ended waits for the next one as a fresh connection
/// does: the wait counts from the end, not from its connect long ago.
#[test]
fn the_wait_for_publish_or_play_restarts_when_the_last_stream_ends() {
    let mut pair = timed_pair(usize::MAX);
    pair.connect().unwrap();
    pair.publish_accepted(1, "cam");
    for second in 1..=100 {
        pair.advance(secs(1));
        assert_media_flows(&mut pair, 1, second * 1000);
    }
    pair.client.delete_stream(1);
    pair.pump().unwrap();
    assert_eq!(pair.server_events(), [ServerEvent::StreamClosed { stream_id: 1 }]);
    assert_eq!(
        pair.client_events(),
        [status(1, level::STATUS, code::UNPUBLISH_SUCCESS, "Stopped publishing")]
    );
    assert_eq!(pair.deadline(), Some(secs(100) + IDLE_LIMIT));

    // The same for a player, and a publish accepted again ends the wait again.
    pair.client.create_stream();
    pair.pump().unwrap();
    assert_eq!(pair.client_events(), [ClientEvent::StreamCreated { stream_id: 2 }]);
    pair.advance(secs(3));
    pair.play_accepted(2, "cam");
    assert_eq!(pair.deadline(), None);
    pair.advance(secs(50));
    pair.client.delete_stream(2);
    pair.pump().unwrap();
    assert_eq!(pair.server_events(), [ServerEvent::StreamClosed { stream_id: 2 }]);
    assert_eq!(pair.deadline(), Some(secs(153) + IDLE_LIMIT));
    pair.client.create_stream();
    pair.pump().unwrap();
    pair.client_events();
    pair.advance(secs(1));
    pair.publish_accepted(3, "cam");
    assert_eq!(pair.deadline(), Some(secs(154) + PUBLISHER_LIMIT));
    pair.expect_timeout_at(secs(154) + PUBLISHER_LIMIT, TimeLimit::PublisherIdle);
}

/// A timer that wakes early changes nothing, and time the driver reports out of order does not
/// move a deadline back.
#[test]
fn early_wakeups_and_stale_instants_change_nothing() {
    let mut pair = timed_pair(usize::MAX);
    pair.connect().unwrap();
    pair.publish_accepted(1, "cam");
    pair.advance(secs(2));
    assert_media_flows(&mut pair, 1, 0);
    for early in [0, 1, 2, 4] {
        assert_eq!(pair.server.handle_timeout(t0() + secs(early)), Ok(()));
    }
    // Bytes handed over with an older instant than the last one.
    pair.now = t0() + secs(1);
    assert_media_flows(&mut pair, 1, 40);
    pair.expect_timeout_at(secs(2) + PUBLISHER_LIMIT, TimeLimit::PublisherIdle);
}

// ---------------------------------------------------------------------------------------------
// Memory: what a peer's declared lengths make the decoder allocate.

/// A header declaring 8 MiB followed by a few bytes allocates nothing; its first chunk
/// allocates about a chunk.
#[test]
fn declared_length_is_never_allocated() {
    let mut decoder = ChunkDecoder::new(Limits::default());
    let mut header = vec![0x06, 0, 0, 0, 0x80, 0, 0, 9, 1, 0, 0, 0];
    header.extend_from_slice(&[0x55; 10]);
    let mut input = BytesMut::with_capacity(4096);
    input.extend_from_slice(&header);
    let (result, allocated) = allocated_by(|| decoder.decode(&mut input));
    assert_eq!(result, Ok(None));
    assert_eq!((allocated, decoder.partial_bytes()), (0, 0));
    input.extend_from_slice(&[0x55; 118]);
    let (result, allocated) = allocated_by(|| decoder.decode(&mut input));
    assert_eq!(result, Ok(None));
    assert_eq!(decoder.partial_bytes(), 128);
    assert!(allocated <= 1024, "{allocated} bytes allocated for one 128-byte chunk");
}

/// Partial messages should hold about what they were sent. Each new partial message reserves
/// `min(declared length, input.len())` (decoder.rs, `BytesMut::with_capacity(length.min(
/// input.len()))`), and the input still holds the chunks of the other chunk streams: 61 first
/// chunks of 128 bytes in one 8.5 KB read reserve about 260 KB, while `partial_bytes` (what
/// `Limits::max_partial_bytes` caps) says 7.8 KB.
#[test]
fn partial_messages_reserve_what_they_hold() {
    let mut wire = Vec::new();
    for csid in 3u8..64 {
        wire.push(csid);
        wire.extend_from_slice(&[0, 0, 0, 0x80, 0, 0, 9, 1, 0, 0, 0]); // 8 MiB declared
        wire.extend_from_slice(&[0x55; 128]);
    }
    let mut decoder = ChunkDecoder::new(Limits::default());
    let mut input = BytesMut::from(&wire[..]);
    let (result, allocated) = allocated_by(|| decoder.decode(&mut input));
    assert_eq!(result, Ok(None));
    assert_eq!(decoder.partial_bytes(), 61 * 128);
    assert!(
        allocated <= 2 * decoder.partial_bytes(),
        "{allocated} bytes allocated to hold {} bytes",
        decoder.partial_bytes()
    );
}

// ---------------------------------------------------------------------------------------------
// Real ffmpeg captures.

/// What ffmpeg 5.1 (Lavf59.27.100) wrote after a plain handshake, for
/// `ffmpeg -re -f lavfi -i testsrc -t 2 -c:v libx264 -f flv rtmp://127.0.0.1:19355/live/key`:
/// its connect command, 140 bytes in a 128-byte chunk and a type 3 continuation.
const FFMPEG_CONNECT: &[u8] = include_bytes!("data/session_ffmpeg_connect.bin");

#[test]
fn ffmpeg_connect_capture_decodes_at_every_fragment_size() {
    for piece in [1, 2, 3, 7, 64, 127, 128, 129, 4096, usize::MAX] {
        let mut decoder = ChunkDecoder::new(Limits::default());
        let mut input = BytesMut::new();
        let mut messages = Vec::new();
        for part in FFMPEG_CONNECT.chunks(piece.min(FFMPEG_CONNECT.len())) {
            input.extend_from_slice(part);
            while let Some(message) = decoder.decode(&mut input).unwrap() {
                messages.push(message);
            }
        }
        assert!(input.is_empty());
        assert_eq!(messages.len(), 1, "piece {piece}");
        let message = &messages[0];
        assert_eq!((message.csid, message.header.type_id, message.header.stream_id), (3, 20, 0));
        let command =
            CommandMessage::decode(message.header.type_id, &message.payload, &AmfLimits::default())
                .unwrap();
        assert_eq!((command.name.as_str(), command.transaction_id), ("connect", 1.0));
        let text = |key| command.command_object.get(key).and_then(Amf0Value::as_str);
        assert_eq!(text("app"), Some("live"));
        assert_eq!(text("tcUrl"), Some("rtmp://127.0.0.1:19355/live"));
        assert_eq!(text("type"), Some("nonprivate"));
        assert_eq!(text("flashVer"), Some("FMLE/3.0 (compatible; Lavf59.27.100)"));
    }
}

/// Everything ffmpeg 5.1 wrote to a scripted server (it answered connect, createStream and
/// publish) publishing one second of testsrc 320x240@25 in H.264 and a 440 Hz sine in AAC:
/// `ffmpeg -re -f lavfi -i testsrc=size=320x240:rate=25 -f lavfi -i sine=... -t 1
/// -c:v libx264 -preset ultrafast -g 25 -c:a aac -b:a 64k -f flv rtmp://127.0.0.1:19356/live/key`.
/// C0 C1 (digest, version 9.0.124.2) and C2 included, then connect, releaseStream, FCPublish,
/// createStream, publish (on chunk stream 8), @setDataFrame and media with type 0, 1 and 3 headers
/// on chunk streams 4 (audio, data) and 6 (video), then FCUnpublish and deleteStream.
const FFMPEG_PUBLISH: &[u8] = include_bytes!("data/session_ffmpeg_publish.bin");

/// Feeds the capture to a ServerSession, accepting the publish, and returns its events.
fn serve_capture(piece: usize) -> (Vec<ServerEvent>, Vec<RawMessage>) {
    let mut server =
        ServerSession::new(SessionConfig::default(), SERVER_EPOCH, &fixed_random(2), t0());
    let mut input = BytesMut::new();
    let mut events = Vec::new();
    let mut log = Vec::new();
    for part in FFMPEG_PUBLISH.chunks(piece.min(FFMPEG_PUBLISH.len())) {
        input.extend_from_slice(part);
        loop {
            server.handle_input(&mut input, t0()).unwrap();
            let mut answered = false;
            while let Some(event) = server.poll_event() {
                if let ServerEvent::PublishRequested { stream_id, name, .. } = &event {
                    server.accept_publish(*stream_id, &name.key);
                    answered = true;
                }
                events.push(event);
            }
            while let Some(bytes) = server.poll_transmit() {
                log.extend_from_slice(&bytes);
            }
            if !answered {
                break;
            }
        }
    }
    assert_eq!(server.partial_bytes(), 0);
    (events, decode_log(&log))
}

#[test]
fn ffmpeg_publish_capture_through_a_server_session() {
    let (events, replies) = serve_capture(usize::MAX);
    let media: Vec<&Media> = events
        .iter()
        .filter_map(|e| match e {
            ServerEvent::Media(m) => Some(m),
            _ => None,
        })
        .collect();
    let others: Vec<&ServerEvent> =
        events.iter().filter(|e| !matches!(e, ServerEvent::Media(_))).collect();
    assert!(matches!(
        others[..],
        [
            ServerEvent::Connected(ConnectParams { ref app, ref tc_url, .. }),
            ServerEvent::PublishRequested { stream_id: 1, ref name, kind: PublishKind::Live },
            ServerEvent::StreamClosed { stream_id: 1 },
        ] if app == "live"
            && tc_url.as_deref() == Some("rtmp://127.0.0.1:19356/live")
            && *name == StreamName { key: "key".into(), query: None }
    ));
    // releaseStream (2), FCPublish (3), createStream (4) and FCUnpublish (6) were answered;
    // publish (5) with onStatus, deleteStream (7) not at all.
    let results: Vec<f64> = commands(&replies)
        .iter()
        .filter(|c| c.name == "_result")
        .map(|c| c.transaction_id)
        .collect();
    assert_eq!(results, [1.0, 2.0, 3.0, 4.0, 6.0]);

    // Metadata first, unwrapped; then the sequence headers; then frames.
    assert_eq!(media[0].kind, MediaKind::Data);
    assert!(media[0].is_metadata);
    assert_eq!(
        command::data_name(type_id::DATA_AMF0, &media[0].payload, &AmfLimits::default()).as_deref(),
        Some("onMetaData")
    );
    let video: Vec<&&Media> = media.iter().filter(|m| m.kind == MediaKind::Video).collect();
    let audio: Vec<&&Media> = media.iter().filter(|m| m.kind == MediaKind::Audio).collect();
    assert_eq!(video[0].payload[..2], [0x17, 0x00], "AVC sequence header first");
    assert_eq!(audio[0].payload[..2], [0xaf, 0x00], "AAC sequence header first");
    assert_eq!((media.len(), video.len(), audio.len()), (1 + 27 + 46, 27, 46));
    for kind in [&video, &audio] {
        for pair in kind.windows(2) {
            assert!(pair[1].timestamp.value() >= pair[0].timestamp.value());
            assert!(pair[1].timestamp.value() - pair[0].timestamp.value() <= 100);
        }
        assert!(kind.iter().all(|m| m.stream_id == 1));
    }
    // Keyframes every 25 frames (-g 25): the first frame after the sequence header is one.
    assert_eq!(video[1].payload[..2], [0x17, 0x01]);
}

#[test]
fn ffmpeg_publish_capture_at_every_fragment_size() {
    let (whole, _) = serve_capture(usize::MAX);
    for piece in [1, 2, 3, 7, 64, 127, 128, 129, 4096] {
        let (events, _) = serve_capture(piece);
        assert_eq!(events, whole, "piece {piece}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// The ffmpeg capture with random bytes overwritten after the handshake: the server may
    /// refuse it, but never panics, and never holds more than its limit.
    #[test]
    fn corrupted_capture_is_an_error_not_a_panic(
        edits in proptest::collection::vec((HANDSHAKE_BYTES..FFMPEG_PUBLISH.len(), 0u8..=255), 1..8),
        piece in 1usize..5000,
    ) {
        let mut bytes = FFMPEG_PUBLISH.to_vec();
        for (at, value) in edits {
            bytes[at] = value;
        }
        let config = SessionConfig::default();
        let mut server = ServerSession::new(config, SERVER_EPOCH, &fixed_random(2), t0());
        let mut input = BytesMut::new();
        'feed: for part in bytes.chunks(piece) {
            input.extend_from_slice(part);
            loop {
                if server.handle_input(&mut input, t0()).is_err() {
                    break 'feed;
                }
                proptest::prop_assert!(
                    server.partial_bytes() <= config.chunk_limits.max_partial_bytes
                );
                let mut answered = false;
                while let Some(event) = server.poll_event() {
                    if let ServerEvent::PublishRequested { stream_id, name, .. } = event {
                        server.accept_publish(stream_id, &name.key);
                        answered = true;
                    }
                }
                while server.poll_transmit().is_some() {}
                if !answered {
                    break;
                }
            }
        }
    }
}
