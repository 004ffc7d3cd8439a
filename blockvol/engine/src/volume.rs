//! A volume: the device. Opening runs recovery, selects the I/O backend and
//! starts the group-commit and flusher threads; [`Volume::handle`] gives each
//! reactor its own submission path.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::config::{BackendMode, CreateOptions, VolumeConfig};
use crate::dirty_map::DirtyMap;
use crate::error::{Error, Result};
use crate::group_commit::GroupCommit;
use crate::handle::Handle;
use crate::notify::Notifier;
use crate::recovery;
use crate::stats::{Stats, StatsSnapshot};
use crate::storage::{FileStorage, Storage};
use crate::superblock::{self, DurabilityMode, Role, Superblock, SLOT_SIZE, WAL_OFFSET};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// WAL allocation state: the only step serialised per volume.
pub(crate) struct Alloc {
    pub next_lsn: u64,
    pub head: u64,
    pub tail: u64,
    pub gen: u64,
    pub epoch: u64,
}

pub(crate) struct SbState {
    pub sb: Superblock,
    pub slot: usize,
}

#[derive(Default)]
pub(crate) struct FlushReq {
    pub kick: bool,
    pub stop: bool,
}

/// The backend chosen at open.
pub(crate) enum BackendKind {
    #[cfg(feature = "backend-std")]
    Std(crate::backend::engine_std::StdPool),
    #[cfg(feature = "backend-uring")]
    Uring { fds: crate::storage::Fds },
}

pub(crate) struct Inner {
    pub storage: Arc<dyn Storage>,
    pub block_size: u32,
    pub wal_offset: u64,
    pub wal_size: u64,
    pub extent_offset: u64,
    pub uuid: [u8; 16],
    pub blocks: AtomicU64,
    pub max_write_blocks: u32,
    pub sb: Mutex<SbState>,
    pub alloc: Mutex<Alloc>,
    pub dirty: Mutex<DirtyMap>,
    pub reclaim_seq: AtomicU64,
    pub gc: GroupCommit,
    pub flush: Mutex<FlushReq>,
    pub flush_cv: Condvar,
    pub flush_kicked: AtomicBool,
    pub stats: Stats,
    pub cfg: VolumeConfig,
    pub write_cache: AtomicBool,
    pub failed: Mutex<Option<String>>,
    pub is_failed: AtomicBool,
    pub closed: AtomicBool,
    pub space_waiters: Mutex<Vec<Weak<Notifier>>>,
    pub backend: BackendKind,
    pub backend_name: &'static str,
    pub backend_reason: String,
}

impl Inner {
    /// Write the superblock through `f`, into the slot that does not hold the
    /// newest copy, and sync. The only way the superblock changes.
    pub fn persist_sb(&self, f: impl FnOnce(&mut Superblock)) -> Result<Superblock> {
        let mut st = lock(&self.sb);
        let mut sb = st.sb.clone();
        f(&mut sb);
        sb.seq += 1;
        let slot = 1 - st.slot;
        // Only the slot is made durable: a sync of the whole meta file
        // would also write back every dirty WAL page, megabytes per
        // flusher pass under cached writes that nobody asked to be durable.
        self.storage
            .write_durable_at(&sb.encode(), slot as u64 * SLOT_SIZE)?;
        Stats::add(&self.stats.fdatasyncs, 1);
        st.sb = sb.clone();
        st.slot = slot;
        Ok(sb)
    }

    /// Stop accepting writes after an I/O error: the page cache may have
    /// dropped data that was never made durable (fsync errors are not
    /// retried: the kernel may already have forgotten the dirty pages).
    pub fn fail(&self, msg: &str) {
        {
            let mut f = lock(&self.failed);
            if f.is_none() {
                tracing::error!("volume failed: {msg}");
                *f = Some(msg.to_string());
            }
        }
        self.is_failed.store(true, Ordering::SeqCst);
        self.gc.fail(msg);
    }

    pub fn failed_error(&self) -> Option<Error> {
        if !self.is_failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.failed).clone().map(Error::Failed)
    }

    pub fn kick_flusher(&self) {
        if !self.flush_kicked.swap(true, Ordering::AcqRel) {
            lock(&self.flush).kick = true;
            self.flush_cv.notify_all();
        }
    }

    /// Wake every handle that parked a write for WAL space.
    pub fn wake_space_waiters(&self) {
        let waiters = std::mem::take(&mut *lock(&self.space_waiters));
        for w in waiters {
            if let Some(n) = w.upgrade() {
                n.signal();
            }
        }
    }
}

/// Geometry and identity of an open volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeInfo {
    /// Volume identity.
    pub uuid: [u8; 16],
    /// Logical size in bytes.
    pub size: u64,
    /// Logical block size.
    pub block_size: u32,
    /// Capacity in blocks.
    pub blocks: u64,
    /// Largest write (and write-zeroes with data) in blocks; targets
    /// advertise it (MDTS, block limits VPD).
    pub max_write_blocks: u32,
    /// WAL ring bytes.
    pub wal_size: u64,
}

/// WAL pressure relative to the watermarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pressure {
    /// Below the soft watermark.
    Normal,
    /// Writers are slowed.
    Soft,
    /// Writers wait for the flusher.
    Hard,
}

impl Pressure {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Pressure::Normal => "normal",
            Pressure::Soft => "soft",
            Pressure::Hard => "hard",
        }
    }
}

/// What a server shows about a volume.
#[derive(Clone, Debug)]
pub struct VolumeStatus {
    /// Geometry.
    pub info: VolumeInfo,
    /// WAL bytes holding records not yet written back.
    pub wal_used: u64,
    /// `wal_used / wal_size`.
    pub wal_used_fraction: f64,
    /// Pressure band.
    pub pressure: Pressure,
    /// Next LSN to be assigned.
    pub next_lsn: u64,
    /// Every record up to this LSN is in the WAL.
    pub written_lsn: u64,
    /// Every record up to this LSN is durable.
    pub durable_lsn: u64,
    /// Every record up to this LSN is in the extent region.
    pub checkpoint_lsn: u64,
    /// Written records the flusher has still to write back.
    pub flusher_lag_lsn: u64,
    /// Blocks whose newest content is only in the WAL.
    pub dirty_blocks: u64,
    /// Selected backend (`standard` or `io_uring`).
    pub backend: &'static str,
    /// Why it was selected.
    pub backend_reason: String,
    /// Volatile write cache on.
    pub write_cache: bool,
    /// Set after an I/O error.
    pub failed: Option<String>,
    /// Replication epoch.
    pub epoch: u64,
    /// Replication role.
    pub role: Role,
    /// Durability mode.
    pub durability: DurabilityMode,
    /// Counters.
    pub stats: StatsSnapshot,
}

/// An open volume.
pub struct Volume {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Volume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Volume")
            .field("info", &self.info())
            .finish()
    }
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_uuid() -> [u8; 16] {
    let mut u = [0u8; 16];
    if rustix::rand::getrandom(&mut u, rustix::rand::GetRandomFlags::empty()).is_err() {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        u.copy_from_slice(&t.to_le_bytes());
    }
    u[6] = (u[6] & 0x0f) | 0x40;
    u[8] = (u[8] & 0x3f) | 0x80;
    u
}

/// Format the superblock of a new volume onto empty storage.
pub fn format(storage: &dyn Storage, opts: &CreateOptions) -> Result<Superblock> {
    opts.validate()?;
    let sb = Superblock {
        uuid: new_uuid(),
        seq: 1,
        size: opts.size,
        block_size: opts.block_size,
        wal_offset: WAL_OFFSET,
        wal_size: opts.wal_size,
        extent_offset: opts.extent_offset(),
        checkpoint_lsn: 0,
        wal_tail: 0,
        wal_gen: 1,
        epoch: 0,
        role: Role::Standalone,
        durability: DurabilityMode::BestEffort,
        flags: 0,
        created_unix: now_unix(),
    };
    sb.validate()?;
    storage.set_len(sb.required_len())?;
    // Both slots valid from the start; slot B is the older copy.
    let mut b = sb.clone();
    b.seq = 0;
    storage.write_at(&[&sb.encode()], 0)?;
    storage.write_at(&[&b.encode()], SLOT_SIZE)?;
    // Write the whole WAL ring once. Nothing left in a reused file can look
    // like a record, and every later WAL write overwrites allocated blocks:
    // a write into a hole makes the file system allocate, and the fdatasync
    // of a durable write then waits for a journal commit too (about 2x the
    // latency on ext4).
    let zeros = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while at < opts.wal_size {
        let n = (opts.wal_size - at).min(zeros.len() as u64);
        let n_us = usize::try_from(n).unwrap_or(zeros.len());
        storage.write_at(&[&zeros[..n_us]], WAL_OFFSET + at)?;
        at += n;
    }
    storage.sync_data()?;
    Ok(sb)
}

/// Read and validate the superblock (newest valid slot) and the file length.
pub fn read_superblock(storage: &dyn Storage) -> Result<(Superblock, usize)> {
    let len = storage.len()?;
    if len < 2 * SLOT_SIZE {
        // Too short to hold a superblock: tell "not a volume" from "cut".
        let mut head = vec![0u8; 8];
        storage.read_at(&mut head, 0)?;
        return Err(if head[..] == superblock::MAGIC {
            Error::Truncated {
                expected: 2 * SLOT_SIZE,
                actual: len,
            }
        } else {
            Error::NotAVolume
        });
    }
    let mut a = vec![0u8; crate::superblock::SLOT_BYTES];
    let mut b = vec![0u8; crate::superblock::SLOT_BYTES];
    storage.read_at(&mut a, 0)?;
    storage.read_at(&mut b, SLOT_SIZE)?;
    let (sb, slot) = superblock::choose(Superblock::decode(&a), Superblock::decode(&b))?;
    if let Some(fds) = storage.fds() {
        if fds.split != sb.extent_offset {
            return Err(if fds.split < sb.extent_offset {
                Error::Truncated {
                    expected: sb.extent_offset,
                    actual: fds.split,
                }
            } else {
                Error::Corrupt(format!(
                    "meta file is {} bytes but its superblock puts the extent region at {}",
                    fds.split, sb.extent_offset
                ))
            });
        }
    }
    if len < sb.required_len() {
        return Err(Error::Truncated {
            expected: sb.required_len(),
            actual: len,
        });
    }
    Ok((sb, slot))
}

fn select_backend(
    cfg: &VolumeConfig,
    storage: &Arc<dyn Storage>,
    wal_end: u64,
) -> Result<(BackendKind, &'static str, String)> {
    let uring = |why_not: &mut String| -> Option<BackendKind> {
        #[cfg(feature = "backend-uring")]
        {
            let Some(fds) = storage.fds() else {
                *why_not = "the storage has no file descriptor".into();
                return None;
            };
            match crate::backend::engine_uring::probe() {
                Ok(()) => Some(BackendKind::Uring { fds }),
                Err(e) => {
                    *why_not = format!("io_uring setup failed: {e}");
                    None
                }
            }
        }
        #[cfg(not(feature = "backend-uring"))]
        {
            *why_not = "io_uring support is not compiled in (cargo feature backend-uring)".into();
            None
        }
    };
    let standard = |why: String| -> Result<(BackendKind, &'static str, String)> {
        #[cfg(feature = "backend-std")]
        {
            let pool = crate::backend::engine_std::StdPool::start(
                Arc::clone(storage),
                cfg.io_threads,
                wal_end,
                "vol",
            )?;
            Ok((BackendKind::Std(pool), "standard", why))
        }
        #[cfg(not(feature = "backend-std"))]
        {
            let _ = (why, wal_end);
            Err(Error::BackendUnavailable(
                "the standard backend is not compiled in (cargo feature backend-std)".into(),
            ))
        }
    };
    let mut why_not = String::new();
    match cfg.backend {
        BackendMode::Standard => standard("requested".into()),
        BackendMode::IoUring => match uring(&mut why_not) {
            Some(b) => Ok((b, "io_uring", "requested".into())),
            None => Err(Error::BackendUnavailable(why_not)),
        },
        BackendMode::Auto => match uring(&mut why_not) {
            Some(b) => Ok((b, "io_uring", "auto: io_uring available".into())),
            None => {
                tracing::warn!("io backend: auto falls back to standard: {why_not}");
                standard(format!("auto: {why_not}"))
            }
        },
    }
}

impl Volume {
    /// Create a new volume file at `path` (it must not exist) and open it.
    pub fn create(path: &Path, opts: &CreateOptions, cfg: &VolumeConfig) -> Result<Volume> {
        opts.validate()?;
        cfg.validate()?;
        let storage: Arc<dyn Storage> = Arc::new(FileStorage::create(path, opts.extent_offset())?);
        if let Err(e) = format(&*storage, opts) {
            let _ = std::fs::remove_file(path);
            let _ = std::fs::remove_file(crate::storage::extent_path(path));
            return Err(e);
        }
        Volume::open_storage(storage, cfg)
    }

    /// Open an existing volume file, replaying its WAL.
    pub fn open(path: &Path, cfg: &VolumeConfig) -> Result<Volume> {
        Volume::open_storage(Arc::new(FileStorage::open(path, true)?), cfg)
    }

    /// Open a volume on any storage (the crash simulator, for one).
    pub fn open_storage(storage: Arc<dyn Storage>, cfg: &VolumeConfig) -> Result<Volume> {
        cfg.validate()?;
        let (mut sb, slot) = read_superblock(&*storage)?;
        let walk = recovery::replay(&*storage, &sb)?;
        if walk.records > 0 {
            tracing::info!(
                records = walk.records,
                bytes = walk.data_bytes,
                last_lsn = walk.last_lsn,
                "replayed WAL"
            );
        }
        // New checkpoint and a new WAL generation: records left in the ring
        // from before can never be replayed again.
        let mut next = sb.clone();
        next.checkpoint_lsn = walk.last_lsn;
        next.wal_tail = walk.end;
        next.wal_gen += 1;
        next.seq += 1;
        let new_slot = 1 - slot;
        storage.write_at(&[&next.encode()], new_slot as u64 * SLOT_SIZE)?;
        storage.sync_wal(next.extent_offset)?;
        sb = next;

        let (backend, backend_name, backend_reason) =
            select_backend(cfg, &storage, sb.extent_offset)?;
        tracing::info!(
            requested = %cfg.backend,
            selected = backend_name,
            reason = %backend_reason,
            "io backend"
        );
        let bs = u64::from(sb.block_size);
        let max_write = (sb.wal_size / 4).min(64 << 20) / bs;
        let inner = Arc::new(Inner {
            storage,
            block_size: sb.block_size,
            wal_offset: sb.wal_offset,
            wal_size: sb.wal_size,
            extent_offset: sb.extent_offset,
            uuid: sb.uuid,
            blocks: AtomicU64::new(sb.blocks()),
            max_write_blocks: u32::try_from(max_write).unwrap_or(u32::MAX),
            alloc: Mutex::new(Alloc {
                next_lsn: sb.checkpoint_lsn + 1,
                head: sb.wal_tail,
                tail: sb.wal_tail,
                gen: sb.wal_gen,
                epoch: sb.epoch,
            }),
            gc: GroupCommit::new(sb.checkpoint_lsn),
            sb: Mutex::new(SbState { sb, slot: new_slot }),
            dirty: Mutex::new(DirtyMap::new(u32::try_from(bs).unwrap_or(4096))),
            reclaim_seq: AtomicU64::new(0),
            flush: Mutex::new(FlushReq::default()),
            flush_cv: Condvar::new(),
            flush_kicked: AtomicBool::new(false),
            stats: Stats::default(),
            cfg: cfg.clone(),
            write_cache: AtomicBool::new(cfg.write_cache),
            failed: Mutex::new(None),
            is_failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            space_waiters: Mutex::new(Vec::new()),
            backend,
            backend_name,
            backend_reason,
        });
        let mut threads = Vec::new();
        let i2 = Arc::clone(&inner);
        threads.push(
            std::thread::Builder::new()
                .name("keel-sync".into())
                .spawn(move || {
                    let on_err = |m: &str| i2.fail(m);
                    i2.gc
                        .run(&*i2.storage, i2.extent_offset, &i2.stats, &on_err);
                })?,
        );
        let i3 = Arc::clone(&inner);
        threads.push(
            std::thread::Builder::new()
                .name("keel-flush".into())
                .spawn(move || crate::flusher::run(&i3))?,
        );
        Ok(Volume {
            inner,
            threads: Mutex::new(threads),
        })
    }

    /// A new submission path (one per reactor thread).
    pub fn handle(&self) -> Result<Handle> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed);
        }
        Handle::new(Arc::clone(&self.inner))
    }

    /// Geometry.
    pub fn info(&self) -> VolumeInfo {
        let i = &self.inner;
        let blocks = i.blocks.load(Ordering::Acquire);
        VolumeInfo {
            uuid: i.uuid,
            size: blocks * u64::from(i.block_size),
            block_size: i.block_size,
            blocks,
            max_write_blocks: i.max_write_blocks,
            wal_size: i.wal_size,
        }
    }

    /// Counters.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }

    /// Status for a server's `/status` and `/metrics`.
    pub fn status(&self) -> VolumeStatus {
        let i = &self.inner;
        let (next_lsn, used) = {
            let a = lock(&i.alloc);
            (a.next_lsn, a.head - a.tail)
        };
        let sb = lock(&i.sb).sb.clone();
        let frac = used as f64 / i.wal_size as f64;
        let pressure = if frac >= i.cfg.wal_hard_watermark {
            Pressure::Hard
        } else if frac >= i.cfg.wal_soft_watermark {
            Pressure::Soft
        } else {
            Pressure::Normal
        };
        let written = i.gc.written();
        VolumeStatus {
            info: self.info(),
            wal_used: used,
            wal_used_fraction: frac,
            pressure,
            next_lsn,
            written_lsn: written,
            durable_lsn: i.gc.durable(),
            checkpoint_lsn: sb.checkpoint_lsn,
            flusher_lag_lsn: written.saturating_sub(sb.checkpoint_lsn),
            dirty_blocks: lock(&i.dirty).dirty_blocks(),
            backend: i.backend_name,
            backend_reason: i.backend_reason.clone(),
            write_cache: i.write_cache.load(Ordering::Acquire),
            failed: lock(&i.failed).clone(),
            epoch: sb.epoch,
            role: sb.role,
            durability: sb.durability,
            stats: i.stats.snapshot(),
        }
    }

    /// The current superblock.
    pub fn superblock(&self) -> Superblock {
        lock(&self.inner.sb).sb.clone()
    }

    /// Turn the volatile write cache on or off. Turning it off does not make
    /// earlier writes durable: flush first (as SCSI and NVMe hosts do).
    pub fn set_write_cache(&self, on: bool) {
        self.inner.write_cache.store(on, Ordering::Release);
    }

    /// Whether the volatile write cache is on.
    pub fn write_cache(&self) -> bool {
        self.inner.write_cache.load(Ordering::Acquire)
    }

    /// Grow a standalone volume online to `new_size` bytes.
    pub fn expand(&self, new_size: u64) -> Result<()> {
        let i = &self.inner;
        let bs = u64::from(i.block_size);
        let sb = self.superblock();
        if sb.role != Role::Standalone {
            return Err(Error::InvalidArgument(format!(
                "online expand needs a standalone volume; this one is {}",
                sb.role.as_str()
            )));
        }
        if new_size % bs != 0 || new_size > (1 << 56) {
            return Err(Error::InvalidArgument(format!(
                "new size {new_size} is not a multiple of the block size {bs}"
            )));
        }
        if new_size < sb.size {
            return Err(Error::InvalidArgument(format!(
                "new size {new_size} is smaller than the current size {}: shrinking is not supported",
                sb.size
            )));
        }
        if new_size == sb.size {
            return Ok(());
        }
        i.storage.set_len(i.extent_offset + new_size)?;
        i.storage.sync_data()?;
        i.persist_sb(|s| s.size = new_size)?;
        i.blocks.store(new_size / bs, Ordering::Release);
        tracing::info!(old = sb.size, new = new_size, "volume expanded");
        Ok(())
    }

    /// Persist a new epoch (it never goes backwards).
    pub fn set_epoch(&self, epoch: u64) -> Result<()> {
        let cur = self.superblock().epoch;
        if epoch < cur {
            return Err(Error::InvalidArgument(format!(
                "epoch {epoch} is older than the current {cur}"
            )));
        }
        self.inner.persist_sb(|s| s.epoch = epoch)?;
        lock(&self.inner.alloc).epoch = epoch;
        Ok(())
    }

    /// Persist a new role.
    pub fn set_role(&self, role: Role) -> Result<()> {
        self.inner.persist_sb(|s| s.role = role).map(|_| ())
    }

    /// Persist a new durability mode.
    pub fn set_durability(&self, mode: DurabilityMode) -> Result<()> {
        self.inner.persist_sb(|s| s.durability = mode).map(|_| ())
    }

    /// Close: refuse new I/O, wait for writes in flight, write everything
    /// back, checkpoint and stop the threads. Data is durable either way;
    /// a closed volume opens without replay.
    pub fn close(self) -> Result<()> {
        let i = Arc::clone(&self.inner);
        i.closed.store(true, Ordering::Release);
        let target = lock(&i.alloc).next_lsn - 1;
        let deadline = Instant::now() + Duration::from_secs(30);
        while i.gc.written() < target
            && Instant::now() < deadline
            && !i.is_failed.load(Ordering::Acquire)
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.stop_threads();
        if let Some(e) = i.failed_error() {
            return Err(e);
        }
        Ok(())
    }

    fn stop_threads(&self) {
        {
            let mut f = lock(&self.inner.flush);
            f.stop = true;
        }
        self.inner.flush_cv.notify_all();
        self.inner.gc.stop();
        for t in lock(&self.threads).drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::Release);
        self.stop_threads();
    }
}
