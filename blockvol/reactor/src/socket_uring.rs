//! The io_uring socket backend: each reactor owns one ring; a socket keeps
//! one `recv` and at most one `send` in flight on it, and the reactor's loop
//! reaps completions by reading the completion queue (no system call) and
//! hands everything queued during an iteration to the kernel in one
//! `io_uring_enter`.
//!
//! The ring is also where the reactor waits: the reactor's epoll fd (the
//! mailbox, engine eventfds, listeners) is watched by a multishot poll on the
//! ring, so a spinning reactor with only io_uring sockets makes no system
//! call while idle, and a sleeping one sleeps in `io_uring_enter`.
//!
//! ```text
//!  recv: [kernel fills rbuf] --CQE--> Ready{start,end} --SocketIo::recv--> copied out
//!        re-armed when the caller has taken every byte
//!  send: SocketIo::send copies the gather list into sbuf (up to 256 KiB),
//!        one SEND in flight; a short send re-sends the rest; may_send() is
//!        false until it is all gone
//! ```
//!
//! Each socket's buffers and its `TcpStream` live in an `Rc` that the ring's
//! slot table also holds while an operation is in flight, so neither the
//! memory the kernel writes into nor the fd goes away early; a socket that
//! is dropped or shut down with a send in flight shuts down after that send
//! completes (the last response still leaves). This is the reactor's one
//! `unsafe` module: pushing an SQE hands the kernel raw pointers.
//!
//! Cost against epoll: one copy on each side (the [`SocketIo`] interface
//! lends buffers only for the call), and the kernel's internal poll arming
//! and task work for a `recv` that finds no data; in exchange, fewer system
//! calls: no `epoll_wait` runs while spinning, and everything an iteration
//! queued goes in one enter. Measured on loopback (docs/benchmarks.md):
//! equal to epoll at QD32, about 10 % behind at QD1, so epoll stays the
//! default. Multishot receive into a provided-buffer ring (no re-arm per
//! receive) and zero-copy sends of the output queue's buffers are the next
//! steps.

use std::cell::Cell;
use std::io::{self, IoSlice};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::reactor::Context;
use crate::socket::SocketIo;

/// Receive buffer per socket.
const RECV_BUF: usize = 128 << 10;
/// Send buffer per socket.
const SEND_BUF: usize = 256 << 10;
/// User data of the multishot poll on the reactor's epoll fd.
const EPOLL_TOKEN: u64 = u64::MAX;
/// Submission queue entries per reactor ring.
const RING_ENTRIES: u32 = 1024;

/// A heap buffer the kernel may write into while an operation is in flight;
/// only touched by us when none is.
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

impl RawBuf {
    fn new(len: usize) -> RawBuf {
        let b: Box<[u8]> = vec![0u8; len].into_boxed_slice();
        RawBuf {
            ptr: Box::into_raw(b).cast::<u8>(),
            len,
        }
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` come from `Box::into_raw` of a boxed slice of
        // exactly `len` bytes in `new`, and are freed only here, once.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecvState {
    InFlight,
    Ready { start: usize, end: usize },
    Eof,
    Failed(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SendState {
    Idle,
    InFlight { off: usize, len: usize },
    Failed(i32),
}

struct SockState {
    stream: TcpStream,
    rbuf: RawBuf,
    sbuf: RawBuf,
    recv: Cell<RecvState>,
    send: Cell<SendState>,
    /// Shut down once the send in flight completes.
    shutdown_pending: Cell<bool>,
    shut: Cell<bool>,
}

impl SockState {
    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    fn shutdown_now(&self) {
        if !self.shut.replace(true) {
            let _ = self.stream.shutdown(Shutdown::Both);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Recv,
    Send,
}

/// Counters of one reactor's socket ring.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RingCounters {
    pub enters: u64,
    pub completions: u64,
}

/// One reactor's ring for socket I/O.
pub(crate) struct SockRing {
    ring: IoUring,
    slots: Vec<Option<(Rc<SockState>, Kind)>>,
    free: Vec<usize>,
    queued: usize,
    in_flight: usize,
    epfd: RawFd,
    epoll_armed: bool,
    epoll_ready: bool,
    cqes: Vec<(u64, i32, u32)>,
    pub counters: RingCounters,
}

fn would_retry(res: i32) -> bool {
    res == -libc::EINTR || res == -libc::EAGAIN
}

impl SockRing {
    /// A ring for the reactor whose epoll instance is `epfd` (it must stay
    /// open as long as the ring).
    pub(crate) fn new(epfd: RawFd) -> io::Result<SockRing> {
        // One issuer (the reactor thread), and completions' task work run
        // when the reactor next enters the kernel instead of interrupting
        // it; older kernels get a plain ring.
        // One issuer (the reactor thread, which creates, submits to and
        // drops the ring), and completions' task work deferred until the
        // reactor enters the kernel (it checks IORING_SQ_TASKRUN on every
        // iteration) instead of interrupting it. Measured side by side
        // (`keel-bench sockets`, docs/benchmarks.md), deferred task work was
        // the best of plain, single-issuer, cooperative and deferred. Older
        // kernels get cooperative task work, or a plain ring.
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .build(RING_ENTRIES)
            .or_else(|_| {
                IoUring::builder()
                    .setup_coop_taskrun()
                    .setup_taskrun_flag()
                    .build(RING_ENTRIES)
            })
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        Ok(SockRing {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            queued: 0,
            in_flight: 0,
            epfd,
            epoll_armed: false,
            epoll_ready: true,
            cqes: Vec::with_capacity(256),
            counters: RingCounters::default(),
        })
    }

    fn push(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every pointer in the entries pushed here points into a
            // `RawBuf` of a `SockState` that the slot table holds (an `Rc`)
            // until the entry's CQE is reaped, or into nothing (the epoll
            // poll); see `Drop` for a ring dropped with entries in flight.
            if unsafe { self.ring.submission().push(e) }.is_ok() {
                self.queued += 1;
                return;
            }
            // Submission queue full: hand it to the kernel.
            self.enter();
        }
    }

    fn enter(&mut self) {
        self.counters.enters += 1;
        match self.ring.submit() {
            Ok(_) => self.queued = 0,
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                // Completion queue overflowing: reap first (the caller's
                // next `reap` does), the entries stay queued.
            }
            Err(e) => tracing::warn!(error = %e, "io_uring_enter (sockets) failed"),
        }
    }

    fn slot(&mut self, st: &Rc<SockState>, kind: Kind) -> u64 {
        self.in_flight += 1;
        let v = Some((Rc::clone(st), kind));
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = v;
                i as u64
            }
            None => {
                self.slots.push(v);
                (self.slots.len() - 1) as u64
            }
        }
    }

    fn post_recv(&mut self, st: &Rc<SockState>) {
        st.recv.set(RecvState::InFlight);
        let ud = self.slot(st, Kind::Recv);
        let len = u32::try_from(st.rbuf.len).unwrap_or(u32::MAX);
        let e = opcode::Recv::new(types::Fd(st.fd()), st.rbuf.ptr, len)
            .build()
            .user_data(ud);
        self.push(&e);
    }

    fn post_send(&mut self, st: &Rc<SockState>, off: usize, len: usize) {
        st.send.set(SendState::InFlight { off, len });
        let ud = self.slot(st, Kind::Send);
        // SAFETY: `off < len <= sbuf.len`, so the pointer stays inside the
        // send buffer.
        let ptr = unsafe { st.sbuf.ptr.add(off) };
        let n = u32::try_from(len - off).unwrap_or(u32::MAX);
        let e = opcode::Send::new(types::Fd(st.fd()), ptr, n)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud);
        self.push(&e);
    }

    /// Process every completion; returns how many socket operations
    /// finished.
    pub(crate) fn reap(&mut self) -> usize {
        if self.ring.submission().taskrun() || self.ring.submission().cq_overflow() {
            // Completions wait as task work (or in the overflow list): an
            // enter with GETEVENTS runs them.
            self.enter();
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        {
            let mut cq = self.ring.completion();
            cq.sync();
            for c in &mut cq {
                cqes.push((c.user_data(), c.result(), c.flags()));
            }
        }
        let mut n = 0;
        for &(ud, res, flags) in &cqes {
            if ud == EPOLL_TOKEN {
                self.epoll_ready = true;
                if !cqueue::more(flags) {
                    self.epoll_armed = false;
                }
                continue;
            }
            let Some((st, kind)) = usize::try_from(ud)
                .ok()
                .and_then(|i| self.slots.get_mut(i))
                .and_then(Option::take)
            else {
                continue;
            };
            if let Ok(i) = usize::try_from(ud) {
                self.free.push(i);
            }
            self.in_flight -= 1;
            n += 1;
            match kind {
                Kind::Recv => {
                    if res > 0 {
                        let end = usize::try_from(res).unwrap_or(0).min(st.rbuf.len);
                        st.recv.set(RecvState::Ready { start: 0, end });
                    } else if res == 0 {
                        st.recv.set(RecvState::Eof);
                    } else if would_retry(res) && !st.shut.get() {
                        self.post_recv(&st);
                    } else {
                        st.recv.set(RecvState::Failed(-res));
                    }
                }
                Kind::Send => {
                    let SendState::InFlight { off, len } = st.send.get() else {
                        continue;
                    };
                    if res >= 0 {
                        let off = off + usize::try_from(res).unwrap_or(0);
                        if off < len && !st.shut.get() {
                            self.post_send(&st, off, len);
                        } else {
                            st.send.set(SendState::Idle);
                        }
                    } else if would_retry(res) && !st.shut.get() {
                        self.post_send(&st, off, len);
                    } else {
                        st.send.set(SendState::Failed(-res));
                    }
                    if !matches!(st.send.get(), SendState::InFlight { .. })
                        && st.shutdown_pending.get()
                    {
                        st.shutdown_now();
                    }
                }
            }
        }
        self.counters.completions += n as u64;
        cqes.clear();
        self.cqes = cqes;
        n
    }

    /// Arm the epoll watch if needed and hand queued entries to the kernel.
    pub(crate) fn flush(&mut self) {
        if !self.epoll_armed {
            let e = opcode::PollAdd::new(types::Fd(self.epfd), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(EPOLL_TOKEN);
            self.push(&e);
            self.epoll_armed = true;
        }
        if self.queued > 0 {
            self.enter();
        }
    }

    /// Whether the epoll fd reported events since the last call (it must be
    /// polled then); clears the flag.
    pub(crate) fn take_epoll_ready(&mut self) -> bool {
        std::mem::replace(&mut self.epoll_ready, false)
    }

    /// Keep the epoll fd marked ready (its events did not all fit).
    pub(crate) fn set_epoll_ready(&mut self) {
        self.epoll_ready = true;
    }

    /// Whether something is waiting to be reaped.
    fn pending(&mut self) -> bool {
        if self.epoll_ready || self.ring.submission().taskrun() {
            return true;
        }
        let mut cq = self.ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Sleep until a completion arrives (socket I/O, or the epoll fd became
    /// readable) or `timeout` passes.
    pub(crate) fn wait(&mut self, timeout: Option<Duration>) {
        self.flush();
        if self.pending() {
            return;
        }
        self.counters.enters += 1;
        let r = match timeout {
            Some(t) => {
                let ts = types::Timespec::new()
                    .sec(t.as_secs())
                    .nsec(t.subsec_nanos());
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submitter().submit_and_wait(1),
        };
        match r {
            Ok(_) => self.queued = 0,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR)) => {
                self.queued = 0;
            }
            Err(e) => tracing::warn!(error = %e, "io_uring wait (sockets) failed"),
        }
    }
}

impl Drop for SockRing {
    fn drop(&mut self) {
        // Every socket with an operation in flight is shut down, which ends
        // its receive and send; wait (bounded) for the kernel to let go of
        // the buffers.
        for (st, _) in self.slots.iter().flatten() {
            st.shutdown_now();
        }
        for _ in 0..200 {
            if self.in_flight == 0 {
                return;
            }
            let ts = types::Timespec::new().nsec(5_000_000);
            let _ = self
                .ring
                .submitter()
                .submit_with_args(1, &types::SubmitArgs::new().timespec(&ts));
            self.reap();
        }
        // Still in flight: the kernel may write into these buffers later, so
        // they must never be freed.
        for s in self.slots.drain(..).flatten() {
            std::mem::forget(s);
        }
    }
}

/// A TCP stream whose I/O goes through its reactor's io_uring.
pub struct UringSocket {
    st: Rc<SockState>,
    ring: Rc<std::cell::RefCell<SockRing>>,
}

impl std::fmt::Debug for UringSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringSocket")
            .field("fd", &self.st.fd())
            .field("recv", &self.st.recv.get())
            .field("send", &self.st.send.get())
            .finish()
    }
}

impl UringSocket {
    /// Wrap a configured `stream`; the calling reactor must run with
    /// io_uring socket I/O ([`crate::SocketIoKind::Uring`]). The first
    /// receive is posted at once.
    pub fn new(stream: TcpStream, cx: &mut Context) -> io::Result<UringSocket> {
        let Some(ring) = cx.socket_ring() else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "this reactor does not run io_uring socket I/O",
            ));
        };
        let st = Rc::new(SockState {
            stream,
            rbuf: RawBuf::new(RECV_BUF),
            sbuf: RawBuf::new(SEND_BUF),
            recv: Cell::new(RecvState::InFlight),
            send: Cell::new(SendState::Idle),
            shutdown_pending: Cell::new(false),
            shut: Cell::new(false),
        });
        ring.borrow_mut().post_recv(&st);
        Ok(UringSocket { st, ring })
    }

    /// The stream.
    pub fn stream(&self) -> &TcpStream {
        &self.st.stream
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl SocketIo for UringSocket {
    fn may_recv(&self) -> bool {
        !matches!(self.st.recv.get(), RecvState::InFlight)
    }

    fn may_send(&self) -> bool {
        !matches!(self.st.send.get(), SendState::InFlight { .. })
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        if room == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no room"));
        }
        match self.st.recv.get() {
            RecvState::InFlight => Err(io::ErrorKind::WouldBlock.into()),
            RecvState::Eof => Ok(0),
            RecvState::Failed(e) => Err(errno(e)),
            RecvState::Ready { start, end } => {
                let n = room.min(end - start);
                // SAFETY: no receive is in flight (state Ready), so the
                // kernel does not write `rbuf`; `start + n <= end <= len`.
                let src = unsafe { std::slice::from_raw_parts(self.st.rbuf.ptr.add(start), n) };
                buf.extend_from_slice(src);
                if start + n == end {
                    if self.st.shut.get() {
                        self.st.recv.set(RecvState::Eof);
                    } else {
                        self.ring.borrow_mut().post_recv(&self.st);
                    }
                } else {
                    self.st.recv.set(RecvState::Ready {
                        start: start + n,
                        end,
                    });
                }
                Ok(n)
            }
        }
    }

    fn send(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self.st.send.get() {
            SendState::InFlight { .. } => Err(io::ErrorKind::WouldBlock.into()),
            SendState::Failed(e) => Err(errno(e)),
            SendState::Idle => {
                if self.st.shut.get() || self.st.shutdown_pending.get() {
                    return Err(io::ErrorKind::BrokenPipe.into());
                }
                let mut len = 0usize;
                for b in bufs {
                    let n = b.len().min(self.st.sbuf.len - len);
                    // SAFETY: no send is in flight (state Idle), so the
                    // kernel does not read `sbuf`; `len + n <= sbuf.len`.
                    unsafe {
                        std::ptr::copy_nonoverlapping(b.as_ptr(), self.st.sbuf.ptr.add(len), n);
                    }
                    len += n;
                    if len == self.st.sbuf.len {
                        break;
                    }
                }
                if len > 0 {
                    self.ring.borrow_mut().post_send(&self.st, 0, len);
                }
                Ok(len)
            }
        }
    }

    fn shutdown(&mut self) {
        if matches!(self.st.send.get(), SendState::InFlight { .. }) {
            self.st.shutdown_pending.set(true);
        } else {
            self.st.shutdown_now();
        }
    }
}

impl Drop for UringSocket {
    fn drop(&mut self) {
        // The receive in flight ends when the socket is shut down; a send in
        // flight finishes first. The fd closes with the last reference.
        self.shutdown();
    }
}
