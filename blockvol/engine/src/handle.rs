//! The per-reactor submission path.
//!
//! [`Handle::submit`] returns at once; results come back through
//! [`Handle::poll_completions`]. A handle's eventfd ([`Handle::notify_fd`])
//! becomes readable when there may be something to poll, so a reactor can
//! sleep on it. Writes go: admission → LSN and WAL space (one short lock) →
//! WAL write on this handle's executor → on completion, dirty map, written
//! watermark, then either done, or durable via a linked sync or group commit.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::{IoDone, IoOp, ReadSeg};
use crate::dirty_map::{Segment, Source};
use crate::error::{Error, Result};
use crate::group_commit::Waiter;
use crate::notify::Notifier;
use crate::stats::Stats;
use crate::volume::{lock, BackendKind, Inner};
use crate::wal::{ring_pieces, stride, RecordHeader, RecordKind, HEADER_LEN};

/// An operation on a volume.
#[derive(Debug)]
pub enum Op {
    /// Read `buf.len() / block_size` blocks at `lba` into `buf`.
    Read {
        /// First block.
        lba: u64,
        /// Destination; its length is a positive multiple of the block size.
        buf: Vec<u8>,
    },
    /// Write `buf` at `lba`; durable at completion when `fua`.
    Write {
        /// First block.
        lba: u64,
        /// Data; its length is a positive multiple of the block size.
        buf: Vec<u8>,
        /// Force unit access.
        fua: bool,
    },
    /// Deallocate blocks; they read as zeros afterwards.
    Trim {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// Write zeros.
    WriteZeroes {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// Make every write completed before this was submitted durable.
    Flush,
}

/// A finished operation. `buf` hands back the buffer of a read or write.
#[derive(Debug)]
pub struct Completion {
    /// The caller's tag.
    pub tag: u64,
    /// Outcome.
    pub result: Result<()>,
    /// The buffer of a read (filled) or a write.
    pub buf: Option<Vec<u8>>,
}

/// The answer of [`Handle::before_sleep`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepCheck {
    /// Completions were delivered or work is due: poll again, do not sleep.
    PollAgain,
    /// Sleep on the notify fd, waking at `wake_at` at the latest (a parked
    /// write's retry time).
    Sleep {
        /// When a parked operation is to be retried.
        wake_at: Option<Instant>,
    },
}

/// A submission refused at once; the operation (and its buffer) comes back.
#[derive(Debug)]
pub struct SubmitError {
    /// The operation.
    pub op: Op,
    /// Why.
    pub error: Error,
}

enum Exec {
    #[cfg(feature = "backend-std")]
    Std,
    #[cfg(feature = "backend-uring")]
    Uring(Box<crate::backend::engine_uring::UringExec>),
}

enum Pending {
    Write {
        tag: u64,
        lsn: u64,
        lba: u64,
        blocks: u32,
        kind: RecordKind,
        data_off: u64,
        durable: bool,
        linked: bool,
    },
    Read {
        tag: u64,
        lba: u64,
        seq: u64,
        wal: bool,
    },
}

struct Deferred {
    tag: u64,
    op: Op,
    since: Instant,
    not_before: Instant,
    soft_done: bool,
}

enum Admit {
    Go {
        lsn: u64,
        off: u64,
        epoch: u64,
        gen: u64,
    },
    Soft,
    Hard,
}

/// A submission path to one volume, owned by one thread.
pub struct Handle {
    inner: Arc<Inner>,
    notifier: Arc<Notifier>,
    exec: Exec,
    slots: Vec<Option<Pending>>,
    free: Vec<usize>,
    deferred: VecDeque<Deferred>,
    segs: Vec<Segment>,
    /// Read segment lists of finished reads, reused.
    rseg_spare: Vec<Vec<ReadSeg>>,
    /// WAL record header buffers of finished writes, reused. Boxed on
    /// purpose: the kernel reads the header through a pointer while the
    /// write is in flight, so it must not move with this list.
    #[allow(clippy::vec_box)]
    hdr_spare: Vec<Box<[u8; HEADER_LEN]>>,
    /// Operations finished on this handle's own thread (reads, WAL writes
    /// without a shared sync, errors): handed out by the next poll without
    /// the shared queue (no allocation, no wake-up).
    local: VecDeque<Completion>,
    done: Vec<IoDone>,
    in_flight: usize,
    /// Flushes, and durable writes written to the WAL, waiting for group
    /// commit's fdatasync: out of `slots`, but not completed (their
    /// completion, a write's buffer included, comes through
    /// `notifier.ready`, the only way anything comes through it).
    syncing: usize,
    /// Durable writes never take the linked write+fdatasync path (io_uring
    /// with inline WAL writes; see where `linked` is decided).
    no_linked: bool,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("in_flight", &self.in_flight)
            .field("syncing", &self.syncing)
            .field("deferred", &self.deferred.len())
            .finish()
    }
}

impl Handle {
    pub(crate) fn new(inner: Arc<Inner>) -> Result<Handle> {
        let notifier = Arc::new(Notifier::new()?);
        #[allow(unused_mut)] // set only with the io_uring backend
        let mut no_linked = false;
        let exec = match &inner.backend {
            #[cfg(feature = "backend-std")]
            BackendKind::Std(_) => Exec::Std,
            #[cfg(feature = "backend-uring")]
            BackendKind::Uring { fds } => {
                no_linked = inner.cfg.wal_inline_writes;
                Exec::Uring(Box::new(crate::backend::engine_uring::UringExec::new(
                    *fds,
                    inner.cfg.uring_entries,
                    notifier.fd(),
                    inner.cfg.wal_inline_writes,
                )?))
            }
        };
        Ok(Handle {
            inner,
            notifier,
            exec,
            slots: Vec::new(),
            free: Vec::new(),
            deferred: VecDeque::new(),
            segs: Vec::new(),
            rseg_spare: Vec::new(),
            hdr_spare: Vec::new(),
            local: VecDeque::with_capacity(64),
            done: Vec::new(),
            in_flight: 0,
            syncing: 0,
            no_linked,
        })
    }

    /// Becomes readable when completions may be ready, once armed with
    /// [`Handle::arm_notify`] (a reactor arms it before it sleeps; the
    /// blocking [`Handle::wait`] arms it itself).
    pub fn notify_fd(&self) -> std::os::fd::RawFd {
        self.notifier.fd()
    }

    /// [`Handle::notify_fd`] as a borrowed fd (to register with a reactor
    /// without `unsafe`; the registration must end before the handle).
    pub fn notify_as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.notifier.borrowed_fd()
    }

    /// Ask for a wake-up on [`Handle::notify_fd`] at the next completion.
    /// Returns `false` when completions are already waiting: poll them
    /// instead of sleeping. Without arming, completions arrive silently
    /// (no syscall per completion while the owner is busy polling).
    pub fn arm_notify(&self) -> bool {
        self.local.is_empty() && self.notifier.arm()
    }

    /// What a reactor does before it sleeps on [`Handle::notify_fd`]: poll
    /// completions into `f`, arm the notification, and say whether it may
    /// sleep and until when at the latest. A write parked by admission
    /// control (soft watermark delay, or a retry while the WAL is full) is
    /// retried by a later poll, not by a notification: the reactor must
    /// wake by then.
    pub fn before_sleep(&mut self, f: impl FnMut(Completion)) -> SleepCheck {
        if self.poll_completions(f) > 0 || !self.done.is_empty() || !self.arm_notify() {
            return SleepCheck::PollAgain;
        }
        match self.deferred.front() {
            None => SleepCheck::Sleep { wake_at: None },
            Some(d) if d.not_before <= Instant::now() => SleepCheck::PollAgain,
            Some(d) => SleepCheck::Sleep {
                wake_at: Some(d.not_before),
            },
        }
    }

    /// Operations submitted and not yet completed (deferred ones included,
    /// and flushes and durable writes waiting for their fdatasync).
    pub fn in_flight(&self) -> usize {
        self.in_flight + self.deferred.len() + self.syncing
    }

    /// Capacity in blocks (it grows on expand).
    pub fn blocks(&self) -> u64 {
        self.inner.blocks.load(Ordering::Acquire)
    }

    /// Logical block size.
    pub fn block_size(&self) -> u32 {
        self.inner.block_size
    }

    fn check_range(&self, lba: u64, blocks: u64) -> Result<()> {
        let cap = self.blocks();
        if blocks == 0 {
            return Err(Error::InvalidArgument("zero-length request".into()));
        }
        if lba.checked_add(blocks).is_none_or(|e| e > cap) {
            return Err(Error::OutOfRange {
                lba,
                blocks,
                capacity: cap,
            });
        }
        Ok(())
    }

    fn buf_blocks(&self, len: usize) -> Result<u64> {
        let bs = self.inner.block_size as usize;
        if len == 0 || len % bs != 0 {
            return Err(Error::InvalidArgument(format!(
                "buffer of {len} bytes is not a positive multiple of the block size {bs}"
            )));
        }
        Ok((len / bs) as u64)
    }

    fn validate(&self, op: &Op) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        match op {
            Op::Read { lba, buf } => self.check_range(*lba, self.buf_blocks(buf.len())?),
            Op::Write { lba, buf, .. } => {
                let n = self.buf_blocks(buf.len())?;
                if n > u64::from(self.inner.max_write_blocks) {
                    return Err(Error::InvalidArgument(format!(
                        "write of {n} blocks is larger than the {} this volume takes at once",
                        self.inner.max_write_blocks
                    )));
                }
                self.check_range(*lba, n)?;
                self.inner.failed_error().map_or(Ok(()), Err)
            }
            Op::Trim { lba, blocks } | Op::WriteZeroes { lba, blocks, .. } => {
                self.check_range(*lba, u64::from(*blocks))?;
                self.inner.failed_error().map_or(Ok(()), Err)
            }
            Op::Flush => self.inner.failed_error().map_or(Ok(()), Err),
        }
    }

    /// Submit `op`; returns at once. Its completion carries `tag`. The
    /// I/O may be handed to the kernel only at the next
    /// [`Handle::poll_completions`] or [`Handle::wait`] (one system call for
    /// a whole burst of submissions), so callers poll after submitting.
    pub fn submit(&mut self, tag: u64, op: Op) -> Result<(), SubmitError> {
        if let Err(error) = self.validate(&op) {
            return Err(SubmitError { op, error });
        }
        match op {
            Op::Flush => {
                Stats::add(&self.inner.stats.flush_ops, 1);
                let target = lock(&self.inner.alloc).next_lsn - 1;
                // In flight until group commit delivers it (as durable
                // writes waiting for their sync are).
                self.syncing += 1;
                self.inner.gc.add_waiter(Waiter {
                    target,
                    notifier: Arc::clone(&self.notifier),
                    tag,
                    buf: None,
                });
                Ok(())
            }
            Op::Read { lba, buf } => {
                self.start_read(tag, lba, buf);
                Ok(())
            }
            op => {
                let now = Instant::now();
                let d = Deferred {
                    tag,
                    op,
                    since: now,
                    not_before: now,
                    soft_done: false,
                };
                if self.deferred.is_empty() {
                    if let Some(d) = self.try_write(d) {
                        self.deferred.push_back(d);
                    }
                } else {
                    self.deferred.push_back(d);
                }
                Ok(())
            }
        }
    }

    fn slot(&mut self, p: Pending) -> u64 {
        self.in_flight += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i] = Some(p);
            i as u64
        } else {
            self.slots.push(Some(p));
            (self.slots.len() - 1) as u64
        }
    }

    fn take_slot(&mut self, token: u64) -> Option<Pending> {
        let i = usize::try_from(token).ok()?;
        let p = self.slots.get_mut(i)?.take()?;
        self.free.push(i);
        self.in_flight -= 1;
        Some(p)
    }

    fn exec_has_room(&self) -> bool {
        match &self.exec {
            #[cfg(feature = "backend-std")]
            Exec::Std => true,
            #[cfg(feature = "backend-uring")]
            Exec::Uring(u) => u.in_flight() + 4 <= self.inner.cfg.uring_entries as usize,
        }
    }

    fn exec_submit(&mut self, token: u64, op: IoOp) -> Result<(), (IoOp, std::io::Error)> {
        match &mut self.exec {
            #[cfg(feature = "backend-std")]
            Exec::Std => {
                #[allow(irrefutable_let_patterns)] // one variant when io_uring is compiled out
                let BackendKind::Std(pool) = &self.inner.backend
                else {
                    return Err((op, std::io::Error::other("backend mismatch")));
                };
                let mut op = op;
                if self.inner.cfg.wal_inline_writes {
                    if let Some(result) = pool.write_inline(&mut op) {
                        Stats::add(&self.inner.stats.inline_wal_writes, 1);
                        self.done.push(IoDone { token, result, op });
                        return Ok(());
                    }
                }
                pool.submit(token, op, &self.notifier)
                    .map_err(|op| (op, std::io::Error::other("I/O workers stopped")))
            }
            #[cfg(feature = "backend-uring")]
            Exec::Uring(u) => u.submit(token, op),
        }
    }

    /// Whether the standard backend writes WAL records on this thread now.
    fn std_inline(&self) -> bool {
        match &self.exec {
            #[cfg(feature = "backend-std")]
            Exec::Std => {
                self.inner.cfg.wal_inline_writes && crate::backend::dirty_guard::inline_ok()
            }
            #[cfg(feature = "backend-uring")]
            Exec::Uring(_) => false,
        }
    }

    fn complete_now(&mut self, tag: u64, result: Result<()>, buf: Option<Vec<u8>>) {
        self.local.push_back(Completion { tag, result, buf });
    }

    fn admit(&self, need: u64, soft_done: bool) -> Admit {
        let i = &self.inner;
        let w = i.wal_size as f64;
        let mut a = lock(&i.alloc);
        let used = a.head - a.tail;
        let after = (used + need) as f64 / w;
        if used + need > i.wal_size || after > i.cfg.wal_hard_watermark {
            return Admit::Hard;
        }
        if after > i.cfg.wal_soft_watermark && !soft_done {
            return Admit::Soft;
        }
        let lsn = a.next_lsn;
        let off = a.head;
        a.next_lsn += 1;
        a.head += need;
        let (epoch, gen) = (a.epoch, a.gen);
        drop(a);
        if after > i.cfg.flush_threshold {
            i.kick_flusher();
        }
        Admit::Go {
            lsn,
            off,
            epoch,
            gen,
        }
    }

    /// Try to start a write-like op; gives it back if it must wait.
    fn try_write(&mut self, mut d: Deferred) -> Option<Deferred> {
        let (lba, kind, blocks, data_len, fua) = match &d.op {
            Op::Write { lba, buf, fua } => (
                *lba,
                RecordKind::Write,
                u32::try_from(buf.len() / self.inner.block_size as usize).unwrap_or(u32::MAX),
                buf.len(),
                *fua,
            ),
            Op::Trim { lba, blocks } => (*lba, RecordKind::Trim, *blocks, 0, false),
            Op::WriteZeroes { lba, blocks, fua } => (*lba, RecordKind::Zero, *blocks, 0, *fua),
            Op::Read { .. } | Op::Flush => return None,
        };
        if let Some(e) = self.inner.failed_error() {
            let buf = take_buf(d.op);
            self.complete_now(d.tag, Err(e), buf);
            return None;
        }
        if !self.exec_has_room() {
            return Some(d);
        }
        let need = stride(data_len);
        let now = Instant::now();
        let (lsn, off, epoch, gen) = match self.admit(need, d.soft_done) {
            Admit::Go {
                lsn,
                off,
                epoch,
                gen,
            } => (lsn, off, epoch, gen),
            Admit::Soft => {
                Stats::add(&self.inner.stats.admission_soft_waits, 1);
                self.inner.kick_flusher();
                d.soft_done = true;
                d.not_before = now + self.inner.cfg.soft_delay;
                return Some(d);
            }
            Admit::Hard => {
                if d.not_before <= d.since {
                    // First time at the hard watermark.
                    Stats::add(&self.inner.stats.admission_hard_waits, 1);
                    d.not_before = now;
                }
                self.inner.kick_flusher();
                if now.duration_since(d.since) >= self.inner.cfg.admission_timeout {
                    Stats::add(&self.inner.stats.admission_timeouts, 1);
                    let waited_ms =
                        u64::try_from(now.duration_since(d.since).as_millis()).unwrap_or(u64::MAX);
                    let buf = take_buf(d.op);
                    self.complete_now(d.tag, Err(Error::WalFull { waited_ms }), buf);
                    return None;
                }
                lock(&self.inner.space_waiters).push(Arc::downgrade(&self.notifier));
                d.not_before = now + Duration::from_millis(1);
                return Some(d);
            }
        };
        let data = match d.op {
            Op::Write { buf, .. } => buf,
            _ => Vec::new(),
        };
        let hdr = RecordHeader {
            kind,
            lsn,
            gen,
            lba,
            blocks,
            data_len: u32::try_from(data_len).unwrap_or(u32::MAX),
            epoch,
            crc: 0,
        }
        .encode(&data);
        let durable = fua || !self.inner.write_cache.load(Ordering::Acquire);
        // A linked write+sync covers everything below `lsn` only if all of it
        // was written before this write was even submitted. Only at queue
        // depth 1: with more in flight, group commit shares one sync among
        // them instead of tying up an executor per sync.
        //
        // Not on io_uring with inline WAL writes: the record is written by
        // this thread, and group commit's sync thread then syncs it sooner
        // than an fdatasync SQE would. io_uring runs that SQE on an io-wq
        // worker, which (measured, `keel-bench engine`) waited behind the
        // submitter spinning for its completion: durable 4 KiB QD1 p50
        // 182-191 µs linked vs 138-140 µs by group commit (raw
        // pwrite+fdatasync 142-144 µs), QD32 39-42K vs 49-51K IOPS.
        //
        // On the standard backend with inline WAL writes the same holds
        // whenever the record will be written inline (the kernel far from
        // throttling writers); otherwise a worker writes and syncs it.
        let linked = durable
            && !self.no_linked
            && !self.std_inline()
            && self.in_flight == 0
            && self.inner.gc.written() == lsn - 1;
        let pieces = ring_pieces(
            self.inner.wal_offset,
            self.inner.wal_size,
            off,
            HEADER_LEN as u64 + data_len as u64,
        );
        let token = self.slot(Pending::Write {
            tag: d.tag,
            lsn,
            lba,
            blocks,
            kind,
            data_off: off + HEADER_LEN as u64,
            durable,
            linked,
        });
        let hdr = match self.hdr_spare.pop() {
            Some(mut b) => {
                *b = hdr;
                b
            }
            None => Box::new(hdr),
        };
        let op = IoOp::WalWrite {
            hdr,
            data,
            pieces,
            sync: linked,
        };
        if let Err((op, e)) = self.exec_submit(token, op) {
            // The LSN is taken: without its record the log has a gap, so the
            // volume cannot go on.
            self.take_slot(token);
            self.inner
                .fail(&format!("WAL write submission failed: {e}"));
            let buf = match op {
                IoOp::WalWrite { data, .. } if kind == RecordKind::Write => Some(data),
                _ => None,
            };
            self.complete_now(d.tag, Err(Error::Io(e)), buf);
        }
        None
    }

    fn start_read(&mut self, tag: u64, lba: u64, mut buf: Vec<u8>) {
        let i = Arc::clone(&self.inner);
        let bs = u64::from(i.block_size);
        let blocks = buf.len() as u64 / bs;
        let seq = i.reclaim_seq.load(Ordering::SeqCst);
        lock(&i.dirty).lookup(lba, blocks, &mut self.segs);
        let mut rsegs = self.rseg_spare.pop().unwrap_or_default();
        rsegs.clear();
        let mut wal = false;
        for s in &self.segs {
            let buf_off = usize::try_from((s.lba - lba) * bs).unwrap_or(0);
            let len = s.len * bs;
            match s.dirty {
                None => rsegs.push(ReadSeg {
                    file_off: i.extent_offset + s.lba * bs,
                    buf_off,
                    len: usize::try_from(len).unwrap_or(0),
                }),
                Some((_, Source::Zero)) => {
                    let n = usize::try_from(len).unwrap_or(0);
                    buf[buf_off..buf_off + n].fill(0);
                }
                Some((_, Source::Wal { off })) => {
                    wal = true;
                    let mut at = buf_off;
                    for (fo, l) in ring_pieces(i.wal_offset, i.wal_size, off, len) {
                        if l > 0 {
                            let l = usize::try_from(l).unwrap_or(0);
                            rsegs.push(ReadSeg {
                                file_off: fo,
                                buf_off: at,
                                len: l,
                            });
                            at += l;
                        }
                    }
                }
            }
        }
        if rsegs.is_empty() {
            self.rseg_spare.push(rsegs);
            Stats::add(&i.stats.read_ops, 1);
            Stats::add(&i.stats.read_bytes, buf.len() as u64);
            self.complete_now(tag, Ok(()), Some(buf));
            return;
        }
        if !self.exec_has_room() {
            // Rare (uring ring full): retry from the deferred queue.
            self.deferred.push_back(Deferred {
                tag,
                op: Op::Read { lba, buf },
                since: Instant::now(),
                not_before: Instant::now(),
                soft_done: true,
            });
            return;
        }
        let token = self.slot(Pending::Read { tag, lba, seq, wal });
        if let Err((op, e)) = self.exec_submit(token, IoOp::Read { buf, segs: rsegs }) {
            self.take_slot(token);
            let buf = match op {
                IoOp::Read { buf, .. } => Some(buf),
                IoOp::WalWrite { .. } => None,
            };
            self.complete_now(tag, Err(Error::Io(e)), buf);
        }
    }

    fn on_io_done(&mut self, d: IoDone) {
        let Some(p) = self.take_slot(d.token) else {
            return;
        };
        let i = Arc::clone(&self.inner);
        match p {
            Pending::Write {
                tag,
                lsn,
                lba,
                blocks,
                kind,
                data_off,
                durable,
                linked,
            } => {
                let buf = match d.op {
                    IoOp::WalWrite { data, hdr, .. } => {
                        if self.hdr_spare.len() < 64 {
                            self.hdr_spare.push(hdr);
                        }
                        (kind == RecordKind::Write).then_some(data)
                    }
                    IoOp::Read { .. } => None,
                };
                if let Err(e) = d.result {
                    Stats::add(&i.stats.io_errors, 1);
                    i.fail(&format!("WAL write failed: {e}"));
                    self.complete_now(tag, Err(Error::Io(e)), buf);
                    return;
                }
                let src = match kind {
                    RecordKind::Write => Source::Wal { off: data_off },
                    RecordKind::Trim | RecordKind::Zero => Source::Zero,
                };
                lock(&i.dirty).insert(lba, u64::from(blocks), lsn, src);
                i.gc.mark_written(lsn);
                let bytes = u64::from(blocks) * u64::from(i.block_size);
                match kind {
                    RecordKind::Write => {
                        Stats::add(&i.stats.write_ops, 1);
                        Stats::add(&i.stats.write_bytes, bytes);
                    }
                    RecordKind::Trim => {
                        Stats::add(&i.stats.trim_ops, 1);
                        Stats::add(&i.stats.trim_bytes, bytes);
                    }
                    RecordKind::Zero => {
                        Stats::add(&i.stats.zero_ops, 1);
                        Stats::add(&i.stats.zero_bytes, bytes);
                    }
                }
                if durable {
                    Stats::add(&i.stats.fua_writes, 1);
                }
                if linked {
                    Stats::add(&i.stats.linked_syncs, 1);
                    Stats::add(&i.stats.fdatasyncs, 1);
                    i.gc.mark_durable(lsn, &i.stats);
                    self.complete_now(tag, Ok(()), buf);
                } else if durable {
                    // Every waiter comes back through `notifier.ready`
                    // exactly once (done, failed or stopped).
                    self.syncing += 1;
                    i.gc.add_waiter(Waiter {
                        target: lsn,
                        notifier: Arc::clone(&self.notifier),
                        tag,
                        buf,
                    });
                } else {
                    self.complete_now(tag, Ok(()), buf);
                }
            }
            Pending::Read { tag, lba, seq, wal } => {
                let IoOp::Read { buf, segs } = d.op else {
                    return;
                };
                if self.rseg_spare.len() < 64 {
                    self.rseg_spare.push(segs);
                }
                if let Err(e) = d.result {
                    Stats::add(&i.stats.io_errors, 1);
                    self.complete_now(tag, Err(Error::Io(e)), Some(buf));
                    return;
                }
                if wal && i.reclaim_seq.load(Ordering::SeqCst) != seq {
                    // WAL space was reclaimed while we read it: read again.
                    Stats::add(&i.stats.read_retries, 1);
                    self.start_read(tag, lba, buf);
                    return;
                }
                Stats::add(&i.stats.read_ops, 1);
                Stats::add(&i.stats.read_bytes, buf.len() as u64);
                self.complete_now(tag, Ok(()), Some(buf));
            }
        }
    }

    fn reap(&mut self) {
        let mut done = std::mem::take(&mut self.done);
        match &mut self.exec {
            #[cfg(feature = "backend-std")]
            Exec::Std => {
                while let Some(d) = self.notifier.io.pop() {
                    done.push(d);
                }
            }
            #[cfg(feature = "backend-uring")]
            Exec::Uring(u) => {
                u.poll(&mut done);
                let (w, g) = u.take_coalesced();
                if g > 0 {
                    Stats::add(&self.inner.stats.coalesced_writes, w);
                    Stats::add(&self.inner.stats.coalesced_groups, g);
                }
                let n = u.take_inline();
                if n > 0 {
                    Stats::add(&self.inner.stats.inline_wal_writes, n);
                }
            }
        }
        for d in done.drain(..) {
            self.on_io_done(d);
        }
        self.done = done;
    }

    fn retry_deferred(&mut self) {
        let now = Instant::now();
        while let Some(d) = self.deferred.pop_front() {
            if d.not_before > now {
                self.deferred.push_front(d);
                break;
            }
            let back = match d.op {
                Op::Read { lba, buf } => {
                    if self.exec_has_room() {
                        self.start_read(d.tag, lba, buf);
                        None
                    } else {
                        Some(Deferred {
                            op: Op::Read { lba, buf },
                            ..d
                        })
                    }
                }
                _ => self.try_write(d),
            };
            if let Some(d) = back {
                self.deferred.push_front(d);
                break;
            }
        }
    }

    /// Deliver every finished operation to `f`; returns how many.
    pub fn poll_completions(&mut self, mut f: impl FnMut(Completion)) -> usize {
        self.reap();
        if !self.deferred.is_empty() {
            self.retry_deferred();
            // What the retry started goes to the kernel now: the reap above
            // was this poll's submission, and an owner told it may sleep
            // (`before_sleep`) waits for completions of what it submitted.
            #[cfg(feature = "backend-uring")]
            #[allow(irrefutable_let_patterns)] // one variant when std is compiled out
            if let Exec::Uring(u) = &mut self.exec {
                u.flush();
            }
            // What the retry wrote inline (standard backend) is done
            // already, and nothing would signal it later.
            if !self.done.is_empty() {
                self.reap();
            }
        }
        let mut n = 0;
        while let Some(c) = self.local.pop_front() {
            f(c);
            n += 1;
        }
        while let Some(c) = self.notifier.ready.pop() {
            self.syncing = self.syncing.saturating_sub(1);
            f(c);
            n += 1;
        }
        n
    }

    /// Sleep until a completion may be ready, a parked write may proceed,
    /// or `timeout` passes. With operations in flight it first polls for up
    /// to [`VolumeConfig::wait_spin`](crate::VolumeConfig) (a sleep and
    /// wake-up costs 50-100 µs on small VMs, as much as a durable write).
    pub fn wait(&mut self, timeout: Option<Duration>) {
        #[cfg(feature = "backend-uring")]
        #[allow(irrefutable_let_patterns)] // one variant when std is compiled out
        if let Exec::Uring(u) = &mut self.exec {
            u.flush();
        }
        let spin = self.inner.cfg.wait_spin;
        if !spin.is_zero() && self.in_flight > 0 {
            let until = Instant::now() + spin.min(timeout.unwrap_or(spin));
            loop {
                let ready = !self.local.is_empty()
                    || !self.done.is_empty()
                    || self.notifier.pending()
                    || match &mut self.exec {
                        #[cfg(feature = "backend-std")]
                        Exec::Std => false,
                        #[cfg(feature = "backend-uring")]
                        Exec::Uring(u) => u.has_completions(),
                    };
                if ready {
                    return;
                }
                if Instant::now() >= until {
                    break;
                }
                std::hint::spin_loop();
            }
        }
        // Completions already here (`done`: WAL records written inline)
        // need no waiting.
        if !self.local.is_empty() || !self.done.is_empty() {
            return;
        }
        let mut t = timeout;
        if let Some(d) = self.deferred.front() {
            let until = d.not_before.saturating_duration_since(Instant::now());
            t = Some(t.map_or(until, |t| t.min(until)));
        }
        self.notifier.wait(t);
    }
}

fn take_buf(op: Op) -> Option<Vec<u8>> {
    match op {
        Op::Read { buf, .. } | Op::Write { buf, .. } => Some(buf),
        _ => None,
    }
}

impl Handle {
    /// Close the handle and hand every buffer it still holds to `f`: those
    /// of completions not yet taken, of operations in flight and of durable
    /// writes waiting for their fdatasync (both waited for), and of writes
    /// parked by admission control (never submitted, so never done). A
    /// caller that pools its buffers gets them all back; dropping the
    /// handle frees them instead.
    pub fn close(mut self, mut f: impl FnMut(Vec<u8>)) {
        for d in std::mem::take(&mut self.deferred) {
            if let Op::Read { buf, .. } | Op::Write { buf, .. } = d.op {
                f(buf);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.reap();
            while let Some(c) = self.local.pop_front() {
                if let Some(b) = c.buf {
                    f(b);
                }
            }
            while let Some(c) = self.notifier.ready.pop() {
                self.syncing = self.syncing.saturating_sub(1);
                if let Some(b) = c.buf {
                    f(b);
                }
            }
            if (self.in_flight == 0 && self.syncing == 0) || Instant::now() >= deadline {
                break;
            }
            self.notifier.wait(Some(Duration::from_millis(5)));
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // Writes in flight must reach the dirty map and the watermark, or the
        // volume would wait for them forever.
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.in_flight > 0 && Instant::now() < deadline {
            self.reap();
            if self.in_flight > 0 {
                self.notifier.wait(Some(Duration::from_millis(5)));
            }
        }
    }
}

/// A blocking wrapper for tools and tests: one operation at a time.
#[derive(Debug)]
pub struct SyncHandle {
    h: Handle,
    tag: u64,
}

impl SyncHandle {
    /// Wrap a handle.
    pub fn new(h: Handle) -> SyncHandle {
        SyncHandle { h, tag: 0 }
    }

    /// Run `op` to completion; returns its buffer.
    pub fn execute(&mut self, op: Op) -> Result<Option<Vec<u8>>> {
        self.tag += 1;
        let tag = self.tag;
        self.h.submit(tag, op).map_err(|e| e.error)?;
        loop {
            let mut got = None;
            self.h.poll_completions(|c| {
                if c.tag == tag {
                    got = Some(c);
                }
            });
            if let Some(c) = got {
                return c.result.map(|()| c.buf);
            }
            self.h.wait(Some(Duration::from_millis(50)));
        }
    }

    /// Read `blocks` blocks at `lba`.
    pub fn read(&mut self, lba: u64, blocks: u64) -> Result<Vec<u8>> {
        let len = usize::try_from(blocks * u64::from(self.h.block_size()))
            .map_err(|_| Error::InvalidArgument("read too large".into()))?;
        let buf = vec![0u8; len];
        self.execute(Op::Read { lba, buf })?
            .ok_or_else(|| Error::InvalidArgument("read returned no buffer".into()))
    }

    /// Write `data` at `lba`.
    pub fn write(&mut self, lba: u64, data: &[u8], fua: bool) -> Result<()> {
        self.execute(Op::Write {
            lba,
            buf: data.to_vec(),
            fua,
        })
        .map(|_| ())
    }

    /// Trim.
    pub fn trim(&mut self, lba: u64, blocks: u32) -> Result<()> {
        self.execute(Op::Trim { lba, blocks }).map(|_| ())
    }

    /// Write zeros.
    pub fn write_zeroes(&mut self, lba: u64, blocks: u32, fua: bool) -> Result<()> {
        self.execute(Op::WriteZeroes { lba, blocks, fua })
            .map(|_| ())
    }

    /// Flush.
    pub fn flush(&mut self) -> Result<()> {
        self.execute(Op::Flush).map(|_| ())
    }

    /// The wrapped handle.
    pub fn handle(&mut self) -> &mut Handle {
        &mut self.h
    }
}
