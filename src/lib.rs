//! rtmp-relay: a thread-per-core RTMP relay server on glommio.
//!
//! A publisher pushes a live stream; any number of players pull it. Each published message is
//! chunk-encoded once into a shared `Bytes` and queued by reference to every player, so the cost
//! per player per message is one queue push and its share of a vectored write.
//!
//! # Layout and dependency direction
//! Every module imports only modules below it in this list, never one above (no cycles):
//! - [`service`]: the binary's life as a service: signals, systemd readiness, status and
//!   watchdog, and the reload path from a new config file to every shard.
//! - [`runtime`]: executors, listeners, the channel mesh, shutdown; owns the shards.
//! - [`config`]: one `Config`, and the composition root's conversions from it into each
//!   module's settings (`ConnLimits`, `RelaySettings`, `RecordConfig`, `SessionConfig`), so no
//!   module below knows `Config`.
//! - [`relay`]: outbound sessions, each an RTMP client session over conn's socket: push
//!   relays (a sink of their stream) and pulls (the source of theirs).
//! - [`conn`]: the only place bytes meet sockets; drives one `ServerSession` per connection.
//! - [`auth`]: who may publish and play: per-app policy, token verification (pure, on the
//!   shard), the HTTP callback thread and the key watcher; knows nothing of sockets or streams.
//! - [`stream`]: registry, streams, late-join cache, fan-out and per-connection queues; knows
//!   nothing of sockets.
//! - [`record`]: the FLV recorder, a sink of streams.
//! - leaves, importing nothing from the crate: [`frame`] (the message as relayed, shared by the
//!   fan-out and the recorder), [`metrics`] (counters, stats, the HTTP control plane),
//!   [`telemetry`] (log set-up and rate limits) and [`tls`] (rustls configurations: listener
//!   certificates by SNI and their reload, outbound verification).
//! - `rtmp_proto` (crate `proto/`): the sans-IO protocol; knows nothing of shards or sockets.
//!
//! `tests/architecture.rs` keeps this order true: it reads every `crate::` path in `src/` and
//! fails on any import that points up the list.

pub mod auth;
pub mod config;
pub mod conn;
pub mod frame;
pub mod metrics;
pub mod record;
pub mod relay;
pub mod runtime;
pub mod service;
pub mod stream;
pub mod telemetry;
pub mod tls;

pub use config::Config;
pub use runtime::{start, start_with, ServerHandle, ShardControls, ShardSnapshot, StartError};
