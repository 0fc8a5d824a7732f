//! The HTTP control plane: `/metrics`, `/api/streams`, `/api/streams/{app}/{key}`, `/healthz`,
//! and `POST /reload` (from a loopback address only).
//!
//! It runs on its own thread with `tiny_http`, never on a shard: a scrape asks every shard for
//! a report through the runtime's control channel (`gather`) and does all formatting here, so
//! it adds no lock and no work to the media path beyond the shard building its snapshot.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use serde::Serialize;
use tiny_http::{Header, Response, Server};
use tracing::{info, warn};

use super::prometheus::{merge_streams, render, MergedStream};
use super::stats::{AudioStats, PublisherStats, ShardStats, SubscriberStats, VideoStats};

/// Asks every shard for its report; `None` if a shard did not answer.
pub type Gather = Arc<dyn Fn() -> Option<Vec<ShardStats>> + Send + Sync>;

/// More Prometheus text for `/metrics`, read without asking the shards (access control's
/// atomics, see `metrics::auth`).
pub type ExtraMetrics = Arc<dyn Fn() -> String + Send + Sync>;

/// Reloads the config file: `Ok` with a JSON report of what changed, `Err` with why the file
/// was refused (the running config is kept).
pub type ReloadHook = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Whether a request from `peer` may reload the config. The control plane usually listens on
/// localhost only; when it is opened wider for scraping, a reload still needs a local peer.
pub fn reload_allowed(peer: Option<&SocketAddr>) -> bool {
    peer.is_some_and(|peer| peer.ip().is_loopback())
}

#[derive(Debug, thiserror::Error)]
#[error("cannot serve HTTP on {addr}: {reason}")]
pub struct HttpError {
    addr: SocketAddr,
    reason: String,
}

/// The running control plane; dropping it stops the thread.
pub struct HttpServer {
    server: Arc<Server>,
    local_addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl HttpServer {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the control plane on `addr`.
pub fn serve(
    addr: SocketAddr,
    gather: Gather,
    extra: Option<ExtraMetrics>,
    reload: Option<ReloadHook>,
) -> Result<HttpServer, HttpError> {
    let server = Server::http(addr).map_err(|e| HttpError { addr, reason: e.to_string() })?;
    let local_addr = server.server_addr().to_ip().unwrap_or(addr);
    let server = Arc::new(server);
    let thread = {
        let server = server.clone();
        std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let response = if request.url().split('?').next() == Some("/reload") {
                        reload_route(&request, reload.as_ref())
                    } else {
                        route(request.url(), &gather, extra.as_ref())
                    };
                    if let Err(e) = request.respond(response) {
                        warn!(error = %e, "http response failed");
                    }
                }
            })
            .map_err(|e| HttpError { addr, reason: e.to_string() })?
    };
    info!(addr = %local_addr, "http control plane listening");
    Ok(HttpServer { server, local_addr, thread: Some(thread) })
}

type HttpResponse = Response<std::io::Cursor<Vec<u8>>>;

fn respond(status: u16, content_type: &str, body: String) -> HttpResponse {
    let mut response = Response::from_string(body).with_status_code(status);
    if let Ok(header) = Header::from_bytes("Content-Type", content_type) {
        response = response.with_header(header);
    }
    response
}

fn json<T: Serialize>(value: &T) -> HttpResponse {
    match serde_json::to_string_pretty(value) {
        Ok(body) => respond(200, "application/json", body),
        Err(e) => respond(500, "text/plain", format!("serialising failed: {e}\n")),
    }
}

/// `POST /reload`: 200 with the report, 400 when the file is refused, 403 from another host,
/// 405 for another method, 404 when this server has no config to reload (in-process servers).
fn reload_route(request: &tiny_http::Request, reload: Option<&ReloadHook>) -> HttpResponse {
    if *request.method() != tiny_http::Method::Post {
        return respond(405, "text/plain", "use POST /reload\n".into());
    }
    if !reload_allowed(request.remote_addr()) {
        return respond(403, "text/plain", "reload is allowed from localhost only\n".into());
    }
    match reload {
        None => respond(404, "text/plain", "this server has no config file to reload\n".into()),
        Some(reload) => match reload() {
            Ok(report) => respond(200, "application/json", report),
            Err(refused) => respond(400, "text/plain", format!("{refused}\n")),
        },
    }
}

fn route(url: &str, gather: &Gather, extra: Option<&ExtraMetrics>) -> HttpResponse {
    let path = url.split('?').next().unwrap_or("");
    let gathered =
        || gather().ok_or_else(|| respond(503, "text/plain", "a shard did not answer\n".into()));
    match path {
        "/healthz" => match gathered() {
            Ok(_) => respond(200, "text/plain", "ok\n".into()),
            Err(e) => e,
        },
        "/metrics" => match gathered() {
            Ok(shards) => {
                let mut text = render(&shards);
                if let Some(extra) = extra {
                    text.push_str(&extra());
                }
                respond(200, "text/plain; version=0.0.4; charset=utf-8", text)
            }
            Err(e) => e,
        },
        "/api/relays" => match gathered() {
            Ok(shards) => json(&super::RelaysJson::of(&shards)),
            Err(e) => e,
        },
        "/api/streams" => match gathered() {
            Ok(shards) => {
                let streams: Vec<StreamJson> =
                    merge_streams(&shards).values().map(StreamJson::from).collect();
                json(&StreamsJson { streams })
            }
            Err(e) => e,
        },
        _ => match path.strip_prefix("/api/streams/").and_then(|rest| rest.rsplit_once('/')) {
            Some((app, key)) => match gathered() {
                Ok(shards) => {
                    let merged = merge_streams(&shards);
                    match merged.get(&(app.to_owned(), key.to_owned())) {
                        Some(stream) => json(&StreamJson::from(stream)),
                        None => respond(404, "text/plain", "no such stream\n".into()),
                    }
                }
                Err(e) => e,
            },
            None => respond(404, "text/plain", "not found\n".into()),
        },
    }
}

#[derive(Serialize)]
struct StreamsJson {
    streams: Vec<StreamJson>,
}

/// Latency quantiles in milliseconds.
#[derive(Serialize)]
struct Quantiles {
    count: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

impl From<&hdrhistogram::Histogram<u64>> for Quantiles {
    fn from(h: &hdrhistogram::Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Quantiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// One stream in `/api/streams`: documented in the README.
#[derive(Serialize)]
struct StreamJson {
    app: String,
    name: String,
    owner_shard: Option<usize>,
    publisher: Option<PublisherStats>,
    video: Option<VideoStats>,
    audio: Option<AudioStats>,
    bytes_in: u64,
    messages_in: u64,
    gop_cache_bytes: usize,
    subscriber_count: usize,
    dropped: u64,
    messages_out: u64,
    bytes_out: u64,
    skip_to_keyframe: u64,
    slow_subscriber_disconnects: u64,
    viewer_wait: Quantiles,
    time_to_first_frame: Quantiles,
    subscribers: Vec<SubscriberStats>,
}

impl From<&MergedStream<'_>> for StreamJson {
    fn from(stream: &MergedStream<'_>) -> Self {
        let first = stream.parts.first();
        let owner = stream.owner;
        let delivery = stream.delivery();
        StreamJson {
            app: first.map(|s| s.app.clone()).unwrap_or_default(),
            name: first.map(|s| s.name.clone()).unwrap_or_default(),
            owner_shard: owner.map(|o| o.shard),
            publisher: owner.and_then(|o| o.publisher.clone()),
            video: owner.and_then(|o| o.video.clone()),
            audio: owner.and_then(|o| o.audio.clone()),
            bytes_in: owner.map_or(0, |o| o.bytes_in),
            messages_in: owner.map_or(0, |o| o.messages_in),
            gop_cache_bytes: owner.map_or(0, |o| o.gop_cache_bytes),
            subscriber_count: stream.subscribers(),
            dropped: delivery.dropped,
            messages_out: delivery.messages_out,
            bytes_out: delivery.bytes_out,
            skip_to_keyframe: delivery.skip_to_keyframe,
            slow_subscriber_disconnects: delivery.slow_subscriber_disconnects,
            viewer_wait: Quantiles::from(&stream.wait),
            time_to_first_frame: Quantiles::from(&stream.time_to_first_frame),
            subscribers: stream.parts.iter().flat_map(|p| p.subscribers.iter().cloned()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_local_peer_may_reload() {
        let peer = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(reload_allowed(Some(&peer("127.0.0.1:40000"))));
        assert!(reload_allowed(Some(&peer("[::1]:40000"))));
        assert!(!reload_allowed(Some(&peer("10.0.0.7:40000"))));
        assert!(!reload_allowed(Some(&peer("[2001:db8::1]:40000"))));
        assert!(!reload_allowed(None));
    }
}
