//! Per-reactor counters, written by the reactor thread and readable from any
//! thread (for /metrics).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters of one reactor. The reactor is the only writer: it keeps
/// plain copies and publishes them with relaxed stores (no read-modify-write
/// on the hot path).
#[derive(Debug, Default)]
pub(crate) struct ReactorStats {
    iterations: AtomicU64,
    busy_iterations: AtomicU64,
    sleeps: AtomicU64,
    wakeups: AtomicU64,
    messages: AtomicU64,
    timers_fired: AtomicU64,
    pollers: AtomicU64,
    registrations: AtomicU64,
    ring_enters: AtomicU64,
    ring_completions: AtomicU64,
    recv_bytes: AtomicU64,
    direct_recv_bytes: AtomicU64,
}

/// A snapshot of a reactor's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReactorCounters {
    /// Loop iterations.
    pub iterations: u64,
    /// Iterations that did some work.
    pub busy_iterations: u64,
    /// Iterations that did none.
    pub idle_iterations: u64,
    /// Times the reactor slept in `epoll_wait`.
    pub sleeps: u64,
    /// Sleeps ended by a mailbox kick (another thread posted).
    pub wakeups: u64,
    /// Messages run.
    pub messages: u64,
    /// Timers fired.
    pub timers_fired: u64,
    /// Pollers registered now.
    pub pollers: u64,
    /// Fds registered now.
    pub registrations: u64,
    /// `io_uring_enter` calls of the socket ring (io_uring socket I/O).
    pub ring_enters: u64,
    /// Socket operations completed on the ring.
    pub ring_completions: u64,
    /// Bytes connections received into their input buffers.
    pub recv_bytes: u64,
    /// Bytes connections received straight into protocols' own buffers
    /// (write data into pool buffers, without a copy).
    pub direct_recv_bytes: u64,
}

impl ReactorStats {
    pub(crate) fn publish(&self, c: &ReactorCounters) {
        let r = Ordering::Relaxed;
        self.iterations.store(c.iterations, r);
        self.busy_iterations.store(c.busy_iterations, r);
        self.sleeps.store(c.sleeps, r);
        self.wakeups.store(c.wakeups, r);
        self.messages.store(c.messages, r);
        self.timers_fired.store(c.timers_fired, r);
        self.pollers.store(c.pollers, r);
        self.registrations.store(c.registrations, r);
        self.ring_enters.store(c.ring_enters, r);
        self.ring_completions.store(c.ring_completions, r);
        self.recv_bytes.store(c.recv_bytes, r);
        self.direct_recv_bytes.store(c.direct_recv_bytes, r);
    }

    pub(crate) fn snapshot(&self) -> ReactorCounters {
        let r = Ordering::Relaxed;
        let iterations = self.iterations.load(r);
        let busy_iterations = self.busy_iterations.load(r);
        ReactorCounters {
            iterations,
            busy_iterations,
            idle_iterations: iterations.saturating_sub(busy_iterations),
            sleeps: self.sleeps.load(r),
            wakeups: self.wakeups.load(r),
            messages: self.messages.load(r),
            timers_fired: self.timers_fired.load(r),
            pollers: self.pollers.load(r),
            registrations: self.registrations.load(r),
            ring_enters: self.ring_enters.load(r),
            ring_completions: self.ring_completions.load(r),
            recv_bytes: self.recv_bytes.load(r),
            direct_recv_bytes: self.direct_recv_bytes.load(r),
        }
    }
}

/// CPU time consumed by the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(ts.tv_sec).unwrap_or(0),
        u32::try_from(ts.tv_nsec).unwrap_or(0),
    )
}
