//! Engine settings. Libraries never read the environment, files or argv:
//! callers build these (from TOML or flags) and call [`VolumeConfig::validate`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::superblock::EXTENT_ALIGN;
use crate::wal::MIN_WAL_SIZE;

/// Which I/O backend to run (`standard | auto | io_uring`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum BackendMode {
    /// pread/pwrite/fdatasync on worker threads.
    #[default]
    Standard,
    /// io_uring when compiled in and usable, else standard (with a warning).
    Auto,
    /// io_uring or an error at open.
    IoUring,
}

impl FromStr for BackendMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<BackendMode> {
        match s.trim().to_ascii_lowercase().as_str() {
            "standard" | "std" => Ok(BackendMode::Standard),
            "auto" => Ok(BackendMode::Auto),
            "io_uring" | "iouring" | "uring" => Ok(BackendMode::IoUring),
            other => Err(Error::InvalidArgument(format!(
                "unknown I/O backend {other:?} (expected standard, auto or io_uring)"
            ))),
        }
    }
}

impl fmt::Display for BackendMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendMode::Standard => "standard",
            BackendMode::Auto => "auto",
            BackendMode::IoUring => "io_uring",
        })
    }
}

/// Runtime settings of an open volume.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeConfig {
    /// I/O backend to use.
    pub backend: BackendMode,
    /// Advertise a volatile write cache: writes are durable at the next
    /// flush (or when FUA). `false` is write-through: every write is durable
    /// at completion, concurrent writes sharing one fdatasync.
    pub write_cache: bool,
    /// WAL fill fraction above which writers are slowed.
    pub wal_soft_watermark: f64,
    /// WAL fill fraction above which writers wait for the flusher.
    pub wal_hard_watermark: f64,
    /// Longest a write waits above the hard watermark before failing with
    /// [`crate::ErrorKind::WalFull`].
    pub admission_timeout: Duration,
    /// Delay given to a write above the soft watermark.
    pub soft_delay: Duration,
    /// The flusher runs at least this often while the WAL is not empty.
    pub flush_interval: Duration,
    /// WAL fill fraction at which the flusher starts at once.
    pub flush_threshold: f64,
    /// Worker threads of the standard backend.
    pub io_threads: usize,
    /// Submission-queue entries of each io_uring.
    pub uring_entries: u32,
    /// Both backends: WAL writes without a sync (cached writes) are
    /// written by the submitting thread, a buffered `pwritev` into the page
    /// cache, while the kernel's dirty pages (and those of the process's
    /// memory cgroup, when it has a limit) are far below the write-back
    /// threshold (so the write is not throttled); otherwise, and when off,
    /// through the ring, where ext4 hands every buffered write to an io-wq
    /// worker thread, or by the standard backend's worker threads. A
    /// durable (FUA or write-through) write is then written the same way
    /// and made durable by group commit's fdatasync; on io_uring never by a
    /// linked write+fdatasync, on the standard backend only when it cannot
    /// be written inline.
    pub wal_inline_writes: bool,
    /// How long [`crate::Handle::wait`] polls for a completion before it
    /// sleeps, when operations are in flight (0: sleep at once).
    pub wait_spin: Duration,
}

impl Default for VolumeConfig {
    fn default() -> Self {
        VolumeConfig {
            backend: BackendMode::Standard,
            write_cache: true,
            wal_soft_watermark: 0.7,
            wal_hard_watermark: 0.9,
            admission_timeout: Duration::from_secs(5),
            soft_delay: Duration::from_micros(200),
            flush_interval: Duration::from_secs(1),
            flush_threshold: 0.25,
            io_threads: 2,
            uring_entries: 256,
            wal_inline_writes: true,
            wait_spin: Duration::from_micros(50),
        }
    }
}

impl VolumeConfig {
    /// Check the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        let frac = |v: f64| v > 0.0 && v <= 1.0;
        if !frac(self.wal_soft_watermark) || !frac(self.wal_hard_watermark) {
            return bad("WAL watermarks must be in (0, 1]".into());
        }
        if self.wal_soft_watermark > self.wal_hard_watermark {
            return bad("wal_soft_watermark is above wal_hard_watermark".into());
        }
        if !frac(self.flush_threshold) {
            return bad("flush_threshold must be in (0, 1]".into());
        }
        if self.io_threads == 0 || self.io_threads > 64 {
            return bad("io_threads must be 1..=64".into());
        }
        if !(8..=4096).contains(&self.uring_entries) || !self.uring_entries.is_power_of_two() {
            return bad("uring_entries must be a power of two in 8..=4096".into());
        }
        if self.wait_spin > Duration::from_millis(100) {
            return bad("wait_spin must be at most 100 ms".into());
        }
        if self.flush_interval.is_zero() {
            return bad("flush_interval must be positive".into());
        }
        Ok(())
    }
}

/// Geometry of a new volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateOptions {
    /// Logical size in bytes; a multiple of `block_size`.
    pub size: u64,
    /// 512 or 4096.
    pub block_size: u32,
    /// WAL ring bytes; a multiple of 4 KiB, at least 64 KiB.
    pub wal_size: u64,
}

impl CreateOptions {
    /// A volume of `size` bytes with 4 KiB blocks and the default WAL size.
    pub fn new(size: u64) -> CreateOptions {
        CreateOptions {
            size,
            block_size: 4096,
            wal_size: default_wal_size(size),
        }
    }

    /// Check the geometry.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(m));
        if self.block_size != 512 && self.block_size != 4096 {
            return bad(format!("block size {} is not 512 or 4096", self.block_size));
        }
        if self.size == 0 || self.size % u64::from(self.block_size) != 0 {
            return bad(format!(
                "size {} is not a positive multiple of the block size {}",
                self.size, self.block_size
            ));
        }
        check_wal_size(self.wal_size)?;
        if self.size > (1 << 56) {
            return bad("size too large".into());
        }
        Ok(())
    }

    /// Byte offset of the extent region for this geometry.
    pub fn extent_offset(&self) -> u64 {
        (crate::superblock::WAL_OFFSET + self.wal_size).div_ceil(EXTENT_ALIGN) * EXTENT_ALIGN
    }
}

/// Check a WAL ring size: a multiple of 4 KiB, at least 64 KiB, at most
/// 1 TiB.
pub fn check_wal_size(wal_size: u64) -> Result<()> {
    if wal_size < MIN_WAL_SIZE || wal_size % 4096 != 0 {
        return Err(Error::InvalidArgument(format!(
            "WAL size {wal_size} must be a multiple of 4 KiB and at least {MIN_WAL_SIZE} bytes"
        )));
    }
    if wal_size > (1 << 40) {
        return Err(Error::InvalidArgument("WAL size too large".into()));
    }
    Ok(())
}

/// Default WAL size for a volume: a quarter of it, between 1 MiB and
/// 256 MiB (256 MiB from a 1 GiB volume up).
///
/// The WAL is what absorbs a write burst while the flusher writes back and
/// syncs the extent region; a small one makes writers wait on admission
/// whenever one extent sync is slow. Measured (docs/performance.md): 4 KiB
/// random writes at QD32 over 256 MiB of a 1 GiB volume, 20 s, sustained
/// 150K IOPS (p99 1.2 ms) with a 64 MiB WAL and 183K (p99 0.6 ms) with
/// 256 MiB. The ring is written once at creation (256 MiB: under a second).
pub fn default_wal_size(size: u64) -> u64 {
    (size / 4).clamp(1 << 20, 256 << 20) / 4096 * 4096
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_wal_is_a_quarter_of_the_volume_within_bounds() {
        assert_eq!(default_wal_size(1 << 20), 1 << 20);
        assert_eq!(default_wal_size(64 << 20), 16 << 20);
        assert_eq!(default_wal_size(1 << 30), 256 << 20);
        assert_eq!(default_wal_size(100 << 30), 256 << 20);
        // Always whole 4 KiB pages, and a valid geometry.
        let odd = (10 << 20) + 4096 * 3;
        assert_eq!(default_wal_size(odd) % 4096, 0);
        CreateOptions::new(odd).validate().unwrap();
    }
}
