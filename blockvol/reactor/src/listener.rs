//! Accepting TCP connections and spreading them over the reactors.
//!
//! A [`Listener`] binds in the caller's thread (so `EADDRINUSE` is reported
//! at once), then runs as a poller on one reactor. Each accepted socket is
//! made non-blocking and tuned ([`SocketConfig`]), and handed round-robin to
//! a reactor through its mailbox, where the factory turns it into a poller
//! (usually a [`Connection`](crate::Connection)).

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};

use crate::epoll::{Interest, Registration};
use crate::reactor::{Context, PollResult, Poller, ReactorPool};
use crate::socket::SocketConfig;

/// Turns an accepted socket into a poller on the reactor that owns it;
/// `None` refuses the connection (the socket is closed).
pub type ConnectionFactory =
    Arc<dyn Fn(TcpStream, &mut Context) -> Option<Box<dyn Poller>> + Send + Sync + 'static>;

/// Listener options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerConfig {
    /// `listen(2)` backlog.
    pub backlog: i32,
    /// Options for accepted sockets.
    pub socket: SocketConfig,
    /// Which reactor runs the accept loop.
    pub accept_on: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            backlog: 1024,
            socket: SocketConfig::default(),
            accept_on: 0,
        }
    }
}

#[derive(Debug, Default)]
struct ListenerState {
    closed: AtomicBool,
    accepted: AtomicU64,
    dropped: AtomicU64,
}

/// A listening socket served by a reactor. Dropping the handle does not
/// stop it; call [`Listener::close`] (or stop the pool).
#[derive(Debug, Clone)]
pub struct Listener {
    local_addr: SocketAddr,
    state: Arc<ListenerState>,
    remote: crate::reactor::Remote,
}

impl Listener {
    /// Bind `addr` and start accepting on `cfg.accept_on`; every accepted
    /// socket goes to the next reactor in turn and through `factory` there.
    pub fn bind(
        pool: &ReactorPool,
        addr: SocketAddr,
        cfg: ListenerConfig,
        factory: ConnectionFactory,
    ) -> io::Result<Listener> {
        let remote = pool
            .remote(cfg.accept_on)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no such reactor"))?
            .clone();
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.set_cloexec(true)?;
        sock.bind(&addr.into())?;
        sock.listen(cfg.backlog)?;
        sock.set_nonblocking(true)?;
        let listener: TcpListener = sock.into();
        let local_addr = listener.local_addr()?;
        let state = Arc::new(ListenerState::default());
        let st = state.clone();
        remote
            .post(
                move |cx| match cx.register(listener.as_fd(), Interest::READABLE) {
                    Ok(reg) => cx.add_poller(Box::new(AcceptPoller {
                        reg,
                        listener,
                        cfg: cfg.socket,
                        factory,
                        state: st,
                        next: cx.index(),
                        retry_at: None,
                        last_log: None,
                    })),
                    Err(e) => tracing::error!(error = %e, "cannot register listener"),
                },
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
        Ok(Listener {
            local_addr,
            state,
            remote,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.state.accepted.load(Ordering::Relaxed)
    }

    /// Connections accepted and then dropped (setup failed, mailbox full).
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Stop accepting and close the listening socket.
    pub fn close(&self) {
        self.state.closed.store(true, Ordering::Release);
        // Wake the reactor so the poller notices.
        let _ = self.remote.post(|_| {});
    }
}

struct AcceptPoller {
    // Before `listener`: leaves the epoll set before the fd closes.
    reg: Registration,
    listener: TcpListener,
    cfg: SocketConfig,
    factory: ConnectionFactory,
    state: Arc<ListenerState>,
    next: usize,
    retry_at: Option<Instant>,
    last_log: Option<Instant>,
}

/// Accepts per poll at most.
const ACCEPT_BATCH: usize = 32;
/// Back-off after `EMFILE` and friends.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

impl AcceptPoller {
    fn warn(&mut self, now: Instant, what: &str, e: &dyn std::fmt::Display) {
        // At most one line per second, whatever the peers do.
        if self
            .last_log
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_log = Some(now);
            tracing::warn!(error = %e, "{what}");
        }
    }

    fn dispatch(&mut self, stream: TcpStream, cx: &mut Context) {
        let n = cx.reactor_count();
        let target = self.next % n;
        self.next = (self.next + 1) % n;
        if target == cx.index() {
            if let Some(p) = (self.factory)(stream, cx) {
                cx.add_poller(p);
            }
            return;
        }
        let factory = self.factory.clone();
        let posted = cx.post(target, move |cx| {
            if let Some(p) = factory(stream, cx) {
                cx.add_poller(p);
            }
        });
        if let Err(e) = posted {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
            self.warn(cx.now(), "connection dropped", &e);
        }
    }
}

impl Poller for AcceptPoller {
    fn poll(&mut self, cx: &mut Context) -> PollResult {
        if self.state.closed.load(Ordering::Acquire) {
            return PollResult::Remove;
        }
        if let Some(t) = self.retry_at {
            if cx.now() < t {
                return PollResult::IDLE;
            }
            self.retry_at = None;
        }
        let mut work = 0;
        while work < ACCEPT_BATCH && self.reg.is_readable() {
            match self.listener.accept() {
                Ok((stream, _peer)) => {
                    work += 1;
                    self.state.accepted.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = self.cfg.apply(&stream) {
                        self.state.dropped.fetch_add(1, Ordering::Relaxed);
                        self.warn(cx.now(), "socket setup failed", &e);
                        continue;
                    }
                    self.dispatch(stream, cx);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.reg.clear(crate::epoll::Ready::READABLE);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // Out of fds or memory: keep the readiness, retry later.
                    self.warn(cx.now(), "accept failed", &e);
                    self.retry_at = Some(cx.now() + ACCEPT_RETRY);
                    cx.add_timer(ACCEPT_RETRY, |_| {});
                    break;
                }
            }
        }
        PollResult::Work(work)
    }
}
