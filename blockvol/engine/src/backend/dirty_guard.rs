//! Whether a buffered write into the page cache can be done on the calling
//! thread without being throttled: the kernel's dirty and write-back pages
//! are well below its background write-back threshold.
//!
//! ext4 refuses `RWF_NOWAIT` for buffered writes (so io_uring hands every
//! one to an io-wq worker: a thread hop and two context switches per
//! `writev`, 40 µs of a 4 KiB write at QD1 here). A buffered write blocks
//! the caller mainly when `balance_dirty_pages` throttles it, which does
//! not happen while dirty + write-back pages stay under the midpoint of the
//! background and hard thresholds. A process-wide thread samples
//! `/proc/vmstat` and `/proc/meminfo` every 50 ms and allows inline writes
//! only below half the background threshold (a wide margin for 50 ms of
//! writes). In a memory cgroup with a limit (v1 or v2) the same test runs
//! on the cgroup's own dirty pages and memory, which the kernel throttles
//! on separately. Without the files (not Linux, a sandbox) it never allows
//! them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::Duration;

static OK: AtomicBool = AtomicBool::new(false);
static START: Once = Once::new();

/// Whether inline buffered writes are allowed now (starts the sampler on
/// first use; false until its first sample).
pub(crate) fn inline_ok() -> bool {
    START.call_once(|| {
        OK.store(sample().unwrap_or(false), Ordering::Relaxed);
        let _ = std::thread::Builder::new()
            .name("keel-dirty".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_millis(50));
                OK.store(sample().unwrap_or(false), Ordering::Relaxed);
            });
    });
    OK.load(Ordering::Relaxed)
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

fn sample() -> Option<bool> {
    let vmstat = read("/proc/vmstat")?;
    let meminfo = read("/proc/meminfo")?;
    let ratio = read("/proc/sys/vm/dirty_background_ratio")?;
    let bytes = read("/proc/sys/vm/dirty_background_bytes")?;
    let (ratio, bytes) = (ratio.trim().parse().ok()?, bytes.trim().parse().ok()?);
    let cgroup = match memory_cgroup() {
        Some(cg) => cgroup_below_half_background(&cg, ratio, bytes),
        None => true,
    };
    Some(cgroup && below_half_background(&vmstat, &meminfo, ratio, bytes))
}

/// The numbers of the calling process's memory cgroup, when it has a limit.
#[derive(Debug, PartialEq, Eq)]
struct CgroupMem {
    limit: u64,
    usage: u64,
    /// Dirty + write-back bytes.
    dirty: u64,
    /// Active + inactive file-backed bytes.
    file: u64,
}

/// Read the memory cgroup of this process (v2, else v1) from
/// `/proc/self/cgroup`; `None` without one or without a limit.
fn memory_cgroup() -> Option<CgroupMem> {
    let cg = read("/proc/self/cgroup")?;
    let v2 = cg.lines().find_map(|l| l.strip_prefix("0::"));
    if let Some(dir) = v2.map(|p| format!("/sys/fs/cgroup{}", p.trim_end_matches('/'))) {
        if let Some(max) = read(&format!("{dir}/memory.max")) {
            let stat = read(&format!("{dir}/memory.stat"))?;
            let usage = read(&format!("{dir}/memory.current"))?;
            return cgroup_mem(
                max.trim(),
                usage.trim(),
                &stat,
                ["file_dirty", "file_writeback"],
            );
        }
    }
    let path = cg.lines().find_map(|l| {
        let mut it = l.splitn(3, ':');
        let (_, ctrl, path) = (it.next()?, it.next()?, it.next()?);
        ctrl.split(',').any(|c| c == "memory").then_some(path)
    })?;
    let dir = format!("/sys/fs/cgroup/memory{}", path.trim_end_matches('/'));
    let limit = read(&format!("{dir}/memory.limit_in_bytes"))?;
    let usage = read(&format!("{dir}/memory.usage_in_bytes"))?;
    let stat = read(&format!("{dir}/memory.stat"))?;
    cgroup_mem(limit.trim(), usage.trim(), &stat, ["dirty", "writeback"])
}

/// `limit` ("max", or bytes; v1's "no limit" is a value near 2^63),
/// `usage` in bytes, and `memory.stat` with the dirty and write-back keys
/// named.
fn cgroup_mem(limit: &str, usage: &str, stat: &str, keys: [&str; 2]) -> Option<CgroupMem> {
    let limit: u64 = limit.parse().ok().filter(|&l| l < 1 << 60)?;
    let get = |k: &str| field(stat, &format!("{k} ")).or_else(|| field(stat, k));
    Some(CgroupMem {
        limit,
        usage: usage.parse().ok()?,
        dirty: get(keys[0])? + get(keys[1])?,
        file: get("active_file").unwrap_or(0) + get("inactive_file").unwrap_or(0),
    })
}

/// The cgroup's dirty + write-back bytes below half its background
/// threshold (the ratio of its free and file-backed memory).
fn cgroup_below_half_background(cg: &CgroupMem, ratio: u64, bytes: u64) -> bool {
    let dirtyable = cg.limit.saturating_sub(cg.usage) + cg.file;
    let threshold = if bytes > 0 {
        bytes.min(dirtyable)
    } else {
        dirtyable / 100 * ratio
    };
    cg.dirty < threshold / 2
}

/// `key value` (vmstat, in pages) or `Key: value kB` (meminfo) lines.
fn field(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(key)?;
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Dirty + write-back bytes below half the background threshold
/// (`dirty_background_bytes`, or the ratio of free and file-backed memory,
/// about what the kernel counts as dirtyable).
fn below_half_background(vmstat: &str, meminfo: &str, ratio: u64, bytes: u64) -> bool {
    const PAGE: u64 = 4096;
    let (Some(dirty), Some(wb)) = (field(vmstat, "nr_dirty"), field(vmstat, "nr_writeback")) else {
        return false;
    };
    let threshold = if bytes > 0 {
        bytes
    } else {
        let kb = ["MemFree", "Active(file)", "Inactive(file)"]
            .iter()
            .map(|k| field(meminfo, k).unwrap_or(0))
            .sum::<u64>();
        kb * 1024 / 100 * ratio
    };
    (dirty + wb) * PAGE < threshold / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEMINFO: &str = "MemTotal:       24000000 kB\nMemFree:        10000000 kB\nActive(file):    4000000 kB\nInactive(file):  6000000 kB\n";

    #[test]
    fn half_the_background_threshold_decides() {
        // 20 GB dirtyable, 10 %: 2 GB; half: 1 GB = 244 140 pages.
        let low = "nr_dirty 100000\nnr_writeback 1000\n";
        let high = "nr_dirty 200000\nnr_writeback 50000\n";
        assert!(below_half_background(low, MEMINFO, 10, 0));
        assert!(!below_half_background(high, MEMINFO, 10, 0));
        // dirty_background_bytes wins over the ratio.
        assert!(!below_half_background(low, MEMINFO, 10, 100 << 20));
        // Unreadable numbers: no inline writes.
        assert!(!below_half_background("", MEMINFO, 10, 0));
    }

    #[test]
    fn a_memory_cgroup_with_a_limit_is_judged_on_its_own_numbers() {
        // v1: "dirty"/"writeback" in bytes; no limit is a value near 2^63.
        let v1 =
            "cache 100\ndirty 8000000\nwriteback 0\ninactive_file 50000000\nactive_file 50000000\n";
        let cg = cgroup_mem("400000000", "300000000", v1, ["dirty", "writeback"]).unwrap();
        assert_eq!(cg.dirty, 8_000_000);
        assert_eq!(cg.file, 100_000_000);
        // 100 MB free + 100 MB file: 10 % = 20 MB, half = 10 MB.
        assert!(cgroup_below_half_background(&cg, 10, 0));
        let busy = CgroupMem {
            dirty: 12_000_000,
            ..cg
        };
        assert!(!cgroup_below_half_background(&busy, 10, 0));
        assert!(cgroup_mem("9223372036854771712", "1", v1, ["dirty", "writeback"]).is_none());
        // v2: "max" is no limit; file_dirty/file_writeback.
        let v2 = "file 1\nfile_dirty 4096\nfile_writeback 0\nactive_file 10\ninactive_file 10\n";
        assert!(cgroup_mem("max", "1", v2, ["file_dirty", "file_writeback"]).is_none());
        let cg = cgroup_mem("1000000", "0", v2, ["file_dirty", "file_writeback"]).unwrap();
        assert_eq!((cg.dirty, cg.file), (4096, 20));
    }

    #[test]
    fn this_machine_can_be_sampled() {
        assert!(sample().is_some(), "/proc files missing or unparsable");
    }
}
