//! One client connection: a glommio socket driven through [`ClientSession`], and the setup
//! conversation (handshake, connect, createStream, publish or play) up to the Start status.
//!
//! The driver follows the session contract: every byte read goes to `handle_input`, events are
//! drained, and `poll_transmit` output is written before anything else. Reads go through one
//! scratch buffer per executor ([`Shard::scratch`]): glommio's `recv` happens synchronously
//! inside `poll_read`, so the buffer is borrowed only for the duration of one poll, and only the
//! bytes actually received are copied into the connection's own input buffer. Thousands of idle
//! players thus cost no read buffers of their own.

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;
use rtmp_loadtest::clock;
use rtmp_proto::command::code;
use rtmp_proto::handshake::RANDOM_LEN;
use rtmp_proto::session::{ClientEvent, ClientSession, SessionConfig};

use crate::cli::Plan;
use crate::stats::{Gauges, ShardStats};

/// Bytes one read may take from the socket. This also bounds what a connection's input buffer
/// grows to (one read plus a partial chunk), which matters at thousands of players.
const SCRATCH_LEN: usize = 64 * 1024;

/// What every task on one executor shares.
#[derive(Debug)]
pub struct Shard {
    pub plan: Arc<Plan>,
    /// When the run started (t = 0): publishers start now, player joins and intervals count from it.
    pub start: Instant,
    pub stats: RefCell<ShardStats>,
    scratch: RefCell<Vec<u8>>,
}

impl Shard {
    pub fn new(plan: Arc<Plan>, start: Instant) -> Self {
        Self { plan, start, stats: RefCell::default(), scratch: RefCell::new(vec![0; SCRATCH_LEN]) }
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

/// A connected client.
pub struct Conn {
    shard: Rc<Shard>,
    stream: TcpStream,
    pub session: ClientSession,
    input: BytesMut,
    /// When the latest read returned ([`clock`] nanoseconds): the receive time of every message
    /// it completed.
    pub read_ns: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("input", &self.input.len()).finish_non_exhaustive()
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
        let session = ClientSession::new(SessionConfig::default(), epoch_ms, &random, plan.digest);
        let mut conn = Conn {
            shard: shard.clone(),
            stream,
            session,
            input: BytesMut::with_capacity(4096),
            read_ns: 0,
        };
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

    /// Reads what the socket has (at most `limit` bytes, waiting for at least one) into the
    /// input buffer and stamps [`Conn::read_ns`]. End of stream is [`ConnError::Closed`].
    pub async fn read_some(&mut self, limit: usize) -> Result<usize, ConnError> {
        let Conn { shard, stream, input, .. } = self;
        let n = futures_lite::future::poll_fn(|cx| {
            let mut scratch = shard.scratch.borrow_mut();
            let len = scratch.len().min(limit.max(1));
            match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..len]) {
                Poll::Ready(Ok(n)) => {
                    input.extend_from_slice(&scratch[..n]);
                    Poll::Ready(Ok(n))
                }
                other => other,
            }
        })
        .await?;
        if n == 0 {
            return Err(ConnError::Closed);
        }
        self.read_ns = clock::now_ns();
        Ok(n)
    }

    /// Feeds the input buffer to the session.
    pub fn handle_input(&mut self) -> Result<(), ConnError> {
        self.session.handle_input(&mut self.input).map_err(|e| ConnError::Protocol(e.kind()))
    }

    /// Runs the conversation up to NetStream.Publish.Start or NetStream.Play.Start on `key`.
    /// Events after the Start status stay queued in the session for the caller.
    pub async fn setup(&mut self, role: Role, key: &str) -> Result<Started, ConnError> {
        let plan = self.shard.plan.clone();
        let mut command_sent_ns = None;
        let mut stream_id = 0;
        loop {
            let mut command_queued = false;
            while let Some(event) = self.session.poll_event() {
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
