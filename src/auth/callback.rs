//! HTTP callbacks, off the shards: one thread of its own runs a single-threaded tokio runtime
//! and hyper's HTTP/1 client. A shard hands it a request with `try_send` (never waits) and gets
//! the answer as a value on a oneshot channel, which the asking connection awaits with a
//! deadline; no other connection and no lock is involved.
//!
//! Bounds, each a knob with a counter: a deadline per call; a cap on calls in flight (over it,
//! the fail policy applies at once); a TTL cache of allow and deny answers, capped in entries;
//! a cap on answer bytes; a bounded queue of done events (oldest dropped when full), delivered
//! in order with a bounded number of retries.
//!
//! Every request is signed: header `X-Rtmp-Relay-Signature: sha256=<hex HMAC-SHA256 of the
//! body with the shared secret>`.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::Uri;
use serde::Serialize;
use sha2::Sha256;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use crate::metrics::auth::CallbackMetrics;

/// The header carrying the request's signature.
pub const SIGNATURE_HEADER: &str = "x-rtmp-relay-signature";

/// Which callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    Publish,
    Play,
    PublishDone,
    PlayDone,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Publish => "on_publish",
            Event::Play => "on_play",
            Event::PublishDone => "on_publish_done",
            Event::PlayDone => "on_play_done",
        }
    }
}

/// Why a decision call gave no answer. The action's fail policy decides then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailKind {
    /// The deadline passed.
    Timeout,
    /// No connection (refused, unreachable, name not resolved).
    Connect,
    /// The connection broke mid-exchange.
    Io,
    /// A status other than 2xx or 4xx.
    Status,
    /// A 2xx whose body is not the JSON object expected.
    BadBody,
    /// An answer over `max_answer_bytes`.
    TooLarge,
    /// Over `max_in_flight`, or the queue to the callback thread was full.
    OverCapacity,
    /// The callback thread is gone (shutting down).
    Unavailable,
}

impl FailKind {
    pub const ALL: [FailKind; 8] = [
        FailKind::Timeout,
        FailKind::Connect,
        FailKind::Io,
        FailKind::Status,
        FailKind::BadBody,
        FailKind::TooLarge,
        FailKind::OverCapacity,
        FailKind::Unavailable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FailKind::Timeout => "timeout",
            FailKind::Connect => "connect",
            FailKind::Io => "io",
            FailKind::Status => "status",
            FailKind::BadBody => "bad_body",
            FailKind::TooLarge => "too_large",
            FailKind::OverCapacity => "over_capacity",
            FailKind::Unavailable => "unavailable",
        }
    }

    pub fn index(self) -> usize {
        Self::ALL.iter().position(|k| *k == self).unwrap_or(0)
    }
}

/// A decision callback's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 2xx. `name`: the public name of the stream; `lifetime`: the session ends then.
    Allow {
        name: Option<String>,
        lifetime: Option<Duration>,
    },
    /// 4xx, with the backend's reason (logged, not shown to the client).
    Deny {
        reason: Option<String>,
    },
    Failed(FailKind),
}

/// Where a callback goes: `http://host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    uri: Uri,
    host: String,
    port: u16,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let uri: Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "{url:?}: https callbacks are not supported; use http to a backend on the \
                     same host or network (requests are HMAC-signed), or a TLS sidecar"
                ))
            }
            _ => return Err(format!("{url:?}: a callback URL starts with http://")),
        }
        let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let port = uri.port_u16().unwrap_or(80);
        Ok(Target { uri, host, port })
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.uri)
    }
}

/// The callback thread's settings.
#[derive(Clone)]
pub struct CallbackConfig {
    pub on_publish: Option<Target>,
    pub on_play: Option<Target>,
    pub on_publish_done: Option<Target>,
    pub on_play_done: Option<Target>,
    /// The HMAC key requests are signed with.
    pub secret: Vec<u8>,
    /// Deadline of one call: connect, request and the whole answer.
    pub timeout: Duration,
    /// Decision calls in flight at once; over it the fail policy applies.
    pub max_in_flight: usize,
    /// How long an allow or deny answer is reused for the same request; zero: no cache.
    pub cache_ttl: Duration,
    pub cache_max_entries: usize,
    /// Largest answer body read.
    pub max_answer_bytes: usize,
    /// Done events waiting for delivery; when full the oldest is dropped.
    pub done_queue: usize,
    /// Delivery attempts of a done event after the first.
    pub done_retries: u32,
    /// First pause before retrying a done event (doubles each time).
    pub done_backoff: Duration,
}

impl std::fmt::Debug for CallbackConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackConfig")
            .field("on_publish", &self.on_publish)
            .field("on_play", &self.on_play)
            .field("on_publish_done", &self.on_publish_done)
            .field("on_play_done", &self.on_play_done)
            .field("secret", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("max_in_flight", &self.max_in_flight)
            .field("cache_ttl", &self.cache_ttl)
            .finish_non_exhaustive()
    }
}

impl CallbackConfig {
    fn target(&self, event: Event) -> Option<&Target> {
        match event {
            Event::Publish => self.on_publish.as_ref(),
            Event::Play => self.on_play.as_ref(),
            Event::PublishDone => self.on_publish_done.as_ref(),
            Event::PlayDone => self.on_play_done.as_ref(),
        }
    }

    pub fn has(&self, event: Event) -> bool {
        self.target(event).is_some()
    }
}

/// The JSON body of every callback.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CallbackBody {
    pub event: &'static str,
    pub action: &'static str,
    pub app: String,
    /// The name as the client gave it (for a publisher, possibly its secret key).
    pub name: String,
    /// The name players use, once known (done events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_name: Option<String>,
    /// The stream name's query, without `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// The tcUrl, without `token`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tc_url: Option<String>,
    pub client_addr: String,
    pub client_port: u16,
    pub conn_id: u64,
    pub node_id: String,
    pub shard: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

impl CallbackBody {
    /// What identifies the request for the answer cache: everything but the connection.
    fn cache_key(&self) -> String {
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.event,
            self.app,
            self.name,
            self.query.as_deref().unwrap_or(""),
            self.tc_url.as_deref().unwrap_or(""),
            self.client_addr
        )
    }
}

enum Job {
    Decide { event: Event, body: CallbackBody, reply: oneshot::Sender<Answer> },
    Done { event: Event, body: CallbackBody },
}

/// A shard's handle to the callback thread. Never blocks.
#[derive(Debug, Clone)]
pub struct CallbackClient {
    jobs: mpsc::Sender<Job>,
    has: [bool; 4],
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Decide { event, .. } => write!(f, "Decide({})", event.as_str()),
            Job::Done { event, .. } => write!(f, "Done({})", event.as_str()),
        }
    }
}

impl CallbackClient {
    pub fn has(&self, event: Event) -> bool {
        self.has[event as usize]
    }

    /// Queues a decision call; the answer arrives on the receiver. `Err` when the queue to the
    /// callback thread is full or the thread is gone: the caller applies the fail policy.
    pub fn decide(
        &self,
        event: Event,
        body: CallbackBody,
    ) -> Result<oneshot::Receiver<Answer>, FailKind> {
        let (reply, answer) = oneshot::channel();
        match self.jobs.try_send(Job::Decide { event, body, reply }) {
            Ok(()) => Ok(answer),
            Err(mpsc::error::TrySendError::Full(_)) => Err(FailKind::OverCapacity),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(FailKind::Unavailable),
        }
    }

    /// Queues a done event. `false` if it could not be queued (counted by the caller).
    pub fn notify(&self, event: Event, body: CallbackBody) -> bool {
        self.jobs.try_send(Job::Done { event, body }).is_ok()
    }
}

/// The running callback thread; dropping it delivers what it can of the queued done events
/// (within one call deadline) and joins the thread.
#[derive(Debug)]
pub struct CallbackThread {
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for CallbackThread {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Starts the callback thread. The job queue holds `max_in_flight + done_queue` requests, so
/// a shard's `try_send` fails only when the thread is truly behind.
pub fn start(
    config: CallbackConfig,
    metrics: Arc<CallbackMetrics>,
) -> std::io::Result<(CallbackClient, CallbackThread)> {
    let capacity = (config.max_in_flight + config.done_queue).max(1);
    let (jobs, receiver) = mpsc::channel(capacity);
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let has = [
        config.has(Event::Publish),
        config.has(Event::Play),
        config.has(Event::PublishDone),
        config.has(Event::PlayDone),
    ];
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let thread = std::thread::Builder::new().name("auth-callbacks".into()).spawn(move || {
        let local = tokio::task::LocalSet::new();
        local.block_on(&runtime, run(config, metrics, receiver, shutdown_rx));
    })?;
    Ok((
        CallbackClient { jobs, has },
        CallbackThread { shutdown: Some(shutdown_tx), thread: Some(thread) },
    ))
}

struct State {
    config: CallbackConfig,
    metrics: Arc<CallbackMetrics>,
    in_flight: Cell<usize>,
    cache: RefCell<Cache>,
    done: RefCell<VecDeque<(Event, CallbackBody)>>,
    done_ready: Notify,
}

/// Allow and deny answers by request, for `ttl`, at most `max` entries (the oldest go first).
struct Cache {
    ttl: Duration,
    max: usize,
    entries: HashMap<String, (Instant, Answer)>,
    order: VecDeque<(Instant, String)>,
}

impl Cache {
    fn get(&mut self, key: &str, now: Instant) -> Option<Answer> {
        match self.entries.get(key) {
            Some((expires, answer)) if *expires > now => Some(answer.clone()),
            Some(_) => {
                self.entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Inserts; returns how many live entries were evicted to make room.
    fn insert(&mut self, key: String, answer: Answer, now: Instant) -> u64 {
        if self.ttl.is_zero() || self.max == 0 {
            return 0;
        }
        let mut evicted = 0;
        while self.entries.len() >= self.max || self.order.len() >= self.max.saturating_mul(2) {
            let Some((expires, old)) = self.order.pop_front() else { break };
            // The order list may hold keys since replaced: remove only the entry it names.
            if self.entries.get(&old).is_some_and(|(e, _)| *e == expires) {
                self.entries.remove(&old);
                if expires > now {
                    evicted += 1;
                }
            }
        }
        let expires = now + self.ttl;
        self.order.push_back((expires, key.clone()));
        self.entries.insert(key, (expires, answer));
        evicted
    }
}

async fn run(
    config: CallbackConfig,
    metrics: Arc<CallbackMetrics>,
    mut jobs: mpsc::Receiver<Job>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let state = Rc::new(State {
        cache: RefCell::new(Cache {
            ttl: config.cache_ttl,
            max: config.cache_max_entries,
            entries: HashMap::new(),
            order: VecDeque::new(),
        }),
        config,
        metrics,
        in_flight: Cell::new(0),
        done: RefCell::new(VecDeque::new()),
        done_ready: Notify::new(),
    });
    let done_worker = tokio::task::spawn_local(deliver_done_events(state.clone()));
    loop {
        tokio::select! {
            biased;
            job = jobs.recv() => match job {
                Some(job) => accept(&state, job),
                None => break,
            },
            _ = &mut shutdown => break,
        }
    }
    // What was queued before the shutdown still gets one deadline's worth of delivery.
    while let Ok(job) = jobs.try_recv() {
        accept(&state, job);
    }
    done_worker.abort();
    let deadline = Instant::now() + state.config.timeout;
    let mut left = state.done.borrow().len();
    while left > 0 && Instant::now() < deadline {
        let Some((event, body)) = state.done.borrow_mut().pop_front() else { break };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if matches!(call(&state, event, &body, remaining).await, Ok((status, _)) if (200..300).contains(&status))
        {
            state.metrics.done_sent.inc();
        }
        left -= 1;
    }
    let lost = state.done.borrow().len();
    if lost > 0 {
        warn!(lost, "shutdown: done events not delivered");
    }
}

fn accept(state: &Rc<State>, job: Job) {
    match job {
        Job::Decide { event, body, reply } => {
            let key = body.cache_key();
            let now = Instant::now();
            if let Some(answer) = state.cache.borrow_mut().get(&key, now) {
                state.metrics.cache_hits.inc();
                let _ = reply.send(answer);
                return;
            }
            state.metrics.cache_misses.inc();
            if state.in_flight.get() >= state.config.max_in_flight {
                state.metrics.failures.inc(FailKind::OverCapacity.index());
                let _ = reply.send(Answer::Failed(FailKind::OverCapacity));
                return;
            }
            state.in_flight.set(state.in_flight.get() + 1);
            state.metrics.in_flight.store(state.in_flight.get() as i64, ORDER);
            let state = state.clone();
            tokio::task::spawn_local(async move {
                let started = Instant::now();
                let answer = decide(&state, event, &body).await;
                state.metrics.latency.observe(started.elapsed().as_secs_f64());
                state.in_flight.set(state.in_flight.get() - 1);
                state.metrics.in_flight.store(state.in_flight.get() as i64, ORDER);
                match &answer {
                    Answer::Failed(kind) => state.metrics.failures.inc(kind.index()),
                    answer => {
                        let evicted =
                            state.cache.borrow_mut().insert(key, answer.clone(), Instant::now());
                        for _ in 0..evicted {
                            state.metrics.cache_evictions.inc();
                        }
                    }
                }
                let _ = reply.send(answer);
            });
        }
        Job::Done { event, body } => {
            let mut done = state.done.borrow_mut();
            if done.len() >= state.config.done_queue.max(1) {
                done.pop_front();
                state.metrics.done_dropped.inc(0);
            }
            done.push_back((event, body));
            state.done_ready.notify_one();
        }
    }
}

const ORDER: std::sync::atomic::Ordering = std::sync::atomic::Ordering::Relaxed;

/// Done events, one at a time in queue order (so in order per stream), each retried with
/// doubling pauses before it is given up.
async fn deliver_done_events(state: Rc<State>) {
    loop {
        let next = state.done.borrow().front().cloned();
        let Some((event, body)) = next else {
            state.done_ready.notified().await;
            continue;
        };
        let mut pause = state.config.done_backoff;
        let mut attempt = 0;
        let delivered = loop {
            match call(&state, event, &body, state.config.timeout).await {
                Ok((status, _)) if (200..300).contains(&status) => break true,
                outcome => {
                    let why = match outcome {
                        Ok((status, _)) => format!("status {status}"),
                        Err(kind) => kind.as_str().to_owned(),
                    };
                    if attempt >= state.config.done_retries {
                        warn!(event = event.as_str(), why, "done event dropped after retries");
                        break false;
                    }
                    debug!(event = event.as_str(), why, attempt, "done event: retrying");
                    attempt += 1;
                    state.metrics.done_retries.inc();
                    tokio::time::sleep(pause).await;
                    pause = pause.saturating_mul(2);
                }
            }
        };
        if delivered {
            state.metrics.done_sent.inc();
        } else {
            state.metrics.done_dropped.inc(1);
        }
        // Pop it unless the queue overflowed meanwhile and dropped it already.
        let mut done = state.done.borrow_mut();
        if done.front().is_some_and(|(e, b)| *e == event && *b == body) {
            done.pop_front();
        }
    }
}

async fn decide(state: &State, event: Event, body: &CallbackBody) -> Answer {
    match call(state, event, body, state.config.timeout).await {
        Ok((status, answer)) => interpret(status, &answer),
        Err(kind) => Answer::Failed(kind),
    }
}

/// What an answer means: 2xx allows (an empty body or a JSON object with optional `name` and
/// `lifetime_secs`), 4xx denies (optional `reason`), anything else is a failure.
pub fn interpret(status: u16, body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    struct Allow {
        name: Option<String>,
        lifetime_secs: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct Deny {
        reason: Option<String>,
    }
    let blank = body.iter().all(u8::is_ascii_whitespace);
    match status {
        200..=299 => {
            if blank {
                return Answer::Allow { name: None, lifetime: None };
            }
            match serde_json::from_slice::<Allow>(body) {
                Ok(allow) => {
                    let name_ok = allow.name.as_deref().is_none_or(|n| {
                        !n.is_empty() && n.len() <= 1024 && !n.contains(['/', '?', '\0'])
                    });
                    if !name_ok {
                        return Answer::Failed(FailKind::BadBody);
                    }
                    Answer::Allow {
                        name: allow.name,
                        lifetime: allow.lifetime_secs.map(Duration::from_secs),
                    }
                }
                Err(_) => Answer::Failed(FailKind::BadBody),
            }
        }
        400..=499 => {
            let reason = serde_json::from_slice::<Deny>(body).ok().and_then(|d| d.reason);
            let reason = reason.map(|r| r.chars().take(200).collect());
            Answer::Deny { reason }
        }
        _ => Answer::Failed(FailKind::Status),
    }
}

/// The signature header's value for `body`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// One POST within `limit`: (status, body up to `max_answer_bytes`).
async fn call(
    state: &State,
    event: Event,
    body: &CallbackBody,
    limit: Duration,
) -> Result<(u16, Vec<u8>), FailKind> {
    let Some(target) = state.config.target(event) else { return Err(FailKind::Unavailable) };
    let json = serde_json::to_vec(body).map_err(|_| FailKind::Unavailable)?;
    let signature = sign(&state.config.secret, &json);
    match tokio::time::timeout(
        limit,
        post(target, Bytes::from(json), signature, state.config.max_answer_bytes),
    )
    .await
    {
        Ok(result) => result,
        Err(_) => Err(FailKind::Timeout),
    }
}

async fn post(
    target: &Target,
    json: Bytes,
    signature: String,
    max_answer: usize,
) -> Result<(u16, Vec<u8>), FailKind> {
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|_| FailKind::Connect)?;
    let _ = stream.set_nodelay(true);
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(io).await.map_err(|_| FailKind::Connect)?;
    let authority = match target.port {
        80 => target.host.clone(),
        port => format!("{}:{port}", target.host),
    };
    let request = hyper::Request::post(target.uri.clone())
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::USER_AGENT, "rtmp-relay")
        .header(SIGNATURE_HEADER, signature)
        .body(Full::new(json))
        .map_err(|_| FailKind::Unavailable)?;
    let exchange = async {
        let response = sender.send_request(request).await.map_err(|_| FailKind::Io)?;
        let status = response.status().as_u16();
        let declared = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        if declared.is_some_and(|len| len > max_answer) {
            return Err(FailKind::TooLarge);
        }
        let mut body = response.into_body();
        let mut answer = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| FailKind::Io)?;
            if let Ok(data) = frame.into_data() {
                if answer.len() + data.len() > max_answer {
                    return Err(FailKind::TooLarge);
                }
                answer.extend_from_slice(&data);
            }
        }
        Ok((status, answer))
    };
    // The connection is driven alongside the exchange (and dropped with it, so a call that
    // times out leaves no socket behind).
    tokio::pin!(exchange);
    tokio::pin!(connection);
    let mut connection_done = false;
    loop {
        tokio::select! {
            biased;
            result = &mut exchange => return result,
            _ = &mut connection, if !connection_done => connection_done = true,
        }
    }
}

/// Logged once when the thread starts.
pub fn describe(config: &CallbackConfig) {
    info!(
        on_publish = config.on_publish.as_ref().map(|t| t.to_string()),
        on_play = config.on_play.as_ref().map(|t| t.to_string()),
        timeout_ms = config.timeout.as_millis() as u64,
        max_in_flight = config.max_in_flight,
        "auth callbacks ready"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_interpreted_per_the_contract() {
        assert_eq!(interpret(200, b""), Answer::Allow { name: None, lifetime: None });
        assert_eq!(
            interpret(204, b"{\"name\":\"cam1\",\"lifetime_secs\":30}"),
            Answer::Allow { name: Some("cam1".into()), lifetime: Some(Duration::from_secs(30)) }
        );
        assert_eq!(
            interpret(403, b"{\"reason\":\"banned\"}"),
            Answer::Deny { reason: Some("banned".into()) }
        );
        assert_eq!(interpret(404, b"<html>"), Answer::Deny { reason: None });
        assert_eq!(interpret(500, b"{}"), Answer::Failed(FailKind::Status));
        assert_eq!(interpret(302, b""), Answer::Failed(FailKind::Status));
        assert_eq!(interpret(200, b"garbage"), Answer::Failed(FailKind::BadBody));
        assert_eq!(interpret(200, b"[1,2]"), Answer::Failed(FailKind::BadBody));
        for bad in ["\"\"", "\"a/b\"", "\"a?token=x\""] {
            let body = format!("{{\"name\":{bad}}}");
            assert_eq!(interpret(200, body.as_bytes()), Answer::Failed(FailKind::BadBody), "{bad}");
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_hex() {
        // RFC 4231 test case 2.
        let sig = sign(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(sig, "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
    }

    #[test]
    fn targets_are_http_only() {
        let t = Target::parse("http://127.0.0.1:9000/hooks").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 9000));
        assert!(Target::parse("https://example.invalid/").unwrap_err().contains("https"));
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn the_cache_expires_and_evicts_the_oldest() {
        let mut cache = Cache {
            ttl: Duration::from_secs(10),
            max: 2,
            entries: HashMap::new(),
            order: VecDeque::new(),
        };
        let now = Instant::now();
        let deny = Answer::Deny { reason: None };
        assert_eq!(cache.insert("a".into(), deny.clone(), now), 0);
        assert_eq!(cache.insert("b".into(), deny.clone(), now), 0);
        assert_eq!(cache.insert("c".into(), deny.clone(), now), 1, "a evicted");
        assert_eq!(cache.get("a", now), None);
        assert_eq!(cache.get("c", now), Some(deny.clone()));
        assert_eq!(cache.get("c", now + Duration::from_secs(11)), None, "expired");
        assert!(cache.entries.len() <= 2);
    }
}
