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
//! writes). Without the files (not Linux, a sandbox) it never allows them.

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
    Some(below_half_background(
        &vmstat,
        &meminfo,
        ratio.trim().parse().ok()?,
        bytes.trim().parse().ok()?,
    ))
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
    fn this_machine_can_be_sampled() {
        assert!(sample().is_some(), "/proc files missing or unparsable");
    }
}
