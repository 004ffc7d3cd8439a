//! Per-handle completion queues and the eventfd that tells a sleeping owner
//! (a reactor, or the blocking wrapper) that something is ready.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_queue::SegQueue;
use rustix::event::{eventfd, poll, EventfdFlags, PollFd, PollFlags};

use crate::backend::IoDone;
use crate::handle::Completion;

/// Where other threads (I/O workers, group commit) hand results to a handle.
pub(crate) struct Notifier {
    /// Raw I/O completions from the standard backend's workers.
    pub io: SegQueue<IoDone>,
    /// Finished operations (group commit, immediate completions).
    pub ready: SegQueue<Completion>,
    efd: OwnedFd,
    /// The owner is (about to be) asleep on `efd`: only then is a wake-up
    /// worth a syscall.
    sleeping: AtomicBool,
}

impl Notifier {
    pub fn new() -> std::io::Result<Notifier> {
        let efd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Notifier {
            io: SegQueue::new(),
            ready: SegQueue::new(),
            efd,
            sleeping: AtomicBool::new(true),
        })
    }

    pub fn borrowed_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.efd.as_fd()
    }

    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Wake the owner if it sleeps (or may be about to).
    pub fn signal(&self) {
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.kick();
        }
    }

    /// Make the eventfd readable, unconditionally.
    pub fn kick(&self) {
        // A full counter (EAGAIN) already means "readable": nothing to do.
        let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
    }

    /// Announce that the owner is going to sleep on the eventfd (a reactor
    /// adding it to its poll set). Returns `false` when something is already
    /// queued: poll instead of sleeping.
    pub fn arm(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if !self.io.is_empty() || !self.ready.is_empty() {
            self.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    pub fn push_ready(&self, c: Completion) {
        self.ready.push(c);
        self.signal();
    }

    #[cfg(feature = "backend-std")]
    pub fn push_io(&self, d: IoDone) {
        self.io.push(d);
        self.signal();
    }

    /// Whether anything is queued.
    pub fn pending(&self) -> bool {
        !self.io.is_empty() || !self.ready.is_empty()
    }

    /// Sleep until signalled or `timeout`; resets the counter.
    pub fn wait(&self, timeout: Option<Duration>) {
        if !self.arm() {
            return;
        }
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let mut fds = [PollFd::new(&self.efd, PollFlags::IN)];
        let _ = poll(&mut fds, ts.as_ref());
        self.sleeping.store(false, Ordering::SeqCst);
        self.drain();
    }

    fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(self.efd.as_fd(), &mut buf);
    }
}
