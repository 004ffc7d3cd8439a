//! The reactor: one thread per configured core running pollers, timers and
//! mailbox messages, sleeping according to its [`PollMode`].

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::buffer_pool::{BufferPool, BufferPoolConfig, PoolConfigError};
use crate::epoll::{Epoll, Interest, Registration};
use crate::mailbox::{Mailbox, Message, PostError};
use crate::poll_mode::PollMode;
use crate::socket::SocketIoKind;
use crate::stats::{ReactorCounters, ReactorStats};
use crate::timer::{TimerHeap, TimerId};

/// What a poller reports after one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollResult {
    /// It did this many units of work (0: idle). Any non-zero count keeps an
    /// adaptive reactor spinning.
    Work(usize),
    /// It is finished: the reactor drops it.
    Remove,
}

impl PollResult {
    /// No work done.
    pub const IDLE: PollResult = PollResult::Work(0);
}

/// Something a reactor calls on every iteration: a connection, an engine
/// handle's completion queue, a listener. Runs on the reactor thread only,
/// so it need not be `Send` (build it inside a message).
pub trait Poller {
    /// Do whatever is ready, without blocking.
    fn poll(&mut self, cx: &mut Context) -> PollResult;

    /// The reactor is about to sleep. Arm wake-up sources that need it (an
    /// engine handle's `arm_notify`) and return `false` if work is already
    /// pending: the reactor then polls again instead of sleeping.
    fn before_sleep(&mut self, cx: &mut Context) -> bool {
        let _ = cx;
        true
    }

    /// The reactor is stopping: last chance to say goodbye (close sockets,
    /// return buffers). The poller is dropped afterwards.
    fn shutdown(&mut self, cx: &mut Context) {
        let _ = cx;
    }
}

/// Reactor pool configuration.
#[derive(Debug, Clone)]
pub struct ReactorConfig {
    /// Number of reactor threads.
    pub reactors: usize,
    /// CPUs to pin to: reactor `i` runs on `cpus[i % cpus.len()]`; empty
    /// means no pinning.
    pub cpus: Vec<usize>,
    /// How idle reactors wait.
    pub poll_mode: PollMode,
    /// Capacity of each reactor's mailbox (messages).
    pub mailbox_capacity: usize,
    /// Messages run per iteration at most (so pollers are not starved).
    pub messages_per_iteration: usize,
    /// The shared buffer pool.
    pub buffer_pool: BufferPoolConfig,
    /// Thread name prefix (`<name>-<index>`).
    pub name: String,
    /// Socket I/O of the connections ([`crate::Connection::boxed`]).
    pub socket_io: SocketIoKind,
}

impl Default for ReactorConfig {
    fn default() -> Self {
        ReactorConfig {
            reactors: 1,
            cpus: Vec::new(),
            poll_mode: PollMode::default(),
            mailbox_capacity: 4096,
            messages_per_iteration: 64,
            buffer_pool: BufferPoolConfig::default(),
            name: "keel-reactor".to_owned(),
            socket_io: SocketIoKind::default(),
        }
    }
}

/// An invalid [`ReactorConfig`], or a failure to start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReactorError {
    /// `reactors` is zero.
    #[error("At least one reactor is needed")]
    NoReactors,
    /// `mailbox_capacity` or `messages_per_iteration` is zero.
    #[error("Mailbox capacity and batch must be positive")]
    ZeroMailbox,
    /// The buffer pool configuration is invalid.
    #[error("Invalid buffer pool configuration")]
    BufferPool(#[from] PoolConfigError),
    /// The socket I/O backend is not compiled into this build.
    #[error("Socket I/O backend unavailable: {0} support is not compiled in (cargo feature sockets-uring)")]
    SocketIoUnavailable(SocketIoKind),
    /// A system resource (thread, epoll, eventfd) could not be created.
    #[error("Cannot start reactor")]
    Io(#[from] io::Error),
}

impl ReactorConfig {
    /// Check the configuration.
    pub fn validate(&self) -> Result<(), ReactorError> {
        if self.reactors == 0 {
            return Err(ReactorError::NoReactors);
        }
        if self.mailbox_capacity == 0 || self.messages_per_iteration == 0 {
            return Err(ReactorError::ZeroMailbox);
        }
        self.buffer_pool.validate()?;
        if !self.socket_io.compiled_in() {
            return Err(ReactorError::SocketIoUnavailable(self.socket_io));
        }
        Ok(())
    }
}

struct Shared {
    index: usize,
    mailbox: Mailbox,
    stats: ReactorStats,
    stop: AtomicBool,
    stopped: AtomicBool,
}

/// A handle on one reactor, usable from any thread: post messages, read
/// counters.
#[derive(Clone)]
pub struct Remote {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("index", &self.shared.index)
            .finish()
    }
}

impl Remote {
    /// The reactor's index in its pool.
    pub fn index(&self) -> usize {
        self.shared.index
    }

    /// Run `f` on the reactor's thread. Wakes the reactor only if it sleeps.
    pub fn post<F>(&self, f: F) -> Result<(), PostError>
    where
        F: FnOnce(&mut Context) + Send + 'static,
    {
        self.post_boxed(Box::new(f))
    }

    /// [`Remote::post`] for an already boxed message.
    pub fn post_boxed(&self, msg: Message) -> Result<(), PostError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(PostError::Stopped(msg));
        }
        self.shared.mailbox.post(msg).map_err(PostError::Full)
    }

    /// Messages waiting in the mailbox.
    pub fn pending_messages(&self) -> usize {
        self.shared.mailbox.len()
    }

    /// The reactor's counters.
    pub fn counters(&self) -> ReactorCounters {
        self.shared.stats.snapshot()
    }

    /// Ask the reactor to stop (it finishes its iteration, shuts its pollers
    /// down and exits). Does not wait; see [`ReactorPool::stop`].
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.mailbox.kick();
    }
}

/// What pollers, timers and messages see of their reactor.
pub struct Context {
    index: usize,
    now: Instant,
    timers: TimerHeap<Context>,
    epoll: Epoll,
    remotes: Arc<[Remote]>,
    pool: Arc<BufferPool>,
    new_pollers: Vec<Box<dyn Poller>>,
    stop: bool,
    socket_io: SocketIoKind,
    #[cfg(feature = "sockets-uring")]
    ring: Option<std::rc::Rc<std::cell::RefCell<crate::socket_uring::SockRing>>>,
    /// Bytes received into connections' input buffers, and straight into
    /// protocols' own buffers.
    recv_bytes: u64,
    direct_recv_bytes: u64,
}

impl Context {
    /// Count bytes a connection received: `input` into its input buffer,
    /// `direct` straight into the protocol's buffer.
    pub(crate) fn count_recv(&mut self, input: usize, direct: usize) {
        self.recv_bytes += input as u64;
        self.direct_recv_bytes += direct as u64;
    }

    /// This reactor's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The time at the start of this iteration (cheap: no clock read).
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Number of reactors in the pool.
    pub fn reactor_count(&self) -> usize {
        self.remotes.len()
    }

    /// Every reactor of the pool, this one included.
    pub fn reactors(&self) -> &Arc<[Remote]> {
        &self.remotes
    }

    /// Run `f` on reactor `index` (possibly this one, on a later iteration).
    pub fn post<F>(&self, index: usize, f: F) -> Result<(), PostError>
    where
        F: FnOnce(&mut Context) + Send + 'static,
    {
        match self.remotes.get(index) {
            Some(r) => r.post(f),
            None => Err(PostError::NoSuchReactor(Box::new(f))),
        }
    }

    /// The shared buffer pool.
    pub fn buffer_pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// Add a poller; it runs from the next iteration on.
    pub fn add_poller(&mut self, p: Box<dyn Poller>) {
        self.new_pollers.push(p);
    }

    /// Watch `fd` for readiness (edge-triggered; see [`Registration`]). Also
    /// the way to sleep on an engine handle's notify eventfd: register it
    /// for [`Interest::READABLE`], poll completions in the poller, and arm
    /// the handle in [`Poller::before_sleep`].
    ///
    /// The fd must stay open until the returned registration is dropped.
    pub fn register(&mut self, fd: BorrowedFd<'_>, interest: Interest) -> io::Result<Registration> {
        self.epoll.register(fd, interest)
    }

    /// Run `f` after `delay`.
    pub fn add_timer<F>(&mut self, delay: Duration, f: F) -> TimerId
    where
        F: FnOnce(&mut Context) + 'static,
    {
        let deadline = self.now + delay;
        self.timers.insert(deadline, Box::new(f))
    }

    /// Cancel a timer; `false` if it already fired or was cancelled.
    pub fn cancel_timer(&mut self, id: TimerId) -> bool {
        self.timers.cancel(id)
    }

    /// The socket I/O this reactor runs.
    pub fn socket_io(&self) -> SocketIoKind {
        self.socket_io
    }

    #[cfg(feature = "sockets-uring")]
    pub(crate) fn socket_ring(
        &self,
    ) -> Option<std::rc::Rc<std::cell::RefCell<crate::socket_uring::SockRing>>> {
        self.ring.clone()
    }

    /// Stop this reactor after the current iteration.
    pub fn stop(&mut self) {
        self.stop = true;
    }
}

/// A poller's "wake me by then": keeps at most one timer armed, the
/// earliest deadline asked for (a poller that parks work, e.g. a write held
/// back by admission control, makes sure the reactor does not sleep past
/// its retry).
#[derive(Debug, Default, Clone)]
pub struct WakeBy(std::rc::Rc<std::cell::Cell<Option<Instant>>>);

impl WakeBy {
    /// Make sure the reactor wakes at `t` (or earlier).
    pub fn at(&self, t: Instant, cx: &mut Context) {
        if self.0.get().is_some_and(|d| d <= t) {
            return;
        }
        self.0.set(Some(t));
        let me = self.0.clone();
        cx.add_timer(t.saturating_duration_since(cx.now()), move |_| {
            if me.get() == Some(t) {
                me.set(None);
            }
        });
    }
}

/// The running reactors.
pub struct ReactorPool {
    remotes: Arc<[Remote]>,
    threads: Vec<JoinHandle<()>>,
    pool: Arc<BufferPool>,
    mode: PollMode,
    socket_io: SocketIoKind,
}

impl std::fmt::Debug for ReactorPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReactorPool")
            .field("reactors", &self.remotes.len())
            .field("mode", &self.mode)
            .field("socket_io", &self.socket_io)
            .finish()
    }
}

impl ReactorPool {
    /// Validate `cfg` and start its reactor threads.
    pub fn start(cfg: &ReactorConfig) -> Result<ReactorPool, ReactorError> {
        cfg.validate()?;
        let pool = Arc::new(BufferPool::new(&cfg.buffer_pool));
        let mut remotes = Vec::with_capacity(cfg.reactors);
        for index in 0..cfg.reactors {
            remotes.push(Remote {
                shared: Arc::new(Shared {
                    index,
                    mailbox: Mailbox::new(cfg.mailbox_capacity)?,
                    stats: ReactorStats::default(),
                    stop: AtomicBool::new(false),
                    stopped: AtomicBool::new(false),
                }),
            });
        }
        let remotes: Arc<[Remote]> = remotes.into();
        let mut this = ReactorPool {
            remotes: remotes.clone(),
            threads: Vec::with_capacity(cfg.reactors),
            pool: pool.clone(),
            mode: cfg.poll_mode,
            socket_io: cfg.socket_io,
        };
        let (ready_tx, ready_rx) = mpsc::channel::<io::Result<()>>();
        for index in 0..cfg.reactors {
            let (remotes, pool, ready) = (remotes.clone(), pool.clone(), ready_tx.clone());
            let cpu = (!cfg.cpus.is_empty()).then(|| cfg.cpus[index % cfg.cpus.len()]);
            let mode = cfg.poll_mode;
            let batch = cfg.messages_per_iteration;
            let socket_io = cfg.socket_io;
            let thread = std::thread::Builder::new()
                .name(format!("{}-{index}", cfg.name))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin_to(cpu);
                    }
                    match Reactor::new(index, remotes, pool, mode, batch, socket_io) {
                        Ok(mut r) => {
                            let _ = ready.send(Ok(()));
                            r.run();
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                        }
                    }
                });
            match thread {
                Ok(t) => this.threads.push(t),
                Err(e) => {
                    this.stop();
                    return Err(e.into());
                }
            }
        }
        drop(ready_tx);
        for _ in 0..cfg.reactors {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    this.stop();
                    return Err(e.into());
                }
                Err(_) => {
                    this.stop();
                    return Err(io::Error::other("reactor thread died at start").into());
                }
            }
        }
        Ok(this)
    }

    /// Number of reactors.
    pub fn len(&self) -> usize {
        self.remotes.len()
    }

    /// Whether the pool has no reactors (never, once started).
    pub fn is_empty(&self) -> bool {
        self.remotes.is_empty()
    }

    /// Handles on every reactor.
    pub fn reactors(&self) -> &Arc<[Remote]> {
        &self.remotes
    }

    /// Handle on reactor `index`.
    pub fn remote(&self, index: usize) -> Option<&Remote> {
        self.remotes.get(index)
    }

    /// Run `f` on reactor `index`.
    pub fn post<F>(&self, index: usize, f: F) -> Result<(), PostError>
    where
        F: FnOnce(&mut Context) + Send + 'static,
    {
        match self.remotes.get(index) {
            Some(r) => r.post(f),
            None => Err(PostError::NoSuchReactor(Box::new(f))),
        }
    }

    /// The shared buffer pool.
    pub fn buffer_pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// The poll mode the reactors run in.
    pub fn poll_mode(&self) -> PollMode {
        self.mode
    }

    /// The socket I/O the reactors run.
    pub fn socket_io(&self) -> SocketIoKind {
        self.socket_io
    }

    /// Stop every reactor (pollers get [`Poller::shutdown`]) and join the
    /// threads. Idempotent.
    pub fn stop(&mut self) {
        for r in self.remotes.iter() {
            r.request_stop();
        }
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("reactor thread panicked");
            }
        }
    }
}

impl Drop for ReactorPool {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pin_to(cpu: usize) {
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    if let Err(e) = rustix::thread::sched_setaffinity(None, &set) {
        tracing::warn!(cpu, error = %e, "cannot pin reactor thread");
    }
}

/// Round up to whole milliseconds (epoll's resolution): never wake early.
fn ceil_ms(d: Duration) -> Duration {
    let ms = d.as_micros().div_ceil(1000);
    Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

struct Reactor {
    shared: Arc<Shared>,
    cx: Context,
    pollers: Vec<Box<dyn Poller>>,
    mode: PollMode,
    batch: usize,
    counters: ReactorCounters,
}

impl Reactor {
    fn new(
        index: usize,
        remotes: Arc<[Remote]>,
        pool: Arc<BufferPool>,
        mode: PollMode,
        batch: usize,
        socket_io: SocketIoKind,
    ) -> io::Result<Reactor> {
        let shared = remotes[index].shared.clone();
        let epoll = Epoll::new(shared.mailbox.fd())?;
        #[cfg(feature = "sockets-uring")]
        let ring = match socket_io {
            SocketIoKind::Uring => Some(std::rc::Rc::new(std::cell::RefCell::new(
                crate::socket_uring::SockRing::new(epoll.raw_fd())?,
            ))),
            SocketIoKind::Epoll => None,
        };
        Ok(Reactor {
            cx: Context {
                index,
                now: Instant::now(),
                timers: TimerHeap::default(),
                epoll,
                remotes,
                pool,
                new_pollers: Vec::new(),
                stop: false,
                socket_io,
                #[cfg(feature = "sockets-uring")]
                ring,
                recv_bytes: 0,
                direct_recv_bytes: 0,
            },
            shared,
            pollers: Vec::new(),
            mode,
            batch,
            counters: ReactorCounters::default(),
        })
    }

    fn run(&mut self) {
        let mut last_work = Instant::now();
        loop {
            let now = Instant::now();
            self.cx.now = now;
            let work = self.iterate();
            let c = &mut self.counters;
            c.iterations += 1;
            if work > 0 {
                c.busy_iterations += 1;
                last_work = now;
            }
            c.pollers = self.pollers.len() as u64;
            c.recv_bytes = self.cx.recv_bytes;
            c.direct_recv_bytes = self.cx.direct_recv_bytes;
            #[cfg(feature = "sockets-uring")]
            if let Some(ring) = &self.cx.ring {
                let rc = ring.borrow().counters;
                c.ring_enters = rc.enters;
                c.ring_completions = rc.completions;
            }
            if self.cx.stop || self.shared.stop.load(Ordering::Acquire) {
                break;
            }
            if work == 0 && self.mode.may_sleep(now, last_work) {
                self.sleep();
            }
            self.shared.stats.publish(&self.counters);
        }
        self.shutdown();
    }

    /// One pass over messages, timers, fd readiness and pollers; returns the
    /// work done.
    fn iterate(&mut self) -> usize {
        let mut work = 0;
        let mut n = 0;
        while n < self.batch {
            let Some(msg) = self.shared.mailbox.pop() else {
                break;
            };
            msg(&mut self.cx);
            n += 1;
        }
        self.counters.messages += n as u64;
        work += n;

        let now = self.cx.now;
        while let Some(f) = self.cx.timers.pop_due(now) {
            f(&mut self.cx);
            self.counters.timers_fired += 1;
            work += 1;
        }

        let live = self.cx.epoll.live();
        self.counters.registrations = live as u64;
        // With io_uring sockets the ring watches the epoll fd: epoll is
        // polled only when it has something (no system call while idle).
        #[allow(unused_mut)]
        let mut epoll_due = live > 0;
        #[cfg(feature = "sockets-uring")]
        if let Some(ring) = &self.cx.ring {
            let mut r = ring.borrow_mut();
            work += r.reap();
            epoll_due = r.take_epoll_ready();
        }
        if epoll_due {
            match self.cx.epoll.poll(Some(Duration::ZERO)) {
                Ok(p) => {
                    work += p.events;
                    if p.mailbox {
                        self.shared.mailbox.drain();
                    }
                    #[cfg(feature = "sockets-uring")]
                    if p.full {
                        if let Some(ring) = &self.cx.ring {
                            ring.borrow_mut().set_epoll_ready();
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "epoll_wait failed"),
            }
        }

        let mut i = 0;
        while i < self.pollers.len() {
            match self.pollers[i].poll(&mut self.cx) {
                PollResult::Work(k) => {
                    work += k;
                    i += 1;
                }
                PollResult::Remove => {
                    drop(self.pollers.swap_remove(i));
                    work += 1;
                }
            }
        }
        if !self.cx.new_pollers.is_empty() {
            self.pollers.append(&mut self.cx.new_pollers);
            work += 1;
        }
        #[cfg(feature = "sockets-uring")]
        if let Some(ring) = &self.cx.ring {
            // Everything the pollers queued goes to the kernel in one enter.
            ring.borrow_mut().flush();
        }
        work
    }

    fn sleep(&mut self) {
        if !self.shared.mailbox.prepare_sleep() {
            return;
        }
        for p in &mut self.pollers {
            if !p.before_sleep(&mut self.cx) {
                self.shared.mailbox.wake();
                return;
            }
        }
        let timeout = self
            .cx
            .timers
            .next_deadline()
            .map(|d| ceil_ms(d.saturating_duration_since(Instant::now())));
        self.counters.sleeps += 1;
        self.shared.stats.publish(&self.counters);
        #[cfg(feature = "sockets-uring")]
        if let Some(ring) = self.cx.ring.clone() {
            // Sleep in the ring: socket completions and the epoll fd (which
            // it watches) both wake it.
            let mut r = ring.borrow_mut();
            r.wait(timeout);
            r.reap();
            let due = r.take_epoll_ready();
            drop(r);
            self.shared.mailbox.wake();
            if due {
                match self.cx.epoll.poll(Some(Duration::ZERO)) {
                    Ok(p) => {
                        if p.mailbox {
                            self.shared.mailbox.drain();
                            self.counters.wakeups += 1;
                        }
                        if p.full {
                            ring.borrow_mut().set_epoll_ready();
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "epoll_wait failed"),
                }
            }
            return;
        }
        let polled = self.cx.epoll.poll(timeout);
        self.shared.mailbox.wake();
        match polled {
            Ok(p) if p.mailbox => {
                self.shared.mailbox.drain();
                self.counters.wakeups += 1;
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "epoll_wait failed"),
        }
    }

    fn shutdown(&mut self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.pollers.append(&mut self.cx.new_pollers);
        for p in &mut self.pollers {
            p.shutdown(&mut self.cx);
        }
        // Pollers added by shutdown callbacks are dropped unpolled.
        self.cx.new_pollers.clear();
        self.pollers.clear();
        while self.shared.mailbox.pop().is_some() {}
        self.counters.pollers = 0;
        self.shared.stats.publish(&self.counters);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::thread_cpu_time;
    use std::cell::Cell;
    use std::os::fd::AsFd;
    use std::rc::Rc;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc::channel;

    fn start(reactors: usize, mode: PollMode) -> ReactorPool {
        start_io(reactors, mode, SocketIoKind::Epoll)
    }

    fn start_io(reactors: usize, mode: PollMode, socket_io: SocketIoKind) -> ReactorPool {
        ReactorPool::start(&ReactorConfig {
            reactors,
            poll_mode: mode,
            socket_io,
            ..ReactorConfig::default()
        })
        .unwrap()
    }

    /// Run `f` on reactor `i` and wait for its result.
    fn call<T: Send + 'static>(
        pool: &ReactorPool,
        i: usize,
        f: impl FnOnce(&mut Context) -> T + Send + 'static,
    ) -> T {
        let (tx, rx) = channel();
        pool.post(i, move |cx| {
            let _ = tx.send(f(cx));
        })
        .unwrap();
        rx.recv_timeout(Duration::from_secs(5)).unwrap()
    }

    fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(5);
        while !f() {
            assert!(Instant::now() < until, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn config_is_validated() {
        let bad = ReactorConfig {
            reactors: 0,
            ..ReactorConfig::default()
        };
        assert!(matches!(bad.validate(), Err(ReactorError::NoReactors)));
        let bad = ReactorConfig {
            mailbox_capacity: 0,
            ..ReactorConfig::default()
        };
        assert!(matches!(
            ReactorPool::start(&bad),
            Err(ReactorError::ZeroMailbox)
        ));
    }

    #[test]
    fn mailbox_wakes_a_sleeping_reactor_in_interrupt_mode() {
        mailbox_wakes_a_sleeping_reactor_in_interrupt_mode_on(SocketIoKind::Epoll);
    }

    #[cfg(feature = "sockets-uring")]
    #[test]
    fn mailbox_wakes_a_sleeping_reactor_in_interrupt_mode_io_uring() {
        mailbox_wakes_a_sleeping_reactor_in_interrupt_mode_on(SocketIoKind::Uring);
    }

    fn mailbox_wakes_a_sleeping_reactor_in_interrupt_mode_on(socket_io: SocketIoKind) {
        let pool = start_io(1, PollMode::Interrupt, socket_io);
        let r = pool.remote(0).unwrap().clone();
        for round in 0..20u64 {
            // Let it fall asleep, then post from another thread.
            wait_until("sleep", || r.counters().sleeps > round);
            let (tx, rx) = channel();
            let r2 = r.clone();
            let poster = std::thread::spawn(move || {
                r2.post(move |cx| tx.send(cx.index()).unwrap()).unwrap();
            });
            let idx = rx
                .recv_timeout(Duration::from_secs(5))
                .expect("lost wake-up");
            assert_eq!(idx, 0);
            poster.join().unwrap();
        }
        // Counters are published at the end of a loop iteration, after the
        // message ran: wait for them rather than read them at once.
        wait_until("20 wake-ups and messages counted", || {
            let c = r.counters();
            c.wakeups >= 20 && c.messages >= 20
        });
        assert_eq!(r.counters().messages, 20);
    }

    #[test]
    fn posts_while_spinning_do_not_need_kicks_and_all_arrive() {
        let pool = start(2, PollMode::Interrupt);
        let got = Arc::new(AtomicUsize::new(0));
        let mut threads = Vec::new();
        for t in 0..4 {
            let remotes = pool.reactors().clone();
            let got = got.clone();
            threads.push(std::thread::spawn(move || {
                for i in 0..2000 {
                    let got = got.clone();
                    let mut msg: Message = Box::new(move |_cx: &mut Context| {
                        got.fetch_add(1, Ordering::Relaxed);
                    });
                    loop {
                        match remotes[(t + i) % 2].post_boxed(msg) {
                            Ok(()) => break,
                            Err(PostError::Full(m)) => {
                                msg = m;
                                std::thread::yield_now();
                            }
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            }));
        }
        for t in threads {
            t.join().unwrap();
        }
        wait_until("all messages", || got.load(Ordering::Relaxed) == 8000);
    }

    #[test]
    fn reactors_post_to_each_other() {
        let pool = start(2, PollMode::Interrupt);
        let (tx, rx) = channel();
        pool.post(0, move |cx| {
            cx.post(1, move |cx| tx.send(cx.index()).unwrap()).unwrap();
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        let err = call(&pool, 0, |cx| cx.post(7, |_| {}).is_err());
        assert!(err);
    }

    #[test]
    fn timers_fire_and_cancel_on_the_reactor() {
        let pool = start(1, PollMode::Interrupt);
        let (tx, rx) = channel::<&'static str>();
        let t0 = Instant::now();
        call(&pool, 0, move |cx| {
            let tx2 = tx.clone();
            let id = cx.add_timer(Duration::from_millis(20), move |_| {
                tx2.send("cancelled").unwrap();
            });
            let tx3 = tx.clone();
            cx.add_timer(Duration::from_millis(30), move |_| {
                tx3.send("late").unwrap();
            });
            cx.add_timer(Duration::from_millis(10), move |_| {
                tx.send("early").unwrap();
            });
            assert!(cx.cancel_timer(id));
        });
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "early");
        assert!(t0.elapsed() >= Duration::from_millis(10));
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "late");
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert!(rx.recv_timeout(Duration::from_millis(50)).is_err());
        wait_until("two timers counted", || {
            pool.remote(0).unwrap().counters().timers_fired >= 2
        });
    }

    #[test]
    fn adaptive_reactor_sleeps_when_idle() {
        adaptive_reactor_sleeps_when_idle_on(SocketIoKind::Epoll);
    }

    #[cfg(feature = "sockets-uring")]
    #[test]
    fn adaptive_reactor_sleeps_when_idle_io_uring() {
        adaptive_reactor_sleeps_when_idle_on(SocketIoKind::Uring);
    }

    fn adaptive_reactor_sleeps_when_idle_on(socket_io: SocketIoKind) {
        let pool = start_io(1, PollMode::default(), socket_io);
        // Some work first, so it starts from spinning.
        for _ in 0..100 {
            call(&pool, 0, |_| ());
        }
        // Counters before the call: the reactor sleeps (and counts it) at
        // least once after the call, however late this thread reads them.
        let c0 = pool.remote(0).unwrap().counters();
        let cpu0 = call(&pool, 0, |_| thread_cpu_time());
        std::thread::sleep(Duration::from_millis(200));
        let cpu1 = call(&pool, 0, |_| thread_cpu_time());
        let c1 = pool.remote(0).unwrap().counters();
        let used = cpu1 - cpu0;
        eprintln!(
            "adaptive idle 200 ms: reactor cpu {used:?}, iterations {}, sleeps {}",
            c1.iterations - c0.iterations,
            c1.sleeps - c0.sleeps
        );
        assert!(
            used < Duration::from_millis(10),
            "idle reactor burned {used:?}"
        );
        assert!(c1.sleeps > c0.sleeps);
    }

    /// A stand-in for an engine handle: completions arrive from another
    /// thread on a queue, and an eventfd (never read by the reactor) is
    /// written only when armed.
    struct FakeEngine {
        done: crossbeam_queue::SegQueue<u64>,
        armed: AtomicBool,
        efd: std::os::fd::OwnedFd,
    }

    impl FakeEngine {
        fn complete(&self, tag: u64) {
            self.done.push(tag);
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.armed.swap(false, Ordering::SeqCst) {
                let _ = rustix::io::write(&self.efd, &1u64.to_ne_bytes());
            }
        }
        fn arm(&self) -> bool {
            self.armed.store(true, Ordering::SeqCst);
            std::sync::atomic::fence(Ordering::SeqCst);
            self.done.is_empty()
        }
    }

    struct EnginePoller {
        _reg: Registration,
        engine: Arc<FakeEngine>,
        seen: std::sync::mpsc::Sender<u64>,
    }

    impl Poller for EnginePoller {
        fn poll(&mut self, _cx: &mut Context) -> PollResult {
            let mut n = 0;
            while let Some(t) = self.engine.done.pop() {
                let _ = self.seen.send(t);
                n += 1;
            }
            PollResult::Work(n)
        }
        fn before_sleep(&mut self, _cx: &mut Context) -> bool {
            self.engine.arm()
        }
    }

    #[test]
    fn sleeping_reactor_wakes_on_a_registered_eventfd() {
        sleeping_reactor_wakes_on_a_registered_eventfd_on(SocketIoKind::Epoll);
    }

    #[cfg(feature = "sockets-uring")]
    #[test]
    fn sleeping_reactor_wakes_on_a_registered_eventfd_io_uring() {
        sleeping_reactor_wakes_on_a_registered_eventfd_on(SocketIoKind::Uring);
    }

    fn sleeping_reactor_wakes_on_a_registered_eventfd_on(socket_io: SocketIoKind) {
        let pool = start_io(1, PollMode::Interrupt, socket_io);
        let engine = Arc::new(FakeEngine {
            done: crossbeam_queue::SegQueue::new(),
            armed: AtomicBool::new(false),
            efd: rustix::event::eventfd(
                0,
                rustix::event::EventfdFlags::NONBLOCK | rustix::event::EventfdFlags::CLOEXEC,
            )
            .unwrap(),
        });
        let (tx, rx) = channel();
        let e = engine.clone();
        call(&pool, 0, move |cx| {
            let reg = cx.register(e.efd.as_fd(), Interest::READABLE).unwrap();
            cx.add_poller(Box::new(EnginePoller {
                _reg: reg,
                engine: e,
                seen: tx,
            }));
        });
        let r = pool.remote(0).unwrap();
        wait_until("sleep", || r.counters().sleeps > 0);
        let w0 = r.counters().wakeups;
        for tag in 0..50 {
            // The reactor is asleep (or about to be, with the engine armed).
            let before = r.counters().sleeps;
            engine.complete(tag);
            assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), tag);
            wait_until("sleep again", || r.counters().sleeps > before);
        }
        assert_eq!(
            r.counters().wakeups,
            w0,
            "woken by the engine fd, not the mailbox"
        );
    }

    struct Counted {
        shutdowns: Arc<AtomicUsize>,
        polls: Rc<Cell<u64>>,
    }

    impl Poller for Counted {
        fn poll(&mut self, _cx: &mut Context) -> PollResult {
            self.polls.set(self.polls.get() + 1);
            PollResult::IDLE
        }
        fn shutdown(&mut self, _cx: &mut Context) {
            self.shutdowns.fetch_add(1, Ordering::SeqCst);
        }
    }

    struct Once;

    impl Poller for Once {
        fn poll(&mut self, _cx: &mut Context) -> PollResult {
            PollResult::Remove
        }
    }

    #[test]
    fn stop_shuts_pollers_down_and_joins() {
        let mut pool = start(2, PollMode::Interrupt);
        let shutdowns = Arc::new(AtomicUsize::new(0));
        for i in 0..2 {
            let s = shutdowns.clone();
            call(&pool, i, move |cx| {
                for _ in 0..3 {
                    cx.add_poller(Box::new(Counted {
                        shutdowns: s.clone(),
                        polls: Rc::new(Cell::new(0)),
                    }));
                }
                cx.add_poller(Box::new(Once));
            });
        }
        wait_until("pollers", || {
            pool.reactors().iter().all(|r| r.counters().pollers == 3)
        });
        let remote = pool.remote(1).unwrap().clone();
        pool.stop();
        assert_eq!(shutdowns.load(Ordering::SeqCst), 6);
        assert!(matches!(remote.post(|_| {}), Err(PostError::Stopped(_))));
        pool.stop(); // idempotent
    }

    #[test]
    fn busy_mode_never_sleeps() {
        let mut pool = start(1, PollMode::Busy);
        call(&pool, 0, |_| ());
        std::thread::sleep(Duration::from_millis(20));
        let c = pool.remote(0).unwrap().counters();
        pool.stop();
        assert_eq!(c.sleeps, 0);
        assert!(c.idle_iterations > 0);
    }

    #[test]
    fn ceil_ms_never_rounds_down() {
        assert_eq!(ceil_ms(Duration::ZERO), Duration::ZERO);
        assert_eq!(ceil_ms(Duration::from_micros(1)), Duration::from_millis(1));
        assert_eq!(
            ceil_ms(Duration::from_micros(1001)),
            Duration::from_millis(2)
        );
    }
}
