//! The io_uring backend: each handle owns a ring; a durable write is one
//! linked writev+fdatasync chain (with inline WAL writes, the handle sends
//! durable writes through group commit instead); the flusher reads
//! and syncs through its own ring and writes its write-back itself.
//!
//! WAL writes without a linked sync are coalesced: they wait in a list until
//! the handle hands its queue to the kernel (once per poll), and records
//! that lie back to back in the WAL go out as one `writev` (up to
//! [`GROUP_MAX`] records). On a buffered file system that cannot write
//! without blocking (ext4), every write SQE is executed by an io-wq worker;
//! one SQE per burst instead of one per record saves the hand-offs and the
//! workers' contention on the inode lock. A group completes its records
//! together, with the group's result.
//!
//! This is the engine's one `unsafe` module: pushing an SQE hands the kernel
//! raw pointers into buffers that must stay put until the CQE is reaped. The
//! buffers live in heap allocations owned by the in-flight table and are only
//! released after their last CQE (or leaked if the ring is dropped with
//! operations still in flight).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, squeue, types, IoUring};

use super::{record_slices, FlushIo, IoDone, IoOp};
use crate::storage::Fds;

/// Whether io_uring can be set up here (kernel support, seccomp, limits).
pub(crate) fn probe() -> io::Result<()> {
    IoUring::new(8).map(|_| ())
}

struct InFlight {
    token: u64,
    op: IoOp,
    /// iovecs of the (up to two) writev SQEs, two each.
    iov: Box<[libc::iovec; 4]>,
    /// Expected result of each SQE.
    expect: Vec<i32>,
    remaining: u32,
    err: Option<io::Error>,
}

/// Per-handle ring.
pub(crate) struct UringExec {
    ring: IoUring,
    fds: Fds,
    slots: Vec<Option<InFlight>>,
    free: Vec<usize>,
    sqes_in_flight: usize,
    /// Per-operation vectors of finished operations, reused (no allocation
    /// per I/O in steady state).
    spare: Vec<(Vec<i32>, Box<[libc::iovec; 4]>)>,
    /// Member and iovec lists of finished groups, reused.
    group_spare: Vec<(Vec<usize>, Vec<libc::iovec>)>,
    sqes: Vec<squeue::Entry>,
    unsubmitted: bool,
    /// Slots of WAL writes waiting to be coalesced, in submission order.
    pending: Vec<usize>,
    groups: Vec<Option<Group>>,
    free_groups: Vec<usize>,
    /// Writes that went out in a group of two or more, and the groups.
    pub coalesced_writes: u64,
    pub coalesced_groups: u64,
    /// Write WAL records without a sync on the calling thread when the page
    /// cache takes them without throttling (`dirty_guard`).
    inline: bool,
    /// WAL writes written inline since the last [`UringExec::take_inline`].
    inline_writes: u64,
    cqes: Vec<(u64, i32)>,
}

/// SQE index bits in the user data (the slot is above them).
const IDX_BITS: u32 = 20;
/// User-data bit of a coalesced group's SQE (the group index is below it).
const GROUP_BIT: u64 = 1 << 63;
/// Records per coalesced write at most (two iovecs each, well under
/// `IOV_MAX`).
pub(crate) const GROUP_MAX: usize = 64;

/// A coalesced WAL write: its records' slots and the gather list.
struct Group {
    members: Vec<usize>,
    iov: Vec<libc::iovec>,
    expect: i32,
}

fn short(expected: i32, got: i32) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("short transfer: {got} of {expected} bytes"),
    )
}

fn to_i32(v: u64) -> io::Result<i32> {
    i32::try_from(v).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// Write `iov` (`len` bytes) at `off` of `fd` on the calling thread, a
/// buffered write into the page cache, when `dirty_guard` says the kernel
/// will not throttle it. `false`: not tried, or short or failed (the caller
/// then writes it all through the ring, which reports the error).
fn write_inline(fd: RawFd, iov: &[libc::iovec], off: u64, len: u64) -> bool {
    if !super::dirty_guard::inline_ok() {
        return false;
    }
    let (Ok(cnt), Ok(off)) = (i32::try_from(iov.len()), i64::try_from(off)) else {
        return false;
    };
    // SAFETY: every iovec points into a buffer owned by an in-flight slot
    // (header box, data buffer) that lives at least until this call
    // returns; the kernel only reads them.
    let r = unsafe { libc::pwritev(fd, iov.as_ptr(), cnt, off) };
    u64::try_from(r).is_ok_and(|n| n == len)
}

impl UringExec {
    pub fn new(fds: Fds, entries: u32, notify_fd: RawFd, inline: bool) -> io::Result<UringExec> {
        let ring = IoUring::new(entries)?;
        ring.submitter().register_eventfd(notify_fd)?;
        Ok(UringExec {
            ring,
            fds,
            slots: Vec::new(),
            free: Vec::new(),
            sqes_in_flight: 0,
            spare: Vec::new(),
            group_spare: Vec::new(),
            sqes: Vec::new(),
            unsubmitted: false,
            pending: Vec::new(),
            groups: Vec::new(),
            free_groups: Vec::new(),
            coalesced_writes: 0,
            coalesced_groups: 0,
            inline,
            inline_writes: 0,
            cqes: Vec::new(),
        })
    }

    /// WAL writes written inline since the last call.
    pub fn take_inline(&mut self) -> u64 {
        std::mem::take(&mut self.inline_writes)
    }

    /// A WAL write that can wait to be coalesced: one piece (no wrap), no
    /// linked sync.
    fn coalescable(op: &IoOp) -> bool {
        matches!(op, IoOp::WalWrite { pieces, sync: false, .. } if pieces[1].1 == 0 && pieces[0].1 > 0)
    }

    /// File offset and length of a coalescable write.
    fn extent(&self, slot: usize) -> Option<(RawFd, u64, u64)> {
        match self.slots.get(slot)?.as_ref().map(|f| &f.op)? {
            IoOp::WalWrite { pieces, .. } => {
                let (fd, off) = self.fds.route(pieces[0].0);
                Some((fd, off, pieces[0].1))
            }
            IoOp::Read { .. } => None,
        }
    }

    /// Turn the waiting WAL writes into SQEs: back-to-back records share
    /// one `writev`.
    fn coalesce(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        let mut i = 0;
        while i < pending.len() {
            let Some((fd, start, len)) = self.extent(pending[i]) else {
                i += 1;
                continue;
            };
            let mut end = start + len;
            let mut j = i + 1;
            while j < pending.len() && j - i < GROUP_MAX {
                match self.extent(pending[j]) {
                    Some((f, o, l))
                        if f == fd && o == end && end + l - start <= i32::MAX as u64 =>
                    {
                        end += l;
                        j += 1;
                    }
                    _ => break,
                }
            }
            if j - i == 1 {
                self.push_single(pending[i], fd, start, len);
            } else {
                self.push_group(&pending[i..j], fd, start, end - start);
            }
            i = j;
        }
        self.pending = pending;
        self.pending.clear();
    }

    /// One record alone: a writev of its header and data.
    fn push_single(&mut self, slot: usize, fd: RawFd, off: u64, len: u64) {
        let Some(fl) = self.slots[slot].as_mut() else {
            return;
        };
        let IoOp::WalWrite { hdr, data, .. } = &fl.op else {
            return;
        };
        let (slices, cnt) = record_slices(hdr, data, 0, usize::try_from(len).unwrap_or(0));
        for (j, sl) in slices[..cnt].iter().enumerate() {
            fl.iov[j] = libc::iovec {
                iov_base: sl.as_ptr() as *mut libc::c_void,
                iov_len: sl.len(),
            };
        }
        let ud = (slot as u64) << IDX_BITS;
        if self.inline && write_inline(fd, &fl.iov[..cnt], off, len) {
            // Done; a no-op completes it in order with the rest.
            fl.expect[0] = 0;
            self.inline_writes += 1;
            self.push_sqe(&opcode::Nop::new().build().user_data(ud));
            return;
        }
        fl.expect[0] = i32::try_from(len).unwrap_or(i32::MAX);
        let e = opcode::Writev::new(
            types::Fd(fd),
            fl.iov.as_ptr(),
            u32::try_from(cnt).unwrap_or(1),
        )
        .offset(off)
        .build()
        .user_data(ud);
        self.push_sqe(&e);
    }

    /// Records back to back: one writev of every header and data.
    fn push_group(&mut self, members: &[usize], fd: RawFd, off: u64, len: u64) {
        let (mut group_members, mut iov) = self.group_spare.pop().unwrap_or_default();
        group_members.clear();
        group_members.extend_from_slice(members);
        iov.clear();
        for &m in members {
            let Some(fl) = self.slots[m].as_ref() else {
                continue;
            };
            let IoOp::WalWrite {
                hdr, data, pieces, ..
            } = &fl.op
            else {
                continue;
            };
            let n = usize::try_from(pieces[0].1).unwrap_or(0);
            let (slices, cnt) = record_slices(hdr, data, 0, n);
            for sl in &slices[..cnt] {
                iov.push(libc::iovec {
                    iov_base: sl.as_ptr() as *mut libc::c_void,
                    iov_len: sl.len(),
                });
            }
        }
        let gi = self.free_groups.pop().unwrap_or_else(|| {
            self.groups.push(None);
            self.groups.len() - 1
        });
        let done = self.inline && write_inline(fd, &iov, off, len);
        let g = Group {
            members: group_members,
            iov,
            expect: if done {
                0
            } else {
                i32::try_from(len).unwrap_or(i32::MAX)
            },
        };
        let e = if done {
            // Done; a no-op completes the group in order with the rest.
            self.inline_writes += members.len() as u64;
            opcode::Nop::new().build()
        } else {
            opcode::Writev::new(
                types::Fd(fd),
                g.iov.as_ptr(),
                u32::try_from(g.iov.len()).unwrap_or(0),
            )
            .offset(off)
            .build()
        }
        .user_data(GROUP_BIT | gi as u64);
        self.groups[gi] = Some(g);
        self.coalesced_writes += members.len() as u64;
        self.coalesced_groups += 1;
        self.push_sqe(&e);
    }

    fn push_sqe(&mut self, e: &squeue::Entry) {
        loop {
            // SAFETY: every pointer in `e` (iovecs, header, data and read
            // buffers) points into heap allocations owned by an in-flight
            // slot or group (`self.slots`, `self.groups`), which stays in
            // place until the SQE's CQE is reaped in `poll` (or is leaked in
            // `Drop`).
            let pushed = unsafe { self.ring.submission().push(e) };
            if pushed.is_ok() {
                break;
            }
            // Submission queue full: hand what is queued to the kernel.
            if let Err(err) = self.ring.submit() {
                tracing::warn!("io_uring submit failed: {err}");
            }
        }
        self.unsubmitted = true;
    }

    /// Account one CQE of slot `slot`, SQE `idx`; a finished operation goes
    /// to `out`.
    fn complete_sqe(&mut self, slot: usize, res: i32, want: Option<i32>, out: &mut Vec<IoDone>) {
        let Some(Some(fl)) = self.slots.get_mut(slot) else {
            return;
        };
        if fl.err.is_none() {
            if res < 0 {
                fl.err = Some(io::Error::from_raw_os_error(-res));
            } else if want.is_some_and(|w| res != w) {
                fl.err = Some(short(want.unwrap_or(0), res));
            }
        }
        fl.remaining -= 1;
        if fl.remaining == 0 {
            if let Some(fl) = self.slots[slot].take() {
                self.free.push(slot);
                self.spare.push((fl.expect, fl.iov));
                out.push(IoDone {
                    token: fl.token,
                    result: fl.err.map_or(Ok(()), Err),
                    op: fl.op,
                });
            }
        }
    }

    fn sqes_for(op: &IoOp) -> usize {
        match op {
            IoOp::WalWrite { pieces, sync, .. } => {
                pieces.iter().filter(|p| p.1 > 0).count() + usize::from(*sync)
            }
            IoOp::Read { segs, .. } => segs.len(),
        }
    }

    /// Queue `op`. More SQEs than the ring holds are fine: a full
    /// submission queue is handed to the kernel and refilled, and the kernel
    /// keeps completions that overflow the completion queue (NODROP).
    pub fn submit(&mut self, token: u64, op: IoOp) -> Result<(), (IoOp, io::Error)> {
        let n = Self::sqes_for(&op);
        if n >= 1 << IDX_BITS {
            return Err((op, io::Error::from(io::ErrorKind::InvalidInput)));
        }
        let (mut expect, iov) = self.spare.pop().unwrap_or_else(|| {
            (
                Vec::new(),
                Box::new(
                    [libc::iovec {
                        iov_base: std::ptr::null_mut(),
                        iov_len: 0,
                    }; 4],
                ),
            )
        });
        expect.clear();
        expect.resize(n, 0);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let mut fl = InFlight {
            token,
            op,
            iov,
            expect,
            remaining: 0,
            err: None,
        };
        if Self::coalescable(&fl.op) {
            // Built in `coalesce` when the queue goes to the kernel.
            fl.remaining = 1;
            self.slots[slot] = Some(fl);
            self.sqes_in_flight += 1;
            self.pending.push(slot);
            return Ok(());
        }
        let fds = self.fds;
        let mut sqes = std::mem::take(&mut self.sqes);
        sqes.clear();
        let ud = |i: usize| ((slot as u64) << IDX_BITS) | i as u64;
        match &mut fl.op {
            IoOp::WalWrite {
                hdr,
                data,
                pieces,
                sync,
            } => {
                let mut start = 0usize;
                for (pi, &(off, len)) in pieces.iter().enumerate() {
                    if len == 0 {
                        continue;
                    }
                    let Ok(len_us) = usize::try_from(len) else {
                        return Err((fl.op, io::Error::from(io::ErrorKind::InvalidInput)));
                    };
                    let (slices, cnt) = record_slices(hdr, data, start, len_us);
                    for (j, s) in slices[..cnt].iter().enumerate() {
                        fl.iov[pi * 2 + j] = libc::iovec {
                            iov_base: s.as_ptr() as *mut libc::c_void,
                            iov_len: s.len(),
                        };
                    }
                    let i = sqes.len();
                    match to_i32(len) {
                        Ok(v) => fl.expect[i] = v,
                        Err(e) => return Err((fl.op, e)),
                    }
                    let (wfd, woff) = fds.route(off);
                    let iovcnt = if cnt == 2 { 2 } else { 1 };
                    let e = opcode::Writev::new(types::Fd(wfd), fl.iov[pi * 2..].as_ptr(), iovcnt)
                        .offset(woff)
                        .build()
                        .user_data(ud(i));
                    sqes.push(e);
                    start += len_us;
                }
                if *sync {
                    if let Some(last) = sqes.pop() {
                        sqes.push(last.flags(squeue::Flags::IO_LINK));
                    }
                    let i = sqes.len();
                    fl.expect[i] = 0;
                    // The WAL lives in the meta file: only it needs syncing.
                    sqes.push(
                        opcode::Fsync::new(types::Fd(fds.meta))
                            .flags(types::FsyncFlags::DATASYNC)
                            .build()
                            .user_data(ud(i)),
                    );
                }
            }
            IoOp::Read { buf, segs } => {
                for (i, s) in segs.iter().enumerate() {
                    let Ok(len) = u32::try_from(s.len) else {
                        return Err((fl.op, io::Error::from(io::ErrorKind::InvalidInput)));
                    };
                    fl.expect[i] = i32::try_from(len).unwrap_or(i32::MAX);
                    let ptr = buf[s.buf_off..s.buf_off + s.len].as_mut_ptr();
                    let (rfd, roff) = fds.route(s.file_off);
                    sqes.push(
                        opcode::Read::new(types::Fd(rfd), ptr, len)
                            .offset(roff)
                            .build()
                            .user_data(ud(i)),
                    );
                }
            }
        }
        fl.remaining = u32::try_from(sqes.len()).unwrap_or(u32::MAX);
        self.slots[slot] = Some(fl);
        self.sqes_in_flight += sqes.len();
        for e in sqes.drain(..) {
            self.push_sqe(&e);
        }
        self.sqes = sqes;
        Ok(())
    }

    /// Hand queued SQEs to the kernel: one system call for everything
    /// submitted since the last flush (the handle flushes when it polls or
    /// waits).
    pub fn flush(&mut self) {
        self.coalesce();
        if self.unsubmitted {
            match self.ring.submit() {
                Ok(_) => self.unsubmitted = false,
                // The SQEs stay queued and go out with the next flush.
                Err(err) => tracing::warn!("io_uring submit failed: {err}"),
            }
        }
    }

    /// Reap completions; finished operations go to `out`.
    pub fn poll(&mut self, out: &mut Vec<IoDone>) {
        self.flush();
        let mut cq = self.ring.completion();
        cq.sync();
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(cq.map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            if ud & GROUP_BIT != 0 {
                let Some(g) = usize::try_from(ud & !GROUP_BIT).ok().and_then(|gi| {
                    self.groups
                        .get_mut(gi)
                        .and_then(Option::take)
                        .map(|g| (gi, g))
                }) else {
                    continue;
                };
                let (gi, g) = g;
                self.free_groups.push(gi);
                for &m in &g.members {
                    self.sqes_in_flight -= 1;
                    self.complete_sqe(m, res, Some(g.expect), out);
                }
                self.group_spare.push((g.members, g.iov));
                continue;
            }
            let Ok(slot) = usize::try_from(ud >> IDX_BITS) else {
                continue;
            };
            let Ok(idx) = usize::try_from(ud & ((1 << IDX_BITS) - 1)) else {
                continue;
            };
            let Some(Some(fl)) = self.slots.get(slot) else {
                continue;
            };
            let want = fl.expect.get(idx).copied();
            self.sqes_in_flight -= 1;
            self.complete_sqe(slot, res, want, out);
        }
        cqes.clear();
        self.cqes = cqes;
    }

    /// Coalescing counters since the last call: (writes, groups).
    pub fn take_coalesced(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.coalesced_writes),
            std::mem::take(&mut self.coalesced_groups),
        )
    }

    /// Whether completions are waiting in the completion queue.
    pub fn has_completions(&mut self) -> bool {
        let mut cq = self.ring.completion();
        cq.sync();
        !cq.is_empty()
    }

    /// Operations still in the kernel.
    pub fn in_flight(&self) -> usize {
        self.sqes_in_flight
    }
}

impl Drop for UringExec {
    fn drop(&mut self) {
        // Wait (bounded) for the kernel to finish with our buffers.
        let mut out = Vec::new();
        for _ in 0..1000 {
            if self.sqes_in_flight == 0 {
                return;
            }
            let _ = self.ring.submitter().submit_with_args(
                1,
                &types::SubmitArgs::new().timespec(&types::Timespec::new().nsec(10_000_000)),
            );
            self.poll(&mut out);
        }
        // Still in flight: the kernel may write into these buffers later, so
        // they must never be freed (nor the gather lists it reads).
        for s in self.slots.drain(..).flatten() {
            std::mem::forget(s);
        }
        for g in self.groups.drain(..).flatten() {
            std::mem::forget(g);
        }
    }
}

/// Flusher I/O: reads, hole punches and the sync on a private ring; the
/// extent writes by the flusher thread itself (see `write_batch`).
pub(crate) struct UringFlushIo {
    ring: IoUring,
    fds: Fds,
    storage: std::sync::Arc<dyn crate::storage::Storage>,
}

impl UringFlushIo {
    pub fn new(
        fds: Fds,
        entries: u32,
        storage: std::sync::Arc<dyn crate::storage::Storage>,
    ) -> io::Result<UringFlushIo> {
        Ok(UringFlushIo {
            ring: IoUring::new(entries)?,
            fds,
            storage,
        })
    }

    /// Submit prepared entries and wait for all; each must return `expect`.
    fn run(&mut self, entries: &[(squeue::Entry, i32)]) -> io::Result<()> {
        let cap = self.ring.params().sq_entries() as usize;
        let mut first_err = None;
        for chunk in entries.chunks(cap) {
            for (i, (e, _)) in chunk.iter().enumerate() {
                let e = e.clone().user_data(i as u64);
                // SAFETY: the buffers these entries point to are borrowed by
                // the caller of `run` for its whole duration, and `run` waits
                // below for every CQE of the chunk before returning.
                if unsafe { self.ring.submission().push(&e) }.is_err() {
                    return Err(io::Error::other("flusher ring full"));
                }
            }
            let mut left = chunk.len();
            while left > 0 {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                    Err(e) => {
                        // We cannot tell what the kernel still holds: wait
                        // for the rest before reporting, so no buffer is
                        // released early.
                        first_err.get_or_insert(e);
                        continue;
                    }
                }
                for cqe in self.ring.completion() {
                    left -= 1;
                    let Some((_, want)) = usize::try_from(cqe.user_data())
                        .ok()
                        .and_then(|i| chunk.get(i))
                    else {
                        continue;
                    };
                    let res = cqe.result();
                    if res < 0 {
                        first_err.get_or_insert(io::Error::from_raw_os_error(-res));
                    } else if res != *want {
                        first_err.get_or_insert(short(*want, res));
                    }
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl FlushIo for UringFlushIo {
    fn read(&mut self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let mut entries = Vec::new();
        for (i, chunk) in buf.chunks_mut(1 << 30).enumerate() {
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            let (fd, at) = self.fds.route(off + ((i as u64) << 30));
            entries.push((
                opcode::Read::new(types::Fd(fd), chunk.as_mut_ptr(), len)
                    .offset(at)
                    .build(),
                i32::try_from(len).unwrap_or(i32::MAX),
            ));
        }
        self.run(&entries)
    }

    /// Written by this thread (`Storage::write_at`, a `pwrite`), not
    /// through the ring: ext4 cannot take a buffered write without
    /// blocking, so io_uring hands every write SQE to an io-wq worker, and a pass of ~2000 random 4 KiB
    /// blocks became ~2000 hand-offs between threads. The flusher is its own
    /// thread and may block (docs/performance.md: 4 KiB random writes at
    /// QD32 83K -> 101K IOPS).
    fn write_batch(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        for &(off, b) in writes {
            self.storage.write_at(&[b], off)?;
        }
        Ok(())
    }

    fn punch(&mut self, off: u64, len: u64) -> io::Result<()> {
        let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
        let (fd, at) = self.fds.route(off);
        let e = opcode::Fallocate::new(types::Fd(fd), len)
            .offset(at)
            .mode(mode)
            .build();
        match self.run(&[(e, 0)]) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                // No hole punching on this file system: write zeros.
                let zeros = vec![0u8; 1 << 20];
                let mut done = 0u64;
                while done < len {
                    let n = usize::try_from((len - done).min(1 << 20)).unwrap_or(1 << 20);
                    self.write_batch(&[(off + done, &zeros[..n])])?;
                    done += n as u64;
                }
                Ok(())
            }
            r => r,
        }
    }
}
