//! The io_uring socket backend: each reactor owns one ring; a socket keeps
//! one receive and at most one send in flight on it, and the reactor's loop
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
//!  recv: one multishot RECV per socket, armed once, into the reactor's
//!        provided-buffer ring (256 x 32 KiB):
//!        [kernel fills buffer b] --CQE(b)--> held by the socket
//!        --SocketIo::recv--> copied into the connection's input, b back
//!        to the ring at once
//!  send: SocketIo::send_owned moves the output queue's buffers (up to 64,
//!        1 MiB) into the socket: one SENDMSG with an iovec over them; a
//!        short send re-sends the rest; at the CQE data buffers go back to
//!        the pool, coalescing buffers back to the queue; may_send() is
//!        false until then
//! ```
//!
//! Each socket's state (the `TcpStream`, the send's buffers, iovecs and
//! `msghdr`) lives in an `Rc` that the ring's slot table also holds while an
//! operation is in flight, so neither the memory the kernel reads or writes
//! nor the fd goes away early; a socket that is dropped or shut down with a
//! send in flight shuts down after that send completes (the last response
//! still leaves). A ring dropped with operations still in flight after a
//! bounded wait leaks their sockets and the provided buffers rather than
//! free memory the kernel may still use. This is the reactor's one `unsafe`
//! module: pushing an SQE hands the kernel raw pointers.
//!
//! Receive: a multishot receive stays armed across receives (no re-arm and
//! no internal poll arming per receive). A socket holding `HOLD_MAX` (32)
//! buffers its connection has not taken (paused by backpressure, or a peer
//! that floods) has its receive cancelled, so one connection cannot drain
//! the reactor's buffers; it is armed again once the connection has taken
//! them. A receive that finds the ring empty (`ENOBUFS`) is armed again when
//! buffers come back. If the kernel refuses buffer rings (before 5.19) the
//! ring logs it once and each socket keeps one single-shot `RECV` into its
//! own 128 KiB buffer, re-armed when the connection has taken every byte.
//!
//! Send: zero-copy from the output queue (the queue's `Vec`s are the iovec
//! targets); the epoll backend still `sendmsg`s borrowed slices. What stays:
//! one extra copy on receive (the kernel copies into a provided buffer, we
//! copy that into the connection's input; epoll's `recv` writes straight
//! into the input).
//!
//! Cost against epoll, measured on loopback (`keel-bench sockets --runs 3
//! --seconds 3`, 2-core VM, docs/performance.md): before these two changes
//! io_uring was 0.94-0.97x epoll's IOPS at QD32, after them 0.99-1.10x, and
//! about 1.0x at QD1 both times; the spread between runs of one build is
//! about as large. Multishot receive measured the same as single-shot:
//! it stays for the re-arm it saves and the 128 KiB per connection. Epoll
//! stays the default.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Shutdown, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use crate::buffer_pool::{BufferPool, PoolAccount};
use crate::connection::OutChunk;
use crate::reactor::Context;
use crate::socket::SocketIo;

/// Receive buffer per socket.
const RECV_BUF: usize = 128 << 10;
/// Buffers in one `SENDMSG` at most.
const SEND_IOV: usize = 64;
/// Bytes one `SENDMSG` takes at most (it takes whole buffers: the last
/// may go past this). Bounds what leaves the output queue's backpressure
/// accounting at once.
const SEND_BATCH: usize = 1 << 20;
/// Sent coalescing buffers kept for the connection to reuse.
const SENT_KEEP: usize = 32;
/// Provided buffers per reactor for multishot receives (a power of two).
const PBUF_COUNT: u16 = 256;
/// Bytes in each provided buffer.
const PBUF_SIZE: usize = PBUF_LEN as usize;
/// The same as the kernel takes it.
const PBUF_LEN: u32 = 32 << 10;
/// The provided buffers' group id.
const PBUF_GROUP: u16 = 0;
/// Received buffers a socket may hold (not yet taken by its connection)
/// before its multishot receive is cancelled; it is armed again once the
/// connection has taken them. Bounds what one paused (or hostile)
/// connection can take from the reactor's provided buffers.
const HOLD_MAX: usize = 32;
/// User data of cancel requests (their completions are ignored).
const CANCEL_TOKEN: u64 = u64::MAX - 1;
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

/// The reactor's provided buffers: a ring of `PBUF_COUNT` entries
/// registered with the kernel as buffer group `PBUF_GROUP`, over one
/// allocation of `PBUF_COUNT` buffers. A multishot receive's completion
/// names the buffer the kernel filled; the socket holds it until its
/// connection has copied the bytes out, then puts it back at the tail.
struct BufRing {
    /// Page-aligned entries; the kernel reads them and the tail (which
    /// overlays the reserved field of entry 0).
    entries: *mut types::BufRingEntry,
    data: RawBuf,
    /// Our tail (entries before it are the kernel's).
    tail: u16,
    /// Buffers the kernel filled and we have not put back.
    lent: usize,
}

impl BufRing {
    fn layout() -> std::alloc::Layout {
        let size = usize::from(PBUF_COUNT) * std::mem::size_of::<types::BufRingEntry>();
        // 4096: the ring must be page aligned; size is a multiple of it.
        std::alloc::Layout::from_size_align(size, 4096).unwrap_or_else(|_| unreachable!())
    }

    /// Allocate, register with `ring` and fill with every buffer.
    fn new(ring: &IoUring) -> io::Result<BufRing> {
        // SAFETY: the layout has a non-zero size.
        let entries = unsafe { std::alloc::alloc_zeroed(Self::layout()) };
        if entries.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        let mut b = BufRing {
            entries: entries.cast(),
            data: RawBuf::new(usize::from(PBUF_COUNT) * PBUF_SIZE),
            tail: 0,
            lent: usize::from(PBUF_COUNT),
        };
        // SAFETY: `entries` is page aligned, zeroed and holds `PBUF_COUNT`
        // entries; it stays allocated until the group is unregistered (the
        // ring's `Drop`), or forever if operations are still in flight then.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(
                b.entries as u64,
                PBUF_COUNT,
                PBUF_GROUP,
                0,
            )?;
        }
        for bid in 0..PBUF_COUNT {
            b.put(bid);
        }
        Ok(b)
    }

    /// Start of buffer `bid`.
    fn buf(&self, bid: u16) -> *mut u8 {
        let i = usize::from(bid % PBUF_COUNT);
        // SAFETY: `i < PBUF_COUNT`, so the offset is inside `data`.
        unsafe { self.data.ptr.add(i * PBUF_SIZE) }
    }

    /// Give buffer `bid` (held by us) back to the kernel.
    fn put(&mut self, bid: u16) {
        let idx = usize::from(self.tail & (PBUF_COUNT - 1));
        let addr = self.buf(bid) as u64;
        // SAFETY: `idx < PBUF_COUNT`. At most `PBUF_COUNT - 1` buffers are
        // the kernel's while we hold `bid`, so the entry at our tail is not
        // one it may read yet; the setters leave the tail field (entry 0's
        // reserved field) alone.
        let e = unsafe { &mut *self.entries.add(idx) };
        e.set_addr(addr);
        e.set_len(PBUF_LEN);
        e.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: `entries` is the ring's first entry, initialised; the
        // tail field is a naturally aligned `u16` that only we write.
        let tail = unsafe { types::BufRingEntry::tail(self.entries) }.cast_mut();
        // SAFETY: as above; the kernel reads it concurrently, so it is
        // accessed atomically, and the release store publishes the entry
        // written before it.
        unsafe { AtomicU16::from_ptr(tail) }.store(self.tail, Ordering::Release);
        self.lent = self.lent.saturating_sub(1);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed only here; the
        // ring's `Drop` forgets a `BufRing` the kernel may still use.
        unsafe { std::alloc::dealloc(self.entries.cast(), Self::layout()) };
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
    /// A `SENDMSG` is in flight; `left` bytes of the owned send remain.
    InFlight {
        left: usize,
    },
    Failed(i32),
}

/// The send in flight: the buffers the kernel reads, the iovecs over them
/// and the `msghdr` over the iovecs. Lives inside the socket's `Rc`, so its
/// address is stable; touched by us only when no `SENDMSG` is in flight.
struct OwnedSend {
    chunks: Vec<OutChunk>,
    iov: Vec<libc::iovec>,
    /// First iovec not completely sent.
    first: usize,
    msg: libc::msghdr,
    /// The chunks are a private copy ([`SocketIo::send`]): dropped when
    /// sent.
    copied: bool,
    /// Where the connection's pool buffers go back (`None`: the pool).
    account: Option<PoolAccount>,
}

impl OwnedSend {
    fn new() -> OwnedSend {
        OwnedSend {
            chunks: Vec::with_capacity(SEND_IOV),
            iov: Vec::with_capacity(SEND_IOV),
            first: 0,
            // SAFETY: `msghdr` is a C struct of integers and raw pointers,
            // for which all zeroes is a valid (empty) value.
            msg: unsafe { std::mem::zeroed() },
            copied: false,
            account: None,
        }
    }

    /// Add `c` (from byte `skip` on) to the send; returns the bytes added.
    fn add(&mut self, c: OutChunk, skip: usize) -> usize {
        self.chunks.push(c);
        let Some(c) = self.chunks.last() else {
            return 0;
        };
        let Some(rest) = c.data.get(skip..) else {
            return 0;
        };
        if !rest.is_empty() {
            self.iov.push(libc::iovec {
                iov_base: rest.as_ptr().cast_mut().cast(),
                iov_len: rest.len(),
            });
        }
        rest.len()
    }

    /// Point the `msghdr` at the iovecs not yet sent; returns its address.
    fn prepare(&mut self) -> *const libc::msghdr {
        let first = self.first.min(self.iov.len());
        let rest = &mut self.iov[first..];
        self.msg.msg_iov = rest.as_mut_ptr();
        self.msg.msg_iovlen = rest.len() as _;
        &self.msg
    }

    /// `n` more bytes were sent (a short send): skip them.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(v) = self.iov.get_mut(self.first) else {
                return;
            };
            if n < v.iov_len {
                // SAFETY: `n < iov_len`, so the new base stays inside the
                // buffer this iovec covers.
                v.iov_base = unsafe { v.iov_base.cast::<u8>().add(n) }.cast();
                v.iov_len -= n;
                return;
            }
            n -= v.iov_len;
            self.first += 1;
        }
    }
}

struct SockState {
    stream: TcpStream,
    /// Single-shot receive buffer (empty with multishot receive).
    rbuf: RawBuf,
    recv: Cell<RecvState>,
    /// Multishot receive into the ring's provided buffers.
    multi: bool,
    /// Provided buffers received and not yet taken: (id, start, end).
    held: RefCell<VecDeque<(u16, usize, usize)>>,
    /// User data of the armed multishot receive.
    recv_ud: Cell<Option<u64>>,
    /// A cancel of the multishot receive is under way.
    cancelling: Cell<bool>,
    /// Waiting for provided buffers (the receive ended with `ENOBUFS`).
    starved: Cell<bool>,
    /// Its `UringSocket` is gone: received buffers go straight back.
    orphan: Cell<bool>,
    send: Cell<SendState>,
    out: RefCell<OwnedSend>,
    /// Coalescing buffers sent, for the connection to reuse.
    sent: RefCell<Vec<Vec<u8>>>,
    /// The reactor's buffer pool: sent data buffers go back to it.
    pool: Arc<BufferPool>,
    /// Shut down once the send in flight completes.
    shutdown_pending: Cell<bool>,
    shut: Cell<bool>,
}

impl SockState {
    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// The send is over (sent, failed or abandoned) and no `SENDMSG` is in
    /// flight: give its buffers back.
    fn finish_send(&self) {
        let mut o = self.out.borrow_mut();
        let o = &mut *o;
        o.iov.clear();
        o.first = 0;
        o.msg.msg_iov = std::ptr::null_mut();
        o.msg.msg_iovlen = 0;
        let copied = std::mem::replace(&mut o.copied, false);
        let mut sent = self.sent.borrow_mut();
        for c in o.chunks.drain(..) {
            if copied {
                continue;
            }
            if c.inline {
                if sent.len() < SENT_KEEP {
                    sent.push(c.data);
                }
            } else if let Some(a) = &o.account {
                a.put(c.data);
            } else {
                self.pool.put(c.data);
            }
        }
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
    RecvMulti,
    Send,
}

/// Counters of one reactor's socket ring.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct RingCounters {
    pub enters: u64,
    pub completions: u64,
    /// Sends the kernel completed short (the rest was submitted again).
    pub short_sends: u64,
    /// Multishot receives armed (the first per socket included).
    pub recv_arms: u64,
    /// Multishot receives that found the buffer ring empty.
    pub recv_starved: u64,
}

/// One reactor's ring for socket I/O.
pub(crate) struct SockRing {
    ring: IoUring,
    /// In-flight operations by slot: the socket, the kind and the full
    /// user data (the slot index in the low 32 bits, a generation above,
    /// so a late cancel cannot hit a reused slot).
    slots: Vec<Option<(Rc<SockState>, Kind, u64)>>,
    free: Vec<usize>,
    generation: u64,
    /// Provided buffers (`None`: the kernel refused them; single-shot
    /// receives).
    bufs: Option<BufRing>,
    /// Sockets waiting for provided buffers.
    starved: Vec<Rc<SockState>>,
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
        SockRing::build(epfd, true)
    }

    /// [`Self::new`]; `provided_buffers: false` keeps to single-shot
    /// receives (as when the kernel refuses buffer rings).
    fn build(epfd: RawFd, provided_buffers: bool) -> io::Result<SockRing> {
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
        let bufs = match provided_buffers.then(|| BufRing::new(&ring)) {
            None => None,
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                static LOGGED: AtomicBool = AtomicBool::new(false);
                if !LOGGED.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "io_uring provided-buffer ring refused: single-shot socket receives"
                    );
                }
                None
            }
        };
        Ok(SockRing {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            generation: 0,
            bufs,
            starved: Vec::new(),
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
            // `SockState` that the slot table holds (an `Rc`) until the
            // entry's CQE is reaped: its `RawBuf` (a receive), or its
            // `OwnedSend` (a send: the `msghdr`, the iovecs it points to and
            // the heap buffers of the `Vec`s those point into, none of which
            // is moved, resized or freed until the CQE), or into nothing
            // (the epoll poll); see `Drop` for a ring dropped with entries in
            // flight.
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
        self.generation = (self.generation + 1) & 0x7fff_ffff;
        let i = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let ud = (self.generation << 32) | (i as u64 & 0xffff_ffff);
        self.slots[i] = Some((Rc::clone(st), kind, ud));
        ud
    }

    /// Whether this ring receives into provided buffers.
    fn multishot(&self) -> bool {
        self.bufs.is_some()
    }

    fn post_recv_multi(&mut self, st: &Rc<SockState>) {
        let ud = self.slot(st, Kind::RecvMulti);
        st.recv_ud.set(Some(ud));
        self.counters.recv_arms += 1;
        let e = opcode::RecvMulti::new(types::Fd(st.fd()), PBUF_GROUP)
            .build()
            .user_data(ud);
        self.push(&e);
    }

    /// Arm the socket's multishot receive again if it ended and the
    /// connection has taken what it held.
    fn rearm(&mut self, st: &Rc<SockState>) {
        if st.recv_ud.get().is_none()
            && !st.starved.get()
            && !st.shut.get()
            && !st.orphan.get()
            && st.recv.get() == RecvState::InFlight
            && st.held.borrow().len() < HOLD_MAX
        {
            self.post_recv_multi(st);
        }
    }

    /// Give a provided buffer back.
    fn put_buf(&mut self, bid: u16) {
        if let Some(b) = &mut self.bufs {
            b.put(bid);
        }
    }

    fn on_recv_multi(&mut self, st: &Rc<SockState>, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more {
            st.recv_ud.set(None);
            st.cancelling.set(false);
        }
        let bid = cqueue::buffer_select(flags);
        if let (Some(b), Some(_)) = (&mut self.bufs, bid) {
            b.lent += 1;
        }
        if res > 0 {
            let Some(bid) = bid else {
                return;
            };
            if st.orphan.get() {
                self.put_buf(bid);
                return;
            }
            let len = usize::try_from(res).unwrap_or(0).min(PBUF_SIZE);
            let held = {
                let mut h = st.held.borrow_mut();
                h.push_back((bid, 0, len));
                h.len()
            };
            if more && held >= HOLD_MAX && !st.cancelling.get() {
                if let Some(ud) = st.recv_ud.get() {
                    st.cancelling.set(true);
                    let e = opcode::AsyncCancel::new(ud).build().user_data(CANCEL_TOKEN);
                    self.push(&e);
                }
            }
            if !more {
                self.rearm(st);
            }
            return;
        }
        if let Some(bid) = bid {
            self.put_buf(bid);
        }
        if more {
            return;
        }
        if res == 0 {
            st.recv.set(RecvState::Eof);
        } else if res == -libc::ENOBUFS {
            self.counters.recv_starved += 1;
            if !st.starved.replace(true) {
                self.starved.push(Rc::clone(st));
            }
        } else if res == -libc::ECANCELED || would_retry(res) {
            // Ours (a socket holding too much, re-armed when the connection
            // takes it), or try again.
            self.rearm(st);
        } else {
            st.recv.set(RecvState::Failed(-res));
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

    /// Submit the socket's owned send (`left` bytes remain).
    fn post_send(&mut self, st: &Rc<SockState>, left: usize) {
        st.send.set(SendState::InFlight { left });
        let ud = self.slot(st, Kind::Send);
        let msg = st.out.borrow_mut().prepare();
        let e = opcode::SendMsg::new(types::Fd(st.fd()), msg)
            .flags(libc::MSG_NOSIGNAL as u32)
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
            if ud == CANCEL_TOKEN {
                continue;
            }
            let i = usize::try_from(ud & 0xffff_ffff).unwrap_or(usize::MAX);
            let Some(Some((st, kind, slot_ud))) = self.slots.get(i) else {
                continue;
            };
            if *slot_ud != ud {
                continue;
            }
            let (st, kind) = (Rc::clone(st), *kind);
            n += 1;
            if kind == Kind::RecvMulti && cqueue::more(flags) {
                // The multishot receive stays armed (and keeps its slot).
                self.on_recv_multi(&st, res, flags);
                continue;
            }
            self.slots[i] = None;
            self.free.push(i);
            self.in_flight -= 1;
            match kind {
                Kind::RecvMulti => self.on_recv_multi(&st, res, flags),
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
                    let SendState::InFlight { left } = st.send.get() else {
                        continue;
                    };
                    if res >= 0 {
                        let n = usize::try_from(res).unwrap_or(0).min(left);
                        if n < left && !st.shut.get() {
                            // Short send: the rest from where it stopped.
                            st.out.borrow_mut().advance(n);
                            self.counters.short_sends += 1;
                            self.post_send(&st, left - n);
                        } else {
                            st.finish_send();
                            st.send.set(SendState::Idle);
                        }
                    } else if would_retry(res) && !st.shut.get() {
                        self.post_send(&st, left);
                    } else {
                        st.finish_send();
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
        if !self.starved.is_empty()
            && self
                .bufs
                .as_ref()
                .is_some_and(|b| b.lent < usize::from(PBUF_COUNT))
        {
            // The kernel has buffers again: the sockets that found none
            // try again.
            for st in std::mem::take(&mut self.starved) {
                st.starved.set(false);
                self.rearm(&st);
            }
        }
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
        for (st, ..) in self.slots.iter().flatten() {
            st.shutdown_now();
        }
        self.starved.clear();
        for _ in 0..200 {
            if self.in_flight == 0 {
                if self.bufs.take().is_some() {
                    let _ = self.ring.submitter().unregister_buf_ring(PBUF_GROUP);
                }
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
        if let Some(b) = self.bufs.take() {
            std::mem::forget(b);
        }
    }
}

/// A TCP stream whose I/O goes through its reactor's io_uring.
pub struct UringSocket {
    st: Rc<SockState>,
    ring: Rc<RefCell<SockRing>>,
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
        Ok(UringSocket::with_ring(
            stream,
            ring,
            Arc::clone(cx.buffer_pool()),
        ))
    }

    fn with_ring(
        stream: TcpStream,
        ring: Rc<RefCell<SockRing>>,
        pool: Arc<BufferPool>,
    ) -> UringSocket {
        let multi = ring.borrow().multishot();
        let st = Rc::new(SockState {
            stream,
            rbuf: RawBuf::new(if multi { 0 } else { RECV_BUF }),
            recv: Cell::new(RecvState::InFlight),
            multi,
            held: RefCell::new(VecDeque::new()),
            recv_ud: Cell::new(None),
            cancelling: Cell::new(false),
            starved: Cell::new(false),
            orphan: Cell::new(false),
            send: Cell::new(SendState::Idle),
            out: RefCell::new(OwnedSend::new()),
            sent: RefCell::new(Vec::new()),
            pool,
            shutdown_pending: Cell::new(false),
            shut: Cell::new(false),
        });
        if multi {
            ring.borrow_mut().post_recv_multi(&st);
        } else {
            ring.borrow_mut().post_recv(&st);
        }
        UringSocket { st, ring }
    }

    /// The stream.
    pub fn stream(&self) -> &TcpStream {
        &self.st.stream
    }

    /// [`SocketIo::recv`] with multishot receive: copy from the held
    /// provided buffers, giving each back once emptied.
    fn recv_multi(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let mut ring = self.ring.borrow_mut();
        let mut copied = 0;
        {
            let mut held = self.st.held.borrow_mut();
            while let Some(&mut (bid, ref mut start, end)) = held.front_mut() {
                let room = buf.capacity() - buf.len();
                if room == 0 {
                    break;
                }
                let n = room.min(end - *start);
                let Some(b) = &ring.bufs else {
                    break;
                };
                // SAFETY: the kernel filled bytes `0..end` of buffer `bid`
                // and handed it to us (its CQE); it is not given back (so
                // not written) until below, and `start + n <= end <=
                // PBUF_SIZE`.
                let src = unsafe { std::slice::from_raw_parts(b.buf(bid).add(*start), n) };
                buf.extend_from_slice(src);
                copied += n;
                *start += n;
                if *start == end {
                    held.pop_front();
                    ring.put_buf(bid);
                }
            }
        }
        ring.rearm(&self.st);
        if copied > 0 {
            return Ok(copied);
        }
        match self.st.recv.get() {
            RecvState::Eof => Ok(0),
            RecvState::Failed(e) => Err(errno(e)),
            RecvState::InFlight | RecvState::Ready { .. } => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Whether a send may start now.
    fn check_send(&self) -> io::Result<()> {
        match self.st.send.get() {
            SendState::InFlight { .. } => Err(io::ErrorKind::WouldBlock.into()),
            SendState::Failed(e) => Err(errno(e)),
            SendState::Idle if self.st.shut.get() || self.st.shutdown_pending.get() => {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            SendState::Idle => Ok(()),
        }
    }

    /// Move buffers from the front of `chunks` into the socket's owned send
    /// and submit one `SENDMSG` over them (`copied`: they are a private
    /// copy, dropped when sent). The send state is `Idle`.
    fn start_send(
        &mut self,
        chunks: &mut VecDeque<OutChunk>,
        head: usize,
        account: Option<&PoolAccount>,
        copied: bool,
    ) -> io::Result<usize> {
        let total = {
            let mut o = self.st.out.borrow_mut();
            o.copied = copied;
            if o.account.is_none() {
                o.account = account.cloned();
            }
            let mut total = 0;
            let mut skip = head;
            while o.chunks.len() < SEND_IOV && total < SEND_BATCH {
                let Some(c) = chunks.pop_front() else {
                    break;
                };
                total += o.add(c, skip);
                skip = 0;
            }
            total
        };
        if total > 0 {
            self.ring.borrow_mut().post_send(&self.st, total);
        } else {
            self.st.finish_send();
        }
        Ok(total)
    }
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl SocketIo for UringSocket {
    fn may_recv(&self) -> bool {
        !matches!(self.st.recv.get(), RecvState::InFlight) || !self.st.held.borrow().is_empty()
    }

    fn may_send(&self) -> bool {
        !matches!(self.st.send.get(), SendState::InFlight { .. })
    }

    fn recv(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let room = buf.capacity() - buf.len();
        if room == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no room"));
        }
        if self.st.multi {
            return self.recv_multi(buf);
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
        // A private copy of the gather list, sent as an owned send (the
        // connection uses `send_owned`; this serves other callers).
        self.check_send()?;
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut v = Vec::with_capacity(total.min(SEND_BATCH));
        for b in bufs {
            let n = b.len().min(SEND_BATCH - v.len());
            v.extend_from_slice(&b[..n]);
        }
        let mut q = VecDeque::from([OutChunk {
            data: v,
            inline: true,
        }]);
        self.start_send(&mut q, 0, None, true)
    }

    const OWNED_SENDS: bool = true;

    fn send_owned(
        &mut self,
        chunks: &mut VecDeque<OutChunk>,
        head: usize,
        account: Option<&PoolAccount>,
    ) -> io::Result<usize> {
        self.check_send()?;
        self.start_send(chunks, head, account, false)
    }

    fn reclaim(&mut self, mut f: impl FnMut(Vec<u8>)) {
        let mut sent = self.st.sent.borrow_mut();
        for v in sent.drain(..) {
            f(v);
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
        // Provided buffers go back now, and as they arrive from here on.
        self.st.orphan.set(true);
        let held = std::mem::take(&mut *self.st.held.borrow_mut());
        if let Ok(mut ring) = self.ring.try_borrow_mut() {
            for (bid, ..) in held {
                ring.put_buf(bid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::os::fd::AsRawFd as _;
    use std::thread;

    use socket2::SockRef;

    use super::*;
    use crate::buffer_pool::BufferPoolConfig;

    struct Rig {
        ring: Rc<RefCell<SockRing>>,
        pool: Arc<BufferPool>,
        // The ring's multishot poll watches it: it outlives the ring.
        _epfd: std::os::fd::OwnedFd,
    }

    fn rig() -> Rig {
        rig_with(true)
    }

    fn rig_with(provided_buffers: bool) -> Rig {
        let epfd = rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)
            .expect("epoll");
        let ring = SockRing::build(epfd.as_raw_fd(), provided_buffers).expect("io_uring");
        Rig {
            ring: Rc::new(RefCell::new(ring)),
            pool: Arc::new(BufferPool::new(&BufferPoolConfig::default())),
            _epfd: epfd,
        }
    }

    /// A connected loopback pair: (server side, non-blocking; client side).
    fn pair(send_buffer: Option<usize>) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let c = TcpStream::connect(l.local_addr().expect("addr")).expect("connect");
        let (s, _) = l.accept().expect("accept");
        if let Some(n) = send_buffer {
            SockRef::from(&s)
                .set_send_buffer_size(n)
                .expect("SO_SNDBUF");
            SockRef::from(&c)
                .set_recv_buffer_size(n)
                .expect("SO_RCVBUF");
        }
        s.set_nonblocking(true).expect("nonblocking");
        (s, c)
    }

    fn pattern(seed: usize, len: usize) -> Vec<u8> {
        (0..len)
            .map(|i| (i * 131 + seed * 17).to_le_bytes()[0])
            .collect()
    }

    /// Reap and submit until `done` holds (bounded).
    fn drive(ring: &Rc<RefCell<SockRing>>, mut done: impl FnMut() -> bool) {
        let until = std::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(std::time::Instant::now() < until, "timed out");
            let mut r = ring.borrow_mut();
            r.reap();
            r.flush();
            r.wait(Some(Duration::from_millis(5)));
            r.reap();
        }
    }

    #[test]
    fn owned_send_of_many_buffers_survives_short_sends_in_order() {
        let rig = rig();
        // Small socket buffers and a slow reader: the kernel takes the send
        // in pieces, so the rest is submitted again (short sends).
        let (s, mut c) = pair(Some(16 << 10));
        let mut sock = UringSocket::with_ring(s, Rc::clone(&rig.ring), Arc::clone(&rig.pool));

        // 40 buffers: pool data buffers of several sizes between small
        // coalescing buffers, like responses with data and status.
        let mut chunks = VecDeque::new();
        let mut expect = Vec::new();
        for i in 0..40 {
            let hdr = pattern(i, 48 + i);
            expect.extend_from_slice(&hdr);
            chunks.push_back(OutChunk {
                data: hdr,
                inline: true,
            });
            let n = [4096, 65_000, 1, 20_000][i % 4];
            let mut data = rig.pool.get(n).expect("pool");
            data.extend_from_slice(&pattern(1000 + i, n));
            expect.extend_from_slice(&data);
            chunks.push_back(OutChunk {
                data,
                inline: false,
            });
        }
        // Sent from byte 5 of the first buffer on (a partly sent head).
        let expect = expect.split_off(5);
        let total = expect.len();
        assert!(rig.pool.stats().in_use_bytes > 0);

        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 3000];
            while got.len() < total {
                let n = c.read(&mut buf).expect("read");
                assert!(n > 0, "EOF after {} of {total} bytes", got.len());
                got.extend_from_slice(&buf[..n]);
                if got.len() < 200_000 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            got
        });

        assert!(sock.may_send());
        let n = sock.send_owned(&mut chunks, 5, None).expect("send");
        assert_eq!(chunks.len(), 80 - SEND_IOV, "one SENDMSG takes 64 buffers");
        assert!(!sock.may_send());
        assert_eq!(
            sock.send_owned(&mut chunks, 0, None).map_err(|e| e.kind()),
            Err(io::ErrorKind::WouldBlock)
        );
        drive(&rig.ring, || sock.may_send());
        let m = sock.send_owned(&mut chunks, 0, None).expect("send");
        assert!(chunks.is_empty());
        assert_eq!(n + m, total);
        drive(&rig.ring, || sock.may_send());
        let got = reader.join().expect("reader");
        assert!(got == expect, "bytes arrive intact and in order");
        assert!(
            rig.ring.borrow().counters.short_sends > 0,
            "the kernel took the send in pieces"
        );
        // Data buffers went back to the pool, coalescing buffers come back
        // for reuse.
        assert_eq!(rig.pool.stats().in_use_bytes, 0);
        let mut back = 0;
        sock.reclaim(|_| back += 1);
        assert_eq!(back, SENT_KEEP.min(40), "sent coalescing buffers kept");
        drop(sock);
    }

    #[test]
    fn borrowed_send_is_copied_and_shutdown_waits_for_it() {
        let rig = rig();
        let (s, mut c) = pair(None);
        let mut sock = UringSocket::with_ring(s, Rc::clone(&rig.ring), Arc::clone(&rig.pool));
        let a = pattern(1, 100_000);
        let b = pattern(2, 3);
        let n = sock
            .send(&[IoSlice::new(&a), IoSlice::new(&b)])
            .expect("send");
        assert_eq!(n, a.len() + b.len());
        // Shut down (and dropped) with the send in flight: it still leaves,
        // then the peer sees EOF.
        drop(sock);
        let ring = Rc::clone(&rig.ring);
        let reader = thread::spawn(move || {
            let mut got = Vec::new();
            c.read_to_end(&mut got).expect("read");
            got
        });
        drive(&ring, || ring.borrow().in_flight == 0);
        let got = reader.join().expect("reader");
        assert_eq!(got.len(), a.len() + b.len());
        assert!(got[..a.len()] == a[..] && got[a.len()..] == b[..]);
    }

    fn lent(ring: &Rc<RefCell<SockRing>>) -> usize {
        ring.borrow().bufs.as_ref().map_or(0, |b| b.lent)
    }

    /// Take what the socket has into `got` (as a connection would).
    fn take(sock: &mut UringSocket, got: &mut Vec<u8>) -> bool {
        let mut eof = false;
        while sock.may_recv() {
            let mut buf = Vec::with_capacity(64 << 10);
            match sock.recv(&mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(_) => got.extend_from_slice(&buf),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("recv: {e}"),
            }
        }
        eof
    }

    #[test]
    fn multishot_receive_delivers_many_small_messages_in_order_armed_once() {
        many_small_messages_arrive_in_order(true);
    }

    #[test]
    fn single_shot_receive_delivers_many_small_messages_in_order() {
        many_small_messages_arrive_in_order(false);
    }

    fn many_small_messages_arrive_in_order(multishot: bool) {
        let rig = rig_with(multishot);
        assert_eq!(
            rig.ring.borrow().multishot(),
            multishot,
            "this kernel takes buf rings"
        );
        let (s, mut c) = pair(None);
        let mut sock = UringSocket::with_ring(s, Rc::clone(&rig.ring), Arc::clone(&rig.pool));
        let msgs: Vec<Vec<u8>> = (0..3000).map(|i| pattern(i, 1 + i % 13)).collect();
        let expect: Vec<u8> = msgs.concat();
        let writer = thread::spawn(move || {
            for (i, m) in msgs.iter().enumerate() {
                c.write_all(m).expect("write");
                if i % 100 == 0 {
                    thread::sleep(Duration::from_millis(1));
                }
            }
            c.shutdown(Shutdown::Write).expect("shutdown");
            c
        });
        let mut got = Vec::new();
        let mut eof = false;
        drive(&rig.ring, || {
            eof |= take(&mut sock, &mut got);
            eof
        });
        let _c = writer.join().expect("writer");
        assert!(
            got == expect,
            "{} of {} bytes, in order",
            got.len(),
            expect.len()
        );
        if multishot {
            assert_eq!(
                rig.ring.borrow().counters.recv_arms,
                1,
                "one multishot receive for the whole stream"
            );
            assert_eq!(lent(&rig.ring), 0, "every provided buffer went back");
        }
    }

    #[test]
    fn multishot_receive_of_a_socket_that_is_not_read_is_bounded() {
        let rig = rig();
        let (s, mut c) = pair(None);
        let mut sock = UringSocket::with_ring(s, Rc::clone(&rig.ring), Arc::clone(&rig.pool));
        // A peer that sends 8 MiB while the connection takes nothing.
        let total = 8 << 20;
        let writer = thread::spawn(move || {
            let data = pattern(9, total);
            for piece in data.chunks(16 << 10) {
                c.write_all(piece).expect("write");
            }
            c
        });
        drive(&rig.ring, || sock.st.held.borrow().len() >= HOLD_MAX);
        // The cancel takes effect (what arrived before it is held too),
        // then nothing more is taken from the socket.
        drive(&rig.ring, || sock.st.recv_ud.get().is_none());
        let held = sock.st.held.borrow().len();
        let until = std::time::Instant::now() + Duration::from_millis(100);
        drive(&rig.ring, || std::time::Instant::now() > until);
        assert_eq!(
            sock.st.held.borrow().len(),
            held,
            "no receive while it holds"
        );
        assert!(
            held <= 2 * HOLD_MAX,
            "held {held}: the receive was cancelled at {HOLD_MAX}"
        );
        assert!(sock.st.recv_ud.get().is_none(), "not armed while it holds");
        // Now taken: armed again, everything arrives in order.
        let mut got = Vec::new();
        drive(&rig.ring, || {
            take(&mut sock, &mut got);
            got.len() >= total
        });
        let _c = writer.join().expect("writer");
        assert!(got == pattern(9, total));
        assert!(rig.ring.borrow().counters.recv_arms > 1);
        // Dropped while holding buffers: they go back.
        drop(_c);
        drive(&rig.ring, || sock.may_recv());
        drop(sock);
        drive(&rig.ring, || rig.ring.borrow().in_flight == 0);
        assert_eq!(lent(&rig.ring), 0, "every provided buffer went back");
    }

    #[test]
    fn sockets_that_find_the_buffer_ring_empty_are_armed_again() {
        let rig = rig();
        // Nine flooding peers whose connections take nothing: at up to
        // HOLD_MAX (plus a few in flight) buffers each, eight nearly drain
        // the ring, the ninth finds it empty.
        let per = 2 << 20;
        let mut socks = Vec::new();
        let mut writers = Vec::new();
        for i in 0..9 {
            let (s, mut c) = pair(None);
            socks.push(UringSocket::with_ring(
                s,
                Rc::clone(&rig.ring),
                Arc::clone(&rig.pool),
            ));
            writers.push(thread::spawn(move || {
                c.write_all(&pattern(i, per)).expect("write");
                c
            }));
        }
        drive(&rig.ring, || rig.ring.borrow().counters.recv_starved > 0);
        // Let more arrive; then read every socket to the end.
        let until = std::time::Instant::now() + Duration::from_millis(50);
        drive(&rig.ring, || std::time::Instant::now() > until);
        let mut got: Vec<Vec<u8>> = vec![Vec::new(); socks.len()];
        drive(&rig.ring, || {
            for (s, g) in socks.iter_mut().zip(&mut got) {
                take(s, g);
            }
            got.iter().all(|g| g.len() >= per)
        });
        for (i, g) in got.iter().enumerate() {
            assert!(*g == pattern(i, per), "socket {i}");
        }
        for w in writers {
            drop(w.join().expect("writer"));
        }
        drop(socks);
        drive(&rig.ring, || rig.ring.borrow().in_flight == 0);
        assert_eq!(lent(&rig.ring), 0, "every provided buffer went back");
    }
}
