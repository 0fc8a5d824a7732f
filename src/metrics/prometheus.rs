//! `/metrics`: every shard's report rendered as Prometheus text exposition, through the
//! `prometheus-client` crate's encoder (names, escaping and types are its business).
//!
//! Shard series carry a `shard` label (sum them for the server); stream series carry `app` and
//! `stream` and are already merged across the owner and its mirrors.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;

use hdrhistogram::Histogram;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::stats::{DeliveryTotals, ShardStats, StreamStats};
use super::{ConnState, CountersSnapshot, Read};

pub(super) type Labels = Vec<(String, String)>;

/// Quantiles exported for each latency histogram.
const QUANTILES: [f64; 4] = [0.5, 0.9, 0.99, 0.999];

pub(super) struct Families {
    registry: Registry,
}

impl Families {
    pub(super) fn counter(&mut self, name: &str, help: &str, series: Vec<(Labels, u64)>) {
        let family = Family::<Labels, Counter>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).inc_by(value);
        }
        self.registry.register(name, help, family);
    }

    pub(super) fn gauge(&mut self, name: &str, help: &str, series: Vec<(Labels, i64)>) {
        let family = Family::<Labels, Gauge>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
    }

    pub(super) fn gauge_f64(&mut self, name: &str, help: &str, series: Vec<(Labels, f64)>) {
        let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
        for (labels, value) in series {
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help, family);
    }
}

pub(super) fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn shard_label(shard: &ShardStats) -> Labels {
    labels(&[("shard", shard.shard.to_string())])
}

/// A stream merged across its owner and mirrors.
pub(super) struct MergedStream<'a> {
    pub owner: Option<&'a StreamStats>,
    pub parts: Vec<&'a StreamStats>,
    pub wait: Histogram<u64>,
    pub time_to_first_frame: Histogram<u64>,
}

impl MergedStream<'_> {
    pub fn subscribers(&self) -> usize {
        self.parts.iter().map(|p| p.subscribers.len()).sum()
    }

    /// What the stream's players on every shard were sent and lost.
    pub fn delivery(&self) -> DeliveryTotals {
        let mut totals = DeliveryTotals::default();
        for part in &self.parts {
            totals += part.delivery;
        }
        totals
    }

    /// Bytes waiting for each of the stream's players' sockets, on every shard.
    fn queued_bytes(&self) -> impl Iterator<Item = usize> + '_ {
        self.parts.iter().flat_map(|p| &p.subscribers).map(|s| s.queue_bytes)
    }
}

/// Groups every shard's view of each stream, merging the latency histograms.
pub(super) fn merge_streams(shards: &[ShardStats]) -> BTreeMap<(String, String), MergedStream<'_>> {
    let mut merged: BTreeMap<(String, String), MergedStream<'_>> = BTreeMap::new();
    for stream in shards.iter().flat_map(|s| &s.streams) {
        let entry = merged.entry((stream.app.clone(), stream.name.clone())).or_insert_with(|| {
            MergedStream {
                owner: None,
                parts: Vec::new(),
                wait: super::stats::new_latency_histogram(),
                time_to_first_frame: super::stats::new_latency_histogram(),
            }
        });
        if !stream.mirror {
            entry.owner = Some(stream);
        }
        entry.parts.push(stream);
        let _ = entry.wait.add(&stream.wait);
        let _ = entry.time_to_first_frame.add(&stream.time_to_first_frame);
    }
    merged
}

/// One series per shard of `get`.
fn per_shard<T>(shards: &[ShardStats], get: impl Fn(&ShardStats) -> T) -> Vec<(Labels, T)> {
    shards.iter().map(|s| (shard_label(s), get(s))).collect()
}

/// Registers the listed shard gauges (`gauges`) or counters (`!gauges`), in list order.
fn shard_counters(f: &mut Families, shards: &[ShardStats], gauges: bool) {
    for field in CountersSnapshot::EXPORTED {
        match field.read {
            Read::Gauge(read) if gauges => {
                f.gauge(field.name, field.help, per_shard(shards, |s| read(&s.counters)))
            }
            Read::Counter(read) if !gauges => {
                f.counter(field.name, field.help, per_shard(shards, |s| read(&s.counters)))
            }
            Read::Gauge(_) | Read::Counter(_) => {}
        }
    }
}

/// Renders the Prometheus text exposition of `shards`.
pub fn render(shards: &[ShardStats]) -> String {
    let mut f = Families { registry: Registry::with_prefix("rtmp_relay") };

    // The shard gauges, connections by state, then the shard counters.
    shard_counters(&mut f, shards, true);
    let mut by_state = Vec::new();
    for shard in shards {
        for (state, count) in ConnState::ALL.iter().zip(shard.counters.connections_by_state) {
            by_state.push((
                labels(&[("shard", shard.shard.to_string()), ("state", state.as_str().to_owned())]),
                count,
            ));
        }
    }
    f.gauge(
        "connections",
        "Open RTMP connections by state: handshake (not yet connected to an app), connected \
         (neither publishing nor playing), publishing, playing",
        by_state,
    );
    shard_counters(&mut f, shards, false);

    f.gauge(
        "recordings_active",
        "Recordings writing now",
        per_shard(shards, |s| s.recording.recordings_active),
    );
    f.counter(
        "recordings_started",
        "Recordings started (one per recorded publish)",
        per_shard(shards, |s| s.recording.recordings_started),
    );
    f.counter(
        "recording_files_opened",
        "Recording files created (segments count one each)",
        per_shard(shards, |s| s.recording.files_opened),
    );
    f.counter(
        "recording_bytes",
        "Bytes written to recording files",
        per_shard(shards, |s| s.recording.recording_bytes),
    );
    f.counter(
        "recording_errors",
        "Recordings stopped by an error (write failure, full disk, disk too slow)",
        per_shard(shards, |s| s.recording.recording_errors),
    );
    f.counter(
        "recording_unsafe_keys",
        "Publishes not recorded because their key cannot be a safe file name",
        per_shard(shards, |s| s.recording.unsafe_keys_refused),
    );

    let mut errors = Vec::new();
    for shard in shards {
        for (kind, count) in &shard.protocol_errors {
            errors.push((
                labels(&[("shard", shard.shard.to_string()), ("kind", (*kind).to_owned())]),
                *count,
            ));
        }
    }
    f.counter("protocol_errors", "Connections closed for a protocol violation, by kind", errors);

    // Every limit, tripped or not, named after its flag.
    let mut limits = Vec::new();
    for shard in shards {
        for (limit, count) in shard.limits.iter() {
            limits.push((
                labels(&[("shard", shard.shard.to_string()), ("limit", limit.name().to_owned())]),
                count,
            ));
        }
    }
    f.counter("limits_tripped", "Limits that tripped, by name", limits);

    let mut sent = Vec::new();
    let mut received = Vec::new();
    let mut dropped = Vec::new();
    for shard in shards {
        for (peer, (s, r, d)) in
            shard.mesh.iter().enumerate().filter(|(peer, _)| *peer != shard.shard)
        {
            let pair = labels(&[("shard", shard.shard.to_string()), ("peer", peer.to_string())]);
            sent.push((pair.clone(), *s));
            received.push((pair.clone(), *r));
            dropped.push((pair, *d));
        }
    }
    f.counter("mesh_messages_sent", "Messages sent to another shard over the channel mesh", sent);
    f.counter("mesh_messages_received", "Messages received from another shard", received);
    f.counter(
        "mesh_frames_dropped",
        "Frames to another shard skipped because it fell behind",
        dropped,
    );

    let merged = merge_streams(shards);
    let stream_labels =
        |(app, name): &(String, String)| labels(&[("app", app.clone()), ("stream", name.clone())]);
    let mut bitrate = Vec::new();
    let mut uptime = Vec::new();
    let mut bytes_in = Vec::new();
    let mut messages_in = Vec::new();
    let mut subscribers = Vec::new();
    let mut stream_dropped = Vec::new();
    let mut messages_out = Vec::new();
    let mut bytes_out = Vec::new();
    let mut stream_skips = Vec::new();
    let mut stream_disconnects = Vec::new();
    let mut queued_sum = Vec::new();
    let mut queued_max = Vec::new();
    let mut gop = Vec::new();
    let mut wait = Vec::new();
    let mut ttff = Vec::new();
    for (key, stream) in &merged {
        let base = stream_labels(key);
        if let Some(owner) = stream.owner {
            if let Some(p) = &owner.publisher {
                bitrate.push((base.clone(), p.bitrate_bps as i64));
                uptime.push((base.clone(), p.uptime_secs));
            }
            bytes_in.push((base.clone(), owner.bytes_in));
            messages_in.push((base.clone(), owner.messages_in));
            gop.push((base.clone(), owner.gop_cache_bytes as i64));
        }
        subscribers.push((base.clone(), stream.subscribers() as i64));
        let delivery = stream.delivery();
        stream_dropped.push((base.clone(), delivery.dropped));
        messages_out.push((base.clone(), delivery.messages_out));
        bytes_out.push((base.clone(), delivery.bytes_out));
        stream_skips.push((base.clone(), delivery.skip_to_keyframe));
        stream_disconnects.push((base.clone(), delivery.slow_subscriber_disconnects));
        queued_sum.push((base.clone(), stream.queued_bytes().sum::<usize>() as i64));
        queued_max.push((base.clone(), stream.queued_bytes().max().unwrap_or(0) as i64));
        for (histogram, out) in
            [(&stream.wait, &mut wait), (&stream.time_to_first_frame, &mut ttff)]
        {
            if histogram.is_empty() {
                continue;
            }
            for q in QUANTILES {
                let mut l = base.clone();
                l.push(("quantile".into(), q.to_string()));
                out.push((l, histogram.value_at_quantile(q) as f64 / 1e6));
            }
            let mut l = base.clone();
            l.push(("quantile".into(), "1".into()));
            out.push((l, histogram.max() as f64 / 1e6));
        }
    }
    f.gauge(
        "stream_publisher_bitrate_bps",
        "Publisher ingress bitrate over the last second",
        bitrate,
    );
    f.gauge_f64(
        "stream_publisher_uptime_seconds",
        "Time since the current publisher started",
        uptime,
    );
    f.counter("stream_bytes_in", "Payload bytes received from the stream's publishers", bytes_in);
    f.counter("stream_messages_in", "Messages received from the stream's publishers", messages_in);
    f.gauge("stream_subscribers", "Players of the stream, all shards", subscribers);
    f.counter(
        "stream_messages_out",
        "Live messages queued to the stream's players, all shards, players who left included",
        messages_out,
    );
    f.counter(
        "stream_bytes_out",
        "Payload bytes of the live messages queued to the stream's players (compare with bytes_in)",
        bytes_out,
    );
    f.counter("stream_messages_dropped", "Messages the stream's players skipped", stream_dropped);
    f.counter(
        "stream_skip_to_keyframe",
        "Times one of the stream's players started skipping to the next keyframe",
        stream_skips,
    );
    f.counter(
        "stream_slow_subscriber_disconnects",
        "Players of the stream disconnected for falling too far behind or stalling",
        stream_disconnects,
    );
    f.gauge(
        "stream_players_queued_bytes",
        "Bytes waiting for the sockets of the stream's players, summed over its players",
        queued_sum,
    );
    f.gauge(
        "stream_player_queued_bytes_max",
        "Bytes waiting for the socket of the stream's most backed-up player",
        queued_max,
    );
    f.gauge("stream_gop_cache_bytes", "Bytes in the stream's late-join cache", gop);
    f.gauge_f64(
        "stream_viewer_wait_seconds",
        "Time a live frame waited between arriving from the publisher and being written to a player's socket (quantiles since start; 1 = max)",
        wait,
    );
    f.gauge_f64(
        "stream_time_to_first_frame_seconds",
        "Time from play to the first frame written to the player (quantiles since start; 1 = max)",
        ttff,
    );

    super::transport::render(&mut f, shards);

    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &f.registry);
    out
}
