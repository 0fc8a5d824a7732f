//! One client connection: a glommio socket driven through [`ClientSession`], and the setup
//! conversation (handshake, connect, createStream, publish or play) up to the Start status.
//!
//! The driver follows the session contract: every byte read goes to `handle_input`, events are
//! drained, and `poll_transmit` output is written before anything else. Reads go through one
//! scratch buffer per executor ([`Shard::scratch`]): glommio's `recv` happens synchronously
//! inside `poll_read`, so the buffer is borrowed only for the duration of one poll. Thousands of
//! idle players thus cost no read buffers of their own.
//!
//! Publishers read through glommio and copy what they read (acknowledgements, status) into the
//! connection's input buffer for the session. Players read megabytes a second each: they wait
//! on the executor's epoll set ([`Readiness`], see there for why) and `recv` into the scratch
//! buffer themselves, and their bytes never leave it: the handshake goes to the session, and
//! from then on the chunk stream goes
//! through a [`PlayDemux`] while it is still in the scratch buffer. Audio and video come out of
//! it as [`MediaHead`]s (the first bytes only, which is all a player measures); every other
//! message is re-encoded (chunk size 128, the session's default, which it keeps because Set
//! Chunk Size is never passed on) and fed to the session, whose events are queued in order with
//! the media. Set Chunk Size, Abort and Window Acknowledgement Size stay with the demuxer, which
//! also counts the bytes for the acknowledgements the session would have sent.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use std::collections::VecDeque;

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use rtmp_loadtest::clock;
use rtmp_loadtest::demux::{Demuxed, MediaHead, PlayDemux};
use rtmp_proto::chunk::{ChunkEncoder, MessageHeader};
use rtmp_proto::command::code;
use rtmp_proto::handshake::{HANDSHAKE_SIZE, RANDOM_LEN};
use rtmp_proto::message::{csid, type_id, ControlMessage};
use rtmp_proto::session::{ClientEvent, ClientSession, SessionConfig, SessionError};
use rtmp_proto::time::RtmpTimestamp;

use crate::cli::Plan;
use crate::readiness::{Readiness, Registration};
use crate::stats::{Gauges, ShardStats};

/// Bytes one read may take from the socket. Large reads matter: each read is a system call,
/// and on loopback often an ACK sent back through the server's TCP stack. For publishers this
/// also bounds what the input buffer grows to (one read plus a partial chunk).
const SCRATCH_LEN: usize = 64 * 1024;

/// S0 + S1 + S2: what the server sends before its first chunk.
const SERVER_HANDSHAKE_LEN: usize = 1 + 2 * HANDSHAKE_SIZE;

/// What every task on one executor shares.
#[derive(Debug)]
pub struct Shard {
    pub plan: Arc<Plan>,
    /// When the run started (t = 0): publishers start now, player joins and intervals count from it.
    pub start: Instant,
    pub stats: RefCell<ShardStats>,
    /// Read readiness of the players' sockets.
    pub readiness: Rc<Readiness>,
    scratch: RefCell<Vec<u8>>,
}

impl Shard {
    pub fn new(plan: Arc<Plan>, start: Instant) -> io::Result<Self> {
        Ok(Self {
            plan,
            start,
            stats: RefCell::default(),
            readiness: Rc::new(Readiness::new()?),
            scratch: RefCell::new(vec![0; SCRATCH_LEN]),
        })
    }
}

/// Why a connection ended. Each is counted under [`ConnError::kind`].
#[derive(Debug)]
pub enum ConnError {
    /// TCP connect failed (refused, unreachable, ...).
    Connect(io::Error),
    ConnectTimeout,
    /// Read or write failed after connecting.
    Io(io::Error),
    /// The server closed the connection.
    Closed,
    /// The server's bytes broke the protocol (the session's error kind).
    Protocol(&'static str),
    /// `_error` for a call, or an error-level onStatus.
    Rejected {
        bad_name: bool,
    },
    /// No Publish.Start / Play.Start within `--setup-timeout`.
    SetupTimeout,
    /// The server ended the play (NetStream.Play.Stop).
    PlayStopped,
}

impl ConnError {
    /// Short stable name for the reports.
    pub fn kind(&self) -> &'static str {
        match self {
            ConnError::Connect(e) if e.kind() == io::ErrorKind::ConnectionRefused => "refused",
            ConnError::Connect(_) => "connect",
            ConnError::ConnectTimeout => "connect_timeout",
            ConnError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => "reset",
            ConnError::Io(_) => "io",
            ConnError::Closed => "closed",
            ConnError::Protocol(kind) => kind,
            ConnError::Rejected { bad_name: true } => "bad_name",
            ConnError::Rejected { bad_name: false } => "rejected",
            ConnError::SetupTimeout => "setup_timeout",
            ConnError::PlayStopped => "play_stopped",
        }
    }
}

impl From<io::Error> for ConnError {
    fn from(e: io::Error) -> Self {
        ConnError::Io(e)
    }
}

/// Publish or play.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Publish,
    Play,
}

/// The result of a successful setup.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    pub stream_id: u32,
    /// When publish or play was written to the socket ([`clock`] nanoseconds).
    pub command_sent_ns: u64,
    /// When the Start status was read.
    pub started_ns: u64,
}

/// What a connection received, in order.
#[derive(Debug)]
pub enum Incoming {
    /// An audio or video message (players only; publishers get none).
    Media(MediaHead),
    /// Anything the session reported.
    Event(ClientEvent),
}

/// Where read bytes go.
#[derive(Debug)]
enum Input {
    /// Copied into a buffer for the session (publishers).
    Session(BytesMut),
    /// Demultiplexed in place (players).
    Demux(Box<DemuxInput>),
}

#[derive(Debug)]
struct DemuxInput {
    /// Handshake bytes still to come, and those that came (for the session).
    handshake_left: usize,
    handshake: BytesMut,
    demux: PlayDemux,
    /// Messages for the session, re-encoded at the session's chunk size.
    encoder: ChunkEncoder,
    forward: BytesMut,
    queue: VecDeque<Incoming>,
}

impl DemuxInput {
    fn new(config: &SessionConfig) -> Self {
        Self {
            handshake_left: SERVER_HANDSHAKE_LEN,
            handshake: BytesMut::new(),
            demux: PlayDemux::new(config.chunk_limits),
            encoder: ChunkEncoder::default(),
            forward: BytesMut::new(),
            queue: VecDeque::new(),
        }
    }

    /// Takes the bytes of one read.
    fn take(&mut self, mut data: &[u8], session: &mut ClientSession) -> Result<(), ConnError> {
        let protocol = |e: SessionError| ConnError::Protocol(e.kind());
        if self.handshake_left > 0 {
            let n = self.handshake_left.min(data.len());
            self.handshake.extend_from_slice(&data[..n]);
            self.handshake_left -= n;
            data = &data[n..];
            session.handle_input(&mut self.handshake).map_err(protocol)?;
            self.queue.extend(std::iter::from_fn(|| session.poll_event()).map(Incoming::Event));
            if self.handshake_left > 0 {
                return Ok(());
            }
            self.handshake = BytesMut::new();
        }
        let DemuxInput { demux, encoder, forward, queue, .. } = self;
        let mut failed = None;
        demux
            .feed(data, &mut |message| match message {
                Demuxed::Media(head) => queue.push_back(Incoming::Media(*head)),
                Demuxed::Other { .. } if failed.is_some() => {}
                Demuxed::Other { csid, header, payload } => {
                    match header.type_id {
                        // Applied by the demuxer; the session keeps the default chunk size.
                        type_id::SET_CHUNK_SIZE | type_id::ABORT => return,
                        // The demuxer acknowledges; a short one is the session's error.
                        type_id::WINDOW_ACK_SIZE if payload.len() >= 4 => return,
                        _ => {}
                    }
                    encoder.encode(csid, &header, payload, forward);
                    if let Err(e) = session.handle_input(forward) {
                        failed = Some(protocol(e));
                        return;
                    }
                    queue.extend(std::iter::from_fn(|| session.poll_event()).map(Incoming::Event));
                }
            })
            .map_err(|e| protocol(SessionError::Chunk(e)))?;
        if let Some(e) = failed {
            return Err(e);
        }
        if let Some(sequence_number) = demux.ack_due() {
            let mut payload = BytesMut::with_capacity(4);
            ControlMessage::Acknowledgement { sequence_number }.encode_payload(&mut payload);
            let header = MessageHeader {
                timestamp: RtmpTimestamp::ZERO,
                type_id: type_id::ACKNOWLEDGEMENT,
                stream_id: 0,
            };
            let mut chunk = BytesMut::new();
            ChunkEncoder::default().encode(csid::CONTROL, &header, &payload, &mut chunk);
            session.send_raw(&chunk);
        }
        Ok(())
    }
}

/// A connected client.
pub struct Conn {
    shard: Rc<Shard>,
    /// Players: the socket's place in the executor's epoll set. Dropped (deregistered) before
    /// `stream` closes the socket.
    registration: Option<Registration>,
    stream: TcpStream,
    pub session: ClientSession,
    input: Input,
    /// When the latest read returned ([`clock`] nanoseconds): the receive time of every message
    /// it completed.
    pub read_ns: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("input", &self.input).finish_non_exhaustive()
    }
}

impl Conn {
    /// Connects (with `--connect-timeout`), sets TCP_NODELAY and sends C0 + C1.
    pub async fn open(shard: &Rc<Shard>, role: Role, seed: u64) -> Result<Conn, ConnError> {
        let plan = &shard.plan;
        let stream =
            TcpStream::connect_timeout(plan.addr, plan.connect_timeout).await.map_err(|e| {
                match io::Error::from(e) {
                    e if e.kind() == io::ErrorKind::TimedOut => ConnError::ConnectTimeout,
                    e => ConnError::Connect(e),
                }
            })?;
        stream.set_nodelay(true).map_err(|e| ConnError::Io(e.into()))?;
        if role == Role::Play && plan.rcvbuf > 0 {
            set_rcvbuf(&stream, plan.rcvbuf)?;
        }
        let mut random = vec![0u8; RANDOM_LEN];
        crate::rng::Rng::new(seed).fill(&mut random);
        let epoch_ms = (clock::now_ns() / 1_000_000) as u32;
        let config = SessionConfig::default();
        let session = ClientSession::new(config, epoch_ms, &random, plan.digest);
        let (input, registration) = match role {
            Role::Publish => (Input::Session(BytesMut::with_capacity(4096)), None),
            Role::Play => (
                Input::Demux(Box::new(DemuxInput::new(&config))),
                Some(shard.readiness.register(stream.as_raw_fd())?),
            ),
        };
        let mut conn =
            Conn { shard: shard.clone(), registration, stream, session, input, read_ns: 0 };
        conn.flush().await?;
        Ok(conn)
    }

    /// Writes everything the session has queued.
    pub async fn flush(&mut self) -> Result<(), ConnError> {
        while let Some(bytes) = self.session.poll_transmit() {
            self.stream.write_all(&bytes).await?;
        }
        Ok(())
    }

    /// Reads what the socket has (at most `limit` bytes, waiting for at least one) and stamps
    /// [`Conn::read_ns`]. A publisher's bytes wait in the input buffer for
    /// [`Conn::handle_input`]; a player's are decoded right here, out of the scratch buffer,
    /// and what they carried is queued for [`Conn::poll_incoming`]. End of stream is
    /// [`ConnError::Closed`].
    pub async fn read_some(&mut self, limit: usize) -> Result<usize, ConnError> {
        if self.registration.is_some() {
            return self.recv_some(limit).await;
        }
        let Conn { shard, stream, session, input, read_ns, .. } = self;
        futures_lite::future::poll_fn(|cx| {
            let mut scratch = shard.scratch.borrow_mut();
            let len = scratch.len().min(limit.max(1));
            let n = match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..len]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(ConnError::Closed)),
                Poll::Ready(Ok(n)) => n,
            };
            *read_ns = clock::now_ns();
            let taken = match input {
                Input::Session(buffer) => {
                    buffer.extend_from_slice(&scratch[..n]);
                    Ok(())
                }
                Input::Demux(demux) => demux.take(&scratch[..n], session),
            };
            Poll::Ready(taken.map(|()| n))
        })
        .await
    }

    /// [`Conn::read_some`] for a socket in the executor's epoll set: our own non-blocking
    /// `recv` whenever the socket may have data.
    async fn recv_some(&mut self, limit: usize) -> Result<usize, ConnError> {
        let Conn { shard, registration: Some(registration), stream, session, input, read_ns } =
            self
        else {
            unreachable!("recv_some is for registered sockets");
        };
        let readiness = &shard.readiness;
        loop {
            futures_lite::future::poll_fn(|cx| readiness.poll_ready(registration, cx)).await;
            readiness.set_ready(registration, false);
            let mut scratch = shard.scratch.borrow_mut();
            let len = scratch.len().min(limit.max(1));
            // SAFETY: `scratch` is a writable buffer of at least `len` bytes, borrowed until
            // the call returns; the fd is the open socket `stream` owns.
            let n = unsafe {
                libc::recv(stream.as_raw_fd(), scratch.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT)
            };
            let n = match usize::try_from(n) {
                Ok(0) => return Err(ConnError::Closed),
                Ok(n) => n,
                Err(_) => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        // Drained (or a spurious edge): wait for the next one.
                        io::ErrorKind::WouldBlock => continue,
                        io::ErrorKind::Interrupted => {
                            readiness.set_ready(registration, true);
                            continue;
                        }
                        _ => return Err(ConnError::Io(e)),
                    }
                }
            };
            if n == len {
                // A full buffer: there may be more, and no new edge will say so.
                readiness.set_ready(registration, true);
            }
            *read_ns = clock::now_ns();
            let taken = match input {
                Input::Session(buffer) => {
                    buffer.extend_from_slice(&scratch[..n]);
                    Ok(())
                }
                Input::Demux(demux) => demux.take(&scratch[..n], session),
            };
            return taken.map(|()| n);
        }
    }

    /// Stops watching the socket (a player that will not read again).
    pub fn stop_reading(&mut self) {
        if let Some(registration) = self.registration.take() {
            self.shard.readiness.deregister(&registration);
        }
    }

    /// Feeds the input buffer to the session (players: done by [`Conn::read_some`] already).
    pub fn handle_input(&mut self) -> Result<(), ConnError> {
        match &mut self.input {
            Input::Session(buffer) => {
                self.session.handle_input(buffer).map_err(|e| ConnError::Protocol(e.kind()))
            }
            Input::Demux(_) => Ok(()),
        }
    }

    /// The next thing received, in order.
    pub fn poll_incoming(&mut self) -> Option<Incoming> {
        match &mut self.input {
            Input::Session(_) => self.session.poll_event().map(Incoming::Event),
            Input::Demux(demux) => demux.queue.pop_front(),
        }
    }

    /// Runs the conversation up to NetStream.Publish.Start or NetStream.Play.Start on `key`.
    /// Events after the Start status stay queued in the session for the caller.
    pub async fn setup(&mut self, role: Role, key: &str) -> Result<Started, ConnError> {
        let plan = self.shard.plan.clone();
        let mut command_sent_ns = None;
        let mut stream_id = 0;
        loop {
            let mut command_queued = false;
            while let Some(incoming) = self.poll_incoming() {
                let Incoming::Event(event) = incoming else { continue };
                match event {
                    ClientEvent::HandshakeDone => {
                        if role == Role::Publish {
                            self.session.set_chunk_size(plan.chunk_size);
                        }
                        self.session.connect(&plan.url.app, &plan.url.tc_url);
                    }
                    ClientEvent::Connected => self.session.create_stream(),
                    ClientEvent::StreamCreated { stream_id: id } => {
                        stream_id = id;
                        match role {
                            Role::Publish => self.session.publish(id, key),
                            Role::Play => self.session.play(id, key),
                        }
                        command_queued = true;
                    }
                    ClientEvent::Status { level, code, .. } => {
                        let start = match role {
                            Role::Publish => code::PUBLISH_START,
                            Role::Play => code::PLAY_START,
                        };
                        if code == start {
                            return Ok(Started {
                                stream_id,
                                command_sent_ns: command_sent_ns.unwrap_or(self.read_ns),
                                started_ns: self.read_ns,
                            });
                        }
                        if level == "error" {
                            return Err(ConnError::Rejected {
                                bad_name: code == code::PUBLISH_BAD_NAME,
                            });
                        }
                    }
                    ClientEvent::CallFailed { .. } => {
                        return Err(ConnError::Rejected { bad_name: false })
                    }
                    _ => {}
                }
            }
            self.flush().await?;
            if command_queued {
                command_sent_ns = Some(clock::now_ns());
            }
            self.read_some(usize::MAX).await?;
            self.handle_input()?;
        }
    }

    /// [`Conn::setup`] within `--setup-timeout`.
    pub async fn setup_within(&mut self, role: Role, key: &str) -> Result<Started, ConnError> {
        let timeout = self.shard.plan.setup_timeout;
        futures_lite::future::or(self.setup(role, key), async {
            glommio::timer::sleep(timeout).await;
            Err(ConnError::SetupTimeout)
        })
        .await
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stop_reading();
    }
}

/// Sets SO_RCVBUF (which also turns off receive buffer autotuning for the socket).
fn set_rcvbuf(stream: &TcpStream, bytes: u32) -> Result<(), ConnError> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: the fd is the open socket `stream` owns; the option value is a c_int on our stack
    // whose size we pass.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(ConnError::Io(io::Error::last_os_error()));
    }
    Ok(())
}

/// Sleeps until `at` (returns at once when it has passed): absolute deadlines, so that pacing
/// errors do not accumulate.
pub async fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        glommio::timer::sleep(at - now).await;
    }
}

/// Sleeps for `duration`, from now.
pub async fn sleep(duration: Duration) {
    if !duration.is_zero() {
        glommio::timer::sleep(duration).await;
    }
}

/// Which gauge a connection holds up while it is alive.
#[derive(Debug, Clone, Copy)]
pub enum GaugeKind {
    Publishing,
    Playing,
    Slow,
    Stalled,
}

/// Counts a connection in its gauge from creation until drop (including when the run ends and
/// its task is cancelled).
#[derive(Debug)]
pub struct GaugeGuard {
    shard: Rc<Shard>,
    kind: GaugeKind,
}

fn gauge(gauges: &mut Gauges, kind: GaugeKind) -> &mut u64 {
    match kind {
        GaugeKind::Publishing => &mut gauges.publishing,
        GaugeKind::Playing => &mut gauges.playing,
        GaugeKind::Slow => &mut gauges.slow,
        GaugeKind::Stalled => &mut gauges.stalled,
    }
}

impl GaugeGuard {
    pub fn new(shard: &Rc<Shard>, kind: GaugeKind) -> Self {
        *gauge(&mut shard.stats.borrow_mut().gauges, kind) += 1;
        Self { shard: shard.clone(), kind }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        let mut stats = self.shard.stats.borrow_mut();
        let value = gauge(&mut stats.gauges, self.kind);
        *value = value.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use rtmp_proto::message::UserControlEvent;
    use rtmp_proto::session::{MediaKind, ServerEvent, ServerSession};

    use super::*;

    /// Events as text, media reduced to heads (both paths compare equal then).
    fn describe(incoming: Incoming) -> String {
        match incoming {
            Incoming::Media(head) => format!("{head:?}"),
            Incoming::Event(ClientEvent::Media(m)) if m.kind != MediaKind::Data => {
                format!("{:?}", MediaHead::new(m.kind, m.stream_id, m.timestamp, &m.payload))
            }
            Incoming::Event(event) => format!("{event:?}"),
        }
    }

    /// What a player does with the setup events: connect, createStream, play.
    fn act(session: &mut ClientSession, events: &[String]) {
        for event in events {
            if event == "HandshakeDone" {
                session.connect("live", "rtmp://127.0.0.1/live");
            } else if event == "Connected" {
                session.create_stream();
            } else if let Some(id) = event.strip_prefix("StreamCreated { stream_id: ") {
                session.play(id.trim_end_matches(" }").parse().expect("stream id"), "key");
            }
        }
    }

    fn output(session: &mut ClientSession) -> Vec<u8> {
        std::iter::from_fn(|| session.poll_transmit()).flatten().collect()
    }

    /// An Acknowledgement (4 bytes, type 3) on chunk stream 2, up to its sequence number.
    const ACK_HEADER: [u8; 12] = [0x02, 0, 0, 0, 0, 0, 4, 3, 0, 0, 0, 0];

    /// `bytes` without Acknowledgement messages, which the two paths send at different
    /// moments (the session per message, the demuxer per read).
    fn without_acks(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            if rest.starts_with(&ACK_HEADER) && rest.len() >= ACK_HEADER.len() + 4 {
                rest = &rest[ACK_HEADER.len() + 4..];
            } else {
                out.push(rest[0]);
                rest = &rest[1..];
            }
        }
        out
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    /// Media as a relay writes it (9000 B of video, 371 B of audio, 40 B of video), and a ping.
    fn media_and_ping(stream_id: u32, round: u32) -> Vec<u8> {
        let encoder = ChunkEncoder::new(4096);
        let mut out = BytesMut::new();
        for (i, (kind, len)) in
            [(MediaKind::Video, 9000), (MediaKind::Audio, 371), (MediaKind::Video, 40)]
                .into_iter()
                .enumerate()
        {
            let header = MessageHeader {
                timestamp: RtmpTimestamp(round * 100 + i as u32),
                type_id: kind.type_id(),
                stream_id,
            };
            let payload: Vec<u8> = (0..len).map(|b| (b * 7 + round as usize) as u8).collect();
            encoder.encode(kind.csid(), &header, &payload, &mut out);
        }
        let mut ping = BytesMut::new();
        ControlMessage::UserControl(UserControlEvent::PingRequest(round)).encode_payload(&mut ping);
        let header = MessageHeader {
            timestamp: RtmpTimestamp::ZERO,
            type_id: type_id::USER_CONTROL,
            stream_id: 0,
        };
        encoder.encode(csid::CONTROL, &header, &ping, &mut out);
        out.to_vec()
    }

    /// A player's conversation with a real server session, read once through the session alone
    /// (the publisher's path) and once through the demuxer (the player's path), with the
    /// server's bytes cut into pieces of `piece`: the same events in the same order, the same
    /// requests, ping responses, and acknowledgements by the server's window.
    fn converse(piece: usize) {
        let config = SessionConfig { window_ack_size: 20_000, ..SessionConfig::default() };
        let mut server = ServerSession::new(config, 7, &[3; RANDOM_LEN], std::time::Instant::now());
        let mut plain = ClientSession::new(SessionConfig::default(), 1, &[5; RANDOM_LEN], false);
        let mut player = ClientSession::new(SessionConfig::default(), 1, &[5; RANDOM_LEN], false);
        let mut input = DemuxInput::new(&SessionConfig::default());
        let (mut seen_plain, mut seen_demux) = (Vec::new(), Vec::new());
        let mut sent_demux = Vec::new();
        let mut playing = None;
        for round in 0..12 {
            // The plain client talks to the server; the demuxing one must say the same.
            let to_server = output(&mut plain);
            let said = output(&mut player);
            assert_eq!(without_acks(&said), without_acks(&to_server), "round {round}");
            sent_demux.extend(said);
            server
                .handle_input(&mut BytesMut::from(&to_server[..]), std::time::Instant::now())
                .expect("server accepts");
            while let Some(event) = server.poll_event() {
                if let ServerEvent::PlayRequested { stream_id, name } = event {
                    server.accept_play(stream_id, &name.key);
                    playing = Some(stream_id);
                }
            }
            let mut to_client: Vec<u8> =
                std::iter::from_fn(|| server.poll_transmit()).flatten().collect();
            if let Some(stream_id) = playing {
                to_client.extend(media_and_ping(stream_id, round));
            }

            plain.handle_input(&mut BytesMut::from(&to_client[..])).expect("plain client reads");
            let events: Vec<String> = std::iter::from_fn(|| plain.poll_event())
                .map(|e| describe(Incoming::Event(e)))
                .collect();
            act(&mut plain, &events);
            seen_plain.extend(events);

            for part in to_client.chunks(piece) {
                input.take(part, &mut player).expect("demuxing client reads");
            }
            let events: Vec<String> = input.queue.drain(..).map(describe).collect();
            act(&mut player, &events);
            seen_demux.extend(events);
        }
        assert!(playing.is_some(), "the play was accepted");
        assert_eq!(seen_demux, seen_plain, "pieces of {piece}");
        assert!(seen_demux.iter().filter(|e| e.starts_with("MediaHead")).count() >= 24);
        assert!(seen_demux.iter().any(|e| e.contains("NetStream.Play.Start")));
        // A User Control message of 6 bytes, event 7: a ping response.
        assert!(contains(&sent_demux, &[0, 0, 6, 4, 0, 0, 0, 0, 0, 7]), "ping answered");
        assert!(contains(&sent_demux, &ACK_HEADER), "acknowledged");
        assert!(input.demux.received() > 40_000);
    }

    #[test]
    fn player_path_sees_what_the_session_sees() {
        for piece in [1, 7, 100, 1536, 4096, 65_536] {
            converse(piece);
        }
    }
}
