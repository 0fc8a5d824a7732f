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

use std::cell::RefCell;
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::stream::queue::{OutQueue, WriterState};
use crate::stream::Liveness;

/// Most queued messages gathered into one `sendmsg`. Linux allows 1024 iovecs; 64 frames is
/// already several hundred kilobytes of video and keeps the gather cheap.
const MAX_IOVECS: usize = 64;

#[derive(Debug)]
pub struct Socket {
    stream: RefCell<TcpStream>,
    fd: RawFd,
}

impl Socket {
    pub fn new(stream: TcpStream) -> Self {
        let fd = stream.as_raw_fd();
        Self { stream: RefCell::new(stream), fd }
    }

    /// Reads into `buf`; `Ok(0)` at end of stream.
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        poll_fn(|cx| Pin::new(&mut *self.stream.borrow_mut()).poll_read(cx, buf)).await
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
