//! Counters kept by the engine for a server to export. All relaxed atomics:
//! cheap on the data path, read as a snapshot.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Group-commit batch size buckets: 1, 2, 3-4, 5-8, 9-16, 17-32, 33+.
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, u64::MAX];

/// Upper bounds (µs) of the group-commit fdatasync latency buckets; the
/// last bucket is everything slower.
pub const SYNC_BUCKETS_US: [u64; 11] = [
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    u64::MAX,
];

#[derive(Default, Debug)]
pub(crate) struct Stats {
    pub read_ops: AtomicU64,
    pub read_bytes: AtomicU64,
    pub read_retries: AtomicU64,
    pub write_ops: AtomicU64,
    pub write_bytes: AtomicU64,
    pub fua_writes: AtomicU64,
    pub trim_ops: AtomicU64,
    pub trim_bytes: AtomicU64,
    pub zero_ops: AtomicU64,
    pub zero_bytes: AtomicU64,
    pub flush_ops: AtomicU64,
    pub fdatasyncs: AtomicU64,
    pub linked_syncs: AtomicU64,
    pub coalesced_writes: AtomicU64,
    pub coalesced_groups: AtomicU64,
    pub inline_wal_writes: AtomicU64,
    pub group_commits: AtomicU64,
    pub group_commit_waiters: AtomicU64,
    pub batch_hist: [AtomicU64; 7],
    pub sync_hist: [AtomicU64; 11],
    pub sync_us_sum: AtomicU64,
    pub flusher_runs: AtomicU64,
    pub flusher_records: AtomicU64,
    pub flusher_bytes: AtomicU64,
    pub flusher_errors: AtomicU64,
    pub admission_soft_waits: AtomicU64,
    pub admission_hard_waits: AtomicU64,
    pub admission_timeouts: AtomicU64,
    pub io_errors: AtomicU64,
}

impl Stats {
    pub fn add(c: &AtomicU64, v: u64) {
        c.fetch_add(v, Relaxed);
    }

    pub fn record_batch(&self, waiters: u64) {
        self.group_commits.fetch_add(1, Relaxed);
        self.group_commit_waiters.fetch_add(waiters, Relaxed);
        let i = BATCH_BUCKETS
            .iter()
            .position(|&b| waiters <= b)
            .unwrap_or(BATCH_BUCKETS.len() - 1);
        self.batch_hist[i].fetch_add(1, Relaxed);
    }

    /// A group-commit fdatasync took `us` microseconds.
    pub fn record_sync(&self, us: u64) {
        self.sync_us_sum.fetch_add(us, Relaxed);
        let i = SYNC_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(SYNC_BUCKETS_US.len() - 1);
        self.sync_hist[i].fetch_add(1, Relaxed);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Relaxed);
        StatsSnapshot {
            read_ops: g(&self.read_ops),
            read_bytes: g(&self.read_bytes),
            read_retries: g(&self.read_retries),
            write_ops: g(&self.write_ops),
            write_bytes: g(&self.write_bytes),
            fua_writes: g(&self.fua_writes),
            trim_ops: g(&self.trim_ops),
            trim_bytes: g(&self.trim_bytes),
            zero_ops: g(&self.zero_ops),
            zero_bytes: g(&self.zero_bytes),
            flush_ops: g(&self.flush_ops),
            fdatasyncs: g(&self.fdatasyncs),
            linked_syncs: g(&self.linked_syncs),
            coalesced_writes: g(&self.coalesced_writes),
            coalesced_groups: g(&self.coalesced_groups),
            inline_wal_writes: g(&self.inline_wal_writes),
            group_commits: g(&self.group_commits),
            group_commit_waiters: g(&self.group_commit_waiters),
            group_commit_batch_hist: std::array::from_fn(|i| g(&self.batch_hist[i])),
            group_commit_sync_hist: std::array::from_fn(|i| g(&self.sync_hist[i])),
            group_commit_sync_us_sum: g(&self.sync_us_sum),
            flusher_runs: g(&self.flusher_runs),
            flusher_records: g(&self.flusher_records),
            flusher_bytes: g(&self.flusher_bytes),
            flusher_errors: g(&self.flusher_errors),
            admission_soft_waits: g(&self.admission_soft_waits),
            admission_hard_waits: g(&self.admission_hard_waits),
            admission_timeouts: g(&self.admission_timeouts),
            io_errors: g(&self.io_errors),
        }
    }
}

/// A point-in-time copy of the engine counters (all monotonic).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Reads completed.
    pub read_ops: u64,
    /// Bytes read.
    pub read_bytes: u64,
    /// Reads redone because the WAL space they read was reclaimed meanwhile.
    pub read_retries: u64,
    /// Writes completed.
    pub write_ops: u64,
    /// Bytes written.
    pub write_bytes: u64,
    /// Writes that were durable at completion (FUA or write-through).
    pub fua_writes: u64,
    /// Trims completed.
    pub trim_ops: u64,
    /// Bytes trimmed.
    pub trim_bytes: u64,
    /// Write-zeroes completed.
    pub zero_ops: u64,
    /// Bytes zeroed.
    pub zero_bytes: u64,
    /// Flushes completed.
    pub flush_ops: u64,
    /// fdatasync calls by group commit, the flusher and linked writes.
    pub fdatasyncs: u64,
    /// Durable writes done as one linked write+fdatasync.
    pub linked_syncs: u64,
    /// WAL writes that went to the kernel coalesced with neighbours in one
    /// `writev` (io_uring backend).
    pub coalesced_writes: u64,
    /// The coalesced `writev`s (`coalesced_writes / coalesced_groups` is the
    /// mean group size).
    pub coalesced_groups: u64,
    /// WAL writes written by the submitting thread into the page cache
    /// (`wal_inline_writes`), not by an io-wq worker or a standard-backend
    /// worker; durable ones included.
    pub inline_wal_writes: u64,
    /// Group-commit fdatasyncs that had waiters.
    pub group_commits: u64,
    /// Waiters completed by group-commit fdatasyncs.
    pub group_commit_waiters: u64,
    /// Group-commit batch sizes, bucketed by [`BATCH_BUCKETS`].
    pub group_commit_batch_hist: [u64; 7],
    /// Group-commit fdatasync latencies (every sync of the group-commit
    /// thread, with or without waiters), bucketed by [`SYNC_BUCKETS_US`].
    pub group_commit_sync_hist: [u64; 11],
    /// Sum of those latencies, µs.
    pub group_commit_sync_us_sum: u64,
    /// Flusher batches written back (each ends with a checkpoint).
    pub flusher_runs: u64,
    /// Records written back.
    pub flusher_records: u64,
    /// Bytes written to the extent region by the flusher.
    pub flusher_bytes: u64,
    /// Flusher passes that failed.
    pub flusher_errors: u64,
    /// Writes slowed at the soft watermark.
    pub admission_soft_waits: u64,
    /// Writes that waited at the hard watermark.
    pub admission_hard_waits: u64,
    /// Writes failed with WAL full.
    pub admission_timeouts: u64,
    /// I/O errors seen.
    pub io_errors: u64,
}
