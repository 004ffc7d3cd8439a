//! The files a volume lives in, as the engine's threads see them.
//!
//! The engine addresses one linear space: superblock slots, WAL ring, extent
//! region (`superblock.rs`). [`FileStorage`] keeps it in two files: the
//! *meta* file `PATH` (superblock and WAL, exactly `extent_offset` bytes) and
//! the *extent* file `PATH.extent` (the extent region, sparse). Two inodes,
//! because fdatasync writes back every dirty page of its file: with one file,
//! the fdatasync of a durable WAL write also had to write back megabytes of
//! extent pages the flusher had just written, and measured here its p50 went
//! from 139 µs to 1.5–2 ms under write-back load (see `docs/durability.md`).
//! [`Storage::sync_wal`] syncs only the meta file, [`Storage::sync_extents`]
//! only the extent file; [`Storage::sync_data`] syncs both.
//!
//! The crash simulator (`sim`) implements the same trait in memory, with the
//! same two sync domains.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Positioned I/O on the volume's linear address space.
pub trait Storage: Send + Sync + 'static {
    /// Fill `buf` from `off`; bytes past the end read as zeros.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write all of `bufs`, back to back, at `off` (never across the
    /// meta/extent boundary).
    fn write_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()>;
    /// fdatasync of everything: every write completed before the call is
    /// durable when it returns.
    fn sync_data(&self) -> io::Result<()>;
    /// fdatasync of the superblock and WAL only: every write below
    /// `wal_end` (the start of the extent region) completed before the call
    /// is durable when it returns.
    fn sync_wal(&self, wal_end: u64) -> io::Result<()> {
        let _ = wal_end;
        self.sync_data()
    }
    /// fdatasync of the extent region only: every write at or above
    /// `extent_start` completed before the call is durable when it returns;
    /// the superblock and WAL are not written back. The flusher's
    /// write-back takes it. The default syncs everything.
    fn sync_extents(&self, extent_start: u64) -> io::Result<()> {
        let _ = extent_start;
        self.sync_data()
    }
    /// Write `buf` at `off` and make that range durable, and nothing else:
    /// other dirty data of the file is not written back (a `pwritev2` with
    /// `RWF_DSYNC`, whose sync covers the written range only). The
    /// superblock update takes this, so the flusher's checkpoint does not
    /// write back the WAL's dirty pages, which no one has asked to be
    /// durable. The default writes and syncs the whole meta file.
    fn write_durable_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.write_at(&[buf], off)?;
        self.sync_wal(off + buf.len() as u64)
    }
    /// Deallocate `[off, off + len)`; it reads as zeros afterwards.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    /// Current length of the address space.
    fn len(&self) -> io::Result<u64>;
    /// Whether the address space is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Grow (or set) the length of the address space.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Descriptors, for backends that submit to the kernel directly.
    fn fds(&self) -> Option<Fds>;
}

/// The descriptors behind a [`FileStorage`] and where the address space
/// switches from one to the other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fds {
    /// Superblock and WAL: offsets below `split`.
    pub meta: RawFd,
    /// Extent region: offset `o >= split` is `o - split` in this file.
    pub extent: RawFd,
    /// First offset of the extent region.
    pub split: u64,
}

impl Fds {
    /// The descriptor and file offset of address `off`.
    pub fn route(&self, off: u64) -> (RawFd, u64) {
        if off >= self.split {
            (self.extent, off - self.split)
        } else {
            (self.meta, off)
        }
    }
}

/// The extent file that goes with the meta file `path`.
pub fn extent_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".extent");
    PathBuf::from(p)
}

/// A volume on a real file system: meta file and extent file.
#[derive(Debug)]
pub struct FileStorage {
    meta: File,
    extent: File,
    split: u64,
}

impl FileStorage {
    /// Create both files for a volume whose extent region starts at `split`
    /// (neither may exist).
    pub fn create(path: &Path, split: u64) -> io::Result<FileStorage> {
        let open = |p: &Path| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(p)
        };
        let meta = open(path)?;
        let extent = match open(&extent_path(path)) {
            Ok(f) => f,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        meta.set_len(split)?;
        Ok(FileStorage {
            meta,
            extent,
            split,
        })
    }

    /// Open the files of an existing volume. The meta file's length is
    /// where the extent region starts.
    pub fn open(path: &Path, write: bool) -> io::Result<FileStorage> {
        let open = |p: &Path| OpenOptions::new().read(true).write(write).open(p);
        let meta = open(path)?;
        let extent = open(&extent_path(path)).map_err(|e| {
            io::Error::new(e.kind(), format!("{}: {e}", extent_path(path).display()))
        })?;
        let split = meta.metadata()?.len();
        Ok(FileStorage {
            meta,
            extent,
            split,
        })
    }

    fn route(&self, off: u64) -> (&File, u64) {
        if off >= self.split {
            (&self.extent, off - self.split)
        } else {
            (&self.meta, off)
        }
    }
}

fn read_full(f: &File, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match f.read_at(buf, off) {
            Ok(0) => {
                buf.fill(0);
                return Ok(());
            }
            Ok(n) => {
                buf = &mut buf[n..];
                off += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn write_vectored(f: &File, bufs: &[&[u8]], off: u64) -> io::Result<()> {
    if let [one] = bufs {
        return f.write_all_at(one, off);
    }
    let total: usize = bufs.iter().map(|b| b.len()).sum();
    let mut done = 0usize;
    while done < total {
        let mut skip = done;
        let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(bufs.len());
        for b in bufs {
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            iov.push(IoSlice::new(&b[skip..]));
            skip = 0;
        }
        match rustix::io::pwritev(f.as_fd(), &iov, off + done as u64) {
            Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote 0")),
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Deallocate a range of `f`, writing zeros where the file system cannot.
pub(crate) fn punch(f: &File, off: u64, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags;
    match rustix::fs::fallocate(
        f.as_fd(),
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        off,
        len,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
            let zeros = vec![0u8; 1 << 20];
            let mut done = 0u64;
            while done < len {
                let n = (len - done).min(zeros.len() as u64);
                let n_usize = usize::try_from(n).unwrap_or(zeros.len());
                f.write_all_at(&zeros[..n_usize], off + done)?;
                done += n;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

impl Storage for FileStorage {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let (f, o) = self.route(off);
        read_full(f, buf, o)
    }

    fn write_durable_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        use rustix::io::{Errno, ReadWriteFlags};
        let (f, o) = self.route(off);
        loop {
            match rustix::io::pwritev2(f.as_fd(), &[IoSlice::new(buf)], o, ReadWriteFlags::DSYNC) {
                Ok(n) if n == buf.len() => return Ok(()),
                Err(Errno::INTR) => {}
                // Short, or no RWF_DSYNC here: write it all and sync the file.
                Ok(_) | Err(Errno::OPNOTSUPP | Errno::NOSYS | Errno::INVAL) => {
                    f.write_all_at(buf, o)?;
                    return f.sync_data();
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn write_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()> {
        let (f, o) = self.route(off);
        write_vectored(f, bufs, o)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.extent.sync_data()?;
        self.meta.sync_data()
    }

    fn sync_wal(&self, wal_end: u64) -> io::Result<()> {
        if wal_end > self.split {
            return self.sync_data();
        }
        self.meta.sync_data()
    }

    fn sync_extents(&self, extent_start: u64) -> io::Result<()> {
        if extent_start < self.split {
            return self.sync_data();
        }
        self.extent.sync_data()
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        let (f, o) = self.route(off);
        punch(f, o, len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.split + self.extent.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.extent.set_len(len.saturating_sub(self.split))
    }

    fn fds(&self) -> Option<Fds> {
        Some(Fds {
            meta: self.meta.as_raw_fd(),
            extent: self.extent.as_raw_fd(),
            split: self.split,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A durable write lands where a plain write would, in either file, and
    /// is read back through a fresh open.
    #[test]
    fn durable_writes_land_in_the_routed_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.keel");
        let split = 64 << 10;
        let s = FileStorage::create(&path, split).unwrap();
        s.write_at(&[&[7u8; 8192]], 4096).unwrap();
        s.write_durable_at(&[1u8; 4096], 4096).unwrap();
        s.write_durable_at(&[2u8; 4096], split + 8192).unwrap();
        drop(s);
        let s = FileStorage::open(&path, false).unwrap();
        let mut b = vec![0u8; 8192];
        s.read_at(&mut b, 4096).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 1) && b[4096..].iter().all(|&x| x == 7));
        s.read_at(&mut b, split + 4096).unwrap();
        assert!(b[..4096].iter().all(|&x| x == 0) && b[4096..].iter().all(|&x| x == 2));
        assert_eq!(std::fs::metadata(&path).unwrap().len(), split);
    }
}
