//! Who publishes a key: the owner shard's decision, asked from any shard.
//!
//! Every publish of a key is decided on the shard that owns it. A key that is held is not
//! refused on sight: the holder may be a publisher that dropped its connection and reconnected
//! at once, whose end the shard holding that connection has not read yet. So the holder's shard
//! checks the holder's socket first ([`Liveness`]): a holder that is gone is released and the
//! key granted, a live one keeps it and the newcomer is refused. The granted connection gets a
//! [`Publication`], its handle on the stream; the recording of a publish starts and ends with
//! it.

use std::cell::Cell;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant, SystemTime};

use tracing::{debug, info, warn, Instrument, Span};

use super::Registry;
use crate::frame::Frame;
use crate::record::{RecordError, Recorder};
use crate::stream::live::Stream;
use crate::stream::publication::Publication;
use crate::stream::shard::{PublishWaiter, ShardMessage};
use crate::stream::{Liveness, PublishRefused, PublisherInfo, StreamKey};

/// How long a publish of a key held by a connection on another shard waits, on the owner, for
/// that shard to say whether the holder is still there; past it the publish is refused (never
/// two publishers on one key). Shards answer in microseconds: this only bounds a wedged one, and
/// is shorter than a connection's wait for the owner (conn's `OWNER_REPLY_TIMEOUT`), so the
/// publisher hears the refusal instead of being dropped.
pub(super) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a connection's publish request became.
#[derive(Debug)]
pub enum PublishStart {
    /// This shard owns the key and decided at once: the publication, or why not.
    Decided(Result<Publication, PublishRefused>),
    /// The answer (the stream's uid, or why not) comes later: from the owner shard, or once the
    /// shard of the key's current holder has said whether that holder is still there. A
    /// connection that gives up calls [`Registry::forget_publish_request`].
    Waiting(Rc<PublishWaiter>),
}

/// A publish waiting on the owner for the answer to a [`ShardMessage::ProbePublisher`].
#[derive(Debug)]
pub(super) struct ParkedPublish {
    pub(super) key: StreamKey,
    pub(super) publisher: PublisherInfo,
    /// Who held the key when the publish came, on another shard.
    pub(super) holder: PublisherInfo,
    /// The shard of the connection that asked, where the answer goes.
    pub(super) requester: usize,
    /// Refused past this if the holder's shard has not answered.
    pub(super) deadline: Instant,
}

impl Registry {
    /// A connection of this shard asks to publish `key`. Decided at once when this shard owns
    /// `key` and nothing needs asking; otherwise the answer comes through the returned waiter.
    ///
    /// A key held by another connection is not refused on sight: the holder may be a
    /// publisher that just dropped its connection and reconnected, whose end the shard holding
    /// that connection has not read yet (or, from another shard, not yet told the owner). So
    /// the holder's shard checks the holder's socket first ([`Liveness`]): a holder that is
    /// gone is released there and then and the key goes to the new publisher; a live holder
    /// keeps it and the new publisher is refused, as before. A holder on this shard is checked
    /// on the spot; one on another shard costs one mesh round trip, bounded by
    /// [`PROBE_TIMEOUT`].
    ///
    /// `liveness` answers for this connection when a later publish of a key it holds asks;
    /// it is kept until [`Self::forget_connection`].
    pub fn start_publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        liveness: Weak<dyn Liveness>,
        now: Instant,
    ) -> PublishStart {
        let conn_id = publisher.conn_id;
        self.liveness.borrow_mut().insert(conn_id, liveness);
        if !self.owns(&key) {
            if let Err(limit) = self.check_takes_requests(self.owner_of(&key)) {
                return PublishStart::Decided(Err(PublishRefused::Limit(limit)));
            }
            return PublishStart::Waiting(self.request_publish(key, publisher));
        }
        match self.decide_publish(key, publisher, self.shard_id, now) {
            Some(result) => {
                PublishStart::Decided(result.map(|stream| Publication::owned(stream, conn_id)))
            }
            None => PublishStart::Waiting(self.publish_waiter(conn_id)),
        }
    }

    /// A connection of this shard ended: it answers no more probes (any later one finds it
    /// gone).
    pub fn forget_connection(&self, conn_id: u64) {
        self.liveness.borrow_mut().remove(&conn_id);
    }

    /// Whether this shard's connection `conn_id` is gone: closed, reset, failed, or not known
    /// here any more (it ended, and its own release is done or on its way to the owner, ahead
    /// of any answer about it).
    pub(super) fn connection_gone(&self, conn_id: u64) -> bool {
        let liveness = self.liveness.borrow().get(&conn_id).and_then(Weak::upgrade);
        liveness.is_none_or(|l| l.is_gone())
    }

    /// On the owner: decides a publish of `key` asked from shard `requester` (see
    /// [`Self::start_publish`]). `None` while the holder's shard is asked; the answer then goes
    /// to the requester when that shard replies ([`ShardMessage::PublisherProbed`]).
    pub(super) fn decide_publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        requester: usize,
        now: Instant,
    ) -> Option<Result<Rc<Stream>, PublishRefused>> {
        // A configured pull owns its key: a connection never publishes it (the pull
        // publishes through `publish_source`, which does not ask).
        if self.reserved(&key) {
            return Some(Err(PublishRefused::Reserved));
        }
        let held = self.get(&key).and_then(|s| s.publisher().map(|holder| (s, holder)));
        if let Some((stream, holder)) = held.filter(|(_, h)| h.conn_id != publisher.conn_id) {
            if holder.shard != self.shard_id && holder.shard < self.outboxes.len() {
                // A stuck holder's shard cannot say the holder is gone: the holder keeps it.
                if self.check_takes_requests(holder.shard).is_err() {
                    return Some(Err(PublishRefused::AlreadyPublishing { by: holder.peer }));
                }
                self.probe(key, publisher, holder, requester, now);
                return None;
            }
            if self.connection_gone(holder.conn_id) {
                self.release_gone(&stream, &holder, now);
            }
        }
        Some(self.publish(key, publisher, now))
    }

    /// Parks a publish of `key` and asks the shard of its holder whether the holder is still
    /// there.
    pub(super) fn probe(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        holder: PublisherInfo,
        requester: usize,
        now: Instant,
    ) {
        let token = self.next_probe.get() + 1;
        self.next_probe.set(token);
        debug!(stream = %key, holder_shard = holder.shard,
            "key held by a connection on another shard: asking whether it is still there");
        self.outbox(holder.shard)
            .push(ShardMessage::ProbePublisher { token, conn_id: holder.conn_id });
        let deadline = now + PROBE_TIMEOUT;
        let parked = ParkedPublish { key, publisher, holder, requester, deadline };
        self.parked.borrow_mut().insert(token, parked);
    }

    /// Releases `stream` from `holder`, whose connection is gone (its own release of the key
    /// may still be on its way; it will find the key no longer its own and do nothing).
    pub(super) fn release_gone(&self, stream: &Rc<Stream>, holder: &PublisherInfo, now: Instant) {
        info!(stream = %stream.key, holder = %holder.peer,
            "the holder's connection is gone: releasing the key for a new publish");
        self.unpublish(stream, holder.conn_id, now);
    }

    /// The owner's decision on a publish goes to the shard of the connection that asked.
    pub(super) fn answer_publish(
        &self,
        requester: usize,
        conn_id: u64,
        result: Result<Rc<Stream>, PublishRefused>,
        now: Instant,
    ) {
        let result = result.map(|stream| stream.uid());
        if requester == self.shard_id {
            self.publish_answered(self.shard_id, conn_id, result, now);
        } else {
            self.outbox(requester).push(ShardMessage::PublishReply { conn_id, result });
        }
    }

    /// The decision of `owner` on a publish of this shard's connection `conn_id`.
    pub(super) fn publish_answered(
        &self,
        owner: usize,
        conn_id: u64,
        result: Result<u64, PublishRefused>,
        now: Instant,
    ) {
        let waiter = self.publish_waiters.borrow_mut().remove(&conn_id);
        match (waiter, result) {
            (Some(waiter), result) => waiter.complete(result),
            // The connection gave up (closed, or timed out waiting) before the owner
            // accepted: release the stream so it does not stay published by nobody.
            (None, Ok(uid)) if owner == self.shard_id => {
                let stream = self.by_uid.borrow().get(&uid).cloned();
                if let Some(stream) = stream {
                    self.unpublish(&stream, conn_id, now);
                }
            }
            (None, Ok(uid)) => self.outbox(owner).push(ShardMessage::Unpublish { uid, conn_id }),
            (None, Err(_)) => {}
        }
    }

    /// Refuses the parked publishes whose holder's shard did not answer in time: with no
    /// answer, the holder may be live, and a key never has two publishers. Called
    /// periodically by the shard.
    pub fn expire_probes(&self, now: Instant) {
        let expired: Vec<ParkedPublish> = {
            let mut parked = self.parked.borrow_mut();
            let tokens: Vec<u64> =
                parked.iter().filter(|(_, p)| p.deadline <= now).map(|(t, _)| *t).collect();
            tokens.iter().filter_map(|t| parked.remove(t)).collect()
        };
        for parked in expired {
            warn!(stream = %parked.key, holder_shard = parked.holder.shard,
                "no answer in time on whether the key's holder is still there: publish refused");
            let refused = PublishRefused::AlreadyPublishing { by: parked.holder.peer };
            self.answer_publish(parked.requester, parked.publisher.conn_id, Err(refused), now);
        }
    }

    /// Makes `publisher` the publisher of `key`, which this shard must own, unless someone
    /// holds it (whether or not that one is still there: see [`Self::start_publish`]).
    pub fn publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
        now: Instant,
    ) -> Result<Rc<Stream>, PublishRefused> {
        debug_assert!(self.owns(&key), "publish on the owner shard only");
        let stream = self.get_or_create(key, now).map_err(PublishRefused::Limit)?;
        if let Err(refused) = stream.start_publishing(publisher, now, &self.settings()) {
            self.remove_if_unused(&stream);
            return Err(refused);
        }
        self.counters.publishes.inc();
        self.counters.publishers.inc();
        self.start_recording(&stream);
        self.hook_published(&stream, now);
        Ok(stream)
    }

    /// A source that the owner shard drives itself (an upstream pull) starts publishing `key`,
    /// which this shard must own: the same publish as a connection's on the owner (recording,
    /// push relays, players told), without the holder checks that only connections need. Its
    /// frames go through the returned [`Publication`] like a local publisher's.
    pub fn publish_source(
        &self,
        key: StreamKey,
        source: PublisherInfo,
        now: Instant,
    ) -> Result<Publication, PublishRefused> {
        if !self.owns(&key) {
            return Err(PublishRefused::Reserved);
        }
        let conn_id = source.conn_id;
        self.publish(key, source, now).map(|stream| Publication::owned(stream, conn_id))
    }

    /// Starts recording a publish that just started, if its app is recorded. A key that cannot
    /// be a safe file name is logged and counted by `Recorder::start`; the stream is relayed
    /// either way.
    pub(super) fn start_recording(&self, stream: &Stream) {
        let settings = self.settings();
        let Some(config) = settings.record.as_ref() else { return };
        if !settings.records(&stream.key.app) {
            return;
        }
        let started = Recorder::start(
            config.clone(),
            self.record_counters.clone(),
            &stream.key.app,
            &stream.key.name,
            SystemTime::now(),
        );
        match started {
            Ok(recorder) => stream.set_recorder(recorder),
            Err(RecordError::UnsafeKey(_)) => {}
            Err(e) => warn!(stream = %stream.key, error = %e, "recording not started"),
        }
    }

    /// Finishes the recording of a publish that ended: the writer task writes what is queued,
    /// fixes up `onMetaData` and closes the file in the background.
    pub(super) fn finish_recording(&self, stream: &Stream) {
        let Some(recorder) = stream.take_recorder() else { return };
        let closing = self.recordings_closing.clone();
        closing.set(closing.get() + 1);
        let finish = async move {
            // The writer task logs the outcome (file, bytes, or the error).
            let _ = recorder.finish().await;
            closing.set(closing.get() - 1);
        };
        // In the span of whatever ended the publish (its connection, or the shard), so the
        // lines it logs say where.
        glommio::spawn_local(finish.instrument(Span::current())).detach();
    }

    /// Asks the owner of `key` (another shard) to accept `publisher`; the answer arrives
    /// through the returned waiter.
    pub(super) fn request_publish(
        &self,
        key: StreamKey,
        publisher: PublisherInfo,
    ) -> Rc<PublishWaiter> {
        let waiter = self.publish_waiter(publisher.conn_id);
        let owner = self.owner_of(&key);
        self.outbox(owner).push(ShardMessage::PublishRequest { key, publisher });
        waiter
    }

    /// Where the answer to connection `conn_id`'s publish will be delivered.
    pub(super) fn publish_waiter(&self, conn_id: u64) -> Rc<PublishWaiter> {
        let waiter = Rc::new(PublishWaiter::default());
        self.publish_waiters.borrow_mut().insert(conn_id, waiter.clone());
        waiter
    }

    /// Gives up on a publish request (the connection ended or timed out while waiting).
    pub fn forget_publish_request(&self, conn_id: u64) {
        self.publish_waiters.borrow_mut().remove(&conn_id);
    }

    /// The publication an answer that came through a [`PublishWaiter`] grants: the stream's
    /// `uid` on `owner`. `None` when the key was granted and then released before the
    /// connection could take it (only a connection found gone is released, so it is ending).
    pub fn granted(&self, key: StreamKey, conn_id: u64, uid: u64) -> Option<Publication> {
        let owner = self.owner_of(&key);
        if owner == self.shard_id {
            let stream = self.get(&key).filter(|s| s.uid() == uid)?;
            return Some(Publication::owned(stream, conn_id));
        }
        Some(Publication::forwarded(key, conn_id, owner, uid))
    }

    /// Sends one frame of a publisher on this shard to the owner of its stream.
    /// `skipping` is the publisher's own skip state for a backed-up owner.
    pub(in crate::stream) fn forward_frame(
        &self,
        owner: usize,
        uid: u64,
        conn_id: u64,
        frame: Frame,
        skipping: &Cell<bool>,
    ) {
        let message = ShardMessage::PublisherFrame { uid, conn_id, frame: frame.clone() };
        self.outbox(owner).push_frame(message, &frame, skipping);
    }

    /// Ends a publish whose stream another shard owns.
    pub(in crate::stream) fn unpublish_forwarded(&self, owner: usize, uid: u64, conn_id: u64) {
        self.outbox(owner).push(ShardMessage::Unpublish { uid, conn_id });
    }

    /// Ends `conn_id`'s publishing of `stream` (owned here).
    pub fn unpublish(&self, stream: &Rc<Stream>, conn_id: u64, now: Instant) {
        if stream.stop_publishing(Some(conn_id), now, &self.settings()) {
            self.counters.publishers.dec();
            self.finish_recording(stream);
            self.hook_unpublished(stream, now);
        }
        self.remove_if_unused(stream);
    }
}
