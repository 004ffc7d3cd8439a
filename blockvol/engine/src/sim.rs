//! Crash simulator: a [`Storage`] that keeps unsynced writes in memory and,
//! on a simulated power loss, drops, reorders or tears them at random.
//!
//! Reads see every write (like a page cache). `sync_data` makes every write
//! completed before it durable. [`SimStorage::crash_after`] arms a power loss
//! at the n-th storage operation from now, so crash points land anywhere in
//! the engine's sequences (between a WAL write and its sync, between the
//! flusher's extent writes and its superblock update, ...). After the crash
//! every operation fails with EIO; [`SimStorage::crash_image`] is what the disk
//! holds, and [`SimStorage::from_image`] boots a new "machine" from it.
//!
//! Simplification: `set_len` is durable at once (the engine syncs after it
//! anyway). Punching a hole is modelled as a write of zeros.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::storage::Storage;

const SECTOR: usize = 512;

struct State {
    current: Vec<u8>,
    durable: Vec<u8>,
    pending: Vec<(u64, Vec<u8>)>,
    crash_image: Option<Vec<u8>>,
    rng: StdRng,
}

/// In-memory storage with simulated power loss.
pub struct SimStorage {
    state: Mutex<State>,
    stall: Mutex<Option<(u64, u64)>>,
    stall_cv: std::sync::Condvar,
    ops: AtomicU64,
    crash_at: AtomicU64,
    syncs: AtomicU64,
    jitter: bool,
}

impl std::fmt::Debug for SimStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimStorage")
            .field("ops", &self.ops())
            .field("crashed", &self.crashed())
            .finish()
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl SimStorage {
    /// One sync domain: pending writes at offsets `domain` accepts become
    /// durable, the others stay volatile.
    fn sync_where(&self, domain: impl Fn(u64) -> bool) -> io::Result<()> {
        let mut st = self.begin()?;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let pending = std::mem::take(&mut st.pending);
        let mut keep = Vec::new();
        for (off, data) in pending {
            if domain(off) {
                apply(&mut st.durable, off, &data);
            } else {
                keep.push((off, data));
            }
        }
        st.pending = keep;
        Ok(())
    }

    /// An empty device; `seed` drives every random choice of the crash.
    pub fn new(seed: u64) -> SimStorage {
        SimStorage::from_image(Vec::new(), seed)
    }

    /// A device whose durable content is `image`.
    pub fn from_image(image: Vec<u8>, seed: u64) -> SimStorage {
        SimStorage {
            state: Mutex::new(State {
                current: image.clone(),
                durable: image,
                pending: Vec::new(),
                crash_image: None,
                rng: StdRng::seed_from_u64(seed),
            }),
            stall: Mutex::new(None),
            stall_cv: std::sync::Condvar::new(),
            ops: AtomicU64::new(0),
            crash_at: AtomicU64::new(u64::MAX),
            syncs: AtomicU64::new(0),
            jitter: true,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lose power just before the `n`-th storage operation from now.
    pub fn crash_after(&self, n: u64) {
        let now = self.ops.load(Ordering::SeqCst);
        self.crash_at.store(now.saturating_add(n), Ordering::SeqCst);
    }

    /// Make writes that touch `[start, end)` block until [`SimStorage::unstall`]
    /// (a stuck disk region: e.g. the extent region, to stall the flusher).
    pub fn stall(&self, start: u64, end: u64) {
        *self.stall.lock().unwrap_or_else(|p| p.into_inner()) = Some((start, end));
    }

    /// Release a [`SimStorage::stall`].
    pub fn unstall(&self) {
        *self.stall.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.stall_cv.notify_all();
    }

    fn wait_stall(&self, off: u64, len: u64) {
        let mut g = self.stall.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((s, e)) = *g {
            if off + len <= s || off >= e {
                break;
            }
            g = self.stall_cv.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Lose power now.
    pub fn crash_now(&self) {
        let mut st = self.lock();
        Self::crash_locked(&mut st);
    }

    /// Whether power was lost.
    pub fn crashed(&self) -> bool {
        self.lock().crash_image.is_some()
    }

    /// Storage operations so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    /// fdatasync calls so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    /// What the disk holds after the power loss (`None` before it).
    pub fn crash_image(&self) -> Option<Vec<u8>> {
        self.lock().crash_image.clone()
    }

    /// The content as reads see it now (for tests that reopen without a crash).
    pub fn current_image(&self) -> Vec<u8> {
        self.lock().current.clone()
    }

    fn crash_locked(st: &mut State) {
        if st.crash_image.is_some() {
            return;
        }
        let mut img = st.durable.clone();
        let mut pending = std::mem::take(&mut st.pending);
        if st.rng.gen_bool(0.5) {
            pending.shuffle(&mut st.rng);
        }
        for (off, data) in pending {
            match st.rng.gen_range(0..10) {
                0..=2 => {} // lost
                3..=6 => apply(&mut img, off, &data),
                _ => {
                    // torn: each sector independently
                    let mut s = 0;
                    while s < data.len() {
                        let e = (s + SECTOR).min(data.len());
                        if st.rng.gen_bool(0.5) {
                            apply(&mut img, off + s as u64, &data[s..e]);
                        }
                        s = e;
                    }
                }
            }
        }
        st.crash_image = Some(img);
    }

    /// Count an operation; crash first if it is the armed one.
    fn begin(&self) -> io::Result<std::sync::MutexGuard<'_, State>> {
        if self.jitter && self.ops.load(Ordering::Relaxed) % 7 == 3 {
            std::thread::yield_now();
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        let mut st = self.lock();
        if n >= self.crash_at.load(Ordering::SeqCst) {
            Self::crash_locked(&mut st);
        }
        if st.crash_image.is_some() {
            return Err(eio());
        }
        Ok(st)
    }
}

fn apply(img: &mut Vec<u8>, off: u64, data: &[u8]) {
    let Ok(off) = usize::try_from(off) else {
        return;
    };
    let end = off + data.len();
    if img.len() < end {
        img.resize(end, 0);
    }
    img[off..end].copy_from_slice(data);
}

impl Storage for SimStorage {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        let st = self.begin()?;
        buf.fill(0);
        let off = usize::try_from(off).map_err(|_| eio())?;
        if off < st.current.len() {
            let n = buf.len().min(st.current.len() - off);
            buf[..n].copy_from_slice(&st.current[off..off + n]);
        }
        Ok(())
    }

    fn write_at(&self, bufs: &[&[u8]], off: u64) -> io::Result<()> {
        let data: Vec<u8> = bufs.concat();
        self.wait_stall(off, data.len() as u64);
        let mut st = self.begin()?;
        apply(&mut st.current, off, &data);
        st.pending.push((off, data));
        Ok(())
    }

    fn write_durable_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        // Durable at once, and it supersedes what was pending in its range
        // (the page cache holds one version of a page: the sync writes the
        // newest); nothing outside the range becomes durable.
        self.wait_stall(off, buf.len() as u64);
        let mut st = self.begin()?;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        apply(&mut st.current, off, buf);
        apply(&mut st.durable, off, buf);
        let end = off + buf.len() as u64;
        let pending = std::mem::take(&mut st.pending);
        for (o, data) in pending {
            let e = o + data.len() as u64;
            if e <= off || o >= end {
                st.pending.push((o, data));
                continue;
            }
            if o < off {
                st.pending
                    .push((o, data[..usize::try_from(off - o).unwrap_or(0)].to_vec()));
            }
            if e > end {
                let cut = usize::try_from(end - o).unwrap_or(data.len());
                st.pending.push((end, data[cut..].to_vec()));
            }
        }
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let mut st = self.begin()?;
        self.syncs.fetch_add(1, Ordering::SeqCst);
        let pending = std::mem::take(&mut st.pending);
        for (off, data) in pending {
            apply(&mut st.durable, off, &data);
        }
        Ok(())
    }

    fn sync_wal(&self, wal_end: u64) -> io::Result<()> {
        // Only the meta file is synced: writes to the extent region stay
        // volatile (and may be lost at the crash).
        self.sync_where(|off| off < wal_end)
    }

    fn sync_extents(&self, extent_start: u64) -> io::Result<()> {
        // Only the extent file is synced: WAL writes that no sync covered
        // stay volatile.
        self.sync_where(|off| off >= extent_start)
    }

    fn punch_hole(&self, off: u64, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| eio())?;
        let zeros = vec![0u8; len];
        self.write_at(&[&zeros], off)
    }

    fn len(&self) -> io::Result<u64> {
        let st = self.lock();
        if st.crash_image.is_some() {
            return Err(eio());
        }
        Ok(st.current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.begin()?;
        let len = usize::try_from(len).map_err(|_| eio())?;
        st.current.resize(len, 0);
        st.durable.resize(len, 0);
        for (off, data) in &mut st.pending {
            let o = usize::try_from(*off).unwrap_or(usize::MAX);
            data.truncate(len.saturating_sub(o));
        }
        Ok(())
    }

    fn fds(&self) -> Option<crate::storage::Fds> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A durable write survives any crash, supersedes what was pending in
    /// its range (an older write there never lands over it), and leaves
    /// writes outside its range volatile.
    #[test]
    fn a_durable_write_makes_its_range_durable_and_nothing_else() {
        for seed in 0..64 {
            let s = SimStorage::new(seed);
            s.set_len(4 * 4096).unwrap();
            s.write_at(&[&[1u8; 3 * 4096]], 0).unwrap();
            s.write_durable_at(&[2u8; 4096], 4096).unwrap();
            s.crash_now();
            let img = s.crash_image().unwrap();
            assert!(img[4096..8192].iter().all(|&b| b == 2), "seed {seed}");
            for r in [0..4096, 8192..12288] {
                assert!(img[r].iter().all(|&b| b == 0 || b == 1), "seed {seed}");
            }
        }
        // Outside the range, some crash loses the pending write.
        let lost = (0..64).any(|seed| {
            let s = SimStorage::new(seed);
            s.set_len(4 * 4096).unwrap();
            s.write_at(&[&[1u8; 4096]], 0).unwrap();
            s.write_durable_at(&[2u8; 4096], 4096).unwrap();
            s.crash_now();
            s.crash_image().unwrap()[..4096].contains(&0)
        });
        assert!(lost, "writes outside the range became durable");
    }

    #[test]
    fn an_extent_sync_makes_the_extent_region_durable_and_not_the_wal() {
        // Offsets below 8192 play the meta file, from 8192 the extent file.
        let lost_wal = (0..64).any(|seed| {
            let s = SimStorage::new(seed);
            s.set_len(4 * 4096).unwrap();
            s.write_at(&[&[1u8; 4096]], 4096).unwrap();
            s.write_at(&[&[2u8; 4096]], 8192).unwrap();
            s.sync_extents(8192).unwrap();
            s.crash_now();
            let img = s.crash_image().unwrap();
            assert!(img[8192..12288].iter().all(|&b| b == 2), "seed {seed}");
            img[4096..8192].contains(&0)
        });
        assert!(lost_wal, "the extent sync made a WAL write durable");
    }
}
