//! The tiered buffer pool: 4 KiB, 64 KiB and 256 KiB `Vec<u8>`s, bounded in
//! total bytes, reused by capacity, with per-owner quotas.
//!
//! Shared and lock-free: each tier's free list is a bounded
//! `crossbeam_queue::ArrayQueue` and all accounting is atomic, so a buffer
//! may be taken on one thread and returned on another (an engine worker, a
//! different reactor). With two to a few reactors a shared free list costs a
//! CAS per get/put and no lock; a per-reactor front cache can be added in
//! front of it without changing the API if contention shows up.
//!
//! Memory never grows past [`BufferPoolConfig::max_bytes`]: a miss allocates
//! only if the bytes already allocated (free + in use) leave room, after
//! evicting free buffers of other tiers if needed; otherwise the caller gets
//! [`PoolError::WouldBlock`] and retries later (typically when a completion
//! returns a buffer). Buffers must come back with their capacity unchanged
//! (`clear`/`truncate`/`resize` within capacity are fine); a returned `Vec`
//! whose capacity is not a tier size is dropped and counted as foreign.
//!
//! Only buffers the pool handed out may be given back: a `Vec` of a tier's
//! capacity that the pool never issued would be taken for one of its own
//! and bend the in-use count for good. Debug builds (every test) keep a
//! ledger of the buffers out and panic on such a return, naming the caller.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

/// Buffer sizes of the tiers, smallest first.
pub const TIER_SIZES: [usize; 3] = [4 << 10, 64 << 10, 256 << 10];

/// Pool configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BufferPoolConfig {
    /// Upper bound on bytes held in buffers, free and in use together.
    pub max_bytes: usize,
}

impl Default for BufferPoolConfig {
    fn default() -> Self {
        BufferPoolConfig {
            max_bytes: 256 << 20,
        }
    }
}

/// An invalid [`BufferPoolConfig`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolConfigError {
    /// The bound cannot hold one buffer of the largest tier.
    #[error("max_bytes {0} is below the largest tier (256 KiB)")]
    TooSmall(usize),
}

impl BufferPoolConfig {
    /// Check the configuration.
    pub fn validate(&self) -> Result<(), PoolConfigError> {
        if self.max_bytes < TIER_SIZES[2] {
            return Err(PoolConfigError::TooSmall(self.max_bytes));
        }
        Ok(())
    }
}

/// Why a buffer was not handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// Not now: the pool or the owner's quota is exhausted; retry after
    /// buffers come back.
    #[error("Buffer pool exhausted, retry later")]
    WouldBlock,
    /// Never: the request exceeds the largest tier or the owner's whole quota.
    #[error("Buffer request of {requested} bytes refused (limit {limit})")]
    Refused {
        /// Bytes asked for.
        requested: usize,
        /// The limit it exceeds.
        limit: usize,
    },
}

/// A snapshot of the pool's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Gets served from a free list.
    pub hits: u64,
    /// Gets served by a fresh allocation.
    pub misses: u64,
    /// Gets answered with [`PoolError::WouldBlock`] (pool or quota).
    pub waits: u64,
    /// Gets answered with [`PoolError::Refused`].
    pub refusals: u64,
    /// Returned `Vec`s whose capacity was not a tier size (dropped).
    pub foreign: u64,
    /// Free buffers dropped to make room for another tier or because their
    /// free list was full.
    pub evictions: u64,
    /// Bytes held in buffers, free and in use.
    pub allocated_bytes: usize,
    /// Bytes in buffers handed out and not yet returned.
    pub in_use_bytes: usize,
}

/// The shared buffer pool. Cheap to share: wrap it in an `Arc`.
#[derive(Debug)]
pub struct BufferPool {
    tiers: [ArrayQueue<Vec<u8>>; 3],
    max_bytes: usize,
    allocated: AtomicUsize,
    in_use: AtomicUsize,
    hits: AtomicU64,
    misses: AtomicU64,
    waits: AtomicU64,
    refusals: AtomicU64,
    foreign: AtomicU64,
    evictions: AtomicU64,
    /// Debug builds: the addresses of the buffers handed out.
    #[cfg(debug_assertions)]
    issued: std::sync::Mutex<std::collections::HashSet<usize>>,
}

/// The tier that serves `size` bytes.
pub fn tier_for(size: usize) -> Option<usize> {
    TIER_SIZES.iter().position(|&t| size <= t)
}

fn tier_of_capacity(cap: usize) -> Option<usize> {
    TIER_SIZES.iter().position(|&t| cap == t)
}

fn sub_saturating(a: &AtomicUsize, v: usize) {
    let _ = a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |x| {
        Some(x.saturating_sub(v))
    });
}

impl BufferPool {
    /// A pool bounded by `cfg.max_bytes` (validate `cfg` first; a bound
    /// below the largest tier is raised to it).
    pub fn new(cfg: &BufferPoolConfig) -> BufferPool {
        let max_bytes = cfg.max_bytes.max(TIER_SIZES[2]);
        let q = |size: usize| ArrayQueue::new((max_bytes / size).clamp(1, 1 << 16));
        BufferPool {
            tiers: [q(TIER_SIZES[0]), q(TIER_SIZES[1]), q(TIER_SIZES[2])],
            max_bytes,
            allocated: AtomicUsize::new(0),
            in_use: AtomicUsize::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            waits: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
            foreign: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            #[cfg(debug_assertions)]
            issued: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    /// Debug builds: note a buffer handed out.
    #[allow(clippy::unused_self, clippy::ptr_arg)]
    fn issue(&self, v: &Vec<u8>) {
        #[cfg(debug_assertions)]
        self.issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(v.as_ptr() as usize);
        let _ = v;
    }

    /// The configured bound.
    pub fn max_bytes(&self) -> usize {
        self.max_bytes
    }

    /// An empty `Vec` (length 0) with capacity of the smallest tier that
    /// holds `size` bytes.
    pub fn get(&self, size: usize) -> Result<Vec<u8>, PoolError> {
        let Some(t) = tier_for(size) else {
            self.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::Refused {
                requested: size,
                limit: TIER_SIZES[2],
            });
        };
        let tsize = TIER_SIZES[t];
        if let Some(v) = self.tiers[t].pop() {
            self.hits.fetch_add(1, Ordering::Relaxed);
            self.in_use.fetch_add(tsize, Ordering::AcqRel);
            self.issue(&v);
            return Ok(v);
        }
        if !self.reserve(t) {
            self.waits.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::WouldBlock);
        }
        self.misses.fetch_add(1, Ordering::Relaxed);
        self.in_use.fetch_add(tsize, Ordering::AcqRel);
        let v = Vec::with_capacity(tsize);
        self.issue(&v);
        Ok(v)
    }

    /// Reserve room for one new buffer of tier `t`, evicting free buffers of
    /// other tiers when the bound is reached.
    fn reserve(&self, t: usize) -> bool {
        let tsize = TIER_SIZES[t];
        loop {
            let cur = self.allocated.load(Ordering::Acquire);
            if cur + tsize <= self.max_bytes {
                if self
                    .allocated
                    .compare_exchange_weak(cur, cur + tsize, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return true;
                }
                continue;
            }
            // Make room from free buffers of the other tiers, largest first.
            let mut evicted = false;
            for other in (0..TIER_SIZES.len()).rev().filter(|&o| o != t) {
                if let Some(v) = self.tiers[other].pop() {
                    drop(v);
                    self.allocated
                        .fetch_sub(TIER_SIZES[other], Ordering::AcqRel);
                    self.evictions.fetch_add(1, Ordering::Relaxed);
                    evicted = true;
                    break;
                }
            }
            if !evicted {
                return false;
            }
        }
    }

    /// Give a buffer back (any thread). Its tier is found by capacity.
    pub fn put(&self, mut v: Vec<u8>) {
        let Some(t) = tier_of_capacity(v.capacity()) else {
            self.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        #[cfg(debug_assertions)]
        {
            let known = self
                .issued
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&(v.as_ptr() as usize));
            assert!(
                known,
                "a buffer of {} bytes the pool never handed out was given back",
                v.capacity()
            );
        }
        sub_saturating(&self.in_use, TIER_SIZES[t]);
        v.clear();
        if self.tiers[t].push(v).is_err() {
            sub_saturating(&self.allocated, TIER_SIZES[t]);
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters, for metrics.
    pub fn stats(&self) -> PoolStats {
        PoolStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            waits: self.waits.load(Ordering::Relaxed),
            refusals: self.refusals.load(Ordering::Relaxed),
            foreign: self.foreign.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            allocated_bytes: self.allocated.load(Ordering::Relaxed),
            in_use_bytes: self.in_use.load(Ordering::Relaxed),
        }
    }

    /// Free buffers held in tier `t` (for tests and metrics).
    pub fn free_in_tier(&self, t: usize) -> usize {
        self.tiers.get(t).map_or(0, ArrayQueue::len)
    }
}

/// One owner's share of the pool (a connection, a session): at most `quota`
/// bytes in use at once. Clones share the same account, so buffers can be
/// returned from wherever they end up (an engine completion on another
/// thread included).
#[derive(Debug, Clone)]
pub struct PoolAccount {
    pool: Arc<BufferPool>,
    quota: usize,
    used: Arc<AtomicUsize>,
}

impl PoolAccount {
    /// An account of `quota` bytes on `pool`.
    pub fn new(pool: Arc<BufferPool>, quota: usize) -> PoolAccount {
        PoolAccount {
            pool,
            quota,
            used: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The pool behind the account.
    pub fn pool(&self) -> &Arc<BufferPool> {
        &self.pool
    }

    /// Bytes (by tier size) this owner holds now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// The quota.
    pub fn quota(&self) -> usize {
        self.quota
    }

    /// Like [`BufferPool::get`], within the owner's quota. Over quota the
    /// owner waits ([`PoolError::WouldBlock`]); a request larger than the
    /// whole quota is refused.
    pub fn get(&self, size: usize) -> Result<Vec<u8>, PoolError> {
        let Some(t) = tier_for(size) else {
            return self.pool.get(size);
        };
        let tsize = TIER_SIZES[t];
        if tsize > self.quota {
            self.pool.refusals.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::Refused {
                requested: size,
                limit: self.quota,
            });
        }
        let before = self.used.fetch_add(tsize, Ordering::AcqRel);
        if before + tsize > self.quota {
            self.used.fetch_sub(tsize, Ordering::AcqRel);
            self.pool.waits.fetch_add(1, Ordering::Relaxed);
            return Err(PoolError::WouldBlock);
        }
        self.pool.get(size).inspect_err(|_| {
            self.used.fetch_sub(tsize, Ordering::AcqRel);
        })
    }

    /// Give a buffer taken through this account back (any thread).
    pub fn put(&self, v: Vec<u8>) {
        if let Some(t) = tier_of_capacity(v.capacity()) {
            sub_saturating(&self.used, TIER_SIZES[t]);
        }
        self.pool.put(v);
    }
}

/// An empty buffer with room for `cap` bytes from `pool`, or a plain
/// allocation when there is no pool or it is exhausted (such a buffer is
/// simply dropped when given back). For per-I/O data buffers: no allocation
/// in steady state.
pub fn take(pool: Option<&Arc<BufferPool>>, cap: usize) -> Vec<u8> {
    pool.and_then(|p| p.get(cap).ok()).unwrap_or_else(|| {
        // Not the pool's: a capacity no tier has, so that giving it back
        // drops it (counted as foreign) instead of passing it off as one
        // of the pool's buffers.
        let odd = if tier_of_capacity(cap).is_some() {
            cap + 1
        } else {
            cap
        };
        Vec::with_capacity(odd)
    })
}

/// [`take`], filled with `len` zero bytes (a read's destination).
pub fn take_zeroed(pool: Option<&Arc<BufferPool>>, len: usize) -> Vec<u8> {
    let mut v = take(pool, len);
    v.resize(len, 0);
    v
}

/// Give a data buffer back to `pool` (dropped without one).
pub fn give_back(pool: Option<&Arc<BufferPool>>, v: Vec<u8>) {
    if let Some(p) = pool {
        p.put(v);
    }
}

/// Room for data arriving in order at byte `at` of a data buffer of `size`
/// bytes (taken from `pool` when it has none yet): the buffer and how many of
/// the `left` bytes still to come fit in it, for a receive straight into it.
/// `None` when `at` is not where the data so far ends (a gap or a
/// retransmission: [`place`] a copy instead).
pub fn room_at<'a>(
    pool: Option<&Arc<BufferPool>>,
    buf: &'a mut Vec<u8>,
    size: usize,
    at: usize,
    left: usize,
) -> Option<(&'a mut Vec<u8>, usize)> {
    if buf.capacity() == 0 {
        *buf = take(pool, size);
    }
    (buf.len() == at && at < size).then(|| {
        let n = left.min(size - at);
        (buf, n)
    })
}

/// Put `src` at byte `at` of `buf` (data arriving for a buffer): appended
/// when it comes in order, the usual case, so nothing is zeroed first; a gap
/// is zero-filled, a retransmission overwrites.
pub fn place(buf: &mut Vec<u8>, at: usize, src: &[u8]) {
    if buf.len() == at {
        buf.extend_from_slice(src);
    } else {
        if buf.len() < at + src.len() {
            buf.resize(at + src.len(), 0);
        }
        buf[at..at + src.len()].copy_from_slice(src);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_appends_fills_gaps_and_overwrites() {
        let mut b = Vec::new();
        place(&mut b, 0, b"abc");
        place(&mut b, 3, b"de");
        assert_eq!(b, b"abcde");
        place(&mut b, 7, b"x");
        assert_eq!(b, b"abcde\0\0x");
        place(&mut b, 1, b"ZZ");
        assert_eq!(b, b"aZZde\0\0x");
    }

    #[test]
    fn room_at_takes_a_buffer_and_only_appends_in_order() {
        let p = pool(1 << 20);
        let mut b = Vec::new();
        let (buf, n) = room_at(Some(&p), &mut b, 8192, 0, 10_000).unwrap();
        assert_eq!(n, 8192);
        buf.extend_from_slice(&[1; 100]);
        assert!(b.capacity() >= 8192);
        assert_eq!(
            room_at(Some(&p), &mut b, 8192, 100, 50).map(|r| r.1),
            Some(50)
        );
        // A gap, a retransmission, a full buffer: no room to receive into.
        assert!(room_at(Some(&p), &mut b, 8192, 200, 50).is_none());
        assert!(room_at(Some(&p), &mut b, 8192, 10, 50).is_none());
        b.resize(8192, 0);
        assert!(room_at(Some(&p), &mut b, 8192, 8192, 50).is_none());
        give_back(Some(&p), b);
    }

    fn pool(max: usize) -> Arc<BufferPool> {
        Arc::new(BufferPool::new(&BufferPoolConfig { max_bytes: max }))
    }

    #[test]
    fn tiers_are_chosen_by_size() {
        let p = pool(1 << 20);
        assert_eq!(p.get(1).unwrap().capacity(), 4096);
        assert_eq!(p.get(4096).unwrap().capacity(), 4096);
        assert_eq!(p.get(4097).unwrap().capacity(), 65536);
        assert_eq!(p.get(256 << 10).unwrap().capacity(), 256 << 10);
        assert!(matches!(
            p.get((256 << 10) + 1),
            Err(PoolError::Refused { .. })
        ));
        assert_eq!(p.stats().refusals, 1);
    }

    #[test]
    fn buffers_are_reused_by_capacity() {
        let p = pool(1 << 20);
        let mut a = p.get(100).unwrap();
        a.extend_from_slice(b"hello");
        p.put(a);
        let b = p.get(4000).unwrap();
        assert!(b.is_empty(), "returned buffers come back cleared");
        let s = p.stats();
        assert_eq!((s.hits, s.misses), (1, 1));
        assert_eq!(s.allocated_bytes, 4096);
        assert_eq!(s.in_use_bytes, 4096);
        p.put(b);
        assert_eq!(p.stats().in_use_bytes, 0);
        assert_eq!(p.free_in_tier(0), 1);
    }

    #[test]
    fn total_size_is_bounded_and_recovers_after_returns() {
        let p = pool(256 << 10); // one big buffer's worth
        let mut held = Vec::new();
        for _ in 0..64 {
            held.push(p.get(4096).unwrap());
        }
        assert_eq!(p.get(4096), Err(PoolError::WouldBlock));
        assert_eq!(p.get(64 << 10), Err(PoolError::WouldBlock));
        assert_eq!(p.stats().allocated_bytes, 256 << 10);
        assert_eq!(p.stats().waits, 2);
        for v in held.drain(..) {
            p.put(v);
        }
        // Free 4 KiB buffers are evicted to make room for a bigger tier.
        let big = p.get(200 << 10).unwrap();
        assert_eq!(big.capacity(), 256 << 10);
        let s = p.stats();
        assert_eq!(s.allocated_bytes, 256 << 10);
        assert_eq!(s.evictions, 64);
        assert!(s.allocated_bytes <= p.max_bytes());
    }

    /// What `take` allocates when the pool is exhausted is not the pool's:
    /// given back, it is dropped as foreign, and the in-use count stays
    /// that of the pool's own buffers (a tier-sized stand-in would have
    /// been taken for one of them, and in debug builds the ledger panics).
    #[test]
    fn stand_ins_for_an_exhausted_pool_are_not_taken_back() {
        let p = pool(256 << 10);
        let held: Vec<_> = (0..64).map(|_| take(Some(&p), 4096)).collect();
        assert_eq!(p.stats().in_use_bytes, 256 << 10);
        let extra = take(Some(&p), 4096);
        assert!(
            tier_of_capacity(extra.capacity()).is_none(),
            "{}",
            extra.capacity()
        );
        give_back(Some(&p), extra);
        let s = p.stats();
        assert_eq!((s.foreign, s.in_use_bytes), (1, 256 << 10));
        for v in held {
            give_back(Some(&p), v);
        }
        assert_eq!(p.stats().in_use_bytes, 0);
    }

    #[test]
    fn foreign_and_resized_vecs_are_not_pooled() {
        let p = pool(1 << 20);
        p.put(Vec::with_capacity(1000));
        let mut v = p.get(10).unwrap();
        v.resize(5000, 0); // grew: no longer a tier capacity
        p.put(v);
        let s = p.stats();
        assert_eq!(s.foreign, 2);
        assert_eq!(p.free_in_tier(0), 0);
    }

    #[test]
    fn quota_makes_an_owner_wait_and_refuses_impossible_requests() {
        let p = pool(4 << 20);
        let a = PoolAccount::new(p.clone(), 128 << 10);
        let b = PoolAccount::new(p.clone(), 128 << 10);
        let x = a.get(64 << 10).unwrap();
        let y = a.get(64 << 10).unwrap();
        assert_eq!(a.get(1), Err(PoolError::WouldBlock), "over its share");
        // Another owner is unaffected.
        let z = b.get(64 << 10).unwrap();
        assert!(matches!(a.get(200 << 10), Err(PoolError::Refused { .. })));
        a.put(x);
        let w = a.get(4096).unwrap();
        assert_eq!(a.used(), (64 << 10) + 4096);
        a.put(y);
        a.put(w);
        b.put(z);
        assert_eq!(a.used(), 0);
        assert_eq!(p.stats().in_use_bytes, 0);
        assert_eq!(p.stats().refusals, 1);
    }

    #[test]
    fn buffers_returned_on_other_threads_keep_accounts_exact() {
        let p = pool(8 << 20);
        let acct = PoolAccount::new(p.clone(), 8 << 20);
        let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
        let returner = {
            let acct = acct.clone();
            std::thread::spawn(move || {
                for v in rx {
                    acct.put(v);
                }
            })
        };
        let mut taken = 0usize;
        for i in 0..10_000usize {
            match acct.get(if i % 7 == 0 { 60_000 } else { 4096 }) {
                Ok(v) => {
                    taken += 1;
                    tx.send(v).unwrap();
                }
                Err(PoolError::WouldBlock) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        drop(tx);
        returner.join().unwrap();
        assert!(taken > 0);
        let s = p.stats();
        assert_eq!(s.in_use_bytes, 0);
        assert_eq!(acct.used(), 0);
        assert!(s.allocated_bytes <= p.max_bytes());
        assert_eq!(
            s.allocated_bytes,
            p.free_in_tier(0) * TIER_SIZES[0] + p.free_in_tier(1) * TIER_SIZES[1]
        );
    }

    #[test]
    fn config_is_validated() {
        assert!(BufferPoolConfig::default().validate().is_ok());
        assert_eq!(
            BufferPoolConfig { max_bytes: 1000 }.validate(),
            Err(PoolConfigError::TooSmall(1000))
        );
    }
}
