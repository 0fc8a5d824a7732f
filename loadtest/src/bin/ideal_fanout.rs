//! `ideal_fanout`: the physical floor rtmp-relay's fan-out is held against.
//!
//! A single-threaded epoll loop with no protocol work per player beyond the setup: it accepts
//! publishers and players (handshake, connect, createStream, publish/play through
//! `rtmp_proto`'s [`ServerSession`]), and for every media message a publisher sends it encodes
//! the chunks **once** and writes them to every player of that stream with one
//! `sendmsg(MSG_DONTWAIT)` per message per player, straight from the publisher's read handler:
//! no per-player queue while the socket keeps up, no task, no scheduler, no timer, no
//! histogram, no counters.
//!
//! It relays a publisher rather than generating the stream itself because `rtmp-loadtest`'s
//! send-time markers count from *its* process's clock: taking the stream from an
//! `rtmp-loadtest` publisher lets the same players measure latency, time to first frame and
//! loss against the floor exactly as against any server. The publisher side (decoding ~45
//! messages a second per stream) is paid once per message, not per player, so it vanishes from
//! the CPU per player-second at any real fan-out.
//!
//! What it keeps so that players see a well-formed stream: the metadata, the audio and video
//! sequence headers and the current GOP (bounded) for late joiners. When a player's socket is
//! full, the rest of the message and the messages after it wait in that player's queue of
//! shared `Bytes` (no copy) and go out with one vectored `sendmsg` when it drains; a player
//! with more than `--max-queue-bytes` queued is disconnected. It relays codec-transparently and
//! plays on message stream id 1 only (what `createStream` returns first; every common client
//! plays there).
//!
//! ```sh
//! taskset -c 0 ./target/release/ideal_fanout --listen 127.0.0.1:19350 &
//! ./target/release/rtmp-loadtest rtmp://127.0.0.1:19350/live -n 500 --server-pid $! --cpus 1
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::process::ExitCode;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use clap::Parser;
use rtmp_proto::chunk::{ChunkEncoder, MessageHeader};
use rtmp_proto::command::code;
use rtmp_proto::handshake::RANDOM_LEN;
use rtmp_proto::session::{Media, MediaKind, ServerEvent, ServerSession, SessionConfig};

/// The message stream id frames are encoded for (the first `createStream` of a connection).
const PLAY_STREAM_ID: u32 = 1;
/// Bytes read from a socket per `read` call.
const READ_SIZE: usize = 64 * 1024;
/// Most iovecs in one `sendmsg` when a queue drains.
const MAX_IOVECS: usize = 64;
/// Listener token in epoll's user data (connections use their fd, never this value).
const LISTENER_TOKEN: u64 = u64::MAX;

/// The minimal fan-out: one thread, epoll, one `sendmsg` per message per player.
#[derive(Debug, Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Address to accept RTMP publishers and players on.
    #[arg(long, default_value = "127.0.0.1:19350")]
    listen: SocketAddr,
    /// Chunk size announced to clients and used for the shared encoding of every message.
    #[arg(long, default_value_t = 4096)]
    chunk_size: u32,
    /// Bytes queued for one player (its socket full) above which it is disconnected.
    #[arg(long, default_value_t = 64 << 20)]
    max_queue_bytes: usize,
    /// Most bytes of the current GOP kept per stream for late joiners.
    #[arg(long, default_value_t = 16 << 20)]
    gop_cache_max_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Idle,
    Publisher(String),
    Player(String),
}

#[derive(Debug)]
struct Conn {
    socket: TcpStream,
    session: ServerSession,
    input: BytesMut,
    /// Bytes waiting for the socket, oldest first; empty while the socket keeps up.
    queue: VecDeque<Bytes>,
    queued_bytes: usize,
    /// EPOLLOUT is armed (only while `queue` is not empty).
    want_write: bool,
    role: Role,
    dead: bool,
}

/// What a stream keeps: its players and what a late joiner needs before live frames.
#[derive(Debug, Default)]
struct Stream {
    publisher: Option<RawFd>,
    players: Vec<RawFd>,
    metadata: Option<Bytes>,
    audio_header: Option<Bytes>,
    video_header: Option<Bytes>,
    /// From the last keyframe on; empty until the first keyframe or after an overflow.
    gop: Vec<Bytes>,
    gop_bytes: usize,
    gop_open: bool,
}

struct Server {
    epoll: RawFd,
    listener: TcpListener,
    /// Connections by fd.
    conns: Vec<Option<Conn>>,
    streams: HashMap<String, Stream>,
    encoder: ChunkEncoder,
    config: SessionConfig,
    args: Args,
    scratch: Vec<u8>,
    seed: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ideal_fanout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> io::Result<()> {
    let listener = TcpListener::bind(args.listen)?;
    listener.set_nonblocking(true)?;
    // SAFETY: epoll_create1 has no memory preconditions.
    let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if epoll < 0 {
        return Err(io::Error::last_os_error());
    }
    epoll_ctl(
        epoll,
        libc::EPOLL_CTL_ADD,
        listener.as_raw_fd(),
        libc::EPOLLIN as u32,
        LISTENER_TOKEN,
    )?;
    eprintln!("ideal_fanout: listening on {}", listener.local_addr()?);
    let config = SessionConfig { out_chunk_size: args.chunk_size, ..SessionConfig::default() };
    let mut server = Server {
        epoll,
        listener,
        conns: Vec::new(),
        streams: HashMap::new(),
        encoder: ChunkEncoder::new(args.chunk_size),
        config,
        args,
        scratch: vec![0; READ_SIZE],
        seed: 0x9e37_79b9_7f4a_7c15,
    };
    server.run()
}

impl Server {
    fn run(&mut self) -> io::Result<()> {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
        let mut dead = Vec::new();
        loop {
            // SAFETY: `events` is a valid buffer of `events.len()` epoll_event.
            let n = unsafe {
                libc::epoll_wait(self.epoll, events.as_mut_ptr(), events.len() as i32, -1)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in &events[..n as usize] {
                let (token, flags) = (event.u64, event.events);
                if token == LISTENER_TOKEN {
                    self.accept_all();
                    continue;
                }
                let fd = token as RawFd;
                if flags & libc::EPOLLOUT as u32 != 0 {
                    let epoll = self.epoll;
                    if let Some(conn) = self.conn_mut(fd) {
                        flush(conn, epoll);
                    }
                }
                if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                    self.readable(fd);
                }
            }
            // Close after the batch, so that a reused fd never receives a stale event.
            for (fd, slot) in self.conns.iter().enumerate() {
                if slot.as_ref().is_some_and(|c| c.dead) {
                    dead.push(fd as RawFd);
                }
            }
            for fd in dead.drain(..) {
                self.close(fd);
            }
        }
    }

    fn conn_mut(&mut self, fd: RawFd) -> Option<&mut Conn> {
        self.conns.get_mut(fd as usize)?.as_mut().filter(|c| !c.dead)
    }

    fn accept_all(&mut self) {
        loop {
            let socket = match self.listener.accept() {
                Ok((socket, _)) => socket,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: drop this wake-up, the listener stays armed.
                    eprintln!("ideal_fanout: accept: {e}");
                    return;
                }
            };
            if socket.set_nonblocking(true).is_err() || socket.set_nodelay(true).is_err() {
                continue;
            }
            let fd = socket.as_raw_fd();
            if epoll_ctl(self.epoll, libc::EPOLL_CTL_ADD, fd, libc::EPOLLIN as u32, fd as u64)
                .is_err()
            {
                continue;
            }
            let mut random = [0u8; RANDOM_LEN];
            for byte in random.iter_mut() {
                // xorshift: handshake bytes only need to look random.
                self.seed ^= self.seed << 13;
                self.seed ^= self.seed >> 7;
                self.seed ^= self.seed << 17;
                *byte = self.seed as u8;
            }
            let conn = Conn {
                socket,
                session: ServerSession::new(self.config, 0, &random, Instant::now()),
                input: BytesMut::with_capacity(READ_SIZE),
                queue: VecDeque::new(),
                queued_bytes: 0,
                want_write: false,
                role: Role::Idle,
                dead: false,
            };
            let index = fd as usize;
            if self.conns.len() <= index {
                self.conns.resize_with(index + 1, || None);
            }
            self.conns[index] = Some(conn);
        }
    }

    /// Reads what the socket has, then lets the session act on it.
    fn readable(&mut self, fd: RawFd) {
        let Some(mut conn) = self.conns.get_mut(fd as usize).and_then(Option::take) else {
            return;
        };
        if conn.dead {
            self.conns[fd as usize] = Some(conn);
            return;
        }
        let mut media = Vec::new();
        loop {
            match conn.socket.read(&mut self.scratch) {
                Ok(0) => {
                    conn.dead = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&self.scratch[..n]);
                    if let Err(e) = self.drive(&mut conn, fd, &mut media) {
                        eprintln!("ideal_fanout: fd {fd}: {e}");
                        conn.dead = true;
                        break;
                    }
                    if n < self.scratch.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    conn.dead = true;
                    break;
                }
            }
        }
        let publishing = match &conn.role {
            Role::Publisher(key) => Some(key.clone()),
            _ => None,
        };
        self.conns[fd as usize] = Some(conn);
        if let Some(key) = publishing {
            for message in media {
                self.relay(&key, message);
            }
        }
    }

    /// Runs the session over the input read so far: answers requests, collects media.
    fn drive(
        &mut self,
        conn: &mut Conn,
        fd: RawFd,
        media: &mut Vec<Media>,
    ) -> Result<(), rtmp_proto::session::SessionError> {
        loop {
            let before = conn.input.len();
            conn.session.handle_input(&mut conn.input, Instant::now())?;
            let mut had_events = false;
            while let Some(event) = conn.session.poll_event() {
                had_events = true;
                self.on_event(conn, fd, event, media);
            }
            while let Some(bytes) = conn.session.poll_transmit() {
                send(conn, bytes, self.epoll, self.args.max_queue_bytes);
            }
            if conn.input.len() == before && !had_events {
                return Ok(());
            }
        }
    }

    fn on_event(&mut self, conn: &mut Conn, fd: RawFd, event: ServerEvent, media: &mut Vec<Media>) {
        match event {
            ServerEvent::PublishRequested { stream_id, name, .. } => {
                let stream = self.streams.entry(name.key.clone()).or_default();
                if stream.publisher.is_some() || conn.role != Role::Idle {
                    conn.session.reject_publish(stream_id, code::PUBLISH_BAD_NAME, "in use");
                    conn.dead = true;
                    return;
                }
                stream.publisher = Some(fd);
                conn.session.accept_publish(stream_id, &name.key);
                conn.role = Role::Publisher(name.key);
            }
            ServerEvent::PlayRequested { stream_id, name } => {
                if stream_id != PLAY_STREAM_ID || conn.role != Role::Idle {
                    conn.session.reject_play(
                        stream_id,
                        code::PLAY_STREAM_NOT_FOUND,
                        "stream 1 only",
                    );
                    return;
                }
                conn.session.accept_play(stream_id, &name.key);
                while let Some(bytes) = conn.session.poll_transmit() {
                    send(conn, bytes, self.epoll, self.args.max_queue_bytes);
                }
                let stream = self.streams.entry(name.key.clone()).or_default();
                let late_join = [&stream.metadata, &stream.audio_header, &stream.video_header]
                    .into_iter()
                    .flatten()
                    .chain(stream.gop.iter());
                for bytes in late_join {
                    send(conn, bytes.clone(), self.epoll, self.args.max_queue_bytes);
                }
                stream.players.push(fd);
                conn.role = Role::Player(name.key);
            }
            ServerEvent::Media(message) => media.push(message),
            ServerEvent::StreamClosed { .. } => conn.dead = true,
            _ => {}
        }
    }

    /// Encodes a publisher's message once and writes it to every player of the stream.
    fn relay(&mut self, key: &str, message: Media) {
        let Some(stream) = self.streams.get_mut(key) else { return };
        let header = MessageHeader {
            timestamp: message.timestamp,
            type_id: message.kind.type_id(),
            stream_id: PLAY_STREAM_ID,
        };
        let csid = message.kind.csid();
        let payload = &message.payload[..];
        let mut out =
            BytesMut::with_capacity(self.encoder.encoded_len(csid, &header, payload.len()));
        self.encoder.encode(csid, &header, payload, &mut out);
        let frame = out.freeze();

        let first = payload.first().copied().unwrap_or(0);
        let sequence_header = payload.get(1) == Some(&0);
        match message.kind {
            MediaKind::Data if message.is_metadata => stream.metadata = Some(frame.clone()),
            MediaKind::Video if sequence_header => stream.video_header = Some(frame.clone()),
            MediaKind::Audio if sequence_header && first >> 4 == 10 => {
                stream.audio_header = Some(frame.clone())
            }
            MediaKind::Video if first >> 4 == 1 => {
                stream.gop.clear();
                stream.gop_bytes = 0;
                stream.gop_open = true;
            }
            _ => {}
        }
        if stream.gop_open && !message.is_metadata && !sequence_header {
            if stream.gop_bytes + frame.len() > self.args.gop_cache_max_bytes {
                stream.gop.clear();
                stream.gop_bytes = 0;
                stream.gop_open = false;
            } else {
                stream.gop_bytes += frame.len();
                stream.gop.push(frame.clone());
            }
        }

        for &fd in &stream.players {
            if let Some(Some(conn)) = self.conns.get_mut(fd as usize) {
                if !conn.dead {
                    send(conn, frame.clone(), self.epoll, self.args.max_queue_bytes);
                }
            }
        }
    }

    fn close(&mut self, fd: RawFd) {
        let Some(conn) = self.conns.get_mut(fd as usize).and_then(Option::take) else { return };
        match &conn.role {
            Role::Player(key) => {
                if let Some(stream) = self.streams.get_mut(key) {
                    stream.players.retain(|&p| p != fd);
                }
            }
            Role::Publisher(key) => {
                if let Some(stream) = self.streams.get_mut(key) {
                    stream.publisher = None;
                    stream.metadata = None;
                    stream.audio_header = None;
                    stream.video_header = None;
                    stream.gop.clear();
                    stream.gop_bytes = 0;
                    stream.gop_open = false;
                }
            }
            Role::Idle => {}
        }
        let _ = epoll_ctl(self.epoll, libc::EPOLL_CTL_DEL, fd, 0, 0);
        drop(conn);
    }
}

/// Writes `bytes` now with one `sendmsg` if nothing is queued ahead of it, else queues it.
fn send(conn: &mut Conn, mut bytes: Bytes, epoll: RawFd, max_queue_bytes: usize) {
    if conn.dead || bytes.is_empty() {
        return;
    }
    if conn.queue.is_empty() {
        let iov = [libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() }];
        match sendmsg(conn.socket.as_raw_fd(), &iov) {
            Ok(n) if n == bytes.len() => return,
            Ok(n) => bytes.advance(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => {
                conn.dead = true;
                return;
            }
        }
    }
    conn.queued_bytes += bytes.len();
    conn.queue.push_back(bytes);
    if conn.queued_bytes > max_queue_bytes {
        conn.dead = true;
        return;
    }
    arm(conn, epoll, true);
}

/// Drains a player's queue with vectored `sendmsg` calls until it is empty or the socket is full.
fn flush(conn: &mut Conn, epoll: RawFd) {
    while !conn.queue.is_empty() {
        let iov: Vec<libc::iovec> = conn
            .queue
            .iter()
            .take(MAX_IOVECS)
            .map(|b| libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: b.len() })
            .collect();
        let mut written = match sendmsg(conn.socket.as_raw_fd(), &iov) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => {
                conn.dead = true;
                return;
            }
        };
        conn.queued_bytes -= written;
        while written > 0 {
            let Some(front) = conn.queue.front_mut() else { break };
            if written >= front.len() {
                written -= front.len();
                conn.queue.pop_front();
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }
    arm(conn, epoll, false);
}

fn arm(conn: &mut Conn, epoll: RawFd, write: bool) {
    if conn.want_write == write {
        return;
    }
    let fd = conn.socket.as_raw_fd();
    let mut flags = libc::EPOLLIN as u32;
    if write {
        flags |= libc::EPOLLOUT as u32;
    }
    if epoll_ctl(epoll, libc::EPOLL_CTL_MOD, fd, flags, fd as u64).is_ok() {
        conn.want_write = write;
    } else {
        conn.dead = true;
    }
}

fn sendmsg(fd: RawFd, iov: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iov.len() as _;
    loop {
        // SAFETY: `msg` points at `iov`, whose buffers are live `Bytes` the caller holds for
        // the duration of the call; the kernel only reads them.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn epoll_ctl(epoll: RawFd, op: i32, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut event = libc::epoll_event { events, u64: token };
    // SAFETY: `event` is a valid epoll_event for the duration of the call.
    if unsafe { libc::epoll_ctl(epoll, op, fd, &mut event) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
