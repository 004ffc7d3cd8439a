//! Readiness of file descriptors, and the reactor's sleep: one epoll
//! instance per reactor.
//!
//! Every registration is edge-triggered. The reactor records each event in
//! the registration's [`Ready`] bits; the owner (a poller) reads them, does
//! non-blocking I/O, and clears a bit when the I/O returns `EAGAIN`. A fd that
//! is only a wake-up source (an engine handle's notify eventfd) can be
//! registered and otherwise ignored: every write to an eventfd is a new edge,
//! so the reactor wakes even if nobody reads the counter.
//!
//! The same epoll instance is polled without timeout on busy iterations and
//! with a timeout when the reactor sleeps (adaptive and interrupt modes).

use std::cell::Cell;
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use rustix::event::epoll;
use rustix::event::Timespec;

/// What a registration wants to hear about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest(u8);

impl Interest {
    /// Readable (or peer closed, or error).
    pub const READABLE: Interest = Interest(1);
    /// Writable (or error).
    pub const WRITABLE: Interest = Interest(2);
    /// Both.
    pub const BOTH: Interest = Interest(3);

    fn flags(self) -> epoll::EventFlags {
        let mut f = epoll::EventFlags::ET;
        if self.0 & 1 != 0 {
            f |= epoll::EventFlags::IN | epoll::EventFlags::RDHUP;
        }
        if self.0 & 2 != 0 {
            f |= epoll::EventFlags::OUT;
        }
        f
    }
}

/// Readiness bits recorded for a registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ready(u8);

impl Ready {
    /// Nothing.
    pub const EMPTY: Ready = Ready(0);
    /// Data (or EOF) can be read.
    pub const READABLE: Ready = Ready(1);
    /// Data can be written.
    pub const WRITABLE: Ready = Ready(2);
    /// The peer shut down its write side (`EPOLLRDHUP`) or hung up.
    pub const HUP: Ready = Ready(4);
    /// An error is pending on the fd.
    pub const ERROR: Ready = Ready(8);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Ready) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any bit is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    fn from_flags(f: epoll::EventFlags) -> Ready {
        let mut r = 0;
        if f.intersects(epoll::EventFlags::IN | epoll::EventFlags::PRI) {
            r |= 1;
        }
        if f.contains(epoll::EventFlags::OUT) {
            r |= 2;
        }
        if f.intersects(epoll::EventFlags::RDHUP | epoll::EventFlags::HUP) {
            // Reading returns EOF: readable too.
            r |= 4 | 1;
        }
        if f.contains(epoll::EventFlags::ERR) {
            // Reading or writing reports the error.
            r |= 8 | 1 | 2;
        }
        Ready(r)
    }
}

impl std::ops::BitOr for Ready {
    type Output = Ready;
    fn bitor(self, rhs: Ready) -> Ready {
        Ready(self.0 | rhs.0)
    }
}

struct RegShared {
    ready: Cell<Ready>,
    /// Set when the owner dropped its [`Registration`]; the slot is freed on
    /// the next sweep.
    dropped: Cell<bool>,
}

/// A fd registered with a reactor. Dropping it removes the fd from the
/// reactor's epoll set, so it must be dropped *before* the fd is closed
/// (declare it before the socket in a struct: fields drop in order).
pub struct Registration {
    shared: Rc<RegShared>,
    core: Rc<Core>,
    fd: RawFd,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("fd", &self.fd)
            .field("ready", &self.shared.ready.get())
            .finish()
    }
}

impl Registration {
    /// The readiness recorded so far.
    pub fn ready(&self) -> Ready {
        self.shared.ready.get()
    }

    /// Whether the fd is (possibly) readable.
    pub fn is_readable(&self) -> bool {
        self.ready().contains(Ready::READABLE)
    }

    /// Whether the fd is (possibly) writable.
    pub fn is_writable(&self) -> bool {
        self.ready().contains(Ready::WRITABLE)
    }

    /// Forget readiness bits after the I/O returned `EAGAIN`; the next edge
    /// sets them again.
    pub fn clear(&self, bits: Ready) {
        let r = self.shared.ready.get();
        self.shared.ready.set(Ready(r.0 & !bits.0));
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // SAFETY: `BorrowedFd::borrow_raw` needs `fd` open for the borrow's
        // lifetime; the owner keeps the fd open until the registration is
        // dropped (documented contract of `Reactor::register`), and the
        // borrow ends within this statement.
        let fd = unsafe { BorrowedFd::borrow_raw(self.fd) };
        let _ = epoll::delete(&self.core.epfd, fd);
        self.shared.dropped.set(true);
        self.core.dropped.set(self.core.dropped.get() + 1);
    }
}

struct Core {
    epfd: OwnedFd,
    dropped: Cell<usize>,
}

/// Token of the reactor's own mailbox eventfd.
const MAILBOX_TOKEN: u64 = u64::MAX;

/// The epoll instance and the registration table of one reactor.
pub(crate) struct Epoll {
    core: Rc<Core>,
    slots: Vec<Option<Rc<RegShared>>>,
    free: Vec<usize>,
    events: Vec<epoll::Event>,
    live: usize,
}

/// What one `epoll_wait` found.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Polled {
    /// Events on registered fds.
    pub events: usize,
    /// The mailbox eventfd was readable.
    pub mailbox: bool,
    /// The event buffer was full: more may be waiting.
    #[cfg_attr(not(feature = "sockets-uring"), allow(dead_code))]
    pub full: bool,
}

impl Epoll {
    pub(crate) fn new(mailbox_fd: BorrowedFd<'_>) -> io::Result<Epoll> {
        let epfd = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        // Level-triggered: the reactor drains it whenever it is reported.
        epoll::add(
            &epfd,
            mailbox_fd,
            epoll::EventData::new_u64(MAILBOX_TOKEN),
            epoll::EventFlags::IN,
        )?;
        Ok(Epoll {
            core: Rc::new(Core {
                epfd,
                dropped: Cell::new(0),
            }),
            slots: Vec::new(),
            free: Vec::new(),
            events: Vec::with_capacity(256),
            live: 0,
        })
    }

    /// Register `fd` (edge-triggered). Its readiness starts as "maybe ready"
    /// in every direction of interest, so the owner tries its I/O once.
    pub(crate) fn register(
        &mut self,
        fd: BorrowedFd<'_>,
        interest: Interest,
    ) -> io::Result<Registration> {
        self.sweep();
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        let shared = Rc::new(RegShared {
            ready: Cell::new(Ready(interest.0)),
            dropped: Cell::new(false),
        });
        if let Err(e) = epoll::add(
            &self.core.epfd,
            fd,
            epoll::EventData::new_u64(idx as u64),
            interest.flags(),
        ) {
            self.free.push(idx);
            return Err(e.into());
        }
        self.slots[idx] = Some(shared.clone());
        self.live += 1;
        Ok(Registration {
            shared,
            core: self.core.clone(),
            fd: rustix::fd::AsRawFd::as_raw_fd(&fd),
        })
    }

    /// Free the slots of dropped registrations.
    fn sweep(&mut self) {
        if self.core.dropped.get() == 0 {
            return;
        }
        for (i, slot) in self.slots.iter_mut().enumerate() {
            if slot.as_ref().is_some_and(|s| s.dropped.get()) {
                *slot = None;
                self.free.push(i);
                self.live -= 1;
            }
        }
        self.core.dropped.set(0);
    }

    /// The epoll fd itself (an io_uring socket ring watches it).
    #[cfg(feature = "sockets-uring")]
    pub(crate) fn raw_fd(&self) -> RawFd {
        rustix::fd::AsRawFd::as_raw_fd(&self.core.epfd)
    }

    /// Registered fds (the mailbox eventfd not included).
    pub(crate) fn live(&mut self) -> usize {
        self.sweep();
        self.live
    }

    /// Wait up to `timeout` (`None`: forever, zero: just look) and record the
    /// readiness of every reported fd.
    pub(crate) fn poll(&mut self, timeout: Option<Duration>) -> io::Result<Polled> {
        self.sweep();
        let ts = timeout.map(|t| Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        self.events.clear();
        match epoll::wait(
            &self.core.epfd,
            rustix::buffer::spare_capacity(&mut self.events),
            ts.as_ref(),
        ) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(Polled::default()),
            Err(e) => return Err(e.into()),
        }
        let mut polled = Polled {
            full: self.events.len() == self.events.capacity(),
            ..Polled::default()
        };
        for ev in &self.events {
            let token = ev.data.u64();
            if token == MAILBOX_TOKEN {
                polled.mailbox = true;
                continue;
            }
            let Ok(idx) = usize::try_from(token) else {
                continue;
            };
            if let Some(Some(shared)) = self.slots.get(idx) {
                let r = shared.ready.get();
                shared.ready.set(r | Ready::from_flags(ev.flags));
                polled.events += 1;
            }
        }
        Ok(polled)
    }
}
