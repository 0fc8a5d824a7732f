//! Streams: who publishes what, who plays it, and the fan-out between them.
//!
//! A shard owns a [`Registry`] of the streams whose key it owns; each [`Stream`] holds its
//! publisher, its late-join cache and its subscribers, all shard-local (`Rc`, `RefCell`,
//! `Cell`). A published message becomes one [`Frame`], encoded once, and each subscriber's
//! queue gets a reference to it: one queue push per subscriber, no copy.
//!
//! With several shards, a stream lives on its owner shard (`hash(app/key) % shards`); other
//! shards with players keep a mirror of it, fed one frame per shard over the channel mesh (see
//! [`shard`]).
//!
//! This module knows nothing of sockets: subscribers are [`OutQueue`]s that a connection
//! drains, and other shards are [`ShardOutbox`]es that the runtime drains.

mod cache;
mod live;
mod publication;
pub mod queue;
mod registry;
pub mod shard;
mod subscriber;

use std::fmt;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use rtmp_proto::chunk::ChunkEncoder;

use crate::metrics::Limit;
use crate::record::RecordConfig;

pub use crate::frame::{Frame, FrameClass, PLAY_STREAM_ID};
pub use cache::{CacheLimits, LateJoinCache};
pub use live::{CodecInfo, Stream};
pub use publication::Publication;
pub use queue::{CloseReason, OutQueue};
pub use registry::{PublishStart, Registry};
pub use shard::{owner_of, PublishWaiter, ShardMessage, ShardOutbox, SnapshotWaiter};
pub use subscriber::{SinkKind, Subscriber};

/// A stream's identity: the `connect` app and the publish/play name without its query.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub app: String,
    pub name: String,
}

impl StreamKey {
    pub fn new(app: impl Into<String>, name: impl Into<String>) -> Self {
        Self { app: app.into(), name: name.into() }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.name)
    }
}

/// The relay's knobs, resolved from the config once per shard.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    /// Encodes every frame and notification at the server's outgoing chunk size.
    pub encoder: ChunkEncoder,
    pub cache: CacheLimits,
    /// A player further behind live than this skips to the next keyframe.
    pub soft_lag_ms: u32,
    /// A player with more queued bytes than this is disconnected.
    pub hard_queue_bytes: usize,
    /// A player with data queued and no write progress for this long is disconnected.
    pub stall: Duration,
    /// How long players wait for a publisher that left (or never came).
    pub republish_wait: Duration,
    /// Most streams (owned and mirrored) on one shard.
    pub max_streams: usize,
    /// Most players of one stream on one shard.
    pub max_subscribers: usize,
    /// Recording, when on: how, and the apps recorded (empty: every app).
    pub record: Option<Rc<RecordConfig>>,
    pub record_apps: Rc<[String]>,
}

impl RelaySettings {
    /// Whether streams of `app` are recorded.
    pub fn records(&self, app: &str) -> bool {
        self.record.is_some()
            && (self.record_apps.is_empty() || self.record_apps.iter().any(|a| a == app))
    }
}

/// Who publishes a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherInfo {
    pub conn_id: u64,
    /// The shard whose connection this is: the one to ask whether it is still there.
    pub shard: usize,
    pub peer: SocketAddr,
}

/// Whether a publisher's connection is still there, asked on the shard that holds the
/// connection before a publish of its key is refused (see [`Registry::start_publish`]). conn
/// implements it over its socket; this module knows nothing of sockets.
pub trait Liveness: fmt::Debug {
    /// True once the connection can publish nothing more: its peer closed it (FIN) or reset
    /// it, or the socket failed or was shut down. A cheap check that never waits.
    fn is_gone(&self) -> bool;
}

/// What starts and stops with each publish of a stream this shard owns, besides the stream
/// itself: the outbound relays (push) of the stream's app, and the pulls that feed streams.
/// Implemented above this module (it opens connections); the registry calls it on the owner
/// shard, whatever the publisher's or the player's shard.
pub trait PublishHook: fmt::Debug {
    /// A publish of `stream` started.
    fn published(&self, stream: &Rc<Stream>, now: std::time::Instant);
    /// That publish ended (the publisher left, or the server shuts down).
    fn unpublished(&self, stream: &Rc<Stream>, now: std::time::Instant);
    /// A player joined `stream` (on the owner, or a mirror of another shard subscribed): an
    /// on-demand source starts here.
    fn wanted(&self, _stream: &Rc<Stream>, _now: std::time::Instant) {}
    /// Whether `key` is fed by a source of this hook's (a configured pull), so that no
    /// connection may publish it.
    fn claims(&self, _key: &StreamKey) -> bool {
        false
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PublishRefused {
    /// Someone publishes this key already; the first publisher keeps it.
    AlreadyPublishing { by: SocketAddr },
    /// A limit refuses a new stream.
    Limit(Limit),
    /// The key belongs to a configured source (a pull): no connection publishes it.
    Reserved,
}

impl fmt::Display for PublishRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishRefused::AlreadyPublishing { by } => write!(f, "already published by {by}"),
            PublishRefused::Limit(limit) => write!(f, "limit {limit} reached"),
            PublishRefused::Reserved => f.write_str("the key is fed by a configured pull"),
        }
    }
}
