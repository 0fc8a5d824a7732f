//! Per-shard counters, the stats shards report, and the HTTP control plane that exports them.
//!
//! Each shard owns its counters and bumps plain `Cell`s on the hot path: no atomics, no locks, no
//! cross-core traffic. When someone scrapes, the control plane (its own thread) asks every shard
//! for a [`ShardStats`] snapshot and merges them there.

pub mod auth;
mod http;
mod limits;
mod prometheus;
mod recording;
pub mod stats;
mod transport;

use std::cell::{Cell, RefCell};

pub use http::{
    reload_allowed, serve as serve_http, ExtraMetrics, HttpError, HttpServer, ReloadHook,
};
pub use limits::{Limit, LimitCounters, LimitCounts};
pub use recording::{RecordCounters, RecordCountersSnapshot};
pub use stats::{DeliveryTotals, ShardStats, StreamStats, SubscriberStats};
pub use transport::{
    PullState, PullStats, PushState, PushStats, RelaysJson, TlsCounters, TlsSnapshot,
    TransportStats,
};

/// A monotonically increasing shard-local counter.
#[derive(Debug, Default)]
pub struct Counter(Cell<u64>);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.set(self.0.get().wrapping_add(n));
    }

    pub fn get(&self) -> u64 {
        self.0.get()
    }
}

/// A shard-local value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(Cell<i64>);

impl Gauge {
    pub fn inc(&self) {
        self.0.set(self.0.get() + 1);
    }

    pub fn dec(&self) {
        self.0.set(self.0.get() - 1);
    }

    pub fn get(&self) -> i64 {
        self.0.get()
    }
}

/// Where an open connection is in its life, for `rtmp_relay_connections{state}`. Each open
/// connection is in exactly one state, so the states add up to `connections_open`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Accepted; the RTMP handshake or the `connect` command is not done yet.
    Handshake,
    /// Connected to an app; neither publishing nor playing.
    Connected,
    /// Publishing at least one stream (whatever else it does).
    Publishing,
    /// Playing at least one stream and publishing none.
    Playing,
}

impl ConnState {
    pub const ALL: [ConnState; 4] =
        [ConnState::Handshake, ConnState::Connected, ConnState::Publishing, ConnState::Playing];

    /// The `state` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnState::Handshake => "handshake",
            ConnState::Connected => "connected",
            ConnState::Publishing => "publishing",
            ConnState::Playing => "playing",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// How a listed counter is read for export: a counter (`_total`) or a gauge.
#[derive(Clone, Copy)]
enum Read {
    Counter(fn(&CountersSnapshot) -> u64),
    Gauge(fn(&CountersSnapshot) -> i64),
}

/// One exported shard counter: `rtmp_relay_<name>`, its help text and how to read it.
struct Exported {
    name: &'static str,
    help: &'static str,
    read: Read,
}

/// The plain value a [`Counter`] or [`Gauge`] snapshots to.
macro_rules! value_of {
    (Counter) => {
        u64
    };
    (Gauge) => {
        i64
    };
}

/// Declares every scalar shard counter from one list (below), so that adding one is one line.
///
/// An entry is its doc comment, `field: Counter` or `field: Gauge`, and, if it is exported,
/// `=> "Prometheus help"`; it is then exported as `rtmp_relay_<field>` (`_total` added to
/// counters) with a `shard` label. From the list this generates the field of
/// [`ShardCounters`], the field of [`CountersSnapshot`], its copy in
/// [`ShardCounters::snapshot`], its sum across shards (`CountersSnapshot + CountersSnapshot`)
/// and its entry in the table the Prometheus exporter walks. The labelled families
/// (connections by state, protocol errors by kind, limits tripped) are written out here once.
macro_rules! shard_counters {
    ($(
        $(#[doc = $doc:literal])*
        $field:ident: $kind:ident $(=> $help:literal)?;
    )*) => {
        /// What one shard has done.
        #[derive(Debug, Default)]
        pub struct ShardCounters {
            $( $(#[doc = $doc])* pub $field: $kind, )*
            /// Open connections by [`ConnState`], indexed by its discriminant.
            connections_by_state: [Gauge; 4],
            /// Protocol errors by kind.
            protocol_errors_by_kind: RefCell<Vec<(&'static str, u64)>>,
            /// Trips of each [`Limit`].
            limits_tripped: LimitCounters,
        }

        /// A plain copy of the counters, for tests and reports; `+` sums two shards'.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
        pub struct CountersSnapshot {
            $( $(#[doc = $doc])* pub $field: value_of!($kind), )*
            /// Open connections by state, in [`ConnState::ALL`] order.
            pub connections_by_state: [i64; 4],
        }

        impl ShardCounters {
            pub fn snapshot(&self) -> CountersSnapshot {
                CountersSnapshot {
                    $( $field: self.$field.get(), )*
                    connections_by_state: ConnState::ALL.map(|s| self.connections_in(s).get()),
                }
            }
        }

        impl std::ops::Add for CountersSnapshot {
            type Output = CountersSnapshot;

            fn add(self, o: CountersSnapshot) -> CountersSnapshot {
                CountersSnapshot {
                    $( $field: self.$field + o.$field, )*
                    connections_by_state: std::array::from_fn(|i| {
                        self.connections_by_state[i] + o.connections_by_state[i]
                    }),
                }
            }
        }

        impl CountersSnapshot {
            /// The exported counters, in list order.
            const EXPORTED: &'static [Exported] = &[
                $($(
                    Exported {
                        name: stringify!($field),
                        help: $help,
                        read: Read::$kind(|s| s.$field),
                    },
                )?)*
            ];
        }
    };
}

shard_counters! {
    /// Streams this shard owns.
    streams: Gauge => "Streams owned by the shard";
    /// Mirrors of other shards' streams held here.
    mirrors: Gauge => "Mirrors of other shards' streams held by the shard";
    /// Publishing streams this shard owns.
    publishers: Gauge => "Publishing streams owned by the shard";
    /// Players connected to this shard.
    subscribers: Gauge => "Players connected to the shard";
    /// Open RTMP connections (each also in one [`ConnState`]).
    connections_open: Gauge => "Open RTMP connections";
    connections_accepted: Counter => "RTMP connections accepted";
    /// Failed accepts (e.g. out of file descriptors).
    accept_errors: Counter => "Failed accepts (e.g. out of file descriptors)";
    handshake_failures: Counter => "Connections that failed the RTMP handshake";
    /// Connections closed by the handshake timeout (also the limit `handshake_timeout_secs`).
    handshake_timeouts: Counter;
    /// Connections closed for a protocol violation (exported by kind, see
    /// [`ShardCounters::protocol_error`]).
    protocol_errors: Counter;
    publishes: Counter => "Publishes accepted";
    publishes_rejected: Counter => "Publishes refused (key already published)";
    /// Commands out of place (publish on a stream id already in use, a second connect, ...)
    /// answered with an error; the connection stayed.
    commands_refused: Counter => "Commands out of place answered with an error, the connection \
        kept (e.g. publish on a stream id already publishing)";
    plays: Counter => "Plays started";
    /// Messages received from publishers.
    messages_in: Counter => "Messages received from publishers";
    /// Payload bytes received from publishers.
    bytes_in: Counter => "Payload bytes received from publishers";
    /// Frames queued to subscribers (one per subscriber per message).
    messages_relayed: Counter => "Messages queued to players (one per player per message)";
    /// Payload bytes queued to subscribers.
    bytes_relayed: Counter => "Payload bytes queued to players";
    /// Frames a subscriber skipped (slow-subscriber policy).
    messages_dropped: Counter => "Messages skipped by slow players";
    /// Times a subscriber started skipping to the next keyframe.
    skip_to_keyframe: Counter => "Times a slow player started skipping to the next keyframe";
    /// Players disconnected by the slow-subscriber policy (also the limits
    /// `player_hard_limit_bytes` and `player_stall_secs`).
    slow_subscriber_disconnects: Counter =>
        "Players disconnected for falling too far behind or stalling";
    /// Players stopped because the wait for a republish ran out.
    republish_wait_expired: Counter => "Players stopped because no publisher came back in time";
    /// GOP caches dropped for outgrowing their limits (also the limits `gop_cache_max_bytes`
    /// and `gop_cache_max_ms`).
    gop_cache_overflows: Counter;
}

fn bump(counts: &RefCell<Vec<(&'static str, u64)>>, name: &'static str) {
    let mut counts = counts.borrow_mut();
    match counts.iter_mut().find(|(k, _)| *k == name) {
        Some((_, n)) => *n += 1,
        None => counts.push((name, 1)),
    }
}

impl ShardCounters {
    /// The gauge of open connections in `state`.
    pub fn connections_in(&self, state: ConnState) -> &Gauge {
        &self.connections_by_state[state.index()]
    }

    /// Counts one protocol error of `kind` (also in `protocol_errors`).
    pub fn protocol_error(&self, kind: &'static str) {
        self.protocol_errors.inc();
        bump(&self.protocol_errors_by_kind, kind);
    }

    pub fn protocol_errors_by_kind(&self) -> Vec<(&'static str, u64)> {
        self.protocol_errors_by_kind.borrow().clone()
    }

    /// Counts one trip of `limit` (`rtmp_relay_limits_tripped_total{limit}`).
    pub fn limit_tripped(&self, limit: Limit) {
        self.limits_tripped.trip(limit);
    }

    pub fn limits_tripped(&self) -> LimitCounts {
        self.limits_tripped.snapshot()
    }
}
