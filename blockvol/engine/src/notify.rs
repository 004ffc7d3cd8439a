//! Per-handle completion queues and the eventfd that tells a sleeping owner
//! (a reactor, or the blocking wrapper) that something is ready.

use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
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
}

impl Notifier {
    pub fn new() -> std::io::Result<Notifier> {
        let efd = eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?;
        Ok(Notifier {
            io: SegQueue::new(),
            ready: SegQueue::new(),
            efd,
        })
    }

    pub fn fd(&self) -> RawFd {
        self.efd.as_raw_fd()
    }

    /// Wake the owner.
    pub fn signal(&self) {
        // A full counter (EAGAIN) already means "readable": nothing to do.
        let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
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

    /// Sleep until signalled or `timeout`; resets the counter.
    pub fn wait(&self, timeout: Option<Duration>) {
        if !self.io.is_empty() || !self.ready.is_empty() {
            self.drain();
            return;
        }
        let ts = timeout.map(|t| rustix::time::Timespec {
            tv_sec: i64::try_from(t.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(t.subsec_nanos()),
        });
        let mut fds = [PollFd::new(&self.efd, PollFlags::IN)];
        let _ = poll(&mut fds, ts.as_ref());
        self.drain();
    }

    fn drain(&self) {
        let mut buf = [0u8; 8];
        let _ = rustix::io::read(self.efd.as_fd(), &mut buf);
    }
}
