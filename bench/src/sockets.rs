//! `keel-bench sockets`: the reactors' two socket I/O backends side by side.
//!
//! Each run starts keel-volume once per backend (`--socket-io epoll`, then
//! `io_uring`), on a fresh 1 GiB volume, and measures the same clients
//! against it: the bench's own NVMe/TCP host (4 KiB random read and write at
//! QD1 and QD32, 128 KiB sequential at QD8) and libiscsi's `iscsi-perf`
//! (4 KiB random read at QD1 and QD32). The report shows per-metric medians
//! over the runs and the io_uring/epoll ratio of IOPS and of target CPU per
//! I/O.

use std::path::Path;

use anyhow::Result;
use serde_json::{json, Value};

use crate::targets::{iscsi_perf, nvmf_keel, Keel, Measure, WORKLOADS};

/// Socket I/O backends compared, in run order.
pub const KINDS: [&str; 2] = ["epoll", "io_uring"];

fn row(m: &Measure) -> Value {
    json!({"iops": m.iops, "p50_us": m.p50_us, "p99_us": m.p99_us, "cpu_us_per_io": m.cpu_us_per_io})
}

/// One run: every backend once. JSON `{ "<kind>": { "<workload>": row } }`.
pub fn run(dir: &Path, seconds: f64, poll_mode: &str) -> Result<Value> {
    let bin = crate::targets::keel_volume_bin()?;
    let mut out = serde_json::Map::new();
    for kind in KINDS {
        let kdir = dir.join(kind);
        std::fs::create_dir_all(&kdir)?;
        let k = Keel::start_with(&bin, &kdir, poll_mode, &["--socket-io", kind])?;
        eprintln!("keel-bench sockets: {kind}: NVMe/TCP (own host)...");
        let nvme = nvmf_keel(&k, seconds)?;
        eprintln!("keel-bench sockets: {kind}: iSCSI (iscsi-perf)...");
        let url = format!("iscsi://{}/iqn.2026-11.io.keel:vol0/0", k.iscsi);
        let perf = [
            iscsi_perf(&url, 1, 1, k.pid(), seconds)?,
            iscsi_perf(&url, 1, 32, k.pid(), seconds)?,
        ];
        drop(k);
        let mut m = serde_json::Map::new();
        for (i, (name, ..)) in WORKLOADS.iter().enumerate() {
            m.insert(format!("nvmf {name}"), row(&nvme[i]));
        }
        m.insert("iscsi-perf 4k-randread-qd1".into(), row(&perf[0]));
        m.insert("iscsi-perf 4k-randread-qd32".into(), row(&perf[1]));
        out.insert(kind.to_owned(), Value::Object(m));
    }
    Ok(json!({ "seconds": seconds, "poll_mode": poll_mode, "results": out }))
}

/// The comparison table of a (median) result of [`run`].
pub fn table(v: &Value) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "socket I/O comparison, poll mode {}, {} s per measurement (medians)",
        v["poll_mode"].as_str().unwrap_or("?"),
        v["seconds"]
    );
    let _ = writeln!(
        s,
        "{:<30} {:>10} {:>10} {:>7} {:>9} {:>9} {:>7}",
        "workload", "epoll", "io_uring", "ratio", "cpu/io e", "cpu/io u", "ratio"
    );
    let e = &v["results"]["epoll"];
    let u = &v["results"]["io_uring"];
    let Some(names) = e.as_object() else {
        return s;
    };
    for name in names.keys() {
        let f = |x: &Value, k: &str| x[name][k].as_f64().unwrap_or(0.0);
        let (ei, ui) = (f(e, "iops"), f(u, "iops"));
        let (ec, uc) = (f(e, "cpu_us_per_io"), f(u, "cpu_us_per_io"));
        let _ = writeln!(
            s,
            "{:<30} {:>10.0} {:>10.0} {:>6.2}x {:>8.1}us {:>8.1}us {:>6.2}x",
            name,
            ei,
            ui,
            ui / ei.max(1.0),
            ec,
            uc,
            uc / ec.max(1e-9)
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_ratios() {
        let v = json!({
            "seconds": 1.0, "poll_mode": "adaptive",
            "results": {
                "epoll": {"nvmf 4k-randread-qd1": {"iops": 100.0, "cpu_us_per_io": 10.0}},
                "io_uring": {"nvmf 4k-randread-qd1": {"iops": 150.0, "cpu_us_per_io": 5.0}},
            }
        });
        let t = table(&v);
        assert!(t.contains("1.50x"), "{t}");
        assert!(t.contains("0.50x"), "{t}");
    }
}
