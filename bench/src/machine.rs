//! What machine and file system a measurement ran on.

use std::path::Path;

/// Cores, kernel, and the file system holding `dir` (its type from
/// `statfs(2)`, cross-checked with the mount table).
pub fn describe(dir: &Path) -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let (mount_fs, device, mount) = fs_of(dir).unwrap_or_default();
    let magic = statfs_magic(dir);
    let fs_type = magic
        .and_then(fs_name)
        .map_or_else(|| mount_fs.clone(), str::to_string);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("")
        .trim()
        .to_string();
    serde_json::json!({
        "cores": cores,
        "cpu": cpu,
        "kernel": kernel,
        "dir": std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf()).display().to_string(),
        "fs_type": fs_type,
        "statfs_magic": magic.map(|m| format!("{m:#x}")),
        "memory_backed": magic.is_some_and(memory_backed),
        "device": device,
        "mount": mount,
    })
}

/// Total memory in bytes (`MemTotal` of /proc/meminfo), 0 if unknown.
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// The block device behind `device` (`/dev/vda1` → its disk `vda`) from
/// sysfs: `{name, driver, model, size_bytes, rotational}`; nulls where
/// sysfs has nothing (overlay, tmpfs, network file systems).
pub fn disk(device: &str) -> serde_json::Value {
    let name = device.rsplit('/').next().unwrap_or("");
    let mut sys = std::path::PathBuf::from("/sys/class/block").join(name);
    if sys.join("partition").exists() {
        sys = sys.join("..");
    }
    let read = |f: &str| {
        std::fs::read_to_string(sys.join(f))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let disk = std::fs::canonicalize(&sys)
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    let driver = std::fs::read_link(sys.join("device/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    serde_json::json!({
        "name": disk,
        "driver": driver,
        "model": read("device/model"),
        "size_bytes": read("size").and_then(|s| s.parse::<u64>().ok()).map(|s| s * 512),
        "rotational": read("queue/rotational").map(|r| r == "1"),
    })
}

/// `f_type` of `statfs(2)` on `dir`.
pub fn statfs_magic(dir: &Path) -> Option<i128> {
    rustix::fs::statfs(dir).ok().map(|s| i128::from(s.f_type))
}

const TMPFS_MAGIC: i128 = 0x0102_1994;
const RAMFS_MAGIC: i128 = 0x8584_58f6;

/// Whether a file system keeps its data in memory (fdatasync is free there,
/// and a durability benchmark on it measures nothing).
pub fn memory_backed(magic: i128) -> bool {
    magic == TMPFS_MAGIC || magic == RAMFS_MAGIC
}

/// Name of a file-system magic number, for the common ones.
pub fn fs_name(magic: i128) -> Option<&'static str> {
    Some(match magic {
        0xef53 => "ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x2fc1_2fc1 => "zfs",
        0xf2f5_2010 => "f2fs",
        0x794c_7630 => "overlayfs",
        TMPFS_MAGIC => "tmpfs",
        RAMFS_MAGIC => "ramfs",
        0x6969 => "nfs",
        _ => return None,
    })
}

/// `(fs type, device, mount point)` of the mount holding `dir`.
pub fn fs_of(dir: &Path) -> Option<(String, String, String)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut best: Option<(String, String, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 3 {
            continue;
        }
        let (dev, mnt, ty) = (f[0], f[1], f[2]);
        if dir.starts_with(mnt) && best.as_ref().is_none_or(|b| mnt.len() >= b.2.len()) {
            best = Some((ty.to_string(), dev.to_string(), mnt.to_string()));
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_the_current_directory() {
        let m = describe(Path::new("."));
        assert!(m["cores"].as_u64().unwrap_or(0) >= 1);
        assert!(!m["fs_type"].as_str().unwrap_or("").is_empty(), "{m}");
        assert!(statfs_magic(Path::new(".")).is_some());
        assert_eq!(fs_name(TMPFS_MAGIC), Some("tmpfs"));
        assert!(memory_backed(TMPFS_MAGIC) && !memory_backed(0xef53));
        assert!(memory_bytes() > 0);
        assert!(disk("/dev/no-such-disk")["size_bytes"].is_null());
    }
}
