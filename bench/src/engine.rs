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

    fn json(&self) -> Value {
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
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut ops = 0u64;
    while Instant::now() < end {
        let off = if sequential {
            (ops * BS as u64) % region
        } else {
            rng.gen_range(0..region / BS as u64) * BS as u64
        };
        let t = Instant::now();
        f.write_all_at(&buf, off)?;
        f.sync_data()?;
        s.add(t.elapsed());
        ops += 1;
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

/// Keep `qd` operations in flight for `seconds`; `next(i, buf)` makes the
/// i-th operation from a recycled buffer. Returns latency samples, ops and
/// bytes moved.
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
    let start = Instant::now();
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
            s.add(start_of[si].elapsed());
            if let Err(e) = c.result {
                first_err.get_or_insert(e);
            }
            if let Some(b) = c.buf {
                bytes += b.len() as u64;
                bufs[si] = b;
            }
            ops += 1;
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
    /// Engine counters after the run.
    pub stats: StatsSnapshot,
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
    let cfg = VolumeConfig {
        backend: mode,
        ..Default::default()
    };
    let vol = Volume::create(&path, &CreateOptions::new(opts.size), &cfg)
        .with_context(|| format!("creating {}", path.display()))?;
    let backend = vol.status().backend;
    let blocks = vol.info().blocks;
    let mut rows = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let secs = opts.seconds;
    let bs = BS as u64;
    let nblk = blocks * u64::from(vol.info().block_size) / bs;

    // Durable random writes.
    for (qd, name) in [(1usize, QD1_WRITE), (32, QD32_WRITE)] {
        let (s, ops, bytes, el) = drive(&vol, qd, secs, |_, b| Op::Write {
            lba: rng.gen_range(0..nblk),
            buf: buf_of(b, BS, 0xa5),
            fua: true,
        })?;
        rows.push(Row::new(name, s, ops, bytes, el));
    }
    // Sequential 128 KiB writes, a flush every 32.
    let per = 32u64;
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
                .map_or_else(|| b.stats.clone(), |x| x.stats.clone());
            BackendResult {
                backend: b.backend,
                rows,
                stats: last,
            }
        })
        .collect()
}

/// A goal and whether it was met.
#[derive(Debug)]
pub struct Goal {
    /// What it says.
    pub what: String,
    /// Measured value and bound, as text.
    pub detail: String,
    /// Met.
    pub pass: bool,
}

/// The goals of the engine issue, checked against one run.
pub fn goals(raw: &Row, results: &[BackendResult]) -> Vec<Goal> {
    let mut g = Vec::new();
    for r in results {
        if let (Some(q1), Some(q32)) = (r.row(QD1_WRITE), r.row(QD32_WRITE)) {
            let ratio = q1.p50 / raw.p50;
            g.push(Goal {
                what: format!("{}: durable write qd1 p50 <= 1.2x raw", r.backend),
                detail: format!("{:.0} us vs raw {:.0} us = {ratio:.2}x", q1.p50, raw.p50),
                pass: ratio <= 1.2,
            });
            let scale = q32.iops / q1.iops;
            g.push(Goal {
                what: format!("{}: durable write qd32 IOPS >= 8x qd1", r.backend),
                detail: format!("{:.0} vs {:.0} IOPS = {scale:.1}x", q32.iops, q1.iops),
                pass: scale >= 8.0,
            });
        }
    }
    if let (Some(std), Some(uring)) = (
        results.iter().find(|r| r.backend == "standard"),
        results.iter().find(|r| r.backend == "io_uring"),
    ) {
        for s in &std.rows {
            if let Some(u) = uring.row(s.test) {
                let ratio = u.iops / s.iops;
                g.push(Goal {
                    what: format!("io_uring not slower than standard: {}", s.test),
                    detail: format!(
                        "{:.0} vs {:.0} IOPS = {ratio:.2}x (5% noise band)",
                        u.iops, s.iops
                    ),
                    pass: ratio >= 0.95,
                });
            }
        }
    }
    g
}

/// Engine counters worth showing next to the numbers.
pub fn stats_json(s: &StatsSnapshot) -> Value {
    json!({
        "fdatasyncs": s.fdatasyncs,
        "linked_syncs": s.linked_syncs,
        "group_commits": s.group_commits,
        "group_commit_waiters": s.group_commit_waiters,
        "group_commit_batch_hist": {"1": s.group_commit_batch_hist[0], "2": s.group_commit_batch_hist[1],
            "3-4": s.group_commit_batch_hist[2], "5-8": s.group_commit_batch_hist[3], "9-16": s.group_commit_batch_hist[4],
            "17-32": s.group_commit_batch_hist[5], "33+": s.group_commit_batch_hist[6]},
        "flusher_runs": s.flusher_runs,
        "flusher_bytes": s.flusher_bytes,
        "admission_soft_waits": s.admission_soft_waits,
        "admission_hard_waits": s.admission_hard_waits,
        "read_retries": s.read_retries,
    })
}

/// The whole report as one JSON object.
pub fn to_json(
    machine: Value,
    raw: &Row,
    raws: &[Row],
    results: &[BackendResult],
    goals: &[Goal],
    seconds: f64,
) -> Value {
    let backends: Vec<Value> = results
        .iter()
        .map(|r| {
            let get = |t: &str| r.row(t).cloned();
            let q1 = get(QD1_WRITE);
            let q32 = get(QD32_WRITE);
            json!({
                "backend": r.backend,
                "qd1_durable_write_p50_us": q1.as_ref().map(|x| x.p50),
                "qd1_durable_write_p99_us": q1.as_ref().map(|x| x.p99),
                "qd1_durable_write_iops": q1.as_ref().map(|x| x.iops),
                "qd32_durable_write_iops": q32.as_ref().map(|x| x.iops),
                "qd32_durable_write_p50_us": q32.as_ref().map(|x| x.p50),
                "qd32_durable_write_p99_us": q32.as_ref().map(|x| x.p99),
                "seq128k_flush_mbps": get(SEQ_WRITE).map(|x| x.mbps),
                "qd1_read_p50_us": get(QD1_READ).map(|x| x.p50),
                "qd32_read_iops": get(QD32_READ).map(|x| x.iops),
                "qd1_durable_write_ratio_to_raw_p50": q1.as_ref().map(|x| x.p50 / raw.p50),
                "rows": r.rows.iter().map(Row::json).collect::<Vec<_>>(),
                "engine_stats": stats_json(&r.stats),
            })
        })
        .collect();
    json!({
        "machine": machine,
        "seconds_per_test": seconds,
        "statistic": "per-metric median over runs",
        "raw_qd1_write_fdatasync_p50_us": raw.p50,
        "raw_qd1_write_fdatasync_p99_us": raw.p99,
        "raw_qd1_write_fdatasync_iops": raw.iops,
        "raw_qd1_write_fdatasync_kind": raw.test,
        "raw_rows": raws.iter().map(Row::json).collect::<Vec<_>>(),
        "backends": backends,
        "goals": goals.iter().map(|g| json!({"goal": g.what, "detail": g.detail, "pass": g.pass})).collect::<Vec<_>>(),
    })
}

/// The report as a text table.
pub fn to_table(raw: &Row, raws: &[Row], results: &[BackendResult], goals: &[Goal]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<10} {:<28} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "backend", "test", "IOPS", "MB/s", "p50 us", "p99 us", "p99.9 us", "vs raw"
    );
    let line = |o: &mut String, b: &str, r: &Row, vs: String| {
        let _ = writeln!(
            o,
            "{:<10} {:<28} {:>10.0} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>9}",
            b, r.test, r.iops, r.mbps, r.p50, r.p99, r.p999, vs
        );
    };
    for r in raws {
        let vs = if r.test == raw.test {
            "limit".to_string()
        } else {
            String::new()
        };
        line(&mut o, "raw", r, vs);
    }
    for res in results {
        for r in &res.rows {
            let vs = match r.test {
                QD1_WRITE => format!("{:.2}x p50", r.p50 / raw.p50),
                QD32_WRITE => format!("{:.1}x iops", r.iops / raw.iops),
                _ => String::new(),
            };
            line(&mut o, res.backend, r, vs);
        }
        let s = &res.stats;
        let _ = writeln!(
            o,
            "{:<10} group commit: {} syncs for {} waiters (batch sizes 1/2/3-4/5-8/9-16/17-32/33+: {:?}), {} linked write+sync",
            "", s.group_commits, s.group_commit_waiters, s.group_commit_batch_hist, s.linked_syncs
        );
    }
    let _ = writeln!(o);
    for g in goals {
        let _ = writeln!(
            o,
            "{} {} ({})",
            if g.pass { "PASS" } else { "MISS" },
            g.what,
            g.detail
        );
    }
    o
}

/// The backends to measure: every one compiled in.
pub fn modes() -> Vec<BackendMode> {
    keel_blockvol::compiled_backends()
        .iter()
        .filter_map(|b| b.parse().ok())
        .collect()
}
