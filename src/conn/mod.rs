//! One RTMP connection: the driver between a socket and a [`ServerSession`], and between the
//! session's requests and the shard's [`Registry`].
//!
//! # Lifecycle
//! Each accepted socket gets two tasks on its shard:
//! - the **reader** (this module's [`serve`]): reads, feeds the session, answers its events
//!   (publish, play, media, close) and relays media into the stream registry;
//! - the **writer**: drains the connection's [`OutQueue`] (the session's own replies and, for a
//!   player, the shared frames of the stream) with vectored writes.
//!
//! The reader ends on end of stream, a socket error, a protocol violation or a timeout; the
//! writer ends when the queue is closed (slow subscriber, server-side close) or on a write error,
//! and shuts the socket down so the reader wakes too. Cleanup runs once, in the reader: every
//! stream the connection published is unpublished and every play is left, so nothing it touched
//! outlives it.

mod limits;
mod socket;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::FutureExt;
use glommio::net::TcpStream;
use rtmp_proto::command::code;
use rtmp_proto::handshake::RANDOM_LEN;
use rtmp_proto::session::{ServerEvent, ServerSession, SessionConfig, SessionError};
use tracing::field::Empty;
use tracing::{debug, info, info_span, warn, Instrument, Span};

pub use limits::{Admission, ConnLimits, IpTable, Refusal};
pub use socket::Socket;

use crate::metrics::{ConnState, Limit, ShardCounters};
use crate::stream::{
    CloseReason, OutQueue, PublishRefused, PublishWaiter, PublisherInfo, Registry, SnapshotWaiter,
    Stream, StreamKey, Subscriber,
};
use crate::telemetry::LogLimiter;

/// Bytes asked of the kernel per read while playing or idle: players send little.
const SMALL_READ: usize = 4 * 1024;
/// Bytes asked per read once publishing: a video keyframe arrives in few reads.
const LARGE_READ: usize = 64 * 1024;
/// How long a closing connection may take to flush its last replies (a refused publisher's
/// BadName, a Play.Stop) before it is dropped anyway.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a publish waits for the owner shard's answer. Shards answer in microseconds; this
/// only bounds a shard that is wedged.
const OWNER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// What a shard gives every connection it accepts.
#[derive(Debug)]
pub struct ConnContext {
    pub shard_id: usize,
    pub registry: Registry,
    pub counters: Rc<ShardCounters>,
    pub session: SessionConfig,
    pub limits: ConnLimits,
    /// Open connections this shard admits (its share of `--max-connections`).
    pub max_connections: usize,
    /// Per-IP counts of this shard's connections.
    ip_table: Rc<IpTable>,
    /// Testing aid (`--debug-panic-on-key`): playing this key panics the connection's task.
    pub debug_panic_key: Option<String>,
    /// Time base for handshake timestamps.
    pub epoch: Instant,
    /// Every open connection's queue, so a shutdown can close them all.
    open: RefCell<HashMap<u64, Rc<OutQueue>>>,
    /// Refused connections come in floods (that is what the limits are for): one line a
    /// second, saying how many went unlogged.
    refusal_log: LogLimiter,
    next_conn_id: Cell<u64>,
    rng: Cell<u64>,
}

impl ConnContext {
    pub fn new(
        shard_id: usize,
        registry: Registry,
        counters: Rc<ShardCounters>,
        session: SessionConfig,
        limits: ConnLimits,
        max_connections: usize,
    ) -> Self {
        let epoch = Instant::now();
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9, |d| d.as_nanos() as u64);
        Self {
            shard_id,
            registry,
            counters,
            session,
            limits,
            max_connections,
            ip_table: Rc::default(),
            debug_panic_key: None,
            epoch,
            open: RefCell::new(HashMap::new()),
            refusal_log: LogLimiter::new(Duration::from_secs(1)),
            // Connection ids are unique across shards: the shard id is in the top bits.
            next_conn_id: Cell::new((shard_id as u64) << 48),
            rng: Cell::new(seed ^ (shard_id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        }
    }

    /// Open connections on this shard.
    pub fn open_connections(&self) -> usize {
        self.open.borrow().len()
    }

    /// Shutdown: every connection writes what it has queued and closes.
    pub fn close_all(&self) {
        for queue in self.open.borrow().values() {
            queue.close(CloseReason::AfterFlush);
        }
    }

    fn next_conn_id(&self) -> u64 {
        let id = self.next_conn_id.get() + 1;
        self.next_conn_id.set(id);
        id
    }

    /// Handshake filler bytes. The handshake's randomness protects nothing (RTMP has no secret
    /// in it), so a fast xorshift is enough.
    fn random_bytes(&self) -> Vec<u8> {
        let mut state = self.rng.get();
        let mut out = Vec::with_capacity(RANDOM_LEN);
        while out.len() < RANDOM_LEN {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            out.extend_from_slice(&state.to_le_bytes());
        }
        self.rng.set(state);
        out.truncate(RANDOM_LEN);
        out
    }
}

/// This connection's place in `rtmp_relay_connections{state}`: one count in exactly one state
/// while the connection is open. Dropping it takes the count away, so the gauges return to zero
/// however the connection ends.
struct StateGauge {
    counters: Rc<ShardCounters>,
    state: Cell<ConnState>,
}

impl StateGauge {
    fn new(counters: Rc<ShardCounters>) -> Self {
        counters.connections_in(ConnState::Handshake).inc();
        Self { counters, state: Cell::new(ConnState::Handshake) }
    }

    fn set(&self, state: ConnState) {
        let old = self.state.replace(state);
        if old != state {
            self.counters.connections_in(old).dec();
            self.counters.connections_in(state).inc();
        }
    }
}

impl Drop for StateGauge {
    fn drop(&mut self) {
        self.counters.connections_in(self.state.get()).dec();
    }
}

/// Why a connection ended, for the close log line and the counters.
#[derive(Debug)]
enum Ended {
    /// The peer closed.
    PeerClosed,
    /// The socket failed.
    Io(std::io::Error),
    /// A time limit ran out.
    Timeout(Limit),
    /// The peer broke the protocol.
    Protocol(SessionError),
    /// The server closed it (its queue says why).
    Server(CloseReason),
    /// A publish was refused; the reply is sent before closing.
    PublishRefused,
    /// A play was refused by a limit; the reply is sent before closing.
    Refused(Limit),
}

/// Serves one accepted connection until it ends. Never panics on peer input; every error ends
/// this connection only. Everything it logs is inside a `conn` span carrying the shard, the
/// connection id, the peer and, once known, the app and stream key.
pub async fn serve(ctx: Rc<ConnContext>, stream: TcpStream) {
    let conn_id = ctx.next_conn_id();
    let peer = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let span =
        info_span!("conn", shard = ctx.shard_id, id = conn_id, %peer, app = Empty, key = Empty);
    serve_connection(ctx, stream, conn_id, peer).instrument(span).await;
}

async fn serve_connection(ctx: Rc<ConnContext>, stream: TcpStream, conn_id: u64, peer: SocketAddr) {
    ctx.counters.connections_accepted.inc();
    let admitted = if ctx.open_connections() >= ctx.max_connections {
        Err(Refusal::ServerFull)
    } else {
        ctx.ip_table.admit(peer.ip(), &ctx.limits)
    };
    let admission = match admitted {
        Ok(admission) => admission,
        Err(refusal) => {
            ctx.counters.limit_tripped(refusal.limit());
            if let Some(not_logged) = ctx.refusal_log.check(Instant::now()) {
                warn!(
                    limit = refusal.limit().name(),
                    refusals_not_logged = not_logged,
                    "connection refused (further refusals this second not logged)"
                );
            }
            return; // dropping the stream closes it
        }
    };
    if let Err(e) = stream.set_nodelay(true) {
        debug!(error = %e, "could not set TCP_NODELAY");
    }
    ctx.counters.connections_open.inc();
    let state = StateGauge::new(ctx.counters.clone());
    info!("connection opened");

    let socket = Rc::new(Socket::new(stream));
    let queue = Rc::new(OutQueue::new(Instant::now()));
    let writer = {
        let socket = socket.clone();
        let queue = queue.clone();
        glommio::spawn_local(async move {
            let result = socket.drain(&queue).await;
            socket.shutdown();
            result
        })
    };

    ctx.open.borrow_mut().insert(conn_id, queue.clone());
    let epoch_ms = ctx.epoch.elapsed().as_millis() as u32;
    let session = ServerSession::new(ctx.session, epoch_ms, &ctx.random_bytes());
    let mut conn = Connection {
        ctx: ctx.clone(),
        conn_id,
        peer,
        socket,
        queue: queue.clone(),
        session,
        publishing: Vec::new(),
        playing: Vec::new(),
        pending_publish: None,
        pending_play: None,
        admission,
        state,
    };
    let ended = conn.run().await;
    // A refusal or a last reply written just before the end still goes out.
    conn.flush_session(Instant::now());
    conn.cleanup();
    // While its last replies flush it neither publishes nor plays any more.
    conn.sync_state();
    ctx.open.borrow_mut().remove(&conn_id);

    match &ended {
        Ended::PeerClosed => info!("connection closed by peer"),
        Ended::Io(e) => {
            info!(error = %e, "connection closed on socket error")
        }
        Ended::Timeout(limit) => {
            if *limit == Limit::HandshakeTimeoutSecs {
                ctx.counters.handshake_timeouts.inc();
            }
            ctx.counters.limit_tripped(*limit);
            warn!(limit = limit.name(), "closing connection: time limit reached");
        }
        Ended::Protocol(e) => {
            if matches!(e, SessionError::Handshake(_)) {
                ctx.counters.handshake_failures.inc();
            }
            ctx.counters.protocol_error(e.kind());
            if let Some(limit) = limits::tripped_by(e) {
                ctx.counters.limit_tripped(limit);
            }
            warn!(kind = e.kind(), reason = %e, "closing connection: protocol violation");
        }
        Ended::Server(reason) => {
            info!(reason = reason.as_str(), "connection closed by server")
        }
        Ended::PublishRefused => {}
        Ended::Refused(limit) => {
            info!(limit = limit.name(), "connection closed: a limit refused it")
        }
    }
    // Replies already queued (a refusal, a Play.Stop) still go out, within a bound.
    queue.close(CloseReason::AfterFlush);
    let flushed = async {
        let _ = writer.await;
        true
    }
    .or(async {
        glommio::timer::sleep(CLOSE_FLUSH_TIMEOUT).await;
        false
    })
    .await;
    if !flushed {
        queue.close(CloseReason::ConnectionEnded);
    }
    ctx.counters.connections_open.dec();
}

struct Connection {
    ctx: Rc<ConnContext>,
    conn_id: u64,
    peer: SocketAddr,
    socket: Rc<Socket>,
    queue: Rc<OutQueue>,
    session: ServerSession,
    /// (message stream id, where its media goes) for each stream this connection publishes.
    publishing: Vec<(u32, Publishing)>,
    /// (message stream id, stream) this connection plays.
    playing: Vec<(u32, Rc<Stream>)>,
    /// A publish waiting for the owner shard's answer; input processing pauses until it comes.
    pending_publish: Option<PendingPublish>,
    /// A play waiting for this shard's mirror to be fed; input processing pauses until then.
    pending_play: Option<PendingPlay>,
    /// This connection's place in the per-IP counts.
    admission: Admission,
    /// This connection's place in the connections-by-state gauges.
    state: StateGauge,
}

/// Where a publisher's media goes.
enum Publishing {
    /// The stream is owned by this shard.
    Local(Rc<Stream>),
    /// Another shard owns it: each message is encoded here and sent there once.
    Remote { owner: usize, uid: u64, key: StreamKey, skipping: Cell<bool> },
}

struct PendingPublish {
    stream_id: u32,
    key: StreamKey,
    waiter: Rc<PublishWaiter>,
}

/// A play on a shard whose mirror of the stream waits for the owner's first snapshot; see
/// `Registry::join_mirror`.
struct PendingPlay {
    stream_id: u32,
    key: StreamKey,
    waiter: Rc<SnapshotWaiter>,
}

impl Connection {
    async fn run(&mut self) -> Ended {
        let mut input = BytesMut::with_capacity(SMALL_READ);
        // The kernel reads into this zeroed buffer, and what it read is appended to `input`.
        // Reading straight into `input` would mean zeroing 64 KiB of it before every read (the
        // socket read wants initialised memory): a memset per publisher read that cost more than
        // copying the bytes that actually arrive.
        let mut read_buf = vec![0u8; SMALL_READ];
        let limits = self.ctx.limits;
        let handshake_deadline = Instant::now() + limits.handshake;
        let mut connected_at = None;
        loop {
            // Only await points let a scrape in (the shard runs one task at a time), so the
            // state is brought up to date before each.
            self.sync_state();
            if !self.publishing.is_empty() && read_buf.len() < LARGE_READ {
                read_buf = vec![0u8; LARGE_READ];
            }
            // Which limit bounds this read: the handshake, the wait for publish/play, or a
            // publisher's silence. A player may stay silent as long as it likes.
            let deadline = if self.session.app().is_none() {
                Some((handshake_deadline, Limit::HandshakeTimeoutSecs))
            } else if self.publishing.is_empty() && self.playing.is_empty() {
                let since = *connected_at.get_or_insert_with(Instant::now);
                Some((since + limits.idle_before_play, Limit::IdleBeforePlaySecs))
            } else if !self.publishing.is_empty() {
                Some((Instant::now() + limits.publisher_idle, Limit::PublisherIdleSecs))
            } else {
                None
            };
            let read = match deadline {
                Some((deadline, limit)) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    let timeout = async {
                        glommio::timer::sleep(left).await;
                        Err(std::io::Error::new(std::io::ErrorKind::TimedOut, limit.name()))
                    };
                    self.socket.read(&mut read_buf).or(timeout).await
                }
                None => self.socket.read(&mut read_buf).await,
            };
            let n = match read {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return match deadline {
                        Some((_, limit)) => Ended::Timeout(limit),
                        // Not one of ours: the kernel's (a keepalive timeout, say).
                        None => Ended::Io(e),
                    };
                }
                Err(e) => {
                    return match self.queue.close_reason() {
                        Some(reason) => Ended::Server(reason),
                        None => Ended::Io(e),
                    }
                }
            };
            if n == 0 {
                return match self.queue.close_reason() {
                    Some(reason) => Ended::Server(reason),
                    None => Ended::PeerClosed,
                };
            }
            input.extend_from_slice(&read_buf[..n]);
            if let Err(ended) = self.process(&mut input) {
                return ended;
            }
            loop {
                self.sync_state();
                let answered = if let Some(pending) = self.pending_publish.take() {
                    self.finish_remote_publish(pending).await
                } else if let Some(pending) = self.pending_play.take() {
                    self.finish_mirror_play(pending).await
                } else {
                    break;
                };
                if let Err(ended) = answered.and_then(|()| self.process(&mut input)) {
                    return ended;
                }
            }
            if let Some(reason) = self.queue.close_reason() {
                return Ended::Server(reason);
            }
            // A read of a socket that has data never waits, so a publisher sending faster than
            // this shard decodes would keep this loop running, and every other connection, the
            // writers and the housekeeping of the shard waiting, for as long as it likes. Going
            // to the back of the run queue after each read costs a task switch per read; waiting
            // for glommio's preemption (yield_if_needed) would let one publisher hold the shard,
            // and every player on it, for the whole 100 ms time slice.
            futures_lite::future::yield_now().await;
        }
    }

    /// Feeds what was read to the session and answers its events. The session stops at each
    /// publish or play request so the answer goes out before any later message is handled; a
    /// publish that needs the owner shard's answer stops processing until it comes.
    fn process(&mut self, input: &mut BytesMut) -> Result<(), Ended> {
        let now = Instant::now();
        loop {
            if self.pending_publish.is_some() || self.pending_play.is_some() {
                return Ok(());
            }
            let before = input.len();
            self.session.handle_input(input).map_err(Ended::Protocol)?;
            let mut had_events = false;
            while let Some(event) = self.session.poll_event() {
                had_events = true;
                self.flush_session(now);
                self.on_event(event, now)?;
            }
            self.flush_session(now);
            if input.len() == before && !had_events {
                return Ok(());
            }
        }
    }

    /// Where the connection is now: a publisher that also plays counts as publishing.
    fn sync_state(&self) {
        let state = if self.session.app().is_none() {
            ConnState::Handshake
        } else if !self.publishing.is_empty() {
            ConnState::Publishing
        } else if !self.playing.is_empty() {
            ConnState::Playing
        } else {
            ConnState::Connected
        };
        self.state.set(state);
    }

    fn flush_session(&mut self, now: Instant) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.queue.push_bytes(bytes, now);
        }
    }

    fn key(&self, name: &str) -> StreamKey {
        StreamKey::new(self.session.app().unwrap_or_default(), name)
    }

    fn on_event(&mut self, event: ServerEvent, now: Instant) -> Result<(), Ended> {
        match event {
            ServerEvent::Connected(params) => {
                self.check_name_length(params.app.len())?;
                Span::current().record("app", params.app.as_str());
                self.admission.handshake_done();
                debug!(app = %params.app,
                    flash_ver = params.flash_ver.as_deref().unwrap_or(""), "connected");
            }
            ServerEvent::PublishRequested { stream_id, name, .. } => {
                if let Err(refused) = self.check_name_length(name.key.len()) {
                    self.ctx.counters.publishes_rejected.inc();
                    self.session.reject_publish(
                        stream_id,
                        code::PUBLISH_BAD_NAME,
                        "stream key too long",
                    );
                    return Err(refused);
                }
                Span::current().record("key", name.key.as_str());
                let key = self.key(&name.key);
                if let Some(other) = self.publishing_id_of(&key) {
                    // This connection publishes the key already, on another stream id: a retry
                    // on the wrong id, not a rival publisher. Refusing it the way a rival is
                    // refused would close the connection and end the publish that works.
                    let reason = "this connection publishes the key already";
                    let description = format!("{key} is already published on stream {other}");
                    self.session.reject_publish(stream_id, code::PUBLISH_BAD_NAME, &description);
                    self.command_refused(stream_id, "publish", reason);
                    return Ok(());
                }
                let publisher = PublisherInfo { conn_id: self.conn_id, peer: self.peer };
                if !self.ctx.registry.owns(&key) {
                    let waiter = self.ctx.registry.request_publish(key.clone(), publisher);
                    self.pending_publish = Some(PendingPublish { stream_id, key, waiter });
                    return Ok(());
                }
                let result = self.ctx.registry.publish(key.clone(), publisher, now);
                let target = result.map(Publishing::Local);
                self.answer_publish(stream_id, key, target)?;
            }
            ServerEvent::PlayRequested { stream_id, name } => {
                if let Err(refused) = self.check_name_length(name.key.len()) {
                    self.session.reject_play(stream_id, code::PLAY_FAILED, "stream key too long");
                    return Err(refused);
                }
                Span::current().record("key", name.key.as_str());
                if self.ctx.debug_panic_key.as_deref() == Some(name.key.as_str()) {
                    panic!("--debug-panic-on-key: a play of {:?} panics on purpose", name.key);
                }
                let key = self.key(&name.key);
                if let Err(limit) = self.ctx.registry.check_play(&key) {
                    warn!(stream = %key, limit = limit.name(), "play refused");
                    self.session.reject_play(
                        stream_id,
                        code::PLAY_FAILED,
                        &format!("limit {limit} reached"),
                    );
                    return Err(Ended::Refused(limit));
                }
                match self.ctx.registry.join_mirror(&key, now).map_err(Ended::Refused)? {
                    Some(waiter) => {
                        self.pending_play = Some(PendingPlay { stream_id, key, waiter })
                    }
                    None => self.start_play(stream_id, key, now)?,
                }
            }
            ServerEvent::Media(media) => {
                match self.publishing.iter().find(|(id, _)| *id == media.stream_id) {
                    Some((_, Publishing::Local(stream))) => {
                        stream.relay(media, now, self.ctx.registry.settings(), &self.ctx.counters)
                    }
                    Some((_, Publishing::Remote { owner, uid, skipping, .. })) => {
                        self.ctx.counters.messages_in.inc();
                        self.ctx.counters.bytes_in.add(media.payload.len() as u64);
                        self.ctx.registry.forward_published(
                            *owner,
                            *uid,
                            self.conn_id,
                            media,
                            skipping,
                        )
                    }
                    None => {}
                }
            }
            ServerEvent::StreamClosed { stream_id } => self.close_stream(stream_id, now),
            ServerEvent::Paused { stream_id, paused } => {
                if let Some((_, stream)) = self.playing.iter().find(|(id, _)| *id == stream_id) {
                    stream.set_paused(self.conn_id, stream_id, paused);
                }
            }
            // Flow control is the kernel's send buffer and the slow-subscriber policy; the
            // player's acknowledgements say how much of what was written it has really received.
            ServerEvent::Acknowledged { sequence_number } => {
                self.queue.acknowledge(sequence_number)
            }
            // The session has answered it with an error; the connection goes on.
            ServerEvent::CommandRefused { stream_id, command, reason } => {
                self.command_refused(stream_id, command, reason)
            }
        }
        Ok(())
    }

    /// Counts and logs a command out of place that was answered with an error. Debug level: a
    /// client can send these as often as it likes, and it was told why.
    fn command_refused(&self, stream_id: u32, command: &'static str, reason: &'static str) {
        self.ctx.counters.commands_refused.inc();
        debug!(stream_id, command, reason, "command out of place refused");
    }

    /// The message stream id on which this connection publishes `key`, if it does.
    fn publishing_id_of(&self, key: &StreamKey) -> Option<u32> {
        self.publishing.iter().find_map(|(id, publishing)| {
            let published = match publishing {
                Publishing::Local(stream) => &stream.key,
                Publishing::Remote { key, .. } => key,
            };
            (published == key).then_some(*id)
        })
    }

    fn close_stream(&mut self, stream_id: u32, now: Instant) {
        if let Some(i) = self.publishing.iter().position(|(id, _)| *id == stream_id) {
            let (_, publishing) = self.publishing.swap_remove(i);
            self.stop_publishing(publishing, "publish stopped", now);
        }
        if let Some(i) = self.playing.iter().position(|(id, _)| *id == stream_id) {
            let (_, stream) = self.playing.swap_remove(i);
            info!(stream = %stream.key, "play stopped");
            self.ctx.registry.leave(&stream, self.conn_id, stream_id);
        }
    }

    /// Refuses an app or stream key longer than `--max-stream-name-bytes`, before it reaches a
    /// log line, a span or the registry (the name itself is not echoed).
    fn check_name_length(&self, len: usize) -> Result<(), Ended> {
        if len <= self.ctx.limits.max_name_bytes {
            return Ok(());
        }
        const LIMIT: Limit = Limit::MaxStreamNameBytes;
        self.ctx.counters.limit_tripped(LIMIT);
        warn!(len, limit = LIMIT.name(), "name too long: closing the connection");
        Err(Ended::Refused(LIMIT))
    }

    /// Answers a play and joins the stream: the play replies, then the late-join cache, then
    /// live frames. `check_play` has passed on this same thread, so the join cannot be refused
    /// (a mirror that went away meanwhile is created anew).
    fn start_play(&mut self, stream_id: u32, key: StreamKey, now: Instant) -> Result<(), Ended> {
        self.session.accept_play(stream_id, &key.name);
        // The play replies must be queued before the cached frames.
        self.flush_session(now);
        if self.playing.is_empty() && self.ctx.limits.player_send_buffer > 0 {
            // A small kernel buffer keeps a slow player's backlog in our queue, where the
            // slow-subscriber policy can see it.
            if let Err(e) = self.socket.set_send_buffer(self.ctx.limits.player_send_buffer) {
                debug!(error = %e, "could not set the player's send buffer");
            }
        }
        let subscriber =
            Rc::new(Subscriber::new(self.conn_id, self.peer, stream_id, self.queue.clone()));
        let stream =
            self.ctx.registry.play(key.clone(), subscriber, now).map_err(Ended::Refused)?;
        info!(stream = %key, live = stream.publisher().is_some(), "play started");
        self.playing.push((stream_id, stream));
        Ok(())
    }

    /// Waits until this shard's mirror has the owner's snapshot, then answers the play.
    async fn finish_mirror_play(&mut self, pending: PendingPlay) -> Result<(), Ended> {
        let fed = async {
            pending.waiter.wait().await;
            true
        }
        .or(async {
            glommio::timer::sleep(OWNER_REPLY_TIMEOUT).await;
            false
        })
        .await;
        if !fed {
            self.ctx.registry.leave_mirror_wait(&pending.key, &pending.waiter);
            warn!(stream = %pending.key, "owner shard did not answer a play in time");
            return Err(Ended::Server(CloseReason::AfterFlush));
        }
        self.start_play(pending.stream_id, pending.key, Instant::now())?;
        self.flush_session(Instant::now());
        Ok(())
    }

    /// Waits for the owner shard's answer to a publish, then answers the client.
    async fn finish_remote_publish(&mut self, pending: PendingPublish) -> Result<(), Ended> {
        let answer = async { Some(pending.waiter.wait().await) }
            .or(async {
                glommio::timer::sleep(OWNER_REPLY_TIMEOUT).await;
                None
            })
            .await;
        let Some(result) = answer else {
            self.ctx.registry.forget_publish_request(self.conn_id);
            warn!(stream = %pending.key,
                "owner shard did not answer a publish in time");
            return Err(Ended::Server(CloseReason::AfterFlush));
        };
        let owner = self.ctx.registry.owner_of(&pending.key);
        let key = pending.key.clone();
        let target = result.map(|uid| Publishing::Remote {
            owner,
            uid,
            key: pending.key,
            skipping: Cell::new(false),
        });
        self.answer_publish(pending.stream_id, key, target)?;
        self.flush_session(Instant::now());
        Ok(())
    }

    /// Tells the client the owner's decision on its publish.
    fn answer_publish(
        &mut self,
        stream_id: u32,
        key: StreamKey,
        target: Result<Publishing, PublishRefused>,
    ) -> Result<(), Ended> {
        match target {
            Ok(target) => {
                self.session.accept_publish(stream_id, &key.name);
                info!(stream = %key,
                    owner = self.ctx.registry.owner_of(&key), "publish started");
                self.publishing.push((stream_id, target));
                Ok(())
            }
            Err(refused) => {
                self.ctx.counters.publishes_rejected.inc();
                warn!(stream = %key,
                    reason = %refused, "publish refused");
                // Not `refused` itself: that names the other publisher's address.
                let description = match refused {
                    PublishRefused::AlreadyPublishing { .. } => {
                        format!("{key} is already being published")
                    }
                    PublishRefused::Limit(limit) => format!("limit {limit} reached"),
                };
                self.session.reject_publish(stream_id, code::PUBLISH_BAD_NAME, &description);
                Err(Ended::PublishRefused)
            }
        }
    }

    fn stop_publishing(&self, publishing: Publishing, why: &str, now: Instant) {
        match publishing {
            Publishing::Local(stream) => {
                info!(stream = %stream.key, "{why}");
                self.ctx.registry.unpublish(&stream, self.conn_id, now);
            }
            Publishing::Remote { owner, uid, key, .. } => {
                info!(stream = %key, "{why}");
                self.ctx.registry.unpublish_remote(owner, uid, self.conn_id);
            }
        }
    }

    /// Releases everything this connection holds in the registry.
    fn cleanup(&mut self) {
        let now = Instant::now();
        if let Some(pending) = self.pending_publish.take() {
            self.ctx.registry.forget_publish_request(self.conn_id);
            drop(pending);
        }
        if let Some(pending) = self.pending_play.take() {
            self.ctx.registry.leave_mirror_wait(&pending.key, &pending.waiter);
        }
        for (_, publishing) in std::mem::take(&mut self.publishing) {
            self.stop_publishing(publishing, "publisher disconnected", now);
        }
        for (stream_id, stream) in std::mem::take(&mut self.playing) {
            debug!(stream = %stream.key, "player disconnected");
            self.ctx.registry.leave(&stream, self.conn_id, stream_id);
        }
    }
}
