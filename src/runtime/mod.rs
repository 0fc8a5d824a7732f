//! Executors, listeners, the channel mesh and the server's lifecycle.
//!
//! One glommio executor per shard, each pinned to its own core (when there are enough cores),
//! with its own SO_REUSEPORT listener on the same address, its own [`Registry`] and its own
//! counters. Shards share nothing mutable: they talk only through glommio's channel mesh, one
//! bounded SPSC channel per ordered pair of shards. Each shard drains its per-peer
//! [`ShardOutbox`]es into the mesh and feeds what it receives to its registry.
//!
//! The controlling thread (the binary's main thread, or a test) talks to shards through
//! [`ServerHandle`]: snapshot requests and shutdown, polled by each shard off the media path.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_lite::FutureExt;
use glommio::channels::channel_mesh::{Full, MeshBuilder};
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, info_span, warn, Instrument};

use crate::auth::Authority;
use crate::config::Config;
use crate::conn::{self, ConnContext};
use crate::metrics::{
    CountersSnapshot, HttpServer, Limit, LimitCounts, ShardCounters, ShardStats, TransportStats,
};
use crate::relay::{PullRelays, PullSettings, PushRelays, PushSettings};
use crate::stream::{Registry, ShardMessage, ShardOutbox, StreamKey};
use crate::telemetry::LogLimiter;

/// How often a shard looks at control requests and expires waiting players.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);
/// At most one "accept failed" line per listener per this interval.
const ACCEPT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start shard {shard}: {reason}")]
    Executor { shard: usize, reason: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Http(String),
    #[error("{0}")]
    Tls(String),
}

/// Asks every shard for its stats; `None` if one does not answer within a second.
fn gather_stats(controls: &[mpsc::Sender<Control>]) -> Option<Vec<ShardStats>> {
    let replies: Vec<_> = controls
        .iter()
        .map(|control| {
            let (tx, rx) = mpsc::channel();
            control.send(Control::Stats(tx)).ok().map(|_| rx)
        })
        .collect();
    let mut stats = Vec::with_capacity(replies.len());
    for reply in replies {
        stats.push(reply?.recv_timeout(Duration::from_secs(1)).ok()?);
    }
    stats.sort_by_key(|s| s.shard);
    Some(stats)
}

/// One shard's counters and mesh traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardSnapshot {
    pub shard: usize,
    pub counters: CountersSnapshot,
    /// Per other shard: (messages sent to it, messages received from it, media dropped to it).
    pub mesh: Vec<(u64, u64, u64)>,
    /// How many times each limit tripped (`rtmp_relay_limits_tripped_total{limit}`).
    pub limits: LimitCounts,
    /// Connections closed for a protocol violation, by kind (`SessionError::kind`).
    pub protocol_errors: Vec<(&'static str, u64)>,
}

enum Control {
    Snapshot(mpsc::Sender<ShardSnapshot>),
    Stats(mpsc::Sender<ShardStats>),
    /// Run with this config's reloadable settings from now on (see `config::reload`); the
    /// shard answers with its id once they are in force.
    Reload(Arc<Config>, mpsc::Sender<usize>),
    Shutdown,
}

/// The shards' control channels, for threads other than the one holding the
/// [`ServerHandle`]: the watchdog asks through them whether every shard still answers, and a
/// reload hands each shard its new settings. Every request has a deadline: a shard that
/// does not answer in time is named, never waited for without end.
#[derive(Debug, Clone)]
pub struct ShardControls {
    senders: Arc<[mpsc::Sender<Control>]>,
}

impl ShardControls {
    /// Sends one request to every shard, then waits until `deadline` for the answers: in shard
    /// order, or the ids of the shards that did not answer.
    fn ask_all<T>(
        &self,
        request: impl Fn(mpsc::Sender<T>) -> Control,
        deadline: Duration,
    ) -> Result<Vec<T>, Vec<usize>> {
        let until = Instant::now() + deadline;
        let replies: Vec<Option<mpsc::Receiver<T>>> = self
            .senders
            .iter()
            .map(|control| {
                let (tx, rx) = mpsc::channel();
                control.send(request(tx)).ok().map(|()| rx)
            })
            .collect();
        let mut answers = Vec::with_capacity(replies.len());
        let mut silent = Vec::new();
        for (shard, reply) in replies.into_iter().enumerate() {
            let left = until.saturating_duration_since(Instant::now());
            match reply.map(|rx| rx.recv_timeout(left)) {
                Some(Ok(answer)) => answers.push(answer),
                _ => silent.push(shard),
            }
        }
        if silent.is_empty() {
            Ok(answers)
        } else {
            Err(silent)
        }
    }

    /// Every shard's snapshot, if every shard answers within `deadline`: the watchdog's ping.
    /// Otherwise the (thread) indices of the shards that did not.
    pub fn snapshots_within(&self, deadline: Duration) -> Result<Vec<ShardSnapshot>, Vec<usize>> {
        let mut snapshots = self.ask_all(Control::Snapshot, deadline)?;
        snapshots.sort_by_key(|s| s.shard);
        Ok(snapshots)
    }

    /// Hands every shard `config` (already planned by `config::plan_reload`); `Err` names the
    /// shards that did not confirm within `deadline` (they apply it when they get to it).
    pub fn reload(&self, config: &Config, deadline: Duration) -> Result<(), Vec<usize>> {
        let config = Arc::new(config.clone());
        self.ask_all(|reply| Control::Reload(config.clone(), reply), deadline).map(|_| ())
    }
}

/// A running server: its addresses, its counters, and how to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    /// The RTMPS listener's address, when there is one.
    rtmps_addr: Option<SocketAddr>,
    /// The RTMPS certificates and the thread that reloads them.
    tls: Option<(crate::tls::ServerTls, crate::tls::CertReloader)>,
    shard_addrs: Vec<Option<SocketAddr>>,
    shards: Vec<ShardHandle>,
    http: Option<HttpServer>,
    /// Access control's threads (callbacks, key watcher); stopped after the shards, so done
    /// events the shards' shutdown queued still go out.
    auth: Option<std::sync::Arc<Authority>>,
}

#[derive(Debug)]
struct ShardHandle {
    control: mpsc::Sender<Control>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Control::Snapshot(_) => "Snapshot",
            Control::Stats(_) => "Stats",
            Control::Reload(..) => "Reload",
            Control::Shutdown => "Shutdown",
        })
    }
}

impl ServerHandle {
    /// The address the server listens on (with `--listen 127.0.0.1:0`, the port it picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The RTMPS listener's address (with port 0, the port it picked).
    pub fn rtmps_addr(&self) -> Option<SocketAddr> {
        self.rtmps_addr
    }

    /// Reloads the RTMPS certificates now (what SIGHUP does). On failure the old ones stay and
    /// the reason is returned.
    pub fn reload_tls(&self) -> Result<(), String> {
        match &self.tls {
            Some((tls, _)) => tls.reload(),
            None => Err("no RTMPS listener".into()),
        }
    }

    /// (certificate reloads done, reloads refused), by SIGHUP, by file change or by
    /// [`Self::reload_tls`].
    pub fn tls_reload_counts(&self) -> (u64, u64) {
        self.tls.as_ref().map_or((0, 0), |(tls, _)| tls.resolver.reload_counts())
    }

    /// Asks the reloader thread for a reload at its next tick, without waiting (safe from a
    /// signal-handling thread).
    pub fn request_tls_reload(&self) {
        if let Some((_, reloader)) = &self.tls {
            reloader.request();
        }
    }

    /// Every shard's RTMPS and push relay report.
    pub fn transport_stats(&self) -> Vec<TransportStats> {
        let controls: Vec<mpsc::Sender<Control>> =
            self.shards.iter().map(|s| s.control.clone()).collect();
        gather_stats(&controls).unwrap_or_default().into_iter().map(|s| s.transport).collect()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// The shards' control channels, for another thread (watchdog, reload).
    pub fn controls(&self) -> ShardControls {
        ShardControls { senders: self.shards.iter().map(|s| s.control.clone()).collect() }
    }

    /// Where the HTTP control plane listens, when it runs.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(HttpServer::local_addr)
    }

    /// With `debug_shard_listeners`, the address that reaches shard `shard` and no other.
    pub fn shard_addr(&self, shard: usize) -> Option<SocketAddr> {
        self.shard_addrs.get(shard).copied().flatten()
    }

    /// The shard that owns `app/name`.
    pub fn owner_of(&self, app: &str, name: &str) -> usize {
        crate::stream::owner_of(&StreamKey::new(app, name), self.shards.len())
    }

    /// Every shard's counters and mesh traffic, in shard order. Blocks until each shard answers
    /// (within a housekeeping interval).
    pub fn shard_snapshots(&self) -> Vec<ShardSnapshot> {
        let mut snapshots = Vec::with_capacity(self.shards.len());
        for shard in &self.shards {
            let (tx, rx) = mpsc::channel();
            if shard.control.send(Control::Snapshot(tx)).is_ok() {
                if let Ok(snapshot) = rx.recv_timeout(Duration::from_secs(5)) {
                    snapshots.push(snapshot);
                }
            }
        }
        snapshots.sort_by_key(|s| s.shard);
        snapshots
    }

    /// The sum of every shard's counters.
    pub fn counters(&self) -> CountersSnapshot {
        self.shard_snapshots()
            .into_iter()
            .fold(CountersSnapshot::default(), |total, s| total + s.counters)
    }

    /// How many times `limit` tripped, all shards together.
    pub fn limit_trips(&self, limit: Limit) -> u64 {
        self.shard_snapshots().iter().map(|s| s.limits.get(limit)).sum()
    }

    /// How many connections were closed for a protocol violation of `kind`, all shards together.
    pub fn protocol_errors_of(&self, kind: &str) -> u64 {
        let snapshots = self.shard_snapshots();
        let all = snapshots.iter().flat_map(|s| &s.protocol_errors);
        all.filter(|(k, _)| *k == kind).map(|(_, c)| c).sum()
    }

    /// Re-reads the access-control keys file (what SIGHUP does). The number of keys now in
    /// force, or why the old ones stay.
    pub fn reload_auth_keys(&self) -> Result<usize, String> {
        match &self.auth {
            Some(auth) => auth.reload_keys(),
            None => Err("access control is not running".into()),
        }
    }

    /// Access control's metrics, as `/metrics` shows them.
    pub fn auth_metrics(&self) -> String {
        self.auth.as_ref().map(|a| a.report().render()).unwrap_or_default()
    }

    /// Stops accepting, closes every connection and joins every shard thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.http = None;
        self.tls = None;
        for shard in &self.shards {
            let _ = shard.control.send(Control::Shutdown);
        }
        for shard in &mut self.shards {
            if let Some(thread) = shard.thread.take() {
                if thread.join().is_err() {
                    error!("a shard thread panicked");
                }
            }
        }
        self.auth = None;
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Locked memory glommio registers per executor for io_uring buffers. The server does socket
/// I/O only, which does not use them, so they stay small, and together they use at most half
/// of RLIMIT_MEMLOCK (8 MiB by default on Debian), leaving the rest for the rings themselves on
/// kernels that count those against the same limit. See tuning.md.
fn io_memory_per_shard(shards: usize) -> usize {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    let memlock = if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0 {
        if limit.rlim_cur == libc::RLIM_INFINITY {
            usize::MAX
        } else {
            limit.rlim_cur as usize
        }
    } else {
        8 << 20
    };
    (memlock / 2 / shards.max(1)).clamp(64 << 10, 1 << 20)
}

/// Starts the server and returns once every shard listens.
pub fn start(config: &Config) -> Result<ServerHandle, StartError> {
    start_with(config, None)
}

/// [`start`], with `POST /reload` on the control plane answered by `reload` (the binary's
/// reload path; without it the route answers 404).
pub fn start_with(
    config: &Config,
    reload: Option<crate::metrics::ReloadHook>,
) -> Result<ServerHandle, StartError> {
    config.validate()?;
    // Bind once up front: it reports a busy port before any thread starts, and with port 0 it
    // fixes the port every shard then binds to.
    let probe = std::net::TcpListener::bind(config.listen)
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let local_addr =
        probe.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    drop(probe);
    // The RTMPS listener: its certificates are read here, on the controlling thread, and
    // afterwards by the reloader's thread, never on a shard.
    let (rtmps_addr, server_tls) = match config.rtmps_listen {
        Some(addr) => {
            let tls = crate::tls::ServerTls::load(config.rtmps_cert_specs())
                .map_err(|e| StartError::Tls(format!("RTMPS certificates: {e}")))?;
            let probe = std::net::TcpListener::bind(addr)
                .map_err(|source| StartError::Bind { addr, source })?;
            let bound = probe.local_addr().map_err(|source| StartError::Bind { addr, source })?;
            drop(probe);
            (Some(bound), Some(tls))
        }
        None => (None, None),
    };
    let push_settings = config.push_settings()?;
    let pull_settings = config.pull_settings()?;

    let shard_count = config.shard_count();
    let auth_settings = config.auth_settings()?;
    let authority = std::sync::Arc::new(
        Authority::start(auth_settings, shard_count)
            .map_err(|e| StartError::Config(crate::config::ConfigError::new(e)))?,
    );
    let open = authority.publish_open_somewhere();
    if !open.is_empty() && !crate::auth::is_loopback(local_addr.ip()) {
        warn!(addr = %local_addr, apps = ?open,
            "publishing is open to anyone who can reach this listener: set --publish-auth \
             (or [auth.apps.NAME] publish) to token, callback or deny");
    }
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let io_memory = io_memory_per_shard(shard_count);
    let mesh: MeshBuilder<ShardMessage, Full> =
        MeshBuilder::full(shard_count, config.mesh_channel_capacity as usize);
    let mut shards = Vec::with_capacity(shard_count);
    let mut ready = Vec::with_capacity(shard_count);
    for shard_id in 0..shard_count {
        let (control_tx, control_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        // Pin shard i to the i-th core we may run on, when each shard can have its own.
        let placement = match cores.get(shard_id) {
            Some(core) if shard_count <= cores.len() => Placement::Fixed(core.id),
            _ => Placement::Unbound,
        };
        let shard = ShardSetup {
            thread_index: shard_id,
            shard_count,
            addr: local_addr,
            config: config.clone(),
            placement,
            io_memory,
            mesh: mesh.clone(),
            rtmps: rtmps_addr.zip(server_tls.as_ref().map(|t| t.config.clone())),
            push: push_settings.clone(),
            auth: authority.clone(),
            pull: pull_settings.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("shard-{shard_id}"))
            .spawn(move || run_shard(shard, control_rx, ready_tx))
            .map_err(|e| StartError::Executor { shard: shard_id, reason: e.to_string() })?;
        shards.push(ShardHandle { control: control_tx, thread: Some(thread) });
        ready.push(ready_rx);
    }
    let tls = match server_tls {
        Some(tls) => {
            let interval = Duration::from_secs(config.tls_reload_check_secs);
            let reloader = crate::tls::CertReloader::start(tls.clone(), interval)
                .map_err(|e| StartError::Tls(format!("cannot start the reloader thread: {e}")))?;
            Some((tls, reloader))
        }
        None => None,
    };
    let mut handle = ServerHandle {
        local_addr,
        rtmps_addr,
        tls,
        shard_addrs: vec![None; shard_count],
        shards,
        http: None,
        auth: Some(authority.clone()),
    };
    for (thread_index, ready_rx) in ready.into_iter().enumerate() {
        match ready_rx.recv() {
            Ok(Ok((shard_id, test_addr))) => handle.shard_addrs[shard_id] = test_addr,
            Ok(Err(e)) => return Err(e), // dropping `handle` stops the other shards
            Err(_) => {
                return Err(StartError::Executor {
                    shard: thread_index,
                    reason: "shard thread exited during start-up".into(),
                })
            }
        }
    }
    if !config.no_http {
        let controls: Vec<mpsc::Sender<Control>> =
            handle.shards.iter().map(|s| s.control.clone()).collect();
        let gather = std::sync::Arc::new(move || gather_stats(&controls));
        let extra: crate::metrics::ExtraMetrics = {
            let authority = authority.clone();
            std::sync::Arc::new(move || authority.report().render())
        };
        let http = crate::metrics::serve_http(config.http, gather, Some(extra), reload)
            .map_err(|e| StartError::Http(e.to_string()))?;
        handle.http = Some(http);
    }
    info!(addr = %local_addr, shards = shard_count, io_memory, "rtmp-relay listening");
    Ok(handle)
}

/// What a shard thread starts from. Its thread index picks its core; its shard id (which
/// streams it owns, where the others send to it) is its position in the channel mesh, known
/// only once every shard has joined.
struct ShardSetup {
    thread_index: usize,
    shard_count: usize,
    addr: SocketAddr,
    config: Config,
    placement: Placement,
    io_memory: usize,
    mesh: MeshBuilder<ShardMessage, Full>,
    /// The RTMPS listener's address and TLS configuration.
    rtmps: Option<(SocketAddr, std::sync::Arc<rustls::ServerConfig>)>,
    push: PushSettings,
    auth: std::sync::Arc<Authority>,
    pull: PullSettings,
}

/// (shard id, the shard's own test listener) once the shard serves.
type Ready = mpsc::Sender<Result<(usize, Option<SocketAddr>), StartError>>;

fn run_shard(setup: ShardSetup, control: mpsc::Receiver<Control>, ready: Ready) {
    let shard_id = setup.thread_index;
    let executor = match LocalExecutorBuilder::new(setup.placement.clone())
        .name(&format!("shard-{shard_id}"))
        .io_memory(setup.io_memory)
        .make()
    {
        Ok(executor) => executor,
        Err(e) => {
            let reason = format!(
                "{e} (glommio needs io_uring and {} bytes of locked memory per shard: check \
                 `ulimit -l`)",
                setup.io_memory
            );
            let _ = ready.send(Err(StartError::Executor { shard: shard_id, reason }));
            return;
        }
    };
    executor.run(serve_shard(setup, control, ready));
}

/// Answers control requests until told to shut down (or until the controller is gone).
async fn wait_for_shutdown(
    control: &mpsc::Receiver<Control>,
    on_snapshot: impl Fn() -> ShardSnapshot,
    on_stats: impl Fn() -> Option<ShardStats>,
    on_reload: impl Fn(&Config) -> Option<usize>,
) {
    loop {
        loop {
            match control.try_recv() {
                Ok(Control::Snapshot(reply)) => {
                    let _ = reply.send(on_snapshot());
                }
                Ok(Control::Stats(reply)) => {
                    if let Some(stats) = on_stats() {
                        let _ = reply.send(stats);
                    }
                }
                Ok(Control::Reload(config, reply)) => {
                    if let Some(shard) = on_reload(&config) {
                        let _ = reply.send(shard);
                    }
                }
                Ok(Control::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return,
                Err(mpsc::TryRecvError::Empty) => break,
            }
        }
        glommio::timer::sleep(HOUSEKEEPING_INTERVAL).await;
    }
}

async fn serve_shard(setup: ShardSetup, control: mpsc::Receiver<Control>, ready: Ready) {
    let ShardSetup {
        thread_index, shard_count, addr, config, mesh, rtmps, push, pull, auth, ..
    } = setup;
    let bind = |addr: SocketAddr| {
        TcpListener::bind(addr)
            .map_err(|e| StartError::Bind { addr, source: std::io::Error::other(e.to_string()) })
    };
    let listeners = bind(addr).and_then(|listener| {
        let test_listener = if config.debug_shard_listeners {
            Some(bind(SocketAddr::from(([127, 0, 0, 1], 0)))?)
        } else {
            None
        };
        Ok((listener, test_listener))
    });
    let listeners = listeners.and_then(|(listener, test_listener)| {
        let tls_listener = match &rtmps {
            Some((addr, config)) => Some((bind(*addr)?, config.clone())),
            None => None,
        };
        Ok((listener, test_listener, tls_listener))
    });
    let (listener, test_listener, tls_listener) = match listeners {
        Ok(listeners) => listeners,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };

    // Every shard must join the mesh before any can use it; a shutdown meanwhile (another
    // shard failed to start) ends the wait.
    let mut mesh_ends = None;
    if shard_count > 1 {
        let joined = async { Some(mesh.join().await) }
            .or(async {
                let starting = || ShardSnapshot {
                    shard: thread_index,
                    counters: CountersSnapshot::default(),
                    mesh: Vec::new(),
                    limits: LimitCounts::default(),
                    protocol_errors: Vec::new(),
                };
                wait_for_shutdown(&control, starting, || None, |_| None).await;
                None
            })
            .await;
        match joined {
            Some(Ok(ends)) => mesh_ends = Some(ends),
            _ => return,
        }
    }
    let shard_id = mesh_ends.as_ref().map_or(0, |(senders, _)| senders.peer_id());
    // Every task of this shard runs in this span, so what the mesh, the accept loop and the
    // housekeeping log says which shard it happened on. (Connections have their own span,
    // which carries the shard too.)
    let span = info_span!("shard", shard = shard_id);

    let outboxes: Vec<Rc<ShardOutbox>> = (0..shard_count)
        .map(|to| Rc::new(ShardOutbox::new(to, config.mesh_frame_limit, config.mesh_control_limit)))
        .collect();
    let counters = Rc::new(ShardCounters::default());
    let registry =
        Registry::sharded(config.relay_settings(), counters.clone(), shard_id, outboxes.clone());
    let mut ctx = ConnContext::new(
        shard_id,
        registry,
        counters.clone(),
        config.session_config(),
        config.connection_limits(shard_count),
        config.max_connections.div_ceil(shard_count).max(1),
    );
    ctx.debug_panic_key = config.debug_panic_on_key.clone();
    ctx.debug_stall = config
        .debug_stall_on_key
        .clone()
        .map(|key| (key, Duration::from_secs(config.debug_stall_secs)));
    ctx.auth = auth.for_shard(shard_id);
    drop(auth);
    let ctx = Rc::new(ctx);
    let shutdown_timeout = Rc::new(Cell::new(config.shutdown_timeout()));
    let pushes = Rc::new(PushRelays::new(push, (*ctx.registry.settings()).clone(), shard_id));
    if !pushes.is_empty() {
        ctx.registry.add_publish_hook(pushes.clone());
    }
    let pulls = Rc::new(PullRelays::new(pull, &ctx, shard_count));
    if !pulls.is_empty() {
        ctx.registry.add_publish_hook(Rc::new(pulls.clone()));
    }
    let snapshot = {
        let ctx = ctx.clone();
        move || ShardSnapshot {
            shard: shard_id,
            counters: ctx.counters.snapshot(),
            mesh: ctx.registry.mesh_counts(),
            limits: ctx.counters.limits_tripped(),
            protocol_errors: ctx.counters.protocol_errors_by_kind(),
        }
    };

    let mut _mesh_tasks = Vec::new();
    if let Some((senders, mut receivers)) = mesh_ends {
        let senders = Rc::new(senders);
        for outbox in outboxes.iter().filter(|o| o.to() != shard_id) {
            let (outbox, senders) = (outbox.clone(), senders.clone());
            let task = async move {
                loop {
                    let message = outbox.next().await;
                    if senders.send_to(outbox.to(), message).await.is_err() {
                        return;
                    }
                }
            };
            _mesh_tasks.push(glommio::spawn_local(task.instrument(span.clone())));
        }
        for (peer, receiver) in receivers.streams() {
            let ctx = ctx.clone();
            let task = async move {
                while let Some(message) = receiver.recv().await {
                    ctx.registry.handle(peer, message, Instant::now());
                    glommio::yield_if_needed().await;
                }
            };
            _mesh_tasks.push(glommio::spawn_local(task.instrument(span.clone())));
        }
    }
    // Always-on pulls start once the mesh carries their frames to other shards' players.
    pulls.start();
    let _ = ready.send(Ok((shard_id, test_listener.as_ref().and_then(|l| l.local_addr().ok()))));

    let accept_loop = |listener: TcpListener| {
        let ctx = ctx.clone();
        async move {
            // Clients can run the process out of file descriptors at will; one line per
            // interval, not one per failed accept.
            let error_log = LogLimiter::new(ACCEPT_ERROR_LOG_INTERVAL);
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        glommio::spawn_local(conn::serve(ctx.clone(), stream)).detach();
                    }
                    Err(e) => {
                        // EMFILE/ENFILE and friends: keep serving the connections we have and
                        // try again shortly instead of spinning or dying.
                        ctx.counters.accept_errors.inc();
                        if let Some(not_logged) = error_log.check(Instant::now()) {
                            warn!(error = %e, errors_not_logged = not_logged, "accept failed");
                        }
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    };
    let test_accept =
        test_listener.map(|l| glommio::spawn_local(accept_loop(l).instrument(span.clone())));
    let tls_accept = tls_listener.map(|(listener, tls)| {
        let ctx = ctx.clone();
        let task = async move {
            let error_log = LogLimiter::new(ACCEPT_ERROR_LOG_INTERVAL);
            loop {
                match listener.accept().await {
                    Ok(stream) => {
                        let serve = conn::serve_tls(ctx.clone(), stream, tls.clone());
                        glommio::spawn_local(serve).detach();
                    }
                    Err(e) => {
                        ctx.counters.accept_errors.inc();
                        if let Some(not_logged) = error_log.check(Instant::now()) {
                            warn!(error = %e, errors_not_logged = not_logged, "RTMPS accept failed");
                        }
                        glommio::timer::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        glommio::spawn_local(task.instrument(span.clone()))
    });
    let housekeeping = {
        let ctx = ctx.clone();
        let shutdown_timeout = shutdown_timeout.clone();
        async move {
            let periodic = async {
                let mut last_tick = Instant::now();
                loop {
                    glommio::timer::sleep(HOUSEKEEPING_INTERVAL).await;
                    let now = Instant::now();
                    ctx.registry.expire_waiting(now);
                    ctx.registry.expire_probes(now);
                    if now.duration_since(last_tick) >= Duration::from_secs(1) {
                        ctx.registry.tick(now);
                        last_tick = now;
                    }
                }
            };
            let stats = || {
                let now = Instant::now();
                let mut stats = ctx.registry.shard_stats(now);
                stats.transport = TransportStats {
                    tls: ctx.tls_counters.snapshot(),
                    pushes: pushes.stats(now),
                    pulls: pulls.stats(now),
                };
                Some(stats)
            };
            let reload = |config: &Config| {
                apply_reload(&ctx, &shutdown_timeout, config);
                Some(shard_id)
            };
            periodic.or(wait_for_shutdown(&control, &snapshot, stats, reload)).await;
        }
    };
    async {
        accept_loop(listener).or(housekeeping).await;
        drop(test_accept);
        drop(tls_accept);
        shut_down_gracefully(&ctx, shutdown_timeout.get()).await;
    }
    .instrument(span)
    .await;
}

/// A reload on this shard: everything the shard holds that a reload may change is rebuilt
/// from `config`, whose restart-only settings are those it started with
/// (`config::plan_reload`). A feature with reloadable settings of its own (access policies,
/// origins, relays) rebuilds them here too.
fn apply_reload(ctx: &ConnContext, shutdown_timeout: &Cell<Duration>, config: &Config) {
    ctx.registry.reload(config.relay_settings());
    shutdown_timeout.set(config.shutdown_timeout());
}

/// After the shutdown request, with no listener accepting any more: every publish ends as if its
/// publisher left (players get StreamEOF + UnpublishNotify; recordings are finished), every
/// connection writes what it has queued and closes, and the shard waits for that and for the
/// recordings' files to close, at most `timeout`. What is still open then is dropped with the
/// executor.
async fn shut_down_gracefully(ctx: &ConnContext, timeout: Duration) {
    ctx.registry.shutdown(Instant::now());
    ctx.close_all();
    let deadline = Instant::now() + timeout;
    let busy = || ctx.open_connections() > 0 || ctx.registry.recordings_closing() > 0;
    while busy() && Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(10)).await;
    }
    if busy() {
        warn!(
            connections = ctx.open_connections(),
            recordings = ctx.registry.recordings_closing(),
            "shutdown timeout: closing what is left"
        );
    }
}
