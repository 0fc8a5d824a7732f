//! Access-control metrics: decisions, refused tokens, expired lifetimes (one set per shard,
//! written by that shard only) and the HTTP callbacks' own (written by the callback thread).
//!
//! Every series has a fixed label set made at start-up (apps are the configured ones plus
//! `_default`: a client-chosen app name never becomes a label), so a scrape reads atomics and
//! adds no work to the shards.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

type Labels = Vec<(String, String)>;

/// Counters with label sets fixed at start-up, incremented by index.
#[derive(Debug)]
pub struct LabeledCounters {
    labels: Vec<Labels>,
    values: Vec<AtomicU64>,
}

impl LabeledCounters {
    pub fn new(labels: Vec<Labels>) -> Self {
        let values = labels.iter().map(|_| AtomicU64::new(0)).collect();
        Self { labels, values }
    }

    /// One counter per combination of `dimensions` (name, values), the last varying fastest:
    /// index = ((i0 * len1 + i1) * len2 + i2) ...
    pub fn product(dimensions: &[(&str, Vec<String>)]) -> Self {
        let mut labels: Vec<Labels> = vec![Vec::new()];
        for (name, values) in dimensions {
            labels = labels
                .iter()
                .flat_map(|prefix| {
                    values.iter().map(move |v| {
                        let mut l = prefix.clone();
                        l.push(((*name).to_owned(), v.clone()));
                        l
                    })
                })
                .collect();
        }
        Self::new(labels)
    }

    pub fn inc(&self, index: usize) {
        if let Some(v) = self.values.get(index) {
            v.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn get(&self, index: usize) -> u64 {
        self.values.get(index).map_or(0, |v| v.load(Ordering::Relaxed))
    }

    pub fn total(&self) -> u64 {
        self.values.iter().map(|v| v.load(Ordering::Relaxed)).sum()
    }

    fn series(&self) -> impl Iterator<Item = (&Labels, u64)> {
        self.labels.iter().zip(self.values.iter().map(|v| v.load(Ordering::Relaxed)))
    }
}

/// A plain counter readable from another thread.
#[derive(Debug, Default)]
pub struct AtomicCounter(AtomicU64);

impl AtomicCounter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One shard's access decisions.
#[derive(Debug)]
pub struct AuthShardMetrics {
    /// `decisions_total{app,action,method,result}`.
    pub decisions: LabeledCounters,
    /// `tokens_refused_total{reason}`.
    pub tokens_refused: LabeledCounters,
    /// Sessions ended because their callback-given lifetime ran out.
    pub lifetimes_expired: AtomicCounter,
    /// Admitted sessions ended because their token's key was removed (when enforced).
    pub sessions_revoked: AtomicCounter,
    /// Decisions not made on the shard because the callback queue was full.
    pub callback_queue_full: AtomicCounter,
}

impl AuthShardMetrics {
    pub fn new(decision_dimensions: &[(&str, Vec<String>)], token_reasons: &[&str]) -> Self {
        Self {
            decisions: LabeledCounters::product(decision_dimensions),
            tokens_refused: LabeledCounters::product(&[(
                "reason",
                token_reasons.iter().map(|r| (*r).to_owned()).collect(),
            )]),
            lifetimes_expired: AtomicCounter::default(),
            sessions_revoked: AtomicCounter::default(),
            callback_queue_full: AtomicCounter::default(),
        }
    }
}

/// The callback thread's metrics.
#[derive(Debug)]
pub struct CallbackMetrics {
    /// `callback_failures_total{kind}`.
    pub failures: LabeledCounters,
    /// Seconds from request to answer of each decision call that reached the network.
    pub latency: Histogram,
    pub cache_hits: AtomicCounter,
    pub cache_misses: AtomicCounter,
    pub cache_evictions: AtomicCounter,
    pub in_flight: AtomicI64,
    pub done_sent: AtomicCounter,
    pub done_retries: AtomicCounter,
    /// Done events dropped: the queue was full (oldest dropped) or retries ran out.
    pub done_dropped: LabeledCounters,
}

/// Why a done event was dropped, in `done_dropped` order.
pub const DONE_DROP_REASONS: [&str; 2] = ["queue_full", "retries_exhausted"];

impl CallbackMetrics {
    pub fn new(failure_kinds: &[&str]) -> Self {
        let buckets = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
        Self {
            failures: LabeledCounters::product(&[(
                "kind",
                failure_kinds.iter().map(|k| (*k).to_owned()).collect(),
            )]),
            latency: Histogram::new(buckets),
            cache_hits: AtomicCounter::default(),
            cache_misses: AtomicCounter::default(),
            cache_evictions: AtomicCounter::default(),
            in_flight: AtomicI64::new(0),
            done_sent: AtomicCounter::default(),
            done_retries: AtomicCounter::default(),
            done_dropped: LabeledCounters::product(&[(
                "reason",
                DONE_DROP_REASONS.iter().map(|k| (*k).to_owned()).collect(),
            )]),
        }
    }
}

/// Key-file reloads.
#[derive(Debug, Default)]
pub struct KeyReloadMetrics {
    pub reloads: AtomicCounter,
    pub failures: AtomicCounter,
    pub keys: AtomicI64,
}

/// Everything access control reports, as the control plane reads it.
#[derive(Debug, Clone)]
pub struct AuthReport {
    pub shards: Vec<Arc<AuthShardMetrics>>,
    pub callbacks: Option<Arc<CallbackMetrics>>,
    pub keys: Option<Arc<KeyReloadMetrics>>,
}

fn counter_family<'a>(series: impl Iterator<Item = (&'a Labels, u64)>) -> Family<Labels, Counter> {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in series {
        family.get_or_create(labels).inc_by(value);
    }
    family
}

fn plain_counter(value: u64) -> Counter {
    let counter = Counter::default();
    counter.inc_by(value);
    counter
}

impl AuthReport {
    /// The Prometheus text exposition of the access-control series (summed over shards).
    pub fn render(&self) -> String {
        let mut registry = Registry::with_prefix("rtmp_relay_auth");
        let mut decisions: Vec<(Labels, u64)> = Vec::new();
        let mut refused: Vec<(Labels, u64)> = Vec::new();
        for shard in &self.shards {
            for (i, (labels, value)) in shard.decisions.series().enumerate() {
                match decisions.get_mut(i) {
                    Some(slot) => slot.1 += value,
                    None => decisions.push((labels.clone(), value)),
                }
            }
            for (i, (labels, value)) in shard.tokens_refused.series().enumerate() {
                match refused.get_mut(i) {
                    Some(slot) => slot.1 += value,
                    None => refused.push((labels.clone(), value)),
                }
            }
        }
        // Only combinations that happened: the full product is mostly zeros.
        let decisions = decisions.iter().filter(|(_, v)| *v > 0).map(|(l, v)| (l, *v));
        registry.register(
            "decisions",
            "Access decisions by app (configured apps, else _default), action, the method that \
             decided (open, token, callback, address, policy, name) and result (allow, deny)",
            counter_family(decisions),
        );
        registry.register(
            "tokens_refused",
            "Tokens refused, by reason",
            counter_family(refused.iter().map(|(l, v)| (l, *v))),
        );
        let sum = |get: fn(&AuthShardMetrics) -> u64| self.shards.iter().map(|s| get(s)).sum();
        registry.register(
            "lifetimes_expired",
            "Sessions ended when the lifetime a callback gave ran out",
            plain_counter(sum(|s| s.lifetimes_expired.get())),
        );
        registry.register(
            "sessions_revoked",
            "Admitted sessions ended because their token's key was removed",
            plain_counter(sum(|s| s.sessions_revoked.get())),
        );
        registry.register(
            "callback_queue_full",
            "Callback requests not queued (queue to the callback thread full): fail policy",
            plain_counter(sum(|s| s.callback_queue_full.get())),
        );
        if let Some(cb) = &self.callbacks {
            registry.register(
                "callback_failures",
                "Decision callbacks that failed, by kind (the action's fail policy applied)",
                counter_family(cb.failures.series()),
            );
            registry.register(
                "callback_duration_seconds",
                "Decision callback latency",
                cb.latency.clone(),
            );
            registry.register(
                "callback_cache_hits",
                "Decisions answered from the callback answer cache",
                plain_counter(cb.cache_hits.get()),
            );
            registry.register(
                "callback_cache_misses",
                "Decisions not in the callback answer cache",
                plain_counter(cb.cache_misses.get()),
            );
            registry.register(
                "callback_cache_evictions",
                "Answers evicted from a full callback answer cache before their TTL",
                plain_counter(cb.cache_evictions.get()),
            );
            let in_flight = Gauge::<i64, AtomicI64>::default();
            in_flight.set(cb.in_flight.load(Ordering::Relaxed));
            registry.register("callbacks_in_flight", "Decision callbacks in flight", in_flight);
            registry.register(
                "done_events_sent",
                "Done events delivered",
                plain_counter(cb.done_sent.get()),
            );
            registry.register(
                "done_event_retries",
                "Done event deliveries retried",
                plain_counter(cb.done_retries.get()),
            );
            registry.register(
                "done_events_dropped",
                "Done events dropped, by reason",
                counter_family(cb.done_dropped.series()),
            );
        }
        if let Some(keys) = &self.keys {
            registry.register(
                "key_reloads",
                "Key file reloads that took effect",
                plain_counter(keys.reloads.get()),
            );
            registry.register(
                "key_reload_failures",
                "Key file reloads refused (the keys in force stayed)",
                plain_counter(keys.failures.get()),
            );
            let count = Gauge::<i64, AtomicI64>::default();
            count.set(keys.keys.load(Ordering::Relaxed));
            registry.register("keys", "Verification keys in force", count);
        }
        let mut out = String::new();
        let _ = prometheus_text::encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_index_last_dimension_fastest() {
        let c = LabeledCounters::product(&[
            ("a", vec!["x".into(), "y".into()]),
            ("b", vec!["1".into(), "2".into(), "3".into()]),
        ]);
        c.inc(4); // y,2
        let (labels, value) = c.series().nth(4).unwrap();
        assert_eq!(value, 1);
        assert_eq!(labels[0].1, "y");
        assert_eq!(labels[1].1, "2");
        c.inc(99); // out of range: ignored, not a panic
        assert_eq!(c.total(), 1);
    }

    #[test]
    fn the_report_sums_shards_and_names_series() {
        let dims = [
            ("app", vec!["live".to_owned()]),
            ("action", vec!["publish".to_owned()]),
            ("method", vec!["token".to_owned()]),
            ("result", vec!["allow".to_owned(), "deny".to_owned()]),
        ];
        let a = Arc::new(AuthShardMetrics::new(&dims, &["expired"]));
        let b = Arc::new(AuthShardMetrics::new(&dims, &["expired"]));
        a.decisions.inc(1);
        b.decisions.inc(1);
        b.tokens_refused.inc(0);
        let text = AuthReport { shards: vec![a, b], callbacks: None, keys: None }.render();
        assert!(
            text.contains(
                "rtmp_relay_auth_decisions_total{app=\"live\",action=\"publish\",\
                 method=\"token\",result=\"deny\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("rtmp_relay_auth_tokens_refused_total{reason=\"expired\"} 1"));
    }
}
