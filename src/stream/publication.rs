//! A publishing connection's handle on its stream: the stream's one source, as the connection
//! sees it.
//!
//! A connection hands its [`Publication`] every message it reads and stops it when the publish
//! ends; it never asks where the stream lives. The publication encodes each message once,
//! counts it once, and delivers the frame where the stream is: straight into the [`Stream`]
//! when this shard owns it, or as one mesh message to the owner shard when another shard does.
//!
//! A stream has exactly one source (design.md). Today's sources are a publisher on the owner
//! shard and a publisher on another shard, the two [`Route`]s here. An upstream pull (the
//! edge tier: the node plays the stream from an origin with rtmp-proto's client session) is
//! the third: a source the owner shard drives itself, which relays into the stream the way
//! [`Route::Owner`] does, so the stream, its cache and its sinks see no difference.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use rtmp_proto::session::Media;

use super::live::Stream;
use super::{Registry, StreamKey};
use crate::frame::Frame;

/// One connection's publish of one stream, from the moment the owner granted it.
#[derive(Debug)]
pub struct Publication {
    key: StreamKey,
    conn_id: u64,
    route: Route,
}

/// Where a publication's frames go.
#[derive(Debug)]
enum Route {
    /// This shard owns the stream.
    Owner(Rc<Stream>),
    /// Another shard owns it: one mesh message per frame, skipping to the next keyframe while
    /// that shard's channel is backed up.
    Forward { owner: usize, uid: u64, skipping: Cell<bool> },
}

impl Publication {
    /// A publish of a stream this shard owns.
    pub(super) fn owned(stream: Rc<Stream>, conn_id: u64) -> Self {
        Self { key: stream.key.clone(), conn_id, route: Route::Owner(stream) }
    }

    /// A publish of the stream `uid` that shard `owner` owns.
    pub(super) fn forwarded(key: StreamKey, conn_id: u64, owner: usize, uid: u64) -> Self {
        Self { key, conn_id, route: Route::Forward { owner, uid, skipping: Cell::new(false) } }
    }

    pub fn key(&self) -> &StreamKey {
        &self.key
    }

    /// The owner's id for the stream.
    pub fn uid(&self) -> u64 {
        match &self.route {
            Route::Owner(stream) => stream.uid(),
            Route::Forward { uid, .. } => *uid,
        }
    }

    /// Relays one message of the publisher: encoded once, counted once in this shard's
    /// ingress, then fanned out by the owner.
    pub fn relay(&self, registry: &Registry, media: Media, now: Instant) {
        let counters = registry.counters();
        counters.messages_in.inc();
        counters.bytes_in.add(media.payload.len() as u64);
        let settings = registry.settings();
        let frame = Frame::of(media, &settings.encoder);
        match &self.route {
            // Only while the stream is still this connection's: a publisher found gone (closed
            // or reset) is released for a new one, and what it sent before its end, still being
            // read, must not reach the new publisher's stream. The owner filters forwarded
            // frames the same way.
            Route::Owner(stream) => {
                if stream.publisher().is_some_and(|p| p.conn_id == self.conn_id) {
                    stream.relay_frame(Rc::new(frame), now, &settings, counters);
                }
            }
            Route::Forward { owner, uid, skipping } => {
                registry.forward_frame(*owner, *uid, self.conn_id, frame, skipping)
            }
        }
    }

    /// Ends the publish: players are told the publisher left and wait for a republish.
    pub fn stop(self, registry: &Registry, now: Instant) {
        match self.route {
            Route::Owner(stream) => registry.unpublish(&stream, self.conn_id, now),
            Route::Forward { owner, uid, .. } => {
                registry.unpublish_forwarded(owner, uid, self.conn_id)
            }
        }
    }
}
