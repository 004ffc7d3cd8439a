//! keel reactors: the polled-mode runtime of the volume server.
//!
//! One reactor thread per configured core (optionally pinned) owns its
//! connections and loops over socket I/O, engine completions, timers and
//! cross-reactor mailboxes, in one of three poll modes (busy, adaptive,
//! interrupt). Buffers come from a tiered pool (4 KiB / 64 KiB / 256 KiB)
//! with a bounded size and per-owner quotas. Socket I/O is either epoll
//! readiness plus non-blocking `recv`/`sendmsg`, or `recv`/`send` on a
//! per-reactor io_uring (feature `sockets-uring`, [`SocketIoKind`]); both sit
//! behind [`SocketIo`].
//!
//! ```text
//!            other threads (reactors, tokio, engine workers)
//!                 | Remote::post(closure)      | engine completion
//!                 v                            v  (writes handle eventfd)
//!   +------------ mailbox (lock-free) --+   eventfds / sockets
//!   |  ReactorPool: one thread per core |        | epoll (edge-triggered)
//!   v                                   |        v
//!  loop {                               |  Registration ready bits
//!    run <= N messages  <---------------+
//!    fire due timers (heap, cancelable)
//!    epoll_wait(0) if fds registered -> mark ready bits
//!    for p in pollers: p.poll(cx)  (connections, engine handles, listener)
//!    if no work:
//!      busy      -> loop again
//!      adaptive  -> loop again until idle for `spin` (default 50 µs), then
//!      interrupt -> sleep: set "sleeping" flag, recheck mailbox,
//!                   pollers' before_sleep (arm engine eventfds),
//!                   epoll_wait(until next timer) on fds + mailbox eventfd
//!  }
//!  stop(): pollers' shutdown(), threads joined
//! ```
//!
//! A protocol target implements [`Protocol`] (parse bytes in place, queue
//! responses on an [`OutQueue`]), binds a [`Listener`] whose factory wraps
//! each accepted socket in a [`Connection`], and posts to other reactors with
//! [`Context::post`] or [`Remote::post`]. An engine handle becomes a
//! [`Poller`] that drains completions in `poll`, registers the handle's
//! notify fd with [`Context::register`] and arms it in
//! [`Poller::before_sleep`].

#![warn(missing_docs)]

pub mod buffer_pool;
pub mod connection;
mod epoll;
pub mod listener;
mod mailbox;
pub mod poll_mode;
mod reactor;
pub mod socket;
pub mod socket_epoll;
#[cfg(feature = "sockets-uring")]
pub mod socket_uring;
mod stats;
pub mod timer;
mod wake;

pub use buffer_pool::{
    BufferPool, BufferPoolConfig, PoolAccount, PoolConfigError, PoolError, PoolStats, TIER_SIZES,
};
pub use connection::{
    Close, CloseReason, Connection, ConnectionConfig, OutChunk, OutQueue, Protocol,
};
pub use epoll::{Interest, Ready, Registration};
pub use listener::{ConnectionFactory, Listener, ListenerConfig};
pub use mailbox::{Message, PostError};
pub use poll_mode::{ParsePollModeError, PollMode, DEFAULT_ADAPTIVE_SPIN};
pub use reactor::{
    Context, PollResult, Poller, ReactorConfig, ReactorError, ReactorPool, Remote, WakeBy,
};
pub use socket::{ParseSocketIoError, SocketConfig, SocketIo, SocketIoKind};
pub use socket_epoll::EpollSocket;
#[cfg(feature = "sockets-uring")]
pub use socket_uring::UringSocket;
pub use stats::{thread_cpu_time, ReactorCounters};
pub use timer::TimerId;
