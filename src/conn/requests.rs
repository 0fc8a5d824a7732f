//! What the session asks of the shard: publish, play, media, pause and close, answered on this
//! shard or, for a stream another shard owns, once that shard has answered (each wait bounded).

use std::rc::Rc;
use std::time::{Duration, Instant};

use rtmp_proto::command::code;
use rtmp_proto::session::ServerEvent;
use tracing::{debug, info, warn, Span};

use super::driver::{Connection, Ended};
use super::within;
use crate::metrics::Limit;
use crate::stream::{
    CloseReason, Publication, PublishRefused, PublishStart, PublishWaiter, PublisherInfo,
    SnapshotWaiter, StreamKey, Subscriber,
};

/// How long a publish waits for the owner shard's answer (which may itself wait for the shard of
/// the key's current holder, at most the registry's `PROBE_TIMEOUT`). Shards answer in
/// microseconds; this only bounds a shard that is wedged.
const OWNER_REPLY_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) struct PendingPublish {
    pub(super) stream_id: u32,
    pub(super) key: StreamKey,
    pub(super) waiter: Rc<PublishWaiter>,
}

/// A play on a shard whose mirror of the stream waits for the owner's first snapshot; see
/// `Registry::join_mirror`.
pub(super) struct PendingPlay {
    pub(super) stream_id: u32,
    pub(super) key: StreamKey,
    pub(super) waiter: Rc<SnapshotWaiter>,
}

impl Connection {
    pub(super) fn on_event(&mut self, event: ServerEvent, now: Instant) -> Result<(), Ended> {
        match event {
            ServerEvent::Connected(params) => {
                self.check_name_length(params.app.len())?;
                Span::current().record("app", params.app.as_str());
                self.admission.handshake_done();
                debug!(app = %params.app,
                    flash_ver = params.flash_ver.as_deref().unwrap_or(""), "connected");
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
                Span::current().record("key", name.key.as_str());
                let key = self.key(&name.key);
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
                let publisher = PublisherInfo {
                    conn_id: self.conn_id,
                    shard: self.ctx.shard_id,
                    peer: self.peer,
                };
                // What the registry asks, should a later publish find this connection holding
                // the key, before it refuses that one: is this socket still open?
                let liveness = Rc::downgrade(&self.socket);
                match self.ctx.registry.start_publish(key.clone(), publisher, liveness, now) {
                    PublishStart::Decided(result) => self.answer_publish(stream_id, key, result)?,
                    PublishStart::Waiting(waiter) => {
                        self.pending_publish = Some(PendingPublish { stream_id, key, waiter })
                    }
                }
            }
            ServerEvent::PlayRequested { stream_id, name } => {
                if let Err(refused) = self.check_name_length(name.key.len()) {
                    self.session.reject_play(stream_id, code::PLAY_FAILED, "stream key too long");
                    return Err(refused);
                }
                Span::current().record("key", name.key.as_str());
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
                let key = self.key(&name.key);
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
                        self.pending_play = Some(PendingPlay { stream_id, key, waiter })
                    }
                    None => self.start_play(stream_id, key, now)?,
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
    fn start_play(&mut self, stream_id: u32, key: StreamKey, now: Instant) -> Result<(), Ended> {
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
        Ok(())
    }

    /// Waits until this shard's mirror has the owner's snapshot, then answers the play.
    pub(super) async fn finish_mirror_play(&mut self, pending: PendingPlay) -> Result<(), Ended> {
        if within(OWNER_REPLY_TIMEOUT, pending.waiter.wait()).await.is_none() {
            self.ctx.registry.leave_mirror_wait(&pending.key, &pending.waiter);
            warn!(stream = %pending.key, "owner shard did not answer a play in time");
            return Err(Ended::Server(CloseReason::AfterFlush));
        }
        self.start_play(pending.stream_id, pending.key, Instant::now())?;
        self.flush_session(Instant::now());
        Ok(())
    }

    /// Waits for the owner's answer to a publish, then answers the client.
    pub(super) async fn finish_publish(&mut self, pending: PendingPublish) -> Result<(), Ended> {
        let Some(result) = within(OWNER_REPLY_TIMEOUT, pending.waiter.wait()).await else {
            self.ctx.registry.forget_publish_request(self.conn_id);
            warn!(stream = %pending.key,
                "owner shard did not answer a publish in time");
            return Err(Ended::Server(CloseReason::AfterFlush));
        };
        let key = pending.key.clone();
        let target = match result {
            Ok(uid) => match self.ctx.registry.granted(pending.key, self.conn_id, uid) {
                Some(publication) => Ok(publication),
                // Granted, then released before this task ran: only a connection found gone is
                // released, so this one is ending anyway.
                None => return Err(Ended::PeerClosed),
            },
            Err(refused) => Err(refused),
        };
        self.answer_publish(pending.stream_id, key, target)?;
        self.flush_session(Instant::now());
        Ok(())
    }

    /// Tells the client the owner's decision on its publish.
    fn answer_publish(
        &mut self,
        stream_id: u32,
        key: StreamKey,
        target: Result<Publication, PublishRefused>,
    ) -> Result<(), Ended> {
        match target {
            Ok(target) => {
                self.session.accept_publish(stream_id, &key.name);
                info!(stream = %key,
                    owner = self.ctx.registry.owner_of(&key), "publish started");
                self.publishing.push((stream_id, target));
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
        if let Some(pending) = self.pending_publish.take() {
            self.ctx.registry.forget_publish_request(self.conn_id);
            drop(pending);
        }
        if let Some(pending) = self.pending_play.take() {
            self.ctx.registry.leave_mirror_wait(&pending.key, &pending.waiter);
        }
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
