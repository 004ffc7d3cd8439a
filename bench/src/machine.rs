//! What machine and file system a measurement ran on.

use std::path::Path;

/// Cores, kernel, and the file system holding `dir`.
pub fn describe(dir: &Path) -> serde_json::Value {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let (fs_type, device, mount) = fs_of(dir).unwrap_or_default();
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
        "dir": dir.display().to_string(),
        "fs_type": fs_type,
        "device": device,
        "mount": mount,
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
