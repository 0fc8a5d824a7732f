//! One connection's life: admitted or refused, its two tasks (reader and writer), the read loop
//! that waits for input no longer than the session's next deadline, and the one log line that
//! says how it ended.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use glommio::net::TcpStream;
use rtmp_proto::session::{ServerSession, SessionError, TimeLimit};
use tracing::{debug, info, warn};

use super::requests::{PendingPlay, PendingPublish};
use super::{admission, within, Admission, ConnContext, Refusal, Socket};
use crate::metrics::{ConnState, Limit, ShardCounters};
use crate::stream::{CloseReason, OutQueue, Publication, Stream, StreamKey};

/// Bytes asked of the kernel per read while playing or idle: players send little.
const SMALL_READ: usize = 4 * 1024;
/// Bytes asked per read once publishing: a video keyframe arrives in few reads.
const LARGE_READ: usize = 64 * 1024;
/// How long a closing connection may take to flush its last replies (a refused publisher's
/// BadName, a Play.Stop) before it is dropped anyway.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

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
pub(super) enum Ended {
    /// The peer closed.
    PeerClosed,
    /// The socket failed.
    Io(std::io::Error),
    /// A time limit of the session ran out.
    Timeout(TimeLimit),
    /// The peer broke the protocol.
    Protocol(SessionError),
    /// The server closed it (its queue says why).
    Server(CloseReason),
    /// A publish was refused; the reply is sent before closing.
    PublishRefused,
    /// A play was refused by a limit; the reply is sent before closing.
    Refused(Limit),
}

impl Ended {
    /// Why the session ended the connection: a time limit, or the peer broke the protocol.
    fn of(error: SessionError) -> Self {
        match error {
            SessionError::Timeout(limit) => Ended::Timeout(limit),
            e => Ended::Protocol(e),
        }
    }
}

pub(super) async fn serve_connection(
    ctx: Rc<ConnContext>,
    stream: TcpStream,
    conn_id: u64,
    peer: SocketAddr,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) {
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
    let socket = match tls {
        None => Socket::new(stream),
        Some(config) => match Socket::tls_server(stream, config, ctx.tls_counters.clone()) {
            Ok(socket) => socket,
            Err(e) => {
                warn!(error = %e, "cannot start TLS on the connection");
                return;
            }
        },
    };
    ctx.counters.connections_open.inc();
    let state = StateGauge::new(ctx.counters.clone());
    info!("connection opened");

    let socket = Rc::new(socket);
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
    let session = ServerSession::new(ctx.session, epoch_ms, &ctx.random_bytes(), Instant::now());
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
            let limit = admission::time_limit(*limit);
            if limit == Limit::HandshakeTimeoutSecs {
                ctx.counters.handshake_timeouts.inc();
            }
            ctx.counters.limit_tripped(limit);
            warn!(limit = limit.name(), "closing connection: time limit reached");
        }
        Ended::Protocol(e) => {
            if matches!(e, SessionError::Handshake(_)) {
                ctx.counters.handshake_failures.inc();
            }
            ctx.counters.protocol_error(e.kind());
            if let Some(limit) = admission::tripped_by(e) {
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
    if within(CLOSE_FLUSH_TIMEOUT, writer).await.is_none() {
        queue.close(CloseReason::ConnectionEnded);
    }
    ctx.counters.connections_open.dec();
}

pub(super) struct Connection {
    pub(super) ctx: Rc<ConnContext>,
    pub(super) conn_id: u64,
    pub(super) peer: SocketAddr,
    pub(super) socket: Rc<Socket>,
    pub(super) queue: Rc<OutQueue>,
    pub(super) session: ServerSession,
    /// (message stream id, its publication) for each stream this connection publishes.
    pub(super) publishing: Vec<(u32, Publication)>,
    /// (message stream id, stream) this connection plays.
    pub(super) playing: Vec<(u32, Rc<Stream>)>,
    /// A publish waiting for the owner's answer (from another shard, or once the shard of the
    /// key's current holder said whether it is still there); input processing pauses until then.
    pub(super) pending_publish: Option<PendingPublish>,
    /// A play waiting for this shard's mirror to be fed; input processing pauses until then.
    pub(super) pending_play: Option<PendingPlay>,
    /// This connection's place in the per-IP counts.
    pub(super) admission: Admission,
    /// This connection's place in the connections-by-state gauges.
    state: StateGauge,
}

impl Connection {
    async fn run(&mut self) -> Ended {
        let mut input = BytesMut::with_capacity(SMALL_READ);
        // The kernel reads into this zeroed buffer, and what it read is appended to `input`.
        // Reading straight into `input` would mean zeroing 64 KiB of it before every read (the
        // socket read wants initialised memory): a memset per publisher read that cost more than
        // copying the bytes that actually arrive.
        let mut read_buf = vec![0u8; SMALL_READ];
        loop {
            // Only await points let a scrape in (the shard runs one task at a time), so the
            // state is brought up to date before each.
            self.sync_state();
            if !self.publishing.is_empty() && read_buf.len() < LARGE_READ {
                read_buf = vec![0u8; LARGE_READ];
            }
            // The session says how long this read may wait: the handshake, the wait for
            // publish/play, a publisher's silence, or (a player) as long as it likes.
            let read = match self.session.poll_timeout() {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match within(left, self.socket.read(&mut read_buf)).await {
                        Some(read) => read,
                        None => match self.session.handle_timeout(Instant::now()) {
                            Err(e) => return Ended::of(e),
                            // The timer woke before the deadline: wait the rest.
                            Ok(()) => continue,
                        },
                    }
                }
                None => self.socket.read(&mut read_buf).await,
            };
            let n = match read {
                Ok(n) => n,
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
                    self.finish_publish(pending).await
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
    pub(super) fn process(&mut self, input: &mut BytesMut) -> Result<(), Ended> {
        let now = Instant::now();
        loop {
            if self.pending_publish.is_some() || self.pending_play.is_some() {
                return Ok(());
            }
            let before = input.len();
            self.session.handle_input(input, now).map_err(Ended::of)?;
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
    pub(super) fn sync_state(&self) {
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

    pub(super) fn flush_session(&mut self, now: Instant) {
        while let Some(bytes) = self.session.poll_transmit() {
            self.queue.push_bytes(bytes, now);
        }
    }

    pub(super) fn key(&self, name: &str) -> StreamKey {
        StreamKey::new(self.session.app().unwrap_or_default(), name)
    }
}
