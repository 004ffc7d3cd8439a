//! `keel-bench report`: the whole benchmark matrix in one command, written
//! into `docs/benchmarks.md` (between markers) with SVG plots.
//!
//! ```text
//!  engine   keel-bench engine --json    (std, io_uring vs raw pwrite+fdatasync)
//!  targets  keel-bench targets --json   (keel NVMe/TCP, keel iSCSI, tgt; 4 clients)
//!  sockets  keel-bench sockets --json   (epoll vs io_uring socket I/O)
//!  sweep    4 KiB random read IOPS at QD 1..32: keel NVMe/TCP, keel iSCSI, tgt
//!  pollmodes  4 KiB random read QD1, keel iSCSI in each poll mode, tgt,
//!           and the loopback floor (floor.rs: a bare echo, spinning or not)
//!  fio      the raw disk (O_DIRECT), fio psync and io_uring on a plain file,
//!           and fio driving the engine through the C ABI (ffi/fio)
//!        → JSON (--json), markdown between the markers, SVGs in --plots
//! ```
//!
//! Each part reports per-metric medians of `--runs` runs, and the report
//! records the machine, the commit and the command line.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::plots::{bar_chart, line_chart, Series};
use crate::targets::{
    keel_volume_bin, nvmf_measure, nvmf_session, own_iscsi_one, queue_count, Keel, Measure, Tgt,
    TGT_IQN,
};

/// Markers of the generated part of the markdown file.
pub const BEGIN: &str = "<!-- BEGIN keel-bench report -->";
/// End marker.
pub const END: &str = "<!-- END keel-bench report -->";

/// The parts of the report, in the order they run.
pub const PARTS: [&str; 6] = ["engine", "targets", "sockets", "sweep", "pollmodes", "fio"];

/// Poll modes measured at QD1 by the `pollmodes` part.
pub const POLL_MODES: [&str; 3] = ["busy", "adaptive", "interrupt"];
/// The loopback floors beside them (`floor.rs`): a bare echo thread that
/// spins, then one that blocks.
pub const FLOORS: [&str; 3] = [
    "loopback floor, spinning echo",
    "loopback floor, blocking echo",
    "loopback floor, blocking echo, both ends on one CPU",
];

/// Queue depths of the sweep.
pub const SWEEP_QDS: [usize; 6] = [1, 2, 4, 8, 16, 32];

/// What to run.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Runs per part (medians).
    pub runs: usize,
    /// Seconds per measurement.
    pub seconds: f64,
    /// Markdown file to update.
    pub out: PathBuf,
    /// Directory for the SVGs.
    pub plots: PathBuf,
    /// Also write every result here.
    pub json: Option<PathBuf>,
    /// Scratch directory (on the disk being measured).
    pub dir: PathBuf,
    /// The fio engine (`ffi/fio/keel_engine.so`).
    pub fio_engine: PathBuf,
    /// Parts to skip.
    pub skip: Vec<String>,
    /// Results of an earlier run (its `--json`): skipped parts keep these.
    pub reuse: Option<PathBuf>,
}

fn me() -> Result<PathBuf> {
    Ok(std::env::current_exe()?)
}

fn sub_json_owned(args: &[String]) -> Result<Value> {
    sub_json(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Run `keel-bench ARGS --json` and parse its output.
fn sub_json(args: &[&str]) -> Result<Value> {
    let o = Command::new(me()?)
        .args(args)
        .arg("--json")
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("keel-bench {}", args.join(" ")))?;
    if !o.status.success() {
        bail!("keel-bench {} failed", args.join(" "));
    }
    serde_json::from_slice(&o.stdout).with_context(|| format!("JSON of keel-bench {}", args[0]))
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// 4 KiB random reads at `qd` from keel's `vol0` with the own iSCSI
/// initiator.
fn keel_iscsi_read(k: &Keel, qd: usize, seconds: f64) -> Result<Measure> {
    own_iscsi_one(
        k.iscsi,
        "iqn.2026-11.io.keel:vol0",
        0,
        4096,
        k.pid(),
        false,
        qd,
        seconds,
    )
}

/// The QD sweep: per run, keel (NVMe/TCP and iSCSI on one server) then tgt.
fn sweep(dir: &Path, runs: usize, seconds: f64) -> Result<Value> {
    let bin = keel_volume_bin()?;
    // [target][qd] -> iops samples
    let mut s: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); SWEEP_QDS.len()]; 3];
    for run in 0..runs {
        eprintln!("keel-bench report: sweep run {} of {runs}", run + 1);
        let kdir = tempfile::tempdir_in(dir)?;
        let k = Keel::start(&bin, kdir.path(), "adaptive")?;
        let (_admin, mut q) = nvmf_session(&k)?;
        for (i, &qd) in SWEEP_QDS.iter().enumerate() {
            s[0][i].push(nvmf_measure(&mut q, k.pid(), false, 4096, qd, seconds)?.iops);
            let m = keel_iscsi_read(&k, qd, seconds)?;
            s[1][i].push(m.iops);
        }
        drop(q);
        drop(k);
        let tdir = tempfile::tempdir_in(dir)?;
        let t = Tgt::start(tdir.path())?;
        let addr = format!("127.0.0.1:{}", t.port).parse()?;
        for (i, &qd) in SWEEP_QDS.iter().enumerate() {
            let m = own_iscsi_one(addr, TGT_IQN, 1 << 48, 512, t.pid(), false, qd, seconds)?;
            s[2][i].push(m.iops);
        }
    }
    let names = ["keel NVMe/TCP", "keel iSCSI", "tgt iSCSI"];
    let series: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(ti, n)| {
            let pts: Vec<Value> = SWEEP_QDS
                .iter()
                .enumerate()
                .map(|(i, qd)| json!({"qd": qd, "iops": median(&mut s[ti][i])}))
                .collect();
            json!({"target": n, "points": pts})
        })
        .collect();
    Ok(
        json!({"workload": "4k-randread", "clients": "keel-bench NVMe/TCP host; keel-bench pipelined iSCSI initiator", "series": series}),
    )
}

/// One fio job; `None` when fio failed (its stderr is returned).
/// 4 KiB random reads at QD1 with the own iSCSI initiator: keel in each poll
/// mode (a fresh server each), then tgt, then the loopback floors
/// (`floor.rs`), per run. What a reactor does while it waits is what QD1
/// costs: spinning burns the core, sleeping pays a wake-up per I/O.
fn pollmodes(dir: &Path, runs: usize, seconds: f64) -> Result<Value> {
    let bin = keel_volume_bin()?;
    // [mode, then tgt, then the floors] -> samples of (iops, p50, cpu per io)
    let n = POLL_MODES.len() + 1;
    let mut s: Vec<[Vec<f64>; 3]> = vec![Default::default(); n + FLOORS.len()];
    let mut push = |i: usize, m: &Measure| {
        s[i][0].push(m.iops);
        s[i][1].push(m.p50_us);
        s[i][2].push(m.cpu_us_per_io);
    };
    for run in 0..runs {
        eprintln!("keel-bench report: poll modes run {} of {runs}", run + 1);
        for (i, mode) in POLL_MODES.iter().enumerate() {
            let kdir = tempfile::tempdir_in(dir)?;
            let k = Keel::start(&bin, kdir.path(), mode)?;
            let m = keel_iscsi_read(&k, 1, seconds)?;
            push(i, &m);
        }
        let tdir = tempfile::tempdir_in(dir)?;
        let t = Tgt::start(tdir.path())?;
        let addr = format!("127.0.0.1:{}", t.port).parse()?;
        let m = own_iscsi_one(addr, TGT_IQN, 1 << 48, 512, t.pid(), false, 1, seconds)?;
        push(n - 1, &m);
        drop(t);
        for (i, floor) in crate::floor::Floor::ALL.into_iter().enumerate() {
            push(n + i, &crate::floor::measure(floor, seconds)?);
        }
    }
    let rows: Vec<Value> = POLL_MODES
        .iter()
        .map(|m| format!("keel {m}"))
        .chain(std::iter::once("tgt".to_owned()))
        .chain(FLOORS.iter().map(|f| (*f).to_owned()))
        .enumerate()
        .map(|(i, name)| {
            let [a, b, c] = &mut s[i];
            json!({"target": name, "iops": median(a), "p50_us": median(b), "cpu_us_per_io": median(c)})
        })
        .collect();
    Ok(
        json!({"workload": "4k-randread-qd1", "client": "keel-bench pipelined iSCSI initiator", "rows": rows}),
    )
}

fn fio_job(
    engine: &str,
    file: &Path,
    rw: &str,
    qd: usize,
    direct: bool,
    seconds: f64,
) -> Result<std::result::Result<Measure, String>> {
    let o = Command::new("fio")
        .args([
            "--name=r",
            &format!("--ioengine={engine}"),
            &format!("--filename={}", file.display()),
            "--size=1g",
            "--bs=4k",
            &format!("--rw={rw}"),
            &format!("--iodepth={qd}"),
            &format!("--direct={}", u8::from(direct)),
            "--time_based",
            &format!("--runtime={}", seconds.ceil().max(1.0)),
            "--ramp_time=1",
            "--randrepeat=0",
            "--norandommap",
            "--output-format=json",
        ])
        .output()
        .context("cannot run fio (apt-get install fio)")?;
    if !o.status.success() {
        return Ok(Err(String::from_utf8_lossy(&o.stderr).trim().to_owned()));
    }
    let start = o.stdout.iter().position(|&b| b == b'{').unwrap_or(0);
    let v: Value = serde_json::from_slice(&o.stdout[start..]).context("fio JSON")?;
    let j = &v["jobs"][0][if rw.contains("read") { "read" } else { "write" }];
    let pct = |p: &str| j["clat_ns"]["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    Ok(Ok(Measure {
        iops: j["iops"].as_f64().unwrap_or(0.0),
        p50_us: pct("50.000000"),
        p99_us: pct("99.000000"),
        cpu_us_per_io: 0.0,
        max_us: j["clat_ns"]["max"].as_f64().unwrap_or(0.0) / 1000.0,
    }))
}

/// The fio rows: (name, engine kind, direct, rw, qd).
const FIO_ROWS: [(&str, &str, bool, &str, usize); 14] = [
    (
        "raw disk (io_uring, O_DIRECT)",
        "io_uring",
        true,
        "randread",
        1,
    ),
    (
        "raw disk (io_uring, O_DIRECT)",
        "io_uring",
        true,
        "randread",
        32,
    ),
    (
        "raw disk (io_uring, O_DIRECT)",
        "io_uring",
        true,
        "randwrite",
        1,
    ),
    (
        "raw disk (io_uring, O_DIRECT)",
        "io_uring",
        true,
        "randwrite",
        32,
    ),
    ("fio psync, plain file", "psync", false, "randread", 1),
    ("fio psync, plain file", "psync", false, "randwrite", 1),
    ("fio io_uring, plain file", "io_uring", false, "randread", 1),
    (
        "fio io_uring, plain file",
        "io_uring",
        false,
        "randread",
        32,
    ),
    (
        "fio io_uring, plain file",
        "io_uring",
        false,
        "randwrite",
        1,
    ),
    (
        "fio io_uring, plain file",
        "io_uring",
        false,
        "randwrite",
        32,
    ),
    (
        "keel engine via C ABI (fio external engine)",
        "keel",
        false,
        "randread",
        1,
    ),
    (
        "keel engine via C ABI (fio external engine)",
        "keel",
        false,
        "randread",
        32,
    ),
    (
        "keel engine via C ABI (fio external engine)",
        "keel",
        false,
        "randwrite",
        1,
    ),
    (
        "keel engine via C ABI (fio external engine)",
        "keel",
        false,
        "randwrite",
        32,
    ),
];

fn fio_part(dir: &Path, runs: usize, seconds: f64, keel_engine: &Path) -> Result<Value> {
    let engine_ok = keel_engine.exists();
    let mut rows = Vec::new();
    let mut samples: Vec<Vec<Measure>> = vec![Vec::new(); FIO_ROWS.len()];
    let mut errors: Vec<Option<String>> = vec![None; FIO_ROWS.len()];
    for run in 0..runs {
        eprintln!("keel-bench report: fio run {} of {runs}", run + 1);
        let d = tempfile::tempdir_in(dir)?;
        for (i, (_, kind, direct, rw, qd)) in FIO_ROWS.iter().enumerate() {
            let (engine, file) = if *kind == "keel" {
                if !engine_ok {
                    errors[i] = Some(format!(
                        "{} is not built (make -C ffi/fio FIO_SRC=...; see ffi/fio/README.md)",
                        keel_engine.display()
                    ));
                    continue;
                }
                (
                    format!("external:{}", keel_engine.display()),
                    d.path().join("v.keel"),
                )
            } else {
                ((*kind).to_owned(), d.path().join("plain.img"))
            };
            match fio_job(&engine, &file, rw, *qd, *direct, seconds)? {
                Ok(m) => samples[i].push(m),
                Err(e) => errors[i] = Some(e),
            }
        }
    }
    for (i, (name, kind, direct, rw, qd)) in FIO_ROWS.iter().enumerate() {
        let s = &samples[i];
        let med = |f: fn(&Measure) -> f64| median(&mut s.iter().map(f).collect::<Vec<_>>());
        rows.push(json!({
            "name": name, "engine": kind, "direct": direct, "rw": rw, "qd": qd,
            "iops": med(|m| m.iops), "p50_us": med(|m| m.p50_us), "p99_us": med(|m| m.p99_us),
            "error": errors[i],
        }));
    }
    Ok(json!({"file_size": "1 GiB", "rows": rows}))
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Run everything `o` asks for; returns the combined JSON.
pub fn collect(o: &Opts) -> Result<Value> {
    std::fs::create_dir_all(&o.dir)?;
    let t0 = std::time::Instant::now();
    let runs = o.runs.max(1).to_string();
    let secs = o.seconds.to_string();
    let skip = |p: &str| o.skip.iter().any(|s| s == p);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let mut machine = crate::machine::describe(&o.dir);
    machine["memory_bytes"] = json!(crate::machine::memory_bytes());
    machine["disk"] = crate::machine::disk(machine["device"].as_str().unwrap_or(""));
    let mut all = json!({
        "machine": machine,
        "commit": format!("{}{}", git(&["rev-parse", "--short", "HEAD"]), if dirty { "-dirty" } else { "" }),
        "date": Command::new("date").arg("-u").arg("+%Y-%m-%d %H:%M UTC").output().map(|x| String::from_utf8_lossy(&x.stdout).trim().to_owned()).unwrap_or_default(),
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "runs": o.runs.max(1),
        "seconds": o.seconds,
    });
    if let Some(p) = &o.reuse {
        let old: Value = serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("{} is not a report JSON", p.display()))?;
        for part in PARTS {
            if skip(part) && old[part].is_object() {
                all[part] = old[part].clone();
            }
        }
        all["reused"] =
            json!({"from": p.display().to_string(), "date": old["date"], "commit": old["commit"]});
    }
    let dir = o.dir.to_string_lossy().into_owned();
    let engine_dir = format!("{dir}/engine");
    let common = |part: &'static str, d: &str| -> Vec<String> {
        [part, "--runs", &runs, "--seconds", &secs, "--dir", d]
            .iter()
            .map(|x| (*x).to_owned())
            .collect()
    };
    for part in PARTS {
        if skip(part) {
            continue;
        }
        eprintln!("keel-bench report: {part}");
        let r = match part {
            "engine" => sub_json_owned(&common("engine", &engine_dir)),
            "targets" => sub_json_owned(&common("targets", &dir)),
            "sockets" => sub_json_owned(&common("sockets", &dir)),
            "sweep" => sweep(&o.dir, o.runs.max(1), (o.seconds / 2.0).max(1.0)),
            "pollmodes" => pollmodes(&o.dir, o.runs.max(1), (o.seconds / 2.0).max(1.0)),
            _ => fio_part(&o.dir, o.runs.max(1), o.seconds, &o.fio_engine),
        };
        // A part that fails is reported as failed; the others still run.
        all[part] = r.unwrap_or_else(|e| {
            eprintln!("keel-bench report: {part} failed: {e:#}");
            json!({ "error": format!("{e:#}") })
        });
    }
    all["elapsed_seconds"] = json!(t0.elapsed().as_secs());
    Ok(all)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}x", a / b)
    } else {
        "-".into()
    }
}

/// A goal line.
fn goal(out: &mut String, what: &str, value: f64, bound: f64, detail: &str) {
    let _ = writeln!(
        out,
        "| {} | {what} | {value:.2}x | {bound}x | {detail} |",
        if value >= bound { "PASS" } else { "MISS" }
    );
}

/// The markdown of the generated part (plots linked relative to `plots_rel`).
pub fn markdown(v: &Value, plots_rel: &str) -> String {
    let mut s = String::new();
    let m = &v["machine"];
    let _ = writeln!(s, "## Latest report (`keel-bench report`)\n");
    let _ = writeln!(
        s,
        "Generated {} from commit `{}` by `{}`: medians of {} runs, {} s per measurement, {} s in all.\n",
        v["date"].as_str().unwrap_or("?"),
        v["commit"].as_str().unwrap_or("?"),
        v["command"].as_str().unwrap_or("?"),
        v["runs"],
        v["seconds"],
        v["elapsed_seconds"]
    );
    if v["reused"].is_object() {
        let _ = writeln!(
            s,
            "Parts not rerun were taken from the run of {} (commit `{}`).\n",
            v["reused"]["date"].as_str().unwrap_or("?"),
            v["reused"]["commit"].as_str().unwrap_or("?")
        );
    }
    let d = &m["disk"];
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), {} GiB, kernel {}, {} on {} ({}; disk {} {} GiB, driver {}, {}). Target and clients share the cores.\n",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_bytes"].as_u64().unwrap_or(0) >> 30,
        m["kernel"].as_str().unwrap_or("?"),
        m["fs_type"].as_str().unwrap_or("?"),
        m["device"].as_str().unwrap_or("?"),
        m["dir"].as_str().unwrap_or("?"),
        d["name"].as_str().unwrap_or("?"),
        d["size_bytes"].as_u64().unwrap_or(0) >> 30,
        d["driver"].as_str().unwrap_or("?"),
        match d["rotational"].as_bool() {
            Some(true) => "rotational",
            Some(false) => "non-rotational",
            None => "rotational unknown",
        },
    );
    for part in PARTS {
        if let Some(e) = v[part]["error"].as_str() {
            let _ = writeln!(s, "**{part} failed:** {e}\n");
        }
    }
    let mut goals = String::new();
    let t = &v["targets"];
    if t.is_object() && t["error"].is_null() {
        let _ = writeln!(
            s,
            "### Targets: 4 KiB random I/O, same client for keel and tgt\n"
        );
        let _ = writeln!(s, "![IOPS vs queue depth]({plots_rel}/iops-vs-qd.svg)\n");
        let _ = writeln!(
            s,
            "| client | workload | keel IOPS | tgt IOPS | keel/tgt | keel p50 µs | tgt p50 µs | keel CPU µs/io | tgt CPU µs/io | CPU ratio |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        for (key, client) in [
            ("iscsi_own", "keel-bench iSCSI initiator"),
            ("iscsi_perf", "libiscsi iscsi-perf"),
            ("qemu_img_bench", "qemu-img bench"),
        ] {
            for r in t[key].as_array().into_iter().flatten() {
                let (k, g) = (&r["keel_iscsi"], &r["tgt_iscsi"]);
                let _ = writeln!(
                    s,
                    "| {client} | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} |",
                    r["workload"].as_str().unwrap_or(""),
                    f(&k["iops"]),
                    f(&g["iops"]),
                    ratio(f(&k["iops"]), f(&g["iops"])),
                    f(&k["p50_us"]),
                    f(&g["p50_us"]),
                    f(&k["cpu_us_per_io"]),
                    f(&g["cpu_us_per_io"]),
                    ratio(f(&k["cpu_us_per_io"]), f(&g["cpu_us_per_io"])),
                );
            }
        }
        for r in t["rows"].as_array().into_iter().flatten() {
            let (k, g) = (&r["keel_iscsi"], &r["tgt_iscsi"]);
            let _ = writeln!(
                s,
                "| fio via qemu-storage-daemon | {} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.1} | {:.1} | {} |",
                r["workload"].as_str().unwrap_or(""),
                f(&k["iops"]),
                f(&g["iops"]),
                ratio(f(&k["iops"]), f(&g["iops"])),
                f(&k["p50_us"]),
                f(&g["p50_us"]),
                f(&k["cpu_us_per_io"]),
                f(&g["cpu_us_per_io"]),
                ratio(f(&k["cpu_us_per_io"]), f(&g["cpu_us_per_io"])),
            );
        }
        let _ = writeln!(
            s,
            "\nkeel NVMe/TCP (the bench's host) against keel iSCSI and tgt:\n"
        );
        let _ = writeln!(s, "| workload | NVMe/TCP IOPS | p50 µs | p99 µs | CPU µs/io | / keel iSCSI (fio) | / tgt (fio) |");
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in t["rows"].as_array().into_iter().flatten() {
            let n = &r["keel_nvmf"];
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {:.0} | {:.1} | {:.2}x | {:.2}x |",
                r["workload"].as_str().unwrap_or(""),
                f(&n["iops"]),
                f(&n["p50_us"]),
                f(&n["p99_us"]),
                f(&n["cpu_us_per_io"]),
                f(&r["keel_nvmf_over_keel_iscsi_iops"]),
                f(&r["keel_nvmf_over_tgt_iops"]),
            );
        }
        let own = |w: &str| {
            t["iscsi_own"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["workload"] == w)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (r1, r32, w32) = (
            own("4k-randread-qd1"),
            own("4k-randread-qd32"),
            own("4k-randwrite-qd32"),
        );
        let mq = &t["nvmf_queues"];
        if mq.is_object() {
            let n = &mq["keel_nvmf"];
            let _ = writeln!(
                s,
                "| 4k-randread-qd32, {} I/O queues (one per CPU, as the Linux host) | {:.0} | {:.0} | {:.0} | {:.1} | {} (own initiator) | {} (own initiator) |",
                queue_count(&mq["queues"]),
                f(&n["iops"]),
                f(&n["p50_us"]),
                f(&n["p99_us"]),
                f(&n["cpu_us_per_io"]),
                ratio(f(&n["iops"]), f(&r32["keel_iscsi"]["iops"])),
                ratio(f(&n["iops"]), f(&r32["tgt_iscsi"]["iops"])),
            );
        }
        let _ = writeln!(
            s,
            "\n![latency]({plots_rel}/latency.svg) ![CPU per I/O]({plots_rel}/cpu-per-io.svg)\n"
        );
        // Ratios of the medians (the table's numbers), not medians of the
        // per-run ratios.
        let q = |r: &Value, k: &str| {
            let b = f(&r["tgt_iscsi"][k]);
            if b > 0.0 {
                f(&r["keel_iscsi"][k]) / b
            } else {
                0.0
            }
        };
        goal(
            &mut goals,
            "iSCSI 4k random read QD32 vs tgt (own initiator)",
            q(&r32, "iops"),
            3.0,
            "",
        );
        goal(
            &mut goals,
            "iSCSI 4k random read QD1 vs tgt (own initiator)",
            q(&r1, "iops"),
            2.0,
            "",
        );
        goal(
            &mut goals,
            "iSCSI 4k random write QD32 vs tgt (own initiator, cache on)",
            q(&w32, "iops"),
            3.0,
            "",
        );
        let cpu32 = q(&r32, "cpu_us_per_io");
        let cpu1 = q(&r1, "cpu_us_per_io");
        goal(
            &mut goals,
            "target CPU per I/O, tgt / keel, read QD32",
            if cpu32 > 0.0 { 1.0 / cpu32 } else { 0.0 },
            2.0,
            &format!("keel/tgt = {cpu32:.2}"),
        );
        goal(
            &mut goals,
            "target CPU per I/O, tgt / keel, read QD1",
            if cpu1 > 0.0 { 1.0 / cpu1 } else { 0.0 },
            2.0,
            &format!("keel/tgt = {cpu1:.2}"),
        );
        if let Some(r) = t["rows"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["workload"] == "4k-randread-qd32"))
        {
            let nvme = f(&r["keel_nvmf"]["iops"]);
            let kown = f(&r32["keel_iscsi"]["iops"]);
            let tgt_own = f(&r32["tgt_iscsi"]["iops"]);
            goal(
                &mut goals,
                "NVMe/TCP 4k read QD32 vs keel iSCSI (both own clients)",
                if kown > 0.0 { nvme / kown } else { 0.0 },
                1.3,
                "one I/O queue, one iSCSI connection",
            );
            goal(
                &mut goals,
                "NVMe/TCP 4k read QD32 vs tgt (own clients)",
                if tgt_own > 0.0 { nvme / tgt_own } else { 0.0 },
                4.0,
                "one I/O queue",
            );
            let mq = &t["nvmf_queues"];
            let nq = f(&mq["keel_nvmf"]["iops"]);
            if nq > 0.0 {
                let qs = queue_count(&mq["queues"]);
                goal(
                    &mut goals,
                    "NVMe/TCP 4k read QD32 vs keel iSCSI (both own clients)",
                    if kown > 0.0 { nq / kown } else { 0.0 },
                    1.3,
                    &format!("{qs} I/O queues (one per CPU, as the Linux host), one iSCSI connection (open-iscsi's default)"),
                );
                goal(
                    &mut goals,
                    "NVMe/TCP 4k read QD32 vs tgt (own clients)",
                    if tgt_own > 0.0 { nq / tgt_own } else { 0.0 },
                    4.0,
                    &format!("{qs} I/O queues"),
                );
            }
        }
    }
    let e = &v["engine"];
    if e.is_object() && e["error"].is_null() {
        let _ = writeln!(
            s,
            "### Engine (keel-bench engine): each backend against raw pwrite+fdatasync\n"
        );
        let _ = writeln!(
            s,
            "Raw 4 KiB pwrite+fdatasync QD1 p50: {:.0} µs ({}).\n",
            f(&e["raw_qd1_write_fdatasync_p50_us"]),
            e["raw_qd1_write_fdatasync_kind"].as_str().unwrap_or("")
        );
        let _ = writeln!(
            s,
            "| backend | test | IOPS | MB/s | p50 µs | p99 µs | p99.9 µs |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for b in e["backends"].as_array().into_iter().flatten() {
            for r in b["rows"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {:.0} | {:.1} | {:.0} | {:.0} | {:.0} |",
                    b["backend"].as_str().unwrap_or(""),
                    r["test"].as_str().unwrap_or(""),
                    f(&r["iops"]),
                    f(&r["mbps"]),
                    f(&r["p50_us"]),
                    f(&r["p99_us"]),
                    f(&r["p999_us"])
                );
            }
        }
        s.push('\n');
        if let Some(gs) = e["goals"].as_object() {
            for g in gs.values() {
                let _ = writeln!(
                    goals,
                    "| {} | {} | {} | | |",
                    if g["pass"].as_bool() == Some(true) {
                        "PASS"
                    } else {
                        "MISS"
                    },
                    g["goal"].as_str().unwrap_or(""),
                    g["detail"].as_str().unwrap_or("")
                );
            }
        }
    }
    let so = &v["sockets"];
    if so.is_object() && so["error"].is_null() {
        let _ = writeln!(
            s,
            "### Socket I/O: epoll vs io_uring (keel-bench sockets)\n"
        );
        let _ = writeln!(s, "| workload | epoll IOPS | io_uring IOPS | ratio | epoll CPU µs/io | io_uring CPU µs/io |");
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        let (ep, ur) = (&so["results"]["epoll"], &so["results"]["io_uring"]);
        for (name, r) in ep.as_object().into_iter().flatten() {
            let u = &ur[name];
            let _ = writeln!(
                s,
                "| {name} | {:.0} | {:.0} | {} | {:.1} | {:.1} |",
                f(&r["iops"]),
                f(&u["iops"]),
                ratio(f(&u["iops"]), f(&r["iops"])),
                f(&r["cpu_us_per_io"]),
                f(&u["cpu_us_per_io"])
            );
        }
        s.push('\n');
    }
    let fi = &v["fio"];
    if fi.is_object() && fi["error"].is_null() {
        let _ = writeln!(
            s,
            "### fio: the raw disk, plain files, and the engine through the C ABI\n"
        );
        let _ = writeln!(s, "4 KiB random, 1 GiB file. Plain-file reads are mostly page-cache hits after the first pass, as keel's are; O_DIRECT rows measure the disk itself. Plain-file writes are buffered without any sync, as keel's cached writes are (keel's also go through its WAL and write-back). fio reports no completion latency for I/O the keel engine completes at submission (p50 0).\n");
        let _ = writeln!(
            s,
            "| fio engine | rw | QD | IOPS | p50 µs | p99 µs | note |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in fi["rows"].as_array().into_iter().flatten() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {} |",
                r["name"].as_str().unwrap_or(""),
                r["rw"].as_str().unwrap_or(""),
                r["qd"],
                f(&r["iops"]),
                f(&r["p50_us"]),
                f(&r["p99_us"]),
                r["error"]
                    .as_str()
                    .map(|e| e.lines().next().unwrap_or("").to_owned())
                    .unwrap_or_default()
            );
        }
        s.push('\n');
    }
    let pm = &v["pollmodes"];
    if let Some(rows) = pm["rows"].as_array().filter(|a| !a.is_empty()) {
        let _ = writeln!(
            s,
            "### Poll modes: 4 KiB random read QD1, own iSCSI initiator\n"
        );
        let _ = writeln!(
            s,
            "A fresh keel-volume per mode. busy: the reactor never sleeps; adaptive (the default): it spins 50 µs after its last work, then sleeps; interrupt: it sleeps whenever it has nothing to do. The loopback floors are a bare thread in keel-bench that answers each 48-byte request with 4144 bytes (a SCSI Command, a Data-In with 4 KiB) over the same loopback, no storage, no protocol, spinning on a non-blocking socket or blocking in `read`, on the CPU the scheduler picks (in practice the other one), or blocking with both ends pinned to one CPU, where a hand-off is a context switch instead of a wake-up of another virtual CPU: what any target can reach here against this client, which blocks for each answer, as the two ends happen to be placed.\n"
        );
        let tgt = rows
            .iter()
            .find(|r| r["target"] == "tgt")
            .cloned()
            .unwrap_or(Value::Null);
        let _ = writeln!(
            s,
            "| target | IOPS | p50 µs | CPU µs/io | IOPS / tgt | CPU / tgt |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|");
        for r in rows {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.0} | {:.1} | {} | {} |",
                r["target"].as_str().unwrap_or("?"),
                f(&r["iops"]),
                f(&r["p50_us"]),
                f(&r["cpu_us_per_io"]),
                ratio(f(&r["iops"]), f(&tgt["iops"])),
                ratio(f(&r["cpu_us_per_io"]), f(&tgt["cpu_us_per_io"])),
            );
        }
        s.push('\n');
        let busy = rows.iter().find(|r| r["target"] == "keel busy");
        let ceiling = rows
            .iter()
            .find(|r| r["target"] == FLOORS[0])
            .filter(|_| f(&tgt["iops"]) > 0.0)
            .map_or(String::new(), |fl| {
                format!(
                    "ceiling here: the spinning loopback floor is {:.2}x tgt",
                    f(&fl["iops"]) / f(&tgt["iops"])
                )
            });
        if let Some(b) = busy.filter(|_| f(&tgt["iops"]) > 0.0) {
            goal(
                &mut goals,
                "iSCSI 4k random read QD1 vs tgt, busy mode (own initiator)",
                f(&b["iops"]) / f(&tgt["iops"]),
                3.5,
                &ceiling,
            );
        }
    }
    if !goals.is_empty() {
        let _ = writeln!(s, "### Goals (issue 5)\n");
        let _ = writeln!(s, "| | goal | measured | bound | |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        s.push_str(&goals);
        s.push('\n');
    }
    s
}

/// Replace the generated part of `doc` (between [`BEGIN`] and [`END`]), or
/// append it with the markers.
pub fn splice(doc: &str, generated: &str) -> String {
    let block = format!("{BEGIN}\n{generated}{END}\n");
    match (doc.find(BEGIN), doc.find(END)) {
        (Some(b), Some(e)) if e > b => {
            let after = &doc[e + END.len()..];
            format!(
                "{}{block}{}",
                &doc[..b],
                after.strip_prefix('\n').unwrap_or(after)
            )
        }
        _ => format!("{}\n{block}", doc.trim_end()),
    }
}

/// The plots of `v` into `dir`.
pub fn plots(v: &Value, dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    if let Some(series) = v["sweep"]["series"].as_array().filter(|a| !a.is_empty()) {
        let ss: Vec<Series> = series
            .iter()
            .map(|x| Series {
                name: x["target"].as_str().unwrap_or("").to_owned(),
                points: x["points"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| (f(&p["qd"]), f(&p["iops"])))
                    .collect(),
            })
            .collect();
        let p = dir.join("iops-vs-qd.svg");
        line_chart(
            &p,
            "4 KiB random read IOPS vs queue depth",
            "queue depth",
            "IOPS",
            &ss,
            true,
        )?;
        out.push(p);
    }
    if let Some(rows) = v["targets"]["iscsi_own"].as_array() {
        let cats: Vec<String> = rows
            .iter()
            .map(|r| r["workload"].as_str().unwrap_or("").to_owned())
            .collect();
        let pick = |who: &str, k: &str| rows.iter().map(|r| f(&r[who][k])).collect::<Vec<_>>();
        let p = dir.join("latency.svg");
        bar_chart(
            &p,
            "iSCSI latency (keel-bench initiator), µs",
            "µs",
            &cats,
            &[
                ("keel p50".into(), pick("keel_iscsi", "p50_us")),
                ("keel p99".into(), pick("keel_iscsi", "p99_us")),
                ("tgt p50".into(), pick("tgt_iscsi", "p50_us")),
                ("tgt p99".into(), pick("tgt_iscsi", "p99_us")),
            ],
        )?;
        out.push(p);
        let p = dir.join("cpu-per-io.svg");
        bar_chart(
            &p,
            "Target CPU per I/O, µs",
            "µs",
            &cats,
            &[
                ("keel".into(), pick("keel_iscsi", "cpu_us_per_io")),
                ("tgt".into(), pick("tgt_iscsi", "cpu_us_per_io")),
            ],
        )?;
        out.push(p);
    }
    Ok(out)
}

/// Relative path from the markdown file's directory to `plots`.
fn rel(out: &Path, plots: &Path) -> String {
    let base = out.parent().unwrap_or(Path::new(""));
    plots
        .strip_prefix(base)
        .map_or_else(|_| plots.display().to_string(), |p| p.display().to_string())
}

/// The whole command.
pub fn run(o: &Opts) -> Result<()> {
    let v = collect(o)?;
    if let Some(j) = &o.json {
        std::fs::write(j, serde_json::to_string_pretty(&v)?)?;
    }
    let files = plots(&v, &o.plots)?;
    let doc = std::fs::read_to_string(&o.out).unwrap_or_else(|_| "# Benchmarks\n".into());
    let md = markdown(&v, &rel(&o.out, &o.plots));
    std::fs::write(&o.out, splice(&doc, &md))?;
    eprintln!(
        "keel-bench report: wrote {} and {} plots in {}",
        o.out.display(),
        files.len(),
        o.plots.display()
    );
    print!("{md}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splice_replaces_only_the_generated_part() {
        let doc = format!("# B\n\nprose before\n\n{BEGIN}\nold\n{END}\nprose after\n");
        let out = splice(&doc, "new\n");
        assert_eq!(
            out,
            format!("# B\n\nprose before\n\n{BEGIN}\nnew\n{END}\nprose after\n")
        );
        let out2 = splice("# B\n", "x\n");
        assert!(out2.ends_with(&format!("{BEGIN}\nx\n{END}\n")), "{out2}");
        assert_eq!(splice(&out2, "x\n"), out2, "idempotent");
    }

    #[test]
    fn markdown_has_ratios_goals_and_plot_links() {
        let row =
            |k: f64, t: f64| json!({"iops": k, "p50_us": 10.0, "p99_us": 20.0, "cpu_us_per_io": t});
        let v = json!({
            "machine": {"cores": 2, "cpu": "cpu", "kernel": "6.18", "fs_type": "ext4", "device": "/dev/vda", "dir": "/x"},
            "commit": "abc", "date": "d", "command": "keel-bench report", "runs": 3, "seconds": 4.0, "elapsed_seconds": 60,
            "targets": {
                "rows": [{"workload": "4k-randread-qd32", "keel_nvmf": row(300.0, 1.0), "keel_iscsi": row(100.0, 1.0), "tgt_iscsi": row(50.0, 1.0),
                          "keel_nvmf_over_keel_iscsi_iops": 3.0, "keel_nvmf_over_tgt_iops": 6.0}],
                "iscsi_own": [
                    {"workload": "4k-randread-qd32", "keel_iscsi": row(400.0, 2.0), "tgt_iscsi": row(100.0, 8.0),
                     "keel_iscsi_over_tgt_iops": 4.0, "keel_iscsi_over_tgt_cpu_per_io": 0.25},
                    {"workload": "4k-randwrite-qd32", "keel_iscsi": row(200.0, 2.0), "tgt_iscsi": row(100.0, 4.0),
                     "keel_iscsi_over_tgt_iops": 2.0, "keel_iscsi_over_tgt_cpu_per_io": 0.5}
                ]
            }
        });
        let mut v = v;
        v["fio"] = json!({"error": "cannot run fio (apt-get install fio)"});
        v["targets"]["nvmf_queues"] =
            json!({"workload": "4k-randread-qd32", "queues": 2, "keel_nvmf": row(600.0, 1.0)});
        v["pollmodes"] = json!({"rows": [
            {"target": "keel busy", "iops": 36.0, "p50_us": 20.0, "cpu_us_per_io": 30.0},
            {"target": "keel adaptive", "iops": 30.0, "p50_us": 25.0, "cpu_us_per_io": 32.0},
            {"target": "keel interrupt", "iops": 12.0, "p50_us": 80.0, "cpu_us_per_io": 40.0},
            {"target": "tgt", "iops": 10.0, "p50_us": 90.0, "cpu_us_per_io": 50.0},
            {"target": "loopback floor, spinning echo", "iops": 40.0, "p50_us": 20.0, "cpu_us_per_io": 25.0}
        ]});
        let md = markdown(&v, "bench");
        assert!(
            md.contains("| keel interrupt | 12 | 80 | 40.0 | 1.20x | 0.80x |"),
            "{md}"
        );
        assert!(
            md.contains("| PASS | iSCSI 4k random read QD1 vs tgt, busy mode (own initiator) | 3.60x | 3.5x | ceiling here: the spinning loopback floor is 4.00x tgt |"),
            "{md}"
        );
        assert!(md.contains("**fio failed:** cannot run fio"), "{md}");
        assert!(md.contains("](bench/iops-vs-qd.svg)"), "{md}");
        assert!(
            md.contains("| PASS | iSCSI 4k random read QD32 vs tgt (own initiator) | 4.00x | 3x |"),
            "{md}"
        );
        assert!(md.contains("| MISS | iSCSI 4k random write QD32 vs tgt (own initiator, cache on) | 2.00x | 3x |"), "{md}");
        assert!(
            md.contains(
                "| MISS | NVMe/TCP 4k read QD32 vs keel iSCSI (both own clients) | 0.75x | 1.3x |"
            ),
            "{md}"
        );
        assert!(md.contains("| 4k-randread-qd32, 2 I/O queues (one per CPU, as the Linux host) | 600 | 10 | 20 | 1.0 | 1.50x (own initiator) | 6.00x (own initiator) |"), "{md}");
        assert!(md.contains("| PASS | NVMe/TCP 4k read QD32 vs keel iSCSI (both own clients) | 1.50x | 1.3x | 2 I/O queues"), "{md}");
        assert!(md.contains("commit `abc`"));
        let dir = tempfile::tempdir().unwrap();
        let files = plots(&v, dir.path()).unwrap();
        assert_eq!(files.len(), 2, "no sweep: latency and CPU plots only");
    }
}
