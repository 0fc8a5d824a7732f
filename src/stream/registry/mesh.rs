//! What shards say to each other about streams, as the owner and as a mirror: publish
//! requests and their answers, holder probes, forwarded frames, subscriptions and snapshots.
//! [`crate::stream::shard`] defines the messages and the outboxes; this is what a shard does
//! with each message it receives.

use std::rc::Rc;
use std::time::Instant;

use tracing::debug;

use super::Registry;
use crate::stream::shard::ShardMessage;

impl Registry {
    /// Handles one message from shard `from`.
    pub fn handle(&self, from: usize, message: ShardMessage, now: Instant) {
        if let Some(counter) = self.received.get(from) {
            counter.inc();
        }
        match message {
            ShardMessage::PublishRequest { key, publisher } => {
                let conn_id = publisher.conn_id;
                if let Some(result) = self.decide_publish(key.clone(), publisher, from, now) {
                    if result.is_ok() {
                        debug!(stream = %key, from, "publish from another shard accepted");
                    }
                    self.answer_publish(from, conn_id, result, now);
                }
            }
            ShardMessage::PublishReply { conn_id, result } => {
                self.publish_answered(from, conn_id, result, now)
            }
            ShardMessage::ProbePublisher { token, conn_id } => {
                let gone = self.connection_gone(conn_id);
                self.outbox(from).push(ShardMessage::PublisherProbed { token, gone });
            }
            ShardMessage::PublisherProbed { token, gone } => {
                // None: the publish was refused already, the answer having come too late.
                let Some(parked) = self.parked.borrow_mut().remove(&token) else { return };
                let holder = parked.holder;
                if gone {
                    let still_held = self
                        .get(&parked.key)
                        .filter(|s| s.publisher().is_some_and(|p| p.conn_id == holder.conn_id));
                    if let Some(stream) = still_held {
                        self.release_gone(&stream, &holder, now);
                    }
                }
                // Granted if the key is free now (released here, or by its holder meanwhile);
                // refused if its holder is live, or another publisher took it meanwhile.
                let conn_id = parked.publisher.conn_id;
                let result = self.publish(parked.key, parked.publisher, now);
                self.answer_publish(parked.requester, conn_id, result, now);
            }
            ShardMessage::PublisherFrame { uid, conn_id, frame } => {
                let stream = self.by_uid.borrow().get(&uid).cloned();
                if let Some(stream) =
                    stream.filter(|s| s.publisher().is_some_and(|p| p.conn_id == conn_id))
                {
                    stream.relay_frame(Rc::new(frame), now, &self.settings(), &self.counters);
                }
            }
            ShardMessage::Unpublish { uid, conn_id } => {
                let stream = self.by_uid.borrow().get(&uid).cloned();
                if let Some(stream) = stream {
                    self.unpublish(&stream, conn_id, now);
                }
            }
            ShardMessage::Subscribe { key, token } => {
                // Over the stream limit, the mirror gets no snapshot: its players wait for a
                // publisher as long as players wait anywhere, then stop.
                let Ok(stream) = self.get_or_create(key.clone(), now) else { return };
                let (publisher, frames) = stream.add_mirror_shard(
                    from,
                    self.outbox(from).clone(),
                    &self.settings().encoder,
                );
                self.outbox(from).push(ShardMessage::Snapshot {
                    key,
                    token,
                    uid: stream.uid(),
                    publisher,
                    frames,
                });
                // Players on another shard want it: an on-demand pull starts here.
                self.hook_wanted(&stream, now);
            }
            ShardMessage::Unsubscribe { key, delivered } => {
                if let Some(stream) = self.get(&key).filter(|s| !s.is_mirror()) {
                    stream.add_departed(delivered);
                    stream.remove_mirror_shard(from);
                    self.remove_if_unused(&stream);
                }
            }
            ShardMessage::Snapshot { key, token, uid, publisher, frames } => {
                // Only the answer to this mirror's own Subscribe counts: an earlier mirror of
                // the same key may have left with its answer still in flight.
                if self.pending_snapshots.borrow().get(&key) != Some(&token) {
                    return;
                }
                self.pending_snapshots.borrow_mut().remove(&key);
                if let Some(mirror) = self.get(&key).filter(|s| s.is_mirror()) {
                    mirror.set_uid(uid);
                    self.by_uid.borrow_mut().insert(uid, mirror.clone());
                    mirror.load_snapshot(publisher, frames, now, &self.settings());
                }
                let waiters = self.snapshot_waiters.borrow_mut().remove(&key);
                for waiter in waiters.into_iter().flatten() {
                    waiter.complete(());
                }
            }
            ShardMessage::Frame { uid, frame } => {
                let mirror = self.by_uid.borrow().get(&uid).cloned();
                if let Some(mirror) = mirror.filter(|s| s.is_mirror()) {
                    mirror.relay_frame(Rc::new(frame), now, &self.settings(), &self.counters);
                }
            }
            ShardMessage::Published { uid, publisher } => {
                let mirror = self.by_uid.borrow().get(&uid).cloned();
                if let Some(mirror) = mirror.filter(|s| s.is_mirror()) {
                    let _ = mirror.start_publishing(publisher, now, &self.settings());
                }
            }
            ShardMessage::Unpublished { uid } => {
                let mirror = self.by_uid.borrow().get(&uid).cloned();
                if let Some(mirror) = mirror.filter(|s| s.is_mirror()) {
                    mirror.stop_publishing(None, now, &self.settings());
                }
            }
        }
    }
}
