//! The file a volume lives in, as the engine's threads see it.
//!
//! [`FileStorage`] is a real file; the crash simulator (`sim`) implements the
//! same trait in memory. The `std` backend does all its I/O through this
//! trait; the `io_uring` backend uses the raw descriptor of a real file.

use std::fs::File;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::fs::FileExt;

/// Positioned I/O on the volume file.
pub trait Storage: Send + Sync + 'static {
    /// Fill `buf` from `off`; bytes past the end of the file read as zeros.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()>;
    /// Write all of `bufs`, back to back, at `off`.
    fn write_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()>;
    /// fdatasync: every write completed before the call is durable when it
    /// returns.
    fn sync_data(&self) -> io::Result<()>;
    /// Deallocate `[off, off + len)`; it reads as zeros afterwards.
    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()>;
    /// Current length.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Grow (or set) the length.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The descriptor, for backends that submit to the kernel directly.
    fn raw_fd(&self) -> Option<RawFd>;
}

/// A volume file on a real file system.
#[derive(Debug)]
pub struct FileStorage {
    file: File,
}

impl FileStorage {
    /// Wrap an open file (read and write).
    pub fn new(file: File) -> FileStorage {
        FileStorage { file }
    }
}

impl Storage for FileStorage {
    fn read_at(&self, mut buf: &mut [u8], mut off: u64) -> io::Result<()> {
        while !buf.is_empty() {
            match self.file.read_at(buf, off) {
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

    fn write_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()> {
        if let [one] = bufs {
            return self.file.write_all_at(one, off);
        }
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        let mut done = 0usize;
        while done < total {
            // Build the iovecs of what is left.
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
            match rustix::io::pwritev(self.file.as_fd(), &iov, off + done as u64) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "pwritev wrote 0")),
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        use rustix::fs::FallocateFlags;
        match rustix::fs::fallocate(
            self.file.as_fd(),
            FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
            off,
            len,
        ) {
            Ok(()) => Ok(()),
            // A file system without hole punching: write zeros instead.
            Err(rustix::io::Errno::OPNOTSUPP) | Err(rustix::io::Errno::NOSYS) => {
                let zeros = vec![0u8; 1 << 20];
                let mut done = 0u64;
                while done < len {
                    let n = (len - done).min(zeros.len() as u64);
                    let n_usize = usize::try_from(n).unwrap_or(zeros.len());
                    self.file.write_all_at(&zeros[..n_usize], off + done)?;
                    done += n;
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }
}
