//! The flusher: writes WAL records back to the extent region, advances the
//! checkpoint and frees WAL space.
//!
//! One pass: read the records between the checkpoint and the written
//! watermark in large chunks; for every block, write back the newest record
//! of the chunk that covers it; after a batch of chunks, sync the extent
//! region (on a thread of its own, while the next batch is written back);
//! after the sync, drop those dirty-map entries; persist the new checkpoint
//! and tail; only then let writers reuse the space (bumping `reclaim_seq`
//! first, so a read that raced with the reuse notices and retries).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::FlushIo;
use crate::dirty_map::{DirtyMap, Segment, Source};
use crate::error::{Error, Result};
use crate::stats::Stats;
use crate::volume::{lock, Inner};
use crate::wal::{ring_pieces, RecordHeader, RecordKind, HEADER_LEN};

/// WAL bytes read (and parsed, verified, written back) at a time: an eighth
/// of the WAL, between 4 KiB and 8 MiB.
fn chunk_size(wal_size: u64) -> u64 {
    (wal_size / 8).clamp(4 << 10, 8 << 20)
}
/// Chunks written back between two syncs at most: the extent sync and the
/// superblock update are paid once per batch, and the kernel sorts and
/// merges a larger set of scattered dirty extent pages (a 64 MiB WAL: 8 MiB
/// chunks, up to 32 MiB per sync).
const CHUNKS_PER_SYNC: u64 = 4;
/// A batch takes another chunk only while its extent writes average less
/// than this: large sequential writes gain nothing from a bigger sync
/// (their pages are contiguous already) and would hold WAL space longer
/// (measured: 128 KiB writes at QD8, p50 0.5 -> 0.7 ms with 32 MiB batches).
const SCATTERED_WRITE: u64 = 32 << 10;

fn flush_io(inner: &Inner) -> Box<dyn FlushIo> {
    #[cfg(feature = "backend-uring")]
    #[allow(irrefutable_let_patterns)] // one variant when std is compiled out
    if let crate::volume::BackendKind::Uring { fds } = inner.backend {
        match crate::backend::engine_uring::UringFlushIo::new(
            fds,
            inner.cfg.uring_entries,
            Arc::clone(&inner.storage),
        ) {
            Ok(f) => return Box::new(f),
            Err(e) => tracing::warn!("flusher: io_uring unavailable ({e}); using pwrite"),
        }
    }
    Box::new(crate::backend::StdFlushIo {
        storage: Arc::clone(&inner.storage),
    })
}

/// Thread body.
pub(crate) fn run(inner: &Arc<Inner>) {
    let mut fio = flush_io(inner);
    let mut chunk = Vec::new();
    loop {
        let (stop, kicked) = {
            let mut req = lock(&inner.flush);
            if !req.kick && !req.stop {
                let (r, _) = inner
                    .flush_cv
                    .wait_timeout(req, inner.cfg.flush_interval)
                    .unwrap_or_else(|p| p.into_inner());
                req = r;
            }
            let kicked = req.kick;
            req.kick = false;
            inner.flush_kicked.store(false, Ordering::Release);
            (req.stop, kicked)
        };
        // Kicked by WAL pressure: write back in large batches down to half
        // the threshold, then let the WAL fill again (every batch costs an
        // extent fdatasync and a superblock write that durable writes wait
        // behind). On the interval and at close: everything.
        let low = if kicked && !stop {
            Some(inner.cfg.flush_threshold / 2.0)
        } else {
            None
        };
        if !inner.is_failed.load(Ordering::Acquire) {
            if let Err(e) = pass(inner, &mut *fio, low, &mut chunk) {
                Stats::add(&inner.stats.flusher_errors, 1);
                inner.fail(&format!("flusher: {e}"));
            }
        }
        // The read buffer (up to 8 MiB) is kept only while the WAL is under
        // pressure: a server with many quiet volumes does not hold one each.
        if low.is_none() {
            chunk = Vec::new();
        }
        if stop {
            return;
        }
    }
}

fn read_ring(inner: &Inner, fio: &mut dyn FlushIo, logical: u64, buf: &mut [u8]) -> Result<()> {
    let mut at = 0usize;
    for (off, len) in ring_pieces(inner.wal_offset, inner.wal_size, logical, buf.len() as u64) {
        let len = usize::try_from(len).map_err(|_| Error::Corrupt("WAL piece too large".into()))?;
        if len > 0 {
            fio.read(&mut buf[at..at + len], off)?;
            at += len;
        }
    }
    Ok(())
}

struct Rec {
    hdr: RecordHeader,
    /// Offset of the record in the chunk buffer.
    at: usize,
}

/// A batch written back to the extent region (not yet durable).
struct Batch {
    /// WAL offset after its last record: the new tail.
    end: u64,
    /// LSN of its last record: the new checkpoint.
    last_lsn: u64,
    /// `(lba, blocks, lsn)` of every record.
    done: Vec<(u64, u32, u64)>,
    /// Bytes written back.
    bytes: u64,
}

/// The extent sync of a batch: on its own thread, or done already when no
/// thread could be started.
enum ExtentSync<'s> {
    Thread(std::thread::ScopedJoinHandle<'s, std::io::Result<()>>),
    Done(std::io::Result<()>),
}

impl ExtentSync<'_> {
    fn wait(self) -> Result<()> {
        match self {
            ExtentSync::Thread(h) => h
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("extent sync thread panicked")))?,
            ExtentSync::Done(r) => r?,
        }
        Ok(())
    }
}

/// Write back what is written, down to a WAL fill of `low` (all of it when
/// `None`). Returns the records written back. `chunk` is the read buffer,
/// kept by the caller between passes.
///
/// The records are read in chunks ([`chunk_size`]); up to
/// [`CHUNKS_PER_SYNC`] chunks of scattered writes ([`SCATTERED_WRITE`]) are
/// written back under one sync and one superblock update.
/// Chunks are written in LSN order, so a block written by two chunks of a
/// batch ends with the newer record.
///
/// Pipelined: a batch's extent fdatasync runs on a thread of its own while
/// this one writes back the next batch (the CPU work of a batch and the
/// disk's work of the one before overlap); a batch is committed
/// (dirty-map entries dropped, superblock persisted, WAL space freed) only
/// after its sync returned. The sync covers every write made before it
/// started, and maybe some of the next batch's: those are only durable
/// early, and the next commit does not count on it.
pub(crate) fn pass(
    inner: &Inner,
    fio: &mut dyn FlushIo,
    low: Option<f64>,
    chunk: &mut Vec<u8>,
) -> Result<u64> {
    let started = Instant::now();
    let total = std::thread::scope(|scope| -> Result<u64> {
        let chunk_len = chunk_size(inner.wal_size);
        let mut total = 0u64;
        let mut segs: Vec<Segment> = Vec::new();
        let mut spare: Vec<(u64, u32, u64)> = Vec::new();
        let mut syncing: Option<(Batch, ExtentSync<'_>)> = None;
        loop {
            let upto = inner.gc.written();
            let (tail, ckpt, gen) = {
                let st = lock(&inner.sb);
                (st.sb.wal_tail, st.sb.checkpoint_lsn, st.sb.wal_gen)
            };
            // The next batch starts after the one being synced.
            let (from, first) = match &syncing {
                Some((b, _)) => (b.end, b.last_lsn + 1),
                None => (tail, ckpt + 1),
            };
            if upto < first {
                break;
            }
            let head = lock(&inner.alloc).head;
            let above_low =
                |at: u64| low.is_none_or(|low| ((head - at) as f64) >= low * inner.wal_size as f64);
            if !above_low(from) {
                break;
            }
            let mut done = std::mem::take(&mut spare);
            done.clear();
            let mut cursor = from;
            let mut expect = first;
            let mut wbytes = 0u64;
            let mut nwrites = 0u64;
            while expect <= upto
                && cursor - from < CHUNKS_PER_SYNC * chunk_len
                && wbytes <= nwrites * SCATTERED_WRITE
                && (cursor == from || above_low(cursor))
            {
                let (n, next, bytes, writes) = write_back_chunk(
                    inner, fio, chunk, chunk_len, &mut segs, cursor, head, expect, upto, gen,
                    &mut done,
                )?;
                if n == 0 {
                    break;
                }
                cursor = next;
                expect += n;
                wbytes += bytes;
                nwrites += writes;
            }
            if done.is_empty() {
                return Err(Error::Corrupt("flusher made no progress".into()));
            }
            let batch = Batch {
                end: cursor,
                last_lsn: expect - 1,
                done,
                bytes: wbytes,
            };
            // The previous batch's sync was running while this one was
            // written back: wait for it, start this one's, then commit the
            // previous batch while this sync runs.
            let prev = match syncing.take() {
                Some((b, sync)) => {
                    sync.wait()?;
                    Some(b)
                }
                None => None,
            };
            syncing = Some((batch, start_sync(inner, scope)));
            if let Some(b) = prev {
                total += commit(inner, &b)?;
                spare = b.done;
            }
        }
        if let Some((b, sync)) = syncing.take() {
            sync.wait()?;
            total += commit(inner, &b)?;
        }
        Ok(total)
    })?;
    if total > 0 {
        tracing::trace!(
            records = total,
            elapsed_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "flusher pass"
        );
    }
    Ok(total)
}

/// Start the extent fdatasync on its own thread (inline when no thread can
/// be started).
fn start_sync<'s>(inner: &'s Inner, scope: &'s std::thread::Scope<'s, '_>) -> ExtentSync<'s> {
    Stats::add(&inner.stats.fdatasyncs, 1);
    let storage = &*inner.storage;
    let at = inner.extent_offset;
    match std::thread::Builder::new()
        .name("keel-extsync".into())
        .spawn_scoped(scope, move || storage.sync_extents(at))
    {
        Ok(h) => ExtentSync::Thread(h),
        Err(e) => {
            tracing::debug!("flusher: no sync thread ({e}); syncing inline");
            ExtentSync::Done(storage.sync_extents(at))
        }
    }
}

/// After its sync: drop the batch's dirty-map entries (those no newer write
/// replaced), persist the new checkpoint and tail, free the WAL space.
/// Returns the records committed.
fn commit(inner: &Inner, b: &Batch) -> Result<u64> {
    {
        let mut dirty = lock(&inner.dirty);
        for &(lba, blocks, lsn) in &b.done {
            dirty.remove_if_lsn(lba, u64::from(blocks), lsn);
        }
    }
    inner.persist_sb(|sb| {
        sb.checkpoint_lsn = b.last_lsn;
        sb.wal_tail = b.end;
    })?;
    inner.reclaim_seq.fetch_add(1, Ordering::SeqCst);
    lock(&inner.alloc).tail = b.end;
    inner.wake_space_waiters();
    let n = b.done.len() as u64;
    Stats::add(&inner.stats.flusher_runs, 1);
    Stats::add(&inner.stats.flusher_records, n);
    Stats::add(&inner.stats.flusher_bytes, b.bytes);
    Ok(n)
}

/// Read the records from WAL offset `at` (LSN `expect` on, up to `upto`)
/// that lie wholly in one chunk, and write them back (not synced). Returns
/// how many, the WAL offset after them, the bytes and the writes issued;
/// appends `(lba, blocks, lsn)` of each to `done`.
#[allow(clippy::too_many_arguments)]
fn write_back_chunk(
    inner: &Inner,
    fio: &mut dyn FlushIo,
    chunk: &mut Vec<u8>,
    chunk_len: u64,
    segs: &mut Vec<Segment>,
    at: u64,
    head: u64,
    expect: u64,
    upto: u64,
    gen: u64,
    done: &mut Vec<(u64, u32, u64)>,
) -> Result<(u64, u64, u64, u64)> {
    let bs = u64::from(inner.block_size);
    // Read a chunk; a record larger than it is read on its own.
    let mut want = (head - at).min(chunk_len);
    let mut hb = [0u8; HEADER_LEN];
    read_ring(inner, fio, at, &mut hb)?;
    let first = RecordHeader::decode(&hb, inner.block_size)
        .ok_or_else(|| Error::Corrupt(format!("no WAL record at LSN {expect}")))?;
    want = want.max(first.stride());
    chunk.resize(
        usize::try_from(want).map_err(|_| Error::Corrupt("chunk".into()))?,
        0,
    );
    read_ring(inner, fio, at, chunk)?;

    // Parse records up to `upto` that lie wholly inside the chunk.
    let mut recs = Vec::new();
    let mut pos = 0usize;
    let mut lsn = expect;
    while lsn <= upto && pos + HEADER_LEN <= chunk.len() {
        let mut h = [0u8; HEADER_LEN];
        h.copy_from_slice(&chunk[pos..pos + HEADER_LEN]);
        let hdr = RecordHeader::decode(&h, inner.block_size).ok_or_else(|| {
            Error::Corrupt(format!("WAL record LSN {lsn} unreadable before write-back"))
        })?;
        let stride = usize::try_from(hdr.stride()).unwrap_or(usize::MAX);
        if pos.saturating_add(stride) > chunk.len() {
            break;
        }
        let data = &chunk[pos + HEADER_LEN..pos + HEADER_LEN + hdr.data_len as usize];
        if hdr.lsn != lsn || hdr.gen != gen || !RecordHeader::verify(&h, data) {
            return Err(Error::Corrupt(format!(
                "WAL record LSN {lsn} failed validation before write-back"
            )));
        }
        recs.push(Rec { hdr, at: pos });
        pos += stride;
        lsn += 1;
    }

    // What to write: for every block, the newest record of this chunk
    // that covers it. Not the dirty map's newest: a newer record beyond
    // the batch may still be lost in a power failure, and the checkpoint
    // will move past this one, so its data must reach the extent region.
    let mut writes: Vec<(u64, &[u8])> = Vec::new();
    let mut punches: Vec<(u64, u64)> = Vec::new();
    let mut covered = DirtyMap::new(inner.block_size);
    for r in recs.iter().rev() {
        let h = &r.hdr;
        covered.lookup(h.lba, u64::from(h.blocks), segs);
        for s in segs.iter().filter(|s| s.dirty.is_none()) {
            let file_off = inner.extent_offset + s.lba * bs;
            let bytes = s.len * bs;
            match h.kind {
                RecordKind::Write => {
                    let o = r.at + HEADER_LEN + usize::try_from((s.lba - h.lba) * bs).unwrap_or(0);
                    let n = usize::try_from(bytes).unwrap_or(0);
                    writes.push((file_off, &chunk[o..o + n]));
                }
                RecordKind::Trim | RecordKind::Zero => punches.push((file_off, bytes)),
            }
        }
        covered.insert(h.lba, u64::from(h.blocks), h.lsn, Source::Zero);
    }
    let wbytes: u64 = writes.iter().map(|w| w.1.len() as u64).sum();
    fio.write_batch(&writes)?;
    for (off, len) in punches {
        fio.punch(off, len)?;
    }
    done.extend(recs.iter().map(|r| (r.hdr.lba, r.hdr.blocks, r.hdr.lsn)));
    Ok((
        recs.len() as u64,
        at + pos as u64,
        wbytes,
        writes.len() as u64,
    ))
}
