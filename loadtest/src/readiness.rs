//! Read readiness of player sockets from one edge-triggered epoll set per executor, instead of
//! one io_uring poll per read.
//!
//! # Why
//! A glommio socket read that finds no data arms a one-shot io_uring poll on that socket. The
//! poll completes in the *server's* context (on loopback, inside its `sendmsg`), and io_uring
//! hands the completion to our thread as task work with `TWA_SIGNAL`: when our thread is busy
//! in user space, that is a rescheduling IPI to our core. At W1 with 1000 players that was
//! about 26 000 IPIs a second and a fifth of the load generator's CPU, plus an `io_uring_enter`
//! submission and a completion per message per player (another 15%). An edge-triggered epoll
//! registration is made once per connection; the server's wake-up only puts the socket on the
//! ready list, and a busy reader collects the whole list with one `epoll_wait`.
//!
//! # How
//! - A player's connection registers its socket once ([`Readiness::register`]) and reads it
//!   with its own non-blocking `recv` (see `conn.rs`). Before each `recv` it clears its ready
//!   flag; a `recv` that filled the buffer sets it again (there may be more); one that did not
//!   drained the socket, and the next edge will say when more came.
//! - One poller task per executor ([`Readiness::run`]) collects ready sockets with a
//!   non-blocking `epoll_wait`, sets their flags and wakes the tasks waiting on them, yields so
//!   they run, and repeats. Only when nothing has been ready for a moment ([`SPIN`]) does it
//!   park: the blocking `epoll_wait`
//!   runs on glommio's blocking thread (`spawn_blocking`), so the executor stays free for
//!   publishers and timers, and the first ready socket wakes it. Under load the poller rarely
//!   parks; when idle it parks once per burst the server sends, not once per player.
//! - Tasks are woken only when they wait: a stalled or sleeping (slow) player's socket just
//!   stays flagged ready.
//! - [`Readiness::stop`] wakes a parked poller through an eventfd in the same epoll set, so the
//!   executor can wait for the blocking call to return before it exits.

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// Events one `epoll_wait` collects at most.
const EVENTS: usize = 1024;

/// How long the poller keeps looking (yielding to the other tasks in between) after the last
/// ready socket before it parks. A server writes a message to its players one after another;
/// on loopback the next player's data is typically microseconds behind the last one, while a
/// park and wake-up goes through two thread switches on the blocking thread. Measured side by
/// side at W1 (two generators of 500 players on one core), 50 us against none: about 3% more
/// CPU (649 vs 629, 663 vs 643 us per player-second) for a generator that reads sooner
/// (latency p50 14.2 vs 16.2 and 14.0 vs 16.7 ms): less of its own delay in the figures.
const SPIN: Duration = Duration::from_micros(50);

/// Longest a parked poller waits before it looks again (a safety net: [`Readiness::stop`]
/// wakes it at once).
const PARK_TIMEOUT: Duration = Duration::from_millis(500);

/// The epoll key of the stop eventfd (sockets use their slot index).
const STOP_KEY: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Slot {
    in_use: bool,
    /// Data may be waiting (set by the poller, and after a read that filled its buffer).
    ready: bool,
    /// The task waiting for `ready`.
    waker: Option<Waker>,
}

/// A socket's place in a [`Readiness`] set.
#[derive(Debug)]
pub struct Registration {
    index: usize,
    fd: RawFd,
}

/// One executor's epoll set of player sockets.
#[derive(Debug)]
pub struct Readiness {
    epoll: OwnedFd,
    stop_fd: OwnedFd,
    slots: RefCell<Vec<Slot>>,
    free: RefCell<Vec<usize>>,
    stopping: Cell<bool>,
}

fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn epoll_add(epoll: RawFd, fd: RawFd, key: u64) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
        u64: key,
    };
    // SAFETY: both descriptors are open (the caller owns `fd` for as long as it is registered);
    // `event` is a valid epoll_event on our stack.
    check(unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) })?;
    Ok(())
}

/// `epoll_wait` into `events`; the number of events (0 on EINTR).
fn epoll_wait(epoll: RawFd, events: &mut [libc::epoll_event], timeout_ms: i32) -> usize {
    let max = events.len().min(i32::MAX as usize) as i32;
    // SAFETY: `events` is a writable buffer of `max` epoll_events; the epoll fd is open for as
    // long as the `Readiness` that owns it, which outlives every wait (see `Readiness::run`).
    let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), max, timeout_ms) };
    usize::try_from(n).unwrap_or(0)
}

impl Readiness {
    pub fn new() -> io::Result<Self> {
        // SAFETY: plain system calls; each returned descriptor is checked and then owned.
        let epoll =
            unsafe { OwnedFd::from_raw_fd(check(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let stop_fd = unsafe {
            OwnedFd::from_raw_fd(check(libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK))?)
        };
        epoll_add(epoll.as_raw_fd(), stop_fd.as_raw_fd(), STOP_KEY)?;
        Ok(Self {
            epoll,
            stop_fd,
            slots: RefCell::default(),
            free: RefCell::default(),
            stopping: Cell::new(false),
        })
    }

    /// Adds a socket (flagged ready, so the first read tries at once). The socket must stay
    /// open until [`Readiness::deregister`].
    pub fn register(&self, fd: RawFd) -> io::Result<Registration> {
        let index = match self.free.borrow_mut().pop() {
            Some(index) => index,
            None => {
                let mut slots = self.slots.borrow_mut();
                slots.push(Slot::default());
                slots.len() - 1
            }
        };
        if let Err(e) = epoll_add(self.epoll.as_raw_fd(), fd, index as u64) {
            self.free.borrow_mut().push(index);
            return Err(e);
        }
        self.slots.borrow_mut()[index] = Slot { in_use: true, ready: true, waker: None };
        Ok(Registration { index, fd })
    }

    /// Removes a socket; call it before the socket is closed.
    pub fn deregister(&self, registration: &Registration) {
        // SAFETY: the socket is still open (the caller closes it after this call); a failure
        // (e.g. it was never added) leaves nothing to undo.
        unsafe {
            libc::epoll_ctl(
                self.epoll.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                registration.fd,
                std::ptr::null_mut(),
            );
        }
        self.slots.borrow_mut()[registration.index] = Slot::default();
        self.free.borrow_mut().push(registration.index);
    }

    /// Ready when data may be waiting; otherwise wakes `cx` when the socket's next edge comes.
    pub fn poll_ready(&self, registration: &Registration, cx: &Context<'_>) -> Poll<()> {
        let mut slots = self.slots.borrow_mut();
        let slot = &mut slots[registration.index];
        if slot.ready {
            return Poll::Ready(());
        }
        match &mut slot.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            waker => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Sets or clears the ready flag: cleared before every `recv`, set again after one that
    /// filled its buffer.
    pub fn set_ready(&self, registration: &Registration, ready: bool) {
        self.slots.borrow_mut()[registration.index].ready = ready;
    }

    /// Flags the sockets of `events` ready and wakes their waiting tasks. Returns true when the
    /// stop eventfd was among them.
    fn dispatch(&self, events: &[libc::epoll_event]) -> bool {
        let mut stop = false;
        let mut slots = self.slots.borrow_mut();
        for event in events {
            let key = event.u64;
            if key == STOP_KEY {
                stop = true;
                continue;
            }
            // A slot freed (or freed and reused) since the event was collected gets a spurious
            // ready flag: its next `recv` finds nothing and waits again.
            if let Some(slot) = slots.get_mut(key as usize).filter(|s| s.in_use) {
                slot.ready = true;
                if let Some(waker) = slot.waker.take() {
                    waker.wake();
                }
            }
        }
        stop
    }

    /// The poller: runs until [`Readiness::stop`]. Await its task before the executor ends, so
    /// that no blocking `epoll_wait` outlives it.
    pub async fn run(self: std::rc::Rc<Self>) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS];
        let mut last_ready = Instant::now();
        while !self.stopping.get() {
            let n = epoll_wait(self.epoll.as_raw_fd(), &mut events, 0);
            if n > 0 {
                if self.dispatch(&events[..n]) {
                    break;
                }
                last_ready = Instant::now();
            }
            if n > 0 || last_ready.elapsed() < SPIN {
                // Let the woken players read (and the others run) before looking again.
                futures_lite::future::yield_now().await;
                continue;
            }
            // Nothing ready: wait on the blocking thread, leaving the executor to the others.
            let epoll = self.epoll.as_raw_fd();
            let timeout_ms = PARK_TIMEOUT.as_millis() as i32;
            let (back, n) = glommio::executor()
                .spawn_blocking(move || {
                    let n = epoll_wait(epoll, &mut events, timeout_ms);
                    (events, n)
                })
                .await;
            events = back;
            if self.dispatch(&events[..n]) {
                break;
            }
        }
    }

    /// Makes [`Readiness::run`] return soon, waking it if it is parked.
    pub fn stop(&self) {
        self.stopping.set(true);
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a u64 on our stack to the eventfd we own. A failure
        // (counter full) still leaves the eventfd readable, which is all that matters.
        unsafe {
            libc::write(self.stop_fd.as_raw_fd(), (&one as *const u64).cast(), 8);
        }
    }
}
