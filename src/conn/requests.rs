//! What the session asks of the shard: publish, play, media, pause and close, answered on this
//! shard or, for a stream another shard owns, once that shard has answered (each wait bounded).
//!
//! Every publish and play is first put to access control (`crate::auth`): decided on the spot
//! (address rules, tokens, policy), or by the HTTP callback, whose answer this connection alone
//! awaits (its reading pauses; the shard serves everyone else). The stream is then known by its
//! public name only: the secret key a publisher used is not logged, recorded or shown.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime};

use rtmp_proto::command::{code, StreamName};
use rtmp_proto::session::ServerEvent;
use tracing::{debug, info, warn, Span};

use super::driver::{Connection, Ended};
use super::within;
use crate::auth::{Action, Check, Grant, Pending, Refusal};
use crate::metrics::Limit;
use crate::stream::{
    CloseReason, Publication, PublishRefused, PublishStart, PublishWaiter, PublisherInfo,
    SnapshotWaiter, StreamKey, Subscriber,
};

/// How long a publish waits for the owner shard's answer (which may itself wait for the shard of
/// the key's current holder, at most the registry's `PROBE_TIMEOUT`). Shards answer in
/// microseconds; this only bounds a shard that is wedged.
const OWNER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// A publish waiting for an answer: access control's callback, then the owner shard's.
pub(super) enum PendingPublish {
    Auth { stream_id: u32, name: StreamName, decision: Pending },
    Owner { stream_id: u32, key: StreamKey, waiter: Rc<PublishWaiter>, admitted: Admitted },
}

/// A play waiting for access control's callback, or on a shard whose mirror of the stream
/// waits for the owner's first snapshot (see `Registry::join_mirror`).
pub(super) enum PendingPlay {
    Auth { stream_id: u32, name: StreamName, decision: Pending },
    Mirror { stream_id: u32, key: StreamKey, waiter: Rc<SnapshotWaiter>, admitted: Admitted },
}

/// What access control granted a publish or play, kept until it is answered.
pub(super) struct Admitted {
    grant: Grant,
    /// The name and query as the client sent them (for the done event).
    name: StreamName,
}

/// Access control's per-connection state (in `ConnContext::auth_state`).
#[derive(Default)]
pub(super) struct ConnAuth {
    /// The query that came with `connect` (the tcUrl's, or the app's): may carry a token.
    connect_query: Option<String>,
    tc_url: Option<String>,
    sessions: Vec<AuthSession>,
}

impl std::fmt::Debug for ConnAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the tcUrl or the query: they may carry a token.
        f.debug_struct("ConnAuth").field("sessions", &self.sessions.len()).finish_non_exhaustive()
    }
}

/// An admitted publish or play, for its done event, lifetime and revocation.
struct AuthSession {
    stream_id: u32,
    action: Action,
    app: String,
    name: StreamName,
    public_name: String,
    started: Instant,
    bytes_at_start: u64,
    /// Ends the session when its lifetime runs out or its key is revoked; dropping it stops it.
    _watch: Option<glommio::Task<()>>,
}

/// The connect query carrying a token wins (the tcUrl's, else the app's).
fn connect_query(app: &str, tc_url: Option<&str>) -> Option<String> {
    let of_url = tc_url.and_then(|u| u.split_once('?')).map(|(_, q)| q);
    let of_app = app.split_once('?').map(|(_, q)| q);
    let has_token = |q: &&str| crate::auth::token::token_in(q).is_some();
    of_url.filter(has_token).or(of_app.filter(has_token)).or(of_url).or(of_app).map(str::to_owned)
}

impl Connection {
    pub(super) fn on_event(&mut self, event: ServerEvent, now: Instant) -> Result<(), Ended> {
        match event {
            ServerEvent::Connected(params) => {
                let app = params.app.split('?').next().unwrap_or_default();
                self.check_name_length(app.len())?;
                // A token in the tcUrl or the app is longer than any app name: it is checked
                // against the token limit at the publish or play, not here.
                Span::current().record("app", app);
                self.admission.handshake_done();
                debug!(app, flash_ver = params.flash_ver.as_deref().unwrap_or(""), "connected");
                let state = ConnAuth {
                    connect_query: connect_query(&params.app, params.tc_url.as_deref()),
                    tc_url: params.tc_url,
                    sessions: Vec::new(),
                };
                self.ctx.auth_state.borrow_mut().insert(self.conn_id, state);
            }
            ServerEvent::PublishRequested { stream_id, name, .. } => {
                if let Err(refused) = self.check_name_length(name.key.len()) {
                    self.ctx.counters.publishes_rejected.inc();
                    self.session.reject_publish(
                        stream_id,
                        code::PUBLISH_BAD_NAME,
                        "stream key too long",
                    );
                    return Err(refused);
                }
                match self.check_access(Action::Publish, &name) {
                    Check::Allowed(grant) => {
                        self.publish_admitted(stream_id, Admitted { grant, name }, now)?
                    }
                    Check::Refused(refusal) => {
                        return Err(self.refuse(Action::Publish, stream_id, &name, refusal))
                    }
                    Check::Ask(decision) => {
                        self.pending_publish =
                            Some(PendingPublish::Auth { stream_id, name, decision })
                    }
                }
            }
            ServerEvent::PlayRequested { stream_id, name } => {
                if let Err(refused) = self.check_name_length(name.key.len()) {
                    self.session.reject_play(stream_id, code::PLAY_FAILED, "stream key too long");
                    return Err(refused);
                }
                if self.ctx.debug_panic_key.as_deref() == Some(name.key.as_str()) {
                    panic!("--debug-panic-on-key: a play of {:?} panics on purpose", name.key);
                }
                if let Some((_, stall)) =
                    self.ctx.debug_stall.as_ref().filter(|(key, _)| *key == name.key)
                {
                    warn!(secs = stall.as_secs(), "--debug-stall-on-key: blocking the shard");
                    // On purpose: the testing aid for the watchdog blocks the whole executor.
                    std::thread::sleep(*stall);
                }
                match self.check_access(Action::Play, &name) {
                    Check::Allowed(grant) => {
                        self.play_admitted(stream_id, Admitted { grant, name }, now)?
                    }
                    Check::Refused(refusal) => {
                        return Err(self.refuse(Action::Play, stream_id, &name, refusal))
                    }
                    Check::Ask(decision) => {
                        self.pending_play = Some(PendingPlay::Auth { stream_id, name, decision })
                    }
                }
            }
            ServerEvent::Media(media) => {
                // Media on a stream id it does not publish (or no longer does) goes nowhere.
                if let Some((_, publication)) =
                    self.publishing.iter().find(|(id, _)| *id == media.stream_id)
                {
                    publication.relay(&self.ctx.registry, media, now);
                }
            }
            ServerEvent::StreamClosed { stream_id } => self.close_stream(stream_id, now),
            ServerEvent::Paused { stream_id, paused } => {
                if let Some((_, stream)) = self.playing.iter().find(|(id, _)| *id == stream_id) {
                    stream.set_paused(self.conn_id, stream_id, paused);
                }
            }
            // Flow control is the kernel's send buffer and the slow-subscriber policy; the
            // player's acknowledgements say how much of what was written it has really received.
            ServerEvent::Acknowledged { sequence_number } => {
                self.queue.acknowledge(sequence_number)
            }
            // The session has answered it with an error; the connection goes on.
            ServerEvent::CommandRefused { stream_id, command, reason } => {
                self.command_refused(stream_id, command, reason)
            }
        }
        Ok(())
    }

    /// Puts a publish or play to access control.
    fn check_access(&self, action: Action, name: &StreamName) -> Check {
        let app = self.session.app().unwrap_or_default();
        let state = self.ctx.auth_state.borrow();
        let conn = state.get(&self.conn_id);
        let request = crate::auth::Request {
            action,
            app,
            name: &name.key,
            name_query: name.query.as_deref(),
            connect_query: conn.and_then(|c| c.connect_query.as_deref()),
            tc_url: conn.and_then(|c| c.tc_url.as_deref()),
            peer: self.peer,
            conn_id: self.conn_id,
        };
        self.ctx.auth.check(&request, SystemTime::now())
    }

    /// Tells a refused client so (an onStatus error saying authorization was refused, no hint
    /// of why), logs why (without the token or the secret key) and ends the connection.
    fn refuse(
        &mut self,
        action: Action,
        stream_id: u32,
        name: &StreamName,
        refusal: Refusal,
    ) -> Ended {
        if refusal.token_too_large {
            self.ctx.counters.limit_tripped(Limit::AuthMaxTokenBytes);
        }
        let app = self.session.app().unwrap_or_default();
        let stream = self.ctx.auth.display_name(app, &name.key);
        warn!(action = action.as_str(), stream = %stream, method = refusal.decider.as_str(),
            reason = %refusal.reason, "access refused");
        const DESCRIPTION: &str = "authorization refused";
        match action {
            Action::Publish => {
                self.ctx.counters.publishes_rejected.inc();
                self.session.reject_publish(stream_id, code::PUBLISH_DENIED, DESCRIPTION);
            }
            Action::Play => self.session.reject_play(stream_id, code::PLAY_DENIED, DESCRIPTION),
        }
        Ended::Server(CloseReason::AfterFlush)
    }

    /// A publish access control admitted: the key (its public name) goes to the registry.
    fn publish_admitted(
        &mut self,
        stream_id: u32,
        admitted: Admitted,
        now: Instant,
    ) -> Result<(), Ended> {
        Span::current().record("key", admitted.grant.public_name.as_str());
        let key = self.key(&admitted.grant.public_name);
        if let Some(other) = self.publishing_id_of(&key) {
            // This connection publishes the key already, on another stream id: a retry
            // on the wrong id, not a rival publisher. Refusing it the way a rival is
            // refused would close the connection and end the publish that works.
            let reason = "this connection publishes the key already";
            let description = format!("{key} is already published on stream {other}");
            self.session.reject_publish(stream_id, code::PUBLISH_BAD_NAME, &description);
            self.command_refused(stream_id, "publish", reason);
            return Ok(());
        }
        let publisher =
            PublisherInfo { conn_id: self.conn_id, shard: self.ctx.shard_id, peer: self.peer };
        // What the registry asks, should a later publish find this connection holding
        // the key, before it refuses that one: is this socket still open?
        let liveness = Rc::downgrade(&self.socket);
        match self.ctx.registry.start_publish(key.clone(), publisher, liveness, now) {
            PublishStart::Decided(result) => self.answer_publish(stream_id, key, result, admitted),
            PublishStart::Waiting(waiter) => {
                self.pending_publish =
                    Some(PendingPublish::Owner { stream_id, key, waiter, admitted });
                Ok(())
            }
        }
    }

    /// A play access control admitted.
    fn play_admitted(
        &mut self,
        stream_id: u32,
        admitted: Admitted,
        now: Instant,
    ) -> Result<(), Ended> {
        Span::current().record("key", admitted.grant.public_name.as_str());
        let key = self.key(&admitted.grant.public_name);
        if let Err(limit) = self.ctx.registry.check_play(&key) {
            warn!(stream = %key, limit = limit.name(), "play refused");
            self.session.reject_play(
                stream_id,
                code::PLAY_FAILED,
                &format!("limit {limit} reached"),
            );
            return Err(Ended::Refused(limit));
        }
        match self.ctx.registry.join_mirror(&key, now).map_err(Ended::Refused)? {
            Some(waiter) => {
                self.pending_play = Some(PendingPlay::Mirror { stream_id, key, waiter, admitted });
                Ok(())
            }
            None => self.start_play(stream_id, key, now, admitted),
        }
    }

    /// Waits for the callback's decision on a publish or play (this connection only), then
    /// goes on as a decision made on the spot would.
    async fn finish_auth(
        &mut self,
        action: Action,
        stream_id: u32,
        name: StreamName,
        mut decision: Pending,
    ) -> Result<(), Ended> {
        let answer = within(decision.deadline(), decision.answer()).await;
        let now = Instant::now();
        let result = match self.ctx.auth.conclude(decision, answer) {
            Ok(grant) => {
                let admitted = Admitted { grant, name };
                match action {
                    Action::Publish => self.publish_admitted(stream_id, admitted, now),
                    Action::Play => self.play_admitted(stream_id, admitted, now),
                }
            }
            Err(refusal) => Err(self.refuse(action, stream_id, &name, refusal)),
        };
        self.flush_session(Instant::now());
        result
    }

    /// Remembers an answered publish or play for its done event, and watches its lifetime
    /// (and, when enforced, its token's key).
    fn auth_session_started(&self, stream_id: u32, action: Action, admitted: Admitted) {
        let Admitted { grant, name } = admitted;
        let lifetime_end = grant.lifetime.map(|l| Instant::now() + l);
        let revocable = grant.kid.clone().filter(|_| self.ctx.auth.revokes_on_key_removal());
        let watch = (lifetime_end.is_some() || revocable.is_some()).then(|| {
            let ctx = self.ctx.clone();
            let queue = self.queue.clone();
            let stream = grant.public_name.clone();
            glommio::spawn_local(async move {
                loop {
                    let now = Instant::now();
                    if lifetime_end.is_some_and(|end| now >= end) {
                        ctx.auth.metrics().lifetimes_expired.inc();
                        info!(stream = %stream, action = action.as_str(),
                            "session lifetime over: closing");
                        break;
                    }
                    if revocable.as_deref().is_some_and(|kid| ctx.auth.revoked(kid)) {
                        ctx.auth.metrics().sessions_revoked.inc();
                        warn!(stream = %stream, action = action.as_str(),
                            "the key of this session's token was removed: closing");
                        break;
                    }
                    let mut wait = lifetime_end.map_or(Duration::from_secs(3600), |end| {
                        end.saturating_duration_since(now)
                    });
                    if revocable.is_some() {
                        wait = wait.min(Duration::from_secs(1));
                    }
                    glommio::timer::sleep(wait).await;
                }
                // The writer flushes and shuts the socket; the reader then cleans up (players
                // of a publisher get the usual StreamEOF + UnpublishNotify).
                queue.close(CloseReason::AfterFlush);
            })
        });
        let bytes_at_start = match action {
            Action::Publish => self.session.bytes_received(),
            Action::Play => self.queue.bytes_written(),
        };
        let session = AuthSession {
            stream_id,
            action,
            app: self.session.app().unwrap_or_default().to_owned(),
            name,
            public_name: grant.public_name,
            started: Instant::now(),
            bytes_at_start,
            _watch: watch,
        };
        if let Some(state) = self.ctx.auth_state.borrow_mut().get_mut(&self.conn_id) {
            state.sessions.push(session);
        }
    }

    /// The done events of this connection's admitted sessions on `stream_id` (every one if
    /// `None`).
    fn auth_sessions_done(&self, stream_id: Option<u32>) {
        let mut state = self.ctx.auth_state.borrow_mut();
        let Some(conn) = state.get_mut(&self.conn_id) else { return };
        let (done, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut conn.sessions)
            .into_iter()
            .partition(|s| stream_id.is_none_or(|id| id == s.stream_id));
        conn.sessions = kept;
        for session in done {
            let bytes = match session.action {
                Action::Publish => self.session.bytes_received(),
                Action::Play => self.queue.bytes_written(),
            }
            .saturating_sub(session.bytes_at_start);
            let request = crate::auth::Request {
                action: session.action,
                app: &session.app,
                name: &session.name.key,
                name_query: session.name.query.as_deref(),
                connect_query: None,
                tc_url: conn.tc_url.as_deref(),
                peer: self.peer,
                conn_id: self.conn_id,
            };
            self.ctx.auth.session_done(
                &request,
                &session.public_name,
                bytes,
                session.started.elapsed(),
            );
        }
    }

    /// Counts and logs a command out of place that was answered with an error. Debug level: a
    /// client can send these as often as it likes, and it was told why.
    fn command_refused(&self, stream_id: u32, command: &'static str, reason: &'static str) {
        self.ctx.counters.commands_refused.inc();
        debug!(stream_id, command, reason, "command out of place refused");
    }

    /// The message stream id on which this connection publishes `key`, if it does.
    fn publishing_id_of(&self, key: &StreamKey) -> Option<u32> {
        self.publishing
            .iter()
            .find_map(|(id, publication)| (publication.key() == key).then_some(*id))
    }

    fn close_stream(&mut self, stream_id: u32, now: Instant) {
        self.auth_sessions_done(Some(stream_id));
        if let Some(i) = self.publishing.iter().position(|(id, _)| *id == stream_id) {
            let (_, publishing) = self.publishing.swap_remove(i);
            self.stop_publishing(publishing, "publish stopped", now);
        }
        if let Some(i) = self.playing.iter().position(|(id, _)| *id == stream_id) {
            let (_, stream) = self.playing.swap_remove(i);
            info!(stream = %stream.key, "play stopped");
            self.ctx.registry.leave(&stream, self.conn_id, stream_id);
        }
    }

    /// Refuses an app or stream key longer than `--max-stream-name-bytes`, before it reaches a
    /// log line, a span or the registry (the name itself is not echoed).
    fn check_name_length(&self, len: usize) -> Result<(), Ended> {
        if len <= self.ctx.limits.max_name_bytes {
            return Ok(());
        }
        const LIMIT: Limit = Limit::MaxStreamNameBytes;
        self.ctx.counters.limit_tripped(LIMIT);
        warn!(len, limit = LIMIT.name(), "name too long: closing the connection");
        Err(Ended::Refused(LIMIT))
    }

    /// Answers a play and joins the stream: the play replies, then the late-join cache, then
    /// live frames. `check_play` has passed on this same thread, so the join cannot be refused
    /// (a mirror that went away meanwhile is created anew).
    fn start_play(
        &mut self,
        stream_id: u32,
        key: StreamKey,
        now: Instant,
        admitted: Admitted,
    ) -> Result<(), Ended> {
        self.session.accept_play(stream_id, &key.name);
        // The play replies must be queued before the cached frames.
        self.flush_session(now);
        if self.playing.is_empty() && self.ctx.limits.player_send_buffer > 0 {
            // A small kernel buffer keeps a slow player's backlog in our queue, where the
            // slow-subscriber policy can see it.
            if let Err(e) = self.socket.set_send_buffer(self.ctx.limits.player_send_buffer) {
                debug!(error = %e, "could not set the player's send buffer");
            }
        }
        let subscriber =
            Rc::new(Subscriber::new(self.conn_id, self.peer, stream_id, self.queue.clone()));
        let stream =
            self.ctx.registry.play(key.clone(), subscriber, now).map_err(Ended::Refused)?;
        info!(stream = %key, live = stream.publisher().is_some(), "play started");
        self.playing.push((stream_id, stream));
        self.auth_session_started(stream_id, Action::Play, admitted);
        Ok(())
    }

    /// Waits for the callback's decision on a play, or until this shard's mirror has the
    /// owner's snapshot, then answers the play.
    pub(super) async fn finish_mirror_play(&mut self, pending: PendingPlay) -> Result<(), Ended> {
        let (stream_id, key, waiter, admitted) = match pending {
            PendingPlay::Auth { stream_id, name, decision } => {
                return self.finish_auth(Action::Play, stream_id, name, decision).await
            }
            PendingPlay::Mirror { stream_id, key, waiter, admitted } => {
                (stream_id, key, waiter, admitted)
            }
        };
        if within(OWNER_REPLY_TIMEOUT, waiter.wait()).await.is_none() {
            self.ctx.registry.leave_mirror_wait(&key, &waiter);
            warn!(stream = %key, "owner shard did not answer a play in time");
            return Err(Ended::Server(CloseReason::AfterFlush));
        }
        self.start_play(stream_id, key, Instant::now(), admitted)?;
        self.flush_session(Instant::now());
        Ok(())
    }

    /// Waits for the owner's answer to a publish, then answers the client.
    pub(super) async fn finish_publish(&mut self, pending: PendingPublish) -> Result<(), Ended> {
        let (stream_id, key, waiter, admitted) = match pending {
            PendingPublish::Auth { stream_id, name, decision } => {
                return self.finish_auth(Action::Publish, stream_id, name, decision).await
            }
            PendingPublish::Owner { stream_id, key, waiter, admitted } => {
                (stream_id, key, waiter, admitted)
            }
        };
        let Some(result) = within(OWNER_REPLY_TIMEOUT, waiter.wait()).await else {
            self.ctx.registry.forget_publish_request(self.conn_id);
            warn!(stream = %key,
                "owner shard did not answer a publish in time");
            return Err(Ended::Server(CloseReason::AfterFlush));
        };
        let target = match result {
            Ok(uid) => match self.ctx.registry.granted(key.clone(), self.conn_id, uid) {
                Some(publication) => Ok(publication),
                // Granted, then released before this task ran: only a connection found gone is
                // released, so this one is ending anyway.
                None => return Err(Ended::PeerClosed),
            },
            Err(refused) => Err(refused),
        };
        self.answer_publish(stream_id, key, target, admitted)?;
        self.flush_session(Instant::now());
        Ok(())
    }

    /// Tells the client the owner's decision on its publish.
    fn answer_publish(
        &mut self,
        stream_id: u32,
        key: StreamKey,
        target: Result<Publication, PublishRefused>,
        admitted: Admitted,
    ) -> Result<(), Ended> {
        match target {
            Ok(target) => {
                self.session.accept_publish(stream_id, &key.name);
                info!(stream = %key,
                    owner = self.ctx.registry.owner_of(&key), "publish started");
                self.publishing.push((stream_id, target));
                self.auth_session_started(stream_id, Action::Publish, admitted);
                Ok(())
            }
            Err(refused) => {
                self.ctx.counters.publishes_rejected.inc();
                warn!(stream = %key,
                    reason = %refused, "publish refused");
                // Not `refused` itself: that names the other publisher's address.
                let description = match refused {
                    PublishRefused::AlreadyPublishing { .. } => {
                        format!("{key} is already being published")
                    }
                    PublishRefused::Limit(limit) => format!("limit {limit} reached"),
                    PublishRefused::Reserved => format!("{key} is fed by a pull of this server"),
                };
                self.session.reject_publish(stream_id, code::PUBLISH_BAD_NAME, &description);
                Err(Ended::PublishRefused)
            }
        }
    }

    fn stop_publishing(&self, publication: Publication, why: &str, now: Instant) {
        info!(stream = %publication.key(), "{why}");
        publication.stop(&self.ctx.registry, now);
    }

    /// Releases everything this connection holds in the registry.
    pub(super) fn cleanup(&mut self) {
        let now = Instant::now();
        if let Some(PendingPublish::Owner { .. }) = self.pending_publish.take() {
            self.ctx.registry.forget_publish_request(self.conn_id);
        }
        if let Some(PendingPlay::Mirror { key, waiter, .. }) = self.pending_play.take() {
            self.ctx.registry.leave_mirror_wait(&key, &waiter);
        }
        self.auth_sessions_done(None);
        self.ctx.auth_state.borrow_mut().remove(&self.conn_id);
        for (_, publishing) in std::mem::take(&mut self.publishing) {
            self.stop_publishing(publishing, "publisher disconnected", now);
        }
        self.ctx.registry.forget_connection(self.conn_id);
        for (stream_id, stream) in std::mem::take(&mut self.playing) {
            debug!(stream = %stream.key, "player disconnected");
            self.ctx.registry.leave(&stream, self.conn_id, stream_id);
        }
    }
}
