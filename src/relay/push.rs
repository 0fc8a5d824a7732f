//! One push of one stream to one destination: connect, publish, relay, end or fail, back off,
//! again, until the publish ends.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_lite::FutureExt;
use rtmp_proto::command::code;
use rtmp_proto::session::{ClientEvent, ClientSession};
use tracing::{info, warn};

use super::outbound::{backoff, decode, flush, handshake_random, open, within};
use super::{PushSettings, Target};
use crate::conn::Socket;
use crate::metrics::{PushState, PushStats};
use crate::stream::{CloseReason, OutQueue, RelaySettings, Stream, Subscriber};

/// How long the end of a push (its last frames, FCUnpublish, deleteStream) may take to flush.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes asked of the kernel per read: a destination sends little (acks, pings, statuses).
const READ_SIZE: usize = 4096;

/// A push as its stream's hook and the stats see it; the task updates it.
#[derive(Debug)]
pub struct PushHandle {
    pub(super) id: u64,
    pub(super) stream: Rc<Stream>,
    pub(super) target: Target,
    tls: Option<Arc<rustls::ClientConfig>>,
    stopped: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    state: Cell<PushState>,
    /// Bytes written by attempts that ended, and the current attempt's queue.
    bytes_done: Cell<u64>,
    queue: RefCell<Option<Rc<OutQueue>>>,
    connects: Cell<u64>,
    failures: Cell<u64>,
    dropped_done: Cell<u64>,
    sink: RefCell<Option<Rc<Subscriber>>>,
    last_success: Cell<Option<Instant>>,
    last_error: RefCell<Option<String>>,
}

impl PushHandle {
    pub(super) fn new(
        id: u64,
        stream: Rc<Stream>,
        target: Target,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Self {
        Self {
            id,
            stream,
            target,
            tls,
            stopped: Cell::new(false),
            waker: RefCell::new(None),
            state: Cell::new(PushState::Connecting),
            bytes_done: Cell::new(0),
            queue: RefCell::new(None),
            connects: Cell::new(0),
            failures: Cell::new(0),
            dropped_done: Cell::new(0),
            sink: RefCell::new(None),
            last_success: Cell::new(None),
            last_error: RefCell::new(None),
        }
    }

    /// The publish ended: the push ends (gracefully if it is live).
    pub fn stop(&self) {
        self.stopped.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves once [`Self::stop`] is called.
    async fn until_stopped(&self) {
        poll_fn(|cx| {
            if self.stopped.get() {
                Poll::Ready(())
            } else {
                *self.waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }

    pub(super) fn stats(&self, now: Instant) -> PushStats {
        let current = self.queue.borrow().as_ref().map_or(0, |q| q.bytes_written());
        let dropped = self.sink.borrow().as_ref().map_or(0, |s| s.dropped());
        PushStats {
            app: self.stream.key.app.clone(),
            name: self.stream.key.name.clone(),
            destination: self.target.masked.clone(),
            state: self.state.get(),
            bytes_out: self.bytes_done.get() + current,
            connects: self.connects.get(),
            failures: self.failures.get(),
            dropped: self.dropped_done.get() + dropped,
            since_last_success_secs: self.last_success.get().map(|t| (now - t).as_secs_f64()),
            last_error: self.last_error.borrow().clone(),
        }
    }

    /// The current attempt is over: its counts join the totals.
    fn end_attempt(&self) {
        if let Some(queue) = self.queue.borrow_mut().take() {
            self.bytes_done.set(self.bytes_done.get() + queue.bytes_written());
        }
        if let Some(sink) = self.sink.borrow_mut().take() {
            self.stream.detach_sink(sink.conn_id, sink.stream_id);
            self.dropped_done.set(self.dropped_done.get() + sink.dropped());
        }
    }
}

/// Why an attempt ended.
enum Ended {
    /// The publish ended (or never was live any more): the push is over.
    Stopped,
    /// Anything else: back off and try again.
    Failed(String),
}

/// Runs a push until its publish ends.
pub(super) async fn run(
    handle: Rc<PushHandle>,
    settings: Rc<PushSettings>,
    relay: RelaySettings,
    mut seed: u64,
) {
    let mut failures_in_a_row = 0u32;
    loop {
        if handle.stopped.get() {
            break;
        }
        handle.state.set(PushState::Connecting);
        let ended = attempt(&handle, &settings, &relay, &mut seed).await;
        let connected = handle.sink.borrow().is_some();
        handle.end_attempt();
        match ended {
            Ended::Stopped => break,
            Ended::Failed(reason) => {
                handle.failures.set(handle.failures.get() + 1);
                if connected {
                    failures_in_a_row = 0;
                }
                failures_in_a_row = failures_in_a_row.saturating_add(1);
                let delay = backoff(
                    settings.backoff_min,
                    settings.backoff_max,
                    failures_in_a_row,
                    &mut seed,
                );
                warn!(reason = %reason, retry_in_ms = delay.as_millis() as u64, "push failed");
                *handle.last_error.borrow_mut() = Some(reason);
                handle.state.set(PushState::Backoff);
                let slept = async {
                    glommio::timer::sleep(delay).await;
                    true
                };
                if !slept
                    .or(async {
                        handle.until_stopped().await;
                        false
                    })
                    .await
                {
                    break;
                }
            }
        }
    }
    info!("push ended");
}

/// One connection to the destination, from connect to its end.
async fn attempt(
    handle: &Rc<PushHandle>,
    settings: &PushSettings,
    relay: &RelaySettings,
    seed: &mut u64,
) -> Ended {
    let target = &handle.target;
    let connecting = open(&target.host, target.port, target.tls, handle.tls.as_ref());
    let connected = async { Some(within(settings.connect_timeout, connecting).await) }
        .or(async {
            handle.until_stopped().await;
            None
        })
        .await;
    let (addr, socket) = match connected {
        None => return Ended::Stopped,
        Some(None) => return Ended::Failed("connect timed out".into()),
        Some(Some(Err(e))) => return Ended::Failed(e),
        Some(Some(Ok(connected))) => connected,
    };
    let socket = Rc::new(socket);
    let queue = Rc::new(OutQueue::new(Instant::now()));
    *handle.queue.borrow_mut() = Some(queue.clone());
    let writer = {
        let (socket, queue) = (socket.clone(), queue.clone());
        glommio::spawn_local(async move {
            let result = socket.drain(&queue).await;
            socket.shutdown();
            result
        })
    };
    let mut session = ClientSession::new(settings.session, 0, &handshake_random(seed), false);
    let mut conn = PushConn { handle, socket, queue: queue.clone(), addr, input: BytesMut::new() };
    conn.flush(&mut session);

    // Handshake, connect, createStream, publish: until NetStream.Publish.Start.
    let publishing = async {
        let mut stream_id = None;
        loop {
            for event in conn.read(&mut session).await? {
                match event {
                    ClientEvent::HandshakeDone => {
                        session.set_chunk_size(relay.encoder.chunk_size());
                        session.connect(&target.app, &target.tc_url);
                    }
                    ClientEvent::Connected => {
                        session.announce_publish(&target.name);
                        session.create_stream();
                    }
                    ClientEvent::StreamCreated { stream_id: id } => {
                        stream_id = Some(id);
                        session.publish(id, &target.name);
                    }
                    ClientEvent::Status { code: c, .. } if c == code::PUBLISH_START => {
                        return stream_id.ok_or_else(|| "Publish.Start before a stream".into());
                    }
                    ClientEvent::Status { level, code, description, .. } if level == "error" => {
                        return Err(format!("destination refused: {code} {description}"));
                    }
                    ClientEvent::CallFailed { command, code } => {
                        return Err(format!(
                            "destination refused {command}: {}",
                            code.unwrap_or_default()
                        ));
                    }
                    _ => {}
                }
            }
            conn.flush(&mut session);
        }
    };
    let published = async { Some(within(settings.connect_timeout, publishing).await) }
        .or(async {
            handle.until_stopped().await;
            None
        })
        .await;
    let stream_id = match published {
        None => return conn.close(writer, Ended::Stopped).await,
        Some(None) => return conn.close(writer, Ended::Failed("publish timed out".into())).await,
        Some(Some(Err(e))) => return conn.close(writer, Ended::Failed(e)).await,
        Some(Some(Ok(id))) => id,
    };
    conn.flush(&mut session);
    if handle.stream.publisher().is_none() {
        return conn.close(writer, Ended::Stopped).await;
    }

    // Live: the stream's frames flow through the sink's queue; the destination's acks and
    // pings are answered; a status error, a reset or a cut queue ends the attempt.
    let sink =
        Rc::new(Subscriber::relay(handle.id, addr, stream_id, queue.clone(), settings.queue_bytes));
    handle.stream.attach_sink(sink.clone(), Instant::now(), relay);
    *handle.sink.borrow_mut() = Some(sink);
    handle.connects.set(handle.connects.get() + 1);
    handle.last_success.set(Some(Instant::now()));
    handle.state.set(PushState::Live);
    info!(stream_id, "push live");
    let live = async {
        loop {
            for event in conn.read(&mut session).await? {
                if let ClientEvent::Status { level, code, description, .. } = event {
                    if level == "error" {
                        return Err(format!("destination error: {code} {description}"));
                    }
                }
            }
            conn.flush(&mut session);
        }
    };
    let ended: Result<(), String> = live
        .or(async {
            handle.until_stopped().await;
            Ok(())
        })
        .await;
    match ended {
        Err(e) => conn.close(writer, Ended::Failed(e)).await,
        Ok(()) => {
            // Unpublish passed on: after what is queued, FCUnpublish and deleteStream.
            handle.end_attempt_sink();
            session.fc_unpublish(&target.name);
            session.delete_stream(stream_id);
            conn.flush(&mut session);
            info!("push ending: unpublish passed on");
            conn.close(writer, Ended::Stopped).await
        }
    }
}

impl PushHandle {
    /// Takes the sink off the stream (no more frames), keeping the connection.
    fn end_attempt_sink(&self) {
        if let Some(sink) = self.sink.borrow_mut().take() {
            self.stream.detach_sink(sink.conn_id, sink.stream_id);
            self.dropped_done.set(self.dropped_done.get() + sink.dropped());
        }
    }
}

struct PushConn<'a> {
    handle: &'a PushHandle,
    socket: Rc<Socket>,
    queue: Rc<OutQueue>,
    addr: SocketAddr,
    input: BytesMut,
}

impl PushConn<'_> {
    fn flush(&self, session: &mut ClientSession) {
        flush(session, &self.queue);
    }

    /// Reads once and returns the session's events. An end of stream, a socket error or a
    /// protocol error is the attempt's end, with the queue's reason when the queue was cut.
    async fn read(&mut self, session: &mut ClientSession) -> Result<Vec<ClientEvent>, String> {
        let mut buf = [0u8; READ_SIZE];
        let read = self.socket.read(&mut buf).await;
        let cut = || self.queue.close_reason().map(|r| format!("queue closed: {}", r.as_str()));
        let n = match read {
            Ok(0) => {
                return Err(cut().unwrap_or_else(|| "destination closed the connection".into()))
            }
            Ok(n) => n,
            Err(e) => return Err(cut().unwrap_or_else(|| format!("{} : {e}", self.addr))),
        };
        decode(session, &mut self.input, &buf[..n])
    }

    /// Ends the connection: what is queued goes out within a bound (all of it on a graceful
    /// end; on a failure the queue is dropped at once).
    async fn close(self, writer: glommio::Task<std::io::Result<()>>, ended: Ended) -> Ended {
        let graceful = matches!(ended, Ended::Stopped);
        self.handle.end_attempt_sink();
        if graceful {
            self.queue.close(CloseReason::AfterFlush);
        } else {
            self.queue.close(CloseReason::ConnectionEnded);
        }
        if within(CLOSE_FLUSH_TIMEOUT, writer).await.is_none() {
            self.queue.close(CloseReason::ConnectionEnded);
        }
        self.socket.shutdown();
        ended
    }
}
