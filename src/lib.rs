//! rtmp-relay: a thread-per-core RTMP relay server on glommio.
//!
//! A publisher pushes a live stream; any number of players pull it. Each published message is
//! chunk-encoded once into a shared `Bytes` and queued by reference to every player, so the cost
//! per player per message is one queue push and its share of a vectored write.
//!
//! # Layout and dependency direction
//! `runtime -> conn -> stream -> rtmp_proto`, with `config`, `metrics` and `telemetry` as leaves:
//! - [`runtime`]: executors, listeners, shutdown; owns the shards.
//! - [`conn`]: the only place bytes meet sockets; drives one `ServerSession` per connection.
//! - [`stream`]: registry, streams, late-join cache, fan-out and per-connection queues; knows
//!   nothing of sockets.
//! - `rtmp_proto` (crate `proto/`): the sans-IO protocol; knows nothing of shards or sockets.
//!
//! `tests/architecture.rs` keeps this direction true.

pub mod config;
pub mod conn;
pub mod metrics;
pub mod record;
pub mod runtime;
pub mod stream;
pub mod telemetry;

pub use config::Config;
pub use runtime::{start, ServerHandle, ShardSnapshot, StartError};
