//! A publisher: sends the synthetic stream of its key, paced against absolute deadlines.
//!
//! After NetStream.Publish.Start: `@setDataFrame onMetaData`, the AAC and AVC sequence headers,
//! then every frame of [`SyntheticStream`] at `publish start + due time`. While waiting for a
//! deadline the publisher also reads the socket (acknowledgements, pings, status messages), so a
//! server never sees a publisher that does not listen. A publisher that falls behind (its
//! executor was busy) sends the overdue frames at once and records how late they were as *send
//! lag*. How long each write waited for the server to take the bytes is recorded apart as *write
//! wait*: send lag with little write wait means the generator, not the server, is the bottleneck.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::future;
use rtmp_loadtest::clock;
use rtmp_loadtest::synth::{SyntheticStream, AUDIO_SEQUENCE_HEADER, VIDEO_SEQUENCE_HEADER};
use rtmp_proto::session::{ClientEvent, MediaKind};
use rtmp_proto::time::RtmpTimestamp;

use crate::conn::{sleep, sleep_until, Conn, ConnError, GaugeGuard, GaugeKind, Role, Shard};
use crate::rng::Rng;

#[derive(Debug, Clone)]
pub struct PublisherSpec {
    pub stream: usize,
    pub seed: u64,
    /// Keyframe phase in frames ([`SyntheticStream::with_keyframe_phase`]).
    pub keyframe_phase: u32,
    /// Delay of the frame schedule after Publish.Start, below one frame interval, so that
    /// publishers started together do not send their frames in lockstep.
    pub frame_offset: Duration,
}

/// Publishes until the run ends (the task is cancelled then), reconnecting after failures.
pub async fn run(shard: Rc<Shard>, spec: PublisherSpec) {
    sleep_until(shard.start).await;
    let mut rng = Rng::new(spec.seed);
    let key = shard.plan.key(spec.stream);
    loop {
        if let Err(e) = publish_once(&shard, &spec, &key, &mut rng).await {
            shard.stats.borrow_mut().interval.error("publisher", e.kind());
            sleep(shard.plan.retry_delay).await;
        }
    }
}

async fn publish_once(
    shard: &Rc<Shard>,
    spec: &PublisherSpec,
    key: &str,
    rng: &mut Rng,
) -> Result<(), ConnError> {
    let params = shard.plan.stream;
    let mut conn = Conn::open(shard, Role::Publish, rng.next_u64()).await?;
    let stream_id = conn.setup_within(Role::Publish, key).await?.stream_id;
    shard.stats.borrow_mut().interval.publisher_starts += 1;
    let _gauge = GaugeGuard::new(shard, GaugeKind::Publishing);

    conn.session.send_metadata(stream_id, &params.metadata());
    if params.audio_frame_size().is_some() {
        conn.session.send_media(
            stream_id,
            MediaKind::Audio,
            RtmpTimestamp::ZERO,
            AUDIO_SEQUENCE_HEADER,
        );
    }
    conn.session.send_media(
        stream_id,
        MediaKind::Video,
        RtmpTimestamp::ZERO,
        VIDEO_SEQUENCE_HEADER,
    );
    conn.flush().await?;

    let mut synth = SyntheticStream::new(params).with_keyframe_phase(spec.keyframe_phase);
    let t0 = Instant::now() + spec.frame_offset;
    loop {
        let deadline = t0 + Duration::from_nanos(synth.next_due_ns());
        while Instant::now() < deadline {
            let read = future::or(async { Some(conn.read_some(usize::MAX).await) }, async {
                sleep_until(deadline).await;
                None
            })
            .await;
            let Some(read) = read else { break };
            read?;
            conn.handle_input()?;
            while let Some(event) = conn.session.poll_event() {
                if let ClientEvent::Status { level, code, .. } = event {
                    if level == "error" {
                        let bad_name = code == rtmp_proto::command::code::PUBLISH_BAD_NAME;
                        return Err(ConnError::Rejected { bad_name });
                    }
                }
            }
            conn.flush().await?;
        }

        let now_ns = Instant::now().saturating_duration_since(t0).as_nanos() as u64;
        {
            let mut stats = shard.stats.borrow_mut();
            let stats = &mut stats.interval;
            while synth.next_due_ns() <= now_ns {
                let frame = synth.next_frame();
                let payload = synth.payload(&frame, clock::now_ns());
                conn.session.send_media(stream_id, frame.kind, frame.timestamp, payload);
                stats.frames_sent += 1;
                stats.bytes_sent += payload.len() as u64;
                stats.send_lag.record((now_ns - frame.due_ns) / 1000);
            }
        }
        let write_start = Instant::now();
        conn.flush().await?;
        let waited = write_start.elapsed().as_micros() as u64;
        shard.stats.borrow_mut().interval.write_wait.record(waited);
    }
}
