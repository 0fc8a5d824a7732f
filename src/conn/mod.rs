//! One RTMP connection: the driver between a socket and a [`ServerSession`], and between the
//! session's requests and the shard's [`Registry`].
//!
//! # Lifecycle
//! Each accepted socket gets two tasks on its shard:
//! - the **reader** ([`serve`]): reads, feeds the session, answers its events (publish, play,
//!   media, close) and hands media to the stream's [`Publication`];
//! - the **writer**: drains the connection's [`OutQueue`] (the session's own replies and, for a
//!   player, the shared frames of the stream) with vectored writes.
//!
//! The reader ends on end of stream, a socket error, a protocol violation or a timeout; the
//! writer ends when the queue is closed (slow subscriber, server-side close) or on a write error,
//! and shuts the socket down so the reader wakes too. Cleanup runs once, in the reader: every
//! stream the connection published is unpublished and every play is left, so nothing it touched
//! outlives it.
//!
//! # Files
//! - `admission.rs`: who gets in: the connection and per-address limits.
//! - `driver.rs`: one connection's life: admission, the read loop, close logging.
//! - `requests.rs`: what the session asks: publish, play, media, pause, close, the access
//!   decision on each publish and play, and the waits for another shard's or the callback's
//!   answer.
//! - `socket.rs`: reads, vectored writes, TLS (RTMPS) between the socket and the session, and
//!   whether the peer is still there.
//!
//! [`Publication`]: crate::stream::Publication

mod admission;
mod driver;
mod requests;
mod socket;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use glommio::net::TcpStream;
use rtmp_proto::handshake::RANDOM_LEN;
use rtmp_proto::session::SessionConfig;
use tracing::field::Empty;
use tracing::{info_span, Instrument};

pub use admission::{Admission, ConnLimits, IpTable, Refusal};
pub use socket::{Socket, TlsFailure};

use crate::auth::ShardAuth;
use crate::metrics::{ShardCounters, TlsCounters};
use crate::stream::{CloseReason, OutQueue, Registry};
use crate::telemetry::LogLimiter;

/// What a shard gives every connection it accepts.
#[derive(Debug)]
pub struct ConnContext {
    pub shard_id: usize,
    pub registry: Registry,
    pub counters: Rc<ShardCounters>,
    /// The RTMPS listener's handshakes on this shard.
    pub tls_counters: Rc<TlsCounters>,
    pub session: SessionConfig,
    pub limits: ConnLimits,
    /// Open connections this shard admits (its share of `--max-connections`).
    pub max_connections: usize,
    /// Per-IP counts of this shard's connections.
    ip_table: Rc<IpTable>,
    /// Access control: who may publish and play (open unless configured).
    pub auth: ShardAuth,
    /// Per connection: what access control needs to know beyond the session (the tcUrl, the
    /// sessions it admitted, for done events and lifetimes). Removed at cleanup.
    auth_state: RefCell<HashMap<u64, requests::ConnAuth>>,
    /// Testing aid (`--debug-panic-on-key`): playing this key panics the connection's task.
    pub debug_panic_key: Option<String>,
    /// Testing aid (`--debug-stall-on-key`): playing this key blocks the shard's thread this
    /// long, so a test can see the watchdog notice a shard that does not answer.
    pub debug_stall: Option<(String, Duration)>,
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
            tls_counters: Rc::default(),
            session,
            limits,
            max_connections,
            ip_table: Rc::default(),
            auth: ShardAuth::open(),
            auth_state: RefCell::default(),
            debug_panic_key: None,
            debug_stall: None,
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
        let out = handshake_random(&mut state);
        self.rng.set(state);
        out
    }
}

/// Serves one accepted connection until it ends. Never panics on peer input; every error ends
/// this connection only. Everything it logs is inside a `conn` span carrying the shard, the
/// connection id, the peer and, once known, the app and stream key.
pub async fn serve(ctx: Rc<ConnContext>, stream: TcpStream) {
    serve_over(ctx, stream, None).await
}

/// [`serve`] for a connection of an RTMPS listener: TLS with `config`, then the same RTMP
/// connection, limits and timeouts (the TLS handshake counts against the handshake timeout and
/// the per-address handshaking limit).
pub async fn serve_tls(
    ctx: Rc<ConnContext>,
    stream: TcpStream,
    config: std::sync::Arc<rustls::ServerConfig>,
) {
    serve_over(ctx, stream, Some(config)).await
}

async fn serve_over(
    ctx: Rc<ConnContext>,
    stream: TcpStream,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) {
    let conn_id = ctx.next_conn_id();
    let peer = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let span = info_span!("conn", shard = ctx.shard_id, id = conn_id, %peer, tls = tls.is_some(),
        app = Empty, key = Empty);
    driver::serve_connection(ctx, stream, conn_id, peer, tls).instrument(span).await;
}

/// `future`'s output, unless `limit` passes first. Every wait of a connection is bounded, and
/// this is the one way it is bounded.
pub async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    async { Some(future.await) }
        .or(async {
            glommio::timer::sleep(limit).await;
            None
        })
        .await
}

/// xorshift64: jitter and handshake filler, not secrets.
pub fn xorshift(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// The random part of an RTMP handshake (server or client side). The handshake's randomness
/// protects nothing (RTMP has no secret in it), so a fast xorshift is enough.
pub fn handshake_random(state: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(RANDOM_LEN + 8);
    while out.len() < RANDOM_LEN {
        out.extend_from_slice(&xorshift(state).to_le_bytes());
    }
    out.truncate(RANDOM_LEN);
    out
}
