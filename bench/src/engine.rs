//! `keel-bench engine`: the volume engine on each backend against the raw
//! pwrite+fdatasync limit of the same file system, in one run.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keel_blockvol::{BackendMode, CreateOptions, Op, StatsSnapshot, Volume, VolumeConfig};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::hist::Samples;

/// Benchmark settings.
#[derive(Clone, Debug)]
pub struct Opts {
    /// Directory for the volume and raw files.
    pub dir: PathBuf,
    /// Seconds per measurement.
    pub seconds: f64,
    /// Volume size in bytes.
    pub size: u64,
    /// The flusher's idle interval (`None`: the engine default). A
    /// diagnostic knob: a timed flusher pass chases a busy writer.
    pub flush_interval: Option<Duration>,
    /// WAL size (`None`: the engine default for the volume size).
    pub wal_size: Option<u64>,
    /// Diagnostics: keep the flusher off while the WAL has room (threshold
    /// and watermarks at 1.0, an hour between timed passes).
    pub hold_flusher: bool,
    /// How long `Handle::wait` polls before sleeping (`None`: the engine
    /// default).
    pub wait_spin: Option<Duration>,
}

/// One measured row.
#[derive(Clone, Debug)]
pub struct Row {
    /// What was measured.
    pub test: &'static str,
    /// Operations per second.
    pub iops: f64,
    /// MB/s (10^6 bytes).
    pub mbps: f64,
    /// Latency percentiles, µs.
    pub p50: f64,
    /// 99th percentile, µs.
    pub p99: f64,
    /// 99.9th percentile, µs.
    pub p999: f64,
}

impl Row {
    fn new(test: &'static str, mut s: Samples, ops: u64, bytes: u64, elapsed: Duration) -> Row {
        let secs = elapsed.as_secs_f64().max(1e-9);
        Row {
            test,
            iops: ops as f64 / secs,
            mbps: bytes as f64 / secs / 1e6,
            p50: s.pct(0.5),
            p99: s.pct(0.99),
            p999: s.pct(0.999),
        }
    }

    /// The row as JSON.
    pub fn json(&self) -> Value {
        json!({"test": self.test, "iops": self.iops, "mbps": self.mbps,
               "p50_us": self.p50, "p99_us": self.p99, "p999_us": self.p999})
    }
}

const BS: usize = 4096;

/// The raw limit: 4 KiB pwrite + fdatasync at queue depth 1 in a 64 MiB
/// file written once beforehand (as the WAL ring is), at random offsets or
/// appending sequentially (as the WAL does).
pub fn raw_limit(dir: &Path, seconds: f64, sequential: bool) -> Result<Row> {
    let path = dir.join("raw-limit.dat");
    let f = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let region: u64 = 64 << 20;
    let zeros = vec![0u8; 1 << 20];
    for i in 0..region >> 20 {
        f.write_all_at(&zeros, i << 20)?;
    }
    f.sync_all()?;
    let buf = vec![0x5au8; BS];
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut s = Samples::default();
    let start = Instant::now() + warmup(seconds);
    let end = start + Duration::from_secs_f64(seconds);
    let (mut ops, mut i) = (0u64, 0u64);
    loop {
        let t = Instant::now();
        if t >= end {
            break;
        }
        let off = if sequential {
            (i * BS as u64) % region
        } else {
            rng.gen_range(0..region / BS as u64) * BS as u64
        };
        i += 1;
        f.write_all_at(&buf, off)?;
        f.sync_data()?;
        if t >= start {
            s.add(t.elapsed());
            ops += 1;
        }
    }
    let name = if sequential {
        "raw pwrite+fdatasync 4k seq"
    } else {
        "raw pwrite+fdatasync 4k rand"
    };
    let row = Row::new(name, s, ops, ops * BS as u64, start.elapsed());
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(row)
}

/// Warm-up before each measurement: a sixth of it, between 0.1 and 0.5 s.
pub fn warmup(seconds: f64) -> Duration {
    Duration::from_secs_f64((seconds / 6.0).clamp(0.1, 0.5))
}

/// Keep `qd` operations in flight for a warm-up and then `seconds`;
/// `next(i, buf)` makes the i-th operation from a recycled buffer. Returns
/// the latency samples, ops and bytes of the operations submitted after the
/// warm-up, and the time they took.
fn drive(
    vol: &Volume,
    qd: usize,
    seconds: f64,
    mut next: impl FnMut(u64, Vec<u8>) -> Op,
) -> Result<(Samples, u64, u64, Duration)> {
    let mut h = vol.handle()?;
    let mut start_of = vec![Instant::now(); qd];
    let mut free: Vec<u64> = (0..qd as u64).collect();
    let mut bufs: Vec<Vec<u8>> = (0..qd).map(|_| Vec::new()).collect();
    let mut s = Samples::default();
    let (mut ops, mut bytes, mut i) = (0u64, 0u64, 0u64);
    let start = Instant::now() + warmup(seconds);
    let end = start + Duration::from_secs_f64(seconds);
    let mut first_err = None;
    loop {
        let now = Instant::now();
        if now < end {
            while let Some(slot) = free.pop() {
                let si = usize::try_from(slot).unwrap_or(0);
                let op = next(i, std::mem::take(&mut bufs[si]));
                i += 1;
                start_of[si] = Instant::now();
                h.submit(slot, op).map_err(|e| e.error)?;
            }
        } else if free.len() == qd {
            break;
        }
        let mut got = 0;
        h.poll_completions(|c| {
            got += 1;
            let si = usize::try_from(c.tag).unwrap_or(0);
            let counted = start_of[si] >= start;
            if counted {
                s.add(start_of[si].elapsed());
                ops += 1;
            }
            if let Err(e) = c.result {
                first_err.get_or_insert(e);
            }
            if let Some(b) = c.buf {
                if counted {
                    bytes += b.len() as u64;
                }
                bufs[si] = b;
            }
            free.push(c.tag);
        });
        if let Some(e) = first_err.take() {
            return Err(e.into());
        }
        if got == 0 {
            h.wait(Some(Duration::from_millis(5)));
        }
    }
    Ok((s, ops, bytes, start.elapsed()))
}

fn buf_of(mut b: Vec<u8>, len: usize, fill: u8) -> Vec<u8> {
    if b.len() != len {
        b = vec![fill; len];
    }
    b
}

/// Everything measured on one backend.
#[derive(Debug)]
pub struct BackendResult {
    /// `standard` or `io_uring`.
    pub backend: &'static str,
    /// Rows in order.
    pub rows: Vec<Row>,
    /// Engine counters over the whole run (preload included).
    pub stats: StatsSnapshot,
    /// Engine counters during each test (warm-up included), by test name.
    pub test_stats: Vec<(&'static str, StatsSnapshot)>,
}

/// `after - before`, counter by counter.
pub fn stats_delta(after: &StatsSnapshot, before: &StatsSnapshot) -> StatsSnapshot {
    let d = |a: u64, b: u64| a.saturating_sub(b);
    StatsSnapshot {
        read_ops: d(after.read_ops, before.read_ops),
        read_bytes: d(after.read_bytes, before.read_bytes),
        read_retries: d(after.read_retries, before.read_retries),
        write_ops: d(after.write_ops, before.write_ops),
        write_bytes: d(after.write_bytes, before.write_bytes),
        fua_writes: d(after.fua_writes, before.fua_writes),
        trim_ops: d(after.trim_ops, before.trim_ops),
        trim_bytes: d(after.trim_bytes, before.trim_bytes),
        zero_ops: d(after.zero_ops, before.zero_ops),
        zero_bytes: d(after.zero_bytes, before.zero_bytes),
        flush_ops: d(after.flush_ops, before.flush_ops),
        fdatasyncs: d(after.fdatasyncs, before.fdatasyncs),
        linked_syncs: d(after.linked_syncs, before.linked_syncs),
        coalesced_writes: d(after.coalesced_writes, before.coalesced_writes),
        coalesced_groups: d(after.coalesced_groups, before.coalesced_groups),
        inline_wal_writes: d(after.inline_wal_writes, before.inline_wal_writes),
        group_commits: d(after.group_commits, before.group_commits),
        group_commit_waiters: d(after.group_commit_waiters, before.group_commit_waiters),
        group_commit_sync_hist: std::array::from_fn(|i| {
            d(
                after.group_commit_sync_hist[i],
                before.group_commit_sync_hist[i],
            )
        }),
        group_commit_sync_us_sum: d(
            after.group_commit_sync_us_sum,
            before.group_commit_sync_us_sum,
        ),
        group_commit_batch_hist: std::array::from_fn(|i| {
            d(
                after.group_commit_batch_hist[i],
                before.group_commit_batch_hist[i],
            )
        }),
        flusher_runs: d(after.flusher_runs, before.flusher_runs),
        flusher_records: d(after.flusher_records, before.flusher_records),
        flusher_bytes: d(after.flusher_bytes, before.flusher_bytes),
        flusher_errors: d(after.flusher_errors, before.flusher_errors),
        admission_soft_waits: d(after.admission_soft_waits, before.admission_soft_waits),
        admission_hard_waits: d(after.admission_hard_waits, before.admission_hard_waits),
        admission_timeouts: d(after.admission_timeouts, before.admission_timeouts),
        io_errors: d(after.io_errors, before.io_errors),
    }
}

impl BackendResult {
    /// The row of a test.
    pub fn row(&self, test: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.test == test)
    }
}

/// Test names.
pub const QD1_WRITE: &str = "durable write 4k qd1";
/// Test names.
pub const QD32_WRITE: &str = "durable write 4k qd32";
/// Test names.
pub const SEQ_WRITE: &str = "write 128k seq + flush/32";
/// Test names.
pub const QD1_READ: &str = "read 4k qd1";
/// Test names.
pub const QD32_READ: &str = "read 4k qd32";

/// Run the engine tests on one backend.
pub fn run_backend(opts: &Opts, mode: BackendMode) -> Result<BackendResult> {
    let path = opts.dir.join(format!("bench-{mode}.keel"));
    let remove = |p: &Path| {
        let _ = std::fs::remove_file(p);
        let _ = std::fs::remove_file(keel_blockvol::storage::extent_path(p));
    };
    remove(&path);
    let mut cfg = VolumeConfig {
        backend: mode,
        ..Default::default()
    };
    if let Some(i) = opts.flush_interval {
        cfg.flush_interval = i;
    }
    if let Some(w) = opts.wait_spin {
        cfg.wait_spin = w;
    }
    if opts.hold_flusher {
        cfg.flush_threshold = 1.0;
        cfg.wal_soft_watermark = 1.0;
        cfg.wal_hard_watermark = 1.0;
        cfg.flush_interval = Duration::from_secs(3600);
    }
    let mut create = CreateOptions::new(opts.size);
    if let Some(w) = opts.wal_size {
        create.wal_size = w;
    }
    let vol = Volume::create(&path, &create, &cfg)
        .with_context(|| format!("creating {}", path.display()))?;
    let backend = vol.status().backend;
    let blocks = vol.info().blocks;
    let mut rows = Vec::new();
    let mut test_stats = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let secs = opts.seconds;
    let bs = BS as u64;
    let nblk = blocks * u64::from(vol.info().block_size) / bs;

    // Durable random writes.
    for (qd, name) in [(1usize, QD1_WRITE), (32, QD32_WRITE)] {
        let before = vol.stats();
        let (s, ops, bytes, el) = drive(&vol, qd, secs, |_, b| Op::Write {
            lba: rng.gen_range(0..nblk),
            buf: buf_of(b, BS, 0xa5),
            fua: true,
        })?;
        test_stats.push((name, stats_delta(&vol.stats(), &before)));
        rows.push(Row::new(name, s, ops, bytes, el));
    }
    // Sequential 128 KiB writes, a flush every 32.
    let per = 32u64;
    let before = vol.stats();
    let (s, ops, bytes, el) = drive(&vol, 1, secs, |i, b| {
        if i % 33 == 32 {
            Op::Flush
        } else {
            let n = i - i / 33;
            Op::Write {
                lba: (n * per) % (nblk - per),
                buf: buf_of(b, 128 << 10, 0x3c),
                fua: false,
            }
        }
    })?;
    test_stats.push((SEQ_WRITE, stats_delta(&vol.stats(), &before)));
    rows.push(Row::new(SEQ_WRITE, s, ops, bytes, el));
    // Reads over a preloaded region (the page cache holds it: this measures
    // the engine's read path, not the disk).
    let region = nblk.min((256 << 20) / bs);
    let mut h = keel_blockvol::SyncHandle::new(vol.handle()?);
    let chunk = vec![0x77u8; 128 << 10];
    let mut lba = 0;
    while lba + 32 <= region {
        h.write(lba, &chunk, false)?;
        lba += 32;
    }
    h.flush()?;
    drop(h);
    for (qd, name) in [(1usize, QD1_READ), (32, QD32_READ)] {
        let (s, ops, bytes, el) = drive(&vol, qd, secs, |_, b| Op::Read {
            lba: rng.gen_range(0..region),
            buf: buf_of(b, BS, 0),
        })?;
        rows.push(Row::new(name, s, ops, bytes, el));
    }
    let stats = vol.stats();
    vol.close()?;
    remove(&path);
    Ok(BackendResult {
        backend,
        rows,
        stats,
        test_stats,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Per-metric medians of the same row over several runs.
pub fn median_row(rows: &[&Row]) -> Row {
    let m = |f: fn(&Row) -> f64| median(rows.iter().map(|r| f(r)).collect());
    Row {
        test: rows.first().map_or("", |r| r.test),
        iops: m(|r| r.iops),
        mbps: m(|r| r.mbps),
        p50: m(|r| r.p50),
        p99: m(|r| r.p99),
        p999: m(|r| r.p999),
    }
}

/// Per-metric medians of each backend's rows over several runs.
pub fn median_results(runs: &[Vec<BackendResult>]) -> Vec<BackendResult> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|b| {
            let rows = b
                .rows
                .iter()
                .map(|r| {
                    let same: Vec<&Row> = runs
                        .iter()
                        .filter_map(|run| run.iter().find(|x| x.backend == b.backend))
                        .filter_map(|x| x.row(r.test))
                        .collect();
                    median_row(&same)
                })
                .collect();
            let last = runs
                .last()
                .and_then(|run| run.iter().find(|x| x.backend == b.backend))
                .unwrap_or(b);
            BackendResult {
                backend: b.backend,
                rows,
                stats: last.stats.clone(),
                test_stats: last.test_stats.clone(),
            }
        })
        .collect()
}

/// The backends to measure: every one compiled in.
pub fn modes() -> Vec<BackendMode> {
    keel_blockvol::compiled_backends()
        .iter()
        .filter_map(|b| b.parse().ok())
        .collect()
}
