//! Hostile clients against an in-process server, with bad input built byte-exactly from the
//! project's own protocol code. After each attack: the server is alive, a fresh publish -> play
//! round trip is byte-exact, the limit or protocol error that stopped the attack was counted,
//! and nothing the attacker touched is still held. The memory cases also bound RSS while the
//! attack is on and after the attackers left.
//!
//! Plus one test for each limit that trips on a well-formed but unwelcome client:
//! `idle_before_play_secs`, `publisher_idle_secs`, `max_streams_per_shard`,
//! `max_players_per_stream`, `max_connections`.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use rtmp_proto::amf0::Amf0Value;
use rtmp_proto::chunk::{ChunkEncoder, ChunkHeader, MessageHeader};
use rtmp_proto::command::CommandMessage;
use rtmp_proto::handshake::ClientHandshake;
use rtmp_proto::message::{csid, type_id, ControlMessage};
use rtmp_proto::session::{ClientEvent, MediaKind};
use rtmp_proto::time::RtmpTimestamp;
use rtmp_relay::metrics::Limit;
use rtmp_relay::ServerHandle;

// ---- running alone ------------------------------------------------------------------------

/// The server runs in this process, like every other test's server: a test that measures RSS
/// takes this lock for writing, every other test for reading.
static MEMORY: RwLock<()> = RwLock::new(());

fn shared() -> RwLockReadGuard<'static, ()> {
    MEMORY.read().unwrap_or_else(PoisonError::into_inner)
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    MEMORY.write().unwrap_or_else(PoisonError::into_inner)
}

// ---- bytes on the wire --------------------------------------------------------------------

/// One message as the project's encoder chunks it (type 0, then type 3 continuations).
fn message(chunk_size: u32, csid: u32, type_id: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let header = MessageHeader { timestamp: RtmpTimestamp::ZERO, type_id, stream_id };
    let mut out = BytesMut::new();
    ChunkEncoder::new(chunk_size).encode(csid, &header, payload, &mut out);
    out.to_vec()
}

fn control(chunk_size: u32, control: ControlMessage) -> Vec<u8> {
    let mut payload = BytesMut::new();
    control.encode_payload(&mut payload);
    message(chunk_size, csid::CONTROL, control.type_id(), 0, &payload)
}

/// A chunk header alone: what follows it is up to the caller.
fn header(csid: u32, header: ChunkHeader) -> Vec<u8> {
    let mut out = BytesMut::new();
    header.encode(csid, &mut out);
    out.to_vec()
}

fn video_header(csid: u32, length: u32, stream_id: u32) -> Vec<u8> {
    header(csid, ChunkHeader::Type0 { timestamp: 0, length, type_id: type_id::VIDEO, stream_id })
}

/// A command whose AMF0 body is `name`, `transaction_id`, then `raw` as it is.
fn raw_command(chunk_size: u32, stream_id: u32, name: &str, raw: &[u8]) -> Vec<u8> {
    let mut body = BytesMut::new();
    let head = [Amf0Value::string(name), Amf0Value::Number(1.0)];
    rtmp_proto::amf0::encode_all(&head, &mut body);
    body.extend_from_slice(raw);
    message(chunk_size, csid::COMMAND, type_id::COMMAND_AMF0, stream_id, &body)
}

fn connect_command() -> CommandMessage {
    let object = Amf0Value::object([("app", Amf0Value::string("live"))]);
    CommandMessage::new("connect", 1.0, object)
}

/// C0 and C1 of a plain handshake.
fn c0c1() -> Vec<u8> {
    let random: Vec<u8> = (0..3072u32).map(|i| (i * 13 + 5) as u8).collect();
    let mut out = BytesMut::new();
    ClientHandshake::new(0, &random, false).start(&mut out);
    out.to_vec()
}

/// Deterministic noise.
fn noise(len: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

// ---- sockets ------------------------------------------------------------------------------

fn tcp(addr: SocketAddr) -> TcpStream {
    let socket = TcpStream::connect(addr).expect("tcp connect");
    socket.set_nodelay(true).expect("nodelay");
    socket
}

/// A connection from `source` (any 127/8 address reaches the server on loopback), so that
/// per-IP limits on the attackers leave the round-trip clients on 127.0.0.1 alone.
fn tcp_from(source: Ipv4Addr, addr: SocketAddr, recv_buffer: Option<usize>) -> TcpStream {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    if let Some(bytes) = recv_buffer {
        socket.set_recv_buffer_size(bytes).expect("SO_RCVBUF");
    }
    socket.bind(&SocketAddrV4::new(source, 0).into()).expect("bind source address");
    socket.connect(&addr.into()).expect("tcp connect");
    let socket: TcpStream = socket.into();
    socket.set_nodelay(true).expect("nodelay");
    socket
}

/// True when the server ends `socket` (EOF or reset) within `timeout`; what it sent first is
/// read and discarded.
fn closed_within(socket: &mut TcpStream, timeout: Duration) -> bool {
    use std::io::{ErrorKind, Read};
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        socket.set_read_timeout(Some(left)).expect("read timeout");
        match socket.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// Closes with SO_LINGER 0: the peer sees a reset, not an orderly FIN.
fn reset(socket: &TcpStream) {
    socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
}

/// Sends `bytes` and expects the server to close the connection for it.
fn expect_closed_for(client: &mut Client, bytes: &[u8], what: &str) {
    // The write may fail part-way: the server can close before it has read everything.
    let _ = client.send_raw(bytes);
    assert!(client.wait_closed(WAIT), "the server closes a connection that sent {what}");
}

/// A publish and the onStatus it got: (code, description).
fn publish_status(client: &mut Client, key: &str) -> (String, String) {
    client.stream_id = client.create_stream();
    let stream_id = client.stream_id;
    client.session().publish(stream_id, key);
    client.flush();
    let events = client.expect(|e| matches!(e, ClientEvent::Status { .. }), "publish status");
    match events.last() {
        Some(ClientEvent::Status { code, description, .. }) => (code.clone(), description.clone()),
        _ => unreachable!(),
    }
}

/// A play and the first onStatus it got.
fn play_status(client: &mut Client, key: &str) -> (String, String) {
    client.stream_id = client.create_stream();
    let stream_id = client.stream_id;
    client.session().play(stream_id, key);
    client.flush();
    let events = client.expect(|e| matches!(e, ClientEvent::Status { .. }), "play status");
    match events.last() {
        Some(ClientEvent::Status { code, description, .. }) => (code.clone(), description.clone()),
        _ => unreachable!(),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// RSS now, with free memory handed back to the kernel first.
fn settled_rss() -> u64 {
    return_free_memory();
    rss_bytes()
}

/// Prints an RSS figure (shown with `--nocapture`), for the bounds' headroom.
fn report(what: &str, bytes: u64) {
    println!("RSS {what}: +{:.1} MiB", mib(bytes));
}

/// The end of a test with attackers: once they left, memory is back within 16 MiB of `base`
/// (RSS before they came) and the server is healthy.
fn assert_recovered(server: &ServerHandle, base: u64, attackers: &str) {
    assert_all_released(server);
    let after = settled_rss().saturating_sub(base);
    report("after", after);
    assert!(after < 16 * MIB, "RSS after {attackers}: +{:.1} MiB", mib(after));
    assert_healthy(server);
}

/// The end of every test: nothing held, and a fresh round trip works.
fn assert_healthy(server: &ServerHandle) {
    assert_all_released(server);
    assert_round_trip(server);
    assert_all_released(server);
}

// ---- handshakes ---------------------------------------------------------------------------

#[test]
fn garbage_and_truncated_handshakes_close_only_their_connection() {
    let _shared = shared();
    let server = start_server(|c| c.handshake_timeout_secs = 2);
    let addr = server.local_addr();

    // Not RTMP at all: HTTP, a TLS ClientHello (rtmps:// on a plain port), RTMPE (version 6).
    let mut rtmpe = c0c1();
    rtmpe[0] = 6;
    let wrong_versions: [&[u8]; 3] =
        [b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n", &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], &rtmpe];
    for bytes in wrong_versions {
        let mut socket = tcp(addr);
        socket.write_all(bytes).expect("write");
        assert!(closed_within(&mut socket, WAIT), "closed after {:?}", &bytes[..4]);
    }

    // A good handshake, then bytes that are no chunk stream: 0xff is a type 3 chunk on chunk
    // stream 63, which has no previous header.
    let mut client = Client::handshake_over(tcp(addr));
    expect_closed_for(&mut client, &[0xff; 4096], "type 3 chunks on a fresh chunk stream");
    // A good handshake, then noise: a framing error, or the handshake timeout (no `connect`).
    let mut client = Client::handshake_over(tcp(addr));
    expect_closed_for(&mut client, &noise(64 * 1024), "noise");

    // Truncated: part of C1 then FIN; all of C1, half of C2, then FIN; part of C1 then RST;
    // nothing at all.
    let hello = c0c1();
    let mut socket = tcp(addr);
    socket.write_all(&hello[..700]).expect("write");
    socket.shutdown(Shutdown::Write).expect("FIN");
    assert!(closed_within(&mut socket, WAIT), "closed after a truncated C1");
    let mut socket = tcp(addr);
    socket.write_all(&hello).expect("write");
    socket.write_all(&[0u8; 768]).expect("write");
    socket.shutdown(Shutdown::Write).expect("FIN");
    assert!(closed_within(&mut socket, WAIT), "closed after a truncated C2");
    let socket = tcp(addr);
    (&socket).write_all(&hello[..1000]).expect("write");
    reset(&socket);
    drop(socket);
    drop(tcp(addr));

    eventually("all nine accepted and gone", || {
        let counters = server.counters();
        counters.connections_accepted == 9 && counters.connections_open == 0
    });
    let counters = server.counters();
    assert_eq!(counters.handshake_failures, 3, "HTTP, TLS and RTMPE");
    // The TLS ClientHello is counted apart: rtmps:// aimed at the plain port.
    assert_eq!(server.protocol_errors_of("handshake"), 2);
    assert_eq!(server.protocol_errors_of("tls_on_plain_port"), 1);
    assert!(server.protocol_errors_of("chunk_framing") >= 1, "the 0xff chunks");
    assert_healthy(&server);
}

#[test]
fn slowloris_clients_are_cut_off_by_the_handshake_timeout() {
    let _shared = shared();
    let server = start_server(|c| c.handshake_timeout_secs = 1);
    let addr = server.local_addr();
    let trickle = |socket: TcpStream, bytes: Vec<u8>| {
        thread::spawn(move || {
            for byte in bytes {
                if (&socket).write_all(&[byte]).is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(100));
            }
        })
    };
    let started = Instant::now();
    // C0 C1 one byte every 100 ms; a fast handshake, then `connect` one byte every 100 ms; a
    // connection that says nothing.
    let mut slow_hello = tcp(addr);
    let hello_writer = trickle(slow_hello.try_clone().expect("clone"), c0c1());
    let mut slow_connect = Client::handshake_over(tcp(addr));
    let connect = connect_command().to_bytes();
    let connect = message(128, csid::COMMAND, type_id::COMMAND_AMF0, 0, &connect);
    let connect_writer = trickle(slow_connect.socket().try_clone().expect("clone"), connect);
    let mut silent = tcp(addr);

    assert!(closed_within(&mut slow_hello, WAIT), "a trickled C1 is cut off");
    assert!(slow_connect.wait_closed(WAIT), "a trickled connect is cut off");
    assert!(closed_within(&mut silent, WAIT), "a silent connection is cut off");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "not before the timeout: {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "soon after the timeout: {elapsed:?}");
    hello_writer.join().expect("writer");
    connect_writer.join().expect("writer");

    eventually("three handshake timeouts", || server.counters().handshake_timeouts == 3);
    assert_eq!(server.limit_trips(Limit::HandshakeTimeoutSecs), 3);
    assert_healthy(&server);
}

// ---- declared lengths and chunk streams ---------------------------------------------------

#[test]
fn declared_16_mib_is_refused_and_declared_8_mib_is_never_allocated_up_front() {
    let _alone = alone();
    let server = start_server(|c| c.max_message_bytes = 8 * 1024 * 1024);
    let addr = server.local_addr();

    // 16 MiB - 1, the most the 24-bit field can say: refused at its header.
    let mut big = Client::connect(addr, "live");
    let mut bytes = video_header(csid::VIDEO, 0xff_ffff, 1);
    bytes.extend_from_slice(&[0x17; 1000]);
    expect_closed_for(&mut big, &bytes, "a 16 MiB message header");
    assert_eq!(server.protocol_errors_of("message_too_long"), 1);
    assert_eq!(server.limit_trips(Limit::MaxMessageBytes), 1);

    // Forty declare 8 MiB (the limit, so allowed) and stall after 4 KiB: half at chunk size
    // 4096, half at 2^31 - 1, where the whole message would be a single chunk.
    let base = settled_rss();
    let mut stalled = Vec::new();
    for i in 0..40 {
        let mut client = Client::connect(addr, "live");
        let mut bytes = Vec::new();
        if i % 2 == 1 {
            bytes.extend(control(4096, ControlMessage::SetChunkSize(0x7fff_ffff)));
        }
        bytes.extend(video_header(csid::VIDEO, 8 * 1024 * 1024, 1));
        bytes.extend_from_slice(&[0x17; 4096]);
        client.send_raw(&bytes).expect("write");
        stalled.push(client);
    }
    eventually("40 connections open", || server.counters().connections_open == 40);
    thread::sleep(Duration::from_millis(500));
    let during = rss_bytes().saturating_sub(base);
    report("during", during);
    assert!(
        during < 48 * MIB,
        "40 stalled 8 MiB messages would be 320 MiB if allocated up front; RSS grew {:.1} MiB",
        mib(during)
    );
    // They are all still connected, and others are served meanwhile.
    assert_round_trip(&server);
    eventually("the stalled forty are still connected", || {
        server.counters().connections_open == 40
    });
    drop(stalled);
    assert_recovered(&server, base, "the attackers left");
}

#[test]
fn thousands_of_chunk_streams_and_partial_messages_trip_their_limits() {
    let _alone = alone();
    let server = start_server(|c| {
        c.max_chunk_streams = 64;
        c.max_partial_bytes = 2 * 1024 * 1024;
    });
    let addr = server.local_addr();

    // 5000 chunk streams, each with a 1000-byte message of which 16 bytes arrive.
    let mut many = Client::connect(addr, "live");
    let mut bytes = control(4096, ControlMessage::SetChunkSize(16));
    for csid in 64..5064 {
        bytes.extend(video_header(csid, 1000, 1));
        bytes.extend_from_slice(&[0x27; 16]);
    }
    expect_closed_for(&mut many, &bytes, "5000 chunk streams");
    assert_eq!(server.protocol_errors_of("too_many_chunk_streams"), 1);
    assert_eq!(server.limit_trips(Limit::MaxChunkStreams), 1);

    // Sixteen connections each hold just under max_partial_bytes: 31 messages of 1 MiB with
    // their first 64 KiB received (1984 KiB of 2048).
    let base = settled_rss();
    let piece = vec![0x27u8; 64 * 1024];
    let partial = |csid: u32| [video_header(csid, 1024 * 1024, 1), piece.clone()].concat();
    let mut holders = Vec::new();
    for _ in 0..16 {
        let mut client = Client::connect(addr, "live");
        let mut bytes = control(4096, ControlMessage::SetChunkSize(64 * 1024));
        for csid in 10..41 {
            bytes.extend(partial(csid));
        }
        client.send_raw(&bytes).expect("write");
        holders.push(client);
    }
    thread::sleep(Duration::from_millis(1000));
    let held = rss_bytes().saturating_sub(base);
    report("held", held);
    eventually("all sixteen held, none over the limit", || {
        server.counters().connections_open == 16
    });
    // Two more partial messages each: 64 KiB over the limit.
    for client in &mut holders {
        let bytes = [partial(41), partial(42)].concat();
        let _ = client.send_raw(&bytes);
    }
    for client in &mut holders {
        assert!(client.wait_closed(WAIT), "a connection over max_partial_bytes is closed");
    }
    eventually("16 partial_bytes_exceeded", || {
        server.protocol_errors_of("partial_bytes_exceeded") == 16
    });
    assert_eq!(server.limit_trips(Limit::MaxPartialBytes), 16);
    assert!(
        held < 96 * MIB,
        "16 connections x 2 MiB of partial messages: RSS grew {:.1} MiB",
        mib(held)
    );
    drop(holders);
    assert_recovered(&server, base, "the attackers left");
}

#[test]
fn set_chunk_size_0_and_top_bit_are_refused_1_and_max_are_relayed() {
    let _shared = shared();
    let server = start_server(|_| {});
    let addr = server.local_addr();
    for size in [0u32, 0x8000_0000] {
        // By hand: the encoder masks the reserved top bit.
        let bytes = message(4096, csid::CONTROL, type_id::SET_CHUNK_SIZE, 0, &size.to_be_bytes());
        let mut client = Client::connect(addr, "live");
        expect_closed_for(&mut client, &bytes, &format!("Set Chunk Size {size:#x}"));
    }
    assert_eq!(server.protocol_errors_of("chunk_framing"), 2);
    // The smallest and largest legal sizes work end to end.
    for size in [1, 0x7fff_ffff] {
        assert_round_trip_with(&server, "live", &fresh_key("chunk-size"), |publisher| {
            publisher.session().set_chunk_size(size);
            publisher.flush();
        });
    }
    assert_healthy(&server);
}

#[test]
fn a_message_length_changed_between_its_chunks_is_refused() {
    let _shared = shared();
    let server = start_server(|c| c.shards = Some(1));
    let addr = server.local_addr();
    let first = [video_header(csid::VIDEO, 10_000, 1), vec![0x17; 4096]].concat();
    let changes = [
        (20_000, type_id::VIDEO, "a longer length"),
        (100, type_id::VIDEO, "a length shorter than what arrived"),
        (10_000, type_id::AUDIO, "another type"),
    ];
    for (length, type_id, what) in changes {
        let mut client = Client::connect(addr, "live");
        let second = header(csid::VIDEO, ChunkHeader::Type1 { delta: 0, length, type_id });
        let bytes = [first.clone(), second, vec![0x27; 4096]].concat();
        expect_closed_for(&mut client, &bytes, what);
    }
    assert_eq!(server.protocol_errors_of("chunk_framing"), 3);

    // Repeating the same length and type in a type 1 header mid-message is harmless (some
    // encoders do it): the message is relayed intact.
    let key = fresh_key("repeat");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    let frame = video_frame(7, true, 10_000 - 9);
    let sid = publisher.stream_id;
    let repeat = ChunkHeader::Type1 { delta: 0, length: 10_000, type_id: type_id::VIDEO };
    let bytes = [
        video_header(csid::VIDEO, 10_000, sid),
        frame[..4096].to_vec(),
        header(csid::VIDEO, repeat),
        frame[4096..8192].to_vec(),
        header(csid::VIDEO, ChunkHeader::Type3),
        frame[8192..].to_vec(),
    ]
    .concat();
    publisher.send_raw(&bytes).expect("write");
    let media = player.media(2, WAIT);
    assert_eq!(media.len(), 2, "|RtmpSampleAccess and the frame");
    assert!(media[1].payload[..] == frame[..], "the frame arrives byte-exact");
    publisher.close();
    player.close();
    assert_healthy(&server);
}

// ---- AMF ----------------------------------------------------------------------------------

#[test]
fn amf_nesting_bombs_are_refused_without_exhausting_the_stack() {
    let _shared = shared();
    let server = start_server(|c| c.shards = Some(1));
    let addr = server.local_addr();
    const DEPTH: usize = 100_000;
    // AMF0 strict arrays of one element, nested, as connect's command object, before connect.
    let arrays = [b"\x0a\x00\x00\x00\x01".repeat(DEPTH), vec![0x05]].concat();
    let mut client = Client::handshake_over(tcp(addr));
    let bytes = raw_command(128, 0, "connect", &arrays);
    expect_closed_for(&mut client, &bytes, "an AMF0 strict-array bomb in connect");
    // AMF0 objects {"a": {"a": ...}} in a call after connect.
    let objects = [b"\x03\x00\x01a".repeat(DEPTH), vec![0x05], b"\x00\x00\x09".repeat(DEPTH)];
    let mut client = Client::connect(addr, "live");
    let bytes = raw_command(4096, 0, "bomb", &objects.concat());
    expect_closed_for(&mut client, &bytes, "an AMF0 object bomb");
    // AMF3 (type 17, through the AVM+ switch): arrays of one dense element, nested.
    let mut body = vec![0x00];
    let head = [Amf0Value::string("bomb"), Amf0Value::Number(2.0), Amf0Value::Null];
    let mut amf0 = BytesMut::new();
    rtmp_proto::amf0::encode_all(&head, &mut amf0);
    body.extend_from_slice(&amf0);
    body.push(0x11);
    body.extend(b"\x09\x03\x01".repeat(DEPTH));
    body.push(0x01);
    let mut client = Client::connect(addr, "live");
    let bytes = message(4096, csid::COMMAND, type_id::COMMAND_AMF3, 0, &body);
    expect_closed_for(&mut client, &bytes, "an AMF3 array bomb");
    assert_eq!(server.protocol_errors_of("amf"), 3);
    assert_eq!(server.limit_trips(Limit::MaxAmfDepth), 3);

    // In metadata the same bomb is data the relay need not understand: the publisher stays,
    // and what it sends next is relayed.
    let key = fresh_key("metadata-bomb");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    let mut data = BytesMut::new();
    let names = [Amf0Value::string("@setDataFrame"), Amf0Value::string("onMetaData")];
    rtmp_proto::amf0::encode_all(&names, &mut data);
    data.extend_from_slice(&b"\x08\x00\x00\x00\x01\x00\x01a".repeat(DEPTH));
    data.extend_from_slice(&[0x05]);
    let sid = publisher.stream_id;
    publisher.send_raw(&message(4096, csid::DATA, type_id::DATA_AMF0, sid, &data)).expect("write");
    let frame = video_frame(1, true, 2000);
    publisher.send(MediaKind::Video, 40, &frame);
    let media = player.media(3, WAIT);
    assert_eq!(media.len(), 3, "|RtmpSampleAccess, the bomb as opaque data, the frame");
    assert!(media[2].payload[..] == frame[..]);
    assert_eq!(server.counters().publishers, 1, "the publisher is still on");
    publisher.close();
    player.close();
    assert_eq!(server.protocol_errors_of("amf"), 3);
    assert_healthy(&server);
}

// ---- commands -----------------------------------------------------------------------------

/// The next onStatus or `_error` the client gets.
fn next_reply(client: &mut Client, what: &str) -> ClientEvent {
    let events = client
        .expect(|e| matches!(e, ClientEvent::Status { .. } | ClientEvent::CallFailed { .. }), what);
    events.into_iter().last().expect("expect returns the event it matched")
}

fn error_status(stream_id: u32, code: &str, description: &str) -> ClientEvent {
    ClientEvent::Status {
        stream_id,
        level: "error".into(),
        code: code.into(),
        description: description.into(),
    }
}

fn call_failed(command: &str) -> ClientEvent {
    ClientEvent::CallFailed {
        command: command.into(),
        code: Some("NetConnection.Call.Failed".into()),
    }
}

/// `publisher` sends a keyframe; `player` receives it byte-exact.
fn assert_relayed(publisher: &mut Client, player: &mut Client, seq: u32, what: &str) {
    let frame = video_frame(seq, true, 300);
    publisher.send(MediaKind::Video, seq * 40, &frame);
    let events = player.expect(
        |e| matches!(e, ClientEvent::Media(m) if m.kind == MediaKind::Video && seq_of(m) == Some(seq)),
        what,
    );
    match events.last() {
        Some(ClientEvent::Media(media)) => assert!(media.payload[..] == frame[..], "{what}"),
        _ => unreachable!(),
    }
}

/// A command out of place is answered with an error and the connection stays (design.md,
/// invariant 7): before connect, publish, play and createStream are refused; the connect that
/// follows works, and so does a play after it.
#[test]
fn calls_before_connect_get_an_error_and_the_connection_stays() {
    let _shared = shared();
    let server = start_server(|_| {});
    let addr = server.local_addr();
    let key = fresh_key("before-connect");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    type Misstep = fn(&mut Client);
    let missteps: [(&str, Misstep, ClientEvent); 3] = [
        (
            "publish",
            |c| c.session().publish(1, "k"),
            error_status(
                1,
                "NetStream.Publish.BadName",
                "publish on stream 1 refused: connect first",
            ),
        ),
        (
            "play",
            |c| c.session().play(1, "k"),
            error_status(1, "NetStream.Play.Failed", "play on stream 1 refused: connect first"),
        ),
        ("createStream", |c| c.session().create_stream(), call_failed("createStream")),
    ];
    for (seq, (what, misstep, expected)) in (1..).zip(missteps) {
        let mut client = Client::handshake_over(tcp(addr));
        misstep(&mut client);
        client.flush();
        assert_eq!(next_reply(&mut client, what), expected, "{what} before connect");
        client.session().connect("live", &format!("rtmp://{addr}/live"));
        client.flush();
        client.expect(|e| matches!(e, ClientEvent::Connected), "connect after the refusal");
        client.play(&key);
        assert_relayed(&mut publisher, &mut client, seq, what);
        client.close();
    }
    assert_eq!(server.counters().commands_refused, 3);
    assert_eq!(server.counters().protocol_errors, 0);
    publisher.close();
    assert_healthy(&server);
}

/// After connect: a second connect, and a publish on a stream id createStream never gave, are
/// refused; the publish on the stream createStream gives then works.
#[test]
fn a_second_connect_or_a_publish_on_an_unknown_stream_id_gets_an_error() {
    let _shared = shared();
    let server = start_server(|_| {});
    let addr = server.local_addr();
    let key = fresh_key("unknown-id");
    let mut publisher = Client::connect(addr, "live");
    publisher.session().connect("live", &format!("rtmp://{addr}/live"));
    publisher.flush();
    assert_eq!(next_reply(&mut publisher, "second connect"), call_failed("connect"));
    publisher.session().publish(5, &key);
    publisher.flush();
    assert_eq!(
        next_reply(&mut publisher, "publish on stream 5"),
        error_status(
            5,
            "NetStream.Publish.BadName",
            "publish on stream 5 refused: createStream did not give this stream id"
        )
    );
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    assert_relayed(&mut publisher, &mut player, 1, "the publish after the refusals");
    assert_eq!(server.counters().commands_refused, 2);
    assert_eq!(server.counters().publishes_rejected, 0);
    publisher.close();
    player.close();
    assert_healthy(&server);
}

/// A publisher that retries publish on its publishing stream id, plays on it, or publishes its
/// own key again on a fresh stream id is refused each time; its publish goes on, players keep
/// receiving it, and a play on a fresh stream id works.
#[test]
fn retries_on_a_publishing_connection_are_refused_and_the_publish_goes_on() {
    let _shared = shared();
    // Two shards: the keys are owned here or on the other shard, so both ways a publish runs
    // are met.
    let server = start_server(|c| c.shards = Some(2));
    let addr = server.local_addr();
    for round in 0..3 {
        let key = fresh_key("retry");
        let other = fresh_key("other");
        let mut publisher = Client::connect(addr, "live");
        assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
        let sid = publisher.stream_id;
        let mut player = Client::connect(addr, "live");
        player.play(&key);
        assert_relayed(&mut publisher, &mut player, 1, "before the retries");

        let already = "refused: this stream id is already publishing";
        for name in [key.as_str(), other.as_str()] {
            publisher.session().publish(sid, name);
            publisher.flush();
            assert_eq!(
                next_reply(&mut publisher, "publish again on the publishing stream id"),
                error_status(
                    sid,
                    "NetStream.Publish.BadName",
                    &format!("publish on stream {sid} {already}")
                ),
                "round {round}"
            );
        }
        assert_relayed(&mut publisher, &mut player, 2, "after publish again on the same id");

        publisher.session().play(sid, &other);
        publisher.flush();
        assert_eq!(
            next_reply(&mut publisher, "play on the publishing stream id"),
            error_status(sid, "NetStream.Play.Failed", &format!("play on stream {sid} {already}")),
            "round {round}"
        );
        assert_relayed(&mut publisher, &mut player, 3, "after play on the publishing id");

        // The same key again, on a stream id of its own: not a rival publisher.
        let fresh = publisher.create_stream();
        publisher.session().publish(fresh, &key);
        publisher.flush();
        assert_eq!(
            next_reply(&mut publisher, "the same key on a fresh stream id"),
            error_status(
                fresh,
                "NetStream.Publish.BadName",
                &format!("live/{key} is already published on stream {sid}")
            ),
            "round {round}"
        );
        assert_relayed(&mut publisher, &mut player, 4, "after the same key on a fresh id");

        // createStream + play on a fresh stream id works on the same connection.
        let mut second = Client::connect(addr, "live");
        assert_eq!(second.publish(&other), "NetStream.Publish.Start");
        let fresh = publisher.create_stream();
        publisher.session().play(fresh, &other);
        publisher.flush();
        publisher.expect(
            |e| Client::status_code(e) == Some("NetStream.Play.Start"),
            "Play.Start on a fresh stream id",
        );
        assert_relayed(&mut second, &mut publisher, 5, "to the publisher's own play");
        assert_relayed(&mut publisher, &mut player, 6, "and its publish still relayed");
        second.close();
        publisher.close();
        player.close();
    }
    assert_eq!(server.counters().commands_refused, 3 * 4);
    assert_eq!(server.counters().publishes_rejected, 0);
    assert_eq!(server.counters().protocol_errors, 0);
    assert_healthy(&server);
}

/// A player that publishes or plays again on its playing stream id is refused and keeps
/// playing.
#[test]
fn publish_or_play_again_on_a_playing_stream_id_is_refused_and_the_play_goes_on() {
    let _shared = shared();
    let server = start_server(|_| {});
    let addr = server.local_addr();
    let key = fresh_key("playing");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    let sid = player.stream_id;
    let already = format!("on stream {sid} refused: this stream id is already playing");
    player.session().publish(sid, &fresh_key("mine"));
    player.flush();
    assert_eq!(
        next_reply(&mut player, "publish on the playing stream id"),
        error_status(sid, "NetStream.Publish.BadName", &format!("publish {already}"))
    );
    player.session().play(sid, &key);
    player.flush();
    assert_eq!(
        next_reply(&mut player, "play again on the playing stream id"),
        error_status(sid, "NetStream.Play.Failed", &format!("play {already}"))
    );
    assert_relayed(&mut publisher, &mut player, 1, "after the refusals");
    assert_eq!(server.counters().commands_refused, 2);
    assert_eq!(server.counters().subscribers, 1);
    publisher.close();
    player.close();
    assert_healthy(&server);
}

/// Limits are not commands out of place: they close the connection.
#[test]
fn too_many_create_streams_close_the_connection_and_harmless_commands_do_not() {
    let _shared = shared();
    let server = start_server(|_| {});
    let addr = server.local_addr();
    // createStream more often than any client needs.
    let mut client = Client::connect(addr, "live");
    for _ in 0..9 {
        client.session().create_stream();
    }
    let _ = client.try_flush();
    assert!(client.wait_closed(WAIT), "nine createStreams close the connection");
    assert_eq!(server.protocol_errors_of("too_many_message_streams"), 1);
    assert_eq!(server.limit_trips(Limit::MaxMessageStreams), 1);

    // Harmless: deleteStream and closeStream of unknown streams, FCUnpublish without a
    // publish, an unknown call, and media before publish (dropped). The publish that follows
    // works and only what came after it is relayed.
    let key = fresh_key("harmless");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    let mut publisher = Client::connect(addr, "live");
    let sid = publisher.create_stream();
    publisher.session().delete_stream(77);
    let close = CommandMessage::new("closeStream", 0.0, Amf0Value::Null);
    let unpublish = CommandMessage::new("FCUnpublish", 5.0, Amf0Value::Null)
        .arg(Amf0Value::string(key.as_str()));
    let unknown = CommandMessage::new("noSuchCall", 6.0, Amf0Value::Null);
    for (stream_id, command) in [(9, close), (0, unpublish), (0, unknown)] {
        let bytes = command.to_bytes();
        let bytes = message(4096, csid::COMMAND, type_id::COMMAND_AMF0, stream_id, &bytes);
        publisher.send_raw(&bytes).expect("write");
    }
    publisher.stream_id = sid;
    publisher.send(MediaKind::Video, 0, &video_frame(1, true, 500));
    publisher.session().publish(sid, &key);
    publisher.flush();
    publisher.expect(
        |e| Client::status_code(e) == Some("NetStream.Publish.Start"),
        "Publish.Start after the harmless commands",
    );
    let frame = video_frame(2, true, 500);
    publisher.send(MediaKind::Video, 40, &frame);
    let live: Vec<_> =
        player.media(2, WAIT).into_iter().filter(|m| m.kind == MediaKind::Video).collect();
    assert_eq!(live.len(), 1, "only the frame sent after publish");
    assert!(live[0].payload[..] == frame[..]);
    assert_eq!(server.counters().commands_refused, 0);
    publisher.close();
    player.close();
    assert_healthy(&server);
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Entries of `dir` by name.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn hostile_stream_keys_are_relayed_safely_or_refused() {
    let _shared = shared();
    // Record everything, three levels down in a directory of our own: a key that escaped the
    // record directory by `../` would land beside one of the levels.
    let base = TempDir(std::env::temp_dir().join(format!("rtmp-hostile-{}", std::process::id())));
    let record_dir = base.0.join("a").join("b").join("rec");
    std::fs::create_dir_all(record_dir.parent().expect("parent")).expect("create dirs");
    let server = start_server(|c| c.record_dir = Some(record_dir.clone()));
    let long = "k".repeat(1024);
    let keys = [
        "../../../escape",
        "..",
        "a/../../b",
        "/etc/passwd",
        "nul\0cr\rlf\nesc\x1b[2Jbell\x07",
        "%2e%2e%2f%00",
        "ключ 🔑",
        long.as_str(),
    ];
    for key in keys {
        assert_round_trip_with(&server, "live", key, |_| {});
    }
    assert_round_trip_with(&server, "../..", "app-escape", |_| {});
    // Longer than --max-stream-name-bytes (1024): refused with BadName, the connection closed.
    let mut client = Client::connect(server.local_addr(), "live");
    assert_eq!(client.publish(&"k".repeat(1025)), "NetStream.Publish.BadName");
    assert!(client.wait_closed(WAIT), "a 1025-byte key is refused");
    let mut player = Client::connect(server.local_addr(), "live");
    player.request_play(&"k".repeat(60_000));
    assert!(player.wait_closed(WAIT), "a 60 000-byte key is refused to a player too");
    eventually("two refusals", || server.limit_trips(Limit::MaxStreamNameBytes) == 2);
    // Longer than an AMF string may be: refused by the protocol layer, before any of that.
    let mut client = Client::connect(server.local_addr(), "live");
    let sid = client.create_stream();
    client.session().publish(sid, &"k".repeat(70_000));
    let _ = client.try_flush();
    assert!(client.wait_closed(WAIT), "a 70 000-byte key is refused");
    assert_eq!(server.protocol_errors_of("amf"), 1);
    assert_eq!(server.limit_trips(Limit::MaxAmfStringBytes), 1);
    assert_healthy(&server);
    drop(server); // recordings are closed

    assert_eq!(entries(&base.0), ["a"]);
    assert_eq!(entries(&base.0.join("a")), ["b"]);
    assert_eq!(entries(&base.0.join("a").join("b")), ["rec"]);
}

// ---- connections ending badly -------------------------------------------------------------

#[test]
fn reset_and_half_close_mid_message_end_only_that_publisher() {
    let _shared = shared();
    let server = start_server(|_| {});
    let addr = server.local_addr();
    let key = fresh_key("rst");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    for (round, rst) in [(0u32, true), (1, false)] {
        let mut publisher = Client::connect(addr, "live");
        assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
        let whole = video_frame(round * 10, true, 1000);
        publisher.send(MediaKind::Video, 0, &whole);
        let half = video_frame(round * 10 + 1, true, 100_000);
        let sid = publisher.stream_id;
        let bytes = message(4096, csid::VIDEO, type_id::VIDEO, sid, &half);
        publisher.send_raw(&bytes[..bytes.len() / 2]).expect("write");
        if rst {
            reset(publisher.socket());
            drop(publisher);
        } else {
            publisher.socket().shutdown(Shutdown::Write).expect("FIN");
            assert!(publisher.wait_closed(WAIT), "the server closes a half-closed publisher");
        }
        let events = player.expect(
            |e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"),
            "UnpublishNotify",
        );
        let seqs: Vec<u32> = events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Media(m) if m.kind == MediaKind::Video => seq_of(m),
                _ => None,
            })
            .collect();
        assert_eq!(seqs, [round * 10], "the whole frame, nothing of the half one");
        eventually("the publisher is released", || server.counters().publishers == 0);
    }
    // The key is free again, and the player, still attached, gets the new publisher's frames.
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    player.expect(|e| Client::status_code(e) == Some("NetStream.Play.PublishNotify"), "notify");
    let frame = video_frame(100, true, 30_000);
    publisher.send(MediaKind::Video, 1000, &frame);
    let media = player.media(1, WAIT);
    assert!(media.len() == 1 && media[0].payload[..] == frame[..], "byte-exact after republish");

    // A player that resets while frames flow to it.
    let mut leaving = Client::connect(addr, "live");
    leaving.play(&key);
    eventually("two players", || server.counters().subscribers == 2);
    for seq in 101..111 {
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, false, 50_000));
    }
    reset(leaving.socket());
    drop(leaving);
    eventually("the reset player is released", || server.counters().subscribers == 1);
    assert_eq!(player.media(10, WAIT).len(), 10, "the other player is unaffected");
    publisher.close();
    player.close();
    assert_healthy(&server);
}

#[test]
fn a_player_that_never_reads_is_disconnected_and_others_are_unaffected() {
    let _shared = shared();
    let server = start_server(|c| {
        c.shards = Some(1); // the players see every frame from the first
        c.player_hard_limit_bytes = 4 * 1024 * 1024;
        c.player_send_buffer_bytes = 32 * 1024;
        c.player_stall_secs = 60;
    });
    let addr = server.local_addr();
    let key = fresh_key("never-reads");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let small_window = tcp_from(Ipv4Addr::LOCALHOST, addr, Some(16 * 1024));
    let mut stalled = Client::connect_over(small_window, addr, "live");
    stalled.play(&key);
    let mut healthy = Client::connect(addr, "live");
    healthy.play(&key);
    let frames: Vec<Vec<u8>> =
        (0..120).map(|seq| video_frame(seq, seq % 30 == 0, 60_000)).collect();
    let expected = frames.clone();
    let reader = thread::spawn(move || {
        let media = healthy.media(121, WAIT);
        assert_eq!(media.len(), 121, "the healthy player gets every frame");
        for (got, sent) in media[1..].iter().zip(&expected) {
            assert!(got.payload[..] == sent[..], "byte-exact");
        }
        healthy
    });
    for (seq, frame) in frames.iter().enumerate() {
        publisher.send(MediaKind::Video, seq as u32 * 33, frame);
        // Paced like a (fast) live source: 60 KB every 5 ms is about 100 Mbit/s.
        thread::sleep(Duration::from_millis(5));
    }
    let mut healthy = reader.join().expect("healthy player");
    eventually("the stalled player is cut off", || {
        server.counters().slow_subscriber_disconnects == 1
    });
    assert!(stalled.wait_closed(WAIT));
    // The publisher and the healthy player carry on.
    let frame = video_frame(500, true, 1000);
    publisher.send(MediaKind::Video, 5000, &frame);
    let media = healthy.media(1, WAIT);
    assert!(media.len() == 1 && media[0].payload[..] == frame[..]);
    publisher.close();
    healthy.close();
    assert_healthy(&server);
}

#[test]
fn a_publisher_sending_at_full_speed_does_not_freeze_its_shard() {
    let _shared = shared();
    let server = start_server(|c| c.shards = Some(1));
    let addr = server.local_addr();
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flooder = {
        let flooding = flooding.clone();
        thread::spawn(move || {
            let mut publisher = Client::connect(addr, "live");
            assert_eq!(publisher.publish(&fresh_key("flood")), "NetStream.Publish.Start");
            // Encoded once in small chunks, written over and over: the socket never drains,
            // whatever the server's speed.
            let sid = publisher.stream_id;
            let frame =
                message(128, csid::VIDEO, type_id::VIDEO, sid, &video_frame(0, true, 60_000));
            let frames = [control(4096, ControlMessage::SetChunkSize(128)), frame.repeat(16)];
            publisher.send_raw(&frames[0]).expect("write");
            let stop = Instant::now() + Duration::from_secs(12);
            while flooding.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < stop {
                publisher.send_raw(&frames[1]).expect("write");
            }
            publisher.close();
        })
    };
    thread::sleep(Duration::from_millis(500));
    // Others on the same shard are served meanwhile: a round trip, and the control plane.
    assert_round_trip(&server);
    assert!(server.counters().bytes_in > 0, "the shard answers a snapshot request");
    assert!(!flooder.is_finished(), "the round trip completed while the flood went on");
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    flooder.join().expect("flooder");
    assert_healthy(&server);
}

// ---- floods -------------------------------------------------------------------------------

#[test]
fn a_connection_flood_from_one_address_is_capped_and_released() {
    let _alone = alone();
    let server = start_server(|c| {
        c.shards = Some(1); // per-IP shares are exact with one shard
        c.handshake_timeout_secs = 60; // the half-open ones stay for the whole test
        c.max_handshaking_per_ip = 4;
        c.max_connections_per_ip = 8;
    });
    let addr = server.local_addr();
    let flood_ip = Ipv4Addr::new(127, 0, 0, 2);
    let base = settled_rss();

    // 200 connections that never speak: four are admitted, the rest dropped at once.
    let mut flood: Vec<TcpStream> = (0..200).map(|_| tcp_from(flood_ip, addr, None)).collect();
    eventually("196 refusals", || server.limit_trips(Limit::MaxHandshakingPerIp) == 196);
    let still_open = flood
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(20)))
        .filter(|c| !c)
        .count();
    assert_eq!(still_open, 4, "max_handshaking_per_ip admits four");
    // Other addresses are not crowded out.
    assert_round_trip(&server);

    // Eight connected clients from one address; the ninth is dropped.
    let busy_ip = Ipv4Addr::new(127, 0, 0, 3);
    let connected: Vec<Client> =
        (0..8).map(|_| Client::connect_over(tcp_from(busy_ip, addr, None), addr, "live")).collect();
    let mut ninth = tcp_from(busy_ip, addr, None);
    assert!(closed_within(&mut ninth, WAIT), "the ninth connection is dropped");
    assert_eq!(server.limit_trips(Limit::MaxConnectionsPerIp), 1);

    // Fifty addresses, each within its share: 200 half-done handshakes, all held.
    let hello = c0c1();
    let spread: Vec<TcpStream> = (1..=50)
        .flat_map(|i| (0..4).map(move |_| Ipv4Addr::new(127, 0, 1, i)))
        .map(|ip| {
            let socket = tcp_from(ip, addr, None);
            (&socket).write_all(&hello[..1000]).expect("write");
            socket
        })
        .collect();
    eventually("212 connections held", || server.counters().connections_open == 212);
    thread::sleep(Duration::from_millis(300));
    let during = rss_bytes().saturating_sub(base);
    report("during", during);
    assert!(during < 64 * MIB, "212 connections: RSS grew {:.1} MiB", mib(during));

    drop(flood);
    drop(connected);
    drop(ninth);
    drop(spread);
    assert_all_released(&server);
    // Every count was given back: the flood address has its four places again.
    let mut again: Vec<TcpStream> = (0..5).map(|_| tcp_from(flood_ip, addr, None)).collect();
    eventually("one refusal more", || server.limit_trips(Limit::MaxHandshakingPerIp) == 197);
    let still_open = again
        .iter_mut()
        .map(|s| closed_within(s, Duration::from_millis(100)))
        .filter(|c| !c)
        .count();
    assert_eq!(still_open, 4);
    drop(again);
    assert_recovered(&server, base, "the flood left");
}

#[test]
fn connection_churn_leaves_nothing_behind() {
    let _alone = alone();
    let server = start_server(|_| {});
    let addr = server.local_addr();
    let key = fresh_key("churn");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    publisher.send_headers();
    let base = settled_rss();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let key = key.clone();
            thread::spawn(move || {
                let hello = c0c1();
                for cycle in 0..60 {
                    match (worker + cycle) % 6 {
                        0 => drop(tcp(addr)),
                        1 => {
                            let socket = tcp(addr);
                            let _ = (&socket).write_all(&hello[..900]);
                            reset(&socket);
                        }
                        2 => drop(Client::handshake_over(tcp(addr))),
                        3 => reset(Client::connect(addr, "live").socket()),
                        4 => {
                            let mut player = Client::connect(addr, "live");
                            player.play(&key);
                            player.media(3, Duration::from_millis(200));
                            player.close();
                        }
                        _ => {
                            let mut player = Client::connect(addr, "live");
                            player.play(&key);
                            reset(player.socket());
                        }
                    }
                }
            })
        })
        .collect();
    let mut seq = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        publisher.send(MediaKind::Video, seq * 40, &video_frame(seq, seq % 25 == 0, 5_000));
        seq += 1;
        thread::sleep(Duration::from_millis(10));
    }
    for worker in workers {
        worker.join().expect("churn worker");
    }
    publisher.close();
    assert_all_released(&server);
    let counters = server.counters();
    assert!(counters.connections_accepted >= 241, "{counters:?}");
    assert_recovered(&server, base, "240 connections came and went");
}

// ---- the remaining limits -----------------------------------------------------------------

#[test]
fn idle_before_play_closes_a_client_that_never_publishes_or_plays() {
    let _shared = shared();
    let server = start_server(|c| c.idle_before_play_secs = 1);
    let started = Instant::now();
    let mut idle = Client::connect(server.local_addr(), "live");
    assert!(idle.wait_closed(WAIT), "closed after idle_before_play");
    assert!(started.elapsed() >= Duration::from_millis(900), "not before the limit");
    eventually("idle_before_play counted", || server.limit_trips(Limit::IdleBeforePlaySecs) == 1);
    assert_healthy(&server);
}

#[test]
fn publisher_idle_closes_a_silent_publisher_and_its_players_wait() {
    let _shared = shared();
    let server = start_server(|c| c.publisher_idle_secs = 1);
    let addr = server.local_addr();
    let key = fresh_key("silent");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let mut player = Client::connect(addr, "live");
    player.play(&key);
    publisher.send(MediaKind::Video, 0, &video_frame(0, true, 100));
    assert!(publisher.wait_closed(WAIT), "a silent publisher is closed");
    player.expect(|e| Client::status_code(e) == Some("NetStream.Play.UnpublishNotify"), "notify");
    eventually("publisher_idle counted", || server.limit_trips(Limit::PublisherIdleSecs) == 1);
    assert_eq!(server.counters().subscribers, 1, "the player stays attached");
    player.close();
    assert_healthy(&server);
}

#[test]
fn max_streams_per_shard_refuses_publish_and_play_of_new_keys() {
    let _shared = shared();
    let server = start_server(|c| {
        c.shards = Some(1);
        c.max_streams_per_shard = 2;
    });
    let addr = server.local_addr();
    let mut first = Client::connect(addr, "live");
    assert_eq!(first.publish("first"), "NetStream.Publish.Start");
    let mut second = Client::connect(addr, "live");
    assert_eq!(second.publish("second"), "NetStream.Publish.Start");
    let mut third = Client::connect(addr, "live");
    let (code, description) = publish_status(&mut third, "third");
    assert_eq!(code, "NetStream.Publish.BadName");
    assert!(description.contains("max_streams_per_shard"), "{description}");
    assert!(third.wait_closed(WAIT));
    let mut player = Client::connect(addr, "live");
    let (code, description) = play_status(&mut player, "fourth");
    assert_eq!(code, "NetStream.Play.Failed");
    assert!(description.contains("max_streams_per_shard"), "{description}");
    assert!(player.wait_closed(WAIT));
    assert_eq!(server.limit_trips(Limit::MaxStreamsPerShard), 2);
    // Players of existing streams are welcome; a freed slot can be used again.
    let mut player = Client::connect(addr, "live");
    player.play("first");
    first.close();
    second.close();
    player.close();
    assert_healthy(&server);
}

#[test]
fn max_players_per_stream_refuses_the_next_player_only() {
    let _shared = shared();
    let server = start_server(|c| {
        c.shards = Some(1);
        c.max_players_per_stream = 2;
    });
    let addr = server.local_addr();
    let key = fresh_key("crowded");
    let mut publisher = Client::connect(addr, "live");
    assert_eq!(publisher.publish(&key), "NetStream.Publish.Start");
    let mut players: Vec<Client> = (0..2)
        .map(|_| {
            let mut player = Client::connect(addr, "live");
            player.play(&key);
            player
        })
        .collect();
    let mut third = Client::connect(addr, "live");
    let (code, description) = play_status(&mut third, &key);
    assert_eq!(code, "NetStream.Play.Failed");
    assert!(description.contains("max_players_per_stream"), "{description}");
    assert!(third.wait_closed(WAIT));
    assert_eq!(server.limit_trips(Limit::MaxPlayersPerStream), 1);
    let frame = video_frame(1, true, 20_000);
    publisher.send(MediaKind::Video, 0, &frame);
    for player in &mut players {
        let media = player.media(2, WAIT);
        assert!(media.len() == 2 && media[1].payload[..] == frame[..], "admitted players play");
    }
    publisher.close();
    for player in players {
        player.close();
    }
    assert_healthy(&server);
}

#[test]
fn max_connections_drops_connections_beyond_it_and_recovers() {
    let _shared = shared();
    let server = start_server(|c| {
        c.shards = Some(1);
        c.max_connections = 3;
    });
    let addr = server.local_addr();
    let source = Ipv4Addr::new(127, 0, 0, 4);
    let mut held: Vec<TcpStream> = (0..3).map(|_| tcp_from(source, addr, None)).collect();
    eventually("three open", || server.counters().connections_open == 3);
    let mut fourth = tcp(addr);
    assert!(closed_within(&mut fourth, WAIT), "the fourth connection is dropped");
    assert_eq!(server.limit_trips(Limit::MaxConnections), 1);
    for socket in &mut held {
        assert!(!closed_within(socket, Duration::from_millis(50)), "admitted ones stay");
    }
    drop(held);
    assert_healthy(&server);
}
