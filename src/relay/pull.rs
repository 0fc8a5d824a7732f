//! Static pulls: a named local stream fed from an `rtmp://` or `rtmps://` URL.
//!
//! A pull is a **source** of its stream (design.md), the third kind beside a publisher on the
//! owner shard and one on another shard. It runs on the stream's owner shard only, so there is
//! one upstream session per stream per node whatever the number of players and shards. It plays
//! the upstream with rtmp-proto's [`ClientSession`] and hands every message it receives to a
//! [`Publication`] got from [`Registry::publish_source`]: the same publish path as a local
//! publisher's, so codec detection, the late-join cache, recording, push relays, metrics and
//! the mirrors on other shards work unchanged.
//!
//! Life of a pull:
//! - `always`: started with the shard, never stopped. `on-demand`: started by the first player
//!   of its stream (on any shard: a mirror's subscription reaches the owner), stopped once
//!   nobody has watched for the linger time (a viewer who comes back soon finds it warm).
//! - The local publish starts with the first message from upstream and ends when upstream
//!   says `NetStream.Play.UnpublishNotify` or the session fails: players stay attached, see
//!   the unpublish, and on the next publish get fresh headers and resume at a keyframe.
//! - After a failure (refused, reset, a `StreamNotFound` answer, garbage, silence longer than
//!   `--publisher-idle-secs`), an exponential backoff with jitter, then a new attempt.
//! - Attempts are bounded per shard: so many started per second, so many connecting at once
//!   (`--pull-attempts-per-sec`, `--pull-attempts-in-flight`); an attempt over either waits
//!   (counted as the limit's trip).
//! - A configured pull owns its key: a connection's publish of it is refused with
//!   `NetStream.Publish.BadName` ([`PublishHook::claims`]).

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::FutureExt;
use rtmp_proto::command::code;
use rtmp_proto::session::{ClientEvent, ClientSession, SessionConfig};
use tracing::{debug, info, warn, Instrument};

use super::outbound::{backoff, decode, flush, handshake_random, open, within};
use super::{Destination, Target};
use crate::conn::{ConnContext, Socket};
use crate::metrics::{Limit, PullState, PullStats};
use crate::stream::{
    CloseReason, OutQueue, Publication, PublishHook, PublisherInfo, Stream, StreamKey,
};

/// Bytes asked of the kernel per read.
const READ_SIZE: usize = 16 * 1024;
/// What we may have queued towards the upstream (commands, acknowledgements, ping answers)
/// before it is taken as not reading: an upstream that pings and never reads is cut here.
const MAX_QUEUED_TO_UPSTREAM: usize = 256 * 1024;
/// How often an on-demand pull looks whether anyone still watches.
const AUDIENCE_CHECK: Duration = Duration::from_millis(250);

/// When a pull runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullMode {
    /// From start-up, always.
    Always,
    /// While the stream has players, and the linger time after the last one left.
    OnDemand,
}

impl PullMode {
    pub fn parse(text: &str) -> Result<PullMode, String> {
        match text {
            "always" => Ok(PullMode::Always),
            "on-demand" | "on_demand" => Ok(PullMode::OnDemand),
            other => Err(format!("mode {other:?}: \"always\" or \"on-demand\"")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PullMode::Always => "always",
            PullMode::OnDemand => "on-demand",
        }
    }
}

/// One configured pull.
#[derive(Debug, Clone)]
pub struct PullSpec {
    /// The local stream it feeds.
    pub key: StreamKey,
    /// The upstream (`{app}` and `{name}` are replaced by the local stream's).
    pub source: Destination,
    pub mode: PullMode,
    /// TLS client configuration for an `rtmps://` upstream.
    pub tls: Option<Arc<rustls::ClientConfig>>,
}

/// The pull knobs, as every shard applies them.
#[derive(Debug, Clone)]
pub struct PullSettings {
    pub pulls: Vec<PullSpec>,
    /// First wait after a failure; doubles with each failure in a row, up to `backoff_max`.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Time to connect, handshake (TCP, TLS, RTMP) and get `NetStream.Play.Start`.
    pub connect_timeout: Duration,
    /// How long an on-demand pull runs on after its last player left.
    pub linger: Duration,
    /// Attempts started per second on the whole server (each shard its share).
    pub attempts_per_sec: u32,
    /// Attempts connecting at once on the whole server (each shard its share).
    pub attempts_in_flight: usize,
    /// The outbound sessions' protocol limits (what the upstream may send us) and the
    /// silence after which an upstream is given up (`publisher_idle`: a pull is a publisher).
    pub session: SessionConfig,
}

impl Default for PullSettings {
    fn default() -> Self {
        Self {
            pulls: Vec::new(),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            linger: Duration::from_secs(10),
            attempts_per_sec: 20,
            attempts_in_flight: 16,
            session: SessionConfig::default(),
        }
    }
}

/// A pull as the hook and the stats see it; its task updates it.
#[derive(Debug)]
struct PullHandle {
    id: u64,
    key: StreamKey,
    target: Target,
    mode: PullMode,
    tls: Option<Arc<rustls::ClientConfig>>,
    /// A task runs this pull.
    running: Cell<bool>,
    state: Cell<PullState>,
    bytes_in: Cell<u64>,
    connects: Cell<u64>,
    failures: Cell<u64>,
    last_success: Cell<Option<Instant>>,
    /// When the current attempt reached playing.
    live_since: Cell<Option<Instant>>,
    last_error: RefCell<Option<String>>,
}

impl PullHandle {
    fn stats(&self, now: Instant) -> PullStats {
        PullStats {
            app: self.key.app.clone(),
            name: self.key.name.clone(),
            source: self.target.masked.clone(),
            mode: self.mode.as_str(),
            state: self.state.get(),
            bytes_in: self.bytes_in.get(),
            connects: self.connects.get(),
            failures: self.failures.get(),
            since_last_success_secs: self.last_success.get().map(|t| (now - t).as_secs_f64()),
            last_error: self.last_error.borrow().clone(),
        }
    }
}

/// The shard's share of the attempt limits.
#[derive(Debug)]
struct AttemptBudget {
    per_sec: u32,
    in_flight_max: usize,
    window: Cell<Instant>,
    used: Cell<u32>,
    in_flight: Rc<Cell<usize>>,
}

/// One attempt counted as connecting; dropping it frees its place.
struct InFlight(Rc<Cell<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl AttemptBudget {
    fn take(&self, now: Instant) -> Result<InFlight, Limit> {
        if self.in_flight.get() >= self.in_flight_max {
            return Err(Limit::PullAttemptsInFlight);
        }
        if now.duration_since(self.window.get()) >= Duration::from_secs(1) {
            self.window.set(now);
            self.used.set(0);
        }
        if self.used.get() >= self.per_sec {
            return Err(Limit::PullAttemptsPerSec);
        }
        self.used.set(self.used.get() + 1);
        self.in_flight.set(self.in_flight.get() + 1);
        Ok(InFlight(self.in_flight.clone()))
    }
}

/// One shard's pulls: those of the streams it owns.
#[derive(Debug)]
pub struct PullRelays {
    settings: Rc<PullSettings>,
    /// Every configured key (a connection publishes none of them, on any shard).
    claimed: Vec<StreamKey>,
    /// The pulls of keys this shard owns.
    pulls: Vec<Rc<PullHandle>>,
    budget: AttemptBudget,
    ctx: Weak<ConnContext>,
    shard_id: usize,
    rng: Cell<u64>,
}

impl PullRelays {
    /// The pulls of the keys `ctx`'s shard owns, among `settings.pulls`; `shards` is the
    /// shard count (the attempt limits are shared out).
    pub fn new(settings: PullSettings, ctx: &Rc<ConnContext>, shards: usize) -> Self {
        let shard_id = ctx.shard_id;
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x2545_f491, |d| d.as_nanos() as u64);
        let shards = shards.max(1);
        let claimed = settings.pulls.iter().map(|p| p.key.clone()).collect();
        let pulls = settings
            .pulls
            .iter()
            .filter(|spec| ctx.registry.owns(&spec.key))
            .enumerate()
            .map(|(i, spec)| {
                Rc::new(PullHandle {
                    // The shard in the top bits (like connection ids), bit 46 set so they
                    // never equal a connection's or a push's.
                    id: ((shard_id as u64) << 48) | (1 << 46) | i as u64,
                    key: spec.key.clone(),
                    target: spec.source.target_for(&spec.key),
                    mode: spec.mode,
                    tls: spec.tls.clone(),
                    running: Cell::new(false),
                    state: Cell::new(PullState::Idle),
                    bytes_in: Cell::new(0),
                    connects: Cell::new(0),
                    failures: Cell::new(0),
                    last_success: Cell::new(None),
                    live_since: Cell::new(None),
                    last_error: RefCell::new(None),
                })
            })
            .collect();
        let budget = AttemptBudget {
            per_sec: settings.attempts_per_sec.div_ceil(shards as u32).max(1),
            in_flight_max: settings.attempts_in_flight.div_ceil(shards).max(1),
            window: Cell::new(Instant::now()),
            used: Cell::new(0),
            in_flight: Rc::new(Cell::new(0)),
        };
        Self {
            settings: Rc::new(settings),
            claimed,
            pulls,
            budget,
            ctx: Rc::downgrade(ctx),
            shard_id,
            rng: Cell::new(seed ^ (shard_id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        }
    }

    /// Whether any pull is configured.
    pub fn is_empty(&self) -> bool {
        self.claimed.is_empty()
    }

    /// Starts the always-on pulls of this shard.
    pub fn start(self: &Rc<Self>) {
        for pull in self.pulls.iter().filter(|p| p.mode == PullMode::Always) {
            self.spawn(pull);
        }
    }

    /// Every pull of this shard, for the stats.
    pub fn stats(&self, now: Instant) -> Vec<PullStats> {
        self.pulls.iter().map(|p| p.stats(now)).collect()
    }

    fn spawn(self: &Rc<Self>, pull: &Rc<PullHandle>) {
        let Some(ctx) = self.ctx.upgrade() else { return };
        if pull.running.replace(true) {
            return;
        }
        let mut seed = self.rng.get();
        let seed = super::outbound::xorshift(&mut seed);
        self.rng.set(seed);
        info!(stream = %pull.key, source = %pull.target.masked, mode = pull.mode.as_str(),
            "pull starting");
        let span = tracing::info_span!("pull", shard = self.shard_id, stream = %pull.key,
            source = %pull.target.masked);
        let task = run(pull.clone(), self.clone(), ctx, seed);
        glommio::spawn_local(task.instrument(span)).detach();
    }
}

impl PublishHook for Rc<PullRelays> {
    fn published(&self, _stream: &Rc<Stream>, _now: Instant) {}

    fn unpublished(&self, _stream: &Rc<Stream>, _now: Instant) {}

    fn wanted(&self, stream: &Rc<Stream>, _now: Instant) {
        let wanted = self.pulls.iter().find(|p| p.key == stream.key && !p.running.get());
        if let Some(pull) = wanted.cloned() {
            self.spawn(&pull);
        }
    }

    fn claims(&self, key: &StreamKey) -> bool {
        self.claimed.iter().any(|k| k == key)
    }
}

/// Why an attempt ended.
enum Ended {
    /// Nobody watched an on-demand pull for the linger time: it stops.
    Unwanted,
    /// Anything else: back off and try again.
    Failed(String),
}

/// Runs a pull: for ever (`always`), or until nobody watches (`on-demand`).
async fn run(pull: Rc<PullHandle>, relays: Rc<PullRelays>, ctx: Rc<ConnContext>, mut seed: u64) {
    let settings = relays.settings.clone();
    let mut failures_in_a_row = 0u32;
    let mut last_audience = Instant::now();
    loop {
        pull.state.set(PullState::Connecting);
        let watch = unwatched(&pull, &ctx, settings.linger, &mut last_audience);
        let ended = async { Ended::Failed(attempt(&pull, &relays, &ctx, &mut seed).await) }
            .or(async {
                watch.await;
                Ended::Unwanted
            })
            .await;
        let reason = match ended {
            Ended::Unwanted => break,
            Ended::Failed(reason) => reason,
        };
        pull.failures.set(pull.failures.get() + 1);
        // Only a session that stayed live longer than the longest backoff starts the backoff
        // over: an upstream that answers play and then fails at once (garbage, a reset) is
        // retried ever more slowly, like one that refuses.
        let live_for = pull.live_since.take().map(|t| t.elapsed());
        if live_for.is_some_and(|d| d >= settings.backoff_max) {
            failures_in_a_row = 0;
        }
        failures_in_a_row = failures_in_a_row.saturating_add(1);
        let delay =
            backoff(settings.backoff_min, settings.backoff_max, failures_in_a_row, &mut seed);
        warn!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "pull failed");
        *pull.last_error.borrow_mut() = Some(reason);
        pull.state.set(PullState::Backoff);
        let watch = unwatched(&pull, &ctx, settings.linger, &mut last_audience);
        let unwanted = async {
            glommio::timer::sleep(delay).await;
            false
        }
        .or(async {
            watch.await;
            true
        })
        .await;
        if unwanted {
            break;
        }
    }
    info!("pull stopped: nobody watched for {:?}", settings.linger);
    pull.state.set(PullState::Idle);
    pull.running.set(false);
    // A player that came in the very last instant finds the pull stopped: start again.
    if ctx.registry.get(&pull.key).is_some_and(|s| s.has_audience()) {
        relays.spawn(&pull);
    }
}

/// For an on-demand pull: resolves once nobody has watched its stream for `linger`
/// (`last_audience` remembers the last time someone did, across attempts). Never resolves for
/// an always-on pull.
async fn unwatched(
    pull: &PullHandle,
    ctx: &ConnContext,
    linger: Duration,
    last_audience: &mut Instant,
) {
    if pull.mode == PullMode::Always {
        std::future::pending::<()>().await;
    }
    loop {
        let now = Instant::now();
        if ctx.registry.get(&pull.key).is_some_and(|s| s.has_audience()) {
            *last_audience = now;
        } else if now.duration_since(*last_audience) >= linger {
            return;
        }
        glommio::timer::sleep(AUDIENCE_CHECK.min(linger.max(Duration::from_millis(10)))).await;
    }
}

/// The pull's publish of its local stream, while upstream sends: ended (players told) when
/// dropped, whatever ends the attempt.
struct Feed<'a> {
    ctx: &'a ConnContext,
    pull: &'a PullHandle,
    peer: SocketAddr,
    publication: Option<Publication>,
}

impl Feed<'_> {
    /// Relays one upstream message into the local stream, publishing it first if needed.
    fn relay(&mut self, media: rtmp_proto::session::Media) -> Result<(), String> {
        let now = Instant::now();
        if self.publication.is_none() {
            let source =
                PublisherInfo { conn_id: self.pull.id, shard: self.ctx.shard_id, peer: self.peer };
            let publication = self
                .ctx
                .registry
                .publish_source(self.pull.key.clone(), source, now)
                .map_err(|e| format!("local publish refused: {e}"))?;
            info!("pull publishing");
            self.publication = Some(publication);
        }
        if let Some(publication) = &self.publication {
            publication.relay(&self.ctx.registry, media, now);
        }
        Ok(())
    }

    /// Upstream's publisher left: so does the local stream's (players stay and wait).
    fn stop(&mut self) {
        if let Some(publication) = self.publication.take() {
            info!("pull unpublishing");
            publication.stop(&self.ctx.registry, Instant::now());
        }
    }
}

impl Drop for Feed<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One connection to the upstream, from connect to its failure. Waits for the attempt
/// limits first.
async fn attempt(
    pull: &PullHandle,
    relays: &PullRelays,
    ctx: &ConnContext,
    seed: &mut u64,
) -> String {
    let settings = &relays.settings;
    let in_flight = loop {
        match relays.budget.take(Instant::now()) {
            Ok(slot) => break slot,
            Err(limit) => {
                ctx.counters.limit_tripped(limit);
                debug!(limit = %limit, "pull attempt waits for the attempt limits");
                glommio::timer::sleep(backoff(settings.backoff_min, settings.backoff_max, 1, seed))
                    .await;
            }
        }
    };
    let target = &pull.target;
    let connecting = open(&target.host, target.port, target.tls, pull.tls.as_ref());
    let (addr, socket) = match within(settings.connect_timeout, connecting).await {
        None => return "connect timed out".into(),
        Some(Err(e)) => return e,
        Some(Ok(connected)) => connected,
    };
    let socket = Rc::new(socket);
    let queue = Rc::new(OutQueue::new(Instant::now()));
    let writer = {
        let (socket, queue) = (socket.clone(), queue.clone());
        glommio::spawn_local(async move {
            let result = socket.drain(&queue).await;
            socket.shutdown();
            result
        })
    };
    let mut conn = PullConn { pull, socket, queue, addr, input: BytesMut::new() };
    let session = ClientSession::new(settings.session, 0, &handshake_random(seed), false);
    let reason = conn.session(session, settings, ctx, in_flight).await;
    conn.queue.close(CloseReason::ConnectionEnded);
    conn.socket.shutdown();
    drop(writer);
    reason
}

struct PullConn<'a> {
    pull: &'a PullHandle,
    socket: Rc<Socket>,
    queue: Rc<OutQueue>,
    addr: SocketAddr,
    input: BytesMut,
}

impl PullConn<'_> {
    /// Handshake, connect, createStream, play; then relays what upstream sends until the
    /// session fails. Returns why it ended.
    async fn session(
        &mut self,
        mut session: ClientSession,
        settings: &PullSettings,
        ctx: &ConnContext,
        in_flight: InFlight,
    ) -> String {
        let target = &self.pull.target;
        let chunk_size = ctx.registry.settings().encoder.chunk_size();
        self.flush(&mut session);
        let mut feed = Feed { ctx, pull: self.pull, peer: self.addr, publication: None };
        // Until NetStream.Play.Start: within the connect timeout, one place in flight.
        let playing = async {
            loop {
                let mut events = self.read(&mut session).await?.into_iter();
                while let Some(event) = events.next() {
                    match event {
                        ClientEvent::HandshakeDone => {
                            session.set_chunk_size(chunk_size);
                            session.connect(&target.app, &target.tc_url);
                        }
                        ClientEvent::Connected => session.create_stream(),
                        ClientEvent::StreamCreated { stream_id } => {
                            session.play(stream_id, &target.name)
                        }
                        // What came with it (the upstream's late-join cache, often) is
                        // the live phase's first work.
                        ClientEvent::Status { code: c, .. } if c == code::PLAY_START => {
                            return Ok(events.collect::<Vec<_>>());
                        }
                        event => check_refusal(&event)?,
                    }
                }
                self.flush(&mut session);
            }
        };
        let mut events = match within(settings.connect_timeout, playing).await {
            None => return "play timed out".into(),
            Some(Err(e)) => return e,
            Some(Ok(rest)) => rest,
        };
        drop(in_flight);
        self.flush(&mut session);
        self.pull.connects.set(self.pull.connects.get() + 1);
        self.pull.last_success.set(Some(Instant::now()));
        self.pull.live_since.set(Some(Instant::now()));
        self.pull.state.set(PullState::Live);
        info!(upstream = %self.addr, "pull live");

        // Live: each upstream message into the local stream; silence past the idle limit, a
        // status error, garbage or a reset ends the attempt.
        let idle = settings.session.publisher_idle;
        loop {
            for event in events {
                match event {
                    ClientEvent::Media(media) => {
                        if let Err(e) = feed.relay(media) {
                            return e;
                        }
                    }
                    ClientEvent::Status { code: c, .. } if c == code::PLAY_UNPUBLISH_NOTIFY => {
                        feed.stop()
                    }
                    ClientEvent::Status { code: c, .. } if c == code::PLAY_STOP => {
                        return "upstream stopped the play".into();
                    }
                    event => {
                        if let Err(e) = check_refusal(&event) {
                            return e;
                        }
                    }
                }
            }
            self.flush(&mut session);
            if self.queue.queued_bytes() > MAX_QUEUED_TO_UPSTREAM {
                return "upstream does not read what we send".into();
            }
            events = match within(idle, self.read(&mut session)).await {
                None => return format!("upstream sent nothing for {idle:?}"),
                Some(Err(e)) => return e,
                Some(Ok(events)) => events,
            };
        }
    }

    fn flush(&self, session: &mut ClientSession) {
        flush(session, &self.queue);
    }

    /// Reads once and returns the session's events. An end of stream, a socket error or a
    /// protocol error ends the attempt.
    async fn read(&mut self, session: &mut ClientSession) -> Result<Vec<ClientEvent>, String> {
        let mut buf = [0u8; READ_SIZE];
        let n = match self.socket.read(&mut buf).await {
            Ok(0) => return Err("upstream closed the connection".into()),
            Ok(n) => n,
            Err(e) => return Err(format!("{}: {e}", self.addr)),
        };
        self.pull.bytes_in.set(self.pull.bytes_in.get() + n as u64);
        decode(session, &mut self.input, &buf[..n])
    }
}

/// An error status or a failed call from upstream: the attempt's end, with its reason.
fn check_refusal(event: &ClientEvent) -> Result<(), String> {
    match event {
        ClientEvent::Status { level, code, description, .. } if level == "error" => {
            Err(format!("upstream refused: {code} {description}"))
        }
        ClientEvent::CallFailed { command, code } => {
            Err(format!("upstream refused {command}: {}", code.as_deref().unwrap_or("")))
        }
        _ => Ok(()),
    }
}
