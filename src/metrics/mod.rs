//! Per-shard counters, the stats shards report, and the HTTP control plane that exports them.
//!
//! Each shard owns its counters and bumps plain `Cell`s on the hot path: no atomics, no locks, no
//! cross-core traffic. When someone scrapes, the control plane (its own thread) asks every shard
//! for a [`ShardStats`] snapshot and merges them there.

pub mod auth;
mod http;
mod prometheus;
mod recording;
pub mod stats;

use std::cell::{Cell, RefCell};

pub use http::{serve as serve_http, ExtraMetrics, HttpError, HttpServer};
pub use prometheus::render as render_prometheus;
pub use recording::{RecordCounters, RecordCountersSnapshot};
pub use stats::{DeliveryTotals, ShardStats, StreamStats, SubscriberStats};

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

/// What one shard has done.
#[derive(Debug, Default)]
pub struct ShardCounters {
    pub connections_accepted: Counter,
    pub connections_open: Gauge,
    /// Open connections by [`ConnState`], indexed by its discriminant.
    connections_by_state: [Gauge; 4],
    pub accept_errors: Counter,
    pub handshake_failures: Counter,
    pub handshake_timeouts: Counter,
    pub protocol_errors: Counter,
    pub publishes: Counter,
    pub publishes_rejected: Counter,
    /// Commands out of place (publish on a stream id already in use, a second connect, ...)
    /// answered with an error; the connection stayed.
    pub commands_refused: Counter,
    pub plays: Counter,
    /// Streams this shard owns.
    pub streams: Gauge,
    /// Mirrors of other shards' streams held here.
    pub mirrors: Gauge,
    pub publishers: Gauge,
    pub subscribers: Gauge,
    /// Messages received from publishers.
    pub messages_in: Counter,
    pub bytes_in: Counter,
    /// Frames queued to subscribers (one per subscriber per message).
    pub messages_relayed: Counter,
    pub bytes_relayed: Counter,
    /// Frames a subscriber skipped (slow-subscriber policy).
    pub messages_dropped: Counter,
    /// Times a subscriber started skipping to the next keyframe.
    pub skip_to_keyframe: Counter,
    pub slow_subscriber_disconnects: Counter,
    /// Players stopped because the wait for a republish ran out.
    pub republish_wait_expired: Counter,
    /// GOP caches dropped for outgrowing their limits.
    pub gop_cache_overflows: Counter,
    /// Protocol errors by kind.
    protocol_errors_by_kind: RefCell<Vec<(&'static str, u64)>>,
    /// Limits that tripped, by name.
    limits_tripped: RefCell<Vec<(&'static str, u64)>>,
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

    /// Counts one trip of the limit `name` (as in `rtmp_relay_limits_tripped_total{limit}`).
    pub fn limit_tripped(&self, name: &'static str) {
        bump(&self.limits_tripped, name);
    }

    pub fn limits_tripped(&self) -> Vec<(&'static str, u64)> {
        self.limits_tripped.borrow().clone()
    }
}

/// A plain copy of the counters, for tests and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CountersSnapshot {
    pub connections_accepted: u64,
    pub connections_open: i64,
    /// Open connections by state, in [`ConnState::ALL`] order.
    pub connections_by_state: [i64; 4],
    pub protocol_errors: u64,
    pub handshake_failures: u64,
    pub publishes: u64,
    pub publishes_rejected: u64,
    pub commands_refused: u64,
    pub plays: u64,
    pub streams: i64,
    pub mirrors: i64,
    pub publishers: i64,
    pub subscribers: i64,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_relayed: u64,
    pub bytes_relayed: u64,
    pub messages_dropped: u64,
    pub skip_to_keyframe: u64,
    pub slow_subscriber_disconnects: u64,
    pub republish_wait_expired: u64,
    pub accept_errors: u64,
    pub handshake_timeouts: u64,
    pub gop_cache_overflows: u64,
}

impl ShardCounters {
    pub fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            connections_accepted: self.connections_accepted.get(),
            connections_open: self.connections_open.get(),
            connections_by_state: ConnState::ALL.map(|state| self.connections_in(state).get()),
            protocol_errors: self.protocol_errors.get(),
            handshake_failures: self.handshake_failures.get(),
            publishes: self.publishes.get(),
            publishes_rejected: self.publishes_rejected.get(),
            commands_refused: self.commands_refused.get(),
            plays: self.plays.get(),
            streams: self.streams.get(),
            mirrors: self.mirrors.get(),
            publishers: self.publishers.get(),
            subscribers: self.subscribers.get(),
            messages_in: self.messages_in.get(),
            bytes_in: self.bytes_in.get(),
            messages_relayed: self.messages_relayed.get(),
            bytes_relayed: self.bytes_relayed.get(),
            messages_dropped: self.messages_dropped.get(),
            skip_to_keyframe: self.skip_to_keyframe.get(),
            slow_subscriber_disconnects: self.slow_subscriber_disconnects.get(),
            republish_wait_expired: self.republish_wait_expired.get(),
            accept_errors: self.accept_errors.get(),
            handshake_timeouts: self.handshake_timeouts.get(),
            gop_cache_overflows: self.gop_cache_overflows.get(),
        }
    }
}

impl std::ops::Add for CountersSnapshot {
    type Output = CountersSnapshot;

    fn add(self, o: CountersSnapshot) -> CountersSnapshot {
        CountersSnapshot {
            connections_accepted: self.connections_accepted + o.connections_accepted,
            connections_open: self.connections_open + o.connections_open,
            connections_by_state: std::array::from_fn(|i| {
                self.connections_by_state[i] + o.connections_by_state[i]
            }),
            protocol_errors: self.protocol_errors + o.protocol_errors,
            handshake_failures: self.handshake_failures + o.handshake_failures,
            publishes: self.publishes + o.publishes,
            publishes_rejected: self.publishes_rejected + o.publishes_rejected,
            commands_refused: self.commands_refused + o.commands_refused,
            plays: self.plays + o.plays,
            streams: self.streams + o.streams,
            mirrors: self.mirrors + o.mirrors,
            publishers: self.publishers + o.publishers,
            subscribers: self.subscribers + o.subscribers,
            messages_in: self.messages_in + o.messages_in,
            bytes_in: self.bytes_in + o.bytes_in,
            messages_relayed: self.messages_relayed + o.messages_relayed,
            bytes_relayed: self.bytes_relayed + o.bytes_relayed,
            messages_dropped: self.messages_dropped + o.messages_dropped,
            skip_to_keyframe: self.skip_to_keyframe + o.skip_to_keyframe,
            slow_subscriber_disconnects: self.slow_subscriber_disconnects
                + o.slow_subscriber_disconnects,
            republish_wait_expired: self.republish_wait_expired + o.republish_wait_expired,
            accept_errors: self.accept_errors + o.accept_errors,
            handshake_timeouts: self.handshake_timeouts + o.handshake_timeouts,
            gop_cache_overflows: self.gop_cache_overflows + o.gop_cache_overflows,
        }
    }
}
