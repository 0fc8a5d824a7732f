//! Executors, listeners and the server's lifecycle.
//!
//! The server runs one glommio executor per shard, each on its own thread with its own
//! SO_REUSEPORT listener on the same address, its own stream registry and its own counters.
//! Nothing mutable is shared between shards. The controlling thread (the binary's main thread or
//! a test) talks to shards through [`ServerHandle`]: snapshot requests and shutdown, polled by
//! each shard off the media path.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use futures_lite::FutureExt;
use glommio::net::TcpListener;
use glommio::{LocalExecutorBuilder, Placement};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::conn::{self, ConnContext};
use crate::metrics::{CountersSnapshot, ShardCounters};
use crate::stream::{CacheLimits, Registry, RelaySettings};

/// Locked memory glommio registers per executor for io_uring buffers. The server does socket
/// I/O only, which does not use these buffers, so it keeps them small: the default (10 MiB) times
/// the shard count would exceed the common 8 MiB RLIMIT_MEMLOCK on the first shard.
const IO_MEMORY_PER_SHARD: usize = 512 * 1024;
/// How often a shard looks at control requests and expires waiting players.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot start shard {shard}: {reason}")]
    Executor { shard: usize, reason: String },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

enum Control {
    Snapshot(mpsc::Sender<CountersSnapshot>),
    Shutdown,
}

/// A running server: its address, its counters, and how to stop it.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    shards: Vec<ShardHandle>,
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
            Control::Shutdown => "Shutdown",
        })
    }
}

impl ServerHandle {
    /// The address the server listens on (with `--listen 127.0.0.1:0`, the port it picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The sum of every shard's counters. Blocks until each shard answers (within a
    /// housekeeping interval).
    pub fn counters(&self) -> CountersSnapshot {
        let mut total = CountersSnapshot::default();
        for shard in &self.shards {
            let (tx, rx) = mpsc::channel();
            if shard.control.send(Control::Snapshot(tx)).is_ok() {
                if let Ok(snapshot) = rx.recv_timeout(Duration::from_secs(5)) {
                    total = total + snapshot;
                }
            }
        }
        total
    }

    /// Stops accepting, closes every connection and joins every shard thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
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
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts the server and returns once every shard listens.
pub fn start(config: &Config) -> Result<ServerHandle, StartError> {
    config.validate()?;
    // Bind once up front: it reports a busy port before any thread starts, and with port 0 it
    // fixes the port every shard then binds to.
    let probe = std::net::TcpListener::bind(config.listen)
        .map_err(|source| StartError::Bind { addr: config.listen, source })?;
    let local_addr =
        probe.local_addr().map_err(|source| StartError::Bind { addr: config.listen, source })?;
    drop(probe);

    let shard_count = 1;
    let mut shards = Vec::with_capacity(shard_count);
    for shard_id in 0..shard_count {
        let (control_tx, control_rx) = mpsc::channel();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), StartError>>();
        let config = config.clone();
        let thread = std::thread::Builder::new()
            .name(format!("shard-{shard_id}"))
            .spawn(move || run_shard(shard_id, local_addr, config, control_rx, ready_tx))
            .map_err(|e| StartError::Executor { shard: shard_id, reason: e.to_string() })?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(StartError::Executor {
                    shard: shard_id,
                    reason: "shard thread exited during start-up".into(),
                })
            }
        }
        shards.push(ShardHandle { control: control_tx, thread: Some(thread) });
    }
    info!(addr = %local_addr, shards = shard_count, "rtmp-relay listening");
    Ok(ServerHandle { local_addr, shards })
}

fn relay_settings(config: &Config) -> RelaySettings {
    RelaySettings {
        encoder: rtmp_proto::chunk::ChunkEncoder::new(config.out_chunk_size),
        cache: CacheLimits {
            max_bytes: config.gop_cache_max_bytes,
            max_ms: config.gop_cache_max_ms,
        },
        soft_lag_ms: config.subscriber_soft_lag_ms,
        hard_queue_bytes: config.subscriber_hard_limit_bytes,
        stall: config.subscriber_stall(),
        republish_wait: config.republish_wait(),
    }
}

fn run_shard(
    shard_id: usize,
    addr: SocketAddr,
    config: Config,
    control: mpsc::Receiver<Control>,
    ready: mpsc::Sender<Result<(), StartError>>,
) {
    let executor = match LocalExecutorBuilder::new(Placement::Unbound)
        .name(&format!("shard-{shard_id}"))
        .io_memory(IO_MEMORY_PER_SHARD)
        .make()
    {
        Ok(executor) => executor,
        Err(e) => {
            let reason = format!(
                "{e} (glommio needs io_uring and {IO_MEMORY_PER_SHARD} bytes of locked memory per \
                 shard: check `ulimit -l`)"
            );
            let _ = ready.send(Err(StartError::Executor { shard: shard_id, reason }));
            return;
        }
    };
    executor.run(async move {
        let listener = match TcpListener::bind(addr) {
            Ok(listener) => listener,
            Err(e) => {
                let source = std::io::Error::other(e.to_string());
                let _ = ready.send(Err(StartError::Bind { addr, source }));
                return;
            }
        };
        let counters = Rc::new(ShardCounters::default());
        let registry = Registry::new(relay_settings(&config), counters.clone());
        let ctx = Rc::new(ConnContext::new(
            shard_id,
            registry,
            counters.clone(),
            config.session_config(),
            config.handshake_timeout(),
        ));
        let _ = ready.send(Ok(()));

        let accept_loop = {
            let ctx = ctx.clone();
            async move {
                loop {
                    match listener.accept().await {
                        Ok(stream) => {
                            glommio::spawn_local(conn::serve(ctx.clone(), stream)).detach();
                        }
                        Err(e) => {
                            // EMFILE/ENFILE and friends: keep serving the connections we have and
                            // try again shortly instead of spinning or dying.
                            ctx.counters.accept_errors.inc();
                            warn!(shard = shard_id, error = %e, "accept failed");
                            glommio::timer::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        };
        let housekeeping = async move {
            loop {
                glommio::timer::sleep(HOUSEKEEPING_INTERVAL).await;
                ctx.registry.expire_waiting(std::time::Instant::now());
                loop {
                    match control.try_recv() {
                        Ok(Control::Snapshot(reply)) => {
                            let _ = reply.send(counters.snapshot());
                        }
                        Ok(Control::Shutdown) | Err(mpsc::TryRecvError::Disconnected) => return,
                        Err(mpsc::TryRecvError::Empty) => break,
                    }
                }
            }
        };
        accept_loop.or(housekeeping).await;
    });
}
