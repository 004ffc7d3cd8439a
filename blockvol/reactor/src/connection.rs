//! A connection: an input buffer parsed in place by a [`Protocol`], and an
//! output queue that coalesces small writes into one `sendmsg` with
//! backpressure.
//!
//! ```text
//!  socket --recv--> [ input: consumed | unparsed | spare ]
//!                              |
//!                   Protocol::on_input(&unparsed) -> consumed bytes
//!                              |
//!                   OutQueue: [hdr+status (coalesced)] [data buf] [..]
//!                              |
//!  socket <--sendmsg(iovecs)---+   reading pauses while the queue is
//!                                  above its high-water mark
//! ```
//!
//! Peer EOF (half-close): input already received is still handled, queued
//! output is flushed, then the connection closes once the protocol has
//! nothing in flight. A socket error, or a protocol that reports
//! [`Close::Now`], closes at once. Either way only this connection's poller
//! is removed; others on the reactor are unaffected.

use std::collections::VecDeque;
use std::io::{self, IoSlice};

use crate::buffer_pool::PoolAccount;
use crate::reactor::{Context, PollResult, Poller};
use crate::socket::SocketIo;
use crate::socket_epoll::EpollSocket;

/// How a protocol wants the connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Drop the connection now; queued output is discarded.
    Now,
    /// Stop reading, send what is queued, then close.
    AfterFlush,
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The peer closed its side and everything was answered.
    PeerClosed,
    /// The protocol asked for it.
    Protocol,
    /// A PDU did not fit in the largest input buffer.
    InputTooLarge,
    /// A socket error.
    Io(io::ErrorKind),
    /// The reactor is stopping.
    Shutdown,
}

/// The protocol side of a connection (an iSCSI or NVMe/TCP queue).
pub trait Protocol {
    /// Handle bytes at the front of `input` (received, not yet consumed);
    /// return how many were consumed, `Ok(0)` to wait (for more bytes, or
    /// for a resource such as a pool buffer: unconsumed input is offered
    /// again on later polls). Called again while it consumes something and
    /// input remains.
    fn on_input(
        &mut self,
        input: &[u8],
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close>;

    /// Other work on every iteration (typically responses for engine
    /// completions the protocol routed to itself); returns work done.
    fn poll(&mut self, out: &mut OutQueue, cx: &mut Context) -> Result<usize, Close> {
        let _ = (out, cx);
        Ok(0)
    }

    /// A buffer of the protocol's own that the next bytes of the stream
    /// belong in, and how many of them at most: the rest of a write's data
    /// after its header, into the pool buffer the engine will write from.
    /// Asked only when every received byte was consumed. Where the socket
    /// I/O can ([`SocketIo::DIRECT_RECV`]), the connection receives those
    /// bytes straight into the buffer, one copy fewer, and reports them
    /// with [`Protocol::on_direct`]; otherwise they arrive through
    /// [`Protocol::on_input`] as usual, which must accept them there too.
    fn direct_target(&mut self) -> Option<(&mut Vec<u8>, usize)> {
        None
    }

    /// With a receive into the buffer of [`Protocol::direct_target`], how
    /// many bytes at most go into the input buffer in the same call: the
    /// next PDU's header, so that the data after that header can go
    /// straight into its own buffer too instead of being copied.
    fn direct_then(&self) -> usize {
        usize::MAX
    }

    /// `n` bytes (at most the count [`Protocol::direct_target`] gave) were
    /// appended to its buffer; returns work done.
    fn on_direct(
        &mut self,
        n: usize,
        out: &mut OutQueue,
        cx: &mut Context,
    ) -> Result<usize, Close> {
        let _ = (n, out, cx);
        Ok(0)
    }

    /// Whether requests are still in flight (a half-closed connection waits
    /// for them before it closes).
    fn in_flight(&self) -> bool {
        false
    }

    /// See [`Poller::before_sleep`].
    fn before_sleep(&mut self, cx: &mut Context) -> bool {
        let _ = cx;
        true
    }

    /// The connection is closed (called once).
    fn on_close(&mut self, reason: &CloseReason, cx: &mut Context) {
        let _ = (reason, cx);
    }
}

/// Buffer sizes and watermarks of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Initial input buffer size.
    pub input_buffer: usize,
    /// Largest input buffer: a PDU (header + in-capsule data) must fit.
    pub max_input_buffer: usize,
    /// Stop reading while more than this many bytes wait to be sent.
    pub output_high_water: usize,
    /// Resume reading below this.
    pub output_low_water: usize,
    /// Writes up to this size are copied into a coalescing buffer.
    pub small_write: usize,
    /// `recv` calls per poll at most (fairness between connections).
    pub reads_per_poll: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            input_buffer: 64 << 10,
            max_input_buffer: (1 << 20) + (4 << 10),
            output_high_water: 4 << 20,
            output_low_water: 1 << 20,
            small_write: 1024,
            reads_per_poll: 4,
        }
    }
}

/// Gather list entries per `sendmsg`.
const MAX_IOV: usize = 64;
/// Capacity of a coalescing buffer.
const INLINE_CAP: usize = 4 << 10;
/// Coalescing buffers kept for reuse. A read response is a header (in a
/// coalescing buffer) then a data buffer, so the queue holds one coalescing
/// buffer per response in flight (and a socket that sends from owned
/// buffers holds them until the send completes); keeping as many as a deep
/// queue uses means none is allocated per I/O in steady state (at most
/// 128 KiB kept per connection).
const SPARE_INLINE: usize = 32;

/// A buffer of the output queue: a coalescing buffer or a data (pool)
/// buffer. Backends that send from owned memory take these by value
/// ([`SocketIo::send_owned`]).
#[derive(Debug)]
pub struct OutChunk {
    pub(crate) data: Vec<u8>,
    /// A coalescing buffer (recycled by the queue) rather than a pool
    /// buffer.
    pub(crate) inline: bool,
}

/// Bytes waiting to be sent, in order.
pub struct OutQueue {
    chunks: VecDeque<OutChunk>,
    /// Bytes of the front chunk already sent.
    head: usize,
    bytes: usize,
    small_write: usize,
    spare: Vec<Vec<u8>>,
    account: Option<PoolAccount>,
}

impl std::fmt::Debug for OutQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutQueue")
            .field("chunks", &self.chunks.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl OutQueue {
    fn new(small_write: usize, account: Option<PoolAccount>) -> OutQueue {
        OutQueue {
            chunks: VecDeque::with_capacity(MAX_IOV),
            head: 0,
            bytes: 0,
            small_write,
            spare: Vec::new(),
            account,
        }
    }

    /// Bytes queued and not yet sent.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.bytes == 0
    }

    /// Queue a copy of `data` (headers, status, small responses); coalesced
    /// with adjacent small writes.
    pub fn push(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if data.len() > self.small_write {
            // A copy of our own, not a pool buffer: marked inline so that
            // it is recycled here (or dropped), never handed to the pool,
            // whose accounts a Vec it did not hand out would corrupt.
            let mut v = Vec::with_capacity(data.len());
            v.extend_from_slice(data);
            self.chunks.push_back(OutChunk {
                data: v,
                inline: true,
            });
            self.bytes += data.len();
            return;
        }
        let fits = self
            .chunks
            .back()
            .is_some_and(|c| c.inline && c.data.capacity() - c.data.len() >= data.len())
            && !(self.chunks.len() == 1 && self.head > 0);
        if !fits {
            let v = self
                .spare
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(INLINE_CAP));
            self.chunks.push_back(OutChunk {
                data: v,
                inline: true,
            });
        }
        if let Some(c) = self.chunks.back_mut() {
            c.data.extend_from_slice(data);
        }
        self.bytes += data.len();
    }

    /// Queue a data buffer by move (no copy); it goes back to the buffer
    /// pool (through the connection's account, if any) once sent.
    pub fn push_buf(&mut self, buf: Vec<u8>) {
        if buf.is_empty() {
            self.recycle(OutChunk {
                data: buf,
                inline: false,
            });
            return;
        }
        self.bytes += buf.len();
        self.chunks.push_back(OutChunk {
            data: buf,
            inline: false,
        });
    }

    fn recycle_inline(&mut self, mut v: Vec<u8>) {
        v.clear();
        if self.spare.len() < SPARE_INLINE && v.capacity() <= INLINE_CAP {
            self.spare.push(v);
        }
    }

    fn recycle(&mut self, c: OutChunk) {
        if c.inline {
            self.recycle_inline(c.data);
        } else if let Some(a) = &self.account {
            a.put(c.data);
        }
        // Without an account, `flush` hands buffers to the reactor's pool.
    }

    /// Send as much as the socket takes. `Ok(true)` if anything was sent.
    fn flush<S: SocketIo>(&mut self, sock: &mut S, cx: &mut Context) -> io::Result<bool> {
        if S::OWNED_SENDS {
            return self.flush_owned(sock);
        }
        let mut sent_any = false;
        while self.bytes > 0 && sock.may_send() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n = 0;
            for (i, c) in self.chunks.iter().take(MAX_IOV).enumerate() {
                let start = if i == 0 { self.head } else { 0 };
                iov[n] = IoSlice::new(&c.data[start..]);
                n += 1;
            }
            let mut sent = match sock.send(&iov[..n]) {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            sent_any |= sent > 0;
            self.bytes -= sent;
            while sent > 0 {
                let Some(front) = self.chunks.front() else {
                    break;
                };
                let left = front.data.len() - self.head;
                if sent < left {
                    self.head += sent;
                    break;
                }
                sent -= left;
                self.head = 0;
                if let Some(c) = self.chunks.pop_front() {
                    if !c.inline && self.account.is_none() {
                        cx.buffer_pool().put(c.data);
                    } else {
                        self.recycle(c);
                    }
                }
            }
        }
        Ok(sent_any)
    }

    /// [`Self::flush`] for a socket that takes the buffers: they leave the
    /// queue when handed over (pool buffers go back to the pool from the
    /// socket; coalescing buffers come back here for reuse).
    fn flush_owned<S: SocketIo>(&mut self, sock: &mut S) -> io::Result<bool> {
        sock.reclaim(|v| self.recycle_inline(v));
        let mut sent_any = false;
        while self.bytes > 0 && sock.may_send() {
            match sock.send_owned(&mut self.chunks, self.head, self.account.as_ref()) {
                Ok(0) => break,
                Ok(n) => {
                    self.bytes -= n;
                    self.head = 0;
                    sent_any = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(sent_any)
    }

    fn clear(&mut self, cx: &mut Context) {
        while let Some(c) = self.chunks.pop_front() {
            if !c.inline && self.account.is_none() {
                cx.buffer_pool().put(c.data);
            } else {
                self.recycle(c);
            }
        }
        self.head = 0;
        self.bytes = 0;
    }
}

/// A TCP connection driven by its reactor: a [`Poller`] that reads, lets
/// `P` parse in place, and writes `P`'s responses.
pub struct Connection<P: Protocol, S: SocketIo = EpollSocket> {
    sock: S,
    proto: P,
    cfg: ConnectionConfig,
    input: Vec<u8>,
    /// Consumed prefix of `input`.
    start: usize,
    out: OutQueue,
    read_closed: bool,
    closing: bool,
    paused: bool,
    closed: bool,
}

impl<P: Protocol> Connection<P, EpollSocket> {
    /// Register `stream` (already configured, non-blocking) with the calling
    /// reactor and wrap it. Buffers queued with [`OutQueue::push_buf`] go
    /// back to `account` when sent, or to the reactor's pool without one.
    pub fn new(
        stream: std::net::TcpStream,
        proto: P,
        cfg: ConnectionConfig,
        account: Option<PoolAccount>,
        cx: &mut Context,
    ) -> io::Result<Self> {
        let sock = EpollSocket::new(stream, cx)?;
        Ok(Connection::with_socket(sock, proto, cfg, account))
    }
}

impl<P: Protocol + 'static> Connection<P, EpollSocket> {
    /// Wrap `stream` (configured, non-blocking) in a connection on the
    /// socket I/O the calling reactor runs ([`Context::socket_io`]).
    pub fn boxed(
        stream: std::net::TcpStream,
        proto: P,
        cfg: ConnectionConfig,
        account: Option<PoolAccount>,
        cx: &mut Context,
    ) -> io::Result<Box<dyn Poller>> {
        match cx.socket_io() {
            crate::SocketIoKind::Epoll => {
                Ok(Box::new(Connection::new(stream, proto, cfg, account, cx)?))
            }
            #[cfg(feature = "sockets-uring")]
            crate::SocketIoKind::Uring => {
                let sock = crate::socket_uring::UringSocket::new(stream, cx)?;
                Ok(Box::new(Connection::with_socket(sock, proto, cfg, account)))
            }
            #[cfg(not(feature = "sockets-uring"))]
            crate::SocketIoKind::Uring => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "io_uring socket I/O is not compiled in",
            )),
        }
    }
}

impl<P: Protocol, S: SocketIo> Connection<P, S> {
    /// Wrap a socket of any backend.
    pub fn with_socket(
        sock: S,
        proto: P,
        cfg: ConnectionConfig,
        account: Option<PoolAccount>,
    ) -> Self {
        let input = Vec::with_capacity(cfg.input_buffer.max(512));
        let out = OutQueue::new(cfg.small_write, account);
        Connection {
            sock,
            proto,
            cfg,
            input,
            start: 0,
            out,
            read_closed: false,
            closing: false,
            paused: false,
            closed: false,
        }
    }

    /// The protocol state.
    pub fn protocol(&self) -> &P {
        &self.proto
    }

    fn close(&mut self, reason: CloseReason, cx: &mut Context) -> PollResult {
        if !self.closed {
            self.closed = true;
            self.out.clear(cx);
            self.sock.shutdown();
            self.proto.on_close(&reason, cx);
        }
        PollResult::Remove
    }

    /// Let the protocol consume buffered input. Returns PDUs handled.
    fn parse(&mut self, cx: &mut Context) -> Result<usize, Close> {
        let mut n = 0;
        while self.start < self.input.len() && !self.paused && !self.closing {
            let used = self
                .proto
                .on_input(&self.input[self.start..], &mut self.out, cx)?;
            if used == 0 {
                break;
            }
            self.start = (self.start + used).min(self.input.len());
            n += 1;
            if self.out.len() > self.cfg.output_high_water {
                self.paused = true;
            }
        }
        if self.start == self.input.len() {
            self.input.clear();
            self.start = 0;
        }
        Ok(n)
    }

    /// Make room at the end of `input`; `false` if a PDU cannot fit.
    fn make_room(&mut self) -> bool {
        if self.input.len() < self.input.capacity() {
            return true;
        }
        if self.start > 0 {
            self.input.drain(..self.start);
            self.start = 0;
            return true;
        }
        let cap = self.input.capacity();
        if cap >= self.cfg.max_input_buffer {
            return false;
        }
        let want = (cap * 2).min(self.cfg.max_input_buffer);
        self.input.reserve_exact(want - self.input.len());
        true
    }
}

impl<P: Protocol, S: SocketIo> Poller for Connection<P, S> {
    fn poll(&mut self, cx: &mut Context) -> PollResult {
        if self.closed {
            return PollResult::Remove;
        }
        let mut work = 0;
        match self.proto.poll(&mut self.out, cx) {
            Ok(n) => work += n,
            Err(Close::Now) => return self.close(CloseReason::Protocol, cx),
            Err(Close::AfterFlush) => self.closing = true,
        }

        let mut reads = 0;
        // Fairness between connections, in quarters of a receive: a
        // receive straight into the protocol's buffer (one PDU's data at
        // most) costs a quarter, so a connection streaming large writes
        // still hands the engine a burst of them per poll, as one receive
        // into the (then larger) input buffer did.
        let mut budget = self.cfg.reads_per_poll * 4;
        while !self.read_closed
            && !self.closing
            && !self.paused
            && budget > 0
            && self.sock.may_recv()
        {
            if !self.make_room() {
                return self.close(CloseReason::InputTooLarge, cx);
            }
            reads += 1;
            let mut direct = 0;
            // The protocol's own buffer for the next bytes, when the socket
            // I/O can receive into it and no received input waits to be
            // parsed (then the next bytes on the wire are the ones it wants).
            let then = self.proto.direct_then();
            let target = if S::DIRECT_RECV && self.start == self.input.len() {
                self.proto
                    .direct_target()
                    .map(|(buf, max)| {
                        let max = max.min(buf.capacity() - buf.len());
                        (buf, max)
                    })
                    .filter(|&(_, max)| max > 0)
            } else {
                None
            };
            let got = match target {
                Some((buf, max)) => {
                    let r = self.sock.recv_direct(buf, max, &mut self.input, then);
                    if let Ok(n) = r {
                        direct = n.min(max);
                    }
                    r
                }
                None => self.sock.recv(&mut self.input),
            };
            budget = budget.saturating_sub(if direct > 0 { 1 } else { 4 });
            match got {
                Ok(0) => {
                    self.read_closed = true;
                    work += 1;
                }
                Ok(n) => {
                    work += 1;
                    cx.count_recv(n - direct, direct);
                    if direct > 0 {
                        match self.proto.on_direct(direct, &mut self.out, cx) {
                            Ok(n) => work += n,
                            Err(Close::Now) => return self.close(CloseReason::Protocol, cx),
                            Err(Close::AfterFlush) => self.closing = true,
                        }
                    }
                    match self.parse(cx) {
                        Ok(n) => work += n,
                        Err(Close::Now) => return self.close(CloseReason::Protocol, cx),
                        Err(Close::AfterFlush) => self.closing = true,
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.close(CloseReason::Io(e.kind()), cx),
            }
        }

        if reads == 0 && self.start < self.input.len() {
            // Unparsed input and nothing new: the protocol may have waited
            // for a resource (a pool buffer, a command slot); retry.
            match self.parse(cx) {
                Ok(n) => work += n,
                Err(Close::Now) => return self.close(CloseReason::Protocol, cx),
                Err(Close::AfterFlush) => self.closing = true,
            }
        }

        if !self.out.is_empty() {
            match self.out.flush(&mut self.sock, cx) {
                Ok(sent) => work += usize::from(sent),
                Err(e) => return self.close(CloseReason::Io(e.kind()), cx),
            }
        }
        if self.paused && self.out.len() <= self.cfg.output_low_water {
            self.paused = false;
            match self.parse(cx) {
                Ok(n) => work += n + 1,
                Err(Close::Now) => return self.close(CloseReason::Protocol, cx),
                Err(Close::AfterFlush) => self.closing = true,
            }
        }

        if (self.closing || self.read_closed) && self.out.is_empty() && !self.proto.in_flight() {
            let reason = if self.closing {
                CloseReason::Protocol
            } else {
                CloseReason::PeerClosed
            };
            return self.close(reason, cx);
        }
        PollResult::Work(work)
    }

    fn before_sleep(&mut self, cx: &mut Context) -> bool {
        self.proto.before_sleep(cx)
    }

    fn shutdown(&mut self, cx: &mut Context) {
        self.close(CloseReason::Shutdown, cx);
    }
}
