//! Socket setup as a fast target does it, and the seam between connections
//! and the socket I/O backend.
//!
//! [`SocketIo`] is what a [`Connection`](crate::Connection) needs from a
//! socket: receive into spare capacity, send a gather list, and know whether
//! trying is worthwhile. The epoll backend ([`crate::socket_epoll`]) does
//! non-blocking `recv`/`sendmsg` on readiness; the io_uring backend
//! ([`crate::socket_uring`], cargo feature `sockets-uring`) implements the
//! same trait with its own submissions and completions. A reactor pool runs
//! one of them, chosen by [`SocketIoKind`].
//!
//! Sends come in two shapes. A readiness backend sends borrowed slices
//! ([`SocketIo::send`]): the kernel is done with them when the call returns.
//! A completion backend sets [`SocketIo::OWNED_SENDS`] and takes the output
//! queue's buffers by value ([`SocketIo::send_owned`]), keeping them until
//! the kernel has sent them; the connection picks the shape at compile time,
//! so the borrowed path costs what it did.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::TcpStream;

use socket2::SockRef;

use crate::buffer_pool::PoolAccount;
use crate::connection::OutChunk;

/// Options applied to every accepted (or connected) TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketConfig {
    /// Disable Nagle: responses leave at once.
    pub nodelay: bool,
    /// `SO_RCVBUF` in bytes (`None`: kernel default).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` in bytes (`None`: kernel default).
    pub send_buffer: Option<usize>,
}

impl Default for SocketConfig {
    fn default() -> Self {
        SocketConfig {
            nodelay: true,
            recv_buffer: Some(1 << 20),
            send_buffer: Some(1 << 20),
        }
    }
}

impl SocketConfig {
    /// Make `stream` non-blocking and apply the options.
    pub fn apply(&self, stream: &TcpStream) -> io::Result<()> {
        stream.set_nonblocking(true)?;
        let s = SockRef::from(stream);
        if self.nodelay {
            s.set_tcp_nodelay(true)?;
        }
        if let Some(n) = self.recv_buffer {
            s.set_recv_buffer_size(n)?;
        }
        if let Some(n) = self.send_buffer {
            s.set_send_buffer_size(n)?;
        }
        Ok(())
    }
}

/// Which socket I/O a reactor pool runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocketIoKind {
    /// Edge-triggered epoll readiness and non-blocking `recv`/`sendmsg`.
    #[default]
    Epoll,
    /// `recv`/`send` submitted to the reactor's io_uring (cargo feature
    /// `sockets-uring`).
    Uring,
}

impl SocketIoKind {
    /// The configuration name: `epoll` or `io_uring`.
    pub fn as_str(self) -> &'static str {
        match self {
            SocketIoKind::Epoll => "epoll",
            SocketIoKind::Uring => "io_uring",
        }
    }

    /// Whether this build can run it.
    pub fn compiled_in(self) -> bool {
        match self {
            SocketIoKind::Epoll => true,
            SocketIoKind::Uring => cfg!(feature = "sockets-uring"),
        }
    }
}

impl std::fmt::Display for SocketIoKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A socket I/O name that is not `epoll` or `io_uring`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Unknown socket I/O {0:?} (epoll, io_uring)")]
pub struct ParseSocketIoError(pub String);

impl std::str::FromStr for SocketIoKind {
    type Err = ParseSocketIoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "epoll" => Ok(SocketIoKind::Epoll),
            "io_uring" | "uring" => Ok(SocketIoKind::Uring),
            _ => Err(ParseSocketIoError(s.to_owned())),
        }
    }
}

/// Non-blocking socket I/O as a connection drives it.
pub trait SocketIo {
    /// Whether a receive may find data (or EOF, or an error).
    fn may_recv(&self) -> bool;

    /// Whether a send may make progress.
    fn may_send(&self) -> bool;

    /// Receive into the spare capacity of `buf` (appending); `Ok(0)` is EOF.
    /// `WouldBlock` when nothing is there (readiness is then forgotten).
    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<usize>;

    /// Whether [`SocketIo::recv_direct`] works: the backend receives into
    /// memory the caller names at the time of the call (a readiness
    /// backend). A completion backend has already received into its own
    /// buffers by then and says `false`.
    const DIRECT_RECV: bool = false;

    /// Receive in one call: up to `max` bytes appended to `direct` (a buffer
    /// the protocol owns, such as a write's pool buffer; `max` is at most
    /// its spare capacity), then up to `more` bytes into the spare capacity
    /// of `buf`. Returns the bytes received in all; the first `min(n, max)`
    /// went to `direct`. `Ok(0)` is EOF, `WouldBlock` as for
    /// [`SocketIo::recv`].
    fn recv_direct(
        &mut self,
        direct: &mut Vec<u8>,
        max: usize,
        buf: &mut Vec<u8>,
        more: usize,
    ) -> io::Result<usize> {
        let _ = (direct, max, buf, more);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Send as much of `bufs` as the socket takes, in one call. Never raises
    /// `SIGPIPE`. `WouldBlock` when the send buffer is full.
    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;

    /// Whether a connection sends through [`SocketIo::send_owned`] (the
    /// backend holds the buffers until the kernel has sent them) rather than
    /// [`SocketIo::send`].
    const OWNED_SENDS: bool = false;

    /// Take buffers from the front of `chunks` (the first one from byte
    /// `head` on) and send them; returns the bytes taken, which leave in
    /// order unless the socket fails. Pool buffers go back to `account`
    /// (or to the reactor's pool without one) once sent; coalescing buffers
    /// come back through [`SocketIo::reclaim`]. `WouldBlock` while a send is
    /// in flight. Never raises `SIGPIPE`.
    fn send_owned(
        &mut self,
        chunks: &mut VecDeque<OutChunk>,
        head: usize,
        account: Option<&PoolAccount>,
    ) -> io::Result<usize> {
        let _ = (chunks, head, account);
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Hand coalescing buffers whose send completed to `f` (cleared or not;
    /// the caller clears them) for reuse.
    fn reclaim(&mut self, f: impl FnMut(Vec<u8>)) {
        let _ = f;
    }

    /// Shut both directions down (the fd is closed on drop).
    fn shutdown(&mut self);
}
