//! Access control: who may publish and play, decided before `Publish.Start` / `Play.Start`.
//!
//! Per app and per action, a [`Method`]: `open`, `token` (a signed expiring JWT, verified on
//! the shard with no I/O), `callback` (an HTTP backend, asked off the shards), `token-or-callback`
//! or `deny`; plus address rules (deny wins) and a static map of secret publish keys to public
//! names. See the README's "Access control" section for the operator's view.
//!
//! # Threads
//! - Shards call [`ShardAuth::check`]: pure code over the request, the policy and the keys in
//!   force. A callback decision comes back as a [`Pending`] the connection awaits (with a
//!   deadline); the shard goes on serving every other connection meanwhile.
//! - The callback thread ([`callback`]) does the HTTP.
//! - The key watcher thread re-reads the JWKS file when it changes (and on
//!   [`Authority::reload_keys`], which the binary calls on SIGHUP). File reads never happen on
//!   a shard.
//!
//! # Reloads and admitted sessions
//! A reload never cuts a session by default: a token is checked at admission. With
//! `revoke_on_key_removal`, a session admitted with a token whose key a reload removed is
//! ended (within a second), counted in `rtmp_relay_auth_sessions_revoked_total`.

pub mod callback;
pub mod cli;
pub mod policy;
pub mod token;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use tracing::{info, warn};

pub use callback::{Answer, CallbackBody, CallbackClient, CallbackConfig, Event, FailKind};
pub use policy::{ActionPolicy, AddressRules, AppPolicy, Cidr, FailPolicy, Method, Policies};
pub use token::{KeySet, KeyStore, KeyView, TokenRefusal};

use crate::metrics::auth::{AuthReport, AuthShardMetrics, CallbackMetrics, KeyReloadMetrics};

/// What a client asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Publish,
    Play,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Play => "play",
        }
    }

    fn index(self) -> usize {
        self as usize
    }

    fn event(self) -> Event {
        match self {
            Action::Publish => Event::Publish,
            Action::Play => Event::Play,
        }
    }

    fn done_event(self) -> Event {
        match self {
            Action::Publish => Event::PublishDone,
            Action::Play => Event::PlayDone,
        }
    }
}

/// What decided, for `decisions_total{method}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decider {
    Open,
    Token,
    Callback,
    /// The address rules.
    Address,
    /// The `deny` method.
    Policy,
    /// A publish of a mapped public name, or a play of a secret key.
    Name,
}

impl Decider {
    const ALL: [Decider; 6] = [
        Decider::Open,
        Decider::Token,
        Decider::Callback,
        Decider::Address,
        Decider::Policy,
        Decider::Name,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Decider::Open => "open",
            Decider::Token => "token",
            Decider::Callback => "callback",
            Decider::Address => "address",
            Decider::Policy => "policy",
            Decider::Name => "name",
        }
    }
}

/// Access control as configured.
#[derive(Debug, Clone)]
pub struct Settings {
    pub policies: Policies,
    /// The JWKS file tokens are verified with.
    pub keys_file: Option<PathBuf>,
    /// How often the key watcher looks at the file's modification time; zero: only on
    /// SIGHUP / [`Authority::reload_keys`].
    pub keys_poll: Duration,
    pub revoke_on_key_removal: bool,
    /// Longest token accepted, in bytes.
    pub max_token_bytes: usize,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway_secs: u64,
    pub callback: Option<CallbackConfig>,
    /// This node's name in callback bodies.
    pub node_id: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            policies: Policies::default(),
            keys_file: None,
            keys_poll: Duration::from_secs(2),
            revoke_on_key_removal: false,
            max_token_bytes: 4096,
            leeway_secs: 5,
            callback: None,
            node_id: String::new(),
        }
    }
}

impl Settings {
    /// Checks that every method in use has what it needs.
    pub fn validate(&self) -> Result<(), String> {
        if self.policies.any_method(Method::uses_token) && self.keys_file.is_none() {
            return Err("a policy uses tokens but no keys file is given (--auth-keys FILE)".into());
        }
        let needs =
            |action: Action| self.policies.all().any(|p| p.action(action).method.uses_callback());
        for action in [Action::Publish, Action::Play] {
            if needs(action) && !self.callback.as_ref().is_some_and(|c| c.has(action.event())) {
                return Err(format!(
                    "a policy decides {} by callback but no {} URL is given (--auth-callback URL)",
                    action.as_str(),
                    action.event().as_str()
                ));
            }
        }
        if let Some(cb) = &self.callback {
            if cb.secret.len() < 16 {
                return Err("callbacks need a signing secret of at least 16 bytes \
                            ([auth.callback] secret_file or --auth-callback-secret-file)"
                    .into());
            }
            if cb.timeout.is_zero() || cb.max_in_flight == 0 || cb.max_answer_bytes == 0 {
                return Err(
                    "callback timeout, max_in_flight and max_answer_bytes must be > 0".into()
                );
            }
        }
        if self.max_token_bytes == 0 {
            return Err("max_token_bytes must be > 0".into());
        }
        Ok(())
    }
}

/// Access control for the whole server: the policy, the keys, the callback thread and the
/// key watcher. Shards get a [`ShardAuth`] each.
#[derive(Debug)]
pub struct Authority {
    shared: Arc<Shared>,
    shard_metrics: Vec<Arc<AuthShardMetrics>>,
    callback_metrics: Option<Arc<CallbackMetrics>>,
    key_metrics: Option<Arc<KeyReloadMetrics>>,
    callbacks: Option<CallbackClient>,
    // Dropped in this order: the watcher, then the callback thread (which delivers what it can
    // of the done events queued by the shards' shutdown).
    watcher: Option<KeyWatcher>,
    _callback_thread: Option<callback::CallbackThread>,
}

#[derive(Debug)]
struct Shared {
    policies: Policies,
    keys: Option<Arc<KeyStore>>,
    revoke_on_key_removal: bool,
    max_token_bytes: usize,
    leeway_secs: u64,
    node_id: String,
    app_labels: usize,
    /// How long a connection waits for a callback answer.
    callback_wait: Duration,
}

impl Authority {
    /// Loads the keys and starts the threads access control needs (none for open policies).
    pub fn start(settings: Settings, shards: usize) -> Result<Authority, String> {
        settings.validate()?;
        let keys = match &settings.keys_file {
            Some(path) => Some(Arc::new(KeyStore::load(path.clone())?)),
            None => None,
        };
        let app_labels = settings.policies.app_labels();
        let dimensions = [
            ("app", app_labels.clone()),
            ("action", vec!["publish".to_owned(), "play".to_owned()]),
            ("method", Decider::ALL.iter().map(|d| d.as_str().to_owned()).collect()),
            ("result", vec!["allow".to_owned(), "deny".to_owned()]),
        ];
        let reasons: Vec<&str> = TokenRefusal::ALL.iter().map(|r| r.as_str()).collect();
        let shard_metrics =
            (0..shards).map(|_| Arc::new(AuthShardMetrics::new(&dimensions, &reasons))).collect();
        let (callbacks, callback_thread, callback_metrics) = match settings.callback.clone() {
            Some(config) => {
                let kinds: Vec<&str> = FailKind::ALL.iter().map(|k| k.as_str()).collect();
                let metrics = Arc::new(CallbackMetrics::new(&kinds));
                callback::describe(&config);
                let (client, thread) = callback::start(config, metrics.clone())
                    .map_err(|e| format!("cannot start the callback thread: {e}"))?;
                (Some(client), Some(thread), Some(metrics))
            }
            None => (None, None, None),
        };
        let key_metrics = keys.as_ref().map(|store| {
            let metrics = Arc::new(KeyReloadMetrics::default());
            metrics.keys.store(store.current().len() as i64, std::sync::atomic::Ordering::Relaxed);
            metrics
        });
        let watcher = match (&keys, &key_metrics) {
            (Some(store), Some(metrics)) => Some(
                KeyWatcher::start(store.clone(), metrics.clone(), settings.keys_poll)
                    .map_err(|e| format!("cannot start the key watcher: {e}"))?,
            ),
            _ => None,
        };
        let shared = Arc::new(Shared {
            policies: settings.policies,
            keys,
            revoke_on_key_removal: settings.revoke_on_key_removal,
            max_token_bytes: settings.max_token_bytes,
            leeway_secs: settings.leeway_secs,
            node_id: settings.node_id,
            app_labels: app_labels.len(),
            callback_wait: settings.callback.as_ref().map_or(Duration::ZERO, |c| c.timeout)
                + CALLBACK_WAIT_MARGIN,
        });
        Ok(Authority {
            shared,
            shard_metrics,
            callback_metrics,
            key_metrics,
            callbacks,
            watcher,
            _callback_thread: callback_thread,
        })
    }

    /// Shard `shard`'s view: call on the shard's thread.
    pub fn for_shard(&self, shard: usize) -> ShardAuth {
        ShardAuth {
            shared: self.shared.clone(),
            keys: self.shared.keys.clone().map(KeyView::new),
            callbacks: self.callbacks.clone(),
            metrics: self.shard_metrics.get(shard).cloned().unwrap_or_else(|| {
                Arc::new(AuthShardMetrics::new(&[], &[])) // a shard beyond the count: uncounted
            }),
            shard,
        }
    }

    /// Re-reads the keys file now (SIGHUP). Blocking file I/O: not on a shard.
    pub fn reload_keys(&self) -> Result<usize, String> {
        match &self.watcher {
            Some(watcher) => watcher.reload_now(),
            None => Err("no keys file configured".into()),
        }
    }

    pub fn report(&self) -> AuthReport {
        AuthReport {
            shards: self.shard_metrics.clone(),
            callbacks: self.callback_metrics.clone(),
            keys: self.key_metrics.clone(),
        }
    }

    /// Whether publishing is open anywhere (for the start-up warning on public listeners).
    pub fn publish_open_somewhere(&self) -> Vec<String> {
        let p = &self.shared.policies;
        let mut open: Vec<String> = p
            .apps
            .iter()
            .filter(|(_, a)| a.publish.method == Method::Open)
            .map(|(name, _)| name.clone())
            .collect();
        if p.default.publish.method == Method::Open {
            open.push("(every other app)".into());
        }
        open
    }
}

/// Re-reads the JWKS file when its modification time or length changes, and on request.
#[derive(Debug)]
struct KeyWatcher {
    requests: mpsc::Sender<WatchRequest>,
    thread: Option<JoinHandle<()>>,
}

enum WatchRequest {
    Reload(mpsc::Sender<Result<usize, String>>),
    Stop,
}

impl KeyWatcher {
    fn start(
        store: Arc<KeyStore>,
        metrics: Arc<KeyReloadMetrics>,
        poll: Duration,
    ) -> std::io::Result<KeyWatcher> {
        let (requests, inbox) = mpsc::channel();
        let stamp = |store: &KeyStore| {
            store
                .path()
                .and_then(|p| std::fs::metadata(p).ok())
                .map(|m| (m.modified().ok(), m.len()))
        };
        let thread = std::thread::Builder::new().name("auth-keys".into()).spawn(move || {
            let mut seen = stamp(&store);
            let reload = |why: &str| {
                let result = store.reload();
                match &result {
                    Ok(n) => {
                        metrics.reloads.inc();
                        metrics.keys.store(*n as i64, std::sync::atomic::Ordering::Relaxed);
                        info!(keys = n, why, "auth keys reloaded");
                    }
                    Err(e) => {
                        metrics.failures.inc();
                        warn!(error = %e, why, "auth keys not reloaded: the keys in force stay");
                    }
                }
                result
            };
            loop {
                let wait = if poll.is_zero() { Duration::from_secs(3600) } else { poll };
                match inbox.recv_timeout(wait) {
                    Ok(WatchRequest::Reload(reply)) => {
                        seen = stamp(&store);
                        let _ = reply.send(reload("requested"));
                    }
                    Ok(WatchRequest::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    Err(mpsc::RecvTimeoutError::Timeout) if !poll.is_zero() => {
                        let now = stamp(&store);
                        if now != seen && now.is_some() {
                            seen = now;
                            let _ = reload("file changed");
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
            }
        })?;
        Ok(KeyWatcher { requests, thread: Some(thread) })
    }

    fn reload_now(&self) -> Result<usize, String> {
        let (reply, answer) = mpsc::channel();
        self.requests
            .send(WatchRequest::Reload(reply))
            .map_err(|_| "the key watcher is gone".to_owned())?;
        answer
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "the key watcher did not answer".to_owned())?
    }
}

impl Drop for KeyWatcher {
    fn drop(&mut self) {
        let _ = self.requests.send(WatchRequest::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A publish or play to decide.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub action: Action,
    pub app: &'a str,
    /// The stream key as the client sent it (for a publisher, maybe its secret key).
    pub name: &'a str,
    /// The stream name's query (`?token=...&...`).
    pub name_query: Option<&'a str>,
    /// The query of the tcUrl (or of the app, where a tcUrl query lands).
    pub connect_query: Option<&'a str>,
    pub tc_url: Option<&'a str>,
    pub peer: SocketAddr,
    pub conn_id: u64,
}

/// An admitted publish or play.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The name the stream has for players, stats, metrics and recordings.
    pub public_name: String,
    /// The session ends after this (callback `lifetime_secs`).
    pub lifetime: Option<Duration>,
    /// The key of the token that admitted it (for revocation on key removal).
    pub kid: Option<String>,
    pub decider: Decider,
}

/// A refusal: the log line's reason (never sent to the client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub decider: Decider,
    pub reason: String,
    /// The token limit tripped (counted as a limit too).
    pub token_too_large: bool,
}

/// What [`ShardAuth::check`] says.
#[derive(Debug)]
pub enum Check {
    Allowed(Grant),
    Refused(Refusal),
    /// Wait for the callback's answer, at most [`Pending::deadline`], then
    /// [`ShardAuth::conclude`].
    Ask(Pending),
}

/// A callback decision under way.
#[derive(Debug)]
pub struct Pending {
    answer: Option<tokio::sync::oneshot::Receiver<Answer>>,
    action: Action,
    app_index: usize,
    fail: FailPolicy,
    default_name: String,
    deadline: Duration,
}

impl Pending {
    /// The answer (a failure if the callback thread is gone). Await it within
    /// [`Pending::deadline`].
    pub async fn answer(&mut self) -> Answer {
        match self.answer.take() {
            Some(rx) => rx.await.unwrap_or(Answer::Failed(FailKind::Unavailable)),
            None => Answer::Failed(FailKind::Unavailable),
        }
    }

    /// The call's own deadline plus a margin: past it the callback thread is wedged.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }
}

/// One shard's access control. Everything here is pure or a non-blocking channel send.
#[derive(Debug)]
pub struct ShardAuth {
    shared: Arc<Shared>,
    keys: Option<KeyView>,
    callbacks: Option<CallbackClient>,
    metrics: Arc<AuthShardMetrics>,
    shard: usize,
}

impl ShardAuth {
    /// No access control at all (tests, tools).
    pub fn open() -> ShardAuth {
        Authority::start(Settings::default(), 1)
            .map(|a| a.for_shard(0))
            .unwrap_or_else(|_| unreachable!("the default settings are valid"))
    }

    pub fn metrics(&self) -> &AuthShardMetrics {
        &self.metrics
    }

    fn count(&self, app_index: usize, action: Action, decider: Decider, allowed: bool) {
        let deciders = Decider::ALL.len();
        let method = Decider::ALL.iter().position(|d| *d == decider).unwrap_or(0);
        let index =
            ((app_index * 2 + action.index()) * deciders + method) * 2 + usize::from(!allowed);
        if app_index < self.shared.app_labels {
            self.metrics.decisions.inc(index);
        }
    }

    fn refuse(&self, app_index: usize, action: Action, decider: Decider, reason: String) -> Check {
        self.count(app_index, action, decider, false);
        Check::Refused(Refusal { decider, reason, token_too_large: false })
    }

    /// Decides `request` at `now`, or says to wait for the callback.
    pub fn check(&self, request: &Request<'_>, now: SystemTime) -> Check {
        let (app, app_index) = self.shared.policies.for_app(request.app);
        let action = request.action;
        let policy = app.action(action);
        if !policy.addresses.admits(request.peer.ip()) {
            return self.refuse(app_index, action, Decider::Address, "address rules".into());
        }
        // Publishing a mapped public name directly would take the stream from its owner;
        // playing a secret key would reveal that it is live.
        let mapped = app.names.get(request.name);
        match action {
            Action::Publish if mapped.is_none() && app.is_public_name(request.name) => {
                return self.refuse(
                    app_index,
                    action,
                    Decider::Name,
                    "publish of a public name that a secret key maps to".into(),
                );
            }
            Action::Play if mapped.is_some() => {
                return self.refuse(app_index, action, Decider::Name, "play of a secret key".into())
            }
            _ => {}
        }
        let public_name = mapped.cloned().unwrap_or_else(|| request.name.to_owned());
        let allow = |decider: Decider, kid: Option<String>| {
            self.count(app_index, action, decider, true);
            Check::Allowed(Grant { public_name: public_name.clone(), lifetime: None, kid, decider })
        };
        let token_result =
            if policy.method.uses_token() { Some(self.verify(request, now)) } else { None };
        match policy.method {
            Method::Open => allow(Decider::Open, None),
            Method::Deny => {
                self.refuse(app_index, action, Decider::Policy, "policy is deny".into())
            }
            Method::Token => match token_result {
                Some(Ok(verified)) => allow(Decider::Token, Some(verified.kid)),
                Some(Err(refusal)) => self.token_refused(app_index, action, refusal),
                None => unreachable!("token methods verify"),
            },
            Method::Callback | Method::TokenOrCallback => {
                match token_result {
                    Some(Ok(verified)) => return allow(Decider::Token, Some(verified.kid)),
                    // A token over the limit is refused outright (it is a limit).
                    Some(Err(TokenRefusal::TooLarge)) => {
                        return self.token_refused(app_index, action, TokenRefusal::TooLarge)
                    }
                    // Counted; the callback still decides.
                    Some(Err(refusal)) if refusal != TokenRefusal::Missing => {
                        self.metrics.tokens_refused.inc(refusal.index());
                    }
                    _ => {}
                }
                self.ask(request, app_index, policy.fail, public_name)
            }
        }
    }

    fn token_refused(&self, app_index: usize, action: Action, refusal: TokenRefusal) -> Check {
        self.metrics.tokens_refused.inc(refusal.index());
        self.count(app_index, action, Decider::Token, false);
        Check::Refused(Refusal {
            decider: Decider::Token,
            reason: format!("token refused: {}", refusal.as_str()),
            token_too_large: refusal == TokenRefusal::TooLarge,
        })
    }

    fn verify(
        &self,
        request: &Request<'_>,
        now: SystemTime,
    ) -> Result<token::Verified, TokenRefusal> {
        let token = token::presented(
            request.name_query,
            request.connect_query,
            self.shared.max_token_bytes,
        )?
        .ok_or(TokenRefusal::Missing)?;
        let keys = self.keys.as_ref().map(KeyView::keys).unwrap_or_default();
        let token_request = token::TokenRequest {
            action: request.action,
            app: request.app,
            name: request.name,
            addr: request.peer.ip(),
        };
        token::verify(&keys, token, &token_request, token::unix_secs(now), self.shared.leeway_secs)
    }

    fn ask(
        &self,
        request: &Request<'_>,
        app_index: usize,
        fail: FailPolicy,
        name: String,
    ) -> Check {
        let action = request.action;
        let Some(callbacks) = &self.callbacks else {
            return self.fail(app_index, action, fail, FailKind::Unavailable, name);
        };
        let body = self.body(request, action.event(), None);
        let deadline = self.shared.callback_wait;
        match callbacks.decide(action.event(), body) {
            Ok(answer) => Check::Ask(Pending {
                answer: Some(answer),
                action,
                app_index,
                fail,
                default_name: name,
                deadline,
            }),
            Err(kind) => {
                self.metrics.callback_queue_full.inc();
                self.fail(app_index, action, fail, kind, name)
            }
        }
    }

    fn fail(
        &self,
        app_index: usize,
        action: Action,
        fail: FailPolicy,
        kind: FailKind,
        public_name: String,
    ) -> Check {
        let allowed = fail == FailPolicy::Allow;
        self.count(app_index, action, Decider::Callback, allowed);
        if allowed {
            warn!(kind = kind.as_str(), "callback failed: fail policy allows");
            Check::Allowed(Grant {
                public_name,
                lifetime: None,
                kid: None,
                decider: Decider::Callback,
            })
        } else {
            Check::Refused(Refusal {
                decider: Decider::Callback,
                reason: format!("callback failed ({}), fail policy denies", kind.as_str()),
                token_too_large: false,
            })
        }
    }

    /// The decision once the callback answered (`None`: it did not within the deadline).
    pub fn conclude(&self, pending: Pending, answer: Option<Answer>) -> Result<Grant, Refusal> {
        let Pending { action, app_index, fail, default_name, .. } = pending;
        let answer = answer.unwrap_or(Answer::Failed(FailKind::Timeout));
        let check = match answer {
            Answer::Allow { name, lifetime } => {
                self.count(app_index, action, Decider::Callback, true);
                Check::Allowed(Grant {
                    public_name: name.unwrap_or(default_name),
                    lifetime,
                    kid: None,
                    decider: Decider::Callback,
                })
            }
            Answer::Deny { reason } => {
                self.count(app_index, action, Decider::Callback, false);
                Check::Refused(Refusal {
                    decider: Decider::Callback,
                    reason: format!(
                        "callback denied{}",
                        reason.map(|r| format!(": {r}")).unwrap_or_default()
                    ),
                    token_too_large: false,
                })
            }
            Answer::Failed(kind) => self.fail(app_index, action, fail, kind, default_name),
        };
        match check {
            Check::Allowed(grant) => Ok(grant),
            Check::Refused(refusal) => Err(refusal),
            Check::Ask(_) => unreachable!("an answer is final"),
        }
    }

    /// Tells the backend an admitted session ended (if an `on_*_done` URL is configured).
    pub fn session_done(
        &self,
        request: &Request<'_>,
        public_name: &str,
        bytes: u64,
        duration: Duration,
    ) {
        let Some(callbacks) = &self.callbacks else { return };
        let event = request.action.done_event();
        if !callbacks.has(event) {
            return;
        }
        let mut body = self.body(request, event, Some(public_name.to_owned()));
        body.bytes = Some(bytes);
        body.duration_ms = Some(duration.as_millis() as u64);
        if !callbacks.notify(event, body) {
            self.metrics.callback_queue_full.inc();
        }
    }

    fn body(
        &self,
        request: &Request<'_>,
        event: Event,
        public_name: Option<String>,
    ) -> CallbackBody {
        CallbackBody {
            event: event.as_str(),
            action: request.action.as_str(),
            app: request.app.to_owned(),
            name: request.name.to_owned(),
            public_name,
            query: request.name_query.and_then(token::without_token),
            tc_url: request.tc_url.map(token::redact_url),
            client_addr: request.peer.ip().to_string(),
            client_port: request.peer.port(),
            conn_id: request.conn_id,
            node_id: self.shared.node_id.clone(),
            shard: self.shard,
            bytes: None,
            duration_ms: None,
        }
    }

    /// The name to log for `name` in `app`: its public name when it is a mapped secret key.
    pub fn display_name(&self, app: &str, name: &str) -> String {
        let (policy, _) = self.shared.policies.for_app(app);
        policy.names.get(name).cloned().unwrap_or_else(|| name.to_owned())
    }

    /// Whether a session admitted with key `kid` must end now (its key was removed and
    /// `revoke_on_key_removal` is on).
    pub fn revoked(&self, kid: &str) -> bool {
        self.shared.revoke_on_key_removal
            && self.keys.as_ref().is_some_and(|view| !view.keys().contains(kid))
    }

    pub fn revokes_on_key_removal(&self) -> bool {
        self.shared.revoke_on_key_removal
    }
}

/// How long a connection waits for the callback thread beyond the call's own deadline (the
/// thread's timer fires first unless the thread is wedged).
const CALLBACK_WAIT_MARGIN: Duration = Duration::from_secs(1);

/// True for addresses only this machine can reach.
pub fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests;
