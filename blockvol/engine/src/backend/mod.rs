//! I/O backends behind one interface, one file each (`engine_std.rs`,
//! `engine_uring.rs`).
//!
//! A handle turns requests into [`IoOp`]s — a WAL record write (optionally
//! linked to an fdatasync) or a scattered read — and hands them to its
//! executor; results come back as [`IoDone`] with the buffers. The flusher
//! uses a [`FlushIo`] for its batched write-back.

use std::io;

pub(crate) mod dirty_guard;
#[cfg(feature = "backend-std")]
pub mod engine_std;
#[cfg(feature = "backend-uring")]
pub mod engine_uring;

use crate::wal::HEADER_LEN;

/// One piece of a scattered read: `len` bytes at `file_off` into
/// `buf[buf_off..]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReadSeg {
    pub file_off: u64,
    pub buf_off: usize,
    pub len: usize,
}

/// An operation for an executor.
pub(crate) enum IoOp {
    /// A WAL record: header then data, laid over one or two ring pieces
    /// (`(file_offset, len)`; a zero-length second piece is unused), followed
    /// by an fdatasync when `sync` (io_uring: a linked SQE).
    WalWrite {
        hdr: Box<[u8; HEADER_LEN]>,
        data: Vec<u8>,
        pieces: [(u64, u64); 2],
        sync: bool,
    },
    /// Reads into `buf`.
    Read { buf: Vec<u8>, segs: Vec<ReadSeg> },
}

/// A finished [`IoOp`], buffers returned.
pub(crate) struct IoDone {
    pub token: u64,
    pub result: io::Result<()>,
    pub op: IoOp,
}

/// The slices of the virtual byte string `hdr ++ data` in `[start, start+len)`.
pub(crate) fn record_slices<'a>(
    hdr: &'a [u8; HEADER_LEN],
    data: &'a [u8],
    start: usize,
    len: usize,
) -> ([&'a [u8]; 2], usize) {
    let end = start + len;
    let h_end = HEADER_LEN.min(end);
    let mut out: [&[u8]; 2] = [&[], &[]];
    let mut n = 0;
    if start < HEADER_LEN {
        out[n] = &hdr[start..h_end];
        n += 1;
    }
    if end > HEADER_LEN {
        let ds = start.saturating_sub(HEADER_LEN);
        out[n] = &data[ds..end - HEADER_LEN];
        n += 1;
    }
    (out, n)
}

/// Write-back I/O of the flusher.
pub(crate) trait FlushIo: Send {
    /// Read `buf.len()` bytes at `off`.
    fn read(&mut self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write every `(offset, bytes)` pair; in any order, all before return.
    fn write_batch(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()>;
    /// Deallocate ranges.
    fn punch(&mut self, off: u64, len: u64) -> io::Result<()>;
}

/// Flusher I/O over a [`Storage`], one call at a time.
pub(crate) struct StdFlushIo {
    pub storage: std::sync::Arc<dyn crate::storage::Storage>,
}

impl FlushIo for StdFlushIo {
    fn read(&mut self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.storage.read_at(buf, off)
    }
    fn write_batch(&mut self, writes: &[(u64, &[u8])]) -> io::Result<()> {
        for (off, b) in writes {
            self.storage.write_at(&[b], *off)?;
        }
        Ok(())
    }
    fn punch(&mut self, off: u64, len: u64) -> io::Result<()> {
        self.storage.punch_hole(off, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_cover_the_virtual_record() {
        let hdr = [1u8; HEADER_LEN];
        let data: Vec<u8> = (0..100u8).collect();
        let (s, n) = record_slices(&hdr, &data, 0, 164);
        assert_eq!(n, 2);
        assert_eq!(s[0].len(), 64);
        assert_eq!(s[1], &data[..]);
        let (s, n) = record_slices(&hdr, &data, 10, 20);
        assert_eq!((n, s[0].len()), (1, 20));
        let (s, n) = record_slices(&hdr, &data, 64 + 50, 50);
        assert_eq!((n, s[0]), (1, &data[50..]));
        let (s, n) = record_slices(&hdr, &data, 60, 10);
        assert_eq!((n, s[0].len(), s[1]), (2, 4, &data[..6]));
    }
}
