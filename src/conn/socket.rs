//! The only place bytes meet sockets.
//!
//! glommio's `TcpStream` is one object with `&mut self` reads and writes, but a connection needs
//! a reader task and a writer task at once. Both run on the same executor thread and each borrows
//! the stream only inside a single `poll`, never across an `.await`, so a `RefCell` shared by the
//! two is sound and never contended.
//!
//! Writes go out as one vectored `sendmsg(MSG_DONTWAIT)` per batch of queued frames (glommio has
//! no vectored write); only when the kernel buffer is full does the writer fall back to glommio's
//! `poll_write`, which waits for writability through io_uring.
//!
//! # TLS (RTMPS)
//! A TLS socket holds a sans-IO rustls connection between the socket and the RTMP session
//! (style anchor 16, rustls' tlsserver-mio): the reader feeds ciphertext to `read_tls` /
//! `process_new_packets` and hands the session what `reader()` yields; the writer encrypts the
//! queue's slices with `writer()` (the plaintext frames stay shared by every player; each
//! connection encrypts its own copy as it writes) and sends the records with `write_tls` through
//! the same vectored `sendmsg`. The handshake happens inside the first reads, so it counts
//! against the connection's handshake timeout like the RTMP handshake does. Until the TLS
//! handshake is done only the reader writes (its flights); after it, the reader only tries a
//! non-blocking send of what it produced (tickets, alerts) and the writer sends the rest, so the
//! two never wait for writability at once.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls::pki_types::ServerName;

use crate::metrics::TlsCounters;
use crate::stream::queue::{OutQueue, WriterState};
use crate::stream::Liveness;

/// Most queued messages gathered into one `sendmsg`. Linux allows 1024 iovecs; 64 frames is
/// already several hundred kilobytes of video and keeps the gather cheap.
const MAX_IOVECS: usize = 64;
/// Ciphertext read from the socket per read: one full TLS record and its header.
const TLS_READ: usize = 16 * 1024 + 512;

#[derive(Debug)]
pub struct Socket {
    stream: RefCell<TcpStream>,
    fd: RawFd,
    tls: Option<Tls>,
}

/// A TLS session over the socket.
#[derive(Debug)]
struct Tls {
    conn: RefCell<rustls::Connection>,
    /// Ciphertext read and not yet taken by rustls: (buffer, start, end).
    pending: RefCell<(Vec<u8>, usize, usize)>,
    /// The listener's counters (server side only): handshakes done or failed by reason.
    counters: Option<Rc<TlsCounters>>,
    /// Whether this handshake's outcome has been counted.
    counted: Cell<bool>,
}

/// A TLS failure as the socket reports it: the reason's short name and rustls' error.
#[derive(Debug)]
pub struct TlsFailure {
    pub kind: &'static str,
    pub error: rustls::Error,
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TLS ({}): {}", self.kind, self.error)
    }
}

impl std::error::Error for TlsFailure {}

impl Tls {
    fn new(conn: rustls::Connection, counters: Option<Rc<TlsCounters>>) -> Tls {
        Tls {
            conn: RefCell::new(conn),
            pending: RefCell::new((vec![0; TLS_READ], 0, 0)),
            counters,
            counted: Cell::new(false),
        }
    }

    fn count(&self, outcome: Result<(), &'static str>) {
        if self.counted.replace(true) {
            return;
        }
        if let Some(counters) = &self.counters {
            match outcome {
                Ok(()) => counters.handshakes_ok.inc(),
                Err(reason) => counters.failed(reason),
            }
        }
    }

    /// Hands rustls the pending ciphertext and decrypts it. Returns whether anything was taken.
    fn feed(&self) -> io::Result<bool> {
        let mut conn = self.conn.borrow_mut();
        let mut pending = self.pending.borrow_mut();
        let (buf, start, end) = &mut *pending;
        if *start == *end {
            return Ok(false);
        }
        let mut slice = &buf[*start..*end];
        let taken = conn.read_tls(&mut slice)?;
        *start += taken;
        if let Err(error) = conn.process_new_packets() {
            let kind = crate::tls::failure_kind(&error);
            if conn.is_handshaking() {
                self.count(Err(kind));
            }
            return Err(io::Error::new(io::ErrorKind::InvalidData, TlsFailure { kind, error }));
        }
        if !conn.is_handshaking() {
            self.count(Ok(()));
        }
        Ok(taken > 0)
    }
}

impl Drop for Tls {
    fn drop(&mut self) {
        // A peer that left, or was timed out, before finishing its handshake.
        if self.conn.get_mut().is_handshaking() {
            self.count(Err("abandoned"));
        }
    }
}

/// `io::Write` over the socket without waiting: vectored `sendmsg(MSG_DONTWAIT)`.
struct FdWriter(RawFd);

impl Write for FdWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        sendmsg(self.0, &[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        sendmsg(self.0, &bufs[..bufs.len().min(MAX_IOVECS)])
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `io::Write` over glommio's `poll_write`: `WouldBlock` while the socket is full, with the
/// task's waker registered for writability.
struct PollWriter<'a, 'b> {
    stream: &'a mut TcpStream,
    cx: &'a mut Context<'b>,
}

impl Write for PollWriter<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.stream).poll_write(self.cx, buf) {
            Poll::Ready(result) => result,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Socket {
    pub fn new(stream: TcpStream) -> Self {
        let fd = stream.as_raw_fd();
        Self { stream: RefCell::new(stream), fd, tls: None }
    }

    /// A server-side TLS socket (an RTMPS listener's connection). The handshake happens in the
    /// first reads; its outcome is counted in `counters`.
    pub fn tls_server(
        stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
        counters: Rc<TlsCounters>,
    ) -> io::Result<Self> {
        let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
        let fd = stream.as_raw_fd();
        let tls = Some(Tls::new(conn.into(), Some(counters)));
        Ok(Self { stream: RefCell::new(stream), fd, tls })
    }

    /// A client-side TLS socket (an outbound session to `name`); call [`Self::handshake`]
    /// before starting its writer.
    pub fn tls_client(
        stream: TcpStream,
        config: Arc<rustls::ClientConfig>,
        name: ServerName<'static>,
    ) -> io::Result<Self> {
        let conn = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        let fd = stream.as_raw_fd();
        Ok(Self { stream: RefCell::new(stream), fd, tls: Some(Tls::new(conn.into(), None)) })
    }

    /// Whether this socket speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Completes the TLS handshake (a no-op on a plain socket). Its errors are the socket's,
    /// or a [`TlsFailure`] (certificate refused, protocol mismatch) inside an `InvalidData`.
    pub async fn handshake(&self) -> io::Result<()> {
        let Some(tls) = &self.tls else { return Ok(()) };
        while tls.conn.borrow().is_handshaking() {
            self.flush_tls(tls).await?;
            if !tls.feed()?
                && tls.conn.borrow().is_handshaking()
                && self.read_ciphertext(tls).await? == 0
            {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        self.flush_tls(tls).await
    }

    /// Reads into `buf`; `Ok(0)` at end of stream. On a TLS socket: decrypted bytes.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match &self.tls {
            None => self.read_plain(buf).await,
            Some(tls) => self.read_tls(tls, buf).await,
        }
    }

    async fn read_plain(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)).await
    }

    /// Reads ciphertext into the pending buffer (which must be empty).
    async fn read_ciphertext(&self, tls: &Tls) -> io::Result<usize> {
        poll_fn(|cx| {
            let mut pending = tls.pending.borrow_mut();
            let (buf, start, end) = &mut *pending;
            let read = Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf);
            if let Poll::Ready(Ok(n)) = read {
                (*start, *end) = (0, n);
            }
            read
        })
        .await
    }

    async fn read_tls(&self, tls: &Tls, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Plaintext first: rustls takes more ciphertext only once its plaintext is read,
            // which keeps its buffer within its limit.
            match tls.conn.borrow_mut().reader().read(buf) {
                Ok(n) => return Ok(n), // 0: the peer's close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            if tls.feed()? {
                continue;
            }
            if tls.conn.borrow().is_handshaking() {
                // The handshake's flights: the writer has nothing to send before it is done.
                self.flush_tls(tls).await?;
            } else {
                self.try_flush_tls(tls)?;
            }
            if self.read_ciphertext(tls).await? == 0 {
                // End of stream without close_notify: as good as one for RTMP, whose own
                // messages are framed.
                return Ok(0);
            }
        }
    }

    /// Sends TLS records without waiting; what the socket does not take stays queued in rustls.
    fn try_flush_tls(&self, tls: &Tls) -> io::Result<()> {
        let mut conn = tls.conn.borrow_mut();
        while conn.wants_write() {
            match conn.write_tls(&mut FdWriter(self.fd)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Sends every queued TLS record, waiting for the socket when it is full.
    async fn flush_tls(&self, tls: &Tls) -> io::Result<()> {
        loop {
            self.try_flush_tls(tls)?;
            if !tls.conn.borrow().wants_write() {
                return Ok(());
            }
            poll_fn(|cx| {
                let mut stream = self.stream.borrow_mut();
                let mut writer = PollWriter { stream: &mut stream, cx };
                match tls.conn.borrow_mut().write_tls(&mut writer) {
                    Ok(_) => Poll::Ready(Ok(())),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Poll::Pending,
                    Err(e) => Poll::Ready(Err(e)),
                }
            })
            .await?;
        }
    }

    /// Sets SO_SNDBUF (the kernel doubles it), which also turns off send-buffer autotuning
    /// for this socket.
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        // SAFETY: `value` lives across the call and its size is passed; the fd is owned by
        // `self.stream`.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&value as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Ends both directions now, waking a pending read: how the writer tells the reader that
    /// the connection is over (slow subscriber, closed by the server).
    pub fn shutdown(&self) {
        // SAFETY: `fd` is owned by `self.stream`, which outlives this call; shutdown(2) on a
        // valid socket has no memory-safety preconditions.
        unsafe {
            libc::shutdown(self.fd, libc::SHUT_RDWR);
        }
    }

    /// Writes everything `queue` holds until the queue is closed, then returns. An error is the
    /// socket's (peer gone, reset).
    pub async fn drain(&self, queue: &OutQueue) -> io::Result<()> {
        if let Some(tls) = &self.tls {
            return self.drain_tls(tls, queue).await;
        }
        loop {
            if poll_fn(|cx| queue.poll_ready(cx)).await == WriterState::Done {
                return Ok(());
            }
            match queue.write_with(MAX_IOVECS, Instant::now(), |slices| sendmsg(self.fd, slices)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.write_when_ready(queue).await?
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            // A writer with a deep queue must not starve the rest of the shard.
            glommio::yield_if_needed().await;
        }
    }

    /// [`Self::drain`] through TLS: each batch of queued slices is encrypted into records
    /// (rustls bounds what it holds: its default 64 KiB buffer limit) and the records are sent
    /// before the next batch is taken, so a slow peer backs up the queue, where the slow-player
    /// policy sees it, not rustls.
    async fn drain_tls(&self, tls: &Tls, queue: &OutQueue) -> io::Result<()> {
        loop {
            self.flush_tls(tls).await?;
            if poll_fn(|cx| queue.poll_ready(cx)).await == WriterState::Done {
                tls.conn.borrow_mut().send_close_notify();
                // Best effort: a peer that stopped reading does not hold the close up.
                return self.try_flush_tls(tls);
            }
            let taken = queue.write_with(MAX_IOVECS, Instant::now(), |slices| {
                tls.conn.borrow_mut().writer().write_vectored(slices)
            })?;
            if taken == 0 && !tls.conn.borrow().wants_write() {
                // rustls takes no plaintext before its handshake is done (the reader does the
                // handshake): wait a little rather than spin.
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            glommio::yield_if_needed().await;
        }
    }

    /// Waits for the socket to take more bytes and writes the front of the queue.
    async fn write_when_ready(&self, queue: &OutQueue) -> io::Result<()> {
        poll_fn(|cx| {
            let mut stream = self.stream.borrow_mut();
            let mut pending = false;
            let result = queue.write_with(1, Instant::now(), |slices| {
                let Some(first) = slices.first() else { return Ok(0) };
                match Pin::new(&mut *stream).poll_write(cx, first) {
                    Poll::Ready(result) => result,
                    Poll::Pending => {
                        pending = true;
                        Ok(0)
                    }
                }
            });
            if pending {
                Poll::Pending
            } else {
                Poll::Ready(result.map(drop))
            }
        })
        .await
    }
}

/// A publisher's connection is gone once its peer closed it (FIN) or reset it, or the socket
/// failed or was shut down: asked before its key is refused to a new publisher.
impl Liveness for Socket {
    fn is_gone(&self) -> bool {
        peer_gone(self.fd)
    }
}

/// Whether the peer of `fd` can send nothing more: it closed its side (FIN), reset the
/// connection, or the socket failed or was shut down here. One `poll(2)` with a zero timeout:
/// it never waits and reads nothing. `POLLRDHUP` is raised by a FIN whatever is still queued
/// before it, where a `recv(MSG_PEEK)` would see the queued bytes and not the end behind them.
/// A failed `poll` says "not gone": a key is refused rather than taken from a live publisher.
pub(crate) fn peer_gone(fd: RawFd) -> bool {
    let mut pollfd = libc::pollfd { fd, events: libc::POLLRDHUP, revents: 0 };
    // SAFETY: one valid pollfd, and its count; a zero timeout returns at once.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    let gone = libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL;
    ready > 0 && pollfd.revents & gone != 0
}

/// One non-blocking vectored send.
fn sendmsg(fd: RawFd, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    if slices.is_empty() {
        return Ok(0);
    }
    // SAFETY: an all-zero msghdr is valid (no name, no control data).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix.
    header.msg_iov = slices.as_ptr() as *mut libc::iovec;
    header.msg_iovlen = slices.len() as _;
    // SAFETY: `header` points at `slices`, which are live, initialised buffers for the duration
    // of the call; the kernel only reads them. MSG_DONTWAIT keeps the call non-blocking even
    // though accepted sockets are in blocking mode; MSG_NOSIGNAL turns a closed peer into EPIPE
    // instead of SIGPIPE.
    let sent = unsafe { libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::time::{Duration, Instant};

    use super::*;

    /// (the server's end, the client's end) of a loopback connection.
    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (server, client)
    }

    /// Whether `fd` reads as gone within a second (a loopback FIN or RST arrives at once, but
    /// the check must not depend on it arriving before the call returns).
    fn gone_soon(fd: RawFd) -> bool {
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if peer_gone(fd) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }

    #[test]
    fn a_live_peer_is_not_gone_even_with_data_unread() {
        let (server, mut client) = pair();
        assert!(!peer_gone(server.as_raw_fd()));
        client.write_all(b"media the server has not read").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert!(!peer_gone(server.as_raw_fd()), "unread data is not an end");
        drop(client);
    }

    #[test]
    fn a_peer_that_closed_is_gone_even_with_data_unread_before_its_fin() {
        let (server, mut client) = pair();
        client.write_all(b"last media before the FIN").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(gone_soon(server.as_raw_fd()));
    }

    #[test]
    fn a_peer_that_reset_is_gone() {
        let (server, mut client) = pair();
        client.write_all(b"unread").unwrap();
        socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).unwrap();
        drop(client);
        assert!(gone_soon(server.as_raw_fd()));
    }

    #[test]
    fn a_socket_shut_down_here_is_gone() {
        let (server, _client) = pair();
        server.shutdown(std::net::Shutdown::Both).unwrap();
        assert!(peer_gone(server.as_raw_fd()));
    }
}
