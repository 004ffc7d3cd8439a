//! The engine report: goal checks, the text table and the JSON object.

use std::fmt::Write as _;

use keel_blockvol::StatsSnapshot;
use serde_json::{json, Map, Value};

use crate::engine::{BackendResult, Row, QD1_READ, QD1_WRITE, QD32_READ, QD32_WRITE, SEQ_WRITE};

/// io_uring counts as "not slower" down to this fraction of standard: runs
/// of the same build on a shared virtual disk differ by about that much.
pub const NOISE_BAND: f64 = 0.05;

/// A goal and whether it was met.
#[derive(Debug)]
pub struct Goal {
    /// Stable key in the JSON `goals` object.
    pub key: String,
    /// What it says.
    pub what: String,
    /// Measured value.
    pub value: f64,
    /// The bound it is held to.
    pub bound: f64,
    /// Measured value and bound, as text.
    pub detail: String,
    /// Met.
    pub pass: bool,
}

/// The engine goals, checked against the (median) results.
pub fn goals(raw: &Row, results: &[BackendResult]) -> Vec<Goal> {
    let mut g = Vec::new();
    for r in results {
        if let (Some(q1), Some(q32)) = (r.row(QD1_WRITE), r.row(QD32_WRITE)) {
            let ratio = q1.p50 / raw.p50;
            g.push(Goal {
                key: format!("{}.qd1_durable_write_p50_le_1.2x_raw", r.backend),
                what: format!("{}: durable write qd1 p50 <= 1.2x raw p50", r.backend),
                value: ratio,
                bound: 1.2,
                detail: format!("{:.0} us vs raw {:.0} us = {ratio:.2}x", q1.p50, raw.p50),
                pass: ratio <= 1.2,
            });
            let scale = q32.iops / q1.iops;
            g.push(Goal {
                key: format!("{}.qd32_durable_write_iops_ge_8x_qd1", r.backend),
                what: format!("{}: durable write qd32 IOPS >= 8x qd1 IOPS", r.backend),
                value: scale,
                bound: 8.0,
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
                    key: format!("io_uring_not_slower.{}", s.test.replace(' ', "_")),
                    what: format!("io_uring not slower than standard: {}", s.test),
                    value: ratio,
                    bound: 1.0 - NOISE_BAND,
                    detail: format!(
                        "{:.0} vs {:.0} IOPS = {ratio:.2}x; noise band {:.0}%",
                        u.iops,
                        s.iops,
                        NOISE_BAND * 100.0
                    ),
                    pass: ratio >= 1.0 - NOISE_BAND,
                });
            }
        }
    }
    g
}

/// Engine counters worth showing next to the numbers.
pub fn stats_json(s: &StatsSnapshot) -> Value {
    let h = &s.group_commit_batch_hist;
    json!({
        "write_ops": s.write_ops,
        "fua_writes": s.fua_writes,
        "flush_ops": s.flush_ops,
        "fdatasyncs": s.fdatasyncs,
        "linked_syncs": s.linked_syncs,
        "coalesced_writes": s.coalesced_writes,
        "coalesced_groups": s.coalesced_groups,
        "group_commits": s.group_commits,
        "group_commit_waiters": s.group_commit_waiters,
        "group_commit_mean_batch": mean_batch(s),
        "group_commit_batch_hist": {"1": h[0], "2": h[1], "3-4": h[2], "5-8": h[3],
            "9-16": h[4], "17-32": h[5], "33+": h[6]},
        "flusher_runs": s.flusher_runs,
        "flusher_records": s.flusher_records,
        "flusher_bytes": s.flusher_bytes,
        "admission_soft_waits": s.admission_soft_waits,
        "admission_hard_waits": s.admission_hard_waits,
        "read_retries": s.read_retries,
    })
}

fn mean_batch(s: &StatsSnapshot) -> f64 {
    if s.group_commits == 0 {
        0.0
    } else {
        s.group_commit_waiters as f64 / s.group_commits as f64
    }
}

/// How the numbers were taken, for the report header and the JSON.
#[derive(Debug, Clone)]
pub struct RunInfo {
    /// Seconds per measurement.
    pub seconds: f64,
    /// Warm-up before each measurement, seconds.
    pub warmup: f64,
    /// Interleaved runs the medians are taken over.
    pub runs: usize,
    /// Volume size in bytes.
    pub size: u64,
}

/// The whole report as one JSON object.
pub fn to_json(
    machine: Value,
    info: &RunInfo,
    raw: &Row,
    raws: &[Row],
    results: &[BackendResult],
    goals: &[Goal],
) -> Value {
    let backends: Vec<Value> = results
        .iter()
        .map(|r| {
            let get = |t: &str| r.row(t).cloned();
            let q1 = get(QD1_WRITE);
            let q32 = get(QD32_WRITE);
            let per_test: Map<String, Value> = r
                .test_stats
                .iter()
                .map(|(t, s)| (t.replace(' ', "_"), stats_json(s)))
                .collect();
            json!({
                "backend": r.backend,
                "qd1_durable_write_p50_us": q1.as_ref().map(|x| x.p50),
                "qd1_durable_write_p99_us": q1.as_ref().map(|x| x.p99),
                "qd1_durable_write_p999_us": q1.as_ref().map(|x| x.p999),
                "qd1_durable_write_iops": q1.as_ref().map(|x| x.iops),
                "qd32_durable_write_iops": q32.as_ref().map(|x| x.iops),
                "qd32_durable_write_p50_us": q32.as_ref().map(|x| x.p50),
                "qd32_durable_write_p99_us": q32.as_ref().map(|x| x.p99),
                "seq128k_flush_mbps": get(SEQ_WRITE).map(|x| x.mbps),
                "qd1_read_p50_us": get(QD1_READ).map(|x| x.p50),
                "qd1_read_iops": get(QD1_READ).map(|x| x.iops),
                "qd32_read_iops": get(QD32_READ).map(|x| x.iops),
                "qd32_read_p50_us": get(QD32_READ).map(|x| x.p50),
                "qd1_durable_write_p50_ratio_to_raw": q1.as_ref().map(|x| x.p50 / raw.p50),
                "qd32_durable_write_iops_ratio_to_raw": q32.as_ref().map(|x| x.iops / raw.iops),
                "rows": r.rows.iter().map(Row::json).collect::<Vec<_>>(),
                "engine_stats": {
                    "scope": "last run",
                    "per_test": per_test,
                    "whole_run": stats_json(&r.stats),
                },
            })
        })
        .collect();
    let mut g = Map::new();
    for x in goals {
        g.insert(
            x.key.clone(),
            json!({"goal": x.what, "pass": x.pass, "value": x.value, "bound": x.bound, "detail": x.detail}),
        );
    }
    json!({
        "machine": machine,
        "seconds_per_test": info.seconds,
        "warmup_seconds": info.warmup,
        "runs": info.runs,
        "volume_size": info.size,
        "statistic": "per-metric median over interleaved runs",
        "reads": "4 KiB random reads of a preloaded region: served from the page cache",
        "raw_qd1_write_fdatasync_p50_us": raw.p50,
        "raw_qd1_write_fdatasync_p99_us": raw.p99,
        "raw_qd1_write_fdatasync_iops": raw.iops,
        "raw_qd1_write_fdatasync_kind": raw.test,
        "raw_rows": raws.iter().map(Row::json).collect::<Vec<_>>(),
        "backends": backends,
        "goals": g,
        "goals_noise_band": NOISE_BAND,
    })
}

/// The report as a text table.
pub fn to_table(raw: &Row, raws: &[Row], results: &[BackendResult], goals: &[Goal]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:<10} {:<28} {:>10} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "backend", "test", "IOPS", "MB/s", "p50 us", "p99 us", "p99.9 us", "vs raw"
    );
    let line = |o: &mut String, b: &str, r: &Row, vs: String| {
        let _ = writeln!(
            o,
            "{:<10} {:<28} {:>10.0} {:>9.1} {:>9.0} {:>9.0} {:>9.0} {:>10}",
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
        for (test, s) in &res.test_stats {
            let _ = writeln!(
                o,
                "{:<10}   {test}: {} fdatasyncs ({} linked write+sync, {} group commits for {} waiters, mean batch {:.1}; batches 1/2/3-4/5-8/9-16/17-32/33+: {:?}), {} WAL writes coalesced into {} writevs, flusher {} runs {} MB",
                "",
                s.fdatasyncs,
                s.linked_syncs,
                s.group_commits,
                s.group_commit_waiters,
                mean_batch(s),
                s.group_commit_batch_hist,
                s.coalesced_writes,
                s.coalesced_groups,
                s.flusher_runs,
                s.flusher_bytes / 1_000_000
            );
        }
    }
    let _ = writeln!(
        o,
        "\nReads hit the page cache (a preloaded region): they measure the engine's read path, not the disk."
    );
    let _ = writeln!(
        o,
        "Goals (a MISS is reported, not an error; io_uring vs standard within a {:.0}% noise band):",
        NOISE_BAND * 100.0
    );
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
