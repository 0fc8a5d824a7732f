//! RTMPS and outbound relay metrics: TLS handshakes per shard, and each push destination's
//! state, traffic and failures. Kept apart from [`super::ShardCounters`] (the RTMP counters):
//! shards fill [`TransportStats`] in their report, `/metrics` and `/api/relays` show it.

use std::cell::RefCell;

use serde::Serialize;

use super::Counter;

/// TLS handshakes on one shard's RTMPS listener.
#[derive(Debug, Default)]
pub struct TlsCounters {
    pub handshakes_ok: Counter,
    /// Failed handshakes by reason (`tls::failure_kind`, `abandoned` for a peer that left or
    /// timed out half way).
    failures: RefCell<Vec<(&'static str, u64)>>,
}

impl TlsCounters {
    pub fn failed(&self, reason: &'static str) {
        let mut failures = self.failures.borrow_mut();
        match failures.iter_mut().find(|(k, _)| *k == reason) {
            Some((_, n)) => *n += 1,
            None => failures.push((reason, 1)),
        }
    }

    pub fn snapshot(&self) -> TlsSnapshot {
        TlsSnapshot {
            handshakes_ok: self.handshakes_ok.get(),
            handshakes_failed: self.failures.borrow().clone(),
        }
    }
}

/// A copy of [`TlsCounters`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TlsSnapshot {
    pub handshakes_ok: u64,
    pub handshakes_failed: Vec<(&'static str, u64)>,
}

impl TlsSnapshot {
    pub fn failed(&self, reason: &str) -> u64 {
        self.handshakes_failed.iter().filter(|(k, _)| *k == reason).map(|(_, n)| n).sum()
    }
}

/// Where a push destination is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushState {
    /// Connecting, handshaking, or waiting for `NetStream.Publish.Start`.
    Connecting,
    /// Publishing: frames flow.
    Live,
    /// Waiting before the next attempt after a failure.
    Backoff,
}

impl PushState {
    pub const ALL: [PushState; 3] = [PushState::Connecting, PushState::Live, PushState::Backoff];

    pub fn as_str(self) -> &'static str {
        match self {
            PushState::Connecting => "connecting",
            PushState::Live => "live",
            PushState::Backoff => "backoff",
        }
    }
}

/// One push of one stream to one destination, as a shard reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PushStats {
    pub app: String,
    pub name: String,
    /// The destination URL with its stream key masked.
    pub destination: String,
    pub state: PushState,
    /// Chunk bytes written to the destination (frames and commands), all attempts.
    pub bytes_out: u64,
    /// Attempts that reached `NetStream.Publish.Start`.
    pub connects: u64,
    /// Attempts that failed or were cut, each followed by a backoff.
    pub failures: u64,
    /// Frames the slow-sink policy dropped for this destination.
    pub dropped: u64,
    /// Seconds since the last attempt reached publishing (`None`: never yet).
    pub since_last_success_secs: Option<f64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// Where a pull (a local stream fed from an upstream URL) is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PullState {
    /// Not running: an on-demand pull nobody watches.
    Idle,
    /// Connecting, handshaking, or waiting for `NetStream.Play.Start`.
    Connecting,
    /// Playing the upstream: its frames feed the local stream.
    Live,
    /// Waiting before the next attempt after a failure.
    Backoff,
}

impl PullState {
    pub const ALL: [PullState; 4] =
        [PullState::Idle, PullState::Connecting, PullState::Live, PullState::Backoff];

    pub fn as_str(self) -> &'static str {
        match self {
            PullState::Idle => "idle",
            PullState::Connecting => "connecting",
            PullState::Live => "live",
            PullState::Backoff => "backoff",
        }
    }
}

/// One pull, as the shard that owns its stream reports it.
#[derive(Debug, Clone, Serialize)]
pub struct PullStats {
    pub app: String,
    pub name: String,
    /// The upstream URL with its stream name masked.
    pub source: String,
    /// `always` or `on-demand`.
    pub mode: &'static str,
    pub state: PullState,
    /// Bytes read from the upstream, all attempts.
    pub bytes_in: u64,
    /// Attempts that reached `NetStream.Play.Start`.
    pub connects: u64,
    /// Attempts that failed or were cut, each followed by a backoff.
    pub failures: u64,
    /// Seconds since the last attempt reached playing (`None`: never yet).
    pub since_last_success_secs: Option<f64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// What one shard reports about RTMPS and its outbound relays.
#[derive(Debug, Clone, Default)]
pub struct TransportStats {
    pub tls: TlsSnapshot,
    pub pushes: Vec<PushStats>,
    pub pulls: Vec<PullStats>,
}

/// `/api/relays`: every shard's TLS counts, every push and every pull.
#[derive(Debug, Serialize)]
pub struct RelaysJson {
    pub tls_handshakes_ok: u64,
    pub tls_handshakes_failed: Vec<(&'static str, u64)>,
    pub pushes: Vec<PushStats>,
    pub pulls: Vec<PullStats>,
}

impl RelaysJson {
    pub fn of(shards: &[super::ShardStats]) -> RelaysJson {
        let mut failed: Vec<(&'static str, u64)> = Vec::new();
        for (reason, n) in shards.iter().flat_map(|s| &s.transport.tls.handshakes_failed) {
            match failed.iter_mut().find(|(k, _)| k == reason) {
                Some((_, total)) => *total += n,
                None => failed.push((reason, *n)),
            }
        }
        RelaysJson {
            tls_handshakes_ok: shards.iter().map(|s| s.transport.tls.handshakes_ok).sum(),
            tls_handshakes_failed: failed,
            pushes: shards.iter().flat_map(|s| s.transport.pushes.iter().cloned()).collect(),
            pulls: shards.iter().flat_map(|s| s.transport.pulls.iter().cloned()).collect(),
        }
    }
}

/// The Prometheus families of this file.
pub(super) fn render(f: &mut super::prometheus::Families, shards: &[super::ShardStats]) {
    let shard = |s: &super::ShardStats| ("shard", s.shard.to_string());
    f.counter(
        "tls_handshakes",
        "RTMPS handshakes completed by the shard's TLS listener",
        shards
            .iter()
            .map(|s| (super::prometheus::labels(&[shard(s)]), s.transport.tls.handshakes_ok))
            .collect(),
    );
    let mut failed = Vec::new();
    for s in shards {
        for (reason, n) in &s.transport.tls.handshakes_failed {
            failed
                .push((super::prometheus::labels(&[shard(s), ("reason", reason.to_string())]), *n));
        }
    }
    f.counter("tls_handshake_failures", "RTMPS handshakes that failed, by reason", failed);
    let pushes: Vec<&PushStats> = shards.iter().flat_map(|s| &s.transport.pushes).collect();
    let labels = |p: &PushStats| {
        super::prometheus::labels(&[
            ("app", p.app.clone()),
            ("stream", p.name.clone()),
            ("destination", p.destination.clone()),
        ])
    };
    let per_push = |get: fn(&PushStats) -> u64| -> Vec<_> {
        pushes.iter().map(|p| (labels(p), get(p))).collect()
    };
    f.counter("push_bytes", "Bytes written to the push destination", per_push(|p| p.bytes_out));
    f.counter(
        "push_connects",
        "Push attempts that reached NetStream.Publish.Start",
        per_push(|p| p.connects),
    );
    f.counter(
        "push_failures",
        "Push attempts that failed or were cut (each followed by a reconnect after a backoff)",
        per_push(|p| p.failures),
    );
    f.counter(
        "push_dropped_frames",
        "Frames the slow-sink policy dropped for the push destination",
        per_push(|p| p.dropped),
    );
    let mut states = Vec::new();
    for p in &pushes {
        for state in PushState::ALL {
            let mut l = labels(p);
            l.push(("state".to_string(), state.as_str().to_string()));
            states.push((l, i64::from(p.state == state)));
        }
    }
    f.gauge("push_state", "1 for the push destination's current state", states);
    f.gauge_f64(
        "push_seconds_since_success",
        "Seconds since the push last reached publishing (absent before the first success)",
        pushes.iter().filter_map(|p| p.since_last_success_secs.map(|s| (labels(p), s))).collect(),
    );
    render_pulls(f, shards);
}

/// The pulls' families.
fn render_pulls(f: &mut super::prometheus::Families, shards: &[super::ShardStats]) {
    let pulls: Vec<&PullStats> = shards.iter().flat_map(|s| &s.transport.pulls).collect();
    let labels = |p: &PullStats| {
        super::prometheus::labels(&[
            ("app", p.app.clone()),
            ("stream", p.name.clone()),
            ("source", p.source.clone()),
            ("mode", p.mode.to_string()),
        ])
    };
    let per_pull = |get: fn(&PullStats) -> u64| -> Vec<_> {
        pulls.iter().map(|p| (labels(p), get(p))).collect()
    };
    f.counter("pull_bytes", "Bytes read from the pull's upstream", per_pull(|p| p.bytes_in));
    f.counter(
        "pull_connects",
        "Pull attempts that reached NetStream.Play.Start",
        per_pull(|p| p.connects),
    );
    f.counter(
        "pull_failures",
        "Pull attempts that failed or were cut (each followed by a reconnect after a backoff)",
        per_pull(|p| p.failures),
    );
    let mut states = Vec::new();
    for p in &pulls {
        for state in PullState::ALL {
            let mut l = labels(p);
            l.push(("state".to_string(), state.as_str().to_string()));
            states.push((l, i64::from(p.state == state)));
        }
    }
    f.gauge("pull_state", "1 for the pull's current state", states);
    f.gauge_f64(
        "pull_seconds_since_success",
        "Seconds since the pull last reached playing (absent before the first success)",
        pulls.iter().filter_map(|p| p.since_last_success_secs.map(|s| (labels(p), s))).collect(),
    );
}
